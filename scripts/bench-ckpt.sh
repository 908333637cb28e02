#!/usr/bin/env bash
# bench-ckpt.sh: checkpoint save and load throughput (tests/bench_ckpt.c) beside a plain
# sequential write (+ fsync) and read of the same bytes in the same directory and run, then
# ds-ckpt merge's peak RSS against the size of the checkpoint it streams.
#
# Usage: scripts/bench-ckpt.sh [--dir DIR] [--params MILLIONS] [--reps R] [--no-build]
#   --dir     where to write (default: a temporary directory under $TMPDIR or /tmp)
#   --params  model size in millions of parameters (default 8: 128 MB per checkpoint)
#   --reps    repetitions; medians are reported (default 3)
# Memory: the engine's 5 flat buffers (20 B per parameter); disk: two checkpoints at a time.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
dir="" params=8 reps=3 build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --dir) dir=$2; shift 2 ;;
    --params) params=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench-ckpt.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$root"
[ $build = 1 ] && make -s tests/bench_ckpt ds-ckpt ds-train >/dev/null
if [ -z "$dir" ]; then dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-ckpt.XXXXXX"); trap 'rm -rf "$dir"' EXIT; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE
echo "== save/load vs plain I/O in $dir ($(df -h "$dir" | awk 'NR==2 {print $1}'))"
./tests/bench_ckpt "$dir" "$params" "$reps"

echo "== ds-ckpt: peak RSS against the checkpoint's size (two sizes: it should not grow)"
python3 - "$dir" <<'PY' # .npy by hand: no numpy needed
import math, struct, sys
def npy(path, descr, shape, data):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    h += " " * (63 - (10 + len(h)) % 64) + "\n"
    open(path, "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data)
npy(sys.argv[1] + "/X.npy", "<f4", "(64, 1024)", struct.pack("<65536f", *[math.sin(i * 0.37) for i in range(65536)]))
npy(sys.argv[1] + "/Y.npy", "<i8", "(64,)", struct.pack("<64q", *[i % 10 for i in range(64)]))
PY
echo '{"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}}' > "$dir/ds.json"
for width in 1024 2048; do
    cat > "$dir/net.json" <<JSON
{"input": {"type": "features", "dim": 1024}, "layers": [
 {"type": "linear", "name": "fc1", "out": $width}, {"type": "relu"},
 {"type": "linear", "name": "fc2", "out": $width}, {"type": "relu"},
 {"type": "linear", "name": "fc3", "out": $width}, {"type": "linear", "name": "out", "out": 10}],
 "loss": {"type": "cross_entropy"}}
JSON
    rm -rf "$dir/m" "$dir"/out-*
    ./ds-train "$dir/net.json" --config "$dir/ds.json" --data "$dir/X.npy" --labels "$dir/Y.npy" --steps 2 \
        --quiet --save "$dir/m" >/dev/null
    total=$(du -sb "$dir/m/global_step2" | cut -f1)
    largest=$((width * width * 4 / 1048576))
    for mode in "merge --optimizer" "convert --dtype bf16" "reshard --dp 4"; do
        out="$dir/out-${mode%% *}"
        rss=$(/usr/bin/time -f %M ./ds-ckpt $mode "$dir/m" "$out" 2>&1 >/dev/null | tail -1)
        echo "ds-ckpt $mode: peak RSS $((rss / 1024)) MiB for a $((total / 1048576)) MiB checkpoint (largest tensor $largest MiB)"
    done
done
