/* A rank program for tests/launch-dist.sh: joins the job through the rendezvous that
 * ds-launch's environment describes (DS_JOB_SECRET included), all-reduces its rank + 1 and
 * prints the sum. Exit 0 when the sum is right; 1 with the library's message otherwise. */
#include <stdio.h>
#include <stdlib.h>

#include <ds/ds.h>

int main(void)
{
    ds_store_options opt;
    ds_error err = {0};
    ds_store *store = NULL;
    ds_comm *comm = NULL;
    if (ds_store_options_from_env(&opt, &err) != DS_OK) {
        fprintf(stderr, "dist_probe: %s\n", err.msg);
        return 1;
    }
    const char *t = getenv("DS_PROBE_TIMEOUT");
    opt.timeout_s = t ? atof(t) : 20;
    if (ds_store_open(&store, &opt, &err) != DS_OK ||
        ds_comm_cpu_create(&comm, store, opt.timeout_s, &err) != DS_OK) {
        fprintf(stderr, "dist_probe: %s\n", err.msg);
        ds_store_close(store);
        return 1;
    }
    float x[3] = {(float)(opt.rank + 1), 1, (float)opt.rank};
    int n = opt.world_size, bad = 0;
    if (ds_comm_all_reduce(comm, x, 3, DS_REDUCE_SUM, &err) != DS_OK ||
        ds_comm_barrier(comm, &err) != DS_OK) {
        fprintf(stderr, "dist_probe: %s\n", err.msg);
        bad = 1;
    } else if (x[0] != n * (n + 1) / 2 || x[1] != n || x[2] != n * (n - 1) / 2) {
        fprintf(stderr, "dist_probe: rank %d: wrong sums %g %g %g\n", opt.rank, x[0], x[1], x[2]);
        bad = 1;
    } else {
        printf("rank %d of %d: sum %g\n", opt.rank, n, x[0]);
    }
    ds_comm_destroy(comm);
    ds_store_close(store);
    return bad;
}
