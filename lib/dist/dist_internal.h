/* Internal to lib/dist: SHA-256, socket I/O with deadlines, and what the CPU communicator
 * needs from the store (the secret never leaves the process). Not installed. */
#ifndef DS_DIST_INTERNAL_H
#define DS_DIST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ds/dist.h"

void ds_sha256(const void *const *parts, const size_t *lens, int nparts, uint8_t out[32]);
/* Incremental SHA-256 (checkpoint files are hashed while they are written or read). */
typedef struct ds_sha256_ctx {
    uint32_t h[8];
    uint8_t buf[64];
    size_t fill;
    uint64_t total;
    int ni;      /* the CPU has the SHA extensions (x86 SHA-NI): 10x the portable code */
} ds_sha256_ctx;
void ds_sha256_init(ds_sha256_ctx *c);
void ds_sha256_init_portable(ds_sha256_ctx *c); /* without SHA-NI (tests compare the two) */
void ds_sha256_update(ds_sha256_ctx *c, const void *data, size_t n);
void ds_sha256_final(ds_sha256_ctx *c, uint8_t out[32]);
/* Constant-time comparison of 32-byte digests: 1 when equal. */
int ds_digest_equal(const uint8_t a[32], const uint8_t b[32]);
/* Random bytes from getrandom(); DS_OK or an error. */
ds_status ds_random_bytes(void *buf, size_t n, ds_error *err);

double ds_dist_now(void); /* CLOCK_MONOTONIC seconds */

enum { DS_IO_OK = 0, DS_IO_ERROR = -1, DS_IO_TIMEOUT = -2, DS_IO_EOF = -3 };
/* Read/write exactly n bytes before the monotonic deadline (errno set for DS_IO_ERROR). */
int ds_io_read(int fd, void *buf, size_t n, double deadline);
int ds_io_write(int fd, const void *buf, size_t n, double deadline);
int ds_io_set_nonblocking(int fd);
/* A non-blocking TCP connection (TCP_NODELAY) to addr:port, made before the deadline; -1
 * with errno set on failure. */
int ds_tcp_connect(const char *addr, int port, double deadline);

/* What the CPU communicator needs from the store. */
const char *ds_store_secret(const ds_store *s);
const char *ds_store_addr(const ds_store *s);
int ds_store_port(const ds_store *s);
double ds_store_timeout(const ds_store *s);
/* How the other ranks reach this one: the IPv4 address this process reaches rank 0 from
 * ("127.0.0.1" on one host), to listen on (*any 0). Where that is a loopback address but
 * MASTER_ADDR is a name or address that is not (Debian maps the host's own name to 127.0.1.1:
 * rank 0's host reaches itself over loopback, the other hosts' ranks reach it by that name),
 * MASTER_ADDR itself, which each rank resolves as it resolved it to reach rank 0, so that it
 * means this host everywhere; then *any is 1: listen on every address. */
ds_status ds_store_local_ip(ds_store *s, char *ip, size_t cap, int *any, ds_error *err);
/* A fresh id for a communicator's store keys (same sequence on every rank). */
unsigned ds_store_next_comm_id(ds_store *s);
/* Whether a rank of the job has failed (ds_store_fail) or its store connection ended before it
 * left, asked without waiting: 1 with the reason in why (an error), 0 not, -1 the store itself
 * failed (why set). For waits outside the store (a peer's connect) to end early. */
int ds_store_aborted(ds_store *s, ds_error *why);

#endif
