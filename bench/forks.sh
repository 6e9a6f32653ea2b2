#!/usr/bin/env bash
# Fork benchmark: what following every fork on a node costs, and how soon a forked
# process's ghost ends after it. Three slave modes, each a virtual cluster of its own:
#  - off:    no process events, no pid steering (BPROC_NO_PROCEVENTS, BPROC_NO_FORK_PIDS):
#            forks are seen only by looking at /proc (50 ms after a start, then less often),
#            so a short fork gets no ghost; the cost of a node without fork tracking;
#  - events: every fork followed through the kernel's process events, children keep the
#            kernel's pids (BPROC_NO_FORK_PIDS);
#  - on:     the default: events, and every fork held until its ghost is forked, so the child
#            takes the ghost's pid.
# Measured:
#  - ghost-end latency: from a forked child's exit on node 1 to its ghost's exit on the front
#    end, both from the kernel's process events (bench/lib/ghostend.py), FORKS children one
#    after the other, each ending at once with a code of its own; with the share of children
#    whose pid was their ghost's;
#  - CPU per fork: the master, every slave (with the processes they reaped: the job) and bpsh
#    with its ghosts, over a job of FORKS forks of /bin/true, divided by FORKS;
#  - a fork-heavy script: 50 dash shells of `true | true | true; true & true & wait` one
#    after the other on node 1, the whole bpsh timed by hyperfine (RUNS runs) in each mode;
#    the shells' children end while their next forks are held, which has the kernel start
#    those forks over;
#  - `bpsh -a true` at SIZE nodes in each mode (hyperfine, RUNS runs).
#
#   bench/forks.sh                 # FORKS=200 SIZE=1024 RUNS=11
#   SIZE=64 RUNS=5 bench/forks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FORKS=${FORKS:-200}
SIZE=${SIZE:-1024}
RUNS=${RUNS:-11}
[ "$FORKS" -le 255 ] || { echo "FORKS must be at most 255 (one exit code each)" >&2; exit 2; }
if ! command -v hyperfine >/dev/null; then
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null
fi
cargo build --release --quiet -p bproc-bins
B=$PWD/target/release
DIR=$(mktemp -d /tmp/bproc-bench.XXXXXX)
down() { "$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; }
trap 'down; rm -rf "$DIR"' EXIT
export BPROC_SOCKET=$DIR/c/master.sock
mode_env() {
    case $1 in
    off) echo "BPROC_NO_PROCEVENTS=1 BPROC_NO_FORK_PIDS=1" ;;
    events) echo "BPROC_NO_FORK_PIDS=1" ;;
    *) echo "BPROC_BENCH_MODE=on" ;;
    esac
}
# shellcheck disable=SC2046
up() { env $(mode_env "$1") "$B/bpcluster" up -n "$2" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" || { cat "$DIR/up.err" >&2; exit 1; }; }
# utime + stime (+ cutime + cstime with "all") of the cluster's daemons, in clock ticks.
daemon_ticks() {
    local with_children=$1 sum=0 pid t
    for pid in $(awk '{print $2}' "$DIR/c/pids"); do
        t=$(awk -v c="$with_children" '{sub(/.*\) /, ""); print $12 + $13 + (c ? $14 + $15 : 0)}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}
# CPU seconds of a command and every process it reaped (bpsh and its ghosts).
children_cpu() { python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$@"; }

LOOP='echo $$; sleep 1; i=1; while [ $i -le '$FORKS' ]; do sh -c "echo \$\$ $i; exit $i"; i=$((i+1)); done; exec sleep 1'
TRUE_LOOP='i=0; while [ $i -lt '$FORKS' ]; do /bin/true; i=$((i+1)); done'
# A shell that cannot fork says so and the next one goes on: the time is the measure here.
PIPES='i=0; while [ $i -lt 50 ]; do dash -c "true | true | true; true & true & wait" 2>/dev/null || :; i=$((i+1)); done'
HZ=$(getconf CLK_TCK)
declare -A LAT CPU SH
for mode in off events on; do
    up "$mode" 2
    if [ "$mode" != off ]; then
        LAT[$mode]=$(python3 bench/lib/ghostend.py "$B/bpsh" 1 sh -c "$LOOP")
    fi
    d0=$(daemon_ticks 1)
    front=$(children_cpu "$B/bpsh" 1 sh -c "$TRUE_LOOP")
    sleep 1 # the last ghosts end, the slaves reap
    d1=$(daemon_ticks 1)
    CPU[$mode]=$(awk -v d=$((d1 - d0)) -v hz="$HZ" -v f="$front" -v n="$FORKS" 'BEGIN {printf "%.0f", (d / hz + f) * 1e6 / n}')
    hyperfine -N --style none --warmup 1 --runs "$RUNS" --export-json "$DIR/hf.json" \
        "$B/bpsh 1 sh -c '$PIPES'" >/dev/null 2>"$DIR/hf.err" || { cat "$DIR/hf.err" >&2; exit 1; }
    SH[$mode]=$(python3 bench/lib/hf.py "$DIR/hf.json")
    down
done

echo "## fork benchmark"
echo
echo "$(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), kernel $(uname -r); $FORKS forks a run, release build."
echo
echo "| ghost-end latency, node exit to ghost exit | pairs | median (ms) | max (ms) | exact statuses | child pid = ghost pid | target |"
echo "|---|---:|---:|---:|---:|---:|---|"
for mode in events on; do
    read -r pairs med max statuses pids <<<"${LAT[$mode]}"
    printf "| %s | %s | %s | %s | %s | %s | ≤ 10 ms |\n" "$mode" "$pairs" "$med" "$max" "$statuses" "$pids"
done
echo
echo "| CPU per fork (µs: master, slaves and the job, bpsh and ghosts) | off | events | on |"
echo "|---|---:|---:|---:|"
echo "| fork + exec + exit of /bin/true | ${CPU[off]} | ${CPU[events]} | ${CPU[on]} |"
echo
echo "| 50 shells of \`true \| true \| true; true & true & wait\` on a node ($RUNS runs) | median (ms) | min–max (ms) | ratio to off |"
echo "|---|---:|---:|---:|"
for mode in off events on; do
    read -r med min max <<<"${SH[$mode]}"
    read -r off _ <<<"${SH[off]}"
    printf "| %s | %.0f | %.0f–%.0f | %.2f |\n" "$mode" "$med" "$min" "$max" "$(awk -v a="$med" -v b="$off" 'BEGIN {print a / b}')"
done

if [ "$SIZE" -gt 0 ]; then
    declare -A HF
    for mode in off events on; do
        up "$mode" "$SIZE"
        hyperfine -N --style none --warmup 2 --runs "$RUNS" --export-json "$DIR/hf.json" \
            "$B/bpsh -a true" >/dev/null 2>"$DIR/hf.err" || { cat "$DIR/hf.err" >&2; exit 1; }
        HF[$mode]=$(python3 bench/lib/hf.py "$DIR/hf.json")
        down
    done
    echo
    echo "| \`bpsh -a true\`, $SIZE nodes ($RUNS runs) | median (ms) | min–max (ms) |"
    echo "|---|---:|---:|"
    for mode in off events on; do
        read -r med min max <<<"${HF[$mode]}"
        printf "| %s | %.1f | %.1f–%.1f |\n" "$mode" "$med" "$min" "$max"
    done
fi
