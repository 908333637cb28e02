/* The tensor table: names, shapes and aligned offsets into the flat buffers. No data here. */
#include "ds/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ds_table_init(ds_tensor_table *tab) { memset(tab, 0, sizeof *tab); }

void ds_table_free(ds_tensor_table *tab)
{
    free(tab->t);
    memset(tab, 0, sizeof *tab);
}

int ds_table_find(const ds_tensor_table *tab, const char *name)
{
    for (int i = 0; i < tab->n; i++)
        if (strcmp(tab->t[i].name, name) == 0)
            return i;
    return -1;
}

int ds_table_add(ds_tensor_table *tab, const char *name, int ndim, const int64_t *shape,
                 ds_error *err)
{
    if (strlen(name) >= DS_NAME_MAX) {
        ds_error_set(err, DS_ERR_INVALID, "parameter name too long: %s", name);
        return -1;
    }
    if (ds_table_find(tab, name) >= 0) {
        ds_error_set(err, DS_ERR_INVALID, "duplicate parameter name %s", name);
        return -1;
    }
    if (tab->n == tab->cap) {
        int cap = tab->cap ? 2 * tab->cap : 32;
        ds_tensor_info *t = realloc(tab->t, (size_t)cap * sizeof *t);
        if (!t) {
            ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            return -1;
        }
        tab->t = t;
        tab->cap = cap;
    }
    /* 2^40 elements per tensor and in total: far beyond any real model, far from overflow */
    const int64_t limit = (int64_t)1 << 40;
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && numel > limit / shape[d])) {
            ds_error_set(err, DS_ERR_INVALID, "%s: shape too large", name);
            return -1;
        }
        numel *= shape[d];
    }
    if (tab->total + numel + DS_TENSOR_ALIGN > limit) {
        ds_error_set(err, DS_ERR_INVALID, "%s: the parameters exceed 2^40 elements in total", name);
        return -1;
    }
    ds_tensor_info *ti = &tab->t[tab->n];
    memset(ti, 0, sizeof *ti);
    snprintf(ti->name, sizeof ti->name, "%s", name);
    ti->ndim = ndim;
    ti->numel = 1;
    for (int d = 0; d < ndim; d++) {
        ti->shape[d] = shape[d];
        ti->numel *= shape[d];
    }
    ti->offset = tab->total;
    tab->total += (ti->numel + DS_TENSOR_ALIGN - 1) / DS_TENSOR_ALIGN * DS_TENSOR_ALIGN;
    return tab->n++;
}

void ds_shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}
