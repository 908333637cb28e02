/* The engine's wall-clock timers (DeepSpeed's wall_clock_breakdown): start/stop on the host
 * clock, with an optional device synchronize, micro and global sums, and DeepSpeed's log line.
 * Printing is the caller's; the run database is in rundb.c. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ds/prof.h"

double ds_prof_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ds_timers_init(ds_timers *t, int enabled)
{
    memset(t, 0, sizeof *t);
    t->enabled = enabled;
}

static void sync_device(ds_timers *t)
{
    /* a failed synchronize shows up again at the next backend call, where it is reported */
    if (t->sync)
        (void)t->sync(t->sync_ctx);
}

void ds_timers_start_(ds_timers *t, ds_timer_id id)
{
    sync_device(t);
    t->started[id] = ds_prof_now_s();
    t->running[id] = 1;
}

void ds_timers_stop_(ds_timers *t, ds_timer_id id)
{
    if (!t->running[id])
        return;
    sync_device(t);
    double ms = (ds_prof_now_s() - t->started[id]) * 1e3;
    t->micro_ms[id] += ms;
    t->global_ms[id] += ms;
    t->running[id] = 0;
}

void ds_timers_micro_end(ds_timers *t)
{
    if (!t->enabled)
        return;
    memcpy(t->last_micro_ms, t->micro_ms, sizeof t->micro_ms);
    memset(t->micro_ms, 0, sizeof t->micro_ms);
    t->micro_count++;
}

void ds_timers_boundary(ds_timers *t)
{
    if (!t->enabled)
        return;
    memcpy(t->last_global_ms, t->global_ms, sizeof t->global_ms);
    memset(t->global_ms, 0, sizeof t->global_ms);
    t->boundary_count++;
}

static const char *const NAMES[DS_TIMER_COUNT][2] = {
    {"fwd", "fwd_microstep"},
    {"bwd", "bwd_microstep"},
    {"bwd_inner", "bwd_inner_microstep"},
    {"bwd_allreduce", "bwd_allreduce_microstep"},
    {"step", "step_microstep"},
};

const char *ds_timer_name(ds_timer_id id, int micro)
{
    return (unsigned)id < DS_TIMER_COUNT ? NAMES[id][micro ? 1 : 0] : "?";
}

void ds_timers_format(const double ms[DS_TIMER_COUNT], int micro, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "time (ms)");
    for (int i = 0; i < DS_TIMER_COUNT && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, " | %s: %.2f", ds_timer_name((ds_timer_id)i, micro), ms[i]);
}

double ds_prof_model_flops(int64_t flops_per_sample, int64_t train_batch_size, int world_size)
{
    return 3.0 * (double)flops_per_sample * (double)train_batch_size / (double)(world_size > 0 ? world_size : 1);
}
