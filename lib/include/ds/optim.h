/* Optimizers over flat buffers: one fused pass of the backend per step (SGD with momentum,
 * Adam/AdamW with DeepSpeed's semantics). State lives in flat buffers with the parameters'
 * offsets, so checkpoints and ZeRO partitions are offset arithmetic. */
#ifndef DS_OPTIM_H
#define DS_OPTIM_H

#include <stdint.h>

#include "ds/backend.h"
#include "ds/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_optimizer {
    ds_optimizer_config cfg;
    ds_backend *be;
    int64_t n;          /* elements of the flat buffers */
    int64_t step;       /* updates applied so far */
    float *m, *v;       /* Adam moments, or m = SGD momentum buffer */
} ds_optimizer;

ds_status ds_optimizer_init(ds_optimizer *o, const ds_optimizer_config *cfg, ds_backend *be,
                            int64_t n, ds_error *err);
/* One update of params from grads (multiplied by grad_scale first: unscale and clip folded in)
 * at learning rate lr. */
ds_status ds_optimizer_step(ds_optimizer *o, float *params, const float *grads, float lr,
                            float grad_scale, ds_error *err);
size_t ds_optimizer_state_bytes(const ds_optimizer *o);
void ds_optimizer_free(ds_optimizer *o);
const char *ds_optimizer_name(const ds_optimizer_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
