/* The optimizer step: state allocation and one fused backend pass per update. */
#include "ds/optim.h"

#include <string.h>

const char *ds_optimizer_name(const ds_optimizer_config *cfg)
{
    switch (cfg->type) {
    case DS_OPTIM_SGD: return "SGD";
    case DS_OPTIM_ADAM: return cfg->adam_w_mode ? "Adam (AdamW mode)" : "Adam";
    case DS_OPTIM_ADAMW: return "AdamW";
    case DS_OPTIM_NONE: break;
    }
    return "none";
}

ds_status ds_optimizer_init(ds_optimizer *o, const ds_optimizer_config *cfg, ds_backend *be,
                            int64_t n, ds_error *err)
{
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->be = be;
    o->n = n;
    size_t bytes = (size_t)n * sizeof(float);
    switch (cfg->type) {
    case DS_OPTIM_ADAM:
    case DS_OPTIM_ADAMW:
        o->m = be->ops->alloc(be, bytes);
        o->v = be->ops->alloc(be, bytes);
        if (!o->m || !o->v) {
            ds_optimizer_free(o);
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory for the optimizer state (%zu bytes)", 2 * bytes);
        }
        return DS_OK;
    case DS_OPTIM_SGD:
        if (cfg->momentum != 0) {
            o->m = be->ops->alloc(be, bytes);
            if (!o->m)
                return ds_error_set(err, DS_ERR_NOMEM, "out of memory for the momentum buffer");
        }
        return DS_OK;
    case DS_OPTIM_NONE:
        break;
    }
    return ds_error_set(err, DS_ERR_INVALID, "no optimizer configured");
}

ds_status ds_optimizer_step(ds_optimizer *o, float *params, const float *grads, float lr,
                            float grad_scale, ds_error *err)
{
    ds_status st;
    const ds_optimizer_config *c = &o->cfg;
    if (c->type == DS_OPTIM_SGD) {
        ds_sgd_args a = {.lr = lr, .momentum = (float)c->momentum, .dampening = (float)c->dampening,
                         .weight_decay = (float)c->weight_decay, .nesterov = c->nesterov,
                         .first_step = o->step == 0, .grad_scale = grad_scale};
        st = o->be->ops->sgd_step(o->be, params, grads, o->m, o->n, &a);
    } else {
        ds_adamw_args a = {.lr = lr, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2,
                           .eps = (float)c->eps, .weight_decay = (float)c->weight_decay,
                           .step = o->step + 1,
                           .adam_w_mode = c->type == DS_OPTIM_ADAMW || c->adam_w_mode,
                           .bias_correction = c->bias_correction, .grad_scale = grad_scale};
        st = o->be->ops->adamw_step(o->be, params, grads, o->m, o->v, o->n, &a);
    }
    if (st != DS_OK) {
        if (err)
            *err = o->be->err;
        return st;
    }
    o->step++;
    return DS_OK;
}

size_t ds_optimizer_state_bytes(const ds_optimizer *o)
{
    return (size_t)o->n * sizeof(float) * ((o->m != NULL) + (o->v != NULL));
}

void ds_optimizer_free(ds_optimizer *o)
{
    if (o->m)
        o->be->ops->free(o->be, o->m);
    if (o->v)
        o->be->ops->free(o->be, o->v);
    o->m = o->v = NULL;
}
