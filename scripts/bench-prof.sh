#!/usr/bin/env bash
# bench-prof.sh: what the engine's timers cost. First tests/bench_prof (built if missing): the
# cost of one timer start+stop on and off, and two engines in one process (timers off / on)
# alternating optimizer steps on the same batches, the least noisy A/B on a shared machine.
# Then interleaved A/B runs of ds-train on the same
# data and seed: A with the timers off (no wall_clock_breakdown, no --prof_db), B with them on
# and every step recorded (wall_clock_breakdown true and --prof_db). Each run's step time is
# the median of its --log-json "ms" after the warm-up steps (the engine's and the client's
# time for the step, timers included); the run's wall time also holds what happens between
# the steps (recording the step, the database writes every steps_per_print steps, the final
# close). The overhead is the median over the repetitions of B/A - 1, pairing each B with the
# A run beside it; the order alternates (A B, B A, ...), so that a busy machine's drift hits
# both alike. See scripts/README.md.
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
    local v=$1 r=$2 extra=() t0 t1
    [ "$v" = B ] && extra=(--prof_db "$work/run-$r.db")
    t0=$(date +%s.%N)
    "$train" "$net" --config "$([ "$v" = B ] && echo "$work/on.json" || echo "$config")" --data "$data" \
        --steps "$steps" --data-order sequential --quiet --log-json "$work/$v-$r.jsonl" "${extra[@]}" >/dev/null
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
echo "A = timers off; B = wall_clock_breakdown + --prof_db; interleaved A B, B A, ..."
printf "%4s %12s %12s %9s %10s %10s %9s\n" rep "A ms/step" "B ms/step" "B/A-1" "A wall s" "B wall s" "B/A-1"
results=$work/results.txt
: > "$results"
for r in $(seq 1 "$reps"); do
    if [ $((r % 2)) = 1 ]; then
        read -r a aw < <(run A "$r")
        read -r b bw < <(run B "$r")
    else
        read -r b bw < <(run B "$r")
        read -r a aw < <(run A "$r")
    fi
    echo "$a $b $aw $bw" >> "$results"
    python3 -c "a, b, aw, bw = $a, $b, $aw, $bw; print('%4d %12.4f %12.4f %8.2f%% %10.3f %10.3f %8.2f%%' % ($r, a, b, 100 * (b / a - 1), aw, bw, 100 * (bw / aw - 1)))"
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
step = [b / a - 1 for a, b, _, _ in rows]
wall = [bw / aw - 1 for _, _, aw, bw in rows]
med = statistics.median(step)
print("median step: A %.4f ms, B %.4f ms; overhead (median of paired B/A-1) %+.2f%% (range %+.2f%% .. %+.2f%%)"
      % (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows), 100 * med, 100 * min(step), 100 * max(step)))
print("whole run (process wall time, database included): median of paired B/A-1 %+.2f%% (range %+.2f%% .. %+.2f%%)"
      % (100 * statistics.median(wall), 100 * min(wall), 100 * max(wall)))
print("target: under 2%% of the step time: %s" % ("met" if med < 0.02 else "NOT met (or noise: add --reps)"))
EOF
