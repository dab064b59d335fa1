#!/usr/bin/env bash
# Lints the systemd units in docs/systemd with `systemd-analyze verify` (ExecStart pointed at the
# built binary, which must exist), failing on any warning, not only on errors; then checks the
# cron line's shape and runs the binary with the unit's own arguments up to argument parsing.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/debug/mly-harvest"
[ -x "$BIN" ] || cargo build -q
BIN=$(realpath "$BIN")
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
sed "s|/usr/local/bin/mly-harvest|$BIN|" docs/systemd/mly-harvest.service >"$T/mly-harvest.service"
cp docs/systemd/mly-harvest.timer "$T/"
(cd "$T" && systemd-analyze verify --man=no mly-harvest.service mly-harvest.timer) >"$T/out" 2>&1 || { cat "$T/out" >&2; exit 1; }
# Container noise that is not about the units.
if grep -v -e 'Failed to read \$container' -e 'PR_SET_MM' "$T/out" | grep -q .; then
  echo "check-units: systemd-analyze verify complained:" >&2; cat "$T/out" >&2; exit 1
fi
grep -q '^Persistent=true$' docs/systemd/mly-harvest.timer
# The unit's arguments parse (sync --help stops after parsing, so no database is needed).
ARGS=$(sed -n 's|^ExecStart=/usr/local/bin/mly-harvest ||p' docs/systemd/mly-harvest.service)
# shellcheck disable=SC2086
"$BIN" $ARGS --help >/dev/null
CRON=$(grep -v '^#' docs/systemd/mly-harvest.cron)
[ "$(echo "$CRON" | awk '{print (NF >= 7)}')" = 1 ] || { echo "check-units: bad cron line" >&2; exit 1; }
CARGS=$(echo "$CRON" | sed -n 's|.*&& /usr/local/bin/mly-harvest ||p')
# shellcheck disable=SC2086
"$BIN" $CARGS --help >/dev/null
echo "check-units: systemd service + timer verified, cron line and arguments parse"
