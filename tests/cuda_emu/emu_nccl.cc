/* CPU emulation of NCCL for the emulated CUDA backend (tests/cuda_emu/README): libnccl-emu.so,
 * which kernels/comm_nccl.cu loads with dlopen when DS_NCCL_LIBRARY names it. "Device memory"
 * is host memory in the emulation, so the ranks (processes) exchange it through a POSIX shared
 * memory segment named in the unique id: one slot per rank, a barrier, and every rank reduces
 * the slots in rank order (so every rank gets the same bits, as NCCL's all-reduce does). Group
 * calls run their collectives at once, in order: every rank issues the same sequence. A peer
 * that does not arrive within DS_NCCL_EMU_TIMEOUT seconds (default 300) fails the call. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <functional>

#include "nccl.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

enum { SLOT_BYTES = 1 << 20, MAX_RANKS = 64 };

struct shm_hdr {
    std::atomic<unsigned> arrived; /* barrier: how many are in the current round */
    std::atomic<unsigned> round;   /* barrier: rounds completed */
    std::atomic<unsigned> broken;  /* a rank timed out: every later call fails, on every rank */
    char pad[64 - 3 * sizeof(std::atomic<unsigned>)];
};

struct ncclComm {
    int rank, n;
    shm_hdr *hdr;
    char *slots; /* n slots of SLOT_BYTES */
    size_t map_bytes;
    double timeout_s;
    ncclResult_t async;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static ncclResult_t barrier(ncclComm_t c)
{
    if (c->hdr->broken.load()) {
        c->async = ncclRemoteError;
        return ncclRemoteError;
    }
    unsigned r = c->hdr->round.load();
    if (c->hdr->arrived.fetch_add(1) + 1 == (unsigned)c->n) {
        c->hdr->arrived.store(0);
        c->hdr->round.fetch_add(1);
        return ncclSuccess;
    }
    double t0 = now_s();
    for (long spins = 0; c->hdr->round.load() == r; spins++) {
        if (spins > 200) {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        } else {
            sched_yield();
        }
        if ((spins & 1023) == 0 && (now_s() - t0 > c->timeout_s || c->hdr->broken.load())) {
            /* the counts of this round are now wrong: no rank may trust the segment again */
            c->hdr->broken.store(1);
            c->async = ncclRemoteError;
            return ncclSystemError;
        }
    }
    return ncclSuccess;
}

static size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    }
    return 0;
}

static char *slot(ncclComm_t c, int r) { return c->slots + (size_t)r * SLOT_BYTES; }

/* out[i] = op over ranks (in rank order) of slot[r] + at, i < len floats */
static void reduce_slots(ncclComm_t c, size_t at, float *out, size_t len, ncclRedOp_t op)
{
    for (size_t i = 0; i < len; i++) {
        float acc = ((float *)(slot(c, 0) + at))[i];
        for (int r = 1; r < c->n; r++) {
            float v = ((float *)(slot(c, r) + at))[i];
            acc = op == ncclMax ? (v > acc ? v : acc) : op == ncclMin ? (v < acc ? v : acc) : op == ncclProd ? acc * v : acc + v;
        }
        out[i] = op == ncclAvg ? acc / (float)c->n : acc;
    }
}

EXPORT ncclResult_t ncclGetVersion(int *v)
{
    *v = 22800;
    return ncclSuccess;
}

EXPORT const char *ncclGetErrorString(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error (emulation: a peer did not arrive in time)";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    default: return "emulated NCCL error";
    }
}

EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    static std::atomic<unsigned> count;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "/ds-nccl-emu-%d-%ld-%ld-%u", (int)getpid(), (long)ts.tv_sec,
             ts.tv_nsec, count.fetch_add(1));
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommInitRank(ncclComm_t *out, int n, ncclUniqueId id, int rank)
{
    *out = NULL;
    if (n < 1 || n > MAX_RANKS || rank < 0 || rank >= n || strncmp(id.internal, "/ds-nccl-emu-", 13) != 0)
        return ncclInvalidArgument;
    ncclComm_t c = (ncclComm_t)calloc(1, sizeof *c);
    if (!c)
        return ncclSystemError;
    c->rank = rank;
    c->n = n;
    const char *t = getenv("DS_NCCL_EMU_TIMEOUT");
    c->timeout_s = t && atof(t) > 0 ? atof(t) : 300;
    c->map_bytes = sizeof(shm_hdr) + (size_t)n * SLOT_BYTES;
    char name[NCCL_UNIQUE_ID_BYTES + 1];
    memcpy(name, id.internal, NCCL_UNIQUE_ID_BYTES);
    name[NCCL_UNIQUE_ID_BYTES] = 0;
    int fd = shm_open(name, O_CREAT | O_RDWR, 0600); /* zero-filled when new: counters at 0 */
    /* the pages reserved now, so a small /dev/shm is an error here rather than SIGBUS later */
    if (fd < 0 || ftruncate(fd, (off_t)c->map_bytes) != 0 || posix_fallocate(fd, 0, (off_t)c->map_bytes) != 0) {
        if (fd >= 0)
            close(fd);
        free(c);
        return ncclSystemError;
    }
    void *m = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        free(c);
        return ncclSystemError;
    }
    c->hdr = (shm_hdr *)m;
    c->slots = (char *)m + sizeof(shm_hdr);
    ncclResult_t r = barrier(c); /* everyone has it mapped: the name can go */
    if (rank == 0)
        shm_unlink(name);
    if (r != ncclSuccess) {
        munmap(m, c->map_bytes);
        free(c);
        return r;
    }
    *out = c;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommDestroy(ncclComm_t c)
{
    if (c) {
        munmap(c->hdr, c->map_bytes);
        free(c);
    }
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommAbort(ncclComm_t c) { return ncclCommDestroy(c); }

EXPORT ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *e)
{
    *e = c->async;
    return ncclSuccess;
}

#define TRY(x)                                                                                   \
    do {                                                                                         \
        ncclResult_t r_ = (x);                                                                   \
        if (r_ != ncclSuccess)                                                                   \
            return r_;                                                                           \
    } while (0)

static ncclResult_t do_ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                                  ncclComm_t c, cudaStream_t)
{
    if (t != ncclFloat32)
        return ncclInvalidArgument;
    const size_t chunk = SLOT_BYTES / sizeof(float);
    for (size_t off = 0; off < count; off += chunk) {
        size_t len = count - off < chunk ? count - off : chunk;
        memcpy(slot(c, c->rank), (const float *)send + off, len * sizeof(float));
        TRY(barrier(c));
        reduce_slots(c, 0, (float *)recv + off, len, op);
        TRY(barrier(c));
    }
    return ncclSuccess;
}

static ncclResult_t do_ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               int root, ncclComm_t c, cudaStream_t)
{
    if (t != ncclFloat32 || root < 0 || root >= c->n)
        return ncclInvalidArgument;
    const size_t chunk = SLOT_BYTES / sizeof(float);
    for (size_t off = 0; off < count; off += chunk) {
        size_t len = count - off < chunk ? count - off : chunk;
        memcpy(slot(c, c->rank), (const float *)send + off, len * sizeof(float));
        TRY(barrier(c));
        if (c->rank == root)
            reduce_slots(c, 0, (float *)recv + off, len, op);
        TRY(barrier(c));
    }
    return ncclSuccess;
}

static ncclResult_t do_ncclReduceScatter(const void *send, void *recv, size_t recv_count, ncclDataType_t t,
                                      ncclRedOp_t op, ncclComm_t c, cudaStream_t)
{
    if (t != ncclFloat32)
        return ncclInvalidArgument;
    const size_t chunk = SLOT_BYTES / sizeof(float) / (size_t)c->n; /* per block */
    for (size_t off = 0; off < recv_count; off += chunk) {
        size_t len = recv_count - off < chunk ? recv_count - off : chunk;
        for (int k = 0; k < c->n; k++)
            memcpy(slot(c, c->rank) + (size_t)k * chunk * sizeof(float),
                   (const float *)send + (size_t)k * recv_count + off, len * sizeof(float));
        TRY(barrier(c));
        reduce_slots(c, (size_t)c->rank * chunk * sizeof(float), (float *)recv + off, len, op);
        TRY(barrier(c));
    }
    return ncclSuccess;
}

static ncclResult_t do_ncclAllGather(const void *send, void *recv, size_t send_count, ncclDataType_t t, ncclComm_t c,
                                  cudaStream_t)
{
    size_t es = type_size(t);
    if (!es)
        return ncclInvalidArgument;
    const size_t chunk = SLOT_BYTES / es;
    for (size_t off = 0; off < send_count; off += chunk) {
        size_t len = send_count - off < chunk ? send_count - off : chunk;
        memcpy(slot(c, c->rank), (const char *)send + off * es, len * es);
        TRY(barrier(c));
        for (int k = 0; k < c->n; k++)
            memcpy((char *)recv + ((size_t)k * send_count + off) * es, slot(c, k), len * es);
        TRY(barrier(c));
    }
    return ncclSuccess;
}

static ncclResult_t do_ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root,
                                  ncclComm_t c, cudaStream_t)
{
    size_t es = type_size(t);
    if (!es || root < 0 || root >= c->n)
        return ncclInvalidArgument;
    const size_t chunk = SLOT_BYTES / es;
    for (size_t off = 0; off < count; off += chunk) {
        size_t len = count - off < chunk ? count - off : chunk;
        if (c->rank == root)
            memcpy(slot(c, root), (const char *)send + off * es, len * es);
        TRY(barrier(c));
        memmove((char *)recv + off * es, slot(c, root), len * es);
        TRY(barrier(c));
    }
    return ncclSuccess;
}

/* The collectives: arguments checked now, the work put on the stream (run at once unless the
 * emulated runtime defers stream work: DS_CUDA_EMU_DEFER); a failure while it runs is what
 * ncclCommGetAsyncError reports, as with NCCL's asynchronous errors. */
static ncclResult_t on_stream(ncclComm_t c, cudaStream_t s, std::function<ncclResult_t()> op)
{
    std::function<void()> run = [=]() {
        ncclResult_t r = c->async == ncclSuccess ? op() : c->async;
        if (r != ncclSuccess && c->async == ncclSuccess)
            c->async = r == ncclSystemError ? ncclRemoteError : r;
    };
    if (s)
        ((emu_stream_head *)s)->enqueue(s, run);
    else
        run();
    return ncclSuccess;
}

static bool reduce_ok(ncclDataType_t t, ncclRedOp_t op)
{
    return t == ncclFloat32 && op >= ncclSum && op <= ncclAvg;
}

EXPORT ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                                  ncclComm_t c, cudaStream_t s)
{
    if (!c || !reduce_ok(t, op))
        return ncclInvalidArgument;
    return on_stream(c, s, [=]() { return do_ncclAllReduce(send, recv, count, t, op, c, s); });
}

EXPORT ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               int root, ncclComm_t c, cudaStream_t s)
{
    if (!c || !reduce_ok(t, op) || root < 0 || root >= c->n)
        return ncclInvalidArgument;
    return on_stream(c, s, [=]() { return do_ncclReduce(send, recv, count, t, op, root, c, s); });
}

EXPORT ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recv_count, ncclDataType_t t,
                                      ncclRedOp_t op, ncclComm_t c, cudaStream_t s)
{
    if (!c || !reduce_ok(t, op))
        return ncclInvalidArgument;
    return on_stream(c, s, [=]() { return do_ncclReduceScatter(send, recv, recv_count, t, op, c, s); });
}

EXPORT ncclResult_t ncclAllGather(const void *send, void *recv, size_t send_count, ncclDataType_t t, ncclComm_t c,
                                  cudaStream_t s)
{
    if (!c || !type_size(t))
        return ncclInvalidArgument;
    return on_stream(c, s, [=]() { return do_ncclAllGather(send, recv, send_count, t, c, s); });
}

EXPORT ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root,
                                  ncclComm_t c, cudaStream_t s)
{
    if (!c || !type_size(t) || root < 0 || root >= c->n)
        return ncclInvalidArgument;
    return on_stream(c, s, [=]() { return do_ncclBroadcast(send, recv, count, t, root, c, s); });
}

EXPORT ncclResult_t ncclGroupStart(void) { return ncclSuccess; }
EXPORT ncclResult_t ncclGroupEnd(void) { return ncclSuccess; }
