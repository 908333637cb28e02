/* Linear layers through cuBLAS (TF32 tensor cores unless DS_CUDA_TF32=0, set on the handle).
 * cuBLAS is column-major and our matrices are row-major: a row-major A[r, c] is the
 * column-major A^T, so every product below is written for the transposes. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

/* ---- 16-bit products ------------------------------------------------------------------------
 * In fp16/bf16 training every input of a linear layer's products (activations, weights and
 * activation gradients) is already a value of the 16-bit format (the engine rounds them), so
 * converting them is exact and a bf16/fp16 GEMM with fp32 accumulation computes what the fp32
 * GEMM would, on the tensor cores. */

extern "C" ds_status ds_cuda_set_precision(ds_backend *b, int round_mode)
{
    if (round_mode != 0 && round_mode != DS_ROUND_BF16 && round_mode != DS_ROUND_FP16)
        return ds_cuda_error(b, DS_ERR_INVALID, "set_precision: unknown mode %d", round_mode);
    DS_CUDA(b)->gemm16 = round_mode;
    DS_CUDA(b)->round_out = 0; /* fuse_round and store16 ask again */
    DS_CUDA(b)->store16 = 0;
    ds_cuda_describe_update(b);
    return DS_OK;
}

/* The activation ops round their outputs (see ds_backend_ops.fuse_round): only in the mode the
 * GEMMs run in, where every attention path (flash16.cu, the materialized one) rounds too. */
extern "C" int ds_cuda_fuse_round(ds_backend *b, int mode)
{
    ds_cuda *c = DS_CUDA(b);
    if (mode && (mode != c->gemm16 || !c->fuse_ok)) {
        c->round_out = 0;
        return 0;
    }
    c->round_out = mode;
    return 1;
}

/* 16-bit activation storage (ds_backend_ops.store16): in the mode the GEMMs run in, whose
 * operands the activations then are as stored; every op keeps its fp32 arithmetic. */
extern "C" int ds_cuda_store16(ds_backend *b, int mode)
{
    ds_cuda *c = DS_CUDA(b);
    c->store16 = mode && mode == c->gemm16 ? mode : 0;
    return c->store16 != 0;
}

__global__ void to_bf16_k(const float *x, __nv_bfloat16 *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void to_fp16_k(const float *x, __half *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = __float2half_rn(x[i]);
}

/* x[n] as 16-bit values at dst (2 bytes each) */
static ds_status to16(ds_backend *b, const float *x, void *dst, int64_t n)
{
    if (n <= 0)
        return DS_OK;
    if (DS_CUDA(b)->gemm16 == DS_ROUND_BF16)
        to_bf16_k<<<grid_for(b, n, 256), 256, 0, STREAM(b)>>>(x, (__nv_bfloat16 *)dst, n);
    else
        to_fp16_k<<<grid_for(b, n, 256), 256, 0, STREAM(b)>>>(x, (__half *)dst, n);
    LAUNCHED("to16_k");
    return DS_OK;
}

/* C (column-major) = alpha op(A) op(B) + beta C with A, B 16-bit and fp32 accumulation; C fp32,
 * or (c16) 16-bit values of the same format, the fp32 result rounded to nearest even */
static ds_status gemm16c(ds_backend *b, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const float *alpha, const void *A, int lda, const void *B, int ldb,
                         const float *beta, void *C, int ldc, int c16)
{
    cudaDataType t = DS_CUDA(b)->gemm16 == DS_ROUND_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    BLAS_TRY(cublasGemmEx(DS_CUDA(b)->blas, ta, tb, m, n, k, alpha, A, t, lda, B, t, ldb, beta, C,
                          c16 ? t : CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return DS_OK;
}

static ds_status gemm16(ds_backend *b, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                        const float *alpha, const void *A, int lda, const void *B, int ldb,
                        const float *beta, float *C, int ldc)
{
    return gemm16c(b, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, 0);
}


/* y[m, n] += bias[n], rounded as fuse_round asked (rm); blocks of 256 columns x a grid-stride
 * over rows */
__global__ void bias_add_k(float *y, const float *bias, int64_t M, int64_t N, int rm)
{
    int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    float bn = bias[n];
    for (int64_t m = blockIdx.y; m < M; m += gridDim.y)
        y[m * N + n] = rnd(y[m * N + n] + bn, rm);
}

/* store16: y (16-bit) = y32 (+ bias, 16-bit too), each value rounded once */
template <int S> __global__ void bias_pack_k(const float *y32, const void *bias, void *y, int64_t M, int64_t N)
{
    int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    float bn = bias ? lda<S>(bias, n) : 0.0f;
    for (int64_t m = blockIdx.y; m < M; m += gridDim.y)
        sta<S>(y, m * N + n, bias ? y32[m * N + n] + bn : y32[m * N + n], 0);
}

#define LT_WORKSPACE ((size_t)32 << 20)
/* the largest power of two up to 256 that divides p's address: what cuBLASLt may assume of a
 * matrix (its heuristic's default is 256; an algorithm that needs more would fault) */
static uint32_t lt_align(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)p % a)
        a >>= 1;
    return a;
}

/* The epilogues ds asks cuBLASLt for (lt_matmul) */
enum lt_epi {
    LT_BIAS,      /* D = A B + bias (one value per row of D) */
    LT_GELU,      /* aux = A B (+ bias), D = gelu_tanh(aux): a linear layer and the GELU after it */
    LT_DGELU,     /* D = (A B) * gelu_tanh'(aux): dX of the layer after a GELU, and the GELU's backward */
};

/* D (m x n, column-major, ld m) = op(A) op(B) with A, B 16-bit (ld lda, ldb) through cuBLASLt with
 * the epilogue epi; D 16-bit (d16) or fp32, bias (LT_BIAS; NULL or one per row for LT_GELU) of
 * D's type, aux 16-bit, m x n with ld m. The epilogue works on the fp32 sum before D's one
 * conversion, so each output is rounded once. Returns 1 when done, 0 when cuBLASLt is off, the
 * operands do not suit it, or it has no algorithm (no error: the caller goes the other way), -1
 * on an error (b->err set). */
static int lt_matmul(ds_backend *b, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
                     int lda, const void *B, int ldb, void *D, int d16, enum lt_epi epi, const void *bias,
                     const void *aux)
{
    ds_cuda *c = DS_CUDA(b);
    /* the bias epilogue wants a 16-byte aligned bias; the GELU input's ld a multiple of 8
     * (cublasLt.h: CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD), and here 16-byte aligned too (as the
     * engine's activations are). Operands less than 16-byte aligned go the other way as well:
     * for them (2 bytes off) an H200's cuBLASLt took an algorithm that rounded the product to
     * bf16 before adding the bias (two bf16 steps from the sum rounded once, where the product
     * and the bias nearly cancel). */
    if (!c->lt_ok || !c->lt || (bias && (uintptr_t)bias % 16) || (uintptr_t)A % 16 || (uintptr_t)B % 16 ||
        (uintptr_t)D % 16 ||
        (epi != LT_BIAS && (!d16 || m % 8 || !aux || (uintptr_t)aux % 16)) ||
        (epi == LT_BIAS && !bias))
        return 0;
    if (!c->lt_ws_tried) {
        c->lt_ws_tried = 1;
        if (cudaMalloc(&c->lt_ws, LT_WORKSPACE) != cudaSuccess) {
            cudaGetLastError(); /* not sticky: run without a workspace */
            c->lt_ws = NULL;
        }
    }
    const cudaDataType t = c->gemm16 == DS_ROUND_BF16 ? CUDA_R_16BF : CUDA_R_16F, dt = d16 ? t : CUDA_R_32F;
    const cublasLtEpilogue_t ep = epi == LT_BIAS   ? CUBLASLT_EPILOGUE_BIAS
                                  : epi == LT_DGELU ? CUBLASLT_EPILOGUE_DGELU
                                  : bias            ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                    : CUBLASLT_EPILOGUE_GELU_AUX;
    const int64_t aux_ld = m;
    const uint64_t ws = c->lt_ws ? LT_WORKSPACE : 0;
    const uint32_t al_a = lt_align(A), al_b = lt_align(B), al_d = lt_align(D);
    const float one = 1.0f, zero = 0.0f;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0, done = 0;
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
/* each step only while the ones before succeeded */
#define LT_STEP(call)                                                                            \
    do {                                                                                         \
        if (s == CUBLAS_STATUS_SUCCESS)                                                          \
            s = (call);                                                                          \
    } while (0)
    LT_STEP(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    if (bias)
        LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (epi != LT_BIAS) {
        LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
        LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld));
    }
    LT_STEP(cublasLtMatrixLayoutCreate(&la, t, ta == CUBLAS_OP_N ? (uint64_t)m : (uint64_t)k,
                                       ta == CUBLAS_OP_N ? (uint64_t)k : (uint64_t)m, lda));
    LT_STEP(cublasLtMatrixLayoutCreate(&lb, t, tb == CUBLAS_OP_N ? (uint64_t)k : (uint64_t)n,
                                       tb == CUBLAS_OP_N ? (uint64_t)n : (uint64_t)k, ldb));
    LT_STEP(cublasLtMatrixLayoutCreate(&ld, dt, (uint64_t)m, (uint64_t)n, m));
    LT_STEP(cublasLtMatmulPreferenceCreate(&pref));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d));
#undef LT_STEP
    /* a description or a query that fails, or no algorithm: the other way (done 0); only the
     * product itself failing is an error */
    if (s == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, ld, ld, pref, 1, &res, &found) == CUBLAS_STATUS_SUCCESS &&
        found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatmul(c->lt, op, &one, A, la, B, lb, &zero, D, ld, D, ld, &res.algo, c->lt_ws, (size_t)ws,
                           STREAM(b));
        done = s == CUBLAS_STATUS_SUCCESS ? 1 : s == CUBLAS_STATUS_NOT_SUPPORTED ? 0 : -1;
    }
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (ld)
        cublasLtMatrixLayoutDestroy(ld);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (op)
        cublasLtMatmulDescDestroy(op);
    if (done < 0)
        ds_cuda_blas_fail(b, epi == LT_BIAS ? "cublasLtMatmul (linear layer with a bias)"
                             : epi == LT_GELU ? "cublasLtMatmul (linear layer and GELU)"
                                              : "cublasLtMatmul (dX and GELU backward)",
                          s, __FILE__, __LINE__);
    return done;
}

/* Y = X W^T + bias for a linear layer with cuBLASLt's bias epilogue: X (M x K) and W (N x K)
 * 16-bit, the bias and Y of Y's type: 16-bit (d16) or fp32. Column-major, as the products here:
 * D (N x M) = op_T(W^T) . X^T, the bias added to each column (length N) in fp32 before D's one
 * conversion, so a 16-bit Y is the fp32 sum rounded once, as bias_pack_k writes it, without the
 * fp32 copy and the second pass. lt_matmul's returns. */
static int lt_linear(ds_backend *b, const void *w, const void *x, const void *bias, void *y, int M, int K, int N,
                     int d16)
{
    return lt_matmul(b, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, w, K, x, K, y, d16, LT_BIAS, bias, NULL);
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
    if (S16(b)) {
        /* x and w are 16-bit already: the GEMM reads them as they are. Without a bias cuBLAS
         * writes y in 16 bits (its fp32 result rounded: no fp32 copy of the LM head's logits);
         * with one, cuBLASLt's bias epilogue does (lt_linear), or where it cannot the fp32
         * result goes through scratch and one pass adds the bias and rounds. */
        if (bias && K > 0) {
            int lt = lt_linear(b, w, x, bias, y, (int)M, (int)K, (int)N, 1);
            if (lt != 0)
                return lt > 0 ? DS_OK : b->err.code;
        }
        float *y32 = NULL;
        if (bias && !(y32 = (float *)ds_cuda_scratch(b, (size_t)(M * N) * sizeof(float))))
            return DS_ERR_NOMEM;
        if (K == 0) {
            if (bias)
                CU_TRY(cudaMemsetAsync(y32, 0, (size_t)(M * N) * sizeof(float), STREAM(b)));
            else
                CU_TRY(cudaMemsetAsync(y, 0, (size_t)(M * N) * 2, STREAM(b)));
        } else if ((st = gemm16c(b, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, (int)K, x, (int)K,
                                 &zero, bias ? (void *)y32 : (void *)y, (int)N, !bias)) != DS_OK) {
            return st;
        }
        if (bias) {
            dim3 grid((unsigned)((N + 255) / 256), (unsigned)(M < 1024 ? M : 1024));
            LAUNCH_S(bias_pack_k, grid, 256, 0, y32, bias, y, M, N);
        }
        return DS_OK;
    }
    if (K == 0) {
        CU_TRY(cudaMemsetAsync(y, 0, (size_t)(M * N) * sizeof(float), STREAM(b)));
    } else if (DS_CUDA(b)->gemm16) {
        const size_t xb = ((size_t)(M * K) * 2 + 255) / 256 * 256; /* w16 256-byte aligned, as x16 */
        char *s16 = (char *)ds_cuda_scratch(b, xb + (size_t)(N * K) * 2);
        if (!s16)
            return DS_ERR_NOMEM;
        void *x16 = s16, *w16 = s16 + xb;
        if ((st = to16(b, x, x16, M * K)) != DS_OK || (st = to16(b, w, w16, N * K)) != DS_OK)
            return st;
        /* with a bias: the fp32 sum from cuBLASLt's epilogue, as store16 computes it (then rounded
         * below where fuse_round asks) */
        int lt = bias ? lt_linear(b, w16, x16, bias, y, (int)M, (int)K, (int)N, 0) : 0;
        if (lt < 0)
            return b->err.code;
        if (lt > 0)
            return RMODE(b) ? ds_cuda_round16(b, y, M * N, RMODE(b)) : DS_OK;
        if ((st = gemm16(b, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w16, (int)K, x16, (int)K,
                         &zero, y, (int)N)) != DS_OK)
            return st;
    } else {
        BLAS_TRY(cublasSgemm(DS_CUDA(b)->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one,
                             w, (int)K, x, (int)K, &zero, y, (int)N));
    }
    if (bias) {
        dim3 grid((unsigned)((N + 255) / 256), (unsigned)(M < 1024 ? M : 1024));
        bias_add_k<<<grid, 256, 0, STREAM(b)>>>(y, bias, M, N, RMODE(b));
        LAUNCHED("bias_add_k");
    } else if (RMODE(b)) {
        return ds_cuda_round16(b, y, M * N, RMODE(b));
    }
    return DS_OK;
}

/* A linear layer and the tanh GELU after it (ds_backend_ops.linear_gelu_fwd), with store16:
 * cuBLASLt's GELU_AUX(_BIAS) epilogue writes pre = X W^T + bias and y = gelu(pre) from the fp32
 * sum, so the GELU's own pass (read pre, write y) goes. */
extern "C" ds_status ds_cuda_linear_gelu_fwd(ds_backend *b, const float *x, const float *w, const float *bias,
                                             float *pre, float *y, int64_t M, int64_t K, int64_t N, int *done)
{
    *done = 0;
    ds_status st = check_dims(b, "linear_gelu_fwd", M, K, N);
    if (st != DS_OK || !S16(b) || !DS_CUDA(b)->gelu_fuse || M == 0 || N == 0 || K == 0)
        return st;
    int lt = lt_matmul(b, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, w, (int)K, x, (int)K, y, 1, LT_GELU,
                       bias, pre);
    if (lt < 0)
        return b->err.code;
    *done = lt;
    return DS_OK;
}

/* store16: dW[N,K] += dY^T X (dW^T (K x N) = X^T (op N) . dY (op T on dY^T)) and dbias[N] +=
 * column sums of dY, on whatever stream STREAM(b) is (linear_bwd puts them on the side stream) */
static ds_status weight_grads16(ds_backend *b, const float *dy, const float *x, float *dw, float *dbias, int64_t M,
                                int64_t K, int64_t N)
{
    const float one = 1.0f;
    ds_status st;
    if (dw && K > 0 && N > 0 &&
        (st = gemm16(b, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)M, &one, x, (int)K, dy, (int)N, &one, dw,
                     (int)K)) != DS_OK)
        return st;
    if (dbias && N > 0)
        return ds_cuda_colsum_acc(b, dy, dbias, M, N);
    return DS_OK;
}

/* weight_grads16 on the side stream from the point ds_cuda_fork recorded (side), else here */
static ds_status weight_grads16_on(ds_backend *b, int side, const float *dy, const float *x, float *dw, float *dbias,
                                   int64_t M, int64_t K, int64_t N)
{
    if (!side)
        return weight_grads16(b, dy, x, dw, dbias, M, K, N);
    ds_cuda_saved sv;
    ds_status st = ds_cuda_side_begin(b, &sv);
    if (st != DS_OK)
        return st;
    st = weight_grads16(b, dy, x, dw, dbias, M, K, N);
    const ds_status st2 = ds_cuda_side_end(b, &sv);
    return st != DS_OK ? st : st2;
}

/* linear_bwd of the layer after a tanh GELU with the GELU's backward in the dX product
 * (ds_backend_ops.linear_bwd_gelu), with store16: cuBLASLt's DGELU epilogue multiplies dY W's
 * fp32 sum by gelu'(pre) and rounds once, so neither the GELU's output gradient nor its own pass
 * (read pre and it, write dx) is needed; dW and dbias as linear_bwd computes them, beside it. */
extern "C" ds_status ds_cuda_linear_bwd_gelu(ds_backend *b, const float *dy, const float *x, const float *w,
                                             const float *pre, float *dx, float *dw, float *dbias, int64_t M,
                                             int64_t K, int64_t N, int *done)
{
    *done = 0;
    ds_status st = check_dims(b, "linear_bwd_gelu", M, K, N);
    if (st != DS_OK || !S16(b) || !DS_CUDA(b)->gelu_fuse || M <= 0 || K <= 0 || N <= 0 || !dx)
        return st;
    /* dX^T (K x M) = W^T (op N) . dY^T (op N), the GELU's input pre^T (K x M, ld K) beside it;
     * dW and dbias on the side stream, from the point before that product */
    const int side = DS_CUDA(b)->side_ok && (dw || dbias);
    if (side && (st = ds_cuda_fork(b)) != DS_OK)
        return st;
    int lt = lt_matmul(b, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, w, (int)K, dy, (int)N, dx, 1, LT_DGELU,
                       NULL, pre);
    if (lt <= 0)
        return lt < 0 ? b->err.code : DS_OK;
    *done = 1;
    return weight_grads16_on(b, side, dy, x, dw, dbias, M, K, N);
}

/* dX[M,K] (=|+=) dY[M,N] W[N,K]:  dX^T (K x M) = W^T (op N) . dY^T (op N)
 * dW[N,K] += dY^T X:               dW^T (K x N) = X^T (op N) . dY (op T on dY^T)
 * dbias[N] += column sums of dY (deterministic, layernorm.cu).
 * With store16 and DS_CUDA_SIDE=1, dW and dbias run on the side stream beside dX. */
extern "C" ds_status ds_cuda_linear_bwd(ds_backend *b, const float *dy, const float *x,
                                        const float *w, float *dx, float *dw, float *dbias,
                                        int64_t M, int64_t K, int64_t N, int accumulate)
{
    ds_status st = check_dims(b, "linear_bwd", M, K, N);
    if (st != DS_OK)
        return st;
    cublasHandle_t h = DS_CUDA(b)->blas;
    const float one = 1.0f, zero = 0.0f;
    if (S16(b)) {
        /* dY, X and W are 16-bit already; cuBLAS writes dX in 16 bits. When accumulating, the
         * product goes to an fp32 copy of the stored dX (beta 1, the fp32 layout's call) and is
         * packed: with a 16-bit C and beta 1 an H200's cuBLAS gave results one bf16 step away
         * from rounding the fp32 sum once */
        if (M <= 0)
            return DS_OK;
        /* dW and dbias (which read only dy and x) on the side stream, from the point before dX */
        const int side = DS_CUDA(b)->side_ok && dx && K > 0 && N > 0 && (dw || dbias);
        if (side && (st = ds_cuda_fork(b)) != DS_OK)
            return st;
        if (dx && K > 0) {
            if (N == 0) {
                if (!accumulate)
                    CU_TRY(cudaMemsetAsync(dx, 0, (size_t)(M * K) * 2, STREAM(b)));
            } else if (!accumulate) {
                if ((st = gemm16c(b, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, w, (int)K, dy, (int)N,
                                  &zero, dx, (int)K, 1)) != DS_OK)
                    return st;
            } else {
                float *dx32 = (float *)ds_cuda_scratch(b, (size_t)(M * K) * sizeof(float));
                if (!dx32)
                    return DS_ERR_NOMEM;
                if ((st = ds_cuda_unpack16(b, dx, dx32, M * K)) != DS_OK ||
                    (st = gemm16(b, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, w, (int)K, dy, (int)N,
                                 &one, dx32, (int)K)) != DS_OK ||
                    (st = ds_cuda_pack16(b, dx32, dx, M * K)) != DS_OK)
                    return st;
            }
        }
        return weight_grads16_on(b, side, dy, x, dw, dbias, M, K, N);
    }
    if (DS_CUDA(b)->gemm16 && M > 0 && K > 0 && N > 0 && (dx || dw)) {
        /* dY, W and X as 16-bit values, then the same two products as below */
        char *s16 = (char *)ds_cuda_scratch(b, (size_t)(M * N + N * K + M * K) * 2);
        if (!s16)
            return DS_ERR_NOMEM;
        void *dy16 = s16, *w16 = s16 + (size_t)(M * N) * 2, *x16 = s16 + (size_t)(M * N + N * K) * 2;
        if ((st = to16(b, dy, dy16, M * N)) != DS_OK)
            return st;
        if (dx && ((st = to16(b, w, w16, N * K)) != DS_OK ||
                   (st = gemm16(b, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, w16, (int)K, dy16,
                                (int)N, accumulate ? &one : &zero, dx, (int)K)) != DS_OK))
            return st;
        if (dw && ((st = to16(b, x, x16, M * K)) != DS_OK ||
                   (st = gemm16(b, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)M, &one, x16, (int)K, dy16,
                                (int)N, &one, dw, (int)K)) != DS_OK))
            return st;
        if (dx && RMODE(b) && (st = ds_cuda_round16(b, dx, M * K, RMODE(b))) != DS_OK)
            return st;
        if (dbias)
            return ds_cuda_colsum_acc(b, dy, dbias, M, N);
        return DS_OK;
    }
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
    if (dx && RMODE(b) && (st = ds_cuda_round16(b, dx, M * K, RMODE(b))) != DS_OK)
        return st;
    if (dbias)
        return ds_cuda_colsum_acc(b, dy, dbias, M, N);
    return DS_OK;
}
