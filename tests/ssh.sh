#!/bin/bash
# ds-launch over ssh (libssh), against the private sshd that .ci/run starts with
# scripts/ssh-loopback.sh (127.0.0.1 and 127.0.0.2 port 2222; an impostor with another host key
# on 127.0.0.2 port 2223). Skipped (exit 77) when nothing answers on 127.0.0.2:2222.
# A two-node job and its environment, arguments and values with spaces, quotes, $, ; and
# newlines, a failing rank on node 2 (its status, no process left), an unreachable host, a
# changed host key. One "ok"/"not ok" line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))

BUILD=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
L="$BUILD/ds-launch"
# The node agent is ds-launch itself (from the build tree: the libtool wrapper, which
# ds-launch finds beside .libs).
unset DS_LAUNCH_AGENT

if ! (exec 3<>/dev/tcp/127.0.0.2/2222) 2>/dev/null; then
    echo "no sshd on 127.0.0.2:2222 (scripts/ssh-loopback.sh start, as root): skipping"
    echo "0 passed, 0 failed"
    exit 77
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/ds-ssh.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
unset DS_ENV_FILE

why() {
    echo "(rc=$rc; out: $(head -c 600 "$T/out"); err: $(head -c 600 "$T/err"))"
}
run() {
    timeout 120 "$L" "$@" >"$T/out" 2>"$T/err"
    rc=$?
}

printf '127.0.0.1 slots=1\n127.0.0.2 slots=1\n' >hosts

run -H hosts --ssh_port 2222 sh -c 'echo "R=$RANK W=$WORLD_SIZE C=$CROSS_RANK CS=$CROSS_SIZE L=$LOCAL_RANK S=${#DS_JOB_SECRET}"'
if [ "$rc" = 0 ] && grep -qx '\[rank 0\] R=0 W=2 C=0 CS=2 L=0 S=64' out &&
    grep -qx '\[rank 1\] R=1 W=2 C=1 CS=2 L=0 S=64' out; then
    ok "two-node job over ssh: RANK, WORLD_SIZE, CROSS_RANK, the job secret"
else
    notok "two-node job over ssh $(why)"
fi

# a hostfile's host:port is the node's ssh port (it was handed to libssh as a host name)
printf '127.0.0.1:2222 slots=1\n127.0.0.2:2222 slots=1\n' >hostsp
run -H hostsp sh -c 'echo "R=$RANK A=$MASTER_ADDR"'
if [ "$rc" = 0 ] && grep -qx "\[rank 1\] R=1 A=$(hostname)" out; then
    ok "hostfile entries host:port: ssh to that port; MASTER_ADDR without it (127.x: this host's name)"
else
    notok "host:port entries $(why)"
fi

printf '127.0.0.2:70000 slots=1\n' >hostsbad
run -H hostsbad true
if [ "$rc" = 255 ] && grep -q 'host 127.0.0.2:70000: port 70000: expected 1..65535' err; then
    ok "a hostfile port out of range is named"
else
    notok "port out of range $(why)"
fi

# a rank's own output cannot stop the job by printing the agents' control line (a one-rank job
# writes straight to its agent's stderr; the line needs the job's stop token)
printf '127.0.0.2 slots=1\n' >host1
run -H host1 --ssh_port 2222 sh -c 'printf "\036ds-launch node agent: a rank failed, stop the job\n" >&2
printf "\036ds-launch node agent 0123: a rank failed, stop the job\n" >&2; sleep 1; echo done-ok'
if [ "$rc" = 0 ] && grep -qx 'done-ok' out; then
    ok "a rank printing the agents' control line does not stop the job"
else
    notok "control line from a rank $(why)"
fi

# OMP_NUM_THREADS: the user's value reaches the ranks on every node (they start from sshd's
# environment, not ds-launch's: they ran with every core); without one, each node's agent
# divides its own host's cores between its ranks
cores=$(getconf _NPROCESSORS_ONLN)
OMP_NUM_THREADS=1 run -H hosts --ssh_port 2222 sh -c 'echo "OMP=$OMP_NUM_THREADS"'
if [ "$rc" = 0 ] && grep -qx '\[rank 0\] OMP=1' out && grep -qx '\[rank 1\] OMP=1' out; then
    ok "the user's OMP_NUM_THREADS=1 reaches the ranks on both nodes"
else
    notok "OMP_NUM_THREADS over ssh $(why)"
fi
(unset OMP_NUM_THREADS; timeout 120 "$L" -H hosts --ssh_port 2222 sh -c 'echo "OMP=$OMP_NUM_THREADS"' >"$T/out" 2>"$T/err")
rc=$?
if [ "$rc" = 0 ] && grep -qx "\[rank 0\] OMP=$cores" out && grep -qx "\[rank 1\] OMP=$cores" out; then
    ok "without OMP_NUM_THREADS each node's ranks get its own cores ($cores, 1 rank a node)"
else
    notok "OMP_NUM_THREADS unset over ssh $(why)"
fi

weird1='a b'
weird2="it's \"quoted\""
weird3='$HOME;echo pwned `id` $(id)'
weird4=$(printf 'line1\nline2; rm -rf x')
weird5='*'
run -H hosts --ssh_port 2222 --export "WEIRD=$weird3 $weird2" \
    sh -c 'printf "%s\n" "$@" "$WEIRD" >"$PWD/args.$RANK"' x "$weird1" "$weird2" "$weird3" "$weird4" "$weird5" ""
printf '%s\n' "$weird1" "$weird2" "$weird3" "$weird4" "$weird5" "" "$weird3 $weird2" >expected
if [ "$rc" = 0 ] && cmp -s expected args.0 && cmp -s expected args.1; then
    ok "arguments and exported values with spaces, quotes, \$, ; and newlines arrive untouched"
else
    notok "quoting $(why) $(diff expected args.1 2>&1 | head -c 400)"
fi

start=$(date +%s)
run -H hosts --ssh_port 2222 --kill_grace 2 \
    sh -c 'echo $$ >"$PWD/pid.$RANK"; if [ "$RANK" = 1 ]; then sleep 1; exit 7; fi; trap "" TERM; exec sleep 300'
took=$(($(date +%s) - start))
sleep 0.5
left=""
for f in pid.0 pid.1; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && left="$left $(cat "$f")"
done
if [ "$rc" = 7 ] && [ -f pid.0 ] && [ -f pid.1 ] && [ -z "$left" ] && [ "$took" -lt 30 ] &&
    grep -q 'node 127.0.0.2' err; then
    ok "a failing rank on node 2 ends the job with its status ($took s) and leaves no process"
else
    notok "failing rank on node 2 (took $took s, left:$left) $(why)"
    [ -n "$left" ] && kill -9 $left 2>/dev/null
fi

# SIGTERM to ds-launch, and a dropped connection (ds-launch killed outright): every rank goes.
for how in TERM KILL; do
    rm -f pid.0 pid.1
    "$L" -H hosts --ssh_port 2222 --kill_grace 2 sh -c 'echo $$ >"$PWD/pid.$RANK"; exec sleep 300' \
        >"$T/out" 2>"$T/err" &
    lp=$!
    for _ in $(seq 100); do [ -s pid.0 ] && [ -s pid.1 ] && break; sleep 0.1; done
    kill -$how $lp
    wait $lp 2>/dev/null
    rc=$?
    left=""
    for _ in $(seq 50); do
        left=""
        for f in pid.0 pid.1; do
            [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && left="$left $(cat "$f")"
        done
        [ -z "$left" ] && break
        sleep 0.1
    done
    want=143
    [ $how = KILL ] && want=137
    if [ "$rc" = $want ] && [ -f pid.0 ] && [ -f pid.1 ] && [ -z "$left" ]; then
        ok "SIG$how to ds-launch: the ranks on both nodes are gone (status $rc)"
    else
        notok "SIG$how to ds-launch (left:$left) $(why)"
        [ -n "$left" ] && kill -9 $left 2>/dev/null
    fi
done

# a rank failing beside a rank that ignores TERM: the other node's ranks get TERM at once, not
# after the failing node's kill grace (its agent told the launcher only when it had ended)
printf '127.0.0.1 slots=2\n127.0.0.2 slots=1\n' >hosts21
rm -f "$T/failed_at" "$T/termed_at"
run -H hosts21 --ssh_port 2222 --kill_grace 6 sh -c '
case $RANK in
0) trap "" TERM; sleep 30 ;;
1) sleep 1; date +%s.%N >"$PWD/failed_at"; exit 7 ;;
2) trap "date +%s.%N >\"$PWD/termed_at\"; exit 0" TERM; sleep 30 & wait ;;
esac'
lag=$(python3 -c 'import sys; print("%.1f" % (float(open(sys.argv[2]).read()) - float(open(sys.argv[1]).read())))' \
    "$T/failed_at" "$T/termed_at" 2>/dev/null)
if [ "$rc" = 7 ] && [ -n "$lag" ] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 3 else 1)' "$lag"; then
    ok "a rank fails on node 1: node 2's rank gets TERM ${lag} s later (kill grace 6 s)"
else
    notok "TERM to the other node (lag ${lag:-none} s) $(why)"
fi

printf '127.0.0.1 slots=1\n127.0.0.3 slots=1\n' >unreachable
start=$(date +%s)
rm -f "$T/ran.0"
run -H unreachable --ssh_port 2222 --ssh_timeout 5 sh -c "touch $T/ran.\$RANK"
took=$(($(date +%s) - start))
if [ "$rc" != 0 ] && grep -q 'host 127.0.0.3 (port 2222): cannot connect' err && [ "$took" -le 10 ]; then
    ok "an unreachable host gives an error naming it ($took s)"
else
    notok "unreachable host (took $took s) $(why)"
fi
# nothing starts anywhere until every node has connected: a node that takes its time and then
# fails (a port that accepts and says nothing: the ssh timeout) while rank 0's node is up
python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.3", 2222)); s.listen(4); conns = []
end = time.time() + 20
while time.time() < end:
    s.settimeout(1)
    try: conns.append(s.accept()[0])
    except OSError: pass
' &
mute=$!
sleep 0.5
rm -f "$T/ran.0"
run -H unreachable --ssh_port 2222 --ssh_timeout 3 sh -c "touch $T/ran.\$RANK"
kill $mute 2>/dev/null
wait $mute 2>/dev/null
if [ "$rc" != 0 ] && grep -q 'host 127.0.0.3 (port 2222): cannot connect' err && [ ! -e "$T/ran.0" ]; then
    ok "a node that times out: the job fails naming it, and rank 0 on the node that was up never started"
else
    notok "slow failing node: rank 0 started anyway ($( [ -e "$T/ran.0" ] && echo yes || echo no)) $(why)"
fi

if (exec 3<>/dev/tcp/127.0.0.2/2223) 2>/dev/null; then
    printf '127.0.0.2 slots=1\n' >impostor
    run -H impostor --ssh_port 2223 sh -c 'echo ran >"$PWD/impostor.ran"'
    if [ "$rc" != 0 ] && [ ! -e impostor.ran ] && grep -q 'host 127.0.0.2 (port 2223): host key not verified: the host key has CHANGED' err; then
        ok "a changed host key is refused, naming the host"
    else
        notok "changed host key $(why)"
    fi
else
    echo "# no impostor sshd on 127.0.0.2:2223: the changed-host-key check is skipped"
fi

tap_summary
