#!/usr/bin/env bash
# dynamic-sharding benchmark: the sharding filter against what Envoy alone does, in one run.
#
#   bench/run.sh [--quick] [scenario...]        (./build.sh bench [--quick] [scenario...])
#
# Scenarios (default: all, in this order):
#   redirect                 shipped envoy/envoy.yaml, PUTs to the redirect listener; every answer 307
#   floor-redirect           the floor: baseline-redirect with bench/floor (a proxy-wasm filter that
#                            reads the headers once, drops the body, answers the 307 at its end) in
#                            front of the buffer filter: the least any proxy-wasm filter can cost
#   baseline-redirect        Envoy alone: direct_response 307 + Location, the shipped filter chain
#                            minus wasm (the buffer filter keeps connections open)
#   baseline-redirect-close  the same without the buffer filter: Envoy answers from the headers and
#                            closes every connection (what a minimal direct_response config gets)
#   proxy                    shipped envoy/envoy.yaml, proxy listener, three real pushgateways; every answer
#                            202 (pushgateway's answer without its consistency check; 200 with it)
#   baseline-proxy           Envoy alone: RING_HASH on :path to three such pushgateways; same answers
#   baseline-proxy-mirror    baseline-proxy with Envoy's request mirroring to three more pushgateways
#                            (the standbys): Envoy's own cheapest copy of a push, not waited for
#   redirect-replicated      redirect, each of the three members with a real pushgateway as its
#                            standby: every push is also sent to the standby before its 307
#   proxy-replicated         proxy, each of the three pushgateways with another as its standby
#
# Settings (environment): BENCH_DURATION (s, default 10; 3 with --quick), BENCH_WARMUP (s, 2),
# BENCH_CONNECTIONS (16), BENCH_THREADS (1), BENCH_ROUNDS (1: each round runs every scenario once,
# the report shows medians), BENCH_ENVOY_CONCURRENCY (2), BENCH_PUSHGATEWAY_CHECK (0: pushgateways
# run with --push.disable-consistency-check; 1: with their default check, see bench/README.md),
# BENCH_MEMBERS (3: members of the redirect scenario's ring; redirect never connects to them),
# BENCH_GROUPS (10000 distinct groups pushed, cycling), BENCH_BODY_BYTES (4),
# BENCH_PERF (a directory: Envoy is sampled with perf record during each measured run),
# BENCH_RATE (requests/s in all; 0, the default: as fast as answers come): the measured run is
# paced at this rate (the warm-up is not) and fails if a scenario achieves less than 98 % of it.
# Binaries: ENVOY_BIN, PUSHGATEWAY_BIN, WRK_BIN, else .deps/bin/<name>; BENCH_FLOOR_WASM (else
# bench/floor.sh builds the floor).
#
# Prints a table and writes bench/results/latest.json. See bench/README.md for how to read it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
HELPER=(python3 "$BENCH/bench.py")

SCENARIO_NAMES=(redirect floor-redirect baseline-redirect baseline-redirect-close proxy baseline-proxy
    redirect-replicated proxy-replicated baseline-proxy-mirror)
DEFAULT_SCENARIOS=("${SCENARIO_NAMES[@]}")

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'bench/run.sh: %s\n' "$*" >&2
    exit 1
}

# ---- arguments and settings -----------------------------------------------------------------

QUICK=0
SCENARIOS=()
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$BENCH/run.sh"
            exit 0
            ;;
        -*) die "unknown option '$arg' (see --help)" ;;
        *)
            [[ " ${SCENARIO_NAMES[*]} " == *" $arg "* ]] ||
                die "unknown scenario '$arg'; expected some of: ${SCENARIO_NAMES[*]}"
            SCENARIOS+=("$arg")
            ;;
    esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=("${DEFAULT_SCENARIOS[@]}")

if [ "$QUICK" = 1 ]; then DURATION=${BENCH_DURATION:-3}; else DURATION=${BENCH_DURATION:-10}; fi
# Not shorter with --quick: the warm-up must push all 10,000 groups once (see measure).
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
THREADS=${BENCH_THREADS:-1}
ROUNDS=${BENCH_ROUNDS:-1}
CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-2}
MEMBER_COUNT=${BENCH_MEMBERS:-3}
GROUP_COUNT=${BENCH_GROUPS:-10000}
BODY_BYTES=${BENCH_BODY_BYTES:-4}
RATE=${BENCH_RATE:-0}
[[ $RATE =~ ^[0-9]+$ ]] || die "BENCH_RATE must be a whole number of requests/s (0: not paced), got '$RATE'"
# Pushgateway 1.5.1 checks every push against all the groups it holds (an O(groups) gather):
# about 200 pushes/s with 1,000 groups on this machine, so with the check on both proxy scenarios
# measure the pushgateways, not Envoy. Off by default so the proxy path itself is compared.
# Without the check a push is queued unchecked and answered 202 instead of 200.
PG_FLAGS=(--persistence.file=)
case "${BENCH_PUSHGATEWAY_CHECK:-0}" in
    0)
        PG_FLAGS+=(--push.disable-consistency-check)
        PUSH_STATUS=202
        ;;
    1) PUSH_STATUS=200 ;;
    *) die "BENCH_PUSHGATEWAY_CHECK must be 0 or 1" ;;
esac
for v in DURATION WARMUP CONNECTIONS THREADS ROUNDS CONCURRENCY MEMBER_COUNT GROUP_COUNT BODY_BYTES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_${v/CONCURRENCY/ENVOY_CONCURRENCY} (or the matching BENCH_ setting) must be a positive whole number, got '${!v}'"
done
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS ($CONNECTIONS) must be >= BENCH_THREADS ($THREADS)"
# put.lua paces each wrk thread; the threads share the rate.
THREAD_RATE=$(python3 -c "print($RATE / $THREADS)")

ENVOY=${ENVOY_BIN:-$ROOT/.deps/bin/envoy}
PUSHGATEWAY=${PUSHGATEWAY_BIN:-$ROOT/.deps/bin/pushgateway}
WRK=${WRK_BIN:-$ROOT/.deps/bin/wrk}
WASM=${BENCH_WASM:-$ROOT/target/wasm32-wasip1/release/dynamic_sharding.wasm}
for v in ENVOY PUSHGATEWAY WRK; do
    [ -x "${!v}" ] || die "${!v} is missing: run ./build.sh deps (or set ${v}_BIN)"
done
[ -f "$WASM" ] || die "$WASM is missing: run ./build.sh"
if [[ " ${SCENARIOS[*]} " == *" floor-redirect "* ]]; then
    FLOOR_WASM=$("$BENCH/floor.sh") || die "the floor filter (bench/floor) did not build"
fi
command -v python3 >/dev/null || die "python3 is needed (config rendering and results)"

# ---- processes: everything started here is stopped on exit, by PID --------------------------

WORK_PREFIX=ds-bench
# shellcheck source=bench/procs.sh
source "$BENCH/procs.sh"

ports() { "${HELPER[@]}" ports "$1"; }

# start_envoy NAME CONFIG ADMIN_PORT: Envoy on CONFIG, ready when its admin says so; sets ENVOY_PID.
start_envoy() {
    local name=$1 config=$2 admin=$3
    # --disable-hot-restart: otherwise Envoy gets SIGTERM when the thread that spawned it exits
    # (PR_SET_PDEATHSIG) and clashes on --base-id with any other Envoy on the machine.
    start "$name" env SHARDING_CONTROL_TOKEN=bench-unused \
        "$ENVOY" -c "$config" --disable-hot-restart --concurrency "$CONCURRENCY" --log-level warning
    ENVOY_PID=$STARTED_PID
    "${HELPER[@]}" wait-http GET "http://127.0.0.1:$admin/ready" 200 --pid "$ENVOY_PID" ||
        {
            show_log "$name"
            die "$name did not become ready"
        }
}

# start_pushgateways NAME: three fresh pushgateways (state in memory only) on free ports; sets
# PG_PIDS and MEMBERS (host:port,...). Fresh per scenario so both proxy scenarios start empty.
start_pushgateways() {
    local name=$1 port i=0
    PG_PIDS=()
    MEMBERS=""
    for port in $(ports 3); do
        i=$((i + 1))
        start "$name-pg$i" "$PUSHGATEWAY" "--web.listen-address=127.0.0.1:$port" "${PG_FLAGS[@]}"
        PG_PIDS+=("$STARTED_PID")
        MEMBERS+="${MEMBERS:+,}127.0.0.1:$port"
    done
    i=0
    for port in ${MEMBERS//,/ }; do
        i=$((i + 1))
        "${HELPER[@]}" wait-http GET "http://$port/-/ready" 200 --pid "${PG_PIDS[$((i - 1))]}" ||
            {
                show_log "$name-pg$i"
                die "pushgateway $port did not become ready"
            }
    done
}

# wrk_run NAME URL STATUS SECONDS [RATE]: one wrk run with put.lua (RATE: requests/s of each wrk
# thread, paced); its output is $WORK/NAME.txt.
wrk_run() {
    local name=$1 url=$2 status=$3 seconds=$4 rate=${5:-0} pid
    # In the background and waited for, so Ctrl-C reaches the trap at once; the helper stops wrk
    # when it is stopped, and adds wrk's own CPU time to the output.
    "${HELPER[@]}" wrk --out "$WORK/$name.txt" -- \
        "$WRK" -t "$THREADS" -c "$CONNECTIONS" -d "${seconds}s" -s "$BENCH/put.lua" "$url" -- "$status" \
        "$GROUP_COUNT" "$BODY_BYTES" "$rate" \
        </dev/null &
    pid=$!
    PIDS+=("$pid")
    if ! wait "$pid"; then
        cat "$WORK/$name.txt" >&2
        die "wrk failed in $name"
    fi
    stop "$pid"
}

# measure SCENARIO URL STATUS PREFIX CLUSTER: warm-up, then the measured run between two
# snapshots of Envoy's (and the pushgateways') CPU time and connection counters; appends one
# record to $WORK/records.jsonl. Uses ENVOY_PID, ADMIN, PG_PIDS, MEMBERS.
measure() {
    local scen=$1 url=$2 status=$3 prefix=$4 cluster=$5 tag="$1-r$ROUND" backends=() groups=() p
    local standby_groups=() counts=""
    for p in "${PG_PIDS[@]}"; do backends+=(--backend-pid "$p"); done
    say "$scen (round $ROUND/$ROUNDS): warm-up ${WARMUP}s, then ${DURATION}s of PUTs to $url"
    # The warm-up pushes every one of the 10,000 groups at least once (at the rates seen here)
    # and warms Envoy's upstream connection pools, so both proxy scenarios are measured with
    # full pushgateways, whatever their speed. The report shows the group counts to check it.
    # Not paced, for that reason.
    wrk_run "$tag-warmup" "$url" "$status" "$WARMUP"
    "${HELPER[@]}" snapshot --out "$WORK/$tag-before.json" --envoy-pid "$ENVOY_PID" \
        --admin "$ADMIN" "${backends[@]}"
    local perf_pid=""
    if [ -n "${BENCH_PERF:-}" ]; then
        # Samples Envoy's threads while wrk runs (software clock: works in VMs without PMU).
        mkdir -p "$BENCH_PERF"
        perf record -F 499 -g -p "$ENVOY_PID" -o "$BENCH_PERF/$tag.data" -- sleep "$DURATION" \
            >"$WORK/$tag-perf.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    wrk_run "$tag" "$url" "$status" "$DURATION" "$THREAD_RATE"
    if [ -n "$perf_pid" ]; then
        wait "$perf_pid" || true
        stop "$perf_pid"
    fi
    "${HELPER[@]}" snapshot --out "$WORK/$tag-after.json" --envoy-pid "$ENVOY_PID" \
        --admin "$ADMIN" "${backends[@]}"
    kill -0 "$ENVOY_PID" 2>/dev/null || die "Envoy exited during $scen"
    if [ -n "$cluster" ]; then
        counts=$("${HELPER[@]}" groups --members "$MEMBERS")
        groups=(--cluster "$cluster" --groups "$counts")
    fi
    if [ -n "${STANDBY_MEMBERS:-}" ]; then
        # Every group on the actives (each on one) must be on a standby too. The mirror's copies
        # are sent after the client's answer: the last ones get a moment.
        standby_groups=(--standby-groups "$("${HELPER[@]}" distinct-groups --members "$STANDBY_MEMBERS" \
            --want "$(python3 -c 'import json, sys; print(sum(json.loads(sys.argv[1])))' "$counts")")")
    fi
    "${HELPER[@]}" record --scenario "$scen" --round "$ROUND" --url "$url" --status "$status" \
        --connections "$CONNECTIONS" --prefix "$prefix" --copies "${COPIES:-1}" --rate "$RATE" \
        --wrk "$WORK/$tag.txt" --warmup "$WORK/$tag-warmup.txt" \
        --before "$WORK/$tag-before.json" --after "$WORK/$tag-after.json" \
        --out "$WORK/records.jsonl" "${groups[@]}" "${standby_groups[@]}" ||
        {
            sed -n '1,20p' "$WORK/$tag.txt" >&2
            die "$scen failed (bench/results/ is not updated)"
        }
}

# ---- scenarios --------------------------------------------------------------------------------

# The listener must answer a push as it will under load before anything is measured (a wrong
# status here means a broken config or build, not a slow one).
probe() {
    local url=$1 status=$2
    shift 2
    "${HELPER[@]}" wait-http PUT "$url/metrics/job/bench_probe" "$status" --body $'m 1\n' \
        --pid "$ENVOY_PID" "$@" || die "$url does not answer $status to a push"
}

# The shipped config on loopback with this run's ports, wasm path and members, rendered as the
# tests and the demo render it; every replacement must hit.
render_shipped() {
    local out=$1 redirect=$2 proxy=$3 control=$4 admin=$5 members=$6
    python3 "$ROOT/scripts/render-envoy-config.py" --out "$out" --address 127.0.0.1 \
        --ports "$redirect,$proxy,$control,$admin" --members "$members" --wasm "$WASM"
}

scenario_redirect() {
    local redirect proxy control
    read -r redirect proxy control ADMIN < <(ports 4)
    # Redirect mode never connects to the members, so none runs; the addresses are free
    # loopback ports, shaped like real ones (the Location length matches a real deployment).
    if [ "$MEMBER_COUNT" = 3 ]; then
        MEMBERS=$(ports 3 | sed 's/\([0-9]*\)/127.0.0.1:\1/g; s/ /,/g')
    else
        # Addresses only (nothing listens there): 127.0.0.1 with ports from 20000 up.
        MEMBERS=$(seq 20000 $((20000 + MEMBER_COUNT - 1)) | sed 's/^/127.0.0.1:/' | paste -sd,)
    fi
    PG_PIDS=()
    render_shipped "$WORK/redirect.yaml" "$redirect" "$proxy" "$control" "$ADMIN" "$MEMBERS"
    start_envoy envoy-redirect "$WORK/redirect.yaml" "$ADMIN"
    probe "http://127.0.0.1:$redirect" 307 --header "location:http://127.0.0.1:"
    measure redirect "http://127.0.0.1:$redirect" 307 sharding_redirect ""
    stop "$ENVOY_PID"
}

baseline_redirect() {
    local scen=$1 flags=() port pg
    if [ "$scen" = baseline-redirect-close ]; then flags=(--no-buffer); fi
    if [ "$scen" = floor-redirect ]; then flags=(--wasm "$FLOOR_WASM"); fi
    read -r port ADMIN pg < <(ports 3)
    MEMBERS=""
    PG_PIDS=()
    "${HELPER[@]}" render-baseline-redirect --out "$WORK/$scen.yaml" --port "$port" \
        --admin "$ADMIN" --location "127.0.0.1:$pg" "${flags[@]}"
    start_envoy "envoy-$scen" "$WORK/$scen.yaml" "$ADMIN"
    probe "http://127.0.0.1:$port" 307 --header "location:http://127.0.0.1:$pg/metrics/job/bench_probe"
    measure "$scen" "http://127.0.0.1:$port" 307 baseline_redirect ""
    stop "$ENVOY_PID"
}

scenario_proxy() {
    local redirect proxy control
    start_pushgateways proxy
    read -r redirect proxy control ADMIN < <(ports 4)
    render_shipped "$WORK/proxy.yaml" "$redirect" "$proxy" "$control" "$ADMIN" "$MEMBERS"
    start_envoy envoy-proxy "$WORK/proxy.yaml" "$ADMIN"
    probe "http://127.0.0.1:$proxy" "$PUSH_STATUS"
    measure proxy "http://127.0.0.1:$proxy" "$PUSH_STATUS" sharding_proxy pushgateway_owner
    stop "$ENVOY_PID" "${PG_PIDS[@]}"
}

# baseline_proxy SCENARIO: baseline-proxy, or baseline-proxy-mirror (three more pushgateways as
# standbys, each push mirrored to one of them).
baseline_proxy() {
    local scen=$1 port actives active_pids mirror=()
    start_pushgateways "$scen"
    if [ "$scen" = baseline-proxy-mirror ]; then
        actives=$MEMBERS
        active_pids=("${PG_PIDS[@]}")
        start_pushgateways "$scen-standby"
        STANDBY_MEMBERS=$MEMBERS
        mirror=(--mirror "$STANDBY_MEMBERS")
        MEMBERS=$actives
        PG_PIDS=("${active_pids[@]}" "${PG_PIDS[@]}")
    fi
    read -r port ADMIN < <(ports 2)
    "${HELPER[@]}" render-baseline-proxy --out "$WORK/$scen.yaml" --port "$port" \
        --admin "$ADMIN" --members "$MEMBERS" "${mirror[@]}"
    start_envoy "envoy-$scen" "$WORK/$scen.yaml" "$ADMIN"
    probe "http://127.0.0.1:$port" "$PUSH_STATUS"
    if [ -n "${STANDBY_MEMBERS:-}" ]; then
        # The mirror works: the probe's group reached a standby.
        "${HELPER[@]}" distinct-groups --members "$STANDBY_MEMBERS" --want 1 >/dev/null
    fi
    measure "$scen" "http://127.0.0.1:$port" "$PUSH_STATUS" baseline_proxy pushgateways
    STANDBY_MEMBERS=""
    stop "$ENVOY_PID" "${PG_PIDS[@]}"
}

# scenario_replicated MODE: MODE's scenario with a standby per member, given through the control
# API as consul-sync gives it. Redirect mode's members are addresses only (as in its scenario);
# the standbys are real pushgateways, which take every push.
scenario_replicated() {
    local mode=$1 redirect proxy control actives active_pids=() url status prefix
    if [ "$mode" = proxy ]; then
        start_pushgateways "$mode-replicated"
        actives=$MEMBERS
        active_pids=("${PG_PIDS[@]}")
    else
        actives=$(ports 3 | sed 's/\([0-9]*\)/127.0.0.1:\1/g; s/ /,/g')
    fi
    start_pushgateways "$mode-replicated-standby"
    local standbys=$MEMBERS
    PG_PIDS=("${active_pids[@]}" "${PG_PIDS[@]}")
    read -r redirect proxy control ADMIN < <(ports 4)
    render_shipped "$WORK/$mode-replicated.yaml" "$redirect" "$proxy" "$control" "$ADMIN" "$actives"
    start_envoy "envoy-$mode-replicated" "$WORK/$mode-replicated.yaml" "$ADMIN"
    "${HELPER[@]}" put-slots --url "http://127.0.0.1:$control/-/sharding/members" --token bench-unused \
        --members "$actives" --standbys "$standbys"
    if [ "$mode" = proxy ]; then
        url="http://127.0.0.1:$proxy" status=$PUSH_STATUS prefix=sharding_proxy
        MEMBERS="$actives,$standbys" COPIES=2
        probe "$url" "$status"
    else
        url="http://127.0.0.1:$redirect" status=307 prefix=sharding_redirect
        MEMBERS=$standbys COPIES=1
        probe "$url" 307 --header "location:http://127.0.0.1:"
    fi
    measure "$mode-replicated" "$url" "$status" "$prefix" pushgateway_owner
    COPIES=1
    stop "$ENVOY_PID" "${PG_PIDS[@]}"
}

# ---- main -------------------------------------------------------------------------------------

START=$(date +%s)
"${HELPER[@]}" meta --out "$WORK/meta.json" --root "$ROOT" --envoy "$ENVOY" --wrk "$WRK" \
    --wasm "$WASM" --concurrency "$CONCURRENCY" --threads "$THREADS" --connections "$CONNECTIONS" \
    --duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" \
    --pushgateway-check "${BENCH_PUSHGATEWAY_CHECK:-0}" --members "$MEMBER_COUNT" \
    --groups "$GROUP_COUNT" --body-bytes "$BODY_BYTES" --rate "$RATE"
PACE=""
[ "$RATE" = 0 ] || PACE=" at $RATE req/s"
say "scenarios: ${SCENARIOS[*]}; wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s$PACE (+${WARMUP}s warm-up), $ROUNDS round(s); state in $WORK"

for ROUND in $(seq "$ROUNDS"); do
    for scen in "${SCENARIOS[@]}"; do
        case "$scen" in
            redirect) scenario_redirect ;;
            baseline-redirect | baseline-redirect-close | floor-redirect) baseline_redirect "$scen" ;;
            proxy) scenario_proxy ;;
            baseline-proxy | baseline-proxy-mirror) baseline_proxy "$scen" ;;
            redirect-replicated) scenario_replicated redirect ;;
            proxy-replicated) scenario_replicated proxy ;;
        esac
    done
done

mkdir -p "$BENCH/results"
"${HELPER[@]}" report --records "$WORK/records.jsonl" --meta "$WORK/meta.json" \
    --out "$BENCH/results/latest.json"
say "done in $(($(date +%s) - START)) s"
