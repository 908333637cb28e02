/* The network at run time: one output and one gradient buffer per layer, forward and backward
 * through the backend ops. A residual's BEGIN aliases its input; the branch's last layer shares
 * its gradient buffer with the END, and where the END is the first to write its skip source's
 * gradient, that source shares it too (a chain of residual blocks has one gradient buffer, which
 * the branches' first layers add into). Input gradients are written by the first consumer in
 * backward order and accumulated by the others (accumulate flags fixed at creation). A repeat's
 * iterations but the last use the last one's inner gradient buffers (share_grads), and with
 * activation checkpointing iteration 0's outputs and saved state (shared_with). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds/dtype.h"
#include "ds/rng.h"
#include "net_internal.h"

typedef struct layer_rt {
    float *out, *dout;   /* [M, out_dim] */
    int src;             /* index of the layer whose output is this layer's input (-1: input) */
    int acc_dx;          /* accumulate into the input gradient instead of writing it */
    int acc_skip;        /* residual END: accumulate into the skip gradient */
    int alias_skip;      /* residual END: the skip source's gradient is this END's (no copy) */
    float *mean, *rstd;  /* layernorm */
    float *qkv, *att, *attn_out, *dqkv, *dattn_out; /* attention */
    int owns_out, owns_dout;
    int owns_state;      /* mean..dattn_out are this layer's (not a checkpointed segment's shared ones) */
    int seg;             /* its checkpointed segment, -1: none */
    int iter;            /* the innermost repeat iteration it is in (unique over the net), -1: none */
    int twin;            /* the same layer in the last iteration of that repeat (-1: none, or it is there) */
    int it_first, it_len; /* that iteration's layers (0, 0: none) */
    int recompute;       /* the last layer of a segment that backward recomputes first */
    int pld;             /* progressive layer drop: its iteration's depth 1..L (0: not dropped) */
    int pld_end;         /* ... and it is the END of one of that iteration's residual blocks */
} layer_rt;

/* one iteration of a checkpointed repeat: layers [first, last]; proto: the first layer of the
 * repeat's iteration 0, whose inner buffers the iterations share */
typedef struct segment {
    int first, last, proto;
} segment;

struct ds_model {
    const ds_net *net;
    ds_backend *be;
    int64_t B, T, M;     /* samples, positions per sample, rows = B*T */
    layer_rt *rt;
    void *inputs, *targets;
    size_t input_bytes, target_bytes;
    float *losses;       /* [M] per-row losses */
    float *host_losses;
    int have_grad;       /* the last forward prepared the loss gradient */
    uint64_t seed;       /* dropout seed of the last forward */
    size_t act_bytes;
    int round;           /* ds_round_mode: 16-bit activations and activation gradients */
    int fused;           /* the backend's activation ops round their outputs (fuse_round) */
    int s16;             /* activations and weights stored as 16-bit values (store16) */
    size_t esz;          /* bytes per activation element: 2 with s16, else 4 */
    float *const *gptr;  /* per tensor: where its gradient goes (NULL: grads + offset) */
    const float *const *pptr; /* per tensor: where its weights are (NULL: params + offset) */
    ds_status (*fetch)(void *ctx, int layer, ds_error *err);
    void *fetch_ctx;
    ds_status (*hook)(void *ctx, int layer, ds_error *err);
    void *hook_ctx;
    int train;           /* the last forward's train flag (a recomputation repeats it) */
    segment *segs;       /* activation checkpointing */
    int n_segs;
    int sync;            /* synchronize at segment boundaries */
    int profile;         /* time the segments' passes (synchronizing at their edges) */
    double fwd_ms, bwd_ms, rc_ms; /* profile: segment forwards, backwards (with), recomputations */
    int64_t recomputed;  /* segment forwards run again by backward */
    float **blocks;      /* contiguous checkpoint buffers, one per checkpointed repeat */
    int n_blocks;
    int pld_L;           /* progressive layer drop: the iterations it may drop (0: off) */
    double pld_theta;    /* the keep probability of the deepest one, for the next training forwards */
    unsigned char *pld_keep; /* [1..L]: the last training forward kept that iteration */
    float *pld_scale;    /* [1..L]: 1/its keep probability (kept blocks' branches are scaled by it) */
};

#define OPS (m->be->ops)
#define G(idx) (m->gptr ? m->gptr[(idx)] : grads + m->net->params.t[(idx)].offset)
/* a weight tensor: where the pointer table says (ZeRO-3), else in the flat parameters (2-byte
 * values with s16, else fp32) */
#define P(base, idx)                                                                             \
    (m->pptr  ? m->pptr[(idx)]                                                                   \
     : m->s16 ? (const float *)(const void *)((const uint16_t *)(const void *)(base) +           \
                                              m->net->params.t[(idx)].offset)                    \
              : (base) + m->net->params.t[(idx)].offset)
#define CHECK(call)                                                                              \
    do {                                                                                         \
        ds_status st_ = (call);                                                                  \
        if (st_ != DS_OK) {                                                                      \
            if (err)                                                                             \
                *err = m->be->err;                                                               \
            return st_;                                                                          \
        }                                                                                        \
    } while (0)

/* an activation buffer (esz bytes per element), or fp32 state (esz 4) */
static float *balloc(ds_model *m, int64_t count, size_t esz)
{
    size_t bytes = (size_t)count * esz;
    m->act_bytes += bytes;
    return OPS->alloc(m->be, bytes);
}

void ds_model_destroy(ds_model *m)
{
    if (!m)
        return;
    if (m->rt) {
        for (int i = 0; i < m->net->n_layers; i++) {
            layer_rt *r = &m->rt[i];
            if (r->owns_out)
                OPS->free(m->be, r->out);
            if (r->owns_dout)
                OPS->free(m->be, r->dout);
            float *extra[] = {r->mean, r->rstd, r->qkv, r->att, r->attn_out, r->dqkv, r->dattn_out};
            for (size_t j = 0; j < sizeof extra / sizeof *extra && r->owns_state; j++)
                if (extra[j])
                    OPS->free(m->be, extra[j]);
        }
    }
    for (int b = 0; b < m->n_blocks; b++)
        if (m->blocks[b])
            OPS->free(m->be, m->blocks[b]);
    free(m->blocks);
    free(m->segs);
    free(m->pld_keep);
    free(m->pld_scale);
    if (m->inputs)
        OPS->free(m->be, m->inputs);
    if (m->targets)
        OPS->free(m->be, m->targets);
    if (m->losses)
        OPS->free(m->be, m->losses);
    free(m->host_losses);
    free(m->rt);
    free(m);
}

/* The checkpointed segments: one per iteration of each checkpointed repeat; each layer's
 * segment; the segments backward recomputes (all but a repeat's last iteration, whose inner
 * activations are the ones in the shared buffers when forward ends). */
static int plan_segments(ds_model *m)
{
    const ds_net *net = m->net;
    for (int i = 0; i < net->n_layers; i++)
        m->rt[i].seg = m->rt[i].iter = m->rt[i].twin = -1;
    for (int r = 0, id = 0; r < net->n_repeats; r++) { /* outer repeats come first: inner ones overwrite */
        const ds_repeat *rp = &net->repeats[r];
        for (int k = 0; k < rp->count; k++, id++)
            for (int i = 0; i < rp->len; i++) {
                layer_rt *r = &m->rt[rp->first + k * rp->len + i];
                r->iter = id;
                r->twin = k < rp->count - 1 ? rp->first + (rp->count - 1) * rp->len + i : -1;
                r->it_first = rp->first + k * rp->len;
                r->it_len = rp->len;
            }
    }
    int n = ds_net_checkpoints(net);
    if (n == 0)
        return 0;
    if (!(m->segs = calloc((size_t)n, sizeof *m->segs)))
        return -1;
    for (int r = 0; r < net->n_repeats; r++) {
        const ds_repeat *rp = &net->repeats[r];
        if (!rp->checkpoint)
            continue;
        for (int k = 0; k < rp->count; k++) {
            segment *s = &m->segs[m->n_segs];
            s->first = rp->first + k * rp->len;
            s->last = s->first + rp->len - 1;
            s->proto = rp->first;
            for (int i = s->first; i <= s->last; i++)
                m->rt[i].seg = m->n_segs;
            m->rt[s->last].recompute = k < rp->count - 1;
            m->n_segs++;
        }
    }
    return 0;
}

/* The END of the residual block that begins at layer j (-1: none) */
static int end_of(const ds_net *net, int j)
{
    for (int e = j + 1; e < net->n_layers; e++)
        if (net->layers[e].kind == DS_LAYER_RESIDUAL_END && net->layers[e].begin == j)
            return e;
    return -1;
}

/* Layers [a, a + len) are residual blocks one after another, none empty (a transformer layer) */
static int residual_blocks(const ds_net *net, int a, int len)
{
    int j = a;
    while (j < a + len) {
        const int e = net->layers[j].kind == DS_LAYER_RESIDUAL_BEGIN ? end_of(net, j) : -1;
        if (e < j + 2 || e >= a + len)
            return 0;
        j = e + 1;
    }
    return len > 0;
}

/* Progressive layer drop: the iterations of every outermost repeat whose layers are residual
 * blocks one after another, numbered 1..L in network order; the ENDs of their blocks. Returns L. */
static int plan_layer_drop(ds_model *m)
{
    const ds_net *net = m->net;
    int L = 0;
    for (int r = 0; r < net->n_repeats; r++) {
        const ds_repeat *rp = &net->repeats[r];
        if (rp->depth != 0 || !residual_blocks(net, rp->first, rp->len))
            continue;
        for (int k = 0; k < rp->count; k++) {
            const int a = rp->first + k * rp->len;
            L++;
            for (int i = a; i < a + rp->len; i++)
                m->rt[i].pld = L;
            for (int j = a; j < a + rp->len;) { /* (residual_blocks checked the walk) */
                const int e = end_of(net, j);
                m->rt[e].pld_end = 1;
                j = e + 1;
            }
        }
    }
    return L;
}

static int same_shape(const ds_layer *a, const ds_layer *b)
{
    return a->kind == b->kind && a->in_dim == b->in_dim && a->out_dim == b->out_dim && a->heads == b->heads;
}

/* A layer's buffers in iteration k > 0 of a checkpointed repeat: those of the same layer in
 * iteration 0 (except the output of the iteration's last layer: the checkpoint). Where iteration
 * 0's layer has another width (its input width may differ from the later iterations', which all
 * read the same width), those of iteration 1; iteration 1 then has its own. -1: its own. */
static int shared_with(const ds_model *m, int i)
{
    const layer_rt *r = &m->rt[i];
    if (r->seg < 0)
        return -1;
    const segment *s = &m->segs[r->seg];
    const int len = s->last - s->first + 1, k = (s->first - s->proto) / len;
    const ds_layer *l = &m->net->layers[i];
    for (int c = 0; c < 2 && c < k; c++)
        if (same_shape(l, &m->net->layers[s->proto + c * len + (i - s->first)]))
            return s->proto + c * len + (i - s->first);
    return -1;
}

typedef struct gbuf {
    const float *p;
    int owner, lo, hi; /* the layer that allocated it; the iterations its users are in */
} gbuf;

static int gbuf_cmp(const void *a, const void *b)
{
    const float *x = ((const gbuf *)a)->p, *y = ((const gbuf *)b)->p;
    return x < y ? -1 : x > y;
}

static gbuf *gbuf_find(gbuf *g, int n, const float *p)
{
    gbuf key = {.p = p};
    return bsearch(&key, g, (size_t)n, sizeof *g, gbuf_cmp);
}

/* Activation gradients in a repeat's iterations: an iteration's inner gradient buffers are in use
 * only while backward goes through that iteration (its layers write and read them, nothing
 * outside does), so every iteration but the last takes the last one's instead of its own. A
 * buffer stays where any user (its layers, the layers writing their input gradients into it,
 * the loss) is outside the iteration: an iteration's output gradient, the residual chain's. */
static void share_grads(ds_model *m)
{
    const ds_net *net = m->net;
    const int n = net->n_layers;
    int nb = 0;
    gbuf *g = malloc((size_t)n * sizeof *g);
    if (!g)
        return; /* (nothing shared: more memory, the same results) */
    for (int i = 0; i < n; i++)
        if (m->rt[i].owns_dout)
            g[nb++] = (gbuf){.p = m->rt[i].dout, .owner = i, .lo = m->rt[i].iter, .hi = m->rt[i].iter};
    qsort(g, (size_t)nb, sizeof *g, gbuf_cmp);
#define USE(buf, who)                                                                            \
    do {                                                                                         \
        gbuf *b_ = gbuf_find(g, nb, (buf));                                                      \
        const int it_ = (who) < 0 ? -1 : m->rt[(who)].iter;                                      \
        if (b_ && (it_ < 0 || it_ != b_->lo || it_ != b_->hi))                                   \
            b_->lo = -1, b_->hi = -2;                                                            \
    } while (0)
    for (int i = 0; i < n; i++) {
        const ds_layer *l = &net->layers[i];
        if (l->kind == DS_LAYER_RESIDUAL_BEGIN)
            continue;
        USE(m->rt[i].dout, i); /* it reads (and, for the branch's last layer, the END writes) it */
        const int s = m->rt[i].src;
        if (s >= 0)
            USE(m->rt[s].dout, i); /* it writes its input gradient there */
        if (l->kind == DS_LAYER_RESIDUAL_END && m->rt[l->begin].src >= 0)
            USE(m->rt[m->rt[l->begin].src].dout, i); /* ... and the skip source's */
    }
    USE(m->rt[n - 1].dout, -1); /* the loss writes the logits' gradient */
#undef USE
    for (int k = 0; k < nb; k++) {
        const int i = g[k].owner, t = m->rt[i].twin;
        if (t < 0 || g[k].lo < 0 || !same_shape(&net->layers[i], &net->layers[t]))
            continue;
        gbuf *bt = gbuf_find(g, nb, m->rt[t].dout);
        if (!bt || bt->owner != t || bt->lo < 0)
            continue;
        /* the same layers hold it in both iterations (scanning the iteration only: its layers
         * are a range, with those of inner repeats' iterations among them) */
        const int shift = t - i, it = m->rt[i].iter, a = m->rt[i].it_first, b = a + m->rt[i].it_len;
        int same = 1;
        for (int j = a; j < b && same; j++)
            if (m->rt[j].iter == it && net->layers[j].kind != DS_LAYER_RESIDUAL_BEGIN)
                same = (m->rt[j].dout == g[k].p) == (m->rt[j + shift].dout == bt->p);
        if (!same)
            continue;
        for (int j = a; j < b; j++)
            if (m->rt[j].iter == it && m->rt[j].dout == g[k].p)
                m->rt[j].dout = m->rt[t].dout;
        OPS->free(m->be, (float *)g[k].p);
        m->act_bytes -= (size_t)(m->M * net->layers[i].out_dim) * m->esz;
        m->rt[i].owns_dout = 0;
    }
    free(g);
}

ds_status ds_model_create(ds_model **out, const ds_net *net, ds_backend *be, int64_t batch,
                          int round, const ds_model_ckpt *ck, ds_error *err)
{
    /* the activations' element counts (batch x positions x width, and attention's batch x heads
     * x T x T) must stay below 2^62, as the parser bounds the network's own sizes: else int64
     * products overflow (the parser knows no batch size) */
    const double lim = 4611686018427387904.0, BT = (double)batch * (double)net->positions;
    for (int i = 0; i < net->n_layers && batch > 0; i++) {
        const ds_layer *l = &net->layers[i];
        double most = BT * (double)(l->out_dim > l->in_dim ? l->out_dim : l->in_dim);
        if (l->kind == DS_LAYER_ATTENTION) { /* qkv [M, 3C] and the scores [B, H, T, T] */
            const double att = (double)batch * l->heads * (double)net->positions * (double)net->positions;
            most = BT * 3.0 * (double)l->in_dim > att ? BT * 3.0 * (double)l->in_dim : att;
        }
        if (most >= lim)
            return ds_error_set(err, DS_ERR_INVALID, "a micro-batch of %lld samples is too large for layer %s: "
                                "%.3g values in one activation tensor (at most 2^62)", (long long)batch,
                                l->json_path[0] ? l->json_path : "?", most);
    }
    ds_model *m = calloc(1, sizeof *m);
    if (!m)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    m->net = net;
    m->be = be;
    m->round = round;
    /* 16-bit storage when the backend has it (asked and turned off again: it is on only
     * during the passes) and DS_ACT16 is not 0, for token networks: a features network's first
     * layer reads the fp32 features as they are, which a 16-bit input buffer would round */
    const char *a16 = getenv("DS_ACT16");
    if (a16 && *a16 && strcmp(a16, "0") && strcmp(a16, "1")) {
        free(m);
        return ds_error_set(err, DS_ERR_INVALID, "DS_ACT16=%s: expected 1 (16-bit training stores activations "
                            "and working weights in 16 bits, the default) or 0 (fp32 buffers)", a16);
    }
    if (round && net->input == DS_INPUT_TOKENS && be->ops->store16 && be->ops->pack16 &&
        !(a16 && strcmp(a16, "0") == 0)) {
        m->s16 = be->ops->store16(be, round);
        be->ops->store16(be, 0);
    }
    m->esz = m->s16 ? 2 : sizeof(float);
    m->B = batch;
    m->T = net->positions;
    m->M = batch * m->T;
    const int64_t M = m->M;
    int n = net->n_layers;
    m->rt = calloc((size_t)n, sizeof *m->rt);
    m->host_losses = malloc((size_t)M * sizeof(float));
    if (!m->rt || !m->host_losses || plan_segments(m) != 0) {
        ds_model_destroy(m);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    m->sync = ck && ck->synchronize;
    m->profile = ck && ck->profile;
    if (ck && ck->layer_drop) {
        if (!OPS->scale_act) {
            ds_model_destroy(m);
            return ds_error_set(err, DS_ERR_UNSUPPORTED, "progressive layer drop is not built for backend %s yet",
                                OPS->name);
        }
        if ((m->pld_L = plan_layer_drop(m)) == 0) {
            ds_model_destroy(m);
            return ds_error_set(err, DS_ERR_INVALID, "progressive layer drop: the network has no repeat whose "
                                "layers are residual blocks (the transformer layers it drops)");
        }
        m->pld_keep = malloc((size_t)m->pld_L + 1);
        m->pld_scale = malloc(((size_t)m->pld_L + 1) * sizeof *m->pld_scale);
        if (!m->pld_keep || !m->pld_scale) {
            ds_model_destroy(m);
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        }
        memset(m->pld_keep, 1, (size_t)m->pld_L + 1);
        for (int l = 0; l <= m->pld_L; l++)
            m->pld_scale[l] = 1.0f;
        m->pld_theta = 1.0;
    }
    /* contiguous checkpoints: each checkpointed repeat's iteration outputs in one block */
    float **kept = NULL; /* per layer: its checkpoint's place in a block */
    if (ck && ck->contiguous && m->n_segs) {
        if (!(kept = calloc((size_t)n, sizeof *kept)) || !(m->blocks = calloc((size_t)net->n_repeats, sizeof *m->blocks))) {
            free(kept);
            ds_model_destroy(m);
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        }
        for (int r = 0; r < net->n_repeats; r++) {
            const ds_repeat *rp = &net->repeats[r];
            if (!rp->checkpoint)
                continue;
            int64_t all = 0; /* each iteration's output, at its own width */
            for (int k = 0; k < rp->count; k++)
                all += M * net->layers[rp->first + (k + 1) * rp->len - 1].out_dim;
            float *block = balloc(m, all, m->esz);
            m->blocks[m->n_blocks++] = block;
            if (!block) {
                free(kept);
                goto nomem;
            }
            int64_t at = 0;
            for (int k = 0; k < rp->count; k++) {
                const int last = rp->first + (k + 1) * rp->len - 1;
                kept[last] = (float *)(void *)((char *)(void *)block + (size_t)at * m->esz);
                at += M * net->layers[last].out_dim;
            }
        }
    }
    /* who feeds whom: sources, ignoring BEGIN markers (they alias their input) */
    for (int i = 0; i < n; i++) {
        const ds_layer *l = &net->layers[i];
        layer_rt *r = &m->rt[i];
        int prev = i - 1;
        r->src = prev < 0 ? -1 : (net->layers[prev].kind == DS_LAYER_RESIDUAL_BEGIN ? m->rt[prev].src : prev);
        if (l->kind == DS_LAYER_RESIDUAL_BEGIN) {
            r->src = prev < 0 ? -1 : r->src;
            continue;
        }
    }
    /* allocate outputs; END shares its gradient with the branch's last layer. In a checkpointed
     * repeat's later iterations, everything but the checkpoint is iteration 0's. */
    for (int i = 0; i < n; i++) {
        const ds_layer *l = &net->layers[i];
        layer_rt *r = &m->rt[i];
        if (l->kind == DS_LAYER_RESIDUAL_BEGIN)
            continue;
        const int j = shared_with(m, i);
        const int is_ckpt = r->seg >= 0 && m->segs[r->seg].last == i;
        if (kept && is_ckpt)
            r->out = kept[i];
        else if (j >= 0 && !is_ckpt)
            r->out = m->rt[j].out;
        else {
            r->out = balloc(m, M * l->out_dim, m->esz);
            r->owns_out = 1;
        }
        if (!r->out) {
            free(kept);
            goto nomem;
        }
        if (j >= 0) {
            const layer_rt *q = &m->rt[j];
            r->mean = q->mean, r->rstd = q->rstd, r->qkv = q->qkv, r->att = q->att;
            r->attn_out = q->attn_out, r->dqkv = q->dqkv, r->dattn_out = q->dattn_out;
            continue;
        }
        r->owns_state = 1;
        if (l->kind == DS_LAYER_LAYERNORM) {
            if (!(r->mean = balloc(m, M, 4)) || !(r->rstd = balloc(m, M, 4))) {
                free(kept);
                goto nomem;
            }
        }
        if (l->kind == DS_LAYER_ATTENTION) {
            int64_t C = l->in_dim;
            const int64_t att = m->be->ops->attention_state
                                    ? m->be->ops->attention_state(m->be, m->B, m->T, C, l->heads, l->causal)
                                    : m->B * l->heads * m->T * m->T;
            if (!(r->qkv = balloc(m, M * 3 * C, m->esz)) || !(r->att = balloc(m, att, 4)) ||
                !(r->attn_out = balloc(m, M * C, m->esz)) || !(r->dqkv = balloc(m, M * 3 * C, m->esz)) ||
                !(r->dattn_out = balloc(m, M * C, m->esz))) {
                free(kept);
                goto nomem;
            }
        }
    }
    free(kept);
    /* accumulate flags: walk backward; the first writer of a source's gradient writes */
    {
        char *written = calloc((size_t)n, 1);
        if (!written)
            goto nomem;
        for (int i = n - 1; i >= 0; i--) {
            const ds_layer *l = &net->layers[i];
            layer_rt *r = &m->rt[i];
            if (l->kind == DS_LAYER_RESIDUAL_BEGIN)
                continue;
            if (l->kind == DS_LAYER_RESIDUAL_END) {
                /* writes the skip source's gradient; the branch part is shared memory */
                int skip = m->rt[l->begin].src;
                if (skip >= 0) {
                    r->acc_skip = written[skip];
                    written[skip] = 1;
                }
                continue;
            }
            if (r->src >= 0) {
                r->acc_dx = written[r->src];
                written[r->src] = 1;
            }
        }
        free(written);
    }
    /* gradients, walking backward: END shares its gradient with the branch's last layer, and
     * with its skip source where the END writes (not adds to) the source's gradient, so that
     * its backward has nothing to copy. Not where the branch's last layer reads the skip source
     * itself (its input gradient would be added into the buffer it reads) or is another END. */
    for (int i = n - 1; i >= 0; i--) {
        const ds_layer *l = &net->layers[i];
        layer_rt *r = &m->rt[i];
        if (l->kind == DS_LAYER_RESIDUAL_BEGIN)
            continue;
        if (!r->dout) {
            r->dout = balloc(m, M * l->out_dim, m->esz);
            r->owns_dout = 1;
            if (!r->dout)
                goto nomem;
        }
        if (l->kind == DS_LAYER_RESIDUAL_END) {
            /* the branch's last layer: its output gradient is the END's, unchanged (but for
             * progressive layer drop, which scales it: then the layer has its own) */
            const int last = i - 1, skip = m->rt[l->begin].src;
            if (!r->pld_end)
                m->rt[last].dout = r->dout;
            if (skip >= 0 && !r->acc_skip && last != l->begin && net->layers[last].kind != DS_LAYER_RESIDUAL_END &&
                m->rt[last].src != skip && !m->rt[skip].dout) {
                m->rt[skip].dout = r->dout;
                r->alias_skip = 1;
            }
        }
    }
    share_grads(m);
    m->input_bytes = (size_t)M * (net->input == DS_INPUT_TOKENS ? sizeof(int32_t) : (size_t)net->feature_dim * sizeof(float));
    if (net->loss == DS_LOSS_MSE)
        m->target_bytes = (size_t)M * (size_t)net->out_dim * sizeof(float);
    else
        m->target_bytes = (size_t)M * sizeof(int32_t);
    if (!(m->inputs = OPS->alloc(be, m->input_bytes)) || !(m->targets = OPS->alloc(be, m->target_bytes)) ||
        !(m->losses = OPS->alloc(be, (size_t)M * sizeof(float))))
        goto nomem;
    *out = m;
    return DS_OK;
nomem:
    ds_model_destroy(m);
    return ds_error_set(err, DS_ERR_NOMEM, "out of memory allocating activations for micro-batch %lld",
                        (long long)batch);
}

size_t ds_model_activation_bytes(const ds_model *m) { return m->act_bytes; }

ds_status ds_model_set_positions(ds_model *m, int64_t T, ds_error *err)
{
    if (T < 1 || T > m->net->positions)
        return ds_error_set(err, DS_ERR_INVALID, "%lld positions per sample: expected 1 to %lld",
                            (long long)T, (long long)m->net->positions);
    m->T = T;
    m->M = m->B * T;
    m->have_grad = 0;
    return DS_OK;
}

int64_t ds_model_positions(const ds_model *m) { return m->T; }

void ds_model_checkpoint_stats(const ds_model *m, int *segments, int64_t *recomputed)
{
    if (segments)
        *segments = m->n_segs;
    if (recomputed)
        *recomputed = m->recomputed;
}

void ds_model_checkpoint_times(const ds_model *m, double *forward_ms, double *backward_ms, double *recompute_ms)
{
    *forward_ms = m->fwd_ms;
    *backward_ms = m->bwd_ms;
    *recompute_ms = m->rc_ms;
}
int ds_model_storage16(const ds_model *m) { return m->s16 ? m->round : 0; }

ds_status ds_model_upload_batch(ds_model *m, const void *inputs, const void *targets, ds_error *err)
{
    /* (the buffers are sized for all positions; a shorter sequence uses their front) */
    const size_t full = (size_t)m->B * (size_t)m->net->positions, rows = (size_t)m->M;
    CHECK(OPS->upload(m->be, m->inputs, inputs, m->input_bytes / full * rows));
    CHECK(OPS->upload(m->be, m->targets, targets, m->target_bytes / full * rows));
    return DS_OK;
}

ds_status ds_model_download_output(ds_model *m, float *host, ds_error *err)
{
    const int64_t count = m->M * m->net->out_dim;
    const float *out = m->rt[m->net->n_layers - 1].out;
    if (!m->s16) {
        CHECK(OPS->download(m->be, host, out, (size_t)count * sizeof(float)));
        return DS_OK;
    }
    /* 16-bit values into the upper half of host, then widened in place from the front */
    uint16_t *h = (uint16_t *)(void *)(host + count) - count;
    CHECK(OPS->download(m->be, h, out, (size_t)count * 2));
    for (int64_t i = 0; i < count; i++)
        host[i] = m->round == DS_ROUND_BF16 ? ds_bf16_to_f32(h[i]) : ds_f16_to_f32(h[i]);
    return DS_OK;
}

static const float *input_of(ds_model *m, int i)
{
    int s = m->rt[i].src;
    return s < 0 ? (const float *)m->inputs : m->rt[s].out;
}

static float *dinput_of(ds_model *m, int i)
{
    int s = m->rt[i].src;
    return s < 0 ? NULL : m->rt[s].dout;
}

static uint64_t layer_seed(uint64_t seed, int i) { return ds_hash64(seed, (uint64_t)i); }

void ds_model_set_grad_ptrs(ds_model *m, float *const *ptrs) { m->gptr = ptrs; }

int ds_model_layer_drop_depth(const ds_model *m) { return m->pld_L; }

/* Is layer r in an iteration this pass drops? (training passes only: m->train is the last
 * forward's, which backward and recomputations follow) */
static int dropped(const ds_model *m, const layer_rt *r) { return r->pld && m->train && !m->pld_keep[r->pld]; }
void ds_model_set_layer_drop(ds_model *m, double theta) { m->pld_theta = theta; }
int ds_model_layer_kept(const ds_model *m, int l) { return l < 1 || l > m->pld_L || m->pld_keep[l]; }

/* Progressive layer drop's draws for a training forward: iteration l of L is kept with
 * probability p_l = 1 - (l/L)(1 - theta) (Zhang & He 2020, eq. 5), and a kept one's residual
 * branches are scaled by 1/p_l. The draw is a pure function of the forward's seed and l, the
 * same on every rank. Evaluation forwards keep everything, unscaled (see dropped()). */
static void draw_layer_drop(ds_model *m, uint64_t seed)
{
    const uint64_t key = ds_hash64(seed, 0x504c44u); /* "PLD" */
    for (int l = 1; l <= m->pld_L; l++) {
        const double p = 1.0 - (double)l / (double)m->pld_L * (1.0 - m->pld_theta);
        const double u = (double)(ds_hash64(key, (uint64_t)l) >> 11) * 0x1.0p-53; /* [0, 1) */
        m->pld_keep[l] = u < p;
        m->pld_scale[l] = p < 1.0 ? (float)(1.0 / p) : 1.0f;
    }
}
void ds_model_set_param_ptrs(ds_model *m, const float *const *ptrs) { m->pptr = ptrs; }
void ds_model_set_fetch_hook(ds_model *m, ds_status (*fetch)(void *ctx, int layer, ds_error *err), void *ctx)
{
    m->fetch = fetch;
    m->fetch_ctx = ctx;
}

/* Does layer i's forward (fwd) or backward read its weights? */
static int reads_weights(const ds_layer *l, int fwd)
{
    switch (l->kind) {
    case DS_LAYER_EMBEDDING:
    case DS_LAYER_POSITION_EMBEDDING:
        return fwd;
    case DS_LAYER_LAYERNORM:
    case DS_LAYER_LINEAR:
    case DS_LAYER_ATTENTION:
        return 1;
    default:
        return 0;
    }
}

void ds_model_set_backward_hook(ds_model *m, ds_status (*hook)(void *ctx, int layer, ds_error *err),
                                void *ctx)
{
    m->hook = hook;
    m->hook_ctx = ctx;
}

/* 16-bit training: every tensor that crosses a layer boundary (outputs, attention's inner
 * products, and their gradients) is stored as 16-bit values (store16) or, where the backend
 * cannot, rounded to the 16-bit format in fp32 buffers. ROUND_OP rounds the output of an
 * activation op, which a backend with fuse_round has already rounded; ROUND the output of
 * accumulate, which no backend rounds on its own (with store16 acc_act adds with add). */
#define ROUND(buf, count)                                                                        \
    do {                                                                                         \
        if (m->round && !m->s16)                                                                 \
            CHECK(OPS->round16(m->be, (buf), (count), m->round));                                \
    } while (0)
#define ROUND_OP(buf, count)                                                                     \
    do {                                                                                         \
        if (!m->fused)                                                                           \
            ROUND(buf, count);                                                                   \
    } while (0)

/* asks the backend to store activations in 16 bits, or else to round its activation ops'
 * outputs (on: m->round), or to stop */
static void fuse_round(ds_model *m, int on)
{
    if (m->s16) {
        (void)OPS->store16(m->be, on ? m->round : 0); /* it said yes at creation */
        m->fused = on; /* outputs are 16-bit: nothing to round */
        return;
    }
    if (OPS->fuse_round && (m->round || !on))
        m->fused = OPS->fuse_round(m->be, on ? m->round : 0) && on && m->round;
    else
        m->fused = 0;
}

/* y (=|+=) x over activation gradients: accumulate in fp32 storage; with store16, add (which
 * rounds its output) or a copy of the 16-bit values */
static ds_status acc_act(ds_model *m, const float *x, float *y, int64_t n, int acc, ds_error *err)
{
    if (!m->s16)
        CHECK(OPS->accumulate(m->be, x, y, n, acc));
    else if (acc)
        CHECK(OPS->add(m->be, x, y, y, n));
    else
        CHECK(OPS->copy(m->be, y, x, (size_t)n * m->esz));
    return DS_OK;
}

static ds_status forward(ds_model *m, const float *params, int train, float grad_scale, uint64_t seed,
                         double *loss, ds_error *err);
static ds_status backward(ds_model *m, const float *params, float *grads, ds_error *err);

/* The passes, with the backend rounding its activation ops' outputs (fuse_round) on for their
 * length and off again however they end. */
ds_status ds_model_forward(ds_model *m, const float *params, int train, float grad_scale,
                           uint64_t seed, double *loss, ds_error *err)
{
    fuse_round(m, 1);
    ds_status st = forward(m, params, train, grad_scale, seed, loss, err);
    fuse_round(m, 0);
    return st;
}

ds_status ds_model_backward(ds_model *m, const float *params, float *grads, ds_error *err)
{
    fuse_round(m, 1);
    ds_status st = backward(m, params, grads, err);
    fuse_round(m, 0);
    return st;
}

/* Layers i, i+1, i+2: a linear layer, the tanh GELU, a linear layer, each the only reader of the
 * one before's output, with 16-bit storage: the backend may run the GELU inside the products
 * (linear_gelu_fwd at i, linear_bwd_gelu at i+2), skipping its own passes over the activations. */
static int gelu_between(const ds_model *m, int i)
{
    const ds_net *net = m->net;
    return m->s16 && i >= 0 && i + 2 < net->n_layers && net->layers[i].kind == DS_LAYER_LINEAR &&
           net->layers[i + 1].kind == DS_LAYER_GELU && net->layers[i + 1].approximate &&
           net->layers[i + 2].kind == DS_LAYER_LINEAR && m->rt[i + 1].src == i && m->rt[i + 2].src == i + 1 &&
           !m->rt[i + 1].acc_dx && !m->rt[i + 2].acc_dx &&
           /* within one repeat iteration: a checkpointed one's recomputation never runs half of
            * the pair, and a network fuses the same layers whether it checkpoints or not */
           m->rt[i].iter == m->rt[i + 1].iter && m->rt[i + 1].iter == m->rt[i + 2].iter;
}

/* Layer i's forward (train and seed: m->train, m->seed). *done_gelu: a GELU layer the linear
 * layer before it has computed (-1: none), carried from layer to layer. */
static ds_status forward_layer(ds_model *m, const float *params, int i, int *done_gelu, ds_error *err)
{
    const ds_net *net = m->net;
    const int64_t M = m->M, B = m->B, T = m->T;
    const int train = m->train;
    const uint64_t seed = m->seed;
    {
        const ds_layer *l = &net->layers[i];
        layer_rt *r = &m->rt[i];
        const float *x = input_of(m, i);
        if (dropped(m, r)) { /* a dropped iteration: its blocks pass their input on */
            if (r->pld_end) {
                const int skip = m->rt[l->begin].src;
                CHECK(OPS->copy(m->be, r->out, skip < 0 ? m->inputs : m->rt[skip].out,
                                (size_t)(M * l->out_dim) * m->esz));
                if (skip < 0) /* the model's input: not 16-bit yet (a copy never rounds) */
                    ROUND(r->out, M * l->out_dim);
            }
            return DS_OK;
        }
        if (m->fetch && reads_weights(l, 1)) {
            ds_status fs = m->fetch(m->fetch_ctx, i, err);
            if (fs != DS_OK)
                return fs;
        }
        switch (l->kind) {
        case DS_LAYER_EMBEDDING:
            CHECK(OPS->embedding_fwd(m->be, (const int32_t *)m->inputs, P(params, l->w), r->out, M, l->out_dim));
            break;
        case DS_LAYER_POSITION_EMBEDDING:
            CHECK(OPS->posadd_fwd(m->be, x, P(params, l->w), r->out, B, T, l->out_dim));
            break;
        case DS_LAYER_LAYERNORM:
            CHECK(OPS->layernorm_fwd(m->be, x, P(params, l->w), P(params, l->b), r->out, r->mean, r->rstd,
                                     M, l->out_dim, l->eps));
            break;
        case DS_LAYER_LINEAR: {
            int done = 0;
            if (OPS->linear_gelu_fwd && gelu_between(m, i)) {
                CHECK(OPS->linear_gelu_fwd(m->be, x, P(params, l->w), l->b >= 0 ? P(params, l->b) : NULL, r->out,
                                           m->rt[i + 1].out, M, l->in_dim, l->out_dim, &done));
                if (done)
                    *done_gelu = i + 1;
            }
            if (!done)
                CHECK(OPS->linear_fwd(m->be, x, P(params, l->w), l->b >= 0 ? P(params, l->b) : NULL, r->out,
                                      M, l->in_dim, l->out_dim));
            break;
        }
        case DS_LAYER_ATTENTION: {
            int64_t C = l->in_dim;
            CHECK(OPS->linear_fwd(m->be, x, P(params, l->w), P(params, l->b), r->qkv, M, C, 3 * C));
            ROUND_OP(r->qkv, M * 3 * C);
            CHECK(OPS->attention_fwd(m->be, r->qkv, r->attn_out, r->att, B, T, C, l->heads, l->causal));
            ROUND_OP(r->attn_out, M * C);
            CHECK(OPS->linear_fwd(m->be, r->attn_out, P(params, l->w2), P(params, l->b2), r->out, M, C, C));
            break;
        }
        case DS_LAYER_GELU:
            if (i != *done_gelu)
                CHECK(OPS->gelu_fwd(m->be, x, r->out, M * l->out_dim, l->approximate));
            break;
        case DS_LAYER_RELU:
            CHECK(OPS->relu_fwd(m->be, x, r->out, M * l->out_dim));
            break;
        case DS_LAYER_DROPOUT:
            if (train && l->p > 0)
                CHECK(OPS->dropout_fwd(m->be, x, r->out, M * l->out_dim, l->p, layer_seed(seed, i)));
            else
                CHECK(OPS->copy(m->be, r->out, x, (size_t)(M * l->out_dim) * m->esz));
            if (m->fused && r->src < 0 && !(train && l->p > 0)) /* a copy of the model's input: not 16-bit yet */
                ROUND(r->out, M * l->out_dim);
            break;
        case DS_LAYER_RESIDUAL_BEGIN:
            break;
        case DS_LAYER_RESIDUAL_END: {
            int skip = m->rt[l->begin].src;
            const float *xs = skip < 0 ? (const float *)m->inputs : m->rt[skip].out;
            const float s = r->pld_end && m->train ? m->pld_scale[r->pld] : 1.0f;
            if (s != 1.0f) { /* progressive layer drop: x + s f(x), s f(x) rounded as torch's would be */
                CHECK(OPS->scale_act(m->be, x, r->out, M * l->out_dim, s));
                ROUND_OP(r->out, M * l->out_dim);
                CHECK(OPS->add(m->be, r->out, xs, r->out, M * l->out_dim));
            } else
                CHECK(OPS->add(m->be, x, xs, r->out, M * l->out_dim));
            break;
        }
        }
        if (l->kind != DS_LAYER_RESIDUAL_BEGIN) /* every forward op rounds (a copy copies rounded values) */
            ROUND_OP(r->out, M * l->out_dim);
    }
    return DS_OK;
}

/* Layers [first, last] (a checkpointed segment's). */
static ds_status forward_range(ds_model *m, const float *params, int first, int last, ds_error *err)
{
    int done_gelu = -1;
    for (int i = first; i <= last; i++) {
        ds_status st = forward_layer(m, params, i, &done_gelu, err);
        if (st != DS_OK)
            return st;
    }
    return DS_OK;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A segment pass starts or ends: synchronize_checkpoint_boundary's synchronize (DeepSpeed's at the
 * start and end of each checkpointed forward and backward), which profile needs too, to time the
 * device's work. */
static ds_status seg_edge(ds_model *m, ds_error *err)
{
    if (m->sync || m->profile)
        CHECK(OPS->synchronize(m->be));
    return DS_OK;
}

static ds_status forward(ds_model *m, const float *params, int train, float grad_scale, uint64_t seed,
                         double *loss, ds_error *err)
{
    const ds_net *net = m->net;
    const int64_t M = m->M;
    ds_status st;
    m->seed = seed;
    m->train = train;
    if (m->pld_L && train) /* (an evaluation keeps every layer, and the last training forward's draws) */
        draw_layer_drop(m, seed);
    for (int i = 0; i < net->n_layers;) {
        if (m->rt[i].seg >= 0) { /* a checkpointed segment, whole */
            const int last = m->segs[m->rt[i].seg].last;
            if ((st = seg_edge(m, err)) != DS_OK)
                return st;
            const double t0 = m->profile ? now_ms() : 0;
            if ((st = forward_range(m, params, i, last, err)) != DS_OK || (st = seg_edge(m, err)) != DS_OK)
                return st;
            if (m->profile && grad_scale > 0) /* training forwards: an eval's is no checkpointed pass */
                m->fwd_ms += now_ms() - t0;
            i = last + 1;
            continue;
        }
        int done_gelu = -1; /* (a fused pair never spans an iteration's edge: see gelu_between) */
        for (; i < net->n_layers && m->rt[i].seg < 0; i++)
            if ((st = forward_layer(m, params, i, &done_gelu, err)) != DS_OK)
                return st;
    }
    const float *logits = m->rt[net->n_layers - 1].out;
    float *dlogits = grad_scale > 0 ? m->rt[net->n_layers - 1].dout : NULL;
    int64_t rows = M, count;
    if (net->loss == DS_LOSS_CROSS_ENTROPY) {
        count = rows;
        CHECK(OPS->xent_fwd(m->be, logits, (const int32_t *)m->targets, m->losses, dlogits,
                            grad_scale / (float)count, rows, net->out_dim));
    } else {
        count = rows * net->out_dim;
        CHECK(OPS->mse_fwd(m->be, logits, (const float *)m->targets, m->losses, dlogits,
                           grad_scale / (float)count, rows, net->out_dim));
    }
    if (dlogits)
        ROUND_OP(dlogits, rows * net->out_dim);
    double total;
    CHECK(OPS->sum(m->be, m->losses, rows, &total));
    *loss = total / (double)count;
    m->have_grad = grad_scale > 0;
    return DS_OK;
}

static ds_status backward(ds_model *m, const float *params, float *grads, ds_error *err)
{
    const ds_net *net = m->net;
    const int64_t M = m->M, B = m->B, T = m->T;
    if (!m->have_grad)
        return ds_error_set(err, DS_ERR_INTERNAL, "backward called without a training forward");
    int done_gelu = -1; /* a GELU layer whose backward the linear layer after it has done */
    double seg_t0 = 0;  /* profile: when the segment's backward began */
    for (int i = net->n_layers - 1; i >= 0; i--) {
        const ds_layer *l = &net->layers[i];
        layer_rt *r = &m->rt[i];
        if (r->seg >= 0 && m->segs[r->seg].last == i) { /* a checkpointed segment's backward begins */
            ds_status st = seg_edge(m, err);
            if (st != DS_OK)
                return st;
            seg_t0 = m->profile ? now_ms() : 0;
            if (r->recompute && !dropped(m, r)) { /* its inner activations were overwritten: its forward
                                                    again (a dropped one's backward reads none) */
                if ((st = forward_range(m, params, m->segs[r->seg].first, i, err)) != DS_OK ||
                    (m->profile && (st = seg_edge(m, err)) != DS_OK))
                    return st;
                if (m->profile)
                    m->rc_ms += now_ms() - seg_t0;
                m->recomputed++;
            }
        }
        const float *x = input_of(m, i);
        float *dx = dinput_of(m, i);
        int acc = r->acc_dx, by_acc = 0; /* dx came from accumulate: round it here */
        const int drop = dropped(m, r);
        if (drop && !r->pld_end)
            goto hook; /* not run forward: no gradient (its END passes the output's on) */
        if (m->fetch && reads_weights(l, 0)) {
            ds_status fs = m->fetch(m->fetch_ctx, i, err);
            if (fs != DS_OK)
                return fs;
        }
        switch (l->kind) {
        case DS_LAYER_EMBEDDING:
            CHECK(OPS->embedding_bwd(m->be, (const int32_t *)m->inputs, r->dout, G(l->w), M, l->out_dim));
            break;
        case DS_LAYER_POSITION_EMBEDDING:
            CHECK(OPS->posadd_bwd(m->be, r->dout, G(l->w), B, T, l->out_dim));
            if (dx)
                CHECK(acc_act(m, r->dout, dx, M * l->out_dim, acc, err));
            by_acc = 1;
            break;
        case DS_LAYER_LAYERNORM:
            CHECK(OPS->layernorm_bwd(m->be, r->dout, x, P(params, l->w), r->mean, r->rstd, dx,
                                     G(l->w), G(l->b), M, l->out_dim, acc));
            break;
        case DS_LAYER_LINEAR: {
            int done = 0;
            if (OPS->linear_bwd_gelu && gelu_between(m, i - 2)) {
                /* dx, the GELU's output gradient, is not written: the GELU's input gradient is */
                CHECK(OPS->linear_bwd_gelu(m->be, r->dout, x, P(params, l->w), input_of(m, i - 1),
                                           dinput_of(m, i - 1), G(l->w), l->b >= 0 ? G(l->b) : NULL, M,
                                           l->in_dim, l->out_dim, &done));
                if (done) {
                    done_gelu = i - 1;
                    dx = NULL; /* nothing to round here (the GELU layer rounds its own dx: a no-op
                                  with 16-bit storage) */
                }
            }
            if (!done)
                CHECK(OPS->linear_bwd(m->be, r->dout, x, P(params, l->w), dx, G(l->w),
                                      l->b >= 0 ? G(l->b) : NULL, M, l->in_dim, l->out_dim, acc));
            break;
        }
        case DS_LAYER_ATTENTION: {
            int64_t C = l->in_dim;
            CHECK(OPS->linear_bwd(m->be, r->dout, r->attn_out, P(params, l->w2), r->dattn_out,
                                  G(l->w2), G(l->b2), M, C, C, 0));
            ROUND_OP(r->dattn_out, M * C);
            CHECK(OPS->attention_bwd(m->be, r->dattn_out, r->qkv, r->att, r->dqkv, B, T, C, l->heads, l->causal));
            ROUND_OP(r->dqkv, M * 3 * C);
            CHECK(OPS->linear_bwd(m->be, r->dqkv, x, P(params, l->w), dx, G(l->w), G(l->b),
                                  M, C, 3 * C, acc));
            break;
        }
        case DS_LAYER_GELU:
            if (dx && i != done_gelu)
                CHECK(OPS->gelu_bwd(m->be, x, r->dout, dx, M * l->out_dim, l->approximate, acc));
            break;
        case DS_LAYER_RELU:
            if (dx)
                CHECK(OPS->relu_bwd(m->be, r->out, r->dout, dx, M * l->out_dim, acc));
            break;
        case DS_LAYER_DROPOUT:
            if (dx) {
                if (l->p > 0)
                    CHECK(OPS->dropout_bwd(m->be, r->dout, dx, M * l->out_dim, l->p, layer_seed(m->seed, i), acc));
                else
                    CHECK(acc_act(m, r->dout, dx, M * l->out_dim, acc, err));
            }
            by_acc = l->p <= 0;
            break;
        case DS_LAYER_RESIDUAL_BEGIN:
            break;
        case DS_LAYER_RESIDUAL_END: {
            int skip = m->rt[l->begin].src;
            if (skip >= 0 && !r->alias_skip) {
                CHECK(acc_act(m, r->dout, m->rt[skip].dout, M * l->out_dim, r->acc_skip, err));
                ROUND(m->rt[skip].dout, M * l->out_dim);
            }
            if (r->pld_end && !drop) { /* the branch's own gradient buffer: s dout */
                const float s = m->pld_scale[r->pld];
                float *db = m->rt[i - 1].dout;
                if (s != 1.0f) {
                    CHECK(OPS->scale_act(m->be, r->dout, db, M * l->out_dim, s));
                    ROUND_OP(db, M * l->out_dim);
                } else
                    CHECK(acc_act(m, r->dout, db, M * l->out_dim, 0, err));
            }
            break;
        }
        }
        if (dx && l->kind != DS_LAYER_RESIDUAL_BEGIN && l->kind != DS_LAYER_RESIDUAL_END) {
            if (by_acc)
                ROUND(dx, M * l->in_dim);
            else
                ROUND_OP(dx, M * l->in_dim);
        }
    hook:
        if (m->hook) {
            ds_status hs = m->hook(m->hook_ctx, i, err);
            if (hs != DS_OK)
                return hs;
        }
        if (r->seg >= 0 && m->segs[r->seg].first == i) { /* ... and ends */
            ds_status st = seg_edge(m, err);
            if (st != DS_OK)
                return st;
            if (m->profile)
                m->bwd_ms += now_ms() - seg_t0;
        }
    }
    m->have_grad = 0;
    return DS_OK;
}
