/* Internal to lib/io: the NumPy .npy reader (format versions 1.0, 2.0 and 3.0, C order,
 * little-endian numeric dtypes) and the read-only file mapping shared by the lib/io readers. */
#ifndef DS_IO_NPY_H
#define DS_IO_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ds/dtype.h"
#include "ds/status.h"

/* A whole file mapped read-only. An empty file has data == NULL and size 0 (mmap refuses 0). */
typedef struct ds_mapped {
    const uint8_t *data;
    size_t size;
} ds_mapped;

/* Map path read-only; a directory or unreadable file is DS_ERR_IO naming the file. */
ds_status ds_map_file(const char *path, ds_mapped *out, ds_error *err);
void ds_unmap_file(ds_mapped *m);

/* Little-endian loads from possibly unaligned bytes (file formats here are all little-endian). */
static inline uint16_t ds_ld_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t ds_ld_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ds_ld_u64(const uint8_t *p)
{
    return (uint64_t)ds_ld_u32(p) | (uint64_t)ds_ld_u32(p + 4) << 32;
}
static inline float ds_ld_f32(const uint8_t *p)
{
    uint32_t u = ds_ld_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define DS_NPY_MAX_DIMS 8

typedef struct ds_npy {
    char *path;
    char descr[16];   /* as written in the header: "<f4", "|u1", ... */
    ds_dtype dtype;
    int ndim;         /* 0 for a scalar array */
    int64_t shape[DS_NPY_MAX_DIMS];
    int64_t numel;
    const void *data; /* C-order elements inside the mapping; not necessarily aligned */
    ds_mapped map;
} ds_npy;

/* Open and validate: magic, version, header dict (descr, fortran_order False, shape), and a
 * file size that holds exactly numel elements. Errors name the file and what was found. */
ds_status ds_npy_open(ds_npy **out, const char *path, ds_error *err);
void ds_npy_close(ds_npy *a);
/* Element i converted to double (any supported dtype; 16-bit floats included). */
double ds_npy_get_f64(const ds_npy *a, int64_t i);
/* Element i as an integer (integer and bool dtypes only; floats are truncated). */
int64_t ds_npy_get_i64(const ds_npy *a, int64_t i);

#endif
