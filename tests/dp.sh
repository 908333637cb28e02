#!/usr/bin/env bash
# Data-parallel ds-train under ds-launch on one machine: 4 ranks x micro-batch 2, 1 rank x
# micro-batch 8 and 1 rank x micro-batch 2 x 4 accumulation steps give the same losses over 20
# steps (sequential data, fp32, within 1e-5 relative); the all-reduce count per effective batch
# equals the number of gradient buckets; 2 ranks agree too; the ranks' links are shared memory,
# and TCP ones (DS_COMM_SHM=0) give the same bits. One "ok"/"not ok" line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))
B=${DS_BUILD_DIR:-.}
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-dp.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1

head -c 60000 /usr/share/common-licenses/GPL-3 > text.txt 2>/dev/null || python3 -c "
import random; random.seed(1); open('text.txt','w').write(' '.join(random.choice(['the','data','rank','sum','mean']) for _ in range(12000)))"
cat > net.json <<'EOF'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 32},
 "layers": [{"type": "embedding", "name": "wte", "dim": 32}, {"type": "position_embedding", "name": "wpe"},
  {"type": "repeat", "name": "h", "count": 1, "layers": [
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"}, {"type": "attention", "name": "attn", "heads": 4}]},
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"}, {"type": "linear", "name": "fc", "out": 128},
    {"type": "gelu", "approximate": "tanh"}, {"type": "linear", "name": "proj", "out": 32}]}]},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
EOF
opt='"optimizer": {"type": "AdamW", "params": {"lr": 0.003}}, "gradient_clipping": 1.0, "seed": 7'
echo "{\"train_batch_size\": 8, \"train_micro_batch_size_per_gpu\": 8, $opt}" > mb8.json
echo "{\"train_batch_size\": 8, \"train_micro_batch_size_per_gpu\": 2, \"allreduce_bucket_size\": 5000, $opt}" > mb2.json
echo "{\"train_batch_size\": 8, \"train_micro_batch_size_per_gpu\": 4, \"gradient_predivide_factor\": 2.0, $opt}" > mb4.json
echo "{\"train_batch_size\": 8, \"train_micro_batch_size_per_gpu\": 2, \"prescale_gradients\": true, $opt}" > pre.json
echo "{\"train_batch_size\": 8, \"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 4, $opt}" > gas4.json
common=(net.json --data text.txt --steps 20 --data-order sequential --quiet)

"$B/ds-train" "${common[@]}" --config mb8.json --log-json one.jsonl >/dev/null 2>err1 \
    && ok "1 rank x micro-batch 8" || notok "1 rank x micro-batch 8: $(head -c 300 err1)"
"$B/ds-train" "${common[@]}" --config gas4.json --log-json gas.jsonl >/dev/null 2>err2 \
    && ok "1 rank x micro-batch 2 x 4 accumulation steps" || notok "accumulation run: $(head -c 300 err2)"
"$B/ds-launch" --master_port 0 --num_gpus 4 --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config mb2.json \
    --log-json four.jsonl >four.out 2>err4 && ok "ds-launch: 4 ranks x micro-batch 2" || notok "4 ranks: $(head -c 300 err4)"
"$B/ds-launch" --master_port 0 --num_gpus 4 --export OMP_NUM_THREADS=1 --export DS_COMM_SHM=0 "$B/ds-train" "${common[@]}" \
    --config mb2.json --log-json tcp.jsonl >tcp.out 2>err6 && ok "ds-launch: 4 ranks over TCP (DS_COMM_SHM=0)" \
    || notok "4 ranks over TCP: $(head -c 300 err6)"
if grep -qx '\[rank 0\] comm: cpu ring of 4: to rank 1 shared memory, from rank 3 shared memory' four.out &&
    grep -qx '\[rank 0\] comm: cpu ring of 4: to rank 1 tcp (DS_COMM_SHM=0 here), from rank 3 tcp (DS_COMM_SHM=0 here)' tcp.out; then
    ok "ranks of one host link through shared memory, or TCP with DS_COMM_SHM=0 (rank 0's comm line)"
else notok "comm lines: $(grep -h comm: four.out tcp.out | head -c 300)"; fi
"$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config mb4.json \
    --log-json two.jsonl >/dev/null 2>err3 && ok "ds-launch: 2 ranks x micro-batch 4, gradient_predivide_factor 2" || notok "2 ranks: $(head -c 300 err3)"
"$B/ds-launch" --master_port 0 --num_gpus 4 --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config pre.json \
    --log-json pre.jsonl >/dev/null 2>err5 && ok "ds-launch: 4 ranks, prescale_gradients" || notok "prescale: $(head -c 300 err5)"

# --no_ssh: one ds-launch per "node" (here both on this machine), sharing DS_JOB_SECRET
printf '127.0.0.1 slots=1\n127.0.0.2 slots=1\n' > hosts2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DS_JOB_SECRET=dp-test-secret "$B/ds-launch" -H hosts2 --no_ssh --node_rank 1 --master_addr 127.0.0.1 \
    --master_port "$port" --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config mb4.json >/dev/null 2>errn1 &
n1=$!
DS_JOB_SECRET=dp-test-secret "$B/ds-launch" -H hosts2 --no_ssh --node_rank 0 --master_addr 127.0.0.1 \
    --master_port "$port" --export OMP_NUM_THREADS=1 "$B/ds-train" "${common[@]}" --config mb4.json \
    --log-json nossh.jsonl >/dev/null 2>errn0
rc0=$?
wait $n1
rc1=$?
if [ $rc0 = 0 ] && [ $rc1 = 0 ]; then ok "--no_ssh: two launchers (--node_rank 0 and 1) train one job"
else notok "--no_ssh: exit $rc0/$rc1: $(head -c 300 errn0) $(head -c 300 errn1)"; fi
if "$B/ds-launch" -H hosts2 --no_ssh --node_rank 0 --master_addr 127.0.0.1 true 2>errs; then
    notok "--no_ssh across nodes without DS_JOB_SECRET must fail"
elif grep -q "DS_JOB_SECRET" errs; then ok "--no_ssh across nodes without a shared DS_JOB_SECRET is refused"
else notok "--no_ssh without a secret: $(head -c 300 errs)"; fi
# a taken master port: the rendezvous says so
if python3 - "$B" <<'EOF'; then ok "a taken master port gives a clear error naming it"; else notok "taken port"; fi
import socket, subprocess, sys
b = sys.argv[1]
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1); port = s.getsockname()[1]
r = subprocess.run([b + "/ds-launch", "--num_gpus", "2", "--master_port", str(port), "--export", "OMP_NUM_THREADS=1",
                    b + "/ds-train", "net.json", "--config", "mb2.json", "--data", "text.txt", "--steps", "2", "--quiet"],
                   capture_output=True, text=True, timeout=120)
sys.exit(0 if r.returncode != 0 and str(port) in r.stderr and "Address already in use" in r.stderr else 1)
EOF

check() { # name, python condition over L (dict of run -> list of records)
    if python3 - "$2" <<'EOF' 2>pyerr; then ok "$1"; else notok "$1: $(head -c 300 pyerr)"; fi
import json, sys
L = {}
for k in ("one", "gas", "four", "two", "pre", "nossh", "tcp"):
    try:
        L[k] = [json.loads(l) for l in open(k + ".jsonl")]
    except OSError:
        L[k] = []
def same(a, b, tol=1e-5):
    return len(L[a]) == len(L[b]) == 20 and all(abs(x["loss"] - y["loss"]) <= tol * abs(y["loss"]) for x, y in zip(L[a], L[b]))
ok = eval(sys.argv[1])
if not ok:
    print({k: [round(r["loss"], 6) for r in v[:5]] for k, v in L.items()}, file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}
check "4 ranks x mb 2 give the losses of 1 rank x mb 8 (1e-5 relative)" 'same("four", "one")'
check "1 rank x mb 2 x 4 accumulation gives the same losses" 'same("gas", "one")'
check "2 ranks x mb 4 with predivide factor 2 give the same losses" 'same("two", "one")'
check "4 ranks with prescale_gradients give the same losses" 'same("pre", "one")'
check "--no_ssh, 2 launchers x mb 4 give the same losses" 'same("nossh", "one")'
check "4 ranks over TCP: the same losses and gradient norms as over shared memory, bit for bit" \
    'same("tcp", "four", 0) and [r["grad_norm"] for r in L["tcp"]] == [r["grad_norm"] for r in L["four"]]'
check "the loss goes down" 'L["four"][-1]["loss"] < L["four"][0]["loss"] - 0.5'
# 21984 padded gradient elements in buckets of 5000: 5 all-reduce calls per optimizer step
check "one bucketed all-reduce per effective batch: calls = buckets = 5, bytes = the flat gradient" \
    'all(r["allreduce_calls"] == 5 and r["allreduce_bytes"] == 21984 * 4 and r["world_size"] == 4 for r in L["four"])'
check "one process does no all-reduce" 'all(r["allreduce_calls"] == 0 for r in L["one"] + L["gas"])'

# ranks started by hand (as torchrun-style scripts do) with a bad launch: a WORLD_SIZE that is
# not a number (it trained alone, silently), a RANK outside the world, ranks that disagree on
# WORLD_SIZE, a RANK taken twice: each named, and the other ranks stop at once (they waited
# out the 300 s store timeout)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
launch_env=(env DS_JOB_SECRET=dp-hand MASTER_ADDR=127.0.0.1 OMP_NUM_THREADS=1)
"${launch_env[@]}" RANK=1 WORLD_SIZE=abc MASTER_PORT=$port "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>hand1
[ $? -ne 0 ] && grep -q 'WORLD_SIZE is "abc", not a valid value' hand1 && ok "WORLD_SIZE=abc: refused, named" ||
    notok "WORLD_SIZE=abc: $(head -c 300 hand1)"
"${launch_env[@]}" RANK=2 WORLD_SIZE=2 MASTER_PORT=$port "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>hand2
[ $? -ne 0 ] && grep -q 'RANK 2 is not in 0..1 (WORLD_SIZE 2)' hand2 && ok "RANK 2 of WORLD_SIZE 2: refused, named" ||
    notok "RANK 2 of 2: $(head -c 300 hand2)"
start=$(date +%s)
"${launch_env[@]}" RANK=0 WORLD_SIZE=2 MASTER_PORT=$port timeout 120 "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>ws0 &
"${launch_env[@]}" RANK=1 WORLD_SIZE=3 MASTER_PORT=$port timeout 120 "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>ws1
wait
took=$(( $(date +%s) - start ))
if grep -q 'rank 1: WORLD_SIZE is 3 here but 2 at rank 0' ws1 && grep -q 'rank 1 failed: WORLD_SIZE is 3 here but 2 at rank 0' ws0 &&
    [ "$took" -lt 30 ]; then ok "ranks that disagree on WORLD_SIZE: both stop at once (${took} s), naming it"
else notok "WORLD_SIZE mismatch (${took} s): $(head -c 300 ws0) / $(head -c 300 ws1)"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(date +%s)
"${launch_env[@]}" RANK=0 WORLD_SIZE=3 MASTER_PORT=$port timeout 120 "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>dup0 &
"${launch_env[@]}" RANK=1 WORLD_SIZE=3 MASTER_PORT=$port timeout 120 "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>dup1 &
sleep 1
"${launch_env[@]}" RANK=1 WORLD_SIZE=3 MASTER_PORT=$port timeout 120 "$B/ds-train" "${common[@]}" --config mb2.json >/dev/null 2>dup2
wait
took=$(( $(date +%s) - start ))
if grep -q 'RANK 1 is taken by another process of this job' dup2 && grep -q 'rank 1 failed: RANK 1 is taken' dup0 &&
    grep -q 'rank 1 failed: RANK 1 is taken' dup1 && [ "$took" -lt 30 ]; then
    ok "a RANK taken twice: refused, and the job's other ranks stop at once (${took} s)"
else notok "RANK taken twice (${took} s): $(head -c 200 dup0) / $(head -c 200 dup1) / $(head -c 200 dup2)"; fi

tap_summary
