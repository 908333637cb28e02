/* LayerNorm forward and backward (one warp per row), and deterministic column sums: the weight
 * and bias gradients of LayerNorm and the bias gradient of a linear layer. Column sums go in two
 * launches: per-chunk partials over a fixed partition of the rows, then one thread per column
 * adds the partials in order. No atomics, so the result is the same on every run. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define ROWS_PER_BLOCK 8 /* warps per block, one row each */

/* S: the storage of the activations and of w and bias (cuda_common.cuh, lda/sta). With C a
 * multiple of 8 a lane takes chunks of 8 columns (c8; 16-byte accesses where va, x and y, and
 * vw, w and bias, are aligned: the same sums either way), else columns lane, lane + 32, ... The
 * products that are added are explicit fmaf, so no storage's instance can be contracted
 * differently from another's (an H200 once showed that for implicit ones). */
template <int S>
__global__ void layernorm_fwd_k(const void *x, const void *w, const void *bias, void *y,
                                float *mean, float *rstd, int64_t M, int64_t C, float eps, int rm,
                                int c8, int va, int vw)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= M)
        return;
    const int64_t xr = row * C;
    float s = 0.0f, v = 0.0f, mu, rs;
    if (c8) {
        for (int64_t c = 8 * lane; c < C; c += 256) {
            float xv[8];
            ld8v<S>(x, xr + c, xv, va);
#pragma unroll
            for (int k = 0; k < 8; k++)
                s += xv[k];
        }
        mu = warp_sum(s) / (float)C;
        for (int64_t c = 8 * lane; c < C; c += 256) {
            float xv[8];
            ld8v<S>(x, xr + c, xv, va);
#pragma unroll
            for (int k = 0; k < 8; k++)
                v = fmaf(xv[k] - mu, xv[k] - mu, v);
        }
        rs = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
        for (int64_t c = 8 * lane; c < C; c += 256) {
            float xv[8], wv[8], bv[8];
            ld8v<S>(x, xr + c, xv, va);
            ld8v<S>(w, c, wv, vw);
            ld8v<S>(bias, c, bv, vw);
#pragma unroll
            for (int k = 0; k < 8; k++)
                xv[k] = fmaf((xv[k] - mu) * rs, wv[k], bv[k]);
            st8v<S>(y, xr + c, xv, rm, va);
        }
    } else {
        for (int64_t c = lane; c < C; c += 32)
            s += lda<S>(x, xr + c);
        mu = warp_sum(s) / (float)C;
        for (int64_t c = lane; c < C; c += 32) {
            float d = lda<S>(x, xr + c) - mu;
            v = fmaf(d, d, v);
        }
        rs = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
        for (int64_t c = lane; c < C; c += 32)
            sta<S>(y, xr + c, fmaf((lda<S>(x, xr + c) - mu) * rs, lda<S>(w, c), lda<S>(bias, c)), rm);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

/* dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w*xhat)). With C a multiple of 8 a lane takes
 * chunks of 8 columns (c8: 16-byte accesses where va, the activations, and vw, the weights,
 * are aligned; the sums' order is the same either way). */
template <int S>
__global__ void layernorm_dx_k(const void *dy, const void *x, const void *w, const float *mean,
                               const float *rstd, void *dx, int64_t M, int64_t C, int accumulate, int rm,
                               int c8, int va, int vw)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= M)
        return;
    const int64_t r = row * C;
    const float mu = mean[row], rs = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    if (c8) {
        for (int64_t c = 8 * lane; c < C; c += 256) {
            float xv[8], gv[8], wv[8];
            ld8v<S>(x, r + c, xv, va);
            ld8v<S>(dy, r + c, gv, va);
            ld8v<S>(w, c, wv, vw);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float xhat = (xv[k] - mu) * rs;
                float gw = gv[k] * wv[k];
                sg += gw;
                sgx += gw * xhat;
            }
        }
        sg = warp_sum(sg) / (float)C;
        sgx = warp_sum(sgx) / (float)C;
        for (int64_t c = 8 * lane; c < C; c += 256) {
            float xv[8], gv[8], wv[8], o[8];
            ld8v<S>(x, r + c, xv, va);
            ld8v<S>(dy, r + c, gv, va);
            ld8v<S>(w, c, wv, vw);
            if (accumulate)
                ld8v<S>(dx, r + c, o, va);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float xhat = (xv[k] - mu) * rs;
                float v = rs * (gv[k] * wv[k] - sg - xhat * sgx);
                o[k] = accumulate ? o[k] + v : v;
            }
            st8v<S>(dx, r + c, o, rm, va);
        }
        return;
    }
    for (int64_t c = lane; c < C; c += 32) {
        float xhat = (lda<S>(x, r + c) - mu) * rs;
        float gw = lda<S>(dy, r + c) * lda<S>(w, c);
        sg += gw;
        sgx += gw * xhat;
    }
    sg = warp_sum(sg) / (float)C;
    sgx = warp_sum(sgx) / (float)C;
    for (int64_t c = lane; c < C; c += 32) {
        float xhat = (lda<S>(x, r + c) - mu) * rs;
        float v = rs * (lda<S>(dy, r + c) * lda<S>(w, c) - sg - xhat * sgx);
        sta<S>(dx, r + c, accumulate ? lda<S>(dx, r + c) + v : v, rm);
    }
}

/* Column-sum partials: block (32 columns) x (8 row lanes); block (cx, chunk) sums rows
 * [chunk*rows_per, (chunk+1)*rows_per) of its 32 columns. With x != NULL it also sums
 * dy * xhat (LayerNorm's weight gradient) into part_w. */
#define CS_COLS 32
#define CS_LANES 8
template <int S>
__global__ void colsum_part_k(const void *dy, const void *x, const float *mean,
                              const float *rstd, float *part_b, float *part_w, int64_t M,
                              int64_t C, int64_t rows_per)
{
    __shared__ float sb[CS_LANES][CS_COLS], sw[CS_LANES][CS_COLS];
    const int tx = threadIdx.x % CS_COLS, ty = threadIdx.x / CS_COLS;
    const int64_t c = (int64_t)blockIdx.x * CS_COLS + tx;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per;
    int64_t r1 = r0 + rows_per;
    if (r1 > M)
        r1 = M;
    float ab = 0.0f, aw = 0.0f;
    if (c < C) {
        for (int64_t r = r0 + ty; r < r1; r += CS_LANES) {
            float g = lda<S>(dy, r * C + c);
            ab += g;
            if (x)
                aw += g * ((lda<S>(x, r * C + c) - mean[r]) * rstd[r]);
        }
    }
    sb[ty][tx] = ab;
    sw[ty][tx] = aw;
    __syncthreads();
    if (ty == 0 && c < C) {
        float tb = 0.0f, tw = 0.0f;
        for (int k = 0; k < CS_LANES; k++) {
            tb += sb[k][tx];
            tw += sw[k][tx];
        }
        part_b[(int64_t)blockIdx.y * C + c] = tb;
        if (x)
            part_w[(int64_t)blockIdx.y * C + c] = tw;
    }
}

/* The same with C a multiple of 8: a thread sums 8 consecutive columns (16-byte accesses where
 * va), a block 256 columns x CS_LANES row lanes. */
template <int S>
__global__ void colsum8_part_k(const void *dy, const void *x, const float *mean, const float *rstd,
                               float *part_b, float *part_w, int64_t M, int64_t C, int64_t rows_per, int va)
{
    __shared__ float sb[CS_LANES][256], sw[CS_LANES][256];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int64_t c = (int64_t)blockIdx.x * 256 + 8 * tx;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per;
    int64_t r1 = r0 + rows_per;
    if (r1 > M)
        r1 = M;
    float ab[8] = {0, 0, 0, 0, 0, 0, 0, 0}, aw[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (c < C) {
        for (int64_t r = r0 + ty; r < r1; r += CS_LANES) {
            float g[8];
            ld8v<S>(dy, r * C + c, g, va);
#pragma unroll
            for (int k = 0; k < 8; k++)
                ab[k] += g[k];
            if (x) {
                float xv[8];
                ld8v<S>(x, r * C + c, xv, va);
                const float mu = mean[r], rs = rstd[r];
#pragma unroll
                for (int k = 0; k < 8; k++)
                    aw[k] += g[k] * ((xv[k] - mu) * rs);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
        sb[ty][8 * tx + k] = ab[k];
        sw[ty][8 * tx + k] = aw[k];
    }
    __syncthreads();
    const int64_t cc = (int64_t)blockIdx.x * 256 + threadIdx.x; /* one column per thread */
    if (cc < C) {
        float tb = 0.0f, tw = 0.0f;
        for (int k = 0; k < CS_LANES; k++) {
            tb += sb[k][threadIdx.x];
            tw += sw[k][threadIdx.x];
        }
        part_b[(int64_t)blockIdx.y * C + cc] = tb;
        if (x)
            part_w[(int64_t)blockIdx.y * C + cc] = tw;
    }
}

/* the partials of many chunks: block = 32 columns x 8 lanes, lane l adds chunks l, l+8, ...;
 * then the lanes' sums in order */
__global__ void colsum_final8_k(const float *part_b, const float *part_w, float *db, float *dw,
                                int64_t C, int64_t chunks)
{
    __shared__ float sb[8][32], sw[8][32];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int64_t c = (int64_t)blockIdx.x * 32 + tx;
    float tb = 0.0f, tw = 0.0f;
    if (c < C)
        for (int64_t k = ty; k < chunks; k += 8) {
            tb += part_b[k * C + c];
            if (dw)
                tw += part_w[k * C + c];
        }
    sb[ty][tx] = tb;
    sw[ty][tx] = tw;
    __syncthreads();
    if (ty == 0 && c < C) {
        tb = 0.0f, tw = 0.0f;
        for (int k = 0; k < 8; k++) {
            tb += sb[k][tx];
            tw += sw[k][tx];
        }
        if (db)
            db[c] += tb;
        if (dw)
            dw[c] += tw;
    }
}

__global__ void colsum_final_k(const float *part_b, const float *part_w, float *db, float *dw,
                               int64_t C, int64_t chunks)
{
    GRID_STRIDE(c, C)
    {
        float tb = 0.0f, tw = 0.0f;
        for (int64_t k = 0; k < chunks; k++) {
            tb += part_b[k * C + c];
            if (dw)
                tw += part_w[k * C + c];
        }
        if (db)
            db[c] += tb;
        if (dw)
            dw[c] += tw;
    }
}

/* The row partition of the column sums: about 4 blocks per SM in all for col_blocks blocks
 * across, chunks of at least 64 rows. It depends only on the shape and the GPU, so the order
 * of the sums is fixed. Returns the rows per chunk, *chunks the number of chunks. */
static int64_t row_chunks(ds_backend *b, int64_t M, int64_t col_blocks, int64_t *chunks)
{
    int64_t n = (4 * (int64_t)DS_CUDA(b)->sm_count + col_blocks - 1) / col_blocks, most = (M + 63) / 64;
    n = n > most ? most : n;
    n = n > 65535 ? 65535 : n < 1 ? 1 : n;
    const int64_t rows_per = (M + n - 1) / n;
    *chunks = (M + rows_per - 1) / rows_per;
    return rows_per;
}

/* db += colsum(dy); with x: dw += colsum(dy * xhat). Either of db, dw may be NULL. */
static ds_status colsums(ds_backend *b, const float *dy, const float *x, const float *mean,
                         const float *rstd, float *db, float *dw, int64_t M, int64_t C)
{
    if (M <= 0 || C <= 0 || (!db && !dw))
        return DS_OK;
    const int c8 = C % 8 == 0; /* colsum8_part_k: 256 columns a block */
    const int64_t col_blocks = c8 ? (C + 255) / 256 : (C + CS_COLS - 1) / CS_COLS;
    int64_t chunks;
    const int64_t rows_per = row_chunks(b, M, col_blocks, &chunks);
    float *part = (float *)ds_cuda_scratch(b, (size_t)(2 * chunks * C) * sizeof(float));
    if (!part)
        return b->err.code;
    float *part_b = part, *part_w = part + chunks * C;
    dim3 grid((unsigned)col_blocks, (unsigned)chunks);
    /* dy (and x) are activations: stored as store16 says */
    if (c8) {
        LAUNCH_S(colsum8_part_k, grid, 32 * CS_LANES, 0, dy, x, mean, rstd, part_b, x ? part_w : (float *)NULL, M,
                 C, rows_per, vec8_ok(dy, x));
        colsum_final8_k<<<(unsigned)((C + 31) / 32), 256, 0, STREAM(b)>>>(part_b, x ? part_w : NULL, db,
                                                                          x ? dw : NULL, C, chunks);
        LAUNCHED("colsum_final8_k");
        return DS_OK;
    }
    LAUNCH_S(colsum_part_k, grid, CS_COLS * CS_LANES, 0, dy, x, mean, rstd, part_b, x ? part_w : (float *)NULL, M,
             C, rows_per);
    colsum_final_k<<<grid_for(b, C, 256), 256, 0, STREAM(b)>>>(part_b, x ? part_w : NULL, db,
                                                               x ? dw : NULL, C, chunks);
    LAUNCHED("colsum_final_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_colsum_acc(ds_backend *b, const float *dy, float *dbias, int64_t M,
                                        int64_t N)
{
    return colsums(b, dy, NULL, NULL, NULL, dbias, NULL, M, N);
}

extern "C" ds_status ds_cuda_layernorm_fwd(ds_backend *b, const float *x, const float *w,
                                           const float *bias, float *y, float *mean, float *rstd,
                                           int64_t M, int64_t C, float eps)
{
    if (M <= 0)
        return DS_OK;
    unsigned blocks = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    LAUNCH_S(layernorm_fwd_k, blocks, 32 * ROWS_PER_BLOCK, 0, x, w, bias, y, mean, rstd, M, C, eps, RMODE(b),
             C % 8 == 0, vec8_ok(x, y), vec8_ok(w, bias));
    return DS_OK;
}

extern "C" ds_status ds_cuda_layernorm_bwd(ds_backend *b, const float *dy, const float *x,
                                           const float *w, const float *mean, const float *rstd,
                                           float *dx, float *dw, float *dbias, int64_t M,
                                           int64_t C, int accumulate)
{
    if (M <= 0)
        return DS_OK;
    if (dx) {
        unsigned blocks = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
        LAUNCH_S(layernorm_dx_k, blocks, 32 * ROWS_PER_BLOCK, 0, dy, x, w, mean, rstd, dx, M, C, accumulate,
                 RMODE(b), C % 8 == 0, vec8_ok(dy, x, dx), vec8_ok(w));
    }
    if (dbias && !dw)
        return colsums(b, dy, NULL, NULL, NULL, dbias, NULL, M, C);
    return colsums(b, dy, dw ? x : NULL, mean, rstd, dbias, dw, M, C);
}
