/* Distributed bootstrap and collectives: the rendezvous store that rank 0 serves at
 * MASTER_ADDR:MASTER_PORT (authenticated with the per-job secret DS_JOB_SECRET), and the
 * communicator interface (a table of functions, like ds_backend_ops) with its CPU
 * implementation over TCP rings. Nothing here prints; every wait has a timeout whose error
 * names the rank, the address and how long it waited. */
#ifndef DS_DIST_H
#define DS_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- rendezvous store ----------------------------------------------------------------- */

typedef struct ds_store ds_store;

typedef struct ds_store_options {
    const char *addr;   /* MASTER_ADDR: host name or IPv4 address of rank 0 */
    int port;           /* MASTER_PORT */
    int rank;           /* this process's global rank; rank 0 serves the store */
    int world_size;
    const char *secret; /* DS_JOB_SECRET: non-empty; never sent over the network */
    double timeout_s;   /* every wait (connect, get, barrier); <= 0: 300 s */
} ds_store_options;

/* Fill opt from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and DS_JOB_SECRET (the strings
 * point into the environment). A missing or malformed variable is an error naming it. */
ds_status ds_store_options_from_env(ds_store_options *opt, ds_error *err);

/* Connect to the job's store; rank 0 first starts serving it (a thread that lives until
 * ds_store_close). Other ranks retry until rank 0 serves or opt->timeout_s passes. Each
 * connection answers the server's random challenge with SHA-256(nonce || secret); a process
 * with another secret is refused (DS_ERR_INVALID) and the server keeps serving the job; a
 * connection that has not answered within min(10 s, opt->timeout_s) is closed. */
ds_status ds_store_open(ds_store **out, const ds_store_options *opt, ds_error *err);

/* Leave the store. Rank 0 keeps serving until every other rank has closed its store (or
 * the timeout passes: a rank that died), then stops the server. */
void ds_store_close(ds_store *s);
/* Say at the store that this rank failed (why: its error message) before closing it: the
 * other ranks' waits at the store then fail at once with "rank R failed: why" instead of
 * waiting out the timeout. Best effort (an error here is ignored). */
void ds_store_fail(ds_store *s, const char *why);

int ds_store_rank(const ds_store *s);
int ds_store_world_size(const ds_store *s);

/* Set key to len bytes (keys up to 1024 bytes, values up to 16 MiB). */
ds_status ds_store_set(ds_store *s, const char *key, const void *value, size_t len,
                       ds_error *err);
/* Wait (up to the timeout) until key is set, then return a malloc'ed copy (NUL-terminated
 * beyond *len, so text values are C strings); the caller frees *value. */
ds_status ds_store_get(ds_store *s, const char *key, void **value, size_t *len, ds_error *err);
/* Atomically add delta to the 64-bit counter key (0 if unset) and return the new value.
 * A counter is an 8-byte little-endian value for ds_store_get. */
ds_status ds_store_add(ds_store *s, const char *key, int64_t delta, int64_t *result,
                       ds_error *err);
/* Wait until every rank of the world has called its n-th barrier. */
ds_status ds_store_barrier(ds_store *s, ds_error *err);

/* ---- communicators ----------------------------------------------------------------------- */

typedef enum ds_reduce_op { DS_REDUCE_SUM = 0, DS_REDUCE_MEAN = 1, DS_REDUCE_MAX = 2 } ds_reduce_op;

typedef struct ds_comm ds_comm;

/* One entry per collective; every rank of the communicator calls the same collectives in the
 * same order with the same counts. Results are the same bits on every rank. */
typedef struct ds_comm_ops {
    const char *name; /* "cpu", later "nccl" */
    void (*destroy)(ds_comm *c);
    /* buf[count] on every rank becomes the reduction over ranks. */
    ds_status (*all_reduce)(ds_comm *c, float *buf, size_t count, ds_reduce_op op,
                            ds_error *err);
    /* send[size * recv_count]; recv[recv_count] = reduction of block `rank` (NCCL's shape). */
    ds_status (*reduce_scatter)(ds_comm *c, const float *send, float *recv, size_t recv_count,
                                ds_reduce_op op, ds_error *err);
    /* recv[size * send_count]: block r is rank r's send[send_count]. */
    ds_status (*all_gather)(ds_comm *c, const float *send, float *recv, size_t send_count,
                            ds_error *err);
    /* bytes of buf on root are copied to buf on every rank. */
    ds_status (*broadcast)(ds_comm *c, void *buf, size_t bytes, int root, ds_error *err);
    ds_status (*barrier)(ds_comm *c, ds_error *err);
    /* In place over uneven blocks of buf (ZeRO's partitions of a bucket): block r is
     * [off[r], off[r] + len[r]); after reduce_scatter_v rank r's block holds the reduction of
     * every rank's block r (the other blocks are scratch); after all_gather_v every block holds
     * its owner's values (elements of esz bytes: 4, fp32, or 2, 16-bit working weights).
     * Optional (NULL: not available). */
    ds_status (*reduce_scatter_v)(ds_comm *c, float *buf, const size_t *off, const size_t *len,
                                  ds_reduce_op op, ds_error *err);
    ds_status (*all_gather_v)(ds_comm *c, void *buf, const size_t *off, const size_t *len,
                              size_t esz, ds_error *err);
    /* One line on this rank's links (ds_comm_describe). Optional (NULL: the name). */
    const char *(*describe)(const ds_comm *c);
} ds_comm_ops;

/* Implementations embed this as their first member. */
struct ds_comm {
    const ds_comm_ops *ops;
    int rank;
    int size;
};

/* The CPU communicator over the whole world of the store: every rank listens on the address
 * it reaches rank 0 from, publishes it in the store, and connects to the next rank (a ring;
 * peers prove the job secret too). Between two ranks of one host the link's bytes then go
 * through a shared-memory ring buffer (a memfd the two map) unless DS_COMM_SHM=0 is set on
 * either; the TCP connection stays, to notice a peer that exits. Collectives are ring algorithms (all-reduce = reduce-scatter
 * + all-gather, bandwidth-optimal), in segments of 1 MiB, any count. The summation order is
 * fixed, so results are deterministic and identical on every rank. A collective that waits
 * longer than timeout_s for a peer fails naming it (<= 0: 1800 s). Collective over ranks. */
ds_status ds_comm_cpu_create(ds_comm **out, ds_store *store, double timeout_s, ds_error *err);

/* A CPU communicator over a sub-group: ranks[i] (global ranks, distinct) is the group's rank
 * i. Every rank of the world calls it with the same list, in the same order relative to other
 * communicator creations (as torch.distributed.new_group); ranks outside the group get *out =
 * NULL and DS_OK. Errors and messages name global ranks. */
ds_status ds_comm_cpu_create_group(ds_comm **out, ds_store *store, const int *ranks,
                                   int num_ranks, double timeout_s, ds_error *err);

/* The data-parallel job a process started by ds-launch belongs to: with WORLD_SIZE > 1 in the
 * environment, the rendezvous store (MASTER_ADDR, MASTER_PORT, RANK, DS_JOB_SECRET, ...) and the
 * CPU communicator over the world (a collective call); otherwise *store and *comm are NULL and
 * the process is rank 0 of 1. Close with ds_comm_destroy, then ds_store_close. */
ds_status ds_dist_join_from_env(ds_store **store, ds_comm **comm, int *rank, int *world, ds_error *err);

/* Checked wrappers over c->ops. */
ds_status ds_comm_all_reduce(ds_comm *c, float *buf, size_t count, ds_reduce_op op,
                             ds_error *err);
ds_status ds_comm_reduce_scatter(ds_comm *c, const float *send, float *recv, size_t recv_count,
                                 ds_reduce_op op, ds_error *err);
ds_status ds_comm_all_gather(ds_comm *c, const float *send, float *recv, size_t send_count,
                             ds_error *err);
ds_status ds_comm_reduce_scatter_v(ds_comm *c, float *buf, const size_t *off, const size_t *len,
                                   ds_reduce_op op, ds_error *err);
ds_status ds_comm_all_gather_v(ds_comm *c, void *buf, const size_t *off, const size_t *len,
                               size_t esz, ds_error *err);
ds_status ds_comm_broadcast(ds_comm *c, void *buf, size_t bytes, int root, ds_error *err);
ds_status ds_comm_barrier(ds_comm *c, ds_error *err);
void ds_comm_destroy(ds_comm *c);
/* One line on what carries this rank's collectives, for logs: the CPU communicator's says,
 * for its links to the next and from the previous rank, "shared memory" or "tcp"; "none"
 * for NULL. Owned by the communicator. */
const char *ds_comm_describe(const ds_comm *c);

#ifdef __cplusplus
}
#endif
#endif
