# shellcheck shell=bash
# quiet [SECS]: waits (at most SECS, default 120) until the machine is idle, at least 90% of
# its cores' time over one second, so that a benchmark does not share the cores with what
# came before it: the kernel frees a stopped cluster's namespaces for a while after its
# processes have ended (a 1024-node cluster's for a minute or more), which slowed the first
# rows of a benchmark run just after another by a third.
quiet() {
    local max=${1:-120} i j a b total idle
    for ((i = 0; i < max; i++)); do
        read -r -a a < <(head -1 /proc/stat)
        sleep 1
        read -r -a b < <(head -1 /proc/stat)
        total=0
        for j in 1 2 3 4 5 6 7 8; do total=$((total + b[j] - a[j])); done
        idle=$((b[4] - a[4] + b[5] - a[5]))
        if [ "$total" -gt 0 ] && [ $((idle * 100 / total)) -ge 90 ]; then
            return 0
        fi
    done
    echo "the machine stayed busy for $max s; measuring anyway" >&2
}
