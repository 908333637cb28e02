/* Losses: softmax cross-entropy fused with its gradient (one block per row: an online max/sum
 * pass over the logits, then the gradient pass; the probabilities are never stored), and the
 * squared error. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

#define XENT_THREADS 512

/* running (max, sum of exp(z - max)) pairs, merged */
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2)
{
    if (m2 > m) {
        s = s * expf(m - m2) + s2; /* exp(-inf) = 0 when m is still -inf */
        m = m2;
    } else if (m2 > -INFINITY || s2 != s2) { /* keep a NaN of a part with no finite max */
        s += s2 * expf(m2 - m);
    }
}

#define XENT_LOG2E 1.4426950408889634f

/* n logits into a thread's running (max, sum of exp(z - max)): the sum rescaled once to the
 * values' largest, then one exponential each (ex2 of (v - max) log2 e: three instructions where
 * a branch and expf per value took about a dozen; v - max is exact for the values near the
 * max). A -inf logit adds 0, a NaN propagates into the sum (as on the CPU); a +inf one makes
 * the sum NaN (inf - inf), and so the loss, as the CPU's xent does. */
template <int N> __device__ __forceinline__ void lse_addn(float &mx, float &sum, const float *v)
{
    float cm = v[0];
#pragma unroll
    for (int k = 1; k < N; k++)
        cm = fmaxf(cm, v[k]); /* NaN only if all are */
    if (cm > mx) {
        sum *= ex2((mx - cm) * XENT_LOG2E); /* 0 while mx is -inf */
        mx = cm;
    }
#pragma unroll
    for (int k = 0; k < N; k++)
        sum += v[k] == -INFINITY ? 0.0f : ex2((v[k] - mx) * XENT_LOG2E);
}

/* the threads' running (max, sum) pairs merged over the block, warp by warp in a fixed order (the
 * same bits for a given blockDim): every thread returns with the row's. sm, ss: blockDim / 32
 * floats of shared memory each, rs two. */
__device__ __forceinline__ void xent_block_lse(float &mx, float &sum, float *sm, float *ss, float *rs)
{
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, sum, o);
        lse_merge(mx, sum, m2, s2);
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sm[warp] = mx;
        ss[warp] = sum;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        mx = lane < nw ? sm[lane] : -INFINITY;
        sum = lane < nw ? ss[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, sum, o);
            lse_merge(mx, sum, m2, s2);
        }
        if (lane == 0) {
            rs[0] = mx;
            rs[1] = sum;
        }
    }
    __syncthreads();
    mx = rs[0];
    sum = rs[1];
}

/* eight gradients of the logits v[] at j..j+7 of a row (in place) */
__device__ __forceinline__ void xent_grad8(float (&v)[8], int64_t j, float rmax, float inv, float grad_scale,
                                           int32_t tgt)
{
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float g = ex2((v[k] - rmax) * XENT_LOG2E) * inv;
        v[k] = j + k == tgt ? g - grad_scale : g;
    }
}

/* after a thread's chunks: the row's last V % 8 values one by one (threads 0..), the block's merge
 * into the row's (max, sum), which every thread gets, and the loss (thread 0; the target's logit is
 * read before any gradient is written, so dlogits may be logits). Returns the target. */
template <int S>
__device__ __forceinline__ int32_t xent_row_lse(const void *logits, const int32_t *targets, float *losses, int64_t m,
                                                int64_t z, int64_t V8, int64_t V, float &mx, float &sum, float *sm,
                                                float *ss, float *rs)
{
    for (int64_t j = V8 + threadIdx.x; j < V; j += blockDim.x) {
        const float v = lda<S>(logits, z + j);
        lse_addn<1>(mx, sum, &v);
    }
    const int32_t tgt = targets[m];
    const float zt = threadIdx.x == 0 ? lda<S>(logits, z + tgt) : 0.0f;
    xent_block_lse(mx, sum, sm, ss, rs);
    if (threadIdx.x == 0)
        losses[m] = logf(sum) + mx - zt;
    return tgt;
}

/* the gradients of the row's last V % 8 values */
template <int S>
__device__ __forceinline__ void xent_tail_grad(const void *logits, void *dlogits, int64_t z, int64_t V8, int64_t V,
                                               float rmax, float inv, float grad_scale, int32_t tgt, int rm)
{
    for (int64_t j = V8 + threadIdx.x; j < V; j += blockDim.x) {
        float g = ex2((lda<S>(logits, z + j) - rmax) * XENT_LOG2E) * inv;
        sta<S>(dlogits, z + j, j == tgt ? g - grad_scale : g, rm);
    }
}

/* S: the activations' storage (cuda_common.cuh, lda/sta). A row's logits go in chunks of 8
 * consecutive values, chunk c to thread c % blockDim, then the last V % 8 one by one (threads 0..);
 * with vec (V a multiple of 8, both tensors 16-byte aligned) a chunk is one or two 16-byte
 * loads. The order of the sums depends on V only, so both storages give the same bits. The
 * gradient pass reads the row again. */
template <int S>
__global__ void xent_k(const void *logits, const int32_t *targets, float *losses, void *dlogits,
                       float grad_scale, int64_t V, int rm, int vec)
{
    __shared__ float sm[XENT_THREADS / 32], ss[XENT_THREADS / 32], rs[2];
    const int64_t m = blockIdx.x, z = m * V, V8 = V / 8 * 8;
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t j = 8 * (int64_t)threadIdx.x; j < V8; j += 8 * (int64_t)blockDim.x) {
        float v[8];
        ld8v<S>(logits, z + j, v, vec);
        lse_addn<8>(mx, sum, v);
    }
    const int32_t tgt = xent_row_lse<S>(logits, targets, losses, m, z, V8, V, mx, sum, sm, ss, rs);
    if (!dlogits)
        return;
    const float inv = grad_scale / sum;
    for (int64_t j = 8 * (int64_t)threadIdx.x; j < V8; j += 8 * (int64_t)blockDim.x) {
        float v[8];
        ld8v<S>(logits, z + j, v, vec);
        xent_grad8(v, j, mx, inv, grad_scale, tgt);
        st8v<S>(dlogits, z + j, v, rm, vec);
    }
    xent_tail_grad<S>(logits, dlogits, z, V8, V, mx, inv, grad_scale, tgt, rm);
}

/* xent_k for 16-bit logits with vec, reading each row once: a thread's chunks (at most NC) stay
 * in registers, 16 bytes each, from the first pass to the gradient pass. The same chunks to the
 * same threads in the same order, so the same bits as xent_k. One block per SM at 512 threads
 * (NC 16: 64 registers of logits); all of a row's loads are issued before the first sum. */
template <int S, int NC>
__global__ void __launch_bounds__(XENT_THREADS) xent_rows_k(const void *logits, const int32_t *targets,
                                                           float *losses, void *dlogits, float grad_scale,
                                                           int64_t V)
{
    __shared__ float sm[XENT_THREADS / 32], ss[XENT_THREADS / 32], rs[2];
    const int64_t m = blockIdx.x, z = m * V, V8 = V / 8 * 8, step = 8 * (int64_t)blockDim.x;
    const unsigned short *row = (const unsigned short *)logits + z;
    uint4 q[NC];
#pragma unroll
    for (int i = 0; i < NC; i++) {
        const int64_t j = 8 * (int64_t)threadIdx.x + i * step;
        if (j < V8)
            q[i] = *(const uint4 *)(row + j);
    }
    float mx = -INFINITY, sum = 0.0f;
#pragma unroll
    for (int i = 0; i < NC; i++) {
        if (8 * (int64_t)threadIdx.x + i * step < V8) {
            float v[8];
            unpack8<S>(q[i], v);
            lse_addn<8>(mx, sum, v);
        }
    }
    const int32_t tgt = xent_row_lse<S>(logits, targets, losses, m, z, V8, V, mx, sum, sm, ss, rs);
    if (!dlogits)
        return;
    const float inv = grad_scale / sum;
    uint4 *drow = (uint4 *)((unsigned short *)dlogits + z);
#pragma unroll
    for (int i = 0; i < NC; i++) {
        const int64_t j = 8 * (int64_t)threadIdx.x + i * step;
        if (j < V8) {
            float v[8];
            unpack8<S>(q[i], v);
            xent_grad8(v, j, mx, inv, grad_scale, tgt);
            drow[j / 8] = pack8<S>(v);
        }
    }
    xent_tail_grad<S>(logits, dlogits, z, V8, V, mx, inv, grad_scale, tgt, 0);
}

template <int S, int NC>
static void xent_rows_launch(ds_backend *b, unsigned M, int threads, const void *logits, const int32_t *targets,
                             float *losses, void *dlogits, float grad_scale, int64_t V)
{
    xent_rows_k<S, NC><<<M, threads, 0, STREAM(b)>>>(logits, targets, losses, dlogits, grad_scale, V);
}

/* xent_rows_k for b's 16-bit storage with room for nc chunks per thread (4, 8 or 16) */
template <int NC>
static void xent_rows_s(ds_backend *b, unsigned M, int threads, const void *logits, const int32_t *targets,
                        float *losses, void *dlogits, float grad_scale, int64_t V)
{
    if (S16(b) == DS_ROUND_BF16)
        xent_rows_launch<DS_ROUND_BF16, NC>(b, M, threads, logits, targets, losses, dlogits, grad_scale, V);
    else
        xent_rows_launch<DS_ROUND_FP16, NC>(b, M, threads, logits, targets, losses, dlogits, grad_scale, V);
}

#define MSE_THREADS 256
template <int S>
__global__ void mse_k(const void *y, const float *target, float *losses, void *dy,
                      float grad_scale, int64_t N, int rm)
{
    __shared__ float part[MSE_THREADS / 32];
    const int64_t m = blockIdx.x;
    const float *t = target + m * N;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
        float d = lda<S>(y, m * N + j) - t[j];
        s += d * d;
        if (dy)
            sta<S>(dy, m * N + j, 2.0f * d * grad_scale, rm);
    }
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
        s = warp_sum(s);
        if (threadIdx.x == 0)
            losses[m] = s;
    }
}

extern "C" ds_status ds_cuda_xent_fwd(ds_backend *b, const float *logits, const int32_t *targets,
                                      float *losses, float *dlogits, float grad_scale, int64_t M,
                                      int64_t V)
{
    if (M <= 0)
        return DS_OK;
    if (M > 2147483647LL)
        return ds_cuda_error(b, DS_ERR_UNSUPPORTED, "xent: %lld rows is too many", (long long)M);
    const int threads = V >= 4096 ? XENT_THREADS : 128, vec = V % 8 == 0 && vec8_ok(logits, dlogits);
    const int64_t per = (V / 8 + threads - 1) / threads; /* chunks of 8 per thread */
    if (S16(b) && vec && DS_CUDA(b)->xent_rows && per <= 16) {
        if (per <= 4)
            xent_rows_s<4>(b, (unsigned)M, threads, logits, targets, losses, dlogits, grad_scale, V);
        else if (per <= 8)
            xent_rows_s<8>(b, (unsigned)M, threads, logits, targets, losses, dlogits, grad_scale, V);
        else
            xent_rows_s<16>(b, (unsigned)M, threads, logits, targets, losses, dlogits, grad_scale, V);
        LAUNCHED("xent_rows_k");
        return DS_OK;
    }
    LAUNCH_S(xent_k, (unsigned)M, threads, 0, logits, targets, losses, dlogits, grad_scale, V, RMODE(b), vec);
    return DS_OK;
}

extern "C" ds_status ds_cuda_mse_fwd(ds_backend *b, const float *y, const float *target,
                                     float *losses, float *dy, float grad_scale, int64_t M,
                                     int64_t N)
{
    if (M <= 0)
        return DS_OK;
    if (M > 2147483647LL)
        return ds_cuda_error(b, DS_ERR_UNSUPPORTED, "mse: %lld rows is too many", (long long)M);
    int threads = N >= 1024 ? MSE_THREADS : 64;
    LAUNCH_S(mse_k, (unsigned)M, threads, 0, y, target, losses, dy, grad_scale, N, RMODE(b));
    return DS_OK;
}
