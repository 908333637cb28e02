#!/bin/sh
# Builds the CUDA backend's sources (kernels/*.cu) for the CPU emulator: libds-cuda-emu.so, a
# drop-in for libds-cuda.so (DS_CUDA_BACKEND=...), and libnccl-emu.so, NCCL over shared memory
# between processes (DS_NCCL_LIBRARY=...). See README. Usage: build.sh [OUTDIR]
set -e
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/tmp/ds-cuda-emu}
mkdir -p "$out/k"
for f in "$src"/kernels/*.cu; do
    python3 "$src/tests/cuda_emu/unlaunch.py" "$f" >"$out/k/$(basename "$f" .cu).cc"
done
# headers with launches (cuda_common.cuh's LAUNCH_S): rewritten beside the .cc files, which
# find them first ("..." includes search the including file's folder)
for f in "$src"/kernels/*.cuh; do
    python3 "$src/tests/cuda_emu/unlaunch.py" "$f" >"$out/k/$(basename "$f")"
done
g++ -std=c++17 -O2 -g -fPIC -shared -fopenmp -fvisibility=hidden -Wall -Wno-unknown-pragmas \
    -I"$src/tests/cuda_emu/include" -I"$src/kernels" -I"$src/lib/include" \
    "$out"/k/*.cc "$src/tests/cuda_emu/emu_runtime.cc" -o "$out/libds-cuda-emu.so"
g++ -std=c++17 -O2 -g -fPIC -shared -fvisibility=hidden -Wall -I"$src/tests/cuda_emu/include" \
    "$src/tests/cuda_emu/emu_nccl.cc" -o "$out/libnccl-emu.so"
echo "$out/libds-cuda-emu.so"
