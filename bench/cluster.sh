#!/usr/bin/env bash
# Cluster throughput: what a user of sharded pushgateways feels. Pushes/s absorbed, the latency of
# a whole push as the client sees it, and the CPU per push of each part, for one pushgateway alone
# against 2 and 4 behind the sharding filter (proxy mode, and redirect mode with a client that
# follows the 307 over keep-alive), at several totals of groups. Pushgateways keep their default
# consistency check. bench/README.md ("Cluster throughput") says how to read it.
#
#   bench/cluster.sh [--quick]               (./build.sh bench cluster [--quick])
#
# For each total of groups and each cluster size: fresh pushgateways are filled with every group
# once (with the check off, through the shipped proxy listener, so each group lands on its owner),
# stopped (they write their state to --persistence.file), and started again from that file with
# the check on; then bench/pushload re-pushes the groups in a cycle and measures (see README for
# why this fill is faithful). Every push's status is checked, and after each measurement every
# group must be on exactly one pushgateway.
#
# Settings (environment): BENCH_CLUSTER_GROUPS ("1000 10000 100000"; --quick: "1000 10000"),
# BENCH_CLUSTER_SIZES ("1 2 4"; 1 is a pushgateway alone, no Envoy), BENCH_CLUSTER_MODES
# ("proxy redirect"), BENCH_CONNECTIONS (8 pushes in flight), BENCH_DURATION (s, 10; --quick 5),
# BENCH_WARMUP (s, 2), BENCH_IDLE (s, 5: no pushes, to measure Envoy's and the client's idle CPU),
# BENCH_MIN_PUSHES (50; --quick 20: the window goes on until that many pushes
# ended in it), BENCH_MAX_DURATION (s, 60), BENCH_METRICS (3 gauges per push),
# BENCH_ENVOY_CONCURRENCY (2). Binaries: ENVOY_BIN, PUSHGATEWAY_BIN, else .deps/bin/<name>.
#
# Prints the table and writes bench/results/cluster.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
HELPER=(python3 "$BENCH/bench.py")

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'bench/cluster.sh: %s\n' "$*" >&2
    exit 1
}

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$BENCH/cluster.sh"
            exit 0
            ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    GROUP_TOTALS=(${BENCH_CLUSTER_GROUPS:-1000 10000})
    DURATION=${BENCH_DURATION:-5}
    MIN_PUSHES=${BENCH_MIN_PUSHES:-20}
else
    GROUP_TOTALS=(${BENCH_CLUSTER_GROUPS:-1000 10000 100000})
    DURATION=${BENCH_DURATION:-10}
    MIN_PUSHES=${BENCH_MIN_PUSHES:-50}
fi
SIZES=(${BENCH_CLUSTER_SIZES:-1 2 4})
MODES=(${BENCH_CLUSTER_MODES:-proxy redirect})
CONNECTIONS=${BENCH_CONNECTIONS:-8}
WARMUP=${BENCH_WARMUP:-2}
# Seconds with no push before each warm-up: Envoy's and the client's idle CPU, taken out of theirs.
IDLE=${BENCH_IDLE:-5}
MAX_DURATION=${BENCH_MAX_DURATION:-60}
METRICS=${BENCH_METRICS:-3}
CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-2}
for v in DURATION MIN_PUSHES CONNECTIONS WARMUP IDLE MAX_DURATION METRICS CONCURRENCY; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_${v/CONCURRENCY/ENVOY_CONCURRENCY} must be a positive whole number, got '${!v}'"
done
for v in "${GROUP_TOTALS[@]}" "${SIZES[@]}"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLUSTER_GROUPS and BENCH_CLUSTER_SIZES take positive whole numbers, got '$v'"
done
for m in "${MODES[@]}"; do
    [[ $m == proxy || $m == redirect ]] || die "BENCH_CLUSTER_MODES: '$m' is not proxy or redirect"
done

ENVOY=${ENVOY_BIN:-$ROOT/.deps/bin/envoy}
PUSHGATEWAY=${PUSHGATEWAY_BIN:-$ROOT/.deps/bin/pushgateway}
WASM=${BENCH_WASM:-$ROOT/target/wasm32-wasip1/release/dynamic_sharding.wasm}
for v in ENVOY PUSHGATEWAY; do
    [ -x "${!v}" ] || die "${!v} is missing: run ./build.sh deps (or set ${v}_BIN)"
done
[ -f "$WASM" ] || die "$WASM is missing: run ./build.sh"
say "building the load generator (bench/pushload)"
cargo build --release --locked --quiet -p pushload
PUSHLOAD=$ROOT/target/release/pushload

# ---- processes: everything started here is stopped on exit, by PID --------------------------

WORK_PREFIX=ds-cluster
# A pushgateway writes its persistence file on SIGTERM: give it time (100k groups: seconds).
STOP_WAIT=600
# shellcheck source=bench/procs.sh
source "$BENCH/procs.sh"

# start_pushgateways TAG CHECK PORT...: one pushgateway per port, state in $WORK/pg-<port>.db
# (kept across a restart on the same port); CHECK 0 turns the consistency check off. Logs in
# $WORK/TAG-pg<port>.log. Sets PG_PIDS.
start_pushgateways() {
    local tag=$1 check=$2 port i=0 flags
    shift 2
    PG_PIDS=()
    for port in "$@"; do
        flags=("--web.listen-address=127.0.0.1:$port" "--persistence.file=$WORK/pg-$port.db")
        [ "$check" = 1 ] || flags+=(--push.disable-consistency-check)
        start "$tag-pg$port" "$PUSHGATEWAY" "${flags[@]}"
        PG_PIDS+=("$STARTED_PID")
    done
    for port in "$@"; do
        # Loading 100,000 groups from the file takes seconds before the pushgateway is ready.
        "${HELPER[@]}" wait-http GET "http://127.0.0.1:$port/-/ready" 200 --timeout 300 \
            --pid "${PG_PIDS[$i]}" || {
            show_log "$tag-pg$port"
            die "pushgateway $port did not become ready"
        }
        i=$((i + 1))
    done
}

START=$(date +%s)
"${HELPER[@]}" cluster-meta --out "$WORK/meta.json" --root "$ROOT" --envoy "$ENVOY" --wasm "$WASM" \
    --pushgateway "$PUSHGATEWAY" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" \
    --duration "$DURATION" --warmup "$WARMUP" --idle "$IDLE" --min-pushes "$MIN_PUSHES" --metrics "$METRICS"
say "groups ${GROUP_TOTALS[*]}; pushgateways ${SIZES[*]}; modes ${MODES[*]}; $CONNECTIONS pushes in" \
    "flight, ${DURATION}s (+${IDLE}s idle, ${WARMUP}s warm-up; at least $MIN_PUSHES pushes); state in $WORK"

for groups in "${GROUP_TOTALS[@]}"; do
    for size in "${SIZES[@]}"; do
        tag=g$groups-n$size
        read -r -a pg_ports < <("${HELPER[@]}" ports "$size")
        members=$(printf '127.0.0.1:%s,' "${pg_ports[@]}")
        members=${members%,}
        start_pushgateways "$tag-fill" 0 "${pg_ports[@]}"
        empty_rss=$("${HELPER[@]}" rss "${PG_PIDS[@]}")
        ENVOY_PID=""
        if [ "$size" = 1 ]; then
            fill_url=http://$members
        else
            read -r redirect proxy control admin < <("${HELPER[@]}" ports 4)
            python3 "$ROOT/scripts/render-envoy-config.py" --out "$WORK/$tag.yaml" --address 127.0.0.1 \
                --ports "$redirect,$proxy,$control,$admin" --members "$members" --wasm "$WASM"
            start "$tag-envoy" env SHARDING_CONTROL_TOKEN=bench-unused "$ENVOY" -c "$WORK/$tag.yaml" \
                --disable-hot-restart --concurrency "$CONCURRENCY" --log-level warning
            ENVOY_PID=$STARTED_PID
            "${HELPER[@]}" wait-http GET "http://127.0.0.1:$admin/ready" 200 --pid "$ENVOY_PID" ||
                {
                    show_log "$tag-envoy"
                    die "Envoy did not become ready"
                }
            fill_url=http://127.0.0.1:$proxy
        fi
        say "$groups groups on $size pushgateway(s): filling (consistency check off)"
        fill_started=$(date +%s)
        "$PUSHLOAD" --url "$fill_url" --groups "$groups" --connections "$CONNECTIONS" --metrics "$METRICS" \
            --status 202 fill >"$WORK/$tag-fill.json" || die "filling $groups groups failed"
        # Without the check a push is answered before it is stored: wait until all are.
        "${HELPER[@]}" wait-groups --members "$members" --total "$groups" --timeout 300
        stop "${PG_PIDS[@]}"
        fill_s=$(($(date +%s) - fill_started))
        load_started=$(date +%s)
        start_pushgateways "$tag" 1 "${pg_ports[@]}"
        load_s=$(($(date +%s) - load_started))
        # Before the group count: listing every group (GET /api/v1/metrics) grows the Go heap.
        loaded_rss=$("${HELPER[@]}" rss "${PG_PIDS[@]}")
        "${HELPER[@]}" wait-groups --members "$members" --total "$groups" --timeout 10 ||
            die "the pushgateways restarted with fewer groups than they wrote"
        pids=()
        for p in "${PG_PIDS[@]}"; do pids+=(--pid "pushgateways=$p"); done
        if [ "$size" = 1 ]; then
            runs=("alone http://$members")
        else
            pids+=(--pid "envoy=$ENVOY_PID")
            runs=()
            for m in "${MODES[@]}"; do
                case "$m" in
                    proxy) runs+=("proxy http://127.0.0.1:$proxy") ;;
                    redirect) runs+=("redirect http://127.0.0.1:$redirect --redirect") ;;
                esac
            done
        fi
        for r in "${runs[@]}"; do
            read -r mode url extra <<<"$r"
            say "$groups groups on $size pushgateway(s), $mode: measuring"
            # shellcheck disable=SC2086 # extra is one flag or none
            "$PUSHLOAD" --url "$url" --groups "$groups" --connections "$CONNECTIONS" --metrics "$METRICS" \
                --status 200 $extra run --idle "$IDLE" --warmup "$WARMUP" --duration "$DURATION" \
                --min-pushes "$MIN_PUSHES" --max-duration "$MAX_DURATION" "${pids[@]}" >"$WORK/$tag-$mode.json" ||
                die "$mode at $groups groups on $size pushgateway(s): pushes failed (above)"
            counts=$("${HELPER[@]}" groups --members "$members")
            "${HELPER[@]}" cluster-record --out "$WORK/records.jsonl" --result "$WORK/$tag-$mode.json" \
                --mode "$mode" --size "$size" --groups "$groups" --counts "$counts" \
                --empty-rss "$empty_rss" --loaded-rss "$loaded_rss" --fill-s "$fill_s" --load-s "$load_s"
        done
        [ -z "$ENVOY_PID" ] || stop "$ENVOY_PID"
        stop "${PG_PIDS[@]}"
        rm -f "$WORK"/*.db
    done
done

mkdir -p "$BENCH/results"
"${HELPER[@]}" cluster-report --records "$WORK/records.jsonl" --meta "$WORK/meta.json" \
    --out "$BENCH/results/cluster.json"
say "done in $(($(date +%s) - START)) s"
