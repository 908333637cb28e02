/* oneDNN matmul primitives, created once per (shape, strides, bias, accumulate) and cached:
 * creating a primitive costs far more than running a small one. */
#include "cpu_dnnl.h"

#include <oneapi/dnnl/dnnl.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds/dtype.h"

typedef struct mm_key {
    int64_t nb0, nb1, M, N, K;
    int64_t as[4], bs[4], cs[4];
    int bias, accumulate;
    int bf16; /* A and B are bf16 */
    int dst16; /* C is bf16 too (rounded to nearest even by oneDNN) */
    int slot; /* the thread that runs it, when rows are split between threads */
    int spare; /* keeps the struct free of padding: keys are copied by assignment and compared by memcmp */
} mm_key;
_Static_assert(sizeof(mm_key) == 17 * sizeof(int64_t) + 6 * sizeof(int), "mm_key must have no padding");

typedef struct mm_entry {
    mm_key key;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c, bias;
    char impl[64]; /* the implementation oneDNN chose ("brg:avx512_core_amx", "ref:any", ...) */
} mm_entry;

#define MAX_SLOTS 64
#define EM_BUFS 3

struct ds_dnnl {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    dnnl_stream_t slot_stream[MAX_SLOTS]; /* one per thread for row-split products */
    mm_entry **cache; /* pointers, so that growing the array moves no entry in use */
    int n, cap;
    int bf16_probed, bf16_ok;
    char bf16_why[96];
    int emulate16;      /* bf16 products as fp32 products of the widened operands (tests) */
    int nosplit;        /* oneDNN threads every product itself (ds_dnnl_split) */
    float *em[EM_BUFS]; /* their fp32 copies, and the product before its rounding */
    size_t em_n[EM_BUFS];
};

static ds_status dnnl_fail(ds_error *err, const char *what, dnnl_status_t s)
{
    return ds_error_set(err, DS_ERR_BACKEND, "oneDNN: %s failed (status %d)", what, (int)s);
}

ds_status ds_dnnl_create(ds_dnnl **out, ds_error *err)
{
    ds_dnnl *d = calloc(1, sizeof *d);
    if (!d)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    dnnl_status_t s = dnnl_engine_create(&d->engine, dnnl_cpu, 0);
    if (s != dnnl_success) {
        free(d);
        return dnnl_fail(err, "engine creation", s);
    }
    s = dnnl_stream_create(&d->stream, d->engine, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        dnnl_engine_destroy(d->engine);
        free(d);
        return dnnl_fail(err, "stream creation", s);
    }
    *out = d;
    return DS_OK;
}

void ds_dnnl_destroy(ds_dnnl *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n; i++) {
        mm_entry *e = d->cache[i];
        dnnl_primitive_destroy(e->prim);
        dnnl_memory_destroy(e->a);
        dnnl_memory_destroy(e->b);
        dnnl_memory_destroy(e->c);
        if (e->bias)
            dnnl_memory_destroy(e->bias);
        free(e);
    }
    free(d->cache);
    for (int i = 0; i < EM_BUFS; i++)
        free(d->em[i]);
    for (int i = 0; i < MAX_SLOTS; i++)
        if (d->slot_stream[i])
            dnnl_stream_destroy(d->slot_stream[i]);
    dnnl_stream_destroy(d->stream);
    dnnl_engine_destroy(d->engine);
    free(d);
}


static ds_status create_entry(ds_dnnl *d, const mm_key *k, mm_entry *e, ds_error *err)
{
    /* 2-D when there is no batch, else 4-D {nb0, nb1, rows, cols} */
    int nd = (k->nb0 == 1 && k->nb1 == 1) ? 2 : 4, o = 4 - nd;
    dnnl_memory_desc_t a_md, b_md, c_md, bias_md;
    dnnl_dims_t a_dims = {k->nb0, k->nb1, k->M, k->K}, b_dims = {k->nb0, k->nb1, k->K, k->N},
                c_dims = {k->nb0, k->nb1, k->M, k->N};
    dnnl_dims_t a_str, b_str, c_str;
    for (int i = 0; i < 4; i++) {
        a_str[i] = k->as[i];
        b_str[i] = k->bs[i];
        c_str[i] = k->cs[i];
    }
    dnnl_dims_t bias_dims = {1, k->N}, bias_str = {k->N, 1};
    dnnl_status_t s;
    dnnl_data_type_t ab = k->bf16 ? dnnl_bf16 : dnnl_f32;
    if ((s = dnnl_memory_desc_init_by_strides(&a_md, nd, a_dims + o, ab, a_str + o)) ||
        (s = dnnl_memory_desc_init_by_strides(&b_md, nd, b_dims + o, ab, b_str + o)) ||
        (s = dnnl_memory_desc_init_by_strides(&c_md, nd, c_dims + o, k->dst16 ? dnnl_bf16 : dnnl_f32, c_str + o)) ||
        (s = dnnl_memory_desc_init_by_strides(&bias_md, 2, bias_dims, dnnl_f32, bias_str)))
        return dnnl_fail(err, "memory descriptor", s);
    dnnl_matmul_desc_t md;
    if ((s = dnnl_matmul_desc_init(&md, &a_md, &b_md, k->bias ? &bias_md : NULL, &c_md)))
        return dnnl_fail(err, "matmul descriptor", s);
    dnnl_primitive_attr_t attr;
    if ((s = dnnl_primitive_attr_create(&attr)))
        return dnnl_fail(err, "attribute creation", s);
    if (k->accumulate) {
        dnnl_post_ops_t po;
        if ((s = dnnl_post_ops_create(&po)) || (s = dnnl_post_ops_append_sum(po, 1.0f)) ||
            (s = dnnl_primitive_attr_set_post_ops(attr, po))) {
            dnnl_primitive_attr_destroy(attr);
            return dnnl_fail(err, "sum post-op", s);
        }
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    s = dnnl_primitive_desc_create(&pd, &md, attr, d->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (s)
        return dnnl_fail(err, "matmul primitive descriptor", s);
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(e->impl, sizeof e->impl, "%s", impl);
    s = dnnl_primitive_create(&e->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (s)
        return dnnl_fail(err, "matmul primitive", s);
    e->key = *k;
    e->bias = NULL;
    if ((s = dnnl_memory_create(&e->a, &a_md, d->engine, DNNL_MEMORY_NONE)) ||
        (s = dnnl_memory_create(&e->b, &b_md, d->engine, DNNL_MEMORY_NONE)) ||
        (s = dnnl_memory_create(&e->c, &c_md, d->engine, DNNL_MEMORY_NONE)) ||
        (k->bias && (s = dnnl_memory_create(&e->bias, &bias_md, d->engine, DNNL_MEMORY_NONE))))
        return dnnl_fail(err, "memory object", s);
    return DS_OK;
}

/* The cached entry for a key, created on first use. Thread-safe: row-split products look up
 * their entries from several threads at once. */
static mm_entry *entry_for(ds_dnnl *d, const mm_key *k, ds_status *st, ds_error *err)
{
    mm_entry *e = NULL;
    *st = DS_OK;
#pragma omp critical(ds_dnnl_cache)
    {
        for (int i = 0; i < d->n && !e; i++)
            if (memcmp(&d->cache[i]->key, k, sizeof *k) == 0)
                e = d->cache[i];
        if (!e) {
            if (d->n == d->cap) {
                int cap = d->cap ? 2 * d->cap : 16;
                mm_entry **c = realloc(d->cache, (size_t)cap * sizeof *c);
                if (c) {
                    d->cache = c;
                    d->cap = cap;
                }
            }
            mm_entry *ne = d->n < d->cap ? calloc(1, sizeof *ne) : NULL;
            if (!ne) {
                *st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            } else if ((*st = create_entry(d, k, ne, err)) != DS_OK) {
                free(ne);
            } else {
                d->cache[d->n++] = ne;
                e = ne;
            }
        }
    }
    return e;
}

static ds_status run(ds_dnnl *d, const mm_key *k, dnnl_stream_t stream, const void *A,
                     const void *B, const float *bias, void *C, ds_error *err)
{
    ds_status st;
    mm_entry *e = entry_for(d, k, &st, err);
    if (!e)
        return st;
    dnnl_status_t s;
    if ((s = dnnl_memory_set_data_handle(e->a, (void *)A)) ||
        (s = dnnl_memory_set_data_handle(e->b, (void *)B)) ||
        (s = dnnl_memory_set_data_handle(e->c, C)) ||
        (bias && (s = dnnl_memory_set_data_handle(e->bias, (void *)bias))))
        return dnnl_fail(err, "setting data handles", s);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->a}, {DNNL_ARG_WEIGHTS, e->b}, {DNNL_ARG_DST, e->c},
                               {DNNL_ARG_BIAS, e->bias}};
    if ((s = dnnl_primitive_execute(e->prim, stream, bias ? 4 : 3, args)))
        return dnnl_fail(err, "matmul execution", s);
    if ((s = dnnl_stream_wait(stream)))
        return dnnl_fail(err, "stream wait", s);
    return DS_OK;
}

/* Threads to split n units of work over (1: let oneDNN thread the product itself). */
static int threads_for(const ds_dnnl *d, int64_t n, int64_t min_per_thread)
{
    int nt = 1;
#ifdef _OPENMP
    if (!d->nosplit && !omp_in_parallel())
        nt = omp_get_max_threads();
#endif
    if (nt > MAX_SLOTS)
        nt = MAX_SLOTS;
    while (nt > 1 && n < min_per_thread * nt)
        nt--;
    return nt;
}

/* Run k split along its leading dimension (rows for 2-D, the first batch dimension otherwise)
 * between nt threads, each a single-threaded oneDNN product on its own stream. a_step, b_step
 * and c_step are the element strides of that dimension (b_step 0: B is shared). */
static ds_status run_split(ds_dnnl *d, const mm_key *k, int nt, const void *A, int64_t a_step,
                           const void *B, int64_t b_step, void *C, int64_t c_step,
                           const float *bias, ds_error *err)
{
    int two_d = k->nb0 == 1 && k->nb1 == 1;
    int64_t total = two_d ? k->M : k->nb0;
    ds_status st = DS_OK;
    for (int t = 0; t < nt && st == DS_OK; t++)
        if (!d->slot_stream[t]) {
            dnnl_status_t s = dnnl_stream_create(&d->slot_stream[t], d->engine, dnnl_stream_default_flags);
            if (s)
                st = dnnl_fail(err, "stream creation", s);
        }
    if (st != DS_OK)
        return st;
    ds_status sts[MAX_SLOTS];
    ds_error errs[MAX_SLOTS];
#pragma omp parallel num_threads(nt)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        int64_t i0 = total * t / nt, i1 = total * (t + 1) / nt;
        mm_key kt = *k;
        kt.slot = t;
        if (two_d) {
            kt.M = i1 - i0;
            kt.as[0] = kt.as[1] = kt.M * k->K, kt.cs[0] = kt.cs[1] = kt.M * k->N;
        } else {
            kt.nb0 = i1 - i0;
        }
        size_t es = k->bf16 ? 2 : 4, cs = k->dst16 ? 2 : 4; /* bytes per element of A and B, of C */
        sts[t] = run(d, &kt, d->slot_stream[t], (const char *)A + (size_t)(i0 * a_step) * es,
                     (const char *)B + (size_t)(i0 * b_step) * es, bias, (char *)C + (size_t)(i0 * c_step) * cs,
                     &errs[t]);
    }
    for (int t = 0; t < nt; t++)
        if (sts[t] != DS_OK) {
            if (err)
                *err = errs[t];
            return sts[t];
        }
    return DS_OK;
}

/* 2-D products are split by rows of C between the OpenMP threads, each running its own
 * single-threaded product: measured on 2 cores, oneDNN's own threading of these shapes (M about
 * 1024, K and N 256..1024) loses a fifth of the speed in the middle of a training step. */
static ds_status matmul2d(ds_dnnl *d, int bf16, int dst16, int64_t M, int64_t N, int64_t K, const void *A,
                          int64_t as0, int64_t as1, const void *B, int64_t bs0, int64_t bs1,
                          const float *bias, void *C, int accumulate, ds_error *err)
{
    mm_key k;
    memset(&k, 0, sizeof k); /* the key is compared with memcmp: no stray padding bytes */
    k.nb0 = k.nb1 = 1;
    k.M = M, k.N = N, k.K = K;
    k.as[2] = as0, k.as[3] = as1, k.bs[2] = bs0, k.bs[3] = bs1, k.cs[2] = N, k.cs[3] = 1;
    k.as[0] = k.as[1] = M * K, k.bs[0] = k.bs[1] = K * N, k.cs[0] = k.cs[1] = M * N;
    k.bias = bias != NULL;
    k.accumulate = accumulate != 0;
    k.bf16 = bf16;
    k.dst16 = dst16;
    int nt = threads_for(d, M, 64);
    if (nt < 2)
        return run(d, &k, d->stream, A, B, bias, C, err);
    return run_split(d, &k, nt, A, as0, B, 0, C, N, bias, err);
}

ds_status ds_dnnl_matmul(ds_dnnl *d, int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t as0, int64_t as1, const float *B, int64_t bs0, int64_t bs1,
                         const float *bias, float *C, int accumulate, ds_error *err)
{
    return matmul2d(d, 0, 0, M, N, K, A, as0, as1, B, bs0, bs1, bias, C, accumulate, err);
}

/* emulation: fp32 copy i of an operand, of n floats */
static float *em_buf(ds_dnnl *d, int i, int64_t count, ds_error *err)
{
    size_t n = (size_t)(count > 0 ? count : 1);
    if (d->em_n[i] < n) {
        free(d->em[i]);
        d->em[i] = malloc(n * sizeof(float));
        d->em_n[i] = d->em[i] ? n : 0;
        if (!d->em[i]) {
            ds_error_set(err, DS_ERR_NOMEM, "out of memory (emulated bf16 operands)");
            return NULL;
        }
    }
    return d->em[i];
}

/* emulation: element (r, c) of a strided bf16 matrix, widened into a dense row-major copy */
static float *widen(ds_dnnl *d, int i, const uint16_t *X, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                    ds_error *err)
{
    float *y = em_buf(d, i, rows * cols, err);
    if (!y)
        return NULL;
#pragma omp parallel for if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            uint32_t u = (uint32_t)X[r * s0 + c * s1] << 16;
            memcpy(&y[r * cols + c], &u, 4);
        }
    return y;
}

/* emulation: the fp32 product in em[2], rounded to bf16 into C [nb0, nb1, rows, cols] with
 * element strides cs (nearest even, as oneDNN's conversion) */
static void narrow(const float *y, uint16_t *C, int64_t nb0, int64_t nb1, int64_t rows, int64_t cols,
                   const int64_t cs[4])
{
#pragma omp parallel for collapse(3) if (nb0 * nb1 * rows * cols > 65536) /* rows too: 2-D is 1 x 1 */
    for (int64_t a = 0; a < nb0; a++)
        for (int64_t b = 0; b < nb1; b++)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++)
                    C[a * cs[0] + b * cs[1] + r * cs[2] + c * cs[3]] =
                        ds_f32_to_bf16(y[((a * nb1 + b) * rows + r) * cols + c]);
}

static ds_status matmul_bf16(ds_dnnl *d, int dst16, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                             int64_t as0, int64_t as1, const uint16_t *B, int64_t bs0, int64_t bs1,
                             const float *bias, void *C, int accumulate, ds_error *err)
{
    if (d->emulate16) {
        const float *a = widen(d, 0, A, M, K, as0, as1, err), *b = a ? widen(d, 1, B, K, N, bs0, bs1, err) : NULL;
        float *y = b && dst16 ? em_buf(d, 2, M * N, err) : C;
        if (!b || !y)
            return DS_ERR_NOMEM;
        ds_status st = matmul2d(d, 0, 0, M, N, K, a, K, 1, b, N, 1, bias, y, accumulate, err);
        if (st == DS_OK && dst16)
            narrow(y, C, 1, 1, M, N, (const int64_t[4]){M * N, M * N, N, 1});
        return st;
    }
    return matmul2d(d, 1, dst16, M, N, K, A, as0, as1, B, bs0, bs1, bias, C, accumulate, err);
}

ds_status ds_dnnl_matmul_bf16(ds_dnnl *d, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                              int64_t as0, int64_t as1, const uint16_t *B, int64_t bs0, int64_t bs1,
                              const float *bias, float *C, int accumulate, ds_error *err)
{
    return matmul_bf16(d, 0, M, N, K, A, as0, as1, B, bs0, bs1, bias, C, accumulate, err);
}

ds_status ds_dnnl_matmul_bf16_out16(ds_dnnl *d, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                                    int64_t as0, int64_t as1, const uint16_t *B, int64_t bs0, int64_t bs1,
                                    const float *bias, uint16_t *C, ds_error *err)
{
    return matmul_bf16(d, 1, M, N, K, A, as0, as1, B, bs0, bs1, bias, C, 0, err);
}

void ds_dnnl_bf16_emulate(ds_dnnl *d, int on) { d->emulate16 = on != 0; }

void ds_dnnl_split(ds_dnnl *d, int on) { d->nosplit = on == 0; }

/* Batched products are split by the first batch dimension between the threads, like the rows
 * of 2-D products above; A and B fp32, or bf16. */
static ds_status batched(ds_dnnl *d, int bf16, int dst16, int64_t nb0, int64_t nb1, int64_t M, int64_t N,
                         int64_t K, const void *A, const int64_t as[4], const void *B, const int64_t bs[4], void *C,
                         const int64_t cs[4], int accumulate, ds_error *err)
{
    mm_key k;
    memset(&k, 0, sizeof k);
    k.nb0 = nb0, k.nb1 = nb1, k.M = M, k.N = N, k.K = K;
    memcpy(k.as, as, sizeof k.as);
    memcpy(k.bs, bs, sizeof k.bs);
    memcpy(k.cs, cs, sizeof k.cs);
    k.accumulate = accumulate != 0;
    k.bf16 = bf16;
    k.dst16 = dst16;
    int nt = threads_for(d, nb0, 1);
    if (nt < 2)
        return run(d, &k, d->stream, A, B, NULL, C, err);
    return run_split(d, &k, nt, A, as[0], B, bs[0], C, cs[0], NULL, err);
}

/* emulation: a strided batched bf16 operand [nb0, nb1, rows, cols] widened into a dense copy */
static float *widen4(ds_dnnl *d, int i, const uint16_t *X, int64_t nb0, int64_t nb1, int64_t rows, int64_t cols,
                     const int64_t s[4], ds_error *err)
{
    float *y = em_buf(d, i, nb0 * nb1 * rows * cols, err);
    if (!y)
        return NULL;
#pragma omp parallel for collapse(2) if (nb0 * nb1 * rows * cols > 65536)
    for (int64_t a = 0; a < nb0; a++)
        for (int64_t b = 0; b < nb1; b++)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    uint32_t u = (uint32_t)X[a * s[0] + b * s[1] + r * s[2] + c * s[3]] << 16;
                    memcpy(&y[((a * nb1 + b) * rows + r) * cols + c], &u, 4);
                }
    return y;
}

static ds_status batched_bf16(ds_dnnl *d, int dst16, int64_t nb0, int64_t nb1, int64_t M, int64_t N, int64_t K,
                              const uint16_t *A, const int64_t as[4], const uint16_t *B, const int64_t bs[4],
                              void *C, const int64_t cs[4], int accumulate, ds_error *err)
{
    if (d->emulate16) {
        const float *a = widen4(d, 0, A, nb0, nb1, M, K, as, err);
        const float *b = a ? widen4(d, 1, B, nb0, nb1, K, N, bs, err) : NULL;
        float *y = b && dst16 ? em_buf(d, 2, nb0 * nb1 * M * N, err) : C;
        if (!b || !y)
            return DS_ERR_NOMEM;
        const int64_t ad[4] = {nb1 * M * K, M * K, K, 1}, bd[4] = {nb1 * K * N, K * N, N, 1};
        const int64_t yd[4] = {nb1 * M * N, M * N, N, 1};
        ds_status st = batched(d, 0, 0, nb0, nb1, M, N, K, a, ad, b, bd, y, dst16 ? yd : cs, accumulate, err);
        if (st == DS_OK && dst16)
            narrow(y, C, nb0, nb1, M, N, cs);
        return st;
    }
    return batched(d, 1, dst16, nb0, nb1, M, N, K, A, as, B, bs, C, cs, accumulate, err);
}

ds_status ds_dnnl_matmul_batched_bf16(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N, int64_t K,
                                      const uint16_t *A, const int64_t as[4], const uint16_t *B,
                                      const int64_t bs[4], float *C, const int64_t cs[4], int accumulate,
                                      ds_error *err)
{
    return batched_bf16(d, 0, nb0, nb1, M, N, K, A, as, B, bs, C, cs, accumulate, err);
}

ds_status ds_dnnl_matmul_batched_bf16_out16(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N,
                                            int64_t K, const uint16_t *A, const int64_t as[4], const uint16_t *B,
                                            const int64_t bs[4], uint16_t *C, const int64_t cs[4], ds_error *err)
{
    return batched_bf16(d, 1, nb0, nb1, M, N, K, A, as, B, bs, C, cs, 0, err);
}

int ds_dnnl_bf16_batched_fast(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N, int64_t K,
                              const int64_t as[4], const int64_t bs[4], const int64_t cs[4], int dst16)
{
    if (d->emulate16)
        return 1;
    /* the primitives batched() would run: one, or one per thread's share of the batch */
    mm_key k;
    memset(&k, 0, sizeof k);
    k.nb0 = nb0, k.nb1 = nb1, k.M = M, k.N = N, k.K = K, k.bf16 = 1, k.dst16 = dst16 != 0;
    memcpy(k.as, as, sizeof k.as);
    memcpy(k.bs, bs, sizeof k.bs);
    memcpy(k.cs, cs, sizeof k.cs);
    int nt = threads_for(d, nb0, 1);
    for (int t = 0; t < nt; t++) {
        mm_key kt = k;
        if (nt > 1) {
            kt.nb0 = nb0 * (t + 1) / nt - nb0 * t / nt;
            kt.slot = t;
        }
        ds_status st;
        ds_error e = {0};
        mm_entry *me = entry_for(d, &kt, &st, &e);
        if (!me || !*me->impl || strncmp(me->impl, "ref", 3) == 0)
            return 0;
    }
    return 1;
}

/* cpuid: AMX-BF16 is leaf 7 subleaf 0 EDX bit 22, AVX512_BF16 leaf 7 subleaf 1 EAX bit 5. */
static void bf16_units(int *amx, int *avx512)
{
    unsigned a, b, c, dx;
    *amx = *avx512 = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &dx)) {
        *amx = (dx >> 22) & 1;
        if (__get_cpuid_count(7, 1, &a, &b, &c, &dx))
            *avx512 = (a >> 5) & 1;
    }
}

int ds_dnnl_bf16_probe(ds_dnnl *d, const char **why)
{
    if (!d->bf16_probed) {
        d->bf16_probed = 1;
        int amx, avx512;
        bf16_units(&amx, &avx512);
        if (!amx && !avx512) {
            snprintf(d->bf16_why, sizeof d->bf16_why, "no AMX-BF16 or AVX512_BF16 on this CPU");
        } else {
            /* a small product, as the linear layers use it, with fp32 and with bf16 output:
             * oneDNN says which code runs it (the worse of the two counts) */
            mm_key k;
            memset(&k, 0, sizeof k);
            k.nb0 = k.nb1 = 1, k.M = 64, k.N = 64, k.K = 64, k.bf16 = 1;
            k.as[2] = 64, k.as[3] = 1, k.bs[2] = 1, k.bs[3] = 64, k.cs[2] = 64, k.cs[3] = 1;
            k.as[0] = k.as[1] = k.bs[0] = k.bs[1] = k.cs[0] = k.cs[1] = 64 * 64;
            char impl[64] = "";
            for (k.dst16 = 0; k.dst16 < 2; k.dst16++) {
                ds_status st;
                ds_error e = {0};
                mm_entry *me = entry_for(d, &k, &st, &e);
                if (!me || !*me->impl || strncmp(me->impl, "ref", 3) == 0) {
                    snprintf(impl, sizeof impl, "%s", me ? me->impl : "");
                    break;
                }
                if (!k.dst16)
                    snprintf(impl, sizeof impl, "%s", me->impl);
            }
            if (!*impl || strncmp(impl, "ref", 3) == 0)
                snprintf(d->bf16_why, sizeof d->bf16_why, "%s on this CPU, but oneDNN %d.%d has no fast bf16 matmul (%s)",
                         amx ? "AMX-BF16" : "AVX512_BF16", dnnl_version()->major, dnnl_version()->minor,
                         *impl ? impl : "none");
            else {
                d->bf16_ok = 1;
                snprintf(d->bf16_why, sizeof d->bf16_why, "%s: %s", amx ? "AMX-BF16" : "AVX512_BF16", impl);
            }
        }
    }
    if (why)
        *why = d->bf16_why;
    return d->bf16_ok;
}

ds_status ds_dnnl_matmul_batched(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N,
                                 int64_t K, const float *A, const int64_t as[4], const float *B,
                                 const int64_t bs[4], float *C, const int64_t cs[4],
                                 int accumulate, ds_error *err)
{
    return batched(d, 0, 0, nb0, nb1, M, N, K, A, as, B, bs, C, cs, accumulate, err);
}
