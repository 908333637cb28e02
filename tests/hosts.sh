#!/usr/bin/env bash
# Two "hosts" on one machine: network namespaces joined by a veth pair, each with its own
# /etc/hosts (ip netns exec mounts /etc/netns/NAME/hosts over it) that maps the host's own name
# to 127.0.1.1, as Debian's installer does. Rank 0 runs in one, rank 1 in the other, both with
# MASTER_ADDR = the first host's name: rank 0 reaches its own rendezvous over loopback, so the
# ring address it publishes must not be a loopback one (rank 1 was told 127.0.0.1 and failed
# with "cannot connect to rank 0 at 127.0.0.1"), nor just any other of its addresses: each host
# also has a docker0-like interface, 172.17.0.1 on both, listed before the link between them.
# Needs root and ip(8) with netns support: skipped (77) without them. One "ok"/"not ok" line
# per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
B=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    echo "hosts.sh: needs root and ip(8) (iproute2): skipping"
    exit 77
fi
A=dsa$$ Z=dsb$$
cleanup() {
    ip link del "va$$" 2>/dev/null # left in this namespace when the setup failed half-way
    ip netns del "$A" 2>/dev/null
    ip netns del "$Z" 2>/dev/null
    rm -rf "/etc/netns/$A" "/etc/netns/$Z" "$T"
}
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-hosts.XXXXXX") || exit 1
trap cleanup EXIT
if ! ip netns add "$A" 2>"$T/err" || ! ip netns add "$Z" 2>>"$T/err" ||
    ! ip link add "va$$" type veth peer name "vb$$" 2>>"$T/err"; then
    echo "hosts.sh: cannot make network namespaces here ($(head -c 200 "$T/err")): skipping"
    exit 77
fi
ip -n "$A" link add d0 type veth peer name d1 && ip -n "$A" link set d1 up && ip -n "$A" addr add 172.17.0.1/16 dev d0 && ip -n "$A" link set d0 up &&
    ip -n "$Z" link add d0 type veth peer name d1 && ip -n "$Z" link set d1 up && ip -n "$Z" addr add 172.17.0.1/16 dev d0 && ip -n "$Z" link set d0 up &&
    ip link set "va$$" netns "$A" && ip link set "vb$$" netns "$Z" &&
    ip -n "$A" addr add 10.231.7.1/24 dev "va$$" && ip -n "$Z" addr add 10.231.7.2/24 dev "vb$$" &&
    ip -n "$A" link set "va$$" up && ip -n "$Z" link set "vb$$" up &&
    ip -n "$A" link set lo up && ip -n "$Z" link set lo up || { notok "setting up the namespaces"; tap_summary; exit; }
mkdir -p "/etc/netns/$A" "/etc/netns/$Z"
printf '127.0.0.1 localhost\n127.0.1.1 node-a\n10.231.7.2 node-b\n' >"/etc/netns/$A/hosts"
printf '127.0.0.1 localhost\n10.231.7.1 node-a\n127.0.1.1 node-b\n' >"/etc/netns/$Z/hosts"
[ "$(ip netns exec "$A" getent hosts node-a | cut -d' ' -f1)" = 127.0.1.1 ] &&
    [ "$(ip netns exec "$Z" getent hosts node-a | cut -d' ' -f1)" = 10.231.7.1 ] &&
    ok "node-a is 127.0.1.1 on itself and 10.231.7.1 on node-b" || notok "the namespaces' hosts files"
cd "$T" || exit 1
cat > net.json <<'EOF'
{"input": {"type": "tokens", "vocab_size": 256, "seq_len": 16},
 "layers": [{"type": "embedding", "name": "wte", "dim": 16}, {"type": "layernorm", "name": "ln"},
  {"type": "linear", "name": "head", "out": 256}], "loss": {"type": "cross_entropy"}}
EOF
echo '{"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}' >ds.json
env=(env DS_JOB_SECRET=hosts-test MASTER_ADDR=node-a MASTER_PORT=29517 WORLD_SIZE=2 OMP_NUM_THREADS=1)
head -c 20000 /usr/share/common-licenses/GPL-3 >text.txt 2>/dev/null || python3 -c "
import random; random.seed(1); open('text.txt','w').write(' '.join(random.choice(['the','data','rank','host']) for _ in range(4000)))"
run=(timeout 60 "$B/ds-train" net.json --config ds.json --data text.txt --steps 3 --data-order sequential)
ip netns exec "$A" "${env[@]}" RANK=0 "${run[@]}" >a.out 2>a.err &
ip netns exec "$Z" "${env[@]}" RANK=1 "${run[@]}" >b.out 2>b.err
rb=$?
wait $!
ra=$?
if [ "$ra" = 0 ] && [ "$rb" = 0 ] && grep -q '^done: 3 steps' a.out; then
    ok "2 ranks on 2 hosts, MASTER_ADDR a name that is loopback on rank 0's host: trained"
else
    notok "2 hosts (exit $ra, $rb): $(head -c 300 a.err) / $(head -c 300 b.err)"
fi
# the link between the hosts goes down mid-training: both ranks fail the next collective within
# seconds (DS_COMM_KEEPALIVE=2: TCP probes the silent peer), not the communicator's 1800 s; TCP
# between them (DS_COMM_SHM=0: the namespaces share a kernel, whose shared memory would link them)
env2=(env DS_JOB_SECRET=hosts-test MASTER_ADDR=node-a MASTER_PORT=29518 WORLD_SIZE=2 OMP_NUM_THREADS=1
    DS_COMM_SHM=0 DS_COMM_KEEPALIVE=2)
long=(timeout 120 "$B/ds-train" net.json --config ds.json --data text.txt --steps 1000000 --data-order sequential --quiet)
ip netns exec "$A" "${env2[@]}" RANK=0 "${long[@]}" >a2.out 2>a2.err &
pa=$!
ip netns exec "$Z" "${env2[@]}" RANK=1 "${long[@]}" >b2.out 2>b2.err &
pb=$!
sleep 3
cut=$(date +%s)
ip -n "$Z" link set "vb$$" down
wait $pa
ra=$?
wait $pb
rb=$?
took=$(( $(date +%s) - cut ))
if [ "$ra" != 0 ] && [ "$ra" != 124 ] && [ "$rb" != 0 ] && [ "$rb" != 124 ] && [ "$took" -lt 60 ] &&
    grep -Eq "(receiving from|sending to) rank 1: (Connection timed out|No route to host)" a2.err; then
    ok "the link between the hosts cut mid-training: both ranks fail within $took s, naming it"
else
    notok "link cut (exit $ra, $rb after $took s): $(head -c 300 a2.err) / $(head -c 300 b2.err)"
fi
ip -n "$Z" link set "vb$$" up
tap_summary
