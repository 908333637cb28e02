#!/usr/bin/env bash
# DeepSpeed's monitors from ds-train: csv_monitor's files (one per event, "step,<name>" header,
# rows "<global samples>,<value>" as Python writes floats) and tensorboard's event file, read
# here by a TFRecord/protobuf reader of its own (CRC-32C of every length and record, Event and
# Summary fields): the same events as the CSV files at the same steps, values as float32; the
# losses are --log-json's; fp16's loss scale and wall_clock_breakdown's timers; two ranks write
# one set (rank 0); folders made as needed; bad paths refused before training. One "ok"/"not ok"
# line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES
B=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
command -v python3 >/dev/null || { echo "python3 is needed to read the files: skipping"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-monitor.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

head -c 30000 /usr/share/common-licenses/GPL-3 > text.txt 2>/dev/null
[ "$(wc -c <text.txt)" -ge 30000 ] || for i in $(seq 800); do echo "line $i: the quick brown fox"; done > text.txt
cat > net.json <<'JSON'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 32},
 "layers": [{"type": "embedding", "name": "wte", "dim": 32}, {"type": "position_embedding", "name": "wpe"},
  {"type": "layernorm", "name": "ln_f"}, {"type": "linear", "name": "lm_head", "out": 256, "bias": false, "tied_to": "wte"}],
 "loss": {"type": "cross_entropy"}}
JSON
cat > ds.json <<'JSON'
{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "seed": 3, "wall_clock_breakdown": true,
 "optimizer": {"type": "AdamW", "params": {"lr": 0.002}},
 "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_max_lr": 0.002}},
 "fp16": {"enabled": true, "initial_scale_power": 18},
 "tensorboard": {"enabled": true, "output_path": "runs/tb", "job_name": "job1"},
 "csv_monitor": {"enabled": true, "output_path": "runs/csv/", "job_name": "job1"}}
JSON

# read.py CSVDIR EVENTFILE LOGJSON TB: every check, one line of findings or an error
cat > read.py <<'EOF'
import glob, json, os, struct, sys

def crc32c(data):
    c = 0xffffffff
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82f63b78 & -(c & 1))
    return c ^ 0xffffffff

def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xa282ead8) & 0xffffffff

def varint(b, i):
    v = s = 0
    while True:
        x = b[i]; i += 1
        v |= (x & 0x7f) << s; s += 7
        if x < 0x80:
            return v, i

def fields(b):
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 1:
            v = b[i:i + 8]; i += 8
        elif wt == 5:
            v = b[i:i + 4]; i += 4
        elif wt == 2:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        else:
            sys.exit('wire type %d' % wt)
        out.append((f, wt, v))
    return out

csvdir, evfile, logjson, tb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
raw = open(evfile, 'rb').read()
i, events = 0, []
while i < len(raw):
    head = raw[i:i + 8]
    (n,) = struct.unpack('<Q', head)
    (hc,) = struct.unpack('<I', raw[i + 8:i + 12])
    if hc != masked(head):
        sys.exit('record at %d: length CRC' % i)
    data = raw[i + 12:i + 12 + n]
    (dc,) = struct.unpack('<I', raw[i + 12 + n:i + 16 + n])
    if dc != masked(data):
        sys.exit('record at %d: data CRC' % i)
    i += 16 + n
    ev = {}
    for f, wt, v in fields(data):
        if f == 1 and wt == 1: ev['wall_time'] = struct.unpack('<d', v)[0]
        elif f == 2 and wt == 0: ev['step'] = v
        elif f == 3 and wt == 2: ev['file_version'] = v.decode()
        elif f == 5 and wt == 2:
            vals = [dict((g, x) for g, _, x in fields(val)) for h, _, val in fields(v) if h == 1]
            ev['values'] = [(x[1].decode(), struct.unpack('<f', x[2])[0]) for x in vals]
        else:
            sys.exit('unexpected Event field %d' % f)
    events.append(ev)
if events[0].get('file_version') != 'brain.Event:2' or not events[0]['wall_time'] > 1.6e9:
    sys.exit('first event %s' % events[0])
tbv = {}
for ev in events[1:]:
    (tag, val), = ev['values']
    tbv.setdefault(tag, []).append((ev['step'], val))

csv = {}
for path in sorted(glob.glob(csvdir + '/*.csv')):
    lines = open(path, newline='').read().split('\r\n')
    if lines[-1] != '':
        sys.exit('%s does not end with \\r\\n' % path)
    name = os.path.basename(path)[:-4]
    want_head = 'step,' + name.split('_Samples_')[-1]
    if lines[0] != want_head:
        sys.exit('%s: header %r, expected %r' % (path, lines[0], want_head))
    csv['Train/Samples/' + name.split('Train_Samples_')[-1]] = [(int(l.split(',')[0]), l.split(',')[1]) for l in lines[1:-1]]

log = [json.loads(l) for l in open(logjson)]
tags = sorted(csv)
expect = sorted('Train/Samples/' + t for t in ['train_loss', 'lr', 'loss_scale'] +
                ['elapsed_time_ms_' + x for x in ('forward', 'backward', 'backward_inner', 'backward_allreduce', 'step')])
if tags != expect or sorted(tbv) != expect:
    sys.exit('events: csv %s, tensorboard %s' % (tags, sorted(tbv)))
n = len(log)
for tag in expect:
    rows = csv[tag]
    # train_loss at the samples before the step, the rest after it
    steps = [tb * (k + (0 if tag.endswith('train_loss') else 1)) for k in range(n)]
    if [s for s, _ in rows] != steps or [s for s, _ in tbv[tag]] != steps:
        sys.exit('%s steps: csv %s, tensorboard %s, expected %s' % (tag, [s for s, _ in rows], [s for s, _ in tbv[tag]], steps))
    for (s, txt), (_, f32) in zip(rows, tbv[tag]):
        if repr(float(txt)) != txt:
            sys.exit('%s: %r is not how Python writes %r' % (tag, txt, float(txt)))
        if struct.unpack('<f', struct.pack('<f', float(txt)))[0] != f32:
            sys.exit('%s at %d: csv %s, tensorboard %r' % (tag, s, txt, f32))
losses = [float(t) for _, t in csv['Train/Samples/train_loss']]
if losses != [r['loss'] for r in log]:
    sys.exit('train_loss %s, --log-json %s' % (losses[:3], [r['loss'] for r in log][:3]))
scales = [float(t) for _, t in csv['Train/Samples/loss_scale']]
# the scale after each step is the one the next step used (--log-json's loss_scale)
if scales[:-1] != [r['loss_scale'] for r in log[1:]]:
    sys.exit('loss scales %s, --log-json %s' % (scales[:4], [r['loss_scale'] for r in log][:4]))
# the lr after each step is the one the next step used (--log-json's, printed to 7 digits)
lrs = [float(t) for _, t in csv['Train/Samples/lr']]
if any(abs(a - r['lr']) > 1e-6 * abs(r['lr']) for a, r in zip(lrs, log[1:])) or not lrs[-1] > 0:
    sys.exit('lr %s, --log-json %s' % (lrs, [r['lr'] for r in log]))
print('%d events x %d steps, %d records' % (len(expect), n, len(events)))
EOF

"$B/ds-train" net.json --config ds.json --data text.txt --steps 6 --log-json log.jsonl >out 2>err; rc=$?
ev=$(ls runs/tb/job1/events.out.tfevents.* 2>/dev/null | head -1)
if [ $rc = 0 ] && [ -n "$ev" ] && grep -q "^tensorboard: events in $ev" out && grep -q "^csv_monitor: one file per event in runs/csv/job1/" out &&
    got=$(python3 read.py runs/csv/job1 "$ev" log.jsonl 8 2>&1); then
    ok "1 rank: csv files and the event file hold the same events ($got), losses as --log-json"
else notok "1 rank: rc $rc $(head -c 300 err) ${got:-}"; fi

# again: the CSV files are appended to (a second header, as DeepSpeed's), a second event file
sleep 1
"$B/ds-train" net.json --config ds.json --data text.txt --steps 2 >/dev/null 2>err
if [ "$(ls runs/tb/job1 | wc -l)" = 2 ] && [ "$(grep -c '^step,train_loss' runs/csv/job1/Train_Samples_train_loss.csv)" = 2 ] &&
    [ "$(wc -l < runs/csv/job1/Train_Samples_train_loss.csv)" = 10 ]; then
    ok "a second run: a new event file, the CSV files appended to with a header"
else notok "second run: $(ls runs/tb/job1) $(cat runs/csv/job1/Train_Samples_train_loss.csv | head -c 300)"; fi

# two ranks: rank 0 writes; the loss is the mean over the ranks (as --log-json's)
rm -rf runs
if "$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$B/ds-train" net.json --config ds.json \
    --data text.txt --steps 6 --log-json log2.jsonl >out2 2>err2 &&
    [ "$(ls runs/tb/job1 | wc -l)" = 1 ] && got=$(python3 read.py runs/csv/job1 runs/tb/job1/events.out.tfevents.* log2.jsonl 8 2>&1); then
    ok "2 ranks: one event file and one set of CSV files ($got)"
else notok "2 ranks: $(head -c 300 err2) ${got:-}"; fi

# a path that cannot be a folder: refused before training, naming it
echo x > file
sed 's|"output_path": "runs/tb"|"output_path": "file"|' ds.json > bad.json
"$B/ds-train" net.json --config bad.json --data text.txt --steps 2 >out3 2>err3; rc=$?
if [ $rc = 2 ] && grep -q "bad.json: tensorboard: file: not a directory\|bad.json: tensorboard: file/job1: cannot create" err3 && ! grep -q "^step\|^done" out3; then
    ok "tensorboard.output_path a file: refused before training, naming it ($(cat err3))"
else notok "bad output_path: rc $rc $(cat err3) $(head -3 out3)"; fi
# ... on 2 ranks: rank 0 cannot open it, and both stop before training (none waits for the other)
timeout 120 "$B/ds-launch" --master_port 0 --num_gpus 2 --export OMP_NUM_THREADS=1 "$B/ds-train" net.json \
    --config bad.json --data text.txt --steps 2 >out4 2>err4
rc=$?
if [ $rc = 0 ]; then notok "2 ranks, bad output_path: trained"
# (ds-launch stops the other rank when the first exits, which may lose its message: either
# names the cause, rank 1 as rank 0's; rank 1's error about bad.json, if any, is that refusal)
elif grep -q "\[rank 0\] ds-train: bad.json: tensorboard: file/job1: cannot create\|\[rank 1\] ds-train: bad.json: rank 0 could not open the monitors: tensorboard: file/job1: cannot create" err4 &&
    { ! grep -q "^\[rank 1\] ds-train: bad.json: " err4 || grep -q "^\[rank 1\] ds-train: bad.json: rank 0 could not open the monitors: tensorboard" err4; } &&
    grep -q "job failed: rank [01] on localhost, exit status 2" err4 && ! grep -q "step 1" out4; then
    ok "2 ranks, bad output_path: the job refuses before training (exit 2), naming rank 0's cause"
else notok "2 ranks, bad output_path: exit $rc (124: timed out), stderr: $(tail -c 600 err4), stdout: $(tail -c 300 out4)"; fi
tap_summary
