/* Elementwise ops: GELU (tanh and erf), ReLU, dropout (the CPU's counter-based mask, bit for
 * bit), residual add, accumulate, scale. Grid-stride loops, one pass each. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define THREADS 256
#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__global__ void gelu_fwd_k(const float *x, float *y, int64_t n, int approximate, int rm)
{
    GRID_STRIDE(i, n)
    {
        float v = x[i];
        if (approximate) {
            float u = SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v);
            y[i] = rnd(0.5f * v * (1.0f + tanhf(u)), rm);
        } else {
            y[i] = rnd(0.5f * v * (1.0f + erff(v * INV_SQRT2)), rm);
        }
    }
}

__global__ void gelu_bwd_k(const float *x, const float *dy, float *dx, int64_t n, int approximate,
                           int accumulate, int rm)
{
    GRID_STRIDE(i, n)
    {
        float v = x[i], d;
        if (approximate) {
            float u = SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v);
            float t = tanhf(u);
            float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * v * v);
            d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
        } else {
            float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
            float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
            d = cdf + v * pdf;
        }
        float g = d * dy[i];
        dx[i] = rnd(accumulate ? dx[i] + g : g, rm);
    }
}

__global__ void relu_fwd_k(const float *x, float *y, int64_t n, int rm)
{
    GRID_STRIDE(i, n) y[i] = rnd(x[i] > 0.0f ? x[i] : 0.0f, rm);
}

__global__ void relu_bwd_k(const float *y, const float *dy, float *dx, int64_t n, int accumulate, int rm)
{
    GRID_STRIDE(i, n)
    {
        float g = y[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = rnd(accumulate ? dx[i] + g : g, rm);
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

__global__ void dropout_fwd_k(const float *x, float *y, int64_t n, float p, float keep_scale,
                              uint64_t seed, int rm)
{
    GRID_STRIDE(i, n) y[i] = rnd(x[i] * dropout_factor(seed, i, p, keep_scale), rm);
}

__global__ void dropout_bwd_k(const float *dy, float *dx, int64_t n, float p, float keep_scale,
                              uint64_t seed, int accumulate, int rm)
{
    GRID_STRIDE(i, n)
    {
        float g = __fmul_rn(dy[i], dropout_factor(seed, i, p, keep_scale)); /* no FMA: bit-equal to the CPU */
        dx[i] = rnd(accumulate ? dx[i] + g : g, rm);
    }
}

__global__ void add_k(const float *a, const float *c, float *y, int64_t n, int rm)
{
    GRID_STRIDE(i, n) y[i] = rnd(a[i] + c[i], rm);
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

extern "C" ds_status ds_cuda_gelu_fwd(ds_backend *b, const float *x, float *y, int64_t n,
                                      int approximate)
{
    LAUNCH(gelu_fwd_k, n, x, y, n, approximate, RMODE(b));
}

extern "C" ds_status ds_cuda_gelu_bwd(ds_backend *b, const float *x, const float *dy, float *dx,
                                      int64_t n, int approximate, int accumulate)
{
    LAUNCH(gelu_bwd_k, n, x, dy, dx, n, approximate, accumulate, RMODE(b));
}

extern "C" ds_status ds_cuda_relu_fwd(ds_backend *b, const float *x, float *y, int64_t n)
{
    LAUNCH(relu_fwd_k, n, x, y, n, RMODE(b));
}

extern "C" ds_status ds_cuda_relu_bwd(ds_backend *b, const float *y, const float *dy, float *dx,
                                      int64_t n, int accumulate)
{
    LAUNCH(relu_bwd_k, n, y, dy, dx, n, accumulate, RMODE(b));
}

extern "C" ds_status ds_cuda_dropout_fwd(ds_backend *b, const float *x, float *y, int64_t n,
                                         float p, uint64_t seed)
{
    float keep_scale = 1.0f / (1.0f - p); /* as the CPU computes it, in float */
    LAUNCH(dropout_fwd_k, n, x, y, n, p, keep_scale, seed, RMODE(b));
}

extern "C" ds_status ds_cuda_dropout_bwd(ds_backend *b, const float *dy, float *dx, int64_t n,
                                         float p, uint64_t seed, int accumulate)
{
    float keep_scale = 1.0f / (1.0f - p);
    LAUNCH(dropout_bwd_k, n, dy, dx, n, p, keep_scale, seed, accumulate, RMODE(b));
}

extern "C" ds_status ds_cuda_add(ds_backend *b, const float *a, const float *c, float *y,
                                 int64_t n)
{
    LAUNCH(add_k, n, a, c, y, n, RMODE(b));
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
