/* CPU emulation of the CUDA subset kernels/ uses, to run the CUDA backend's code paths on a
 * machine without a GPU (tests/cuda_emu/README). Each block runs alone; its threads are fibers
 * (a small x86-64 stack switch) that switch only at __syncthreads and warp shuffles, so barriers and shuffles have
 * CUDA's meaning, and an unsynchronized shared-memory race shows up as wrong results only where
 * the scheduling order matters. Memory is host memory; cuBLAS is a reference SGEMM. */
#include <stdio.h>
#include <stdlib.h>

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "cublasLt.h"
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

/* ---- runtime API ------------------------------------------------------------------------ */

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    default: return "emulated error";
    }
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    default: return "cudaErrorUnknown";
    }
}

cudaError_t cudaGetLastError(void) { return cudaSuccess; }

cudaError_t cudaGetDeviceCount(int *n)
{
    if (getenv("DS_CUDA_EMU_NODEV")) {
        *n = 0;
        return cudaErrorNoDevice;
    }
    /* as many devices as CUDA_VISIBLE_DEVICES lists (ds-launch sets it per node), else 1 */
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    *n = 1;
    if (vis && !*vis) { /* set but empty: no device, as in CUDA */
        *n = 0;
        return cudaErrorNoDevice;
    }
    if (vis) {
        for (const char *q = vis; *q; q++)
            *n += *q == ',';
    }
    return cudaSuccess;
}

/* the current device, per thread as in CUDA */
static thread_local int emu_device;

cudaError_t cudaSetDevice(int d)
{
    int n;
    cudaGetDeviceCount(&n);
    if (d < 0 || d >= n)
        return cudaErrorInvalidDevice;
    emu_device = d;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *d)
{
    *d = emu_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation of CUDA");
    p->major = 9;
    /* few SMs: grids stay small, so the grid-stride loops and chunked sums go round */
    p->multiProcessorCount = getenv("DS_CUDA_EMU_SMS") ? atoi(getenv("DS_CUDA_EMU_SMS")) : 2;
    p->totalGlobalMem = (size_t)8 << 30;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = NULL;
    if (bytes > ((size_t)8 << 30))
        return cudaErrorMemoryAllocation;
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!*p)
        return cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes); /* garbage (NaN), as cudaMalloc promises nothing */
    return cudaSuccess;
}

/* ---- streams ------------------------------------------------------------------------------ */

struct emu_stream : emu_stream_head {
    std::deque<std::function<void()>> q;
    long long queued = 0, done = 0; /* items ever queued, items run */
};

/* one lock for every queue and for running queued work (from any host thread) */
static std::recursive_mutex stream_mu;
static std::vector<emu_stream *> all_streams;

/* DS_CUDA_EMU_DEFER: 0 (unset) run at once, 1 deferred, 2 deferred and a stream wait runs the
 * awaited stream's work up to the event when the wait is enqueued */
static int deferred(void)
{
    static int d = -1;
    if (d < 0) {
        const char *v = getenv("DS_CUDA_EMU_DEFER");
        d = !v || !*v || strcmp(v, "0") == 0 ? 0 : strcmp(v, "2") == 0 ? 2 : 1;
    }
    return d;
}

/* run s's queued work until `pos` items have run */
static void drain_to(emu_stream *s, long long pos)
{
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    while (s->done < pos && !s->q.empty()) {
        std::function<void()> f = std::move(s->q.front());
        s->q.pop_front();
        f();
        s->done++;
    }
}

static void drain_all(void)
{
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    for (size_t i = 0; i < all_streams.size(); i++)
        drain_to(all_streams[i], all_streams[i]->queued);
}

void emu_enqueue(cudaStream_t s, std::function<void()> fn)
{
    if (!deferred()) {
        fn();
        return;
    }
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    if (!s) {
        drain_all();
        fn();
        return;
    }
    s->q.push_back(std::move(fn));
    s->queued++;
}

cudaError_t cudaFree(void *p)
{
    drain_all(); /* cudaFree waits for the device: nothing queued may still use p */
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    *free_b = (size_t)4 << 30;
    *total_b = (size_t)8 << 30;
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s)
{
    emu_enqueue(s, [=]() { memset(p, v, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k, cudaStream_t s)
{
    if (k == cudaMemcpyHostToDevice && deferred()) {
        /* from pageable host memory CUDA stages the data before returning: the caller may reuse
         * its buffer at once */
        std::shared_ptr<std::vector<char>> copy =
            std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        emu_enqueue(s, [=]() { memcpy(dst, copy->data(), bytes); });
    } else {
        emu_enqueue(s, [=]() { memmove(dst, src, bytes); });
    }
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = new emu_stream();
    (*s)->enqueue = emu_enqueue;
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    all_streams.push_back(*s);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    drain_to(s, s->queued);
    for (size_t i = 0; i < all_streams.size(); i++)
        if (all_streams[i] == s) {
            all_streams.erase(all_streams.begin() + (long)i);
            break;
        }
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (s)
        drain_to(s, s->queued);
    else
        drain_all();
    return cudaSuccess;
}

/* Deferred: one queued item runs per query, and the answer is "not ready" while any remain, so
 * callers that poll go round their loop. */
cudaError_t cudaStreamQuery(cudaStream_t s)
{
    if (!deferred() || !s)
        return cudaSuccess;
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    if (s->q.empty())
        return cudaSuccess;
    drain_to(s, s->done + 1);
    return s->q.empty() ? cudaSuccess : cudaErrorNotReady;
}

struct emu_event {
    emu_stream *s = nullptr;
    long long pos = 0; /* reached when s has run this many items */
};

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned)
{
    *e = new emu_event();
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    std::lock_guard<std::recursive_mutex> hold(stream_mu);
    e->s = s;
    e->pos = s ? s->queued : 0;
    return cudaSuccess;
}

/* s runs nothing queued after this until the event's stream has reached the recorded point.
 * DS_CUDA_EMU_DEFER=2 also runs that stream's work to the point now, while s's earlier work is
 * still queued: work on a forked stream that does not wait for its fork point then reads what
 * s has not yet written (an order a GPU may take too). */
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned)
{
    emu_stream *es = e->s;
    long long pos = e->pos;
    if (es && deferred() == 2)
        drain_to(es, pos);
    if (es)
        emu_enqueue(s, [=]() { drain_to(es, pos); });
    return cudaSuccess;
}

/* ---- threads as fibers ------------------------------------------------------------------ */

emu_uint3 emu_blockIdx;
dim3 emu_blockDim, emu_gridDim;

enum { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_SHUFFLE, DONE };

struct fiber {
    void *sp;
    unsigned tid;
    int state;
    int pred, result_pred;
    uint64_t val, result;
    int lane_mask;
};

/* emu_switch(&save, to): saves the callee-saved registers and the stack pointer of the caller
 * in *save and continues on the stack `to` (System V x86-64). */
extern "C" void emu_switch(void **save, void *to);
asm(".text\n"
    ".globl emu_switch\n"
    ".hidden emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size emu_switch, .-emu_switch\n");

#define STACK_BYTES (256 * 1024)
static std::vector<fiber> fibers;
static std::vector<char *> stacks;
static void *sched_sp;
static fiber *cur;
static const std::function<void()> *body;

unsigned emu_tid(void) { return cur->tid; }

static void yield_to_scheduler(void) { emu_switch(&cur->sp, sched_sp); }

void __syncthreads(void)
{
    cur->state = AT_BLOCK_BARRIER;
    yield_to_scheduler();
}

int __syncthreads_or(int pred)
{
    cur->pred = pred != 0;
    cur->state = AT_BLOCK_BARRIER;
    yield_to_scheduler();
    return cur->result_pred;
}

uint64_t emu_shfl_xor(uint64_t bits, int lane_mask)
{
    cur->val = bits;
    cur->lane_mask = lane_mask;
    cur->state = AT_WARP_SHUFFLE;
    yield_to_scheduler();
    return cur->result;
}

static void fiber_entry(void)
{
    (*body)();
    cur->state = DONE;
    yield_to_scheduler(); /* never resumed */
    abort();
}

/* a fresh fiber's stack: six zero registers, then fiber_entry as the return address, then a
 * fake return address for fiber_entry, with the ABI's alignment at its entry */
static void *fresh_stack(char *base)
{
    uintptr_t top = ((uintptr_t)(base + STACK_BYTES)) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;
    *--sp = (void *)fiber_entry;
    for (int i = 0; i < 6; i++)
        *--sp = NULL;
    return sp;
}

/* cp.async: per thread of the running block, the copies not yet written and how many groups
 * it has committed (a copy belongs to the group that was open when it was issued). The
 * destination holds NaN bytes from the issue to the covering wait, so that both a read before
 * the wait and a refill while another warp still reads the buffer show. */
struct emu_cp {
    void *dst;
    unsigned char data[16];
    unsigned group;
};
static std::vector<emu_cp> cp_pending[1024];
static unsigned cp_groups[1024];

void emu_cp_async(void *dst, const void *src, int n)
{
    emu_cp c;
    c.dst = dst;
    c.group = cp_groups[emu_tid()];
    memset(c.data, 0, sizeof c.data);
    memcpy(c.data, src, (size_t)n);
    memset(dst, 0xff, sizeof c.data); /* in flux until the wait: NaN bytes to whoever reads it */
    cp_pending[emu_tid()].push_back(c);
}

void emu_cp_commit(void) { cp_groups[emu_tid()]++; }

void emu_cp_wait(int n)
{
    const unsigned t = emu_tid(), done = cp_groups[t] >= (unsigned)n ? cp_groups[t] - (unsigned)n : 0;
    std::vector<emu_cp> &q = cp_pending[t], keep;
    for (const emu_cp &c : q)
        if (c.group < done)
            memcpy(c.dst, c.data, sizeof c.data);
        else
            keep.push_back(c);
    q.swap(keep);
}

static int sched_ahead = -1; /* DS_CUDA_EMU_SCHED: ahead (1, the default) or round (0) */

static void run_block(unsigned n)
{
    if (sched_ahead < 0) {
        const char *e = getenv("DS_CUDA_EMU_SCHED");
        sched_ahead = !(e && strcmp(e, "round") == 0);
    }
    for (unsigned i = 0; i < n; i++) {
        cp_pending[i].clear();
        cp_groups[i] = 0;
    }
    if (fibers.size() < n)
        fibers.resize(n);
    while (stacks.size() < n)
        stacks.push_back((char *)malloc(STACK_BYTES));
    for (unsigned i = 0; i < n; i++) {
        fiber &f = fibers[i];
        f.tid = i;
        f.state = RUNNABLE;
        f.pred = f.result_pred = 0;
        f.sp = fresh_stack(stacks[i]);
    }
    for (;;) {
        /* round: every runnable thread runs to its next switch point, so the warps go in
         * step; ahead (DS_CUDA_EMU_SCHED=ahead, the default): only the lowest warp with a
         * runnable thread does, so a warp runs as far as it can (to a __syncthreads, or its
         * end) before the next one starts -- what shows a tile refilled while another warp
         * still reads it, when a __syncthreads is missing */
        unsigned w_run = ~0u;
        for (unsigned i = 0; i < n; i++) {
            if (fibers[i].state != RUNNABLE)
                continue;
            if (sched_ahead) {
                if (w_run == ~0u)
                    w_run = i / 32;
                else if (i / 32 != w_run)
                    break;
            }
            cur = &fibers[i];
            emu_switch(&sched_sp, cur->sp);
        }
        unsigned alive = 0, at_block = 0;
        int any = 0;
        for (unsigned i = 0; i < n; i++) {
            alive += fibers[i].state != DONE;
            at_block += fibers[i].state == AT_BLOCK_BARRIER;
            any |= fibers[i].state == AT_BLOCK_BARRIER && fibers[i].pred;
        }
        if (!alive)
            return;
        int released = 0;
        if (at_block == alive) {
            for (unsigned i = 0; i < n; i++)
                if (fibers[i].state == AT_BLOCK_BARRIER) {
                    fibers[i].result_pred = any;
                    fibers[i].pred = 0;
                    fibers[i].state = RUNNABLE;
                }
            continue;
        }
        for (unsigned w = 0; w < (n + 31) / 32; w++) {
            unsigned lo = w * 32, hi = lo + 32 < n ? lo + 32 : n, live = 0, waiting = 0;
            for (unsigned i = lo; i < hi; i++) {
                live += fibers[i].state != DONE;
                waiting += fibers[i].state == AT_WARP_SHUFFLE;
            }
            if (!waiting || waiting != live)
                continue;
            if (live != hi - lo) {
                fprintf(stderr, "cuda-emu: a shuffle in warp %u with %u of %u lanes exited (undefined in CUDA)\n",
                        w, hi - lo - live, hi - lo);
                abort();
            }
            for (unsigned i = lo; i < hi; i++) {
                unsigned src = lo + ((i - lo) ^ (unsigned)fibers[i].lane_mask);
                fibers[i].result = src < hi ? fibers[src].val : fibers[i].val;
            }
            for (unsigned i = lo; i < hi; i++)
                fibers[i].state = RUNNABLE;
            released = 1;
        }
        int runnable = 0;
        for (unsigned i = 0; i < n && !runnable; i++)
            runnable = fibers[i].state == RUNNABLE;
        if (!released && !runnable) {
            fprintf(stderr, "cuda-emu: deadlock in block (%u,%u): %u threads alive, %u at __syncthreads\n",
                    emu_blockIdx.x, emu_blockIdx.y, alive, at_block);
            abort();
        }
    }
}

static void run_grid(dim3 grid, dim3 block, const std::function<void()> &fn);

void emu_launch(dim3 grid, dim3 block, size_t, cudaStream_t s, const std::function<void()> &fn)
{
    std::function<void()> body = fn;
    emu_enqueue(s, [=]() { run_grid(grid, block, body); });
}

static void run_grid(dim3 grid, dim3 block, const std::function<void()> &fn)
{
    if (block.y != 1 || block.z != 1 || block.x == 0 || block.x > 1024 || grid.x == 0 || grid.y == 0 ||
        grid.y > 65535 || grid.z == 0) {
        fprintf(stderr, "cuda-emu: bad launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n", grid.x, grid.y,
                grid.z, block.x, block.y, block.z);
        abort();
    }
    /* one launch at a time: the scheduler's state below is shared, and a second host thread
     * (the engine's communication thread) may launch too; a real stream runs them in order */
    static std::mutex launch_mu;
    std::lock_guard<std::mutex> hold(launch_mu);
    emu_gridDim = grid;
    emu_blockDim = block;
    body = &fn;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                emu_blockIdx = emu_uint3{x, y, z};
                run_block(block.x);
            }
}

/* ---- cuBLAS ----------------------------------------------------------------------------- */

struct emu_blas {
    int tf32;
    cudaStream_t stream = nullptr;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_blas();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    h->tf32 = m == CUBLAS_TF32_TENSOR_OP_MATH;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s) { return s ? "emulated failure" : "success"; }
const char *cublasGetStatusName(cublasStatus_t s) { return s ? "CUBLAS_STATUS_EMULATED" : "CUBLAS_STATUS_SUCCESS"; }

/* TF32: 10 explicit mantissa bits, round to nearest */
static inline float tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u += 0x1000u;
        u &= 0xffffe000u;
    }
    memcpy(&x, &u, 4);
    return x;
}

static void gemm1(int tf, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    /* op(A) as m rows of k, op(B)^T as n rows of k: dot products over contiguous rows */
    std::vector<float> a((size_t)m * k), bt((size_t)n * k);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++) {
            float v = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
            a[(size_t)i * k + l] = tf ? tf32(v) : v;
        }
    for (int j = 0; j < n; j++)
        for (int l = 0; l < k; l++) {
            float v = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
            bt[(size_t)j * k + l] = tf ? tf32(v) : v;
        }
#pragma omp parallel for schedule(static)
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *x = &a[(size_t)i * k], *y = &bt[(size_t)j * k];
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int l = 0;
            for (; l + 8 <= k; l += 8)
                for (int u = 0; u < 8; u++)
                    acc[u] += x[l + u] * y[l + u];
            float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            for (; l < k; l++)
                s += x[l] * y[l];
            float *c = &C[i + (size_t)j * ldc];
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c; /* BLAS: C unread when beta == 0 */
        }
}

static int bad_args(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, int ldc)
{
    int rows_a = ta == CUBLAS_OP_N ? m : k, rows_b = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) || ldb < (rows_b > 1 ? rows_b : 1) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "cuda-emu: cublasSgemm: invalid arguments m %d n %d k %d lda %d ldb %d ldc %d\n", m, n, k, lda,
                ldb, ldc);
        return 1;
    }
    return 0;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc)
{
    if (bad_args(ta, tb, m, n, k, lda, ldb, ldc))
        return CUBLAS_STATUS_INVALID_VALUE;
    const int tf = h->tf32;
    const float al = *alpha, be = *beta; /* host scalars: read at the call, as cuBLAS does */
    emu_enqueue(h->stream, [=]() { gemm1(tf, ta, tb, m, n, k, al, A, lda, B, ldb, be, C, ldc); });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, const float *alpha, const float *A, int lda,
                                         long long sA, const float *B, int ldb, long long sB,
                                         const float *beta, float *C, int ldc, long long sC, int batch)
{
    if (bad_args(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int tf = h->tf32;
    const float al = *alpha, be = *beta;
    emu_enqueue(h->stream, [=]() {
        for (int i = 0; i < batch; i++)
            gemm1(tf, ta, tb, m, n, k, al, A + i * sA, lda, B + i * sB, ldb, be, C + i * sC, ldc);
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* 16-bit element i of a column-major matrix as float */
static float from16(const void *p, cudaDataType t, size_t i)
{
    unsigned short h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    if (t == CUDA_R_16BF) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0x1f)
        u = sign | 0x7f800000u | (m << 13);
    else if (e)
        u = sign | ((e + 112) << 23) | (m << 13);
    else { /* subnormal: m * 2^-24 */
        float f = (float)m / 16777216.0f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo)
{
    (void)algo;
    if (bad_args(ta, tb, m, n, k, lda, ldb, ldc) || (Ctype != CUDA_R_32F && Ctype != Atype) ||
        compute != CUBLAS_COMPUTE_32F || (Atype != CUDA_R_16BF && Atype != CUDA_R_16F) || Btype != Atype)
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    emu_enqueue(h->stream, [=]() {
        size_t na = (size_t)lda * (ta == CUBLAS_OP_N ? k : m), nb = (size_t)ldb * (tb == CUBLAS_OP_N ? n : k);
        std::vector<float> a(na), bb(nb);
        for (size_t i = 0; i < na; i++)
            a[i] = from16(A, Atype, i);
        for (size_t i = 0; i < nb; i++)
            bb[i] = from16(B, Btype, i);
        if (Ctype == CUDA_R_32F) {
            gemm1(0, ta, tb, m, n, k, al, a.data(), lda, bb.data(), ldb, be, (float *)C, ldc);
            return;
        }
        /* a 16-bit C: the fp32 result (C read in fp32 when beta != 0), rounded to nearest even */
        size_t nc = (size_t)ldc * n;
        std::vector<float> c(nc, 0.0f);
        if (be != 0.0f)
            for (size_t i = 0; i < nc; i++)
                c[i] = from16(C, Ctype, i);
        gemm1(0, ta, tb, m, n, k, al, a.data(), lda, bb.data(), ldb, be, c.data(), ldc);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                size_t at = (size_t)j * ldc + i;
                unsigned short h16 = Ctype == CUDA_R_16BF ? __float2bfloat16_rn(c[at]).x : __float2half_rn(c[at]).x;
                memcpy((char *)C + 2 * at, &h16, 2);
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLASLt (include/cublasLt.h) ---------------------------------------------------------- */

struct emu_lt {
    int unused;
};
struct emu_lt_desc {
    cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void *bias = nullptr;
    const void *aux = nullptr; /* GELU_AUX(_BIAS): written, the GELU's input; DGELU: read */
    int64_t aux_ld = 0;
};
struct emu_lt_layout {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};
struct emu_lt_pref {
    uint64_t max_ws = 0;
    uint32_t align[4] = {256, 256, 256, 256}; /* A, B, C, D */
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h)
{
    *h = new emu_lt();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType_t scale)
{
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F)
        return CUBLAS_STATUS_INVALID_VALUE;
    *d = new emu_lt_desc();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d)
{
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}

/* the sizes CUDA's cublasLt.h gives the attributes (a wrong size is INVALID_VALUE there too) */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size)
{
    if (!buf)
        return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
        int32_t v;
        if (size != sizeof v)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&v, buf, sizeof v);
        (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->ta : d->tb) = (cublasOperation_t)v;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        if (size != sizeof d->epilogue)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->epilogue, buf, size);
        return d->epilogue == CUBLASLT_EPILOGUE_DEFAULT || d->epilogue == CUBLASLT_EPILOGUE_BIAS ||
                       d->epilogue == CUBLASLT_EPILOGUE_GELU_AUX || d->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
                       d->epilogue == CUBLASLT_EPILOGUE_DGELU
                   ? CUBLAS_STATUS_SUCCESS
                   : CUBLAS_STATUS_INVALID_VALUE;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (size != sizeof d->bias)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->bias, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
        if (size != sizeof d->aux)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->aux, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
        if (size != sizeof d->aux_ld)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->aux_ld, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld)
{
    if (ld < (int64_t)rows || ld < 1)
        return CUBLAS_STATUS_INVALID_VALUE;
    *l = new emu_lt_layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l)
{
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p)
{
    *p = new emu_lt_pref();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p)
{
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size)
{
    if (!buf)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (size != sizeof p->max_ws)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p->max_ws, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES && attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
        uint32_t a;
        if (size != sizeof a)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&a, buf, size);
        if (a == 0 || (a & (a - 1)))
            return CUBLAS_STATUS_INVALID_VALUE;
        p->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = a;
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

/* the tanh GELU and its derivative, as elementwise.cu computes them (cuBLASLt's own may differ
 * in the last bits: the tests compare with a tolerance) */
static float emu_gelu_tanh(float v)
{
    const float s = 0.7978845608028654f, c = 0.044715f;
    return 0.5f * v * (1.0f + tanhf(s * (v + c * v * v * v)));
}

static float emu_gelu_tanh_d(float v)
{
    const float s = 0.7978845608028654f, c = 0.044715f;
    float t = tanhf(s * (v + c * v * v * v));
    float du = s * (1.0f + 3.0f * c * v * v);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
}

/* what the emulation takes: 16-bit A and B of one type, C = D of that type or fp32, op(A) m x k,
 * op(B) k x n, D m x n */
static bool lt_shapes(cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B,
                      cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D)
{
    if (!d || !A || !B || !C || !D || (A->type != CUDA_R_16BF && A->type != CUDA_R_16F) || B->type != A->type ||
        (D->type != CUDA_R_32F && D->type != A->type) || C->type != D->type || C->rows != D->rows ||
        C->cols != D->cols || C->ld != D->ld)
        return false;
    uint64_t m = d->ta == CUBLAS_OP_N ? A->rows : A->cols, k = d->ta == CUBLAS_OP_N ? A->cols : A->rows;
    uint64_t kb = d->tb == CUBLAS_OP_N ? B->rows : B->cols, n = d->tb == CUBLAS_OP_N ? B->cols : B->rows;
    return k == kb && m == D->rows && n == D->cols;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A,
                                              cublasLtMatrixLayout_t B, cublasLtMatrixLayout_t C,
                                              cublasLtMatrixLayout_t D, cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned)
{
    if (!h || !p || requested < 1 || !results || !returned)
        return CUBLAS_STATUS_INVALID_VALUE;
    *returned = 0;
    if (!lt_shapes(d, A, B, C, D))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(&results[0], 0, sizeof results[0]);
    /* the algorithm assumes the alignments the preference allowed (256 bytes unless told
     * less), as a real one may: cublasLtMatmul checks them */
    for (int i = 0; i < 4; i++)
        results[0].algo.data[i] = p->align[i];
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspace_bytes, cudaStream_t stream)
{
    (void)workspace, (void)workspace_bytes;
    if (!h || !alpha || !beta || !A || !B || !C || !D)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!lt_shapes(d, Adesc, Bdesc, Cdesc, Ddesc))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const uint32_t ep = d->epilogue;
    const bool has_bias = ep == CUBLASLT_EPILOGUE_BIAS || ep == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    const bool gelu_aux = ep == CUBLASLT_EPILOGUE_GELU_AUX || ep == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    const bool dgelu = ep == CUBLASLT_EPILOGUE_DGELU;
    if (has_bias && !d->bias)
        return CUBLAS_STATUS_INVALID_VALUE;
    /* the GELU input: a matrix like D's, of D's type, its ld a multiple of 8 and at least D's
     * rows (cublasLt.h); 16-byte aligned here (cuBLASLt derives what it assumes from the pointer) */
    if ((gelu_aux || dgelu) && (!d->aux || d->aux_ld < (int64_t)Ddesc->rows || d->aux_ld % 8 ||
                                (uintptr_t)d->aux % 16 || Ddesc->type == CUDA_R_32F))
        return CUBLAS_STATUS_INVALID_VALUE;
    /* a pointer less aligned than the algorithm assumes: on a GPU a misaligned-address fault
     * or an error; here an error, so that a caller that does not declare its alignment fails */
    if (algo && ((uintptr_t)A % algo->data[0] || (uintptr_t)B % algo->data[1] || (uintptr_t)C % algo->data[2] ||
                 (uintptr_t)D % algo->data[3]))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const cudaDataType t = Adesc->type, dt = Ddesc->type;
    const cublasOperation_t ta = d->ta, tb = d->tb;
    const int m = (int)Ddesc->rows, n = (int)Ddesc->cols, k = (int)(ta == CUBLAS_OP_N ? Adesc->cols : Adesc->rows);
    const int lda = (int)Adesc->ld, ldb = (int)Bdesc->ld, ldd = (int)Ddesc->ld;
    const size_t na = (size_t)lda * Adesc->cols, nb = (size_t)ldb * Bdesc->cols;
    const void *bias = has_bias ? d->bias : nullptr;
    void *aux = (gelu_aux || dgelu) ? (void *)d->aux : nullptr;
    const int64_t aux_ld = d->aux_ld;
    emu_enqueue(stream, [=]() {
        std::vector<float> a(na), bb(nb), c((size_t)ldd * n, 0.0f);
        for (size_t i = 0; i < na; i++)
            a[i] = from16(A, t, i);
        for (size_t i = 0; i < nb; i++)
            bb[i] = from16(B, t, i);
        if (be != 0.0f)
            for (size_t i = 0; i < c.size(); i++)
                c[i] = dt == CUDA_R_32F ? ((const float *)C)[i] : from16(C, dt, i);
        gemm1(0, ta, tb, m, n, k, al, a.data(), lda, bb.data(), ldb, be, c.data(), ldd);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                size_t at = (size_t)j * ldd + i;
                float v = c[at];
                if (bias) /* the bias has D's type */
                    v += dt == CUDA_R_32F ? ((const float *)bias)[i] : from16(bias, dt, (size_t)i);
                if (aux) { /* the tanh GELU, in fp32 as elementwise.cu's gelu_f and gelu_d */
                    const size_t ax = (size_t)j * aux_ld + i;
                    if (gelu_aux) {
                        unsigned short a16 = dt == CUDA_R_16BF ? __float2bfloat16_rn(v).x : __float2half_rn(v).x;
                        memcpy((char *)aux + 2 * ax, &a16, 2);
                        v = emu_gelu_tanh(v);
                    } else {
                        v *= emu_gelu_tanh_d(from16(aux, dt, ax));
                    }
                }
                if (dt == CUDA_R_32F) {
                    ((float *)D)[at] = v;
                } else {
                    unsigned short h16 = dt == CUDA_R_16BF ? __float2bfloat16_rn(v).x : __float2half_rn(v).x;
                    memcpy((char *)D + 2 * at, &h16, 2);
                }
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}
