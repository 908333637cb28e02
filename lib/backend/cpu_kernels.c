/* CPU kernels for everything but matrix products: embeddings, layernorm, activations, attention,
 * losses, reductions and the fused optimizers. Built four times (AVX2+FMA and portable x86-64,
 * each also without OpenMP threads: _serial, called inside store16's tiles in cpu.c) with
 * DS_KERNEL_SUFFIX naming the instance; loops are written so the compiler vectorizes them
 * (`omp simd`, and our own exp/erf so that no libm call blocks vectorization). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "ds/dtype.h"
#include "ds/rng.h"
#include "cpu_kernels.h"

#ifndef DS_KERNEL_SUFFIX
#error "DS_KERNEL_SUFFIX must be defined (_avx2, _generic, _avx512, or one of them with _serial)"
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define KTABLE CAT(ds_cpu_kernels, DS_KERNEL_SUFFIX)
#define STR2(x) #x
#define STR(x) STR2(x)
#define DS_KERNEL_SUFFIX_NAME (STR(DS_KERNEL_SUFFIX) + 1) /* "_avx2" -> "avx2" */

/* Parallelize only when there is enough work to pay for waking the threads. */
#define PAR_MIN 16384

/* this thread's place in the team running the enclosing parallel region (1 and 0 without one) */
static inline void team(int *nt, int *tid)
{
#ifdef _OPENMP
    *nt = omp_get_num_threads();
    *tid = omp_get_thread_num();
#else
    *nt = 1;
    *tid = 0;
#endif
}

/* ---- vectorizable math ------------------------------------------------------------------ */

/* exp(x) for x in [-87.3, 88.3] (vexp's range, unchecked): x = n*ln2 + r, |r| <= ln2/2, degree-6
 * polynomial, 2^n by bits. A NaN x gives NaN (through r and p). */
static inline float vexp_in_range(float x)
{
    /* round to nearest with the 1.5*2^23 trick: vectorizes without SSE4.1's roundps; the low
     * bits of t are then n + 0x400000, so 2^n's bits come from t's in unsigned arithmetic (the
     * high bits shift out): no conversion of a float to an integer, which is undefined for a
     * NaN */
    const float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = fmaf(n, -0.693145751953125f, x);
    r = fmaf(n, -1.428606765330187045e-06f, r);
    float p = 1.0f / 720.0f;
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    uint32_t bits;
    memcpy(&bits, &t, 4);
    bits = (bits + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* exp(x) to about 2 ulp, x held to [-87.3, 88.3] (2^127 p stays finite); the clamp with selects:
 * fminf/fmaxf are library calls (NaN rules) that stop vectorization */
static inline float vexp(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    return vexp_in_range(x);
}

/* The same, with the bounds passed in (held(), read once per kernel call through a volatile), for
 * the hot loops: with literal bounds GCC evaluates the exponential at them at compile time and
 * blends those results into every vector (four compares and five blends where a max and a min
 * do). Measured here (AMD EPYC, AVX2, 2 threads, 2^20 values): gelu_fwd 0.60 -> 0.48 ms, the
 * same bits. */
typedef struct exp_hold_t {
    float lo, hi;
} exp_hold_t;
static const exp_hold_t exp_hold_value = {-87.3f, 88.3f}; /* vexp's */
static const exp_hold_t gelu_hold_value = {-80.0f, 80.0f}; /* GELU's (below) */

static inline exp_hold_t held(const exp_hold_t *value)
{
    const volatile exp_hold_t *h = value;
    return (exp_hold_t){h->lo, h->hi};
}

static inline float vexp_held(float x, exp_hold_t h)
{
    x = x < h.lo ? h.lo : x;
    x = x > h.hi ? h.hi : x;
    return vexp_in_range(x);
}

/* the largest of x[n] (n >= 1) in 8 lanes (maxps; a NaN is passed over here and makes its row
 * NaN where the caller sums exponentials) */
static inline float row_max(const float *x, int64_t n)
{
    float m8[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t s0 = 0;
    for (; s0 + 8 <= n; s0 += 8)
        for (int k = 0; k < 8; k++)
            m8[k] = x[s0 + k] > m8[k] ? x[s0 + k] : m8[k];
    for (; s0 < n; s0++)
        m8[0] = x[s0] > m8[0] ? x[s0] : m8[0];
    float mx = m8[0];
    for (int k = 1; k < 8; k++)
        mx = m8[k] > mx ? m8[k] : mx;
    return mx;
}

/* tanh via exp; absolute error ~1e-7, which is what GELU needs (it adds 1 to it). |x| is held
 * to 9 (one compare where vexp's two clamps took five compares and blends in the AVX2 loop):
 * from about 8.7 on, exp(-2|x|) < 2^-25 and (1 - e) / (1 + e) rounds to 1 either way, so the
 * results are those of the unheld formula, bit for bit (a NaN stays NaN through copysign's
 * caller: GELU multiplies by x). */
static inline float vtanh(float x)
{
    float a = fabsf(x);
    a = a < 9.0f ? a : 9.0f;
    float e = vexp_in_range(-2.0f * a);
    float t = (1.0f - e) / (1.0f + e);
    return copysignf(t, x);
}

/* erf(x), Abramowitz & Stegun 7.1.26 refined: absolute error < 1.5e-7. */
static inline float verf(float x)
{
    float a = fabsf(x);
    float t = 1.0f / fmaf(0.3275911f, a, 1.0f);
    float y = fmaf(1.061405429f, t, -1.453152027f);
    y = fmaf(y, t, 1.421413741f);
    y = fmaf(y, t, -0.284496736f);
    y = fmaf(y, t, 0.254829592f);
    y = 1.0f - y * t * vexp(-a * a);
    return copysignf(y, x);
}

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

/* ---- embeddings ------------------------------------------------------------------------- */

static void embedding_fwd(const int32_t *ids, const float *table, float *out, int64_t M, int64_t C)
{
#pragma omp parallel for if (M * C > PAR_MIN)
    for (int64_t m = 0; m < M; m++)
        memcpy(out + m * C, table + (int64_t)ids[m] * C, (size_t)C * sizeof(float));
}

/* Threads split the columns, so no two threads add to the same element (no atomics). */
static void embedding_bwd(const int32_t *ids, const float *dout, float *dtable, int64_t M, int64_t C)
{
#pragma omp parallel if (M * C > PAR_MIN)
    {
        int nt, tid;
        team(&nt, &tid);
        int64_t c0 = C * tid / nt, c1 = C * (tid + 1) / nt;
        for (int64_t m = 0; m < M; m++) {
            float *dst = dtable + (int64_t)ids[m] * C;
            const float *src = dout + m * C;
#pragma omp simd
            for (int64_t c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}

static void posadd_fwd(const float *x, const float *pos, float *y, int64_t B, int64_t T, int64_t C)
{
#pragma omp parallel for collapse(2) if (B * T * C > PAR_MIN)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            const float *xr = x + (b * T + t) * C, *pr = pos + t * C;
            float *yr = y + (b * T + t) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                yr[c] = xr[c] + pr[c];
        }
}

static void posadd_bwd(const float *dy, float *dpos, int64_t B, int64_t T, int64_t C)
{
#pragma omp parallel for if (B * T * C > PAR_MIN)
    for (int64_t t = 0; t < T; t++) {
        float *dp = dpos + t * C;
        for (int64_t b = 0; b < B; b++) {
            const float *g = dy + (b * T + t) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                dp[c] += g[c];
        }
    }
}

/* Transpose in strips of TR_W columns of src (rows of dst): each thread owns whole rows of dst,
 * so it can also sum them for the bias gradient without sharing. A strip's reads are whole
 * 64-byte lines of 16 floats (of 16-bit values: half lines, whose other halves the next strip
 * reads from cache in the same row block); blocks of 8 rows are turned in registers
 * where AVX2 is there. The sums are formed row after row for every column, in the same order
 * whatever the path (the vector lanes add the rows one at a time), so the bias gradient has the
 * same bits in either instance and in the 16-bit version below. */
#define TR_W 16 /* two 8x8 blocks side by side in tr_strip */

#ifdef __AVX2__
/* the 8x8 block at s (row stride ss) into d (row stride ds), transposed; acc[j] += s[r][j] for
 * r = 0..7 in order */
static inline __attribute__((always_inline)) void tr8x8(const float *s, int64_t ss, float *d, int64_t ds,
                                                        __m256 *acc)
{
    /* written out: at -O2 (autoconf's default CFLAGS) loops over arrays of vectors stay in memory */
    const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss), r2 = _mm256_loadu_ps(s + 2 * ss),
                 r3 = _mm256_loadu_ps(s + 3 * ss), r4 = _mm256_loadu_ps(s + 4 * ss),
                 r5 = _mm256_loadu_ps(s + 5 * ss), r6 = _mm256_loadu_ps(s + 6 * ss),
                 r7 = _mm256_loadu_ps(s + 7 * ss);
    __m256 a = *acc;
    a = _mm256_add_ps(a, r0);
    a = _mm256_add_ps(a, r1);
    a = _mm256_add_ps(a, r2);
    a = _mm256_add_ps(a, r3);
    a = _mm256_add_ps(a, r4);
    a = _mm256_add_ps(a, r5);
    a = _mm256_add_ps(a, r6);
    *acc = _mm256_add_ps(a, r7);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

#define TR_RB 64 /* rows per block */
#define TR_SW 512 /* columns per super-strip: their sums stay on the stack */

/* rows [r0, r1) of the strip c0..c1 (c1 - c0 <= TR_W), its sums carried in sums[] */
static inline void tr_strip(const float *src, float *dst, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                            int64_t c0, int64_t c1, float *sums)
{
#ifdef __AVX2__
    if (c1 - c0 == TR_W) {
        __m256 a0 = _mm256_loadu_ps(sums), a1 = _mm256_loadu_ps(sums + 8);
        for (; r0 + 8 <= r1; r0 += 8) {
            tr8x8(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows, &a0);
            tr8x8(src + r0 * cols + c0 + 8, cols, dst + (c0 + 8) * rows + r0, rows, &a1);
        }
        _mm256_storeu_ps(sums, a0);
        _mm256_storeu_ps(sums + 8, a1);
    }
#endif
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++) {
            float v = src[r * cols + c];
            dst[c * rows + r] = v;
            sums[c - c0] += v;
        }
}

/* The same on 16-bit values of mode: dst gets the values as they are, colsum the sums of the
 * widened values in the same order as transpose() on the widened tensor (the same bits). */
static inline float widen16(uint16_t h, int mode)
{
    if (mode == DS_ROUND_BF16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return ds_f16_to_f32(h);
#endif
}

#if defined(__AVX2__) && defined(__F16C__) /* fp16 widening by F16C */
static inline __attribute__((always_inline)) __m256 widen8(__m128i h, int mode)
{
    return mode == DS_ROUND_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                 : _mm256_cvtph_ps(h);
}

/* tr8x8 for 16-bit values: rows added to acc widened, in order */
static inline __attribute__((always_inline)) void tr8x8_16(const uint16_t *s, int64_t ss, uint16_t *d, int64_t ds,
                                                           __m256 *acc, int mode)
{
    const __m128i r0 = _mm_loadu_si128((const __m128i *)s), r1 = _mm_loadu_si128((const __m128i *)(s + ss)),
                  r2 = _mm_loadu_si128((const __m128i *)(s + 2 * ss)),
                  r3 = _mm_loadu_si128((const __m128i *)(s + 3 * ss)),
                  r4 = _mm_loadu_si128((const __m128i *)(s + 4 * ss)),
                  r5 = _mm_loadu_si128((const __m128i *)(s + 5 * ss)),
                  r6 = _mm_loadu_si128((const __m128i *)(s + 6 * ss)),
                  r7 = _mm_loadu_si128((const __m128i *)(s + 7 * ss));
    __m256 a = *acc;
    a = _mm256_add_ps(a, widen8(r0, mode));
    a = _mm256_add_ps(a, widen8(r1, mode));
    a = _mm256_add_ps(a, widen8(r2, mode));
    a = _mm256_add_ps(a, widen8(r3, mode));
    a = _mm256_add_ps(a, widen8(r4, mode));
    a = _mm256_add_ps(a, widen8(r5, mode));
    a = _mm256_add_ps(a, widen8(r6, mode));
    *acc = _mm256_add_ps(a, widen8(r7, mode));
    /* pairs, then quads, then rows of 8 */
    const __m128i t0 = _mm_unpacklo_epi16(r0, r1), t1 = _mm_unpackhi_epi16(r0, r1);
    const __m128i t2 = _mm_unpacklo_epi16(r2, r3), t3 = _mm_unpackhi_epi16(r2, r3);
    const __m128i t4 = _mm_unpacklo_epi16(r4, r5), t5 = _mm_unpackhi_epi16(r4, r5);
    const __m128i t6 = _mm_unpacklo_epi16(r6, r7), t7 = _mm_unpackhi_epi16(r6, r7);
    const __m128i u0 = _mm_unpacklo_epi32(t0, t2), u1 = _mm_unpackhi_epi32(t0, t2);
    const __m128i u2 = _mm_unpacklo_epi32(t1, t3), u3 = _mm_unpackhi_epi32(t1, t3);
    const __m128i u4 = _mm_unpacklo_epi32(t4, t6), u5 = _mm_unpackhi_epi32(t4, t6);
    const __m128i u6 = _mm_unpacklo_epi32(t5, t7), u7 = _mm_unpackhi_epi32(t5, t7);
    _mm_storeu_si128((__m128i *)d, _mm_unpacklo_epi64(u0, u4));
    _mm_storeu_si128((__m128i *)(d + ds), _mm_unpackhi_epi64(u0, u4));
    _mm_storeu_si128((__m128i *)(d + 2 * ds), _mm_unpacklo_epi64(u1, u5));
    _mm_storeu_si128((__m128i *)(d + 3 * ds), _mm_unpackhi_epi64(u1, u5));
    _mm_storeu_si128((__m128i *)(d + 4 * ds), _mm_unpacklo_epi64(u2, u6));
    _mm_storeu_si128((__m128i *)(d + 5 * ds), _mm_unpackhi_epi64(u2, u6));
    _mm_storeu_si128((__m128i *)(d + 6 * ds), _mm_unpacklo_epi64(u3, u7));
    _mm_storeu_si128((__m128i *)(d + 7 * ds), _mm_unpackhi_epi64(u3, u7));
}
#endif

static inline void tr_strip16(const uint16_t *src, uint16_t *dst, int64_t rows, int64_t cols, int64_t r0,
                              int64_t r1, int64_t c0, int64_t c1, float *sums, int mode)
{
#if defined(__AVX2__) && defined(__F16C__) /* fp16 widening by F16C */
    if (c1 - c0 == TR_W) {
        __m256 a0 = _mm256_loadu_ps(sums), a1 = _mm256_loadu_ps(sums + 8);
        for (; r0 + 8 <= r1; r0 += 8) {
            tr8x8_16(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows, &a0, mode);
            tr8x8_16(src + r0 * cols + c0 + 8, cols, dst + (c0 + 8) * rows + r0, rows, &a1, mode);
        }
        _mm256_storeu_ps(sums, a0);
        _mm256_storeu_ps(sums + 8, a1);
    }
#endif
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++) {
            uint16_t v = src[r * cols + c];
            dst[c * rows + r] = v;
            sums[c - c0] += widen16(v, mode);
        }
}

/* transpose (mode 0: fp32) and transpose16: each thread a range of whole strips, walked in
 * super-strips of TR_SW columns by blocks of TR_RB rows (what a block reads and writes stays in
 * cache and in the TLB) */
static void tr_drive(const void *src, void *dst, int64_t rows, int64_t cols, float *colsum, int mode)
{
    const int64_t strips = (cols + TR_W - 1) / TR_W;
#pragma omp parallel if (rows * cols > PAR_MIN)
    {
        int nt, tid;
        team(&nt, &tid);
        const int64_t ca = strips * tid / nt * TR_W, cb_ = strips * (tid + 1) / nt * TR_W;
        const int64_t cb = cb_ < cols ? cb_ : cols;
        for (int64_t s0 = ca; s0 < cb; s0 += TR_SW) {
            const int64_t s1 = s0 + TR_SW < cb ? s0 + TR_SW : cb;
            float sums[TR_SW] = {0};
            for (int64_t r0 = 0; r0 < rows; r0 += TR_RB) {
                const int64_t r1 = r0 + TR_RB < rows ? r0 + TR_RB : rows;
                for (int64_t c0 = s0; c0 < s1; c0 += TR_W) {
                    const int64_t c1 = c0 + TR_W < s1 ? c0 + TR_W : s1;
                    if (mode)
                        tr_strip16(src, dst, rows, cols, r0, r1, c0, c1, sums + (c0 - s0), mode);
                    else
                        tr_strip(src, dst, rows, cols, r0, r1, c0, c1, sums + (c0 - s0));
                }
            }
            if (colsum)
                for (int64_t c = s0; c < s1; c++)
                    colsum[c] += sums[c - s0];
        }
    }
}

static void transpose(const float *src, float *dst, int64_t rows, int64_t cols, float *colsum)
{
    tr_drive(src, dst, rows, cols, colsum, 0);
}

static void transpose16(const uint16_t *src, uint16_t *dst, int64_t rows, int64_t cols, float *colsum, int mode)
{
    tr_drive(src, dst, rows, cols, colsum, mode);
}

/* dbias[n] += sum_m dy[m, n]; threads split the columns. */
static void colsum_acc(const float *dy, float *dbias, int64_t M, int64_t N)
{
#pragma omp parallel if (M * N > PAR_MIN)
    {
        int nt, tid;
        team(&nt, &tid);
        int64_t n0 = N * tid / nt, n1 = N * (tid + 1) / nt;
        for (int64_t m = 0; m < M; m++) {
            const float *r = dy + m * N;
#pragma omp simd
            for (int64_t n = n0; n < n1; n++)
                dbias[n] += r[n];
        }
    }
}

/* ---- layernorm -------------------------------------------------------------------------- */

/* one row of layernorm_fwd (also layernorm_fwd16's, on a widened row: the same bits). The mean
 * sums the row shifted by its first value: a constant row's mean is then exact, its variance 0 and
 * its output the bias, as torch's (Welford) moments give, where a plain float sum would leave the
 * mean some ulps off and rstd (1/sqrt(eps)) would magnify that (0.34 at eps 1e-12, C 768). */
static inline void ln_fwd_row(const float *xr, const float *w, const float *b, float *yr, float *mean,
                              float *rstd, int64_t C, float eps)
{
    const float x0 = C > 0 ? xr[0] : 0.0f;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; c++)
        s += xr[c] - x0;
    float mu = x0 + s / (float)C;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t c = 0; c < C; c++) {
        float d = xr[c] - mu;
        v += d * d;
    }
    float rs = 1.0f / sqrtf(v / (float)C + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; c++)
        yr[c] = (xr[c] - mu) * rs * w[c] + b[c];
    *mean = mu;
    *rstd = rs;
}

static void layernorm_fwd(const float *x, const float *w, const float *b, float *y, float *mean,
                          float *rstd, int64_t M, int64_t C, float eps)
{
#pragma omp parallel for if (M * C > PAR_MIN)
    for (int64_t m = 0; m < M; m++)
        ln_fwd_row(x + m * C, w, b, y + m * C, mean + m, rstd + m, C, eps);
}

/* dx may be NULL (a first layer reading the model's input): only dw and db. The weight
 * gradients are summed per thread over a static split of the rows, then the per-thread sums
 * are added to dw and db in thread order: the same bits on every run with the same number of
 * threads. */
static void ln_bwd_rows(const float *dy, const float *x, const float *w, const float *mean,
                        const float *rstd, float *dx, float *pw, float *pb, int64_t m0, int64_t m1,
                        int64_t C, int accumulate)
{
    for (int64_t m = m0; m < m1; m++) {
        const float *g = dy + m * C, *xr = x + m * C;
        float mu = mean[m], rs = rstd[m];
        if (dx) {
            float *d = dx + m * C;
            float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
            for (int64_t c = 0; c < C; c++) {
                float xhat = (xr[c] - mu) * rs;
                float gw = g[c] * w[c];
                sum_g += gw;
                sum_gx += gw * xhat;
            }
            sum_g /= (float)C;
            sum_gx /= (float)C;
            if (accumulate) {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    float xhat = (xr[c] - mu) * rs;
                    d[c] += rs * (g[c] * w[c] - sum_g - xhat * sum_gx);
                }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    float xhat = (xr[c] - mu) * rs;
                    d[c] = rs * (g[c] * w[c] - sum_g - xhat * sum_gx);
                }
            }
        }
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            pw[c] += g[c] * (xr[c] - mu) * rs;
            pb[c] += g[c];
        }
    }
}

/* LayerNorm backward's threads and each one's rows [m0, m1) (inside the parallel region); shared
 * by its fp32 and 16-bit variants, whose dw and db are the same bits only with the same rows */
static int ln_threads(int64_t M, int64_t C)
{
    int nt = 1;
#ifdef _OPENMP
    if (M * C > PAR_MIN)
        nt = omp_get_max_threads();
#endif
    (void)M, (void)C;
    return nt;
}

static void ln_rows(int64_t M, int *tid, int64_t *m0, int64_t *m1)
{
    int t = 0, team = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    team = omp_get_num_threads();
#endif
    *tid = t;
    *m0 = M * t / team;
    *m1 = M * (t + 1) / team;
}

/* dw, db += the nt threads' partial sums (part: per thread C of dw then C of db), in thread order */
static void add_parts(const float *part, int nt, int64_t C, float *dw, float *db)
{
    for (int t = 0; t < nt; t++) {
        const float *pw = part + (size_t)t * (size_t)(2 * C), *pb = pw + C;
        for (int64_t c = 0; c < C; c++) {
            dw[c] += pw[c];
            db[c] += pb[c];
        }
    }
}

static void layernorm_bwd(const float *dy, const float *x, const float *w, const float *mean,
                          const float *rstd, float *dx, float *dw, float *db, int64_t M,
                          int64_t C, int accumulate)
{
    const int nt = ln_threads(M, C);
    float *part = calloc((size_t)nt * (size_t)(2 * C), sizeof(float));
    if (!part) { /* no memory for the partial sums: one pass straight into dw, db */
        ln_bwd_rows(dy, x, w, mean, rstd, dx, dw, db, 0, M, C, accumulate);
        return;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid;
        int64_t m0, m1;
        ln_rows(M, &tid, &m0, &m1);
        ln_bwd_rows(dy, x, w, mean, rstd, dx, part + (size_t)tid * (size_t)(2 * C),
                    part + (size_t)tid * (size_t)(2 * C) + C, m0, m1, C, accumulate);
    }
    add_parts(part, nt, C, dw, db);
    free(part);
}

/* ---- activations ------------------------------------------------------------------------ */

/* GELU and its derivative at v, tanh (approximate) or erf: one definition, so that gelu_fwd16 and
 * gelu_bwd16 compute what gelu_fwd and gelu_bwd compute, bit for bit */
/* The tanh form as v sigmoid(2u) (0.5 (1 + tanh u) = 1 / (1 + exp(-2u))): one exponential and one
 * division, where tanh by exp took a division of its own, an absolute value, a clamp and a copysign.
 * a = -2u is held to [-80, 80] (gelu_hold_value) for the exponential, and beyond it the results
 * are their limits: for a <= -80 (v above about 9.5) 1 + e is 1, so y = v, and the derivative is
 * 1; for a >= 80 (v below about -9.7) y is 0 and so is the derivative (as through tanh, which is
 * -1 there in fp32; the held exponential would give v e^-80 and a v^3 e^-80 that reaches inf). A
 * NaN v stays NaN. */
static inline float gelu_m2u(float v) { return -2.0f * SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v); }

static inline float gelu_tanh_at(float v, exp_hold_t h)
{
    float a = gelu_m2u(v);
    float y = v / (1.0f + vexp_held(a, h));
    return a < h.hi ? y : 0.0f * v;
}

/* d/dv v s(v) with s = 1 / (1 + e), e = exp(-2u): s + 2 v u' e s^2 */
static inline float gelu_tanh_grad_at(float v, exp_hold_t h)
{
    float a = gelu_m2u(v), e = vexp_held(a, h), s = 1.0f / (1.0f + e);
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * v * v);
    float d = s + 2.0f * v * du * (e * s) * s;
    return a < h.hi ? (a > h.lo ? d : 1.0f) : 0.0f * v;
}

/* (h unused: the erf form's own exponentials are held by vexp) */
static inline float gelu_erf_at(float v, exp_hold_t h)
{
    (void)h;
    return 0.5f * v * (1.0f + verf(v * INV_SQRT2));
}

/* Phi(v) + v phi(v); phi is 0 below e^-87.3 (|v| above about 13.2), where vexp would hold it at
 * e^-87.3 and v phi grow with v (to about 1.4 at 3e38) */
static inline float gelu_erf_grad_at(float v, exp_hold_t h)
{
    (void)h;
    float cdf = 0.5f * (1.0f + verf(v * INV_SQRT2));
    float q = -0.5f * v * v;
    float pdf = q > -87.3f ? INV_SQRT_2PI * vexp(q) : 0.0f;
    return cdf + v * pdf;
}

static void gelu_fwd(const float *x, float *y, int64_t n, int approximate)
{
    const exp_hold_t h = held(&gelu_hold_value);
    if (approximate) {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            y[i] = gelu_tanh_at(x[i], h);
    } else {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            y[i] = gelu_erf_at(x[i], h);
    }
}

static void gelu_bwd(const float *x, const float *dy, float *dx, int64_t n, int approximate,
                     int accumulate)
{
    const exp_hold_t h = held(&gelu_hold_value);
    float keep = accumulate ? 1.0f : 0.0f;
    if (approximate) {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            float d = gelu_tanh_grad_at(x[i], h);
            float prev = accumulate ? dx[i] : 0.0f;
            dx[i] = keep * prev + d * dy[i];
        }
    } else {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            float d = gelu_erf_grad_at(x[i], h);
            float prev = accumulate ? dx[i] : 0.0f;
            dx[i] = keep * prev + d * dy[i];
        }
    }
}

static void relu_fwd(const float *x, float *y, int64_t n)
{
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f || x[i] != x[i] ? x[i] : 0.0f; /* NaN stays NaN, as torch's relu */
}

static void relu_bwd(const float *y, const float *dy, float *dx, int64_t n, int accumulate)
{
    if (accumulate) {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dx[i] += !(y[i] <= 0.0f) ? dy[i] : 0.0f; /* a NaN output passes dy, as torch's */
    } else {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dx[i] = !(y[i] <= 0.0f) ? dy[i] : 0.0f;
    }
}

/* keep element i iff its hash, as a uniform in [0,1), is >= p */
static inline float dropout_factor(uint64_t seed, int64_t i, float p)
{
    float u = (float)(ds_hash64(seed, (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

/* i0: the index of x[0] in the whole tensor (the mask is a function of the index) */
static void dropout_fwd(const float *x, float *y, int64_t n, float p, uint64_t seed, int64_t i0)
{
#pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * dropout_factor(seed, i0 + i, p);
}

static void dropout_bwd(const float *dy, float *dx, int64_t n, float p, uint64_t seed,
                        int accumulate, int64_t i0)
{
#pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = dy[i] * dropout_factor(seed, i0 + i, p);
        dx[i] = accumulate ? dx[i] + g : g;
    }
}

static void add(const float *a, const float *c, float *y, int64_t n)
{
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] + c[i];
}

static void accumulate_k(const float *x, float *y, int64_t n, int accumulate)
{
    if (!accumulate) {
        memcpy(y, x, (size_t)n * sizeof(float));
        return;
    }
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

/* ---- bf16 rounding (the 16-bit sections below, and the softmax's bf16 outputs) ------------- */

/* Round to the nearest bfloat16 (ties to even), as a float; NaN stays NaN, overflow gives inf. */
static inline float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    r = (u & 0x7fffffffu) > 0x7f800000u ? ((u | 0x00400000u) & 0xffff0000u) : r;
    float y;
    memcpy(&y, &r, 4);
    return y;
}

/* the bits of x rounded to the nearest bfloat16 */
static inline uint16_t bf16_bits(float x)
{
    float r = round_bf16(x);
    uint32_t u;
    memcpy(&u, &r, 4);
    return (uint16_t)(u >> 16);
}

/* ---- attention softmax ------------------------------------------------------------------ */
/* The products (Q K^T, P V and their gradients) are batched oneDNN matmuls in cpu.c; these are
 * the row-wise parts between them. */

static void attn_softmax_fwd(float *att, uint16_t *p16, int64_t BH, int64_t T, float scale, int causal)
{
    const exp_hold_t h = held(&exp_hold_value);
#pragma omp parallel for if (BH * T * T > PAR_MIN)
    for (int64_t r = 0; r < BH * T; r++) {
        float *row = att + r * T;
        int64_t t = r % T, smax = causal ? t + 1 : T;
        const float mx = row_max(row, smax);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s < smax; s++) {
            float e = vexp_held((row[s] - mx) * scale, h);
            row[s] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        if (p16) {
            uint16_t *hp = p16 + r * T;
#pragma omp simd
            for (int64_t s = 0; s < smax; s++) {
                row[s] *= inv;
                hp[s] = bf16_bits(row[s]);
            }
            for (int64_t s = smax; s < T; s++)
                row[s] = 0.0f, hp[s] = 0;
            continue;
        }
#pragma omp simd
        for (int64_t s = 0; s < smax; s++)
            row[s] *= inv;
        for (int64_t s = smax; s < T; s++)
            row[s] = 0.0f;
    }
}

static void attn_softmax_bwd(const float *att, float *dp, uint16_t *ds16, uint16_t *p16, int64_t BH, int64_t T,
                             float scale, int causal)
{
#pragma omp parallel for if (BH * T * T > PAR_MIN)
    for (int64_t r = 0; r < BH * T; r++) {
        const float *p = att + r * T;
        float *g = dp + r * T;
        const int64_t smax = causal ? r % T + 1 : T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t s = 0; s < smax; s++)
            dot += p[s] * g[s];
        if (ds16) { /* dS and P in bf16, dP left as it is */
            uint16_t *hs = ds16 + r * T, *hp = p16 + r * T;
#pragma omp simd
            for (int64_t s = 0; s < smax; s++) {
                hs[s] = bf16_bits(p[s] * (g[s] - dot) * scale);
                hp[s] = bf16_bits(p[s]);
            }
            for (int64_t s = smax; s < T; s++)
                hs[s] = 0, hp[s] = 0;
            continue;
        }
#pragma omp simd
        for (int64_t s = 0; s < smax; s++)
            g[s] = p[s] * (g[s] - dot) * scale;
        for (int64_t s = smax; s < T; s++) /* P is 0 there; dP need not have been written */
            g[s] = 0.0f;
    }
}

/* ---- losses ----------------------------------------------------------------------------- */

/* one exponential per logit: the sum's pass keeps them in dlogits, which the second pass scales
 * (the same bits as two exponentials; dlogits may be logits: each is read before it is written,
 * and the target's logit first) */
static void xent_fwd(const float *logits, const int32_t *targets, float *losses, float *dlogits,
                     float grad_scale, int64_t M, int64_t V)
{
    const exp_hold_t h = held(&exp_hold_value);
#pragma omp parallel for if (M * V > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *z = logits + m * V;
        const int32_t tgt = targets[m];
        const float mx = row_max(z, V), zt = z[tgt];
        float sum = 0.0f;
        if (dlogits) {
            float *d = dlogits + m * V;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < V; j++) {
                float e = vexp_held(z[j] - mx, h);
                d[j] = e;
                sum += e;
            }
            float inv = grad_scale / sum;
#pragma omp simd
            for (int64_t j = 0; j < V; j++)
                d[j] *= inv;
            d[tgt] -= grad_scale;
        } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < V; j++)
                sum += vexp_held(z[j] - mx, h);
        }
        losses[m] = logf(sum) + mx - zt;
    }
}

static void mse_fwd(const float *y, const float *target, float *losses, float *dy,
                    float grad_scale, int64_t M, int64_t N)
{
#pragma omp parallel for if (M * N > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *a = y + m * N, *t = target + m * N;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < N; j++) {
            float d = a[j] - t[j];
            s += d * d;
        }
        losses[m] = s;
        if (dy) {
#pragma omp simd
            for (int64_t j = 0; j < N; j++)
                dy[m * N + j] = 2.0f * (a[j] - t[j]) * grad_scale;
        }
    }
}

/* ---- reductions ------------------------------------------------------------------------- */

/* Sums in double per block of floats so large buffers keep their precision. */
static double sum_k(const float *x, int64_t n)
{
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += 4096) {
        int64_t i1 = i0 + 4096 < n ? i0 + 4096 : n;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = i0; i < i1; i++)
            s += x[i];
        total += s;
    }
    return total;
}

/* The squares are added in double: the result is then the same to about 1e-16 however the
 * buffer is cut (ZeRO partitions sum their own parts), where float sums of 4096-element blocks
 * differed by some 1e-7 with the blocks' positions, and moved gradient clipping with them. */
static double sumsq_k(const float *x, int64_t n)
{
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += 4096) {
        int64_t i1 = i0 + 4096 < n ? i0 + 4096 : n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = i0; i < i1; i++)
            s += (double)x[i] * (double)x[i];
        total += s;
    }
    return total;
}

static int64_t nonfinite_k(const float *x, int64_t n)
{
    int64_t bad = 0;
#pragma omp parallel for simd reduction(+ : bad) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        bad += (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad;
}

static void scale_k(float *x, int64_t n, float s)
{
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

/* ---- 16-bit rounding ----------------------------------------------------------------------- */

/* Round to the nearest IEEE half (ties to even), as a float: normal halves keep 10 mantissa
 * bits (the bf16 trick with 13 bits), |x| < 2^-14 is rounded to a multiple of 2^-24 by adding
 * and removing 0.5 (whose float ulp is 2^-24), |x| >= 65520 becomes inf. Branch-free, so it
 * vectorizes; checked against ds_f32_to_f16 in tests/test_core.c. */
static inline float round_fp16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t a = u & 0x7fffffffu, sign = u & 0x80000000u;
    uint32_t n = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
    float ax;
    memcpy(&ax, &a, 4);
    float sub = (ax + 0.5f) - 0.5f;
    uint32_t s;
    memcpy(&s, &sub, 4);
    uint32_t r = a < 0x38800000u ? s : n;               /* below 2^-14: subnormal halves */
    r = a >= 0x477ff000u ? 0x7f800000u : r;             /* 65520 and above: inf */
    r = a > 0x7f800000u ? (a | 0x00400000u) : r;        /* NaN stays NaN */
    r |= sign;
    float y;
    memcpy(&y, &r, 4);
    return y;
}

static void round16_k(float *x, int64_t n, int mode)
{
    if (mode == DS_ROUND_BF16) {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            x[i] = round_bf16(x[i]);
    } else if (mode == DS_ROUND_FP16) {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            x[i] = round_fp16(x[i]);
    }
}

/* ---- 16-bit storage ------------------------------------------------------------------------ */

/* x[n] fp32 -> y[n] 16-bit values of mode, rounded to nearest even (fp16: overflow to inf),
 * without threads (also the 16-bit weight write of the optimizers, chunk by chunk). */
static inline void pack16_span(const float *x, uint16_t *y, int64_t n, int mode)
{
    if (mode == DS_ROUND_BF16) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            y[i] = bf16_bits(x[i]);
        return;
    }
#ifdef __F16C__
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    for (int64_t i = 0; i < n; i++)
        y[i] = ds_f32_to_f16(x[i]);
#endif
}

/* x[n] 16-bit values of mode -> y[n] fp32 (exact), without threads */
static inline void unpack16_span(const uint16_t *x, float *y, int64_t n, int mode)
{
    if (mode == DS_ROUND_BF16) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)x[i] << 16;
            float f;
            memcpy(&f, &u, 4);
            y[i] = f;
        }
        return;
    }
#ifdef __F16C__
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++)
        y[i] = _cvtsh_ss(x[i]);
#else
    for (int64_t i = 0; i < n; i++)
        y[i] = ds_f16_to_f32(x[i]);
#endif
}

#define PACK_CHUNK 2048 /* floats per chunk of a threaded pack or unpack: 8 KiB and 4 KiB */

static void pack16_k(const float *x, uint16_t *y, int64_t n, int mode)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK)
        pack16_span(x + i0, y + i0, n - i0 < PACK_CHUNK ? n - i0 : PACK_CHUNK, mode);
}

/* x[n] 16-bit values of mode -> y[n] fp32 (exact). */
static void unpack16_k(const uint16_t *x, float *y, int64_t n, int mode)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK)
        unpack16_span(x + i0, y + i0, n - i0 < PACK_CHUNK ? n - i0 : PACK_CHUNK, mode);
}

/* y = a + c over 16-bit values of mode, in one pass: bf16 widened by a shift, the fp32 sum
 * rounded by bf16_bits (as unpack16, add and pack16 on tiles, bit for bit); fp16 through
 * F16C a chunk at a time in stack buffers. Reads of an index come before its write, so y may
 * be a or c. */
static void add16_k(const uint16_t *a, const uint16_t *c, uint16_t *y, int64_t n, int mode)
{
    if (mode == DS_ROUND_BF16) {
#pragma omp parallel for simd if (parallel: n > PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            uint32_t ua = (uint32_t)a[i] << 16, uc = (uint32_t)c[i] << 16;
            float fa, fc;
            memcpy(&fa, &ua, 4);
            memcpy(&fc, &uc, 4);
            y[i] = bf16_bits(fa + fc);
        }
        return;
    }
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK) {
        const int64_t len = n - i0 < PACK_CHUNK ? n - i0 : PACK_CHUNK;
        float ta[PACK_CHUNK], tc[PACK_CHUNK];
        unpack16_span(a + i0, ta, len, mode);
        unpack16_span(c + i0, tc, len, mode);
#pragma omp simd
        for (int64_t i = 0; i < len; i++)
            ta[i] += tc[i];
        pack16_span(ta, y + i0, len, mode);
    }
}

/* GELU over 16-bit values of mode in one pass (y, dx may be x or dy), a chunk at a time through
 * stack buffers: widened (bf16 by a shift, fp16 by F16C), the fp32 loop, rounded back. The same
 * per-element formulas as gelu_fwd and gelu_bwd, so the bits of those on unpacked copies,
 * packed. bf16 used to widen and round inside the one loop over the elements; through the
 * buffers it is faster (AMD EPYC Zen 5, AVX2 kernels, 2^20 values, 1 thread: forward 0.81 ->
 * 0.64 ms, backward 1.10 -> 1.01 ms; the same bits). */
static void gelu_fwd16(const uint16_t *x, uint16_t *y, int64_t n, int approximate, int mode)
{
    const exp_hold_t h = held(&gelu_hold_value);
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK) {
        const int64_t len = n - i0 < PACK_CHUNK ? n - i0 : PACK_CHUNK;
        float t[PACK_CHUNK];
        unpack16_span(x + i0, t, len, mode);
        if (approximate) {
#pragma omp simd
            for (int64_t i = 0; i < len; i++)
                t[i] = gelu_tanh_at(t[i], h);
        } else {
#pragma omp simd
            for (int64_t i = 0; i < len; i++)
                t[i] = gelu_erf_at(t[i], h);
        }
        pack16_span(t, y + i0, len, mode);
    }
}

static void gelu_bwd16(const uint16_t *x, const uint16_t *dy, uint16_t *dx, int64_t n, int approximate,
                       int accumulate, int mode)
{
    const exp_hold_t h = held(&gelu_hold_value);
    const float keep = accumulate ? 1.0f : 0.0f;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK) {
        const int64_t len = n - i0 < PACK_CHUNK ? n - i0 : PACK_CHUNK;
        float tx[PACK_CHUNK], tg[PACK_CHUNK], tp[PACK_CHUNK];
        unpack16_span(x + i0, tx, len, mode);
        unpack16_span(dy + i0, tg, len, mode);
        if (accumulate)
            unpack16_span(dx + i0, tp, len, mode);
        if (approximate) {
#pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                float d = gelu_tanh_grad_at(tx[i], h);
                float prev = accumulate ? tp[i] : 0.0f;
                tx[i] = keep * prev + d * tg[i];
            }
        } else {
#pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                float d = gelu_erf_grad_at(tx[i], h);
                float prev = accumulate ? tp[i] : 0.0f;
                tx[i] = keep * prev + d * tg[i];
            }
        }
        pack16_span(tx, dx + i0, len, mode);
    }
}

/* one value rounded to 16 bits of mode: pack16_span's conversion (its tail), for the tables */
static inline uint16_t pack16_one(float x, int mode)
{
    if (mode == DS_ROUND_BF16)
        return bf16_bits(x);
#ifdef __F16C__
    return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    return ds_f32_to_f16(x);
#endif
}

/* GELU on 16-bit values through tables: lut[u] is gelu_fwd16 of the value with bits u, dlut[u]
 * the fp32 derivative gelu_bwd16 computes there (the same inline formulas, so the same bits).
 * The lookups are scalar loads (a gather would be slow on CPUs with Intel's gather
 * mitigation); the tables are 128 KiB and 256 KiB, and the values activations take stay in a
 * few KiB of them. Measured here (AMD EPYC Zen 5, AVX2 kernels, 2^20 bf16 values ~N(0, 1.5), 2
 * threads): forward 0.41 -> 0.13 ms, backward 0.79 -> 0.19 ms. */
static void gelu_tables16(uint16_t *lut, float *dlut, int approximate, int mode)
{
    const exp_hold_t h = held(&gelu_hold_value);
    for (int32_t u = 0; u < 65536; u++) {
        const float v = widen16((uint16_t)u, mode); /* unpack16_span's widening */
        dlut[u] = approximate ? gelu_tanh_grad_at(v, h) : gelu_erf_grad_at(v, h);
        lut[u] = pack16_one(approximate ? gelu_tanh_at(v, h) : gelu_erf_at(v, h), mode);
    }
}

static void gelu_fwd16_lut(const uint16_t *x, const uint16_t *lut, uint16_t *y, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = lut[x[i]];
}

static void gelu_bwd16_lut(const uint16_t *x, const float *dlut, const uint16_t *dy, uint16_t *dx, int64_t n,
                           int accumulate, int mode)
{
    const float keep = accumulate ? 1.0f : 0.0f;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK) {
        const int64_t len = n - i0 < PACK_CHUNK ? n - i0 : PACK_CHUNK;
        float td[PACK_CHUNK], tg[PACK_CHUNK], tp[PACK_CHUNK];
        for (int64_t i = 0; i < len; i++)
            td[i] = dlut[x[i0 + i]];
        unpack16_span(dy + i0, tg, len, mode);
        if (accumulate)
            unpack16_span(dx + i0, tp, len, mode);
#pragma omp simd
        for (int64_t i = 0; i < len; i++) {
            float prev = accumulate ? tp[i] : 0.0f;
            td[i] = keep * prev + td[i] * tg[i];
        }
        pack16_span(td, dx + i0, len, mode);
    }
}

/* layernorm_fwd on 16-bit x and y (values of mode; w, b fp32): each row widened into a buffer on the
 * stack, ln_fwd_row on it, packed; so the bits of layernorm_fwd on the widened tensor, packed.
 * Rows wider than LN16_ROW: -1, nothing written. */
#define LN16_ROW 4096
static int layernorm_fwd16(const uint16_t *x, const float *w, const float *b, uint16_t *y, float *mean,
                           float *rstd, int64_t M, int64_t C, float eps, int mode)
{
    if (C > LN16_ROW)
        return -1;
#pragma omp parallel for if (M * C > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        float tx[LN16_ROW], ty[LN16_ROW];
        unpack16_span(x + m * C, tx, C, mode);
        ln_fwd_row(tx, w, b, ty, mean + m, rstd + m, C, eps);
        pack16_span(ty, y + m * C, C, mode);
    }
    return 0;
}

/* posadd_bwd on 16-bit dy: rows widened a chunk at a time on the stack, added in posadd_bwd's order */
static void posadd_bwd16(const uint16_t *dy, float *dpos, int64_t B, int64_t T, int64_t C, int mode)
{
#pragma omp parallel for if (B * T * C > PAR_MIN)
    for (int64_t t = 0; t < T; t++) {
        float *dp = dpos + t * C;
        for (int64_t b = 0; b < B; b++) {
            const uint16_t *g = dy + (b * T + t) * C;
            for (int64_t c0 = 0; c0 < C; c0 += PACK_CHUNK) {
                const int64_t len = C - c0 < PACK_CHUNK ? C - c0 : PACK_CHUNK;
                float tg[PACK_CHUNK];
                unpack16_span(g + c0, tg, len, mode);
#pragma omp simd
                for (int64_t c = 0; c < len; c++)
                    dp[c0 + c] += tg[c];
            }
        }
    }
}

/* colsum[c] += the sum of the widened 16-bit values of column c of src [rows, cols], summed from 0
 * row after row and then added: transpose16's column sums, without the transpose (the bias
 * gradient where the weight gradient's product reads dY^T as a strided view). Threads split the
 * columns (groups of 8); each walks all rows over a chunk of its columns at a time, widened on
 * the stack. */
static void colsum16_acc(const uint16_t *src, float *colsum, int64_t rows, int64_t cols, int mode)
{
#define CS16_CHUNK 512
#pragma omp parallel if (rows * cols > PAR_MIN)
    {
        int nt, tid;
        team(&nt, &tid);
        const int64_t v8 = (cols + 7) / 8; /* ranges of whole 8-column groups */
        const int64_t c0 = v8 * tid / nt * 8;
        int64_t c1 = v8 * (tid + 1) / nt * 8;
        if (c1 > cols)
            c1 = cols;
        for (int64_t a = c0; a < c1; a += CS16_CHUNK) {
            const int64_t len = c1 - a < CS16_CHUNK ? c1 - a : CS16_CHUNK;
            float sums[CS16_CHUNK], t[CS16_CHUNK];
            for (int64_t c = 0; c < len; c++)
                sums[c] = 0.0f;
            for (int64_t r = 0; r < rows; r++) {
                unpack16_span(src + r * cols + a, t, len, mode);
#pragma omp simd
                for (int64_t c = 0; c < len; c++)
                    sums[c] += t[c];
            }
            for (int64_t c = 0; c < len; c++)
                colsum[a + c] += sums[c];
        }
    }
#undef CS16_CHUNK
}

/* layernorm_bwd on 16-bit dy, x and dx (values of mode; w fp32), without whole fp32 copies:
 * each thread takes the rows layernorm_bwd would give it and widens them a chunk at a time into
 * buffers that stay in cache, runs the same row loop on them in the same order, and packs its
 * dx rows; so dw, db and dx are the same bits as layernorm_bwd's on the widened tensors.
 * Returns 0, or -1 without memory for the buffers (nothing written). */
#define LN16_CHUNK 4096 /* floats per buffer and thread: three buffers of 16 KiB */
static int layernorm_bwd16(const uint16_t *dy, const uint16_t *x, const float *w, const float *mean,
                           const float *rstd, uint16_t *dx, float *dw, float *db, int64_t M, int64_t C,
                           int accumulate, int mode)
{
    const int nt = ln_threads(M, C);
    const int64_t R = C >= LN16_CHUNK ? 1 : LN16_CHUNK / C, per = R * C; /* rows per chunk */
    float *part = calloc((size_t)nt * (size_t)(2 * C), sizeof(float));
    float *buf = malloc((size_t)nt * 3 * (size_t)per * sizeof(float));
    if (!part || !buf) {
        free(part);
        free(buf);
        return -1;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid;
        int64_t m0, m1;
        ln_rows(M, &tid, &m0, &m1);
        float *pw = part + (size_t)tid * (size_t)(2 * C), *pb = pw + C;
        float *bdy = buf + (size_t)tid * 3 * (size_t)per, *bx = bdy + per, *bdx = bx + per;
        for (int64_t r = m0; r < m1; r += R) {
            const int64_t n = m1 - r < R ? m1 - r : R;
            unpack16_span(dy + r * C, bdy, n * C, mode);
            unpack16_span(x + r * C, bx, n * C, mode);
            if (dx && accumulate)
                unpack16_span(dx + r * C, bdx, n * C, mode);
            ln_bwd_rows(bdy, bx, w, mean + r, rstd + r, dx ? bdx : NULL, pw, pb, 0, n, C, accumulate);
            if (dx)
                pack16_span(bdx, dx + r * C, n * C, mode);
        }
    }
    add_parts(part, nt, C, dw, db);
    free(part);
    free(buf);
    return 0;
}

/* ---- fused optimizers ------------------------------------------------------------------- */

/* The loop body of each optimizer is written once, as a macro over the per-element update, and
 * instantiated without and with the 16-bit working-weight write (fp32 values rounded, or
 * 2-byte values: then in chunks, each packed from the updated master while it is in cache), so
 * that the common case has no branch in its inner loop. */
#define OPT_LOOP(n, a, BODY)                                                                      \
    do {                                                                                          \
        void *pw_ = (a)->pw;                                                                      \
        if (!pw_) {                                                                               \
            _Pragma("omp parallel for simd if (parallel: n > PAR_MIN)") for (int64_t i = 0; i < n; i++) { \
                BODY;                                                                             \
            }                                                                                     \
        } else if ((a)->pw16 && (a)->round == DS_ROUND_BF16) {                                    \
            uint16_t *pw16_ = pw_;                                                                \
            _Pragma("omp parallel for simd if (parallel: n > PAR_MIN)") for (int64_t i = 0; i < n; i++) { \
                BODY;                                                                             \
                pw16_[i] = bf16_bits(p[i]);                                                       \
            }                                                                                     \
        } else if ((a)->pw16) { /* fp16: F16C converts 8 at a time, chunk by chunk */            \
            uint16_t *pw16_ = pw_;                                                                \
            const int mode_ = (a)->round;                                                         \
            _Pragma("omp parallel for schedule(static) if (n > PAR_MIN)")                         \
            for (int64_t i0 = 0; i0 < n; i0 += PACK_CHUNK) {                                      \
                const int64_t i1 = n - i0 < PACK_CHUNK ? n : i0 + PACK_CHUNK;                     \
                _Pragma("omp simd") for (int64_t i = i0; i < i1; i++) {                           \
                    BODY;                                                                         \
                }                                                                                 \
                pack16_span(p + i0, pw16_ + i0, i1 - i0, mode_);                                \
            }                                                                                     \
        } else if ((a)->round == DS_ROUND_BF16) {                                                 \
            float *pwf_ = pw_;                                                                    \
            _Pragma("omp parallel for simd if (parallel: n > PAR_MIN)") for (int64_t i = 0; i < n; i++) { \
                BODY;                                                                             \
                pwf_[i] = round_bf16(p[i]);                                                       \
            }                                                                                     \
        } else {                                                                                  \
            float *pwf_ = pw_;                                                                    \
            _Pragma("omp parallel for simd if (parallel: n > PAR_MIN)") for (int64_t i = 0; i < n; i++) { \
                BODY;                                                                             \
                pwf_[i] = round_fp16(p[i]);                                                       \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/* DeepSpeed FusedAdam == torch Adam/AdamW; the order of operations follows torch's
 * single-tensor implementation (decay p first, then m, v, then p -= step * m / denom). */
static void adamw_step(float *p, const float *g, float *m, float *v, int64_t n,
                       const ds_adamw_args *a)
{
    const float b1 = a->beta1, b2 = a->beta2, gs = a->grad_scale;
    float c1 = 1.0f, c2 = 1.0f;
    if (a->bias_correction) {
        c1 = 1.0f - (float)pow(a->beta1, (double)a->step);
        c2 = 1.0f - (float)pow(a->beta2, (double)a->step);
    }
    const float step_size = a->lr / c1, c2_sqrt = sqrtf(c2), eps = a->eps;
    const float decay = a->adam_w_mode ? 1.0f - a->lr * a->weight_decay : 1.0f;
    const float l2 = a->adam_w_mode ? 0.0f : a->weight_decay;
    OPT_LOOP(n, a, {
        float pi = p[i] * decay;
        float gi = g[i] * gs + l2 * p[i];
        float mi = m[i] * b1 + (1.0f - b1) * gi;
        float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / c2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
    });
}

static void sgd_step(float *p, const float *g, float *buf, int64_t n, const ds_sgd_args *a)
{
    const float lr = a->lr, mom = a->momentum, damp = 1.0f - a->dampening, wd = a->weight_decay,
                gs = a->grad_scale;
    if (mom == 0.0f) {
        OPT_LOOP(n, a, { p[i] -= lr * (g[i] * gs + wd * p[i]); });
        return;
    }
    const int first = a->first_step, nesterov = a->nesterov;
    OPT_LOOP(n, a, {
        float d = g[i] * gs + wd * p[i];
        float bi = first ? d : buf[i] * mom + damp * d;
        buf[i] = bi;
        float step = nesterov ? d + mom * bi : bi;
        p[i] -= lr * step;
    });
}

/* torch.optim.Adagrad (single-tensor): g += wd p; sum += g*g; p -= clr * g / (sqrt(sum) + eps) */
static void adagrad_step(float *p, const float *g, float *sum, int64_t n, const ds_adagrad_args *a)
{
    const float clr = a->lr / (1.0f + (float)(a->step - 1) * a->lr_decay);
    const float wd = a->weight_decay, eps = a->eps, gs = a->grad_scale;
    OPT_LOOP(n, a, {
        float gi = g[i] * gs + wd * p[i];
        float si = sum[i] + gi * gi;
        sum[i] = si;
        p[i] -= clr * (gi / (sqrtf(si) + eps));
    });
}

/* FusedLamb: per tensor, pass 1 updates m and v and sums |p|^2 and |u|^2 (double across
 * chunks); pass 2 recomputes u from m, v, p and applies the trust ratio. */
static void lamb_step(float *pall, const float *g, float *m, float *v, const ds_lamb_args *a)
{
    const float b1 = a->beta1, b2 = a->beta2, eps = a->eps, wd = a->weight_decay,
                gs = a->grad_scale;
    float step_size = a->lr;
    if (a->bias_correction)
        step_size = (float)(a->lr * sqrt(1.0 - pow(a->beta2, (double)a->step)) /
                            (1.0 - pow(a->beta1, (double)a->step)));
    /* eps inside or outside the square root, without a branch in the loops */
    const float ein = a->eps_inside_sqrt ? eps : 0.0f, eout = a->eps_inside_sqrt ? 0.0f : eps;
    for (int t = 0; t < a->n_tensors; t++) {
        const int64_t o = a->offsets[t], n = a->offsets[t + 1] - o;
        float *p = pall + o, *mt = m + o, *vt = v + o;
        const float *gt = g + o;
        double wsum = 0.0, usum = 0.0;
        if (a->phase == 2)
            goto apply;
#pragma omp parallel for reduction(+ : wsum, usum) if (n > PAR_MIN)
        for (int64_t i0 = 0; i0 < n; i0 += 4096) {
            int64_t i1 = i0 + 4096 < n ? i0 + 4096 : n;
            float ws = 0.0f, us = 0.0f;
#pragma omp simd reduction(+ : ws, us)
            for (int64_t i = i0; i < i1; i++) {
                float gi = gt[i] * gs;
                float mi = mt[i] * b1 + (1.0f - b1) * gi;
                float vi = vt[i] * b2 + (1.0f - b2) * gi * gi;
                mt[i] = mi;
                vt[i] = vi;
                float u = mi / (sqrtf(vi + ein) + eout) + wd * p[i];
                ws += p[i] * p[i];
                us += u * u;
            }
            wsum += ws;
            usum += us;
        }
        if (a->phase == 1) {
            a->sums[2 * t] = wsum;
            a->sums[2 * t + 1] = usum;
            continue;
        }
        float coeff = 1.0f;
        if (wsum > 0.0 && usum > 0.0) {
            double c = sqrt(wsum) / sqrt(usum);
            c = c < a->min_coeff ? a->min_coeff : c > a->max_coeff ? a->max_coeff : c;
            coeff = (float)c;
        }
        if (a->coeffs)
            a->coeffs[t] = coeff;
    apply:;
        if (a->phase == 2)
            coeff = a->coeffs[t];
        const float k = step_size * coeff;
        struct { void *pw; int round, pw16; } slice = {
            !a->pw ? NULL : a->pw16 ? (void *)((uint16_t *)a->pw + o) : (void *)((float *)a->pw + o),
            a->round, a->pw16};
        OPT_LOOP(n, &slice, {
            float u = mt[i] / (sqrtf(vt[i] + ein) + eout) + wd * p[i];
            p[i] -= k * u;
        });
    }
}

const ds_cpu_kernels KTABLE = {
    .variant = DS_KERNEL_SUFFIX_NAME,
    .embedding_fwd = embedding_fwd,
    .embedding_bwd = embedding_bwd,
    .posadd_fwd = posadd_fwd,
    .posadd_bwd = posadd_bwd,
    .transpose = transpose,
    .transpose16 = transpose16,
    .colsum_acc = colsum_acc,
    .layernorm_fwd = layernorm_fwd,
    .layernorm_bwd = layernorm_bwd,
    .layernorm_bwd16 = layernorm_bwd16,
    .gelu_fwd = gelu_fwd,
    .gelu_bwd = gelu_bwd,
    .relu_fwd = relu_fwd,
    .relu_bwd = relu_bwd,
    .dropout_fwd = dropout_fwd,
    .dropout_bwd = dropout_bwd,
    .add = add,
    .accumulate = accumulate_k,
    .attn_softmax_fwd = attn_softmax_fwd,
    .attn_softmax_bwd = attn_softmax_bwd,
    .xent_fwd = xent_fwd,
    .mse_fwd = mse_fwd,
    .sum = sum_k,
    .sumsq = sumsq_k,
    .nonfinite = nonfinite_k,
    .scale = scale_k,
    .adamw_step = adamw_step,
    .sgd_step = sgd_step,
    .round16 = round16_k,
    .pack16 = pack16_k,
    .unpack16 = unpack16_k,
    .add16 = add16_k,
    .gelu_fwd16 = gelu_fwd16,
    .gelu_bwd16 = gelu_bwd16,
    .gelu_tables16 = gelu_tables16,
    .gelu_fwd16_lut = gelu_fwd16_lut,
    .gelu_bwd16_lut = gelu_bwd16_lut,
    .layernorm_fwd16 = layernorm_fwd16,
    .posadd_bwd16 = posadd_bwd16,
    .colsum16_acc = colsum16_acc,
    .adagrad_step = adagrad_step,
    .lamb_step = lamb_step,
};
