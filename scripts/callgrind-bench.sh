#!/usr/bin/env bash
# Instruction counts per iteration for criterion benchmarks, with valgrind's callgrind.
#
# Wall-clock figures on a shared machine are noisy; instruction counts are repeatable. Each bench
# routine calls a function named `drive` once per iteration; this script runs each benchmark
# under callgrind in criterion's profile mode and prints the instructions of one `drive` call.
#
#   scripts/callgrind-bench.sh catch catch_success bare tower_http_catch_panic tower_5xx_catch
set -euo pipefail
bench=$1 group=$2
shift 2
cargo bench --bench "$bench" --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/"$bench"-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
for name in "$@"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/$name.out" \
        "$bin" --bench --profile-time 1 "^$group/$name\$" >/dev/null 2>&1
    tree=$(callgrind_annotate --inclusive=yes --tree=caller "$out/$name.out" 2>/dev/null)
    calls=$(echo "$tree" | grep -B1 -E "\*  \?\?\?:$bench::(common::)?drive" | head -1 |
        sed -E 's/.*\(([0-9,]+)x\).*/\1/' | tr -d ,)
    incl=$(echo "$tree" | grep -E "\*  \?\?\?:$bench::(common::)?drive" | head -1 | awk '{gsub(",","",$1); print $1}')
    printf '%-40s %8d instructions per iteration\n' "$group/$name" $((incl / calls))
done
rm -rf "$out"
