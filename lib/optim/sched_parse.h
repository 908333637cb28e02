/* Internal: the reader of ds.json's "scheduler" block (lib/optim/sched.c), called by the config
 * loader. Not installed. */
#ifndef DS_SCHED_PARSE_H
#define DS_SCHED_PARSE_H

#include <stddef.h>

#include <json-c/json.h>

#include "ds/sched.h"
#include "ds/status.h"

/* Read the block v (NULL or {} means no scheduler) of the config named file. DS_OK: *s holds
 * the schedule and warning (size warning_size) a note for the user or "". DS_ERR_INVALID: the
 * message names the file and the JSON path. DS_ERR_UNSUPPORTED: the message (without the file
 * name) names the key of a feature not built yet. base_lr is left at 1e-3: the caller sets the
 * optimizer's lr with ds_sched_set_base_lr. */
ds_status ds_sched_parse(ds_sched_config *s, json_object *v, const char *file, char *warning,
                         size_t warning_size, ds_error *err);

#endif
