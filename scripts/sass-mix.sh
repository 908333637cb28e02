#!/usr/bin/env bash
# Static instruction mix of the CUDA kernels, for work on them without a GPU: compiles one
# kernels/*.cu file for one architecture and prints, per kernel whose name matches a pattern,
# its registers, spills and SASS instruction counts (all, tensor-core mma, ldmatrix, shared
# loads, MUFU). Static counts, not timings: a loop body counts once, a branch's both sides count.
#
#   scripts/sass-mix.sh [-a ARCH] [-k REGEX] [FILE.cu]     (defaults: 90, 'ILi64ELi1ELi1E', kernels/flash16.cu)
#
# Needs nvcc (the CUDA toolkit) and cuobjdump, which Debian's toolkit packages ship but a
# toolkit install may lack; CUOBJDUMP names one elsewhere (PyPI's nvidia-cuda-cuobjdump wheel
# holds one under nvidia/cu*/bin). cuobjdump runs nvdisasm, looked for on the PATH and beside
# cuobjdump (the nvidia-cuda-nvdisasm wheel, unpacked in the same place).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=90
pat='ILi64ELi1ELi1E'
while getopts a:k:h o; do
    case $o in
    a) arch=$OPTARG ;;
    k) pat=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
src=${1:-kernels/flash16.cu}
[ -f "$src" ] || { echo "sass-mix: $src: no such file" >&2; exit 1; }

nvcc=${NVCC:-nvcc}
command -v "$nvcc" >/dev/null || nvcc=/usr/local/cuda/bin/nvcc
command -v "$nvcc" >/dev/null || { echo "sass-mix: nvcc not found (set NVCC)" >&2; exit 1; }
cuobjdump=${CUOBJDUMP:-cuobjdump}
if ! command -v "$cuobjdump" >/dev/null; then
    [ -x "$(dirname "$nvcc")/cuobjdump" ] && cuobjdump=$(dirname "$nvcc")/cuobjdump ||
        { echo "sass-mix: cuobjdump not found (set CUOBJDUMP)" >&2; exit 1; }
fi

PATH=$PATH:$(dirname "$(command -v "$cuobjdump")")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$nvcc" -std=c++17 -O3 -cubin -arch="sm_$arch" -Xptxas -v -Ilib/include -Ilib -Ikernels "$src" \
    -o "$tmp/k.cubin" 2>"$tmp/ptxas.txt"
"$cuobjdump" -sass "$tmp/k.cubin" >"$tmp/k.sass"

printf '%-60s %5s %6s %6s %5s %5s %5s %5s\n' kernel regs spill instrs mma ldsm lds mufu
awk -v pat="$pat" '
    FNR == NR {                                   # ptxas -v: registers and spills per kernel
        if ($0 ~ /Compiling entry function/) { name = $0; sub(/.*function .\047?/, "", name); sub(/\047.*/, "", name) }
        if (match($0, /[0-9]+ bytes spill stores/)) spill[name] = substr($0, RSTART, RLENGTH - 19)
        if ($0 ~ /Used [0-9]+ registers/) { match($0, /Used [0-9]+/); regs[name] = substr($0, RSTART + 5, RLENGTH - 5) }
        next
    }
    /Function : / { cur = $3; next }
    cur != "" && /^[ \t]*\/\*[0-9a-f]+\*\/[ \t]/ {
        n[cur]++
        if ($0 ~ /HMMA|IMMA|HGMMA/) mma[cur]++
        else if ($0 ~ /LDSM/) ldsm[cur]++
        else if ($0 ~ /[ \t]LDS[ .]/) lds[cur]++
        else if ($0 ~ /MUFU/) mufu[cur]++
    }
    END {
        for (k in n) if (k ~ pat)
            printf "%-60s %5s %6s %6d %5d %5d %5d %5d\n", substr(k, 1, 60), regs[k], spill[k] "B", n[k], mma[k], ldsm[k], lds[k], mufu[k]
    }' "$tmp/ptxas.txt" "$tmp/k.sass" | sort
