#!/bin/bash
# ds-launch with the rendezvous and CPU collectives of libds: jobs of 1, 2 and 4 ranks of
# tests/dist_probe, the per-job secret (DS_JOB_SECRET: in each rank's environment, the same for
# every rank, new for each job, never on a command line or in --dry-run), a rank started with
# another secret refused. One "ok"/"not ok" line per check.
. "$(cd "$(dirname "$0")" && pwd)/tap.sh" # ok, notok, tap_summary (before any cd)
set -u
unset CUDA_VISIBLE_DEVICES # ds-launch's local mode would take its devices as the ranks' (ds-launch(1))

BUILD=${DS_BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
L="$BUILD/ds-launch"
P="$BUILD/tests/dist_probe"

for f in "$L" "$P"; do
    if [ ! -x "$f" ]; then
        echo "not ok - $f is not built"
        echo "0 passed, 1 failed"
        exit 1
    fi
done

T=$(mktemp -d "${TMPDIR:-/tmp}/ds-launch-dist.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
export HOME="$T/home"
mkdir -p "$HOME"
unset DS_ENV_FILE OMP_NUM_THREADS DS_JOB_SECRET

run() {
    "$L" "$@" >"$T/out" 2>"$T/err"
    rc=$?
}
why() { echo "(exit $rc; stdout: $(head -c 300 "$T/out" | tr '\n' ' '); stderr: $(head -c 400 "$T/err" | tr '\n' ' '))"; }

for n in 1 2 4; do
    run --master_port 0 --num_gpus $n "$P"
    want=$((n * (n + 1) / 2))
    if [ "$rc" = 0 ] && [ "$(grep -c "of $n: sum $want\$" "$T/out")" = "$n" ]; then
        ok "$n ranks meet at the rendezvous and all-reduce"
    else notok "$n ranks $(why)"; fi
done

run --master_port 0 --num_gpus 2 sh -c 'echo "$DS_JOB_SECRET"'
a=$(sort -u "$T/out" | sed 's/^\[rank [0-9]*\] //' | sort -u)
if [ "$rc" = 0 ] && [ "$(printf '%s\n' "$a" | wc -l)" = 1 ] && [[ $a =~ ^[0-9a-f]{64}$ ]]; then
    ok "every rank gets the same 64-hex-digit DS_JOB_SECRET"
else notok "DS_JOB_SECRET $(why)"; fi
run --master_port 0 --num_gpus 1 sh -c 'echo "$DS_JOB_SECRET"'
if [ "$rc" = 0 ] && [ -n "$a" ] && [ "$(cat "$T/out")" != "$a" ]; then
    ok "each job gets a new secret"
else notok "a new secret per job $(why)"; fi

DS_JOB_SECRET=shared-by-all-nodes run --num_gpus 1 sh -c 'echo "$DS_JOB_SECRET"'
if [ "$rc" = 0 ] && [ "$(cat "$T/out")" = shared-by-all-nodes ]; then
    ok "a DS_JOB_SECRET already set is kept (one job, several launchers)"
else notok "preset secret $(why)"; fi

run --master_port 0 --num_gpus 2 sh -c 'tr "\0" " " </proc/$$/cmdline; tr "\0" " " </proc/$PPID/cmdline'
if [ "$rc" = 0 ] && ! grep -qE '[0-9a-f]{64}' "$T/out"; then
    ok "the secret is on no command line"
else notok "secret on a command line $(why)"; fi

run --master_port 1234 --num_gpus 2 --dry-run "$P"
if [ "$rc" = 0 ] && ! grep -q DS_JOB_SECRET "$T/out" "$T/err"; then
    ok "--dry-run does not show a secret"
else notok "--dry-run shows a secret $(why)"; fi

# rank 1 of a 2-rank job started with another secret: refused by the rendezvous, the job fails
# with the library's message and nothing is left behind
DS_PROBE_TIMEOUT=3 run --master_port 0 --num_gpus 2 --kill_grace 2 sh -c \
    'if [ "$RANK" = 1 ]; then export DS_JOB_SECRET=wrong; fi; exec "$0"' "$P"
if [ "$rc" != 0 ] && grep -qF "rank 1: the rendezvous at" "$T/err" &&
    grep -qF "refused this process: its job secret (DS_JOB_SECRET) is not this job's" "$T/err"; then
    ok "a rank with the wrong secret is refused"
else notok "wrong secret $(why)"; fi

tap_summary
