#!/usr/bin/env bash
# The kept fuzz inputs (tests/fuzz/corpus/TARGET/: inputs that once crashed a reader or broke a
# promise, and a coverage-minimised corpus from scripts/fuzz.sh runs) replayed through libds's
# readers by tests/fuzz_replay, which runs the same target functions as the fuzzer
# (tests/fuzz/targets.c): each must read every input without crashing, and every error must
# name its input. One "ok"/"not ok" line per target.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
B=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
S=${DS_TEST_DIR:-$(cd "$(dirname "$0")" && pwd)}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-fuzz-replay.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
R=$B/tests/fuzz_replay
for t in config net hostfile safetensors npy tokens ckpt; do
    d=$S/fuzz/corpus/$t
    n=$(find "$d" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l)
    if [ "$n" -eq 0 ]; then
        notok "$t: no kept inputs in $d"
        continue
    fi
    out=$(TMPDIR=$T "$R" "$t" "$d" 2>"$T/$t.err")
    rc=$?
    if [ $rc -eq 0 ] && [ "$out" = "$t: $n inputs" ]; then
        ok "$t: $n inputs read, no crash, every error names its input"
    else
        notok "$t: exit $rc, \"$out\" (expected \"$t: $n inputs\"); last input and messages:"
        tail -5 "$T/$t.err" | sed 's/^/#   /'
    fi
done
# the replay itself: an unknown target is refused, a missing input is an error
TMPDIR=$T "$R" nosuch "$S/fuzz/corpus/config" >/dev/null 2>"$T/nosuch.err"
rc=$?
if [ $rc -eq 2 ] && grep -q 'no target "nosuch"' "$T/nosuch.err"; then ok "an unknown target is refused (exit 2)"; else notok "unknown target: exit $rc: $(cat "$T/nosuch.err")"; fi
TMPDIR=$T "$R" config "$T/missing" >/dev/null 2>&1
rc=$?
if [ $rc -eq 1 ]; then ok "a missing input is an error (exit 1)"; else notok "missing input: exit $rc"; fi
tap_summary
