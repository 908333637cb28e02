/* Reductions to the host: sum and sum of squares (each element converted to double and summed
 * in double), and the count of inf/NaN. A fixed grid of per-block partials, then one block adds
 * them in a fixed order: the same bits on every run. These synchronize the stream. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

__device__ __forceinline__ double block_sum_d(double v)
{
    __shared__ double part[RED_THREADS / 32];
    v = warp_sum_d(v);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
    if (threadIdx.x < 32)
        v = warp_sum_d(v);
    return v; /* valid in thread 0 */
}

template <int SQUARE>
__global__ void sum_part_k(const float *x, int64_t n, double *part)
{
    double acc = 0.0;
    GRID_STRIDE(i, n)
    {
        double v = (double)x[i];
        acc += SQUARE ? v * v : v;
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0)
        part[blockIdx.x] = acc;
}

__global__ void sum_final_k(const double *part, int nparts, double *out)
{
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x)
        acc += part[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0)
        *out = acc;
}

__global__ void nonfinite_k(const float *x, int64_t n, unsigned long long *count)
{
    unsigned long long bad = 0;
    GRID_STRIDE(i, n) bad += (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;
    for (int o = 16; o > 0; o >>= 1)
        bad += __shfl_xor_sync(0xffffffffu, bad, o);
    if ((threadIdx.x & 31) == 0 && bad)
        atomicAdd(count, bad); /* integers: the order does not matter */
}

static unsigned red_blocks(int64_t n)
{
    int64_t want = (n + RED_THREADS - 1) / RED_THREADS;
    return (unsigned)(want < 1 ? 1 : (want > RED_BLOCKS ? RED_BLOCKS : want));
}

static ds_status sum_common(ds_backend *b, const float *x, int64_t n, double *out, int square)
{
    ds_cuda *c = DS_CUDA(b);
    double *part = (double *)c->red, *dres = part + RED_BLOCKS;
    if (n <= 0) {
        *out = 0.0;
        return DS_OK;
    }
    unsigned blocks = red_blocks(n);
    if (square)
        sum_part_k<1><<<blocks, RED_THREADS, 0, c->stream>>>(x, n, part);
    else
        sum_part_k<0><<<blocks, RED_THREADS, 0, c->stream>>>(x, n, part);
    LAUNCHED("sum_part_k");
    sum_final_k<<<1, RED_THREADS, 0, c->stream>>>(part, (int)blocks, dres);
    LAUNCHED("sum_final_k");
    CU_TRY(cudaMemcpyAsync(c->host_red, dres, sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    CU_TRY(cudaStreamSynchronize(c->stream));
    *out = *(double *)c->host_red;
    return DS_OK;
}

extern "C" ds_status ds_cuda_sum(ds_backend *b, const float *x, int64_t n, double *out)
{
    return sum_common(b, x, n, out, 0);
}

extern "C" ds_status ds_cuda_sumsq(ds_backend *b, const float *x, int64_t n, double *out)
{
    return sum_common(b, x, n, out, 1);
}

extern "C" ds_status ds_cuda_nonfinite(ds_backend *b, const float *x, int64_t n, int64_t *out)
{
    ds_cuda *c = DS_CUDA(b);
    unsigned long long *dcount = (unsigned long long *)((double *)c->red + RED_BLOCKS);
    if (n <= 0) {
        *out = 0;
        return DS_OK;
    }
    CU_TRY(cudaMemsetAsync(dcount, 0, sizeof *dcount, c->stream));
    nonfinite_k<<<grid_for(b, n, RED_THREADS), RED_THREADS, 0, c->stream>>>(x, n, dcount);
    LAUNCHED("nonfinite_k");
    CU_TRY(cudaMemcpyAsync(c->host_red, dcount, sizeof *dcount, cudaMemcpyDeviceToHost, c->stream));
    CU_TRY(cudaStreamSynchronize(c->stream));
    *out = (int64_t) * (unsigned long long *)c->host_red;
    return DS_OK;
}
