# Sourced by bench/run.sh and bench/cluster.sh: a temporary directory and the processes a benchmark
# starts, every one stopped by PID when the script exits (also on Ctrl-C or a failure).
#
#   WORK_PREFIX=ds-bench; source bench/procs.sh
#
# Sets WORK (removed on exit) and PIDS. STOP_WAIT (tenths of a second, 50) is how long a process
# gets to exit on SIGTERM before SIGKILL.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/${WORK_PREFIX:-ds-bench}.XXXXXX")
PIDS=()

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq "${STOP_WAIT:-50}"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log; sets STARTED_PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# stop PID...: stops them now (what is measured next must not share the CPU with them).
stop() {
    local pid p keep
    for pid in "$@"; do
        stop_pid "$pid"
        keep=()
        for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
        PIDS=("${keep[@]}")
    done
}

show_log() {
    echo "---- last lines of $1.log" >&2
    tail -n 30 "$WORK/$1.log" >&2 || true
}
