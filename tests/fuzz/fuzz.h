/* The fuzz targets (targets.c): each reads one input and returns 0; a crash, a sanitizer report
 * or an abort from a broken promise is a finding. */
#ifndef DS_FUZZ_H
#define DS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

typedef struct ds_fuzz_target {
    const char *name;
    int (*run)(const uint8_t *data, size_t size);
} ds_fuzz_target;

extern const ds_fuzz_target ds_fuzz_targets[]; /* ends with {NULL, NULL} */

#endif
