#!/usr/bin/env bash
# Migration benchmark on a local virtual cluster (loopback): the time to move a running
# process to a node (from the call until it runs there, as the same pid) and back, for a
# small process, for one holding 64 MiB and for a small one with 4 more threads (each
# counting, checked to go on counting after the moves), and one bproc_vrfork to 64 nodes,
# small and holding 64 MiB, timed as a whole process (start, fork, every child's end) as its
# baseline is. Baselines in the same run: a bpsh of /bin/true on one node (the cheapest
# remote start there is) for the small move, a bpcp of a 64 MiB file to the node (the same
# bytes moved to the node) for the big one, a bpsh of /bin/true on all 64 nodes for the
# small vrfork, and a bpcp broadcast of 64 MiB to all 64 nodes for the big one; each vector
# fork and its baseline are taken in turn (the small pairs in at least 21 rounds, as a launch
# varies by a tenth from one run to the next; the 64 MiB pair in at least 15: the host hands
# memory out at two speeds, mostly to the broadcast's tmpfs pages, and two runs of 7 rounds
# on one commit gave median ratios of 1.54 and 1.08, one of 15 rounds 1.13). A vector
# fork's children write where the caller does, so each runs as its baseline does: with stdout
# and stderr on /dev/null (hyperfine's default), and the small one again with both forwarded
# to a pipe (the children's through their relaying ghosts), against the launch with its output
# forwarded to a pipe too. Last, the floors of the forks, with no cluster: the small fork's
# image restored 64 times by a bare restorer against 64 posix_spawns of /bin/true, one at a
# time per core, and the 64 MiB fork's against the broadcast: its image restored 64 times,
# the broadcast's transport alone (into /dev/null), and the restores' reads of the image, the
# fork's floor being the first two less the third. The daemons run as installed ones do,
# logging warnings only.
#
#   bench/move.sh              # medians of 7 runs (as root: moves keep their pids)
#   RUNS=3 NODES=16 bench/move.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
NODES=${NODES:-64}
cargo build --release --quiet -p bproc-bins -p bproc-client --bins --examples
B=$PWD/target/release
export PATH=$B:$PATH
DIR=$(mktemp -d /var/tmp/bproc-move-bench.XXXXXX)
trap 'bpcluster down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
# shellcheck source=bench/lib/quiet.sh
. bench/lib/quiet.sh
quiet
eval "$(bpcluster up --quiet -n "$NODES" --dir "$DIR/c")"
# shellcheck source=bench/lib/rounds.sh
. bench/lib/rounds.sh
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
if ! command -v hyperfine >/dev/null; then
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null
fi
# A baseline's median in ms: whole processes timed by hyperfine, no shell.
base_ms() {
    hyperfine -N --style none --warmup 1 --runs "$RUNS" --export-json "$DIR/hf.json" "$1" >/dev/null 2>"$DIR/hf.err" ||
        { cat "$DIR/hf.err" >&2; exit 1; }
    python3 bench/lib/hf.py "$DIR/hf.json" | awk '{print $1}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
holds() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "yes" : "**no**"}'; }
row() { # what, move ms, back ms, baseline name, baseline ms, target text, value checked, limit
    printf '| %s | %s | %s | %s %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" "$(ratio "$2" "$5")" "$6" \
        "$(if [ -n "$8" ]; then holds "$7" "$8"; else echo -; fi)"
}

head -c $((64 << 20)) /dev/urandom >"$DIR/64m"
echo "## migration benchmark"
echo
echo "$(nproc) cores, kernel $(uname -r), $NODES nodes; moves timed inside the process (call to running there), medians of $RUNS (the vector forks: of at least 21 small, 15 of 64 MiB); vector forks, floors and baselines whole processes by hyperfine in the same run."
echo
echo "| what | median (ms) | back (ms) | baseline (ms) | ratio | target | holds |"
echo "|---|---:|---:|---|---:|---|---|"
for mib in 0 64; do
    "$B/examples/move_bench" move 1 "$mib" "$RUNS" >"$DIR/out"
    m=$(awk '/^move_ms/ {print $2}' "$DIR/out" | median)
    b=$(awk '/^back_ms/ {print $2}' "$DIR/out" | median)
    if [ "$mib" = 0 ]; then
        row "move, small" "$m" "$b" "bpsh 1 /bin/true" "$(base_ms "$B/bpsh 1 /bin/true")" "≤ 5 ms" "$m" 5
    else
        row "move, 64 MiB" "$m" "$b" "bpcp of 64 MiB" "$(base_ms "$B/bpcp $DIR/64m 1:/tmp/64m")" "≤ 100 ms" "$m" 100
    fi
done
"$B/examples/move_bench" move 1 0 "$RUNS" 4 >"$DIR/out"
m=$(awk '/^move_ms/ {print $2}' "$DIR/out" | median)
b=$(awk '/^back_ms/ {print $2}' "$DIR/out" | median)
row "move, 4 more threads" "$m" "$b" "bpsh 1 /bin/true" "$(base_ms "$B/bpsh 1 /bin/true")" "" "" ""
nodes=$(seq -s ' ' 0 $((NODES - 1)))
# A vector fork and its baseline, whole processes timed by hyperfine in turn (one run of each
# per round, after one untimed round), so that the machine's drift falls on both alike.
# Cases: SIZE (MiB) and where the output goes (null: hyperfine's default, or pipe).
for case in 0:null 0:pipe 64:null; do
    mib=${case%%:*} out=${case#*:}
    if [ "$mib" = 0 ]; then against="$B/bpsh -a /bin/true"; else against="$B/bpcp $DIR/64m all:/tmp/64m"; fi
    runs=$RUNS
    [ "$mib" = 0 ] && [ "$runs" -lt 21 ] && runs=21
    [ "$mib" = 64 ] && [ "$runs" -lt 15 ] && runs=15
    # shellcheck disable=SC2086
    read -r v base <<<"$(rounds "$DIR" "$runs" -N --output="$out" "$B/examples/move_bench vrfork $mib $nodes" \
        "$against" | awk '{print $1}' | tr '\n' ' ')"
    case $case in
    0:null) row "vrfork, small, $NODES nodes" "$v" - "bpsh -a /bin/true" "$base" "ratio ≤ 1.5" "$(ratio "$v" "$base")" 1.5 ;;
    0:pipe) row "vrfork, small, $NODES nodes, output forwarded to a pipe" "$v" - "bpsh -a /bin/true, the same" "$base" "" "" "" ;;
    *) row "vrfork, 64 MiB, $NODES nodes" "$v" - "bpcp broadcast of 64 MiB" "$base" "ratio ≤ 1.5" "$(ratio "$v" "$base")" 1.5 ;;
    esac
done
# The floor of a small vector fork against that of a launch, on this machine with no cluster:
# the same image (written by the same program at the same point) restored $NODES times by a
# bare restorer, one at a time per core, each copy waited for, against the spawn floor of
# $NODES /bin/true (posix_spawn and wait, one per core).
cc -O2 -o "$DIR/spawnloop" bench/lib/spawnloop.c
"$B/examples/move_bench" dump 0 "$DIR/image"
read -r rf sf <<<"$(rounds "$DIR" "$RUNS" -N "$B/examples/move_bench restores $DIR/image $NODES $(nproc)" \
    "$DIR/spawnloop $NODES $(nproc) /bin/true" | awk '{print $1}' | tr '\n' ' ')"
row "floor: $NODES restores of the image, no cluster" "$rf" - "spawn floor, $NODES /bin/true" "$sf" "" "" ""
# The same for the fork holding 64 MiB, in turn with the broadcast of 64 MiB: its image
# restored $NODES times with no cluster (read from a file the page cache holds), the transport
# alone (the broadcast into each node's /dev/null: the same bytes through the same sockets,
# checked, written nowhere), and the restores' reads of the file alone ($NODES reads by dd,
# $(nproc) at a time), which a fork does from its socket instead. On this machine the nodes
# share its cores, so the fork's floor is the restores and the transport, less those reads.
"$B/examples/move_bench" dump 64 "$DIR/image64"
read -r rf sf tf df <<<"$(rounds "$DIR" "$RUNS" -N "$B/examples/move_bench restores $DIR/image64 $NODES $(nproc)" \
    "$B/bpcp $DIR/64m all:/tmp/64m" "$B/bpcp $DIR/64m all:/dev/null" \
    "sh -c 'seq $NODES | xargs -P $(nproc) -I{} dd if=$DIR/image64 of=/dev/null bs=256k status=none'" |
    awk '{print $1}' | tr '\n' ' ')"
row "floor: $NODES restores of the 64 MiB image, no cluster" "$rf" - "bpcp broadcast of 64 MiB" "$sf" "" "" ""
row "floor: the transport, a broadcast of 64 MiB into /dev/null" "$tf" - "bpcp broadcast of 64 MiB" "$sf" "" "" ""
row "floor: $NODES reads of the 64 MiB image from the page cache" "$df" - "bpcp broadcast of 64 MiB" "$sf" "" "" ""
ff=$(awk -v r="$rf" -v t="$tf" -v d="$df" 'BEGIN {printf "%.3f", r + t - d}')
row "floor of the 64 MiB fork: restores + transport - reads" "$ff" - "bpcp broadcast of 64 MiB" "$sf" "ratio ≤ 1.5 possible" "$(ratio "$ff" "$sf")" 1.5
