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
#endif
