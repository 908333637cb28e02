/* The backend interface: a table of functions, one entry per op with forward and backward
 * explicit (ggml's shape). The engine calls ops only through this table and never touches
 * device memory directly, so a CUDA backend can implement the same table over device
 * pointers and streams. The CPU backend is the reference every other backend is tested
 * against. All matrices are row-major; all float tensors are fp32 unless an op says otherwise
 * or store16 (below) is on.
 * Backward ops that produce an input gradient take `accumulate`: 0 writes dx, 1 adds to it. */
#ifndef DS_BACKEND_H
#define DS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_backend ds_backend;
struct ds_comm; /* ds/dist.h */

/* 16-bit numerics: round fp32 values to the nearest value of a 16-bit format (ties to even;
 * fp16 overflows to inf, as the hardware does). */
typedef enum ds_round_mode { DS_ROUND_NONE = 0, DS_ROUND_BF16 = 1, DS_ROUND_FP16 = 2 } ds_round_mode;

/* Every fused optimizer takes grad_scale (gradients are multiplied by it first: unscaling and
 * clipping folded in) and, for 16-bit training, pw, round and pw16: when pw is not NULL the
 * updated fp32 master value is also written there rounded to the 16-bit format (the model's
 * working weights), in the same pass: as 16-bit values (uint16_t: bf16, or IEEE half for
 * fp16) when pw16 is 1 (the weights of store16 below), else as fp32 values. */
typedef struct ds_adamw_args {
    float lr, beta1, beta2, eps, weight_decay;
    int64_t step;        /* 1-based step count of this update */
    int adam_w_mode;     /* 1: decoupled decay (AdamW); 0: L2 added to the gradient (Adam) */
    int bias_correction;
    float grad_scale;    /* gradients are multiplied by this first (unscale * clip), one pass */
    void *pw;            /* NULL, or the 16-bit working weights to write */
    int round;           /* ds_round_mode of pw */
    int pw16;            /* pw holds 2-byte values (else fp32) */
} ds_adamw_args;

typedef struct ds_sgd_args {
    float lr, momentum, dampening, weight_decay;
    int nesterov;
    int first_step;      /* torch: the momentum buffer is the gradient itself on the first step */
    float grad_scale;
    void *pw;
    int round;
    int pw16;
} ds_sgd_args;

/* torch.optim.Adagrad: clr = lr / (1 + (step-1) lr_decay); sum += g^2; p -= clr g/(sqrt(sum)+eps) */
typedef struct ds_adagrad_args {
    float lr, lr_decay, weight_decay, eps;
    int64_t step;        /* 1-based */
    float grad_scale;
    void *pw;
    int round;
    int pw16;
} ds_adagrad_args;

/* DeepSpeed FusedLamb (engine.md 4.2), per tensor of the flat buffer: m, v (not bias-corrected),
 * u = m/(sqrt(v)+eps) + wd p, trust ratio clamp(|p|/|u|, min_coeff, max_coeff) (1 when a norm
 * is 0), p -= lr sqrt(1-b2^t)/(1-b1^t) ratio u (without bias_correction: lr ratio u). */
typedef struct ds_lamb_args {
    float lr, beta1, beta2, eps, weight_decay, min_coeff, max_coeff;
    int64_t step;
    int bias_correction, eps_inside_sqrt;
    float grad_scale;
    void *pw;
    int round;
    int pw16;
    /* tensors: n_tensors ranges [offsets[i], offsets[i+1]) of the flat buffers */
    const int64_t *offsets;
    int n_tensors;
    float *coeffs;       /* out: n_tensors trust ratios of this step (may be NULL); in with phase 2 */
    /* 0: both passes; 1: pass 1 only, writing sums[2t] = |p|^2 and sums[2t+1] = |u|^2 of each
     * range (a ZeRO partition holds pieces of tensors: the engine adds them over ranks);
     * 2: pass 2 only, with the trust ratios in coeffs. */
    int phase;
    double *sums;
} ds_lamb_args;

typedef struct ds_backend_ops {
    const char *name; /* "cpu", "cuda" */
    void (*destroy)(ds_backend *b);

    /* memory */
    void *(*alloc)(ds_backend *b, size_t bytes); /* zeroed; NULL on failure (error set) */
    void (*free)(ds_backend *b, void *p);
    ds_status (*upload)(ds_backend *b, void *dst, const void *host, size_t bytes);
    ds_status (*download)(ds_backend *b, void *host, const void *src, size_t bytes);
    ds_status (*zero)(ds_backend *b, void *p, size_t bytes);
    ds_status (*copy)(ds_backend *b, void *dst, const void *src, size_t bytes);
    ds_status (*synchronize)(ds_backend *b);

    /* Y[M,N] = X[M,K] W[N,K]^T (+ bias[N]); W is PyTorch's Linear layout [out, in]. */
    ds_status (*linear_fwd)(ds_backend *b, const float *x, const float *w, const float *bias,
                            float *y, int64_t M, int64_t K, int64_t N);
    /* dX (=|+=) dY W; dW += dY^T X; dbias += column sums of dY. dx, dw, dbias may be NULL. */
    ds_status (*linear_bwd)(ds_backend *b, const float *dy, const float *x, const float *w,
                            float *dx, float *dw, float *dbias, int64_t M, int64_t K, int64_t N,
                            int accumulate);

    /* out[m,:] = table[ids[m],:]; dtable[ids[m],:] += dout[m,:]. ids are int32 host-or-device
     * memory of the backend. */
    ds_status (*embedding_fwd)(ds_backend *b, const int32_t *ids, const float *table, float *out,
                               int64_t M, int64_t C);
    ds_status (*embedding_bwd)(ds_backend *b, const int32_t *ids, const float *dout, float *dtable,
                               int64_t M, int64_t C);
    /* y[b,t,:] = x[b,t,:] + pos[t,:]; dpos[t,:] += sum_b dy[b,t,:]. */
    ds_status (*posadd_fwd)(ds_backend *b, const float *x, const float *pos, float *y, int64_t B,
                            int64_t T, int64_t C);
    ds_status (*posadd_bwd)(ds_backend *b, const float *dy, float *dpos, int64_t B, int64_t T,
                            int64_t C);

    /* LayerNorm over the last dim C with eps; mean and rstd [M] are saved for backward. */
    ds_status (*layernorm_fwd)(ds_backend *b, const float *x, const float *w, const float *bias,
                               float *y, float *mean, float *rstd, int64_t M, int64_t C, float eps);
    /* dx may be NULL (only dw and dbias). */
    ds_status (*layernorm_bwd)(ds_backend *b, const float *dy, const float *x, const float *w,
                               const float *mean, const float *rstd, float *dx, float *dw,
                               float *dbias, int64_t M, int64_t C, int accumulate);

    /* approximate: 0 exact (erf), 1 tanh. */
    ds_status (*gelu_fwd)(ds_backend *b, const float *x, float *y, int64_t n, int approximate);
    ds_status (*gelu_bwd)(ds_backend *b, const float *x, const float *dy, float *dx, int64_t n,
                          int approximate, int accumulate);
    ds_status (*relu_fwd)(ds_backend *b, const float *x, float *y, int64_t n);
    ds_status (*relu_bwd)(ds_backend *b, const float *y, const float *dy, float *dx, int64_t n,
                          int accumulate);
    /* Inverted dropout: keep with probability 1-p, scale kept values by 1/(1-p). The mask is a
     * pure function of (seed, element index), so it is the same on every backend. */
    ds_status (*dropout_fwd)(ds_backend *b, const float *x, float *y, int64_t n, float p,
                             uint64_t seed);
    ds_status (*dropout_bwd)(ds_backend *b, const float *dy, float *dx, int64_t n, float p,
                             uint64_t seed, int accumulate);

    /* y = a + c (residual). */
    ds_status (*add)(ds_backend *b, const float *a, const float *c, float *y, int64_t n);
    /* y (=|+=) x */
    ds_status (*accumulate)(ds_backend *b, const float *x, float *y, int64_t n, int accumulate);

    /* Multi-head attention on a packed qkv [B,T,3C] (q | k | v; head h = columns h*D..h*D+D of
     * each, D = C/H). out [B,T,C]; att [B,H,T,T] keeps the softmax probabilities for backward
     * (or, with attention_state below, what that says). */
    ds_status (*attention_fwd)(ds_backend *b, const float *qkv, float *out, float *att, int64_t B,
                               int64_t T, int64_t C, int64_t H, int causal);
    /* dqkv is written (not accumulated). */
    ds_status (*attention_bwd)(ds_backend *b, const float *dout, const float *qkv,
                               const float *att, float *dqkv, int64_t B, int64_t T, int64_t C,
                               int64_t H, int causal);

    /* Softmax cross-entropy per row: losses[m] = logsumexp(logits[m]) - logits[m, target[m]].
     * If dlogits is not NULL it also writes (softmax - onehot) * grad_scale (fused, one pass). */
    ds_status (*xent_fwd)(ds_backend *b, const float *logits, const int32_t *targets,
                          float *losses, float *dlogits, float grad_scale, int64_t M, int64_t V);
    /* Squared error per element summed per row: losses[m] = sum_j (y-t)^2; dy = 2(y-t)*scale. */
    ds_status (*mse_fwd)(ds_backend *b, const float *y, const float *target, float *losses,
                         float *dy, float grad_scale, int64_t M, int64_t N);

    /* Reductions to the host. sumsq in double; nonfinite counts inf/NaN. */
    ds_status (*sum)(ds_backend *b, const float *x, int64_t n, double *out);
    ds_status (*sumsq)(ds_backend *b, const float *x, int64_t n, double *out);
    ds_status (*nonfinite)(ds_backend *b, const float *x, int64_t n, int64_t *out);
    ds_status (*scale)(ds_backend *b, float *x, int64_t n, float s);

    /* Fused optimizers over flat buffers, one pass. */
    ds_status (*adamw_step)(ds_backend *b, float *p, const float *g, float *m, float *v,
                            int64_t n, const ds_adamw_args *a);
    ds_status (*sgd_step)(ds_backend *b, float *p, const float *g, float *buf, int64_t n,
                          const ds_sgd_args *a);

    /* Optional (NULL: the name): what runs the ops, for logs, e.g. "cuda (NVIDIA H100 80GB
     * HBM3, sm_90, ...)". */
    const char *(*describe)(const ds_backend *b);

    /* Optional (NULL: the backend does no 16-bit training yet). */
    /* x = round(x) to the 16-bit format of mode, in place. */
    ds_status (*round16)(ds_backend *b, float *x, int64_t n, int mode);
    ds_status (*adagrad_step)(ds_backend *b, float *p, const float *g, float *sum, int64_t n,
                              const ds_adagrad_args *a);
    /* Two passes per tensor (the trust ratio needs the norm of the whole update). */
    ds_status (*lamb_step)(ds_backend *b, float *p, const float *g, float *m, float *v,
                           const ds_lamb_args *a);
    /* Optional: the engine trains in 16-bit numerics (a ds_round_mode; 0: fp32), so every input
     * of a linear layer's products is a value of that format and the backend may multiply in
     * it (fp32 accumulation) without changing a value: the CUDA backend then uses bf16/fp16
     * tensor-core GEMMs. */
    ds_status (*set_precision)(ds_backend *b, int round_mode);

    /* Optional: a communicator whose collectives take this backend's memory (the CUDA backend:
     * NCCL), for data parallelism over `size` ranks, one per device. comm_id writes a new
     * job-unique id (at most cap bytes, its length in *len) on one rank; every rank passes the
     * same bytes to comm_create (the engine carries them through the rendezvous store).
     * comm_id with id NULL only checks that this process can make communicators (loads NCCL).
     * Collectives wait at most timeout_s for a peer (<= 0: 1800 s). Errors go to err. */
    ds_status (*comm_id)(ds_backend *b, void *id, size_t cap, size_t *len, ds_error *err);
    ds_status (*comm_create)(ds_backend *b, const void *id, size_t len, int rank, int size,
                             double timeout_s, struct ds_comm **out, ds_error *err);
    /* Optional: a thread other than the creating one calls this before its first op (the CUDA
     * backend makes the backend's device current in that thread; the CPU backend runs that
     * thread's ops on one OpenMP thread). */
    ds_status (*thread_init)(ds_backend *b);
    /* Optional (NULL: B*H*T*T, the probabilities): how many floats attention_fwd keeps in att
     * for attention_bwd. A backend with a fused kernel keeps less (the CUDA backend: each row's
     * log-sum-exp and a copy of the output, B*H*T + B*T*C) and att is then its own state, not
     * the probabilities. */
    int64_t (*attention_state)(ds_backend *b, int64_t B, int64_t T, int64_t C, int64_t H, int causal);
    /* Optional (NULL: 0): from now on, the activation ops -- embedding_fwd, posadd_fwd,
     * layernorm_fwd/bwd (y, dx), linear_fwd (y), linear_bwd (dx), attention_fwd/bwd (out, dqkv),
     * gelu, relu and dropout forward and backward, add, and the gradients of xent_fwd and
     * mse_fwd -- write their outputs rounded to the 16-bit format of mode (0: stop), so that
     * the caller need not round them in a pass of its own. Returns 1 if the backend does so,
     * 0 if it does not (the caller rounds). Other ops (accumulate, copy, the optimizers, the
     * weight gradients, the losses) never round because of it. */
    int (*fuse_round)(ds_backend *b, int mode);
    /* Optional (NULL: 0): 16-bit storage of activations and weights. From now on (mode a ds_round_mode; 0:
     * stop) the activation tensors of the activation ops are arrays of 16-bit values of that
     * format (uint16_t: bf16, or IEEE half for fp16), passed through the same float pointers
     * (which then address 2-byte elements), not fp32 arrays. The activation tensors: every
     * operand of gelu, relu, dropout and add (forward and backward); x and y of linear_fwd,
     * posadd_fwd and layernorm_fwd; dy, x and dx of linear_bwd and layernorm_bwd; out of
     * embedding_fwd; dout of embedding_bwd; dy of posadd_bwd; qkv and out of attention_fwd;
     * dout, qkv and dqkv of attention_bwd; logits and dlogits of xent_fwd; y and dy of mse_fwd.
     * The weights of these ops are 16-bit values of the same format too: w and bias of
     * linear_fwd, w of linear_bwd, w and bias of layernorm_fwd, w of layernorm_bwd, the
     * table of embedding_fwd and pos of posadd_fwd (the optimizers write them with pw16).
     * Everything else stays fp32: the weight and bias gradients, layernorm's mean and rstd,
     * attention's state, the losses, mse's targets, and every other op (accumulate, copy,
     * round16, the reductions, the optimizers), which never read 16-bit because of it.
     * Each op computes in fp32 from the 16-bit inputs and rounds each output once, so its
     * results are those of fp32 storage with the outputs rounded (fuse_round): bit for bit
     * where products sum in the same order (cuBLAS may choose another order when it writes a
     * 16-bit output), NaN payloads aside.
     * Returns 1 if the backend does so, 0 if not (storage stays fp32). */
    int (*store16)(ds_backend *b, int mode);
    /* Optional with store16 (required by it): y[n] (2-byte values) = x[n] (fp32) rounded to
     * the 16-bit format of mode (ties to even). */
    ds_status (*pack16)(ds_backend *b, const float *x, void *y, int64_t n, int mode);

    /* Optional (NULL: never): a linear layer and the tanh GELU after it as one op, with store16
     * on: pre[M,N] = X W^T + bias and y = gelu_tanh(pre), both 16-bit; y is the GELU of pre's fp32
     * sum, before pre's rounding (each output rounded once). *done 0: not here (these operands,
     * this precision, or a setting; nothing written, no error): the caller runs linear_fwd and
     * gelu_fwd. The CUDA backend: cuBLASLt's GELU_AUX epilogue. */
    ds_status (*linear_gelu_fwd)(ds_backend *b, const float *x, const float *w, const float *bias,
                                 float *pre, float *y, int64_t M, int64_t K, int64_t N, int *done);
    /* Optional (NULL: never), with store16 on: linear_bwd of the layer after a tanh GELU with the
     * GELU's backward in its dX product: dx = (dY W) * gelu_tanh'(pre), written (not added to),
     * the fp32 product times the derivative rounded once; dw += dY^T X, dbias += column sums of
     * dY (dw, dbias may be NULL). *done 0: not here (nothing written): the caller runs linear_bwd
     * and gelu_bwd. The CUDA backend: cuBLASLt's DGELU epilogue. */
    ds_status (*linear_bwd_gelu)(ds_backend *b, const float *dy, const float *x, const float *w,
                                 const float *pre, float *dx, float *dw, float *dbias, int64_t M,
                                 int64_t K, int64_t N, int *done);
    /* Optional (NULL: progressive layer drop is refused): y[n] = s * x[n], an activation op
     * (16-bit operands under store16, the output rounded under fuse_round); y may be x. */
    ds_status (*scale_act)(ds_backend *b, const float *x, float *y, int64_t n, float s);
} ds_backend_ops;

struct ds_backend {
    const ds_backend_ops *ops;
    ds_error err;   /* the last error of an op that failed (with the engine's overlap_comm
                       thread calling ops too, two failures at once may mix their messages) */
    void *impl;     /* backend-private state */
};

/* Create a backend by name: "cpu" chooses its kernels by cpuid (AVX2+FMA, else portable), or
 * DS_CPU_KERNELS's; "cpu:avx2", "cpu:avx512" and "cpu:generic" force one variant. "cuda" (or "cuda:N", device N) loads the CUDA
 * backend, libds-cuda.so, at run time (see ds-cuda(7)); DS_ERR_UNSUPPORTED when it is not built
 * or there is no CUDA device. "auto": cuda when a CUDA device is usable, else cpu. */
ds_status ds_backend_create(ds_backend **out, const char *name, ds_error *err);
void ds_backend_destroy(ds_backend *b);
/* For logs: which CPU kernel variant is in use ("avx2", "avx512", "generic"; in bf16 training
 * followed by what the products run on), or the backend's own description ("cuda (NVIDIA H100
 * 80GB HBM3, sm_90, ...)"). */
const char *ds_backend_describe(const ds_backend *b);

#ifdef __cplusplus
}
#endif
#endif
