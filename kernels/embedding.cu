/* Token and position embeddings, forward and backward. The backward passes are deterministic
 * and add in the CPU's order (bit-identical results): no atomics. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define THREADS 256

/* S: the storage of the activations and of the table (cuda_common.cuh, lda/sta) */
template <int S>
__global__ void embedding_fwd_k(const int32_t *ids, const void *table, void *out, int64_t M,
                                int64_t C, int rm)
{
    for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
        const int64_t src = (int64_t)ids[m] * C;
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < C;
             c += (int64_t)gridDim.x * blockDim.x)
            sta<S>(out, m * C + c, lda<S>(table, src + c), rm);
    }
}

/* dtable[ids[m], :] += dout[m, :]. One block per position m; only the block of an id's first
 * position works: it adds the rows of every position with that id, in increasing m, onto the
 * table row (the CPU's order), each thread holding EMB_COLS columns in registers. The later
 * positions are searched 256 at a time: each thread tests one, the block compacts the matches
 * (warp ballots, their counts in shared memory) into a list in increasing order, and then every
 * thread adds those rows. So a thread reads O(M / blockDim) ids, not O(M) from a staged copy;
 * the duplicate test before it is O(m / blockDim) per thread too. */
#define EMB_COLS 4
template <int S>
__global__ void embedding_bwd_k(const int32_t *ids, const void *dout, float *dtable, int64_t M,
                                int64_t C)
{
    __shared__ int32_t hits[THREADS];      /* offsets, from j0, of this chunk's matches */
    __shared__ int32_t warp_hits[THREADS / 32];
    const int64_t m = blockIdx.x;
    const int32_t id = ids[m];
    int dup = 0;
    for (int64_t j = threadIdx.x; j < m && !dup; j += blockDim.x)
        dup = ids[j] == id;
    if (__syncthreads_or(dup))
        return; /* the whole block: an earlier position has this id */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float *row = dtable + (int64_t)id * C;
    for (int64_t c0 = 0; c0 < C; c0 += (int64_t)blockDim.x * EMB_COLS) {
        float acc[EMB_COLS];
#pragma unroll
        for (int k = 0; k < EMB_COLS; k++) {
            int64_t c = c0 + threadIdx.x + (int64_t)k * blockDim.x;
            acc[k] = c < C ? row[c] : 0.0f;
        }
        for (int64_t j0 = m; j0 < M; j0 += blockDim.x) {
            const int64_t j = j0 + threadIdx.x;
            const bool hit = j < M && ids[j] == id;
            const unsigned bal = __ballot_sync(0xffffffffu, hit);
            __syncthreads(); /* the previous chunk's list is read */
            if (lane == 0)
                warp_hits[w] = __popc(bal);
            __syncthreads();
            int base = 0, total = 0;
            for (int k = 0; k < nw; k++) {
                base += k < w ? warp_hits[k] : 0;
                total += warp_hits[k];
            }
            if (hit)
                hits[base + __popc(bal & ((1u << lane) - 1u))] = (int32_t)threadIdx.x;
            __syncthreads();
            for (int t = 0; t < total; t++) {
                const int64_t g = (j0 + hits[t]) * C;
#pragma unroll
                for (int k = 0; k < EMB_COLS; k++) {
                    int64_t c = c0 + threadIdx.x + (int64_t)k * blockDim.x;
                    if (c < C)
                        acc[k] += lda<S>(dout, g + c);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < EMB_COLS; k++) {
            int64_t c = c0 + threadIdx.x + (int64_t)k * blockDim.x;
            if (c < C)
                row[c] = acc[k];
        }
    }
}

template <int S>
__global__ void posadd_fwd_k(const void *x, const void *pos, void *y, int64_t B, int64_t TC, int rm)
{
    GRID_STRIDE(i, B * TC) sta<S>(y, i, lda<S>(x, i) + lda<S>(pos, i % TC), rm);
}

/* dpos[t, c] += sum over b of dy[b, t, c], adding b in increasing order (the CPU's). */
template <int S> __global__ void posadd_bwd_k(const void *dy, float *dpos, int64_t B, int64_t TC)
{
    GRID_STRIDE(i, TC)
    {
        float acc = dpos[i];
        for (int64_t bb = 0; bb < B; bb++)
            acc += lda<S>(dy, bb * TC + i);
        dpos[i] = acc;
    }
}

extern "C" ds_status ds_cuda_embedding_fwd(ds_backend *b, const int32_t *ids, const float *table,
                                           float *out, int64_t M, int64_t C)
{
    if (M <= 0 || C <= 0)
        return DS_OK;
    dim3 grid((unsigned)((C + THREADS - 1) / THREADS), (unsigned)(M < 65535 ? M : 65535));
    LAUNCH_S(embedding_fwd_k, grid, THREADS, 0, ids, table, out, M, C, RMODE(b));
    return DS_OK;
}

extern "C" ds_status ds_cuda_embedding_bwd(ds_backend *b, const int32_t *ids, const float *dout,
                                           float *dtable, int64_t M, int64_t C)
{
    if (M <= 0 || C <= 0)
        return DS_OK;
    if (M > 2147483647LL)
        return ds_cuda_error(b, DS_ERR_UNSUPPORTED, "embedding_bwd: %lld positions is too many",
                             (long long)M);
    LAUNCH_S(embedding_bwd_k, (unsigned)M, THREADS, 0, ids, dout, dtable, M, C);
    return DS_OK;
}

extern "C" ds_status ds_cuda_posadd_fwd(ds_backend *b, const float *x, const float *pos, float *y,
                                        int64_t B, int64_t T, int64_t C)
{
    if (B * T * C <= 0)
        return DS_OK;
    LAUNCH_S(posadd_fwd_k, grid_for(b, B * T * C, THREADS), THREADS, 0, x, pos, y, B, T * C, RMODE(b));
    return DS_OK;
}

extern "C" ds_status ds_cuda_posadd_bwd(ds_backend *b, const float *dy, float *dpos, int64_t B,
                                        int64_t T, int64_t C)
{
    if (T * C <= 0)
        return DS_OK;
    LAUNCH_S(posadd_bwd_k, grid_for(b, T * C, THREADS), THREADS, 0, dy, dpos, B, T * C);
    return DS_OK;
}
