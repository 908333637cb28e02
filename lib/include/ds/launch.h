/* The launch plan of ds-launch: MPI-style hostfiles, --include/--exclude filters,
 * --num_nodes/--num_gpus, and the per-rank environment (spec/launcher.md, DECISIONS.md).
 * Pure computation: no processes are started here and nothing is printed; warnings are
 * kept in the plan for the caller to show. */
#ifndef DS_LAUNCH_H
#define DS_LAUNCH_H

#include <stdbool.h>

#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_launch_node {
    char *host;
    int slots;       /* the hostfile's slots=N (local mode: --num_gpus) */
    int *slot_ids;   /* the device ids this node runs, ascending */
    int num_ids;
    int first_rank;  /* global rank of slot_ids[0]; set by ds_launch_plan_finish */
} ds_launch_node;

typedef struct ds_launch_plan {
    ds_launch_node *nodes; /* in hostfile order, which is node (CROSS_RANK) order */
    int num_nodes;
    int world_size;        /* set by ds_launch_plan_finish */
    bool from_hostfile;    /* false: local mode, one "localhost" node */
    char **local_devices;  /* local mode from CUDA_VISIBLE_DEVICES: slot i is its i-th entry */
    int num_local_devices;
    char **warnings;       /* things the caller should tell the user */
    int num_warnings;
} ds_launch_plan;

/* Parse hostfile text (name is used in messages: "hosts:4: ..."). DeepSpeed's rules: one
 * "<host> slots=<n>" per line, blank lines and lines starting with '#' skipped, a duplicate
 * host is an error; after slots=N only key=value tokens are allowed (warned about, ignored).
 * The plan gets every host with ids 0..slots-1. */
ds_status ds_launch_hostfile_parse_text(ds_launch_plan *plan, const char *name,
                                        const char *text, ds_error *err);
/* The same from a file. */
ds_status ds_launch_hostfile_load(ds_launch_plan *plan, const char *path, ds_error *err);

/* Local mode: one node "localhost" with num_slots ids (0..num_slots-1). */
ds_status ds_launch_plan_local(ds_launch_plan *plan, int num_slots, ds_error *err);
/* Local mode on the devices CUDA_VISIBLE_DEVICES lists (spec/launcher.md, complaint 2: with no
 * hostfile the variable is the device list): one slot per entry, slot i being the i-th entry
 * (an index or a GPU UUID), so --num_gpus N takes the first N and --include localhost:I the
 * I-th; each rank's CUDA_VISIBLE_DEVICES lists the entries of its node's slots. An empty entry
 * is an error naming the variable. */
ds_status ds_launch_plan_local_devices(ds_launch_plan *plan, const char *visible, ds_error *err);

/* --include / --exclude (either may be NULL or ""; not both set). Syntax
 * HOST[:ID[,ID...]][@HOST...]; a bare host means all its slots; ids are checked against
 * slots. Hosts left with no ids are dropped when a filter was given. Hostfile order kept. */
ds_status ds_launch_plan_filter(ds_launch_plan *plan, const char *include, const char *exclude,
                                ds_error *err);

/* --num_nodes (keep the first N hosts; < 0: unset) and --num_gpus (ids 0..N-1 on every
 * node; above a host's slots is an error; < 0: unset). In local mode --num_gpus has already
 * sized the node (from CUDA_VISIBLE_DEVICES: it takes the first N listed devices), and
 * --num_nodes above 1 is an error. filtered: --include/--exclude given
 * (they cannot be combined with these). */
ds_status ds_launch_plan_limit(ds_launch_plan *plan, int num_nodes, int num_gpus, bool filtered,
                               ds_error *err);

/* Number the ranks (node order, then id order) and set world_size. An empty world is an
 * error. */
ds_status ds_launch_plan_finish(ds_launch_plan *plan, ds_error *err);

void ds_launch_plan_free(ds_launch_plan *plan);

/* One environment variable a rank gets. */
typedef struct ds_launch_var {
    char name[256]; /* a name of 1 to 255 letters, digits and '_', not starting with a digit */
    char *value;
} ds_launch_var;

typedef struct ds_launch_env {
    ds_launch_var *vars;
    int count;
} ds_launch_env;

/* The variables ds-launch sets for local rank `local` of node `node`: RANK, LOCAL_RANK,
 * WORLD_SIZE, LOCAL_SIZE, CROSS_RANK, CROSS_SIZE, MASTER_ADDR, MASTER_PORT,
 * CUDA_VISIBLE_DEVICES, and OMP_NUM_THREADS = max(1, cores / LOCAL_SIZE) unless
 * omp_user_set. */
ds_status ds_launch_rank_env(const ds_launch_plan *plan, int node, int local,
                             const char *master_addr, int master_port, int cores,
                             bool omp_user_set, ds_launch_env *out, ds_error *err);
void ds_launch_env_free(ds_launch_env *env);

/* A .deepspeed_env file: NAME=VALUE lines (split at the first '='; name and value stripped
 * of surrounding whitespace), blank lines and '#' comments allowed; anything else is an
 * error naming file and line. Variables are appended to env (a later duplicate replaces the
 * value in place). */
ds_status ds_launch_envfile_parse_text(ds_launch_env *env, const char *name, const char *text,
                                       ds_error *err);
ds_status ds_launch_envfile_load(ds_launch_env *env, const char *path, ds_error *err);
/* Set name=value in env (replacing an earlier value in place). */
ds_status ds_launch_env_set(ds_launch_env *env, const char *name, const char *value,
                            ds_error *err);

#ifdef __cplusplus
}
#endif
#endif
