/* Element type sizes, names and the scalar 16-bit conversions (portable reference paths). */
#include "ds/dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[DS_DTYPE_COUNT] = {
    [DS_F32] = {"F32", 4},  [DS_F16] = {"F16", 2}, [DS_BF16] = {"BF16", 2},
    [DS_F64] = {"F64", 8},  [DS_I64] = {"I64", 8}, [DS_I32] = {"I32", 4},
    [DS_I16] = {"I16", 2},  [DS_I8] = {"I8", 1},   [DS_U64] = {"U64", 8},
    [DS_U32] = {"U32", 4},  [DS_U16] = {"U16", 2}, [DS_U8] = {"U8", 1},
    [DS_BOOL] = {"BOOL", 1},
};

size_t ds_dtype_size(ds_dtype t)
{
    return (unsigned)t < DS_DTYPE_COUNT ? dtype_info[t].size : 0;
}

const char *ds_dtype_name(ds_dtype t)
{
    return (unsigned)t < DS_DTYPE_COUNT ? dtype_info[t].name : "?";
}

int ds_dtype_parse(const char *name, ds_dtype *out)
{
    for (int i = 0; i < DS_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (ds_dtype)i;
            return 0;
        }
    return -1;
}

float ds_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ds_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN stays a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float ds_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: value = man * 2^-24 */
            float f = ldexpf((float)man, -24);
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ds_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u)
        return sign | 0x7e00u; /* NaN */
    if (absu >= 0x477ff000u)   /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00u;
    if (absu < 0x38800000u) { /* below the smallest normal 2^-14: subnormal or zero */
        float a;
        memcpy(&a, &absu, 4);
        float scaled = a * 16777216.0f; /* units of 2^-24 */
        uint32_t m = (uint32_t)nearbyintf(scaled);
        return sign | (uint16_t)m;
    }
    uint32_t mant = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 112u;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return sign | (uint16_t)h;
}
