/* DeepSpeed ds_config.json: parsing, DeepSpeed's batch-size rules, "auto", old spellings.
 * Keys of features that are not built yet are refused with an error naming the key; unknown
 * top-level keys are warnings (errors with strict) that suggest the nearest known key. */
#ifndef DS_CONFIG_H
#define DS_CONFIG_H

#include <stdint.h>

#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds_optimizer_type {
    DS_OPTIM_NONE = 0, /* no optimizer block: the client supplies one */
    DS_OPTIM_SGD,
    DS_OPTIM_ADAM,  /* DeepSpeed "Adam": AdamW unless adam_w_mode is false */
    DS_OPTIM_ADAMW
} ds_optimizer_type;

typedef struct ds_optimizer_config {
    ds_optimizer_type type;
    char name[64];      /* the type as written in ds.json ("AdamW", "adam", "SGD") */
    double lr;
    /* Adam / AdamW (DeepSpeed FusedAdam semantics) */
    double beta1, beta2, eps, weight_decay;
    int adam_w_mode;     /* 1: decoupled weight decay; 0: L2 added to the gradient */
    int bias_correction; /* 1 (default) */
    /* SGD (torch semantics) */
    double momentum, dampening;
    int nesterov;
} ds_optimizer_config;

/* Values a client may supply for keys that are "auto" or missing (0 = none supplied). */
typedef struct ds_config_hints {
    int64_t micro_batch; /* used when train_micro_batch_size_per_gpu is "auto"/absent and
                            nothing else allows inferring it */
} ds_config_hints;

#define DS_CONFIG_MAX_WARNINGS 32

typedef struct ds_config {
    /* Resolved batch sizes: train_batch_size = micro_batch * grad_accum * world_size. */
    int64_t train_batch_size;
    int64_t micro_batch;    /* train_micro_batch_size_per_gpu */
    int64_t grad_accum;     /* gradient_accumulation_steps */
    int world_size;         /* the data-parallel size the sizes were resolved for */

    double gradient_clipping; /* 0 = off */
    int64_t allreduce_bucket_size; /* elements per gradient all-reduce bucket; 0 = 5e8 */
    int prescale_gradients;           /* divide by the world size before the all-reduce */
    double gradient_predivide_factor; /* f: divide by f before the sum, by W/f after (1.0) */
    int64_t steps_per_print;  /* 0 = no periodic print (DeepSpeed default: None) */
    int wall_clock_breakdown; /* the engine's fwd/bwd/step timers (engine.md §7) */
    int seed_set;             /* "seed" present */
    uint64_t seed;

    int has_optimizer;        /* 0: no optimizer block */
    ds_optimizer_config optimizer;

    /* Warnings for the caller to print (unknown keys, deprecated spellings, defaults used). */
    int n_warnings;
    char warnings[DS_CONFIG_MAX_WARNINGS][256];

    char *source_name; /* the path (or name) the config came from, for messages */
    char *json_text;   /* the text as loaded, kept for checkpoints and run records */
} ds_config;

/* Parse a config file. world_size is the data-parallel size (1 for one process). With strict
 * set, unknown top-level keys are errors instead of warnings. hints may be NULL. On error the
 * message names the file and the JSON path ("ds.json: optimizer.params.lr: expected a number,
 * found \"fast\""). cfg is valid (and must be freed) only when DS_OK is returned. */
ds_status ds_config_load_file(ds_config *cfg, const char *path, int world_size, int strict,
                              const ds_config_hints *hints, ds_error *err);

/* Same, from a JSON string; name is used in messages. */
ds_status ds_config_load_string(ds_config *cfg, const char *json, const char *name,
                                int world_size, int strict, const ds_config_hints *hints,
                                ds_error *err);

void ds_config_free(ds_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
