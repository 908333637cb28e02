/* Where oneDNN's small bf16 products lose their speed (issue 4): the linear layers' products of
 * a gpt-tiny step (B 8, T 128, C 256) timed alone, each in the ways ds could call it, beside
 * the same shapes in fp32 and a 1024^3 product. The last AMX measurement found these shapes at
 * 0.3-0.6 TFLOP/s on 2 cores against 1.5 at 1024^3; this says whether the weights' plain layout
 * (oneDNN repacks them at every call), the split of the rows between threads (each thread
 * repacks them again) or the shapes themselves cost it.
 *
 *   tests/bench_dnnl [reps]      (built on request: make tests/bench_dnnl; gpu-check.sh runs it
 *                                 on the lent machine's host CPU)
 *
 * Variants, per product (GFLOP/s, median of reps after 3 warm-up calls):
 *   f32 split      fp32, the rows split between the OpenMP threads, each a one-thread
 *                  primitive on plain layouts: what ds-train runs in fp32
 *   bf16 split     the same in bf16 (fp32 output): ds-train's bf16 products before this commit
 *   bf16 split o16 bf16 output (what 16-bit storage now asks)
 *   bf16 omp       one primitive threaded by oneDNN (DS_CPU_GEMM_SPLIT=0)
 *   bf16 split pk  B in the layout the primitive prefers (format any; reordered once, outside
 *                  the timing: what packing the weights once per step would give)
 *   bf16 omp pk    both
 *   f32 split pk   fp32 with B packed
 * Every variant's C is summed and compared with the first's (the inputs are bf16 values, so all
 * compute the same positive sums up to rounding): a mismatch is marked ! and the exit status is 1.
 * A variant oneDNN cannot build (no bf16 matmul on this CPU, or only its reference code) says
 * so instead of a rate. The implementation oneDNN chose is printed for each product.
 * Then attention's batched products, as ds calls them and on dense copies (below). */
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the median of n sorted values (the mean of the middle two for an even n) */
#define MEDIAN(v, n) ((n) % 2 ? (v)[(n) / 2] : 0.5 * ((v)[(n) / 2 - 1] + (v)[(n) / 2]))

#define MAX_T 64

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct prod {
    const char *name;
    int64_t M, N, K;
    int bt; /* B given transposed (B(k,n) = W[n*K + k]: the forward's W^T) */
    int at; /* A given transposed (A(m,k) = dY[k*M + m]: dY^T read in place, not transposed first) */
} prod;

typedef struct part {
    dnnl_primitive_t p;
    dnnl_memory_t a, b, c;
    dnnl_stream_t s;
} part;

static dnnl_engine_t eng;

static void free_part(part *o); /* the parts of o that exist (NULL handles are skipped by oneDNN) */

/* one primitive for rows [0, m) of the product; packed: B in the primitive's own layout */
static int make_part(const prod *q, int64_t m, dnnl_data_type_t dt, dnnl_data_type_t ct, int packed, void *A, void *B,
                     void *C, part *o, char *impl, size_t impl_n)
{
    dnnl_memory_desc_t a_md, b_md, c_md, bplain;
    dnnl_dims_t ad = {m, q->K}, bd = {q->K, q->N}, cd = {m, q->N};
    dnnl_dims_t as = {q->K, 1}, bs_t = {1, q->K}, bs_n = {q->N, 1}, cs = {q->N, 1};
    if (q->at) /* column m of the whole [K, M] buffer: rows M apart */
        as[0] = 1, as[1] = q->M;
    if (dnnl_memory_desc_init_by_strides(&a_md, 2, ad, dt, as) ||
        dnnl_memory_desc_init_by_strides(&bplain, 2, bd, dt, q->bt ? bs_t : bs_n) ||
        dnnl_memory_desc_init_by_strides(&c_md, 2, cd, ct, cs))
        return -1;
    b_md = bplain;
    if (packed && dnnl_memory_desc_init_by_tag(&b_md, 2, bd, dt, dnnl_format_tag_any))
        return -1;
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd;
    if (dnnl_matmul_desc_init(&md, &a_md, &b_md, NULL, &c_md) ||
        dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL))
        return -1;
    const char *im = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &im);
    snprintf(impl, impl_n, "%s", im ? im : "?");
    if (strncmp(impl, "ref", 3) == 0) {
        dnnl_primitive_desc_destroy(pd);
        return -2;
    }
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    memset(o, 0, sizeof *o);
    if (dnnl_primitive_create(&o->p, pd) || dnnl_memory_create(&o->a, &a_md, eng, A) ||
        dnnl_memory_create(&o->c, &c_md, eng, C) || dnnl_stream_create(&o->s, eng, dnnl_stream_default_flags) ||
        (!packed && dnnl_memory_create(&o->b, &b_md, eng, B))) {
        dnnl_primitive_desc_destroy(pd);
        free_part(o);
        return -1;
    }
    if (packed) { /* B reordered once into the layout the primitive asked for */
        dnnl_memory_t src = NULL;
        dnnl_primitive_desc_t rpd = NULL;
        dnnl_primitive_t r = NULL;
        if (dnnl_memory_create(&src, &bplain, eng, B) || dnnl_memory_create(&o->b, wmd, eng, DNNL_MEMORY_ALLOCATE) ||
            dnnl_reorder_primitive_desc_create(&rpd, &bplain, eng, wmd, eng, NULL) ||
            dnnl_primitive_create(&r, rpd)) {
            dnnl_primitive_desc_destroy(rpd);
            dnnl_memory_destroy(src);
            dnnl_primitive_desc_destroy(pd);
            free_part(o);
            return -1;
        }
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, o->b}};
        dnnl_primitive_execute(r, o->s, 2, args);
        dnnl_stream_wait(o->s);
        dnnl_primitive_destroy(r);
        dnnl_primitive_desc_destroy(rpd);
        dnnl_memory_destroy(src);
    }
    dnnl_primitive_desc_destroy(pd);
    return 0;
}

static void run_part(part *o)
{
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, o->a}, {DNNL_ARG_WEIGHTS, o->b}, {DNNL_ARG_DST, o->c}};
    dnnl_primitive_execute(o->p, o->s, 3, args);
    dnnl_stream_wait(o->s);
}

static void free_part(part *o)
{
    dnnl_primitive_destroy(o->p);
    dnnl_memory_destroy(o->a);
    dnnl_memory_destroy(o->b);
    dnnl_memory_destroy(o->c);
    dnnl_stream_destroy(o->s);
}

/* GFLOP/s of one variant, 0 where oneDNN builds none or only its reference code; impl: its name */
static double time_variant(const prod *q, int bf16, int out16, int split, int packed, int reps, char *impl,
                           size_t impl_n, double *sum)
{
    const int nt = split ? omp_get_max_threads() : 1;
    const size_t es = bf16 ? 2 : 4, cs = out16 ? 2 : 4;
    char *A = calloc((size_t)(q->M * q->K), es), *B = calloc((size_t)(q->K * q->N), es);
    char *C = calloc((size_t)(q->M * q->N), cs);
    if (!A || !B || !C) {
        fprintf(stderr, "bench_dnnl: out of memory\n");
        exit(1);
    }
    /* small values, the same bits in bf16 and fp32 (bf16's upper halves) */
    for (int64_t i = 0; i < q->M * q->K; i++) {
        uint16_t h = (uint16_t)(0x3c00 + (i * 7919) % 512); /* 2^-7 to about 2^-3 */
        if (bf16)
            memcpy(A + 2 * i, &h, 2);
        else {
            uint32_t u = (uint32_t)h << 16;
            memcpy(A + 4 * i, &u, 4);
        }
    }
    for (int64_t i = 0; i < q->K * q->N; i++) {
        uint16_t h = (uint16_t)(0x3c00 + (i * 104729) % 512);
        if (bf16)
            memcpy(B + 2 * i, &h, 2);
        else {
            uint32_t u = (uint32_t)h << 16;
            memcpy(B + 4 * i, &u, 4);
        }
    }
    part parts[MAX_T];
    int ok = 1, n = 0; /* n: parts made */
    for (int t = 0; t < nt && ok; t++) {
        int64_t m0 = q->M * t / nt, m1 = q->M * (t + 1) / nt;
        int r = make_part(q, m1 - m0, bf16 ? dnnl_bf16 : dnnl_f32, out16 ? dnnl_bf16 : dnnl_f32, packed,
                          A + (size_t)(q->at ? m0 : m0 * q->K) * es, B, C + (size_t)(m0 * q->N) * cs, &parts[t],
                          impl, impl_n);
        if (r == 0)
            n++;
        else
            ok = 0;
        if (r == -1)
            snprintf(impl, impl_n, "%s", "none built");
    }
    double gf = 0;
    if (ok) {
        double *ts = malloc((size_t)reps * sizeof *ts);
        for (int r = -3; r < reps; r++) {
            double t0 = now_s();
            if (nt > 1) {
                int team = 0;
#pragma omp parallel num_threads(nt)
                {
                    run_part(&parts[omp_get_thread_num()]);
#pragma omp single
                    team = omp_get_num_threads();
                }
                if (team != nt) { /* OMP_DYNAMIC or a thread limit: some rows were not computed */
                    fprintf(stderr, "bench_dnnl: asked for %d threads, got %d (unset OMP_DYNAMIC)\n", nt, team);
                    exit(1);
                }
            } else {
                run_part(&parts[0]);
            }
            if (r >= 0)
                ts[r] = now_s() - t0;
        }
        qsort(ts, (size_t)reps, sizeof *ts, cmp_d);
        *sum = 0; /* what the product gave, to compare the variants */
        for (int64_t i = 0; i < q->M * q->N; i++) {
            uint32_t u = 0;
            if (out16)
                u = (uint32_t)((uint16_t *)(void *)C)[i] << 16;
            else
                memcpy(&u, C + 4 * i, 4);
            float f;
            memcpy(&f, &u, 4);
            *sum += f;
        }
        gf = 2.0 * (double)q->M * (double)q->N * (double)q->K / MEDIAN(ts, reps) / 1e9;
        free(ts);
    }
    for (int t = 0; t < n; t++)
        free_part(&parts[t]);
    free(A), free(B), free(C);
    return gf;
}

/* one variant's cell: its GFLOP/s, marked ! where its C sums to more than 1% off the first
 * variant's (the inputs are bf16 values, so every variant sums the same positive products and only
 * rounding separates them), or n/a; returns 1 for a mark */
static int cell(double gf, double sum, double *ref, int *have_ref)
{
    const int off = gf > 0 && *have_ref && !(sum > *ref * 0.99 && sum < *ref * 1.01);
    if (gf > 0 && !*have_ref)
        *ref = sum, *have_ref = 1;
    if (gf > 0)
        printf(" %13.1f%s", gf, off ? "!" : " ");
    else
        printf(" %14s", "n/a");
    return off;
}

/* the implementations oneDNN chose, under the row's cells */
static void impl_line(char (*impls)[64], int n)
{
    printf("\n%-39s", "");
    for (int j = 0; j < n; j++)
        printf(" %14.14s", impls[j]);
    printf("\n");
    fflush(stdout);
}

/* ---- attention's batched products (B 8, H 4, T 128, D 64: gpt-tiny) ---------------------------
 * "strided": 4-D views of the packed qkv [B, T, 3, H, D] and out [B, T, H, D], as ds's fp32
 * attention calls them: a head's rows are 3C (or C) apart, so the head dimension, a batch
 * dimension, is inside the row dimension. An AMX host ran them on gemm:jit. "dense": the same
 * products on copies in [B, H, T, D] order (batch dimensions outermost), as ds's bf16 attention
 * calls them since bc761d5 (brgemm, on AMX); "dense/C s": A and B dense, C a strided view of the
 * packed out or dqkv (whether the outputs could be written in place, without the copy back);
 * the copies' cost (Q, K and V out of qkv, with 2 threads) is printed beside. Each thread
 * takes B / threads samples, as ds does. */
enum { ATT_B = 8, ATT_H = 4, ATT_T = 128, ATT_D = 64, ATT_C = ATT_H * ATT_D };

typedef struct att_prod {
    const char *name;
    int64_t M, N, K;
    /* strided and dense element strides {b, h, row, col} of A, B, C */
    int64_t as[2][4], bs[2][4], cs[2][4];
    int out16; /* the bf16 variant writes bf16 (as ds's 16-bit storage does) */
} att_prod;

/* the logical value (a bf16 value) of element (b, h, r, c) of operand k */
static uint16_t att_val(int k, int64_t b, int64_t h, int64_t r, int64_t c)
{
    return (uint16_t)(0x3c00 + ((((b * 31 + h) * 131 + r) * 137 + c) * (7919 + 104729 * k)) % 512);
}

static double att_time(const att_prod *q, int bf16, int dense, int reps, char *impl, size_t impl_n, double *sum)
{
    const int nt = omp_get_max_threads() < ATT_B ? omp_get_max_threads() : ATT_B;
    const int64_t nb = ATT_B / nt; /* samples per thread (nt divides 8 for 1, 2, 4, 8 threads) */
    const size_t es = bf16 ? 2 : 4, ces = bf16 && q->out16 ? 2 : 4;
    /* dense 2: A and B dense, C strided (could ds write its outputs in place?) */
    const int64_t *ss[3] = {q->as[dense > 0], q->bs[dense > 0], q->cs[dense == 1]};
    const int64_t rows[3] = {q->M, q->K, q->M}, cols[3] = {q->K, q->N, q->N};
    char *buf[3];
    for (int k = 0; k < 3; k++) { /* room for the largest offset + 1 */
        int64_t top = 0;
        const int64_t dims[4] = {ATT_B, ATT_H, rows[k], cols[k]};
        for (int d = 0; d < 4; d++)
            top += (dims[d] - 1) * ss[k][d];
        buf[k] = calloc((size_t)(top + 1), k == 2 ? ces : es);
        if (!buf[k]) {
            fprintf(stderr, "bench_dnnl: out of memory\n");
            exit(1);
        }
    }
    for (int k = 0; k < 2; k++)
        for (int64_t b = 0; b < ATT_B; b++)
            for (int64_t h = 0; h < ATT_H; h++)
                for (int64_t r = 0; r < rows[k]; r++)
                    for (int64_t c = 0; c < cols[k]; c++) {
                        uint16_t v = att_val(k, b, h, r, c);
                        int64_t o = b * ss[k][0] + h * ss[k][1] + r * ss[k][2] + c * ss[k][3];
                        if (bf16)
                            memcpy(buf[k] + 2 * o, &v, 2);
                        else {
                            uint32_t u = (uint32_t)v << 16;
                            memcpy(buf[k] + 4 * o, &u, 4);
                        }
                    }
    const dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32, ct = ces == 2 ? dnnl_bf16 : dnnl_f32;
    part parts[MAX_T];
    int n = 0, ok = 1;
    for (int t = 0; t < nt && ok; t++) {
        dnnl_memory_desc_t md[3];
        dnnl_dims_t dm[3] = {{nb, ATT_H, q->M, q->K}, {nb, ATT_H, q->K, q->N}, {nb, ATT_H, q->M, q->N}};
        for (int k = 0; k < 3; k++) {
            dnnl_dims_t st = {ss[k][0], ss[k][1], ss[k][2], ss[k][3]};
            if (dnnl_memory_desc_init_by_strides(&md[k], 4, dm[k], k == 2 ? ct : dt, st))
                ok = 0;
        }
        dnnl_matmul_desc_t mmd;
        dnnl_primitive_desc_t pd = NULL;
        if (!ok || dnnl_matmul_desc_init(&mmd, &md[0], &md[1], NULL, &md[2]) ||
            dnnl_primitive_desc_create(&pd, &mmd, NULL, eng, NULL)) {
            snprintf(impl, impl_n, "none built");
            ok = 0;
            break;
        }
        const char *im = NULL;
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &im);
        snprintf(impl, impl_n, "%s", im ? im : "?");
        memset(&parts[t], 0, sizeof parts[t]);
        const int64_t off = t * nb;
        if (strncmp(impl, "ref", 3) == 0 || dnnl_primitive_create(&parts[t].p, pd) ||
            dnnl_memory_create(&parts[t].a, &md[0], eng, buf[0] + (size_t)(off * ss[0][0]) * es) ||
            dnnl_memory_create(&parts[t].b, &md[1], eng, buf[1] + (size_t)(off * ss[1][0]) * es) ||
            dnnl_memory_create(&parts[t].c, &md[2], eng, buf[2] + (size_t)(off * ss[2][0]) * ces) ||
            dnnl_stream_create(&parts[t].s, eng, dnnl_stream_default_flags)) {
            free_part(&parts[t]);
            ok = 0;
        } else {
            n++;
        }
        dnnl_primitive_desc_destroy(pd);
    }
    double gf = 0;
    if (ok) {
        double *ts = malloc((size_t)reps * sizeof *ts);
        for (int r = -3; r < reps; r++) {
            double t0 = now_s();
#pragma omp parallel num_threads(nt)
            run_part(&parts[omp_get_thread_num()]);
            if (r >= 0)
                ts[r] = now_s() - t0;
        }
        qsort(ts, (size_t)reps, sizeof *ts, cmp_d);
        *sum = 0;
        for (int64_t b = 0; b < ATT_B; b++)
            for (int64_t h = 0; h < ATT_H; h++)
                for (int64_t r = 0; r < q->M; r++)
                    for (int64_t c = 0; c < q->N; c++) {
                        int64_t o = b * ss[2][0] + h * ss[2][1] + r * ss[2][2] + c * ss[2][3];
                        uint32_t u = 0;
                        if (ces == 2)
                            u = (uint32_t)((uint16_t *)(void *)buf[2])[o] << 16;
                        else
                            memcpy(&u, buf[2] + 4 * o, 4);
                        float f;
                        memcpy(&f, &u, 4);
                        *sum += f;
                    }
        gf = 2.0 * ATT_B * ATT_H * (double)q->M * (double)q->N * (double)q->K / MEDIAN(ts, reps) / 1e9;
        free(ts);
    }
    for (int t = 0; t < n; t++)
        free_part(&parts[t]);
    for (int k = 0; k < 3; k++)
        free(buf[k]);
    return gf;
}

/* ms to copy Q, K and V (bf16) out of qkv [B, T, 3, H, D] into [B, H, T, D] each, 2 threads */
static double att_repack_ms(int reps)
{
    const int64_t n = (int64_t)ATT_B * ATT_T * 3 * ATT_C;
    uint16_t *src = malloc((size_t)n * 2), *dst = malloc((size_t)n * 2);
    if (!src || !dst) {
        fprintf(stderr, "bench_dnnl: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++)
        src[i] = (uint16_t)i;
    double *ts = malloc((size_t)reps * sizeof *ts);
    for (int r = -3; r < reps; r++) {
        double t0 = now_s();
#pragma omp parallel for collapse(3) num_threads(2)
        for (int64_t b = 0; b < ATT_B; b++)
            for (int64_t k = 0; k < 3; k++)
                for (int64_t h = 0; h < ATT_H; h++)
                    for (int64_t t = 0; t < ATT_T; t++)
                        memcpy(dst + (((k * ATT_B + b) * ATT_H + h) * ATT_T + t) * ATT_D,
                               src + ((b * ATT_T + t) * 3 + k) * ATT_C + h * ATT_D, ATT_D * 2);
        if (r >= 0)
            ts[r] = now_s() - t0;
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp_d);
    double ms = MEDIAN(ts, reps) * 1e3;
    free(ts), free(src), free(dst);
    return ms;
}

static int attention_products(int reps)
{
    enum { B = ATT_B, H = ATT_H, T = ATT_T, D = ATT_D, C = ATT_C, C3 = 3 * ATT_C };
    /* the packed views (cpu.c attention_fwd32/bwd32) and dense [B, H, T, D] / [B, H, T, T] ones
     * (attention_fwd16/bwd16) */
    static const att_prod prods[] = {
        {"S = Q K^T", T, T, D,
         {{T * C3, D, C3, 1}, {H * T * D, T * D, D, 1}},
         {{T * C3, D, 1, C3}, {H * T * D, T * D, 1, D}},
         {{H * T * T, T * T, T, 1}, {H * T * T, T * T, T, 1}}, 0},
        {"O = P V", T, D, T,
         {{H * T * T, T * T, T, 1}, {H * T * T, T * T, T, 1}},
         {{T * C3, D, C3, 1}, {H * T * D, T * D, D, 1}},
         {{T * C, D, C, 1}, {H * T * D, T * D, D, 1}}, 1},
        {"dK = dS^T Q", T, D, T,
         {{H * T * T, T * T, 1, T}, {H * T * T, T * T, 1, T}},
         {{T * C3, D, C3, 1}, {H * T * D, T * D, D, 1}},
         {{T * C3, D, C3, 1}, {H * T * D, T * D, D, 1}}, 1},
    };
    static const struct {
        const char *name;
        int bf16, dense;
    } vars[] = {{"f32 strided", 0, 0}, {"f32 dense", 0, 1}, {"bf16 strided", 1, 0}, {"bf16 dense", 1, 1},
                {"bf16 dense/C s", 1, 2}};
    enum { NV = sizeof vars / sizeof vars[0] };
    printf("\nattention's batched products (B %d, H %d, T %d, D %d; bf16 writes bf16 where ds does), GFLOP/s\n", B,
           H, T, D);
    printf("%-18s %6s %6s %6s", "product", "M", "N", "K");
    for (int j = 0; j < NV; j++)
        printf(" %14s", vars[j].name);
    printf("\n");
    int bad = 0;
    for (size_t i = 0; i < sizeof prods / sizeof prods[0]; i++) {
        const att_prod *q = &prods[i];
        char impls[NV][64];
        double ref = 0;
        int have_ref = 0;
        printf("%-18s %6lld %6lld %6lld", q->name, (long long)q->M, (long long)q->N, (long long)q->K);
        for (int j = 0; j < NV; j++) {
            double sum = 0;
            double gf = att_time(q, vars[j].bf16, vars[j].dense, reps, impls[j], sizeof impls[j], &sum);
            bad |= cell(gf, sum, &ref, &have_ref);
        }
        impl_line(impls, NV);
    }
    printf("copying Q, K, V (bf16) out of qkv into [B, H, T, D]: %.3f ms, 2 threads\n", att_repack_ms(reps));
    return bad;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (reps < 1 || reps > 100000) {
        fprintf(stderr, "bench_dnnl: reps %s: expected a number from 1 to 100000\n", argv[1]);
        return 2;
    }
    if (omp_get_max_threads() > MAX_T) {
        fprintf(stderr, "bench_dnnl: at most %d threads (OMP_NUM_THREADS)\n", MAX_T);
        return 2;
    }
    if (dnnl_engine_create(&eng, dnnl_cpu, 0)) {
        fprintf(stderr, "bench_dnnl: no oneDNN CPU engine\n");
        return 1;
    }
    /* gpt-tiny's linear products as ds calls them (M = B*T = 1024 rows; dW's operands
     * transposed beforehand, so every A is row-major; and dW with A a transposed view) and a
     * large square one */
    static const prod prods[] = {
        {"fwd qkv (x W^T)", 1024, 768, 256, 1, 0},  {"fwd fc", 1024, 1024, 256, 1, 0},
        {"fwd proj", 1024, 256, 1024, 1, 0},        {"fwd attn.proj", 1024, 256, 256, 1, 0},
        {"dX fc (dY W)", 1024, 256, 1024, 0, 0},     {"dX proj", 1024, 1024, 256, 0, 0},
        {"dW fc (dY^T X)", 1024, 256, 1024, 0, 0},   {"dW qkv", 768, 256, 1024, 0, 0},
        /* the same with dY^T a strided view of dY (no transpose before: ds transposes, because
         * gemm:jit reads such a view of fp32 at half speed for M = 1024; on AMX unknown) */
        {"dW fc, dY^T view", 1024, 256, 1024, 0, 1}, {"dW qkv, dY^T view", 768, 256, 1024, 0, 1},
        {"1024^3", 1024, 1024, 1024, 0, 0},
    };
    static const struct {
        const char *name;
        int bf16, out16, split, packed;
    } vars[] = {
        {"f32 split", 0, 0, 1, 0},     {"bf16 split", 1, 0, 1, 0}, {"bf16 split o16", 1, 1, 1, 0},
        {"bf16 omp", 1, 0, 0, 0},      {"bf16 split pk", 1, 0, 1, 1}, {"bf16 omp pk", 1, 0, 0, 1},
        {"f32 split pk", 0, 0, 1, 1},
    };
    const int nv = (int)(sizeof vars / sizeof vars[0]);
    const dnnl_version_t *v = dnnl_version();
    printf("bench_dnnl: oneDNN %d.%d.%d, %d threads, GFLOP/s (median of %d)\n", v->major, v->minor, v->patch,
           omp_get_max_threads(), reps);
    printf("%-18s %6s %6s %6s", "product", "M", "N", "K");
    for (int j = 0; j < nv; j++)
        printf(" %14s", vars[j].name);
    printf("\n");
    int bad = 0;
    for (size_t i = 0; i < sizeof prods / sizeof prods[0]; i++) {
        const prod *q = &prods[i];
        char impls[8][64];
        double ref = 0;
        int have_ref = 0;
        printf("%-18s %6lld %6lld %6lld", q->name, (long long)q->M, (long long)q->N, (long long)q->K);
        for (int j = 0; j < nv; j++) {
            double sum = 0;
            double gf = time_variant(q, vars[j].bf16, vars[j].out16, vars[j].split, vars[j].packed, reps, impls[j],
                                     sizeof impls[j], &sum);
            bad |= cell(gf, sum, &ref, &have_ref);
        }
        impl_line(impls, nv);
    }
    bad |= attention_products(reps);
    dnnl_engine_destroy(eng);
    if (bad)
        printf("bench_dnnl: a variant marked ! gave another product than the first (sums of C off by more than 1%%)\n");
    return bad;
}
