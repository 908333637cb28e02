/* Internal to the CUDA backend (libds-cuda.so): the backend's private state, the checked-call
 * macros that turn a CUDA or cuBLAS failure into a ds_status with the message in b->err, launch
 * helpers and warp reductions. Every .cu of kernels/ includes it; nothing outside kernels/ does. */
#ifndef DS_CUDA_COMMON_CUH
#define DS_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "ds/backend.h"

typedef struct ds_cuda {
    int device;
    int sm_count;
    int tf32;              /* GEMMs may use TF32 tensor cores (DS_CUDA_TF32, default 1) */
    int flash;             /* DS_CUDA_FLASH: -1 unset (fused 16-bit attention in bf16/fp16 training,
                              materialized otherwise), 0 never fused, 1 fused also in fp32 (TF32) */
    int cc_major;          /* compute capability: the fused kernels need sm_80 or newer */
    int gemm16;            /* linear layers multiply in bf16/fp16 (a ds_round_mode; 0: fp32) */
    int round_out;         /* fuse_round: activation ops round their outputs to this mode (0: no) */
    int fuse_ok;           /* DS_CUDA_FUSE_ROUND (default 1): fuse_round may say yes */
    int store16;           /* store16: activation tensors are 16-bit values of this mode (0: fp32) */
    cudaStream_t stream;   /* every op runs on this one stream, in order */
    cublasHandle_t blas;
    /* side: a second stream for independent work inside one op (linear_bwd's dW and bias
     * gradient beside dX), forked from and joined back to stream within the op; with its own
     * cuBLAS handle and scratch (ds_cuda_side_begin swaps them in) */
    int side_ok;           /* DS_CUDA_SIDE=1 (default 0): use it */
    cudaStream_t side;
    cublasHandle_t blas_side;
    cudaEvent_t ev_fork, ev_join;
    void *scratch_side;
    size_t scratch_side_bytes;
    cublasLtHandle_t lt;   /* cuBLASLt: the 16-bit linear layers with a bias (its bias epilogue) */
    int lt_ok;             /* DS_CUDA_LT (default 1): use it */
    int gelu_fuse;         /* DS_CUDA_GELU_FUSE (default 1): a linear layer's GELU in cuBLASLt's epilogues */
    int xent_rows;         /* DS_CUDA_XENT_ROWS=1 (default 0): 16-bit logits read once, kept in registers */
    void *lt_ws;           /* its workspace (LT_WORKSPACE bytes, allocated at first use; NULL: none) */
    int lt_ws_tried;
    void *scratch;         /* per-op temporary device memory, grown on demand */
    size_t scratch_bytes;
    void *scratch16;       /* store16: the fp32 copies an op unpacks its 16-bit tensors into (beside
                              scratch, which the fp32 code it then runs uses) */
    size_t scratch16_bytes;
    void *red;             /* device: reduction partials (RED_BLOCKS doubles) + the result */
    void *host_red;        /* pinned host: the result of a reduction */
    struct ds_nccl_lib *nccl; /* NCCL, loaded by the first communicator (comm_nccl.cu) */
    char base[200];        /* "cuda:N (name, sm_XY, SMs, memory" */
    char describe[320];    /* base, the GEMMs' and the attention's precision (ds_cuda_describe_update) */
} ds_cuda;

#define DS_CUDA(b) ((ds_cuda *)(b)->impl)
#define STREAM(b) (DS_CUDA(b)->stream)

/* Reductions to the host use a fixed grid, so their summation order (and result) does not
 * depend on timing: deterministic run to run. */
#define RED_BLOCKS 1024
#define RED_THREADS 256

#ifdef __cplusplus
extern "C" {
#endif
/* err (may be NULL) = message; returns code. printf-style: for errors outside an op. */
ds_status ds_cuda_err_set(ds_error *err, ds_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* b->err = message; returns code. printf-style. */
ds_status ds_cuda_error(ds_backend *b, ds_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
ds_status ds_cuda_fail(ds_backend *b, const char *what, cudaError_t e, const char *file, int line);
ds_status ds_cuda_blas_fail(ds_backend *b, const char *what, cublasStatus_t s, const char *file,
                            int line);
/* Device scratch of at least `bytes`, valid until the next call (ops run in stream order, so one
 * op's scratch is free again when the next op is enqueued). NULL with b->err set on failure. */
void *ds_cuda_scratch(ds_backend *b, size_t bytes);
/* A second such buffer, for store16's fp32 copies (attention.cu). */
void *ds_cuda_scratch16(ds_backend *b, size_t bytes);
/* Work on the side stream inside an op: ds_cuda_fork records the point on stream that the side
 * work may start from; side_begin makes the side stream wait for that point, then swaps the side
 * stream, its cuBLAS handle and its scratch in, so that STREAM(b), the GEMM helpers and
 * ds_cuda_scratch enqueue there; side_end swaps them back and makes stream wait for the side
 * work. Every side_begin that returned DS_OK is followed by side_end, on errors too. */
typedef struct ds_cuda_saved {
    cudaStream_t stream;
    cublasHandle_t blas;
    void *scratch;
    size_t scratch_bytes;
} ds_cuda_saved;
ds_status ds_cuda_fork(ds_backend *b);
ds_status ds_cuda_side_begin(ds_backend *b, ds_cuda_saved *saved);
ds_status ds_cuda_side_end(ds_backend *b, const ds_cuda_saved *saved);
#ifdef __cplusplus
}
#endif

#define CU_TRY(call)                                                                             \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess)                                                                   \
            return ds_cuda_fail(b, #call, e_, __FILE__, __LINE__);                               \
    } while (0)

#define BLAS_TRY(call)                                                                           \
    do {                                                                                         \
        cublasStatus_t s_ = (call);                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                         \
            return ds_cuda_blas_fail(b, #call, s_, __FILE__, __LINE__);                          \
    } while (0)

/* After every launch: a bad configuration shows here; a fault inside the kernel shows at the
 * next synchronizing call (download, sum, synchronize), also as a ds_status. */
#define LAUNCHED(name)                                                                           \
    do {                                                                                         \
        cudaError_t e_ = cudaGetLastError();                                                     \
        if (e_ != cudaSuccess)                                                                   \
            return ds_cuda_fail(b, "launch of " name, e_, __FILE__, __LINE__);                   \
    } while (0)

/* Grid for a grid-stride loop over n elements: enough blocks to fill the GPU, no more. */
static inline unsigned grid_for(ds_backend *b, int64_t n, int threads)
{
    int64_t want = (n + threads - 1) / threads;
    int64_t cap = (int64_t)DS_CUDA(b)->sm_count * 16;
    if (want > cap)
        want = cap;
    return (unsigned)(want < 1 ? 1 : want);
}

#define GRID_STRIDE(i, n)                                                                        \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
         i += (int64_t)gridDim.x * blockDim.x)

/* 16-bit rounding, the bit operations of cpu_kernels.c (a ds_round_mode) */
__device__ __forceinline__ float round_bf16(float x)
{
    unsigned u = __float_as_uint(x);
    unsigned r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    r = (u & 0x7fffffffu) > 0x7f800000u ? ((u | 0x00400000u) & 0xffff0000u) : r;
    return __uint_as_float(r);
}

__device__ __forceinline__ float round_fp16(float x)
{
    unsigned u = __float_as_uint(x);
    unsigned a = u & 0x7fffffffu, sign = u & 0x80000000u;
    unsigned n = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
    float sub = __fadd_rn(__fadd_rn(__uint_as_float(a), 0.5f), -0.5f); /* multiples of 2^-24 */
    unsigned s = __float_as_uint(sub);
    unsigned r = a < 0x38800000u ? s : n;
    r = a >= 0x477ff000u ? 0x7f800000u : r;
    r = a > 0x7f800000u ? (a | 0x00400000u) : r;
    return __uint_as_float(r | sign);
}

__device__ __forceinline__ float round16(float x, int mode)
{
    return mode == DS_ROUND_BF16 ? round_bf16(x) : round_fp16(x);
}

/* an activation op's output: rounded to the mode fuse_round asked for (0: as is) */
__device__ __forceinline__ float rnd(float x, int mode) { return mode ? round16(x, mode) : x; }
#define RMODE(b) (DS_CUDA(b)->round_out)

/* ---- 16-bit activation and weight storage (store16) -----------------------------------------
 * A kernel templated on S (0: fp32, DS_ROUND_BF16, DS_ROUND_FP16) reads and writes its
 * activation tensors (and reads its weights) through lda/sta: S 0 is the fp32 layout (sta rounds as fuse_round asked,
 * rm), the others 2-byte values. sta rounds the fp32 value once to nearest even, the bits of
 * round16, so a 16-bit tensor holds exactly what the fp32 layout holds after fuse_round. */
#define S16(b) (DS_CUDA(b)->store16)

/* a float that is exactly an IEEE half (round_fp16's result) -> its bits */
__device__ __forceinline__ unsigned short float_to_half_bits(float r)
{
    unsigned u = __float_as_uint(r), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, NaN (quiet) */
        return (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0u));
    if (a < 0x38800000u) /* subnormal or zero: a multiple of 2^-24 */
        return (unsigned short)(sign | (unsigned)(__uint_as_float(a) * 16777216.0f));
    return (unsigned short)(sign | (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));
}

/* the value of 16-bit bits h (S: their format) */
template <int S> __device__ __forceinline__ float from16(unsigned h)
{
    /* fp16: the hardware's exact conversion (one instruction, no branch): with a branchy one the
     * compiler fused a multiply-add of a loaded value in the fp32 layout and not in fp16's,
     * and the layouts' results differed in the last bit on an H200 (test_cuda store16_ops_fp16:
     * the fp16 instance's PTX had mul and add where the fp32 one had fma.rn) */
    return S == DS_ROUND_BF16 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
}

/* v rounded to nearest even in S's format, as bits */
template <int S> __device__ __forceinline__ unsigned bits16(float v)
{
    return S == DS_ROUND_BF16 ? __float_as_uint(round_bf16(v)) >> 16 : (unsigned)float_to_half_bits(round_fp16(v));
}

template <int S> __device__ __forceinline__ float lda(const void *p, int64_t i)
{
    if (S == 0)
        return ((const float *)p)[i];
    return from16<S>(((const unsigned short *)p)[i]);
}

template <int S> __device__ __forceinline__ void sta(void *p, int64_t i, float v, int rm)
{
    if (S == 0)
        ((float *)p)[i] = rnd(v, rm);
    else
        ((unsigned short *)p)[i] = (unsigned short)bits16<S>(v);
}

/* eight 16-bit values of S (16 bytes, the first in the low half of q.x) widened, and back, rounded
 * to nearest even */
template <int S> __device__ __forceinline__ void unpack8(const uint4 q, float (&v)[8])
{
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        v[2 * k] = from16<S>(w[k] & 0xffffu);
        v[2 * k + 1] = from16<S>(w[k] >> 16);
    }
}

template <int S> __device__ __forceinline__ uint4 pack8(const float (&v)[8])
{
    uint4 q;
    q.x = bits16<S>(v[0]) | bits16<S>(v[1]) << 16;
    q.y = bits16<S>(v[2]) | bits16<S>(v[3]) << 16;
    q.z = bits16<S>(v[4]) | bits16<S>(v[5]) << 16;
    q.w = bits16<S>(v[6]) | bits16<S>(v[7]) << 16;
    return q;
}

/* Eight consecutive values at element i, with one or two 16-byte accesses: p + i must be 16-byte
 * aligned (vec8_ok). The same values and roundings as eight lda/sta. */
template <int S> __device__ __forceinline__ void ld8(const void *p, int64_t i, float (&v)[8])
{
    if (S == 0) {
        const float4 a = ((const float4 *)((const float *)p + i))[0], c = ((const float4 *)((const float *)p + i))[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = c.x, v[5] = c.y, v[6] = c.z, v[7] = c.w;
        return;
    }
    unpack8<S>(*(const uint4 *)((const unsigned short *)p + i), v);
}

template <int S> __device__ __forceinline__ void st8(void *p, int64_t i, const float (&v)[8], int rm)
{
    if (S == 0) {
        float4 *q = (float4 *)((float *)p + i);
        q[0] = make_float4(rnd(v[0], rm), rnd(v[1], rm), rnd(v[2], rm), rnd(v[3], rm));
        q[1] = make_float4(rnd(v[4], rm), rnd(v[5], rm), rnd(v[6], rm), rnd(v[7], rm));
        return;
    }
    *(uint4 *)((unsigned short *)p + i) = pack8<S>(v);
}

/* ld8/st8 where vec, else the same eight values one by one (p + i need not be aligned) */
template <int S> __device__ __forceinline__ void ld8v(const void *p, int64_t i, float (&v)[8], int vec)
{
    if (vec) {
        ld8<S>(p, i, v);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = lda<S>(p, i + k);
    }
}

template <int S> __device__ __forceinline__ void st8v(void *p, int64_t i, const float (&v)[8], int rm, int vec)
{
    if (vec) {
        st8<S>(p, i, v, rm);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            sta<S>(p, i + k, v[k], rm);
    }
}

/* every pointer given 16-byte aligned, so that ld8/st8 at multiples of 8 elements are (the
 * element size does not matter: 8 values are 16 or 32 bytes). NULL counts as aligned. */
static inline int vec8_ok(const void *a, const void *b = NULL, const void *c = NULL)
{
    return ((uintptr_t)a % 16) == 0 && ((uintptr_t)b % 16) == 0 && ((uintptr_t)c % 16) == 0;
}

/* launches kernel<S> with (grid, threads, smem) on b's stream for b's storage mode S, then checks
 * the launch */
#define LAUNCH_S(kernel, grid, threads, smem, ...)                                               \
    do {                                                                                         \
        switch (S16(b)) {                                                                        \
        case DS_ROUND_BF16:                                                                      \
            kernel<DS_ROUND_BF16><<<(grid), (threads), (smem), STREAM(b)>>>(__VA_ARGS__);        \
            break;                                                                               \
        case DS_ROUND_FP16:                                                                      \
            kernel<DS_ROUND_FP16><<<(grid), (threads), (smem), STREAM(b)>>>(__VA_ARGS__);        \
            break;                                                                               \
        default:                                                                                 \
            kernel<0><<<(grid), (threads), (smem), STREAM(b)>>>(__VA_ARGS__);                    \
        }                                                                                        \
        LAUNCHED(#kernel);                                                                       \
    } while (0)

/* 2^x by the GPU's ex2.approx.ftz: 2 ulp, as exp2f's, but a result below 2^-126 is 0 where
 * exp2f gives a subnormal (exp2f spends 4-5 more instructions around the MUFU for that range);
 * for probabilities and softmax sums, where such a term cannot show. The CPU emulation flushes
 * the same way. */
__device__ __forceinline__ float ex2(float x)
{
#if defined(__CUDA_ARCH__)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y; /* FLT_MIN */
#endif
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* cuBLAS takes int dimensions. */
#define DIM_OK(x) ((x) >= 0 && (x) <= 2147483647LL)

#endif
