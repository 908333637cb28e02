#!/usr/bin/env bash
# ds-lrrt and the scheduler from the outside: usage errors, --print-schedule against values
# worked out from the formulas, ds-train's --log-json lr/momentum against --print-schedule, an
# LR range test of gpt-tiny on /usr/share/common-licenses (suggestion inside the range, valid
# CSV, well-formed SVG, a OneCycle block that loads), the divergence stop, outputs not
# overwritten without --force, a 1Cycle sweep, and 2 ranks under ds-launch giving 1 rank's
# losses with rank 0 alone writing. One "ok"/"not ok" line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))
B=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
S=${DS_TEST_DIR:-$(cd "$(dirname "$0")" && pwd)}/..
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
if ! command -v python3 >/dev/null; then
    echo "python3 is needed to check CSV, SVG and JSON outputs: skipping"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-lrrt.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
L="$B/ds-lrrt"
GPT="$S/share/configs/gpt-tiny.json"
TEXT=/usr/share/common-licenses
[ -d "$TEXT" ] || { python3 -c "
import random; random.seed(1); open('text.txt','w').write(' '.join(random.choice(['the','data','rank','sum','mean','lr']) for _ in range(40000)))"; TEXT=text.txt; }

# expect STATUS TEXT DESC -- ARGS...: ds-lrrt exits with STATUS and stderr holds TEXT
expect() {
    local want=$1 text=$2 desc=$3
    shift 4
    "$L" "$@" >out 2>err
    local rc=$?
    if [ "$rc" = "$want" ] && grep -qF -- "$text" err; then ok "$desc"; else notok "$desc (exit $rc: $(head -c 300 err))"; fi
}
# py DESC CODE [ARGS]: ok when the python code exits 0
py() {
    local desc=$1 code=$2
    shift 2
    if python3 -c "$code" "$@" 2>pyerr; then ok "$desc"; else notok "$desc: $(tail -c 400 pyerr)"; fi
}

# ---- usage ----------------------------------------------------------------------------------
echo '{"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}}' > ds.json
expect 2 "no DeepSpeed config given" "no --config: usage error, exit 2" -- "$GPT" --data "$TEXT"
expect 2 "--min must be below --max (found 0.1 >= 0.01)" "--min above --max: exit 2" -- "$GPT" --config ds.json --data "$TEXT" --min 0.1 --max 0.01
expect 2 "--sweep 1cycle needs --values" "--sweep without --values: exit 2" -- "$GPT" --config ds.json --data "$TEXT" --sweep 1cycle
expect 2 "--values: expected a number > 0, found \"x\"" "a bad --values entry: exit 2" -- "$GPT" --config ds.json --data "$TEXT" --sweep 1cycle --values 0.1,x
expect 2 "--spacing: expected log or linear, found \"cubic\"" "--spacing cubic: exit 2" -- "$GPT" --config ds.json --data "$TEXT" --spacing cubic
"$L" --help | grep -q -- "--print-schedule N" && ok "--help lists --print-schedule" || notok "--help"
# DeepSpeed's --deepspeed flag is accepted and means nothing (it was taken as a prefix of --deepspeed_config)
echo '{"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}}' > dsflag.json
"$L" --deepspeed --deepspeed_config dsflag.json --print-schedule 2 >dsflag.csv 2>err && [ "$(sed -n 2p dsflag.csv)" = "1,0.001,0.9" ] \
    && ok "--deepspeed --deepspeed_config FILE: the flag is ignored, as by ds-train" || notok "--deepspeed: $(head -c 300 err)"

# ---- --print-schedule -----------------------------------------------------------------------
cat > warm.json <<'EOF'
{"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}},
 "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.01, "warmup_num_steps": 4, "warmup_type": "linear"}}}
EOF
"$L" --config warm.json --print-schedule 8 > warm.csv 2>err
# update n uses iteration n-2: 0 (construction), then k/4 of 0.01 for k = 0..3, then 0.01
py "WarmupLR linear: --print-schedule gives 0, 0, 0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01 (beta1 0.9)" '
import csv, sys
r = list(csv.DictReader(open("warm.csv")))
want = [0, 0, 0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]
assert [int(x["step"]) for x in r] == list(range(1, 9)), r
assert all(abs(float(x["lr"]) - w) < 1e-12 for x, w in zip(r, want)), [x["lr"] for x in r]
assert all(float(x["momentum"]) == 0.9 for x in r)'
cat > cyc.json <<'EOF'
{"train_batch_size": 4, "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
 "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.05, "cycle_first_step_size": 2,
   "cycle_min_mom": 0.8, "cycle_max_mom": 0.9, "decay_step_size": 2, "decay_lr_rate": 1.0}}}
EOF
"$L" --config cyc.json --print-schedule 7 > cyc.csv 2>err
# k = -1..5: sf 0, .5, 1, .5, 0; then decay d = 1, 2: 0.01/(1 + d/2)
py "OneCycle: lr rises to the peak and back, momentum mirrors it, then the lr decays" '
import csv
r = list(csv.DictReader(open("cyc.csv")))
lr = [0.01, 0.03, 0.05, 0.03, 0.01, 0.01 / 1.5, 0.01 / 2]
mom = [0.9, 0.85, 0.8, 0.85, 0.9, 0.9, 0.9]
assert all(abs(float(x["lr"]) - w) <= 1e-8 * w for x, w in zip(r, lr)) and len(r) == 7, [x["lr"] for x in r]
assert all(abs(float(x["momentum"]) - w) < 1e-12 for x, w in zip(r, mom)), [x["momentum"] for x in r]'
cat > decay.json <<'EOF'
{"train_batch_size": 4, "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto", "warmup_max_lr": 0.02, "warmup_num_steps": 2}}}
EOF
"$L" --config decay.json --print-schedule 6 > decay.csv 2>err
# total "auto" = 6 steps: W = 2, log warmup ln(k+1)/ln 2: k = -1, 0 -> 0; k = 1 -> 0.02; then (6-k)/4
py "WarmupDecayLR with total_num_steps \"auto\" takes the printed length (and says so)" '
import csv
r = list(csv.DictReader(open("decay.csv")))
want = [0, 0, 0.02, 0.02, 0.015, 0.01]
assert all(abs(float(x["lr"]) - w) < 1e-12 for x, w in zip(r, want)) and len(r) == 6, [x["lr"] for x in r]
assert "total_num_steps=the run" in open("err").read()'
# an optimizer without a momentum: OneCycle cycles none (as ds-train), the column stays empty
cat > adag.json <<'EOF'
{"train_batch_size": 4, "optimizer": {"type": "Adagrad", "params": {"lr": 0.1}},
 "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.05, "cycle_first_step_size": 2}}}
EOF
"$L" --config adag.json --print-schedule 3 > adag.csv 2>err
py "OneCycle with Adagrad: no momentum printed, and the warning ds-train gives" '
import csv
r = list(csv.DictReader(open("adag.csv")))
assert [x["momentum"] for x in r] == ["", "", ""] and len(r) == 3, r
assert "optimizer Adagrad has no momentum; it is not cycled" in open("err").read()'
echo '{"train_batch_size": 4, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "x"}}}' > bad.json
expect 2 "bad.json: scheduler.params.warmup_num_steps: expected an integer >= 0, found \"x\"" \
    "a bad scheduler value: exit 2 naming the file and JSON path" -- --config bad.json --print-schedule 3

# ---- ds-train steps the scheduler once per update and logs what each update used ------------
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
cat > cycgas.json <<'EOF'
{"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
 "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.05, "cycle_first_step_size": 2,
   "cycle_min_mom": 0.8, "cycle_max_mom": 0.9, "decay_step_size": 2, "decay_lr_rate": 1.0}}}
EOF
"$L" --config cycgas.json --print-schedule 7 > cycgas.csv 2>err
if "$B/ds-train" net.json --config cycgas.json --data "$TEXT" --steps 7 --log-json train.jsonl --quiet >/dev/null 2>err; then
    py "ds-train (2 accumulation steps) logs per step the lr and momentum that --print-schedule prints" '
import csv, json
want = list(csv.DictReader(open("cycgas.csv")))
got = [json.loads(l) for l in open("train.jsonl")]
assert len(got) == 7 == len(want)
for g, w in zip(got, want):
    assert abs(g["lr"] - float(w["lr"])) <= 1e-6 * float(w["lr"]), (g, w)
    assert abs(g["momentum"] - float(w["momentum"])) <= 1e-6, (g, w)'
else
    notok "ds-train with a OneCycle scheduler: $(head -c 300 err)"
fi

# ---- the range test -------------------------------------------------------------------------
echo '{"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 3,
 "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 0.5}}}' > rt.json
start=$(date +%s)
if "$L" "$GPT" --config rt.json --data "$TEXT" --min 1e-5 --max 1e-1 --steps 30 > rt.out 2> rt.err; then
    ok "range test of gpt-tiny on $TEXT, 30 steps ($(( $(date +%s) - start )) s)"
else
    notok "range test: $(head -c 400 rt.err)"
fi
py "the suggested lr lies inside the swept range [1e-5, 1e-1]" '
import re
m = re.search(r"suggested lr: (\S+)", open("rt.out").read())
assert m, "no suggestion"
assert 1e-5 <= float(m.group(1)) <= 1e-1, m.group(1)'
py "lrrt.csv: a header and 1..30 rows of finite numbers, lr rising geometrically from 1e-5" '
import csv, math
r = list(csv.DictReader(open("lrrt.csv")))
assert list(r[0].keys()) == ["step", "lr", "loss", "smoothed_loss", "skipped"], r[0].keys()
assert all(x["skipped"] == "0" for x in r), "fp32 skips no step"
assert 1 <= len(r) <= 30
lr = [float(x["lr"]) for x in r]
assert abs(lr[0] - 1e-5) < 1e-12
assert all(abs(lr[i + 1] / lr[i] - 10 ** (4 / 29)) < 1e-6 for i in range(len(lr) - 1)), lr
assert all(math.isfinite(float(x["loss"])) and math.isfinite(float(x["smoothed_loss"])) for x in r)'
py "lrrt.svg is well-formed SVG with the loss curve, its points and the suggested lr marked" '
import xml.dom.minidom, re
d = xml.dom.minidom.parse("lrrt.svg")
root = d.documentElement
assert root.tagName == "svg" and root.getAttribute("xmlns") == "http://www.w3.org/2000/svg"
assert d.getElementsByTagName("polyline") and len(d.getElementsByTagName("circle")) >= 1
texts = " ".join(t.firstChild.data for t in d.getElementsByTagName("text") if t.firstChild)
s = re.search(r"suggested lr: (\S+)", open("rt.out").read()).group(1)
assert "suggested lr " + s in texts, texts[-200:]
assert "1e-5" in texts and "1e-1" in texts'
grep -q '^  "scheduler": {"type": "OneCycle"' rt.out && sed -n 's/^  "scheduler": /{"train_batch_size": 4, "scheduler": /p' rt.out | sed 's/$/}/' > onecycle.json
if "$L" --config onecycle.json --print-schedule 3 >oc.csv 2>err && python3 -c '
import json, sys; p = json.load(open("onecycle.json"))["scheduler"]["params"]
assert 0 < p["cycle_min_lr"] < p["cycle_max_lr"] <= 0.1' 2>/dev/null; then
    ok "the printed OneCycle block pastes into a config that loads (cycle_min_lr < cycle_max_lr <= --max)"
else
    notok "OneCycle block: $(grep -F OneCycle rt.out) $(head -c 200 err)"
fi
cp lrrt.csv keep.csv
expect 2 "lrrt.csv: the file exists; not overwriting it (use --force)" "existing outputs are not overwritten without --force" \
    -- "$GPT" --config rt.json --data "$TEXT" --steps 3
cmp -s lrrt.csv keep.csv && ok "... and lrrt.csv is unchanged" || notok "lrrt.csv was changed"
# outputs that cannot be written (no such folder, a directory in the way) are refused before any
# training, and nothing is written
expect 2 "nodir/x.csv: cannot write there (nodir: No such file or directory)" "an output folder that does not exist: exit 2 before training" \
    -- "$GPT" --config rt.json --data "$TEXT" --steps 3 --out nodir/x
expect 2 "--out: expected a file name prefix" "--out '': exit 2" -- "$GPT" --config rt.json --data "$TEXT" --steps 3 --out ""
mkdir -p outdir
expect 2 "--out outdir/: expected a file name prefix (PREFIX.csv, PREFIX.svg), found a directory" \
    "--out DIR/ (it would write DIR/.csv): exit 2" -- "$GPT" --config rt.json --data "$TEXT" --steps 3 --out outdir/
expect 2 "--config given twice" "--config twice: exit 2 (the last would win)" -- "$GPT" --config rt.json --config rt.json --data "$TEXT"
expect 2 "option --m is ambiguous (--micro-batch, --min, --max)" "an ambiguous prefix: exit 2" -- "$GPT" --config rt.json --data "$TEXT" --m 1
mkdir -p late.svg
expect 2 "late.svg: is a directory" "an SVG path that is a directory: exit 2 before training" \
    -- "$GPT" --config rt.json --data "$TEXT" --steps 3 --out late
[ -z "$(ls late.csv* 2>/dev/null)" ] && ok "... and no CSV or temporary written" || notok "late: $(ls late.*)"

# ---- divergence stop (the small net, an lr that ends at 1000) ---------------------------------
echo '{"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "seed": 1}' > sgd.json
if "$L" net.json --config sgd.json --data "$TEXT" --min 1e-3 --max 1e3 --steps 40 --out div --quiet > div.out 2>err; then
    py "a diverging range test stops early and says why" '
import re
t = open("div.out").read()
m = re.search(r"stopped after (\d+) of 40 steps: (.*) \(", t)
assert m and int(m.group(1)) < 40 and ("diverged" in m.group(2) or "not finite" in m.group(2)), t
assert sum(1 for _ in open("div.csv")) == int(m.group(1)) + 1'
else
    notok "divergence run: $(head -c 300 err)"
fi

# ---- 1Cycle sweep ---------------------------------------------------------------------------
echo '{"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 1}' > sw.json
if "$L" net.json --config sw.json --data "$TEXT" --sweep 1cycle --values 0.0001,0.01,30 --steps 10 > sw.out 2>err; then
    py "sweep: final losses listed best first; CSV of every step with the OneCycle lr; SVG of the curves" '
import csv, re, xml.dom.minidom
t = open("sw.out").read()
rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)$", t, re.M)
assert [r[0] for r in rows] == ["1", "2", "3"], t
finals = [float(r[2]) if r[2] != "diverged" else float("inf") for r in rows]
assert finals == sorted(finals), finals
r = list(csv.DictReader(open("sweep.csv")))
assert {x["cycle_max_lr"] for x in r} >= {"0.0001", "0.01"}
one = [x for x in r if x["cycle_max_lr"] == "0.01"]
assert len(one) == 10 and abs(float(one[0]["lr"]) - 0.001) < 1e-12 and abs(float(one[4]["lr"]) - 0.01) < 1e-9, one[:5]
d = xml.dom.minidom.parse("sweep.svg")
assert len(d.getElementsByTagName("polyline")) >= 2'
else
    notok "sweep: $(head -c 300 err)"
fi

echo '{"train_batch_size": 8, "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.1}}}' > own.json
expect 2 "--values: 0.005 is not above own.json's cycle_min_lr 0.01" \
    "a sweep keeps the config's OneCycle params: a value below its cycle_min_lr is refused" \
    -- net.json --config own.json --data "$TEXT" --sweep 1cycle --values 0.005 --steps 2 --out own

# the whole of --values is checked before the first run trains, and a cycle_min_lr written as
# a list of one is read as the config's parser reads it
expect 2 "--values: 0.005 is not above own.json's cycle_min_lr 0.01" \
    "a bad value after good ones is refused before anything trains" \
    -- net.json --config own.json --data "$TEXT" --sweep 1cycle --values 0.1,0.05,0.005 --steps 2 --out own
[ ! -s out ] && ok "... nothing trained first" || notok "trained before refusing: $(head -c 300 out)"
echo '{"train_batch_size": 8, "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": [0.05], "cycle_max_lr": 0.1}}}' > ownl.json
expect 2 "--values: 0.01 is not above ownl.json's cycle_min_lr 0.05" \
    "cycle_min_lr as a list of one: a value below it is refused" \
    -- net.json --config ownl.json --data "$TEXT" --sweep 1cycle --values 0.01 --steps 2 --out ownl

# a flag of another mode is an error, not ignored
expect 2 "--min is for the range test; the sweep does not use it" "--min with --sweep: exit 2" \
    -- net.json --config sw.json --data "$TEXT" --sweep 1cycle --values 0.01 --min 1e-3
expect 2 "--print-schedule prints the config's schedule without training; --data does not go with it" \
    "--data with --print-schedule: exit 2" -- --config sw.json --print-schedule 3 --data "$TEXT"
expect 2 "--print-schedule prints the config's schedule without training; --values does not go with it" \
    "--values with --print-schedule: exit 2" -- --config sw.json --print-schedule 3 --values 0.1

# the range test leaves a config's scheduler out and says so; fewer than 3 steps: the lowest is
# marked where it is and the reason for no suggestion is given
echo '{"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "seed": 5,
 "scheduler": {"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 1e-4, "lr_range_test_step_size": 1}}}' > lrt.json
"$L" net.json --config lrt.json --data "$TEXT" --data-order sequential --min 1e-1 --max 1 --steps 2 --out two >two.out 2>err
py "a config's LRRangeTest block: noted as left out; 2 steps: lowest marked right, no suggestion and why" '
import csv
e = open("err").read(); o = open("two.out").read()
assert "the range test sets the lr itself (--min 0.1 to --max 1); lrt.json'"'"'s LRRangeTest scheduler is left out" in e, e
r = list(csv.DictReader(open("two.csv")))
low = min(range(2), key=lambda i: float(r[i]["smoothed_loss"]))
rows = [l for l in o.splitlines() if l.strip().startswith(("1 ", "2 "))]
assert "<- lowest" in rows[low] and "<- lowest" not in rows[1 - low], rows
assert "no suggestion: 2 steps with an update recorded, fewer than the 3 it takes" in o, o'

# a range wider than a double's max/min (the lrs through their logarithms)
"$L" net.json --config ds.json --data "$TEXT" --min 1e-200 --max 1e200 --steps 3 --out wide --quiet >wide.out 2>err
rc=$?
py "--min 1e-200 --max 1e200: runs (exit $rc), the lrs rise from 1e-200" '
import csv, sys
assert sys.argv[1] == "0", (sys.argv[1], open("err").read())
r = list(csv.DictReader(open("wide.csv")))
assert abs(float(r[0]["lr"]) / 1e-200 - 1) < 1e-9, r' "$rc"

# fp16 with a loss scale so high that every step overflows: the steps are marked skipped, the
# suggestion leaves them out, and a sweep run that applied no update is not ranked
echo '{"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 2,
 "fp16": {"enabled": true, "initial_scale_power": 32}}' > fp16.json
"$L" net.json --config fp16.json --data "$TEXT" --min 1e-4 --max 1e-2 --steps 6 --out f16 >f16.out 2>err
py "fp16, every step skipped: warned, CSV column skipped, no suggestion" '
import csv
r = list(csv.DictReader(open("f16.csv")))
assert len(r) == 6 and all(x["skipped"] == "1" for x in r), r
assert "6 of 6 steps were skipped (fp16" in open("err").read()
o = open("f16.out").read()
assert "suggested lr" not in o and "no suggestion: 0 steps with an update recorded" in o, o'
"$L" net.json --config fp16.json --data "$TEXT" --sweep 1cycle --values 0.01 --steps 4 --out f16s >f16s.out 2>err
py "fp16 sweep, every step skipped: not ranked, no best, lr and momentum empty in the CSV" '
import csv
o = open("f16s.out").read()
assert "every step skipped (fp16 overflow): no update applied" in o and "best:" not in o and "not ranked" in o, o
r = list(csv.DictReader(open("f16s.csv")))
assert len(r) == 4 and all(x["skipped"] == "1" and x["lr"] == "" and x["momentum"] == "" for x in r), r'

# Ctrl-C: the test stops after the step under way and writes what it recorded (in a child that
# does not ignore SIGINT, as from a terminal); and an output that appears while the test runs is
# not replaced without --force: this run's results stay under their temporary names, and the
# message says where. intr: Ctrl-C after 0.5 s; race: race.csv made, then Ctrl-C
rm -f intr.csv intr.svg race.csv race.svg
python3 - "$L" "$TEXT" <<'PYEOF'
import signal, subprocess, sys, time
L, text = sys.argv[1], sys.argv[2]
for out, make in (("intr", None), ("race", "race.csv")):
    p = subprocess.Popen([L, "net.json", "--config", "ds.json", "--data", text, "--min", "1e-5", "--max", "1e-4",
                          "--steps", "1000000", "--out", out], stdout=open(out + ".out", "w"),
                         stderr=open(out + ".err", "w"), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(400):
        if "range test of" in open(out + ".out").read():
            break
        time.sleep(0.05)
    if make:
        open(make, "w").write("theirs\n")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    open(out + ".rc", "w").write(str(p.wait(timeout=60)))
PYEOF
py "Ctrl-C: exit 0, stopped early and said so, the recorded steps written" '
import csv
assert open("intr.rc").read() == "0", (open("intr.rc").read(), open("intr.err").read())
o = open("intr.out").read()
assert "interrupted (Ctrl-C)" in o and "wrote intr.csv" in o, o[-400:]
r = list(csv.DictReader(open("intr.csv")))
assert 1 <= len(r) < 1000000, len(r)'
py "a CSV made during the run is not overwritten without --force (exit 1), and the results are kept" '
import glob
assert open("race.rc").read() == "1", (open("race.rc").read(), open("race.err").read())
assert open("race.csv").read() == "theirs\n"
e = open("race.err").read()
assert "race.csv: the file appeared while this run went on; not overwriting it (use --force); this run'"'"'s results are in" in e, e
tmp = glob.glob("race.csv.tmp.*")
assert len(tmp) == 1 and open(tmp[0]).readline().startswith("step,lr,loss"), tmp'

# --checkpoint-activations: the same range test (the same losses), with the checkpoints
sed 's/"count": 1/"count": 2/' net.json > net2.json
echo '{"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 3}' > ck.json
"$L" net2.json --config ck.json --data "$TEXT" --data-order sequential --min 1e-4 --max 1e-2 --steps 4 --out ck0 --quiet >/dev/null 2>err0
"$L" net2.json --config ck.json --data "$TEXT" --data-order sequential --min 1e-4 --max 1e-2 --steps 4 --out ck1 \
    --checkpoint-activations >ck1.out 2>err1
grep -q "^activation checkpointing: 2 checkpoints; activations" ck1.out && ok "--checkpoint-activations: said" ||
    notok "--checkpoint-activations: $(head -c 300 ck1.out) $(head -c 300 err1)"
py "--checkpoint-activations: the range test's losses are those without" '
import csv
a = [r["loss"] for r in csv.DictReader(open("ck0.csv"))]; b = [r["loss"] for r in csv.DictReader(open("ck1.csv"))]
assert len(a) == 4 and a == b, (a, b)'

# curriculum_learning changes the sequences under the test: said
echo '{"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "curriculum_learning": {"enabled": true, "curriculum_type": "seqlen", "min_difficulty": 8, "max_difficulty": 32, "schedule_type": "fixed_linear", "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 8}}}' > cl.json
if "$L" net.json --config cl.json --data "$TEXT" --min 1e-4 --max 1e-2 --steps 3 --out cl --quiet >/dev/null 2>err &&
    grep -q "ds-lrrt: warning: cl.json: curriculum_learning: the steps train on the first 8 to 32 positions" err; then
    ok "a range test under curriculum_learning warns that the lengths change"
else
    notok "curriculum_learning warning: $(head -c 300 err)"
fi
# the monitors are ds-train's: said, and nothing written
echo '{"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "tensorboard": {"enabled": true, "output_path": "tbout"}, "csv_monitor": {"enabled": true, "output_path": "csvout"}}' > mon.json
if "$L" net.json --config mon.json --data "$TEXT" --min 1e-4 --max 1e-2 --steps 3 --out mon --quiet >/dev/null 2>err &&
    grep -q "ds-lrrt: warning: mon.json: tensorboard, csv_monitor: ds-lrrt does not write the monitors" err && [ ! -e tbout ] && [ ! -e csvout ]; then
    ok "a range test with tensorboard and csv_monitor enabled warns that it does not write them"
else
    notok "monitor warning: $(head -c 300 err) $(ls -d tbout csvout 2>&1)"
fi

# ---- under ds-launch: 2 ranks x micro 4 = 1 rank x micro 8; rank 0 alone writes --------------
echo '{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 5}' > one.json
echo '{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, "seed": 5}' > two.json
common=(net.json --data "$TEXT" --data-order sequential --min 1e-4 --max 1e-1 --steps 12)
"$L" "${common[@]}" --config one.json --out r1 --quiet >/dev/null 2>err1 || notok "1 rank: $(head -c 300 err1)"
if "$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$L" "${common[@]}" --config two.json --out r2 > r2.out 2>err2; then
    ok "ds-launch: a range test on 2 ranks"
else
    notok "2 ranks: $(head -c 300 err2)"
fi
py "2 ranks x micro-batch 4 record the losses of 1 rank x micro-batch 8 (1e-5 relative)" '
import csv
a = list(csv.DictReader(open("r1.csv"))); b = list(csv.DictReader(open("r2.csv")))
assert len(a) == len(b) == 12, (len(a), len(b))
for x, y in zip(a, b):
    assert abs(float(x["loss"]) - float(y["loss"])) <= 1e-5 * abs(float(x["loss"])), (x, y)'
if grep -q "suggested lr\|no suggestion" r2.out && ! grep -q "^\[rank 1\]" r2.out && [ -f r2.svg ]; then
    ok "rank 0 alone prints the table and the suggestion"
else
    notok "2-rank output: $(head -c 300 r2.out)"
fi

tap_summary
