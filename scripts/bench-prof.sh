#!/usr/bin/env bash
# bench-prof.sh: what the engine's timers cost. First tests/bench_prof (built if missing): the
# cost of one timer start+stop on and off, and two engines in one process (timers off / on)
# alternating optimizer steps on the same batches, the least noisy A/B on a shared machine.
# Then interleaved runs of ds-train on the same data and seed: A with the timers off (no
# wall_clock_breakdown, no --prof_db), T with wall_clock_breakdown true, D with it and every
# step recorded in --prof_db. Each run's step time is
# the median of its --log-json "ms" after the warm-up steps (the engine's and the client's
# time for the step, timers included); the run's wall time also holds what happens between
# the steps (recording the step, the database writes every steps_per_print steps, the final
# close). The overhead is the median over the repetitions of T/A - 1 and D/A - 1, pairing each
# with the A run of its round; the order rotates (A T D, T D A, D A T, ...), so that a busy
# machine's drift hits all alike. See scripts/README.md.
#
# Usage: scripts/bench-prof.sh [--reps R] [--steps N] [--warmup W] [--net NET.json]
#          [--config DS.json] [--data FILE] [--threads T] [--inproc-steps S] [--keep]
#
#   --inproc-steps S  optimizer steps of each engine in tests/bench_prof (default 1000)
#   --reps R      A/B pairs (default 7)
#   --steps N     optimizer steps per run (default 200)
#   --warmup W    first W steps not measured (default 5)
#   --net/--config  default: a one-block GPT (vocab 256, dim 32, seq 32, micro-batch 8) whose
#                 ~2 ms steps are the worst case for a fixed per-call cost; pass
#                 share/configs/gpt-tiny.json and gpt-tiny.ds.json for a 3.3M-parameter model
#   --data FILE   training bytes (default /usr/share/common-licenses/GPL-3)
#   --threads T   OMP_NUM_THREADS (default 1)
#   --keep        keep the work folder
#
# Environment: DS_TRAIN (default ./ds-train). OMP_WAIT_POLICY=PASSIVE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
reps=7 steps=200 warmup=5 inproc=1000 net="" config="" data=/usr/share/common-licenses/GPL-3 threads=1 keep=0
while [ $# -gt 0 ]; do
    case $1 in
    --reps) reps=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --net) net=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --inproc-steps) inproc=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-prof.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
train=${DS_TRAIN:-$root/ds-train}
[ -x "$train" ] || { echo "bench-prof.sh: $train is not built (make)" >&2; exit 1; }
[ -r "$data" ] || { echo "bench-prof.sh: --data $data: not readable" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-prof.XXXXXX")
[ "$keep" = 1 ] && echo "work folder: $work" || trap 'rm -rf "$work"' EXIT
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$threads

if [ -z "$net" ]; then
    net=$work/net.json
    cat > "$net" <<'EOF'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 32},
 "layers": [{"type": "embedding", "name": "wte", "dim": 32}, {"type": "position_embedding", "name": "wpe"},
  {"type": "repeat", "name": "h", "count": 1, "layers": [
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"}, {"type": "attention", "name": "attn", "heads": 4}]},
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"}, {"type": "linear", "name": "fc", "out": 128},
    {"type": "gelu", "approximate": "tanh"}, {"type": "linear", "name": "proj", "out": 32}]}]},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
EOF
fi
if [ -z "$config" ]; then
    config=$work/ds.json
    echo '{"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 1}' > "$config"
fi
# B: the same config with wall_clock_breakdown on (and steps_per_print kept)
python3 - "$config" "$work/on.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["wall_clock_breakdown"] = True
json.dump(c, open(sys.argv[2], "w"))
EOF

run() { # VARIANT REP: prints the run's median step ms after the warm-up, and its wall seconds
    local v=$1 r=$2 extra=() cfg=$config t0 t1
    [ "$v" = A ] || cfg=$work/on.json
    [ "$v" = D ] && extra=(--prof_db "$work/run-$r.db")
    t0=$(date +%s.%N)
    "$train" "$net" --config "$cfg" --data "$data" --steps "$steps" --data-order sequential --quiet \
        --log-json "$work/$v-$r.jsonl" "${extra[@]}" >/dev/null
    t1=$(date +%s.%N)
    python3 - "$work/$v-$r.jsonl" "$warmup" "$t0" "$t1" <<'EOF'
import json, statistics, sys
ms = [json.loads(l)["ms"] for l in open(sys.argv[1])][int(sys.argv[2]):]
print("%.4f %.4f" % (statistics.median(ms), float(sys.argv[4]) - float(sys.argv[3])))
EOF
}

bench=$root/tests/bench_prof
[ -x "$bench" ] || make -C "$root" tests/bench_prof >/dev/null
echo "== tests/bench_prof: $net, $config, $inproc steps per engine, OMP_NUM_THREADS=$threads"
"$bench" "$net" "$config" "$inproc"
echo "== ds-train: $steps steps (first $warmup not measured)"
echo "A = timers off; T = wall_clock_breakdown; D = wall_clock_breakdown + --prof_db; order rotates per round"
printf "%4s %10s %10s %10s %8s %8s %9s %9s %9s %8s %8s\n" rep "A ms" "T ms" "D ms" "T/A-1" "D/A-1" \
    "A wall s" "T wall s" "D wall s" "T/A-1" "D/A-1"
results=$work/results.txt
: > "$results"
orders=("A T D" "T D A" "D A T")
for r in $(seq 1 "$reps"); do
    declare -A ms wall
    for v in ${orders[$(((r - 1) % 3))]}; do
        read -r "ms[$v]" "wall[$v]" < <(run "$v" "$r")
    done
    echo "${ms[A]} ${ms[T]} ${ms[D]} ${wall[A]} ${wall[T]} ${wall[D]}" >> "$results"
    python3 -c "a, t, d, aw, tw, dw = ${ms[A]}, ${ms[T]}, ${ms[D]}, ${wall[A]}, ${wall[T]}, ${wall[D]}
print('%4d %10.4f %10.4f %10.4f %7.2f%% %7.2f%% %9.3f %9.3f %9.3f %7.2f%% %7.2f%%' % ($r, a, t, d, 100 * (t / a - 1), 100 * (d / a - 1), aw, tw, dw, 100 * (tw / aw - 1), 100 * (dw / aw - 1)))"
    unset ms wall
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
def summary(name, i, j):
    r = [x[i] / x[j] - 1 for x in rows]
    return "%s %+.2f%% (range %+.2f%% .. %+.2f%%)" % (name, 100 * statistics.median(r), 100 * min(r), 100 * max(r)), statistics.median(r)
print("median step ms: A %.4f, T %.4f, D %.4f" % tuple(statistics.median(x[k] for x in rows) for k in range(3)))
t, tm = summary("T/A-1", 1, 0)
d, dm = summary("D/A-1", 2, 0)
print("step time, median of the paired ratios: " + t + "; " + d)
tw, _ = summary("T/A-1", 4, 3)
dw, _ = summary("D/A-1", 5, 3)
print("whole run (process wall time, database included): " + tw + "; " + dw)
print("target: timers under 2%% of the step time: %s" % ("met" if tm < 0.02 else "NOT met (or noise: add --reps)"))
EOF
