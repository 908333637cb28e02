#!/bin/bash
# The whole test suite on a build with AddressSanitizer and UBSan (gcc, -O2, no CUDA).
#
#   scripts/sanitize.sh [--build DIR] [--leaks | --thread] [TEST...]
#
# Copies the working tree (tracked and untracked files; the ones that changed since the last
# copy, stamped with the time of the copy) to DIR/src (default /tmp/ds-sanitize),
# configures it with -fsanitize=address,undefined (UBSan reports are fatal), builds it, and runs
# `make check` there (or only the named TESTS, e.g. tests/zero.sh tests/test_model). The summary
# and every failing test's log are printed; exit 0 when every test passed.
#
# Leak reports are off unless --leaks: the binaries' early exits and the test programs leave
# small blocks behind on purpose, as does the CUDA emulation (fiber stacks), so leaks are a
# separate, noisy question from memory errors and undefined behaviour.
#
# --thread builds with ThreadSanitizer instead (gcc, -O1; default DIR /tmp/ds-tsan) and runs
# the tests whose processes start threads: the rendezvous server (rank 0), overlap_comm's
# communication thread, ds-launch's per-node threads (ssh.sh needs the loopback sshd,
# scripts/ssh-loopback.sh). A report makes the process exit 66, so the test fails. OpenMP runs
# with one thread (OMP_NUM_THREADS=1): libgomp is not instrumented, so the barriers between its
# threads are invisible to TSan and every parallel loop would be reported. The Criterion
# programs are not run: Criterion's runner crashes under TSan (SEGV in libcriterion). mp.sh
# (200 steps of gpt-tiny per precision) takes too long under TSan and starts no thread.
#
# A sanitizer build also runs ds with other code generation than the release build; a test that
# depends on luck in floating point fails here (that is how the ZeRO global-norm precision bug
# was found, 352718a).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
dir= leaks=0 thread=0
tests=()
while [ $# -gt 0 ]; do
    case $1 in
    --build) dir=$2; shift 2 ;;
    --leaks) leaks=1; shift ;;
    --thread) thread=1; shift ;;
    -h | --help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "sanitize.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) tests+=("$1"); shift ;;
    esac
done
if [ $thread = 1 ]; then
    [ $leaks = 1 ] && { echo "sanitize.sh: --leaks and --thread do not go together" >&2; exit 2; }
    san="-fsanitize=thread" opt=-O1 what="ThreadSanitizer" dir=${dir:-/tmp/ds-tsan}
    [ ${#tests[@]} -gt 0 ] || tests=(tests/cli.sh tests/launch.sh tests/launch-dist.sh tests/dp.sh tests/ssh.sh
                                     tests/prof.sh tests/zero.sh tests/lrrt.sh tests/ckpt.sh)
else
    san="-fsanitize=address,undefined -fno-sanitize-recover=undefined" opt=-O2 what="ASan, UBSan"
    dir=${dir:-/tmp/ds-sanitize}
fi
mkdir -p "$dir/src" || exit 2
# the tree into DIR/src: a file whose bytes differ is copied with the time of the copy (keeping
# its own mtime let make take an object built from an older copy for current: a stale binary)
stage=$(mktemp -d) || exit 2
(cd "$here" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$stage"
(cd "$stage" && find . -type f -print0) | while IFS= read -r -d '' f; do
    if ! cmp -s "$stage/$f" "$dir/src/$f"; then
        mkdir -p "$(dirname "$dir/src/$f")" && cp "$stage/$f" "$dir/src/$f"
    fi
done
rm -rf "$stage"
cd "$dir/src" || exit 2
if [ ! -f Makefile ]; then
    echo "== configure (gcc, $what) in $dir/src"
    { autoreconf -fi && ./configure --without-cuda CFLAGS="-g $opt -fno-omit-frame-pointer $san" LDFLAGS="$san"; } \
        >"$dir/configure.log" 2>&1 || { tail -20 "$dir/configure.log"; exit 2; }
fi
echo "== make"
make -j2 >"$dir/make.log" 2>&1 || { grep -E 'error' "$dir/make.log" | head -20; exit 2; }
echo "== make check${tests[*]:+ TESTS=\"${tests[*]}\"} ($what$([ $leaks = 1 ] && echo ', LeakSanitizer'))"
export ASAN_OPTIONS="detect_leaks=$leaks:abort_on_error=0" UBSAN_OPTIONS="print_stacktrace=1"
[ $thread = 1 ] && export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1" OMP_NUM_THREADS=1
if [ ${#tests[@]} -gt 0 ]; then
    make -j2 check TESTS="${tests[*]}" >"$dir/check.log" 2>&1
else
    make -j2 check >"$dir/check.log" 2>&1
fi
rc=$?
grep -E '^(# [A-Z]+:|FAIL|ERROR)' "$dir/check.log"
for t in $(sed -n 's/^\(FAIL\|ERROR\): //p' "$dir/check.log"); do
    echo "---- $t"
    grep -a -E 'not ok|FAIL|ERROR: |runtime error|SUMMARY|WARNING: ThreadSanitizer' "$t.log" | head -20
done
exit $rc
