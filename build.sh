#!/usr/bin/env bash
# dynamic-sharding: one entry point for building, testing, benchmarking and the demo.
#
#   ./build.sh          build the filter (.wasm) and consul-sync, print where they are
#   ./build.sh deps     install what is missing into .deps/ (Envoy, Consul, pushgateway, ...)
#   ./build.sh test     deps + build + fmt + clippy (native and wasm32) + envoy --mode validate + every test
#   ./build.sh check    the contributor loop: fmt, clippy (native and wasm32), promtool and envoy
#                       --mode validate, unit and golden-vector tests; starts no Envoy, Consul or
#                       pushgateway; needs what ./build.sh deps installs (envoy, promtool, ...)
#   ./build.sh bench    deps + build + the benchmarks (bench/README.md); `bench curves`: cost curves; `bench reconcile`: the reconciler's;
#                       `bench cluster [--quick]`: pushes/s and latency of 1, 2 and 4 pushgateways
#   ./build.sh faults   deps + build + the fault matrix with full durations (docs/operations.md, bench/README.md)
#   ./build.sh fuzz [s] deps + every fuzz target for s seconds (default 120) from its seeds
#                       (fuzz/seeds/) and its evolved corpus (fuzz/corpus/, git-ignored), which
#                       then is minimised; figures for docs/fuzzing.md
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

build_filter() {
    cargo build --release --locked --target wasm32-wasip1 -p dynamic-sharding
    # Envoy calls every exported proxy-wasm callback on every stream, and the SDK exports them
    # all; dropping the ones the filter leaves at their defaults saves about 4 % of Envoy's CPU
    # per redirect (bench/README.md, "Where the cost is"). Idempotent, so a rebuild-free run is harmless.
    python3 scripts/strip-exports.py "$WASM"
}

build() {
    need_cargo
    say "building the filter (wasm32-wasip1) and consul-sync"
    build_filter
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
    # The fuzz targets are their own workspace on nightly; they call the crates' public API, so
    # a changed signature must fail here, not minutes later when the seeded runs build them.
    say "clippy (the fuzz targets, nightly)"
    PATH="$ROOT/.deps/cargo/bin:$PATH" cargo +nightly clippy --locked --manifest-path fuzz/Cargo.toml --bins -- -D warnings
    say "promtool check rules deploy/prometheus/rules.yml"
    promtool_bin check rules deploy/prometheus/rules.yml
    say "promtool test rules deploy/prometheus/rules.test.yml"
    promtool_bin test rules deploy/prometheus/rules.test.yml
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

# What the contributor loop (`check`) runs besides cargo; `deps` installs each. A missing one
# fails the loop: a check that skipped Envoy's validation would pass a config Envoy refuses.
check_needs() {
    local missing=() target
    need_cargo
    if command -v rustup >/dev/null 2>&1; then
        for target in wasm32-wasip1 wasm32-unknown-unknown; do
            rustup target list --installed | grep -qx "$target" || missing+=("the $target target")
        done
        rustup toolchain list | grep -q '^nightly' || missing+=("the nightly toolchain (the fuzz targets)")
    fi
    local envoy promtool=${PROMTOOL_BIN:-$ROOT/.deps/bin/promtool}
    envoy=$(envoy_bin)
    command -v "$envoy" >/dev/null 2>&1 || missing+=("envoy ($envoy)")
    command -v "$promtool" >/dev/null 2>&1 || missing+=("promtool ($promtool)")
    [[ -x $ROOT/.deps/bin/wasm-bindgen-test-runner ]] ||
        missing+=("wasm-bindgen-test-runner ($ROOT/.deps/bin/wasm-bindgen-test-runner)")
    command -v node >/dev/null 2>&1 || missing+=("node (Node.js, for the wasm32 golden vectors; Debian: apt-get install nodejs)")
    if ((${#missing[@]})); then
        printf 'build.sh check: missing %s\n' "${missing[@]}" >&2
        echo "build.sh check: ./build.sh deps installs them into .deps/ (nothing system-wide); ENVOY_BIN and PROMTOOL_BIN name your own" >&2
        exit 1
    fi
}

# The tests that start no process: every crate's unit tests and the golden vectors, natively
# and on wasm32. The rest of tests/ and consul-sync/tests/ run real Envoy, Consul, pushgateways.
quick_tests() {
    say "unit tests (every crate)"
    cargo test --locked --workspace --lib
    say "golden vectors (native)"
    cargo test --locked -p dynamic-sharding --test golden
    wasm_golden
}

wasm_golden() {
    say "golden vectors on wasm32 (wasm-bindgen-test under Node)"
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$ROOT/.deps/bin/wasm-bindgen-test-runner" \
        cargo test --locked --target wasm32-unknown-unknown -p dynamic-sharding --test golden
}

FUZZ_TARGETS=(grouping_key control_api plugin_config consul_sync_config answers)

# cargo fuzz on the nightly toolchain, both installed by scripts/deps.sh. No sanitizer: the code
# under test is safe Rust, and without ASan a run does about 5x more executions.
cargo_fuzz() {
    (cd fuzz && PATH="$ROOT/.deps/cargo/bin:$PATH" cargo +nightly fuzz "$@")
}

# One run of every target: fuzz_run <seconds> <seed> <keep>. Each target starts from its
# committed seeds (fuzz/seeds/<target>/, never written) and the evolved corpus of earlier runs
# (fuzz/corpus/<target>/, git-ignored, absent in a fresh clone). With keep, new inputs go into
# that corpus, which is then minimised; without, into a temporary folder, so a test run leaves
# the tree as it was. Prints a table: executions, coverage (edges), features, corpus size;
# exits 1 on any crash (its input is in fuzz/artifacts/<target>/).
fuzz_run() {
    local seconds=$1 seed=$2 keep=$3 t log out corpus failed=0 total=0
    for t in "${FUZZ_TARGETS[@]}"; do
        if [[ ! -d fuzz/seeds/$t ]]; then
            echo "build.sh: fuzz/seeds/$t is missing; every target in FUZZ_TARGETS needs its seeds" >&2
            return 1
        fi
    done
    say "building the fuzz targets (nightly, cargo fuzz)"
    cargo_fuzz build -s none
    local tmp
    tmp=$(mktemp -d)
    printf '%-20s %12s %8s %8s %8s %s\n' target executions cov ft corpus result
    for t in "${FUZZ_TARGETS[@]}"; do
        log=$tmp/$t.log
        # libFuzzer writes new inputs into the first folder only.
        if [[ -n $keep ]]; then
            mkdir -p fuzz/corpus/"$t"
            corpus=(corpus/"$t" seeds/"$t")
        else
            mkdir -p "$tmp/$t"
            corpus=("$tmp/$t" seeds/"$t")
            [[ -d fuzz/corpus/$t ]] && corpus+=(corpus/"$t")
        fi
        local rc=0
        cargo_fuzz run -s none "$t" "${corpus[@]}" -- -seed="$seed" -max_total_time="$seconds" \
            -print_final_stats=1 -rss_limit_mb=1024 -max_len=4096 >"$log" 2>&1 || rc=$?
        local execs cov ft corp
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        read -r cov ft corp < <(grep -E '^#[0-9]+' "$log" | tail -n1 |
            sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 \2 \3/') || true
        if ((rc == 0)); then out=ok; else out="CRASH (exit $rc, log $log)"; failed=1; fi
        printf '%-20s %12s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$out"
        total=$((total + ${execs:-0}))
        ((rc == 0)) || tail -n 30 "$log" >&2
    done
    echo "total executions: $total (seed $seed, $seconds s per target)"
    if [[ -n $keep ]] && ((failed == 0)); then
        say "minimising the evolved corpus (fuzz/corpus/): it keeps what the seeds do not cover"
        for t in "${FUZZ_TARGETS[@]}"; do
            minimise "$t" "$tmp/$t.merge.log" || { tail -n 20 "$tmp/$t.merge.log" >&2; failed=1; }
        done
    fi
    ((failed == 0)) && rm -rf "$tmp"
    return $failed
}

# minimise <target> <log>: libFuzzer's merge into a folder that starts with the seeds keeps
# every seed and adds only the cached inputs that reach something new; the seeds are then taken
# out again, so fuzz/corpus/<target>/ holds what the seeds lack.
minimise() {
    local t=$1 log=$2 new=fuzz/corpus/.$1.merging f
    rm -rf "$new"
    mkdir -p "$new"
    cp fuzz/seeds/"$t"/* "$new"/
    cargo_fuzz run -s none "$t" corpus/."$t".merging corpus/"$t" -- -merge=1 \
        -rss_limit_mb=1024 -max_len=4096 >"$log" 2>&1 || { rm -rf "$new"; return 1; }
    for f in fuzz/seeds/"$t"/*; do rm -f "$new/${f##*/}"; done
    rm -rf fuzz/corpus/"$t"
    mv "$new" fuzz/corpus/"$t"
    echo "$t: $(find fuzz/corpus/"$t" -type f | wc -l) evolved inputs kept beside $(find fuzz/seeds/"$t" -type f | wc -l) seeds"
}

run_tests() {
    say "fuzzing, short and seeded (${FUZZ_TEST_SECONDS:-15} s per target)"
    fuzz_run "${FUZZ_TEST_SECONDS:-15}" 1 ""
    say "native tests (unit, golden vectors, real Envoy/Consul/pushgateway/Prometheus)"
    # The differential test's generator is seeded: a fixed seed here, so a run is repeatable;
    # run it alone without DIFFERENTIAL_SEED for a new seed each time (it prints the seed).
    # The test binaries run side by side (TEST_LANES, default 3; 1 runs them one at a time):
    # most of an integration binary's time is spent waiting on the processes it started.
    DIFFERENTIAL_SEED=${DIFFERENTIAL_SEED:-20261126} \
        python3 scripts/test-lanes.py "${TEST_LANES:-3}" --locked --workspace
    wasm_golden
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
    check)
        check_needs
        say "building the filter (envoy --mode validate loads it)"
        build_filter
        checks
        quick_tests
        ;;
    bench)
        shift
        deps
        build
        if [ "${1:-}" = curves ]; then
            shift
            bench/curves.sh "$@"
        elif [ "${1:-}" = cluster ]; then
            # What a user of the cluster feels: pushes/s, push latency, CPU per push of each part.
            shift
            bench/cluster.sh "$@"
        elif [ "${1:-}" = reconcile ]; then
            # The reconciler alone: round time, CPU and memory at 10k and 100k groups.
            shift
            cargo run --profile bench-tools --locked -q -p consul-sync --example reconcile_bench -- "$@"
        else
            bench/run.sh "$@"
            say "the reconciler (cargo run --profile bench-tools -p consul-sync --example reconcile_bench)"
            if [[ " $* " == *" --quick "* ]]; then
                cargo run --profile bench-tools --locked -q -p consul-sync --example reconcile_bench -- 10000
            else
                cargo run --profile bench-tools --locked -q -p consul-sync --example reconcile_bench
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
        # Each row is printed as its test ends; `-q` puts the test's progress dot in front of it.
        # The rest of the output (and why a fault failed) is kept, and shown on a failure.
        log=$(mktemp)
        if ! FAULTS_FULL=1 cargo test --locked -q -p consul-sync --test faults -- --nocapture --test-threads=1 2>&1 |
            tee "$log" | sed -n 's/^\.*\(| .*\)$/\1/p'; then
            tail -n 60 "$log" >&2
            rm -f "$log"
            exit 1
        fi
        rm -f "$log"
        ;;
    fuzz)
        deps
        fuzz_run "${2:-120}" "${FUZZ_SEED:-0}" keep
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
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        echo "build.sh: unknown command '$1'; expected one of: build, deps, test, check, bench, faults, fuzz, demo, dist" >&2
        exit 2
        ;;
esac
