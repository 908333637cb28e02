/* bench_ckpt: checkpoint save and load throughput (ds_engine_save_checkpoint /
 * ds_engine_load_checkpoint, AdamW state, one process) beside a plain sequential write (+ fsync)
 * and read of the same number of bytes in the same directory, in the same run. Save counts
 * every byte of the tag (model states + fp32/exp_avg/exp_avg_sq partition + manifest); load
 * includes the SHA-256 of every file it reads. scripts/bench-ckpt.sh runs it.
 * Usage: bench_ckpt DIR [MILLIONS_OF_PARAMS (8)] [REPS (3)] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ds/ds.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long long tag_bytes(const char *dir, const char *tag)
{
    ds_ckpt *c;
    ds_error err = {0};
    if (ds_ckpt_open(&c, dir, tag, &err) != DS_OK) {
        fprintf(stderr, "bench_ckpt: %s\n", err.msg);
        exit(1);
    }
    long long b = 0;
    for (int i = 0; i < c->n_files; i++)
        b += c->files[i].bytes;
    ds_ckpt_close(c);
    return b;
}

#define CH (4u << 20)

static double plain_write(const char *path, long long bytes, char *buf)
{
    double t0 = now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (long long off = 0; off < bytes; off += CH) {
        size_t n = bytes - off < CH ? (size_t)(bytes - off) : CH;
        if (fd < 0 || write(fd, buf, n) != (ssize_t)n) {
            perror(path);
            exit(1);
        }
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        perror(path);
        exit(1);
    }
    return now() - t0;
}

static double plain_read(const char *path, char *buf)
{
    double t0 = now();
    int fd = open(path, O_RDONLY);
    ssize_t n;
    unsigned sum = 0;
    while ((n = read(fd, buf, CH)) > 0)
        sum += (unsigned char)buf[n - 1];
    close(fd);
    if (n < 0) {
        perror(path);
        exit(1);
    }
    (void)sum;
    return now() - t0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_ckpt DIR [MILLIONS_OF_PARAMS] [REPS]\n");
        return 2;
    }
    const char *dir = argv[1];
    double millions = argc > 2 ? atof(argv[2]) : 8;
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    if (reps < 1 || !(millions > 0)) {
        fprintf(stderr, "bench_ckpt: expected millions of parameters > 0 and reps >= 1\n");
        return 2;
    }
    int hidden = (int)(millions * 1048576.0 / 1024.0);
    char net[512], cfg[256];
    snprintf(net, sizeof net, "{\"input\": {\"type\": \"features\", \"dim\": 1024}, \"layers\": [{\"type\": \"linear\", "
             "\"name\": \"fc1\", \"out\": %d}, {\"type\": \"linear\", \"name\": \"fc2\", \"out\": 10}], "
             "\"loss\": {\"type\": \"cross_entropy\"}}", hidden);
    snprintf(cfg, sizeof cfg, "{\"train_batch_size\": 1, \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.001}}}");
    ds_engine_options o = {.config_json = cfg, .config_name = "bench.json", .net_json = net, .net_name = "bench-net.json"};
    ds_engine *e;
    ds_error err = {0};
    if (ds_initialize(&e, &o, &err) != DS_OK) {
        fprintf(stderr, "bench_ckpt: %s\n", err.msg);
        return 1;
    }
    double *ts = calloc((size_t)reps * 4, sizeof *ts);
    char *buf = malloc(CH), plain[4200];
    memset(buf, 0x5a, CH);
    snprintf(plain, sizeof plain, "%s/plain.bin", dir);
    long long bytes = 0;
    for (int r = 0; r < reps; r++) {
        char tag[32], path[4200];
        snprintf(tag, sizeof tag, "bench%d", r);
        double t0 = now();
        if (ds_engine_save_checkpoint(e, dir, tag, NULL, &err) != DS_OK) {
            fprintf(stderr, "bench_ckpt: %s\n", err.msg);
            return 1;
        }
        ts[r] = now() - t0;
        bytes = tag_bytes(dir, tag);
        t0 = now();
        if (ds_engine_load_checkpoint(e, dir, tag, NULL, &err) != DS_OK) {
            fprintf(stderr, "bench_ckpt: %s\n", err.msg);
            return 1;
        }
        ts[reps + r] = now() - t0;
        ts[2 * reps + r] = plain_write(plain, bytes, buf);
        ts[3 * reps + r] = plain_read(plain, buf);
        unlink(plain);
        snprintf(path, sizeof path, "rm -rf '%s/%s'", dir, tag);
        if (system(path) != 0)
            return 1;
    }
    const char *names[4] = {"checkpoint save", "checkpoint load (+SHA-256)", "plain write + fsync", "plain read"};
    double med[4];
    for (int k = 0; k < 4; k++) {
        qsort(ts + k * reps, (size_t)reps, sizeof *ts, cmp);
        const double *v = ts + k * reps; /* the median (the middle two's mean for an even count) */
        med[k] = reps % 2 ? v[reps / 2] : 0.5 * (v[reps / 2 - 1] + v[reps / 2]);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%lld parameters, AdamW; %.1f MB per checkpoint; median of %d; peak RSS %.0f MiB\n",
           (long long)ds_engine_net(e)->total_params, bytes / 1e6, reps, ru.ru_maxrss / 1024.0);
    printf("%-28s %10s %10s %8s\n", "", "s", "MB/s", "ratio");
    for (int k = 0; k < 4; k++)
        printf("%-28s %10.3f %10.1f %8.2f\n", names[k], med[k], bytes / 1e6 / med[k],
               k < 2 ? med[k + 2] / med[k] : 1.0);
    free(ts);
    free(buf);
    ds_engine_destroy(e);
    return 0;
}
