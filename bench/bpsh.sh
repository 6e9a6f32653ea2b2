#!/usr/bin/env bash
# bpsh launch benchmark, whole processes timed by hyperfine (no shell, no wrapper process in
# the measured time), each against a baseline timed the same way in the same run, taken in
# turn with it (bench/lib/rounds.sh):
#  - `bpsh 0 true` against `/bin/true`, and the floor of any launcher that starts a program
#    and waits for it, with no network: `timeout 60 /bin/true` (coreutils forks, executes
#    /bin/true and waits); and the floor of any launch through a node daemon: one bare
#    daemon (bench/lib/daemonfloor.c, below) that a client process asks to start /bin/true;
#  - `bpsh 0-N true` at each size against the spawn floor: N spawns of /bin/true by a tight
#    posix_spawn + wait loop, one per core at a time (bench/lib/spawnloop.c), and beside it
#    the daemon floor: N bare daemons on this machine, each told over an open Unix socket to
#    posix_spawn /bin/true, wait and answer (bench/lib/daemonfloor.c), the least any launch
#    through node daemons sharing one machine costs (no connection made, no tree, no output,
#    no identity or checks), and the ghost floor: the same with a ghost per rank, a process
#    the launcher makes before the launch (sharing its memory, as bpsh's ghosts do) and that
#    ends as its rank's answer comes (`daemonfloor ghosts`), the least a launch that gives
#    every remote process a ghost costs here;
#  - each launch again with its output forwarded to a pipe (hyperfine's default, /dev/null,
#    is where bpsh gives its processes /dev/null too, with no connection for their output);
#  - the daemons started as installed ones run, logging warnings only (`bpcluster up --quiet`);
#    at the largest size, the launch again with them logging at -v's level (bpcluster's
#    default: a line per node for every launch, each a write to a file on this machine);
#  - where the time goes: each launch again with a program that exits at once with no C
#    library (bench/lib/exit0.c), against its own spawn floor, and bpsh's own start-up
#    (`bpsh --version`): what is left is the launch's own work, apart from the started
#    program's start-up (on a virtual machine it can be most of /bin/true's time: see
#    exit0.c);
#  - every baseline timed twice: in turn with the command, with the cluster up, and alone
#    before the cluster starts; each ratio is against the lower of the two, so that nothing
#    the cluster's daemons do to the machine's other processes (an idle virtual cluster's
#    event hub once made each of them start 1.3 times slower) pads a baseline;
#  - the front end's CPU per launched rank (bpsh, its ghosts and bpmaster together: bpsh runs
#    in a cpuacct cgroup of its own, which its ghosts inherit; the master's from /proc), the
#    figure a real cluster's front end cares about (here the slaves share the machine, but
#    their CPU is not counted);
#  - the nodes' CPU per launched rank, where the launch's time above the ghost floor goes on
#    this machine: the node daemons' own (each thread's, from the scheduler, split by thread)
#    and their processes' (a cpuacct cgroup holding the daemons, less the daemons' own), for
#    the slaves and for the daemon floor's bare daemons alike.
# Prints a markdown table with each target and whether it holds.
#
#   bench/bpsh.sh                      # sizes 64 1024, 21 runs (11 at 1024)
#   SIZES="64" RUNS=9 bench/bpsh.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-21}
SIZES=${SIZES:-"64 1024"}
if ! command -v hyperfine >/dev/null; then
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null
fi
cargo build --release --quiet -p bproc-bins
B=$PWD/target/release
DIR=$(mktemp -d /tmp/bproc-bench.XXXXXX)
CG=/sys/fs/cgroup/cpuacct/bproc-bench-$$
cleanup() {
    "$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true
    for sock in "$DIR/df.sock" "$DIR/df1.sock"; do
        [ -S "$sock" ] && { "$DIR/daemonfloor" down "$sock" 2>/dev/null || true; }
    done
    [ -d "$CG" ] && rmdir "$CG" 2>/dev/null
    for cg in "$CG"-nodes-*; do [ -d "$cg" ] && rmdir "$cg" 2>/dev/null; done
    rm -rf "$DIR"
}
trap cleanup EXIT
CORES=$(nproc)
cc -O2 -o "$DIR/spawnloop" bench/lib/spawnloop.c
cc -O2 -o "$DIR/daemonfloor" bench/lib/daemonfloor.c
# Under target/, not the scratch directory in /tmp: each node has a /tmp of its own.
mkdir -p target/bench
cc -static -nostdlib -o target/bench/exit0 bench/lib/exit0.c
E0=$PWD/target/bench/exit0
export BPROC_SOCKET=$DIR/c/master.sock
# up N [--quiet]
up() { quiet && "$B/bpcluster" up -n "$@" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" || { cat "$DIR/up.err" >&2; exit 1; }; }
down() { "$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; }
# rounds DIR RUNS CMD... -> "median min max" (ms) of each command, a line each
. bench/lib/rounds.sh
# shellcheck source=bench/lib/quiet.sh
. bench/lib/quiet.sh
quiet
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
lower() { awk -v a="$1" -v b="$2" 'BEGIN {print (a < b) ? a : b}'; }
alone="" # the baselines timed with no cluster running, for the note below the table
holds() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "yes" : "**no**"}'; }
row() { # what, median, min, max, baseline name, baseline median, target text, target ratio (or "")
    printf "| %s | %.2f | %.2f–%.2f | %s %.2f | %s | %s | %s |\n" "$1" "$2" "$3" "$4" "$5" "$6" \
        "$(ratio "$2" "$6")" "$7" "$(if [ -n "$8" ]; then holds "$(ratio "$2" "$6")" "$8"; else echo —; fi)"
}
# Front-end CPU (µs) per rank over K launches of N ranks: bpsh and its ghosts (cgroup) plus
# the master (its threads' CPU, from the scheduler).
# The master's CPU in ns: the sum over its threads (all long-lived) of the scheduler's own
# count, which a clock tick's 10 ms would round away over a few launches (printed whole
# with %.0f: mawk's %d stops at 2^31).
master_ns() {
    local pid
    pid=$(awk '$1 == "master" {print $2}' "$DIR/c/pids")
    cat /proc/"$pid"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'
}
# The same for the master's event hub alone (its thread), which serves the slaves: a real
# cluster's front end has none.
hub_ns() {
    local pid t
    pid=$(awk '$1 == "master" {print $2}' "$DIR/c/pids")
    for t in /proc/"$pid"/task/*; do
        [ "$(cat "$t/comm")" = event-hub ] && cat "$t/schedstat"
    done | awk '{s += $1} END {printf "%.0f", s}'
}
# The CPU (ns) of the threads of processes PIDS..., as "TOTAL MAIN SPAWNER REAPER" (a slave's
# threads by name; a bare daemon's one thread counts as main); one awk over every thread's
# name and scheduler count, in that order.
threads_ns() {
    local p t files=()
    for p in "$@"; do
        for t in /proc/"$p"/task/*; do files+=("$t/comm" "$t/schedstat"); done
    done
    awk 'FILENAME ~ /comm$/ {c = $1; next}
        {s += $1; if (c == "spawner") sp += $1; else if (c == "reaper") r += $1; else if (c == "bpslave" || c == "daemonfloor") m += $1}
        END {printf "%.0f %.0f %.0f %.0f", s, m, sp, r}' "${files[@]}" 2>/dev/null
}
# Node-side CPU (µs) per rank over K launches of N ranks by CMD..., with the node daemons
# PIDS (a space-separated list) moved into a cpuacct cgroup of their own (NAME), which their
# processes inherit: "DAEMONS MAIN SPAWNER REAPER PROCESSES".
node_cpu() {
    local n=$1 k=$2 name=$3 pids=$4 cg p u0 u1 s0 s1
    shift 4
    cg=$CG-nodes-$name
    mkdir -p "$cg"
    for p in $pids; do echo "$p" >"$cg/cgroup.procs"; done
    "$@" >/dev/null 2>&1
    read -r -a s0 <<<"$(threads_ns $pids)"
    u0=$(cat "$cg/cpuacct.usage")
    for _ in $(seq "$k"); do "$@" >/dev/null 2>&1; done
    u1=$(cat "$cg/cpuacct.usage")
    read -r -a s1 <<<"$(threads_ns $pids)"
    awk -v r=$((n * k)) -v u=$((u1 - u0)) -v s=$((s1[0] - s0[0])) -v m=$((s1[1] - s0[1])) \
        -v sp=$((s1[2] - s0[2])) -v re=$((s1[3] - s0[3])) \
        'BEGIN {printf "%.1f %.1f %.1f %.1f %.1f", s / 1000 / r, m / 1000 / r, sp / 1000 / r, re / 1000 / r, (u - s) / 1000 / r}'
}
# With OUT "pipe" bpsh's stdout and stderr are a pipe (its processes' output forwarded),
# else /dev/null.
cpu_per_rank() {
    local n=$1 k=$2 out=$3 m0 m1 c0 c1 h0 h1
    mkdir -p "$CG"
    h0=$(hub_ns)
    m0=$(master_ns)
    c0=$(cat "$CG/cpuacct.usage")
    for _ in $(seq "$k"); do
        if [ "$out" = pipe ]; then
            sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" \
                "$B/bpsh" "0-$((n - 1))" true 2>&1 | cat >/dev/null
        else
            sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" \
                "$B/bpsh" "0-$((n - 1))" true >/dev/null 2>&1
        fi
    done
    c1=$(cat "$CG/cpuacct.usage")
    m1=$(master_ns)
    h1=$(hub_ns)
    awk -v c=$((c1 - c0)) -v m=$((m1 - m0)) -v h=$((h1 - h0)) -v r=$((n * k)) \
        'BEGIN {printf "%.1f µs, of which the event hub %.1f", (c + m) / 1000 / r, h / 1000 / r}'
}

echo "## bpsh launch benchmark"
echo
echo "$CORES cores, kernel $(uname -r); hyperfine $(hyperfine --version | cut -d' ' -f2), whole processes, no shell; times in ms, median and min–max of $RUNS rounds (fewer at 1024 nodes), each round one run of a command and one of its baseline."
echo
echo "| what | median | min–max | baseline (median) | ratio | target | holds |"
echo "|---|---:|---:|---|---:|---|---|"
# A single launch on a small cluster: on a real cluster the front end does not also host a
# thousand slave daemons.
# One bare daemon: a client process (the floor program itself) connects, asks it to start
# /bin/true, and waits for its answer.
"$DIR/daemonfloor" up 1 "$DIR/df1.sock" /bin/true >/dev/null
D1="$DIR/daemonfloor launch $DIR/df1.sock"
G1="$DIR/daemonfloor ghosts $DIR/df1.sock"
read -r tm _ _ tfm _ _ te _ _ tdm tdlo tdhi tgm tglo tghi <<<"$(rounds "$DIR" "$RUNS" -N "/bin/true" \
    "timeout 60 /bin/true" "$E0" "$D1" "$G1" | tr '\n' ' ')"
up 8 --quiet
read -r m lo hi bm _ _ fm flo fhi dm dlo dhi gm glo ghi <<<"$(rounds "$DIR" "$RUNS" -N "$B/bpsh 0 true" \
    "/bin/true" "timeout 60 /bin/true" "$D1" "$G1" | tr '\n' ' ')"
"$DIR/daemonfloor" down "$DIR/df1.sock"
rm -f "$DIR/df1.sock"
sm1=$m
alone+="/bin/true $tm ms (in turn with bpsh: $bm), \`timeout 60 /bin/true\` $tfm ms (in turn: $fm)"
alone+=", one bare daemon $tdm ms (in turn: $dm), with a ghost $tgm ms (in turn: $gm)"
bm=$(lower "$bm" "$tm")
# A floor's row shows whichever timing is lower, with its own spread.
if awk -v a="$tdm" -v b="$dm" 'BEGIN {exit !(a < b)}'; then dm=$tdm dlo=$tdlo dhi=$tdhi; fi
if awk -v a="$tgm" -v b="$gm" 'BEGIN {exit !(a < b)}'; then gm=$tgm glo=$tglo ghi=$tghi; fi
row "bpsh 0 true" "$m" "$lo" "$hi" "/bin/true" "$bm" "≤ 2× /bin/true" 2
row "floor: timeout 60 /bin/true (a local launcher)" "$fm" "$flo" "$fhi" "/bin/true" "$bm" "—" ""
row "floor: a bare daemon starts /bin/true for a client (daemonfloor, 1 node)" "$dm" "$dlo" "$dhi" "/bin/true" "$bm" "—" ""
row "floor: the same with a ghost (daemonfloor ghosts, 1 node)" "$gm" "$glo" "$ghi" "/bin/true" "$bm" "—" ""
# hyperfine sends output to /dev/null, where bpsh gives its processes /dev/null too: the same
# launch with its output forwarded (a pipe, which hyperfine reads and drops).
read -r m lo hi pm _ _ <<<"$(rounds "$DIR" "$RUNS" -N --output=pipe "$B/bpsh 0 true" "/bin/true" | tr '\n' ' ')"
row "bpsh 0 true, output forwarded to a pipe" "$m" "$lo" "$hi" "/bin/true" "$(lower "$pm" "$tm")" "—" ""
# Where the single launch's time goes: bpsh's own start-up, the program's, and the rest.
read -r m lo hi em _ _ vm vlo vhi tm2 _ _ <<<"$(rounds "$DIR" "$RUNS" -N "$B/bpsh 0 $E0" "$E0" \
    "$B/bpsh --version" "/bin/true" | tr '\n' ' ')"
alone+=", exit0 $te ms (in turn: $em)"
em=$(lower "$em" "$te")
row "bpsh 0 exit0 (a program with no C library)" "$m" "$lo" "$hi" "exit0" "$em" "—" ""
row "bpsh --version (bpsh's own start-up)" "$vm" "$vlo" "$vhi" "/bin/true" "$(lower "$tm2" "$tm")" "—" ""
where=$(awk -v s="$sm1" -v v="$vm" -v t="$(lower "$tm2" "$tm")" -v e="$em" -v x="$m" 'BEGIN {
    printf "bpsh 0 true %.2f ms: bpsh'"'"'s own start-up %.2f, /bin/true %.2f (of which its C library'"'"'s start-up %.2f, against exit0'"'"'s %.2f), the launch itself (connections, master, node daemon, ghost) %.2f, as bpsh 0 exit0 less bpsh'"'"'s start-up and exit0 gives %.2f",
        s, v, t, t - e, e, s - v - t, x - v - e }')
down
cpu=""
nodes=""
own=""
# Each size on a cluster of its size: on a virtual cluster every process event on the
# machine passes through every slave's filter, so a bigger cluster would slow a smaller
# launch (and add to the front end's CPU) where a real one would not.
for n in $SIZES; do
    runs=$RUNS
    [ "$n" -ge 512 ] && runs=$(( RUNS < 11 ? RUNS : 11 ))
    dfm=$("$DIR/daemonfloor" up "$n" "$DIR/df.sock" /bin/true)
    read -r sm _ _ sdm sdlo sdhi sgm sglo sghi se _ _ <<<"$(rounds "$DIR" "$runs" -N \
        "$DIR/spawnloop $n $CORES /bin/true" "$DIR/daemonfloor launch $DIR/df.sock" \
        "$DIR/daemonfloor ghosts $DIR/df.sock" "$DIR/spawnloop $n $CORES $E0" | tr '\n' ' ')"
    up "$n" --quiet
    read -r m lo hi bm _ _ dm dlo dhi gm glo ghi <<<"$(rounds "$DIR" "$runs" -N \
        "$B/bpsh 0-$((n - 1)) true" "$DIR/spawnloop $n $CORES /bin/true" \
        "$DIR/daemonfloor launch $DIR/df.sock" "$DIR/daemonfloor ghosts $DIR/df.sock" | tr '\n' ' ')"
    k=$((n >= 1024 ? 5 : 20))
    read -r -a nc <<<"$(node_cpu "$n" "$k" "slaves-$n" "$(awk '$1 != "master" {print $2}' "$DIR/c/pids")" \
        "$B/bpsh" "0-$((n - 1))" true)"
    read -r -a fc <<<"$(node_cpu "$n" "$k" "floor-$n" "$(cat /proc/"$dfm"/task/"$dfm"/children)" \
        "$DIR/daemonfloor" launch "$DIR/df.sock")"
    nodes+="| $n nodes | ${nc[0]} (main ${nc[1]}, spawner ${nc[2]}, reaper ${nc[3]}) | ${nc[4]} | ${fc[0]} | ${fc[4]} |"$'\n'
    "$DIR/daemonfloor" down "$DIR/df.sock"
    rm -f "$DIR/df.sock"
    alone+="; spawn floor at $n $sm ms (in turn with bpsh: $bm), daemon floor $sdm ms (in turn: $dm), ghost floor $sgm ms (in turn: $gm)"
    bm=$(lower "$bm" "$sm")
    # Each daemon floor's row shows whichever timing is lower, with its own spread.
    if awk -v a="$sdm" -v b="$dm" 'BEGIN {exit !(a < b)}'; then dm=$sdm dlo=$sdlo dhi=$sdhi; fi
    if awk -v a="$sgm" -v b="$gm" 'BEGIN {exit !(a < b)}'; then gm=$sgm glo=$sglo ghi=$sghi; fi
    if [ "$n" = 1024 ]; then
        row "bpsh -a true, $n nodes" "$m" "$lo" "$hi" "spawn floor" "$bm" "≤ 600 ms (≈ 1.3× floor)" 1.3
    else
        row "bpsh -a true, $n nodes" "$m" "$lo" "$hi" "spawn floor" "$bm" "—" ""
    fi
    row "floor: $n bare daemons spawn /bin/true (daemonfloor)" "$dm" "$dlo" "$dhi" "spawn floor" "$bm" "—" ""
    row "floor: the same, a ghost per rank (daemonfloor ghosts)" "$gm" "$glo" "$ghi" "spawn floor" "$bm" "—" ""
    read -r m lo hi pm _ _ <<<"$(rounds "$DIR" "$runs" -N --output=pipe "$B/bpsh 0-$((n - 1)) true" \
        "$DIR/spawnloop $n $CORES /bin/true" | tr '\n' ' ')"
    row "bpsh -a true, $n nodes, output forwarded to a pipe" "$m" "$lo" "$hi" "spawn floor" "$(lower "$pm" "$sm")" "—" ""
    # One node of this cluster: bpsh asks the master for that node's entry, not the table.
    read -r m lo hi sb _ _ <<<"$(rounds "$DIR" "$RUNS" -N "$B/bpsh 0 true" "/bin/true" | tr '\n' ' ')"
    row "bpsh 0 true, on the $n-node cluster" "$m" "$lo" "$hi" "/bin/true" "$(lower "$sb" "$tm")" "—" ""
    # The launch apart from the program's start-up: exit0 on every node, against its floor.
    read -r m lo hi eb _ _ <<<"$(rounds "$DIR" "$runs" -N "$B/bpsh 0-$((n - 1)) $E0" \
        "$DIR/spawnloop $n $CORES $E0" | tr '\n' ' ')"
    alone+="; exit0's spawn floor at $n $se ms (in turn: $eb)"
    eb=$(lower "$eb" "$se")
    row "bpsh -a exit0 (no C library), $n nodes" "$m" "$lo" "$hi" "its spawn floor" "$eb" "—" ""
    own+="; at $n nodes $(awk -v m="$m" -v e="$eb" -v n="$n" \
        'BEGIN {printf "%.1f ms (%.0f µs a rank)", m - e, (m - e) * 1000 / n}')"
    cpu+="| front-end CPU per rank, $n nodes, output to /dev/null | $(cpu_per_rank "$n" $k null) | bpsh, its ghosts and bpmaster (with its event hub, also given alone) |"$'\n'
    cpu+="| front-end CPU per rank, $n nodes, output forwarded | $(cpu_per_rank "$n" $k pipe) | bpsh, its ghosts and bpmaster (with its event hub, also given alone) |"$'\n'
    down
    last=$n
done
# The largest launch again, its daemons logging at -v's level.
up "$last"
read -r m lo hi vm _ _ <<<"$(rounds "$DIR" "$runs" -N "$B/bpsh 0-$((last - 1)) true" \
    "$DIR/spawnloop $last $CORES /bin/true" | tr '\n' ' ')"
row "bpsh -a true, $last nodes, daemons logging at -v's level" "$m" "$lo" "$hi" "spawn floor" "$(lower "$vm" "$sm")" "—" ""
down
echo
echo "Baselines timed alone, before the cluster started (each ratio is against the lower of the two): $alone."
echo
echo "A remote launch, too, starts a launcher and a program, one after the other, and waits for the program: where the floor's ratio is near 2 or above, no remote launch can take under 2× /bin/true here. The daemon floor is the least a launch through node daemons that share this machine costs, and the ghost floor the least such a launch costs with a ghost for each remote process: between the ghost floor's ratio and a target's lies all that a real launch may spend on everything else (connections, the tree, reports, output, identity)."
echo
echo "Where the time goes: $where. A launch's own time, apart from the program's start-up (bpsh -a exit0 less exit0's spawn floor):${own#;}."
echo
echo "| front end | CPU | counted |"
echo "|---|---:|---|"
printf "%s" "$cpu"
echo
echo "Node side, CPU per launched rank in µs (bpsh -a true to /dev/null; the daemon floor's launch):"
echo
echo "| size | slaves' own (by thread) | their processes | bare daemons' own | their processes |"
echo "|---|---:|---:|---:|---:|"
printf "%s" "$nodes"
echo
echo "A launch that keeps every core busy takes about all its CPU (the nodes', the front end's, their processes') over the number of cores: the slaves' own less the bare daemons' own, times the ranks, over the cores, is the time the node side adds above the daemon floor."
echo
echo "On a virtual cluster the slaves share one subscription to the machine's process events (the master's hub), which the kernel filters to the cluster's processes: the machine's other processes (the baselines among them) wake neither the hub nor a slave. The hub's thread works for the slaves (a real cluster's front end has none): its share is given beside each figure."
