/* ds-lrrt: choose a learning rate. Prints a config's LR schedule step by step, runs an LR range
 * test (one training run from one initialization while the lr rises; smoothed loss against lr,
 * a suggested lr and a OneCycle block), or a sweep of short 1Cycle runs over cycle_max_lr.
 * A client of the engine API, like ds-train; rank 0 alone prints and writes under ds-launch.
 * Exit status: 0 done, 1 failed while training, 2 bad input or usage. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ds/ds.h"
#include "cliarg.h"
#include "outcheck.h"

static const char *usage_text =
    "usage: ds-lrrt --config DS.json --print-schedule N\n"
    "       ds-lrrt NET.json --config DS.json --data PATH [--min LR] [--max LR] [options]\n"
    "       ds-lrrt NET.json --config DS.json --data PATH --sweep 1cycle --values A,B,C [options]\n"
    "\n"
    "Choose a learning rate for the network NET.json (ds-net(5)) and the DeepSpeed config DS.json\n"
    "(ds-config(5)). See ds-lrrt(1) for the rules used.\n"
    "\n"
    "  --print-schedule N    print step,lr,momentum of the config's scheduler for N optimizer\n"
    "                        steps as CSV, without training\n"
    "  --min LR, --max LR    range test: the lr range swept (default 1e-5 .. 1e-1)\n"
    "  --spacing S           log (default) or linear steps between --min and --max\n"
    "  --steps N             optimizer steps of the range test, or of each sweep run (default 100)\n"
    "  --smooth BETA         smoothing of the loss: bias-corrected moving average (default 0.9)\n"
    "  --diverge F           stop when the smoothed loss exceeds F times its minimum (default 4)\n"
    "  --sweep 1cycle        run short OneCycle trainings, one per --values entry\n"
    "  --values A,B,C        the cycle_max_lr values of the sweep\n"
    "  --out PREFIX          write PREFIX.csv and PREFIX.svg (default: lrrt, or sweep for --sweep)\n"
    "  --force               overwrite existing output files\n"
    "  --labels Y.npy        labels for features data (as ds-train)\n"
    "  --seed S              seed for initialization and data order (default: the config's, else 42)\n"
    "  --data-order ORDER    shuffled (default) or sequential\n"
    "  --micro-batch N       micro-batch to use when the config says \"auto\"\n"
    "  --checkpoint-activations  checkpoint every outermost repeat's iterations, as ds-train\n"
    "  --strict-config       unknown config keys are errors, not warnings\n"
    "  --device DEV, --backend NAME   as ds-train (default: the config's \"device\", else auto)\n"
    "  --quiet               no table and no plot on standard output (outputs are still written)\n"
    "  --deepspeed, --deepspeed_config DS.json   DeepSpeed's spellings: --deepspeed means nothing by\n"
    "                        itself, --deepspeed_config is --config\n"
    "  -h, --help            this text;  --version  the version\n";

enum {
    OPT_CONFIG = 256, OPT_DEEPSPEED, OPT_DATA, OPT_LABELS, OPT_STEPS, OPT_SEED, OPT_ORDER, OPT_MICRO, OPT_STRICT,
    OPT_BACKEND, OPT_DEVICE, OPT_FORCE, OPT_QUIET, OPT_VERSION, OPT_PRINT, OPT_MIN, OPT_MAX,
    OPT_SPACING, OPT_SMOOTH, OPT_DIVERGE, OPT_SWEEP, OPT_VALUES, OPT_OUT, OPT_ACT_CKPT
};

#define MAX_VALUES 32

typedef struct args {
    const char *net, *config, *data, *labels, *backend, *device, *out;
    int64_t steps, micro, print_schedule;
    int seed_set, strict, force, quiet, sweep, log_spacing;
    int act_ckpt; /* --checkpoint-activations */
    uint64_t seed;
    ds_data_order order;
    double min_lr, max_lr, smooth, diverge;
    int n_values;
    double values[MAX_VALUES];
    const char *range_flag, *sweep_flag, *train_flag; /* a flag of that mode given (for the mode check) */
} args;

static int usage_error(const char *fmt, const char *a)
{
    fprintf(stderr, "ds-lrrt: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n(see ds-lrrt --help)\n");
    return 2;
}

static int parse_i64(const char *flag, const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < min) {
        fprintf(stderr, "ds-lrrt: %s: expected an integer >= %lld, found \"%s\"\n", flag, (long long)min, s);
        return -1;
    }
    *out = v;
    return 0;
}


/* A number in (lo, hi) (open at both ends when open is set, else [lo, hi)). */
static int parse_num(const char *flag, const char *s, double lo, double hi, int open, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno == ERANGE && *s && !*end) {
        fprintf(stderr, "ds-lrrt: %s: \"%s\" is too %s for a double\n", flag, s, fabs(v) < 1 ? "small" : "large");
        return -1;
    }
    if (errno || *end || end == s || !isfinite(v) || v < lo || (open && v == lo) || v >= hi) {
        if (hi < 1e300)
            fprintf(stderr, "ds-lrrt: %s: expected a number in %s%g, %g), found \"%s\"\n", flag, open ? "(" : "[",
                    lo, hi, s);
        else
            fprintf(stderr, "ds-lrrt: %s: expected a number %s %g, found \"%s\"\n", flag, open ? ">" : ">=", lo, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, args *a)
{
    static const struct option longopts[] = {
        {"config", required_argument, 0, OPT_CONFIG}, {"deepspeed_config", required_argument, 0, OPT_CONFIG},
        {"deepspeed", no_argument, 0, OPT_DEEPSPEED}, /* DeepSpeed's flag: means nothing by itself */
        {"data", required_argument, 0, OPT_DATA}, {"labels", required_argument, 0, OPT_LABELS},
        {"steps", required_argument, 0, OPT_STEPS}, {"seed", required_argument, 0, OPT_SEED},
        {"data-order", required_argument, 0, OPT_ORDER}, {"micro-batch", required_argument, 0, OPT_MICRO},
        {"strict-config", no_argument, 0, OPT_STRICT}, {"backend", required_argument, 0, OPT_BACKEND},
        {"device", required_argument, 0, OPT_DEVICE}, {"force", no_argument, 0, OPT_FORCE},
        {"quiet", no_argument, 0, OPT_QUIET}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION}, {"print-schedule", required_argument, 0, OPT_PRINT},
        {"min", required_argument, 0, OPT_MIN}, {"max", required_argument, 0, OPT_MAX},
        {"spacing", required_argument, 0, OPT_SPACING}, {"smooth", required_argument, 0, OPT_SMOOTH},
        {"diverge", required_argument, 0, OPT_DIVERGE}, {"sweep", required_argument, 0, OPT_SWEEP},
        {"values", required_argument, 0, OPT_VALUES}, {"out", required_argument, 0, OPT_OUT},
        {"checkpoint-activations", no_argument, 0, OPT_ACT_CKPT}, {"checkpoint_activations", no_argument, 0, OPT_ACT_CKPT},
        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->steps = 100;
    a->order = DS_ORDER_SHUFFLED;
    a->min_lr = 1e-5;
    a->max_lr = 1e-1;
    a->smooth = 0.9;
    a->diverge = 4.0;
    a->log_spacing = 1;
    a->print_schedule = -1;
    int c, values_given = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            if (a->config) /* the last would win silently (ds-train refuses it too) */
                return usage_error("--config given twice (\"%s\" and another)", a->config);
            a->config = optarg;
            break;
        case OPT_DEEPSPEED: break;
        case OPT_DATA:
            if (a->data)
                return usage_error("--data given twice (\"%s\" and another)", a->data);
            a->data = optarg, a->train_flag = "--data";
            break;
        case OPT_LABELS: a->labels = optarg, a->train_flag = "--labels"; break;
        case OPT_STEPS:
            if (parse_i64("--steps", optarg, 1, &a->steps))
                return 2;
            a->train_flag = "--steps";
            break;
        case OPT_SEED:
            if (cliarg_seed(optarg, &a->seed)) {
                fprintf(stderr, "ds-lrrt: --seed: expected " CLIARG_SEED_EXPECTED ", found \"%s\"\n", optarg);
                return 2;
            }
            a->seed_set = 1;
            a->train_flag = "--seed";
            break;
        case OPT_ORDER:
            if (!strcmp(optarg, "shuffled"))
                a->order = DS_ORDER_SHUFFLED;
            else if (!strcmp(optarg, "sequential"))
                a->order = DS_ORDER_SEQUENTIAL;
            else
                return usage_error("--data-order: expected shuffled or sequential, found \"%s\"", optarg);
            a->train_flag = "--data-order";
            break;
        case OPT_MICRO:
            if (parse_i64("--micro-batch", optarg, 1, &a->micro))
                return 2;
            break;
        case OPT_STRICT: a->strict = 1; break;
        case OPT_BACKEND: a->backend = optarg, a->train_flag = "--backend"; break;
        case OPT_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
                return usage_error("--device: expected cpu, cuda or auto, found \"%s\"", optarg);
            a->device = optarg;
            a->train_flag = "--device";
            break;
        case OPT_FORCE: a->force = 1, a->train_flag = "--force"; break;
        case OPT_QUIET: a->quiet = 1; break;
        case OPT_PRINT:
            if (parse_i64("--print-schedule", optarg, 1, &a->print_schedule))
                return 2;
            break;
        case OPT_MIN:
            if (parse_num("--min", optarg, 0, 1e308, 1, &a->min_lr))
                return 2;
            a->range_flag = "--min";
            break;
        case OPT_MAX:
            if (parse_num("--max", optarg, 0, 1e308, 1, &a->max_lr))
                return 2;
            a->range_flag = "--max";
            break;
        case OPT_SPACING:
            a->range_flag = "--spacing";
            if (!strcmp(optarg, "log") || !strcmp(optarg, "linear"))
                a->log_spacing = !strcmp(optarg, "log");
            else
                return usage_error("--spacing: expected log or linear, found \"%s\"", optarg);
            break;
        case OPT_SMOOTH:
            if (parse_num("--smooth", optarg, 0, 1, 0, &a->smooth))
                return 2;
            a->range_flag = "--smooth";
            break;
        case OPT_DIVERGE:
            if (parse_num("--diverge", optarg, 1, 1e308, 1, &a->diverge))
                return 2;
            a->range_flag = "--diverge";
            break;
        case OPT_SWEEP:
            if (strcmp(optarg, "1cycle") != 0)
                return usage_error("--sweep: expected 1cycle (the only sweep built), found \"%s\"", optarg);
            a->sweep = 1;
            a->sweep_flag = "--sweep";
            break;
        case OPT_VALUES: {
            values_given = 1;
            a->sweep_flag = "--values";
            a->n_values = 0;
            size_t vl = strlen(optarg);
            if (!vl || strstr(optarg, ",,") || optarg[0] == ',' || optarg[vl - 1] == ',')
                return usage_error("--values: expected numbers separated by single commas, found \"%s\"", optarg);
            char *copy = strdup(optarg), *save = NULL;
            for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (a->n_values == MAX_VALUES) {
                    free(copy);
                    fprintf(stderr, "ds-lrrt: --values: at most %d values\n", MAX_VALUES);
                    return 2;
                }
                if (parse_num("--values", tok, 0, 1e308, 1, &a->values[a->n_values++])) {
                    free(copy);
                    return 2;
                }
            }
            free(copy);
            break;
        }
        case OPT_OUT: a->out = optarg, a->train_flag = "--out"; break;
        case OPT_ACT_CKPT: a->act_ckpt = 1, a->train_flag = "--checkpoint-activations"; break;
        case 'h': fputs(usage_text, stdout); return 0;
        case OPT_VERSION: printf("ds-lrrt (ds) %s\n", DS_VERSION); return 0;
        case '?':
        default: {
            char why[400];
            cliarg_bad_option(longopts, argv[optind - 1], optopt, why, sizeof why);
            return usage_error("%s", why);
        }
        }
    }
    if (optind < argc)
        a->net = argv[optind++];
    if (optind < argc)
        return usage_error("unexpected argument \"%s\"", argv[optind]);
    if (!a->config)
        return usage_error("%sno DeepSpeed config given (--config DS.json)", "");
    /* a flag of another mode is an error, not ignored */
    const char *other = a->range_flag ? a->range_flag : a->sweep_flag ? a->sweep_flag : a->train_flag;
    if (a->print_schedule > 0 && !other && a->quiet) /* the CSV is all it prints */
        other = "--quiet";
    if (a->print_schedule > 0 && (other || a->net))
        return usage_error("--print-schedule prints the config's schedule without training; %s does not go with it",
                           other ? other : a->net);
    if (a->print_schedule > 0)
        return -1;
    if (a->sweep && a->range_flag)
        return usage_error("%s is for the range test; the sweep does not use it", a->range_flag);
    if (!a->net)
        return usage_error("%sno network file given", "");
    if (!a->data)
        return usage_error("%sno data given (--data PATH)", "");
    if (a->sweep && !a->n_values)
        return usage_error("%s--sweep 1cycle needs --values A,B,C (cycle_max_lr values)", "");
    if (!a->sweep && values_given)
        return usage_error("%s--values goes with --sweep 1cycle", "");
    if (!a->sweep && !(a->min_lr < a->max_lr)) {
        char both[96];
        snprintf(both, sizeof both, "%g >= %g", a->min_lr, a->max_lr);
        return usage_error("--min must be below --max (found %s)", both);
    }
    if (a->device && a->backend && strcmp(a->device, "auto") != 0 &&
        strncmp(a->backend, a->device, strlen(a->device)) != 0)
        return usage_error("--device and --backend disagree (backend \"%s\")", a->backend);
    if (!a->backend && a->device)
        a->backend = a->device; /* neither: the config's "device", else auto (backend_default) */
    if (a->out && !*a->out)
        return usage_error("--out: expected a file name prefix, found \"%s\"", a->out);
    if (a->out) { /* PREFIX.csv: "d/" would write the hidden d/.csv (a directory named d gets d.csv beside it) */
        size_t n = strlen(a->out);
        if (a->out[n - 1] == '/')
            return usage_error("--out %s: expected a file name prefix (PREFIX.csv, PREFIX.svg), found a directory; "
                               "add a name, as DIR/lrrt", a->out);
    }
    if (!a->out)
        a->out = a->sweep ? "sweep" : "lrrt";
    return -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- --print-schedule -------------------------------------------------------------------- */

static int print_schedule(const args *a)
{
    ds_config cfg;
    ds_error err = {0};
    ds_config_hints hints = {.micro_batch = a->micro > 0 ? a->micro : 1}; /* batch sizes do not matter here */
    if (ds_config_load_file(&cfg, a->config, 1, a->strict, &hints, &err) != DS_OK) {
        fprintf(stderr, "ds-lrrt: %s\n", err.msg);
        return 2;
    }
    for (int i = 0; i < cfg.n_warnings; i++)
        if (!strstr(cfg.warnings[i], "supplied by the caller"))
            fprintf(stderr, "ds-lrrt: warning: %s\n", cfg.warnings[i]);
    ds_sched_config s = cfg.scheduler;
    if (ds_sched_set_total_steps(&s, a->print_schedule, &err) != DS_OK) {
        fprintf(stderr, "ds-lrrt: %s: %s\n", a->config, err.msg);
        ds_config_free(&cfg);
        return 2;
    }
    char note[400];
    ds_sched_total_note(&s, note, sizeof note);
    if (note[0])
        fprintf(stderr, "ds-lrrt: warning: %s: %s\n", a->config, note);
    if (s.type == DS_SCHED_NONE)
        fprintf(stderr, "ds-lrrt: note: %s has no \"scheduler\" block: the lr is the optimizer's throughout\n",
                a->config);
    /* the momentum an update uses when the schedule does not set it: the optimizer's (the
     * engine's default optimizer, with no block, is AdamW with beta1 0.9) */
    double base_mom = 0.9;
    int has_mom = 1;
    switch (cfg.optimizer.type) {
    case DS_OPTIM_SGD: base_mom = cfg.optimizer.momentum; break;
    case DS_OPTIM_ADAM:
    case DS_OPTIM_ADAMW:
    case DS_OPTIM_LAMB: base_mom = cfg.optimizer.beta1; break;
    case DS_OPTIM_NONE: break;
    default: has_mom = 0; break;
    }
    /* as the engine: an optimizer without a momentum gets none cycled (and a warning) */
    if (!has_mom && s.type == DS_SCHED_ONE_CYCLE && s.cycle_momentum)
        fprintf(stderr, "ds-lrrt: warning: %s: scheduler.params.cycle_momentum: optimizer %s has no momentum; it "
                "is not cycled\n", a->config, cfg.optimizer.name);
    printf("step,lr,momentum\n");
    for (int64_t n = 1; n <= a->print_schedule; n++) {
        double lr, mom = base_mom;
        ds_sched_lr(&s, n - 2, &lr, &mom); /* update n uses iteration n - 2 */
        if (has_mom)
            printf("%lld,%.9g,%.9g\n", (long long)n, lr, mom);
        else
            printf("%lld,%.9g,\n", (long long)n, lr);
    }
    ds_config_free(&cfg);
    return 0;
}

/* ---- training runs ----------------------------------------------------------------------- */

/* What every run shares: the job (ranks), the data and the batch buffers. */
typedef struct job {
    const args *a;
    int rank, world;
    ds_comm *comm;
    ds_store *store;
    ds_dataset *ds;
    ds_sampler sampler;
    int sampler_ready;
    int tokens;
    int64_t MB, GAS, TB, T, F, out_dim;
    int32_t *tok, *tgt, *lab;
    float *x, *y;
} job;

/* An engine for the config text (the user's config, edited). */
static ds_status open_engine(job *j, const char *config_json, ds_engine **out, ds_error *err)
{
    const args *a = j->a;
    ds_engine_options eo = {.config_json = config_json, .config_name = a->config, .net_path = a->net,
                            .backend = a->backend, .backend_default = "auto", .strict_config = a->strict,
                            .micro_batch_hint = a->micro,
                            .seed_set = a->seed_set, .seed = a->seed, .comm = j->comm, .rank = j->rank,
                            .world_size = j->world, .store = j->store, .checkpoint_activations = a->act_ckpt};
    return ds_initialize(out, &eo, err);
}

/* Data and buffers, sized by the first engine (every run has the same batch shape). */
static ds_status open_data(job *j, ds_engine *eng, ds_error *err)
{
    const args *a = j->a;
    const ds_config *cfg = ds_engine_config(eng);
    const ds_net *net = ds_engine_net(eng);
    ds_status st;
    j->tokens = net->input == DS_INPUT_TOKENS;
    if (j->tokens) {
        if (a->labels)
            return ds_error_set(err, DS_ERR_INVALID, "--labels is for features networks; %s takes tokens", a->net);
        st = ds_dataset_open_tokens(&j->ds, a->data, (int)net->seq_len, (int)net->vocab_size, err);
    } else {
        if (!a->labels)
            return ds_error_set(err, DS_ERR_INVALID, "%s takes features: give --data X.npy --labels Y.npy", a->net);
        int vec = net->loss == DS_LOSS_MSE;
        st = ds_dataset_open_npy(&j->ds, a->data, a->labels, (int)net->feature_dim,
                                 vec ? DS_LABEL_VECTOR : DS_LABEL_CLASS, vec ? 0 : (int)net->out_dim,
                                 vec ? (int)net->out_dim : 0, err);
    }
    if (st != DS_OK)
        return st;
    if (j->rank == 0 && ds_dataset_warning(j->ds))
        fprintf(stderr, "ds-lrrt: warning: --data %s: %s\n", a->data, ds_dataset_warning(j->ds));
    j->MB = cfg->micro_batch;
    j->GAS = cfg->grad_accum;
    j->TB = cfg->train_batch_size;
    j->T = net->positions;
    j->F = j->tokens ? 0 : net->feature_dim;
    j->out_dim = net->out_dim;
    int64_t N = ds_dataset_len(j->ds);
    if (N < j->TB)
        return ds_error_set(err, DS_ERR_INVALID, "%s: %lld samples, fewer than one batch of %lld (train_batch_size)",
                            a->data, (long long)N, (long long)j->TB);
    uint64_t seed = a->seed_set ? a->seed : cfg->seed_set ? cfg->seed : 42;
    if ((st = ds_sampler_init(&j->sampler, a->order, seed, N, err)) != DS_OK)
        return st;
    j->sampler_ready = 1;
    if (j->tokens) {
        j->tok = malloc((size_t)(j->MB * j->T) * sizeof *j->tok);
        j->tgt = malloc((size_t)(j->MB * j->T) * sizeof *j->tgt);
    } else {
        j->x = malloc((size_t)(j->MB * j->F) * sizeof *j->x);
        j->lab = malloc((size_t)j->MB * sizeof *j->lab);
        j->y = malloc((size_t)(j->MB * j->out_dim) * sizeof *j->y);
    }
    if (j->tokens ? (!j->tok || !j->tgt) : (!j->x || !j->lab || !j->y))
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory for a micro-batch of %lld", (long long)j->MB);
    return DS_OK;
}

static void close_job(job *j)
{
    free(j->tok);
    free(j->tgt);
    free(j->lab);
    free(j->x);
    free(j->y);
    if (j->sampler_ready)
        ds_sampler_free(&j->sampler);
    ds_dataset_close(j->ds);
}

/* One optimizer step (all micro-batches of effective batch s), samples split over the ranks as
 * ds-train does. DS_ERR_NUMERIC: the gradient was not finite (the caller calls it divergence).
 * *applied 0: fp16's loss scaler skipped the update (an overflow), as on every rank. */
static ds_status train_step(job *j, ds_engine *eng, int64_t s, int *applied, ds_error *err)
{
    ds_status st;
    for (int64_t u = 0; u < j->GAS; u++) {
        for (int64_t i = 0; i < j->MB; i++) {
            int64_t k = ds_sampler_index(&j->sampler, s * j->TB + u * j->MB * j->world + i * j->world + j->rank);
            st = j->tokens ? ds_dataset_get_tokens(j->ds, k, j->tok + i * j->T, j->tgt + i * j->T, err)
                           : ds_dataset_get_features(j->ds, k, j->x + i * j->F, j->lab + i, j->y + i * j->out_dim, err);
            if (st != DS_OK)
                return st;
        }
        ds_batch b = {.tokens = j->tok, .targets = j->tgt, .x = j->x, .labels = j->lab, .y = j->y,
                      .samples = j->MB};
        double loss;
        if ((st = ds_engine_forward(eng, &b, &loss, err)) != DS_OK || (st = ds_engine_backward(eng, err)) != DS_OK ||
            (st = ds_engine_step(eng, err)) != DS_OK)
            return st;
    }
    *applied = ds_engine_was_step_applied(eng);
    return DS_OK;
}

/* Ctrl-C during a single-rank range test or sweep: stop after the step under way and write what
 * was recorded (under ds-launch every rank would stop at its own step, so the default stays). */
static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void catch_sigint(const job *j)
{
    struct sigaction sa, old;
    if (j->world > 1 || sigaction(SIGINT, NULL, &old) != 0 || old.sa_handler == SIG_IGN) /* ignored: stays so */
        return;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND | SA_RESTART; /* a second Ctrl-C ends the process at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static void release_sigint(void)
{
    struct sigaction old;
    if (sigaction(SIGINT, NULL, &old) == 0 && old.sa_handler == on_sigint)
        signal(SIGINT, SIG_DFL);
}

/* a progress line on a terminal: step i of n, the lr and the loss */
static void progress(int64_t i, int64_t n, double lr, double loss)
{
    char bar[CLIARG_BAR + 1];
    cliarg_bar(bar, i, n);
    printf("\r[%s] %lld/%lld lr %.3g loss %.4f\033[K", bar, (long long)i, (long long)n, lr, loss);
    fflush(stdout);
}

/* --checkpoint-activations (or a network's "checkpoint"): how many checkpoints, as ds-train says */
static void say_checkpoints(ds_engine *eng)
{
    ds_memory_report mr;
    ds_engine_memory_report(eng, &mr);
    if (mr.checkpoints)
        printf("activation checkpointing: %d checkpoints; activations %.1f MB\n", mr.checkpoints,
               mr.activations / 1e6);
}

/* curriculum_learning applies here as in ds-train: the steps' sequences grow as it says, which
 * moves the losses the test reads besides the lr; and the monitors, which ds-lrrt does not write */
static void warn_curriculum(const ds_config *cfg)
{
    if (cfg->curriculum.enabled)
        fprintf(stderr, "ds-lrrt: warning: %s: curriculum_learning: the steps train on the first %lld to %lld "
                "positions of each sample as its schedule says, so the losses change with the length as well as "
                "the lr; disable it for the test\n", cfg->source_name, (long long)cfg->curriculum.min_difficulty,
                (long long)cfg->curriculum.max_difficulty);
    if (cfg->tensorboard.enabled || cfg->csv_monitor.enabled) /* ds-train's; the test writes its CSV and SVG */
        fprintf(stderr, "ds-lrrt: warning: %s: %s%s%s: ds-lrrt does not write the monitors (ds-train does); its "
                "record of the test is the CSV and SVG it writes\n", cfg->source_name,
                cfg->tensorboard.enabled ? "tensorboard" : "", cfg->tensorboard.enabled && cfg->csv_monitor.enabled ? ", " : "",
                cfg->csv_monitor.enabled ? "csv_monitor" : "");
}

/* The config file as JSON, to be edited (scheduler removed or replaced). */
static json_object *read_config(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) { /* (as ds-train says it) */
        fprintf(stderr, "ds-lrrt: %s: is a directory, expected a JSON file\n", path);
        return NULL;
    }
    json_object *root = json_object_from_file(path);
    if (!root) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", json_util_get_last_err());
        msg[strcspn(msg, "\n")] = 0; /* json-c's message ends its line itself */
        fprintf(stderr, "ds-lrrt: %s: cannot read it as JSON (%s)\n", path, msg);
        return NULL;
    }
    if (!json_object_is_type(root, json_type_object)) {
        fprintf(stderr, "ds-lrrt: %s: expected a JSON object at the top level\n", path);
        json_object_put(root);
        return NULL;
    }
    return root;
}

/* Before any training: an existing output needs --force, a directory is never one, and the
 * folder it goes in must exist and take files (else the whole run would be lost at the end). */
/* Before any training (outcheck.h): an existing output needs --force, only a regular file is
 * ever replaced, and the folder must take a new file (else the whole run would be lost at the
 * end). A symbolic link's target is what gets replaced: path becomes it. */
static int check_output(char *path, size_t size, int force)
{
    char why[4400];
    if (outcheck_file(path, force, 0, why, sizeof why) != 0) {
        fprintf(stderr, "ds-lrrt: %s: %s\n", path, why);
        return -1;
    }
    char *target = realpath(path, NULL); /* NULL where it does not exist yet */
    if (target && strlen(target) < size)
        snprintf(path, size, "%s", target);
    free(target);
    return 0;
}

/* The outputs are written under temporary names (PATH.tmp.PID) and moved to PATH, one after
 * the other, only when both are complete: a failure while writing leaves the old files as they
 * were. Without --force a file that appeared at PATH during the run is not replaced either
 * (outcheck_publish): the new results then stay under their temporary names, and the message
 * says where. */
static void tmp_name(char *buf, size_t n, const char *path) { snprintf(buf, n, "%s.tmp.%ld", path, (long)getpid()); }

static int finish_outputs(int rc, const char *csv_path, const char *csv_tmp, const char *svg_path,
                          const char *svg_tmp, int force)
{
    char why[4400];
    if (rc != 0) {
        unlink(csv_tmp);
        unlink(svg_tmp);
        return rc;
    }
    if (outcheck_publish(csv_tmp, csv_path, force, why, sizeof why) != 0) {
        fprintf(stderr, "ds-lrrt: %s: %s; this run's results are in %s and %s\n", csv_path, why, csv_tmp, svg_tmp);
        return 1;
    }
    if (outcheck_publish(svg_tmp, svg_path, force, why, sizeof why) != 0) {
        fprintf(stderr, "ds-lrrt: %s: %s; this run's plot is in %s (%s is written)\n", svg_path, why, svg_tmp, csv_path);
        return 1;
    }
    return 0;
}

/* ---- plots ------------------------------------------------------------------------------- */

/* Upper end of the loss axis: the divergence at the end of a range test would flatten the rest,
 * so the axis stops at twice the first loss's height above the lowest one. */
static double loss_axis_top(const double *v, int n, double lo)
{
    double hi = lo, first = NAN;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) {
            if (isnan(first))
                first = v[i];
            if (v[i] > hi)
                hi = v[i];
        }
    if (isfinite(first) && hi > lo + 2 * (first - lo) && first > lo)
        hi = lo + 2 * (first - lo);
    return hi > lo ? hi : lo + 1e-6;
}

/* A terminal plot of y against log10(x): '*' points, '^' above the axis, '|' at mark_x. */
static void terminal_plot(const double *x, const double *y, int n, double xmin, double xmax, double mark_x)
{
    enum { W = 64, H = 16 };
    char grid[H][W + 1];
    double lo = INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(y[i]) && y[i] < lo)
            lo = y[i];
    if (!isfinite(lo))
        return;
    double hi = loss_axis_top(y, n, lo);
    double l0 = log10(xmin), l1 = log10(xmax);
    for (int r = 0; r < H; r++) {
        memset(grid[r], ' ', W);
        grid[r][W] = '\0';
    }
    int mark_col = -1;
    if (isfinite(mark_x) && mark_x > 0) {
        mark_col = (int)lround((log10(mark_x) - l0) / (l1 - l0) * (W - 1));
        if (mark_col >= 0 && mark_col < W)
            for (int r = 0; r < H; r++)
                grid[r][mark_col] = '|';
    }
    for (int i = 0; i < n; i++) {
        if (!isfinite(y[i]))
            continue;
        int c = (int)lround((log10(x[i]) - l0) / (l1 - l0) * (W - 1));
        if (c < 0 || c >= W)
            continue;
        if (y[i] > hi) {
            grid[0][c] = '^';
            continue;
        }
        int r = (int)lround((hi - y[i]) / (hi - lo) * (H - 1));
        grid[r][c] = '*';
    }
    printf("\n  smoothed loss against lr (log scale)%s\n", mark_col >= 0 ? "; | = suggested lr" : "");
    for (int r = 0; r < H; r++) {
        if (r == 0)
            printf("%9.4f |%s\n", hi, grid[r]);
        else if (r == H - 1)
            printf("%9.4f |%s\n", lo, grid[r]);
        else
            printf("          |%s\n", grid[r]);
    }
    printf("          +");
    for (int c = 0; c < W; c++)
        putchar('-');
    printf("\n           %-10.3g%*s%10.3g\n\n", xmin, W - 20, "", xmax);
}

typedef struct svg_series {
    const double *x, *y; /* y NAN: a gap */
    int n;
    const char *color, *label;
    int dots;            /* draw points, not a line */
} svg_series;

static void svg_text(FILE *f, const char *s) /* XML-escaped */
{
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* A plot of series as SVG; log_x: the x axis is log10. mark_x (NAN: none) gets a dashed line
 * labelled mark_label. */
static int write_svg(const char *path, const char *title, const char *xlabel, const char *ylabel,
                     const svg_series *series, int ns, int log_x, double xmin, double xmax,
                     double mark_x, const char *mark_label)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "ds-lrrt: %s: %s\n", path, strerror(errno));
        return -1;
    }
    const double W = 760, H = 460, L = 70, R = 180, TOP = 40, B = 60;
    const double pw = W - L - R, ph = H - TOP - B;
    double lo = INFINITY, hi;
    int count = 0;
    for (int s = 0; s < ns; s++)
        for (int i = 0; i < series[s].n; i++)
            if (isfinite(series[s].y[i]) && series[s].y[i] < lo)
                lo = series[s].y[i];
    if (!isfinite(lo))
        lo = 0;
    hi = lo;
    for (int s = 0; s < ns; s++) {
        double h = loss_axis_top(series[s].y, series[s].n, lo);
        if (h > hi)
            hi = h;
    }
    double pad = (hi - lo) * 0.05;
    lo -= pad;
    hi += pad;
    double x0 = log_x ? log10(xmin) : xmin, x1 = log_x ? log10(xmax) : xmax;
    if (!(x1 > x0))
        x1 = x0 + 1;
#define PX(v) (L + ((log_x ? log10(v) : (v)) - x0) / (x1 - x0) * pw)
#define PY(v) (TOP + (hi - ((v) > hi ? hi : (v))) / (hi - lo) * ph)
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    fprintf(f, "<text x=\"%g\" y=\"22\" font-size=\"15\">", L);
    svg_text(f, title);
    fprintf(f, "</text>\n<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#444\"/>\n",
            L, TOP, pw, ph);
    /* x ticks: decades on a log axis, 5 intervals on a linear one */
    if (log_x) {
        for (int d = (int)ceil(x0 - 1e-9); d <= (int)floor(x1 + 1e-9); d++) {
            double px = L + (d - x0) / (x1 - x0) * pw;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#ddd\"/>"
                       "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">1e%d</text>\n",
                    px, TOP, px, TOP + ph, px, TOP + ph + 16, d);
        }
    } else {
        for (int t = 0; t <= 5; t++) {
            double v = x0 + (x1 - x0) * t / 5, px = L + pw * t / 5;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#ddd\"/>"
                       "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%.4g</text>\n",
                    px, TOP, px, TOP + ph, px, TOP + ph + 16, v);
        }
    }
    for (int t = 0; t <= 5; t++) {
        double v = lo + (hi - lo) * t / 5, py = TOP + ph - ph * t / 5;
        fprintf(f, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                   "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n",
                L, py, L + pw, py, L - 6, py + 4, v);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">", L + pw / 2, H - 18);
    svg_text(f, xlabel);
    fprintf(f, "</text>\n<text x=\"16\" y=\"%g\" text-anchor=\"middle\" transform=\"rotate(-90 16 %g)\">",
            TOP + ph / 2, TOP + ph / 2);
    svg_text(f, ylabel);
    fprintf(f, "</text>\n");
    for (int s = 0; s < ns; s++) {
        const svg_series *S = &series[s];
        if (S->dots) {
            for (int i = 0; i < S->n; i++)
                if (isfinite(S->y[i]))
                    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"1.8\" fill=\"%s\"/>\n", PX(S->x[i]), PY(S->y[i]),
                            S->color);
        } else {
            int open = 0;
            for (int i = 0; i < S->n; i++) {
                if (!isfinite(S->y[i])) {
                    if (open)
                        fprintf(f, "\"/>\n");
                    open = 0;
                    continue;
                }
                if (!open)
                    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", S->color);
                fprintf(f, "%s%.1f,%.1f", open ? " " : "", PX(S->x[i]), PY(S->y[i]));
                open = 1;
                count++;
            }
            if (open)
                fprintf(f, "\"/>\n");
        }
        if (S->label) {
            double ly = TOP + 14 + 18 * s;
            fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" stroke-width=\"3\"/>"
                       "<text x=\"%g\" y=\"%g\">", L + pw + 12, ly - 4, L + pw + 30, ly - 4, S->color, L + pw + 36, ly);
            svg_text(f, S->label);
            fprintf(f, "</text>\n");
        }
    }
    if (isfinite(mark_x) && mark_x > 0) {
        double px = PX(mark_x);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#d62728\" stroke-dasharray=\"6 4\" "
                   "stroke-width=\"1.5\"/>\n<text x=\"%.1f\" y=\"%g\" fill=\"#d62728\">",
                px, TOP, px, TOP + ph, px + 4, TOP + 14);
        svg_text(f, mark_label);
        fprintf(f, "</text>\n");
    }
#undef PX
#undef PY
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "ds-lrrt: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- the range test ---------------------------------------------------------------------- */

/* The suggestion (documented in ds-lrrt(1)): the lr where the smoothed loss falls fastest
 * against log10(lr) (a central difference), looking only at points up to the lowest smoothed
 * loss. -1 when the loss never falls. */
static int suggest(const double *lr, const double *sm, int n, int *imin)
{
    int m = 0;
    for (int i = 1; i < n; i++)
        if (sm[i] < sm[m])
            m = i;
    *imin = m;
    int best = -1;
    double steepest = 0;
    for (int i = 1; i <= m && i + 1 < n; i++) {
        double slope = (sm[i + 1] - sm[i - 1]) / (log10(lr[i + 1]) - log10(lr[i - 1]));
        if (slope < steepest) {
            steepest = slope;
            best = i;
        }
    }
    return best;
}

static int range_test(job *j, json_object *root)
{
    const args *a = j->a;
    ds_error err = {0};
    char csv_path[4096], svg_path[4096];
    snprintf(csv_path, sizeof csv_path, "%s.csv", a->out);
    snprintf(svg_path, sizeof svg_path, "%s.svg", a->out);
    if (j->rank == 0 && (check_output(csv_path, sizeof csv_path, a->force) || check_output(svg_path, sizeof svg_path, a->force)))
        return 2;
    /* the range test sets the lr itself: the config's scheduler (if any) is left out, and said so */
    json_object *old, *t;
    if (j->rank == 0 && json_object_object_get_ex(root, "scheduler", &old) && json_object_is_type(old, json_type_object) &&
        json_object_object_get_ex(old, "type", &t) && json_object_is_type(t, json_type_string))
        fprintf(stderr, "ds-lrrt: note: the range test sets the lr itself (--min %g to --max %g); %s's %s scheduler "
                "is left out\n", a->min_lr, a->max_lr, a->config, json_object_get_string(t));
    json_object_object_del(root, "scheduler");
    ds_engine *eng;
    if (open_engine(j, json_object_to_json_string(root), &eng, &err) != DS_OK ||
        open_data(j, eng, &err) != DS_OK) {
        fprintf(stderr, "ds-lrrt: %s\n", err.msg);
        return 2;
    }
    const ds_config *cfg = ds_engine_config(eng);
    if (j->rank == 0) {
        for (int i = 0; i < cfg->n_warnings; i++)
            fprintf(stderr, "ds-lrrt: warning: %s\n", cfg->warnings[i]);
        warn_curriculum(cfg);
        if (!a->quiet)
            say_checkpoints(eng);
        if (!a->quiet)
            printf("ds-lrrt %s: range test of %s on %s: lr %g .. %g (%s), %lld steps of batch %lld (%d rank%s); "
                   "optimizer %s\n",
                   DS_VERSION, a->net, ds_dataset_describe(j->ds), a->min_lr, a->max_lr,
                   a->log_spacing ? "log" : "linear", (long long)a->steps, (long long)j->TB, j->world,
                   j->world > 1 ? "s" : "", ds_optimizer_name(&cfg->optimizer));
        fflush(stdout);
    }
    const int64_t n_max = a->steps;
    double *lr = calloc((size_t)n_max, sizeof *lr), *loss = calloc((size_t)n_max, sizeof *loss);
    double *sm = calloc((size_t)n_max, sizeof *sm);
    int *applied = calloc((size_t)n_max, sizeof *applied), *ai = calloc((size_t)n_max, sizeof *ai);
    double *alr = calloc((size_t)n_max, sizeof *alr), *asm_ = calloc((size_t)n_max, sizeof *asm_);
    if (!lr || !loss || !sm || !applied || !ai || !alr || !asm_) {
        fprintf(stderr, "ds-lrrt: out of memory\n");
        free(lr), free(loss), free(sm), free(applied), free(ai), free(alr), free(asm_);
        ds_engine_destroy(eng);
        return 1;
    }
    double t0 = now_s(), avg = 0, best = INFINITY;
    int n = 0, rc = 0;
    const int tty = j->rank == 0 && !a->quiet && isatty(STDOUT_FILENO);
    const char *stop = "the last lr was reached";
    catch_sigint(j);
    /* log spacing through the logarithms: max/min itself may overflow (1e-200 .. 1e200) */
    const double lmin = log(a->min_lr), lmax = log(a->max_lr);
    for (int64_t i = 0; i < n_max; i++) {
        double f = n_max > 1 ? (double)i / (double)(n_max - 1) : 0.0;
        lr[i] = i == 0 ? a->min_lr : a->log_spacing ? exp(lmin + f * (lmax - lmin)) : a->min_lr + (a->max_lr - a->min_lr) * f;
        ds_status st = ds_engine_set_lr(eng, lr[i], &err);
        if (st == DS_OK)
            st = train_step(j, eng, i, &applied[i], &err);
        if (st == DS_ERR_NUMERIC) {
            stop = "the gradient was not finite";
            break;
        }
        if (st != DS_OK) {
            fprintf(stderr, "ds-lrrt: %s\n", err.msg);
            rc = 1;
            break;
        }
        loss[i] = ds_engine_last_loss(eng);
        if (!isfinite(loss[i])) {
            stop = "the loss was not finite";
            break;
        }
        avg = a->smooth * avg + (1 - a->smooth) * loss[i];
        sm[i] = avg / (1 - pow(a->smooth, (double)(i + 1)));
        n = (int)i + 1;
        if (sm[i] < best)
            best = sm[i];
        if (tty)
            progress(i + 1, n_max, lr[i], sm[i]);
        if (sm[i] > a->diverge * best) {
            stop = "the smoothed loss diverged";
            break;
        }
        if (interrupted) {
            stop = "interrupted (Ctrl-C)";
            break;
        }
    }
    if (tty)
        printf("\r\033[K");
    release_sigint();
    double elapsed = now_s() - t0;
    ds_engine_destroy(eng);
    if (rc || j->rank != 0) {
        free(lr), free(loss), free(sm), free(applied), free(ai), free(alr), free(asm_);
        return rc;
    }
    /* the suggestion from the steps whose lr was applied (fp16 skips an update on overflow) */
    int na = 0;
    for (int i = 0; i < n; i++)
        if (applied[i])
            ai[na] = i, alr[na] = lr[i], asm_[na] = sm[i], na++;
    if (na < n)
        fprintf(stderr, "ds-lrrt: warning: %d of %d steps were skipped (fp16: the gradient overflowed, while the "
                "loss scale settled or at too high an lr); their lrs were not applied, so the suggestion leaves "
                "them out (column skipped of the CSV)\n", n - na, n);
    int imin = -1, is = -1;
    if (na >= 1) {
        int am = 0, as = na >= 3 ? suggest(alr, asm_, na, &am) : -1;
        if (na < 3) /* the lowest one all the same */
            for (int k = 1; k < na; k++)
                if (asm_[k] < asm_[am])
                    am = k;
        imin = ai[am], is = as >= 0 ? ai[as] : -1;
    }
    double sugg = is >= 0 ? lr[is] : NAN;
    double cmax = NAN, cmin = NAN;
    if (is >= 0) { /* the OneCycle block: half the lr of the lowest loss, not below the suggestion */
        cmax = lr[imin] / 2 > sugg ? lr[imin] / 2 : sugg;
        cmin = cmax / 10;
    }
    char csv_tmp[4200], svg_tmp[4200];
    tmp_name(csv_tmp, sizeof csv_tmp, csv_path);
    tmp_name(svg_tmp, sizeof svg_tmp, svg_path);
    FILE *csv = fopen(csv_tmp, "w");
    if (!csv) {
        fprintf(stderr, "ds-lrrt: %s: cannot create it (as %s first): %s\n", csv_path, csv_tmp, strerror(errno));
        free(lr), free(loss), free(sm), free(applied), free(ai), free(alr), free(asm_);
        return 1;
    }
    fprintf(csv, "step,lr,loss,smoothed_loss,skipped\n");
    for (int i = 0; i < n; i++)
        fprintf(csv, "%d,%.9g,%.9g,%.9g,%d\n", i + 1, lr[i], loss[i], sm[i], !applied[i]);
    if (fclose(csv) != 0) {
        fprintf(stderr, "ds-lrrt: %s: %s\n", csv_path, strerror(errno));
        rc = 1;
    }
    char mark[64] = "";
    if (is >= 0)
        snprintf(mark, sizeof mark, "suggested lr %.3g", sugg);
    char title[256];
    snprintf(title, sizeof title, "LR range test: %s, %d steps", a->net, n);
    svg_series ser[2] = {
        {.x = lr, .y = loss, .n = n, .color = "#9ecae1", .label = "loss", .dots = 1},
        {.x = lr, .y = sm, .n = n, .color = "#1f77b4", .label = "smoothed loss"},
    };
    if (rc == 0 && write_svg(svg_tmp, title, "learning rate (log scale)", "loss", ser, 2, 1, a->min_lr,
                             a->max_lr, sugg, mark))
        rc = 1;
    rc = finish_outputs(rc, csv_path, csv_tmp, svg_path, svg_tmp, a->force);
    if (!a->quiet) {
        int every = n > 40 ? (n + 39) / 40 : 1;
        printf("%6s  %12s  %10s  %10s\n", "step", "lr", "loss", "smoothed");
        for (int i = 0; i < n; i++)
            if (i % every == 0 || i == n - 1 || i == is || i == imin)
                printf("%6d  %12.4g  %10.4f  %10.4f%s%s\n", i + 1, lr[i], loss[i], sm[i],
                       i == is ? "  <- suggested" : i == imin ? "  <- lowest" : "", applied[i] ? "" : "  (skipped)");
        terminal_plot(lr, sm, n, a->min_lr, a->max_lr, sugg);
    }
    printf("stopped after %d of %lld steps: %s (%.1f s)\n", n, (long long)n_max, stop, elapsed);
    if (is >= 0) {
        printf("suggested lr: %.3g (steepest fall of the smoothed loss; lowest smoothed loss %.4f at lr %.3g)\n",
               sugg, sm[imin], lr[imin]);
        printf("OneCycle scheduler block (set cycle_first_step_size to about half of your run's steps):\n"
               "  \"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": %.3g, \"cycle_max_lr\": %.3g}}\n",
               cmin, cmax);
    } else if (na < 3) {
        printf("no suggestion: %d step%s with an update recorded, fewer than the 3 it takes; try more --steps\n", na,
               na == 1 ? "" : "s");
    } else {
        printf("no suggestion: the smoothed loss did not fall over the range; try a lower --min or more --steps\n");
    }
    if (rc == 0)
        printf("wrote %s and %s\n", csv_path, svg_path);
    free(lr), free(loss), free(sm), free(applied), free(ai), free(alr), free(asm_);
    return rc;
}

/* ---- the 1Cycle sweep -------------------------------------------------------------------- */

typedef struct run {
    double value, final;
    int n;             /* steps done */
    int diverged;
    int n_skipped;     /* steps whose update fp16's loss scaler skipped */
    double *loss, *lr, *mom;
    int *skipped;
} run;

static int by_final(const void *x, const void *y)
{
    const run *a = x, *b = y;
    return (a->final > b->final) - (a->final < b->final);
}

/* The OneCycle block of one sweep run: the config's own OneCycle params with cycle_max_lr
 * replaced, or cycle_min_lr = value/10 and a cycle over 90% of the steps (ds-lrrt(1)). */
static int own_one_cycle(json_object *root) /* the config has a OneCycle block with params */
{
    json_object *sched, *type, *params;
    return json_object_object_get_ex(root, "scheduler", &sched) && json_object_is_type(sched, json_type_object) &&
           json_object_object_get_ex(sched, "type", &type) && json_object_is_type(type, json_type_string) &&
           !strcmp(json_object_get_string(type), "OneCycle") &&
           json_object_object_get_ex(sched, "params", &params) && json_object_is_type(params, json_type_object);
}

/* every --values entry above the config's own cycle_min_lr, as the config's parser reads it:
 * checked before the first run (a config the parser refuses is left to the first run's engine,
 * which says what is wrong) */
static int check_values(const args *a, json_object *root)
{
    if (!own_one_cycle(root))
        return 0;
    ds_config cfg;
    ds_error err = {0};
    ds_config_hints hints = {.micro_batch = a->micro > 0 ? a->micro : 1}; /* batch sizes do not matter here */
    if (ds_config_load_file(&cfg, a->config, 1, a->strict, &hints, &err) != DS_OK)
        return 0;
    const double min_lr = cfg.scheduler.cycle_min_lr;
    ds_config_free(&cfg);
    for (int v = 0; v < a->n_values; v++)
        if (!(a->values[v] > min_lr)) {
            fprintf(stderr, "ds-lrrt: --values: %g is not above %s's cycle_min_lr %g\n", a->values[v], a->config,
                    min_lr);
            return -1;
        }
    return 0;
}

static ds_status sweep_config(const args *a, json_object *root, double value, char **text, ds_error *err)
{
    json_object *sched;
    int own = own_one_cycle(root);
    json_object *copy = NULL;
    if (json_object_deep_copy(root, &copy, NULL) != 0)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if (own) { /* check_values has seen value above cycle_min_lr */
        json_object *p;
        json_object_object_get_ex(copy, "scheduler", &sched);
        json_object_object_get_ex(sched, "params", &p);
        json_object_object_add(p, "cycle_max_lr", json_object_new_double(value));
    } else {
        int64_t half = a->steps * 45 / 100 > 0 ? a->steps * 45 / 100 : 1;
        json_object *p = json_object_new_object(), *s = json_object_new_object();
        json_object_object_add(p, "cycle_min_lr", json_object_new_double(value / 10));
        json_object_object_add(p, "cycle_max_lr", json_object_new_double(value));
        json_object_object_add(p, "cycle_first_step_size", json_object_new_int64(half));
        json_object_object_add(p, "cycle_second_step_size", json_object_new_int64(half));
        json_object_object_add(s, "type", json_object_new_string("OneCycle"));
        json_object_object_add(s, "params", p);
        json_object_object_add(copy, "scheduler", s);
    }
    *text = strdup(json_object_to_json_string_ext(copy, JSON_C_TO_STRING_PLAIN));
    json_object_put(copy);
    return *text ? DS_OK : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
}

static const char *const COLORS[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                     "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static int sweep(job *j, json_object *root)
{
    const args *a = j->a;
    ds_error err = {0};
    char csv_path[4096], svg_path[4096];
    snprintf(csv_path, sizeof csv_path, "%s.csv", a->out);
    snprintf(svg_path, sizeof svg_path, "%s.svg", a->out);
    if (j->rank == 0 && (check_output(csv_path, sizeof csv_path, a->force) || check_output(svg_path, sizeof svg_path, a->force)))
        return 2;
    if (check_values(a, root))
        return 2;
    json_object *old;
    if (j->rank == 0 && json_object_object_get_ex(root, "scheduler", &old) && json_object_is_type(old, json_type_object)) {
        json_object *t;
        if (json_object_object_get_ex(old, "type", &t) && strcmp(json_object_get_string(t), "OneCycle") != 0)
            fprintf(stderr, "ds-lrrt: note: the sweep replaces %s's %s scheduler with OneCycle\n", a->config,
                    json_object_get_string(t));
    }
    run runs[MAX_VALUES];
    memset(runs, 0, sizeof runs);
    int rc = 0;
    const int64_t S = a->steps;
    const int64_t tail = S / 10 > 0 ? S / 10 : 1; /* the final loss: mean of the last 10% of steps */
    double t0 = now_s();
    int nv = 0; /* runs begun: all of --values unless interrupted */
    for (int v = 0; v < a->n_values && rc == 0; v++) {
        run *r = &runs[v];
        nv = v + 1;
        r->value = a->values[v];
        r->loss = calloc((size_t)S, sizeof *r->loss);
        r->lr = calloc((size_t)S, sizeof *r->lr);
        r->mom = calloc((size_t)S, sizeof *r->mom);
        r->skipped = calloc((size_t)S, sizeof *r->skipped);
        char *text = NULL;
        ds_engine *eng = NULL;
        if (!r->loss || !r->lr || !r->mom || !r->skipped) {
            fprintf(stderr, "ds-lrrt: out of memory\n");
            rc = 1;
            break;
        }
        if (sweep_config(a, root, r->value, &text, &err) != DS_OK || open_engine(j, text, &eng, &err) != DS_OK ||
            (!j->ds && open_data(j, eng, &err) != DS_OK) || ds_engine_set_total_steps(eng, S, &err) != DS_OK) {
            fprintf(stderr, "ds-lrrt: %s\n", err.msg);
            free(text);
            ds_engine_destroy(eng);
            rc = 2;
            break;
        }
        free(text);
        if (v == 0 && j->rank == 0) {
            const ds_config *cfg = ds_engine_config(eng);
            for (int i = 0; i < cfg->n_warnings; i++)
                fprintf(stderr, "ds-lrrt: warning: %s\n", cfg->warnings[i]);
            warn_curriculum(cfg);
            if (!a->quiet)
                say_checkpoints(eng);
            if (!a->quiet)
                printf("ds-lrrt %s: 1Cycle sweep of %s on %s: %d values of cycle_max_lr, %lld steps each, batch "
                       "%lld (%d rank%s); optimizer %s\n",
                       DS_VERSION, a->net, ds_dataset_describe(j->ds), a->n_values, (long long)S,
                       (long long)j->TB, j->world, j->world > 1 ? "s" : "", ds_optimizer_name(&cfg->optimizer));
            fflush(stdout);
        }
        const int tty = j->rank == 0 && !a->quiet && isatty(STDOUT_FILENO);
        if (v == 0)
            catch_sigint(j);
        for (int64_t s = 0; s < S && !interrupted; s++) {
            int applied = 0;
            ds_status st = train_step(j, eng, s, &applied, &err);
            double l = st == DS_OK ? ds_engine_last_loss(eng) : NAN;
            if (st == DS_ERR_NUMERIC || (st == DS_OK && !isfinite(l))) {
                r->diverged = 1;
                break;
            }
            if (st != DS_OK) {
                fprintf(stderr, "ds-lrrt: %s\n", err.msg);
                rc = 1;
                break;
            }
            r->loss[s] = l;
            r->skipped[s] = !applied;
            r->n_skipped += !applied;
            if (applied)
                ds_engine_last_lr(eng, &r->lr[s], &r->mom[s]);
            else
                r->lr[s] = r->mom[s] = NAN; /* no update: no lr or momentum was used */
            r->n = (int)s + 1;
            if (tty)
                progress(s + 1, S, applied ? r->lr[s] : ds_engine_get_lr(eng), l);
        }
        if (tty)
            printf("\r\033[K");
        ds_engine_destroy(eng);
        double sum = 0;
        for (int64_t s = S - tail; s < S && !r->diverged; s++)
            sum += r->loss[s];
        /* ranked only when it trained: every step done, not diverged, and some update applied */
        r->final = r->diverged || r->n < S || r->n_skipped == r->n ? INFINITY : sum / (double)tail;
        if (j->rank == 0 && !a->quiet && rc == 0 && r->n > 0) {
            if (r->diverged)
                printf("  cycle_max_lr %-10.4g diverged at step %d\n", r->value, r->n + 1);
            else if (r->n < S)
                printf("  cycle_max_lr %-10.4g interrupted at step %d (not ranked)\n", r->value, r->n);
            else if (r->n_skipped == r->n)
                printf("  cycle_max_lr %-10.4g every step skipped (fp16 overflow): no update applied\n", r->value);
            else
                printf("  cycle_max_lr %-10.4g final loss %.4f%s\n", r->value, r->final,
                       r->n_skipped ? " (some steps skipped: fp16 overflow)" : "");
            fflush(stdout);
        }
        if (interrupted)
            break;
    }
    release_sigint();
    double elapsed = now_s() - t0;
    if (rc == 0 && j->rank == 0) {
        char csv_tmp[4200], svg_tmp[4200];
        tmp_name(csv_tmp, sizeof csv_tmp, csv_path);
        tmp_name(svg_tmp, sizeof svg_tmp, svg_path);
        FILE *csv = fopen(csv_tmp, "w");
        if (!csv) {
            fprintf(stderr, "ds-lrrt: %s: cannot create it (as %s first): %s\n", csv_path, csv_tmp, strerror(errno));
            rc = 1;
        } else {
            /* lr and momentum empty where none was used: a skipped step, an optimizer without momentum */
            fprintf(csv, "cycle_max_lr,step,lr,momentum,loss,skipped\n");
            for (int v = 0; v < nv; v++)
                for (int s = 0; s < runs[v].n; s++) {
                    char lrs[32] = "", moms[32] = "";
                    if (!isnan(runs[v].lr[s]))
                        snprintf(lrs, sizeof lrs, "%.9g", runs[v].lr[s]);
                    if (!isnan(runs[v].mom[s]))
                        snprintf(moms, sizeof moms, "%.9g", runs[v].mom[s]);
                    fprintf(csv, "%.9g,%d,%s,%s,%.9g,%d\n", runs[v].value, s + 1, lrs, moms, runs[v].loss[s],
                            runs[v].skipped[s]);
                }
            if (fclose(csv) != 0) {
                fprintf(stderr, "ds-lrrt: %s: %s\n", csv_path, strerror(errno));
                rc = 1;
            }
        }
        double *steps = malloc((size_t)S * sizeof *steps);
        svg_series ser[MAX_VALUES];
        char labels[MAX_VALUES][64];
        for (int64_t s = 0; steps && s < S; s++)
            steps[s] = (double)(s + 1);
        for (int v = 0; v < nv; v++) {
            if (runs[v].diverged || !isfinite(runs[v].final))
                snprintf(labels[v], sizeof labels[v], "%.3g: %s", runs[v].value,
                         runs[v].diverged ? "diverged" : "not ranked");
            else
                snprintf(labels[v], sizeof labels[v], "%.3g: %.4f", runs[v].value, runs[v].final);
            ser[v] = (svg_series){.x = steps, .y = runs[v].loss, .n = runs[v].n,
                                  .color = COLORS[v % (int)(sizeof COLORS / sizeof COLORS[0])], .label = labels[v]};
        }
        char title[256];
        snprintf(title, sizeof title, "1Cycle sweep: %s, loss per step by cycle_max_lr", a->net);
        if (rc == 0 && (!steps || write_svg(svg_tmp, title, "step", "loss", ser, nv, 0, 1, (double)S, NAN, "")))
            rc = 1;
        rc = finish_outputs(rc, csv_path, csv_tmp, svg_path, svg_tmp, a->force);
        free(steps);
        qsort(runs, (size_t)nv, sizeof runs[0], by_final);
        printf("%4s  %12s  %12s\n", "rank", "cycle_max_lr", "final loss");
        for (int v = 0; v < nv; v++) {
            if (runs[v].diverged || !isfinite(runs[v].final))
                printf("%4d  %12.4g  %12s\n", v + 1, runs[v].value, runs[v].diverged ? "diverged" : "not ranked");
            else
                printf("%4d  %12.4g  %12.4f\n", v + 1, runs[v].value, runs[v].final);
        }
        printf("final loss: mean training loss of the last %lld steps; %.1f s in all\n", (long long)tail, elapsed);
        if (isfinite(runs[0].final) && own_one_cycle(root))
            printf("best: cycle_max_lr %.3g in %s's OneCycle block\n", runs[0].value, a->config);
        else if (isfinite(runs[0].final))
            printf("best: \"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": %.3g, \"cycle_max_lr\": "
                   "%.3g}} (with cycle steps for your run's length)\n",
                   runs[0].value / 10, runs[0].value);
        if (rc == 0)
            printf("wrote %s and %s\n", csv_path, svg_path);
    }
    for (int v = 0; v < MAX_VALUES; v++) {
        free(runs[v].loss);
        free(runs[v].lr);
        free(runs[v].mom);
        free(runs[v].skipped);
    }
    return rc;
}

int main(int argc, char **argv)
{
    cliarg_sigbus_message("ds-lrrt"); /* a data file truncated under its mapping: say so */
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    if (a.print_schedule > 0)
        return print_schedule(&a);
    ds_error err = {0};
    job j = {.a = &a, .rank = 0, .world = 1};
    /* Under ds-launch with WORLD_SIZE > 1: data parallelism, as in ds-train; rank 0 alone
     * prints and writes the outputs. */
    ds_store *store = NULL;
    int joined = ds_dist_join_from_env(&store, &j.comm, &j.rank, &j.world, &err) == DS_OK;
    j.store = store;
    if (!joined) {
        fprintf(stderr, "ds-lrrt: %s\n", err.msg);
        return 1;
    }
    if (j.rank != 0)
        a.quiet = 1;
    json_object *root = read_config(a.config);
    if (!root)
        rc = 2;
    else
        rc = a.sweep ? sweep(&j, root) : range_test(&j, root);
    json_object_put(root);
    close_job(&j);
    ds_comm_destroy(j.comm);
    if (store && rc != 0) /* the other ranks stop waiting for this one at once */
        ds_store_fail(store, "it stopped with an error (see its output)");
    if (store)
        ds_store_close(store);
    return rc;
}
