#!/usr/bin/env bash
# Coverage-guided fuzzing of the bproc-proto decoder: cargo-fuzz + libFuzzer, stable Rust only.
#
# Usage:
#   fuzz/run.sh [SECONDS] [TARGET...]
#     SECONDS  how long to fuzz each target (default 60)
#     TARGET   decode | header_body | copy_stream | image | probe (default: all, one after the other)
#   e.g.  fuzz/run.sh                  # 60 s per target
#         fuzz/run.sh 180              # 3 min per target
#         fuzz/run.sh 600 decode       # one target for 10 min
#   Environment: FUZZ_MAX_LEN (largest input, default 16384, enough for a MAX_TEXT string),
#                FUZZ_ARGS (extra libFuzzer flags, e.g. "-seed=1 -dict=x.dict").
#
# Targets (fuzz_targets/):
#   decode       arbitrary bytes -> check() and decode() must not panic; an accepted frame must
#                re-encode to the same bytes (except Message::Unknown, whose body is skipped) and
#                decode again to an equal message.
#   header_body  first 16 bytes -> Header::parse, the rest -> decode_body (the stream reader's
#                path, whatever the length field says); same round-trip checks.
#   copy_stream  arbitrary bytes as a bpcp copy stream (bproc-copy's entry and trailer
#                decoders): no panic, no over-read, accepted entries re-encode to the same bytes.
#   image        arbitrary bytes as a process image (bproc-image): no panic, bounded reads, an
#                accepted header re-encodes to the same bytes; a copy carrying the files it
#                names (inline_files) names none.
#   probe        arbitrary bytes as the file probe on an image connection (bproc_proto::conn):
#                no panic, an accepted probe re-encodes to the same bytes.
#
# Stable toolchain: `cargo fuzz build/run --sanitizer none` makes cargo-fuzz pass only stable
# rustc flags (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, -Cdebug-assertions,
# --cfg fuzzing); only -Zsanitizer=address needs nightly, and bproc-proto is
# #![forbid(unsafe_code)], so ASan would add little over Rust's own checks. No RUSTC_BOOTSTRAP.
# libfuzzer-sys compiles libFuzzer itself from C++ source, so a C++ compiler (g++) is needed.
# -jobs=1 keeps it to one worker process (2-core machine shared with others).
#
# Where things go (all git-ignored except seeds/):
#   fuzz/seeds/             committed seed corpus, one valid frame per message type (read-only
#                           here; regenerate with `cargo run --example gen_seeds -- seeds`)
#   fuzz/corpus/TARGET/     the growing corpus, kept between runs
#   fuzz/artifacts/TARGET/  crashing inputs (crash-<sha1>, oom-*, timeout-*)
#   fuzz/artifacts/logs/    libFuzzer's full output per target (TARGET.log)
#
# Exit status: 0 if no target crashed, 1 if any did (the input's path is printed), 2 on a
# setup or build error. Reproduce a crash with its backtrace:
#   cd fuzz && RUST_BACKTRACE=1 cargo fuzz run --sanitizer none TARGET artifacts/TARGET/crash-...
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decode header_body copy_stream image probe)
MAX_LEN="${FUZZ_MAX_LEN:-16384}"

case "$SECS" in
'' | *[!0-9]*) echo "run.sh: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz not found; installing it from crates.io" >&2
    cargo install cargo-fuzz --version '0.13' --locked || exit 2
fi
echo "run.sh: $(cargo fuzz --version), $(rustc --version)"

cd "$FUZZ_DIR"
for t in "${TARGETS[@]}"; do
    cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer none "$t" || {
        echo "run.sh: building target '$t' failed" >&2
        exit 2
    }
done

crashed=()
count_artifacts() {
    find "$FUZZ_DIR/artifacts/$1" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) 2>/dev/null |
        sort
}

for t in "${TARGETS[@]}"; do
    corpus="$FUZZ_DIR/corpus/$t"
    logdir="$FUZZ_DIR/artifacts/logs"
    mkdir -p "$corpus" "$logdir" "$FUZZ_DIR/artifacts/$t"
    log="$logdir/$t.log"
    before="$(count_artifacts "$t")"
    echo "run.sh: fuzzing '$t' for ${SECS}s (corpus $corpus, log $log)"
    rc=0
    # libFuzzer's -jobs mode writes the worker's output to ./fuzz-0.log, so run it from the log
    # directory; when the job ends libFuzzer copies that log to stderr, which goes to $log too.
    # shellcheck disable=SC2086
    (cd "$logdir" && cargo fuzz run --fuzz-dir "$FUZZ_DIR" --sanitizer none "$t" \
        "$corpus" "$FUZZ_DIR/seeds" -- \
        -jobs=1 -max_total_time="$SECS" -max_len="$MAX_LEN" -print_final_stats=1 \
        ${FUZZ_ARGS:-}) >"$log" 2>&1 || rc=$?
    rm -f "$logdir/fuzz-0.log"
    after="$(count_artifacts "$t")"
    new="$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed '/^$/d')"

    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
        "$log" || true
    if [ "$rc" -ne 0 ] || [ -n "$new" ] || grep -qE '^==[0-9]+== ERROR: libFuzzer|panicked at' "$log"; then
        echo "run.sh: target '$t' FAILED (exit $rc); see $log" >&2
        grep -E 'panicked at|^==[0-9]+== ERROR|Test unit written to' "$log" >&2 || true
        [ -z "$new" ] || printf 'run.sh: new artifact: %s\n' $new >&2
        crashed+=("$t")
    else
        echo "run.sh: target '$t': no crash in ${SECS}s"
    fi
done

if [ ${#crashed[@]} -gt 0 ]; then
    echo "run.sh: crashes in: ${crashed[*]}" >&2
    exit 1
fi
echo "run.sh: all targets ran ${SECS}s without a crash"
