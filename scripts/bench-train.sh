#!/usr/bin/env bash
# bench-train.sh: training throughput of ds-train against eager PyTorch on
# the same machine, same model, same data, same micro batch, in --rounds
# rounds (ds-train, then every PyTorch setting, in each), so that drifts of the
# machine hit both alike; the ratio reported is the median of the rounds' ratios
# (ds over the round's best PyTorch setting), with their range.  See
# scripts/README.md.
#
# Usage: scripts/bench-train.sh [--rounds R] [--steps N] [--warmup W] [--net NET.json]
#          [--config DS.json] [--data FILE] [--threads T] [--torch-threads "1 2"]
#          [--skip-ds] [--skip-torch] [--summary FILE.json] [--retries R] [--keep]
#
#   --rounds R       rounds (default 3)
#   --steps N        optimizer steps per run (default 30)
#   --warmup W       first W steps not measured (default 5)
#   --net/--config   default share/configs/gpt-tiny.json / gpt-tiny.ds.json
#   --data FILE      training bytes (default: all of /usr/share/common-licenses
#                    concatenated)
#   --threads T      threads for ds-train (default: nproc); passed as
#                    OMP_NUM_THREADS and DS_NUM_THREADS, and as --threads if
#                    ds-train --help lists it
#   --torch-threads  thread counts to try for torch (default "1 nproc"); each
#                    runs with and without OMP_WAIT_POLICY=PASSIVE, the best is
#                    the reference
#   --summary FILE   also write all results as JSON
#   --retries R      rerun a measurement up to R times (default 2) when other
#                    processes used > 10% of the CPUs during it; every run
#                    first waits (up to ~40 s) for the CPUs to be idle
#   --keep           keep the work folder (logs, per-run JSON)
#
# Environment: DS_TRAIN (default ./ds-train), DS_TRAIN_ARGS (extra arguments),
# DS_BENCH_VENV (default $HOME/.cache/ds-bench/venv: created on first use with
# `pip install torch` from PyPI, i.e. the current release as users install it;
# if that fails the script falls back to Debian's python3-torch and says so),
# DS_BENCH_PYTHON (use this python with torch instead of the venv).
#
# PyTorch runs eagerly (no torch.compile), the same step as ds-train:
# forward, cross-entropy, backward, clip_grad_norm_ (gradient_clipping),
# AdamW step, zero_grad.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

rounds=3
steps=30
warmup=5
net=$root/share/configs/gpt-tiny.json
config=$root/share/configs/gpt-tiny.ds.json
data=
ncpu=$(nproc)
threads=$ncpu
torch_threads=
skip_ds=0
skip_torch=0
summary=
keep=0
retries=2

die() { echo "bench-train: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --net) net=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --torch-threads) torch_threads=$2; shift 2 ;;
    --skip-ds) skip_ds=1; shift ;;
    --skip-torch) skip_torch=1; shift ;;
    --summary) summary=$2; shift 2 ;;
    --retries) retries=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[ "$steps" -gt "$warmup" ] 2>/dev/null || die "--steps must be larger than --warmup"
[ "$rounds" -ge 1 ] 2>/dev/null || die "--rounds must be a whole number >= 1"
[ -f "$net" ] || die "no network file $net"
[ -f "$config" ] || die "no config file $config"
[ -n "$torch_threads" ] || torch_threads=$(printf '%s\n' 1 "$ncpu" | sort -nu | tr '\n' ' ')

work=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench.XXXXXX")
if [ "$keep" = 1 ]; then
    echo "bench-train: keeping work files in $work"
else
    trap 'rm -rf "$work"' EXIT
fi

# ---- data
if [ -z "$data" ]; then
    data=$work/common-licenses.txt
    (export LC_ALL=C; cat /usr/share/common-licenses/*) > "$data" 2>/dev/null || true
    [ -s "$data" ] || die "no /usr/share/common-licenses to use as data: pass --data FILE"
    data_desc="/usr/share/common-licenses/* ($(stat -c %s "$data") bytes)"
else
    [ -s "$data" ] || die "no data file $data"
    data_desc="$data ($(stat -c %s "$data") bytes)"
fi

# ---- the python with torch
torch_note=
venv=${DS_BENCH_VENV:-$HOME/.cache/ds-bench/venv}
has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }
if [ -n "${DS_BENCH_PYTHON:-}" ]; then
    py=$DS_BENCH_PYTHON
    has_torch "$py" || die "DS_BENCH_PYTHON=$py has no torch"
    torch_note="PyTorch: $py (DS_BENCH_PYTHON)"
elif [ "$skip_torch" = 1 ] && has_torch /usr/bin/python3; then
    py=/usr/bin/python3
else
    if ! has_torch "$venv/bin/python"; then
        echo "bench-train: creating $venv with PyPI torch (large download, once) ..." >&2
        log=$venv.install.log
        mkdir -p "$(dirname "$venv")" 2>/dev/null || log=/dev/null
        {
            created=0
            for p in /usr/bin/python3 python3; do
                if command -v "$p" >/dev/null && "$p" -m venv "$venv"; then created=1; break; fi
            done
            [ "$created" = 1 ] && "$venv/bin/python" -m pip install torch numpy
        } > "$log" 2>&1 || echo "bench-train: venv/pip install failed, see $log" >&2
    fi
    if has_torch "$venv/bin/python"; then
        py=$venv/bin/python
        torch_note="PyTorch: PyPI release in $venv"
    elif has_torch /usr/bin/python3; then
        py=/usr/bin/python3
        torch_note="WARNING: PyPI torch unavailable; FALLING BACK to Debian's python3-torch (/usr/bin/python3), not the current release"
        echo "bench-train: $torch_note" >&2
    else
        die "no python with torch (PyPI venv failed and no /usr/bin/python3 torch)"
    fi
fi
tv=$("$py" -c 'import torch; print(torch.__version__)')
torch_note="$torch_note, torch $tv"

bt() { "$py" "$here/bench_torch.py" "$@"; }
tokens_per_step=$("$py" -c '
import json,sys
n=json.load(open(sys.argv[1])); c=json.load(open(sys.argv[2]))
print(int(n["input"].get("seq_len",1))*int(c.get("train_micro_batch_size_per_gpu",1))*int(c.get("gradient_accumulation_steps",1)))' "$net" "$config")

echo "bench-train: net $(basename "$net"), config $(basename "$config"), data $data_desc"
echo "bench-train: $steps steps, $warmup warm-up, $ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $torch_note"

# CPU busy fraction over one second (the load average lags behind)
cpu_busy() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat); sleep 1
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat)
    echo "$a $b" | awk '{busy=$3-$1; idle=$4-$2; printf "%.0f", (busy+idle) ? 100*busy/(busy+idle) : 0}'
}
# CPU seconds used by the whole machine so far
stat_busy() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2+$3+$4+$7+$8+$9) / hz; exit}' /proc/stat
}
busy=$(cpu_busy)
echo "bench-train: CPU busy before the runs: ${busy}% (of $ncpu CPUs, 1 s sample)"
if [ "$busy" -gt 10 ]; then
    echo "bench-train: WARNING: the machine is not idle (${busy}% busy); waiting up to 40 s before each run" >&2
fi

# Waits (up to ~40 s) until the CPUs are idle (< 5% busy).
wait_idle() {
    for _ in $(seq 40); do
        [ "$(cpu_busy)" -lt 5 ] && return 0
    done
    return 0
}
# True when the result FILE says other processes used > 10% of the CPUs.
noisy() {
    "$py" -c 'import json,sys; o=json.load(open(sys.argv[1])).get("other_cpu_pct"); sys.exit(0 if (o or 0) > 10 else 1)' "$1"
}
# with_retries FILE CMD...: runs CMD (which writes FILE) on an idle machine, and
# again (up to --retries times) while other processes got in its way.
with_retries() {
    local f=$1 k=0
    shift
    while :; do
        wait_idle
        rm -f "$f"
        "$@" || return 1
        [ -s "$f" ] || return 1
        noisy "$f" || return 0
        if [ "$k" -ge "$retries" ]; then
            echo "bench-train: other processes were still busy after $retries rerun(s); keeping the result" >&2
            return 0
        fi
        k=$((k + 1))
        echo "bench-train: other processes were busy meanwhile; rerunning ($k/$retries)" >&2
    done
}

results=()

# ---- machine fp32 matmul peak (torch), at each thread count tried
run_matmul() {
    echo "bench-train: fp32 matmul 2048^3 with $1 thread(s) ..." >&2
    OMP_NUM_THREADS=$1 bt matmul --size 2048 --reps 7 --threads "$1" --out "$2"
}
for t in $torch_threads; do
    with_retries "$work/matmul-$t.json" run_matmul "$t" "$work/matmul-$t.json" &&
        results+=("$work/matmul-$t.json")
done

# ---- ds-train
run_ds() {
    local out=$1 rss_kb="" own_cpu="" rc=0 busy0 busy1 t0 t1 other=null u s v pid
    rm -f "$work/ds-log.jsonl"
    echo "bench-train: ${cmd[*]} (OMP_NUM_THREADS=$threads)" >&2
    busy0=$(stat_busy); t0=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        OMP_NUM_THREADS=$threads DS_NUM_THREADS=$threads \
            /usr/bin/time -f '%M %U %S' -o "$work/ds-rss" "${cmd[@]}" > "$work/ds-out.txt" 2>&1 || rc=$?
        read -r rss_kb u s < <(tail -n1 "$work/ds-rss") || true
        own_cpu=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
    else
        # No GNU time: poll VmHWM (peak RSS so far) while it runs.
        OMP_NUM_THREADS=$threads DS_NUM_THREADS=$threads \
            "${cmd[@]}" > "$work/ds-out.txt" 2>&1 &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$v" ] && rss_kb=$v
            sleep 0.05
        done
        wait "$pid" || rc=$?
    fi
    busy1=$(stat_busy); t1=$(date +%s.%N)
    if [ -n "$own_cpu" ]; then
        other=$(awk -v b0="$busy0" -v b1="$busy1" -v t0="$t0" -v t1="$t1" -v own="$own_cpu" -v n="$ncpu" \
            'BEGIN {o = (b1 - b0 - own) / ((t1 - t0) * n) * 100; if (o < 0) o = 0; printf "%.1f", o}')
    fi
    if [ "$rc" != 0 ] || [ ! -s "$work/ds-log.jsonl" ]; then
        ds_note="ds-train failed (exit $rc)"
        echo "bench-train: $ds_note; its output:" >&2
        tail -n 20 "$work/ds-out.txt" >&2
        return 1
    fi
    bt ds-log --log "$work/ds-log.jsonl" --warmup "$warmup" \
        --tokens-per-step "$tokens_per_step" \
        --extra "{\"threads\": $threads, \"peak_rss_kb\": ${rss_kb:-null}, \"other_cpu_pct\": $other}" \
        --out "$out"
}
# mark a result file with its round
in_round() { "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["round"]=int(sys.argv[2]); json.dump(d,open(sys.argv[1],"w"))' "$1" "$2"; }
ds_note=
cmd=()
if [ "$skip_ds" = 1 ]; then
    ds_note="--skip-ds"
else
    ds=${DS_TRAIN:-./ds-train}
    if [ ! -x "$ds" ] && [ -x "$root/ds-train" ] && [ -z "${DS_TRAIN:-}" ]; then ds=$root/ds-train; fi
    if [ ! -x "$ds" ]; then
        ds_note="no ds-train at $ds (set DS_TRAIN or build it)"
        echo "bench-train: $ds_note" >&2
    else
        extra=()
        if "$ds" --help 2>&1 | grep -q -- '--threads'; then extra+=(--threads "$threads"); fi
        if "$ds" --help 2>&1 | grep -q -- '--force'; then extra+=(--force); fi
        # shellcheck disable=SC2206
        extra+=(${DS_TRAIN_ARGS:-})
        cmd=("$ds" "$net" --config "$config" --data "$data" --steps "$steps"
             --data-order sequential --log-json "$work/ds-log.jsonl" "${extra[@]}")
    fi
fi

# ---- PyTorch, each thread setting, with and without OMP_WAIT_POLICY=PASSIVE
run_torch() {
    local t=$1 pol=$2 f=$3
    echo "bench-train: torch, $t thread(s)${pol:+, OMP_WAIT_POLICY=$pol} ..." >&2
    if [ -n "$pol" ]; then
        OMP_NUM_THREADS=$t OMP_WAIT_POLICY=$pol bt train --net "$net" --config "$config" \
            --data "$data" --steps "$steps" --warmup "$warmup" --threads "$t" --out "$f"
    else
        (unset OMP_WAIT_POLICY; OMP_NUM_THREADS=$t bt train --net "$net" --config "$config" \
            --data "$data" --steps "$steps" --warmup "$warmup" --threads "$t" --out "$f")
    fi
}
for r in $(seq "$rounds"); do
    echo "bench-train: round $r of $rounds" >&2
    if [ "${#cmd[@]}" -gt 0 ]; then
        f=$work/ds-$r.json
        with_retries "$f" run_ds "$f" && in_round "$f" "$r" && results+=("$f")
    fi
    if [ "$skip_torch" = 0 ]; then
        for t in $torch_threads; do
            for pol in "" PASSIVE; do
                f=$work/torch-$t-${pol:-default}-$r.json
                with_retries "$f" run_torch "$t" "$pol" "$f" && in_round "$f" "$r" && results+=("$f")
            done
        done
    fi
done

bt report --net "$net" --warmup "$warmup" --torch-note="$torch_note" --ds-note="$ds_note" \
    ${summary:+--summary "$summary"} "${results[@]}"
