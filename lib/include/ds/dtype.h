/* Element types shared by tensors, safetensors files, datasets and backends. */
#ifndef DS_DTYPE_H
#define DS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds_dtype {
    DS_F32 = 0,
    DS_F16,
    DS_BF16,
    DS_F64,
    DS_I64,
    DS_I32,
    DS_I16,
    DS_I8,
    DS_U64,
    DS_U32,
    DS_U16,
    DS_U8,
    DS_BOOL,
    DS_DTYPE_COUNT
} ds_dtype;

/* Bytes per element. */
size_t ds_dtype_size(ds_dtype t);
/* safetensors spelling: "F32", "BF16", "I64", ... */
const char *ds_dtype_name(ds_dtype t);
/* Parse a safetensors dtype name; returns 0 on success, -1 if unknown. */
int ds_dtype_parse(const char *name, ds_dtype *out);

/* Conversions used by the portable paths (round to nearest even for the 16-bit types). */
float ds_bf16_to_f32(uint16_t h);
uint16_t ds_f32_to_bf16(float f);
float ds_f16_to_f32(uint16_t h);
uint16_t ds_f32_to_f16(float f);

#ifdef __cplusplus
}
#endif
#endif
