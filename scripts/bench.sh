#!/usr/bin/env bash
# Benchmarks of mly-harvest (issue 7), in one run, against its own simulator and database.
#   scripts/bench.sh [--quick]
# Writes bench-out/results.json (every figure, with the machine) and prints a table.
# Scenarios:
#   1 load   - sync a dense region, enrichment off, no rate limits, then re-read it unchanged with
#              ETags ignored; peers measured in the same run on the same tiles (downloaded once):
#              ogr2ogr over the tile directory, ogr2ogr into a staging table + an
#              `INSERT ... ON CONFLICT ... WHERE ... IS DISTINCT FROM` upsert, and psql COPY of the
#              rows the sync wrote into the same tables and indexes; medians of BENCH_REPS (3) runs
#   2 api    - Graph calls per 1,000 images and tile requests per tile, first harvest and re-sync
#              after one simulator epoch; against the naive "bbox search + one call per image"
#   3 limits - low simulator limits (search 300/min, entity 600/min): achieved rate and throttling
#   4 memory - peak RSS of coverage-only syncs of a ~50-tile and a ~5,000-tile sparse region
#   5 decode - MVT decode throughput on the real fixture tiles vs a plain protobuf parse
#   6 download - `images download` of BENCH_DL_IMAGES (10,000) pictures at original size after a
#              coverage-only sync: files/s, MB/s, Graph calls per 1,000 pictures and peak RSS; then
#              BENCH_DL_LATENCY_IMAGES (2,000) pictures against the simulator's latency model
#              (`--latency realistic`, when `simulate --help` lists --latency; else n/a)
# Regions can be overridden: BENCH_LOAD_REGION, BENCH_API_REGION, BENCH_LIMITS_REGION, BENCH_LIMITS_ENTITY_REGION,
# BENCH_MEM_SMALL, BENCH_MEM_LARGE, BENCH_DL_REGION (BENCH_DL_IMAGES, BENCH_DL_CONCURRENCY,
# BENCH_DL_LATENCY_IMAGES, BENCH_DL_LATENCY_ARGS: the simulator's latency options, default
# "--latency realistic"). --quick shrinks every
# region (a smoke run of the script).
# BENCH_ONLY=load (comma-separated scenario names) runs a subset.
# Needs: cargo, psql, curl, jq, /usr/bin/time, ogr2ogr (gdal-bin). Uses DATABASE_URL as admin URL when set, else
# scripts/pg.sh starts a throwaway cluster. Creates and drops databases named mly_bench_*.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
# BENCH_ONLY=load,api,... runs only those scenarios (load, api, limits, memory, decode, download).
ONLY=${BENCH_ONLY:-}
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# Tools the figures are read with; installed from Debian when missing (fresh machines).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
[ -x /usr/bin/time ] || missing+=(time)
command -v ogr2ogr >/dev/null || missing+=(gdal-bin)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

if [ "$QUICK" = 1 ]; then
  LOAD_REGION=${BENCH_LOAD_REGION:-12.99,55.595,13.03,55.600}
  API_REGION=${BENCH_API_REGION:-12.99,55.595,13.03,55.600}
  LIMITS_REGION=${BENCH_LIMITS_REGION:-13.03,55.56,13.07,55.58}
  LIMITS_ENTITY_REGION=${BENCH_LIMITS_ENTITY_REGION:-13.035,55.595,13.04,55.5955}
  MEM_SMALL=${BENCH_MEM_SMALL:-14.45,56.48,14.55,56.52}
  MEM_LARGE=${BENCH_MEM_LARGE:-14.3,56.4,14.7,56.6}
  DL_REGION=${BENCH_DL_REGION:-12.99,55.595,13.03,55.600}
  DL_IMAGES=${BENCH_DL_IMAGES:-1000}
  DL_LATENCY_IMAGES=${BENCH_DL_LATENCY_IMAGES:-200}
else
  # Greater Malmö (~200 z14 tiles): the simulator's dense core 14/8783/5134 and its suburbs.
  LOAD_REGION=${BENCH_LOAD_REGION:-12.85,55.52,13.15,55.68}
  # The dense core tile and a neighbour.
  API_REGION=${BENCH_API_REGION:-12.99,55.595,13.03,55.600}
  # Search-bound: central Malmö (~35 tiles, ~250k images) needs several hundred bbox searches,
  # more than a minute's worth at 300/min. Entity-bound: the dense core tile with detections on
  # (one multi-id call per 50 images: ~690 calls, more than a minute's worth at 600/min).
  LIMITS_REGION=${BENCH_LIMITS_REGION:-12.92,55.56,13.08,55.64}
  LIMITS_ENTITY_REGION=${BENCH_LIMITS_ENTITY_REGION:-12.99,55.595,12.995,55.5955}
  # Sparse countryside around 14.5,56.5: ~50 and ~5,000 z14 tiles.
  MEM_SMALL=${BENCH_MEM_SMALL:-14.40,56.47,14.58,56.53}
  MEM_LARGE=${BENCH_MEM_LARGE:-13.40,56.21,15.62,56.81}
  # The dense core tile and a neighbour hold ~55k images; the download takes the first 10,000 by id.
  DL_REGION=${BENCH_DL_REGION:-12.99,55.595,13.03,55.600}
  DL_IMAGES=${BENCH_DL_IMAGES:-10000}
  # Every answer held about a second: 2,000 pictures at 8 in flight take some four minutes.
  DL_LATENCY_IMAGES=${BENCH_DL_LATENCY_IMAGES:-2000}
fi
DL_CONCURRENCY=${BENCH_DL_CONCURRENCY:-8}
DL_LATENCY_ARGS=${BENCH_DL_LATENCY_ARGS:---latency realistic}
# Timed loads are repeated and their medians reported: the machine is shared and noisy.
if [ "$QUICK" = 1 ]; then REPS=${BENCH_REPS:-1}; else REPS=${BENCH_REPS:-3}; fi
LIMIT_SEARCH=${BENCH_SEARCH_PER_MINUTE:-300}
LIMIT_ENTITY=${BENCH_ENTITY_PER_MINUTE:-600}

OUT=$ROOT/bench-out
mkdir -p "$OUT"
WORK=$(mktemp -d)
RESULTS=$WORK/results.json
echo '{}' >"$RESULTS"
# put KEY JSON-VALUE: records one figure (dotted path) in the results document.
put() { jq --argjson v "$2" "setpath(\"$1\" | split(\".\"); \$v)" "$RESULTS" >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"; }
puts() { put "$1" "$(jq -n --arg s "$2" '$s')"; }
now() { date +%s.%N; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "null"; else printf "%.4f\n", a / b }'; }

SIM_PID=""
cleanup() {
  [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building (release)"
cargo build --release -q --bin mly-harvest
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mly-harvest"

ADMIN=$(scripts/pg.sh)
BASE=${ADMIN%/*}
# fresh_db NAME: drops and creates database NAME, prints its URL.
fresh_db() {
  psql "$ADMIN" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
  echo "$BASE/$1"
}

# start_sim ARGS...: starts the simulator on a free loopback port; sets SIM_URL and SIM_PID.
start_sim() {
  local out=$WORK/sim.out
  : >"$out"
  "$BIN" simulate --listen 127.0.0.1:0 "$@" >"$out" 2>&1 &
  SIM_PID=$!
  for _ in $(seq 200); do grep -q '^listening on ' "$out" && break; sleep 0.05; done
  SIM_URL=$(sed -n 's/^listening on //p' "$out" | head -n1)
  [ -n "$SIM_URL" ] || { cat "$out" >&2; die "the simulator did not start"; }
}
stop_sim() { kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; SIM_PID=""; }
stats() { curl -sf "$SIM_URL/__sim/stats"; }

# sync DB REGION TAG [ENV=VALUE...]: runs `mly-harvest sync` under /usr/bin/time -v; leaves the
# summary in $WORK/TAG.out, time's report in $WORK/TAG.time, sets WALL (s) and RSS_MB.
sync_run() {
  local db=$1 region=$2 tag=$3
  shift 3
  local t0 t1 rc=0
  t0=$(now)
  env DATABASE_URL="$db" MLY_MAPILLARY__GRAPH_URL="$SIM_URL" MLY_MAPILLARY__TILES_URL="$SIM_URL" \
    MAPILLARY_ACCESS_TOKEN='MLY|4000000000000001|0123456789abcdef0123456789abcdef' \
    MLY_LIMITS__TILES_PER_DAY=10000000 MLY_LIMITS__TILES_PER_MINUTE=100000000 "$@" \
    /usr/bin/time -v -o "$WORK/$tag.time" "$BIN" -q sync --yes "$region" >"$WORK/$tag.out" 2>"$WORK/$tag.err" || rc=$?
  t1=$(now)
  WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
  RSS_MB=$(awk -F: '/Maximum resident set size/ { printf "%.1f\n", $2 / 1024 }' "$WORK/$tag.time")
  cp "$WORK/$tag.out" "$OUT/$tag.summary.txt"
  if [ "$rc" != 0 ]; then
    cat "$WORK/$tag.out" "$WORK/$tag.err" >&2
    die "sync $tag exited with $rc"
  fi
  log "$tag: $(head -n1 "$WORK/$tag.out") in ${WALL}s, peak RSS ${RSS_MB} MB"
}
# summary_num TAG REGEX: first number captured by the sed regex in the summary.
summary_num() { sed -nE "s#.*$2.*#\1#p" "$WORK/$1.out" | head -n1; }
count() { psql "$1" -XtAc "$2"; }

put machine "$(jq -n --arg cores "$(nproc)" --arg mem "$(awk '/MemTotal/ { printf "%.1f", $2/1048576 }' /proc/meminfo)" \
  --arg cpu "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n1)" --arg kernel "$(uname -r)" \
  --arg pg "$(psql "$ADMIN" -XtAc 'SHOW server_version')" \
  '{cores: ($cores|tonumber), ram_gib: ($mem|tonumber), cpu: $cpu, kernel: $kernel, postgres: $pg}')"
put quick "$QUICK"
puts started_at "$(date -u +%FT%TZ)"
puts commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

###############################################################################################
if want load; then
log "1/6 load speed: $LOAD_REGION (coverage only, enrichment off, no rate limits), $REPS repetitions"
LOAD_ENV=(MLY_HARVEST__ENRICH=false MLY_HARVEST__TILESETS=mly1_public
  MLY_LIMITS__SEARCH_PER_MINUTE=100000000 MLY_LIMITS__ENTITY_PER_MINUTE=100000000)
start_sim --tiles-per-day 100000000 --search-per-minute 100000000 --entity-per-minute 100000000
# Warm-up into a scratch database: the simulator then serves every tile from its cache, so the timed
# syncs measure the harvester and the database, not the simulator generating the world on the same
# two cores (ogr2ogr and the COPY baseline do no such work either).
WARM=$(fresh_db mly_bench_warm)
sync_run "$WARM" "$LOAD_REGION" load_warmup "${LOAD_ENV[@]}"
# The peers read the very same tiles, downloaded once into a z/x/y.pbf directory (an empty tile is
# answered 204 and has no file, as a tile server's directory would have none).
TILES_DIR=$WORK/tiles
for t in $(count "$WARM" "SELECT z || '/' || x || '/' || y FROM mapillary.harvest_tile"); do
  mkdir -p "$TILES_DIR/${t%/*}"
  curl -sf -o "$TILES_DIR/$t.pbf" "$SIM_URL/maps/vtp/mly1_public/2/$t?access_token=MLY%7C4000000000000001%7C0123456789abcdef0123456789abcdef" \
    || die "downloading tile $t"
  [ -s "$TILES_DIR/$t.pbf" ] || rm -f "$TILES_DIR/$t.pbf"
done
TILE_FILES=$(find "$TILES_DIR" -name '*.pbf' | wc -l)
TILE_BYTES=$(find "$TILES_DIR" -name '*.pbf' -exec cat {} + | wc -c)
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_warm WITH (FORCE)" >/dev/null
ZDIR=$TILES_DIR/$(ls "$TILES_DIR" | head -n1)
# ogr_conn URL: GDAL's connection string for a postgres:// URL of the throwaway cluster kind.
ogr_conn() {
  local rest=${1#*://} auth hostport db
  auth=${rest%%@*}; hostport=${rest#*@}; db=${hostport#*/}; hostport=${hostport%%/*}
  echo "PG:host=${hostport%%:*} port=${hostport##*:} user=${auth%%:*} dbname=$db"
}
# data_stats DB: inserted|updated|deleted|dead tuples of the three data tables, once the counters
# stopped moving (each backend flushes its statistics when it goes idle or exits).
data_stats() {
  local q="SELECT coalesce(sum(n_tup_ins), 0) || '|' || coalesce(sum(n_tup_upd), 0) || '|' || coalesce(sum(n_tup_del), 0)
    || '|' || coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables
    WHERE schemaname = 'mapillary' AND relname IN ('images', 'map_features', 'sequences')" a b
  a=$(count "$1" "$q")
  for _ in $(seq 20); do
    sleep 0.5
    b=$(count "$1" "$q")
    [ "$a" = "$b" ] && break
    a=$b
  done
  echo "$a"
}
# The staging-upsert recipe of a GIS user who wants a second load to write only what changed.
OGR_TARGET="CREATE TABLE IF NOT EXISTS target (id bigint PRIMARY KEY, sequence_id text, captured_at bigint,
  compass_angle double precision, is_pano boolean, organization_id bigint, creator_id bigint,
  geom geometry(Point, 3857));
  CREATE INDEX IF NOT EXISTS target_geom_gix ON target USING gist (geom)"
OGR_UPSERT="INSERT INTO target AS t (id, sequence_id, captured_at, compass_angle, is_pano, organization_id, creator_id, geom)
  SELECT DISTINCT ON (id) id, sequence_id, captured_at, compass_angle, is_pano::boolean, organization_id, creator_id, geom
  FROM stage ORDER BY id
  ON CONFLICT (id) DO UPDATE SET sequence_id = EXCLUDED.sequence_id, captured_at = EXCLUDED.captured_at,
    compass_angle = EXCLUDED.compass_angle, is_pano = EXCLUDED.is_pano, organization_id = EXCLUDED.organization_id,
    creator_id = EXCLUDED.creator_id, geom = EXCLUDED.geom
  WHERE (t.sequence_id, t.captured_at, t.compass_angle, t.is_pano, t.organization_id, t.creator_id, t.geom)
    IS DISTINCT FROM (EXCLUDED.sequence_id, EXCLUDED.captured_at, EXCLUDED.compass_angle, EXCLUDED.is_pano,
                      EXCLUDED.organization_id, EXCLUDED.creator_id, EXCLUDED.geom)"
# ogr_load DB TABLE: ogr2ogr, one process over the tile directory, COPY into a new table.
ogr_load() {
  ogr2ogr -f PostgreSQL "$(ogr_conn "$1")" "$ZDIR" image -nln "$2" -nlt POINT -overwrite \
    -lco GEOMETRY_NAME=geom -lco SPATIAL_INDEX=GIST --config PG_USE_COPY YES \
    || die "ogr2ogr into $2 failed"
}
ogr_upsert_load() { ogr_load "$1" stage && psql "$1" -qX -v ON_ERROR_STOP=1 -c "$OGR_UPSERT" >/dev/null; }
timed() { local t0 t1; t0=$(now); "$@" >&2; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'; }
SYNC_FIRST=() SYNC_REREAD=() OGR_DIR=() OGR_UPSERT_S=() COPY_S=() REREAD_STATS=()
for rep in $(seq "$REPS"); do
  DB=$(fresh_db mly_bench_load)
  sync_run "$DB" "$LOAD_REGION" load "${LOAD_ENV[@]}"
  SYNC_FIRST+=("$WALL")
  SYNC_RSS=$RSS_MB
  # Second load of the unchanged region with ETags ignored (as a tile server that does not honour
  # them): the same tiles are read, diffed and must write nothing but their tile state.
  psql "$DB" -qXc "UPDATE mapillary.tile_state SET etag = NULL"
  before=$(data_stats "$DB")
  sync_run "$DB" "$LOAD_REGION" load_reread "${LOAD_ENV[@]}"
  SYNC_REREAD+=("$WALL")
  after=$(data_stats "$DB")
  REREAD_STATS+=("$(jq -n --arg b "$before" --arg a "$after" '
    ($b | split("|") | map(tonumber)) as $b | ($a | split("|") | map(tonumber)) as $a |
    {inserted: ($a[0] - $b[0]), updated: ($a[1] - $b[1]), deleted: ($a[2] - $b[2]), dead_tuples_after: $a[3]}')")
  IMAGES=$(count "$DB" "SELECT count(*) FROM mapillary.images")
  SEQS=$(count "$DB" "SELECT count(*) FROM mapillary.sequences")
  TILES=$(summary_num load 'tiles [0-9]+/([0-9]+) done')
  # Baseline: the same rows of the data tables the sync wrote, dumped, truncated and loaded back
  # with COPY into the same tables with all their indexes.
  for t in images sequences; do
    psql "$DB" -XqAc "COPY mapillary.$t TO STDOUT" >"$WORK/$t.copy"
  done
  psql "$DB" -Xq -c "TRUNCATE mapillary.images, mapillary.sequences" -c "CHECKPOINT"
  COPY_S+=("$(timed psql "$DB" -Xq -v ON_ERROR_STOP=1 -c "BEGIN" \
    -c "\\copy mapillary.images FROM '$WORK/images.copy'" \
    -c "\\copy mapillary.sequences FROM '$WORK/sequences.copy'" -c "COMMIT")")
  [ "$(count "$DB" "SELECT count(*) FROM mapillary.images")" = "$IMAGES" ] || die "COPY baseline lost rows"
  COPY_BYTES=$(cat "$WORK/images.copy" "$WORK/sequences.copy" | wc -c)
  rm -f "$WORK"/*.copy
  psql "$ADMIN" -qXc "DROP DATABASE mly_bench_load WITH (FORCE)" >/dev/null

  # Peers: ogr2ogr over the same tile directory into a fresh database with PostGIS.
  ODB=$(fresh_db mly_bench_ogr)
  psql "$ODB" -qX -v ON_ERROR_STOP=1 -c "CREATE EXTENSION postgis" -c "CHECKPOINT" >/dev/null
  OGR_DIR+=("$(timed ogr_load "$ODB" ogr_images)")
  OGR_ROWS=$(count "$ODB" "SELECT count(*) FROM ogr_images")
  # The staging-upsert recipe: a first load (not timed) fills the target, the timed second load of
  # the same tiles goes through a staging table and writes only rows that differ.
  psql "$ODB" -qX -v ON_ERROR_STOP=1 -c "$OGR_TARGET" >/dev/null
  ogr_load "$ODB" stage
  psql "$ODB" -qX -v ON_ERROR_STOP=1 -c "$OGR_UPSERT" -c "CHECKPOINT" >/dev/null
  OGR_UPSERT_S+=("$(timed ogr_upsert_load "$ODB")")
  psql "$ADMIN" -qXc "DROP DATABASE mly_bench_ogr WITH (FORCE)" >/dev/null
  log "load rep $rep: sync ${SYNC_FIRST[-1]} s, re-read ${SYNC_REREAD[-1]} s ($(echo "${REREAD_STATS[-1]}" | jq -c .)), ogr2ogr dir ${OGR_DIR[-1]} s, ogr2ogr staging-upsert ${OGR_UPSERT_S[-1]} s, COPY ${COPY_S[-1]} s"
done
stop_sim
SYNC_WALL=$(printf '%s\n' "${SYNC_FIRST[@]}" | median)
REREAD_WALL=$(printf '%s\n' "${SYNC_REREAD[@]}" | median)
OGR_WALL=$(printf '%s\n' "${OGR_DIR[@]}" | median)
OGR_UPSERT_WALL=$(printf '%s\n' "${OGR_UPSERT_S[@]}" | median)
COPY_WALL=$(printf '%s\n' "${COPY_S[@]}" | median)
arr() { printf '%s\n' "$@" | jq -s .; }
put load "$(jq -n --arg region "$LOAD_REGION" --argjson tiles "$TILES" --argjson images "$IMAGES" \
  --argjson sequences "$SEQS" --argjson reps "$REPS" --argjson sync_s "$SYNC_WALL" --argjson copy_s "$COPY_WALL" \
  --argjson reread_s "$REREAD_WALL" --argjson ogr_s "$OGR_WALL" --argjson ogr_up_s "$OGR_UPSERT_WALL" \
  --argjson ogr_rows "$OGR_ROWS" --argjson tile_files "$TILE_FILES" --argjson tile_bytes "$TILE_BYTES" \
  --argjson rss "$SYNC_RSS" --argjson bytes "$COPY_BYTES" \
  --argjson all_sync "$(arr "${SYNC_FIRST[@]}")" --argjson all_reread "$(arr "${SYNC_REREAD[@]}")" \
  --argjson all_ogr "$(arr "${OGR_DIR[@]}")" --argjson all_ogr_up "$(arr "${OGR_UPSERT_S[@]}")" \
  --argjson all_copy "$(arr "${COPY_S[@]}")" --argjson reread_writes "$(arr "${REREAD_STATS[@]}")" '
  {region: $region, tiles: $tiles, tile_files: $tile_files, tile_bytes: $tile_bytes, images: $images,
    sequences: $sequences, repetitions: $reps, medians_of: $reps,
    sync_wall_s: $sync_s, sync_reread_wall_s: $reread_s, ogr2ogr_dir_wall_s: $ogr_s, ogr2ogr_rows: $ogr_rows,
    ogr2ogr_staging_upsert_wall_s: $ogr_up_s, copy_baseline_wall_s: $copy_s, copy_bytes: $bytes,
    sync_over_ogr2ogr: ($sync_s / $ogr_s), reread_over_ogr2ogr_upsert: ($reread_s / $ogr_up_s),
    sync_over_copy: ($sync_s / $copy_s), sync_images_per_s: ($images / $sync_s),
    ogr2ogr_images_per_s: ($ogr_rows / $ogr_s), copy_images_per_s: ($images / $copy_s),
    reread_writes: $reread_writes,
    reread_rows_updated: ([$reread_writes[] | .updated + .inserted + .deleted] | max),
    all: {sync_s: $all_sync, reread_s: $all_reread, ogr2ogr_dir_s: $all_ogr, ogr2ogr_upsert_s: $all_ogr_up, copy_s: $all_copy},
    sync_peak_rss_mb: $rss, target_sync_over_ogr2ogr_max: 0.9, target_reread_over_upsert_max: 0.5,
    target_sync_over_copy_max: 2}')"
fi

###############################################################################################
if want api; then
log "2/6 API economy: $API_REGION (all tilesets, enrichment on), then re-sync after one epoch"
DB=$(fresh_db mly_bench_api)
start_sim --tiles-per-day 100000000
sync_run "$DB" "$API_REGION" api_first
S=$(stats)
stop_sim
IMG1=$(count "$DB" "SELECT count(*) FROM mapillary.images_live")
FEAT1=$(count "$DB" "SELECT count(*) FROM mapillary.map_features_live")
ENR1=$(count "$DB" "SELECT count(*) FROM mapillary.images WHERE enriched_at IS NOT NULL")
Z14=$(count "$DB" "SELECT count(DISTINCT (z, x, y)) FROM mapillary.tile_state")
JOBS=$(summary_num api_first 'tiles [0-9]+/([0-9]+) done')
FIRST=$(jq -n --argjson s "$S" --argjson img "$IMG1" --argjson feat "$FEAT1" --argjson enr "$ENR1" \
  --argjson z14 "$Z14" --argjson jobs "$JOBS" '
  ($s.requests.search + $s.requests.entity) as $graph |
  # The seed scripts: bbox searches (2,000 results per page at best) listing the ids, then one
  # Graph call per image and per map feature.
  (($img / 2000 | ceil) + ($feat / 2000 | ceil) + $img + $feat) as $naive |
  {images: $img, map_features: $feat, images_enriched: $enr, z14_tiles: $z14, tile_jobs: $jobs,
   tile_requests: $s.requests.tiles, search_calls: $s.requests.search, entity_calls: $s.requests.entity,
   throttled: $s.throttled, graph_calls: $graph,
   graph_calls_per_1000_records: (1000 * $graph / ($img + $feat)),
   graph_calls_per_1000_images: (1000 * $graph / $img),
   tile_requests_per_tile_job: ($s.requests.tiles / $jobs),
   naive_graph_calls: $naive, naive_graph_calls_per_1000_images: (1000 * $naive / $img),
   naive_over_ours: ($naive / ([$graph, 1] | max))}')
start_sim --tiles-per-day 100000000 --epoch 1
sync_run "$DB" "$API_REGION" api_resync
S=$(stats)
stop_sim
IMG2=$(count "$DB" "SELECT count(*) FROM mapillary.images_live")
FEAT2=$(count "$DB" "SELECT count(*) FROM mapillary.map_features_live")
NEW2=$(summary_num api_resync ' ([0-9]+) new,')
CHG2=$(summary_num api_resync ' ([0-9]+) changed,')
NM2=$(summary_num api_resync '\(([0-9]+) not modified\)')
RESYNC=$(jq -n --argjson s "$S" --argjson img "$IMG2" --argjson feat "$FEAT2" --argjson jobs "$JOBS" \
  --argjson new "${NEW2:-null}" --argjson chg "${CHG2:-null}" --argjson nm "${NM2:-null}" '
  ($s.requests.search + $s.requests.entity) as $graph |
  (($img / 2000 | ceil) + ($feat / 2000 | ceil) + $img + $feat) as $naive |
  {images: $img, map_features: $feat, new_records: $new, changed_records: $chg,
   tile_requests: $s.requests.tiles, tiles_not_modified: $nm, search_calls: $s.requests.search,
   entity_calls: $s.requests.entity, throttled: $s.throttled, graph_calls: $graph,
   graph_calls_per_1000_images: (1000 * $graph / $img), tile_requests_per_tile_job: ($s.requests.tiles / $jobs),
   naive_graph_calls: $naive, naive_over_ours: ($naive / ([$graph, 1] | max))}')
put api "$(jq -n --arg region "$API_REGION" --argjson f "$FIRST" --argjson r "$RESYNC" \
  '{region: $region, first: $f, resync_epoch1: $r, target_naive_over_ours_min: 500}')"
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_api WITH (FORCE)" >/dev/null
fi

###############################################################################################
if want limits; then
log "3/6 limits: $LIMITS_REGION (search-bound) and $LIMITS_ENTITY_REGION with detections (entity-bound), search $LIMIT_SEARCH/min, entity $LIMIT_ENTITY/min"
DB=$(fresh_db mly_bench_limits)
start_sim --tiles-per-day 100000000 --search-per-minute "$LIMIT_SEARCH" --entity-per-minute "$LIMIT_ENTITY"
sync_run "$DB" "$LIMITS_REGION" limits MLY_LIMITS__SEARCH_PER_MINUTE="$LIMIT_SEARCH" \
  MLY_LIMITS__ENTITY_PER_MINUTE="$LIMIT_ENTITY" MLY_HARVEST__TILESETS=mly1_public
LIMITS_SEARCH_WALL=$WALL
DB2=$(fresh_db mly_bench_limits_entity)
sync_run "$DB2" "$LIMITS_ENTITY_REGION" limits_entity MLY_LIMITS__SEARCH_PER_MINUTE="$LIMIT_SEARCH" \
  MLY_LIMITS__ENTITY_PER_MINUTE="$LIMIT_ENTITY" MLY_HARVEST__TILESETS=mly1_public MLY_HARVEST__DETECTIONS=true
WALL=$(awk -v a="$LIMITS_SEARCH_WALL" -v b="$WALL" 'BEGIN { printf "%.3f\n", a + b }')
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_limits_entity WITH (FORCE)" >/dev/null
S=$(stats)
stop_sim
put limits "$(jq -n --arg region "$LIMITS_REGION + $LIMITS_ENTITY_REGION" --argjson s "$S" --argjson wall "$WALL" \
  --argjson ls "$LIMIT_SEARCH" --argjson le "$LIMIT_ENTITY" '
  {region: $region, wall_s: $wall, search_limit_per_min: $ls, entity_limit_per_min: $le,
   search_calls: $s.requests.search, entity_calls: $s.requests.entity,
   search_max_per_minute: $s.max_per_minute.search, entity_max_per_minute: $s.max_per_minute.entity,
   search_max_over_limit: ($s.max_per_minute.search / $ls), entity_max_over_limit: ($s.max_per_minute.entity / $le),
   search_mean_per_min_over_run: ($s.requests.search / ($wall / 60)),
   entity_mean_per_min_over_run: ($s.requests.entity / ($wall / 60)),
   throttled: $s.throttled, statuses: $s.statuses, target_min_fraction_of_limit: 0.95}')"
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_limits WITH (FORCE)" >/dev/null
fi

###############################################################################################
if want memory; then
log "4/6 memory: $MEM_SMALL and $MEM_LARGE (coverage only, enrichment off)"
MEM='{}'
start_sim --tiles-per-day 100000000
for pair in "small:$MEM_SMALL" "large:$MEM_LARGE"; do
  name=${pair%%:*}
  region=${pair#*:}
  DB=$(fresh_db mly_bench_mem)
  sync_run "$DB" "$region" "mem_$name" MLY_HARVEST__ENRICH=false MLY_HARVEST__TILESETS=mly1_public
  T=$(summary_num "mem_$name" 'tiles [0-9]+/([0-9]+) done')
  I=$(count "$DB" "SELECT count(*) FROM mapillary.images")
  MEM=$(jq -n --argjson m "$MEM" --arg n "$name" --arg region "$region" --argjson t "$T" --argjson i "$I" \
    --argjson wall "$WALL" --argjson rss "$RSS_MB" \
    '$m + {($n): {region: $region, tiles: $t, images: $i, wall_s: $wall, tiles_per_s: ($t / $wall), peak_rss_mb: $rss}}')
  psql "$ADMIN" -qXc "DROP DATABASE mly_bench_mem WITH (FORCE)" >/dev/null
done
stop_sim
put memory "$(jq -n --argjson m "$MEM" '$m + {large_over_small_rss: ($m.large.peak_rss_mb / $m.small.peak_rss_mb), target_max_mb: 200}')"
fi

###############################################################################################
if want decode; then
log "5/6 decode: real fixture tiles (cargo test --release --test mvt_fixtures -- --ignored)"
cargo test -q --release --test mvt_fixtures -- --ignored --nocapture throughput >"$WORK/decode.out" 2>&1 \
  || { cat "$WORK/decode.out" >&2; die "decode bench failed"; }
DEC=$(grep '^BENCH ' "$WORK/decode.out" | sed 's/^BENCH //' | jq -Rn '
  [inputs | [split(" ")[] | split("=") | {key: .[0], value: (.[1] | tonumber? // .)}] | from_entries
   | . + {decode_over_protobuf_throughput: (.decode_tile_features_per_s / .protobuf_only_features_per_s)}]')
put decode "$DEC"
fi
###############################################################################################
if want download; then
log "6/6 download: $DL_IMAGES pictures at original size from $DL_REGION (after a coverage-only sync), concurrency $DL_CONCURRENCY"
DB=$(fresh_db mly_bench_dl)
start_sim --tiles-per-day 100000000
sync_run "$DB" "$DL_REGION" dl_sync MLY_HARVEST__ENRICH=false MLY_HARVEST__TILESETS=mly1_public
AVAIL=$(count "$DB" "SELECT count(*) FROM mapillary.images_live")
[ "$AVAIL" -ge "$DL_IMAGES" ] || die "download: $DL_REGION holds $AVAIL images, fewer than $DL_IMAGES"
# download_run TAG N: `images download` of the first N images by id into a new directory under
# /usr/bin/time -v; sets WALL, RSS_MB, DL_FILES, DL_BYTES, DL_GRAPH (Graph calls the simulator
# answered meanwhile).
download_run() {
  local tag=$1 n=$2 dir=$WORK/$1.pics rc=0 t0 t1 s0 s1
  local where="id IN (SELECT id FROM images_live ORDER BY id LIMIT $n)"
  s0=$(stats)
  t0=$(now)
  env DATABASE_URL="$DB" MLY_MAPILLARY__GRAPH_URL="$SIM_URL" MLY_MAPILLARY__TILES_URL="$SIM_URL" \
    MAPILLARY_ACCESS_TOKEN='MLY|4000000000000001|0123456789abcdef0123456789abcdef' \
    /usr/bin/time -v -o "$WORK/$tag.time" "$BIN" -q images download --where "$where" --size original \
    --out "$dir" --concurrency "$DL_CONCURRENCY" >"$WORK/$tag.out" 2>"$WORK/$tag.err" || rc=$?
  t1=$(now)
  s1=$(stats)
  cp "$WORK/$tag.out" "$OUT/$tag.summary.txt"
  [ "$rc" = 0 ] || { cat "$WORK/$tag.out" "$WORK/$tag.err" >&2; die "download $tag exited with $rc"; }
  WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
  RSS_MB=$(awk -F: '/Maximum resident set size/ { printf "%.1f\n", $2 / 1024 }' "$WORK/$tag.time")
  DL_FILES=$(count "$DB" "SELECT count(*) FROM mapillary.image_files WHERE root = '$(realpath "$dir")'")
  DL_BYTES=$(find "$dir" -name '*.jpg' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  DL_GRAPH=$(jq -n --argjson a "$s0" --argjson b "$s1" \
    '($b.requests.search + $b.requests.entity) - ($a.requests.search + $a.requests.entity)')
  [ "$DL_FILES" = "$n" ] || die "download $tag: $DL_FILES files of $n"
  rm -rf "$dir"
  log "$tag: $(head -n1 "$WORK/$tag.out") (wall ${WALL}s, peak RSS ${RSS_MB} MB)"
}
download_run dl_plain "$DL_IMAGES"
PLAIN=$(jq -n --argjson wall "$WALL" --argjson rss "$RSS_MB" --argjson files "$DL_FILES" --argjson bytes "$DL_BYTES" \
  --argjson graph "$DL_GRAPH" '{wall_s: $wall, files: $files, bytes: $bytes, files_per_s: ($files / $wall),
  mb_per_s: ($bytes / 1e6 / $wall), graph_calls: $graph, graph_calls_per_1000: (1000 * $graph / $files), peak_rss_mb: $rss}')
stop_sim
LATENCY=null
if "$BIN" simulate --help | grep -q -- '--latency'; then
  # shellcheck disable=SC2086 # the options are words on purpose
  start_sim --tiles-per-day 100000000 $DL_LATENCY_ARGS
  download_run dl_latency "$DL_LATENCY_IMAGES"
  LATENCY=$(jq -n --argjson wall "$WALL" --argjson rss "$RSS_MB" --argjson files "$DL_FILES" --argjson bytes "$DL_BYTES" \
    --argjson graph "$DL_GRAPH" --arg args "$DL_LATENCY_ARGS" '{simulator_args: $args, files: $files, bytes: $bytes, wall_s: $wall, files_per_s: ($files / $wall),
    mb_per_s: ($bytes / 1e6 / $wall), graph_calls: $graph, graph_calls_per_1000: (1000 * $graph / $files), peak_rss_mb: $rss}')
  stop_sim
else
  log "download: \`mly-harvest simulate --help\` lists no --latency: the latency figures are n/a"
fi
put download "$(jq -n --arg region "$DL_REGION" --argjson n "$DL_IMAGES" --argjson c "$DL_CONCURRENCY" \
  --argjson p "$PLAIN" --argjson l "$LATENCY" '{region: $region, images: $n, size: "original", concurrency: $c,
  no_latency: $p, latency: $l, target_graph_calls_per_1000_max: (20 + 1000 / 50), target_max_rss_mb: 200}')"
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_dl WITH (FORCE)" >/dev/null
fi
puts finished_at "$(date -u +%FT%TZ)"

cp "$RESULTS" "$OUT/results.json"

###############################################################################################
jq -r '
  def f(x): if x == null then "-" elif (x | type) == "number" then
    (if x >= 100 then (x | floor | tostring) else ((x * 100 | round) / 100 | tostring) end) else (x | tostring) end;
  "machine: \(.machine.cores) cores, \(.machine.ram_gib) GiB, \(.machine.cpu); PostgreSQL \(.machine.postgres)",
  "",
  "| scenario | figure | value | baseline / target |",
  "|---|---|---|---|",
  (if .load then
    "| 1 load | first load: \(.load.images) images, \(.load.sequences) sequences, \(.load.tiles) tiles, median of \(.load.medians_of): sync wall s | \(f(.load.sync_wall_s)) | ogr2ogr directory load \(f(.load.ogr2ogr_dir_wall_s)) s, COPY \(f(.load.copy_baseline_wall_s)) s |",
    "| 1 load | sync / ogr2ogr directory load | \(f(.load.sync_over_ogr2ogr))x | <= 0.9x |",
    "| 1 load | sync / COPY | \(f(.load.sync_over_copy))x | <= 2x |",
    "| 1 load | images/s sync vs ogr2ogr vs COPY | \(f(.load.sync_images_per_s)) | \(f(.load.ogr2ogr_images_per_s)), \(f(.load.copy_images_per_s)) |",
    "| 1 load | re-read of the unchanged region, ETags ignored: sync wall s | \(f(.load.sync_reread_wall_s)) | ogr2ogr staging-upsert \(f(.load.ogr2ogr_staging_upsert_wall_s)) s |",
    "| 1 load | re-read / ogr2ogr staging-upsert | \(f(.load.reread_over_ogr2ogr_upsert))x | <= 0.5x |",
    "| 1 load | rows inserted/updated/deleted by the re-read in images, map_features, sequences | \(.load.reread_rows_updated) | 0 |"
  else empty end),
  (if .api then
    "| 2 api first | Graph calls per 1,000 images (\(.api.first.graph_calls) calls, \(.api.first.images) images, \(.api.first.map_features) features) | \(f(.api.first.graph_calls_per_1000_images)) | naive \(f(.api.first.naive_graph_calls_per_1000_images)) |",
    "| 2 api first | naive / ours | \(f(.api.first.naive_over_ours))x | >= 500x |",
    "| 2 api first | tile requests per tile job | \(f(.api.first.tile_requests_per_tile_job)) | 1 |",
    "| 2 api resync | Graph calls per 1,000 images (\(.api.resync_epoch1.graph_calls) calls, \(.api.resync_epoch1.new_records) new, \(.api.resync_epoch1.changed_records) changed) | \(f(.api.resync_epoch1.graph_calls_per_1000_images)) | naive \(f(1000 * .api.resync_epoch1.naive_graph_calls / .api.resync_epoch1.images)) |",
    "| 2 api resync | naive / ours | \(f(.api.resync_epoch1.naive_over_ours))x | >= 500x |",
    "| 2 api resync | tile requests per tile job (\(.api.resync_epoch1.tiles_not_modified) not modified) | \(f(.api.resync_epoch1.tile_requests_per_tile_job)) | 1 |"
  else empty end),
  (if .limits then
    "| 3 limits | search max/min (\(.limits.search_calls) calls) | \(.limits.search_max_per_minute) (\(f(100 * .limits.search_max_over_limit))%) | limit \(.limits.search_limit_per_min), >= 95% |",
    "| 3 limits | entity max/min (\(.limits.entity_calls) calls) | \(.limits.entity_max_per_minute) (\(f(100 * .limits.entity_max_over_limit))%) | limit \(.limits.entity_limit_per_min), >= 95% |",
    "| 3 limits | throttled responses | \(.limits.throttled) | 0 |"
  else empty end),
  (if .memory then
    "| 4 memory | peak RSS \(.memory.small.tiles) tiles (\(f(.memory.small.tiles_per_s)) tiles/s) | \(f(.memory.small.peak_rss_mb)) MB | < 200 MB |",
    "| 4 memory | peak RSS \(.memory.large.tiles) tiles (\(f(.memory.large.tiles_per_s)) tiles/s) | \(f(.memory.large.peak_rss_mb)) MB | < 200 MB, flat |"
  else empty end),
  (if .download then
    "| 6 download | \(.download.images) pictures at original size (\(f(.download.no_latency.bytes / 1e6)) MB), no latency: files/s, MB/s | \(f(.download.no_latency.files_per_s)) files/s, \(f(.download.no_latency.mb_per_s)) MB/s | - |",
    "| 6 download | \(if .download.latency then "\(.download.latency.files) pictures, simulator \(.download.latency.simulator_args)" else "with the simulator latency model" end): files/s, MB/s | \(if .download.latency then "\(f(.download.latency.files_per_s)) files/s, \(f(.download.latency.mb_per_s)) MB/s" else "n/a" end) | - |",
    "| 6 download | Graph calls per 1,000 pictures (\(.download.no_latency.graph_calls) calls) | \(f(.download.no_latency.graph_calls_per_1000)) | <= \(.download.target_graph_calls_per_1000_max) (one per 50: 20) |",
    "| 6 download | peak RSS while downloading | \(f(.download.no_latency.peak_rss_mb)) MB | < 200 MB |"
  else empty end),
  ((.decode // [])[] | "| 5 decode | \(.file | split("/") | last) (\(.features) features): decode_tile features/s | \(f(.decode_tile_features_per_s)) | protobuf only \(f(.protobuf_only_features_per_s)) (\(f(100 * .decode_over_protobuf_throughput))%) |")
' "$OUT/results.json"
log "results: bench-out/results.json"
