/* The communicator interface's checked wrappers and the CPU communicator: a ring between the
 * ranks, bootstrapped through the rendezvous store, with ring reduce-scatter, all-gather
 * (all-reduce is the two), pipelined broadcast and barrier, on the world or a sub-group. Each
 * link of the ring is a TCP connection; between two ranks of one host the bytes go through a
 * shared-memory ring buffer instead (the TCP connection stays, to notice a peer that exits). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "dist/dist_internal.h"

/* Ring steps move at most this many floats at a time, so the receive scratch stays 1 MiB
 * whatever the buffer size. */
#define SEGMENT_FLOATS ((size_t)1 << 18)

/* A shared-memory link: SHM_HDR bytes of header (the writer's count of bytes put at 0, the
 * reader's count of bytes taken at 128, each on its own pair of cache lines; the nonce at 192),
 * then a ring of SHM_CAP bytes. One writer (the rank before), one reader (the rank after). The
 * counts are 8-byte atomics, which must be lock-free to work between processes. */
#define SHM_CAP ((size_t)1 << 20)
#define SHM_HDR ((size_t)256)
#define SHM_PUT_MAX ((size_t)256 << 10) /* bytes per copy, so the reader starts early */
#define SHM_NONCE 16

typedef struct cpu_comm {
    ds_comm base;
    int next_fd; /* our connection to rank + 1 */
    int prev_fd; /* rank - 1's connection to us */
    char *out_shm; /* the shared-memory link to rank + 1 (we write), or NULL: TCP */
    char *in_shm;  /* the one from rank - 1 (we read), or NULL: TCP */
    double timeout_s;
    float *scratch;
    int me, next, prev; /* global ranks (of the store's world), for messages and keys */
    char describe[320];
} cpu_comm;

static int ring_mod(int a, int n) { return ((a % n) + n) % n; }

/* ---- wrappers ---------------------------------------------------------------------------- */

static ds_status check_op(const ds_comm *c, ds_reduce_op op, ds_error *err)
{
    if (op != DS_REDUCE_SUM && op != DS_REDUCE_MEAN && op != DS_REDUCE_MAX)
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: unknown reduce op %d", c->rank, (int)op);
    return DS_OK;
}

ds_status ds_comm_all_reduce(ds_comm *c, float *buf, size_t count, ds_reduce_op op,
                             ds_error *err)
{
    ds_status st = check_op(c, op, err);
    if (st != DS_OK) return st;
    if (count && !buf) return ds_error_set(err, DS_ERR_INVALID, "all_reduce: NULL buffer");
    return c->ops->all_reduce(c, buf, count, op, err);
}

ds_status ds_comm_reduce_scatter(ds_comm *c, const float *send, float *recv, size_t recv_count,
                                 ds_reduce_op op, ds_error *err)
{
    ds_status st = check_op(c, op, err);
    if (st != DS_OK) return st;
    if (recv_count && (!send || !recv))
        return ds_error_set(err, DS_ERR_INVALID, "reduce_scatter: NULL buffer");
    return c->ops->reduce_scatter(c, send, recv, recv_count, op, err);
}

ds_status ds_comm_all_gather(ds_comm *c, const float *send, float *recv, size_t send_count,
                             ds_error *err)
{
    if (send_count && (!send || !recv))
        return ds_error_set(err, DS_ERR_INVALID, "all_gather: NULL buffer");
    return c->ops->all_gather(c, send, recv, send_count, err);
}

ds_status ds_comm_reduce_scatter_v(ds_comm *c, float *buf, const size_t *off, const size_t *len,
                                   ds_reduce_op op, ds_error *err)
{
    ds_status st = check_op(c, op, err);
    if (st != DS_OK)
        return st;
    if (!c->ops->reduce_scatter_v)
        return ds_error_set(err, DS_ERR_UNSUPPORTED, "communicator %s has no in-place reduce_scatter", c->ops->name);
    return c->ops->reduce_scatter_v(c, buf, off, len, op, err);
}

ds_status ds_comm_all_gather_v(ds_comm *c, void *buf, const size_t *off, const size_t *len,
                               size_t esz, ds_error *err)
{
    if (!c->ops->all_gather_v)
        return ds_error_set(err, DS_ERR_UNSUPPORTED, "communicator %s has no in-place all_gather", c->ops->name);
    if (esz != 2 && esz != 4)
        return ds_error_set(err, DS_ERR_INVALID, "all_gather_v: elements of %zu bytes (expected 2 or 4)", esz);
    return c->ops->all_gather_v(c, buf, off, len, esz, err);
}

ds_status ds_comm_broadcast(ds_comm *c, void *buf, size_t bytes, int root, ds_error *err)
{
    if (root < 0 || root >= c->size)
        return ds_error_set(err, DS_ERR_INVALID, "broadcast: root %d is not a rank of a world "
                            "of %d", root, c->size);
    if (bytes && !buf) return ds_error_set(err, DS_ERR_INVALID, "broadcast: NULL buffer");
    return c->ops->broadcast(c, buf, bytes, root, err);
}

ds_status ds_comm_barrier(ds_comm *c, ds_error *err) { return c->ops->barrier(c, err); }

const char *ds_comm_describe(const ds_comm *c)
{
    return !c ? "none" : c->ops->describe ? c->ops->describe(c) : c->ops->name;
}

void ds_comm_destroy(ds_comm *c)
{
    if (c) c->ops->destroy(c);
}

/* ---- CPU ring ---------------------------------------------------------------------------- */

_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "shared-memory links need lock-free 8-byte atomics");
#define SHM_NONCE_AT 192
static uint64_t *shm_count(char *m, int reader) { return (uint64_t *)(void *)(m + (reader ? 128 : 0)); }
/* Each count has a 32-bit sequence word beside it (bumped after each move of the count) and a
 * flag the other side raises while it sleeps on that word in futex(2) (shm_sleep): so a rank
 * that waits longer than the spin sleeps until its peer moves, instead of polling every 1 ms
 * (which made shared memory slower than TCP with more ranks than cores). */
static uint32_t *shm_seq(char *m, int reader) { return (uint32_t *)(void *)(m + (reader ? 160 : 64)); }
static uint32_t *shm_sleeper(char *m, int reader) { return (uint32_t *)(void *)(m + (reader ? 164 : 68)); }

/* after moving count reader (0 the writer's) of link m: wake its sleeping peer, if any */
static void shm_moved(char *m, int reader)
{
    __atomic_fetch_add(shm_seq(m, reader), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(shm_sleeper(m, reader), __ATOMIC_SEQ_CST))
        syscall(SYS_futex, shm_seq(m, reader), FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Sleep (at most max_s) until count reader of link m moves from was; the flag first, then the
 * count looked at again, so that a move between the two is never slept through. */
static void shm_sleep(char *m, int reader, uint64_t was, double max_s)
{
    __atomic_store_n(shm_sleeper(m, reader), 1, __ATOMIC_SEQ_CST);
    const uint32_t seq = __atomic_load_n(shm_seq(m, reader), __ATOMIC_SEQ_CST);
    if (__atomic_load_n(shm_count(m, reader), __ATOMIC_SEQ_CST) == was) {
        struct timespec ts = {(time_t)max_s, (long)((max_s - (double)(time_t)max_s) * 1e9)};
        syscall(SYS_futex, shm_seq(m, reader), FUTEX_WAIT, seq, &ts, NULL, 0);
    }
    __atomic_store_n(shm_sleeper(m, reader), 0, __ATOMIC_SEQ_CST);
}

/* Put up to n bytes (at most SHM_PUT_MAX) into the link's ring; returns how many fitted. */
static size_t shm_put(char *m, const char *src, size_t n)
{
    uint64_t head = *shm_count(m, 0), tail = __atomic_load_n(shm_count(m, 1), __ATOMIC_ACQUIRE);
    size_t space = SHM_CAP - (size_t)(head - tail), k = n < space ? n : space;
    if (k > SHM_PUT_MAX) k = SHM_PUT_MAX;
    if (!k) return 0;
    size_t at = (size_t)(head % SHM_CAP), first = SHM_CAP - at < k ? SHM_CAP - at : k;
    memcpy(m + SHM_HDR + at, src, first);
    memcpy(m + SHM_HDR, src + first, k - first);
    __atomic_store_n(shm_count(m, 0), head + k, __ATOMIC_RELEASE);
    shm_moved(m, 0);
    return k;
}

/* Take up to n bytes out of the link's ring; returns how many there were. */
static size_t shm_get(char *m, char *dst, size_t n)
{
    uint64_t tail = *shm_count(m, 1), head = __atomic_load_n(shm_count(m, 0), __ATOMIC_ACQUIRE);
    size_t have = (size_t)(head - tail), k = n < have ? n : have;
    if (k > SHM_PUT_MAX) k = SHM_PUT_MAX;
    if (!k) return 0;
    size_t at = (size_t)(tail % SHM_CAP), first = SHM_CAP - at < k ? SHM_CAP - at : k;
    memcpy(dst, m + SHM_HDR + at, first);
    memcpy(dst + first, m + SHM_HDR, k - first);
    __atomic_store_n(shm_count(m, 1), tail + k, __ATOMIC_RELEASE);
    shm_moved(m, 1);
    return k;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* A shared-memory link's TCP connection carries nothing after the handshake: readable means
 * the peer closed it (it exited) or broke the protocol. */
static ds_status link_alive(cpu_comm *c, int fd, int peer, const char *what, ds_error *err)
{
    char byte;
    ssize_t in = recv(fd, &byte, 1, MSG_DONTWAIT | MSG_PEEK);
    if (in == 0)
        return ds_error_set(err, DS_ERR_IO, "rank %d: %s: rank %d closed its connection (did it "
                            "exit?)", c->me, what, peer);
    if (in > 0)
        return ds_error_set(err, DS_ERR_IO, "rank %d: %s: unexpected bytes from rank %d on a "
                            "shared-memory link", c->me, what, peer);
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return ds_error_set(err, DS_ERR_IO, "rank %d: %s: connection to rank %d: %s", c->me, what,
                            peer, strerror(errno));
    return DS_OK;
}

/* Send sn bytes to the next rank while receiving rn bytes from the previous one (both at
 * once, so that rings of any buffer size never deadlock on full socket buffers or a full
 * shared-memory ring). A shared-memory side that cannot move spins briefly, then sleeps in
 * futex(2) until its peer moves the ring (shm_sleep, 50 ms at most, then a look at the link's
 * TCP connection, which notices a peer that exited); waiting on both links at once it yields
 * the core for 2 ms, then sleeps in poll() on the TCP connections 1 ms at a time; a TCP side
 * sleeps in poll(). */
static ds_status exchange(cpu_comm *c, const void *sbuf, size_t sn, void *rbuf, size_t rn,
                          const char *what, ds_error *err)
{
    const char *sp = sbuf;
    char *rp = rbuf;
    size_t sent = 0, got = 0;
    int r = c->me, next = c->next, prev = c->prev;
    unsigned idle = 0;
    double idle_since = 0;
    int hup = 0; /* a shared-memory link's connection was readable: look at the ring once more */
    while (sent < sn || got < rn) {
        int progress = 0;
        if (sent < sn && c->out_shm) {
            size_t k = shm_put(c->out_shm, sp + sent, sn - sent);
            sent += k;
            progress |= k > 0;
        } else if (sent < sn) {
            ssize_t put = send(c->next_fd, sp + sent, sn - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (put > 0) {
                sent += (size_t)put;
                progress = 1;
            } else if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return ds_error_set(err, DS_ERR_IO, "rank %d: %s: sending to rank %d: %s%s", r,
                                    what, next, strerror(errno),
                                    errno == EPIPE || errno == ECONNRESET ? " (did it exit?)" : "");
            }
        }
        if (got < rn && c->in_shm) {
            size_t k = shm_get(c->in_shm, rp + got, rn - got);
            got += k;
            progress |= k > 0;
        } else if (got < rn) {
            ssize_t in = recv(c->prev_fd, rp + got, rn - got, MSG_DONTWAIT);
            if (in > 0) {
                got += (size_t)in;
                progress = 1;
            } else if (in == 0) {
                return ds_error_set(err, DS_ERR_IO, "rank %d: %s: rank %d closed its connection "
                                    "(did it exit?)", r, what, prev);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return ds_error_set(err, DS_ERR_IO, "rank %d: %s: receiving from rank %d: %s", r,
                                    what, prev, strerror(errno));
            }
        }
        if (progress) {
            idle = hup = 0;
            continue;
        }
        const int shm_wait = (sent < sn && c->out_shm) || (got < rn && c->in_shm);
        int shm_slept = 0;
        double now = 0;
        if (shm_wait) {
            if (idle == 0) idle_since = ds_dist_now();
            idle++;
            /* spin briefly (the peer is usually about to move) before sleeping: 256 rounds.
             * Measured here (AMD EPYC, 2 cores; a 3-layer net, 60 steps of 2-float buckets):
             * 2 ranks 0.5 ms/step (2048 rounds: 0.5; 32: 1.5), 3 ranks 2.7 (2048: 4.3: the
             * spinning took the core from the rank it waited for) */
            if (idle < 256) {
                cpu_relax();
                continue;
            }
            now = ds_dist_now();
            if (now - idle_since > c->timeout_s)
                return ds_error_set(err, DS_ERR_IO, "rank %d: %s: no progress with rank %d after "
                                    "%g s", r, what, got < rn ? prev : next, c->timeout_s);
            /* waiting on one shared-memory side only: sleep until the peer moves it (50 ms at
             * most, then the poll below looks for a peer that exited) */
            if (got < rn && c->in_shm && sent >= sn) {
                shm_sleep(c->in_shm, 0, *shm_count(c->in_shm, 1), 0.05);
                shm_slept = 1;
            } else if (sent < sn && c->out_shm && got >= rn) {
                shm_sleep(c->out_shm, 1, *shm_count(c->out_shm, 0) - SHM_CAP, 0.05);
                shm_slept = 1;
            } else if (now - idle_since < 2e-3) {
                sched_yield();
                continue;
            }
        }
        struct pollfd pf[2];
        int np = 0;
        if (sent < sn) pf[np++] = (struct pollfd){.fd = c->next_fd, .events = c->out_shm ? POLLIN : POLLOUT};
        if (got < rn) pf[np++] = (struct pollfd){.fd = c->prev_fd, .events = POLLIN};
        int ready = poll(pf, (nfds_t)np, shm_wait ? !shm_slept : (int)(c->timeout_s * 1000));
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0)
            return ds_error_set(err, DS_ERR_IO, "rank %d: %s: poll: %s", r, what, strerror(errno));
        if (ready == 0 && !shm_wait)
            return ds_error_set(err, DS_ERR_IO, "rank %d: %s: no progress with rank %d after %g s",
                                r, what, got < rn ? prev : next, c->timeout_s);
        /* A peer that put its last bytes in the ring and exited: those bytes come first, so
         * the closed connection is an error only when the ring had nothing after it closed. */
        const int out_hup = sent < sn && c->out_shm && (pf[0].revents & (POLLIN | POLLHUP | POLLERR));
        const int in_hup = got < rn && c->in_shm && (pf[np - 1].revents & (POLLIN | POLLHUP | POLLERR));
        if ((out_hup || in_hup) && !hup) {
            hup = 1;
            continue;
        }
        ds_status st = DS_OK;
        if (out_hup) st = link_alive(c, c->next_fd, next, what, err);
        if (st == DS_OK && in_hup) st = link_alive(c, c->prev_fd, prev, what, err);
        if (st != DS_OK) return st;
    }
    return DS_OK;
}

static void combine(float *acc, const float *in, size_t count, ds_reduce_op op)
{
    if (op == DS_REDUCE_MAX) {
        for (size_t i = 0; i < count; i++) /* NaN propagates, as in torch.max */
            acc[i] = (in[i] > acc[i] || isnan(in[i])) ? in[i] : acc[i];
    } else {
        for (size_t i = 0; i < count; i++) acc[i] = in[i] + acc[i];
    }
}

static size_t seg_len(size_t len, size_t pos)
{
    if (pos >= len) return 0;
    return len - pos < SEGMENT_FLOATS ? len - pos : SEGMENT_FLOATS;
}

/* Ring reduce-scatter in place over blocks (off, len): rank r ends owning block r, reduced over
 * all ranks (and divided by the world size for MEAN). Block b's partial sum starts at rank b+1
 * and travels the ring once, so its order of summation is fixed. */
static ds_status ring_reduce_scatter(cpu_comm *c, float *work, const size_t *off,
                                     const size_t *len, ds_reduce_op op, const char *what,
                                     ds_error *err)
{
    int n = c->base.size, r = c->base.rank;
    for (int s = 0; s < n - 1; s++) {
        int sb = ring_mod(r - s - 1, n), rb = ring_mod(r - s - 2, n);
        size_t most = len[sb] > len[rb] ? len[sb] : len[rb];
        for (size_t pos = 0; pos < most; pos += SEGMENT_FLOATS) {
            size_t sn = seg_len(len[sb], pos), rn = seg_len(len[rb], pos);
            ds_status st = exchange(c, work + off[sb] + pos, sn * sizeof(float), c->scratch,
                                    rn * sizeof(float), what, err);
            if (st != DS_OK) return st;
            combine(work + off[rb] + pos, c->scratch, rn, op);
        }
    }
    if (op == DS_REDUCE_MEAN) {
        float *mine = work + off[r];
        for (size_t i = 0; i < len[r]; i++) mine[i] = mine[i] / (float)n;
    }
    return DS_OK;
}

/* Ring all-gather in place: rank r contributes block r. */
static ds_status ring_all_gather_e(cpu_comm *c, void *work, const size_t *off, const size_t *len,
                                   size_t esz, const char *what, ds_error *err)
{
    int n = c->base.size, r = c->base.rank;
    char *w = work;
    for (int s = 0; s < n - 1; s++) {
        int sb = ring_mod(r - s, n), rb = ring_mod(r - s - 1, n);
        ds_status st = exchange(c, w + off[sb] * esz, len[sb] * esz, w + off[rb] * esz,
                                len[rb] * esz, what, err);
        if (st != DS_OK) return st;
    }
    return DS_OK;
}

static ds_status ring_all_gather(cpu_comm *c, float *work, const size_t *off, const size_t *len,
                                 const char *what, ds_error *err)
{
    return ring_all_gather_e(c, work, off, len, sizeof(float), what, err);
}

static ds_status blocks(int n, size_t total, size_t **off, size_t **len, ds_error *err)
{
    *off = malloc((size_t)n * sizeof **off);
    *len = malloc((size_t)n * sizeof **len);
    if (!*off || !*len) {
        free(*off);
        free(*len);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    /* uneven counts: block b is [total*b/n, total*(b+1)/n) */
    for (int b = 0; b < n; b++) {
        size_t lo = (size_t)((unsigned __int128)total * (unsigned)b / (unsigned)n);
        size_t hi = (size_t)((unsigned __int128)total * (unsigned)(b + 1) / (unsigned)n);
        (*off)[b] = lo;
        (*len)[b] = hi - lo;
    }
    return DS_OK;
}

static ds_status cpu_all_reduce(ds_comm *base, float *buf, size_t count, ds_reduce_op op,
                                ds_error *err)
{
    cpu_comm *c = (cpu_comm *)base;
    if (base->size == 1) {
        return DS_OK; /* MEAN over one rank divides by 1 */
    }
    size_t *off, *len;
    ds_status st = blocks(base->size, count, &off, &len, err);
    if (st != DS_OK) return st;
    st = ring_reduce_scatter(c, buf, off, len, op, "all_reduce", err);
    if (st == DS_OK) st = ring_all_gather(c, buf, off, len, "all_reduce", err);
    free(off);
    free(len);
    return st;
}

static ds_status cpu_reduce_scatter(ds_comm *base, const float *send, float *recv,
                                    size_t recv_count, ds_reduce_op op, ds_error *err)
{
    cpu_comm *c = (cpu_comm *)base;
    int n = base->size;
    if (n == 1) {
        memmove(recv, send, recv_count * sizeof(float));
        return DS_OK;
    }
    size_t total = recv_count * (size_t)n;
    float *work = malloc(total ? total * sizeof(float) : 1);
    size_t *off, *len;
    if (!work) return ds_error_set(err, DS_ERR_NOMEM, "reduce_scatter: out of memory");
    ds_status st = blocks(n, total, &off, &len, err);
    if (st != DS_OK) {
        free(work);
        return st;
    }
    memcpy(work, send, total * sizeof(float));
    st = ring_reduce_scatter(c, work, off, len, op, "reduce_scatter", err);
    if (st == DS_OK) memcpy(recv, work + off[base->rank], recv_count * sizeof(float));
    free(work);
    free(off);
    free(len);
    return st;
}

static ds_status cpu_all_gather(ds_comm *base, const float *send, float *recv, size_t send_count,
                                ds_error *err)
{
    cpu_comm *c = (cpu_comm *)base;
    int n = base->size;
    memmove(recv + (size_t)base->rank * send_count, send, send_count * sizeof(float));
    if (n == 1) return DS_OK;
    size_t *off, *len;
    ds_status st = blocks(n, send_count * (size_t)n, &off, &len, err);
    if (st != DS_OK) return st;
    st = ring_all_gather(c, recv, off, len, "all_gather", err);
    free(off);
    free(len);
    return st;
}

/* A pipelined chain root -> root+1 -> ... in segments: bandwidth-optimal for one root. */
static ds_status cpu_broadcast(ds_comm *base, void *buf, size_t bytes, int root, ds_error *err)
{
    cpu_comm *c = (cpu_comm *)base;
    int n = base->size, d = ring_mod(base->rank - root, n);
    const size_t seg = SEGMENT_FLOATS * sizeof(float);
    for (size_t pos = 0; pos < bytes && n > 1; pos += seg) {
        size_t m = bytes - pos < seg ? bytes - pos : seg;
        ds_status st;
        if (d > 0 && (st = exchange(c, NULL, 0, (char *)buf + pos, m, "broadcast", err)) != DS_OK)
            return st;
        if (d < n - 1 && (st = exchange(c, (char *)buf + pos, m, NULL, 0, "broadcast", err)) != DS_OK)
            return st;
    }
    return DS_OK;
}

/* An all-reduce that moves one float per rank at every step, so no rank leaves before all
 * have arrived. */
static ds_status cpu_barrier(ds_comm *base, ds_error *err)
{
    int n = base->size;
    if (n == 1) return DS_OK;
    float *x = calloc((size_t)n, sizeof *x);
    if (!x) return ds_error_set(err, DS_ERR_NOMEM, "barrier: out of memory");
    ds_status st = cpu_all_reduce(base, x, (size_t)n, DS_REDUCE_MAX, err);
    free(x);
    if (st != DS_OK) ds_error_prefix(err, "barrier: ");
    return st;
}

static void cpu_destroy(ds_comm *base)
{
    cpu_comm *c = (cpu_comm *)base;
    if (c->out_shm) munmap(c->out_shm, SHM_HDR + SHM_CAP);
    if (c->in_shm) munmap(c->in_shm, SHM_HDR + SHM_CAP);
    if (c->next_fd >= 0) close(c->next_fd);
    if (c->prev_fd >= 0) close(c->prev_fd);
    free(c->scratch);
    free(c);
}

static ds_status cpu_reduce_scatter_v(ds_comm *base, float *buf, const size_t *off,
                                      const size_t *len, ds_reduce_op op, ds_error *err)
{
    if (base->size == 1)
        return DS_OK;
    return ring_reduce_scatter((cpu_comm *)base, buf, off, len, op, "reduce_scatter", err);
}

static ds_status cpu_all_gather_v(ds_comm *base, void *buf, const size_t *off, const size_t *len,
                                  size_t esz, ds_error *err)
{
    if (base->size == 1)
        return DS_OK;
    return ring_all_gather_e((cpu_comm *)base, buf, off, len, esz, "all_gather", err);
}

static const char *cpu_describe(const ds_comm *base);

static const ds_comm_ops cpu_ops = {
    .name = "cpu",
    .reduce_scatter_v = cpu_reduce_scatter_v,
    .all_gather_v = cpu_all_gather_v,
    .destroy = cpu_destroy,
    .all_reduce = cpu_all_reduce,
    .reduce_scatter = cpu_reduce_scatter,
    .all_gather = cpu_all_gather,
    .broadcast = cpu_broadcast,
    .barrier = cpu_barrier,
    .describe = cpu_describe,
};

/* ---- bootstrap --------------------------------------------------------------------------- */

/* What a connecting rank sends first: its rank and SHA-256(listener's token || secret || rank),
 * so a stranger who finds a rank's port cannot join the ring. */
static void peer_proof(const uint8_t token[32], const char *secret, uint32_t rank, uint8_t out[36])
{
    uint8_t rb[4] = {(uint8_t)rank, (uint8_t)(rank >> 8), (uint8_t)(rank >> 16),
                     (uint8_t)(rank >> 24)};
    const void *parts[3] = {token, secret, rb};
    size_t lens[3] = {32, strlen(secret), 4};
    memcpy(out, rb, 4);
    ds_sha256(parts, lens, 3, out + 4);
}

static void to_hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
}

static int from_hex(const char *s, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        p[i] = (uint8_t)v;
    }
    return 0;
}

/* any: on every address (ip is a name, ds_store_local_ip) */
static ds_status listen_on(const char *ip, int any, int *fd_out, int *port_out, int rank, ds_error *err)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t sl = sizeof sa;
    if (fd < 0 || (!any && inet_pton(AF_INET, ip, &sa.sin_addr) != 1) ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 64) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl)) {
        int e = errno;
        if (fd >= 0) close(fd);
        return ds_error_set(err, DS_ERR_IO, "rank %d: cannot listen on %s: %s", rank, ip,
                            strerror(e));
    }
    *fd_out = fd;
    *port_out = ntohs(sa.sin_port);
    return DS_OK;
}

/* Connections to the ring port that have not sent their 36-byte proof yet: read side by side,
 * so that silent strangers (a port scan, another job's stale rank) cannot hold the previous
 * rank's connection up in the accept queue, each for up to 5 s, one after the other. */
#define PENDING_MAX 64
typedef struct pending {
    int fd;
    size_t got;
    uint8_t buf[36];
    double deadline; /* 5 s from accept: then it is dropped */
} pending;

/* Read what a pending connection has sent: 1 its proof is the one wanted, -1 drop it (closed,
 * failed, or a wrong proof), 0 keep waiting. */
static int pending_read(pending *q, const uint8_t want[36])
{
    ssize_t k = read(q->fd, q->buf + q->got, sizeof q->buf - q->got);
    if (k > 0)
        q->got += (size_t)k;
    if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return -1;
    if (q->got < sizeof q->buf)
        return 0;
    return memcmp(q->buf, want, 4) == 0 && ds_digest_equal(q->buf + 4, want + 4) ? 1 : -1;
}

/* Accept the previous rank's connection, refusing anyone without the proof. */
static ds_status accept_prev(cpu_comm *c, ds_store *store, int lfd, const uint8_t token[32], const char *secret,
                             const char *ip, int port, double timeout_s, ds_error *err)
{
    int r = c->me, prev = c->prev;
    const double deadline = ds_dist_now() + timeout_s;
    uint8_t want[36];
    peer_proof(token, secret, (uint32_t)prev, want);
    pending p[PENDING_MAX];
    int np = 0, found = -1;
    while (found < 0) {
        double now = ds_dist_now(), wake = deadline;
        for (int i = 0; i < np;) { /* drop the ones whose time is up (or marked: deadline 0) */
            if (p[i].deadline <= now) {
                close(p[i].fd);
                p[i] = p[--np];
            } else {
                wake = p[i].deadline < wake ? p[i].deadline : wake;
                i++;
            }
        }
        if (now >= deadline)
            break;
        struct pollfd pf[1 + PENDING_MAX];
        pf[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < np; i++)
            pf[1 + i] = (struct pollfd){.fd = p[i].fd, .events = POLLIN};
        /* a second at a time: between them, whether the job failed elsewhere (a rank that left
         * would never connect) */
        int ms = (int)((wake - now) * 1000) + 1;
        int n = poll(pf, (nfds_t)(1 + np), ms > 1000 ? 1000 : ms);
        if (n < 0 && errno != EINTR)
            break;
        if (n == 0 && ms > 1000) {
            ds_error why = {0};
            if (ds_store_aborted(store, &why) != 0) {
                for (int i = 0; i < np; i++)
                    close(p[i].fd);
                return ds_error_set(err, DS_ERR_IO, "rank %d: waiting for rank %d to connect: %s", r, prev, why.msg);
            }
        }
        if (n <= 0)
            continue;
        const int polled = np;
        for (int i = 0; i < polled && found < 0; i++) { /* proofs coming in */
            if (!pf[1 + i].revents)
                continue;
            const int v = pending_read(&p[i], want);
            if (v > 0)
                found = i;
            else if (v < 0)
                p[i].deadline = 0; /* dropped at the top of the loop */
        }
        /* new connections, at most a table's worth a round (a flood cannot keep this loop from
         * the proofs); each one's proof is read at once, as it has usually arrived with it */
        for (int taken = 0; found < 0 && (pf[0].revents & POLLIN) && taken < PENDING_MAX; taken++) {
            int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
                break;
            if (np == PENDING_MAX) { /* full: the oldest that has sent nothing goes (else the oldest) */
                int old = 0;
                for (int i = 1; i < np; i++) {
                    const int silent = p[i].got == 0, was = p[old].got == 0;
                    if (silent != was ? silent : p[i].deadline < p[old].deadline)
                        old = i;
                }
                close(p[old].fd);
                p[old] = p[--np];
            }
            double d2 = ds_dist_now() + 5;
            p[np] = (pending){.fd = fd, .got = 0, .deadline = d2 < deadline ? d2 : deadline};
            const int v = pending_read(&p[np], want);
            np++;
            if (v > 0)
                found = np - 1;
            else if (v < 0)
                p[np - 1].deadline = 0;
        }
    }
    for (int i = 0; i < np; i++)
        if (i != found)
            close(p[i].fd);
    if (found >= 0) {
        int one = 1;
        setsockopt(p[found].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->prev_fd = p[found].fd;
        return DS_OK;
    }
    return ds_error_set(err, DS_ERR_IO, "rank %d: rank %d did not connect to %s:%d after %g s", r,
                        prev, ip, port, timeout_s);
}

/* DS_COMM_SHM: 1 (or unset) shared memory between ranks of one host, 0 TCP everywhere */
static ds_status shm_wanted(int *want, int rank, ds_error *err)
{
    const char *e = getenv("DS_COMM_SHM");
    *want = !(e && strcmp(e, "0") == 0);
    if (e && *e && strcmp(e, "0") && strcmp(e, "1"))
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: DS_COMM_SHM=%s: expected 1 (shared memory "
                            "between ranks of one host, the default) or 0 (TCP between all ranks)",
                            rank, e);
    return DS_OK;
}

/* DS_COMM_KEEPALIVE: seconds a ring connection may be silent before TCP probes the peer (3
 * probes, a third of that apart; data unacknowledged for twice that also fails; 0: none, the
 * kernel's default of hours). Default 30: a host
 * that drops off the network (a partition, a power cut) fails the next collective within
 * about a minute, with "Connection timed out", instead of the communicator's 1800 s (and
 * keeps its ranks from waiting forever on a link that will never close). Busy or computing
 * peers answer the probes from their kernel, so long steps are not affected. */
static ds_status keepalive_wanted(int *secs, int rank, ds_error *err)
{
    const char *e = getenv("DS_COMM_KEEPALIVE");
    char *end = NULL;
    long v = e && *e ? strtol(e, &end, 10) : 30;
    if (e && *e && (*end || v < 0 || v > 86400))
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: DS_COMM_KEEPALIVE=%s: expected seconds from 0 (off) to "
                            "86400 (default 30)", rank, e);
    *secs = (int)v;
    return DS_OK;
}

static void keepalive_on(int fd, int secs)
{
    if (fd < 0 || secs <= 0)
        return;
    int one = 1, idle = secs, intvl = secs / 3 > 0 ? secs / 3 : 1, cnt = 3;
    unsigned int user_ms = (unsigned int)secs * 2000u; /* data sent and never acknowledged */
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof user_ms);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

/* The shared-memory offer a rank sends the next one: "DSM1" (or "DSM0": none), its pid, the
 * descriptor of a memfd named ds-comm-<nonce in hex>, the ring's size and the nonce, which is
 * also in the header. The next rank accepts when /proc/<pid>/fd/<fd> is that memfd (so the
 * two share a host and a PID namespace) with that nonce; it answers one byte, 1 or 0. */
typedef struct shm_offer {
    char magic[4];
    uint32_t pid, fd, pad;
    uint64_t cap;
    uint8_t nonce[SHM_NONCE];
} shm_offer;

static char *shm_create(int *fd_out, shm_offer *o)
{
    char name[64], hex[2 * SHM_NONCE + 1];
    ds_error e = {0};
    if (ds_random_bytes(o->nonce, SHM_NONCE, &e) != DS_OK) return NULL;
    to_hex(o->nonce, SHM_NONCE, hex);
    snprintf(name, sizeof name, "ds-comm-%s", hex);
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return NULL;
    char *m = NULL;
    if (ftruncate(fd, (off_t)(SHM_HDR + SHM_CAP)) == 0)
        m = mmap(NULL, SHM_HDR + SHM_CAP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (!m || m == MAP_FAILED) {
        close(fd);
        return NULL;
    }
    memcpy(m + SHM_NONCE_AT, o->nonce, SHM_NONCE);
    memcpy(o->magic, "DSM1", 4);
    o->pid = (uint32_t)getpid();
    o->fd = (uint32_t)fd;
    o->cap = SHM_CAP;
    *fd_out = fd;
    return m;
}

/* Why a link is, or is not, shared memory: the reader's answer to an offer, and the reader's
 * own reason */
enum { SHM_OFF = 0, SHM_YES = 1, SHM_ELSEWHERE = 2, SHM_DENIED = 3, SHM_FAILED = 4, SHM_NO_OFFER = 5 };

static int shm_errno_why(int e)
{
    return e == ENOENT || e == ESRCH ? SHM_ELSEWHERE : e == EACCES || e == EPERM ? SHM_DENIED : SHM_FAILED;
}

/* The previous rank's link, when its offer is on this host; NULL otherwise, with *why */
static char *shm_open_offer(const shm_offer *o, int *why)
{
    char path[64], link[256], want[128], hex[2 * SHM_NONCE + 1];
    *why = SHM_NO_OFFER;
    if (memcmp(o->magic, "DSM1", 4) || o->cap != SHM_CAP) return NULL;
    to_hex(o->nonce, SHM_NONCE, hex);
    snprintf(path, sizeof path, "/proc/%u/fd/%u", o->pid, o->fd);
    snprintf(want, sizeof want, "/memfd:ds-comm-%s", hex);
    /* Pin whatever the link names now without opening it for I/O (O_PATH: no side effects,
     * even for a device), check that it is the memfd of the offer (another host's pid names
     * another file), then open that same file through our own descriptor. */
    int pfd = open(path, O_PATH | O_CLOEXEC);
    if (pfd < 0) {
        *why = shm_errno_why(errno);
        return NULL;
    }
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", pfd);
    ssize_t n = readlink(self, link, sizeof link - 1);
    struct stat st;
    int fd = -1;
    *why = SHM_ELSEWHERE; /* that pid's descriptor is another file */
    if (n > 0) {
        link[n] = 0;
        size_t w = strlen(want);
        if (!strncmp(link, want, w) && (!link[w] || !strcmp(link + w, " (deleted)")) && fstat(pfd, &st) == 0 &&
            S_ISREG(st.st_mode) && (size_t)st.st_size == SHM_HDR + SHM_CAP) {
            fd = open(self, O_RDWR | O_NOCTTY | O_CLOEXEC);
            *why = fd < 0 ? shm_errno_why(errno) : SHM_FAILED;
        }
    }
    close(pfd);
    if (fd < 0) return NULL;
    char *m = mmap(NULL, SHM_HDR + SHM_CAP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return NULL;
    if (memcmp(m + SHM_NONCE_AT, o->nonce, SHM_NONCE)) {
        munmap(m, SHM_HDR + SHM_CAP);
        *why = SHM_ELSEWHERE;
        return NULL;
    }
    *why = SHM_YES;
    return m;
}

/* After the ring's connections: each link becomes shared memory where both ends are on one
 * host and want it (DS_COMM_SHM), and stays TCP otherwise. Every rank sends one offer to the
 * next and one answer to the previous (a few bytes: they fit the socket buffers, so the ring
 * cannot deadlock). */
static ds_status shm_handshake(cpu_comm *c, int want, double wait_s, ds_error *err)
{
    double deadline = ds_dist_now() + wait_s;
    shm_offer mine = {{'D', 'S', 'M', '0'}, 0, 0, 0, 0, {0}}, theirs;
    int fd = -1;
    char *out = want ? shm_create(&fd, &mine) : NULL;
    uint8_t yes = SHM_OFF, answer = SHM_OFF;
    int in_why = SHM_OFF;
    ds_status st = DS_OK;
    if (ds_io_write(c->next_fd, &mine, sizeof mine, deadline) != DS_IO_OK)
        st = ds_error_set(err, DS_ERR_IO, "rank %d: cannot send the link offer to rank %d (did it exit?)", c->me,
                          c->next);
    else if (ds_io_read(c->prev_fd, &theirs, sizeof theirs, deadline) != DS_IO_OK)
        st = ds_error_set(err, DS_ERR_IO, "rank %d: no link offer from rank %d", c->me, c->prev);
    if (st == DS_OK) {
        c->in_shm = want ? shm_open_offer(&theirs, &in_why) : NULL;
        yes = (uint8_t)in_why; /* 1: yes; otherwise why not */
        if (ds_io_write(c->prev_fd, &yes, 1, deadline) != DS_IO_OK ||
            ds_io_read(c->next_fd, &answer, 1, deadline) != DS_IO_OK)
            st = ds_error_set(err, DS_ERR_IO, "rank %d: link handshake with ranks %d and %d failed",
                              c->me, c->prev, c->next);
    }
    if (st == DS_OK && out && answer == SHM_YES)
        c->out_shm = out;
    else if (out)
        munmap(out, SHM_HDR + SHM_CAP);
    if (fd >= 0) close(fd); /* the mapping stays */
    /* what carries each link, and for TCP between ranks that wanted shared memory, why */
    char to[96], from[96];
    if (c->out_shm)
        snprintf(to, sizeof to, "shared memory");
    else if (!want)
        snprintf(to, sizeof to, "tcp (DS_COMM_SHM=0 here)");
    else if (!out)
        snprintf(to, sizeof to, "tcp (no memfd here)");
    else
        snprintf(to, sizeof to, "tcp (%s)", answer == SHM_OFF ? "DS_COMM_SHM=0 there"
                                          : answer == SHM_ELSEWHERE ? "another host or PID namespace"
                                          : answer == SHM_DENIED ? "it may not open ours through /proc"
                                                                 : "it could not map ours");
    if (c->in_shm)
        snprintf(from, sizeof from, "shared memory");
    else
        snprintf(from, sizeof from, "tcp (%s)", !want ? "DS_COMM_SHM=0 here"
                                                : in_why == SHM_NO_OFFER ? "it offered none"
                                                : in_why == SHM_ELSEWHERE ? "another host or PID namespace"
                                                : in_why == SHM_DENIED ? "its memfd may not be opened through /proc here"
                                                                       : "its memfd could not be mapped here");
    snprintf(c->describe, sizeof c->describe, "cpu ring of %d: to rank %d %s, from rank %d %s", c->base.size,
             c->next, to, c->prev, from);
    return st;
}

static const char *cpu_describe(const ds_comm *base)
{
    const cpu_comm *c = (const cpu_comm *)base;
    return c->describe[0] ? c->describe : "cpu ring of 1";
}

ds_status ds_comm_cpu_create_group(ds_comm **out, ds_store *store, const int *ranks,
                                   int num_ranks, double timeout_s, ds_error *err)
{
    *out = NULL;
    int world = ds_store_world_size(store), me = ds_store_rank(store);
    /* every rank of the world takes the id, members or not, so ids stay in step */
    unsigned id = ds_store_next_comm_id(store);
    if (ranks && (num_ranks < 1 || num_ranks > world))
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: a group of %d ranks in a world of %d",
                            me, num_ranks, world);
    int n = ranks ? num_ranks : world, pos = ranks ? -1 : me;
    for (int i = 0; ranks && i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= world)
            return ds_error_set(err, DS_ERR_INVALID, "rank %d: group rank %d is not a rank of a "
                                "world of %d", me, ranks[i], world);
        for (int j = 0; j < i; j++)
            if (ranks[j] == ranks[i])
                return ds_error_set(err, DS_ERR_INVALID, "rank %d: rank %d is twice in a group",
                                    me, ranks[i]);
        if (ranks[i] == me) pos = i;
    }
    if (pos < 0) return DS_OK; /* not a member */
    int want_shm, keepalive_s = 0;
    ds_status wst = shm_wanted(&want_shm, me, err);
    if (wst == DS_OK)
        wst = keepalive_wanted(&keepalive_s, me, err);
    if (wst != DS_OK) return wst;
    cpu_comm *c = calloc(1, sizeof *c);
    if (!c) return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    c->base.ops = &cpu_ops;
    c->base.rank = pos;
    c->base.size = n;
    c->next_fd = c->prev_fd = -1;
    c->timeout_s = timeout_s > 0 ? timeout_s : 1800;
    c->me = me;
    c->next = ranks ? ranks[ring_mod(pos + 1, n)] : ring_mod(pos + 1, n);
    c->prev = ranks ? ranks[ring_mod(pos - 1, n)] : ring_mod(pos - 1, n);
    int r = me;
    if (n == 1) {
        *out = &c->base;
        return DS_OK;
    }
    c->scratch = malloc(SEGMENT_FLOATS * sizeof(float));
    if (!c->scratch) {
        free(c);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    double wait_s = ds_store_timeout(store);
    const char *secret = ds_store_secret(store);
    char ip[256], key[96], value[400];
    uint8_t token[32];
    int lfd = -1, port = 0, any = 0;
    ds_status st = ds_store_local_ip(store, ip, sizeof ip, &any, err);
    if (st == DS_OK) st = ds_random_bytes(token, 32, err);
    if (st == DS_OK) st = listen_on(ip, any, &lfd, &port, r, err);
    if (st == DS_OK) {
        int k = snprintf(value, sizeof value, "%s %d ", ip, port);
        to_hex(token, 32, value + k);
        snprintf(key, sizeof key, "comm/%u/rank/%d", id, r);
        st = ds_store_set(store, key, value, strlen(value), err);
    }
    int next = c->next;
    char *peer = NULL;
    if (st == DS_OK) {
        snprintf(key, sizeof key, "comm/%u/rank/%d", id, next);
        ds_error e = {0};
        size_t len;
        st = ds_store_get(store, key, (void **)&peer, &len, &e);
        if (st != DS_OK && strstr(e.msg, "nothing after"))
            ds_error_set(err, st, "rank %d: rank %d did not publish its address at the rendezvous "
                         "at %s:%d after %g s", r, next, ds_store_addr(store),
                         ds_store_port(store), wait_s);
        else if (st != DS_OK)
            ds_error_set(err, st, "%s", e.msg);
    }
    if (st == DS_OK) {
        char pip[256], hex[65];
        int pport;
        uint8_t ptoken[32], proof[36];
        if (sscanf(peer, "%255s %d %64s", pip, &pport, hex) != 3 || strlen(hex) != 64 ||
            from_hex(hex, ptoken, 32)) {
            st = ds_error_set(err, DS_ERR_INTERNAL, "rank %d: bad address of rank %d in the "
                              "rendezvous: \"%.80s\"", r, next, peer);
        } else {
            double deadline = ds_dist_now() + wait_s;
            c->next_fd = ds_tcp_connect(pip, pport, deadline);
            peer_proof(ptoken, secret, (uint32_t)r, proof);
            if (c->next_fd < 0 || ds_io_write(c->next_fd, proof, 36, deadline) != DS_IO_OK)
                st = ds_error_set(err, DS_ERR_IO, "rank %d: cannot connect to rank %d at %s:%d: "
                                  "%s", r, next, pip, pport, strerror(errno));
        }
    }
    free(peer);
    if (st == DS_OK) st = accept_prev(c, store, lfd, token, secret, ip, port, wait_s, err);
    if (lfd >= 0) close(lfd);
    if (st == DS_OK) {
        keepalive_on(c->next_fd, keepalive_s);
        keepalive_on(c->prev_fd, keepalive_s);
    }
    if (st == DS_OK) st = shm_handshake(c, want_shm, wait_s, err);
    if (st != DS_OK) {
        cpu_destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return DS_OK;
}

ds_status ds_comm_cpu_create(ds_comm **out, ds_store *store, double timeout_s, ds_error *err)
{
    return ds_comm_cpu_create_group(out, store, NULL, 0, timeout_s, err);
}

/* ---- joining a launched job --------------------------------------------------------------- */

ds_status ds_dist_join_from_env(ds_store **store, ds_comm **comm, int *rank, int *world, ds_error *err)
{
    *store = NULL;
    *comm = NULL;
    *rank = 0;
    *world = 1;
    /* unset, empty or 1: one process; anything else must be a valid launch (0 or "abc" used to
     * train alone, silently) */
    const char *ws = getenv("WORLD_SIZE");
    if (!ws || !*ws || strcmp(ws, "1") == 0)
        return DS_OK;
    ds_store_options so;
    ds_status st = ds_store_options_from_env(&so, err);
    if (st == DS_OK && so.world_size == 1)
        return DS_OK;
    if (st == DS_OK)
        st = ds_store_open(store, &so, err);
    /* every rank agrees on WORLD_SIZE with rank 0, and no RANK is taken twice: else the others
     * would wait for ranks that never come */
    char ws0[16];
    snprintf(ws0, sizeof ws0, "%d", so.world_size);
    if (st == DS_OK && so.rank == 0) {
        st = ds_store_set(*store, "ds/world_size", ws0, strlen(ws0), err);
    } else if (st == DS_OK) {
        char *v = NULL; /* rank 0's, as text (the store's values end in a NUL) */
        st = ds_store_get(*store, "ds/world_size", (void **)&v, NULL, err);
        if (st == DS_OK && strcmp(v, ws0) != 0)
            st = ds_error_set(err, DS_ERR_INVALID, "rank %d: WORLD_SIZE is %d here but %s at rank 0 (every rank "
                              "must be started with the same WORLD_SIZE)", so.rank, so.world_size, v);
        free(v);
    }
    if (st == DS_OK) {
        char key[64];
        int64_t n = 0;
        snprintf(key, sizeof key, "ds/rank/%d", so.rank);
        st = ds_store_add(*store, key, 1, &n, err);
        if (st == DS_OK && n > 1)
            st = ds_error_set(err, DS_ERR_INVALID, "rank %d: RANK %d is taken by another process of this job (every "
                              "rank must have its own RANK)", so.rank, so.rank);
    }
    if (st == DS_OK)
        st = ds_comm_cpu_create(comm, *store, 0, err);
    if (st != DS_OK) {
        if (*store && err)
            ds_store_fail(*store, err->msg);
        if (*store)
            ds_store_close(*store);
        *store = NULL;
        return st;
    }
    *rank = so.rank;
    *world = so.world_size;
    return DS_OK;
}
