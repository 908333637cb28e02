/* ds-train: train a network file with a DeepSpeed config on a dataset. A thin client of the
 * engine API: argument parsing, data feeding, printing and exit codes live here, the training
 * in libds. Exit status: 0 done, 1 failed while training, 2 bad input or usage, 130 stopped by
 * Ctrl-C (one process: after saving the step it finished). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <json-c/json.h>

#include "ds/ds.h"
#include "cliarg.h"
#include "outcheck.h"

static const char *usage_text =
    "usage: ds-train NET.json --config DS.json --data PATH [options]\n"
    "       ds-train --summary NET.json [--config DS.json]\n"
    "       ds-train --plan NET.json --config DS.json [--world_size N]\n"
    "\n"
    "Train the network described by NET.json (see ds-net(5)) with the DeepSpeed config DS.json\n"
    "(see ds-config(5)) on the CPU or a CUDA GPU.\n"
    "\n"
    "  --config, --deepspeed_config FILE   DeepSpeed ds_config.json (--deepspeed, DeepSpeed's own\n"
    "                        flag, is accepted and means nothing)\n"
    "  --data PATH           tokens: a text file or directory of text files (bytes are tokens),\n"
    "                        an llm.c .bin shard, or a Megatron dataset prefix (PATH.bin/.idx);\n"
    "                        features: X.npy (with --labels)\n"
    "  --labels Y.npy        labels for features data: class ids [N] or targets [N, out] (mse)\n"
    "  --steps N             optimizer steps (default: one pass over the data)\n"
    "  --seed S              seed for initialization, shuffling and dropout (default: the\n"
    "                        config's \"seed\", else 42)\n"
    "  --data-order ORDER    shuffled (default) or sequential\n"
    "  --init-from FILE      start from these weights (safetensors, by parameter name)\n"
    "  --save-weights FILE   write the trained weights (safetensors) at the end\n"
    "  --save DIR            save a checkpoint (ds-checkpoint(5)) in DIR at the end, and every\n"
    "                        --save_interval N steps; --keep_last K keeps only the last K saved\n"
    "  --load DIR            resume from DIR's latest checkpoint (--tag T: that one); --steps\n"
    "                        still counts from step 0, so the same command finishes a run.\n"
    "                        A DIR without a checkpoint yet starts at step 0; a DIR that\n"
    "                        does not exist (and is not --save's) is refused\n"
    "  --log-json FILE       one JSON object per optimizer step (rank 0; with \"{rank}\" in\n"
    "                        FILE, every rank writes its own file); after --load resumed, an\n"
    "                        existing FILE goes on from the checkpoint's step\n"
    "  --prof_db FILE        record the run, per step and rank the timers, loss, lr and\n"
    "                        memory, and every collective, in an SQLite database (see ds-prof(1))\n"
    "  --peak_tflops X       peak TFLOP/s of one device, for the MFU that wall_clock_breakdown\n"
    "                        and the final line report\n"
    "  --checkpoint-activations  checkpoint the iterations of every outermost repeat block\n"
    "                        (Megatron-LM's flag): keep each iteration's output, recompute its\n"
    "                        inner activations in backward; the config's activation_checkpointing\n"
    "                        section says how (ds-net(5) \"checkpoint\", ds-config(5))\n"
    "  --micro-batch N       micro-batch to use when the config says \"auto\"\n"
    "  --strict-config       unknown config keys are errors, not warnings\n"
    "  --device DEV          cuda, cpu, or auto (the default: the config's \"device\", else auto:\n"
    "                        cuda when a CUDA GPU is usable, else cpu); under ds-launch each\n"
    "                        rank uses GPU LOCAL_RANK and the ranks talk over NCCL\n"
    "  --backend NAME        cpu, cpu:avx2, cpu:avx512, cpu:generic, cuda or cuda:N (GPU N)\n"
    "  --force               overwrite existing output files\n"
    "  --inject-grad-inf S[:R[:U]]  testing: put +inf in a gradient of rank R (default 0) at\n"
    "                        optimizer step S, after the backward of its micro-step U (from 0;\n"
    "                        default the last), to exercise fp16 overflow handling\n"
    "  --summary             print the layer table and exit\n"
    "  --plan                print the bytes each rank would hold with ZeRO stages 0 to 3\n"
    "                        at --world_size N ranks (default 1), and the ZeRO paper's\n"
    "                        model-state formulas, without training\n"
    "  --quiet               no per-step lines and no progress line\n"
    "  -h, --help            this text;  --version  the version\n"
    "Spellings with - and _ are both taken where DeepSpeed or Megatron-LM uses the other one:\n"
    "  --prof-db, --peak-tflops, --save-interval, --keep-last, --world-size,\n"
    "  --checkpoint_activations, --deepspeed_config (= --config)\n";

enum {
    OPT_CONFIG = 256, OPT_DATA, OPT_LABELS, OPT_STEPS, OPT_SEED, OPT_ORDER, OPT_INIT, OPT_SAVE,
    OPT_LOG, OPT_MICRO, OPT_STRICT, OPT_BACKEND, OPT_FORCE, OPT_SUMMARY, OPT_QUIET, OPT_VERSION,
    OPT_DEEPSPEED, OPT_DEVICE, OPT_INJECT, OPT_PROF_DB, OPT_PEAK, OPT_PLAN, OPT_WORLD,
    OPT_CKPT_SAVE, OPT_CKPT_LOAD, OPT_CKPT_INTERVAL, OPT_CKPT_KEEP, OPT_CKPT_TAG, OPT_ACT_CKPT
};

typedef struct args {
    const char *net, *config, *data, *labels, *init_from, *save, *log_json, *backend, *device;
    const char *prof_db;
    double peak_tflops;
    int64_t steps, micro;
    int64_t inject_step; /* --inject-grad-inf: 0 = off */
    int plan;
    int64_t plan_world;
    int inject_rank;
    int64_t inject_micro; /* -1: the effective batch's last micro-step */
    int seed_set, strict, force, summary, quiet, order_set;
    int act_ckpt; /* --checkpoint-activations */
    uint64_t seed;
    ds_data_order order;
    /* checkpoints (ds/ckpt.h): --save DIR, --save_interval N, --keep_last K, --load DIR, --tag T */
    const char *ckpt_save, *ckpt_load, *ckpt_tag;
    int64_t ckpt_interval, ckpt_keep;
} args;

/* --inject-grad-inf: +inf in the gradient's first element that this rank owns. */
static ds_status inject_inf(ds_engine *eng, const ds_net *net, ds_error *err)
{
    /* the first element this rank owns (under ZeRO-2 a rank holds only its partition) */
    int64_t begin;
    ds_engine_partition(eng, NULL, &begin, NULL);
    int ti = 0;
    while (ti + 1 < net->params.n && net->params.t[ti].offset + net->params.t[ti].numel <= begin)
        ti++;
    const ds_tensor_info *t = &net->params.t[ti];
    int64_t k = begin > t->offset ? begin - t->offset : 0;
    float *g = malloc((size_t)t->numel * sizeof *g);
    if (!g)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    ds_status st = ds_engine_get_grad(eng, t->name, g, t->numel, err);
    if (st == DS_OK) {
        g[k < t->numel ? k : 0] = INFINITY;
        st = ds_engine_set_grad(eng, t->name, g, t->numel, err);
    }
    free(g);
    return st;
}

static int fail_usage(const char *fmt, const char *a)
{
    fprintf(stderr, "ds-train: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n(see ds-train --help)\n");
    return 2;
}

static int parse_i64(const char *flag, const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < min) {
        fprintf(stderr, "ds-train: %s: expected an integer >= %lld, found \"%s\"\n", flag, (long long)min, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, args *a)
{
    static const struct option longopts[] = {
        {"config", required_argument, 0, OPT_CONFIG},
        {"deepspeed_config", required_argument, 0, OPT_CONFIG},
        {"deepspeed", no_argument, 0, OPT_DEEPSPEED},
        {"data", required_argument, 0, OPT_DATA},
        {"labels", required_argument, 0, OPT_LABELS},
        {"steps", required_argument, 0, OPT_STEPS},
        {"seed", required_argument, 0, OPT_SEED},
        {"data-order", required_argument, 0, OPT_ORDER},
        {"init-from", required_argument, 0, OPT_INIT},
        {"save-weights", required_argument, 0, OPT_SAVE},
        {"log-json", required_argument, 0, OPT_LOG},
        {"prof_db", required_argument, 0, OPT_PROF_DB},
        {"prof-db", required_argument, 0, OPT_PROF_DB},
        {"peak_tflops", required_argument, 0, OPT_PEAK},
        {"peak-tflops", required_argument, 0, OPT_PEAK},
        {"micro-batch", required_argument, 0, OPT_MICRO},
        {"strict-config", no_argument, 0, OPT_STRICT},
        {"backend", required_argument, 0, OPT_BACKEND},
        {"device", required_argument, 0, OPT_DEVICE},
        {"inject-grad-inf", required_argument, 0, OPT_INJECT},
        {"force", no_argument, 0, OPT_FORCE},
        {"save", required_argument, 0, OPT_CKPT_SAVE},
        {"load", required_argument, 0, OPT_CKPT_LOAD},
        {"save_interval", required_argument, 0, OPT_CKPT_INTERVAL},
        {"save-interval", required_argument, 0, OPT_CKPT_INTERVAL},
        {"keep_last", required_argument, 0, OPT_CKPT_KEEP},
        {"keep-last", required_argument, 0, OPT_CKPT_KEEP},
        {"tag", required_argument, 0, OPT_CKPT_TAG},
        {"summary", no_argument, 0, OPT_SUMMARY},
        {"checkpoint-activations", no_argument, 0, OPT_ACT_CKPT},
        {"checkpoint_activations", no_argument, 0, OPT_ACT_CKPT},
        {"plan", no_argument, 0, OPT_PLAN},
        {"world_size", required_argument, 0, OPT_WORLD},
        {"world-size", required_argument, 0, OPT_WORLD},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION},
        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->steps = -1;
    a->order = DS_ORDER_SHUFFLED;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            if (a->config) /* the last would win silently */
                return fail_usage("--config given twice (\"%s\" and another)", a->config);
            a->config = optarg;
            break;
        case OPT_DEEPSPEED: break; /* DeepSpeed's helper flag: means nothing by itself */
        case OPT_DATA:
            if (a->data)
                return fail_usage("--data given twice (\"%s\" and another)", a->data);
            a->data = optarg;
            break;
        case OPT_LABELS: a->labels = optarg; break;
        case OPT_STEPS:
            if (parse_i64("--steps", optarg, 1, &a->steps))
                return 2;
            break;
        case OPT_SEED:
            if (cliarg_seed(optarg, &a->seed)) {
                fprintf(stderr, "ds-train: --seed: expected " CLIARG_SEED_EXPECTED ", found \"%s\"\n", optarg);
                return 2;
            }
            a->seed_set = 1;
            break;
        case OPT_ORDER:
            a->order_set = 1;
            if (strcmp(optarg, "shuffled") == 0)
                a->order = DS_ORDER_SHUFFLED;
            else if (strcmp(optarg, "sequential") == 0)
                a->order = DS_ORDER_SEQUENTIAL;
            else
                return fail_usage("--data-order: expected shuffled or sequential, found \"%s\"", optarg);
            break;
        case OPT_INIT: a->init_from = optarg; break;
        case OPT_SAVE: a->save = optarg; break;
        case OPT_LOG: a->log_json = optarg; break;
        case OPT_INJECT: {
            char *end;
            long long st_ = strtoll(optarg, &end, 10), rk = 0, mu = -1;
            if (*end == ':') {
                char *e2;
                rk = strtoll(end + 1, &e2, 10);
                end = e2 == end + 1 ? end : e2;
                if (e2 != end + 1 && *end == ':') {
                    mu = strtoll(end + 1, &e2, 10);
                    end = e2 == end + 1 || mu < 0 ? end : e2;
                }
            }
            if (end == optarg || *end || st_ < 1 || rk < 0 || rk > 1000000)
                return fail_usage("--inject-grad-inf: expected STEP, STEP:RANK or STEP:RANK:MICRO (STEP >= 1, "
                                  "MICRO from 0), found \"%s\"", optarg);
            a->inject_step = st_;
            a->inject_rank = (int)rk;
            a->inject_micro = mu;
            break;
        }
        case OPT_PROF_DB: a->prof_db = optarg; break;
        case OPT_ACT_CKPT: a->act_ckpt = 1; break;
        case OPT_PEAK: {
            char *end;
            errno = 0;
            a->peak_tflops = strtod(optarg, &end);
            if (errno || *end || end == optarg || !(a->peak_tflops > 0) || !isfinite(a->peak_tflops))
                return fail_usage("--peak_tflops: expected a number > 0 (TFLOP/s), found \"%s\"", optarg);
            break;
        }
        case OPT_MICRO:
            if (parse_i64("--micro-batch", optarg, 1, &a->micro))
                return 2;
            break;
        case OPT_STRICT: a->strict = 1; break;
        case OPT_BACKEND: a->backend = optarg; break;
        case OPT_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
                return fail_usage("--device: expected cpu, cuda or auto, found \"%s\"", optarg);
            a->device = optarg;
            break;
        case OPT_FORCE: a->force = 1; break;
        case OPT_CKPT_SAVE: a->ckpt_save = optarg; break;
        case OPT_CKPT_LOAD: a->ckpt_load = optarg; break;
        case OPT_CKPT_TAG: a->ckpt_tag = optarg; break;
        case OPT_CKPT_INTERVAL:
            if (parse_i64("--save_interval", optarg, 1, &a->ckpt_interval))
                return 2;
            break;
        case OPT_CKPT_KEEP:
            if (parse_i64("--keep_last", optarg, 1, &a->ckpt_keep))
                return 2;
            break;
        case OPT_SUMMARY: a->summary = 1; break;
        case OPT_PLAN: a->plan = 1; break;
        case OPT_WORLD:
            if (parse_i64("--world_size", optarg, 1, &a->plan_world))
                return 2;
            break;
        case OPT_QUIET: a->quiet = 1; break;
        case 'h': fputs(usage_text, stdout); return 0;
        case OPT_VERSION: printf("ds-train (ds) %s\n", DS_VERSION); return 0;
        case '?':
        default: {
            char why[400];
            cliarg_bad_option(longopts, argv[optind - 1], optopt, why, sizeof why);
            return fail_usage("%s", why);
        }
        }
    }
    if (optind < argc)
        a->net = argv[optind++];
    if (optind < argc)
        return fail_usage("unexpected argument \"%s\"", argv[optind]);
    if (!a->net)
        return fail_usage("%sno network file given", "");
    /* --device picks the kind, --backend may name the variant; they must agree */
    if (a->device && a->backend && strcmp(a->device, "auto") != 0 &&
        strncmp(a->backend, a->device, strlen(a->device)) != 0)
        return fail_usage("--device and --backend disagree (backend \"%s\")", a->backend);
    if (!a->backend && a->device)
        a->backend = a->device; /* neither: the config's "device", else auto (backend_default) */
    if (a->summary && a->plan)
        return fail_usage("%s--summary and --plan: one at a time", "");
    if (a->plan_world && !a->plan) /* training's world size is ds-launch's (WORLD_SIZE) */
        return fail_usage("%s--world_size is for --plan; a training run's world size is the number of ranks "
                          "ds-launch starts (WORLD_SIZE)", "");
    if (a->summary || a->plan) { /* they train nothing: a training option would do nothing */
        const char *unused = a->data                ? "--data"
                           : a->labels              ? "--labels"
                           : a->steps >= 0          ? "--steps"
                           : a->init_from           ? "--init-from"
                           : a->save                ? "--save-weights"
                           : a->log_json            ? "--log-json"
                           : a->prof_db             ? "--prof_db"
                           : a->ckpt_save           ? "--save"
                           : a->ckpt_load           ? "--load"
                           : a->ckpt_tag            ? "--tag"
                           : a->ckpt_interval       ? "--save_interval"
                           : a->ckpt_keep           ? "--keep_last"
                           : a->inject_step         ? "--inject-grad-inf"
                           : a->seed_set            ? "--seed"
                           : a->peak_tflops > 0     ? "--peak_tflops"
                           : a->force               ? "--force"
                           : a->order_set           ? "--data-order"
                           : a->backend || a->device ? "--backend/--device"
                                                     : NULL;
        if (unused) {
            char msg[160];
            snprintf(msg, sizeof msg, "%%s does nothing with %s (it trains nothing): leave it out", a->plan ? "--plan" : "--summary");
            return fail_usage(msg, unused);
        }
    }
    if (a->summary)
        return -1;
    if (!a->config)
        return fail_usage("%sno DeepSpeed config given (--config DS.json)", "");
    if (a->plan)
        return -1;
    if (!a->data)
        return fail_usage("%sno data given (--data PATH)", "");
    if ((a->ckpt_interval || a->ckpt_keep) && !a->ckpt_save)
        return fail_usage("%s--save_interval and --keep_last need --save DIR", "");
    if (a->ckpt_tag && !a->ckpt_load)
        return fail_usage("%s--tag needs --load DIR", "");
    return -1; /* go on */
}

/* The data loader's position is a function of the global step (sample s*TB+j of the sampler's
 * order), so a checkpoint records what that order depends on, and a resume checks it. */
static void data_state(char *buf, size_t n, const args *a, uint64_t seed, int64_t tb, int64_t samples, int64_t step)
{
    /* spelled as libds gives the client state back (json-c's plain form), for the comparison;
     * "samples" (the dataset's length, which the order depends on too) last: checkpoints of
     * earlier versions end at next_sample */
    snprintf(buf, n, "{\"data\":{\"order\":\"%s\",\"seed\":\"%llu\",\"train_batch_size\":%lld,"
             "\"next_sample\":%lld,\"samples\":%lld}}", a->order == DS_ORDER_SEQUENTIAL ? "sequential" : "shuffled",
             (unsigned long long)seed, (long long)tb, (long long)(step * tb), (long long)samples);
}

/* After a resume: a warning when the checkpoint's network file (its manifest's "network")
 * differs from this run's beyond the parameters, which the load matched by name and shape
 * (other heads, another activation or dropout): the run goes on, as a fine-tuning may mean it. */
static void network_changed(ds_engine *eng, const char *dir, const char *tag)
{
    ds_ckpt *c;
    ds_error err = {0};
    if (ds_ckpt_open(&c, dir, tag, &err) != DS_OK)
        return;
    char *saved = ds_ckpt_manifest_get(c, "network");
    ds_ckpt_close(c);
    const ds_net *net = ds_engine_net(eng);
    json_object *now = net && net->json_text ? json_tokener_parse(net->json_text) : NULL;
    const char *cur = now ? json_object_to_json_string_ext(now, JSON_C_TO_STRING_PLAIN) : NULL;
    if (saved && cur && strcmp(saved, cur) != 0) {
        size_t k = 0;
        while (saved[k] && saved[k] == cur[k])
            k++;
        size_t from = k > 30 ? k - 30 : 0;
        fprintf(stderr, "ds-train: warning: --load %s/%s: the checkpoint was saved with another network (the same "
                "parameter names and shapes): saved ...%.60s..., now ...%.60s...; going on with this one\n", dir, tag,
                saved + from, cur + from);
    }
    json_object_put(now);
    free(saved);
}

/* --load: resume (every rank); 0 = go on (*resumed says whether a checkpoint was there). */
static int ckpt_resume(ds_engine *eng, const args *a, uint64_t seed, int64_t tb, int64_t samples, int rank,
                       int *resumed)
{
    ds_error err = {0};
    char *tag = NULL, *client = NULL;
    *resumed = 0;
    if (!a->ckpt_tag) {
        if (ds_ckpt_newest(a->ckpt_load, &tag, &err) != DS_OK) {
            fprintf(stderr, "ds-train: --load %s\n", err.msg);
            return 2;
        }
        struct stat sb;
        if (!tag && stat(a->ckpt_load, &sb) != 0 && errno == ENOENT) {
            /* (--save's directory exists by now: check_save_dir made it) */
            if (rank == 0)
                fprintf(stderr, "ds-train: --load %s: no such directory; a run that started at step 0 here would hide a "
                        "mistyped path (to start fresh, leave out --load; the command that saves and resumes in one "
                        "directory gives it to --save too)\n", a->ckpt_load);
            return 2;
        }
        if (!tag) { /* DeepSpeed warns and starts fresh too */
            if (rank == 0)
                fprintf(stderr, "ds-train: --load %s: no checkpoint there yet (no %s/latest); starting at step 0\n",
                        a->ckpt_load, a->ckpt_load);
            return 0;
        }
    }
    ds_status st = ds_engine_load_checkpoint(eng, a->ckpt_load, a->ckpt_tag ? a->ckpt_tag : tag, &client, &err);
    if (st != DS_OK) {
        fprintf(stderr, "ds-train: --load: %s\n", err.msg);
        free(tag);
        return 2;
    }
    char want[256];
    data_state(want, sizeof want, a, seed, tb, samples, 0);
    const char *have = client ? strstr(client, "\"order\"") : NULL, *w = strstr(want, "\"order\"");
    const char *w_end = strstr(w, ",\"next_sample\""); /* order, seed and batch must match */
    if (have && strncmp(have, w, (size_t)(w_end - w)) != 0) {
        fprintf(stderr, "ds-train: --load %s: the checkpoint's data order differs from this run's (saved %.*s; "
                "now %.*s): give the same --seed, --data-order and batch size\n", a->ckpt_load,
                (int)(strcspn(have, "}")), have, (int)(w_end - w), w);
        free(tag);
        free(client);
        return 2;
    }
    /* another dataset length: the order (a permutation of the samples) is not the one the run
     * had; it goes on (data may have been added on purpose), saying so */
    const char *hs = client ? strstr(client, "\"samples\":") : NULL;
    if (hs && rank == 0 && strtoll(hs + 10, NULL, 10) != samples)
        fprintf(stderr, "ds-train: warning: --load %s: the checkpoint's data had %lld samples, %s has %lld: the "
                "samples from here on are not the ones the saved run would have taken\n", a->ckpt_load,
                strtoll(hs + 10, NULL, 10), a->data, (long long)samples);
    if (rank == 0) /* even with --quiet: where the run goes on from matters */
        printf("resumed from %s/%s at step %lld\n", a->ckpt_load, a->ckpt_tag ? a->ckpt_tag : tag,
               (long long)ds_engine_global_steps(eng));
    if (rank == 0) /* the parameters match by name and shape; say when the rest of the network does not */
        network_changed(eng, a->ckpt_load, a->ckpt_tag ? a->ckpt_tag : tag);
    free(tag);
    free(client);
    *resumed = 1;
    return 0;
}

/* --save, before training: a checkpoint this run would write (global_stepN for N in (start,
 * steps], a multiple of --save_interval or the last) must not exist yet, since the save refuses
 * to overwrite one: found only then, the run would stop there and its steps since the last
 * save would be lost. 0: none; 1: one exists (said on stderr). */
static int ckpt_save_clear(const args *a, int64_t start, int64_t steps)
{
    DIR *d = opendir(a->ckpt_save);
    if (!d) /* not there yet (or unreadable: the save says why) */
        return 0;
    struct dirent *de;
    int64_t hit = -1;
    while ((de = readdir(d)) != NULL) {
        char *end;
        if (strncmp(de->d_name, "global_step", 11) != 0 || de->d_name[11] < '0' || de->d_name[11] > '9')
            continue;
        errno = 0;
        long long n = strtoll(de->d_name + 11, &end, 10);
        if (*end || errno || n <= start || n > steps)
            continue;
        if ((n == steps || (a->ckpt_interval > 0 && n % a->ckpt_interval == 0)) && (hit < 0 || n < hit))
            hit = n;
    }
    closedir(d);
    if (hit < 0)
        return 0;
    fprintf(stderr,
            "ds-train: --save %s: %s/global_step%lld exists already, and this run would save there at step %lld "
            "(checkpoints are never overwritten); resume from it with --load %s, or save into another folder\n",
            a->ckpt_save, a->ckpt_save, (long long)hit, (long long)hit, a->ckpt_save);
    return 1;
}

/* --save: a checkpoint of this step (every rank); rank 0 prunes to --keep_last. */
static int ckpt_save(ds_engine *eng, const args *a, uint64_t seed, int64_t tb, int64_t samples, int rank)
{
    ds_error err = {0};
    char client[256];
    int64_t step = ds_engine_global_steps(eng);
    data_state(client, sizeof client, a, seed, tb, samples, step);
    if (ds_engine_save_checkpoint(eng, a->ckpt_save, NULL, client, &err) != DS_OK) {
        char *tag = NULL;
        ds_error ignore = {0};
        ds_ckpt_latest(a->ckpt_save, &tag, &ignore);
        fprintf(stderr, "ds-train: --save %s\n", err.msg);
        if (rank == 0 && tag) /* the commit protocol leaves the last good one in place */
            fprintf(stderr, "ds-train: the last checkpoint, %s/%s, is intact (%s/latest)\n", a->ckpt_save, tag,
                    a->ckpt_save);
        free(tag);
        return 1;
    }
    int deleted = 0;
    if (rank == 0 && a->ckpt_keep > 0 && ds_ckpt_prune(a->ckpt_save, (int)a->ckpt_keep, &deleted, &err) != DS_OK) {
        fprintf(stderr, "ds-train: --keep_last: %s\n", err.msg);
        return 1;
    }
    if (rank == 0 && !a->quiet)
        printf("checkpoint %s/global_step%lld saved%s\n", a->ckpt_save, (long long)step,
               deleted ? " (older ones deleted: --keep_last)" : "");
    fflush(stdout); /* (a log behind a pipe or nohup shows it now, as it does the step lines) */
    return 0;
}

/* Ctrl-C in a one-process run: the step under way finishes, a checkpoint is saved there (with
 * --save), and the run stops with exit status 130 saying where it is; a second Ctrl-C ends it at
 * once. Under ds-launch the default stays (every rank would stop at a step of its own; the
 * launcher stops the job). */
static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* 1 when it took SIGINT over (*old: what to put back after the loop) */
static int catch_sigint(int world, struct sigaction *old)
{
    struct sigaction sa;
    if (world > 1 || sigaction(SIGINT, NULL, old) != 0 || old->sa_handler == SIG_IGN) /* ignored: stays so */
        return 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGINT, &sa, NULL) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int n_ckpt_repeats(const ds_net *net)
{
    int n = 0;
    for (int i = 0; i < net->n_repeats; i++)
        n += net->repeats[i].checkpoint;
    return n;
}

/* The curriculum_learning line: the schedule of positions per sample. */
static void print_curriculum(const ds_config *cfg, const ds_net *net)
{
    const ds_curriculum_config *c = &cfg->curriculum;
    if (!c->enabled)
        return;
    printf("curriculum_learning: training forwards read the first N of %lld positions of each sample: ",
           (long long)net->positions);
    if (c->schedule == DS_CL_FIXED_DISCRETE) {
        /* the lengths the steps will read, as the engine computes them: the list clamped to
         * max_difficulty, and held once it reaches it (DeepSpeed's update_difficulty) */
        const int64_t last = c->n_discrete > 1 ? c->max_step[c->n_discrete - 2] + 1 : 1;
        int64_t cur = ds_curriculum_update(c, c->min_difficulty, 1);
        int changes = 0;
        for (int64_t at = 2; at <= last; at++) {
            const int64_t next = ds_curriculum_update(c, cur, at);
            if (next != cur)
                printf("%lld to step %lld, ", (long long)cur, (long long)(at - 1)), changes++;
            cur = next;
        }
        printf(changes ? "then %lld" : "%lld throughout", (long long)cur);
        if (cur != c->difficulty[c->n_discrete - 1])
            printf(" (held at max_difficulty %lld)", (long long)c->max_difficulty);
        printf("\n");
    } else {
        int64_t at = 1, cur = ds_curriculum_update(c, c->min_difficulty, 1); /* the first step at the top */
        while (cur < c->max_difficulty && at < 100 * c->total_step + 100)
            cur = ds_curriculum_update(c, cur, ++at);
        printf("%lld at step 1, %lld from step %lld (", (long long)ds_curriculum_update(c, c->min_difficulty, 1),
               (long long)c->max_difficulty, (long long)at);
        if (c->schedule == DS_CL_FIXED_ROOT)
            printf("fixed_root of degree %g", c->root_degree);
        else
            printf("fixed_linear");
        printf(", multiples of %lld)\n", (long long)c->difficulty_step);
    }
}

/* The progressive_layer_drop line: which layers, with what probabilities. */
static void print_pld(const ds_config *cfg, ds_engine *eng)
{
    const int L = ds_engine_layer_drop(eng, NULL, NULL);
    if (!L)
        return;
    const ds_pld_config *c = &cfg->pld;
    printf("progressive_layer_drop: training forwards keep transformer layer l of %d with probability "
           "1 - (l/%d)(1 - theta), and scale a kept one's residual branches by 1/that; theta is 1 at steps 1 "
           "and 2, then %g exp(-%g (step - 2)) + %g (the FLOP counts assume every layer runs)\n",
           L, L, 1.0 - c->theta, c->gamma, c->theta);
}

/* The activation checkpointing line, or a warning where the config's section has nothing to act on. */
static void print_actckpt(ds_engine *eng, const char *config, const char *netfile)
{
    const ds_config *cfg = ds_engine_config(eng);
    const ds_net *net = ds_engine_net(eng);
    const ds_actckpt_config *ac = &cfg->actckpt;
    ds_memory_report mr;
    ds_engine_memory_report(eng, &mr);
    if (!mr.checkpoints) {
        if (ac->partition_activations || ac->contiguous || ac->cpu_checkpointing || ac->synchronize ||
            ac->profile || ac->number_checkpoints)
            fprintf(stderr, "ds-train: warning: %s: activation_checkpointing: %s checkpoints no layers, so the "
                    "section changes nothing; give a repeat \"checkpoint\": true (ds-net(5)) or pass "
                    "--checkpoint-activations\n", config, netfile);
        return;
    }
    printf("activation checkpointing: %d checkpoints (", mr.checkpoints);
    for (int i = 0, k = 0; i < net->n_repeats; i++)
        if (net->repeats[i].checkpoint)
            printf("%s%s x %d", k++ ? ", " : "", net->repeats[i].name, net->repeats[i].count);
    printf("); backward recomputes %d of them (+%.0f%% forward FLOPs)", mr.checkpoints - n_ckpt_repeats(net), 100.0 * (double)ds_net_recompute_flops(net) /
                                                                   (double)net->flops_per_sample);
    if (ac->partition_activations)
        printf("; partition_activations: a model-parallel group of 1, so each rank keeps whole checkpoints");
    if (ac->contiguous)
        printf("; one block per repeat (contiguous_memory_optimization)");
    if (ac->cpu_checkpointing)
        printf("; in host memory (cpu_checkpointing)");
    if (ac->synchronize)
        printf("; synchronized at segment edges");
    if (ac->profile)
        printf("; timed (profile)");
    printf("\n");
}

static int summary_only(const args *a)
{
    ds_error err = {0};
    ds_net *net;
    if (ds_net_parse_file(&net, a->net, &err) != DS_OK) {
        fprintf(stderr, "ds-train: %s\n", err.msg);
        return 2;
    }
    if (a->act_ckpt && ds_net_checkpoint_repeats(net, 1) == 0) {
        fprintf(stderr, "ds-train: %s: checkpointing activations needs a repeat block (its iterations are the "
                "checkpointed segments); the network has none\n", a->net);
        ds_net_free(net);
        return 2;
    }
    int64_t batch = 1;
    if (a->config) {
        ds_config cfg;
        ds_config_hints hints = {.micro_batch = a->micro};
        if (ds_config_load_file(&cfg, a->config, 1, a->strict, &hints, &err) != DS_OK) {
            fprintf(stderr, "ds-train: %s\n", err.msg);
            ds_net_free(net);
            return 2;
        }
        batch = cfg.micro_batch;
        for (int i = 0; i < cfg.n_warnings; i++)
            fprintf(stderr, "ds-train: warning: %s\n", cfg.warnings[i]);
        ds_config_free(&cfg);
    }
    char *s = ds_net_summary(net, batch);
    if (s)
        fputs(s, stdout);
    free(s);
    ds_net_free(net);
    return 0;
}


/* --plan: the bytes rank 0 would hold at stages 0 to 3 (an engine laid out without
 * training), beside the ZeRO paper's model-state formulas with this build's byte sizes. */
static int plan_only(const args *a)
{
    ds_error err = {0};
    if (!a->config) {
        fprintf(stderr, "ds-train: --plan needs --config DS.json\n");
        return 2;
    }
    int W = (int)(a->plan_world > 0 ? a->plan_world : 1);
    /* the file as training reads it: duplicate keys, integers past 64 bits, --strict-config and
     * every refusal are the parser's, and its warnings are printed as training prints them; the
     * stages below edit json-c's tree of the same text (read once: the config may be a pipe) */
    json_object *root = NULL;
    {
        ds_config c;
        ds_config_hints hints = {.micro_batch = a->micro};
        if (ds_config_load_file(&c, a->config, W, a->strict, &hints, &err) != DS_OK) {
            fprintf(stderr, "ds-train: %s\n", err.msg);
            return 2;
        }
        for (int i = 0; i < c.n_warnings; i++)
            fprintf(stderr, "ds-train: warning: %s\n", c.warnings[i]);
        root = c.json_text ? json_tokener_parse(c.json_text) : NULL;
        ds_config_free(&c);
    }
    if (!root || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        fprintf(stderr, "ds-train: %s: --plan: the config is not a JSON object\n", a->config);
        return 2;
    }
    ds_memory_report m[4];
    int n_repeats = 0;
    double recompute = 0;
    double psi = 0;
    int prec = 0;
    const char *opt = "";
    char optname[64] = "";
    for (int stage = 0; stage < 4; stage++) {
        json_object *z = NULL;
        if (!json_object_object_get_ex(root, "zero_optimization", &z) || !json_object_is_type(z, json_type_object)) {
            z = json_object_new_object();
            json_object_object_add(root, "zero_optimization", z);
        }
        json_object_object_add(z, "stage", json_object_new_int(stage));
        ds_engine_options eo = {.config_json = json_object_to_json_string(root), .config_name = a->config,
                                .net_path = a->net, .backend = "cpu", .micro_batch_hint = a->micro,
                                .world_size = W, .plan_only = 1,
                                .checkpoint_activations = a->act_ckpt};
        ds_engine *eng;
        if (ds_initialize(&eng, &eo, &err) != DS_OK) {
            fprintf(stderr, "ds-train: --plan (stage %d): %s\n", stage, err.msg);
            json_object_put(root);
            return 2;
        }
        ds_engine_memory_report(eng, &m[stage]);
        if (stage == 0) {
            const ds_net *nn = ds_engine_net(eng);
            n_repeats = nn->n_repeats;
            recompute = nn->flops_per_sample ? 100.0 * (double)ds_net_recompute_flops(nn) / (double)nn->flops_per_sample : 0;
        }
        psi = (double)ds_engine_net(eng)->total_params;
        prec = ds_engine_precision(eng);
        snprintf(optname, sizeof optname, "%s", ds_optimizer_name(&ds_engine_config(eng)->optimizer));
        ds_engine_destroy(eng);
    }
    /* what activation checkpointing would give, where the network has repeats to checkpoint */
    ds_memory_report ck = {0};
    char ck_why[DS_ERROR_MSG_MAX] = "";
    if (!m[0].checkpoints && n_repeats) { /* (advice: the plan stands whatever it says) */
        json_object *z = NULL;
        json_object_object_get_ex(root, "zero_optimization", &z);
        json_object_object_add(z, "stage", json_object_new_int(0));
        ds_engine_options eo = {.config_json = json_object_to_json_string(root), .config_name = a->config,
                                .net_path = a->net, .backend = "cpu", .micro_batch_hint = a->micro,
                                .world_size = W, .plan_only = 1, .checkpoint_activations = 1};
        ds_engine *eng;
        if (ds_initialize(&eng, &eo, &err) != DS_OK) {
            snprintf(ck_why, sizeof ck_why, "%s", err.msg);
        } else {
            ds_engine_memory_report(eng, &ck);
            const ds_net *nn = ds_engine_net(eng);
            recompute = nn->flops_per_sample ? 100.0 * (double)ds_net_recompute_flops(nn) / (double)nn->flops_per_sample : 0;
            ds_engine_destroy(eng);
        }
    }
    json_object_put(root);
    opt = optname;
    const char *pname = prec == DS_PREC_FP16 ? "fp16" : prec == DS_PREC_BF16 ? "bf16" : "fp32";
    printf("plan: %s, %.0f parameters (Psi), %d rank%s, %s, optimizer %s; bytes held by rank 0\n", a->net, psi, W,
           W == 1 ? "" : "s", pname, opt);
    printf("%-6s %12s %12s %12s %12s %12s %12s %12s %14s\n", "stage", "params", "master", "grads", "optimizer",
           "model states", "activations", "comm", "total");
    for (int st = 0; st < 4; st++) {
        double ms = (double)(m[st].params + m[st].master + m[st].grads + m[st].optim);
        printf("%-6d %12.3f %12.3f %12.3f %12.3f %12.3f %12.3f %12.3f %14.3f  MB\n", st, m[st].params / 1e6,
               m[st].master / 1e6, m[st].grads / 1e6, m[st].optim / 1e6, ms / 1e6, m[st].activations / 1e6,
               m[st].comm / 1e6, (ms + (double)m[st].activations + (double)m[st].comm) / 1e6);
    }
    /* ZeRO paper (Psi parameters, N ranks, K bytes of optimizer state per parameter):
     * stage 0 (p + g + K) Psi, stage 1 (p + g) Psi + K Psi / N, stage 2 p Psi + (g + K) Psi / N,
     * stage 3 (p + g + K) Psi / N, with p, g the bytes of a parameter and of a gradient: 2 and 2 for the paper's fp16 (K = 12:
     * fp32 master, m, v); in this build gradients are stored as fp32 (g = 4), the working
     * weights as 16-bit values where the activations are (p = 2, else 4), and K counts the
     * master copy (4, in 16-bit training) and the optimizer state. */
    double K = (double)m[0].optim / psi + (prec ? 4.0 : 0.0);
    double p = m[0].activations16 ? 2 : 4, g = 4;
    printf("ZeRO paper formulas, this build's sizes (p = %g, g = %g, K = %g bytes per parameter):\n", p, g, K);
    double fm[4] = {(p + g + K) * psi, (p + g) * psi + K * psi / W, p * psi + (g + K) * psi / W,
                    (p + g + K) * psi / W};
    for (int st = 0; st < 4; st++) {
        double ms = (double)(m[st].params + m[st].master + m[st].grads + m[st].optim);
        printf("  stage %d: %12.1f MB (model states above: %.1f MB; difference %.2f%%, partition padding%s)\n", st,
               fm[st] / 1e6, ms / 1e6, 100.0 * (ms - fm[st]) / fm[st],
               st == 3 && W > 1 ? ", the persistent tensors and one layer's gathered weights" : "");
    }
    printf("ZeRO paper, mixed-precision Adam (p = g = 2, K = 12): stage 0 %.1f MB, stage 1 %.1f MB, stage 2 %.1f MB, "
           "stage 3 %.1f MB\n", 16 * psi / 1e6, (4 * psi + 12 * psi / W) / 1e6, (2 * psi + 14 * psi / W) / 1e6,
           16 * psi / W / 1e6);
    if (m[0].checkpoints)
        printf("activation checkpointing: %d checkpoints (the activations above); backward recomputes %.0f%% of the "
               "forward FLOPs\n", m[0].checkpoints, recompute);
    else if (ck.checkpoints)
        printf("with --checkpoint-activations: activations %.3f MB instead of %.3f MB (%d checkpoints; backward "
               "recomputes %.0f%% of the forward FLOPs)\n", ck.activations / 1e6, m[0].activations / 1e6,
               ck.checkpoints, recompute);
    else if (ck_why[0])
        printf("with --checkpoint-activations: refused: %s\n", ck_why);
    return 0;
}

/* Refuse, before any work is done, an output that would clobber a file, replace something that
 * is not a regular file, or cannot be written (outcheck.h). stream (--log-json): an existing
 * character device or pipe (/dev/stdout) is written as it is, without --force. */
/* --log-json after --load resumed at step start > 0: the log goes on. Its records up to that step
 * are kept (the run's history, which --force would have thrown away), the later ones (steps
 * trained after the checkpoint by the run that stopped, a last line cut off by a kill among
 * them) dropped, the rest rewritten atomically (the real file behind a symbolic link, with its
 * mode); then it is opened for appending. It must be this run's log: records of ds-train whose
 * last kept one is the checkpoint's step (not another run's log, nor one with a gap). NULL with
 * the reason in why; *dropped_partial says a cut-off last line was dropped. */
static FILE *continue_log(const char *path, int64_t start, char *why, size_t n, int *dropped_partial)
{
    struct stat sb;
    *dropped_partial = 0;
    snprintf(why, n, "?");
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) { /* none yet, or a stream (/dev/stdout, a FIFO) */
        FILE *f = fopen(path, "a");
        if (!f)
            snprintf(why, n, "%s", strerror(errno));
        return f;
    }
    char *real = realpath(path, NULL); /* (rename() would replace a link, not its target) */
    if (!real) {
        snprintf(why, n, "%s", strerror(errno));
        return NULL;
    }
    FILE *in = fopen(real, "r");
    if (!in) {
        snprintf(why, n, "%s", strerror(errno));
        free(real);
        return NULL;
    }
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", real, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, sb.st_mode & 07777);
    FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!out) {
        snprintf(why, n, "cannot write %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        fclose(in);
        free(real);
        return NULL;
    }
    int moded = fchmod(fd, sb.st_mode & 07777) == 0; /* (past the umask; the file works either way) */
    (void)moded;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    long long last_kept = 0;
    int bad = 0;
    while ((len = getline(&line, &cap, in)) > 0) {
        lineno++;
        long long step;
        int used = 0;
        if (line[len - 1] != '\n') { /* the last line (getline's only one without), cut off by a kill */
            *dropped_partial = 1;
            break;
        }
        if (sscanf(line, "{\"step\": %lld,%n", &step, &used) != 1 || used == 0) {
            snprintf(why, n, "line %ld is not a ds-train step record; not appending to it (--force starts a new log)",
                     lineno);
            bad = 1;
            break;
        }
        if (step <= start) {
            if (fwrite(line, 1, (size_t)len, out) != (size_t)len) {
                snprintf(why, n, "cannot write %s: %s", tmp, strerror(errno));
                bad = 1;
                break;
            }
            last_kept = step;
        }
    }
    free(line);
    fclose(in);
    if (!bad && last_kept != start) {
        snprintf(why, n, "its records %s step %lld, but the checkpoint is at step %lld: not this run's log? "
                 "(--force starts a new one; or give another name)", last_kept ? "end at" : "hold no", last_kept,
                 (long long)start);
        bad = 1;
    }
    if (!bad && (fflush(out) != 0 || fsync(fileno(out)) != 0)) {
        snprintf(why, n, "cannot write %s: %s", tmp, strerror(errno));
        bad = 1;
    }
    if (fclose(out) != 0 && !bad) {
        snprintf(why, n, "cannot write %s: %s", tmp, strerror(errno));
        bad = 1;
    }
    if (!bad && rename(tmp, real) != 0) {
        snprintf(why, n, "cannot replace it: %s", strerror(errno));
        bad = 1;
    }
    FILE *f = NULL;
    if (bad)
        unlink(tmp);
    else if (!(f = fopen(real, "a")))
        snprintf(why, n, "%s", strerror(errno));
    free(real);
    return f;
}

static int check_output(const char *flag, const char *path, int force, int stream)
{
    char why[4400];
    if (!path || outcheck_file(path, force, stream, why, sizeof why) == 0)
        return 0;
    fprintf(stderr, "ds-train: %s %s: %s\n", flag, path, why);
    return -1;
}

/* --save's directory is one job's: rank 0 holds an flock on DIR/.ds-train.lock (holding its pid)
 * for the whole run, and a second job that would save there is refused at once. Two runs saving
 * into one directory lost work: started together, both died at their first save; with --keep_last
 * one deleted the other's checkpoints. The lock goes with the process; the file stays (a dot
 * name, which the checkpoint tools pass over). Returns the descriptor to keep open, or -1. */
static int lock_save_dir(const char *dir, int *fd_out)
{
    char f[4200];
    *fd_out = -1;
    snprintf(f, sizeof f, "%s/.ds-train.lock", dir);
    int fd = open(f, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EACCES) /* another user's lock file: flock works on a read-only descriptor */
        fd = open(f, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "ds-train: --save %s: cannot create %s: %s\n", dir, f, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int e = errno;
        if (e == ENOSYS || e == EOPNOTSUPP || e == ENOLCK) { /* a file system without locks (Lustre without
                                                              * -o flock, NFS without lockd, FUSE): save unguarded */
            fprintf(stderr, "ds-train: warning: --save %s: this file system cannot lock %s (%s): a second run saving "
                    "here would not be stopped\n", dir, f, strerror(e));
            close(fd);
            return 0;
        }
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        errno = e;
        if (e == EWOULDBLOCK)
            fprintf(stderr, "ds-train: --save %s: another ds-train%s%s%s is saving checkpoints there; two runs in "
                    "one directory would overwrite or prune each other's: give this run another directory\n", dir,
                    *pid ? " (pid " : "", pid, *pid ? ")" : "");
        else
            fprintf(stderr, "ds-train: --save %s: cannot lock %s: %s\n", dir, f, strerror(errno));
        close(fd);
        return -1;
    }
    char me[32];
    int n = snprintf(me, sizeof me, "%ld\n", (long)getpid());
    int wrote = ftruncate(fd, 0) == 0 && pwrite(fd, me, (size_t)n, 0) == n; /* (only the message reads it) */
    (void)wrote;
    *fd_out = fd;
    return 0;
}

/* --save DIR: a directory, or a name in a folder that takes one. */
static int check_save_dir(const char *dir)
{
    struct stat sb;
    if (!dir)
        return 0;
    if (!*dir) {
        fprintf(stderr, "ds-train: --save: expected a directory, found \"\"\n");
        return -1;
    }
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "ds-train: --save %s: not a directory\n", dir);
            return -1;
        }
        char f[4200], why[4400];
        /* a save rewrites DIR/latest: it must be a checkpoint's, naming one of DIR's tags */
        snprintf(f, sizeof f, "%s/latest", dir);
        if (lstat(f, &sb) == 0) {
            char *tag = NULL;
            ds_error lerr = {0};
            if (!S_ISREG(sb.st_mode)) {
                fprintf(stderr, "ds-train: --save %s: %s exists and is not a file; a checkpoint directory's latest "
                        "is a file naming its newest tag\n", dir, f);
                return -1;
            }
            if (ds_ckpt_latest(dir, &tag, &lerr) != DS_OK || !tag) {
                fprintf(stderr, "ds-train: --save %s: %s is not a checkpoint's latest (%s); a save would replace "
                        "it: save into another directory\n", dir, f, lerr.msg[0] ? lerr.msg : "empty");
                free(tag);
                return -1;
            }
            char m[4400];
            snprintf(m, sizeof m, "%s/%s/manifest.json", dir, tag);
            if (stat(m, &sb) != 0) {
                fprintf(stderr, "ds-train: --save %s: %s names \"%s\", but there is no %s; a save would replace "
                        "that latest: save into another directory\n", dir, f, tag, m);
                free(tag);
                return -1;
            }
            free(tag);
        }
        snprintf(f, sizeof f, "%s/x", dir);
        if (outcheck_folder(f, why, sizeof why) == 0) /* files can be made in it */
            return 0;
        fprintf(stderr, "ds-train: --save %s: %s\n", dir, why);
        return -1;
    }
    /* it would be made at the first save: make it now, or say why it cannot be. It stays (an
     * empty checkpoint directory, which --load takes as step 0): removing it again would race
     * with the other ranks' checks of the same directory. */
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
        fprintf(stderr, "ds-train: --save: path too long\n");
        return -1;
    }
    for (char *q = buf + 1;; q++) /* mkdir -p, as the save itself does */
        if (*q == '/' || !*q) {
            char c = *q;
            *q = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "ds-train: --save %s: cannot create the directory %s: %s\n", dir, buf,
                        strerror(errno));
                return -1;
            }
            *q = c;
            if (!c)
                break;
        }
    return 0;
}

/* An output's path with its folder resolved (the folder exists: check_output said so), to tell
 * whether two outputs are one file; "" where it cannot be worked out. */
static void out_identity(const char *path, char *buf, size_t n)
{
    char dir[4096], rp[4096];
    buf[0] = 0;
    if (!path || realpath(path, rp)) {
        if (path)
            snprintf(buf, n, "%s", rp);
        return;
    }
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + (slash == path) : 1, slash ? path : ".");
    if (realpath(dir, rp))
        snprintf(buf, n, "%s/%s", rp, slash ? slash + 1 : path);
}

static void progress(int64_t step, int64_t total, double loss, double tps, const char *unit)
{
    char bar[CLIARG_BAR + 1];
    cliarg_bar(bar, step, total);
    printf("\r[%s] %lld/%lld loss %.4f %.0f %s/s\033[K", bar, (long long)step, (long long)total, loss, tps, unit);
    fflush(stdout);
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* The run database: the run, this rank's host and memory (collective over comm). */
static ds_status open_rundb(ds_rundb **out, const args *a, int argc, char **argv, ds_engine *eng,
                            int64_t steps, int threads, ds_comm *comm, ds_error *err)
{
    const ds_config *cfg = ds_engine_config(eng);
    const ds_net *net = ds_engine_net(eng);
    char cmd[4096] = "";
    size_t n = 0;
    for (int i = 0; i < argc && n + 2 < sizeof cmd; i++)
        n += (size_t)snprintf(cmd + n, sizeof cmd - n, "%s%s", i ? " " : "", argv[i]);
    size_t pb, gb, ob, ab;
    ds_engine_memory(eng, &pb, &gb, &ob, &ab);
    const char *be = ds_engine_backend_name(eng);
    char backend[256];
    snprintf(backend, sizeof backend, "%s%s", strncmp(be, "cuda", 4) ? "cpu:" : "", be);
    ds_run_info ri = {
        .command_line = cmd, .config_path = a->config, .config_json = cfg->json_text,
        .net_path = a->net, .net_json = net->json_text, .data_path = a->data,
        .backend = backend, .world_size = cfg->world_size,
        .micro_batch = cfg->micro_batch, .grad_accum = cfg->grad_accum,
        .train_batch_size = cfg->train_batch_size, .total_params = net->total_params,
        .flops_per_sample = net->flops_per_sample, .positions = net->positions,
        .steps_planned = steps, .peak_tflops = a->peak_tflops, .threads = threads,
        .params_bytes = (int64_t)pb, .grads_bytes = (int64_t)gb, .optim_bytes = (int64_t)ob,
        .activation_bytes = (int64_t)ab};
    return ds_rundb_create(out, a->prof_db, a->force, &ri, comm, err);
}

/* One optimizer step into the run database; flush (a collective) every print interval. */
static ds_status record_step(ds_rundb *db, ds_engine *eng, int64_t step, double iter_ms, int flush,
                             ds_error *err)
{
    const ds_timers *tm = ds_engine_timers(eng);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    ds_step_record r = {
        .step = step, .loss = ds_engine_last_loss(eng), .lr = ds_engine_get_lr(eng),
        .grad_norm = ds_engine_get_global_grad_norm(eng), .loss_scale = ds_engine_last_step_loss_scale(eng),
        .skipped = !ds_engine_was_step_applied(eng), .iter_ms = iter_ms,
        .samples = ds_engine_global_samples(eng), .max_rss_bytes = (int64_t)ru.ru_maxrss * 1024,
        .wall_time = (double)now.tv_sec + 1e-9 * (double)now.tv_nsec};
    for (int i = 0; i < DS_TIMER_COUNT; i++)
        r.timer_ms[i] = tm ? tm->last_global_ms[i] : -1.0;
    int n_coll;
    const ds_collective_record *coll = ds_engine_last_collectives(eng, &n_coll);
    ds_status st = ds_rundb_add_step(db, &r, coll, n_coll, err);
    if (st == DS_OK && flush)
        st = ds_rundb_flush(db, err);
    return st;
}

/* Rank 0 opens the config's monitors; every rank learns whether that worked, and why (a
 * broadcast when one is enabled and there are several ranks), so that a refusal stops them all
 * before training, each naming the cause: the launcher stops the other ranks when the first one
 * exits, which may be before rank 0 has printed its own message. */
static ds_status open_monitors(ds_monitor **mon, const ds_config *cfg, int rank, ds_comm *comm, ds_error *err)
{
    ds_status st = rank == 0 ? ds_monitor_open(mon, &cfg->tensorboard, &cfg->csv_monitor, err) : DS_OK;
    if (comm && (cfg->tensorboard.enabled || cfg->csv_monitor.enabled)) {
        struct {
            int32_t status;
            char msg[DS_ERROR_MSG_MAX];
        } o = {.status = st};
        if (st != DS_OK)
            snprintf(o.msg, sizeof o.msg, "%s", err->msg);
        ds_error cerr;
        ds_status cst = ds_comm_broadcast(comm, &o, sizeof o, 0, &cerr);
        if (cst != DS_OK && st == DS_OK) {
            *err = cerr;
            st = cst;
        } else if (o.status != DS_OK && st == DS_OK) {
            st = ds_error_set(err, (ds_status)o.status, "rank 0 could not open the monitors: %s", o.msg);
        }
        if (st != DS_OK) {
            ds_monitor_close(*mon);
            *mon = NULL;
        }
    }
    return st;
}

/* DeepSpeed's monitor events of an optimizer step: the loss at the samples before it (written in
 * its backward), then the next lr, fp16's loss scale and, with wall_clock_breakdown, the global
 * timers at the samples after it. ds's loss is the mean over the ranks (DeepSpeed writes rank
 * 0's). */
static ds_status write_monitor(ds_monitor *mon, ds_engine *eng, double loss, int64_t TB)
{
    ds_error err;
    const int64_t gs = ds_engine_global_samples(eng);
    ds_status st = ds_monitor_write(mon, "Train/Samples/train_loss", loss, gs - TB, &err);
    if (st == DS_OK)
        st = ds_monitor_write(mon, "Train/Samples/lr", ds_engine_get_lr(eng), gs, &err);
    if (st == DS_OK && ds_engine_precision(eng) == DS_PREC_FP16)
        st = ds_monitor_write(mon, "Train/Samples/loss_scale", ds_engine_loss_scale(eng), gs, &err);
    const ds_timers *tm = ds_engine_timers(eng);
    static const char *const names[DS_TIMER_COUNT] = {"forward", "backward", "backward_inner", "backward_allreduce",
                                                      "step"};
    for (int i = 0; st == DS_OK && tm && ds_engine_config(eng)->wall_clock_breakdown && i < DS_TIMER_COUNT; i++) {
        char tag[64];
        snprintf(tag, sizeof tag, "Train/Samples/elapsed_time_ms_%s", names[i]);
        st = ds_monitor_write(mon, tag, tm->last_global_ms[i], gs, &err);
    }
    if (st != DS_OK)
        fprintf(stderr, "ds-train: %s\n", err.msg);
    return st;
}

/* wall_clock_breakdown: DeepSpeed's two lines (log_dist to rank 0), then throughput and memory. */
static void print_breakdown(ds_engine *eng, double iter_ms, int world, double peak_tflops, int64_t seqlen)
{
    const ds_timers *tm = ds_engine_timers(eng);
    if (!tm)
        return;
    char line[512];
    ds_timers_format(tm->last_micro_ms, 1, line, sizeof line);
    printf("[Rank 0] %s\n", line);
    ds_timers_format(tm->last_global_ms, 0, line, sizeof line);
    printf("[Rank 0] %s\n", line);
    const ds_config *cfg = ds_engine_config(eng);
    const ds_net *net = ds_engine_net(eng);
    double s = iter_ms / 1e3;
    /* (curriculum learning: this step's positions per sample) */
    double rank_flops = ds_prof_model_flops(ds_net_flops_per_sample_at(net, seqlen), cfg->train_batch_size, world) / s;
    char mfu[64] = "";
    if (peak_tflops > 0)
        snprintf(mfu, sizeof mfu, ", MFU %.2f%% of %g TFLOP/s", 100.0 * rank_flops / (peak_tflops * 1e12), peak_tflops);
    size_t pb, gb, ob, ab;
    ds_engine_memory(eng, &pb, &gb, &ob, &ab);
    ds_memory_report mr; /* params as the header counts them: the working weights, master beside */
    ds_engine_memory_report(eng, &mr);
    char master[40] = "";
    if (mr.master)
        snprintf(master, sizeof master, ", master %.1f", mr.master / 1e6);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("[Rank 0] %.0f %s/s, model %.3f TFLOP/s per rank%s; memory (MB) params %.1f%s, grads %.1f, "
           "optimizer %.1f, activations %.1f, peak RSS %.1f\n",
           (double)cfg->train_batch_size * (double)seqlen / s,
           net->input == DS_INPUT_TOKENS ? "tokens" : "samples", rank_flops / 1e12, mfu, mr.params / 1e6, master,
           gb / 1e6, ob / 1e6, ab / 1e6, ru.ru_maxrss / 1024.0);
}

int main(int argc, char **argv)
{
    cliarg_sigbus_message("ds-train"); /* a data file truncated under its mapping: say so */
    args a;
    /* the command line as typed, for the run database (getopt_long reorders argv) */
    char *typed[256];
    const int ntyped = argc < 256 ? argc : 256;
    memcpy(typed, argv, (size_t)ntyped * sizeof *typed);
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    if (a.summary)
        return summary_only(&a);
    if (a.plan)
        return plan_only(&a);
    ds_error err = {0};
    /* Under ds-launch with WORLD_SIZE > 1: data parallelism over the job's rendezvous. Rank 0
     * alone prints, logs and writes weights; every rank trains its share of each batch. */
    int rank = 0, world = 1, save_rank0_only = 0;
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    if (ds_dist_join_from_env(&store, &comm, &rank, &world, &err) != DS_OK) {
        fprintf(stderr, "ds-train: %s\n", err.msg);
        return 1;
    }
    if (world > 1) {
        if (rank != 0) {
            a.quiet = 1;
            save_rank0_only = 1; /* decided with the config below */
            if (a.log_json && !strstr(a.log_json, "{rank}"))
                a.log_json = NULL;
        }
    }
    char log_path[4096];
    if (a.log_json && strstr(a.log_json, "{rank}")) {
        const char *at = strstr(a.log_json, "{rank}");
        snprintf(log_path, sizeof log_path, "%.*s%d%s", (int)(at - a.log_json), a.log_json, rank, at + 6);
        a.log_json = log_path;
    }
    /* --prof_db: one process checks here; with several ranks rank 0's check is shared with all
     * of them when the database is created */
    if (a.inject_step && a.inject_rank >= world) {
        fprintf(stderr, "ds-train: --inject-grad-inf %lld:%d: there is no rank %d in a job of %d\n",
                (long long)a.inject_step, a.inject_rank, a.inject_rank, world);
        ds_comm_destroy(comm);
        if (store) {
            ds_store_fail(store, "it stopped with an error (see its output)");
            ds_store_close(store);
        }
        return 2;
    }
    /* --save's directory first: another output may go in it; rank 0 locks it for the job */
    int save_lock = -1;
    int out_bad = check_save_dir(a.ckpt_save) || (rank == 0 && a.ckpt_save && lock_save_dir(a.ckpt_save, &save_lock)) ||
                  check_output("--save-weights", rank == 0 ? a.save : NULL, a.force, 0) || /* rank 0 writes it */
                  /* (with --load, decided once the resume is known: a resumed run's log goes on) */
                  check_output("--log-json", a.log_json, a.force || a.ckpt_load, 1) ||
                  (world == 1 && check_output("--prof_db", a.prof_db, a.force, 0));
    if (!out_bad) { /* no two outputs may be one file */
        const char *flags[4] = {"--save-weights", "--log-json", "--prof_db", "--save"};
        const char *paths[4] = {a.save, a.log_json, a.prof_db, a.ckpt_save};
        char ids[4][4200];
        for (int i = 0; i < 4; i++)
            out_identity(paths[i], ids[i], sizeof ids[i]);
        for (int i = 0; i < 4 && !out_bad; i++)
            for (int j = i + 1; j < 4 && !out_bad; j++)
                if (ids[i][0] && !strcmp(ids[i], ids[j])) {
                    fprintf(stderr, "ds-train: %s %s and %s %s are the same file; give each output its own\n",
                            flags[i], paths[i], flags[j], paths[j]);
                    out_bad = 1;
                }
    }
    if (out_bad) {
        ds_comm_destroy(comm);
        if (store) {
            ds_store_fail(store, "it stopped with an error (see its output)");
            ds_store_close(store);
        }
        return 2;
    }

    ds_engine_options eo = {.config_path = a.config, .net_path = a.net, .backend = a.backend,
                            .backend_default = "auto",
                            .strict_config = a.strict, .micro_batch_hint = a.micro,
                            .seed_set = a.seed_set, .seed = a.seed, .init_from = a.init_from,
                            .comm = comm, .rank = rank, .world_size = world, .store = store,
                            .timers = a.prof_db != NULL, .checkpoint_activations = a.act_ckpt};
    ds_engine *eng;
    ds_status st = ds_initialize(&eng, &eo, &err);
    if (st != DS_OK) {
        fprintf(stderr, "ds-train: %s\n", err.msg);
        ds_comm_destroy(comm);
        if (store) {
            ds_store_fail(store, "it stopped with an error (see its output)");
            ds_store_close(store);
        }
        return 2;
    }
    const ds_config *cfg = ds_engine_config(eng);
    const ds_net *net = ds_engine_net(eng);
    if (a.micro && cfg->micro_batch != a.micro && rank == 0) /* it only fills in "auto" or a missing size */
        fprintf(stderr, "ds-train: warning: --micro-batch %lld not used: the config gives micro-batch %lld\n",
                (long long)a.micro, (long long)cfg->micro_batch);
    /* the weights are written by rank 0; where the engine gathers them every rank takes part */
    if (save_rank0_only && !ds_engine_save_weights_collective(eng))
        a.save = NULL;
    {
        ds_memory_report mr;
        ds_engine_memory_report(eng, &mr);
        if (world > 1 || cfg->zero.stage > 0)
            printf("memory rank %d/%d (ZeRO stage %d, elements [%lld, %lld)): params %.3f MB, master %.3f MB, "
                   "grads %.3f MB, optimizer %.3f MB, activations %.3f MB, comm buffers %.3f MB\n",
                   rank, world, mr.zero_stage, (long long)mr.partition_begin, (long long)mr.partition_end,
                   mr.params / 1e6, mr.master / 1e6, mr.grads / 1e6, mr.optim / 1e6, mr.activations / 1e6,
                   mr.comm / 1e6);
        if (rank == 0 && mr.zero_stage == 3 && world > 1)
            printf("ZeRO stage 3: %d of %d tensors persistent (%lld elements, whole on every rank: at most %lld "
                   "elements each, stage3_param_persistence_threshold), the others gathered layer by layer when "
                   "the layer runs (at most %lld elements at once)%s\n",
                   mr.z3_persistent_tensors, ds_engine_net(eng)->params.n, (long long)mr.z3_persistent,
                   (long long)cfg->zero.param_persistence_threshold, (long long)mr.z3_arena,
                   cfg->zero.overlap_comm ? ", on the overlap_comm thread" : "");
        fflush(stdout);
    }
    for (int i = 0; i < cfg->n_warnings; i++)
        fprintf(stderr, "ds-train: warning: %s\n", cfg->warnings[i]);
    if (!cfg->has_optimizer)
        fprintf(stderr, "ds-train: note: %s has no \"optimizer\" block; using AdamW (lr 1e-3, betas "
                        "0.9/0.999, eps 1e-8, weight_decay 0.01)\n", a.config);

    /* data */
    ds_dataset *ds = NULL;
    if (net->input == DS_INPUT_TOKENS) {
        if (a.labels) {
            fprintf(stderr, "ds-train: --labels is for features networks; %s takes tokens\n", a.net);
            ds_engine_destroy(eng);
            return 2;
        }
        st = ds_dataset_open_tokens(&ds, a.data, (int)net->seq_len, (int)net->vocab_size, &err);
    } else {
        if (!a.labels) {
            fprintf(stderr, "ds-train: %s takes features: give --data X.npy --labels Y.npy\n", a.net);
            ds_engine_destroy(eng);
            return 2;
        }
        int vec = net->loss == DS_LOSS_MSE;
        st = ds_dataset_open_npy(&ds, a.data, a.labels, (int)net->feature_dim,
                                 vec ? DS_LABEL_VECTOR : DS_LABEL_CLASS, vec ? 0 : (int)net->out_dim,
                                 vec ? (int)net->out_dim : 0, &err);
    }
    if (st != DS_OK) {
        fprintf(stderr, "ds-train: %s\n", err.msg);
        ds_engine_destroy(eng);
        return 2;
    }
    if (rank == 0 && ds_dataset_warning(ds))
        fprintf(stderr, "ds-train: warning: --data %s: %s\n", a.data, ds_dataset_warning(ds));
    const int64_t MB = cfg->micro_batch, GAS = cfg->grad_accum, TB = cfg->train_batch_size;
    const int64_t N = ds_dataset_len(ds), T = net->positions;
    if (a.inject_step && a.inject_micro >= GAS) {
        fprintf(stderr, "ds-train: --inject-grad-inf %lld:%d:%lld: there is no micro-step %lld in an effective batch of "
                "%lld (gradient_accumulation_steps; micro-steps count from 0)\n", (long long)a.inject_step,
                a.inject_rank, (long long)a.inject_micro, (long long)a.inject_micro, (long long)GAS);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        return 2;
    }
    if (N < TB) {
        fprintf(stderr, "ds-train: %s: %lld samples, fewer than one batch of %lld (train_batch_size)\n",
                a.data, (long long)N, (long long)TB);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        return 2;
    }
    int64_t steps = a.steps > 0 ? a.steps : N / TB;
    if ((st = ds_engine_set_total_steps(eng, steps, &err)) != DS_OK) { /* "auto" in the scheduler */
        fprintf(stderr, "ds-train: %s\n", err.msg);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        return 2;
    }
    {
        char note[400];
        ds_sched_total_note(&ds_engine_config(eng)->scheduler, note, sizeof note);
        if (note[0] && rank == 0)
            fprintf(stderr, "ds-train: warning: %s: %s\n", a.config, note);
    }
    ds_sampler sampler;
    if ((st = ds_sampler_init(&sampler, a.order, a.seed_set ? a.seed : (cfg->seed_set ? cfg->seed : 42), N, &err))) {
        fprintf(stderr, "ds-train: %s\n", err.msg);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        return 1;
    }
    FILE *logf = NULL; /* opened (truncated) only after every refusal below: a refused run leaves the old log */
    ds_monitor *mon = NULL; /* tensorboard / csv_monitor, rank 0 */

    const uint64_t data_seed = a.seed_set ? a.seed : (cfg->seed_set ? cfg->seed : 42);
    int resumed = 0;
    /* resume; then no checkpoint this run would save may exist already */
    if ((a.ckpt_load && (rc = ckpt_resume(eng, &a, data_seed, TB, N, rank, &resumed)) != 0) ||
        (a.ckpt_save && (rc = ckpt_save_clear(&a, ds_engine_global_steps(eng), steps) ? 2 : 0) != 0)) {
        ds_sampler_free(&sampler);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        ds_comm_destroy(comm);
        if (store) {
            ds_store_fail(store, "it stopped with an error (see its output)");
            ds_store_close(store);
        }
        return rc;
    }
    const int64_t start = ds_engine_global_steps(eng);
    size_t pb, gb, ob, ab;
    ds_engine_memory(eng, &pb, &gb, &ob, &ab);
    ds_memory_report mrep;
    ds_engine_memory_report(eng, &mrep);
    /* where 16-bit activations and working weights live: 2-byte values, or rounded values in
     * fp32 buffers */
    const char *act16 = cfg->precision == DS_PREC_FP32 ? ""
                      : mrep.activations16 ? "; activations and working weights stored in 16 bits"
                      : getenv("DS_ACT16") && !strcmp(getenv("DS_ACT16"), "0") ? "; activations in fp32 buffers (DS_ACT16=0)"
                      : net->input == DS_INPUT_FEATURES ? "; activations in fp32 buffers (a features network keeps them)"
                                                        : "; activations in fp32 buffers (this backend rounds them)";
    /* fp16.auto_cast: the engine rounds a features network's inputs (token ids are integers) */
    const int cast16 = net->input == DS_INPUT_FEATURES && cfg->fp16_auto_cast && cfg->precision == DS_PREC_FP16;
    const char *cast = cast16 ? "; inputs rounded to fp16 (fp16.auto_cast)" : "";
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    /* every rank takes part (rank 0 writes the file); an existing file is refused on all */
    ds_rundb *rundb = NULL;
    int refused = 0;
    char why[4600] = "";
    int cut_line = 0; /* --log-json's last line, cut off by a kill, dropped */
    if (a.ckpt_load && start == 0 && check_output("--log-json", a.log_json, a.force, 1)) {
        refused = 1; /* (--load found nothing to resume: an existing log is refused as without --load) */
    } else if (a.prof_db && cfg->curriculum.enabled) { /* its runs table has one positions per sample */
        if (rank == 0)
            fprintf(stderr, "ds-train: --prof_db with curriculum_learning in %s is not supported yet (the run "
                    "database records one sequence length per run)\n", a.config);
        refused = 1;
    } else if (a.prof_db && open_rundb(&rundb, &a, ntyped, typed, eng, steps, threads, comm, &err) != DS_OK) {
        fprintf(stderr, "ds-train: --prof_db %s%s\n", err.msg,
                !strstr(err.msg, "not overwriting") ? ""
                : start > 0 ? " (a resumed run records into a database of its own: give it another name, and "
                              "ds-prof compare puts the two runs side by side; --force replaces it)"
                            : " (use --force)");
        refused = 1;
    } else if (open_monitors(&mon, cfg, rank, comm, &err) != DS_OK) { /* (before the log: a refusal keeps it) */
        fprintf(stderr, "ds-train: %s: %s\n", a.config, err.msg);
        if (rundb)
            ds_rundb_abandon(rundb, "failed");
        refused = 1;
    } else if (a.log_json && start > 0 && !a.force &&
               !(logf = continue_log(a.log_json, start, why, sizeof why, &cut_line))) {
        fprintf(stderr, "ds-train: --log-json %s: %s\n", a.log_json, why);
        if (rundb)
            ds_rundb_abandon(rundb, "failed");
        ds_monitor_close(mon);
        mon = NULL;
        refused = 1;
    } else if (a.log_json && !logf && !(logf = fopen(a.log_json, "w"))) {
        fprintf(stderr, "ds-train: --log-json %s: %s\n", a.log_json, strerror(errno));
        if (rundb)
            ds_rundb_abandon(rundb, "failed");
        ds_monitor_close(mon);
        mon = NULL;
        refused = 1;
    }
    if (!refused && cut_line)
        fprintf(stderr, "ds-train: warning: --log-json %s: its last line was cut off (the run that stopped was killed "
                "while writing it): dropped\n", a.log_json);
    if (refused) {
        ds_sampler_free(&sampler);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        ds_comm_destroy(comm);
        if (store) {
            ds_store_fail(store, "it stopped with an error (see its output)");
            ds_store_close(store);
        }
        return 2;
    }
    int tokens = net->input == DS_INPUT_TOKENS;
    const char *unit = tokens ? "tokens" : "samples";
    const char *backend = ds_engine_backend_name(eng);
    if (rank != 0)
        ; /* rank 0 speaks for the job */
    else if (strncmp(backend, "cuda", 4) == 0) /* "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, ...)" */
        printf("ds-train %s: %s, %lld parameters; backend %s\n", DS_VERSION, a.net,
               (long long)net->total_params, backend);
    else { /* "avx2" or "avx512, bf16 GEMMs on AMX-BF16: brg:avx512_core_amx" */
        const char *more = strchr(backend, ',');
        printf("ds-train %s: %s, %lld parameters; backend cpu (%.*s kernels%s, %d thread%s)\n", DS_VERSION,
               a.net, (long long)net->total_params, more ? (int)(more - backend) : (int)strlen(backend), backend,
               more ? more : "", threads, threads == 1 ? "" : "s");
    }
    if (rank == 0) {
        printf("data: %s (%lld samples, %s order); batch %lld = micro %lld x accumulation %lld x ranks %d; "
               "%lld step%s\n",
               ds_dataset_describe(ds), (long long)N, a.order == DS_ORDER_SEQUENTIAL ? "sequential" : "shuffled",
               (long long)TB, (long long)MB, (long long)GAS, world, (long long)steps, steps == 1 ? "" : "s");
        if (world > 1 && strncmp(backend, "cuda", 4) != 0) /* rank 0's two links of the ring */
            printf("comm: %s\n", ds_comm_describe(comm));
        /* params as the per-rank memory line counts them: the working weights, and in 16-bit
         * training the fp32 master weights beside them */
        char master[48] = "";
        if (mrep.master)
            snprintf(master, sizeof master, ", master %.1f MB", mrep.master / 1e6);
        printf("optimizer: %s lr %g; memory: params %.1f MB%s, grads %.1f MB, optimizer %.1f MB, activations %.1f MB\n",
               ds_optimizer_name(&cfg->optimizer), cfg->optimizer.lr, mrep.params / 1e6, master, gb / 1e6, ob / 1e6,
               ab / 1e6);
        if (cfg->zero.offload_optimizer) /* the engine refuses it on other backends */
            printf("offload_optimizer: cpu; on the cpu backend the optimizer state and step are in host memory "
                   "already\n");
        if (ds_monitor_tensorboard_file(mon))
            printf("tensorboard: events in %s\n", ds_monitor_tensorboard_file(mon));
        if (ds_monitor_csv_dir(mon))
            printf("csv_monitor: one file per event in %s/\n", ds_monitor_csv_dir(mon));
        if (cfg->zero.offload_param && cfg->zero.stage == 3) /* (the same) */
            printf("offload_param: cpu; on the cpu backend the parameter partitions are in host memory already\n");
        if (cfg->precision == DS_PREC_FP16 && cfg->fp16.loss_scale > 0)
            printf("precision: fp16, static loss scale %g%s%s\n", cfg->fp16.loss_scale, act16, cast);
        else if (cfg->precision == DS_PREC_FP16)
            printf("precision: fp16, dynamic loss scale from %g (window %lld, hysteresis %d%s, min %g)%s%s\n",
                   ds_engine_loss_scale(eng), (long long)cfg->fp16.loss_scale_window, cfg->fp16.hysteresis,
                   cfg->fp16.consecutive_hysteresis ? " consecutive" : "", cfg->fp16.min_loss_scale, act16, cast);
        else if (cfg->precision == DS_PREC_BF16)
            printf("precision: bf16%s%s%s\n", cfg->bf16_check_overflow ? ", steps with inf/NaN gradients skipped" : "",
                   strstr(backend, "fp32 GEMMs")
                       ? "; matrix products in fp32 (the backend line says why), so no faster than fp32"
                       : "", act16);
        print_actckpt(eng, a.config, a.net);
        print_curriculum(cfg, net);
        print_pld(cfg, eng);
        if (cfg->scheduler.type != DS_SCHED_NONE)
            printf("scheduler: %s (first lr %g; ds-lrrt --print-schedule shows every step)\n",
                   ds_sched_name(cfg->scheduler.type), ds_engine_get_lr(eng));
        fflush(stdout);
    }
    const int64_t F = net->input == DS_INPUT_FEATURES ? net->feature_dim : 0;
    const int64_t out_dim = net->out_dim;
    int32_t *tok = NULL, *tgt = NULL, *lab = NULL;
    float *x = NULL, *y = NULL;
    if (tokens) {
        tok = malloc((size_t)(MB * T) * sizeof *tok);
        tgt = malloc((size_t)(MB * T) * sizeof *tgt);
    } else {
        x = malloc((size_t)(MB * F) * sizeof *x);
        lab = malloc((size_t)MB * sizeof *lab);
        y = malloc((size_t)(MB * out_dim) * sizeof *y);
    }
    double *ms_hist = malloc((size_t)steps * sizeof *ms_hist);
    /* progressive_layer_drop: the layers kept by the last forward, for --log-json */
    const int pld_L = ds_engine_layer_drop(eng, NULL, NULL);
    unsigned char *pld_kept = malloc((size_t)pld_L + 1);
    if (!ms_hist || !pld_kept || (tokens && (!tok || !tgt)) || (!tokens && (!x || !lab || !y))) {
        fprintf(stderr, "ds-train: out of memory for %lld steps of batch %lld\n", (long long)steps, (long long)MB);
        free(ms_hist);
        free(pld_kept);
        free(tok);
        free(tgt);
        free(x);
        free(lab);
        free(y);
        if (logf)
            fclose(logf);
        ds_monitor_close(mon);
        ds_rundb_abandon(rundb, "failed");
        ds_sampler_free(&sampler);
        ds_dataset_close(ds);
        ds_engine_destroy(eng);
        return 1;
    }
    int tty = isatty(STDOUT_FILENO) && !a.quiet;
    int64_t print_every = cfg->steps_per_print > 0 ? cfg->steps_per_print : 10;
    /* curriculum_learning: the steps' lengths differ, so the closing rates are totals over time */
    const int cl = cfg->curriculum.enabled;
    double cl_tokens = 0, cl_flops = 0, cl_ms = 0;

    /* activation_checkpointing.profile: the checkpointed passes' times, per step */
    int ck_profile = 0;
    double ck_prev[3] = {0, 0, 0}, ck_step[3] = {0, 0, 0};
    {
        ds_memory_report mr;
        ds_engine_memory_report(eng, &mr);
        ck_profile = cfg->actckpt.profile && mr.checkpoints > 0;
    }
    double first_loss = NAN, last_loss = NAN, t_start = now_s();
    rc = 0;
    struct sigaction old_sigint;
    const int took_sigint = catch_sigint(world, &old_sigint);
    int64_t stopped_at = -1; /* Ctrl-C: the last step trained */
    for (int64_t s = start; s < steps && rc == 0; s++) {
        double t0 = now_s();
        for (int64_t u = 0; u < GAS && rc == 0; u++) {
            for (int64_t i = 0; i < MB && rc == 0; i++) {
                /* DeepSpeed's distributed sampler: rank r takes every W-th sample of the global
                 * batch, so step s covers samples s*TB .. s*TB+TB-1 whatever the split */
                int64_t k = ds_sampler_index(&sampler, s * TB + u * MB * world + i * world + rank);
                if (tokens)
                    st = ds_dataset_get_tokens(ds, k, tok + i * T, tgt + i * T, &err);
                else if ((st = ds_dataset_get_features(ds, k, x + i * F, lab + i, y + i * out_dim, &err)) ==
                             DS_OK && cast16)
                    for (int64_t j = 0; j < F && st == DS_OK; j++) /* the engine would name the batch row */
                        if (isinf(ds_f16_to_f32(ds_f32_to_f16(x[i * F + j]))))
                            st = ds_error_set(&err, DS_ERR_INVALID,
                                              "%s: row %lld, feature %lld: %g is beyond fp16's range (largest "
                                              "finite value 65504); fp16.auto_cast in %s rounds the inputs to fp16",
                                              a.data, (long long)k, (long long)j, (double)x[i * F + j], a.config);
                if (st != DS_OK)
                    rc = 1;
            }
            if (rc)
                break;
            ds_batch b = {.tokens = tok, .targets = tgt, .x = x, .labels = lab, .y = y, .samples = MB};
            double loss;
            if ((st = ds_engine_forward(eng, &b, &loss, &err)) || (st = ds_engine_backward(eng, &err)))
                rc = 1;
            else if (a.inject_step == s + 1 && a.inject_rank == rank &&
                     u == (a.inject_micro >= 0 ? a.inject_micro : GAS - 1) &&
                     (st = inject_inf(eng, net, &err)) != DS_OK)
                rc = 1;
            else if ((st = ds_engine_step(eng, &err)))
                rc = 1;
        }
        if (rc)
            break;
        double ms = (now_s() - t0) * 1e3;
        ms_hist[s - start] = ms;
        char ck_json[160] = "";
        if (ck_profile) {
            double now[3];
            ds_engine_checkpoint_times(eng, &now[0], &now[1], &now[2]);
            for (int k = 0; k < 3; k++) {
                ck_step[k] = now[k] - ck_prev[k];
                ck_prev[k] = now[k];
            }
            snprintf(ck_json, sizeof ck_json, ", \"ckpt_forward_ms\": %.3f, \"ckpt_backward_ms\": %.3f, "
                     "\"ckpt_recompute_ms\": %.3f", ck_step[0], ck_step[1], ck_step[2]);
        }
        double loss = ds_engine_last_loss(eng);
        if (s == start)
            first_loss = loss;
        last_loss = loss;
        const int64_t seqlen = ds_engine_seqlen(eng); /* T, or curriculum learning's */
        double rate = (double)(TB * (tokens ? seqlen : 1)) / (ms / 1e3);
        cl_tokens += (double)TB * (double)seqlen;
        cl_flops += 3.0 * (double)ds_net_flops_per_sample_at(net, seqlen) * (double)TB;
        cl_ms += ms;
        char cl_json[112] = "";
        if (cl)
            snprintf(cl_json, sizeof cl_json, ", \"seqlen\": %lld", (long long)seqlen);
        if (pld_L) { /* progressive layer drop: the last micro-batch's theta and layers kept */
            double theta;
            int kept = 0;
            ds_engine_layer_drop(eng, &theta, pld_kept);
            for (int l = 0; l < pld_L; l++)
                kept += pld_kept[l];
            size_t at = strlen(cl_json);
            snprintf(cl_json + at, sizeof cl_json - at, ", \"pld_theta\": %.9g, \"layers_kept\": %d", theta, kept);
        }
        int64_t step = ds_engine_global_steps(eng);
        int applied = ds_engine_was_step_applied(eng);
        double lr, mom; /* those this step's update used (the scheduler has moved on since) */
        ds_engine_last_lr(eng, &lr, &mom);
        if (!applied) { /* a skipped step: what it would have used (the scheduler did not move) */
            lr = ds_engine_get_lr(eng);
            mom = ds_engine_get_mom(eng);
        }
        if (logf) {
            char momtxt[32] = "null"; /* an optimizer without momentum */
            if (!isnan(mom))
                snprintf(momtxt, sizeof momtxt, "%.7g", mom);
            int64_t ar_calls, ar_bytes;
            ds_engine_last_allreduce(eng, &ar_calls, &ar_bytes);
            fprintf(logf,
                    "{\"step\": %lld, \"loss\": %.17g, \"lr\": %.7g, \"momentum\": %s, \"grad_norm\": %.7g, \"ms\": %.3f, "
                    "\"%s\": %.1f, \"samples\": %lld, \"world_size\": %d, \"allreduce_calls\": %lld, "
                    "\"allreduce_bytes\": %lld, \"loss_scale\": %.17g, \"skipped\": %s, "
                    "\"skipped_steps\": %lld%s%s}\n",
                    (long long)step, loss, lr, momtxt, ds_engine_get_global_grad_norm(eng), ms,
                    tokens ? "tokens_per_s" : "samples_per_s", rate, (long long)ds_engine_global_samples(eng),
                    world, (long long)ar_calls, (long long)ar_bytes, ds_engine_last_step_loss_scale(eng),
                    applied ? "false" : "true", (long long)ds_engine_skipped_steps(eng), cl_json, ck_json);
            if (fflush(logf) != 0 || ferror(logf)) { /* a full disk: say so now, not a log that stops */
                fprintf(stderr, "ds-train: --log-json %s: write failed at step %lld: %s\n", a.log_json,
                        (long long)step, strerror(errno));
                rc = 1;
                break;
            }
        }
        if (mon && (st = write_monitor(mon, eng, loss, TB)) != DS_OK) { /* (it said why) */
            rc = 1;
            break;
        }
        if (!applied && rank == 0 && !a.quiet) {
            if (tty)
                printf("\r\033[K");
            /* an overflow the hysteresis absorbed leaves the scale: say what it used up */
            ds_engine_scalars sc;
            ds_engine_get_scalars(eng, &sc);
            char hyst[64] = "";
            if (sc.scaler.dynamic && ds_engine_last_step_loss_scale(eng) == ds_engine_loss_scale(eng))
                snprintf(hyst, sizeof hyst, " (hysteresis %d -> %d)", sc.scaler.cur_hysteresis + 1,
                         sc.scaler.cur_hysteresis);
            printf("step %lld: overflow, loss scale %.17g -> %.17g%s, step skipped\n", (long long)step,
                   ds_engine_last_step_loss_scale(eng), ds_engine_loss_scale(eng), hyst);
            fflush(stdout);
        }
        if (rundb && (st = record_step(rundb, eng, step, ms, (step % print_every == 0), &err)) != DS_OK) {
            rc = 1;
            break;
        }
        if (!a.quiet && cfg->wall_clock_breakdown && rank == 0 && (step % print_every == 0 || step == steps)) {
            if (tty)
                printf("\r\033[K");
            print_breakdown(eng, ms, world, a.peak_tflops, ds_engine_seqlen(eng));
        }
        if (!a.quiet && ck_profile && rank == 0 && (step % print_every == 0 || step == steps)) {
            if (tty)
                printf("\r\033[K");
            printf("[Rank 0] activation checkpointing: forward %.1f ms, backward %.1f ms (recomputation %.1f ms) "
                   "in the checkpointed segments this step\n", ck_step[0], ck_step[1], ck_step[2]);
        }
        if (!a.quiet && (step % print_every == 0 || step == steps)) {
            if (tty)
                printf("\r\033[K");
            char cl_txt[40] = "";
            if (cl)
                snprintf(cl_txt, sizeof cl_txt, " | seqlen %lld", (long long)seqlen);
            printf("step %lld/%lld | loss %.4f | lr %.3g | grad_norm %.4f | %.1f ms/step | %.0f %s/s%s\n",
                   (long long)step, (long long)steps, loss, lr,
                   ds_engine_get_global_grad_norm(eng), ms, rate, unit, cl_txt);
            fflush(stdout);
        } else if (tty) {
            progress(step, steps, loss, rate, unit);
        }
        const int stop = interrupted != 0;
        if (a.ckpt_save && ((a.ckpt_interval > 0 && step % a.ckpt_interval == 0) || step == steps || stop)) {
            if (tty)
                printf("\r\033[K");
            if ((rc = ckpt_save(eng, &a, data_seed, TB, N, rank)) != 0)
                break;
        }
        if (stop && step < steps) {
            stopped_at = step;
            rc = 130;
            break;
        }
    }
    if (took_sigint) /* what it was (a second Ctrl-C may have put the default back already) */
        sigaction(SIGINT, &old_sigint, NULL);
    if (stopped_at >= 0) {
        if (tty)
            printf("\r\033[K");
        fflush(stdout);
        if (a.ckpt_save)
            fprintf(stderr, "ds-train: interrupted (Ctrl-C) after step %lld of %lld; saved %s/global_step%lld: the same "
                    "command with --load %s goes on from there\n", (long long)stopped_at, (long long)steps,
                    a.ckpt_save, (long long)stopped_at, a.ckpt_save);
        else
            fprintf(stderr, "ds-train: interrupted (Ctrl-C) after step %lld of %lld; nothing saved (no --save)\n",
                    (long long)stopped_at, (long long)steps);
    }
    int64_t ran = steps > start ? steps - start : 0;
    int save_weights0 = 0; /* rank 0 writes --save-weights */
    if (tty)
        printf("\r\033[K");
    if (rc) {
        if (err.msg[0]) /* (a failed checkpoint save has said why already) */
            fprintf(stderr, "ds-train: %s\n", err.msg);
    } else if (rank == 0 && ran == 0) {
        printf("done: the checkpoint is at step %lld already (--steps %lld); nothing to train\n", (long long)start,
               (long long)steps);
        /* a run killed between its last save and the prune after it left one too many */
        int deleted = 0;
        if (a.ckpt_save && a.ckpt_keep > 0 && ds_ckpt_prune(a.ckpt_save, (int)a.ckpt_keep, &deleted, &err) != DS_OK) {
            fprintf(stderr, "ds-train: --keep_last: %s\n", err.msg);
            rc = 1;
        }
        save_weights0 = 1; /* the loaded weights (under ZeRO the other ranks wait for rank 0's part) */
    } else if (rank == 0) {
        double total = now_s() - t_start;
        qsort(ms_hist, (size_t)ran, sizeof *ms_hist, cmp_double);
        double med = ran > 0 ? (ran % 2 ? ms_hist[ran / 2] : 0.5 * (ms_hist[ran / 2 - 1] + ms_hist[ran / 2])) : 0;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        if (ds_engine_skipped_steps(eng) > 0)
            printf("skipped %lld of %lld steps for gradient overflow; loss scale now %g\n",
                   (long long)ds_engine_skipped_steps(eng), (long long)steps, ds_engine_loss_scale(eng));
        double gflops = 3.0 * (double)net->flops_per_sample * (double)TB / (med / 1e3) / 1e9;
        double done_rate = (double)(TB * (tokens ? T : 1)) / (med / 1e3);
        if (cl && cl_ms > 0) {
            gflops = cl_flops / (cl_ms / 1e3) / 1e9;
            done_rate = cl_tokens / (cl_ms / 1e3);
        }
        char mfu[64] = "";
        if (a.peak_tflops > 0) /* per device: the job's model FLOP/s over its ranks */
            snprintf(mfu, sizeof mfu, " (MFU %.2f%% of %g TFLOP/s)", 100.0 * gflops / world / (a.peak_tflops * 1e3),
                     a.peak_tflops);
        char resumed[96] = ""; /* the time and the losses are this run's steps' */
        if (start > 0)
            snprintf(resumed, sizeof resumed, " (%lld of them here, from the checkpoint's step %lld)", (long long)ran,
                     (long long)start);
        printf("done: %lld step%s%s in %.1f s; loss %.4f -> %.4f; median %.1f ms/step, %.0f %s/s; "
               "%.2f GFLOP/s%s%s; peak RSS %.0f MiB\n",
               (long long)steps, steps == 1 ? "" : "s", resumed, total, first_loss, last_loss, med,
               done_rate, unit, gflops, world > 1 ? " (the job's)" : "", mfu, ru.ru_maxrss / 1024.0);
        save_weights0 = 1;
    }
    if (save_weights0 && a.save) {
        if ((st = ds_engine_save_weights(eng, a.save, a.force, &err)) != DS_OK) {
            fprintf(stderr, "ds-train: %s\n", err.msg);
            rc = 1;
        } else {
            printf("weights written to %s\n", a.save);
        }
    }
    if (rc == 0 && rank != 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("rank %d: peak RSS %.0f MiB\n", rank, ru.ru_maxrss / 1024.0);
        if (a.save && (st = ds_engine_save_weights(eng, a.save, a.force, &err)) != DS_OK) {
            fprintf(stderr, "ds-train: %s\n", err.msg);
            rc = 1;
        }
    }
    if (rundb) {
        if (rc) {
            ds_rundb_abandon(rundb, stopped_at >= 0 ? "interrupted" : "failed"); /* (the steps trained are kept) */
        } else if (ds_rundb_close(rundb, "done", &err) != DS_OK) {
            fprintf(stderr, "ds-train: --prof_db %s\n", err.msg);
            rc = 1;
        } else if (rank == 0 && !a.quiet) {
            printf("run database written to %s (see ds-prof report %s)\n", a.prof_db, a.prof_db);
        }
    }
    if (logf && fclose(logf) != 0 && rc == 0) {
        fprintf(stderr, "ds-train: --log-json %s: %s\n", a.log_json, strerror(errno));
        rc = 1;
    }
    free(tok);
    free(tgt);
    free(x);
    free(lab);
    free(y);
    free(ms_hist);
    free(pld_kept);
    ds_monitor_close(mon);
    ds_sampler_free(&sampler);
    ds_dataset_close(ds);
    ds_engine_destroy(eng);
    ds_comm_destroy(comm);
    if (store && rc != 0) /* the other ranks stop waiting for this one at once */
        ds_store_fail(store, "it stopped with an error (see its output)");
    if (store)
        ds_store_close(store);
    return rc;
}
