#!/usr/bin/env bash
# bench-comm.sh: all-reduce bandwidth of the CPU communicator (1 MiB to
# 256 MiB, beside a memcpy of the same size in the same run) with 2 and 4
# ranks on this machine, over shared memory and over loopback TCP, then
# data-parallel ds-train tokens/s at 1, 2 and 4 ranks with the same global
# batch, over each.  See scripts/README.md.
#
# Usage: scripts/bench-comm.sh [--comm-ranks "2 4"] [--max-mib M] [--reps R]
#          [--ranks "1 2 4"] [--steps N] [--warmup W] [--net NET.json]
#          [--config DS.json] [--data FILE] [--threads T] [--skip-comm]
#          [--skip-train] [--transports "shm tcp"] [--keep]
#
#   --comm-ranks     world sizes for tests/bench_comm (default "2 4")
#   --max-mib M      largest all-reduce, MiB (default 256; sizes 1, 4, 16, ...)
#   --reps R         timed all-reduces per size (default 7; half for >= 64 MiB,
#                    a third for 256 MiB, at least 3)
#   --ranks          world sizes for ds-train (default "1 2 4"; each must
#                    divide the global batch)
#   --steps N        optimizer steps per ds-train run (default 15)
#   --warmup W       first W steps not measured (default 3)
#   --net/--config   default share/configs/gpt-tiny.json / gpt-tiny.ds.json;
#                    the global batch is the config's train_batch_size, else
#                    micro batch x accumulation (8 for gpt-tiny); with W ranks
#                    a temporary config sets train_batch_size to it and
#                    train_micro_batch_size_per_gpu to batch / W (accumulation 1)
#   --data FILE      training bytes (default: /usr/share/common-licenses/*)
#   --threads T      OMP_NUM_THREADS of every ds-train rank (default: what
#                    ds-launch sets, cores / local ranks, at least 1)
#   --transports     the links between ranks: shm (shared memory, the default
#                    of ranks on one host) and/or tcp (DS_COMM_SHM=0);
#                    default "shm tcp"
#   --keep           keep the work folder (configs, logs)
#
# Environment: DS_LAUNCH (default ./ds-launch), DS_TRAIN (default ./ds-train).
# tests/bench_comm always runs with OMP_NUM_THREADS=1.  Everything runs on one
# machine: with fewer cores than ranks the ranks share cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

comm_ranks="2 4"
max_mib=256
reps=7
ranks="1 2 4"
steps=15
warmup=3
net=$root/share/configs/gpt-tiny.json
config=$root/share/configs/gpt-tiny.ds.json
data=
threads=
skip_comm=0
skip_train=0
keep=0
transports="shm tcp"

die() { echo "bench-comm: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --comm-ranks) comm_ranks=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --net) net=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --skip-comm) skip_comm=1; shift ;;
    --skip-train) skip_train=1; shift ;;
    --keep) keep=1; shift ;;
    --transports) transports=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[ "$steps" -gt "$warmup" ] 2>/dev/null || die "--steps must be larger than --warmup"
for tr in $transports; do
    case $tr in shm|tcp) ;; *) die "--transports: $tr: expected shm or tcp" ;; esac
done
[ -n "$transports" ] || die "--transports: expected shm and/or tcp"
command -v python3 >/dev/null || die "python3 is needed to read the logs"

launch=${DS_LAUNCH:-$root/ds-launch}
[ -x "$launch" ] || die "no ds-launch at $launch (build it, or set DS_LAUNCH)"
ncpu=$(nproc)

work=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-comm.XXXXXX")
if [ "$keep" = 1 ]; then
    echo "bench-comm: keeping work files in $work"
else
    trap 'rm -rf "$work"' EXIT
fi

max_ranks=0
for w in $comm_ranks $ranks; do [ "$w" -gt "$max_ranks" ] && max_ranks=$w; done
echo "bench-comm: $ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), one machine; links: $transports"
if [ "$max_ranks" -gt "$ncpu" ]; then
    echo "bench-comm: NOTE: this machine has $ncpu cores: runs with more than $ncpu ranks oversubscribe it (ranks share cores), so their numbers are lower bounds"
fi

# ---- all-reduce bandwidth
if [ "$skip_comm" = 0 ]; then
    bc=$root/tests/bench_comm
    if [ ! -x "$bc" ]; then
        echo "bench-comm: building tests/bench_comm ..." >&2
        make -C "$root" tests/bench_comm >&2 || die "make tests/bench_comm failed"
    fi
    for w in $comm_ranks; do
        for tr in $transports; do
            echo
            over=
            [ "$w" -gt "$ncpu" ] && over=", oversubscribed: $w ranks on $ncpu cores"
            echo "== all-reduce, $w ranks, $tr (OMP_NUM_THREADS=1$over)"
            "$launch" --num_gpus "$w" --master_port 0 --export OMP_NUM_THREADS=1 \
                --export "DS_COMM_SHM=$([ "$tr" = shm ] && echo 1 || echo 0)" \
                "$bc" "$max_mib" "$reps" 2> >(grep -v 'using free port' >&2) | sed 's/^\[rank 0\] //'
        done
    done
fi

# ---- data-parallel ds-train
if [ "$skip_train" = 0 ]; then
    ds=${DS_TRAIN:-$root/ds-train}
    [ -x "$ds" ] || die "no ds-train at $ds (build it, or set DS_TRAIN)"
    [ -f "$net" ] || die "no network file $net"
    [ -f "$config" ] || die "no config file $config"
    if [ -z "$data" ]; then
        data=$work/common-licenses.txt
        (export LC_ALL=C; cat /usr/share/common-licenses/*) > "$data" 2>/dev/null || true
        [ -s "$data" ] || die "no /usr/share/common-licenses to use as data: pass --data FILE"
    fi
    [ -s "$data" ] || die "no data file $data"
    batch=$(python3 -c '
import json,sys
c=json.load(open(sys.argv[1]))
print(int(c.get("train_batch_size") or int(c.get("train_micro_batch_size_per_gpu",1))*int(c.get("gradient_accumulation_steps",1))))' "$config")
    echo
    echo "== ds-train data parallel: $(basename "$net"), $(basename "$config"), global batch $batch," \
         "$steps steps (median tokens/s after $warmup warm-up), sequential data," \
         "threads/rank: ${threads:-ds-launch default (cores / ranks)}"
    results=()
    for w in $ranks; do
      for tr in $transports; do
        [ "$w" = 1 ] && [ "$tr" != "${transports%% *}" ] && continue # one rank has no links
        [ $((batch % w)) = 0 ] || die "$w ranks do not divide the global batch $batch"
        cfg=$work/ds-$w.json
        python3 -c '
import json,sys
c=json.load(open(sys.argv[1])); b=int(sys.argv[2]); w=int(sys.argv[3])
c["train_batch_size"]=b; c["train_micro_batch_size_per_gpu"]=b//w; c["gradient_accumulation_steps"]=1
json.dump(c,open(sys.argv[4],"w"),indent=1)' "$config" "$batch" "$w" "$cfg"
        exports=()
        [ -n "$threads" ] && exports=(--export "OMP_NUM_THREADS=$threads")
        exports+=(--export "DS_COMM_SHM=$([ "$tr" = shm ] && echo 1 || echo 0)")
        echo "bench-comm: ds-launch --num_gpus $w ds-train ... (micro batch $((batch / w)), $tr)" >&2
        rc=0
        "$launch" --num_gpus "$w" --master_port 0 "${exports[@]}" \
            "$ds" "$net" --config "$cfg" --data "$data" --steps "$steps" \
            --data-order sequential --log-json "$work/log-$w-$tr.jsonl" --force \
            > "$work/out-$w-$tr.txt" 2>&1 || rc=$?
        if [ "$rc" != 0 ] || [ ! -s "$work/log-$w-$tr.jsonl" ]; then
            echo "bench-comm: ds-train with $w ranks ($tr) failed (exit $rc); its output:" >&2
            tail -n 20 "$work/out-$w-$tr.txt" >&2
            continue
        fi
        t=$(grep -m1 -o 'kernels, [0-9]* thread' "$work/out-$w-$tr.txt" | grep -o '[0-9]*' || echo '?')
        link=$tr
        [ "$w" = 1 ] && link=-
        if [ "$w" -gt 1 ] && ! grep -q "comm: .*to rank 1 $([ "$tr" = shm ] && echo 'shared memory' || echo tcp)" \
            "$work/out-$w-$tr.txt"; then
            link="$tr?" # ds-train's comm line did not say so
        fi
        results+=("$w" "$t" "$link" "$work/log-$w-$tr.jsonl")
      done
    done
    [ "${#results[@]}" -gt 0 ] || die "no ds-train run succeeded"
    python3 - "$warmup" "$ncpu" "${results[@]}" <<'EOF'
import json, statistics, sys
warmup, ncpu = int(sys.argv[1]), int(sys.argv[2])
a = sys.argv[3:]
rows = []
for i in range(0, len(a), 4):
    w, t, link, path = int(a[i]), a[i + 1], a[i + 2], a[i + 3]
    steps = [json.loads(l) for l in open(path) if l.strip()]
    meas = [s for s in steps if s["step"] > warmup]
    tps = statistics.median(s["tokens_per_s"] for s in meas)
    ms = statistics.median(s["ms"] for s in meas)
    last = steps[-1]
    rows.append((w, t, link, tps, ms, last.get("allreduce_calls"), last.get("allreduce_bytes"), last["loss"]))
base = next((r[3] for r in rows if r[0] == 1), None)
print()
print("%5s %12s %6s %10s %10s %8s %16s %16s %11s" % ("ranks", "threads/rank", "links", "tokens/s", "ms/step",
      "vs_1", "allreduce/step", "allreduce_MB", "final_loss"))
for w, t, link, tps, ms, calls, nbytes, loss in rows:
    ratio = "%.2fx" % (tps / base) if base else "-"
    note = "  (oversubscribed: %d ranks on %d cores)" % (w, ncpu) if w > ncpu else ""
    print("%5d %12s %6s %10.0f %10.1f %8s %16s %16s %11.5f%s" % (w, t, link, tps, ms, ratio, calls,
          "%.1f" % (nbytes / 1e6) if nbytes is not None else "-", loss, note))
EOF
fi
