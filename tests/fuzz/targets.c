/* Fuzz targets: libds's readers of what users and peers hand it (ds.json, net.json, hostfiles,
 * .deepspeed_env, safetensors, .npy, token data, checkpoints), each as a function of one input.
 * scripts/fuzz.sh builds each under libFuzzer with AddressSanitizer and UBSan (clang), and
 * tests/fuzz.sh replays the kept corpus (tests/fuzz/corpus/TARGET/) through the same functions
 * in `make check`, so an input that once crashed a reader stays a test.
 *
 * Besides not crashing, each target checks what libds promises of a reader: an error has a
 * message that names the input (the file name given), and what a reader accepts is usable
 * (tensor ranges inside the file, samples readable). A broken promise aborts. */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ds/ckpt.h"
#include "ds/config.h"
#include "ds/data.h"
#include "ds/launch.h"
#include "ds/net.h"
#include "ds/safetensors.h"
#include "../../lib/dist/dist_internal.h"
#include "../../lib/io/npy.h"

static void need(int ok, const char *target, const char *what, const char *msg)
{
    if (!ok) {
        fprintf(stderr, "fuzz %s: %s (message: \"%s\")\n", target, what, msg ? msg : "(none)");
        abort();
    }
}

/* an error's message is there and names the input */
static void names(const char *target, const ds_error *err, const char *name)
{
    need(err->msg[0] != '\0', target, "an error without a message", err->msg);
    need(strstr(err->msg, name) != NULL, target, "an error that does not name its input", err->msg);
}

static char *cstr(const uint8_t *d, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, d, n);
        s[n] = '\0';
    }
    return s;
}

/* A per-process scratch directory for the targets that read files by path (removed at exit). */
static char scratch[64];
static void rm_tree(const char *path)
{
    DIR *dir = opendir(path);
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_tree(p);
        }
        closedir(dir);
        rmdir(path);
    } else {
        unlink(path);
    }
}
static void scratch_cleanup(void) { rm_tree(scratch); }
static const char *scratch_dir(void)
{
    if (!scratch[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(scratch, sizeof scratch, "%s/ds-fuzz.XXXXXX", t && *t && strlen(t) < 40 ? t : "/tmp");
        if (!mkdtemp(scratch)) {
            perror("mkdtemp");
            abort();
        }
        atexit(scratch_cleanup);
    }
    return scratch;
}
static void put_file(const char *path, const uint8_t *d, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || (n && write(fd, d, n) != (ssize_t)n) || close(fd) != 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        abort();
    }
}

/* ---- ds.json: first byte: data-parallel size 1-8 (bits 0-2), strict (bit 7) ---------------- */
int ds_fuzz_config(const uint8_t *d, size_t n)
{
    if (n < 1)
        return 0;
    char *s = cstr(d + 1, n - 1);
    if (!s)
        return 0;
    ds_config cfg;
    ds_error err = {0};
    const int ws = 1 + (d[0] & 7);
    if (ds_config_load_string(&cfg, s, "fz.json", ws, d[0] >> 7, NULL, &err) == DS_OK) {
        /* DeepSpeed's batch rule holds for what loads, with positive sizes */
        char m[160];
        snprintf(m, sizeof m, "train_batch_size %lld, micro %lld, accumulation %lld, world %d",
                 (long long)cfg.train_batch_size, (long long)cfg.micro_batch, (long long)cfg.grad_accum, ws);
        long long prod = 0;
        int over = __builtin_mul_overflow((long long)cfg.micro_batch, (long long)cfg.grad_accum, &prod) ||
                   __builtin_mul_overflow(prod, (long long)ws, &prod);
        need(cfg.micro_batch >= 1 && cfg.grad_accum >= 1 && cfg.world_size == ws && !over &&
                 cfg.train_batch_size == prod,
             "config", "batch sizes that break train = micro x accumulation x world", m);
        /* a curriculum's lengths stay in [0, max_difficulty] (or the discrete list's) */
        const ds_curriculum_config *c = &cfg.curriculum;
        int64_t cur = c->min_difficulty, top = c->max_difficulty;
        for (int i = 0; c->enabled && c->schedule == DS_CL_FIXED_DISCRETE && i < c->n_discrete; i++)
            top = c->difficulty[i] > top ? c->difficulty[i] : top;
        for (int64_t step = 1; c->enabled && step <= 300; step += 1 + step / 8) {
            cur = ds_curriculum_update(c, cur, step);
            snprintf(m, sizeof m, "step %lld: %lld (max %lld)", (long long)step, (long long)cur, (long long)top);
            need(cur >= 0 && cur <= top, "config", "a curriculum length outside [0, max]", m);
        }
        /* progressive_layer_drop's theta stays in [theta, 1] and never grows with the step */
        double prev = 1.0;
        for (int64_t step = 0; cfg.pld.enabled && step <= 100000; step += 1 + step / 4) {
            const double th = ds_pld_theta(&cfg.pld, step);
            snprintf(m, sizeof m, "step %lld: theta %.17g (theta %.17g, gamma %.17g, before %.17g)", (long long)step, th,
                     cfg.pld.theta, cfg.pld.gamma, prev);
            need(th >= cfg.pld.theta && th <= 1.0 && th <= prev, "config", "a layer-drop theta outside [theta, 1]", m);
            prev = th;
        }
        ds_config_free(&cfg);
    } else {
        names("config", &err, "fz.json");
    }
    free(s);
    return 0;
}

/* ---- net.json: parse, then the summary and (when small) the initial weights ---------------- */
int ds_fuzz_net(const uint8_t *d, size_t n)
{
    char *s = cstr(d, n);
    if (!s)
        return 0;
    ds_net *net = NULL;
    ds_error err = {0};
    if (ds_net_parse_string(&net, s, "fz.json", &err) == DS_OK) {
        free(ds_net_summary(net, 2));
        /* checkpointing every outermost repeat: the summary's recomputation line, and FLOPs at a
         * shorter length that stay within the full length's */
        ds_net_checkpoint_repeats(net, 1);
        free(ds_net_summary(net, 2));
        char m[96];
        snprintf(m, sizeof m, "recomputed %lld of %lld", (long long)ds_net_recompute_flops(net),
                 (long long)net->flops_per_sample);
        need(ds_net_recompute_flops(net) <= net->flops_per_sample, "net", "recomputes more than the forward", m);
        const int64_t half = net->positions > 1 ? net->positions / 2 : 1;
        need(ds_net_flops_per_sample_at(net, half) <= net->flops_per_sample, "net", "fewer positions, more FLOPs", m);
        if (net->params.total > 0 && net->params.total <= (1 << 20)) {
            float *flat = malloc((size_t)net->params.total * sizeof *flat);
            if (flat)
                ds_net_init_params(net, flat, 1);
            free(flat);
        }
        ds_net_free(net);
    } else {
        names("net", &err, "fz.json");
    }
    free(s);
    return 0;
}

/* ---- hostfile (first byte even) or .deepspeed_env (odd) ------------------------------------ */
int ds_fuzz_hostfile(const uint8_t *d, size_t n)
{
    if (n < 1)
        return 0;
    char *s = cstr(d + 1, n - 1);
    if (!s)
        return 0;
    ds_error err = {0};
    if (d[0] & 1) {
        ds_launch_env env = {0};
        if (ds_launch_envfile_parse_text(&env, "fz.env", s, &err) != DS_OK)
            names("envfile", &err, "fz.env");
        ds_launch_env_free(&env);
    } else {
        ds_launch_plan plan = {0};
        if (ds_launch_hostfile_parse_text(&plan, "fzhosts", s, &err) != DS_OK)
            names("hostfile", &err, "fzhosts");
        ds_launch_plan_free(&plan);
    }
    free(s);
    return 0;
}

/* ---- safetensors: every accepted tensor lies inside the file, and its bytes are read -------- */
int ds_fuzz_safetensors(const uint8_t *d, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/fz.safetensors", scratch_dir());
    put_file(path, d, n);
    ds_safetensors *st = NULL;
    ds_error err = {0};
    if (ds_st_open(&st, path, &err) != DS_OK) {
        names("safetensors", &err, "fz.safetensors");
        return 0;
    }
    size_t data_bytes = st->map_size - (size_t)(st->data - (const uint8_t *)st->map);
    unsigned sum = 0;
    for (int i = 0; i < st->n; i++) {
        const ds_st_tensor *t = &st->tensors[i];
        need(t->begin <= t->end && t->end <= data_bytes, "safetensors", "a tensor outside the file", t->name);
        need(ds_st_find(st, t->name) != NULL, "safetensors", "a tensor that ds_st_find misses", t->name);
        const uint8_t *p = ds_st_data(st, t);
        for (uint64_t b = 0; b < t->end - t->begin; b++)
            sum += p[b];
    }
    volatile unsigned sink = sum; /* so that the reads happen */
    (void)sink;
    free(ds_st_metadata_get(st, "format"));
    ds_st_close(st);
    return 0;
}

/* ---- .npy: the first and the last element of what opens --------------------------------------- */
int ds_fuzz_npy(const uint8_t *d, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/fz.npy", scratch_dir());
    put_file(path, d, n);
    ds_npy *a = NULL;
    ds_error err = {0};
    if (ds_npy_open(&a, path, &err) != DS_OK) {
        names("npy", &err, "fz.npy");
        return 0;
    }
    if (a->numel > 0) {
        volatile double x = ds_npy_get_f64(a, 0) + ds_npy_get_f64(a, a->numel - 1);
        (void)x;
    }
    ds_npy_close(a);
    return 0;
}

/* ---- token data: first byte: the format (bits 0-1: llm.c .bin, Megatron .idx/.bin, text,
 * a directory of two files), seq_len 1-16 (bits 2-5), vocab 256 or 50257 (bit 6). The rest:
 * for two files, a 2-byte little-endian length of the first, then the two. Then the first and
 * the last sample are read. ---------------------------------------------------------------- */
int ds_fuzz_tokens(const uint8_t *d, size_t n)
{
    if (n < 1)
        return 0;
    const int fmt = d[0] & 3, seq = 1 + (d[0] >> 2 & 15), vocab = d[0] & 64 ? 50257 : 256;
    d++, n--;
    const uint8_t *a = d, *b = NULL;
    size_t na = n, nb = 0;
    if (fmt == 1 || fmt == 3) {
        if (n < 2)
            return 0;
        na = (size_t)(d[0] | d[1] << 8);
        if (na > n - 2)
            na = n - 2;
        a = d + 2;
        b = a + na;
        nb = n - 2 - na;
    }
    const char *dir = scratch_dir();
    char path[160], p1[160], p2[160];
    switch (fmt) {
    case 0:
        snprintf(path, sizeof path, "%s/fz.bin", dir);
        put_file(path, a, na);
        break;
    case 1:
        snprintf(p1, sizeof p1, "%s/fzm.idx", dir);
        snprintf(p2, sizeof p2, "%s/fzm.bin", dir);
        put_file(p1, a, na);
        put_file(p2, b, nb);
        snprintf(path, sizeof path, "%s/fzm", dir);
        break;
    case 2:
        snprintf(path, sizeof path, "%s/fz.txt", dir);
        put_file(path, a, na);
        break;
    default:
        snprintf(path, sizeof path, "%s/fzd", dir);
        mkdir(path, 0700);
        snprintf(p1, sizeof p1, "%s/fzd/a.bin", dir);
        snprintf(p2, sizeof p2, "%s/fzd/b.txt", dir);
        put_file(p1, a, na);
        put_file(p2, b, nb);
        break;
    }
    ds_dataset *ds = NULL;
    ds_error err = {0};
    if (ds_dataset_open_tokens(&ds, path, seq, vocab, &err) != DS_OK) {
        names("tokens", &err, "fz");
        return 0;
    }
    int64_t len = ds_dataset_len(ds);
    need(len >= 1, "tokens", "a dataset without a sample opened", ds_dataset_describe(ds));
    int32_t in[16], tg[16];
    for (int k = 0; k < 2; k++) {
        int64_t i = k ? len - 1 : 0;
        ds_status st = ds_dataset_get_tokens(ds, i, in, tg, &err);
        need(st == DS_OK, "tokens", "a sample of an opened dataset could not be read", err.msg);
        for (int j = 0; j < seq; j++)
            need(in[j] >= 0 && in[j] < vocab && tg[j] >= 0 && tg[j] < vocab, "tokens",
                 "a token outside the vocabulary", ds_dataset_describe(ds));
    }
    ds_dataset_close(ds);
    return 0;
}

/* ---- checkpoints: the input is a list of files of one tag, each [u8 name length][name]
 * [u32 little-endian length][bytes]; the target writes them into DIR/t/, and writes
 * DIR/latest ("t") and t/SHA256SUMS (of the files as given) unless the input has its own.
 * So the readers behind the checksums (manifest, partition and model files) get the
 * fuzzer's bytes. Then every file is verified and every stored buffer read whole. ---------- */
static ds_status sink_sum(void *ctx, int64_t first, const float *v, int64_t count, ds_error *err)
{
    (void)first, (void)err;
    for (int64_t i = 0; i < count; i++)
        *(double *)ctx += v[i];
    return DS_OK;
}

int ds_fuzz_ckpt(const uint8_t *d, size_t n)
{
    char dir[128], tagdir[160];
    snprintf(dir, sizeof dir, "%s/ck", scratch_dir());
    rm_tree(dir);
    mkdir(dir, 0700);
    snprintf(tagdir, sizeof tagdir, "%s/t", dir);
    mkdir(tagdir, 0700);
    char *sums = NULL;
    size_t sums_len = 0;
    FILE *sf = open_memstream(&sums, &sums_len);
    int own_sums = 0, own_latest = 0;
    size_t i = 0;
    while (i < n) {
        size_t nl = d[i++];
        if (nl == 0 || i + nl + 4 > n)
            break;
        char name[256];
        memcpy(name, d + i, nl);
        name[nl] = '\0';
        i += nl;
        size_t len = ds_ld_u32(d + i);
        i += 4;
        if (len > n - i)
            len = n - i;
        if (memchr(name, '\0', nl) || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
            break;
        char p[512];
        if (!strcmp(name, "latest")) { /* the one file outside the tag */
            snprintf(p, sizeof p, "%s/latest", dir);
            own_latest = 1;
        } else {
            snprintf(p, sizeof p, "%s/%s", tagdir, name);
        }
        put_file(p, d + i, len);
        if (!strcmp(name, "SHA256SUMS")) {
            own_sums = 1;
        } else if (strcmp(name, "latest")) {
            const void *parts[1] = {d + i};
            size_t lens[1] = {len};
            uint8_t h[32];
            ds_sha256(parts, lens, 1, h);
            for (int k = 0; k < 32; k++)
                fprintf(sf, "%02x", h[k]);
            fprintf(sf, "  %s\n", name);
        }
        i += len;
    }
    fclose(sf);
    char p[512];
    if (!own_sums) {
        snprintf(p, sizeof p, "%s/SHA256SUMS", tagdir);
        put_file(p, (const uint8_t *)sums, sums_len);
    }
    free(sums);
    if (!own_latest) {
        snprintf(p, sizeof p, "%s/latest", dir);
        put_file(p, (const uint8_t *)"t", 1);
    }
    ds_ckpt *c = NULL;
    ds_error err = {0};
    if (ds_ckpt_open(&c, dir, NULL, &err) != DS_OK) {
        names("ckpt", &err, dir);
        return 0;
    }
    for (int f = 0; f < c->n_files; f++)
        if (ds_ckpt_verify_file(c, f, &err) != DS_OK)
            names("ckpt", &err, dir);
    double sum = 0;
    if (c->numel <= (1 << 22)) {
        if (ds_ckpt_read_range(c, "fp32", 0, c->numel, sink_sum, &sum, &err) != DS_OK)
            names("ckpt", &err, dir);
        for (int s = 0; s < c->n_state; s++)
            if (ds_ckpt_read_range(c, c->state_names[s], 0, c->numel, sink_sum, &sum, &err) != DS_OK)
                names("ckpt", &err, dir);
    }
    free(ds_ckpt_manifest_get(c, "format_version"));
    ds_ckpt_close(c);
    return 0;
}

const ds_fuzz_target ds_fuzz_targets[] = {
    {"config", ds_fuzz_config},       {"net", ds_fuzz_net}, {"hostfile", ds_fuzz_hostfile},
    {"safetensors", ds_fuzz_safetensors}, {"npy", ds_fuzz_npy}, {"tokens", ds_fuzz_tokens},
    {"ckpt", ds_fuzz_ckpt},           {NULL, NULL},
};
