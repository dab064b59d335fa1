#!/usr/bin/env bash
# Makes a PostgreSQL with PostGIS available and prints its admin URL on stdout.
#   - installs postgresql-15-postgis-3 with apt when PostGIS is missing;
#   - when DATABASE_URL is set, uses it as is (only checks it answers);
#   - otherwise starts (or reuses) a throwaway trust-auth cluster in $MLY_PGDIR (default ./.pg),
#     owned by a non-root user, listening on localhost:$MLY_PGPORT (default 54329).
# Usage: DATABASE_URL=$(scripts/pg.sh)
set -euo pipefail
log() { echo "pg.sh: $*" >&2; }

PGBIN=${MLY_PGBIN:-/usr/lib/postgresql/15/bin}
if [ -n "${DATABASE_URL:-}" ]; then
  echo "$DATABASE_URL"
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! ls /usr/share/postgresql/15/extension/postgis.control >/dev/null 2>&1 || [ ! -x "$PGBIN/initdb" ]; then
  log "installing postgresql-15-postgis-3 (apt)"
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql-15-postgis-3 >&2
fi

PGDIR=$(realpath -m "${MLY_PGDIR:-$(dirname "$0")/../.pg}")
PORT=${MLY_PGPORT:-54329}
URL="postgres://postgres@localhost:$PORT/postgres"
run_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}
mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDIR"
if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
  log "creating a throwaway cluster in $PGDIR"
  run_pg "'$PGBIN/initdb' -D '$PGDIR/data' -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >/dev/null
fi
if ! run_pg "'$PGBIN/pg_ctl' -D '$PGDIR/data' status" >/dev/null 2>&1; then
  log "starting PostgreSQL on localhost:$PORT"
  run_pg "'$PGBIN/pg_ctl' -D '$PGDIR/data' -l '$PGDIR/pg.log' -w start \
    -o '-p $PORT -k $PGDIR -c listen_addresses=localhost -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off'" >/dev/null
fi
echo "$URL"
