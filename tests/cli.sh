#!/bin/bash
# ds-train from the outside: usage errors and exit codes, file errors that name the file,
# --summary, short training runs (tiny GPT on text, MLPs on .npy), --log-json, --save-weights /
# --force / --init-from, data errors, and seed determinism. One "ok"/"not ok" line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u

BUILD=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
TESTDIR=${DS_TEST_DIR:-$(cd "$(dirname "$0")" && pwd)}
DS="$BUILD/ds-train"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} # spinning threads crawl on a busy machine

if [ ! -x "$DS" ]; then
    echo "not ok - $DS is not built"
    echo "0 passed, 1 failed"
    exit 1
fi
if ! command -v python3 >/dev/null; then
    echo "python3 is needed to write .npy files and read JSON logs: skipping"
    exit 77
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/ds-cli.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT

# check DESC COMMAND...: ok when the command succeeds
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else notok "$desc"; fi
}
# run ARGS...: ds-train with stdout/stderr in $T/out, $T/err and the status in $rc
run() {
    "$DS" "$@" >"$T/out" 2>"$T/err"
    rc=$?
}
why() { echo "(exit $rc; stderr: $(head -c 400 "$T/err" | tr '\n' ' '))"; }
# expect_fail DESC STATUS TEXT ARGS...: exits with STATUS and stderr holds TEXT
expect_fail() {
    local desc=$1 want=$2 text=$3
    shift 3
    run "$@"
    if [ "$rc" = "$want" ] && grep -qF -- "$text" "$T/err"; then ok "$desc"; else notok "$desc $(why)"; fi
}
# expect_ok DESC ARGS...: exits 0
expect_ok() {
    local desc=$1
    shift
    run "$@"
    if [ "$rc" = 0 ]; then ok "$desc"; else notok "$desc $(why)"; fi
}
# losses LOG: the loss of every step, one line
losses() { python3 2>/dev/null -c 'import json, sys; print(" ".join("%.7g" % json.loads(l)["loss"] for l in open(sys.argv[1])))' "$1"; }
# first_loss LOG / mean_loss LOG FROM TO (python slice of the steps)
first_loss() { python3 2>/dev/null -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["loss"])' "$1"; }
mean_loss() {
    python3 2>/dev/null -c 'import json, sys; l = [json.loads(x)["loss"] for x in open(sys.argv[1])][int(sys.argv[2]):int(sys.argv[3]) or None]; print(sum(l) / len(l))' "$@"
}
lt() { python3 2>/dev/null -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$1" "$2"; }

# ---- inputs -------------------------------------------------------------------------------

# the issue's example GPT, made tiny: seq_len 32, dim 32, one layer
cat >"$T/gpt.json" <<'EOF'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 32},
 "layers": [{"type": "embedding", "name": "wte", "dim": 32},
            {"type": "position_embedding", "name": "wpe"},
            {"type": "repeat", "name": "h", "count": 1, "layers": [
                {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"},
                                                {"type": "attention", "name": "attn", "heads": 4, "causal": true}]},
                {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"},
                                                {"type": "linear", "name": "fc", "out": 128},
                                                {"type": "gelu", "approximate": "tanh"},
                                                {"type": "linear", "name": "proj", "out": 32}]}]},
            {"type": "layernorm", "name": "ln_f"},
            {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
EOF
cat >"$T/ds.json" <<'EOF'
{"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
 "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}, "steps_per_print": 10, "seed": 1}
EOF
cat >"$T/mlp.json" <<'EOF'
{"input": {"type": "features", "dim": 8},
 "layers": [{"type": "linear", "name": "fc1", "out": 16}, {"type": "relu"}, {"type": "linear", "name": "fc2", "out": 3}],
 "loss": {"type": "cross_entropy"}}
EOF
cat >"$T/mlp_mse.json" <<'EOF'
{"input": {"type": "features", "dim": 8},
 "layers": [{"type": "linear", "name": "fc1", "out": 16}, {"type": "gelu"}, {"type": "linear", "name": "fc2", "out": 2}],
 "loss": {"type": "mse"}}
EOF
cat >"$T/mlp.ds.json" <<'EOF'
{"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}, "seed": 3}
EOF
head -c 6000 /usr/share/common-licenses/GPL-3 >"$T/text.txt" 2>/dev/null
if [ "$(wc -c <"$T/text.txt")" -lt 6000 ]; then # no GPL-3 here: any English-ish text will do
    for i in $(seq 200); do echo "line $i: the quick brown fox jumps over the lazy dog"; done | head -c 6000 >"$T/text.txt"
fi
head -c 60 "$T/text.txt" >"$T/short.txt" # 60 tokens: one sample of 32, fewer than a batch of 4

# .npy files with the struct module only: X [N, 8] float32, class labels [N] int64 (the argmax
# of the first three features: learnable), regression targets [N, 2] float32
python3 - "$T" <<'EOF'
import random, struct, sys
def npy(path, descr, shape, fmt, values):
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    hdr += " " * ((64 - (10 + len(hdr) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
        f.write(struct.pack("<%d%s" % (len(values), fmt), *values))
d = sys.argv[1]
random.seed(7)
n = 256
X = [random.gauss(0, 1) for _ in range(n * 8)]
npy(d + "/X.npy", "<f4", (n, 8), "f", X)
npy(d + "/y.npy", "<i8", (n,), "q", [max(range(3), key=lambda c: X[i * 8 + c]) for i in range(n)])
npy(d + "/t.npy", "<f4", (n, 2), "f", sum([[X[i * 8] + X[i * 8 + 1], 0.5 * X[i * 8 + 2]] for i in range(n)], []))
npy(d + "/X3.npy", "<f4", (3, 8), "f", X[:24])
npy(d + "/y3.npy", "<i8", (3,), "q", [0, 1, 2])
npy(d + "/y9.npy", "<i8", (n,), "q", [9] * n)
npy(d + "/Xnan.npy", "<f4", (n, 8), "f", X[:8 * 5] + [float("nan")] + X[8 * 5 + 1:])  # row 5, feature 0
npy(d + "/Xbig.npy", "<f4", (n, 8), "f", X[:8 * 6 + 3] + [70000.0] + X[8 * 6 + 4:])  # row 6, feature 3
npy(d + "/X64big.npy", "<f8", (n, 8), "d", X[:8 * 2 + 1] + [1e300] + X[8 * 2 + 2:])  # row 2, feature 1
# llm.c token shard (magic 20240520, version 1, uint16 tokens) with token 300 at index 257
toks = [i % 200 for i in range(400)]
toks[257] = 300
with open(d + "/oov.bin", "wb") as f:
    f.write(struct.pack("<256i", *([20240520, 1, len(toks)] + [0] * 253)))
    f.write(struct.pack("<%dH" % len(toks), *toks))
EOF

cd "$T" || exit 1
TRAIN=(gpt.json --config ds.json --data text.txt --quiet)

# ---- usage errors: exit 2 with a message --------------------------------------------------

expect_fail "no arguments: exit 2, says what is missing" 2 "no network file given"
expect_fail "unknown flag: exit 2, names it" 2 "unknown option --bogus" "${TRAIN[@]}" --bogus
expect_fail "--steps 0: exit 2" 2 "--steps: expected an integer >= 1" "${TRAIN[@]}" --steps 0
expect_fail "--steps abc: exit 2" 2 "found \"abc\"" "${TRAIN[@]}" --steps abc
expect_fail "--steps without a value: exit 2" 2 "--steps needs a value" "${TRAIN[@]}" --steps
expect_fail "a typo'd option: exit 2, the nearest one suggested" 2 "unknown option --stpes (did you mean --steps?)" \
    "${TRAIN[@]}" --stpes 3
expect_fail "a value to a switch: exit 2, says it takes none" 2 "option --quiet takes no value" "${TRAIN[@]}" --quiet=3
expect_fail "an ambiguous prefix: exit 2, names the candidates" 2 "option --sa is ambiguous (--save-weights, --save, --save_interval)" \
    "${TRAIN[@]}" --sa x
expect_fail "--world_size outside --plan: exit 2" 2 "--world_size is for --plan" "${TRAIN[@]}" --world_size 4
expect_fail "--steps with --plan: exit 2 (it trains nothing)" 2 "--steps does nothing with --plan" gpt.json --config ds.json --plan --steps 3
expect_fail "--data with --summary: exit 2" 2 "--data does nothing with --summary" --summary gpt.json --data text.txt
expect_fail "--data-order bogus: exit 2, names the value" 2 "bogus" "${TRAIN[@]}" --data-order bogus
expect_fail "missing --config: exit 2" 2 "--config" gpt.json --data text.txt
expect_fail "missing --data: exit 2" 2 "--data" gpt.json --config ds.json
expect_fail "a stray argument: exit 2" 2 "unexpected argument \"extra\"" gpt.json extra --config ds.json --data text.txt
expect_fail "--backend tpu: exit 2" 2 "tpu" "${TRAIN[@]}" --backend tpu
expect_fail "--seed -1: exit 2 (strtoull would read 2^64-1)" 2 "--seed: expected an integer from 0 to 18446744073709551615, found \"-1\"" \
    "${TRAIN[@]}" --seed -1
expect_fail "--seed 2^64: exit 2" 2 "found \"18446744073709551616\"" "${TRAIN[@]}" --seed 18446744073709551616
run --help
if [ "$rc" = 0 ] && grep -q "^usage: ds-train" "$T/out"; then ok "--help prints the usage, exit 0"; else notok "--help $(why)"; fi

# ---- files that are missing or invalid are named ------------------------------------------

expect_fail "missing network file: exit 2, names it" 2 "nosuch-net.json" nosuch-net.json --config ds.json --data text.txt
printf '{\n  "input": {"type": "tokens",,\n}\n' >bad-net.json
expect_fail "invalid network JSON: names file:line:col" 2 "bad-net.json:2:" bad-net.json --config ds.json --data text.txt
sed 's/"heads": 4/"heads": 5/' gpt.json >heads5.json
expect_fail "network error names the JSON path" 2 "heads5.json: layers[2].layers[0].layers[1].heads: 5 does not divide dim 32" \
    heads5.json --config ds.json --data text.txt
expect_fail "missing config file: exit 2, names it" 2 "nosuch-ds.json" gpt.json --config nosuch-ds.json --data text.txt
echo '{"train_micro_batch_size_per_gpu": "four"}' >bad-ds.json
expect_fail "invalid config value: names file and key" 2 "bad-ds.json: train_micro_batch_size_per_gpu" \
    gpt.json --config bad-ds.json --data text.txt
expect_fail "missing data: exit 2, names it" 2 "nosuch.txt" gpt.json --config ds.json --data nosuch.txt
# a program's bytes given as text: trains (every byte is a token), with a warning naming it
head -c 4000 text.txt >bin.txt && printf 'x\0y' >>bin.txt && cat text.txt >>bin.txt
run gpt.json --config ds.json --data bin.txt --quiet --steps 1
[ "$rc" = 0 ] && grep -q "ds-train: warning: --data bin.txt: 1 of the text files looks binary (NUL bytes in the first 4 KiB: bin.txt)" "$T/err" &&
    ok "text data with a NUL byte early: a warning naming the file" || notok "binary-looking data $(why)"

# ---- --summary ------------------------------------------------------------------------------

run --summary gpt.json
if [ "$rc" = 0 ] && grep -q "^layer " out && grep -q "^total: 21984 parameters" out &&
    grep -q "^h.0.attn .*attention.*\[1, 32, 32\]" out && grep -q "^lm_head .*(tied)" out; then
    ok "--summary prints the layer table and the totals"
else
    notok "--summary $(why)"
fi
run --summary gpt.json --config ds.json
if [ "$rc" = 0 ] && grep -q "^wte .*\[4, 32, 32\]" out; then ok "--summary with a config shows its micro-batch"; else notok "--summary --config $(why)"; fi
expect_fail "--summary of an invalid network: exit 2" 2 "bad-net.json:2:" --summary bad-net.json
shipped=0
for net in "$TESTDIR"/../share/configs/*.json; do
    case $net in *.ds.json) continue ;; esac
    [ -f "$net" ] || continue
    shipped=$((shipped + 1))
    cfg=${net%.json}.ds.json
    if [ -f "$cfg" ]; then run --summary "$net" --config "$cfg"; else run --summary "$net"; fi
    if [ "$rc" = 0 ] && grep -q "^total: " out; then ok "--summary of shipped $(basename "$net")"; else notok "--summary of shipped $net $(why)"; fi
done
[ "$shipped" -gt 0 ] || notok "no shipped networks found under $TESTDIR/../share/configs"

# ---- a short training run -------------------------------------------------------------------

run "${TRAIN[@]}" --steps 30 --data-order sequential --log-json log.jsonl --save-weights w.safetensors
if [ "$rc" = 0 ]; then ok "tiny GPT: 30 steps exit 0"; else notok "tiny GPT training $(why)"; fi
if python3 - log.jsonl 30 <<'EOF'; then ok "--log-json: one JSON object per step with step, loss, lr, grad_norm, ms, tokens_per_s"; else notok "--log-json contents"; fi
import json, math, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == int(sys.argv[2]), "%d lines" % len(lines)
for i, line in enumerate(lines):
    d = json.loads(line)
    for k in ("step", "loss", "lr", "grad_norm", "ms", "tokens_per_s"):
        assert k in d and isinstance(d[k], (int, float)) and math.isfinite(d[k]), (i, k, line)
    assert d["step"] == i + 1, line
    assert d["lr"] > 0 and d["grad_norm"] > 0 and d["ms"] >= 0 and d["tokens_per_s"] > 0, line
EOF
first=$(first_loss log.jsonl)
last=$(python3 2>/dev/null -c 'import json, sys; print([json.loads(l)["loss"] for l in open(sys.argv[1])][-1])' log.jsonl)
# untrained: ~ln 256 = 5.55; 30 AdamW steps at lr 3e-3 on English text bring it near 3.5
if lt "$last" "$first" && lt "$last" "$(python3 -c "print($first - 1.0)")"; then
    ok "tiny GPT: the last loss ($last) is well below the first ($first)"
else
    notok "tiny GPT: loss $first -> $last"
fi
if grep -q "^done: 30 steps" out; then ok "the final line reports the steps"; else notok "no final line $(why)"; fi

# ---- weights: save, refuse to overwrite, init from ---------------------------------------

if python3 - w.safetensors <<'EOF'; then ok "--save-weights writes safetensors with the parameters by name"; else notok "--save-weights file"; fi
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h.pop("__metadata__", None)
assert h["wte.weight"]["dtype"] == "F32" and h["wte.weight"]["shape"] == [256, 32], h["wte.weight"]
assert h["h.0.attn.qkv.weight"]["shape"] == [96, 32]
assert h["h.0.fc.weight"]["shape"] == [128, 32] and h["h.0.proj.weight"]["shape"] == [32, 128]
assert "lm_head.weight" not in h, "the tied head is saved as its own tensor"
assert len(h) == 16, sorted(h)
end = max(t["data_offsets"][1] for t in h.values())
assert 8 + n + end == len(b), "size"
EOF
sum_before=$(cksum <w.safetensors)
expect_fail "--save-weights refuses to overwrite (exit 2)" 2 "--force" "${TRAIN[@]}" --steps 2 --save-weights w.safetensors
check "... and leaves the file unchanged" test -s w.safetensors -a "$(cksum <w.safetensors)" = "$sum_before"
log_before=$(cksum <log.jsonl)
expect_fail "--log-json refuses to overwrite (exit 2)" 2 "--force" "${TRAIN[@]}" --steps 2 --log-json log.jsonl
check "... and leaves the log unchanged" test -s log.jsonl -a "$(cksum <log.jsonl)" = "$log_before"
cp w.safetensors w2.safetensors
expect_ok "--force overwrites" "${TRAIN[@]}" --steps 2 --save-weights w2.safetensors --force
check "... and the file changed" test "$(cksum <w2.safetensors)" != "$sum_before"

run "${TRAIN[@]}" --steps 1 --data-order sequential --init-from w.safetensors --log-json init.jsonl
if [ "$rc" = 0 ]; then ok "--init-from the saved weights: exit 0"; else notok "--init-from $(why)"; fi
init_first=$(first_loss init.jsonl 2>/dev/null || echo 99)
# the same first batch as the run that saved the weights: trained weights score far better
if lt "$init_first" "$(python3 -c "print($first - 1.0)")"; then
    ok "--init-from starts from the trained weights (first loss $init_first vs $first from scratch)"
else
    notok "--init-from: first loss $init_first, from scratch $first"
fi
run mlp.json --config mlp.ds.json --data X.npy --labels y.npy --steps 1 --init-from w.safetensors
if [ "$rc" = 2 ] && grep -q "missing: fc1.weight, fc1.bias, fc2.weight, fc2.bias" err &&
    grep -q "unexpected: wte.weight, wpe.weight" err && grep -qF "w.safetensors" err; then
    ok "--init-from weights of another network lists missing and unexpected names"
else
    notok "--init-from a foreign file $(why)"
fi
expect_fail "--init-from a missing file names it" 2 "nosuch.safetensors" "${TRAIN[@]}" --steps 1 --init-from nosuch.safetensors
# PyTorch saves a tied weight under both names: the copy is accepted only if it is the same
python3 - w.safetensors tied_same.safetensors tied_diff.safetensors <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h.pop("__metadata__", None)
data = b[8 + n:]
def write(path, extra):
    tensors = [(k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items()]
    tensors.append(("lm_head.weight", "F32", h["wte.weight"]["shape"], extra))
    hdr, off, blob = {}, 0, b""
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    j = json.dumps(hdr).encode()
    j += b" " * (-len(j) % 8)
    open(path, "wb").write(struct.pack("<Q", len(j)) + j + blob)
w = h["wte.weight"]["data_offsets"]
same = data[w[0]:w[1]]
write(sys.argv[2], same)
write(sys.argv[3], bytes([same[0] ^ 1]) + same[1:])
EOF
expect_ok "--init-from accepts a tied copy (lm_head.weight) equal to wte.weight" "${TRAIN[@]}" --steps 1 --init-from tied_same.safetensors
expect_fail "--init-from refuses a tied copy that differs from wte.weight" 2 "unexpected: lm_head.weight" "${TRAIN[@]}" --steps 1 --init-from tied_diff.safetensors

# ---- features from .npy -----------------------------------------------------------------

run mlp.json --config mlp.ds.json --data X.npy --labels y.npy --steps 60 --log-json mlp.jsonl --quiet
a=$(mean_loss mlp.jsonl 0 5 2>/dev/null || echo 0)
b=$(mean_loss mlp.jsonl -5 0 2>/dev/null || echo 99)
if [ "$rc" = 0 ] && lt "$b" "$(python3 -c "print($a * 0.7)")"; then
    ok "MLP on .npy classes trains (mean loss of the first 5 steps $a, of the last 5 $b)"
else
    notok "MLP on .npy: $a -> $b $(why)"
fi
if grep -q '"samples_per_s"' mlp.jsonl; then ok "features runs log samples_per_s"; else notok "features runs log samples_per_s"; fi
run mlp_mse.json --config mlp.ds.json --data X.npy --labels t.npy --steps 60 --log-json mse.jsonl --quiet
a=$(mean_loss mse.jsonl 0 5 2>/dev/null || echo 0)
b=$(mean_loss mse.jsonl -5 0 2>/dev/null || echo 99)
if [ "$rc" = 0 ] && lt "$b" "$(python3 -c "print($a * 0.7)")"; then
    ok "MLP with mse on .npy targets trains ($a -> $b)"
else
    notok "MLP mse on .npy: $a -> $b $(why)"
fi
mkdir -p linkdir && cp text.txt linkdir/ && ln -sf "$T/no-such-file" linkdir/gone.txt
expect_fail "a dangling symbolic link in a --data directory: named" 2 "linkdir/gone.txt: a symbolic link to a file that is not there" \
    gpt.json --config ds.json --data linkdir --steps 1
expect_fail "a NaN in the features: exit 2 before the first step, the file, row and feature named" 2 \
    "Xnan.npy: row 5, feature 0: nan (expected a finite number)" \
    mlp.json --config mlp.ds.json --data Xnan.npy --labels y.npy --steps 200 --data-order sequential
expect_fail "a float64 feature beyond fp32's range: named as such" 2 "X64big.npy: row 2, feature 1: 1e+300 does not fit in fp32" \
    mlp.json --config mlp.ds.json --data X64big.npy --labels y.npy --steps 2
# files that are not text, given as token data: named, with what to give instead
python3 -c "
import struct
with open('toks.npy', 'wb') as f:  # a NumPy file of token ids
    h = b\"{'descr': '<u2', 'fortran_order': False, 'shape': (64,), }\"
    h += b' ' * (63 - (10 + len(h)) % 64) + b'\\n'
    f.write(b'\\x93NUMPY\\x01\\x00' + struct.pack('<H', len(h)) + h + bytes(128))"
expect_fail "a .npy of token ids as --data: not read as text" 2 "toks.npy: a NumPy file, not text" gpt.json --config ds.json --data toks.npy --steps 1
mkdir -p megdir && cp "$DS_TEST_DIR/data/megatron_tiny.bin" "$DS_TEST_DIR/data/megatron_tiny.idx" megdir/
expect_fail "a folder holding a Megatron dataset: give its prefix" 2 "give the dataset by its prefix (--data megdir/megatron_tiny)" \
    gpt.json --config ds.json --data megdir --steps 1
mkdir -p loopdir && cp text.txt loopdir/ && ln -sf l2 loopdir/l1 && ln -sf l1 loopdir/l2
expect_fail "a symbolic link loop in a --data folder: named as a loop" 2 "loopdir/l1: Too many levels of symbolic links" \
    gpt.json --config ds.json --data loopdir --steps 1
expect_fail "features without --labels: exit 2" 2 "--labels" mlp.json --config mlp.ds.json --data X.npy
# fp16.auto_cast: the inputs are rounded to fp16, and one beyond its range is named
sed 's/"seed": 3/"seed": 3, "fp16": {"enabled": true, "auto_cast": true}/' mlp.ds.json >cast.ds.json
run mlp.json --config cast.ds.json --data X.npy --labels y.npy --steps 2
if [ "$rc" = 0 ] && grep -q "inputs rounded to fp16 (fp16.auto_cast)" "$T/out"; then ok "fp16.auto_cast: trains, and the precision line says the inputs are rounded"
else notok "fp16.auto_cast run $(why)"; fi
expect_fail "fp16.auto_cast: a feature beyond fp16's range names the file, row and feature" 1 \
    "Xbig.npy: row 6, feature 3: 70000 is beyond fp16's range (largest finite value 65504); fp16.auto_cast in cast.ds.json" \
    mlp.json --config cast.ds.json --data Xbig.npy --labels y.npy --steps 200 --data-order sequential
expect_ok "without fp16.auto_cast the same feature is taken" mlp.json --config mlp.ds.json --data Xbig.npy --labels y.npy --steps 2
expect_fail "--labels on a tokens network: exit 2" 2 "--labels" "${TRAIN[@]}" --labels y.npy

# ---- data errors ----------------------------------------------------------------------------

expect_fail ".npy data shorter than one batch: exit 2, names the file" 2 "X3.npy: 3 samples, fewer than one batch of 8" \
    mlp.json --config mlp.ds.json --data X3.npy --labels y3.npy
expect_fail "text shorter than one batch: exit 2, names the file" 2 "short.txt: 1 samples, fewer than one batch of 4" \
    gpt.json --config ds.json --data short.txt
expect_fail "out-of-vocab token in an llm.c shard: names file, position and value" 2 \
    "oov.bin: token 257 (counting from 0 in this file) is 300, but vocab_size is 256" gpt.json --config ds.json --data oov.bin
expect_fail "labels of the wrong length: exit 2, names the labels file" 2 "y3.npy: expected integer class labels of shape (256,)" \
    mlp.json --config mlp.ds.json --data X.npy --labels y3.npy
expect_fail "a class label out of range: exit 2, names file and label" 2 "y9.npy: label 0 is 9, expected a class in [0, 3)" \
    mlp.json --config mlp.ds.json --data X.npy --labels y9.npy

# ---- determinism ------------------------------------------------------------------------------

run "${TRAIN[@]}" --steps 8 --seed 5 --log-json s5a.jsonl
rc1=$rc
run "${TRAIN[@]}" --steps 8 --seed 5 --log-json s5b.jsonl
rc2=$rc
run "${TRAIN[@]}" --steps 8 --seed 6 --log-json s6.jsonl
rc3=$rc
if [ "$rc1$rc2$rc3" = 000 ] && [ "$(losses s5a.jsonl | wc -w)" = 8 ] && [ "$(losses s5a.jsonl)" = "$(losses s5b.jsonl)" ]; then
    ok "the same --seed gives the same losses"
else
    notok "same seed: $(losses s5a.jsonl 2>&1) vs $(losses s5b.jsonl 2>&1)"
fi
if [ "$rc3" = 0 ] && [ "$(losses s5a.jsonl)" != "$(losses s6.jsonl)" ]; then
    ok "another --seed gives other losses"
else
    notok "--seed 6 gave the same losses as --seed 5"
fi
# the whole range a config's "seed" has: --seed 2^64-1 is the config's seed 2^64-1
sed 's/"seed": 1}/"seed": 18446744073709551615}/' ds.json > seedmax.json
run gpt.json --config seedmax.json --data text.txt --steps 3 --log-json smax-cfg.jsonl
rc1=$rc
run gpt.json --config ds.json --data text.txt --steps 3 --seed 18446744073709551615 --log-json smax-flag.jsonl
if [ "$rc1$rc" = 00 ] && [ "$(losses smax-cfg.jsonl | wc -w)" = 3 ] && [ "$(losses smax-cfg.jsonl)" = "$(losses smax-flag.jsonl)" ]; then
    ok "--seed 18446744073709551615 trains as the config's seed 2^64-1"
else
    notok "--seed 2^64-1: $(losses smax-cfg.jsonl 2>&1) vs $(losses smax-flag.jsonl 2>&1) $(why)"
fi
# both kernel variants from the same initialization: the first loss agrees to float rounding
run "${TRAIN[@]}" --steps 1 --seed 5 --backend cpu:generic --log-json gen.jsonl
if [ "$rc" = 0 ] && python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-5 * abs(b) else 1)' \
    "$(first_loss gen.jsonl)" "$(first_loss s5a.jsonl)"; then
    ok "--backend cpu:generic trains, first loss matches the default kernels"
else
    notok "--backend cpu:generic $(why)"
fi

# activation checkpointing: the same losses, fewer activation bytes, the line that says so
sed 's/"count": 1/"count": 3/' gpt.json >gpt3.json
act_mb() { sed -n 's/.*activations \([0-9.]*\) MB.*/\1/p' "$1" | head -1; }
run gpt3.json --config ds.json --data text.txt --steps 4 --seed 5 --log-json ck0.jsonl
rc1=$rc; cp "$T/out" ck0.out
run gpt3.json --config ds.json --data text.txt --steps 4 --seed 5 --log-json ck1.jsonl --checkpoint-activations
if [ "$rc1$rc" = 00 ] && [ "$(losses ck0.jsonl | wc -w)" = 4 ] && [ "$(losses ck0.jsonl)" = "$(losses ck1.jsonl)" ] &&
    grep -q "activation checkpointing: 3 checkpoints (h x 3); backward recomputes 2 of them" "$T/out" &&
    lt "$(act_mb "$T/out")" "$(act_mb ck0.out)"; then
    ok "--checkpoint-activations: the same losses, activations $(act_mb ck0.out) -> $(act_mb "$T/out") MB"
else
    notok "--checkpoint-activations: $(losses ck0.jsonl 2>&1) vs $(losses ck1.jsonl 2>&1) $(why)"
fi
sed -e 's/"steps_per_print": 10/"steps_per_print": 2/' -e 's/"seed": 1}/"seed": 1, "activation_checkpointing": {"profile": true}}/' ds.json >ckprof.json
run gpt3.json --config ckprof.json --data text.txt --steps 2 --log-json ckprof.jsonl --checkpoint-activations
if [ "$rc" = 0 ] && grep -q "^\[Rank 0\] activation checkpointing: forward [0-9.]* ms, backward [0-9.]* ms (recomputation [0-9.]* ms)" "$T/out" &&
    python3 -c 'import json, sys; d = [json.loads(l) for l in open(sys.argv[1])]; sys.exit(0 if len(d) == 2 and all(x["ckpt_backward_ms"] > x["ckpt_recompute_ms"] > 0 < x["ckpt_forward_ms"] for x in d) else 1)' ckprof.jsonl; then
    ok "activation_checkpointing.profile: the segments' times, printed and in --log-json"
else
    notok "activation_checkpointing.profile $(why)"
fi
# --plan reads the config as training does: duplicate keys, --strict-config, its warnings
printf '{"train_micro_batch_size_per_gpu": 8,\n "train_micro_batch_size_per_gpu": 4}\n' >dupmb.json
expect_fail "--plan: a key written twice is refused as in training" 2 "dupmb.json:2: duplicate key" --plan gpt3.json --config dupmb.json
echo '{"train_micro_batch_size_per_gpu": 4, "frobnicate": 1}' >unk.json
expect_fail "--plan --strict-config: an unknown key is an error" 2 "unk.json: unknown key \"frobnicate\"" --plan gpt3.json --config unk.json --strict-config
run --plan gpt3.json --config <(cat ds.json) # (read once: a pipe)
[ "$rc" = 0 ] && grep -q "^plan: gpt3.json" "$T/out" && ok "--plan with a config from a pipe" || notok "--plan from a pipe $(why)"
run --plan gpt3.json --config unk.json
[ "$rc" = 0 ] && grep -q "warning: unk.json: unknown key \"frobnicate\"" "$T/err" && ok "--plan prints the config's warnings" ||
    notok "--plan warnings $(why)"
run --plan gpt3.json --config ds.json
[ "$rc" = 0 ] && grep -q "^with --checkpoint-activations: activations [0-9.]* MB instead of [0-9.]* MB (3 checkpoints; backward recomputes" "$T/out" &&
    ok "--plan: what --checkpoint-activations would save" || notok "--plan checkpointing line $(why)"
sed 's/"seed": 1}/"seed": 1, "activation_checkpointing": {"contiguous_memory_optimization": true}}/' ds.json >contig.json
run --plan gpt3.json --config contig.json
[ "$rc" = 0 ] && grep -q "^with --checkpoint-activations: refused: contig.json: activation_checkpointing: contiguous_memory_optimization=true needs partition_activations=true" "$T/out" &&
    ok "--plan: a section that checkpointing would refuse is said, the plan stands" || notok "--plan refused checkpointing $(why)"
# a micro-batch whose activations would overflow int64 element counts: refused, named
echo '{"input": {"type": "features", "dim": 1073741824}, "layers": [{"type": "relu"}], "loss": {"type": "mse"}}' >wide.json
echo '{"train_micro_batch_size_per_gpu": 17179869184, "optimizer": {"type": "SGD", "params": {"lr": 0.01}}}' >hugemb.json
expect_fail "--plan: a micro-batch too large for the int64 sizes: exit 2, names the layer" 2 \
    "a micro-batch of 17179869184 samples is too large for layer layers[0]: 1.84e+19 values in one activation tensor (at most 2^62)" \
    wide.json --config hugemb.json --plan
run gpt3.json --config ds.json --plan --checkpoint-activations
[ "$rc" = 0 ] && grep -q "^activation checkpointing: 3 checkpoints (the activations above)" "$T/out" &&
    ok "--plan --checkpoint-activations: counted in the table" || notok "--plan --checkpoint-activations $(why)"
run --summary gpt3.json --checkpoint-activations
[ "$rc" = 0 ] && grep -q "^activation checkpointing: 3 checkpoints (h x 3); backward recomputes forward" "$T/out" &&
    ok "--summary --checkpoint-activations: the recomputed FLOPs" || notok "--summary --checkpoint-activations $(why)"
expect_fail "--checkpoint-activations on a network without a repeat: exit 2" 2 "mlp.json: checkpointing activations needs a repeat block" \
    mlp.json --config mlp.ds.json --data X.npy --labels y.npy --steps 1 --checkpoint-activations
expect_fail "... and with --summary" 2 "mlp.json: checkpointing activations needs a repeat block" --summary mlp.json --checkpoint-activations
sed 's/"seed": 1}/"seed": 1, "activation_checkpointing": {"partition_activations": true, "contiguous_memory_optimization": true, "number_checkpoints": 2}}/' ds.json >ack.json
expect_fail "activation_checkpointing.number_checkpoints below the network's checkpoints: named" 2 \
    "ack.json: activation_checkpointing.number_checkpoints: expected at least 3" \
    gpt3.json --config ack.json --data text.txt --steps 1 --checkpoint-activations
run gpt3.json --config ack.json --data text.txt --steps 1
[ "$rc" = 0 ] && grep -q "warning: ack.json: activation_checkpointing: gpt3.json checkpoints no layers, so the section changes nothing" "$T/err" &&
    ok "activation_checkpointing without a checkpointed repeat: trains, with a warning" || notok "activation_checkpointing warning $(why)"
sed 's/"seed": 1}/"seed": 1, "activation_checkpointing": {"profile": true}}/' ds.json >acp.json
run gpt3.json --config acp.json --data text.txt --steps 1
[ "$rc" = 0 ] && grep -q "warning: acp.json: activation_checkpointing: gpt3.json checkpoints no layers" "$T/err" &&
    ok "... a section with only profile: the same warning" || notok "activation_checkpointing profile-only warning $(why)"

# curriculum_learning (seqlen): the real config asks for more positions than gpt3.json has; a
# schedule that fits shows in the step lines and --log-json
expect_fail "curriculum_learning beyond the network's seq_len: named" 2 \
    "bmds-tests__ds_config_cl.json: curriculum_learning.max_difficulty: 128 positions, beyond gpt3.json's seq_len 32" \
    gpt3.json --config "$TESTDIR/data/dsconfigs/bmds-tests__ds_config_cl.json" --data text.txt --steps 1
sed 's/"seed": 1}/"seed": 1, "curriculum_learning": {"enabled": true, "curriculum_type": "seqlen", "min_difficulty": 8, "max_difficulty": 32, "schedule_type": "fixed_linear", "schedule_config": {"total_curriculum_step": 3, "difficulty_step": 8}}}/' ds.json >cl.json
run gpt3.json --config cl.json --data text.txt --steps 4 --log-json cl.jsonl
if [ "$rc" = 0 ] && grep -q "^curriculum_learning: training forwards read the first N of 32 positions of each sample: 16 at step 1, 32 from step 3 (fixed_linear, multiples of 8)" "$T/out" &&
    [ "$(python3 -c 'import json, sys; print(" ".join(str(json.loads(l)["seqlen"]) for l in open(sys.argv[1])))' cl.jsonl)" = "16 24 32 32" ]; then
    ok "curriculum_learning: 16, 24, 32, 32 positions in steps 1-4, said at the start and in --log-json"
else
    notok "curriculum_learning run $(why)"
fi
expect_fail "curriculum_learning with --prof_db: refused before training" 2 "--prof_db with curriculum_learning in cl.json is not supported yet" \
    gpt3.json --config cl.json --data text.txt --steps 1 --prof_db cl.db
[ ! -e cl.db ] && ok "... and no database is left behind" || notok "cl.db was created"

expect_fail "--inject-grad-inf for a rank the job lacks: exit 2" 2 "there is no rank 5 in a job of 1" \
    "${TRAIN[@]}" --steps 1 --inject-grad-inf 1:5
expect_ok "--micro-batch where the config gives one: runs" "${TRAIN[@]}" --steps 1 --micro-batch 3
grep -q "warning: --micro-batch 3 not used: the config gives micro-batch" "$T/err" && ok "... with a warning that it was not used" \
    || notok "--micro-batch warning $(why)"
expect_fail "network and config swapped: said so" 2 "gpt.json: a network file (it has \"input\" and \"layers\"), not a DeepSpeed config" \
    ds.json --config gpt.json --data text.txt

# ---- outputs checked before any training, never replacing what is not a regular file ----------
expect_fail "--save-weights into a missing folder: exit 2 before training" 2 \
    "--save-weights nodir/w.safetensors: cannot write there" "${TRAIN[@]}" --steps 2 --save-weights nodir/w.safetensors
grep -q "^done" "$T/out" && notok "... it trained first" || ok "... without training"
expect_fail "--save DIR where DIR is a file: exit 2" 2 "--save text.txt: not a directory" "${TRAIN[@]}" --steps 2 --save text.txt
expect_ok "--save into folders that do not exist yet: made, as the save makes them" "${TRAIN[@]}" --steps 1 --save new/deep/ck
[ -f new/deep/ck/latest ] && ok "... and the checkpoint is there" || notok "--save new/deep/ck: $(ls -R new 2>&1 | head -5)"
expect_ok "--log-json inside a --save folder that does not exist yet" "${TRAIN[@]}" --steps 1 --save new2/ck --log-json new2/ck/log.jsonl
[ "$(grep -c '"step"' new2/ck/log.jsonl 2>/dev/null)" = 1 ] && ok "... and the log is there" || notok "log in new save folder $(why)"
echo precious >keep.jsonl
expect_fail "a run refused before training (its checkpoint exists) with --force: exit 2" 2 "exists already" \
    "${TRAIN[@]}" --steps 1 --save new2/ck --log-json keep.jsonl --force
[ "$(cat keep.jsonl)" = precious ] && ok "... and the existing log is untouched" || notok "the refused run truncated its log"
expect_fail "two outputs on one path: exit 2" 2 "are the same file" "${TRAIN[@]}" --steps 2 --log-json same.out --save-weights ./same.out
[ ! -e same.out ] && ok "... and nothing written" || notok "same.out was written"
if mknod dev0 c 1 3 2>/dev/null; then # a /dev/null of our own: --force must not replace it
    expect_fail "--save-weights onto a device node with --force: refused" 2 "exists and is not a regular file" \
        "${TRAIN[@]}" --steps 1 --save-weights dev0 --force
    expect_fail "--prof_db onto a device node with --force: refused" 2 "exists and is not a regular file" \
        "${TRAIN[@]}" --steps 1 --prof_db dev0 --force
    [ -c dev0 ] && ok "... the device node is still one" || notok "dev0 was replaced: $(ls -l dev0)"
else
    ok "# SKIP device nodes: mknod is not permitted here"
fi
if [ -w /dev/full ]; then
    expect_fail "--log-json on a full device: exit 1 naming it" 1 "--log-json /dev/full: write failed at step 1" \
        "${TRAIN[@]}" --steps 2 --log-json /dev/full
else
    ok "# SKIP --log-json /dev/full: no /dev/full"
fi
{ "$DS" "${TRAIN[@]}" --steps 2 --log-json /dev/stdout 2>"$T/err"; echo $? >rc.txt; } | cat >stdout.log; rc=$(cat rc.txt)
[ $rc = 0 ] && [ "$(grep -c '"step"' stdout.log)" = 2 ] && ok "--log-json /dev/stdout (a pipe) writes there, no --force needed" \
    || notok "--log-json /dev/stdout $(why)"
mkfifo data.fifo
timeout 10 "$DS" gpt.json --config ds.json --data data.fifo --steps 1 >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "data.fifo: is not a regular file" "$T/err" && ok "a FIFO as --data: refused at once" \
    || notok "--data FIFO $(why)"

tap_summary
