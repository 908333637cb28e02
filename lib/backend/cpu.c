/* The CPU backend: the ops table over host memory. Matrix products go to oneDNN; every other
 * op to the kernel variant chosen at creation (AVX2+FMA when cpuid has them, else portable). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_dnnl.h"
#include "cpu_kernels.h"
#include "ds/backend.h"

typedef struct cpu_impl {
    const ds_cpu_kernels *k;
    ds_dnnl *dnnl;
    float *scratch; /* transposed dY for weight gradients */
    size_t scratch_floats;
    float *att_scratch; /* attention backward: dP, then dS [B, H, T, T] */
    size_t att_scratch_floats;
    float *x_scratch;   /* transposed X for wide weight gradients */
    size_t x_scratch_floats;
    /* bf16 training on a CPU with bf16 units (set_precision): the linear layers' operands,
     * converted to bf16 (exact: they are bf16 values already), for oneDNN's bf16 products */
    int gemm16;
    uint16_t *h16[2];
    size_t h16_n[2];
    char describe[160];
} cpu_impl;

#define K(b) (((cpu_impl *)(b)->impl)->k)
#define DNNL(b) (((cpu_impl *)(b)->impl)->dnnl)

static void cpu_destroy(ds_backend *b)
{
    cpu_impl *c = b->impl;
    ds_dnnl_destroy(c->dnnl);
    free(c->scratch);
    free(c->att_scratch);
    free(c->x_scratch);
    free(c->h16[0]);
    free(c->h16[1]);
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

static ds_status cpu_copy(ds_backend *b, void *dst, const void *src, size_t bytes)
{
    (void)b;
    if (bytes)
        memmove(dst, src, bytes);
    return DS_OK;
}

static ds_status cpu_zero(ds_backend *b, void *p, size_t bytes)
{
    (void)b;
    memset(p, 0, bytes);
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

/* bf16 copy i (0 or 1) of x[n]: ds_f32_to_bf16 (round to nearest even, NaN kept quiet) inlined
 * into a parallel loop; exact for bf16 values. */
static const uint16_t *to_bf16(ds_backend *b, int i, const float *x, int64_t n)
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
    uint16_t *h = c->h16[i];
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], 4);
        h[j] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40)
                                                : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return h;
}

/* bf16 training: the linear layers' products in bf16 on the CPU's bf16 units, when it has them
 * (AMX-BF16, AVX512_BF16) and DS_CPU_BF16_GEMM is not 0; otherwise fp32 products of the same
 * bf16 values (the same numbers up to summation order). DS_CPU_BF16_GEMM=1 makes missing
 * units an error. */
static ds_status cpu_set_precision(ds_backend *b, int mode)
{
    cpu_impl *c = b->impl;
    const char *env = getenv("DS_CPU_BF16_GEMM"), *why = "";
    int want = mode == DS_ROUND_BF16 && !(env && strcmp(env, "0") == 0);
    if (env && *env && strcmp(env, "0") && strcmp(env, "1"))
        return ds_error_set(&b->err, DS_ERR_INVALID, "DS_CPU_BF16_GEMM=%s: expected 0 (fp32 products) or 1 "
                            "(bf16 products, an error without bf16 units)", env);
    c->gemm16 = want && ds_dnnl_bf16_probe(c->dnnl, &why);
    if (want && !c->gemm16 && env && strcmp(env, "1") == 0)
        return ds_error_set(&b->err, DS_ERR_UNSUPPORTED, "DS_CPU_BF16_GEMM=1: no bf16 products here: %s", why);
    if (c->gemm16)
        snprintf(c->describe, sizeof c->describe, "%s, bf16 GEMMs on %s", c->k->variant, why);
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

static ds_status cpu_linear_fwd(ds_backend *b, const float *x, const float *w, const float *bias,
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

static ds_status cpu_linear_bwd(ds_backend *b, const float *dy, const float *x, const float *w,
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

/* Attention as batched products over (batch, head), with every operand a strided view of the
 * packed qkv [B, T, 3C] or out [B, T, C]; causal rows are computed in full and masked in the
 * softmax (twice the product FLOPs, at several times the speed of a masked loop). Strides are
 * {batch, head, row, col} in elements. */
static ds_status cpu_attention_fwd(ds_backend *b, const float *qkv, float *out, float *att,
                                   int64_t B, int64_t T, int64_t C, int64_t H, int causal)
{
    const int64_t D = C / H, C3 = 3 * C;
    const int64_t q_s[4] = {T * C3, D, C3, 1};       /* Q or V as [T, D] */
    const int64_t kt_s[4] = {T * C3, D, 1, C3};      /* K^T as [D, T] */
    const int64_t a_s[4] = {H * T * T, T * T, T, 1}; /* scores [T, T] */
    const int64_t o_s[4] = {T * C, D, C, 1};         /* out as [T, D] */
    ds_status st = ds_dnnl_matmul_batched(DNNL(b), B, H, T, T, D, qkv, q_s, qkv + C, kt_s, att, a_s, 0, &b->err);
    if (st != DS_OK)
        return st;
    K(b)->attn_softmax_fwd(att, B * H, T, 1.0f / sqrtf((float)D), causal);
    return ds_dnnl_matmul_batched(DNNL(b), B, H, T, D, T, att, a_s, qkv + 2 * C, q_s, out, o_s, 0, &b->err);
}

static ds_status cpu_attention_bwd(ds_backend *b, const float *dout, const float *qkv,
                                   const float *att, float *dqkv, int64_t B, int64_t T, int64_t C,
                                   int64_t H, int causal)
{
    (void)causal; /* P is zero above the diagonal, so dS is too */
    cpu_impl *c = b->impl;
    const int64_t D = C / H, C3 = 3 * C;
    const int64_t q_s[4] = {T * C3, D, C3, 1};
    const int64_t kt_s[4] = {T * C3, D, 1, C3};
    const int64_t a_s[4] = {H * T * T, T * T, T, 1};
    const int64_t at_s[4] = {H * T * T, T * T, 1, T}; /* a score matrix transposed */
    const int64_t o_s[4] = {T * C, D, C, 1};
    ds_status st = scratch(b, &c->att_scratch, &c->att_scratch_floats, (size_t)(B * H * T * T));
    float *ds = c->att_scratch;
    if (st == DS_OK) /* dP = dO V^T */
        st = ds_dnnl_matmul_batched(DNNL(b), B, H, T, T, D, dout, o_s, qkv + 2 * C, kt_s, ds, a_s, 0, &b->err);
    if (st != DS_OK)
        return st;
    K(b)->attn_softmax_bwd(att, ds, B * H, T, 1.0f / sqrtf((float)D));
    /* dQ = dS K, dK = dS^T Q, dV = P^T dO: together they write all of dqkv */
    if ((st = ds_dnnl_matmul_batched(DNNL(b), B, H, T, D, T, ds, a_s, qkv + C, q_s, dqkv, q_s, 0, &b->err)) ||
        (st = ds_dnnl_matmul_batched(DNNL(b), B, H, T, D, T, ds, at_s, qkv, q_s, dqkv + C, q_s, 0, &b->err)) ||
        (st = ds_dnnl_matmul_batched(DNNL(b), B, H, T, D, T, att, at_s, dout, o_s, dqkv + 2 * C, q_s, 0, &b->err)))
        return st;
    return DS_OK;
}

/* The remaining ops forward to the kernel table; they cannot fail. */
#define FWD(name, params, args)                                                                 \
    static ds_status cpu_##name params                                                          \
    {                                                                                           \
        K(b)->name args;                                                                        \
        return DS_OK;                                                                           \
    }

FWD(embedding_fwd, (ds_backend * b, const int32_t *ids, const float *t, float *o, int64_t M, int64_t C),
    (ids, t, o, M, C))
FWD(embedding_bwd, (ds_backend * b, const int32_t *ids, const float *d, float *dt, int64_t M, int64_t C),
    (ids, d, dt, M, C))
FWD(posadd_fwd, (ds_backend * b, const float *x, const float *p, float *y, int64_t B, int64_t T, int64_t C),
    (x, p, y, B, T, C))
FWD(posadd_bwd, (ds_backend * b, const float *dy, float *dp, int64_t B, int64_t T, int64_t C),
    (dy, dp, B, T, C))
FWD(layernorm_fwd,
    (ds_backend * b, const float *x, const float *w, const float *bi, float *y, float *mean,
     float *rstd, int64_t M, int64_t C, float eps),
    (x, w, bi, y, mean, rstd, M, C, eps))
FWD(layernorm_bwd,
    (ds_backend * b, const float *dy, const float *x, const float *w, const float *mean,
     const float *rstd, float *dx, float *dw, float *db, int64_t M, int64_t C, int acc),
    (dy, x, w, mean, rstd, dx, dw, db, M, C, acc))
FWD(gelu_fwd, (ds_backend * b, const float *x, float *y, int64_t n, int ap), (x, y, n, ap))
FWD(gelu_bwd, (ds_backend * b, const float *x, const float *dy, float *dx, int64_t n, int ap, int acc),
    (x, dy, dx, n, ap, acc))
FWD(relu_fwd, (ds_backend * b, const float *x, float *y, int64_t n), (x, y, n))
FWD(relu_bwd, (ds_backend * b, const float *y, const float *dy, float *dx, int64_t n, int acc),
    (y, dy, dx, n, acc))
FWD(dropout_fwd, (ds_backend * b, const float *x, float *y, int64_t n, float p, uint64_t seed),
    (x, y, n, p, seed))
FWD(dropout_bwd,
    (ds_backend * b, const float *dy, float *dx, int64_t n, float p, uint64_t seed, int acc),
    (dy, dx, n, p, seed, acc))
FWD(add, (ds_backend * b, const float *a, const float *c, float *y, int64_t n), (a, c, y, n))
FWD(accumulate, (ds_backend * b, const float *x, float *y, int64_t n, int acc), (x, y, n, acc))
FWD(xent_fwd,
    (ds_backend * b, const float *z, const int32_t *t, float *l, float *dz, float gs, int64_t M,
     int64_t V),
    (z, t, l, dz, gs, M, V))
FWD(mse_fwd,
    (ds_backend * b, const float *y, const float *t, float *l, float *dy, float gs, int64_t M,
     int64_t N),
    (y, t, l, dy, gs, M, N))
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
};

/* variant: NULL or "" picks by cpuid; "avx2" or "generic" forces one. */
ds_status ds_cpu_backend_create(ds_backend **out, const char *variant, ds_error *err)
{
    const ds_cpu_kernels *k;
    int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("f16c");
    if (!variant || !*variant) {
        k = has_avx2 ? &ds_cpu_kernels_avx2 : &ds_cpu_kernels_generic;
    } else if (strcmp(variant, "generic") == 0) {
        k = &ds_cpu_kernels_generic;
    } else if (strcmp(variant, "avx2") == 0) {
        if (!has_avx2)
            return ds_error_set(err, DS_ERR_UNSUPPORTED,
                                "backend cpu:avx2: this CPU lacks AVX2/FMA/F16C");
        k = &ds_cpu_kernels_avx2;
    } else {
        return ds_error_set(err, DS_ERR_INVALID,
                            "unknown CPU kernel variant \"%s\" (expected avx2 or generic)", variant);
    }
    ds_backend *b = calloc(1, sizeof *b);
    cpu_impl *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    ds_status st = ds_dnnl_create(&c->dnnl, err);
    if (st != DS_OK) {
        free(b);
        free(c);
        return st;
    }
    c->k = k;
    b->ops = &cpu_ops;
    b->impl = c;
    *out = b;
    return DS_OK;
}

const char *ds_cpu_backend_variant(const ds_backend *b) { return K(b)->variant; }
