/* LR schedules: values at the boundaries against numbers worked out by hand from DeepSpeed's
 * formulas (engine.md §3; the arithmetic is in the comments), DECISIONS.md's choices (OneCycle
 * beta1 cap, WarmupCosineLR flat after total_num_steps), the "scheduler" block's errors, and
 * the engine stepping the schedule once per applied update. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ds/ds.h"

static ds_config cfg;

/* Load a config whose scheduler block is sched (and optimizer block opt, or none). */
static ds_status load(const char *sched, const char *opt, ds_error *e)
{
    char json[2048];
    snprintf(json, sizeof json, "{\"train_batch_size\": 2%s%s, \"scheduler\": %s}", opt ? ", " : "",
             opt ? opt : "", sched);
    memset(e, 0, sizeof *e);
    return ds_config_load_string(&cfg, json, "ds.json", 1, 0, NULL, e);
}

static const ds_sched_config *sched(const char *block, const char *opt)
{
    ds_error e;
    ds_status st = load(block, opt, &e);
    cr_assert_eq(st, DS_OK, "%s -> %s", block, e.msg);
    return &cfg.scheduler;
}

static void fails(const char *block, ds_status want, const char *text)
{
    ds_error e;
    ds_status st = load(block, NULL, &e);
    cr_assert_eq(st, want, "%s -> status %d: %s", block, st, e.msg);
    cr_assert(strstr(e.msg, text), "message \"%s\" lacks \"%s\"", e.msg, text);
}

static double lr_at(const ds_sched_config *s, int64_t k)
{
    double lr = -1;
    ds_sched_lr(s, k, &lr, NULL);
    return lr;
}

#define NEAR(a, b) cr_expect(fabs((a) - (b)) <= 1e-12 + 1e-9 * fabs(b), "%s = %.12g, expected %.12g", #a, (double)(a), (double)(b))

static void teardown(void) { ds_config_free(&cfg); }
TestSuite(sched, .fini = teardown);

Test(sched, lr_range_test)
{
    const ds_sched_config *s = sched("{\"type\": \"LRRangeTest\", \"params\": {\"lr_range_test_min_lr\": 0.001, "
                                     "\"lr_range_test_step_size\": 10, \"lr_range_test_step_rate\": 1}}", NULL);
    cr_assert_eq(s->type, DS_SCHED_LR_RANGE_TEST);
    NEAR(lr_at(s, -1), 0.001); /* constructor: min_lr */
    NEAR(lr_at(s, 4), 0.0015); /* interval 5/10 */
    NEAR(lr_at(s, 9), 0.002);  /* interval 1 */
    NEAR(lr_at(s, 99), 0.011); /* 1 + 100/10 */
    s = sched("{\"type\": \"LRRangeTest\", \"params\": {\"lr_range_test_min_lr\": [0.001], "
              "\"lr_range_test_step_size\": 10, \"lr_range_test_step_rate\": 2, \"lr_range_test_staircase\": true}}", NULL);
    NEAR(lr_at(s, 8), 0.001);  /* floor(9/10) = 0 */
    NEAR(lr_at(s, 9), 0.003);  /* floor(10/10) = 1: 1 + 2 */
    NEAR(lr_at(s, 18), 0.003);
    NEAR(lr_at(s, 19), 0.005);
    s = sched("{\"type\": \"LRRangeTest\", \"params\": {}}", NULL); /* DeepSpeed's defaults */
    NEAR(lr_at(s, -1), 1e-3);
    NEAR(lr_at(s, 1999), 2e-3); /* step_size 2000, rate 1 */
}

Test(sched, one_cycle_cycle_and_decay)
{
    const ds_sched_config *s = sched(
        "{\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.001, \"cycle_max_lr\": 0.01, "
        "\"cycle_first_step_size\": 10, \"decay_step_size\": 10, \"decay_lr_rate\": 0.5, "
        "\"decay_mom_rate\": 0.5, \"cycle_min_mom\": 0.6, \"cycle_max_mom\": 0.95}}", NULL);
    double lr, mom;
    /* k = -1: sf 0: min lr with max momentum (what DeepSpeed's get_mom() reports) */
    cr_assert_eq(ds_sched_lr(s, -1, &lr, &mom), 1);
    NEAR(lr, 0.001);
    NEAR(mom, 0.95);
    ds_sched_lr(s, 4, &lr, &mom); /* b = 5, x = 0.25, sf = 0.5 */
    NEAR(lr, 0.0055);
    NEAR(mom, 0.775);
    ds_sched_lr(s, 9, &lr, &mom); /* peak: b = 10, x = 0.5 = ratio, sf = 1 */
    NEAR(lr, 0.01);
    NEAR(mom, 0.6);
    ds_sched_lr(s, 14, &lr, &mom); /* x = 0.75, sf = (0.75 - 1) / (0.5 - 1) = 0.5 */
    NEAR(lr, 0.0055);
    NEAR(mom, 0.775);
    ds_sched_lr(s, 19, &lr, &mom); /* end of the cycle: b = 20, x = 0 */
    NEAR(lr, 0.001);
    NEAR(mom, 0.95);
    ds_sched_lr(s, 20, &lr, &mom); /* decay d = 1: 0.001 / (1 + 0.5 * 1/10), 0.95 * 1.05 */
    NEAR(lr, 0.001 / 1.05);
    NEAR(mom, 0.9975);
    ds_sched_lr(s, 29, &lr, &mom); /* d = 10: lr / 1.5; momentum 0.95 * 1.5 = 1.425 capped */
    NEAR(lr, 0.001 / 1.5);
    NEAR(mom, DS_SCHED_MOM_CAP);
    /* DeepSpeed's test: values recorded before each step rise strictly to entry[first] = max,
     * then fall strictly over the next first_step_size entries */
    for (int64_t k = -1; k < 8; k++)
        cr_expect_lt(lr_at(s, k), lr_at(s, k + 1), "k %lld", (long long)k);
    for (int64_t k = 9; k < 19; k++)
        cr_expect_gt(lr_at(s, k), lr_at(s, k + 1), "k %lld", (long long)k);
    for (int64_t k = 20; k < 40; k++)
        cr_expect_gt(lr_at(s, k), lr_at(s, k + 1), "decay k %lld", (long long)k);
}

Test(sched, one_cycle_asymmetric_no_decay_no_momentum)
{
    const ds_sched_config *s = sched(
        "{\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.1, \"cycle_max_lr\": 0.4, "
        "\"cycle_first_step_size\": 3, \"cycle_second_step_size\": 6, \"cycle_first_stair_count\": 100, "
        "\"cycle_momentum\": false, \"decay_lr_rate\": 0.5}}", NULL);
    double lr, mom = -7;
    cr_expect_eq(ds_sched_lr(s, 2, &lr, &mom), 0); /* no momentum cycling: mom untouched */
    cr_expect_eq(mom, -7);
    NEAR(lr, 0.4);               /* b = 3, x = 3/9 = ratio */
    NEAR(lr_at(s, 5), 0.25);     /* x = 6/9, sf = (2/3 - 1) / (1/3 - 1) = 0.5 */
    NEAR(lr_at(s, 8), 0.1);      /* b = 9 = total: x = 0 */
    NEAR(lr_at(s, 50), 0.1);     /* decay_step_size 0: no decay whatever the rate */
    NEAR(lr_at(s, 0), 0.2);      /* b = 1, x = 1/9, sf = 1/3 */
}

Test(sched, warmup_lr_log_and_linear)
{
    const ds_sched_config *s = sched("{\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": 0.1, "
                                     "\"warmup_max_lr\": 0.2, \"warmup_num_steps\": 10}}", NULL);
    NEAR(lr_at(s, -1), 0.1);
    NEAR(lr_at(s, 0), 0.1);                            /* ln 1 = 0 */
    NEAR(lr_at(s, 4), 0.1 + 0.1 * log(5) / log(10));   /* 0.169897 */
    NEAR(lr_at(s, 9), 0.2);                            /* ln 10 / ln 10 */
    NEAR(lr_at(s, 10), 0.2);
    NEAR(lr_at(s, 100000), 0.2);
    s = sched("{\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": 0.1, \"warmup_max_lr\": 0.2, "
              "\"warmup_num_steps\": 10, \"warmup_type\": \"linear\"}}", NULL);
    NEAR(lr_at(s, 5), 0.15);
    NEAR(lr_at(s, 9), 0.19); /* DeepSpeed's linear warmup reaches max one step late */
    NEAR(lr_at(s, 10), 0.2);
    /* W = max(2, warmup_num_steps) */
    s = sched("{\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": 0, \"warmup_max_lr\": 0.5, "
              "\"warmup_num_steps\": 0}}", NULL);
    NEAR(lr_at(s, 0), 0.0);
    NEAR(lr_at(s, 1), 0.5); /* ln 2 / ln 2 */
    /* defaults: 0 -> 0.001 over 1000 steps, log */
    s = sched("{\"type\": \"WarmupLR\"}", NULL);
    NEAR(lr_at(s, 999), 0.001);
    NEAR(lr_at(s, 99), 0.001 * log(100) / log(1000)); /* 2/3 of it */
}

Test(sched, warmup_decay_lr)
{
    const ds_sched_config *s = sched("{\"type\": \"WarmupDecayLR\", \"params\": {\"total_num_steps\": 20, "
                                     "\"warmup_min_lr\": 0.1, \"warmup_max_lr\": 0.2, \"warmup_num_steps\": 10}}", NULL);
    NEAR(lr_at(s, 0), 0.1);
    NEAR(lr_at(s, 9), 0.2);  /* last warmup step */
    NEAR(lr_at(s, 10), 0.2); /* gamma = (20 - 10) / 10 */
    NEAR(lr_at(s, 15), 0.15);
    NEAR(lr_at(s, 19), 0.11);
    NEAR(lr_at(s, 20), 0.1); /* total_num_steps: back at min */
    NEAR(lr_at(s, 500), 0.1);
    for (int64_t k = 10; k < 20; k++)
        cr_expect_gt(lr_at(s, k), lr_at(s, k + 1));
}

Test(sched, warmup_cosine_lr)
{
    /* DeepSpeed's test case (T, W, cos_min, warmup_min) = (100, 10, 0.1, 0.2), lr 0.0015 */
    const ds_sched_config *s = sched(
        "{\"type\": \"WarmupCosineLR\", \"params\": {\"total_num_steps\": 100, \"warmup_num_steps\": 10, "
        "\"cos_min_ratio\": 0.1, \"warmup_min_ratio\": 0.2}}",
        "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.0015}}");
    NEAR(lr_at(s, -1), 0.0003); /* DECISIONS.md: construction writes the warmup start, not 0 */
    NEAR(lr_at(s, 0), 0.0003);  /* 0.0015 * 0.2 */
    NEAR(lr_at(s, 9), 0.0015);  /* last warmup step: ratio 1 */
    NEAR(lr_at(s, 54), 0.0015 * 0.55); /* s = 45 of 90: cos(pi/2) = 0 -> 0.1 + 0.9/2 */
    NEAR(lr_at(s, 99), 0.00015);       /* s = S: cos(pi) = -1 -> cos_min_ratio */
    NEAR(lr_at(s, 150), 0.00015);      /* DECISIONS.md: flat after T (DeepSpeed climbs again) */
    for (int64_t k = 0; k < 9; k++)
        cr_expect_lt(lr_at(s, k), lr_at(s, k + 1));
    for (int64_t k = 9; k < 99; k++)
        cr_expect_gt(lr_at(s, k), lr_at(s, k + 1));
    /* with no optimizer block the base is the engine's default AdamW lr, 1e-3 */
    s = sched("{\"type\": \"WarmupCosineLR\", \"params\": {\"total_num_steps\": 30, \"warmup_num_steps\": 10, "
              "\"warmup_type\": \"linear\"}}", NULL);
    NEAR(lr_at(s, 5), 1e-3 * 0.5); /* warmup_min_ratio 0: 5/10 */
    NEAR(lr_at(s, 29), 1e-3 * 1e-4);
}

Test(sched, auto_values)
{
    const ds_sched_config *s = sched(
        "{\"type\": \"WarmupDecayLR\", \"params\": {\"total_num_steps\": \"auto\", \"warmup_min_lr\": \"auto\", "
        "\"warmup_max_lr\": \"auto\", \"warmup_num_steps\": \"auto\"}}",
        "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.02}}");
    cr_expect_eq(s->total_num_steps_auto, 1);
    cr_expect_eq(s->total_num_steps, 0);
    NEAR(s->warmup_max_lr, 0.02); /* "auto" max: the optimizer's lr */
    cr_expect_eq(s->warmup_num_steps, 1000);
    int warned = 0;
    for (int i = 0; i < cfg.n_warnings; i++)
        warned |= strstr(cfg.warnings[i], "\"auto\" values take their defaults") != NULL &&
                  strstr(cfg.warnings[i], "warmup_num_steps=1000") != NULL;
    cr_expect(warned, "the \"auto\" warning does not say warmup_num_steps=1000");
    ds_error e;
    ds_sched_config c = *s;
    char note[400];
    cr_assert_eq(ds_sched_set_total_steps(&c, 3000, &e), DS_OK);
    ds_sched_total_note(&c, note, sizeof note);
    cr_expect_str_eq(note, "");
    NEAR(lr_at(&c, 2000), 0.01); /* (3000 - 2000) / (3000 - 1000) of 0.02 */
    c = *s; /* an "auto" total under warmup_num_steps: DeepSpeed's warning, once the total is known */
    cr_assert_eq(ds_sched_set_total_steps(&c, 500, &e), DS_OK);
    ds_sched_total_note(&c, note, sizeof note);
    cr_expect(strstr(note, "total_num_steps (\"auto\": the run's 500 steps) is less than warmup_num_steps 1000"),
              "%s", note);
    c = *s;
    c.type = DS_SCHED_WARMUP_COSINE_LR;
    cr_expect_eq(ds_sched_set_total_steps(&c, 1000, &e), DS_ERR_INVALID);
    cr_expect(strstr(e.msg, "total_num_steps is \"auto\""), "%s", e.msg);
}

Test(sched, errors_name_the_file_and_path)
{
    fails("{\"type\": \"WarmupLR\", \"params\": {\"warmup_num_steps\": \"x\"}}", DS_ERR_INVALID,
          "ds.json: scheduler.params.warmup_num_steps: expected an integer >= 0, found \"x\"");
    fails("{\"type\": \"WarmupLR\", \"params\": {\"warmup_num_steps\": 2.5}}", DS_ERR_INVALID,
          "warmup_num_steps: expected an integer >= 0, found 2.5");
    fails("{\"type\": \"WarmupLR\", \"params\": {\"warmup_max_lrr\": 1}}", DS_ERR_INVALID,
          "ds.json: scheduler.params: unknown key \"warmup_max_lrr\" for WarmupLR (did you mean \"warmup_max_lr\"?)");
    fails("{\"type\": \"WarmupLR\", \"params\": {\"warmup_type\": \"cosine\"}}", DS_ERR_INVALID,
          "scheduler.params.warmup_type: expected \"log\" or \"linear\", found \"cosine\"");
    fails("{\"type\": \"warmuplr\"}", DS_ERR_INVALID,
          "DeepSpeed does not recognize LR scheduler \"warmuplr\" (names are case-sensitive: did you mean \"WarmupLR\"?)");
    fails("{\"type\": \"WarmupLRR\"}", DS_ERR_INVALID, "(did you mean \"WarmupLR\"?)");
    fails("{\"params\": {}}", DS_ERR_INVALID, "ds.json: scheduler.type: missing");
    fails("{\"type\": \"WarmupLR\", \"param\": {}}", DS_ERR_INVALID,
          "scheduler: unknown key \"param\" (did you mean \"params\"?)");
    fails("{\"type\": \"OneCycle\", \"params\": {\"cycle_max_lr\": 0.1}}", DS_ERR_INVALID,
          "scheduler.params.cycle_min_lr: missing");
    fails("{\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.1, \"cycle_max_lr\": 0.2, \"cycle_max_mom\": 1.2}}",
          DS_ERR_INVALID, "cycle_max_mom: expected a number in [0, 1)");
    fails("{\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.1, \"cycle_max_lr\": 0.2, "
          "\"cycle_first_step_size\": 0}}", DS_ERR_INVALID, "cycle_first_step_size: expected a number > 0, found 0");
    fails("{\"type\": \"WarmupDecayLR\", \"params\": {}}", DS_ERR_INVALID,
          "scheduler.params.total_num_steps: missing: WarmupDecayLR needs");
    fails("{\"type\": \"WarmupCosineLR\", \"params\": {\"total_num_steps\": 10, \"warmup_num_steps\": 10}}",
          DS_ERR_INVALID, "total_num_steps: expected an integer > warmup_num_steps (10; at least 2), found 10");
    fails("{\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": [0.1, 0.2]}}", DS_ERR_INVALID,
          "warmup_min_lr: expected a number or a list of 1 number (ds trains one parameter group)");
    fails("{\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": -1}}", DS_ERR_INVALID,
          "warmup_min_lr: expected a number >= 0, found -1");
    fails("{\"type\": \"WarmupLR\", \"params\": {\"last_batch_iteration\": 5}}", DS_ERR_UNSUPPORTED,
          "ds.json: scheduler.params.last_batch_iteration=5 (resuming a schedule) is not supported yet");
    fails("{\"type\": \"ReduceLROnPlateau\"}", DS_ERR_UNSUPPORTED,
          "scheduler.type=ReduceLROnPlateau (a torch.optim.lr_scheduler class) is not supported yet");
    fails("[1]", DS_ERR_INVALID, "ds.json: scheduler: expected an object, found [1]");
    /* no block, an empty block, last_batch_iteration -1 and a null value are fine */
    sched("{}", NULL);
    cr_expect_eq(cfg.scheduler.type, DS_SCHED_NONE);
    ds_config_free(&cfg);
    sched("{\"type\": \"WarmupLR\", \"params\": {\"last_batch_iteration\": -1, \"warmup_type\": null}}", NULL);
    cr_expect_eq(cfg.scheduler.warmup_type, DS_WARMUP_LOG);
}

/* ---- the engine ------------------------------------------------------------------------- */

static const char *MLP =
    "{\"input\": {\"type\": \"features\", \"dim\": 4},"
    " \"layers\": [{\"type\": \"linear\", \"name\": \"fc\", \"out\": 3}],"
    " \"loss\": {\"type\": \"cross_entropy\"}}";

static ds_engine *engine(const char *config)
{
    ds_engine *e;
    ds_error err = {0};
    ds_engine_options o = {.config_json = config, .config_name = "ds.json", .net_json = MLP,
                           .net_name = "mlp.json"};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    return e;
}

static void micro_step(ds_engine *e)
{
    static const float x[8] = {1, 2, 3, 4, -1, 0.5f, 2, -3};
    static const int32_t labels[2] = {0, 2};
    ds_batch b = {.x = x, .labels = labels};
    ds_error err = {0};
    double loss;
    cr_assert_eq(ds_engine_forward(e, &b, &loss, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
}

Test(engine_sched, steps_once_per_applied_update)
{
    /* accumulation 2: the schedule moves at every second micro-step */
    ds_engine *e = engine("{\"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 2, "
                          "\"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.5}}, "
                          "\"scheduler\": {\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": 0.1, "
                          "\"warmup_max_lr\": 0.2, \"warmup_num_steps\": 4, \"warmup_type\": \"linear\"}}}");
    /* update n uses k = n - 2: 0.1 (k -1), 0.1, 0.125, 0.15, 0.175, 0.2, 0.2 */
    const double want[] = {0.1, 0.1, 0.125, 0.15, 0.175, 0.2, 0.2};
    double lr, mom;
    ds_engine_last_lr(e, &lr, &mom);
    cr_expect(isnan(lr));
    NEAR(ds_engine_get_lr(e), 0.1);
    for (int n = 0; n < 7; n++) {
        micro_step(e);
        NEAR(ds_engine_get_lr(e), want[n]); /* not at the boundary: unchanged */
        micro_step(e);
        ds_engine_last_lr(e, &lr, &mom);
        NEAR(lr, want[n]);
        cr_expect_eq(ds_engine_global_steps(e), n + 1);
        if (n < 6)
            NEAR(ds_engine_get_lr(e), want[n + 1]);
    }
    cr_expect(isnan(mom) == 0 && mom == 0.0, "SGD momentum 0 unchanged, got %g", mom);
    ds_engine_destroy(e);
}

Test(engine_sched, one_cycle_drives_beta1_and_sgd_momentum)
{
    const char *cyc = "\"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.01, "
                      "\"cycle_max_lr\": 0.05, \"cycle_first_step_size\": 2, \"cycle_min_mom\": 0.7, "
                      "\"cycle_max_mom\": 0.9}}";
    char json[1024];
    /* SGD without momentum in its block: the cycled momentum still applies (buffer allocated) */
    snprintf(json, sizeof json, "{\"train_batch_size\": 2, \"optimizer\": {\"type\": \"SGD\", \"params\": "
             "{\"lr\": 1}}, %s}", cyc);
    ds_engine *e = engine(json);
    /* updates 1..5 use k = -1..3: sf 0, 0.5, 1, 0.5, 0 */
    const double lr_want[] = {0.01, 0.03, 0.05, 0.03, 0.01};
    const double mom_want[] = {0.9, 0.8, 0.7, 0.8, 0.9};
    double lr, mom;
    NEAR(ds_engine_get_mom(e), 0.9);
    for (int n = 0; n < 5; n++) {
        micro_step(e);
        ds_engine_last_lr(e, &lr, &mom);
        NEAR(lr, lr_want[n]);
        NEAR(mom, mom_want[n]);
    }
    size_t optim_bytes;
    ds_engine_memory(e, NULL, NULL, &optim_bytes, NULL);
    /* 15 parameters (padded): without the schedule SGD momentum 0 has no buffer at all */
    cr_expect_geq(optim_bytes, (4 * 3 + 3) * sizeof(float), "momentum buffer: %zu bytes", optim_bytes);
    ds_engine_destroy(e);

    snprintf(json, sizeof json, "{\"train_batch_size\": 2, \"optimizer\": {\"type\": \"Adam\", \"params\": "
             "{\"lr\": 1, \"betas\": [0.5, 0.777]}}, %s}", cyc);
    e = engine(json);
    micro_step(e);
    micro_step(e);
    ds_engine_last_lr(e, &lr, &mom);
    NEAR(lr, 0.03);
    NEAR(mom, 0.8); /* beta1; beta2 stays 0.777 (DECISIONS.md), not DeepSpeed's forced 0.99 */
    ds_engine_destroy(e);
}

/* The update itself uses the scheduled values: SGD from zero weights with a known gradient. */
Test(engine_sched, update_uses_the_scheduled_lr)
{
    ds_engine *a = engine("{\"train_batch_size\": 2, \"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.3}}}");
    ds_engine *b = engine("{\"train_batch_size\": 2, \"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 9}}, "
                          "\"scheduler\": {\"type\": \"LRRangeTest\", \"params\": {\"lr_range_test_min_lr\": 0.3, "
                          "\"lr_range_test_step_size\": 1, \"lr_range_test_step_rate\": 1}}}");
    float wa[12], wb[12];
    ds_error err = {0};
    micro_step(a); /* both first updates use 0.3 */
    micro_step(b);
    cr_assert_eq(ds_engine_get_param(a, "fc.weight", wa, 12, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_get_param(b, "fc.weight", wb, 12, &err), DS_OK, "%s", err.msg);
    for (int i = 0; i < 12; i++)
        cr_expect_eq(wa[i], wb[i], "weight %d: %g vs %g", i, wa[i], wb[i]);
    NEAR(ds_engine_get_lr(b), 0.6); /* k = 0: 0.3 * (1 + 1) */
    /* set_lr overrides the next update's lr */
    cr_assert_eq(ds_engine_set_lr(a, 0.6, &err), DS_OK);
    micro_step(a);
    micro_step(b);
    cr_assert_eq(ds_engine_get_param(a, "fc.weight", wa, 12, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_get_param(b, "fc.weight", wb, 12, &err), DS_OK, "%s", err.msg);
    for (int i = 0; i < 12; i++)
        cr_expect_eq(wa[i], wb[i], "weight %d after update 2: %g vs %g", i, wa[i], wb[i]);
    cr_expect_eq(ds_engine_set_lr(a, NAN, &err), DS_ERR_INVALID);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
}

Test(engine_sched, auto_total_steps_must_be_set)
{
    ds_engine *e = engine("{\"train_batch_size\": 2, \"scheduler\": {\"type\": \"WarmupDecayLR\", \"params\": "
                          "{\"total_num_steps\": \"auto\", \"warmup_num_steps\": 2}}}");
    static const float x[8] = {1, 2, 3, 4, -1, 0.5f, 2, -3};
    static const int32_t labels[2] = {0, 2};
    ds_batch bt = {.x = x, .labels = labels};
    ds_error err = {0};
    double loss;
    cr_assert_eq(ds_engine_forward(e, &bt, &loss, &err), DS_OK);
    cr_assert_eq(ds_engine_backward(e, &err), DS_OK);
    cr_expect_eq(ds_engine_step(e, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "ds.json: scheduler.params.total_num_steps is \"auto\""), "%s", err.msg);
    cr_assert_eq(ds_engine_set_total_steps(e, 4, &err), DS_OK, "%s", err.msg);
    cr_expect_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    NEAR(ds_engine_get_lr(e), 0.0); /* k = 0, log warmup over W = 2: ln 1 = 0 -> min 0 */
    ds_engine_destroy(e);
}
