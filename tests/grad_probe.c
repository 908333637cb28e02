/* A rank program for tests/zero.sh: under overlap_comm the communication thread may still be
 * reducing the last buckets when backward returns; ds_engine_get_grad and ds_engine_set_grad
 * must wait for it. Trains the network of argv[1] at ZeRO stage argv[2] with overlap_comm on
 * (SGD, lr 0.1): the first tensor's gradient read right after backward must equal the same
 * read 0.3 s later, and a gradient set to 0 right after backward must leave that tensor's
 * weights unchanged by the step. Exit 0 when both hold; 1 with what differed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ds/ds.h>

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b)
        b[n] = 0;
    fclose(f);
    return b;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: grad_probe NET.json STAGE\n");
        return 2;
    }
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    int rank = 0, world = 1;
    ds_error err = {0};
    if (ds_dist_join_from_env(&store, &comm, &rank, &world, &err) != DS_OK) {
        fprintf(stderr, "grad_probe: %s\n", err.msg);
        return 1;
    }
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"train_micro_batch_size_per_gpu\": 4, \"seed\": 3, \"optimizer\": {\"type\": \"SGD\", "
             "\"params\": {\"lr\": 0.1}}, \"zero_optimization\": {\"stage\": %s, \"overlap_comm\": true, "
             "\"stage3_param_persistence_threshold\": 0}}", argv[2]);
    char *net = slurp(argv[1]);
    ds_engine *e = NULL;
    ds_engine_options o = {.config_json = cfg, .config_name = "probe.json", .net_json = net, .net_name = argv[1],
                           .backend = "cpu", .comm = comm, .rank = rank, .world_size = world, .store = store};
    if (!net || ds_initialize(&e, &o, &err) != DS_OK) {
        fprintf(stderr, "grad_probe: rank %d: %s\n", rank, net ? err.msg : "cannot read the network file");
        return 1;
    }
    const ds_net *n = ds_engine_net(e);
    const int T = n->positions;
    int32_t *tok = malloc(sizeof *tok * 4 * (size_t)T), *tgt = malloc(sizeof *tgt * 4 * (size_t)T);
    for (int i = 0; i < 4 * T; i++) {
        tok[i] = (i * 7 + rank * 13) % 256;
        tgt[i] = (i * 11 + rank) % 256;
    }
    ds_batch b = {.tokens = tok, .targets = tgt};
    const ds_tensor_info *t = &n->params.t[0]; /* the embedding: its buckets are reduced last */
    float *g1 = calloc((size_t)t->numel, sizeof *g1), *g2 = calloc((size_t)t->numel, sizeof *g2);
    float *p0 = calloc((size_t)t->numel, sizeof *p0), *p1 = calloc((size_t)t->numel, sizeof *p1);
    double loss;
    int bad = 0;
    if (ds_engine_forward(e, &b, &loss, &err) || ds_engine_backward(e, &err) ||
        ds_engine_get_grad(e, t->name, g1, t->numel, &err)) {
        fprintf(stderr, "grad_probe: rank %d: %s\n", rank, err.msg);
        return 1;
    }
    usleep(300000);
    ds_engine_get_grad(e, t->name, g2, t->numel, &err);
    long diff = 0;
    for (int64_t i = 0; i < t->numel; i++)
        diff += memcmp(&g1[i], &g2[i], 4) != 0;
    if (diff) {
        fprintf(stderr, "grad_probe: rank %d, stage %s: %s's gradient read right after backward differs from the "
                "same read 0.3 s later in %ld of %lld elements\n", rank, argv[2], t->name, diff, (long long)t->numel);
        bad = 1;
    }
    if (ds_engine_step(e, &err) || ds_engine_forward(e, &b, &loss, &err) || ds_engine_backward(e, &err)) {
        fprintf(stderr, "grad_probe: rank %d: %s\n", rank, err.msg);
        return 1;
    }
    memset(g1, 0, sizeof *g1 * (size_t)t->numel);
    if (ds_engine_get_param(e, t->name, p0, t->numel, &err) || ds_engine_set_grad(e, t->name, g1, t->numel, &err) ||
        ds_engine_step(e, &err) || ds_engine_get_param(e, t->name, p1, t->numel, &err)) {
        fprintf(stderr, "grad_probe: rank %d: %s\n", rank, err.msg);
        return 1;
    }
    long moved = 0;
    for (int64_t i = 0; i < t->numel; i++)
        moved += memcmp(&p0[i], &p1[i], 4) != 0;
    if (moved) {
        fprintf(stderr, "grad_probe: rank %d, stage %s: with its gradient set to 0 after backward, %ld of %lld %s "
                "weights changed in the step\n", rank, argv[2], moved, (long long)t->numel, t->name);
        bad = 1;
    }
    if (!bad)
        printf("grad_probe: rank %d, stage %s: ok\n", rank, argv[2]);
    ds_engine_destroy(e);
    ds_comm_destroy(comm);
    ds_store_close(store);
    free(net), free(tok), free(tgt), free(g1), free(g2), free(p0), free(p1);
    return bad;
}
