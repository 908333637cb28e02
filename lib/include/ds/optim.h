/* Optimizers over flat buffers: one fused backend pass per step (Adam/AdamW with DeepSpeed's
 * semantics, SGD and Adagrad with torch's), LAMB in two passes per tensor (its trust ratio
 * needs the norm of the whole update), and optimizers a program registers itself. State lives
 * in flat buffers with the parameters' offsets, so checkpoints and ZeRO partitions are offset
 * arithmetic. Also the dynamic loss scaler of fp16 training. */
#ifndef DS_OPTIM_H
#define DS_OPTIM_H

#include <stdint.h>

#include "ds/backend.h"
#include "ds/config.h"
#include "ds/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- user-supplied optimizers ------------------------------------------------------------ */

#define DS_USER_OPTIM_MAX_STATE 8

/* What a user optimizer's step receives. Buffers are backend memory (host memory on the CPU
 * backend). The update must read grads[i] * grad_scale (unscaling and clipping are folded into
 * grad_scale) and write params, the fp32 master weights; the engine rounds the 16-bit working
 * weights from them afterwards. */
typedef struct ds_user_optimizer_step {
    float *params;
    const float *grads;
    float *const *state;           /* n_state flat buffers of n floats, zero at the start */
    int64_t n;                     /* elements of every flat buffer */
    float grad_scale;
    double lr;
    int64_t step;                  /* 1-based count of applied updates */
    const ds_tensor_table *tensors; /* names, shapes and offsets in the flat buffers */
    const char *params_json;       /* the config's optimizer.params as JSON text ("{}") */
    int64_t begin;                 /* flat index of params[0]: 0, or the start of this rank's
                                      ZeRO partition (params[i] is flat element begin + i) */
} ds_user_optimizer_step;

/* Register one with ds_engine_options.user_optimizers; `"optimizer": {"type": NAME}` selects it
 * (exact, case-sensitive name; a built-in name cannot be taken). */
typedef struct ds_user_optimizer {
    const char *name;
    int n_state;                   /* 0 .. DS_USER_OPTIM_MAX_STATE flat state buffers */
    /* Optional: check optimizer.params once at initialization (name the bad key in err). */
    ds_status (*init)(void *ctx, const char *params_json, ds_error *err);
    ds_status (*step)(void *ctx, const ds_user_optimizer_step *s, ds_error *err);
    void *ctx;
} ds_user_optimizer;

/* ---- the optimizer ------------------------------------------------------------------------ */

typedef struct ds_optimizer {
    ds_optimizer_config cfg;
    ds_backend *be;
    int64_t n;          /* elements of the flat buffers */
    int64_t step;       /* updates applied so far */
    int momentum_started; /* SGD: an update with momentum has run (the next one need not set buf = d) */
    float *m, *v;       /* Adam/LAMB moments; SGD momentum (m); Adagrad sum (m) */
    const ds_user_optimizer *user;
    float *state[DS_USER_OPTIM_MAX_STATE];
    const ds_tensor_table *tensors;
    int64_t *offsets;   /* LAMB: tensor ranges, n_tensors + 1 bounds */
    int n_tensors;
    float *coeffs;      /* LAMB: trust ratios of the last step (host) */
    /* ZeRO: the buffers hold flat elements [begin, begin + n) only; LAMB's per-tensor sums are
     * added over ranks with sum(ctx, values, count) */
    int64_t begin;
    ds_status (*sum)(void *ctx, double *values, int count, ds_error *err);
    void *sum_ctx;
    double *sums;
} ds_optimizer;

/* tensors: the flat buffers' table (kept by reference); user: the registered optimizer when
 * cfg->type is DS_OPTIM_USER, else NULL. */
ds_status ds_optimizer_init(ds_optimizer *o, const ds_optimizer_config *cfg, ds_backend *be,
                            const ds_tensor_table *tensors, const ds_user_optimizer *user,
                            ds_error *err);
/* The same over a ZeRO partition: the buffers given to ds_optimizer_step hold flat elements
 * [begin, end); sum (collective over the partitions' ranks) adds LAMB's per-tensor sums. */
ds_status ds_optimizer_init_range(ds_optimizer *o, const ds_optimizer_config *cfg, ds_backend *be,
                                  const ds_tensor_table *tensors, int64_t begin, int64_t end,
                                  ds_status (*sum)(void *ctx, double *values, int count, ds_error *err),
                                  void *sum_ctx, const ds_user_optimizer *user, ds_error *err);
/* One update of params (fp32 master weights) from grads, multiplied by grad_scale first, at
 * learning rate lr. With pw not NULL, pw = params rounded to the 16-bit format `round` (a
 * ds_round_mode), in the same pass for the built-in optimizers: 2-byte values (uint16_t) when
 * pw16 is 1, else fp32 values. */
ds_status ds_optimizer_step(ds_optimizer *o, float *params, const float *grads, float lr,
                            float grad_scale, void *pw, int round, int pw16, ds_error *err);
size_t ds_optimizer_state_bytes(const ds_optimizer *o);
void ds_optimizer_free(ds_optimizer *o);
const char *ds_optimizer_name(const ds_optimizer_config *cfg);

/* ---- dynamic loss scaling (engine.md 2.2 with DECISIONS.md) ------------------------------- */

typedef struct ds_loss_scaler {
    int dynamic;
    double scale, min_scale;
    int64_t window;
    int hysteresis, cur_hysteresis, consecutive;
    int64_t iter, last_overflow_iter;
} ds_loss_scaler;

/* fp16: cfg's static scale, or dynamic from 2^initial_scale_power; fp32 and bf16: 1, static. */
void ds_loss_scaler_init(ds_loss_scaler *s, const ds_loss_scale_config *cfg, ds_precision prec);
/* After a backward at the current scale: overflow or not. On overflow the scale halves (not
 * below the minimum) once the hysteresis is used up; an overflow at the minimum scale is an
 * error (DS_ERR_NUMERIC), as in DeepSpeed. Good steps grow the scale by 2 every window. */
ds_status ds_loss_scaler_update(ds_loss_scaler *s, int overflow, ds_error *err);

#ifdef __cplusplus
}
#endif
#endif
