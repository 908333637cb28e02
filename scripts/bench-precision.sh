#!/usr/bin/env bash
# bench-precision.sh: ds-train tokens/s on gpt-tiny in fp32, bf16 and fp16, and bf16 with its
# activations and working weights in fp32 buffers (DS_ACT16=0, "bf16-f32buf": the layout before
# 16-bit storage), in
# interleaved rounds (fp32, bf16, fp16, bf16-f32buf, fp32, ...) so that drifts of the machine hit
# all alike; prints each run's median step time and peak RSS and, per variant, the median over
# the rounds and the ratio to fp32.
#
# Usage: scripts/bench-precision.sh [--rounds 3] [--steps 40] [--threads 2]
# Environment: DS_TRAIN (default ./ds-train), DATA (default /usr/share/common-licenses).
set -euo pipefail
rounds=3 steps=40 threads=2
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "bench-precision.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
train=${DS_TRAIN:-$root/ds-train}
data=${DATA:-/usr/share/common-licenses}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for p in fp32 bf16 fp16; do
    python3 - "$root/share/configs/gpt-tiny.ds.json" "$p" > "$tmp/$p.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
if sys.argv[2] != 'fp32':
    c[sys.argv[2]] = {'enabled': True}
print(json.dumps(c))
PYEOF
done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(getconf _NPROCESSORS_ONLN) CPUs; $threads threads; $(date -u '+%F %T UTC')"
for r in $(seq 1 "$rounds"); do
    for p in fp32 bf16 fp16 bf16-f32buf; do
        cfg=${p%-f32buf} act16=1
        [ "$p" = bf16-f32buf ] && act16=0
        line=$(DS_ACT16=$act16 OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE "$train" "$root/share/configs/gpt-tiny.json" \
            --config "$tmp/$cfg.json" --data "$data" --steps "$steps" --quiet | grep '^done:')
        tps=$(echo "$line" | sed -n 's/.*ms\/step, \([0-9.]*\) tokens\/s.*/\1/p')
        echo "round $r $p $tps tokens/s  ($line)"
        echo "$p $tps" >> "$tmp/all"
    done
done
python3 - "$tmp/all" <<'PYEOF'
import statistics, sys
v = {}
for l in open(sys.argv[1]):
    p, t = l.split()
    v.setdefault(p, []).append(float(t))
base = statistics.median(v['fp32'])
for p in ('fp32', 'bf16', 'fp16', 'bf16-f32buf'):
    m = statistics.median(v[p])
    print('%-11s median %8.0f tokens/s  ratio to fp32 %.2f' % (p, m, m / base))
PYEOF
