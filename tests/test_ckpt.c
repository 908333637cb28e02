/* Checkpoints in one process: the partition rule, incremental SHA-256, save -> load -> the same
 * steps bit for bit (AdamW + fp16 + a schedule, Adagrad, SGD momentum), re-sharding, damaged
 * and incomplete checkpoints refused naming the file, mismatched networks refused. Multi-rank
 * resume and crash tests are in tests/ckpt.sh. */
#include <fcntl.h>
#include <json-c/json.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dist/dist_internal.h"
#include "testutil.h"

#define NET "{\"input\": {\"type\": \"features\", \"dim\": 12}, \"layers\": [" \
            "{\"type\": \"linear\", \"name\": \"fc1\", \"out\": 20}, {\"type\": \"gelu\"}, " \
            "{\"type\": \"dropout\", \"p\": 0.1}, {\"type\": \"linear\", \"name\": \"fc2\", \"out\": 5}], " \
            "\"loss\": {\"type\": \"cross_entropy\"}}"
#define NET2 "{\"input\": {\"type\": \"features\", \"dim\": 12}, \"layers\": [" \
             "{\"type\": \"linear\", \"name\": \"fc1\", \"out\": 21}, {\"type\": \"linear\", \"name\": \"fc2\", \"out\": 5}], " \
             "\"loss\": {\"type\": \"cross_entropy\"}}"

#define ADAM_FP16 "{\"train_batch_size\": 8, \"gradient_accumulation_steps\": 2, " \
    "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01}}, \"gradient_clipping\": 1.0, " \
    "\"fp16\": {\"enabled\": true, \"initial_scale_power\": 8, \"loss_scale_window\": 3}, " \
    "\"scheduler\": {\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": 0, \"warmup_max_lr\": 0.01, \"warmup_num_steps\": 5}}}"
#define ADAGRAD "{\"train_batch_size\": 4, \"optimizer\": {\"type\": \"Adagrad\", \"params\": {\"lr\": 0.05}}}"
#define SGD "{\"train_batch_size\": 4, \"optimizer\": {\"type\": \"SGD\", \"params\": {\"lr\": 0.05, \"momentum\": 0.9}}, " \
    "\"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.01, \"cycle_max_lr\": 0.1, " \
    "\"cycle_first_step_size\": 3}}}"

static ds_engine *make(const char *cfg, const char *net)
{
    ds_engine *e;
    ds_error err = {0};
    ds_engine_options o = {.config_json = cfg, .config_name = "ds.json", .net_json = net, .net_name = "net.json"};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    return e;
}

/* One effective batch from a deterministic stream indexed by the step. */
static double train_step(ds_engine *e, int64_t step)
{
    const ds_config *c = ds_engine_config(e);
    int64_t B = c->micro_batch;
    float x[64 * 12];
    int32_t y[64];
    ds_error err = {0};
    for (int64_t u = 0; u < c->grad_accum; u++) {
        for (int64_t i = 0; i < B * 12; i++)
            x[i] = (float)sin(0.37 * (double)(i + 1) + 1.3 * (double)(step * 7 + u));
        for (int64_t i = 0; i < B; i++)
            y[i] = (int32_t)((step * 3 + u + i) % 5);
        ds_batch b = {.x = x, .labels = y};
        double l;
        cr_assert_eq(ds_engine_forward(e, &b, &l, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
        cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    }
    return ds_engine_last_loss(e);
}

static char *tmpdir(void)
{
    char *d = strdup("/tmp/ds-test-ckpt.XXXXXX");
    cr_assert(mkdtemp(d) != NULL);
    return d;
}

static void rmrf(const char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    cr_assert_eq(system(cmd), 0);
}

static float *master(ds_engine *e)
{
    ds_engine_state_info info;
    ds_engine_state_info_get(e, &info);
    float *m = malloc((size_t)info.numel * sizeof *m);
    ds_error err = {0};
    cr_assert_eq(ds_engine_read_partition(e, DS_ENGINE_BUF_MASTER, 0, info.numel, m, &err), DS_OK, "%s", err.msg);
    return m;
}

Test(ckpt, partition_rule)
{
    const int64_t sizes[] = {0, 1, 15, 16, 17, 1000, 21984, 100003};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        for (int W = 1; W <= 9; W++) {
            int64_t N = sizes[k], prev = 0, b, e, P = -1;
            for (int r = 0; r < W; r++) {
                int64_t Np = ds_ckpt_partition_range(N, W, r, &b, &e);
                cr_assert_eq(Np % (16 * W), 0);
                cr_assert(Np >= N && Np < N + 16 * W, "N %lld W %d: padded %lld", (long long)N, W, (long long)Np);
                P = Np / W;
                cr_assert_eq(b, prev < N ? (r * P < N ? r * P : N) : N);
                cr_assert_eq(b, prev, "N %lld W %d r %d: partition starts at %lld, expected %lld", (long long)N, W, r,
                             (long long)b, (long long)prev);
                cr_assert(e - b <= P && e >= b);
                prev = e;
            }
            cr_assert_eq(prev, N, "N %lld W %d: partitions end at %lld", (long long)N, W, (long long)prev);
            (void)P;
        }
}

Test(ckpt, sha256_incremental_equals_one_shot)
{
    uint8_t buf[1000], a[32], b[32];
    for (int i = 0; i < 1000; i++)
        buf[i] = (uint8_t)(i * 31 + 7);
    const void *parts[1] = {buf};
    size_t lens[1] = {1000};
    ds_sha256(parts, lens, 1, a);
    const size_t cuts[] = {1, 63, 64, 65, 128, 500, 999};
    for (size_t k = 0; k < sizeof cuts / sizeof *cuts; k++) {
        ds_sha256_ctx c;
        ds_sha256_init(&c);
        ds_sha256_update(&c, buf, cuts[k]);
        ds_sha256_update(&c, buf + cuts[k], 1000 - cuts[k]);
        ds_sha256_final(&c, b);
        cr_assert(memcmp(a, b, 32) == 0, "split at %zu", cuts[k]);
        ds_sha256_init_portable(&c);
        ds_sha256_update(&c, buf, cuts[k]);
        ds_sha256_update(&c, buf + cuts[k], 1000 - cuts[k]);
        ds_sha256_final(&c, b);
        cr_assert(memcmp(a, b, 32) == 0, "portable, split at %zu", cuts[k]);
    }
    /* the accelerated blocks (where the CPU has them) against the portable ones, and a known
     * vector: sha256 of one million 'a' */
    static uint8_t big[1000000];
    memset(big, 'a', sizeof big);
    ds_sha256_ctx f, p;
    ds_sha256_init(&f);
    ds_sha256_init_portable(&p);
    ds_sha256_update(&f, big, sizeof big);
    ds_sha256_update(&p, big, sizeof big);
    ds_sha256_final(&f, a);
    ds_sha256_final(&p, b);
    char hex[65];
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", a[i]);
    cr_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    cr_assert(memcmp(a, b, 32) == 0);
}

/* n steps straight == k steps, save, a fresh engine loads, n - k steps: same losses and state. */
static void resume_exact(const char *cfg, int k, int n)
{
    char *d = tmpdir();
    ds_error err = {0};
    ds_engine *a = make(cfg, NET);
    double la[32], lb[32];
    for (int s = 0; s < k; s++)
        la[s] = train_step(a, s);
    cr_assert_eq(ds_engine_save_checkpoint(a, d, NULL, "{\"note\": \"hello\", \"n\": 3}", &err), DS_OK, "%s", err.msg);
    for (int s = k; s < n; s++)
        la[s] = train_step(a, s);
    ds_engine *b = make(cfg, NET);
    char *client = NULL;
    cr_assert_eq(ds_engine_load_checkpoint(b, d, NULL, &client, &err), DS_OK, "%s", err.msg);
    cr_assert(client && strstr(client, "\"hello\""), "client state back: %s", client ? client : "(null)");
    free(client);
    cr_assert_eq(ds_engine_global_steps(b), k);
    for (int s = k; s < n; s++) {
        lb[s] = train_step(b, s);
        cr_assert(memcmp(&la[s], &lb[s], sizeof(double)) == 0, "%s: step %d: loss %.17g straight, %.17g resumed", cfg,
                  s + 1, la[s], lb[s]);
    }
    float *ma = master(a), *mb = master(b);
    ds_engine_state_info info;
    ds_engine_state_info_get(a, &info);
    cr_assert(memcmp(ma, mb, (size_t)info.numel * 4) == 0, "master weights differ after resume");
    cr_assert_eq(ds_engine_loss_scale(a), ds_engine_loss_scale(b));
    cr_assert_eq(ds_engine_get_lr(a), ds_engine_get_lr(b));
    cr_assert_eq(ds_engine_skipped_steps(a), ds_engine_skipped_steps(b));
    free(ma);
    free(mb);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
    rmrf(d);
    free(d);
}

Test(ckpt, resume_bit_exact_adamw_fp16_warmup, .timeout = 60) { resume_exact(ADAM_FP16, 4, 9); }
Test(ckpt, resume_bit_exact_adagrad, .timeout = 60) { resume_exact(ADAGRAD, 3, 7); }
#define LAMB_BF16 "{\"train_batch_size\": 4, \"optimizer\": {\"type\": \"Lamb\", \"params\": {\"lr\": 0.01}}, " \
    "\"bf16\": {\"enabled\": true}}"
Test(ckpt, resume_bit_exact_lamb_bf16, .timeout = 60) { resume_exact(LAMB_BF16, 3, 6); }
Test(ckpt, resume_bit_exact_sgd_momentum_onecycle, .timeout = 60) { resume_exact(SGD, 2, 7); }

static void flip_byte(const char *path, long at)
{
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0, "%s", path);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, at), 1);
    c ^= 0x10;
    cr_assert_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

Test(ckpt, damaged_incomplete_and_mismatched_are_refused, .timeout = 60)
{
    char *d = tmpdir(), p[1024];
    ds_error err = {0};
    ds_engine *a = make(ADAGRAD, NET);
    train_step(a, 0);
    cr_assert_eq(ds_engine_save_checkpoint(a, d, NULL, NULL, &err), DS_OK, "%s", err.msg);
    /* the same tag again: refused, the first one stays */
    cr_assert_neq(ds_engine_save_checkpoint(a, d, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, "global_step1") && strstr(err.msg, "not overwriting"), "%s", err.msg);
    ds_engine *b = make(ADAGRAD, NET);
    /* a bit flipped in the optimizer partition */
    snprintf(p, sizeof p, "%s/global_step1/zero_pp_rank_0_mp_rank_00_optim_states.safetensors", d);
    flip_byte(p, 200);
    cr_assert_neq(ds_engine_load_checkpoint(b, d, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, p) && strstr(err.msg, "checksum mismatch"), "%s", err.msg);
    flip_byte(p, 200);
    /* truncated */
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size - 8), 0);
    cr_assert_neq(ds_engine_load_checkpoint(b, d, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, p) && strstr(err.msg, "truncated"), "%s", err.msg);
    cr_assert_eq(unlink(p), 0);
    cr_assert_neq(ds_engine_load_checkpoint(b, d, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, "missing"), "%s", err.msg);
    /* another network, another optimizer */
    train_step(a, 1);
    cr_assert_eq(ds_engine_save_checkpoint(a, d, NULL, NULL, &err), DS_OK, "%s", err.msg);
    ds_engine *c = make(ADAGRAD, NET2);
    cr_assert_neq(ds_engine_load_checkpoint(c, d, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, "manifest.json") && strstr(err.msg, "fc1.weight"), "%s", err.msg);
    ds_engine *s = make(SGD, NET);
    cr_assert_neq(ds_engine_load_checkpoint(s, d, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, "Adagrad") && strstr(err.msg, "SGD"), "%s", err.msg);
    /* no checkpoint at all */
    char *e = tmpdir();
    cr_assert_neq(ds_engine_load_checkpoint(b, e, NULL, NULL, &err), DS_OK);
    cr_assert(strstr(err.msg, "latest"), "%s", err.msg);
    char *tag = (char *)"x";
    cr_assert_eq(ds_ckpt_latest(e, &tag, &err), DS_OK);
    cr_assert_null(tag);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
    ds_engine_destroy(c);
    ds_engine_destroy(s);
    rmrf(d);
    rmrf(e);
    free(d);
    free(e);
}

Test(ckpt, reshard_and_export_keep_every_value, .timeout = 60)
{
    char *d = tmpdir(), out[1024], st_path[1024];
    ds_error err = {0};
    ds_engine *a = make(ADAM_FP16, NET);
    for (int s = 0; s < 3; s++)
        train_step(a, s);
    cr_assert_eq(ds_engine_save_checkpoint(a, d, "mytag", NULL, &err), DS_OK, "%s", err.msg);
    ds_ckpt *c;
    cr_assert_eq(ds_ckpt_open(&c, d, NULL, &err), DS_OK, "%s", err.msg);
    cr_assert_str_eq(c->tag, "mytag");
    cr_assert_eq(c->partition_world, 1);
    for (int i = 0; i < c->n_files; i++)
        cr_assert_eq(ds_ckpt_verify_file(c, i, &err), DS_OK, "%s", err.msg);
    snprintf(out, sizeof out, "%s/re3", d);
    cr_assert_eq(ds_ckpt_reshard(c, out, 3, 0, &err), DS_OK, "%s", err.msg);
    cr_assert_neq(ds_ckpt_reshard(c, out, 3, 0, &err), DS_OK, "an existing output is refused");
    snprintf(st_path, sizeof st_path, "%s/w.safetensors", d);
    cr_assert_eq(ds_ckpt_export(c, st_path, DS_F32, 1, 0, &err), DS_OK, "%s", err.msg);
    ds_ckpt_close(c);
    ds_ckpt *r;
    cr_assert_eq(ds_ckpt_open(&r, out, NULL, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(r->partition_world, 3);
    cr_assert_eq(r->dp_world_size, 3);
    for (int i = 0; i < r->n_files; i++)
        cr_assert_eq(ds_ckpt_verify_file(r, i, &err), DS_OK, "%s", err.msg);
    ds_ckpt_close(r);
    /* the 3-way checkpoint loads into the same state */
    ds_engine *b = make(ADAM_FP16, NET);
    cr_assert_eq(ds_engine_load_checkpoint(b, out, NULL, NULL, &err), DS_OK, "%s", err.msg);
    float *ma = master(a), *mb = master(b);
    ds_engine_state_info info;
    ds_engine_state_info_get(a, &info);
    cr_assert(memcmp(ma, mb, (size_t)info.numel * 4) == 0);
    double l1 = train_step(a, 3), l2 = train_step(b, 3);
    cr_assert(memcmp(&l1, &l2, sizeof l1) == 0, "%.17g vs %.17g", l1, l2);
    /* the export holds every weight and moment by name */
    ds_safetensors *w;
    cr_assert_eq(ds_st_open(&w, st_path, &err), DS_OK, "%s", err.msg);
    const ds_net *net = ds_engine_net(a);
    cr_assert_eq(w->n, net->params.n * 3);
    const ds_st_tensor *t = ds_st_find(w, "fc1.weight");
    cr_assert(t && t->dtype == DS_F32 && t->ndim == 2 && t->shape[0] == 20 && t->shape[1] == 12);
    cr_assert(memcmp(ds_st_data(w, t), ma + net->params.t[0].offset, 240 * 4) == 0);
    cr_assert(ds_st_find(w, "optimizer.exp_avg_sq.fc2.bias") != NULL);
    ds_st_close(w);
    free(ma);
    free(mb);
    ds_engine_destroy(a);
    ds_engine_destroy(b);
    rmrf(d);
    free(d);
}

Test(ckpt, prune_keeps_the_newest_and_latest, .timeout = 60)
{
    char *d = tmpdir();
    ds_error err = {0};
    ds_engine *a = make(ADAGRAD, NET);
    for (int s = 0; s < 4; s++) {
        train_step(a, s);
        cr_assert_eq(ds_engine_save_checkpoint(a, d, NULL, NULL, &err), DS_OK, "%s", err.msg);
    }
    /* a save killed after committing global_step4 but before rewriting latest */
    char p[1024], *tag;
    snprintf(p, sizeof p, "%s/latest", d);
    FILE *f = fopen(p, "w");
    fputs("global_step3", f);
    fclose(f);
    cr_assert_eq(ds_ckpt_newest(d, &tag, &err), DS_OK, "%s", err.msg);
    cr_assert_str_eq(tag, "global_step4");
    free(tag);
    ds_engine *b = make(ADAGRAD, NET);
    cr_assert_eq(ds_engine_load_checkpoint(b, d, NULL, NULL, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_global_steps(b), 4);
    ds_engine_destroy(b);
    int deleted;
    cr_assert_eq(ds_ckpt_prune(d, 2, &deleted, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(deleted, 2);
    char **tags;
    int n;
    cr_assert_eq(ds_ckpt_list(d, &tags, &n, NULL, NULL, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(tags[0], "global_step3");
    cr_assert_str_eq(tags[1], "global_step4");
    ds_ckpt_free_list(tags, n);
    ds_engine_destroy(a);
    rmrf(d);
    free(d);
}
