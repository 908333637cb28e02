#!/bin/bash
# Fuzz libds's readers (tests/fuzz/targets.c) with libFuzzer, AddressSanitizer and UBSan.
#
#   scripts/fuzz.sh [--time SECONDS] [--build DIR] [--jobs N] [TARGET...]
#
# Targets: config net hostfile safetensors npy tokens ckpt (default: all), each run for
# --time seconds (default 60) from tests/fuzz/corpus/TARGET/ (the kept inputs) plus what the
# run finds, in DIR/corpus/TARGET/ (DIR default: /tmp/ds-fuzz). Needs clang with its
# compiler-rt (Debian: clang, libclang-rt-14-dev); the build, a copy of the tracked and
# untracked source files configured with clang and the sanitizers, is DIR/src (about 2 min the
# first time, then only what changed).
#
# A finding (a crash, a sanitizer report, or an abort from a target's check) leaves the
# input in DIR/found-DATE/TARGET-crash-* and the log DIR/TARGET.log, and the script exits 1.
# Once it is fixed, copy the input into tests/fuzz/corpus/TARGET/: tests/fuzz.sh replays that
# folder in `make check`. Minimise the new corpus first if it grew (libFuzzer's -merge=1), and keep only
# inputs that add coverage.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
time_s=60 dir=/tmp/ds-fuzz jobs=1
targets=()
while [ $# -gt 0 ]; do
    case $1 in
    --time) time_s=$2; shift 2 ;;
    --build) dir=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h | --help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(config net hostfile safetensors npy tokens ckpt)
command -v clang >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
case $time_s in '' | *[!0-9]*) echo "fuzz.sh: --time $time_s: expected whole seconds" >&2; exit 2 ;; esac

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
mkdir -p "$dir/src" || exit 2
# the working tree's files (tracked and untracked, not ignored) into DIR/src; unchanged ones
# keep their times, so make rebuilds only what changed
(cd "$here" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$dir/src" \
    --keep-newer-files 2>/dev/null
cd "$dir/src" || exit 2
if [ ! -f Makefile ]; then
    echo "== configure (clang, ASan, UBSan) in $dir/src"
    { autoreconf -fi && ./configure CC=clang --without-cuda \
        CFLAGS="-g -O1 -fno-omit-frame-pointer $san -fsanitize=fuzzer-no-link" LDFLAGS="$san"; } \
        >"$dir/configure.log" 2>&1 || { tail -20 "$dir/configure.log"; exit 2; }
fi
echo "== make libds.la"
make -j2 libds.la >"$dir/make.log" 2>&1 || { grep -E 'error' "$dir/make.log" | head -20; exit 2; }
deps=$(sed -n "s/^dependency_libs='\(.*\)'/\1/p" libds.la)

# Seeds made afresh from the project's own files (DIR/seeds/TARGET): real inputs, with the
# targets' leading selector bytes (targets.c)
seeds_for() {
    local t=$1 s=$dir/seeds/$1 f i=0
    rm -rf "$s" && mkdir -p "$s"
    case $t in
    config)
        for f in "$here"/tests/data/dsconfigs/*.json "$here"/share/configs/*.ds.json; do
            { printf '\001'; cat "$f"; } >"$s/$((i++))"
        done ;;
    net) for f in "$here"/share/configs/gpt-tiny.json "$here"/share/configs/mlp.json "$here"/share/configs/gpt-small.json \
        "$here"/tests/fixtures/*.json; do cp "$f" "$s/$((i++))"; done ;;
    hostfile)
        printf '\000# two nodes\nworker-1 slots=4\nworker-2 slots=4 extra=1\n\n' >"$s/hosts"
        printf '\001# env\nNCCL_DEBUG=INFO\n PYTHONPATH = /opt/x \n' >"$s/env" ;;
    safetensors) cp "$here"/tests/data/reference.safetensors "$s/" ;;
    npy) cp "$here"/tests/data/*.npy "$s/" ;;
    tokens)
        python3 - "$s" "$here/tests/data/megatron_tiny" <<'PY'
import struct, sys
s, meg = sys.argv[1:3]
hdr = struct.pack("<256i", *([20240520, 1, 40] + [0] * 253))
open(s + "/llmc", "wb").write(bytes([0 | 3 << 2]) + hdr + struct.pack("<40H", *range(40)))
open(s + "/llmc50k", "wb").write(bytes([0 | 3 << 2 | 64]) + hdr + struct.pack("<40H", *range(50000, 50040)))
idx, b = open(meg + ".idx", "rb").read(), open(meg + ".bin", "rb").read()
open(s + "/megatron", "wb").write(bytes([1 | 1 << 2]) + struct.pack("<H", len(idx)) + idx + b)
open(s + "/text", "wb").write(bytes([2 | 7 << 2]) + b"The quick brown fox jumps over the lazy dog.\n")
a = b"first file, bytes are tokens\n"
open(s + "/dir", "wb").write(bytes([3 | 2 << 2]) + struct.pack("<H", len(a)) + a + b"second\n")
PY
        ;;
    ckpt) # a tiny model's checkpoints (one rank; ZeRO 1 and Adam, fp32 SGD), as targets.c's file lists
        [ -x "$here/ds-train" ] || { echo "   (no $here/ds-train built: no checkpoint seeds)"; return; }
        local w=$dir/seeds/ckpt-work
        rm -rf "$w" && mkdir -p "$w"
        # 16 tokens (a text of bytes 0-15), so that the checkpoints are a few KB
        printf '%s' '{"input": {"type": "tokens", "vocab_size": 16, "seq_len": 4},
          "layers": [{"type": "embedding", "name": "wte", "dim": 4}, {"type": "layernorm", "name": "ln"},
                     {"type": "linear", "name": "head", "out": 16}], "loss": {"type": "cross_entropy"}}' >"$w/net.json"
        python3 -c 'import sys; sys.stdout.buffer.write(bytes(i * 7 % 16 for i in range(200)))' >"$w/data.txt"
        printf '%s' '{"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "Adam", "params": {"lr": 0.01}},
          "zero_optimization": {"stage": 1}, "bf16": {"enabled": true}}' >"$w/a.json"
        printf '%s' '{"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}' >"$w/b.json"
        for c in a b; do
            "$here/ds-train" "$w/net.json" --config "$w/$c.json" --data "$w/data.txt" --steps 2 --save "$w/ck-$c" \
                --quiet >"$w/$c.log" 2>&1 || { echo "   (ds-train failed: $w/$c.log)"; continue; }
            python3 - "$w/ck-$c" "$s/$c" <<'PY'
import os, struct, sys
ck, out = sys.argv[1:3]
tag = open(os.path.join(ck, "latest")).read().strip()
d = os.path.join(ck, tag)
blob = b""
for name in sorted(os.listdir(d)):
    if name == "SHA256SUMS":
        continue
    data = open(os.path.join(d, name), "rb").read()
    blob += bytes([len(name)]) + name.encode() + struct.pack("<I", len(data)) + data
open(out, "wb").write(blob)
PY
        done ;;
    esac
}
rc=0
found=$dir/found-$(date +%Y%m%d-%H%M%S) # this run's findings, kept
for t in "${targets[@]}"; do
    bin=$dir/fuzz-$t
    clang -g -O1 -fno-omit-frame-pointer $san -fsanitize=fuzzer -fopenmp -DDS_FUZZ_TARGET="\"$t\"" \
        -I lib/include tests/fuzz/targets.c tests/fuzz/libfuzzer.c .libs/libds.a $deps -o "$bin" \
        >"$dir/$t.build.log" 2>&1 || { cat "$dir/$t.build.log"; exit 2; }
    mkdir -p "$dir/corpus/$t" "$found"
    seeds_for "$t"
    seeds="$dir/seeds/$t"
    [ -d "$here/tests/fuzz/corpus/$t" ] && seeds="$seeds $here/tests/fuzz/corpus/$t"
    echo "== $t: ${time_s}s (corpus $dir/corpus/$t, seeds $seeds)"
    # OMP_NUM_THREADS=1: one thread per fuzzing job (no reader here runs parallel work)
    OMP_NUM_THREADS=1 "$bin" -max_total_time="$time_s" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -jobs="$jobs" -workers="$jobs" -artifact_prefix="$found/$t-" -print_final_stats=1 \
        "$dir/corpus/$t" $seeds >"$dir/$t.log" 2>&1
    r=$?
    summary=$(grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+.*(DONE|cov:))' "$dir/$t.log" | tail -3 | tr '\n' ' ')
    if [ $r -ne 0 ] || ls "$found/$t"-* >/dev/null 2>&1; then
        echo "   FINDING (exit $r): $(ls "$found/$t"-* 2>/dev/null | head -3 | tr '\n' ' ')"
        grep -E -m3 'ERROR: |runtime error|fuzz [a-z]+:' "$dir/$t.log"
        rc=1
    else
        echo "   ok: $summary"
    fi
done
exit $rc
