#!/usr/bin/env bash
# dynamic-sharding: one entry point for building, testing, benchmarking and the demo.
#
#   ./build.sh          build the filter (.wasm) and consul-sync, print where they are
#   ./build.sh deps     install what is missing into .deps/ (Envoy, Consul, pushgateway, ...)
#   ./build.sh test     deps + build + fmt + clippy (native and wasm32) + envoy --mode validate + every test
#   ./build.sh bench    deps + build + the benchmarks (bench/README.md); `bench reconcile`: the reconciler's only
#   ./build.sh faults   deps + build + the fault matrix with full durations (README: Faults under load)
#   ./build.sh demo     deps + build + the whole stack in the foreground (Ctrl-C stops it)
#   ./build.sh dist     build + the release bundle dist/dynamic-sharding-<version>-linux-<arch>.tar.gz (+ .sha256)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

WASM=target/wasm32-wasip1/release/dynamic_sharding.wasm
CONSUL_SYNC=target/release/consul-sync

say() { printf '==> %s\n' "$*"; }

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "build.sh: cargo not found: install Rust with rustup (https://rustup.rs), then run again" >&2
        exit 1
    fi
}

deps() {
    scripts/deps.sh
}

# `dist` needs no test dependency, only the filter's target.
wasm_target() {
    need_cargo
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip1; then
        say "adding the wasm32-wasip1 target"
        rustup target add wasm32-wasip1
    fi
}

build() {
    need_cargo
    say "building the filter (wasm32-wasip1) and consul-sync"
    cargo build --release --locked --target wasm32-wasip1 -p dynamic-sharding
    cargo build --release --locked -p consul-sync
    echo "filter:      $ROOT/$WASM"
    echo "consul-sync: $ROOT/$CONSUL_SYNC"
}

envoy_bin() {
    if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; else echo "$ROOT/.deps/bin/envoy"; fi
}

promtool_bin() {
    if [ -n "${PROMTOOL_BIN:-}" ]; then "$PROMTOOL_BIN" "$@"; else "$ROOT/.deps/bin/promtool" "$@"; fi
}

checks() {
    say "cargo fmt --check"
    cargo fmt --all -- --check
    say "clippy (native, all targets)"
    cargo clippy --locked --workspace --all-targets -- -D warnings
    say "clippy (wasm32-wasip1, the filter)"
    cargo clippy --locked --release --target wasm32-wasip1 -p dynamic-sharding --lib -- -D warnings
    say "promtool check rules deploy/prometheus/rules.yml"
    promtool_bin check rules deploy/prometheus/rules.yml
    say "envoy --mode validate on every shipped config"
    local envoy cfg
    envoy=$(envoy_bin)
    for cfg in envoy/*.yaml; do
        # The shipped configs name the wasm relative to the repository root.
        if ! out=$("$envoy" --mode validate -c "$cfg" --log-level error 2>&1); then
            echo "$out" >&2
            echo "build.sh: $cfg does not load in Envoy" >&2
            exit 1
        fi
        echo "$cfg: OK"
    done
}

run_tests() {
    say "native tests (unit, golden vectors, real Envoy/Consul/pushgateway/Prometheus)"
    cargo test --locked --workspace
    say "golden vectors on wasm32 (wasm-bindgen-test under Node)"
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$ROOT/.deps/bin/wasm-bindgen-test-runner" \
        cargo test --locked --target wasm32-unknown-unknown -p dynamic-sharding --test golden
}

case "${1:-build}" in
    build) build ;;
    deps) deps ;;
    test)
        deps
        build
        checks
        run_tests
        ;;
    bench)
        shift
        deps
        build
        if [ "${1:-}" = reconcile ]; then
            # The reconciler alone: round time, CPU and memory at 10k and 100k groups.
            shift
            cargo run --release --locked -q -p consul-sync --example reconcile_bench -- "$@"
        else
            bench/run.sh "$@"
            say "the reconciler (cargo run --release -p consul-sync --example reconcile_bench)"
            if [[ " $* " == *" --quick "* ]]; then
                cargo run --release --locked -q -p consul-sync --example reconcile_bench -- 10000
            else
                cargo run --release --locked -q -p consul-sync --example reconcile_bench
            fi
        fi
        ;;
    faults)
        # The fault matrix with full durations (the short runs are part of `test`).
        deps
        build
        say "fault matrix (consul-sync/tests/faults.rs, FAULTS_FULL=1): one row per fault"
        echo "| fault | pushes that failed, by kind | slowest push | time to converge | non-owner pushes after | groups lost | empty lists |"
        echo "|---|---|---|---|---|---|---|"
        FAULTS_FULL=1 cargo test --locked -q -p consul-sync --test faults -- --nocapture --test-threads=1 2>/dev/null |
            grep '^| '
        ;;
    demo)
        deps
        build
        exec scripts/demo.sh
        ;;
    dist)
        wasm_target
        build
        say "packing the release bundle"
        deploy/dist.sh
        ;;
    -h | --help | help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        echo "build.sh: unknown command '$1'; expected one of: build, deps, test, bench, faults, demo, dist" >&2
        exit 2
        ;;
esac
