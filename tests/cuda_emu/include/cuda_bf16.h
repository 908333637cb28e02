/* CPU emulation of the bfloat16 type kernels/ uses: the bits, and round-to-nearest-even. */
#ifndef DS_CUDA_EMU_BF16_H
#define DS_CUDA_EMU_BF16_H
#include <stdint.h>
#include <string.h>

typedef struct __nv_bfloat16 {
    unsigned short x;
} __nv_bfloat16;

static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        r.x = (unsigned short)((u >> 16) | 0x40u); /* quiet NaN */
    else
        r.x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return r;
}
#endif
