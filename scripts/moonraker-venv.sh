#!/usr/bin/env bash
# Create (idempotently) the virtual environment Moonraker's integration tests run against.
#
#   scripts/moonraker-venv.sh            # -> <repo>/.moonraker-venv
#   MICROFACTORY_MOONRAKER_VENV=/x ...   # -> /x
#
# The tests start Moonraker as a separate server process (see scripts/peer-venv.sh), in front
# of a Klippy emulator (tests/peers/klippy_emulator.py), since Klipper's host cannot be
# installed here.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MICROFACTORY_MOONRAKER_VENV:-$REPO/.moonraker-venv}"
exec bash "$REPO/scripts/peer-venv.sh" moonraker 0.11.0 "$VENV"
