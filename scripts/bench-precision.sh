#!/usr/bin/env bash
# bench-precision.sh: ds-train tokens/s on gpt-tiny in fp32, bf16 and fp16, and bf16 with its
# activations and working weights in fp32 buffers (DS_ACT16=0, "bf16-f32buf": the layout before
# 16-bit storage), in
# interleaved rounds (fp32, bf16, fp16, bf16-f32buf, fp32, ...) so that drifts of the machine hit
# all alike; prints each run's median step time and peak RSS and, per variant, the median over
# the rounds and the ratio to fp32. Each run is made twice: with OpenMP's default wait policy
# (libgomp's threads spin a while between parallel regions before they sleep: what a user's
# plain `ds-train` gets) and with OMP_WAIT_POLICY=PASSIVE (threads sleep; each region then
# pays a wake-up, about 40 us on a 2-core VM, and a bf16 step of gpt-tiny runs about 210
# regions). --policy default or passive makes only one of them.
#
# Usage: scripts/bench-precision.sh [--rounds 3] [--steps 40] [--threads 2] [--policy both]
# Environment: DS_TRAIN (default ./ds-train), DATA (default /usr/share/common-licenses).
set -euo pipefail
rounds=3 steps=40 threads=2 policy=both
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    *) echo "bench-precision.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $policy in
both) pols="default PASSIVE" ;;
default) pols=default ;;
passive) pols=PASSIVE ;;
*) echo "bench-precision.sh: --policy: expected both, default or passive, found $policy" >&2; exit 2 ;;
esac
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
    for pol in $pols; do
        for p in fp32 bf16 fp16 bf16-f32buf; do
            cfg=${p%-f32buf} act16=1
            [ "$p" = bf16-f32buf ] && act16=0
            line=$( (if [ "$pol" = default ]; then unset OMP_WAIT_POLICY; else export OMP_WAIT_POLICY=$pol; fi
                DS_ACT16=$act16 OMP_NUM_THREADS=$threads "$train" "$root/share/configs/gpt-tiny.json" \
                    --config "$tmp/$cfg.json" --data "$data" --steps "$steps" --quiet) | grep '^done:')
            tps=$(echo "$line" | sed -n 's/.*ms\/step, \([0-9.]*\) tokens\/s.*/\1/p')
            echo "round $r $pol $p $tps tokens/s  ($line)"
            echo "$pol $p $tps" >> "$tmp/all"
        done
    done
done
python3 - "$tmp/all" <<'PYEOF'
import statistics, sys
v = {}
for l in open(sys.argv[1]):
    pol, p, t = l.split()
    v.setdefault(pol, {}).setdefault(p, []).append(float(t))
for pol in ('default', 'PASSIVE'):
    if pol not in v:
        continue
    print('OMP_WAIT_POLICY %s:' % ('unset (spin)' if pol == 'default' else pol))
    base = statistics.median(v[pol]['fp32'])
    for p in ('fp32', 'bf16', 'fp16', 'bf16-f32buf'):
        m = statistics.median(v[pol][p])
        print('  %-11s median %8.0f tokens/s  ratio to fp32 %.2f' % (p, m, m / base))
PYEOF
