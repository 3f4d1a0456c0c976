#!/usr/bin/env bash
# Create (idempotently) the virtual environment OctoPrint's integration tests run against.
#
#   scripts/octoprint-venv.sh            # -> <repo>/.octoprint-venv
#   MICROFACTORY_OCTOPRINT_VENV=/x ...   # -> /x
#
# The tests start OctoPrint as a separate server process (see scripts/peer-venv.sh).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MICROFACTORY_OCTOPRINT_VENV:-$REPO/.octoprint-venv}"
exec bash "$REPO/scripts/peer-venv.sh" OctoPrint 1.11.8 "$VENV" "$VENV/bin/octoprint"
