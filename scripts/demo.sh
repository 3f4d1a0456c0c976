#!/usr/bin/env bash
# Install into .venv, migrate a SQLite database under ./data and serve the demo shop
# (simulated printers and a simulated CNC) at http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/microfactory serve --demo --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
