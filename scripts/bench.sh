#!/usr/bin/env bash
# Benchmarks of mly-harvest (issue 7), in one run, against its own simulator and database.
#   scripts/bench.sh [--quick]
# Writes bench-out/results.json (every figure, with the machine) and prints a table.
# Scenarios:
#   1 load   - sync a dense region, enrichment off, no rate limits; baseline: psql COPY of the same
#              rows into the same tables and indexes, measured in the same run
#   2 api    - Graph calls per 1,000 images and tile requests per tile, first harvest and re-sync
#              after one simulator epoch; against the naive "bbox search + one call per image"
#   3 limits - low simulator limits (search 300/min, entity 600/min): achieved rate and throttling
#   4 memory - peak RSS of coverage-only syncs of a ~50-tile and a ~5,000-tile sparse region
#   5 decode - MVT decode throughput on the real fixture tiles vs a plain protobuf parse
# Regions can be overridden: BENCH_LOAD_REGION, BENCH_API_REGION, BENCH_LIMITS_REGION, BENCH_LIMITS_ENTITY_REGION,
# BENCH_MEM_SMALL, BENCH_MEM_LARGE. --quick shrinks every region (a smoke run of the script).
# Needs: cargo, psql, curl, jq, /usr/bin/time. Uses DATABASE_URL as admin URL when set, else
# scripts/pg.sh starts a throwaway cluster. Creates and drops databases named mly_bench_*.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# Tools the figures are read with; installed from Debian when missing (fresh machines).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
[ -x /usr/bin/time ] || missing+=(time)
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
fi
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
log "1/5 load speed: $LOAD_REGION (coverage only, enrichment off, no rate limits)"
DB=$(fresh_db mly_bench_load)
start_sim --tiles-per-day 100000000 --search-per-minute 100000000 --entity-per-minute 100000000
# Warm-up into a scratch database: the simulator then serves every tile from its cache, so the timed
# sync measures the harvester and the database, not the simulator generating the world on the same
# two cores (the COPY baseline does no such work either).
WARM=$(fresh_db mly_bench_warm)
sync_run "$WARM" "$LOAD_REGION" load_warmup MLY_HARVEST__ENRICH=false MLY_HARVEST__TILESETS=mly1_public \
  MLY_LIMITS__SEARCH_PER_MINUTE=100000000 MLY_LIMITS__ENTITY_PER_MINUTE=100000000
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_warm WITH (FORCE)" >/dev/null
sync_run "$DB" "$LOAD_REGION" load MLY_HARVEST__ENRICH=false MLY_HARVEST__TILESETS=mly1_public \
  MLY_LIMITS__SEARCH_PER_MINUTE=100000000 MLY_LIMITS__ENTITY_PER_MINUTE=100000000
stop_sim
SYNC_WALL=$WALL
IMAGES=$(count "$DB" "SELECT count(*) FROM mapillary.images")
SEQS=$(count "$DB" "SELECT count(*) FROM mapillary.sequences")
TILES=$(summary_num load 'tiles [0-9]+/([0-9]+) done')
# Baseline: the same rows of the data tables the sync wrote, dumped, truncated and loaded back
# with COPY into the same tables with all their indexes.
for t in images sequences; do
  psql "$DB" -XqAc "COPY mapillary.$t TO STDOUT" >"$WORK/$t.copy"
done
psql "$DB" -Xq -c "TRUNCATE mapillary.images, mapillary.sequences" -c "CHECKPOINT"
t0=$(now)
psql "$DB" -Xq -v ON_ERROR_STOP=1 -c "BEGIN" \
  -c "\\copy mapillary.images FROM '$WORK/images.copy'" \
  -c "\\copy mapillary.sequences FROM '$WORK/sequences.copy'" -c "COMMIT"
t1=$(now)
COPY_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
[ "$(count "$DB" "SELECT count(*) FROM mapillary.images")" = "$IMAGES" ] || die "COPY baseline lost rows"
COPY_BYTES=$(cat "$WORK/images.copy" "$WORK/sequences.copy" | wc -c)
rm -f "$WORK"/*.copy
put load "$(jq -n --arg region "$LOAD_REGION" --argjson tiles "$TILES" --argjson images "$IMAGES" \
  --argjson sequences "$SEQS" --argjson sync_s "$SYNC_WALL" --argjson copy_s "$COPY_WALL" \
  --argjson rss "$RSS_MB" --argjson bytes "$COPY_BYTES" --argjson ratio "$(ratio "$SYNC_WALL" "$COPY_WALL")" \
  '{region: $region, tiles: $tiles, images: $images, sequences: $sequences, sync_wall_s: $sync_s,
    copy_baseline_wall_s: $copy_s, copy_bytes: $bytes, sync_over_copy: $ratio, sync_images_per_s: ($images / $sync_s),
    copy_images_per_s: ($images / $copy_s), sync_peak_rss_mb: $rss, target_sync_over_copy_max: 2}')"
psql "$ADMIN" -qXc "DROP DATABASE mly_bench_load WITH (FORCE)" >/dev/null

###############################################################################################
log "2/5 API economy: $API_REGION (all tilesets, enrichment on), then re-sync after one epoch"
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

###############################################################################################
log "3/5 limits: $LIMITS_REGION (search-bound) and $LIMITS_ENTITY_REGION with detections (entity-bound), search $LIMIT_SEARCH/min, entity $LIMIT_ENTITY/min"
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

###############################################################################################
log "4/5 memory: $MEM_SMALL and $MEM_LARGE (coverage only, enrichment off)"
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

###############################################################################################
log "5/5 decode: real fixture tiles (cargo test --release --test mvt_fixtures -- --ignored)"
cargo test -q --release --test mvt_fixtures -- --ignored --nocapture throughput >"$WORK/decode.out" 2>&1 \
  || { cat "$WORK/decode.out" >&2; die "decode bench failed"; }
DEC=$(grep '^BENCH ' "$WORK/decode.out" | sed 's/^BENCH //' | jq -Rn '
  [inputs | [split(" ")[] | split("=") | {key: .[0], value: (.[1] | tonumber? // .)}] | from_entries
   | . + {decode_over_protobuf_throughput: (.decode_tile_features_per_s / .protobuf_only_features_per_s)}]')
put decode "$DEC"
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
  "| 1 load | \(.load.images) images, \(.load.sequences) sequences, \(.load.tiles) tiles: sync wall s | \(f(.load.sync_wall_s)) | COPY \(f(.load.copy_baseline_wall_s)) s |",
  "| 1 load | sync / COPY | \(f(.load.sync_over_copy))x | <= 2x |",
  "| 1 load | images/s sync vs COPY | \(f(.load.sync_images_per_s)) | \(f(.load.copy_images_per_s)) |",
  "| 2 api first | Graph calls per 1,000 images (\(.api.first.graph_calls) calls, \(.api.first.images) images, \(.api.first.map_features) features) | \(f(.api.first.graph_calls_per_1000_images)) | naive \(f(.api.first.naive_graph_calls_per_1000_images)) |",
  "| 2 api first | naive / ours | \(f(.api.first.naive_over_ours))x | >= 500x |",
  "| 2 api first | tile requests per tile job | \(f(.api.first.tile_requests_per_tile_job)) | 1 |",
  "| 2 api resync | Graph calls per 1,000 images (\(.api.resync_epoch1.graph_calls) calls, \(.api.resync_epoch1.new_records) new, \(.api.resync_epoch1.changed_records) changed) | \(f(.api.resync_epoch1.graph_calls_per_1000_images)) | naive \(f(1000 * .api.resync_epoch1.naive_graph_calls / .api.resync_epoch1.images)) |",
  "| 2 api resync | naive / ours | \(f(.api.resync_epoch1.naive_over_ours))x | >= 500x |",
  "| 2 api resync | tile requests per tile job (\(.api.resync_epoch1.tiles_not_modified) not modified) | \(f(.api.resync_epoch1.tile_requests_per_tile_job)) | 1 |",
  "| 3 limits | search max/min (\(.limits.search_calls) calls) | \(.limits.search_max_per_minute) (\(f(100 * .limits.search_max_over_limit))%) | limit \(.limits.search_limit_per_min), >= 95% |",
  "| 3 limits | entity max/min (\(.limits.entity_calls) calls) | \(.limits.entity_max_per_minute) (\(f(100 * .limits.entity_max_over_limit))%) | limit \(.limits.entity_limit_per_min), >= 95% |",
  "| 3 limits | throttled responses | \(.limits.throttled) | 0 |",
  "| 4 memory | peak RSS \(.memory.small.tiles) tiles (\(f(.memory.small.tiles_per_s)) tiles/s) | \(f(.memory.small.peak_rss_mb)) MB | < 200 MB |",
  "| 4 memory | peak RSS \(.memory.large.tiles) tiles (\(f(.memory.large.tiles_per_s)) tiles/s) | \(f(.memory.large.peak_rss_mb)) MB | < 200 MB, flat |",
  (.decode[] | "| 5 decode | \(.file | split("/") | last) (\(.features) features): decode_tile features/s | \(f(.decode_tile_features_per_s)) | protobuf only \(f(.protobuf_only_features_per_s)) (\(f(100 * .decode_over_protobuf_throughput))%) |")
' "$OUT/results.json"
log "results: bench-out/results.json"
