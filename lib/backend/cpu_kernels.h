/* CPU compute kernels (internal). cpu_kernels.c is compiled with AVX2+FMA, for any x86-64 and
 * with AVX-512, giving three instances of this table (each also without threads); cpu.c picks
 * one at run time. Matrix products are
 * not here: they go to oneDNN (cpu_dnnl.c). */
#ifndef DS_CPU_KERNELS_H
#define DS_CPU_KERNELS_H

#include <stdint.h>

#include "ds/backend.h"

typedef struct ds_cpu_kernels {
    const char *variant;
    void (*embedding_fwd)(const int32_t *ids, const float *table, float *out, int64_t M, int64_t C);
    void (*embedding_bwd)(const int32_t *ids, const float *dout, float *dtable, int64_t M, int64_t C);
    void (*posadd_fwd)(const float *x, const float *pos, float *y, int64_t B, int64_t T, int64_t C);
    void (*posadd_bwd)(const float *dy, float *dpos, int64_t B, int64_t T, int64_t C);
    /* dst[cols, rows] = src[rows, cols]^T; with colsum not NULL also colsum[c] += sum_r src[r, c]
     * (a linear layer's bias gradient, in the same pass) */
    void (*transpose)(const float *src, float *dst, int64_t rows, int64_t cols, float *colsum);
    /* the same on 16-bit values of mode (DS_ROUND_BF16 or DS_ROUND_FP16): dst the values as they are, colsum the sums
     * of the widened values (the bits transpose gives on the widened tensor) */
    void (*transpose16)(const uint16_t *src, uint16_t *dst, int64_t rows, int64_t cols, float *colsum, int mode);
    void (*colsum_acc)(const float *dy, float *dbias, int64_t M, int64_t N);
    /* colsum only, on 16-bit values of mode: the same bits as transpose16's colsum */
    void (*colsum16_acc)(const uint16_t *src, float *colsum, int64_t rows, int64_t cols, int mode);
    void (*layernorm_fwd)(const float *x, const float *w, const float *b, float *y, float *mean,
                          float *rstd, int64_t M, int64_t C, float eps);
    void (*layernorm_bwd)(const float *dy, const float *x, const float *w, const float *mean,
                          const float *rstd, float *dx, float *dw, float *db, int64_t M,
                          int64_t C, int accumulate);
    /* the same on 16-bit dy, x, dx (values of a ds_round_mode), the same bits; -1: no memory */
    int (*layernorm_bwd16)(const uint16_t *dy, const uint16_t *x, const float *w, const float *mean,
                           const float *rstd, uint16_t *dx, float *dw, float *db, int64_t M, int64_t C,
                           int accumulate, int mode);
    void (*gelu_fwd)(const float *x, float *y, int64_t n, int approximate);
    void (*gelu_bwd)(const float *x, const float *dy, float *dx, int64_t n, int approximate,
                     int accumulate);
    void (*relu_fwd)(const float *x, float *y, int64_t n);
    void (*relu_bwd)(const float *y, const float *dy, float *dx, int64_t n, int accumulate);
    /* i0: the whole tensor's index of element 0 (the mask is a function of the index) */
    void (*dropout_fwd)(const float *x, float *y, int64_t n, float p, uint64_t seed, int64_t i0);
    void (*dropout_bwd)(const float *dy, float *dx, int64_t n, float p, uint64_t seed,
                        int accumulate, int64_t i0);
    void (*add)(const float *a, const float *c, float *y, int64_t n);
    void (*accumulate)(const float *x, float *y, int64_t n, int accumulate);
    /* Attention's softmax over rows of [BH, T, T] scores, in place: scaled, causal-masked
     * (row t keeps columns 0..t, the rest become 0). With p16 (not NULL), P rounded to bf16
     * there too, in the same pass (bf16 products). */
    void (*attn_softmax_fwd)(float *att, uint16_t *p16, int64_t BH, int64_t T, float scale, int causal);
    /* dS = P * (dP - sum_s P dP) * scale, in place over dp; causal: row t reads columns 0..t
     * and writes 0 to the rest (P is 0 there; dP need not be written there). With ds16 (and
     * p16, which must then be given) not NULL: dS and P rounded to bf16 there instead, dp left as it
     * is (bf16 products). */
    void (*attn_softmax_bwd)(const float *att, float *dp, uint16_t *ds16, uint16_t *p16, int64_t BH, int64_t T,
                             float scale, int causal);
    void (*xent_fwd)(const float *logits, const int32_t *targets, float *losses, float *dlogits,
                     float grad_scale, int64_t M, int64_t V);
    void (*mse_fwd)(const float *y, const float *target, float *losses, float *dy,
                    float grad_scale, int64_t M, int64_t N);
    double (*sum)(const float *x, int64_t n);
    double (*sumsq)(const float *x, int64_t n);
    int64_t (*nonfinite)(const float *x, int64_t n);
    void (*scale)(float *x, int64_t n, float s);
    void (*adamw_step)(float *p, const float *g, float *m, float *v, int64_t n,
                       const ds_adamw_args *a);
    void (*sgd_step)(float *p, const float *g, float *buf, int64_t n, const ds_sgd_args *a);
    void (*round16)(float *x, int64_t n, int mode);
    void (*adagrad_step)(float *p, const float *g, float *sum, int64_t n, const ds_adagrad_args *a);
    void (*lamb_step)(float *p, const float *g, float *m, float *v, const ds_lamb_args *a);
    /* 16-bit storage: fp32 -> 16-bit values of a ds_round_mode (rounded to nearest even) and
     * back (exact); parallel above PAR_MIN elements, serial below (inside a caller's tile) */
    void (*pack16)(const float *x, uint16_t *y, int64_t n, int mode);
    void (*unpack16)(const uint16_t *x, float *y, int64_t n, int mode);
    /* y = a + c over 16-bit values of mode (y may be a or c): widened, added in fp32, rounded
     * once, as add on unpacked copies and pack16, in one pass */
    void (*add16)(const uint16_t *a, const uint16_t *c, uint16_t *y, int64_t n, int mode);
    /* gelu_fwd, gelu_bwd on 16-bit values of mode in one pass (the same bits as on unpacked copies,
     * packed) */
    void (*gelu_fwd16)(const uint16_t *x, uint16_t *y, int64_t n, int approximate, int mode);
    void (*gelu_bwd16)(const uint16_t *x, const uint16_t *dy, uint16_t *dx, int64_t n, int approximate,
                       int accumulate, int mode);
    /* The same through tables over the 65536 16-bit values (a 16-bit input has no others):
     * gelu_tables16 fills lut[65536] with gelu_fwd16's result for each value and dlut[65536]
     * with the fp32 derivative gelu_bwd16 multiplies dy by; gelu_fwd16_lut and gelu_bwd16_lut
     * then look them up, giving gelu_fwd16's and gelu_bwd16's bits (of the tables' mode and
     * form) */
    void (*gelu_tables16)(uint16_t *lut, float *dlut, int approximate, int mode);
    void (*gelu_fwd16_lut)(const uint16_t *x, const uint16_t *lut, uint16_t *y, int64_t n);
    void (*gelu_bwd16_lut)(const uint16_t *x, const float *dlut, const uint16_t *dy, uint16_t *dx, int64_t n,
                           int accumulate, int mode);
    /* layernorm_fwd on 16-bit x, y (w, b fp32), row by row in cache, the same bits; -1 (nothing
     * written) for rows too wide for its stack buffers */
    int (*layernorm_fwd16)(const uint16_t *x, const float *w, const float *b, uint16_t *y, float *mean,
                           float *rstd, int64_t M, int64_t C, float eps, int mode);
    /* posadd_bwd on 16-bit dy, the same sums in the same order */
    void (*posadd_bwd16)(const uint16_t *dy, float *dpos, int64_t B, int64_t T, int64_t C, int mode);
} ds_cpu_kernels;

extern const ds_cpu_kernels ds_cpu_kernels_avx2;
extern const ds_cpu_kernels ds_cpu_kernels_generic;
/* the same kernels without threads, for calls inside a parallel loop of the caller */
extern const ds_cpu_kernels ds_cpu_kernels_avx2_serial;
extern const ds_cpu_kernels ds_cpu_kernels_generic_serial;
extern const ds_cpu_kernels ds_cpu_kernels_avx512;
extern const ds_cpu_kernels ds_cpu_kernels_avx512_serial;

#endif
