#!/usr/bin/env bash
# Checkpoint/restore benchmark, on one machine (no cluster): the time to dump a process to a
# file at a call point and to restore it in a new process, for a small process and for one
# holding 64 MiB. The baseline, in the same run, is the time to copy the image file itself
# (cp: read and write the same bytes through the page cache), so the ratio is what the dump
# and restore add to moving those bytes. Each restored copy checks its memory.
#
#   bench/ckpt.sh              # medians of 7 runs
#   RUNS=3 bench/ckpt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
cargo build --release --quiet -p bproc-ckpt --examples
B=$PWD/target/release/examples
DIR=$(mktemp -d /var/tmp/bproc-ckpt-bench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
echo 0123456789 >"$DIR/data"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

printf '%-10s %10s %12s %12s %12s %10s %10s\n' memory image dump_ms restore_ms copy_ms dump/cp rest/cp
for mib in 0 64; do
    : >"$DIR/dump" && : >"$DIR/restore" && : >"$DIR/copy"
    for _ in $(seq "$RUNS"); do
        "$B/ckpt_demo" "$DIR/img" "$mib" "$DIR/data" 2>&1 >/dev/null | awk '/^dump_ms/ {print $2}' >>"$DIR/dump"
        out=$("$B/ckpt_restore" "$DIR/img" 2>"$DIR/err" || true)
        grep -q '^memory: ok' <<<"$out" || { echo "restore failed: $out $(cat "$DIR/err")" >&2; exit 1; }
        awk '/^restore_ms/ {print $2}' "$DIR/err" >>"$DIR/restore"
        t0=$(date +%s%N)
        cp "$DIR/img" "$DIR/copy.img"
        t1=$(date +%s%N)
        echo "scale=3; ($t1 - $t0) / 1000000" | bc >>"$DIR/copy"
        rm -f "$DIR/copy.img"
    done
    d=$(median <"$DIR/dump") r=$(median <"$DIR/restore") c=$(median <"$DIR/copy")
    size=$(stat -c %s "$DIR/img")
    printf '%-10s %9sK %12s %12s %12s %10s %10s\n' "${mib} MiB" $((size / 1024)) "$d" "$r" "$c" \
        "$(echo "scale=1; $d / $c" | bc)" "$(echo "scale=1; $r / $c" | bc)"
done
