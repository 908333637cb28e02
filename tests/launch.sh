#!/bin/bash
# ds-launch from the outside, local mode: --dry-run JSON, jobs of 1, 2 and 4 ranks and their
# environment, arguments passed untouched, failure and signal teardown (exit status, no process
# left), per-rank logs, hostfile/filter errors, --master_port 0. One "ok"/"not ok" line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))

BUILD=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
L="$BUILD/ds-launch"

if [ ! -x "$L" ]; then
    echo "not ok - $L is not built"
    echo "0 passed, 1 failed"
    exit 1
fi
if ! command -v python3 >/dev/null; then
    echo "python3 is needed to read the --dry-run JSON: skipping"
    exit 77
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/ds-launch.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
export HOME="$T/home" # no user .deepspeed_env may leak in
mkdir -p "$HOME"
unset DS_ENV_FILE OMP_NUM_THREADS

run() {
    "$L" "$@" >"$T/out" 2>"$T/err"
    rc=$?
}
why() { echo "(exit $rc; stdout: $(head -c 300 "$T/out" | tr '\n' ' '); stderr: $(head -c 400 "$T/err" | tr '\n' ' '))"; }
expect_fail() {
    local desc=$1 want=$2 text=$3
    shift 3
    run "$@"
    if [ "$rc" = "$want" ] && grep -qF -- "$text" "$T/err"; then ok "$desc"; else notok "$desc $(why)"; fi
}
# same_lines DESC EXPECTED: sorted stdout equals EXPECTED (sorted)
same_lines() {
    if [ "$rc" = 0 ] && [ "$(sort "$T/out")" = "$(printf '%s\n' "$2" | sort)" ]; then ok "$1"; else
        notok "$1 $(why)"
    fi
}
# alive PID: the process exists and is not a zombie waiting for a reaper
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
PRINT='echo "rank=$RANK local=$LOCAL_RANK world=$WORLD_SIZE size=$LOCAL_SIZE dev=$CUDA_VISIBLE_DEVICES"'

# --- dry run ------------------------------------------------------------------------------
printf '# two local names\nlocalhost slots=4\n127.0.0.1 slots=2 max_slots=2\n' >hosts
run -H hosts -e localhost:1 --master_port 1234 --export FOO=bar --dry-run prog 'a b' '$x'
if [ "$rc" = 0 ] && python3 - "$T/out" <<'EOF'; then ok "--dry-run prints the plan as JSON"; else notok "--dry-run prints the plan as JSON $(why)"; fi
import json, sys
p = json.load(open(sys.argv[1]))
assert p["world_size"] == 5 and p["master_addr"] == "127.0.0.1" and p["master_port"] == 1234, p
assert p["program"] == ["prog", "a b", "$x"], p["program"]
n = p["nodes"]
assert [x["host"] for x in n] == ["localhost", "127.0.0.1"], n
assert n[0]["slot_ids"] == [0, 2, 3] and n[0]["global_ranks"] == [0, 1, 2], n[0]
assert n[1]["slot_ids"] == [0, 1] and n[1]["global_ranks"] == [3, 4], n[1]
e = n[1]["ranks"][1]["env"]
want = {"RANK": "4", "LOCAL_RANK": "1", "WORLD_SIZE": "5", "LOCAL_SIZE": "2", "CROSS_RANK": "1",
        "CROSS_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234",
        "CUDA_VISIBLE_DEVICES": "0,1", "FOO": "bar"}
for k, v in want.items():
    assert e.get(k) == v, (k, e)
assert int(e["OMP_NUM_THREADS"]) >= 1
assert n[0]["ranks"][1]["env"]["CUDA_VISIBLE_DEVICES"] == "0,2,3"
EOF
if grep -qF 'hosts:3: ignoring "max_slots=2"' "$T/err"; then ok "key=value after slots= is a warning naming the line"; else notok "key=value warning $(why)"; fi
run --num_gpus 2 --master_addr 10.1.2.3 --dry-run true
if [ "$rc" = 0 ] && python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); assert p["world_size"]==2 and p["master_addr"]=="10.1.2.3" and p["hostfile"] is None' "$T/out"; then
    ok "local mode: --num_gpus ranks, --master_addr honoured"
else notok "local mode dry run $(why)"; fi
# remote mode's default MASTER_ADDR: the first host less user@ and :port; 127.x and localhost
# mean this machine, whose name the other nodes know; an IPv6 first host asks for --master_addr
bad=""
for h in "127.0.0.1:$(hostname)" "alice@node1:node1" "localhost:2222:$(hostname)" "node7:2222:node7"; do
    printf '%s slots=1\nnode2 slots=1\n' "${h%:*}" > mh
    run -H mh --dry-run true
    got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["master_addr"])' "$T/out" 2>/dev/null)
    [ "$rc" = 0 ] && [ "$got" = "${h##*:}" ] || bad="$bad [${h%:*}: $got rc $rc]"
done
[ -z "$bad" ] && ok "remote mode: MASTER_ADDR from the first host without user@ and :port, 127.x as this machine's name" \
    || notok "remote master_addr:$bad"
printf 'fe80::1 slots=1\nnode2 slots=1\n' > mh6
expect_fail "an IPv6 first host: exit 2 asking for --master_addr" 2 "is an IPv6 address, which the rendezvous (IPv4) cannot use" -H mh6 --dry-run true
# environment variable names: long ones are exported (DeepSpeed's AZUREML_... is 36 characters);
# one a shell cannot take is passed over with a warning
AZUREML_RUN_HISTORY_SERVICE_ENDPOINT=x env 'PYTHON.X=1' "$L" --dry-run true >"$T/out" 2>"$T/err"; rc=$?
if [ "$rc" = 0 ] && python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); e=p["nodes"][0]["ranks"][0]["env"]; assert e["AZUREML_RUN_HISTORY_SERVICE_ENDPOINT"]=="x" and "PYTHON.X" not in e' "$T/out" &&
   grep -q "warning: not exporting PYTHON.X" "$T/err"; then ok "a 36-character exported name goes through; PYTHON.X is passed over with a warning"
else notok "long env names $(why)"; fi
OMP_NUM_THREADS=7 run --dry-run true
if [ "$rc" = 0 ] && python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); assert "OMP_NUM_THREADS" not in p["nodes"][0]["ranks"][0]["env"]' "$T/out"; then
    ok "OMP_NUM_THREADS set by the user is left alone"
else notok "user OMP_NUM_THREADS $(why)"; fi
NCCL_DEBUG=INFO UCX_TLS=tcp run --dry-run true
if [ "$rc" = 0 ] && python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["nodes"][0]["ranks"][0]["env"]; assert e.get("NCCL_DEBUG")=="INFO" and e.get("UCX_TLS")=="tcp", e' "$T/out"; then
    ok "DeepSpeed's prefixes (NCCL, UCX, ...) are exported to the ranks"
else notok "prefix exports $(why)"; fi

# CUDA_VISIBLE_DEVICES with no hostfile: the listed devices are the local slots (all of them,
# or the first --num_gpus; --include names positions in the list); with a hostfile: ignored
devs() { python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(" ".join(r["env"]["LOCAL_RANK"] + ":" + r["env"]["CUDA_VISIBLE_DEVICES"] for n in p["nodes"] for r in n["ranks"]))' "$T/out"; }
CUDA_VISIBLE_DEVICES=4,5,6 run --dry-run true
[ "$rc" = 0 ] && [ "$(devs)" = "0:4,5,6 1:4,5,6 2:4,5,6" ] && ok "CUDA_VISIBLE_DEVICES=4,5,6, no hostfile: 3 ranks on those devices" ||
    notok "visible devices $(why)"
CUDA_VISIBLE_DEVICES=4,5,6 run --num_gpus 2 --dry-run true
[ "$rc" = 0 ] && [ "$(devs)" = "0:4,5 1:4,5" ] && ok "CUDA_VISIBLE_DEVICES=4,5,6 --num_gpus 2: the first two" ||
    notok "visible devices + --num_gpus $(why)"
CUDA_VISIBLE_DEVICES=GPU-a1,GPU-b2,GPU-c3 run -i localhost:0,2 --dry-run true
[ "$rc" = 0 ] && [ "$(devs)" = "0:GPU-a1,GPU-c3 1:GPU-a1,GPU-c3" ] &&
    ok "CUDA_VISIBLE_DEVICES of UUIDs with --include localhost:0,2: the 1st and 3rd" || notok "visible UUIDs + include $(why)"
CUDA_VISIBLE_DEVICES=4,5 expect_fail "--num_gpus beyond CUDA_VISIBLE_DEVICES is an error naming both" 2 \
    "--num_gpus 3: CUDA_VISIBLE_DEVICES lists only 2 device(s)" --num_gpus 3 --dry-run true
CUDA_VISIBLE_DEVICES=1,,2 expect_fail "an empty entry of CUDA_VISIBLE_DEVICES is named" 2 \
    'CUDA_VISIBLE_DEVICES="1,,2": entry 1 is empty' --dry-run true
printf 'localhost slots=2\n' >hosts1
CUDA_VISIBLE_DEVICES=4,5 run -H hosts1 --dry-run true
[ "$rc" = 0 ] && [ "$(devs)" = "0:0,1 1:0,1" ] && grep -qF "CUDA_VISIBLE_DEVICES=4,5 is ignored with a hostfile" "$T/err" &&
    ok "with a hostfile CUDA_VISIBLE_DEVICES is ignored, with a warning" || notok "hostfile + visible devices $(why)"

# --- local jobs ---------------------------------------------------------------------------
run sh -c "$PRINT"
same_lines "1 rank, output not prefixed" "rank=0 local=0 world=1 size=1 dev=0"
run --num_gpus 2 sh -c "$PRINT"
same_lines "2 ranks, prefixed output" "[rank 0] rank=0 local=0 world=2 size=2 dev=0,1
[rank 1] rank=1 local=1 world=2 size=2 dev=0,1"
run --num_gpus 4 sh -c "$PRINT"
same_lines "4 ranks" "[rank 0] rank=0 local=0 world=4 size=4 dev=0,1,2,3
[rank 1] rank=1 local=1 world=4 size=4 dev=0,1,2,3
[rank 2] rank=2 local=2 world=4 size=4 dev=0,1,2,3
[rank 3] rank=3 local=3 world=4 size=4 dev=0,1,2,3"
run -H hosts -i localhost:1,3 sh -c "$PRINT"
same_lines "hostfile of local names with --include" "[rank 0] rank=0 local=0 world=2 size=2 dev=1,3
[rank 1] rank=1 local=1 world=2 size=2 dev=1,3"
run --num_gpus 2 sh -c 'echo "to stderr $RANK" >&2'
if [ "$rc" = 0 ] && grep -qxF "[rank 1] to stderr 1" "$T/err" && [ ! -s "$T/out" ]; then ok "stderr stays stderr, prefixed"; else notok "stderr prefixed $(why)"; fi

# arguments untouched: spaces, quotes, $, ;, newline, a leading dash, an empty argument
run --num_gpus 2 python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' 'a b' "it's" '"q"' '$HOME' 'x; rm -rf /' $'two\nlines' --hostfile ''
want='["a b", "it'"'"'s", "\"q\"", "$HOME", "x; rm -rf /", "two\nlines", "--hostfile", ""]'
if [ "$rc" = 0 ] && [ "$(grep -c -xF "[rank 0] $want" "$T/out")" = 1 ] && [ "$(grep -c -xF "[rank 1] $want" "$T/out")" = 1 ]; then
    ok "program arguments passed untouched"
else notok "program arguments passed untouched $(why)"; fi
run --num_gpus 2 -- printenv NOPE
if [ "$rc" = 1 ] && grep -qE "rank [01] on localhost exited with status 1" "$T/err"; then ok "-- ends the options; exit status of a failing rank"; else notok "-- and status 1 $(why)"; fi

# --export and .deepspeed_env
printf '# comment\n\nFROM_FILE=home value\n' >"$HOME/.deepspeed_env"
printf 'FROM_CWD=cwd\n' >.deepspeed_env
EXISTING=yes run --export EXISTING --export 'SET=a b' sh -c 'echo "$FROM_FILE|$FROM_CWD|$EXISTING|$SET"'
if [ "$rc" = 0 ] && [ "$(cat "$T/out")" = "home value|cwd|yes|a b" ]; then ok "--export and .deepspeed_env (home, then cwd)"; else notok "--export/.deepspeed_env $(why)"; fi
printf 'GOOD=1\nbad line\n' >.deepspeed_env
expect_fail ".deepspeed_env: malformed line names file and line" 2 "$T/.deepspeed_env:2: expected NAME=VALUE, found \"bad line\"" true
rm -f .deepspeed_env "$HOME/.deepspeed_env"
expect_fail "--export of an unset variable" 2 "--export NOT_SET_HERE: NOT_SET_HERE is not set" --export NOT_SET_HERE true

# per-rank logs
run --num_gpus 2 --enable_each_rank_log logs sh -c 'echo "out $RANK"; echo "err $RANK" >&2'
if [ "$rc" = 0 ] && [ ! -s "$T/out" ] && [ "$(ls logs | grep -c '^[0-9]\{14\}_rank[01]\.log$')" = 2 ] &&
    grep -qx "out 1" logs/*_rank1.log && grep -qx "err 1" logs/*_rank1.log; then
    ok "--enable_each_rank_log writes DIR/<time>_rank<N>.log"
else notok "--enable_each_rank_log $(why)"; fi
touch afile
expect_fail "--enable_each_rank_log on a file" 2 "--enable_each_rank_log afile: not a directory" --enable_each_rank_log afile true

# --- failures and signals -----------------------------------------------------------------
# rank 0 exits 3; the others sleep with SIGTERM ignored, so they need the SIGKILL after 2 s
start=$(date +%s)
"$L" --num_gpus 3 --kill_grace 2 sh -c 'echo $$ >pid.$RANK; if [ $RANK = 0 ]; then while [ ! -e pid.1 ] || [ ! -e pid.2 ]; do sleep 0.05; done; exit 3; fi; trap "" TERM; while :; do sleep 0.1; done' >"$T/out" 2>"$T/err"
rc=$?
took=$(($(date +%s) - start))
left=0
for p in $(cat pid.1 pid.2 2>/dev/null); do alive "$p" && left=$((left + 1)); done
if [ "$rc" = 3 ] && [ "$left" = 0 ] && [ "$took" -le 6 ] && grep -qF "rank 0 on localhost exited with status 3" "$T/err"; then
    ok "a rank exiting 3: exit 3, the others killed after --kill_grace 2 (${took}s)"
else notok "rank exits 3 (took ${took}s, $left left) $(why)"; fi
rm -f pid.*

run --num_gpus 2 sh -c 'if [ $RANK = 1 ]; then kill -9 $$; fi; sleep 30'
if [ "$rc" = 137 ] && grep -qF "rank 1 on localhost was killed by signal 9" "$T/err"; then ok "a rank killed by SIGKILL gives 137"; else notok "SIGKILL gives 137 $(why)"; fi

# SIGTERM to ds-launch tears the job down, children of the ranks included
"$L" --num_gpus 2 --kill_grace 2 sh -c 'sleep 60 & echo $! >child.$RANK; echo $$ >pid.$RANK; wait' >"$T/out" 2>"$T/err" &
lp=$!
for _ in $(seq 200); do [ -e child.1 ] && [ -e child.0 ] && [ -e pid.0 ] && [ -e pid.1 ] && break; sleep 0.05; done
kill -TERM "$lp"
wait "$lp"
rc=$?
left=0
for p in $(cat pid.* child.* 2>/dev/null); do alive "$p" && left=$((left + 1)); done
if [ "$rc" = 143 ] && [ "$left" = 0 ] && [ "$(cat pid.* child.* | wc -l)" = 4 ] && grep -qF "stopping all 2 ranks" "$T/err"; then
    ok "SIGTERM to ds-launch: exit 143, no process left"
else notok "SIGTERM teardown ($left left) $(why)"; fi
rm -f pid.* child.*

# a failed job takes along what a rank moved out of its process group (setsid)
run --num_gpus 2 --kill_grace 1 sh -c 'if [ $RANK = 0 ]; then setsid sleep 61 & echo $! >gc.0; sleep 0.5; exit 1; fi; sleep 30'
sleep 0.2
if [ "$rc" = 1 ] && [ -s gc.0 ] && ! alive "$(cat gc.0)"; then ok "a failed job: a rank's setsid'd child is killed too"
else notok "setsid'd child ($(cat gc.0 2>/dev/null) alive: $(alive "$(cat gc.0 2>/dev/null)" && echo yes)) $(why)"; kill -9 "$(cat gc.0)" 2>/dev/null; fi
rm -f gc.0
# ds-launch killed outright (SIGKILL, the OOM killer): its ranks go with it
"$L" --num_gpus 2 sh -c 'echo $$ >pid.$RANK; exec sleep 62' >"$T/out" 2>"$T/err" &
lp=$!
for _ in $(seq 200); do [ -e pid.0 ] && [ -e pid.1 ] && break; sleep 0.05; done
kill -9 "$lp"
wait "$lp" 2>/dev/null
sleep 0.3
left=0
for p in $(cat pid.* 2>/dev/null); do alive "$p" && left=$((left + 1)); done
if [ "$left" = 0 ] && [ "$(cat pid.* | wc -l)" = 2 ]; then ok "SIGKILL to ds-launch: its ranks die with it"
else notok "SIGKILL to ds-launch: $left rank(s) left"; for p in $(cat pid.*); do kill -9 "$p" 2>/dev/null; done; fi
rm -f pid.*

for sig in INT HUP; do
    "$L" --num_gpus 2 sh -c 'echo $$ >pid.$RANK; exec sleep 60' >"$T/out" 2>"$T/err" &
    lp=$!
    for _ in $(seq 200); do [ -e pid.0 ] && [ -e pid.1 ] && break; sleep 0.05; done
    kill -$sig "$lp"
    wait "$lp"
    rc=$?
    left=0
    for p in $(cat pid.* 2>/dev/null); do alive "$p" && left=$((left + 1)); done
    want=$((128 + $(kill -l $sig)))
    if [ "$rc" = "$want" ] && [ "$left" = 0 ] && grep -qF "received SIG$sig" "$T/err"; then
        ok "SIG$sig to ds-launch: exit $want, no process left"
    else notok "SIG$sig teardown ($left left) $(why)"; fi
    rm -f pid.*
done

# --- errors -------------------------------------------------------------------------------
printf 'localhost slots=2\nlocalhost slots=2\n127.0.0.1 slots=1\nworker-3 slot=4\n' >bad1
expect_fail "duplicate host in the hostfile" 2 "bad1:2: multiple entries for localhost (first on line 1)" -H bad1 true
printf '# c\n\nlocalhost slots=2\nworker-3 slot=4\n' >bad2
expect_fail "bad hostfile line names file and line" 2 'bad2:4: expected "<host> slots=<n>", found "worker-3 slot=4"' -H bad2 true
expect_fail "bad filter names the term" 2 '--include term "localhost:7": no slot '"'7'"' specified on host '"'localhost'"' (slots=4)' -H hosts -i localhost:7 true
expect_fail "unknown host in a filter" 2 "--exclude term \"nowhere\": host 'nowhere' not found in hostfile" -H hosts -e 'localhost:0@nowhere' true
expect_fail "include and exclude together" 2 "--include and --exclude are mutually exclusive" -H hosts -i localhost -e 127.0.0.1 true
expect_fail "--num_gpus above slots" 2 "--num_gpus 3: host '127.0.0.1' has only slots=2" -H hosts --num_gpus 3 true
printf 'localhost slots=1\nworker-7 slots=2\n' >remote
expect_fail "a remote host that does not resolve or answer is named" 255 "host worker-7 (port 1): cannot connect over ssh" -H remote --ssh_port 1 --ssh_timeout 3 true
expect_fail "--no_ssh without --node_rank is refused clearly" 2 "--no_ssh needs --node_rank N" --no_ssh true
expect_fail "--node_rank without --no_ssh is refused clearly" 2 "--node_rank needs --no_ssh" --node_rank 0 true
expect_fail "--autotuning is refused" 2 "--autotuning: the autotuner is out of scope" --autotuning tune true
expect_fail "no program" 2 "no program to run" --num_gpus 2
expect_fail "unknown option" 2 "unrecognized option --bogus" --bogus true
expect_fail "a value to a switch (--dry-run=no would read as --dry-run)" 2 "option --dry-run takes no value" --dry-run=no true
DS_ENV_FILE=/nonexistent/env run --dry-run true
[ "$rc" = 0 ] && grep -q "warning: DS_ENV_FILE=/nonexistent/env: no such file; nothing exported from it" "$T/err" &&
    ok "DS_ENV_FILE naming no file: a warning (DeepSpeed is silent)" || notok "DS_ENV_FILE missing $(head -c 300 "$T/err")"
expect_fail "bad --num_gpus" 2 "--num_gpus: expected an integer" --num_gpus two true
expect_fail "a program that does not exist" 127 "rank 0: cannot run ./no-such-program" ./no-such-program
expect_fail "a bare name not in PATH: says to give its path" 127 \
    "cannot run no-such-program: No such file or directory (not found in PATH; give its path, as ./no-such-program)" no-such-program

run --master_port 0 --dry-run true
port=$(sed -n 's/.*--master_port 0: using free port \([0-9]*\).*/\1/p' "$T/err")
if [ "$rc" = 0 ] && [ -n "$port" ] && python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["master_port"]==int(sys.argv[2])' "$T/out" "$port"; then
    ok "--master_port 0 picks a free port and says which ($port)"
else notok "--master_port 0 $(why)"; fi
run --master_port 0 sh -c 'echo $MASTER_PORT'
if [ "$rc" = 0 ] && grep -qF "using free port $(cat "$T/out")" "$T/err"; then ok "--master_port 0: the ranks get the picked port"; else notok "--master_port 0 run $(why)"; fi

tap_summary
