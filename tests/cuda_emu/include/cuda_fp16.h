/* CPU emulation of the half type kernels/ uses: IEEE binary16 bits, round-to-nearest-even. */
#ifndef DS_CUDA_EMU_FP16_H
#define DS_CUDA_EMU_FP16_H
#include <stdint.h>
#include <string.h>

typedef struct __half {
    unsigned short x;
} __half;

static inline __half __float2half_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    __half h;
    if (a > 0x7f800000u) { /* NaN */
        h.x = (unsigned short)(sign | 0x7e00u);
    } else if (a >= 0x477ff000u) { /* rounds to >= 65520: inf */
        h.x = (unsigned short)(sign | 0x7c00u);
    } else if (a >= 0x38800000u) { /* normal: drop 13 bits, ties to even */
        uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
        h.x = (unsigned short)(sign | ((r - 0x38000000u) >> 13));
    } else { /* subnormal: multiples of 2^-24 */
        float v;
        memcpy(&v, &a, 4);
        float q = (v + 0.5f) - 0.5f; /* rounds to 2^-24 */
        h.x = (unsigned short)(sign | (uint32_t)(q * 16777216.0f));
    }
    return h;
}

static inline __half __ushort_as_half(unsigned short x)
{
    __half h;
    h.x = x;
    return h;
}

/* exact: every binary16 value is a float */
static inline float __half2float(__half h)
{
    uint32_t sign = (uint32_t)(h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu, u;
    if (e == 0) { /* zero and subnormals: m * 2^-24 */
        float v = (float)m * 5.9604644775390625e-8f;
        memcpy(&u, &v, 4);
        u |= sign;
    } else if (e == 31) {
        u = sign | 0x7f800000u | (m << 13);
    } else {
        u = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#endif
