/* The SQLite run database of one job (ds-train --prof_db): the schema, rank 0's writer, the
 * other ranks' rows gathered to rank 0 over the communicator, and the checked read-only open
 * that ds-prof uses. The reports themselves are in bin/ds-prof.c. */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ds/ds.h"
#include "ds/prof.h"

/* Documented in ds-prof(1); a change of any table is a new DS_RUNDB_SCHEMA_VERSION. */
static const char SCHEMA[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    "CREATE TABLE run(\n"
    "  id INTEGER PRIMARY KEY CHECK (id = 1),\n"
    "  started_at TEXT NOT NULL, started_unix REAL NOT NULL,\n"
    "  finished_at TEXT, status TEXT NOT NULL DEFAULT 'running',\n"
    "  ds_version TEXT, sqlite_version TEXT, command_line TEXT,\n"
    "  config_path TEXT, config_json TEXT, net_path TEXT, net_json TEXT, data_path TEXT,\n"
    "  backend TEXT, world_size INTEGER NOT NULL, micro_batch INTEGER, grad_accum INTEGER,\n"
    "  train_batch_size INTEGER, total_params INTEGER, flops_per_sample INTEGER,\n"
    "  positions INTEGER, steps_planned INTEGER, peak_tflops REAL);\n"
    "CREATE TABLE rank(\n"
    "  rank INTEGER PRIMARY KEY, hostname TEXT, pid INTEGER, threads INTEGER,\n"
    "  params_bytes INTEGER, grads_bytes INTEGER, optim_bytes INTEGER, activation_bytes INTEGER);\n"
    "CREATE TABLE step(\n"
    "  rank INTEGER NOT NULL, step INTEGER NOT NULL,\n"
    "  loss REAL, lr REAL, grad_norm REAL, loss_scale REAL NOT NULL, skipped INTEGER NOT NULL,\n"
    "  iter_ms REAL, fwd_ms REAL, bwd_ms REAL, bwd_inner_ms REAL, bwd_allreduce_ms REAL,\n"
    "  step_ms REAL, samples INTEGER, max_rss_bytes INTEGER, wall_time REAL,\n"
    "  PRIMARY KEY (rank, step));\n"
    "CREATE TABLE collective(\n"
    "  rank INTEGER NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL,\n"
    "  op TEXT NOT NULL, what TEXT, elements INTEGER, bytes INTEGER NOT NULL, ms REAL NOT NULL,\n"
    "  PRIMARY KEY (rank, step, seq));\n";

const char *ds_rundb_schema_sql(void) { return SCHEMA; }

/* A collective as it travels between ranks (no pointers). */
typedef struct coll_row {
    int64_t step, seq, elements, bytes;
    double ms;
    char op[24], what[24];
} coll_row;

/* A rank's host row as it travels to rank 0. */
typedef struct host_row {
    char hostname[256];
    int64_t pid, threads, params_bytes, grads_bytes, optim_bytes, activation_bytes;
} host_row;

struct ds_rundb {
    char *path;
    sqlite3 *db; /* rank 0 only */
    ds_comm *comm;
    int rank, size;
    ds_step_record *steps;
    int n_steps, cap_steps;
    coll_row *colls;
    int n_colls, cap_colls;
};

static ds_status sql_err(ds_error *err, sqlite3 *db, const char *path, const char *what)
{
    return ds_error_set(err, DS_ERR_IO, "%s: %s: %s", path, what, db ? sqlite3_errmsg(db) : "out of memory");
}

static ds_status exec(ds_rundb *d, const char *sql, ds_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        ds_status st = ds_error_set(err, DS_ERR_IO, "%s: %s", d->path, msg ? msg : sqlite3_errmsg(d->db));
        sqlite3_free(msg);
        return st;
    }
    return DS_OK;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

static void utc_now(char *buf, size_t size, double *unix_s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (unix_s)
        *unix_s = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void remove_db_files(const char *path)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char p[4096];
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s%s", path, suffix[i]);
        unlink(p);
    }
}

static ds_status create_file_in(ds_rundb *d, const ds_run_info *in, ds_error *err);

/* Rank 0: create the file, the schema and the run row. Only a regular file is ever replaced
 * (--force); a failure removes what it created (no debris that the next run would find). */
static ds_status create_file(ds_rundb *d, int overwrite, const ds_run_info *in, ds_error *err)
{
    struct stat sb;
    if (stat(d->path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode))
            return ds_error_set(err, DS_ERR_INVALID, "%s: exists and is not a regular file; not replacing it",
                                d->path);
        if (!overwrite)
            return ds_error_set(err, DS_ERR_INVALID, "%s: exists; not overwriting it", d->path);
        remove_db_files(d->path);
    }
    ds_status st = create_file_in(d, in, err);
    if (st != DS_OK) {
        sqlite3_close(d->db);
        d->db = NULL;
        remove_db_files(d->path);
    }
    return st;
}

static ds_status create_file_in(ds_rundb *d, const ds_run_info *in, ds_error *err)
{
    if (sqlite3_open_v2(d->path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        ds_status st = sql_err(err, d->db, d->path, "cannot create");
        sqlite3_close(d->db);
        d->db = NULL;
        return st;
    }
    sqlite3_busy_timeout(d->db, 10000);
    /* WAL: readers (ds-prof during the run) do not block the writer; synchronous=NORMAL: no
     * fsync per commit (a power cut may lose the last steps, never corrupt the file). The header
     * fields go in the schema's transaction: one sync for all of it. */
    char pragmas[160];
    snprintf(pragmas, sizeof pragmas, "PRAGMA application_id=%d; PRAGMA user_version=%d;", DS_RUNDB_APPLICATION_ID,
             DS_RUNDB_SCHEMA_VERSION);
    ds_status st = exec(d, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; BEGIN", err);
    if (st == DS_OK)
        st = exec(d, pragmas, err);
    if (st == DS_OK)
        st = exec(d, SCHEMA, err);
    if (st != DS_OK)
        return st;
    char ver[16];
    snprintf(ver, sizeof ver, "%d", DS_RUNDB_SCHEMA_VERSION);
    const char *meta[][2] = {{"schema", "ds run database"}, {"schema_version", ver},
                             {"ds_version", DS_VERSION}, {"sqlite_version", sqlite3_libversion()}};
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(d->db, "INSERT INTO meta VALUES (?, ?)", -1, &s, NULL) != SQLITE_OK)
        return sql_err(err, d->db, d->path, "meta");
    for (int i = 0; i < 4; i++) {
        sqlite3_reset(s);
        bind_text(s, 1, meta[i][0]);
        bind_text(s, 2, meta[i][1]);
        if (sqlite3_step(s) != SQLITE_DONE) {
            sqlite3_finalize(s);
            return sql_err(err, d->db, d->path, "meta");
        }
    }
    sqlite3_finalize(s);
    char when[32];
    double unix_s;
    utc_now(when, sizeof when, &unix_s);
    if (sqlite3_prepare_v2(d->db,
                           "INSERT INTO run (id, started_at, started_unix, ds_version, sqlite_version, "
                           "command_line, config_path, config_json, net_path, net_json, data_path, backend, "
                           "world_size, micro_batch, grad_accum, train_batch_size, total_params, "
                           "flops_per_sample, positions, steps_planned, peak_tflops) VALUES "
                           "(1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           -1, &s, NULL) != SQLITE_OK)
        return sql_err(err, d->db, d->path, "run");
    int k = 1;
    bind_text(s, k++, when);
    sqlite3_bind_double(s, k++, unix_s);
    bind_text(s, k++, DS_VERSION);
    bind_text(s, k++, sqlite3_libversion());
    bind_text(s, k++, in->command_line);
    bind_text(s, k++, in->config_path);
    bind_text(s, k++, in->config_json);
    bind_text(s, k++, in->net_path);
    bind_text(s, k++, in->net_json);
    bind_text(s, k++, in->data_path);
    bind_text(s, k++, in->backend);
    sqlite3_bind_int(s, k++, in->world_size > 0 ? in->world_size : 1);
    sqlite3_bind_int64(s, k++, in->micro_batch);
    sqlite3_bind_int64(s, k++, in->grad_accum);
    sqlite3_bind_int64(s, k++, in->train_batch_size);
    sqlite3_bind_int64(s, k++, in->total_params);
    sqlite3_bind_int64(s, k++, in->flops_per_sample);
    sqlite3_bind_int64(s, k++, in->positions);
    sqlite3_bind_int64(s, k++, in->steps_planned);
    if (in->peak_tflops > 0)
        sqlite3_bind_double(s, k++, in->peak_tflops);
    else
        sqlite3_bind_null(s, k++);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return sql_err(err, d->db, d->path, "run");
    return DS_OK;
}

static ds_status write_hosts(ds_rundb *d, const host_row *h, int n, ds_error *err)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(d->db, "INSERT INTO rank VALUES (?, ?, ?, ?, ?, ?, ?, ?)", -1, &s, NULL) != SQLITE_OK)
        return sql_err(err, d->db, d->path, "rank");
    for (int r = 0; r < n; r++) {
        sqlite3_reset(s);
        sqlite3_bind_int(s, 1, r);
        bind_text(s, 2, h[r].hostname);
        sqlite3_bind_int64(s, 3, h[r].pid);
        sqlite3_bind_int64(s, 4, h[r].threads);
        sqlite3_bind_int64(s, 5, h[r].params_bytes);
        sqlite3_bind_int64(s, 6, h[r].grads_bytes);
        sqlite3_bind_int64(s, 7, h[r].optim_bytes);
        sqlite3_bind_int64(s, 8, h[r].activation_bytes);
        if (sqlite3_step(s) != SQLITE_DONE) {
            sqlite3_finalize(s);
            return sql_err(err, d->db, d->path, "rank");
        }
    }
    sqlite3_finalize(s);
    return exec(d, "COMMIT", err);
}

static void free_db(ds_rundb *d)
{
    if (!d)
        return;
    if (d->db)
        sqlite3_close(d->db);
    free(d->steps);
    free(d->colls);
    free(d->path);
    free(d);
}

/* Rank 0's outcome, so that every rank fails together with rank 0's message. */
typedef struct outcome {
    int32_t status;
    char msg[DS_ERROR_MSG_MAX];
} outcome;

ds_status ds_rundb_create(ds_rundb **out, const char *path, int overwrite, const ds_run_info *info,
                          ds_comm *comm, ds_error *err)
{
    *out = NULL;
    ds_rundb *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    d->comm = comm && comm->size > 1 ? comm : NULL;
    d->rank = d->comm ? comm->rank : 0;
    d->size = d->comm ? comm->size : 1;
    ds_status st = DS_OK;
    ds_error local = {0};
    if (d->rank == 0)
        st = create_file(d, overwrite, info, &local);
    if (d->comm) {
        outcome o = {.status = st};
        snprintf(o.msg, sizeof o.msg, "%s", local.msg);
        ds_status cst = ds_comm_broadcast(d->comm, &o, sizeof o, 0, err);
        if (cst != DS_OK) {
            free_db(d);
            return cst;
        }
        if (o.status != DS_OK) {
            if (d->rank == 0)
                ds_error_set(err, (ds_status)o.status, "%s", o.msg);
            else
                ds_error_set(err, (ds_status)o.status, "rank 0: %s", o.msg);
            free_db(d);
            return (ds_status)o.status;
        }
    } else if (st != DS_OK) {
        if (err)
            *err = local;
        free_db(d);
        return st;
    }
    host_row mine;
    memset(&mine, 0, sizeof mine);
    if (gethostname(mine.hostname, sizeof mine.hostname - 1) != 0)
        snprintf(mine.hostname, sizeof mine.hostname, "?");
    mine.pid = (int64_t)getpid();
    mine.threads = info->threads;
    mine.params_bytes = info->params_bytes;
    mine.grads_bytes = info->grads_bytes;
    mine.optim_bytes = info->optim_bytes;
    mine.activation_bytes = info->activation_bytes;
    host_row *all = calloc((size_t)d->size, sizeof *all);
    if (!all) {
        free_db(d);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    if (d->comm) /* bytes travel as floats: all_gather copies, it does no arithmetic */
        st = ds_comm_all_gather(d->comm, (const float *)(const void *)&mine, (float *)(void *)all,
                                sizeof mine / sizeof(float), err);
    else
        all[0] = mine;
    if (st == DS_OK && d->rank == 0)
        st = write_hosts(d, all, d->size, err);
    free(all);
    if (st != DS_OK) {
        free_db(d);
        return st;
    }
    *out = d;
    return DS_OK;
}

ds_status ds_rundb_add_step(ds_rundb *d, const ds_step_record *rec, const ds_collective_record *coll,
                            int n_coll, ds_error *err)
{
    if (d->n_steps == d->cap_steps) {
        int cap = d->cap_steps ? 2 * d->cap_steps : 64;
        ds_step_record *p = realloc(d->steps, (size_t)cap * sizeof *p);
        if (!p)
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        d->steps = p;
        d->cap_steps = cap;
    }
    if (d->n_colls + n_coll > d->cap_colls) {
        int cap = d->cap_colls ? d->cap_colls : 64;
        while (cap < d->n_colls + n_coll)
            cap *= 2;
        coll_row *p = realloc(d->colls, (size_t)cap * sizeof *p);
        if (!p)
            return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        d->colls = p;
        d->cap_colls = cap;
    }
    d->steps[d->n_steps++] = *rec;
    for (int i = 0; i < n_coll; i++) {
        coll_row *c = &d->colls[d->n_colls++];
        memset(c, 0, sizeof *c);
        c->step = rec->step;
        c->seq = i;
        c->elements = coll[i].elements;
        c->bytes = coll[i].bytes;
        c->ms = coll[i].ms;
        snprintf(c->op, sizeof c->op, "%s", coll[i].op ? coll[i].op : "?");
        snprintf(c->what, sizeof c->what, "%s", coll[i].what ? coll[i].what : "");
    }
    return DS_OK;
}

static void bind_ms(sqlite3_stmt *s, int i, double ms)
{
    if (ms >= 0)
        sqlite3_bind_double(s, i, ms);
    else
        sqlite3_bind_null(s, i);
}

/* Rank 0: one transaction with every rank's rows (rank r's steps at steps + r*ns, ...). */
static ds_status write_rows(ds_rundb *d, const ds_step_record *steps, int ns, const coll_row *colls, int nc,
                            ds_error *err)
{
    ds_status st = exec(d, "BEGIN", err);
    if (st != DS_OK)
        return st;
    sqlite3_stmt *s = NULL, *c = NULL;
    if (sqlite3_prepare_v2(d->db, "INSERT INTO step VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", -1,
                           &s, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(d->db, "INSERT INTO collective VALUES (?, ?, ?, ?, ?, ?, ?, ?)", -1, &c, NULL) !=
            SQLITE_OK) {
        st = sql_err(err, d->db, d->path, "prepare");
        goto done;
    }
    for (int r = 0; r < d->size; r++) {
        for (int i = 0; i < ns; i++) {
            const ds_step_record *x = &steps[(size_t)r * ns + i];
            sqlite3_reset(s);
            int k = 1;
            sqlite3_bind_int(s, k++, r);
            sqlite3_bind_int64(s, k++, x->step);
            sqlite3_bind_double(s, k++, x->loss);
            sqlite3_bind_double(s, k++, x->lr);
            sqlite3_bind_double(s, k++, x->grad_norm);
            sqlite3_bind_double(s, k++, x->loss_scale);
            sqlite3_bind_int(s, k++, x->skipped);
            sqlite3_bind_double(s, k++, x->iter_ms);
            for (int t = 0; t < DS_TIMER_COUNT; t++)
                bind_ms(s, k++, x->timer_ms[t]);
            sqlite3_bind_int64(s, k++, x->samples);
            sqlite3_bind_int64(s, k++, x->max_rss_bytes);
            sqlite3_bind_double(s, k++, x->wall_time);
            if (sqlite3_step(s) != SQLITE_DONE) {
                st = sql_err(err, d->db, d->path, "step");
                goto done;
            }
        }
        for (int i = 0; i < nc; i++) {
            const coll_row *x = &colls[(size_t)r * nc + i];
            sqlite3_reset(c);
            sqlite3_bind_int(c, 1, r);
            sqlite3_bind_int64(c, 2, x->step);
            sqlite3_bind_int64(c, 3, x->seq);
            bind_text(c, 4, x->op);
            bind_text(c, 5, x->what);
            sqlite3_bind_int64(c, 6, x->elements);
            sqlite3_bind_int64(c, 7, x->bytes);
            sqlite3_bind_double(c, 8, x->ms);
            if (sqlite3_step(c) != SQLITE_DONE) {
                st = sql_err(err, d->db, d->path, "collective");
                goto done;
            }
        }
    }
done:
    sqlite3_finalize(s);
    sqlite3_finalize(c);
    if (st == DS_OK)
        return exec(d, "COMMIT", err);
    exec(d, "ROLLBACK", NULL);
    return st;
}

ds_status ds_rundb_flush(ds_rundb *d, ds_error *err)
{
    ds_status st = DS_OK;
    if (!d->comm) {
        st = write_rows(d, d->steps, d->n_steps, d->colls, d->n_colls, err);
        d->n_steps = d->n_colls = 0;
        return st;
    }
    /* every rank must bring as many rows as the others: they made the same steps and the same
     * collectives; a mismatch is a bug worth stopping for, on every rank alike */
    int32_t mine[2] = {d->n_steps, d->n_colls};
    int32_t *counts = calloc((size_t)d->size * 2, sizeof *counts);
    if (!counts)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if ((st = ds_comm_all_gather(d->comm, (const float *)(const void *)mine, (float *)(void *)counts, 2, err)) != DS_OK) {
        free(counts);
        return st;
    }
    for (int r = 1; r < d->size; r++)
        if (counts[2 * r] != counts[0] || counts[2 * r + 1] != counts[1]) {
            st = ds_error_set(err, DS_ERR_INTERNAL,
                              "%s: rank %d kept %d steps and %d collectives, rank 0 %d and %d", d->path, r,
                              counts[2 * r], counts[2 * r + 1], counts[0], counts[1]);
            free(counts);
            return st;
        }
    free(counts);
    size_t sbytes = (size_t)d->n_steps * sizeof(ds_step_record), cbytes = (size_t)d->n_colls * sizeof(coll_row);
    size_t one = sbytes + cbytes;
    char *send = malloc(one ? one : 4), *recv = malloc(one ? one * (size_t)d->size : 4);
    char *steps = malloc(sbytes * (size_t)d->size + 8), *colls = malloc(cbytes * (size_t)d->size + 8);
    if (!send || !recv || !steps || !colls) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (sbytes)
        memcpy(send, d->steps, sbytes);
    if (cbytes)
        memcpy(send + sbytes, d->colls, cbytes);
    if (one && (st = ds_comm_all_gather(d->comm, (const float *)(const void *)send, (float *)(void *)recv,
                                        one / sizeof(float), err)) != DS_OK)
        goto out;
    if (d->rank == 0) {
        for (int r = 0; r < d->size; r++) {
            if (sbytes)
                memcpy(steps + (size_t)r * sbytes, recv + (size_t)r * one, sbytes);
            if (cbytes)
                memcpy(colls + (size_t)r * cbytes, recv + (size_t)r * one + sbytes, cbytes);
        }
        st = write_rows(d, (const ds_step_record *)(void *)steps, d->n_steps, (const coll_row *)(void *)colls,
                        d->n_colls, err);
    }
    d->n_steps = d->n_colls = 0;
out:
    free(send);
    free(recv);
    free(steps);
    free(colls);
    return st;
}

static void finish(ds_rundb *d, const char *status)
{
    if (!d->db)
        return;
    char when[32];
    utc_now(when, sizeof when, NULL);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(d->db, "UPDATE run SET finished_at = ?, status = ? WHERE id = 1", -1, &s, NULL) ==
        SQLITE_OK) {
        bind_text(s, 1, when);
        bind_text(s, 2, status);
        sqlite3_step(s);
    }
    sqlite3_finalize(s);
    /* back to a rollback journal: the finished job is one self-contained file */
    sqlite3_exec(d->db, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL);
}

ds_status ds_rundb_close(ds_rundb *d, const char *status, ds_error *err)
{
    if (!d)
        return DS_OK;
    ds_status st = ds_rundb_flush(d, err);
    finish(d, st == DS_OK ? status : "failed");
    if (d->db && sqlite3_close(d->db) != SQLITE_OK && st == DS_OK)
        st = sql_err(err, d->db, d->path, "close");
    d->db = NULL;
    free_db(d);
    return st;
}

void ds_rundb_abandon(ds_rundb *d, const char *status)
{
    if (!d)
        return;
    if (d->db && !d->comm) /* one process: its kept rows are all there is; keep them */
        write_rows(d, d->steps, d->n_steps, d->colls, d->n_colls, NULL);
    finish(d, status);
    free_db(d);
}

/* ---- reading ------------------------------------------------------------------------------ */

static int query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        *out = sqlite3_column_int64(s, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(s);
    return rc;
}

/* The numeric columns hold numbers (SQLite keeps whatever a row was given: text would read as 0
 * and turn the report's shares into inf and nan), and the run's world size is one ds can run. */
static ds_status check_values(sqlite3 *db, const char *path, ds_error *err)
{
    static const struct {
        const char *table, *cols, *key; /* key: how a row is named in the message */
    } num[] = {
        {"run", "world_size micro_batch grad_accum train_batch_size total_params flops_per_sample positions "
                "steps_planned peak_tflops", "0, 0"},
        {"rank", "rank pid threads params_bytes grads_bytes optim_bytes activation_bytes", "rank, -1"},
        {"step", "rank step loss lr grad_norm loss_scale skipped iter_ms fwd_ms bwd_ms bwd_inner_ms "
                 "bwd_allreduce_ms step_ms samples max_rss_bytes wall_time", "rank, step"},
        {"collective", "rank step seq elements bytes ms", "rank, step"},
    };
    for (size_t t = 0; t < sizeof num / sizeof num[0]; t++) {
        char cols[256];
        snprintf(cols, sizeof cols, "%s", num[t].cols);
        for (char *save = NULL, *c = strtok_r(cols, " ", &save); c; c = strtok_r(NULL, " ", &save)) {
            char sql[512];
            const int keyed = strcmp(num[t].table, "run") != 0;
            snprintf(sql, sizeof sql, "SELECT %s, typeof(%s), quote(%s) FROM %s WHERE typeof(%s) NOT IN "
                     "('integer', 'real', 'null') LIMIT 1", num[t].key, c, c, num[t].table, c);
            sqlite3_stmt *s = NULL;
            int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
            if (rc != SQLITE_OK) {
                ds_status st = sql_err(err, db, path, "cannot read its tables");
                sqlite3_finalize(s);
                return st;
            }
            if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                char where[64] = "";
                if (keyed && sqlite3_column_int64(s, 1) < 0)
                    snprintf(where, sizeof where, " (rank %lld)", (long long)sqlite3_column_int64(s, 0));
                else if (keyed)
                    snprintf(where, sizeof where, " (rank %lld, step %lld)", (long long)sqlite3_column_int64(s, 0),
                             (long long)sqlite3_column_int64(s, 1));
                const char *type = (const char *)sqlite3_column_text(s, 2), *val = (const char *)sqlite3_column_text(s, 3);
                ds_status st = ds_error_set(err, DS_ERR_INVALID, "%s: %s.%s%s: expected a number, found %s %.60s",
                                            path, num[t].table, c, where, type ? type : "?", val ? val : "");
                sqlite3_finalize(s);
                return st;
            }
            sqlite3_finalize(s);
            if (rc != SQLITE_DONE)
                return sql_err(err, db, path, "cannot read its tables");
        }
    }
    int64_t world = 0;
    if (query_int(db, "SELECT world_size FROM run", &world) != SQLITE_OK)
        return sql_err(err, db, path, "cannot read run.world_size");
    if (world < 1 || world > 1048576)
        return ds_error_set(err, DS_ERR_INVALID, "%s: run.world_size: expected 1..1048576, found %lld", path,
                            (long long)world);
    return DS_OK;
}

ds_status ds_rundb_open_read(struct sqlite3 **out, const char *path, ds_error *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ds_error_set(err, DS_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return ds_error_set(err, DS_ERR_INVALID, "%s: a directory, expected a run database (ds-train --prof_db)", path);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        ds_status st = sql_err(err, db, path, "cannot open");
        sqlite3_close(db);
        return st;
    }
    int64_t app = 0, ver = 0, tables = 0;
    int rc = query_int(db, "PRAGMA application_id", &app);
    if (rc == SQLITE_NOTADB || (rc == SQLITE_OK && (rc = query_int(db, "SELECT count(*) FROM sqlite_master", &tables)) == SQLITE_NOTADB)) {
        sqlite3_close(db);
        return ds_error_set(err, DS_ERR_INVALID, "%s: not an SQLite database (expected a run database written by "
                                                 "ds-train --prof_db; the file is damaged or of another kind)", path);
    }
    if (rc != SQLITE_OK) {
        ds_status st = sql_err(err, db, path, "cannot read");
        sqlite3_close(db);
        return st;
    }
    if (app != DS_RUNDB_APPLICATION_ID) {
        sqlite3_close(db);
        if (tables == 0)
            return ds_error_set(err, DS_ERR_INVALID, "%s: an empty file or SQLite database, not a run database "
                                                     "(ds-train --prof_db writes one)", path);
        return ds_error_set(err, DS_ERR_INVALID, "%s: an SQLite database of another program (application_id "
                                                 "0x%08llx, expected 0x%08x \"DSPR\"), not a ds run database",
                            path, (unsigned long long)(uint32_t)app, DS_RUNDB_APPLICATION_ID);
    }
    if ((rc = query_int(db, "PRAGMA user_version", &ver)) != SQLITE_OK || ver != DS_RUNDB_SCHEMA_VERSION) {
        sqlite3_close(db);
        return ds_error_set(err, DS_ERR_INVALID, "%s: a ds run database of schema version %lld; this ds (%s) reads "
                                                 "version %d", path, (long long)ver, DS_VERSION, DS_RUNDB_SCHEMA_VERSION);
    }
    int64_t runs = 0;
    if (query_int(db, "SELECT count(*) FROM run", &runs) != SQLITE_OK) {
        ds_status st = sql_err(err, db, path, "cannot read table run");
        sqlite3_close(db);
        return st;
    }
    if (runs != 1) {
        sqlite3_close(db);
        return ds_error_set(err, DS_ERR_INVALID, runs == 0 ? "%s: a run database without its run row (table run "
                                                             "is empty)"
                                                           : "%s: %lld rows in table run, expected 1",
                            path, (long long)runs);
    }
    ds_status st = check_values(db, path, err);
    if (st != DS_OK) {
        sqlite3_close(db);
        return st;
    }
    *out = db;
    return DS_OK;
}
