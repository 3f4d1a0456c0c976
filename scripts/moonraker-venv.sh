#!/usr/bin/env bash
# Create (idempotently) the virtual environment Moonraker's integration tests run against.
#
#   scripts/moonraker-venv.sh            # -> <repo>/.moonraker-venv
#   MICROFACTORY_MOONRAKER_VENV=/x ...   # -> /x
#
# Moonraker gets its own venv because its pinned dependencies (Tornado, ...) would clash
# with microfactory's; the tests start it as a separate server process, in front of a Klippy
# emulator (tests/peers/klippy_emulator.py), since Klipper's host cannot be installed here.
set -euo pipefail

MOONRAKER_VERSION="0.11.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MICROFACTORY_MOONRAKER_VENV:-$REPO/.moonraker-venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

installed_version() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("moonraker"))
PY
}

if [ -x "$VENV/bin/python" ] && [ "$(installed_version)" = "$MOONRAKER_VERSION" ]; then
    echo "Moonraker $MOONRAKER_VERSION already installed in $VENV"
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
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moonraker==$MOONRAKER_VERSION"

echo "Moonraker $(installed_version) installed in $VENV"
