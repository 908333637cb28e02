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
#endif
