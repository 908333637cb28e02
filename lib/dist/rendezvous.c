/* The rendezvous store: rank 0 serves a small key-value store (set, get-with-wait, add) over
 * TCP from a thread; every rank is a client. Connections prove the job secret by answering a
 * random 32-byte challenge with SHA-256(nonce || secret), so the secret never crosses the
 * network and a stranger is refused while the job goes on. Collectives live in comm.c. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dist/dist_internal.h"

#define KEY_MAX 1024
#define VALUE_MAX (16u << 20)
#define MAX_CONNS 4096
enum { OP_SET = 1, OP_GET = 2, OP_ADD = 3 };
enum { HDR = 9 }; /* op u8, key length u32, value length u32 (little-endian) */

/* ---- shared helpers -------------------------------------------------------------------- */

double ds_dist_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int wait_ms(double deadline)
{
    double left = deadline - ds_dist_now();
    if (left <= 0) return 0;
    if (left > 1e6) left = 1e6;
    return (int)(left * 1000) + 1;
}

int ds_io_set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int ds_io_read(int fd, void *buf, size_t n, double deadline)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t got = recv(fd, p, n, MSG_DONTWAIT);
        if (got > 0) { p += got; n -= (size_t)got; continue; }
        if (got == 0) return DS_IO_EOF;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return DS_IO_ERROR;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int ms = wait_ms(deadline);
        if (ms == 0) return DS_IO_TIMEOUT;
        int r = poll(&pf, 1, ms);
        if (r < 0 && errno != EINTR) return DS_IO_ERROR;
    }
    return DS_IO_OK;
}

int ds_io_write(int fd, const void *buf, size_t n, double deadline)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t put = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (put > 0) { p += put; n -= (size_t)put; continue; }
        if (put < 0 && errno == EINTR) continue;
        if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return DS_IO_ERROR;
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int ms = wait_ms(deadline);
        if (ms == 0) return DS_IO_TIMEOUT;
        int r = poll(&pf, 1, ms);
        if (r < 0 && errno != EINTR) return DS_IO_ERROR;
    }
    return DS_IO_OK;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put_i64(uint8_t *p, int64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)((uint64_t)v >> (8 * i));
}
static int64_t get_i64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return (int64_t)v;
}

static void challenge_answer(const uint8_t nonce[32], const char *secret, uint8_t out[32])
{
    const void *parts[2] = {nonce, secret};
    size_t lens[2] = {32, strlen(secret)};
    ds_sha256(parts, lens, 2, out);
}

/* ---- the server (rank 0) ---------------------------------------------------------------- */

typedef struct entry {
    char *key;
    uint8_t *value;
    uint32_t len;
} entry;

typedef struct conn {
    int fd;
    int authed;
    double auth_deadline; /* a connection that has not proved the secret by then is dropped */
    uint8_t nonce[32];
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    char *wait_key; /* a GET waiting for this key */
    int left;       /* it added to "ds/left" (its rank closed its store) */
} conn;

typedef struct server {
    double auth_window;   /* seconds a new connection has to answer the challenge */
    int listen_fd;
    int wake[2];
    pthread_t thread;
    char *secret;
    entry *entries;
    size_t num_entries, cap_entries;
    conn *conns;
    size_t num_conns, cap_conns;
    int world_size;
    int64_t gone; /* authenticated connections that ended without leaving: their ranks died */
} server;

/* After a rank's connection ended without its leaving (it exited or failed), or a rank said it
 * failed (ds_store_fail: ds/failed), a GET that waits, or would wait, for a key fails at once
 * with this reply (status 1): what it waits for may never come, and the ranks would otherwise
 * wait out the store's timeout. rank 0's wait for ds/left/all keeps waiting after a death
 * (the dead count as left), not after a failure said. */
static const char DEAD_MSG[] = "a rank's connection to the rendezvous ended before it left: that rank exited or "
                               "failed (see its output); the job cannot go on without it";
static entry *find_entry(server *sv, const char *key);
static int dead_fails(server *sv, const char *key)
{
    /* a rank gone counts as left (ds/left/all comes as the others leave); a rank that said it
     * failed ends rank 0's wait for the others too: they may never reach it (a partition) */
    if (find_entry(sv, "ds/failed"))
        return strcmp(key, "ds/left") != 0;
    return sv->gone > 0 && strncmp(key, "ds/left", 7) != 0;
}

/* the reply of a GET that dead_fails: a rank's own words (ds_store_fail), else DEAD_MSG */
static int reply_dead(server *sv, struct conn *c);

static entry *find_entry(server *sv, const char *key)
{
    for (size_t i = 0; i < sv->num_entries; i++)
        if (strcmp(sv->entries[i].key, key) == 0) return &sv->entries[i];
    return NULL;
}

static int out_append(conn *c, const void *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = (c->out_len + n) * 2 + 64;
        uint8_t *q = realloc(c->out, cap);
        if (!q) return -1;
        c->out = q;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static int reply(conn *c, uint8_t status, const void *value, uint32_t len)
{
    uint8_t hdr[5];
    hdr[0] = status;
    put_u32(hdr + 1, len);
    return out_append(c, hdr, 5) || (len && out_append(c, value, len)) ? -1 : 0;
}

/* ds/abort counts the failures (ds_store_aborted reads it without waiting) */
static int set_value(server *sv, const char *key, const uint8_t *value, uint32_t len);
static int bump_abort(server *sv)
{
    entry *e = find_entry(sv, "ds/abort");
    uint8_t buf[8];
    put_i64(buf, (e && e->len == 8 ? get_i64(e->value) : 0) + 1);
    return set_value(sv, "ds/abort", buf, 8);
}

static int reply_dead(server *sv, conn *c)
{
    entry *f = find_entry(sv, "ds/failed");
    if (f)
        return reply(c, 1, f->value, f->len);
    return reply(c, 1, DEAD_MSG, (uint32_t)strlen(DEAD_MSG));
}

static void conn_drop(conn *c);

/* A rank died or said it failed: count it (ds/abort), and end the GETs waiting in vain */
static int job_failed(server *sv)
{
    if (bump_abort(sv))
        return -1;
    for (size_t i = 0; i < sv->num_conns; i++) {
        conn *c = &sv->conns[i];
        if (c->fd >= 0 && c->wait_key && dead_fails(sv, c->wait_key)) {
            free(c->wait_key);
            c->wait_key = NULL;
            if (reply_dead(sv, c)) conn_drop(c);
        }
    }
    return 0;
}

/* ds/left/all once every other rank has left or died, counted against rank 0's world (a rank
 * started with another WORLD_SIZE would count to its own) */
static int all_left(server *sv)
{
    if (sv->world_size < 2 || find_entry(sv, "ds/left/all"))
        return 0;
    entry *e = find_entry(sv, "ds/left");
    int64_t left = e && e->len == 8 ? get_i64(e->value) : 0;
    return left + sv->gone >= sv->world_size - 1 ? set_value(sv, "ds/left/all", (const uint8_t *)"", 0) : 0;
}

static void conn_drop(conn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->in); free(c->out); free(c->wait_key);
    c->in = c->out = NULL;
    c->wait_key = NULL;
}

static int set_value(server *sv, const char *key, const uint8_t *value, uint32_t len)
{
    entry *e = find_entry(sv, key);
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return -1;
    memcpy(copy, value, len);
    if (!e) {
        if (sv->num_entries == sv->cap_entries) {
            size_t cap = sv->cap_entries * 2 + 16;
            entry *q = realloc(sv->entries, cap * sizeof *q);
            if (!q) { free(copy); return -1; }
            sv->entries = q;
            sv->cap_entries = cap;
        }
        e = &sv->entries[sv->num_entries];
        e->key = strdup(key);
        if (!e->key) { free(copy); return -1; }
        sv->num_entries++;
    } else {
        free(e->value);
    }
    e->value = copy;
    e->len = len;
    /* wake the GETs waiting for this key */
    for (size_t i = 0; i < sv->num_conns; i++) {
        conn *c = &sv->conns[i];
        if (c->fd >= 0 && c->wait_key && strcmp(c->wait_key, key) == 0) {
            free(c->wait_key);
            c->wait_key = NULL;
            if (reply(c, 0, copy, len)) conn_drop(c);
        }
    }
    return 0;
}

/* Handle the complete frames in c->in; -1 drops the connection. */
static int conn_process(server *sv, conn *c)
{
    size_t pos = 0;
    if (!c->authed) {
        if (c->in_len < 32) return 0;
        uint8_t want[32];
        challenge_answer(c->nonce, sv->secret, want);
        uint8_t verdict = ds_digest_equal(want, c->in) ? 1 : 0;
        if (!verdict) {
            (void)send(c->fd, &verdict, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
            return -1;
        }
        c->authed = 1;
        if (out_append(c, &verdict, 1)) return -1;
        pos = 32;
    }
    while (c->in_len - pos >= HDR && !c->wait_key) {
        const uint8_t *h = c->in + pos;
        uint32_t klen = get_u32(h + 1), vlen = get_u32(h + 5);
        if (klen == 0 || klen > KEY_MAX || vlen > VALUE_MAX) return -1;
        if (c->in_len - pos < HDR + (size_t)klen + vlen) break;
        char key[KEY_MAX + 1];
        memcpy(key, h + HDR, klen);
        key[klen] = 0;
        if (strlen(key) != klen) return -1;
        const uint8_t *value = h + HDR + klen;
        pos += HDR + (size_t)klen + vlen;
        switch (h[0]) {
        case OP_SET:
            if (!strcmp(key, "ds/failed") && find_entry(sv, key)) { /* the first failure is the cause */
                if (reply(c, 0, NULL, 0)) return -1;
                break;
            }
            if (set_value(sv, key, value, vlen) || reply(c, 0, NULL, 0)) return -1;
            if (!strcmp(key, "ds/failed") && job_failed(sv)) /* ds_store_fail: the others' waits end now */
                return -1;
            break;
        case OP_GET: {
            entry *e = find_entry(sv, key);
            if (e) {
                if (reply(c, 0, e->value, e->len)) return -1;
            } else if (dead_fails(sv, key)) {
                if (reply_dead(sv, c)) return -1;
            } else if (!(c->wait_key = strdup(key))) {
                return -1;
            }
            break;
        }
        case OP_ADD: {
            if (vlen != 8) return -1;
            if (!strcmp(key, "ds/left"))
                c->left = 1;
            entry *e = find_entry(sv, key);
            int64_t v = (e && e->len == 8 ? get_i64(e->value) : 0) + get_i64(value);
            uint8_t buf[8];
            put_i64(buf, v);
            if (set_value(sv, key, buf, 8) || reply(c, 0, buf, 8)) return -1;
            if (!strcmp(key, "ds/left") && all_left(sv))
                return -1;
            break;
        }
        default:
            return -1;
        }
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return 0;
}

static void accept_one(server *sv)
{
    int fd = accept4(sv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (sv->num_conns >= MAX_CONNS) { close(fd); return; }
    if (sv->num_conns == sv->cap_conns) {
        size_t cap = sv->cap_conns * 2 + 16;
        conn *q = realloc(sv->conns, cap * sizeof *q);
        if (!q) { close(fd); return; }
        sv->conns = q;
        sv->cap_conns = cap;
    }
    conn *c = &sv->conns[sv->num_conns];
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->auth_deadline = ds_dist_now() + sv->auth_window;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (ds_random_bytes(c->nonce, 32, NULL) != DS_OK || out_append(c, c->nonce, 32)) {
        conn_drop(c);
        return;
    }
    sv->num_conns++;
}

static void conn_readable(server *sv, conn *c)
{
    /* room for the largest frame a client sends (one request at a time), and the proof */
    const size_t most = (size_t)VALUE_MAX + KEY_MAX + HDR + 32;
    for (;;) {
        if (c->in_cap - c->in_len < 65536 && c->in_cap < most) {
            size_t cap = c->in_cap * 2 + 65536;
            if (cap > most) cap = most; /* up to the limit itself (16 MiB values were refused) */
            uint8_t *q = realloc(c->in, cap);
            if (!q) { conn_drop(c); return; }
            c->in = q;
            c->in_cap = cap;
        }
        if (c->in_len == c->in_cap) break; /* full at the limit: a frame must be complete now */
        ssize_t got = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
        if (got == 0) { conn_drop(c); return; }
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_drop(c);
            break;
        }
        c->in_len += (size_t)got;
        /* a stranger gets 32 bytes to answer, no more */
        if (!c->authed && c->in_len >= 32) break;
    }
    if (c->fd >= 0 && conn_process(sv, c)) conn_drop(c);
    else if (c->fd >= 0 && c->in_len == c->in_cap && c->in_cap >= most) conn_drop(c); /* more than any frame */
}

static void conn_flush(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t put = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                           MSG_DONTWAIT | MSG_NOSIGNAL);
        if (put < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_drop(c);
            return;
        }
        c->out_off += (size_t)put;
    }
    c->out_off = c->out_len = 0;
}

static void *server_main(void *arg)
{
    server *sv = arg;
    struct pollfd *pfs = NULL;
    size_t cap = 0;
    for (;;) {
        /* compact dropped connections; a rank's that ended without leaving (the process died)
         * counts as left, so that rank 0's close does not wait out the timeout for it */
        size_t n = 0;
        int died = 0;
        for (size_t i = 0; i < sv->num_conns; i++)
            if (sv->conns[i].fd >= 0)
                sv->conns[n++] = sv->conns[i];
            else if (sv->conns[i].authed && !sv->conns[i].left)
                sv->gone++, died = 1;
        sv->num_conns = n;
        if (died) {
            (void)all_left(sv);
            (void)job_failed(sv);
        }
        if (cap < n + 2) {
            cap = (n + 2) * 2;
            struct pollfd *q = realloc(pfs, cap * sizeof *q);
            if (!q) break;
            pfs = q;
        }
        pfs[0] = (struct pollfd){.fd = sv->wake[0], .events = POLLIN};
        pfs[1] = (struct pollfd){.fd = sv->listen_fd, .events = POLLIN};
        for (size_t i = 0; i < n; i++) {
            conn *c = &sv->conns[i];
            pfs[i + 2] = (struct pollfd){.fd = c->fd,
                                         .events = (short)(POLLIN | (c->out_len ? POLLOUT : 0))};
        }
        /* wake for the first challenge that runs out: strangers that connect and say nothing
         * (or too little) would otherwise hold a slot and an input buffer for the job's life */
        double now = ds_dist_now(), first = -1;
        for (size_t i = 0; i < n; i++)
            if (!sv->conns[i].authed && (first < 0 || sv->conns[i].auth_deadline < first))
                first = sv->conns[i].auth_deadline;
        int wait = first < 0 ? -1 : first <= now ? 0 : (int)((first - now) * 1000) + 1;
        if (poll(pfs, n + 2, wait) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pfs[0].revents) break;
        for (size_t i = 0; i < n; i++) {
            conn *c = &sv->conns[i];
            if (c->fd >= 0 && (pfs[i + 2].revents & (POLLIN | POLLHUP | POLLERR)))
                conn_readable(sv, c);
            if (c->fd >= 0 && c->out_len) conn_flush(c);
        }
        /* after reading: an answer that arrived with the deadline still counts */
        now = ds_dist_now();
        for (size_t i = 0; i < n; i++)
            if (sv->conns[i].fd >= 0 && !sv->conns[i].authed && now >= sv->conns[i].auth_deadline)
                conn_drop(&sv->conns[i]);
        /* flush replies that other connections' SETs queued */
        for (size_t i = 0; i < n; i++)
            if (sv->conns[i].fd >= 0 && sv->conns[i].out_len) conn_flush(&sv->conns[i]);
        if (pfs[1].revents & POLLIN) accept_one(sv);
        if (sv->num_conns > n && sv->conns[n].fd >= 0) conn_flush(&sv->conns[n]);
    }
    free(pfs);
    return NULL;
}

static void server_free(server *sv)
{
    if (!sv) return;
    for (size_t i = 0; i < sv->num_conns; i++) conn_drop(&sv->conns[i]);
    for (size_t i = 0; i < sv->num_entries; i++) {
        free(sv->entries[i].key);
        free(sv->entries[i].value);
    }
    free(sv->entries);
    free(sv->conns);
    if (sv->listen_fd >= 0) close(sv->listen_fd);
    if (sv->wake[0] >= 0) close(sv->wake[0]);
    if (sv->wake[1] >= 0) close(sv->wake[1]);
    if (sv->secret) {
        memset(sv->secret, 0, strlen(sv->secret));
        free(sv->secret);
    }
    free(sv);
}

static ds_status server_start(server **out, const ds_store_options *opt, ds_error *err)
{
    server *sv = calloc(1, sizeof *sv);
    if (!sv) return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    sv->listen_fd = sv->wake[0] = sv->wake[1] = -1;
    /* the answer comes at once from a rank; min(10 s, the store's timeout) leaves room for a
     * loaded machine */
    sv->auth_window = opt->timeout_s > 0 && opt->timeout_s < 10 ? opt->timeout_s : 10;
    sv->world_size = opt->world_size;
    sv->secret = strdup(opt->secret);
    if (!sv->secret || pipe2(sv->wake, O_CLOEXEC)) {
        server_free(sv);
        return ds_error_set(err, DS_ERR_NOMEM, "rank 0: cannot set up the rendezvous server");
    }
    /* All interfaces, as torch's TCPStore: MASTER_ADDR is how others reach us, and the job
     * secret, not the address, keeps strangers out. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt->port),
                             .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 512)) {
        int e = errno;
        if (fd >= 0) close(fd);
        server_free(sv);
        return ds_error_set(err, DS_ERR_IO,
                            "rank 0: cannot serve the rendezvous on port %d: %s%s", opt->port,
                            strerror(e), e == EADDRINUSE ? " (another job or program has it?)" : "");
    }
    sv->listen_fd = fd;
    if (pthread_create(&sv->thread, NULL, server_main, sv)) {
        server_free(sv);
        return ds_error_set(err, DS_ERR_INTERNAL, "rank 0: cannot start the rendezvous thread");
    }
    *out = sv;
    return DS_OK;
}

static void server_stop(server *sv)
{
    if (!sv) return;
    char b = 1;
    ssize_t w = write(sv->wake[1], &b, 1);
    (void)w;
    pthread_join(sv->thread, NULL);
    server_free(sv);
}

/* ---- the client ------------------------------------------------------------------------- */

struct ds_store {
    int fd;
    int rank, world_size;
    int port;
    char addr[256];
    char *secret;
    double timeout_s;
    server *server;
    uint64_t barriers;
    unsigned comms;
};

int ds_store_rank(const ds_store *s) { return s->rank; }
int ds_store_world_size(const ds_store *s) { return s->world_size; }
const char *ds_store_secret(const ds_store *s) { return s->secret; }
const char *ds_store_addr(const ds_store *s) { return s->addr; }
int ds_store_port(const ds_store *s) { return s->port; }
double ds_store_timeout(const ds_store *s) { return s->timeout_s; }
unsigned ds_store_next_comm_id(ds_store *s) { return s->comms++; }

/* Non-blocking connect to addr:port before the deadline; -1 with errno on failure. */
int ds_tcp_connect(const char *addr, int port, double deadline)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    int gai = getaddrinfo(addr, ports, &hints, &res);
    if (gai) {
        errno = EHOSTUNREACH;
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { freeaddrinfo(res); return -1; }
    int r = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (r < 0 && errno == EINPROGRESS) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int ms = wait_ms(deadline);
        if (poll(&pf, 1, ms) <= 0) {
            close(fd);
            errno = ETIMEDOUT;
            return -1;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            close(fd);
            errno = soerr;
            return -1;
        }
    } else if (r < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static ds_status store_connect(ds_store *s, ds_error *err)
{
    /* an address that can never work fails at once, saying why, instead of after the timeout
     * as "No route to host": an IPv6 one (the store is IPv4), or a name that does not resolve
     * (a temporary failure of the lookup is retried with the connection) */
    if (strchr(s->addr, ':'))
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: rendezvous address %s (MASTER_ADDR) is IPv6; the "
                            "rendezvous is IPv4: give an IPv4 address or a name that resolves to one", s->rank,
                            s->addr);
    {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
        int gai = getaddrinfo(s->addr, NULL, &hints, &res);
        if (res)
            freeaddrinfo(res);
        if (gai && gai != EAI_AGAIN)
            return ds_error_set(err, DS_ERR_INVALID, "rank %d: rendezvous address %s (MASTER_ADDR): %s (the "
                                "rendezvous is IPv4: an IPv4 address or a name that resolves to one)", s->rank,
                                s->addr, gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
    }
    double start = ds_dist_now(), deadline = start + s->timeout_s;
    int last = 0, early = 0; /* early: the server closed before its verdict (full, or our answer came
                                after its challenge window): try again, it is not a refusal */
    for (;;) {
        int fd = ds_tcp_connect(s->addr, s->port, deadline);
        if (fd >= 0) {
            uint8_t nonce[32], answer[32], verdict = 0;
            int r = ds_io_read(fd, nonce, 32, deadline);
            if (r == DS_IO_OK) {
                challenge_answer(nonce, s->secret, answer);
                r = ds_io_write(fd, answer, 32, deadline);
            }
            if (r == DS_IO_OK) r = ds_io_read(fd, &verdict, 1, deadline);
            if (r == DS_IO_OK && verdict == 1) {
                s->fd = fd;
                return DS_OK;
            }
            close(fd);
            if (r == DS_IO_OK) /* verdict 0 */
                return ds_error_set(err, DS_ERR_INVALID,
                                    "rank %d: the rendezvous at %s:%d refused this process: its "
                                    "job secret (DS_JOB_SECRET) is not this job's",
                                    s->rank, s->addr, s->port);
            early |= r == DS_IO_EOF;
            last = r == DS_IO_TIMEOUT ? ETIMEDOUT : r == DS_IO_EOF ? ECONNRESET : errno;
        } else {
            last = errno;
        }
        if (ds_dist_now() >= deadline) break;
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
        if (ds_dist_now() >= deadline) break;
    }
    return ds_error_set(err, DS_ERR_IO, "rank %d: no rendezvous at %s:%d after %g s (%s%s)", s->rank,
                        s->addr, s->port, s->timeout_s, strerror(last),
                        early ? "; it closed connections before answering the secret's proof: "
                                "too many connections, or this process answered too late" : "");
}

/* One request and its reply; what names the request in errors. */
static ds_status request(ds_store *s, int op, const char *key, const void *value, uint32_t vlen,
                         const char *what, void **out, uint32_t *out_len, ds_error *err)
{
    size_t klen = strlen(key);
    if (klen == 0 || klen > KEY_MAX || vlen > VALUE_MAX)
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: rendezvous key \"%.64s\" or its value "
                            "is empty or too long", s->rank, key);
    ds_status st;
    if (s->fd < 0 && (st = store_connect(s, err)) != DS_OK) return st;
    double deadline = ds_dist_now() + s->timeout_s;
    uint8_t hdr[HDR];
    hdr[0] = (uint8_t)op;
    put_u32(hdr + 1, (uint32_t)klen);
    put_u32(hdr + 5, vlen);
    int r = ds_io_write(s->fd, hdr, HDR, deadline);
    if (r == DS_IO_OK) r = ds_io_write(s->fd, key, klen, deadline);
    if (r == DS_IO_OK && vlen) r = ds_io_write(s->fd, value, vlen, deadline);
    uint8_t rh[5];
    if (r == DS_IO_OK) r = ds_io_read(s->fd, rh, 5, deadline);
    uint32_t len = r == DS_IO_OK ? get_u32(rh + 1) : 0;
    uint8_t *buf = NULL;
    if (r == DS_IO_OK) {
        if (len > VALUE_MAX || !(buf = malloc((size_t)len + 1))) {
            r = DS_IO_ERROR;
            errno = ENOMEM;
        } else {
            r = ds_io_read(s->fd, buf, len, deadline);
        }
    }
    if (r != DS_IO_OK) {
        int e = errno;
        free(buf);
        /* the connection is out of step now; the next request opens a new one */
        close(s->fd);
        s->fd = -1;
        if (r == DS_IO_TIMEOUT)
            return ds_error_set(err, DS_ERR_IO, "rank %d: %s at the rendezvous at %s:%d: nothing "
                                "after %g s", s->rank, what, s->addr, s->port, s->timeout_s);
        return ds_error_set(err, DS_ERR_IO, "rank %d: %s at the rendezvous at %s:%d: %s", s->rank,
                            what, s->addr, s->port,
                            r == DS_IO_EOF ? "connection closed (rank 0 gone?)" : strerror(e));
    }
    buf[len] = 0;
    if (rh[0] != 0) { /* the server's refusal, with its reason */
        ds_status st2 = ds_error_set(err, DS_ERR_IO, "rank %d: %s at the rendezvous at %s:%d: %s", s->rank, what,
                                     s->addr, s->port, (char *)buf);
        free(buf);
        return st2;
    }
    if (out) {
        *out = buf;
        *out_len = len;
    } else {
        free(buf);
    }
    return DS_OK;
}

ds_status ds_store_options_from_env(ds_store_options *opt, ds_error *err)
{
    memset(opt, 0, sizeof *opt);
    const char *names[4] = {"RANK", "WORLD_SIZE", "MASTER_PORT", NULL};
    int *dst[3] = {&opt->rank, &opt->world_size, &opt->port};
    for (int i = 0; names[i]; i++) {
        const char *v = getenv(names[i]);
        char *end;
        long x = v ? strtol(v, &end, 10) : -1;
        if (!v || !*v || *end || x < 0 || x > 65535 || (i == 1 && x < 1))
            return ds_error_set(err, DS_ERR_INVALID, "%s %s%s%s (ds-launch sets it)", names[i],
                                v ? "is \"" : "is not set", v ? v : "", v ? "\", not a valid value" : "");
        *dst[i] = (int)x;
    }
    opt->addr = getenv("MASTER_ADDR");
    if (!opt->addr || !*opt->addr)
        return ds_error_set(err, DS_ERR_INVALID, "MASTER_ADDR is not set (ds-launch sets it)");
    opt->secret = getenv("DS_JOB_SECRET");
    if (!opt->secret || !*opt->secret)
        return ds_error_set(err, DS_ERR_INVALID, "DS_JOB_SECRET is not set (ds-launch sets it)");
    return DS_OK;
}

ds_status ds_store_open(ds_store **out, const ds_store_options *opt, ds_error *err)
{
    *out = NULL;
    if (!opt->addr || !*opt->addr || strlen(opt->addr) >= 256)
        return ds_error_set(err, DS_ERR_INVALID, "rendezvous: MASTER_ADDR: expected a host name or IPv4 address "
                            "(under 256 characters), found \"%.64s\"", opt->addr ? opt->addr : "");
    if (opt->port <= 0 || opt->port > 65535)
        return ds_error_set(err, DS_ERR_INVALID, "rendezvous: MASTER_PORT: expected a port in 1..65535, found %d",
                            opt->port);
    if (opt->world_size < 1)
        return ds_error_set(err, DS_ERR_INVALID, "rendezvous: WORLD_SIZE: expected 1 or more, found %d",
                            opt->world_size);
    if (opt->rank < 0 || opt->rank >= opt->world_size)
        return ds_error_set(err, DS_ERR_INVALID, "rendezvous: RANK %d is not in 0..%d (WORLD_SIZE %d)", opt->rank,
                            opt->world_size - 1, opt->world_size);
    if (!opt->secret || !*opt->secret)
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: no job secret (DS_JOB_SECRET) for the "
                            "rendezvous", opt->rank);
    ds_store *s = calloc(1, sizeof *s);
    if (!s || !(s->secret = strdup(opt->secret))) {
        free(s);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    s->fd = -1;
    s->rank = opt->rank;
    s->world_size = opt->world_size;
    s->port = opt->port;
    snprintf(s->addr, sizeof s->addr, "%s", opt->addr);
    s->timeout_s = opt->timeout_s > 0 ? opt->timeout_s : 300;
    ds_status st = DS_OK;
    if (s->rank == 0) st = server_start(&s->server, opt, err);
    if (st == DS_OK) st = store_connect(s, err);
    if (st != DS_OK) {
        ds_store_close(s);
        return st;
    }
    *out = s;
    return DS_OK;
}

int ds_store_aborted(ds_store *s, ds_error *why)
{
    int64_t n = 0;
    if (s->fd < 0) /* the connection failed already: no reconnecting to a rank 0 that may be gone */
        return ds_error_set(why, DS_ERR_IO, "rank %d: the connection to the rendezvous at %s:%d failed", s->rank,
                            s->addr, s->port), -1;
    if (ds_store_add(s, "ds/abort", 0, &n, why) != DS_OK)
        return -1;
    if (n <= 0)
        return 0;
    void *v = NULL; /* the failed rank's words, or the server's refusal for a rank gone: at once */
    size_t len = 0;
    if (ds_store_get(s, "ds/failed", &v, &len, why) == DS_OK)
        ds_error_set(why, DS_ERR_IO, "%s", (char *)v);
    free(v);
    return 1;
}

void ds_store_fail(ds_store *s, const char *why)
{
    if (!s || s->world_size < 2 || s->fd < 0) /* as ds_store_close: no reconnecting to a rank 0 gone */
        return;
    if (s->timeout_s > 5) /* best effort: a rank 0 cut off by the network is not waited for long */
        s->timeout_s = 5;
    char msg[1024], own[32];
    int k = snprintf(own, sizeof own, "rank %d: ", s->rank);
    if (why && k > 0 && strncmp(why, own, (size_t)k) == 0) /* its messages name it already */
        why += k;
    int n = snprintf(msg, sizeof msg, "rank %d failed: %s", s->rank, why ? why : "(no reason given)");
    (void)ds_store_set(s, "ds/failed", msg, n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1, NULL);
}

void ds_store_close(ds_store *s)
{
    if (!s) return;
    /* Rank 0 serves until every other rank has left (or the timeout passes), so that no rank
     * loses the store between the last barrier and its own close. */
    if (s->server && s->world_size > 1 && s->fd >= 0) {
        void *v = NULL;
        (void)ds_store_get(s, "ds/left/all", &v, NULL, NULL);
        free(v);
    } else if (!s->server && s->fd >= 0) {
        int64_t left = 0;
        if (s->timeout_s > 5) /* best effort, as ds_store_fail: a rank 0 out of reach is not waited for */
            s->timeout_s = 5;
        (void)ds_store_add(s, "ds/left", 1, &left, NULL); /* the server sets ds/left/all (all_left) */
    }
    if (s->fd >= 0) close(s->fd);
    server_stop(s->server);
    memset(s->secret, 0, strlen(s->secret));
    free(s->secret);
    free(s);
}

ds_status ds_store_set(ds_store *s, const char *key, const void *value, size_t len,
                       ds_error *err)
{
    if (len > VALUE_MAX)
        return ds_error_set(err, DS_ERR_INVALID, "rank %d: rendezvous value for \"%.64s\" is "
                            "over 16 MiB", s->rank, key);
    char what[128];
    snprintf(what, sizeof what, "set \"%.64s\"", key);
    return request(s, OP_SET, key, value, (uint32_t)len, what, NULL, NULL, err);
}

ds_status ds_store_get(ds_store *s, const char *key, void **value, size_t *len, ds_error *err)
{
    char what[128];
    snprintf(what, sizeof what, "waiting for \"%.64s\"", key);
    uint32_t n = 0;
    ds_status st = request(s, OP_GET, key, NULL, 0, what, value, &n, err);
    if (st == DS_OK && len) *len = n;
    return st;
}

ds_status ds_store_add(ds_store *s, const char *key, int64_t delta, int64_t *result,
                       ds_error *err)
{
    char what[128];
    snprintf(what, sizeof what, "add to \"%.64s\"", key);
    uint8_t buf[8];
    put_i64(buf, delta);
    void *reply_value = NULL;
    uint32_t n = 0;
    ds_status st = request(s, OP_ADD, key, buf, 8, what, &reply_value, &n, err);
    if (st != DS_OK) return st;
    if (n != 8) {
        free(reply_value);
        return ds_error_set(err, DS_ERR_INTERNAL, "rank %d: bad reply to %s", s->rank, what);
    }
    if (result) *result = get_i64(reply_value);
    free(reply_value);
    return DS_OK;
}

ds_status ds_store_barrier(ds_store *s, ds_error *err)
{
    char key[64], done[80];
    unsigned long long n = (unsigned long long)++s->barriers;
    snprintf(key, sizeof key, "barrier/%llu", n);
    snprintf(done, sizeof done, "barrier/%llu/done", n);
    int64_t arrived = 0;
    ds_error e = {0};
    ds_status st = ds_store_add(s, key, 1, &arrived, &e);
    if (st == DS_OK && arrived == s->world_size) st = ds_store_set(s, done, "", 0, &e);
    if (st != DS_OK) return ds_error_set(err, st, "%s", e.msg);
    void *v = NULL;
    st = ds_store_get(s, done, &v, NULL, &e);
    free(v);
    if (st == DS_OK) return DS_OK;
    /* on a timeout the store still answers: say how many ranks made it */
    ds_error e2 = {0};
    int64_t count = -1;
    if (strstr(e.msg, "nothing after") && ds_store_add(s, key, 0, &count, &e2) == DS_OK &&
        count < s->world_size)
        return ds_error_set(err, st, "rank %d: barrier %llu: %lld of %d ranks arrived at the "
                            "rendezvous at %s:%d after %g s", s->rank, n, (long long)count,
                            s->world_size, s->addr, s->port, s->timeout_s);
    return ds_error_set(err, st, "%s", e.msg);
}

ds_status ds_store_local_ip(ds_store *s, char *ip, size_t cap, int *any, ds_error *err)
{
    *any = 0;
    ds_status st;
    if (s->fd < 0 && (st = store_connect(s, err)) != DS_OK) return st;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (getsockname(s->fd, (struct sockaddr *)&sa, &sl) || sa.sin_family != AF_INET ||
        !inet_ntop(AF_INET, &sa.sin_addr, ip, (socklen_t)cap))
        return ds_error_set(err, DS_ERR_IO, "rank %d: cannot find this host's address: %s",
                            s->rank, strerror(errno));
    struct in_addr lit;
    const int loop_here = (ntohl(sa.sin_addr.s_addr) >> 24) == 127;
    const int loop_meant = strcmp(s->addr, "localhost") == 0 ||
                           (inet_pton(AF_INET, s->addr, &lit) == 1 && (ntohl(lit.s_addr) >> 24) == 127);
    if (loop_here && !loop_meant && strlen(s->addr) < cap) {
        snprintf(ip, cap, "%s", s->addr);
        *any = 1;
    }
    return DS_OK;
}
