/* Whole-model checks against PyTorch fixtures (scripts/make-fixtures.py): logits, loss, every
 * parameter's gradient, and the parameters after 10 updates of each optimizer, for a tiny GPT,
 * an MLP with cross-entropy and an MLP with exact GELU and mse. The fixtures hold float64
 * reference values rounded to float32; tolerances below are for our float32 arithmetic. */
#include <json-c/json.h>

#include "testutil.h"

typedef struct fixture {
    ds_safetensors *st;
    ds_engine *eng;
    int64_t B;
    ds_batch batch;
} fixture;

static void open_fixture_ck(fixture *f, const char *name, const char *prefix, int checkpoint)
{
    char rel[256];
    ds_error err = {0};
    snprintf(rel, sizeof rel, "fixtures/%s.safetensors", name);
    cr_assert_eq(ds_st_open(&f->st, test_path(rel), &err), DS_OK, "%s", err.msg);
    char *net = ds_st_metadata_get(f->st, "net");
    char *bs = ds_st_metadata_get(f->st, "batch_size");
    char key[64];
    snprintf(key, sizeof key, "%s.ds_config", prefix);
    char *cfg_text = ds_st_metadata_get(f->st, key);
    cr_assert(net && bs && cfg_text, "fixture %s lacks metadata", name);
    f->B = atoll(bs);
    json_object *cfg = json_tokener_parse(cfg_text);
    json_object_object_add(cfg, "train_micro_batch_size_per_gpu", json_object_new_int64(f->B));
    ds_engine_options o = {.config_json = json_object_to_json_string(cfg), .config_name = key,
                           .net_json = net, .net_name = name, .checkpoint_activations = checkpoint};
    cr_assert_eq(ds_initialize(&f->eng, &o, &err), DS_OK, "%s", err.msg);
    json_object_put(cfg);
    free(net);
    free(bs);
    free(cfg_text);
    const ds_net *n = ds_engine_net(f->eng);
    for (int i = 0; i < n->params.n; i++) {
        char pname[256];
        snprintf(pname, sizeof pname, "param.%s", n->params.t[i].name);
        int64_t numel;
        const float *v = fx_f32(f->st, pname, &numel);
        cr_assert_eq(ds_engine_set_param(f->eng, n->params.t[i].name, v, numel, &err), DS_OK, "%s", err.msg);
        free((void *)v);
    }
    memset(&f->batch, 0, sizeof f->batch);
    if (n->input == DS_INPUT_TOKENS) {
        f->batch.tokens = fx_i32(f->st, "input.tokens");
        f->batch.targets = fx_i32(f->st, "input.targets");
    } else {
        f->batch.x = fx_f32(f->st, "input.x", NULL);
        if (n->loss == DS_LOSS_MSE)
            f->batch.y = fx_f32(f->st, "input.y", NULL);
        else
            f->batch.labels = fx_i32(f->st, "input.labels");
    }
}

static void open_fixture(fixture *f, const char *name, const char *prefix)
{
    open_fixture_ck(f, name, prefix, 0);
}

static void close_fixture(fixture *f)
{
    free((void *)f->batch.tokens);
    free((void *)f->batch.targets);
    free((void *)f->batch.x);
    free((void *)f->batch.y);
    free((void *)f->batch.labels);
    ds_engine_destroy(f->eng);
    ds_st_close(f->st);
}

/* logits, loss and gradients of one forward/backward (checkpoint: with activation
 * checkpointing on every outermost repeat) */
static void check_forward_backward_ck(const char *name, int checkpoint)
{
    fixture f;
    ds_error err = {0};
    open_fixture_ck(&f, name, "adamw", checkpoint);
    const ds_net *n = ds_engine_net(f.eng);
    double loss;
    cr_assert_eq(ds_engine_forward(f.eng, &f.batch, &loss, &err), DS_OK, "%s", err.msg);
    int64_t nl;
    const float *ref_logits = fx_f32(f.st, "out.logits", &nl);
    const float *ref_loss = fx_f32(f.st, "out.loss", NULL);
    float *logits = malloc((size_t)nl * sizeof *logits);
    cr_assert_eq(ds_engine_get_output(f.eng, logits, nl, &err), DS_OK, "%s", err.msg);
    /* float32 products of length <= 128 against a float64 reference */
    expect_close("logits", logits, ref_logits, nl, 2e-6, 1e-5);
    cr_expect(fabs(loss - ref_loss[0]) <= 1e-5 * fabs(ref_loss[0]), "loss %.9g, expected %.9g", loss, ref_loss[0]);
    cr_assert_eq(ds_engine_backward(f.eng, &err), DS_OK, "%s", err.msg);
    if (checkpoint) { /* the fixture's GPT has 2 blocks: 2 checkpoints, 1 recomputed */
        ds_memory_report mr;
        ds_engine_memory_report(f.eng, &mr);
        cr_expect(mr.checkpoints == 2 && mr.recomputed == 1, "%d checkpoints, %lld recomputed", mr.checkpoints,
                  (long long)mr.recomputed);
    }
    for (int i = 0; i < n->params.n; i++) {
        const ds_tensor_info *t = &n->params.t[i];
        char gname[256];
        snprintf(gname, sizeof gname, "grad.%s", t->name);
        const float *ref = fx_f32(f.st, gname, NULL);
        float *g = malloc((size_t)t->numel * sizeof *g);
        cr_assert_eq(ds_engine_get_grad(f.eng, t->name, g, t->numel, &err), DS_OK, "%s", err.msg);
        expect_close(gname, g, ref, t->numel, 1e-6, 1e-4);
        free(g);
        free((void *)ref);
    }
    free(logits);
    free((void *)ref_logits);
    free((void *)ref_loss);
    close_fixture(&f);
}

/* Ten updates on the same batch; compares the ten losses and the final parameters. */
static void check_optimizer(const char *name, const char *prefix, double atol)
{
    fixture f;
    ds_error err = {0};
    open_fixture(&f, name, prefix);
    const ds_net *n = ds_engine_net(f.eng);
    char key[DS_NAME_MAX + 64];
    snprintf(key, sizeof key, "%s.losses", prefix);
    int64_t steps;
    const float *ref_losses = fx_f32(f.st, key, &steps);
    for (int64_t s = 0; s < steps; s++) {
        double loss;
        cr_assert_eq(ds_engine_forward(f.eng, &f.batch, &loss, &err), DS_OK, "%s", err.msg);
        cr_expect(fabs(loss - ref_losses[s]) <= 2e-5 * fabs(ref_losses[s]) + 1e-6,
                  "%s step %lld: loss %.9g, expected %.9g", prefix, (long long)s, loss, ref_losses[s]);
        cr_assert_eq(ds_engine_backward(f.eng, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(f.eng, &err), DS_OK, "%s", err.msg);
    }
    cr_expect_eq(ds_engine_global_steps(f.eng), steps);
    for (int i = 0; i < n->params.n; i++) {
        const ds_tensor_info *t = &n->params.t[i];
        snprintf(key, sizeof key, "%s.%s", prefix, t->name);
        const float *ref = fx_f32(f.st, key, NULL);
        float *p = malloc((size_t)t->numel * sizeof *p);
        cr_assert_eq(ds_engine_get_param(f.eng, t->name, p, t->numel, &err), DS_OK, "%s", err.msg);
        int64_t len = strlen(t->name);
        if (strstr(prefix, "adam") && len > 13 && strcmp(t->name + len - 13, "attn.qkv.bias") == 0) {
            /* The key bias has an exactly zero gradient (softmax ignores a constant shift), so
             * Adam normalizes rounding noise into steps of up to lr each: compare q and v parts
             * tightly, the k part only within 10 steps of lr. */
            int64_t C = t->numel / 3;
            expect_close(key, p, ref, C, atol, 0);
            expect_close(key, p + 2 * C, ref + 2 * C, C, atol, 0);
            expect_close(key, p + C, ref + C, C, 10 * 0.01 + 1e-6, 0);
        } else {
            expect_close(key, p, ref, t->numel, atol, 0);
        }
        free(p);
        free((void *)ref);
    }
    free((void *)ref_losses);
    close_fixture(&f);
}

static void check_forward_backward(const char *name) { check_forward_backward_ck(name, 0); }

Test(model, gpt_tiny_forward_backward) { check_forward_backward("gpt_tiny"); }
Test(model, gpt_tiny_forward_backward_checkpointed) { check_forward_backward_ck("gpt_tiny", 1); }
Test(model, mlp_forward_backward) { check_forward_backward("mlp"); }
Test(model, mlp_mse_forward_backward) { check_forward_backward("mlp_mse"); }

/* Parameter tolerances: ten float32 updates of O(lr) each. Adam divides by sqrt(v), so where a
 * gradient is tiny its float32 rounding moves m/sqrt(v) by a visible fraction: PyTorch's own
 * float32 run lands up to ~1e-4 from the float64 reference (tolerance_hint in the fixture), i.e.
 * 1% of lr = 1e-2. SGD has no such amplification. */
#define OPT_TESTS(fx)                                                                            \
    Test(optim_##fx, adamw) { check_optimizer(#fx, "adamw", 1e-4); }                             \
    Test(optim_##fx, adam_l2) { check_optimizer(#fx, "adam_l2", 1e-4); }                         \
    Test(optim_##fx, sgd) { check_optimizer(#fx, "sgd", 5e-6); }                                 \
    Test(optim_##fx, sgd_nesterov) { check_optimizer(#fx, "sgd_nesterov", 5e-6); }               \
    Test(optim_##fx, adamw_clip) { check_optimizer(#fx, "adamw_clip", 1e-4); }

OPT_TESTS(gpt_tiny)
OPT_TESTS(mlp)
OPT_TESTS(mlp_mse)

/* ---- residual blocks' gradient buffers ------------------------------------------------------- */

/* A residual END that is the first to write its skip source's gradient shares its gradient
 * buffer with that source (no copy), unless the branch's last layer reads the skip source or is
 * another END. Each shape below is checked against central differences of the loss (float32
 * forward passes, h = 1% of the parameter, at least 1e-3): every parameter's gradient. */
static const char *const RES_NETS[] = {
    /* a chain of three blocks: the second and third END share with the END before */
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"linear\", \"name\": \"in\", \"out\": 6},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln1\"},"
    " {\"type\": \"linear\", \"name\": \"a\", \"out\": 10}, {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"b\", \"out\": 6}]},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln2\"}, {\"type\": \"linear\", \"name\": \"c\", \"out\": 6}]},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"d\", \"out\": 6}]}],"
    " \"loss\": {\"type\": \"mse\"}}",
    /* one-layer branches (the last layer reads the skip source: no sharing; 48 wide, so that a
     * product writing the buffer it reads would read columns it has already written) */
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"linear\", \"name\": \"in\", \"out\": 48},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"a\", \"out\": 48}]},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"gelu\"}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
    /* nested: a block whose branch starts with a block (two ENDs with one skip source) */
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"linear\", \"name\": \"in\", \"out\": 6},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln\"},"
    " {\"type\": \"linear\", \"name\": \"a\", \"out\": 6}]}, {\"type\": \"linear\", \"name\": \"b\", \"out\": 6}]},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"c\", \"out\": 6}, {\"type\": \"gelu\"},"
    " {\"type\": \"linear\", \"name\": \"d\", \"out\": 6}]}], \"loss\": {\"type\": \"mse\"}}",
    /* a repeat of blocks: every iteration but the last takes the last one's inner gradient
     * buffers (the residual chain's and each iteration's output gradient stay its own) */
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"linear\", \"name\": \"in\", \"out\": 6},"
    "{\"type\": \"repeat\", \"name\": \"h\", \"count\": 3, \"layers\": ["
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln\"},"
    "  {\"type\": \"linear\", \"name\": \"a\", \"out\": 10}, {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"b\", \"out\": 6}]},"
    " {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"c\", \"out\": 6}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
    /* a repeat inside a repeat, a block whose branch is the inner repeat, a first iteration of
     * another width (GELU, not ReLU: a kink within h of a value spoils the differences) */
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"repeat\", \"name\": \"o\", \"count\": 2, \"layers\": ["
    " {\"type\": \"linear\", \"name\": \"w\", \"out\": 5},"
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"repeat\", \"name\": \"i\", \"count\": 3, \"layers\": ["
    "  {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"x\", \"out\": 5}]}]}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
    /* nested: a block whose branch ends with a block (the outer END's last layer is an END) */
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"linear\", \"name\": \"in\", \"out\": 6},"
    "{\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"x\", \"out\": 6},"
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"y\", \"out\": 6}]}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
};

static ds_engine *res_engine(const char *net_json, const char *cfg)
{
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_json = cfg, .config_name = "test.json", .net_json = net_json,
                           .net_name = "res.json", .backend = "cpu"};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    return e;
}

/* x[i], y[i] in [-1, 1], in steps of 1e-3, from seed (the central-difference tests' features
 * and mse targets) */
static void uniform_pairs(float *x, float *y, int n, uint64_t s)
{
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        y[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
    }
}

/* Every parameter's gradient of e's last backward against central differences of the loss
 * (h = 1% of the parameter, at least 1e-3) that train forwards (train: at the same micro-step,
 * so the same draws and dropout masks) or evaluations give; parameters whose tensor skip(name)
 * says (a dropped layer's) must have a gradient of exactly 0 instead. Returns the number checked. */
static int check_by_differences(ds_engine *e, const ds_batch *batch, int train, int (*skip)(void *, const char *),
                                void *ctx, size_t net)
{
    ds_error err = {0};
    const ds_net *n = ds_engine_net(e);
    int checked = 0;
    for (int t = 0; t < n->params.n; t++) {
        const ds_tensor_info *ti = &n->params.t[t];
        float *p = malloc((size_t)ti->numel * sizeof *p), *g = malloc((size_t)ti->numel * sizeof *g);
        cr_assert_eq(ds_engine_get_grad(e, ti->name, g, ti->numel, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_get_param(e, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
        const int zero = skip && skip(ctx, ti->name);
        for (int64_t j = 0; j < ti->numel; j++) {
            if (zero) {
                cr_expect(g[j] == 0.0f, "net %zu: %s[%lld] = %g in a dropped layer", net, ti->name, (long long)j, g[j]);
                continue;
            }
            const float p0 = p[j], h = 1e-2f * (fabsf(p0) > 0.1f ? fabsf(p0) : 0.1f);
            double l[2];
            for (int side = 0; side < 2; side++) {
                p[j] = side ? p0 - h : p0 + h;
                cr_assert_eq(ds_engine_set_param(e, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
                cr_assert_eq(train ? ds_engine_forward(e, batch, &l[side], &err) : ds_engine_eval(e, batch, &l[side], &err),
                             DS_OK, "%s", err.msg);
            }
            p[j] = p0;
            const double fd = (l[0] - l[1]) / (2.0 * h);
            cr_expect(fabs(fd - g[j]) <= 1e-4 + 1e-2 * fabs(fd), "net %zu, %s[%lld]: gradient %.6g, differences %.6g",
                      net, ti->name, (long long)j, g[j], fd);
            checked++;
        }
        cr_assert_eq(ds_engine_set_param(e, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
        free(p);
        free(g);
    }
    return checked;
}

Test(model, residual_gradients_by_differences, .timeout = 120)
{
    float x[4 * 6], y[4 * 6];
    uniform_pairs(x, y, 4 * 6, 12345);
    const ds_batch batch = {.x = x, .y = y};
    for (size_t k = 0; k < sizeof RES_NETS / sizeof *RES_NETS; k++) {
        ds_engine *e = res_engine(RES_NETS[k], "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 7,"
                                               " \"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.1}}}");
        ds_error err = {0};
        double loss;
        cr_assert_eq(ds_engine_forward(e, &batch, &loss, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
        const int checked = check_by_differences(e, &batch, 0, NULL, NULL, k);
        cr_expect(checked > 100, "net %zu: %d parameters checked", k, checked);
        ds_engine_destroy(e);
    }
}

/* ---- activation checkpointing ------------------------------------------------------------------ */

/* With a checkpointed repeat, backward recomputes each iteration's forward from the output kept
 * before it (the checkpoint), with the same ops on the same inputs and the same dropout seeds:
 * the losses, gradients and parameters over a few steps must be the same bits as without, in
 * fp32, bf16 and fp16. CK stands for the checkpoint flag; "outer" runs set it through
 * checkpoint_activations (every outermost repeat) instead. */
static const struct {
    const char *net;
    int outer;       /* checkpoint_activations instead of CK */
    int checkpoints; /* segments */
    int recomputes;  /* segment forwards per backward */
} CK_NETS[] = {
    /* GPT blocks with dropout in both branches, a tied head; iterations end in a residual END */
    {"{\"input\": {\"type\": \"tokens\", \"vocab_size\": 32, \"seq_len\": 8}, \"layers\": ["
     "{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 16}, {\"type\": \"position_embedding\", \"name\": \"wpe\"},"
     "{\"type\": \"dropout\", \"p\": 0.1},"
     "{\"type\": \"repeat\", \"name\": \"h\", \"count\": 3, \"layers\": ["
     " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_1\"},"
     "  {\"type\": \"attention\", \"name\": \"attn\", \"heads\": 2}, {\"type\": \"dropout\", \"p\": 0.2}]},"
     " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_2\"},"
     "  {\"type\": \"linear\", \"name\": \"fc\", \"out\": 32}, {\"type\": \"gelu\", \"approximate\": \"tanh\"},"
     "  {\"type\": \"linear\", \"name\": \"proj\", \"out\": 16}, {\"type\": \"dropout\", \"p\": 0.1}]}]},"
     "{\"type\": \"layernorm\", \"name\": \"ln_f\"},"
     "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 32, \"bias\": false, \"tied_to\": \"wte\"}],"
     " \"loss\": {\"type\": \"cross_entropy\"}}",
     1, 3, 2},
    /* iterations that end in a GELU after a linear layer (the fused pair stays inside one), a
     * checkpointed repeat inside an outer one that is not (two sets of shared buffers), a
     * residual around the whole outer repeat */
    {"{\"input\": {\"type\": \"tokens\", \"vocab_size\": 32, \"seq_len\": 8}, \"layers\": ["
     "{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 16},"
     "{\"type\": \"residual\", \"layers\": [{\"type\": \"repeat\", \"name\": \"o\", \"count\": 2, \"layers\": ["
     " {\"type\": \"repeat\", \"name\": \"i\", \"count\": 3, \"checkpoint\": CK, \"layers\": ["
     "  {\"type\": \"linear\", \"name\": \"a\", \"out\": 24}, {\"type\": \"gelu\", \"approximate\": \"tanh\"},"
     "  {\"type\": \"linear\", \"name\": \"b\", \"out\": 16}, {\"type\": \"gelu\", \"approximate\": \"tanh\"}]},"
     " {\"type\": \"layernorm\", \"name\": \"ln\"}]}]},"
     "{\"type\": \"linear\", \"name\": \"head\", \"out\": 32}], \"loss\": {\"type\": \"cross_entropy\"}}",
     0, 6, 4},
    /* features: ReLU (its backward reads its own output) and dropout, mse */
    {"{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": ["
     "{\"type\": \"repeat\", \"name\": \"r\", \"count\": 4, \"checkpoint\": CK, \"layers\": ["
     " {\"type\": \"linear\", \"name\": \"l\", \"out\": 8}, {\"type\": \"relu\"}, {\"type\": \"dropout\", \"p\": 0.25}]},"
     "{\"type\": \"linear\", \"name\": \"out\", \"out\": 3}], \"loss\": {\"type\": \"mse\"}}",
     0, 4, 3},
    /* iteration 0 reads 8 features, the others 16: its ReLU cannot lend them its buffers
     * (iteration 1 lends its own to iteration 2) */
    {"{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": ["
     "{\"type\": \"repeat\", \"name\": \"r\", \"count\": 3, \"checkpoint\": CK, \"layers\": ["
     " {\"type\": \"relu\"}, {\"type\": \"dropout\", \"p\": 0.25}, {\"type\": \"linear\", \"name\": \"l\", \"out\": 16}]},"
     "{\"type\": \"linear\", \"name\": \"out\", \"out\": 3}], \"loss\": {\"type\": \"mse\"}}",
     0, 3, 2},
    /* one iteration: a checkpoint with nothing to recompute */
    {"{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": ["
     "{\"type\": \"repeat\", \"name\": \"r\", \"count\": 1, \"checkpoint\": CK, \"layers\": ["
     " {\"type\": \"linear\", \"name\": \"l\", \"out\": 8}, {\"type\": \"gelu\"}]},"
     "{\"type\": \"linear\", \"name\": \"out\", \"out\": 2}], \"loss\": {\"type\": \"cross_entropy\"}}",
     0, 1, 0},
};

/* s with every "CK" replaced by v (caller frees) */
static char *subst_ck(const char *s, const char *v)
{
    char *out = malloc(strlen(s) * 2 + 1), *o = out;
    for (; *s; s++) {
        if (s[0] == 'C' && s[1] == 'K') {
            o += sprintf(o, "%s", v);
            s++;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return out;
}

typedef struct ck_run {
    double loss[3];
    float *params, *grads; /* every tensor, in table order */
    size_t act;
    ds_memory_report mr;
    double ms[3]; /* activation_checkpointing.profile: forward, backward, recomputation */
} ck_run;

/* three steps of AdamW on fixed random batches; the gradients of the last backward */
static void ck_train(ck_run *r, const char *net, int outer, const char *precision, const char *extra)
{
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 11, \"optimizer\": {\"type\": \"AdamW\", "
             "\"params\": {\"lr\": 0.01}}, %s%s\"gradient_clipping\": 1.0}", precision, extra);
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_json = cfg, .config_name = "ck.json", .net_json = net, .net_name = "ck-net.json",
                           .backend = "cpu", .checkpoint_activations = outer};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s\n%s", err.msg, net);
    const ds_net *n = ds_engine_net(e);
    int32_t tok[4 * 8], tgt[4 * 8], lab[4];
    float x[4 * 8], y[4 * 3];
    uint64_t s = 99;
    for (int i = 0; i < 32; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((s >> 33) % 32);
        tgt[i] = (int32_t)((s >> 45) % 32);
        x[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
    }
    for (int i = 0; i < 12; i++)
        y[i] = x[i] * 0.5f;
    for (int i = 0; i < 4; i++)
        lab[i] = tok[i] % 2;
    ds_batch b = n->input == DS_INPUT_TOKENS ? (ds_batch){.tokens = tok, .targets = tgt}
               : n->loss == DS_LOSS_MSE      ? (ds_batch){.x = x, .y = y}
                                             : (ds_batch){.x = x, .labels = lab};
    int64_t total = 0;
    for (int t = 0; t < n->params.n; t++)
        total += n->params.t[t].numel;
    r->params = malloc((size_t)total * sizeof(float));
    r->grads = malloc((size_t)total * sizeof(float));
    for (int step = 0; step < 3; step++) {
        cr_assert_eq(ds_engine_forward(e, &b, &r->loss[step], &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
        if (step == 2)
            for (int t = 0, off = 0; t < n->params.n; off += (int)n->params.t[t].numel, t++)
                cr_assert_eq(ds_engine_get_grad(e, n->params.t[t].name, r->grads + off, n->params.t[t].numel, &err),
                             DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    }
    for (int t = 0, off = 0; t < n->params.n; off += (int)n->params.t[t].numel, t++)
        cr_assert_eq(ds_engine_get_param(e, n->params.t[t].name, r->params + off, n->params.t[t].numel, &err), DS_OK,
                     "%s", err.msg);
    ds_engine_memory_report(e, &r->mr);
    ds_engine_checkpoint_times(e, &r->ms[0], &r->ms[1], &r->ms[2]);
    r->act = r->mr.activations;
    r->mr.params = (size_t)total; /* (reused: the element count, for the comparison) */
    ds_engine_destroy(e);
}

Test(checkpointing, same_bits_as_without, .timeout = 120)
{
    static const char *const PREC[] = {"", "\"bf16\": {\"enabled\": true}, ", "\"fp16\": {\"enabled\": true}, "};
    /* the section's switches: DeepSpeed's semantics, none of which may change a bit */
    static const char *const EXTRA[] = {
        "", "\"activation_checkpointing\": {\"partition_activations\": true, \"contiguous_memory_optimization\": true, "
            "\"cpu_checkpointing\": true, \"synchronize_checkpoint_boundary\": true, \"number_checkpoints\": 6, "
            "\"profile\": true}, "};
    for (size_t k = 0; k < sizeof CK_NETS / sizeof *CK_NETS; k++)
        for (size_t p = 0; p < 3; p++)
            for (size_t x = 0; x < 2; x++) {
                char *plain = subst_ck(CK_NETS[k].net, "false"), *ck = subst_ck(CK_NETS[k].net, "true");
                ck_run a, b;
                ck_train(&a, plain, 0, PREC[p], EXTRA[x]);
                ck_train(&b, CK_NETS[k].outer ? plain : ck, CK_NETS[k].outer, PREC[p], EXTRA[x]);
                for (int s = 0; s < 3; s++)
                    cr_expect(a.loss[s] == b.loss[s], "net %zu prec %zu extra %zu step %d: loss %.17g, checkpointed %.17g",
                              k, p, x, s, a.loss[s], b.loss[s]);
                cr_expect(memcmp(a.grads, b.grads, a.mr.params * sizeof(float)) == 0,
                          "net %zu prec %zu extra %zu: gradients differ", k, p, x);
                cr_expect(memcmp(a.params, b.params, a.mr.params * sizeof(float)) == 0,
                          "net %zu prec %zu extra %zu: parameters differ", k, p, x);
                cr_expect_eq(a.mr.checkpoints, 0);
                cr_expect_eq(b.mr.checkpoints, CK_NETS[k].checkpoints, "net %zu: %d checkpoints", k, b.mr.checkpoints);
                cr_expect_eq(b.mr.recomputed, 3 * CK_NETS[k].recomputes, "net %zu: %lld recomputed", k,
                             (long long)b.mr.recomputed);
                /* profile (extra 1) times the checkpointed passes, the recomputations inside the
                 * backwards; without it nothing is timed */
                if (x == 1)
                    cr_expect(b.ms[0] > 0 && b.ms[1] > b.ms[2] && (CK_NETS[k].recomputes ? b.ms[2] > 0 : b.ms[2] == 0),
                              "net %zu: forward %g ms, backward %g ms, recomputation %g ms", k, b.ms[0], b.ms[1], b.ms[2]);
                else
                    cr_expect(b.ms[0] == 0 && b.ms[1] == 0 && b.ms[2] == 0, "net %zu: timed without profile", k);
                cr_expect(a.ms[0] == 0 && a.ms[1] == 0 && a.ms[2] == 0, "net %zu: timed without checkpoints", k);
                if (CK_NETS[k].recomputes)
                    cr_expect(b.act < a.act, "net %zu: activations %zu with checkpoints, %zu without", k, b.act, a.act);
                else
                    cr_expect_eq(b.act, a.act, "net %zu", k);
                free(a.params), free(a.grads), free(b.params), free(b.grads);
                free(plain), free(ck);
            }
}

/* What the buffers come to for gpt-tiny's shapes: iteration k > 0 of a checkpointed repeat holds
 * only its output, so the activations are those without the repeat, plus one iteration's, plus
 * (count - 1) checkpoints. */
Test(checkpointing, memory_is_one_iteration_plus_the_checkpoints)
{
    const char *tmpl = "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 64, \"seq_len\": 16}, \"layers\": ["
                       "{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 32},"
                       "{\"type\": \"repeat\", \"name\": \"h\", \"count\": %d, \"checkpoint\": %s, \"layers\": ["
                       " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_1\"},"
                       "  {\"type\": \"attention\", \"name\": \"attn\", \"heads\": 2}]},"
                       " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_2\"},"
                       "  {\"type\": \"linear\", \"name\": \"fc\", \"out\": 128}, {\"type\": \"gelu\"},"
                       "  {\"type\": \"linear\", \"name\": \"proj\", \"out\": 32}]}]},"
                       "{\"type\": \"linear\", \"name\": \"head\", \"out\": 64}], \"loss\": {\"type\": \"cross_entropy\"}}";
    size_t act[2][2]; /* [count 1 or 4][checkpoint] */
    for (int c = 0; c < 2; c++)
        for (int ck = 0; ck < 2; ck++) {
            char net[2048];
            snprintf(net, sizeof net, tmpl, c ? 4 : 1, ck ? "true" : "false");
            ds_engine *e = NULL;
            ds_error err = {0};
            ds_engine_options o = {.config_json = "{\"train_micro_batch_size_per_gpu\": 2}", .config_name = "m.json",
                                   .net_json = net, .net_name = "m-net.json", .backend = "cpu"};
            cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
            ds_memory_report mr;
            ds_engine_memory_report(e, &mr);
            act[c][ck] = mr.activations;
            ds_engine_destroy(e);
        }
    const size_t iter = (act[1][0] - act[0][0]) / 3;  /* one more iteration's buffers (its inner gradients are
                                                           the last iteration's either way: share_grads) */
    const size_t ckpt = 2 * 16 * 32 * sizeof(float); /* one checkpoint: B*T*dim */
    cr_expect_eq(act[0][1], act[0][0], "one iteration: nothing saved");
    /* the three later iterations keep their output gradients' buffers and their checkpoints; what
     * goes is their outputs and attention and layernorm state */
    cr_expect(act[1][1] < act[1][0] - iter, "4 iterations: %zu with checkpoints, %zu without (%zu each)", act[1][1],
              act[1][0], iter);
    cr_expect(act[1][1] >= act[0][0] + 3 * ckpt, "%zu", act[1][1]);
}

Test(checkpointing, errors_name_what_is_wrong)
{
    ds_net *n = NULL;
    ds_error err = {0};
    /* a checkpointed repeat inside another */
    cr_expect_eq(ds_net_parse_string(&n, "{\"input\": {\"type\": \"features\", \"dim\": 4}, \"layers\": ["
                                         "{\"type\": \"repeat\", \"name\": \"o\", \"count\": 2, \"checkpoint\": true, \"layers\": ["
                                         " {\"type\": \"repeat\", \"name\": \"i\", \"count\": 2, \"checkpoint\": true, \"layers\": ["
                                         "  {\"type\": \"linear\", \"name\": \"l\", \"out\": 4}]}]}], \"loss\": {\"type\": \"mse\"}}",
                                     "n.json", &err),
                 DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "n.json: layers[0].layers[0].checkpoint: a repeat inside a checkpointed repeat (layers[0])"),
              "%s", err.msg);
    cr_expect_eq(ds_net_parse_string(&n, "{\"input\": {\"type\": \"features\", \"dim\": 4}, \"layers\": ["
                                         "{\"type\": \"repeat\", \"name\": \"o\", \"count\": 2, \"checkpoint\": 1, \"layers\": ["
                                         " {\"type\": \"linear\", \"name\": \"l\", \"out\": 4}]}], \"loss\": {\"type\": \"mse\"}}",
                                     "n.json", &err),
                 DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "layers[0].checkpoint: expected true or false, found 1"), "%s", err.msg);
    /* --checkpoint-activations on a network without a repeat */
    const char *flat = "{\"input\": {\"type\": \"features\", \"dim\": 4}, \"layers\": [{\"type\": \"linear\", \"name\": \"l\", "
                       "\"out\": 4}], \"loss\": {\"type\": \"mse\"}}";
    ds_engine *e = NULL;
    ds_engine_options o = {.config_json = "{\"train_micro_batch_size_per_gpu\": 2}", .config_name = "c.json",
                           .net_json = flat, .net_name = "flat.json", .backend = "cpu", .checkpoint_activations = 1};
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "flat.json: checkpointing activations needs a repeat block"), "%s", err.msg);
    /* checkpointing.configure's asserts, where the network checkpoints: contiguous buffers hold
     * partitioned checkpoints, number_checkpoints of them (DeepSpeed sizes the buffers by it) */
    const char *rep = "{\"input\": {\"type\": \"features\", \"dim\": 4}, \"layers\": [{\"type\": \"repeat\", \"name\": \"r\", "
                      "\"count\": 3, \"layers\": [{\"type\": \"linear\", \"name\": \"l\", \"out\": 4}]}], "
                      "\"loss\": {\"type\": \"mse\"}}";
    o.net_json = rep;
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"activation_checkpointing\": {\"contiguous_memory_optimization\": true}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "c.json: activation_checkpointing: contiguous_memory_optimization=true needs "
                              "partition_activations=true"), "%s", err.msg);
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"activation_checkpointing\": {\"partition_activations\": true, "
                    "\"contiguous_memory_optimization\": true, \"number_checkpoints\": 2}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "c.json: activation_checkpointing.number_checkpoints: expected at least 3"), "%s", err.msg);
    /* without the contiguous buffers the number sizes nothing; nor does either matter without
     * checkpoints */
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"activation_checkpointing\": {\"partition_activations\": true, "
                    "\"number_checkpoints\": 2}}";
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    ds_engine_destroy(e);
    o.checkpoint_activations = 0;
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"activation_checkpointing\": {\"contiguous_memory_optimization\": true, "
                    "\"number_checkpoints\": 1}}";
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    ds_engine_destroy(e);
    o.checkpoint_activations = 1;
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"activation_checkpointing\": {\"partition_activations\": true, "
                    "\"contiguous_memory_optimization\": true, \"number_checkpoints\": 3}}";
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    ds_engine_destroy(e);
}

/* ---- curriculum learning (seqlen) ---------------------------------------------------------------- */

/* A GPT of count transformer layers (the iterations of h), T positions, vocabulary 32 */
static const char *gpt_net(int T, int count)
{
    static char buf[3][1024]; /* cl_net(8), cl_net(16), pld_net() */
    char *b = buf[count == 4 ? 2 : T == 16];
    snprintf(b, 1024,
             "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 32, \"seq_len\": %d}, \"layers\": ["
             "{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 16}, {\"type\": \"position_embedding\", \"name\": \"wpe\"},"
             "{\"type\": \"repeat\", \"name\": \"h\", \"count\": %d, \"layers\": ["
             " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_1\"},"
             "  {\"type\": \"attention\", \"name\": \"attn\", \"heads\": 2}]},"
             " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_2\"},"
             "  {\"type\": \"linear\", \"name\": \"fc\", \"out\": 32}, {\"type\": \"gelu\", \"approximate\": \"tanh\"},"
             "  {\"type\": \"linear\", \"name\": \"proj\", \"out\": 16}]}]},"
             "{\"type\": \"layernorm\", \"name\": \"ln_f\"}, {\"type\": \"linear\", \"name\": \"head\", \"out\": 32}],"
             " \"loss\": {\"type\": \"cross_entropy\"}}",
             T, count);
    return b;
}

/* curriculum learning's GPT: 2 layers, T positions (8 or 16) */
static const char *cl_net(int T) { return gpt_net(T, 2); }

/* every tensor of from's into to (the same network) */
static void copy_params(ds_engine *from, ds_engine *to)
{
    ds_error err = {0};
    const ds_net *n = ds_engine_net(from);
    for (int t = 0; t < n->params.n; t++) {
        const ds_tensor_info *ti = &n->params.t[t];
        float *p = malloc((size_t)ti->numel * sizeof *p);
        cr_assert_eq(ds_engine_get_param(from, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_set_param(to, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
        free(p);
    }
}

static ds_engine *cl_engine(const char *net, const char *cfg)
{
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_json = cfg, .config_name = "cl.json", .net_json = net, .net_name = "cl-net.json",
                           .backend = "cpu"};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    return e;
}

/* With curriculum_learning at difficulty d, a training forward reads the first d positions of
 * each sample: the same loss and gradients as the network with seq_len d on the samples cut to
 * d (the position table's rows past d get no gradient), step by step as the schedule says; an
 * eval forward reads them all. */
Test(curriculum, shorter_sequences_are_the_shorter_network, .timeout = 60)
{
    /* step 1 at 8 positions, then 16 */
    const char *cfg = "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 3, \"optimizer\": {\"type\": \"SGD\", \"params\": "
                      "{\"lr\": 0.1}}, \"curriculum_learning\": {\"enabled\": true, \"curriculum_type\": \"seqlen\", "
                      "\"min_difficulty\": 8, \"max_difficulty\": 16, \"schedule_type\": \"fixed_discrete\", "
                      "\"schedule_config\": {\"difficulty\": [8, 16], \"max_step\": [1]}}}";
    const char *plain = "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 3, \"optimizer\": {\"type\": \"SGD\", "
                        "\"params\": {\"lr\": 0.1}}}";
    ds_engine *a = cl_engine(cl_net(16), cfg), *b = cl_engine(cl_net(8), plain), *f = cl_engine(cl_net(16), plain);
    ds_error err = {0};
    const ds_net *na = ds_engine_net(a);
    cr_expect_eq(ds_engine_seqlen(a), 8, "before the first forward: min_difficulty");
    cr_expect_eq(ds_engine_seqlen(f), 16);
    /* b and f start from a's weights (b: the first 8 rows of the position table) */
    for (int t = 0; t < na->params.n; t++) {
        const ds_tensor_info *ti = &na->params.t[t];
        float *p = malloc((size_t)ti->numel * sizeof *p);
        cr_assert_eq(ds_engine_get_param(a, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_set_param(f, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
        const int64_t n = strcmp(ti->name, "wpe.weight") == 0 ? 8 * 16 : ti->numel;
        cr_assert_eq(ds_engine_set_param(b, ti->name, p, n, &err), DS_OK, "%s", err.msg);
        free(p);
    }
    int32_t tok[4 * 16], tgt[4 * 16], tok8[4 * 8], tgt8[4 * 8];
    uint64_t s = 5;
    for (int i = 0; i < 64; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((s >> 33) % 32);
        tgt[i] = (int32_t)((s >> 45) % 32);
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) {
            tok8[i * 8 + j] = tok[i * 16 + j];
            tgt8[i * 8 + j] = tgt[i * 16 + j];
        }
    const ds_batch ba = {.tokens = tok, .targets = tgt}, bb = {.tokens = tok8, .targets = tgt8};
    double la, lb, le, lf;
    cr_assert_eq(ds_engine_eval(a, &ba, &le, &err), DS_OK, "%s", err.msg); /* all 16; the forward then 8 */
    cr_assert_eq(ds_engine_forward(a, &ba, &la, &err), DS_OK, "%s", err.msg);
    {
        float *out = malloc(4 * 16 * 32 * sizeof *out); /* the logits of 8 positions per sample */
        cr_expect_eq(ds_engine_get_output(a, out, 4 * 16 * 32, &err), DS_ERR_INVALID);
        cr_expect(strstr(err.msg, "output has 1024 values (micro-batch 4 x 8 positions x 32)"), "%s", err.msg);
        cr_expect_eq(ds_engine_get_output(a, out, 4 * 8 * 32, &err), DS_OK, "%s", err.msg);
        free(out);
    }
    cr_expect_eq(ds_engine_seqlen(a), 8);
    cr_assert_eq(ds_engine_forward(b, &bb, &lb, &err), DS_OK, "%s", err.msg);
    cr_expect(la == lb, "loss at 8 positions %.17g, the 8-position network's %.17g", la, lb);
    cr_assert_eq(ds_engine_backward(a, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_backward(b, &err), DS_OK, "%s", err.msg);
    for (int t = 0; t < na->params.n; t++) {
        const ds_tensor_info *ti = &na->params.t[t];
        float *ga = calloc((size_t)ti->numel, sizeof *ga), *gb = calloc((size_t)ti->numel, sizeof *gb);
        const int wpe = strcmp(ti->name, "wpe.weight") == 0;
        cr_assert_eq(ds_engine_get_grad(a, ti->name, ga, ti->numel, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_get_grad(b, ti->name, gb, wpe ? 8 * 16 : ti->numel, &err), DS_OK, "%s", err.msg);
        cr_expect(memcmp(ga, gb, (size_t)ti->numel * sizeof *ga) == 0, "%s: gradients differ", ti->name);
        free(ga);
        free(gb);
    }
    cr_assert_eq(ds_engine_step(a, &err), DS_OK, "%s", err.msg);
    /* step 2: all 16 positions, as the network without a curriculum from the same weights */
    copy_params(a, f);
    cr_assert_eq(ds_engine_eval(a, &ba, &le, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_eval(f, &ba, &lf, &err), DS_OK, "%s", err.msg);
    cr_expect(le == lf, "eval reads every position: %.17g, %.17g", le, lf);
    cr_assert_eq(ds_engine_forward(a, &ba, &la, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_forward(f, &ba, &lf, &err), DS_OK, "%s", err.msg);
    cr_expect_eq(ds_engine_seqlen(a), 16);
    cr_expect(la == lf, "step 2 at 16 positions: %.17g, %.17g", la, lf);
    cr_assert_eq(ds_engine_backward(a, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_backward(f, &err), DS_OK, "%s", err.msg);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
    ds_engine_destroy(f);
}

Test(curriculum, errors_name_the_network)
{
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_name = "cl.json", .net_json = cl_net(16), .net_name = "cl-net.json", .backend = "cpu"};
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"curriculum_learning\": {\"enabled\": true, "
                    "\"curriculum_type\": \"seqlen\", \"min_difficulty\": 8, \"max_difficulty\": 32, \"schedule_type\": "
                    "\"fixed_linear\", \"schedule_config\": {\"total_curriculum_step\": 10, \"difficulty_step\": 8}}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "cl.json: curriculum_learning.max_difficulty: 32 positions, beyond cl-net.json's seq_len 16"),
              "%s", err.msg);
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"curriculum_learning\": {\"enabled\": true, "
                    "\"curriculum_type\": \"seqlen\", \"min_difficulty\": 8, \"max_difficulty\": 16, \"schedule_type\": "
                    "\"fixed_discrete\", \"schedule_config\": {\"difficulty\": [8, 24, 16], \"max_step\": [2, 4]}}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "cl.json: curriculum_learning.schedule_config.difficulty[1]: 24 positions, beyond"), "%s",
              err.msg);
    /* min 2 with difficulty_step 8: step 1 rounds down to 0 positions */
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"curriculum_learning\": {\"enabled\": true, "
                    "\"curriculum_type\": \"seqlen\", \"min_difficulty\": 2, \"max_difficulty\": 16, \"schedule_type\": "
                    "\"fixed_linear\", \"schedule_config\": {\"total_curriculum_step\": 10, \"difficulty_step\": 8}}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "cl.json: curriculum_learning: the schedule gives 0 positions at step 1"), "%s", err.msg);
    o.net_json = "{\"input\": {\"type\": \"features\", \"dim\": 4}, \"layers\": [{\"type\": \"linear\", \"name\": \"l\", "
                 "\"out\": 2}], \"loss\": {\"type\": \"mse\"}}";
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 2, \"curriculum_learning\": {\"enabled\": true, "
                    "\"curriculum_type\": \"seqlen\", \"min_difficulty\": 1, \"max_difficulty\": 1, \"schedule_type\": "
                    "\"fixed_linear\", \"schedule_config\": {\"total_curriculum_step\": 10, \"difficulty_step\": 1}}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "curriculum_learning (seqlen) needs a tokens network"), "%s", err.msg);
}

/* ---- progressive layer drop --------------------------------------------------------------------- */

/* L = 4 transformer layers, 16 positions */
static const char *pld_net(void) { return gpt_net(16, 4); }

/* theta 0.5 from step 2 on: gamma 50 takes exp(-50 (t - 1)) below double's resolution at once */
#define PLD_ON "\"progressive_layer_drop\": {\"enabled\": true, \"theta\": 0.5, \"gamma\": 50}, "

static ds_engine *pld_engine(const char *net, const char *cfg_fmt, const char *extra)
{
    char cfg[1024];
    snprintf(cfg, sizeof cfg, cfg_fmt, extra);
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_json = cfg, .config_name = "pld.json", .net_json = net, .net_name = "pld-net.json",
                           .backend = "cpu"};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    return e;
}

static void pld_batch(int32_t *tok, int32_t *tgt, int n, uint64_t s)
{
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((s >> 33) % 32);
        tgt[i] = (int32_t)((s >> 45) % 32);
    }
}

/* layer l's tensors: "h.<l-1>." */
static int pld_layer_of(const char *name)
{
    return strncmp(name, "h.", 2) == 0 ? atoi(name + 2) + 1 : 0;
}

/* the last tensors of layer l's two branches: the attention's output projection and proj */
static int pld_branch_last(const char *name)
{
    return pld_layer_of(name) && strstr(name, ".proj.") != NULL; /* h.N.attn.proj.*, h.N.proj.* */
}

/* A dropped layer is the identity, and a kept one x + s f(x) with s = 1/p_l: the network without
 * layer drop whose branches' last products are scaled by s (their weights and biases times s),
 * or zeroed where the layer was dropped. Step by step over 8 steps of SGD from the same weights:
 * the same loss, the same gradients where nothing was scaled, s times the reference's for the
 * scaled tensors (d/dw of s (x w + b) against d/dw' of x w' + b'), exactly 0 for a dropped
 * layer's; evaluation drops nothing. */
Test(layer_drop, is_the_network_with_scaled_branches, .timeout = 60)
{
    static const char *const FMT = "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 3, %s"
                                   "\"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.1}}}";
    ds_engine *a = pld_engine(pld_net(), FMT, PLD_ON), *b = pld_engine(pld_net(), FMT, "");
    ds_error err = {0};
    const ds_net *n = ds_engine_net(a);
    cr_assert_eq(ds_engine_layer_drop(a, NULL, NULL), 4);
    cr_assert_eq(ds_engine_layer_drop(b, NULL, NULL), 0);
    int32_t tok[64], tgt[64];
    int dropped = 0, scaled = 0;
    for (int step = 0; step < 8; step++) {
        pld_batch(tok, tgt, 64, 100 + (uint64_t)step);
        const ds_batch bt = {.tokens = tok, .targets = tgt};
        double la, lb, ea, eb, theta;
        unsigned char kept[4];
        /* evaluation: everything, unscaled */
        copy_params(a, b);
        cr_assert_eq(ds_engine_eval(a, &bt, &ea, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_eval(b, &bt, &eb, &err), DS_OK, "%s", err.msg);
        cr_expect(ea == eb, "step %d: eval %.17g, the network's %.17g", step, ea, eb);
        cr_assert_eq(ds_engine_forward(a, &bt, &la, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_layer_drop(a, &theta, kept), 4);
        const double want = step < 2 ? 1.0 : 0.5;
        cr_expect(theta == want, "step %d: theta %.17g, expected %g", step, theta, want);
        float s[5];
        for (int l = 1; l <= 4; l++) {
            s[l] = kept[l - 1] ? (float)(1.0 / (1.0 - l / 4.0 * (1.0 - theta))) : 0.0f;
            dropped += !kept[l - 1];
            scaled += kept[l - 1] && s[l] != 1.0f;
        }
        for (int t = 0; t < n->params.n; t++) { /* b: the scaled (or zeroed) branches */
            const ds_tensor_info *ti = &n->params.t[t];
            if (!pld_branch_last(ti->name))
                continue;
            float *p = malloc((size_t)ti->numel * sizeof *p);
            cr_assert_eq(ds_engine_get_param(a, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
            for (int64_t j = 0; j < ti->numel; j++)
                p[j] *= s[pld_layer_of(ti->name)];
            cr_assert_eq(ds_engine_set_param(b, ti->name, p, ti->numel, &err), DS_OK, "%s", err.msg);
            free(p);
        }
        cr_assert_eq(ds_engine_forward(b, &bt, &lb, &err), DS_OK, "%s", err.msg);
        cr_expect(fabs(la - lb) <= 1e-6 * fabs(lb), "step %d: loss %.9g, the scaled network's %.9g", step, la, lb);
        cr_assert_eq(ds_engine_backward(a, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_backward(b, &err), DS_OK, "%s", err.msg);
        { /* an evaluation drops nothing and leaves the training forward's draws as they were */
            unsigned char after[4];
            double th2, e2;
            cr_assert_eq(ds_engine_eval(a, &bt, &e2, &err), DS_OK, "%s", err.msg);
            ds_engine_layer_drop(a, &th2, after);
            cr_expect(memcmp(after, kept, 4) == 0 && th2 == theta, "step %d: an eval changed the draws", step);
        }
        for (int t = 0; t < n->params.n; t++) {
            const ds_tensor_info *ti = &n->params.t[t];
            float *ga = malloc((size_t)ti->numel * sizeof *ga), *gb = malloc((size_t)ti->numel * sizeof *gb);
            cr_assert_eq(ds_engine_get_grad(a, ti->name, ga, ti->numel, &err), DS_OK, "%s", err.msg);
            cr_assert_eq(ds_engine_get_grad(b, ti->name, gb, ti->numel, &err), DS_OK, "%s", err.msg);
            const int l = pld_layer_of(ti->name);
            const float f = l && pld_branch_last(ti->name) ? s[l] : 1.0f;
            for (int64_t j = 0; j < ti->numel; j++) {
                if (l && !kept[l - 1]) {
                    cr_assert(ga[j] == 0.0f, "step %d: %s[%lld] = %g in a dropped layer", step, ti->name, (long long)j,
                              ga[j]);
                    continue;
                }
                const double want_g = (double)f * gb[j];
                cr_assert(fabs(ga[j] - want_g) <= 1e-6 + 1e-4 * fabs(want_g), "step %d: %s[%lld]: %.9g, expected %.9g",
                          step, ti->name, (long long)j, ga[j], want_g);
            }
            free(ga);
            free(gb);
        }
        cr_assert_eq(ds_engine_step(a, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(b, &err), DS_OK, "%s", err.msg); /* (overwritten next step) */
    }
    cr_expect(dropped > 0 && scaled > 0, "%d layers dropped, %d scaled over the 8 steps: nothing tested", dropped,
              scaled);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
}

/* Layer l of L is kept with probability 1 - (l/L)(1 - theta): over 400 forwards at theta 0.5
 * the counts of L = 4 layers are within 4 standard deviations (0.025 or less) of 0.875, 0.75,
 * 0.625 and 0.5; the draws differ between steps. */
Test(layer_drop, keeps_each_layer_with_its_probability, .timeout = 300) /* (0.2 s; minutes by hand without OMP_WAIT_POLICY=PASSIVE on a busy machine, see test_layers.c) */
{
    ds_engine *a = pld_engine(pld_net(), "{\"train_micro_batch_size_per_gpu\": 1, \"seed\": 5, %s"
                                         "\"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.01}}}", PLD_ON);
    ds_error err = {0};
    int32_t tok[16], tgt[16];
    int count[4] = {0}, changes = 0;
    unsigned char kept[4], before[4] = {1, 1, 1, 1};
    const int N = 400;
    for (int step = 0; step < N + 2; step++) {
        pld_batch(tok, tgt, 16, (uint64_t)step);
        const ds_batch bt = {.tokens = tok, .targets = tgt};
        double l;
        cr_assert_eq(ds_engine_forward(a, &bt, &l, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_backward(a, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(a, &err), DS_OK, "%s", err.msg);
        ds_engine_layer_drop(a, NULL, kept);
        if (step < 2) { /* theta 1 */
            cr_expect(kept[0] && kept[1] && kept[2] && kept[3], "step %d dropped a layer at theta 1", step);
            continue;
        }
        for (int k = 0; k < 4; k++) {
            count[k] += kept[k];
            changes += kept[k] != before[k];
            before[k] = kept[k];
        }
    }
    for (int k = 0; k < 4; k++) {
        const double p = 1.0 - (k + 1) / 4.0 * 0.5, f = count[k] / (double)N;
        cr_expect(fabs(f - p) <= 0.1, "layer %d kept %d of %d times (%.3f), expected p = %.3f", k + 1, count[k], N, f,
                  p);
    }
    cr_expect(changes > 100, "the draws changed %d times over %d steps", changes, N);
    ds_engine_destroy(a);
}

typedef struct pld_run {
    double loss[6];
    unsigned char kept[6][3];
    float *params;
    int64_t total;
} pld_run;

static void pld_train(pld_run *r, const char *net, int outer, const char *precision, const char *extra)
{
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"train_micro_batch_size_per_gpu\": 4, \"gradient_accumulation_steps\": 2, \"seed\": 11, "
             "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01}}, %s%s\"gradient_clipping\": 1.0}",
             precision, extra);
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_json = cfg, .config_name = "pld.json", .net_json = net, .net_name = "pld-net.json",
                           .backend = "cpu", .checkpoint_activations = outer};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    const ds_net *n = ds_engine_net(e);
    int32_t tok[32], tgt[32];
    memset(r->kept, 1, sizeof r->kept);
    for (int step = 0; step < 6; step++) {
        for (int micro = 0; micro < 2; micro++) {
            pld_batch(tok, tgt, 32, (uint64_t)(7 + 2 * step + micro));
            const ds_batch b = {.tokens = tok, .targets = tgt};
            cr_assert_eq(ds_engine_forward(e, &b, &r->loss[step], &err), DS_OK, "%s", err.msg);
            cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
            if (micro == 1)
                ds_engine_layer_drop(e, NULL, r->kept[step]);
            cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
        }
    }
    r->total = 0;
    for (int t = 0; t < n->params.n; t++)
        r->total += n->params.t[t].numel;
    r->params = malloc((size_t)r->total * sizeof(float));
    for (int t = 0, off = 0; t < n->params.n; off += (int)n->params.t[t].numel, t++)
        cr_assert_eq(ds_engine_get_param(e, n->params.t[t].name, r->params + off, n->params.t[t].numel, &err), DS_OK,
                     "%s", err.msg);
    ds_engine_destroy(e);
}

/* Activation checkpointing recomputes a segment with the draws of its forward: the same bits as
 * without, in fp32, bf16 and fp16 (16-bit storage: the scaled branch is rounded where torch's
 * fp16 product would be), with dropout in the branches and 2 micro-batches per step; in bf16 and
 * fp16 also with fp32 buffers rounded at the layer boundaries (DS_ACT16=0, checkpointed). theta
 * 1 is the network without layer drop, bit for bit. */
Test(layer_drop, same_bits_checkpointed_and_at_theta_one, .timeout = 120)
{
    static const char *const PREC[] = {"", "\"bf16\": {\"enabled\": true}, ", "\"fp16\": {\"enabled\": true}, "};
    char *plain = subst_ck(CK_NETS[0].net, "false");
    for (size_t p = 0; p < 3; p++) {
        pld_run a, b, c, d;
        pld_train(&a, plain, 0, PREC[p], PLD_ON);
        pld_train(&b, plain, 1, PREC[p], PLD_ON);
        int dropped = 0;
        for (int s = 0; s < 6; s++) {
            cr_expect(a.loss[s] == b.loss[s], "prec %zu step %d: loss %.17g, checkpointed %.17g", p, s, a.loss[s],
                      b.loss[s]);
            cr_expect(memcmp(a.kept[s], b.kept[s], 3) == 0, "prec %zu step %d: other layers dropped", p, s);
            dropped += !a.kept[s][0] + !a.kept[s][1] + !a.kept[s][2];
        }
        cr_expect(dropped > 0, "prec %zu: no layer dropped", p);
        cr_expect(memcmp(a.params, b.params, (size_t)a.total * sizeof(float)) == 0, "prec %zu: parameters differ", p);
        if (p > 0) { /* fp32 buffers rounded at the same places as the 16-bit storage: the same bits */
            pld_run f;
            setenv("DS_ACT16", "0", 1);
            pld_train(&f, plain, 1, PREC[p], PLD_ON);
            unsetenv("DS_ACT16");
            for (int s = 0; s < 6; s++)
                cr_expect(a.loss[s] == f.loss[s], "prec %zu step %d: loss %.17g, with DS_ACT16=0 %.17g", p, s,
                          a.loss[s], f.loss[s]);
            cr_expect(memcmp(a.params, f.params, (size_t)a.total * sizeof(float)) == 0,
                      "prec %zu: parameters differ with DS_ACT16=0", p);
            free(f.params);
        }
        pld_train(&c, plain, 0, PREC[p], "\"progressive_layer_drop\": {\"enabled\": true, \"theta\": 1, \"gamma\": 50}, ");
        pld_train(&d, plain, 0, PREC[p], "");
        for (int s = 0; s < 6; s++)
            cr_expect(c.loss[s] == d.loss[s], "prec %zu step %d: theta 1 %.17g, without %.17g", p, s, c.loss[s],
                      d.loss[s]);
        cr_expect(memcmp(c.params, d.params, (size_t)c.total * sizeof(float)) == 0, "prec %zu: theta 1 differs", p);
        cr_expect(a.loss[5] != d.loss[5], "prec %zu: layer drop changed nothing", p);
        free(a.params), free(b.params), free(c.params), free(d.params);
    }
    free(plain);
}

/* A dropped layer that reads the network's fp32 input passes it on rounded, as every tensor
 * crossing a layer boundary is in 16-bit training: theta 0 drops the only layer from step 2 on
 * (p = exp(-50) to the first...), and the output is the input rounded to bf16. */
Test(layer_drop, dropped_input_layer_rounds_the_input)
{
    const char *net = "{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": [{\"type\": \"repeat\", \"name\": \"r\", "
                      "\"count\": 1, \"layers\": [{\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"a\", "
                      "\"out\": 8}]}]}], \"loss\": {\"type\": \"mse\"}}";
    ds_engine *e = pld_engine(net, "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 2, \"bf16\": {\"enabled\": true}, %s"
                                   "\"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.01}}}",
                              "\"progressive_layer_drop\": {\"enabled\": true, \"theta\": 0, \"gamma\": 50}, ");
    ds_error err = {0};
    float x[32], y[32], out[32];
    uint64_t s = 77;
    for (int i = 0; i < 32; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((s >> 40) % 20011) / 10000.0f - 1.0f + 1e-4f; /* not bf16 values */
        y[i] = 0.5f;
    }
    const ds_batch b = {.x = x, .y = y};
    int rounded = 0;
    for (int step = 0; step < 4; step++) {
        double l, theta;
        unsigned char kept;
        cr_assert_eq(ds_engine_forward(e, &b, &l, &err), DS_OK, "%s", err.msg);
        ds_engine_layer_drop(e, &theta, &kept);
        cr_assert_eq(ds_engine_get_output(e, out, 32, &err), DS_OK, "%s", err.msg);
        cr_expect_eq(kept, step < 2, "step %d (theta %g): kept %d", step, theta, kept);
        for (int i = 0; i < 32 && step >= 2; i++) {
            const float want = ds_bf16_to_f32(ds_f32_to_bf16(x[i]));
            cr_assert(out[i] == want, "step %d: output %d is %a, the input %a rounded is %a", step, i, out[i], x[i], want);
            rounded += want != x[i];
        }
        cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    }
    cr_expect(rounded > 0, "no input value changed by rounding: nothing tested");
    ds_engine_destroy(e);
}

/* Layer drop on other shapes of residual blocks, checked against central differences of the
 * training loss with the same draws (a training forward at the same micro-step draws the same
 * layers and dropout masks): a transformer-like stack after an input layer, a dropped layer that
 * reads the network's input, a block whose branch begins with a block and one whose branch ends
 * with one, a repeat inside the dropped layers, and the first shape checkpointed. Every
 * parameter's gradient; dropped layers' are 0. */
static const char *const PLD_NETS[] = {
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": [{\"type\": \"linear\", \"name\": \"in\", \"out\": 6},"
    "{\"type\": \"repeat\", \"name\": \"h\", \"count\": 3, \"checkpoint\": CK, \"layers\": ["
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln\"}, {\"type\": \"linear\", \"name\": \"a\", \"out\": 10},"
    "  {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"b\", \"out\": 6}]},"
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"c\", \"out\": 6}]}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": ["
    "{\"type\": \"repeat\", \"name\": \"h\", \"count\": 3, \"layers\": ["
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"a\", \"out\": 6}, {\"type\": \"gelu\"}]}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": [{\"type\": \"linear\", \"name\": \"in\", \"out\": 6},"
    "{\"type\": \"repeat\", \"name\": \"h\", \"count\": 3, \"layers\": ["
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"residual\", \"layers\": [{\"type\": \"layernorm\", \"name\": \"ln\"},"
    "  {\"type\": \"linear\", \"name\": \"a\", \"out\": 6}]}, {\"type\": \"linear\", \"name\": \"b\", \"out\": 6}]},"
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"x\", \"out\": 6},"
    "  {\"type\": \"residual\", \"layers\": [{\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"y\", \"out\": 6}]}]}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
    "{\"input\": {\"type\": \"features\", \"dim\": 6}, \"layers\": [{\"type\": \"linear\", \"name\": \"in\", \"out\": 5},"
    "{\"type\": \"repeat\", \"name\": \"o\", \"count\": 3, \"layers\": ["
    " {\"type\": \"residual\", \"layers\": [{\"type\": \"repeat\", \"name\": \"i\", \"count\": 2, \"layers\": ["
    "  {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"x\", \"out\": 5}]}]}]},"
    "{\"type\": \"linear\", \"name\": \"out\", \"out\": 6}], \"loss\": {\"type\": \"mse\"}}",
};

/* a tensor of a layer the last forward dropped: "h.N." or "o.N." with kept[N] 0 */
static int in_dropped_layer(void *kept, const char *name)
{
    return (name[0] == 'h' || name[0] == 'o') && name[1] == '.' && !((const unsigned char *)kept)[atoi(name + 2)];
}

Test(layer_drop, other_blocks_by_differences, .timeout = 300)
{
    float x[4 * 6], y[4 * 6];
    uniform_pairs(x, y, 4 * 6, 4242);
    const ds_batch batch = {.x = x, .y = y};
    int dropped = 0, scaled = 0;
    for (size_t k = 0; k < sizeof PLD_NETS / sizeof *PLD_NETS + 1; k++) {
        /* the last round: the first shape, its repeat checkpointed */
        char *net = subst_ck(PLD_NETS[k < sizeof PLD_NETS / sizeof *PLD_NETS ? k : 0],
                             k == sizeof PLD_NETS / sizeof *PLD_NETS ? "true" : "false");
        ds_engine *e = res_engine(net, "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 9, "
                                       "\"progressive_layer_drop\": {\"enabled\": true, \"theta\": 0.5, \"gamma\": 50}, "
                                       "\"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.0}}}");
        ds_error err = {0};
        double loss, theta;
        unsigned char kept[3] = {1, 1, 1};
        /* steps until theta is 0.5 and the draws drop the first layer (the one that reads the
         * network's input in the second shape) and keep another, scaled (at most 100) */
        int found = 0;
        for (int step = 0; step < 100 && !found; step++) {
            cr_assert_eq(ds_engine_forward(e, &batch, &loss, &err), DS_OK, "%s", err.msg);
            cr_assert_eq(ds_engine_layer_drop(e, &theta, kept), 3);
            if ((found = theta < 1 && !kept[0] && (kept[1] || kept[2])))
                break;
            cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
            cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
        }
        cr_assert(found, "net %zu: no step within 100 dropped layer 1 and kept another", k);
        cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
        for (int l = 0; l < 3; l++) {
            dropped += !kept[l];
            scaled += kept[l] && theta < 1;
        }
        const int checked = check_by_differences(e, &batch, 1, in_dropped_layer, kept, k);
        cr_expect(checked > 30, "net %zu: %d parameters checked", k, checked);
        ds_engine_destroy(e);
        free(net);
    }
    cr_expect(dropped > 0 && scaled > 0, "%d layers dropped, %d kept and scaled: nothing tested", dropped, scaled);
}

/* DeepSpeed's schedule: ProgressiveLayerDrop.update_state(i) gives (1 - theta) exp(-gamma i) +
 * theta, and the engine calls it before counting step i, so step i + 1's forward uses it. */
Test(layer_drop, theta_follows_deepspeed)
{
    const ds_pld_config c = {.enabled = 1, .theta = 0.5, .gamma = 0.001};
    cr_expect(ds_pld_theta(&c, 0) == 1.0);
    for (int64_t i = 0; i < 5000; i += 7)
        cr_expect(ds_pld_theta(&c, i + 1) == (1.0 - 0.5) * exp(-0.001 * (double)i) + 0.5, "step %lld", (long long)i + 1);
}

Test(layer_drop, errors_name_what_is_wrong)
{
    ds_engine *e = NULL;
    ds_error err = {0};
    ds_engine_options o = {.config_name = "pld.json", .net_json = RES_NETS[3], .net_name = "res.json", .backend = "cpu"};
    /* a repeat whose iterations are not only residual blocks: nothing to drop */
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 4, " PLD_ON "\"seed\": 1}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "pld.json: progressive_layer_drop.enabled=true: res.json: progressive layer drop: the "
                              "network has no repeat whose layers are residual blocks"),
              "%s", err.msg);
    o.net_json = pld_net();
    static const struct {
        const char *block, *msg;
    } BAD[] = {
        {"{\"enabled\": true, \"theta\": 1.5}", "pld.json: progressive_layer_drop.theta: expected a number from 0 to 1, found 1.5"},
        {"{\"enabled\": true, \"gamma\": -1}", "pld.json: progressive_layer_drop.gamma: expected a number >= 0, found -1"},
        {"{\"enabled\": true, \"thetta\": 0.5}", "pld.json: progressive_layer_drop: unknown key \"thetta\""},
        {"{\"enabled\": \"maybe\"}", "pld.json: progressive_layer_drop.enabled: expected a boolean"},
    };
    for (size_t k = 0; k < sizeof BAD / sizeof *BAD; k++) {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "{\"train_micro_batch_size_per_gpu\": 4, \"progressive_layer_drop\": %s}", BAD[k].block);
        o.config_json = cfg;
        cr_expect_eq(ds_initialize(&e, &o, &err), DS_ERR_INVALID, "%s", BAD[k].block);
        cr_expect(strstr(err.msg, BAD[k].msg), "%s\nexpected: %s", err.msg, BAD[k].msg);
    }
    /* disabled: its contents are not read (DeepSpeed's plain dict) */
    o.config_json = "{\"train_micro_batch_size_per_gpu\": 4, \"progressive_layer_drop\": {\"enabled\": false, \"theta\": 7}}";
    cr_expect_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    cr_expect_eq(ds_engine_layer_drop(e, NULL, NULL), 0);
    ds_engine_destroy(e);
}
