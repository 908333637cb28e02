/* All-reduce bandwidth of the CPU communicator, a rank program run under ds-launch (built on
 * request: `make tests/bench_comm`; scripts/bench-comm.sh runs it with 2 and 4 ranks):
 *
 *   ds-launch --num_gpus 4 --export OMP_NUM_THREADS=1 tests/bench_comm [MAX_MIB [REPS]]
 *
 * Every rank joins the job through the rendezvous of ds-launch's environment, then for buffers
 * of 1, 4, 16, 64 and 256 MiB of floats (powers of 4 up to MAX_MIB, default 256) times
 * ds_comm_all_reduce(SUM): a warm-up call, then the median of REPS timed calls (default 7;
 * fewer for the big sizes), each started after a barrier and ended when the slowest rank is
 * done (the max over ranks of its time, as nccl-tests reports). Rank 0 also times a memcpy of
 * the same size in the same run (median of 11 copies). Rank 0 prints one line per size: bytes, median ms, algorithm
 * bandwidth (bytes / time), bus bandwidth (algbw * 2 (W-1) / W, NCCL's definition for
 * all-reduce) and memcpy GB/s (bytes copied / time; 1 GB = 1e9 bytes). Exit 0 when all
 * results are right (each element of the sum is checked against its known value). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ds/ds.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Rank r's element i: small integers so every float sum is exact. */
static float value(int rank, size_t i) { return (float)((i + (size_t)rank) % 16); }

int main(int argc, char **argv)
{
    long max_mib = argc > 1 ? atol(argv[1]) : 256;
    int base_reps = argc > 2 ? atoi(argv[2]) : 7;
    if (max_mib < 1 || base_reps < 1) {
        fprintf(stderr, "usage: bench_comm [MAX_MIB [REPS]] (run under ds-launch)\n");
        return 2;
    }
    ds_store_options opt;
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    if (ds_store_options_from_env(&opt, &err) != DS_OK) {
        fprintf(stderr, "bench_comm: %s\n", err.msg);
        return 1;
    }
    opt.timeout_s = 120;
    if (ds_store_open(&store, &opt, &err) != DS_OK ||
        ds_comm_cpu_create(&comm, store, 600, &err) != DS_OK) {
        fprintf(stderr, "bench_comm: %s\n", err.msg);
        ds_store_close(store);
        return 1;
    }
    int rank = opt.rank, W = opt.world_size, bad = 0;
    size_t max_count = (size_t)max_mib * (1u << 20) / sizeof(float);
    float *buf = malloc(max_count * sizeof(float));
    float *src = rank == 0 ? malloc(max_count * sizeof(float)) : NULL;
    float *dst = rank == 0 ? malloc(max_count * sizeof(float)) : NULL;
    if (!buf || (rank == 0 && (!src || !dst))) {
        fprintf(stderr, "bench_comm: rank %d: out of memory for %ld MiB buffers\n", rank, max_mib);
        return 1;
    }
    if (rank == 0) {
        memset(src, 1, max_count * sizeof(float));
        memset(dst, 0, max_count * sizeof(float));
        printf("bench_comm: CPU communicator (%s), %d ranks, all-reduce SUM of float32; "
               "time = median over reps of the slowest rank; busbw = algbw * 2(W-1)/W; "
               "1 GB = 1e9 B\n",
               ds_comm_describe(comm), W);
        printf("%12s %5s %10s %11s %11s %13s\n", "bytes", "reps", "time_ms", "algbw_GB/s",
               "busbw_GB/s", "memcpy_GB/s");
        fflush(stdout);
    }
    for (long mib = 1; mib <= max_mib; mib *= 4) {
        size_t count = (size_t)mib * (1u << 20) / sizeof(float);
        size_t bytes = count * sizeof(float);
        int reps = mib >= 256 ? (base_reps + 2) / 3 : mib >= 64 ? (base_reps + 1) / 2 : base_reps;
        if (reps < 3) reps = 3;
        double *t = calloc((size_t)reps, sizeof *t);
        enum { MEMCPY_REPS = 11 };
        double *tm = calloc(MEMCPY_REPS, sizeof *tm);
        for (int r = -1; r < reps && !bad; r++) { /* r = -1: warm-up */
            for (size_t i = 0; i < count; i++) buf[i] = value(rank, i);
            if (ds_comm_barrier(comm, &err) != DS_OK) { bad = 1; break; }
            double t0 = now_s();
            if (ds_comm_all_reduce(comm, buf, count, DS_REDUCE_SUM, &err) != DS_OK) {
                bad = 1;
                break;
            }
            float red[2] = {(float)(now_s() - t0), 0}; /* time, wrong result */
            if (r == -1) {
                for (size_t i = 0; i < count; i++) {
                    float want = 0;
                    for (int k = 0; k < W; k++) want += value(k, i);
                    if (buf[i] != want) {
                        fprintf(stderr, "bench_comm: rank %d: %ld MiB: element %zu is %g, want %g\n",
                                rank, mib, i, buf[i], want);
                        red[1] = 1;
                        break;
                    }
                }
            }
            /* the slowest rank's time; a wrong result on any rank stops every rank */
            if (ds_comm_all_reduce(comm, red, 2, DS_REDUCE_MAX, &err) != DS_OK) {
                bad = 1;
                break;
            }
            if (red[1] != 0) { bad = 2; break; }
            if (r >= 0) t[r] = red[0];
        }
        if (rank == 0 && !bad) {
            /* memcpy, same size, same run: one warm-up, then MEMCPY_REPS timed copies */
            memcpy(dst, src, bytes);
            for (int r = 0; r < MEMCPY_REPS; r++) {
                double t0 = now_s();
                memcpy(dst, src, bytes);
                tm[r] = now_s() - t0;
                src[r % count] += dst[(r * 7919) % count]; /* keep the copies observable */
            }
            double med = median(t, reps), medm = median(tm, MEMCPY_REPS);
            double algbw = (double)bytes / med / 1e9;
            double busbw = algbw * 2.0 * (W - 1) / W;
            printf("%12zu %5d %10.3f %11.3f %11.3f %13.3f\n", bytes, reps, med * 1e3, algbw, busbw,
                   (double)bytes / medm / 1e9);
            fflush(stdout);
        }
        free(t);
        free(tm);
        if (bad) break;
    }
    if (bad == 1) fprintf(stderr, "bench_comm: rank %d: %s\n", rank, err.msg);
    free(buf);
    free(src);
    free(dst);
    ds_comm_destroy(comm);
    ds_store_close(store);
    return bad ? 1 : 0;
}
