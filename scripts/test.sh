#!/usr/bin/env bash
# Install everything the tests need, start a throwaway PostgreSQL, lint, run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Debian packages: a real PostgreSQL, Chromium, PrusaSlicer and OpenSCAD.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prusa-slicer >/dev/null 2>&1 || need+=(prusa-slicer)
command -v openscad >/dev/null 2>&1 || need+=(openscad)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing Debian packages: ${need[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  else
    echo "== missing Debian packages (run as root to install them): ${need[*]}" >&2
  fi
fi

# 2. Python: the project and its test dependencies in .venv; OctoPrint, Moonraker and
#    PrusaLink each in their own venv. The peers install in the background, beside .venv and
#    the linters (they share nothing with them); their logs are shown if one fails.
peer_logs=$(mktemp -d)
peers=()
for peer in octoprint moonraker prusalink; do
  [ -f "scripts/$peer-venv.sh" ] || continue
  echo "== installing $peer into its own venv (in the background)"
  bash "scripts/$peer-venv.sh" >"$peer_logs/$peer.log" 2>&1 &
  peers+=("$!:$peer")
done
echo "== installing microfactory and test dependencies into .venv"
bash scripts/venv.sh test
# Where PYTHONDONTWRITEBYTECODE is set (this CI's machines set it), every server and CLI
# process the tests start would compile the project's modules anew: compile them once.
.venv/bin/python -m compileall -q -j 0 microfactory drivers tests >/dev/null

# 3. A throwaway PostgreSQL on a loopback port, stopped when we exit.
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== starting PostgreSQL"
  MICROFACTORY_TEST_POSTGRES_URL=$(bash scripts/pg.sh start)
  export MICROFACTORY_TEST_POSTGRES_URL
  trap 'bash scripts/pg.sh stop' EXIT
fi

# 4. Lint and types.
echo "== ruff and mypy"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

echo "== waiting for the peer venvs"
for entry in "${peers[@]}"; do
  if ! wait "${entry%%:*}"; then
    cat "$peer_logs/${entry#*:}.log" >&2
    echo "== installing ${entry#*:} failed" >&2
    exit 1
  fi
  tail -n 1 "$peer_logs/${entry#*:}.log"
done
rm -rf "$peer_logs"

# 5. Every test: unit, API and services on SQLite and PostgreSQL, drivers on ptys,
#    OctoPrint, PrusaSlicer, OpenSCAD and Chromium.
# Two workers (pytest-xdist), one test file each at a time: most tests wait on real peers
# (servers, ptys, Chromium), so two files at once roughly halve the time on two cores.
# The longest files are handed out first (tests/conftest.py: FILE_SECONDS and a loadfile
# scheduler of ours; xdist's own would queue files by their number of tests).
# MICROFACTORY_TEST_WORKERS=0 runs everything in this one process.
echo "== pytest"
workers=${MICROFACTORY_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  .venv/bin/pytest "$@"
else
  .venv/bin/pytest -n "$workers" --dist loadfile "$@"
fi
