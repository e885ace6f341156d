#!/usr/bin/env bash
# The filter's own work per redirect, function by function: bench/plan-profile (routing::plan, or
# with `request` a whole redirect through request::Request over a do-nothing host; natively, with
# symbols) under callgrind. Envoy's callgrind counts show the JIT-compiled wasm as
# one block; this splits the decision into its parts (parsing, allocation, hashing, the ring), in
# x86 instructions, so proportions carry over to the wasm, not the counts (bench/README.md,
# "The floor").
#
#   bench/plan-profile.sh [pushes (20000)] [members (3)] [plan|request]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "bench/plan-profile.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --locked --quiet --manifest-path bench/plan-profile/Cargo.toml --target-dir target/plan-profile
pushes=${1:-20000}
what=${3:-plan}
case "$what" in
    plan) counted=plan_profile::decide ;;
    request) counted=plan_profile::requests ;;
    *) echo "bench/plan-profile.sh: unknown profile $what: expected plan or request" >&2; exit 2 ;;
esac
out=$(mktemp "${TMPDIR:-/tmp}/plan-profile.XXXXXX")
trap 'rm -f "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect="$counted" \
    target/plan-profile/release/plan-profile "$pushes" "${2:-3}" "$what" >/dev/null 2>&1
total=$(sed -n 's/^totals: *//p' "$out" | awk '{print $1}')
echo "instructions per $([ "$what" = plan ] && echo decision || echo redirect): $((total / pushes))"
# Inlined code is counted in the file it comes from; files are grouped by what they do.
echo "per $([ "$what" = plan ] && echo decision || echo redirect), by what the code does:"
callgrind_annotate --auto=no --threshold=100 "$out" 2>/dev/null |
    awk -v n="$pushes" '/^ *[0-9,]+ \( *[0-9.]+%\) / && !/PROGRAM TOTALS/ {
        ir = $1; gsub(",", "", ir)
        line = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", line)
        file = line; sub(/:.*/, "", file); sub(/.*\//, "", file)
        if (file ~ /^(malloc\.c|arena\.c|unix\.rs|raw_vec)/ || line ~ /raw_vec|alloc::alloc/) what = "allocation (malloc, free, growing a Vec or String)"
        else if (file ~ /^(memchr|pattern|vector|masks|eq)\.rs$/ || line ~ /str::pattern/) what = "searching strings (contains, find, split)"
        else if (file ~ /^memmove|^memcpy|^memset/) what = "copying bytes"
        else if (file == "xxhash64.rs") what = "hashing the grouping key (XXH64)"
        else if (file ~ /^(routing|grouping_key|ring|members|config)\.rs$/) what = "the filter'"'"'s own code: " file
        else if (line ~ /^src\/request\//) what = "the filter'"'"'s own code: request/" file
        else what = "the rest of std, inlined (slices, iterators, comparisons)"
        by[what] += ir } END { for (w in by) printf "%8.0f  %s\n", by[w] / n, w }' | sort -rn
