/* Network files (JSON, see ds-net(5)): parsing with shape inference into a flat list of layers
 * and a parameter table, the summary table, and parameter initialization. The runtime part
 * (buffers, forward, backward) lives in the engine; see net_internal.h. */
#ifndef DS_NET_H
#define DS_NET_H

#include <stdint.h>

#include "ds/status.h"
#include "ds/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds_input_kind { DS_INPUT_TOKENS, DS_INPUT_FEATURES } ds_input_kind;
typedef enum ds_loss_kind { DS_LOSS_CROSS_ENTROPY, DS_LOSS_MSE } ds_loss_kind;

typedef enum ds_layer_kind {
    DS_LAYER_EMBEDDING,
    DS_LAYER_POSITION_EMBEDDING,
    DS_LAYER_LAYERNORM,
    DS_LAYER_LINEAR,
    DS_LAYER_ATTENTION,
    DS_LAYER_GELU,
    DS_LAYER_RELU,
    DS_LAYER_DROPOUT,
    DS_LAYER_RESIDUAL_BEGIN, /* marks x; the matching END computes x + f(x) */
    DS_LAYER_RESIDUAL_END
} ds_layer_kind;

typedef enum ds_param_init { DS_INIT_NORMAL, DS_INIT_ZEROS, DS_INIT_ONES } ds_param_init;

typedef struct ds_layer {
    ds_layer_kind kind;
    char path[DS_NAME_MAX];  /* "h.0.attn"; "" for unnamed layers */
    char json_path[160];     /* "layers[2].layers[0].layers[1]" */
    int64_t in_dim, out_dim; /* features per position */
    int w, b;                /* parameter indices (-1: none). attention: qkv weight/bias */
    int w2, b2;              /* attention: proj weight/bias */
    int tied;                /* linear: w belongs to another layer (tied_to) */
    int heads, causal;       /* attention */
    int approximate;         /* gelu: 1 tanh, 0 exact erf */
    float p;                 /* dropout */
    float eps;               /* layernorm */
    int begin;               /* residual end: index of its begin */
    int64_t params;          /* parameters this layer owns */
    int64_t flops;           /* forward FLOPs for one sample (a whole sequence for tokens) */
    int64_t flops_tt;        /* the part of them that grows with seq_len squared (attention's) */
} ds_layer;

/* One repeat block as unrolled: iteration k is layers [first + k*len, first + (k+1)*len).
 * checkpoint: activation checkpointing, each iteration one segment (ds-net(5) "checkpoint"). */
typedef struct ds_repeat {
    int first, len, count;
    int depth;               /* 0: not inside another repeat */
    int checkpoint;
    char name[DS_NAME_MAX];  /* "h" */
    char json_path[160];     /* "layers[2]" */
} ds_repeat;

typedef struct ds_net {
    ds_input_kind input;
    int64_t vocab_size, seq_len; /* tokens */
    int64_t feature_dim;         /* features */
    ds_loss_kind loss;
    int n_layers;
    ds_layer *layers;
    ds_tensor_table params;
    ds_param_init *init;         /* per parameter */
    int64_t out_dim;             /* features of the last layer */
    int64_t positions;           /* positions per sample: seq_len for tokens, 1 for features */
    int64_t total_params;        /* unpadded */
    int64_t flops_per_sample;    /* forward */
    char *source_name;
    char *json_text;
    int n_repeats;               /* every repeat block (an inner one once per outer iteration) */
    ds_repeat *repeats;
} ds_net;

ds_status ds_net_parse_file(ds_net **out, const char *path, ds_error *err);
ds_status ds_net_parse_string(ds_net **out, const char *json, const char *name, ds_error *err);
void ds_net_free(ds_net *net);

/* The layer table (path, type, output shape, parameters, FLOPs) and totals, as text for a
 * terminal; batch sets the leading dimension shown. Caller frees. */
char *ds_net_summary(const ds_net *net, int64_t batch);

/* Default initialization into a host flat buffer of params.total floats (zeroed padding):
 * normal(0, 0.02) for weights, zeros for biases, ones for layernorm gains, from seed. */
void ds_net_init_params(const ds_net *net, float *flat, uint64_t seed);
/* The same values tensor by tensor, without a flat buffer: each tensor's into buf (room for the
 * largest tensor), then fn(ctx, its index, buf); fn's error stops it. */
ds_status ds_net_init_each(const ds_net *net, uint64_t seed, float *buf,
                           ds_status (*fn)(void *ctx, int tensor, const float *values, ds_error *err), void *ctx,
                           ds_error *err);

const char *ds_layer_kind_name(ds_layer_kind k);

/* Activation checkpointing (Megatron-LM's --checkpoint-activations): checkpoint the iterations
 * of every outermost repeat, and no inner one, whatever the network file said (on = 0: none).
 * Returns the number of repeats checkpointed. */
int ds_net_checkpoint_repeats(ds_net *net, int on);
/* Checkpointed segments (one per iteration of a checkpointed repeat): the number of
 * checkpoints the forward pass keeps. */
int ds_net_checkpoints(const ds_net *net);
/* Forward FLOPs per sample that backward recomputes: every checkpointed iteration's but the
 * last of each repeat. */
int64_t ds_net_recompute_flops(const ds_net *net);
/* Forward FLOPs per sample of a tokens network when it reads only the first T positions (1 <= T
 * <= seq_len: curriculum learning), by the same counts as flops_per_sample. */
int64_t ds_net_flops_per_sample_at(const ds_net *net, int64_t T);

#ifdef __cplusplus
}
#endif
#endif
