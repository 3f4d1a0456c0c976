#!/usr/bin/env bash
# Create (idempotently) the virtual environment the real-PrusaLink tests run against.
#
#   scripts/prusalink-venv.sh            # -> <repo>/.prusalink-venv
#   MICROFACTORY_PRUSALINK_VENV=/x ...   # -> /x
#
# PrusaLink 0.8.1 (for an MK3 with a Raspberry Pi) builds python-prctl, which needs the
# libcap headers, and loads libturbojpeg at import; both come from Debian, installed here
# when we are root. The tests start PrusaLink in front of a pty that answers its startup
# questions as Prusa firmware does (tests/peers/prusalink_real.py, docs/prusalink.md).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MICROFACTORY_PRUSALINK_VENV:-$REPO/.prusalink-venv}"
need=()
[ -e /usr/include/sys/capability.h ] || need+=(libcap-dev)
ls /usr/lib/*/libturbojpeg.so.0 >/dev/null 2>&1 || need+=(libturbojpeg0)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages for PrusaLink: ${need[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  else
    # Not fatal: the real-PrusaLink tests skip, saying why; the v1 API peer's tests still run.
    echo "PrusaLink needs these Debian packages (run as root to install them): ${need[*]}" >&2
    exit 0
  fi
fi
exec bash "$REPO/scripts/peer-venv.sh" prusalink 0.8.1 "$VENV" "$VENV/bin/prusalink"
