/* Fused ("flash") attention for bf16 and fp16 training, FlashAttention-2's scheme on the 16-bit
 * tensor cores: mma.sync m16n8k16 with fp32 accumulators, issued through inline PTX so that the
 * fragments' layout is known (PTX ISA, "Matrix Fragments for mma.m16n8k16") and the scores, the
 * softmax and the probabilities stay in registers; the T x T scores never reach memory.
 *
 * Used when the backend multiplies in 16-bit (set_precision: bf16 or fp16 training, where q, k,
 * v and the output gradient are already 16-bit values: the engine rounds them), the device is
 * sm_80 or newer, the head size D is 16, 32, 48, 64 or 128, and DS_CUDA_FLASH is not 0. The
 * probabilities P and dS = P (dP - D) are rounded to the 16-bit format before their products
 * (as in FlashAttention and PyTorch's SDPA); every sum is fp32.
 *
 * Fragment layout (lane = 4 g + c, g = lane / 4, c = lane % 4; two 16-bit values per register,
 * the lower index in the low half):
 *   A 16 x 16 (row major): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
 *   B 16 x 8  (col major): b0 = (k 2c..2c+1, n g), b1 = (k 2c+8.., n g)
 *   C 16 x 8  (fp32):      c0, c1 = (g, 2c), (g, 2c+1); c2, c3 = (g+8, 2c), (g+8, 2c+1)
 * Two neighbouring C tiles (n 0..7 and 8..15) hold exactly an A fragment's elements, so the
 * probabilities of S = Q K^T become the A operand of P V without leaving the registers. Tiles
 * of K, V, Q and dO sit in shared memory row-major ([row][d]), and B operands are read from them
 * by ldmatrix, four 8 x 8 matrices (the b0, b1 of two neighbouring n tiles) per instruction: for
 * B = X^T (S = Q K^T, dP = dO V^T) the words are pairs along X's rows, as stored; for B = Y (P V,
 * dS K, ...) pairs along Y's columns, which ldmatrix's .trans form gathers from the row-major
 * tile. Rows are padded by 8 values: the 8 rows of one 8 x 8 matrix fall in different banks,
 * and every row starts 16-byte aligned as ldmatrix requires.
 *
 * State between forward and backward: as flash_attention.cu's (lse [B,H,T] in natural log, then
 * a copy of the output [B,T,C] for D_t = dO_t . O_t). Forward: a block takes 64 query rows of
 * one (sample, head), 16 per warp, and walks key tiles of 64 (up to the diagonal when causal),
 * with the online softmax in registers. Backward, without atomics (deterministic): a kernel per
 * 64 keys accumulates dV = P^T dO and dK = dS^T Q over the query tiles, one per 64 queries dQ =
 * dS K over the key tiles; both recompute P from lse.
 *
 * Activations (q, k, v in qkv, the output, dO and dqkv) are 16-bit values when the backend
 * stores them so (store16, template parameter A16): the kernels then load 32-bit words of two
 * values and write rounded pairs, with no conversion, and copy their tiles straight from qkv and
 * dO (16-byte chunks of a head's row). Otherwise (fp32 values of the format, or 16-bit ones not
 * 16-byte aligned) a packing pass first writes each head's rows as 16-bit values [B,H,T,D], and
 * the tiles come from there; the kernels read either through an f16_src. The output copy kept
 * for D_t is fp32 either way. */
#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

#ifndef __CUDACC__
#include <mma.h> /* the CPU emulation's emu_mma_m16n8k16 */
#endif

#define F16_WARPS 4
#define F16_ROWS 64                              /* query (forward, dQ) or key (dK, dV) rows per block */
#define F16_IT(D) ((D) <= 64 ? 64 : 32)          /* queries (dK, dV) or keys (dQ) per backward step */
#define F16_LD(n) ((n) + 8)                      /* shared-memory row stride, in 16-bit values */
/* Blocks per SM the register allocation must allow (__launch_bounds__' minimum). In the sm_90
 * build, 4 forward (128 registers) and 3 backward (168) up to head size 64, for 16 and 12
 * resident warps per SM where ptxas alone took 130, 174 and 168 registers (12, 8 and 12
 * warps): 4 to 12 bytes spilled, a word reloaded once per tile at most. Head size 128 would
 * spill in its loops, and the sm_80 build spills more (64 bytes in dK/dV), so no minimum there
 * (nor for GPUs after Hopper, which JIT-compile the sm_90 PTX: not measured). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ / 100 == 9
#define F16_FWD_BLOCKS(D) ((D) <= 64 ? 4 : 1)
#define F16_BWD_BLOCKS(D) ((D) <= 64 ? 3 : 1)
#else /* sm_80, and newer GPUs (sm_100, sm_120: other register files and shared memory) through the sm_90 PTX */
#define F16_FWD_BLOCKS(D) 1
#define F16_BWD_BLOCKS(D) 1
#endif

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define F16_BUILT 1
#else
#define F16_BUILT 0 /* older targets compile the kernels empty; the host never picks them there */
#endif

/* the 16 bits of f in the format (BF: bfloat16, else IEEE half), rounded to nearest even */
template <int BF> __device__ __forceinline__ uint32_t f16bits(float f)
{
#ifdef __CUDACC__
    return BF ? (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(f)) : (uint32_t)__half_as_ushort(__float2half_rn(f));
#else
    return BF ? (uint32_t)__float2bfloat16_rn(f).x : (uint32_t)__float2half_rn(f).x;
#endif
}

template <int BF> __device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    return f16bits<BF>(lo) | (f16bits<BF>(hi) << 16);
}

/* c += a b: one warp-wide m16n8k16 product */
template <int BF>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (BF)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif !defined(__CUDACC__)
    emu_mma_m16n8k16(c, a, b0, b1, BF);
#else
    (void)c, (void)a, (void)b0, (void)b1;
#endif
}

/* the 32-bit word of two 16-bit values at p[i], p[i+1] (4-byte aligned) */
__device__ __forceinline__ uint32_t word(const uint16_t *p, int i) { return *(const uint32_t *)(p + i); }

/* Four 8 x 8 matrices of 16-bit values from shared memory in one warp-wide instruction
 * (ldmatrix .x4): lane l gives the address of row l % 8 of matrix l / 8 (16-byte aligned: 8
 * values); every lane gets in r[j] the word of matrix j at row lane / 4, values 2 (lane % 4) and
 * the next -- what word() would read there, a B fragment register -- for a quarter of the
 * instructions (and of the shared-memory requests) of four word() reads per lane. TR (.trans):
 * each matrix is read transposed, so lane l gets the values at rows 2 (l % 4) and 2 (l % 4) + 1
 * of column l / 4: the B fragment of a product by Y (pairs along Y's rows k, column n) from Y
 * stored row-major. */
template <int TR> __device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const uint16_t *sm)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned a = (unsigned)__cvta_generic_to_shared(sm);
    if (TR)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#elif !defined(__CUDACC__)
    emu_ldmatrix_x4(r, sm, TR);
#else
    (void)r, (void)sm;
#endif
}

/* This lane's row address offset, in values, for ldsm4<0> reading the B fragments of two
 * neighbouring n tiles (8 rows each) of a row-major tile of stride ld, columns k0 .. k0+15:
 * matrices 0, 1 are tile n's columns k0.., k0+8.., matrices 2, 3 tile n+1's. So r[0], r[1] are
 * b0, b1 of tile n and r[2], r[3] of tile n+1. */
__device__ __forceinline__ int ldsm_off(int lane, int ld)
{
    const int j = lane >> 3, i = lane & 7;
    return (8 * (j >> 1) + i) * ld + 8 * (j & 1);
}

/* This lane's row address offset for ldsm4<1> reading the B fragments of two neighbouring n tiles
 * (columns n0.. n0+15) of Y rows k0 .. k0+15, Y row-major of stride ld: matrices 0, 1 are rows
 * k0.., k0+8.. of tile n, matrices 2, 3 of tile n+1; so again r[0], r[1] are b0, b1 of tile n
 * and r[2], r[3] of tile n+1. */
__device__ __forceinline__ int ldsmt_off(int lane, int ld)
{
    const int j = lane >> 3, i = lane & 7;
    return (8 * (j & 1) + i) * ld + 8 * (j >> 1);
}

/* An A fragment of rows r, r+8 of a row-major activation matrix m (element m0 is row 0, column
 * 0; row stride ld) from global memory, columns k0.. k0+15; rows at or past T read as 0. A16: m
 * holds 16-bit values of the format (store16), read as 32-bit words of two (offsets are even:
 * ld, k0 and the head's column are); else fp32 values of the format, converted. */
template <int BF, int A16>
__device__ __forceinline__ void frag_a_global(uint32_t (&a)[4], const void *m, int64_t m0, int64_t ld, int r, int T,
                                              int k0, int c)
{
    const int64_t ia = m0 + (int64_t)r * ld + k0 + 2 * c, ib = ia + 8 * ld;
    const bool oka = r < T, okb = r + 8 < T;
    if (A16) {
        const uint16_t *h = (const uint16_t *)m;
        a[0] = oka ? word(h + ia, 0) : 0u;
        a[1] = okb ? word(h + ib, 0) : 0u;
        a[2] = oka ? word(h + ia + 8, 0) : 0u;
        a[3] = okb ? word(h + ib + 8, 0) : 0u;
    } else {
        const float *ra = (const float *)m + ia, *rb = (const float *)m + ib;
        a[0] = oka ? pack2<BF>(ra[0], ra[1]) : 0u;
        a[1] = okb ? pack2<BF>(rb[0], rb[1]) : 0u;
        a[2] = oka ? pack2<BF>(ra[8], ra[9]) : 0u;
        a[3] = okb ? pack2<BF>(rb[8], rb[9]) : 0u;
    }
}

/* 16 bytes to shared memory from global memory without passing through registers (cp.async:
 * the copy runs while the warp goes on): n (16 or 0) bytes from g, the rest zeros; g must be a
 * valid address either way. cp_commit closes this thread's group of copies, cp_wait<N> waits
 * for all but its newest N committed groups. The CPU emulation reads g at once and writes sm
 * only at the wait that covers the copy, so a missing or too lenient wait shows there. */
__device__ __forceinline__ void cp16n(uint16_t *sm, const uint16_t *g, int n)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned a = (unsigned)__cvta_generic_to_shared(sm);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(n) : "memory");
#elif !defined(__CUDACC__)
    emu_cp_async(sm, g, n);
#else
    (void)sm, (void)g, (void)n;
#endif
}

__device__ __forceinline__ void cp_commit(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
    emu_cp_commit();
#endif
}

template <int N> __device__ __forceinline__ void cp_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif !defined(__CUDACC__)
    emu_cp_wait(N);
#endif
}

/* Where a head's rows of 16-bit values are: row t of (sample b, head h) at p + b sb + h sh + t
 * ld, every row 16-byte aligned. Straight in qkv or dO under store16 (sb T ld, sh D, ld 3C or
 * C), else in the packing pass's [B,H,T,D]. */
struct f16_src {
    const uint16_t *p;
    int64_t sb, sh, ld;
};

__device__ __forceinline__ const uint16_t *f16_head(const f16_src &s, int b, int h)
{
    return s.p + (int64_t)b * s.sb + (int64_t)h * s.sh;
}

/* Rows r0 .. r0+N-1 of a head (row stride ld) into sm (stride F16_LD(D)); rows at or past T
 * are zeros (a zero key or value adds nothing, and its product is never NaN), by cp.async's
 * zero fill from the head's first row, without a branch. Chunk i = thread + 128 j of the tile
 * is row i / (D/8), 8 columns from 8 (i % (D/8)); where D/8 divides the 128 threads (every head
 * size but 48) a thread's chunks are in one column, RS rows apart, and the addresses step by a
 * constant. */
template <int N, int D>
__device__ __forceinline__ void stage_rm(uint16_t *sm, const uint16_t *g, int64_t ld, int r0, int T)
{
    enum { NT = 32 * F16_WARPS, CH = N * D / 8, ITEMS = CH / NT, RS = NT / (D / 8), STEP = NT % (D / 8) == 0 };
    static_assert(ITEMS * NT == CH, "a tile is a whole number of 16-byte chunks per thread");
    const int r = threadIdx.x / (D / 8), c = 8 * (threadIdx.x % (D / 8));
    const uint16_t *src = g + (int64_t)(r0 + r) * ld + c;
    uint16_t *dst = sm + r * F16_LD(D) + c;
#pragma unroll
    for (int j = 0; j < ITEMS; j++) {
        if (STEP) {
            const bool ok = r0 + r + j * RS < T;
            cp16n(dst + j * RS * F16_LD(D), ok ? src + j * RS * ld : g + c, ok ? 16 : 0);
        } else {
            const int i = threadIdx.x + j * NT, ri = i / (D / 8), ci = 8 * (i % (D / 8));
            const bool ok = r0 + ri < T;
            cp16n(sm + ri * F16_LD(D) + ci, ok ? g + (int64_t)(r0 + ri) * ld + ci : g, ok ? 16 : 0);
        }
    }
}

/* The packing pass, where the kernels cannot read a head's rows in place: head h's D columns
 * (from src, row stride ld, [B,T,...]) as 16-bit values, row-major dst [B,H,T,D]. A thread moves
 * 8 consecutive values at a time (one 16-byte store; with vec, two 16-byte loads of fp32 values,
 * else 8 single loads). 16-bit sources (A16: store16) are copied as the
 * bits they are (the values of the format already); fp32 ones are rounded. D is a template
 * parameter, so that the index arithmetic has no division by a variable. dst: 16-byte aligned
 * (scratch). */
template <int BF, int A16, int D>
__global__ void f16_pack_k(const void *src, int64_t col, int64_t ld, uint16_t *dst, int T, int vec)
{
    enum { CH = D / 8 }; /* chunks per row */
    const int t0 = blockIdx.x * 32, h = blockIdx.y, b = blockIdx.z, H = gridDim.y;
    const int64_t s0 = (int64_t)b * T * ld + col + (int64_t)h * D;
    const int64_t bh = (int64_t)b * H + h;
    for (int i = threadIdx.x; i < 32 * CH; i += blockDim.x) {
        const int r = i / CH, c = 8 * (i % CH), t = t0 + r;
        if (t >= T)
            break; /* i only grows */
        uint32_t w[4];
        const int64_t at = s0 + (int64_t)t * ld + c;
        if (A16) { /* packed only where not 16-byte aligned (in_place), so value by value */
            const uint16_t *p = (const uint16_t *)src + at;
#pragma unroll
            for (int k = 0; k < 4; k++)
                w[k] = (uint32_t)p[2 * k] | (uint32_t)p[2 * k + 1] << 16;
        } else {
            float v[8];
            if (vec) {
                const float4 a = ((const float4 *)((const float *)src + at))[0];
                const float4 e = ((const float4 *)((const float *)src + at))[1];
                v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = e.x, v[5] = e.y, v[6] = e.z, v[7] = e.w;
            } else {
#pragma unroll
                for (int k = 0; k < 8; k++)
                    v[k] = ((const float *)src)[at + k];
            }
#pragma unroll
            for (int k = 0; k < 4; k++)
                w[k] = pack2<BF>(v[2 * k], v[2 * k + 1]);
        }
        *(uint4 *)(dst + (bh * T + t) * D + c) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

template <int NT> __device__ __forceinline__ void zero_acc(float (&acc)[NT][4])
{
#pragma unroll
    for (int n = 0; n < NT; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

/* acc[NT][4] (16 x 8 NT) += A (16 x 16 KC, fragments a) X^T, X the rows of xs (row-major, stride
 * ld): B words are pairs along X's rows, read by ldsm4<0> two n tiles at a time (NT is even). Each
 * acc[n] takes its products in increasing k, as one n-then-k loop would. */
template <int NT, int KC, int BF>
__device__ __forceinline__ void mm_abt(float (&acc)[NT][4], const uint32_t (&a)[KC][4], const uint16_t *xs, int ld,
                                       int lane)
{
    static_assert(NT % 2 == 0, "n tiles are read in pairs");
    const uint16_t *x = xs + ldsm_off(lane, ld);
#pragma unroll
    for (int n = 0; n < NT; n += 2)
#pragma unroll
        for (int k = 0; k < KC; k++) {
            uint32_t r[4];
            ldsm4<0>(r, x + 8 * n * ld + 16 * k);
            mma16816<BF>(acc[n], a[k], r[0], r[1]);
            mma16816<BF>(acc[n + 1], a[k], r[2], r[3]);
        }
}

/* acc[D/8][4] (16 x D) += P Y, P (16 x 8 NP) in C-fragment registers p (rounded here), Y (8 NP
 * x D) row-major at ys (stride ld), read by ldsm4<1> two n tiles at a time */
template <int NP, int ND, int BF>
__device__ __forceinline__ void mm_py(float (&acc)[ND][4], const float (&p)[NP][4], const uint16_t *ys, int ld,
                                      int lane)
{
    static_assert(ND % 2 == 0, "n tiles are read in pairs");
    const uint16_t *y = ys + ldsmt_off(lane, ld);
#pragma unroll
    for (int k = 0; k < NP / 2; k++) {
        const uint32_t a[4] = {pack2<BF>(p[2 * k][0], p[2 * k][1]), pack2<BF>(p[2 * k][2], p[2 * k][3]),
                               pack2<BF>(p[2 * k + 1][0], p[2 * k + 1][1]),
                               pack2<BF>(p[2 * k + 1][2], p[2 * k + 1][3])};
#pragma unroll
        for (int n = 0; n < ND; n += 2) {
            uint32_t r[4];
            ldsm4<1>(r, y + 16 * k * ld + 8 * n);
            mma16816<BF>(acc[n], a, r[0], r[1]);
            mma16816<BF>(acc[n + 1], a, r[2], r[3]);
        }
    }
}

/* rows r, r+8 of a 16 x D accumulator, times sa and sb, to dst (row stride ld, 8-byte aligned
 * rows; rounded to rm, fuse_round's mode) and copy (any float alignment; not rounded: backward's
 * D_t = dO_t . O_t takes the output as computed, as the materialized path's sum of P dP does),
 * rows below T */
template <int BF, int A16>
__device__ __forceinline__ void write_pair(void *dst, int64_t at, float x, float y, int rm)
{
    if (A16) /* two 16-bit values, rounded once: one 32-bit word (at is even) */
        *(uint32_t *)((uint16_t *)dst + at) = pack2<BF>(x, y);
    else
        *(float2 *)((float *)dst + at) = make_float2(rnd(x, rm), rnd(y, rm));
}

template <int ND, int BF, int A16>
__device__ __forceinline__ void write_rows(const float (&acc)[ND][4], void *dst, int64_t d0, int64_t ld, int r, int T,
                                           int c, float sa, float sb, float *copy, int rm)
{
#pragma unroll
    for (int n = 0; n < ND; n++) {
        const int col = 8 * n + 2 * c;
        if (r < T) {
            const float2 v = make_float2(acc[n][0] * sa, acc[n][1] * sa);
            write_pair<BF, A16>(dst, d0 + (int64_t)r * ld + col, v.x, v.y, rm);
            if (copy) { /* two floats: the copy follows B H T floats of lse, so it may be 8-byte misaligned */
                copy[(int64_t)r * ld + col] = v.x;
                copy[(int64_t)r * ld + col + 1] = v.y;
            }
        }
        if (r + 8 < T) {
            const float2 v = make_float2(acc[n][2] * sb, acc[n][3] * sb);
            write_pair<BF, A16>(dst, d0 + (int64_t)(r + 8) * ld + col, v.x, v.y, rm);
            if (copy) {
                copy[(int64_t)(r + 8) * ld + col] = v.x;
                copy[(int64_t)(r + 8) * ld + col + 1] = v.y;
            }
        }
    }
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* One key tile of the forward for a warp's 16 query rows: S = Q K^T, the online softmax (running
 * max m and partial sums l per row, in log2 units), O += P V. The scores are scaled into log2
 * units inside the exponent's argument (one FMA: s sl2 - m); their maxima are taken unscaled
 * and then scaled, which is the same number (sl2 > 0, rounding is monotonic). */
template <int D, int KT, int BF>
__device__ __forceinline__ void fwd_tile(const uint32_t (&qa)[D / 16][4], const uint16_t *ks, const uint16_t *vs,
                                     float (&o)[D / 8][4], float &ma, float &mb, float &la, float &lb, int k0,
                                     int T, int ta, int tb, int row0, int causal, float sl2, int g, int c)
{
    const int lane = 4 * g + c;
    float s[KT / 8][4];
    zero_acc<KT / 8>(s);
    mm_abt<KT / 8, D / 16, BF>(s, qa, ks, F16_LD(D), lane);
    if (k0 + KT > T || (causal && k0 + KT - 1 > row0)) /* warp-uniform: the tile crosses T or the diagonal */
#pragma unroll
        for (int n = 0; n < KT / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = k0 + 8 * n + 2 * c + (i & 1), t = i < 2 ? ta : tb;
                if (key >= T || (causal && key > t))
                    s[n][i] = -INFINITY;
            }
    float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
    for (int n = 0; n < KT / 8; n++) {
        mxa = fmaxf(mxa, fmaxf(s[n][0], s[n][1]));
        mxb = fmaxf(mxb, fmaxf(s[n][2], s[n][3]));
    }
    const float na = fmaxf(ma, quad_max(mxa) * sl2), nb = fmaxf(mb, quad_max(mxb) * sl2);
    /* minus the new maxima; 0 for a row with every score so far masked (its exponents are then
     * -inf: no NaN from -inf - -inf), whose o and l stay 0 */
    const float ua = na == -INFINITY ? 0.0f : -na, ub = nb == -INFINITY ? 0.0f : -nb;
    const float aa = ex2(ma + ua), ab = ex2(mb + ub);
    float sa = 0.0f, sb = 0.0f;
#pragma unroll
    for (int n = 0; n < KT / 8; n++) {
        s[n][0] = ex2(fmaf(s[n][0], sl2, ua));
        s[n][1] = ex2(fmaf(s[n][1], sl2, ua));
        s[n][2] = ex2(fmaf(s[n][2], sl2, ub));
        s[n][3] = ex2(fmaf(s[n][3], sl2, ub));
        sa += s[n][0] + s[n][1];
        sb += s[n][2] + s[n][3];
    }
    la = la * aa + sa;
    lb = lb * ab + sb;
    ma = na;
    mb = nb;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        o[n][0] *= aa;
        o[n][1] *= aa;
        o[n][2] *= ab;
        o[n][3] *= ab;
    }
    mm_py<KT / 8, D / 8, BF>(o, s, vs, F16_LD(D), lane);
}

/* A16: qkv and out are 16-bit (store16), else fp32 */
template <int D, int BF, int A16>
__global__ void __launch_bounds__(32 * F16_WARPS, F16_FWD_BLOCKS(D))
    f16_fwd_k(const void *qkv, f16_src ksrc, f16_src vsrc, void *out, float *lse, float *ocopy, int T, int C,
              int causal, float sl2, int rm)
{
#if F16_BUILT
    enum { KT = F16_IT(D) };
    __shared__ __align__(16) uint16_t ks[2][KT * F16_LD(D)]; /* K tiles [key][d], double-buffered */
    __shared__ __align__(16) uint16_t vs[2][KT * F16_LD(D)]; /* V tiles [key][d] */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, H = gridDim.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * F16_ROWS; /* the long causal rows first */
    const int row0 = q0 + 16 * w, ta = row0 + g, tb = ta + 8;
    const int64_t C3 = 3 * (int64_t)C;
    const int64_t base = (int64_t)b * T * C3 + (int64_t)h * D;

    uint32_t qa[D / 16][4];
#pragma unroll
    for (int k = 0; k < D / 16; k++)
        frag_a_global<BF, A16>(qa[k], qkv, base, C3, ta, T, 16 * k, c);
    float o[D / 8][4];
    zero_acc<D / 8>(o);
    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f; /* per row: max (log2 units), partial sum */

    const uint16_t *kg = f16_head(ksrc, b, h), *vg = f16_head(vsrc, b, h);
    const int kend = causal ? (q0 + F16_ROWS < T ? q0 + F16_ROWS : T) : T, ntiles = (kend + KT - 1) / KT;
    stage_rm<KT, D>(ks[0], kg, ksrc.ld, 0, T);
    stage_rm<KT, D>(vs[0], vg, vsrc.ld, 0, T);
    cp_commit();
    for (int it = 0; it < ntiles; it++) {
        const int k0 = it * KT, cur = it & 1;
        if (it + 1 < ntiles) { /* the next tile's copy runs while this one is used */
            stage_rm<KT, D>(ks[cur ^ 1], kg, ksrc.ld, k0 + KT, T);
            stage_rm<KT, D>(vs[cur ^ 1], vg, vsrc.ld, k0 + KT, T);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads(); /* tile `it` is in shared memory for every warp */
        if (row0 < T && !(causal && k0 > row0 + 15)) /* warp-uniform: else every score is masked */
            fwd_tile<D, KT, BF>(qa, ks[cur], vs[cur], o, ma, mb, la, lb, k0, T, ta, tb, row0, causal, sl2, g, c);
        __syncthreads(); /* every warp is done with buffer cur before it is refilled */
    }
    la = quad_sum(la);
    lb = quad_sum(lb);
    const int64_t at = (int64_t)b * T * C + (int64_t)h * D;
    write_rows<D / 8, BF, A16>(o, out, at, C, ta, T, c, 1.0f / la, 1.0f / lb, ocopy + at, rm);
    if (c == 0) {
        float *l = lse + ((int64_t)b * H + h) * T;
        if (ta < T)
            l[ta] = (ma + log2f(la)) * LN2;
        if (tb < T)
            l[tb] = (mb + log2f(lb)) * LN2;
    }
#endif
}


/* dK and dV of 64 keys (16 per warp), over the query tiles that see them */
template <int D, int BF, int A16>
__global__ void __launch_bounds__(32 * F16_WARPS, F16_BWD_BLOCKS(D))
    f16_bwd_dkv_k(const void *qkv, f16_src qsrc, f16_src gsrc, const float *lse, const float *di, void *dqkv, int T,
                  int C, int causal, float scale, float sl2, int rm)
{
#if F16_BUILT
    enum { QT = F16_IT(D) };
    __shared__ __align__(16) uint16_t qs[QT * F16_LD(D)]; /* Q tile [q][d] */
    __shared__ __align__(16) uint16_t gs[QT * F16_LD(D)]; /* dO tile [q][d] */
    __shared__ float lq[QT], dq[QT];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, H = gridDim.y, k0 = blockIdx.x * F16_ROWS;
    const int row0 = k0 + 16 * w, sa = row0 + g, sb = sa + 8; /* this lane's two keys */
    const int64_t C3 = 3 * (int64_t)C;
    const int64_t base = (int64_t)b * T * C3 + (int64_t)h * D;
    const float *lrow = lse + ((int64_t)b * H + h) * T, *drow = di + ((int64_t)b * H + h) * T;
    const uint16_t *q16 = f16_head(qsrc, b, h), *g16 = f16_head(gsrc, b, h);

    uint32_t ka[D / 16][4], va[D / 16][4];
#pragma unroll
    for (int k = 0; k < D / 16; k++) {
        frag_a_global<BF, A16>(ka[k], qkv, base + C, C3, sa, T, 16 * k, c);
        frag_a_global<BF, A16>(va[k], qkv, base + 2 * (int64_t)C, C3, sa, T, 16 * k, c);
    }
    float dk[D / 8][4], dv[D / 8][4];
    zero_acc<D / 8>(dk);
    zero_acc<D / 8>(dv);

    const int qstart = causal ? k0 / QT * QT : 0; /* earlier queries see none of these keys */
    for (int q0 = qstart; q0 < T; q0 += QT) {
        __syncthreads();
        stage_rm<QT, D>(qs, q16, qsrc.ld, q0, T);
        stage_rm<QT, D>(gs, g16, gsrc.ld, q0, T);
        cp_commit();
        for (int i = threadIdx.x; i < QT; i += blockDim.x) {
            lq[i] = q0 + i < T ? lrow[q0 + i] * LOG2E : 0.0f;
            dq[i] = q0 + i < T ? drow[q0 + i] : 0.0f;
        }
        cp_wait<0>();
        __syncthreads();
        if (row0 >= T || (causal && q0 + QT - 1 < row0)) /* warp-uniform: no query sees these keys */
            continue;
        float p[QT / 8][4], dp[QT / 8][4];
        zero_acc<QT / 8>(p);
        mm_abt<QT / 8, D / 16, BF>(p, ka, qs, F16_LD(D), lane); /* S^T = K Q^T */
        if (q0 + QT > T || (causal && q0 < row0 + 15)) { /* warp-uniform: the tile crosses T or the diagonal */
#pragma unroll
            for (int n = 0; n < QT / 8; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int qc = 8 * n + 2 * c + (i & 1), q = q0 + qc, s = i < 2 ? sa : sb;
                    p[n][i] = q >= T || (causal && s > q) ? 0.0f : ex2(fmaf(p[n][i], sl2, -lq[qc]));
                }
        } else {
#pragma unroll
            for (int n = 0; n < QT / 8; n++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    p[n][i] = ex2(fmaf(p[n][i], sl2, -lq[8 * n + 2 * c + (i & 1)]));
        }
        mm_py<QT / 8, D / 8, BF>(dv, p, gs, F16_LD(D), lane); /* dV += P^T dO */
        zero_acc<QT / 8>(dp);
        mm_abt<QT / 8, D / 16, BF>(dp, va, gs, F16_LD(D), lane); /* dP^T = V dO^T */
#pragma unroll
        for (int n = 0; n < QT / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                dp[n][i] = p[n][i] * (dp[n][i] - dq[8 * n + 2 * c + (i & 1)]); /* dS^T */
        mm_py<QT / 8, D / 8, BF>(dk, dp, qs, F16_LD(D), lane); /* dK += dS^T Q */
    }
    write_rows<D / 8, BF, A16>(dk, dqkv, base + C, C3, sa, T, c, scale, scale, NULL, rm);
    write_rows<D / 8, BF, A16>(dv, dqkv, base + 2 * (int64_t)C, C3, sa, T, c, 1.0f, 1.0f, NULL, rm);
#endif
}

/* dQ of 64 queries (16 per warp), over the key tiles they see */
template <int D, int BF, int A16>
__global__ void __launch_bounds__(32 * F16_WARPS, F16_BWD_BLOCKS(D))
    f16_bwd_dq_k(const void *qkv, const void *dout, f16_src ksrc, f16_src vsrc, const float *lse, const float *di,
                 void *dqkv, int T, int C, int causal, float scale, float sl2, int rm)
{
#if F16_BUILT
    enum { KT = F16_IT(D) };
    __shared__ __align__(16) uint16_t ks[KT * F16_LD(D)]; /* K tile [key][d] */
    __shared__ __align__(16) uint16_t vs[KT * F16_LD(D)]; /* V tile [key][d] */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, H = gridDim.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * F16_ROWS; /* the long causal rows first */
    const int row0 = q0 + 16 * w, ta = row0 + g, tb = ta + 8;
    const int64_t C3 = 3 * (int64_t)C;
    const int64_t base = (int64_t)b * T * C3 + (int64_t)h * D, gbase = (int64_t)b * T * C + (int64_t)h * D;
    const float *lrow = lse + ((int64_t)b * H + h) * T, *drow = di + ((int64_t)b * H + h) * T;

    const uint16_t *k16 = f16_head(ksrc, b, h), *v16 = f16_head(vsrc, b, h);

    uint32_t qa[D / 16][4], ga[D / 16][4];
#pragma unroll
    for (int k = 0; k < D / 16; k++) {
        frag_a_global<BF, A16>(qa[k], qkv, base, C3, ta, T, 16 * k, c);
        frag_a_global<BF, A16>(ga[k], dout, gbase, C, ta, T, 16 * k, c);
    }
    const float la = ta < T ? lrow[ta] * LOG2E : 0.0f, lb = tb < T ? lrow[tb] * LOG2E : 0.0f;
    const float da = ta < T ? drow[ta] : 0.0f, db = tb < T ? drow[tb] : 0.0f;
    float dq[D / 8][4];
    zero_acc<D / 8>(dq);

    const int kend = causal ? (q0 + F16_ROWS < T ? q0 + F16_ROWS : T) : T;
    for (int k0 = 0; k0 < kend; k0 += KT) {
        __syncthreads();
        stage_rm<KT, D>(ks, k16, ksrc.ld, k0, T);
        stage_rm<KT, D>(vs, v16, vsrc.ld, k0, T);
        cp_commit();
        cp_wait<0>();
        __syncthreads();
        if (row0 >= T || (causal && k0 > row0 + 15))
            continue;
        float p[KT / 8][4], dp[KT / 8][4];
        zero_acc<KT / 8>(p);
        zero_acc<KT / 8>(dp);
        mm_abt<KT / 8, D / 16, BF>(p, qa, ks, F16_LD(D), lane);  /* S = Q K^T */
        mm_abt<KT / 8, D / 16, BF>(dp, ga, vs, F16_LD(D), lane); /* dP = dO V^T */
        if (k0 + KT > T || (causal && k0 + KT - 1 > row0)) { /* warp-uniform: the tile crosses T or the diagonal */
#pragma unroll
            for (int n = 0; n < KT / 8; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int key = k0 + 8 * n + 2 * c + (i & 1), t = i < 2 ? ta : tb;
                    p[n][i] = key >= T || (causal && key > t) ? 0.0f : ex2(fmaf(p[n][i], sl2, i < 2 ? -la : -lb));
                }
        } else {
#pragma unroll
            for (int n = 0; n < KT / 8; n++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    p[n][i] = ex2(fmaf(p[n][i], sl2, i < 2 ? -la : -lb));
        }
#pragma unroll
        for (int n = 0; n < KT / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                p[n][i] *= dp[n][i] - (i < 2 ? da : db); /* dS */
        mm_py<KT / 8, D / 8, BF>(dq, p, ks, F16_LD(D), lane); /* dQ += dS K */
    }
    write_rows<D / 8, BF, A16>(dq, dqkv, base, C3, ta, T, c, scale, scale, NULL, rm);
#endif
}

/* ---- host side ------------------------------------------------------------------------------ */

extern "C" int ds_cuda_flash16_applies(const ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H)
{
    const ds_cuda *c = DS_CUDA(b);
    if (!c->gemm16 || c->flash == 0 || c->cc_major < 8 || H <= 0 || C % H != 0)
        return 0;
    const int64_t D = C / H;
    return (D == 16 || D == 32 || D == 48 || D == 64 || D == 128) && B <= 65535 && H <= 65535 &&
           T <= 2147483647LL - F16_ROWS && 3 * C <= 2147483647LL;
}

/* KERNEL<D, BF, A16> for the head size D, the format (BF: bf16) and the activations' storage
 * (A16: 16-bit, store16) */
#define F16_D(KERNEL, BFV, AV, ...)                                                              \
    switch (D_) {                                                                                \
    case 16: KERNEL<16, BFV, AV><<<grid, 32 * F16_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;    \
    case 32: KERNEL<32, BFV, AV><<<grid, 32 * F16_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;    \
    case 48: KERNEL<48, BFV, AV><<<grid, 32 * F16_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;    \
    case 64: KERNEL<64, BFV, AV><<<grid, 32 * F16_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;    \
    default: KERNEL<128, BFV, AV><<<grid, 32 * F16_WARPS, 0, STREAM(b)>>>(__VA_ARGS__); break;   \
    }
#define F16_DISPATCH(D, BF, A16, KERNEL, ...)                                                    \
    do {                                                                                         \
        const int D_ = (D);                                                                      \
        if ((BF) && (A16)) {                                                                     \
            F16_D(KERNEL, 1, 1, __VA_ARGS__)                                                     \
        } else if (BF) {                                                                         \
            F16_D(KERNEL, 1, 0, __VA_ARGS__)                                                     \
        } else if (A16) {                                                                        \
            F16_D(KERNEL, 0, 1, __VA_ARGS__)                                                     \
        } else {                                                                                 \
            F16_D(KERNEL, 0, 0, __VA_ARGS__)                                                     \
        }                                                                                        \
    } while (0)

/* packs the head columns that start at column col of src (row stride ld; 16-bit values with a16,
 * else fp32) into dst [B,H,T,D] (see f16_pack_k) */
#define F16_PACK(BFV, AV)                                                                        \
    switch (D) {                                                                                 \
    case 16: f16_pack_k<BFV, AV, 16><<<grid, 256, 0, STREAM(b)>>>(src, col, ld, dst, T_, vec); break;   \
    case 32: f16_pack_k<BFV, AV, 32><<<grid, 256, 0, STREAM(b)>>>(src, col, ld, dst, T_, vec); break;   \
    case 48: f16_pack_k<BFV, AV, 48><<<grid, 256, 0, STREAM(b)>>>(src, col, ld, dst, T_, vec); break;   \
    case 64: f16_pack_k<BFV, AV, 64><<<grid, 256, 0, STREAM(b)>>>(src, col, ld, dst, T_, vec); break;   \
    default: f16_pack_k<BFV, AV, 128><<<grid, 256, 0, STREAM(b)>>>(src, col, ld, dst, T_, vec); break;  \
    }
static void pack(ds_backend *b, int bf, int a16, const void *src, int64_t col, int64_t ld, uint16_t *dst, int64_t B,
                 int64_t T, int64_t H, int D)
{
    dim3 grid((unsigned)((T + 31) / 32), (unsigned)H, (unsigned)B);
    const int T_ = (int)T;
    /* 8 values per access: every row's head columns start on a multiple of 8 and src is 16-byte aligned */
    const int vec = ld % 8 == 0 && col % 8 == 0 && vec8_ok(src);
    if (bf && a16)
        F16_PACK(1, 1)
    else if (bf)
        F16_PACK(1, 0)
    else if (a16)
        F16_PACK(0, 1)
    else
        F16_PACK(0, 0)
}

/* Whether the kernels copy a head's rows straight from src (row stride ld, a head's D columns
 * from col): 16-bit values (store16) whose rows start 16-byte aligned. */
static int in_place(int a16, const void *src, int64_t col, int64_t ld)
{
    return a16 && ld % 8 == 0 && col % 8 == 0 && vec8_ok(src);
}

/* The rows of the heads that start at column col of src: in place, or packed into dst (B H T D
 * values) */
static f16_src head_rows(ds_backend *b, int bf, int a16, const void *src, int64_t col, int64_t ld, uint16_t *dst,
                         int64_t B, int64_t T, int64_t H, int D)
{
    f16_src r;
    if (in_place(a16, src, col, ld)) {
        r.p = (const uint16_t *)src + col, r.sb = T * ld, r.sh = D, r.ld = ld;
    } else {
        pack(b, bf, a16, src, col, ld, dst, B, T, H, D);
        r.p = dst, r.sb = H * T * D, r.sh = T * D, r.ld = D;
    }
    return r;
}

/* D_t = dO_t . O_t per (sample, head, row) into di [B,H,T], a warp per row; dO stored as S says
 * (store16), the output copy fp32. Also flash_attention.cu's (S 0), through ds_cuda_attn_di. */
template <int S>
__global__ void attn_di_k(const void *dout, const float *ocopy, float *di, int64_t rows, int T, int C, int H, int D)
{
    const int lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    const int64_t step = (int64_t)gridDim.x * wpb;
    for (int64_t i = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5); i < rows; i += step) { /* warp-uniform */
        const int64_t bt = i / H;
        const int h = (int)(i % H);
        const int64_t g = bt * C + (int64_t)h * D;
        float s = 0.0f;
        for (int d = lane; d < D; d += 32)
            s += lda<S>(dout, g + d) * ocopy[g + d];
        s = warp_sum(s);
        if (lane == 0)
            di[(bt / T * H + h) * T + bt % T] = s;
    }
}

extern "C" ds_status ds_cuda_attn_di(ds_backend *b, const void *dout, const float *ocopy, float *di, int64_t B,
                                     int64_t T, int64_t C, int64_t H)
{
    LAUNCH_S(attn_di_k, grid_for(b, 32 * B * T * H, 256), 256, 0, dout, ocopy, di, B * T * H, (int)T, (int)C, (int)H,
             (int)(C / H));
    return DS_OK;
}

/* qkv and out are 16-bit values when store16 is on (S16(b), the GEMMs' format), else fp32 */
/* The kernels read and write pairs of values as one word: 16-bit tensors (store16) 4-byte aligned,
 * fp32 out 8-byte aligned. The engine's tensors are (cudaMalloc'd, every tensor 16-byte aligned);
 * a caller of the ops table with another pointer gets an error, not a misaligned-address fault
 * that would end the CUDA context. */
static ds_status f16_aligned(ds_backend *b, const char *what, int a16, const void *in16, const void *out)
{
    const uintptr_t in_mask = 3, out_mask = a16 ? 3 : 7;
    if (((uintptr_t)in16 & in_mask) == 0 && ((uintptr_t)out & out_mask) == 0)
        return DS_OK;
    return ds_error_set(&b->err, DS_ERR_INVALID, "%s: the fused 16-bit attention needs its 16-bit tensors 4-byte "
                        "aligned and an fp32 output 8-byte aligned (got %p and %p)", what, in16, out);
}

extern "C" ds_status ds_cuda_flash16_fwd(ds_backend *b, const void *qkv, void *out, float *state, int64_t B,
                                         int64_t T, int64_t C, int64_t H, int causal)
{
    const int D = (int)(C / H), bf = DS_CUDA(b)->gemm16 == DS_ROUND_BF16, a16 = S16(b) != 0;
    if (f16_aligned(b, "attention_fwd", a16, a16 ? qkv : NULL, out) != DS_OK)
        return b->err.code;
    const float sl2 = LOG2E / sqrtf((float)D);
    const int64_t n16 = B * H * T * D;
    uint16_t *k16 = NULL;
    if (!in_place(a16, qkv, C, 3 * C) && !(k16 = (uint16_t *)ds_cuda_scratch(b, (size_t)(2 * n16) * sizeof(uint16_t))))
        return b->err.code;
    const f16_src ks = head_rows(b, bf, a16, qkv, C, 3 * C, k16, B, T, H, D);
    const f16_src vs = head_rows(b, bf, a16, qkv, 2 * C, 3 * C, k16 ? k16 + n16 : NULL, B, T, H, D);
    LAUNCHED("f16_pack_k");
    dim3 grid((unsigned)((T + F16_ROWS - 1) / F16_ROWS), (unsigned)H, (unsigned)B);
    float *lse = state, *ocopy = state + B * H * T;
    F16_DISPATCH(D, bf, a16, f16_fwd_k, qkv, ks, vs, out, lse, ocopy, (int)T, (int)C, causal, sl2, RMODE(b));
    LAUNCHED("f16_fwd_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_flash16_bwd(ds_backend *b, const void *dout, const void *qkv, const float *state,
                                         void *dqkv, int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    const int D = (int)(C / H), bf = DS_CUDA(b)->gemm16 == DS_ROUND_BF16, a16 = S16(b) != 0;
    if (f16_aligned(b, "attention_bwd", a16, a16 ? (const void *)((uintptr_t)qkv | (uintptr_t)dout) : NULL, dqkv) !=
        DS_OK)
        return b->err.code;
    const float scale = 1.0f / sqrtf((float)D), sl2 = LOG2E * scale;
    const float *lse = state, *ocopy = state + B * H * T;
    const int64_t n16 = B * H * T * D;
    /* scratch: q, k, v and dO packed where they are not read in place, then D_t */
    const int64_t np = (in_place(a16, qkv, 0, 3 * C) ? 0 : 3) + (in_place(a16, dout, 0, C) ? 0 : 1);
    uint16_t *p16 = (uint16_t *)ds_cuda_scratch(b, (size_t)(np * n16) * sizeof(uint16_t) +
                                                       (size_t)(B * H * T) * sizeof(float));
    if (!p16)
        return b->err.code;
    float *di = (float *)(p16 + np * n16);
    uint16_t *next = p16;
    const f16_src qs = head_rows(b, bf, a16, qkv, 0, 3 * C, next, B, T, H, D);
    next += qs.p == next ? n16 : 0;
    const f16_src ks = head_rows(b, bf, a16, qkv, C, 3 * C, next, B, T, H, D);
    next += ks.p == next ? n16 : 0;
    const f16_src vs = head_rows(b, bf, a16, qkv, 2 * C, 3 * C, next, B, T, H, D);
    next += vs.p == next ? n16 : 0;
    const f16_src gs = head_rows(b, bf, a16, dout, 0, C, next, B, T, H, D);
    LAUNCHED("f16_pack_k");
    ds_status st = ds_cuda_attn_di(b, dout, ocopy, di, B, T, C, H);
    if (st != DS_OK)
        return st;
    dim3 grid((unsigned)((T + F16_ROWS - 1) / F16_ROWS), (unsigned)H, (unsigned)B);
    F16_DISPATCH(D, bf, a16, f16_bwd_dkv_k, qkv, qs, gs, lse, di, dqkv, (int)T, (int)C, causal, scale, sl2, RMODE(b));
    LAUNCHED("f16_bwd_dkv_k");
    F16_DISPATCH(D, bf, a16, f16_bwd_dq_k, qkv, dout, ks, vs, lse, di, dqkv, (int)T, (int)C, causal, scale, sl2,
                 RMODE(b));
    LAUNCHED("f16_bwd_dq_k");
    return DS_OK;
}
