#!/usr/bin/env bash
# bpsh launch benchmark: `bpsh 0 true` against a local spawn of /bin/true, and `bpsh -a true`
# at several cluster sizes against the spawn floor (N local spawns / cores), all measured in
# this run on a virtual cluster. Prints a markdown table of medians and ratios.
#
#   bench/bpsh.sh                      # sizes 8 64 256 1024
#   SIZES="8 64" RUNS=9 bench/bpsh.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
SIZES=${SIZES:-"8 64 256 1024"}
cargo build --release --quiet -p bproc-bins
B=$PWD/target/release
DIR=$(mktemp -d /tmp/bproc-bench.XXXXXX)
trap '"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
CORES=$(nproc)

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms() { awk -v ns="$1" 'BEGIN {printf "%.2f", ns/1e6}'; }
time_ns() { local t0 t1; t0=$(now_ns); "$@" >/dev/null; t1=$(now_ns); echo $((t1 - t0)); }

up() { "$B/bpcluster" up -n "$1" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" || { cat "$DIR/up.err" >&2; exit 1; }; }
export BPROC_SOCKET=$DIR/c/master.sock

# A single launch on a small cluster: on a real cluster the front end does not also host
# a thousand slave daemons, whose pings would load this machine's two cores.
up 8
for _ in 1 2 3; do "$B/bpsh" 0 true; /bin/true; done # warm caches and the fresh cluster
spawn=$(for _ in $(seq 21); do time_ns /bin/true; done | median)
one=$(for _ in $(seq 21); do time_ns "$B/bpsh" 0 true; done | median)
"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1

max=0
for n in $SIZES; do [ "$n" -gt "$max" ] && max=$n; done
up "$max"

echo "## bpsh launch benchmark"
echo
echo "$CORES cores, kernel $(uname -r); the single launch on an 8-node virtual cluster, the others on one of $max nodes; medians of $RUNS runs (21 for single launches)."
echo
sent() { "$B/bpstat" --master-info | python3 -c "import json,sys; print(json.load(sys.stdin)['bytes_to_slaves'])"; }
# Bytes the master sends for one launch: the least of three, so that a ping round falling
# inside one of them does not count.
launch_bytes() {
    local best=-1 a b d
    for _ in 1 2 3; do
        a=$(sent); "$B/bpsh" "0-$(($1 - 1))" true >/dev/null; b=$(sent); d=$((b - a))
        if [ "$best" -lt 0 ] || [ "$d" -lt "$best" ]; then best=$d; fi
    done
    echo "$best"
}

echo "| command | median (ms) | baseline (ms) | ratio | master bytes per launch |"
echo "|---|---:|---:|---:|---:|"
printf "| bpsh 0 true | %s | %s (local /bin/true) | %.1f | |\n" "$(ms "$one")" "$(ms "$spawn")" "$(awk -v a="$one" -v b="$spawn" 'BEGIN {print a/b}')"
for n in $SIZES; do
    t=$(for _ in $(seq "$RUNS"); do time_ns "$B/bpsh" "0-$((n - 1))" true; done | median)
    floor=$(awk -v s="$spawn" -v n="$n" -v c="$CORES" 'BEGIN {print s*n/c}')
    printf "| bpsh 0-%d true (%d nodes) | %s | %s (spawn floor) | %.1f | %s |\n" "$((n - 1))" "$n" "$(ms "$t")" "$(ms "$floor")" "$(awk -v a="$t" -v b="$floor" 'BEGIN {print a/b}')" "$(launch_bytes "$n")"
done
