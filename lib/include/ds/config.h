/* DeepSpeed ds_config.json: parsing, DeepSpeed's batch-size rules, "auto", old spellings.
 * Keys of features that are not built yet are refused with an error naming the key; unknown
 * top-level keys are warnings (errors with strict) that suggest the nearest known key. */
#ifndef DS_CONFIG_H
#define DS_CONFIG_H

#include <stdint.h>

#include "ds/sched.h"
#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds_optimizer_type {
    DS_OPTIM_NONE = 0, /* no optimizer block: the client supplies one */
    DS_OPTIM_SGD,
    DS_OPTIM_ADAM,  /* DeepSpeed "Adam": AdamW unless adam_w_mode is false */
    DS_OPTIM_ADAMW,
    DS_OPTIM_LAMB,    /* DeepSpeed FusedLamb */
    DS_OPTIM_ADAGRAD, /* torch.optim.Adagrad */
    DS_OPTIM_USER     /* registered by the client under its name (ds_user_optimizer) */
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
    int momentum_cycled; /* set by the engine: a scheduler (OneCycle) changes the momentum, so the
                            momentum buffer exists from the start even where it starts at 0 */
    /* LAMB (FusedLamb): trust-ratio clamp, eps placement */
    double min_coeff, max_coeff;
    int eps_inside_sqrt;
    /* Adagrad (torch) */
    double lr_decay, initial_accumulator_value;
    /* User optimizers: optimizer.params as JSON text ("{}" when absent), owned by the config. */
    const char *params_json;
} ds_optimizer_config;

/* Training precision: fp32, or 16-bit numerics with fp32 master weights (ds-config(5)). */
typedef enum ds_precision { DS_PREC_FP32 = 0, DS_PREC_FP16, DS_PREC_BF16 } ds_precision;

/* The fp16 block's loss-scaling keys (engine.md 2.2; defaults from DECISIONS.md). */
typedef struct ds_loss_scale_config {
    double loss_scale;          /* > 0: a static scale; 0: dynamic */
    int initial_scale_power;    /* dynamic: start at 2^power (16) */
    int64_t loss_scale_window;  /* good steps between growths (1000) */
    int hysteresis;             /* overflows tolerated before the scale drops (2) */
    int consecutive_hysteresis; /* refill the hysteresis on every good step (false) */
    double min_loss_scale;      /* (1) */
} ds_loss_scale_config;

/* zero_optimization (ckpt-zero.md 4.1): stages 0, 1 and 2. */
/* Which key asked for ZeRO-Offload of the optimizer (for messages); 0: none did. */
typedef enum ds_offload_key { DS_OFFLOAD_OPTIMIZER = 1, DS_OFFLOAD_CPU_OFFLOAD = 2 } ds_offload_key;

typedef struct ds_zero_config {
    int stage;                     /* 0: plain data parallelism; 1: optimizer state partitioned;
                                      2: gradients too; 3: the parameters too, each layer's
                                      gathered when it runs */
    int64_t reduce_bucket_size;    /* elements per gradient reduce-scatter (5e8) */
    int64_t allgather_bucket_size; /* elements per parameter all-gather (5e8) */
    int reduce_scatter;            /* 1: reduce-scatter the buckets; 0: all-reduce them */
    int allgather_partitions;      /* 1: all-gather the updated partitions; 0: broadcasts */
    int overlap_comm;              /* stage 2: reduce buckets in a thread while backward runs */
    int offload_optimizer;         /* a ds_offload_key: offload_optimizer.device "cpu" (or
                                      cpu_offload true): the fp32 master weights and optimizer
                                      state in host memory and the step on the CPU. That is where
                                      the cpu backend keeps them anyway; the engine refuses it on
                                      other backends. */
    int offload_param;             /* offload_param.device "cpu": stage 3's parameter partitions in
                                      host memory (the cpu backend's; refused on other backends) */
    int64_t param_persistence_threshold; /* stage 3: tensors of at most this many elements stay
                                            whole on every rank (1e5) ... */
    int64_t model_persistence_threshold; /* ... while their total stays within this (no limit) */
} ds_zero_config;

/* Values a client may supply for keys that are "auto" or missing (0 = none supplied). */
typedef struct ds_config_hints {
    int64_t micro_batch; /* used when train_micro_batch_size_per_gpu is "auto"/absent and
                            nothing else allows inferring it */
    /* Names of client-registered optimizers that optimizer.type may select (exact match). */
    const char *const *user_optimizers;
    int n_user_optimizers;
} ds_config_hints;

#define DS_CONFIG_MAX_WARNINGS 32

/* tensorboard and csv_monitor: DeepSpeed's monitors, written by rank 0 into
 * output_path/job_name (output_path "" : job_name, relative to the working directory). */
typedef struct ds_monitor_config {
    int enabled;
    char output_path[512];
    char job_name[256];   /* "DeepSpeedJobName" */
} ds_monitor_config;

/* activation_checkpointing: how the network's checkpointed repeats (ds-net(5) "checkpoint",
 * ds-train --checkpoint-activations) keep their checkpoints. */
typedef struct ds_actckpt_config {
    int given;                  /* the section is in the file */
    int partition_activations;  /* over the model-parallel group, which is one rank in ds */
    int contiguous;             /* contiguous_memory_optimization: a repeat's checkpoints in one block */
    int cpu_checkpointing;      /* checkpoints in host memory (where the cpu backend keeps them) */
    int synchronize;            /* synchronize_checkpoint_boundary */
    int profile;                /* time the checkpointed passes */
    int64_t number_checkpoints; /* 0: not given; else at least the network's checkpoints */
} ds_actckpt_config;

/* The legacy top-level curriculum_learning block (DeepSpeed's CurriculumScheduler), for
 * curriculum_type "seqlen": training forwards read the first ds_curriculum_difficulty() positions
 * of each sample. */
typedef enum { DS_CL_FIXED_LINEAR, DS_CL_FIXED_ROOT, DS_CL_FIXED_DISCRETE } ds_cl_schedule;
#define DS_CL_MAX_DISCRETE 64
typedef struct ds_curriculum_config {
    int enabled;
    int64_t min_difficulty, max_difficulty;
    ds_cl_schedule schedule;
    int64_t total_step, difficulty_step; /* fixed_linear, fixed_root */
    double root_degree;                  /* fixed_root */
    int n_discrete;                      /* fixed_discrete: difficulty[n], max_step[n - 1] */
    int64_t difficulty[DS_CL_MAX_DISCRETE], max_step[DS_CL_MAX_DISCRETE];
} ds_curriculum_config;

/* CurriculumScheduler.get_difficulty(global_steps) */
int64_t ds_curriculum_difficulty(const ds_curriculum_config *c, int64_t global_steps);
/* update_difficulty: the difficulty after current for the step global_steps (it stays once it
 * has reached max_difficulty) */
int64_t ds_curriculum_update(const ds_curriculum_config *c, int64_t current, int64_t global_steps);

/* progressive_layer_drop (Zhang & He 2020, DeepSpeed's ProgressiveLayerDrop): training forwards
 * drop the transformer layers (see ds-config(5)) with keep probabilities from ds_pld_theta(). */
typedef struct ds_pld_config {
    int enabled;
    double theta; /* the keep probability theta(t) tends to (the deepest layer's) */
    double gamma; /* how fast: theta(t) = (1 - theta) exp(-gamma t) + theta */
} ds_pld_config;

/* The theta the forward of step global_steps (0-based) uses: 1 at steps 0 and 1, then
 * (1 - theta) exp(-gamma (global_steps - 1)) + theta, as DeepSpeed's engine gives it. */
double ds_pld_theta(const ds_pld_config *c, int64_t global_steps);

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
    char device[16];          /* "device" (ds's own key): "cpu", "cuda", "cuda:N", "auto"; "" if absent */

    int has_optimizer;        /* 0: no optimizer block */
    ds_optimizer_config optimizer;

    ds_zero_config zero;
    ds_precision precision;   /* fp16.enabled / bf16.enabled */
    ds_loss_scale_config fp16;
    int fp16_auto_cast;       /* fp16.auto_cast: round a features network's inputs to fp16 */
    int bf16_check_overflow;  /* bf16.check_grad_overflow: skip steps with inf/NaN gradients */
    ds_sched_config scheduler; /* type DS_SCHED_NONE: no "scheduler" block (see ds/sched.h) */
    ds_actckpt_config actckpt; /* activation_checkpointing */
    ds_monitor_config tensorboard, csv_monitor; /* the monitors (ds-config(5) MONITORS) */
    ds_curriculum_config curriculum; /* curriculum_learning (legacy, seqlen) */
    ds_pld_config pld;               /* progressive_layer_drop */

    /* Warnings for the caller to print (unknown keys, deprecated spellings, defaults used). */
    int n_warnings;
    char warnings[DS_CONFIG_MAX_WARNINGS][256];

    char *source_name; /* the path (or name) the config came from, for messages */
    char *json_text;   /* the text as loaded, kept for checkpoints and run records */
    char *optimizer_params_json; /* user optimizers: optimizer.params as JSON text */
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
