/* DeepSpeed's monitors (engine.md §7.1): csv_monitor, one CSV file per event, and tensorboard, a
 * TensorBoard event file (TFRecord framing around hand-encoded Event protocol buffers: no
 * TensorFlow, no protobuf library). Rank 0 writes; see ds/prof.h. */
#include "ds/prof.h"
#include "ds/config.h"
#include "core/fs_util.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_CSV 32

struct ds_monitor {
    char csv_dir[PATH_MAX];   /* "" when csv_monitor is off */
    struct {
        char tag[128];
        FILE *f;
    } csv[MAX_CSV];
    int n_csv;
    char tb_path[PATH_MAX];   /* the event file, "" when tensorboard is off */
    FILE *tb;
};

/* ---- CRC-32C (Castagnoli), as TFRecord frames its records ---------------------------------- */

static uint32_t crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
    }
    return ~c;
}

static uint32_t masked_crc(const unsigned char *p, size_t n)
{
    uint32_t c = crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* ---- protocol buffer pieces ------------------------------------------------------------------- */

typedef struct pbuf {
    unsigned char b[1024];
    size_t n;
} pbuf;

static void put_byte(pbuf *p, unsigned v)
{
    if (p->n < sizeof p->b)
        p->b[p->n++] = (unsigned char)v;
}

static void put_varint(pbuf *p, uint64_t v)
{
    while (v >= 0x80) {
        put_byte(p, (unsigned)(v & 0x7f) | 0x80);
        v >>= 7;
    }
    put_byte(p, (unsigned)v);
}

static void put_le(pbuf *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        put_byte(p, (unsigned)(v >> (8 * i)) & 0xff);
}

/* field number f, length-delimited (wire type 2) */
static void put_bytes(pbuf *p, int f, const void *data, size_t len)
{
    put_varint(p, (uint64_t)(f << 3 | 2));
    put_varint(p, len);
    for (size_t i = 0; i < len; i++)
        put_byte(p, ((const unsigned char *)data)[i]);
}

/* An Event: wall_time (1, double), step (2, int64), then file_version (3, string) or a Summary
 * (5) with one Value: tag (1, string), simple_value (2, float). */
static size_t event(pbuf *out, double wall, int64_t step, const char *file_version, const char *tag, float value)
{
    uint64_t bits;
    memcpy(&bits, &wall, 8);
    put_varint(out, 1 << 3 | 1);
    put_le(out, bits, 8);
    put_varint(out, 2 << 3 | 0);
    put_varint(out, (uint64_t)step);
    if (file_version) {
        put_bytes(out, 3, file_version, strlen(file_version));
    } else {
        pbuf val = {.n = 0}, sum = {.n = 0};
        uint32_t fb;
        memcpy(&fb, &value, 4);
        put_bytes(&val, 1, tag, strlen(tag));
        put_varint(&val, 2 << 3 | 5);
        put_le(&val, fb, 4);
        put_bytes(&sum, 1, val.b, val.n);
        put_bytes(out, 5, sum.b, sum.n);
    }
    return out->n;
}

/* One TFRecord: length (8 bytes), its masked CRC, the data, the data's masked CRC. */
static int write_record(FILE *f, const unsigned char *data, size_t n)
{
    unsigned char head[12];
    for (int i = 0; i < 8; i++)
        head[i] = (unsigned char)((uint64_t)n >> (8 * i));
    uint32_t c = masked_crc(head, 8), d = masked_crc(data, n);
    for (int i = 0; i < 4; i++)
        head[8 + i] = (unsigned char)(c >> (8 * i));
    unsigned char tail[4];
    for (int i = 0; i < 4; i++)
        tail[i] = (unsigned char)(d >> (8 * i));
    return fwrite(head, 1, 12, f) == 12 && fwrite(data, 1, n, f) == n && fwrite(tail, 1, 4, f) == 4 ? 0 : -1;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- helpers ---------------------------------------------------------------------------------- */

/* os.path.join(output_path, job_name) */
static int log_dir(char *buf, size_t n, const ds_monitor_config *m)
{
    size_t len = strlen(m->output_path);
    int w = len == 0 ? snprintf(buf, n, "%s", m->job_name)
          : snprintf(buf, n, "%s%s%s", m->output_path, m->output_path[len - 1] == '/' ? "" : "/", m->job_name);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

/* Python's repr of a float (what DeepSpeed's csv rows hold): the shortest digits that read back
 * the same (%.Ne with N = 0..16), written as Python's float_repr_style 'short' does: positional
 * for decimal exponents -4 to 15 (with ".0" when integral), else d.ddde+XX. */
static void py_float(char *buf, size_t n, double v)
{
    if (isnan(v) || isinf(v)) {
        snprintf(buf, n, isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        return;
    }
    if (v == 0) {
        snprintf(buf, n, signbit(v) ? "-0.0" : "0.0");
        return;
    }
    char e[40];
    for (int prec = 0; prec <= 16; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, v);
        if (strtod(e, NULL) == v)
            break;
    }
    /* e: [-]d[.ddd]e[+-]XX */
    const int neg = e[0] == '-';
    char digits[24];
    int nd = 0;
    const char *p = e + neg;
    for (; *p && *p != 'e'; p++)
        if (*p != '.' && nd < (int)sizeof digits - 1)
            digits[nd++] = *p;
    digits[nd] = 0;
    const int x = atoi(p + 1); /* the value is 0.d1d2... x 10^(x+1) */
    char out[64];
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (x >= -4 && x < 16) {
        if (x < 0) { /* 0.000ddd */
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -x - 1; i++)
                out[o++] = '0';
            for (int i = 0; i < nd; i++)
                out[o++] = digits[i];
        } else { /* ddd.ddd, or ddd000.0 */
            for (int i = 0; i <= x; i++)
                out[o++] = i < nd ? digits[i] : '0';
            out[o++] = '.';
            if (nd > x + 1)
                for (int i = x + 1; i < nd; i++)
                    out[o++] = digits[i];
            else
                out[o++] = '0';
        }
        out[o] = 0;
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (int i = 1; i < nd; i++)
                out[o++] = digits[i];
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    }
    snprintf(buf, n, "%s", out);
}

/* ---- the API ---------------------------------------------------------------------------------- */

ds_status ds_monitor_open(ds_monitor **out, const ds_monitor_config *tensorboard, const ds_monitor_config *csv,
                          ds_error *err)
{
    *out = NULL;
    if (!(tensorboard && tensorboard->enabled) && !(csv && csv->enabled))
        return DS_OK;
    ds_monitor *m = calloc(1, sizeof *m);
    if (!m)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    ds_status st = DS_OK;
    if (csv && csv->enabled) {
        if (log_dir(m->csv_dir, sizeof m->csv_dir, csv) != 0)
            st = ds_error_set(err, DS_ERR_INVALID, "csv_monitor: output_path/job_name too long");
        else if ((st = ds_mkdir_p(m->csv_dir, err)) != DS_OK)
            ds_error_prefix(err, "csv_monitor: ");
        else if (access(m->csv_dir, W_OK | X_OK) != 0) /* (the files are made at their first event) */
            st = ds_error_set(err, DS_ERR_IO, "csv_monitor: %s: cannot write there: %s", m->csv_dir, strerror(errno));
    }
    if (st == DS_OK && tensorboard && tensorboard->enabled) {
        char dir[PATH_MAX], host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        if (log_dir(dir, sizeof dir, tensorboard) != 0) {
            st = ds_error_set(err, DS_ERR_INVALID, "tensorboard: output_path/job_name too long");
        } else if ((st = ds_mkdir_p(dir, err)) != DS_OK) {
            ds_error_prefix(err, "tensorboard: ");
        } else {
            double now = wall_now();
            /* torch's SummaryWriter: events.out.tfevents.<seconds>.<host>.<pid>.<n> */
            int w = snprintf(m->tb_path, sizeof m->tb_path, "%s/events.out.tfevents.%010lld.%s.%d.0", dir,
                             (long long)now, host, (int)getpid());
            if (w < 0 || (size_t)w >= sizeof m->tb_path)
                st = ds_error_set(err, DS_ERR_INVALID, "tensorboard: %s: path too long", dir);
            else if (!(m->tb = fopen(m->tb_path, "wbx")))
                st = ds_error_set(err, DS_ERR_IO, "tensorboard: %s: %s", m->tb_path, strerror(errno));
            pbuf ev = {.n = 0};
            if (st == DS_OK && (write_record(m->tb, ev.b, event(&ev, now, 0, "brain.Event:2", NULL, 0)) != 0 ||
                                fflush(m->tb) != 0))
                st = ds_error_set(err, DS_ERR_IO, "tensorboard: %s: write failed: %s", m->tb_path, strerror(errno));
        }
    }
    if (st != DS_OK) {
        ds_monitor_close(m);
        return st;
    }
    *out = m;
    return DS_OK;
}

ds_status ds_monitor_write(ds_monitor *m, const char *tag, double value, int64_t step, ds_error *err)
{
    if (!m)
        return DS_OK;
    if (m->csv_dir[0]) {
        int i = 0;
        while (i < m->n_csv && strcmp(m->csv[i].tag, tag) != 0)
            i++;
        if (i == m->n_csv) {
            if (m->n_csv == MAX_CSV || strlen(tag) >= sizeof m->csv[0].tag)
                return ds_error_set(err, DS_ERR_INVALID, "csv_monitor: event %s: too many events or too long a name", tag);
            /* DeepSpeed: <dir>/<tag with '/' and ' ' as '_'>.csv, opened to append, with a header
             * "step,<the tag's last part>" the first time this run writes it */
            char name[160], path[PATH_MAX + 200];
            snprintf(name, sizeof name, "%s", tag);
            for (char *c = name; *c; c++)
                if (*c == '/' || *c == ' ')
                    *c = '_';
            snprintf(path, sizeof path, "%s/%s.csv", m->csv_dir, name);
            FILE *f = fopen(path, "a");
            if (!f)
                return ds_error_set(err, DS_ERR_IO, "csv_monitor: %s: %s", path, strerror(errno));
            const char *last = strrchr(tag, '/');
            fprintf(f, "step,%s\r\n", last ? last + 1 : tag);
            snprintf(m->csv[i].tag, sizeof m->csv[i].tag, "%s", tag);
            m->csv[i].f = f;
            m->n_csv++;
        }
        char v[40];
        py_float(v, sizeof v, value);
        /* (Python's csv module ends rows with \r\n) */
        if (fprintf(m->csv[i].f, "%lld,%s\r\n", (long long)step, v) < 0 || fflush(m->csv[i].f) != 0)
            return ds_error_set(err, DS_ERR_IO, "csv_monitor: %s/%s: write failed: %s", m->csv_dir, tag, strerror(errno));
    }
    if (m->tb) {
        pbuf ev = {.n = 0};
        size_t n = event(&ev, wall_now(), step, NULL, tag, (float)value);
        if (n >= sizeof ev.b)
            return ds_error_set(err, DS_ERR_INVALID, "tensorboard: event %s: too long a name", tag);
        if (write_record(m->tb, ev.b, n) != 0 || fflush(m->tb) != 0)
            return ds_error_set(err, DS_ERR_IO, "tensorboard: %s: write failed: %s", m->tb_path, strerror(errno));
    }
    return DS_OK;
}

const char *ds_monitor_tensorboard_file(const ds_monitor *m) { return m && m->tb ? m->tb_path : NULL; }
const char *ds_monitor_csv_dir(const ds_monitor *m) { return m && m->csv_dir[0] ? m->csv_dir : NULL; }

void ds_monitor_close(ds_monitor *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_csv; i++)
        fclose(m->csv[i].f);
    if (m->tb)
        fclose(m->tb);
    free(m);
}
