#!/usr/bin/env bash
# Migration benchmark on a local virtual cluster (loopback): the time to move a running
# process to a node (from the call until it runs there, as the same pid) and back, for a
# small process, for one holding 64 MiB and for a small one with 4 more threads (each
# counting, checked to go on counting after the moves), and the time of one bproc_vrfork to 64 nodes
# (until every child runs), small and holding 64 MiB. Baselines in the same run: a bpsh of
# /bin/true on one node (the cheapest remote start there is) for the small move, a bpcp of a
# 64 MiB file to the node (the same bytes moved to the node) for the big one, a bpsh of
# /bin/true on all 64 nodes for the small vrfork, and a bpcp broadcast of 64 MiB to all 64
# nodes for the big one.
#
#   bench/move.sh              # medians of 7 runs (as root: moves keep their pids)
#   RUNS=3 NODES=16 bench/move.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
NODES=${NODES:-64}
cargo build --release --quiet -p bproc-bins -p bproc --bins --examples
B=$PWD/target/release
export PATH=$B:$PATH
DIR=$(mktemp -d /var/tmp/bproc-move-bench.XXXXXX)
trap 'bpcluster down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
eval "$(bpcluster up -n "$NODES" --dir "$DIR/c")"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo "scale=3; ($t1 - $t0) / 1000000" | bc; }

head -c $((64 << 20)) /dev/urandom >"$DIR/64m"
printf '%-18s %12s %12s %14s %12s\n' what median_ms back_ms baseline_ms ratio
for mib in 0 64; do
    "$B/examples/move_bench" move 1 "$mib" "$RUNS" >"$DIR/out"
    m=$(awk '/^move_ms/ {print $2}' "$DIR/out" | median)
    b=$(awk '/^back_ms/ {print $2}' "$DIR/out" | median)
    : >"$DIR/base"
    for _ in $(seq "$RUNS"); do
        if [ "$mib" = 0 ]; then ms bpsh 1 /bin/true >>"$DIR/base"
        else ms bpcp "$DIR/64m" 1:/tmp/64m >>"$DIR/base"; fi
    done
    base=$(median <"$DIR/base")
    printf '%-18s %12s %12s %14s %12s\n' "move ${mib} MiB" "$m" "$b" "$base" "$(echo "scale=2; $m / $base" | bc)"
done
"$B/examples/move_bench" move 1 0 "$RUNS" 4 >"$DIR/out"
m=$(awk '/^move_ms/ {print $2}' "$DIR/out" | median)
b=$(awk '/^back_ms/ {print $2}' "$DIR/out" | median)
: >"$DIR/base"
for _ in $(seq "$RUNS"); do ms bpsh 1 /bin/true >>"$DIR/base"; done
base=$(median <"$DIR/base")
printf '%-18s %12s %12s %14s %12s\n' "move 4 threads" "$m" "$b" "$base" "$(echo "scale=2; $m / $base" | bc)"
nodes=$(seq -s ' ' 0 $((NODES - 1)))
for mib in 0 64; do
    : >"$DIR/v" && : >"$DIR/base"
    for _ in $(seq "$RUNS"); do
        # shellcheck disable=SC2086
        "$B/examples/move_bench" vrfork "$mib" $nodes | awk '/^vrfork_ms/ {print $2}' >>"$DIR/v"
        if [ "$mib" = 0 ]; then ms bpsh -a /bin/true >>"$DIR/base"
        else ms bpcp "$DIR/64m" all:/tmp/64m >>"$DIR/base"; fi
    done
    v=$(median <"$DIR/v") base=$(median <"$DIR/base")
    printf '%-18s %12s %12s %14s %12s\n' "vrfork ${mib} MiB" "$v" - "$base" "$(echo "scale=2; $v / $base" | bc)"
done
