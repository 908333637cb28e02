/* The tensor table: every parameter is a named entry {name, shape, offset} in one ordered table,
 * and parameters, gradients and optimizer state live in flat buffers with the same offsets.
 * (llm.c's layout made general: the fused optimizer, buckets, ZeRO partitions and checkpoints
 * are all offset arithmetic on these buffers.) */
#ifndef DS_TENSOR_H
#define DS_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "ds/dtype.h"
#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DS_MAX_DIMS 4
#define DS_NAME_MAX 128
/* Each tensor starts at a multiple of this many elements (64 bytes of fp32): aligned SIMD
 * loads and cache-line-separate tensors. The padding is zero and stays zero. */
#define DS_TENSOR_ALIGN 16

typedef struct ds_tensor_info {
    char name[DS_NAME_MAX];
    int ndim;
    int64_t shape[DS_MAX_DIMS];
    int64_t numel;
    int64_t offset; /* in elements, within the flat buffers */
} ds_tensor_info;

typedef struct ds_tensor_table {
    ds_tensor_info *t;
    int n, cap;
    int64_t total; /* padded number of elements of a flat buffer */
} ds_tensor_table;

void ds_table_init(ds_tensor_table *tab);
void ds_table_free(ds_tensor_table *tab);
/* Append a tensor; returns its index, or -1 (and sets err) on a duplicate name or no memory. */
int ds_table_add(ds_tensor_table *tab, const char *name, int ndim, const int64_t *shape,
                 ds_error *err);
/* Index of a name, or -1. */
int ds_table_find(const ds_tensor_table *tab, const char *name);
/* "[768, 256]" */
void ds_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);

#ifdef __cplusplus
}
#endif
#endif
