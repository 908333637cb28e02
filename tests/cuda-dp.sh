#!/usr/bin/env bash
# Data parallelism on the CUDA backend through its NCCL communicator, run on the CPU emulation of
# CUDA and NCCL (tests/cuda_emu: libds-cuda-emu.so and libnccl-emu.so, built here with g++; no
# GPU or CUDA toolkit needed), with stream work deferred until something waits for it (a
# missing stream wait shows as wrong losses). What it checks is the engine's GPU data-parallel
# path: the NCCL bootstrap through the rendezvous store, one device per rank from LOCAL_RANK, gradient buckets
# and ZeRO partitions over device memory (all-reduce, uneven reduce-scatter/all-gather), the
# overlap_comm thread, fp16/bf16, the overflow skip, checkpoints, the fused attention kernels
# with TF32 (against the materialized ones and across ranks), and the errors. Not the GPU:
# scripts/gpu-check.sh does that on a lent one. Skipped (exit 77) without python3 and g++.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))
B=${DS_BUILD_DIR:-.}
SRC=$(cd "$(dirname "$0")/.." && pwd)
command -v python3 >/dev/null && command -v g++ >/dev/null || { echo "no python3 or g++: skipping"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-cuda-dp.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
sh "$SRC/tests/cuda_emu/build.sh" "$T/emu" >build.log 2>&1 || { cat build.log; notok "building the emulation"; tap_summary; exit 1; }
export DS_CUDA_BACKEND=$T/emu/libds-cuda-emu.so DS_NCCL_LIBRARY=$T/emu/libnccl-emu.so
export DS_CUDA_TF32=0 DS_NCCL_EMU_TIMEOUT=60 # full fp32 products: comparable with the CPU to ~1e-6
export DS_CUDA_EMU_DEFER=1 # stream work runs only when waited for: a missing wait gives wrong numbers

head -c 60000 /usr/share/common-licenses/GPL-3 > text.txt 2>/dev/null || python3 -c "
import random; random.seed(1); open('text.txt','w').write(' '.join(random.choice(['the','data','rank','sum','mean']) for _ in range(12000)))"
cat > net.json <<'EOF'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 32},
 "layers": [{"type": "embedding", "name": "wte", "dim": 32}, {"type": "position_embedding", "name": "wpe"},
  {"type": "repeat", "name": "h", "count": 2, "layers": [
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"}, {"type": "attention", "name": "attn", "heads": 4}]},
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"}, {"type": "linear", "name": "fc", "out": 128},
    {"type": "gelu", "approximate": "tanh"}, {"type": "linear", "name": "proj", "out": 32}]}]},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
EOF
opt='"optimizer": {"type": "AdamW", "params": {"lr": 0.003}}, "gradient_clipping": 1.0, "seed": 7'
cfg() { echo "{\"train_batch_size\": 8, $1, $opt}" > "$2.json"; }
cfg '"train_micro_batch_size_per_gpu": 8' mb8
cfg '"train_micro_batch_size_per_gpu": 4, "allreduce_bucket_size": 5000' z0
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1, "reduce_bucket_size": 3001, "allgather_bucket_size": 5003}' z1
cfg '"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 1, "overlap_comm": true, "reduce_bucket_size": 3001}' z1o
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "reduce_bucket_size": 3001, "allgather_bucket_size": 5003}' z2
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "reduce_bucket_size": 3001, "allgather_partitions": false, "reduce_scatter": false}' z2b
cfg '"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2, "overlap_comm": true, "reduce_bucket_size": 3001}' z2o
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "overlap_comm": true, "reduce_bucket_size": 3001}, "fp16": {"enabled": true, "initial_scale_power": 10}' f16
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "overlap_comm": true, "reduce_bucket_size": 3001}, "bf16": {"enabled": true}' b16
# stage 3: every tensor gathered when its layer runs (persistence 0), on the overlap_comm thread
# (stage 3's default) or inline; then the default persistence (this net's tensors all persist)
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3, "reduce_bucket_size": 3001, "stage3_param_persistence_threshold": 0}' z3
cfg '"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 3, "overlap_comm": false, "reduce_bucket_size": 3001, "stage3_param_persistence_threshold": 0}' z3n
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3, "reduce_bucket_size": 3001}' z3p
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3, "reduce_bucket_size": 3001, "stage3_param_persistence_threshold": 2000}, "bf16": {"enabled": true}' b16z3
cfg '"train_micro_batch_size_per_gpu": 4, "fp16": {"enabled": true, "initial_scale_power": 10}' f16inf
# progressive_layer_drop from step 3 (scale_act on the branches, dropped layers skipped), ZeRO-2
PLD='"progressive_layer_drop": {"enabled": true, "theta": 0.5, "gamma": 0.5}'
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "reduce_bucket_size": 3001}, '"$PLD" pld
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "overlap_comm": true, "reduce_bucket_size": 3001}, "bf16": {"enabled": true}, '"$PLD" pldb
common=(net.json --data text.txt --steps 8 --data-order sequential --quiet)
launch() { "$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$@"; }

"$B/ds-train" "${common[@]}" --config mb8.json --device cuda --log-json cuda1.jsonl >out1 2>err1 \
    && ok "1 GPU (emulated) x micro-batch 8" || notok "1 GPU: $(head -c 300 err1)"
"$B/ds-train" "${common[@]}" --config mb8.json --device cpu --log-json cpu1.jsonl >/dev/null 2>errc \
    && ok "1 CPU rank x micro-batch 8" || notok "1 CPU rank: $(head -c 300 errc)"
for c in z0 z1 z1o z2 z2b z2o z3 z3n z3p f16 b16 b16z3 pld pldb; do
    launch "$B/ds-train" "${common[@]}" --config $c.json --device cuda --log-json "$c.cuda.jsonl" >"$c.out" 2>"$c.err" \
        && ok "2 GPUs (emulated), $c: $(tr -d '\n' < $c.json | sed 's/.*"train_micro_batch_size_per_gpu"/micro-batch/; s/, "optimizer".*//')" \
        || notok "2 GPUs, $c: $(head -c 400 $c.err)"
done
# 3 GPUs: 34688 parameters do not split evenly (partitions are padded to 16 x 3): uneven blocks
echo "{\"train_batch_size\": 12, \"train_micro_batch_size_per_gpu\": 12, $opt}" > mb12.json
echo "{\"train_batch_size\": 12, \"train_micro_batch_size_per_gpu\": 4, \"zero_optimization\": {\"stage\": 2, \"overlap_comm\": true, \"reduce_bucket_size\": 3001}, $opt}" > z2x3.json
"$B/ds-train" "${common[@]}" --config mb12.json --device cuda --log-json cuda1x12.jsonl >/dev/null 2>err12 ||
    notok "1 GPU x micro-batch 12: $(head -c 300 err12)"
"$B/ds-launch" --master_port 0 --num_gpus 3 --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config z2x3.json \
    --device cuda --log-json z2x3.cuda.jsonl >/dev/null 2>errx3 && ok "3 GPUs (emulated), ZeRO-2 + overlap_comm, uneven partitions" ||
    notok "3 GPUs: $(head -c 400 errx3)"
for c in z2 f16 b16 b16z3 pld pldb; do
    launch "$B/ds-train" "${common[@]}" --config $c.json --device cpu --log-json "$c.cpu.jsonl" >/dev/null 2>"$c.cpuerr" \
        || notok "2 CPU ranks, $c: $(head -c 300 $c.cpuerr)"
done

check() { # name, python condition over L (dict of run -> list of losses)
    if python3 - "$2" <<'EOF' 2>pyerr; then ok "$1"; else notok "$1: $(head -c 400 pyerr)"; fi
import glob, json, sys
L = {}
for f in glob.glob("*.jsonl"):
    L[f[:-6]] = [json.loads(l)["loss"] for l in open(f) if '"loss"' in l]
def rel(a, b):
    assert len(a) == len(b) == 8, (len(a), len(b))
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))
ok = eval(sys.argv[1])
if not ok:
    print({k: v[:3] for k, v in L.items()}, file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}
# fp32 across world sizes: the same global batch, only the summation order differs
check "the emulated GPU follows the CPU backend, 1 rank, fp32 (8 steps, <= 1e-5)" 'rel(L["cuda1"], L["cpu1"]) <= 1e-5'
for c in z0 z1 z1o z2 z2b z2o z3 z3n z3p; do
    check "2 GPUs $c over NCCL give the 1-GPU losses (<= 1e-5)" "rel(L['$c.cuda'], L['cuda1']) <= 1e-5"
done
check "2 GPUs ZeRO-3 give ZeRO-2's losses exactly (gathered weights are the same bits)" \
    'L["z3.cuda"] == L["z2.cuda"] and L["z3p.cuda"] == L["z2.cuda"]'
check "2 GPUs ZeRO-2 follow 2 CPU ranks ZeRO-2 (<= 1e-5)" 'rel(L["z2.cuda"], L["z2.cpu"]) <= 1e-5'
check "3 GPUs ZeRO-2 (uneven partitions) give the 1-GPU losses of the same batch (<= 1e-5)" 'rel(L["z2x3.cuda"], L["cuda1x12"]) <= 1e-5'
# 16-bit: both backends round the same values at every layer boundary; a last-bit difference
# in a sum can flip a rounding (bf16: 2^-8 relative), which AdamW carries forward: bounds of a
# few roundings, far below the 2-3% that separates 16-bit from fp32 runs (tests/mp.sh)
check "2 GPUs fp16 + ZeRO-2 + overlap_comm follow 2 CPU ranks (<= 2e-3)" 'rel(L["f16.cuda"], L["f16.cpu"]) <= 2e-3'
check "2 GPUs bf16 + ZeRO-2 + overlap_comm follow 2 CPU ranks (<= 1e-2)" 'rel(L["b16.cuda"], L["b16.cpu"]) <= 1e-2'
check "2 GPUs bf16 + ZeRO-3 (2-byte weights gathered) follow 2 CPU ranks (<= 1e-2) and ZeRO-2 exactly" \
    'rel(L["b16z3.cuda"], L["b16z3.cpu"]) <= 1e-2 and L["b16z3.cuda"] == L["b16.cuda"]'
check "2 GPUs with progressive_layer_drop follow 2 CPU ranks: fp32 (<= 1e-5), bf16 (<= 1e-2)" \
    'rel(L["pld.cuda"], L["pld.cpu"]) <= 1e-5 and rel(L["pldb.cuda"], L["pldb.cpu"]) <= 1e-2 and L["pld.cuda"] != L["z2.cuda"]'
grep -q "backend cuda:0 (CPU emulation of CUDA" z0.out && ok "rank 0 logs its device" || notok "device line: $(head -3 z0.out)"

# TF32 GEMMs and the fused attention kernels (head size 16: two heads of 32), 1 GPU against
# 2 GPUs with ZeRO-2 and overlap_comm: the per-sample math is the same, the sums' order differs
# (measured 7.6e-7); against the materialized path, whose products round differently: 4.1e-6
sed 's/"heads": 4/"heads": 2/' net.json > net16.json
c16=(net16.json --data text.txt --steps 8 --data-order sequential)
cfg '"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "overlap_comm": true, "reduce_bucket_size": 3001}' z2f
DS_CUDA_TF32=1 DS_CUDA_FLASH=1 "$B/ds-train" "${c16[@]}" --config mb8.json --device cuda --log-json fa1.jsonl >fa1.out 2>fa1.err &&
    DS_CUDA_TF32=1 DS_CUDA_FLASH=1 launch "$B/ds-train" "${c16[@]}" --quiet --config z2f.json --device cuda --log-json fa2.jsonl >/dev/null 2>fa2.err ||
    notok "fused attention runs: $(head -c 300 fa1.err) $(head -c 300 fa2.err)"
DS_CUDA_TF32=1 "$B/ds-train" "${c16[@]}" --config mb8.json --device cuda --log-json mat1.jsonl >mat1.out 2>&1 ||
    notok "materialized run: $(head -c 300 mat1.out)"
grep -q "TF32 GEMMs, fused TF32 attention" fa1.out && grep -q "TF32 GEMMs, materialized attention" mat1.out &&
    ok "TF32 on: DS_CUDA_FLASH=1 runs the fused attention (by default the materialized one)" || notok "paths: $(head -1 fa1.out) $(head -1 mat1.out)"
check "1 GPU, TF32: fused and materialized attention give the same losses to TF32's reach (0 < diff <= 1e-4)" '0 < rel(L["fa1"], L["mat1"]) <= 1e-4'
check "2 GPUs ZeRO-2 + overlap_comm with TF32 and fused attention give the 1-GPU losses (<= 1e-5)" 'rel(L["fa2"], L["fa1"]) <= 1e-5'


# overflow: an inf in rank 1's gradient at step 3 skips that step on both GPUs
launch "$B/ds-train" "${common[@]}" --config f16inf.json --device cuda --inject-grad-inf 3:1 \
    --log-json 'inf{rank}.jsonl' >/dev/null 2>errinf || notok "inject-grad-inf: $(head -c 300 errinf)"
if python3 - <<'EOF' 2>pyerr; then ok "fp16 on 2 GPUs: an inf in rank 1's gradient skips step 3 on both ranks"; else notok "overflow skip: $(head -c 300 pyerr)"; fi
import json
for r in (0, 1):
    recs = [json.loads(l) for l in open(f"inf{r}.jsonl") if '"step"' in l]
    sk = [x["step"] for x in recs if x.get("skipped")]
    assert sk == [3], (r, sk)
EOF

# checkpoint: ZeRO-2 on 2 GPUs, 4 steps + resume to 8 == 8 straight, to the last bit
launch "$B/ds-train" "${common[@]/8/4}" --config z2.json --device cuda --save ck --log-json a.jsonl >/dev/null 2>errs1 &&
launch "$B/ds-train" "${common[@]}" --config z2.json --device cuda --load ck --log-json b.jsonl >/dev/null 2>errs2 ||
    notok "save/resume: $(head -c 300 errs1) $(head -c 300 errs2)"
if python3 - <<'EOF' 2>pyerr; then ok "ZeRO-2 on 2 GPUs: 4 steps + resume + 4 gives the straight run's losses bit for bit"; else notok "resume: $(head -c 300 pyerr)"; fi
import json
f = lambda n: [json.loads(l)["loss"] for l in open(n) if '"loss"' in l]
assert f("a.jsonl") + f("b.jsonl") == f("z2.cuda.jsonl"), (f("a.jsonl") + f("b.jsonl"), f("z2.cuda.jsonl"))
EOF

# the config's "device" picks the backend when no flag does; a flag wins
echo '{"train_batch_size": 8, "device": "cuda"}' > dev.json
"$B/ds-train" net.json --data text.txt --steps 1 --config dev.json >dev.out 2>&1 &&
    grep -q "backend cuda:0 (CPU emulation" dev.out && ok 'config "device": "cuda" trains on the GPU' ||
    notok "config device: $(head -c 300 dev.out)"
"$B/ds-train" net.json --data text.txt --steps 1 --config dev.json --device cpu >dev2.out 2>&1 &&
    grep -q "backend cpu (" dev2.out && ok '--device cpu overrides the config'"'"'s "device"' ||
    notok "--device over config: $(head -c 300 dev2.out)"

# ZeRO-Offload is accepted on the cpu backend (tests/zero.sh) and refused on a GPU, naming it
echo '{"train_batch_size": 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}' > off.json
echo '{"train_batch_size": 8, "zero_optimization": {"stage": 1, "cpu_offload": true}}' > offold.json
if "$B/ds-train" net.json --data text.txt --steps 1 --config off.json --device cuda >/dev/null 2>erroff ||
   "$B/ds-train" net.json --data text.txt --steps 1 --config offold.json --device cuda >/dev/null 2>erroffold; then
    notok "offload_optimizer on the GPU must be refused"
elif grep -q "off.json: zero_optimization.offload_optimizer.device=cpu is not supported yet on backend cuda" erroff &&
     grep -q "offold.json: zero_optimization.cpu_offload=true is not supported yet on backend cuda" erroffold
then ok "offload_optimizer cpu / cpu_offload on the GPU: refused, naming the key and the backend"
else notok "offload on cuda: $(head -c 300 erroff) $(head -c 300 erroffold)"; fi
echo '{"train_batch_size": 8, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}' > offp.json
if "$B/ds-train" net.json --data text.txt --steps 1 --config offp.json --device cuda >/dev/null 2>erroffp; then
    notok "offload_param on the GPU must be refused"
elif grep -q "offp.json: zero_optimization.offload_param.device=cpu is not supported yet on backend cuda" erroffp
then ok "offload_param cpu (stage 3) on the GPU: refused, naming the key and the backend"
else notok "offload_param on cuda: $(head -c 300 erroffp)"; fi

# ranks that do not agree on the backend (rank 0 on the GPU, rank 1 on the CPU): both stop
if launch sh -c 'if [ "$RANK" = 0 ]; then d=cuda; else d=cpu; fi; exec "$0" "$@" --device $d' "$B/ds-train" \
    "${common[@]}" --config z0.json >/dev/null 2>errmix; then notok "mixed cuda and cpu ranks must fail"
elif grep -q "the ranks do not agree on the backend" errmix; then ok "ranks on different backends: an error, not a hang"
else notok "mixed backends: $(head -c 400 errmix)"; fi

# errors: a rank's LOCAL_RANK beyond the visible devices; no NCCL (every rank stops, none hangs)
if LOCAL_RANK=3 CUDA_VISIBLE_DEVICES=0,1 "$B/ds-train" "${common[@]}" --config mb8.json --device cuda >/dev/null 2>errl; then
    notok "LOCAL_RANK 3 of 2 devices must fail"
elif grep -q "LOCAL_RANK=3 but this process sees 2 CUDA device(s)" errl; then ok "LOCAL_RANK beyond the visible devices: named"
else notok "LOCAL_RANK error: $(head -c 300 errl)"; fi
if DS_NCCL_LIBRARY=$T/nonexistent/libnccl.so.2 timeout 120 "$B/ds-launch" --master_port 0 --num_gpus 2 \
    --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config z0.json --device cuda >/dev/null 2>errn; then
    notok "2 GPUs without NCCL must fail"
elif grep -q "NCCL: cannot load .*nonexistent/libnccl.so.2" errn && ! grep -q "timed out\|Terminated" errn; then
    ok "2 GPUs without NCCL: a clear error, no hang"
else notok "no NCCL: $(head -c 400 errn)"; fi
tap_summary
