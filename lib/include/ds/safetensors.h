/* safetensors files: read (memory-mapped, header validated) and write (atomically).
 * Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
 * data_offsets}, "__metadata__": {str: str}}, then the tensor bytes. */
#ifndef DS_SAFETENSORS_H
#define DS_SAFETENSORS_H

#include <stdint.h>

#include "ds/dtype.h"
#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DS_ST_MAX_DIMS 8

typedef struct ds_st_tensor {
    char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets within the data section */
} ds_st_tensor;

typedef struct ds_safetensors {
    char *path;
    int n;                /* number of tensors, in file order of their offsets */
    ds_st_tensor *tensors;
    char *metadata_json;  /* the "__metadata__" object as JSON text, or NULL */
    const uint8_t *data;  /* start of the data section (mapped) */
    void *map;
    size_t map_size;
} ds_safetensors;

/* Open and validate a file: header size and JSON, dtypes, shapes against byte ranges, ranges
 * inside the file and not overlapping. Errors name the file and the tensor. */
ds_status ds_st_open(ds_safetensors **out, const char *path, ds_error *err);
void ds_st_close(ds_safetensors *st);
/* NULL if absent. */
const ds_st_tensor *ds_st_find(const ds_safetensors *st, const char *name);
const void *ds_st_data(const ds_safetensors *st, const ds_st_tensor *t);
/* Value of a metadata key as a newly allocated string, or NULL. */
char *ds_st_metadata_get(const ds_safetensors *st, const char *key);

typedef struct ds_st_entry {
    const char *name;
    ds_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
} ds_st_entry;

/* Write tensors (in the given order) and optional string metadata (n_meta key/value pairs) to
 * path: a temporary file in the same directory, fsynced, then renamed over path. */
ds_status ds_st_write(const char *path, const ds_st_entry *entries, int n,
                      const char *const *meta_keys, const char *const *meta_values, int n_meta,
                      ds_error *err);

#ifdef __cplusplus
}
#endif
#endif
