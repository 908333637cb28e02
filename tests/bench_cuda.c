/* Per-op timings of the CUDA backend at GPT-2-small shapes (dim 768, 12 heads, vocab 50304,
 * seq T, micro-batch B), through the backend ops as the engine calls them (then the other
 * attention path, fused or materialized, for comparison), and the fp32/TF32
 * GEMM rate of this GPU (8192^3). Prints one table; the last lines estimate a training step
 * from the op times (12 layers), to compare with what ds-train measures. Not a test: `make
 * tests/bench_cuda`, run by scripts/gpu-check.sh. Usage: bench_cuda [B [T]]; BENCH_PRECISION=bf16
 * or fp16 times the ops as 16-bit training runs them (set_precision: 16-bit GEMMs and the fused
 * 16-bit attention; store16: the activations stored as 16-bit values, or with BENCH_ACT16=0
 * fp32 buffers and fuse_round, the DS_ACT16=0 layout); BENCH_GEMM_N and BENCH_PARAMS shrink the GEMM and optimizer cases (for a dry
 * run on tests/cuda_emu). BENCH_DEVICE=cpu (or cpu:VARIANT) times the CPU backend's ops instead (no second attention path),
 * and BENCH_C, BENCH_H, BENCH_V, BENCH_L give another model's dimension, heads, vocabulary and
 * layers (gpt-tiny: 256 4 256 4), so the same table shows where a CPU's step goes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds/ds.h"

static ds_backend *be;
static const ds_backend_ops *ops;
static int a16; /* activations and weights stored as 16-bit values (store16) of this mode, 0: fp32 */
static int prec16; /* 16-bit training's mode (BENCH_PRECISION), 0: fp32 */

static int64_t envi(const char *name, int64_t dflt)
{
    const char *e = getenv(name);
    return e && *e ? atoll(e) : dflt;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_cuda: %s: %s\n", what, be ? be->err.msg : "");
    exit(1);
}

#define CK(call)                                                                                 \
    do {                                                                                         \
        if ((call) != DS_OK)                                                                     \
            die(#call);                                                                          \
    } while (0)

/* device buffer of n floats, filled with N(0, sd) (in 1M-float pieces) */
static float *rnd(int64_t n, float sd, ds_rng *r)
{
    float *d = ops->alloc(be, (size_t)n * sizeof(float));
    if (!d)
        die("alloc");
    static float *h;
    const int64_t piece = 1 << 20;
    if (!h) {
        h = malloc((size_t)piece * sizeof(float));
        for (int64_t i = 0; i < piece; i++)
            h[i] = (float)ds_rng_normal(r);
    }
    for (int64_t o = 0; o < n; o += piece) {
        int64_t k = n - o < piece ? n - o : piece;
        /* shift the piece so that buffers do not all hold the same numbers */
        int64_t off = (int64_t)(ds_rng_next(r) % (uint64_t)(piece - k + 1));
        CK(ops->upload(be, d + o, h + off, (size_t)k * sizeof(float)));
    }
    if (sd != 1.0f)
        CK(ops->scale(be, d, n, sd));
    return d;
}

/* an activation (or weight) buffer of n values N(0, sd): 16-bit values with a16 (converted on
 * the host, in 1M-value pieces), else as rnd */
static float *act(int64_t n, float sd, ds_rng *r)
{
    if (!a16)
        return rnd(n, sd, r);
    uint16_t *d = ops->alloc(be, (size_t)n * 2);
    if (!d)
        die("alloc");
    const int64_t piece = 1 << 20;
    uint16_t *h = malloc((size_t)piece * 2);
    for (int64_t o = 0; o < n; o += piece) {
        int64_t k = n - o < piece ? n - o : piece;
        for (int64_t i = 0; i < k; i++) {
            float v = sd * (float)ds_rng_normal(r);
            h[i] = a16 == DS_ROUND_BF16 ? ds_f32_to_bf16(v) : ds_f32_to_f16(v);
        }
        CK(ops->upload(be, d + o, h, (size_t)k * 2));
    }
    free(h);
    return (float *)(void *)d;
}

/* 16-bit training's numerics on backend b: 16-bit GEMMs, and 16-bit activations (store16) or
 * fp32 buffers with outputs rounded by the kernels (fuse_round) */
static void precision_on(ds_backend *b, int round)
{
    CK(ops->set_precision(b, round));
    prec16 = round;
    const char *e = getenv("BENCH_ACT16");
    a16 = ops->store16 && !(e && strcmp(e, "0") == 0) && ops->store16(b, round) ? round : 0;
    if (!a16 && ops->fuse_round)
        ops->fuse_round(b, round);
}

typedef struct row {
    const char *name;
    double ms, gflop, gbytes;
    int per_step; /* times per training step (12 layers) */
} row;

static row rows[64];
static int nrows;

#define TIME(label, flop, bytes, count, body)                                                    \
    do {                                                                                         \
        for (int w_ = 0; w_ < 2; w_++)                                                           \
            body;                                                                                \
        CK(ops->synchronize(be));                                                                \
        int reps_ = 10;                                                                          \
        double t0_ = now_s();                                                                    \
        for (int r_ = 0; r_ < reps_; r_++)                                                       \
            body;                                                                                \
        CK(ops->synchronize(be));                                                                \
        double ms_ = (now_s() - t0_) * 1e3 / reps_;                                              \
        rows[nrows++] = (row){label, ms_, (flop) / 1e9, (bytes) / 1e9, count};                   \
        fprintf(stderr, "  %-34s %9.3f ms\n", label, ms_);                                       \
    } while (0)

int main(int argc, char **argv)
{
    int64_t B = argc > 1 ? atoll(argv[1]) : 8, T = argc > 2 ? atoll(argv[2]) : 1024;
    const int64_t C = envi("BENCH_C", 768), H = envi("BENCH_H", 12), V = envi("BENCH_V", 50304),
                  L = envi("BENCH_L", 12), M = B * T, F = 4 * C;
    const char *device = getenv("BENCH_DEVICE") && *getenv("BENCH_DEVICE") ? getenv("BENCH_DEVICE") : "cuda";
    const int cpu = strcmp(device, "cpu") == 0 || strncmp(device, "cpu:", 4) == 0;
    ds_error err = {0};
    if (B <= 0 || T <= 0 || C <= 0 || H <= 0 || C % H != 0 || V <= 0 || L <= 0) {
        fprintf(stderr, "bench_cuda: B %lld, T %lld, C %lld, H %lld, V %lld, L %lld: expected positive numbers, C a multiple of H\n",
                (long long)B, (long long)T, (long long)C, (long long)H, (long long)V, (long long)L);
        return 2;
    }
    if (ds_backend_create(&be, device, &err) != DS_OK) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 2;
    }
    ops = be->ops;
    const char *prec = getenv("BENCH_PRECISION");
    int round = 0;
    if (prec && *prec && strcmp(prec, "fp32") != 0) {
        round = strcmp(prec, "bf16") == 0 ? DS_ROUND_BF16 : strcmp(prec, "fp16") == 0 ? DS_ROUND_FP16 : -1;
        if (round < 0 || !ops->set_precision) {
            fprintf(stderr, "bench_cuda: BENCH_PRECISION=%s: expected fp32, bf16 or fp16\n", prec);
            return 2;
        }
        precision_on(be, round); /* as the model asks in 16-bit training */
    }
    printf("bench_cuda: %s; activations %s; shapes: B %lld, T %lld, C %lld, H %lld, V %lld, %lld layers\n",
           ds_backend_describe(be), a16 ? "stored in 16 bits" : "in fp32 buffers", (long long)B, (long long)T,
           (long long)C, (long long)H, (long long)V, (long long)L);
    fflush(stdout);
    ds_rng r;
    ds_rng_seed(&r, 7);

    /* the GEMM rate of this GPU in this backend's mode (BENCH_GEMM_N: another size) */
    {
        const int64_t n = envi("BENCH_GEMM_N", cpu ? 1024 : 8192);
        float *a = act(n * n, 1, &r), *w = act(n * n, 1, &r), *y = act(n * n, 1, &r);
        TIME(n == 8192 ? "gemm 8192^3 (linear_fwd)" : "gemm n^3 (linear_fwd)", 2.0 * n * n * n, 0, 0,
             CK(ops->linear_fwd(be, a, w, NULL, y, n, n, n)));
        ops->free(be, a);
        ops->free(be, w);
        ops->free(be, y);
    }
    float *x = act(M * C, 1, &r), *dx = act(M * C, 1, &r), *gy = act(M * C, 1, &r);
    /* weights the ops read: 16-bit with a16 (store16's working weights); gradients fp32 */
    float *wqkv = act(3 * C * C, 0.02f, &r), *bqkv = act(3 * C, 0.02f, &r), *gwqkv = rnd(3 * C * C, 1, &r);
    float *gbqkv = rnd(3 * C, 1, &r);
    float *qkv = act(M * 3 * C, 1, &r), *dqkv = act(M * 3 * C, 1, &r);
    /* attention's state: the probabilities, or a fused path's own state where it is larger (small T) */
    int64_t natt = B * H * T * T;
    if (ops->attention_state && ops->attention_state(be, B, T, C, H, 1) > natt)
        natt = ops->attention_state(be, B, T, C, H, 1);
    float *att = rnd(natt, 1, &r), *ao = act(M * C, 1, &r);
    float *wfc = act(F * C, 0.02f, &r), *bfc = act(F, 0.02f, &r), *gwfc = rnd(F * C, 1, &r), *gbfc = rnd(F, 1, &r);
    float *hfc = act(M * F, 1, &r), *hg = act(M * F, 1, &r), *ghfc = act(M * F, 1, &r);
    float *wte = act(V * C, 0.02f, &r), *gwte = rnd(V * C, 1, &r);
    float *logits = act(M * V, 1, &r), *dlogits = act(M * V, 1, &r), *losses = rnd(M, 1, &r);
    float *lnw = act(C, 1, &r), *lnb = act(C, 1, &r), *glnw = rnd(C, 1, &r), *glnb = rnd(C, 1, &r);
    float *mean = rnd(M, 1, &r), *rstd = rnd(M, 1, &r), *wpe = act(T * C, 0.02f, &r), *gwpe = rnd(T * C, 1, &r);
    int32_t *hids = malloc((size_t)M * sizeof *hids);
    for (int64_t i = 0; i < M; i++)
        hids[i] = (int32_t)(ds_rng_next(&r) % 256); /* byte tokens, as ds-train's text data */
    int32_t *ids = ops->alloc(be, (size_t)M * sizeof *ids), *tg = ops->alloc(be, (size_t)M * sizeof *tg);
    if (!ids || !tg)
        die("alloc");
    CK(ops->upload(be, ids, hids, (size_t)M * sizeof *ids));
    CK(ops->upload(be, tg, hids, (size_t)M * sizeof *tg));
    const double fb = a16 ? 2.0 : 4.0; /* bytes per activation value */
    /* the probabilities' traffic, which the fused attention kernels do not have (no GB/s then) */
    const double att_b = ops->attention_state && ops->attention_state(be, B, T, C, H, 1) != B * H * T * T ? 0 : 4.0;

    TIME("embedding_fwd", 0, fb * 2 * M * C, 1, CK(ops->embedding_fwd(be, ids, wte, x, M, C)));
    TIME("posadd_fwd", 0, fb * 3 * M * C, 1, CK(ops->posadd_fwd(be, x, wpe, dx, B, T, C)));
    TIME("layernorm_fwd", 0, fb * 2 * M * C, 2 * L + 1,
         CK(ops->layernorm_fwd(be, x, lnw, lnb, dx, mean, rstd, M, C, 1e-5f)));
    TIME("linear_fwd qkv", 2.0 * M * C * 3 * C, 0, L,
         CK(ops->linear_fwd(be, x, wqkv, bqkv, qkv, M, C, 3 * C)));
    TIME("attention_fwd (causal)", 4.0 * B * H * T * T * (C / H), att_b * 3 * B * H * T * T, L,
         CK(ops->attention_fwd(be, qkv, ao, att, B, T, C, H, 1)));
    TIME("linear_fwd attn.proj", 2.0 * M * C * C, 0, L, CK(ops->linear_fwd(be, ao, wqkv, bqkv, x, M, C, C)));
    TIME("add (residual)", 0, fb * 3 * M * C, 2 * L, CK(ops->add(be, x, dx, gy, M * C)));
    /* the MLP's GELU inside the products where the backend does that (ds_backend_ops.linear_gelu_fwd,
     * linear_bwd_gelu: the CUDA backend with 16-bit storage), as the model runs it; the separate
     * ops are then timed beside them, outside the step (x/step empty) */
    int gf = 0, gb = 0;
    if (ops->linear_gelu_fwd)
        CK(ops->linear_gelu_fwd(be, x, wfc, bfc, hfc, hg, M, C, F, &gf));
    if (ops->linear_bwd_gelu)
        CK(ops->linear_bwd_gelu(be, gy, hg, wfc, hfc, ghfc, gwfc, gbfc, M, F, C, &gb));
    if (gf)
        TIME("linear_fwd fc + gelu (fused)", 2.0 * M * C * F, 0, L,
             CK(ops->linear_gelu_fwd(be, x, wfc, bfc, hfc, hg, M, C, F, &gf)));
    TIME("linear_fwd fc", 2.0 * M * C * F, 0, gf ? 0 : L, CK(ops->linear_fwd(be, x, wfc, bfc, hfc, M, C, F)));
    TIME("gelu_fwd (tanh)", 0, fb * 2 * M * F, gf ? 0 : L, CK(ops->gelu_fwd(be, hfc, hg, M * F, 1)));
    TIME("linear_fwd proj", 2.0 * M * F * C, 0, L, CK(ops->linear_fwd(be, hg, wfc, bfc, x, M, F, C)));
    TIME("linear_fwd lm_head", 2.0 * M * C * V, 0, 1, CK(ops->linear_fwd(be, x, wte, NULL, logits, M, C, V)));
    TIME("xent_fwd + grad", 0, fb * 3 * M * V, 1,
         CK(ops->xent_fwd(be, logits, tg, losses, dlogits, 1.0f / (float)M, M, V)));
    double s;
    TIME("sum (losses, to host)", 0, fb * M, 1, CK(ops->sum(be, losses, M, &s)));
    TIME("linear_bwd lm_head", 4.0 * M * C * V, 0, 1,
         CK(ops->linear_bwd(be, dlogits, x, wte, dx, gwte, NULL, M, C, V, 0)));
    TIME("layernorm_bwd", 0, fb * 4 * M * C, 2 * L + 1,
         CK(ops->layernorm_bwd(be, gy, x, lnw, mean, rstd, dx, glnw, glnb, M, C, 1)));
    if (gb)
        TIME("linear_bwd proj + gelu_bwd (fused)", 4.0 * M * F * C, 0, L,
             CK(ops->linear_bwd_gelu(be, gy, hg, wfc, hfc, ghfc, gwfc, gbfc, M, F, C, &gb)));
    TIME("linear_bwd proj", 4.0 * M * F * C, 0, gb ? 0 : L,
         CK(ops->linear_bwd(be, gy, hg, wfc, ghfc, gwfc, gbfc, M, F, C, 0)));
    TIME("gelu_bwd (tanh)", 0, fb * 3 * M * F, gb ? 0 : L, CK(ops->gelu_bwd(be, hfc, ghfc, hg, M * F, 1, 0)));
    TIME("linear_bwd fc", 4.0 * M * C * F, 0, L,
         CK(ops->linear_bwd(be, hg, x, wfc, dx, gwfc, gbfc, M, C, F, 0)));
    if (a16) /* the model adds activation gradients with add (accumulate is fp32-only) */
        TIME("add (residual grad, in place)", 0, fb * 3 * M * C, 2 * L, CK(ops->add(be, gy, dx, dx, M * C)));
    else
        TIME("accumulate (residual grad)", 0, fb * 3 * M * C, 2 * L, CK(ops->accumulate(be, gy, dx, M * C, 1)));
    TIME("linear_bwd attn.proj", 4.0 * M * C * C, 0, L,
         CK(ops->linear_bwd(be, gy, ao, wqkv, dx, gwqkv, gbqkv, M, C, C, 0)));
    TIME("attention_bwd (causal)", 8.0 * B * H * T * T * (C / H), att_b * 4 * B * H * T * T, L,
         CK(ops->attention_bwd(be, gy, qkv, att, dqkv, B, T, C, H, 1)));
    TIME("linear_bwd qkv", 4.0 * M * C * 3 * C, 0, L,
         CK(ops->linear_bwd(be, dqkv, x, wqkv, dx, gwqkv, gbqkv, M, C, 3 * C, 0)));
    TIME("posadd_bwd", 0, fb * 2 * M * C, 1, CK(ops->posadd_bwd(be, gy, gwpe, B, T, C)));
    /* the other attention path beside the one above, for comparison: a second backend on the
     * same device with DS_CUDA_FLASH flipped (not in the step; the fused one only where it applies) */
    if (!cpu) {
        CK(ops->synchronize(be));
        const int fused_now = att_b == 0;
        ds_backend *main_be = be, *other = NULL;
        setenv("DS_CUDA_FLASH", fused_now ? "0" : "1", 1);
        setenv("DS_CUDA_XENT_ROWS", "1", 1); /* and the cross-entropy reading each row once */
        if (ds_backend_create(&other, "cuda", &err) != DS_OK) {
            fprintf(stderr, "bench_cuda: %s\n", err.msg);
            return 2;
        }
        unsetenv("DS_CUDA_FLASH");
        unsetenv("DS_CUDA_XENT_ROWS");
        be = other;
        if (round)
            precision_on(be, round);
        if (fused_now || ops->attention_state(be, B, T, C, H, 1) != B * H * T * T) {
            const double ob = fused_now ? 4.0 : 0; /* probabilities' traffic: materialized only */
            TIME(fused_now ? "materialized attention_fwd" : "fused attention_fwd", 4.0 * B * H * T * T * (C / H),
                 ob * 3 * B * H * T * T, 0, CK(ops->attention_fwd(be, qkv, ao, att, B, T, C, H, 1)));
            TIME(fused_now ? "materialized attention_bwd" : "fused attention_bwd", 8.0 * B * H * T * T * (C / H),
                 ob * 4 * B * H * T * T, 0, CK(ops->attention_bwd(be, gy, qkv, att, dqkv, B, T, C, H, 1)));
        }
        if (a16) /* 16-bit logits: the main backend read each row twice (DS_CUDA_XENT_ROWS) */
            TIME("xent_fwd + grad (rows read once)", 0, fb * 3 * M * V, 0,
                 CK(ops->xent_fwd(be, logits, tg, losses, dlogits, 1.0f / (float)M, M, V)));
        ds_backend_destroy(other);
        be = main_be;
    }
    TIME("embedding_bwd (deterministic)", 0, fb * 2 * M * C, 1, CK(ops->embedding_bwd(be, ids, gy, gwte, M, C)));
    ops->free(be, logits);
    ops->free(be, dlogits);
    ops->free(be, att);
    /* the optimizer over the model's flat buffer (GPT-2 small: 124475904 parameters) */
    const int64_t P = envi("BENCH_PARAMS", V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C);
    float *p = rnd(P, 0.02f, &r), *g = rnd(P, 1e-3f, &r), *m = rnd(P, 1e-3f, &r), *v = rnd(P, 1e-3f, &r);
    CK(ops->scale(be, v, P, 0.0f)); /* v must be >= 0 */
    /* in 16-bit training the step also writes the working weights: 2-byte values with a16 */
    void *pw = prec16 ? ops->alloc(be, (size_t)P * (a16 ? 2 : 4)) : NULL;
    if (prec16 && !pw)
        die("alloc");
    ds_adamw_args aa = {.lr = 6e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                        .step = 1, .adam_w_mode = 1, .bias_correction = 1, .grad_scale = 1.0f,
                        .pw = pw, .round = prec16, .pw16 = a16 != 0};
    TIME("sumsq (grad norm, to host)", 0, 4.0 * P, 1, CK(ops->sumsq(be, g, P, &s)));
    TIME("adamw_step (all params)", 0, (4.0 * 7 + (prec16 ? (a16 ? 2 : 4) : 0)) * P, 1,
         CK(ops->adamw_step(be, p, g, m, v, P, &aa)));
    TIME("zero (grads)", 0, 4.0 * P, 1, CK(ops->zero(be, g, (size_t)P * sizeof(float))));

    /* (ms: the mean of 10 calls back to back after 2 warm-up calls, one synchronisation around them,
     * as a GPU's queue runs them; attention's TFLOP/s counts the full T x T products, which the
     * causal kernels halve by skipping the blocks above the diagonal) */
    printf("\nms: the mean of 10 back-to-back calls; attention's TFLOP/s counts the full T x T products\n");
    printf("\n%-34s %9s %9s %9s %6s %10s\n", "op (the shapes above)", "ms", "TFLOP/s", "GB/s", "x/step", "ms/step");
    double total = 0, gemm_total = 0, attn_total = 0;
    for (int i = 0; i < nrows; i++) {
        row *w = &rows[i];
        double tf = w->gflop > 0 ? w->gflop / w->ms : 0, gbs = w->gbytes > 0 ? w->gbytes / (w->ms / 1e3) : 0;
        double per = w->ms * w->per_step;
        total += per;
        if (strncmp(w->name, "linear", 6) == 0)
            gemm_total += per;
        if (strncmp(w->name, "attention", 9) == 0)
            attn_total += per;
        char tfs[16] = "", gbss[16] = "", ps[16] = "";
        if (tf > 0)
            snprintf(tfs, sizeof tfs, "%.1f", tf);
        if (gbs > 0)
            snprintf(gbss, sizeof gbss, "%.0f", gbs);
        if (w->per_step)
            snprintf(ps, sizeof ps, "%d", w->per_step);
        printf("%-34s %9.3f %9s %9s %6s %10.2f\n", w->name, w->ms, tfs, gbss, ps, per);
    }
    double tokens = (double)M;
    printf("\nestimated step from the op times: %.1f ms (linear %.1f ms, attention %.1f ms, other %.1f ms)"
           " = %.0f tokens/s\n",
           total, gemm_total, attn_total, total - gemm_total - attn_total, tokens / (total / 1e3));
    return 0;
}
