/* Elementwise ops: GELU (tanh and erf), ReLU, dropout (the CPU's counter-based mask, bit for
 * bit), residual add, accumulate, scale. Grid-stride loops, one pass each. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define THREADS 256
#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

/* The memory-bound kernels below go over n elements in chunks of 8 (ld8/st8: one 16-byte access
 * per 16-bit tensor and chunk) when vec (every pointer 16-byte aligned), then the rest one by
 * one. An element's arithmetic is the same either way. */
#define CHUNKS8(j, n, vec) GRID_STRIDE(j, (vec) ? (n) / 8 : 0)
#define TAIL8(i, n, vec)                                                                         \
    for (int64_t i = ((vec) ? (n) / 8 * 8 : 0) + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float gelu_f(float v, int approximate)
{
    if (approximate) {
        float u = SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v);
        return 0.5f * v * (1.0f + tanhf(u));
    }
    return 0.5f * v * (1.0f + erff(v * INV_SQRT2));
}

/* d gelu(v) / dv */
__device__ __forceinline__ float gelu_d(float v, int approximate)
{
    if (approximate) {
        float u = SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v);
        float t = tanhf(u);
        if (t == 1.0f || t == -1.0f) /* the limits (1, 0) the formula gives there, also where du is inf
                                      * (|v| above about 1.8e19: 0 * inf would be NaN); as the CPU's */
            return t > 0.0f ? 1.0f : 0.0f;
        float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * v * v);
        return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
    }
    float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
    float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
    return cdf + v * pdf;
}

/* S: the activations' storage (cuda_common.cuh, lda/sta) */
template <int S> __global__ void gelu_fwd_k(const void *x, void *y, int64_t n, int approximate, int rm, int vec)
{
    CHUNKS8(j, n, vec)
    {
        float v[8];
        ld8<S>(x, 8 * j, v);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = gelu_f(v[k], approximate);
        st8<S>(y, 8 * j, v, rm);
    }
    TAIL8(i, n, vec) sta<S>(y, i, gelu_f(lda<S>(x, i), approximate), rm);
}

template <int S>
__global__ void gelu_bwd_k(const void *x, const void *dy, void *dx, int64_t n, int approximate,
                           int accumulate, int rm, int vec)
{
    CHUNKS8(j, n, vec)
    {
        float v[8], g[8], o[8];
        ld8<S>(x, 8 * j, v);
        ld8<S>(dy, 8 * j, g);
        if (accumulate)
            ld8<S>(dx, 8 * j, o);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float t = gelu_d(v[k], approximate) * g[k];
            o[k] = accumulate ? o[k] + t : t;
        }
        st8<S>(dx, 8 * j, o, rm);
    }
    TAIL8(i, n, vec)
    {
        float g = gelu_d(lda<S>(x, i), approximate) * lda<S>(dy, i);
        sta<S>(dx, i, accumulate ? lda<S>(dx, i) + g : g, rm);
    }
}

template <int S> __global__ void relu_fwd_k(const void *x, void *y, int64_t n, int rm)
{
    GRID_STRIDE(i, n)
    {
        float v = lda<S>(x, i);
        sta<S>(y, i, v > 0.0f || v != v ? v : 0.0f, rm); /* NaN stays NaN (torch, the CPU's) */
    }
}

template <int S>
__global__ void relu_bwd_k(const void *y, const void *dy, void *dx, int64_t n, int accumulate, int rm)
{
    GRID_STRIDE(i, n)
    {
        float g = !(lda<S>(y, i) <= 0.0f) ? lda<S>(dy, i) : 0.0f; /* a NaN output passes dy */
        sta<S>(dx, i, accumulate ? lda<S>(dx, i) + g : g, rm);
    }
}

/* ds_hash64 of lib/core/rng.c: splitmix64 of key ^ counter * 0xd1b54a32d192ed03. */
__device__ __forceinline__ uint64_t hash64(uint64_t key, uint64_t counter)
{
    uint64_t z = (key ^ (counter * 0xd1b54a32d192ed03ull)) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* keep element i iff its hash, as a uniform in [0,1), is >= p (cpu_kernels.c: dropout_factor) */
__device__ __forceinline__ float dropout_factor(uint64_t seed, int64_t i, float p, float keep_scale)
{
    float u = (float)(hash64(seed, (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
    return u >= p ? keep_scale : 0.0f;
}

template <int S>
__global__ void dropout_fwd_k(const void *x, void *y, int64_t n, float p, float keep_scale,
                              uint64_t seed, int rm)
{
    GRID_STRIDE(i, n) sta<S>(y, i, lda<S>(x, i) * dropout_factor(seed, i, p, keep_scale), rm);
}

template <int S>
__global__ void dropout_bwd_k(const void *dy, void *dx, int64_t n, float p, float keep_scale,
                              uint64_t seed, int accumulate, int rm)
{
    GRID_STRIDE(i, n)
    {
        float g = __fmul_rn(lda<S>(dy, i), dropout_factor(seed, i, p, keep_scale)); /* no FMA: bit-equal to the CPU */
        sta<S>(dx, i, accumulate ? lda<S>(dx, i) + g : g, rm);
    }
}

template <int S> __global__ void add_k(const void *a, const void *c, void *y, int64_t n, int rm, int vec)
{
    CHUNKS8(j, n, vec)
    {
        float u[8], v[8];
        ld8<S>(a, 8 * j, u);
        ld8<S>(c, 8 * j, v);
#pragma unroll
        for (int k = 0; k < 8; k++)
            u[k] += v[k];
        st8<S>(y, 8 * j, u, rm);
    }
    TAIL8(i, n, vec) sta<S>(y, i, lda<S>(a, i) + lda<S>(c, i), rm);
}

__global__ void acc_k(const float *x, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void scale_k(float *x, int64_t n, float s)
{
    GRID_STRIDE(i, n) x[i] *= s;
}

#define LAUNCH(kernel, n, ...)                                                                   \
    do {                                                                                         \
        if ((n) > 0) {                                                                           \
            kernel<<<grid_for(b, (n), THREADS), THREADS, 0, STREAM(b)>>>(__VA_ARGS__);           \
            LAUNCHED(#kernel);                                                                   \
        }                                                                                        \
        return DS_OK;                                                                            \
    } while (0)

/* the same for a kernel templated on the activations' storage; LAUNCH16_8 for one that goes in
 * chunks of 8 (a thread per chunk) */
#define LAUNCH16_8(kernel, n, ...)                                                               \
    do {                                                                                         \
        if ((n) > 0)                                                                             \
            LAUNCH_S(kernel, grid_for(b, ((n) + 7) / 8, THREADS), THREADS, 0, __VA_ARGS__);      \
        return DS_OK;                                                                            \
    } while (0)

#define LAUNCH16(kernel, n, ...)                                                                 \
    do {                                                                                         \
        if ((n) > 0)                                                                             \
            LAUNCH_S(kernel, grid_for(b, (n), THREADS), THREADS, 0, __VA_ARGS__);                \
        return DS_OK;                                                                            \
    } while (0)

extern "C" ds_status ds_cuda_gelu_fwd(ds_backend *b, const float *x, float *y, int64_t n,
                                      int approximate)
{
    LAUNCH16_8(gelu_fwd_k, n, x, y, n, approximate, RMODE(b), vec8_ok(x, y));
}

extern "C" ds_status ds_cuda_gelu_bwd(ds_backend *b, const float *x, const float *dy, float *dx,
                                      int64_t n, int approximate, int accumulate)
{
    LAUNCH16_8(gelu_bwd_k, n, x, dy, dx, n, approximate, accumulate, RMODE(b), vec8_ok(x, dy, dx));
}

extern "C" ds_status ds_cuda_relu_fwd(ds_backend *b, const float *x, float *y, int64_t n)
{
    LAUNCH16(relu_fwd_k, n, x, y, n, RMODE(b));
}

extern "C" ds_status ds_cuda_relu_bwd(ds_backend *b, const float *y, const float *dy, float *dx,
                                      int64_t n, int accumulate)
{
    LAUNCH16(relu_bwd_k, n, y, dy, dx, n, accumulate, RMODE(b));
}

extern "C" ds_status ds_cuda_dropout_fwd(ds_backend *b, const float *x, float *y, int64_t n,
                                         float p, uint64_t seed)
{
    float keep_scale = 1.0f / (1.0f - p); /* as the CPU computes it, in float */
    LAUNCH16(dropout_fwd_k, n, x, y, n, p, keep_scale, seed, RMODE(b));
}

extern "C" ds_status ds_cuda_dropout_bwd(ds_backend *b, const float *dy, float *dx, int64_t n,
                                         float p, uint64_t seed, int accumulate)
{
    float keep_scale = 1.0f / (1.0f - p);
    LAUNCH16(dropout_bwd_k, n, dy, dx, n, p, keep_scale, seed, accumulate, RMODE(b));
}

extern "C" ds_status ds_cuda_add(ds_backend *b, const float *a, const float *c, float *y,
                                 int64_t n)
{
    LAUNCH16_8(add_k, n, a, c, y, n, RMODE(b), vec8_ok(a, c, y));
}

template <int S> __global__ void scale_act_k(const void *x, void *y, int64_t n, float s, int rm)
{
    GRID_STRIDE(i, n) sta<S>(y, i, lda<S>(x, i) * s, rm);
}

extern "C" ds_status ds_cuda_scale_act(ds_backend *b, const float *x, float *y, int64_t n, float s)
{
    LAUNCH16(scale_act_k, n, x, y, n, s, RMODE(b));
}

template <int S> __global__ void unpack16_k(const void *src, float *dst, int64_t n)
{
    GRID_STRIDE(i, n) dst[i] = lda<S>(src, i);
}

template <int S> __global__ void pack16_k(const float *src, void *dst, int64_t n)
{
    GRID_STRIDE(i, n) sta<S>(dst, i, src[i], 0);
}

extern "C" ds_status ds_cuda_unpack16(ds_backend *b, const void *src, float *dst, int64_t n)
{
    LAUNCH16(unpack16_k, n, src, dst, n);
}

extern "C" ds_status ds_cuda_pack16(ds_backend *b, const float *src, void *dst, int64_t n)
{
    LAUNCH16(pack16_k, n, src, dst, n);
}

/* the backend op pack16 (store16's weights), in the format asked for whatever S16 is now */
extern "C" ds_status ds_cuda_pack16_op(ds_backend *b, const float *x, void *y, int64_t n, int mode)
{
    if (mode != DS_ROUND_BF16 && mode != DS_ROUND_FP16)
        return ds_cuda_error(b, DS_ERR_INVALID, "pack16: unknown 16-bit format %d", mode);
    if (n <= 0)
        return DS_OK;
    if (mode == DS_ROUND_BF16)
        pack16_k<DS_ROUND_BF16><<<grid_for(b, n, 256), 256, 0, STREAM(b)>>>(x, y, n);
    else
        pack16_k<DS_ROUND_FP16><<<grid_for(b, n, 256), 256, 0, STREAM(b)>>>(x, y, n);
    LAUNCHED("pack16_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_accumulate(ds_backend *b, const float *x, float *y, int64_t n,
                                        int accumulate)
{
    if (!accumulate) {
        if (n > 0 && x != y)
            CU_TRY(cudaMemcpyAsync(y, x, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice,
                                   STREAM(b)));
        return DS_OK;
    }
    LAUNCH(acc_k, n, x, y, n);
}

extern "C" ds_status ds_cuda_scale(ds_backend *b, float *x, int64_t n, float s)
{
    LAUNCH(scale_k, n, x, n, s);
}
