#!/usr/bin/env bash
# How the filter's cost grows with the work: the cost-curve tables of bench/README.md.
#
#   bench/curves.sh            (./build.sh bench curves)
#
# 1. Redirect mode under the same wrk load as bench/run.sh, one thing varied at a time:
#    members (3, 100, 1,000), distinct groups (10,000, 1,000,000), body size (4 B, 64 KiB, 1 MiB).
#    Each configuration is one `bench/run.sh redirect` (fresh Envoy, every answer checked).
# 2. The time each worker takes to apply a member-list update (read it, decode it, rebuild the
#    ring) at 3, 100 and 1,000 members x 500 vnodes (a new list each time), and when one member
#    joins or leaves a list of 1,000 (a scale-out or a drain), as the filter logs it.
#
# Settings: BENCH_DURATION (s, 5), BENCH_ROUNDS (1: every configuration once per round, rounds
# interleaved, medians reported), plus bench/run.sh's. Results: bench/results/curves.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
export BENCH_DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-1}
ENVOY=${ENVOY_BIN:-$ROOT/.deps/bin/envoy}
WASM=${BENCH_WASM:-$ROOT/target/wasm32-wasip1/release/dynamic_sharding.wasm}
[ -x "$ENVOY" ] || { echo "bench/curves.sh: $ENVOY is missing: run ./build.sh deps" >&2; exit 1; }
[ -f "$WASM" ] || { echo "bench/curves.sh: $WASM is missing: run ./build.sh" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-curves.XXXXXX")
ENVOY_PID=""
cleanup() {
    local rc=$?
    if [ -n "$ENVOY_PID" ]; then
        kill "$ENVOY_PID" 2>/dev/null || true
        wait "$ENVOY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# name members groups body-bytes
CONFIGS=(
    "members-3 3 10000 4"
    "members-100 100 10000 4"
    "members-1000 1000 10000 4"
    "groups-1M 3 1000000 4"
    "body-64KiB 3 10000 65536"
    "body-1MiB 3 10000 1048576"
)

# BENCH_CURVES_LOAD=0: only the member-list updates (part 2).
[ "${BENCH_CURVES_LOAD:-1}" = 1 ] || CONFIGS=()
for round in $(seq "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        read -r name members groups body <<<"$config"
        echo "==> $name (round $round/$ROUNDS)"
        BENCH_ROUNDS=1 BENCH_MEMBERS=$members BENCH_GROUPS=$groups BENCH_BODY_BYTES=$body \
            "$BENCH/run.sh" redirect >"$WORK/$name-$round.log" 2>&1 ||
            { tail -n 30 "$WORK/$name-$round.log" >&2; exit 1; }
        cp "$BENCH/results/latest.json" "$WORK/$name-$round.json"
    done
done

echo "==> member-list updates: 3, 100, 1,000 members x 500 vnodes; one joining or leaving 1,000"
read -r redirect proxy control admin < <(python3 "$BENCH/bench.py" ports 4)
python3 "$ROOT/scripts/render-envoy-config.py" --out "$WORK/apply.yaml" --address 127.0.0.1 \
    --ports "$redirect,$proxy,$control,$admin" --wasm "$WASM"
CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-2}
SHARDING_CONTROL_TOKEN=bench-curves "$ENVOY" -c "$WORK/apply.yaml" --disable-hot-restart \
    --concurrency "$CONCURRENCY" --log-level info >"$WORK/apply.log" 2>&1 </dev/null &
ENVOY_PID=$!
python3 "$BENCH/bench.py" wait-http GET "http://127.0.0.1:$admin/ready" 200 --pid "$ENVOY_PID" ||
    { tail -n 30 "$WORK/apply.log" >&2; exit 1; }
# Each worker, and Envoy's main thread, has a view per data listener (redirect and proxy): two
# lines per thread and update.
python3 "$BENCH/bench.py" apply --control "$control" --token bench-curves --log "$WORK/apply.log" \
    --sizes 3 100 1000 1000+1 --rounds "$((ROUNDS * 3))" --expect-lines "$(((CONCURRENCY + 1) * 2))" \
    >"$WORK/apply.json" || { tail -n 30 "$WORK/apply.log" >&2; exit 1; }
rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$ENVOY_PID/status")

python3 - "$WORK" "$ROUNDS" "$rss_kb" "$BENCH/results/curves.json" "${CONFIGS[@]}" <<'PY'
import json, statistics, sys
work, rounds, rss_kb, out, configs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
machine = None
rows = []
for c in configs:
    name = c.split()[0]
    runs = [json.load(open(f"{work}/{name}-{r}.json")) for r in range(1, rounds + 1)]
    machine = machine or runs[0]["machine"]
    s = [r["scenarios"]["redirect"] for r in runs]
    med = lambda k: statistics.median(x[k] for x in s)
    rows.append({
        "config": name, "rps": med("rps"), "envoy_cpu_ms_per_1k": med("envoy_cpu_ms_per_1k"),
        "p99_ms": statistics.median(x["latency_ms"]["p99"] for x in s), "envoy_rss_mb": med("envoy_rss_mb"),
        "conns": s[-1]["downstream_cx"],
    })
apply = json.load(open(f"{work}/apply.json"))
result = {"machine": machine, "rounds": rounds, "redirect": rows, "apply": apply,
          "envoy_rss_mb_after_updates_to_1000_members": round(rss_kb / 1024, 1)}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
if machine is None:
    import os, subprocess
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = {"nproc": os.cpu_count(), "cpu_model": "", "date": "", "git": git, "wasm_sha256": ""}
print()
print(f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}; {machine['date']}; tree {machine['git']}; "
      f"wasm {machine['wasm_sha256'][:16]}; {rounds} round(s), medians")
print()
print("| configuration | req/s | p99 ms | Envoy CPU ms/1k req | Envoy RSS MB | conns |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['config']} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | {r['envoy_cpu_ms_per_1k']:.1f} | "
          f"{r['envoy_rss_mb']:.0f} | {r['conns']} |")
print()
print("| members x 500 vnodes, update | applied on a thread, median ms | max ms | samples (threads x updates) |")
print("|---|---|---|---|")
for size, a in apply.items():
    label = f"{int(size[:-2]):,}, one joins or leaves" if size.endswith("+1") else f"{int(size):,}, a new list"
    print(f"| {label} | {a['median_ms']:.2f} | {a['max_ms']:.2f} | {a['samples']} |")
print()
print(f"Envoy RSS after the updates (last list: 1,000 or 1,001 members): {rss_kb / 1024:.0f} MB")
print(f"results: {out}")
PY
