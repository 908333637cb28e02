/* tests/bench_prof NET.json DS.json [STEPS]: what the engine's timers cost, in one process so
 * that a busy machine hits both sides alike. (1) ns per timer start+stop, on and off. (2) Two
 * engines built from the same files, A with the timers off and B with them on, train on the
 * same random batches, alternating optimizer step by optimizer step (A B, B A, A B, ...: neither
 * side always goes first); prints the
 * median step time of each and the median of the per-pair ratios B/A - 1. Built on request
 * (`make tests/bench_prof`); scripts/bench-prof.sh runs it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds/ds.h"

static int cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double timer_pair_ns(int on)
{
    ds_timers t;
    ds_timers_init(&t, on);
    const int n = 2000000;
    double t0 = ds_prof_now_s();
    for (int i = 0; i < n; i++) {
        ds_timers_start(&t, DS_TIMER_FWD);
        ds_timers_stop(&t, DS_TIMER_FWD);
    }
    double s = ds_prof_now_s() - t0;
    /* keep the loop: the result depends on the timer's sum */
    if (t.micro_ms[DS_TIMER_FWD] < 0)
        printf("?");
    return s / n * 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_prof NET.json DS.json [STEPS]\n");
        return 2;
    }
    int steps = argc > 3 ? atoi(argv[3]) : 200;
    printf("timer start+stop: %.1f ns on, %.2f ns off\n", timer_pair_ns(1), timer_pair_ns(0));
    ds_engine *e[2];
    ds_error err = {0};
    for (int k = 0; k < 2; k++) {
        ds_engine_options o = {.config_path = argv[2], .net_path = argv[1], .backend = "cpu", .timers = k};
        if (ds_initialize(&e[k], &o, &err) != DS_OK) {
            fprintf(stderr, "bench_prof: %s\n", err.msg);
            return 2;
        }
    }
    if (ds_engine_timers(e[0])) {
        fprintf(stderr, "bench_prof: %s turns wall_clock_breakdown on; A must have the timers off\n", argv[2]);
        return 2;
    }
    const ds_net *net = ds_engine_net(e[0]);
    const ds_config *cfg = ds_engine_config(e[0]);
    if (net->input != DS_INPUT_TOKENS) {
        fprintf(stderr, "bench_prof: %s: a tokens network is needed\n", argv[1]);
        return 2;
    }
    int64_t M = cfg->micro_batch * net->positions;
    int32_t *tok = malloc((size_t)M * sizeof *tok), *tgt = malloc((size_t)M * sizeof *tgt);
    double *ms[2] = {malloc((size_t)steps * sizeof(double)), malloc((size_t)steps * sizeof(double))};
    double *ratio = malloc((size_t)steps * sizeof(double));
    if (!tok || !tgt || !ms[0] || !ms[1] || !ratio)
        return 1;
    uint64_t x = 12345;
    for (int s = 0; s < steps + 5; s++) {
        for (int64_t i = 0; i < M; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            tok[i] = (int32_t)((x >> 33) % (uint64_t)net->vocab_size);
            tgt[i] = (int32_t)((x >> 13) % (uint64_t)net->out_dim);
        }
        ds_batch b = {.tokens = tok, .targets = tgt};
        for (int j = 0; j < 2; j++) {
            int k = (s % 2) ? 1 - j : j;
            double t0 = ds_prof_now_s(), loss;
            for (int64_t u = 0; u < cfg->grad_accum; u++)
                if (ds_engine_forward(e[k], &b, &loss, &err) || ds_engine_backward(e[k], &err) ||
                    ds_engine_step(e[k], &err)) {
                    fprintf(stderr, "bench_prof: %s\n", err.msg);
                    return 1;
                }
            if (s >= 5) /* warm-up */
                ms[k][s - 5] = (ds_prof_now_s() - t0) * 1e3;
        }
        if (s >= 5)
            ratio[s - 5] = ms[1][s - 5] / ms[0][s - 5] - 1;
    }
    double r = median(ratio, steps);
    printf("engine steps (%d, alternating): A timers off %.4f ms, B timers on %.4f ms; median of paired B/A-1 "
           "%+.3f%%\n", steps, median(ms[0], steps), median(ms[1], steps), 100 * r);
    ds_engine_destroy(e[0]);
    ds_engine_destroy(e[1]);
    free(tok);
    free(tgt);
    free(ms[0]);
    free(ms[1]);
    free(ratio);
    return 0;
}
