/* Tests of the ds_config loader: DeepSpeed's batch-size table and checks (engine.md §1.1 test
 * vectors), "auto", old spellings, typed errors naming the JSON path, optimizer semantics,
 * refusals of features not built yet, and the 58 real configs in tests/data/dsconfigs. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds/config.h"
#include "ds/engine.h"

#ifndef DS_TEST_DIR
#define DS_TEST_DIR "tests"
#endif
#define CONFIG_DIR DS_TEST_DIR "/data/dsconfigs"

static ds_status load(ds_config *c, const char *json, int world, int strict, int64_t hint,
                      ds_error *e)
{
    ds_config_hints h = {.micro_batch = hint};
    memset(e, 0, sizeof *e);
    return ds_config_load_string(c, json, "ds.json", world, strict, &h, e);
}

/* Load and expect DS_OK. */
static void load_ok(ds_config *c, const char *json, int world)
{
    ds_error e;
    ds_status st = load(c, json, world, 0, 0, &e);
    cr_assert_eq(st, DS_OK, "%s\n-> %s", json, e.msg);
}

/* Load and expect an error of the given status whose message holds each of the strings. */
static void load_fails(const char *json, int world, int strict, ds_status want, const char *s1,
                       const char *s2)
{
    ds_config c;
    ds_error e;
    ds_status st = load(&c, json, world, strict, 0, &e);
    cr_assert_eq(st, want, "%s\n-> status %d: %s", json, st, e.msg);
    cr_assert(strstr(e.msg, s1), "message \"%s\" lacks \"%s\"", e.msg, s1);
    cr_assert(!s2 || strstr(e.msg, s2), "message \"%s\" lacks \"%s\"", e.msg, s2);
}

static int has_warning(const ds_config *c, const char *s)
{
    for (int i = 0; i < c->n_warnings; i++)
        if (strstr(c->warnings[i], s))
            return 1;
    return 0;
}

/* ---- batch sizes: engine.md §1.1 test vectors ------------------------------------------------ */

#define NO INT64_MIN /* key absent */

typedef struct {
    int world;
    int64_t tb, mb, gas;           /* given */
    int64_t want_tb, want_mb, want_gas; /* resolved, when want_err is NULL */
    const char *want_err;
} batch_case;

static const batch_case BATCH[] = {
    {2, 32, 16, 1, 32, 16, 1, NULL},
    {2, 32, 8, 2, 32, 8, 2, NULL},
    {2, 33, 17, 2, 0, 0, 0, "ds.json: train_batch_size: 33 != 17 * 2 * 2 (train_batch_size must "
                            "equal train_micro_batch_size_per_gpu * gradient_accumulation_steps * "
                            "world_size)"},
    {2, 32, 8, NO, 32, 8, 2, NULL},
    {2, 32, 18, NO, 0, 0, 0, "ds.json: gradient_accumulation_steps: 0 (inferred as"},
    {2, 32, NO, 2, 32, 8, 2, NULL},
    {2, 30, NO, 4, 0, 0, 0, "ds.json: train_batch_size: 30 != 3 * 4 * 2"},
    {2, NO, 4, 3, 24, 4, 3, NULL},
    {4, 64, NO, NO, 64, 16, 1, NULL},
    {4, 10, NO, NO, 0, 0, 0, "ds.json: train_batch_size: 10 != 2 * 1 * 4"},
    {4, 2, NO, NO, 0, 0, 0, "ds.json: train_micro_batch_size_per_gpu: 0 (inferred as"},
    {4, NO, 4, NO, 16, 4, 1, NULL},
    /* DeepSpeed's checks 1-3 on given values, in its order */
    {1, 0, 1, 1, 0, 0, 0, "train_batch_size: 0 has to be greater than 0"},
    {1, 4, -1, 1, 0, 0, 0, "train_micro_batch_size_per_gpu: -1 has to be greater than 0"},
    {1, 4, 4, 0, 0, 0, 0, "gradient_accumulation_steps: 0 has to be greater than 0"},
    {1, 8, 0, NO, 0, 0, 0, "train_micro_batch_size_per_gpu: 0 has to be greater than 0"},
    {1, NO, NO, 2, 0, 0, 0, "train_batch_size is missing and train_micro_batch_size_per_gpu is "
                            "missing"},
    {1, NO, NO, NO, 0, 0, 0, "either train_batch_size or train_micro_batch_size_per_gpu"},
};

static void batch_json(char *buf, size_t size, const batch_case *b)
{
    const int64_t v[3] = {b->tb, b->mb, b->gas};
    const char *keys[3] = {"train_batch_size", "train_micro_batch_size_per_gpu",
                           "gradient_accumulation_steps"};
    size_t n = (size_t)snprintf(buf, size, "{");
    for (int k = 0; k < 3; k++)
        if (v[k] != NO)
            n += (size_t)snprintf(buf + n, size - n, "%s\"%s\": %lld", n > 1 ? ", " : "", keys[k],
                                  (long long)v[k]);
    snprintf(buf + n, size - n, "}");
}

Test(batch, deepspeed_table_and_checks)
{
    for (size_t i = 0; i < sizeof BATCH / sizeof BATCH[0]; i++) {
        const batch_case *b = &BATCH[i];
        char json[256];
        batch_json(json, sizeof json, b);
        if (b->want_err) {
            load_fails(json, b->world, 0, DS_ERR_INVALID, b->want_err, NULL);
            continue;
        }
        ds_config c;
        load_ok(&c, json, b->world);
        cr_expect_eq(c.train_batch_size, b->want_tb, "%s W=%d: tb %lld", json, b->world,
                     (long long)c.train_batch_size);
        cr_expect_eq(c.micro_batch, b->want_mb, "%s W=%d: mb %lld", json, b->world,
                     (long long)c.micro_batch);
        cr_expect_eq(c.grad_accum, b->want_gas, "%s W=%d: gas %lld", json, b->world,
                     (long long)c.grad_accum);
        cr_expect_eq(c.world_size, b->world);
        ds_config_free(&c);
    }
}

Test(batch, auto_uses_hints_or_names_the_keys)
{
    const char *all_auto = "{\"train_batch_size\": \"auto\", \"train_micro_batch_size_per_gpu\": "
                           "\"auto\", \"gradient_accumulation_steps\": \"auto\"}";
    ds_config c;
    ds_error e;
    cr_assert_eq(load(&c, all_auto, 2, 0, 8, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.micro_batch, 8);
    cr_expect_eq(c.grad_accum, 1); /* "auto" GAS: nothing to infer it from -> 1 */
    cr_expect_eq(c.train_batch_size, 16);
    cr_expect(has_warning(&c, "train_micro_batch_size_per_gpu is \"auto\": using 8"));
    ds_config_free(&c);

    load_fails(all_auto, 2, 0, DS_ERR_INVALID,
               "train_batch_size is \"auto\" and train_micro_batch_size_per_gpu is \"auto\"",
               "ds.json");

    /* a hint is only used when nothing else gives the micro batch */
    cr_assert_eq(load(&c, "{\"train_batch_size\": 32, \"train_micro_batch_size_per_gpu\": \"auto\"}",
                      2, 0, 8, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.micro_batch, 16);
    cr_expect_eq(c.n_warnings, 0);
    ds_config_free(&c);

    cr_assert_eq(load(&c, "{\"gradient_accumulation_steps\": 4}", 1, 0, 2, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.train_batch_size, 8);
    cr_expect(has_warning(&c, "train_micro_batch_size_per_gpu is missing: using 2"));
    ds_config_free(&c);

    /* "auto" train_batch_size is inferred from the others; "auto" GAS is inferred */
    load_ok(&c, "{\"train_batch_size\": \"auto\", \"train_micro_batch_size_per_gpu\": 4, "
                "\"gradient_accumulation_steps\": 2}", 2);
    cr_expect_eq(c.train_batch_size, 16);
    ds_config_free(&c);
    load_ok(&c, "{\"train_batch_size\": 64, \"train_micro_batch_size_per_gpu\": 4, "
                "\"gradient_accumulation_steps\": \"auto\"}", 2);
    cr_expect_eq(c.grad_accum, 8);
    ds_config_free(&c);
}

/* ---- JSON text, types, numbers, booleans ------------------------------------------------------ */

Test(json, duplicate_keys_and_position)
{
    load_fails("{\"train_batch_size\": 8, \"train_batch_size\": 16}", 1, 0, DS_ERR_INVALID,
               "duplicate key \"train_batch_size\"", "ds.json");
    load_fails("{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\", \"params\": "
               "{\"lr\": 1, \"lr\": 2}}}", 1, 0, DS_ERR_INVALID, "duplicate key \"lr\"", NULL);
    load_fails("{\n  \"train_batch_size\": 8,\n  \"steps_per_print\": ]\n}", 1, 0, DS_ERR_INVALID,
               "ds.json:3:", "invalid JSON");
    load_fails("{\"train_batch_size\": 8", 1, 0, DS_ERR_INVALID, "ds.json:1:", "invalid JSON");
    /* integers beyond 64 bits: json-c would clamp them, silently */
    load_fails("{\"train_batch_size\": 8,\n \"seed\": 18446744073709551616}", 1, 0, DS_ERR_INVALID,
               "ds.json:2: the integer 18446744073709551616 does not fit in 64 bits", NULL);
    load_fails("{\"train_batch_size\": 8, \"fp16\": {\"loss_scale_window\": -9223372036854775809}}", 1, 0,
               DS_ERR_INVALID, "ds.json:1: the integer -9223372036854775809 does not fit in 64 bits", NULL);
    {
        ds_config c;
        load_ok(&c, "{\"train_batch_size\": 8, \"seed\": 18446744073709551615, \"fp16\": "
                    "{\"loss_scale\": 1e21}}", 1);
        cr_expect_eq(c.seed, UINT64_MAX);
        ds_config_free(&c);
    }
    load_fails("[1, 2]", 1, 0, DS_ERR_INVALID, "ds.json: expected a JSON object at the top level",
               NULL);
}

Test(json, wrong_types_name_the_path)
{
    load_fails("{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\", \"params\": {\"lr\": "
               "\"fast\"}}}", 1, 0, DS_ERR_INVALID,
               "ds.json: optimizer.params.lr: expected a number, found \"fast\"", NULL);
    load_fails("{\"train_batch_size\": true}", 1, 0, DS_ERR_INVALID,
               "ds.json: train_batch_size: expected an integer, found true", NULL);
    load_fails("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": \"two\"}}", 1, 0,
               DS_ERR_INVALID, "zero_optimization.stage: expected an integer, found \"two\"", NULL);
    load_fails("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 4}}", 1, 0,
               DS_ERR_INVALID, "zero_optimization.stage: expected 0, 1, 2 or 3, found 4", NULL);
    load_fails("{\"train_batch_size\": 8, \"zero_optimization\": {\"overlap_comm\": 3}}", 1, 0,
               DS_ERR_INVALID, "zero_optimization.overlap_comm: expected a boolean, found 3", NULL);
    load_fails("{\"train_batch_size\": 8, \"zero_optimization\": {\"reduce_bucket_size\": -1}}", 1,
               0, DS_ERR_INVALID, "zero_optimization.reduce_bucket_size: expected an integer >= 0",
               NULL);
    load_fails("{\"train_batch_size\": 8, \"fp16\": \"yes\"}", 1, 0, DS_ERR_INVALID,
               "fp16: expected an object, found \"yes\"", NULL);
    load_fails("{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\", \"params\": "
               "{\"betas\": [0.9]}}}", 1, 0, DS_ERR_INVALID,
               "optimizer.params.betas: expected an array of 2 numbers, found [0.9]", NULL);
    load_fails("{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\", \"params\": "
               "{\"betas\": [0.9, 1.5]}}}", 1, 0, DS_ERR_INVALID,
               "optimizer.params.betas[1]: expected a number in [0, 1), found 1.5", NULL);
    load_fails("{\"train_batch_size\": 8, \"gradient_clipping\": -1}", 1, 0, DS_ERR_INVALID,
               "gradient_clipping: expected a number >= 0, found -1", NULL);
    load_fails("{\"train_batch_size\": 8, \"seed\": -1}", 1, 0, DS_ERR_INVALID,
               "seed: expected an integer >= 0", NULL);
    load_fails("{\"train_batch_size\": 8, \"device\": \"gpu\"}", 1, 0, DS_ERR_INVALID,
               "device: expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", found \"gpu\"", NULL);
    load_fails("{\"train_batch_size\": 8, \"device\": \"cuda:x\"}", 1, 0, DS_ERR_INVALID,
               "device: expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", found \"cuda:x\"", NULL);
    load_fails("{\"train_batch_size\": 8, \"optimizer\": {\"type\": 3}}", 1, 0, DS_ERR_INVALID,
               "optimizer.type: expected a string, found 3", NULL);
}

Test(json, numbers_as_strings_and_floats_in_integer_fields)
{
    ds_config c;
    load_ok(&c, "{\"train_batch_size\": \"32\", \"train_micro_batch_size_per_gpu\": \"8\", "
                "\"steps_per_print\": \"1e5\", \"gradient_clipping\": \"1.0\", \"optimizer\": "
                "{\"type\": \"AdamW\", \"params\": {\"lr\": \"1e-3\", \"betas\": [\"0.8\", 0.99]}}}",
            1);
    cr_expect_eq(c.train_batch_size, 32);
    cr_expect_eq(c.grad_accum, 4);
    cr_expect_eq(c.steps_per_print, 100000);
    cr_expect_float_eq(c.gradient_clipping, 1.0, 1e-12);
    cr_expect_float_eq(c.optimizer.lr, 1e-3, 1e-15);
    cr_expect_float_eq(c.optimizer.beta1, 0.8, 1e-15);
    ds_config_free(&c);

    load_ok(&c, "{\"train_batch_size\": 3.2e1, \"steps_per_print\": 1e5, \"zero_optimization\": "
                "{\"stage\": 0, \"reduce_bucket_size\": 5e8, \"sub_group_size\": 1e14}}", 1);
    cr_expect_eq(c.train_batch_size, 32);
    cr_expect_eq(c.steps_per_print, 100000);
    ds_config_free(&c);

    load_fails("{\"train_batch_size\": 2.5}", 1, 0, DS_ERR_INVALID,
               "ds.json: train_batch_size: expected an integer, found 2.5", NULL);
    load_fails("{\"train_batch_size\": \"2.5\"}", 1, 0, DS_ERR_INVALID,
               "train_batch_size: expected an integer, found \"2.5\"", NULL);
    load_fails("{\"train_batch_size\": 8, \"steps_per_print\": 1.5e0}", 1, 0, DS_ERR_INVALID,
               "steps_per_print: expected an integer, found 1.5", NULL);
    load_fails("{\"train_batch_size\": [8]}", 1, 0, DS_ERR_INVALID,
               "train_batch_size: expected an integer, found [8]", NULL);
}

Test(json, booleans_as_strings)
{
    ds_config c;
    load_ok(&c, "{\"train_batch_size\": 8, \"fp16\": {\"enabled\": \"false\"}, "
                "\"wall_clock_breakdown\": \"False\", \"zero_optimization\": {\"stage\": 0, "
                "\"overlap_comm\": \"true\", \"contiguous_gradients\": 1}}", 1);
    ds_config_free(&c);
    load_ok(&c, "{\"train_batch_size\": 8, \"fp16\": {\"enabled\": \"true\"}}", 1);
    cr_expect_eq(c.precision, DS_PREC_FP16);
    ds_config_free(&c);
    load_fails("{\"train_batch_size\": 8, \"fp16\": {\"enabled\": \"maybe\"}}", 1, 0,
               DS_ERR_INVALID, "fp16.enabled: expected a boolean, found \"maybe\"", NULL);
}

Test(json, unknown_keys_warn_or_fail_with_strict)
{
    const char *json = "{\"train_batch_size\": 8, \"gradient_clip\": 1.0, \"_comment\": \"hi\"}";
    ds_config c;
    ds_error e;
    cr_assert_eq(load(&c, json, 1, 0, 0, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.n_warnings, 1);
    cr_expect_str_eq(c.warnings[0],
                     "ds.json: unknown key \"gradient_clip\" (did you mean \"gradient_clipping\"?)");
    cr_expect_float_eq(c.gradient_clipping, 0.0, 0.0);
    ds_config_free(&c);
    load_fails(json, 1, 1, DS_ERR_INVALID,
               "ds.json: unknown key \"gradient_clip\" (did you mean \"gradient_clipping\"?)", NULL);
    /* "_comment" is a comment, even with strict; a key far from every name gets no suggestion */
    load_ok(&c, "{\"train_batch_size\": 8, \"_comment\": \"x\"}", 1);
    cr_expect_eq(c.n_warnings, 0);
    ds_config_free(&c);
    cr_assert_eq(load(&c, "{\"train_batch_size\": 8, \"cuda_visible_devices\": 0}", 1, 0, 0, &e),
                 DS_OK);
    cr_expect_str_eq(c.warnings[0], "ds.json: unknown key \"cuda_visible_devices\"");
    ds_config_free(&c);
    /* inside a section (pydantic, extra="forbid") an unknown key is an error */
    load_fails("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 0, "
               "\"stage3_param_persitence_threshold\": 1e5}}", 1, 0, DS_ERR_INVALID,
               "ds.json: zero_optimization: unknown key \"stage3_param_persitence_threshold\" (did "
               "you mean \"stage3_param_persistence_threshold\"?)", NULL);
    load_fails("{\"train_batch_size\": 8, \"fp16\": {\"enabeld\": true}}", 1, 0, DS_ERR_INVALID,
               "fp16: unknown key \"enabeld\" (did you mean \"enabled\"?)", NULL);
}

/* ---- optimizer ------------------------------------------------------------------------------- */

#define OPT(type, params) "{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"" type "\", " \
                          "\"params\": {" params "}}}"

Test(optimizer, adam_means_adamw_unless_adam_w_mode_false)
{
    ds_config c;
    load_ok(&c, OPT("Adam", ""), 1);
    cr_expect(c.has_optimizer);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_ADAM);
    cr_expect_str_eq(c.optimizer.name, "Adam");
    cr_expect_eq(c.optimizer.adam_w_mode, 1);
    cr_expect_eq(c.optimizer.bias_correction, 1);
    cr_expect_float_eq(c.optimizer.lr, 1e-3, 0);
    cr_expect_float_eq(c.optimizer.beta1, 0.9, 0);
    cr_expect_float_eq(c.optimizer.beta2, 0.999, 0);
    cr_expect_float_eq(c.optimizer.eps, 1e-8, 0);
    cr_expect_float_eq(c.optimizer.weight_decay, 0, 0);
    ds_config_free(&c);

    load_ok(&c, OPT("Adam", "\"adam_w_mode\": false, \"weight_decay\": 0.01"), 1);
    cr_expect_eq(c.optimizer.adam_w_mode, 0);
    cr_expect_float_eq(c.optimizer.weight_decay, 0.01, 0);
    ds_config_free(&c);

    load_ok(&c, OPT("AdamW", "\"adam_w_mode\": false"), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_ADAMW);
    cr_expect_eq(c.optimizer.adam_w_mode, 1);
    cr_expect(has_warning(&c, "adam_w_mode=false has no effect"));
    ds_config_free(&c);

    load_ok(&c, OPT("adamw", "\"bias_correction\": false, \"amsgrad\": false, \"set_grad_none\": true"), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_ADAMW);
    cr_expect_eq(c.optimizer.bias_correction, 0);
    ds_config_free(&c);

    /* torch_adam: torch.optim.AdamW's weight_decay default (0.01) unless given; Adam with
     * adam_w_mode false is torch.optim.Adam (0); FusedAdam-only keys are DeepSpeed's TypeError */
    load_ok(&c, OPT("adamw", "\"torch_adam\": true, \"amsgrad\": false"), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0.01, 0);
    ds_config_free(&c);
    load_ok(&c, OPT("Adam", "\"torch_adam\": true"), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0.01, 0);
    cr_expect_eq(c.optimizer.adam_w_mode, 1);
    ds_config_free(&c);
    load_ok(&c, OPT("Adam", "\"torch_adam\": true, \"weight_decay\": 0.1"), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0.1, 0);
    ds_config_free(&c);
    load_ok(&c, OPT("Adam", "\"torch_adam\": true, \"adam_w_mode\": false"), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0, 0);
    cr_expect_eq(c.optimizer.adam_w_mode, 0);
    ds_config_free(&c);
    /* every boolean spelling selects the same: torch_adam "true" or 1, adam_w_mode 0 or "false" */
    load_ok(&c, OPT("Adam", "\"torch_adam\": true, \"adam_w_mode\": 0"), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0, 0);
    cr_expect_eq(c.optimizer.adam_w_mode, 0);
    ds_config_free(&c);
    load_ok(&c, OPT("Adam", "\"torch_adam\": \"True\", \"adam_w_mode\": \"false\""), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0, 0);
    cr_expect_eq(c.optimizer.adam_w_mode, 0);
    ds_config_free(&c);
    load_ok(&c, OPT("AdamW", "\"torch_adam\": 1"), 1);
    cr_expect_float_eq(c.optimizer.weight_decay, 0.01, 0);
    ds_config_free(&c);
    load_fails(OPT("AdamW", "\"torch_adam\": \"true\", \"bias_correction\": false"), 1, 0, DS_ERR_INVALID,
               "optimizer.params.bias_correction: torch.optim.AdamW, which torch_adam selects", NULL);
    load_fails(OPT("AdamW", "\"torch_adam\": \"maybe\""), 1, 0, DS_ERR_INVALID,
               "optimizer.params.torch_adam: expected a boolean, found \"maybe\"", NULL);
    load_fails(OPT("AdamW", "\"torch_adam\": true, \"bias_correction\": false"), 1, 0, DS_ERR_INVALID,
               "optimizer.params.bias_correction: torch.optim.AdamW, which torch_adam selects, takes no "
               "bias_correction", NULL);
    load_fails(OPT("Adam", "\"set_grad_none\": true, \"adam_w_mode\": false, \"torch_adam\": true"), 1, 0,
               DS_ERR_INVALID, "optimizer.params.set_grad_none: torch.optim.Adam, which torch_adam selects", NULL);

    load_ok(&c, OPT("ADAM", "\"lr\": \"auto\", \"betas\": \"auto\", \"eps\": \"auto\", "
                            "\"weight_decay\": \"auto\""), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_ADAM);
    cr_expect_float_eq(c.optimizer.lr, 1e-3, 0);
    cr_expect_float_eq(c.optimizer.beta2, 0.999, 0);
    cr_expect(has_warning(&c, "\"auto\" values take their defaults: lr=0.001, betas=[0.9, 0.999], "
                              "eps=1e-08, weight_decay=0"));
    ds_config_free(&c);

    load_fails(OPT("Adam", "\"amsgrad\": true"), 1, 0, DS_ERR_UNSUPPORTED,
               "ds.json: optimizer.params.amsgrad=true is not supported yet", NULL);
    load_fails(OPT("Adam", "\"lr\": -1"), 1, 0, DS_ERR_INVALID,
               "optimizer.params.lr: expected a number >= 0, found -1", NULL);
    load_fails(OPT("AdamW", "\"max_grad_norm\": 1.0"), 1, 0, DS_ERR_INVALID,
               "optimizer.params.max_grad_norm: 'max_grad_norm' is not supported as an optimizer "
               "parameter", "'gradient_clipping'");
    load_fails(OPT("Adam", "\"betas1\": 0.9"), 1, 0, DS_ERR_INVALID,
               "optimizer.params: unknown key \"betas1\" for Adam (did you mean \"betas\"?)", NULL);
    load_fails("{\"train_batch_size\": 8, \"optimizer\": {\"params\": {\"lr\": 1}}}", 1, 0,
               DS_ERR_INVALID, "optimizer.type: missing", NULL);
}

Test(optimizer, sgd_and_type_names)
{
    ds_config c;
    load_ok(&c, OPT("SGD", "\"lr\": 0.1, \"momentum\": 0.9, \"nesterov\": true, "
                           "\"weight_decay\": 1e-4"), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_SGD);
    cr_expect_float_eq(c.optimizer.lr, 0.1, 0);
    cr_expect_float_eq(c.optimizer.momentum, 0.9, 0);
    cr_expect_float_eq(c.optimizer.dampening, 0, 0);
    cr_expect_eq(c.optimizer.nesterov, 1);
    ds_config_free(&c);

    load_fails(OPT("SGD", "\"lr\": 0.1, \"nesterov\": true"), 1, 0, DS_ERR_INVALID,
               "optimizer.params.nesterov: Nesterov momentum requires a momentum and zero "
               "dampening", NULL);
    load_fails(OPT("SGD", "\"lr\": 0.1, \"momentum\": 0.9, \"dampening\": 0.1, \"nesterov\": true"),
               1, 0, DS_ERR_INVALID, "Nesterov momentum requires a momentum and zero dampening",
               NULL);
    load_fails(OPT("SGD", "\"momentum\": 0.9"), 1, 0, DS_ERR_INVALID,
               "ds.json: optimizer.params.lr: missing", NULL);
    load_fails(OPT("SGD", "\"lr\": \"auto\""), 1, 0, DS_ERR_INVALID,
               "ds.json: optimizer.params.lr: \"auto\" cannot be inferred", NULL);
    load_fails(OPT("SGD", "\"lr\": 0.1, \"betas\": [0.9, 0.99]"), 1, 0, DS_ERR_INVALID,
               "optimizer.params: unknown key \"betas\" for SGD", NULL);
    load_fails(OPT("sgd", "\"lr\": 0.1"), 1, 0, DS_ERR_INVALID,
               "optimizer.type: \"sgd\" is not a supported DeepSpeed optimizer",
               "did you mean \"SGD\"?");
    load_fails(OPT("Adamw2", ""), 1, 0, DS_ERR_INVALID, "\"Adamw2\" is not a supported DeepSpeed",
               "did you mean \"AdamW\"?");
    load_fails(OPT("Lion", "\"lr\": 11e-3"), 1, 0, DS_ERR_UNSUPPORTED,
               "ds.json: optimizer.type=Lion is not supported yet", NULL);
    load_fails(OPT("OnebitAdam", ""), 1, 0, DS_ERR_UNSUPPORTED,
               "optimizer.type=OnebitAdam is not supported yet", NULL);
    load_fails(OPT("RMSprop", "\"lr\": 0.1"), 1, 0, DS_ERR_UNSUPPORTED,
               "optimizer.type=RMSprop is not supported yet", NULL);
}

/* ---- features not built yet, defaults, old spellings ----------------------------------------- */

#define TB8(rest) "{\"train_batch_size\": 8, " rest "}"

/* prescale_gradients and gradient_predivide_factor are implemented (data-parallel averaging) */
Test(features, gradient_averaging_keys)
{
    ds_config c;
    load_ok(&c, TB8("\"prescale_gradients\": true, \"gradient_predivide_factor\": 8"), 1);
    cr_expect_eq(c.prescale_gradients, 1);
    cr_expect_eq(c.gradient_predivide_factor, 8.0);
    ds_config_free(&c);
    load_ok(&c, TB8("\"seed\": 1"), 1);
    cr_expect_eq(c.prescale_gradients, 0);
    cr_expect_eq(c.gradient_predivide_factor, 1.0, "the default factor is 1");
    ds_config_free(&c);
    load_fails(TB8("\"gradient_predivide_factor\": 0"), 1, 0, DS_ERR_INVALID, "gradient_predivide_factor", NULL);
}

/* offload_optimizer {device: cpu} (or the old cpu_offload: true) is recorded; the engine accepts
 * it on the cpu backend, where the optimizer runs in host memory anyway (tests/zero.sh), and
 * refuses it on a GPU (tests/cuda-dp.sh). Both keys at once are refused, as DeepSpeed does. */
/* Stage 3: its knobs (persistence thresholds, with and without the stage3_ prefix, "auto" the
 * default), overlap_comm true unless given (DeepSpeed's null), offload_param cpu recorded (the
 * engine accepts it on the cpu backend; tests/zero.sh, tests/cuda-dp.sh) and only warned about
 * below stage 3, where DeepSpeed ignores it. */
Test(zero, stage3_knobs)
{
    ds_config c;
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 3}"), 1);
    cr_expect_eq(c.zero.stage, 3);
    cr_expect_eq(c.zero.overlap_comm, 1, "overlap_comm defaults to true at stage 3");
    cr_expect_eq(c.zero.param_persistence_threshold, 100000);
    cr_expect_eq(c.zero.model_persistence_threshold, INT64_MAX);
    cr_expect_eq(c.zero.offload_param, 0);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 3, \"overlap_comm\": false, "
                    "\"stage3_param_persistence_threshold\": 0, \"model_persistence_threshold\": 1e6, "
                    "\"offload_param\": {\"device\": \"cpu\", \"pin_memory\": true}, "
                    "\"stage3_prefetch_bucket_size\": \"auto\", \"stage3_max_live_parameters\": 1e9, "
                    "\"stage3_max_reuse_distance\": 1e9, \"sub_group_size\": 1e9, "
                    "\"stage3_gather_16bit_weights_on_model_save\": true}"), 1);
    cr_expect_eq(c.zero.overlap_comm, 0);
    cr_expect_eq(c.zero.param_persistence_threshold, 0);
    cr_expect_eq(c.zero.model_persistence_threshold, 1000000);
    cr_expect_eq(c.zero.offload_param, 1);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 3, \"param_persistence_threshold\": 10, "
                    "\"stage3_model_persistence_threshold\": \"auto\"}"), 1);
    cr_expect_eq(c.zero.param_persistence_threshold, 10);
    cr_expect_eq(c.zero.model_persistence_threshold, INT64_MAX);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 2, \"offload_param\": {\"device\": \"cpu\"}}"), 1);
    cr_expect_eq(c.zero.overlap_comm, 0, "overlap_comm stays false below stage 3");
    cr_expect(has_warning(&c, "zero_optimization.offload_param acts at stage 3 only; at stage 2 it does nothing"));
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 3, \"cpu_offload_param\": true}"), 1);
    cr_expect_eq(c.zero.offload_param, 1);
    cr_expect(has_warning(&c, "zero_optimization.cpu_offload_param is deprecated"));
    ds_config_free(&c);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 3, \"stage3_param_persistence_threshold\": -1}"), 1, 0,
               DS_ERR_INVALID, "zero_optimization.stage3_param_persistence_threshold: expected an integer >= 0, found -1",
               NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 4}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.stage: expected 0, 1, 2 or 3, found 4", NULL);
    load_fails(TB8("\"zero_optimization\": {\"cpu_offload_param\": true, \"offload_param\": {\"device\": \"none\"}}"),
               1, 0, DS_ERR_INVALID,
               "ds.json: zero_optimization.cpu_offload_param: given together with zero_optimization.offload_param", NULL);
}

Test(features, offload_optimizer_cpu_is_recorded)
{
    ds_config c;
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\", "
                    "\"pin_memory\": true, \"ratio\": 1}}"), 1);
    cr_expect_eq(c.zero.offload_optimizer, DS_OFFLOAD_OPTIMIZER);
    cr_expect_eq(c.zero.stage, 2);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 1, \"cpu_offload\": true}"), 1);
    cr_expect_eq(c.zero.offload_optimizer, DS_OFFLOAD_CPU_OFFLOAD);
    cr_expect(has_warning(&c, "zero_optimization.cpu_offload is deprecated, use "
                              "zero_optimization.offload_optimizer instead"));
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 1, \"cpu_offload\": false}"), 1);
    cr_expect_eq(c.zero.offload_optimizer, 0);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 1, \"offload_optimizer\": {\"device\": \"none\"}}"), 1);
    cr_expect_eq(c.zero.offload_optimizer, 0);
    ds_config_free(&c);
    load_fails(TB8("\"zero_optimization\": {\"cpu_offload\": true, \"offload_optimizer\": {\"device\": \"none\"}}"),
               1, 0, DS_ERR_INVALID,
               "ds.json: zero_optimization.cpu_offload: given together with zero_optimization.offload_optimizer",
               NULL);
}

Test(features, refused_naming_the_key)
{
    load_fails(TB8("\"bf16\": {\"enabled\": true, \"bf16_optimizer_states\": true}"), 1, 0,
               DS_ERR_UNSUPPORTED, "bf16.bf16_optimizer_states=true is not supported yet", NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 3, \"offload_param\": {\"device\": \"nvme\"}}"), 1, 0,
               DS_ERR_UNSUPPORTED, "ds.json: zero_optimization.offload_param.device=nvme is not supported yet", NULL);
    { /* round_robin_gradients only orders DeepSpeed's gradient copies for CPU offload: a warning */
        ds_config c;
        for (int st = 1; st <= 3; st++) {
            char j[160];
            snprintf(j, sizeof j, TB8("\"zero_optimization\": {\"stage\": %d, \"round_robin_gradients\": true}"), st);
            load_ok(&c, j, 1);
            cr_expect(has_warning(&c, "zero_optimization.round_robin_gradients=true: DeepSpeed's order of the gradient "
                                      "copies"), "stage %d", st);
            ds_config_free(&c);
        }
    }
    load_fails(TB8("\"zero_optimization\": {\"offload_optimizer\": {\"device\": \"nvme\"}}"), 1, 0,
               DS_ERR_UNSUPPORTED,
               "zero_optimization.offload_optimizer.device=nvme is not supported yet", NULL);
    load_fails(TB8("\"zero_optimization\": {\"offload_optimizer\": {\"device\": \"cpu\", \"ratio\": 0.5}}"),
               1, 0, DS_ERR_UNSUPPORTED, "zero_optimization.offload_optimizer.ratio=0.5 is not supported yet",
               NULL);
    load_fails(TB8("\"zero_optimization\": {\"offload_optimizer\": {\"device\": \"gpu\"}}"), 1, 0,
               DS_ERR_INVALID,
               "zero_optimization.offload_optimizer.device: expected \"none\", \"cpu\" or \"nvme\", found \"gpu\"",
               NULL);
    load_fails(TB8("\"scheduler\": {\"type\": \"StepLR\", \"params\": {}}"), 1, 0,
               DS_ERR_UNSUPPORTED, "ds.json: scheduler.type=StepLR (a torch.optim.lr_scheduler "
               "class) is not supported yet", NULL);
    load_fails(TB8("\"communication_data_type\": \"fp16\""), 1, 0, DS_ERR_UNSUPPORTED,
               "communication_data_type=fp16 is not supported yet", NULL);
    load_fails(TB8("\"communication_data_type\": \"fp8\""), 1, 0, DS_ERR_INVALID,
               "communication_data_type: expected \"fp32\", \"fp16\" or \"bf16\", found \"fp8\"",
               NULL);
    load_fails(TB8("\"flops_profiler\": {\"enabled\": true}"), 1, 0, DS_ERR_UNSUPPORTED,
               "flops_profiler.enabled=true is not supported yet", NULL);
    load_fails(TB8("\"wandb\": {\"enabled\": true, \"project\": \"p\"}"), 1, 0,
               DS_ERR_UNSUPPORTED, "wandb.enabled=true is not supported yet", NULL);
    load_fails(TB8("\"pipeline\": {\"stages\": 2}"), 1, 0, DS_ERR_UNSUPPORTED,
               "ds.json: pipeline is not supported yet", NULL);
    load_fails(TB8("\"pipeline\": false"), 1, 0, DS_ERR_INVALID, "pipeline: expected an object, found false",
               NULL);
    /* ZeRO switches whose other value ds does not build */
    load_fails(TB8("\"zero_optimization\": {\"stage\": 1, \"load_from_fp32_weights\": false}"), 1, 0,
               DS_ERR_UNSUPPORTED, "zero_optimization.load_from_fp32_weights=false is not supported yet", NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 2, \"ignore_unused_parameters\": \"no\"}"), 1, 0,
               DS_ERR_UNSUPPORTED, "zero_optimization.ignore_unused_parameters=no is not supported yet", NULL);
    /* data_types.grad_accum_dtype: accepted where it names what ds does for the precision */
    {
        ds_config c;
        load_ok(&c, TB8("\"fp16\": {\"enabled\": true}, \"data_types\": {\"grad_accum_dtype\": \"fp16\"}"), 1);
        ds_config_free(&c);
        load_ok(&c, TB8("\"data_types\": {\"grad_accum_dtype\": \"torch.float32\"}, \"bf16\": {\"enabled\": true}"), 1);
        ds_config_free(&c);
        load_ok(&c, TB8("\"data_types\": {\"grad_accum_dtype\": \"fp32\"}"), 1);
        ds_config_free(&c);
    }
    load_fails(TB8("\"data_types\": {\"grad_accum_dtype\": \"fp32\"}, \"fp16\": {\"enabled\": true}"), 1, 0,
               DS_ERR_UNSUPPORTED, "data_types.grad_accum_dtype=fp32 is not supported yet (fp16 training "
               "accumulates its gradients in fp16)", NULL);
    load_fails(TB8("\"bf16\": {\"enabled\": true}, \"data_types\": {\"grad_accum_dtype\": \"bf16\"}"), 1, 0,
               DS_ERR_UNSUPPORTED, "data_types.grad_accum_dtype=bf16 is not supported yet (bf16 training "
               "accumulates its gradients in fp32)", NULL);
    load_fails(TB8("\"data_types\": {\"grad_accum_dtype\": \"half\"}"), 1, 0, DS_ERR_UNSUPPORTED,
               "data_types.grad_accum_dtype=half is not supported yet (fp32 training", NULL);
    load_fails(TB8("\"elasticity\": {\"enabled\": true}"), 1, 0, DS_ERR_UNSUPPORTED,
               "elasticity.enabled=true is not supported yet", NULL);
    /* every refusal is listed in one message */
    load_fails(TB8("\"comet\": {\"enabled\": true}, \"scheduler\": {\"type\": \"CyclicLR\"}"), 1, 0,
               DS_ERR_UNSUPPORTED, "comet.enabled=true is not supported yet; scheduler.type=CyclicLR "
               "(a torch.optim.lr_scheduler class) is not supported yet", NULL);
    /* an invalid value wins over refusals: it must be fixed in any case */
    load_fails(TB8("\"wandb\": {\"enabled\": true}, \"steps_per_print\": \"x\""), 1, 0,
               DS_ERR_INVALID, "steps_per_print: expected an integer", NULL);
}

/* Values are checked wherever they are accepted: the tuning keys' types, lower bounds below the
 * limits of features not built, the numbers the engine computes with in fp32 */
Test(json, values_checked_where_accepted)
{
    ds_config c;
    load_fails(TB8("\"gradient_predivide_factor\": 1e-300"), 1, 0, DS_ERR_INVALID,
               "gradient_predivide_factor: expected a number in [1e-6, 1e6], found 1e-300", NULL);
    load_fails(TB8("\"gradient_predivide_factor\": 1e300"), 1, 0, DS_ERR_INVALID,
               "gradient_predivide_factor: expected a number in [1e-6, 1e6]", NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\", "
                   "\"pin_memory\": \"banana\"}}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.offload_optimizer.pin_memory: expected a boolean, found \"banana\"", NULL);
    load_fails(TB8("\"zero_optimization\": {\"offload_optimizer\": {\"buffer_count\": -5}}"), 1, 0,
               DS_ERR_INVALID, "zero_optimization.offload_optimizer.buffer_count: expected an integer >= 0", NULL);
    load_fails(TB8("\"zero_optimization\": {\"offload_optimizer\": {\"fast_init\": {\"a\": 1}}}"), 1, 0,
               DS_ERR_INVALID, "zero_optimization.offload_optimizer.fast_init: expected a boolean", NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 3, \"offload_param\": {\"buffer_size\": \"huge\"}}"), 1,
               0, DS_ERR_INVALID, "zero_optimization.offload_param.buffer_size: expected an integer", NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 3, \"offload_param\": {\"nvme_path\": 7}}"), 1, 0,
               DS_ERR_INVALID, "zero_optimization.offload_param.nvme_path: expected a string, found 7", NULL);
    load_fails(TB8("\"zero_optimization\": {\"leaf_module\": 5}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.leaf_module: expected an object, found 5", NULL);
    load_fails(TB8("\"timers\": 5"), 1, 0, DS_ERR_INVALID, "timers: expected an object, found 5", NULL);
    load_fails(TB8("\"timers\": {\"throughput\": {\"enabled\": \"banana\"}}"), 1, 0, DS_ERR_INVALID,
               "timers.throughput.enabled: expected a boolean", NULL);
    load_fails(TB8("\"aio\": \"x\""), 1, 0, DS_ERR_INVALID, "aio: expected an object, found \"x\"", NULL);
    load_fails(TB8("\"aio\": {\"queue_depth\": -1}"), 1, 0, DS_ERR_INVALID, "aio.queue_depth: expected an integer >= 0",
               NULL);
    load_ok(&c, TB8("\"aio\": {\"block_size\": 1048576, \"queue_depth\": 16, \"single_submit\": false, "
                    "\"overlap_events\": true, \"thread_count\": 2}, \"timers\": {\"throughput\": {\"enabled\": true, "
                    "\"synchronized\": false}}, \"zero_optimization\": {\"leaf_module\": {\"classes\": [\"X\"]}}"), 1);
    ds_config_free(&c);
    load_fails(TB8("\"sequence_parallel_size\": -3"), 1, 0, DS_ERR_INVALID,
               "sequence_parallel_size: expected an integer >= 1, found -3", NULL);
    load_fails(TB8("\"zero_optimization\": {\"zero_hpz_partition_size\": -4}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.zero_hpz_partition_size: expected an integer >= 0", NULL);
    load_fails(TB8("\"tensor_parallel\": {\"autotp_size\": -1}"), 1, 0, DS_ERR_INVALID,
               "tensor_parallel.autotp_size: expected an integer >= 0", NULL);
    load_fails(TB8("\"vocabulary_size\": -7"), 1, 0, DS_ERR_INVALID, "vocabulary_size: expected an integer >= 0", NULL);
    load_ok(&c, TB8("\"zero_optimization\": {\"mics_shard_size\": -1}"), 1); /* DeepSpeed's default */
    ds_config_free(&c);
    load_fails(TB8("\"zero_optimization\": {\"offload_optimizer\": {\"ratio\": 1.5}}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.offload_optimizer.ratio: expected a number in [0, 1], found 1.5", NULL);
    /* numbers as strings are decimal, as Python's float() and int() read them */
    load_fails(TB8("\"steps_per_print\": \"0x10\""), 1, 0, DS_ERR_INVALID, "steps_per_print: expected an integer",
               NULL);
    load_fails(TB8("\"gradient_clipping\": \"0x1p-2\""), 1, 0, DS_ERR_INVALID, "gradient_clipping: expected a number",
               NULL);
    /* "device": null is absent, as null is everywhere */
    load_ok(&c, TB8("\"device\": null"), 1);
    cr_expect_str_eq(c.device, "");
    ds_config_free(&c);
    /* bf16 and the old bfloat16 together: DeepSpeed reads bf16 alone */
    load_ok(&c, TB8("\"bf16\": {\"enabled\": false}, \"bfloat16\": {\"enabled\": true}"), 1);
    cr_expect_eq(c.precision, DS_PREC_FP32);
    cr_expect(has_warning(&c, "bfloat16 is ignored: bf16 is given too"));
    ds_config_free(&c);
    load_ok(&c, TB8("\"bf16\": null, \"bfloat16\": {\"enabled\": true}"), 1); /* null is absent */
    cr_expect_eq(c.precision, DS_PREC_BF16);
    cr_expect(!has_warning(&c, "bfloat16 is ignored"));
    ds_config_free(&c);
    load_fails(TB8("\"fp16\": {\"enabled\": true}, \"bf16\": {\"enabled\": true}, \"data_types\": {\"grad_accum_dtype\": "
                   "\"fp16\"}"), 1, 0, DS_ERR_INVALID, "bfloat16 and fp16 modes cannot be simultaneously enabled", NULL);
    load_ok(&c, TB8("\"bf16\": {\"enabled\": true}, \"bfloat16\": {\"enabled\": false, \"check_grad_overflow\": true}"), 1);
    cr_expect_eq(c.precision, DS_PREC_BF16);
    cr_expect_eq(c.bf16_check_overflow, 0);
    ds_config_free(&c);
    /* scheduler booleans take the same spellings as every other boolean */
    load_ok(&c, TB8("\"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.001, "
                    "\"cycle_max_lr\": 0.01, \"cycle_first_step_size\": 10, \"cycle_momentum\": 0}}"), 1);
    ds_config_free(&c);
    load_ok(&c, TB8("\"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.001, "
                    "\"cycle_max_lr\": 0.01, \"cycle_first_step_size\": 10, \"cycle_momentum\": \"yes\"}}"), 1);
    ds_config_free(&c);
    load_fails(TB8("\"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.001, "
                   "\"cycle_max_lr\": 0.01, \"cycle_first_step_size\": 10, \"cycle_momentum\": 2}}"), 1, 0,
               DS_ERR_INVALID, "scheduler.params.cycle_momentum: expected a boolean", NULL);
}

/* tensorboard and csv_monitor: read (the files: tests/monitor.sh); DeepSpeed's defaults */
Test(features, monitors)
{
    ds_config c;
    load_ok(&c, TB8("\"seed\": 1"), 1);
    cr_expect(!c.tensorboard.enabled && !c.csv_monitor.enabled);
    cr_expect_str_eq(c.tensorboard.job_name, "DeepSpeedJobName");
    cr_expect_str_eq(c.csv_monitor.output_path, "");
    ds_config_free(&c);
    load_ok(&c, TB8("\"tensorboard\": {\"enabled\": true, \"output_path\": \"runs/\", \"job_name\": \"a\"}, "
                    "\"csv_monitor\": {\"enabled\": \"true\", \"job_name\": \"auto\"}"), 1);
    cr_expect(c.tensorboard.enabled && c.csv_monitor.enabled);
    cr_expect_str_eq(c.tensorboard.output_path, "runs/");
    cr_expect_str_eq(c.tensorboard.job_name, "a");
    cr_expect_str_eq(c.csv_monitor.job_name, "DeepSpeedJobName", "\"auto\" is the default");
    ds_config_free(&c);
    load_fails(TB8("\"csv_monitor\": {\"enabled\": true, \"job_name\": \"a/b\"}"), 1, 0, DS_ERR_INVALID,
               "csv_monitor.job_name: expected a non-empty name without '/', found \"a/b\"", NULL);
    load_fails(TB8("\"tensorboard\": {\"enabled\": true, \"output_path\": 5}"), 1, 0, DS_ERR_INVALID,
               "tensorboard.output_path: expected a string, found 5", NULL);
    load_fails(TB8("\"tensorboard\": {\"enabled\": true, \"flush_secs\": 5}"), 1, 0, DS_ERR_INVALID,
               "tensorboard: unknown key \"flush_secs\"", NULL);
}

/* activation_checkpointing: DeepSpeed's keys, for the network's checkpointed repeats (the
 * engine checks number_checkpoints against the network; test_model's checkpointing suite) */
Test(features, activation_checkpointing)
{
    ds_config c;
    ds_error e;
    cr_assert_eq(load(&c, TB8("\"activation_checkpointing\": {\"partition_activations\": true, "
                              "\"contiguous_memory_optimization\": true, \"cpu_checkpointing\": true, "
                              "\"number_checkpoints\": 24, \"synchronize_checkpoint_boundary\": true, "
                              "\"profile\": true}"), 1, 1, 0, &e), DS_OK, "%s", e.msg);
    cr_expect(c.actckpt.given && c.actckpt.partition_activations && c.actckpt.contiguous &&
              c.actckpt.cpu_checkpointing && c.actckpt.synchronize && c.actckpt.profile);
    cr_expect_eq(c.actckpt.number_checkpoints, 24);
    ds_config_free(&c);
    cr_assert_eq(load(&c, TB8("\"steps_per_print\": 5"), 1, 1, 0, &e), DS_OK, "%s", e.msg);
    cr_expect(!c.actckpt.given && !c.actckpt.partition_activations && !c.actckpt.number_checkpoints &&
              !c.actckpt.profile);
    ds_config_free(&c);
    /* checkpointing.configure's asserts are the engine's, where the network checkpoints (a
     * config without them loads, as in DeepSpeed when nothing calls configure) */
    cr_assert_eq(load(&c, TB8("\"activation_checkpointing\": {\"contiguous_memory_optimization\": true}"), 1, 1, 0,
                      &e), DS_OK, "%s", e.msg);
    cr_expect(c.actckpt.contiguous && !c.actckpt.partition_activations);
    ds_config_free(&c);
    load_fails(TB8("\"activation_checkpointing\": {\"number_checkpoints\": 0}"), 1, 0, DS_ERR_INVALID,
               "activation_checkpointing.number_checkpoints: expected null or an integer >= 1, found 0", NULL);
    load_fails(TB8("\"activation_checkpointing\": {\"partition_activations\": \"maybe\"}"), 1, 0, DS_ERR_INVALID,
               "activation_checkpointing.partition_activations: expected", NULL);
    load_fails(TB8("\"activation_checkpointing\": {\"partitioned_activations\": true}"), 1, 0, DS_ERR_INVALID,
               "activation_checkpointing: unknown key \"partitioned_activations\"", NULL);
    load_fails(TB8("\"activation_checkpointing\": [true]"), 1, 0, DS_ERR_INVALID,
               "activation_checkpointing: expected an object", NULL);
}

/* The legacy curriculum_learning block: DeepSpeed's CurriculumScheduler, step by step against
 * tests/fixtures/curriculum.tsv (scripts/make-curriculum-fixture.py restates it in Python) */
Test(features, curriculum_schedules_follow_deepspeeds)
{
    FILE *f = fopen(DS_TEST_DIR "/fixtures/curriculum.tsv", "r");
    cr_assert(f, "tests/fixtures/curriculum.tsv is missing");
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        cr_assert(tab, "a line without a tab");
        *tab = 0;
        char json[4200];
        snprintf(json, sizeof json, "{\"train_batch_size\": 8, \"curriculum_learning\": %s}", line);
        ds_config c;
        ds_error e;
        cr_assert_eq(load(&c, json, 1, 1, 0, &e), DS_OK, "%s\n%s", json, e.msg);
        cr_expect(c.curriculum.enabled);
        int64_t cur = c.curriculum.min_difficulty;
        char *p = tab + 1;
        for (int step = 1; *p && *p != '\n'; step++) {
            char *end;
            long long want = strtoll(p, &end, 10);
            cr_assert(end != p, "%s: unreadable at step %d", line, step);
            p = end;
            cur = ds_curriculum_update(&c.curriculum, cur, step);
            cr_expect_eq(cur, want, "%s: step %d: %lld, DeepSpeed's %lld", line, step, (long long)cur, want);
        }
        ds_config_free(&c);
        n++;
    }
    fclose(f);
    cr_expect_eq(n, 6, "%d configs in the fixture", n);
}

Test(features, curriculum_learning_errors)
{
    ds_config c;
    ds_error e;
#define CL(rest) TB8("\"curriculum_learning\": {\"enabled\": true, " rest "}")
#define CL_OK_HEAD "\"curriculum_type\": \"seqlen\", \"min_difficulty\": 8, \"max_difficulty\": 64, "
    /* disabled: not read, as in DeepSpeed */
    cr_assert_eq(load(&c, TB8("\"curriculum_learning\": {\"enabled\": false, \"schedule_type\": 3}"), 1, 1, 0, &e),
                 DS_OK, "%s", e.msg);
    cr_expect(!c.curriculum.enabled);
    ds_config_free(&c);
    load_fails(CL("\"min_difficulty\": 8"), 1, 0, DS_ERR_INVALID,
               "ds.json: curriculum_learning.curriculum_type: missing (expected \"seqlen\")", NULL);
    load_fails(CL("\"curriculum_type\": \"vocab\""), 1, 0, DS_ERR_UNSUPPORTED,
               "curriculum_learning.curriculum_type=vocab is not supported yet", NULL);
    load_fails(CL("\"curriculum_type\": \"seqlen\", \"max_difficulty\": 64"), 1, 0, DS_ERR_INVALID,
               "curriculum_learning.min_difficulty: missing (DeepSpeed's CurriculumScheduler requires it)", NULL);
    load_fails(CL("\"curriculum_type\": \"seqlen\", \"min_difficulty\": 0, \"max_difficulty\": 64"), 1, 0,
               DS_ERR_INVALID, "curriculum_learning.min_difficulty: expected an integer >= 1, found 0", NULL);
    load_fails(CL("\"curriculum_type\": \"seqlen\", \"min_difficulty\": 64, \"max_difficulty\": 8"), 1, 0,
               DS_ERR_INVALID, "curriculum_learning.max_difficulty: expected at least min_difficulty (64), found 8",
               NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_cubic\", \"schedule_config\": {}"), 1, 0, DS_ERR_INVALID,
               "curriculum_learning.schedule_type: expected \"fixed_linear\", \"fixed_root\" or \"fixed_discrete\", "
               "found \"fixed_cubic\"", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"custom\", \"schedule_config\": {}"), 1, 0, DS_ERR_UNSUPPORTED,
               "curriculum_learning.schedule_type=custom is not supported yet", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_linear\", \"schedule_config\": {\"total_curriculum_step\": 10, "
                  "\"difficulty_step\": 8, \"extra\": 1}"), 1, 0, DS_ERR_INVALID,
               "curriculum_learning.schedule_config: unknown key \"extra\" for fixed_linear (expected "
               "total_curriculum_step, difficulty_step)", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_linear\""), 1, 0, DS_ERR_INVALID,
               "curriculum_learning.schedule_config: missing (the fixed_linear schedule's settings)", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_linear\", \"schedule_config\": {\"total_curriculum_step\": 10}"),
               1, 0, DS_ERR_INVALID, "curriculum_learning.schedule_config.difficulty_step: missing", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_root\", \"schedule_config\": {\"total_curriculum_step\": 10, "
                  "\"difficulty_step\": 8}"),
               1, 0, DS_ERR_INVALID, "curriculum_learning.schedule_config.root_degree: missing (fixed_root requires it)",
               NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_discrete\", \"schedule_config\": {\"difficulty\": [8, 16], "
                  "\"max_step\": [5, 9]}"),
               1, 0, DS_ERR_INVALID, "curriculum_learning.schedule_config: max_step has 2 entries and difficulty 2", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_discrete\", \"schedule_config\": {\"difficulty\": [8, \"x\"], "
                  "\"max_step\": [5]}"),
               1, 0, DS_ERR_INVALID, "curriculum_learning.schedule_config.difficulty[1]: expected an integer", NULL);
    load_fails(CL(CL_OK_HEAD "\"schedule_type\": \"fixed_linear\", \"schedule_config\": {\"total_curriculum_step\": 10, "
                  "\"difficulty_step\": 8}, \"difficulty_type\": \"value\""),
               1, 0, DS_ERR_INVALID, "curriculum_learning: unknown key \"difficulty_type\"", NULL);
#undef CL
#undef CL_OK_HEAD
}

/* wall_clock_breakdown turns on the engine's timers (engine.md §7); it is a boolean */
Test(features, wall_clock_breakdown)
{
    ds_config c;
    ds_error e;
    cr_assert_eq(load(&c, TB8("\"wall_clock_breakdown\": true"), 1, 1, 0, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.wall_clock_breakdown, 1);
    ds_config_free(&c);
    cr_assert_eq(load(&c, TB8("\"steps_per_print\": 5"), 1, 1, 0, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.wall_clock_breakdown, 0);
    ds_config_free(&c);
    cr_assert_eq(load(&c, TB8("\"wall_clock_breakdown\": \"yes\""), 1, 1, 0, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.wall_clock_breakdown, 1, "pydantic's lax booleans, as everywhere");
    ds_config_free(&c);
    load_fails(TB8("\"wall_clock_breakdown\": \"maybe\""), 1, 0, DS_ERR_INVALID,
               "wall_clock_breakdown: expected", NULL);
}

Test(features, accepted_at_their_default_or_disabled_value)
{
    ds_config c;
    ds_error e;
    const char *json = TB8(
        "\"fp16\": {\"enabled\": \"auto\", \"loss_scale\": 0, \"initial_scale_power\": 16}, "
        "\"bf16\": {\"enabled\": false}, \"amp\": {\"enabled\": false, \"opt_level\": \"O1\"}, "
        "\"zero_optimization\": {\"stage\": 0, \"allgather_bucket_size\": 5e8, \"overlap_comm\": "
        "\"auto\", \"offload_optimizer\": {\"device\": \"none\", \"pin_memory\": true}, "
        "\"stage3_gather_fp16_weights_on_model_save\": false, \"round_robin_gradients\": true}, "
        "\"zero_allow_untested_optimizer\": true, \"wall_clock_breakdown\": false, "
        "\"prescale_gradients\": false, \"gradient_predivide_factor\": 1.0, "
        "\"communication_data_type\": \"FP32\", \"scheduler\": {}, \"aio\": {\"block_size\": 1}, "
        "\"activation_checkpointing\": {\"partition_activations\": false, \"number_checkpoints\": "
        "null}, \"tensorboard\": {\"enabled\": false}, \"checkpoint\": {\"tag_validation\": "
        "\"warn\"}, \"sequence_parallel_size\": 1");
    cr_assert_eq(load(&c, json, 1, 1, 0, &e), DS_OK, "%s", e.msg);
    cr_expect(!c.has_optimizer);
    cr_expect(has_warning(&c, "zero_optimization.stage3_gather_fp16_weights_on_model_save is "
                              "deprecated, use zero_optimization.gather_16bit_weights_on_model_save"));
    ds_config_free(&c);

    cr_assert_eq(load(&c, TB8("\"bfloat16\": {\"enabled\": false}, \"zero_optimization\": false"),
                      1, 0, 0, &e), DS_OK, "%s", e.msg);
    cr_expect(has_warning(&c, "bfloat16 is deprecated, use bf16 instead"));
    cr_expect(has_warning(&c, "zero_optimization=false is deprecated"));
    ds_config_free(&c);
}

Test(config, scalar_defaults_seed_and_stored_text)
{
    const char *json = "{\"train_batch_size\": 8}";
    ds_config c;
    load_ok(&c, json, 1);
    cr_expect_eq(c.steps_per_print, 0);
    cr_expect_float_eq(c.gradient_clipping, 0.0, 0.0);
    cr_expect_eq(c.seed_set, 0);
    cr_expect_eq(c.has_optimizer, 0);
    cr_expect_eq(c.n_warnings, 0);
    cr_expect_str_eq(c.source_name, "ds.json");
    cr_expect_str_eq(c.json_text, json);
    ds_config_free(&c);
    cr_expect_null(c.source_name);
    cr_expect_null(c.json_text);

    load_ok(&c, TB8("\"seed\": 18446744073709551615, \"steps_per_print\": 10, "
                    "\"gradient_clipping\": 1"), 1);
    cr_expect_eq(c.seed_set, 1);
    cr_expect_eq(c.seed, UINT64_MAX);
    cr_expect_eq(c.steps_per_print, 10);
    cr_expect_float_eq(c.gradient_clipping, 1.0, 0.0);
    cr_expect_str_eq(c.device, "");
    ds_config_free(&c);
    load_ok(&c, TB8("\"device\": \"cuda:1\""), 1); /* ds's own key: no warning */
    cr_expect_str_eq(c.device, "cuda:1");
    cr_expect_eq(c.n_warnings, 0);
    ds_config_free(&c);

    ds_config_hints h = {.micro_batch = 8};
    load_ok(&c, TB8("\"gradient_clipping\": \"auto\", \"steps_per_print\": null"), 1);
    cr_expect(has_warning(&c, "gradient_clipping is \"auto\": using the default 0"));
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": \"auto\"}"), 1);
    cr_expect_eq(c.zero.stage, 0);
    cr_expect(has_warning(&c, "zero_optimization.stage is \"auto\": using the default 0 (no ZeRO)"));
    ds_config_free(&c);

    ds_error e;
    cr_expect_eq(ds_config_load_string(&c, json, "ds.json", 0, 0, &h, &e), DS_ERR_INVALID);
    cr_expect(strstr(e.msg, "world_size"));
    cr_expect_eq(ds_config_load_file(&c, CONFIG_DIR "/no-such.json", 1, 0, &h, &e), DS_ERR_IO);
    cr_expect(strstr(e.msg, "no-such.json"));
    ds_config_free(NULL);
}

/* ---- the 58 real configs --------------------------------------------------------------------- */

/* What each real config gives today (world size 1, hint micro batch 8): DS_OK or the first
 * words of the message after the file name. Update this table as features get built. */
static const struct {
    const char *file;
    ds_status st;
    const char *msg;
} REAL[] = {
    {"alpaca__default_offload_opt_param.json", DS_OK, NULL},
    {"bmds-tests__ds_config.json", DS_OK, NULL},
    {"bmds-tests__ds_config_bf16.json", DS_OK, NULL},
    {"bmds-tests__ds_config_cl.json", DS_OK, NULL},
    {"chatglm6b__deepspeed.json", DS_OK, NULL},
    {"ds-docs__autotuning_block2.json", DS_ERR_UNSUPPORTED,
     "autotuning.enabled=true is not supported yet"},
    {"ds-docs__getting-started_block5.json", DS_OK, NULL},
    {"ds-tests-gpt2__ds_config_func_bs8_zero0_gas3.json", DS_OK, NULL},
    {"ds-tests-gpt2__ds_config_func_bs8_zero2_offload.json", DS_OK, NULL},
    {"ds-tests-gpt2__ds_config_func_scheduler.json", DS_OK, NULL},
    {"ds-tests-gpt2__ds_config_perf_bs16.json", DS_OK, NULL},
    {"ds-tests-hybrid_engine__hybrid_engine_config.json", DS_OK, NULL},
    {"ds-tests-squad__deepspeed_bsz24_fp16_eigenvalue_quantize_config.json", DS_ERR_UNSUPPORTED,
     "eigenvalue.enabled=true is not supported yet"},
    {"ds-tests-torch_compile__ds_config_z3.json", DS_OK, NULL},
    {"ds-tests-torch_compile__ds_config_z3_deepcompile_no_persist.json", DS_ERR_UNSUPPORTED,
     "compile.deepcompile=true is not supported yet"},
    {"ds-tests-unit__ds_batch_config.json", DS_OK, NULL},
    {"dse-BingBertSquad__deepspeed_onebitadam_bsz96_config.json", DS_ERR_UNSUPPORTED,
     "optimizer.type=OnebitAdam is not supported yet"},
    {"dse-MoQ__test.json", DS_ERR_UNSUPPORTED,
     "quantize_training.enabled=true is not supported yet"},
    {"dse-alpaca-lora-zero3__ds_config.json", DS_OK, NULL},
    {"dse-autosp__autosp_config.json", DS_ERR_UNSUPPORTED,
     "compile.deepcompile=true is not supported yet"},
    {"dse-autotuning__ds_config.json", DS_ERR_INVALID,
     "train_micro_batch_size_per_gpu: expected an integer, found [8]"},
    {"dse-bf16_master_weight__bf16_full.json", DS_ERR_UNSUPPORTED,
     "bf16.bf16_master_weights_and_grads=true is not supported yet"},
    {"dse-bing_bert__deepspeed_bsz4k_01adam_config_seq128_nccl.json", DS_ERR_UNSUPPORTED,
     "optimizer.type=ZeroOneAdam is not supported yet"},
    {"dse-bing_bert__deepspeed_bsz4k_progressive_layer_drop_config_seq128.json", DS_OK, NULL},
    {"dse-bing_bert__deepspeed_bsz64k_lamb_config_seq128.json", DS_ERR_UNSUPPORTED,
     "sparse_attention is not supported yet"},
    {"dse-bing_bert__deepspeed_bsz64k_onebitlamb_config_seq128_nccl.json", DS_ERR_UNSUPPORTED,
     "optimizer.type=OneBitLamb is not supported yet"},
    {"dse-cifar__ds_config.json", DS_OK, NULL},
    {"dse-compression-bert__ds_config_layer_reduction_fp16.json", DS_ERR_UNSUPPORTED,
     "compression_training is not supported yet"},
    {"dse-data_efficiency__ds_config_gpt_base_random_ltd.json", DS_ERR_UNSUPPORTED,
     "data_efficiency.enabled=true is not supported yet"},
    {"dse-hf-transformers__ds_config.json", DS_OK, NULL},
    {"dse-imagenet__ds_fp16_z1_config.json", DS_OK, NULL},
    {"dse-inference-hf__ds_config_nvme.json", DS_ERR_INVALID,
     "zero_optimization.stage3_max_reuse_distance: expected an integer >= 0, found -1"},
    {"dse-megatron-zero3__ds_zero_stage_3_config.json", DS_OK, NULL},
    {"dse-megatron-zero3__ds_zero_stage_infinity_config.json", DS_ERR_INVALID,
     "zero_optimization: unknown key \"stage3_param_persitence_threshold\""},
    {"dse-megatron__ds_zero-offload_10B_config.json", DS_OK, NULL},
    {"dse-megatron__ds_zero2_config.json", DS_OK, NULL},
    {"dse-pipeline_parallelism__ds_config.json", DS_OK, NULL},
    {"dse-qanet__ds_bsz512_1cycle.json", DS_OK, NULL},
    {"dse-tensor_parallel__ds_config.json", DS_ERR_UNSUPPORTED,
     "tensor_parallel.autotp_size=4 is not supported yet"},
    {"dse-zenflow__zf_config.json", DS_ERR_UNSUPPORTED,
     "zero_optimization.zenflow is not supported yet"},
    {"fastchat__deepspeed_config_s2.json", DS_OK, NULL},
    {"fastchat__deepspeed_config_s3.json", DS_OK, NULL},
    {"hf-accelerate-examples__sp-alst.ds-config.json", DS_OK, NULL},
    {"hf-accelerate-templates__zero_stage3_offload_config.json", DS_OK, NULL},
    {"hf-accelerate-tests__ds_config_zero3_model_only.json", DS_OK, NULL},
    {"hf-transformers__ds_config_zero2.json", DS_OK, NULL},
    {"hf-transformers__ds_config_zero3.json", DS_OK, NULL},
    {"hf-transformers__ds_config_zero3_bf16.json", DS_OK, NULL},
    {"llamafactory__ds_z0_config.json", DS_OK, NULL},
    {"llamafactory__ds_z2_autotp_config.json", DS_ERR_UNSUPPORTED,
     "tensor_parallel.autotp_size=2 is not supported yet"},
    {"llamafactory__ds_z3_fp8_config.json", DS_OK, NULL},
    {"llamafactory__ds_z3_offload_config.json", DS_OK, NULL},
    {"llava__zero3_offload.json", DS_OK, NULL},
    {"mmds-finetune_hf_llama__ds_config_empty.json", DS_OK, NULL},
    {"mmds-universal_checkpointing__ds_config.json", DS_OK, NULL},
    {"openassistant__deepspeed_rl.json", DS_OK, NULL},
    {"openassistant__zero3_config_sft.json", DS_ERR_INVALID,
     "scheduler.params.total_num_steps: missing: WarmupDecayLR needs the number of optimizer steps"},
    {"qwen__ds_config_zero2.json", DS_OK, NULL},
};
#define N_REAL (sizeof REAL / sizeof REAL[0])

/* Does msg name one of the config's top-level keys (or a batch key, for batch errors)? */
static int names_a_key(const char *path, const char *msg)
{
    json_object *root = json_object_from_file(path);
    int found = strstr(msg, "train_batch_size") || strstr(msg, "train_micro_batch_size_per_gpu");
    if (root && json_object_is_type(root, json_type_object)) {
        json_object_object_foreach(root, key, val) {
            (void)val;
            found = found || strstr(msg, key) != NULL;
        }
    }
    json_object_put(root);
    return found;
}

Test(real_configs, all_58_load_or_are_refused_naming_a_key)
{
    size_t seen = 0;
    DIR *d = opendir(CONFIG_DIR);
    cr_assert(d, "cannot open %s", CONFIG_DIR);
    for (struct dirent *de; (de = readdir(d));) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        seen++;
        size_t i = 0;
        while (i < N_REAL && strcmp(REAL[i].file, de->d_name) != 0)
            i++;
        cr_expect(i < N_REAL, "%s is not in the table of expected outcomes", de->d_name);
        char path[512];
        snprintf(path, sizeof path, "%s/%s", CONFIG_DIR, de->d_name);
        ds_config c;
        ds_error e = {0};
        ds_config_hints h = {.micro_batch = 8};
        ds_status st = ds_config_load_file(&c, path, 1, 0, &h, &e);
        if (st == DS_OK) {
            cr_expect_str_eq(c.source_name, path);
            cr_expect(c.json_text && c.json_text[0]);
            cr_expect(c.train_batch_size == c.micro_batch * c.grad_accum);
            ds_config_free(&c);
        } else {
            cr_expect(st == DS_ERR_UNSUPPORTED || st == DS_ERR_INVALID, "%s: status %d", path, st);
            cr_expect(strstr(e.msg, de->d_name), "%s: message lacks the file name: %s", path,
                      e.msg);
            cr_expect(names_a_key(path, e.msg), "%s: message names no key: %s", path, e.msg);
        }
        if (i < N_REAL) {
            cr_expect_eq(st, REAL[i].st, "%s: status %d, expected %d (%s)", de->d_name, st,
                         REAL[i].st, e.msg);
            cr_expect(!REAL[i].msg || strstr(e.msg, REAL[i].msg), "%s: \"%s\" lacks \"%s\"",
                      de->d_name, e.msg, REAL[i].msg);
        }
    }
    closedir(d);
    cr_expect_eq(seen, 58, "found %zu configs in %s", seen, CONFIG_DIR);
}

Test(real_configs, specific_outcomes)
{
    ds_config c;
    ds_error e;
    ds_config_hints h = {.micro_batch = 8};
    /* fp32, no optimizer block: TB 256, MB 16 -> GAS 16 */
    cr_assert_eq(ds_config_load_file(&c, CONFIG_DIR "/mmds-finetune_hf_llama__ds_config_empty.json",
                                     1, 1, NULL, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.grad_accum, 16);
    cr_expect_eq(c.steps_per_print, 100);
    ds_config_free(&c);
    /* fp32 Adam (leading space, spaces before colons): AdamW mode, GAS 256 / 8 / 2 = 16 at W=2 */
    cr_assert_eq(ds_config_load_file(&c, CONFIG_DIR "/dse-pipeline_parallelism__ds_config.json", 2,
                                     1, NULL, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_ADAM);
    cr_expect_eq(c.optimizer.adam_w_mode, 1);
    cr_expect_eq(c.grad_accum, 16);
    ds_config_free(&c);
    /* HF/LLaMA-Factory "auto" everywhere: loads with a hint, else names the auto keys */
    cr_assert_eq(ds_config_load_file(&c, CONFIG_DIR "/llamafactory__ds_z0_config.json", 4, 1, &h,
                                     &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.train_batch_size, 32);
    cr_expect(has_warning(&c, "using 8 supplied by the caller"));
    ds_config_free(&c);
    cr_expect_eq(ds_config_load_file(&c, CONFIG_DIR "/llamafactory__ds_z0_config.json", 1, 0, NULL,
                                     &e), DS_ERR_INVALID);
    cr_expect(strstr(e.msg, "train_micro_batch_size_per_gpu is \"auto\""), "%s", e.msg);
    /* llamafactory with "_comment" and strict: a comment is not an unknown key */
    cr_expect_eq(ds_config_load_file(&c, CONFIG_DIR "/llamafactory__ds_z2_autotp_config.json", 1, 1,
                                     &h, &e), DS_ERR_UNSUPPORTED);
    cr_expect(strstr(e.msg, "tensor_parallel.autotp_size=2 is not supported yet"), "%s", e.msg);
    /* Megatron's ZeRO-2 config: stage 2 and its activation checkpointing settings */
    cr_assert_eq(ds_config_load_file(&c, CONFIG_DIR "/dse-megatron__ds_zero2_config.json", 1, 0, &h,
                                     &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.zero.stage, 2);
    cr_expect(c.actckpt.given && c.actckpt.partition_activations && !c.actckpt.contiguous);
    ds_config_free(&c);
    /* the legacy boolean zero_optimization: stage 1, with a warning */
    cr_assert_eq(ds_config_load_file(&c, CONFIG_DIR "/ds-docs__getting-started_block5.json", 1, 0,
                                     &h, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(c.zero.stage, 1);
    cr_expect(has_warning(&c, "zero_optimization=true is deprecated"));
    ds_config_free(&c);
    /* unknown top-level key: a warning, an error with strict */
    cr_expect_eq(ds_config_load_file(&c, CONFIG_DIR "/dse-imagenet__ds_fp16_z1_config.json", 1, 1,
                                     &h, &e), DS_ERR_INVALID);
    cr_expect(strstr(e.msg, "unknown key \"cuda_visible_devices\""), "%s", e.msg);
}

/* ---- fp16 / bf16 and the optimizers of the mixed-precision issue ------------------------- */

Test(zero, disable_allgather)
{
    ds_config c;
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 1}, \"disable_allgather\": true"), 1);
    cr_expect_eq(c.zero.allgather_partitions, 0, "disable_allgather: the broadcasts of allgather_partitions false");
    ds_config_free(&c);
    /* whichever comes first in the file, and whatever the zero block says */
    load_ok(&c, TB8("\"disable_allgather\": true, \"zero_optimization\": {\"stage\": 1, \"allgather_partitions\": true}"), 1);
    cr_expect_eq(c.zero.allgather_partitions, 0);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 1}, \"disable_allgather\": false"), 1);
    cr_expect_eq(c.zero.allgather_partitions, 1);
    ds_config_free(&c);
    load_fails(TB8("\"disable_allgather\": \"maybe\""), 1, 0, DS_ERR_INVALID, "ds.json: disable_allgather: expected",
               NULL);
}

Test(precision, fp16_auto_cast)
{
    ds_config c;
    load_ok(&c, TB8("\"fp16\": {\"enabled\": true, \"auto_cast\": true}"), 1);
    cr_expect_eq(c.precision, DS_PREC_FP16);
    cr_expect_eq(c.fp16_auto_cast, 1);
    ds_config_free(&c);
    load_ok(&c, TB8("\"fp16\": {\"enabled\": true, \"auto_cast\": false}"), 1);
    cr_expect_eq(c.fp16_auto_cast, 0);
    ds_config_free(&c);
    load_ok(&c, TB8("\"fp16\": {\"enabled\": true}"), 1);
    cr_expect_eq(c.fp16_auto_cast, 0, "DeepSpeed's default is false");
    ds_config_free(&c);
    load_fails(TB8("\"fp16\": {\"enabled\": true, \"auto_cast\": 2}"), 1, 0, DS_ERR_INVALID,
               "ds.json: fp16.auto_cast: expected", NULL);
}

Test(precision, fp16_keys_and_defaults)
{
    ds_config c;
    load_ok(&c, TB8("\"fp16\": {\"enabled\": true}"), 1);
    cr_expect_eq(c.precision, DS_PREC_FP16);
    /* DECISIONS.md: these defaults whether or not the block names a scaling key */
    cr_expect_eq(c.fp16.loss_scale, 0);
    cr_expect_eq(c.fp16.initial_scale_power, 16);
    cr_expect_eq(c.fp16.loss_scale_window, 1000);
    cr_expect_eq(c.fp16.hysteresis, 2);
    cr_expect_eq(c.fp16.consecutive_hysteresis, 0);
    cr_expect_eq(c.fp16.min_loss_scale, 1);
    ds_config_free(&c);
    load_ok(&c, TB8("\"fp16\": {\"enabled\": true, \"loss_scale\": 128, \"initial_scale_power\": 12, "
                    "\"loss_scale_window\": 500, \"hysteresis\": 4, \"consecutive_hysteresis\": true, "
                    "\"min_loss_scale\": 0.25, \"fp16_master_weights_and_grads\": false}"), 1);
    cr_expect_eq(c.fp16.loss_scale, 128);
    cr_expect_eq(c.fp16.initial_scale_power, 12);
    cr_expect_eq(c.fp16.loss_scale_window, 500);
    cr_expect_eq(c.fp16.hysteresis, 4);
    cr_expect_eq(c.fp16.consecutive_hysteresis, 1);
    cr_expect_eq(c.fp16.min_loss_scale, 0.25);
    ds_config_free(&c);
    load_ok(&c, TB8("\"fp16\": {\"enabled\": true, \"initial_scale_power\": -2}"), 1); /* 2**-2, as DeepSpeed */
    cr_expect_eq(c.fp16.initial_scale_power, -2);
    ds_config_free(&c);
    load_ok(&c, TB8("\"fp16\": {\"enabled\": false, \"loss_scale\": 0}"), 1);
    cr_expect_eq(c.precision, DS_PREC_FP32);
    ds_config_free(&c);
    load_ok(&c, TB8("\"bfloat16\": {\"enabled\": true}"), 1);
    cr_expect_eq(c.precision, DS_PREC_BF16);
    cr_expect(has_warning(&c, "bfloat16 is deprecated, use bf16 instead"));
    ds_config_free(&c);
    load_ok(&c, TB8("\"bf16\": {\"enabled\": true, \"immediate_grad_update\": true, \"check_grad_overflow\": true}"), 1);
    cr_expect_eq(c.precision, DS_PREC_BF16);
    cr_expect_eq(c.bf16_check_overflow, 1);
    ds_config_free(&c);
}

Test(precision, bad_values_name_the_key)
{
    load_fails(TB8("\"fp16\": {\"enabled\": true}, \"bf16\": {\"enabled\": true}"), 1, 0, DS_ERR_INVALID,
               "bfloat16 and fp16 modes cannot be simultaneously enabled", NULL);
    load_fails(TB8("\"fp16\": {\"loss_scale\": -1}"), 1, 0, DS_ERR_INVALID,
               "ds.json: fp16.loss_scale: expected 0 (dynamic scaling) or a number in [1.2e-38, 3.4e38]", "found -1");
    /* the engine scales in fp32: scales that round to 0 or inf there are refused, not trained with */
    load_fails(TB8("\"fp16\": {\"enabled\": true, \"loss_scale\": 1e-50}"), 1, 0, DS_ERR_INVALID,
               "fp16.loss_scale: expected 0 (dynamic scaling) or a number in", "found 1e-50");
    load_fails(TB8("\"fp16\": {\"enabled\": true, \"loss_scale\": 1e300}"), 1, 0, DS_ERR_INVALID,
               "fp16.loss_scale: expected 0 (dynamic scaling) or a number in", "found 1e300");
    load_fails(TB8("\"fp16\": {\"enabled\": true, \"min_loss_scale\": 1e-300}"), 1, 0, DS_ERR_INVALID,
               "fp16.min_loss_scale: expected a number in [1.2e-38, 3.4e38]", NULL);
    load_fails(TB8("\"fp16\": {\"initial_scale_power\": 200}"), 1, 0, DS_ERR_INVALID,
               "fp16.initial_scale_power: expected an integer in [-100, 100], found 200", NULL);
    load_fails(TB8("\"fp16\": {\"loss_scale_window\": 0}"), 1, 0, DS_ERR_INVALID,
               "fp16.loss_scale_window: expected an integer in [1,", NULL);
    load_fails(TB8("\"fp16\": {\"hysteresis\": 0.5}"), 1, 0, DS_ERR_INVALID,
               "fp16.hysteresis: expected an integer, found 0.5", NULL);
    load_fails(TB8("\"fp16\": {\"min_loss_scale\": 0}"), 1, 0, DS_ERR_INVALID,
               "fp16.min_loss_scale: expected a number in [1.2e-38, 3.4e38] (fp32's normal range), found 0", NULL);
    load_fails(TB8("\"fp16\": {\"consecutive_hysteresis\": \"sometimes\"}"), 1, 0, DS_ERR_INVALID,
               "fp16.consecutive_hysteresis: expected a boolean", NULL);
    load_fails(TB8("\"fp16\": {\"initial_scale\": 16}"), 1, 0, DS_ERR_INVALID,
               "fp16: unknown key \"initial_scale\" (did you mean \"initial_scale_power\"?)", NULL);
    /* fp16's loss scaler keys in bf16: type-checked, a warning that they do nothing */
    ds_config c;
    load_ok(&c, TB8("\"bf16\": {\"enabled\": true, \"loss_scale\": 0, \"consecutive_hysteresis\": false}"), 1);
    cr_expect(has_warning(&c, "bf16.loss_scale has no effect: bf16 trains without loss scaling"));
    cr_expect(has_warning(&c, "bf16.consecutive_hysteresis has no effect"));
    ds_config_free(&c);
    load_fails(TB8("\"bf16\": {\"loss_scale\": \"big\"}"), 1, 0, DS_ERR_INVALID,
               "bf16.loss_scale: expected a number", NULL);
    load_fails(TB8("\"bf16\": {\"loss_scales\": 1}"), 1, 0, DS_ERR_INVALID,
               "bf16: unknown key \"loss_scales\"", NULL);
    load_ok(&c, TB8("\"seq_parallel_communication_data_type\": \"bf16\""), 1);
    cr_expect(has_warning(&c, "seq_parallel_communication_data_type=bf16 has no effect"));
    ds_config_free(&c);
    load_fails(TB8("\"fp16\": [true]"), 1, 0, DS_ERR_INVALID, "fp16: expected an object", NULL);
}

Test(optimizer, lamb_and_adagrad)
{
    ds_config c;
    load_ok(&c, OPT("Lamb", "\"lr\": 11e-3, \"betas\": [0.8, 0.9], \"eps\": 1e-6, \"weight_decay\": 0.01, "
                    "\"bias_correction\": false, \"max_coeff\": 5, \"min_coeff\": 0.1, \"eps_inside_sqrt\": true"), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_LAMB);
    cr_expect_eq(c.optimizer.lr, 11e-3);
    cr_expect_eq(c.optimizer.beta1, 0.8);
    cr_expect_eq(c.optimizer.max_coeff, 5);
    cr_expect_eq(c.optimizer.min_coeff, 0.1);
    cr_expect_eq(c.optimizer.eps_inside_sqrt, 1);
    cr_expect_eq(c.optimizer.bias_correction, 0);
    ds_config_free(&c);
    load_ok(&c, OPT("lamb", ""), 1); /* DeepSpeed lower-cases its own names */
    cr_expect_eq(c.optimizer.type, DS_OPTIM_LAMB);
    cr_expect_eq(c.optimizer.max_coeff, 10);
    cr_expect_eq(c.optimizer.min_coeff, 0.01);
    ds_config_free(&c);
    load_ok(&c, OPT("Adagrad", "\"lr_decay\": 0.01, \"initial_accumulator_value\": 0.1"), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_ADAGRAD);
    cr_expect_eq(c.optimizer.lr, 1e-2); /* torch's default */
    cr_expect_eq(c.optimizer.eps, 1e-10);
    cr_expect_eq(c.optimizer.lr_decay, 0.01);
    cr_expect_eq(c.optimizer.initial_accumulator_value, 0.1);
    ds_config_free(&c);
    load_fails(OPT("Lamb", "\"min_coeff\": 2, \"max_coeff\": 1"), 1, 0, DS_ERR_INVALID,
               "optimizer.params.min_coeff: 2 is above max_coeff 1", NULL);
    load_fails(OPT("Lamb", "\"momentum\": 0.9"), 1, 0, DS_ERR_INVALID,
               "optimizer.params: unknown key \"momentum\" for Lamb", NULL);
    load_fails(OPT("Adagrad", "\"betas\": [0.9, 0.99]"), 1, 0, DS_ERR_INVALID,
               "optimizer.params: unknown key \"betas\" for Adagrad", NULL);
    load_fails(OPT("Adagrad", "\"maximize\": true"), 1, 0, DS_ERR_UNSUPPORTED,
               "optimizer.params.maximize=true is not supported yet", NULL);
    load_fails(OPT("SGD", "\"lr\": 0.1, \"maximize\": true"), 1, 0, DS_ERR_UNSUPPORTED,
               "optimizer.params.maximize=true is not supported yet", NULL);
    load_ok(&c, OPT("SGD", "\"lr\": 0.1, \"maximize\": false, \"foreach\": true, \"differentiable\": false"), 1);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_SGD);
    ds_config_free(&c);
    load_fails(OPT("MyOpt", "\"lr\": 0.1"), 1, 0, DS_ERR_INVALID,
               "optimizer.type: \"MyOpt\" is not a supported DeepSpeed optimizer", NULL);
}

Test(optimizer, user_names_come_from_the_client)
{
    ds_config c;
    ds_error e = {0};
    const char *names[] = {"MyOpt"};
    ds_config_hints h = {.micro_batch = 8, .user_optimizers = names, .n_user_optimizers = 1};
    cr_assert_eq(ds_config_load_string(&c, OPT("MyOpt", "\"lr\": 0.1, \"rho\": [1, 2]"), "ds.json", 1, 0, &h, &e),
                 DS_OK, "%s", e.msg);
    cr_expect_eq(c.optimizer.type, DS_OPTIM_USER);
    cr_expect_eq(c.optimizer.lr, 0.1);
    cr_expect_str_eq(c.optimizer.name, "MyOpt");
    cr_expect(strstr(c.optimizer.params_json, "\"rho\""), "%s", c.optimizer.params_json);
    ds_config_free(&c);
    /* exact names: "myopt" is not MyOpt */
    cr_expect_eq(ds_config_load_string(&c, OPT("myopt", ""), "ds.json", 1, 0, &h, &e), DS_ERR_INVALID);
}

Test(zero, stages_and_buckets)
{
    ds_config c;
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 2, \"reduce_bucket_size\": 5e6, \"allgather_bucket_size\": \"2e6\", "
                    "\"reduce_scatter\": false, \"allgather_partitions\": false, \"contiguous_gradients\": true, "
                    "\"overlap_comm\": true}"), 1);
    cr_expect_eq(c.zero.stage, 2);
    cr_expect_eq(c.zero.overlap_comm, 1);
    cr_expect_eq(c.zero.reduce_bucket_size, 5000000);
    cr_expect_eq(c.zero.allgather_bucket_size, 2000000);
    cr_expect_eq(c.zero.reduce_scatter, 0);
    cr_expect_eq(c.zero.allgather_partitions, 0);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": {\"stage\": 1}"), 1);
    cr_expect_eq(c.zero.stage, 1);
    cr_expect_eq(c.zero.reduce_bucket_size, 500000000); /* DeepSpeed's defaults */
    cr_expect_eq(c.zero.allgather_bucket_size, 500000000);
    cr_expect_eq(c.zero.reduce_scatter, 1);
    ds_config_free(&c);
    load_ok(&c, TB8("\"zero_optimization\": true"), 1); /* the old form of stage 1 */
    cr_expect_eq(c.zero.stage, 1);
    cr_expect(has_warning(&c, "zero_optimization=true is deprecated"));
    ds_config_free(&c);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 2, \"reduce_bucket_size\": 0}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.reduce_bucket_size: expected an integer >= 1 (elements), found 0", NULL);
    load_fails(TB8("\"zero_optimization\": {\"stage\": 4}"), 1, 0, DS_ERR_INVALID,
               "zero_optimization.stage: expected 0, 1, 2 or 3, found 4", NULL);
}

Test(zero, partition_rule)
{
    int64_t b, e, prev = 0;
    for (int r = 0; r < 3; r++) { /* 1000 elements, 3 ranks: padded to 1008, P = 336 */
        ds_zero_partition(1000, 3, r, &b, &e);
        cr_expect_eq(b, prev);
        cr_expect_eq(e, r < 2 ? 336 * (r + 1) : 1000);
        prev = e;
    }
    ds_zero_partition(10, 4, 3, &b, &e); /* 10 elements, 4 ranks: P = 16, ranks 1-3 own nothing */
    cr_expect_eq(b, 10);
    cr_expect_eq(e, 10);
    ds_zero_partition(10, 4, 0, &b, &e);
    cr_expect_eq(e, 10);
}
