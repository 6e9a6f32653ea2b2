#!/usr/bin/env bash
# Foundation benchmark: how long `bpcluster up -n N` takes, and what the master's memory costs
# per connected slave. Prints a markdown table with medians and ratios against baselines
# measured in the same run (the machine is shared and noisy; compare ratios, not seconds).
#
#   bench/foundation.sh                 # N = 8 64 256, 5 runs each, memory at 1024 slaves
#   RUNS=9 SIZES="64" MEM_NODES=512 bench/foundation.sh
#
# Baselines:
#   spawn floor  N+1 sequential starts of `bpslave -V` (the same binary, doing nothing): the
#                cost of just creating the daemons, below which `up` cannot go.
#   master RSS   the master with 1 connected slave; the per-slave cost is
#                (RSS at MEM_NODES slaves - RSS at 1) / (MEM_NODES - 1).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZES=${SIZES:-"8 64 256"}
MEM_NODES=${MEM_NODES:-1024}
cargo build --release --quiet -p bproc-bins
B=$PWD/target/release
DIR=$(mktemp -d /tmp/bproc-bench.XXXXXX)
trap '"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms() { awk -v ns="$1" 'BEGIN {printf "%.1f", ns/1e6}'; }

up_once() { # N -> ns for `bpcluster up`, cluster stopped afterwards
    local t0 t1
    t0=$(now_ns)
    "$B/bpcluster" up -n "$1" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" || { cat "$DIR/up.err" >&2; exit 1; }
    t1=$(now_ns)
    "$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1
    echo $((t1 - t0))
}

spawn_floor() { # N -> ns for N+1 sequential starts of bpslave -V
    local t0 t1 i
    t0=$(now_ns)
    for ((i = 0; i <= $1; i++)); do "$B/bpslave" -V >/dev/null; done
    t1=$(now_ns)
    echo $((t1 - t0))
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

echo "## bproc foundation benchmark"
echo
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $RUNS runs per size, medians."
echo
echo "| nodes | bpcluster up (ms) | spawn floor (ms) | up / floor |"
echo "|---:|---:|---:|---:|"
for n in $SIZES; do
    ups=$(for _ in $(seq "$RUNS"); do up_once "$n"; done | median)
    floor=$(for _ in $(seq "$RUNS"); do spawn_floor "$n"; done | median)
    printf "| %d | %s | %s | %.2f |\n" "$n" "$(ms "$ups")" "$(ms "$floor")" "$(awk -v a="$ups" -v b="$floor" 'BEGIN {print a/b}')"
done
echo

# Memory: the master with 1 slave, then with MEM_NODES slaves.
"$B/bpcluster" up -n 1 --dir "$DIR/c" >/dev/null 2>&1
m1=$(rss_kib "$(awk '/^master/ {print $2}' "$DIR/c/pids")")
"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1
t0=$(now_ns)
"$B/bpcluster" up -n "$MEM_NODES" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" || { cat "$DIR/up.err" >&2; exit 1; }
t1=$(now_ns)
mpid=$(awk '/^master/ {print $2}' "$DIR/c/pids")
mN=$(rss_kib "$mpid")
slave_rss=$(awk '/^n/ {print $2}' "$DIR/c/pids" | head -64 | while read -r p; do rss_kib "$p"; done | median)
up=$(BPROC_SOCKET=$DIR/c/master.sock "$B/bpstat" -t allup)
"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1
echo "| measure | value |"
echo "|---|---:|"
echo "| slaves connected and up | $up of $MEM_NODES |"
echo "| bpcluster up -n $MEM_NODES | $(ms $((t1 - t0))) ms |"
echo "| master RSS, 1 slave | $m1 KiB |"
echo "| master RSS, $MEM_NODES slaves | $mN KiB |"
printf "| master memory per connected slave | %.1f KiB |\n" "$(awk -v a="$mN" -v b="$m1" -v n="$MEM_NODES" 'BEGIN {print (a-b)/(n-1)}')"
echo "| slave daemon RSS (median of 64) | $slave_rss KiB |"
