/* Mixed precision and optimizers: 16-bit rounding against the scalar converters, loss-scale
 * traces derived by hand from engine.md 2.2 (with DECISIONS.md's defaults), every optimizer
 * against torch.optim (LAMB against a float64 reference of the spec's formulas) from the
 * fixtures of scripts/make-optim-fixtures.py, the fused 16-bit weight write, user-registered
 * optimizers, and fp16 training through the engine (overflow skip, minimum-scale error). */
#include <json-c/json.h>
#include <omp.h>

#include "testutil.h"

/* ---- 16-bit rounding ------------------------------------------------------------------- */

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_round(const char *backend, int mode)
{
    ds_backend *be;
    ds_error err = {0};
    cr_assert_eq(ds_backend_create(&be, backend, &err), DS_OK, "%s", err.msg);
    enum { N = 1 << 20 };
    float *x = be->ops->alloc(be, N * sizeof(float));
    float *want = malloc(N * sizeof(float));
    const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                             1e-8f, 5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f, 6.1035156e-5f,
                             6.0975552e-5f, 3.4028235e38f, INFINITY, -INFINITY, NAN, 1.00048828125f,
                             1.000732421875f, 1.0078125f, 1.00390625f, 1.01171875f, 3.0e38f};
    int ns = (int)(sizeof special / sizeof special[0]);
    uint64_t s = 0x1234567;
    for (int i = 0; i < N; i++) {
        if (i < ns) {
            x[i] = special[i];
        } else {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t u = (uint32_t)(s >> 32);
            /* half of the draws in the fp16 range, where the interesting cases are */
            if (i & 1)
                u = (u & 0x80000000u) | (0x33000000u + (u % 0x14800000u));
            x[i] = from_bits(u);
        }
        want[i] = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(x[i]))
                                        : ds_f16_to_f32(ds_f32_to_f16(x[i]));
    }
    /* pack16 (store16's weights): the bits of the same rounding, NaN kept NaN */
    uint16_t *h = be->ops->alloc(be, N * 2);
    cr_assert_eq(be->ops->pack16(be, x, h, N, mode), DS_OK, "%s", be->err.msg);
    for (int i = 0; i < N; i++) {
        float got = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(h[i]) : ds_f16_to_f32(h[i]);
        if (isnan(want[i]))
            cr_assert(isnan(got), "%s pack16: element %d: NaN became %a", backend, i, got);
        else
            cr_assert_eq(bits(got), bits(want[i]), "%s pack16 %s: element %d: got %a, want %a", backend,
                         mode == DS_ROUND_BF16 ? "bf16" : "fp16", i, got, want[i]);
    }
    be->ops->free(be, h);
    cr_assert_eq(be->ops->round16(be, x, N, mode), DS_OK);
    for (int i = 0; i < N; i++) {
        if (isnan(want[i]))
            cr_assert(isnan(x[i]), "%s %s: element %d: NaN became %a", backend,
                      mode == DS_ROUND_BF16 ? "bf16" : "fp16", i, x[i]);
        else
            cr_assert_eq(bits(x[i]), bits(want[i]), "%s %s: element %d: got %a (0x%08x), want %a (0x%08x)",
                         backend, mode == DS_ROUND_BF16 ? "bf16" : "fp16", i, x[i], bits(x[i]),
                         want[i], bits(want[i]));
    }
    be->ops->free(be, x);
    free(want);
    ds_backend_destroy(be);
}

Test(round16, bf16_matches_converter) { check_round("cpu:generic", DS_ROUND_BF16); check_round("cpu", DS_ROUND_BF16); }
Test(round16, fp16_matches_converter) { check_round("cpu:generic", DS_ROUND_FP16); check_round("cpu", DS_ROUND_FP16); }

/* ---- loss scaler traces ------------------------------------------------------------------ */

/* pattern: 'G' good step, 'O' overflow; want[i] = the scale after update i. */
static void trace(const ds_loss_scale_config *c, const char *pattern, const double *want)
{
    ds_loss_scaler s;
    ds_loss_scaler_init(&s, c, DS_PREC_FP16);
    for (int i = 0; pattern[i]; i++) {
        ds_error err = {0};
        cr_assert_eq(ds_loss_scaler_update(&s, pattern[i] == 'O', &err), DS_OK, "update %d: %s", i, err.msg);
        cr_assert_eq(s.scale, want[i], "update %d (%c): scale %g, want %g", i, pattern[i], s.scale, want[i]);
    }
}

/* power 4, window 3, hysteresis 2. Without consecutive hysteresis the first overflow only uses
 * up the hysteresis; it is restored only when the scale grows, so the next two overflows both
 * halve; growth comes on the 3rd good step after the last overflow, then every 3. */
Test(loss_scaler, hysteresis_not_consecutive)
{
    ds_loss_scale_config c = {.initial_scale_power = 4, .loss_scale_window = 3, .hysteresis = 2,
                              .min_loss_scale = 1};
    const double want[] = {16, 16, 16, 16, 8, 4, 4, 4, 8, 8, 8, 16};
    trace(&c, "GGOGOOGGGGGG", want);
}

/* Same pattern with consecutive hysteresis: every good step refills it, so the overflow at
 * update 4 (after a good step) is absorbed too, and only the back-to-back one halves. */
Test(loss_scaler, hysteresis_consecutive)
{
    ds_loss_scale_config c = {.initial_scale_power = 4, .loss_scale_window = 3, .hysteresis = 2,
                              .consecutive_hysteresis = 1, .min_loss_scale = 1};
    const double want[] = {16, 16, 16, 16, 16, 8, 8, 8, 16, 16, 16, 32};
    trace(&c, "GGOGOOGGGGGG", want);
}

/* hysteresis 1: every overflow halves; window 2 grows after 2 good steps. */
Test(loss_scaler, no_hysteresis)
{
    ds_loss_scale_config c = {.initial_scale_power = 16, .loss_scale_window = 2, .hysteresis = 1,
                              .min_loss_scale = 1};
    const double want[] = {65536, 131072, 65536, 32768, 32768, 65536, 65536, 131072};
    trace(&c, "GGOOGGGG", want);
}

/* An overflow the hysteresis absorbs restarts the window too (last_overflow_iter moves on every
 * overflow): power 4, window 3, hysteresis 2, the overflow at update 1 leaves the scale as it is
 * and growth waits for 3 good steps after it (update 4), not 3 after the start (update 2). */
Test(loss_scaler, absorbed_overflow_restarts_the_window)
{
    ds_loss_scale_config c = {.initial_scale_power = 4, .loss_scale_window = 3, .hysteresis = 2,
                              .min_loss_scale = 1};
    const double want[] = {16, 16, 16, 16, 32, 32};
    trace(&c, "GOGGGG", want);
}

/* DeepSpeed raises only when the scale equals the minimum: a scale below it (initial_scale_power
 * under min_loss_scale) is raised to the minimum by the first overflow, max(1/2, 4); the next
 * overflow, at the minimum, is the error, naming the minimum. */
Test(loss_scaler, scale_below_the_minimum_is_raised_to_it)
{
    ds_loss_scale_config c = {.initial_scale_power = 0, .loss_scale_window = 1000, .hysteresis = 1,
                              .min_loss_scale = 4};
    ds_loss_scaler s;
    ds_error err = {0};
    ds_loss_scaler_init(&s, &c, DS_PREC_FP16);
    cr_assert_eq(s.scale, 1.0);
    cr_assert_eq(ds_loss_scaler_update(&s, 1, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(s.scale, 4.0);
    cr_assert_eq(ds_loss_scaler_update(&s, 1, &err), DS_ERR_NUMERIC);
    cr_assert(strstr(err.msg, "minimum loss scale 4:"), "%s", err.msg);
}

Test(loss_scaler, minimum_scale_is_an_error)
{
    ds_loss_scale_config c = {.initial_scale_power = 1, .loss_scale_window = 1000, .hysteresis = 1,
                              .min_loss_scale = 1.5};
    ds_loss_scaler s;
    ds_error err = {0};
    ds_loss_scaler_init(&s, &c, DS_PREC_FP16);
    cr_assert_eq(ds_loss_scaler_update(&s, 1, &err), DS_OK);
    cr_assert_eq(s.scale, 1.5); /* max(2/2, 1.5) */
    cr_assert_eq(ds_loss_scaler_update(&s, 0, &err), DS_OK);
    cr_assert_eq(ds_loss_scaler_update(&s, 1, &err), DS_ERR_NUMERIC);
    cr_assert(strstr(err.msg, "minimum loss scale 1.5"), "%s", err.msg);
}

Test(loss_scaler, static_and_bf16_never_change)
{
    ds_loss_scale_config c = {.loss_scale = 128, .initial_scale_power = 16, .loss_scale_window = 1,
                              .hysteresis = 1, .min_loss_scale = 1};
    const double want[] = {128, 128, 128, 128, 128};
    trace(&c, "OOOGG", want);
    ds_loss_scaler s;
    ds_error err = {0};
    ds_loss_scaler_init(&s, &c, DS_PREC_BF16);
    cr_assert_eq(s.scale, 1.0);
    cr_assert_eq(ds_loss_scaler_update(&s, 1, &err), DS_OK);
    cr_assert_eq(s.scale, 1.0);
}

/* ---- through the engine ------------------------------------------------------------------ */

static const char *MLP_NET =
    "{\"input\": {\"type\": \"features\", \"dim\": 16}, \"layers\": ["
    "{\"type\": \"linear\", \"name\": \"fc1\", \"out\": 32}, {\"type\": \"gelu\"},"
    "{\"type\": \"linear\", \"name\": \"fc2\", \"out\": 5}], \"loss\": {\"type\": \"cross_entropy\"}}";

enum { MB = 8, FEAT = 16, CLASSES = 5 };

typedef struct mlp_data {
    float x[MB * FEAT];
    int32_t labels[MB];
} mlp_data;

static void make_data(mlp_data *d, int seed)
{
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(seed + 1);
    for (int i = 0; i < MB * FEAT; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        d->x[i] = (float)((double)(s >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
    }
    for (int i = 0; i < MB; i++)
        d->labels[i] = (int32_t)((i * 7 + seed) % CLASSES);
}

static ds_engine *engine(const char *config_json, const ds_user_optimizer *users, int n_users,
                         ds_status want, char *msg, size_t msg_size)
{
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_json = config_json, .config_name = "ds.json", .net_json = MLP_NET,
                           .net_name = "mlp.json", .user_optimizers = users, .n_user_optimizers = n_users};
    ds_status st = ds_initialize(&e, &o, &err);
    cr_assert_eq(st, want, "ds_initialize: status %d, want %d: %s", st, want, err.msg);
    if (msg)
        snprintf(msg, msg_size, "%s", err.msg);
    return e;
}

static void fwd_bwd(ds_engine *e, int seed)
{
    mlp_data d;
    make_data(&d, seed);
    ds_batch b = {.x = d.x, .labels = d.labels};
    double loss;
    ds_error err = {0};
    cr_assert_eq(ds_engine_forward(e, &b, &loss, &err), DS_OK, "%s", err.msg);
    cr_assert(isfinite(loss));
    cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
}

/* a user optimizer: p -= lr * scale * sign(g); state[0] counts the updates per element */
typedef struct sign_ctx {
    double scale;
    int steps_seen;
} sign_ctx;

static ds_status sign_init(void *ctx, const char *params_json, ds_error *err)
{
    sign_ctx *c = ctx;
    json_object *p = json_tokener_parse(params_json), *v;
    c->scale = 1.0;
    if (p && json_object_object_get_ex(p, "scale", &v)) {
        if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)) {
            json_object_put(p);
            return ds_error_set(err, DS_ERR_INVALID, "optimizer.params.scale: expected a number");
        }
        c->scale = json_object_get_double(v);
    }
    json_object_put(p);
    return DS_OK;
}

static ds_status sign_step(void *ctx, const ds_user_optimizer_step *s, ds_error *err)
{
    (void)err;
    sign_ctx *c = ctx;
    for (int64_t i = 0; i < s->n; i++) {
        float g = s->grads[i] * s->grad_scale;
        s->params[i] -= (float)(s->lr * c->scale) * (float)((g > 0) - (g < 0));
        s->state[0][i] += 1.0f;
    }
    c->steps_seen++;
    return DS_OK;
}

static void user_optimizer_run(const char *precision)
{
    sign_ctx ctx = {0};
    ds_user_optimizer u = {.name = "SignSGD", .n_state = 1, .init = sign_init, .step = sign_step, .ctx = &ctx};
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"train_micro_batch_size_per_gpu\": %d, \"optimizer\": {\"type\": \"SignSGD\", "
             "\"params\": {\"lr\": 0.01, \"scale\": 0.5}}%s}", MB, precision);
    ds_engine *e = engine(cfg, &u, 1, DS_OK, NULL, 0);
    cr_assert_eq(ctx.scale, 0.5, "init did not read optimizer.params");
    const ds_net *net = ds_engine_net(e);
    int64_t n = net->params.t[0].numel;
    float *p0 = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float)), *p1 = malloc(n * sizeof(float));
    ds_error err = {0};
    const char *name = net->params.t[0].name;
    cr_assert_eq(ds_engine_get_param(e, name, p0, n, &err), DS_OK);
    fwd_bwd(e, 1);
    cr_assert_eq(ds_engine_get_grad(e, name, g, n, &err), DS_OK);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ctx.steps_seen, 1);
    cr_assert_eq(ds_engine_get_param(e, name, p1, n, &err), DS_OK);
    double S = ds_engine_last_step_loss_scale(e);
    int moved = 0;
    for (int64_t i = 0; i < n; i++) {
        float gi = (float)(g[i] / S);
        float want = p0[i] - 0.005f * (float)((gi > 0) - (gi < 0));
        cr_assert_eq(p1[i], want, "element %lld: %g, want %g", (long long)i, p1[i], want);
        moved += p1[i] != p0[i];
    }
    cr_assert(moved > n / 2);
    size_t ob;
    ds_engine_memory(e, NULL, NULL, &ob, NULL);
    cr_assert_eq(ob, (size_t)net->params.total * sizeof(float), "one state buffer: %zu bytes", ob);
    free(p0);
    free(g);
    free(p1);
    ds_engine_destroy(e);
}

Test(user_optimizer, selected_by_name_fp32) { user_optimizer_run(""); }
Test(user_optimizer, selected_by_name_fp16) { user_optimizer_run(", \"fp16\": {\"enabled\": true}"); }

Test(user_optimizer, errors_name_the_problem)
{
    sign_ctx ctx = {0};
    char msg[DS_ERROR_MSG_MAX];
    ds_user_optimizer u = {.name = "SignSGD", .n_state = 0, .init = sign_init, .step = sign_step, .ctx = &ctx};
    /* unregistered name: the config names optimizer.type */
    engine("{\"train_micro_batch_size_per_gpu\": 8, \"optimizer\": {\"type\": \"SignSGD\"}}", NULL, 0,
           DS_ERR_INVALID, msg, sizeof msg);
    cr_assert(strstr(msg, "optimizer.type") && strstr(msg, "SignSGD"), "%s", msg);
    /* the optimizer's own check of its params */
    engine("{\"train_micro_batch_size_per_gpu\": 8, \"optimizer\": {\"type\": \"SignSGD\", \"params\": {\"scale\": \"x\"}}}",
           &u, 1, DS_ERR_INVALID, msg, sizeof msg);
    cr_assert(strstr(msg, "optimizer.params.scale"), "%s", msg);
    /* a built-in name cannot be taken */
    ds_user_optimizer bad = u;
    bad.name = "adamw";
    engine("{\"train_micro_batch_size_per_gpu\": 8}", &bad, 1, DS_ERR_INVALID, msg, sizeof msg);
    cr_assert(strstr(msg, "adamw"), "%s", msg);
}

static float *param0(ds_engine *e, int64_t *n)
{
    const ds_net *net = ds_engine_net(e);
    *n = net->params.t[0].numel;
    float *p = malloc(*n * sizeof(float));
    ds_error err = {0};
    cr_assert_eq(ds_engine_get_param(e, net->params.t[0].name, p, *n, &err), DS_OK);
    return p;
}

static void inject_inf(ds_engine *e)
{
    const ds_net *net = ds_engine_net(e);
    int64_t n = net->params.t[1].numel;
    float *g = malloc(n * sizeof(float));
    ds_error err = {0};
    cr_assert_eq(ds_engine_get_grad(e, net->params.t[1].name, g, n, &err), DS_OK);
    g[n / 2] = -INFINITY;
    cr_assert_eq(ds_engine_set_grad(e, net->params.t[1].name, g, n, &err), DS_OK);
    free(g);
}

Test(fp16_engine, overflow_skips_the_step_and_halves_the_scale)
{
    ds_engine *e = engine("{\"train_micro_batch_size_per_gpu\": 8, \"gradient_clipping\": 1.0, "
                          "\"fp16\": {\"enabled\": true, \"initial_scale_power\": 10, \"hysteresis\": 1, "
                          "\"loss_scale_window\": 100}, \"scheduler\": {\"type\": \"WarmupLR\", \"params\": "
                          "{\"warmup_min_lr\": 0.0001, \"warmup_max_lr\": 0.001, \"warmup_num_steps\": 10}}}",
                          NULL, 0, DS_OK, NULL, 0);
    ds_error err = {0};
    cr_assert_eq(ds_engine_precision(e), DS_PREC_FP16);
    cr_assert_eq(ds_engine_loss_scale(e), 1024.0);
    fwd_bwd(e, 0);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    cr_assert(ds_engine_was_step_applied(e));
    int64_t n;
    float *before = param0(e, &n);
    ds_engine_scalars s0, s1;
    ds_engine_get_scalars(e, &s0);
    fwd_bwd(e, 1);
    inject_inf(e);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    cr_assert(!ds_engine_was_step_applied(e));
    cr_assert_eq(ds_engine_skipped_steps(e), 1);
    /* DeepSpeed: no scheduler step and no optimizer step (Adam's bias-correction count) */
    ds_engine_get_scalars(e, &s1);
    cr_assert_eq(s1.optimizer_step, s0.optimizer_step, "a skipped step counted as an update");
    cr_assert_eq(s1.sched_iter, s0.sched_iter, "a skipped step advanced the scheduler");
    cr_assert_eq(s1.lr, s0.lr, "the lr moved on a skipped step (%g -> %g)", s0.lr, s1.lr);
    cr_assert_eq(ds_engine_global_steps(e), 2, "a skipped step still counts");
    cr_assert_eq(ds_engine_last_step_loss_scale(e), 1024.0);
    cr_assert_eq(ds_engine_loss_scale(e), 512.0);
    float *after = param0(e, &n);
    cr_assert_arr_eq(before, after, n * sizeof(float), "a skipped step changed the weights");
    /* and the next step trains again, with clean gradients */
    fwd_bwd(e, 2);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    cr_assert(ds_engine_was_step_applied(e));
    float *later = param0(e, &n);
    cr_assert(memcmp(after, later, n * sizeof(float)) != 0);
    for (int64_t i = 0; i < n; i++)
        cr_assert(isfinite(later[i]));
    free(before);
    free(after);
    free(later);
    ds_engine_destroy(e);
}

/* A step after which the scale grows is unscaled by the scale its backward used, not by the
 * grown one: fp16 with loss_scale_window 1 (the scale doubles after every good step) and with a
 * window that never comes take the same SGD updates up to fp16 rounding of the gradients; an
 * update divided by the grown scale would be half as large. */
Test(fp16_engine, a_growth_step_unscales_by_the_scale_it_used)
{
    const char *cfg = "{\"train_micro_batch_size_per_gpu\": 8, \"optimizer\": {\"type\": \"SGD\", \"params\": "
                      "{\"lr\": 0.1}}, \"fp16\": {\"enabled\": true, \"initial_scale_power\": 8, "
                      "\"loss_scale_window\": %d}}";
    char ca[400], cb[400];
    snprintf(ca, sizeof ca, cfg, 1);
    snprintf(cb, sizeof cb, cfg, 1000);
    ds_engine *a = engine(ca, NULL, 0, DS_OK, NULL, 0), *b = engine(cb, NULL, 0, DS_OK, NULL, 0);
    ds_error err = {0};
    int64_t n;
    for (int k = 0; k < 3; k++) {
        float *pa = param0(a, &n), *pb = param0(b, &n);
        fwd_bwd(a, k);
        fwd_bwd(b, k);
        cr_assert_eq(ds_engine_step(a, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(b, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_last_step_loss_scale(a), 256.0 * (1 << k), "step %d used scale %g", k + 1,
                     ds_engine_last_step_loss_scale(a));
        float *qa = param0(a, &n), *qb = param0(b, &n);
        double db = 0, dd = 0;
        for (int64_t i = 0; i < n; i++) {
            db += fabs((double)qb[i] - pb[i]);
            dd += fabs(((double)qa[i] - pa[i]) - ((double)qb[i] - pb[i]));
        }
        cr_assert(db > 0 && dd <= 1e-2 * db, "step %d: updates differ by %.3g of %.3g (scale %g against %g)", k + 1, dd,
                  db, ds_engine_last_step_loss_scale(a), ds_engine_last_step_loss_scale(b));
        free(pa), free(pb), free(qa), free(qb);
    }
    ds_engine_destroy(a);
    ds_engine_destroy(b);
}

/* forward loss of e on x (labels of seed 0), one micro-batch */
static double loss_on(ds_engine *e, const float *x)
{
    mlp_data d;
    make_data(&d, 0);
    ds_batch b = {.x = x, .labels = d.labels};
    double loss;
    ds_error err = {0};
    cr_assert_eq(ds_engine_forward(e, &b, &loss, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
    return loss;
}

/* fp16.auto_cast (DeepSpeed's _cast_inputs_half): the network sees its features as fp16 values */
Test(fp16_engine, auto_cast_rounds_the_inputs_to_fp16)
{
    const char *fp16 = "{\"train_micro_batch_size_per_gpu\": 8, \"fp16\": {\"enabled\": true}}";
    const char *cast = "{\"train_micro_batch_size_per_gpu\": 8, \"fp16\": {\"enabled\": true, \"auto_cast\": true}}";
    mlp_data d;
    make_data(&d, 0);
    float x[MB * FEAT], xr[MB * FEAT];
    memcpy(x, d.x, sizeof x);
    int differ = 0;
    for (int i = 0; i < MB * FEAT; i++) {
        xr[i] = ds_f16_to_f32(ds_f32_to_f16(x[i]));
        differ += xr[i] != x[i];
    }
    cr_assert(differ > MB * FEAT / 2, "the inputs must not be fp16 values already (%d differ)", differ);
    ds_engine *a = engine(cast, NULL, 0, DS_OK, NULL, 0), *b = engine(fp16, NULL, 0, DS_OK, NULL, 0),
              *c = engine(fp16, NULL, 0, DS_OK, NULL, 0);
    double la = loss_on(a, x), lb = loss_on(b, xr), lc = loss_on(c, x);
    cr_assert_eq(la, lb, "auto_cast on x %.17g, without it on x rounded %.17g", la, lb);
    cr_assert_neq(la, lc, "auto_cast changed nothing (%.17g)", la);
    cr_assert_arr_eq(x, d.x, sizeof x, "the caller's inputs were changed");
    /* a feature beyond fp16's range is an error naming it; without auto_cast it is taken */
    x[3 * FEAT + 5] = 70000.0f;
    mlp_data l;
    make_data(&l, 0);
    ds_batch bb = {.x = x, .labels = l.labels};
    double loss;
    ds_error err = {0};
    cr_assert_eq(ds_engine_forward(a, &bb, &loss, &err), DS_ERR_INVALID);
    cr_assert(strstr(err.msg, "sample 3, feature 5: 70000") && strstr(err.msg, "65504") &&
              strstr(err.msg, "fp16.auto_cast"), "%s", err.msg);
    cr_assert_eq(ds_engine_forward(c, &bb, &loss, &err), DS_OK, "%s", err.msg);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
    ds_engine_destroy(c);
    /* without fp16 training auto_cast changes nothing */
    a = engine("{\"train_micro_batch_size_per_gpu\": 8, \"fp16\": {\"enabled\": false, \"auto_cast\": true}}",
               NULL, 0, DS_OK, NULL, 0);
    b = engine("{\"train_micro_batch_size_per_gpu\": 8}", NULL, 0, DS_OK, NULL, 0);
    la = loss_on(a, d.x);
    lb = loss_on(b, d.x);
    cr_assert_eq(la, lb, "fp32 with auto_cast %.17g, without %.17g", la, lb);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
}

Test(fp16_engine, overflow_at_the_minimum_scale_is_an_error)
{
    ds_engine *e = engine("{\"train_micro_batch_size_per_gpu\": 8, "
                          "\"fp16\": {\"enabled\": true, \"initial_scale_power\": 2, \"hysteresis\": 1, "
                          "\"min_loss_scale\": 4}}", NULL, 0, DS_OK, NULL, 0);
    ds_error err = {0};
    fwd_bwd(e, 0);
    inject_inf(e);
    cr_assert_eq(ds_engine_step(e, &err), DS_ERR_NUMERIC);
    cr_assert(strstr(err.msg, "step 1") && strstr(err.msg, "minimum loss scale 4"), "%s", err.msg);
    /* as in fp32: the batch is discarded, and the next one trains (it kept failing) */
    cr_assert(ds_engine_at_boundary(e) && !ds_engine_was_step_applied(e));
    fwd_bwd(e, 1);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "the next batch after the error: %s", err.msg);
    cr_assert(ds_engine_was_step_applied(e));
    ds_engine_destroy(e);
}

Test(fp16_engine, fp32_and_bf16_refuse_non_finite_gradients)
{
    const char *cfgs[] = {"{\"train_micro_batch_size_per_gpu\": 8}",
                          "{\"train_micro_batch_size_per_gpu\": 8, \"bf16\": {\"enabled\": true}}"};
    for (int k = 0; k < 2; k++) {
        ds_engine *e = engine(cfgs[k], NULL, 0, DS_OK, NULL, 0);
        ds_error err = {0};
        fwd_bwd(e, 0);
        inject_inf(e);
        const ds_net *net = ds_engine_net(e);
        const int64_t n0 = net->params.t[0].numel;
        float *before = malloc(n0 * sizeof(float)), *after = malloc(n0 * sizeof(float));
        float *g = malloc(n0 * sizeof(float));
        cr_assert(before && after && g);
        cr_assert_eq(ds_engine_get_param(e, net->params.t[0].name, before, n0, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(e, &err), DS_ERR_NUMERIC, "%s", cfgs[k]);
        cr_assert(strstr(err.msg, k ? "bf16" : "fp32") && strstr(err.msg, "the batch's gradients are discarded"),
                  "%s", err.msg);
        /* nothing updated, the batch discarded: its gradients zeroed, and the next batch trains
         * (the kept inf failed every later step, and at_boundary stayed 0) */
        cr_assert_eq(ds_engine_get_param(e, net->params.t[0].name, after, n0, &err), DS_OK, "%s", err.msg);
        cr_assert_arr_eq(before, after, n0 * sizeof(float), "the failed step changed the weights");
        cr_assert_eq(ds_engine_get_grad(e, net->params.t[0].name, g, n0, &err), DS_OK, "%s", err.msg);
        for (int64_t i = 0; i < n0; i++)
            cr_assert_eq(g[i], 0.0f, "gradient %lld kept: %g", (long long)i, g[i]);
        cr_assert(ds_engine_at_boundary(e));
        cr_assert(!ds_engine_was_step_applied(e));
        cr_assert_eq(ds_engine_global_steps(e), 0);
        fwd_bwd(e, 1);
        cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s: the next batch after the failed step: %s", cfgs[k], err.msg);
        cr_assert(ds_engine_was_step_applied(e));
        cr_assert_eq(ds_engine_global_steps(e), 1);
        free(before), free(after), free(g);
        ds_engine_destroy(e);
    }
    /* bf16 with check_grad_overflow skips instead, at scale 1 */
    ds_engine *e = engine("{\"train_micro_batch_size_per_gpu\": 8, \"bf16\": {\"enabled\": true, "
                          "\"check_grad_overflow\": true}}", NULL, 0, DS_OK, NULL, 0);
    ds_error err = {0};
    fwd_bwd(e, 0);
    inject_inf(e);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    cr_assert(!ds_engine_was_step_applied(e));
    cr_assert_eq(ds_engine_loss_scale(e), 1.0);
    ds_engine_destroy(e);
}

/* libds(3): a NULL pointer where the API needs one is DS_ERR_INVALID naming it, never a crash or a
 * silent change (set_param with a NULL host zeroed the weights and returned DS_OK) */
Test(fp16_engine, null_arguments_are_errors)
{
    ds_engine *e = engine("{\"train_micro_batch_size_per_gpu\": 8}", NULL, 0, DS_OK, NULL, 0);
    const ds_net *net = ds_engine_net(e);
    const char *name = net->params.t[0].name;
    const int64_t n = net->params.t[0].numel;
    float *w = malloc(n * sizeof(float)), *w2 = malloc(n * sizeof(float));
    cr_assert(w && w2);
    ds_error err = {0};
    cr_assert_eq(ds_engine_get_param(e, name, w, n, &err), DS_OK, "%s", err.msg);
    double loss;
    ds_batch b = {0};
    ds_engine *none = NULL;
    ds_engine_options o = {0};
#define NULLARG(call, what)                                                                       \
    do {                                                                                          \
        memset(&err, 0, sizeof err);                                                              \
        cr_expect_eq((call), DS_ERR_INVALID, "%s", #call);                                        \
        cr_expect(strstr(err.msg, what " is NULL") != NULL, "%s: %s", #call, err.msg);            \
    } while (0)
    NULLARG(ds_engine_set_param(e, name, NULL, n, &err), "host");
    NULLARG(ds_engine_set_grad(e, name, NULL, n, &err), "host");
    NULLARG(ds_engine_get_param(e, NULL, w2, n, &err), "name");
    NULLARG(ds_engine_get_output(e, NULL, 1, &err), "host");
    NULLARG(ds_engine_forward(e, NULL, &loss, &err), "batch");
    NULLARG(ds_engine_forward(e, &b, NULL, &err), "loss");
    NULLARG(ds_engine_eval(e, NULL, &loss, &err), "batch");
    NULLARG(ds_engine_save_checkpoint(e, NULL, NULL, NULL, &err), "dir");
    NULLARG(ds_engine_load_checkpoint(e, NULL, NULL, NULL, &err), "dir");
    NULLARG(ds_engine_save_weights(e, NULL, 0, &err), "path");
    NULLARG(ds_engine_load_weights(e, NULL, &err), "path");
    NULLARG(ds_engine_step(none, &err), "the engine");
    NULLARG(ds_engine_backward(none, &err), "the engine");
    NULLARG(ds_initialize(&none, NULL, &err), "opts");
    NULLARG(ds_initialize(NULL, &o, &err), "out");
    char *tag = NULL;
    NULLARG(ds_ckpt_latest(NULL, &tag, &err), "dir");
    NULLARG(ds_ckpt_prune(NULL, 1, NULL, &err), "dir");
#undef NULLARG
    ds_engine_memory_report(e, NULL); /* nothing to report into: nothing done */
    /* a batch that says how many samples it holds is checked against the micro-batch */
    mlp_data d;
    make_data(&d, 0);
    ds_batch small = {.x = d.x, .labels = d.labels, .samples = 7};
    cr_expect_eq(ds_engine_forward(e, &small, &loss, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "batch: 7 samples, but the micro-batch is 8") != NULL, "%s", err.msg);
    small.samples = 8;
    cr_expect_eq(ds_engine_forward(e, &small, &loss, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_get_param(e, name, w2, n, &err), DS_OK, "%s", err.msg);
    cr_assert_arr_eq(w, w2, n * sizeof(float), "a refused call changed the weights");
    free(w), free(w2);
    ds_engine_destroy(e);
}

/* The working weights the model reads are the master weights rounded: after training steps in
 * 16-bit mode, a forward pass must equal one from an fp32 engine given those rounded weights. */
static void working_weights_are_rounded(const char *block, int mode)
{
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"train_micro_batch_size_per_gpu\": 8, %s}", block);
    ds_engine *e = engine(cfg, NULL, 0, DS_OK, NULL, 0);
    ds_error err = {0};
    for (int s = 0; s < 3; s++) {
        fwd_bwd(e, s);
        cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    }
    cr_assert_eq(ds_engine_skipped_steps(e), 0);
    mlp_data d;
    make_data(&d, 9);
    ds_batch b = {.x = d.x, .labels = d.labels};
    double l16, l32;
    cr_assert_eq(ds_engine_eval(e, &b, &l16, &err), DS_OK);
    /* same weights in a fp32 engine, rounded by hand (the input x is rounded too: the first
     * layer's output rounding then makes both paths see the same numbers) */
    ds_engine *f = engine("{\"train_micro_batch_size_per_gpu\": 8}", NULL, 0, DS_OK, NULL, 0);
    const ds_net *net = ds_engine_net(e);
    for (int i = 0; i < net->params.n; i++) {
        int64_t n = net->params.t[i].numel;
        float *p = malloc(n * sizeof(float));
        cr_assert_eq(ds_engine_get_param(e, net->params.t[i].name, p, n, &err), DS_OK);
        for (int64_t k = 0; k < n; k++)
            p[k] = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(p[k])) : ds_f16_to_f32(ds_f32_to_f16(p[k]));
        cr_assert_eq(ds_engine_set_param(f, net->params.t[i].name, p, n, &err), DS_OK);
        free(p);
    }
    cr_assert_eq(ds_engine_eval(f, &b, &l32, &err), DS_OK);
    /* the 16-bit engine's logits are values of the format; the fp32 engine's, from the same
     * weights, are close (the format's precision) but not all equal */
    float o16[MB * CLASSES], o32[MB * CLASSES];
    cr_assert_eq(ds_engine_get_output(e, o16, MB * CLASSES, &err), DS_OK);
    cr_assert_eq(ds_engine_get_output(f, o32, MB * CLASSES, &err), DS_OK);
    double rel = mode == DS_ROUND_BF16 ? 1.0 / 128 : 1.0 / 1024, maxabs = 0;
    int differ = 0;
    for (int i = 0; i < MB * CLASSES; i++)
        maxabs = fmax(maxabs, fabs(o32[i]));
    for (int i = 0; i < MB * CLASSES; i++) {
        float r = mode == DS_ROUND_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(o16[i])) : ds_f16_to_f32(ds_f32_to_f16(o16[i]));
        cr_assert_eq(r, o16[i], "%s: logit %d = %a is not a 16-bit value", block, i, o16[i]);
        cr_assert(fabs(o16[i] - o32[i]) <= 4 * rel * maxabs, "%s: logit %d: %g vs %g", block, i, o16[i], o32[i]);
        differ += o16[i] != o32[i];
    }
    cr_assert(differ > 0, "%s: activations were not rounded", block);
    cr_assert(fabs(l16 - l32) <= 1e-3 * fabs(l32), "%s: loss %.7g vs %.7g", block, l16, l32);
    ds_engine_destroy(e);
    ds_engine_destroy(f);
}

Test(mixed_precision, bf16_working_weights) { working_weights_are_rounded("\"bf16\": {\"enabled\": true}", DS_ROUND_BF16); }
Test(mixed_precision, fp16_working_weights) { working_weights_are_rounded("\"fp16\": {\"enabled\": true}", DS_ROUND_FP16); }

/* ---- every optimizer against its reference (tests/fixtures/optim, make-optim-fixtures.py) -- */

static double jnum(json_object *o, const char *key)
{
    json_object *v;
    cr_assert(json_object_object_get_ex(o, key, &v), "fixture lacks %s", key);
    return json_object_get_double(v);
}

/* flat[offsets] <- the fixture's per-tensor arrays */
static void fill(const ds_tensor_table *tab, json_object *by_name, float *flat)
{
    for (int t = 0; t < tab->n; t++) {
        json_object *arr;
        cr_assert(json_object_object_get_ex(by_name, tab->t[t].name, &arr));
        cr_assert_eq((int64_t)json_object_array_length(arr), tab->t[t].numel);
        for (int64_t i = 0; i < tab->t[t].numel; i++)
            flat[tab->t[t].offset + i] = (float)json_object_get_double(json_object_array_get_idx(arr, (size_t)i));
    }
}

/* One case: `steps` updates from the fixture's gradients; after each, every element against the
 * float64 reference within atol + rtol |ref| (the fixture's own float32-vs-float64 drift is
 * ~1e-7 relative; the bound leaves room for our different float32 order of operations). With
 * round set, the same run also writes the 16-bit working weights, which must equal the master
 * weights rounded, and must not change the master trajectory by a single bit. */
static void run_case(const char *name, int round, int pw16, float *out_master, int64_t *out_n)
{
    char rel[128];
    snprintf(rel, sizeof rel, "fixtures/optim/%s.json", name);
    json_object *fx = json_object_from_file(test_path(rel));
    cr_assert(fx, "cannot read %s", rel);
    json_object *opt, *tensors, *init, *grads, *expect, *coeffs = NULL;
    cr_assert(json_object_object_get_ex(fx, "optimizer", &opt) && json_object_object_get_ex(fx, "tensors", &tensors) &&
              json_object_object_get_ex(fx, "init", &init) && json_object_object_get_ex(fx, "grads", &grads) &&
              json_object_object_get_ex(fx, "expect", &expect));
    json_object_object_get_ex(fx, "lamb_coeffs", &coeffs);
    char cfgtext[1024];
    snprintf(cfgtext, sizeof cfgtext, "{\"train_batch_size\": 1, \"optimizer\": %s}",
             json_object_to_json_string_ext(opt, JSON_C_TO_STRING_PLAIN));
    ds_config cfg;
    ds_error err = {0};
    cr_assert_eq(ds_config_load_string(&cfg, cfgtext, rel, 1, 0, NULL, &err), DS_OK, "%s", err.msg);
    ds_tensor_table tab;
    ds_table_init(&tab);
    for (size_t t = 0; t < json_object_array_length(tensors); t++) {
        json_object *ti = json_object_array_get_idx(tensors, t), *nm, *sh;
        cr_assert(json_object_object_get_ex(ti, "name", &nm) && json_object_object_get_ex(ti, "shape", &sh));
        int64_t shape[4];
        int nd = (int)json_object_array_length(sh);
        for (int d = 0; d < nd; d++)
            shape[d] = json_object_get_int64(json_object_array_get_idx(sh, (size_t)d));
        cr_assert(ds_table_add(&tab, json_object_get_string(nm), nd, shape, &err) >= 0, "%s", err.msg);
    }
    ds_backend *be;
    cr_assert_eq(ds_backend_create(&be, "cpu", &err), DS_OK, "%s", err.msg);
    size_t bytes = (size_t)tab.total * sizeof(float);
    float *p = be->ops->alloc(be, bytes), *g = be->ops->alloc(be, bytes), *pw = be->ops->alloc(be, bytes);
    float *want = malloc(bytes);
    memset(want, 0, bytes);
    ds_optimizer o;
    cr_assert_eq(ds_optimizer_init(&o, &cfg.optimizer, be, &tab, NULL, &err), DS_OK, "%s", err.msg);
    fill(&tab, init, p);
    const float lr = (float)jnum(fx, "lr"), gs = (float)jnum(fx, "grad_scale");
    const int steps = (int)jnum(fx, "steps");
    for (int k = 0; k < steps; k++) {
        fill(&tab, json_object_array_get_idx(grads, (size_t)k), g);
        cr_assert_eq(ds_optimizer_step(&o, p, g, lr, gs, round ? pw : NULL, round, pw16, &err), DS_OK, "%s", err.msg);
        fill(&tab, json_object_array_get_idx(expect, (size_t)k), want);
        for (int t = 0; t < tab.n; t++)
            for (int64_t i = 0; i < tab.t[t].numel; i++) {
                int64_t j = tab.t[t].offset + i;
                double tol = 2e-6 + 2e-5 * fabs(want[j]);
                cr_assert(fabs(p[j] - want[j]) <= tol, "%s step %d: %s[%lld] = %.9g, reference %.9g",
                          name, k + 1, tab.t[t].name, (long long)i, p[j], want[j]);
                if (round && pw16) {
                    uint16_t r = round == DS_ROUND_BF16 ? ds_f32_to_bf16(p[j]) : ds_f32_to_f16(p[j]);
                    uint16_t w = ((const uint16_t *)(const void *)pw)[j];
                    cr_assert_eq(w, r, "%s step %d: 16-bit working weight %s[%lld] = 0x%04x, round(master) = 0x%04x",
                                 name, k + 1, tab.t[t].name, (long long)i, w, r);
                } else if (round) {
                    float r = round == DS_ROUND_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(p[j]))
                                                     : ds_f16_to_f32(ds_f32_to_f16(p[j]));
                    cr_assert_eq(pw[j], r, "%s step %d: working weight %s[%lld] = %a, round(master) = %a",
                                 name, k + 1, tab.t[t].name, (long long)i, pw[j], r);
                }
            }
        if (coeffs)
            for (int t = 0; t < tab.n; t++) {
                double c = json_object_get_double(json_object_array_get_idx(json_object_array_get_idx(coeffs, (size_t)k), (size_t)t));
                cr_assert(fabs(o.coeffs[t] - c) <= 1e-5 * c, "%s step %d: trust ratio of %s = %.9g, reference %.9g",
                          name, k + 1, tab.t[t].name, o.coeffs[t], c);
            }
    }
    if (out_master) {
        memcpy(out_master, p, bytes);
        *out_n = tab.total;
    }
    ds_optimizer_free(&o);
    be->ops->free(be, p);
    be->ops->free(be, g);
    be->ops->free(be, pw);
    free(want);
    ds_backend_destroy(be);
    ds_table_free(&tab);
    ds_config_free(&cfg);
    json_object_put(fx);
}

static void check_case(const char *name)
{
    static float a[4096], b[4096];
    int64_t n = 0, m = 0;
    run_case(name, DS_ROUND_NONE, 0, a, &n);
    for (int pw16 = 0; pw16 <= 1; pw16++) {
        run_case(name, DS_ROUND_BF16, pw16, b, &m);
        cr_assert_eq(n, m);
        cr_assert_arr_eq(a, b, (size_t)n * sizeof(float), "%s: writing bf16 working weights (pw16 %d) changed the master weights",
                         name, pw16);
        run_case(name, DS_ROUND_FP16, pw16, b, &m);
        cr_assert_arr_eq(a, b, (size_t)n * sizeof(float), "%s: writing fp16 working weights (pw16 %d) changed the master weights",
                         name, pw16);
    }
}

Test(optimizers, adamw) { check_case("adamw"); }
Test(optimizers, adamw_grad_scale) { check_case("adamw_gscale"); }
Test(optimizers, adam_l2) { check_case("adam_l2"); }
Test(optimizers, adam_without_bias_correction) { check_case("adam_nobias"); }
Test(optimizers, sgd_momentum_dampening) { check_case("sgd"); }
Test(optimizers, sgd_nesterov) { check_case("sgd_nesterov"); }
Test(optimizers, adagrad) { check_case("adagrad"); }
Test(optimizers, lamb) { check_case("lamb"); }
Test(optimizers, lamb_trust_ratio_clamped) { check_case("lamb_clamp"); }
Test(optimizers, lamb_eps_inside_sqrt) { check_case("lamb_eps_inside"); }
Test(optimizers, adamw_eps_after_the_corrected_sqrt) { check_case("adamw_eps"); }
Test(optimizers, sgd_weight_decay_without_momentum) { check_case("sgd_wd"); }
Test(optimizers, lamb_without_bias_correction) { check_case("lamb_nobias"); }

/* The 16-bit write of the working weights (pw16, store16's weights) on sizes that cross the
 * optimizers' thread split and chunks: every built-in optimizer, both formats, 3 threads, two
 * tensors (Lamb's ranges), against the same step writing fp32 rounded values: the 2-byte
 * values are those values' bits, and the master weights are the same. */
/* SGD whose momentum a scheduler changes (OneCycle's momentum_cycled): the buffer exists from
 * the start though the momentum is 0 there; the first update with momentum sets buf = d, as
 * torch does when it creates the buffer (not (1 - dampening) d); the next ones dampen. Float64
 * reference of torch.optim.SGD's formulas, on two tensors. */
Test(optimizers, sgd_cycled_momentum_starts_its_buffer_with_d)
{
    ds_error err = {0};
    ds_tensor_table tab;
    ds_table_init(&tab);
    int64_t s1 = 5, s2 = 3;
    cr_assert(ds_table_add(&tab, "a", 1, &s1, &err) >= 0, "%s", err.msg);
    cr_assert(ds_table_add(&tab, "b", 1, &s2, &err) >= 0, "%s", err.msg);
    const int64_t n = tab.total;
    ds_backend *be;
    cr_assert_eq(ds_backend_create(&be, "cpu", &err), DS_OK, "%s", err.msg);
    float *p = be->ops->alloc(be, (size_t)n * 4), *g = be->ops->alloc(be, (size_t)n * 4);
    double *rp = calloc((size_t)n, sizeof(double)), *rb = calloc((size_t)n, sizeof(double));
    for (int64_t i = 0; i < n; i++)
        rp[i] = p[i] = 0.25f * (float)(i % 7) - 0.5f;
    ds_optimizer_config c;
    memset(&c, 0, sizeof c);
    c.type = DS_OPTIM_SGD;
    snprintf(c.name, sizeof c.name, "SGD");
    c.momentum = 0.0;
    c.dampening = 0.5;
    c.weight_decay = 0.01;
    c.momentum_cycled = 1;
    ds_optimizer o;
    cr_assert_eq(ds_optimizer_init(&o, &c, be, &tab, NULL, &err), DS_OK, "%s", err.msg);
    cr_assert(o.m != NULL, "no momentum buffer for a cycled momentum that starts at 0");
    const double mom[4] = {0.0, 0.0, 0.5, 0.8}, lr = 0.1;
    int started = 0;
    for (int k = 0; k < 4; k++) {
        o.cfg.momentum = mom[k]; /* what the engine's scheduler writes before each update */
        for (int64_t i = 0; i < n; i++)
            g[i] = 0.1f * (float)((i * 5 + k * 3) % 11) - 0.4f;
        cr_assert_eq(ds_optimizer_step(&o, p, g, (float)lr, 1.0f, NULL, 0, 0, &err), DS_OK, "%s", err.msg);
        for (int64_t i = 0; i < n; i++) {
            double d = (double)g[i] + 0.01 * rp[i];
            if (mom[k] != 0) {
                rb[i] = started ? mom[k] * rb[i] + (1 - 0.5) * d : d;
                d = rb[i];
            }
            rp[i] -= lr * d;
            cr_assert(fabs(p[i] - rp[i]) <= 1e-6 * (1 + fabs(rp[i])), "update %d, element %lld: %.9g, torch %.9g",
                      k + 1, (long long)i, p[i], rp[i]);
        }
        started |= mom[k] != 0;
    }
    ds_optimizer_free(&o);
    free(rp), free(rb);
    be->ops->free(be, p);
    be->ops->free(be, g);
    ds_backend_destroy(be);
}

/* Through the engine: OneCycle cycling an SGD momentum that starts at cycle_max_mom 0 (a
 * configuration DeepSpeed accepts) trains; it used to write through a momentum buffer that was
 * never made. */
Test(optimizers, sgd_onecycle_momentum_from_zero_trains)
{
    ds_engine *e = engine("{\"train_micro_batch_size_per_gpu\": 8, \"optimizer\": {\"type\": \"SGD\", \"params\": "
                          "{\"lr\": 0.1, \"dampening\": 0.5}}, \"scheduler\": {\"type\": \"OneCycle\", \"params\": "
                          "{\"cycle_min_lr\": 0.01, \"cycle_max_lr\": 0.1, \"cycle_first_step_size\": 3, "
                          "\"cycle_min_mom\": 0.5, \"cycle_max_mom\": 0.0}}}", NULL, 0, DS_OK, NULL, 0);
    ds_error err = {0};
    for (int k = 0; k < 6; k++) {
        fwd_bwd(e, k);
        cr_assert_eq(ds_engine_step(e, &err), DS_OK, "step %d: %s", k + 1, err.msg);
        cr_assert(ds_engine_was_step_applied(e));
    }
    ds_engine_destroy(e);
}

Test(optimizers, pw16_large_every_optimizer)
{
    omp_set_num_threads(3);
    const ds_optimizer_type types[4] = {DS_OPTIM_ADAMW, DS_OPTIM_SGD, DS_OPTIM_ADAGRAD, DS_OPTIM_LAMB};
    const char *names[4] = {"AdamW", "SGD", "Adagrad", "Lamb"};
    ds_error err = {0};
    ds_tensor_table tab;
    ds_table_init(&tab);
    int64_t s1 = 40000, s2 = 3 * 16384 + 77;
    cr_assert(ds_table_add(&tab, "a", 1, &s1, &err) >= 0, "%s", err.msg);
    cr_assert(ds_table_add(&tab, "b", 1, &s2, &err) >= 0, "%s", err.msg);
    const int64_t n = tab.total;
    ds_backend *be;
    cr_assert_eq(ds_backend_create(&be, "cpu", &err), DS_OK, "%s", err.msg);
    float *p0 = malloc((size_t)n * 4), *g = malloc((size_t)n * 4), *pa = malloc((size_t)n * 4),
          *pb = malloc((size_t)n * 4), *w32 = malloc((size_t)n * 4);
    uint16_t *w16 = malloc((size_t)n * 2);
    uint64_t r = 7;
    for (int64_t i = 0; i < n; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        p0[i] = (float)((int64_t)(r >> 40) - (1LL << 23)) / (float)(1 << 23);
        g[i] = p0[i] * 0.37f - 0.01f;
    }
    for (int t = 0; t < 4; t++)
        for (int mode = DS_ROUND_BF16; mode <= DS_ROUND_FP16; mode++) {
            ds_optimizer_config c;
            memset(&c, 0, sizeof c);
            c.type = types[t];
            snprintf(c.name, sizeof c.name, "%s", names[t]);
            c.lr = 1e-2;
            c.beta1 = 0.9;
            c.beta2 = 0.999;
            c.eps = 1e-8;
            c.weight_decay = 0.01;
            c.adam_w_mode = 1;
            c.bias_correction = 1;
            c.momentum = 0.9;
            c.min_coeff = 0.01;
            c.max_coeff = 10.0;
            ds_optimizer oa, ob;
            cr_assert_eq(ds_optimizer_init(&oa, &c, be, &tab, NULL, &err), DS_OK, "%s", err.msg);
            cr_assert_eq(ds_optimizer_init(&ob, &c, be, &tab, NULL, &err), DS_OK, "%s", err.msg);
            memcpy(pa, p0, (size_t)n * 4);
            memcpy(pb, p0, (size_t)n * 4);
            memset(w32, 0, (size_t)n * 4); /* Lamb leaves the padding between tensors */
            memset(w16, 0, (size_t)n * 2);
            for (int k = 0; k < 3; k++) {
                cr_assert_eq(ds_optimizer_step(&oa, pa, g, 1e-2f, 0.5f, w32, mode, 0, &err), DS_OK, "%s", err.msg);
                cr_assert_eq(ds_optimizer_step(&ob, pb, g, 1e-2f, 0.5f, w16, mode, 1, &err), DS_OK, "%s", err.msg);
                cr_assert_arr_eq(pa, pb, (size_t)n * 4, "%s: the 16-bit write changed the master weights", names[t]);
                for (int64_t i = 0; i < n; i++) {
                    uint16_t want = mode == DS_ROUND_BF16 ? ds_f32_to_bf16(w32[i]) : ds_f32_to_f16(w32[i]);
                    cr_assert_eq(w16[i], want, "%s mode %d step %d: w16[%lld] = 0x%04x, want 0x%04x", names[t], mode,
                                 k + 1, (long long)i, w16[i], want);
                }
            }
            ds_optimizer_free(&oa);
            ds_optimizer_free(&ob);
        }
    free(p0), free(g), free(pa), free(pb), free(w32), free(w16);
    ds_backend_destroy(be);
    ds_table_free(&tab);
}
