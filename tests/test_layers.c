/* Op-level checks of the CPU backend, both kernel variants: every backward op against central
 * finite differences of its forward op, the `accumulate` flag, forward values against double
 * references, the fused optimizers against torch's formulas, reductions, and avx2 == generic. */
#include <float.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "testutil.h"

#include "backend/cpu_kernels.h" /* the kernel tables, for the transposes */

/* lib/backend/cpu_kernels.c parallelizes a kernel only above this many elements: the "large"
 * cases below exceed it (asserted), the "small" ones stay under it. */
#define PAR_MIN 16384

/* ---- helpers ---------------------------------------------------------------------------- */

#define CALL(be, op, ...)                                                                         \
    cr_assert_eq((be)->ops->op((be), __VA_ARGS__), DS_OK, "%s: %s", #op, (be)->err.msg)

static float *fbuf(int64_t n)
{
    float *p = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    cr_assert(p != NULL);
    return p;
}

static float *fconst(int64_t n, float v)
{
    float *p = fbuf(n);
    for (int64_t i = 0; i < n; i++)
        p[i] = v;
    return p;
}

static float *frandn(ds_rng *r, int64_t n, double mean, double sd)
{
    float *p = fbuf(n);
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)(mean + sd * ds_rng_normal(r));
    return p;
}

static float *fcopy(const float *x, int64_t n)
{
    float *p = fbuf(n);
    memcpy(p, x, (size_t)n * sizeof(float));
    return p;
}

static int32_t *irand(ds_rng *r, int64_t n, int32_t hi)
{
    int32_t *p = calloc((size_t)n, sizeof(int32_t));
    cr_assert(p != NULL);
    for (int64_t i = 0; i < n; i++)
        p[i] = (int32_t)(ds_rng_next(r) % (uint64_t)hi);
    return p;
}

static double maxabs(const float *x, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m)
            m = fabs((double)x[i]);
    return m;
}

/* Run the "large" cases with 3 threads: the work splits unevenly (columns, rows, blocks). On 2
 * cores this oversubscribes, which is fast only with OMP_WAIT_POLICY=PASSIVE (make check sets
 * it; run by hand without it on a busy machine, spinning threads make this 10x slower). */
static void large_threads(int large)
{
#ifdef _OPENMP
    omp_set_num_threads(large ? 3 : omp_get_num_procs());
#else
    (void)large;
#endif
}

static ds_backend *open_backend(const char *name)
{
    ds_backend *be = NULL;
    ds_error err = {0};
    ds_status st = ds_backend_create(&be, name, &err);
    if (st == DS_ERR_UNSUPPORTED)
        cr_skip_test("%s is not available here: %s", name, err.msg);
    cr_assert_eq(st, DS_OK, "%s: %s", name, err.msg);
    return be;
}

/* Output arrays an op check keeps, to compare the kernel variants on the same inputs. */
#define MAX_OUTS 8
typedef struct outs {
    int n;
    char name[MAX_OUTS][48];
    float *v[MAX_OUTS];
    int64_t len[MAX_OUTS];
} outs;

static void keep(outs *o, const char *name, const float *v, int64_t len)
{
    if (!o)
        return;
    cr_assert(o->n < MAX_OUTS);
    snprintf(o->name[o->n], sizeof o->name[0], "%s", name);
    o->v[o->n] = fcopy(v, len);
    o->len[o->n] = len;
    o->n++;
}

static void outs_free(outs *o)
{
    for (int i = 0; i < o->n; i++)
        free(o->v[i]);
    o->n = 0;
}

/* got == prev + g up to float rounding of the addition (and of a reordered product for
 * oneDNN's accumulating matmul): tolerance 1e-5 of the magnitudes involved. A kernel that
 * ignores accumulate (got == g) or adds twice misses by |prev| or |g|, far outside it. */
static void expect_added(const char *what, const float *got, const float *prev, const float *g,
                         int64_t n)
{
    double scale = maxabs(prev, n) + maxabs(g, n);
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++) {
        double want = (double)prev[i] + (double)g[i];
        if (!(fabs((double)got[i] - want) <= 1e-5 * scale))
            bad = i;
    }
    cr_expect(bad < 0, "%s: element %lld is %.9g, expected previous %.9g + gradient %.9g", what,
              (long long)bad, bad < 0 ? 0 : got[bad], bad < 0 ? 0 : prev[bad], bad < 0 ? 0 : g[bad]);
}

/* Central differences. L(x) = sum_i r_i f(x)_i; for a perturbed element x_j,
 * dL/dx_j ~ sum_i r_i (f(x+h)_i - f(x-h)_i) / (x_j+h - x_j-h), summed in double over the
 * difference of the outputs (outputs x_j does not touch are bitwise equal and cancel exactly, so
 * large outputs add no noise). The step is the float-rounded one actually applied.
 *
 * Tolerance: |fd - analytic| <= 2e-3 * max|analytic| + 1% * |analytic|. Justification: with
 * h = 1e-2 and O(1) inputs the truncation error h^2/6 |f'''| is ~1e-5 relative; each float32
 * output carries ~1e-7 relative rounding (a few ulp after a reduction), which the division by
 * 2h turns into ~1e-5 * |y| * sqrt(#outputs touched) -- about 1e-4 of the gradient scale in
 * the worst case here (layernorm and attention rows). A real error (a missing term or factor,
 * a wrong index, a mask that differs from the forward's) moves gradients by O(1) relative. */
typedef void (*fwd_fn)(void *ctx, float *y);

static void grad_check(const char *what, fwd_fn f, void *ctx, int64_t ny, const float *r,
                       float *x, int64_t n, const float *ana, double h)
{
    float *yp = fbuf(ny), *ym = fbuf(ny);
    ds_rng rng;
    ds_rng_seed(&rng, 0x5eedull ^ (uint64_t)n);
    const int all = n <= 256;
    int64_t count = all ? n : 52; /* first, last and 50 random elements of big inputs */
    double amax = maxabs(ana, n);
    double atol = 2e-3 * amax + 1e-6, rtol = 1e-2;
    int64_t worst = -1;
    double worst_excess = 0, worst_fd = 0;
    for (int64_t c = 0; c < count; c++) {
        int64_t j = all ? c : c == 0 ? 0 : c == 1 ? n - 1 : (int64_t)(ds_rng_next(&rng) % (uint64_t)n);
        float x0 = x[j], xp = (float)(x0 + h), xm = (float)(x0 - h);
        x[j] = xp;
        f(ctx, yp);
        x[j] = xm;
        f(ctx, ym);
        x[j] = x0;
        double d = 0;
        for (int64_t i = 0; i < ny; i++)
            d += (double)r[i] * ((double)yp[i] - (double)ym[i]);
        double fd = d / ((double)xp - (double)xm);
        double excess = fabs(fd - (double)ana[j]) - (atol + rtol * fabs((double)ana[j]));
        if (!(excess <= 0) && (worst < 0 || !(excess <= worst_excess))) {
            worst = j;
            worst_excess = excess;
            worst_fd = fd;
        }
    }
    cr_expect(worst < 0,
              "%s: element %lld: analytic gradient %.7g, finite difference %.7g "
              "(tolerance %.3g + 1%%; max |gradient| %.3g)",
              what, (long long)worst, worst < 0 ? 0.0 : (double)ana[worst], worst_fd, atol, amax);
    /* guard against a vacuous comparison of zeros with zeros */
    cr_expect(amax > 0, "%s: the analytic gradient is all zeros", what);
    free(yp);
    free(ym);
}

/* An op check builds its inputs from a fixed seed, checks everything on backend be, and keeps
 * its outputs in o (may be NULL). */
typedef void (*op_check)(ds_backend *be, int large, outs *o);

static void run_generic(op_check fn, int large)
{
    large_threads(large);
    ds_backend *be = open_backend("cpu:generic");
    fn(be, large, NULL);
    ds_backend_destroy(be);
}

/* All checks on a variant, then the same inputs through generic: every kept output must agree
 * to 1e-5 relative (of the array's largest magnitude): same formulas, only the order of float
 * reductions (8 or 16 vs 4 lanes, FMA contraction) differs. */
static void variant_vs_generic(const char *name, op_check fn, int large)
{
    large_threads(large);
    char full[32];
    snprintf(full, sizeof full, "cpu:%s", name);
    ds_backend *ba = open_backend(full);
    cr_assert_str_eq(ds_backend_describe(ba), name);
    outs a = {0}, g = {0};
    fn(ba, large, &a);
    ds_backend_destroy(ba);
    ds_backend *bg = open_backend("cpu:generic");
    cr_assert_str_eq(ds_backend_describe(bg), "generic");
    fn(bg, large, &g);
    ds_backend_destroy(bg);
    cr_assert_eq(a.n, g.n);
    cr_assert_gt(a.n, 0);
    for (int i = 0; i < a.n; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s: %s vs generic", a.name[i], name);
        expect_close(what, a.v[i], g.v[i], a.len[i], 1e-5 * maxabs(g.v[i], g.len[i]) + 1e-30, 1e-5);
    }
    outs_free(&a);
    outs_free(&g);
}

/* NULL where the variant is not available (avx2 on an old CPU, avx512 on ours) */
static ds_backend *try_backend(const char *name)
{
    ds_backend *be = NULL;
    ds_error err = {0};
    ds_status st = ds_backend_create(&be, name, &err);
    if (st == DS_ERR_UNSUPPORTED) {
        cr_log_info("%s not available: %s", name, err.msg);
        return NULL;
    }
    cr_assert_eq(st, DS_OK, "%s: %s", name, err.msg);
    return be;
}

/* avx2 against generic, and avx512 against generic where the CPU has AVX-512 */
static void run_avx2_vs_generic(op_check fn, int large)
{
    variant_vs_generic("avx2", fn, large);
    ds_backend *be = try_backend("cpu:avx512");
    if (be) {
        ds_backend_destroy(be);
        variant_vs_generic("avx512", fn, large);
    }
}

#define OP_TESTS(suite, fn)                                                                       \
    Test(suite, small_generic) { run_generic(fn, 0); }                                            \
    Test(suite, large_generic) { run_generic(fn, 1); }                                            \
    Test(suite, small_avx2_vs_generic) { run_avx2_vs_generic(fn, 0); }                            \
    Test(suite, large_avx2_vs_generic) { run_avx2_vs_generic(fn, 1); }

static void check_size(int large, int64_t n)
{
    if (large)
        cr_assert_gt(n, PAR_MIN, "a large case must exceed PAR_MIN");
    else
        cr_assert_leq(n, PAR_MIN, "a small case must stay under PAR_MIN");
}

/* ---- linear ----------------------------------------------------------------------------- */

typedef struct lin_ctx {
    ds_backend *be;
    float *x, *w, *b;
    int64_t M, K, N;
} lin_ctx;

static void lin_fwd(void *vc, float *y)
{
    lin_ctx *c = vc;
    CALL(c->be, linear_fwd, c->x, c->w, c->b, y, c->M, c->K, c->N);
}

static void check_linear(ds_backend *be, int large, outs *o)
{
    const int64_t M = large ? 200 : 6, K = large ? 40 : 5, N = large ? 96 : 7;
    check_size(large, M * N);
    ds_rng rng;
    ds_rng_seed(&rng, 101 + (uint64_t)large);
    float *x = frandn(&rng, M * K, 0, 1), *w = frandn(&rng, N * K, 0, 0.5), *b = frandn(&rng, N, 0, 1);
    float *r = frandn(&rng, M * N, 0, 1);
    float *y = fbuf(M * N), *y0 = fbuf(M * N);
    lin_ctx c = {be, x, w, b, M, K, N};
    lin_fwd(&c, y);
    /* forward against double: a float32 dot product of K terms is within ~K ulp of the sum of
     * magnitudes; 1e-5 of it is ample. */
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = b[n], mag = fabs((double)b[n]);
            for (int64_t k = 0; k < K; k++) {
                s += (double)x[m * K + k] * w[n * K + k];
                mag += fabs((double)x[m * K + k] * w[n * K + k]);
            }
            cr_assert(fabs(y[m * N + n] - s) <= 1e-5 * mag + 1e-7, "linear y[%lld,%lld] = %.9g, expected %.9g",
                      (long long)m, (long long)n, y[m * N + n], s);
        }
    /* without bias */
    CALL(be, linear_fwd, x, w, NULL, y0, M, K, N);
    for (int64_t i = 0; i < M * N; i++)
        cr_assert(fabs((double)y0[i] + b[i % N] - y[i]) <= 1e-5 * (fabs((double)y[i]) + 1),
                  "linear without bias: y[%lld] = %.9g, with bias %.9g, bias %.9g", (long long)i, y0[i],
                  y[i], b[i % N]);

    /* backward: accumulate = 0 writes dx whatever was there (NaN); dw, dbias add */
    float *dx = fconst(M * K, NAN), *dw = fbuf(N * K), *db = fbuf(N);
    CALL(be, linear_bwd, r, x, w, dx, dw, db, M, K, N, 0);
    grad_check("linear dx", lin_fwd, &c, M * N, r, x, M * K, dx, 1e-2);
    grad_check("linear dw", lin_fwd, &c, M * N, r, w, N * K, dw, 1e-2);
    grad_check("linear dbias", lin_fwd, &c, M * N, r, b, N, db, 1e-2);

    /* accumulate = 1 adds to dx; dw and dbias always add to what is there */
    float *px = frandn(&rng, M * K, 0, 1), *pw = frandn(&rng, N * K, 0, 1), *pb = frandn(&rng, N, 0, 1);
    float *ax = fcopy(px, M * K), *aw = fcopy(pw, N * K), *ab = fcopy(pb, N);
    CALL(be, linear_bwd, r, x, w, ax, aw, ab, M, K, N, 1);
    expect_added("linear dx, accumulate=1", ax, px, dx, M * K);
    expect_added("linear dw", aw, pw, dw, N * K);
    expect_added("linear dbias", ab, pb, db, N);

    /* dx and dbias may be NULL */
    float *dw2 = fbuf(N * K);
    CALL(be, linear_bwd, r, x, w, NULL, dw2, NULL, M, K, N, 0);
    expect_close("linear dw with dx = dbias = NULL", dw2, dw, N * K, 1e-6 * maxabs(dw, N * K), 1e-6);

    keep(o, "linear y", y, M * N);
    keep(o, "linear dx", dx, M * K);
    keep(o, "linear dw", dw, N * K);
    keep(o, "linear dbias", db, N);
    free(x), free(w), free(b), free(r), free(y), free(y0), free(dx), free(dw), free(db);
    free(px), free(pw), free(pb), free(ax), free(aw), free(ab), free(dw2);
}
OP_TESTS(linear, check_linear)

/* ---- embedding -------------------------------------------------------------------------- */

typedef struct emb_ctx {
    ds_backend *be;
    const int32_t *ids;
    float *table;
    int64_t M, C;
} emb_ctx;

static void emb_fwd(void *vc, float *y)
{
    emb_ctx *c = vc;
    CALL(c->be, embedding_fwd, c->ids, c->table, y, c->M, c->C);
}

static void check_embedding(ds_backend *be, int large, outs *o)
{
    /* few rows, many lookups: ids repeat (gradients must add up); the last row is never
     * looked up (its gradient must stay exactly what it was) */
    const int64_t V = large ? 11 : 5, C = large ? 150 : 6, M = large ? 120 : 9;
    check_size(large, M * C);
    ds_rng rng;
    ds_rng_seed(&rng, 202 + (uint64_t)large);
    int32_t *ids = irand(&rng, M, (int32_t)V - 1);
    float *table = frandn(&rng, V * C, 0, 1), *r = frandn(&rng, M * C, 0, 1), *y = fbuf(M * C);
    emb_ctx c = {be, ids, table, M, C};
    emb_fwd(&c, y);
    for (int64_t m = 0; m < M; m++)
        cr_assert(memcmp(y + m * C, table + ids[m] * C, (size_t)C * sizeof(float)) == 0,
                  "embedding row %lld is not table row %d", (long long)m, ids[m]);
    float *dt = fbuf(V * C);
    CALL(be, embedding_bwd, ids, r, dt, M, C);
    grad_check("embedding dtable", emb_fwd, &c, M * C, r, table, V * C, dt, 1e-2);
    for (int64_t j = 0; j < C; j++)
        cr_expect(dt[(V - 1) * C + j] == 0.0f, "embedding: an unused row got a gradient");
    float *p = frandn(&rng, V * C, 0, 1), *a = fcopy(p, V * C);
    CALL(be, embedding_bwd, ids, r, a, M, C);
    expect_added("embedding dtable accumulates", a, p, dt, V * C);
    keep(o, "embedding y", y, M * C);
    keep(o, "embedding dtable", dt, V * C);
    free(ids), free(table), free(r), free(y), free(dt), free(p), free(a);
}
OP_TESTS(embedding, check_embedding)

/* ---- position embedding ----------------------------------------------------------------- */

typedef struct pos_ctx {
    ds_backend *be;
    float *x, *pos;
    int64_t B, T, C;
} pos_ctx;

static void pos_fwd(void *vc, float *y)
{
    pos_ctx *c = vc;
    CALL(c->be, posadd_fwd, c->x, c->pos, y, c->B, c->T, c->C);
}

static void check_posadd(ds_backend *be, int large, outs *o)
{
    const int64_t B = large ? 3 : 2, T = large ? 40 : 3, C = large ? 150 : 5;
    check_size(large, B * T * C);
    ds_rng rng;
    ds_rng_seed(&rng, 303 + (uint64_t)large);
    float *x = frandn(&rng, B * T * C, 0, 1), *pos = frandn(&rng, T * C, 0, 1);
    float *r = frandn(&rng, B * T * C, 0, 1), *y = fbuf(B * T * C);
    pos_ctx c = {be, x, pos, B, T, C};
    pos_fwd(&c, y);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t k = 0; k < C; k++) {
                int64_t i = (b * T + t) * C + k;
                cr_assert(y[i] == x[i] + pos[t * C + k], "posadd y[%lld,%lld,%lld]", (long long)b,
                          (long long)t, (long long)k);
            }
    float *dpos = fbuf(T * C);
    CALL(be, posadd_bwd, r, dpos, B, T, C);
    grad_check("posadd dpos", pos_fwd, &c, B * T * C, r, pos, T * C, dpos, 1e-2);
    float *p = frandn(&rng, T * C, 0, 1), *a = fcopy(p, T * C);
    CALL(be, posadd_bwd, r, a, B, T, C);
    expect_added("posadd dpos accumulates", a, p, dpos, T * C);
    keep(o, "posadd y", y, B * T * C);
    keep(o, "posadd dpos", dpos, T * C);
    free(x), free(pos), free(r), free(y), free(dpos), free(p), free(a);
}
OP_TESTS(posadd, check_posadd)

/* ---- layernorm -------------------------------------------------------------------------- */

typedef struct ln_ctx {
    ds_backend *be;
    float *x, *w, *b, *mean, *rstd;
    int64_t M, C;
} ln_ctx;

#define LN_EPS 1e-5f

static void ln_fwd(void *vc, float *y)
{
    ln_ctx *c = vc;
    CALL(c->be, layernorm_fwd, c->x, c->w, c->b, y, c->mean, c->rstd, c->M, c->C, LN_EPS);
}

static void check_layernorm(ds_backend *be, int large, outs *o)
{
    const int64_t M = large ? 100 : 5, C = large ? 170 : 8;
    check_size(large, M * C);
    ds_rng rng;
    ds_rng_seed(&rng, 404 + (uint64_t)large);
    float *x = frandn(&rng, M * C, 0, 1.5);
    for (int64_t m = 0; m < M; m++) { /* rows with their own offset: the mean must come off */
        float off = (float)(3 * ds_rng_normal(&rng));
        for (int64_t k = 0; k < C; k++)
            x[m * C + k] += off;
    }
    float *w = frandn(&rng, C, 1, 0.3), *b = frandn(&rng, C, 0, 0.2), *r = frandn(&rng, M * C, 0, 1);
    float *y = fbuf(M * C), *mean = fconst(M, NAN), *rstd = fconst(M, NAN);
    ln_ctx c = {be, x, w, b, mean, rstd, M, C};
    ln_fwd(&c, y);
    /* forward against double (biased variance, as torch): float32 rounding of mean and
     * variance over C <= 170 terms stays well below these bounds */
    for (int64_t m = 0; m < M; m++) {
        double mu = 0, var = 0;
        for (int64_t k = 0; k < C; k++)
            mu += x[m * C + k];
        mu /= (double)C;
        for (int64_t k = 0; k < C; k++)
            var += ((double)x[m * C + k] - mu) * ((double)x[m * C + k] - mu);
        var /= (double)C;
        double rs = 1.0 / sqrt(var + (double)LN_EPS);
        cr_assert(fabs(mean[m] - mu) <= 1e-6 * (fabs(mu) + 1), "layernorm mean[%lld] %.9g, expected %.9g",
                  (long long)m, mean[m], mu);
        cr_assert(fabs(rstd[m] - rs) <= 1e-5 * rs, "layernorm rstd[%lld] %.9g, expected %.9g", (long long)m,
                  rstd[m], rs);
        for (int64_t k = 0; k < C; k++) {
            double want = ((double)x[m * C + k] - mu) * rs * w[k] + b[k];
            cr_assert(fabs(y[m * C + k] - want) <= 2e-5 * (fabs(want) + 1),
                      "layernorm y[%lld,%lld] %.9g, expected %.9g", (long long)m, (long long)k, y[m * C + k], want);
        }
    }
    float *dx = fconst(M * C, NAN), *dw = fbuf(C), *db = fbuf(C);
    CALL(be, layernorm_bwd, r, x, w, mean, rstd, dx, dw, db, M, C, 0);
    float *dx0 = fcopy(dx, M * C), *dw0 = fcopy(dw, C), *db0 = fcopy(db, C);
    grad_check("layernorm dx", ln_fwd, &c, M * C, r, x, M * C, dx0, 1e-2);
    grad_check("layernorm dw", ln_fwd, &c, M * C, r, w, C, dw0, 1e-2);
    grad_check("layernorm dbias", ln_fwd, &c, M * C, r, b, C, db0, 1e-2);
    ln_fwd(&c, y); /* restore mean, rstd of the unperturbed input */
    float *px = frandn(&rng, M * C, 0, 1), *pw = frandn(&rng, C, 0, 1), *pb = frandn(&rng, C, 0, 1);
    float *ax = fcopy(px, M * C), *aw = fcopy(pw, C), *ab = fcopy(pb, C);
    CALL(be, layernorm_bwd, r, x, w, mean, rstd, ax, aw, ab, M, C, 1);
    expect_added("layernorm dx, accumulate=1", ax, px, dx0, M * C);
    expect_added("layernorm dw accumulates", aw, pw, dw0, C);
    expect_added("layernorm dbias accumulates", ab, pb, db0, C);
    keep(o, "layernorm y", y, M * C);
    keep(o, "layernorm rstd", rstd, M);
    keep(o, "layernorm dx", dx0, M * C);
    keep(o, "layernorm dw", dw0, C);
    keep(o, "layernorm dbias", db0, C);
    free(x), free(w), free(b), free(r), free(y), free(mean), free(rstd), free(dx), free(dw), free(db);
    free(dx0), free(dw0), free(db0), free(px), free(pw), free(pb), free(ax), free(aw), free(ab);
}
OP_TESTS(layernorm, check_layernorm)

/* ---- elementwise: gelu (both forms), relu, dropout -------------------------------------- */

typedef struct ew_ctx {
    ds_backend *be;
    float *x;
    int64_t n;
    int approximate;
    float p;
    uint64_t seed;
} ew_ctx;

static void gelu_fwd_c(void *vc, float *y)
{
    ew_ctx *c = vc;
    CALL(c->be, gelu_fwd, c->x, y, c->n, c->approximate);
}

static double gelu_ref(double x, int approximate)
{
    if (approximate)
        return 0.5 * x * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1 + erf(x / sqrt(2)));
}

static void check_gelu(ds_backend *be, int large, outs *o, int approximate)
{
    const int64_t n = large ? 17000 : 40;
    check_size(large, n);
    ds_rng rng;
    ds_rng_seed(&rng, 505 + (uint64_t)large);
    float *x = frandn(&rng, n, 0, 2.5);
    const float special[] = {0.0f, 1e-3f, -1e-3f, 0.5f, -0.5f, 3.0f, -3.0f, 6.0f, -6.0f, 9.0f, -9.0f, 12.0f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        x[i * 3] = special[i];
    float *r = frandn(&rng, n, 0, 1), *y = fbuf(n);
    ew_ctx c = {be, x, n, approximate, 0, 0};
    gelu_fwd_c(&c, y);
    /* the kernels' tanh/erf are accurate to ~1.5e-7 absolute, scaled by 0.5|x| */
    for (int64_t i = 0; i < n; i++) {
        double want = gelu_ref(x[i], approximate);
        cr_assert(fabs(y[i] - want) <= 1e-6 * (1 + fabs((double)x[i])), "gelu(%s)(%.9g) = %.9g, expected %.9g",
                  approximate ? "tanh" : "erf", x[i], y[i], want);
    }
    float *dx = fconst(n, NAN);
    CALL(be, gelu_bwd, x, r, dx, n, approximate, 0);
    grad_check(approximate ? "gelu tanh dx" : "gelu erf dx", gelu_fwd_c, &c, n, r, x, n, dx, 1e-2);
    /* and against the derivative in double: 0.5 (1 + t) + 0.5 x (1 - t^2) u', or Phi(x) + x phi(x) */
    for (int64_t i = 0; i < n; i++) {
        const double v = x[i], k = sqrt(2 / 3.14159265358979323846);
        const double t = tanh(k * (v + 0.044715 * v * v * v));
        const double d = approximate ? 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v)
                                     : 0.5 * (1 + erf(v / sqrt(2))) + v * exp(-0.5 * v * v) / sqrt(2 * 3.14159265358979323846);
        cr_assert(fabs(dx[i] - d * r[i]) <= 2e-6 * (1 + fabs(v)) * (1 + fabs((double)r[i])),
                  "gelu'(%s)(%.9g) * %.9g = %.9g, expected %.9g", approximate ? "tanh" : "erf", x[i], r[i], dx[i],
                  d * r[i]);
    }
    float *p = frandn(&rng, n, 0, 1), *a = fcopy(p, n);
    CALL(be, gelu_bwd, x, r, a, n, approximate, 1);
    expect_added("gelu dx, accumulate=1", a, p, dx, n);
    { /* far out: GELU is x or 0 and its derivative 1 or 0 (a finite result for every finite x) */
        const float big[] = {12.0f, -12.0f, 30.0f, -30.0f, 1e4f, -1e4f, 1e12f, -1e12f, 3e38f, -3e38f};
        enum { NB = sizeof big / sizeof big[0] };
        float yb[NB], db[NB], ones[NB];
        for (int i = 0; i < NB; i++)
            ones[i] = 1.0f;
        ew_ctx cb = {be, (float *)big, NB, approximate, 0, 0};
        gelu_fwd_c(&cb, yb);
        CALL(be, gelu_bwd, big, ones, db, NB, approximate, 0);
        for (int i = 0; i < NB; i++) {
            const float wy = big[i] > 0 ? big[i] : 0.0f, wd = big[i] > 0 ? 1.0f : 0.0f;
            cr_assert(fabsf(yb[i] - wy) <= 1e-6f * fabsf(wy) + 1e-30f && fabsf(db[i] - wd) <= 1e-6f,
                      "gelu(%s)(%g) = %g, gelu' %g: expected %g and %g", approximate ? "tanh" : "erf", big[i], yb[i],
                      db[i], wy, wd);
        }
    }
    keep(o, "gelu y", y, n);
    keep(o, "gelu dx", dx, n);
    free(x), free(r), free(y), free(dx), free(p), free(a);
}

static void check_gelu_tanh(ds_backend *be, int large, outs *o) { check_gelu(be, large, o, 1); }
static void check_gelu_erf(ds_backend *be, int large, outs *o) { check_gelu(be, large, o, 0); }
OP_TESTS(gelu_tanh, check_gelu_tanh)
OP_TESTS(gelu_erf, check_gelu_erf)

static void relu_fwd_c(void *vc, float *y)
{
    ew_ctx *c = vc;
    CALL(c->be, relu_fwd, c->x, y, c->n);
}

static void check_relu(ds_backend *be, int large, outs *o)
{
    const int64_t n = large ? 17000 : 40;
    check_size(large, n);
    ds_rng rng;
    ds_rng_seed(&rng, 606 + (uint64_t)large);
    float *x = frandn(&rng, n, 0, 1);
    for (int64_t i = 0; i < n; i++) /* keep |x| > 2h: the kink at 0 has no derivative */
        x[i] = x[i] < 0 ? x[i] - 0.05f : x[i] + 0.05f;
    float *r = frandn(&rng, n, 0, 1), *y = fbuf(n);
    ew_ctx c = {be, x, n, 0, 0, 0};
    relu_fwd_c(&c, y);
    for (int64_t i = 0; i < n; i++)
        cr_assert(y[i] == (x[i] > 0 ? x[i] : 0.0f), "relu(%g) = %g", x[i], y[i]);
    float *dx = fconst(n, NAN);
    CALL(be, relu_bwd, y, r, dx, n, 0);
    grad_check("relu dx", relu_fwd_c, &c, n, r, x, n, dx, 1e-2);
    float *p = frandn(&rng, n, 0, 1), *a = fcopy(p, n);
    CALL(be, relu_bwd, y, r, a, n, 1);
    expect_added("relu dx, accumulate=1", a, p, dx, n);
    keep(o, "relu y", y, n);
    keep(o, "relu dx", dx, n);
    free(x), free(r), free(y), free(dx), free(p), free(a);
}
OP_TESTS(relu, check_relu)

static void dropout_fwd_c(void *vc, float *y)
{
    ew_ctx *c = vc;
    CALL(c->be, dropout_fwd, c->x, y, c->n, c->p, c->seed);
}

static void check_dropout(ds_backend *be, int large, outs *o)
{
    const int64_t n = large ? 17000 : 40;
    check_size(large, n);
    ds_rng rng;
    ds_rng_seed(&rng, 707 + (uint64_t)large);
    float *x = frandn(&rng, n, 0, 1), *r = frandn(&rng, n, 0, 1), *y = fbuf(n), *y2 = fbuf(n);
    for (int64_t i = 0; i < n; i++) /* no zeros in x: a zero output means dropped */
        if (x[i] == 0.0f)
            x[i] = 1.0f;
    const float p = 0.3f, inv = 1.0f / (1.0f - p);
    ew_ctx c = {be, x, n, 0, p, 1234 + (uint64_t)large};
    dropout_fwd_c(&c, y);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        cr_assert(y[i] == 0.0f || y[i] == x[i] * inv, "dropout y[%lld] = %g for x %g: neither 0 nor x/(1-p)",
                  (long long)i, y[i], x[i]);
        kept += y[i] != 0.0f;
    }
    /* kept fraction ~ Binomial(n, 0.7)/n: sd 0.0035 at n = 17000, 0.072 at n = 40 */
    double frac = (double)kept / (double)n, tol = large ? 0.02 : 0.35;
    cr_expect(fabs(frac - (1 - p)) <= tol, "dropout kept %.4f of the elements, expected ~%.2f", frac, 1 - p);
    /* the mask is a function of the seed: the same again, another seed another mask */
    dropout_fwd_c(&c, y2);
    cr_expect(memcmp(y, y2, (size_t)n * sizeof(float)) == 0, "dropout with the same seed differs");
    c.seed++;
    dropout_fwd_c(&c, y2);
    c.seed--;
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++)
        differ += (y[i] == 0.0f) != (y2[i] == 0.0f);
    cr_expect(differ > n / 10, "dropout masks of two seeds differ in only %lld of %lld elements",
              (long long)differ, (long long)n);
    /* p = 0 keeps everything unchanged */
    ew_ctx c0 = c;
    c0.p = 0.0f;
    dropout_fwd_c(&c0, y2);
    cr_expect(memcmp(x, y2, (size_t)n * sizeof(float)) == 0, "dropout with p = 0 changed its input");

    float *dx = fconst(n, NAN);
    CALL(be, dropout_bwd, r, dx, n, p, c.seed, 0);
    grad_check("dropout dx (same mask as the forward)", dropout_fwd_c, &c, n, r, x, n, dx, 1e-2);
    float *pp = frandn(&rng, n, 0, 1), *a = fcopy(pp, n);
    CALL(be, dropout_bwd, r, a, n, p, c.seed, 1);
    expect_added("dropout dx, accumulate=1", a, pp, dx, n);
    keep(o, "dropout y", y, n);
    keep(o, "dropout dx", dx, n);
    free(x), free(r), free(y), free(y2), free(dx), free(pp), free(a);
}
OP_TESTS(dropout, check_dropout)

/* ---- residual: add, accumulate, and a residual block's backward ------------------------- */

typedef struct res_ctx {
    ds_backend *be;
    float *x, *tmp;
    int64_t n;
} res_ctx;

/* y = x + gelu(x), the engine's residual: branch then add */
static void res_fwd(void *vc, float *y)
{
    res_ctx *c = vc;
    CALL(c->be, gelu_fwd, c->x, c->tmp, c->n, 1);
    CALL(c->be, add, c->x, c->tmp, y, c->n);
}

static void check_residual(ds_backend *be, int large, outs *o)
{
    const int64_t n = large ? 17000 : 37;
    check_size(large, n);
    ds_rng rng;
    ds_rng_seed(&rng, 808 + (uint64_t)large);
    float *a = frandn(&rng, n, 0, 1), *b = frandn(&rng, n, 0, 1), *y = fconst(n, NAN);
    CALL(be, add, a, b, y, n);
    for (int64_t i = 0; i < n; i++)
        cr_assert(y[i] == a[i] + b[i], "add y[%lld]", (long long)i);
    /* accumulate 0 copies (whatever was there), 1 adds */
    float *z = fconst(n, NAN);
    CALL(be, accumulate, a, z, n, 0);
    cr_assert(memcmp(z, a, (size_t)n * sizeof(float)) == 0, "accumulate=0 does not copy");
    memcpy(z, b, (size_t)n * sizeof(float));
    CALL(be, accumulate, a, z, n, 1);
    for (int64_t i = 0; i < n; i++)
        cr_assert(z[i] == b[i] + a[i], "accumulate=1: z[%lld] %g, expected %g + %g", (long long)i, z[i], b[i], a[i]);

    /* backward of x + gelu(x) as the engine does it: dx = dy (skip, accumulate 0), then the
     * branch's gelu_bwd adds (accumulate 1) */
    float *x = frandn(&rng, n, 0, 1.5), *tmp = fbuf(n), *r = frandn(&rng, n, 0, 1), *dx = fconst(n, NAN);
    res_ctx c = {be, x, tmp, n};
    res_fwd(&c, y);
    CALL(be, accumulate, r, dx, n, 0);
    CALL(be, gelu_bwd, x, r, dx, n, 1, 1);
    grad_check("residual x + gelu(x) dx", res_fwd, &c, n, r, x, n, dx, 1e-2);
    keep(o, "add y", y, n);
    keep(o, "residual dx", dx, n);
    free(a), free(b), free(y), free(z), free(x), free(tmp), free(r), free(dx);
}
OP_TESTS(residual, check_residual)

/* ---- attention -------------------------------------------------------------------------- */

typedef struct att_ctx {
    ds_backend *be;
    float *qkv, *att;
    int64_t B, T, C, H;
    int causal;
} att_ctx;

static void att_fwd(void *vc, float *y)
{
    att_ctx *c = vc;
    CALL(c->be, attention_fwd, c->qkv, y, c->att, c->B, c->T, c->C, c->H, c->causal);
}

static void check_attention(ds_backend *be, int large, outs *o, int causal)
{
    /* T 64: causal products in halves (cpu.c att_split) */
    const int64_t B = 2, T = large ? 64 : 5, C = large ? 64 : 8, H = large ? 4 : 2, D = C / H;
    check_size(large, B * T * 3 * C);
    ds_rng rng;
    ds_rng_seed(&rng, 909 + (uint64_t)large + 10 * (uint64_t)causal);
    const int64_t nq = B * T * 3 * C, no = B * T * C, na = B * H * T * T;
    float *qkv = frandn(&rng, nq, 0, 1), *r = frandn(&rng, no, 0, 1);
    float *out = fbuf(no), *att = fconst(na, NAN);
    att_ctx c = {be, qkv, att, B, T, C, H, causal};
    att_fwd(&c, out);
    /* softmax attention in double; probabilities and outputs are O(1), float32 error ~1e-6 */
    double *pr = malloc((size_t)T * sizeof *pr);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                const float *q = qkv + (b * T + t) * 3 * C + h * D;
                int64_t smax = causal ? t + 1 : T;
                double mx = -INFINITY, sum = 0;
                for (int64_t s = 0; s < smax; s++) {
                    const float *k = qkv + (b * T + s) * 3 * C + C + h * D;
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++)
                        dot += (double)q[d] * k[d];
                    pr[s] = dot / sqrt((double)D);
                    mx = fmax(mx, pr[s]);
                }
                for (int64_t s = 0; s < smax; s++)
                    sum += (pr[s] = exp(pr[s] - mx));
                const float *arow = att + ((b * H + h) * T + t) * T;
                for (int64_t s = 0; s < T; s++) {
                    double want = s < smax ? pr[s] / sum : 0.0;
                    cr_assert(fabs(arow[s] - want) <= 2e-6, "att[%lld,%lld,%lld,%lld] = %.9g, expected %.9g",
                              (long long)b, (long long)h, (long long)t, (long long)s, arow[s], want);
                }
                for (int64_t d = 0; d < D; d++) {
                    double want = 0;
                    for (int64_t s = 0; s < smax; s++)
                        want += pr[s] / sum * qkv[(b * T + s) * 3 * C + 2 * C + h * D + d];
                    float got = out[(b * T + t) * C + h * D + d];
                    cr_assert(fabs(got - want) <= 1e-5, "attention out[%lld,%lld,%lld] = %.9g, expected %.9g",
                              (long long)b, (long long)t, (long long)(h * D + d), got, want);
                }
            }
    free(pr);
    float *dqkv = fconst(nq, NAN);
    CALL(be, attention_bwd, r, qkv, att, dqkv, B, T, C, H, causal);
    float *att0 = fcopy(att, na);
    grad_check(causal ? "causal attention dqkv" : "attention dqkv", att_fwd, &c, no, r, qkv, nq, dqkv, 1e-2);
    /* dqkv is written, not accumulated: the same again over other contents */
    float *d2 = frandn(&rng, nq, 0, 1);
    CALL(be, attention_bwd, r, qkv, att0, d2, B, T, C, H, causal);
    expect_close("attention dqkv overwrites", d2, dqkv, nq, 0, 0);
    keep(o, "attention out", out, no);
    keep(o, "attention att", att0, na);
    keep(o, "attention dqkv", dqkv, nq);
    free(qkv), free(r), free(out), free(att), free(dqkv), free(att0), free(d2);
}

static void check_attention_causal(ds_backend *be, int large, outs *o) { check_attention(be, large, o, 1); }
static void check_attention_full(ds_backend *be, int large, outs *o) { check_attention(be, large, o, 0); }
OP_TESTS(attention_causal, check_attention_causal)
OP_TESTS(attention_noncausal, check_attention_full)

/* ---- losses ----------------------------------------------------------------------------- */

typedef struct loss_ctx {
    ds_backend *be;
    float *z;
    const int32_t *t;
    const float *ty;
    int64_t M, V;
} loss_ctx;

static void xent_fwd_c(void *vc, float *losses)
{
    loss_ctx *c = vc;
    CALL(c->be, xent_fwd, c->z, c->t, losses, NULL, 1.0f, c->M, c->V);
}

static double logsumexp_ref(const float *z, int64_t V)
{
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; j++)
        mx = fmax(mx, z[j]);
    for (int64_t j = 0; j < V; j++)
        s += exp(z[j] - mx);
    return mx + log(s);
}

static void check_xent(ds_backend *be, int large, outs *o)
{
    const int64_t M = large ? 60 : 4, V = large ? 300 : 7;
    check_size(large, M * V);
    ds_rng rng;
    ds_rng_seed(&rng, 1010 + (uint64_t)large);
    float *z = frandn(&rng, M * V, 0, 2), *losses = fbuf(M), *l2 = fbuf(M), *dz = fconst(M * V, NAN);
    int32_t *t = irand(&rng, M, (int32_t)V);
    const float gs = 0.37f;
    loss_ctx c = {be, z, t, NULL, M, V};
    CALL(be, xent_fwd, z, t, losses, dz, gs, M, V);
    xent_fwd_c(&c, l2);
    cr_expect(memcmp(losses, l2, (size_t)M * sizeof(float)) == 0, "xent losses depend on dlogits being asked for");
    for (int64_t m = 0; m < M; m++) {
        double want = logsumexp_ref(z + m * V, V) - z[m * V + t[m]];
        cr_assert(fabs(losses[m] - want) <= 1e-5 * (1 + fabs(want)), "xent loss[%lld] = %.9g, expected %.9g",
                  (long long)m, losses[m], want);
        double lse = logsumexp_ref(z + m * V, V);
        for (int64_t j = 0; j < V; j++) {
            double d = gs * (exp(z[m * V + j] - lse) - (j == t[m]));
            cr_assert(fabs(dz[m * V + j] - d) <= 1e-6, "xent dlogits[%lld,%lld] = %.9g, expected %.9g",
                      (long long)m, (long long)j, dz[m * V + j], d);
        }
    }
    /* dlogits is the gradient of grad_scale * sum(losses) */
    float *r = fconst(M, gs);
    grad_check("xent dlogits", xent_fwd_c, &c, M, r, z, M * V, dz, 1e-2);
    keep(o, "xent losses", losses, M);
    keep(o, "xent dlogits", dz, M * V);
    free(z), free(losses), free(l2), free(dz), free(t), free(r);
}
OP_TESTS(xent, check_xent)

/* Extreme logits: the max is subtracted before exponentiating. */
Test(xent, extreme_logits)
{
    ds_backend *be = open_backend("cpu");
    const int64_t V = 5;
    float z[4 * 5] = {1000, 0, -1000, 5, 1,     /* target 0: loss ~0 */
                      1000, 0, -1000, 5, 1,     /* target 2: loss ~2000 */
                      -3, -3, -3, -3, -3,       /* uniform: log 5 */
                      80, 80, 80, 80, 80};     /* uniform with a big offset: log 5 */
    int32_t t[4] = {0, 2, 4, 1};
    float losses[4], dz[20];
    CALL(be, xent_fwd, z, t, losses, dz, 1.0f, 4, V);
    for (int m = 0; m < 4; m++) {
        double want = logsumexp_ref(z + m * V, V) - z[m * V + t[m]];
        cr_expect(isfinite(losses[m]) && fabs(losses[m] - want) <= 1e-6 * (1 + fabs(want)) + 1e-4,
                  "row %d: loss %.9g, expected %.9g", m, losses[m], want);
    }
    cr_expect(fabs(losses[2] - log(5.0)) < 1e-6);
    cr_expect(fabs(dz[0]) < 1e-6 && fabs(dz[5 + 0] - 1.0) < 1e-6 && fabs(dz[5 + 2] + 1.0) < 1e-6);
    for (int j = 0; j < 20; j++)
        cr_expect(isfinite(dz[j]), "dlogits[%d] is not finite", j);
    ds_backend_destroy(be);
}

static void mse_fwd_c(void *vc, float *losses)
{
    loss_ctx *c = vc;
    CALL(c->be, mse_fwd, c->z, c->ty, losses, NULL, 1.0f, c->M, c->V);
}

static void check_mse(ds_backend *be, int large, outs *o)
{
    const int64_t M = large ? 100 : 3, N = large ? 170 : 5;
    check_size(large, M * N);
    ds_rng rng;
    ds_rng_seed(&rng, 1111 + (uint64_t)large);
    float *y = frandn(&rng, M * N, 0, 1), *ty = frandn(&rng, M * N, 0, 1);
    float *losses = fbuf(M), *dy = fconst(M * N, NAN);
    const float gs = 0.61f;
    loss_ctx c = {be, y, NULL, ty, M, N};
    CALL(be, mse_fwd, y, ty, losses, dy, gs, M, N);
    for (int64_t m = 0; m < M; m++) {
        double want = 0;
        for (int64_t j = 0; j < N; j++)
            want += ((double)y[m * N + j] - ty[m * N + j]) * ((double)y[m * N + j] - ty[m * N + j]);
        cr_assert(fabs(losses[m] - want) <= 1e-5 * want + 1e-7, "mse loss[%lld] = %.9g, expected %.9g",
                  (long long)m, losses[m], want);
        for (int64_t j = 0; j < N; j++) {
            double d = 2.0 * gs * ((double)y[m * N + j] - ty[m * N + j]);
            cr_assert(fabs(dy[m * N + j] - d) <= 1e-6 * (1 + fabs(d)), "mse dy[%lld,%lld]", (long long)m,
                      (long long)j);
        }
    }
    float *r = fconst(M, gs);
    grad_check("mse dy", mse_fwd_c, &c, M, r, y, M * N, dy, 1e-2);
    keep(o, "mse losses", losses, M);
    keep(o, "mse dy", dy, M * N);
    free(y), free(ty), free(losses), free(dy), free(r);
}
OP_TESTS(mse, check_mse)

/* ---- the transposes behind the weight gradients ---------------------------------------- */

/* transpose and transpose16 (and colsum16_acc) of every kernel table against a plain loop: the values moved bit for
 * bit, the column sums (a linear layer's bias gradient) the sequential sums row after row added
 * to what colsum held: the order that makes them the same bits on every path. The shapes cross
 * the 8x8 blocks, the 16-column strips, the 64-row blocks and the 512-column super-strips, below
 * and above PAR_MIN, with 1 and 3 threads (uneven splits). */
static void check_transposes(const ds_cpu_kernels *k)
{
    static const int64_t shapes[][2] = {{1, 1}, {7, 5}, {8, 16}, {37, 19}, {64, 48}, {200, 33},
                                        {1000, 333}, {129, 1030}, {1024, 256}, {70, 530}};
    ds_rng rng;
    ds_rng_seed(&rng, 4242);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t R = shapes[si][0], C = shapes[si][1];
        float *x = frandn(&rng, R * C, 0, 1), *y = fbuf(R * C), *cs = frandn(&rng, C, 0, 1), *cs0 = fcopy(cs, C);
        uint16_t *h = calloc((size_t)(R * C), 2), *ht = calloc((size_t)(R * C), 2);
        cr_assert(h && ht);
        for (int mode = 0; mode < 3; mode++) { /* fp32, bf16, fp16 */
            memcpy(cs, cs0, (size_t)C * sizeof(float));
            if (mode == 0) {
                k->transpose(x, y, R, C, cs);
            } else {
                const int m16 = mode == 1 ? DS_ROUND_BF16 : DS_ROUND_FP16;
                for (int64_t i = 0; i < R * C; i++)
                    h[i] = m16 == DS_ROUND_BF16 ? ds_f32_to_bf16(x[i]) : ds_f32_to_f16(x[i]);
                k->transpose16(h, ht, R, C, cs, m16);
                /* colsum16_acc: the same column sums without the transpose */
                float *cs2 = fcopy(cs0, C);
                k->colsum16_acc(h, cs2, R, C, m16);
                for (int64_t c = 0; c < C; c++)
                    cr_assert(memcmp(&cs2[c], &cs[c], 4) == 0, "%s colsum16_acc (%s) %lldx%lld: colsum[%lld] %a, "
                              "transpose16's %a", k->variant, mode == 1 ? "bf16" : "fp16", (long long)R,
                              (long long)C, (long long)c, cs2[c], cs[c]);
                free(cs2);
            }
            for (int64_t c = 0; c < C; c++) {
                float sum = 0;
                for (int64_t r = 0; r < R; r++) {
                    float v = x[r * C + c];
                    if (mode == 0) {
                        cr_assert(memcmp(&y[c * R + r], &v, 4) == 0, "%s transpose %lldx%lld: [%lld,%lld]",
                                  k->variant, (long long)R, (long long)C, (long long)c, (long long)r);
                    } else {
                        cr_assert_eq(ht[c * R + r], h[r * C + c], "%s transpose16 (%s) %lldx%lld: [%lld,%lld]",
                                     k->variant, mode == 1 ? "bf16" : "fp16", (long long)R, (long long)C,
                                     (long long)c, (long long)r);
                        v = mode == 1 ? ds_bf16_to_f32(h[r * C + c]) : ds_f16_to_f32(h[r * C + c]);
                    }
                    sum += v;
                }
                const float want = cs0[c] + sum;
                cr_assert(memcmp(&cs[c], &want, 4) == 0, "%s transpose%s %lldx%lld: colsum[%lld] %a, expected %a",
                          k->variant, mode ? "16" : "", (long long)R, (long long)C, (long long)c, cs[c], want);
            }
        }
        free(x), free(y), free(cs), free(cs0), free(h), free(ht);
    }
}

Test(kernels, transposes_move_bits_and_sum_in_row_order)
{
    for (int threads = 1; threads <= 3; threads += 2) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        check_transposes(&ds_cpu_kernels_avx2);
        check_transposes(&ds_cpu_kernels_generic);
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
            check_transposes(&ds_cpu_kernels_avx512);
    }
    check_transposes(&ds_cpu_kernels_avx2_serial);
    check_transposes(&ds_cpu_kernels_generic_serial);
}

/* ---- torch's answers at the edges: constant layernorm rows, NaN through ReLU ------------ */

/* A constant row (variance 0) normalises to exactly 0, so y is the bias and the weight gradient
 * gets nothing from it, as torch's Welford moments give; at eps 1e-12 (BERT's) a mean a few ulps
 * off became y = -0.34 through rstd 1e6. ReLU keeps NaN (torch's clamp_min) and its backward
 * passes dy where the output is NaN (threshold_backward), so that a NaN reaches the overflow check. */
static void check_edges(const ds_cpu_kernels *k)
{
    enum { M = 3, C = 768 };
    static float x[M * C], y[M * C], w[C], b[C], dy[M * C], dx[M * C], dw[C], db[C];
    float mean[M], rstd[M];
    const float vals[M] = {0.7f, -123.456f, 3.0e-3f};
    for (int m = 0; m < M; m++)
        for (int c = 0; c < C; c++)
            x[m * C + c] = vals[m], dy[m * C + c] = 0.01f * (float)((c * 7 + m) % 13) - 0.05f;
    for (int c = 0; c < C; c++)
        w[c] = 1.0f + 0.001f * (float)c, b[c] = 0.25f - 0.0005f * (float)c, dw[c] = db[c] = 0.0f;
    for (int e = 0; e < 2; e++) {
        const float eps = e ? 1e-12f : 1e-5f;
        k->layernorm_fwd(x, w, b, y, mean, rstd, M, C, eps);
        for (int m = 0; m < M; m++) {
            cr_assert(memcmp(&mean[m], &vals[m], 4) == 0, "%s layernorm eps %g: constant row %d's mean %a, expected %a",
                      k->variant, (double)eps, m, mean[m], vals[m]);
            for (int c = 0; c < C; c++)
                cr_assert(memcmp(&y[m * C + c], &b[c], 4) == 0, "%s layernorm eps %g: y[%d,%d] %.9g, expected the "
                          "bias %.9g", k->variant, (double)eps, m, c, y[m * C + c], b[c]);
        }
    }
    k->layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, M, C, 0);
    for (int c = 0; c < C; c++)
        cr_assert(dw[c] == 0.0f, "%s layernorm: dw[%d] %g from constant rows, expected 0", k->variant, c, dw[c]);
    const float nan = nanf(""), in[5] = {nan, -nan, -1.0f, 0.0f, 2.0f};
    float out[5], g[5] = {1, 2, 3, 4, 5}, dgo[5];
    k->relu_fwd(in, out, 5);
    cr_assert(isnan(out[0]) && isnan(out[1]) && out[2] == 0.0f && out[3] == 0.0f && out[4] == 2.0f,
              "%s relu(NaN, -NaN, -1, 0, 2) = %g %g %g %g %g", k->variant, out[0], out[1], out[2], out[3], out[4]);
    k->relu_bwd(out, g, dgo, 5, 0);
    cr_assert(dgo[0] == 1.0f && dgo[1] == 2.0f && dgo[2] == 0.0f && dgo[3] == 0.0f && dgo[4] == 5.0f,
              "%s relu_bwd at (NaN, NaN, 0, 0, 2) = %g %g %g %g %g", k->variant, dgo[0], dgo[1], dgo[2], dgo[3], dgo[4]);
}

Test(kernels, constant_layernorm_rows_and_nan_through_relu)
{
    check_edges(&ds_cpu_kernels_generic);
    check_edges(&ds_cpu_kernels_generic_serial);
    check_edges(&ds_cpu_kernels_avx2);
    check_edges(&ds_cpu_kernels_avx2_serial);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        check_edges(&ds_cpu_kernels_avx512);
}

/* ---- the softmax's bf16 outputs (attention on bf16 units) ------------------------------ */

/* attn_softmax_fwd with p16 and attn_softmax_bwd with ds16 and p16, of every kernel table, against
 * the same kernel without them: the fp32 probabilities bit for bit, and each bf16 value the fp32
 * one rounded to nearest even (ds_f32_to_bf16); causal and not, rows shorter and longer than a
 * vector, 1 and 3 threads. */
static void check_softmax16(const ds_cpu_kernels *k)
{
    static const int64_t shapes[][2] = {{1, 1}, {3, 7}, {2, 64}, {3, 130}};
    ds_rng rng;
    ds_rng_seed(&rng, 77);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int causal = 0; causal < 2; causal++) {
            const int64_t BH = shapes[si][0], T = shapes[si][1], n = BH * T * T;
            float *s = frandn(&rng, n, 0, 3), *a = fcopy(s, n), *a16 = fcopy(s, n);
            float *dp = frandn(&rng, n, 0, 1), *g = fcopy(dp, n), *g16 = fcopy(dp, n);
            uint16_t *p16 = malloc((size_t)n * 2), *ds16 = malloc((size_t)n * 2), *pb = malloc((size_t)n * 2);
            cr_assert(p16 && ds16 && pb);
            memset(p16, 0xff, (size_t)n * 2), memset(ds16, 0xff, (size_t)n * 2), memset(pb, 0xff, (size_t)n * 2);
            k->attn_softmax_fwd(a, NULL, BH, T, 0.37f, causal);
            k->attn_softmax_fwd(a16, p16, BH, T, 0.37f, causal);
            k->attn_softmax_bwd(a, g, NULL, NULL, BH, T, 0.37f, causal);
            k->attn_softmax_bwd(a, g16, ds16, pb, BH, T, 0.37f, causal);
            cr_assert(memcmp(g16, dp, (size_t)n * sizeof(float)) == 0, "%s softmax_bwd with ds16 wrote dp", k->variant);
            for (int64_t i = 0; i < n; i++) {
                cr_assert(memcmp(&a[i], &a16[i], 4) == 0, "%s softmax_fwd with p16 (BH %lld, T %lld, causal %d): "
                          "P[%lld] %a, without %a", k->variant, (long long)BH, (long long)T, causal, (long long)i,
                          a16[i], a[i]);
                cr_assert_eq(p16[i], ds_f32_to_bf16(a[i]), "%s softmax_fwd p16[%lld] (T %lld, causal %d)", k->variant,
                             (long long)i, (long long)T, causal);
                cr_assert_eq(pb[i], ds_f32_to_bf16(a[i]), "%s softmax_bwd p16[%lld] (T %lld, causal %d)", k->variant,
                             (long long)i, (long long)T, causal);
                cr_assert_eq(ds16[i], ds_f32_to_bf16(g[i]), "%s softmax_bwd ds16[%lld] = %#x, expected %#x (%a; T %lld, "
                             "causal %d)", k->variant, (long long)i, ds16[i], ds_f32_to_bf16(g[i]), g[i], (long long)T,
                             causal);
            }
            free(s), free(a), free(a16), free(dp), free(g), free(g16), free(p16), free(ds16), free(pb);
        }
}

Test(kernels, softmax_bf16_outputs_are_the_fp32_ones_rounded)
{
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    for (int threads = 1; threads <= 3; threads += 2) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        check_softmax16(&ds_cpu_kernels_generic);
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
            check_softmax16(&ds_cpu_kernels_avx2);
        if (avx512)
            check_softmax16(&ds_cpu_kernels_avx512);
    }
    check_softmax16(&ds_cpu_kernels_generic_serial);
}

/* ---- GELU on 16-bit values through tables ------------------------------------------------ */

/* gelu_fwd16_lut and gelu_bwd16_lut (with the tables gelu_tables16 builds) against gelu_fwd16
 * and gelu_bwd16 of the same kernel table, bit for bit: every 16-bit value as input (NaNs, infs
 * and subnormals included), both modes and both forms, backward with and without accumulate,
 * n a multiple of no chunk size; and the tables themselves the same bits in every kernel table.
 * A NaN result need only be a NaN: which of two NaN operands a product passes on (and so its sign)
 * is the compiler's operand order, not the formula's. */
static int nan16(uint16_t u, int mode) { return (u & 0x7fffu) > (mode == DS_ROUND_BF16 ? 0x7f80u : 0x7c00u); }

static int gelu_same16(uint16_t a, uint16_t b, int mode) { return a == b || (nan16(a, mode) && nan16(b, mode)); }

static int same_floats(const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0 && !(isnan(a[i]) && isnan(b[i])))
            return 0;
    return 1;
}

static void check_gelu16_lut(const ds_cpu_kernels *k, uint16_t *ref_lut[2][2], float *ref_dlut[2][2])
{
    const int64_t n = 2 * 65536 + 37;
    uint16_t *x = malloc((size_t)n * 2), *dy = malloc((size_t)n * 2), *a = malloc((size_t)n * 2),
             *b = malloc((size_t)n * 2), *lut = malloc(65536 * 2);
    float *dlut = malloc(65536 * sizeof(float));
    cr_assert(x && dy && a && b && lut && dlut);
    ds_rng rng;
    ds_rng_seed(&rng, 4242);
    for (int64_t i = 0; i < n; i++) /* every value twice, in a scrambled order, then random ones */
        x[i] = i < 2 * 65536 ? (uint16_t)((uint32_t)i * 40503u) : (uint16_t)ds_rng_next(&rng);
    for (int m = 0; m < 2; m++) {
        const int mode = m ? DS_ROUND_FP16 : DS_ROUND_BF16;
        for (int64_t i = 0; i < n; i++) { /* finite gradients of a moderate size, and some zeros */
            float g = i % 97 == 0 ? 0.0f : (float)ds_rng_normal(&rng) * 0.05f;
            dy[i] = mode == DS_ROUND_BF16 ? ds_f32_to_bf16(g) : ds_f32_to_f16(g);
        }
        for (int ap = 0; ap < 2; ap++) {
            k->gelu_tables16(lut, dlut, ap, mode);
            if (!ref_lut[m][ap]) { /* the first kernel table's are the reference */
                ref_lut[m][ap] = malloc(65536 * 2), ref_dlut[m][ap] = malloc(65536 * sizeof(float));
                cr_assert(ref_lut[m][ap] && ref_dlut[m][ap]);
                memcpy(ref_lut[m][ap], lut, 65536 * 2), memcpy(ref_dlut[m][ap], dlut, 65536 * sizeof(float));
            }
            int tables_same = same_floats(dlut, ref_dlut[m][ap], 65536);
            for (int64_t u = 0; u < 65536; u++)
                tables_same &= gelu_same16(lut[u], ref_lut[m][ap][u], mode);
            cr_assert(tables_same,
                      "%s: GELU tables (mode %d, approximate %d) differ from the first kernel table's", k->variant,
                      mode, ap);
            k->gelu_fwd16(x, a, n, ap, mode);
            k->gelu_fwd16_lut(x, lut, b, n);
            for (int64_t i = 0; i < n; i++)
                cr_assert(gelu_same16(a[i], b[i], mode), "%s gelu_fwd16_lut (mode %d, approximate %d) of %#x: %#x, computed %#x",
                             k->variant, mode, ap, x[i], b[i], a[i]);
            /* in place: y = x */
            memcpy(b, x, (size_t)n * 2);
            k->gelu_fwd16_lut(b, lut, b, n);
            for (int64_t i = 0; i < n; i++)
                cr_assert(gelu_same16(a[i], b[i], mode), "%s gelu_fwd16_lut in place (mode %d, approximate %d) of "
                          "%#x: %#x, computed %#x", k->variant, mode, ap, x[i], b[i], a[i]);
            for (int acc = 0; acc < 2; acc++) {
                for (int64_t i = 0; i < n; i++) /* the previous dx for accumulate */
                    a[i] = b[i] = dy[(i * 7 + 3) % n];
                k->gelu_bwd16(x, dy, a, n, ap, acc, mode);
                k->gelu_bwd16_lut(x, dlut, dy, b, n, acc, mode);
                for (int64_t i = 0; i < n; i++)
                    cr_assert(gelu_same16(a[i], b[i], mode), "%s gelu_bwd16_lut (mode %d, approximate %d, accumulate %d) at %#x, dy "
                                 "%#x: %#x, computed %#x", k->variant, mode, ap, acc, x[i], dy[i], b[i], a[i]);
                /* in place: dx = x, then dx = dy (accumulate then adds to x or dy itself) */
                for (int alias = 0; alias < 2; alias++) {
                    uint16_t *c = malloc((size_t)n * 2), *d = malloc((size_t)n * 2);
                    cr_assert(c && d);
                    memcpy(c, alias ? dy : x, (size_t)n * 2);
                    memcpy(d, alias ? dy : x, (size_t)n * 2);
                    k->gelu_bwd16(alias ? x : c, alias ? c : dy, c, n, ap, acc, mode);
                    k->gelu_bwd16_lut(alias ? x : d, dlut, alias ? d : dy, d, n, acc, mode);
                    for (int64_t i = 0; i < n; i++)
                        cr_assert(gelu_same16(c[i], d[i], mode), "%s gelu_bwd16_lut with dx = %s (mode %d, approximate %d, "
                                  "accumulate %d) at %#x: %#x, computed %#x", k->variant, alias ? "dy" : "x", mode, ap,
                                  acc, x[i], d[i], c[i]);
                    free(c), free(d);
                }
            }
        }
    }
    free(x), free(dy), free(a), free(b), free(lut), free(dlut);
}

Test(kernels, gelu16_tables_give_the_computed_bits)
{
    uint16_t *ref_lut[2][2] = {{NULL}};
    float *ref_dlut[2][2] = {{NULL}};
    check_gelu16_lut(&ds_cpu_kernels_generic, ref_lut, ref_dlut);
    check_gelu16_lut(&ds_cpu_kernels_generic_serial, ref_lut, ref_dlut);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        check_gelu16_lut(&ds_cpu_kernels_avx2, ref_lut, ref_dlut);
        check_gelu16_lut(&ds_cpu_kernels_avx2_serial, ref_lut, ref_dlut);
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        check_gelu16_lut(&ds_cpu_kernels_avx512, ref_lut, ref_dlut);
        check_gelu16_lut(&ds_cpu_kernels_avx512_serial, ref_lut, ref_dlut);
    }
    for (int m = 0; m < 2; m++)
        for (int ap = 0; ap < 2; ap++)
            free(ref_lut[m][ap]), free(ref_dlut[m][ap]);
}

/* ---- backends by name ------------------------------------------------------------------- */

Test(backend, names)
{
    ds_backend *be = NULL;
    ds_error err = {0};
    cr_assert_eq(ds_backend_create(&be, "cpu", &err), DS_OK, "%s", err.msg);
    const char *v = ds_backend_describe(be), *forced = getenv("DS_CPU_KERNELS");
    if (forced && *forced) /* the variant cpuid's pick gives way to */
        cr_expect_str_eq(v, forced, "cpu with DS_CPU_KERNELS=%s describes itself as %s", forced, v);
    else /* cpuid's pick: avx2 where the CPU has it (avx512 only when named) */
        cr_expect_str_eq(v, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")
                                ? "avx2" : "generic", "cpu describes itself as %s", v);
    ds_backend_destroy(be);
    cr_assert_eq(ds_backend_create(&be, "cpu:generic", &err), DS_OK, "%s", err.msg);
    cr_expect_str_eq(ds_backend_describe(be), "generic");
    ds_backend_destroy(be);
    /* DS_CPU_KERNELS stands in for cpuid's pick, and only for it */
    char *saved = getenv("DS_CPU_KERNELS") ? strdup(getenv("DS_CPU_KERNELS")) : NULL;
    setenv("DS_CPU_KERNELS", "generic", 1);
    cr_assert_eq(ds_backend_create(&be, "cpu", &err), DS_OK, "%s", err.msg);
    cr_expect_str_eq(ds_backend_describe(be), "generic");
    ds_backend_destroy(be);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        cr_assert_eq(ds_backend_create(&be, "cpu:avx2", &err), DS_OK, "%s", err.msg);
        cr_expect_str_eq(ds_backend_describe(be), "avx2", "a named variant is not overridden");
        ds_backend_destroy(be);
    }
    setenv("DS_CPU_KERNELS", "sse9", 1);
    cr_expect_eq(ds_backend_create(&be, "cpu", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "DS_CPU_KERNELS=sse9") != NULL, "%s", err.msg);
    if (saved)
        setenv("DS_CPU_KERNELS", saved, 1);
    else
        unsetenv("DS_CPU_KERNELS");
    free(saved);
    cr_expect_eq(ds_backend_create(&be, "cpu:sse9", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "sse9") != NULL, "%s", err.msg);
    cr_expect_eq(ds_backend_create(&be, "tpu", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "tpu") != NULL, "%s", err.msg);
    /* cuda: unsupported here, unless the machine has a GPU and the module (gpu-check's host stage) */
    ds_status cst = ds_backend_create(&be, "cuda", &err);
    cr_expect(cst == DS_ERR_UNSUPPORTED || cst == DS_OK, "cuda: %d: %s", (int)cst, err.msg);
    if (cst == DS_OK)
        ds_backend_destroy(be);
    ds_status st = ds_backend_create(&be, "cpu:avx2", &err);
    cr_expect(st == DS_OK || st == DS_ERR_UNSUPPORTED, "cpu:avx2: %s", err.msg);
    if (st == DS_OK)
        ds_backend_destroy(be);
    /* avx512: where the CPU has AVX-512 F/BW/VL/DQ, else unsupported with the reason (never
     * cpuid's pick: see ds_cpu_backend_create) */
    const int has512 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                       __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512dq");
    st = ds_backend_create(&be, "cpu:avx512", &err);
    if (has512) {
        cr_expect_eq(st, DS_OK, "cpu:avx512: %s", err.msg);
        if (st == DS_OK) {
            cr_expect_str_eq(ds_backend_describe(be), "avx512");
            ds_backend_destroy(be);
        }
    } else {
        cr_expect_eq(st, DS_ERR_UNSUPPORTED, "cpu:avx512 on a CPU without AVX-512");
        cr_expect(strstr(err.msg, "AVX-512") != NULL, "%s", err.msg);
    }
}

/* ---- optimizers: one fused step against torch's formulas in double ---------------------- */

static const char *const variants[] = {"cpu:generic", "cpu:avx2", "cpu:avx512"};


/* torch.optim.Adam / AdamW (single-tensor), g already multiplied by grad_scale:
 *   AdamW: p *= 1 - lr*wd.   Adam (L2): g += wd*p, no decay.
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)   (no bias correction: the 1-b^t are 1) */
static void adam_ref(double *p, double g, double *m, double *v, const ds_adamw_args *a)
{
    g *= a->grad_scale;
    if (a->adam_w_mode)
        *p *= 1.0 - (double)a->lr * a->weight_decay;
    else
        g += (double)a->weight_decay * *p;
    *m = a->beta1 * *m + (1.0 - a->beta1) * g;
    *v = a->beta2 * *v + (1.0 - a->beta2) * g * g;
    double c1 = 1, c2 = 1;
    if (a->bias_correction) {
        c1 = 1.0 - pow(a->beta1, (double)a->step);
        c2 = 1.0 - pow(a->beta2, (double)a->step);
    }
    *p -= a->lr / c1 * *m / (sqrt(*v) / sqrt(c2) + a->eps);
}

static void check_adam_case(ds_backend *be, int64_t n, int adam_w_mode, int bias_correction)
{
    ds_rng rng;
    ds_rng_seed(&rng, 1212 + (uint64_t)n);
    float *p = frandn(&rng, n, 0, 1), *m = fbuf(n), *v = fbuf(n);
    ds_adamw_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                       .adam_w_mode = adam_w_mode, .bias_correction = bias_correction, .grad_scale = 0.5f};
    for (int64_t step = 1; step <= 3; step++) {
        a.step = step;
        float *g = frandn(&rng, n, 0, 1);
        g[0] = 0.0f; /* a zero gradient: the step is lr*m/(sqrt v + eps), m from earlier steps */
        double *rp = malloc((size_t)n * sizeof *rp), *rm = malloc((size_t)n * sizeof *rm),
               *rv = malloc((size_t)n * sizeof *rv);
        for (int64_t i = 0; i < n; i++) {
            rp[i] = p[i], rm[i] = m[i], rv[i] = v[i];
            adam_ref(&rp[i], g[i], &rm[i], &rv[i], &a);
        }
        float *p0 = fcopy(p, n), *m0 = fcopy(m, n), *v0 = fcopy(v, n);
        CALL(be, adamw_step, p, g, m, v, n, &a);
        for (int64_t i = 0; i < n; i++) {
            /* float32 arithmetic of a handful of operations: ~1e-6 relative; the update itself
             * is O(lr), checked to 1e-4 of lr */
            cr_assert(fabs(p[i] - rp[i]) <= 1e-6 * fabs(rp[i]) + 1e-4 * a.lr,
                      "%s adam(w_mode %d, bias_correction %d) step %lld p[%lld] = %.9g, expected %.9g",
                      ds_backend_describe(be), adam_w_mode, bias_correction, (long long)step, (long long)i,
                      p[i], rp[i]);
            /* m and v: float rounding of each term (the gradient with L2 and m may cancel to ~0) */
            double gi = fabs((double)g[i] * a.grad_scale) + (adam_w_mode ? 0.0 : fabs(a.weight_decay * (double)p0[i]));
            double mscale = a.beta1 * fabs((double)m0[i]) + (1 - a.beta1) * gi;
            double vscale = a.beta2 * (double)v0[i] + (1 - a.beta2) * gi * gi;
            cr_assert(fabs(m[i] - rm[i]) <= 1e-6 * mscale + 1e-12, "step %lld m[%lld] = %.9g, expected %.9g",
                      (long long)step, (long long)i, m[i], rm[i]);
            cr_assert(fabs(v[i] - rv[i]) <= 1e-6 * vscale + 1e-15, "step %lld v[%lld] = %.9g, expected %.9g",
                      (long long)step, (long long)i, v[i], rv[i]);
        }
        free(g), free(rp), free(rm), free(rv), free(p0), free(m0), free(v0);
    }
    free(p), free(m), free(v);
}

Test(optim, adamw_step_against_torch_formula)
{
    for (size_t k = 0; k < 2; k++) {
        ds_backend *be = try_backend(variants[k]);
        if (!be)
            continue;
        for (int large = 0; large <= 1; large++) {
            large_threads(large);
            int64_t n = large ? 20000 : 37;
            check_adam_case(be, n, 1, 1); /* AdamW */
            check_adam_case(be, n, 0, 1); /* Adam with L2 */
            check_adam_case(be, n, 1, 0); /* no bias correction */
        }
        ds_backend_destroy(be);
    }
}

/* The first AdamW step with bias correction moves every parameter by ~lr against the sign of
 * its gradient (m/sqrt(v) = g/|g|), whatever the gradient's scale. */
Test(optim, adamw_first_step_is_lr_sign)
{
    ds_backend *be = open_backend("cpu");
    float p[4] = {1, 1, 1, 1}, g[4] = {1e-3f, -50, 7, -0.25f}, m[4] = {0}, v[4] = {0};
    ds_adamw_args a = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0,
                       .step = 1, .adam_w_mode = 1, .bias_correction = 1, .grad_scale = 1};
    CALL(be, adamw_step, p, g, m, v, 4, &a);
    for (int i = 0; i < 4; i++)
        cr_expect(fabs((1.0f - p[i]) - (g[i] > 0 ? 0.01 : -0.01)) < 1e-5, "p[%d] = %.9g", i, p[i]);
    ds_backend_destroy(be);
}

/* torch.optim.SGD: d = g*grad_scale + wd*p; with momentum: buf = d on the first step, else
 * buf = momentum*buf + (1-dampening)*d; step = nesterov ? d + momentum*buf : buf; p -= lr*step.
 * Without momentum: p -= lr*d. */
static void sgd_ref(double *p, double g, double *buf, const ds_sgd_args *a)
{
    double d = g * a->grad_scale + (double)a->weight_decay * *p;
    if (a->momentum == 0) {
        *p -= a->lr * d;
        return;
    }
    *buf = a->first_step ? d : a->momentum * *buf + (1.0 - a->dampening) * d;
    double step = a->nesterov ? d + a->momentum * *buf : *buf;
    *p -= a->lr * step;
}

static void check_sgd_case(ds_backend *be, int64_t n, float momentum, float dampening, int nesterov)
{
    ds_rng rng;
    ds_rng_seed(&rng, 1313 + (uint64_t)n);
    float *p = frandn(&rng, n, 0, 1), *buf = fconst(n, NAN);
    ds_sgd_args a = {.lr = 0.05f, .momentum = momentum, .dampening = dampening, .weight_decay = 0.01f,
                     .nesterov = nesterov, .grad_scale = 0.8f};
    for (int step = 1; step <= 3; step++) {
        a.first_step = step == 1; /* NaN in buf before the first step: it must not be read */
        float *g = frandn(&rng, n, 0, 1);
        double *rp = malloc((size_t)n * sizeof *rp), *rb = malloc((size_t)n * sizeof *rb);
        for (int64_t i = 0; i < n; i++) {
            rp[i] = p[i], rb[i] = buf[i];
            sgd_ref(&rp[i], g[i], &rb[i], &a);
        }
        CALL(be, sgd_step, p, g, buf, n, &a);
        for (int64_t i = 0; i < n; i++) {
            cr_assert(fabs(p[i] - rp[i]) <= 1e-6 * (fabs(rp[i]) + 1),
                      "%s sgd(momentum %g, dampening %g, nesterov %d) step %d p[%lld] = %.9g, expected %.9g",
                      ds_backend_describe(be), momentum, dampening, nesterov, step, (long long)i, p[i], rp[i]);
            if (momentum != 0)
                cr_assert(fabs(buf[i] - rb[i]) <= 1e-6 * (fabs(rb[i]) + 1), "step %d buf[%lld] = %.9g, expected %.9g",
                          step, (long long)i, buf[i], rb[i]);
        }
        free(g), free(rp), free(rb);
    }
    free(p), free(buf);
}

Test(optim, sgd_step_against_torch_formula)
{
    for (size_t k = 0; k < 2; k++) {
        ds_backend *be = try_backend(variants[k]);
        if (!be)
            continue;
        for (int large = 0; large <= 1; large++) {
            large_threads(large);
            int64_t n = large ? 20000 : 37;
            check_sgd_case(be, n, 0.0f, 0.0f, 0);  /* plain */
            check_sgd_case(be, n, 0.9f, 0.0f, 0);  /* momentum */
            check_sgd_case(be, n, 0.9f, 0.25f, 0); /* momentum with dampening */
            check_sgd_case(be, n, 0.9f, 0.0f, 1);  /* nesterov */
        }
        ds_backend_destroy(be);
    }
}

/* ---- reductions and scale --------------------------------------------------------------- */

Test(reduce, sum_sumsq_nonfinite_scale)
{
    for (size_t k = 0; k < 2; k++) {
        ds_backend *be = try_backend(variants[k]);
        if (!be)
            continue;
        for (int large = 0; large <= 1; large++) {
            large_threads(large);
            const int64_t n = large ? 50001 : 37; /* not a multiple of the 4096-element blocks */
            ds_rng rng;
            ds_rng_seed(&rng, 1414);
            float *x = frandn(&rng, n, 0.5, 2);
            double s = 0, ss = 0, got;
            for (int64_t i = 0; i < n; i++)
                s += x[i], ss += (double)x[i] * x[i];
            /* float partial sums over blocks of <= 4096, added in double: ~1e-6 relative of
             * the sum of magnitudes */
            CALL(be, sum, x, n, &got);
            cr_expect(fabs(got - s) <= 1e-6 * (n * 2.5), "%s sum %.12g, expected %.12g", variants[k], got, s);
            CALL(be, sumsq, x, n, &got);
            cr_expect(fabs(got - ss) <= 1e-6 * ss, "%s sumsq %.12g, expected %.12g", variants[k], got, ss);
            int64_t bad = -1;
            CALL(be, nonfinite, x, n, &bad);
            cr_expect_eq(bad, 0);
            /* finite extremes are not counted; NaN (either sign), +inf and -inf are */
            x[1] = FLT_MAX, x[2] = -FLT_MAX, x[3] = 1e-45f, x[4] = -0.0f;
            CALL(be, nonfinite, x, n, &bad);
            cr_expect_eq(bad, 0, "%s: finite extremes counted as non-finite: %lld", variants[k], (long long)bad);
            x[0] = NAN, x[5] = INFINITY, x[6] = -INFINITY, x[7] = -NAN, x[n - 1] = INFINITY;
            int64_t want = 5;
            if (large)
                x[PAR_MIN + 3] = NAN, x[n - 2] = -INFINITY, want += 2;
            CALL(be, nonfinite, x, n, &bad);
            cr_expect_eq(bad, want, "%s nonfinite: %lld, expected %lld", variants[k], (long long)bad, (long long)want);
            /* scale */
            float *y = frandn(&rng, n, 0, 1), *y0 = fcopy(y, n);
            CALL(be, scale, y, n, 0.375f);
            for (int64_t i = 0; i < n; i++)
                cr_assert(y[i] == y0[i] * 0.375f, "scale y[%lld]", (long long)i);
            free(x), free(y), free(y0);
        }
        ds_backend_destroy(be);
    }
}

/* copy and zero, which share large buffers between the threads: every byte
 * moved or cleared and none outside, at sizes around the 1 MiB where the threads start and with
 * odd lengths and offsets, and overlapping copies (memmove's) both ways, with 1 and 3 threads */
Test(backend, copy_and_zero_move_every_byte)
{
    ds_backend *b = open_backend("cpu");
    const size_t sizes[] = {0, 1, 63, 4097, (1 << 20) - 1, 1 << 20, (1 << 20) + 65, 3 * (1 << 20) + 7};
    const size_t big = 3 * (1 << 20) + 7 + 256;
    unsigned char *src = malloc(big), *dst = malloc(big), *want = malloc(big);
    cr_assert(src && dst && want);
    for (size_t i = 0; i < big; i++)
        src[i] = (unsigned char)(i * 131 + 7);
    /* threads 1 and 3, then 3 asked for with dynamic teams (the runtime may start fewer, by the
     * load: the parts follow the team's size, not the request) */
    for (int run = 0; run < 3; run++) {
        const int threads = run == 0 ? 1 : 3;
#ifdef _OPENMP
        omp_set_num_threads(threads);
        omp_set_dynamic(run == 2);
#endif
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
            for (size_t off = 0; off < 2; off++) {
                const size_t n = sizes[si], o = off * 3;
                memset(dst, 0xa5, big);
                cr_assert_eq(b->ops->copy(b, dst + o, src + 5, n), DS_OK);
                memset(want, 0xa5, big);
                memcpy(want + o, src + 5, n);
                cr_assert(memcmp(dst, want, big) == 0, "copy of %zu bytes at offset %zu, %d threads", n, o, threads);
                cr_assert_eq(b->ops->zero(b, dst + o + 1, n), DS_OK);
                memset(want + o + 1, 0, n);
                cr_assert(memcmp(dst, want, big) == 0, "zero of %zu bytes at offset %zu, %d threads", n, o + 1,
                          threads);
                /* overlapping: forward and back by 100 bytes */
                memcpy(dst, src, big);
                memcpy(want, src, big);
                if (n + 200 <= big) {
                    cr_assert_eq(b->ops->copy(b, dst + 100, dst, n), DS_OK);
                    memmove(want + 100, want, n);
                    cr_assert(memcmp(dst, want, big) == 0, "overlapping copy forward, %zu bytes", n);
                    cr_assert_eq(b->ops->copy(b, dst, dst + 100, n), DS_OK);
                    memmove(want, want + 100, n);
                    cr_assert(memcmp(dst, want, big) == 0, "overlapping copy back, %zu bytes", n);
                }
            }
    }
#ifdef _OPENMP
    omp_set_num_threads(2);
    omp_set_dynamic(0);
#endif
    free(src), free(dst), free(want);
    ds_backend_destroy(b);
}

/* The CPU backend keeps separate scratch buffers for attention's backward and the linear
 * weight gradient; growing one must leave the other alone (a stray free of the attention
 * scratch when the linear one grew made a net whose widest linear layer sits below an
 * attention layer crash: use after free, then a double free). */
Test(backend, scratch_buffers_are_independent)
{
    ds_backend *b;
    ds_error err = {0};
    cr_assert_eq(ds_backend_create(&b, "cpu", &err), DS_OK, "%s", err.msg);
    ds_rng r;
    ds_rng_seed(&r, 5);
    const int64_t B = 2, T = 16, C = 8, H = 2, M = 64, K = 8, N = 4096;
    float *qkv = frandn(&r, B * T * 3 * C, 0, 1), *dout = frandn(&r, B * T * C, 0, 1);
    float *out = calloc((size_t)(B * T * C), sizeof(float)), *att = calloc((size_t)(B * H * T * T), sizeof(float));
    float *d1 = calloc((size_t)(B * T * 3 * C), sizeof(float)), *d2 = calloc((size_t)(B * T * 3 * C), sizeof(float));
    float *x = frandn(&r, M * K, 0, 1), *dy = frandn(&r, M * N, 0, 1), *w = frandn(&r, N * K, 0, 1);
    float *dw = calloc((size_t)(N * K), sizeof(float));
    cr_assert_eq(b->ops->attention_fwd(b, qkv, out, att, B, T, C, H, 1), DS_OK, "%s", b->err.msg);
    cr_assert_eq(b->ops->attention_bwd(b, dout, qkv, att, d1, B, T, C, H, 1), DS_OK, "%s", b->err.msg);
    /* a weight gradient with M x N = 262144 floats of transposed dY: the linear scratch grows */
    cr_assert_eq(b->ops->linear_bwd(b, dy, x, w, NULL, dw, NULL, M, K, N, 0), DS_OK, "%s", b->err.msg);
    cr_assert_eq(b->ops->attention_bwd(b, dout, qkv, att, d2, B, T, C, H, 1), DS_OK, "%s", b->err.msg);
    cr_expect(memcmp(d1, d2, sizeof(float) * (size_t)(B * T * 3 * C)) == 0, "attention backward changed");
    ds_backend_destroy(b); /* a double free aborts here */
    free(qkv), free(dout), free(out), free(att), free(d1), free(d2), free(x), free(dy), free(w), free(dw);
}

/* bf16 training on the CPU: where the CPU has bf16 units (AMX-BF16, AVX512_BF16) and oneDNN a
 * fast bf16 matmul, set_precision(bf16) makes the linear layers multiply in bf16; elsewhere
 * the products stay fp32 (the same numbers: the engine feeds them bf16 values). Either way a
 * linear layer's forward and backward on bf16 values must match the fp32 products: bf16 x bf16
 * is exact in fp32, only the summation order may differ. */
/* bf16 products on the CPU's bf16 units take the avx512 kernels when cpuid picked the variant
 * (those CPUs all have AVX-512), and set_precision gives cpuid's pick back for the other
 * precisions; a named variant (or DS_CPU_KERNELS's) stays what it is. */
Test(backend, bf16_units_take_the_avx512_kernels)
{
    ds_backend *b;
    ds_error err = {0};
    unsetenv("DS_CPU_BF16_GEMM");
    const char *forced = getenv("DS_CPU_KERNELS");
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    const char *pick = forced && *forced ? forced : avx2 ? "avx2" : "generic";
    cr_assert_eq(ds_backend_create(&b, "cpu", &err), DS_OK, "%s", err.msg);
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    char desc[256], want[64];
    snprintf(desc, sizeof desc, "%s", ds_backend_describe(b));
    const int units = strstr(desc, "bf16 GEMMs") != NULL;
    snprintf(want, sizeof want, "%s, ", units && avx512 && !(forced && *forced) ? "avx512" : pick);
    cr_expect(strncmp(desc, want, strlen(want)) == 0, "bf16 on cpu: \"%s\", expected it to start \"%s\"", desc, want);
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_FP16), DS_OK, "%s", b->err.msg);
    cr_expect_str_eq(ds_backend_describe(b), pick, "fp16 after bf16: cpuid's pick again");
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    cr_expect_str_eq(ds_backend_describe(b), desc, "bf16 again");
    cr_assert_eq(b->ops->set_precision(b, 0), DS_OK, "%s", b->err.msg);
    cr_expect_str_eq(ds_backend_describe(b), pick, "fp32 after bf16: cpuid's pick again");
    /* the emulation (tests) keeps the pick: it runs the bf16-units paths on any CPU */
    setenv("DS_CPU_BF16_GEMM", "emulate", 1);
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    snprintf(want, sizeof want, "%s, ", pick);
    cr_expect(strncmp(ds_backend_describe(b), want, strlen(want)) == 0, "emulated: %s", ds_backend_describe(b));
    unsetenv("DS_CPU_BF16_GEMM");
    ds_backend_destroy(b);
    if (avx2) {
        cr_assert_eq(ds_backend_create(&b, "cpu:avx2", &err), DS_OK, "%s", err.msg);
        cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
        cr_expect(strncmp(ds_backend_describe(b), "avx2, ", 6) == 0, "a named variant under bf16: %s",
                  ds_backend_describe(b));
        ds_backend_destroy(b);
    }
}

static void linear_all(ds_backend *b, const float *x, const float *w, const float *bias, const float *dy,
                       float *y, float *dx, float *dw, float *db, int64_t M, int64_t K, int64_t N)
{
    memset(dw, 0, sizeof(float) * (size_t)(N * K));
    memset(db, 0, sizeof(float) * (size_t)N);
    cr_assert_eq(b->ops->linear_fwd(b, x, w, bias, y, M, K, N), DS_OK, "%s", b->err.msg);
    cr_assert_eq(b->ops->linear_bwd(b, dy, x, w, dx, dw, db, M, K, N, 0), DS_OK, "%s", b->err.msg);
}

Test(backend, bf16_products_where_the_cpu_has_bf16_units)
{
    ds_backend *ref, *b;
    ds_error err = {0};
    unsetenv("DS_CPU_BF16_GEMM");
    cr_assert_eq(ds_backend_create(&ref, "cpu", &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_backend_create(&b, "cpu", &err), DS_OK, "%s", err.msg);
    cr_assert(b->ops->set_precision != NULL);
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    int units = strstr(ds_backend_describe(b), "bf16 GEMMs") != NULL;
    char desc[256];
    snprintf(desc, sizeof desc, "%s", ds_backend_describe(b));
    ds_rng r;
    ds_rng_seed(&r, 11);
    const int64_t M = 96, K = 200, N = 72; /* not multiples of the units' tiles */
    float *x = frandn(&r, M * K, 0, 1), *w = frandn(&r, N * K, 0, 0.1), *bias = frandn(&r, N, 0, 0.1);
    float *dy = frandn(&r, M * N, 0, 1);
    b->ops->round16(b, x, M * K, DS_ROUND_BF16), b->ops->round16(b, w, N * K, DS_ROUND_BF16);
    b->ops->round16(b, dy, M * N, DS_ROUND_BF16);
    float *o[2][4];
    for (int i = 0; i < 2; i++) {
        o[i][0] = calloc((size_t)(M * N), 4), o[i][1] = calloc((size_t)(M * K), 4);
        o[i][2] = calloc((size_t)(N * K), 4), o[i][3] = calloc((size_t)N, 4);
        linear_all(i ? b : ref, x, w, bias, dy, o[i][0], o[i][1], o[i][2], o[i][3], M, K, N);
    }
    const int64_t len[4] = {M * N, M * K, N * K, N};
    const char *what[4] = {"y", "dx", "dw", "dbias"};
    for (int t = 0; t < 4; t++) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < len[t]; i++) {
            cr_assert(isfinite(o[1][t][i]), "%s[%lld] is %g", what[t], (long long)i, o[1][t][i]);
            num += (o[1][t][i] - o[0][t][i]) * (double)(o[1][t][i] - o[0][t][i]);
            den += (double)o[0][t][i] * o[0][t][i];
        }
        double rel = sqrt(num / den);
        cr_expect(rel <= (units ? 1e-5 : 0.0), "%s: relative error %.2e with %s", what[t], rel, ds_backend_describe(b));
    }
    if (!units) { /* the products stayed fp32 (bit for bit above); asking for bf16 units is an error */
        setenv("DS_CPU_BF16_GEMM", "1", 1);
        cr_expect_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_ERR_UNSUPPORTED);
        cr_expect(strstr(b->err.msg, "DS_CPU_BF16_GEMM=1: no bf16 products here") != NULL, "%s", b->err.msg);
        cr_expect(strstr(desc, ", fp32 GEMMs: ") != NULL, "%s", desc); /* and the description says why */
    }
    setenv("DS_CPU_BF16_GEMM", "0", 1); /* off, whatever the CPU */
    cr_expect_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK);
    cr_expect(strstr(ds_backend_describe(b), "fp32 GEMMs: DS_CPU_BF16_GEMM=0") != NULL, "%s", ds_backend_describe(b));
    setenv("DS_CPU_BF16_GEMM", "yes", 1);
    cr_expect_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_ERR_INVALID);
    /* emulate (tests): the bf16-units code paths with fp32 products of the widened operands */
    setenv("DS_CPU_BF16_GEMM", "emulate", 1);
    cr_expect_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    cr_expect(strstr(ds_backend_describe(b), "emulated in fp32") != NULL, "%s", ds_backend_describe(b));
    {
        float *e[4] = {calloc((size_t)(M * N), 4), calloc((size_t)(M * K), 4), calloc((size_t)(N * K), 4),
                       calloc((size_t)N, 4)};
        linear_all(b, x, w, bias, dy, e[0], e[1], e[2], e[3], M, K, N);
        for (int t = 0; t < 4; t++) {
            double num = 0, den = 0;
            for (int64_t i = 0; i < len[t]; i++) {
                num += (e[t][i] - o[0][t][i]) * (double)(e[t][i] - o[0][t][i]);
                den += (double)o[0][t][i] * o[0][t][i];
            }
            cr_expect(sqrt(num / den) <= 1e-6, "%s emulated: relative error %.2e", what[t], sqrt(num / den));
            free(e[t]);
        }
    }
    unsetenv("DS_CPU_BF16_GEMM");
    cr_expect_eq(b->ops->set_precision(b, DS_ROUND_FP16), DS_OK); /* fp16: fp32 products, as always */
    cr_expect(strstr(ds_backend_describe(b), "GEMMs") == NULL, "%s", ds_backend_describe(b));
    if (!units)
        fprintf(stderr, "bf16 products: not on this CPU (fp32 products, checked equal)\n");
    else
        fprintf(stderr, "bf16 products: %s\n", desc);
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 4; t++)
            free(o[i][t]);
    free(x), free(w), free(bias), free(dy);
    ds_backend_destroy(ref);
    ds_backend_destroy(b);
}

/* GELU on 16-bit activations through the backend: with the tables (the default), without them
 * (DS_CPU_GELU_LUT=0) and through a backend that switches store16 from bf16 to fp16 and back
 * (tables are per mode): the same bits as the kernel computing each value; another
 * DS_CPU_GELU_LUT value is an error naming the variable. */
Test(backend, gelu16_tables_switch)
{
    ds_backend *lut, *nolut, *bad = NULL;
    ds_error err = {0};
    setenv("DS_CPU_GELU_LUT", "yes", 1);
    cr_expect_eq(ds_backend_create(&bad, "cpu", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "DS_CPU_GELU_LUT=yes: expected 0") != NULL, "%s", err.msg);
    setenv("DS_CPU_GELU_LUT", "0", 1);
    cr_assert_eq(ds_backend_create(&nolut, "cpu", &err), DS_OK, "%s", err.msg);
    unsetenv("DS_CPU_GELU_LUT");
    cr_assert_eq(ds_backend_create(&lut, "cpu", &err), DS_OK, "%s", err.msg);
    const ds_cpu_kernels *k = &ds_cpu_kernels_generic_serial; /* the reference: computed, one thread */
    const int64_t n = 40000;
    uint16_t *x = malloc((size_t)n * 2), *dy = malloc((size_t)n * 2), *want = malloc((size_t)n * 2);
    uint16_t *got = malloc((size_t)n * 2);
    cr_assert(x && dy && want && got);
    ds_rng r;
    ds_rng_seed(&r, 99);
    const int modes[3] = {DS_ROUND_BF16, DS_ROUND_FP16, DS_ROUND_BF16};
    for (int mi = 0; mi < 3; mi++) {
        const int mode = modes[mi];
        for (int64_t i = 0; i < n; i++) {
            float v = (float)ds_rng_normal(&r) * 3.0f, g = (float)ds_rng_normal(&r) * 0.1f;
            x[i] = mode == DS_ROUND_BF16 ? ds_f32_to_bf16(v) : ds_f32_to_f16(v);
            dy[i] = mode == DS_ROUND_BF16 ? ds_f32_to_bf16(g) : ds_f32_to_f16(g);
        }
        for (int bi = 0; bi < 2; bi++) {
            ds_backend *be = bi ? nolut : lut;
            cr_assert_eq(be->ops->store16(be, mode), 1);
            for (int ap = 0; ap < 2; ap++) {
                k->gelu_fwd16(x, want, n, ap, mode);
                cr_assert_eq(be->ops->gelu_fwd(be, (const float *)(void *)x, (float *)(void *)got, n, ap), DS_OK);
                cr_assert(memcmp(want, got, (size_t)n * 2) == 0, "gelu_fwd (%s, mode %d, approximate %d) differs from "
                          "the computed values", bi ? "DS_CPU_GELU_LUT=0" : "tables", mode, ap);
                k->gelu_bwd16(x, dy, want, n, ap, 0, mode);
                cr_assert_eq(be->ops->gelu_bwd(be, (const float *)(void *)x, (const float *)(void *)dy,
                                               (float *)(void *)got, n, ap, 0), DS_OK);
                cr_assert(memcmp(want, got, (size_t)n * 2) == 0, "gelu_bwd (%s, mode %d, approximate %d) differs from "
                          "the computed values", bi ? "DS_CPU_GELU_LUT=0" : "tables", mode, ap);
            }
            be->ops->store16(be, 0);
        }
    }
    free(x), free(dy), free(want), free(got);
    ds_backend_destroy(lut);
    ds_backend_destroy(nolut);
}

/* DS_CPU_GEMM_SPLIT=0: each product threaded by oneDNN instead of split by rows (or attention's
 * batch) between the threads: the same results up to summation order; another value is an
 * error naming the variable. M 256 is enough rows for the default to split between 2+ threads. */
Test(backend, gemm_split_switch)
{
    ds_backend *ref, *b;
    ds_error err = {0};
    unsetenv("DS_CPU_GEMM_SPLIT");
    cr_assert_eq(ds_backend_create(&ref, "cpu", &err), DS_OK, "%s", err.msg);
    setenv("DS_CPU_GEMM_SPLIT", "2", 1);
    cr_expect_eq(ds_backend_create(&b, "cpu", &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "DS_CPU_GEMM_SPLIT=2: expected 0") != NULL, "%s", err.msg);
    setenv("DS_CPU_GEMM_SPLIT", "0", 1);
    cr_assert_eq(ds_backend_create(&b, "cpu", &err), DS_OK, "%s", err.msg);
    unsetenv("DS_CPU_GEMM_SPLIT");
    ds_rng r;
    ds_rng_seed(&r, 12);
    const int64_t M = 256, K = 72, N = 40, B = 4, T = 24, C = 32, H = 4;
    float *x = frandn(&r, M * K, 0, 1), *w = frandn(&r, N * K, 0, 0.1), *bias = frandn(&r, N, 0, 0.1);
    float *dy = frandn(&r, M * N, 0, 1), *qkv = frandn(&r, B * T * 3 * C, 0, 1);
    const int64_t len[6] = {M * N, M * K, N * K, N, B * T * C, B * H * T * T};
    float *o[2][6];
    for (int i = 0; i < 2; i++) {
        for (int t = 0; t < 6; t++)
            o[i][t] = calloc((size_t)len[t], sizeof(float));
        ds_backend *be = i ? b : ref;
        linear_all(be, x, w, bias, dy, o[i][0], o[i][1], o[i][2], o[i][3], M, K, N);
        cr_assert_eq(be->ops->attention_fwd(be, qkv, o[i][4], o[i][5], B, T, C, H, 1), DS_OK, "%s", be->err.msg);
    }
    const char *what[6] = {"y", "dx", "dw", "dbias", "attention out", "probabilities"};
    for (int t = 0; t < 6; t++) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < len[t]; i++) {
            num += (o[1][t][i] - o[0][t][i]) * (double)(o[1][t][i] - o[0][t][i]);
            den += (double)o[0][t][i] * o[0][t][i];
        }
        cr_expect(den > 0 && sqrt(num / den) <= 1e-6, "%s: relative error %.2e without the split", what[t],
                  sqrt(num / den));
    }
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 6; t++)
            free(o[i][t]);
    free(x), free(w), free(bias), free(dy), free(qkv);
    ds_backend_destroy(ref);
    ds_backend_destroy(b);
}

/* Attention on bf16 units (att16; emulated here): the products in bf16 with P and dS rounded to
 * bf16 before theirs, against the fp32 attention on the same bf16 inputs: close (the CUDA fused
 * kernels' bound, 1e-2 normwise), not equal (P is rounded), and the probabilities kept for
 * backward fp32 values within 1e-6. */
Test(backend, bf16_attention_on_bf16_units_emulated)
{
    ds_backend *ref, *b;
    ds_error err = {0};
    cr_assert_eq(ds_backend_create(&ref, "cpu", &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_backend_create(&b, "cpu", &err), DS_OK, "%s", err.msg);
    setenv("DS_CPU_BF16_GEMM", "emulate", 1);
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    unsetenv("DS_CPU_BF16_GEMM");
    ds_rng r;
    ds_rng_seed(&r, 21);
    for (int k = 0; k < 3; k++) { /* 2: causal at T 64, the products in halves */
        const int causal = k != 0;
        const int64_t B = 2, T = k < 2 ? 37 : 64, C = 64, H = 4, M = B * T, n = B * H * T * T;
        float *qkv = frandn(&r, M * 3 * C, 0, 1), *dout = frandn(&r, M * C, 0, 1);
        b->ops->round16(b, qkv, M * 3 * C, DS_ROUND_BF16), b->ops->round16(b, dout, M * C, DS_ROUND_BF16);
        float *o[2] = {fbuf(M * C), fbuf(M * C)}, *att[2] = {fbuf(n), fbuf(n)};
        float *dq[2] = {fbuf(M * 3 * C), fbuf(M * 3 * C)};
        for (int i = 0; i < 2; i++) {
            ds_backend *be = i ? b : ref;
            cr_assert_eq(be->ops->attention_fwd(be, qkv, o[i], att[i], B, T, C, H, causal), DS_OK, "%s", be->err.msg);
            cr_assert_eq(be->ops->attention_bwd(be, dout, qkv, att[i], dq[i], B, T, C, H, causal), DS_OK, "%s",
                         be->err.msg);
        }
        for (int64_t i = 0; i < n; i++) /* fp32 scores (their sums' order may differ): close */
            cr_assert(fabsf(att[0][i] - att[1][i]) <= 1e-6f, "probabilities[%lld]: %a vs %a", (long long)i,
                      att[1][i], att[0][i]);
        const float *got[2] = {o[1], dq[1]}, *want[2] = {o[0], dq[0]};
        const int64_t len[2] = {M * C, M * 3 * C};
        for (int t = 0; t < 2; t++) {
            double num = 0, den = 0;
            for (int64_t i = 0; i < len[t]; i++) {
                cr_assert(isfinite(got[t][i]), "%s[%lld] = %g", t ? "dqkv" : "out", (long long)i, got[t][i]);
                num += (got[t][i] - want[t][i]) * (double)(got[t][i] - want[t][i]);
                den += (double)want[t][i] * want[t][i];
            }
            double rel = sqrt(num / den);
            cr_expect(rel > 0 && rel <= 1e-2, "%s (causal %d): normwise relative difference %.2e", t ? "dqkv" : "out",
                      causal, rel);
        }
        for (int i = 0; i < 2; i++)
            free(o[i]), free(att[i]), free(dq[i]);
        free(qkv), free(dout);
    }
    ds_backend_destroy(ref);
    ds_backend_destroy(b);
}

/* ---- 16-bit activation and weight storage (store16) -----------------------------------------
 * Every activation op run on 16-bit tensors (and 16-bit weights) must give, bit for bit, the fp32 op's outputs
 * rounded to the format (each op unpacks exactly, computes in fp32 as before and rounds once),
 * and the same fp32 outputs (mean, rstd, weight gradients, losses, attention state). Sizes
 * cross the backend's tiles (16384 floats per operand; rows of 700 floats: 23 rows per tile;
 * a vocabulary of 20000: one row per tile) and the thread split. */

typedef struct pair16 {
    float *f;    /* fp32 values of the format (the fp32-storage operand) */
    uint16_t *h; /* the same values packed (the 16-bit-storage operand) */
    int64_t n;
} pair16;

static float round_to(float x, int mode)
{
    return mode == DS_ROUND_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(x)) : ds_f16_to_f32(ds_f32_to_f16(x));
}

static pair16 p16(ds_rng *r, int64_t n, double sd, int mode)
{
    pair16 p = {fbuf(n), calloc((size_t)(n > 0 ? n : 1), 2), n};
    cr_assert(p.h != NULL);
    for (int64_t i = 0; i < n; i++) {
        p.f[i] = round_to((float)(sd * ds_rng_normal(r)), mode);
        p.h[i] = mode == DS_ROUND_BF16 ? ds_f32_to_bf16(p.f[i]) : ds_f32_to_f16(p.f[i]);
    }
    return p;
}

/* the values of f (n, taken over) rounded, and packed: a weight tensor of both layouts */
static pair16 p16_of(float *f, int64_t n, int mode)
{
    pair16 p = {f, calloc((size_t)(n > 0 ? n : 1), 2), n};
    cr_assert(p.h != NULL);
    for (int64_t i = 0; i < n; i++) {
        p.f[i] = round_to(p.f[i], mode);
        p.h[i] = mode == DS_ROUND_BF16 ? ds_f32_to_bf16(p.f[i]) : ds_f32_to_f16(p.f[i]);
    }
    return p;
}

/* two equal copies of n N(0, 1) values: the weight gradients both layouts accumulate into */
static void twin(ds_rng *r, float *out[2], int64_t n)
{
    out[0] = frandn(r, n, 0, 1);
    out[1] = fcopy(out[0], n);
}

static void p16_free(pair16 *p)
{
    free(p->f);
    free(p->h);
}

/* the 16-bit output equals the fp32 output rounded, element for element (bits) */
static void same16(const char *what, const pair16 *p, int mode)
{
    for (int64_t i = 0; i < p->n; i++) {
        float want = round_to(p->f[i], mode);
        float got = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(p->h[i]) : ds_f16_to_f32(p->h[i]);
        cr_assert(isfinite(want), "%s[%lld]: reference %g", what, (long long)i, want);
        cr_assert(memcmp(&want, &got, 4) == 0, "%s[%lld] (%s): %a in 16-bit storage, %a rounded from fp32",
                  what, (long long)i, mode == DS_ROUND_BF16 ? "bf16" : "fp16", got, want);
    }
}

static void same32(const char *what, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        cr_assert(memcmp(&a[i], &b[i], 4) == 0, "%s[%lld]: %a in 16-bit storage, %a in fp32", what,
                  (long long)i, b[i], a[i]);
}

#define F(p) ((p).f)
#define H(p) ((float *)(void *)(p).h)
/* run op on fp32 operands, then with store16 on 16-bit ones */
#define BOTH(be, mode, op, args32, args16)                                                        \
    do {                                                                                          \
        cr_assert_eq((be)->ops->store16((be), 0), 0);                                             \
        cr_assert_eq((be)->ops->op args32, DS_OK, "%s", (be)->err.msg);                           \
        cr_assert_eq((be)->ops->store16((be), (mode)), 1);                                        \
        cr_assert_eq((be)->ops->op args16, DS_OK, "%s", (be)->err.msg);                           \
        (be)->ops->store16((be), 0);                                                              \
    } while (0)

static void store16_ops(const char *backend, int mode, int precision)
{
    large_threads(1); /* 3 threads: tiles split unevenly */
    ds_backend *b = open_backend(backend);
    cr_assert(b->ops->store16 != NULL);
    if (precision) /* bf16 training: on a CPU with bf16 units linear_fwd reads x as it is stored */
        cr_assert_eq(b->ops->set_precision(b, mode), DS_OK, "%s", b->err.msg);
    ds_rng r;
    ds_rng_seed(&r, 1234 + mode);
    /* elementwise, forward and backward, writing and accumulating */
    const int64_t n = 3 * 16384 + 77;
    for (int acc = 0; acc < 2; acc++) {
        pair16 x = p16(&r, n, 2, mode), c = p16(&r, n, 1, mode);
        for (int op = 0; op < 10; op++) {
            pair16 y = p16(&r, n, 1, mode); /* also the accumulated-into value */
            float *y32 = fcopy(y.f, n);
            const char *name[] = {"gelu_fwd (erf)", "gelu_bwd (tanh)", "relu_fwd",        "relu_bwd", "dropout_fwd",
                                  "dropout_bwd",    "add",             "gelu_fwd (tanh)", "gelu_bwd (erf)",
                                  "scale_act"};
            if (acc && (op == 0 || op == 2 || op == 4 || op == 6 || op == 7 || op == 9)) {
                free(y32);
                p16_free(&y);
                continue; /* forward ops write */
            }
            switch (op) {
            case 0: BOTH(b, mode, gelu_fwd, (b, F(x), y32, n, 0), (b, H(x), H(y), n, 0)); break;
            case 1: BOTH(b, mode, gelu_bwd, (b, F(x), F(c), y32, n, 1, acc), (b, H(x), H(c), H(y), n, 1, acc)); break;
            case 2: BOTH(b, mode, relu_fwd, (b, F(x), y32, n), (b, H(x), H(y), n)); break;
            case 3: BOTH(b, mode, relu_bwd, (b, F(x), F(c), y32, n, acc), (b, H(x), H(c), H(y), n, acc)); break;
            case 4: BOTH(b, mode, dropout_fwd, (b, F(x), y32, n, 0.3f, 77), (b, H(x), H(y), n, 0.3f, 77)); break;
            case 5: BOTH(b, mode, dropout_bwd, (b, F(c), y32, n, 0.3f, 77, acc), (b, H(c), H(y), n, 0.3f, 77, acc)); break;
            case 6: BOTH(b, mode, add, (b, F(x), F(c), y32, n), (b, H(x), H(c), H(y), n)); break;
            case 7: BOTH(b, mode, gelu_fwd, (b, F(x), y32, n, 1), (b, H(x), H(y), n, 1)); break;
            case 9: BOTH(b, mode, scale_act, (b, F(x), y32, n, 1.0f / 0.3f), (b, H(x), H(y), n, 1.0f / 0.3f)); break;
            default: BOTH(b, mode, gelu_bwd, (b, F(x), F(c), y32, n, 0, acc), (b, H(x), H(c), H(y), n, 0, acc)); break;
            }
            if (op == 6) { /* in place, as the model adds activation gradients: y += c */
                for (int64_t i = 0; i < n; i++)
                    y32[i] = round_to(y32[i], mode); /* as stored after the first add */
                BOTH(b, mode, add, (b, F(c), y32, y32, n), (b, H(c), H(y), H(y), n));
            }
            free(y.f);
            y.f = y32;
            char what[64];
            snprintf(what, sizeof what, "%s%s", name[op], acc ? " (accumulate)" : "");
            same16(what, &y, mode);
            p16_free(&y);
        }
        p16_free(&x);
        p16_free(&c);
    }
    /* rows: embedding, position embedding, layernorm, losses */
    {
        const int64_t B = 3, T = 50, M = B * T, C = 700, V = 40;
        int32_t *ids = irand(&r, M, (int32_t)V);
        pair16 table = p16_of(frandn(&r, V * C, 0, 1), V * C, mode), pos = p16_of(frandn(&r, T * C, 0, 1), T * C, mode);
        pair16 e = p16(&r, M * C, 1, mode);
        BOTH(b, mode, embedding_fwd, (b, ids, F(table), e.f, M, C), (b, ids, H(table), H(e), M, C));
        same16("embedding_fwd", &e, mode);
        float *dt[2];
        twin(&r, dt, V * C);
        p16_free(&e);
        e = p16(&r, M * C, 1, mode); /* a gradient of 16-bit values */
        BOTH(b, mode, embedding_bwd, (b, ids, F(e), dt[0], M, C), (b, ids, H(e), dt[1], M, C));
        same32("embedding_bwd dtable", dt[0], dt[1], V * C);
        pair16 x = p16(&r, M * C, 1, mode), y = p16(&r, M * C, 1, mode);
        BOTH(b, mode, posadd_fwd, (b, F(x), F(pos), y.f, B, T, C), (b, H(x), H(pos), H(y), B, T, C));
        same16("posadd_fwd", &y, mode);
        float *dp[2];
        twin(&r, dp, T * C);
        BOTH(b, mode, posadd_bwd, (b, F(x), dp[0], B, T, C), (b, H(x), dp[1], B, T, C));
        same32("posadd_bwd dpos", dp[0], dp[1], T * C);
        pair16 w = p16_of(frandn(&r, C, 1, 0.2), C, mode), bias = p16_of(frandn(&r, C, 0, 0.2), C, mode);
        float *mean[2] = {fbuf(M), fbuf(M)}, *rstd[2] = {fbuf(M), fbuf(M)};
        BOTH(b, mode, layernorm_fwd, (b, F(x), F(w), F(bias), y.f, mean[0], rstd[0], M, C, 1e-5f),
             (b, H(x), H(w), H(bias), H(y), mean[1], rstd[1], M, C, 1e-5f));
        same16("layernorm_fwd", &y, mode);
        same32("layernorm_fwd mean", mean[0], mean[1], M);
        same32("layernorm_fwd rstd", rstd[0], rstd[1], M);
        for (int acc = 0; acc < 2; acc++) {
            pair16 dy = p16(&r, M * C, 1, mode), dx = p16(&r, M * C, 1, mode);
            float *dw[2], *db[2];
            twin(&r, dw, C), twin(&r, db, C);
            BOTH(b, mode, layernorm_bwd, (b, F(dy), F(x), F(w), mean[0], rstd[0], dx.f, dw[0], db[0], M, C, acc),
                 (b, H(dy), H(x), H(w), mean[0], rstd[0], H(dx), dw[1], db[1], M, C, acc));
            same16(acc ? "layernorm_bwd dx (accumulate)" : "layernorm_bwd dx", &dx, mode);
            same32("layernorm_bwd dw", dw[0], dw[1], C);
            same32("layernorm_bwd db", db[0], db[1], C);
            if (acc) { /* no dx (a first layer): the weight gradients alone */
                BOTH(b, mode, layernorm_bwd, (b, F(dy), F(x), F(w), mean[0], rstd[0], NULL, dw[0], db[0], M, C, 0),
                     (b, H(dy), H(x), H(w), mean[0], rstd[0], NULL, dw[1], db[1], M, C, 0));
                same32("layernorm_bwd dw (no dx)", dw[0], dw[1], C);
                same32("layernorm_bwd db (no dx)", db[0], db[1], C);
            }
            for (int i = 0; i < 2; i++)
                free(dw[i]), free(db[i]);
            p16_free(&dy);
            p16_free(&dx);
        }
        float *tgt = frandn(&r, M * C, 0, 1), *l[2] = {fbuf(M), fbuf(M)};
        pair16 dy = p16(&r, M * C, 1, mode);
        BOTH(b, mode, mse_fwd, (b, F(x), tgt, l[0], dy.f, 0.5f, M, C), (b, H(x), tgt, l[1], H(dy), 0.5f, M, C));
        same16("mse_fwd dy", &dy, mode);
        same32("mse_fwd losses", l[0], l[1], M);
        for (int i = 0; i < 2; i++)
            free(dt[i]), free(dp[i]), free(mean[i]), free(rstd[i]), free(l[i]);
        free(ids), free(tgt);
        p16_free(&table), p16_free(&pos), p16_free(&w), p16_free(&bias);
        p16_free(&e), p16_free(&x), p16_free(&y), p16_free(&dy);
    }
    { /* layernorm_fwd on rows wider than the one-pass kernel's stack buffers: through the tiles */
        const int64_t M = 3, C = 5000;
        pair16 x = p16(&r, M * C, 1, mode), y = p16(&r, M * C, 1, mode);
        pair16 w = p16_of(frandn(&r, C, 1, 0.2), C, mode), bias = p16_of(frandn(&r, C, 0, 0.2), C, mode);
        float *mean[2] = {fbuf(M), fbuf(M)}, *rstd[2] = {fbuf(M), fbuf(M)};
        BOTH(b, mode, layernorm_fwd, (b, F(x), F(w), F(bias), y.f, mean[0], rstd[0], M, C, 1e-5f),
             (b, H(x), H(w), H(bias), H(y), mean[1], rstd[1], M, C, 1e-5f));
        same16("layernorm_fwd (5000 columns)", &y, mode);
        same32("layernorm_fwd rstd (5000 columns)", rstd[0], rstd[1], M);
        for (int i = 0; i < 2; i++)
            free(mean[i]), free(rstd[i]);
        p16_free(&x), p16_free(&y), p16_free(&w), p16_free(&bias);
    }
    for (int wide = 0; wide < 2; wide++) { /* cross-entropy: rows narrower and wider than a tile */
        const int64_t M = wide ? 5 : 70, V = wide ? 20000 : 300;
        int32_t *t = irand(&r, M, (int32_t)V);
        pair16 z = p16(&r, M * V, 3, mode), dz = p16(&r, M * V, 1, mode);
        float *l[2] = {fbuf(M), fbuf(M)};
        BOTH(b, mode, xent_fwd, (b, F(z), t, l[0], dz.f, 1024.0f, M, V), (b, H(z), t, l[1], H(dz), 1024.0f, M, V));
        same16("xent_fwd dlogits", &dz, mode);
        same32("xent_fwd losses", l[0], l[1], M);
        BOTH(b, mode, xent_fwd, (b, F(z), t, l[0], NULL, 1.0f, M, V), (b, H(z), t, l[1], NULL, 1.0f, M, V));
        same32("xent_fwd losses (no gradient)", l[0], l[1], M);
        free(t), free(l[0]), free(l[1]);
        p16_free(&z), p16_free(&dz);
    }
    /* products: linear and attention */
    {
        const int64_t M = 37, K = 48, N = 40;
        pair16 x = p16(&r, M * K, 1, mode), y = p16(&r, M * N, 1, mode), dy = p16(&r, M * N, 1, mode);
        pair16 w = p16_of(frandn(&r, N * K, 0, 0.2), N * K, mode), bias = p16_of(frandn(&r, N, 0, 0.2), N, mode);
        BOTH(b, mode, linear_fwd, (b, F(x), F(w), F(bias), y.f, M, K, N), (b, H(x), H(w), H(bias), H(y), M, K, N));
        same16("linear_fwd", &y, mode);
        BOTH(b, mode, linear_fwd, (b, F(x), F(w), NULL, y.f, M, K, N), (b, H(x), H(w), NULL, H(y), M, K, N));
        same16("linear_fwd without bias", &y, mode);
        for (int acc = 0; acc < 3; acc++) { /* 2: no dx (a first layer) */
            pair16 dx = p16(&r, M * K, 1, mode);
            float *dw[2], *db[2];
            twin(&r, dw, N * K), twin(&r, db, N);
            BOTH(b, mode, linear_bwd, (b, F(dy), F(x), F(w), acc < 2 ? dx.f : NULL, dw[0], db[0], M, K, N, acc == 1),
                 (b, H(dy), H(x), H(w), acc < 2 ? H(dx) : NULL, dw[1], db[1], M, K, N, acc == 1));
            if (acc < 2)
                same16(acc ? "linear_bwd dx (accumulate)" : "linear_bwd dx", &dx, mode);
            same32("linear_bwd dw", dw[0], dw[1], N * K);
            same32("linear_bwd dbias", db[0], db[1], N);
            for (int i = 0; i < 2; i++)
                free(dw[i]), free(db[i]);
            p16_free(&dx);
        }
        p16_free(&w), p16_free(&bias);
        p16_free(&x), p16_free(&y), p16_free(&dy);
    }
    for (int k = 0; k < 3; k++) { /* 2: causal at T 64, the products in halves */
        const int causal = k != 0;
        const int64_t B = 2, T = k < 2 ? 20 : 64, C = 32, H = 4, M = B * T;
        pair16 qkv = p16(&r, M * 3 * C, 1, mode), out = p16(&r, M * C, 1, mode);
        pair16 dout = p16(&r, M * C, 1, mode), dqkv = p16(&r, M * 3 * C, 1, mode);
        float *att[2] = {fbuf(B * H * T * T), fbuf(B * H * T * T)};
        BOTH(b, mode, attention_fwd, (b, F(qkv), out.f, att[0], B, T, C, H, causal),
             (b, H(qkv), H(out), att[1], B, T, C, H, causal));
        same16("attention_fwd", &out, mode);
        same32("attention_fwd probabilities", att[0], att[1], B * H * T * T);
        BOTH(b, mode, attention_bwd, (b, F(dout), F(qkv), att[0], dqkv.f, B, T, C, H, causal),
             (b, H(dout), H(qkv), att[0], H(dqkv), B, T, C, H, causal));
        same16("attention_bwd", &dqkv, mode);
        free(att[0]), free(att[1]);
        p16_free(&qkv), p16_free(&out), p16_free(&dout), p16_free(&dqkv);
    }
    cr_assert_eq(b->ops->store16(b, 0), 0);
    ds_backend_destroy(b);
    large_threads(0);
}

Test(store16, every_activation_op_bit_exact_bf16) { store16_ops("cpu", DS_ROUND_BF16, 0); }
Test(store16, every_activation_op_bit_exact_fp16) { store16_ops("cpu", DS_ROUND_FP16, 0); }
Test(store16, every_activation_op_bit_exact_after_set_precision)
{
    unsetenv("DS_CPU_BF16_GEMM");
    store16_ops("cpu", DS_ROUND_BF16, 1);
    store16_ops("cpu", DS_ROUND_FP16, 1);
}
/* The code paths of a CPU with bf16 units (the products take the stored bf16 activations and
 * weights as they are), on any CPU: DS_CPU_BF16_GEMM=emulate widens the products' operands. */
Test(store16, every_activation_op_bit_exact_bf16_units_emulated)
{
    setenv("DS_CPU_BF16_GEMM", "emulate", 1);
    ds_backend *b = open_backend("cpu");
    cr_assert_eq(b->ops->set_precision(b, DS_ROUND_BF16), DS_OK, "%s", b->err.msg);
    cr_assert(strstr(ds_backend_describe(b), "bf16 GEMMs and attention emulated") != NULL, "%s", ds_backend_describe(b));
    ds_backend_destroy(b);
    store16_ops("cpu", DS_ROUND_BF16, 1);
    unsetenv("DS_CPU_BF16_GEMM");
}
Test(store16, every_activation_op_bit_exact_generic) { store16_ops("cpu:generic", DS_ROUND_BF16, 0); store16_ops("cpu:generic", DS_ROUND_FP16, 0); }
/* the AVX-512 kernels where the CPU has them (on ours it does not: cpu:avx512 says so) */
Test(store16, every_activation_op_bit_exact_avx512)
{
    ds_backend *be = try_backend("cpu:avx512");
    if (!be)
        return;
    ds_backend_destroy(be);
    store16_ops("cpu:avx512", DS_ROUND_BF16, 0);
    store16_ops("cpu:avx512", DS_ROUND_FP16, 0);
}
