/* bench_optim: memory bandwidth of the fused optimizer steps on the CPU backend, against a
 * STREAM-like triad measured in the same run.
 *
 *   tests/bench_optim [--sizes 16,128] [--reps 5] [--threads T] [--tensor M]
 *
 * --sizes: parameter counts in millions (2^20); --reps: timed steps per case (the median is
 * reported); --threads: OpenMP threads (default: the OpenMP default); --tensor: elements per
 * tensor of the tensor table, in millions (default 4: Lamb's trust ratio is per tensor).
 *
 * Each optimizer step runs over flat fp32 buffers (ds_optimizer_step, one call = one step of n
 * parameters). The bytes per parameter are the distinct arrays the step must read and write
 * once each (a read-modify-write array counts 4 + 4):
 *   AdamW fp32        reads p g m v, writes p m v                            28 B
 *   AdamW bf16        + writes pw (the 16-bit working weights, 2 B each, as  30 B
 *                     ds-train writes them with 16-bit storage)
 *   SGD momentum      reads p g buf, writes p buf                            20 B
 *   Adagrad           reads p g sum, writes p sum                            20 B
 *   Lamb fp32         pass 1 reads p g m v, writes m v (24 B); pass 2 reads  40 B
 *                     p m v, writes p (16 B)
 *   Lamb bf16         + writes pw (2 B) in pass 2                            42 B
 *   triad             a[i] = b[i] + s*c[i]: 3 arrays x 4 B, as STREAM counts 12 B
 *                     (the write-allocate read of a is not counted)
 * Write-only arrays (pw, the triad's a) also cost a write-allocate read unless the compiler
 * uses streaming stores; STREAM does not count it, nor do we (column "B/param"): the triad's
 * real traffic is 16 B/elem, so a perfect read-modify-write kernel can exceed ratio 1.
 *
 * Every case's timed steps are interleaved with triad runs over arrays of the same n (triad,
 * step, triad, step, ...), and its ratio is against the median of those triads, so a change in
 * the machine's load hits both. All buffers are written (first touch) before anything is timed,
 * and one untimed step precedes the timed ones (SGD's first step skips the momentum read). */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds/backend.h"
#include "ds/config.h"
#include "ds/optim.h"
#include "ds/tensor.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* first touch, in parallel, with the static schedule the kernels use */
static void fill(float *x, int64_t n, float base, float amp)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)i * 2654435761u;
        x[i] = base + amp * ((float)(h >> 8) * (1.0f / 16777216.0f) - 0.5f);
    }
}

static void triad(float *restrict a, const float *restrict b, const float *restrict c, float s,
                  int64_t n)
{
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++)
        a[i] = b[i] + s * c[i];
}

typedef struct bench_case {
    const char *name;
    ds_optimizer_type type;
    int pw;     /* write bf16 working weights */
    int bytes;  /* per parameter */
} bench_case;

static const bench_case CASES[] = {
    {"AdamW fp32", DS_OPTIM_ADAMW, 0, 28},
    {"AdamW bf16 (pw 16-bit)", DS_OPTIM_ADAMW, 1, 30},
    {"SGD momentum", DS_OPTIM_SGD, 0, 20},
    {"Adagrad", DS_OPTIM_ADAGRAD, 0, 20},
    {"Lamb fp32 (2 passes)", DS_OPTIM_LAMB, 0, 40},
    {"Lamb bf16 (2 passes)", DS_OPTIM_LAMB, 1, 42},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

static ds_optimizer_config config_of(ds_optimizer_type t)
{
    ds_optimizer_config c;
    memset(&c, 0, sizeof c);
    c.type = t;
    c.lr = 1e-3;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.weight_decay = 0.01;
    c.adam_w_mode = 1;
    c.bias_correction = 1;
    c.min_coeff = 0.01;
    c.max_coeff = 10.0;
    switch (t) {
    case DS_OPTIM_SGD:
        snprintf(c.name, sizeof c.name, "SGD");
        c.momentum = 0.9;
        c.dampening = 0.0;
        break;
    case DS_OPTIM_ADAGRAD:
        snprintf(c.name, sizeof c.name, "Adagrad");
        c.eps = 1e-10;
        c.initial_accumulator_value = 0.1;
        c.lr_decay = 0.0;
        break;
    case DS_OPTIM_LAMB: snprintf(c.name, sizeof c.name, "Lamb"); break;
    default: snprintf(c.name, sizeof c.name, "AdamW"); break;
    }
    return c;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_optim [--sizes 16,128] [--reps N] [--threads T] [--tensor M]\n"
               "  sizes and tensor in millions (2^20) of fp32 parameters; reps default 5\n");
}

int main(int argc, char **argv)
{
    const char *sizes = "16,128";
    int reps = 5, threads = 0;
    double tensor_m = 4;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
            sizes = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tensor") && i + 1 < argc)
            tensor_m = atof(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (reps < 1 || tensor_m <= 0 || threads < 0) {
        usage(stderr);
        return 2;
    }
    if (threads > 0)
        omp_set_num_threads(threads);

    ds_error err = {0};
    ds_backend *be = NULL;
    if (ds_backend_create(&be, "cpu", &err) != DS_OK) {
        fprintf(stderr, "bench_optim: %s\n", err.msg);
        return 1;
    }
    printf("bench_optim: %d OpenMP threads, median of %d steps, tensors of %g M elements\n",
           omp_get_max_threads(), reps, tensor_m);
    printf("B/param: arrays read + written once each (fp32); bf16 cases write pw as 16-bit "
           "values (2 B/param); triad: 12 B/elem as STREAM counts\n");
    printf("ratio: GB/s over the triad GB/s of the same case's interleaved triads; the triad "
           "really moves 16 B/elem (write-allocate), so x0.75 gives the ratio to its traffic\n");
    printf("%-28s %6s %8s %10s %8s %7s %11s\n", "case", "n(M)", "B/param", "median ms", "GB/s",
           "ratio", "triad GB/s");

    const char *s = sizes;
    while (*s) {
        char *end;
        double nm = strtod(s, &end);
        if (end == s || nm <= 0) {
            fprintf(stderr, "bench_optim: bad --sizes \"%s\"\n", sizes);
            return 2;
        }
        s = *end == ',' ? end + 1 : end;
        const int64_t n = (int64_t)(nm * 1048576.0) / 16 * 16;
        const size_t bytes = (size_t)n * sizeof(float);

        /* the tensor table: tensors of tensor_m M elements (multiples of 16: no padding) */
        ds_tensor_table tab;
        ds_table_init(&tab);
        int64_t per = (int64_t)(tensor_m * 1048576.0) / 16 * 16;
        if (per < 16)
            per = 16;
        for (int64_t off = 0, k = 0; off < n; off += per, k++) {
            char name[32];
            int64_t shape = n - off < per ? n - off : per;
            snprintf(name, sizeof name, "t%lld", (long long)k);
            if (ds_table_add(&tab, name, 1, &shape, &err) < 0) {
                fprintf(stderr, "bench_optim: %s\n", err.msg);
                return 1;
            }
        }
        if (tab.total != n) {
            fprintf(stderr, "bench_optim: table has %lld elements, not %lld\n",
                    (long long)tab.total, (long long)n);
            return 1;
        }

        float *p = be->ops->alloc(be, bytes), *g = be->ops->alloc(be, bytes),
              *pw = be->ops->alloc(be, bytes);
        float *ta = be->ops->alloc(be, bytes), *tb = be->ops->alloc(be, bytes),
              *tc = be->ops->alloc(be, bytes);
        if (!p || !g || !pw || !ta || !tb || !tc) {
            fprintf(stderr, "bench_optim: out of memory for n = %lld\n", (long long)n);
            return 1;
        }
        fill(g, n, 0.0f, 2e-3f);
        fill(pw, n, 0.0f, 0.0f);
        fill(ta, n, 0.0f, 0.0f);
        fill(tb, n, 1.0f, 1.0f);
        fill(tc, n, 0.5f, 1.0f);

        double *tt = malloc(sizeof(double) * (size_t)(reps + 1) * 2), *ts = tt + reps + 1;
        double triad_all[64 * N_CASES];
        int n_triad_all = 0;
        for (int ci = 0; ci < N_CASES; ci++) {
            const bench_case *bc = &CASES[ci];
            ds_optimizer_config cfg = config_of(bc->type);
            ds_optimizer o;
            fill(p, n, 0.0f, 0.2f);
            if (ds_optimizer_init(&o, &cfg, be, &tab, NULL, &err) != DS_OK) {
                fprintf(stderr, "bench_optim: %s: %s\n", bc->name, err.msg);
                return 1;
            }
            /* touch the state in parallel (the allocator zeroed it in one thread) */
            if (o.m)
                fill(o.m, n, bc->type == DS_OPTIM_ADAGRAD ? 0.1f : 0.0f, 0.0f);
            if (o.v)
                fill(o.v, n, 0.0f, 0.0f);
            float *pwp = bc->pw ? pw : NULL;
            /* one untimed step, then triad/step pairs */
            if (ds_optimizer_step(&o, p, g, 1e-3f, 1.0f, pwp, DS_ROUND_BF16, 1, &err) != DS_OK) {
                fprintf(stderr, "bench_optim: %s: %s\n", bc->name, err.msg);
                return 1;
            }
            triad(ta, tb, tc, 3.0f, n);
            for (int r = 0; r < reps; r++) {
                double t0 = now();
                triad(ta, tb, tc, 3.0f, n);
                double t1 = now();
                ds_status st = ds_optimizer_step(&o, p, g, 1e-3f, 1.0f, pwp, DS_ROUND_BF16, 1, &err);
                double t2 = now();
                if (st != DS_OK) {
                    fprintf(stderr, "bench_optim: %s: %s\n", bc->name, err.msg);
                    return 1;
                }
                tt[r] = t1 - t0;
                ts[r] = t2 - t1;
                if (n_triad_all < (int)(sizeof triad_all / sizeof triad_all[0]))
                    triad_all[n_triad_all++] = t1 - t0;
            }
            double tri = median(tt, reps), step = median(ts, reps);
            double tri_gbs = 12.0 * (double)n / tri * 1e-9;
            double gbs = (double)bc->bytes * (double)n / step * 1e-9;
            printf("%-28s %6.0f %8d %10.2f %8.2f %7.3f %11.2f\n", bc->name, nm, bc->bytes,
                   step * 1e3, gbs, gbs / tri_gbs, tri_gbs);
            fflush(stdout);
            ds_optimizer_free(&o);
        }
        double tri = median(triad_all, n_triad_all);
        printf("%-28s %6.0f %8d %10.2f %8.2f %7.3f %11s\n", "triad (all of the above)", nm, 12,
               tri * 1e3, 12.0 * (double)n / tri * 1e-9, 1.0, "-");
        fflush(stdout);
        free(tt);
        be->ops->free(be, p);
        be->ops->free(be, g);
        be->ops->free(be, pw);
        be->ops->free(be, ta);
        be->ops->free(be, tb);
        be->ops->free(be, tc);
        ds_table_free(&tab);
    }
    ds_backend_destroy(be);
    return 0;
}
