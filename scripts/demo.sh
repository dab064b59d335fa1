#!/usr/bin/env bash
# Quick start, command one: a real `sync` of a demo region against the bundled simulator into a
# local PostGIS, then the result and the pictures of one short sequence. Installs PostGIS and starts a throwaway cluster when
# DATABASE_URL is not set (see scripts/pg.sh). No Mapillary token needed.
#   scripts/demo.sh [REGION]      (default: central Malmö, with a dense city-core tile)
set -euo pipefail
cd "$(dirname "$0")/.."
REGION=${1:-12.985,55.595,13.02,55.612}
if [ -z "${DATABASE_URL:-}" ]; then
  ADMIN=$(scripts/pg.sh)
  psql "$ADMIN" -tAc "SELECT 1 FROM pg_database WHERE datname = 'mly_demo'" | grep -q 1 \
    || psql "$ADMIN" -qc "CREATE DATABASE mly_demo"
  export DATABASE_URL="${ADMIN%/*}/mly_demo"
fi
echo "demo: building mly-harvest" >&2
cargo build -q
BIN="${CARGO_TARGET_DIR:-target}/debug/mly-harvest"

SIMOUT=$(mktemp)
"$BIN" simulate --listen 127.0.0.1:0 >"$SIMOUT" 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null; rm -f "$SIMOUT"' EXIT
for _ in $(seq 100); do grep -q '^listening on ' "$SIMOUT" && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$SIMOUT" | head -n1)
[ -n "$URL" ] || { echo "demo: the simulator did not start:" >&2; cat "$SIMOUT" >&2; exit 1; }
echo "demo: simulator at $URL" >&2

export MLY_MAPILLARY__GRAPH_URL="$URL" MLY_MAPILLARY__TILES_URL="$URL"
export MAPILLARY_ACCESS_TOKEN='MLY|4000000000000001|0123456789abcdef0123456789abcdef'
# The simulator is not the live tile server: no pace between tile requests, and a budget that
# repeated demos do not spend (against Mapillary keep the defaults; see README "Tile budget").
export MLY_LIMITS__TILES_PER_MINUTE=6000000 MLY_LIMITS__TILES_PER_DAY=1000000
"$BIN" plan "$REGION"
"$BIN" sync "$REGION"
"$BIN" status

echo
echo "demo: what is in PostGIS now (schema mapillary):"
psql "$DATABASE_URL" -P pager=off -c "
  SELECT (SELECT count(*) FROM mapillary.images_live)       AS images,
         (SELECT count(*) FROM mapillary.sequences)         AS sequences,
         (SELECT count(*) FROM mapillary.map_features_live) AS map_features,
         (SELECT count(*) FROM mapillary.images WHERE enriched_at IS NOT NULL) AS enriched_images"
echo "demo: a sample analysis query (most common map features):"
psql "$DATABASE_URL" -P pager=off -c "
  SELECT object_value, object_type, count(*) AS n
  FROM mapillary.map_features_live GROUP BY 1, 2 ORDER BY n DESC LIMIT 8"
echo "demo: the pictures of one short sequence (mly-harvest images download):"
SEQ=$(psql "$DATABASE_URL" -XtAc "
  SELECT sequence_id FROM mapillary.images_live WHERE sequence_id IS NOT NULL
  GROUP BY 1 ORDER BY count(*) BETWEEN 5 AND 20 DESC, count(*), 1 LIMIT 1")
PICS=${DEMO_PICTURES:-demo-pictures}
"$BIN" images download --sequence "$SEQ" --size 1024 --out "$PICS"
echo "demo: $(find "$PICS/$SEQ" -name '*.jpg' | wc -l) pictures in $PICS/$SEQ/; sidecars $PICS/images.geojson and $PICS/images.csv (open the GeoJSON in QGIS)"
echo "demo: run it again to see a resumed/unchanged re-sync; connect QGIS to: $DATABASE_URL"
