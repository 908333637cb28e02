/* The one place libds calls oneDNN (v2 C API, Debian 12's 2.6): strided fp32 matrix products
 * with primitives cached by shape. A port to the v3 API changes this file only. */
#ifndef DS_CPU_DNNL_H
#define DS_CPU_DNNL_H

#include <stdint.h>

#include "ds/status.h"

typedef struct ds_dnnl ds_dnnl;

ds_status ds_dnnl_create(ds_dnnl **out, ds_error *err);
void ds_dnnl_destroy(ds_dnnl *d);

/* C[M,N] (=|+=) A[M,K] B[K,N] (+ bias[N]) with element strides: A(m,k) = A[m*as0 + k*as1],
 * B(k,n) = B[k*bs0 + n*bs1], C row-major with leading dimension N. accumulate adds to C. */
ds_status ds_dnnl_matmul(ds_dnnl *d, int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t as0, int64_t as1, const float *B, int64_t bs0, int64_t bs1,
                         const float *bias, float *C, int accumulate, ds_error *err);
/* Batched: C[b0,b1] = A[b0,b1] B[b0,b1] for batch dims (nb0, nb1), every operand with explicit
 * element strides {batch0, batch1, row, col} (C too); accumulate adds to C. */
ds_status ds_dnnl_matmul_batched(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N,
                                 int64_t K, const float *A, const int64_t as[4], const float *B,
                                 const int64_t bs[4], float *C, const int64_t cs[4],
                                 int accumulate, ds_error *err);
/* The same product with A and B given as bf16 (C and bias fp32, fp32 accumulation): for CPUs
 * with bf16 matrix units (AMX-BF16, AVX512_BF16). Call only after ds_dnnl_bf16_probe said yes. */
ds_status ds_dnnl_matmul_bf16(ds_dnnl *d, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                              int64_t as0, int64_t as1, const uint16_t *B, int64_t bs0, int64_t bs1,
                              const float *bias, float *C, int accumulate, ds_error *err);
/* The same with C written as bf16 (oneDNN rounds the fp32 sums, bias added, to nearest even);
 * no accumulation. */
ds_status ds_dnnl_matmul_bf16_out16(ds_dnnl *d, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                                    int64_t as0, int64_t as1, const uint16_t *B, int64_t bs0, int64_t bs1,
                                    const float *bias, uint16_t *C, ds_error *err);
/* Tests only (DS_CPU_BF16_GEMM=emulate): from now on ds_dnnl_matmul_bf16 and
 * ds_dnnl_matmul_batched_bf16 widen their operands to fp32 (exactly) and run the fp32 product, so that the code paths that hand bf16 operands
 * to the products run on any CPU; the sums are fp32 either way (their order may differ from
 * the bf16 units'). */
void ds_dnnl_bf16_emulate(ds_dnnl *d, int on);
/* on (the default): products split between the OpenMP threads, each a single-threaded oneDNN
 * product on its share of the rows (or batch); off: one product that oneDNN threads itself */
void ds_dnnl_split(ds_dnnl *d, int on);
/* Batched products with A and B bf16 (C fp32), as ds_dnnl_matmul_batched. */
ds_status ds_dnnl_matmul_batched_bf16(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N, int64_t K,
                                      const uint16_t *A, const int64_t as[4], const uint16_t *B,
                                      const int64_t bs[4], float *C, const int64_t cs[4], int accumulate,
                                      ds_error *err);
/* ... and with C bf16, as ds_dnnl_matmul_bf16_out16 */
ds_status ds_dnnl_matmul_batched_bf16_out16(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N,
                                            int64_t K, const uint16_t *A, const int64_t as[4], const uint16_t *B,
                                            const int64_t bs[4], uint16_t *C, const int64_t cs[4], ds_error *err);
/* Whether oneDNN runs this strided batched bf16 product (C bf16 with dst16, else fp32) with code
 * that is not its reference implementation (1 when emulating). Call after ds_dnnl_bf16_probe
 * said yes. */
int ds_dnnl_bf16_batched_fast(ds_dnnl *d, int64_t nb0, int64_t nb1, int64_t M, int64_t N, int64_t K,
                              const int64_t as[4], const int64_t bs[4], const int64_t cs[4], int dst16);
/* Whether bf16 products run on this CPU's own bf16 units: cpuid has AMX-BF16 or AVX512_BF16 and
 * oneDNN makes a bf16 matmul that is not its reference code. *why says which, or why not
 * ("amx-bf16: brg:avx512_core_amx", "no AMX-BF16 or AVX512_BF16 on this CPU"). */
int ds_dnnl_bf16_probe(ds_dnnl *d, const char **why);

#endif
