#!/usr/bin/env bash
# Create (idempotently) a virtual environment holding one pinned peer server for the tests.
#
#   scripts/peer-venv.sh DIST VERSION VENV [CHECK]
#
# DIST==VERSION is installed from PyPI into VENV; CHECK (default: VENV/bin/python) must be
# executable afterwards. Peers (OctoPrint, Moonraker, ...) get their own venvs because their
# pinned dependencies (Flask, Tornado, ...) would clash with microfactory's.
set -euo pipefail

DIST="$1"
VERSION="$2"
VENV="$3"
CHECK="${4:-$VENV/bin/python}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

installed_version() {
    "$VENV/bin/python" - "$DIST" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
print(version(sys.argv[1]))
PY
}

if [ -x "$CHECK" ] && [ "$(installed_version)" = "$VERSION" ]; then
    echo "$DIST $VERSION already installed in $VENV"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $("$PYTHON" --version)"
    existed=0
    [ -e "$VENV" ] && existed=1
    if ! "$PYTHON" -m venv "$VENV"; then
        # A half-made venv would confuse the next run; remove it, but only if we made it.
        [ "$existed" = 0 ] && rm -rf "$VENV"
        echo "could not create a venv with $PYTHON; on Debian: apt-get install python3-venv" >&2
        exit 1
    fi
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip wheel
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$DIST==$VERSION"

echo "$DIST $(installed_version) installed in $VENV"
