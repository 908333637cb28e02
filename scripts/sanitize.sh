#!/bin/bash
# The whole test suite on a build with AddressSanitizer and UBSan (gcc, -O2, no CUDA).
#
#   scripts/sanitize.sh [--build DIR] [--leaks] [TEST...]
#
# Copies the working tree (tracked and untracked files) to DIR/src (default /tmp/ds-sanitize),
# configures it with -fsanitize=address,undefined (UBSan reports are fatal), builds it, and runs
# `make check` there (or only the named TESTS, e.g. tests/zero.sh tests/test_model). The summary
# and every failing test's log are printed; exit 0 when every test passed.
#
# Leak reports are off unless --leaks: the binaries' early exits and the test programs leave
# small blocks behind on purpose, as does the CUDA emulation (fiber stacks), so leaks are a
# separate, noisy question from memory errors and undefined behaviour.
#
# A sanitizer build also runs ds with other code generation than the release build; a test that
# depends on luck in floating point fails here (that is how the ZeRO global-norm precision bug
# was found, 352718a).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
dir=/tmp/ds-sanitize leaks=0
tests=()
while [ $# -gt 0 ]; do
    case $1 in
    --build) dir=$2; shift 2 ;;
    --leaks) leaks=1; shift ;;
    -h | --help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "sanitize.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) tests+=("$1"); shift ;;
    esac
done
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
mkdir -p "$dir/src" || exit 2
(cd "$here" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$dir/src" \
    --keep-newer-files 2>/dev/null
cd "$dir/src" || exit 2
if [ ! -f Makefile ]; then
    echo "== configure (gcc, ASan, UBSan) in $dir/src"
    { autoreconf -fi && ./configure --without-cuda CFLAGS="-g -O2 -fno-omit-frame-pointer $san" LDFLAGS="$san"; } \
        >"$dir/configure.log" 2>&1 || { tail -20 "$dir/configure.log"; exit 2; }
fi
echo "== make"
make -j2 >"$dir/make.log" 2>&1 || { grep -E 'error' "$dir/make.log" | head -20; exit 2; }
echo "== make check${tests[*]:+ TESTS=\"${tests[*]}\"} (ASan, UBSan$([ $leaks = 1 ] && echo ', LeakSanitizer'))"
export ASAN_OPTIONS="detect_leaks=$leaks:abort_on_error=0" UBSAN_OPTIONS="print_stacktrace=1"
if [ ${#tests[@]} -gt 0 ]; then
    make -j2 check TESTS="${tests[*]}" >"$dir/check.log" 2>&1
else
    make -j2 check >"$dir/check.log" 2>&1
fi
rc=$?
grep -E '^(# [A-Z]+:|FAIL|ERROR)' "$dir/check.log"
for t in $(sed -n 's/^\(FAIL\|ERROR\): //p' "$dir/check.log"); do
    echo "---- $t"
    grep -a -E 'not ok|FAIL|ERROR: |runtime error|SUMMARY' "$t.log" | head -20
done
exit $rc
