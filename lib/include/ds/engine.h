/* The engine: DeepSpeed's core API in C. initialize from a config and a network, then for every
 * micro-batch forward -> backward -> step; the optimizer update happens at the gradient
 * accumulation boundary, as in DeepSpeed. ds-train is a thin client of this API, and so can a
 * user's own program be. */
#ifndef DS_ENGINE_H
#define DS_ENGINE_H

#include <stdint.h>

#include "ds/config.h"
#include "ds/dist.h"
#include "ds/net.h"
#include "ds/optim.h"
#include "ds/prof.h"
#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_engine ds_engine;

typedef struct ds_engine_options {
    const char *config_path;  /* ds.json (or config_json with config_name) */
    const char *config_json;
    const char *config_name;
    const char *net_path;     /* network file (or net_json with net_name) */
    const char *net_json;
    const char *net_name;
    const char *backend;      /* "cpu", "cpu:generic", "cpu:avx2", "cpu:avx512", "cuda", "cuda:N", "auto"; NULL: the
                                 config's "device", else backend_default, else "cpu" */
    const char *backend_default; /* see backend (ds-train: "auto") */
    int strict_config;        /* unknown top-level config keys are errors */
    int64_t micro_batch_hint; /* used when the config leaves the micro-batch "auto" */
    int seed_set;             /* override the config's seed */
    uint64_t seed;
    const char *init_from;    /* safetensors weights to start from (by name), or NULL */
    /* Data parallelism: the communicator of the data-parallel ranks (NULL: one process), this
     * process's rank in it and its size. The batch sizes of the config are resolved for
     * world_size; gradients are averaged over the ranks once per effective batch. */
    ds_comm *comm;
    int rank, world_size;
    /* The job's rendezvous store (ds_dist_join_from_env's). Needed with a comm on a GPU
     * backend: the engine makes the backend's own communicator (NCCL) through it, rank 0
     * publishing its id; the gradients and parameters then travel over that communicator,
     * and comm keeps the small host-side reductions (loss, norm, overflow flag). */
    ds_store *store;
    int64_t allreduce_bucket; /* elements per all-reduce bucket (0: DeepSpeed's 5e8) */
    /* Optimizers the program provides, selectable by name in optimizer.type (ds/optim.h). The
     * array must outlive the engine. */
    const ds_user_optimizer *user_optimizers;
    int n_user_optimizers;
    /* Planning only (ds-train --plan): lay out memory as rank 0 of world_size ranks would,
     * without a communicator; the engine must not train. */
    int plan_only;
    int timers;               /* time fwd/bwd/step even when the config's wall_clock_breakdown
                                 is false (ds-train --prof_db) */
    int checkpoint_activations; /* checkpoint the iterations of every outermost repeat, whatever
                                   the network file says (Megatron-LM's --checkpoint-activations;
                                   see ds-net(5) "checkpoint") */
} ds_engine_options;

/* One micro-batch on the host. Tokens nets: tokens and targets [B*T]. Features nets: x [B*F]
 * and labels [B] (cross_entropy) or y [B*out] (mse). */
typedef struct ds_batch {
    const int32_t *tokens, *targets;
    const float *x;
    const int32_t *labels;
    const float *y;
    /* the samples the arrays hold, checked against the micro-batch (DS_ERR_INVALID when they
     * differ); 0: not given, the arrays must hold a whole micro-batch (they cannot be checked) */
    int64_t samples;
} ds_batch;

ds_status ds_initialize(ds_engine **out, const ds_engine_options *opts, ds_error *err);
void ds_engine_destroy(ds_engine *e);

/* Training forward: uploads the batch, computes the mean loss and prepares its gradient. */
ds_status ds_engine_forward(ds_engine *e, const ds_batch *batch, double *loss, ds_error *err);
/* Adds this micro-batch's gradients (divided by gradient_accumulation_steps). */
ds_status ds_engine_backward(ds_engine *e, ds_error *err);
/* Call after every micro-batch; at the accumulation boundary: global norm, clipping, the
 * optimizer update, zeroed gradients, global_steps + 1. */
ds_status ds_engine_step(ds_engine *e, ds_error *err);
/* Forward without gradients or dropout. Under ZeRO stage 3 with several ranks every rank calls
 * it (as forward and backward): the layers' weights are gathered from every rank's partition. */
ds_status ds_engine_eval(ds_engine *e, const ds_batch *batch, double *loss, ds_error *err);

int ds_engine_is_gradient_accumulation_boundary(const ds_engine *e);
int64_t ds_engine_global_steps(const ds_engine *e);
int64_t ds_engine_global_samples(const ds_engine *e);
int64_t ds_engine_micro_steps(const ds_engine *e);
/* The lr (and beta1 for the Adam family, momentum for SGD) that the next optimizer update will
 * use: DeepSpeed's get_lr()/get_mom(). With a "scheduler" block the engine steps the schedule
 * once per applied update, after it (engine.md §3). get_mom is NAN for an optimizer without
 * momentum. */
double ds_engine_get_lr(const ds_engine *e);
double ds_engine_get_mom(const ds_engine *e);
/* The lr and momentum that the last applied update used (NAN before the first). */
void ds_engine_last_lr(const ds_engine *e, double *lr, double *mom);
/* Set the lr of the next update (an LR range test drives it this way). A scheduler, if the
 * config has one, writes its own value again after that update. */
ds_status ds_engine_set_lr(ds_engine *e, double lr, ds_error *err);
/* The run's number of optimizer steps, for a scheduler whose total_num_steps is "auto"
 * (WarmupDecayLR, WarmupCosineLR); a no-op otherwise. Call before the first update. */
ds_status ds_engine_set_total_steps(ds_engine *e, int64_t steps, ds_error *err);
/* Global L2 norm of the gradients at the last update (before clipping); -1 before any. */
double ds_engine_get_global_grad_norm(const ds_engine *e);
/* Mean loss over the micro-batches of the last completed effective batch (averaged over the
 * data-parallel ranks). */
double ds_engine_last_loss(const ds_engine *e);
/* Mixed precision (fp16 / bf16 blocks): the precision trained in, the loss scale the next
 * backward uses, the scale the last update used, and the steps skipped for overflow (inf or NaN
 * in a gradient on any rank; no update, no scheduler step, global_steps still advances). */
ds_precision ds_engine_precision(const ds_engine *e);
double ds_engine_loss_scale(const ds_engine *e);
double ds_engine_last_step_loss_scale(const ds_engine *e);
int64_t ds_engine_skipped_steps(const ds_engine *e);
/* 1 when the last completed effective batch updated the weights, 0 when it was skipped. */
int ds_engine_was_step_applied(const ds_engine *e);
/* Trust ratios of the last LAMB step (one per tensor, in table order), or NULL. */
const float *ds_engine_lamb_coeffs(const ds_engine *e);
/* All-reduce calls and bytes of the last optimizer step (0 for one process). */
void ds_engine_last_allreduce(const ds_engine *e, int64_t *calls, int64_t *bytes);

/* Wall-clock breakdown (engine.md §7): the timers, or NULL when wall_clock_breakdown (or
 * options.timers) is off. The collectives of the last optimizer step, with their bytes and
 * times, are recorded only while the timers are on (*n = 0 otherwise). */
const ds_timers *ds_engine_timers(const ds_engine *e);
const ds_collective_record *ds_engine_last_collectives(const ds_engine *e, int *n);

const ds_config *ds_engine_config(const ds_engine *e);
const ds_net *ds_engine_net(const ds_engine *e);
const char *ds_engine_backend_name(const ds_engine *e);
/* What a rank holds, in bytes (ds-train --plan prints it for stages 0-3). */
typedef struct ds_memory_report {
    size_t params;      /* the working weights the model reads (every rank holds them all;
                           at stage 3 its partition, the persistent tensors and one layer's
                           gathered ones; 2 bytes each where activations16 says 16-bit storage) */
    size_t master;      /* separate fp32 master weights (16-bit training; this rank's
                           partition under ZeRO); 0 in fp32, where they are the parameters */
    size_t grads;       /* gradients: the flat buffer, or this rank's partition (ZeRO-2, 3) */
    size_t optim;       /* optimizer state (this rank's partition under ZeRO 1 to 3) */
    size_t activations; /* activations and their gradients for one micro-batch (with activation
                           checkpointing: the checkpoints and one set of a repeat's buffers) */
    int checkpoints;    /* activation checkpoints kept (checkpointed segments); 0: none */
    int64_t recomputed; /* segment forwards backward has run again so far */
    int activations16;  /* the 16-bit format (ds_round_mode) they and the working weights are
                           stored in; 0: fp32 buffers */
    size_t comm;        /* communication buffers (ZeRO-2/3 gradient buckets) */
    int zero_stage, world_size;
    int64_t partition_begin, partition_end; /* flat elements this rank updates */
    /* stage 3 with several ranks: the persistent tensors (their number and elements) and the
     * most elements one layer gathers (the arena) */
    int z3_persistent_tensors;
    int64_t z3_persistent, z3_arena;
} ds_memory_report;
void ds_engine_memory_report(const ds_engine *e, ds_memory_report *m);
/* Positions per sample of the training forwards: curriculum_learning's current difficulty (the
 * last forward's, min_difficulty before the first), else the network's. */
int64_t ds_engine_seqlen(const ds_engine *e);
/* progressive_layer_drop: the transformer layers it may drop (L; 0: off), the theta of the
 * last training forward (1 before the first), and in kept[0..L-1] (may be NULL) whether that
 * forward kept (1) or dropped (0) layer l+1; layer l is kept with probability
 * 1 - (l/L)(1 - theta), and a kept one's residual branches are scaled by 1/that. */
int ds_engine_layer_drop(const ds_engine *e, double *theta, unsigned char *kept);
/* activation_checkpointing.profile: milliseconds so far in the checkpointed segments' forwards,
 * their backwards (recomputation included) and the recomputations alone (all 0 without it). */
void ds_engine_checkpoint_times(const ds_engine *e, double *forward_ms, double *backward_ms, double *recompute_ms);
/* The ZeRO stage and the flat elements [begin, end) this rank owns (all of them at stage 0). */
void ds_engine_partition(const ds_engine *e, int *stage, int64_t *begin, int64_t *end);
/* The ZeRO partition rule: n elements padded to a multiple of 16 * world; rank r owns
 * [r P, min((r+1) P, n)) with P the padded size / world. */
void ds_zero_partition(int64_t n, int world, int rank, int64_t *begin, int64_t *end);

/* Bytes held: parameters (fp32 master weights, plus the 16-bit working weights in fp16/bf16
 * mode), gradients, optimizer state, activations. */
void ds_engine_memory(const ds_engine *e, size_t *params, size_t *grads, size_t *optim,
                      size_t *activations);

/* Weights by name. Load: missing, unexpected and mis-shaped names are listed in the error.
 * Save: a safetensors file PyTorch reads (refuses to overwrite unless overwrite is set); under
 * ZeRO with fp16/bf16, and at stage 3, the fp32 master weights are partitioned, so every rank
 * must call it (they are gathered) and rank 0 writes. Get/set param: the fp32 master weights
 * (under ZeRO 1/2 with fp16/bf16, elements outside this rank's partition read from the 16-bit
 * working weights; at stage 3 with several ranks getting one is a collective: every rank gets
 * the same names in the same order). Load and set param: every rank, with the same values.
 * Get/set grad: under ZeRO-2 and 3 only this rank's partition of the gradient exists (other
 * elements read as 0; writes to them are dropped). */
ds_status ds_engine_load_weights(ds_engine *e, const char *path, ds_error *err);
ds_status ds_engine_save_weights(ds_engine *e, const char *path, int overwrite, ds_error *err);
/* Whether ds_engine_save_weights is a collective here (every rank must call it). */
int ds_engine_save_weights_collective(const ds_engine *e);
/* Copy a parameter or its gradient (by name) to host memory of numel floats. */
ds_status ds_engine_get_param(ds_engine *e, const char *name, float *host, int64_t numel,
                              ds_error *err);
ds_status ds_engine_get_grad(ds_engine *e, const char *name, float *host, int64_t numel,
                             ds_error *err);
ds_status ds_engine_set_param(ds_engine *e, const char *name, const float *host, int64_t numel,
                              ds_error *err);
/* Overwrite a gradient before ds_engine_step (tests: inject an inf to exercise overflow). */
ds_status ds_engine_set_grad(ds_engine *e, const char *name, const float *host, int64_t numel,
                             ds_error *err);
/* Copy the logits of the last forward: [B*positions*out_dim] floats. */
ds_status ds_engine_get_output(ds_engine *e, float *host, int64_t count, ds_error *err);

/* ---- checkpoint state (ds/ckpt.h builds save_checkpoint/load_checkpoint on these) ----------
 * Flat buffers are addressed by element ranges. A ZeRO partition follows one rule (ckpt(5)):
 * for N = numel elements and W partitions, Np = ceil(N / (16 W)) * 16 W, P = Np / W, and
 * partition r is [r P, min((r + 1) P, N)) (the tail may be shorter or empty; the padding up to
 * Np is zero and never stored). Stage 0 stores one partition [0, N), written by rank 0. */

#define DS_ENGINE_BUF_MASTER (-1) /* the fp32 master weights; 0 .. n_state-1: optimizer state */
/* the working weights the model reads: every rank holds them all, except under ZeRO stage 3,
 * where reading them is a collective (every rank reads the same ranges, in the same order) and
 * writing them is refused (write the master weights, then ds_engine_sync_weights) */
#define DS_ENGINE_BUF_WEIGHTS (-2)

typedef struct ds_engine_state_info {
    int zero_stage;          /* 0 to 3 */
    int world_size, rank;    /* data-parallel */
    ds_comm *comm;           /* the data-parallel communicator, NULL for one process */
    int64_t numel;           /* N: elements of a flat buffer (per-tensor alignment included) */
    int partition_world;     /* the W of the rule: 1 in stage 0, world_size in stages 1-3 */
    int partition_rank;      /* the partition this rank stores, -1 if none (stage 0, rank > 0) */
    int64_t begin, end;      /* that partition's elements (empty when partition_rank < 0) */
    int64_t hold_begin, hold_end; /* the elements this rank holds and loads: [0, N) in stage 0,
                                     its partition in stages 1-3 */
    ds_precision precision;
    const char *optimizer;   /* the optimizer's name: "AdamW", "Lamb", a user optimizer's */
    int n_state;             /* optimizer state buffers, in DeepSpeed's spelling: */
    const char *state_names[DS_USER_OPTIM_MAX_STATE]; /* exp_avg exp_avg_sq (Adam family, LAMB),
                                momentum_buffer (SGD with momentum), sum (Adagrad), state0.. */
} ds_engine_state_info;

/* Everything else a bit-exact resume needs (dropout draws from seed and micro_steps; the data
 * position is the client's function of global_steps). */
typedef struct ds_engine_scalars {
    int64_t global_steps, global_samples, micro_steps, skipped_steps;
    int64_t optimizer_step;  /* updates applied (Adam's bias-correction count) */
    ds_loss_scaler scaler;
    double last_step_scale;  /* the loss scale the last update used */
    int applied;             /* the last effective batch updated the weights */
    int64_t sched_iter;      /* the scheduler's last_batch_iteration (-1 before any update) */
    double lr, mom;          /* for the next update (mom NAN without momentum) */
    double applied_lr, applied_mom; /* of the last applied update (NAN before any) */
    double last_loss, grad_norm;
    uint64_t seed;
} ds_engine_scalars;

void ds_engine_state_info_get(const ds_engine *e, ds_engine_state_info *info);
/* Copy elements [begin, end) of a buffer (DS_ENGINE_BUF_MASTER or a state index) to or from
 * host memory; the range must lie in [hold_begin, hold_end). After writing master weights call
 * ds_engine_sync_weights before training. */
ds_status ds_engine_read_partition(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                   float *host, ds_error *err);
ds_status ds_engine_write_partition(ds_engine *e, int buffer, int64_t begin, int64_t end,
                                    const float *host, ds_error *err);
/* The working weights from the master weights (16-bit rounding; ZeRO: the all-gather). */
ds_status ds_engine_sync_weights(ds_engine *e, ds_error *err);
void ds_engine_get_scalars(const ds_engine *e, ds_engine_scalars *s);
/* Only at an accumulation boundary (no micro-batch of an effective batch taken yet). */
ds_status ds_engine_set_scalars(ds_engine *e, const ds_engine_scalars *s, ds_error *err);
/* What ds_engine_set_scalars checks, without setting anything (a loader checks before it
 * writes weights). */
ds_status ds_engine_check_scalars(const ds_engine *e, const ds_engine_scalars *s, ds_error *err);
/* 1 between effective batches: where a checkpoint may be saved or loaded. */
int ds_engine_at_boundary(const ds_engine *e);

/* DeepSpeed's save_checkpoint / load_checkpoint (implemented in lib/ckpt, format in
 * ds-checkpoint(5)). Collective over the data-parallel ranks: every rank calls them. Save writes
 * DIR/.tmp.TAG, fsyncs it, renames it to DIR/TAG (default "global_step<N>"; an existing TAG is
 * refused), then rewrites DIR/latest; client_state_json (a JSON object or NULL) comes back from
 * load. Load (tag NULL: the newest, ds_ckpt_newest: latest's unless a save died between
 * committing its tag and rewriting latest) verifies every file's SHA-256 first and
 * re-partitions the stored state for this world size; *client_state_json (may be NULL) is
 * malloc'ed JSON text ("{}" when none was saved). */
ds_status ds_engine_save_checkpoint(ds_engine *e, const char *dir, const char *tag,
                                    const char *client_state_json, ds_error *err);
ds_status ds_engine_load_checkpoint(ds_engine *e, const char *dir, const char *tag,
                                    char **client_state_json, ds_error *err);

#ifdef __cplusplus
}
#endif
#endif
