#!/usr/bin/env bash
# bench-zero.sh: ZeRO on one machine.
#  1. tokens/s of gpt-tiny (share/configs) with ZeRO stages 0, 1, 2, 2 + overlap_comm and 3 (its
#     defaults: overlap_comm on, tensors of at most 1e5 elements persistent, the others gathered
#     per layer) at 2 and 4 ranks (ds-launch, one OpenMP thread per rank), medians of --rounds
#     interleaved runs;
#  2. the deepest GPT (layers of dim 256, vocab 256, 64 positions, micro-batch 1) that trains
#     3 steps under a fixed per-rank memory limit (ulimit -d, i.e. RLIMIT_DATA: the heap and
#     every private writable mapping) with 4 ranks at stages 0, 2 and 3
#     (reduce_bucket_size 1e6), found by bisection.
# Usage: scripts/bench-zero.sh [--rounds 3] [--steps 20] [--limit-mb 400] [--max-layers 64]
# Environment: DS_BUILD (the build directory with ds-train and ds-launch; default the repo root).
set -euo pipefail
rounds=3 steps=20 limit_mb=400 max_layers=64
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --limit-mb) limit_mb=$2; shift 2 ;;
    --max-layers) max_layers=$2; shift 2 ;;
    *) echo "bench-zero.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${DS_BUILD:-$root}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(getconf _NPROCESSORS_ONLN) CPUs; $(date -u '+%F %T UTC')"

echo "== 1. gpt-tiny tokens/s by ZeRO stage (median of $rounds rounds, $steps steps, micro-batch 8 per rank)"
for st in 0 1 2 2o 3; do
    python3 - "$root/share/configs/gpt-tiny.ds.json" "$st" > "$tmp/z$st.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c['zero_optimization'] = {'stage': int(sys.argv[2][0]), 'reduce_bucket_size': 1000000, 'allgather_bucket_size': 1000000}
if sys.argv[2] != '3':  # stage 3: DeepSpeed's default, overlap_comm on
    c['zero_optimization']['overlap_comm'] = sys.argv[2].endswith('o')
print(json.dumps(c))
PYEOF
done
: > "$tmp/tps"
for r in $(seq 1 "$rounds"); do
    for n in 2 4; do
        for st in 0 1 2 2o 3; do
            line=$("$B/ds-launch" --num_gpus $n --export OMP_NUM_THREADS=1 "$B/ds-train" \
                "$root/share/configs/gpt-tiny.json" --config "$tmp/z$st.json" \
                --data /usr/share/common-licenses --steps "$steps" --quiet 2>/dev/null | grep 'done:' || true)
            tps=$(echo "$line" | sed -n 's/.*ms\/step, \([0-9.]*\) tokens\/s.*/\1/p')
            if [ -n "$tps" ]; then echo "$n $st $tps" >> "$tmp/tps"
            else echo "  round $r, $n ranks, stage $st: the run failed (no done line); left out" >&2
                echo "$n $st failed" >> "$tmp/tps"; fi
        done
    done
done
python3 - "$tmp/tps" <<'PYEOF'
import statistics, sys
v, failed = {}, {}
for l in open(sys.argv[1]):
    n, st, t = l.split()
    if t == 'failed':  # (a failed run is not a 0 in the median)
        failed[(int(n), st)] = failed.get((int(n), st), 0) + 1
    else:
        v.setdefault((int(n), st), []).append(float(t))
for n in (2, 4):
    base = statistics.median(v[(n, '0')]) if v.get((n, '0')) else None
    for st in ('0', '1', '2', '2o', '3'):
        name = 'stage 2 + overlap_comm' if st == '2o' else 'stage ' + st
        f = failed.get((n, st), 0)
        note = '; %d run(s) failed' % f if f else ''
        if not v.get((n, st)):
            print('  %d ranks, %-22s no run finished%s' % (n, name + ':', note))
            continue
        m = statistics.median(v[(n, st)])
        print('  %d ranks, %-22s %8.0f tokens/s  (%s of stage 0, median of %d%s)'
              % (n, name + ':', m, '%.2f' % (m / base) if base else '-', len(v[(n, st)]), note))
PYEOF

echo "== 2. deepest GPT that trains under ${limit_mb} MB (RLIMIT_DATA) per rank, 4 ranks"
net() { # net LAYERS > file
    cat <<JSON
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 64},
 "layers": [{"type": "embedding", "name": "wte", "dim": 256}, {"type": "position_embedding", "name": "wpe"},
  {"type": "repeat", "name": "h", "count": $1, "layers": [
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"}, {"type": "attention", "name": "attn", "heads": 4}]},
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"}, {"type": "linear", "name": "fc", "out": 1024},
    {"type": "gelu", "approximate": "tanh"}, {"type": "linear", "name": "proj", "out": 256}]}]},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
JSON
}
fits() { # fits STAGE LAYERS
    net "$2" > "$tmp/net$2.json"
    echo "{\"train_micro_batch_size_per_gpu\": 1, \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.001}},
      \"zero_optimization\": {\"stage\": $1, \"reduce_bucket_size\": 1000000, \"allgather_bucket_size\": 1000000}}" > "$tmp/m$1.json"
    ( ulimit -d $((limit_mb * 1024)); "$B/ds-launch" --num_gpus 4 --export OMP_NUM_THREADS=1 "$B/ds-train" \
        "$tmp/net$2.json" --config "$tmp/m$1.json" --data /usr/share/common-licenses --steps 3 --quiet \
        >/dev/null 2>&1 )
}
for st in 0 2 3; do
    lo=0 hi=$((max_layers + 1))
    while [ $((hi - lo)) -gt 1 ]; do
        mid=$(((lo + hi) / 2))
        if fits $st $mid; then lo=$mid; else hi=$mid; fi
    done
    if [ $lo -gt 0 ]; then
        params=$("$B/ds-train" --summary "$tmp/net$lo.json" 2>/dev/null | sed -n 's/.*total: *\([0-9,]*\) parameters.*/\1/p' | head -1)
        net $lo > "$tmp/netp.json"
        plan=$("$B/ds-train" --plan "$tmp/netp.json" --config "$tmp/m$st.json" --world_size 4 | awk -v s=$st '$1==s {print $6}')
        echo "  stage $st: $lo layers fit (${params:-?} parameters; model states per rank per --plan: ${plan} MB)"
    else
        echo "  stage $st: not even 1 layer fits in ${limit_mb} MB"
    fi
done
