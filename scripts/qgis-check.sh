#!/usr/bin/env bash
# The QGIS check on any harvest database: opens every table and view of the schema (and the sql/
# queries) through QGIS's own PostGIS provider, then opens the stored project "mly-harvest" and
# renders it to qgis-check.png. Installs python3-qgis when missing (Debian; about 100 s).
#   DATABASE_URL=postgres://user@host:port/db scripts/qgis-check.sh [SCHEMA] [PROJECT]
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMA=${1:-mapillary}
PROJECT=${2:-mly-harvest}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! QT_QPA_PLATFORM=offscreen /usr/bin/python3 -c 'import qgis.core' 2>/dev/null; then
  echo "qgis-check: installing python3-qgis" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-qgis >&2
fi
: "${DATABASE_URL:?set DATABASE_URL=postgres://user[:password]@host[:port]/db}"
# libpq keywords from the URL (the password, if any, goes to PGPASSWORD, not the command line).
rest=${DATABASE_URL#*://}; auth=postgres; [[ $rest == *@* ]] && { auth=${rest%@*}; rest=${rest##*@}; }
user=${auth%%:*}; [[ $auth == *:* ]] && export PGPASSWORD=${auth#*:}
hostport=${rest%%/*}; db=${rest#*/}; db=${db%%\?*}
host=${hostport%%:*}; port=5432; [[ $hostport == *:* ]] && port=${hostport##*:}
QT_QPA_PLATFORM=offscreen exec /usr/bin/python3 scripts/qgis/check_layers.py \
  --conn "dbname='$db' host=$host port=$port user='$user'" --schema "$SCHEMA" --sql-dir sql \
  --project "$PROJECT" --png qgis-check.png
