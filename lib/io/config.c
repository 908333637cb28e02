/* ds_config loader: reads a DeepSpeed ds_config.json with DeepSpeed's batch-size inference and
 * checks, "auto" values and old spellings, and refuses, naming the key, every feature that is
 * not built yet. Reference: spec/engine.md §1 (DeepSpeed 0.16.5 runtime/config.py). */
#include "ds/config.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_util.h"
#include "optim/sched_parse.h"

/* How a key was given: missing (or null: DeepSpeed's get_scalar_param returns None for both),
 * "auto" (infer it or use the default), or a value. */
typedef enum { V_ABSENT, V_AUTO, V_SET } vstate;

enum { TB, MB, GAS }; /* the three batch keys, in DeepSpeed's order */
static const char *const BATCH_KEYS[3] = {"train_batch_size", "train_micro_batch_size_per_gpu",
                                          "gradient_accumulation_steps"};

typedef struct rd {
    ds_config *cfg;
    const char *name; /* the file name, first in every message */
    ds_error *err;
    int strict;
    vstate bstate[3];
    int64_t bval[3];
    const ds_config_hints *hints;   /* client-registered optimizer names, may be NULL */
    int fp16_on, bf16_on;           /* fp16.enabled / bf16.enabled were true */
    int no_allgather;               /* disable_allgather was true */
    int skip_bfloat16;              /* bf16 is given too: DeepSpeed reads bf16 and never bfloat16 */
    json_object *accum_dtype;       /* data_types.grad_accum_dtype, checked once the precision is known */
    int accum16;                    /* it names a 16-bit type: 1 fp16, 2 bf16 (0 fp32) */
    int n_refused;                  /* features not built yet: all are reported together */
    char refused[DS_ERROR_MSG_MAX]; /* "<path>=<value> is not supported yet; ..." */
} rd;

/* What a key holds and what we do with it. Sections are tables of fields, so the rule for every
 * key DeepSpeed knows is written down in one place. */
typedef enum {
    F_ANY,    /* accepted, value not checked (knobs of a switched-off or harmless feature) */
    F_BOOL,   /* boolean, accepted */
    F_SIZE,   /* integer >= 0, accepted (DeepSpeed's pydantic size fields are ge=0) */
    F_INT,    /* integer, accepted */
    F_OFF,    /* boolean switch; true asks for a feature not built yet */
    F_ON,     /* boolean switch; false asks for a feature not built yet */
    F_STR,    /* string (or null), accepted */
    F_NULL,   /* null; any value asks for a feature not built yet */
    F_BLOCK,  /* object; a non-empty one asks for a feature not built yet */
    F_LIMIT,  /* integer >= .lo; above .lim asks for a feature not built yet */
    F_ONE,    /* number in [0, 1]; anything but 1 asks for a feature not built yet */
    F_DTYPE,  /* data type name; fp32 is what we do, fp16/bf16 are not built yet */
    F_DEVICE, /* offload device: "none", or "cpu"/"nvme" (not built yet) */
    F_OFFOPT, /* offload_optimizer.device: "none"; "cpu" (recorded: the engine accepts it where the
                 optimizer already runs in host memory); "nvme" (not built yet) */
    F_CPUOFF, /* cpu_offload (deprecated): true = offload_optimizer.device "cpu" */
    F_CPUOFFP, /* cpu_offload_param (deprecated): true = offload_param.device "cpu" */
    F_TAGVAL, /* checkpoint.tag_validation: Warn (what we do), Ignore, Fail */
    F_OBJ,    /* sub-section described by .sub */
    F_SKIP,   /* read by the section's own handler */
    F_BATCH, F_OPTIM, F_SCHED, F_ZERO, F_CLIP, F_STEPS, F_SEED, /* top-level keys we implement */
    F_BUCKET, /* allreduce_bucket_size: elements per gradient all-reduce (Constant Buffer Opt.) */
    F_NOAG,   /* disable_allgather: ZeRO's parameter gather by broadcasts */
    F_PRESCALE, F_PREDIV, /* prescale_gradients, gradient_predivide_factor */
    F_FP16, F_BF16, /* the fp16 and bf16 (old: bfloat16) sections */
    F_WALLCLOCK, /* wall_clock_breakdown: the engine's timers */
    F_ACTCKPT, /* the activation_checkpointing section (.sub), read into cfg->actckpt */
    F_MONITOR, /* tensorboard, csv_monitor (.sub), read into cfg->tensorboard / csv_monitor */
    F_CURRIC,  /* the legacy curriculum_learning section, read into cfg->curriculum */
    F_PLD,     /* progressive_layer_drop, read into cfg->pld */
    F_RUNDEV  /* "device" (a ds extension): the backend to train on, when no flag names one */
} fkind;

typedef struct field {
    const char *name; /* "*": any other key is accepted */
    fkind kind;
    const struct field *sub; /* F_OBJ */
    const char *use;         /* deprecated: the key that replaces it (warning) */
    int lim, lo;             /* F_LIMIT */
} field;

/* ---- messages ------------------------------------------------------------------------- */

static int ieq(const char *a, const char *b) /* ASCII case-insensitive equality */
{
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? *a + 32 : *a, y = *b >= 'A' && *b <= 'Z' ? *b + 32 : *b;
        if (x != y)
            return 0;
    }
    return *a == *b;
}

static ds_status fail(rd *r, ds_status code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ds_status fail(rd *r, ds_status code, const char *path, const char *fmt, ...)
{
    char msg[DS_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (*path)
        return ds_error_set(r->err, code, "%s: %s: %s", r->name, path, msg);
    return ds_error_set(r->err, code, "%s: %s", r->name, msg);
}

static ds_status bad_type(rd *r, const char *path, const char *expected, json_object *v)
{
    char found[96];
    ds_json_render(v, found, sizeof found);
    return fail(r, DS_ERR_INVALID, path, "expected %s, found %s", expected, found);
}

/* Note a feature that is not built yet. The walk goes on, so that one message lists them all
 * (an invalid value still stops it); load() turns the list into the error. */
static ds_status refuse(rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static ds_status refuse(rd *r, const char *fmt, ...)
{
    char item[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(item, sizeof item, fmt, ap);
    va_end(ap);
    size_t n = strlen(r->refused);
    if (n + strlen(item) + 8 < sizeof r->refused)
        snprintf(r->refused + n, sizeof r->refused - n, "%s%s", n ? "; " : "", item);
    else if (n + 6 < sizeof r->refused && strcmp(r->refused + n - 3, "...") != 0)
        snprintf(r->refused + n, sizeof r->refused - n, "; ...");
    r->n_refused++;
    return DS_ERR_UNSUPPORTED;
}

/* "<path>=<value> is not supported yet". Strings are shown bare (optimizer.type=Lamb) unless
 * they would read as another type (fp16.enabled="true"); objects are not shown. */
static ds_status unsupported(rd *r, const char *path, json_object *v)
{
    char val[96] = "";
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        int bare = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z');
        bare = bare && !ieq(s, "true") && !ieq(s, "false") && !ieq(s, "null");
        snprintf(val, sizeof val, bare ? "=%.60s" : "=\"%.60s\"", s);
    } else if (v && !json_object_is_type(v, json_type_object) &&
               !json_object_is_type(v, json_type_array)) {
        val[0] = '=';
        ds_json_render(v, val + 1, sizeof val - 1);
    }
    return refuse(r, "%s%s is not supported yet", path, val);
}

static void warn(rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(rd *r, const char *fmt, ...)
{
    ds_config *c = r->cfg;
    if (c->n_warnings >= DS_CONFIG_MAX_WARNINGS)
        return;
    char *w = c->warnings[c->n_warnings++];
    size_t size = sizeof c->warnings[0];
    if (c->n_warnings == DS_CONFIG_MAX_WARNINGS) {
        snprintf(w, size, "%s: more warnings not shown", r->name);
        return;
    }
    int n = snprintf(w, size, "%s: ", r->name);
    if (n < 0 || (size_t)n >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w + n, size - (size_t)n, fmt, ap);
    va_end(ap);
}

static const char *join(char *buf, size_t size, const char *parent, const char *key)
{
    if (snprintf(buf, size, "%s%s%s", parent, *parent ? "." : "", key) >= (int)size)
        buf[size - 1] = '\0';
    return buf;
}

/* The nearest name for "did you mean": case-insensitive edit distance, close enough to be a
 * likely typo, or a name that starts with what was written. */
static const char *nearest(const char *key, const char *cand, const char *best, int *best_d)
{
    char a[65], b[65];
    size_t la = strlen(key), lb = strlen(cand);
    if (la > 64 || lb > 64 || !strcmp(cand, "*"))
        return best;
    for (size_t i = 0; i <= la; i++)
        a[i] = key[i] >= 'A' && key[i] <= 'Z' ? key[i] + 32 : key[i];
    for (size_t i = 0; i <= lb; i++)
        b[i] = cand[i] >= 'A' && cand[i] <= 'Z' ? cand[i] + 32 : cand[i];
    int d = ds_edit_distance(a, b);
    int limit = la / 3 > 2 ? (int)(la / 3) : 2;
    if (d > limit && !(la >= 4 && strncmp(a, b, la) == 0))
        return best;
    if (d < *best_d) {
        *best_d = d;
        return cand;
    }
    return best;
}

static void suggestion(const char *key, const field *fields, char *buf, size_t size, int list)
{
    const char *best = NULL;
    int d = 1000, n = 0;
    for (const field *f = fields; f->name; f++, n++)
        best = nearest(key, f->name, best, &d);
    if (best) {
        snprintf(buf, size, " (did you mean \"%s\"?)", best);
    } else if (list && n > 0 && n <= 16) { /* a section's keys: few enough to name */
        size_t used = (size_t)snprintf(buf, size, " (expected ");
        for (const field *f = fields; f->name && used < size; f++)
            used += (size_t)snprintf(buf + used, size - used, "%s%s", f == fields ? "" : ", ", f->name);
        if (used < size)
            snprintf(buf + used, size - used, ")");
    } else {
        buf[0] = '\0';
    }
}

/* ---- typed values ------------------------------------------------------------------------ */

/* A number. As DeepSpeed's pydantic sections do, strings holding a number ("1e5") are read as
 * that number and "auto" is dropped (the default applies); we do both everywhere. */
static ds_status read_num(rd *r, const char *path, json_object *v, const char *expected, vstate *st,
                          double *out)
{
    *st = V_ABSENT;
    switch (json_object_get_type(v)) {
    case json_type_null:
        return DS_OK;
    case json_type_int:
        *out = (double)json_object_get_int64(v);
        break;
    case json_type_double:
        *out = json_object_get_double(v);
        break;
    case json_type_string: {
        const char *s = json_object_get_string(v);
        char *end;
        if (!strcmp(s, "auto")) {
            *st = V_AUTO;
            return DS_OK;
        }
        *out = strtod(s, &end);
        if (end == s || *end || *s == ' ' || *s == '\t' || strpbrk(s, "xX")) /* (no hex: Python's float() has none) */
            return bad_type(r, path, expected, v);
        break;
    }
    default:
        return bad_type(r, path, expected, v);
    }
    if (!isfinite(*out))
        return bad_type(r, path, expected, v);
    *st = V_SET;
    return DS_OK;
}

static ds_status get_num(rd *r, const char *path, json_object *v, vstate *st, double *out)
{
    return read_num(r, path, v, "a number", st, out);
}

/* An integer; 1e5 or "32" are accepted when integral (configs write sizes as 5e8). */
static ds_status get_int(rd *r, const char *path, json_object *v, vstate *st, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        *st = V_SET;
        *out = json_object_get_int64(v); /* json-c clamps 2^63.. to INT64_MAX: refuse those */
        if (*out == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX)
            return bad_type(r, path, "an integer below 2^63", v);
        return DS_OK;
    }
    if (json_object_is_type(v, json_type_string)) { /* exact for big integers, unlike strtod */
        const char *s = json_object_get_string(v);
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (end != s && !*end && *s != ' ' && *s != '\t' && errno == 0) {
            *st = V_SET;
            *out = x;
            return DS_OK;
        }
    }
    double d;
    ds_status s = read_num(r, path, v, "an integer", st, &d);
    if (s != DS_OK || *st != V_SET)
        return s;
    if (d != floor(d) || fabs(d) >= 9.2e18)
        return bad_type(r, path, "an integer", v);
    *out = (int64_t)d;
    return DS_OK;
}

/* A boolean. pydantic's lax mode (DeepSpeed's pydantic sections) also takes 0/1 and the strings
 * true/false, yes/no, on/off, t/f, y/n, 1/0 in any case; we do that everywhere. Plain-dict
 * sections in DeepSpeed use Python truthiness, where "false" would mean true: we do not copy it. */
static ds_status get_bool(rd *r, const char *path, json_object *v, vstate *st, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "t", "y", "1", NULL};
    static const char *const no[] = {"false", "no", "off", "f", "n", "0", NULL};
    *st = V_SET;
    switch (json_object_get_type(v)) {
    case json_type_null:
        *st = V_ABSENT;
        return DS_OK;
    case json_type_boolean:
        *out = json_object_get_boolean(v);
        return DS_OK;
    case json_type_int:
        if (json_object_get_int64(v) == 0 || json_object_get_int64(v) == 1) {
            *out = (int)json_object_get_int64(v);
            return DS_OK;
        }
        break;
    case json_type_string: {
        const char *s = json_object_get_string(v);
        if (!strcmp(s, "auto")) {
            *st = V_AUTO;
            return DS_OK;
        }
        for (int i = 0; yes[i]; i++)
            if (ieq(s, yes[i]) || ieq(s, no[i])) {
                *out = ieq(s, yes[i]);
                return DS_OK;
            }
        break;
    }
    default:
        break;
    }
    return bad_type(r, path, "a boolean", v);
}

/* A string; null and "auto" leave *out NULL. */
static ds_status get_str(rd *r, const char *path, json_object *v, const char **out)
{
    *out = NULL;
    if (!v)
        return DS_OK;
    if (!json_object_is_type(v, json_type_string))
        return bad_type(r, path, "a string", v);
    if (strcmp(json_object_get_string(v), "auto") != 0)
        *out = json_object_get_string(v);
    return DS_OK;
}

/* ---- sections ---------------------------------------------------------------------------- */

/* Table entries (designated, so unnamed members are zero). */
#define K(n, k) {.name = n, .kind = k}
#define OBJ(n, s) {.name = n, .kind = F_OBJ, .sub = s}
#define LIM(n, lo_, l) {.name = n, .kind = F_LIMIT, .lim = l, .lo = lo_}
#define OLD(n, k, u) {.name = n, .kind = k, .use = u}
#define N(n) {.name = n, .kind = F_ANY} /* a name only */
#define END {.name = NULL}
#define ENABLED_OPEN {K("enabled", F_OFF), N("*"), END}

/* Sections of features not built yet: only the switch is read (true is refused); the other
 * keys are checked for their names, not their values. DeepSpeed ignores unknown keys in its
 * plain-dict sections, but DECISIONS.md makes them errors everywhere below the top level;
 * sections whose keys are passed on to other code (amp to apex, ...) stay open ("*"). */
static const field OPEN_FIELDS[] = ENABLED_OPEN; /* amp, elasticity, autotuning, ... */
static const field COMPILE_FIELDS[] = {K("deepcompile", F_OFF), N("*"), END};
static const field ACTCKPT_FIELDS[] = {
    K("partition_activations", F_BOOL), K("contiguous_memory_optimization", F_BOOL),
    K("cpu_checkpointing", F_BOOL), K("number_checkpoints", F_SKIP), K("profile", F_BOOL),
    K("synchronize_checkpoint_boundary", F_BOOL), END};
static const field FLOPS_FIELDS[] = {
    K("enabled", F_OFF), N("recompute_fwd_factor"), N("profile_step"), N("module_depth"),
    N("top_modules"), N("detailed"), N("output_file"), END};
static const field MONITOR_FIELDS[] = { /* tensorboard, csv_monitor: read by read_monitor */
    K("enabled", F_BOOL), K("output_path", F_ANY), K("job_name", F_ANY), END};
static const field WANDB_FIELDS[] = {
    K("enabled", F_OFF), N("group"), N("team"), N("project"), END};
static const field COMET_FIELDS[] = {
    K("enabled", F_OFF), N("samples_log_interval"), N("project"), N("workspace"), N("api_key"),
    N("experiment_name"), N("experiment_key"), N("online"), N("mode"), END};
static const field COMMS_FIELDS[] = {
    K("enabled", F_OFF), N("prof_all"), N("prof_ops"), N("verbose"), N("debug"), END};
static const field HYBRID_FIELDS[] = {
    K("enabled", F_OFF), N("max_out_tokens"), N("inference_tp_size"),
    N("release_inference_cache"), N("pin_parameters"), N("tp_gather_partition_size"), END};
static const field PARALLEL_WRITE_FIELDS[] = {K("pipeline_stage", F_OFF), END};
static const field CKPT_FIELDS[] = {
    K("tag_validation", F_TAGVAL), K("load_universal", F_OFF), K("use_node_local_storage", F_OFF),
    OBJ("parallel_write", PARALLEL_WRITE_FIELDS), K("writer", F_NULL), END};
static const field DATA_TYPES_FIELDS[] = {K("grad_accum_dtype", F_DTYPE), END};
static const field TP_INNER_FIELDS[] = {LIM("tp_size", 1, 1), N("*"), END};
static const field TP_FIELDS[] = {
    LIM("autotp_size", 0, 1), OBJ("tensor_parallel", TP_INNER_FIELDS), OBJ("tp", TP_INNER_FIELDS),
    N("*"), END};

/* zero_optimization (pydantic DeepSpeedZeroConfig, extra="forbid"). Stages 0 to 3 are built. The
 * knobs that only tune DeepSpeed's own machinery (prefetching, sub-groups, ...) are accepted once
 * their type is right (ds-config(5) says what each does in ds), while keys that ask for a feature
 * (NVMe offload, quantized weights, ...) are refused. */
static const field OFFLOAD_PARAM_FIELDS[] = {
    K("device", F_DEVICE), K("nvme_path", F_STR), K("buffer_count", F_SIZE), K("buffer_size", F_SIZE),
    K("max_in_cpu", F_SIZE), K("pin_memory", F_BOOL), END};
static const field OFFLOAD_OPT_FIELDS[] = {
    K("device", F_OFFOPT), K("nvme_path", F_STR), K("buffer_count", F_SIZE), K("pin_memory", F_BOOL),
    K("pipeline_read", F_BOOL), K("pipeline_write", F_BOOL), K("fast_init", F_BOOL),
    {.name = "ratio", .kind = F_ONE}, END};
/* leaf_module (DeepSpeedZeroLeafModuleConfig): Python class and module names for stage 3's
 * gathering; ds's layers are its leaves */
static const field LEAF_FIELDS[] = {N("classes"), N("names"), N("ignored_classes"), N("ignored_names"), END};
static const field ZERO_FIELDS[] = {
    K("stage", F_SKIP),
    K("contiguous_gradients", F_BOOL), K("reduce_scatter", F_BOOL), K("reduce_bucket_size", F_SIZE),
    K("use_multi_rank_bucket_allreduce", F_BOOL), K("allgather_partitions", F_BOOL),
    K("allgather_bucket_size", F_SIZE), K("overlap_comm", F_BOOL),
    K("load_from_fp32_weights", F_ON), K("elastic_checkpoint", F_BOOL),
    OBJ("offload_param", OFFLOAD_PARAM_FIELDS), OBJ("offload_optimizer", OFFLOAD_OPT_FIELDS),
    K("sub_group_size", F_SIZE),
    OLD("cpu_offload_param", F_CPUOFFP, "offload_param"),
    OLD("cpu_offload_use_pin_memory", F_BOOL, "offload_param or offload_optimizer"),
    OLD("cpu_offload", F_CPUOFF, "offload_optimizer"),
    K("prefetch_bucket_size", F_SIZE), K("stage3_prefetch_bucket_size", F_SIZE),
    K("param_persistence_threshold", F_SIZE), K("stage3_param_persistence_threshold", F_SIZE),
    K("model_persistence_threshold", F_SIZE), K("stage3_model_persistence_threshold", F_SIZE),
    K("max_live_parameters", F_SIZE), K("stage3_max_live_parameters", F_SIZE),
    K("max_reuse_distance", F_SIZE), K("stage3_max_reuse_distance", F_SIZE),
    K("gather_16bit_weights_on_model_save", F_BOOL),
    K("stage3_gather_16bit_weights_on_model_save", F_BOOL),
    OLD("stage3_gather_fp16_weights_on_model_save", F_BOOL, "gather_16bit_weights_on_model_save"),
    K("module_granularity_threshold", F_INT), K("stage3_module_granularity_threshold", F_INT),
    K("use_all_reduce_for_fetch_params", F_BOOL),
    K("stage3_use_all_reduce_for_fetch_params", F_BOOL),
    K("allgather_sequential", F_BOOL), K("stage3_allgather_sequential", F_BOOL),
    K("ignore_unused_parameters", F_ON), K("legacy_stage1", F_OFF),
    K("round_robin_gradients", F_BOOL), LIM("zero_hpz_partition_size", 0, 1),
    K("zero_quantized_weights", F_OFF), K("zero_quantized_nontrainable_weights", F_OFF),
    K("zero_quantized_gradients", F_OFF), K("zeropp_loco_param", F_NULL),
    LIM("mics_shard_size", -1, 0), K("mics_hierarchical_params_gather", F_BOOL),
    K("memory_efficient_linear", F_BOOL), K("pipeline_loading_checkpoint", F_BOOL),
    K("override_module_apply", F_BOOL), K("log_trace_cache_warnings", F_BOOL),
    K("enable_sanity_checks", F_BOOL), OBJ("leaf_module", LEAF_FIELDS), K("zenflow", F_NULL), END};
/* aio (DeepSpeed's AIO config: NVMe offload, refused under zero_optimization) and timers
 * (the throughput timer's switches): their types checked, and nothing else to do */
static const field AIO_FIELDS[] = {
    K("block_size", F_SIZE), K("queue_depth", F_SIZE), K("intra_op_parallelism", F_SIZE),
    K("thread_count", F_SIZE), K("single_submit", F_BOOL), K("overlap_events", F_BOOL),
    K("use_gds", F_BOOL), END};
static const field THROUGHPUT_FIELDS[] = {K("enabled", F_BOOL), K("synchronized", F_BOOL), END};
static const field TIMERS_FIELDS[] = {OBJ("throughput", THROUGHPUT_FIELDS), END};

/* Every top-level key DeepSpeed reads (plus "seed" and ds's "device"). DeepSpeed ignores unknown top-level keys;
 * we warn, suggesting the nearest of these. */
static const field TOP_FIELDS[] = {
    K("train_batch_size", F_BATCH), K("train_micro_batch_size_per_gpu", F_BATCH),
    K("gradient_accumulation_steps", F_BATCH), K("optimizer", F_OPTIM), K("scheduler", F_SCHED),
    K("gradient_clipping", F_CLIP), K("steps_per_print", F_STEPS), K("seed", F_SEED),
    K("allreduce_bucket_size", F_BUCKET), K("device", F_RUNDEV),
    K("fp16", F_FP16), K("bf16", F_BF16),
    {.name = "bfloat16", .kind = F_BF16, .use = "bf16"}, OBJ("amp", OPEN_FIELDS),
    K("zero_optimization", F_ZERO), K("zero_allow_untested_optimizer", F_BOOL),
    K("zero_force_ds_cpu_optimizer", F_BOOL), K("allgather_size", F_SIZE),
    K("prescale_gradients", F_PRESCALE), K("gradient_predivide_factor", F_PREDIV),
    K("sparse_gradients", F_OFF), K("communication_data_type", F_DTYPE),
    K("seq_parallel_communication_data_type", F_DTYPE), K("disable_allgather", F_NOAG),
    K("wall_clock_breakdown", F_WALLCLOCK), K("memory_breakdown", F_OFF), K("dump_state", F_OFF),
    K("dataloader_drop_last", F_OFF), K("graph_harvesting", F_OFF),
    K("use_data_before_expert_parallelism", F_OFF), K("vocabulary_size", F_SIZE),
    LIM("sequence_parallel_size", 1, 1),
    {.name = "activation_checkpointing", .kind = F_ACTCKPT, .sub = ACTCKPT_FIELDS},
    OBJ("flops_profiler", FLOPS_FIELDS),
    {.name = "tensorboard", .kind = F_MONITOR, .sub = MONITOR_FIELDS},
    {.name = "csv_monitor", .kind = F_MONITOR, .sub = MONITOR_FIELDS},
    OBJ("wandb", WANDB_FIELDS), OBJ("comet", COMET_FIELDS),
    OBJ("comms_logger", COMMS_FIELDS), OBJ("hybrid_engine", HYBRID_FIELDS),
    OBJ("checkpoint", CKPT_FIELDS), OBJ("data_types", DATA_TYPES_FIELDS),
    OBJ("elasticity", OPEN_FIELDS), OBJ("autotuning", OPEN_FIELDS),
    OBJ("data_efficiency", OPEN_FIELDS), K("curriculum_learning", F_CURRIC),
    K("progressive_layer_drop", F_PLD), OBJ("eigenvalue", OPEN_FIELDS),
    OBJ("quantize_training", OPEN_FIELDS), OBJ("nebula", OPEN_FIELDS),
    OBJ("torch_autocast", OPEN_FIELDS), OBJ("compile", COMPILE_FIELDS),
    OBJ("tensor_parallel", TP_FIELDS),
    K("pipeline", F_BLOCK), K("compression_training", F_BLOCK), K("sparse_attention", F_BLOCK),
    K("weight_quantization", F_BLOCK),
    /* aio only tunes NVMe offload (refused under zero_optimization); timers only the
     * throughput report: both are harmless to accept. */
    OBJ("aio", AIO_FIELDS), OBJ("timers", TIMERS_FIELDS),
    END};

static ds_status check_section(rd *r, const char *path, json_object *obj, const field *fields);
static ds_status read_monitor(rd *r, const char *path, json_object *v, ds_monitor_config *m);
static ds_status read_optimizer(rd *r, json_object *v);
static ds_status read_precision(rd *r, const char *path, json_object *v, int bf16);

/* The ZeRO knobs ds acts on (ckpt-zero.md 4.1), after check_section validated every key. */
static ds_status read_zero(rd *r, const char *path, json_object *v)
{
    ds_zero_config *z = &r->cfg->zero;
    ds_status st = DS_OK;
    int overlap_given = 0;
    json_object_object_foreach(v, key, val) {
        char p[128];
        join(p, sizeof p, path, key);
        vstate s;
        int b;
        int64_t i;
        if (!strcmp(key, "reduce_bucket_size") || !strcmp(key, "allgather_bucket_size")) {
            if ((st = get_int(r, p, val, &s, &i)) != DS_OK)
                return st;
            if (s == V_SET && i < 1)
                return bad_type(r, p, "an integer >= 1 (elements)", val);
            if (s == V_SET)
                *(key[0] == 'r' ? &z->reduce_bucket_size : &z->allgather_bucket_size) = i;
        } else if (!strcmp(key, "param_persistence_threshold") ||
                   !strcmp(key, "stage3_param_persistence_threshold") ||
                   !strcmp(key, "model_persistence_threshold") ||
                   !strcmp(key, "stage3_model_persistence_threshold")) {
            if ((st = get_int(r, p, val, &s, &i)) != DS_OK)
                return st;
            if (s == V_SET) /* (F_SIZE checked i >= 0) */
                *(strstr(key, "param_") ? &z->param_persistence_threshold : &z->model_persistence_threshold) = i;
        } else if (!strcmp(key, "overlap_comm")) {
            if ((st = get_bool(r, p, val, &s, &b)) != DS_OK)
                return st;
            if (s == V_SET)
                z->overlap_comm = b;
            overlap_given = s == V_SET;
        } else if (!strcmp(key, "reduce_scatter") || !strcmp(key, "allgather_partitions") ||
                   !strcmp(key, "contiguous_gradients")) {
            if ((st = get_bool(r, p, val, &s, &b)) != DS_OK)
                return st;
            if (s == V_SET && !strcmp(key, "reduce_scatter"))
                z->reduce_scatter = b;
            if (s == V_SET && !strcmp(key, "allgather_partitions"))
                z->allgather_partitions = b;
        } else if (!strcmp(key, "round_robin_gradients")) {
            /* DeepSpeed's stages 1 and 2 spread the copies of gradients to host memory for CPU
             * offload over the ranks by reordering the tensors among the partitions: no number
             * changes. ds keeps its one partition rule, and the cpu backend copies nothing. */
            if ((st = get_bool(r, p, val, &s, &b)) != DS_OK)
                return st;
            if (s == V_SET && b && z->stage > 0)
                warn(r, "%s=true: DeepSpeed's order of the gradient copies to host memory for CPU offload (at "
                     "stages 1 and 2); ds partitions by its one rule (ds-config(5)) and copies none: it changes "
                     "nothing", p);
        }
        if (st != DS_OK)
            return st;
    }
    if (z->stage == 3 && !overlap_given) /* DeepSpeed: overlap_comm null means true at stage 3 */
        z->overlap_comm = 1;
    if (z->offload_param && z->stage < 3)
        warn(r, "zero_optimization.offload_param acts at stage 3 only; at stage %d it does nothing (as in "
             "DeepSpeed)", z->stage);
    return DS_OK;
}

/* tensorboard / csv_monitor (pydantic: TensorBoardConfig, CSVConfig), after check_section validated
 * the keys: enabled, output_path (a string, "" the default), job_name ("DeepSpeedJobName"). */
static ds_status read_monitor(rd *r, const char *path, json_object *v, ds_monitor_config *m)
{
    json_object_object_foreach(v, key, val) {
        char p[128];
        join(p, sizeof p, path, key);
        vstate s;
        int b;
        const char *str;
        ds_status st;
        if (!strcmp(key, "enabled")) {
            if ((st = get_bool(r, p, val, &s, &b)) != DS_OK)
                return st;
            m->enabled = s == V_SET && b;
        } else {
            if ((st = get_str(r, p, val, &str)) != DS_OK)
                return st;
            char *dst = !strcmp(key, "output_path") ? m->output_path : m->job_name;
            size_t cap = !strcmp(key, "output_path") ? sizeof m->output_path : sizeof m->job_name;
            if (str && strlen(str) >= cap)
                return bad_type(r, p, "a shorter path", val);
            if (str)
                snprintf(dst, cap, "%s", str);
            if (str && !strcmp(key, "job_name") && (!*str || strchr(str, '/')))
                return bad_type(r, p, "a non-empty name without '/'", val);
        }
    }
    return DS_OK;
}

/* activation_checkpointing (DeepSpeedActivationCheckpointingConfig), after check_section validated
 * every key; checkpointing.configure's asserts are the engine's (they apply where the network
 * checkpoints). */
static ds_status read_actckpt(rd *r, const char *path, json_object *v)
{
    ds_actckpt_config *a = &r->cfg->actckpt;
    a->given = 1;
    json_object_object_foreach(v, key, val) {
        char p[256];
        join(p, sizeof p, path, key);
        vstate s;
        int b;
        int64_t i;
        ds_status st;
        int *flag = !strcmp(key, "partition_activations")           ? &a->partition_activations
                  : !strcmp(key, "contiguous_memory_optimization")  ? &a->contiguous
                  : !strcmp(key, "cpu_checkpointing")               ? &a->cpu_checkpointing
                  : !strcmp(key, "synchronize_checkpoint_boundary") ? &a->synchronize
                  : !strcmp(key, "profile")                         ? &a->profile : NULL;
        if (flag) {
            if ((st = get_bool(r, p, val, &s, &b)) != DS_OK)
                return st;
            *flag = s == V_SET && b;
        } else if (!strcmp(key, "number_checkpoints")) {
            if ((st = get_int(r, p, val, &s, &i)) != DS_OK)
                return st;
            if (s == V_SET && i < 1)
                return bad_type(r, p, "null or an integer >= 1", val);
            a->number_checkpoints = s == V_SET ? i : 0;
        }
    }
    return DS_OK; /* (checkpointing.configure's asserts apply where the network checkpoints: the engine) */
}

/* One integer of the curriculum_learning block: required, >= lo. */
static ds_status cl_int(rd *r, const char *path, json_object *obj, const char *key, int64_t lo, int64_t *out)
{
    char p[256];
    join(p, sizeof p, path, key);
    json_object *v;
    vstate s;
    ds_status st;
    if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null))
        return fail(r, DS_ERR_INVALID, p, "missing (DeepSpeed's CurriculumScheduler requires it)");
    if ((st = get_int(r, p, v, &s, out)) != DS_OK)
        return st;
    if (s != V_SET || *out < lo) {
        char want[64];
        snprintf(want, sizeof want, "an integer >= %lld", (long long)lo);
        return bad_type(r, p, want, v);
    }
    return DS_OK;
}

/* An array of integers >= 1 (fixed_discrete's difficulty and max_step). */
static ds_status cl_list(rd *r, const char *path, json_object *obj, const char *key, int64_t *out, int *n)
{
    char p[256];
    join(p, sizeof p, path, key);
    json_object *v;
    if (!json_object_object_get_ex(obj, key, &v))
        return fail(r, DS_ERR_INVALID, p, "missing (fixed_discrete requires it)");
    size_t len = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
    if (len == 0 || len > DS_CL_MAX_DISCRETE)
        return bad_type(r, p, "a non-empty array of at most 64 integers", v);
    for (size_t i = 0; i < len; i++) {
        char pi[300];
        snprintf(pi, sizeof pi, "%s[%zu]", p, i);
        vstate s;
        ds_status st = get_int(r, pi, json_object_array_get_idx(v, i), &s, &out[i]);
        if (st != DS_OK)
            return st;
        if (s != V_SET || out[i] < 1)
            return bad_type(r, pi, "an integer >= 1", json_object_array_get_idx(v, i));
    }
    *n = (int)len;
    return DS_OK;
}

/* A plain-dict section switched by "enabled" (null or absent: off): *on, or an error. */
static ds_status read_switch(rd *r, const char *path, json_object *v, int *on)
{
    *on = 0;
    if (!v || json_object_is_type(v, json_type_null))
        return DS_OK;
    if (!json_object_is_type(v, json_type_object))
        return bad_type(r, path, "an object", v);
    json_object *ev;
    vstate s;
    char p[256];
    if (json_object_object_get_ex(v, "enabled", &ev))
        return get_bool(r, join(p, sizeof p, path, "enabled"), ev, &s, on);
    return DS_OK;
}

static void append(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Every key of object o is one of keys (NULL-terminated); else an error at path naming it, with
 * what (" for fixed_linear", or "") after it and the keys expected. */
static ds_status only_keys(rd *r, const char *path, json_object *o, const char *const *keys, const char *what)
{
    json_object_object_foreach(o, key, val) {
        (void)val;
        int known = 0;
        for (int i = 0; keys[i]; i++)
            known = known || !strcmp(key, keys[i]);
        if (known)
            continue;
        char list[256] = "";
        for (int i = 0; keys[i]; i++)
            append(list, sizeof list, "%s%s", i ? ", " : "", keys[i]);
        return fail(r, DS_ERR_INVALID, path, "unknown key \"%s\"%s (expected %s)", key, what, list);
    }
    return DS_OK;
}

/* The legacy top-level curriculum_learning block (CurriculumScheduler's asserts). Disabled, its
 * contents are not read, as in DeepSpeed. */
static ds_status read_curriculum(rd *r, const char *path, json_object *v)
{
    int on;
    vstate s;
    ds_status st;
    char p[256];
    if ((st = read_switch(r, path, v, &on)) != DS_OK || !on)
        return st;
    static const char *const keys[] = {"enabled", "curriculum_type", "min_difficulty", "max_difficulty",
                                       "schedule_type", "schedule_config", NULL};
    if ((st = only_keys(r, path, v, keys, "")) != DS_OK)
        return st;
    ds_curriculum_config *c = &r->cfg->curriculum;
    const char *type = NULL, *sched = NULL;
    json_object *tv = NULL, *sv = NULL, *sc = NULL;
    join(p, sizeof p, path, "curriculum_type");
    if (!json_object_object_get_ex(v, "curriculum_type", &tv))
        return fail(r, DS_ERR_INVALID, p, "missing (expected \"seqlen\")");
    if ((st = get_str(r, p, tv, &type)) != DS_OK)
        return st;
    if (!type || strcmp(type, "seqlen") != 0) /* the model's own metrics: ds has no hook for them */
        return unsupported(r, p, tv);
    if ((st = cl_int(r, path, v, "min_difficulty", 1, &c->min_difficulty)) != DS_OK ||
        (st = cl_int(r, path, v, "max_difficulty", 1, &c->max_difficulty)) != DS_OK)
        return st;
    if (c->max_difficulty < c->min_difficulty)
        return fail(r, DS_ERR_INVALID, join(p, sizeof p, path, "max_difficulty"), "expected at least min_difficulty "
                    "(%lld), found %lld", (long long)c->min_difficulty, (long long)c->max_difficulty);
    join(p, sizeof p, path, "schedule_type");
    if (!json_object_object_get_ex(v, "schedule_type", &sv))
        return fail(r, DS_ERR_INVALID, p, "missing (expected \"fixed_linear\", \"fixed_root\" or \"fixed_discrete\")");
    if ((st = get_str(r, p, sv, &sched)) != DS_OK)
        return st;
    if (sched && !strcmp(sched, "custom")) /* a Python function the client sets */
        return unsupported(r, p, sv);
    if (!sched || (strcmp(sched, "fixed_linear") && strcmp(sched, "fixed_root") && strcmp(sched, "fixed_discrete")))
        return bad_type(r, p, "\"fixed_linear\", \"fixed_root\" or \"fixed_discrete\"", sv);
    char sp[256];
    join(sp, sizeof sp, path, "schedule_config");
    if (!json_object_object_get_ex(v, "schedule_config", &sc) || !json_object_is_type(sc, json_type_object))
        return sc ? bad_type(r, sp, "an object", sc) : fail(r, DS_ERR_INVALID, sp, "missing (the %s schedule's settings)", sched);
    { /* as the block's own keys: one the schedule does not read is an error, not ignored */
        static const char *const discrete[] = {"difficulty", "max_step", NULL};
        static const char *const linear[] = {"total_curriculum_step", "difficulty_step", NULL};
        static const char *const root[] = {"total_curriculum_step", "difficulty_step", "root_degree", NULL};
        char what[64];
        snprintf(what, sizeof what, " for %s", sched);
        if ((st = only_keys(r, sp, sc, !strcmp(sched, "fixed_discrete") ? discrete
                                       : !strcmp(sched, "fixed_root")   ? root
                                                                        : linear, what)) != DS_OK)
            return st;
    }
    if (!strcmp(sched, "fixed_discrete")) {
        int nm = 0;
        c->schedule = DS_CL_FIXED_DISCRETE;
        if ((st = cl_list(r, sp, sc, "difficulty", c->difficulty, &c->n_discrete)) != DS_OK ||
            (st = cl_list(r, sp, sc, "max_step", c->max_step, &nm)) != DS_OK)
            return st;
        if (nm != c->n_discrete - 1)
            return fail(r, DS_ERR_INVALID, sp, "max_step has %d entries and difficulty %d; expected one fewer "
                        "max_step (the last difficulty holds from there on)", nm, c->n_discrete);
    } else {
        c->schedule = !strcmp(sched, "fixed_root") ? DS_CL_FIXED_ROOT : DS_CL_FIXED_LINEAR;
        if ((st = cl_int(r, sp, sc, "total_curriculum_step", 1, &c->total_step)) != DS_OK ||
            (st = cl_int(r, sp, sc, "difficulty_step", 1, &c->difficulty_step)) != DS_OK)
            return st;
        c->root_degree = 1;
        if (c->schedule == DS_CL_FIXED_ROOT) {
            json_object *rv;
            join(p, sizeof p, sp, "root_degree");
            if (!json_object_object_get_ex(sc, "root_degree", &rv))
                return fail(r, DS_ERR_INVALID, p, "missing (fixed_root requires it)");
            if ((st = get_num(r, p, rv, &s, &c->root_degree)) != DS_OK)
                return st;
            if (s != V_SET || !(c->root_degree > 0))
                return bad_type(r, p, "a number > 0", rv);
        }
    }
    c->enabled = 1;
    return DS_OK;
}

/* progressive_layer_drop (a plain dict in DeepSpeed: enabled, theta 1.0, gamma 0.001). Disabled,
 * its contents are not read, as in DeepSpeed. theta in [0, 1] and gamma >= 0 keep every keep
 * probability in [theta, 1] (DeepSpeed checks neither). */
static ds_status read_pld(rd *r, const char *path, json_object *v)
{
    int on;
    vstate s;
    ds_status st;
    char p[256];
    if ((st = read_switch(r, path, v, &on)) != DS_OK || !on)
        return st;
    ds_pld_config *c = &r->cfg->pld;
    c->theta = 1.0;
    c->gamma = 0.001;
    json_object_object_foreach(v, key, val) {
        join(p, sizeof p, path, key);
        if (!strcmp(key, "enabled"))
            continue;
        if (strcmp(key, "theta") && strcmp(key, "gamma"))
            return fail(r, DS_ERR_INVALID, path, "unknown key \"%s\" (expected enabled, theta, gamma)", key);
        double d;
        if ((st = get_num(r, p, val, &s, &d)) != DS_OK)
            return st;
        if (s != V_SET)
            continue;
        if (!strcmp(key, "theta") ? !(d >= 0 && d <= 1) : !(d >= 0 && d < INFINITY))
            return bad_type(r, p, !strcmp(key, "theta") ? "a number from 0 to 1" : "a number >= 0", val);
        *(!strcmp(key, "theta") ? &c->theta : &c->gamma) = d;
    }
    c->enabled = 1;
    return DS_OK;
}

double ds_pld_theta(const ds_pld_config *c, int64_t global_steps)
{
    /* ProgressiveLayerDrop starts at 1.0, and DeepSpeed's step() calls update_state(global_steps)
     * before it counts the step: step k's forward sees the value of step k - 1 */
    if (global_steps <= 0)
        return 1.0;
    return (1.0 - c->theta) * exp(-c->gamma * (double)(global_steps - 1)) + c->theta;
}

int64_t ds_curriculum_difficulty(const ds_curriculum_config *c, int64_t global_steps)
{
    if (c->schedule == DS_CL_FIXED_DISCRETE) { /* n_discrete >= 2 as read: max_step is not empty */
        if (c->n_discrete < 2)
            return c->difficulty[0];
        for (int i = 0; i < c->n_discrete - 1 && global_steps <= c->max_step[c->n_discrete - 2]; i++)
            if (global_steps <= c->max_step[i])
                return c->difficulty[i];
        return c->difficulty[c->n_discrete - 1];
    }
    /* (steps / total)^(1/root) of the way from min to max, floored, rounded down to a multiple
     * of difficulty_step (QUIRK: below min_difficulty where min is not a multiple), at most max */
    double f = pow((double)global_steps / (double)c->total_step, 1.0 / c->root_degree);
    double x = f * (double)(c->max_difficulty - c->min_difficulty) + (double)c->min_difficulty;
    if (!(x < (double)c->max_difficulty + (double)c->difficulty_step)) /* max, rounded down or not; and no */
        return c->max_difficulty;                                      /* double too large for int64 */
    int64_t d = (int64_t)floor(x);
    d -= d % c->difficulty_step;
    return d < c->max_difficulty ? d : c->max_difficulty;
}

int64_t ds_curriculum_update(const ds_curriculum_config *c, int64_t current, int64_t global_steps)
{
    return current < c->max_difficulty ? ds_curriculum_difficulty(c, global_steps) : current;
}

static ds_status check_dtype(rd *r, const char *path, json_object *v)
{
    static const char *const fp32[] = {"fp32", "float32", "float", "torch.float32", NULL};
    static const char *const half[] = {"fp16", "float16", "half", "torch.float16", "bf16",
                                       "bfloat16", "bfp16", "torch.bfloat16", NULL};
    const char *s;
    ds_status st = get_str(r, path, v, &s);
    if (st != DS_OK || !s)
        return st;
    const int accum = !strcmp(path, "data_types.grad_accum_dtype");
    for (int i = 0; fp32[i]; i++)
        if (ieq(s, fp32[i])) {
            if (accum)
                r->accum_dtype = v, r->accum16 = 0;
            return DS_OK;
        }
    for (int i = 0; half[i]; i++) {
        if (!ieq(s, half[i]))
            continue;
        if (accum) { /* what the model's precision makes of it: load() */
            r->accum_dtype = v, r->accum16 = i < 4 ? 1 : 2;
            return DS_OK;
        }
        if (!strcmp(path, "seq_parallel_communication_data_type")) { /* sequence_parallel_size is 1 */
            warn(r, "%s=%s has no effect: it is the type of sequence parallelism's all-to-all, and "
                    "sequence_parallel_size is 1 (DeepSpeed makes no such exchange then either)", path, s);
            return DS_OK;
        }
        return unsupported(r, path, v);
    }
    return bad_type(r, path, "\"fp32\", \"fp16\" or \"bf16\"", v);
}

static ds_status check_field(rd *r, const char *parent, const char *path, json_object *v,
                             const field *f)
{
    vstate s;
    int b;
    int64_t i;
    double d;
    const char *str;
    ds_status st = DS_OK;
    if (f->use) {
        char p[256];
        warn(r, "%s is deprecated, use %s instead", path, join(p, sizeof p, parent, f->use));
    }
    switch (f->kind) {
    case F_ANY:
    case F_SKIP:
        return DS_OK;
    case F_BOOL:
        return get_bool(r, path, v, &s, &b);
    case F_OFF:
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK && s == V_SET && b)
            return unsupported(r, path, v);
        return st;
    case F_ON:
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK && s == V_SET && !b)
            return unsupported(r, path, v);
        return st;
    case F_STR:
        return get_str(r, path, v, &str);
    case F_INT:
        return get_int(r, path, v, &s, &i);
    case F_SIZE:
        if ((st = get_int(r, path, v, &s, &i)) == DS_OK && s == V_SET && i < 0)
            return bad_type(r, path, "an integer >= 0", v);
        return st;
    case F_LIMIT:
        if ((st = get_int(r, path, v, &s, &i)) == DS_OK && s == V_SET && i < f->lo) {
            char want[48];
            snprintf(want, sizeof want, "an integer >= %d", f->lo);
            return bad_type(r, path, want, v);
        }
        if (st == DS_OK && s == V_SET && i > f->lim)
            return unsupported(r, path, v);
        return st;
    case F_ONE:
        if ((st = get_num(r, path, v, &s, &d)) == DS_OK && s == V_SET && !(d >= 0 && d <= 1))
            return bad_type(r, path, "a number in [0, 1]", v);
        if (st == DS_OK && s == V_SET && d != 1.0)
            return unsupported(r, path, v);
        return st;
    case F_NULL:
        if (v && !(json_object_is_type(v, json_type_string) &&
                   !strcmp(json_object_get_string(v), "auto")))
            return unsupported(r, path, v);
        return DS_OK;
    case F_BLOCK:
        if (v && !json_object_is_type(v, json_type_object))
            return bad_type(r, path, "an object", v);
        if (v && json_object_object_length(v) > 0)
            return unsupported(r, path, NULL);
        return DS_OK;
    case F_DTYPE:
        return check_dtype(r, path, v);
    case F_DEVICE: /* offload_param.device */
        if ((st = get_str(r, path, v, &str)) != DS_OK || !str || !strcmp(str, "none"))
            return st;
        if (!strcmp(str, "cpu")) {
            r->cfg->zero.offload_param = 1;
            return DS_OK;
        }
        if (!strcmp(str, "nvme"))
            return unsupported(r, path, v);
        return bad_type(r, path, "\"none\", \"cpu\" or \"nvme\"", v);
    case F_OFFOPT:
        if ((st = get_str(r, path, v, &str)) != DS_OK || !str || !strcmp(str, "none"))
            return st;
        if (!strcmp(str, "cpu")) {
            r->cfg->zero.offload_optimizer = DS_OFFLOAD_OPTIMIZER;
            return DS_OK;
        }
        if (!strcmp(str, "nvme"))
            return unsupported(r, path, v);
        return bad_type(r, path, "\"none\", \"cpu\" or \"nvme\"", v);
    case F_CPUOFF:
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK && s == V_SET && b)
            r->cfg->zero.offload_optimizer = DS_OFFLOAD_CPU_OFFLOAD;
        return st;
    case F_CPUOFFP:
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK && s == V_SET && b)
            r->cfg->zero.offload_param = 1;
        return st;
    case F_TAGVAL: /* DeepSpeed upper-cases it and accepts WARN, IGNORE, FAIL */
        if ((st = get_str(r, path, v, &str)) != DS_OK || !str || ieq(str, "warn"))
            return st;
        if (ieq(str, "ignore") || ieq(str, "fail"))
            return unsupported(r, path, v);
        return bad_type(r, path, "\"Warn\", \"Ignore\" or \"Fail\"", v);
    case F_OBJ:
        if (!v)
            return DS_OK;
        if (!json_object_is_type(v, json_type_object))
            return bad_type(r, path, "an object", v);
        return check_section(r, path, v, f->sub);
    case F_BATCH:
        for (int k = 0; k < 3; k++)
            if (!strcmp(path, BATCH_KEYS[k]))
                return get_int(r, path, v, &r->bstate[k], &r->bval[k]);
        return DS_ERR_INTERNAL;
    case F_OPTIM:
        return read_optimizer(r, v);
    case F_FP16:
        return read_precision(r, path, v, 0);
    case F_BF16:
        if (r->skip_bfloat16 && !strcmp(path, "bfloat16")) {
            warn(r, "bfloat16 is ignored: bf16 is given too, and DeepSpeed reads bf16 alone then");
            return DS_OK;
        }
        return read_precision(r, path, v, 1);
    case F_SCHED: { /* lib/optim/sched.c reads the block */
        char note[256];
        ds_error e = {0};
        st = ds_sched_parse(&r->cfg->scheduler, v, r->name, note, sizeof note, &e);
        if (note[0])
            warn(r, "%s", note);
        if (st == DS_ERR_UNSUPPORTED)
            return refuse(r, "%s", e.msg);
        if (st != DS_OK && r->err)
            *r->err = e;
        return st;
    }
    case F_ZERO:
        if (json_object_is_type(v, json_type_boolean)) { /* the old form: true means stage 1 */
            warn(r, "zero_optimization=%s is deprecated, use {\"stage\": %d} instead",
                 json_object_get_boolean(v) ? "true" : "false", json_object_get_boolean(v) ? 1 : 0);
            r->cfg->zero.stage = json_object_get_boolean(v) ? 1 : 0;
            return DS_OK;
        }
        if (!v)
            return DS_OK;
        if (!json_object_is_type(v, json_type_object))
            return bad_type(r, path, "an object", v);
        json_object *sv;
        if (json_object_object_get_ex(v, "stage", &sv)) { /* first: it decides everything else */
            char p[64];
            join(p, sizeof p, path, "stage");
            if ((st = get_int(r, p, sv, &s, &i)) != DS_OK)
                return st;
            if (s == V_SET && (i < 0 || i > 3))
                return bad_type(r, p, "0, 1, 2 or 3", sv);
            if (s == V_AUTO)
                warn(r, "zero_optimization.stage is \"auto\": using the default 0 (no ZeRO)");
            r->cfg->zero.stage = s == V_SET ? (int)i : 0;
        }
        if (json_object_object_get_ex(v, "cpu_offload", NULL) &&
            json_object_object_get_ex(v, "offload_optimizer", NULL)) /* DeepSpeed refuses both too */
            return fail(r, DS_ERR_INVALID, "zero_optimization.cpu_offload",
                        "given together with zero_optimization.offload_optimizer, which replaces it: "
                        "keep only offload_optimizer");
        if (json_object_object_get_ex(v, "cpu_offload_param", NULL) &&
            json_object_object_get_ex(v, "offload_param", NULL))
            return fail(r, DS_ERR_INVALID, "zero_optimization.cpu_offload_param",
                        "given together with zero_optimization.offload_param, which replaces it: "
                        "keep only offload_param");
        if ((st = check_section(r, path, v, ZERO_FIELDS)) != DS_OK)
            return st;
        return read_zero(r, path, v);
    case F_CLIP:
        if ((st = get_num(r, path, v, &s, &d)) != DS_OK)
            return st;
        if (s == V_AUTO)
            warn(r, "gradient_clipping is \"auto\": using the default 0 (no clipping)");
        if (s == V_SET && d < 0)
            return bad_type(r, path, "a number >= 0", v);
        r->cfg->gradient_clipping = s == V_SET ? d : 0.0;
        return DS_OK;
    case F_PRESCALE:
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK)
            r->cfg->prescale_gradients = s == V_SET ? b : 0;
        return st;
    case F_PREDIV:
        /* the engine multiplies the gradients by 1/f before the sum and f/W after it, in fp32 */
        if ((st = get_num(r, path, v, &s, &d)) == DS_OK && s == V_SET && !(d >= 1e-6 && d <= 1e6))
            return bad_type(r, path, "a number in [1e-6, 1e6]", v);
        if (st == DS_OK)
            r->cfg->gradient_predivide_factor = s == V_SET ? d : 1.0;
        return st;
    case F_WALLCLOCK:
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK)
            r->cfg->wall_clock_breakdown = s == V_SET ? b : 0;
        return st;
    case F_CURRIC:
        return read_curriculum(r, path, v);
    case F_PLD:
        return read_pld(r, path, v);
    case F_MONITOR:
    case F_ACTCKPT: /* sections checked against .sub, then read */
        if (!v)
            return DS_OK;
        if (!json_object_is_type(v, json_type_object))
            return bad_type(r, path, "an object", v);
        if ((st = check_section(r, path, v, f->sub)) != DS_OK)
            return st;
        if (f->kind == F_ACTCKPT)
            return read_actckpt(r, path, v);
        return read_monitor(r, path, v, !strcmp(path, "tensorboard") ? &r->cfg->tensorboard : &r->cfg->csv_monitor);
    case F_NOAG: /* DeepSpeed: broadcasts instead of the all-gather, which is what
                  * zero_optimization.allgather_partitions false does (set after the sections) */
        if ((st = get_bool(r, path, v, &s, &b)) == DS_OK)
            r->no_allgather = s == V_SET && b;
        return st;
    case F_BUCKET:
        if ((st = get_int(r, path, v, &s, &i)) == DS_OK && s == V_SET && i < 1)
            return bad_type(r, path, "an integer >= 1 (elements)", v);
        r->cfg->allreduce_bucket_size = s == V_SET ? i : 0;
        return st;
    case F_RUNDEV: { /* "cpu", "cuda", "cuda:N" or "auto"; null is absent */
        if (!v)
            return DS_OK;
        if (!json_object_is_type(v, json_type_string))
            return bad_type(r, path, "\"cpu\", \"cuda\", \"cuda:N\" or \"auto\"", v);
        const char *d = json_object_get_string(v);
        char *end = NULL;
        int ok = !strcmp(d, "cpu") || !strcmp(d, "cuda") || !strcmp(d, "auto") ||
                 (!strncmp(d, "cuda:", 5) && d[5] >= '0' && d[5] <= '9' && strtol(d + 5, &end, 10) >= 0 && !*end);
        if (!ok || strlen(d) >= sizeof r->cfg->device)
            return bad_type(r, path, "\"cpu\", \"cuda\", \"cuda:N\" or \"auto\"", v);
        snprintf(r->cfg->device, sizeof r->cfg->device, "%s", d);
        return DS_OK;
    }
    case F_STEPS:
        if ((st = get_int(r, path, v, &s, &i)) == DS_OK && s == V_SET && i < 0)
            return bad_type(r, path, "an integer >= 0", v);
        r->cfg->steps_per_print = s == V_SET ? i : 0;
        return st;
    case F_SEED: /* a uint64: json-c keeps 2^63..2^64-1 as uint64 */
        if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) == INT64_MAX) {
            r->cfg->seed_set = 1;
            r->cfg->seed = json_object_get_uint64(v);
            return DS_OK;
        }
        if ((st = get_int(r, path, v, &s, &i)) != DS_OK)
            return st;
        if (s == V_SET && i < 0)
            return bad_type(r, path, "an integer >= 0", v);
        r->cfg->seed_set = s == V_SET;
        r->cfg->seed = (uint64_t)i;
        return DS_OK;
    }
    return DS_ERR_INTERNAL;
}

/* Walk one object: every key must be in fields (or match a "*" entry). At the top level an
 * unknown key is a warning (an error with strict) and keys starting with '_' are comments.
 * Returns DS_ERR_UNSUPPORTED when something was refused but nothing was invalid. */
static ds_status check_section(rd *r, const char *path, json_object *obj, const field *fields)
{
    ds_status result = DS_OK;
    json_object_object_foreach(obj, key, val) {
        const field *f = NULL;
        for (const field *g = fields; g->name && !f; g++)
            if (!strcmp(g->name, key) || !strcmp(g->name, "*"))
                f = g;
        char p[256], hint[400];
        if (!f) {
            suggestion(key, fields, hint, sizeof hint, *path != 0);
            if (*path)
                return fail(r, DS_ERR_INVALID, path, "unknown key \"%s\"%s", key, hint);
            if (key[0] == '_')
                continue;
            if (r->strict)
                return fail(r, DS_ERR_INVALID, "", "unknown key \"%s\"%s", key, hint);
            warn(r, "unknown key \"%s\"%s", key, hint);
            continue;
        }
        ds_status st = check_field(r, path, join(p, sizeof p, path, key), val, f);
        if (st == DS_ERR_UNSUPPORTED)
            result = st;
        else if (st != DS_OK)
            return st;
    }
    return result;
}

/* ---- fp16 / bf16 (engine.md §1.3, §2; DECISIONS.md) ------------------------------------- */

static const field FP16_KEYS[] = {
    N("enabled"), N("auto_cast"), N("loss_scale"), N("initial_scale_power"),
    N("loss_scale_window"), N("hysteresis"), N("consecutive_hysteresis"), N("min_loss_scale"),
    N("fp16_master_weights_and_grads"), END};
static const field BF16_KEYS[] = { /* newer DeepSpeed adds the last three */
    N("enabled"), N("immediate_grad_update"), N("check_grad_overflow"),
    N("bf16_master_weights_and_grads"), N("bf16_optimizer_states"), END};

/* An integer key within [lo, hi]; absent or "auto" keeps *out. */
static ds_status int_in(rd *r, const char *path, json_object *v, int64_t lo, int64_t hi,
                        int64_t *out)
{
    vstate s;
    int64_t i;
    ds_status st = get_int(r, path, v, &s, &i);
    if (st != DS_OK || s != V_SET)
        return st;
    if (i < lo || i > hi) {
        char want[96];
        snprintf(want, sizeof want, "an integer in [%lld, %lld]", (long long)lo, (long long)hi);
        return bad_type(r, path, want, v);
    }
    *out = i;
    return DS_OK;
}

/* Both sections share one reader: the keys of one are unknown in the other. With DECISIONS.md,
 * the dynamic scaler's defaults (2^16, window 1000, hysteresis 2, min 1) hold whether or not the
 * block names a scaling key (DeepSpeed falls into 2^32 and hysteresis 1 when it names none). */
static ds_status read_precision(rd *r, const char *path, json_object *v, int bf16)
{
    if (!v || json_object_is_type(v, json_type_null))
        return DS_OK;
    if (!json_object_is_type(v, json_type_object))
        return bad_type(r, path, "an object", v);
    ds_loss_scale_config *ls = &r->cfg->fp16;
    ds_status st, result = DS_OK;
    json_object_object_foreach(v, key, val) {
        char p[128];
        join(p, sizeof p, path, key);
        vstate s;
        int b = 0;
        double d;
        int64_t i;
        st = DS_OK;
        if (!strcmp(key, "enabled")) {
            if ((st = get_bool(r, p, val, &s, &b)) == DS_OK && s == V_AUTO)
                warn(r, "%s is \"auto\": ds-train decides nothing on its own and trains in fp32 "
                        "(set true or false)", p);
            if (st == DS_OK && s == V_SET && b)
                *(bf16 ? &r->bf16_on : &r->fp16_on) = 1;
        } else if (!bf16 && !strcmp(key, "auto_cast")) {
            /* DeepSpeed casts the module's floating-point inputs to fp16 (the engine rounds a
             * features network's inputs; fp16 training only) */
            if ((st = get_bool(r, p, val, &s, &b)) == DS_OK && s == V_SET)
                r->cfg->fp16_auto_cast = b;
        } else if (!bf16 && !strcmp(key, "loss_scale")) {
            if ((st = get_num(r, p, val, &s, &d)) == DS_OK && s == V_SET) {
                if (d != 0 && !(d >= FLT_MIN && d <= FLT_MAX)) /* the engine scales in fp32 */
                    return bad_type(r, p, "0 (dynamic scaling) or a number in [1.2e-38, 3.4e38] (fp32's "
                                    "normal range)", val);
                ls->loss_scale = d;
            }
        } else if (!bf16 && !strcmp(key, "initial_scale_power")) {
            i = ls->initial_scale_power;
            st = int_in(r, p, val, -100, 100, &i); /* DeepSpeed takes 2**power, negative too */
            ls->initial_scale_power = (int)i;
        } else if (!bf16 && !strcmp(key, "loss_scale_window")) {
            st = int_in(r, p, val, 1, INT64_MAX, &ls->loss_scale_window);
        } else if (!bf16 && !strcmp(key, "hysteresis")) {
            i = ls->hysteresis;
            st = int_in(r, p, val, 1, 1000000, &i);
            ls->hysteresis = (int)i;
        } else if (!bf16 && !strcmp(key, "consecutive_hysteresis")) {
            if ((st = get_bool(r, p, val, &s, &b)) == DS_OK && s == V_SET)
                ls->consecutive_hysteresis = b;
        } else if (!bf16 && !strcmp(key, "min_loss_scale")) {
            if ((st = get_num(r, p, val, &s, &d)) == DS_OK && s == V_SET) {
                if (!(d >= FLT_MIN && d <= FLT_MAX))
                    return bad_type(r, p, "a number in [1.2e-38, 3.4e38] (fp32's normal range)", val);
                ls->min_loss_scale = d;
            }
        } else if (bf16 && !strcmp(key, "check_grad_overflow")) {
            if ((st = get_bool(r, p, val, &s, &b)) == DS_OK && s == V_SET)
                r->cfg->bf16_check_overflow = b;
        } else if (bf16 && !strcmp(key, "immediate_grad_update")) {
            /* DeepSpeed: when bf16 gradients are added to the fp32 accumulators; ds-train
             * accumulates weight gradients in fp32 directly, so either value is what we do */
            st = get_bool(r, p, val, &s, &b);
        } else if (bf16 && (!strcmp(key, "loss_scale") || !strcmp(key, "initial_scale_power") ||
                            !strcmp(key, "loss_scale_window") || !strcmp(key, "hysteresis") ||
                            !strcmp(key, "consecutive_hysteresis") || !strcmp(key, "min_loss_scale"))) {
            /* fp16's loss scaler keys: DeepSpeed reads them from fp16 only (bf16 trains with a
             * scale of 1), so in bf16 they are checked for type and said to do nothing */
            st = !strcmp(key, "consecutive_hysteresis") ? get_bool(r, p, val, &s, &b) : get_num(r, p, val, &s, &d);
            if (st == DS_OK)
                warn(r, "%s has no effect: bf16 trains without loss scaling (DeepSpeed reads it from fp16 only)", p);
        } else if (!strcmp(key, "fp16_master_weights_and_grads") ||
                   !strcmp(key, "bf16_master_weights_and_grads") ||
                   !strcmp(key, "bf16_optimizer_states")) {
            if ((st = get_bool(r, p, val, &s, &b)) == DS_OK && s == V_SET && b)
                st = unsupported(r, p, val);
        } else {
            char hint[400];
            suggestion(key, bf16 ? BF16_KEYS : FP16_KEYS, hint, sizeof hint, 1);
            return fail(r, DS_ERR_INVALID, path, "unknown key \"%s\"%s", key, hint);
        }
        if (st == DS_ERR_UNSUPPORTED)
            result = st;
        else if (st != DS_OK)
            return st;
    }
    return result;
}

/* ---- optimizer (engine.md §1.4, §4.1, §4.3) ---------------------------------------------- */

/* DeepSpeed lower-cases these names before matching; any other name is looked up exactly as a
 * torch.optim class. Adam, AdamW, Lamb, Adagrad and SGD are built; clients may register more. */
static char *dup_str(const char *s);

static const field DS_OPTIMIZERS[] = {
    N("Adam"), N("AdamW"), N("Adagrad"), N("Lamb"), N("OneBitAdam"), N("OneBitLamb"),
    N("ZeroOneAdam"), N("MuAdam"), N("MuAdamW"), N("MuSGD"), N("Lion"), END};
static const field TORCH_OPTIMIZERS[] = {
    N("SGD"), N("Adadelta"), N("Adafactor"), N("Adamax"), N("ASGD"), N("LBFGS"), N("NAdam"),
    N("RAdam"), N("RMSprop"), N("Rprop"), N("SparseAdam"), END};
static const field ADAM_PARAMS[] = {
    N("lr"), N("betas"), N("eps"), N("weight_decay"), N("adam_w_mode"), N("bias_correction"),
    N("torch_adam"), N("amsgrad"), N("set_grad_none"), END};
static const field SGD_PARAMS[] = {
    N("lr"), N("momentum"), N("dampening"), N("weight_decay"), N("nesterov"), N("maximize"),
    N("foreach"), N("differentiable"), N("fused"), END};
static const field LAMB_PARAMS[] = {
    N("lr"), N("betas"), N("eps"), N("weight_decay"), N("bias_correction"), N("eps_inside_sqrt"),
    N("max_coeff"), N("min_coeff"), N("amsgrad"), END};
static const field ADAGRAD_PARAMS[] = {
    N("lr"), N("lr_decay"), N("weight_decay"), N("initial_accumulator_value"), N("eps"),
    N("foreach"), N("maximize"), N("differentiable"), N("fused"), END};

static void append(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t size, const char *fmt, ...)
{
    size_t n = strlen(buf);
    if (n + 1 >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, size - n, fmt, ap);
    va_end(ap);
}

static ds_status optimizer_type(rd *r, json_object *t, ds_optimizer_type *out)
{
    const char *name = json_object_get_string(t);
    /* client-registered optimizers first, by exact name */
    for (int i = 0; r->hints && i < r->hints->n_user_optimizers; i++)
        if (!strcmp(name, r->hints->user_optimizers[i])) {
            *out = DS_OPTIM_USER;
            return DS_OK;
        }
    static const ds_optimizer_type built[] = {DS_OPTIM_ADAM, DS_OPTIM_ADAMW, DS_OPTIM_ADAGRAD,
                                              DS_OPTIM_LAMB};
    for (const field *f = DS_OPTIMIZERS; f->name; f++)
        if (ieq(name, f->name)) {
            if (f - DS_OPTIMIZERS < 4) {
                *out = built[f - DS_OPTIMIZERS];
                return DS_OK;
            }
            return unsupported(r, "optimizer.type", t);
        }
    for (const field *f = TORCH_OPTIMIZERS; f->name; f++)
        if (!strcmp(name, f->name)) {
            if (f != TORCH_OPTIMIZERS)
                return unsupported(r, "optimizer.type", t);
            *out = DS_OPTIM_SGD;
            return DS_OK;
        }
    /* DeepSpeed: AssertionError "<name> is not a supported DeepSpeed Optimizer" ("sgd" too). */
    char hint[128] = "";
    for (const field *f = TORCH_OPTIMIZERS; f->name && !hint[0]; f++)
        if (ieq(name, f->name))
            snprintf(hint, sizeof hint,
                     " (torch optimizer names are case-sensitive: did you mean \"%s\"?)", f->name);
    if (!hint[0]) {
        suggestion(name, DS_OPTIMIZERS, hint, sizeof hint, 0);
        if (!hint[0])
            suggestion(name, TORCH_OPTIMIZERS, hint, sizeof hint, 0);
    }
    return fail(r, DS_ERR_INVALID, "optimizer.type",
                "\"%.60s\" is not a supported DeepSpeed optimizer%s; built so far: \"Adam\", "
                "\"AdamW\", \"Lamb\", \"Adagrad\", \"SGD\" and optimizers the program registers",
                name, hint);
}

/* Read a non-negative number; "auto" keeps *out (the default) and is noted in autos. */
static ds_status opt_num(rd *r, const char *path, const char *key, json_object *v, double *out,
                         vstate *s, char *autos, size_t size)
{
    double d = 0;
    ds_status st = get_num(r, path, v, s, &d);
    if (st != DS_OK)
        return st;
    if (*s == V_AUTO)
        append(autos, size, "%s%s=%g", *autos ? ", " : "", key, *out);
    if (*s == V_SET && d < 0)
        return bad_type(r, path, "a number >= 0", v);
    if (*s == V_SET)
        *out = d;
    return DS_OK;
}

static ds_status opt_betas(rd *r, const char *path, json_object *v, ds_optimizer_config *o,
                           char *autos, size_t size)
{
    if (!v)
        return DS_OK;
    if (json_object_is_type(v, json_type_string) && !strcmp(json_object_get_string(v), "auto")) {
        append(autos, size, "%sbetas=[%g, %g]", *autos ? ", " : "", o->beta1, o->beta2);
        return DS_OK;
    }
    if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != 2)
        return bad_type(r, path, "an array of 2 numbers", v);
    double b[2];
    for (int k = 0; k < 2; k++) {
        char p[192];
        vstate s;
        json_object *e = json_object_array_get_idx(v, (size_t)k);
        snprintf(p, sizeof p, "%s[%d]", path, k);
        ds_status st = read_num(r, p, e, "a number", &s, &b[k]);
        if (st != DS_OK)
            return st;
        if (s != V_SET || b[k] < 0 || b[k] >= 1) /* torch: "Invalid beta parameter" */
            return bad_type(r, p, "a number in [0, 1)", e);
    }
    o->beta1 = b[0];
    o->beta2 = b[1];
    return DS_OK;
}

static ds_status read_optimizer(rd *r, json_object *v)
{
    ds_optimizer_config *o = &r->cfg->optimizer;
    json_object *type = NULL, *params = NULL;
    ds_status st;
    if (!v || (json_object_is_type(v, json_type_object) && json_object_object_length(v) == 0))
        return DS_OK; /* no optimizer: the client supplies one */
    if (!json_object_is_type(v, json_type_object))
        return bad_type(r, "optimizer", "an object", v);
    int refused = 0;
    json_object_object_foreach(v, key, val) {
        vstate s;
        int b;
        if (!strcmp(key, "type")) {
            type = val;
        } else if (!strcmp(key, "params")) {
            params = val;
        } else if (!strcmp(key, "legacy_fusion")) {
            if ((st = get_bool(r, "optimizer.legacy_fusion", val, &s, &b)) != DS_OK)
                return st;
            if (s == V_SET && b)
                refused = unsupported(r, "optimizer.legacy_fusion", val);
        } else {
            static const field known[] = {N("type"), N("params"), N("legacy_fusion"), END};
            char hint[400];
            suggestion(key, known, hint, sizeof hint, 1);
            return fail(r, DS_ERR_INVALID, "optimizer", "unknown key \"%s\"%s", key, hint);
        }
    }
    if (!type)
        return fail(r, DS_ERR_INVALID, "optimizer.type",
                    "missing: name the optimizer (\"Adam\", \"AdamW\", \"Lamb\", \"Adagrad\" or \"SGD\")");
    if (!json_object_is_type(type, json_type_string))
        return bad_type(r, "optimizer.type", "a string", type);
    if ((st = optimizer_type(r, type, &o->type)) != DS_OK)
        return st;
    snprintf(o->name, sizeof o->name, "%s", json_object_get_string(type));
    if (params && !json_object_is_type(params, json_type_object))
        return bad_type(r, "optimizer.params", "an object", params);
    json_object *mg;
    if (params && json_object_object_get_ex(params, "max_grad_norm", &mg))
        return fail(r, DS_ERR_INVALID, "optimizer.params.max_grad_norm",
                    "'max_grad_norm' is not supported as an optimizer parameter, please switch to "
                    "using the deepspeed parameter 'gradient_clipping'");

    const int sgd = o->type == DS_OPTIM_SGD, lamb = o->type == DS_OPTIM_LAMB,
              adagrad = o->type == DS_OPTIM_ADAGRAD;
    const int adam = o->type == DS_OPTIM_ADAM || o->type == DS_OPTIM_ADAMW;
    char autos[200] = "";
    vstate lr_state = V_ABSENT, s;
    int adam_w_mode = 1, adam_w_set = 0, b;
    if (sgd) { /* torch.optim.SGD defaults; lr has none */
        o->momentum = o->dampening = o->weight_decay = 0.0;
        o->nesterov = 0;
    } else if (adagrad) { /* torch.optim.Adagrad defaults (engine.md §4.4) */
        o->lr = 1e-2;
        o->eps = 1e-10;
    } else { /* FusedAdam and FusedLamb defaults (engine.md §4.1, §4.2) */
        o->lr = 1e-3;
        o->beta1 = 0.9;
        o->beta2 = 0.999;
        o->eps = 1e-8;
        o->weight_decay = 0.0;
        o->bias_correction = 1;
        o->max_coeff = 10.0;
        o->min_coeff = 0.01;
    }
    /* torch_adam: DeepSpeed hands the other params to torch.optim.AdamW (or Adam where
     * adam_w_mode is false for "Adam"): the same arithmetic, but AdamW's weight_decay defaults
     * to torch's 0.01, and FusedAdam-only keys are torch's TypeError */
    int torch_adam = 0, torch_adamw = 0;
    if (adam && params) {
        json_object *tv;
        int awm = 1, b2;
        vstate s2;
        /* every spelling get_bool takes ("true", 1, ...), as the loop below reads them */
        if (json_object_object_get_ex(params, "torch_adam", &tv)) {
            if ((st = get_bool(r, "optimizer.params.torch_adam", tv, &s2, &b2)) != DS_OK)
                return st;
            torch_adam = s2 == V_SET && b2;
        }
        if (json_object_object_get_ex(params, "adam_w_mode", &tv)) {
            if ((st = get_bool(r, "optimizer.params.adam_w_mode", tv, &s2, &b2)) != DS_OK)
                return st;
            if (s2 == V_SET)
                awm = b2;
        }
        torch_adamw = torch_adam && (o->type == DS_OPTIM_ADAMW || awm);
        if (torch_adamw)
            o->weight_decay = 0.01;
    }
    if (o->type == DS_OPTIM_USER) {
        /* the client's optimizer reads its own parameters: keep them as JSON text */
        const char *js = params ? json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN) : "{}";
        json_object *lr_v;
        free(r->cfg->optimizer_params_json);
        if (!(r->cfg->optimizer_params_json = dup_str(js)))
            return fail(r, DS_ERR_NOMEM, "optimizer.params", "out of memory");
        o->params_json = r->cfg->optimizer_params_json;
        if (params && json_object_object_get_ex(params, "lr", &lr_v) &&
            (st = opt_num(r, "optimizer.params.lr", "lr", lr_v, &o->lr, &lr_state, autos,
                          sizeof autos)) != DS_OK)
            return st;
        r->cfg->has_optimizer = 1;
        return DS_OK;
    }
    if (params) {
        json_object_object_foreach(params, pkey, pval) {
            char path[160];
            join(path, sizeof path, "optimizer.params", pkey);
            st = DS_OK;
            if (!strcmp(pkey, "lr"))
                st = opt_num(r, path, pkey, pval, &o->lr, &lr_state, autos, sizeof autos);
            else if (!strcmp(pkey, "weight_decay"))
                st = opt_num(r, path, pkey, pval, &o->weight_decay, &s, autos, sizeof autos);
            else if (!sgd && !strcmp(pkey, "eps"))
                st = opt_num(r, path, pkey, pval, &o->eps, &s, autos, sizeof autos);
            else if ((adam || lamb) && !strcmp(pkey, "betas"))
                st = opt_betas(r, path, pval, o, autos, sizeof autos);
            else if (adam && !strcmp(pkey, "adam_w_mode")) {
                if ((st = get_bool(r, path, pval, &s, &b)) == DS_OK && s == V_SET)
                    adam_w_mode = b, adam_w_set = 1;
            } else if (torch_adam && (!strcmp(pkey, "bias_correction") || !strcmp(pkey, "set_grad_none"))) {
                return fail(r, DS_ERR_INVALID, path, "torch.optim.%s, which torch_adam selects, takes no %s "
                            "(DeepSpeed stops with a TypeError there); remove %s or torch_adam",
                            torch_adamw ? "AdamW" : "Adam", pkey, pkey);
            } else if ((adam || lamb) && !strcmp(pkey, "bias_correction")) {
                if ((st = get_bool(r, path, pval, &s, &b)) == DS_OK && s == V_SET)
                    o->bias_correction = b;
            } else if (lamb && !strcmp(pkey, "eps_inside_sqrt")) {
                if ((st = get_bool(r, path, pval, &s, &b)) == DS_OK && s == V_SET)
                    o->eps_inside_sqrt = b;
            } else if (lamb && !strcmp(pkey, "max_coeff"))
                st = opt_num(r, path, pkey, pval, &o->max_coeff, &s, autos, sizeof autos);
            else if (lamb && !strcmp(pkey, "min_coeff"))
                st = opt_num(r, path, pkey, pval, &o->min_coeff, &s, autos, sizeof autos);
            else if (adagrad && !strcmp(pkey, "lr_decay"))
                st = opt_num(r, path, pkey, pval, &o->lr_decay, &s, autos, sizeof autos);
            else if (adagrad && !strcmp(pkey, "initial_accumulator_value"))
                st = opt_num(r, path, pkey, pval, &o->initial_accumulator_value, &s, autos, sizeof autos);
            else if ((adagrad || sgd) && (!strcmp(pkey, "foreach") || !strcmp(pkey, "differentiable") ||
                                          !strcmp(pkey, "fused"))) {
                st = get_bool(r, path, pval, &s, &b); /* same math either way */
            } else if ((adagrad || sgd) && !strcmp(pkey, "maximize")) {
                if ((st = get_bool(r, path, pval, &s, &b)) == DS_OK && s == V_SET && b)
                    st = unsupported(r, path, pval);
            } else if (adam && (!strcmp(pkey, "torch_adam") || !strcmp(pkey, "set_grad_none"))) {
                st = get_bool(r, path, pval, &s, &b); /* same math either way */
            } else if ((adam || lamb) && !strcmp(pkey, "amsgrad")) {
                if ((st = get_bool(r, path, pval, &s, &b)) == DS_OK && s == V_SET && b)
                    st = unsupported(r, path, pval); /* FusedAdam refuses AMSGrad too */
            } else if (sgd && !strcmp(pkey, "momentum"))
                st = opt_num(r, path, pkey, pval, &o->momentum, &s, autos, sizeof autos);
            else if (sgd && !strcmp(pkey, "dampening"))
                st = opt_num(r, path, pkey, pval, &o->dampening, &s, autos, sizeof autos);
            else if (sgd && !strcmp(pkey, "nesterov")) {
                if ((st = get_bool(r, path, pval, &s, &b)) == DS_OK && s == V_SET)
                    o->nesterov = b;
            } else {
                char hint[400];
                suggestion(pkey, sgd ? SGD_PARAMS : lamb ? LAMB_PARAMS : adagrad ? ADAGRAD_PARAMS : ADAM_PARAMS,
                           hint, sizeof hint, 1);
                return fail(r, DS_ERR_INVALID, "optimizer.params", "unknown key \"%s\" for %s%s",
                            pkey, o->name, hint);
            }
            if (st == DS_ERR_UNSUPPORTED)
                refused = 1;
            else if (st != DS_OK)
                return st;
        }
    }
    if (refused)
        return DS_ERR_UNSUPPORTED;
    if (sgd) {
        if (lr_state != V_SET) /* torch.optim.SGD has no default learning rate */
            return fail(r, DS_ERR_INVALID, "optimizer.params.lr",
                        "%s: SGD has no default learning rate; give a number",
                        lr_state == V_AUTO ? "\"auto\" cannot be inferred" : "missing");
        if (o->nesterov && (o->momentum <= 0 || o->dampening != 0))
            return fail(r, DS_ERR_INVALID, "optimizer.params.nesterov",
                        "Nesterov momentum requires a momentum and zero dampening (found "
                        "momentum %g, dampening %g)", o->momentum, o->dampening);
    } else if (lamb) {
        if (o->min_coeff > o->max_coeff)
            return fail(r, DS_ERR_INVALID, "optimizer.params.min_coeff",
                        "%g is above max_coeff %g", o->min_coeff, o->max_coeff);
    } else if (adam) {
        /* DeepSpeed: effective AdamW = (type == adamw) or adam_w_mode, default true. So "Adam"
         * is AdamW unless adam_w_mode is false (DECISIONS.md keeps this). */
        if (o->type == DS_OPTIM_ADAMW && adam_w_set && !adam_w_mode)
            warn(r, "optimizer.params.adam_w_mode=false has no effect with \"%s\" (it is always "
                    "AdamW; use \"Adam\" for L2 weight decay)", o->name);
        o->adam_w_mode = o->type == DS_OPTIM_ADAMW || adam_w_mode;
    }
    if (autos[0])
        warn(r, "optimizer.params: \"auto\" values take their defaults: %s", autos);
    r->cfg->has_optimizer = 1;
    return DS_OK;
}

/* ---- batch sizes (engine.md §1.1: _set_batch_related_parameters, then _batch_assertion) ---- */

static int64_t floordiv(int64_t a, int64_t b) /* Python's // */
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static ds_status resolve_batch(rd *r, int world_size, const ds_config_hints *hints)
{
    const int64_t W = world_size;
    int set[3];
    int64_t v[3];
    char how[3][160] = {"", "", ""};
    for (int k = 0; k < 3; k++) {
        set[k] = r->bstate[k] == V_SET;
        v[k] = r->bval[k];
    }
    if (!set[TB] && !set[MB]) { /* nothing to infer the micro batch from: ask the caller */
        const char *tb = r->bstate[TB] == V_AUTO ? "\"auto\"" : "missing";
        const char *mb = r->bstate[MB] == V_AUTO ? "\"auto\"" : "missing";
        if (!hints || hints->micro_batch == 0)
            return fail(r, DS_ERR_INVALID, "",
                        "train_batch_size is %s and train_micro_batch_size_per_gpu is %s: "
                        "cannot infer the batch size; set one of them, or give the micro-batch to the "
                        "program (ds-train --micro-batch N, as HuggingFace fills in \"auto\") (DeepSpeed: "
                        "either train_batch_size or train_micro_batch_size_per_gpu needs to be provided)",
                        tb, mb);
        set[MB] = 1;
        v[MB] = hints->micro_batch;
        snprintf(how[MB], sizeof how[MB], " (supplied by the caller)");
        warn(r, "train_micro_batch_size_per_gpu is %s: using %lld supplied by the caller", mb,
             (long long)v[MB]);
    }
    if (set[TB] && set[MB] && set[GAS]) {
    } else if (set[TB] && set[MB]) {
        if (v[MB] == 0) /* Python would raise ZeroDivisionError; report check 2 */
            return fail(r, DS_ERR_INVALID, BATCH_KEYS[MB], "0 has to be greater than 0");
        v[GAS] = floordiv(floordiv(v[TB], v[MB]), W);
        snprintf(how[GAS], sizeof how[GAS],
                 " (inferred as train_batch_size // train_micro_batch_size_per_gpu // world_size"
                 " = %lld // %lld // %lld)", (long long)v[TB], (long long)v[MB], (long long)W);
    } else if (set[TB] && set[GAS]) {
        if (v[GAS] == 0)
            return fail(r, DS_ERR_INVALID, BATCH_KEYS[GAS], "0 has to be greater than 0");
        v[MB] = floordiv(floordiv(v[TB], W), v[GAS]);
        snprintf(how[MB], sizeof how[MB],
                 " (inferred as train_batch_size // world_size // gradient_accumulation_steps"
                 " = %lld // %lld // %lld)", (long long)v[TB], (long long)W, (long long)v[GAS]);
    } else if (set[TB]) {
        v[GAS] = 1;
        v[MB] = floordiv(v[TB], W);
        snprintf(how[MB], sizeof how[MB],
                 " (inferred as train_batch_size // world_size = %lld // %lld)", (long long)v[TB],
                 (long long)W);
    } else {
        if (!set[GAS])
            v[GAS] = 1;
        if (__builtin_mul_overflow(v[MB], v[GAS], &v[TB]) ||
            __builtin_mul_overflow(v[TB], W, &v[TB]))
            return fail(r, DS_ERR_INVALID, BATCH_KEYS[TB],
                        "train_micro_batch_size_per_gpu * gradient_accumulation_steps * "
                        "world_size is too large");
        snprintf(how[TB], sizeof how[TB],
                 " (inferred as train_micro_batch_size_per_gpu * gradient_accumulation_steps * "
                 "world_size = %lld * %lld * %lld)", (long long)v[MB], (long long)v[GAS],
                 (long long)W);
    }
    for (int k = 0; k < 3; k++) /* DeepSpeed's checks 1-3, in its order */
        if (v[k] <= 0)
            return fail(r, DS_ERR_INVALID, BATCH_KEYS[k], "%lld%s has to be greater than 0",
                        (long long)v[k], how[k]);
    int64_t prod;
    if (__builtin_mul_overflow(v[MB], v[GAS], &prod) || __builtin_mul_overflow(prod, W, &prod) ||
        prod != v[TB]) {
        char note[400] = "";
        for (int k = MB; k <= GAS; k++)
            if (how[k][0])
                append(note, sizeof note, "; %s %lld%s", BATCH_KEYS[k], (long long)v[k], how[k]);
        return fail(r, DS_ERR_INVALID, BATCH_KEYS[TB],
                    "%lld != %lld * %lld * %lld (train_batch_size must equal "
                    "train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size%s)",
                    (long long)v[TB], (long long)v[MB], (long long)v[GAS], (long long)W, note);
    }
    r->cfg->train_batch_size = v[TB];
    r->cfg->micro_batch = v[MB];
    r->cfg->grad_accum = v[GAS];
    r->cfg->world_size = world_size;
    return DS_OK;
}

/* ---- entry points ------------------------------------------------------------------------ */

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}

/* Takes root and text (owned). */
static ds_status load(ds_config *cfg, json_object *root, char *text, const char *name,
                      int world_size, int strict, const ds_config_hints *hints, ds_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->gradient_predivide_factor = 1.0; /* DeepSpeed's default */
    cfg->json_text = text;
    cfg->source_name = dup_str(name);
    rd r = {.cfg = cfg, .name = name, .err = err, .strict = strict, .hints = hints};
    snprintf(cfg->tensorboard.job_name, sizeof cfg->tensorboard.job_name, "DeepSpeedJobName");
    snprintf(cfg->csv_monitor.job_name, sizeof cfg->csv_monitor.job_name, "DeepSpeedJobName");
    cfg->zero = (ds_zero_config){.stage = 0, .reduce_bucket_size = 500000000,
                                 .allgather_bucket_size = 500000000, .reduce_scatter = 1,
                                 .allgather_partitions = 1, .param_persistence_threshold = 100000,
                                 .model_persistence_threshold = INT64_MAX};
    cfg->fp16 = (ds_loss_scale_config){.loss_scale = 0, .initial_scale_power = 16,
                                       .loss_scale_window = 1000, .hysteresis = 2,
                                       .consecutive_hysteresis = 0, .min_loss_scale = 1};
    ds_status st = DS_OK;
    if (!text || !cfg->source_name)
        st = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", name);
    else if (world_size < 1)
        st = ds_error_set(err, DS_ERR_INVALID, "%s: world_size must be at least 1, got %d", name,
                          world_size);
    else if (!json_object_is_type(root, json_type_object))
        st = bad_type(&r, "", "a JSON object at the top level", root);
    else if (json_object_object_get_ex(root, "layers", NULL) && json_object_object_get_ex(root, "input", NULL))
        st = ds_error_set(err, DS_ERR_INVALID, "%s: a network file (it has \"input\" and \"layers\"), not a "
                          "DeepSpeed config: the network comes first, the config after --config", name);
    if (st == DS_OK) {
        json_object *bv = NULL; /* (a null bf16 is absent: DeepSpeed then reads bfloat16) */
        r.skip_bfloat16 = json_object_object_get_ex(root, "bf16", &bv) && bv &&
                          json_object_object_get_ex(root, "bfloat16", NULL);
        st = check_section(&r, "", root, TOP_FIELDS);
    }
    /* data_types.grad_accum_dtype: accepted where it names what ds does (fp16 gradients
     * accumulate in fp16, fp32 and bf16 ones in fp32: ds-config(5)); DeepSpeed refuses fp16 with
     * fp32 accumulation (without ZeRO) and accumulates bf16 in bf16 where asked */
    if ((st == DS_OK || st == DS_ERR_UNSUPPORTED) && r.accum_dtype && !(r.fp16_on && r.bf16_on) &&
        r.accum16 != (r.fp16_on ? 1 : 0)) /* (both on: the conflict's error below says what is wrong) */
        st = refuse(&r, "data_types.grad_accum_dtype=%s is not supported yet (%s training accumulates its "
                    "gradients in %s)", json_object_get_string(r.accum_dtype),
                    r.fp16_on ? "fp16" : r.bf16_on ? "bf16" : "fp32", r.fp16_on ? "fp16" : "fp32");
    if (st == DS_ERR_UNSUPPORTED || (st == DS_OK && r.n_refused))
        st = ds_error_set(err, DS_ERR_UNSUPPORTED, "%s: %s", name, r.refused);
    if (st == DS_OK && r.fp16_on && r.bf16_on)
        st = fail(&r, DS_ERR_INVALID, "bf16.enabled",
                  "true together with fp16.enabled: bfloat16 and fp16 modes cannot be "
                  "simultaneously enabled");
    if (st == DS_OK)
        cfg->precision = r.fp16_on ? DS_PREC_FP16 : r.bf16_on ? DS_PREC_BF16 : DS_PREC_FP32;
    if (st == DS_OK && r.no_allgather)
        cfg->zero.allgather_partitions = 0;
    if (st == DS_OK)
        st = resolve_batch(&r, world_size, hints);
    if (st == DS_OK) /* the engine's default optimizer (no block) has lr 1e-3 too */
        ds_sched_set_base_lr(&cfg->scheduler, cfg->has_optimizer ? cfg->optimizer.lr : 1e-3);
    json_object_put(root);
    if (st != DS_OK)
        ds_config_free(cfg);
    return st;
}

ds_status ds_config_load_file(ds_config *cfg, const char *path, int world_size, int strict,
                              const ds_config_hints *hints, ds_error *err)
{
    json_object *root;
    char *text = NULL;
    if (!cfg || !path)
        return ds_error_set(err, DS_ERR_INVALID, "ds_config_load_file: no config or path");
    memset(cfg, 0, sizeof *cfg);
    ds_status st = ds_json_parse_file(path, &root, &text, err);
    if (st != DS_OK)
        return st;
    return load(cfg, root, text, path, world_size, strict, hints, err);
}

ds_status ds_config_load_string(ds_config *cfg, const char *json, const char *name,
                                int world_size, int strict, const ds_config_hints *hints,
                                ds_error *err)
{
    json_object *root;
    if (!name)
        name = "ds_config";
    if (!cfg || !json)
        return ds_error_set(err, DS_ERR_INVALID, "%s: no config or JSON text", name);
    memset(cfg, 0, sizeof *cfg);
    ds_status st = ds_json_parse(json, name, &root, err);
    if (st != DS_OK)
        return st;
    return load(cfg, root, dup_str(json), name, world_size, strict, hints, err);
}

void ds_config_free(ds_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->source_name);
    free(cfg->json_text);
    free(cfg->optimizer_params_json);
    memset(cfg, 0, sizeof *cfg);
}
