/* The optimizer step: state allocation and the backend's fused passes; and the loss scaler. */
#include "ds/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *ds_optimizer_name(const ds_optimizer_config *cfg)
{
    switch (cfg->type) {
    case DS_OPTIM_SGD: return "SGD";
    case DS_OPTIM_ADAM: return cfg->adam_w_mode ? "Adam (AdamW mode)" : "Adam";
    case DS_OPTIM_ADAMW: return "AdamW";
    case DS_OPTIM_LAMB: return "Lamb";
    case DS_OPTIM_ADAGRAD: return "Adagrad";
    case DS_OPTIM_USER: return cfg->name;
    case DS_OPTIM_NONE: break;
    }
    return "none";
}

static float *state_alloc(ds_optimizer *o, ds_error *err)
{
    size_t bytes = (size_t)o->n * sizeof(float);
    float *p = o->be->ops->alloc(o->be, bytes ? bytes : sizeof(float));
    if (!p)
        ds_error_set(err, DS_ERR_NOMEM, "out of memory for the optimizer state (%zu bytes)", bytes);
    return p;
}

ds_status ds_optimizer_init(ds_optimizer *o, const ds_optimizer_config *cfg, ds_backend *be,
                            const ds_tensor_table *tensors, const ds_user_optimizer *user,
                            ds_error *err)
{
    return ds_optimizer_init_range(o, cfg, be, tensors, 0, tensors->total, NULL, NULL, user, err);
}

ds_status ds_optimizer_init_range(ds_optimizer *o, const ds_optimizer_config *cfg, ds_backend *be,
                                  const ds_tensor_table *tensors, int64_t begin, int64_t end,
                                  ds_status (*sum)(void *ctx, double *values, int count, ds_error *err),
                                  void *sum_ctx, const ds_user_optimizer *user, ds_error *err)
{
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->be = be;
    o->n = end - begin;
    o->begin = begin;
    o->sum = sum;
    o->sum_ctx = sum_ctx;
    o->tensors = tensors;
    const ds_backend_ops *ops = be->ops;
    ds_status st = DS_OK;
    switch (cfg->type) {
    case DS_OPTIM_ADAM:
    case DS_OPTIM_ADAMW:
        if (!(o->m = state_alloc(o, err)) || !(o->v = state_alloc(o, err)))
            goto fail;
        return DS_OK;
    case DS_OPTIM_LAMB:
        if (!ops->lamb_step) {
            st = ds_error_set(err, DS_ERR_UNSUPPORTED, "optimizer Lamb is not built for backend %s yet", ops->name);
            goto fail;
        }
        if (!(o->m = state_alloc(o, err)) || !(o->v = state_alloc(o, err)))
            goto fail;
        o->n_tensors = tensors->n;
        o->offsets = malloc(sizeof(int64_t) * (size_t)(tensors->n + 1) * 2);
        o->coeffs = malloc(sizeof(float) * (size_t)(tensors->n ? tensors->n : 1));
        o->sums = malloc(sizeof(double) * 2 * (size_t)(tensors->n ? tensors->n : 1));
        if (!o->offsets || !o->coeffs || !o->sums) {
            st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            goto fail;
        }
        /* ranges [offset, offset + numel): the alignment padding between tensors is skipped */
        for (int i = 0; i < tensors->n; i++)
            o->offsets[i] = tensors->t[i].offset;
        o->offsets[tensors->n] = tensors->n ? tensors->t[tensors->n - 1].offset + tensors->t[tensors->n - 1].numel : 0;
        if (begin != 0 || end != tensors->total)
            o->n_tensors = -tensors->n; /* a partition: per-piece calls, sums over ranks */
        for (int i = 0; i + 1 < tensors->n && o->n_tensors > 0; i++)
            if (tensors->t[i].offset + tensors->t[i].numel != tensors->t[i + 1].offset) {
                /* padded layout: per-tensor calls below (n_tensors = 1 each) */
                o->n_tensors = -tensors->n;
                break;
            }
        return DS_OK;
    case DS_OPTIM_ADAGRAD:
        if (!ops->adagrad_step) {
            st = ds_error_set(err, DS_ERR_UNSUPPORTED, "optimizer Adagrad is not built for backend %s yet", ops->name);
            goto fail;
        }
        if (!(o->m = state_alloc(o, err)))
            goto fail;
        if (cfg->initial_accumulator_value != 0) {
            float *h = malloc((size_t)o->n * sizeof(float) + 1);
            if (!h) {
                st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
                goto fail;
            }
            for (int64_t i = 0; i < o->n; i++)
                h[i] = (float)cfg->initial_accumulator_value;
            st = ops->upload(be, o->m, h, (size_t)o->n * sizeof(float));
            free(h);
            if (st != DS_OK) {
                if (err)
                    *err = be->err;
                goto fail;
            }
        }
        return DS_OK;
    case DS_OPTIM_SGD:
        if ((cfg->momentum != 0 || cfg->momentum_cycled) && !(o->m = state_alloc(o, err)))
            goto fail;
        return DS_OK;
    case DS_OPTIM_USER:
        if (!user || !user->step) {
            st = ds_error_set(err, DS_ERR_INVALID, "optimizer \"%s\": no step function registered", cfg->name);
            goto fail;
        }
        if (user->n_state < 0 || user->n_state > DS_USER_OPTIM_MAX_STATE) {
            st = ds_error_set(err, DS_ERR_INVALID, "optimizer \"%s\": n_state %d is outside [0, %d]",
                              cfg->name, user->n_state, DS_USER_OPTIM_MAX_STATE);
            goto fail;
        }
        o->user = user;
        for (int i = 0; i < user->n_state; i++)
            if (!(o->state[i] = state_alloc(o, err)))
                goto fail;
        if (user->init && (st = user->init(user->ctx, cfg->params_json ? cfg->params_json : "{}", err)) != DS_OK)
            goto fail;
        return DS_OK;
    case DS_OPTIM_NONE:
        break;
    }
    return ds_error_set(err, DS_ERR_INVALID, "no optimizer configured");
fail:
    ds_optimizer_free(o);
    return st != DS_OK ? st : DS_ERR_NOMEM;
}

static double c_min(const ds_optimizer *o) { return o->cfg.min_coeff; }
static double c_max(const ds_optimizer *o) { return o->cfg.max_coeff; }

ds_status ds_optimizer_step(ds_optimizer *o, float *params, const float *grads, float lr,
                            float grad_scale, void *pw, int round, int pw16, ds_error *err)
{
    ds_status st = DS_OK;
    const ds_optimizer_config *c = &o->cfg;
    ds_backend *be = o->be;
    switch (c->type) {
    case DS_OPTIM_SGD: {
        ds_sgd_args a = {.lr = lr, .momentum = (float)c->momentum, .dampening = (float)c->dampening,
                         .weight_decay = (float)c->weight_decay, .nesterov = c->nesterov,
                         .first_step = !o->momentum_started, .grad_scale = grad_scale, .pw = pw, .round = round,
                         .pw16 = pw16};
        if (c->momentum != 0 && !o->m) /* a momentum the buffer was not made for (cannot happen via the engine) */
            return ds_error_set(err, DS_ERR_INVALID, "SGD: momentum %g, but the optimizer was set up without a "
                                "momentum buffer (momentum 0 and not cycled)", c->momentum);
        st = be->ops->sgd_step(be, params, grads, o->m, o->n, &a);
        /* torch: buf = d on the first update with momentum, whenever that comes */
        if (st == DS_OK && c->momentum != 0)
            o->momentum_started = 1;
        break;
    }
    case DS_OPTIM_ADAM:
    case DS_OPTIM_ADAMW: {
        ds_adamw_args a = {.lr = lr, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2,
                           .eps = (float)c->eps, .weight_decay = (float)c->weight_decay,
                           .step = o->step + 1,
                           .adam_w_mode = c->type == DS_OPTIM_ADAMW || c->adam_w_mode,
                           .bias_correction = c->bias_correction, .grad_scale = grad_scale,
                           .pw = pw, .round = round, .pw16 = pw16};
        st = be->ops->adamw_step(be, params, grads, o->m, o->v, o->n, &a);
        break;
    }
    case DS_OPTIM_ADAGRAD: {
        ds_adagrad_args a = {.lr = lr, .lr_decay = (float)c->lr_decay,
                             .weight_decay = (float)c->weight_decay, .eps = (float)c->eps,
                             .step = o->step + 1, .grad_scale = grad_scale, .pw = pw, .round = round, .pw16 = pw16};
        st = be->ops->adagrad_step(be, params, grads, o->m, o->n, &a);
        break;
    }
    case DS_OPTIM_LAMB: {
        ds_lamb_args a = {.lr = lr, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2,
                          .eps = (float)c->eps, .weight_decay = (float)c->weight_decay,
                          .min_coeff = (float)c->min_coeff, .max_coeff = (float)c->max_coeff,
                          .step = o->step + 1, .bias_correction = c->bias_correction,
                          .eps_inside_sqrt = c->eps_inside_sqrt, .grad_scale = grad_scale,
                          .pw = pw, .round = round, .pw16 = pw16, .offsets = o->offsets,
                          .n_tensors = o->n_tensors, .coeffs = o->coeffs};
        if (o->n_tensors >= 0) {
            st = be->ops->lamb_step(be, params, grads, o->m, o->v, &a);
        } else {
            /* tensor by tensor, over the piece of each that this buffer holds: pass 1 gives the
             * piece's sums, added over ranks (a ZeRO partition), then pass 2 with the ratios */
            int nt = -o->n_tensors;
            int64_t *r = o->offsets + nt + 1;
            for (int i = 0; i < nt && st == DS_OK; i++) {
                int64_t lo = o->tensors->t[i].offset, hi = lo + o->tensors->t[i].numel;
                lo = lo > o->begin ? lo : o->begin;
                hi = hi < o->begin + o->n ? hi : o->begin + o->n;
                o->sums[2 * i] = o->sums[2 * i + 1] = 0.0;
                if (hi <= lo)
                    continue;
                r[0] = lo - o->begin;
                r[1] = hi - o->begin;
                a.offsets = r;
                a.n_tensors = 1;
                a.phase = 1;
                a.sums = o->sums + 2 * i;
                st = be->ops->lamb_step(be, params, grads, o->m, o->v, &a);
            }
            if (st == DS_OK && o->sum && (st = o->sum(o->sum_ctx, o->sums, 2 * nt, err)) != DS_OK)
                return st;
            for (int i = 0; i < nt; i++) {
                double w = o->sums[2 * i], u = o->sums[2 * i + 1], c = 1.0;
                if (w > 0.0 && u > 0.0) {
                    c = sqrt(w) / sqrt(u);
                    c = c < c_min(o) ? c_min(o) : c > c_max(o) ? c_max(o) : c;
                }
                o->coeffs[i] = (float)c;
            }
            for (int i = 0; i < nt && st == DS_OK; i++) {
                int64_t lo = o->tensors->t[i].offset, hi = lo + o->tensors->t[i].numel;
                lo = lo > o->begin ? lo : o->begin;
                hi = hi < o->begin + o->n ? hi : o->begin + o->n;
                if (hi <= lo)
                    continue;
                r[0] = lo - o->begin;
                r[1] = hi - o->begin;
                a.offsets = r;
                a.n_tensors = 1;
                a.phase = 2;
                a.coeffs = o->coeffs + i;
                st = be->ops->lamb_step(be, params, grads, o->m, o->v, &a);
            }
        }
        break;
    }
    case DS_OPTIM_USER: {
        ds_user_optimizer_step s = {.params = params, .grads = grads, .state = o->state,
                                    .n = o->n, .grad_scale = grad_scale, .lr = lr,
                                    .step = o->step + 1, .tensors = o->tensors,
                                    .params_json = c->params_json ? c->params_json : "{}",
                                    .begin = o->begin};
        if ((st = o->user->step(o->user->ctx, &s, err)) != DS_OK)
            return st;
        /* the 16-bit working weights: a second pass for user optimizers */
        if (pw && pw16) {
            st = be->ops->pack16 ? be->ops->pack16(be, params, pw, o->n, round)
                                 : ds_error_set(&be->err, DS_ERR_UNSUPPORTED, "backend %s has no pack16", be->ops->name);
        } else if (pw) {
            if ((st = be->ops->copy(be, pw, params, (size_t)o->n * sizeof(float))) == DS_OK)
                st = be->ops->round16(be, pw, o->n, round);
        }
        break;
    }
    case DS_OPTIM_NONE:
        return ds_error_set(err, DS_ERR_INVALID, "no optimizer configured");
    }
    if (st != DS_OK) {
        if (err)
            *err = be->err;
        return st;
    }
    o->step++;
    return DS_OK;
}

size_t ds_optimizer_state_bytes(const ds_optimizer *o)
{
    int k = (o->m != NULL) + (o->v != NULL);
    for (int i = 0; i < DS_USER_OPTIM_MAX_STATE; i++)
        k += o->state[i] != NULL;
    return (size_t)o->n * sizeof(float) * (size_t)k;
}

void ds_optimizer_free(ds_optimizer *o)
{
    if (o->m)
        o->be->ops->free(o->be, o->m);
    if (o->v)
        o->be->ops->free(o->be, o->v);
    for (int i = 0; i < DS_USER_OPTIM_MAX_STATE; i++)
        if (o->state[i])
            o->be->ops->free(o->be, o->state[i]);
    free(o->offsets);
    free(o->coeffs);
    free(o->sums);
    o->sums = NULL;
    o->m = o->v = NULL;
    memset(o->state, 0, sizeof o->state);
    o->offsets = NULL;
    o->coeffs = NULL;
}

/* ---- loss scaler ------------------------------------------------------------------------- */

void ds_loss_scaler_init(ds_loss_scaler *s, const ds_loss_scale_config *cfg, ds_precision prec)
{
    memset(s, 0, sizeof *s);
    s->scale = 1.0;
    s->min_scale = 1.0;
    s->last_overflow_iter = -1;
    s->hysteresis = s->cur_hysteresis = 1;
    if (prec != DS_PREC_FP16)
        return;
    if (cfg->loss_scale > 0) {
        s->scale = cfg->loss_scale;
        return;
    }
    s->dynamic = 1;
    s->scale = ldexp(1.0, cfg->initial_scale_power);
    s->min_scale = cfg->min_loss_scale;
    s->window = cfg->loss_scale_window;
    s->hysteresis = s->cur_hysteresis = cfg->hysteresis;
    s->consecutive = cfg->consecutive_hysteresis;
}

/* DeepSpeed's DynamicLossScaler.update_scale, line by line (engine.md 2.2). */
ds_status ds_loss_scaler_update(ds_loss_scaler *s, int overflow, ds_error *err)
{
    if (!s->dynamic)
        return DS_OK;
    if (overflow) {
        if (s->hysteresis == 1 || s->cur_hysteresis == 1) {
            /* DeepSpeed compares with ==: a scale below the minimum (initial_scale_power under
             * min_loss_scale) is raised to the minimum by the max below, not an error */
            if (s->scale == s->min_scale)
                return ds_error_set(err, DS_ERR_NUMERIC,
                                    "gradient overflow at the minimum loss scale %g: cannot decrease "
                                    "the scale any more (lower the learning rate, or fp16.min_loss_scale)",
                                    s->min_scale);
            s->scale = fmax(s->scale / 2, s->min_scale);
        } else {
            s->cur_hysteresis--;
        }
        s->last_overflow_iter = s->iter;
    } else {
        if (s->consecutive)
            s->cur_hysteresis = s->hysteresis;
        if ((s->iter - s->last_overflow_iter) % s->window == 0) {
            if (!s->consecutive)
                s->cur_hysteresis = s->hysteresis;
            s->scale *= 2;
        }
    }
    s->iter++;
    return DS_OK;
}
