#!/usr/bin/env bash
# Profiling from the outside: ds-train --prof_db on a known workload (the expected rows, the
# timers add up to the iteration), wall_clock_breakdown's lines, an existing database refused,
# two ranks under ds-launch writing one database, and ds-prof report/compare/export/plot
# against a fixture database built from tests/fixtures/prof-run.sql (through tests/sqlexec, so
# no sqlite3 CLI is needed), plus missing, corrupt and foreign files. One "ok"/"not ok" per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))
B=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
TESTDIR=${DS_TEST_DIR:-$(cd "$(dirname "$0")" && pwd)}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
if ! command -v python3 >/dev/null; then
    echo "python3 is needed to write .npy files and read JSON: skipping"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-prof.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
SQL="$B/tests/sqlexec"
q() { "$SQL" "$1" "$2" 2>&1; } # q DB SQL: the rows, '|'-separated
# is DESC GOT WANT
is() { if [ "$2" = "$3" ]; then ok "$1"; else notok "$1 (got \"$2\", want \"$3\")"; fi; }

# ---- a known workload: an MLP on features, 6 steps x 2 accumulation steps ------------------
python3 - <<'EOF'
import struct
def npy(path, dtype, shape, values):
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (dtype, ", ".join(map(str, shape)) + ("," if len(shape) == 1 else ""))
    hdr += " " * (63 - (len(hdr) + 10) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
        f.write(struct.pack("<%d%s" % (len(values), "f" if dtype == "<f4" else "q"), *values))
n = 256
npy("x.npy", "<f4", (n, 64), [((i * 37) % 101) / 101.0 - 0.5 for i in range(n * 64)])
npy("y.npy", "<i8", (n,), [i % 10 for i in range(n)])
EOF
cat > mlp.json <<'EOF'
{"input": {"type": "features", "dim": 64}, "layers": [{"type": "linear", "name": "fc1", "out": 256},
 {"type": "relu"}, {"type": "linear", "name": "fc2", "out": 10}], "loss": {"type": "cross_entropy"}}
EOF
echo '{"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 2, "steps_per_print": 2,
 "optimizer": {"type": "SGD", "params": {"lr": 0.05}}}' > ds.json
# (micro-batch 128: forwards long enough to show in the timers' 0.01 ms, on fast machines too)
echo '{"train_micro_batch_size_per_gpu": 128, "gradient_accumulation_steps": 2, "steps_per_print": 2,
 "wall_clock_breakdown": true, "optimizer": {"type": "SGD", "params": {"lr": 0.05}}}' > wcb.json
mlp=(mlp.json --data x.npy --labels y.npy --steps 6 --data-order sequential --seed 3)

"$B/ds-train" "${mlp[@]}" --config ds.json --prof_db run.db --log-json run.jsonl >out1 2>err1 \
    && ok "ds-train --prof_db runs" || notok "ds-train --prof_db: $(head -c 300 err1)"
is "one step row per optimizer step, steps 1..6, samples = 32 x step" \
    "$(q run.db "SELECT count(*), min(step), max(step), sum(samples = 32 * step) FROM step WHERE rank = 0")" "6|1|6|6"
is "fp32: loss scale 1.0 and no skipped step on every row" \
    "$(q run.db "SELECT count(*) FROM step WHERE loss_scale = 1.0 AND skipped = 0 AND lr = 0.05")" "6"
is "every timer recorded on every row" \
    "$(q run.db "SELECT count(*) FROM step WHERE fwd_ms > 0 AND bwd_ms > 0 AND bwd_inner_ms > 0 AND step_ms > 0 AND bwd_allreduce_ms = 0 AND iter_ms > 0 AND max_rss_bytes > 0")" "6"
is "one process: no collective rows" "$(q run.db "SELECT count(*) FROM collective")" "0"
is "the run row's command line is the one typed (getopt moves NET.json to the end of argv)" \
    "$(q run.db "SELECT substr(command_line, instr(command_line, ' ') + 1) FROM run")" \
    "mlp.json --data x.npy --labels y.npy --steps 6 --data-order sequential --seed 3 --config ds.json --prof_db run.db --log-json run.jsonl"
is "the run row: world 1, batch 32 = 16 x 2, status done, the config text" \
    "$(q run.db "SELECT world_size, train_batch_size, micro_batch, grad_accum, status, instr(config_json, '\"gradient_accumulation_steps\": 2') > 0, finished_at IS NOT NULL FROM run")" \
    "1|32|16|2|done|1|1"
# 19210 parameters (64x256 + 256 + 256x10 + 10), padded in the flat buffer
is "the rank row: this host and process, the parameters' bytes" \
    "$(q run.db "SELECT count(*), hostname = '$(uname -n)', pid > 0, params_bytes BETWEEN 4 * 19210 AND 4 * 19210 + 4096 FROM rank")" "1|1|1|1"
if python3 - "$SQL" <<'EOF' 2>pyerr; then ok "the losses in the database are the losses of --log-json"; else notok "losses: $(head -c 300 pyerr)"; fi
import json, subprocess, sys
log = [json.loads(l)["loss"] for l in open("run.jsonl")]
db = [float(x) for x in subprocess.run([sys.argv[1], "run.db", "SELECT loss FROM step ORDER BY step"], capture_output=True, text=True).stdout.split()]
assert len(log) == len(db) == 6 and all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(log, db)), (log, db)
EOF
# the timers add up: fwd + bwd + step is the engine's part of the iteration (the rest is the
# client's data loading between the calls), never more than the iteration
if python3 - "$SQL" <<'EOF' 2>pyerr; then ok "fwd + bwd + step add up to the iteration (median ratio in [0.8, 1])"; else notok "timers do not add up: $(head -c 300 pyerr)"; fi
import subprocess, sys, statistics
rows = subprocess.run([sys.argv[1], "run.db", "SELECT fwd_ms + bwd_ms + step_ms, iter_ms FROM step"], capture_output=True, text=True).stdout.split()
pairs = [tuple(map(float, r.split("|"))) for r in rows]
assert all(s <= i for s, i in pairs), pairs
r = statistics.median(s / i for s, i in pairs)
assert 0.8 <= r <= 1.0, (r, pairs)
EOF
grep -q "time (ms)" out1 && notok "without wall_clock_breakdown no timer lines are printed" \
    || ok "without wall_clock_breakdown no timer lines are printed"

# an existing database is refused (exit 2, nothing touched), replaced with --force
before=$(cksum < run.db)
"$B/ds-train" "${mlp[@]}" --config ds.json --prof_db run.db >/dev/null 2>err2
rc=$?
if [ $rc = 2 ] && grep -q -- "--prof_db run.db: the file exists; not overwriting it (use --force)" err2 && [ "$(cksum < run.db)" = "$before" ]; then
    ok "an existing --prof_db is refused (exit 2) and left alone"
else notok "existing --prof_db: exit $rc, $(head -c 300 err2)"; fi
"$B/ds-train" "${mlp[@]}" --steps 2 --config ds.json --prof_db run.db --force >/dev/null 2>err3 \
    && is "--force replaces it" "$(q run.db "SELECT count(*) FROM step")" "2" || notok "--force: $(head -c 300 err3)"
"$B/ds-train" "${mlp[@]}" --config ds.json --prof_db nodir/run.db >/dev/null 2>err4
rc=$?
[ $rc = 2 ] && grep -q "nodir/run.db" err4 && ok "an uncreatable --prof_db: exit 2 naming the file" \
    || notok "uncreatable --prof_db: exit $rc, $(head -c 300 err4)"
"$B/ds-train" "${mlp[@]}" --config ds.json --peak_tflops fast >/dev/null 2>err5
rc=$?
[ $rc = 2 ] && grep -q -- '--peak_tflops: expected a number > 0 (TFLOP/s), found "fast"' err5 \
    && ok "--peak_tflops fast: exit 2" || notok "--peak_tflops fast: exit $rc, $(head -c 300 err5)"

# wall_clock_breakdown: DeepSpeed's lines every steps_per_print steps, then throughput, MFU, memory
"$B/ds-train" "${mlp[@]}" --config wcb.json --peak_tflops 2.5 >out6 2>err6 || notok "wall_clock_breakdown run: $(head -c 300 err6)"
is "wall_clock_breakdown: the micro line every steps_per_print (2) steps" \
    "$(grep -cE '^\[Rank 0\] time \(ms\) \| fwd_microstep: [0-9]+\.[0-9]{2} \| bwd_microstep: [0-9]+\.[0-9]{2} \| bwd_inner_microstep: [0-9]+\.[0-9]{2} \| bwd_allreduce_microstep: 0\.00 \| step_microstep: [0-9]+\.[0-9]{2}$' out6)" "3"
is "wall_clock_breakdown: the global line too" \
    "$(grep -cE '^\[Rank 0\] time \(ms\) \| fwd: [0-9]+\.[0-9]{2} \| bwd: [0-9]+\.[0-9]{2} \| bwd_inner: [0-9]+\.[0-9]{2} \| bwd_allreduce: 0\.00 \| step: [0-9]+\.[0-9]{2}$' out6)" "3"
is "wall_clock_breakdown: samples/s, model FLOP/s, MFU against --peak_tflops, memory" \
    "$(grep -cE '^\[Rank 0\] [0-9]+ samples/s, model [0-9.]+ TFLOP/s per rank, MFU [0-9.]+% of 2.5 TFLOP/s; memory \(MB\) params 0.1, grads 0.1, optimizer 0.0, activations [0-9.]+, peak RSS [0-9.]+$' out6)" "3"
grep -qE '^done: .* GFLOP/s \(MFU [0-9.]+% of 2.5 TFLOP/s\)' out6 && ok "the final line has the MFU" || notok "final MFU: $(tail -2 out6)"
# the global timers sum the micro-steps: fwd (2 micro-steps) >= fwd_microstep (the last one)
if python3 <<'EOF' 2>pyerr; then ok "global timers hold the sum over the accumulation steps"; else notok "global sums: $(head -c 300 pyerr)"; fi
import re
lines = [l for l in open("out6") if "time (ms)" in l]
for m, g in zip(lines[0::2], lines[1::2]):
    mv = dict(re.findall(r"(\w+): ([0-9.]+)", m)); gv = dict(re.findall(r"(\w+): ([0-9.]+)", g))
    assert float(gv["fwd"]) >= float(mv["fwd_microstep"]) > 0, (m, g)
    assert float(gv["step"]) >= float(mv["step_microstep"]), (m, g) # (an SGD step on 19k parameters: 0.00 ms on a fast machine)
EOF

# ---- two ranks, one database -------------------------------------------------------------
head -c 60000 /usr/share/common-licenses/GPL-3 > text.txt 2>/dev/null || python3 -c "
import random; random.seed(1); open('text.txt','w').write(' '.join(random.choice(['the','data','rank','sum','mean']) for _ in range(12000)))"
cat > gpt.json <<'EOF'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 32},
 "layers": [{"type": "embedding", "name": "wte", "dim": 32}, {"type": "position_embedding", "name": "wpe"},
  {"type": "repeat", "name": "h", "count": 1, "layers": [
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"}, {"type": "attention", "name": "attn", "heads": 4}]},
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"}, {"type": "linear", "name": "fc", "out": 128},
    {"type": "gelu", "approximate": "tanh"}, {"type": "linear", "name": "proj", "out": 32}]}]},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
EOF
echo '{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "allreduce_bucket_size": 5000, "steps_per_print": 3,
 "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}, "seed": 7}' > dp.json
"$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$B/ds-train" gpt.json --config dp.json --data text.txt \
    --steps 8 --data-order sequential --quiet --prof_db two.db >/dev/null 2>err7 \
    && ok "ds-launch: 2 ranks with --prof_db" || notok "2 ranks: $(head -c 300 err7)"
is "both ranks' steps in one database (8 each)" \
    "$(q two.db "SELECT rank, count(*), min(step), max(step) FROM step GROUP BY rank ORDER BY rank" | tr '\n' ' ')" "0|8|1|8 1|8|1|8 "
is "the ranks agree on the (all-reduced) loss at every step" \
    "$(q two.db "SELECT count(*) FROM step a JOIN step b ON a.step = b.step AND a.rank = 0 AND b.rank = 1 WHERE a.loss = b.loss")" "8"
# 21984 gradient elements in buckets of 5000: 5 gradient all-reduces and the loss, per step and rank
is "per step and rank: 5 bucket all-reduces (the whole gradient) and the loss's" \
    "$(q two.db "SELECT count(*), sum(what = 'gradients'), sum(CASE WHEN what = 'gradients' THEN bytes END), sum(ms > 0) FROM collective GROUP BY rank, step" | sort -u)" \
    "6|5|87936|6"
is "bwd_allreduce covers the collectives' time, and bwd = bwd_inner + bwd_allreduce" \
    "$(q two.db "SELECT count(*) FROM step s WHERE bwd_allreduce_ms >= (SELECT sum(ms) FROM collective c WHERE c.rank = s.rank AND c.step = s.step) AND abs(bwd_ms - bwd_inner_ms - bwd_allreduce_ms) < 0.1")" "16"
is "two rank rows, two processes; the run says world 2, done" \
    "$(q two.db "SELECT count(*), count(DISTINCT pid), (SELECT world_size || status FROM run) FROM rank")" "2|2|2done"
before=$(cksum < two.db)
"$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$B/ds-train" gpt.json --config dp.json --data text.txt \
    --steps 2 --quiet --prof_db two.db >out9 2>err9
rc=$?
if [ $rc = 2 ] && grep -q -- "--prof_db two.db: exists; not overwriting it (use --force)" err9 \
    && [ "$(cksum < two.db)" = "$before" ] && ! grep -q "step 1" out9; then
    ok "2 ranks and an existing --prof_db: every rank refuses before training (exit 2)"
else notok "2 ranks, existing db: exit $rc, $(head -c 400 err9)"; fi
"$B/ds-prof" report two.db >rep2 2>err8 && grep -q "^slowest rank: [01] (median iteration" rep2 \
    && grep -q "communication .*87.9 KB/step in 6 collective calls (all_reduce 6)" rep2 \
    && ok "ds-prof report on the 2-rank run: the slowest rank and the communication" \
    || notok "report on two.db: $(head -c 600 rep2) $(head -c 300 err8)"
# ZeRO-2: the buckets are reduce-scattered inside bwd as they fill, so bwd_allreduce is only the
# wait at its end; the report says what the calls took
sed 's/}$/, "zero_optimization": {"stage": 2, "reduce_bucket_size": 5000}}/' dp.json >z2.json
if "$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$B/ds-train" gpt.json --config z2.json \
    --data text.txt --steps 4 --quiet --prof_db z2.db >outz 2>errz && "$B/ds-prof" report z2.db >repz 2>>errz &&
    grep -q "^the gradient collectives took [0-9.]* ms/step ([0-9.]*% of fwd+bwd+step): they run inside bwd" repz; then
    ok "ds-prof report, ZeRO-2: the time in the gradient collectives, beside bwd_allreduce's wait"
else notok "ZeRO-2 report: $(grep -i 'communication\|collective' repz | head -c 400) $(head -c 300 errz)"; fi

# ---- ds-prof against the fixture ----------------------------------------------------------
"$SQL" fixture.db "@$TESTDIR/fixtures/prof-run.sql" || notok "fixture.db could not be built"
"$B/ds-prof" report fixture.db >report.txt 2>err9
if diff -u "$TESTDIR/fixtures/prof-report.txt" report.txt >diff9; then ok "ds-prof report fixture.db: the expected text"
else notok "report differs: $(head -c 800 diff9) $(head -c 200 err9)"; fi
"$B/ds-prof" report fixture.db --rank 1 --skip 2 >r1.txt 2>&1
grep -q "^2 steps x 1 rank (rank 1, after the skipped warm-up steps)" r1.txt \
    && grep -qE "^fwd +2\.000 +2\.000 +2\.000 " r1.txt && grep -qE "^iteration +10\.500 " r1.txt \
    && ok "report --rank 1 --skip 2" || notok "--rank/--skip: $(head -c 600 r1.txt)"
cp fixture.db slower.db
"$SQL" slower.db "UPDATE step SET fwd_ms = 2 * fwd_ms, iter_ms = iter_ms + fwd_ms" >/dev/null
"$B/ds-prof" compare fixture.db slower.db >cmp.txt 2>&1
grep -qE "^fwd +2\.000 +4\.000 +2\.00x$" cmp.txt && grep -qE "^iteration +10\.000 +12\.500 +1\.25x$" cmp.txt \
    && grep -qE "^step +1\.000 +1\.000 +1\.00x$" cmp.txt && ok "compare: medians side by side with B/A" \
    || notok "compare: $(head -c 800 cmp.txt)"
"$B/ds-prof" export fixture.db --format csv >steps.csv 2>err10
is "export csv: a header and 8 step rows" "$(head -1 steps.csv) $(wc -l < steps.csv)" \
    "rank,step,loss,lr,grad_norm,loss_scale,skipped,iter_ms,fwd_ms,bwd_ms,bwd_inner_ms,bwd_allreduce_ms,step_ms,samples,max_rss_bytes,wall_time 9"
is "export csv: the first row" "$(sed -n 2p steps.csv)" "0,1,4,0.001,1.5,1,0,8.5,2,5,4,1,1,8,104857600,1767323046"
"$B/ds-prof" export fixture.db --format csv --table collective | sed -n 1,2p > coll.csv
is "export --table collective" "$(tr '\n' ' ' < coll.csv)" "rank,step,seq,op,what,elements,bytes,ms 0,1,0,all_reduce,gradients,1000,4000,0.8 "
"$B/ds-prof" export fixture.db --format json -o run.json 2>err11
if python3 <<'EOF' 2>pyerr; then ok "export json: run, ranks, steps and collectives"; else notok "json: $(head -c 300 pyerr) $(head -c 200 err11)"; fi
import json
d = json.load(open("run.json"))
assert d["run"]["world_size"] == 2 and d["run"]["peak_tflops"] == 0.001, d["run"]
assert [r["hostname"] for r in d["rank"]] == ["node-a", "node-b"]
assert len(d["step"]) == 8 and d["step"][7] == dict(d["step"][7], rank=1, step=4, loss=2.5, iter_ms=10.5)
assert len(d["collective"]) == 16
EOF
"$B/ds-prof" export fixture.db --format json -o run.json >/dev/null 2>err12
rc=$?
[ $rc = 2 ] && grep -q "run.json: the file exists; not overwriting it (use --force)" err12 \
    && ok "export -o an existing file: refused" || notok "export overwrite: exit $rc $(head -c 200 err12)"
"$B/ds-prof" plot fixture.db -o plot.svg 2>err13
if python3 <<'EOF' 2>pyerr; then ok "plot: an SVG with the stacked step-time bars and the loss curve"; else notok "plot: $(head -c 300 pyerr) $(head -c 200 err13)"; fi
import xml.etree.ElementTree as ET
t = ET.parse("plot.svg").getroot()
ns = "{http://www.w3.org/2000/svg}"
rects = [r for r in t.iter(ns + "rect") if r.get("class")]
for part in ("fwd", "bwd_inner", "bwd_allreduce", "step", "other"):
    assert sum(r.get("class") == part for r in rects) == 4, part
# step 1, mean over the ranks: fwd 2, bwd_inner 4.5 ... the bars' heights keep those proportions
h = {r.get("class"): float(r.get("height")) for r in rects if float(r.get("x")) < 80}
assert abs(h["bwd_inner"] / h["fwd"] - 2.25) < 1e-3 and abs(h["bwd_allreduce"] / h["fwd"] - 0.75) < 1e-3, h
pts = [p.split(",") for p in next(t.iter(ns + "polyline")).get("points").split()]
ys = [float(y) for x, y in pts]
assert len(pts) == 4 and ys[0] > ys[1] > ys[2] > ys[3] or ys[0] < ys[1] < ys[2] < ys[3], ys
EOF
"$B/ds-prof" plot two.db -o two.svg 2>err14 && grep -q "<polyline" two.svg && ok "plot of the 2-rank run" \
    || notok "plot two.db: $(head -c 200 err14)"

# ---- bad input ---------------------------------------------------------------------------
fails() { # DESC TEXT ARGS...: exit 2 and TEXT on stderr
    local desc=$1 text=$2
    shift 2
    "$B/ds-prof" "$@" >/dev/null 2>err
    local rc=$?
    if [ $rc = 2 ] && grep -qF -- "$text" err; then ok "$desc"; else notok "$desc (exit $rc: $(head -c 300 err))"; fi
}
fails "a missing database" "ds-prof: nothing.db: No such file or directory" report nothing.db
head -c 3000 /dev/urandom > corrupt.db
fails "a corrupt database (not SQLite)" "ds-prof: corrupt.db: not an SQLite database" report corrupt.db
"$SQL" foreign.db "CREATE TABLE t(x); INSERT INTO t VALUES (1)"
fails "a foreign SQLite database" "ds-prof: foreign.db: an SQLite database of another program (application_id 0x00000000" report foreign.db
cp fixture.db future.db && "$SQL" future.db "PRAGMA user_version=7"
fails "a run database of another schema version" "future.db: a ds run database of schema version 7; this ds" export future.db
fails "compare with one of the two bad" "ds-prof: corrupt.db: not an SQLite database" compare fixture.db corrupt.db
fails "plot needs -o" "plot needs -o OUT.svg" plot fixture.db
fails "an unknown command" 'unknown command "show"' show fixture.db
fails "an unknown --format" '--format: expected csv or json, found "xml"' export fixture.db --format xml
fails "plot -o an existing file" "plot.svg: the file exists; not overwriting it (use --force)" plot fixture.db -o plot.svg
"$B/ds-prof" plot fixture.db -o plot.svg --force 2>/dev/null && ok "plot --force overwrites" || notok "plot --force"
cp fixture.db words.db && "$SQL" words.db "UPDATE step SET iter_ms = 'fast' WHERE step = 3 AND rank = 1"
fails "text where a number belongs" "words.db: step.iter_ms (rank 1, step 3): expected a number, found text 'fast'" report words.db
cp fixture.db rankw.db && "$SQL" rankw.db "UPDATE rank SET params_bytes = 'big' WHERE rank = 0"
fails "text in the rank table (the report printed 0.00 MB)" "rankw.db: rank.params_bytes (rank 0): expected a number, found text 'big'" report rankw.db
cp fixture.db rankd.db && "$SQL" rankd.db "DROP TABLE rank"
fails "no rank table (the report printed nan MB, exit 0)" "rankd.db: cannot read its tables: no such table: rank" report rankd.db
# a NULL loss (a NaN is stored so) or an infinite one is a gap in the curve, at its own step
cp fixture.db gaps.db && "$SQL" gaps.db "UPDATE step SET loss = NULL WHERE step = 2" && "$SQL" gaps.db "UPDATE step SET loss = 9e999 WHERE step = 4"
if "$B/ds-prof" plot gaps.db -o gaps.svg 2>errg && python3 - <<'EOF' 2>pyerr; then ok "plot: NULL and inf losses are gaps, the other points at their steps' bars"; else notok "plot gaps: $(head -c 300 pyerr) $(head -c 200 errg)"; fi
import re, xml.etree.ElementTree as ET
t = ET.parse("gaps.svg").getroot()
ns = "{http://www.w3.org/2000/svg}"
lines = [p for p in t.iter(ns + "polyline") if p.get("class") == "loss"]
pts = [tuple(map(float, q.split(","))) for p in lines for q in p.get("points").split()]
assert all(abs(v) < 1e6 for q in pts for v in q), pts
assert "nan" not in open("gaps.svg").read().lower()
bars = sorted({float(r.get("x")) for r in t.iter(ns + "rect") if r.get("class")})
steps = len(bars)
assert len(pts) == steps - 2 and len(lines) >= 2, (len(pts), steps, len(lines))
EOF
cp fixture.db world.db && "$SQL" world.db "UPDATE run SET world_size = 2000000000"
fails "a world size no run has" "world.db: run.world_size: expected 1..1048576, found 2000000000" report world.db
cp fixture.db self.db && before=$(cksum < self.db)
fails "export -o the database it reads, even with --force" "self.db: is the run database being read" export self.db -o self.db --force
[ "$(cksum < self.db)" = "$before" ] && ok "... and the database is untouched" || notok "export onto its input changed it"
if mknod node0 c 1 3 2>/dev/null; then # a /dev/null of our own: --force must not replace it
    fails "export -o a device node, even with --force" "node0: is not a regular file" export fixture.db -o node0 --force
    [ -c node0 ] && ok "... and the node is still one" || notok "node0 was replaced: $(ls -l node0)"
else
    ok "# SKIP export onto a device node: mknod is not permitted here"
fi
# a failed export leaves an existing output as it was and writes nothing beside it
cp fixture.db nostep.db && "$SQL" nostep.db "DROP TABLE collective"
echo precious > keep.json
fails "export of a database without its collective table" "no such table: collective" export nostep.db --format json -o keep.json --force
[ "$(cat keep.json)" = precious ] && [ -z "$(ls keep.json.* 2>/dev/null)" ] \
    && ok "a failed export --force keeps the existing output, no temporary left" || notok "failed export: $(head -c 100 keep.json) $(ls keep.json*)"
"$B/ds-prof" --help | grep -q "^usage: ds-prof report RUN.db" && ok "ds-prof --help" || notok "ds-prof --help"
fails "--rank the run did not have" "ds-prof: --rank 2: fixture.db has ranks 0 to 1 (world size 2)" report fixture.db --rank 2
fails "--rank past an int (it wrapped to rank 0)" "ds-prof: --rank: expected an integer from 0 to 2147483647, found \"4294967296\"" \
    report fixture.db --rank 4294967296
fails "an option the command does not use: --force for report" "--force is for export and plot, not report" report fixture.db --force
fails "... --rank for compare" "--rank is for report and plot, not compare" compare fixture.db fixture.db --rank 0
fails "... --skip for export" "--skip is for report, compare and plot, not export" export fixture.db --skip 1
fails "--force=1: a flag takes no value" "option --force takes no value" export fixture.db --force=1
"$B/ds-prof" report fixture.db --rank=1 --skip=2 >r1eq.txt 2>&1 && "$B/ds-prof" report fixture.db --rank 1 --skip 2 >r1sp.txt 2>&1 \
    && cmp -s r1eq.txt r1sp.txt && ok "--opt=value means --opt value" || notok "--opt=value: $(head -c 300 r1eq.txt)"

tap_summary
