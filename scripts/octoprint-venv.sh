#!/usr/bin/env bash
# Create (idempotently) the virtual environment OctoPrint's integration tests run against.
#
#   scripts/octoprint-venv.sh            # -> <repo>/.octoprint-venv
#   MICROFACTORY_OCTOPRINT_VENV=/x ...   # -> /x
#
# OctoPrint gets its own venv because its pinned dependencies (Flask, Tornado, ...) would
# clash with microfactory's; the tests start it as a separate server process.
set -euo pipefail

OCTOPRINT_VERSION="1.11.8"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MICROFACTORY_OCTOPRINT_VENV:-$REPO/.octoprint-venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

installed_version() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("OctoPrint"))
PY
}

if [ -x "$VENV/bin/octoprint" ] && [ "$(installed_version)" = "$OCTOPRINT_VERSION" ]; then
    echo "OctoPrint $OCTOPRINT_VERSION already installed in $VENV"
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
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "octoprint==$OCTOPRINT_VERSION"

echo "OctoPrint $(installed_version) installed in $VENV"
