#!/usr/bin/env bash
# Network boot benchmark: how long a machine takes from QEMU's start to `up` (iPXE's DHCP,
# the boot script, kernel and initramfs over HTTP, Linux, the node's own DHCP, bpslave joining
# the master), over RUNS runs of `bpcluster up --vm NODES` (the machines boot at once, under
# software emulation: -accel tcg). Prints a markdown table of medians per node, with the
# kernel and initramfs download times from the boot server's log.
#
#   bench/vmboot.sh                     # 2 machines, 5 runs
#   NODES=4 RUNS=3 bench/vmboot.sh
#
# Needs root, QEMU (qemu-system-x86), busybox-static, and the guest kernel, which
# scripts/vm-kernel.sh fetches from the Debian package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
NODES=${NODES:-2}
if [ "$(id -u)" != 0 ]; then
    echo "vmboot.sh: needs root (network namespace, bridge, tap devices)" >&2
    exit 1
fi
KERNEL=$PWD/$(bash scripts/vm-kernel.sh)
cargo build --release --quiet -p bproc-bins
B=$PWD/target/release
DIR=$(mktemp -d /tmp/bproc-vmboot.XXXXXX)
trap '"$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.1f", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; else print "-"}'; }

for _ in $(seq "$RUNS"); do
    "$B/bpcluster" up --vm "$NODES" --kernel "$KERNEL" --dir "$DIR/c" >/dev/null 2>"$DIR/up.err" ||
        { cat "$DIR/up.err" >&2; exit 1; }
    sed -n 's/^bpcluster: node \([0-9]*\) up \([0-9.]*\) s after.*/\1 \2/p' "$DIR/up.err" >>"$DIR/up"
    log=$DIR/c/log/beoserv.log
    sed -n 's/.*node \([0-9]*\) fetched the kernel ([0-9]* bytes in \([0-9.]*\) s).*/\1 \2/p' "$log" >>"$DIR/kernel"
    sed -n 's/.*node \([0-9]*\) fetched the initramfs ([0-9]* bytes in \([0-9.]*\) s).*/\1 \2/p' "$log" >>"$DIR/initrd"
    "$B/bpcluster" down --dir "$DIR/c" >/dev/null 2>&1
done

of() { awk -v n="$2" '$1 == n || n == "all" {print $2}' "$DIR/$1" | median; }
echo "## bproc network boot benchmark"
echo
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), host kernel $(uname -r), guest kernel ${KERNEL##*/vmlinuz-},"
echo "$NODES machines booting at once (QEMU TCG), $RUNS runs, medians in seconds."
echo
echo "| node | QEMU start to up | kernel download | initramfs download |"
echo "|---:|---:|---:|---:|"
for n in $(seq 0 $((NODES - 1))) all; do
    echo "| $n | $(of up "$n") | $(of kernel "$n") | $(of initrd "$n") |"
done
