/* Tests for lib/dist: the rendezvous store (challenge-response with the job secret, strangers
 * refused while the job goes on, timeouts that name rank, address and wait) and the CPU
 * collectives on 1-4 forked ranks on 127.0.0.1 against references computed locally, with the
 * same result bits on every rank. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <netdb.h>

#include "testutil.h"
#include "ds/dist.h"
#include "dist/dist_internal.h"

#define SECRET "job-secret-4f1c"
#define MAX_RANKS 4
#define MAX_CASES 64

typedef struct shared {
    int failed[MAX_RANKS];
    char msg[MAX_RANKS][1024];
    uint64_t hash[MAX_RANKS][MAX_CASES];
    int num_cases[MAX_RANKS];
    char link[MAX_RANKS][320]; /* ds_comm_describe */
    int released; /* quitter_rank's rank 0 is done */
    double close_s; /* quitter_rank's rank 0: seconds its comm and store took to close */
} shared;

static shared *shared_new(void)
{
    shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    return sh;
}

static void fail(shared *sh, int rank, const char *fmt, ...)
{
    if (sh->failed[rank]) return;
    sh->failed[rank] = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->msg[rank], sizeof sh->msg[rank], fmt, ap);
    va_end(ap);
}

typedef void (*rank_fn)(shared *sh, int rank, int n, int port);

static ds_store_options options(int rank, int n, int port, const char *secret, double timeout)
{
    return (ds_store_options){.addr = "127.0.0.1", .port = port, .rank = rank, .world_size = n,
                              .secret = secret, .timeout_s = timeout};
}

/* Deterministic data of rank r for case c, in [-1, 1), exactly representable. */
static float value(int r, int c, size_t i)
{
    uint64_t x = (uint64_t)(r + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(c + 7) * 0xBF58476D1CE4E5B9ull ^
                 (uint64_t)i * 0x94D049BB133111EBull;
    x ^= x >> 31;
    x *= 0xD6E9F8CC1C2E3A5Bull;
    x ^= x >> 29;
    return (float)((int64_t)(x >> 40) - (1 << 23)) / (float)(1 << 23);
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static int reduce_ok(float got, int n, int c, size_t i, ds_reduce_op op)
{
    double sum = 0, sumabs = 0;
    float mx = -INFINITY;
    for (int r = 0; r < n; r++) {
        float v = value(r, c, i);
        sum += v;
        sumabs += fabs(v);
        mx = v > mx ? v : mx;
    }
    if (op == DS_REDUCE_MAX) return got == mx;
    if (op == DS_REDUCE_MEAN) {
        sum /= n;
        sumabs /= n;
    }
    return fabs(got - sum) <= 1e-6 * sumabs + 1e-30;
}

static const char *op_name(ds_reduce_op op)
{
    return op == DS_REDUCE_SUM ? "sum" : op == DS_REDUCE_MEAN ? "mean" : "max";
}

/* One rank of the collectives test. */
static void collectives_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    ds_store_options opt = options(rank, n, port, SECRET, 10);
    if (ds_store_open(&store, &opt, &err) || ds_comm_cpu_create(&comm, store, 10, &err)) {
        fail(sh, rank, "%s", err.msg);
        return;
    }
    snprintf(sh->link[rank], sizeof sh->link[rank], "%s", ds_comm_describe(comm));
    int cases = 0;
    /* all-reduce: counts below, at and above the world size and the 2^18-float segment */
    const size_t counts[] = {0, 1, 3, 7, 1000, 262147, 600011};
    const ds_reduce_op ops[] = {DS_REDUCE_SUM, DS_REDUCE_MEAN, DS_REDUCE_MAX};
    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++)
        for (int o = 0; o < 3; o++) {
            int c = cases++;
            size_t count = counts[k];
            float *buf = malloc((count + 1) * sizeof *buf);
            for (size_t i = 0; i < count; i++) buf[i] = value(rank, c, i);
            if (ds_comm_all_reduce(comm, buf, count, ops[o], &err)) {
                fail(sh, rank, "%s", err.msg);
            } else {
                for (size_t i = 0; i < count; i++)
                    if (!reduce_ok(buf[i], n, c, i, ops[o])) {
                        fail(sh, rank, "all_reduce %s count %zu: element %zu is %.9g", op_name(ops[o]),
                             count, i, buf[i]);
                        break;
                    }
                sh->hash[rank][c] = hash_bytes(buf, count * sizeof *buf);
            }
            free(buf);
        }
    /* reduce-scatter: NCCL's shape, block `rank` of size*recv_count */
    const size_t recv_counts[] = {0, 1, 5, 70001};
    for (size_t k = 0; k < 4; k++)
        for (int o = 0; o < 3; o++) {
            int c = cases++;
            size_t rc = recv_counts[k], total = rc * (size_t)n;
            float *send = malloc((total + 1) * sizeof *send), *recv = malloc((rc + 1) * sizeof *recv);
            for (size_t i = 0; i < total; i++) send[i] = value(rank, c, i);
            if (ds_comm_reduce_scatter(comm, send, recv, rc, ops[o], &err)) {
                fail(sh, rank, "%s", err.msg);
            } else {
                for (size_t i = 0; i < rc; i++)
                    if (!reduce_ok(recv[i], n, c, (size_t)rank * rc + i, ops[o])) {
                        fail(sh, rank, "reduce_scatter %s count %zu: element %zu is %.9g",
                             op_name(ops[o]), rc, i, recv[i]);
                        break;
                    }
            }
            free(send);
            free(recv);
        }
    /* all-gather */
    for (size_t k = 0; k < 4; k++) {
        int c = cases++;
        size_t sc = recv_counts[k], total = sc * (size_t)n;
        float *send = malloc((sc + 1) * sizeof *send), *recv = malloc((total + 1) * sizeof *recv);
        for (size_t i = 0; i < sc; i++) send[i] = value(rank, c, i);
        if (ds_comm_all_gather(comm, send, recv, sc, &err)) {
            fail(sh, rank, "%s", err.msg);
        } else {
            for (size_t i = 0; i < total; i++)
                if (recv[i] != value((int)(i / sc), c, i % sc)) {
                    fail(sh, rank, "all_gather count %zu: element %zu is %.9g", sc, i, recv[i]);
                    break;
                }
        }
        free(send);
        free(recv);
    }
    /* broadcast from the last rank: bytes not a multiple of a float or a segment */
    {
        size_t bytes = 3 * 1048576 + 5;
        uint8_t *buf = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) buf[i] = rank == n - 1 ? (uint8_t)(i * 31 + 7) : 0;
        if (ds_comm_broadcast(comm, buf, bytes, n - 1, &err)) {
            fail(sh, rank, "%s", err.msg);
        } else {
            for (size_t i = 0; i < bytes; i++)
                if (buf[i] != (uint8_t)(i * 31 + 7)) {
                    fail(sh, rank, "broadcast: byte %zu is %u", i, buf[i]);
                    break;
                }
        }
        free(buf);
    }
    if (ds_comm_barrier(comm, &err)) fail(sh, rank, "%s", err.msg);
    sh->num_cases[rank] = cases;
    ds_comm_destroy(comm);
    if (ds_store_barrier(store, &err)) fail(sh, rank, "%s", err.msg);
    ds_store_close(store);
}


/* Fork ranks [0, started) of a world of n; each gets 20 s before SIGALRM ends it. */
static void run_ranks(shared *sh, int started, int n, int port, rank_fn fn, pid_t *pids)
{
    for (int r = 0; r < started; r++) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            alarm(20);
            fn(sh, r, n, port);
            _exit(sh->failed[r] ? 1 : 0);
        }
        pids[r] = pid;
    }
}

static void wait_ranks(shared *sh, int started, pid_t *pids)
{
    for (int r = 0; r < started; r++) {
        int status = 0;
        cr_assert(waitpid(pids[r], &status, 0) == pids[r]);
        cr_expect(WIFEXITED(status), "rank %d died by signal %d", r,
                  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        cr_expect(!sh->failed[r], "rank %d: %s", r, sh->msg[r]);
    }
}

#define SHM "shared memory"
#define OFF_HERE "tcp (DS_COMM_SHM=0 here)"
/* What rank r's links should say: what carries the one from the previous rank and the one to
 * the next */
static void expect_links(const shared *sh, int r, int n, const char *from, const char *to)
{
    char want[320];
    if (n == 1)
        snprintf(want, sizeof want, "cpu ring of 1");
    else
        snprintf(want, sizeof want, "cpu ring of %d: to rank %d %s, from rank %d %s", n, (r + 1) % n, to,
                 (r + n - 1) % n, from);
    cr_expect_str_eq(sh->link[r], want, "rank %d's links: \"%s\", want \"%s\"", r, sh->link[r], want);
}

/* The collectives on n ranks with fn, every rank's results the same bits; a copy of the shared
 * state stays in *keep (the caller unmaps it) */
static shared *collectives_run(int n, rank_fn fn)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[MAX_RANKS];
    run_ranks(sh, n, n, port, fn, pids);
    wait_ranks(sh, n, pids);
    for (int r = 1; r < n; r++) {
        cr_assert_eq(sh->num_cases[r], sh->num_cases[0]);
        for (int c = 0; c < sh->num_cases[0]; c++)
            cr_expect_eq(sh->hash[r][c], sh->hash[0][c],
                         "all_reduce case %d: rank %d's bits differ from rank 0's", c, r);
    }
    return sh;
}

/* Ranks of one host talk through shared memory by default */
static void collectives_world(int n)
{
    shared *sh = collectives_run(n, collectives_rank);
    for (int r = 0; r < n; r++)
        expect_links(sh, r, n, SHM, SHM);
    munmap(sh, sizeof *sh);
}

Test(dist, collectives_world_1, .timeout = 30) { collectives_world(1); }
Test(dist, collectives_world_2, .timeout = 30) { collectives_world(2); }
Test(dist, collectives_world_3, .timeout = 30) { collectives_world(3); }
Test(dist, collectives_world_4, .timeout = 30) { collectives_world(4); }

/* Rank 0 of the job asks for TCP (DS_COMM_SHM=0): its two links are TCP, the others' shared
 * memory */
static void rank0_tcp(shared *sh, int rank, int n, int port)
{
    if (rank == 0) setenv("DS_COMM_SHM", "0", 1);
    collectives_rank(sh, rank, n, port);
}

/* The same collectives over TCP everywhere, over shared memory, and mixed: the same bits (the
 * links move bytes; the ring's order of summation is the same) */
Test(dist, collectives_same_bits_over_tcp_shm_and_mixed, .timeout = 60)
{
    const int n = 3;
    shared *shm = collectives_run(n, collectives_rank);
    setenv("DS_COMM_SHM", "0", 1);
    shared *tcp = collectives_run(n, collectives_rank);
    unsetenv("DS_COMM_SHM");
    shared *mixed = collectives_run(n, rank0_tcp);
    for (int r = 0; r < n; r++) {
        expect_links(shm, r, n, SHM, SHM);
        expect_links(tcp, r, n, OFF_HERE, OFF_HERE);
    }
    /* rank 0 asked for TCP: it says so for both its links, rank 1 was offered nothing, rank 2's
     * offer was declined */
    expect_links(mixed, 0, n, OFF_HERE, OFF_HERE);
    expect_links(mixed, 1, n, "tcp (it offered none)", SHM);
    expect_links(mixed, 2, n, SHM, "tcp (DS_COMM_SHM=0 there)");
    cr_assert_eq(tcp->num_cases[0], shm->num_cases[0]);
    cr_assert_eq(mixed->num_cases[0], shm->num_cases[0]);
    for (int c = 0; c < shm->num_cases[0]; c++) {
        cr_expect_eq(tcp->hash[0][c], shm->hash[0][c], "case %d: TCP and shared memory differ", c);
        cr_expect_eq(mixed->hash[0][c], shm->hash[0][c], "case %d: mixed links and shared memory differ", c);
    }
    munmap(shm, sizeof *shm);
    munmap(tcp, sizeof *tcp);
    munmap(mixed, sizeof *mixed);
}

/* Two ranks over a shared-memory link, rank 1 leaving early (DS_TEST_QUIT says how):
 *   exit     rank 1 exits at once; rank 0's all-reduce (it waits to receive) must name it
 *   stall    rank 1 stays but takes part in nothing until rank 0 is done; rank 0's all-reduce
 *            (a 1 s communicator timeout) must time out naming it
 *   send     rank 1 exits at once; rank 0 broadcasts 3 MiB (it waits to send, the ring full)
 *   last     rank 1 broadcasts 4000 bytes 30 ms late and exits at once: rank 0 must get every
 *            byte (the bytes are in the ring before the connection closes), not an error */
static void quitter_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    const char *mode = getenv("DS_TEST_QUIT");
    ds_store_options opt = options(rank, n, port, SECRET, 10);
    if (ds_store_open(&store, &opt, &err) ||
        ds_comm_cpu_create(&comm, store, !strcmp(mode, "stall") ? 1 : 10, &err)) {
        fail(sh, rank, "%s", err.msg);
        return;
    }
    snprintf(sh->link[rank], sizeof sh->link[rank], "%s", ds_comm_describe(comm));
    enum { SMALL = 4000, BIG = 3 << 20 };
    char *bytes = calloc(BIG, 1);
    if (rank == 1) {
        if (!strcmp(mode, "stall"))
            while (!__atomic_load_n(&sh->released, __ATOMIC_ACQUIRE)) usleep(10000);
        if (!strcmp(mode, "last")) {
            usleep(30000);
            for (int i = 0; i < SMALL; i++) bytes[i] = (char)(i * 7 + 1);
            if (ds_comm_broadcast(comm, bytes, SMALL, 1, &err)) fail(sh, rank, "%s", err.msg);
        }
        _exit(sh->failed[rank]); /* no destroy, no goodbye: as a crash */
    }
    double t0 = ds_dist_now();
    ds_status st;
    if (!strcmp(mode, "last") || !strcmp(mode, "send"))
        st = ds_comm_broadcast(comm, bytes, !strcmp(mode, "last") ? SMALL : BIG, !strcmp(mode, "last") ? 1 : 0, &err);
    else
        st = ds_comm_all_reduce(comm, (float *)(void *)bytes, 600011 < BIG / 4 ? 600011 : BIG / 4, DS_REDUCE_SUM, &err);
    double took = ds_dist_now() - t0;
    __atomic_store_n(&sh->released, 1, __ATOMIC_RELEASE);
    if (!strcmp(mode, "last")) {
        if (st != DS_OK) fail(sh, rank, "the last bytes were lost: %s", err.msg);
        for (int i = 0; i < SMALL && st == DS_OK; i++)
            if (bytes[i] != (char)(i * 7 + 1)) {
                fail(sh, rank, "byte %d of the last broadcast is %d", i, bytes[i]);
                break;
            }
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "ok|%.1f", took);
    } else if (st == DS_OK) {
        fail(sh, rank, "the collective succeeded without rank 1");
    } else {
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "%.900s|%.1f", err.msg, took < 1e6 ? took : 1e6);
    }
    free(bytes);
    /* closing: rank 0 serves the store until every rank has left; one whose connection ended
     * without leaving (it crashed) counts as left, so this takes no store timeout (10 s here) */
    double t1 = ds_dist_now();
    ds_comm_destroy(comm);
    ds_store_close(store);
    sh->close_s = ds_dist_now() - t1;
    _exit(0);
}

static void quitter(const char *mode, const char *want, double most_s)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[2];
    setenv("DS_TEST_QUIT", mode, 1);
    run_ranks(sh, 2, 2, port, quitter_rank, pids);
    unsetenv("DS_TEST_QUIT");
    for (int r = 0; r < 2; r++) waitpid(pids[r], NULL, 0);
    cr_assert(!sh->failed[0] && !sh->failed[1], "%s / %s", sh->msg[0], sh->msg[1]);
    expect_links(sh, 0, 2, SHM, SHM);
    char *bar = strrchr(sh->msg[0], '|');
    cr_assert(bar, "rank 0: \"%s\"", sh->msg[0]);
    *bar = 0;
    cr_expect_str_eq(sh->msg[0], want);
    cr_expect_leq(atof(bar + 1), most_s, "rank 0 took %s s", bar + 1);
    cr_expect_leq(sh->close_s, 3.0, "rank 0's store close took %.1f s after rank 1 crashed", sh->close_s);
    munmap(sh, sizeof *sh);
}

Test(dist, shm_peer_exit_is_named, .timeout = 30)
{
    quitter("exit", "rank 0: all_reduce: rank 1 closed its connection (did it exit?)", 3);
}

Test(dist, shm_peer_exit_while_sending_is_named, .timeout = 30)
{
    quitter("send", "rank 0: broadcast: rank 1 closed its connection (did it exit?)", 3);
}

Test(dist, shm_last_bytes_before_exit_arrive, .timeout = 30)
{
    for (int k = 0; k < 5; k++) quitter("last", "ok", 3);
}

Test(dist, shm_peer_stall_times_out, .timeout = 30)
{
    quitter("stall", "rank 0: all_reduce: no progress with rank 1 after 1 s", 3.5);
}

/* A bad DS_COMM_SHM is refused by name */
Test(dist, shm_switch_checked)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    ds_store_options opt = options(0, 1, test_free_port(), SECRET, 5);
    cr_assert_eq(ds_store_open(&store, &opt, &err), DS_OK, "%s", err.msg);
    setenv("DS_COMM_SHM", "yes", 1);
    cr_expect_eq(ds_comm_cpu_create(&comm, store, 5, &err), DS_ERR_INVALID);
    unsetenv("DS_COMM_SHM");
    cr_expect_str_eq(err.msg, "rank 0: DS_COMM_SHM=yes: expected 1 (shared memory between ranks of one "
                     "host, the default) or 0 (TCP between all ranks)");
    cr_expect_null(comm);
    ds_store_close(store);
}

/* ---- the store --------------------------------------------------------------------------- */

Test(dist, sha256_vectors)
{
    uint8_t d[32];
    char hex[65];
    const void *parts[2] = {"ab", "c"};
    size_t lens[2] = {2, 1};
    ds_sha256(parts, lens, 2, d);
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* two blocks of padding */
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    const void *p1[1] = {m};
    size_t l1[1] = {strlen(m)};
    ds_sha256(p1, l1, 1, d);
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
    cr_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

Test(dist, store_set_get_add_and_timeout, .timeout = 20)
{
    int port = test_free_port();
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(0, 1, port, SECRET, 0.3);
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_store_set(s, "greeting", "hello", 5, &err), DS_OK, "%s", err.msg);
    void *v = NULL;
    size_t len = 0;
    cr_assert_eq(ds_store_get(s, "greeting", &v, &len, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(len, 5);
    cr_assert_str_eq(v, "hello");
    free(v);
    int64_t x = 0;
    cr_assert_eq(ds_store_add(s, "n", 5, &x, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_store_add(s, "n", -2, &x, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(x, 3);
    cr_assert_eq(ds_store_get(s, "missing", &v, &len, &err), DS_ERR_IO);
    char want[256];
    snprintf(want, sizeof want, "rank 0: waiting for \"missing\" at the rendezvous at "
             "127.0.0.1:%d: nothing after 0.3 s", port);
    cr_assert_str_eq(err.msg, want);
    /* the store still answers after a timed-out wait */
    cr_assert_eq(ds_store_barrier(s, &err), DS_OK, "%s", err.msg);
    ds_store_close(s);
}

Test(dist, no_rendezvous_names_rank_address_and_wait, .timeout = 20)
{
    int port = test_free_port();
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(3, 4, port, SECRET, 0.5);
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_ERR_IO);
    char want[256];
    snprintf(want, sizeof want, "rank 3: no rendezvous at 127.0.0.1:%d after 0.5 s (", port);
    cr_assert(strncmp(err.msg, want, strlen(want)) == 0, "%s", err.msg);
    opt.secret = "";
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_ERR_INVALID);
}

/* An address that can never work fails at once, saying why (it waited out the timeout as "No
 * route to host"): IPv6, or a name that does not resolve (.invalid never does, RFC 6761) */
Test(dist, unusable_rendezvous_address_fails_at_once, .timeout = 20)
{
    int port = test_free_port();
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(1, 2, port, SECRET, 10);
    opt.addr = "::1";
    double t0 = ds_dist_now();
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "rank 1: rendezvous address ::1 (MASTER_ADDR) is IPv6") != NULL, "%s", err.msg);
    /* (only where the resolver answers: without one the lookup fails "temporarily", which the
     * store retries until its timeout, as it should) */
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo("no-such-host.invalid", NULL, &hints, &res);
    if (res)
        freeaddrinfo(res);
    if (gai && gai != EAI_AGAIN) {
        opt.addr = "no-such-host.invalid";
        cr_assert_eq(ds_store_open(&s, &opt, &err), DS_ERR_INVALID);
        cr_expect(strstr(err.msg, "rank 1: rendezvous address no-such-host.invalid (MASTER_ADDR): ") != NULL, "%s",
                  err.msg);
    }
    cr_expect_lt(ds_dist_now() - t0, 5.0, "took %.1f s", ds_dist_now() - t0);
}

Test(dist, options_from_env)
{
    ds_store_options opt;
    ds_error err = {0};
    setenv("RANK", "2", 1);
    setenv("WORLD_SIZE", "4", 1);
    setenv("MASTER_ADDR", "10.0.0.1", 1);
    setenv("MASTER_PORT", "29500", 1);
    unsetenv("DS_JOB_SECRET");
    cr_assert_eq(ds_store_options_from_env(&opt, &err), DS_ERR_INVALID);
    cr_assert_str_eq(err.msg, "DS_JOB_SECRET is not set (ds-launch sets it)");
    setenv("DS_JOB_SECRET", "abc", 1);
    cr_assert_eq(ds_store_options_from_env(&opt, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(opt.rank, 2);
    cr_assert_eq(opt.world_size, 4);
    cr_assert_eq(opt.port, 29500);
    cr_assert_str_eq(opt.addr, "10.0.0.1");
    setenv("RANK", "x", 1);
    cr_assert_eq(ds_store_options_from_env(&opt, &err), DS_ERR_INVALID);
    cr_assert_str_eq(err.msg, "RANK is \"x\", not a valid value (ds-launch sets it)");
}

/* Two ranks wait for "go" while strangers knock: garbage, a silent connection, the wrong
 * secret, and a bad proof at a rank's ring port. Then the job runs an all-reduce. */
static void stranger_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    ds_store_options opt = options(rank, n, port, SECRET, 10);
    void *go = NULL;
    if (ds_store_open(&store, &opt, &err) || ds_store_get(store, "go", &go, NULL, &err) ||
        ds_comm_cpu_create(&comm, store, 10, &err)) {
        fail(sh, rank, "%s", err.msg);
        return;
    }
    free(go);
    float x[3] = {(float)rank, 1, 2};
    if (ds_comm_all_reduce(comm, x, 3, DS_REDUCE_SUM, &err)) fail(sh, rank, "%s", err.msg);
    else if (x[0] != 1 || x[1] != 2 || x[2] != 4) fail(sh, rank, "wrong sum %g %g %g", x[0], x[1], x[2]);
    /* stay until the test has read rank 1's address and knocked: rank 0's store stops serving
     * once the ranks have closed theirs, and the test's own client would find it gone */
    void *knocked = NULL;
    if (ds_store_get(store, "knocked", &knocked, NULL, &err)) fail(sh, rank, "%s", err.msg);
    free(knocked);
    ds_comm_destroy(comm);
    if (ds_store_barrier(store, &err)) fail(sh, rank, "%s", err.msg);
    ds_store_close(store);
}

static int raw_connect(int port)
{
    double deadline = ds_dist_now() + 10;
    int fd;
    while ((fd = ds_tcp_connect("127.0.0.1", port, deadline)) < 0 && ds_dist_now() < deadline)
        usleep(20000);
    return fd;
}

Test(dist, stranger_refused_job_proceeds, .timeout = 30)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[2];
    run_ranks(sh, 2, 2, port, stranger_rank, pids);

    /* a silent stranger holds a connection open all along */
    int silent = raw_connect(port);
    cr_assert(silent >= 0);
    /* garbage instead of the answer: refused (a 0 byte or the connection closed) */
    int g = raw_connect(port);
    uint8_t nonce[32], junk[32] = {1, 2, 3}, verdict = 9;
    cr_assert_eq(ds_io_read(g, nonce, 32, ds_dist_now() + 5), DS_IO_OK);
    cr_assert_eq(ds_io_write(g, junk, 32, ds_dist_now() + 5), DS_IO_OK);
    int r = ds_io_read(g, &verdict, 1, ds_dist_now() + 5);
    cr_assert(r == DS_IO_EOF || (r == DS_IO_OK && verdict == 0), "r %d verdict %d", r, verdict);
    close(g);
    /* the wrong secret */
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(1, 2, port, "not-the-secret", 5);
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_ERR_INVALID);
    char want[256];
    snprintf(want, sizeof want, "rank 1: the rendezvous at 127.0.0.1:%d refused this process: "
             "its job secret (DS_JOB_SECRET) is not this job's", port);
    cr_assert_str_eq(err.msg, want);
    /* the job's own secret gets in (this test process plays a rank-1 client) */
    opt.secret = SECRET;
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_store_set(s, "go", "1", 1, &err), DS_OK, "%s", err.msg);
    /* knock at rank 1's ring port with a bad proof (it may have accepted rank 0 already) */
    void *addr = NULL;
    size_t len;
    cr_assert_eq(ds_store_get(s, "comm/0/rank/1", &addr, &len, &err), DS_OK, "%s", err.msg);
    char ip[64];
    int rport = 0;
    cr_assert_eq(sscanf(addr, "%63s %d", ip, &rport), 2);
    free(addr);
    int k = ds_tcp_connect(ip, rport, ds_dist_now() + 2);
    if (k >= 0) {
        uint8_t proof[36] = {0};
        (void)ds_io_write(k, proof, 36, ds_dist_now() + 2);
        close(k);
    }
    cr_assert_eq(ds_store_set(s, "knocked", "1", 1, &err), DS_OK, "%s", err.msg);
    wait_ranks(sh, 2, pids);
    close(silent);
    ds_store_close(s);
    munmap(sh, sizeof *sh);
}

/* Silent connections to a rank's ring port, ahead of the previous rank's in the accept queue:
 * their proofs are read side by side, so the ring forms at once (read one after the other, 5 s
 * each, the 12 below would outlast the 10 s the ranks wait). */
static void flooded_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    ds_store_options opt = options(rank, n, port, SECRET, 10);
    void *go = NULL;
    if (ds_store_open(&store, &opt, &err) || (rank == 1 && ds_store_get(store, "flooded", &go, NULL, &err))) {
        fail(sh, rank, "%s", err.msg);
        return;
    }
    free(go);
    double t0 = ds_dist_now();
    if (ds_comm_cpu_create(&comm, store, 10, &err)) {
        fail(sh, rank, "%s", err.msg);
        return;
    }
    if (ds_dist_now() - t0 > 4)
        fail(sh, rank, "the ring took %.1f s to form", ds_dist_now() - t0);
    float x[2] = {(float)rank, 1};
    if (ds_comm_all_reduce(comm, x, 2, DS_REDUCE_SUM, &err)) fail(sh, rank, "%s", err.msg);
    else if (x[0] != 1 || x[1] != 2) fail(sh, rank, "wrong sum %g %g", x[0], x[1]);
    ds_comm_destroy(comm);
    if (ds_store_barrier(store, &err)) fail(sh, rank, "%s", err.msg);
    ds_store_close(store);
}

Test(dist, silent_strangers_at_the_ring_port_do_not_delay_the_ring, .timeout = 30)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[2];
    run_ranks(sh, 2, 2, port, flooded_rank, pids);
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(1, 2, port, SECRET, 10);
    double deadline = ds_dist_now() + 10;
    while (ds_store_open(&s, &opt, &err) != DS_OK && ds_dist_now() < deadline) /* rank 0 serves it */
        usleep(20000);
    cr_assert(s, "%s", err.msg);
    void *addr = NULL;
    size_t len;
    cr_assert_eq(ds_store_get(s, "comm/0/rank/0", &addr, &len, &err), DS_OK, "%s", err.msg);
    char ip[64];
    int rport = 0;
    cr_assert_eq(sscanf(addr, "%63s %d", ip, &rport), 2);
    free(addr);
    int silent[12];
    for (int i = 0; i < 12; i++) {
        silent[i] = ds_tcp_connect(ip, rport, ds_dist_now() + 2);
        cr_assert(silent[i] >= 0, "connection %d to rank 0's ring port", i);
    }
    cr_assert_eq(ds_store_set(s, "flooded", "1", 1, &err), DS_OK, "%s", err.msg);
    wait_ranks(sh, 2, pids);
    for (int i = 0; i < 12; i++)
        close(silent[i]);
    ds_store_close(s);
    munmap(sh, sizeof *sh);
}

/* A connection that does not answer the challenge within min(10 s, the store's timeout) is
 * dropped: strangers cannot hold the server's slots and buffers for the job's life. */
Test(dist, silent_stranger_dropped_after_the_challenge_window, .timeout = 30)
{
    int port = test_free_port();
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(0, 1, port, SECRET, 2);
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_OK, "%s", err.msg);
    int silent = raw_connect(port), partial = raw_connect(port);
    cr_assert(silent >= 0 && partial >= 0);
    double t0 = ds_dist_now();
    uint8_t nonce[32], b;
    cr_assert_eq(ds_io_read(silent, nonce, 32, t0 + 5), DS_IO_OK);
    cr_assert_eq(ds_io_read(partial, nonce, 32, t0 + 5), DS_IO_OK);
    cr_assert_eq(ds_io_write(partial, nonce, 10, t0 + 5), DS_IO_OK); /* 10 of the 32 bytes */
    cr_assert_eq(ds_io_read(silent, &b, 1, t0 + 8), DS_IO_EOF);
    cr_assert_eq(ds_io_read(partial, &b, 1, t0 + 8), DS_IO_EOF);
    double took = ds_dist_now() - t0;
    cr_assert(took > 1.5 && took < 5, "dropped after %.2f s (window 2 s)", took);
    /* the store goes on serving its ranks */
    cr_assert_eq(ds_store_set(s, "k", "v", 1, &err), DS_OK, "%s", err.msg);
    void *v = NULL;
    size_t len = 0;
    cr_assert_eq(ds_store_get(s, "k", &v, &len, &err), DS_OK, "%s", err.msg);
    cr_assert(len == 1 && ((char *)v)[0] == 'v');
    free(v);
    close(silent);
    close(partial);
    ds_store_close(s);
}

/* A world of 3 where rank 2 never starts: each rank's error names who it waited for, where,
 * and how long. */
static void missing_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    ds_store_options opt = options(rank, n, port, SECRET, 1);
    if (ds_store_open(&store, &opt, &err) == DS_OK &&
        ds_comm_cpu_create(&comm, store, 1, &err) == DS_OK) {
        ds_comm_destroy(comm);
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "no error");
    } else {
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "%s", err.msg);
    }
    ds_store_close(store);
}

Test(dist, missing_rank_times_out_with_named_error, .timeout = 30)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[2];
    run_ranks(sh, 2, 3, port, missing_rank, pids);
    for (int r = 0; r < 2; r++) {
        int status = 0;
        cr_assert(waitpid(pids[r], &status, 0) == pids[r]);
        cr_assert(WIFEXITED(status));
    }
    char want[256];
    snprintf(want, sizeof want, "rank 1: rank 2 did not publish its address at the rendezvous at "
             "127.0.0.1:%d after 1 s", port);
    cr_expect_str_eq(sh->msg[1], want);
    snprintf(want, sizeof want, "rank 0: rank 2 did not connect to 127.0.0.1:");
    cr_expect(strncmp(sh->msg[0], want, strlen(want)) == 0, "%s", sh->msg[0]);
    cr_expect(strstr(sh->msg[0], " after 1 s") != NULL, "%s", sh->msg[0]);
    munmap(sh, sizeof *sh);
}

/* A rank that fails at startup (ds_store_fail) or whose store connection ends before it leaves
 * (it died) ends the others' waits at once, at the store (a GET for its address) and at the
 * ring's accept (a connect that would never come), naming the cause; they used to wait out the
 * timeout (20 s here, 300 s in ds-train). mode 0: the last rank calls ds_store_fail; 1: it
 * exits without closing. */
static int failing_mode;
static void failing_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    ds_store_options opt = options(rank, n, port, SECRET, 20);
    double t0 = ds_dist_now();
    if (rank == n - 1) {
        if (ds_store_open(&store, &opt, &err) != DS_OK) {
            snprintf(sh->msg[rank], sizeof sh->msg[rank], "open: %.900s", err.msg);
            return;
        }
        usleep(300 * 1000); /* the others are waiting by now */
        if (failing_mode == 0) {
            ds_store_fail(store, "bad config here");
            ds_store_close(store);
        }
        _exit(0); /* mode 1: no close, no leave */
    }
    if (ds_store_open(&store, &opt, &err) == DS_OK && ds_comm_cpu_create(&comm, store, 20, &err) == DS_OK) {
        ds_comm_destroy(comm);
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "no error");
    } else {
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "%.400s (after %.1f s)", err.msg, ds_dist_now() - t0);
    }
    ds_store_close(store);
}

static void failing_world(int mode, const char *cause)
{
    failing_mode = mode;
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[3];
    run_ranks(sh, 3, 3, port, failing_rank, pids);
    for (int r = 0; r < 3; r++) {
        int status = 0;
        cr_assert(waitpid(pids[r], &status, 0) == pids[r]);
    }
    /* rank 0 waits for rank 2's connect (accept), rank 1 for rank 2's address (a GET) */
    for (int r = 0; r < 2; r++) {
        cr_expect(strstr(sh->msg[r], cause) != NULL, "rank %d: %s", r, sh->msg[r]);
        double secs = 99;
        const char *after = strstr(sh->msg[r], "(after ");
        cr_expect(after && sscanf(after, "(after %lf", &secs) == 1 && secs < 5, "rank %d: %s", r, sh->msg[r]);
    }
    cr_expect(strstr(sh->msg[0], "rank 0: waiting for rank 2 to connect: ") != NULL, "%s", sh->msg[0]);
    munmap(sh, sizeof *sh);
}

Test(dist, a_rank_failed_at_startup_ends_the_others_waits, .timeout = 30)
{
    failing_world(0, "rank 2 failed: bad config here");
}

Test(dist, a_rank_gone_without_leaving_ends_the_others_waits, .timeout = 30)
{
    failing_world(1, "a rank's connection to the rendezvous ended before it left");
}

/* Values up to the documented 16 MiB pass the store (the server's buffer stopped short of it) */
Test(dist, store_value_of_16_mib, .timeout = 30)
{
    int port = test_free_port();
    ds_error err = {0};
    ds_store *s = NULL;
    ds_store_options opt = options(0, 1, port, SECRET, 10);
    cr_assert_eq(ds_store_open(&s, &opt, &err), DS_OK, "%s", err.msg);
    const size_t n = 16u << 20;
    uint8_t *big = malloc(n);
    cr_assert(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 131 + 7);
    cr_assert_eq(ds_store_set(s, "big", big, n, &err), DS_OK, "%s", err.msg);
    void *v = NULL;
    size_t len = 0;
    cr_assert_eq(ds_store_get(s, "big", &v, &len, &err), DS_OK, "%s", err.msg);
    cr_expect(len == n && memcmp(v, big, n) == 0);
    free(v);
    cr_expect_eq(ds_store_set(s, "bigger", big, n + 1, &err), DS_ERR_INVALID); /* over the limit: refused here */
    /* the store still answers */
    cr_assert_eq(ds_store_set(s, "small", "x", 1, &err), DS_OK, "%s", err.msg);
    free(big);
    ds_store_close(s);
}

/* A store barrier that a rank never reaches says how many arrived. */
static void barrier_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_store_options opt = options(rank, n, port, SECRET, 1);
    if (ds_store_open(&store, &opt, &err) || ds_store_barrier(store, &err) == DS_OK)
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "no barrier error");
    else
        snprintf(sh->msg[rank], sizeof sh->msg[rank], "%s", err.msg);
    ds_store_close(store);
}

Test(dist, barrier_timeout_counts_arrivals, .timeout = 30)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[1];
    run_ranks(sh, 1, 2, port, barrier_rank, pids);
    int status = 0;
    cr_assert(waitpid(pids[0], &status, 0) == pids[0]);
    char want[256];
    snprintf(want, sizeof want, "rank 0: barrier 1: 1 of 2 ranks arrived at the rendezvous at "
             "127.0.0.1:%d after 1 s", port);
    cr_expect_str_eq(sh->msg[0], want);
    munmap(sh, sizeof *sh);
}

/* Sub-groups {3, 1} and {0, 2} of a world of 4, created by every rank in the same order; each
 * group reduces and broadcasts among its own members, and the world communicator still works. */
static void groups_rank(shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *world = NULL, *ga = NULL, *gb = NULL;
    const int a[2] = {3, 1}, b[2] = {0, 2};
    ds_store_options opt = options(rank, n, port, SECRET, 10);
    if (ds_store_open(&store, &opt, &err) || ds_comm_cpu_create(&world, store, 10, &err) ||
        ds_comm_cpu_create_group(&ga, store, a, 2, 10, &err) ||
        ds_comm_cpu_create_group(&gb, store, b, 2, 10, &err)) {
        fail(sh, rank, "%s", err.msg);
        return;
    }
    ds_comm *mine = (rank == 1 || rank == 3) ? ga : gb, *other = mine == ga ? gb : ga;
    const int *members = mine == ga ? a : b;
    if (!mine || other) fail(sh, rank, "membership: mine %p other %p", (void *)mine, (void *)other);
    else if (mine->size != 2 || members[mine->rank] != rank)
        fail(sh, rank, "group rank %d of %d", mine->rank, mine->size);
    if (sh->failed[rank]) return;
    enum { COUNT = 1001 };
    float *x = malloc(COUNT * sizeof *x);
    for (int i = 0; i < COUNT; i++) x[i] = value(rank, 99, (size_t)i);
    if (ds_comm_all_reduce(mine, x, COUNT, DS_REDUCE_MAX, &err)) fail(sh, rank, "%s", err.msg);
    for (int i = 0; i < COUNT && !sh->failed[rank]; i++) {
        float want = fmaxf(value(members[0], 99, (size_t)i), value(members[1], 99, (size_t)i));
        if (x[i] != want) fail(sh, rank, "group max: element %d is %g, not %g", i, x[i], want);
    }
    int token = rank == members[0] ? 1000 + rank : -1;
    if (ds_comm_broadcast(mine, &token, sizeof token, 0, &err)) fail(sh, rank, "%s", err.msg);
    else if (token != 1000 + members[0]) fail(sh, rank, "group broadcast gave %d", token);
    float one = 1;
    if (ds_comm_all_reduce(world, &one, 1, DS_REDUCE_SUM, &err)) fail(sh, rank, "%s", err.msg);
    else if (one != (float)n) fail(sh, rank, "world sum after groups: %g", one);
    const int twice[2] = {1, 1};
    ds_comm *bad = NULL;
    char want[64];
    snprintf(want, sizeof want, "rank %d: rank 1 is twice in a group", rank);
    if (ds_comm_cpu_create_group(&bad, store, twice, 2, 10, &err) != DS_ERR_INVALID ||
        strcmp(err.msg, want) != 0)
        fail(sh, rank, "a group with a rank twice: \"%s\"", err.msg);
    free(x);
    ds_comm_destroy(ga);
    ds_comm_destroy(gb);
    ds_comm_destroy(world);
    if (ds_store_barrier(store, &err)) fail(sh, rank, "%s", err.msg);
    ds_store_close(store);
}

Test(dist, sub_groups, .timeout = 30)
{
    shared *sh = shared_new();
    int port = test_free_port();
    pid_t pids[4];
    run_ranks(sh, 4, 4, port, groups_rank, pids);
    wait_ranks(sh, 4, pids);
    munmap(sh, sizeof *sh);
}
