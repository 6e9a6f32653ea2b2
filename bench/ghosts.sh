#!/usr/bin/env bash
# Ghost benchmark: what a ghost costs on the front end. Creates N ghosts the two ways
# launchers do (one exec of bpghost, or, as bpsh does, a fork of the launcher; the rest light
# tasks sharing that first ghost's address space), connected to a
# running bpmaster, and measures the time per ghost and its memory: user memory (PSS, from
# smaps_rollup, each address space counted once) and kernel memory (the growth of Slab +
# KernelStack + PageTables in /proc/meminfo, which includes the master's end of each
# connection). The baseline, in the same run, is N `sleep` processes started one by one with
# fork and exec.
#
#   bench/ghosts.sh            # N=1000, medians of 5 rounds
#   N=200 RUNS=3 bench/ghosts.sh
#   N=20000 RUNS=1 bench/ghosts.sh   # the 20,000 live ghosts of the target (about 5 GiB, most of it the baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
RUNS=${RUNS:-5}
cargo build --release --quiet -p bproc-bins
cargo build --release --quiet -p bproc-ghost --example fork_ghosts
B=$PWD/target/release
DIR=$(mktemp -d /tmp/bproc-bench.XXXXXX)
trap '"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
"$B/bpcluster" up -n 1 --dir "$DIR/c" >/dev/null
export BPROC_SOCKET=$DIR/c/master.sock

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
kernel_kib() { awk '/^(Slab|KernelStack|PageTables):/ {s += $2} END {print s}' /proc/meminfo; }
# Each address space once: the ghosts of one launch share one (bench/lib/pss.py).
pss_kib() { python3 bench/lib/pss.py "$@"; }

# One round: creates N processes with "$@" (which prints their pids), measures, kills them.
# Prints: microseconds per process, user KiB per process, kernel KiB per process.
round() {
    local k0 t0 t1 k1 pids
    sync; k0=$(kernel_kib)
    t0=$(date +%s%N)
    pids=$("$@")
    t1=$(date +%s%N)
    sleep 0.5 # let ghosts connect, so their sockets count
    k1=$(kernel_kib)
    # shellcheck disable=SC2086
    echo "$(( (t1 - t0) / 1000 / N )) $(( $(pss_kib $pids) / N )) $(( (k1 - k0) / N ))"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    wait 2>/dev/null || true
    # Until every one is gone and reaped (orphans are reaped by init), so that the next round
    # has the pids back and never waits for a fork to be retried.
    local i
    for i in $(seq 600); do
        # shellcheck disable=SC2086
        kill -0 $pids 2>/dev/null || break
        sleep 0.1
    done
}
# The first ghost stays running, so its pid list is read through a FIFO until every ghost
# has let go of it.
mkfifo "$DIR/fifo"
# Its lines are `INDEX PID`: the pids only (an index of 0 given to kill would be our group).
ghosts() { BPROC_GHOST_COUNT=$N "$B/bpghost" >"$DIR/fifo" & awk '{print $2}' "$DIR/fifo"; }
# It stays to reap its ghosts (their parent), as the launcher does.
forked() { "$B/examples/fork_ghosts" "$N" "$B/bpghost" >"$DIR/fifo" & awk '{print $2}' "$DIR/fifo"; }
sleeps() { local i; for i in $(seq "$N"); do sleep 1000 >/dev/null & echo $!; done; }
ghost_rounds=$(for _ in $(seq "$RUNS"); do round ghosts; done)
forked_rounds=$(for _ in $(seq "$RUNS"); do round forked; done)
sleep_rounds=$(for _ in $(seq "$RUNS"); do round sleeps; done)
col() { awk -v c="$1" '{print $c}' | median; }

g_us=$(col 1 <<<"$ghost_rounds"); g_pss=$(col 2 <<<"$ghost_rounds"); g_k=$(col 3 <<<"$ghost_rounds")
f_us=$(col 1 <<<"$forked_rounds"); f_pss=$(col 2 <<<"$forked_rounds"); f_k=$(col 3 <<<"$forked_rounds")
s_us=$(col 1 <<<"$sleep_rounds"); s_pss=$(col 2 <<<"$sleep_rounds"); s_k=$(col 3 <<<"$sleep_rounds")
echo "## ghost benchmark"
echo
echo "$(nproc) cores, kernel $(uname -r); $N processes per round, medians of $RUNS rounds; baseline: $N \`sleep\` processes started by fork and exec."
echo
holds() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "yes" : "**no**"}'; }
rel() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b ? a/b : 0)}'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN {print (a > b) ? a : b}'; }
# A row: what, bpghost's figure, the forked one, the baseline's, the target (empty: none). The
# ratio and the verdict take the larger of the two ghosts' figures.
row() {
    local worst
    worst=$(max "$2" "$3")
    printf "| %s | %s | %s | %s | %s | %s | %s |\n" "$1" "$2" "$3" "$4" "$(rel "$worst" "$4")" \
        "${5:+≤ $5}" "${5:+$(holds "$worst" "$5")}"
}
echo "| per process, $N live at once | ghost, bpghost | ghost, forked (bpsh) | baseline (sleep) | ratio | target | holds |"
echo "|---|---:|---:|---:|---:|---|---|"
row "creation (µs)" "$g_us" "$f_us" "$s_us" 50
row "user memory, PSS (KiB)" "$g_pss" "$f_pss" "$s_pss"
row "kernel memory (KiB)" "$g_k" "$f_k" "$s_k"
row "total (KiB)" "$((g_pss + g_k))" "$((f_pss + f_k))" "$((s_pss + s_k))" 64
