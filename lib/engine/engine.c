/* The engine: config + network + backend + flat buffers + optimizer, and DeepSpeed's step
 * semantics (accumulation boundary, global-norm clipping, counters). No printing: the caller
 * reads the counters and decides what to show. */
#include "ds/engine.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "ds/backend.h"
#include "ds/optim.h"
#include "ds/safetensors.h"
#include "ds/sched.h"
#include "nn/net_internal.h"

#define DEFAULT_SEED 42

struct ds_engine {
    ds_config cfg;
    int cfg_loaded;
    ds_net *net;
    ds_backend *be;
    ds_model *model;
    float *params, *grads; /* flat, net->params.total floats each; params are what the model
                              reads: in 16-bit mode the working weights, rounded from master */
    float *master;         /* fp32 master weights (== params in fp32 mode) */
    int round;             /* ds_round_mode of the 16-bit mode, 0 for fp32 */
    ds_loss_scaler scaler;
    double step_scale;     /* the loss scale the last update used */
    int64_t skipped;
    int applied;
    int check_overflow;    /* fp16, or bf16 with check_grad_overflow */
    ds_optimizer opt;
    uint64_t seed;
    int64_t micro_steps, global_steps, global_samples;
    int have_forward;
    double window_loss;    /* sum over the window's micro-batches of loss / GAS */
    double last_loss;
    double grad_norm;
    double lr;
    float *host_scratch;   /* a host buffer of the largest tensor */
    int64_t largest;
    ds_comm *comm;         /* data-parallel ranks, or NULL */
    int world_size;
    int64_t bucket;        /* elements per gradient all-reduce */
    int64_t ar_calls, ar_bytes;
    /* LR schedule (engine.md §3): sched_iter is DeepSpeed's last_batch_iteration, -1 until the
     * first applied update; lr and mom hold the values for the next update */
    int64_t sched_iter;
    double mom;          /* beta1 (Adam family) or SGD momentum of the next update */
    double *mom_slot;    /* where the schedule writes it in opt.cfg, or NULL */
    double applied_lr, applied_mom; /* of the last applied update (NAN before any) */
    ds_timers timers;      /* wall_clock_breakdown (engine.md §7) */
    ds_collective_record *coll; /* the last optimizer step's collectives, while timed */
    int n_coll, cap_coll;
};

/* The optimizer setting that OneCycle's momentum cycling drives, or NULL if it has none. */
static double *momentum_slot(ds_optimizer_config *o)
{
    switch (o->type) {
    case DS_OPTIM_SGD: return &o->momentum;
    case DS_OPTIM_ADAM:
    case DS_OPTIM_ADAMW:
    case DS_OPTIM_LAMB: return &o->beta1;
    default: return NULL;
    }
}

/* Write the schedule's values for iteration sched_iter into e->lr and e->mom (and into the
 * optimizer's settings, when it exists). */
static void sched_load(ds_engine *e)
{
    const ds_sched_config *s = &e->cfg.scheduler;
    double lr = e->lr, mom = e->mom;
    if (s->type == DS_SCHED_NONE)
        return;
    int cycled = ds_sched_lr(s, e->sched_iter, &lr, &mom);
    e->lr = lr;
    if (cycled && e->mom_slot) {
        e->mom = mom;
        *e->mom_slot = mom;
    }
}

/* At construction (DeepSpeed: the scheduler's constructor writes the first lr): before
 * ds_optimizer_init, so that SGD with cycled momentum gets its momentum buffer. */
static void sched_start(ds_engine *e)
{
    ds_sched_config *s = &e->cfg.scheduler;
    ds_sched_set_base_lr(s, e->cfg.optimizer.lr);
    e->sched_iter = -1;
    e->mom_slot = momentum_slot(&e->cfg.optimizer);
    e->mom = e->mom_slot ? *e->mom_slot : NAN;
    e->applied_lr = e->applied_mom = NAN;
    if (s->type == DS_SCHED_ONE_CYCLE && s->cycle_momentum && !e->mom_slot &&
        e->cfg.n_warnings < DS_CONFIG_MAX_WARNINGS) /* DeepSpeed warns and goes on too */
        snprintf(e->cfg.warnings[e->cfg.n_warnings++], sizeof e->cfg.warnings[0],
                 "%s: scheduler.params.cycle_momentum: optimizer %s has no momentum; it is not cycled",
                 e->cfg.source_name, e->cfg.optimizer.name);
    sched_load(e);
}

static ds_status backend_err(ds_engine *e, ds_status st, ds_error *err)
{
    if (err)
        *err = e->be->err;
    return st;
}

void ds_engine_destroy(ds_engine *e)
{
    if (!e)
        return;
    if (e->be) {
        ds_optimizer_free(&e->opt);
        ds_model_destroy(e->model);
        if (e->params)
            e->be->ops->free(e->be, e->params);
        if (e->master && e->master != e->params)
            e->be->ops->free(e->be, e->master);
        if (e->grads)
            e->be->ops->free(e->be, e->grads);
        ds_backend_destroy(e->be);
    }
    ds_net_free(e->net);
    if (e->cfg_loaded)
        ds_config_free(&e->cfg);
    free(e->host_scratch);
    free(e->coll);
    free(e);
}

/* 16-bit mode: the working weights the model reads = the master weights rounded. */
static ds_status refresh_working(ds_engine *e)
{
    if (!e->round)
        return DS_OK;
    size_t bytes = (size_t)e->net->params.total * sizeof(float);
    ds_status st = e->be->ops->copy(e->be, e->params, e->master, bytes);
    if (st == DS_OK)
        st = e->be->ops->round16(e->be, e->params, e->net->params.total, e->round);
    return st;
}

static ds_status timers_sync(void *ctx)
{
    ds_backend *be = ctx;
    return be->ops->synchronize ? be->ops->synchronize(be) : DS_OK;
}

/* The timers, with a device synchronize on GPU backends (only while they are on), and room for
 * one record per gradient bucket plus the loss all-reduce. */
static ds_status timers_init(ds_engine *e, int on, ds_error *err)
{
    ds_timers_init(&e->timers, on);
    if (!on)
        return DS_OK;
    if (strcmp(e->be->ops->name, "cpu") != 0) {
        e->timers.sync = timers_sync;
        e->timers.sync_ctx = e->be;
    }
    if (e->comm) {
        e->cap_coll = (int)((e->net->params.total + e->bucket - 1) / e->bucket) + 1;
        if (!(e->coll = calloc((size_t)e->cap_coll, sizeof *e->coll)))
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    return DS_OK;
}

static void record_collective(ds_engine *e, const char *what, int64_t elements, double t0)
{
    if (!e->timers.enabled || e->n_coll >= e->cap_coll)
        return;
    ds_collective_record *c = &e->coll[e->n_coll++];
    c->op = "all_reduce";
    c->what = what;
    c->elements = elements;
    c->bytes = elements * (int64_t)sizeof(float);
    c->ms = (ds_prof_now_s() - t0) * 1e3;
}

ds_status ds_initialize(ds_engine **out, const ds_engine_options *opts, ds_error *err)
{
    ds_status st;
    ds_engine *e = calloc(1, sizeof *e);
    if (!e)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    const char *names[64];
    if (opts->n_user_optimizers < 0 || opts->n_user_optimizers > 64 ||
        (opts->n_user_optimizers > 0 && !opts->user_optimizers)) {
        free(e);
        return ds_error_set(err, DS_ERR_INVALID, "user optimizers: %d given (at most 64)", opts->n_user_optimizers);
    }
    for (int i = 0; i < opts->n_user_optimizers; i++) {
        const char *nm = opts->user_optimizers[i].name;
        static const char *const taken[] = {"adam", "adamw", "lamb", "adagrad", "sgd", NULL};
        int clash = !nm || !*nm;
        for (int k = 0; !clash && taken[k]; k++)
            clash = strcasecmp(nm, taken[k]) == 0;
        for (int k = 0; !clash && k < i; k++)
            clash = strcmp(nm, names[k]) == 0;
        if (clash) {
            free(e);
            return ds_error_set(err, DS_ERR_INVALID, "user optimizer %d: the name \"%s\" is empty, built in or registered twice",
                                i, nm ? nm : "");
        }
        names[i] = nm;
    }
    ds_config_hints hints = {.micro_batch = opts->micro_batch_hint, .user_optimizers = names,
                             .n_user_optimizers = opts->n_user_optimizers};
    e->world_size = opts->world_size > 1 ? opts->world_size : 1;
    e->comm = e->world_size > 1 ? opts->comm : NULL;
    if (e->world_size > 1 && !e->comm) {
        ds_engine_destroy(e);
        return ds_error_set(err, DS_ERR_INVALID, "world size %d without a communicator", opts->world_size);
    }
    if (opts->config_path)
        st = ds_config_load_file(&e->cfg, opts->config_path, e->world_size, opts->strict_config, &hints, err);
    else if (opts->config_json)
        st = ds_config_load_string(&e->cfg, opts->config_json, opts->config_name ? opts->config_name : "config",
                                   e->world_size, opts->strict_config, &hints, err);
    else
        st = ds_error_set(err, DS_ERR_INVALID, "no DeepSpeed config given");
    if (st != DS_OK)
        goto fail;
    e->cfg_loaded = 1;
    /* DeepSpeed's stage-0 all-reduce works in constant buffers of 5e8 elements by default */
    e->bucket = opts->allreduce_bucket > 0 ? opts->allreduce_bucket
              : e->cfg.allreduce_bucket_size > 0 ? e->cfg.allreduce_bucket_size : 500000000;
    if (opts->net_path)
        st = ds_net_parse_file(&e->net, opts->net_path, err);
    else if (opts->net_json)
        st = ds_net_parse_string(&e->net, opts->net_json, opts->net_name ? opts->net_name : "network", err);
    else
        st = ds_error_set(err, DS_ERR_INVALID, "no network given");
    if (st != DS_OK)
        goto fail;
    if (!e->cfg.has_optimizer) {
        /* DeepSpeed leaves the optimizer to the client when the config has none; ds-train's
         * (documented) choice is torch's AdamW defaults. */
        ds_optimizer_config *o = &e->cfg.optimizer;
        memset(o, 0, sizeof *o);
        o->type = DS_OPTIM_ADAMW;
        snprintf(o->name, sizeof o->name, "AdamW");
        o->lr = 1e-3;
        o->beta1 = 0.9;
        o->beta2 = 0.999;
        o->eps = 1e-8;
        o->weight_decay = 0.01;
        o->adam_w_mode = 1;
        o->bias_correction = 1;
    }
    e->seed = opts->seed_set ? opts->seed : e->cfg.seed_set ? e->cfg.seed : DEFAULT_SEED;
    e->lr = e->cfg.optimizer.lr;
    sched_start(e);
    e->grad_norm = -1;
    if ((st = ds_backend_create(&e->be, opts->backend ? opts->backend : "cpu", err)) != DS_OK)
        goto fail;
    if (e->comm && strcmp(e->be->ops->name, "cpu") != 0) {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "data parallelism on backend %s is not built yet (CPU collectives only)", e->be->ops->name);
        goto fail;
    }
    e->round = e->cfg.precision == DS_PREC_FP16 ? DS_ROUND_FP16
             : e->cfg.precision == DS_PREC_BF16 ? DS_ROUND_BF16 : DS_ROUND_NONE;
    if (e->round && !e->be->ops->round16) {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED, "%s training is not built for backend %s yet",
                          e->round == DS_ROUND_FP16 ? "fp16" : "bf16", e->be->ops->name);
        goto fail;
    }
    ds_loss_scaler_init(&e->scaler, &e->cfg.fp16, e->cfg.precision);
    e->step_scale = e->scaler.scale;
    e->check_overflow = e->cfg.precision == DS_PREC_FP16 ||
                        (e->cfg.precision == DS_PREC_BF16 && e->cfg.bf16_check_overflow);
    e->applied = 1;
    const ds_tensor_table *tab = &e->net->params;
    size_t bytes = (size_t)tab->total * sizeof(float);
    e->params = e->be->ops->alloc(e->be, bytes);
    e->grads = e->be->ops->alloc(e->be, bytes);
    e->master = e->round ? e->be->ops->alloc(e->be, bytes) : e->params;
    if (!e->params || !e->grads || !e->master) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory for %lld parameters", (long long)tab->total);
        goto fail;
    }
    for (int i = 0; i < tab->n; i++)
        if (tab->t[i].numel > e->largest)
            e->largest = tab->t[i].numel;
    e->host_scratch = malloc((size_t)e->largest * sizeof(float) + 64);
    float *host = malloc(bytes);
    if (!host || !e->host_scratch) {
        free(host);
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    ds_net_init_params(e->net, host, e->seed);
    st = e->be->ops->upload(e->be, e->master, host, bytes);
    free(host);
    if (st == DS_OK)
        st = refresh_working(e);
    if (st != DS_OK) {
        backend_err(e, st, err);
        goto fail;
    }
    if ((st = ds_model_create(&e->model, e->net, e->be, e->cfg.micro_batch, err)) != DS_OK)
        goto fail;
    ds_model_set_round(e->model, e->round);
    const ds_user_optimizer *user = NULL;
    for (int i = 0; i < opts->n_user_optimizers; i++)
        if (e->cfg.optimizer.type == DS_OPTIM_USER && !strcmp(opts->user_optimizers[i].name, e->cfg.optimizer.name))
            user = &opts->user_optimizers[i];
    if ((st = ds_optimizer_init(&e->opt, &e->cfg.optimizer, e->be, tab, user, err)) != DS_OK)
        goto fail;
    e->mom_slot = momentum_slot(&e->opt.cfg); /* the optimizer's copy from now on */
    if (opts->init_from && (st = ds_engine_load_weights(e, opts->init_from, err)) != DS_OK)
        goto fail;
    if ((st = timers_init(e, opts->timers || e->cfg.wall_clock_breakdown, err)) != DS_OK)
        goto fail;
    *out = e;
    return DS_OK;
fail:
    ds_engine_destroy(e);
    return st;
}

static ds_status upload_batch(ds_engine *e, const ds_batch *b, ds_error *err)
{
    const ds_net *net = e->net;
    int64_t B = e->cfg.micro_batch, M = B * net->positions;
    void *in = ds_model_input_buffer(e->model), *tg = ds_model_target_buffer(e->model);
    const void *src_in, *src_tg;
    /* out-of-range ids would index outside the tables: refuse them here, on the host */
    if (net->input == DS_INPUT_TOKENS) {
        if (!b->tokens || !b->targets)
            return ds_error_set(err, DS_ERR_INVALID, "batch: a tokens network needs tokens and targets");
        for (int64_t i = 0; i < M; i++) {
            if (b->tokens[i] < 0 || b->tokens[i] >= net->vocab_size)
                return ds_error_set(err, DS_ERR_INVALID, "batch: token %d at position %lld is outside the vocabulary [0, %lld)",
                                    b->tokens[i], (long long)i, (long long)net->vocab_size);
            if (b->targets[i] < 0 || b->targets[i] >= net->out_dim)
                return ds_error_set(err, DS_ERR_INVALID, "batch: target %d at position %lld is outside [0, %lld)",
                                    b->targets[i], (long long)i, (long long)net->out_dim);
        }
        src_in = b->tokens;
        src_tg = b->targets;
    } else {
        if (!b->x)
            return ds_error_set(err, DS_ERR_INVALID, "batch: a features network needs x");
        src_in = b->x;
        if (net->loss == DS_LOSS_MSE) {
            if (!b->y)
                return ds_error_set(err, DS_ERR_INVALID, "batch: an mse loss needs y");
            src_tg = b->y;
        } else {
            if (!b->labels)
                return ds_error_set(err, DS_ERR_INVALID, "batch: a cross_entropy loss needs labels");
            for (int64_t i = 0; i < M; i++)
                if (b->labels[i] < 0 || b->labels[i] >= net->out_dim)
                    return ds_error_set(err, DS_ERR_INVALID, "batch: label %d of sample %lld is outside [0, %lld)",
                                        b->labels[i], (long long)i, (long long)net->out_dim);
            src_tg = b->labels;
        }
    }
    ds_status st = e->be->ops->upload(e->be, in, src_in, ds_model_input_bytes(e->model));
    if (st == DS_OK)
        st = e->be->ops->upload(e->be, tg, src_tg, ds_model_target_bytes(e->model));
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

ds_status ds_engine_forward(ds_engine *e, const ds_batch *batch, double *loss, ds_error *err)
{
    ds_timers_start(&e->timers, DS_TIMER_FWD);
    ds_status st = upload_batch(e, batch, err);
    if (st != DS_OK)
        return st;
    /* DeepSpeed's backward divides the loss by gradient_accumulation_steps; the loss gradient
     * is prepared here, fused with the loss, so the factor goes in now. */
    float scale = (float)(e->scaler.scale / (double)e->cfg.grad_accum);
    uint64_t seed = e->seed ^ ((uint64_t)e->micro_steps * 0x9e3779b97f4a7c15ull);
    double l;
    st = ds_model_forward(e->model, e->params, 1, scale, seed, &l, err);
    if (st != DS_OK)
        return st;
    e->have_forward = 1;
    e->window_loss += l / (double)e->cfg.grad_accum;
    *loss = l;
    ds_timers_stop(&e->timers, DS_TIMER_FWD);
    return DS_OK;
}

ds_status ds_engine_eval(ds_engine *e, const ds_batch *batch, double *loss, ds_error *err)
{
    ds_status st = upload_batch(e, batch, err);
    if (st != DS_OK)
        return st;
    e->have_forward = 0;
    return ds_model_forward(e->model, e->params, 0, 0.0f, 0, loss, err);
}

ds_status ds_engine_backward(ds_engine *e, ds_error *err)
{
    if (!e->have_forward)
        return ds_error_set(err, DS_ERR_INVALID, "backward without a training forward");
    e->have_forward = 0;
    ds_timers_start(&e->timers, DS_TIMER_BWD);
    ds_timers_start(&e->timers, DS_TIMER_BWD_INNER);
    ds_status st = ds_model_backward(e->model, e->params, e->grads, err);
    /* fp16 gradients accumulate in fp16 (DeepSpeed's fp16 .grad); bf16 ones in fp32 */
    if (st == DS_OK && e->round == DS_ROUND_FP16)
        st = e->be->ops->round16(e->be, e->grads, e->net->params.total, e->round);
    ds_timers_stop(&e->timers, DS_TIMER_BWD_INNER);
    ds_timers_stop(&e->timers, DS_TIMER_BWD);
    return st;
}

int ds_engine_is_gradient_accumulation_boundary(const ds_engine *e)
{
    return (e->micro_steps + 1) % e->cfg.grad_accum == 0;
}

ds_status ds_engine_step(ds_engine *e, ds_error *err)
{
    ds_timers_start(&e->timers, DS_TIMER_STEP);
    if (!ds_engine_is_gradient_accumulation_boundary(e)) {
        e->micro_steps++;
        ds_timers_stop(&e->timers, DS_TIMER_STEP);
        ds_timers_micro_end(&e->timers);
        return DS_OK;
    }
    if (e->cfg.scheduler.total_num_steps_auto && e->cfg.scheduler.total_num_steps == 0)
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: scheduler.params.total_num_steps is \"auto\" and the client has not "
                            "set it (ds_engine_set_total_steps)", e->cfg.source_name);
    const ds_backend_ops *ops = e->be->ops;
    int64_t n = e->net->params.total;
    ds_status st;
    e->ar_calls = e->ar_bytes = 0;
    e->n_coll = 0;
    if (e->comm) {
        /* DeepSpeed reduces inside backward (bwd_allreduce, part of bwd); ds reduces here, once
         * per effective batch, and counts that time there, not in step */
        ds_timers_stop(&e->timers, DS_TIMER_STEP);
        ds_timers_start(&e->timers, DS_TIMER_BWD);
        ds_timers_start(&e->timers, DS_TIMER_BWD_ALLREDUCE);
        /* One bucketed all-reduce per effective batch (micro-batches accumulated locally), in
         * constant-size buckets of the flat gradient buffer. DeepSpeed's averaging: with
         * prescale_gradients, g/W then a sum; otherwise g/f, a sum, then g*f/W (skipped when
         * f == W). Either way the result is the mean; f only moves the division. */
        const double W = e->world_size, f = e->cfg.gradient_predivide_factor;
        const float pre = (float)(e->cfg.prescale_gradients ? 1.0 / W : 1.0 / f);
        const float post = (float)(e->cfg.prescale_gradients ? 1.0 : f / W);
        for (int64_t off = 0; off < n; off += e->bucket) {
            int64_t len = n - off < e->bucket ? n - off : e->bucket;
            double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
            if (pre != 1.0f && (st = ops->scale(e->be, e->grads + off, len, pre)) != DS_OK)
                return backend_err(e, st, err);
            if ((st = ds_comm_all_reduce(e->comm, e->grads + off, (size_t)len, DS_REDUCE_SUM, err)) != DS_OK)
                return st;
            if (post != 1.0f && (st = ops->scale(e->be, e->grads + off, len, post)) != DS_OK)
                return backend_err(e, st, err);
            e->ar_calls++;
            e->ar_bytes += len * (int64_t)sizeof(float);
            record_collective(e, "gradients", len, t0);
        }
        float l = (float)e->window_loss;
        double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
        if ((st = ds_comm_all_reduce(e->comm, &l, 1, DS_REDUCE_MEAN, err)) != DS_OK)
            return st;
        record_collective(e, "loss", 1, t0);
        e->window_loss = l;
        ds_timers_stop(&e->timers, DS_TIMER_BWD_ALLREDUCE);
        ds_timers_stop(&e->timers, DS_TIMER_BWD);
        ds_timers_start(&e->timers, DS_TIMER_STEP);
    }
    double sumsq;
    st = ops->sumsq(e->be, e->grads, n, &sumsq);
    if (st != DS_OK)
        return backend_err(e, st, err);
    const double S = e->scaler.scale; /* the scale this window's backward passes used */
    int overflow = !isfinite(sumsq);
    if (e->comm && e->check_overflow) {
        /* the all-reduced gradients are the same everywhere; the flag is max-reduced anyway, so
         * that no rank can step while another skips */
        float f = (float)overflow;
        if ((st = ds_comm_all_reduce(e->comm, &f, 1, DS_REDUCE_MAX, err)) != DS_OK)
            return st;
        overflow = f > 0;
    }
    if (overflow && !e->check_overflow)
        return ds_error_set(err, DS_ERR_NUMERIC,
                            "step %lld: the gradient is not finite (inf or NaN) in %s training; "
                            "lower the learning rate or check the data",
                            (long long)e->global_steps + 1,
                            e->cfg.precision == DS_PREC_BF16 ? "bf16" : "fp32");
    e->step_scale = S;
    if (overflow) {
        /* skip: no update, no scheduler step; the scale drops (or an error at the minimum) */
        ds_error why = {0};
        if ((st = ds_loss_scaler_update(&e->scaler, 1, &why)) != DS_OK)
            return ds_error_set(err, st, "step %lld: %s", (long long)e->global_steps + 1, why.msg);
        e->skipped++;
        e->applied = 0;
    } else {
        double norm = sqrt(sumsq) / S;
        e->grad_norm = norm;
        /* DeepSpeed clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1; the
         * norm is of the unscaled gradients, and unscaling and clipping are one multiply */
        double gscale = 1.0 / S;
        if (e->cfg.gradient_clipping > 0) {
            double coef = e->cfg.gradient_clipping / (norm + 1e-6);
            if (coef < 1.0)
                gscale *= coef;
        }
        if ((st = ds_optimizer_step(&e->opt, e->master, e->grads, (float)e->lr, (float)gscale,
                                    e->round ? e->params : NULL, e->round, err)) != DS_OK)
            return st;
        /* DECISIONS.md: unscale with the scale the backward used, then update the scale */
        if ((st = ds_loss_scaler_update(&e->scaler, 0, err)) != DS_OK)
            return st;
        e->applied = 1;
        /* DeepSpeed: lr_scheduler.step() once per applied update, after optimizer.step() */
        e->applied_lr = e->lr;
        e->applied_mom = e->mom;
        e->sched_iter++;
        sched_load(e);
    }
    if ((st = ops->zero(e->be, e->grads, (size_t)n * sizeof(float))) != DS_OK)
        return backend_err(e, st, err);
    e->last_loss = e->window_loss;
    e->window_loss = 0;
    e->micro_steps++;
    e->global_steps++;
    e->global_samples += e->cfg.train_batch_size;
    ds_timers_stop(&e->timers, DS_TIMER_STEP);
    ds_timers_micro_end(&e->timers);
    ds_timers_boundary(&e->timers);
    return DS_OK;
}

int64_t ds_engine_global_steps(const ds_engine *e) { return e->global_steps; }
int64_t ds_engine_global_samples(const ds_engine *e) { return e->global_samples; }
int64_t ds_engine_micro_steps(const ds_engine *e) { return e->micro_steps; }
double ds_engine_get_lr(const ds_engine *e) { return e->lr; }
double ds_engine_get_mom(const ds_engine *e) { return e->mom; }

void ds_engine_last_lr(const ds_engine *e, double *lr, double *mom)
{
    if (lr)
        *lr = e->applied_lr;
    if (mom)
        *mom = e->applied_mom;
}

ds_status ds_engine_set_total_steps(ds_engine *e, int64_t steps, ds_error *err)
{
    ds_status st = ds_sched_set_total_steps(&e->cfg.scheduler, steps, err);
    if (st != DS_OK) {
        if (err)
            ds_error_prefix(err, "%s: ", e->cfg.source_name);
        return st;
    }
    sched_load(e);
    return DS_OK;
}

ds_status ds_engine_set_lr(ds_engine *e, double lr, ds_error *err)
{
    if (!(lr >= 0) || !isfinite(lr))
        return ds_error_set(err, DS_ERR_INVALID, "learning rate %g: expected a finite number >= 0", lr);
    e->lr = lr;
    return DS_OK;
}
double ds_engine_get_global_grad_norm(const ds_engine *e) { return e->grad_norm; }
double ds_engine_last_loss(const ds_engine *e) { return e->last_loss; }
ds_precision ds_engine_precision(const ds_engine *e) { return e->cfg.precision; }
double ds_engine_loss_scale(const ds_engine *e) { return e->scaler.scale; }
double ds_engine_last_step_loss_scale(const ds_engine *e) { return e->step_scale; }
int64_t ds_engine_skipped_steps(const ds_engine *e) { return e->skipped; }
int ds_engine_was_step_applied(const ds_engine *e) { return e->applied; }
const float *ds_engine_lamb_coeffs(const ds_engine *e)
{
    return e->cfg.optimizer.type == DS_OPTIM_LAMB && e->opt.step > 0 ? e->opt.coeffs : NULL;
}

void ds_engine_last_allreduce(const ds_engine *e, int64_t *calls, int64_t *bytes)
{
    if (calls)
        *calls = e->ar_calls;
    if (bytes)
        *bytes = e->ar_bytes;
}
const ds_timers *ds_engine_timers(const ds_engine *e) { return e->timers.enabled ? &e->timers : NULL; }

const ds_collective_record *ds_engine_last_collectives(const ds_engine *e, int *n)
{
    *n = e->n_coll;
    return e->coll;
}

const ds_config *ds_engine_config(const ds_engine *e) { return &e->cfg; }
const ds_net *ds_engine_net(const ds_engine *e) { return e->net; }
const char *ds_engine_backend_name(const ds_engine *e) { return ds_backend_describe(e->be); }

void ds_engine_memory(const ds_engine *e, size_t *params, size_t *grads, size_t *optim,
                      size_t *activations)
{
    size_t flat = (size_t)e->net->params.total * sizeof(float);
    if (params)
        *params = e->round ? 2 * flat : flat;
    if (grads)
        *grads = flat;
    if (optim)
        *optim = ds_optimizer_state_bytes(&e->opt);
    if (activations)
        *activations = ds_model_activation_bytes(e->model);
}

static ds_status tensor_copy(ds_engine *e, float *base, const char *name, float *host,
                             const float *src_host, int64_t numel, ds_error *err)
{
    int i = ds_table_find(&e->net->params, name);
    if (i < 0)
        return ds_error_set(err, DS_ERR_INVALID, "no parameter named %s", name);
    const ds_tensor_info *t = &e->net->params.t[i];
    if (t->numel != numel)
        return ds_error_set(err, DS_ERR_INVALID, "%s has %lld elements, not %lld", name,
                            (long long)t->numel, (long long)numel);
    ds_status st = src_host ? e->be->ops->upload(e->be, base + t->offset, src_host, (size_t)numel * sizeof(float))
                            : e->be->ops->download(e->be, host, base + t->offset, (size_t)numel * sizeof(float));
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

ds_status ds_engine_get_param(ds_engine *e, const char *name, float *host, int64_t numel, ds_error *err)
{
    return tensor_copy(e, e->master, name, host, NULL, numel, err);
}

ds_status ds_engine_get_grad(ds_engine *e, const char *name, float *host, int64_t numel, ds_error *err)
{
    return tensor_copy(e, e->grads, name, host, NULL, numel, err);
}

ds_status ds_engine_set_param(ds_engine *e, const char *name, const float *host, int64_t numel,
                              ds_error *err)
{
    ds_status st = tensor_copy(e, e->master, name, NULL, host, numel, err);
    if (st == DS_OK && (st = refresh_working(e)) != DS_OK)
        return backend_err(e, st, err);
    return st;
}

ds_status ds_engine_set_grad(ds_engine *e, const char *name, const float *host, int64_t numel,
                             ds_error *err)
{
    return tensor_copy(e, e->grads, name, NULL, host, numel, err);
}

ds_status ds_engine_get_output(ds_engine *e, float *host, int64_t count, ds_error *err)
{
    int64_t want = e->cfg.micro_batch * e->net->positions * e->net->out_dim;
    if (count != want)
        return ds_error_set(err, DS_ERR_INVALID, "output has %lld values, not %lld", (long long)want,
                            (long long)count);
    ds_status st = e->be->ops->download(e->be, host, ds_model_output(e->model), (size_t)count * sizeof(float));
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

/* The name a tied layer would have in a PyTorch state_dict ("lm_head.weight"): accepted on
 * load when it holds exactly the bytes of the weight it is tied to, as torch saves a shared
 * tensor under both names; anything else would be silently dropped, so it is refused. */
static int is_tied_alias(const ds_net *net, const ds_safetensors *f, const ds_st_tensor *t)
{
    for (int i = 0; i < net->n_layers; i++) {
        const ds_layer *l = &net->layers[i];
        char alias[DS_NAME_MAX + 8];
        snprintf(alias, sizeof alias, "%s.weight", l->path);
        if (l->tied && strcmp(alias, t->name) == 0) {
            const ds_st_tensor *owner = ds_st_find(f, net->params.t[l->w].name);
            return owner && owner->dtype == t->dtype && owner->ndim == t->ndim &&
                   owner->end - owner->begin == t->end - t->begin &&
                   memcmp(ds_st_data(f, owner), ds_st_data(f, t), t->end - t->begin) == 0;
        }
    }
    return 0;
}

static void append(char *buf, size_t size, const char *fmt, const char *a, const char *b)
{
    size_t used = strlen(buf);
    if (used + 1 < size)
        snprintf(buf + used, size - used, fmt, a, b);
}

ds_status ds_engine_load_weights(ds_engine *e, const char *path, ds_error *err)
{
    ds_safetensors *st_file;
    ds_status st = ds_st_open(&st_file, path, err);
    if (st != DS_OK)
        return st;
    const ds_tensor_table *tab = &e->net->params;
    char missing[512] = "", unexpected[512] = "", misshaped[512] = "";
    for (int i = 0; i < tab->n; i++) {
        const ds_tensor_info *ti = &tab->t[i];
        const ds_st_tensor *t = ds_st_find(st_file, ti->name);
        if (!t) {
            append(missing, sizeof missing, "%s%s", *missing ? ", " : "", ti->name);
            continue;
        }
        int same = t->ndim == ti->ndim && (t->dtype == DS_F32 || t->dtype == DS_BF16 || t->dtype == DS_F16);
        for (int d = 0; same && d < ti->ndim; d++)
            same = t->shape[d] == ti->shape[d];
        if (!same) {
            char have[64], want[64], item[DS_NAME_MAX + 160];
            ds_shape_str(t->ndim, t->shape, have, sizeof have);
            ds_shape_str(ti->ndim, ti->shape, want, sizeof want);
            snprintf(item, sizeof item, "%s is %s %s, expected F32/BF16/F16 %s", ti->name, ds_dtype_name(t->dtype), have, want);
            append(misshaped, sizeof misshaped, "%s%s", *misshaped ? "; " : "", item);
        }
    }
    for (int j = 0; j < st_file->n; j++) {
        const ds_st_tensor *t = &st_file->tensors[j];
        if (ds_table_find(tab, t->name) < 0 && !is_tied_alias(e->net, st_file, t))
            append(unexpected, sizeof unexpected, "%s%s", *unexpected ? ", " : "", t->name);
    }
    if (*missing || *unexpected || *misshaped) {
        char msg[DS_ERROR_MSG_MAX - 64] = "";
        if (*missing)
            append(msg, sizeof msg, "%smissing: %s", "", missing);
        if (*unexpected)
            append(msg, sizeof msg, "%sunexpected: %s", *msg ? "; " : "", unexpected);
        if (*misshaped)
            append(msg, sizeof msg, "%smis-shaped: %s", *msg ? "; " : "", misshaped);
        ds_st_close(st_file);
        return ds_error_set(err, DS_ERR_INVALID, "%s: weights do not match the network (%s)", path, msg);
    }
    for (int i = 0; i < tab->n && st == DS_OK; i++) {
        const ds_tensor_info *ti = &tab->t[i];
        const ds_st_tensor *t = ds_st_find(st_file, ti->name);
        const void *src = ds_st_data(st_file, t);
        float *h = e->host_scratch;
        for (int64_t k = 0; k < ti->numel; k++) {
            if (t->dtype == DS_F32) {
                memcpy(&h[k], (const char *)src + 4 * k, 4);
            } else {
                uint16_t u;
                memcpy(&u, (const char *)src + 2 * k, 2);
                h[k] = t->dtype == DS_BF16 ? ds_bf16_to_f32(u) : ds_f16_to_f32(u);
            }
        }
        st = e->be->ops->upload(e->be, e->master + ti->offset, h, (size_t)ti->numel * sizeof(float));
        if (st != DS_OK)
            backend_err(e, st, err);
    }
    ds_st_close(st_file);
    if (st == DS_OK && (st = refresh_working(e)) != DS_OK)
        backend_err(e, st, err);
    return st;
}

ds_status ds_engine_save_weights(ds_engine *e, const char *path, int overwrite, ds_error *err)
{
    struct stat sb;
    if (!overwrite && stat(path, &sb) == 0)
        return ds_error_set(err, DS_ERR_INVALID, "%s: exists; not overwriting it", path);
    const ds_tensor_table *tab = &e->net->params;
    size_t bytes = (size_t)tab->total * sizeof(float);
    float *host = malloc(bytes ? bytes : 1);
    ds_st_entry *ent = calloc((size_t)tab->n, sizeof *ent);
    if (!host || !ent) {
        free(host);
        free(ent);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    ds_status st = e->be->ops->download(e->be, host, e->master, bytes);
    if (st != DS_OK) {
        free(host);
        free(ent);
        return backend_err(e, st, err);
    }
    for (int i = 0; i < tab->n; i++) {
        ent[i].name = tab->t[i].name;
        ent[i].dtype = DS_F32;
        ent[i].ndim = tab->t[i].ndim;
        ent[i].shape = tab->t[i].shape;
        ent[i].data = host + tab->t[i].offset;
    }
    char steps[32];
    snprintf(steps, sizeof steps, "%lld", (long long)e->global_steps);
    const char *keys[] = {"format", "global_steps", "producer"};
    const char *vals[] = {"pt", steps, "ds " "0.1.0"};
    st = ds_st_write(path, ent, tab->n, keys, vals, 3, err);
    free(host);
    free(ent);
    return st;
}

/* ---- checkpoint state (engine.h; lib/ckpt writes and reads it) ----------------------------- */

static const char *const user_state_names[DS_USER_OPTIM_MAX_STATE] = {
    "state0", "state1", "state2", "state3", "state4", "state5", "state6", "state7"};

/* The optimizer's state buffers in the order of state_names, DeepSpeed's (torch's) names. */
static int state_buffers(ds_engine *e, float **buf, const char **names)
{
    ds_optimizer *o = &e->opt;
    int k = 0;
    switch (o->cfg.type) {
    case DS_OPTIM_ADAM:
    case DS_OPTIM_ADAMW:
    case DS_OPTIM_LAMB:
        names[k] = "exp_avg", buf[k++] = o->m;
        names[k] = "exp_avg_sq", buf[k++] = o->v;
        break;
    case DS_OPTIM_SGD:
        if (o->m)
            names[k] = "momentum_buffer", buf[k++] = o->m;
        break;
    case DS_OPTIM_ADAGRAD:
        names[k] = "sum", buf[k++] = o->m;
        break;
    case DS_OPTIM_USER:
        for (int i = 0; o->user && i < o->user->n_state; i++)
            names[k] = user_state_names[i], buf[k++] = o->state[i];
        break;
    default:
        break;
    }
    return k;
}

void ds_engine_state_info_get(const ds_engine *e, ds_engine_state_info *info)
{
    memset(info, 0, sizeof *info);
    float *buf[DS_USER_OPTIM_MAX_STATE];
    info->n_state = state_buffers((ds_engine *)e, buf, info->state_names);
    /* ZeRO: a partitioned engine reports its stage, partition_world = world_size, the
     * partition of this rank under the rule of engine.h (partition_rank = rank) and holds only
     * that range (hold_begin/hold_end = begin/end). Stage 0: rank 0 stores the one partition. */
    info->zero_stage = 0;
    info->world_size = e->world_size;
    info->comm = e->comm;
    info->rank = e->comm ? e->comm->rank : 0;
    info->numel = e->net->params.total;
    info->partition_world = 1;
    info->partition_rank = info->rank == 0 ? 0 : -1;
    info->begin = 0;
    info->end = info->rank == 0 ? info->numel : 0;
    info->hold_begin = 0;
    info->hold_end = info->numel;
    info->precision = e->cfg.precision;
    info->optimizer = e->opt.cfg.name;
}

static ds_status partition_buffer(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                  float **base, ds_error *err)
{
    ds_engine_state_info info;
    ds_engine_state_info_get(e, &info);
    if (begin < info.hold_begin || end > info.hold_end || begin > end)
        return ds_error_set(err, DS_ERR_INVALID, "elements [%lld, %lld) are outside this rank's [%lld, %lld)",
                            (long long)begin, (long long)end, (long long)info.hold_begin,
                            (long long)info.hold_end);
    float *buf[DS_USER_OPTIM_MAX_STATE];
    const char *names[DS_USER_OPTIM_MAX_STATE];
    int n = state_buffers(e, buf, names);
    if (buffer != DS_ENGINE_BUF_MASTER && (buffer < 0 || buffer >= n))
        return ds_error_set(err, DS_ERR_INVALID, "optimizer %s has no state buffer %d", e->opt.cfg.name, buffer);
    /* ZeRO: partitioned buffers hold [hold_begin, hold_end) only; subtract hold_begin here */
    *base = buffer == DS_ENGINE_BUF_MASTER ? e->master : buf[buffer];
    return DS_OK;
}

ds_status ds_engine_read_partition(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                   float *host, ds_error *err)
{
    float *base;
    ds_status st = partition_buffer(e, buffer, begin, end, &base, err);
    if (st == DS_OK && end > begin &&
        (st = e->be->ops->download(e->be, host, base + begin, (size_t)(end - begin) * sizeof(float))) != DS_OK)
        backend_err(e, st, err);
    return st;
}

ds_status ds_engine_write_partition(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                    const float *host, ds_error *err)
{
    float *base;
    ds_status st = partition_buffer(e, buffer, begin, end, &base, err);
    if (st == DS_OK && end > begin &&
        (st = e->be->ops->upload(e->be, base + begin, host, (size_t)(end - begin) * sizeof(float))) != DS_OK)
        backend_err(e, st, err);
    return st;
}

ds_status ds_engine_sync_weights(ds_engine *e, ds_error *err)
{
    /* ZeRO: all-gather the 16-bit (or fp32) partitions into the working weights here */
    ds_status st = refresh_working(e);
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

int ds_engine_at_boundary(const ds_engine *e)
{
    return e->micro_steps % e->cfg.grad_accum == 0 && !e->have_forward;
}

void ds_engine_get_scalars(const ds_engine *e, ds_engine_scalars *s)
{
    memset(s, 0, sizeof *s);
    s->global_steps = e->global_steps;
    s->global_samples = e->global_samples;
    s->micro_steps = e->micro_steps;
    s->skipped_steps = e->skipped;
    s->optimizer_step = e->opt.step;
    s->scaler = e->scaler;
    s->last_step_scale = e->step_scale;
    s->applied = e->applied;
    s->sched_iter = e->sched_iter;
    s->lr = e->lr;
    s->mom = e->mom;
    s->applied_lr = e->applied_lr;
    s->applied_mom = e->applied_mom;
    s->last_loss = e->last_loss;
    s->grad_norm = e->grad_norm;
    s->seed = e->seed;
}

ds_status ds_engine_set_scalars(ds_engine *e, const ds_engine_scalars *s, ds_error *err)
{
    if (!ds_engine_at_boundary(e))
        return ds_error_set(err, DS_ERR_INVALID, "the engine is inside an effective batch (micro-step %lld of %lld)",
                            (long long)(e->micro_steps % e->cfg.grad_accum), (long long)e->cfg.grad_accum);
    if (s->global_steps < 0 || s->global_samples < 0 || s->micro_steps < 0 || s->skipped_steps < 0 ||
        s->optimizer_step < 0 || s->sched_iter < -1 || !(s->lr >= 0) || !(s->scaler.scale > 0))
        return ds_error_set(err, DS_ERR_INVALID, "engine state out of range (negative counter, lr or loss scale)");
    e->global_steps = s->global_steps;
    e->global_samples = s->global_samples;
    e->micro_steps = s->micro_steps;
    e->skipped = s->skipped_steps;
    e->opt.step = s->optimizer_step;
    e->scaler = s->scaler;
    e->step_scale = s->last_step_scale;
    e->applied = s->applied;
    e->sched_iter = s->sched_iter;
    e->lr = s->lr;
    e->mom = s->mom;
    if (e->mom_slot && !isnan(s->mom))
        *e->mom_slot = s->mom;
    e->applied_lr = s->applied_lr;
    e->applied_mom = s->applied_mom;
    e->last_loss = s->last_loss;
    e->grad_norm = s->grad_norm;
    e->seed = s->seed;
    e->window_loss = 0;
    return DS_OK;
}
