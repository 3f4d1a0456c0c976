#!/usr/bin/env bash
# Create .venv with Python 3.11+ and install microfactory into it (editable).
# Usage: scripts/venv.sh [extras]   e.g. scripts/venv.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "microfactory needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)" >&2; exit 1; }
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian ships venv and ensurepip in a separate package.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
  else
    echo "Python's venv module is missing: sudo apt-get install python3-venv" >&2; exit 1
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
