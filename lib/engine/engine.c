/* The engine: config + network + backend + flat buffers + optimizer, and DeepSpeed's step
 * semantics (accumulation boundary, global-norm clipping, counters). No printing: the caller
 * reads the counters and decides what to show. */
#include "ds/engine.h"

#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "ds/backend.h"
#include "ds/ckpt.h"
#include "ds/dtype.h"
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
    ds_comm *dcomm;        /* the backend's communicator (NCCL) for gradient and parameter
                              collectives on device memory; NULL: comm does them */
    ds_model *model;
    float *params, *grads; /* flat, net->params.total elements each; params are what the model
                              reads: in 16-bit mode the working weights, rounded from master,
                              as 2-byte values when p16 (the model's 16-bit storage) */
    float *master;         /* fp32 master weights (== params in fp32 mode) */
    int round;             /* ds_round_mode of the 16-bit mode, 0 for fp32 */
    int p16;               /* params hold 2-byte values of round's format, not fp32 */
    ds_loss_scaler scaler;
    double step_scale;     /* the loss scale the last update used */
    int64_t skipped;
    int applied;
    int check_overflow;    /* fp16, or bf16 with check_grad_overflow */
    /* ZeRO (stage 1: optimizer state and master weights partitioned; 2: gradients too; 3: the
     * working weights too). This rank owns flat elements [pbeg, pend) (ckpt-zero.md 4.1;
     * ds_zero_partition below). */
    int zero, plan_only;
    int64_t pbeg, pend;
    size_t *zoff, *zlen;   /* per-rank blocks of one bucket (world_size entries each) */
    float *gpart;          /* stages 2, 3: this rank's averaged gradient partition */
    int master_owned;      /* master is its own allocation (not an alias of params) */
    /* nred: reductions added into gpart since it was last zeroed (the reducing thread's count) */
    struct zbucket { int64_t b0, b1; int slot, last_layer, nred; } *zb;
    int n_zb;
    float **zslot;         /* stage 2: gradient bucket buffers, n_zslot of zslot_len floats */
    int n_zslot;
    int64_t zslot_len;
    float **gptr;          /* stage 2: per tensor, where backward accumulates its gradient */
    int64_t win_calls, win_bytes; /* gradient collectives of the effective batch under way */
    int win_open;
    /* overlap_comm (stage 2): a thread reduces the buckets while backward goes on */
    struct zqueue {
        pthread_t thread;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        int started, stop, ready, *items, head, tail, running;
        int *slot_busy;        /* a slot's bucket is queued or being reduced */
        ds_status st;
        ds_error err;
    } zq;
    int *zb_open_layer;    /* per bucket: the layer whose backward first writes it */
    int z1_active;         /* overlap_comm at stage 1: this backward is the boundary's */
    /* Stage 3: the working weights too are partitioned: this rank holds [pbeg, pend) of them
     * (wpart), the tensors of at most param_persistence_threshold elements whole (pbuf, at
     * poff), and gathers each layer's other tensors into the arena when the layer runs. */
    void *wbase;           /* where working weight i is: wbase + (i - wshift) elements */
    int64_t wshift;
    void *wpart, *pbuf, *arena;
    int64_t *poff;         /* per tensor: its place in pbuf (persistent) */
    char *persist;
    const float **pptr;    /* per tensor: where the model reads its weights */
    int64_t persist_elems, pbuf_len, arena_len;
    int live_layer;        /* the layer whose tensors the arena holds (-1: none) */
    ds_optimizer opt;
    uint64_t seed;
    int64_t micro_steps, global_steps, global_samples;
    int have_forward;
    double window_loss;    /* sum over the window's micro-batches of loss / GAS */
    double last_loss;
    double grad_norm;
    double lr;
    float *host_scratch;   /* a host buffer of the largest tensor */
    uint16_t *w16_scratch; /* p16: the same for 2-byte working weights on their way */
    float *cast_x;         /* fp16.auto_cast: a micro-batch of features rounded to fp16 */
    int64_t cl_seqlen;     /* curriculum_learning: the current difficulty (positions per sample) */
    int32_t *cl_buf;       /* curriculum_learning: a micro-batch's tokens and targets, cut short */
    double pld_theta;      /* progressive_layer_drop: the last training forward's theta */
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
    if (s->type == DS_SCHED_ONE_CYCLE && s->cycle_momentum && e->cfg.optimizer.type == DS_OPTIM_SGD)
        e->cfg.optimizer.momentum_cycled = 1; /* its momentum may start at 0 and grow */
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

static void zq_stop(ds_engine *e);

void ds_engine_destroy(ds_engine *e)
{
    if (!e)
        return;
    zq_stop(e);
    free(e->zb_open_layer);
    if (e->be) {
        ds_optimizer_free(&e->opt);
        ds_model_destroy(e->model);
        if (e->params)
            e->be->ops->free(e->be, e->params);
        if (e->wpart)
            e->be->ops->free(e->be, e->wpart);
        if (e->pbuf)
            e->be->ops->free(e->be, e->pbuf);
        if (e->arena)
            e->be->ops->free(e->be, e->arena);
        if (e->master && e->master_owned)
            e->be->ops->free(e->be, e->master);
        if (e->gpart)
            e->be->ops->free(e->be, e->gpart);
        for (int i = 0; i < e->n_zslot; i++)
            if (e->zslot && e->zslot[i])
                e->be->ops->free(e->be, e->zslot[i]);
        if (e->grads)
            e->be->ops->free(e->be, e->grads);
        ds_comm_destroy(e->dcomm);
        ds_backend_destroy(e->be);
    }
    ds_net_free(e->net);
    if (e->cfg_loaded)
        ds_config_free(&e->cfg);
    free(e->host_scratch);
    free(e->w16_scratch);
    free(e->cast_x);
    free(e->cl_buf);
    free(e->coll);
    free(e->zoff);
    free(e->zlen);
    free(e->zb);
    free(e->zslot);
    free(e->gptr);
    free(e->pptr);
    free(e->poff);
    free(e->persist);
    free(e);
}

/* Element i of the working weights (2 bytes each when p16). */
static void *wptr(const ds_engine *e, int64_t i)
{
    return e->p16 ? (void *)((uint16_t *)e->wbase + (i - e->wshift)) : (void *)((float *)e->wbase + (i - e->wshift));
}

static size_t wsize(const ds_engine *e) { return e->p16 ? 2 : sizeof(float); }

/* count working weights at dst (backend memory, the working format) from host fp32 values,
 * through the host scratch when they are 2-byte values (chunks of the largest tensor's size). */
static ds_status upload_w(ds_engine *e, void *dst, const float *host, int64_t count)
{
    const ds_backend_ops *ops = e->be->ops;
    if (!e->p16)
        return ops->upload(e->be, dst, host, (size_t)count * sizeof(float));
    uint16_t *h = e->w16_scratch;
    const int64_t chunk = e->largest > 0 ? e->largest : 1;
    ds_status st = DS_OK;
    for (int64_t i0 = 0; i0 < count && st == DS_OK; i0 += chunk) {
        int64_t len = count - i0 < chunk ? count - i0 : chunk;
        for (int64_t i = 0; i < len; i++)
            h[i] = e->round == DS_ROUND_BF16 ? ds_f32_to_bf16(host[i0 + i]) : ds_f32_to_f16(host[i0 + i]);
        st = ops->upload(e->be, (uint16_t *)dst + i0, h, (size_t)len * 2);
    }
    return st;
}

/* Working weights [off, off + count) (held by this rank) from or to host fp32 values. */
static ds_status upload_working(ds_engine *e, int64_t off, const float *host, int64_t count)
{
    return upload_w(e, wptr(e, off), host, count);
}

static ds_status download_working(ds_engine *e, int64_t off, float *host, int64_t count)
{
    const ds_backend_ops *ops = e->be->ops;
    if (!e->p16)
        return ops->download(e->be, host, wptr(e, off), (size_t)count * sizeof(float));
    uint16_t *h = e->w16_scratch;
    const int64_t chunk = e->largest > 0 ? e->largest : 1;
    ds_status st = DS_OK;
    for (int64_t i0 = 0; i0 < count && st == DS_OK; i0 += chunk) {
        int64_t len = count - i0 < chunk ? count - i0 : chunk;
        if ((st = ops->download(e->be, h, wptr(e, off + i0), (size_t)len * 2)) != DS_OK)
            break;
        for (int64_t i = 0; i < len; i++)
            host[i0 + i] = e->round == DS_ROUND_BF16 ? ds_bf16_to_f32(h[i]) : ds_f16_to_f32(h[i]);
    }
    return st;
}

static int64_t align16(int64_t n) { return (n + DS_TENSOR_ALIGN - 1) / DS_TENSOR_ALIGN * DS_TENSOR_ALIGN; }

/* Stage 3: the element range [lo, hi) of [off, off + count) that this rank holds. */
static void held(const ds_engine *e, int64_t off, int64_t count, int64_t *lo, int64_t *hi)
{
    *lo = off;
    *hi = off + count;
    if (e->zero == 3) {
        *lo = off > e->pbeg ? off : e->pbeg;
        *hi = off + count < e->pend ? off + count : e->pend;
    }
}

/* Set flat elements [off, off + count) of the weights from host fp32 values: the master
 * weights (this rank's partition of them under ZeRO) and the working weights the model reads
 * (in 16-bit mode rounded to the format; under ZeRO every rank holds them all). */
static ds_status write_weights(ds_engine *e, int64_t off, const float *host, int64_t count)
{
    const ds_backend_ops *ops = e->be->ops;
    ds_status st = DS_OK;
    int64_t wlo, whi; /* the working weights this rank holds (all of them below stage 3) */
    held(e, off, count, &wlo, &whi);
    if (whi > wlo && (st = upload_working(e, wlo, host + (wlo - off), whi - wlo)) == DS_OK && e->round && !e->p16)
        st = ops->round16(e->be, wptr(e, wlo), whi - wlo, e->round);
    /* stage 3: the whole copies of persistent tensors, and no layer's gather is current now.
     * (The tensors in [off, off + count) only: the first by bisection, as the table is in offset
     * order; initialization writes one tensor at a time.) */
    const ds_tensor_table *tab = &e->net->params;
    int t0 = 0;
    for (int hi = tab->n; e->persist && t0 < hi;) {
        int mid = t0 + (hi - t0) / 2;
        if (tab->t[mid].offset + tab->t[mid].numel <= off)
            t0 = mid + 1;
        else
            hi = mid;
    }
    for (int t = t0; st == DS_OK && e->persist && t < tab->n && tab->t[t].offset < off + count; t++) {
        const ds_tensor_info *ti = &tab->t[t];
        int64_t lo = off > ti->offset ? off : ti->offset;
        int64_t hi = off + count < ti->offset + ti->numel ? off + count : ti->offset + ti->numel;
        if (!e->persist[t] || hi <= lo)
            continue;
        void *dst = (char *)e->pbuf + (size_t)(e->poff[t] + lo - ti->offset) * wsize(e);
        if ((st = upload_w(e, dst, host + (lo - off), hi - lo)) == DS_OK && e->round && !e->p16)
            st = ops->round16(e->be, dst, hi - lo, e->round);
    }
    e->live_layer = -1;
    if (st != DS_OK || !e->round)
        return st;
    int64_t lo = off > e->pbeg ? off : e->pbeg, hi = off + count < e->pend ? off + count : e->pend;
    if (hi > lo)
        st = ops->upload(e->be, e->master + (lo - e->pbeg), host + (lo - off), (size_t)(hi - lo) * sizeof(float));
    return st;
}

/* Flat elements [off, off + count) of the fp32 master weights to the host. Under ZeRO with
 * 16-bit training a rank holds only its partition of them: other elements are read from the
 * (rounded) working weights; under stage 3 they read as 0 (host_gather brings them). */
static ds_status read_master(ds_engine *e, int64_t off, float *host, int64_t count)
{
    const ds_backend_ops *ops = e->be->ops;
    if (e->zero == 3) {
        int64_t lo, hi;
        held(e, off, count, &lo, &hi);
        memset(host, 0, (size_t)count * sizeof(float));
        return hi > lo ? ops->download(e->be, host + (lo - off), e->master + (lo - e->pbeg), (size_t)(hi - lo) * sizeof(float))
                       : DS_OK;
    }
    if (!e->round)
        return ops->download(e->be, host, e->params + off, (size_t)count * sizeof(float));
    ds_status st = DS_OK;
    if (e->zero)
        st = download_working(e, off, host, count);
    int64_t lo = off > e->pbeg ? off : e->pbeg, hi = off + count < e->pend ? off + count : e->pend;
    if (st == DS_OK && hi > lo)
        st = ops->download(e->be, host + (lo - off), e->master + (lo - e->pbeg), (size_t)(hi - lo) * sizeof(float));
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

/* op: the collective that ran (all_reduce, reduce_scatter, all_gather, broadcast); what: the
 * data (gradients, parameters: the gathers after the update, layer weights: ZeRO-3's gathers in
 * the passes, loss) */
static void record_collective_e(ds_engine *e, const char *op, const char *what, int64_t elements, size_t esz,
                                double t0)
{
    if (!e->timers.enabled)
        return;
    if (e->n_coll >= e->cap_coll) { /* ZeRO's buckets and gathers: more than the first guess */
        int cap = e->cap_coll * 2 + 8;
        ds_collective_record *q = realloc(e->coll, (size_t)cap * sizeof *q);
        if (!q)
            return; /* the record only: the run goes on */
        e->coll = q;
        e->cap_coll = cap;
    }
    ds_collective_record *c = &e->coll[e->n_coll++];
    c->op = op;
    c->what = what;
    c->elements = elements;
    c->bytes = elements * (int64_t)esz;
    c->ms = (ds_prof_now_s() - t0) * 1e3;
}

static void record_collective(ds_engine *e, const char *op, const char *what, int64_t elements, double t0)
{
    record_collective_e(e, op, what, elements, sizeof(float), t0);
}


/* The communicator for collectives over backend memory (gradients, parameters). */
#define GCOMM(e) ((e)->dcomm ? (e)->dcomm : (e)->comm)

/* A GPU backend's own communicator (NCCL) over the ranks of e->comm: every rank first checks
 * that it can make one (and all agree, so no rank waits for one that cannot); rank 0 makes the
 * id and publishes it in the rendezvous store under a key numbered by how many such
 * communicators this rank has made (the same count on every rank); every rank joins. */
static ds_status dcomm_create(ds_engine *e, ds_store *store, ds_error *err)
{
    const ds_backend_ops *ops = e->be->ops;
    const int rank = e->comm->rank, size = e->comm->size;
    if (!ops->comm_id || !ops->comm_create)
        return ds_error_set(err, DS_ERR_UNSUPPORTED, "data parallelism on backend %s is not built yet", ops->name);
    if (!store)
        return ds_error_set(err, DS_ERR_INVALID,
                            "data parallelism on backend %s needs the rendezvous store (ds_engine_options.store) "
                            "to set up its communicator", ops->name);
    ds_error mine = {0};
    ds_status st = ops->comm_id(e->be, NULL, 0, NULL, &mine);
    float bad = st != DS_OK ? (float)(rank + 1) : 0.0f;
    ds_status cst = ds_comm_all_reduce(e->comm, &bad, 1, DS_REDUCE_MAX, err);
    if (cst != DS_OK)
        return cst;
    if (st != DS_OK) {
        *err = mine;
        return st;
    }
    if (bad > 0)
        return ds_error_set(err, DS_ERR_UNSUPPORTED, "rank %d cannot make a %s communicator (see its error)",
                            (int)bad - 1, ops->name);
    char key[96];
    int64_t seq = 0;
    snprintf(key, sizeof key, "ds/devcomm/count/%d", rank);
    if ((st = ds_store_add(store, key, 1, &seq, err)) != DS_OK)
        return st;
    snprintf(key, sizeof key, "ds/devcomm/%lld/id", (long long)seq);
    unsigned char id[1 + 512];
    size_t len = 0;
    if (rank == 0) { /* the first byte says whether the rest is an id or rank 0's error */
        st = ops->comm_id(e->be, id + 1, sizeof id - 1, &len, &mine);
        id[0] = st == DS_OK;
        if (st != DS_OK) {
            len = strlen(mine.msg) + 1 < sizeof id - 1 ? strlen(mine.msg) + 1 : sizeof id - 1;
            memcpy(id + 1, mine.msg, len);
        }
        ds_status pst = ds_store_set(store, key, id, len + 1, err);
        if (st != DS_OK) {
            *err = mine;
            return st;
        }
        if (pst != DS_OK)
            return pst;
    } else {
        void *v = NULL;
        size_t vlen = 0;
        if ((st = ds_store_get(store, key, &v, &vlen, err)) != DS_OK)
            return st;
        int ok = vlen >= 1 && ((unsigned char *)v)[0] == 1 && vlen - 1 <= sizeof id - 1;
        if (!ok) {
            st = ds_error_set(err, DS_ERR_BACKEND, "rank 0 could not make the %s communicator's id: %.*s",
                              ops->name, vlen > 1 ? (int)(vlen - 2) : 0, vlen > 1 ? (char *)v + 1 : "");
            free(v);
            return st;
        }
        len = vlen - 1;
        memcpy(id + 1, (char *)v + 1, len);
        free(v);
    }
    if ((st = ops->comm_create(e->be, id + 1, len, rank, size, 0, &e->dcomm, err)) != DS_OK)
        return st;
    return DS_OK;
}

/* ---- ZeRO stages 1 and 2 (3 reduces its gradients as 2 does) ------------------------------- */

/* Partitions: the flat buffer of N elements is padded to Np, a multiple of 16 * W (every
 * partition starts 64-byte aligned), and rank r owns [r P, min((r+1) P, N)) with P = Np / W;
 * the padding is never stored. One rule for training and checkpoints: lib/ckpt has it. */
void ds_zero_partition(int64_t n, int world, int rank, int64_t *begin, int64_t *end)
{
    ds_ckpt_partition_range(n, world, rank, begin, end);
}

/* Blocks of the bucket [b0, b1) owned by each rank, relative to b0. */
static void zero_blocks(ds_engine *e, int64_t b0, int64_t b1)
{
    for (int r = 0; r < e->world_size; r++) {
        int64_t lo, hi;
        ds_zero_partition(e->net->params.total, e->world_size, r, &lo, &hi);
        lo = lo > b0 ? lo : b0;
        hi = hi < b1 ? hi : b1;
        e->zoff[r] = hi > lo ? (size_t)(lo - b0) : 0;
        e->zlen[r] = hi > lo ? (size_t)(hi - lo) : 0;
    }
}

/* The gradient bucket [b0, b1) at buf, summed over the ranks into each owner's block and
 * averaged (DeepSpeed: pre-divided; with gradient_predivide_factor f: /f before, *f/W after). */
static ds_status zero_reduce(ds_engine *e, float *buf, int64_t b0, int64_t b1, ds_error *err)
{
    const ds_backend_ops *ops = e->be->ops;
    int64_t len = b1 - b0;
    ds_status st;
    if (!e->comm || len <= 0)
        return DS_OK;
    const double W = e->world_size, f = e->cfg.gradient_predivide_factor;
    const float pre = (float)(e->cfg.prescale_gradients ? 1.0 / W : 1.0 / f);
    const float post = (float)(e->cfg.prescale_gradients ? 1.0 : f / W);
    double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
    zero_blocks(e, b0, b1);
    if (pre != 1.0f && (st = ops->scale(e->be, buf, len, pre)) != DS_OK)
        return backend_err(e, st, err);
    if (e->cfg.zero.reduce_scatter)
        st = ds_comm_reduce_scatter_v(GCOMM(e), buf, e->zoff, e->zlen, DS_REDUCE_SUM, err);
    else
        st = ds_comm_all_reduce(GCOMM(e), buf, (size_t)len, DS_REDUCE_SUM, err);
    if (st != DS_OK)
        return st;
    int r = e->comm->rank;
    if (post != 1.0f && e->zlen[r] && (st = ops->scale(e->be, buf + e->zoff[r], (int64_t)e->zlen[r], post)) != DS_OK)
        return backend_err(e, st, err);
    e->win_calls++;
    e->win_bytes += len * (int64_t)sizeof(float);
    record_collective(e, e->cfg.zero.reduce_scatter ? "reduce_scatter" : "all_reduce", "gradients", len, t0);
    return DS_OK;
}

/* After the update: every rank's partition of the working weights to every rank, in
 * allgather_bucket_size buckets (or, with allgather_partitions false, which disable_allgather
 * sets too, one broadcast per owner). */
static ds_status z3_refresh(ds_engine *e, ds_error *err);

static ds_status zero_gather_params(ds_engine *e, ds_error *err)
{
    if (e->zero == 3) /* stage 3 gathers a layer's weights when it runs */
        return z3_refresh(e, err);
    if (!e->comm)
        return DS_OK;
    const int64_t n = e->net->params.total, bucket = e->cfg.zero.allgather_bucket_size;
    const int gather = e->cfg.zero.allgather_partitions;
    ds_status st = DS_OK;
    for (int64_t b0 = 0; b0 < n && st == DS_OK; b0 += bucket) {
        int64_t b1 = b0 + bucket < n ? b0 + bucket : n;
        double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
        zero_blocks(e, b0, b1);
        if (gather) {
            st = ds_comm_all_gather_v(GCOMM(e), wptr(e, b0), e->zoff, e->zlen, wsize(e), err);
        } else {
            for (int r = 0; r < e->world_size && st == DS_OK; r++)
                if (e->zlen[r])
                    st = ds_comm_broadcast(GCOMM(e), wptr(e, b0 + (int64_t)e->zoff[r]), e->zlen[r] * wsize(e), r, err);
        }
        record_collective_e(e, gather ? "all_gather" : "broadcast", "parameters", b1 - b0, wsize(e), t0);
    }
    return st;
}

/* Tensors whose gradient a layer's backward writes (and whose weights its passes read). */
static int layer_tensors(const ds_layer *l, int out[4])
{
    int k = 0;
    const int cand[4] = {l->w, l->b, l->kind == DS_LAYER_ATTENTION ? l->w2 : -1,
                         l->kind == DS_LAYER_ATTENTION ? l->b2 : -1};
    for (int i = 0; i < 4; i++)
        if (cand[i] >= 0)
            out[k++] = cand[i];
    return k;
}

/* ---- ZeRO stage 3 ------------------------------------------------------------------------- */

/* Working weights [o, o + n) of every rank into dst (backend memory, the working format): this
 * rank's block copied in, then all-gathered. Every rank makes the same calls in the same order
 * (the layers' passes, the step). */
static ds_status z3_gather(ds_engine *e, int64_t o, int64_t n, void *dst, const char *what, ds_error *err)
{
    const size_t ws = wsize(e);
    const int r = e->comm->rank;
    double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
    ds_status st;
    zero_blocks(e, o, o + n);
    if (e->zlen[r] &&
        (st = e->be->ops->copy(e->be, (char *)dst + e->zoff[r] * ws, wptr(e, o + (int64_t)e->zoff[r]), e->zlen[r] * ws)) != DS_OK)
        return backend_err(e, st, err);
    if ((st = ds_comm_all_gather_v(GCOMM(e), dst, e->zoff, e->zlen, ws, err)) != DS_OK)
        return st;
    if (e->win_open) /* (an eval's gathers belong to no effective batch) */
        record_collective_e(e, "all_gather", what, n, ws, t0);
    return DS_OK;
}

/* Does the layer read a tensor that is not persistent (one its passes must gather)? */
static int z3_gathers_for(const ds_engine *e, int layer)
{
    int ts[4], k = layer_tensors(&e->net->layers[layer], ts);
    for (int j = 0; j < k; j++)
        if (!e->persist[ts[j]])
            return 1;
    return 0;
}

/* A layer's tensors that are not persistent, gathered into the arena (DeepSpeed's fetch before
 * a module's forward or backward); the previous layer's are released by it. */
static ds_status z3_gather_layer(ds_engine *e, int layer, ds_error *err)
{
    int ts[4], k = layer_tensors(&e->net->layers[layer], ts);
    int64_t a = 0;
    e->live_layer = -1;
    for (int j = 0; j < k; j++) {
        const ds_tensor_info *t = &e->net->params.t[ts[j]];
        if (e->persist[ts[j]])
            continue;
        void *dst = (char *)e->arena + (size_t)a * wsize(e);
        ds_status st = z3_gather(e, t->offset, t->numel, dst, "layer weights", err);
        if (st != DS_OK)
            return st;
        e->pptr[ts[j]] = dst;
        a += align16(t->numel);
    }
    e->live_layer = layer;
    return DS_OK;
}

static ds_status zq_fetch(ds_engine *e, int layer, ds_error *err);

/* The model's fetch hook: the layer's weights, unless the arena holds them already (a layer's
 * backward right after its forward, as the last layer's is: DeepSpeed's reuse). With overlap_comm
 * the gather runs on the communication thread, in order with the gradient reductions queued
 * before it (the ranks' collectives stay in one order). */
static ds_status z3_fetch(void *ctx, int layer, ds_error *err)
{
    ds_engine *e = ctx;
    if (e->live_layer == layer || !z3_gathers_for(e, layer)) /* (no wait behind the reductions) */
        return DS_OK;
    return e->zq.started ? zq_fetch(e, layer, err) : z3_gather_layer(e, layer, err);
}

/* After the weights changed (a step, a load): the persistent tensors gathered whole again, runs
 * of consecutive ones in one collective (their places in pbuf follow the flat layout), and no
 * layer's gather current any more. */
static ds_status z3_refresh(ds_engine *e, ds_error *err)
{
    const ds_tensor_table *tab = &e->net->params;
    e->live_layer = -1;
    if (!e->comm)
        return DS_OK;
    for (int t = 0; t < tab->n;) {
        if (!e->persist[t]) {
            t++;
            continue;
        }
        int u = t;
        while (u + 1 < tab->n && e->persist[u + 1] && e->poff[u + 1] - e->poff[t] == tab->t[u + 1].offset - tab->t[t].offset)
            u++;
        int64_t o = tab->t[t].offset, n = tab->t[u].offset + tab->t[u].numel - o;
        ds_status st = z3_gather(e, o, n, (char *)e->pbuf + (size_t)e->poff[t] * wsize(e), "parameters", err);
        if (st != DS_OK)
            return st;
        t = u + 1;
    }
    return DS_OK;
}

/* Stage 3's buffers: persistent tensors (DeepSpeed's rule, in the table's order: at most
 * param_persistence_threshold elements, while their total stays within
 * model_persistence_threshold), and an arena for the largest layer's other tensors. One rank
 * holds the whole partition: the model reads it in place. */
static ds_status z3_setup(ds_engine *e, ds_error *err)
{
    const ds_tensor_table *tab = &e->net->params;
    const size_t nt = (size_t)(tab->n ? tab->n : 1);
    e->pptr = calloc(nt, sizeof *e->pptr);
    e->poff = calloc(nt, sizeof *e->poff);
    e->persist = calloc(nt, 1);
    if (!e->pptr || !e->poff || !e->persist)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    e->live_layer = -1;
    const int multi = e->world_size > 1; /* (a planning engine has no communicator) */
    if (multi) {
        const ds_zero_config *z = &e->cfg.zero;
        for (int t = 0; t < tab->n; t++) {
            int64_t n = tab->t[t].numel;
            if (n > z->model_persistence_threshold - e->persist_elems)
                continue;
            if (n <= z->param_persistence_threshold) {
                e->persist[t] = 1;
                e->poff[t] = e->pbuf_len;
                e->pbuf_len += align16(n);
                e->persist_elems += n;
            }
        }
        for (int i = 0; i < e->net->n_layers; i++) {
            int ts[4], k = layer_tensors(&e->net->layers[i], ts);
            int64_t a = 0;
            for (int j = 0; j < k; j++)
                a += e->persist[ts[j]] ? 0 : align16(tab->t[ts[j]].numel);
            if (a > e->arena_len)
                e->arena_len = a;
        }
        e->pbuf = e->be->ops->alloc(e->be, (size_t)(e->pbuf_len ? e->pbuf_len : 1) * wsize(e));
        e->arena = e->be->ops->alloc(e->be, (size_t)(e->arena_len ? e->arena_len : 1) * wsize(e));
        if (!e->pbuf || !e->arena)
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory for ZeRO-3's gathered parameters (%lld elements)",
                                (long long)(e->pbuf_len + e->arena_len));
    }
    for (int t = 0; t < tab->n; t++)
        e->pptr[t] = !multi ? wptr(e, tab->t[t].offset)
                   : e->persist[t] ? (const float *)(void *)((char *)e->pbuf + (size_t)e->poff[t] * wsize(e)) : NULL;
    ds_model_set_param_ptrs(e->model, e->pptr);
    if (multi)
        ds_model_set_fetch_hook(e->model, z3_fetch, e);
    return DS_OK;
}

/* The first backward of an effective batch starts a new window of gradient collectives. */
static void window_open(ds_engine *e)
{
    if (e->win_open)
        return;
    e->win_open = 1;
    e->win_calls = e->win_bytes = 0;
    e->n_coll = 0;
}

static ds_status zero_reduce_bucket(ds_engine *e, int k, ds_error *err);

/* The queue's ring: every bucket at most once (a bucket is queued again only after its slot
 * was freed) and one stage-3 gather (the main thread waits for it). */
#define ZQ_CAP(e) ((e)->n_zb + 2)

/* overlap_comm: the worker takes bucket indices in order and reduces them; the slot of a
 * bucket is busy until its reduction is done. One worker, so the collectives keep the same
 * order on every rank. */
static void *zq_main(void *arg)
{
    ds_engine *e = arg;
    struct zqueue *q = &e->zq;
    ds_status ist = e->be->ops->thread_init ? e->be->ops->thread_init(e->be) : DS_OK;
    pthread_mutex_lock(&q->mu);
    if (ist != DS_OK) { /* every reduction fails with the backend's message */
        q->st = ist;
        snprintf(q->err.msg, sizeof q->err.msg, "overlap_comm thread: %.900s", e->be->err.msg);
        q->err.code = ist;
    }
    q->ready = 1; /* thread_init is done (zq_start waits for it) */
    pthread_cond_broadcast(&q->cv);
    for (;;) {
        while (q->head == q->tail && !q->stop)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->head == q->tail && q->stop)
            break;
        int k = q->items[q->head % ZQ_CAP(e)];
        q->running = 1;
        pthread_mutex_unlock(&q->mu);
        ds_error err = {0};
        /* k < 0: stage 3's gather of layer -k - 1 */
        ds_status st = q->st != DS_OK ? DS_OK : k < 0 ? z3_gather_layer(e, -k - 1, &err) : zero_reduce_bucket(e, k, &err);
        pthread_mutex_lock(&q->mu);
        if (st != DS_OK && q->st == DS_OK) {
            q->st = st;
            q->err = err;
        }
        q->head++;
        q->running = 0;
        if (e->zero >= 2 && k >= 0)
            q->slot_busy[e->zb[k].slot] = 0;
        pthread_cond_broadcast(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static ds_status zq_start(ds_engine *e, ds_error *err)
{
    struct zqueue *q = &e->zq;
    q->items = calloc((size_t)ZQ_CAP(e), sizeof(int));
    q->slot_busy = calloc((size_t)(e->n_zslot ? e->n_zslot : 1), sizeof(int));
    if (!q->items || !q->slot_busy)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (pthread_create(&q->thread, NULL, zq_main, e) != 0) {
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->cv);
        return ds_error_set(err, DS_ERR_IO, "overlap_comm: cannot start the communication thread");
    }
    q->started = 1;
    /* the backend's thread_init runs before the engine's thread calls it again (it may change
     * what the backend does with one thread: the CUDA side stream) */
    pthread_mutex_lock(&q->mu);
    while (!q->ready)
        pthread_cond_wait(&q->cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
    return DS_OK;
}

static void zq_stop(ds_engine *e)
{
    struct zqueue *q = &e->zq;
    if (q->started) {
        pthread_mutex_lock(&q->mu);
        q->stop = 1;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->thread, NULL);
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->cv);
        q->started = 0;
    }
    free(q->items);
    free(q->slot_busy);
    q->items = q->slot_busy = NULL;
}

/* Stage 3 with overlap_comm: the layer's gather on the communication thread, after the
 * reductions queued before it; returns when it is done (or the first failure of the thread). */
static ds_status zq_fetch(ds_engine *e, int layer, ds_error *err)
{
    struct zqueue *q = &e->zq;
    pthread_mutex_lock(&q->mu);
    if (q->tail - q->head >= ZQ_CAP(e)) {
        pthread_mutex_unlock(&q->mu);
        return ds_error_set(err, DS_ERR_INTERNAL, "overlap_comm: the communication queue is full");
    }
    int pos = q->tail;
    q->items[q->tail % ZQ_CAP(e)] = -1 - layer;
    q->tail++;
    pthread_cond_broadcast(&q->cv);
    while (q->head <= pos)
        pthread_cond_wait(&q->cv, &q->mu);
    ds_status st = q->st;
    if (st != DS_OK && err)
        *err = q->err;
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* Wait for every queued reduction; report the first failure. */
static ds_status zq_drain(ds_engine *e, ds_error *err)
{
    struct zqueue *q = &e->zq;
    if (!q->started)
        return DS_OK;
    pthread_mutex_lock(&q->mu);
    while (q->head != q->tail || q->running)
        pthread_cond_wait(&q->cv, &q->mu);
    ds_status st = q->st;
    if (st != DS_OK && err)
        *err = q->err;
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* overlap_comm: wait until the slots of the buckets that layer's backward starts writing are
 * free (their previous bucket reduced); the first failure of the worker is returned. */
static ds_status zq_wait_slots(ds_engine *e, int layer, ds_error *err)
{
    struct zqueue *q = &e->zq;
    pthread_mutex_lock(&q->mu);
    for (int k = 0; k < e->n_zb; k++)
        if (e->zb_open_layer[k] == layer)
            while (q->slot_busy[e->zb[k].slot] && q->st == DS_OK)
                pthread_cond_wait(&q->cv, &q->mu);
    ds_status st = q->st;
    if (st != DS_OK && err)
        *err = q->err;
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* Stage 2: a bucket's gradients are complete after the backward of the lowest layer that
 * writes any of its tensors; then it is reduced, this rank's block is added to its gradient
 * partition, and the bucket buffer is cleared for its next user. */
static ds_status zero_reduce_bucket(ds_engine *e, int k, ds_error *err)
{
    const ds_backend_ops *ops = e->be->ops;
    ds_status st;
    struct zbucket *b = &e->zb[k];
    if (e->zero == 1) { /* overlap_comm at stage 1: the flat buffer, in place, at the boundary */
        float *g = e->grads + b->b0;
        if (e->round == DS_ROUND_FP16 && (st = ops->round16(e->be, g, b->b1 - b->b0, e->round)) != DS_OK)
            return backend_err(e, st, err);
        return zero_reduce(e, g, b->b0, b->b1, err);
    }
    float *buf = e->zslot[b->slot];
    int64_t len = b->b1 - b->b0;
    /* fp16 gradients are fp16 numbers (what DeepSpeed's fp16 .grad holds) */
    if (e->round == DS_ROUND_FP16 && (st = ops->round16(e->be, buf, len, e->round)) != DS_OK)
        return backend_err(e, st, err);
    if ((st = zero_reduce(e, buf, b->b0, b->b1, err)) != DS_OK)
        return st;
    int64_t lo = b->b0 > e->pbeg ? b->b0 : e->pbeg, hi = b->b1 < e->pend ? b->b1 : e->pend;
    if (hi > lo && (st = ops->accumulate(e->be, buf + (lo - b->b0), e->gpart + (lo - e->pbeg), hi - lo, 1)) != DS_OK)
        return backend_err(e, st, err);
    /* fp16 with gradient accumulation: the partition's running sum over the micro-batches is an
     * fp16 number, as stages 0 and 1 keep theirs (DeepSpeed's fp16 gradients): a sum past fp16's
     * range overflows at every stage alike, so the stage does not decide which steps are
     * skipped. The first micro-batch's reduction is left as it is (at one accumulation step the
     * stages keep giving the same bits: stage 0's average over the ranks is fp32 too). */
    if (hi > lo && e->round == DS_ROUND_FP16 && b->nred > 0 &&
        (st = ops->round16(e->be, e->gpart + (lo - e->pbeg), hi - lo, e->round)) != DS_OK)
        return backend_err(e, st, err);
    b->nred++;
    if ((st = ops->zero(e->be, buf, (size_t)len * sizeof(float))) != DS_OK)
        return backend_err(e, st, err);
    return DS_OK;
}

static ds_status zero2_hook(void *ctx, int layer, ds_error *err)
{
    ds_engine *e = ctx;
    ds_status st;
    struct zqueue *q = &e->zq;
    if (e->zero == 1 && !e->z1_active) /* stage 1 reduces at the boundary micro-step only */
        return DS_OK;
    for (int k = 0; k < e->n_zb; k++) {
        if (e->zb[k].last_layer != layer)
            continue;
        if (!q->started) {
            if ((st = zero_reduce_bucket(e, k, err)) != DS_OK)
                return st;
            continue;
        }
        pthread_mutex_lock(&q->mu);
        if (q->tail - q->head >= ZQ_CAP(e)) {
            pthread_mutex_unlock(&q->mu);
            return ds_error_set(err, DS_ERR_INTERNAL, "overlap_comm: the communication queue is full");
        }
        if (e->zero >= 2)
            q->slot_busy[e->zb[k].slot] = 1;
        q->items[q->tail % ZQ_CAP(e)] = k;
        q->tail++;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
    }
    if (!q->started || e->zero == 1)
        return DS_OK;
    /* the buckets the next layer down starts writing need their slots back */
    return zq_wait_slots(e, layer - 1, err);
}

/* Stage 2 buckets: tensors in reverse flat order (the order backward produces them) grouped
 * up to reduce_bucket_size elements (a larger tensor alone); each bucket gets a buffer slot,
 * reused once the bucket is reduced: the slots needed are found by walking the backward order
 * (a tied embedding keeps its bucket open from the head to the bottom). */
static ds_status zero2_setup(ds_engine *e, ds_error *err)
{
    const ds_tensor_table *tab = &e->net->params;
    const ds_net *net = e->net;
    const int nt = tab->n;
    int *tb = malloc(sizeof(int) * (size_t)(nt ? nt : 1));
    int *tmin = malloc(sizeof(int) * (size_t)(nt ? nt : 1));
    e->zb = calloc((size_t)(nt ? nt : 1), sizeof *e->zb);
    e->zb_open_layer = malloc(sizeof(int) * (size_t)(nt ? nt : 1));
    e->gptr = calloc((size_t)(nt ? nt : 1), sizeof *e->gptr);
    int *open = calloc((size_t)(nt ? nt : 1), sizeof(int));
    int *slot_busy = calloc((size_t)(nt ? nt : 1), sizeof(int));
    ds_status st = DS_OK;
    if (!tb || !tmin || !e->zb || !e->gptr || !open || !slot_busy || !e->zb_open_layer) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto done;
    }
    const int64_t limit = e->cfg.zero.reduce_bucket_size;
    for (int t = nt - 1; t >= 0; t--) {
        int64_t b0 = tab->t[t].offset, b1 = b0 + tab->t[t].numel;
        struct zbucket *cur = e->n_zb ? &e->zb[e->n_zb - 1] : NULL;
        if (cur && cur->b1 - b0 <= limit) {
            cur->b0 = b0;
        } else {
            cur = &e->zb[e->n_zb++];
            cur->b0 = b0;
            cur->b1 = b1;
        }
        tb[t] = e->n_zb - 1;
    }
    for (int t = 0; t < nt; t++)
        tmin[t] = -1;
    for (int i = 0; i < net->n_layers; i++) {
        int ts[4], k = layer_tensors(&net->layers[i], ts);
        for (int j = 0; j < k; j++)
            if (tmin[ts[j]] < 0)
                tmin[ts[j]] = i;
    }
    for (int k = 0; k < e->n_zb; k++) {
        e->zb[k].last_layer = INT32_MAX;
        e->zb_open_layer[k] = -2; /* never written: no slot to wait for */
    }
    for (int t = 0; t < nt; t++) {
        int l = tmin[t] < 0 ? 0 : tmin[t];
        if (l < e->zb[tb[t]].last_layer)
            e->zb[tb[t]].last_layer = l;
    }
    /* walk the backward order to assign slots */
    for (int i = net->n_layers - 1; i >= 0; i--) {
        int ts[4], k = layer_tensors(&net->layers[i], ts);
        for (int j = 0; j < k; j++) {
            int b = tb[ts[j]];
            if (!open[b]) {
                e->zb_open_layer[b] = i;
                int s = 0;
                while (slot_busy[s])
                    s++;
                slot_busy[s] = 1;
                open[b] = 1;
                e->zb[b].slot = s;
                if (s + 1 > e->n_zslot)
                    e->n_zslot = s + 1;
            }
        }
        for (int b = 0; b < e->n_zb; b++)
            if (e->zb[b].last_layer == i && open[b]) {
                slot_busy[e->zb[b].slot] = 0;
                open[b] = 0;
            } else if (e->zb[b].last_layer == i && !open[b]) { /* written by no layer: its own */
                e->zb[b].slot = e->n_zslot++;                    /* (zero) buffer */
            }
    }
    if (e->zero == 1) { /* overlap_comm at stage 1: buckets of the flat buffer, no slots */
        ds_model_set_backward_hook(e->model, zero2_hook, e);
        if (e->comm && !e->plan_only)
            st = zq_start(e, err);
        goto done;
    }
    for (int b = 0; b < e->n_zb; b++)
        if (e->zb[b].b1 - e->zb[b].b0 > e->zslot_len)
            e->zslot_len = e->zb[b].b1 - e->zb[b].b0;
    e->zslot = calloc((size_t)(e->n_zslot ? e->n_zslot : 1), sizeof *e->zslot);
    if (!e->zslot) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int sl = 0; sl < e->n_zslot; sl++)
        if (!(e->zslot[sl] = e->be->ops->alloc(e->be, (size_t)e->zslot_len * sizeof(float)))) {
            st = ds_error_set(err, DS_ERR_NOMEM, "out of memory for ZeRO-2 gradient buckets");
            goto done;
        }
    for (int t = 0; t < nt; t++)
        e->gptr[t] = e->zslot[e->zb[tb[t]].slot] + (tab->t[t].offset - e->zb[tb[t]].b0);
    ds_model_set_grad_ptrs(e->model, e->gptr);
    ds_model_set_backward_hook(e->model, zero2_hook, e);
    if (e->cfg.zero.overlap_comm && e->comm && !e->plan_only && (st = zq_start(e, err)) != DS_OK)
        goto done;
done:
    free(tb);
    free(tmin);
    free(open);
    free(slot_busy);
    return st;
}

/* Sums of doubles over the data-parallel ranks, the same bits on every rank: each rank's values
 * are gathered whole (their bits, as two 4-byte words each) and added in rank order in double.
 * (A float all-reduce of hi + lo parts, as before, rounded the hi parts' sum to float: the
 * global norm under ZeRO was only float-precise, so a ZeRO stage's clipping coefficient, and
 * through it bf16 training, depended on where the partitions began.) */
static ds_status sum_doubles_over_ranks(void *ctx, double *v, int count, ds_error *err)
{
    ds_engine *e = ctx; /* void *: it is also LAMB's cross-rank sum (ds_optimizer_init_range) */
    if (!e->comm || e->comm->size <= 1 || count <= 0)
        return DS_OK;
    const int W = e->comm->size;
    double *all = calloc((size_t)W * (size_t)count, sizeof *all);
    size_t *off = calloc((size_t)W, sizeof *off), *len = calloc((size_t)W, sizeof *len);
    ds_status st = all && off && len ? DS_OK : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if (st == DS_OK) {
        memcpy(all + (size_t)e->comm->rank * (size_t)count, v, (size_t)count * sizeof *v);
        for (int r = 0; r < W; r++) {
            off[r] = (size_t)r * (size_t)count * 2;
            len[r] = (size_t)count * 2;
        }
        st = ds_comm_all_gather_v(e->comm, all, off, len, 4, err);
    }
    for (int i = 0; st == DS_OK && i < count; i++) {
        double sum = 0;
        for (int r = 0; r < W; r++)
            sum += all[(size_t)r * (size_t)count + (size_t)i];
        v[i] = sum;
    }
    free(all);
    free(off);
    free(len);
    return st;
}

/* ds_net_init_each's callback: a tensor's initial values into the engine's buffers. */
static ds_status init_tensor(void *ctx, int tensor, const float *values, ds_error *err)
{
    ds_engine *e = ctx;
    const ds_tensor_info *t = &e->net->params.t[tensor];
    ds_status st = write_weights(e, t->offset, values, t->numel);
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

ds_status ds_initialize(ds_engine **out, const ds_engine_options *opts, ds_error *err)
{
    if (!out || !opts) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_initialize: %s is NULL", !out ? "out" : "opts");
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
    e->plan_only = opts->plan_only;
    if (e->world_size > 1 && !e->comm && !opts->plan_only) {
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
    if (e->cfg.curriculum.enabled) { /* seqlen: the first positions of every sample */
        const ds_curriculum_config *c = &e->cfg.curriculum;
        const char *nn = e->net->source_name ? e->net->source_name : "network";
        if (e->net->input != DS_INPUT_TOKENS) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: curriculum_learning (seqlen) needs a tokens network; %s reads "
                              "features", e->cfg.source_name, nn);
            goto fail;
        }
        const int64_t first = ds_curriculum_update(c, c->min_difficulty, 1);
        /* the lengths the schedule can give: up to max_difficulty, or a discrete list's */
        char key[64] = "max_difficulty";
        int64_t top = c->max_difficulty;
        if (c->schedule == DS_CL_FIXED_DISCRETE) {
            top = 0;
            for (int i = 0; i < c->n_discrete; i++)
                if (c->difficulty[i] > top) {
                    top = c->difficulty[i];
                    snprintf(key, sizeof key, "schedule_config.difficulty[%d]", i);
                }
        }
        if (top > e->net->seq_len) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: curriculum_learning.%s: %lld positions, beyond %s's seq_len "
                              "%lld; expected at most that", e->cfg.source_name, key, (long long)top, nn,
                              (long long)e->net->seq_len);
            goto fail;
        }
        if (first < 1) { /* min_difficulty rounded down to a multiple of difficulty_step */
            st = ds_error_set(err, DS_ERR_INVALID, "%s: curriculum_learning: the schedule gives %lld positions at "
                              "step 1 (min_difficulty %lld rounded down to a multiple of difficulty_step %lld); "
                              "expected at least 1", e->cfg.source_name, (long long)first,
                              (long long)c->min_difficulty, (long long)c->difficulty_step);
            goto fail;
        }
        e->cl_seqlen = c->min_difficulty;
    }
    if (opts->checkpoint_activations && ds_net_checkpoint_repeats(e->net, 1) == 0) {
        st = ds_error_set(err, DS_ERR_INVALID, "%s: checkpointing activations needs a repeat block (its "
                          "iterations are the checkpointed segments); the network has none",
                          e->net->source_name ? e->net->source_name : "network");
        goto fail;
    }
    { /* DeepSpeed's checkpointing.configure asserts, where the network checkpoints */
        const int kept = ds_net_checkpoints(e->net);
        const ds_actckpt_config *ac = &e->cfg.actckpt;
        if (kept && ac->contiguous && !ac->partition_activations) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: activation_checkpointing: contiguous_memory_optimization=true "
                              "needs partition_activations=true (DeepSpeed asserts the same: the contiguous buffers "
                              "hold the partitioned checkpoints)", e->cfg.source_name);
            goto fail;
        }
        if (kept && ac->contiguous && ac->number_checkpoints && ac->number_checkpoints < kept) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: activation_checkpointing.number_checkpoints: expected at "
                              "least %d, the checkpoints the network keeps (one per iteration of a checkpointed "
                              "repeat) and contiguous_memory_optimization puts in its buffers, found %lld",
                              e->cfg.source_name, kept, (long long)ac->number_checkpoints);
            goto fail;
        }
    }
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
    const char *bname = opts->backend           ? opts->backend
                      : e->cfg.device[0]        ? e->cfg.device
                      : opts->backend_default ? opts->backend_default : "cpu";
    if ((st = ds_backend_create(&e->be, bname, err)) != DS_OK)
        goto fail;
    if (e->comm) { /* every rank on the same kind of backend ("auto" may differ per rank) */
        const float gpu = strcmp(e->be->ops->name, "cpu") != 0;
        float v[2] = {gpu, -gpu};
        if ((st = ds_comm_all_reduce(e->comm, v, 2, DS_REDUCE_MAX, err)) != DS_OK)
            goto fail;
        if (v[0] != -v[1]) {
            st = ds_error_set(err, DS_ERR_INVALID,
                              "the ranks do not agree on the backend: this rank (%d) runs on %s, others on %s "
                              "(with --device auto a rank that cannot use a GPU runs on the CPU: name the device)",
                              e->comm->rank, ds_backend_describe(e->be), gpu ? "cpu" : "a GPU");
            goto fail;
        }
    }
    if (e->cfg.zero.offload_optimizer && strcmp(e->be->ops->name, "cpu") != 0) {
        /* ZeRO-Offload moves the master weights and optimizer state to host memory and runs the
         * step there: what the cpu backend does anyway, not built for device backends */
        st = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: zero_optimization.%s is not supported yet on backend %s (on the cpu backend "
                          "the optimizer runs in host memory already)",
                          e->cfg.source_name,
                          e->cfg.zero.offload_optimizer == DS_OFFLOAD_CPU_OFFLOAD ? "cpu_offload=true"
                                                                                  : "offload_optimizer.device=cpu",
                          e->be->ops->name);
        goto fail;
    }
    if (e->cfg.zero.offload_param && e->cfg.zero.stage == 3 && strcmp(e->be->ops->name, "cpu") != 0) {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: zero_optimization.offload_param.device=cpu is not supported yet on backend %s (on "
                          "the cpu backend the parameter partitions are in host memory already)",
                          e->cfg.source_name, e->be->ops->name);
        goto fail;
    }
    if (e->cfg.actckpt.cpu_checkpointing && ds_net_checkpoints(e->net) && strcmp(e->be->ops->name, "cpu") != 0) {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: activation_checkpointing.cpu_checkpointing=true is not supported yet on backend %s "
                          "(on the cpu backend the checkpoints are in host memory already)",
                          e->cfg.source_name, e->be->ops->name);
        goto fail;
    }
    if (e->comm && strcmp(e->be->ops->name, "cpu") != 0 && (st = dcomm_create(e, opts->store, err)) != DS_OK)
        goto fail;
    e->round = e->cfg.precision == DS_PREC_FP16 ? DS_ROUND_FP16
             : e->cfg.precision == DS_PREC_BF16 ? DS_ROUND_BF16 : DS_ROUND_NONE;
    if (e->round && !e->be->ops->round16) {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED, "%s training is not built for backend %s yet",
                          e->round == DS_ROUND_FP16 ? "fp16" : "bf16", e->be->ops->name);
        goto fail;
    }
    if (e->round && e->be->ops->set_precision &&
        (st = e->be->ops->set_precision(e->be, e->round)) != DS_OK) {
        backend_err(e, st, err);
        goto fail;
    }
    ds_loss_scaler_init(&e->scaler, &e->cfg.fp16, e->cfg.precision);
    e->step_scale = e->scaler.scale;
    e->check_overflow = e->cfg.precision == DS_PREC_FP16 ||
                        (e->cfg.precision == DS_PREC_BF16 && e->cfg.bf16_check_overflow);
    e->applied = 1;
    const ds_tensor_table *tab = &e->net->params;
    size_t bytes = (size_t)tab->total * sizeof(float);
    e->zero = e->cfg.zero.stage;
    ds_zero_partition(tab->total, e->world_size, e->comm ? e->comm->rank : 0, &e->pbeg, &e->pend);
    if (e->zero && e->cfg.optimizer.type == DS_OPTIM_LAMB && !e->be->ops->lamb_step) {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED, "Lamb is not built for backend %s yet", e->be->ops->name);
        goto fail;
    }
    if (e->zero == 0) { /* every rank holds everything */
        e->pbeg = 0;
        e->pend = tab->total;
    }
    size_t pbytes = (size_t)(e->pend - e->pbeg) * sizeof(float);
    e->zoff = calloc((size_t)e->world_size, sizeof *e->zoff);
    e->zlen = calloc((size_t)e->world_size, sizeof *e->zlen);
    /* the model first: with 16-bit storage it reads 2-byte working weights */
    if ((st = ds_model_create(&e->model, e->net, e->be, e->cfg.micro_batch, e->round,
                              &(ds_model_ckpt){.contiguous = e->cfg.actckpt.contiguous,
                                               .synchronize = e->cfg.actckpt.synchronize,
                                               .profile = e->cfg.actckpt.profile,
                                               .layer_drop = e->cfg.pld.enabled},
                              err)) != DS_OK) {
        if (e->cfg.pld.enabled && st != DS_ERR_NOMEM) /* (only layer drop refuses a network here) */
            ds_error_prefix(err, "%s: progressive_layer_drop.enabled=true: %s: ", e->cfg.source_name,
                            e->net->source_name ? e->net->source_name : "network");
        goto fail;
    }
    e->pld_theta = 1.0;
    e->p16 = ds_model_storage16(e->model) != 0;
    /* the working weights: all of them, or this rank's partition at stage 3 */
    if (e->zero == 3) {
        e->wpart = e->be->ops->alloc(e->be, (size_t)(e->pend > e->pbeg ? e->pend - e->pbeg : 1) * wsize(e));
        e->wbase = e->wpart;
        e->wshift = e->pbeg;
    } else {
        e->params = e->be->ops->alloc(e->be, (size_t)tab->total * wsize(e));
        e->wbase = e->params;
    }
    e->grads = e->zero >= 2 ? NULL : e->be->ops->alloc(e->be, bytes);
    if (e->zero >= 2)
        e->gpart = e->be->ops->alloc(e->be, pbytes ? pbytes : sizeof(float));
    /* fp32: the master weights are the parameters (a ZeRO rank updates its part of them);
     * 16-bit: a separate fp32 copy, of this rank's partition only under ZeRO */
    e->master_owned = e->round != DS_ROUND_NONE;
    e->master = !e->round ? e->wbase
              : e->be->ops->alloc(e->be, e->zero ? (pbytes ? pbytes : sizeof(float)) : bytes);
    if (!e->wbase || (!e->grads && e->zero < 2) || (e->zero >= 2 && !e->gpart) || !e->master ||
        !e->zoff || !e->zlen) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory for %lld parameters", (long long)tab->total);
        goto fail;
    }
    for (int i = 0; i < tab->n; i++)
        if (tab->t[i].numel > e->largest)
            e->largest = tab->t[i].numel;
    e->host_scratch = malloc((size_t)e->largest * sizeof(float) + 64);
    e->w16_scratch = e->p16 ? malloc((size_t)e->largest * 2 + 64) : NULL;
    if (!e->host_scratch || (e->p16 && !e->w16_scratch)) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (e->zero == 3 && (st = z3_setup(e, err)) != DS_OK)
        goto fail;
    /* the initial weights tensor by tensor through the host scratch: no host copy of the whole
     * model (at stage 3 a rank keeps only its partition of each) */
    if ((st = ds_net_init_each(e->net, e->seed, e->host_scratch, init_tensor, e, err)) != DS_OK)
        goto fail;
    const ds_user_optimizer *user = NULL;
    for (int i = 0; i < opts->n_user_optimizers; i++)
        if (e->cfg.optimizer.type == DS_OPTIM_USER && !strcmp(opts->user_optimizers[i].name, e->cfg.optimizer.name))
            user = &opts->user_optimizers[i];
    /* LAMB's per-tensor sums are added over the ranks only where each holds a partition (ZeRO
     * 1-3); below that every rank has whole tensors and the same sums */
    if ((st = ds_optimizer_init_range(&e->opt, &e->cfg.optimizer, e->be, tab, e->pbeg, e->pend,
                                      e->zero ? sum_doubles_over_ranks : NULL, e, user, err)) != DS_OK)
        goto fail;
    if ((e->zero >= 2 || (e->zero == 1 && e->cfg.zero.overlap_comm)) && (st = zero2_setup(e, err)) != DS_OK)
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
    const void *src_in, *src_tg;
    if (b->samples != 0 && b->samples != B)
        return ds_error_set(err, DS_ERR_INVALID, "batch: %lld samples, but the micro-batch is %lld "
                            "(train_micro_batch_size_per_gpu)", (long long)b->samples, (long long)B);
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
        const int64_t T = net->positions, t = ds_model_positions(e->model);
        if (t < T) { /* curriculum_learning: each sample's first t positions, back to back */
            if (!e->cl_buf && !(e->cl_buf = malloc((size_t)(2 * M) * sizeof(int32_t))))
                return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            for (int64_t i = 0; i < B; i++) {
                memcpy(e->cl_buf + i * t, b->tokens + i * T, (size_t)t * sizeof(int32_t));
                memcpy(e->cl_buf + M + i * t, b->targets + i * T, (size_t)t * sizeof(int32_t));
            }
            src_in = e->cl_buf;
            src_tg = e->cl_buf + M;
        }
    } else {
        if (!b->x)
            return ds_error_set(err, DS_ERR_INVALID, "batch: a features network needs x");
        src_in = b->x;
        if (e->cfg.fp16_auto_cast && e->cfg.precision == DS_PREC_FP16) {
            /* DeepSpeed's fp16.auto_cast: the network sees its inputs as fp16 values; the
             * caller's buffer is left alone */
            const int64_t n = M * net->feature_dim;
            if (!e->cast_x && !(e->cast_x = malloc((size_t)n * sizeof(float))))
                return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            for (int64_t i = 0; i < n; i++) {
                e->cast_x[i] = ds_f16_to_f32(ds_f32_to_f16(b->x[i]));
                if (isinf(e->cast_x[i]) && !isinf(b->x[i]))
                    return ds_error_set(err, DS_ERR_INVALID,
                                        "batch: sample %lld, feature %lld: %g is beyond fp16's range "
                                        "(largest finite value 65504); fp16.auto_cast rounds the inputs to fp16",
                                        (long long)(i / net->feature_dim), (long long)(i % net->feature_dim),
                                        (double)b->x[i]);
            }
            src_in = e->cast_x;
        }
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
    return ds_model_upload_batch(e->model, src_in, src_tg, err);
}

ds_status ds_engine_forward(ds_engine *e, const ds_batch *batch, double *loss, ds_error *err)
{
    if (!e || !batch || !loss) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_forward: %s is NULL",
                            !e ? "the engine" : !batch ? "batch" : "loss");
    if (e->plan_only)
        return ds_error_set(err, DS_ERR_INVALID, "a planning engine (plan_only) does not train");
    ds_timers_start(&e->timers, DS_TIMER_FWD);
    ds_status st;
    if (e->cfg.curriculum.enabled) { /* DeepSpeed's engine.forward: update_difficulty(global_steps + 1) */
        e->cl_seqlen = ds_curriculum_update(&e->cfg.curriculum, e->cl_seqlen, e->global_steps + 1);
        if ((st = ds_model_set_positions(e->model, e->cl_seqlen, err)) != DS_OK)
            return st;
    }
    st = upload_batch(e, batch, err);
    if (st != DS_OK)
        return st;
    if (e->zero == 3) /* its gathers are this effective batch's collectives too */
        window_open(e);
    /* DeepSpeed's backward divides the loss by gradient_accumulation_steps; the loss gradient
     * is prepared here, fused with the loss, so the factor goes in now. */
    float scale = (float)(e->scaler.scale / (double)e->cfg.grad_accum);
    uint64_t seed = e->seed ^ ((uint64_t)e->micro_steps * 0x9e3779b97f4a7c15ull);
    if (e->cfg.pld.enabled)
        ds_model_set_layer_drop(e->model, e->pld_theta = ds_pld_theta(&e->cfg.pld, e->global_steps));
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
    if (!e || !batch || !loss) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_eval: %s is NULL",
                            !e ? "the engine" : !batch ? "batch" : "loss");
    if (e->plan_only)
        return ds_error_set(err, DS_ERR_INVALID, "a planning engine (plan_only) does not evaluate");
    /* (curriculum learning shortens training forwards only, as DeepSpeed's) */
    ds_status st = ds_model_set_positions(e->model, e->net->positions, err);
    if (st == DS_OK)
        st = upload_batch(e, batch, err);
    if (st != DS_OK)
        return st;
    e->have_forward = 0;
    return ds_model_forward(e->model, e->params, 0, 0.0f, 0, loss, err);
}

ds_status ds_engine_backward(ds_engine *e, ds_error *err)
{
    if (!e) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_backward: %s is NULL", "the engine");
    if (!e->have_forward)
        return ds_error_set(err, DS_ERR_INVALID, "backward without a training forward");
    e->have_forward = 0;
    window_open(e);
    e->z1_active = e->zero == 1 && e->cfg.zero.overlap_comm && e->zq.started &&
                   ds_engine_is_gradient_accumulation_boundary(e);
    /* overlap_comm with accumulation: the previous micro-batch's last buckets may still be
     * reducing; the top layers' buckets must be free before backward writes them again */
    if (e->zero >= 2 && e->zq.started) {
        ds_status wst = zq_wait_slots(e, e->net->n_layers - 1, err);
        if (wst != DS_OK)
            return wst;
    }
    ds_timers_start(&e->timers, DS_TIMER_BWD);
    ds_timers_start(&e->timers, DS_TIMER_BWD_INNER);
    ds_status st = ds_model_backward(e->model, e->params, e->grads, err);
    /* fp16 gradients accumulate in fp16 (DeepSpeed's fp16 .grad); bf16 ones in fp32. (ZeRO-2
     * rounds each bucket before reducing it.) */
    if (st == DS_OK && e->round == DS_ROUND_FP16 && e->zero < 2 && !e->z1_active)
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
    if (!e) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_step: %s is NULL", "the engine");
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
    if ((st = zq_drain(e, err)) != DS_OK) /* overlap_comm: the reductions still running */
        return st;
    window_open(e);
    /* g: the averaged gradients this rank updates from: all of them (stage 0), or its
     * partition [pbeg, pend) (stage 1: reduce-scattered now; stage 2: during backward) */
    const int64_t plen = e->pend - e->pbeg;
    float *g = e->zero >= 2 ? e->gpart : e->grads + e->pbeg;
    if (e->comm) {
        /* DeepSpeed reduces inside backward (bwd_allreduce, part of bwd); ds reduces here, once
         * per effective batch, and counts that time there, not in step */
        ds_timers_stop(&e->timers, DS_TIMER_STEP);
        ds_timers_start(&e->timers, DS_TIMER_BWD);
        ds_timers_start(&e->timers, DS_TIMER_BWD_ALLREDUCE);
        if (e->zero == 1 && e->z1_active) {
            e->z1_active = 0; /* overlap_comm: reduced during the backward pass (drained above) */
        } else if (e->zero == 1) {
            /* ZeRO-1: the accumulated gradients, reduce-scattered in reduce_bucket_size buckets */
            for (int64_t off = 0; off < n; off += e->cfg.zero.reduce_bucket_size) {
                int64_t end = off + e->cfg.zero.reduce_bucket_size < n ? off + e->cfg.zero.reduce_bucket_size : n;
                if ((st = zero_reduce(e, e->grads + off, off, end, err)) != DS_OK)
                    return st;
            }
        } else if (e->zero == 0) {
            /* One bucketed all-reduce per effective batch (micro-batches accumulated locally),
             * in constant-size buckets of the flat gradient buffer. DeepSpeed's averaging: with
             * prescale_gradients, g/W then a sum; otherwise g/f, a sum, then g*f/W (skipped
             * when f == W). Either way the result is the mean; f only moves the division. */
            const double W = e->world_size, f = e->cfg.gradient_predivide_factor;
            const float pre = (float)(e->cfg.prescale_gradients ? 1.0 / W : 1.0 / f);
            const float post = (float)(e->cfg.prescale_gradients ? 1.0 : f / W);
            for (int64_t off = 0; off < n; off += e->bucket) {
                int64_t len = n - off < e->bucket ? n - off : e->bucket;
                double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
                if (pre != 1.0f && (st = ops->scale(e->be, e->grads + off, len, pre)) != DS_OK)
                    return backend_err(e, st, err);
                if ((st = ds_comm_all_reduce(GCOMM(e), e->grads + off, (size_t)len, DS_REDUCE_SUM, err)) != DS_OK)
                    return st;
                if (post != 1.0f && (st = ops->scale(e->be, e->grads + off, len, post)) != DS_OK)
                    return backend_err(e, st, err);
                e->win_calls++;
                e->win_bytes += len * (int64_t)sizeof(float);
                record_collective(e, "all_reduce", "gradients", len, t0);
            }
        }
        float l = (float)e->window_loss;
        double t0 = e->timers.enabled ? ds_prof_now_s() : 0;
        if ((st = ds_comm_all_reduce(e->comm, &l, 1, DS_REDUCE_MEAN, err)) != DS_OK)
            return st;
        record_collective(e, "all_reduce", "loss", 1, t0);
        e->window_loss = l;
        ds_timers_stop(&e->timers, DS_TIMER_BWD_ALLREDUCE);
        ds_timers_stop(&e->timers, DS_TIMER_BWD);
        ds_timers_start(&e->timers, DS_TIMER_STEP);
    }
    double sumsq;
    st = ops->sumsq(e->be, g, plen, &sumsq);
    if (st != DS_OK)
        return backend_err(e, st, err);
    const double S = e->scaler.scale; /* the scale this window's backward passes used */
    int overflow = !isfinite(sumsq);
    if (e->comm && e->zero) {
        /* the global norm from the partitions' sums, and the overflow flag, in one gather */
        double v[2] = {overflow ? 0.0 : sumsq, (double)overflow};
        if ((st = sum_doubles_over_ranks(e, v, 2, err)) != DS_OK)
            return st;
        sumsq = v[0];
        overflow = v[1] > 0 || !isfinite(sumsq);
    } else if (e->comm && e->check_overflow) {
        /* the all-reduced gradients are the same everywhere; the flag is max-reduced anyway, so
         * that no rank can step while another skips */
        float f = (float)overflow;
        if ((st = ds_comm_all_reduce(e->comm, &f, 1, DS_REDUCE_MAX, err)) != DS_OK)
            return st;
        overflow = f > 0;
    }
    /* Not finite where it cannot be skipped (fp32, bf16; fp16 at the minimum loss scale):
     * DS_ERR_NUMERIC, nothing updated, and the effective batch discarded (its gradients
     * zeroed, its micro-step counted), so that a caller may go on with the next one: the
     * gradients kept would fail every later step, which would all be "the boundary" again */
    ds_error why = {0};
    ds_status numeric = DS_OK;
    if (overflow && !e->check_overflow)
        numeric = ds_error_set(&why, DS_ERR_NUMERIC, "the gradient is not finite (inf or NaN) in %s training; "
                               "lower the learning rate or check the data",
                               e->cfg.precision == DS_PREC_BF16 ? "bf16" : "fp32");
    else if (overflow)
        numeric = ds_loss_scaler_update(&e->scaler, 1, &why); /* the scale drops, or an error at the minimum */
    if (numeric != DS_OK) {
        for (int k = 0; k < e->n_zb; k++)
            e->zb[k].nred = 0;
        ds_status zs = e->zero >= 2 ? ops->zero(e->be, e->gpart, (size_t)plen * sizeof(float))
                                    : ops->zero(e->be, e->grads, (size_t)n * sizeof(float));
        if (zs != DS_OK)
            return backend_err(e, zs, err);
        e->window_loss = 0;
        e->micro_steps++;
        e->win_open = 0;
        e->applied = 0;
        ds_timers_stop(&e->timers, DS_TIMER_STEP);
        ds_timers_micro_end(&e->timers);
        ds_timers_boundary(&e->timers);
        return ds_error_set(err, numeric, "step %lld: %s (nothing was updated; the batch's gradients are discarded)",
                            (long long)e->global_steps + 1, why.msg);
    }
    e->step_scale = S;
    if (overflow) {
        /* skip: no update, no scheduler step; the scale dropped above */
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
        float *m = e->round || e->zero == 3 ? e->master : e->params + e->pbeg;
        if ((st = ds_optimizer_step(&e->opt, m, g, (float)e->lr, (float)gscale,
                                    e->round ? wptr(e, e->pbeg) : NULL, e->round, e->p16, err)) != DS_OK)
            return st;
        if (e->zero && (st = zero_gather_params(e, err)) != DS_OK)
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
    for (int k = 0; k < e->n_zb; k++)
        e->zb[k].nred = 0;
    if ((st = e->zero >= 2 ? ops->zero(e->be, e->gpart, (size_t)plen * sizeof(float))
                           : ops->zero(e->be, e->grads, (size_t)n * sizeof(float))) != DS_OK)
        return backend_err(e, st, err);
    e->last_loss = e->window_loss;
    e->window_loss = 0;
    e->micro_steps++;
    e->global_steps++;
    e->global_samples += e->cfg.train_batch_size;
    e->ar_calls = e->win_calls; /* this effective batch's gradient collectives */
    e->ar_bytes = e->win_bytes;
    e->win_open = 0;
    ds_timers_stop(&e->timers, DS_TIMER_STEP);
    ds_timers_micro_end(&e->timers);
    ds_timers_boundary(&e->timers);
    return DS_OK;
}

int64_t ds_engine_global_steps(const ds_engine *e) { return e->global_steps; }
int ds_engine_layer_drop(const ds_engine *e, double *theta, unsigned char *kept)
{
    const int L = e->model ? ds_model_layer_drop_depth(e->model) : 0;
    if (theta)
        *theta = L ? e->pld_theta : 1.0;
    for (int l = 1; l <= L && kept; l++)
        kept[l - 1] = (unsigned char)ds_model_layer_kept(e->model, l);
    return L;
}

int64_t ds_engine_seqlen(const ds_engine *e) { return e->cfg.curriculum.enabled ? e->cl_seqlen : e->net->positions; }
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
    if (!e) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_set_total_steps: %s is NULL", "the engine");
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
    if (!e) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_set_lr: %s is NULL", "the engine");
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

void ds_engine_memory_report(const ds_engine *e, ds_memory_report *m)
{
    if (!e || !m) /* nothing to report into, or from */
        return;
    size_t flat = (size_t)e->net->params.total * sizeof(float);
    size_t part = (size_t)(e->pend - e->pbeg) * sizeof(float);
    memset(m, 0, sizeof *m);
    /* stage 3: the partition, the persistent tensors and the arena of one layer's gathered ones */
    m->params = (size_t)(e->zero == 3 ? e->pend - e->pbeg + e->pbuf_len + e->arena_len : e->net->params.total) * wsize(e);
    m->master = e->master_owned ? (e->zero ? part : flat) : 0;
    m->grads = e->zero >= 2 ? part : flat;
    m->optim = ds_optimizer_state_bytes(&e->opt);
    m->activations = ds_model_activation_bytes(e->model);
    ds_model_checkpoint_stats(e->model, &m->checkpoints, &m->recomputed);
    m->activations16 = ds_model_storage16(e->model);
    m->comm = e->zero >= 2 ? (size_t)e->n_zslot * (size_t)e->zslot_len * sizeof(float) : 0;
    m->zero_stage = e->zero;
    m->world_size = e->world_size;
    m->partition_begin = e->pbeg;
    m->partition_end = e->pend;
    for (int t = 0; e->persist && t < e->net->params.n; t++)
        m->z3_persistent_tensors += e->persist[t];
    m->z3_persistent = e->persist_elems;
    m->z3_arena = e->arena_len;
}

void ds_engine_memory(const ds_engine *e, size_t *params, size_t *grads, size_t *optim,
                      size_t *activations)
{
    ds_memory_report m;
    ds_engine_memory_report(e, &m);
    if (params)
        *params = m.params + m.master;
    if (grads)
        *grads = m.grads;
    if (optim)
        *optim = m.optim;
    if (activations)
        *activations = m.activations;
}

static const ds_tensor_info *find_tensor(ds_engine *e, const char *name, int64_t numel, ds_error *err)
{
    int i = ds_table_find(&e->net->params, name);
    if (i < 0) {
        ds_error_set(err, DS_ERR_INVALID, "no parameter named %s", name);
        return NULL;
    }
    const ds_tensor_info *t = &e->net->params.t[i];
    if (t->numel != numel) {
        ds_error_set(err, DS_ERR_INVALID, "%s has %lld elements, not %lld", name, (long long)t->numel,
                     (long long)numel);
        return NULL;
    }
    return t;
}

/* Stage 3 (several ranks): host, holding elements [b0, b1) of which this rank filled the ones it
 * holds, gets every rank's (esz-byte elements) over the host communicator. A collective. */
static ds_status host_gather(ds_engine *e, int64_t b0, int64_t b1, void *host, size_t esz, ds_error *err)
{
    if (e->zero != 3 || e->world_size == 1)
        return DS_OK;
    if (!e->comm)
        return ds_error_set(err, DS_ERR_INVALID, "a planning engine (plan_only) holds only rank 0's ZeRO-3 "
                            "partition of the weights");
    /* the communication thread's collectives first (it shares zoff/zlen) */
    ds_status st = zq_drain(e, err);
    if (st != DS_OK)
        return st;
    zero_blocks(e, b0, b1);
    return ds_comm_all_gather_v(e->comm, host, e->zoff, e->zlen, esz, err);
}

/* Stage 3: working weights [b, end) of every rank to the host as fp32 values (a collective). */
static ds_status gather_working(ds_engine *e, int64_t b, int64_t end, float *host, ds_error *err)
{
    int64_t lo, hi, n = end - b;
    held(e, b, n, &lo, &hi);
    uint16_t *h16 = e->p16 ? calloc((size_t)(n ? n : 1), 2) : NULL;
    ds_status st = !e->p16 || h16 ? DS_OK : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if (st == DS_OK && !e->p16)
        memset(host, 0, (size_t)n * sizeof(float));
    if (st == DS_OK && hi > lo &&
        (st = e->be->ops->download(e->be, e->p16 ? (void *)(h16 + (lo - b)) : (void *)(host + (lo - b)), wptr(e, lo),
                                   (size_t)(hi - lo) * wsize(e))) != DS_OK)
        backend_err(e, st, err);
    if (st == DS_OK)
        st = host_gather(e, b, end, e->p16 ? (void *)h16 : (void *)host, wsize(e), err);
    for (int64_t i = 0; st == DS_OK && e->p16 && i < n; i++)
        host[i] = e->round == DS_ROUND_BF16 ? ds_bf16_to_f32(h16[i]) : ds_f16_to_f32(h16[i]);
    free(h16);
    return st;
}

ds_status ds_engine_get_param(ds_engine *e, const char *name, float *host, int64_t numel, ds_error *err)
{
    if (!e || !name || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_get_param: %s is NULL",
                            !e ? "the engine" : !name ? "name" : "host");
    const ds_tensor_info *t = find_tensor(e, name, numel, err);
    if (!t)
        return DS_ERR_INVALID;
    ds_status st = read_master(e, t->offset, host, numel);
    if (st != DS_OK)
        backend_err(e, st, err);
    ds_error gerr; /* stage 3: the gather is a collective, made whatever this rank's read gave */
    ds_status gst = host_gather(e, t->offset, t->offset + numel, host, sizeof(float), st == DS_OK ? err : &gerr);
    return st != DS_OK ? st : gst;
}

ds_status ds_engine_set_param(ds_engine *e, const char *name, const float *host, int64_t numel,
                              ds_error *err)
{
    if (!e || !name || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_set_param: %s is NULL",
                            !e ? "the engine" : !name ? "name" : "host");
    const ds_tensor_info *t = find_tensor(e, name, numel, err);
    if (!t)
        return DS_ERR_INVALID;
    ds_status st = write_weights(e, t->offset, host, numel);
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

/* Gradients: the flat buffer; under ZeRO-2 only this rank's partition exists (after backward it
 * holds the averaged gradients): other elements read as 0 and writes to them are dropped. */
static ds_status grad_copy(ds_engine *e, const char *name, float *host, const float *src, int64_t numel,
                           ds_error *err)
{
    const ds_tensor_info *t = find_tensor(e, name, numel, err);
    if (!t)
        return DS_ERR_INVALID;
    /* overlap_comm: the communication thread may still be reducing the last buckets of the
     * backward; a read would see them half done, a write be added to */
    ds_status dst = zq_drain(e, err);
    if (dst != DS_OK)
        return dst;
    const ds_backend_ops *ops = e->be->ops;
    ds_status st = DS_OK;
    if (e->zero < 2) {
        st = src ? ops->upload(e->be, e->grads + t->offset, src, (size_t)numel * sizeof(float))
                 : ops->download(e->be, host, e->grads + t->offset, (size_t)numel * sizeof(float));
        return st == DS_OK ? DS_OK : backend_err(e, st, err);
    }
    int64_t lo = t->offset > e->pbeg ? t->offset : e->pbeg;
    int64_t hi = t->offset + numel < e->pend ? t->offset + numel : e->pend;
    if (!src)
        memset(host, 0, (size_t)numel * sizeof(float));
    if (hi > lo)
        st = src ? ops->upload(e->be, e->gpart + (lo - e->pbeg), src + (lo - t->offset), (size_t)(hi - lo) * sizeof(float))
                 : ops->download(e->be, host + (lo - t->offset), e->gpart + (lo - e->pbeg), (size_t)(hi - lo) * sizeof(float));
    return st == DS_OK ? DS_OK : backend_err(e, st, err);
}

ds_status ds_engine_get_grad(ds_engine *e, const char *name, float *host, int64_t numel, ds_error *err)
{
    if (!e || !name || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_get_grad: %s is NULL",
                            !e ? "the engine" : !name ? "name" : "host");
    return grad_copy(e, name, host, NULL, numel, err);
}

ds_status ds_engine_set_grad(ds_engine *e, const char *name, const float *host, int64_t numel,
                             ds_error *err)
{
    if (!e || !name || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_set_grad: %s is NULL",
                            !e ? "the engine" : !name ? "name" : "host");
    return grad_copy(e, name, NULL, host, numel, err);
}

void ds_engine_checkpoint_times(const ds_engine *e, double *forward_ms, double *backward_ms, double *recompute_ms)
{
    ds_model_checkpoint_times(e->model, forward_ms, backward_ms, recompute_ms);
}

void ds_engine_partition(const ds_engine *e, int *stage, int64_t *begin, int64_t *end)
{
    if (stage)
        *stage = e->zero;
    if (begin)
        *begin = e->pbeg;
    if (end)
        *end = e->pend;
}

ds_status ds_engine_get_output(ds_engine *e, float *host, int64_t count, ds_error *err)
{
    if (!e || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_get_output: %s is NULL", !e ? "the engine" : "host");
    /* (the positions of the last forward: fewer in a curriculum_learning training forward) */
    int64_t want = e->cfg.micro_batch * ds_model_positions(e->model) * e->net->out_dim;
    if (count != want)
        return ds_error_set(err, DS_ERR_INVALID, "output has %lld values (micro-batch %lld x %lld positions x "
                            "%lld), not %lld", (long long)want, (long long)e->cfg.micro_batch,
                            (long long)ds_model_positions(e->model), (long long)e->net->out_dim, (long long)count);
    return ds_model_download_output(e->model, host, err);
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
    if (!e || !path) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_load_weights: %s is NULL", !e ? "the engine" : "path");
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
        st = write_weights(e, ti->offset, h, ti->numel);
        if (st != DS_OK)
            backend_err(e, st, err);
    }
    ds_st_close(st_file);
    return st;
}

/* The fp32 master weights partitioned (ZeRO with fp16/bf16, stage 3): every rank takes part in
 * gathering them, whatever happens to it, and rank 0 writes. */
int ds_engine_save_weights_collective(const ds_engine *e)
{
    return e->zero && (e->round || e->zero == 3) && e->comm;
}

ds_status ds_engine_save_weights(ds_engine *e, const char *path, int overwrite, ds_error *err)
{
    if (!e || !path) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_save_weights: %s is NULL", !e ? "the engine" : "path");
    struct stat sb;
    const int collective = ds_engine_save_weights_collective(e);
    if (!collective && !overwrite && stat(path, &sb) == 0)
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
    ds_status st = collective ? zq_drain(e, err) : DS_OK; /* (the communication thread's collectives first) */
    if (st == DS_OK && (st = read_master(e, 0, host, tab->total)) != DS_OK)
        backend_err(e, st, err);
    if (collective) {
        ds_error gerr;
        zero_blocks(e, 0, tab->total);
        ds_status gst = ds_comm_all_gather_v(e->comm, host, e->zoff, e->zlen, sizeof(float), st == DS_OK ? err : &gerr);
        st = st != DS_OK ? st : gst;
        if (st == DS_OK && e->comm->rank == 0 && !overwrite && stat(path, &sb) == 0)
            st = ds_error_set(err, DS_ERR_INVALID, "%s: exists; not overwriting it", path);
    }
    if (st != DS_OK || (collective && e->comm->rank != 0)) {
        free(host);
        free(ent);
        return st;
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
    /* ZeRO: the stage, partition_world = world_size and this rank's partition under the rule
     * of engine.h, which is all it holds of the master weights and optimizer state. Stage 0:
     * rank 0 stores the one partition. */
    info->zero_stage = e->zero;
    info->world_size = e->world_size;
    info->comm = e->comm;
    info->rank = e->comm ? e->comm->rank : 0;
    info->numel = e->net->params.total;
    if (e->zero) {
        info->partition_world = e->world_size;
        info->partition_rank = info->rank;
        info->begin = info->hold_begin = e->pbeg;
        info->end = info->hold_end = e->pend;
    } else {
        info->partition_world = 1;
        info->partition_rank = info->rank == 0 ? 0 : -1;
        info->begin = 0;
        info->end = info->rank == 0 ? info->numel : 0;
        info->hold_begin = 0;
        info->hold_end = info->numel;
    }
    info->precision = e->cfg.precision;
    info->optimizer = e->opt.cfg.name;
}

/* The buffer holding flat elements [begin, end): element i is at (*base)[i - *shift]. */
static ds_status partition_buffer(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                  float **base, int64_t *shift, ds_error *err)
{
    if (buffer == DS_ENGINE_BUF_WEIGHTS) { /* the working weights: every rank holds them all
                                              (below stage 3) */
        if (begin < 0 || end > e->net->params.total || begin > end)
            return ds_error_set(err, DS_ERR_INVALID, "elements [%lld, %lld) are outside [0, %lld)",
                                (long long)begin, (long long)end, (long long)e->net->params.total);
        *base = e->params;
        *shift = 0;
        return DS_OK;
    }
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
    /* the optimizer state holds [pbeg, pend); the master weights too, except in fp32, where
     * they are the (full) parameters */
    if (buffer == DS_ENGINE_BUF_MASTER) {
        *base = e->round || e->zero == 3 ? e->master : e->params;
        *shift = e->round || e->zero == 3 ? e->pbeg : 0;
    } else {
        *base = buf[buffer];
        *shift = e->pbeg;
    }
    return DS_OK;
}

ds_status ds_engine_read_partition(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                   float *host, ds_error *err)
{
    if (!e || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_read_partition: %s is NULL", !e ? "the engine" : "host");
    float *base;
    int64_t shift;
    ds_status st = partition_buffer(e, buffer, begin, end, &base, &shift, err);
    if (st == DS_OK && buffer == DS_ENGINE_BUF_WEIGHTS && e->zero == 3) /* gathered: a collective */
        return gather_working(e, begin, end, host, err);
    if (st == DS_OK && end > begin &&
        (st = buffer == DS_ENGINE_BUF_WEIGHTS
                  ? download_working(e, begin, host, end - begin)
                  : e->be->ops->download(e->be, host, base + (begin - shift), (size_t)(end - begin) * sizeof(float))) != DS_OK)
        backend_err(e, st, err);
    return st;
}

ds_status ds_engine_write_partition(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                    const float *host, ds_error *err)
{
    if (!e || !host) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_write_partition: %s is NULL", !e ? "the engine" : "host");
    float *base;
    int64_t shift;
    ds_status st = partition_buffer(e, buffer, begin, end, &base, &shift, err);
    if (st == DS_OK && buffer == DS_ENGINE_BUF_WEIGHTS && e->zero == 3)
        return ds_error_set(err, DS_ERR_INVALID, "ZeRO stage 3: the working weights are written through the "
                            "master weights (DS_ENGINE_BUF_MASTER, then ds_engine_sync_weights)");
    if (st == DS_OK && end > begin &&
        (st = buffer == DS_ENGINE_BUF_WEIGHTS
                  ? upload_working(e, begin, host, end - begin)
                  : e->be->ops->upload(e->be, base + (begin - shift), host, (size_t)(end - begin) * sizeof(float))) != DS_OK)
        backend_err(e, st, err);
    return st;
}

/* After the master weights were written: the working weights from them (rounded in 16-bit
 * training), this rank's partition under ZeRO, then all-gathered (a collective). */
ds_status ds_engine_sync_weights(ds_engine *e, ds_error *err)
{
    if (!e) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_sync_weights: %s is NULL", "the engine");
    const ds_backend_ops *ops = e->be->ops;
    ds_status st = zq_drain(e, err); /* its gathers after the communication thread's collectives */
    if (st != DS_OK)
        return st;
    if (e->round) {
        int64_t len = e->pend - e->pbeg;
        if (e->p16) {
            st = ops->pack16(e->be, e->master, wptr(e, e->pbeg), len, e->round);
        } else {
            st = ops->copy(e->be, wptr(e, e->pbeg), e->master, (size_t)len * sizeof(float));
            if (st == DS_OK)
                st = ops->round16(e->be, wptr(e, e->pbeg), len, e->round);
        }
        if (st != DS_OK)
            return backend_err(e, st, err);
    }
    if (e->zero)
        return zero_gather_params(e, err);
    return DS_OK;
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

ds_status ds_engine_check_scalars(const ds_engine *e, const ds_engine_scalars *s, ds_error *err)
{
    if (!e || !s) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_check_scalars: %s is NULL", !e ? "the engine" : "s");
    if (!ds_engine_at_boundary(e))
        return ds_error_set(err, DS_ERR_INVALID, "the engine is inside an effective batch (micro-step %lld of %lld)",
                            (long long)(e->micro_steps % e->cfg.grad_accum), (long long)e->cfg.grad_accum);
    if (s->global_steps < 0 || s->global_samples < 0 || s->micro_steps < 0 || s->skipped_steps < 0 ||
        s->optimizer_step < 0 || s->sched_iter < -1 || !(s->lr >= 0) || !(s->scaler.scale > 0))
        return ds_error_set(err, DS_ERR_INVALID, "engine state out of range (negative counter, lr or loss scale)");
    if (s->scaler.dynamic && (s->scaler.window < 1 || s->scaler.hysteresis < 1 || s->scaler.cur_hysteresis < 1 ||
                              s->scaler.cur_hysteresis > s->scaler.hysteresis || !(s->scaler.min_scale >= 0) ||
                              !isfinite(s->scaler.scale)))
        return ds_error_set(err, DS_ERR_INVALID, "loss scaler state out of range: expected scale_window >= 1, "
                            "1 <= cur_hysteresis <= hysteresis, min_scale >= 0 and a finite scale; found %lld, %d, %d, "
                            "%g and %g", (long long)s->scaler.window, s->scaler.cur_hysteresis, s->scaler.hysteresis,
                            s->scaler.min_scale, s->scaler.scale);
    return DS_OK;
}

ds_status ds_engine_set_scalars(ds_engine *e, const ds_engine_scalars *s, ds_error *err)
{
    if (!e || !s) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_set_scalars: %s is NULL", !e ? "the engine" : "s");
    ds_status st = ds_engine_check_scalars(e, s, err);
    if (st != DS_OK)
        return st;
    e->global_steps = s->global_steps;
    e->global_samples = s->global_samples;
    e->micro_steps = s->micro_steps;
    if (e->cfg.curriculum.enabled) {
        /* the difficulty the steps so far reached, replayed from the start as the forwards went
         * (it is held once it reaches max_difficulty, so it is not a function of the step
         * alone: a fixed_discrete list may pass or fall below the maximum later) */
        e->cl_seqlen = e->cfg.curriculum.min_difficulty;
        for (int64_t k = 1; k <= e->global_steps; k++)
            e->cl_seqlen = ds_curriculum_update(&e->cfg.curriculum, e->cl_seqlen, k);
    }
    e->skipped = s->skipped_steps;
    e->opt.step = s->optimizer_step;
    /* SGD: whether buf = d is behind us; exact unless a cycled momentum was 0 in the first
     * updates (the checkpoint does not say when the first update with momentum came) */
    e->opt.momentum_started = s->optimizer_step > 0;
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
