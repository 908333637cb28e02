#!/usr/bin/env bash
# bench-optim.sh: memory bandwidth of libds's fused optimizer steps (CPU backend) against a
# STREAM-like triad measured in the same run (tests/bench_optim.c says what is counted).
#
# Usage: scripts/bench-optim.sh [--sizes 16,128] [--reps 5] [--threads 2] [--runs 1]
#          [--tensor 4] [--no-build]
#
#   --sizes     parameter counts in millions (2^20), comma-separated (default 16,128)
#   --reps      timed steps per case; the median is reported (default 5)
#   --threads   OpenMP threads (default 2)
#   --runs R    run the whole benchmark R times (default 1); with R > 1 a last table gives,
#               per case and size, the median over the runs of GB/s and of the ratio to the
#               triad of the same run
#   --tensor M  elements per tensor of the tensor table, in millions (default 4; Lamb's trust
#               ratio is per tensor)
#   --wait-idle S  before each run, wait up to S seconds (default 30) for the CPUs to be at
#               least 80% idle over one second (other builds skew everything); 0: do not wait
#   --no-build  do not run make; use tests/bench_optim if it exists, else compile
#               tests/bench_optim.c by hand against the existing .libs/libds.so
#
# Builds with `make tests/bench_optim` (an EXTRA_PROGRAMS target of Makefile.am); if this tree's
# Makefile has no such target yet, compiles tests/bench_optim.c by hand against .libs/libds.so
# (built by `make libds.la`). Runs with OMP_WAIT_POLICY=PASSIVE. Memory: about 8 buffers of
# 4 B x n at the largest size (4 GiB for 128).
# Environment: BENCH_OPTIM (a bench_optim binary to run instead of building one).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

sizes=16,128
reps=5
threads=2
runs=1
tensor=4
build=1
wait_idle=30

die() { echo "bench-optim: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --tensor) tensor=$2; shift 2 ;;
    --wait-idle) wait_idle=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
case $runs in ''|*[!0-9]*|0) die "--runs wants a positive integer" ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-optim.XXXXXX")
trap 'rm -rf "$work"' EXIT

bin=${BENCH_OPTIM:-}
if [ -z "$bin" ]; then
    cd "$root"
    if [ "$build" = 1 ] && grep -q "^tests_bench_optim_SOURCES" Makefile 2>/dev/null; then
        make -j2 tests/bench_optim >&2
        bin=$root/tests/bench_optim
    elif [ "$build" = 0 ] && [ -x "$root/tests/bench_optim" ]; then
        bin=$root/tests/bench_optim
    else
        if [ "$build" = 1 ]; then
            echo "bench-optim: no tests/bench_optim target in this Makefile: compiling by hand" >&2
            make -j2 libds.la >&2
        fi
        [ -e "$root/.libs/libds.so" ] || die "no .libs/libds.so: run make first"
        ${CC:-gcc} -O2 -fopenmp -I"$root/lib/include" "$root/tests/bench_optim.c" \
            "$root/.libs/libds.so" -lm -Wl,-rpath,"$root/.libs" -o "$work/bench_optim"
        bin=$work/bench_optim
    fi
fi

model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
echo "machine: ${model:-unknown CPU}, $(nproc) CPUs online, $(free -g | awk '/^Mem:/ {print $2 " GiB RAM"}')"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "command: OMP_WAIT_POLICY=PASSIVE $bin --sizes $sizes --reps $reps --threads $threads --tensor $tensor"

# percent of CPU time idle over one second (all CPUs), from /proc/stat
idle_pct() {
    local a b
    a=$(awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
    echo "$a $b" | awk '{d = $4 - $2; print (d > 0 ? int(100 * ($3 - $1) / d) : 100)}'
}

export OMP_WAIT_POLICY=PASSIVE
for r in $(seq 1 "$runs"); do
    idle=$(idle_pct)
    waited=0
    while [ "$idle" -lt 80 ] && [ "$waited" -lt "$wait_idle" ]; do
        idle=$(idle_pct)
        waited=$((waited + 1))
    done
    echo "--- run $r of $runs: CPUs ${idle}% idle before it (waited ${waited} s), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    "$bin" --sizes "$sizes" --reps "$reps" --threads "$threads" --tensor "$tensor" |
        tee "$work/run$r.txt"
done

if [ "$runs" -gt 1 ]; then
    echo "--- median over $runs runs (GB/s; ratio = GB/s / triad GB/s of the same run)"
    # table rows: the name, then n(M), B/param, median ms, GB/s, ratio, triad GB/s (or -)
    cat "$work"/run*.txt | awk -v runs="$runs" '
        function median(s,   a, k, i, j, t) {
            k = split(s, a, " ")
            for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
                if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
        }
        NF >= 7 && $(NF-4) ~ /^[0-9]+$/ && $(NF-1) ~ /^[0-9.]+$/ {
            name = $1; for (i = 2; i <= NF - 6; i++) name = name " " $i
            key = sprintf("%-28s %6s %8s", name, $(NF-5), $(NF-4))
            if (!(key in gbs)) order[++n] = key
            gbs[key] = gbs[key] " " $(NF-2); ratio[key] = ratio[key] " " $(NF-1)
            ms[key] = ms[key] " " $(NF-3)
        }
        END {
            printf "%-28s %6s %8s %10s %8s %7s\n", "case", "n(M)", "B/param", "median ms", "GB/s", "ratio"
            for (i = 1; i <= n; i++)
                printf "%s %10.2f %8.2f %7.3f\n", order[i], median(ms[order[i]]),
                       median(gbs[order[i]]), median(ratio[order[i]])
        }'
fi
