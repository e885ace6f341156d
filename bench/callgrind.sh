#!/usr/bin/env bash
# Envoy's instructions per request, counted by callgrind: the noise-free complement of
# bench/run.sh's CPU time on a shared machine (bench/README.md, "Profile").
#
#   bench/callgrind.sh [scenario...]     (default: redirect floor-redirect baseline-redirect proxy baseline-proxy)
#   bench/callgrind.sh redirect redirect-replicated proxy proxy-replicated baseline-proxy baseline-proxy-mirror
#                                        (what a standby costs, against Envoy's own mirror)
#
# Scenarios as in bench/run.sh (floor-redirect: bench/floor.sh builds it). Envoy runs under
# `valgrind --tool=callgrind` with one worker; after 3,000 uncounted requests (the wasm code is
# compiled and tiered up by then), BENCH_CG_REQUESTS (2,000) keep-alive PUTs are counted
# (BENCH_MEMBERS: members of the redirect scenario, 3 by default). Only
# user-space instructions count (not the kernel's network work). Needs valgrind (Debian package
# `valgrind`); about a minute per scenario. Prints one JSON line per scenario, then the ratios of
# the scenarios it ran (redirect to the floor first). BENCH_CG_KEEP (a directory): the callgrind
# dumps are kept there (one per scenario) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
HELPER=(python3 "$BENCH/bench.py")
ENVOY=${ENVOY_BIN:-$ROOT/.deps/bin/envoy}
PUSHGATEWAY=${PUSHGATEWAY_BIN:-$ROOT/.deps/bin/pushgateway}
WASM=${BENCH_WASM:-$ROOT/target/wasm32-wasip1/release/dynamic_sharding.wasm}
REQUESTS=${BENCH_CG_REQUESTS:-2000}
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    { echo "bench/callgrind.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
for f in "$ENVOY" "$PUSHGATEWAY" "$WASM"; do
    [ -e "$f" ] || { echo "bench/callgrind.sh: $f is missing: run ./build.sh deps and ./build.sh" >&2; exit 1; }
done
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(redirect floor-redirect baseline-redirect proxy baseline-proxy)
FLOOR_WASM=""
if [[ " ${SCENARIOS[*]} " == *" floor-redirect "* ]]; then FLOOR_WASM=$(bench/floor.sh); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-callgrind.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Three pushgateways for the proxy scenarios (redirect never connects to its members), and three
# more as their standbys for the replicated ones and baseline-proxy-mirror; sets LIST
# (host:port,...). Not called in $(...): the PIDs must reach this shell's PIDS, or the cleanup
# never stops them.
pushgateways() {
    local port
    LIST=""
    for port in $("${HELPER[@]}" ports 3); do
        "$PUSHGATEWAY" "--web.listen-address=127.0.0.1:$port" --persistence.file= \
            --push.disable-consistency-check >"$WORK/pg-$port.log" 2>&1 </dev/null &
        PIDS+=($!)
        LIST+="${LIST:+,}127.0.0.1:$port"
    done
    for port in ${LIST//,/ }; do "${HELPER[@]}" wait-http GET "http://$port/-/ready" 200 >&2; done
}
pushgateways
MEMBERS=$LIST
STANDBYS=""
if [[ " ${SCENARIOS[*]} " == *"-replicated "* || " ${SCENARIOS[*]} " == *" baseline-proxy-mirror "* ]]; then
    pushgateways
    STANDBYS=$LIST
fi

for scen in "${SCENARIOS[@]}"; do
    read -r redirect proxy control admin < <("${HELPER[@]}" ports 4)
    status=307 port=$redirect
    case "$scen" in
        redirect | proxy | redirect-replicated | proxy-replicated)
            members=$MEMBERS
            if [ "$scen" = redirect ] && [ "${BENCH_MEMBERS:-3}" != 3 ]; then
                # As in bench/run.sh: addresses only, redirect never connects to them.
                members=$(seq 20000 $((20000 + BENCH_MEMBERS - 1)) | sed 's/^/127.0.0.1:/' | paste -sd,)
            fi
            python3 "$ROOT/scripts/render-envoy-config.py" --out "$WORK/$scen.yaml" --address 127.0.0.1 \
                --ports "$redirect,$proxy,$control,$admin" --members "$members" --wasm "$WASM"
            [ "${scen%-replicated}" = proxy ] && status=202 port=$proxy
            ;;
        baseline-redirect) "${HELPER[@]}" render-baseline-redirect --out "$WORK/$scen.yaml" --port "$port" \
            --admin "$admin" --location "${MEMBERS%%,*}" ;;
        floor-redirect) "${HELPER[@]}" render-baseline-redirect --out "$WORK/$scen.yaml" --port "$port" \
            --admin "$admin" --location "${MEMBERS%%,*}" --wasm "$FLOOR_WASM" ;;
        baseline-proxy)
            "${HELPER[@]}" render-baseline-proxy --out "$WORK/$scen.yaml" --port "$port" --admin "$admin" \
                --members "$MEMBERS"
            status=202
            ;;
        baseline-proxy-mirror)
            "${HELPER[@]}" render-baseline-proxy --out "$WORK/$scen.yaml" --port "$port" --admin "$admin" \
                --members "$MEMBERS" --mirror "$STANDBYS"
            status=202
            ;;
        *) echo "bench/callgrind.sh: unknown scenario $scen" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086 # BENCH_VALGRIND_ARGS is a list of options
    SHARDING_CONTROL_TOKEN=bench-unused valgrind --tool=callgrind --instr-atstart=no --smc-check=all \
        ${BENCH_VALGRIND_ARGS:-} \
        --callgrind-out-file="$WORK/$scen.cg" "$ENVOY" -c "$WORK/$scen.yaml" --disable-hot-restart \
        --concurrency 1 --log-level warning >"$WORK/$scen.log" 2>&1 </dev/null &
    vg=$!
    PIDS+=("$vg")
    "${HELPER[@]}" wait-http GET "http://127.0.0.1:$admin/ready" 200 --timeout 180 --pid "$vg" ||
        { tail -n 20 "$WORK/$scen.log" >&2; exit 1; }
    if [[ "$scen" == *-replicated ]]; then
        "${HELPER[@]}" put-slots --url "http://127.0.0.1:$control/-/sharding/members" --token bench-unused \
            --members "$MEMBERS" --standbys "$STANDBYS"
    fi
    "${HELPER[@]}" load --port "$port" --requests 3000 --status "$status"
    callgrind_control -i on "$vg" >/dev/null 2>&1
    "${HELPER[@]}" load --port "$port" --requests "$REQUESTS" --status "$status" --offset 5000
    callgrind_control -i off "$vg" >/dev/null 2>&1
    callgrind_control -d "$vg" >/dev/null 2>&1
    kill "$vg"
    wait "$vg" 2>/dev/null || true
    "${HELPER[@]}" instructions --dump "$WORK/$scen.cg" --scenario "$scen" --requests "$REQUESTS" |
        tee -a "$WORK/instructions.jsonl"
    if [ -n "${BENCH_CG_KEEP:-}" ]; then
        mkdir -p "$BENCH_CG_KEEP"
        cp "$(ls -S "$WORK/$scen.cg"* | head -n1)" "$BENCH_CG_KEEP/$scen.cg"
    fi
    if [ -n "${BENCH_VALGRIND_ARGS:-}" ]; then
        # Every event the options turned on (e.g. cache misses with --cache-sim=yes), per request.
        "${HELPER[@]}" events --dump "$WORK/$scen.cg" --requests "$REQUESTS"
    fi
done
"${HELPER[@]}" instruction-ratios --lines "$WORK/instructions.jsonl"
