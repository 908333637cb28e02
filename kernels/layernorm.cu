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
    /* the mean of the row shifted by its first value (as the CPU's ln_fwd_row): exact for a
     * constant row, whose output is then the bias */
    const float x0 = lda<S>(x, xr);
    float s = 0.0f, v = 0.0f, mu, rs;
    if (c8) {
        for (int64_t c = 8 * lane; c < C; c += 256) {
            float xv[8];
            ld8v<S>(x, xr + c, xv, va);
#pragma unroll
            for (int k = 0; k < 8; k++)
                s += xv[k] - x0;
        }
        mu = x0 + warp_sum(s) / (float)C;
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
            s += lda<S>(x, xr + c) - x0;
        mu = x0 + warp_sum(s) / (float)C;
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

/* The forward for C a multiple of 8 up to 1024: as layernorm_fwd_k's c8 path (the same sums in
 * the same order, so the same bits), with a lane's up to 4 chunks of 8 values of x read once
 * into registers instead of once per pass. */
template <int S>
__global__ void layernorm_fwd8_k(const void *x, const void *w, const void *bias, void *y, float *mean, float *rstd,
                                 int64_t M, int64_t C, float eps, int rm, int va, int vw)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= M)
        return;
    const int64_t xr = row * C;
    const float x0 = lda<S>(x, xr);
    float xv[4][8], s = 0.0f, v = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (8 * lane + 256 * j < C) {
            ld8v<S>(x, xr + 8 * lane + 256 * j, xv[j], va);
#pragma unroll
            for (int k = 0; k < 8; k++)
                s += xv[j][k] - x0;
        }
    const float mu = x0 + warp_sum(s) / (float)C;
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (8 * lane + 256 * j < C) {
#pragma unroll
            for (int k = 0; k < 8; k++)
                v = fmaf(xv[j][k] - mu, xv[j][k] - mu, v);
        }
    const float rs = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int64_t c = 8 * lane + 256 * j;
        if (c < C) {
            float wv[8], bv[8];
            ld8v<S>(w, c, wv, vw);
            ld8v<S>(bias, c, bv, vw);
#pragma unroll
            for (int k = 0; k < 8; k++)
                xv[j][k] = fmaf((xv[j][k] - mu) * rs, wv[k], bv[k]);
            st8v<S>(y, xr + c, xv[j], rm, va);
        }
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

/* LayerNorm's input gradient at the 8 columns c.. of the row at r, from the row's mean(g w) (sg)
 * and mean(g w xhat) (sgx): dx = rstd (g w - sg - xhat sgx), added to dx's values with
 * accumulate; every product that is added is an explicit fmaf (the same rounding in every
 * storage's instance). */
template <int S>
__device__ __forceinline__ void ln_dx8(const void *dy, const void *x, const void *w, void *dx, int64_t r, int64_t c,
                                       float mu, float rs, float sg, float sgx, int accumulate, int rm, int va,
                                       int vw)
{
    float xv[8], gv[8], wv[8], o[8];
    ld8v<S>(x, r + c, xv, va);
    ld8v<S>(dy, r + c, gv, va);
    ld8v<S>(w, c, wv, vw);
    if (accumulate)
        ld8v<S>(dx, r + c, o, va);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float t = fmaf(-((xv[k] - mu) * rs), sgx, fmaf(gv[k], wv[k], -sg));
        o[k] = accumulate ? fmaf(rs, t, o[k]) : rs * t;
    }
    st8v<S>(dx, r + c, o, rm, va);
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
        for (int64_t c = 8 * lane; c < C; c += 256)
            ln_dx8<S>(dy, x, w, dx, r, c, mu, rs, sg, sgx, accumulate, rm, va, vw);
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

/* LayerNorm's whole backward in one pass over the rows, for C a multiple of 8 up to 1024 with dx,
 * dw and dbias all asked for (every LayerNorm of a transformer): a block takes LNB_ROWS rows, a
 * warp every 8th of them, reading each row twice (its two sums, then dx: the second time from
 * L1) as layernorm_dx_k does; a lane keeps its up to NCH chunks of 8 columns' sums of dy and
 * dy * xhat across its rows in registers, which the block then adds warp after warp into one
 * partial per block (part_b, part_w: [blocks][C]) for colsum_lanes_k<32>. Against layernorm_dx_k
 * and the column-sum kernels: dy and x come from memory once instead of twice, and one launch
 * fewer. Every sum's order depends on the shape only; every product that is added is an
 * explicit fmaf (one rounding, whatever the storage's instance). */
#define LNB_ROWS 32
#define LNB_CMAX 1024
/* NCH: chunks of 8 columns per lane (C <= 256 NCH), so that registers are held for those only:
 * a lane's two column sums, 16 NCH floats; up to 128 registers, two blocks of 8 warps per SM. */
template <int S, int NCH>
__device__ __forceinline__ void layernorm_bwd8(const void *dy, const void *x, const void *w, const float *mean,
                                               const float *rstd, void *dx, float *part_b, float *part_w,
                                               int64_t M, int64_t C, int accumulate, int rm, int va, int vw)
{
    __shared__ float sh[ROWS_PER_BLOCK][LNB_CMAX];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int64_t r0 = (int64_t)blockIdx.x * LNB_ROWS, r1 = r0 + LNB_ROWS < M ? r0 + LNB_ROWS : M;
    float ab[NCH][8], aw[NCH][8];
#pragma unroll
    for (int j = 0; j < NCH; j++)
#pragma unroll
        for (int k = 0; k < 8; k++)
            ab[j][k] = aw[j][k] = 0.0f;
    for (int64_t row = r0 + wid; row < r1; row += ROWS_PER_BLOCK) {
        const int64_t r = row * C;
        const float mu = mean[row], rs = rstd[row];
        float sg = 0.0f, sgx = 0.0f;
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int64_t c = 8 * lane + 256 * j;
            if (c < C) {
                float xh[8], gv[8], wv[8];
                ld8v<S>(x, r + c, xh, va);
                ld8v<S>(dy, r + c, gv, va);
                ld8v<S>(w, c, wv, vw);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    xh[k] = (xh[k] - mu) * rs;
                    const float gw = gv[k] * wv[k]; /* an operand of fmaf only: never contracted */
                    sg = fmaf(gv[k], wv[k], sg);
                    sgx = fmaf(gw, xh[k], sgx);
                    ab[j][k] += gv[k];
                    aw[j][k] = fmaf(gv[k], xh[k], aw[j][k]);
                }
            }
        }
        sg = warp_sum(sg) / (float)C;
        sgx = warp_sum(sgx) / (float)C;
        /* the row again (from L1: this warp just read it) */
#pragma unroll
        for (int j = 0; j < NCH; j++)
            if (8 * lane + 256 * j < C)
                ln_dx8<S>(dy, x, w, dx, r, 8 * lane + 256 * j, mu, rs, sg, sgx, accumulate, rm, va, vw);
    }
    /* the warps' column sums, added in warp order */
    for (int pass = 0; pass < 2; pass++) {
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int c = 8 * lane + 256 * j;
            if (c < C) {
#pragma unroll
                for (int k = 0; k < 8; k++)
                    sh[wid][c + k] = pass ? aw[j][k] : ab[j][k];
            }
        }
        __syncthreads();
        float *part = pass ? part_w : part_b;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float t = 0.0f;
            for (int q = 0; q < ROWS_PER_BLOCK; q++)
                t += sh[q][c];
            part[(int64_t)blockIdx.x * C + c] = t;
        }
        __syncthreads();
    }
}

template <int S>
__global__ void __launch_bounds__(256, 2)
    layernorm_bwd8c3_k(const void *dy, const void *x, const void *w, const float *mean, const float *rstd, void *dx,
                       float *part_b, float *part_w, int64_t M, int64_t C, int accumulate, int rm, int va, int vw)
{
    layernorm_bwd8<S, 3>(dy, x, w, mean, rstd, dx, part_b, part_w, M, C, accumulate, rm, va, vw);
}

template <int S>
__global__ void __launch_bounds__(256, 2)
    layernorm_bwd8c4_k(const void *dy, const void *x, const void *w, const float *mean, const float *rstd, void *dx,
                       float *part_b, float *part_w, int64_t M, int64_t C, int accumulate, int rm, int va, int vw)
{
    layernorm_bwd8<S, 4>(dy, x, w, mean, rstd, dx, part_b, part_w, M, C, accumulate, rm, va, vw);
}

/* db += the column sums of the partials part_b [chunks][C], dw += part_w's (either may be NULL):
 * block = 32 columns x LANES lanes, lane l adds chunks l, l + LANES, ...; then the lanes' sums
 * in order. LANES 8 after the column-sum kernels' partials, 32 after layernorm_bwd8's (more
 * chunks). */
template <int LANES>
__global__ void __launch_bounds__(32 * LANES)
    colsum_lanes_k(const float *part_b, const float *part_w, float *db, float *dw, int64_t C, int64_t chunks)
{
    __shared__ float sb[LANES][33], sw[LANES][33];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int64_t c = (int64_t)blockIdx.x * 32 + tx;
    float tb = 0.0f, tw = 0.0f;
    if (c < C)
        for (int64_t k = ty; k < chunks; k += LANES) {
            tb += part_b[k * C + c];
            if (dw)
                tw += part_w[k * C + c];
        }
    sb[ty][tx] = tb;
    sw[ty][tx] = tw;
    __syncthreads();
    if (ty == 0 && c < C) {
        tb = 0.0f, tw = 0.0f;
        for (int k = 0; k < LANES; k++) {
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
        colsum_lanes_k<8><<<(unsigned)((C + 31) / 32), 256, 0, STREAM(b)>>>(part_b, x ? part_w : NULL, db,
                                                                            x ? dw : NULL, C, chunks);
        LAUNCHED("colsum_lanes_k<8>");
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
    if (C % 8 == 0 && C <= LNB_CMAX)
        LAUNCH_S(layernorm_fwd8_k, blocks, 32 * ROWS_PER_BLOCK, 0, x, w, bias, y, mean, rstd, M, C, eps, RMODE(b),
                 vec8_ok(x, y), vec8_ok(w, bias));
    else
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
    if (dx && dw && dbias && C % 8 == 0 && C > 0 && C <= LNB_CMAX) {
        const int64_t chunks = (M + LNB_ROWS - 1) / LNB_ROWS;
        if (chunks > 2147483647)
            return ds_cuda_error(b, DS_ERR_UNSUPPORTED, "layernorm_bwd: %lld rows exceed the grid", (long long)M);
        float *part = (float *)ds_cuda_scratch(b, (size_t)(2 * chunks * C) * sizeof(float));
        if (!part)
            return b->err.code;
        if (C <= 768)
            LAUNCH_S(layernorm_bwd8c3_k, (unsigned)chunks, 32 * ROWS_PER_BLOCK, 0, dy, x, w, mean, rstd, dx, part,
                     part + chunks * C, M, C, accumulate, RMODE(b), vec8_ok(dy, x, dx), vec8_ok(w));
        else
            LAUNCH_S(layernorm_bwd8c4_k, (unsigned)chunks, 32 * ROWS_PER_BLOCK, 0, dy, x, w, mean, rstd, dx, part,
                     part + chunks * C, M, C, accumulate, RMODE(b), vec8_ok(dy, x, dx), vec8_ok(w));
        colsum_lanes_k<32><<<(unsigned)((C + 31) / 32), 1024, 0, STREAM(b)>>>(part, part + chunks * C, dbias, dw,
                                                                              C, chunks);
        LAUNCHED("colsum_lanes_k<32>");
        return DS_OK;
    }
    if (dx) {
        unsigned blocks = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
        LAUNCH_S(layernorm_dx_k, blocks, 32 * ROWS_PER_BLOCK, 0, dy, x, w, mean, rstd, dx, M, C, accumulate,
                 RMODE(b), C % 8 == 0, vec8_ok(dy, x, dx), vec8_ok(w));
    }
    if (dbias && !dw)
        return colsums(b, dy, NULL, NULL, NULL, dbias, NULL, M, C);
    return colsums(b, dy, dw ? x : NULL, mean, rstd, dbias, dw, M, C);
}
