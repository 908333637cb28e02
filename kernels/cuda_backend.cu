/* The CUDA backend: device selection, memory (cudaMalloc, zeroed), one stream, the cuBLAS
 * handle, error messages, and the ops table. The kernels live in the other .cu files of
 * kernels/. This is libds-cuda.so, which libds loads with dlopen only when backend "cuda" is
 * asked for (lib/backend/cuda_loader.c); its only exported symbols are ds_cuda_backend_create
 * and ds_cuda_backend_abi. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

/* ---- errors ----------------------------------------------------------------------------- */

static ds_status set_error(ds_error *err, ds_status code, const char *fmt, va_list ap)
{
    if (err) {
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        err->code = code;
    }
    return code;
}

extern "C" ds_status ds_cuda_err_set(ds_error *err, ds_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(err, code, fmt, ap);
    va_end(ap);
    return code;
}

extern "C" ds_status ds_cuda_error(ds_backend *b, ds_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(&b->err, code, fmt, ap);
    va_end(ap);
    return code;
}

static const char *short_file(const char *f)
{
    const char *s = strstr(f, "kernels/");
    return s ? s : f;
}

extern "C" ds_status ds_cuda_fail(ds_backend *b, const char *what, cudaError_t e,
                                  const char *file, int line)
{
    ds_status code = e == cudaErrorMemoryAllocation ? DS_ERR_NOMEM : DS_ERR_BACKEND;
    return ds_cuda_error(b, code, "CUDA: %s: %s (%s) [%s:%d]", what, cudaGetErrorString(e),
                         cudaGetErrorName(e), short_file(file), line);
}

extern "C" ds_status ds_cuda_blas_fail(ds_backend *b, const char *what, cublasStatus_t s,
                                       const char *file, int line)
{
    ds_status code = s == CUBLAS_STATUS_ALLOC_FAILED ? DS_ERR_NOMEM : DS_ERR_BACKEND;
    return ds_cuda_error(b, code, "cuBLAS: %s: %s (%s) [%s:%d]", what, cublasGetStatusString(s),
                         cublasGetStatusName(s), short_file(file), line);
}

/* ---- memory ----------------------------------------------------------------------------- */

static void *cuda_alloc(ds_backend *b, size_t bytes)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is not sticky: clear it */
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        ds_cuda_error(b, DS_ERR_NOMEM,
                      "CUDA: out of device memory allocating %zu bytes (%.2f of %.2f GiB free): %s",
                      bytes, free_b / 1073741824.0, total_b / 1073741824.0, cudaGetErrorString(e));
        return NULL;
    }
    /* the alloc contract: zeroed. Ordered on the stream before any op that uses p. */
    e = cudaMemsetAsync(p, 0, bytes ? bytes : 1, STREAM(b));
    if (e != cudaSuccess) {
        ds_cuda_fail(b, "cudaMemsetAsync", e, __FILE__, __LINE__);
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(ds_backend *b, void *p)
{
    (void)b;
    if (p)
        cudaFree(p); /* synchronizes with the device: no op can still be using p */
}

static ds_status cuda_upload(ds_backend *b, void *dst, const void *host, size_t bytes)
{
    /* from pageable memory this returns once the host data is staged: the caller may reuse
     * its buffer at once */
    if (bytes)
        CU_TRY(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, STREAM(b)));
    return DS_OK;
}

static ds_status cuda_download(ds_backend *b, void *host, const void *src, size_t bytes)
{
    if (bytes)
        CU_TRY(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, STREAM(b)));
    CU_TRY(cudaStreamSynchronize(STREAM(b)));
    return DS_OK;
}

static ds_status cuda_zero(ds_backend *b, void *p, size_t bytes)
{
    if (bytes)
        CU_TRY(cudaMemsetAsync(p, 0, bytes, STREAM(b)));
    return DS_OK;
}

/* Overlapping ranges are copied as memmove would (the CPU backend's copy): through a temporary
 * buffer, since cudaMemcpy's result is undefined there. No caller of the engine overlaps. */
static ds_status cuda_copy(ds_backend *b, void *dst, const void *src, size_t bytes)
{
    if (!bytes || dst == src)
        return DS_OK;
    const char *d = (const char *)dst, *s = (const char *)src;
    if (!(d < s + bytes && s < d + bytes)) {
        CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, STREAM(b)));
        return DS_OK;
    }
    void *tmp = NULL;
    CU_TRY(cudaMalloc(&tmp, bytes));
    cudaError_t e = cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, STREAM(b));
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, STREAM(b));
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(STREAM(b));
    cudaFree(tmp);
    CU_TRY(e);
    return DS_OK;
}

static ds_status cuda_sync(ds_backend *b)
{
    CU_TRY(cudaStreamSynchronize(STREAM(b)));
    return DS_OK;
}

static void *grow(ds_backend *b, void **buf, size_t *have, size_t bytes)
{
    if (*have >= bytes)
        return *buf;
    if (*buf)
        cudaFree(*buf); /* synchronizes: the previous op using it has finished */
    *buf = NULL;
    *have = 0;
    size_t want = bytes + bytes / 4; /* some headroom against many small growths */
    cudaError_t e = cudaMalloc(buf, want);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *buf = NULL;
        ds_cuda_error(b, DS_ERR_NOMEM, "CUDA: out of device memory for %zu bytes of scratch: %s",
                      want, cudaGetErrorString(e));
        return NULL;
    }
    *have = want;
    return *buf;
}

extern "C" void *ds_cuda_scratch(ds_backend *b, size_t bytes)
{
    return grow(b, &DS_CUDA(b)->scratch, &DS_CUDA(b)->scratch_bytes, bytes);
}

extern "C" void *ds_cuda_scratch16(ds_backend *b, size_t bytes)
{
    return grow(b, &DS_CUDA(b)->scratch16, &DS_CUDA(b)->scratch16_bytes, bytes);
}

extern "C" ds_status ds_cuda_fork(ds_backend *b)
{
    CU_TRY(cudaEventRecord(DS_CUDA(b)->ev_fork, DS_CUDA(b)->stream));
    return DS_OK;
}

extern "C" ds_status ds_cuda_side_begin(ds_backend *b, ds_cuda_saved *saved)
{
    ds_cuda *c = DS_CUDA(b);
    CU_TRY(cudaStreamWaitEvent(c->side, c->ev_fork, 0));
    *saved = (ds_cuda_saved){c->stream, c->blas, c->scratch, c->scratch_bytes};
    c->stream = c->side;
    c->blas = c->blas_side;
    c->scratch = c->scratch_side;
    c->scratch_bytes = c->scratch_side_bytes;
    return DS_OK;
}

extern "C" ds_status ds_cuda_side_end(ds_backend *b, const ds_cuda_saved *saved)
{
    ds_cuda *c = DS_CUDA(b);
    c->scratch_side = c->scratch; /* it may have grown */
    c->scratch_side_bytes = c->scratch_bytes;
    c->stream = saved->stream;
    c->blas = saved->blas;
    c->scratch = saved->scratch;
    c->scratch_bytes = saved->scratch_bytes;
    CU_TRY(cudaEventRecord(c->ev_join, c->side));
    CU_TRY(cudaStreamWaitEvent(c->stream, c->ev_join, 0));
    return DS_OK;
}

/* ---- lifetime --------------------------------------------------------------------------- */

static void cuda_destroy(ds_backend *b)
{
    ds_cuda *c = DS_CUDA(b);
    if (c) {
        if (c->stream)
            cudaStreamSynchronize(c->stream);
        ds_cuda_nccl_unload(b);
        if (c->side)
            cudaStreamSynchronize(c->side);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->blas_side)
            cublasDestroy(c->blas_side);
        if (c->ev_fork)
            cudaEventDestroy(c->ev_fork);
        if (c->ev_join)
            cudaEventDestroy(c->ev_join);
        if (c->scratch_side)
            cudaFree(c->scratch_side);
        if (c->lt)
            cublasLtDestroy(c->lt);
        if (c->lt_ws)
            cudaFree(c->lt_ws);
        if (c->scratch)
            cudaFree(c->scratch);
        if (c->scratch16)
            cudaFree(c->scratch16);
        if (c->red)
            cudaFree(c->red);
        if (c->host_red)
            cudaFreeHost(c->host_red);
        if (c->stream)
            cudaStreamDestroy(c->stream);
        if (c->side)
            cudaStreamDestroy(c->side);
        free(c);
    }
    free(b);
}

static const char *cuda_describe(const ds_backend *b) { return DS_CUDA(b)->describe; }

/* The GEMMs' precision and the attention path that may run (the fused kernels also need a head
 * size they take: flash_attention.cu, flash16.cu). */
extern "C" void ds_cuda_describe_update(ds_backend *b)
{
    ds_cuda *c = DS_CUDA(b);
    const char *gemm = c->gemm16 == DS_ROUND_BF16 ? "bf16" : c->gemm16 ? "fp16" : c->tf32 ? "TF32" : "fp32";
    const char *att = "materialized";
    if (c->cc_major >= 8 && c->gemm16 && c->flash != 0)
        att = c->gemm16 == DS_ROUND_BF16 ? "fused bf16" : "fused fp16";
    else if (c->cc_major >= 8 && !c->gemm16 && c->tf32 && c->flash == 1)
        att = "fused TF32";
    snprintf(c->describe, sizeof c->describe, "%s, %s GEMMs, %s attention)", c->base, gemm, att);
}

/* The engine's communication thread: the backend's device, current in that thread too. The side
 * stream (DS_CUDA_SIDE=1) is switched on by swapping the stream, cuBLAS handle and scratch that
 * every op reads (ds_cuda_side_begin), which a second thread's ops would see: it goes off for
 * good. The engine waits for this before its own thread goes on (zq_start). */
static ds_status cuda_thread_init(ds_backend *b)
{
    DS_CUDA(b)->side_ok = 0;
    CU_TRY(cudaSetDevice(DS_CUDA(b)->device));
    return DS_OK;
}

static const ds_backend_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .destroy = */ cuda_destroy,
    /* .alloc = */ cuda_alloc,
    /* .free = */ cuda_free,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .zero = */ cuda_zero,
    /* .copy = */ cuda_copy,
    /* .synchronize = */ cuda_sync,
    /* .linear_fwd = */ ds_cuda_linear_fwd,
    /* .linear_bwd = */ ds_cuda_linear_bwd,
    /* .embedding_fwd = */ ds_cuda_embedding_fwd,
    /* .embedding_bwd = */ ds_cuda_embedding_bwd,
    /* .posadd_fwd = */ ds_cuda_posadd_fwd,
    /* .posadd_bwd = */ ds_cuda_posadd_bwd,
    /* .layernorm_fwd = */ ds_cuda_layernorm_fwd,
    /* .layernorm_bwd = */ ds_cuda_layernorm_bwd,
    /* .gelu_fwd = */ ds_cuda_gelu_fwd,
    /* .gelu_bwd = */ ds_cuda_gelu_bwd,
    /* .relu_fwd = */ ds_cuda_relu_fwd,
    /* .relu_bwd = */ ds_cuda_relu_bwd,
    /* .dropout_fwd = */ ds_cuda_dropout_fwd,
    /* .dropout_bwd = */ ds_cuda_dropout_bwd,
    /* .add = */ ds_cuda_add,
    /* .accumulate = */ ds_cuda_accumulate,
    /* .attention_fwd = */ ds_cuda_attention_fwd,
    /* .attention_bwd = */ ds_cuda_attention_bwd,
    /* .xent_fwd = */ ds_cuda_xent_fwd,
    /* .mse_fwd = */ ds_cuda_mse_fwd,
    /* .sum = */ ds_cuda_sum,
    /* .sumsq = */ ds_cuda_sumsq,
    /* .nonfinite = */ ds_cuda_nonfinite,
    /* .scale = */ ds_cuda_scale,
    /* .adamw_step = */ ds_cuda_adamw_step,
    /* .sgd_step = */ ds_cuda_sgd_step,
    /* .describe = */ cuda_describe,
    /* .round16 = */ ds_cuda_round16,
    /* .adagrad_step = */ ds_cuda_adagrad_step,
    /* .lamb_step = */ ds_cuda_lamb_step,
    /* .set_precision = */ ds_cuda_set_precision,
    /* .comm_id = */ ds_cuda_comm_id,
    /* .comm_create = */ ds_cuda_comm_create,
    /* .thread_init = */ cuda_thread_init,
    /* .attention_state = */ ds_cuda_attention_state,
    /* .fuse_round = */ ds_cuda_fuse_round,
    /* .store16 = */ ds_cuda_store16,
    /* .pack16 = */ ds_cuda_pack16_op,
    /* .linear_gelu_fwd = */ ds_cuda_linear_gelu_fwd,
    /* .linear_bwd_gelu = */ ds_cuda_linear_bwd_gelu,
    /* .scale_act = */ ds_cuda_scale_act,
};

/* DS_CUDA_TF32: "1" (the default) lets cuBLAS use TF32 tensor cores for the fp32 GEMMs, as
 * PyTorch does with torch.backends.cuda.matmul.allow_tf32 = True; "0" keeps them in full fp32. */
static int tf32_setting(ds_error *err, int *tf32)
{
    const char *s = getenv("DS_CUDA_TF32");
    *tf32 = 1;
    if (!s || !*s || strcmp(s, "1") == 0)
        return 0;
    if (strcmp(s, "0") == 0) {
        *tf32 = 0;
        return 0;
    }
    ds_cuda_err_set(err, DS_ERR_INVALID, "DS_CUDA_TF32=%s: expected 0 (full fp32 GEMMs) or 1 (TF32)", s);
    return -1;
}

/* variant: NULL or "" (device LOCAL_RANK of CUDA_VISIBLE_DEVICES when ds-launch set LOCAL_RANK,
 * else device 0) or a device number ("cuda:1"). */
EXPORT ds_status ds_cuda_backend_create(ds_backend **out, const char *variant, ds_error *err)
{
    int tf32, flash = -1; /* unset: fused attention in 16-bit training only (ds-cuda(7)) */
    if (tf32_setting(err, &tf32))
        return DS_ERR_INVALID;
    const char *fs = getenv("DS_CUDA_FLASH");
    if (fs && *fs) {
        if (strcmp(fs, "0") != 0 && strcmp(fs, "1") != 0)
            return ds_cuda_err_set(err, DS_ERR_INVALID,
                                   "DS_CUDA_FLASH=%s: expected 0 (materialized attention) or 1 (fused, also in fp32 with "
                                   "TF32); unset: fused in bf16/fp16 training only", fs);
        flash = fs[0] == '1';
    }
    const char *fr = getenv("DS_CUDA_FUSE_ROUND");
    if (fr && *fr && strcmp(fr, "0") != 0 && strcmp(fr, "1") != 0)
        return ds_cuda_err_set(err, DS_ERR_INVALID,
                               "DS_CUDA_FUSE_ROUND=%s: expected 1 (the kernels round their outputs in 16-bit "
                               "training, the default) or 0 (a separate rounding pass)", fr);
    { /* the experiments' switches (ds-cuda(7)): 0 or 1, nothing else read as either */
        static const char *const sw[][2] = {
            {"DS_CUDA_LT", "1 (cuBLASLt adds the bias in its epilogue, the default) or 0 (a second pass)"},
            {"DS_CUDA_GELU_FUSE", "1 (the MLP's GELU inside its products, the default) or 0 (its own passes)"},
            {"DS_CUDA_XENT_ROWS", "0 (the default) or 1 (the cross-entropy reads each row once)"},
            {"DS_CUDA_SIDE", "0 (the default) or 1 (dW and the bias gradient on a side stream)"}};
        for (size_t k = 0; k < sizeof sw / sizeof sw[0]; k++) {
            const char *v = getenv(sw[k][0]);
            if (v && *v && strcmp(v, "0") && strcmp(v, "1"))
                return ds_cuda_err_set(err, DS_ERR_INVALID, "%s=%s: expected %s", sw[k][0], v, sw[k][1]);
        }
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "no CUDA device: %s (%s)", cudaGetErrorString(e),
                       cudaGetErrorName(e));
    if (count < 1)
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "no CUDA device: the CUDA runtime sees none");
    int dev = 0;
    const char *lr = getenv("LOCAL_RANK");
    if (variant && *variant) {
        char *end;
        long v = strtol(variant, &end, 10);
        if (*end || end == variant || v < 0)
            return ds_cuda_err_set(err, DS_ERR_INVALID,
                           "backend cuda:%s: expected a device number (cuda:0, cuda:1, ...)", variant);
        if (v >= count)
            return ds_cuda_err_set(err, DS_ERR_INVALID, "backend cuda:%ld: there are %d CUDA device(s)", v,
                           count);
        dev = (int)v;
    } else if (lr && *lr) { /* ds-launch (and torchrun): one rank per GPU of the node */
        char *end;
        long v = strtol(lr, &end, 10);
        if (*end || end == lr || v < 0)
            return ds_cuda_err_set(err, DS_ERR_INVALID, "LOCAL_RANK=%s: expected a number", lr);
        if (v >= count) {
            const char *vis = getenv("CUDA_VISIBLE_DEVICES");
            return ds_cuda_err_set(err, DS_ERR_INVALID,
                           "LOCAL_RANK=%ld but this process sees %d CUDA device(s) (CUDA_VISIBLE_DEVICES=%s): "
                           "one rank per GPU, so at most %d ranks on this node",
                           v, count, vis ? vis : "(unset)", count);
        }
        dev = (int)v;
    }
    e = cudaSetDevice(dev);
    cudaDeviceProp prop;
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&prop, dev);
    if (e != cudaSuccess)
        return ds_cuda_err_set(err, DS_ERR_UNSUPPORTED, "no CUDA device: device %d: %s (%s)", dev,
                       cudaGetErrorString(e), cudaGetErrorName(e));

    ds_backend *b = (ds_backend *)calloc(1, sizeof *b);
    ds_cuda *c = (ds_cuda *)calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return ds_cuda_err_set(err, DS_ERR_NOMEM, "out of memory");
    }
    b->ops = &cuda_ops;
    b->impl = c;
    c->device = dev;
    c->sm_count = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    c->tf32 = tf32;
    c->flash = flash;
    c->cc_major = prop.major;
    c->fuse_ok = !(fr && strcmp(fr, "0") == 0);
    const char *lt_env = getenv("DS_CUDA_LT");
    c->lt_ok = !(lt_env && strcmp(lt_env, "0") == 0);
    const char *gf_env = getenv("DS_CUDA_GELU_FUSE");
    c->gelu_fuse = !(gf_env && strcmp(gf_env, "0") == 0);
    const char *xr_env = getenv("DS_CUDA_XENT_ROWS");
    c->xent_rows = xr_env && strcmp(xr_env, "1") == 0;
    const char *side_env = getenv("DS_CUDA_SIDE");
    c->side_ok = side_env && strcmp(side_env, "1") == 0;
    const char *step = "creating the stream";
    ds_status st = DS_OK;
    cublasStatus_t bs;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->side, cudaStreamNonBlocking)) != cudaSuccess)
        goto cuda_failed;
    step = "creating events";
    if ((e = cudaEventCreateWithFlags(&c->ev_fork, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&c->ev_join, cudaEventDisableTiming)) != cudaSuccess)
        goto cuda_failed;
    step = "allocating reduction buffers";
    if ((e = cudaMalloc(&c->red, (RED_BLOCKS + 1) * sizeof(double))) != cudaSuccess)
        goto cuda_failed;
    if ((e = cudaMallocHost(&c->host_red, 64)) != cudaSuccess)
        goto cuda_failed;
    if ((bs = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(c->blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)) !=
            CUBLAS_STATUS_SUCCESS ||
        (bs = cublasCreate(&c->blas_side)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetStream(c->blas_side, c->side)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(c->blas_side, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)) !=
            CUBLAS_STATUS_SUCCESS) {
        st = ds_cuda_err_set(err, DS_ERR_BACKEND, "cuBLAS: initialization failed: %s (%s)",
                     cublasGetStatusString(bs), cublasGetStatusName(bs));
        cuda_destroy(b);
        return st;
    }
    /* cuBLASLt (the 16-bit linear layers with a bias): without it they take the other way */
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS)
        c->lt = NULL;
    snprintf(c->base, sizeof c->base, "cuda:%d (%.120s, sm_%d%d, %d SMs, %.1f GiB", dev, prop.name, prop.major,
             prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    ds_cuda_describe_update(b);
    *out = b;
    return DS_OK;
cuda_failed:
    st = ds_cuda_err_set(err, e == cudaErrorMemoryAllocation ? DS_ERR_NOMEM : DS_ERR_BACKEND,
                 "CUDA: %s on device %d (%s): %s (%s)", step, dev, prop.name, cudaGetErrorString(e),
                 cudaGetErrorName(e));
    cuda_destroy(b);
    return st;
}

/* libds checks that it and this module were built from the same ds/backend.h. */
EXPORT size_t ds_cuda_backend_abi(void) { return sizeof(ds_backend_ops) * 4096 + sizeof(ds_backend); }
