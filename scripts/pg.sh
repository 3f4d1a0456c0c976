#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster on a loopback port for the tests.
# Usage: scripts/pg.sh start|stop   (start prints the URL the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
PGDIR=${MICROFACTORY_TEST_PGDIR:-/tmp/microfactory-test-pg-$(id -u)}
PORT=${MICROFACTORY_TEST_PGPORT:-55432}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$BIN" ] || { echo "PostgreSQL is not installed (Debian package postgresql)" >&2; exit 1; }

as_pg() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
  if [ ! -f "$PGDIR/PG_VERSION" ]; then
    rm -rf "$PGDIR"; mkdir -p "$PGDIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDIR"
    as_pg "$BIN/initdb" -D "$PGDIR" -U postgres -A trust --no-sync -E UTF8 >/dev/null
  fi
  if ! as_pg "$BIN/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
    # fsync off and a small footprint: this cluster holds only throwaway test data.
    as_pg "$BIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/server.log" -w -t 60 start \
      -o "-p $PORT -h 127.0.0.1 -k $PGDIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
  fi
  echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
  ;;
stop)
  as_pg "$BIN/pg_ctl" -D "$PGDIR" -m fast -w stop >/dev/null 2>&1 || true
  ;;
*)
  echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
