/* Profiling: the engine's wall-clock timers (DeepSpeed's wall_clock_breakdown, engine.md §7)
 * and the SQLite run database that ds-train --prof_db writes and ds-prof reads (schema in
 * ds-prof(1)). Nothing here prints; ds-train and ds-prof decide what to show. */
#ifndef DS_PROF_H
#define DS_PROF_H

#include <stddef.h>
#include <stdint.h>

#include "ds/dist.h"
#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- timers ----------------------------------------------------------------------------- */

/* DeepSpeed's engine timers (names since v0.10.1). Each is kept twice: the micro timer
 * (<name>_microstep, reset at every ds_engine_step call) and the global timer (<name>, the sum
 * over the micro-steps of one effective batch, reset at the accumulation boundary). In ds the
 * gradient all-reduce runs inside ds_engine_step at the boundary; its time is counted in
 * bwd_allreduce and bwd (as in DeepSpeed, where it runs inside backward) and not in step, so
 * fwd + bwd + step is the engine's whole time for the effective batch. */
typedef enum ds_timer_id {
    DS_TIMER_FWD = 0,
    DS_TIMER_BWD,
    DS_TIMER_BWD_INNER,
    DS_TIMER_BWD_ALLREDUCE,
    DS_TIMER_STEP,
    DS_TIMER_COUNT
} ds_timer_id;

typedef struct ds_timers {
    int enabled;
    /* Called before reading the clock when set (a GPU backend's synchronize), so that the
     * intervals hold the device work; only ever called when the timers are enabled. */
    ds_status (*sync)(void *ctx);
    void *sync_ctx;
    int running[DS_TIMER_COUNT];
    double started[DS_TIMER_COUNT];     /* seconds, CLOCK_MONOTONIC */
    double micro_ms[DS_TIMER_COUNT];    /* since the last ds_timers_micro_end */
    double global_ms[DS_TIMER_COUNT];   /* since the last ds_timers_boundary */
    double last_micro_ms[DS_TIMER_COUNT];  /* the micro timers of the last step() call */
    double last_global_ms[DS_TIMER_COUNT]; /* the global timers of the last optimizer step */
    int64_t micro_count, boundary_count;
} ds_timers;

void ds_timers_init(ds_timers *t, int enabled);
void ds_timers_start_(ds_timers *t, ds_timer_id id);
void ds_timers_stop_(ds_timers *t, ds_timer_id id);
/* Off: one test of a flag, no clock read. */
static inline void ds_timers_start(ds_timers *t, ds_timer_id id)
{
    if (t->enabled)
        ds_timers_start_(t, id);
}
static inline void ds_timers_stop(ds_timers *t, ds_timer_id id)
{
    if (t->enabled)
        ds_timers_stop_(t, id);
}
/* End of a step() call: the micro timers move to last_micro_ms and restart from 0. */
void ds_timers_micro_end(ds_timers *t);
/* End of an optimizer step (boundary): the global timers move to last_global_ms. */
void ds_timers_boundary(ds_timers *t);
/* "fwd", "bwd", ... (micro 0) or "fwd_microstep", ... (micro 1). */
const char *ds_timer_name(ds_timer_id id, int micro);
/* DeepSpeed's line: "time (ms) | fwd_microstep: 10.53 | bwd_microstep: ..." into buf. */
void ds_timers_format(const double ms[DS_TIMER_COUNT], int micro, char *buf, size_t size);
double ds_prof_now_s(void);

/* ---- monitors (DeepSpeed's tensorboard and csv_monitor sections) ---------------------------- */

/* Rank 0's monitors: csv_monitor writes <output_path>/<job_name>/<event>.csv (the event's '/'
 * and ' ' as '_'; appended to, with a "step,<last part of the name>" header each run, as
 * DeepSpeed's), tensorboard a TensorBoard event file
 * <output_path>/<job_name>/events.out.tfevents.<time>.<host>.<pid>.0 (never an existing one) of
 * scalar summaries. The folders are made as needed. *out is NULL when neither is enabled (then
 * every call below does nothing). */
typedef struct ds_monitor ds_monitor;
struct ds_monitor_config;
ds_status ds_monitor_open(ds_monitor **out, const struct ds_monitor_config *tensorboard,
                          const struct ds_monitor_config *csv, ds_error *err);
/* One scalar event (DeepSpeed's "Train/Samples/train_loss" ...) at step (its global samples);
 * each is flushed at once. */
ds_status ds_monitor_write(ds_monitor *m, const char *tag, double value, int64_t step, ds_error *err);
/* The event file and the CSV folder, or NULL when that monitor is off. */
const char *ds_monitor_tensorboard_file(const ds_monitor *m);
const char *ds_monitor_csv_dir(const ds_monitor *m);
void ds_monitor_close(ds_monitor *m);

/* One collective of an optimizer step, as the engine records it while the timers are on. */
typedef struct ds_collective_record {
    const char *op;   /* "all_reduce" */
    const char *what; /* "gradients" (one per bucket), "loss" */
    int64_t elements, bytes;
    double ms;
} ds_collective_record;

/* ---- throughput ------------------------------------------------------------------------- */

/* Model FLOPs of one optimizer step on one rank: 3 x forward FLOPs (forward + backward at 2x)
 * x samples per rank, the count DeepSpeed's flops profiler and the MFU papers use. */
double ds_prof_model_flops(int64_t flops_per_sample, int64_t train_batch_size, int world_size);

/* ---- run database ----------------------------------------------------------------------- */

#define DS_RUNDB_APPLICATION_ID 0x44535052 /* "DSPR", in the SQLite header */
#define DS_RUNDB_SCHEMA_VERSION 1

typedef struct ds_rundb ds_rundb;

/* What is known about the run when it starts. Strings may be NULL. */
typedef struct ds_run_info {
    const char *command_line;
    const char *config_path, *config_json;
    const char *net_path, *net_json;
    const char *data_path;
    const char *backend;
    int world_size;
    int64_t micro_batch, grad_accum, train_batch_size;
    int64_t total_params, flops_per_sample, positions; /* positions: tokens per sample */
    int64_t steps_planned;
    double peak_tflops;  /* 0: not given */
    int threads;
    /* this rank's engine memory, bytes */
    int64_t params_bytes, grads_bytes, optim_bytes, activation_bytes;
} ds_run_info;

/* One rank's optimizer step. */
typedef struct ds_step_record {
    int64_t step;          /* global step after the update (1-based) */
    double loss, lr, grad_norm;
    double loss_scale;     /* 1.0 in fp32 */
    int skipped;           /* the update was skipped (fp16 overflow) */
    double iter_ms;        /* the client's wall time for the step, data loading included */
    double timer_ms[DS_TIMER_COUNT]; /* global timers; negative when the timers were off */
    int64_t samples;       /* global samples after the step */
    int64_t max_rss_bytes; /* peak resident memory of the process so far */
    double wall_time;      /* Unix time at the end of the step */
} ds_step_record;

/* Create path (collective over comm when comm is not NULL: every rank calls it). Rank 0 creates
 * the file and the schema and writes the run and every rank's host row; other ranks only keep
 * their rows until ds_rundb_flush sends them to rank 0 (one file per job, written by one
 * process, so it works when the ranks are on different machines). An existing file is refused
 * unless overwrite is set (then it is replaced). If rank 0 fails, every rank gets an error. */
ds_status ds_rundb_create(ds_rundb **out, const char *path, int overwrite, const ds_run_info *info,
                          ds_comm *comm, ds_error *err);
/* Keep one step of this rank and the collectives it made (copied). */
ds_status ds_rundb_add_step(ds_rundb *db, const ds_step_record *rec,
                            const ds_collective_record *coll, int n_coll, ds_error *err);
/* Collective: gather the kept rows of every rank on rank 0 and write them in one transaction.
 * Every rank must have kept the same number of steps and collectives since the last flush. */
ds_status ds_rundb_flush(ds_rundb *db, ds_error *err);
/* Flush (collective), record the end time and status ("done", "failed") and close. With a NULL
 * db it does nothing. */
ds_status ds_rundb_close(ds_rundb *db, const char *status, ds_error *err);
/* Close without the collective flush (after a failure on this rank). */
void ds_rundb_abandon(ds_rundb *db, const char *status);

struct sqlite3;
/* Open an existing run database for reading. A missing file, a file that is not SQLite, an
 * SQLite file of another program and a run database of another schema version are errors
 * naming the file and what was found. Close with sqlite3_close. */
ds_status ds_rundb_open_read(struct sqlite3 **out, const char *path, ds_error *err);

/* The schema, as SQL (what ds_rundb_create runs). */
const char *ds_rundb_schema_sql(void);

#ifdef __cplusplus
}
#endif
#endif
