/* Shared test helpers: fixture paths, safetensors fixture access, array comparison that
 * reports the worst element. Header-only; each test program includes it once. */
#ifndef DS_TESTUTIL_H
#define DS_TESTUTIL_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ds/ds.h"

#ifndef DS_TEST_DIR
#define DS_TEST_DIR "tests"
#endif

/* A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous store). */
static inline int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static inline char *test_path(const char *rel)
{
    static char buf[4][1024]; /* a few paths alive at once in one test */
    static int next;
    char *b = buf[next++ % 4];
    const char *dir = getenv("DS_TEST_DIR"); /* at run time (another copy of the tree), else the build's */
    snprintf(b, sizeof buf[0], "%s/%s", dir && *dir ? dir : DS_TEST_DIR, rel);
    return b;
}

static inline const float *fx_f32(const ds_safetensors *st, const char *name, int64_t *numel)
{
    const ds_st_tensor *t = ds_st_find(st, name);
    cr_assert(t != NULL, "fixture has no tensor %s", name);
    cr_assert(t->dtype == DS_F32, "fixture tensor %s is not F32", name);
    if (numel)
        *numel = (int64_t)((t->end - t->begin) / 4);
    /* the data section may be unaligned: copy */
    float *copy = malloc(t->end - t->begin + 4);
    memcpy(copy, ds_st_data(st, t), t->end - t->begin);
    return copy;
}

static inline const int32_t *fx_i32(const ds_safetensors *st, const char *name)
{
    const ds_st_tensor *t = ds_st_find(st, name);
    cr_assert(t != NULL, "fixture has no tensor %s", name);
    cr_assert(t->dtype == DS_I32, "fixture tensor %s is not I32", name);
    int32_t *copy = malloc(t->end - t->begin + 4);
    memcpy(copy, ds_st_data(st, t), t->end - t->begin);
    return copy;
}

/* |a - b| <= atol + rtol * |b| for every element; on failure name the worst one. */
static inline void expect_close(const char *what, const float *a, const float *b, int64_t n,
                                double atol, double rtol)
{
    int64_t worst = -1;
    double worst_excess = 0, worst_diff = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double lim = atol + rtol * fabs((double)b[i]);
        if (!(d <= lim) && (worst < 0 || d - lim > worst_excess)) {
            worst = i;
            worst_excess = d - lim;
            worst_diff = d;
        }
    }
    cr_expect(worst < 0, "%s: element %lld differs: got %.9g, expected %.9g (|diff| %.3g > %.3g + %.3g*|ref|)",
              what, (long long)worst, worst < 0 ? 0.0 : a[worst], worst < 0 ? 0.0 : b[worst], worst_diff,
              atol, rtol);
}

static inline double max_abs_diff(const float *a, const float *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

#endif
