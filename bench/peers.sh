#!/usr/bin/env bash
# bpsh against pdsh and ClusterShell over ssh, at the same node counts, in one run.
#
#   bench/peers.sh                 # N = 8 64; 5 runs each
#   SIZES="8 64 256" RUNS=3 bench/peers.sh
#
# Uses the project's peer set-up (shared/bench/peers-setup.sh, run here if needed): sshd in a
# loopback-only network namespace answering on every 127.x address. Everything below runs
# inside that namespace: a virtual cluster for bpsh (nodes 127.0.1.0...) and ssh "nodes"
# 127.0.1.1... for pdsh and clush. Prints a markdown table of hyperfine medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"8 64"}
RUNS=${RUNS:-5}
NS=${PEERS_NS:-bprocpeers}
STATE=${PEERS_STATE:-/tmp/bproc-peers}
SETUP=$(cd ../shared/bench 2>/dev/null && pwd)/peers-setup.sh
if [ "$(ip netns identify $$ 2>/dev/null)" != "$NS" ]; then
    [ -f "$SETUP" ] || { echo "peers.sh: $SETUP not found" >&2; exit 2; }
    bash "$SETUP" status >/dev/null 2>&1 || bash "$SETUP" >/dev/null
    cargo build --release --quiet -p bproc-bins
    exec ip netns exec "$NS" bash "$0" "$@"
fi
B=$PWD/target/release
CFG=$STATE/ssh_config
CFG_MUX=$STATE/ssh_config_mux   # the same, through ControlMaster sockets in $STATE/cm
DIR=$(mktemp -d /tmp/bproc-peers-bench.XXXXXX)
close_masters() {
    for h in $(seq -f "127.0.1.%g" 1 "$max"); do ssh -F "$CFG_MUX" -O exit "$h" >/dev/null 2>&1 || true; done
}
trap 'close_masters; "$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
max=0
for n in $SIZES; do [ "$n" -gt "$max" ] && max=$n; done
"$B/bpcluster" up -n "$max" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" || { cat "$DIR/up.err" >&2; exit 1; }
export BPROC_SOCKET=$DIR/c/master.sock

median_ms() { python3 -c "import json,sys; print('%.1f' % (json.load(open(sys.argv[1]))['results'][0]['median']*1000))" "$1"; }
time_cmd() { # name runs command -> median ms
    hyperfine --shell sh --runs "$2" --warmup 1 --export-json "$DIR/$1.json" "$3" >/dev/null 2>&1 || { echo "FAILED: $3" >&2; echo nan; return; }
    median_ms "$DIR/$1.json"
}

echo "## bpsh against pdsh and clush over ssh"
echo
echo "$(nproc) cores, $(uname -r), $(ssh -V 2>&1 | cut -d, -f1), pdsh $(pdsh -V 2>&1 | head -1 | awk '{print $1}' | cut -d- -f2), clush $(clush --version 2>&1 | awk '{print $2}'); hyperfine medians of $RUNS runs."
echo
echo "| nodes | bpsh (ms) | pdsh -R ssh -f N (ms) | clush -f N (ms) | pdsh, open connections (ms) | pdsh / bpsh | clush / bpsh | pdsh open / bpsh |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $SIZES; do
    list=$(seq -s, -f "127.0.1.%g" 1 "$n")
    b=$(time_cmd "bpsh$n" "$RUNS" "$B/bpsh 0-$((n - 1)) true")
    p=$(time_cmd "pdsh$n" "$RUNS" "PDSH_SSH_ARGS_APPEND='-F $CFG' pdsh -R ssh -f $n -w $list true")
    c=$(time_cmd "clush$n" "$RUNS" "clush -o '-F $CFG' -f $n -w $list true")
    # ssh connections opened beforehand and kept (ControlMaster): the fastest pdsh can be.
    mkdir -p "$STATE/cm"
    for h in $(seq -f "127.0.1.%g" 1 "$n"); do
        ssh -F "$CFG" -o ControlMaster=yes -o "ControlPath=$STATE/cm/%h" -o ControlPersist=yes -fN "$h"
    done
    m=$(time_cmd "mux$n" "$RUNS" "PDSH_SSH_ARGS_APPEND='-F $CFG_MUX' pdsh -R ssh -f $n -w $list true")
    close_masters
    printf "| %d | %s | %s | %s | %s | %.0f× | %.0f× | %.1f× |\n" "$n" "$b" "$p" "$c" "$m" \
        "$(python3 -c "print($p/$b)")" "$(python3 -c "print($c/$b)")" "$(python3 -c "print($m/$b)")"
done
