/* Fused optimizers over flat buffers: AdamW/Adam (DeepSpeed FusedAdam == torch), SGD with
 * momentum and Adagrad (torch) in one pass, LAMB (DeepSpeed FusedLamb) in two passes per tensor;
 * each may also write the 16-bit working weights (pw) in the same pass. And round16, the 16-bit
 * rounding of fp16/bf16 training. The scalars are computed on the host exactly as cpu_kernels.c
 * computes them, and each element follows the CPU's operations in the CPU's order. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

#define THREADS 256

/* ---- 16-bit rounding: the bit operations of cpu_kernels.c ---------------------------------- */

/* round_bf16, round_fp16, round16: cuda_common.cuh */

__global__ void round16_k(float *x, int64_t n, int mode)
{
    GRID_STRIDE(i, n) x[i] = round16(x[i], mode);
}

extern "C" ds_status ds_cuda_round16(ds_backend *b, float *x, int64_t n, int mode)
{
    if (n <= 0 || (mode != DS_ROUND_BF16 && mode != DS_ROUND_FP16))
        return DS_OK;
    round16_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(x, n, mode);
    LAUNCHED("round16_k");
    return DS_OK;
}

/* ---- one-pass optimizers ------------------------------------------------------------------ */

/* the working weight of element i: nothing (pw NULL), the fp32 value rounded, or (pw16) the
 * 2-byte value of the format (store16's weights) */
__device__ __forceinline__ void put_pw(void *pw, int64_t i, float v, int round, int pw16)
{
    if (!pw)
        return;
    if (!pw16)
        ((float *)pw)[i] = round16(v, round);
    else if (round == DS_ROUND_BF16)
        sta<DS_ROUND_BF16>(pw, i, v, 0);
    else
        sta<DS_ROUND_FP16>(pw, i, v, 0);
}

/* one element of AdamW: m, v updated in place, the new weight returned (the scalar and the
 * 8-wide loops below both call it, so each element gets the same operations) */
__device__ __forceinline__ float adamw_one(float p0, float g, float &m, float &v, float b1, float b2, float gs,
                                           float step_size, float c2_sqrt, float eps, float decay, float l2)
{
    float pi = p0 * decay;
    float gi = g * gs + l2 * p0;
    float mi = m * b1 + (1.0f - b1) * gi;
    float vi = v * b2 + (1.0f - b2) * gi * gi;
    m = mi;
    v = vi;
    float denom = sqrtf(vi) / c2_sqrt + eps;
    return pi - step_size * (mi / denom);
}

/* AdamW over [0, n): with vec (p, g, m, v and pw 16-byte aligned) eight consecutive elements per
 * thread and iteration through 16-byte accesses (ld8/st8: about 30 bytes move per element, and
 * wide accesses keep more of them in flight), the last n % 8 one by one; else all one by one */
template <int PW>
__global__ void adamw_k(float *p, const float *g, float *m, float *v, int64_t n, float b1,
                        float b2, float gs, float step_size, float c2_sqrt, float eps, float decay,
                        float l2, void *pw, int round, int vec)
{
    const int64_t n8 = vec ? n / 8 * 8 : 0;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n8;
         i += (int64_t)gridDim.x * blockDim.x * 8) {
        float pv[8], gv[8], mv[8], vv[8];
        ld8<0>(p, i, pv);
        ld8<0>(g, i, gv);
        ld8<0>(m, i, mv);
        ld8<0>(v, i, vv);
#pragma unroll
        for (int k = 0; k < 8; k++)
            pv[k] = adamw_one(pv[k], gv[k], mv[k], vv[k], b1, b2, gs, step_size, c2_sqrt, eps, decay, l2);
        st8<0>(m, i, mv, 0);
        st8<0>(v, i, vv, 0);
        st8<0>(p, i, pv, 0);
        if (PW == 1) /* fp32 working weights, rounded (round16's modes, as put_pw) */
            st8<0>(pw, i, pv, round == DS_ROUND_BF16 ? DS_ROUND_BF16 : DS_ROUND_FP16);
        else if (PW == DS_ROUND_BF16 + 2)
            st8<DS_ROUND_BF16>(pw, i, pv, 0);
        else if (PW == DS_ROUND_FP16 + 2)
            st8<DS_ROUND_FP16>(pw, i, pv, 0);
    }
    GRID_STRIDE(k, n - n8)
    {
        const int64_t i = n8 + k;
        float mi = m[i], vi = v[i];
        float pn = adamw_one(p[i], g[i], mi, vi, b1, b2, gs, step_size, c2_sqrt, eps, decay, l2);
        m[i] = mi;
        v[i] = vi;
        p[i] = pn;
        put_pw(PW ? pw : NULL, i, pn, round, PW >= 2);
    }
}

__global__ void sgd_plain_k(float *p, const float *g, int64_t n, float lr, float wd, float gs,
                            void *pw, int round, int pw16)
{
    GRID_STRIDE(i, n)
    {
        float pn = p[i] - lr * (g[i] * gs + wd * p[i]);
        p[i] = pn;
        put_pw(pw, i, pn, round, pw16);
    }
}

__global__ void sgd_momentum_k(float *p, const float *g, float *buf, int64_t n, float lr,
                               float mom, float damp, float wd, float gs, int first, int nesterov,
                               void *pw, int round, int pw16)
{
    GRID_STRIDE(i, n)
    {
        float d = g[i] * gs + wd * p[i];
        float bi = first ? d : buf[i] * mom + damp * d;
        buf[i] = bi;
        float step = nesterov ? d + mom * bi : bi;
        float pn = p[i] - lr * step;
        p[i] = pn;
        put_pw(pw, i, pn, round, pw16);
    }
}

__global__ void adagrad_k(float *p, const float *g, float *sum, int64_t n, float clr, float wd,
                          float eps, float gs, void *pw, int round, int pw16)
{
    GRID_STRIDE(i, n)
    {
        float gi = g[i] * gs + wd * p[i];
        float si = sum[i] + gi * gi;
        sum[i] = si;
        float pn = p[i] - clr * (gi / (sqrtf(si) + eps));
        p[i] = pn;
        put_pw(pw, i, pn, round, pw16);
    }
}

extern "C" ds_status ds_cuda_adamw_step(ds_backend *b, float *p, const float *g, float *m,
                                        float *v, int64_t n, const ds_adamw_args *a)
{
    if (n <= 0)
        return DS_OK;
    float c1 = 1.0f, c2 = 1.0f;
    if (a->bias_correction) {
        c1 = 1.0f - (float)pow(a->beta1, (double)a->step);
        c2 = 1.0f - (float)pow(a->beta2, (double)a->step);
    }
    const float step_size = a->lr / c1, c2_sqrt = sqrtf(c2);
    const float decay = a->adam_w_mode ? 1.0f - a->lr * a->weight_decay : 1.0f;
    const float l2 = a->adam_w_mode ? 0.0f : a->weight_decay;
    /* the working weights' kind as a template argument: 0 none, 1 fp32 rounded, 2 + round 2-byte */
    const int kind = !a->pw ? 0 : !a->pw16 ? 1 : 2 + a->round;
    const int vec = vec8_ok(p, g, m) && vec8_ok(v, a->pw);
    const unsigned grid = grid_for(b, vec ? n / 8 + n % 8 : n, THREADS);
#define ADAMW_LAUNCH(PW)                                                                                  \
    adamw_k<PW><<<grid, THREADS, 0, STREAM(b)>>>(p, g, m, v, n, a->beta1, a->beta2, a->grad_scale, step_size, \
                                                 c2_sqrt, a->eps, decay, l2, a->pw, a->round, vec)
    switch (kind) {
    case 0: ADAMW_LAUNCH(0); break;
    case 1: ADAMW_LAUNCH(1); break;
    case 2 + DS_ROUND_BF16: ADAMW_LAUNCH(2 + DS_ROUND_BF16); break;
    case 2 + DS_ROUND_FP16: ADAMW_LAUNCH(2 + DS_ROUND_FP16); break;
    default: return ds_cuda_error(b, DS_ERR_INVALID, "adamw_step: 16-bit working weights of rounding mode %d", a->round);
    }
#undef ADAMW_LAUNCH
    LAUNCHED("adamw_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_sgd_step(ds_backend *b, float *p, const float *g, float *buf,
                                      int64_t n, const ds_sgd_args *a)
{
    if (n <= 0)
        return DS_OK;
    if (a->momentum == 0.0f) {
        sgd_plain_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(
            p, g, n, a->lr, a->weight_decay, a->grad_scale, a->pw, a->round, a->pw16);
        LAUNCHED("sgd_plain_k");
        return DS_OK;
    }
    sgd_momentum_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(
        p, g, buf, n, a->lr, a->momentum, 1.0f - a->dampening, a->weight_decay, a->grad_scale,
        a->first_step, a->nesterov, a->pw, a->round, a->pw16);
    LAUNCHED("sgd_momentum_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_adagrad_step(ds_backend *b, float *p, const float *g, float *sum,
                                          int64_t n, const ds_adagrad_args *a)
{
    if (n <= 0)
        return DS_OK;
    const float clr = a->lr / (1.0f + (float)(a->step - 1) * a->lr_decay);
    adagrad_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(
        p, g, sum, n, clr, a->weight_decay, a->eps, a->grad_scale, a->pw, a->round, a->pw16);
    LAUNCHED("adagrad_k");
    return DS_OK;
}

/* ---- LAMB --------------------------------------------------------------------------------- */

__device__ __forceinline__ double block_sum_lamb(double v)
{
    __shared__ double part[THREADS / 32];
    v = warp_sum_d(v);
    __syncthreads(); /* part is reused by the second sum of the same block */
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
    if (threadIdx.x < 32)
        v = warp_sum_d(v);
    return v; /* valid in thread 0 */
}

/* Pass 1 over one tensor: m, v, and per-block partial sums of |p|^2 and |u|^2. */
__global__ void lamb_pass1_k(const float *p, const float *g, float *m, float *v, int64_t n,
                             float b1, float b2, float gs, float ein, float eout, float wd,
                             double *part)
{
    double ws = 0.0, us = 0.0;
    GRID_STRIDE(i, n)
    {
        float gi = g[i] * gs;
        float mi = m[i] * b1 + (1.0f - b1) * gi;
        float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float u = mi / (sqrtf(vi + ein) + eout) + wd * p[i];
        ws += (double)p[i] * (double)p[i];
        us += (double)u * (double)u;
    }
    ws = block_sum_lamb(ws);
    us = block_sum_lamb(us);
    if (threadIdx.x == 0) {
        part[2 * blockIdx.x] = ws;
        part[2 * blockIdx.x + 1] = us;
    }
}

__global__ void lamb_final_k(const double *part, int nparts, double *out)
{
    double w = 0.0, u = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) {
        w += part[2 * i];
        u += part[2 * i + 1];
    }
    w = block_sum_lamb(w);
    u = block_sum_lamb(u);
    if (threadIdx.x == 0) {
        out[0] = w;
        out[1] = u;
    }
}

__global__ void lamb_pass2_k(float *p, const float *m, const float *v, int64_t n, float k,
                             float ein, float eout, float wd, void *pw, int round, int pw16)
{
    GRID_STRIDE(i, n)
    {
        float u = m[i] / (sqrtf(v[i] + ein) + eout) + wd * p[i];
        float pn = p[i] - k * u;
        p[i] = pn;
        put_pw(pw, i, pn, round, pw16);
    }
}

extern "C" ds_status ds_cuda_lamb_step(ds_backend *b, float *pall, const float *g, float *m,
                                       float *v, const ds_lamb_args *a)
{
    const float eps = a->eps;
    const float ein = a->eps_inside_sqrt ? eps : 0.0f, eout = a->eps_inside_sqrt ? 0.0f : eps;
    float step_size = a->lr;
    if (a->bias_correction)
        step_size = (float)(a->lr * sqrt(1.0 - pow(a->beta2, (double)a->step)) /
                            (1.0 - pow(a->beta1, (double)a->step)));
    /* fixed grid: the sums (and so the trust ratios) are the same on every run */
    const unsigned blocks = 256;
    double *part = (double *)ds_cuda_scratch(b, (2 * blocks + 2) * sizeof(double));
    if (!part)
        return DS_ERR_NOMEM;
    for (int t = 0; t < a->n_tensors; t++) {
        const int64_t o = a->offsets[t], n = a->offsets[t + 1] - o;
        float *p = pall + o;
        double sums[2] = {0.0, 0.0};
        float coeff = 1.0f;
        if (a->phase != 2 && n > 0) {
            lamb_pass1_k<<<blocks, THREADS, 0, STREAM(b)>>>(p, g + o, m + o, v + o, n, a->beta1,
                                                            a->beta2, a->grad_scale, ein, eout,
                                                            a->weight_decay, part);
            LAUNCHED("lamb_pass1_k");
            lamb_final_k<<<1, THREADS, 0, STREAM(b)>>>(part, (int)blocks, part + 2 * blocks);
            LAUNCHED("lamb_final_k");
            CU_TRY(cudaMemcpyAsync(sums, part + 2 * blocks, sizeof sums, cudaMemcpyDeviceToHost, STREAM(b)));
            CU_TRY(cudaStreamSynchronize(STREAM(b)));
        }
        if (a->phase == 1) {
            a->sums[2 * t] = sums[0];
            a->sums[2 * t + 1] = sums[1];
            continue;
        }
        if (a->phase == 2) {
            coeff = a->coeffs[t];
        } else {
            if (sums[0] > 0.0 && sums[1] > 0.0) {
                double c = sqrt(sums[0]) / sqrt(sums[1]);
                c = c < a->min_coeff ? a->min_coeff : c > a->max_coeff ? a->max_coeff : c;
                coeff = (float)c;
            }
            if (a->coeffs)
                a->coeffs[t] = coeff;
        }
        if (n > 0) {
            lamb_pass2_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(
                p, m + o, v + o, n, step_size * coeff, ein, eout, a->weight_decay,
                !a->pw ? NULL : a->pw16 ? (void *)((uint16_t *)a->pw + o) : (void *)((float *)a->pw + o),
                a->round, a->pw16);
            LAUNCHED("lamb_pass2_k");
        }
    }
    return DS_OK;
}
