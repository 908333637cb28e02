/* Profiling: the timers (names, DeepSpeed's line, micro and global sums, off means untouched),
 * the engine's breakdown on a known workload (the timers add up to the wall time of the calls),
 * the run database (rows written, existing files refused) and the checked open (missing,
 * corrupt, foreign and wrong-version files). ds-prof's output is tested in tests/prof.sh. */
#include <criterion/criterion.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ds/ds.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char tmpdir[64];

static void make_tmp(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ds-prof-test.XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void remove_tmp(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_expect_eq(system(cmd), 0);
}

static const char *tmp(const char *name)
{
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

Test(timers, names_and_deepspeed_line)
{
    cr_expect_str_eq(ds_timer_name(DS_TIMER_FWD, 0), "fwd");
    cr_expect_str_eq(ds_timer_name(DS_TIMER_BWD_INNER, 1), "bwd_inner_microstep");
    cr_expect_str_eq(ds_timer_name(DS_TIMER_BWD_ALLREDUCE, 0), "bwd_allreduce");
    cr_expect_str_eq(ds_timer_name(DS_TIMER_STEP, 1), "step_microstep");
    double ms[DS_TIMER_COUNT] = {10.531, 20.11, 19.8, 0.214, 5.016};
    char line[256];
    ds_timers_format(ms, 1, line, sizeof line);
    cr_expect_str_eq(line, "time (ms) | fwd_microstep: 10.53 | bwd_microstep: 20.11 | bwd_inner_microstep: 19.80 | "
                           "bwd_allreduce_microstep: 0.21 | step_microstep: 5.02");
    ds_timers_format(ms, 0, line, sizeof line);
    cr_expect_str_eq(line, "time (ms) | fwd: 10.53 | bwd: 20.11 | bwd_inner: 19.80 | bwd_allreduce: 0.21 | step: 5.02");
}

Test(timers, off_touches_nothing)
{
    ds_timers t;
    ds_timers_init(&t, 0);
    ds_timers_start(&t, DS_TIMER_FWD);
    sleep_ms(2);
    ds_timers_stop(&t, DS_TIMER_FWD);
    ds_timers_micro_end(&t);
    ds_timers_boundary(&t);
    cr_expect_eq(t.running[DS_TIMER_FWD], 0);
    cr_expect_eq(t.started[DS_TIMER_FWD], 0.0);
    cr_expect_eq(t.last_global_ms[DS_TIMER_FWD], 0.0);
    cr_expect_eq(t.micro_count + t.boundary_count, 0);
}

static int sync_calls;
static ds_status count_sync(void *ctx)
{
    (void)ctx;
    sync_calls++;
    return DS_OK;
}

Test(timers, micro_and_global_sums)
{
    ds_timers t;
    ds_timers_init(&t, 1);
    t.sync = count_sync;
    for (int micro = 0; micro < 2; micro++) { /* two micro-steps of one effective batch */
        ds_timers_start(&t, DS_TIMER_FWD);
        sleep_ms(20);
        ds_timers_stop(&t, DS_TIMER_FWD);
        ds_timers_micro_end(&t);
        cr_expect(t.last_micro_ms[DS_TIMER_FWD] >= 19.0 && t.last_micro_ms[DS_TIMER_FWD] < 300,
                  "micro fwd %.3f ms", t.last_micro_ms[DS_TIMER_FWD]);
    }
    ds_timers_stop(&t, DS_TIMER_STEP); /* never started: no effect */
    ds_timers_boundary(&t);
    cr_expect(t.last_global_ms[DS_TIMER_FWD] >= 39.0 && t.last_global_ms[DS_TIMER_FWD] < 600,
              "global fwd %.3f ms", t.last_global_ms[DS_TIMER_FWD]);
    cr_expect_eq(t.last_global_ms[DS_TIMER_STEP], 0.0);
    cr_expect_eq(t.global_ms[DS_TIMER_FWD], 0.0, "reset at the boundary");
    cr_expect_eq(sync_calls, 4, "a synchronize before each clock read");
    cr_expect_eq(t.micro_count, 2);
    cr_expect_eq(t.boundary_count, 1);
}

/* ---- the engine on a known workload ---------------------------------------------------- */

static const char *NET = "{\"input\": {\"type\": \"features\", \"dim\": 64}, \"layers\": ["
                         "{\"type\": \"linear\", \"name\": \"fc1\", \"out\": 512}, {\"type\": \"relu\"}, "
                         "{\"type\": \"linear\", \"name\": \"fc2\", \"out\": 10}], "
                         "\"loss\": {\"type\": \"cross_entropy\"}}";

static ds_engine *mlp(const char *extra)
{
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"train_micro_batch_size_per_gpu\": 32, \"gradient_accumulation_steps\": 2, "
             "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.001}}%s}", extra);
    ds_engine_options o = {.config_json = cfg, .config_name = "ds.json", .net_json = NET, .net_name = "mlp.json",
                           .backend = "cpu"};
    ds_engine *e = NULL;
    ds_error err = {0};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    return e;
}

static float X[32 * 64];
static int32_t LABELS[32];

static double micro_step(ds_engine *e)
{
    ds_batch b = {.x = X, .labels = LABELS};
    ds_error err = {0};
    double loss, t0 = ds_prof_now_s();
    cr_assert_eq(ds_engine_forward(e, &b, &loss, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_backward(e, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_engine_step(e, &err), DS_OK, "%s", err.msg);
    return (ds_prof_now_s() - t0) * 1e3;
}

static void fill_batch(void)
{
    for (int i = 0; i < 32 * 64; i++)
        X[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (int i = 0; i < 32; i++)
        LABELS[i] = i % 10;
}

Test(engine, timers_off_by_default)
{
    fill_batch();
    ds_engine *e = mlp("");
    cr_expect_null(ds_engine_timers(e));
    micro_step(e);
    micro_step(e);
    int n = -1;
    ds_engine_last_collectives(e, &n);
    cr_expect_eq(n, 0);
    cr_expect_eq(ds_engine_last_step_loss_scale(e), 1.0);
    cr_expect_eq(ds_engine_was_step_applied(e), 1);
    ds_engine_destroy(e);
}

/* fwd + bwd + step of an effective batch is the engine's time for it: within 5% (plus 0.5 ms)
 * of the wall time of the calls that made it, measured around them. The time between the calls
 * is no timer's: a preemption there (a busy 2-core machine) can take more than the slack, so the
 * lower bounds are asked of one of up to 3 engines' runs; the upper bounds of every run. */
static int timers_add_up_once(void)
{
    int ok = 1;
    ds_engine *e = mlp(", \"wall_clock_breakdown\": true");
    const ds_timers *t = ds_engine_timers(e);
    cr_assert_not_null(t);
    for (int s = 0; s < 3; s++) {
        double wall = micro_step(e);
        cr_expect_eq(ds_engine_global_steps(e), s);
        double m = t->last_micro_ms[DS_TIMER_FWD] + t->last_micro_ms[DS_TIMER_BWD] + t->last_micro_ms[DS_TIMER_STEP];
        cr_expect(m <= wall, "micro: %.3f ms of timers in %.3f ms", m, wall);
        if (!(m >= 0.95 * wall - 0.5)) {
            cr_log_warn("micro: %.3f ms of timers in %.3f ms of calls (preempted between them?)", m, wall);
            ok = 0;
        }
        wall += micro_step(e);
        cr_expect_eq(ds_engine_global_steps(e), s + 1);
        const double *g = t->last_global_ms;
        double sum = g[DS_TIMER_FWD] + g[DS_TIMER_BWD] + g[DS_TIMER_STEP];
        cr_expect(sum <= wall, "step %d: fwd+bwd+step %.3f ms, calls %.3f ms", s, sum, wall);
        if (!(sum >= 0.95 * wall - 0.5)) {
            cr_log_warn("step %d: fwd+bwd+step %.3f ms, calls %.3f ms (preempted between them?)", s, sum, wall);
            ok = 0;
        }
        cr_expect(g[DS_TIMER_FWD] > 0 && g[DS_TIMER_BWD_INNER] > 0 && g[DS_TIMER_STEP] > 0);
        double parts = g[DS_TIMER_BWD_INNER] + g[DS_TIMER_BWD_ALLREDUCE]; /* bwd's clock reads enclose them */
        cr_expect(g[DS_TIMER_BWD] >= parts && g[DS_TIMER_BWD] <= parts + 0.1, "bwd %.4f, parts %.4f", g[DS_TIMER_BWD],
                  parts);
        cr_expect_eq(g[DS_TIMER_BWD_ALLREDUCE], 0.0, "one process: no all-reduce");
    }
    cr_expect_eq(t->micro_count, 6);
    cr_expect_eq(t->boundary_count, 3);
    ds_engine_destroy(e);
    return ok;
}

Test(engine, timers_add_up)
{
    fill_batch();
    int ok = 0;
    for (int attempt = 0; attempt < 3 && !ok; attempt++)
        ok = timers_add_up_once();
    cr_expect(ok, "in 3 runs, never did the timers cover 95%% (less 0.5 ms) of the calls' time");
}

Test(engine, option_turns_timers_on)
{
    ds_engine_options o = {.config_json = "{\"train_batch_size\": 32}", .config_name = "ds.json", .net_json = NET,
                           .net_name = "mlp.json", .backend = "cpu", .timers = 1};
    ds_engine *e = NULL;
    ds_error err = {0};
    cr_assert_eq(ds_initialize(&e, &o, &err), DS_OK, "%s", err.msg);
    cr_expect_not_null(ds_engine_timers(e));
    ds_engine_destroy(e);
}

/* ---- the run database ------------------------------------------------------------------- */

static ds_run_info info(void)
{
    ds_run_info ri = {.command_line = "ds-train mlp.json", .config_json = "{}", .net_path = "mlp.json",
                      .backend = "cpu:generic", .world_size = 1, .micro_batch = 4, .grad_accum = 1,
                      .train_batch_size = 4, .total_params = 100, .flops_per_sample = 200, .positions = 1,
                      .steps_planned = 3, .threads = 1, .params_bytes = 400};
    return ri;
}

static int64_t one_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW, "%s", sql);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

Test(rundb, writes_rows_and_refuses_to_overwrite, .init = make_tmp, .fini = remove_tmp)
{
    ds_run_info ri = info();
    ds_rundb *db;
    ds_error err = {0};
    cr_assert_eq(ds_rundb_create(&db, tmp("run.db"), 0, &ri, NULL, &err), DS_OK, "%s", err.msg);
    ds_collective_record c[2] = {{"all_reduce", "gradients", 100, 400, 0.5}, {"all_reduce", "loss", 1, 4, 0.1}};
    for (int s = 1; s <= 3; s++) {
        ds_step_record r = {.step = s, .loss = 3.0 - s, .lr = 1e-3, .loss_scale = 1.0, .iter_ms = 10,
                            .timer_ms = {2, 6, 5, 1, 1.5}, .samples = 4 * s};
        cr_assert_eq(ds_rundb_add_step(db, &r, c, 2, &err), DS_OK, "%s", err.msg);
        if (s == 2)
            cr_assert_eq(ds_rundb_flush(db, &err), DS_OK, "%s", err.msg);
    }
    cr_assert_eq(ds_rundb_close(db, "done", &err), DS_OK, "%s", err.msg);

    sqlite3 *r;
    cr_assert_eq(ds_rundb_open_read(&r, tmp("run.db"), &err), DS_OK, "%s", err.msg);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM step WHERE rank = 0"), 3);
    cr_expect_eq(one_int(r, "SELECT sum(step) FROM step"), 6);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM collective"), 6);
    cr_expect_eq(one_int(r, "SELECT sum(bytes) FROM collective WHERE step = 2"), 404);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM step WHERE loss_scale = 1.0 AND skipped = 0 AND fwd_ms = 2 AND "
                            "bwd_ms = 6 AND bwd_inner_ms = 5 AND bwd_allreduce_ms = 1 AND step_ms = 1.5"), 3);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM run WHERE status = 'done' AND finished_at IS NOT NULL AND "
                            "world_size = 1 AND backend = 'cpu:generic'"), 1);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM rank WHERE rank = 0 AND params_bytes = 400 AND pid > 0"), 1);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM meta WHERE key = 'schema_version' AND value = '1'"), 1);
    cr_expect_eq(one_int(r, "PRAGMA journal_mode = query_only") >= 0, 1);
    sqlite3_close(r);
    cr_expect(access(tmp("run.db-wal"), F_OK) != 0, "a closed run database is one file");

    /* an existing file: refused, then replaced with overwrite */
    cr_expect_eq(ds_rundb_create(&db, tmp("run.db"), 0, &ri, NULL, &err), DS_ERR_INVALID);
    cr_expect(strstr(err.msg, "run.db: exists; not overwriting it"), "%s", err.msg);
    cr_assert_eq(ds_rundb_create(&db, tmp("run.db"), 1, &ri, NULL, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_rundb_close(db, "done", &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_rundb_open_read(&r, tmp("run.db"), &err), DS_OK, "%s", err.msg);
    cr_expect_eq(one_int(r, "SELECT count(*) FROM step"), 0);
    sqlite3_close(r);
    /* a directory that does not exist: an error naming the file */
    cr_expect_neq(ds_rundb_create(&db, tmp("no/such/dir/run.db"), 0, &ri, NULL, &err), DS_OK);
    cr_expect(strstr(err.msg, "no/such/dir/run.db"), "%s", err.msg);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void exec_sql(const char *path, const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

static void open_fails(const char *path, const char *want)
{
    sqlite3 *db = (sqlite3 *)1;
    ds_error err = {0};
    cr_expect_neq(ds_rundb_open_read(&db, path, &err), DS_OK, "%s opened", path);
    cr_expect_null(db);
    cr_expect(strstr(err.msg, path), "the message names the file: %s", err.msg);
    cr_expect(strstr(err.msg, want), "expected \"%s\" in: %s", want, err.msg);
}

Test(rundb, bad_files_give_clear_errors, .init = make_tmp, .fini = remove_tmp)
{
    open_fails(tmp("missing.db"), "No such file or directory");
    write_file(tmp("corrupt.db"), "this is a text file, long enough to have a header of 100 bytes; "
                                  "SQLite reads the first 100 bytes as its header and finds no magic.\n");
    open_fails(tmp("corrupt.db"), "not an SQLite database");
    write_file(tmp("empty.db"), "");
    open_fails(tmp("empty.db"), "empty");
    exec_sql(tmp("foreign.db"), "CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    open_fails(tmp("foreign.db"), "an SQLite database of another program");
    char sql[2048];
    snprintf(sql, sizeof sql, "PRAGMA application_id=%d; PRAGMA user_version=99; %s", DS_RUNDB_APPLICATION_ID,
             ds_rundb_schema_sql());
    exec_sql(tmp("future.db"), sql);
    open_fails(tmp("future.db"), "schema version 99; this ds");
    snprintf(sql, sizeof sql, "PRAGMA application_id=%d; PRAGMA user_version=%d; %s", DS_RUNDB_APPLICATION_ID,
             DS_RUNDB_SCHEMA_VERSION, ds_rundb_schema_sql());
    exec_sql(tmp("norun.db"), sql);
    open_fails(tmp("norun.db"), "without its run row");
    open_fails(tmpdir, "a directory");
}

/* ---- monitors ---------------------------------------------------------------------------------- */

/* csv_monitor writes values as Python's repr does (DeepSpeed's csv module writes str(float)):
 * the right column is python3 -c 'print(repr(x))' for each x */
Test(monitor, csv_values_as_python_writes_them, .init = make_tmp, .fini = remove_tmp)
{
    static const struct {
        double v;
        const char *py;
    } cases[] = {
        {1e15, "1000000000000000.0"}, {1e16, "1e+16"}, {1e-05, "1e-05"},
        {12345678901234568.0, "1.2345678901234568e+16"}, {123456789012345680.0, "1.2345678901234568e+17"},
        {0.1, "0.1"}, {100.0, "100.0"}, {1.5e-05, "1.5e-05"}, {0.0001, "0.0001"}, {131072.0, "131072.0"},
        {5.454087257385254, "5.454087257385254"}, {-0.0, "-0.0"}, {1.0 / 3, "0.3333333333333333"},
        {3e-320, "3e-320"}, {1.7976931348623157e308, "1.7976931348623157e+308"}, {0.00012345, "0.00012345"},
        {-2.5, "-2.5"}, {NAN, "nan"}, {-INFINITY, "-inf"},
    };
    const int n = (int)(sizeof cases / sizeof cases[0]);
    ds_monitor_config csv = {.enabled = 1};
    snprintf(csv.output_path, sizeof csv.output_path, "%s/out", tmpdir);
    snprintf(csv.job_name, sizeof csv.job_name, "job");
    ds_monitor *m = NULL;
    ds_error e = {0};
    cr_assert_eq(ds_monitor_open(&m, NULL, &csv, &e), DS_OK, "%s", e.msg);
    cr_assert(m != NULL);
    cr_expect_null(ds_monitor_tensorboard_file(m));
    for (int i = 0; i < n; i++)
        cr_assert_eq(ds_monitor_write(m, "Train/Samples/x y", cases[i].v, i * 8, &e), DS_OK, "%s", e.msg);
    ds_monitor_close(m);
    FILE *f = fopen(tmp("out/job/Train_Samples_x_y.csv"), "r");
    cr_assert(f != NULL, "the file is named after the event, '/' and ' ' as '_'");
    char line[128];
    cr_assert(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "step,x y\r\n");
    for (int i = 0; i < n; i++) {
        char want[128];
        snprintf(want, sizeof want, "%d,%s\r\n", i * 8, cases[i].py);
        cr_assert(fgets(line, sizeof line, f));
        cr_expect_str_eq(line, want);
    }
    fclose(f);
    /* nothing enabled: no monitor, and the calls do nothing */
    ds_monitor_config off = {.enabled = 0};
    cr_expect_eq(ds_monitor_open(&m, &off, &off, &e), DS_OK);
    cr_expect_null(m);
    cr_expect_eq(ds_monitor_write(NULL, "a", 1, 0, &e), DS_OK);
    /* a folder that cannot be made: named */
    snprintf(csv.output_path, sizeof csv.output_path, "%s/out/job/Train_Samples_x_y.csv", tmpdir);
    cr_expect_eq(ds_monitor_open(&m, NULL, &csv, &e), DS_ERR_IO);
    cr_expect(strstr(e.msg, "csv_monitor: ") && strstr(e.msg, "Train_Samples_x_y.csv/job"), "%s", e.msg);
}
