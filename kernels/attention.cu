/* Multi-head attention, materialized: per sample, cuBLAS strided-batched GEMMs over the heads
 * for Q K^T and P V (and the four products of backward), and a warp-per-row softmax kernel
 * that honours causal masking (the row in registers up to T = 1024). The probabilities are
 * kept in att [B,H,T,T]; positions above the diagonal of a causal row hold exact zeros. Where
 * the fused kernels of flash_attention.cu are asked for (DS_CUDA_FLASH=1) and apply, they run
 * instead, and att holds their smaller state (ds_cuda_attention_state).
 *
 * Layout: qkv [B,T,3C] row-major; head h of q is columns h*D..h*D+D-1 (k at C + h*D, v at
 * 2C + h*D). In cuBLAS's column-major view a head's q block is the D x T matrix Q^T with
 * leading dimension 3C, and heads are D apart: the batch stride. att rows [t, s] of one
 * (b, h) are the column-major T x T matrix P^T, T*T apart per head. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

#define WARPS 8

__global__ void softmax_fwd_k(float *att, int64_t rows, int64_t T, int causal)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows)
        return;
    float *row = att + r * T;
    const int64_t t = r % T, n = causal ? t + 1 : T;
    float mx = -INFINITY;
    for (int64_t s = lane; s < n; s += 32)
        mx = fmaxf(mx, row[s]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int64_t s = lane; s < n; s += 32) {
        float e = expf(row[s] - mx);
        row[s] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int64_t s = lane; s < n; s += 32)
        row[s] *= inv;
    for (int64_t s = n + lane; s < T; s += 32)
        row[s] = 0.0f;
}

/* dS = P * (dP - sum_s P dP) * scale, in place over dP; zero above a causal diagonal */
__global__ void softmax_bwd_k(const float *att, float *dp, int64_t rows, int64_t T, int causal,
                              float scale)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows)
        return;
    const float *p = att + r * T;
    float *d = dp + r * T;
    const int64_t t = r % T, n = causal ? t + 1 : T;
    float dot = 0.0f;
    for (int64_t s = lane; s < n; s += 32)
        dot += p[s] * d[s];
    dot = warp_sum(dot);
    for (int64_t s = lane; s < n; s += 32)
        d[s] = p[s] * (d[s] - dot) * scale;
    for (int64_t s = n + lane; s < T; s += 32)
        d[s] = 0.0f;
}

/* The same two kernels with the row in registers (PER_LANE values per lane, T <= 32*PER_LANE):
 * one read and one write of att per row instead of three passes, and a causal row reads only
 * its first t+1 scores. */
template <int PER_LANE>
__global__ void softmax_fwd_reg_k(float *att, int64_t rows, int64_t T, int causal)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows)
        return;
    float *row = att + r * T;
    const int64_t t = r % T, n = causal ? t + 1 : T;
    float v[PER_LANE];
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        const int64_t s = lane + 32 * k;
        v[k] = s < n ? row[s] : -INFINITY;
        mx = fmaxf(mx, v[k]);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        const int64_t s = lane + 32 * k;
        v[k] = s < n ? expf(v[k] - mx) : 0.0f;
        sum += v[k];
    }
    const float inv = 1.0f / warp_sum(sum);
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        const int64_t s = lane + 32 * k;
        if (s < T)
            row[s] = v[k] * inv; /* 0 above a causal diagonal */
    }
}

template <int PER_LANE>
__global__ void softmax_bwd_reg_k(const float *att, float *dp, int64_t rows, int64_t T, int causal,
                                  float scale)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows)
        return;
    const float *p = att + r * T;
    float *d = dp + r * T;
    const int64_t t = r % T, n = causal ? t + 1 : T;
    float pv[PER_LANE], dv[PER_LANE];
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        const int64_t s = lane + 32 * k;
        pv[k] = s < n ? p[s] : 0.0f;
        dv[k] = s < n ? d[s] : 0.0f;
        dot += pv[k] * dv[k];
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        const int64_t s = lane + 32 * k;
        if (s < T)
            d[s] = s < n ? pv[k] * (dv[k] - dot) * scale : 0.0f;
    }
}

static ds_status softmax_fwd(ds_backend *b, float *att, int64_t rows, int64_t T, int causal)
{
    const unsigned blocks = (unsigned)((rows + WARPS - 1) / WARPS), threads = 32 * WARPS;
    cudaStream_t st = STREAM(b);
    if (T <= 128)
        softmax_fwd_reg_k<4><<<blocks, threads, 0, st>>>(att, rows, T, causal);
    else if (T <= 256)
        softmax_fwd_reg_k<8><<<blocks, threads, 0, st>>>(att, rows, T, causal);
    else if (T <= 512)
        softmax_fwd_reg_k<16><<<blocks, threads, 0, st>>>(att, rows, T, causal);
    else if (T <= 1024)
        softmax_fwd_reg_k<32><<<blocks, threads, 0, st>>>(att, rows, T, causal);
    else
        softmax_fwd_k<<<blocks, threads, 0, st>>>(att, rows, T, causal);
    LAUNCHED("softmax_fwd");
    return DS_OK;
}

static ds_status softmax_bwd(ds_backend *b, const float *att, float *dp, int64_t rows, int64_t T,
                             int causal, float scale)
{
    const unsigned blocks = (unsigned)((rows + WARPS - 1) / WARPS), threads = 32 * WARPS;
    cudaStream_t st = STREAM(b);
    if (T <= 128)
        softmax_bwd_reg_k<4><<<blocks, threads, 0, st>>>(att, dp, rows, T, causal, scale);
    else if (T <= 256)
        softmax_bwd_reg_k<8><<<blocks, threads, 0, st>>>(att, dp, rows, T, causal, scale);
    else if (T <= 512)
        softmax_bwd_reg_k<16><<<blocks, threads, 0, st>>>(att, dp, rows, T, causal, scale);
    else if (T <= 1024)
        softmax_bwd_reg_k<32><<<blocks, threads, 0, st>>>(att, dp, rows, T, causal, scale);
    else
        softmax_bwd_k<<<blocks, threads, 0, st>>>(att, dp, rows, T, causal, scale);
    LAUNCHED("softmax_bwd");
    return DS_OK;
}

static ds_status check_shape(ds_backend *b, const char *op, int64_t B, int64_t T, int64_t C,
                             int64_t H)
{
    if (H <= 0 || C % H != 0)
        return ds_cuda_error(b, DS_ERR_INVALID, "%s: %lld heads do not divide dim %lld", op,
                             (long long)H, (long long)C);
    if (!DIM_OK(3 * C) || !DIM_OK(T) || !DIM_OK(H) || B < 0)
        return ds_cuda_error(b, DS_ERR_UNSUPPORTED, "%s: shape B %lld T %lld C %lld is too large",
                             op, (long long)B, (long long)T, (long long)C);
    return DS_OK;
}

static ds_status attention_fwd32(ds_backend *b, const float *qkv, float *out, float *att, int64_t B, int64_t T,
                                 int64_t C, int64_t H, int causal);
static ds_status attention_bwd32(ds_backend *b, const float *dout, const float *qkv, const float *att, float *dqkv,
                                 int64_t B, int64_t T, int64_t C, int64_t H, int causal);

/* store16: the fused 16-bit kernels (flash16.cu) read and write the 16-bit tensors directly;
 * the other paths run on fp32 copies of the operands (in scratch16, as the paths use scratch
 * themselves), with store16 off meanwhile, and the output is packed, rounded once. */
static ds_status attention16(ds_backend *b, const float *x16, int64_t nx, const float *y16, int64_t ny, int64_t no,
                             float **x32, float **y32, float **o32)
{
    float *f = (float *)ds_cuda_scratch16(b, (size_t)(nx + ny + no) * sizeof(float));
    if (!f)
        return DS_ERR_NOMEM;
    *x32 = f, *y32 = f + nx, *o32 = f + nx + ny;
    ds_status st = ds_cuda_unpack16(b, x16, *x32, nx);
    if (st == DS_OK && y16)
        st = ds_cuda_unpack16(b, y16, *y32, ny);
    return st;
}

extern "C" ds_status ds_cuda_attention_fwd(ds_backend *b, const float *qkv, float *out, float *att,
                                           int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    ds_status st = check_shape(b, "attention_fwd", B, T, C, H);
    if (st != DS_OK || B == 0 || T == 0)
        return st;
    const int s16 = S16(b);
    if (!s16 || ds_cuda_flash16_applies(b, B, T, C, H))
        return attention_fwd32(b, qkv, out, att, B, T, C, H, causal);
    const int64_t M = B * T;
    float *qkv32, *unused, *out32;
    if ((st = attention16(b, qkv, M * 3 * C, NULL, 0, M * C, &qkv32, &unused, &out32)) != DS_OK)
        return st;
    DS_CUDA(b)->store16 = 0;
    st = attention_fwd32(b, qkv32, out32, att, B, T, C, H, causal);
    DS_CUDA(b)->store16 = s16;
    return st != DS_OK ? st : ds_cuda_pack16(b, out32, out, M * C);
}

extern "C" ds_status ds_cuda_attention_bwd(ds_backend *b, const float *dout, const float *qkv,
                                           const float *att, float *dqkv, int64_t B, int64_t T,
                                           int64_t C, int64_t H, int causal)
{
    ds_status st = check_shape(b, "attention_bwd", B, T, C, H);
    if (st != DS_OK || B == 0 || T == 0)
        return st;
    const int s16 = S16(b);
    if (!s16 || ds_cuda_flash16_applies(b, B, T, C, H))
        return attention_bwd32(b, dout, qkv, att, dqkv, B, T, C, H, causal);
    const int64_t M = B * T;
    float *dout32, *qkv32, *dqkv32;
    if ((st = attention16(b, dout, M * C, qkv, M * 3 * C, M * 3 * C, &dout32, &qkv32, &dqkv32)) != DS_OK)
        return st;
    DS_CUDA(b)->store16 = 0;
    st = attention_bwd32(b, dout32, qkv32, att, dqkv32, B, T, C, H, causal);
    DS_CUDA(b)->store16 = s16;
    return st != DS_OK ? st : ds_cuda_pack16(b, dqkv32, dqkv, M * 3 * C);
}

static ds_status attention_fwd32(ds_backend *b, const float *qkv, float *out, float *att, int64_t B, int64_t T,
                                 int64_t C, int64_t H, int causal)
{
    ds_status st;
    if (ds_cuda_flash16_applies(b, B, T, C, H))
        return ds_cuda_flash16_fwd(b, qkv, out, att, B, T, C, H, causal);
    if (ds_cuda_flash_applies(b, B, T, C, H))
        return ds_cuda_flash_fwd(b, qkv, out, att, B, T, C, H, causal);
    cublasHandle_t h = DS_CUDA(b)->blas;
    const int64_t D = C / H, C3 = 3 * C, TT = T * T;
    const float scale = 1.0f / sqrtf((float)D), one = 1.0f, zero = 0.0f;
    const int t = (int)T, d = (int)D, c3 = (int)C3, hh = (int)H;
    /* S^T (s x t) = K (op T on K^T) . Q^T, scaled: row t of att holds q_t . k_s / sqrt(D) */
    for (int64_t bb = 0; bb < B; bb++) {
        const float *base = qkv + bb * T * C3;
        BLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, t, t, d, &scale,
                                           base + C, c3, D, base, c3, D, &zero, att + bb * H * TT, t,
                                           TT, hh));
    }
    if ((st = softmax_fwd(b, att, B * H * T, T, causal)) != DS_OK)
        return st;
    /* O^T (D x t) = V^T . P^T, written into out's head columns (ld C) */
    for (int64_t bb = 0; bb < B; bb++) {
        const float *base = qkv + bb * T * C3;
        BLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, d, t, t, &one, base + 2 * C,
                                           c3, D, att + bb * H * TT, t, TT, &zero, out + bb * T * C,
                                           (int)C, D, hh));
    }
    if (RMODE(b)) /* fuse_round */
        return ds_cuda_round16(b, out, B * T * C, RMODE(b));
    return DS_OK;
}

static ds_status attention_bwd32(ds_backend *b, const float *dout, const float *qkv, const float *att, float *dqkv,
                                 int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    ds_status st;
    if (ds_cuda_flash16_applies(b, B, T, C, H))
        return ds_cuda_flash16_bwd(b, dout, qkv, att, dqkv, B, T, C, H, causal);
    if (ds_cuda_flash_applies(b, B, T, C, H))
        return ds_cuda_flash_bwd(b, dout, qkv, att, dqkv, B, T, C, H, causal);
    cublasHandle_t h = DS_CUDA(b)->blas;
    const int64_t D = C / H, C3 = 3 * C, TT = T * T;
    const float scale = 1.0f / sqrtf((float)D), one = 1.0f, zero = 0.0f;
    const int t = (int)T, d = (int)D, c3 = (int)C3, c = (int)C, hh = (int)H;
    float *dp = (float *)ds_cuda_scratch(b, (size_t)(H * TT) * sizeof(float));
    if (!dp)
        return b->err.code;
    const int64_t rows = H * T;
    for (int64_t bb = 0; bb < B; bb++) {
        const float *base = qkv + bb * T * C3, *g = dout + bb * T * C, *P = att + bb * H * TT;
        float *dbase = dqkv + bb * T * C3;
        /* dV^T (D x s) = dO^T . P */
        BLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, d, t, t, &one, g, c, D, P, t,
                                           TT, &zero, dbase + 2 * C, c3, D, hh));
        /* dP^T (s x t) = V (op T on V^T) . dO^T: row t of dp holds dO_t . v_s */
        BLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, t, t, d, &one, base + 2 * C,
                                           c3, D, g, c, D, &zero, dp, t, TT, hh));
        if ((st = softmax_bwd(b, P, dp, rows, T, causal, scale)) != DS_OK)
            return st;
        /* dQ^T (D x t) = K^T . dS^T */
        BLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, d, t, t, &one, base + C, c3,
                                           D, dp, t, TT, &zero, dbase, c3, D, hh));
        /* dK^T (D x s) = Q^T . dS */
        BLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, d, t, t, &one, base, c3, D,
                                           dp, t, TT, &zero, dbase + C, c3, D, hh));
    }
    if (RMODE(b)) /* fuse_round */
        return ds_cuda_round16(b, dqkv, B * T * 3 * C, RMODE(b));
    return DS_OK;
}
