# shellcheck shell=bash
# rounds DIR N [hyperfine options] CMD... -> "median min max" in ms for each command, a line
# each: one untimed round, then N rounds of one run of every command in turn (whole processes
# timed by hyperfine), pooled per command. Taking the commands in turn puts the machine's
# drift (on this virtual machine, how fast it hands out fresh memory) on all of them alike,
# where N runs of one command and then N of the next would give each its own stretch of it.
rounds() {
    local dir=$1 n=$2 i
    shift 2
    rm -f "$dir"/round.*.json
    for i in $(seq 0 "$n"); do
        hyperfine --style none --runs 1 --export-json "$dir/round.$i.json" "$@" >/dev/null 2>"$dir/hf.err" ||
            { cat "$dir/hf.err" >&2; return 1; }
    done
    rm -f "$dir/round.0.json"
    python3 bench/lib/hf.py --merge "$dir"/round.*.json
}
