/* Linear layers through cuBLAS (TF32 tensor cores unless DS_CUDA_TF32=0, set on the handle).
 * cuBLAS is column-major and our matrices are row-major: a row-major A[r, c] is the
 * column-major A^T, so every product below is written for the transposes. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

/* y[m, n] += bias[n]; blocks of 256 columns x a grid-stride over rows */
__global__ void bias_add_k(float *y, const float *bias, int64_t M, int64_t N)
{
    int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    float bn = bias[n];
    for (int64_t m = blockIdx.y; m < M; m += gridDim.y)
        y[m * N + n] += bn;
}

static ds_status check_dims(ds_backend *b, const char *op, int64_t M, int64_t K, int64_t N)
{
    if (!DIM_OK(M) || !DIM_OK(K) || !DIM_OK(N))
        return ds_cuda_error(b, DS_ERR_UNSUPPORTED, "%s: dimensions %lld x %lld x %lld exceed cuBLAS's int range",
                             op, (long long)M, (long long)K, (long long)N);
    return DS_OK;
}

/* Y[M,N] = X[M,K] W[N,K]^T (+ bias). Column-major: Y^T (N x M) = W (op T on W^T) . X^T. */
extern "C" ds_status ds_cuda_linear_fwd(ds_backend *b, const float *x, const float *w,
                                        const float *bias, float *y, int64_t M, int64_t K, int64_t N)
{
    ds_status st = check_dims(b, "linear_fwd", M, K, N);
    if (st != DS_OK || M == 0 || N == 0)
        return st;
    const float one = 1.0f, zero = 0.0f;
    if (K == 0) {
        CU_TRY(cudaMemsetAsync(y, 0, (size_t)(M * N) * sizeof(float), STREAM(b)));
    } else {
        BLAS_TRY(cublasSgemm(DS_CUDA(b)->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one,
                             w, (int)K, x, (int)K, &zero, y, (int)N));
    }
    if (bias) {
        dim3 grid((unsigned)((N + 255) / 256), (unsigned)(M < 1024 ? M : 1024));
        bias_add_k<<<grid, 256, 0, STREAM(b)>>>(y, bias, M, N);
        LAUNCHED("bias_add_k");
    }
    return DS_OK;
}

/* dX[M,K] (=|+=) dY[M,N] W[N,K]:  dX^T (K x M) = W^T (op N) . dY^T (op N)
 * dW[N,K] += dY^T X:               dW^T (K x N) = X^T (op N) . dY (op T on dY^T)
 * dbias[N] += column sums of dY (deterministic, layernorm.cu). */
extern "C" ds_status ds_cuda_linear_bwd(ds_backend *b, const float *dy, const float *x,
                                        const float *w, float *dx, float *dw, float *dbias,
                                        int64_t M, int64_t K, int64_t N, int accumulate)
{
    ds_status st = check_dims(b, "linear_bwd", M, K, N);
    if (st != DS_OK)
        return st;
    cublasHandle_t h = DS_CUDA(b)->blas;
    const float one = 1.0f, zero = 0.0f;
    if (dx && M > 0 && K > 0) {
        if (N == 0) {
            if (!accumulate)
                CU_TRY(cudaMemsetAsync(dx, 0, (size_t)(M * K) * sizeof(float), STREAM(b)));
        } else {
            BLAS_TRY(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, w, (int)K,
                                 dy, (int)N, accumulate ? &one : &zero, dx, (int)K));
        }
    }
    if (dw && M > 0 && K > 0 && N > 0)
        BLAS_TRY(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)M, &one, x, (int)K, dy,
                             (int)N, &one, dw, (int)K));
    if (dbias)
        return ds_cuda_colsum_acc(b, dy, dbias, M, N);
    return DS_OK;
}
