/* The CUDA backend's op entry points, one group per .cu file of kernels/; cuda_backend.cu puts
 * them in the ds_backend_ops table. Semantics are the CPU backend's (ds/backend.h); all pointers
 * are device memory of this backend. Internal to libds-cuda.so. */
#ifndef DS_CUDA_OPS_H
#define DS_CUDA_OPS_H

#include "ds/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* matmul.cu: cuBLAS */
ds_status ds_cuda_linear_fwd(ds_backend *b, const float *x, const float *w, const float *bias,
                             float *y, int64_t M, int64_t K, int64_t N);
ds_status ds_cuda_linear_bwd(ds_backend *b, const float *dy, const float *x, const float *w,
                             float *dx, float *dw, float *dbias, int64_t M, int64_t K, int64_t N,
                             int accumulate);
ds_status ds_cuda_linear_gelu_fwd(ds_backend *b, const float *x, const float *w, const float *bias, float *pre,
                                  float *y, int64_t M, int64_t K, int64_t N, int *done);
ds_status ds_cuda_linear_bwd_gelu(ds_backend *b, const float *dy, const float *x, const float *w, const float *pre,
                                  float *dx, float *dw, float *dbias, int64_t M, int64_t K, int64_t N, int *done);

/* embedding.cu */
ds_status ds_cuda_embedding_fwd(ds_backend *b, const int32_t *ids, const float *table, float *out,
                                int64_t M, int64_t C);
ds_status ds_cuda_embedding_bwd(ds_backend *b, const int32_t *ids, const float *dout,
                                float *dtable, int64_t M, int64_t C);
ds_status ds_cuda_posadd_fwd(ds_backend *b, const float *x, const float *pos, float *y, int64_t B,
                             int64_t T, int64_t C);
ds_status ds_cuda_posadd_bwd(ds_backend *b, const float *dy, float *dpos, int64_t B, int64_t T,
                             int64_t C);

/* layernorm.cu (and the column sums that linear_bwd's bias gradient shares) */
ds_status ds_cuda_layernorm_fwd(ds_backend *b, const float *x, const float *w, const float *bias,
                                float *y, float *mean, float *rstd, int64_t M, int64_t C,
                                float eps);
ds_status ds_cuda_layernorm_bwd(ds_backend *b, const float *dy, const float *x, const float *w,
                                const float *mean, const float *rstd, float *dx, float *dw,
                                float *dbias, int64_t M, int64_t C, int accumulate);
/* dbias[n] += sum over m of dy[m, n], deterministic (fixed partition, fixed order) */
ds_status ds_cuda_colsum_acc(ds_backend *b, const float *dy, float *dbias, int64_t M, int64_t N);

/* elementwise.cu */
ds_status ds_cuda_gelu_fwd(ds_backend *b, const float *x, float *y, int64_t n, int approximate);
ds_status ds_cuda_gelu_bwd(ds_backend *b, const float *x, const float *dy, float *dx, int64_t n,
                           int approximate, int accumulate);
ds_status ds_cuda_relu_fwd(ds_backend *b, const float *x, float *y, int64_t n);
ds_status ds_cuda_relu_bwd(ds_backend *b, const float *y, const float *dy, float *dx, int64_t n,
                           int accumulate);
ds_status ds_cuda_dropout_fwd(ds_backend *b, const float *x, float *y, int64_t n, float p,
                              uint64_t seed);
ds_status ds_cuda_dropout_bwd(ds_backend *b, const float *dy, float *dx, int64_t n, float p,
                              uint64_t seed, int accumulate);
ds_status ds_cuda_add(ds_backend *b, const float *a, const float *c, float *y, int64_t n);
ds_status ds_cuda_scale_act(ds_backend *b, const float *x, float *y, int64_t n, float s);
ds_status ds_cuda_accumulate(ds_backend *b, const float *x, float *y, int64_t n, int accumulate);
ds_status ds_cuda_scale(ds_backend *b, float *x, int64_t n, float s);

/* flash_attention.cu: the fused TF32 path, and when it applies (head size 16..64, see the file) */
int ds_cuda_flash_applies(const ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H);
/* flash16.cu: the fused bf16/fp16 path (16-bit training), and when it applies */
int ds_cuda_flash16_applies(const ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H);
/* qkv, out, dout, dqkv: 16-bit values while store16 is on (S16(b)), else fp32 */
ds_status ds_cuda_flash16_fwd(ds_backend *b, const void *qkv, void *out, float *state, int64_t B, int64_t T,
                              int64_t C, int64_t H, int causal);
ds_status ds_cuda_flash16_bwd(ds_backend *b, const void *dout, const void *qkv, const float *state, void *dqkv,
                              int64_t B, int64_t T, int64_t C, int64_t H, int causal);
/* D_t = dO_t . O_t per (sample, head, row) into di [B,H,T] (dO as store16 says, the copy fp32) */
ds_status ds_cuda_attn_di(ds_backend *b, const void *dout, const float *ocopy, float *di, int64_t B, int64_t T,
                          int64_t C, int64_t H);
/* cuda_backend.cu: rewrites describe after a change of precision */
void ds_cuda_describe_update(ds_backend *b);
int64_t ds_cuda_attention_state(ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H, int causal);
ds_status ds_cuda_flash_fwd(ds_backend *b, const float *qkv, float *out, float *state, int64_t B, int64_t T,
                            int64_t C, int64_t H, int causal);
ds_status ds_cuda_flash_bwd(ds_backend *b, const float *dout, const float *qkv, const float *state, float *dqkv,
                            int64_t B, int64_t T, int64_t C, int64_t H, int causal);
/* attention.cu */
ds_status ds_cuda_attention_fwd(ds_backend *b, const float *qkv, float *out, float *att, int64_t B,
                                int64_t T, int64_t C, int64_t H, int causal);
ds_status ds_cuda_attention_bwd(ds_backend *b, const float *dout, const float *qkv,
                                const float *att, float *dqkv, int64_t B, int64_t T, int64_t C,
                                int64_t H, int causal);

/* loss.cu */
ds_status ds_cuda_xent_fwd(ds_backend *b, const float *logits, const int32_t *targets,
                           float *losses, float *dlogits, float grad_scale, int64_t M, int64_t V);
ds_status ds_cuda_mse_fwd(ds_backend *b, const float *y, const float *target, float *losses,
                          float *dy, float grad_scale, int64_t M, int64_t N);

/* reduce.cu: results to the host (these synchronize) */
ds_status ds_cuda_sum(ds_backend *b, const float *x, int64_t n, double *out);
ds_status ds_cuda_sumsq(ds_backend *b, const float *x, int64_t n, double *out);
ds_status ds_cuda_nonfinite(ds_backend *b, const float *x, int64_t n, int64_t *out);

/* optim.cu */
ds_status ds_cuda_adamw_step(ds_backend *b, float *p, const float *g, float *m, float *v,
                             int64_t n, const ds_adamw_args *a);
ds_status ds_cuda_sgd_step(ds_backend *b, float *p, const float *g, float *buf, int64_t n,
                           const ds_sgd_args *a);
ds_status ds_cuda_adagrad_step(ds_backend *b, float *p, const float *g, float *sum, int64_t n,
                               const ds_adagrad_args *a);
ds_status ds_cuda_lamb_step(ds_backend *b, float *p, const float *g, float *m, float *v,
                            const ds_lamb_args *a);
ds_status ds_cuda_round16(ds_backend *b, float *x, int64_t n, int mode);
/* matmul.cu */
ds_status ds_cuda_set_precision(ds_backend *b, int round_mode);
int ds_cuda_fuse_round(ds_backend *b, int mode);
int ds_cuda_store16(ds_backend *b, int mode);
/* elementwise.cu: fp32 <-> the 16-bit activations of store16's mode (S16(b) != 0) */
ds_status ds_cuda_unpack16(ds_backend *b, const void *src, float *dst, int64_t n);
ds_status ds_cuda_pack16(ds_backend *b, const float *src, void *dst, int64_t n);
/* the backend op pack16 (the 16-bit working weights), in mode's format */
ds_status ds_cuda_pack16_op(ds_backend *b, const float *x, void *y, int64_t n, int mode);
/* comm_nccl.cu */
ds_status ds_cuda_comm_id(ds_backend *b, void *id, size_t cap, size_t *len, ds_error *err);
ds_status ds_cuda_comm_create(ds_backend *b, const void *id, size_t len, int rank, int size,
                              double timeout_s, struct ds_comm **out, ds_error *err);
void ds_cuda_nccl_unload(ds_backend *b);

#ifdef __cplusplus
}
#endif
#endif
