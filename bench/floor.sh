#!/usr/bin/env bash
# Builds the proxy-wasm floor filter (bench/floor) as the filter is built: wasm32-wasip1, the same
# release profile, the same export stripping. Prints the .wasm's path. BENCH_FLOOR_WASM names a
# ready one instead (then nothing is built).
#
#   bench/floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BENCH_FLOOR_WASM:-}" ]; then
    [ -f "$BENCH_FLOOR_WASM" ] || { echo "bench/floor.sh: BENCH_FLOOR_WASM=$BENCH_FLOOR_WASM is missing" >&2; exit 1; }
    echo "$BENCH_FLOOR_WASM"
    exit 0
fi
# Under target/ (git-ignored), apart from the workspace's own builds.
cargo build --release --locked --quiet --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml \
    --target-dir target/floor >&2
wasm=target/floor/wasm32-wasip1/release/floor.wasm
python3 scripts/strip-exports.py "$wasm"
echo "$PWD/$wasm"
