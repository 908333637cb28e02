/* The CUDA backend against the CPU backend, op by op, on fresh random inputs (the seed is in
 * every failure message; DS_TEST_SEED=N repeats a run): every output of the GPU is poisoned
 * with NaN before the op, so an element it does not write fails, and NaN never passes. Then the
 * fused optimizers over a few steps, and a tiny GPT trained 20 steps through the engine on both
 * backends. Every test skips (not fails) where there is no CUDA device or no CUDA backend.
 * DS_TEST_VERBOSE=1 prints each comparison's error. */
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

/* Normwise relative error bounds, ||gpu - cpu|| / ||cpu||. The GEMM-based ops with TF32 (the
 * default) are bounded by TF32's 10-bit mantissa: ~3e-4 per product is typical. */
#define TOL_EXACTISH 2e-6 /* elementwise fp32 math; different libm / summation order */
#define TOL_REDUCE 1e-5   /* fp32 sums over a row in another order (layernorm, xent, colsums) */
#define TOL_FP32_GEMM 2e-5
#define TOL_TF32_GEMM 2e-3
#define TOL_TF32_ATTN 5e-3 /* two or three chained TF32 products and a softmax */
/* the fused 16-bit attention (flash16.cu) rounds P and dS to the format before their products */
#define TOL_BF16_ATTN 1e-2 /* 8 significant bits: 2^-9 relative per rounding; measured ~2e-3 */
#define TOL_FP16_ATTN 2e-3 /* 11 significant bits: 2^-12; measured ~2e-4 */

typedef struct ctx {
    ds_backend *cpu, *gpu;
    ds_rng rng;
    unsigned long long seed;
    int tf32;
    int round; /* attention_case: a ds_round_mode, inputs rounded to it (the GPU's set_precision) */
} ctx;

#define CALL(be, op, ...)                                                                         \
    cr_assert_eq((be)->ops->op((be), __VA_ARGS__), DS_OK, "%s %s: %s", (be)->ops->name, #op,     \
                 (be)->err.msg)

static int verbose(void)
{
    const char *v = getenv("DS_TEST_VERBOSE");
    return v && *v && strcmp(v, "0") != 0;
}

/* Skips the test when there is no CUDA backend or device. tf32: the GEMM mode. */
static void open_ctx(ctx *c, int tf32)
{
    memset(c, 0, sizeof *c);
    setenv("DS_CUDA_TF32", tf32 ? "1" : "0", 1);
    ds_error err = {0};
    ds_status st = ds_backend_create(&c->gpu, "cuda", &err);
    if (st == DS_ERR_UNSUPPORTED)
        cr_skip_test("no CUDA here: %s", err.msg);
    cr_assert_eq(st, DS_OK, "backend cuda: %s", err.msg);
    cr_assert(strncmp(ds_backend_describe(c->gpu), "cuda", 4) == 0, "%s", ds_backend_describe(c->gpu));
    cr_assert_eq(ds_backend_create(&c->cpu, "cpu", &err), DS_OK, "backend cpu: %s", err.msg);
    const char *s = getenv("DS_TEST_SEED");
    c->seed = s ? strtoull(s, NULL, 10)
                : ((unsigned long long)time(NULL) * 2654435761ull) ^ ((unsigned long long)getpid() << 20);
    ds_rng_seed(&c->rng, c->seed);
    c->tf32 = tf32;
}

static void close_ctx(ctx *c)
{
    ds_backend_destroy(c->gpu);
    ds_backend_destroy(c->cpu);
}

static float *hbuf(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    cr_assert(p != NULL);
    return p;
}

static float *hfill(int64_t n, float v)
{
    float *p = hbuf(n);
    for (int64_t i = 0; i < n; i++)
        p[i] = v;
    return p;
}

static float *hrandn(ctx *c, int64_t n, double mean, double sd)
{
    float *p = hbuf(n);
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)(mean + sd * ds_rng_normal(&c->rng));
    return p;
}

static void *dev(ctx *c, const void *host, size_t bytes)
{
    void *d = c->gpu->ops->alloc(c->gpu, bytes);
    cr_assert(d != NULL, "cuda alloc %zu: %s", bytes, c->gpu->err.msg);
    if (host)
        CALL(c->gpu, upload, d, host, bytes);
    return d;
}

static float *devf(ctx *c, const float *host, int64_t n) { return dev(c, host, (size_t)n * sizeof(float)); }

/* a device buffer full of NaN: what the op does not write stays NaN */
static float *dpoison(ctx *c, int64_t n)
{
    float *h = hfill(n, NAN);
    float *d = devf(c, h, n);
    free(h);
    return d;
}

static float *down(ctx *c, const float *d, int64_t n)
{
    float *h = hbuf(n);
    CALL(c->gpu, download, h, d, (size_t)n * sizeof(float));
    return h;
}

/* got (GPU) against ref (CPU): every element finite where ref is, ||got - ref|| / ||m|| <= tol,
 * and no element off by more than 10 * tol * max|m| (a few wrong elements in a large output
 * hardly move the norm), where m_i = max(|ref_i|, |scale_i|). scale NULL: m is ref. For a
 * product of K terms, scale is the product of the operands' absolute values over sqrt(K): what
 * a sum of those terms with random signs typically comes to, so an element whose sum cancels
 * is judged by the size of its terms, not by its small result (a TF32 1 x 7 x 3 product failed
 * 2e-3 against ||ref|| once in many seeds); for most elements m is |ref_i| as before. */
static void check_s(ctx *c, const char *what, const float *got, const float *ref, const float *scale, int64_t n,
                    double tol)
{
    if (!scale)
        scale = ref;
    double num = 0, den = 0, maxref = 0, maxd = 0;
    int64_t bad = -1, worst = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(ref[i])) {
            if (isfinite(got[i]) && bad < 0)
                bad = i;
            continue;
        }
        if (!isfinite(got[i])) {
            if (bad < 0)
                bad = i;
            continue;
        }
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        const double m = fabs(scale[i]) > fabs(ref[i]) ? fabs(scale[i]) : fabs(ref[i]);
        den += m * m;
        if (m > maxref)
            maxref = m;
        if (fabs(d) > maxd || worst < 0) {
            maxd = fabs(d);
            worst = i;
        }
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (verbose())
        fprintf(stderr, "  %-44s n %-9lld rel %.2e (bound %.0e)  max|diff| %.2e\n", what, (long long)n,
                rel, tol, maxd);
    cr_expect(bad < 0, "%s: element %lld is %g, expected %g (unwritten, or not finite) [seed %llu]", what,
              (long long)bad, bad < 0 ? 0.0 : got[bad], bad < 0 ? 0.0 : ref[bad], c->seed);
    cr_expect(rel <= tol, "%s: relative error %.3g > %.3g (largest difference at %lld: %.9g vs %.9g) [seed %llu]",
              what, rel, tol, (long long)worst, worst < 0 ? 0.0 : got[worst], worst < 0 ? 0.0 : ref[worst],
              c->seed);
    double lim = 10 * tol * (maxref > 0 ? maxref : 1);
    cr_expect(maxd <= lim, "%s: element %lld off by %.3g, more than %.3g (10 x bound x max|ref|) [seed %llu]",
              what, (long long)worst, maxd, lim, c->seed);
}

static void check(ctx *c, const char *what, const float *got, const float *ref, int64_t n, double tol)
{
    check_s(c, what, got, ref, NULL, n, tol);
}

static void check_dev_s(ctx *c, const char *what, const float *d, const float *ref, const float *scale, int64_t n,
                        double tol)
{
    float *h = down(c, d, n);
    check_s(c, what, h, ref, scale, n, tol);
    free(h);
}

static void check_dev(ctx *c, const char *what, const float *d, const float *ref, int64_t n, double tol)
{
    check_dev_s(c, what, d, ref, NULL, n, tol);
}

/* a copy of x[n] with every value's absolute value */
static float *habs(const float *x, int64_t n)
{
    float *a = hbuf(n);
    for (int64_t i = 0; i < n; i++)
        a[i] = fabsf(x[i]);
    return a;
}

/* x[n] /= sqrt(terms) (check_s's scale for sums of that many terms) */
static void hscale_terms(float *x, int64_t n, int64_t terms)
{
    const float f = 1.0f / sqrtf((float)(terms > 0 ? terms : 1));
    for (int64_t i = 0; i < n; i++)
        x[i] *= f;
}

static double gemm_tol(const ctx *c) { return c->tf32 ? TOL_TF32_GEMM : TOL_FP32_GEMM; }
/* fused: the fused kernels ran (the state is not the probabilities) */
static double attn_tol(const ctx *c, int fused)
{
    if (fused && c->round && strstr(ds_backend_describe(c->gpu), c->round == DS_ROUND_BF16 ? "fused bf16" : "fused fp16"))
        return c->round == DS_ROUND_BF16 ? TOL_BF16_ATTN : TOL_FP16_ATTN;
    return c->tf32 ? TOL_TF32_ATTN : TOL_FP32_GEMM;
}

/* ---- backend basics ---------------------------------------------------------------------- */

Test(cuda, memory_and_errors)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 100003;
    float *d = c.gpu->ops->alloc(c.gpu, (size_t)n * sizeof(float));
    cr_assert(d != NULL, "%s", c.gpu->err.msg);
    float *h = down(&c, d, n);
    int64_t nonzero = 0;
    for (int64_t i = 0; i < n; i++)
        nonzero += h[i] != 0.0f;
    cr_expect_eq(nonzero, 0, "alloc must return zeroed memory: %lld nonzero", (long long)nonzero);
    float *x = hrandn(&c, n, 0, 1);
    CALL(c.gpu, upload, d, x, (size_t)n * sizeof(float));
    float *d2 = dpoison(&c, n);
    CALL(c.gpu, copy, d2, d, (size_t)n * sizeof(float));
    float *back = down(&c, d2, n);
    cr_expect(memcmp(back, x, (size_t)n * sizeof(float)) == 0, "upload/copy/download round trip");
    CALL(c.gpu, zero, d2, 40 * sizeof(float));
    cr_assert_eq(c.gpu->ops->synchronize(c.gpu), DS_OK, "%s", c.gpu->err.msg);
    float *z = down(&c, d2, n);
    cr_expect(z[0] == 0.0f && z[39] == 0.0f && z[40] == x[40], "zero clears exactly the bytes asked");
    /* overlapping ranges, both ways, as memmove (the CPU backend's copy) */
    CALL(c.gpu, upload, d, x, (size_t)n * sizeof(float));
    CALL(c.gpu, copy, d + 3, d, (size_t)(n - 3) * sizeof(float));
    float *ov = down(&c, d, n);
    cr_expect(memcmp(ov + 3, x, (size_t)(n - 3) * sizeof(float)) == 0 && memcmp(ov, x, 3 * sizeof(float)) == 0,
              "copy to 3 floats above its source");
    CALL(c.gpu, upload, d, x, (size_t)n * sizeof(float));
    CALL(c.gpu, copy, d, d + 5, (size_t)(n - 5) * sizeof(float));
    free(ov);
    ov = down(&c, d, n);
    cr_expect(memcmp(ov, x + 5, (size_t)(n - 5) * sizeof(float)) == 0, "copy to 5 floats below its source");
    free(ov);
    /* an absurd allocation fails with a message, not a crash */
    void *huge = c.gpu->ops->alloc(c.gpu, (size_t)1 << 60);
    cr_expect(huge == NULL);
    cr_expect(strstr(c.gpu->err.msg, "out of device memory") != NULL, "%s", c.gpu->err.msg);
    /* and the backend still works afterwards */
    double s;
    CALL(c.gpu, sum, d, n, &s);
    if (verbose())
        fprintf(stderr, "  backend: %s\n", ds_backend_describe(c.gpu));
    c.gpu->ops->free(c.gpu, d);
    c.gpu->ops->free(c.gpu, d2);
    free(h);
    free(x);
    free(back);
    free(z);
    close_ctx(&c);
}

Test(cuda, bad_device_number)
{
    ctx c;
    open_ctx(&c, 1);
    ds_backend *b = NULL;
    ds_error err = {0};
    cr_expect_eq(ds_backend_create(&b, "cuda:999", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "999") != NULL, "%s", err.msg);
    cr_expect_eq(ds_backend_create(&b, "cuda:x", &err), DS_ERR_INVALID);
    /* ds-launch's LOCAL_RANK picks the device; one beyond the visible ones is named */
    setenv("LOCAL_RANK", "999", 1);
    cr_expect_eq(ds_backend_create(&b, "cuda", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "LOCAL_RANK=999") != NULL, "%s", err.msg);
    setenv("LOCAL_RANK", "0", 1);
    cr_expect_eq(ds_backend_create(&b, "cuda", &err), DS_OK, "%s", err.msg);
    cr_expect(strncmp(ds_backend_describe(b), "cuda:0 ", 7) == 0, "%s", ds_backend_describe(b));
    ds_backend_destroy(b);
    unsetenv("LOCAL_RANK");
    setenv("DS_CUDA_FLASH", "yes", 1);
    cr_expect_eq(ds_backend_create(&b, "cuda", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "DS_CUDA_FLASH=yes") != NULL, "%s", err.msg);
    unsetenv("DS_CUDA_FLASH");
    setenv("DS_CUDA_TF32", "maybe", 1);
    cr_expect_eq(ds_backend_create(&b, "cuda", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "DS_CUDA_TF32") != NULL, "%s", err.msg);
    close_ctx(&c);
}

/* ---- linear ------------------------------------------------------------------------------ */

/* round: 0, or a ds_round_mode: the GPU multiplies in that 16-bit format (set_precision) and
 * every input is first rounded to it, as the engine's 16-bit training guarantees */
static void linear_case_r(ctx *c, int64_t M, int64_t K, int64_t N, int with_bias, int round)
{
    char what[128];
    float *x = hrandn(c, M * K, 0, 1), *w = hrandn(c, N * K, 0, 1);
    float *bias = with_bias ? hrandn(c, N, 0, 1) : NULL;
    float *y = hbuf(M * N);
    if (round) {
        CALL(c->cpu, round16, x, M * K, round);
        CALL(c->cpu, round16, w, N * K, round);
        CALL(c->gpu, set_precision, round);
    }
    CALL(c->cpu, linear_fwd, x, w, bias, y, M, K, N);
    /* the scale of the products' errors: the same products of absolute values */
    float *xa = habs(x, M * K), *wa = habs(w, N * K), *ba = bias ? habs(bias, N) : NULL, *ya = hbuf(M * N);
    CALL(c->cpu, linear_fwd, xa, wa, ba, ya, M, K, N);
    hscale_terms(ya, M * N, K + (bias != NULL));
    float *dx_ = devf(c, x, M * K), *dw_ = devf(c, w, N * K), *db_ = bias ? devf(c, bias, N) : NULL;
    float *dy_ = dpoison(c, M * N);
    CALL(c->gpu, linear_fwd, dx_, dw_, db_, dy_, M, K, N);
    snprintf(what, sizeof what, "linear_fwd %lldx%lldx%lld%s", (long long)M, (long long)K, (long long)N,
             bias ? " +bias" : "");
    check_dev_s(c, what, dy_, y, ya, M * N, gemm_tol(c));

    float *g = hrandn(c, M * N, 0, 1);
    if (round)
        CALL(c->cpu, round16, g, M * N, round);
    float *g_ = devf(c, g, M * N);
    for (int acc = 0; acc <= 1; acc++) {
        float *gx = acc ? hrandn(c, M * K, 0, 1) : hfill(M * K, 0.0f);
        float *gw = hrandn(c, N * K, 0, 1), *gb = hrandn(c, N, 0, 1);
        float *gx_ = acc ? devf(c, gx, M * K) : dpoison(c, M * K), *gw_ = devf(c, gw, N * K),
              *gb_ = devf(c, gb, N);
        float *gxa = habs(gx, M * K), *gwa = habs(gw, N * K), *ga = habs(g, M * N);
        CALL(c->cpu, linear_bwd, ga, xa, wa, gxa, gwa, NULL, M, K, N, acc);
        hscale_terms(gxa, M * K, N + acc);
        hscale_terms(gwa, N * K, M + 1);
        CALL(c->cpu, linear_bwd, g, x, w, gx, gw, bias ? gb : NULL, M, K, N, acc);
        CALL(c->gpu, linear_bwd, g_, dx_, dw_, gx_, gw_, bias ? gb_ : NULL, M, K, N, acc);
        snprintf(what, sizeof what, "linear_bwd dx %lldx%lldx%lld acc=%d", (long long)M, (long long)K,
                 (long long)N, acc);
        check_dev_s(c, what, gx_, gx, gxa, M * K, gemm_tol(c));
        snprintf(what, sizeof what, "linear_bwd dw += %lldx%lldx%lld", (long long)M, (long long)K, (long long)N);
        check_dev_s(c, what, gw_, gw, gwa, N * K, gemm_tol(c));
        free(gxa);
        free(gwa);
        free(ga);
        if (bias) {
            snprintf(what, sizeof what, "linear_bwd dbias += (M %lld, N %lld)", (long long)M, (long long)N);
            check_dev(c, what, gb_, gb, N, TOL_REDUCE);
        }
        free(gx);
        free(gw);
        free(gb);
    }
    /* dx only (no weight gradient), and dw only */
    float *gx = hfill(M * K, 0.0f), *gx_ = dpoison(c, M * K);
    CALL(c->cpu, linear_bwd, g, x, w, gx, NULL, NULL, M, K, N, 0);
    CALL(c->gpu, linear_bwd, g_, dx_, dw_, gx_, NULL, NULL, M, K, N, 0);
    check_dev(c, "linear_bwd dx only", gx_, gx, M * K, gemm_tol(c));
    float *gw = hrandn(c, N * K, 0, 1), *gw_ = devf(c, gw, N * K);
    CALL(c->cpu, linear_bwd, g, x, w, NULL, gw, NULL, M, K, N, 0);
    CALL(c->gpu, linear_bwd, g_, dx_, dw_, NULL, gw_, NULL, M, K, N, 0);
    check_dev(c, "linear_bwd dw only", gw_, gw, N * K, gemm_tol(c));
    free(x);
    free(w);
    free(bias);
    free(y);
    free(xa);
    free(wa);
    free(ba);
    free(ya);
    free(g);
    free(gx);
    free(gw);
    if (round)
        CALL(c->gpu, set_precision, 0);
}

static void linear_case(ctx *c, int64_t M, int64_t K, int64_t N, int with_bias)
{
    linear_case_r(c, M, K, N, with_bias, 0);
}

/* bf16 and fp16 tensor-core products on 16-bit inputs: the fp32 answers (fp32 accumulation) */
Test(cuda, linear_bf16_fp16)
{
    ctx c;
    open_ctx(&c, 0);
    linear_case_r(&c, 333, 190, 257, 1, DS_ROUND_BF16);
    linear_case_r(&c, 64, 768, 300, 0, DS_ROUND_BF16);
    linear_case_r(&c, 333, 190, 257, 1, DS_ROUND_FP16);
    linear_case_r(&c, 1, 7, 3, 0, DS_ROUND_FP16);
    close_ctx(&c);
}

Test(cuda, linear_tf32)
{
    ctx c;
    open_ctx(&c, 1);
    linear_case(&c, 333, 190, 257, 1);
    linear_case(&c, 1, 7, 3, 1);
    linear_case(&c, 64, 768, 2304, 0);
    close_ctx(&c);
}

Test(cuda, linear_fp32)
{
    ctx c;
    open_ctx(&c, 0);
    linear_case(&c, 333, 190, 257, 1);
    linear_case(&c, 130, 96, 33, 0);
    close_ctx(&c);
}

/* ---- embeddings ------------------------------------------------------------------------- */

Test(cuda, embedding_and_position)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t V = 50, C = 300, B = 3, T = 341, M = B * T;
    int32_t *ids = malloc((size_t)M * sizeof *ids);
    for (int64_t i = 0; i < M; i++) /* skewed: many repeats of a few ids, as text has */
        ids[i] = (int32_t)(ds_rng_next(&c.rng) % 4 == 0 ? ds_rng_next(&c.rng) % V : ds_rng_next(&c.rng) % 5);
    int32_t *ids_ = dev(&c, ids, (size_t)M * sizeof *ids);
    float *tab = hrandn(&c, V * C, 0, 1), *tab_ = devf(&c, tab, V * C);
    float *out = hbuf(M * C), *out_ = dpoison(&c, M * C);
    CALL(c.cpu, embedding_fwd, ids, tab, out, M, C);
    CALL(c.gpu, embedding_fwd, ids_, tab_, out_, M, C);
    check_dev(&c, "embedding_fwd", out_, out, M * C, 0);
    float *g = hrandn(&c, M * C, 0, 1), *g_ = devf(&c, g, M * C);
    float *dt = hrandn(&c, V * C, 0, 1), *dt_ = devf(&c, dt, V * C);
    CALL(c.cpu, embedding_bwd, ids, g, dt, M, C);
    CALL(c.gpu, embedding_bwd, ids_, g_, dt_, M, C);
    check_dev(&c, "embedding_bwd (+=, repeated ids)", dt_, dt, V * C, 0); /* the CPU's order: the same bits */
    {   /* rows wider than a block's 1024 columns: the positions are searched once per column chunk */
        const int64_t M2 = 300, C2 = 1100, V2 = 7;
        int32_t *ids2 = malloc((size_t)M2 * sizeof *ids2);
        for (int64_t i = 0; i < M2; i++)
            ids2[i] = (int32_t)(ds_rng_next(&c.rng) % V2);
        int32_t *ids2_ = dev(&c, ids2, (size_t)M2 * sizeof *ids2);
        float *g2 = hrandn(&c, M2 * C2, 0, 1), *g2_ = devf(&c, g2, M2 * C2);
        float *t2 = hrandn(&c, V2 * C2, 0, 1), *t2_ = devf(&c, t2, V2 * C2);
        CALL(c.cpu, embedding_bwd, ids2, g2, t2, M2, C2);
        CALL(c.gpu, embedding_bwd, ids2_, g2_, t2_, M2, C2);
        check_dev(&c, "embedding_bwd (1100 columns)", t2_, t2, V2 * C2, 0);
        free(ids2);
    }

    float *pos = hrandn(&c, T * C, 0, 1), *pos_ = devf(&c, pos, T * C);
    float *y = hbuf(M * C), *y_ = dpoison(&c, M * C);
    CALL(c.cpu, posadd_fwd, out, pos, y, B, T, C);
    CALL(c.gpu, posadd_fwd, out_, pos_, y_, B, T, C);
    check_dev(&c, "posadd_fwd", y_, y, M * C, 0);
    float *dp = hrandn(&c, T * C, 0, 1), *dp_ = devf(&c, dp, T * C);
    CALL(c.cpu, posadd_bwd, g, dp, B, T, C);
    CALL(c.gpu, posadd_bwd, g_, dp_, B, T, C);
    check_dev(&c, "posadd_bwd (+=)", dp_, dp, T * C, TOL_EXACTISH);
    close_ctx(&c);
}

/* ---- layernorm -------------------------------------------------------------------------- */

static void layernorm_case(ctx *c, int64_t M, int64_t C)
{
    char what[128];
    float *x = hrandn(c, M * C, 0.5, 2), *w = hrandn(c, C, 1, 0.3), *bi = hrandn(c, C, 0, 0.3);
    float *y = hbuf(M * C), *mean = hbuf(M), *rstd = hbuf(M);
    float *x_ = devf(c, x, M * C), *w_ = devf(c, w, C), *bi_ = devf(c, bi, C);
    float *y_ = dpoison(c, M * C), *mean_ = dpoison(c, M), *rstd_ = dpoison(c, M);
    CALL(c->cpu, layernorm_fwd, x, w, bi, y, mean, rstd, M, C, 1e-5f);
    CALL(c->gpu, layernorm_fwd, x_, w_, bi_, y_, mean_, rstd_, M, C, 1e-5f);
    snprintf(what, sizeof what, "layernorm_fwd y (M %lld, C %lld)", (long long)M, (long long)C);
    check_dev(c, what, y_, y, M * C, TOL_REDUCE);
    check_dev(c, "layernorm_fwd mean", mean_, mean, M, TOL_REDUCE);
    check_dev(c, "layernorm_fwd rstd", rstd_, rstd, M, TOL_REDUCE);
    float *g = hrandn(c, M * C, 0, 1), *g_ = devf(c, g, M * C);
    for (int acc = 0; acc <= 1; acc++) {
        float *dx = acc ? hrandn(c, M * C, 0, 1) : hfill(M * C, 0.0f);
        float *dw = hrandn(c, C, 0, 1), *db = hrandn(c, C, 0, 1);
        float *dx_ = acc ? devf(c, dx, M * C) : dpoison(c, M * C), *dw_ = devf(c, dw, C), *db_ = devf(c, db, C);
        /* the GPU gets its own (exact) mean and rstd, the CPU its own: as in training */
        CALL(c->cpu, layernorm_bwd, g, x, w, mean, rstd, dx, dw, db, M, C, acc);
        CALL(c->gpu, layernorm_bwd, g_, x_, w_, mean_, rstd_, dx_, dw_, db_, M, C, acc);
        snprintf(what, sizeof what, "layernorm_bwd dx (C %lld) acc=%d", (long long)C, acc);
        check_dev(c, what, dx_, dx, M * C, TOL_REDUCE);
        check_dev(c, "layernorm_bwd dw +=", dw_, dw, C, TOL_REDUCE);
        check_dev(c, "layernorm_bwd db +=", db_, db, C, TOL_REDUCE);
        free(dx);
        free(dw);
        free(db);
    }
    free(x);
    free(w);
    free(bi);
    free(y);
    free(mean);
    free(rstd);
    free(g);
}

/* constant rows at BERT's eps 1e-12: the mean exact (the row shifted by its first value), so y
 * is the bias exactly, on the GPU as on the CPU (a mean some ulps off gave y = -0.34 through
 * rstd 1e6) */
static void layernorm_const(ctx *c, int64_t M, int64_t C)
{
    char what[128];
    float *x = hbuf(M * C), *w = hrandn(c, C, 1, 0.3), *bi = hrandn(c, C, 0, 0.3);
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < C; k++)
            x[m * C + k] = 0.7f + 0.37f * (float)m;
    float *y = hbuf(M * C), *mean = hbuf(M), *rstd = hbuf(M);
    float *x_ = devf(c, x, M * C), *w_ = devf(c, w, C), *bi_ = devf(c, bi, C);
    float *y_ = dpoison(c, M * C), *mean_ = dpoison(c, M), *rstd_ = dpoison(c, M);
    CALL(c->cpu, layernorm_fwd, x, w, bi, y, mean, rstd, M, C, 1e-12f);
    CALL(c->gpu, layernorm_fwd, x_, w_, bi_, y_, mean_, rstd_, M, C, 1e-12f);
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < C; k++)
            cr_assert(y[m * C + k] == bi[k], "cpu layernorm, constant row %lld (C %lld): y %.9g, expected the bias %.9g",
                      (long long)m, (long long)C, y[m * C + k], bi[k]);
    snprintf(what, sizeof what, "layernorm_fwd constant rows (C %lld), eps 1e-12", (long long)C);
    check_dev(c, what, y_, y, M * C, 0);
    free(x), free(w), free(bi), free(y), free(mean), free(rstd);
}

Test(cuda, layernorm)
{
    ctx c;
    open_ctx(&c, 1);
    layernorm_case(&c, 257, 768);
    layernorm_case(&c, 1000, 100);
    layernorm_case(&c, 3, 31);
    /* the one-pass backward (C a multiple of 8 up to 1024): a lane's 4 chunks, a last chunk
     * that only lane 0 has, a block with rows for some warps only; and past 1024 the two-pass way */
    layernorm_case(&c, 70, 1024);
    layernorm_case(&c, 5, 264);
    layernorm_case(&c, 33, 8);
    layernorm_case(&c, 40, 1032);
    layernorm_const(&c, 5, 768);
    layernorm_const(&c, 5, 100);
    layernorm_const(&c, 3, 1032);
    close_ctx(&c);
}

/* ---- elementwise ------------------------------------------------------------------------ */

Test(cuda, activations_dropout_add)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 300007;
    float *x = hrandn(&c, n, 0, 2.5), *x_ = devf(&c, x, n);
    float *g = hrandn(&c, n, 0, 1), *g_ = devf(&c, g, n);
    float *y = hbuf(n);
    for (int ap = 0; ap <= 1; ap++) {
        float *y_ = dpoison(&c, n);
        CALL(c.cpu, gelu_fwd, x, y, n, ap);
        CALL(c.gpu, gelu_fwd, x_, y_, n, ap);
        check_dev(&c, ap ? "gelu_fwd tanh" : "gelu_fwd erf", y_, y, n, TOL_EXACTISH);
        for (int acc = 0; acc <= 1; acc++) {
            float *dx = acc ? hrandn(&c, n, 0, 1) : hfill(n, 0.0f);
            float *dx_ = acc ? devf(&c, dx, n) : dpoison(&c, n);
            CALL(c.cpu, gelu_bwd, x, g, dx, n, ap, acc);
            CALL(c.gpu, gelu_bwd, x_, g_, dx_, n, ap, acc);
            check_dev(&c, ap ? (acc ? "gelu_bwd tanh acc" : "gelu_bwd tanh") : (acc ? "gelu_bwd erf acc" : "gelu_bwd erf"),
                      dx_, dx, n, TOL_EXACTISH);
            free(dx);
        }
    }
    {
        float *y_ = dpoison(&c, n);
        CALL(c.cpu, relu_fwd, x, y, n);
        CALL(c.gpu, relu_fwd, x_, y_, n);
        check_dev(&c, "relu_fwd", y_, y, n, 0);
        for (int acc = 0; acc <= 1; acc++) {
            float *dx = acc ? hrandn(&c, n, 0, 1) : hfill(n, 0.0f);
            float *dx_ = acc ? devf(&c, dx, n) : dpoison(&c, n);
            CALL(c.cpu, relu_bwd, y, g, dx, n, acc);
            CALL(c.gpu, relu_bwd, y_, g_, dx_, n, acc);
            check_dev(&c, acc ? "relu_bwd acc" : "relu_bwd", dx_, dx, n, 0);
            free(dx);
        }
    }
    { /* the edges: huge finite inputs (the tanh form's du overflows above 1.8e19: the limits 1 and
       * 0, not NaN), infinities and NaN (through ReLU too, as torch: NaN stays, its dy passes) */
        const float nan = nanf("");
        float e[9] = {1e20f, -1e20f, 3e38f, -3e38f, nan, 0.0f, 1.0f, -1.0f, 30.0f}, eg[9];
        for (int i = 0; i < 9; i++)
            eg[i] = 0.5f + 0.25f * (float)i;
        float *e_ = devf(&c, e, 9), *eg_ = devf(&c, eg, 9), ey[9], edx[9];
        for (int ap = 0; ap <= 1; ap++) {
            float *ey_ = dpoison(&c, 9), *edx_ = dpoison(&c, 9);
            CALL(c.cpu, gelu_fwd, e, ey, 9, ap);
            CALL(c.gpu, gelu_fwd, e_, ey_, 9, ap);
            check_dev(&c, ap ? "gelu_fwd tanh at the edges" : "gelu_fwd erf at the edges", ey_, ey, 9, TOL_EXACTISH);
            memset(edx, 0, sizeof edx);
            CALL(c.cpu, gelu_bwd, e, eg, edx, 9, ap, 0);
            CALL(c.gpu, gelu_bwd, e_, eg_, edx_, 9, ap, 0);
            check_dev(&c, ap ? "gelu_bwd tanh at the edges" : "gelu_bwd erf at the edges", edx_, edx, 9, TOL_EXACTISH);
            cr_expect(isfinite(edx[0]) && isfinite(edx[1]), "cpu gelu_bwd at +-1e20: %g %g", edx[0], edx[1]);
        }
        float *ey_ = dpoison(&c, 9), *edx_ = dpoison(&c, 9);
        CALL(c.cpu, relu_fwd, e, ey, 9);
        CALL(c.gpu, relu_fwd, e_, ey_, 9);
        check_dev(&c, "relu_fwd at the edges", ey_, ey, 9, 0);
        cr_expect(isnan(ey[4]), "cpu relu(NaN) = %g", ey[4]);
        CALL(c.cpu, relu_bwd, ey, eg, edx, 9, 0);
        float *eyd_ = devf(&c, ey, 9);
        CALL(c.gpu, relu_bwd, eyd_, eg_, edx_, 9, 0);
        check_dev(&c, "relu_bwd at the edges", edx_, edx, 9, 0);
    }
    /* dropout: the same mask bit for bit (a pure function of seed and index) */
    for (int k = 0; k < 2; k++) {
        float p = k ? 0.5f : 0.1f;
        uint64_t seed = ds_rng_next(&c.rng);
        float *y_ = dpoison(&c, n);
        CALL(c.cpu, dropout_fwd, x, y, n, p, seed);
        CALL(c.gpu, dropout_fwd, x_, y_, n, p, seed);
        float *h = down(&c, y_, n);
        int64_t differ = 0, dropped = 0;
        for (int64_t i = 0; i < n; i++) {
            differ += memcmp(&h[i], &y[i], sizeof(float)) != 0;
            dropped += y[i] == 0.0f;
        }
        cr_expect_eq(differ, 0, "dropout_fwd p=%g: %lld of %lld elements differ from the CPU's [seed %llu]",
                     p, (long long)differ, (long long)n, c.seed);
        cr_expect(fabs((double)dropped / n - p) < 0.01, "dropout p=%g dropped %.4f", p, (double)dropped / n);
        if (verbose())
            fprintf(stderr, "  dropout_fwd p=%.1f: bit-identical to the CPU: %s\n", p, differ ? "NO" : "yes");
        free(h);
        for (int acc = 0; acc <= 1; acc++) {
            float *dx = acc ? hrandn(&c, n, 0, 1) : hfill(n, 0.0f);
            float *dx_ = acc ? devf(&c, dx, n) : dpoison(&c, n);
            CALL(c.cpu, dropout_bwd, g, dx, n, p, seed, acc);
            CALL(c.gpu, dropout_bwd, g_, dx_, n, p, seed, acc);
            check_dev(&c, acc ? "dropout_bwd acc" : "dropout_bwd", dx_, dx, n, 0);
            free(dx);
        }
    }
    {
        float *y_ = dpoison(&c, n);
        CALL(c.cpu, add, x, g, y, n);
        CALL(c.gpu, add, x_, g_, y_, n);
        check_dev(&c, "add", y_, y, n, 0);
        for (int acc = 0; acc <= 1; acc++) {
            float *a = acc ? hrandn(&c, n, 0, 1) : hfill(n, 0.0f);
            float *a_ = acc ? devf(&c, a, n) : dpoison(&c, n);
            CALL(c.cpu, accumulate, x, a, n, acc);
            CALL(c.gpu, accumulate, x_, a_, n, acc);
            check_dev(&c, acc ? "accumulate +=" : "accumulate =", a_, a, n, 0);
            free(a);
        }
        float *s_ = dpoison(&c, n);
        CALL(c.cpu, scale_act, x, y, n, 1.0f / 0.6f);
        CALL(c.gpu, scale_act, x_, s_, n, 1.0f / 0.6f);
        check_dev(&c, "scale_act", s_, y, n, 0);
        CALL(c.cpu, scale, x, n, -0.37f);
        CALL(c.gpu, scale, x_, n, -0.37f);
        check_dev(&c, "scale", x_, x, n, 0);
    }
    close_ctx(&c);
}

/* ---- attention -------------------------------------------------------------------------- */

/* Each row's log-sum-exp of its scaled scores, in double from qkv: what the fused kernels keep. */
static double *lse_ref(const float *qkv, int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    const int64_t D = C / H;
    double *lse = malloc((size_t)(B * H * T) * sizeof *lse), *e = malloc((size_t)T * sizeof *e);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                const float *q = qkv + (b * T + t) * 3 * C + h * D;
                const int64_t n = causal ? t + 1 : T;
                double mx = -INFINITY, sum = 0;
                for (int64_t s = 0; s < n; s++) {
                    const float *k = qkv + (b * T + s) * 3 * C + C + h * D;
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++)
                        dot += (double)q[d] * k[d];
                    e[s] = dot / sqrt((double)D);
                    mx = e[s] > mx ? e[s] : mx;
                }
                for (int64_t s = 0; s < n; s++)
                    sum += exp(e[s] - mx);
                lse[(b * H + h) * T + t] = mx + log(sum);
            }
    free(e);
    return lse;
}

static void attention_case(ctx *c, int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    char what[160];
    const int64_t n3 = B * T * 3 * C, n = B * T * C, na = B * H * T * T;
    float *qkv = hrandn(c, n3, 0, 1);
    if (c->round) /* 16-bit training: q, k, v and the output gradient are values of the format */
        CALL(c->cpu, round16, qkv, n3, c->round);
    float *qkv_ = devf(c, qkv, n3);
    /* the GPU's attention state: the probabilities, or the fused kernels' lse and output copy */
    const int64_t ns = c->gpu->ops->attention_state ? c->gpu->ops->attention_state(c->gpu, B, T, C, H, causal) : na;
    const int fused = ns != na;
    float *out = hbuf(n), *att = hbuf(na), *out_ = dpoison(c, n), *att_ = dpoison(c, ns);
    CALL(c->cpu, attention_fwd, qkv, out, att, B, T, C, H, causal);
    CALL(c->gpu, attention_fwd, qkv_, out_, att_, B, T, C, H, causal);
    snprintf(what, sizeof what, "attention_fwd%s out B%lld T%lld C%lld H%lld%s", fused ? " (fused)" : "",
             (long long)B, (long long)T, (long long)C, (long long)H, causal ? " causal" : "");
    check_dev(c, what, out_, out, n, attn_tol(c, fused));
    if (fused) {
        cr_expect_eq(ns, B * H * T + B * T * C, "fused attention state: %lld floats", (long long)ns);
        float *st = down(c, att_, ns), *o = down(c, out_, n);
        double *lr = lse_ref(qkv, B, T, C, H, causal);
        float *lf = hbuf(B * H * T);
        for (int64_t i = 0; i < B * H * T; i++)
            lf[i] = (float)lr[i];
        snprintf(what, sizeof what, "attention_fwd (fused) row log-sum-exps%s", causal ? " causal" : "");
        check(c, what, st, lf, B * H * T, attn_tol(c, fused));
        cr_expect(memcmp(st + B * H * T, o, (size_t)n * sizeof(float)) == 0,
                  "attention_fwd (fused): the state's copy of the output differs from out");
        free(st);
        free(o);
        free(lr);
        free(lf);
    } else {
        snprintf(what, sizeof what, "attention_fwd att (probabilities)%s", causal ? " causal" : "");
        check_dev(c, what, att_, att, na, attn_tol(c, fused));
    }
    if (causal && !fused) { /* exact zeros above the diagonal */
        float *h = down(c, att_, na);
        int64_t nz = 0;
        for (int64_t r = 0; r < B * H * T; r++)
            for (int64_t s = r % T + 1; s < T; s++)
                nz += h[r * T + s] != 0.0f;
        cr_expect_eq(nz, 0, "attention_fwd: %lld probabilities above the causal diagonal are not 0", (long long)nz);
        free(h);
    }
    float *g = hrandn(c, n, 0, 1);
    if (c->round)
        CALL(c->cpu, round16, g, n, c->round);
    float *g_ = devf(c, g, n);
    float *dq = hfill(n3, 0.0f), *dq_ = dpoison(c, n3);
    CALL(c->cpu, attention_bwd, g, qkv, att, dq, B, T, C, H, causal);
    CALL(c->gpu, attention_bwd, g_, qkv_, att_, dq_, B, T, C, H, causal);
    snprintf(what, sizeof what, "attention_bwd%s dqkv%s", fused ? " (fused)" : "", causal ? " causal" : "");
    check_dev(c, what, dq_, dq, n3, attn_tol(c, fused));
    free(qkv);
    free(out);
    free(att);
    free(g);
    free(dq);
}

/* the materialized kernels with TF32 products (the default; the fused ones: attention_fused) */
Test(cuda, attention_tf32)
{
    ctx c;
    unsetenv("DS_CUDA_FLASH"); /* the default */
    open_ctx(&c, 1);
    cr_assert(strstr(ds_backend_describe(c.gpu), "materialized attention"), "%s", ds_backend_describe(c.gpu));
    attention_case(&c, 2, 77, 96, 4, 1);
    attention_case(&c, 2, 77, 96, 4, 0);
    attention_case(&c, 1, 256, 128, 2, 1);
    attention_case(&c, 1, 1024, 64, 2, 1); /* the longest row kept in registers */
    attention_case(&c, 1, 1030, 32, 2, 1); /* rows longer than 1024: the multi-pass kernels */
    attention_case(&c, 1, 1030, 32, 2, 0);
    close_ctx(&c);
}

/* The fused TF32 kernels (flash_attention.cu): head sizes 16, 32, 48, 64, sequences that are and
 * are not multiples of the tiles, causal and not, one row; a head size they do not take (24)
 * goes to the materialized path in the same backend. */
Test(cuda, attention_fused)
{
    ctx c;
    setenv("DS_CUDA_FLASH", "1", 1);
    open_ctx(&c, 1);
    if (!strstr(ds_backend_describe(c.gpu), "fused TF32 attention")) {
        close_ctx(&c);
        cr_skip_test("this device has no TF32 tensor cores (sm_80 or newer): %s", ds_backend_describe(c.gpu));
    }
    attention_case(&c, 2, 77, 128, 4, 1);
    attention_case(&c, 2, 77, 128, 4, 0);
    attention_case(&c, 1, 130, 128, 2, 1);
    attention_case(&c, 1, 130, 128, 2, 0);
    attention_case(&c, 3, 20, 64, 4, 1);
    attention_case(&c, 1, 50, 96, 2, 1);
    attention_case(&c, 2, 1, 64, 1, 1);
    attention_case(&c, 1, 64, 256, 4, 1);
    cr_expect(!c.gpu->ops->attention_state || c.gpu->ops->attention_state(c.gpu, 2, 40, 96, 4, 1) == 2 * 4 * 40 * 40,
              "head size 24 keeps the probabilities");
    attention_case(&c, 2, 40, 96, 4, 1);
    close_ctx(&c);
}

/* The fused 16-bit kernels (flash16.cu), the default in bf16 and fp16 training: head sizes 16,
 * 32, 48, 64, 128, sequences that are and are not multiples of the tiles (64 keys forward, 64
 * or 32 in backward) and longer than one tile, causal and not, one row; head size 24 and DS_CUDA_FLASH=0 keep the
 * materialized path. */
Test(cuda, attention_fused16)
{
    ctx c;
    unsetenv("DS_CUDA_FLASH");
    open_ctx(&c, 1);
    for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++) {
        CALL(c.gpu, set_precision, mode);
        const char *want = mode == DS_ROUND_BF16 ? "bf16 GEMMs, fused bf16 attention" : "fp16 GEMMs, fused fp16 attention";
        if (!strstr(ds_backend_describe(c.gpu), want)) {
            const char *d = ds_backend_describe(c.gpu);
            cr_expect(strstr(d, "sm_7") || strstr(d, "sm_6"), "an sm_80+ device without %s: %s", want, d);
            close_ctx(&c);
            cr_skip_test("this device has no bf16 tensor cores (sm_80 or newer): %s", d);
        }
        c.round = mode;
        attention_case(&c, 2, 77, 128, 4, 1); /* head size 32 */
        attention_case(&c, 2, 77, 128, 4, 0);
        attention_case(&c, 1, 130, 128, 2, 1); /* 64 */
        attention_case(&c, 1, 130, 128, 2, 0);
        attention_case(&c, 3, 20, 64, 4, 1); /* 16 */
        attention_case(&c, 1, 50, 96, 2, 1); /* 48 */
        attention_case(&c, 1, 130, 96, 2, 1); /* 48: a thread's chunks of a tile are not a fixed row step apart */
        attention_case(&c, 2, 1, 64, 1, 1);
        attention_case(&c, 1, 77, 64, 1, 1); /* B H T odd: the state's output copy starts off 8-byte alignment */
        attention_case(&c, 1, 70, 256, 2, 1); /* 128: tiles of 32 */
        attention_case(&c, 1, 70, 256, 2, 0);
        cr_expect(c.gpu->ops->attention_state(c.gpu, 2, 40, 96, 4, 1) == 2 * 4 * 40 * 40,
                  "head size 24 keeps the probabilities");
        attention_case(&c, 2, 40, 96, 4, 1);
    }
    close_ctx(&c);
    setenv("DS_CUDA_FLASH", "0", 1);
    open_ctx(&c, 1);
    CALL(c.gpu, set_precision, DS_ROUND_BF16);
    cr_expect(strstr(ds_backend_describe(c.gpu), "bf16 GEMMs, materialized attention"), "DS_CUDA_FLASH=0: %s",
              ds_backend_describe(c.gpu));
    cr_expect(c.gpu->ops->attention_state(c.gpu, 2, 40, 128, 4, 1) == 2 * 4 * 40 * 40,
              "DS_CUDA_FLASH=0 keeps the probabilities in bf16 training");
    c.round = DS_ROUND_BF16;
    attention_case(&c, 2, 40, 128, 4, 1);
    unsetenv("DS_CUDA_FLASH");
    close_ctx(&c);
}

/* ---- fuse_round: the activation ops round their own outputs --------------------------- */

/* how many of d[0, n) are not bf16 values (low 16 bits set) */
static int64_t not_bf16(ctx *c, const float *d, int64_t n)
{
    float *h = down(c, d, n);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &h[i], 4);
        k += (u & 0xffffu) != 0;
    }
    free(h);
    return k;
}

/* With fuse_round(bf16) the activation ops write bf16 values, close to the CPU's outputs rounded
 * the same way; accumulate and the weight gradients stay fp32; fuse_round(0) stops it; a mode
 * other than the GEMMs' is declined. */
Test(cuda, fuse_round_outputs)
{
    ctx c;
    unsetenv("DS_CUDA_FLASH");
    open_ctx(&c, 1);
    if (!c.gpu->ops->fuse_round) {
        close_ctx(&c);
        cr_skip_test("this backend has no fuse_round");
    }
    CALL(c.gpu, set_precision, DS_ROUND_BF16);
    cr_expect_eq(c.gpu->ops->fuse_round(c.gpu, DS_ROUND_FP16), 0, "fp16 rounding with bf16 GEMMs is declined");
    cr_assert_eq(c.gpu->ops->fuse_round(c.gpu, DS_ROUND_BF16), 1, "bf16 rounding with bf16 GEMMs");
    const int64_t M = 96, K = 64, N = 80, n = M * N;
    float *x = hrandn(&c, M * K, 0, 1), *w = hrandn(&c, N * K, 0, 0.2), *bias = hrandn(&c, N, 0, 1);
    float *g = hrandn(&c, M * N, 0, 1);
    CALL(c.cpu, round16, x, M * K, DS_ROUND_BF16);
    CALL(c.cpu, round16, w, N * K, DS_ROUND_BF16);
    CALL(c.cpu, round16, g, M * N, DS_ROUND_BF16);
    float *x_ = devf(&c, x, M * K), *w_ = devf(&c, w, N * K), *b_ = devf(&c, bias, N), *g_ = devf(&c, g, n);
    float *y = hbuf(n), *y_ = dpoison(&c, n);
    char what[96];
    /* linear with and without bias, then gelu, add, layernorm on its output */
    for (int wb = 0; wb < 2; wb++) {
        CALL(c.cpu, linear_fwd, x, w, wb ? bias : NULL, y, M, K, N);
        CALL(c.cpu, round16, y, n, DS_ROUND_BF16);
        CALL(c.gpu, linear_fwd, x_, w_, wb ? b_ : NULL, y_, M, K, N);
        cr_expect_eq(not_bf16(&c, y_, n), 0, "linear_fwd%s: outputs that are not bf16", wb ? " +bias" : "");
        snprintf(what, sizeof what, "linear_fwd%s, rounded", wb ? " +bias" : "");
        check_dev(&c, what, y_, y, n, 1e-2);
    }
    float *h = hbuf(n), *h_ = dpoison(&c, n);
    CALL(c.cpu, gelu_fwd, y, h, n, 1);
    CALL(c.cpu, round16, h, n, DS_ROUND_BF16);
    CALL(c.gpu, gelu_fwd, y_, h_, n, 1);
    cr_expect_eq(not_bf16(&c, h_, n), 0, "gelu_fwd: outputs that are not bf16");
    check_dev(&c, "gelu_fwd, rounded", h_, h, n, 1e-2);
    float *a = hbuf(n), *a_ = dpoison(&c, n);
    CALL(c.cpu, add, h, g, a, n);
    CALL(c.cpu, round16, a, n, DS_ROUND_BF16);
    CALL(c.gpu, add, h_, g_, a_, n);
    cr_expect_eq(not_bf16(&c, a_, n), 0, "add: outputs that are not bf16");
    check_dev(&c, "add, rounded", a_, a, n, 1e-2);
    float *lw = hrandn(&c, N, 1, 0.1), *lb = hrandn(&c, N, 0, 0.1), *lw_ = devf(&c, lw, N), *lb_ = devf(&c, lb, N);
    float *mu = hbuf(M), *rs = hbuf(M), *mu_ = dpoison(&c, M), *rs_ = dpoison(&c, M), *ln = hbuf(n), *ln_ = dpoison(&c, n);
    CALL(c.cpu, layernorm_fwd, a, lw, lb, ln, mu, rs, M, N, 1e-5f);
    CALL(c.cpu, round16, ln, n, DS_ROUND_BF16);
    CALL(c.gpu, layernorm_fwd, a_, lw_, lb_, ln_, mu_, rs_, M, N, 1e-5f);
    cr_expect_eq(not_bf16(&c, ln_, n), 0, "layernorm_fwd: outputs that are not bf16");
    cr_expect_gt(not_bf16(&c, rs_, M), 0, "layernorm_fwd: rstd is not rounded");
    check_dev(&c, "layernorm_fwd, rounded", ln_, ln, n, 1e-2);
    /* the backward of the linear layer: dx rounded, dW and dbias not */
    float *dx_ = dpoison(&c, M * K), *dw_ = devf(&c, hfill(N * K, 0.0f), N * K), *db_ = devf(&c, hfill(N, 0.0f), N);
    CALL(c.gpu, linear_bwd, g_, x_, w_, dx_, dw_, db_, M, K, N, 0);
    cr_expect_eq(not_bf16(&c, dx_, M * K), 0, "linear_bwd: dx values that are not bf16");
    cr_expect_gt(not_bf16(&c, dw_, N * K), 0, "linear_bwd: dW is not rounded");
    /* cross-entropy: dlogits rounded */
    int32_t *t = malloc((size_t)M * sizeof *t);
    for (int64_t i = 0; i < M; i++)
        t[i] = (int32_t)(i % N);
    int32_t *t_ = dev(&c, t, (size_t)M * sizeof *t);
    float *l_ = dpoison(&c, M), *d_ = dpoison(&c, n);
    CALL(c.gpu, xent_fwd, a_, t_, l_, d_, 0.37f, M, N);
    cr_expect_eq(not_bf16(&c, d_, n), 0, "xent_fwd: dlogits that are not bf16");
    /* accumulate never rounds */
    CALL(c.gpu, accumulate, h_, d_, n, 1);
    cr_expect_gt(not_bf16(&c, d_, n), 0, "accumulate: rounded under fuse_round");
    /* stopped */
    cr_assert_eq(c.gpu->ops->fuse_round(c.gpu, 0), 1, "fuse_round(0)");
    CALL(c.gpu, layernorm_fwd, a_, lw_, lb_, ln_, mu_, rs_, M, N, 1e-5f);
    cr_expect_gt(not_bf16(&c, ln_, n), 0, "layernorm_fwd after fuse_round(0): still rounded");
    free(x);
    free(w);
    free(bias);
    free(g);
    free(y);
    free(h);
    free(a);
    free(lw);
    free(lb);
    free(mu);
    free(rs);
    free(ln);
    free(t);
    close_ctx(&c);
}

Test(cuda, attention_fp32)
{
    ctx c;
    open_ctx(&c, 0);
    attention_case(&c, 3, 50, 48, 3, 1);
    attention_case(&c, 1, 33, 64, 1, 0);
    close_ctx(&c);
}

/* ---- losses ----------------------------------------------------------------------------- */

static void xent_case(ctx *c, int64_t M, int64_t V, double sd)
{
    char what[128];
    float *z = hrandn(c, M * V, 0, sd), *z_ = devf(c, z, M * V);
    int32_t *t = malloc((size_t)M * sizeof *t);
    for (int64_t i = 0; i < M; i++)
        t[i] = (int32_t)(ds_rng_next(&c->rng) % (uint64_t)V);
    int32_t *t_ = dev(c, t, (size_t)M * sizeof *t);
    float *l = hbuf(M), *d = hbuf(M * V), *l_ = dpoison(c, M), *d_ = dpoison(c, M * V);
    CALL(c->cpu, xent_fwd, z, t, l, d, 0.37f, M, V);
    CALL(c->gpu, xent_fwd, z_, t_, l_, d_, 0.37f, M, V);
    snprintf(what, sizeof what, "xent losses (M %lld, V %lld, sd %g)", (long long)M, (long long)V, sd);
    check_dev(c, what, l_, l, M, TOL_REDUCE);
    snprintf(what, sizeof what, "xent dlogits (M %lld, V %lld)", (long long)M, (long long)V);
    check_dev(c, what, d_, d, M * V, TOL_REDUCE);
    float *l2_ = dpoison(c, M);
    CALL(c->gpu, xent_fwd, z_, t_, l2_, NULL, 1.0f, M, V);
    check_dev(c, "xent losses without gradient", l2_, l, M, TOL_REDUCE);
    free(z);
    free(t);
    free(l);
    free(d);
}

Test(cuda, losses)
{
    ctx c;
    open_ctx(&c, 1);
    xent_case(&c, 37, 50304, 3.0);
    xent_case(&c, 100, 7, 1.0);
    xent_case(&c, 20, 1000, 30.0); /* extreme logits */
    const int64_t M = 50, N = 33;
    float *y = hrandn(&c, M * N, 0, 1), *t = hrandn(&c, M * N, 0, 1);
    float *y_ = devf(&c, y, M * N), *t_ = devf(&c, t, M * N);
    float *l = hbuf(M), *d = hbuf(M * N), *l_ = dpoison(&c, M), *d_ = dpoison(&c, M * N);
    CALL(c.cpu, mse_fwd, y, t, l, d, 0.25f, M, N);
    CALL(c.gpu, mse_fwd, y_, t_, l_, d_, 0.25f, M, N);
    check_dev(&c, "mse losses", l_, l, M, TOL_REDUCE);
    check_dev(&c, "mse dy", d_, d, M * N, TOL_EXACTISH);
    close_ctx(&c);
}

/* ---- reductions ------------------------------------------------------------------------- */

Test(cuda, reductions)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 1000003;
    float *x = hrandn(&c, n, 0.1, 1), *x_ = devf(&c, x, n);
    double sc, sg, qc, qg, exact = 0, exactq = 0;
    for (int64_t i = 0; i < n; i++) {
        exact += x[i];
        exactq += (double)x[i] * x[i];
    }
    CALL(c.cpu, sum, x, n, &sc);
    CALL(c.gpu, sum, x_, n, &sg);
    CALL(c.cpu, sumsq, x, n, &qc);
    CALL(c.gpu, sumsq, x_, n, &qg);
    if (verbose())
        fprintf(stderr, "  sum: gpu %.10g cpu %.10g double %.10g; sumsq: gpu %.10g cpu %.10g double %.10g\n", sg,
                sc, exact, qg, qc, exactq);
    cr_expect(fabs(sg - exact) <= 1e-9 * fabs(exact) + 1e-6, "sum %.12g, exact %.12g", sg, exact);
    cr_expect(fabs(sg - sc) <= 1e-6 * fabs(exact) + 1e-3, "sum gpu %.12g cpu %.12g", sg, sc);
    cr_expect(fabs(qg - exactq) <= 1e-9 * exactq, "sumsq %.12g, exact %.12g", qg, exactq);
    cr_expect(fabs(qg - qc) <= 1e-6 * exactq, "sumsq gpu %.12g cpu %.12g", qg, qc);
    double again;
    CALL(c.gpu, sum, x_, n, &again);
    cr_expect(memcmp(&again, &sg, sizeof again) == 0, "sum is deterministic (%.17g vs %.17g)", again, sg);
    int64_t bad;
    CALL(c.gpu, nonfinite, x_, n, &bad);
    cr_expect_eq(bad, 0);
    x[5] = INFINITY;
    x[n - 1] = NAN;
    x[77777] = -INFINITY;
    CALL(c.gpu, upload, x_, x, (size_t)n * sizeof(float));
    int64_t badc;
    CALL(c.gpu, nonfinite, x_, n, &bad);
    CALL(c.cpu, nonfinite, x, n, &badc);
    cr_expect_eq(bad, 3, "nonfinite counted %lld", (long long)bad);
    cr_expect_eq(bad, badc);
    CALL(c.gpu, sum, x_, 1, &sg);
    cr_expect(sg == (double)x[0], "sum of one element");
    CALL(c.gpu, sum, x_, 0, &sg);
    cr_expect(sg == 0.0, "sum of nothing");
    free(x);
    close_ctx(&c);
}

/* ---- fused optimizers ------------------------------------------------------------------- */

Test(cuda, optimizers)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 100003;
    for (int mode = 0; mode < 4; mode++) {
        ds_adamw_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                           .adam_w_mode = mode != 1, .bias_correction = mode != 2,
                           .grad_scale = mode == 3 ? 0.25f : 1.0f};
        float *p = hrandn(&c, n, 0, 1), *m = hrandn(&c, n, 0, 0.1), *v = hfill(n, 0.0f);
        for (int64_t i = 0; i < n; i++)
            v[i] = (float)fabs(ds_rng_normal(&c.rng)) * 0.01f;
        float *p_ = devf(&c, p, n), *m_ = devf(&c, m, n), *v_ = devf(&c, v, n);
        for (int step = 1; step <= 3; step++) {
            float *g = hrandn(&c, n, 0, 1), *g_ = devf(&c, g, n);
            a.step = step;
            CALL(c.cpu, adamw_step, p, g, m, v, n, &a);
            CALL(c.gpu, adamw_step, p_, g_, m_, v_, n, &a);
            free(g);
            c.gpu->ops->free(c.gpu, g_);
        }
        char what[96];
        snprintf(what, sizeof what, "adamw 3 steps (w_mode %d, bias_corr %d, gs %g): p", a.adam_w_mode,
                 a.bias_correction, a.grad_scale);
        check_dev(&c, what, p_, p, n, TOL_EXACTISH);
        check_dev(&c, "adamw m", m_, m, n, TOL_EXACTISH);
        check_dev(&c, "adamw v", v_, v, n, TOL_EXACTISH);
        free(p);
        free(m);
        free(v);
    }
    for (int mode = 0; mode < 3; mode++) {
        ds_sgd_args a = {.lr = 0.05f, .momentum = mode ? 0.9f : 0.0f, .dampening = mode == 2 ? 0.0f : 0.1f,
                         .weight_decay = 0.01f, .nesterov = mode == 2, .grad_scale = 0.5f};
        float *p = hrandn(&c, n, 0, 1), *buf = hfill(n, 0.0f);
        float *p_ = devf(&c, p, n), *buf_ = devf(&c, buf, n);
        for (int step = 1; step <= 3; step++) {
            float *g = hrandn(&c, n, 0, 1), *g_ = devf(&c, g, n);
            a.first_step = step == 1;
            CALL(c.cpu, sgd_step, p, g, buf, n, &a);
            CALL(c.gpu, sgd_step, p_, g_, buf_, n, &a);
            free(g);
            c.gpu->ops->free(c.gpu, g_);
        }
        char what[96];
        snprintf(what, sizeof what, "sgd 3 steps (momentum %g, nesterov %d): p", a.momentum, a.nesterov);
        check_dev(&c, what, p_, p, n, TOL_EXACTISH);
        if (mode)
            check_dev(&c, "sgd momentum buffer", buf_, buf, n, TOL_EXACTISH);
        free(p);
        free(buf);
    }
    close_ctx(&c);
}

/* ---- 16-bit rounding, Adagrad, LAMB and the fused 16-bit weight write -------------------- */

Test(cuda, round16_bit_exact)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 200003;
    float *x = hrandn(&c, n, 0, 1);
    const float special[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -70000.0f, 1e-8f, 2.98023259e-8f,
                             6.0975552e-5f, 3.4028235e38f, INFINITY, -INFINITY, NAN, 1.00048828125f};
    for (int i = 0; i < (int)(sizeof special / sizeof special[0]); i++)
        x[i] = special[i];
    for (int64_t i = 100; i < n; i += 7) /* magnitudes across the fp16 range and beyond */
        x[i] *= (float)ldexp(1.0, (int)(i % 60) - 30);
    for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++) {
        float *h = malloc((size_t)n * sizeof(float));
        memcpy(h, x, (size_t)n * sizeof(float));
        float *d = devf(&c, x, n);
        CALL(c.cpu, round16, h, n, mode);
        CALL(c.gpu, round16, d, n, mode);
        float *got = down(&c, d, n);
        int64_t diff = 0;
        for (int64_t i = 0; i < n; i++)
            diff += memcmp(&got[i], &h[i], 4) != 0 && !(isnan(got[i]) && isnan(h[i]));
        cr_expect_eq(diff, 0, "round16 mode %d: %lld elements differ from the CPU", mode, (long long)diff);
        free(got);
        free(h);
        c.gpu->ops->free(c.gpu, d);
    }
    free(x);
    close_ctx(&c);
}

Test(cuda, adagrad_lamb_and_working_weights)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 50021;
    /* Adagrad, with the bf16 working weights */
    {
        ds_adagrad_args a = {.lr = 0.05f, .lr_decay = 0.01f, .weight_decay = 0.01f, .eps = 1e-10f, .grad_scale = 0.5f,
                             .round = DS_ROUND_BF16};
        float *p = hrandn(&c, n, 0, 1), *s = hfill(n, 0.1f), *pw = hfill(n, 0.0f);
        float *p_ = devf(&c, p, n), *s_ = devf(&c, s, n), *pw_ = devf(&c, pw, n);
        for (int step = 1; step <= 3; step++) {
            float *g = hrandn(&c, n, 0, 1), *g_ = devf(&c, g, n);
            a.step = step;
            a.pw = pw;
            CALL(c.cpu, adagrad_step, p, g, s, n, &a);
            a.pw = pw_;
            CALL(c.gpu, adagrad_step, p_, g_, s_, n, &a);
            free(g);
            c.gpu->ops->free(c.gpu, g_);
        }
        check_dev(&c, "adagrad 3 steps: p", p_, p, n, TOL_EXACTISH);
        check_dev(&c, "adagrad sum", s_, s, n, TOL_EXACTISH);
        check_dev(&c, "adagrad bf16 working weights", pw_, pw, n, 1e-2);
        free(p);
        free(s);
        free(pw);
    }
    /* LAMB over three tensors (one clamped by max_coeff), fp16 working weights; then the
     * ZeRO path: pass 1 sums, pass 2 with given ratios */
    {
        int64_t off[4] = {0, 20000, 20011, n};
        float coeffs[3], coeffs_[3];
        ds_lamb_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-6f, .weight_decay = 0.01f,
                          .min_coeff = 0.01f, .max_coeff = 3.0f, .bias_correction = 1, .grad_scale = 1.0f,
                          .round = DS_ROUND_FP16, .offsets = off, .n_tensors = 3};
        float *p = hrandn(&c, n, 0, 1), *m = hfill(n, 0.0f), *v = hfill(n, 0.0f), *pw = hfill(n, 0.0f);
        for (int64_t i = 20000; i < 20011; i++)
            p[i] *= 100.0f; /* a large-norm tensor: its ratio is clamped */
        float *p_ = devf(&c, p, n), *m_ = devf(&c, m, n), *v_ = devf(&c, v, n), *pw_ = devf(&c, pw, n);
        for (int step = 1; step <= 3; step++) {
            float *g = hrandn(&c, n, 0, 1), *g_ = devf(&c, g, n);
            a.step = step;
            a.pw = pw;
            a.coeffs = coeffs;
            CALL(c.cpu, lamb_step, p, g, m, v, &a);
            a.pw = pw_;
            a.coeffs = coeffs_;
            CALL(c.gpu, lamb_step, p_, g_, m_, v_, &a);
            for (int t = 0; t < 3; t++)
                cr_expect(fabs(coeffs_[t] - coeffs[t]) <= 1e-5 * fabs(coeffs[t]), "lamb step %d ratio %d: %g vs cpu %g",
                          step, t, coeffs_[t], coeffs[t]);
            free(g);
            c.gpu->ops->free(c.gpu, g_);
        }
        cr_expect(coeffs[1] == 3.0f, "the large tensor's ratio is clamped to max_coeff: %g", coeffs[1]);
        check_dev(&c, "lamb 3 steps: p", p_, p, n, 1e-5);
        check_dev(&c, "lamb m", m_, m, n, TOL_EXACTISH);
        check_dev(&c, "lamb v", v_, v, n, TOL_EXACTISH);
        check_dev(&c, "lamb fp16 working weights", pw_, pw, n, 2e-3);
        /* phases: pass 1 gives the sums, pass 2 applies given ratios */
        double sums[6], sums_[6];
        float *g = hrandn(&c, n, 0, 1), *g_ = devf(&c, g, n);
        a.step = 4;
        a.phase = 1;
        a.pw = NULL;
        a.sums = sums;
        CALL(c.cpu, lamb_step, p, g, m, v, &a);
        a.sums = sums_;
        CALL(c.gpu, lamb_step, p_, g_, m_, v_, &a);
        for (int k = 0; k < 6; k++)
            cr_expect(fabs(sums_[k] - sums[k]) <= 1e-5 * fabs(sums[k]), "lamb pass-1 sum %d: %g vs cpu %g", k, sums_[k], sums[k]);
        float given[3] = {0.5f, 3.0f, 1.25f};
        a.phase = 2;
        a.coeffs = given;
        CALL(c.cpu, lamb_step, p, g, m, v, &a);
        CALL(c.gpu, lamb_step, p_, g_, m_, v_, &a);
        check_dev(&c, "lamb pass 2 with given ratios: p", p_, p, n, 1e-5);
        free(g);
        c.gpu->ops->free(c.gpu, g_);
        free(p);
        free(m);
        free(v);
        free(pw);
    }
    /* AdamW and SGD write the working weights too */
    {
        ds_adamw_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                           .adam_w_mode = 1, .bias_correction = 1, .grad_scale = 1.0f, .step = 1,
                           .round = DS_ROUND_BF16};
        float *p = hrandn(&c, n, 0, 1), *m = hfill(n, 0.0f), *v = hfill(n, 0.0f), *pw = hfill(n, 0.0f);
        float *g = hrandn(&c, n, 0, 1);
        float *p_ = devf(&c, p, n), *m_ = devf(&c, m, n), *v_ = devf(&c, v, n), *pw_ = devf(&c, pw, n), *g_ = devf(&c, g, n);
        a.pw = pw;
        CALL(c.cpu, adamw_step, p, g, m, v, n, &a);
        a.pw = pw_;
        CALL(c.gpu, adamw_step, p_, g_, m_, v_, n, &a);
        check_dev(&c, "adamw bf16 working weights", pw_, pw, n, 1e-2);
        ds_sgd_args s = {.lr = 0.05f, .momentum = 0.9f, .first_step = 1, .grad_scale = 1.0f, .round = DS_ROUND_FP16};
        s.pw = pw;
        CALL(c.cpu, sgd_step, p, g, m, n, &s);
        s.pw = pw_;
        CALL(c.gpu, sgd_step, p_, g_, m_, n, &s);
        check_dev(&c, "sgd fp16 working weights", pw_, pw, n, 2e-3);
        free(p);
        free(m);
        free(v);
        free(pw);
        free(g);
    }
    close_ctx(&c);
}

/* AdamW runs 8 elements per thread through 16-byte accesses where every pointer is 16-byte
 * aligned, one by one otherwise: the same operations per element, so the same bits. The same
 * inputs at offset 0 (wide, and a tail of n % 8) and at offset 1 element (misaligned: one by
 * one), with no working weights, fp32 ones and 2-byte ones of both formats. */
Test(cuda, adamw_wide_and_narrow_paths_same_bits)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 40013; /* 5001 groups of 8 and 5 more */
    float *p = hrandn(&c, n, 0, 1), *g = hrandn(&c, n, 0, 1), *m = hrandn(&c, n, 0, 0.1), *v = hfill(n, 0.0f);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)fabs(ds_rng_normal(&c.rng)) * 0.01f;
    const char *kind[4] = {"no working weights", "fp32 working weights", "bf16 2-byte", "fp16 2-byte"};
    for (int k = 0; k < 4; k++) {
        const size_t wbytes = k >= 2 ? 2 : 4;
        float *res[2][4];
        unsigned char *wres[2];
        for (int off = 0; off < 2; off++) {
            /* n + 1 elements, used from element off */
            float *buf[4];
            const float *src[4] = {p, g, m, v};
            for (int j = 0; j < 4; j++) {
                buf[j] = devf(&c, NULL, n + 1);
                CALL(c.gpu, upload, buf[j] + off, src[j], (size_t)n * sizeof(float));
            }
            unsigned char *w = dev(&c, NULL, (n + 1) * wbytes);
            CALL(c.gpu, zero, w, (n + 1) * wbytes);
            ds_adamw_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                               .adam_w_mode = 1, .bias_correction = 1, .grad_scale = 0.5f, .step = 3,
                               .pw = k ? w + off * wbytes : NULL, .round = k == 3 ? DS_ROUND_FP16 : DS_ROUND_BF16,
                               .pw16 = k >= 2};
            CALL(c.gpu, adamw_step, buf[0] + off, buf[1] + off, buf[2] + off, buf[3] + off, n, &a);
            for (int j = 0; j < 4; j++) {
                res[off][j] = down(&c, buf[j] + off, n);
                c.gpu->ops->free(c.gpu, buf[j]);
            }
            wres[off] = malloc(n * wbytes);
            CALL(c.gpu, download, wres[off], w + off * wbytes, n * wbytes);
            c.gpu->ops->free(c.gpu, w);
        }
        const char *what[4] = {"p", "g", "m", "v"};
        for (int j = 0; j < 4; j++)
            cr_assert(memcmp(res[0][j], res[1][j], (size_t)n * sizeof(float)) == 0,
                      "adamw, %s: %s differs between the aligned and the misaligned run", kind[k], what[j]);
        cr_assert(memcmp(wres[0], wres[1], n * wbytes) == 0,
                  "adamw, %s: the working weights differ between the aligned and the misaligned run", kind[k]);
        int64_t changed = 0;
        for (int64_t i = 0; i < n; i++)
            changed += res[0][0][i] != p[i];
        cr_assert(changed > n / 2, "adamw: the step changed %lld of %lld weights", (long long)changed, (long long)n);
        if (k) { /* and the working weights are the new weights, rounded */
            for (int64_t i = 0; i < n; i++) {
                float want32 = k == 3 ? ds_f16_to_f32(ds_f32_to_f16(res[0][0][i])) : ds_bf16_to_f32(ds_f32_to_bf16(res[0][0][i]));
                float got32;
                if (k == 1)
                    memcpy(&got32, wres[0] + 4 * i, 4);
                else {
                    uint16_t h;
                    memcpy(&h, wres[0] + 2 * i, 2);
                    got32 = k == 3 ? ds_f16_to_f32(h) : ds_bf16_to_f32(h);
                }
                cr_assert(memcmp(&got32, &want32, 4) == 0, "adamw, %s: w[%lld] = %a, want %a", kind[k], (long long)i,
                          got32, want32);
            }
        }
        for (int off = 0; off < 2; off++) {
            for (int j = 0; j < 4; j++)
                free(res[off][j]);
            free(wres[off]);
        }
    }
    free(p), free(g), free(m), free(v);
    close_ctx(&c);
}

/* store16's working weights: each optimizer with pw16 writes, in its pass, the 2-byte values of
 * its own updated master weights rounded (the bits of the host converters), in both formats,
 * over tensors at odd offsets (Lamb); and the backend's pack16 gives the same bits. */
static uint16_t w16bits(float v, int mode)
{
    return mode == DS_ROUND_BF16 ? ds_f32_to_bf16(v) : ds_f32_to_f16(v);
}

Test(cuda, pw16_working_weights_and_pack16)
{
    ctx c;
    open_ctx(&c, 1);
    const int64_t n = 50021;
    int64_t off[3] = {0, 20011, n};
    for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++)
        for (int opt = 0; opt < 4; opt++) {
            float *p = hrandn(&c, n, 0, 1), *g = hrandn(&c, n, 0, 1), *z = hfill(n, 0.0f);
            float *p_ = devf(&c, p, n), *g_ = devf(&c, g, n), *m_ = devf(&c, z, n), *v_ = devf(&c, z, n);
            uint16_t *h = calloc((size_t)n, 2);
            void *w_ = dev(&c, h, (size_t)n * 2);
            const char *name[4] = {"adamw", "sgd", "adagrad", "lamb"};
            if (opt == 0) {
                ds_adamw_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                                   .adam_w_mode = 1, .bias_correction = 1, .grad_scale = 0.5f, .step = 1,
                                   .pw = w_, .round = mode, .pw16 = 1};
                CALL(c.gpu, adamw_step, p_, g_, m_, v_, n, &a);
            } else if (opt == 1) {
                ds_sgd_args a = {.lr = 0.05f, .momentum = 0.9f, .first_step = 1, .grad_scale = 1.0f,
                                 .pw = w_, .round = mode, .pw16 = 1};
                CALL(c.gpu, sgd_step, p_, g_, m_, n, &a);
            } else if (opt == 2) {
                ds_adagrad_args a = {.lr = 0.05f, .eps = 1e-10f, .grad_scale = 1.0f, .step = 1,
                                     .pw = w_, .round = mode, .pw16 = 1};
                CALL(c.gpu, adagrad_step, p_, g_, m_, n, &a);
            } else {
                ds_lamb_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-6f, .weight_decay = 0.01f,
                                  .min_coeff = 0.01f, .max_coeff = 3.0f, .bias_correction = 1, .grad_scale = 1.0f,
                                  .step = 1, .pw = w_, .round = mode, .pw16 = 1, .offsets = off, .n_tensors = 2};
                CALL(c.gpu, lamb_step, p_, g_, m_, v_, &a);
            }
            float *pm = down(&c, p_, n);
            CALL(c.gpu, download, h, w_, (size_t)n * 2);
            int64_t changed = 0;
            for (int64_t i = 0; i < n; i++) {
                uint16_t want = w16bits(pm[i], mode);
                changed += pm[i] != p[i];
                cr_assert_eq(h[i], want, "%s %s: w16[%lld] = 0x%04x, master %a rounds to 0x%04x", name[opt],
                             mode == DS_ROUND_BF16 ? "bf16" : "fp16", (long long)i, h[i], pm[i], want);
            }
            cr_assert(changed > n / 2, "%s: the step changed %lld of %lld weights", name[opt], (long long)changed,
                      (long long)n);
            /* pack16 of the same masters */
            CALL(c.gpu, zero, w_, (size_t)n * 2);
            CALL(c.gpu, pack16, p_, w_, n, mode);
            CALL(c.gpu, download, h, w_, (size_t)n * 2);
            for (int64_t i = 0; i < n; i++)
                cr_assert_eq(h[i], w16bits(pm[i], mode), "pack16 %s: [%lld] = 0x%04x, want 0x%04x",
                             mode == DS_ROUND_BF16 ? "bf16" : "fp16", (long long)i, h[i], w16bits(pm[i], mode));
            free(p), free(g), free(z), free(h), free(pm);
        }
    close_ctx(&c);
}

/* ---- a tiny GPT through the engine ------------------------------------------------------ */

/* gpt-tiny (share/configs/gpt-tiny.json) with 2 layers and a dropout in the MLP: the dropout
 * masks must match for the losses to follow. */
static const char *tiny_net =
    "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 256, \"seq_len\": 128},"
    " \"layers\": ["
    "  {\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 256},"
    "  {\"type\": \"position_embedding\", \"name\": \"wpe\"},"
    "  {\"type\": \"repeat\", \"name\": \"h\", \"count\": 2, \"layers\": ["
    "    {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_1\"},"
    "      {\"type\": \"attention\", \"name\": \"attn\", \"heads\": 4, \"causal\": true}]},"
    "    {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_2\"},"
    "      {\"type\": \"linear\", \"name\": \"fc\", \"out\": 1024},"
    "      {\"type\": \"gelu\", \"approximate\": \"tanh\"},"
    "      {\"type\": \"linear\", \"name\": \"proj\", \"out\": 256},"
    "      {\"type\": \"dropout\", \"p\": 0.1}]}]},"
    "  {\"type\": \"layernorm\", \"name\": \"ln_f\"},"
    "  {\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256, \"bias\": false, \"tied_to\": \"wte\"}],"
    " \"loss\": {\"type\": \"cross_entropy\"}}";

static const char *tiny_cfg =
    "{\"train_micro_batch_size_per_gpu\": 4, \"gradient_accumulation_steps\": 2,"
    " \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.001, \"betas\": [0.9, 0.95],"
    " \"eps\": 1e-8, \"weight_decay\": 0.1}}, \"gradient_clipping\": 1.0, \"seed\": 1234}";

#define TINY_STEPS 20

/* Losses and grad norms of TINY_STEPS steps on a fixed text-like byte stream. */
static const char *tiny_cfg_bf16 =
    "{\"train_micro_batch_size_per_gpu\": 4, \"gradient_accumulation_steps\": 2,"
    " \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.001, \"betas\": [0.9, 0.95],"
    " \"eps\": 1e-8, \"weight_decay\": 0.1}}, \"gradient_clipping\": 1.0, \"seed\": 1234,"
    " \"bf16\": {\"enabled\": true}}";

/* net: the network (tiny_net); checkpoint: checkpoint_activations (every outermost repeat) */
static void train_tiny_net(const char *backend, const char *net, const char *cfg, int checkpoint, double *losses,
                           double *norms)
{
    ds_engine_options o = {.config_json = cfg, .config_name = "tiny.ds.json", .net_json = net,
                           .net_name = "tiny.json", .backend = backend, .checkpoint_activations = checkpoint};
    ds_engine *e;
    ds_error err = {0};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s: %s", backend, err.msg);
    const int64_t B = 4, T = 128;
    int32_t tok[4 * 128], tgt[4 * 128];
    static const char text[] = "the quick brown fox jumps over the lazy dog; a stitch in time saves nine. "
                               "to be or not to be, that is the question. all that glitters is not gold. ";
    const int64_t L = (int64_t)sizeof text - 1;
    int64_t micro = 0;
    for (int s = 0; s < TINY_STEPS; s++) {
        for (int u = 0; u < 2; u++, micro++) {
            for (int64_t i = 0; i < B * T; i++) {
                int64_t at = (micro * 37 + (i / T) * 101 + i % T) % L;
                tok[i] = (unsigned char)text[at];
                tgt[i] = (unsigned char)text[(at + 1) % L];
            }
            ds_batch b = {.tokens = tok, .targets = tgt};
            double loss;
            cr_assert_eq(ds_engine_forward(e, &b, &loss, &err), DS_OK, "%s: %s", backend, err.msg);
            cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s: %s", backend, err.msg);
            cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s: %s", backend, err.msg);
        }
        losses[s] = ds_engine_last_loss(e);
        norms[s] = ds_engine_get_global_grad_norm(e);
    }
    ds_engine_destroy(e);
}

static void train_tiny_cfg(const char *backend, const char *cfg, double *losses, double *norms)
{
    train_tiny_net(backend, tiny_net, cfg, 0, losses, norms);
}

static void tiny_gpt_case_cfg(int tf32, double tol, const char *cfg, const char *tag)
{
    ctx c;
    open_ctx(&c, tf32); /* only for the skip and DS_CUDA_TF32 */
    close_ctx(&c);
    double lc[TINY_STEPS], lg[TINY_STEPS], nc[TINY_STEPS], ng[TINY_STEPS];
    train_tiny_cfg("cpu", cfg, lc, nc);
    train_tiny_cfg("cuda", cfg, lg, ng);
    double worst = 0, worst_norm = 0;
    for (int s = 0; s < TINY_STEPS; s++) {
        double d = fabs(lg[s] - lc[s]) / fabs(lc[s]);
        double dn = fabs(ng[s] - nc[s]) / fabs(nc[s]);
        if (verbose())
            fprintf(stderr, "  tiny GPT (%s) step %2d: loss cpu %.6f cuda %.6f (rel %.1e); grad norm cpu %.5f cuda %.5f\n",
                    tag, s + 1, lc[s], lg[s], d, nc[s], ng[s]);
        cr_expect(isfinite(lg[s]) && d <= tol, "step %d: loss cuda %.7g, cpu %.7g: relative %.3g > %.3g", s + 1, lg[s],
                  lc[s], d, tol);
        if (d > worst)
            worst = d;
        if (dn > worst_norm)
            worst_norm = dn;
    }
    cr_expect(lg[TINY_STEPS - 1] < lg[0] - 0.5, "cuda: the loss fell only from %.4f to %.4f", lg[0],
              lg[TINY_STEPS - 1]);
    fprintf(stderr, "tiny GPT, %d steps, %s GEMMs: largest relative loss difference cuda vs cpu %.2e (bound %.0e), "
                    "grad norm %.2e; loss %.4f -> %.4f\n",
            TINY_STEPS, tag, worst, tol, worst_norm, lg[0], lg[TINY_STEPS - 1]);
}

static void tiny_gpt_case(int tf32, double tol)
{
    tiny_gpt_case_cfg(tf32, tol, tiny_cfg, tf32 ? "TF32" : "fp32");
}

/* The kernels rounding their own outputs (fuse_round, the default) against net.c's separate
 * rounding passes (DS_CUDA_FUSE_ROUND=0): each op computes the same fp32 value and rounds it
 * once either way, so the bf16 tiny GPT takes the same path (bound 1e-6 relative on every loss
 * and grad norm; a rounding moved to another place would show at ~1e-3). */
Test(cuda, tiny_gpt_bf16_fused_rounding_changes_nothing, .timeout = 600)
{
    ctx c;
    open_ctx(&c, 1);
    close_ctx(&c);
    double lf[TINY_STEPS], nf[TINY_STEPS], lu[TINY_STEPS], nu[TINY_STEPS];
    setenv("DS_ACT16", "0", 1); /* fp32 buffers: rounding fused or separate */
    setenv("DS_CUDA_FUSE_ROUND", "0", 1);
    train_tiny_cfg("cuda", tiny_cfg_bf16, lu, nu);
    unsetenv("DS_CUDA_FUSE_ROUND");
    train_tiny_cfg("cuda", tiny_cfg_bf16, lf, nf);
    unsetenv("DS_ACT16");
    double worst = 0;
    int same = 1;
    for (int s = 0; s < TINY_STEPS; s++) {
        const double d = fabs(lf[s] - lu[s]) / fabs(lu[s]), dn = fabs(nf[s] - nu[s]) / fabs(nu[s]);
        cr_expect(isfinite(lf[s]) && d <= 1e-6 && dn <= 1e-6,
                  "step %d: loss %.9g fused vs %.9g unfused, grad norm %.9g vs %.9g", s + 1, lf[s], lu[s], nf[s], nu[s]);
        worst = d > worst ? d : worst;
        worst = dn > worst ? dn : worst;
        same &= lf[s] == lu[s] && nf[s] == nu[s];
    }
    fprintf(stderr, "tiny GPT bf16, fused rounding vs separate passes: largest relative difference %.2e (%s)\n", worst,
            same ? "bit-equal" : "not bit-equal");
}

/* 16-bit activation storage (store16, the default in bf16 training) against fp32 buffers with
 * the kernels rounding their outputs (DS_ACT16=0): each op computes the same fp32 value from
 * the same 16-bit inputs and rounds it once, so the tiny GPT takes the same path (bound 1e-6
 * relative; bit-equal in the emulator). */
Test(cuda, tiny_gpt_bf16_16bit_storage_changes_nothing, .timeout = 600)
{
    ctx c;
    open_ctx(&c, 1);
    /* the emulated GEMM sums in one order whatever its output type; cuBLAS may pick another
     * algorithm for a 16-bit output than for an fp32 one, moving a value by a rounding */
    const double tol = strstr(ds_backend_describe(c.gpu), "emulation") ? 1e-6 : 1e-2;
    close_ctx(&c);
    {
        ds_engine_options o = {.config_json = tiny_cfg_bf16, .config_name = "tiny.ds.json", .net_json = tiny_net,
                               .net_name = "tiny.json", .backend = "cuda"};
        ds_engine *e;
        ds_error err = {0};
        ds_memory_report mr;
        cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
        ds_engine_memory_report(e, &mr);
        cr_assert_eq(mr.activations16, DS_ROUND_BF16, "the model does not store its activations in 16 bits");
        ds_engine_destroy(e);
    }
    double l16[TINY_STEPS], n16[TINY_STEPS], l32[TINY_STEPS], n32[TINY_STEPS];
    /* the GELU in the products' epilogues (16-bit storage only) rounds once fewer: not here */
    setenv("DS_CUDA_GELU_FUSE", "0", 1);
    setenv("DS_ACT16", "0", 1);
    train_tiny_cfg("cuda", tiny_cfg_bf16, l32, n32);
    unsetenv("DS_ACT16");
    train_tiny_cfg("cuda", tiny_cfg_bf16, l16, n16);
    unsetenv("DS_CUDA_GELU_FUSE");
    double worst = 0;
    int same = 1;
    for (int s = 0; s < TINY_STEPS; s++) {
        const double d = fabs(l16[s] - l32[s]) / fabs(l32[s]), dn = fabs(n16[s] - n32[s]) / fabs(n32[s]);
        cr_expect(isfinite(l16[s]) && d <= tol && dn <= tol,
                  "step %d: loss %.9g 16-bit storage vs %.9g fp32 buffers, grad norm %.9g vs %.9g", s + 1, l16[s],
                  l32[s], n16[s], n32[s]);
        worst = d > worst ? d : worst;
        worst = dn > worst ? dn : worst;
        same &= l16[s] == l32[s] && n16[s] == n32[s];
    }
    fprintf(stderr, "tiny GPT bf16, 16-bit activation storage vs fp32 buffers: largest relative difference %.2e (%s)\n",
            worst, same ? "bit-equal" : "not bit-equal");
}

/* The MLP's GELU inside the products (linear_gelu_fwd, linear_bwd_gelu: the default with 16-bit
 * storage) against its own passes (DS_CUDA_GELU_FUSE=0): the fused GELU reads its input before
 * that is rounded, and its backward the product before it is, so values move by a rounding
 * here and there. Over the first 8 steps the losses and grad norms follow within 2e-3
 * relative; step 9 has a gradient spike (norm ~170, clipped) from which such differences grow
 * as between the CPU and the GPU (an H200 at e2adfb2's successors: grad norms up to 13% apart
 * in steps 10-20, losses 5e-3; the emulation once 1.04e-2 at step 9 itself), so from there
 * only the losses are bounded, by tiny_gpt_bf16_follows_cpu's 3e-2. Results bit-equal to the
 * unfused run would say that the engine did not fuse. */
Test(cuda, tiny_gpt_bf16_gelu_fused_follows_unfused, .timeout = 600)
{
    ctx c;
    open_ctx(&c, 1);
    close_ctx(&c);
    double lf[TINY_STEPS], nf[TINY_STEPS], lu[TINY_STEPS], nu[TINY_STEPS];
    setenv("DS_CUDA_GELU_FUSE", "0", 1);
    train_tiny_cfg("cuda", tiny_cfg_bf16, lu, nu);
    unsetenv("DS_CUDA_GELU_FUSE");
    train_tiny_cfg("cuda", tiny_cfg_bf16, lf, nf);
    double worst = 0, worst_norm = 0;
    int same = 1;
    for (int s = 0; s < TINY_STEPS; s++) {
        const double d = fabs(lf[s] - lu[s]) / fabs(lu[s]), dn = fabs(nf[s] - nu[s]) / fabs(nu[s]);
        const int early = s < 8;
        if (verbose())
            fprintf(stderr, "  step %2d: loss %.6f fused, %.6f not (rel %.1e); grad norm %.5f, %.5f (rel %.1e)\n",
                    s + 1, lf[s], lu[s], d, nf[s], nu[s], dn);
        cr_expect(isfinite(lf[s]) && d <= (early ? 2e-3 : 3e-2) && (!early || dn <= 2e-3),
                  "step %d: loss %.9g GELU fused vs %.9g in its own passes, grad norm %.9g vs %.9g", s + 1, lf[s],
                  lu[s], nf[s], nu[s]);
        worst = d > worst ? d : worst;
        if (early)
            worst_norm = dn > worst_norm ? dn : worst_norm;
        same &= lf[s] == lu[s] && nf[s] == nu[s];
    }
    /* the fused path rounds differently: if nothing moved, the engine did not fuse */
    cr_expect(!same, "GELU fused and unfused gave bit-equal losses and grad norms: not fused?");
    fprintf(stderr, "tiny GPT bf16, GELU in the products vs its own passes: largest relative loss difference "
                    "%.2e, grad norm (steps 1-8) %.2e\n", worst, worst_norm);
}

/* Activation checkpointing on the GPU: backward recomputes each block's forward with the same
 * kernels on the same inputs (and dropout seeds), so the bf16 tiny GPT follows the run without
 * it (bound 1e-6 relative, as for the rounding tests: the same path, at most a reordered sum).
 * The second network's iterations end in linear -> GELU, with the next iteration's linear after
 * it: the engine fuses linear -> GELU -> linear only within one repeat iteration, checkpointed or
 * not (so both runs fuse the same layers); a pair fused across the edge would read the GELU
 * input of the wrong iteration in backward (gradients off by far more than the bound). */
static const char *tiny_edge_net =
    "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 256, \"seq_len\": 128},"
    " \"layers\": ["
    "  {\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 256},"
    "  {\"type\": \"repeat\", \"name\": \"h\", \"count\": 3, \"layers\": ["
    "    {\"type\": \"linear\", \"name\": \"fc\", \"out\": 512}, {\"type\": \"gelu\", \"approximate\": \"tanh\"},"
    "    {\"type\": \"linear\", \"name\": \"proj\", \"out\": 256}, {\"type\": \"gelu\", \"approximate\": \"tanh\"}]},"
    "  {\"type\": \"layernorm\", \"name\": \"ln_f\"},"
    "  {\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256}],"
    " \"loss\": {\"type\": \"cross_entropy\"}}";

Test(cuda, tiny_gpt_bf16_checkpointed_follows_plain, .timeout = 600)
{
    ctx c;
    open_ctx(&c, 1);
    close_ctx(&c);
    const char *nets[2] = {tiny_net, tiny_edge_net};
    for (int k = 0; k < 2; k++) {
        double lp[TINY_STEPS], np[TINY_STEPS], lc[TINY_STEPS], nc[TINY_STEPS];
        train_tiny_net("cuda", nets[k], tiny_cfg_bf16, 0, lp, np);
        train_tiny_net("cuda", nets[k], tiny_cfg_bf16, 1, lc, nc);
        double worst = 0;
        int same = 1;
        for (int s = 0; s < TINY_STEPS; s++) {
            const double d = fabs(lc[s] - lp[s]) / fabs(lp[s]), dn = fabs(nc[s] - np[s]) / fabs(np[s]);
            cr_expect(isfinite(lc[s]) && d <= 1e-6 && dn <= 1e-6,
                      "net %d step %d: loss %.9g checkpointed vs %.9g, grad norm %.9g vs %.9g", k, s + 1, lc[s], lp[s],
                      nc[s], np[s]);
            worst = d > worst ? d : worst;
            worst = dn > worst ? dn : worst;
            same &= lc[s] == lp[s] && nc[s] == np[s];
        }
        fprintf(stderr, "tiny GPT bf16 (net %d), activation checkpointing vs none: largest relative difference %.2e (%s)\n",
                k, worst, same ? "bit-equal" : "not bit-equal");
    }
}

/* ---- store16 op by op: every activation op on 16-bit device tensors (and 16-bit weights) gives,
 * bit for bit, what it gives on fp32 tensors under fuse_round (the same device arithmetic, one
 * rounding) --------------------------------------------------------------------------------- */

typedef struct dpair {
    float *f;   /* device, fp32 layout */
    void *h;    /* device, 16-bit layout */
    int64_t n;
} dpair;

static uint16_t bits16(float v, int mode)
{
    return mode == DS_ROUND_BF16 ? ds_f32_to_bf16(v) : ds_f32_to_f16(v);
}

static dpair dp_rand(ctx *c, int64_t n, double sd, int mode)
{
    float *x = hrandn(c, n, 0, sd);
    uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * 2);
    cr_assert(h != NULL);
    for (int64_t i = 0; i < n; i++) {
        h[i] = bits16(x[i], mode);
        x[i] = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(h[i]) : ds_f16_to_f32(h[i]);
    }
    dpair p = {devf(c, x, n), dev(c, h, (size_t)n * 2), n};
    free(x);
    free(h);
    return p;
}

/* the device's 16-bit values widened (host) */
static float *down16(ctx *c, const void *d, int64_t n, int mode)
{
    uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * 2);
    float *f = hbuf(n);
    cr_assert(h != NULL);
    CALL(c->gpu, download, h, d, (size_t)n * 2);
    for (int64_t i = 0; i < n; i++)
        f[i] = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(h[i]) : ds_f16_to_f32(h[i]);
    free(h);
    return f;
}

/* the 16-bit result equals the fp32 layout's (rounded by fuse_round), bit for bit */
static void dp_same(ctx *c, const char *what, const dpair *p, int mode)
{
    float *f = down(c, p->f, p->n), *h = down16(c, p->h, p->n, mode);
    for (int64_t i = 0; i < p->n; i++) {
        cr_assert(isfinite(f[i]), "%s[%lld]: fp32 layout gives %g", what, (long long)i, f[i]);
        cr_assert(memcmp(&h[i], &f[i], 4) == 0, "%s[%lld]: %a in 16-bit storage, %a in the fp32 layout", what,
                  (long long)i, h[i], f[i]);
    }
    free(f);
    free(h);
}

/* the 16-bit result within one step of the format of the fp32 layout's (rounded by fuse_round):
 * for products whose operands sit at other alignments in the two layouts, where cuBLAS(Lt) picks
 * another algorithm, which may sum in another order (an H200 gave one bf16 step apart at e2adfb2's
 * successors). Returns how many values differ at all. */
static int64_t dp_near(ctx *c, const char *what, const dpair *p, int mode)
{
    float *f = down(c, p->f, p->n), *h = down16(c, p->h, p->n, mode);
    int64_t differ = 0;
    for (int64_t i = 0; i < p->n; i++) {
        const float got = h[i];
        cr_assert(isfinite(f[i]) && isfinite(got), "%s[%lld]: %g in 16-bit storage, %g in the fp32 layout", what,
                  (long long)i, got, f[i]);
        if (memcmp(&got, &f[i], 4) == 0)
            continue;
        differ++;
        /* one step of the format at the larger magnitude: 2^(exponent - 7) for bf16, - 10 for fp16
         * (fp16's subnormal step 2^-24 below its normal range) */
        float big = fabsf(got) > fabsf(f[i]) ? fabsf(got) : fabsf(f[i]);
        int e;
        frexpf(big, &e);
        double step = ldexp(1.0, e - 1 - (mode == DS_ROUND_BF16 ? 7 : 10));
        if (mode != DS_ROUND_BF16 && step < ldexp(1.0, -24))
            step = ldexp(1.0, -24);
        cr_assert(fabs((double)got - (double)f[i]) <= step, "%s[%lld]: %a in 16-bit storage, %a in the fp32 layout "
                  "(more than one step of the format apart)", what, (long long)i, got, f[i]);
    }
    free(f);
    free(h);
    return differ;
}

static void dsame32(ctx *c, const char *what, const float *a_, const float *b_, int64_t n)
{
    float *a = down(c, a_, n), *b = down(c, b_, n);
    for (int64_t i = 0; i < n; i++)
        cr_assert(memcmp(&a[i], &b[i], 4) == 0, "%s[%lld]: %a in 16-bit storage, %a in the fp32 layout", what,
                  (long long)i, b[i], a[i]);
    free(a);
    free(b);
}

#define F_(p) ((p).f)
#define H_(p) ((float *)(p).h)
/* the op on the fp32 layout under fuse_round, then on the 16-bit one under store16 */
#define BOTH16(g, mode, op, a32, a16)                                                             \
    do {                                                                                          \
        cr_assert_eq((g)->ops->fuse_round((g), (mode)), 1);                                       \
        cr_assert_eq((g)->ops->op a32, DS_OK, "%s", (g)->err.msg);                                \
        (g)->ops->fuse_round((g), 0);                                                             \
        cr_assert_eq((g)->ops->store16((g), (mode)), 1);                                          \
        cr_assert_eq((g)->ops->op a16, DS_OK, "%s", (g)->err.msg);                                \
        (g)->ops->store16((g), 0);                                                                \
    } while (0)

static void store16_case(int mode)
{
    ctx c;
    unsetenv("DS_CUDA_FLASH");
    unsetenv("DS_CUDA_FUSE_ROUND");
    open_ctx(&c, 1);
    ds_backend *g = c.gpu;
    if (!g->ops->store16) {
        close_ctx(&c);
        cr_skip_test("this backend has no store16");
    }
    CALL(g, set_precision, mode);
    cr_expect_eq(g->ops->store16(g, mode == DS_ROUND_BF16 ? DS_ROUND_FP16 : DS_ROUND_BF16), 0,
                 "store16 in another format than the GEMMs'");
    const int64_t n = 3 * 4096 + 77;
    for (int acc = 0; acc < 2; acc++) {
        dpair x = dp_rand(&c, n, 2, mode), d = dp_rand(&c, n, 1, mode), y = dp_rand(&c, n, 1, mode);
        BOTH16(g, mode, gelu_bwd, (g, F_(x), F_(d), F_(y), n, 0, acc), (g, H_(x), H_(d), H_(y), n, 0, acc));
        dp_same(&c, acc ? "gelu_bwd (accumulate)" : "gelu_bwd", &y, mode);
        BOTH16(g, mode, relu_bwd, (g, F_(x), F_(d), F_(y), n, acc), (g, H_(x), H_(d), H_(y), n, acc));
        dp_same(&c, "relu_bwd", &y, mode);
        BOTH16(g, mode, dropout_bwd, (g, F_(d), F_(y), n, 0.25f, 99, acc), (g, H_(d), H_(y), n, 0.25f, 99, acc));
        dp_same(&c, "dropout_bwd", &y, mode);
        if (!acc) {
            BOTH16(g, mode, gelu_fwd, (g, F_(x), F_(y), n, 1), (g, H_(x), H_(y), n, 1));
            dp_same(&c, "gelu_fwd", &y, mode);
            BOTH16(g, mode, relu_fwd, (g, F_(x), F_(y), n), (g, H_(x), H_(y), n));
            dp_same(&c, "relu_fwd", &y, mode);
            BOTH16(g, mode, dropout_fwd, (g, F_(x), F_(y), n, 0.25f, 99), (g, H_(x), H_(y), n, 0.25f, 99));
            dp_same(&c, "dropout_fwd", &y, mode);
            BOTH16(g, mode, add, (g, F_(x), F_(d), F_(y), n), (g, H_(x), H_(d), H_(y), n));
            BOTH16(g, mode, add, (g, F_(d), F_(y), F_(y), n), (g, H_(d), H_(y), H_(y), n)); /* in place */
            dp_same(&c, "add", &y, mode);
            BOTH16(g, mode, scale_act, (g, F_(x), F_(y), n, 1.6f), (g, H_(x), H_(y), n, 1.6f));
            BOTH16(g, mode, scale_act, (g, F_(y), F_(y), n, -0.37f), (g, H_(y), H_(y), n, -0.37f)); /* in place */
            dp_same(&c, "scale_act", &y, mode);
        }
    }
    /* 4 elements in: 16-byte aligned in fp32 (the kernels' 8-value accesses), 8 bytes off in
     * 16 bits (one by one): the same arithmetic either way */
    {
        dpair x = dp_rand(&c, n, 2, mode), d = dp_rand(&c, n, 1, mode), y = dp_rand(&c, n, 1, mode);
#define H4(p) ((float *)(void *)((uint16_t *)(p).h + 4))
        BOTH16(g, mode, gelu_fwd, (g, F_(x) + 4, F_(y) + 4, n - 4, 1), (g, H4(x), H4(y), n - 4, 1));
        dp_same(&c, "gelu_fwd, 4 elements in", &y, mode);
        BOTH16(g, mode, gelu_bwd, (g, F_(x) + 4, F_(d) + 4, F_(y) + 4, n - 4, 1, 1), (g, H4(x), H4(d), H4(y), n - 4, 1, 1));
        dp_same(&c, "gelu_bwd (accumulate), 4 elements in", &y, mode);
        BOTH16(g, mode, add, (g, F_(x) + 4, F_(d) + 4, F_(y) + 4, n - 4), (g, H4(x), H4(d), H4(y), n - 4));
        dp_same(&c, "add, 4 elements in", &y, mode);
#undef H4
    }
    {
        const int64_t B = 3, T = 37, M = B * T, C = 96, V = 50;
        int32_t *ids = malloc((size_t)M * sizeof *ids);
        for (int64_t i = 0; i < M; i++)
            ids[i] = (int32_t)((i * 7) % V);
        int32_t *ids_ = dev(&c, ids, (size_t)M * sizeof *ids);
        dpair table = dp_rand(&c, V * C, 1, mode), pos = dp_rand(&c, T * C, 1, mode); /* 16-bit weights too */
        float *table0 = hrandn(&c, V * C, 0, 1), *pos0 = hrandn(&c, T * C, 0, 1); /* gradients' start */
        dpair e = dp_rand(&c, M * C, 1, mode), x = dp_rand(&c, M * C, 1, mode), y = dp_rand(&c, M * C, 1, mode);
        BOTH16(g, mode, embedding_fwd, (g, ids_, F_(table), F_(e), M, C), (g, ids_, H_(table), H_(e), M, C));
        dp_same(&c, "embedding_fwd", &e, mode);
        float *dt[2] = {devf(&c, table0, V * C), devf(&c, table0, V * C)};
        BOTH16(g, mode, embedding_bwd, (g, ids_, F_(x), dt[0], M, C), (g, ids_, H_(x), dt[1], M, C));
        dsame32(&c, "embedding_bwd dtable", dt[0], dt[1], V * C);
        BOTH16(g, mode, posadd_fwd, (g, F_(x), F_(pos), F_(y), B, T, C), (g, H_(x), H_(pos), H_(y), B, T, C));
        dp_same(&c, "posadd_fwd", &y, mode);
        float *dp[2] = {devf(&c, pos0, T * C), devf(&c, pos0, T * C)};
        BOTH16(g, mode, posadd_bwd, (g, F_(x), dp[0], B, T, C), (g, H_(x), dp[1], B, T, C));
        dsame32(&c, "posadd_bwd dpos", dp[0], dp[1], T * C);
        dpair lw = dp_rand(&c, C, 1, mode), lb = dp_rand(&c, C, 0.2, mode);
        float *mu[2] = {dpoison(&c, M), dpoison(&c, M)}, *rs[2] = {dpoison(&c, M), dpoison(&c, M)};
        BOTH16(g, mode, layernorm_fwd, (g, F_(x), F_(lw), F_(lb), F_(y), mu[0], rs[0], M, C, 1e-5f),
               (g, H_(x), H_(lw), H_(lb), H_(y), mu[1], rs[1], M, C, 1e-5f));
        dp_same(&c, "layernorm_fwd", &y, mode);
        dsame32(&c, "layernorm_fwd rstd", rs[0], rs[1], M);
        for (int acc = 0; acc < 2; acc++) {
            dpair dx = dp_rand(&c, M * C, 1, mode);
            float *z = hrandn(&c, C, 0, 1), *dw[2] = {devf(&c, z, C), devf(&c, z, C)}, *db[2] = {devf(&c, z, C), devf(&c, z, C)};
            BOTH16(g, mode, layernorm_bwd, (g, F_(e), F_(x), F_(lw), mu[0], rs[0], F_(dx), dw[0], db[0], M, C, acc),
                   (g, H_(e), H_(x), H_(lw), mu[0], rs[0], H_(dx), dw[1], db[1], M, C, acc));
            dp_same(&c, acc ? "layernorm_bwd dx (accumulate)" : "layernorm_bwd dx", &dx, mode);
            dsame32(&c, "layernorm_bwd dw", dw[0], dw[1], C);
            dsame32(&c, "layernorm_bwd db", db[0], db[1], C);
            free(z);
        }
        /* losses: cross-entropy over rows of 96, squared error */
        float *l[2] = {dpoison(&c, M), dpoison(&c, M)};
        int32_t *t = malloc((size_t)M * sizeof *t);
        for (int64_t i = 0; i < M; i++)
            t[i] = (int32_t)((i * 5) % C);
        int32_t *t_ = dev(&c, t, (size_t)M * sizeof *t);
        BOTH16(g, mode, xent_fwd, (g, F_(x), t_, l[0], F_(y), 512.0f, M, C), (g, H_(x), t_, l[1], H_(y), 512.0f, M, C));
        dp_same(&c, "xent_fwd dlogits", &y, mode);
        dsame32(&c, "xent_fwd losses", l[0], l[1], M);
        float *tg = hrandn(&c, M * C, 0, 1), *tg_ = devf(&c, tg, M * C);
        BOTH16(g, mode, mse_fwd, (g, F_(x), tg_, l[0], F_(y), 0.5f, M, C), (g, H_(x), tg_, l[1], H_(y), 0.5f, M, C));
        dp_same(&c, "mse_fwd dy", &y, mode);
        dsame32(&c, "mse_fwd losses", l[0], l[1], M);
        free(ids), free(table0), free(pos0), free(t), free(tg);
    }
    {
        const int64_t M = 70, K = 64, N = 48;
        dpair x = dp_rand(&c, M * K, 1, mode), y = dp_rand(&c, M * N, 1, mode), dy = dp_rand(&c, M * N, 1, mode);
        dpair w = dp_rand(&c, N * K, 0.2, mode), bias = dp_rand(&c, N, 0.2, mode);
        for (int wb = 0; wb < 2; wb++) {
            BOTH16(g, mode, linear_fwd, (g, F_(x), F_(w), wb ? F_(bias) : NULL, F_(y), M, K, N),
                   (g, H_(x), H_(w), wb ? H_(bias) : NULL, H_(y), M, K, N));
            dp_same(&c, wb ? "linear_fwd +bias" : "linear_fwd", &y, mode);
        }
        for (int acc = 0; acc < 2; acc++) {
            dpair dx = dp_rand(&c, M * K, 1, mode);
            float *z = hrandn(&c, N * K, 0, 1), *dw[2] = {devf(&c, z, N * K), devf(&c, z, N * K)};
            float *db[2] = {devf(&c, z, N), devf(&c, z, N)};
            BOTH16(g, mode, linear_bwd, (g, F_(dy), F_(x), F_(w), F_(dx), dw[0], db[0], M, K, N, acc),
                   (g, H_(dy), H_(x), H_(w), H_(dx), dw[1], db[1], M, K, N, acc));
            dp_same(&c, acc ? "linear_bwd dx (accumulate)" : "linear_bwd dx", &dx, mode);
            dsame32(&c, "linear_bwd dw", dw[0], dw[1], N * K);
            dsame32(&c, "linear_bwd dbias", db[0], db[1], N);
            free(z);
        }
    }
    /* a linear layer with a bias on operands one element off alignment: cuBLASLt's epilogue is
     * not used (with a 16-byte aligned bias either: for such operands an H200's cuBLASLt rounded
     * the product before adding the bias), but cuBLAS into an fp32 copy and the bias pass, each
     * value rounded once; so in the fp32 layout (its output 4 bytes off). There cuBLAS reads the
     * layout's aligned 16-bit copies of x and w, and may pick another algorithm, whose products
     * sum in another order: within one step of the format, not bit for bit */
    {
        const int64_t M = 33, K = 40, N = 24;
        dpair x = dp_rand(&c, M * K + 1, 1, mode), w = dp_rand(&c, N * K + 1, 0.2, mode);
        dpair bias = dp_rand(&c, N + 8, 0.2, mode), y = dp_rand(&c, M * N + 1, 1, mode);
#define H_OFF(p, k) ((float *)(void *)((uint16_t *)(p).h + (k)))
        for (int bo = 1; bo <= 8; bo += 7) {
            BOTH16(g, mode, linear_fwd, (g, F_(x) + 1, F_(w) + 1, F_(bias) + bo, F_(y) + 1, M, K, N),
                   (g, H_OFF(x, 1), H_OFF(w, 1), H_OFF(bias, bo), H_OFF(y, 1), M, K, N));
            const char *what = bo == 8 ? "linear_fwd +bias, operands 2 bytes off alignment"
                                       : "linear_fwd, operands and bias 2 bytes off alignment";
            int64_t differ = dp_near(&c, what, &y, mode);
            fprintf(stderr, "%s (%s): %lld of %lld values one step from the aligned fp32 layout's\n", what,
                    mode == DS_ROUND_BF16 ? "bf16" : "fp16", (long long)differ, (long long)(M * N));
        }
#undef H_OFF
    }
    /* every 16-bit pattern through add(x, 0): the conversions both ways, subnormals, inf, -0 */
    {
        const int64_t np = 65536;
        uint16_t *h = malloc((size_t)np * 2);
        float *f = hbuf(np), *z = hfill(np, 0.0f);
        for (int64_t i = 0; i < np; i++) {
            h[i] = (uint16_t)i;
            f[i] = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(h[i]) : ds_f16_to_f32(h[i]);
        }
        uint16_t *z16 = calloc((size_t)np, 2);
        dpair x = {devf(&c, f, np), dev(&c, h, (size_t)np * 2), np}, zz = {devf(&c, z, np), dev(&c, z16, (size_t)np * 2), np};
        dpair y = dp_rand(&c, np, 1, mode);
        BOTH16(g, mode, add, (g, F_(x), F_(zz), F_(y), np), (g, H_(x), H_(zz), H_(y), np));
        float *y32 = down(&c, y.f, np);
        uint16_t *y16 = malloc((size_t)np * 2);
        CALL(g, download, y16, y.h, (size_t)np * 2);
        int64_t nan = 0;
        for (int64_t i = 0; i < np; i++) {
            float got = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(y16[i]) : ds_f16_to_f32(y16[i]);
            if (isnan(y32[i])) { /* NaN stays NaN (the payload may differ) */
                cr_assert(isnan(got), "pattern 0x%04llx: %a in 16-bit storage, NaN in the fp32 layout", (long long)i, got);
                nan++;
                continue;
            }
            cr_assert(memcmp(&got, &y32[i], 4) == 0, "pattern 0x%04llx: %a in 16-bit storage, %a in the fp32 layout",
                      (long long)i, got, y32[i]);
        }
        cr_expect_eq(nan, mode == DS_ROUND_BF16 ? 2 * 127 : 2 * 1023, "NaN patterns");
        free(h), free(f), free(z), free(z16), free(y32), free(y16);
    }
    close_ctx(&c); /* device buffers go with the backend */
}

/* p without its first k values: for operands that are not 16-byte aligned */
static dpair dp_skip(dpair p, int64_t k)
{
    p.f += k;
    p.h = (uint16_t *)p.h + k;
    p.n -= k;
    return p;
}

/* attention on 16-bit operands: the fused kernels, or (materialized) the strided products;
 * DS_CUDA_FLASH is read when the backend is created. The fused kernels copy their tiles
 * straight from 16-byte aligned 16-bit qkv and dO, and pack the heads first otherwise (skip 4:
 * 8-byte aligned). */
static void *dev16_nan(ctx *c, int64_t n);

static void store16_attention_case(ctx *c, int mode, int path, int64_t B, int64_t T, int64_t C, int64_t H,
                                   int causal, int64_t skip)
{
    ds_backend *g = c->gpu;
    const int64_t M = B * T;
    const int64_t na = g->ops->attention_state(g, B, T, C, H, causal);
    dpair qkv0 = dp_rand(c, M * 3 * C + skip, 1, mode), out = dp_rand(c, M * C, 1, mode);
    dpair dout0 = dp_rand(c, M * C + skip, 1, mode), dqkv = dp_rand(c, M * 3 * C, 1, mode);
    dpair qkv = dp_skip(qkv0, skip), dout = dp_skip(dout0, skip);
    float *att[2] = {dpoison(c, na), dpoison(c, na)};
    char what[96];
    snprintf(what, sizeof what, "attention_fwd (%s, B %lld T %lld C %lld H %lld causal %d skip %lld)",
             path ? "materialized" : "fused", (long long)B, (long long)T, (long long)C, (long long)H, causal,
             (long long)skip);
    BOTH16(g, mode, attention_fwd, (g, F_(qkv), F_(out), att[0], B, T, C, H, causal),
           (g, H_(qkv), H_(out), att[1], B, T, C, H, causal));
    dp_same(c, what, &out, mode);
    dsame32(c, "attention_fwd state", att[0], att[1], na);
    BOTH16(g, mode, attention_bwd, (g, F_(dout), F_(qkv), att[0], F_(dqkv), B, T, C, H, causal),
           (g, H_(dout), H_(qkv), att[0], H_(dqkv), B, T, C, H, causal));
    memcpy(what + 10, "bwd", 3);
    dp_same(c, what, &dqkv, mode);
}

static void store16_attention(int mode, int materialized)
{
    ctx c;
    unsetenv("DS_CUDA_FUSE_ROUND");
    if (materialized)
        setenv("DS_CUDA_FLASH", "0", 1);
    else
        unsetenv("DS_CUDA_FLASH");
    open_ctx(&c, 1);
    unsetenv("DS_CUDA_FLASH");
    ds_backend *g = c.gpu;
    if (!g->ops->store16) {
        close_ctx(&c);
        cr_skip_test("this backend has no store16");
    }
    CALL(g, set_precision, mode);
    const char *d = ds_backend_describe(g);
    cr_assert(materialized == (strstr(d, "fused") == NULL), "%s", d);
    store16_attention_case(&c, mode, materialized, 2, 50, 64, 4, 1, 0); /* head size 16 */
    if (!materialized) { /* the fused kernels' head sizes and tiles, in place and packed */
        store16_attention_case(&c, mode, 0, 1, 130, 128, 2, 1, 0); /* 64 */
        store16_attention_case(&c, mode, 0, 1, 130, 128, 2, 0, 0);
        store16_attention_case(&c, mode, 0, 1, 130, 128, 2, 1, 4);
        store16_attention_case(&c, mode, 0, 2, 77, 128, 4, 1, 0); /* 32 */
        store16_attention_case(&c, mode, 0, 1, 50, 96, 2, 1, 4);  /* 48 */
        store16_attention_case(&c, mode, 0, 1, 130, 96, 2, 1, 0);
        store16_attention_case(&c, mode, 0, 1, 70, 256, 2, 1, 0); /* 128: tiles of 32 */
        store16_attention_case(&c, mode, 0, 1, 70, 256, 2, 0, 4);
        /* 16-bit tensors 2 bytes off a word: refused (DS_ERR_INVALID), not a misaligned access */
        const int64_t B = 1, T = 50, C = 128, H = 2, M = B * T;
        uint16_t *qkv1 = (uint16_t *)dev16_nan(&c, M * 3 * C + 1), *out1 = (uint16_t *)dev16_nan(&c, M * C + 1);
        float *st = dpoison(&c, g->ops->attention_state(g, B, T, C, H, 1));
        cr_assert_eq(g->ops->store16(g, mode), 1);
        cr_expect_eq(g->ops->attention_fwd(g, (float *)(void *)(qkv1 + 1), (float *)(void *)out1, st, B, T, C, H, 1),
                     DS_ERR_INVALID, "attention_fwd on qkv 2 bytes off: %s", g->err.msg);
        cr_expect(strstr(g->err.msg, "4-byte aligned"), "%s", g->err.msg);
        cr_expect_eq(g->ops->attention_fwd(g, (float *)(void *)qkv1, (float *)(void *)(out1 + 1), st, B, T, C, H, 1),
                     DS_ERR_INVALID, "attention_fwd on out 2 bytes off: %s", g->err.msg);
        cr_expect_eq(g->ops->attention_bwd(g, (float *)(void *)(out1 + 1), (float *)(void *)qkv1, st,
                                           (float *)(void *)qkv1, B, T, C, H, 1),
                     DS_ERR_INVALID, "attention_bwd on dout 2 bytes off: %s", g->err.msg);
        g->ops->store16(g, 0);
    }
    close_ctx(&c);
}

Test(cuda, store16_ops_bf16, .timeout = 300) { store16_case(DS_ROUND_BF16); }
Test(cuda, store16_ops_fp16, .timeout = 300) { store16_case(DS_ROUND_FP16); }
/* the linear layers' bias in a second pass over an fp32 copy, where cuBLASLt's epilogue is not
 * used (DS_CUDA_LT=0, read when the backend is created) */
Test(cuda, store16_ops_bf16_without_cublaslt, .timeout = 300)
{
    setenv("DS_CUDA_LT", "0", 1);
    store16_case(DS_ROUND_BF16);
    unsetenv("DS_CUDA_LT");
}
Test(cuda, store16_attention, .timeout = 300)
{
    for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++)
        for (int materialized = 0; materialized < 2; materialized++)
            store16_attention(mode, materialized);
}

/* ---- a linear layer and the tanh GELU in one op (linear_gelu_fwd, linear_bwd_gelu) ---------- */

/* n 16-bit values of mode from the fp32 values v (already values of the format), on the device */
static void *dev16(ctx *c, const float *v, int64_t n, int mode)
{
    uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * 2);
    cr_assert(h != NULL);
    for (int64_t i = 0; i < n; i++)
        h[i] = bits16(v[i], mode);
    void *d = dev(c, h, (size_t)n * 2);
    free(h);
    return d;
}

/* n random values of the format (fp32 host copy) */
static float *hrand16(ctx *c, int64_t n, double sd, int mode)
{
    float *x = hrandn(c, n, 0, sd);
    CALL(c->cpu, round16, x, n, mode);
    return x;
}

/* 16-bit NaNs: an output the op did not write keeps them */
static void *dev16_nan(ctx *c, int64_t n)
{
    uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * 2);
    cr_assert(h != NULL);
    for (int64_t i = 0; i < n; i++)
        h[i] = 0xffff;
    void *d = dev(c, h, (size_t)n * 2);
    free(h);
    return d;
}

static int all_nan16(ctx *c, const void *d, int64_t n, int mode)
{
    float *f = down16(c, d, n, mode);
    int all = 1;
    for (int64_t i = 0; i < n; i++)
        all &= isnan(f[i]) != 0;
    free(f);
    return all;
}

/* Forward: pre = X W^T (+ bias) and y = gelu_tanh(pre), against the CPU's fp32 linear_fwd and
 * gelu_fwd on the same 16-bit values (each fused output is its fp32 value rounded once: within
 * the format's rounding, tol). Backward of the next layer: dx = (dY W) gelu'(pre), dw, dbias
 * against the CPU's linear_bwd then gelu_bwd. Then the cases the backend must decline (done 0,
 * nothing written): a dimension not a multiple of 8, a bias 2 bytes off alignment, store16 off. */
static void linear_gelu_case(ctx *c, int mode, int64_t M, int64_t K, int64_t N, int with_bias)
{
    ds_backend *g = c->gpu;
    const double tol = mode == DS_ROUND_BF16 ? 4e-3 : 5e-4;
    char what[160];
    float *x = hrand16(c, M * K, 1, mode), *w = hrand16(c, N * K, 0.2, mode);
    float *bias = with_bias ? hrand16(c, N, 0.5, mode) : NULL;
    float *pre = hbuf(M * N), *y = hbuf(M * N);
    CALL(c->cpu, linear_fwd, x, w, bias, pre, M, K, N);
    CALL(c->cpu, gelu_fwd, pre, y, M * N, 1);
    void *x_ = dev16(c, x, M * K, mode), *w_ = dev16(c, w, N * K, mode), *b_ = bias ? dev16(c, bias, N, mode) : NULL;
    void *pre_ = dev16_nan(c, M * N), *y_ = dev16_nan(c, M * N);
    int done = -1;
    cr_assert_eq(g->ops->store16(g, mode), 1);
    CALL(g, linear_gelu_fwd, x_, w_, b_, pre_, y_, M, K, N, &done);
    g->ops->store16(g, 0);
    cr_assert_eq(done, 1, "linear_gelu_fwd %lldx%lldx%lld declined", (long long)M, (long long)K, (long long)N);
    float *got = down16(c, pre_, M * N, mode);
    snprintf(what, sizeof what, "linear_gelu_fwd pre %lldx%lldx%lld%s %s", (long long)M, (long long)K, (long long)N,
             bias ? " +bias" : "", mode == DS_ROUND_BF16 ? "bf16" : "fp16");
    check(c, what, got, pre, M * N, tol);
    free(got);
    got = down16(c, y_, M * N, mode);
    snprintf(what, sizeof what, "linear_gelu_fwd y %lldx%lldx%lld%s %s", (long long)M, (long long)K, (long long)N,
             bias ? " +bias" : "", mode == DS_ROUND_BF16 ? "bf16" : "fp16");
    check(c, what, got, y, M * N, tol);
    free(got);

    /* the next layer's backward: its input is y (K here is its input width: the GELU's) */
    const int64_t K2 = N, N2 = K;
    float *dy = hrand16(c, M * N2, 1, mode), *w2 = hrand16(c, N2 * K2, 0.2, mode), *xin = hbuf(M * K2);
    CALL(c->cpu, round16, memcpy(xin, y, (size_t)(M * K2) * sizeof(float)), M * K2, mode);
    float *pre16 = hbuf(M * K2);
    memcpy(pre16, pre, (size_t)(M * K2) * sizeof(float));
    CALL(c->cpu, round16, pre16, M * K2, mode); /* the GELU's input as stored */
    float *dxl = hbuf(M * K2), *dx = hbuf(M * K2), *dw = hrandn(c, N2 * K2, 0, 1), *db = hrandn(c, N2, 0, 1);
    float *dw_ = devf(c, dw, N2 * K2), *db_ = devf(c, db, N2);
    CALL(c->cpu, linear_bwd, dy, xin, w2, dxl, dw, db, M, K2, N2, 0);
    CALL(c->cpu, gelu_bwd, pre16, dxl, dx, M * K2, 1, 0);
    void *dy_ = dev16(c, dy, M * N2, mode), *w2_ = dev16(c, w2, N2 * K2, mode), *xin_ = dev16(c, xin, M * K2, mode);
    void *pre16_ = dev16(c, pre16, M * K2, mode), *dx_ = dev16_nan(c, M * K2);
    done = -1;
    cr_assert_eq(g->ops->store16(g, mode), 1);
    CALL(g, linear_bwd_gelu, dy_, xin_, w2_, pre16_, dx_, dw_, db_, M, K2, N2, &done);
    g->ops->store16(g, 0);
    cr_assert_eq(done, 1, "linear_bwd_gelu %lldx%lldx%lld declined", (long long)M, (long long)K2, (long long)N2);
    got = down16(c, dx_, M * K2, mode);
    snprintf(what, sizeof what, "linear_bwd_gelu dx %lldx%lldx%lld %s", (long long)M, (long long)K2, (long long)N2,
             mode == DS_ROUND_BF16 ? "bf16" : "fp16");
    check(c, what, got, dx, M * K2, tol);
    free(got);
    check_dev(c, "linear_bwd_gelu dw +=", dw_, dw, N2 * K2, TOL_FP32_GEMM);
    check_dev(c, "linear_bwd_gelu dbias +=", db_, db, N2, TOL_REDUCE);

    /* declined: nothing written, no error */
    void *p2 = dev16_nan(c, M * (N + 4)), *y2 = dev16_nan(c, M * (N + 4));
    float *w4 = hrand16(c, (N + 4) * K, 0.2, mode), *b4 = hrand16(c, N + 16, 0.5, mode);
    void *w4_ = dev16(c, w4, (N + 4) * K, mode), *b4_ = dev16(c, b4, N + 16, mode);
    cr_assert_eq(g->ops->store16(g, mode), 1);
    CALL(g, linear_gelu_fwd, x_, w4_, NULL, p2, y2, M, K, N + 4, &done);
    cr_expect_eq(done, 0, "N %lld (not a multiple of 8) fused", (long long)(N + 4));
    CALL(g, linear_gelu_fwd, x_, w_, (float *)(void *)((uint16_t *)b4_ + 1), p2, y2, M, K, N, &done);
    cr_expect_eq(done, 0, "a bias 2 bytes off alignment fused");
    /* the next layer 4 inputs narrower: its dX's rows (the GELU input's ld) not a multiple of 8 */
    CALL(g, linear_bwd_gelu, dy_, xin_, w2_, pre16_, y2, dw_, NULL, M, K2 - 4, N2, &done);
    cr_expect_eq(done, 0, "K %lld (not a multiple of 8) fused", (long long)(K2 - 4));
    g->ops->store16(g, 0);
    cr_expect(all_nan16(c, p2, M * (N + 4), mode), "a declined linear_gelu_fwd wrote its pre");
    cr_expect(all_nan16(c, y2, M * (N + 4), mode), "a declined op wrote its output");
    CALL(g, linear_gelu_fwd, x_, w_, b_, p2, p2, M, K, N, &done);
    cr_expect_eq(done, 0, "fused without store16");
    CALL(g, linear_bwd_gelu, dy_, xin_, w2_, pre16_, p2, NULL, NULL, M, K2, N2, &done);
    cr_expect_eq(done, 0, "fused without store16");
    cr_expect(all_nan16(c, p2, M * (N + 4), mode), "an op without store16 wrote");
    free(x), free(w), free(bias), free(pre), free(y), free(dy), free(w2), free(xin), free(pre16), free(dxl);
    free(dx), free(dw), free(db), free(w4), free(b4);
}

Test(cuda, linear_gelu_fused, .timeout = 300)
{
    ctx c;
    unsetenv("DS_CUDA_LT");
    unsetenv("DS_CUDA_GELU_FUSE");
    open_ctx(&c, 1);
    for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++) {
        CALL(c.gpu, set_precision, mode);
        linear_gelu_case(&c, mode, 70, 64, 48, 1);
        linear_gelu_case(&c, mode, 33, 40, 96, 0);
        linear_gelu_case(&c, mode, 256, 128, 512, 1);
    }
    close_ctx(&c);
}

/* DS_CUDA_GELU_FUSE=0 (read when the backend is created): never fused */
Test(cuda, linear_gelu_fusion_off)
{
    ctx c;
    setenv("DS_CUDA_GELU_FUSE", "0", 1);
    open_ctx(&c, 1);
    unsetenv("DS_CUDA_GELU_FUSE");
    ds_backend *g = c.gpu;
    CALL(g, set_precision, DS_ROUND_BF16);
    const int64_t M = 16, K = 32, N = 64;
    float *x = hrand16(&c, M * K, 1, DS_ROUND_BF16), *w = hrand16(&c, N * K, 0.2, DS_ROUND_BF16);
    void *x_ = dev16(&c, x, M * K, DS_ROUND_BF16), *w_ = dev16(&c, w, N * K, DS_ROUND_BF16);
    void *p_ = dev16_nan(&c, M * N), *y_ = dev16_nan(&c, M * N);
    int done = -1;
    cr_assert_eq(g->ops->store16(g, DS_ROUND_BF16), 1);
    CALL(g, linear_gelu_fwd, x_, w_, NULL, p_, y_, M, K, N, &done);
    g->ops->store16(g, 0);
    cr_expect_eq(done, 0);
    cr_expect(all_nan16(&c, y_, M * N, DS_ROUND_BF16) && all_nan16(&c, p_, M * N, DS_ROUND_BF16),
              "a declined linear_gelu_fwd wrote");
    free(x), free(w);
    close_ctx(&c);
}

/* ---- cross-entropy over 16-bit logits read once (xent_rows_k) -------------------------------- */

/* xent_fwd over M rows of V 16-bit logits (of mode) on g, into fresh buffers: losses (fp32) and
 * dlogits (16-bit; NULL: not asked for), downloaded and widened */
static void xent16_run(ctx *c, ds_backend *g, int mode, const void *z_, const int32_t *t_, int64_t M, int64_t V,
                       int grad, float **l, float **d)
{
    float *l_ = dpoison(c, M);
    void *d_ = grad ? dev16_nan(c, M * V) : NULL;
    /* c->gpu's uploads and g's kernel on two streams: each waited for before the other's work */
    cr_assert_eq(c->gpu->ops->synchronize(c->gpu), DS_OK);
    cr_assert_eq(g->ops->store16(g, mode), 1);
    CALL(g, xent_fwd, z_, t_, l_, d_, 0.37f, M, V);
    g->ops->store16(g, 0);
    cr_assert_eq(g->ops->synchronize(g), DS_OK);
    *l = down(c, l_, M);
    *d = grad ? down16(c, d_, M * V, mode) : NULL;
}

/* Rows kept in registers (DS_CUDA_XENT_ROWS=1) against rows read twice (the default): the same
 * chunks summed in the same order, so the same bits, at every register budget (4, 8 and 16
 * chunks per thread, 128 and 512 threads) and where the kernel declines (V not a multiple of 8,
 * more than 16 chunks per thread, a misaligned row start); and both near the CPU's fp32 xent on
 * the same values (losses: fp32 sums in another order; dlogits: one rounding to the format). */
Test(cuda, xent_rows_read_once, .timeout = 300)
{
    ctx c;
    setenv("DS_CUDA_XENT_ROWS", "1", 1);
    open_ctx(&c, 1);
    unsetenv("DS_CUDA_XENT_ROWS");
    ds_backend *g2 = NULL;
    ds_error err = {0};
    cr_assert_eq(ds_backend_create(&g2, "cuda", &err), DS_OK, "%s", err.msg);
    /* V: chunks per thread 1 (128 threads), 1 of 1000 at 128 threads, 2, 5, 13 (GPT-2's 50304), 18
     * (declines); 50257 and 1001 not multiples of 8 (decline) */
    const int64_t Vs[] = {96, 1000, 4104, 20000, 50304, 69640, 50257, 1001};
    for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++) {
        CALL(c.gpu, set_precision, mode);
        CALL(g2, set_precision, mode);
        for (size_t vi = 0; vi < sizeof Vs / sizeof Vs[0]; vi++) {
            const int64_t V = Vs[vi], M = V > 10000 ? 3 : 11;
            for (int shift = 0; shift < (V == 4104 ? 2 : 1); shift++) { /* shift 1: 2 bytes off alignment */
                float *z = hrand16(&c, M * V + 1, 3.0, mode);
                if (vi == 0)
                    z[5] = mode == DS_ROUND_BF16 ? 60.0f : 11.0f; /* one logit far above the rest */
                void *zb_ = dev16(&c, z, M * V + 1, mode);
                const void *z_ = (const uint16_t *)zb_ + shift;
                int32_t *t = malloc((size_t)M * sizeof *t);
                for (int64_t i = 0; i < M; i++)
                    t[i] = (int32_t)(ds_rng_next(&c.rng) % (uint64_t)V);
                t[0] = (int32_t)V - 1; /* the row's last logit: in the tail when V % 8 != 0 */
                int32_t *t_ = dev(&c, t, (size_t)M * sizeof *t);
                for (int grad = 1; grad >= 0; grad--) {
                    float *l1, *d1, *l2, *d2;
                    xent16_run(&c, c.gpu, mode, z_, t_, M, V, grad, &l1, &d1);
                    xent16_run(&c, g2, mode, z_, t_, M, V, grad, &l2, &d2);
                    char what[128];
                    snprintf(what, sizeof what, "%s xent V %lld shift %d%s", mode == DS_ROUND_BF16 ? "bf16" : "fp16",
                             (long long)V, shift, grad ? "" : " (no gradient)");
                    for (int64_t i = 0; i < M; i++)
                        cr_assert(memcmp(&l1[i], &l2[i], 4) == 0, "%s: loss[%lld] %a read once, %a read twice", what,
                                  (long long)i, l1[i], l2[i]);
                    for (int64_t i = 0; grad && i < M * V; i++)
                        cr_assert(memcmp(&d1[i], &d2[i], 4) == 0, "%s: dlogits[%lld] %a read once, %a read twice",
                                  what, (long long)i, d1[i], d2[i]);
                    if (grad) { /* against the CPU's fp32 xent on the same values */
                        float *l = hbuf(M), *d = hbuf(M * V);
                        CALL(c.cpu, xent_fwd, z + shift, t, l, d, 0.37f, M, V);
                        for (int64_t i = 0; i < M; i++)
                            cr_assert(fabsf(l1[i] - l[i]) <= TOL_REDUCE * (1.0f + fabsf(l[i])),
                                      "%s: loss[%lld] %g, the CPU's %g", what, (long long)i, l1[i], l[i]);
                        /* half a unit of the format (relative; fp16 subnormals: 2^-25), plus the fp32
                         * difference of the probability, which the target's -0.37 does not shrink */
                        const double half = mode == DS_ROUND_BF16 ? 0x1p-8 : 0x1p-11;
                        const double sub = mode == DS_ROUND_FP16 ? 0x1p-25 : 0.0;
                        for (int64_t i = 0; i < M * V; i++) {
                            const double p = fabs(d[i]) + (i % V == t[i / V] ? 0.37 : 0.0);
                            cr_assert(fabs((double)d1[i] - d[i]) <= half * fabs(d[i]) + TOL_REDUCE * p + sub,
                                      "%s: dlogits[%lld] %a, the CPU's %a", what, (long long)i, d1[i], d[i]);
                        }
                        free(l), free(d);
                    }
                    free(l1), free(l2), free(d1), free(d2);
                }
                free(z), free(t);
            }
        }
    }
    ds_backend_destroy(g2);
    close_ctx(&c);
}

/* bf16 training: 16-bit tensor-core products on the GPU, fp32 products of the same bf16 values
 * on the CPU; the activations are rounded to bf16 (8 bits of mantissa) at every layer, so a
 * last-bit difference in a sum can flip a rounding: the bound is that of TF32 */
Test(cuda, tiny_gpt_bf16_follows_cpu, .timeout = 600)
{
    tiny_gpt_case_cfg(0, 3e-2, tiny_cfg_bf16, "bf16");
}

/* fp32 GEMMs: the two backends differ only by rounding; over 20 AdamW steps that stays small */
Test(cuda, tiny_gpt_fp32_follows_cpu, .timeout = 600)
{
    tiny_gpt_case(0, 2e-3);
}

/* TF32 (the default): each product rounds its inputs to 10 bits of mantissa */
Test(cuda, tiny_gpt_tf32_follows_cpu, .timeout = 600)
{
    tiny_gpt_case(1, 3e-2);
}

/* ---- the NCCL communicator ------------------------------------------------------------------ */

/* Every collective of the backend's communicator over device memory, on forked ranks (one per
 * device: 2 where a second device exists, else 1; the emulation sees as many devices as
 * CUDA_VISIBLE_DEVICES lists), bootstrapped through the rendezvous store as the engine does.
 * The values are multiples of 1/64 below 2^10, so every sum, mean and max is exact in any
 * order: the results must equal the reference bit for bit, and outputs are poisoned first.
 * CUDA is first touched in the children (a CUDA context does not survive fork). */
#define NC_MAX 2
typedef struct nc_shared {
    int world, skip, failed[NC_MAX];
    char msg[NC_MAX][1024], skip_msg[1024];
} nc_shared;

static float nc_value(int rank, int c, size_t i)
{
    uint64_t h = (uint64_t)i * 2654435761u + (uint64_t)c * 40503u + (uint64_t)rank * 7919u;
    return (float)((int)(h % 2001) - 1000) / 64.0f;
}

static void nc_fail(nc_shared *sh, int rank, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void nc_fail(nc_shared *sh, int rank, const char *fmt, ...)
{
    if (sh->failed[rank])
        return;
    sh->failed[rank] = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->msg[rank], sizeof sh->msg[rank], fmt, ap);
    va_end(ap);
}

static float nc_expect(int n, int c, size_t i, ds_reduce_op op)
{
    float s = 0, m = -INFINITY;
    for (int r = 0; r < n; r++) {
        float v = nc_value(r, c, i);
        s += v;
        m = v > m ? v : m;
    }
    return op == DS_REDUCE_MAX ? m : op == DS_REDUCE_MEAN ? s / (float)n : s;
}

/* probe: is there a CUDA backend, a second device, NCCL? (in a child) */
static void nc_probe(nc_shared *sh)
{
    ds_backend *b = NULL, *b1 = NULL;
    ds_error err = {0};
    if (ds_backend_create(&b, "cuda", &err) != DS_OK) {
        sh->skip = 1;
        snprintf(sh->skip_msg, sizeof sh->skip_msg, "no CUDA here: %.900s", err.msg);
        return;
    }
    if (!b->ops->comm_id || b->ops->comm_id(b, NULL, 0, NULL, &err) != DS_OK) {
        sh->skip = 1;
        snprintf(sh->skip_msg, sizeof sh->skip_msg, "no NCCL here: %.900s", err.msg);
    }
    sh->world = ds_backend_create(&b1, "cuda:1", &err) == DS_OK ? 2 : 1;
    ds_backend_destroy(b1);
    ds_backend_destroy(b);
}

static void nc_rank(nc_shared *sh, int rank, int n, int port)
{
    ds_error err = {0};
    ds_store *store = NULL;
    ds_backend *b = NULL;
    ds_comm *comm = NULL;
    char name[16], addr[] = "127.0.0.1";
    snprintf(name, sizeof name, "cuda:%d", rank);
    ds_store_options opt = {.addr = addr, .port = port, .rank = rank, .world_size = n,
                            .secret = "nccl-test", .timeout_s = 60};
    if (ds_backend_create(&b, name, &err) || ds_store_open(&store, &opt, &err)) {
        nc_fail(sh, rank, "%s", err.msg);
        return;
    }
    unsigned char id[512];
    size_t len = 0;
    if (rank == 0) {
        if (b->ops->comm_id(b, id, sizeof id, &len, &err) || ds_store_set(store, "id", id, len, &err))
            nc_fail(sh, rank, "%s", err.msg);
    } else {
        void *v = NULL;
        if (ds_store_get(store, "id", &v, &len, &err) == DS_OK && len <= sizeof id)
            memcpy(id, v, len);
        else
            nc_fail(sh, rank, "id: %s", err.msg);
        free(v);
    }
    if (!sh->failed[rank] && b->ops->comm_create(b, id, len, rank, n, 60, &comm, &err) != DS_OK)
        nc_fail(sh, rank, "comm_create: %s", err.msg);
    if (sh->failed[rank])
        goto out;
    if (strcmp(comm->ops->name, "nccl") != 0 || comm->rank != rank || comm->size != n)
        nc_fail(sh, rank, "communicator %s rank %d of %d", comm->ops->name, comm->rank, comm->size);
    const size_t big = 600011;
    float *h = malloc((big * NC_MAX + 16) * sizeof(float)), *d = b->ops->alloc(b, (big * NC_MAX + 16) * sizeof(float));
    float *d2 = b->ops->alloc(b, (big + 16) * sizeof(float)), *poison = malloc((big * NC_MAX + 16) * sizeof(float));
    for (size_t i = 0; i < big * NC_MAX + 16; i++)
        poison[i] = NAN;
    int c = 0;
#define NC_OK(call, what)                                                                        \
    if ((call) != DS_OK) {                                                                      \
        nc_fail(sh, rank, "%s: %s", what, err.msg);                                              \
        goto done;                                                                               \
    }
    const size_t counts[] = {1, 1000, big};
    const ds_reduce_op ops[] = {DS_REDUCE_SUM, DS_REDUCE_MEAN, DS_REDUCE_MAX};
    for (int k = 0; k < 3; k++)
        for (int o = 0; o < 3; o++, c++) { /* all_reduce, in place */
            for (size_t i = 0; i < counts[k]; i++)
                h[i] = nc_value(rank, c, i);
            NC_OK(b->ops->upload(b, d, h, counts[k] * sizeof(float)), "upload");
            NC_OK(ds_comm_all_reduce(comm, d, counts[k], ops[o], &err), "all_reduce");
            NC_OK(b->ops->download(b, h, d, counts[k] * sizeof(float)), "download");
            for (size_t i = 0; i < counts[k]; i++)
                if (h[i] != nc_expect(n, c, i, ops[o])) {
                    nc_fail(sh, rank, "all_reduce op %d count %zu: element %zu is %g, expected %g", o, counts[k], i,
                            h[i], nc_expect(n, c, i, ops[o]));
                    goto done;
                }
        }
    for (int k = 0; k < 3; k++, c++) { /* reduce_scatter: block `rank` of n * count */
        size_t rc = counts[k];
        for (size_t i = 0; i < rc * n; i++)
            h[i] = nc_value(rank, c, i);
        NC_OK(b->ops->upload(b, d, h, rc * n * sizeof(float)), "upload");
        NC_OK(b->ops->upload(b, d2, poison, rc * sizeof(float)), "upload");
        NC_OK(ds_comm_reduce_scatter(comm, d, d2, rc, DS_REDUCE_SUM, &err), "reduce_scatter");
        NC_OK(b->ops->download(b, h, d2, rc * sizeof(float)), "download");
        for (size_t i = 0; i < rc; i++)
            if (h[i] != nc_expect(n, c, (size_t)rank * rc + i, DS_REDUCE_SUM)) {
                nc_fail(sh, rank, "reduce_scatter count %zu: element %zu is %g", rc, i, h[i]);
                goto done;
            }
    }
    for (int k = 0; k < 3; k++, c++) { /* all_gather */
        size_t sc = counts[k];
        for (size_t i = 0; i < sc; i++)
            h[i] = nc_value(rank, c, i);
        NC_OK(b->ops->upload(b, d2, h, sc * sizeof(float)), "upload");
        NC_OK(b->ops->upload(b, d, poison, sc * n * sizeof(float)), "upload");
        NC_OK(ds_comm_all_gather(comm, d2, d, sc, &err), "all_gather");
        NC_OK(b->ops->download(b, h, d, sc * n * sizeof(float)), "download");
        for (size_t i = 0; i < sc * n; i++)
            if (h[i] != nc_value((int)(i / sc), c, i % sc)) {
                nc_fail(sh, rank, "all_gather count %zu: element %zu is %g", sc, i, h[i]);
                goto done;
            }
    }
    { /* uneven blocks in place (ZeRO's partitions of a bucket): rank 0 a long block, then an
         empty one where n > 1... here: block r = [off[r], off[r] + len[r]) */
        size_t off[NC_MAX] = {0, 700}, len[NC_MAX] = {n == 1 ? 1701 : 700, 1001}, total = 1701;
        for (size_t i = 0; i < total; i++)
            h[i] = nc_value(rank, c, i);
        NC_OK(b->ops->upload(b, d, h, total * sizeof(float)), "upload");
        NC_OK(ds_comm_reduce_scatter_v(comm, d, off, len, DS_REDUCE_SUM, &err), "reduce_scatter_v");
        NC_OK(b->ops->download(b, h, d, total * sizeof(float)), "download");
        for (size_t i = off[rank]; i < off[rank] + len[rank]; i++)
            if (h[i] != nc_expect(n, c, i, DS_REDUCE_SUM)) {
                nc_fail(sh, rank, "reduce_scatter_v: element %zu is %g", i, h[i]);
                goto done;
            }
        c++;
        for (size_t i = 0; i < total; i++) /* own block: values; others: poison */
            h[i] = i >= off[rank] && i < off[rank] + len[rank] ? nc_value(rank, c, i) : NAN;
        NC_OK(b->ops->upload(b, d, h, total * sizeof(float)), "upload");
        NC_OK(ds_comm_all_gather_v(comm, d, off, len, sizeof(float), &err), "all_gather_v");
        NC_OK(b->ops->download(b, h, d, total * sizeof(float)), "download");
        for (int r = 0; r < n; r++)
            for (size_t i = off[r]; i < off[r] + len[r]; i++)
                if (h[i] != nc_value(r, c, i)) {
                    nc_fail(sh, rank, "all_gather_v: element %zu of rank %d's block is %g", i, r, h[i]);
                    goto done;
                }
        c++;
    }
    { /* broadcast from the last rank, a byte count that is not a multiple of 4 */
        size_t bytes = 3 * 1048576 + 5;
        unsigned char *hb = (unsigned char *)h;
        for (size_t i = 0; i < bytes; i++)
            hb[i] = rank == n - 1 ? (unsigned char)(i * 31 + 7) : 0;
        NC_OK(b->ops->upload(b, d, hb, bytes), "upload");
        NC_OK(ds_comm_broadcast(comm, d, bytes, n - 1, &err), "broadcast");
        memset(hb, 0, bytes);
        NC_OK(b->ops->download(b, hb, d, bytes), "download");
        for (size_t i = 0; i < bytes; i++)
            if (hb[i] != (unsigned char)(i * 31 + 7)) {
                nc_fail(sh, rank, "broadcast: byte %zu is %u", i, hb[i]);
                goto done;
            }
    }
    NC_OK(ds_comm_barrier(comm, &err), "barrier");
#undef NC_OK
done:
    b->ops->free(b, d);
    b->ops->free(b, d2);
    free(h);
    free(poison);
out:
    ds_comm_destroy(comm);
    if (store)
        ds_store_close(store);
    ds_backend_destroy(b);
}

/* Shared memory for the ranks' verdicts, after a probe in a child (CUDA is first touched in
 * children: a context does not survive fork); skips the test without CUDA or NCCL. */
static nc_shared *nc_setup(void)
{
    nc_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t p = fork();
    cr_assert(p >= 0);
    if (p == 0) {
        nc_probe(sh);
        _exit(0);
    }
    int status;
    cr_assert(waitpid(p, &status, 0) == p && WIFEXITED(status), "the probe died");
    if (sh->skip)
        cr_skip_test("%s", sh->skip_msg);
    return sh;
}

Test(cuda, nccl_collectives, .timeout = 300)
{
    nc_shared *sh = nc_setup();
    int status;
    int n = sh->world, port = test_free_port();
    pid_t pids[NC_MAX];
    for (int r = 0; r < n; r++) {
        pids[r] = fork();
        cr_assert(pids[r] >= 0);
        if (pids[r] == 0) {
            alarm(240);
            nc_rank(sh, r, n, port);
            _exit(sh->failed[r] ? 1 : 0);
        }
    }
    for (int r = 0; r < n; r++) {
        cr_assert(waitpid(pids[r], &status, 0) == pids[r]);
        cr_expect(WIFEXITED(status), "rank %d died by signal %d", r, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        cr_expect(!sh->failed[r], "rank %d of %d: %s", r, n, sh->msg[r]);
    }
    if (!sh->failed[0] && !sh->failed[n - 1])
        fprintf(stderr, "NCCL communicator: every collective exact on %d rank(s)\n", n);
    munmap(sh, sizeof *sh);
}

/* Joining waits for every rank, and NCCL's own wait has no timeout: a rank that never comes
 * must turn into an error naming the wait, not a hang. Rank 0 of 2 alone, 2 s. */
Test(cuda, nccl_join_without_peer_times_out, .timeout = 120)
{
    nc_shared *sh = nc_setup();
    int status;
    pid_t p = fork();
    cr_assert(p >= 0);
    if (p == 0) {
        alarm(60);
        ds_backend *b = NULL;
        ds_error err = {0};
        ds_comm *comm = NULL;
        unsigned char id[512];
        size_t len = 0;
        if (ds_backend_create(&b, "cuda", &err) || b->ops->comm_id(b, id, sizeof id, &len, &err)) {
            nc_fail(sh, 0, "%s", err.msg);
            _exit(1);
        }
        time_t t0 = time(NULL);
        ds_status st = b->ops->comm_create(b, id, len, 0, 2, 2, &comm, &err);
        long waited = (long)(time(NULL) - t0);
        if (st != DS_ERR_IO || comm || !strstr(err.msg, "did not complete in 2 s"))
            nc_fail(sh, 0, "status %d after %ld s: %s", st, waited, err.msg);
        else if (waited > 10)
            nc_fail(sh, 0, "the error came after %ld s, not about 2", waited);
        /* the emulated NCCL's shared-memory segment is named in the id; rank 0 removes it only
         * once everyone has joined, which will not happen here */
        if (strncmp((const char *)id, "/ds-nccl-emu-", 13) == 0)
            shm_unlink((const char *)id);
        _exit(sh->failed[0]); /* the joining thread is still blocked: leave without cleanup */
    }
    cr_assert(waitpid(p, &status, 0) == p);
    cr_expect(WIFEXITED(status), "the rank died by signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    cr_expect(!sh->failed[0], "%s", sh->msg[0]);
    munmap(sh, sizeof *sh);
}
