/* CPU emulation of the part of CUDA's warp matrix API (nvcuda::wmma) that kernels/ uses: TF32
 * m16n16k8 products with fp32 accumulators. A fragment's element-to-lane mapping is unspecified
 * in CUDA, so code that is correct there touches fragments only through load/store/fill/mma and
 * element-wise loops over x[0, num_elements); here every lane holds the whole tile, which
 * satisfies any such code (and computes each product once per lane: slow, exact). Each op is
 * warp-collective, as in CUDA: it begins with a warp barrier, so no lane stores a tile (or
 * reuses the memory it came from) before every lane has loaded it. */
#ifndef DS_CUDA_EMU_MMA_H
#define DS_CUDA_EMU_MMA_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include <cuda_runtime.h> /* __syncwarp */

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

/* round to TF32 (10 mantissa bits), to nearest, ties away from zero (cvt.rna.tf32.f32) */
static inline float __float_to_tf32(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment;

/* A: M x K, element (r, k) at x[r * K + k] */
template <class Layout> struct fragment<matrix_a, 16, 16, 8, precision::tf32, Layout> {
    enum { num_elements = 16 * 8, rows = 16, cols = 8 };
    float x[num_elements];
};
/* B: K x N, element (k, n) at x[k * N + n] */
template <class Layout> struct fragment<matrix_b, 16, 16, 8, precision::tf32, Layout> {
    enum { num_elements = 8 * 16, rows = 8, cols = 16 };
    float x[num_elements];
};
/* C: M x N, element (r, n) at x[r * N + n] */
template <> struct fragment<accumulator, 16, 16, 8, float, void> {
    enum { num_elements = 16 * 16, rows = 16, cols = 16 };
    float x[num_elements];
};

template <class Use, class Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 8, precision::tf32, Layout> &f, const float *p,
                                    unsigned ldm)
{
    __syncwarp();
    typedef fragment<Use, 16, 16, 8, precision::tf32, Layout> F;
    const bool row = std::is_same<Layout, row_major>::value;
    for (int i = 0; i < F::rows; i++)
        for (int j = 0; j < F::cols; j++)
            f.x[i * F::cols + j] = row ? p[(size_t)i * ldm + j] : p[(size_t)j * ldm + i];
}

static inline void load_matrix_sync(fragment<accumulator, 16, 16, 8, float, void> &f, const float *p, unsigned ldm,
                                    layout_t l)
{
    __syncwarp();
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            f.x[i * 16 + j] = l == mem_row_major ? p[(size_t)i * ldm + j] : p[(size_t)j * ldm + i];
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 8, float, void> &f, unsigned ldm,
                                     layout_t l)
{
    __syncwarp();
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            (l == mem_row_major ? p[(size_t)i * ldm + j] : p[(size_t)j * ldm + i]) = f.x[i * 16 + j];
}

template <class F> static inline void fill_fragment(F &f, float v)
{
    __syncwarp();
    for (int i = 0; i < F::num_elements; i++)
        f.x[i] = v;
}

/* d = a b + c, fp32 accumulation in k order (d may be c) */
template <class LA, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 8, float, void> &d,
                            const fragment<matrix_a, 16, 16, 8, precision::tf32, LA> &a,
                            const fragment<matrix_b, 16, 16, 8, precision::tf32, LB> &b,
                            const fragment<accumulator, 16, 16, 8, float, void> &c)
{
    __syncwarp();
    float r[256];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[i * 16 + j];
            for (int k = 0; k < 8; k++)
                s += a.x[i * 8 + k] * b.x[k * 16 + j];
            r[i * 16 + j] = s;
        }
    memcpy(d.x, r, sizeof r);
}
} // namespace wmma
} // namespace nvcuda

/* The PTX instruction mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, which
 * kernels/flash16.cu issues through inline asm on a GPU: c (16 x 8, fp32) += a (16 x 16) b (16 x
 * 8), warp-collective, each lane holding its fragment registers in the layout of the PTX ISA
 * (lane = 4 g + t: a0 = A(g, 2t..2t+1), a1 = A(g+8, 2t..), a2 = A(g, 2t+8..), a3 = A(g+8, 2t+8..);
 * b0 = B(2t..2t+1, g), b1 = B(2t+8.., g); c0, c1 = C(g, 2t), C(g, 2t+1); c2, c3 = row g+8; two
 * 16-bit values per register, the lower index in the low half). The lanes post their registers,
 * meet at a warp barrier, each computes its four sums from the others' registers, and meet again
 * before the mailbox can be reused. Products and sums in fp32, k in order. */
unsigned emu_tid(void);

static inline float emu_16bits_to_float(uint32_t h, int bf)
{
    uint32_t u;
    if (bf) {
        u = h << 16;
    } else {
        const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
        if (e == 0x1f) {
            u = sign | 0x7f800000u | (m << 13);
        } else if (e) {
            u = sign | ((e + 112u) << 23) | (m << 13);
        } else { /* zero or subnormal: m * 2^-24 */
            float f = (float)m * (1.0f / 16777216.0f);
            memcpy(&u, &f, 4);
            u |= sign;
        }
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void emu_mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, int bf)
{
    static thread_local uint32_t mail[1024][6];
    const unsigned t = emu_tid(), lane = t & 31u, w0 = t - lane, g = lane >> 2, q = lane & 3u;
    for (int i = 0; i < 4; i++)
        mail[t][i] = a[i];
    mail[t][4] = b0;
    mail[t][5] = b1;
    __syncwarp();
    float r[4];
    for (unsigned i = 0; i < 4; i++) {
        const unsigned row = g + (i >= 2 ? 8u : 0u), col = 2 * q + (i & 1u);
        float acc = c[i];
        for (unsigned k = 0; k < 16; k++) {
            const unsigned sh = 16 * (k & 1u);
            const uint32_t ha = mail[w0 + (row & 7u) * 4 + (k & 7u) / 2][(row >= 8) + (k >= 8 ? 2 : 0)] >> sh;
            const uint32_t hb = mail[w0 + col * 4 + (k & 7u) / 2][4 + (k >= 8)] >> sh;
            acc += emu_16bits_to_float(ha & 0xffffu, bf) * emu_16bits_to_float(hb & 0xffffu, bf);
        }
        r[i] = acc;
    }
    __syncwarp();
    for (int i = 0; i < 4; i++)
        c[i] = r[i];
}

/* The PTX instructions ldmatrix.sync.aligned.m8n8.x4.shared.b16 and its .trans form
 * (kernels/flash16.cu's ldsm4<0>, ldsm4<1>): lane l posts the address of row l % 8 of matrix
 * l / 8, the lanes meet, and each takes in r[j] the 32-bit word at row lane / 4, values 2 (lane %
 * 4) and the next, of matrix j -- or, transposed, the values at rows 2 (lane % 4) and the next
 * of column lane / 4 (the lower row in the low half). A row address that is not 16-byte
 * aligned is an error on a GPU: here it aborts. */
static inline void emu_ldmatrix_x4(uint32_t (&r)[4], const uint16_t *p, int trans)
{
    static thread_local const uint16_t *mail[1024];
    const unsigned t = emu_tid(), lane = t & 31u, w0 = t - lane;
    if ((uintptr_t)p % 16 != 0) {
        fprintf(stderr, "cuda-emu: ldmatrix row address %p (lane %u) is not 16-byte aligned\n", (const void *)p, lane);
        abort();
    }
    mail[t] = p;
    __syncwarp();
    uint32_t v[4];
    for (unsigned j = 0; j < 4; j++) {
        if (trans) {
            const unsigned i = 2 * (lane & 3u), col = lane >> 2;
            v[j] = (uint32_t)mail[w0 + 8 * j + i][col] | (uint32_t)mail[w0 + 8 * j + i + 1][col] << 16;
        } else {
            const uint16_t *row = mail[w0 + 8 * j + (lane >> 2)] + 2 * (lane & 3u);
            v[j] = (uint32_t)row[0] | (uint32_t)row[1] << 16;
        }
    }
    __syncwarp();
    for (int j = 0; j < 4; j++)
        r[j] = v[j];
}

#endif
