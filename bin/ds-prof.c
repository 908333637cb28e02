/* ds-prof: read the run database that ds-train --prof_db writes (schema in ds-prof(1)):
 * report (the wall-clock breakdown), compare (two runs side by side), export (CSV or JSON) and
 * plot (an SVG of the step-time breakdown and the loss curve). Opening and checking the file is
 * libds's (ds_rundb_open_read); the queries and the printing are here.
 * Exit status: 0 done, 1 failed writing, 2 bad input or usage. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ds/ds.h"

static const char *usage_text =
    "usage: ds-prof report RUN.db [--skip N] [--rank R]\n"
    "       ds-prof compare A.db B.db [--skip N]\n"
    "       ds-prof export RUN.db [--format csv|json] [--table step|collective|rank|run] [-o FILE] [--force]\n"
    "       ds-prof plot RUN.db -o OUT.svg [--rank R] [--skip N] [--force]\n"
    "\n"
    "Read a run database written by ds-train --prof_db (one SQLite file per job).\n"
    "\n"
    "  report    mean, median and p90 ms per timer, share of the iteration, compute against\n"
    "            communication, the slowest rank, throughput and MFU, loss and memory\n"
    "  compare   the medians of two runs side by side, with the ratio B/A\n"
    "  export    a table as CSV (default: the step table), or as JSON with --table, or the whole\n"
    "            run as JSON (stdout)\n"
    "  plot      an SVG: the step-time breakdown over the steps, and the loss curve\n"
    "\n"
    "  --skip N        leave out the first N optimizer steps (warm-up; default 0)\n"
    "  --rank R        only rank R (report: default all ranks; plot: default the mean over ranks)\n"
    "  --format F      csv or json (export; default csv)\n"
    "  --table T       step, collective, rank or run (export)\n"
    "  -o, --output F  write to F (plot: required); an existing F is kept unless --force\n"
    "  --force         overwrite the output file (export, plot)\n"
    "Options take their value as --opt V or --opt=V; one a command does not use is an error.\n"
    "  -h, --help      this text;  --version  the version\n";

typedef struct opts {
    const char *cmd, *db[2], *format, *table, *output;
    int ndb, rank, force;
    int64_t skip;
} opts;

static int usage_error(const char *fmt, const char *a)
{
    fprintf(stderr, "ds-prof: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n(see ds-prof --help)\n");
    return 2;
}

static int parse_int(const char *flag, const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < 0) {
        fprintf(stderr, "ds-prof: %s: expected an integer >= 0, found \"%s\"\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->rank = -1;
    int skip_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t v;
        char name[32];
        const char *eq = s[0] == '-' && s[1] == '-' ? strchr(s, '=') : NULL;
        if (eq) { /* --opt=value */
            if ((size_t)(eq - s) >= sizeof name)
                return usage_error("unknown option %s", s);
            memcpy(name, s, (size_t)(eq - s));
            name[eq - s] = 0;
            s = name;
            if (strcmp(s, "--skip") && strcmp(s, "--rank") && strcmp(s, "--format") && strcmp(s, "--table") &&
                strcmp(s, "--output"))
                return usage_error(!strcmp(s, "--force") || !strcmp(s, "--help") || !strcmp(s, "--version")
                                       ? "option %s takes no value" : "unknown option %s", s);
        }
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(s, "--version")) {
            printf("ds-prof (ds) %s\n", DS_VERSION);
            return 0;
        } else if (!strcmp(s, "--force")) {
            o->force = 1;
        } else if (!strcmp(s, "--skip") || !strcmp(s, "--rank") || !strcmp(s, "--format") ||
                   !strcmp(s, "--table") || !strcmp(s, "-o") || !strcmp(s, "--output")) {
            if (eq)
                val = eq + 1;
            else if (!val)
                return usage_error("option %s needs a value", s);
            else
                i++;
            if (!strcmp(s, "--skip")) {
                skip_given = 1;
                if (parse_int(s, val, &o->skip))
                    return 2;
            } else if (!strcmp(s, "--rank")) {
                if (parse_int(s, val, &v))
                    return 2;
                if (v > INT_MAX) /* (ranks are ints: a larger number would wrap to another) */
                    return usage_error("--rank: expected an integer from 0 to 2147483647, found \"%s\"", val);
                o->rank = (int)v;
            } else if (!strcmp(s, "--format")) {
                if (strcmp(val, "csv") && strcmp(val, "json"))
                    return usage_error("--format: expected csv or json, found \"%s\"", val);
                o->format = val;
            } else if (!strcmp(s, "--table")) {
                if (strcmp(val, "step") && strcmp(val, "collective") && strcmp(val, "rank") && strcmp(val, "run"))
                    return usage_error("--table: expected step, collective, rank or run, found \"%s\"", val);
                o->table = val;
            } else {
                o->output = val;
            }
        } else if (s[0] == '-' && s[1]) {
            return usage_error("unknown option %s", s);
        } else if (!o->cmd) {
            o->cmd = s;
        } else if (o->ndb < 2) {
            o->db[o->ndb++] = s;
        } else {
            return usage_error("unexpected argument \"%s\"", s);
        }
    }
    if (!o->cmd)
        return usage_error("%sno command given (report, compare, export or plot)", "");
    int want = !strcmp(o->cmd, "compare") ? 2 : 1;
    if (strcmp(o->cmd, "report") && strcmp(o->cmd, "compare") && strcmp(o->cmd, "export") && strcmp(o->cmd, "plot"))
        return usage_error("unknown command \"%s\" (expected report, compare, export or plot)", o->cmd);
    if (o->ndb != want)
        return usage_error(want == 2 ? "%scompare needs two run databases" : "%sexpected one run database", "");
    if (!strcmp(o->cmd, "plot") && !o->output)
        return usage_error("%splot needs -o OUT.svg", "");
    if ((o->format || o->table) && strcmp(o->cmd, "export"))
        return usage_error("--format and --table are for export, not %s", o->cmd);
    if (o->output && strcmp(o->cmd, "export") && strcmp(o->cmd, "plot"))
        return usage_error("-o is for export and plot, not %s", o->cmd);
    if (o->force && strcmp(o->cmd, "export") && strcmp(o->cmd, "plot"))
        return usage_error("--force is for export and plot, not %s", o->cmd);
    if (o->rank >= 0 && strcmp(o->cmd, "report") && strcmp(o->cmd, "plot"))
        return usage_error("--rank is for report and plot, not %s", o->cmd);
    if (skip_given && !strcmp(o->cmd, "export"))
        return usage_error("--skip is for report, compare and plot, not %s", o->cmd);
    if (!o->format)
        o->format = "csv";
    return -1;
}

/* ---- queries ---------------------------------------------------------------------------- */

typedef struct vec {
    double *v;
    int n;
} vec;

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* The non-NULL values of the first column of sql (with ?1 = skip, ?2 = rank or -1). */
static int load(sqlite3 *db, const char *path, const char *sql, int64_t skip, int rank, vec *out)
{
    sqlite3_stmt *s = NULL;
    out->v = NULL;
    out->n = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        fprintf(stderr, "ds-prof: %s: %s\n", path, sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(s, 1, skip);
    sqlite3_bind_int(s, 2, rank);
    int cap = 0, rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_NULL)
            continue;
        if (out->n == cap) {
            cap = cap ? 2 * cap : 256;
            double *p = realloc(out->v, (size_t)cap * sizeof *p);
            if (!p) {
                sqlite3_finalize(s);
                fprintf(stderr, "ds-prof: out of memory\n");
                return -1;
            }
            out->v = p;
        }
        out->v[out->n++] = sqlite3_column_double(s, 0);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "ds-prof: %s: %s\n", path, sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

static double mean(const vec *x)
{
    double s = 0;
    for (int i = 0; i < x->n; i++)
        s += x->v[i];
    return x->n ? s / x->n : NAN;
}

/* Percentile p (0..100) with linear interpolation between order statistics (numpy's default):
 * the median of an even count is the mean of the two middle values. */
static double percentile(const vec *x, double p)
{
    if (!x->n)
        return NAN;
    double *c = malloc((size_t)x->n * sizeof *c);
    if (!c)
        return NAN;
    memcpy(c, x->v, (size_t)x->n * sizeof *c);
    qsort(c, (size_t)x->n, sizeof *c, cmp_double);
    double pos = p / 100.0 * (x->n - 1);
    int lo = (int)floor(pos), hi = lo + 1 < x->n ? lo + 1 : lo;
    double r = c[lo] + (pos - lo) * (c[hi] - c[lo]);
    free(c);
    return r;
}

/* One value of a one-row query (?1 skip, ?2 rank); NAN when NULL or no row. */
static double scalar(sqlite3 *db, const char *sql, int64_t skip, int rank)
{
    sqlite3_stmt *s = NULL;
    double r = NAN;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, skip);
        sqlite3_bind_int(s, 2, rank);
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
            r = sqlite3_column_double(s, 0);
    }
    sqlite3_finalize(s);
    return r;
}

#define WHERE " WHERE step > ?1 AND (?2 < 0 OR rank = ?2)"

/* The text of a one-value query bound like scalar's (?1 skip, ?2 rank, where it has them), or
 * NULL. */
static char *scalar_text(sqlite3 *db, const char *sql, int64_t skip, int rank)
{
    sqlite3_stmt *s = NULL;
    char *r = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_bind_parameter_count(s) >= 2) {
            sqlite3_bind_int64(s, 1, skip);
            sqlite3_bind_int(s, 2, rank);
        }
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
            r = strdup((const char *)sqlite3_column_text(s, 0));
    }
    sqlite3_finalize(s);
    return r;
}

/* The text of an unbound one-value query, "?" when there is none. */
static char *text(sqlite3 *db, const char *sql)
{
    char *r = scalar_text(db, sql, 0, -1);
    return r ? r : strdup("?");
}

/* The timer columns in report order; the indent shows bwd's parts. */
static const struct {
    const char *label, *column;
} TIMERS[] = {
    {"fwd", "fwd_ms"},           {"bwd", "bwd_ms"},   {"  bwd_inner", "bwd_inner_ms"},
    {"  bwd_allreduce", "bwd_allreduce_ms"}, {"step", "step_ms"},
    {"fwd+bwd+step", "fwd_ms + bwd_ms + step_ms"}, {"iteration", "iter_ms"},
    {"other (data, client)", "iter_ms - (fwd_ms + bwd_ms + step_ms)"},
};
#define N_TIMERS (int)(sizeof TIMERS / sizeof TIMERS[0])

typedef struct summary {
    vec col[N_TIMERS];
    int64_t steps, ranks;
    double tokens_per_step, flops_per_rank_step, peak;
    int world;
} summary;

static int summarize(sqlite3 *db, const char *path, int64_t skip, int rank, summary *sm)
{
    memset(sm, 0, sizeof *sm);
    char sql[256];
    for (int i = 0; i < N_TIMERS; i++) {
        snprintf(sql, sizeof sql, "SELECT %s FROM step" WHERE " ORDER BY rank, step", TIMERS[i].column);
        if (load(db, path, sql, skip, rank, &sm->col[i]))
            return -1;
    }
    sm->steps = (int64_t)scalar(db, "SELECT count(DISTINCT step) FROM step" WHERE, skip, rank);
    sm->ranks = (int64_t)scalar(db, "SELECT count(DISTINCT rank) FROM step" WHERE, skip, rank);
    sm->world = (int)scalar(db, "SELECT world_size FROM run", 0, -1);
    sm->tokens_per_step = scalar(db, "SELECT train_batch_size * positions FROM run", 0, -1);
    sm->flops_per_rank_step = 3.0 * scalar(db, "SELECT flops_per_sample * train_batch_size FROM run", 0, -1) /
                              (sm->world > 0 ? sm->world : 1);
    sm->peak = scalar(db, "SELECT peak_tflops FROM run", 0, -1);
    return 0;
}

static void free_summary(summary *sm)
{
    for (int i = 0; i < N_TIMERS; i++)
        free(sm->col[i].v);
}

static void print_bytes(double b)
{
    if (b >= 1e9)
        printf("%.2f GB", b / 1e9);
    else if (b >= 1e6)
        printf("%.2f MB", b / 1e6);
    else if (b >= 1e3)
        printf("%.1f KB", b / 1e3);
    else
        printf("%.0f B", b);
}

static int report(sqlite3 *db, const opts *o)
{
    const char *path = o->db[0];
    summary sm;
    if (summarize(db, path, o->skip, o->rank, &sm))
        return 2;
    char *net = text(db, "SELECT net_path FROM run"), *backend = text(db, "SELECT backend FROM run");
    char *started = text(db, "SELECT started_at FROM run"), *status = text(db, "SELECT status FROM run");
    char *hosts = text(db, "SELECT group_concat(DISTINCT hostname) FROM rank");
    printf("%s: %s, %.0f parameters, backend %s\n", path, net, scalar(db, "SELECT total_params FROM run", 0, -1),
           backend);
    printf("batch %.0f = micro %.0f x accumulation %.0f x ranks %d; started %s, %s; hosts %s\n",
           scalar(db, "SELECT train_batch_size FROM run", 0, -1), scalar(db, "SELECT micro_batch FROM run", 0, -1),
           scalar(db, "SELECT grad_accum FROM run", 0, -1), sm.world, started, status, hosts);
    free(net);
    free(backend);
    free(started);
    free(status);
    free(hosts);
    if (sm.col[6].n == 0) {
        printf("no steps recorded%s\n", o->skip ? " after --skip" : "");
        free_summary(&sm);
        return 0;
    }
    char who[32] = "all ranks";
    if (o->rank >= 0)
        snprintf(who, sizeof who, "rank %d", o->rank);
    printf("%lld steps x %lld rank%s (%s%s)\n\n", (long long)sm.steps, (long long)sm.ranks, sm.ranks == 1 ? "" : "s", who,
           o->skip ? ", after the skipped warm-up steps" : "");
    double iter_mean = mean(&sm.col[6]);
    printf("%-22s %10s %10s %10s %9s\n", "timer", "mean ms", "median ms", "p90 ms", "share");
    for (int i = 0; i < N_TIMERS; i++) {
        const vec *x = &sm.col[i];
        if (!x->n) {
            printf("%-22s %10s %10s %10s %9s\n", TIMERS[i].label, "-", "-", "-", "-");
            continue;
        }
        printf("%-22s %10.3f %10.3f %10.3f %8.1f%%\n", TIMERS[i].label, mean(x), percentile(x, 50), percentile(x, 90),
               100.0 * mean(x) / iter_mean);
    }
    /* compute against communication, over the engine's time (fwd + bwd + step) */
    double engine = mean(&sm.col[5]), comm = mean(&sm.col[3]);
    if (sm.col[5].n) {
        /* per rank and step: over the steps that have collectives; the gradient (and loss) calls
         * are bwd_allreduce's, ZeRO's parameter gathers after the update are part of step, and
         * ZeRO-3's layer weight gathers part of fwd and bwd */
#define PER_STEP " * 1.0 / NULLIF((SELECT count(DISTINCT rank || ':' || step) FROM collective" WHERE "), 0)"
#define GRAD WHERE " AND what NOT IN ('parameters', 'layer weights')"
#define PARAM WHERE " AND what = 'parameters'"
#define LAYER WHERE " AND what = 'layer weights'"
        double calls = scalar(db, "SELECT count(*)" PER_STEP " FROM collective" GRAD, o->skip, o->rank);
        double bytes = scalar(db, "SELECT sum(bytes)" PER_STEP " FROM collective" GRAD, o->skip, o->rank);
        double cms = scalar(db, "SELECT sum(ms)" PER_STEP " FROM collective" GRAD, o->skip, o->rank);
        printf("\ncompute %.1f%% (%.3f ms/step), communication %.1f%% (%.3f ms/step", 100.0 * (engine - comm) / engine,
               engine - comm, 100.0 * comm / engine, comm);
        if (!isnan(bytes) && bytes > 0) {
            printf("; ");
            print_bytes(bytes);
            /* per op, in the order of the step (reduce_scatter 1, all_reduce 1) */
            char *ops = scalar_text(db, "SELECT group_concat(op || ' ' || printf('%g', round(n, 2)), ', ') FROM (SELECT op, "
                                        "count(*)" PER_STEP " AS n FROM collective" GRAD " GROUP BY op ORDER BY min(seq), op)",
                                    o->skip, o->rank);
            printf("/step in %g collective calls (%s), %.3f ms in the calls, ", round(calls * 100) / 100, ops ? ops : "?",
                   cms);
            free(ops);
            print_bytes(cms > 0 ? bytes / (cms / 1e3) : 0);
            printf("/s)\n");
            if (cms > 1.5 * comm && cms > 0.1) /* ZeRO's buckets: reduced inside bwd, or beside it */
                printf("the gradient collectives took %.3f ms/step (%.1f%% of fwd+bwd+step): they run inside bwd as its "
                       "buckets fill (beside it with overlap_comm), so bwd_allreduce above is only the wait at its end\n",
                       cms, 100.0 * cms / engine);
            double pbytes = scalar(db, "SELECT sum(bytes)" PER_STEP " FROM collective" PARAM, o->skip, o->rank);
            if (!isnan(pbytes) && pbytes > 0) {
                double prows = scalar(db, "SELECT count(*)" PER_STEP " FROM collective" PARAM, o->skip, o->rank);
                double pms = scalar(db, "SELECT sum(ms)" PER_STEP " FROM collective" PARAM, o->skip, o->rank);
                char *pops = scalar_text(db, "SELECT group_concat(op, ', ') FROM (SELECT DISTINCT op FROM collective" PARAM ")",
                                         o->skip, o->rank);
                printf("ZeRO parameter gather after the update (part of step): ");
                print_bytes(pbytes);
                printf("/step in %g buckets by %s, %.3f ms, ", round(prows * 100) / 100, pops ? pops : "?", pms);
                free(pops);
                print_bytes(pms > 0 ? pbytes / (pms / 1e3) : 0);
                printf("/s\n");
            }
            double lbytes = scalar(db, "SELECT sum(bytes)" PER_STEP " FROM collective" LAYER, o->skip, o->rank);
            if (!isnan(lbytes) && lbytes > 0) {
                double lrows = scalar(db, "SELECT count(*)" PER_STEP " FROM collective" LAYER, o->skip, o->rank);
                double lms = scalar(db, "SELECT sum(ms)" PER_STEP " FROM collective" LAYER, o->skip, o->rank);
                printf("ZeRO-3 layer weight gathers (part of fwd and bwd): ");
                print_bytes(lbytes);
                printf("/step in %g all_gather calls, %.3f ms, ", round(lrows * 100) / 100, lms);
                print_bytes(lms > 0 ? lbytes / (lms / 1e3) : 0);
                printf("/s\n");
            }
#undef PER_STEP
#undef GRAD
#undef PARAM
#undef LAYER
        } else {
            printf("; no collectives: one process)\n");
        }
    }
    /* the slowest rank: by median iteration */
    if (o->rank < 0 && sm.ranks > 1) {
        int slow = -1, fast = -1;
        double slow_ms = -1, fast_ms = INFINITY;
        vec ranks; /* the ranks that recorded steps, not 0..world_size-1 */
        if (load(db, path, "SELECT DISTINCT rank FROM step" WHERE " ORDER BY rank", o->skip, -1, &ranks))
            ranks.n = 0;
        for (int i = 0; i < ranks.n; i++) {
            const int r = (int)ranks.v[i];
            vec x;
            if (load(db, path, "SELECT iter_ms FROM step" WHERE, o->skip, r, &x))
                break;
            if (x.n) {
                double m = percentile(&x, 50);
                if (m > slow_ms)
                    slow_ms = m, slow = r;
                if (m < fast_ms)
                    fast_ms = m, fast = r;
            }
            free(x.v);
        }
        free(ranks.v);
        if (slow >= 0)
            printf("slowest rank: %d (median iteration %.3f ms); fastest: rank %d (%.3f ms), %+.1f%%\n", slow, slow_ms,
                   fast, fast_ms, 100.0 * (slow_ms / fast_ms - 1));
    } else if (sm.ranks == 1) {
        printf("slowest rank: only one rank recorded\n");
    }
    double med_s = percentile(&sm.col[6], 50) / 1e3;
    int tokens = scalar(db, "SELECT positions FROM run", 0, -1) > 1;
    printf("throughput: %.0f %s/s at the median iteration, model %.4g TFLOP/s per rank", sm.tokens_per_step / med_s,
           tokens ? "tokens" : "samples", sm.flops_per_rank_step / med_s / 1e12);
    if (!isnan(sm.peak))
        printf(", MFU %.2f%% of %g TFLOP/s\n", 100.0 * sm.flops_per_rank_step / med_s / (sm.peak * 1e12), sm.peak);
    else
        printf(" (MFU: ds-train --peak_tflops was not given)\n");
    printf("loss %.4f (step %.0f) -> %.4f (step %.0f); loss scale %g; %.0f skipped steps\n",
           scalar(db, "SELECT loss FROM step" WHERE " ORDER BY step, rank LIMIT 1", o->skip, o->rank),
           scalar(db, "SELECT min(step) FROM step" WHERE, o->skip, o->rank),
           scalar(db, "SELECT loss FROM step" WHERE " ORDER BY step DESC, rank LIMIT 1", o->skip, o->rank),
           scalar(db, "SELECT max(step) FROM step" WHERE, o->skip, o->rank),
           scalar(db, "SELECT loss_scale FROM step" WHERE " ORDER BY step DESC, rank LIMIT 1", o->skip, o->rank),
           scalar(db, "SELECT count(DISTINCT step) FROM step" WHERE " AND skipped", o->skip, o->rank));
    printf("memory: peak RSS %.1f MiB (largest rank); engine: params %.2f MB, grads %.2f MB, optimizer %.2f MB, "
           "activations %.2f MB\n",
           scalar(db, "SELECT max(max_rss_bytes) FROM step" WHERE, o->skip, o->rank) / 1048576.0,
           scalar(db, "SELECT max(params_bytes) FROM rank", 0, -1) / 1e6,
           scalar(db, "SELECT max(grads_bytes) FROM rank", 0, -1) / 1e6,
           scalar(db, "SELECT max(optim_bytes) FROM rank", 0, -1) / 1e6,
           scalar(db, "SELECT max(activation_bytes) FROM rank", 0, -1) / 1e6);
    free_summary(&sm);
    return 0;
}

static void ratio(double a, double b)
{
    if (isnan(a) || isnan(b) || a == 0)
        printf(" %8s\n", "-");
    else
        printf(" %7.2fx\n", b / a);
}

static int compare(sqlite3 *da, sqlite3 *dbb, const opts *o)
{
    summary a, b;
    if (summarize(da, o->db[0], o->skip, -1, &a))
        return 2;
    if (summarize(dbb, o->db[1], o->skip, -1, &b)) {
        free_summary(&a);
        return 2;
    }
    printf("A: %s (%lld steps x %lld rank%s)\nB: %s (%lld steps x %lld rank%s)\n\n", o->db[0], (long long)a.steps,
           (long long)a.ranks, a.ranks == 1 ? "" : "s", o->db[1], (long long)b.steps, (long long)b.ranks,
           b.ranks == 1 ? "" : "s");
    printf("%-22s %12s %12s %8s\n", "median ms", "A", "B", "B/A");
    for (int i = 0; i < N_TIMERS; i++) {
        double x = percentile(&a.col[i], 50), y = percentile(&b.col[i], 50);
        printf("%-22s %12.3f %12.3f", TIMERS[i].label, x, y);
        ratio(x, y);
    }
    double ta = a.tokens_per_step / (percentile(&a.col[6], 50) / 1e3);
    double tb = b.tokens_per_step / (percentile(&b.col[6], 50) / 1e3);
    printf("%-22s %12.0f %12.0f", "tokens|samples/s", ta, tb);
    ratio(ta, tb);
    const char *last = "SELECT loss FROM step" WHERE " ORDER BY step DESC, rank LIMIT 1";
    double la = scalar(da, last, o->skip, -1), lb = scalar(dbb, last, o->skip, -1);
    printf("%-22s %12.4f %12.4f", "final loss", la, lb);
    ratio(la, lb);
    const char *bytes = "SELECT sum(bytes) * 1.0 / NULLIF(count(DISTINCT rank || ':' || step), 0) FROM collective" WHERE;
    double ba = scalar(da, bytes, o->skip, -1), bb = scalar(dbb, bytes, o->skip, -1);
    printf("%-22s %12.0f %12.0f", "collective bytes/step", isnan(ba) ? 0 : ba, isnan(bb) ? 0 : bb);
    ratio(isnan(ba) ? 0 : ba, isnan(bb) ? 0 : bb);
    free_summary(&a);
    free_summary(&b);
    return 0;
}

/* ---- export ----------------------------------------------------------------------------- */

/* The shortest of %.15g..%.17g that reads back as the same double (0.8, not 0.80000000000000004). */
static void put_real(FILE *f, double v)
{
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    fputs(buf, f);
}

static void csv_field(FILE *f, sqlite3_stmt *s, int i)
{
    switch (sqlite3_column_type(s, i)) {
    case SQLITE_NULL:
        return;
    case SQLITE_INTEGER:
        fprintf(f, "%lld", (long long)sqlite3_column_int64(s, i));
        return;
    case SQLITE_FLOAT:
        put_real(f, sqlite3_column_double(s, i));
        return;
    default: {
        const char *t = (const char *)sqlite3_column_text(s, i);
        if (!strpbrk(t, ",\"\n\r")) {
            fputs(t, f);
            return;
        }
        fputc('"', f);
        for (; *t; t++) {
            if (*t == '"')
                fputc('"', f);
            fputc(*t, f);
        }
        fputc('"', f);
    }
    }
}

static void json_string(FILE *f, const char *t)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)t; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p == '\t')
            fputs("\\t", f);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_field(FILE *f, sqlite3_stmt *s, int i)
{
    switch (sqlite3_column_type(s, i)) {
    case SQLITE_NULL:
        fputs("null", f);
        return;
    case SQLITE_INTEGER:
        fprintf(f, "%lld", (long long)sqlite3_column_int64(s, i));
        return;
    case SQLITE_FLOAT: {
        double v = sqlite3_column_double(s, i);
        if (isfinite(v))
            put_real(f, v);
        else
            fputs("null", f);
        return;
    }
    default:
        json_string(f, (const char *)sqlite3_column_text(s, i));
    }
}

static const char *table_sql(const char *table)
{
    if (!strcmp(table, "step"))
        return "SELECT * FROM step ORDER BY rank, step";
    if (!strcmp(table, "collective"))
        return "SELECT * FROM collective ORDER BY rank, step, seq";
    if (!strcmp(table, "rank"))
        return "SELECT * FROM rank ORDER BY rank";
    return "SELECT * FROM run";
}

/* One table: CSV with a header line, or a JSON array of objects (one object for "run"). */
static int export_table(FILE *f, sqlite3 *db, const char *path, const char *table, int json)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db, table_sql(table), -1, &s, NULL) != SQLITE_OK) {
        fprintf(stderr, "ds-prof: %s: %s\n", path, sqlite3_errmsg(db));
        return 2;
    }
    int nc = sqlite3_column_count(s), rows = 0, rc, one = !strcmp(table, "run");
    if (!json)
        for (int i = 0; i < nc; i++)
            fprintf(f, "%s%s", i ? "," : "", sqlite3_column_name(s, i));
    if (!json)
        fputc('\n', f);
    else if (!one)
        fputc('[', f);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (json) {
            fputs(rows ? ",\n {" : one ? "{" : "\n {", f);
            for (int i = 0; i < nc; i++) {
                fputs(i ? ", " : "", f);
                json_string(f, sqlite3_column_name(s, i));
                fputs(": ", f);
                json_field(f, s, i);
            }
            fputc('}', f);
        } else {
            for (int i = 0; i < nc; i++) {
                if (i)
                    fputc(',', f);
                csv_field(f, s, i);
            }
            fputc('\n', f);
        }
        rows++;
    }
    if (json && !one)
        fputs(rows ? "\n]" : "]", f);
    else if (json && !rows)
        fputs("null", f);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "ds-prof: %s: %s\n", path, sqlite3_errmsg(db));
        return 2;
    }
    return 0;
}

/* The output goes to a temporary name beside it (tmp, PATH_MAX bytes), renamed over it (dest:
 * the output, or a symbolic link's target) by close_output only when everything was written: a
 * failure leaves no half-written file and an existing one (--force) as it was. An output that
 * is one of the input databases, or not a regular file, is refused. */
static FILE *open_output(const opts *o, int *rc, char *tmp, char *dest)
{
    struct stat sb, db;
    *rc = 0;
    tmp[0] = 0;
    if (!o->output)
        return stdout;
    if (stat(o->output, &sb) == 0) {
        for (int i = 0; i < o->ndb; i++)
            if (stat(o->db[i], &db) == 0 && db.st_dev == sb.st_dev && db.st_ino == sb.st_ino) {
                fprintf(stderr, "ds-prof: %s: is the run database being read; write elsewhere\n", o->output);
                *rc = 2;
                return NULL;
            }
        if (!o->force) {
            fprintf(stderr, "ds-prof: %s: the file exists; not overwriting it (use --force)\n", o->output);
            *rc = 2;
            return NULL;
        }
        if (!S_ISREG(sb.st_mode)) { /* a device node, pipe or directory is never replaced */
            fprintf(stderr, "ds-prof: %s: %s; not replacing it\n", o->output,
                    S_ISDIR(sb.st_mode) ? "is a directory" : "is not a regular file (for standard output leave -o out)");
            *rc = 2;
            return NULL;
        }
    }
    /* a symbolic link: its target is what gets replaced, the link stays */
    char *target = realpath(o->output, NULL);
    snprintf(dest, PATH_MAX, "%s", target ? target : o->output);
    free(target);
    if (snprintf(tmp, PATH_MAX, "%s.tmp.%ld", dest, (long)getpid()) >= PATH_MAX) {
        fprintf(stderr, "ds-prof: %s: path too long\n", o->output);
        tmp[0] = 0;
        *rc = 2;
        return NULL;
    }
    FILE *f = fopen(tmp, "wx");
    if (!f) {
        fprintf(stderr, "ds-prof: %s: cannot create it (as %s first): %s\n", o->output, tmp, strerror(errno));
        tmp[0] = 0;
        *rc = 1;
    }
    return f;
}

static int close_output(const opts *o, FILE *f, int rc, const char *tmp, const char *dest)
{
    if (f == stdout) {
        if (fflush(stdout) != 0 && rc == 0) {
            fprintf(stderr, "ds-prof: standard output: %s\n", strerror(errno));
            return 1;
        }
        return rc;
    }
    if ((fflush(f) != 0 || fsync(fileno(f)) != 0) && rc == 0) {
        fprintf(stderr, "ds-prof: %s: %s\n", o->output, strerror(errno));
        rc = 1;
    }
    if (fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "ds-prof: %s: %s\n", o->output, strerror(errno));
        rc = 1;
    }
    if (rc == 0 && rename(tmp, dest) != 0) {
        fprintf(stderr, "ds-prof: %s: cannot rename %s to it: %s\n", o->output, tmp, strerror(errno));
        rc = 1;
    }
    if (rc != 0)
        unlink(tmp); /* nothing half-written; an existing output stays as it was */
    return rc;
}

static int export_run(sqlite3 *db, const opts *o)
{
    int json = !strcmp(o->format, "json"), rc;
    char tmp[PATH_MAX], dest[PATH_MAX];
    FILE *f = open_output(o, &rc, tmp, dest);
    if (!f)
        return rc;
    if (!json || o->table) {
        rc = export_table(f, db, o->db[0], o->table ? o->table : "step", json);
        if (json)
            fputc('\n', f);
    } else {
        static const char *const tables[] = {"run", "rank", "step", "collective"};
        fputs("{", f);
        for (int i = 0; i < 4 && rc == 0; i++) {
            fprintf(f, "%s\"%s\": ", i ? ",\n" : "", tables[i]);
            rc = export_table(f, db, o->db[0], tables[i], 1);
        }
        fputs("}\n", f);
    }
    return close_output(o, f, rc, tmp, dest);
}

/* ---- plot --------------------------------------------------------------------------------- */

/* Per step (mean over the chosen ranks): the engine's parts and the rest of the iteration. */
static const struct {
    const char *label, *column, *color;
} PARTS[] = {
    {"fwd", "fwd_ms", "#4e79a7"},
    {"bwd_inner", "bwd_inner_ms", "#f28e2b"},
    {"bwd_allreduce", "bwd_allreduce_ms", "#e15759"},
    {"step", "step_ms", "#76b7b2"},
    {"other", "max(iter_ms - (fwd_ms + bwd_ms + step_ms), 0)", "#bab0ac"},
};
#define N_PARTS 5

static double nice_ceil(double x)
{
    if (!(x > 0))
        return 1;
    double p = pow(10, floor(log10(x)));
    double m = x / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

static int plot(sqlite3 *db, const opts *o)
{
    const char *path = o->db[0];
    vec steps, part[N_PARTS], loss;
    char sql[256];
    if (load(db, path, "SELECT step FROM step" WHERE " GROUP BY step ORDER BY step", o->skip, o->rank, &steps))
        return 2;
    int bad = 0;
    for (int i = 0; i < N_PARTS; i++) {
        snprintf(sql, sizeof sql, "SELECT coalesce(avg(%s), 0) FROM step" WHERE " GROUP BY step ORDER BY step",
                 PARTS[i].column);
        bad |= load(db, path, sql, o->skip, o->rank, &part[i]);
    }
    /* one value per step, as the bars: a step whose loss is NULL (a NaN is stored so) reads as
     * SQLite's infinity (9e999) and leaves a gap in the curve */
    bad |= load(db, path, "SELECT coalesce(avg(loss), 9e999) FROM step" WHERE " GROUP BY step ORDER BY step", o->skip,
                o->rank, &loss);
    int rc = bad ? 2 : 0;
    if (!rc && steps.n == 0) {
        fprintf(stderr, "ds-prof: %s: no steps recorded%s; nothing to plot\n", path,
                o->rank >= 0 ? " for this rank" : "");
        rc = 2;
    }
    char tmp[PATH_MAX], dest[PATH_MAX];
    FILE *f = rc ? NULL : open_output(o, &rc, tmp, dest);
    if (f) {
        const int W = 900, H = 640, L = 70, R = 150, top1 = 40, h1 = 300, top2 = 400, h2 = 190;
        const int pw = W - L - R;
        int n = steps.n;
        double ymax = 0;
        for (int s = 0; s < n; s++) {
            double t = 0;
            for (int i = 0; i < N_PARTS; i++)
                t += part[i].v[s];
            ymax = t > ymax ? t : ymax;
        }
        ymax = nice_ceil(ymax);
        double lmin = INFINITY, lmax = -INFINITY;
        int finite = 0;
        for (int s = 0; s < loss.n; s++) {
            if (!isfinite(loss.v[s]))
                continue;
            finite++;
            lmin = loss.v[s] < lmin ? loss.v[s] : lmin;
            lmax = loss.v[s] > lmax ? loss.v[s] : lmax;
        }
        if (!finite)
            lmin = 0, lmax = 1;
        if (!(lmax > lmin))
            lmax = lmin + 1;
        fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                   "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                W, H, W, H);
        fputs("<title>", f);
        for (const char *c = path; *c; c++) /* the path is user text: escape it */
            fputs(*c == '<' ? "&lt;" : *c == '&' ? "&amp;" : *c == '>' ? "&gt;" : (char[2]){*c, 0}, f);
        fputs("</title>\n", f);
        fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\">Step time (ms) by part%s</text>\n", L,
                o->rank >= 0 ? ", one rank" : ", mean over ranks");
        double bw = (double)pw / n;
        for (int s = 0; s < n; s++) {
            double y = top1 + h1;
            for (int i = 0; i < N_PARTS; i++) {
                double h = part[i].v[s] / ymax * h1;
                if (h <= 0)
                    continue;
                y -= h;
                fprintf(f, "<rect class=\"%s\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"/>\n",
                        PARTS[i].label, L + s * bw, y, bw > 2 ? bw * 0.9 : bw, h, PARTS[i].color);
            }
        }
        for (int k = 0; k <= 4; k++) { /* y axis */
            double y = top1 + h1 - k * h1 / 4.0;
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                       "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                    L, y, L + pw, y, L - 6, y + 4, ymax * k / 4);
        }
        for (int i = 0; i < N_PARTS; i++)
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
                    W - R + 15, top1 + 20 * i, PARTS[i].color, W - R + 32, top1 + 20 * i + 11, PARTS[i].label);
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"15\">Loss</text>\n", L, top2 - 16);
        /* a polyline per run of finite losses, each at its step's bar (a NaN or inf loss is a gap) */
        int open = 0;
        for (int s = 0; s < loss.n && s < n; s++) {
            if (!isfinite(loss.v[s])) {
                if (open)
                    fputs("\"/>\n", f);
                open = 0;
                continue;
            }
            if (!open)
                fputs("<polyline class=\"loss\" fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"1.5\" points=\"", f);
            fprintf(f, "%s%.2f,%.2f", open ? " " : "", L + (s + 0.5) * bw,
                    top2 + h2 - (loss.v[s] - lmin) / (lmax - lmin) * h2);
            open = 1;
        }
        if (open)
            fputs("\"/>\n", f);
        if (!finite)
            fprintf(f, "<text x=\"%d\" y=\"%d\">no finite loss recorded</text>\n", L + 10, top2 + h2 / 2);
        for (int k = 0; k <= 2; k++) {
            double y = top2 + h2 - k * h2 / 2.0;
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                       "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n",
                    L, y, L + pw, y, L - 6, y + 4, lmin + (lmax - lmin) * k / 2);
        }
        fprintf(f, "<text x=\"%d\" y=\"%d\">step %.0f</text><text x=\"%d\" y=\"%d\" text-anchor=\"end\">step %.0f</text>\n",
                L, top2 + h2 + 18, steps.v[0], L + pw, top2 + h2 + 18, steps.v[n - 1]);
        fputs("</svg>\n", f);
        rc = close_output(o, f, rc, tmp, dest);
    }
    free(steps.v);
    for (int i = 0; i < N_PARTS; i++)
        free(part[i].v);
    free(loss.v);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    sqlite3 *db[2] = {NULL, NULL};
    ds_error err = {0};
    for (int i = 0; i < o.ndb; i++)
        if (ds_rundb_open_read(&db[i], o.db[i], &err) != DS_OK) {
            fprintf(stderr, "ds-prof: %s\n", err.msg);
            sqlite3_close(db[0]);
            return 2;
        }
    if (o.rank >= 0) { /* a rank the run did not have is a mistake, not an empty report */
        double world = scalar(db[0], "SELECT world_size FROM run", 0, -1);
        if (!(o.rank < world)) {
            fprintf(stderr, "ds-prof: --rank %d: %s has ranks 0 to %.0f (world size %.0f)\n", o.rank, o.db[0],
                    world - 1, world);
            sqlite3_close(db[0]);
            return 2;
        }
    }
    if (!strcmp(o.cmd, "report"))
        rc = report(db[0], &o);
    else if (!strcmp(o.cmd, "compare"))
        rc = compare(db[0], db[1], &o);
    else if (!strcmp(o.cmd, "export"))
        rc = export_run(db[0], &o);
    else
        rc = plot(db[0], &o);
    if (!strcmp(o.cmd, "report") || !strcmp(o.cmd, "compare"))
        rc = close_output(&o, stdout, rc, NULL, NULL);
    sqlite3_close(db[0]);
    sqlite3_close(db[1]);
    return rc;
}
