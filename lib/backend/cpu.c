/* The CPU backend: the ops table over host memory. Matrix products go to oneDNN; every other
 * op to the kernel variant chosen at creation (AVX2+FMA when cpuid has them, else portable).
 * Under store16 the activation ops convert their 16-bit tensors in per-thread tiles or whole
 * fp32 copies (see the store16 section). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#endif

#include "cpu_dnnl.h"
#include "cpu_kernels.h"
#include "ds/backend.h"

typedef struct cpu_impl {
    const ds_cpu_kernels *k;
    const ds_cpu_kernels *ks; /* the same variant without threads (inside store16's tiles) */
    /* cpuid's pick, with no variant named: set_precision then takes the avx512 kernels for
     * bf16 products on the CPU's bf16 units (bf16_kernels), and these again for the rest */
    const ds_cpu_kernels *picked, *picked_s;
    int auto_pick;
    ds_dnnl *dnnl;
    float *scratch; /* transposed dY for weight gradients */
    size_t scratch_floats;
    float *att_scratch; /* attention backward: dP, then dS [B, H, T, T] */
    size_t att_scratch_floats;
    float *att_dense[2]; /* attention's dense operands: inputs, outputs (att_dense()) */
    size_t att_dense_n[2];
    float *x_scratch;   /* transposed X for wide weight gradients */
    size_t x_scratch_floats;
    /* bf16 training on a CPU with bf16 units (set_precision): the linear layers' operands,
     * converted to bf16 (exact: they are bf16 values already), for oneDNN's bf16 products */
    int gemm16;
    int att16; /* and attention's batched products: P and dS rounded to bf16 before theirs */
    /* causal bf16 attention skips the blocks above the diagonal too (DS_CPU_ATT16_SPLIT=1).
     * Not by default: an AMX host ran the half products on gemm:jit (52-131 GFLOP/s in its
     * oneDNN log) and whole dense ones on brgemm (320-640), so the whole products, with 4/3
     * of the work, are the faster way there */
    int att16_split;
    int dw16_transpose; /* DS_CPU_DW16_TRANSPOSE=1: bf16 weight gradients from a transposed copy of dY */
    int64_t att_shape[4]; /* the last attention shape (B, T, C, H) checked for them, and */
    int att_fast;         /* whether oneDNN runs all six of its products with real code */
    uint16_t *h16[4];
    size_t h16_n[4];
    char describe[160];
    /* store16: the activation ops' activation tensors and weights are 16-bit values of this
     * ds_round_mode (0: fp32). Row and elementwise ops run in tiles (tile_threads threads x 4
     * tiles of tile_floats); the products and the ops that sum over rows use whole fp32 copies
     * f32[] (slots 0-2 activations, 3 a weight matrix, 4 bias or layernorm weights). */
    int s16;
    float *tiles;
    size_t tile_floats;
    int tile_threads;
    float *f32[5];
    size_t f32_n[5];
    /* GELU under store16 through tables (gelu_tables16), built at the first call, one pair per
     * form (0 erf, 1 tanh) for the mode in gelu_lut_mode[form]; gelu_lut_off: DS_CPU_GELU_LUT=0
     * (compute each value, the same bits) */
    uint16_t *gelu_lut[2];
    float *gelu_dlut[2];
    int gelu_lut_mode[2];
    int gelu_lut_off;
} cpu_impl;

#define K(b) (((cpu_impl *)(b)->impl)->k)
#define DNNL(b) (((cpu_impl *)(b)->impl)->dnnl)

static void cpu_destroy(ds_backend *b)
{
    cpu_impl *c = b->impl;
    ds_dnnl_destroy(c->dnnl);
    free(c->scratch);
    free(c->att_scratch);
    free(c->att_dense[0]);
    free(c->att_dense[1]);
    free(c->x_scratch);
    for (int i = 0; i < 4; i++)
        free(c->h16[i]);
    free(c->tiles);
    for (int i = 0; i < 5; i++)
        free(c->f32[i]);
    for (int i = 0; i < 2; i++) {
        free(c->gelu_lut[i]);
        free(c->gelu_dlut[i]);
    }
    free(c);
    free(b);
}

/* 64-byte aligned, zeroed. */
static void *cpu_alloc(ds_backend *b, size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        ds_error_set(&b->err, DS_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}

static void cpu_free(ds_backend *b, void *p)
{
    (void)b;
    free(p);
}

/* Large copies and zero fills are shared between the threads: one core does not fill the memory
 * bus. Measured here (AMD EPYC, 2 threads), zeroing 13 MiB (gpt-tiny's gradients): memset 1.2-1.6
 * ms, split in two 0.5-0.8 ms. */
#define PAR_BYTES (1 << 20)

/* d[bytes] = s[bytes] (s NULL: zeros), in parts shared between the threads from PAR_BYTES up
 * (not inside a parallel region); s and d do not overlap */
static void fill_bytes(char *d, const char *s, size_t bytes)
{
    int nt = 1;
#ifdef _OPENMP
    if (bytes >= PAR_BYTES && !omp_in_parallel())
        nt = omp_get_max_threads();
#endif
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0, team = 1;
#ifdef _OPENMP
        t = omp_get_thread_num(), team = omp_get_num_threads(); /* the team may be smaller */
#endif
        /* thread t's part: edges at multiples of 64 bytes from the start */
        const size_t lo = bytes * (size_t)t / (size_t)team / 64 * 64;
        const size_t hi = t + 1 == team ? bytes : bytes * (size_t)(t + 1) / (size_t)team / 64 * 64;
        if (s)
            memcpy(d + lo, s + lo, hi - lo);
        else
            memset(d + lo, 0, hi - lo);
    }
}

static ds_status cpu_copy(ds_backend *b, void *dst, const void *src, size_t bytes)
{
    (void)b;
    char *d = dst;
    const char *s = src;
    if (!bytes)
        return DS_OK;
    if (d < s + bytes && s < d + bytes) /* overlapping */
        memmove(dst, src, bytes);
    else
        fill_bytes(d, s, bytes);
    return DS_OK;
}

static ds_status cpu_zero(ds_backend *b, void *p, size_t bytes)
{
    (void)b;
    fill_bytes(p, NULL, bytes);
    return DS_OK;
}

/* Another thread (the overlap_comm worker) runs its ops on itself alone: the creating thread's
 * kernels keep every core busy, and a second team of spinning threads would take them over. */
static ds_status cpu_thread_init(ds_backend *b)
{
    (void)b;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    return DS_OK;
}

static ds_status cpu_sync(ds_backend *b)
{
    (void)b;
    return DS_OK;
}

/* Grow a scratch buffer to at least n floats. */
static ds_status scratch(ds_backend *b, float **buf, size_t *have, size_t n)
{
    if (*have >= n)
        return DS_OK;
    free(*buf);
    *buf = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    *have = *buf ? n : 0;
    return *buf ? DS_OK : ds_error_set(&b->err, DS_ERR_NOMEM, "out of memory (%zu floats of scratch)", n);
}

/* bf16 scratch i (0-3) of at least n values */
static uint16_t *h16buf(ds_backend *b, int i, int64_t n)
{
    cpu_impl *c = b->impl;
    if (c->h16_n[i] < (size_t)n) {
        free(c->h16[i]);
        c->h16[i] = aligned_alloc(64, ((size_t)n * 2 + 63) / 64 * 64);
        c->h16_n[i] = c->h16[i] ? (size_t)n : 0;
        if (!c->h16[i]) {
            ds_error_set(&b->err, DS_ERR_NOMEM, "out of memory (%lld bf16 values of scratch)", (long long)n);
            return NULL;
        }
    }
    return c->h16[i];
}

/* bf16 copy i (0-3) of x[n], rounded to nearest even (NaN kept quiet); exact for bf16 values */
static const uint16_t *to_bf16(ds_backend *b, int i, const float *x, int64_t n)
{
    uint16_t *h = h16buf(b, i, n);
    if (h)
        ((cpu_impl *)b->impl)->k->pack16(x, h, n, DS_ROUND_BF16);
    return h;
}

/* ---- store16: 16-bit activation storage ------------------------------------------------------
 * Every activation op computes in fp32 exactly as in fp32 storage, from its inputs unpacked
 * (exactly) from 16 bits, and packs its outputs rounded to nearest even: so each value is the
 * one the fp32 path gives after rounding its output (fuse_round), bit for bit. The add, GELU,
 * the position add and its backward, and LayerNorm's forward and backward widen their 16-bit
 * values as they go (bf16 by a shift) or a row or chunk at a time on the stack, in one pass
 * (the kernel table's *16 ops); the other row-wise and elementwise ops convert tiles of TILE
 * floats per thread, which stay in cache; the products and the embedding's backward unpack
 * whole tensors into fp32 scratch first, so that their sums are formed in the same order as
 * in fp32 storage. Weights are 16-bit too: unpacked whole (slots 3 and 4),
 * except where the products take bf16 operands (AMX) and the embedding table, whose rows are
 * copied as they are. */
#define TILE 16384 /* floats per operand and thread: 64 KiB */
#define PAR16 16384 /* elements above which the one-pass 16-bit ops share their work between threads */
#define HC(p) ((const uint16_t *)(const void *)(p))
#define HM(p) ((uint16_t *)(void *)(p))

static int cpu_store16(ds_backend *b, int mode)
{
    cpu_impl *c = b->impl;
    c->s16 = mode == DS_ROUND_BF16 || mode == DS_ROUND_FP16 ? mode : 0;
    return c->s16 != 0;
}

/* tiles of at least max(TILE, width) floats for every thread */
static ds_status ensure_tiles(ds_backend *b, int64_t width)
{
    cpu_impl *c = b->impl;
    size_t need = (size_t)(width > TILE ? width : TILE);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    if (c->tiles && c->tile_floats >= need && c->tile_threads >= threads)
        return DS_OK;
    free(c->tiles);
    c->tiles = aligned_alloc(64, (size_t)threads * 4 * need * sizeof(float));
    c->tile_floats = c->tiles ? need : 0;
    c->tile_threads = c->tiles ? threads : 0;
    return c->tiles ? DS_OK : ds_error_set(&b->err, DS_ERR_NOMEM, "out of memory (16-bit tiles)");
}

static float *tile(cpu_impl *c, int k)
{
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    return c->tiles + ((size_t)t * 4 + (size_t)k) * c->tile_floats;
}

/* rows per tile for rows of width floats */
static int64_t tile_rows(int64_t width) { return width >= TILE ? 1 : TILE / width; }

/* fp32 copy i of the 16-bit x[n] (x NULL: just the buffer), NULL on failure (error set) */
static float *whole32(ds_backend *b, int i, const float *x, int64_t n)
{
    cpu_impl *c = b->impl;
    if (scratch(b, &c->f32[i], &c->f32_n[i], (size_t)(n > 0 ? n : 1)) != DS_OK)
        return NULL;
    if (x)
        c->k->unpack16(HC(x), c->f32[i], n, c->s16);
    return c->f32[i];
}

enum { EW_RELU_F, EW_RELU_B, EW_DROP_F, EW_DROP_B, EW_SCALE };
typedef struct ew_args {
    int op, acc;
    float p;
    uint64_t seed;
} ew_args;

/* y[n] (=|+=) op(a, c) over 16-bit tensors, tile by tile (c may be NULL) */
static ds_status ew16(ds_backend *b, const ew_args *e, const float *a, const float *cc, float *y, int64_t n)
{
    cpu_impl *c = b->impl;
    const ds_cpu_kernels *k = c->ks; /* inside the tiles: no nested threads */
    const int mode = c->s16;
    ds_status st = ensure_tiles(b, 0);
    if (st != DS_OK)
        return st;
#pragma omp parallel for schedule(static) if (n > TILE)
    for (int64_t i0 = 0; i0 < n; i0 += TILE) {
        int64_t len = n - i0 < TILE ? n - i0 : TILE;
        float *ta = tile(c, 0), *tc = tile(c, 1), *ty = tile(c, 2);
        k->unpack16(HC(a) + i0, ta, len, mode);
        if (cc)
            k->unpack16(HC(cc) + i0, tc, len, mode);
        if (e->acc)
            k->unpack16(HC(y) + i0, ty, len, mode);
        switch (e->op) {
        case EW_RELU_F: k->relu_fwd(ta, ty, len); break;
        case EW_RELU_B: k->relu_bwd(ta, tc, ty, len, e->acc); break;
        case EW_DROP_F: k->dropout_fwd(ta, ty, len, e->p, e->seed, i0); break;
        case EW_DROP_B: k->dropout_bwd(ta, ty, len, e->p, e->seed, e->acc, i0); break;
        case EW_SCALE:
            for (int64_t j = 0; j < len; j++)
                ty[j] = ta[j] * e->p;
            break;
        }
        k->pack16(ty, HM(y) + i0, len, mode);
    }
    return DS_OK;
}

/* Attention's products in causal attention skip the blocks above the diagonal: with T even (64
 * or more) each is two batched products over the halves of the rows (or of the keys), 3/4 of
 * the full product's work. S = Q K^T and dP = dO V^T: rows [0, h) against keys [0, h), rows
 * [h, T) against all (the block they skip is masked: the softmax writes it 0 without reading
 * it). O = P V and dQ = dS K: rows [0, h) over keys [0, h), rows [h, T) over all. dK = dS^T Q
 * and dV = P^T dO: keys [0, h) from every query, keys [h, T) from queries [h, T). P and dS are
 * 0 above the diagonal, so the sums are those of the full products, less terms that are 0. */
static int att_split(int64_t T, int causal) { return causal && T % 2 == 0 && T >= 64; }

enum { ATT_QK, ATT_PV, ATT_TP };            /* the three shapes above */
enum { ATT_F32, ATT_BF16, ATT_BF16_O16 };  /* operands and C: fp32; bf16 and fp32; bf16 */

typedef struct att_mm {
    const void *A, *B;
    void *C;
    const int64_t *as, *bs, *cs; /* {batch, head, row, col}, in elements */
} att_mm;

/* rows [row0, row0 + M) of C = A B, over k in [k0, k0 + K), N columns */
static ds_status att_run(ds_backend *b, int kind, int64_t B, int64_t H, const att_mm *p, int64_t row0, int64_t M,
                         int64_t k0, int64_t K, int64_t N)
{
    const size_t ea = kind == ATT_F32 ? 4 : 2, ec = kind == ATT_BF16_O16 ? 2 : 4;
    const char *A = (const char *)p->A + (size_t)(row0 * p->as[2] + k0 * p->as[3]) * ea;
    const char *Bm = (const char *)p->B + (size_t)(k0 * p->bs[2]) * ea;
    char *C = (char *)p->C + (size_t)(row0 * p->cs[2]) * ec;
    if (kind == ATT_F32)
        return ds_dnnl_matmul_batched(DNNL(b), B, H, M, N, K, (const float *)(const void *)A, p->as,
                                      (const float *)(const void *)Bm, p->bs, (float *)(void *)C, p->cs, 0, &b->err);
    if (kind == ATT_BF16)
        return ds_dnnl_matmul_batched_bf16(DNNL(b), B, H, M, N, K, HC(A), p->as, HC(Bm), p->bs, (float *)(void *)C,
                                           p->cs, 0, &b->err);
    return ds_dnnl_matmul_batched_bf16_out16(DNNL(b), B, H, M, N, K, HC(A), p->as, HC(Bm), p->bs, HM(C), p->cs,
                                             &b->err);
}

/* the (row0, M, k0, K, N) of the products shape runs as: one, or two halves with split */
static int att_parts(int shape, int split, int64_t T, int64_t D, int64_t part[2][5])
{
    const int64_t h = T / 2;
    if (!split) {
        const int64_t one[3][5] = {{0, T, 0, D, T}, {0, T, 0, T, D}, {0, T, 0, T, D}};
        memcpy(part[0], one[shape], sizeof part[0]);
        return 1;
    }
    const int64_t two[3][2][5] = {{{0, h, 0, D, h}, {h, h, 0, D, T}},
                                  {{0, h, 0, h, D}, {h, h, 0, T, D}},
                                  {{0, h, 0, T, D}, {h, h, h, h, D}}};
    memcpy(part, two[shape], sizeof two[shape]);
    return 2;
}

static ds_status att_product(ds_backend *b, int kind, int shape, int split, int64_t B, int64_t H, int64_t T,
                             int64_t D, const att_mm *p)
{
    int64_t part[2][5];
    const int n = att_parts(shape, split, T, D, part);
    ds_status st = DS_OK;
    for (int i = 0; i < n && st == DS_OK; i++)
        st = att_run(b, kind, B, H, p, part[i][0], part[i][1], part[i][2], part[i][3], part[i][4]);
    return st;
}

/* attention's six batched products (attention_fwd/bwd on dense operands, bf16) at this shape, as
 * they run causal (split) and not, all run on oneDNN code that is not its reference
 * implementation; the four that write the output or the gradients both with fp32 and with bf16
 * output (16-bit storage) */
static int att_products_fast(ds_dnnl *d, int64_t B, int64_t T, int64_t C, int64_t H)
{
    const int64_t D = C / H;
    const int64_t q_s[4] = {H * T * D, T * D, D, 1}, kt_s[4] = {H * T * D, T * D, 1, D};
    const int64_t a_s[4] = {H * T * T, T * T, T, 1}, at_s[4] = {H * T * T, T * T, 1, T};
    const struct {
        int shape, o16;
        const int64_t *as, *bs, *cs;
    } prods[] = {
        {ATT_QK, 0, q_s, kt_s, a_s},  /* S = Q K^T, dP = dO V^T */
        {ATT_PV, 1, a_s, q_s, q_s},   /* O = P V, dQ = dS K */
        {ATT_TP, 1, at_s, q_s, q_s},  /* dK = dS^T Q, dV = P^T dO */
    };
    for (int split = 0; split < 1 + att_split(T, 1); split++)
        for (size_t i = 0; i < sizeof prods / sizeof prods[0]; i++) {
            int64_t part[2][5];
            const int n = att_parts(prods[i].shape, split, T, D, part);
            for (int k = 0; k < n; k++)
                for (int o16 = 0; o16 <= prods[i].o16; o16++)
                    if (!ds_dnnl_bf16_batched_fast(d, B, H, part[k][1], part[k][4], part[k][3], prods[i].as,
                                                   prods[i].bs, prods[i].cs, o16))
                        return 0;
        }
    return 1;
}

/* attention in bf16 at this shape (att16, and no product would fall to reference code: then
 * this shape's attention stays fp32, forward and backward alike); cached per shape */
static int att16_here(ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H)
{
    cpu_impl *c = b->impl;
    if (!c->att16)
        return 0;
    if (!(c->att_shape[0] == B && c->att_shape[1] == T && c->att_shape[2] == C && c->att_shape[3] == H)) {
        c->att_fast = att_products_fast(c->dnnl, B, T, C, H);
        c->att_shape[0] = B, c->att_shape[1] = T, c->att_shape[2] = C, c->att_shape[3] = H;
    }
    return c->att_fast;
}

/* bf16 training: the linear layers' products in bf16 on the CPU's bf16 units, when it has them
 * (AMX-BF16, AVX512_BF16) and DS_CPU_BF16_GEMM is not 0; otherwise fp32 products of the same
 * bf16 values (the same numbers up to summation order). DS_CPU_BF16_GEMM=1 makes missing
 * units an error; DS_CPU_BF16_GEMM=emulate (tests) takes the bf16-units code paths on any CPU,
 * the products themselves widened to fp32 (ds_dnnl_bf16_emulate). */
static int x86_level(void);

/* The kernel variant for this precision: a CPU with bf16 units has AVX-512, and there bf16
 * training ran faster on the avx512 kernels (gpt-tiny, 2 threads: an AMX Xeon 6-9%, where
 * its fp32 ran 10% slower on them, the reason cpuid picks avx2; a Zen 5 EPYC with
 * AVX512_BF16 0-3%). Only for cpuid's pick; the GELU tables are rebuilt on a change. */
static void bf16_kernels(cpu_impl *c, int on)
{
    if (!c->auto_pick)
        return;
    const ds_cpu_kernels *k = on && x86_level() >= 2 ? &ds_cpu_kernels_avx512 : c->picked;
    if (k == c->k)
        return;
    c->k = k;
    c->ks = k == &ds_cpu_kernels_avx512 ? &ds_cpu_kernels_avx512_serial : c->picked_s;
    c->gelu_lut_mode[0] = c->gelu_lut_mode[1] = -1;
}

static ds_status cpu_set_precision(ds_backend *b, int mode)
{
    cpu_impl *c = b->impl;
    const char *env = getenv("DS_CPU_BF16_GEMM"), *why = "";
    int want = mode == DS_ROUND_BF16 && !(env && strcmp(env, "0") == 0);
    const int emulate = env && strcmp(env, "emulate") == 0;
    if (env && *env && strcmp(env, "0") && strcmp(env, "1") && !emulate)
        return ds_error_set(&b->err, DS_ERR_INVALID, "DS_CPU_BF16_GEMM=%s: expected 0 (fp32 products), 1 "
                            "(bf16 products, an error without bf16 units) or emulate (tests)", env);
    ds_dnnl_bf16_emulate(c->dnnl, want && emulate);
    const char *split = getenv("DS_CPU_ATT16_SPLIT");
    if (split && *split && strcmp(split, "0") && strcmp(split, "1"))
        return ds_error_set(&b->err, DS_ERR_INVALID, "DS_CPU_ATT16_SPLIT=%s: expected 0 (whole products, the "
                            "default) or 1 (causal attention skips the blocks above the diagonal)", split);
    c->att16_split = split && strcmp(split, "1") == 0;
    const char *dwt = getenv("DS_CPU_DW16_TRANSPOSE");
    if (dwt && *dwt && strcmp(dwt, "0") && strcmp(dwt, "1"))
        return ds_error_set(&b->err, DS_ERR_INVALID, "DS_CPU_DW16_TRANSPOSE=%s: expected 0 (weight gradients read "
                            "dY^T as a strided view, the default) or 1 (dY transposed into a copy first)", dwt);
    c->dw16_transpose = dwt && strcmp(dwt, "1") == 0;
    c->att_shape[0] = 0; /* check shapes again */
    if (want && emulate) {
        bf16_kernels(c, 0);
        c->gemm16 = c->att16 = 1;
        snprintf(c->describe, sizeof c->describe, "%s, bf16 GEMMs and attention emulated in fp32 "
                 "(DS_CPU_BF16_GEMM=emulate)", c->k->variant);
        return DS_OK;
    }
    c->gemm16 = want && ds_dnnl_bf16_probe(c->dnnl, &why);
    bf16_kernels(c, c->gemm16);
    c->att16 = c->gemm16 && att_products_fast(c->dnnl, 2, 64, 64, 2); /* a small shape of the kind */
    if (want && !c->gemm16 && env && strcmp(env, "1") == 0)
        return ds_error_set(&b->err, DS_ERR_UNSUPPORTED, "DS_CPU_BF16_GEMM=1: no bf16 products here: %s", why);
    if (c->gemm16)
        snprintf(c->describe, sizeof c->describe, "%s, bf16 GEMMs%s on %s", c->k->variant,
                 c->att16 ? " and attention" : "", why);
    else if (mode == DS_ROUND_BF16) /* asked for, not had: say why */
        snprintf(c->describe, sizeof c->describe, "%s, fp32 GEMMs: %s", c->k->variant,
                 want ? why : "DS_CPU_BF16_GEMM=0");
    else
        c->describe[0] = 0;
    return DS_OK;
}

static const char *cpu_describe(const ds_backend *b)
{
    const cpu_impl *c = b->impl;
    return c->describe[0] ? c->describe : c->k->variant;
}

static ds_status linear_fwd32(ds_backend *b, const float *x, const float *w, const float *bias,
                               float *y, int64_t M, int64_t K, int64_t N)
{
    if (((cpu_impl *)b->impl)->gemm16) {
        const uint16_t *hx = to_bf16(b, 0, x, M * K), *hw = hx ? to_bf16(b, 1, w, N * K) : NULL;
        if (!hw)
            return DS_ERR_NOMEM;
        return ds_dnnl_matmul_bf16(DNNL(b), M, N, K, hx, K, 1, hw, 1, K, bias, y, 0, &b->err);
    }
    /* W^T as a strided view: B(k, n) = W[n*K + k] */
    return ds_dnnl_matmul(DNNL(b), M, N, K, x, K, 1, w, 1, K, bias, y, 0, &b->err);
}

static ds_status cpu_linear_fwd(ds_backend *b, const float *x, const float *w, const float *bias,
                                float *y, int64_t M, int64_t K, int64_t N)
{
    cpu_impl *c = b->impl;
    if (!c->s16)
        return linear_fwd32(b, x, w, bias, y, M, K, N);
    const float *b32 = bias ? whole32(b, 4, bias, N) : NULL;
    if (bias && !b32)
        return DS_ERR_NOMEM;
    if (c->gemm16 && c->s16 == DS_ROUND_BF16) /* x and w are bf16 already, y written in bf16 */
        return ds_dnnl_matmul_bf16_out16(DNNL(b), M, N, K, HC(x), K, 1, HC(w), 1, K, b32, HM(y), &b->err);
    float *y32 = whole32(b, 0, NULL, M * N); /* slot 0: also dY's in backward (the LM head's M x V) */
    const float *x32 = whole32(b, 1, x, M * K), *w32 = whole32(b, 3, w, N * K);
    if (!y32 || !x32 || !w32)
        return DS_ERR_NOMEM;
    ds_status st = linear_fwd32(b, x32, w32, b32, y32, M, K, N);
    if (st == DS_OK)
        c->k->pack16(y32, HM(y), M * N, c->s16);
    return st;
}

static ds_status linear_bwd32(ds_backend *b, const float *dy, const float *x, const float *w,
                              float *dx, float *dw, float *dbias, int64_t M, int64_t K,
                              int64_t N, int accumulate)
{
    ds_status st = DS_OK;
    cpu_impl *c16 = b->impl;
    if (c16->gemm16) {
        /* dX = dY W and dW += dY^T X, with the operands in bf16 (copy 0: dY, then dY^T) */
        const uint16_t *hdy, *h1;
        if (dx) {
            if (!(hdy = to_bf16(b, 0, dy, M * N)) || !(h1 = to_bf16(b, 1, w, N * K)))
                return DS_ERR_NOMEM;
            if ((st = ds_dnnl_matmul_bf16(DNNL(b), M, K, N, hdy, N, 1, h1, K, 1, NULL, dx, accumulate, &b->err)))
                return st;
        }
        if (dw) {
            if ((st = scratch(b, &c16->scratch, &c16->scratch_floats, (size_t)(M * N))) != DS_OK)
                return st;
            c16->k->transpose(dy, c16->scratch, M, N, dbias); /* dY^T [N, M], and the bias gradient */
            dbias = NULL;
            if (!(hdy = to_bf16(b, 0, c16->scratch, M * N)) || !(h1 = to_bf16(b, 1, x, M * K)))
                return DS_ERR_NOMEM;
            if ((st = ds_dnnl_matmul_bf16(DNNL(b), N, K, M, hdy, M, 1, h1, K, 1, NULL, dw, 1, &b->err)))
                return st;
        }
        if (dbias)
            K(b)->colsum_acc(dy, dbias, M, N);
        return DS_OK;
    }
    if (dx) /* dX[M,K] = dY[M,N] W[N,K] */
        st = ds_dnnl_matmul(DNNL(b), M, K, N, dy, N, 1, w, K, 1, NULL, dx, accumulate, &b->err);
    if (st == DS_OK && dw) {
        /* the bias gradient rides along with the transpose */
        /* dW[N,K] += dY^T X. oneDNN reads a transposed dY with stride N, which is slow when
         * N is a power of two (cache-set aliasing: 2x slower at N = 1024); an explicit
         * transpose costs one pass over dY and keeps the product at full speed. */
        cpu_impl *c = b->impl;
        if ((st = scratch(b, &c->scratch, &c->scratch_floats, (size_t)(M * N))) != DS_OK)
            return st;
        c->k->transpose(dy, c->scratch, M, N, dbias);
        dbias = NULL;
        if (K >= 1024) {
            /* Measured here: with X as a plain [M, K] operand and K = 1024, oneDNN's gemm
             * reaches half its speed (79 against 151 GFLOP/s); X transposed runs at full speed
             * for the price of one more pass. */
            if ((st = scratch(b, &c->x_scratch, &c->x_scratch_floats, (size_t)(M * K))) != DS_OK)
                return st;
            c->k->transpose(x, c->x_scratch, M, K, NULL);
            st = ds_dnnl_matmul(DNNL(b), N, K, M, c->scratch, M, 1, c->x_scratch, 1, M, NULL, dw, 1, &b->err);
        } else {
            st = ds_dnnl_matmul(DNNL(b), N, K, M, c->scratch, M, 1, x, K, 1, NULL, dw, 1, &b->err);
        }
    }
    if (st == DS_OK && dbias)
        K(b)->colsum_acc(dy, dbias, M, N);
    return st;
}

static ds_status cpu_linear_bwd(ds_backend *b, const float *dy, const float *x, const float *w,
                                float *dx, float *dw, float *dbias, int64_t M, int64_t K,
                                int64_t N, int accumulate)
{
    cpu_impl *c = b->impl;
    if (!c->s16)
        return linear_bwd32(b, dy, x, w, dx, dw, dbias, M, K, N, accumulate);
    /* on bf16 units the products read the stored bf16 dY, W and X, dY^T as a strided view (or
     * transposed in 16 bits first, DS_CPU_DW16_TRANSPOSE=1), the bias gradient summed over the
     * widened values */
    const int units = c->gemm16 && c->s16 == DS_ROUND_BF16;
    const int need_dy32 = !units || (dbias && !dw); /* for the fp32 products, or a bias gradient alone */
    const float *dy32 = need_dy32 ? whole32(b, 0, dy, M * N) : NULL;
    const float *x32 = dw && !units ? whole32(b, 1, x, M * K) : NULL;
    const float *w32 = dx && !units ? whole32(b, 3, w, N * K) : NULL;
    const int dx16 = units && !accumulate; /* dX written in bf16 by the product */
    float *dx32 = dx && !dx16 ? whole32(b, 2, accumulate ? dx : NULL, M * K) : NULL;
    if ((need_dy32 && !dy32) || (dw && !units && !x32) || (dx && !dx16 && !dx32) ||
        (dx && !units && !w32))
        return DS_ERR_NOMEM;
    ds_status st = DS_OK;
    if (!units) {
        st = linear_bwd32(b, dy32, x32, w32, dx32, dw, dbias, M, K, N, accumulate);
    } else {
        if (dx && dx16)
            st = ds_dnnl_matmul_bf16_out16(DNNL(b), M, K, N, HC(dy), N, 1, HC(w), K, 1, NULL, HM(dx), &b->err);
        else if (dx)
            st = ds_dnnl_matmul_bf16(DNNL(b), M, K, N, HC(dy), N, 1, HC(w), K, 1, NULL, dx32, accumulate, &b->err);
        if (st == DS_OK && dw && c->dw16_transpose) {
            uint16_t *hdyt = h16buf(b, 0, M * N);
            if (!hdyt)
                return DS_ERR_NOMEM;
            c->k->transpose16(HC(dy), hdyt, M, N, dbias, c->s16); /* dY^T [N, M], and the bias gradient */
            dbias = NULL;
            st = ds_dnnl_matmul_bf16(DNNL(b), N, K, M, hdyt, M, 1, HC(x), K, 1, NULL, dw, 1, &b->err);
        } else if (st == DS_OK && dw) {
            /* dY^T as a strided view of the stored dY (on AMX as fast as a transposed copy, or
             * faster: bench_dnnl's "dY^T view" rows), the bias gradient with transpose16's bits */
            if (dbias)
                c->k->colsum16_acc(HC(dy), dbias, M, N, c->s16);
            dbias = NULL;
            st = ds_dnnl_matmul_bf16(DNNL(b), N, K, M, HC(dy), 1, N, HC(x), K, 1, NULL, dw, 1, &b->err);
        }
        if (st == DS_OK && dbias)
            c->k->colsum_acc(dy32, dbias, M, N);
    }
    if (st == DS_OK && dx32)
        c->k->pack16(dx32, HM(dx), M * K, c->s16);
    return st;
}

/* Attention as batched products over (batch, head), with every operand a strided view of the
 * packed qkv [B, T, 3C] or out [B, T, C]; causal attention skips the products' blocks above the
 * diagonal (att_split), and rows are masked in the softmax. Strides are {batch, head, row,
 * col} in elements. */
static ds_status attention_fwd32(ds_backend *b, const float *qkv, float *out, float *att,
                                 int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    const int64_t D = C / H, C3 = 3 * C;
    const int64_t q_s[4] = {T * C3, D, C3, 1};       /* Q or V as [T, D] */
    const int64_t kt_s[4] = {T * C3, D, 1, C3};      /* K^T as [D, T] */
    const int64_t a_s[4] = {H * T * T, T * T, T, 1}; /* scores [T, T] */
    const int64_t o_s[4] = {T * C, D, C, 1};         /* out as [T, D] */
    const int split = att_split(T, causal);
    ds_status st = att_product(b, ATT_F32, ATT_QK, split, B, H, T, D, &(att_mm){qkv, qkv + C, att, q_s, kt_s, a_s});
    if (st != DS_OK)
        return st;
    K(b)->attn_softmax_fwd(att, NULL, B * H, T, 1.0f / sqrtf((float)D), causal);
    return att_product(b, ATT_F32, ATT_PV, split, B, H, T, D, &(att_mm){att, qkv + 2 * C, out, a_s, q_s, o_s});
}

static ds_status attention_bwd32(ds_backend *b, const float *dout, const float *qkv,
                                 const float *att, float *dqkv, int64_t B, int64_t T, int64_t C,
                                 int64_t H, int causal)
{
    cpu_impl *c = b->impl;
    const int64_t D = C / H, C3 = 3 * C;
    const int64_t q_s[4] = {T * C3, D, C3, 1};
    const int64_t kt_s[4] = {T * C3, D, 1, C3};
    const int64_t a_s[4] = {H * T * T, T * T, T, 1};
    const int64_t at_s[4] = {H * T * T, T * T, 1, T}; /* a score matrix transposed */
    const int64_t o_s[4] = {T * C, D, C, 1};
    const int split = att_split(T, causal);
    ds_status st = scratch(b, &c->att_scratch, &c->att_scratch_floats, (size_t)(B * H * T * T));
    float *ds = c->att_scratch;
    if (st == DS_OK) /* dP = dO V^T */
        st = att_product(b, ATT_F32, ATT_QK, split, B, H, T, D, &(att_mm){dout, qkv + 2 * C, ds, o_s, kt_s, a_s});
    if (st != DS_OK)
        return st;
    K(b)->attn_softmax_bwd(att, ds, NULL, NULL, B * H, T, 1.0f / sqrtf((float)D), causal);
    /* dQ = dS K, dK = dS^T Q, dV = P^T dO: together they write all of dqkv */
    if ((st = att_product(b, ATT_F32, ATT_PV, split, B, H, T, D, &(att_mm){ds, qkv + C, dqkv, a_s, q_s, q_s})) ||
        (st = att_product(b, ATT_F32, ATT_TP, split, B, H, T, D, &(att_mm){ds, qkv, dqkv + C, at_s, q_s, q_s})) ||
        (st = att_product(b, ATT_F32, ATT_TP, split, B, H, T, D,
                          &(att_mm){att, dout, dqkv + 2 * C, at_s, o_s, q_s})))
        return st;
    return DS_OK;
}

/* bf16 training on bf16 units (att16): the same products in bf16 on dense [B, H, T, D] copies of
 * q, k, v (and dO) out of the packed qkv [B, T, 3, H, D] (and out [B, T, H, D]), the outputs
 * written dense and copied back. On views of the packed tensors (a head's rows 3C apart) oneDNN
 * runs gemm:jit, on the dense copies brgemm on AMX: bench_dnnl, gpt-tiny's shapes on an AMX host
 * (2 threads), S = Q K^T 172 -> 534 GFLOP/s, O = P V 356 -> 695, dK = dS^T Q 321 -> 488; the
 * copies of Q, K and V 0.056 ms. In fp32 on AVX2 (AMD EPYC, 2 threads) the dense products were
 * 10-25% faster but the copies cost more than that (bench_cuda, gpt-tiny: attention forward 1.4
 * -> 1.7-2.1 ms), so fp32 attention stays on the packed views above. The copies convert fp32
 * buffers holding bf16 values to bf16 (exact). The probabilities P (kept fp32 in att for
 * backward) are rounded to bf16 before P V, as FlashAttention and the CUDA fused kernels do. */

/* rows of D values between the packed [B, T, ld] (part p, head h at column p C + h D; C = H D)
 * and dense [np][B][H][T][D]: into dense bf16 (the packed side bf16 with p16, else fp32 values
 * rounded), or back into the packed layout as they are (the dense side of the packed side's type) */
static void att_repack(cpu_impl *c, int to_dense, void *packed, int p16, void *dense, int64_t np, int64_t B,
                       int64_t T, int64_t H, int64_t D, int64_t ld)
{
    const ds_cpu_kernels *k = c->ks; /* inside the threads */
    const int64_t C = H * D;
    const size_t pe = p16 ? 2 : 4, de = to_dense ? 2 : pe;
#pragma omp parallel for collapse(3) schedule(static) if (np * B * T * C > 65536)
    for (int64_t p = 0; p < np; p++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t t = 0; t < T; t++) {
                    char *pk = (char *)packed + (size_t)((b * T + t) * ld + p * C + h * D) * pe;
                    char *dn = (char *)dense + (size_t)((((p * B + b) * H + h) * T + t) * D) * de;
                    if (!to_dense)
                        memcpy(pk, dn, (size_t)D * pe);
                    else if (p16)
                        memcpy(dn, pk, (size_t)D * 2);
                    else
                        k->pack16((const float *)(const void *)pk, (uint16_t *)(void *)dn, D, DS_ROUND_BF16);
                }
}

/* dense operand buffers: 0 the inputs (q, k, v, dO; bf16), 1 the outputs (out, or dq, dk, dv) */
static char *att_dense(ds_backend *b, int i, size_t bytes)
{
    cpu_impl *c = b->impl;
    return scratch(b, &c->att_dense[i], &c->att_dense_n[i], (bytes + 3) / 4) == DS_OK ? (char *)c->att_dense[i] : NULL;
}

/* qkv and out bf16 (s16) or fp32 buffers holding bf16 values; out written bf16 by P V with s16 */
static ds_status attention_fwd16(ds_backend *b, const void *qkv, void *out, float *att, int64_t B, int64_t T,
                                 int64_t C, int64_t H, int causal)
{
    cpu_impl *c = b->impl;
    const int64_t D = C / H, n = B * T * C;
    const int s16 = c->s16 == DS_ROUND_BF16;
    const int64_t q_s[4] = {H * T * D, T * D, D, 1}, kt_s[4] = {H * T * D, T * D, 1, D};
    const int64_t a_s[4] = {H * T * T, T * T, T, 1};
    const int split = c->att16_split && att_split(T, causal);
    char *in = att_dense(b, 0, (size_t)(3 * n) * 2), *o = in ? att_dense(b, 1, (size_t)n * (s16 ? 2 : 4)) : NULL;
    if (!o)
        return DS_ERR_NOMEM;
    uint16_t *q = (uint16_t *)(void *)in;
    att_repack(c, 1, (void *)qkv, s16, q, 3, B, T, H, D, 3 * C);
    ds_status st = att_product(b, ATT_BF16, ATT_QK, split, B, H, T, D, &(att_mm){q, q + n, att, q_s, kt_s, a_s});
    if (st != DS_OK)
        return st;
    uint16_t *p16 = h16buf(b, 2, B * H * T * T);
    if (!p16)
        return DS_ERR_NOMEM;
    K(b)->attn_softmax_fwd(att, p16, B * H, T, 1.0f / sqrtf((float)D), causal);
    st = att_product(b, s16 ? ATT_BF16_O16 : ATT_BF16, ATT_PV, split, B, H, T, D,
                     &(att_mm){p16, q + 2 * n, o, a_s, q_s, q_s});
    if (st == DS_OK)
        att_repack(c, 0, out, s16, o, 1, B, T, H, D, C);
    return st;
}

/* its backward: dP = dO V^T (fp32, att_scratch), dS from P and dP in fp32 rounded to bf16 with P
 * in the same pass, for dQ = dS K, dK = dS^T Q, dV = P^T dO; dqkv bf16 (s16) or fp32, written
 * whole */
static ds_status attention_bwd16(ds_backend *b, const void *dout, const void *qkv, const float *att, void *dqkv,
                                 int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    cpu_impl *c = b->impl;
    const int64_t D = C / H, n = B * T * C, na = B * H * T * T;
    const int s16 = c->s16 == DS_ROUND_BF16;
    const int64_t q_s[4] = {H * T * D, T * D, D, 1}, kt_s[4] = {H * T * D, T * D, 1, D};
    const int64_t a_s[4] = {H * T * T, T * T, T, 1}, at_s[4] = {H * T * T, T * T, 1, T};
    const int split = c->att16_split && att_split(T, causal);
    const size_t eo = s16 ? 2 : 4;
    char *in = att_dense(b, 0, (size_t)(4 * n) * 2), *o = in ? att_dense(b, 1, (size_t)(3 * n) * eo) : NULL;
    ds_status st = o ? scratch(b, &c->att_scratch, &c->att_scratch_floats, (size_t)na) : DS_ERR_NOMEM;
    if (st != DS_OK)
        return st;
    uint16_t *q = (uint16_t *)(void *)in, *k = q + n, *v = q + 2 * n, *dO = q + 3 * n;
    att_repack(c, 1, (void *)qkv, s16, q, 3, B, T, H, D, 3 * C);
    att_repack(c, 1, (void *)dout, s16, dO, 1, B, T, H, D, C);
    float *ds = c->att_scratch;
    st = att_product(b, ATT_BF16, ATT_QK, split, B, H, T, D, &(att_mm){dO, v, ds, q_s, kt_s, a_s});
    if (st != DS_OK)
        return st;
    uint16_t *ds16 = h16buf(b, 2, na), *p16 = ds16 ? h16buf(b, 3, na) : NULL;
    if (!p16)
        return DS_ERR_NOMEM;
    K(b)->attn_softmax_bwd(att, ds, ds16, p16, B * H, T, 1.0f / sqrtf((float)D), causal);
    const int kind = s16 ? ATT_BF16_O16 : ATT_BF16;
    if ((st = att_product(b, kind, ATT_PV, split, B, H, T, D, &(att_mm){ds16, k, o, a_s, q_s, q_s})) ||
        (st = att_product(b, kind, ATT_TP, split, B, H, T, D, &(att_mm){ds16, q, o + (size_t)n * eo, at_s, q_s, q_s})) ||
        (st = att_product(b, kind, ATT_TP, split, B, H, T, D,
                          &(att_mm){p16, dO, o + (size_t)(2 * n) * eo, at_s, q_s, q_s})))
        return st;
    att_repack(c, 0, dqkv, s16, o, 3, B, T, H, D, 3 * C);
    return DS_OK;
}

static ds_status cpu_attention_fwd(ds_backend *b, const float *qkv, float *out, float *att,
                                   int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    cpu_impl *c = b->impl;
    const int64_t M = B * T;
    if (att16_here(b, B, T, C, H) && (c->s16 == DS_ROUND_BF16 || !c->s16))
        return attention_fwd16(b, qkv, out, att, B, T, C, H, causal);
    if (!c->s16)
        return attention_fwd32(b, qkv, out, att, B, T, C, H, causal);
    const float *qkv32 = whole32(b, 0, qkv, M * 3 * C);
    float *out32 = whole32(b, 1, NULL, M * C);
    if (!qkv32 || !out32)
        return DS_ERR_NOMEM;
    ds_status st = attention_fwd32(b, qkv32, out32, att, B, T, C, H, causal);
    if (st == DS_OK)
        c->k->pack16(out32, HM(out), M * C, c->s16);
    return st;
}

static ds_status cpu_attention_bwd(ds_backend *b, const float *dout, const float *qkv,
                                   const float *att, float *dqkv, int64_t B, int64_t T, int64_t C,
                                   int64_t H, int causal)
{
    cpu_impl *c = b->impl;
    const int64_t M = B * T;
    if (att16_here(b, B, T, C, H) && (c->s16 == DS_ROUND_BF16 || !c->s16))
        return attention_bwd16(b, dout, qkv, att, dqkv, B, T, C, H, causal);
    if (!c->s16)
        return attention_bwd32(b, dout, qkv, att, dqkv, B, T, C, H, causal);
    const float *dout32 = whole32(b, 0, dout, M * C), *qkv32 = whole32(b, 1, qkv, M * 3 * C);
    float *dqkv32 = whole32(b, 2, NULL, M * 3 * C);
    if (!dout32 || !qkv32 || !dqkv32)
        return DS_ERR_NOMEM;
    ds_status st = attention_bwd32(b, dout32, qkv32, att, dqkv32, B, T, C, H, causal);
    if (st == DS_OK)
        c->k->pack16(dqkv32, HM(dqkv), M * 3 * C, c->s16);
    return st;
}

/* The remaining activation ops: the kernel table directly in fp32 storage, through tiles or
 * whole fp32 copies in 16-bit storage. */
static ds_status cpu_embedding_fwd(ds_backend *b, const int32_t *ids, const float *t, float *o, int64_t M,
                                   int64_t C)
{
    cpu_impl *c = b->impl;
    if (!c->s16) {
        c->k->embedding_fwd(ids, t, o, M, C);
        return DS_OK;
    }
    /* the table's rows are 16-bit values already: copied as they are */
#pragma omp parallel for schedule(static) if (M * C > TILE)
    for (int64_t m = 0; m < M; m++)
        memcpy(HM(o) + m * C, HC(t) + (int64_t)ids[m] * C, (size_t)C * 2);
    return DS_OK;
}

static ds_status cpu_embedding_bwd(ds_backend *b, const int32_t *ids, const float *d, float *dt, int64_t M,
                                   int64_t C)
{
    cpu_impl *c = b->impl;
    if (c->s16 && !(d = whole32(b, 0, d, M * C)))
        return DS_ERR_NOMEM;
    c->k->embedding_bwd(ids, d, dt, M, C);
    return DS_OK;
}

static ds_status cpu_posadd_fwd(ds_backend *b, const float *x, const float *p, float *y, int64_t B,
                                int64_t T, int64_t C)
{
    cpu_impl *c = b->impl;
    if (!c->s16) {
        c->k->posadd_fwd(x, p, y, B, T, C);
        return DS_OK;
    }
    /* y = x + p sample by sample: posadd_fwd's sums, each rounded once (add16); the samples shared
     * between the threads, or each sample's elements where there are fewer samples than threads */
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    if (B < nt || B * T * C <= PAR16) {
        for (int64_t i = 0; i < B; i++)
            c->k->add16(HC(x) + i * T * C, HC(p), HM(y) + i * T * C, T * C, c->s16);
        return DS_OK;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < B; i++)
        c->ks->add16(HC(x) + i * T * C, HC(p), HM(y) + i * T * C, T * C, c->s16);
    return DS_OK;
}

static ds_status cpu_posadd_bwd(ds_backend *b, const float *dy, float *dp, int64_t B, int64_t T, int64_t C)
{
    cpu_impl *c = b->impl;
    if (c->s16)
        c->k->posadd_bwd16(HC(dy), dp, B, T, C, c->s16);
    else
        c->k->posadd_bwd(dy, dp, B, T, C);
    return DS_OK;
}

static ds_status cpu_layernorm_fwd(ds_backend *b, const float *x, const float *w, const float *bi, float *y,
                                   float *mean, float *rstd, int64_t M, int64_t C, float eps)
{
    cpu_impl *c = b->impl;
    if (!c->s16) {
        c->k->layernorm_fwd(x, w, bi, y, mean, rstd, M, C, eps);
        return DS_OK;
    }
    float *wb = whole32(b, 4, NULL, 2 * C); /* w then bias, unpacked */
    if (!wb)
        return DS_ERR_NOMEM;
    c->k->unpack16(HC(w), wb, C, c->s16);
    c->k->unpack16(HC(bi), wb + C, C, c->s16);
    if (c->k->layernorm_fwd16(HC(x), wb, wb + C, HM(y), mean, rstd, M, C, eps, c->s16) == 0)
        return DS_OK;
    ds_status st = ensure_tiles(b, C); /* rows wider than its stack buffers: through the tiles */
    if (st != DS_OK)
        return st;
    const int64_t R = tile_rows(C);
#pragma omp parallel for schedule(static) if (M * C > TILE)
    for (int64_t r0 = 0; r0 < M; r0 += R) {
        int64_t rows = M - r0 < R ? M - r0 : R;
        float *tx = tile(c, 0), *ty = tile(c, 1);
        c->ks->unpack16(HC(x) + r0 * C, tx, rows * C, c->s16);
        c->ks->layernorm_fwd(tx, wb, wb + C, ty, mean + r0, rstd + r0, rows, C, eps);
        c->ks->pack16(ty, HM(y) + r0 * C, rows * C, c->s16);
    }
    return DS_OK;
}

static ds_status cpu_layernorm_bwd(ds_backend *b, const float *dy, const float *x, const float *w,
                                   const float *mean, const float *rstd, float *dx, float *dw, float *db,
                                   int64_t M, int64_t C, int acc)
{
    cpu_impl *c = b->impl;
    if (!c->s16) {
        c->k->layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, M, C, acc);
        return DS_OK;
    }
    /* dy, x and dx widened chunk by chunk inside the kernel (the same sums as on whole copies) */
    const float *w32 = whole32(b, 4, w, C);
    if (!w32 || c->k->layernorm_bwd16(HC(dy), HC(x), w32, mean, rstd, dx ? HM(dx) : NULL, dw, db, M, C, acc,
                                      c->s16) != 0)
        return ds_error_set(&b->err, DS_ERR_NOMEM, "out of memory (layernorm backward, 16-bit storage)");
    return DS_OK;
}

/* GELU's tables for form ap (1 tanh, 0 erf) in store16's mode, built the first time (0.1-0.3
 * ms; 384 KiB); 0 where they could not be allocated or DS_CPU_GELU_LUT=0: the caller computes
 * each value instead, with the same bits */
static int gelu_tables(cpu_impl *c, int ap)
{
    ap = ap != 0;
    if (c->gelu_lut_off)
        return 0;
    if (c->gelu_lut[ap] && c->gelu_lut_mode[ap] == c->s16)
        return 1;
    if (!c->gelu_lut[ap]) {
        c->gelu_lut[ap] = malloc(65536 * sizeof(uint16_t));
        c->gelu_dlut[ap] = malloc(65536 * sizeof(float));
        if (!c->gelu_lut[ap] || !c->gelu_dlut[ap]) {
            free(c->gelu_lut[ap]);
            free(c->gelu_dlut[ap]);
            c->gelu_lut[ap] = NULL;
            c->gelu_dlut[ap] = NULL;
            return 0;
        }
    }
    c->k->gelu_tables16(c->gelu_lut[ap], c->gelu_dlut[ap], ap, c->s16);
    c->gelu_lut_mode[ap] = c->s16;
    return 1;
}

static ds_status cpu_gelu_fwd(ds_backend *b, const float *x, float *y, int64_t n, int ap)
{
    cpu_impl *c = b->impl;
    if (c->s16 && gelu_tables(c, ap))
        c->k->gelu_fwd16_lut(HC(x), c->gelu_lut[ap != 0], HM(y), n);
    else if (c->s16)
        c->k->gelu_fwd16(HC(x), HM(y), n, ap, c->s16);
    else
        c->k->gelu_fwd(x, y, n, ap);
    return DS_OK;
}

static ds_status cpu_gelu_bwd(ds_backend *b, const float *x, const float *dy, float *dx, int64_t n, int ap,
                              int acc)
{
    cpu_impl *c = b->impl;
    if (c->s16 && gelu_tables(c, ap))
        c->k->gelu_bwd16_lut(HC(x), c->gelu_dlut[ap != 0], HC(dy), HM(dx), n, acc, c->s16);
    else if (c->s16)
        c->k->gelu_bwd16(HC(x), HC(dy), HM(dx), n, ap, acc, c->s16);
    else
        c->k->gelu_bwd(x, dy, dx, n, ap, acc);
    return DS_OK;
}

static ds_status cpu_relu_fwd(ds_backend *b, const float *x, float *y, int64_t n)
{
    if (((cpu_impl *)b->impl)->s16)
        return ew16(b, &(ew_args){.op = EW_RELU_F}, x, NULL, y, n);
    K(b)->relu_fwd(x, y, n);
    return DS_OK;
}

static ds_status cpu_relu_bwd(ds_backend *b, const float *y, const float *dy, float *dx, int64_t n, int acc)
{
    if (((cpu_impl *)b->impl)->s16)
        return ew16(b, &(ew_args){.op = EW_RELU_B, .acc = acc}, y, dy, dx, n);
    K(b)->relu_bwd(y, dy, dx, n, acc);
    return DS_OK;
}

static ds_status cpu_dropout_fwd(ds_backend *b, const float *x, float *y, int64_t n, float p, uint64_t seed)
{
    if (((cpu_impl *)b->impl)->s16)
        return ew16(b, &(ew_args){.op = EW_DROP_F, .p = p, .seed = seed}, x, NULL, y, n);
    K(b)->dropout_fwd(x, y, n, p, seed, 0);
    return DS_OK;
}

static ds_status cpu_dropout_bwd(ds_backend *b, const float *dy, float *dx, int64_t n, float p, uint64_t seed,
                                 int acc)
{
    if (((cpu_impl *)b->impl)->s16)
        return ew16(b, &(ew_args){.op = EW_DROP_B, .p = p, .seed = seed, .acc = acc}, dy, NULL, dx, n);
    K(b)->dropout_bwd(dy, dx, n, p, seed, acc, 0);
    return DS_OK;
}

/* y = s x over activations (progressive layer drop's 1/keep-probability) */
static ds_status cpu_scale_act(ds_backend *b, const float *x, float *y, int64_t n, float s)
{
    if (((cpu_impl *)b->impl)->s16)
        return ew16(b, &(ew_args){.op = EW_SCALE, .p = s}, x, NULL, y, n);
#pragma omp parallel for simd if (n > TILE)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * s;
    return DS_OK;
}

static ds_status cpu_add(ds_backend *b, const float *a, const float *cc, float *y, int64_t n)
{
    cpu_impl *c = b->impl;
    if (c->s16) {
        K(b)->add16(HC(a), HC(cc), HM(y), n, c->s16);
        return DS_OK;
    }
    K(b)->add(a, cc, y, n);
    return DS_OK;
}

/* the losses in 16-bit storage: rows of z (logits, or mse's outputs) unpacked tile by tile, the
 * fp32 kernel, the gradient packed. mse: t are fp32 targets [M, V], else int32 classes [M]. */
static ds_status loss16(ds_backend *b, int mse, const float *z, const void *t, float *l, float *dz, float gs,
                        int64_t M, int64_t V)
{
    cpu_impl *c = b->impl;
    ds_status st = ensure_tiles(b, V);
    if (st != DS_OK)
        return st;
    const int64_t R = tile_rows(V);
#pragma omp parallel for schedule(static) if (M * V > TILE)
    for (int64_t r0 = 0; r0 < M; r0 += R) {
        int64_t rows = M - r0 < R ? M - r0 : R;
        float *tz = tile(c, 0), *td = dz ? tile(c, 1) : NULL;
        c->ks->unpack16(HC(z) + r0 * V, tz, rows * V, c->s16);
        if (mse)
            c->ks->mse_fwd(tz, (const float *)t + r0 * V, l + r0, td, gs, rows, V);
        else
            c->ks->xent_fwd(tz, (const int32_t *)t + r0, l + r0, td, gs, rows, V);
        if (dz)
            c->ks->pack16(td, HM(dz) + r0 * V, rows * V, c->s16);
    }
    return DS_OK;
}

static ds_status cpu_xent_fwd(ds_backend *b, const float *z, const int32_t *t, float *l, float *dz, float gs,
                              int64_t M, int64_t V)
{
    if (((cpu_impl *)b->impl)->s16)
        return loss16(b, 0, z, t, l, dz, gs, M, V);
    K(b)->xent_fwd(z, t, l, dz, gs, M, V);
    return DS_OK;
}

static ds_status cpu_mse_fwd(ds_backend *b, const float *y, const float *t, float *l, float *dy, float gs,
                             int64_t M, int64_t N)
{
    if (((cpu_impl *)b->impl)->s16)
        return loss16(b, 1, y, t, l, dy, gs, M, N);
    K(b)->mse_fwd(y, t, l, dy, gs, M, N);
    return DS_OK;
}

/* The remaining ops forward to the kernel table; they cannot fail. */
#define FWD(name, params, args)                                                                 \
    static ds_status cpu_##name params                                                          \
    {                                                                                           \
        K(b)->name args;                                                                        \
        return DS_OK;                                                                           \
    }

FWD(accumulate, (ds_backend * b, const float *x, float *y, int64_t n, int acc), (x, y, n, acc))
FWD(scale, (ds_backend * b, float *x, int64_t n, float s), (x, n, s))
FWD(adamw_step,
    (ds_backend * b, float *p, const float *g, float *m, float *v, int64_t n, const ds_adamw_args *a),
    (p, g, m, v, n, a))
FWD(sgd_step, (ds_backend * b, float *p, const float *g, float *buf, int64_t n, const ds_sgd_args *a),
    (p, g, buf, n, a))
FWD(round16, (ds_backend * b, float *x, int64_t n, int mode), (x, n, mode))
FWD(adagrad_step,
    (ds_backend * b, float *p, const float *g, float *sum, int64_t n, const ds_adagrad_args *a),
    (p, g, sum, n, a))
FWD(lamb_step, (ds_backend * b, float *p, const float *g, float *m, float *v, const ds_lamb_args *a),
    (p, g, m, v, a))

static ds_status cpu_sum(ds_backend *b, const float *x, int64_t n, double *out)
{
    *out = K(b)->sum(x, n);
    return DS_OK;
}

static ds_status cpu_sumsq(ds_backend *b, const float *x, int64_t n, double *out)
{
    *out = K(b)->sumsq(x, n);
    return DS_OK;
}

static ds_status cpu_nonfinite(ds_backend *b, const float *x, int64_t n, int64_t *out)
{
    *out = K(b)->nonfinite(x, n);
    return DS_OK;
}

static ds_status cpu_pack16(ds_backend *b, const float *x, void *y, int64_t n, int mode)
{
    if (mode != DS_ROUND_BF16 && mode != DS_ROUND_FP16)
        return ds_error_set(&b->err, DS_ERR_INVALID, "pack16: unknown 16-bit format %d", mode);
    K(b)->pack16(x, y, n, mode);
    return DS_OK;
}

static const ds_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .synchronize = cpu_sync,
    .thread_init = cpu_thread_init,
    .linear_fwd = cpu_linear_fwd,
    .linear_bwd = cpu_linear_bwd,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_bwd = cpu_embedding_bwd,
    .posadd_fwd = cpu_posadd_fwd,
    .posadd_bwd = cpu_posadd_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .dropout_fwd = cpu_dropout_fwd,
    .dropout_bwd = cpu_dropout_bwd,
    .add = cpu_add,
    .accumulate = cpu_accumulate,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .xent_fwd = cpu_xent_fwd,
    .mse_fwd = cpu_mse_fwd,
    .sum = cpu_sum,
    .sumsq = cpu_sumsq,
    .nonfinite = cpu_nonfinite,
    .scale = cpu_scale,
    .adamw_step = cpu_adamw_step,
    .sgd_step = cpu_sgd_step,
    .describe = cpu_describe,
    .round16 = cpu_round16,
    .adagrad_step = cpu_adagrad_step,
    .lamb_step = cpu_lamb_step,
    .set_precision = cpu_set_precision,
    .store16 = cpu_store16,
    .pack16 = cpu_pack16,
    .scale_act = cpu_scale_act,
};

/* What the kernel variants need of the CPU and of the OS (cpuid, and XCR0 for the vector
 * registers' state): 0 none, 1 AVX2+FMA+F16C (avx2), 2 those and AVX-512 F/BW/VL/DQ (avx512).
 * Read from cpuid itself because the compilers' __builtin_cpu_supports know different names
 * (clang 14 has no "f16c"). */
static int x86_level(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    const int fma = c >> 12 & 1, osxsave = c >> 27 & 1, avx = c >> 28 & 1, f16c = c >> 29 & 1;
    if (!(fma && osxsave && avx && f16c))
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 0x6) != 0x6) /* the OS saves SSE and AVX state */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b >> 5 & 1)) /* AVX2 */
        return 0;
    const int f = b >> 16 & 1, dq = b >> 17 & 1, bw = b >> 30 & 1, vl = b >> 31 & 1;
    return (lo & 0xe0) == 0xe0 && f && dq && bw && vl ? 2 : 1; /* opmask and ZMM state saved */
#else
    return 0;
#endif
}

/* variant: NULL or "" picks by cpuid (avx2 or generic; set_precision takes avx512 for bf16
 * products on bf16 units: bf16_kernels), or takes DS_CPU_KERNELS's when that is set (so that
 * whole test programs and scripts can run on another variant, as if cpuid had picked it);
 * "avx2", "generic" or "avx512" forces one. avx512 (the same kernels with 512-bit vectors) is
 * not picked for the rest: the whole suite passes with it, but it is not faster everywhere.
 * gpt-tiny on 2 threads: a Zen 5 EPYC 2% (fp32) and 7% (bf16) faster than avx2; an AMX Xeon
 * (2026-11-29) 9% faster in bf16 but 10% slower in fp32, where its elementwise kernels (GELU
 * 2.7x, LayerNorm, the loss) were slower. */
ds_status ds_cpu_backend_create(ds_backend **out, const char *variant, ds_error *err)
{
    const ds_cpu_kernels *k;
    const int level = x86_level(), has_avx2 = level >= 1;
    if (!variant || !*variant) {
        const char *env = getenv("DS_CPU_KERNELS");
        if (env && *env) {
            if (strcmp(env, "generic") && strcmp(env, "avx2") && strcmp(env, "avx512"))
                return ds_error_set(err, DS_ERR_INVALID, "DS_CPU_KERNELS=%s: expected avx2, avx512 or generic "
                                    "(the CPU kernels to use where no variant is named)", env);
            ds_status st = ds_cpu_backend_create(out, env, err);
            if (st != DS_OK && err) {
                char why[sizeof err->msg];
                snprintf(why, sizeof why, "%s", err->msg);
                ds_error_set(err, st, "DS_CPU_KERNELS=%s: %s", env, why);
            }
            return st;
        }
        k = has_avx2 ? &ds_cpu_kernels_avx2 : &ds_cpu_kernels_generic;
    } else if (strcmp(variant, "generic") == 0) {
        k = &ds_cpu_kernels_generic;
    } else if (strcmp(variant, "avx2") == 0) {
        if (!has_avx2)
            return ds_error_set(err, DS_ERR_UNSUPPORTED,
                                "backend cpu:avx2: this CPU lacks AVX2/FMA/F16C");
        k = &ds_cpu_kernels_avx2;
    } else if (strcmp(variant, "avx512") == 0) {
        if (level < 2)
            return ds_error_set(err, DS_ERR_UNSUPPORTED,
                                "backend cpu:avx512: this CPU lacks AVX-512 F/BW/VL/DQ (or AVX2/FMA/F16C)");
        k = &ds_cpu_kernels_avx512;
    } else {
        return ds_error_set(err, DS_ERR_INVALID,
                            "unknown CPU kernel variant \"%s\" (expected avx2, avx512 or generic)", variant);
    }
    ds_backend *b = calloc(1, sizeof *b);
    cpu_impl *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    /* DS_CPU_GEMM_SPLIT=0: oneDNN threads each product itself (an experiment's switch: the row
     * split was measured faster on 2 AVX2 cores, not yet on bf16 units) */
    const char *split = getenv("DS_CPU_GEMM_SPLIT");
    if (split && *split && strcmp(split, "0") && strcmp(split, "1")) {
        free(b);
        free(c);
        return ds_error_set(err, DS_ERR_INVALID, "DS_CPU_GEMM_SPLIT=%s: expected 0 (oneDNN threads each product) "
                            "or 1 (rows split between the threads, the default)", split);
    }
    /* DS_CPU_GELU_LUT=0: GELU on 16-bit activations computes each value instead of looking it
     * up (the same bits; for comparisons) */
    const char *lut = getenv("DS_CPU_GELU_LUT");
    if (lut && *lut && strcmp(lut, "0") && strcmp(lut, "1")) {
        free(b);
        free(c);
        return ds_error_set(err, DS_ERR_INVALID, "DS_CPU_GELU_LUT=%s: expected 0 (GELU on 16-bit activations "
                            "computes each value) or 1 (looks them up in tables, the default)", lut);
    }
    c->gelu_lut_off = lut && strcmp(lut, "0") == 0;
    ds_status st = ds_dnnl_create(&c->dnnl, err);
    if (st != DS_OK) {
        free(b);
        free(c);
        return st;
    }
    ds_dnnl_split(c->dnnl, !(split && strcmp(split, "0") == 0));
    c->k = k;
    c->ks = k == &ds_cpu_kernels_avx2     ? &ds_cpu_kernels_avx2_serial
            : k == &ds_cpu_kernels_avx512 ? &ds_cpu_kernels_avx512_serial
                                          : &ds_cpu_kernels_generic_serial;
    c->picked = k, c->picked_s = c->ks;
    c->auto_pick = !variant || !*variant;
    b->ops = &cpu_ops;
    b->impl = c;
    *out = b;
    return DS_OK;
}

const char *ds_cpu_backend_variant(const ds_backend *b) { return K(b)->variant; }
