/* LR schedules: DeepSpeed's formulas as a pure function of the iteration (engine.md §3, with
 * the choices of DECISIONS.md), and the reader of ds.json's "scheduler" block that config.c
 * calls. Stepping the schedule (once per applied update) is the engine's business. */
#include "ds/sched.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_util.h"
#include "optim/sched_parse.h"

/* ---- the formulas ------------------------------------------------------------------------ */

const char *ds_sched_name(ds_sched_type type)
{
    switch (type) {
    case DS_SCHED_LR_RANGE_TEST: return "LRRangeTest";
    case DS_SCHED_ONE_CYCLE: return "OneCycle";
    case DS_SCHED_WARMUP_LR: return "WarmupLR";
    case DS_SCHED_WARMUP_DECAY_LR: return "WarmupDecayLR";
    case DS_SCHED_WARMUP_COSINE_LR: return "WarmupCosineLR";
    case DS_SCHED_NONE: break;
    }
    return "none";
}

void ds_sched_set_base_lr(ds_sched_config *s, double optimizer_lr)
{
    s->base_lr = optimizer_lr;
    if (s->warmup_max_lr_auto)
        s->warmup_max_lr = optimizer_lr;
}

/* DeepSpeed: W = max(2, warmup_num_steps); log: ln(k+1)/ln(W), linear: k/W, for 0 <= k < W.
 * k = -1 (construction) gives 0, the same value as k = 0. */
static double warmup_fraction(const ds_sched_config *s, int64_t k, int64_t W)
{
    if (k < 0)
        return 0.0;
    if (s->warmup_type == DS_WARMUP_LINEAR)
        return (double)k / (double)W;
    return log((double)k + 1.0) / log((double)W);
}

static int64_t warmup_steps(const ds_sched_config *s)
{
    return s->warmup_num_steps > 2 ? s->warmup_num_steps : 2;
}

static int one_cycle(const ds_sched_config *s, int64_t k, double *lr, double *mom)
{
    const double first = s->cycle_first_step_size;
    const double second = s->cycle_second_step_size > 0 ? s->cycle_second_step_size : first;
    const double total = first + second, ratio = first / total;
    double m;
    if ((double)k < total) {
        /* triangular cycle: sf rises 0 -> 1 over the first step size, falls back over the
         * second; k = -1 gives sf = 0 (min lr, max momentum) */
        double b = (double)k + 1.0;
        double cycle = floor(1.0 + b / total);
        double x = 1.0 + b / total - cycle;
        double sf = x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
        *lr = s->cycle_min_lr + (s->cycle_max_lr - s->cycle_min_lr) * sf;
        m = s->cycle_max_mom - (s->cycle_max_mom - s->cycle_min_mom) * sf;
    } else {
        /* decay phase: d = k - total + 1, true division (no staircase) */
        double d = (double)k - total + 1.0;
        *lr = s->cycle_min_lr;
        m = s->cycle_max_mom;
        if (s->decay_step_size > 0 && s->decay_lr_rate > 0)
            *lr = s->cycle_min_lr / (1.0 + s->decay_lr_rate * d / s->decay_step_size);
        if (s->decay_step_size > 0 && s->decay_mom_rate > 0) {
            double cap = s->cycle_max_mom > DS_SCHED_MOM_CAP ? s->cycle_max_mom : DS_SCHED_MOM_CAP;
            m = s->cycle_max_mom * (1.0 + s->decay_mom_rate * d / s->decay_step_size);
            if (m > cap)
                m = cap;
        }
    }
    if (!s->cycle_momentum)
        return 0;
    if (mom)
        *mom = m;
    return 1;
}

int ds_sched_lr(const ds_sched_config *s, int64_t k, double *lr, double *mom)
{
    if (k < -1)
        k = -1;
    const int64_t W = warmup_steps(s), T = s->total_num_steps;
    double gamma;
    switch (s->type) {
    case DS_SCHED_LR_RANGE_TEST: {
        double interval = ((double)k + 1.0) / s->lr_range_test_step_size;
        if (s->lr_range_test_staircase)
            interval = floor(interval);
        *lr = s->lr_range_test_min_lr * (1.0 + s->lr_range_test_step_rate * interval);
        return 0;
    }
    case DS_SCHED_ONE_CYCLE:
        return one_cycle(s, k, lr, mom);
    case DS_SCHED_WARMUP_LR:
    case DS_SCHED_WARMUP_DECAY_LR:
        if (k < W)
            gamma = warmup_fraction(s, k, W);
        else if (s->type == DS_SCHED_WARMUP_LR)
            gamma = 1.0;
        else { /* linear decay to warmup_min_lr at k = T, then flat */
            double span = T - W > 1 ? (double)(T - W) : 1.0;
            gamma = (double)(T - k) / span;
            if (gamma < 0)
                gamma = 0;
        }
        *lr = s->warmup_min_lr + (s->warmup_max_lr - s->warmup_min_lr) * gamma;
        return 0;
    case DS_SCHED_WARMUP_COSINE_LR: {
        double ratio;
        if (k < W) {
            ratio = s->warmup_min_ratio + warmup_fraction(s, k, W) * (1.0 - s->warmup_min_ratio);
        } else {
            /* DECISIONS.md: past total_num_steps the lr stays at the cosine minimum (DeepSpeed
             * lets the cosine climb again) */
            double step = (double)(k - W + 1), span = (double)(T - W);
            if (step > span)
                step = span;
            ratio = s->cos_min_ratio + (1.0 - s->cos_min_ratio) * (1.0 + cos(M_PI * step / span)) / 2.0;
            if (ratio < 0)
                ratio = 0;
        }
        *lr = s->base_lr * ratio;
        return 0;
    }
    case DS_SCHED_NONE:
        break;
    }
    *lr = s->base_lr;
    return 0;
}

ds_status ds_sched_set_total_steps(ds_sched_config *s, int64_t steps, ds_error *err)
{
    if (!s->total_num_steps_auto)
        return DS_OK;
    const int64_t W = warmup_steps(s);
    if (steps < 1)
        return ds_error_set(err, DS_ERR_INVALID,
                            "scheduler.params.total_num_steps is \"auto\": the run's %lld steps: expected 1 "
                            "or more", (long long)steps);
    if (s->type == DS_SCHED_WARMUP_COSINE_LR && steps <= W)
        return ds_error_set(err, DS_ERR_INVALID,
                            "scheduler.params.total_num_steps is \"auto\": the run's %lld steps do not "
                            "fit %s (it needs more than warmup_num_steps, %lld)", (long long)steps,
                            ds_sched_name(s->type), (long long)W);
    s->total_num_steps = steps;
    return DS_OK;
}

void ds_sched_total_note(const ds_sched_config *s, char *buf, size_t n)
{
    if (n)
        buf[0] = 0;
    const int64_t W = warmup_steps(s);
    if (n && s->total_num_steps_auto && s->type == DS_SCHED_WARMUP_DECAY_LR && s->total_num_steps < W)
        snprintf(buf, n, "scheduler.params.total_num_steps (\"auto\": the run's %lld steps) is less than "
                 "warmup_num_steps %lld: the lr never reaches warmup_max_lr (DeepSpeed warns too)",
                 (long long)s->total_num_steps, (long long)W);
}

/* ---- the "scheduler" block --------------------------------------------------------------- */

typedef struct prd {
    const char *file;
    ds_error *err;
} prd;

static ds_status bad(prd *r, const char *path, const char *expected, json_object *v)
{
    char found[96];
    ds_json_render(v, found, sizeof found);
    return ds_error_set(r->err, DS_ERR_INVALID, "%s: %s: expected %s, found %s", r->file, path,
                        expected, found);
}

/* Which keys each type takes (DeepSpeed's constructor arguments, less the optimizer). */
static const char *const RANGE_KEYS[] = {
    "lr_range_test_min_lr", "lr_range_test_step_size", "lr_range_test_step_rate",
    "lr_range_test_staircase", "last_batch_iteration", NULL};
static const char *const CYCLE_KEYS[] = {
    "cycle_min_lr", "cycle_max_lr", "decay_lr_rate", "cycle_first_step_size",
    "cycle_second_step_size", "cycle_first_stair_count", "cycle_second_stair_count",
    "decay_step_size", "cycle_momentum", "cycle_min_mom", "cycle_max_mom", "decay_mom_rate",
    "last_batch_iteration", NULL};
static const char *const WARMUP_KEYS[] = {
    "warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration",
    NULL};
static const char *const DECAY_KEYS[] = {
    "total_num_steps", "warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type",
    "last_batch_iteration", NULL};
static const char *const COSINE_KEYS[] = {
    "total_num_steps", "warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type",
    "last_batch_iteration", NULL};

static const struct {
    const char *name;
    ds_sched_type type;
    const char *const *keys;
} TYPES[] = {
    {"LRRangeTest", DS_SCHED_LR_RANGE_TEST, RANGE_KEYS},
    {"OneCycle", DS_SCHED_ONE_CYCLE, CYCLE_KEYS},
    {"WarmupLR", DS_SCHED_WARMUP_LR, WARMUP_KEYS},
    {"WarmupDecayLR", DS_SCHED_WARMUP_DECAY_LR, DECAY_KEYS},
    {"WarmupCosineLR", DS_SCHED_WARMUP_COSINE_LR, COSINE_KEYS},
};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])

/* DeepSpeed falls back to torch.optim.lr_scheduler: valid names, not built here. */
static const char *const TORCH_SCHEDULERS[] = {
    "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR",
    "ExponentialLR", "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau",
    "CyclicLR", "CosineAnnealingWarmRestarts", "OneCycleLR", "PolynomialLR", "LRScheduler", NULL};

static int ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? *a + 32 : *a, y = *b >= 'A' && *b <= 'Z' ? *b + 32 : *b;
        if (x != y)
            return 0;
    }
    return *a == *b;
}

/* " (did you mean \"x\"?)" for a near name in list (edit distance at most a third of the
 * length, case-insensitive), else "". */
static void suggest(const char *key, const char *const *list, char *buf, size_t size)
{
    char a[65], b[65];
    int best = 1000;
    const char *name = NULL;
    size_t la = strlen(key);
    buf[0] = '\0';
    if (la > 64)
        return;
    for (size_t i = 0; i <= la; i++)
        a[i] = key[i] >= 'A' && key[i] <= 'Z' ? key[i] + 32 : key[i];
    for (int j = 0; list[j]; j++) {
        size_t lb = strlen(list[j]);
        if (lb > 64)
            continue;
        for (size_t i = 0; i <= lb; i++)
            b[i] = list[j][i] >= 'A' && list[j][i] <= 'Z' ? list[j][i] + 32 : list[j][i];
        int d = ds_edit_distance(a, b);
        if (d < best && d <= (la / 3 > 2 ? (int)(la / 3) : 2)) {
            best = d;
            name = list[j];
        }
    }
    if (name)
        snprintf(buf, size, " (did you mean \"%s\"?)", name);
}

/* "auto" (HF Trainer fills these in; we take the default and say so) */
static int is_auto(json_object *v)
{
    return json_object_is_type(v, json_type_string) && !strcmp(json_object_get_string(v), "auto");
}

/* A number: JSON numbers, numeric strings ("1e-3"), or a list of one number (DeepSpeed takes a
 * list with one value per parameter group; ds trains one group). */
static ds_status get_number(prd *r, const char *path, json_object *v, double min, int min_open,
                            double *out)
{
    json_object *x = v;
    if (json_object_is_type(v, json_type_array)) {
        if (json_object_array_length(v) != 1)
            return bad(r, path, "a number or a list of 1 number (ds trains one parameter group)", v);
        x = json_object_array_get_idx(v, 0);
    }
    double d;
    char *end = NULL;
    switch (json_object_get_type(x)) {
    case json_type_int: d = (double)json_object_get_int64(x); break;
    case json_type_double: d = json_object_get_double(x); break;
    case json_type_string:
        d = strtod(json_object_get_string(x), &end);
        if (end == json_object_get_string(x) || *end || strpbrk(json_object_get_string(x), "xX"))
            return bad(r, path, "a number", v); /* (no hex: Python's float() has none) */
        break;
    default:
        return bad(r, path, "a number", v);
    }
    if (!isfinite(d) || d < min || (min_open && d == min)) {
        char want[64];
        snprintf(want, sizeof want, "a number %s %g", min_open ? ">" : ">=", min);
        return bad(r, path, want, v);
    }
    *out = d;
    return DS_OK;
}

static ds_status get_integer(prd *r, const char *path, json_object *v, int64_t min, int64_t *out)
{
    double d;
    char want[64];
    snprintf(want, sizeof want, "an integer >= %lld", (long long)min);
    if (json_object_is_type(v, json_type_array) || get_number(r, path, v, -1e300, 0, &d) != DS_OK ||
        d != floor(d) || d < (double)min || d > 9e18)
        return bad(r, path, want, v);
    *out = (int64_t)d;
    return DS_OK;
}

/* pydantic's lax booleans, as config.c's get_bool: 0/1 and true/false, yes/no, on/off, t/f, y/n,
 * 1/0 as strings in any case */
static ds_status get_boolean(prd *r, const char *path, json_object *v, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "t", "y", "1", NULL};
    static const char *const no[] = {"false", "no", "off", "f", "n", "0", NULL};
    if (json_object_is_type(v, json_type_boolean)) {
        *out = json_object_get_boolean(v);
        return DS_OK;
    }
    if (json_object_is_type(v, json_type_int) &&
        (json_object_get_int64(v) == 0 || json_object_get_int64(v) == 1)) {
        *out = (int)json_object_get_int64(v);
        return DS_OK;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        for (int i = 0; yes[i]; i++)
            if (ieq(s, yes[i]) || ieq(s, no[i])) {
                *out = ieq(s, yes[i]);
                return DS_OK;
            }
    }
    return bad(r, path, "a boolean", v);
}

static void add_note(char *notes, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add_note(char *notes, size_t size, const char *fmt, ...)
{
    size_t n = strlen(notes);
    if (n + 1 >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(notes + n, size - n, fmt, ap);
    va_end(ap);
}

static void defaults(ds_sched_config *s, ds_sched_type type)
{
    memset(s, 0, sizeof *s);
    s->type = type;
    s->base_lr = 1e-3;
    s->lr_range_test_min_lr = 1e-3;
    s->lr_range_test_step_size = 2000;
    s->lr_range_test_step_rate = 1.0;
    s->cycle_first_step_size = 2000;
    s->cycle_second_step_size = 0; /* equal to the first */
    s->cycle_momentum = 1;
    s->cycle_min_mom = 0.8;
    s->cycle_max_mom = 0.9;
    s->warmup_min_lr = 0;
    s->warmup_max_lr = 1e-3;
    s->warmup_num_steps = 1000;
    s->warmup_type = DS_WARMUP_LOG;
    s->cos_min_ratio = 1e-4;
}

ds_status ds_sched_parse(ds_sched_config *s, json_object *v, const char *file, char *warning,
                         size_t warning_size, ds_error *err)
{
    prd r = {.file = file, .err = err};
    warning[0] = '\0';
    memset(s, 0, sizeof *s);
    if (!v || (json_object_is_type(v, json_type_object) && json_object_object_length(v) == 0))
        return DS_OK;
    if (!json_object_is_type(v, json_type_object))
        return bad(&r, "scheduler", "an object", v);
    json_object *type = NULL, *params = NULL;
    json_object_object_foreach(v, key, val) {
        if (!strcmp(key, "type"))
            type = val;
        else if (!strcmp(key, "params"))
            params = val;
        else {
            static const char *const known[] = {"type", "params", NULL};
            char hint[96];
            suggest(key, known, hint, sizeof hint);
            return ds_error_set(err, DS_ERR_INVALID, "%s: scheduler: unknown key \"%s\"%s", file, key, hint);
        }
    }
    if (!type)
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: scheduler.type: missing: name the scheduler (LRRangeTest, OneCycle, "
                            "WarmupLR, WarmupDecayLR or WarmupCosineLR)", file);
    if (!json_object_is_type(type, json_type_string))
        return bad(&r, "scheduler.type", "a string", type);
    const char *name = json_object_get_string(type);
    int t = -1;
    for (size_t i = 0; i < N_TYPES; i++)
        if (!strcmp(name, TYPES[i].name))
            t = (int)i;
    if (t < 0) {
        for (int i = 0; TORCH_SCHEDULERS[i]; i++)
            if (!strcmp(name, TORCH_SCHEDULERS[i]))
                return ds_error_set(err, DS_ERR_UNSUPPORTED,
                                    "scheduler.type=%.60s (a torch.optim.lr_scheduler class) is not "
                                    "supported yet", name);
        const char *names[N_TYPES + 1];
        for (size_t i = 0; i < N_TYPES; i++)
            names[i] = TYPES[i].name;
        names[N_TYPES] = NULL;
        char hint[96] = "";
        for (size_t i = 0; i < N_TYPES && !hint[0]; i++)
            if (ieq(name, TYPES[i].name))
                snprintf(hint, sizeof hint, " (names are case-sensitive: did you mean \"%s\"?)",
                         TYPES[i].name);
        if (!hint[0])
            suggest(name, names, hint, sizeof hint);
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: scheduler.type: DeepSpeed does not recognize LR scheduler \"%.60s\"%s; "
                            "built: LRRangeTest, OneCycle, WarmupLR, WarmupDecayLR, WarmupCosineLR",
                            file, name, hint);
    }
    defaults(s, TYPES[t].type);
    if (params && !json_object_is_type(params, json_type_object))
        return bad(&r, "scheduler.params", "an object", params);
    /* DeepSpeed builds type(optimizer, **params): a missing "params" is a TypeError there; here
     * it means every default (documented in ds-config(5)). */
    int have_total = 0, have_min_lr = 0, have_max_lr = 0;
    char autos[256] = "";
    ds_status st = DS_OK;
    if (params) {
        json_object_object_foreach(params, key, val) {
            char path[160];
            snprintf(path, sizeof path, "scheduler.params.%s", key);
            int known = 0;
            for (int i = 0; TYPES[t].keys[i]; i++)
                known = known || !strcmp(key, TYPES[t].keys[i]);
            if (!known) {
                char hint[96];
                suggest(key, TYPES[t].keys, hint, sizeof hint);
                return ds_error_set(err, DS_ERR_INVALID, "%s: scheduler.params: unknown key \"%s\" for %s%s",
                                    file, key, TYPES[t].name, hint);
            }
            if (json_object_is_type(val, json_type_null))
                val = NULL; /* None: the default, as a Python keyword argument would be */
            if (val && is_auto(val)) {
                if (!strcmp(key, "warmup_max_lr")) {
                    s->warmup_max_lr_auto = 1;
                    add_note(autos, sizeof autos, "%swarmup_max_lr=optimizer lr", *autos ? ", " : "");
                    continue;
                }
                if (!strcmp(key, "total_num_steps")) {
                    s->total_num_steps_auto = have_total = 1;
                    add_note(autos, sizeof autos, "%stotal_num_steps=the run's number of steps",
                             *autos ? ", " : "");
                    continue;
                }
                if (!strcmp(key, "cycle_min_lr") || !strcmp(key, "cycle_max_lr"))
                    return ds_error_set(err, DS_ERR_INVALID,
                                        "%s: %s: \"auto\" cannot be inferred (DeepSpeed has no default "
                                        "for it); give a number", file, path);
                if (!strcmp(key, "warmup_num_steps")) /* the value matters: say it */
                    add_note(autos, sizeof autos, "%swarmup_num_steps=%lld (Hugging Face would put its "
                             "warmup steps there, 0 by default)", *autos ? ", " : "",
                             (long long)s->warmup_num_steps);
                else
                    add_note(autos, sizeof autos, "%s%s", *autos ? ", " : "", key);
                continue;
            }
            if (!val) {
                if (!strcmp(key, "total_num_steps") || !strcmp(key, "cycle_min_lr") ||
                    !strcmp(key, "cycle_max_lr"))
                    return bad(&r, path, "a number (DeepSpeed has no default for it)", NULL);
                continue;
            }
            if (!strcmp(key, "last_batch_iteration")) {
                int64_t lbi;
                if ((st = get_integer(&r, path, val, -1, &lbi)) != DS_OK)
                    return st;
                if (lbi != -1)
                    return ds_error_set(err, DS_ERR_UNSUPPORTED,
                                        "scheduler.params.last_batch_iteration=%lld (resuming a schedule) "
                                        "is not supported yet", (long long)lbi);
            } else if (!strcmp(key, "lr_range_test_min_lr"))
                st = get_number(&r, path, val, 0, 0, &s->lr_range_test_min_lr);
            else if (!strcmp(key, "lr_range_test_step_size"))
                st = get_number(&r, path, val, 0, 1, &s->lr_range_test_step_size);
            else if (!strcmp(key, "lr_range_test_step_rate"))
                st = get_number(&r, path, val, 0, 0, &s->lr_range_test_step_rate);
            else if (!strcmp(key, "lr_range_test_staircase"))
                st = get_boolean(&r, path, val, &s->lr_range_test_staircase);
            else if (!strcmp(key, "cycle_min_lr"))
                st = get_number(&r, path, val, 0, 0, &s->cycle_min_lr), have_min_lr = 1;
            else if (!strcmp(key, "cycle_max_lr"))
                st = get_number(&r, path, val, 0, 0, &s->cycle_max_lr), have_max_lr = 1;
            else if (!strcmp(key, "decay_lr_rate"))
                st = get_number(&r, path, val, 0, 0, &s->decay_lr_rate);
            else if (!strcmp(key, "cycle_first_step_size"))
                st = get_number(&r, path, val, 0, 1, &s->cycle_first_step_size);
            else if (!strcmp(key, "cycle_second_step_size"))
                st = get_number(&r, path, val, 0, 1, &s->cycle_second_step_size);
            else if (!strcmp(key, "cycle_first_stair_count") || !strcmp(key, "cycle_second_stair_count")) {
                double unused; /* DeepSpeed stores them and never reads them */
                st = get_number(&r, path, val, -1, 0, &unused);
            } else if (!strcmp(key, "decay_step_size"))
                st = get_number(&r, path, val, 0, 0, &s->decay_step_size);
            else if (!strcmp(key, "cycle_momentum"))
                st = get_boolean(&r, path, val, &s->cycle_momentum);
            else if (!strcmp(key, "cycle_min_mom") || !strcmp(key, "cycle_max_mom")) {
                double m;
                if ((st = get_number(&r, path, val, 0, 0, &m)) == DS_OK && m >= 1)
                    return bad(&r, path, "a number in [0, 1) (it becomes beta1 or the SGD momentum)", val);
                *(!strcmp(key, "cycle_min_mom") ? &s->cycle_min_mom : &s->cycle_max_mom) = m;
            } else if (!strcmp(key, "decay_mom_rate"))
                st = get_number(&r, path, val, 0, 0, &s->decay_mom_rate);
            else if (!strcmp(key, "warmup_min_lr"))
                st = get_number(&r, path, val, 0, 0, &s->warmup_min_lr);
            else if (!strcmp(key, "warmup_max_lr"))
                st = get_number(&r, path, val, 0, 0, &s->warmup_max_lr);
            else if (!strcmp(key, "warmup_num_steps"))
                st = get_integer(&r, path, val, 0, &s->warmup_num_steps);
            else if (!strcmp(key, "total_num_steps"))
                st = get_integer(&r, path, val, 1, &s->total_num_steps), have_total = 1;
            else if (!strcmp(key, "warmup_min_ratio")) {
                if ((st = get_number(&r, path, val, 0, 0, &s->warmup_min_ratio)) == DS_OK &&
                    s->warmup_min_ratio > 1)
                    return bad(&r, path, "a number in [0, 1]", val);
            } else if (!strcmp(key, "cos_min_ratio"))
                st = get_number(&r, path, val, 0, 0, &s->cos_min_ratio);
            else if (!strcmp(key, "warmup_type")) {
                /* DeepSpeed's WarmupLR warns and falls back to "log" on other names (and
                 * WarmupCosineLR fails later); a typo here is an error */
                const char *w = json_object_is_type(val, json_type_string) ? json_object_get_string(val) : "";
                if (!strcmp(w, "log"))
                    s->warmup_type = DS_WARMUP_LOG;
                else if (!strcmp(w, "linear"))
                    s->warmup_type = DS_WARMUP_LINEAR;
                else
                    return bad(&r, path, "\"log\" or \"linear\"", val);
            }
            if (st != DS_OK)
                return st;
        }
    }
    if (s->type == DS_SCHED_ONE_CYCLE && (!have_min_lr || !have_max_lr))
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: scheduler.params.%s: missing: OneCycle needs cycle_min_lr and cycle_max_lr",
                            file, have_min_lr ? "cycle_max_lr" : "cycle_min_lr");
    if ((s->type == DS_SCHED_WARMUP_DECAY_LR || s->type == DS_SCHED_WARMUP_COSINE_LR) && !have_total)
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: scheduler.params.total_num_steps: missing: %s needs the number of "
                            "optimizer steps", file, TYPES[t].name);
    const int64_t W = warmup_steps(s);
    if (s->type == DS_SCHED_WARMUP_COSINE_LR && !s->total_num_steps_auto && s->total_num_steps <= W)
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: scheduler.params.total_num_steps: expected an integer > warmup_num_steps "
                            "(%lld; at least 2), found %lld", file, (long long)W, (long long)s->total_num_steps);
    if (s->type == DS_SCHED_WARMUP_DECAY_LR && !s->total_num_steps_auto && s->total_num_steps < W)
        add_note(warning, warning_size,
                 "scheduler.params.total_num_steps %lld is less than warmup_num_steps %lld (DeepSpeed "
                 "warns too)", (long long)s->total_num_steps, (long long)W);
    if (autos[0])
        add_note(warning, warning_size, "%sscheduler.params: \"auto\" values take their defaults: %s",
                 warning[0] ? "; " : "", autos);
    return DS_OK;
}
