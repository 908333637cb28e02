/* The NCCL communicator: ds_comm_ops (ds/dist.h) over device memory, for data parallelism with
 * one rank per GPU. NCCL is loaded with dlopen when the first communicator is made, so a
 * one-GPU run never needs libnccl: DS_NCCL_LIBRARY names the library, else libnccl.so.2 is
 * looked for on the library path and then in the CUDA toolkit this module was built against.
 *
 * Streams: the collectives run on a communication stream of their own. Each call first makes
 * that stream wait for everything already enqueued on the backend's compute stream (an event),
 * so the buffer holds what the ops before the call wrote; it returns when the collective has
 * finished, so whatever the caller enqueues next sees the result. Called from the engine's
 * overlap_comm thread, a collective runs while the main thread keeps enqueueing backward
 * kernels on the compute stream: that is the overlap.
 *
 * Waiting: the call polls the stream and NCCL's asynchronous error state; a collective not
 * finished timeout_s after it was queued (a dead rank), or one NCCL refuses to queue, aborts the
 * communicator with an error naming the collective, instead of hanging. Joining
 * (ncclCommInitRank, which has no timeout of its own) runs in a thread that the caller waits
 * for at most 600 s. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "ds/dist.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
#define DS_HAVE_NCCL_H 1
#endif

#ifndef DS_CUDA_LIBDIR
#define DS_CUDA_LIBDIR "/usr/local/cuda/lib64"
#endif

#ifndef DS_HAVE_NCCL_H

extern "C" ds_status ds_cuda_comm_id(ds_backend *, void *, size_t, size_t *, ds_error *err)
{
    return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "NCCL: this CUDA backend was built without nccl.h (see ds-cuda(7))");
}

extern "C" ds_status ds_cuda_comm_create(ds_backend *, const void *, size_t, int, int, double, ds_comm **,
                                         ds_error *err)
{
    return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "NCCL: this CUDA backend was built without nccl.h (see ds-cuda(7))");
}

extern "C" void ds_cuda_nccl_unload(ds_backend *) {}

#else

/* The NCCL entry points this module uses, resolved with dlsym; typed from nccl.h's own
 * prototypes, so a signature that does not match the header does not compile. */
struct ds_nccl_lib {
    void *handle;
    char path[512];
    int version;
    decltype(&ncclGetVersion) GetVersion;
    decltype(&ncclGetUniqueId) GetUniqueId;
    decltype(&ncclCommInitRank) CommInitRank;
    decltype(&ncclCommDestroy) CommDestroy;
    decltype(&ncclCommAbort) CommAbort;
    decltype(&ncclCommGetAsyncError) CommGetAsyncError;
    decltype(&ncclGetErrorString) GetErrorString;
    decltype(&ncclAllReduce) AllReduce;
    decltype(&ncclReduceScatter) ReduceScatter;
    decltype(&ncclAllGather) AllGather;
    decltype(&ncclBroadcast) Broadcast;
    decltype(&ncclReduce) Reduce;
    decltype(&ncclGroupStart) GroupStart;
    decltype(&ncclGroupEnd) GroupEnd;
};

extern "C" void ds_cuda_nccl_unload(ds_backend *b)
{
    ds_cuda *c = DS_CUDA(b);
    if (c->nccl) {
        /* NCCL keeps proxy threads of destroyed communicators for a while: keep it mapped */
        free(c->nccl);
        c->nccl = NULL;
    }
}

static ds_status nccl_load(ds_backend *b, ds_error *err)
{
    ds_cuda *c = DS_CUDA(b);
    if (c->nccl)
        return DS_OK;
    const char *env = getenv("DS_NCCL_LIBRARY");
    const char *tried[3];
    int n = 0;
    if (env && *env) {
        tried[n++] = env;
    } else {
        tried[n++] = "libnccl.so.2";
        tried[n++] = DS_CUDA_LIBDIR "/libnccl.so.2";
    }
    void *h = NULL;
    const char *why = "";
    int i;
    for (i = 0; i < n && !h; i++)
        if (!(h = dlopen(tried[i], RTLD_NOW | RTLD_LOCAL)))
            why = dlerror();
    if (!h)
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED,
                    "NCCL: cannot load %s: %s (data parallelism on GPUs needs NCCL: install it, or "
                    "name the library with DS_NCCL_LIBRARY)",
                    env && *env ? env : "libnccl.so.2", why);
    ds_nccl_lib *L = (ds_nccl_lib *)calloc(1, sizeof *L);
    if (!L) {
        dlclose(h);
        return ds_cuda_err_set(err, DS_ERR_NOMEM, "out of memory");
    }
    L->handle = h;
    snprintf(L->path, sizeof L->path, "%s", tried[i - 1]);
#define SYM(field, name)                                                                         \
    if (!(*(void **)&L->field = dlsym(h, name))) {                                               \
        free(L);                                                                                 \
        dlclose(h);                                                                              \
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "NCCL: %s has no %s", tried[i - 1], name);          \
    }
    SYM(GetVersion, "ncclGetVersion")
    SYM(GetUniqueId, "ncclGetUniqueId")
    SYM(CommInitRank, "ncclCommInitRank")
    SYM(CommDestroy, "ncclCommDestroy")
    SYM(CommAbort, "ncclCommAbort")
    SYM(CommGetAsyncError, "ncclCommGetAsyncError")
    SYM(GetErrorString, "ncclGetErrorString")
    SYM(AllReduce, "ncclAllReduce")
    SYM(ReduceScatter, "ncclReduceScatter")
    SYM(AllGather, "ncclAllGather")
    SYM(Broadcast, "ncclBroadcast")
    SYM(Reduce, "ncclReduce")
    SYM(GroupStart, "ncclGroupStart")
    SYM(GroupEnd, "ncclGroupEnd")
#undef SYM
    if (L->GetVersion(&L->version) != ncclSuccess)
        L->version = 0;
    c->nccl = L;
    return DS_OK;
}

struct nccl_comm {
    ds_comm base;
    ds_backend *b;
    ds_nccl_lib *L;
    ncclComm_t nc;
    cudaStream_t cs;   /* the communication stream */
    cudaEvent_t ready; /* recorded on the compute stream before each collective */
    float *one;        /* device scratch for the barrier */
    double timeout_s;
    int device;
    int aborted;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define NC(x) ((nccl_comm *)(x))

/* Before a collective: this thread on the right device, the communication stream after the
 * compute stream's work so far. */
static ds_status begin(nccl_comm *c, const char *what, ds_error *err)
{
    if (c->aborted)
        return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: %s: the communicator was aborted by an earlier failure", what);
    cudaError_t e = cudaSetDevice(c->device);
    if (e == cudaSuccess)
        e = cudaEventRecord(c->ready, STREAM(c->b));
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(c->cs, c->ready, 0);
    if (e != cudaSuccess)
        return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: %s: CUDA: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return DS_OK;
}

/* After enqueueing: wait for the collective, watching NCCL's error state and the clock. */
static ds_status finish(nccl_comm *c, ncclResult_t r, const char *what, size_t count, ds_error *err)
{
    ds_nccl_lib *L = c->L;
    if (r != ncclSuccess && r != ncclInProgress) {
        /* part of a group may be queued on some ranks: the communicator cannot be trusted */
        L->CommAbort(c->nc);
        c->aborted = 1;
        return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: %s of %zu elements on rank %d of %d: %s; communicator aborted",
                    what, count, c->base.rank, c->base.size, L->GetErrorString(r));
    }
    double t0 = now_s();
    for (long spins = 0;; spins++) {
        cudaError_t e = cudaStreamQuery(c->cs);
        if (e == cudaSuccess)
            return DS_OK;
        if (e != cudaErrorNotReady) { /* the collective never completes: abort, so that peers are released
                                       * and destroy does not wait for it */
            L->CommAbort(c->nc);
            c->aborted = 1;
            return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: %s of %zu elements on rank %d of %d: CUDA: %s (%s); "
                        "communicator aborted", what, count, c->base.rank, c->base.size, cudaGetErrorString(e),
                        cudaGetErrorName(e));
        }
        ncclResult_t ar = ncclSuccess;
        if (L->CommGetAsyncError(c->nc, &ar) == ncclSuccess && ar != ncclSuccess && ar != ncclInProgress) {
            L->CommAbort(c->nc);
            c->aborted = 1;
            return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: %s of %zu elements on rank %d of %d failed: %s", what, count,
                        c->base.rank, c->base.size, L->GetErrorString(ar));
        }
        if (now_s() - t0 > c->timeout_s) {
            L->CommAbort(c->nc);
            c->aborted = 1;
            return ds_cuda_err_set(err, DS_ERR_IO,
                        "NCCL: %s of %zu elements on rank %d of %d: no progress for %.0f s (a peer rank "
                        "died or stopped calling collectives); communicator aborted",
                        what, count, c->base.rank, c->base.size, c->timeout_s);
        }
        if (spins > 1000) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
}

static ncclRedOp_t red_op(ds_reduce_op op) { return op == DS_REDUCE_MAX ? ncclMax : op == DS_REDUCE_MEAN ? ncclAvg : ncclSum; }

static ds_status n_all_reduce(ds_comm *cm, float *buf, size_t count, ds_reduce_op op, ds_error *err)
{
    nccl_comm *c = NC(cm);
    if (op == DS_REDUCE_MEAN && c->L->version < 21000) /* ncclAvg came with NCCL 2.10 */
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "NCCL %d (%s) has no average; NCCL 2.10 or newer is needed",
                    c->L->version, c->L->path);
    ds_status st = begin(c, "all_reduce", err);
    if (st != DS_OK)
        return st;
    return finish(c, c->L->AllReduce(buf, buf, count, ncclFloat32, red_op(op), c->nc, c->cs), "all_reduce", count, err);
}

static ds_status n_reduce_scatter(ds_comm *cm, const float *send, float *recv, size_t recv_count, ds_reduce_op op,
                                  ds_error *err)
{
    nccl_comm *c = NC(cm);
    if (op == DS_REDUCE_MEAN && c->L->version < 21000)
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "NCCL %d (%s) has no average; NCCL 2.10 or newer is needed",
                    c->L->version, c->L->path);
    ds_status st = begin(c, "reduce_scatter", err);
    if (st != DS_OK)
        return st;
    return finish(c, c->L->ReduceScatter(send, recv, recv_count, ncclFloat32, red_op(op), c->nc, c->cs),
                  "reduce_scatter", recv_count, err);
}

static ds_status n_all_gather(ds_comm *cm, const float *send, float *recv, size_t send_count, ds_error *err)
{
    nccl_comm *c = NC(cm);
    ds_status st = begin(c, "all_gather", err);
    if (st != DS_OK)
        return st;
    return finish(c, c->L->AllGather(send, recv, send_count, ncclFloat32, c->nc, c->cs), "all_gather", send_count,
                  err);
}

static ds_status n_broadcast(ds_comm *cm, void *buf, size_t bytes, int root, ds_error *err)
{
    nccl_comm *c = NC(cm);
    ds_status st = begin(c, "broadcast", err);
    if (st != DS_OK)
        return st;
    return finish(c, c->L->Broadcast(buf, buf, bytes, ncclUint8, root, c->nc, c->cs), "broadcast", bytes, err);
}

static ds_status n_barrier(ds_comm *cm, ds_error *err)
{
    nccl_comm *c = NC(cm);
    ds_status st = begin(c, "barrier", err);
    if (st != DS_OK)
        return st;
    return finish(c, c->L->AllReduce(c->one, c->one, 1, ncclFloat32, ncclSum, c->nc, c->cs), "barrier", 1, err);
}

/* Uneven blocks in place: NCCL has no v-collectives, so one grouped call per block: a reduce
 * to its owner (reduce_scatter_v) or a broadcast from it (all_gather_v), as torch.distributed
 * does for uneven all_gather. */
static ds_status n_reduce_scatter_v(ds_comm *cm, float *buf, const size_t *off, const size_t *len, ds_reduce_op op,
                                    ds_error *err)
{
    nccl_comm *c = NC(cm);
    ds_status st = begin(c, "reduce_scatter_v", err);
    if (st != DS_OK)
        return st;
    size_t total = 0;
    ncclResult_t r = c->L->GroupStart();
    for (int k = 0; k < c->base.size && r == ncclSuccess; k++)
        if (len[k]) {
            total += len[k];
            r = c->L->Reduce(buf + off[k], buf + off[k], len[k], ncclFloat32, red_op(op), k, c->nc, c->cs);
        }
    ncclResult_t r2 = c->L->GroupEnd();
    return finish(c, r != ncclSuccess ? r : r2, "reduce_scatter_v", total, err);
}

static ds_status n_all_gather_v(ds_comm *cm, void *buf, const size_t *off, const size_t *len, size_t esz,
                                ds_error *err)
{
    nccl_comm *c = NC(cm);
    ds_status st = begin(c, "all_gather_v", err);
    if (st != DS_OK)
        return st;
    size_t total = 0;
    ncclResult_t r = c->L->GroupStart();
    for (int k = 0; k < c->base.size && r == ncclSuccess; k++)
        if (len[k]) {
            total += len[k];
            char *p = (char *)buf + off[k] * esz; /* bytes: fp32 or 16-bit elements alike */
            r = c->L->Broadcast(p, p, len[k] * esz, ncclUint8, k, c->nc, c->cs);
        }
    ncclResult_t r2 = c->L->GroupEnd();
    return finish(c, r != ncclSuccess ? r : r2, "all_gather_v", total, err);
}

static void n_destroy(ds_comm *cm)
{
    nccl_comm *c = NC(cm);
    if (!c)
        return;
    cudaSetDevice(c->device);
    if (c->nc) {
        if (!c->aborted) /* CommAbort freed it */
            c->L->CommDestroy(c->nc);
    }
    if (c->one)
        cudaFree(c->one);
    if (c->ready)
        cudaEventDestroy(c->ready);
    if (c->cs)
        cudaStreamDestroy(c->cs);
    free(c);
}

static const ds_comm_ops nccl_ops = {
    /* .name = */ "nccl",
    /* .destroy = */ n_destroy,
    /* .all_reduce = */ n_all_reduce,
    /* .reduce_scatter = */ n_reduce_scatter,
    /* .all_gather = */ n_all_gather,
    /* .broadcast = */ n_broadcast,
    /* .barrier = */ n_barrier,
    /* .reduce_scatter_v = */ n_reduce_scatter_v,
    /* .all_gather_v = */ n_all_gather_v,
    /* .describe = */ NULL,
};

/* ncclCommInitRank in a thread of its own (see ds_cuda_comm_create). */
struct init_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ds_nccl_lib *L;
    ncclUniqueId id;
    int size, rank, device, done, refs;
    ncclComm_t nc;
    ncclResult_t result;
};

static void *init_main(void *arg)
{
    init_job *j = (init_job *)arg;
    ncclComm_t nc = NULL;
    ncclResult_t r = cudaSetDevice(j->device) == cudaSuccess ? j->L->CommInitRank(&nc, j->size, j->id, j->rank)
                                                            : ncclUnhandledCudaError;
    pthread_mutex_lock(&j->mu);
    j->nc = nc;
    j->result = r;
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (last) /* the caller gave up waiting */
        free(j);
    return NULL;
}

extern "C" ds_status ds_cuda_comm_id(ds_backend *b, void *id, size_t cap, size_t *len, ds_error *err)
{
    ds_status st = nccl_load(b, err);
    if (st != DS_OK)
        return st;
    if (!id) /* only the check: NCCL loads */
        return DS_OK;
    ds_nccl_lib *L = DS_CUDA(b)->nccl;
    if (cap < sizeof(ncclUniqueId))
        return ds_cuda_err_set(err, DS_ERR_INVALID, "NCCL: the id needs %zu bytes, %zu given", sizeof(ncclUniqueId), cap);
    ncclUniqueId u;
    ncclResult_t r = L->GetUniqueId(&u);
    if (r != ncclSuccess)
        return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: ncclGetUniqueId (%s): %s", L->path, L->GetErrorString(r));
    memcpy(id, &u, sizeof u);
    *len = sizeof u;
    return DS_OK;
}

extern "C" ds_status ds_cuda_comm_create(ds_backend *b, const void *id, size_t len, int rank, int size,
                                         double timeout_s, ds_comm **out, ds_error *err)
{
    *out = NULL;
    ds_status st = nccl_load(b, err);
    if (st != DS_OK)
        return st;
    ds_cuda *cu = DS_CUDA(b);
    ds_nccl_lib *L = cu->nccl;
    if (len != sizeof(ncclUniqueId))
        return ds_cuda_err_set(err, DS_ERR_INVALID, "NCCL: the communicator id has %zu bytes, expected %zu", len,
                    sizeof(ncclUniqueId));
    if (size < 1 || rank < 0 || rank >= size)
        return ds_cuda_err_set(err, DS_ERR_INVALID, "NCCL: rank %d of %d", rank, size);
    nccl_comm *c = (nccl_comm *)calloc(1, sizeof *c);
    if (!c)
        return ds_cuda_err_set(err, DS_ERR_NOMEM, "out of memory");
    c->base.ops = &nccl_ops;
    c->base.rank = rank;
    c->base.size = size;
    c->b = b;
    c->L = L;
    c->device = cu->device;
    c->timeout_s = timeout_s > 0 ? timeout_s : 1800;
    cudaError_t e = cudaSetDevice(c->device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&c->cs, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&c->one, sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(c->one, 0, sizeof(float), c->cs);
    if (e != cudaSuccess) {
        n_destroy(&c->base);
        return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: setting up rank %d's communicator: CUDA: %s (%s)", rank,
                    cudaGetErrorString(e), cudaGetErrorName(e));
    }
    /* ncclCommInitRank waits, without a timeout, for every rank to join: it runs in a thread
     * of its own and this one waits at most init_s for it (a rank that never joins, or one
     * that failed before joining, is then an error here instead of a hang). On a timeout the
     * thread is left behind, blocked; the caller is expected to give up the job. */
    init_job *j = (init_job *)calloc(1, sizeof *j);
    if (!j) {
        n_destroy(&c->base);
        return ds_cuda_err_set(err, DS_ERR_NOMEM, "out of memory");
    }
    memcpy(&j->id, id, sizeof j->id);
    j->L = L, j->size = size, j->rank = rank, j->device = cu->device, j->refs = 2;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, init_main, j) != 0) {
        free(j);
        n_destroy(&c->base);
        return ds_cuda_err_set(err, DS_ERR_BACKEND, "NCCL: cannot start the initialization thread");
    }
    pthread_detach(th);
    const double init_s = timeout_s > 0 ? timeout_s : 600;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)init_s;
    pthread_mutex_lock(&j->mu);
    while (!j->done && pthread_cond_timedwait(&j->cv, &j->mu, &until) == 0)
        ;
    int done = j->done;
    ncclResult_t r = j->result;
    c->nc = j->nc;
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (last)
        free(j);
    if (!done) {
        c->nc = NULL;
        n_destroy(&c->base);
        return ds_cuda_err_set(err, DS_ERR_IO,
                    "NCCL: ncclCommInitRank (rank %d of %d, device %d) did not complete in %.0f s: a rank did not "
                    "join (it failed or hangs before its NCCL setup)",
                    rank, size, cu->device, init_s);
    }
    if (r != ncclSuccess) {
        if (c->nc)
            L->CommAbort(c->nc);
        c->nc = NULL;
        n_destroy(&c->base);
        return ds_cuda_err_set(err, DS_ERR_BACKEND,
                    "NCCL: ncclCommInitRank (rank %d of %d, device %d, %s, NCCL %d): %s (two ranks on one GPU, "
                    "or a rank that did not start, are the usual causes)",
                    rank, size, cu->device, L->path, L->version, L->GetErrorString(r));
    }
    /* one collective now, from this thread: NCCL sets up its connections lazily, and doing that
     * while the overlap_comm thread and device allocations run is asking for trouble */
    ds_status st2 = n_barrier(&c->base, err);
    if (st2 != DS_OK) {
        n_destroy(&c->base);
        return st2;
    }
    *out = &c->base;
    return DS_OK;
}

#endif
