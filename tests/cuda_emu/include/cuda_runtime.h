/* CPU emulation of the CUDA runtime subset that kernels/ uses (tests/cuda_emu/README). */
#ifndef DS_CUDA_EMU_RUNTIME_H
#define DS_CUDA_EMU_RUNTIME_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;

typedef struct emu_stream *cudaStream_t;
/* Work on a stream: run at once, or, with DS_CUDA_EMU_DEFER=1, queued and run in stream order
 * only when something waits for it (a synchronize, a query, an event another stream waits on,
 * a free), as a GPU may run it late; a missing wait then shows as wrong results. The emulated
 * NCCL enqueues its collectives through this too. NULL: the legacy default stream (everything
 * queued runs first, then fn). */
void emu_enqueue(cudaStream_t s, std::function<void()> fn);
/* The first part of every emulated stream: how to put work on it (the emulated NCCL is another
 * library and reaches the runtime through this). */
struct emu_stream_head {
    void (*enqueue)(cudaStream_t s, std::function<void()> fn);
};
#define cudaStreamNonBlocking 1u

struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct emu_uint3 {
    unsigned x, y, z;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
typedef struct emu_event *cudaEvent_t;

/* CUDA's vector types that kernels/ uses, with their alignment */
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
#define cudaEventDisableTiming 2u
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaGetDevice(int *d);

/* ---- device side ---------------------------------------------------------------------- */
extern emu_uint3 emu_blockIdx;
extern dim3 emu_blockDim, emu_gridDim;
unsigned emu_tid(void);
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim
#define threadIdx (emu_uint3{emu_tid(), 0, 0})

/* cp.async (kernels/flash16.cu): the n source bytes (the rest of 16 zeros) are read at once,
 * the 16 destination bytes become NaN bytes, and they are written to shared memory at the
 * emu_cp_wait that covers them, i.e. when all but the thread's newest N committed groups are
 * waited for; copies not committed when a wait comes are not covered (as in PTX). Per thread;
 * a new block starts with none pending. */
void emu_cp_async(void *dst, const void *src, int n);
void emu_cp_commit(void);
void emu_cp_wait(int n);

/* A __shared__ variable at its declaration (unlaunch.py adds the call): NaN bytes (0xff: NaN in
 * fp32, fp64, bf16 and fp16), poured by thread 0, which runs first in a block and reaches its
 * declarations before any barrier lets another thread write. */
static inline void emu_poison_shared(void *p, size_t n)
{
    if (emu_tid() == 0)
        memset(p, 0xff, n);
}

void __syncthreads(void);
int __syncthreads_or(int pred);
uint64_t emu_shfl_xor(uint64_t bits, int lane_mask);

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
    (void)mask;
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = emu_shfl_xor(bits, lane_mask);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* the lanes' predicates as a mask (bit l: lane l's), in every lane: an OR over the warp by
 * xor shuffles (each one a warp barrier, as the real ballot synchronizes the warp) */
static inline unsigned __ballot_sync(unsigned mask, int pred)
{
    (void)mask;
    uint64_t v = pred ? 1ull << (emu_tid() & 31u) : 0ull;
    for (int o = 16; o > 0; o >>= 1)
        v |= emu_shfl_xor(v, o);
    return (unsigned)v;
}
static inline int __popc(unsigned x) { return __builtin_popcount(x); }

/* a warp barrier: every lane arrives before any goes on (a shuffle is one) */
static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    (void)mask;
    (void)emu_shfl_xor(0, 0);
}
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

/* Round-to-nearest products and sums without contraction (the emulation is built with
 * -ffp-contract=off, so a plain operator is already unfused). */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }

static inline float __uint_as_float(unsigned u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline unsigned __float_as_uint(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}

/* fibers are never preempted: a plain add is atomic */
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
    unsigned long long old = *p;
    *p = old + v;
    return old;
}

/* runs body once per thread of every block; returns after the whole grid */
void emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t s, const std::function<void()> &body);
static inline void emu_launch(unsigned grid, unsigned block, size_t smem, cudaStream_t s,
                              const std::function<void()> &body)
{
    emu_launch(dim3(grid), dim3(block), smem, s, body);
}
#endif
