#!/usr/bin/env bash
# A small network on this machine: a hub at http://127.0.0.1:8100 and two demo shops,
# "Fablab Gent" at http://127.0.0.1:8001 and "Brussels Makers" at http://127.0.0.1:8002.
# Each is its own `microfactory serve --demo` process with its own SQLite database under
# ./network-demo/. The shops sign their capacity reports and push them to the hub; open
# http://127.0.0.1:8100/network (log in as admin / admin-demo-pass) to see them and route a job.
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
ROOT=${NETWORK_DEMO_DIR:-network-demo}
HUB=http://127.0.0.1:8100
mkdir -p "$ROOT/hub" "$ROOT/gent" "$ROOT/brussels"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' EXIT INT TERM

start() {  # name port extra-env...
  local name=$1 port=$2
  shift 2
  (cd "$ROOT/$name" && env MICROFACTORY_DATA_DIR=data MICROFACTORY_NETWORK_PUBLISH=true "$@" \
    "$OLDPWD/.venv/bin/microfactory" serve --demo --host 127.0.0.1 --port "$port" \
    >server.log 2>&1) &
  pids+=($!)
}

start hub 8100 MICROFACTORY_HUB=true MICROFACTORY_HUB_OPEN=true
start gent 8001 MICROFACTORY_NETWORK_HUBS=$HUB
start brussels 8002 MICROFACTORY_NETWORK_HUBS=$HUB

wait_up() {
  for _ in $(seq 1 120); do
    curl -fsS "$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "$1 did not start; see $ROOT/*/server.log" >&2
  exit 1
}

profile() {  # url name city lat lon
  wait_up "$1"
  local token
  token=$(curl -fsS -X POST "$1/api/v1/auth/token" -d username=admin -d password=admin-demo-pass \
    | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -fsS -X PUT "$1/api/v1/network/profile" -H "Authorization: Bearer $token" \
    -H "Content-Type: application/json" \
    -d "{\"name\": \"$2\", \"url\": \"$1\", \"city\": \"$3\", \"country\": \"BE\", \"lat\": $4, \"lon\": $5, \"accessType\": \"Public\"}" \
    >/dev/null
}

wait_up "$HUB"
profile http://127.0.0.1:8001 "Fablab Gent" Gent 51.054 3.717
profile http://127.0.0.1:8002 "Brussels Makers" Brussels 50.847 4.357
echo "hub:   $HUB/network   (admin / admin-demo-pass)"
echo "shops: http://127.0.0.1:8001 (Gent), http://127.0.0.1:8002 (Brussels); their reports reach the hub within seconds"
wait
