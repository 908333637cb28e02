#!/usr/bin/env bash
# The 58 real DeepSpeed configs in tests/data/dsconfigs, each given unchanged to ds-train for one
# step of a tiny GPT (seq_len 128, the longest curriculum among them) on one rank: every config
# either trains or is refused before training with exit 2 and a message naming the config file;
# the ones that train are exactly those tests/test_config.c's table says load (DS_OK).
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
B=${DS_BUILD_DIR:-.}
TESTDIR=${DS_TEST_DIR:-$(cd "$(dirname "$0")" && pwd)}
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-configs.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

# 530,000 bytes: 4140 samples of 128 tokens, more than the largest train_batch_size that trains
# (4096: progressive layer drop's BERT config)
for i in $(seq 16); do cat /usr/share/common-licenses/GPL-3 2>/dev/null; done | head -c 530000 > text.txt
if [ "$(wc -c <text.txt)" -lt 530000 ]; then
    for i in $(seq 11000); do echo "line $i: the quick brown fox jumps over the lazy dog"; done | head -c 530000 >text.txt
fi
cat > net.json <<'JSON'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 128},
 "layers": [{"type": "embedding", "name": "wte", "dim": 16}, {"type": "position_embedding", "name": "wpe"},
  {"type": "repeat", "name": "h", "count": 2, "layers": [
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_1"}, {"type": "attention", "name": "attn", "heads": 2}]},
   {"type": "residual", "layers": [{"type": "layernorm", "name": "ln_2"}, {"type": "linear", "name": "fc", "out": 64},
    {"type": "gelu", "approximate": "tanh"}, {"type": "linear", "name": "proj", "out": 16}]}]},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
JSON

n=0
: > trained
for f in "$TESTDIR"/data/dsconfigs/*.json; do
    name=$(basename "$f")
    n=$((n + 1))
    "$B/ds-train" net.json --config "$f" --data text.txt --steps 1 --micro-batch 2 --quiet >out 2>err
    rc=$?
    if [ $rc = 0 ]; then
        grep -q "^done: 1 step in" out || notok "$name: exit 0 without the done line: $(tail -c 300 out)"
        echo "$name" >> trained
    elif [ $rc = 2 ] && grep -qF "$name" err; then
        :
    else
        notok "$name: exit $rc, or an error that does not name the file: $(grep -v '^ds-train: warning' err | head -c 300)"
    fi
done
[ $n = 58 ] && ok "58 real configs given to ds-train" || notok "$n configs in $TESTDIR/data/dsconfigs"
sort trained > trained.sorted
sed -n 's/^    {"\(.*\.json\)", DS_OK, NULL},$/\1/p' "$TESTDIR/test_config.c" | sort > expected
if [ -s expected ] && cmp -s trained.sorted expected; then
    ok "$(wc -l < trained.sorted) of them train one step unchanged: those test_config's table loads"
else
    notok "trained and loaded differ: $(diff expected trained.sorted | tr '\n' ' ')"
fi
tap_summary
