#!/usr/bin/env bash
# Instructions and heap allocations per request of a real axum server (examples/server_bench.rs),
# one process per middleware stack, driven over loopback by ApacheBench with one keep-alive
# connection (`ab -k -c 1 -n N`).
#
#   scripts/server-bench.sh [N]        # N requests, default 2000; SERVER_BENCH_STACKS="bare ours"
#                                      # picks stacks; SERVER_BENCH_KEEP=1 keeps the output files
#
# Each stack's server runs four times under valgrind: twice under callgrind (N, then 2N
# requests) and twice under memcheck (N, then 2N). Per request = (X(2N) - X(N)) / N, so the
# cost of starting and stopping the process, of the one connection and of the first request
# cancels out.
#
# - instructions: callgrind's `summary:` (all threads of the server process; the server runs a
#   tokio current_thread runtime, so the count is repeatable);
# - allocations: memcheck's "total heap usage: A allocs" for the whole process, i.e. every call
#   to malloc, calloc, realloc, memalign/posix_memalign/aligned_alloc (Rust's System allocator
#   ends in those): a Vec growing by realloc counts as one allocation per realloc call.
#   (Not a counting #[global_allocator]: the crate forbids unsafe code, and one would add its
#   own instructions to the callgrind runs.)
#
# Needs valgrind and ab (Debian: apache2-utils, installed here if missing).
set -euo pipefail

n=${1:-2000}
if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [N]   (N: requests per run, a positive integer)" >&2
    exit 2
fi
stacks=(${SERVER_BENCH_STACKS:-bare identity wrap catch-panic stock catch catch-plain maintenance shed breaker breaker-count drain ours catch-shed bare-connect-info ratelimit ratelimit-plain governor governor-headers})

cd "$(dirname "$0")/.."

install_pkg() { # command package
    command -v "$1" >/dev/null && return
    echo "installing $2 (for $1)" >&2
    apt-get install -y "$2" >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get install -y "$2" >/dev/null 2>&1; } ||
        { echo "cannot install $2: install it and run again" >&2; exit 1; }
}
install_pkg ab apache2-utils
install_pkg valgrind valgrind

start_time=$(date +%s)
cargo build --release --example server_bench >&2
target_dir=$(cargo metadata --no-deps --format-version 1 |
    sed -E 's/.*"target_directory":"([^"]*)".*/\1/')
bin=$target_dir/release/examples/server_bench
[[ -x $bin ]] || { echo "no binary at $bin" >&2; exit 1; }

tmp=$(mktemp -d -t server-bench.XXXXXX)
server_pid=
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ ${SERVER_BENCH_KEEP:-0} == 1 ]]; then
        echo "output files kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run TOOL STACK REQUESTS: one server under valgrind TOOL, REQUESTS requests, then SIGTERM.
# Sets `figure` to what the tool's output says: instructions or allocations. (Runs in this
# shell, not in a $(...) subshell, so that the EXIT trap knows the server to stop on an error.)
figure=
run() {
    local tool=$1 stack=$2 requests=$3
    local base=$tmp/$stack.$tool.$requests out
    local opts=()
    case $tool in
    callgrind) opts=(--tool=callgrind "--callgrind-out-file=$base.out") ;;
    memcheck) opts=(--tool=memcheck --leak-check=no "--log-file=$base.out") ;;
    esac
    valgrind "${opts[@]}" "$bin" "$stack" >"$base.stdout" 2>"$base.stderr" &
    server_pid=$!
    local addr= i
    for ((i = 0; i < 600; i++)); do # up to 60 s for the address
        addr=$(head -n 1 "$base.stdout" 2>/dev/null || true)
        [[ -n $addr ]] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "server ($stack under $tool) died at startup:" >&2
            cat "$base.stderr" >&2
            exit 1
        fi
        sleep 0.1
    done
    [[ -n $addr ]] || { echo "server ($stack under $tool) printed no address" >&2; exit 1; }
    ab -k -c 1 -n "$requests" "http://$addr/" >"$base.ab" 2>&1 ||
        { echo "ab failed ($stack under $tool):" >&2; cat "$base.ab" >&2; exit 1; }
    local complete failed keepalive
    complete=$(sed -nE 's/^Complete requests: *([0-9]+).*/\1/p' "$base.ab")
    failed=$(sed -nE 's/^Failed requests: *([0-9]+).*/\1/p' "$base.ab")
    keepalive=$(sed -nE 's/^Keep-Alive requests: *([0-9]+).*/\1/p' "$base.ab")
    if [[ $complete != "$requests" || $failed != 0 || $keepalive != "$requests" ]] ||
        grep -q '^Non-2xx responses' "$base.ab"; then
        echo "unexpected ab result ($stack under $tool): see below" >&2
        cat "$base.ab" >&2
        exit 1
    fi
    kill -TERM "$server_pid"
    wait "$server_pid" || { echo "server ($stack under $tool) exited with $?" >&2; exit 1; }
    server_pid=
    case $tool in
    callgrind) out=$(sed -nE 's/^summary: *([0-9]+).*/\1/p' "$base.out") ;;
    memcheck) out=$(sed -nE 's/.*total heap usage: *([0-9,]+) allocs.*/\1/p' "$base.out" | tr -d ,) ;;
    esac
    [[ -n $out ]] || { echo "no figure in $base.out" >&2; exit 1; }
    figure=$out
}

declare -A instr allocs
for stack in "${stacks[@]}"; do
    echo "$stack..." >&2
    run callgrind "$stack" "$n"; i1=$figure
    run callgrind "$stack" $((2 * n)); i2=$figure
    run memcheck "$stack" "$n"; a1=$figure
    run memcheck "$stack" $((2 * n)); a2=$figure
    instr[$stack]=$(awk -v a="$i1" -v b="$i2" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
    allocs[$stack]=$(awk -v a="$a1" -v b="$a2" -v n="$n" 'BEGIN { printf "%.2f", (b - a) / n }')
done

# Figures missing when a stack was not run: "-".
get() { # array key
    local -n arr=$1
    echo "${arr[$2]:--}"
}
# added VALUE BASE: VALUE - BASE, "-" if either is missing
added() { awk -v v="$1" -v b="$2" -v f="$3" 'BEGIN { if (v == "-" || b == "-") print "-"; else printf f, v - b }'; }
# ratio A B: A / B, "-" if either is missing or B is 0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

bare=$(get instr bare)
identity_allocs=$(get allocs identity)
cp_added=$(added "$(get instr catch-panic)" "$bare" %.1f)
stock_added=$(added "$(get instr stock)" "$bare" %.1f)
ours_added=$(added "$(get instr ours)" "$bare" %.1f)
catch_shed_added=$(added "$(get instr catch-shed)" "$bare" %.1f)

echo
echo "N = $n requests (per request = (run of 2N - run of N) / N), $(date -u +%Y-%m-%d), $(uname -m)"
echo
echo "| stack | instructions/request | added over bare | ratio to catch-panic's added | allocations/request | added allocations over identity |"
echo "|---|---:|---:|---:|---:|---:|"
for stack in "${stacks[@]}"; do
    i=${instr[$stack]}
    add=$(added "$i" "$bare" %.0f)
    printf '| %s | %.0f | %s | %s | %s | %s |\n' "$stack" "$i" "$add" \
        "$(ratio "$add" "$cp_added")" "${allocs[$stack]}" \
        "$(added "${allocs[$stack]}" "$identity_allocs" %.2f)"
done
echo
echo "ours added / stock added: $(ratio "$ours_added" "$stock_added")"
echo "ours added / catch-panic added: $(ratio "$ours_added" "$cp_added")"
echo "catch-shed added / stock added (like for like): $(ratio "$catch_shed_added" "$stock_added")"
echo "(took $(($(date +%s) - start_time)) s)" >&2
