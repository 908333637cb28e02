/* Learning-rate schedules from ds.json's "scheduler" block: DeepSpeed's LRRangeTest, OneCycle,
 * WarmupLR, WarmupDecayLR and WarmupCosineLR (deepspeed/runtime/lr_schedules.py), as one pure
 * function of the scheduler iteration, shared by the engine and ds-lrrt. No state, no I/O. */
#ifndef DS_SCHED_H
#define DS_SCHED_H

#include <stdint.h>

#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds_sched_type {
    DS_SCHED_NONE = 0, /* no scheduler block: the optimizer's lr throughout */
    DS_SCHED_LR_RANGE_TEST,
    DS_SCHED_ONE_CYCLE,
    DS_SCHED_WARMUP_LR,
    DS_SCHED_WARMUP_DECAY_LR,
    DS_SCHED_WARMUP_COSINE_LR
} ds_sched_type;

typedef enum ds_warmup_type { DS_WARMUP_LOG = 0, DS_WARMUP_LINEAR } ds_warmup_type;

/* The parameters, with DeepSpeed's names and defaults. */
typedef struct ds_sched_config {
    ds_sched_type type;
    double base_lr; /* the optimizer's lr: WarmupCosineLR's base, "auto" warmup_max_lr */
    /* LRRangeTest */
    double lr_range_test_min_lr, lr_range_test_step_size, lr_range_test_step_rate;
    int lr_range_test_staircase;
    /* OneCycle (cycle_second_step_size null means equal to the first; the stair counts are
     * accepted and unused, as in DeepSpeed) */
    double cycle_min_lr, cycle_max_lr, decay_lr_rate;
    double cycle_first_step_size, cycle_second_step_size, decay_step_size;
    int cycle_momentum;
    double cycle_min_mom, cycle_max_mom, decay_mom_rate;
    /* WarmupLR, WarmupDecayLR, WarmupCosineLR */
    double warmup_min_lr, warmup_max_lr;
    int warmup_max_lr_auto; /* "auto": the optimizer's lr (HF Trainer's meaning) */
    int64_t warmup_num_steps, total_num_steps; /* total 0: "auto", not set yet */
    int total_num_steps_auto; /* "auto": the run's length, set by ds_sched_set_total_steps */
    ds_warmup_type warmup_type;
    double warmup_min_ratio, cos_min_ratio;
} ds_sched_config;

/* Beta1 / momentum never goes above this in OneCycle's decay phase (DECISIONS.md; DeepSpeed
 * lets it grow past 1), unless cycle_max_mom is already higher. */
#define DS_SCHED_MOM_CAP 0.999

/* The lr (and momentum) at scheduler iteration k, DeepSpeed's last_batch_iteration: k = -1 is
 * the value written at construction and used by the first optimizer update; the n-th update
 * uses k = n - 2. Returns 1 when the schedule sets the momentum (OneCycle with cycle_momentum:
 * beta1 for the Adam family, momentum for SGD) and *mom was written, else 0. mom may be NULL. */
int ds_sched_lr(const ds_sched_config *s, int64_t k, double *lr, double *mom);

/* Set the optimizer lr the schedule depends on (WarmupCosineLR's base, "auto" warmup_max_lr). */
void ds_sched_set_base_lr(ds_sched_config *s, double optimizer_lr);

/* Give total_num_steps written as "auto" its value (the client's run length; HF Trainer's
 * meaning). A no-op for a schedule without an "auto" total. Fails when the value does not fit
 * (WarmupCosineLR needs more steps than warmup_num_steps). */
ds_status ds_sched_set_total_steps(ds_sched_config *s, int64_t steps, ds_error *err);
/* What the config's check would have warned about an "auto" total_num_steps once it is set
 * (WarmupDecayLR with fewer steps than warmup_num_steps, as DeepSpeed warns), into buf; ""
 * when nothing. */
void ds_sched_total_note(const ds_sched_config *s, char *buf, size_t n);

/* "OneCycle", ... ("none" for DS_SCHED_NONE). */
const char *ds_sched_name(ds_sched_type type);

#ifdef __cplusplus
}
#endif
#endif
