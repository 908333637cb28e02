/* Fused ("flash") attention on the tensor cores, FlashAttention-2's scheme with TF32 products
 * (nvcuda::wmma m16n16k8, fp32 accumulators): the T x T scores never reach device memory.
 *
 * Opt-in (DS_CUDA_FLASH=1): on an H200 at GPT-2-small shapes (B 8, T 1024, 12 heads of 64) it
 * took 1.49 ms forward and 3.38 ms backward per layer against the materialized path's 0.54 and
 * 1.04 ms (tests/bench_cuda), so it saves memory (4.5 GB there), not time, until it is tuned.
 * Used instead of attention.cu's materialized path when asked for, in fp32 training (bf16 and
 * fp16 training run flash16.cu's kernels), TF32 is allowed (DS_CUDA_TF32, the default), the
 * device is sm_80 or newer and the head size D is 16, 32, 48 or 64. The numbers are those of the materialized path with TF32 GEMMs (the same products,
 * TF32 inputs, fp32 sums, an exact softmax), up to summation order.
 *
 * State between forward and backward (the `att` buffer of the interface, attention_state floats):
 * lse [B,H,T], each row's log-sum-exp of its scaled scores, then o [B,T,C], a copy of the
 * output (for backward's D_t = dO_t . O_t).
 *
 * Forward: a block takes 64 query rows of one (sample, head), 16 per warp, and walks the key
 * tiles of 32 (up to the diagonal when causal): S = Q K^T on the tensor cores into the warp's
 * shared rows, the online softmax (running max m and sum l per row, the output rows rescaled),
 * O += P V. Backward, without atomics (deterministic): one kernel per 64 keys accumulates dV =
 * P^T dO and dK = dS^T Q over the query tiles, another per 64 queries dQ = dS K over the key
 * tiles; both recompute P from lse, and dS = P (dP - D). Fragments are touched only through
 * load/store/fill/mma and element-wise loops, so the code holds for any lane mapping (the CPU
 * emulation gives every lane the whole tile). */
#include <math.h>
#include <mma.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

using namespace nvcuda;

#define FA_WARPS 4
#define FA_ROWS (16 * FA_WARPS) /* query rows (forward, dQ) or key rows (dK, dV) per block */
#define FA_TILE 32              /* keys (forward, dQ) or queries (dK, dV) per inner step */
/* Shared-memory rows are padded by 4 floats so that the 16 rows of a fragment start in
 * different banks (a row of 64 floats is 256 bytes: unpadded, they would all start in bank
 * 0). Fragment pointers stay 32-byte aligned: they start at rows that are multiples of 8. */
#define FA_LD(D) ((D) + 4)      /* row stride of the K, V, Q, dO and output tiles */
#define FA_LDS (FA_TILE + 4)    /* row stride of the per-warp score tiles */

/* wmma's TF32 types exist from sm_80 on; older targets compile the kernels empty (never used:
 * the host checks the device's compute capability) */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define FA_BUILT 1
typedef wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> frag_br;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> frag_bc;
typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> frag_c;

template <class F> __device__ __forceinline__ void to_tf32(F &f)
{
#pragma unroll
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = wmma::__float_to_tf32(f.x[i]);
}
#else
#define FA_BUILT 0
#endif

/* rows [r0, r0 + n) of head h's q, k or v columns (from col) of one sample into sm (row stride
 * FA_LD(D)), 0 beyond T; all threads of the block */
template <int D>
__device__ __forceinline__ void fa_stage(float *sm, const float *base, int64_t C3, int64_t col, int r0, int n, int T)
{
    for (int i = threadIdx.x; i < n * D; i += blockDim.x) {
        const int r = i / D, d = i % D, t = r0 + r;
        sm[r * FA_LD(D) + d] = t < T ? base[(int64_t)t * C3 + col + d] : 0.0f;
    }
}

#if FA_BUILT
/* out (16 x FA_TILE, row-major, ld FA_LDS) = A X^T: A (16 x D) as D/8 fragments, X the FA_TILE
 * rows of D floats at x (row-major, ld FA_LD(D)) */
template <int D> __device__ __forceinline__ void fa_abt(float *out, const frag_a (&a)[D / 8], const float *x)
{
#pragma unroll
    for (int n = 0; n < FA_TILE / 16; n++) {
        frag_c acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int k = 0; k < D / 8; k++) {
            frag_bc xb; /* X^T: (k, n) = X[n][k] */
            wmma::load_matrix_sync(xb, x + 16 * n * FA_LD(D) + 8 * k, FA_LD(D));
            to_tf32(xb);
            wmma::mma_sync(acc, a[k], xb, acc);
        }
        wmma::store_matrix_sync(out + 16 * n, acc, FA_LDS, wmma::mem_row_major);
    }
}

/* acc (16 x D as D/16 fragments) += A Y: A (16 x FA_TILE) at a (row-major, ld FA_LDS), Y the
 * FA_TILE rows of D floats at y (row-major, ld FA_LD(D)) */
template <int D> __device__ __forceinline__ void fa_acc_ay(frag_c (&acc)[D / 16], const float *a, const float *y)
{
    frag_a af[FA_TILE / 8]; /* A once, for every column tile */
#pragma unroll
    for (int k = 0; k < FA_TILE / 8; k++) {
        wmma::load_matrix_sync(af[k], a + 8 * k, FA_LDS);
        to_tf32(af[k]);
    }
#pragma unroll
    for (int n = 0; n < D / 16; n++)
#pragma unroll
        for (int k = 0; k < FA_TILE / 8; k++) {
            frag_br yb;
            wmma::load_matrix_sync(yb, y + 8 * k * FA_LD(D) + 16 * n, FA_LD(D));
            to_tf32(yb);
            wmma::mma_sync(acc[n], af[k], yb, acc[n]);
        }
}

/* this warp's 16 result rows (D/16 fragments) times mul to dst + (row0 + r) * ld, rows < T only,
 * through stage (16 rows, ld FA_LD(D), the warp's own) */
template <int D>
__device__ __forceinline__ void fa_write_rows(float *stage, const frag_c (&f)[D / 16], float *dst, int64_t ld,
                                              int row0, int T, float mul)
{
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::store_matrix_sync(stage + 16 * n, f[n], FA_LD(D), wmma::mem_row_major);
    __syncwarp();
    for (int i = threadIdx.x & 31; i < 16 * D; i += 32) {
        const int r = i / D, d = i % D;
        if (row0 + r < T)
            dst[(int64_t)(row0 + r) * ld + d] = stage[r * FA_LD(D) + d] * mul;
    }
    __syncwarp(); /* stage is free again */
}
#endif

template <int D>
__global__ void __launch_bounds__(32 * FA_WARPS)
    flash_fwd_k(const float *qkv, float *out, float *lse, float *ocopy, int T, int C, int causal, float scale)
{
#if FA_BUILT
    __shared__ __align__(32) float kv[2 * FA_TILE * FA_LD(D)];   /* K tile | V tile; first the Q rows */
    __shared__ __align__(32) float ps[FA_WARPS][16 * FA_LDS];     /* per warp: S, then P */
    __shared__ __align__(32) float os[FA_WARPS][16 * FA_LD(D)];   /* per warp: its output rows */
    __shared__ float mrow[FA_WARPS][16], lrow[FA_WARPS][16];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y, H = gridDim.y, q0 = blockIdx.x * FA_ROWS, row0 = q0 + 16 * w;
    const int64_t C3 = 3 * (int64_t)C;
    const float *base = qkv + (int64_t)b * T * C3;

    fa_stage<D>(kv, base, C3, (int64_t)h * D, q0, FA_ROWS, T);
    __syncthreads();
    frag_a qa[D / 8];
#pragma unroll
    for (int k = 0; k < D / 8; k++) {
        wmma::load_matrix_sync(qa[k], kv + 16 * w * FA_LD(D) + 8 * k, FA_LD(D));
        to_tf32(qa[k]);
    }
    for (int i = lane; i < 16 * FA_LD(D); i += 32)
        os[w][i] = 0.0f;
    if (lane < 16) {
        mrow[w][lane] = -INFINITY;
        lrow[w][lane] = 0.0f;
    }
    __syncthreads(); /* every warp has its Q fragments before kv is overwritten */

    const int r = lane >> 1, half = lane & 1, t = row0 + r; /* lanes 2r, 2r+1: row r, 16 columns each */
    const int kend = causal ? (q0 + FA_ROWS < T ? q0 + FA_ROWS : T) : T;
    float *S = ps[w];
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) {
        fa_stage<D>(kv, base, C3, C + (int64_t)h * D, k0, FA_TILE, T);
        fa_stage<D>(kv + FA_TILE * FA_LD(D), base, C3, 2 * (int64_t)C + (int64_t)h * D, k0, FA_TILE, T);
        __syncthreads();
        if (row0 < T && !(causal && k0 > row0 + 15)) { /* warp-uniform: some pair is unmasked */
            fa_abt<D>(S, qa, kv); /* S = Q K^T */
            __syncwarp();
            /* online softmax of row r over this tile's columns (lane half takes the columns
             * 2j + half: fewer bank conflicts than two halves of the row) */
            float *srow = S + r * FA_LDS + half;
            float mx = -INFINITY;
            for (int j = 0; j < 16; j++) {
                const int s = k0 + 2 * j + half;
                const float v = (s < T && t < T && !(causal && s > t)) ? srow[2 * j] * scale : -INFINITY;
                srow[2 * j] = v;
                mx = fmaxf(mx, v);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float mold = mrow[w][r], mnew = fmaxf(mold, mx);
            const float alpha = mnew == -INFINITY ? 1.0f : expf(mold - mnew);
            float sum = 0.0f;
            for (int j = 0; j < 16; j++) {
                const float p = mnew == -INFINITY ? 0.0f : expf(srow[2 * j] - mnew);
                srow[2 * j] = p;
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            for (int d = half; d < D; d += 2)
                os[w][r * FA_LD(D) + d] *= alpha;
            __syncwarp(); /* both lanes of a row have read mrow before it changes */
            if (!half) {
                mrow[w][r] = mnew;
                lrow[w][r] = lrow[w][r] * alpha + sum;
            }
            __syncwarp();
            frag_c o[D / 16]; /* O += P V */
#pragma unroll
            for (int n = 0; n < D / 16; n++)
                wmma::load_matrix_sync(o[n], os[w] + 16 * n, FA_LD(D), wmma::mem_row_major);
            fa_acc_ay<D>(o, S, kv + FA_TILE * FA_LD(D));
#pragma unroll
            for (int n = 0; n < D / 16; n++)
                wmma::store_matrix_sync(os[w] + 16 * n, o[n], FA_LD(D), wmma::mem_row_major);
        }
        __syncthreads(); /* the tile is used up before the next one is loaded */
    }
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) { /* consecutive lanes, consecutive columns */
        const int rr = i / D, d = i % D, tt = row0 + rr;
        if (tt < T) {
            const float v = os[w][rr * FA_LD(D) + d] / lrow[w][rr];
            const int64_t at = ((int64_t)b * T + tt) * C + (int64_t)h * D + d;
            out[at] = v;
            ocopy[at] = v;
        }
    }
    if (t < T && !half)
        lse[((int64_t)b * H + h) * T + t] = mrow[w][r] + logf(lrow[w][r]);
#endif
}


/* dK and dV of 64 keys (16 per warp), over the query tiles that can see them */
template <int D>
__global__ void __launch_bounds__(32 * FA_WARPS)
    flash_bwd_dkv_k(const float *qkv, const float *dout, const float *lse, const float *di, float *dqkv, int T,
                    int C, int causal, float scale)
{
#if FA_BUILT
    __shared__ __align__(32) float qd[2 * FA_TILE * FA_LD(D)];   /* Q tile | dO tile; first K, V rows */
    __shared__ __align__(32) float pt[FA_WARPS][16 * FA_LDS];        /* per warp: S^T, P^T, then dS^T */
    __shared__ __align__(32) float dpt[FA_WARPS][16 * FA_LDS];       /* per warp: dP^T */
    __shared__ float lq[FA_TILE], dq[FA_TILE];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y, H = gridDim.y, k0 = blockIdx.x * FA_ROWS, row0 = k0 + 16 * w;
    const int64_t C3 = 3 * (int64_t)C;
    const float *base = qkv + (int64_t)b * T * C3, *gbase = dout + (int64_t)b * T * C;
    const float *lrow = lse + ((int64_t)b * H + h) * T, *drow = di + ((int64_t)b * H + h) * T;

    frag_a ka[D / 8], va[D / 8];
    fa_stage<D>(qd, base, C3, C + (int64_t)h * D, k0, FA_ROWS, T);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < D / 8; k++) {
        wmma::load_matrix_sync(ka[k], qd + 16 * w * FA_LD(D) + 8 * k, FA_LD(D));
        to_tf32(ka[k]);
    }
    __syncthreads();
    fa_stage<D>(qd, base, C3, 2 * (int64_t)C + (int64_t)h * D, k0, FA_ROWS, T);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < D / 8; k++) {
        wmma::load_matrix_sync(va[k], qd + 16 * w * FA_LD(D) + 8 * k, FA_LD(D));
        to_tf32(va[k]);
    }
    frag_c dv[D / 16], dk[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++) {
        wmma::fill_fragment(dv[n], 0.0f);
        wmma::fill_fragment(dk[n], 0.0f);
    }
    __syncthreads();

    float *St = pt[w], *dPt = dpt[w];
    const float *Qs = qd, *Os = qd + FA_TILE * FA_LD(D);
    const int qstart = causal ? k0 / FA_TILE * FA_TILE : 0; /* earlier queries see none of these keys */
    for (int q0 = qstart; q0 < T; q0 += FA_TILE) {
        fa_stage<D>(qd, base, C3, (int64_t)h * D, q0, FA_TILE, T);
        for (int i = threadIdx.x; i < FA_TILE * D; i += blockDim.x) {
            const int r = i / D, d = i % D, t = q0 + r;
            qd[FA_TILE * FA_LD(D) + r * FA_LD(D) + d] = t < T ? gbase[(int64_t)t * C + (int64_t)h * D + d] : 0.0f;
        }
        for (int i = threadIdx.x; i < FA_TILE; i += blockDim.x) {
            lq[i] = q0 + i < T ? lrow[q0 + i] : 0.0f;
            dq[i] = q0 + i < T ? drow[q0 + i] : 0.0f;
        }
        __syncthreads();
        if (row0 < T && !(causal && q0 + FA_TILE - 1 < row0)) {
            fa_abt<D>(St, ka, Qs); /* S^T = K Q^T */
            __syncwarp();
            for (int i = lane; i < 16 * FA_TILE; i += 32) { /* P^T */
                const int sr = i / FA_TILE, qc = i % FA_TILE, s = row0 + sr, q = q0 + qc, e = sr * FA_LDS + qc;
                St[e] = (s < T && q < T && !(causal && s > q)) ? expf(St[e] * scale - lq[qc]) : 0.0f;
            }
            __syncwarp();
            fa_acc_ay<D>(dv, St, Os); /* dV += P^T dO */
            fa_abt<D>(dPt, va, Os);   /* dP^T = V dO^T */
            __syncwarp(); /* and every lane has loaded P^T before it becomes dS^T */
            for (int i = lane; i < 16 * FA_TILE; i += 32) {
                const int e = i / FA_TILE * FA_LDS + i % FA_TILE;
                St[e] = St[e] * (dPt[e] - dq[i % FA_TILE]);
            }
            __syncwarp();
            fa_acc_ay<D>(dk, St, Qs); /* dK += dS^T Q */
        }
        __syncthreads();
    }
    /* out through this warp's quarter of qd: dK (scaled), then dV */
    float *dst = dqkv + (int64_t)b * T * C3 + (int64_t)h * D;
    fa_write_rows<D>(qd + 16 * w * FA_LD(D), dk, dst + C, C3, row0, T, scale);
    fa_write_rows<D>(qd + 16 * w * FA_LD(D), dv, dst + 2 * (int64_t)C, C3, row0, T, 1.0f);
#endif
}

/* dQ of 64 queries (16 per warp), over the key tiles they see */
template <int D>
__global__ void __launch_bounds__(32 * FA_WARPS)
    flash_bwd_dq_k(const float *qkv, const float *dout, const float *lse, const float *di, float *dqkv, int T,
                   int C, int causal, float scale)
{
#if FA_BUILT
    __shared__ __align__(32) float kv[2 * FA_TILE * FA_LD(D)];   /* K tile | V tile; first Q, dO rows */
    __shared__ __align__(32) float ps[FA_WARPS][16 * FA_LDS];        /* per warp: S, then dS */
    __shared__ __align__(32) float dps[FA_WARPS][16 * FA_LDS];       /* per warp: dP */
    __shared__ float lr[FA_ROWS], dr[FA_ROWS];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y, H = gridDim.y, q0 = blockIdx.x * FA_ROWS, row0 = q0 + 16 * w;
    const int64_t C3 = 3 * (int64_t)C;
    const float *base = qkv + (int64_t)b * T * C3, *gbase = dout + (int64_t)b * T * C;

    frag_a qa[D / 8], oa[D / 8];
    fa_stage<D>(kv, base, C3, (int64_t)h * D, q0, FA_ROWS, T);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < D / 8; k++) {
        wmma::load_matrix_sync(qa[k], kv + 16 * w * FA_LD(D) + 8 * k, FA_LD(D));
        to_tf32(qa[k]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < FA_ROWS * D; i += blockDim.x) {
        const int r = i / D, d = i % D, t = q0 + r;
        kv[r * FA_LD(D) + d] = t < T ? gbase[(int64_t)t * C + (int64_t)h * D + d] : 0.0f;
    }
    for (int i = threadIdx.x; i < FA_ROWS; i += blockDim.x) {
        const int64_t at = ((int64_t)b * H + h) * T + q0 + i;
        lr[i] = q0 + i < T ? lse[at] : 0.0f;
        dr[i] = q0 + i < T ? di[at] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < D / 8; k++) {
        wmma::load_matrix_sync(oa[k], kv + 16 * w * FA_LD(D) + 8 * k, FA_LD(D));
        to_tf32(oa[k]);
    }
    frag_c dqf[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::fill_fragment(dqf[n], 0.0f);
    __syncthreads();

    float *S = ps[w], *dP = dps[w];
    const float *Ks = kv, *Vs = kv + FA_TILE * FA_LD(D);
    const int kend = causal ? (q0 + FA_ROWS < T ? q0 + FA_ROWS : T) : T;
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) {
        fa_stage<D>(kv, base, C3, C + (int64_t)h * D, k0, FA_TILE, T);
        fa_stage<D>(kv + FA_TILE * FA_LD(D), base, C3, 2 * (int64_t)C + (int64_t)h * D, k0, FA_TILE, T);
        __syncthreads();
        if (row0 < T && !(causal && k0 > row0 + 15)) {
            fa_abt<D>(S, qa, Ks);  /* S = Q K^T */
            fa_abt<D>(dP, oa, Vs); /* dP = dO V^T */
            __syncwarp();
            for (int i = lane; i < 16 * FA_TILE; i += 32) { /* dS = P (dP - D) */
                const int r = i / FA_TILE, c = i % FA_TILE, t = row0 + r, s = k0 + c, e = r * FA_LDS + c;
                const float p = (t < T && s < T && !(causal && s > t)) ? expf(S[e] * scale - lr[16 * w + r]) : 0.0f;
                S[e] = p * (dP[e] - dr[16 * w + r]);
            }
            __syncwarp();
            fa_acc_ay<D>(dqf, S, Ks); /* dQ += dS K */
        }
        __syncthreads();
    }
    fa_write_rows<D>(kv + 16 * w * FA_LD(D), dqf, dqkv + (int64_t)b * T * C3 + (int64_t)h * D, C3, row0, T, scale);
#endif
}

/* ---- host side ------------------------------------------------------------------------------ */

extern "C" int ds_cuda_flash_applies(const ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H)
{
    const ds_cuda *c = DS_CUDA(b);
    if (c->flash != 1 || !c->tf32 || c->gemm16 || c->cc_major < 8 || H <= 0 || C % H != 0)
        return 0;
    const int64_t D = C / H;
    return (D == 16 || D == 32 || D == 48 || D == 64) && B <= 65535 && H <= 65535 && T <= 2147483647LL - FA_ROWS &&
           3 * C <= 2147483647LL;
}

extern "C" int64_t ds_cuda_attention_state(ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    (void)causal;
    return ds_cuda_flash_applies(b, B, T, C, H) || ds_cuda_flash16_applies(b, B, T, C, H) ? B * H * T + B * T * C
                                                                                          : B * H * T * T;
}

#define FA_DISPATCH(D, KERNEL, ...)                                                              \
    switch (D) {                                                                                 \
    case 16: KERNEL<16><<<grid, 32 * FA_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;              \
    case 32: KERNEL<32><<<grid, 32 * FA_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;              \
    case 48: KERNEL<48><<<grid, 32 * FA_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;              \
    default: KERNEL<64><<<grid, 32 * FA_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;              \
    }

extern "C" ds_status ds_cuda_flash_fwd(ds_backend *b, const float *qkv, float *out, float *state, int64_t B,
                                       int64_t T, int64_t C, int64_t H, int causal)
{
    const int D = (int)(C / H);
    const float scale = 1.0f / sqrtf((float)D);
    dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)H, (unsigned)B);
    float *lse = state, *ocopy = state + B * H * T;
    FA_DISPATCH(D, flash_fwd_k, qkv, out, lse, ocopy, (int)T, (int)C, causal, scale);
    LAUNCHED("flash_fwd_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_flash_bwd(ds_backend *b, const float *dout, const float *qkv, const float *state,
                                       float *dqkv, int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    const int D = (int)(C / H);
    const float scale = 1.0f / sqrtf((float)D);
    const float *lse = state, *ocopy = state + B * H * T;
    float *di = (float *)ds_cuda_scratch(b, (size_t)(B * H * T) * sizeof(float));
    if (!di)
        return b->err.code;
    ds_status st = ds_cuda_attn_di(b, dout, ocopy, di, B, T, C, H); /* flash16.cu */
    if (st != DS_OK)
        return st;
    dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)H, (unsigned)B);
    FA_DISPATCH(D, flash_bwd_dkv_k, qkv, dout, lse, di, dqkv, (int)T, (int)C, causal, scale);
    LAUNCHED("flash_bwd_dkv_k");
    FA_DISPATCH(D, flash_bwd_dq_k, qkv, dout, lse, di, dqkv, (int)T, (int)C, causal, scale);
    LAUNCHED("flash_bwd_dq_k");
    return DS_OK;
}
