#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with Rust: installs PostGIS and GDAL's ogrinfo
# when missing, starts a throwaway PostgreSQL cluster unless DATABASE_URL is set, then runs every
# test (unit, integration against real PostGIS + the simulator over loopback HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v ogrinfo >/dev/null; then
  echo "test.sh: installing gdal-bin (ogrinfo stands in for QGIS in the schema tests)" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq gdal-bin >&2
fi
# QGIS's own PostGIS provider checks the schema in mly-harvest/tests/qgis.rs (about 100 s to install on a fresh
# Debian; the tests fail without it unless MLY_SKIP_QGIS=1).
if [ -z "${MLY_SKIP_QGIS:-}" ] && ! /usr/bin/python3 -c 'import qgis.core' 2>/dev/null; then
  echo "test.sh: installing python3-qgis (the QGIS check, mly-harvest/tests/qgis.rs)" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-qgis >&2
fi
# tests/sdk_conformance.rs installs the official Mapillary SDK into a venv (needs python3-venv).
if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "test.sh: installing python3-venv (the SDK conformance test)" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >&2
fi
# The cargo-fuzz targets (fuzz/) must keep compiling against the crate. Fuzzing itself needs the
# sanitizer build (RUSTC_BOOTSTRAP=1 cargo fuzz run ..., see README "Reliability"); CI type-checks them.
# MLY_SKIP_FUZZ_CHECK=1 skips this for quick local runs.
if [ -z "${MLY_SKIP_FUZZ_CHECK:-}" ]; then
  echo "test.sh: checking the fuzz targets" >&2
  CARGO_TARGET_DIR="$PWD/target" cargo check -q --manifest-path fuzz/Cargo.toml --bins
fi
DATABASE_URL=$(scripts/pg.sh)
export DATABASE_URL
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
