/* Fused optimizers over flat buffers, one pass: AdamW/Adam (DeepSpeed FusedAdam == torch) and
 * SGD with momentum. The scalars are computed on the host exactly as cpu_kernels.c computes
 * them, and each element follows the CPU's operations in the CPU's order. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

#define THREADS 256

__global__ void adamw_k(float *p, const float *g, float *m, float *v, int64_t n, float b1,
                        float b2, float gs, float step_size, float c2_sqrt, float eps, float decay,
                        float l2)
{
    GRID_STRIDE(i, n)
    {
        float p0 = p[i];
        float pi = p0 * decay;
        float gi = g[i] * gs + l2 * p0;
        float mi = m[i] * b1 + (1.0f - b1) * gi;
        float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / c2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
    }
}

__global__ void sgd_plain_k(float *p, const float *g, int64_t n, float lr, float wd, float gs)
{
    GRID_STRIDE(i, n) p[i] -= lr * (g[i] * gs + wd * p[i]);
}

__global__ void sgd_momentum_k(float *p, const float *g, float *buf, int64_t n, float lr,
                               float mom, float damp, float wd, float gs, int first, int nesterov)
{
    GRID_STRIDE(i, n)
    {
        float d = g[i] * gs + wd * p[i];
        float bi = first ? d : buf[i] * mom + damp * d;
        buf[i] = bi;
        float step = nesterov ? d + mom * bi : bi;
        p[i] -= lr * step;
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
    adamw_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(
        p, g, m, v, n, a->beta1, a->beta2, a->grad_scale, step_size, c2_sqrt, a->eps, decay, l2);
    LAUNCHED("adamw_k");
    return DS_OK;
}

extern "C" ds_status ds_cuda_sgd_step(ds_backend *b, float *p, const float *g, float *buf,
                                      int64_t n, const ds_sgd_args *a)
{
    if (n <= 0)
        return DS_OK;
    if (a->momentum == 0.0f) {
        sgd_plain_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(p, g, n, a->lr,
                                                                         a->weight_decay,
                                                                         a->grad_scale);
        LAUNCHED("sgd_plain_k");
        return DS_OK;
    }
    sgd_momentum_k<<<grid_for(b, n, THREADS), THREADS, 0, STREAM(b)>>>(
        p, g, buf, n, a->lr, a->momentum, 1.0f - a->dampening, a->weight_decay, a->grad_scale,
        a->first_step, a->nesterov);
    LAUNCHED("sgd_momentum_k");
    return DS_OK;
}
