/* Checkpoints (ds/ckpt.h, ds-checkpoint(5)): the commit protocol (temporary tag directory,
 * fsync, rename, then `latest`), SHA-256 of every file, the manifest, re-partitioning by offset
 * arithmetic, and the engine's save_checkpoint/load_checkpoint on the engine's state API.
 * Not here: the engine's buffers (lib/engine) and the safetensors reader (lib/io). */
#define _GNU_SOURCE
#include "ds/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fs_util.h"
#include "dist/dist_internal.h"
#include "ds/ds.h"
#include "ds/engine.h"
#include "ds/safetensors.h"

#define CHUNK (1 << 20) /* elements per streamed piece: 4 MiB of fp32 */
#define MANIFEST "manifest.json"
#define SUMS "SHA256SUMS"
#define MODEL_FILE "mp_rank_00_model_states.safetensors"

/* ---- small file-system helpers -------------------------------------------------------------- */

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static ds_status fsync_dir(const char *dir, ds_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL && e != ENOTSUP)
        return ds_error_set(err, DS_ERR_IO, "%s: fsync of the directory failed: %s", dir, strerror(e));
    return DS_OK;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int rm_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static ds_status read_text(const char *path, char **out, size_t max, ds_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ds_error_set(err, DS_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && !S_ISREG(sb.st_mode)) {
        fclose(f);
        return ds_error_set(err, DS_ERR_INVALID, "%s: %s, expected a regular file", path,
                            S_ISDIR(sb.st_mode) ? "is a directory" : "is not a regular file");
    }
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if (bad || n > max) {
        free(buf);
        if (bad)
            return ds_error_set(err, DS_ERR_IO, "%s: read error", path);
        return ds_error_set(err, DS_ERR_INVALID, "%s: more than the %zu bytes such a file can hold (damaged, or "
                            "not a ds checkpoint's?)", path, max);
    }
    buf[n] = 0;
    *out = buf;
    return DS_OK;
}

static void hex(const uint8_t d[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static int unhex(const char *s, uint8_t d[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        d[i] = (uint8_t)v;
    }
    return 0;
}

/* rename(tmp, path), but never over a path that exists: renameat2's RENAME_NOREPLACE, or link
 * and unlink where the file system lacks it (then, with no hard links either, a look and a plain
 * rename). -1 with errno EEXIST when path exists. (Works for directories too, except the link
 * fallback.) */
static int rename_noreplace(const char *tmp, const char *path)
{
    int r = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE);
    if (r != 0 && (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP)) { /* not on this file system */
        struct stat sb;
        if (lstat(tmp, &sb) == 0 && !S_ISDIR(sb.st_mode) && (r = link(tmp, path)) == 0) {
            unlink(tmp);
        } else if (r != 0 && errno != EEXIST) {
            if (lstat(path, &sb) == 0)
                errno = EEXIST, r = -1;
            else
                r = rename(tmp, path);
        }
    }
    return r;
}

/* ---- a file written through SHA-256: NAME.part, fsynced, renamed to NAME at the end ------- */

typedef struct out_file {
    int fd;
    int noreplace; /* the final rename must not replace a file that appeared meanwhile (no --force) */
    char *path, *part;
    ds_sha256_ctx sha;
    int64_t bytes;
    uint8_t digest[32];
} out_file;

static ds_status out_open(out_file *o, const char *path, ds_error *err)
{
    memset(o, 0, sizeof *o);
    o->fd = -1;
    struct stat sb; /* only a regular file is ever replaced, never a device node or a directory */
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return ds_error_set(err, DS_ERR_INVALID, "%s: exists and is not a regular file; not replacing it", path);
    size_t n = strlen(path) + 48;
    o->path = strdup(path);
    o->part = malloc(n);
    if (!o->path || !o->part) {
        free(o->path);
        free(o->part);
        o->path = o->part = NULL; /* nothing for out_abort to do */
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    /* a name of this process's own, created exclusively and never through a symbolic link: a
     * file already there (a leftover, or anybody's) is never truncated or written through */
    for (int k = 0; k < 100; k++) {
        snprintf(o->part, n, "%s.part.%ld.%d", path, (long)getpid(), k);
        o->fd = open(o->part, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (o->fd >= 0 || errno != EEXIST)
            break;
    }
    if (o->fd < 0) {
        ds_error_set(err, DS_ERR_IO, "%s: cannot create it (as %s first): %s", path, o->part, strerror(errno));
        free(o->path);
        free(o->part);
        o->path = o->part = NULL;
        return DS_ERR_IO;
    }
    ds_sha256_init(&o->sha);
    return DS_OK;
}

static ds_status out_write(out_file *o, const void *data, size_t n, ds_error *err)
{
    const char *p = data;
    ds_sha256_update(&o->sha, data, n);
    o->bytes += (int64_t)n;
    while (n > 0) {
        ssize_t w = write(o->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return ds_error_set(err, DS_ERR_IO, "%s: write failed: %s", o->path,
                                w < 0 ? strerror(errno) : "no space left on device");
        p += w;
        n -= (size_t)w;
    }
    return DS_OK;
}

/* Discard a file being written (on any error). */
static void out_abort(out_file *o)
{
    if (o->fd >= 0)
        close(o->fd);
    if (o->part)
        unlink(o->part);
    free(o->path);
    free(o->part);
    o->fd = -1;
    o->path = o->part = NULL;
}

static ds_status out_close(out_file *o, ds_error *err)
{
    ds_status st = DS_OK;
    if (fsync(o->fd) != 0)
        st = ds_error_set(err, DS_ERR_IO, "%s: fsync failed: %s", o->path, strerror(errno));
    if (close(o->fd) != 0 && st == DS_OK)
        st = ds_error_set(err, DS_ERR_IO, "%s: close failed: %s", o->path, strerror(errno));
    o->fd = -1;
    if (st == DS_OK && (o->noreplace ? rename_noreplace(o->part, o->path) : rename(o->part, o->path)) != 0)
        st = errno == EEXIST && o->noreplace
                 ? ds_error_set(err, DS_ERR_INVALID, "%s: appeared while this ran; not overwriting it (use --force)",
                                o->path)
                 : ds_error_set(err, DS_ERR_IO, "%s: cannot rename %s to it: %s", o->path, o->part, strerror(errno));
    if (st != DS_OK) {
        out_abort(o);
        return st;
    }
    ds_sha256_final(&o->sha, o->digest);
    free(o->path);
    free(o->part);
    o->path = o->part = NULL;
    return DS_OK;
}

/* ---- safetensors written in a stream: the header first, then every tensor's bytes in order */

typedef struct st_decl {
    const char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_MAX_DIMS];
} st_decl;

static int64_t decl_bytes(const st_decl *d)
{
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++)
        n *= d->shape[i];
    return n * (int64_t)ds_dtype_size(d->dtype);
}

static ds_status st_write_header(out_file *o, const st_decl *d, int n, json_object *meta,
                                 ds_error *err)
{
    json_object *h = json_object_new_object();
    if (meta)
        json_object_object_add(h, "__metadata__", json_object_get(meta));
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_object *t = json_object_new_object(), *shape = json_object_new_array(),
                    *offs = json_object_new_array();
        json_object_object_add(t, "dtype", json_object_new_string(ds_dtype_name(d[i].dtype)));
        for (int k = 0; k < d[i].ndim; k++)
            json_object_array_add(shape, json_object_new_int64(d[i].shape[k]));
        json_object_object_add(t, "shape", shape);
        int64_t b = decl_bytes(&d[i]);
        json_object_array_add(offs, json_object_new_int64(off));
        json_object_array_add(offs, json_object_new_int64(off + b));
        json_object_object_add(t, "data_offsets", offs);
        json_object_object_add(h, d[i].name, t);
        off += b;
    }
    const char *txt = json_object_to_json_string_ext(h, JSON_C_TO_STRING_PLAIN);
    size_t len = strlen(txt), padded = (len + 7) / 8 * 8; /* the reference pads with spaces */
    char *buf = malloc(8 + padded);
    if (!buf) {
        json_object_put(h);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, txt, len);
    memset(buf + 8 + len, ' ', padded - len);
    json_object_put(h);
    ds_status st = out_write(o, buf, 8 + padded, err);
    free(buf);
    return st;
}

/* ---- the partition rule ----------------------------------------------------------------------- */

int64_t ds_ckpt_partition_range(int64_t numel, int world, int r, int64_t *begin, int64_t *end)
{
    int64_t unit = (int64_t)DS_CKPT_ALIGN * world;
    int64_t padded = (numel + unit - 1) / unit * unit, size = padded / world;
    int64_t b = (int64_t)r * size, e = b + size;
    *begin = b < numel ? b : numel;
    *end = e < numel ? e : numel;
    return padded;
}

/* ---- reading a checkpoint --------------------------------------------------------------------- */

typedef struct part_reader {
    ds_safetensors *st;
    int fd;
    int64_t data_off; /* file offset of the data section */
} part_reader;

static void free_strs(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
}

void ds_ckpt_close(ds_ckpt *c)
{
    if (!c)
        return;
    part_reader *r = c->readers;
    for (int i = 0; r && i < c->partition_world; i++) {
        if (r[i].st)
            ds_st_close(r[i].st);
        if (r[i].fd >= 0)
            close(r[i].fd);
    }
    free(r);
    for (int i = 0; c->parts && i < c->partition_world; i++)
        free(c->parts[i].file);
    free(c->parts);
    for (int i = 0; i < c->n_files; i++)
        free(c->files[i].name);
    free(c->files);
    free_strs(c->state_names, c->n_state);
    free(c->params);
    free(c->optimizer);
    free(c->model_file);
    free(c->dir);
    free(c->tag);
    free(c->path);
    if (c->manifest)
        json_object_put(c->manifest);
    free(c);
}

static int valid_tag(const char *tag)
{
    size_t n = strlen(tag);
    return n > 0 && n < 200 && tag[0] != '.' && !strchr(tag, '/') && !strchr(tag, '\n');
}

ds_status ds_ckpt_latest(const char *dir, char **tag, ds_error *err)
{
    if (!dir || !tag) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_ckpt_latest: %s is NULL", !dir ? "dir" : "tag");
    *tag = NULL;
    char *p = path_join(dir, "latest");
    if (!p)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    struct stat sb;
    if (stat(p, &sb) != 0 && errno == ENOENT) {
        free(p);
        return DS_OK;
    }
    char *txt;
    ds_status st = read_text(p, &txt, 256, err);
    if (st == DS_OK) {
        size_t n = strlen(txt);
        while (n > 0 && (txt[n - 1] == '\n' || txt[n - 1] == ' '))
            txt[--n] = 0;
        if (!valid_tag(txt)) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: expected a tag name, found \"%.60s\"", p, txt);
            free(txt);
        } else {
            *tag = txt;
        }
    }
    free(p);
    return st;
}

/* Hash a whole file through a fixed buffer. */
static ds_status hash_file(const char *path, int64_t *bytes, uint8_t digest[32], ds_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_IO, "%s: %s", path, strerror(errno));
    ds_sha256_ctx c;
    ds_sha256_init(&c);
    static const size_t BUF = 1 << 20;
    char *buf = malloc(BUF);
    if (!buf) {
        close(fd);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    int64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return ds_error_set(err, DS_ERR_IO, "%s: read error: %s", path, strerror(e));
        }
        if (n == 0)
            break;
        ds_sha256_update(&c, buf, (size_t)n);
        total += n;
    }
    free(buf);
    close(fd);
    ds_sha256_final(&c, digest);
    *bytes = total;
    return DS_OK;
}

static json_object *jget(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static int jint(json_object *o, const char *key, int64_t *out)
{
    json_object *v = jget(o, key);
    if (!v || !json_object_is_type(v, json_type_int))
        return -1;
    *out = json_object_get_int64(v);
    return 0;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v = jget(o, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* SHA256SUMS: "<64 hex>  <name>" lines, as sha256sum writes them. */
static ds_status parse_sums(const char *path, ds_ckpt_file **files, int *n, ds_error *err)
{
    char *txt;
    ds_status st = read_text(path, &txt, 16u << 20, err); /* (65536 partitions: about 8 MiB) */
    if (st != DS_OK)
        return st;
    int cap = 8, k = 0;
    ds_ckpt_file *f = calloc((size_t)cap, sizeof *f);
    int line = 0;
    for (char *save = NULL, *l = strtok_r(txt, "\n", &save); l && f; l = strtok_r(NULL, "\n", &save)) {
        line++;
        if (strlen(l) < 67 || l[64] != ' ' || l[65] != ' ' || unhex(l, f[k].sha256) != 0 ||
            !valid_tag(l + 66)) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s:%d: expected \"<sha256 hex>  <file>\", found \"%.80s\" (file damaged?)",
                              path, line, l);
            break;
        }
        if (!(f[k].name = strdup(l + 66)))
            break;
        if (++k == cap) {
            ds_ckpt_file *g = realloc(f, (size_t)(cap *= 2) * sizeof *f);
            if (!g)
                break;
            f = g;
            memset(f + k, 0, (size_t)(cap - k) * sizeof *f);
        }
    }
    free(txt);
    if (st == DS_OK && (!f || (k < cap && k > 0 && !f[k - 1].name)))
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if (st != DS_OK) {
        for (int i = 0; f && i < k; i++)
            free(f[i].name);
        free(f);
        return st;
    }
    *files = f;
    *n = k;
    return DS_OK;
}

static int find_file(const ds_ckpt *c, const char *name)
{
    for (int i = 0; i < c->n_files; i++)
        if (strcmp(c->files[i].name, name) == 0)
            return i;
    return -1;
}

static int cmp_param_name(const void *a, const void *b)
{
    return strcmp((*(const ds_ckpt_param *const *)a)->name, (*(const ds_ckpt_param *const *)b)->name);
}

static int cmp_param_offset(const void *a, const void *b)
{
    const ds_ckpt_param *x = *(const ds_ckpt_param *const *)a, *y = *(const ds_ckpt_param *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* The tensor table's names are distinct and its ranges of the flat buffer do not overlap. */
static ds_status check_params(ds_ckpt *c, const char *mpath, ds_error *err)
{
    const ds_ckpt_param **ix = malloc((size_t)c->n_params * sizeof *ix);
    if (!ix)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->n_params; i++)
        ix[i] = &c->params[i];
    ds_status st = DS_OK;
    qsort(ix, (size_t)c->n_params, sizeof *ix, cmp_param_name);
    for (int i = 1; i < c->n_params && st == DS_OK; i++)
        if (!strcmp(ix[i - 1]->name, ix[i]->name))
            st = ds_error_set(err, DS_ERR_INVALID, "%s: params: \"%s\" appears twice (file damaged?)", mpath,
                              ix[i]->name);
    qsort(ix, (size_t)c->n_params, sizeof *ix, cmp_param_offset);
    for (int i = 1; i < c->n_params && st == DS_OK; i++)
        if (ix[i - 1]->offset + ix[i - 1]->numel > ix[i]->offset)
            st = ds_error_set(err, DS_ERR_INVALID, "%s: params \"%s\" [%lld, %lld) and \"%s\" [%lld, %lld) overlap "
                              "in the flat buffer (file damaged?)", mpath, ix[i - 1]->name,
                              (long long)ix[i - 1]->offset, (long long)(ix[i - 1]->offset + ix[i - 1]->numel),
                              ix[i]->name, (long long)ix[i]->offset, (long long)(ix[i]->offset + ix[i]->numel));
    free(ix);
    return st;
}

static ds_status parse_manifest(ds_ckpt *c, const char *mpath, ds_error *err)
{
    json_object *m = c->manifest, *v;
#define BAD(what) ds_error_set(err, DS_ERR_INVALID, "%s: %s (file damaged or not a ds checkpoint?)", mpath, what)
    int64_t x;
    const char *fmt = jstr(m, "format");
    if (!fmt || strcmp(fmt, "ds-checkpoint") != 0)
        return BAD("expected \"format\": \"ds-checkpoint\"");
    if (jint(m, "version", &x) || x < 1)
        return BAD("expected an integer \"version\"");
    if (x > DS_CKPT_FORMAT_VERSION)
        return ds_error_set(err, DS_ERR_UNSUPPORTED, "%s: format version %lld is newer than this ds reads (%d)",
                            mpath, (long long)x, DS_CKPT_FORMAT_VERSION);
    c->version = (int)x;
    static const char *const counters[] = {"global_steps", "global_samples", "micro_steps", "skipped_steps"};
    int64_t *const cv[] = {&c->global_steps, &c->global_samples, &c->micro_steps, &c->skipped_steps};
    for (int i = 0; i < 4; i++)
        if (jint(m, counters[i], cv[i]) || *cv[i] < 0) {
            json_object *f = jget(m, counters[i]);
            return ds_error_set(err, DS_ERR_INVALID, "%s: \"%s\": expected an integer >= 0, found %s (file damaged or "
                                "not a ds checkpoint?)", mpath, counters[i],
                                f ? json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN) : "nothing");
        }

    if (jint(m, "zero_stage", &x) || x < 0 || x > 3)
        return BAD("expected \"zero_stage\" 0..3");
    c->zero_stage = (int)x;
    if (jint(m, "dp_world_size", &x) || x < 1)
        return BAD("expected \"dp_world_size\" >= 1");
    c->dp_world_size = (int)x;
    if (jint(m, "mp_world_size", &x) || x != 1)
        return BAD("expected \"mp_world_size\" 1 (ds trains without model parallelism)");
    c->mp_world_size = 1;
    const char *prec = jstr(m, "precision");
    if (!prec || (strcmp(prec, "fp32") && strcmp(prec, "fp16") && strcmp(prec, "bf16")))
        return BAD("expected \"precision\" fp32, fp16 or bf16");
    snprintf(c->precision, sizeof c->precision, "%s", prec);
    json_object *opt = jget(m, "optimizer");
    const char *oname = opt ? jstr(opt, "type") : NULL;
    json_object *names = opt ? jget(opt, "state") : NULL;
    if (!oname || jint(opt, "step", &c->optimizer_step) || !names || !json_object_is_type(names, json_type_array) ||
        json_object_array_length(names) > 8)
        return BAD("expected \"optimizer\": {\"type\", \"step\", \"state\": [at most 8 names]}");
    c->optimizer = strdup(oname);
    for (size_t i = 0; i < json_object_array_length(names); i++) {
        v = json_object_array_get_idx(names, i);
        if (!json_object_is_type(v, json_type_string) || !valid_tag(json_object_get_string(v)) ||
            !strcmp(json_object_get_string(v), "fp32"))
            return BAD("optimizer.state: expected names of state buffers");
        c->state_names[c->n_state++] = strdup(json_object_get_string(v));
    }
    { /* the built-in optimizers' state is known: a list that differs is damage (a load would
       * refuse it later, and merge --optimizer would leave buffers out) */
        static const struct {
            const char *type, *state;
        } known[] = {{"adam", "exp_avg exp_avg_sq"}, {"adamw", "exp_avg exp_avg_sq"}, {"lamb", "exp_avg exp_avg_sq"},
                     {"adagrad", "sum"}, {"sgd", ""}, {"sgd", "momentum_buffer"}};
        char have[160] = "";
        for (int i = 0; i < c->n_state; i++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", i ? " " : "", c->state_names[i]);
        int typed = 0, match = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            if (!strcasecmp(oname, known[k].type)) {
                typed = 1;
                match |= !strcmp(have, known[k].state);
            }
        if (typed && !match)
            return ds_error_set(err, DS_ERR_INVALID, "%s: optimizer.state: [%s] is not %s's state (file damaged?)",
                                mpath, have, oname);
    }
    json_object *params = jget(m, "params");
    if (!params || !json_object_is_type(params, json_type_array))
        return BAD("expected a \"params\" array");
    c->n_params = (int)json_object_array_length(params);
    c->params = calloc((size_t)c->n_params + 1, sizeof *c->params);
    if (!c->params)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    json_object *part = jget(m, "partition");
    if (!part || jint(part, "numel", &c->numel) || c->numel < 0 || jint(part, "world", &x) || x < 1 || x > 1 << 20)
        return BAD("expected \"partition\": {\"numel\", \"world\", ...}");
    c->partition_world = (int)x;
    if (c->partition_world != 1 && c->partition_world != c->dp_world_size)
        return ds_error_set(err, DS_ERR_INVALID, "%s: partition.world %d with dp_world_size %d: expected 1 or the "
                            "data-parallel world size (file damaged?)", mpath, c->partition_world, c->dp_world_size);
    for (int i = 0; i < c->n_params; i++) {
        ds_ckpt_param *p = &c->params[i];
        v = json_object_array_get_idx(params, (size_t)i);
        const char *nm = jstr(v, "name");
        json_object *shape = jget(v, "shape");
        if (!nm || !*nm || strlen(nm) >= DS_NAME_MAX || !shape || !json_object_is_type(shape, json_type_array) ||
            json_object_array_length(shape) > DS_MAX_DIMS || jint(v, "offset", &p->offset) ||
            jint(v, "numel", &p->numel))
            return ds_error_set(err, DS_ERR_INVALID, "%s: params[%d]: expected {\"name\", \"shape\", \"offset\", "
                                "\"numel\"}, found %.200s", mpath, i,
                                v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : "nothing");
        snprintf(p->name, sizeof p->name, "%s", nm);
        const char *dt = jstr(v, "dtype"); /* the model file holds fp32 weights */
        if (jget(v, "dtype") && (!dt || strcmp(dt, "F32")))
            return ds_error_set(err, DS_ERR_INVALID, "%s: params[%d] \"%s\": dtype: expected \"F32\", found %s "
                                "(file damaged?)", mpath, i, p->name,
                                json_object_to_json_string_ext(jget(v, "dtype"), JSON_C_TO_STRING_PLAIN));
        p->ndim = (int)json_object_array_length(shape);
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) {
            p->shape[d] = json_object_get_int64(json_object_array_get_idx(shape, (size_t)d));
            n *= p->shape[d];
        }
        if (n != p->numel || p->offset < 0 || p->numel < 0 || p->offset + p->numel > c->numel)
            return ds_error_set(err, DS_ERR_INVALID, "%s: params[%d] \"%s\": shape (%lld elements), numel %lld and "
                                "offset %lld disagree or leave the flat buffer of %lld", mpath, i, p->name,
                                (long long)n, (long long)p->numel, (long long)p->offset, (long long)c->numel);
    }
    if (c->n_params == 0 && c->numel > 0)
        return BAD("params: empty, but the flat buffer holds elements");
    ds_status pst = check_params(c, mpath, err);
    if (pst != DS_OK)
        return pst;
    json_object *ranks = jget(part, "partitions");
    if (!ranks || !json_object_is_type(ranks, json_type_array) ||
        (int)json_object_array_length(ranks) != c->partition_world)
        return BAD("partition.partitions: expected one entry per partition");
    c->parts = calloc((size_t)c->partition_world, sizeof *c->parts);
    if (!c->parts)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    for (int r = 0; r < c->partition_world; r++) {
        v = json_object_array_get_idx(ranks, (size_t)r);
        const char *f = jstr(v, "file");
        int64_t b, e, wb, we;
        ds_ckpt_partition_range(c->numel, c->partition_world, r, &wb, &we);
        if (!f || !valid_tag(f))
            return ds_error_set(err, DS_ERR_INVALID, "%s: partition.partitions[%d].file: expected a file name in "
                                "the tag folder, found %.100s%s%s", mpath, r, f ? "\"" : "nothing", f ? f : "",
                                f ? "\"" : "");
        if (jint(v, "begin", &b) || jint(v, "end", &e) || b != wb || e != we)
            return ds_error_set(err, DS_ERR_INVALID, "%s: partition.partitions[%d]: expected [%lld, %lld) by the "
                                "partition rule (%lld elements in %d partitions)", mpath, r, (long long)wb,
                                (long long)we, (long long)c->numel, c->partition_world);
        int64_t rank;
        if (jget(v, "rank") && (jint(v, "rank", &rank) || rank != r))
            return ds_error_set(err, DS_ERR_INVALID, "%s: partition.partitions[%d].rank: expected %d", mpath, r, r);
        for (int q = 0; q < r; q++)
            if (!strcmp(c->parts[q].file, f))
                return ds_error_set(err, DS_ERR_INVALID, "%s: partitions %d and %d both name file %s", mpath, q, r, f);
        c->parts[r].begin = b;
        c->parts[r].end = e;
        c->parts[r].file = strdup(f);
        if (find_file(c, f) < 0)
            return ds_error_set(err, DS_ERR_INVALID, "%s/%s: missing from %s/" SUMS " (incomplete checkpoint)",
                                c->path, f, c->path);
    }
    const char *mf = jstr(m, "model_file");
    if (!mf || !valid_tag(mf) || find_file(c, mf) < 0)
        return BAD("\"model_file\" must name a file listed in " SUMS);
    for (int r = 0; r < c->partition_world; r++)
        if (!strcmp(c->parts[r].file, mf))
            return ds_error_set(err, DS_ERR_INVALID, "%s: partition %d's file is the model file %s", mpath, r, mf);
    c->model_file = strdup(mf);
    return DS_OK;
#undef BAD
}

/* The files' own headers agree with the manifest: the model file has each parameter, F32, of its
 * shape, and nothing else; partition r's file says it is partition r of the manifest's world over
 * the manifest's range, with fp32 and every state buffer as F32 vectors of that length. (The
 * SHA-256 sums only show that the files are the ones written; these catch a writer that wrote
 * the wrong thing, and are cheap: headers only.) */
static ds_status damaged_or(ds_ckpt *c, const char *file, ds_status s, ds_error *err)
{
    int i = find_file(c, file);
    ds_error e2 = {0};
    ds_status v = i >= 0 ? ds_ckpt_verify_file(c, i, &e2) : DS_OK;
    if (v != DS_OK) {
        if (err)
            *err = e2;
        return v;
    }
    return s;
}

static ds_status check_headers(ds_ckpt *c, ds_error *err)
{
    char *p = path_join(c->path, c->model_file);
    ds_safetensors *st = NULL;
    ds_status s = p ? ds_st_open(&st, p, err) : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    for (int i = 0; s == DS_OK && i < c->n_params; i++) {
        const ds_ckpt_param *q = &c->params[i];
        const ds_st_tensor *t = ds_st_find(st, q->name);
        int same = t && t->dtype == DS_F32 && t->ndim == q->ndim;
        for (int d = 0; same && d < q->ndim; d++)
            same = t->shape[d] == q->shape[d];
        if (!same) {
            char want[64];
            ds_shape_str(q->ndim, q->shape, want, sizeof want);
            s = ds_error_set(err, DS_ERR_INVALID, "%s: expected tensor \"%s\" F32 %s as the manifest says, %s", p,
                             q->name, want, t ? "found another dtype or shape" : "not there");
        }
    }
    if (s == DS_OK && st->n != c->n_params)
        s = ds_error_set(err, DS_ERR_INVALID, "%s: %d tensors, the manifest lists %d", p, st->n, c->n_params);
    ds_st_close(st);
    free(p);
    if (s != DS_OK)
        return damaged_or(c, c->model_file, s, err);
    for (int r = 0; s == DS_OK && r < c->partition_world; r++) {
        p = path_join(c->path, c->parts[r].file);
        st = NULL;
        s = p ? ds_st_open(&st, p, err) : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        static const char *const keys[] = {"partition", "partition_world", "begin", "end"};
        const int64_t want[] = {r, c->partition_world, c->parts[r].begin, c->parts[r].end};
        for (int k = 0; s == DS_OK && k < 4; k++) {
            char *v = ds_st_metadata_get(st, keys[k]), *end = NULL;
            long long x = v ? strtoll(v, &end, 10) : 0;
            if (!v || !*v || *end || x != want[k])
                s = ds_error_set(err, DS_ERR_INVALID, "%s: __metadata__ \"%s\": expected \"%lld\" (partition %d of "
                                 "the manifest's %d: [%lld, %lld)), found %s%.40s%s", p, keys[k], (long long)want[k],
                                 r, c->partition_world, (long long)c->parts[r].begin, (long long)c->parts[r].end,
                                 v ? "\"" : "nothing", v ? v : "", v ? "\"" : "");
            free(v);
        }
        for (int k = -1; s == DS_OK && k < c->n_state; k++) {
            const char *name = k < 0 ? "fp32" : c->state_names[k];
            const ds_st_tensor *t = ds_st_find(st, name);
            const int64_t len = c->parts[r].end - c->parts[r].begin;
            if (!t || t->dtype != DS_F32 || t->ndim != 1 || t->shape[0] != len)
                s = ds_error_set(err, DS_ERR_INVALID, "%s: expected tensor \"%s\" F32 [%lld] (partition %d of %d)", p,
                                 name, (long long)len, r, c->partition_world);
        }
        ds_st_close(st);
        free(p);
        if (s != DS_OK)
            return damaged_or(c, c->parts[r].file, s, err);
    }
    return s;
}

ds_status ds_ckpt_open(ds_ckpt **out, const char *dir, const char *tag, ds_error *err)
{
    char *latest = NULL;
    ds_status st;
    if (!tag) {
        if ((st = ds_ckpt_latest(dir, &latest, err)) != DS_OK)
            return st;
        if (!latest) {
            struct stat db;
            if (stat(dir, &db) != 0)
                return ds_error_set(err, DS_ERR_IO, "%s: %s", dir, strerror(errno));
            return ds_error_set(err, DS_ERR_IO, "%s: no checkpoint (no %s/latest)", dir, dir);
        }
        tag = latest;
    }
    if (!valid_tag(tag)) {
        free(latest);
        return ds_error_set(err, DS_ERR_INVALID, "tag \"%s\": expected a directory name", tag);
    }
    ds_ckpt *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir)) || !(c->tag = strdup(tag)) || !(c->path = path_join(dir, tag))) {
        free(latest);
        ds_ckpt_close(c);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    free(latest);
    char *sums = path_join(c->path, SUMS), *mpath = path_join(c->path, MANIFEST);
    struct stat sb;
    if (stat(c->path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        st = ds_error_set(err, DS_ERR_IO, "%s: no such checkpoint directory", c->path);
        goto done;
    }
    if ((st = parse_sums(sums, &c->files, &c->n_files, err)) != DS_OK)
        goto done;
    /* completeness: every listed file with its size is checked below; the manifest first */
    int mi = find_file(c, MANIFEST);
    if (mi < 0) {
        st = ds_error_set(err, DS_ERR_INVALID, "%s: does not list " MANIFEST " (file damaged?)", sums);
        goto done;
    }
    if ((st = ds_ckpt_verify_file(c, mi, err)) != DS_OK)
        goto done;
    if (stat(mpath, &sb) == 0)
        c->files[mi].bytes = (int64_t)sb.st_size;
    char *txt;
    if ((st = read_text(mpath, &txt, 64u << 20, err)) != DS_OK)
        goto done;
    enum json_tokener_error jerr = json_tokener_success;
    c->manifest = json_tokener_parse_verbose(txt, &jerr);
    free(txt);
    if (!c->manifest || !json_object_is_type(c->manifest, json_type_object)) {
        st = ds_error_set(err, DS_ERR_INVALID, "%s: expected a JSON object, found %s", mpath,
                          !c->manifest ? json_tokener_error_desc(jerr) : "another JSON value");
        goto done;
    }
    if ((st = parse_manifest(c, mpath, err)) != DS_OK)
        goto done;
    json_object *files = jget(c->manifest, "files");
    if (!files || !json_object_is_type(files, json_type_object)) {
        st = ds_error_set(err, DS_ERR_INVALID, "%s: expected a \"files\" object {name: bytes}", mpath);
        goto done;
    }
    /* the manifest's list and SHA256SUMS must agree, and every file must be there in full */
    json_object_object_foreach(files, fname, fbytes) {
        int i = find_file(c, fname);
        if (i < 0) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s/%s: listed in the manifest but not in " SUMS " (file damaged?)",
                              c->path, fname);
            goto done;
        }
        c->files[i].bytes = json_object_get_int64(fbytes);
        char *fp = path_join(c->path, fname);
        int ok = fp && stat(fp, &sb) == 0;
        if (!ok) {
            st = ds_error_set(err, DS_ERR_IO, "%s: missing (incomplete checkpoint)", fp ? fp : fname);
        } else if (!S_ISREG(sb.st_mode)) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: not a regular file (%s)", fp,
                              S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
        } else if ((int64_t)sb.st_size != c->files[i].bytes) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: %lld bytes, expected %lld (truncated or damaged)", fp,
                              (long long)sb.st_size, (long long)c->files[i].bytes);
        }
        free(fp);
        if (st != DS_OK)
            goto done;
    }
    for (int i = 0; i < c->n_files; i++)
        if (i != mi && !json_object_object_get_ex(files, c->files[i].name, NULL)) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s/%s: in " SUMS " but not in the manifest (file damaged?)",
                              c->path, c->files[i].name);
            goto done;
        }
    /* (a damaged file's checksum mismatch is reported rather than what the damage did to its header) */
    if ((st = check_headers(c, err)) != DS_OK)
        goto done;
    c->readers = calloc(c->partition_world > 0 ? (size_t)c->partition_world : 1, sizeof(part_reader));
    if (!c->readers) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int r = 0; r < c->partition_world; r++)
        ((part_reader *)c->readers)[r].fd = -1;
done:
    free(sums);
    free(mpath);
    if (st != DS_OK) {
        ds_ckpt_close(c);
        return st;
    }
    *out = c;
    return DS_OK;
}

ds_status ds_ckpt_verify_file(ds_ckpt *c, int i, ds_error *err)
{
    char *p = path_join(c->path, c->files[i].name);
    if (!p)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    int64_t bytes;
    uint8_t d[32];
    ds_status st = hash_file(p, &bytes, d, err);
    if (st == DS_OK && !ds_digest_equal(d, c->files[i].sha256))
        st = ds_error_set(err, DS_ERR_INVALID, "%s: checksum mismatch (file damaged?)", p);
    free(p);
    return st;
}

char *ds_ckpt_manifest_get(const ds_ckpt *c, const char *key)
{
    json_object *v = jget(c->manifest, key);
    return v ? strdup(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN)) : NULL;
}

/* Open partition r's file and find a buffer's tensor in it: F32, 1-D, the partition's length. */
static ds_status part_tensor(ds_ckpt *c, int r, const char *buffer, int64_t *file_off, ds_error *err)
{
    part_reader *pr = &((part_reader *)c->readers)[r];
    char *p = path_join(c->path, c->parts[r].file);
    if (!p)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    ds_status st = DS_OK;
    if (!pr->st) {
        if ((st = ds_st_open(&pr->st, p, err)) == DS_OK) {
            pr->data_off = (int64_t)(pr->st->data - (const uint8_t *)pr->st->map);
            if ((pr->fd = open(p, O_RDONLY | O_CLOEXEC)) < 0)
                st = ds_error_set(err, DS_ERR_IO, "%s: %s", p, strerror(errno));
        }
    }
    if (st == DS_OK) {
        const ds_st_tensor *t = ds_st_find(pr->st, buffer);
        int64_t len = c->parts[r].end - c->parts[r].begin;
        if (!t || t->dtype != DS_F32 || t->ndim != 1 || t->shape[0] != len)
            st = ds_error_set(err, DS_ERR_INVALID, "%s: expected tensor \"%s\" F32 [%lld] (partition %d of %d)",
                              p, buffer, (long long)len, r, c->partition_world);
        else
            *file_off = pr->data_off + (int64_t)t->begin;
    }
    free(p);
    return st;
}

ds_status ds_ckpt_read_range(ds_ckpt *c, const char *buffer, int64_t begin, int64_t end,
                             ds_ckpt_sink sink, void *ctx, ds_error *err)
{
    if (begin < 0 || end > c->numel || begin > end)
        return ds_error_set(err, DS_ERR_INVALID, "%s: elements [%lld, %lld) outside the checkpoint's %lld",
                            c->path, (long long)begin, (long long)end, (long long)c->numel);
    float *buf = NULL;
    ds_status st = DS_OK;
    for (int r = 0; r < c->partition_world && st == DS_OK; r++) {
        int64_t b = begin > c->parts[r].begin ? begin : c->parts[r].begin;
        int64_t e = end < c->parts[r].end ? end : c->parts[r].end;
        if (b >= e)
            continue;
        int64_t off = 0;
        if ((st = part_tensor(c, r, buffer, &off, err)) != DS_OK)
            break;
        if (!buf && !(buf = malloc(CHUNK * sizeof(float)))) {
            st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            break;
        }
        int fd = ((part_reader *)c->readers)[r].fd;
        for (int64_t x = b; x < e && st == DS_OK; x += CHUNK) {
            int64_t n = e - x < CHUNK ? e - x : CHUNK;
            size_t want = (size_t)n * sizeof(float), got = 0;
            off_t at = (off_t)(off + (x - c->parts[r].begin) * (int64_t)sizeof(float));
            while (got < want) {
                ssize_t k = pread(fd, (char *)buf + got, want - got, at + (off_t)got);
                if (k < 0 && errno == EINTR)
                    continue;
                if (k <= 0) {
                    st = ds_error_set(err, DS_ERR_IO, "%s/%s: read error: %s", c->path, c->parts[r].file,
                                      k < 0 ? strerror(errno) : "unexpected end of file");
                    break;
                }
                got += (size_t)k;
            }
            if (st == DS_OK)
                st = sink(ctx, x, buf, n, err);
        }
    }
    free(buf);
    return st;
}

/* ---- listing and pruning ------------------------------------------------------------------------ */

typedef struct tag_step {
    char *name;
    int64_t step;
} tag_step;

static int cmp_tag(const void *a, const void *b)
{
    const tag_step *x = a, *y = b;
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    return strcmp(x->name, y->name);
}

void ds_ckpt_free_list(char **names, int n)
{
    if (names)
        free_strs(names, n);
    free(names);
}

ds_status ds_ckpt_list(const char *dir, char ***tags, int *n, char ***leftovers, int *n_left,
                       ds_error *err)
{
    *tags = NULL;
    *n = 0;
    if (leftovers)
        *leftovers = NULL, *n_left = 0;
    DIR *d = opendir(dir);
    if (!d)
        return ds_error_set(err, DS_ERR_IO, "%s: %s", dir, strerror(errno));
    tag_step *t = NULL;
    char **left = NULL;
    int k = 0, kl = 0;
    struct dirent *de;
    ds_status st = DS_OK;
    while ((de = readdir(d)) && st == DS_OK) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *sub = path_join(dir, de->d_name), *man = sub ? path_join(sub, MANIFEST) : NULL;
        struct stat sb;
        if (!man) {
            st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        } else if (de->d_name[0] == '.') {
            /* what a save or a prune can leave: .tmp.TAG, .del.TAG (other dot names are not ours) */
            if (leftovers && (!strncmp(de->d_name, ".tmp.", 5) || !strncmp(de->d_name, ".del.", 5)) &&
                stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                char **g = realloc(left, (size_t)(kl + 1) * sizeof *g);
                if (g && (g[kl] = strdup(de->d_name)))
                    left = g, kl++;
                else if (g)
                    left = g;
            }
        } else if (valid_tag(de->d_name) && stat(man, &sb) == 0) {
            int64_t step = -1;
            char *txt;
            ds_error ignore = {0};
            if (read_text(man, &txt, 64u << 20, &ignore) == DS_OK) {
                json_object *m = json_tokener_parse(txt);
                if (m)
                    jint(m, "global_steps", &step);
                json_object_put(m);
                free(txt);
            }
            tag_step *g = realloc(t, (size_t)(k + 1) * sizeof *g);
            if (g && (g[k].name = strdup(de->d_name))) {
                t = g;
                t[k++].step = step;
            } else {
                if (g)
                    t = g;
                st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
            }
        }
        free(man);
        free(sub);
    }
    closedir(d);
    if (k)
        qsort(t, (size_t)k, sizeof *t, cmp_tag);
    char **names = calloc((size_t)k + 1, sizeof *names);
    for (int i = 0; i < k; i++)
        if (names)
            names[i] = t[i].name;
        else
            free(t[i].name);
    free(t);
    if (!names && st == DS_OK)
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    if (st != DS_OK) {
        ds_ckpt_free_list(names, k);
        ds_ckpt_free_list(left, kl);
        return st;
    }
    *tags = names;
    *n = k;
    if (leftovers)
        *leftovers = left, *n_left = kl;
    else
        ds_ckpt_free_list(left, kl);
    return DS_OK;
}

/* A tag's global_steps and save_seq (the commit order: one more than the largest in DIR when it
 * was saved; -1 in checkpoints from before the field, -1 steps where unreadable). */
static void tag_order(const char *dir, const char *tag, int64_t *step, int64_t *seq)
{
    *step = *seq = -1;
    char *m = path_join(dir, tag), *mp = m ? path_join(m, MANIFEST) : NULL, *txt;
    ds_error ignore = {0};
    if (mp && read_text(mp, &txt, 64u << 20, &ignore) == DS_OK) {
        json_object *j = json_tokener_parse(txt);
        if (j) {
            jint(j, "global_steps", step);
            jint(j, "save_seq", seq);
        }
        json_object_put(j);
        free(txt);
    }
    free(mp);
    free(m);
}

/* tags[n] ordered by commit: save_seq, then global_steps (checkpoints without save_seq come
 * first, in step order) */
typedef struct tag_rank {
    int64_t seq, step;
    int i;
} tag_rank;

static int cmp_rank(const void *a, const void *b)
{
    const tag_rank *x = a, *y = b;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    return x->i - y->i;
}

static tag_rank *commit_order(const char *dir, char **tags, int n)
{
    tag_rank *r = malloc(sizeof *r * (size_t)(n ? n : 1));
    if (!r)
        return NULL;
    for (int i = 0; i < n; i++) {
        tag_order(dir, tags[i], &r[i].step, &r[i].seq);
        r[i].i = i;
    }
    qsort(r, (size_t)n, sizeof *r, cmp_rank);
    return r;
}

/* save_seq for a new save into dir: one more than the largest there (0 in an empty dir) */
static int64_t next_save_seq(const char *dir)
{
    char **tags;
    int n;
    ds_error ignore = {0};
    int64_t next = 0;
    if (ds_ckpt_list(dir, &tags, &n, NULL, NULL, &ignore) != DS_OK)
        return 0;
    for (int i = 0; i < n; i++) {
        int64_t step, seq;
        tag_order(dir, tags[i], &step, &seq);
        if (seq + 1 > next)
            next = seq + 1;
    }
    ds_ckpt_free_list(tags, n);
    return next;
}

ds_status ds_ckpt_newest(const char *dir, char **tag, ds_error *err)
{
    *tag = NULL;
    char *latest, **tags;
    int n;
    ds_status st = ds_ckpt_latest(dir, &latest, err);
    if (st != DS_OK)
        return st;
    struct stat sb;
    if (stat(dir, &sb) != 0 && errno == ENOENT && !latest)
        return DS_OK;
    if ((st = ds_ckpt_list(dir, &tags, &n, NULL, NULL, err)) != DS_OK) {
        free(latest);
        return st;
    }
    /* the last committed tag: save_seq says the order of the saves (a rewound run's later save
     * of a lower step is the newer), global_steps among checkpoints from before it. latest
     * names it unless a save died between renaming its tag into place and updating latest;
     * latest wins among tags of the same order */
    const char *pick = NULL;
    tag_rank *r = n ? commit_order(dir, tags, n) : NULL;
    if (n && !r) {
        free(latest);
        ds_ckpt_free_list(tags, n);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    if (n) {
        const tag_rank *top = &r[n - 1];
        pick = tags[top->i];
        for (int i = 0; latest && i < n; i++)
            if (!strcmp(tags[r[i].i], latest) && r[i].seq == top->seq && r[i].step == top->step)
                pick = tags[r[i].i];
    }
    free(r);
    if (!pick && latest)
        st = ds_error_set(err, DS_ERR_INVALID, "%s/latest names %s, which is not a checkpoint (no %s/%s/" MANIFEST ")",
                          dir, latest, dir, latest);
    else if (pick && !(*tag = strdup(pick)))
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    free(latest);
    ds_ckpt_free_list(tags, n);
    return st;
}

ds_status ds_ckpt_prune(const char *dir, int keep, int *deleted, ds_error *err)
{
    if (deleted)
        *deleted = 0;
    if (!dir) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_ckpt_prune: dir is NULL");
    if (keep < 1)
        return ds_error_set(err, DS_ERR_INVALID, "keep_last %d: expected at least 1", keep);
    char **tags, *latest;
    int n;
    ds_status st = ds_ckpt_latest(dir, &latest, err);
    if (st != DS_OK)
        return st;
    if ((st = ds_ckpt_list(dir, &tags, &n, NULL, NULL, err)) != DS_OK) {
        free(latest);
        return st;
    }
    /* the oldest commits first (save_seq, then global_steps): delete while more than keep
     * remain; the tag in latest always stays */
    tag_rank *r = n ? commit_order(dir, tags, n) : NULL;
    if (n && !r)
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    int remaining = n;
    for (int j = 0; j < n && remaining > keep && st == DS_OK; j++) {
        const char *tg = tags[r[j].i];
        if (latest && !strcmp(tg, latest))
            continue;
        char *p = path_join(dir, tg), hidden[512];
        snprintf(hidden, sizeof hidden, ".del.%s", tg);
        char *h = path_join(dir, hidden);
        /* rename first: the tag disappears in one step, then its files go */
        if (!p || !h)
            st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        else if (rename(p, h) != 0 || rm_tree(h) != 0)
            st = ds_error_set(err, DS_ERR_IO, "%s: cannot delete: %s", p, strerror(errno));
        else {
            remaining--;
            if (deleted)
                (*deleted)++;
        }
        free(p);
        free(h);
    }
    /* what an interrupted prune left (renamed away, not yet deleted) goes too */
    DIR *d = st == DS_OK ? opendir(dir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (!strncmp(de->d_name, ".del.", 5)) {
            char *p = path_join(dir, de->d_name);
            if (p)
                rm_tree(p);
            free(p);
        }
    if (d)
        closedir(d);
    free(r);
    free(latest);
    ds_ckpt_free_list(tags, n);
    return st;
}

/* ---- writing a checkpoint --------------------------------------------------------------------- */

static json_object *jdbl(double v)
{
    if (!isfinite(v))
        return NULL; /* JSON has no inf/NaN: null */
    char b[40];
    snprintf(b, sizeof b, "%.17g", v); /* round-trips exactly through strtod */
    return json_object_new_double_s(v, b);
}

static json_object *parse_or_string(const char *txt)
{
    if (!txt)
        return NULL;
    json_object *o = json_tokener_parse(txt);
    return o ? o : json_object_new_string(txt);
}

static const char *precision_name(ds_precision p)
{
    return p == DS_PREC_FP16 ? "fp16" : p == DS_PREC_BF16 ? "bf16" : "fp32";
}

/* Write the SHA256SUMS of a tag directory (manifest first) and fsync it. */
static ds_status write_sums(const char *tagdir, const ds_ckpt_file *f, int n, ds_error *err)
{
    char *p = path_join(tagdir, SUMS);
    if (!p)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    out_file o;
    ds_status st = out_open(&o, p, err);
    for (int i = 0; i < n && st == DS_OK; i++) {
        char line[600], h[65];
        hex(f[i].sha256, h);
        int len = snprintf(line, sizeof line, "%s  %s\n", h, f[i].name);
        st = out_write(&o, line, (size_t)len, err);
    }
    if (st == DS_OK)
        st = out_close(&o, err);
    else
        out_abort(&o);
    free(p);
    return st;
}

static ds_status write_json_file(const char *path, json_object *o, ds_ckpt_file *rec, ds_error *err)
{
    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
    out_file f;
    ds_status st = out_open(&f, path, err);
    if (st == DS_OK && (st = out_write(&f, txt, strlen(txt), err)) == DS_OK &&
        (st = out_write(&f, "\n", 1, err)) == DS_OK)
        st = out_close(&f, err);
    else if (st != DS_OK && f.part)
        out_abort(&f);
    if (st == DS_OK && rec) {
        rec->bytes = f.bytes;
        memcpy(rec->sha256, f.digest, 32);
    }
    return st;
}

/* DIR/latest = tag, through a temporary file and a rename: never half a name. */
static ds_status write_latest(const char *dir, const char *tag, ds_error *err)
{
    char *p = path_join(dir, "latest");
    if (!p)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    out_file o;
    ds_status st = out_open(&o, p, err);
    if (st == DS_OK && (st = out_write(&o, tag, strlen(tag), err)) == DS_OK)
        st = out_close(&o, err);
    else if (st != DS_OK && o.part)
        out_abort(&o);
    free(p);
    return st == DS_OK ? fsync_dir(dir, err) : st;
}

/* The manifest of a checkpoint; files and partition are filled by the writer. */
typedef struct sink_out {
    out_file *o;
    ds_dtype dtype;
    void *conv;
    int keep_going;  /* a failed write is kept in st (its message in the sink's err) and the
                        sink says DS_OK: the reads feeding it are collectives every rank makes */
    ds_status st;
} sink_out;

static ds_status sink_write(void *ctx, int64_t first, const float *v, int64_t n, ds_error *err)
{
    (void)first;
    sink_out *s = ctx;
    if (s->keep_going && s->st != DS_OK)
        return DS_OK;
    ds_status st;
    if (s->dtype == DS_F32) {
        st = out_write(s->o, v, (size_t)n * sizeof(float), err);
    } else {
        uint16_t *h = s->conv;
        for (int64_t i = 0; i < n; i++)
            h[i] = s->dtype == DS_BF16 ? ds_f32_to_bf16(v[i]) : ds_f32_to_f16(v[i]);
        st = out_write(s->o, h, (size_t)n * 2, err);
    }
    if (st != DS_OK && s->keep_going) {
        s->st = st;
        return DS_OK;
    }
    return st;
}

static json_object *partition_json(int64_t numel, int world, const char *const *files)
{
    json_object *p = json_object_new_object(), *a = json_object_new_array();
    int64_t b, e, padded = ds_ckpt_partition_range(numel, world, 0, &b, &e);
    json_object_object_add(p, "rule", json_object_new_string(
        "padded = ceil(numel / (16 * world)) * 16 * world; size = padded / world; "
        "partition r = [r * size, min((r + 1) * size, numel)); padding is zero and not stored"));
    json_object_object_add(p, "alignment", json_object_new_int(DS_CKPT_ALIGN));
    json_object_object_add(p, "numel", json_object_new_int64(numel));
    json_object_object_add(p, "padded_numel", json_object_new_int64(padded));
    json_object_object_add(p, "partition_size", json_object_new_int64(padded / world));
    json_object_object_add(p, "world", json_object_new_int(world));
    for (int r = 0; r < world; r++) {
        json_object *x = json_object_new_object();
        ds_ckpt_partition_range(numel, world, r, &b, &e);
        json_object_object_add(x, "rank", json_object_new_int(r));
        json_object_object_add(x, "begin", json_object_new_int64(b));
        json_object_object_add(x, "end", json_object_new_int64(e));
        json_object_object_add(x, "padding", json_object_new_int64(padded / world - (e - b)));
        json_object_object_add(x, "file", json_object_new_string(files[r]));
        json_object_array_add(a, x);
    }
    json_object_object_add(p, "partitions", a);
    return p;
}

static void part_file_name(char *buf, size_t n, int r, const char *precision)
{
    /* DeepSpeed prefixes the optimizer files of bf16 runs with "bf16_" */
    snprintf(buf, n, "%szero_pp_rank_%d_mp_rank_00_optim_states.safetensors",
             strcmp(precision, "bf16") == 0 ? "bf16_" : "", r);
}

/* One partition file: "fp32" then each state buffer, elements [b, e), from a reader callback. */
typedef ds_status (*range_reader)(void *ctx, int buffer, int64_t b, int64_t e, ds_ckpt_sink sink,
                                  void *sctx, ds_error *err);

static ds_status write_partition_file(const char *path, int r, int world, int64_t b, int64_t e,
                                      int n_state, char *const *state_names, range_reader rd,
                                      void *rctx, ds_ckpt_file *rec, ds_error *err)
{
    st_decl d[9];
    for (int k = 0; k <= n_state; k++) {
        d[k].name = k == 0 ? "fp32" : state_names[k - 1];
        d[k].dtype = DS_F32;
        d[k].ndim = 1;
        d[k].shape[0] = e - b;
    }
    json_object *meta = json_object_new_object();
    char t[32];
    json_object_object_add(meta, "format", json_object_new_string("pt"));
    snprintf(t, sizeof t, "%d", r);
    json_object_object_add(meta, "partition", json_object_new_string(t));
    snprintf(t, sizeof t, "%d", world);
    json_object_object_add(meta, "partition_world", json_object_new_string(t));
    snprintf(t, sizeof t, "%lld", (long long)b);
    json_object_object_add(meta, "begin", json_object_new_string(t));
    snprintf(t, sizeof t, "%lld", (long long)e);
    json_object_object_add(meta, "end", json_object_new_string(t));
    out_file o;
    ds_status st = out_open(&o, path, err);
    if (st != DS_OK) {
        json_object_put(meta);
        return st;
    }
    st = st_write_header(&o, d, n_state + 1, meta, err);
    json_object_put(meta);
    sink_out s = {.o = &o, .dtype = DS_F32};
    for (int k = 0; k <= n_state && st == DS_OK; k++)
        st = rd(rctx, k - 1, b, e, sink_write, &s, err);
    if (st == DS_OK)
        st = out_close(&o, err);
    else
        out_abort(&o);
    if (st == DS_OK) {
        rec->bytes = o.bytes;
        memcpy(rec->sha256, o.digest, 32);
    }
    return st;
}

/* ---- the engine's save and load ---------------------------------------------------------------- */

typedef struct engine_reader {
    ds_engine *e;
    float *buf;
} engine_reader;

static ds_status engine_range(void *ctx, int buffer, int64_t b, int64_t e, ds_ckpt_sink sink,
                              void *sctx, ds_error *err)
{
    engine_reader *r = ctx;
    ds_status st = DS_OK;
    for (int64_t x = b; x < e && st == DS_OK; x += CHUNK) {
        int64_t n = e - x < CHUNK ? e - x : CHUNK;
        if ((st = ds_engine_read_partition(r->e, buffer, x, x + n, r->buf, err)) == DS_OK)
            st = sink(sctx, x, r->buf, n, err);
    }
    return st;
}

/* Every rank learns whether any rank failed; a rank that did not fail says where to look. */
static ds_status agree(ds_comm *comm, ds_status mine, const ds_error *my_err, ds_error *err,
                       const char *what)
{
    if (comm) {
        float f = mine != DS_OK ? 1.0f : 0.0f;
        ds_error cerr = {0};
        if (ds_comm_all_reduce(comm, &f, 1, DS_REDUCE_MAX, &cerr) != DS_OK) {
            if (err)
                *err = cerr;
            return cerr.code ? cerr.code : DS_ERR_IO;
        }
        if (f > 0 && mine == DS_OK)
            return ds_error_set(err, DS_ERR_IO, "%s: another rank failed (see its message)", what);
    }
    if (mine != DS_OK && err && my_err != err)
        *err = *my_err;
    return mine;
}

static ds_status sink_none(void *ctx, int64_t first, const float *v, int64_t n, ds_error *err)
{
    (void)ctx, (void)first, (void)v, (void)n, (void)err;
    return DS_OK;
}

/* Stage 3, ranks but 0: their part in the gathers of write_model_file (the same reads). */
static ds_status gather_model_weights(ds_engine *e, float *buf, ds_error *err)
{
    const ds_tensor_table *tab = &ds_engine_net(e)->params;
    engine_reader rd = {e, buf};
    ds_status st = DS_OK;
    for (int i = 0; i < tab->n; i++) {
        ds_status r = engine_range(&rd, DS_ENGINE_BUF_WEIGHTS, tab->t[i].offset, tab->t[i].offset + tab->t[i].numel,
                                   sink_none, NULL, err);
        if (st == DS_OK)
            st = r;
    }
    return st;
}

static ds_status write_model_file(ds_engine *e, const char *path, ds_ckpt_file *rec, float *buf,
                                  ds_error *err)
{
    const ds_tensor_table *tab = &ds_engine_net(e)->params;
    st_decl *d = calloc((size_t)tab->n + 1, sizeof *d);
    if (!d)
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    for (int i = 0; i < tab->n; i++) {
        d[i].name = tab->t[i].name;
        d[i].dtype = DS_F32;
        d[i].ndim = tab->t[i].ndim;
        memcpy(d[i].shape, tab->t[i].shape, sizeof d[i].shape);
    }
    json_object *meta = json_object_new_object();
    json_object_object_add(meta, "format", json_object_new_string("pt"));
    out_file o;
    ds_status st = out_open(&o, path, err);
    if (st == DS_OK)
        st = st_write_header(&o, d, tab->n, meta, err);
    json_object_put(meta);
    /* ZeRO stages 1-3 hold only a partition of the master weights: the model file then holds
     * the working weights every rank has (as DeepSpeed's model_states hold the 16-bit module
     * weights; in fp32 they are the master weights; at stage 3 they are gathered); the fp32
     * masters are in the partitions */
    engine_reader rd = {e, buf};
    sink_out s = {.o = &o, .dtype = DS_F32};
    ds_engine_state_info info;
    ds_engine_state_info_get(e, &info);
    int which = info.zero_stage > 0 ? DS_ENGINE_BUF_WEIGHTS : DS_ENGINE_BUF_MASTER;
    /* stage 3: the reads gather the weights, collectives the other ranks make with
     * gather_model_weights: all of them are made whatever happens to the file (a failed write
     * is kept in s.st, and the reads go on) */
    const int all = info.zero_stage == 3 && info.comm;
    s.keep_going = all;
    s.st = st; /* (a file that could not be begun takes no writes) */
    for (int i = 0; i < tab->n && (st == DS_OK || all); i++) {
        ds_error skip;
        ds_status r = engine_range(&rd, which, tab->t[i].offset, tab->t[i].offset + tab->t[i].numel, sink_write, &s,
                                   st == DS_OK ? err : &skip);
        if (st == DS_OK)
            st = r;
    }
    if (st == DS_OK)
        st = s.st;
    free(d);
    if (st == DS_OK)
        st = out_close(&o, err);
    else if (o.part)
        out_abort(&o);
    if (st == DS_OK) {
        rec->bytes = o.bytes;
        memcpy(rec->sha256, o.digest, 32);
    }
    return st;
}

static json_object *build_manifest(ds_engine *e, const ds_engine_state_info *info, const char *tag,
                                   json_object *client, const char *const *pfiles, int64_t save_seq)
{
    ds_engine_scalars s;
    ds_engine_get_scalars(e, &s);
    const ds_config *cfg = ds_engine_config(e);
    const ds_net *net = ds_engine_net(e);
    json_object *m = json_object_new_object(), *o;
    json_object_object_add(m, "format", json_object_new_string("ds-checkpoint"));
    json_object_object_add(m, "version", json_object_new_int(DS_CKPT_FORMAT_VERSION));
    json_object_object_add(m, "ds_version", json_object_new_string(DS_VERSION));
    json_object_object_add(m, "tag", json_object_new_string(tag));
    json_object_object_add(m, "save_seq", json_object_new_int64(save_seq));
    json_object_object_add(m, "global_steps", json_object_new_int64(s.global_steps));
    json_object_object_add(m, "global_samples", json_object_new_int64(s.global_samples));
    json_object_object_add(m, "micro_steps", json_object_new_int64(s.micro_steps));
    json_object_object_add(m, "skipped_steps", json_object_new_int64(s.skipped_steps));
    json_object_object_add(m, "train_batch_size", json_object_new_int64(cfg->train_batch_size));
    json_object_object_add(m, "zero_stage", json_object_new_int(info->zero_stage));
    json_object_object_add(m, "dp_world_size", json_object_new_int(info->world_size));
    json_object_object_add(m, "mp_world_size", json_object_new_int(1));
    json_object_object_add(m, "precision", json_object_new_string(precision_name(info->precision)));
    json_object_object_add(m, "model_file", json_object_new_string(MODEL_FILE));
    o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string(info->optimizer));
    json_object_object_add(o, "step", json_object_new_int64(s.optimizer_step));
    json_object *names = json_object_new_array();
    for (int k = 0; k < info->n_state; k++)
        json_object_array_add(names, json_object_new_string(info->state_names[k]));
    json_object_object_add(o, "state", names);
    json_object_object_add(m, "optimizer", o);
    o = json_object_new_object();
    json_object_object_add(o, "dynamic", json_object_new_boolean(s.scaler.dynamic));
    json_object_object_add(o, "cur_scale", jdbl(s.scaler.scale));
    json_object_object_add(o, "min_scale", jdbl(s.scaler.min_scale));
    json_object_object_add(o, "scale_window", json_object_new_int64(s.scaler.window));
    json_object_object_add(o, "hysteresis", json_object_new_int(s.scaler.hysteresis));
    json_object_object_add(o, "cur_hysteresis", json_object_new_int(s.scaler.cur_hysteresis));
    json_object_object_add(o, "consecutive_hysteresis", json_object_new_int(s.scaler.consecutive));
    json_object_object_add(o, "cur_iter", json_object_new_int64(s.scaler.iter));
    json_object_object_add(o, "last_overflow_iter", json_object_new_int64(s.scaler.last_overflow_iter));
    json_object_object_add(o, "last_step_scale", jdbl(s.last_step_scale));
    json_object_object_add(o, "last_step_applied", json_object_new_boolean(s.applied));
    json_object_object_add(m, "loss_scaler", o);
    o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string(ds_sched_name(cfg->scheduler.type)));
    json_object_object_add(o, "last_batch_iteration", json_object_new_int64(s.sched_iter));
    json_object_object_add(o, "lr", jdbl(s.lr));
    json_object_object_add(o, "mom", jdbl(s.mom));
    json_object_object_add(o, "last_applied_lr", jdbl(s.applied_lr));
    json_object_object_add(o, "last_applied_mom", jdbl(s.applied_mom));
    json_object_object_add(m, "lr_scheduler", o);
    o = json_object_new_object();
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s.seed);
    json_object_object_add(o, "seed", json_object_new_string(seed));
    json_object_object_add(o, "dropout", json_object_new_string(
        "counter-based: ds_hash64(seed ^ micro_steps * 0x9e3779b97f4a7c15, element); no other state"));
    json_object_object_add(o, "micro_steps", json_object_new_int64(s.micro_steps));
    json_object_object_add(m, "rng", o);
    json_object_object_add(m, "last_loss", jdbl(s.last_loss));
    json_object_object_add(m, "global_grad_norm", jdbl(s.grad_norm));
    json_object *params = json_object_new_array();
    for (int i = 0; i < net->params.n; i++) {
        const ds_tensor_info *t = &net->params.t[i];
        json_object *p = json_object_new_object(), *shape = json_object_new_array();
        json_object_object_add(p, "name", json_object_new_string(t->name));
        for (int d = 0; d < t->ndim; d++)
            json_object_array_add(shape, json_object_new_int64(t->shape[d]));
        json_object_object_add(p, "shape", shape);
        json_object_object_add(p, "dtype", json_object_new_string("F32"));
        json_object_object_add(p, "offset", json_object_new_int64(t->offset));
        json_object_object_add(p, "numel", json_object_new_int64(t->numel));
        json_object_array_add(params, p);
    }
    json_object_object_add(m, "params", params);
    json_object_object_add(m, "partition", partition_json(info->numel, info->partition_world, pfiles));
    json_object_object_add(m, "ds_config", parse_or_string(cfg->json_text));
    json_object_object_add(m, "network", parse_or_string(net->json_text));
    json_object_object_add(m, "client_state", client ? json_object_get(client) : json_object_new_object());
    return m;
}

ds_status ds_engine_save_checkpoint(ds_engine *e, const char *dir, const char *tag,
                                    const char *client_state_json, ds_error *err)
{
    if (!e || !dir) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_save_checkpoint: %s is NULL", !e ? "the engine" : "dir");
    ds_engine_state_info info;
    ds_engine_state_info_get(e, &info);
    ds_engine_scalars sc;
    ds_engine_get_scalars(e, &sc);
    char tagbuf[64];
    if (!tag) {
        snprintf(tagbuf, sizeof tagbuf, "global_step%lld", (long long)sc.global_steps);
        tag = tagbuf;
    }
    /* checks every rank makes alike (same arguments, same engine state): no collective needed */
    if (!valid_tag(tag))
        return ds_error_set(err, DS_ERR_INVALID, "checkpoint tag \"%.60s%s\": expected a non-empty name of under "
                            "200 characters, without '/' or a line break, that does not start with '.' (found %zu "
                            "characters)", tag, strlen(tag) > 60 ? "..." : "", strlen(tag));
    if (!ds_engine_at_boundary(e))
        return ds_error_set(err, DS_ERR_INVALID, "save_checkpoint: call it between effective batches (after the "
                            "step at the accumulation boundary)");
    json_object *client = NULL;
    if (client_state_json && (!(client = json_tokener_parse(client_state_json)) ||
                              !json_object_is_type(client, json_type_object))) {
        json_object_put(client);
        return ds_error_set(err, DS_ERR_INVALID, "client state: expected a JSON object");
    }
    char *final = path_join(dir, tag), tmpname[256], *tmp;
    snprintf(tmpname, sizeof tmpname, ".tmp.%s", tag);
    tmp = path_join(dir, tmpname);
    float *buf = malloc(CHUNK * sizeof(float));
    ds_ckpt_file recs[2];
    memset(recs, 0, sizeof recs);
    char pname[160];
    ds_error lerr = {0};
    ds_status st = !final || !tmp || !buf ? ds_error_set(&lerr, DS_ERR_NOMEM, "out of memory") : DS_OK;
    struct stat sb;
    /* 1. rank 0 prepares DIR/.tmp.TAG (a leftover of an interrupted save of TAG goes first) */
    if (st == DS_OK && info.rank == 0) {
        if ((st = ds_mkdir_p(dir, &lerr)) == DS_OK && stat(final, &sb) == 0)
            st = ds_error_set(&lerr, DS_ERR_INVALID, "%s: exists; not overwriting a checkpoint", final);
        if (st == DS_OK && rm_tree(tmp) != 0)
            st = ds_error_set(&lerr, DS_ERR_IO, "%s: cannot remove the leftover of an interrupted save: %s", tmp,
                              strerror(errno));
        if (st == DS_OK && mkdir(tmp, 0755) != 0)
            st = ds_error_set(&lerr, DS_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    char what[600];
    snprintf(what, sizeof what, "save_checkpoint %s", final ? final : tag);
    if ((st = agree(info.comm, st, &lerr, err, what)) != DS_OK)
        goto out;
    /* 2. every rank writes its files */
    engine_reader rd = {e, buf};
    if (info.rank == 0) {
        char *p = path_join(tmp, MODEL_FILE);
        st = p ? write_model_file(e, p, &recs[0], buf, &lerr) : ds_error_set(&lerr, DS_ERR_NOMEM, "out of memory");
        free(p);
    } else if (info.zero_stage == 3) {
        st = gather_model_weights(e, buf, &lerr);
    }
    if (st == DS_OK && info.partition_rank >= 0) {
        part_file_name(pname, sizeof pname, info.partition_rank, precision_name(info.precision));
        char *p = path_join(tmp, pname);
        st = p ? write_partition_file(p, info.partition_rank, info.partition_world, info.begin, info.end, info.n_state,
                                      (char *const *)info.state_names, engine_range, &rd, &recs[1], &lerr)
               : ds_error_set(&lerr, DS_ERR_NOMEM, "out of memory");
        free(p);
    }
    st = agree(info.comm, st, &lerr, err, what);
    /* 3. the digests of the other ranks' partition files travel to rank 0 */
    int PW = info.partition_world;
    ds_ckpt_file *files = calloc((size_t)PW + 2, sizeof *files);
    char **names = calloc((size_t)PW, sizeof *names);
    if (st == DS_OK && (!files || !names))
        st = ds_error_set(&lerr, DS_ERR_NOMEM, "out of memory");
    for (int r = 0; r < PW && st == DS_OK; r++) {
        char nm[160];
        part_file_name(nm, sizeof nm, r, precision_name(info.precision));
        names[r] = strdup(nm);
        uint8_t msg[40];
        if (r == info.partition_rank) {
            memcpy(msg, recs[1].sha256, 32);
            memcpy(msg + 32, &recs[1].bytes, 8);
        }
        /* ZeRO: partition r is stored by rank r */
        if (r != 0 && info.comm && (st = ds_comm_broadcast(info.comm, msg, sizeof msg, r, &lerr)) != DS_OK)
            break;
        files[2 + r].name = names[r];
        memcpy(files[2 + r].sha256, msg, 32);
        memcpy(&files[2 + r].bytes, msg + 32, 8);
    }
    if (st != DS_OK) {
        if (err)
            *err = lerr;
        if (info.rank == 0)
            rm_tree(tmp);
        goto out2;
    }
    /* 4. rank 0: manifest, SHA256SUMS, fsync, rename to TAG, then latest */
    if (info.rank == 0) {
        json_object *m = build_manifest(e, &info, tag, client, (const char *const *)names, next_save_seq(dir));
        json_object *fl = json_object_new_object();
        files[1] = recs[0];
        files[1].name = (char *)MODEL_FILE;
        for (int i = 1; i < PW + 2; i++)
            json_object_object_add(fl, files[i].name, json_object_new_int64(files[i].bytes));
        json_object_object_add(m, "files", fl);
        char *mp = path_join(tmp, MANIFEST);
        files[0].name = (char *)MANIFEST;
        st = mp ? write_json_file(mp, m, &files[0], &lerr) : ds_error_set(&lerr, DS_ERR_NOMEM, "out of memory");
        free(mp);
        json_object_put(m);
        if (st == DS_OK)
            st = write_sums(tmp, files, PW + 2, &lerr);
        if (st == DS_OK)
            st = fsync_dir(tmp, &lerr);
        if (st == DS_OK && rename(tmp, final) != 0)
            st = ds_error_set(&lerr, DS_ERR_IO, "%s: cannot rename %s to it: %s", final, tmp, strerror(errno));
        if (st == DS_OK)
            st = fsync_dir(dir, &lerr);
        if (st == DS_OK)
            st = write_latest(dir, tag, &lerr);
        if (st != DS_OK)
            rm_tree(tmp);
    }
    st = agree(info.comm, st, &lerr, err, what);
out2:
    for (int r = 0; names && r < PW; r++)
        free(names[r]);
    free(names);
    free(files);
out:
    json_object_put(client);
    free(buf);
    free(final);
    free(tmp);
    return st;
}

typedef struct engine_writer {
    ds_engine *e;
    int buffer;
} engine_writer;

static ds_status sink_engine(void *ctx, int64_t first, const float *v, int64_t n, ds_error *err)
{
    engine_writer *w = ctx;
    return ds_engine_write_partition(w->e, w->buffer, first, first + n, v, err);
}

static ds_status check_compatible(ds_engine *e, const ds_engine_state_info *info, ds_ckpt *c, ds_error *err)
{
    const ds_tensor_table *tab = &ds_engine_net(e)->params;
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/" MANIFEST, c->path);
    for (int i = 0; i < tab->n && i < c->n_params; i++) {
        const ds_tensor_info *t = &tab->t[i];
        const ds_ckpt_param *p = &c->params[i];
        int same = !strcmp(t->name, p->name) && t->ndim == p->ndim && t->offset == p->offset;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same) {
            char a[64], b[64];
            ds_shape_str(p->ndim, p->shape, a, sizeof a);
            ds_shape_str(t->ndim, t->shape, b, sizeof b);
            return ds_error_set(err, DS_ERR_INVALID, "%s: params[%d] is %s %s at %lld; the network has %s %s at %lld",
                                mpath, i, p->name, a, (long long)p->offset, t->name, b, (long long)t->offset);
        }
    }
    if (c->numel != info->numel || c->n_params != tab->n)
        return ds_error_set(err, DS_ERR_INVALID, "%s: the checkpoint's network has %d tensors in %lld elements; "
                            "this one %d in %lld", mpath, c->n_params, (long long)c->numel, tab->n,
                            (long long)info->numel);
    int same = strcasecmp(c->optimizer, info->optimizer) == 0 && c->n_state == info->n_state;
    for (int k = 0; same && k < c->n_state; k++)
        same = !strcmp(c->state_names[k], info->state_names[k]);
    if (!same)
        return ds_error_set(err, DS_ERR_INVALID, "%s: saved with optimizer %s (%d state buffers); the config "
                            "selects %s (%d)", mpath, c->optimizer, c->n_state, info->optimizer, info->n_state);
    return DS_OK;
}

/* ---- the manifest's scalars, strictly typed: a wrong type or a missing key names the key ---- */

typedef struct mread {
    const ds_ckpt *c;
    ds_error *err;
    ds_status st;
} mread;

/* o[key]: *present says whether the key is there (json-c gives a JSON null as NULL) */
static json_object *mget(json_object *o, const char *key, int *present)
{
    json_object *v = NULL;
    *present = o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v);
    return v;
}

static void mbad(mread *r, const char *key, const char *want, json_object *v, int present)
{
    if (r->st != DS_OK)
        return;
    r->st = ds_error_set(r->err, DS_ERR_INVALID, "%s/" MANIFEST ": %s: expected %s, found %s", r->c->path, key, want,
                         v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN)
                           : present ? "null" : "nothing (missing)");
}

/* a number (null: NaN where nullable, as the writer stores a non-finite value) */
static double mnum(mread *r, json_object *o, const char *blk, const char *key, int nullable)
{
    int present;
    json_object *v = mget(o, key, &present);
    char path[160];
    snprintf(path, sizeof path, "%s%s%s", blk, *blk ? "." : "", key);
    if (present && !v && nullable)
        return NAN;
    if (!v || !(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int))) {
        mbad(r, path, nullable ? "a number or null" : "a number", v, present);
        return NAN;
    }
    return json_object_get_double(v);
}

/* blk.key of JSON type t, or NULL after naming what was expected (want) and found */
static json_object *mtyped(mread *r, json_object *o, const char *blk, const char *key, json_type t, const char *want)
{
    int present;
    json_object *v = mget(o, key, &present);
    if (v && json_object_is_type(v, t))
        return v;
    char path[160];
    snprintf(path, sizeof path, "%s.%s", blk, key);
    mbad(r, path, want, v, present);
    return NULL;
}

static int64_t mint(mread *r, json_object *o, const char *blk, const char *key)
{
    json_object *v = mtyped(r, o, blk, key, json_type_int, "an integer");
    return v ? json_object_get_int64(v) : 0;
}

static int mbool(mread *r, json_object *o, const char *blk, const char *key)
{
    json_object *v = mtyped(r, o, blk, key, json_type_boolean, "true or false");
    return v ? json_object_get_boolean(v) : 0;
}

/* The engine state the checkpoint holds, into *s (the engine's own scalars, then the
 * manifest's), every key checked; then what ds_engine_set_scalars would check. Nothing of
 * the engine changes. */
static ds_status manifest_scalars(ds_engine *e, const ds_engine_state_info *info, const ds_ckpt *c,
                                  ds_engine_scalars *s, ds_error *err)
{
    ds_engine_get_scalars(e, s);
    mread r = {c, err, DS_OK};
    json_object *m = c->manifest, *ls = jget(m, "loss_scaler"), *sch = jget(m, "lr_scheduler"),
                *rng = jget(m, "rng");
    s->global_steps = c->global_steps;
    s->global_samples = c->global_samples;
    s->micro_steps = c->micro_steps;
    /* saved between effective batches; with another gradient_accumulation_steps now (the same
     * train batch from another micro-batch) the count restarts on this run's boundaries, as
     * DeepSpeed's, which does not save it */
    const int64_t gas = ds_engine_config(e)->grad_accum;
    if (gas > 0 && s->micro_steps % gas != 0)
        s->micro_steps = c->global_steps * gas;
    s->skipped_steps = c->skipped_steps;
    s->optimizer_step = c->optimizer_step;
    if (!ls || !json_object_is_type(ls, json_type_object))
        mbad(&r, "loss_scaler", "an object", ls, ls != NULL);
    /* the loss scaler belongs to the precision: a checkpoint of another one keeps ours */
    if (r.st == DS_OK && !strcmp(c->precision, precision_name(info->precision))) {
        const char *L = "loss_scaler";
        s->scaler.dynamic = mbool(&r, ls, L, "dynamic");
        s->scaler.scale = mnum(&r, ls, L, "cur_scale", 0);
        s->scaler.min_scale = mnum(&r, ls, L, "min_scale", 0);
        s->scaler.window = mint(&r, ls, L, "scale_window");
        s->scaler.hysteresis = (int)mint(&r, ls, L, "hysteresis");
        s->scaler.cur_hysteresis = (int)mint(&r, ls, L, "cur_hysteresis");
        s->scaler.consecutive = (int)mint(&r, ls, L, "consecutive_hysteresis");
        s->scaler.iter = mint(&r, ls, L, "cur_iter");
        s->scaler.last_overflow_iter = mint(&r, ls, L, "last_overflow_iter");
        s->last_step_scale = mnum(&r, ls, L, "last_step_scale", 1);
        s->applied = mbool(&r, ls, L, "last_step_applied");
    }
    if (!sch || !json_object_is_type(sch, json_type_object))
        mbad(&r, "lr_scheduler", "an object", sch, sch != NULL);
    const char *S = "lr_scheduler";
    s->sched_iter = mint(&r, sch, S, "last_batch_iteration");
    s->lr = mnum(&r, sch, S, "lr", 0);
    s->mom = mnum(&r, sch, S, "mom", 1);
    s->applied_lr = mnum(&r, sch, S, "last_applied_lr", 1);
    s->applied_mom = mnum(&r, sch, S, "last_applied_mom", 1);
    s->last_loss = mnum(&r, m, "", "last_loss", 1);
    s->grad_norm = mnum(&r, m, "", "global_grad_norm", 1);
    if (isnan(s->grad_norm))
        s->grad_norm = -1;
    json_object *sv = rng ? jget(rng, "seed") : NULL;
    const char *seed = sv && json_object_is_type(sv, json_type_string) ? json_object_get_string(sv) : NULL;
    char *end = NULL;
    errno = 0;
    unsigned long long sd = seed && *seed >= '0' && *seed <= '9' ? strtoull(seed, &end, 10) : 0;
    if (!seed || !end || *end || errno)
        mbad(&r, "rng.seed", "a decimal integer as a string", sv, sv != NULL);
    else
        s->seed = sd;
    if (r.st != DS_OK)
        return r.st;
    ds_status st = ds_engine_check_scalars(e, s, err);
    if (st != DS_OK)
        ds_error_prefix(err, "%s/" MANIFEST ": ", c->path);
    return st;
}

static ds_status load_local(ds_engine *e, const ds_engine_state_info *info, const char *dir,
                            const char *tag, char **client, ds_error *err)
{
    ds_ckpt *c;
    char *newest = NULL;
    ds_status st;
    if (!tag) {
        if ((st = ds_ckpt_newest(dir, &newest, err)) != DS_OK)
            return st;
        if (!newest)
            return ds_error_set(err, DS_ERR_IO, "%s: no checkpoint (no %s/latest)", dir, dir);
        tag = newest;
    }
    st = ds_ckpt_open(&c, dir, tag, err);
    free(newest);
    if (st != DS_OK)
        return st;
    if ((st = check_compatible(e, info, c, err)) != DS_OK)
        goto done;
    /* the manifest's scalars before any weight: a bad one leaves the engine as it was */
    ds_engine_scalars s;
    if ((st = manifest_scalars(e, info, c, &s, err)) != DS_OK)
        goto done;
    /* the files this rank reads are verified before a byte of them is used, and rank 0 checks the
     * model file, which a resume does not read (the master weights come from the partitions) but
     * which is the checkpoint's weights for every other use (ds-train(1): every file is checked);
     * the caller's agree() makes every rank refuse a damaged checkpoint together */
    const int model_i = find_file(c, c->model_file);
    st = info->rank != 0 ? DS_OK
       : model_i >= 0    ? ds_ckpt_verify_file(c, model_i, err)
                         : ds_error_set(err, DS_ERR_INVALID, "%s: %s is not in " SUMS, c->path, c->model_file);
    for (int r = 0; r < c->partition_world && st == DS_OK; r++)
        if (c->parts[r].begin < info->hold_end && c->parts[r].end > info->hold_begin)
            st = ds_ckpt_verify_file(c, find_file(c, c->parts[r].file), err);
    for (int k = -1; k < c->n_state && st == DS_OK; k++) {
        engine_writer w = {e, k < 0 ? DS_ENGINE_BUF_MASTER : k};
        st = ds_ckpt_read_range(c, k < 0 ? "fp32" : c->state_names[k], info->hold_begin, info->hold_end,
                                sink_engine, &w, err);
    }
    { /* a collective (ZeRO's gathers): every rank makes it, whatever its reads gave */
        ds_error serr;
        ds_status sst = ds_engine_sync_weights(e, st == DS_OK ? err : &serr);
        st = st != DS_OK ? st : sst;
    }
    if (st != DS_OK)
        goto done;
    if ((st = ds_engine_set_scalars(e, &s, err)) != DS_OK) {
        ds_error_prefix(err, "%s/" MANIFEST ": ", c->path);
        goto done;
    }
    if (client) {
        char *cs = ds_ckpt_manifest_get(c, "client_state");
        *client = cs ? cs : strdup("{}");
    }
done:
    ds_ckpt_close(c);
    return st;
}

ds_status ds_engine_load_checkpoint(ds_engine *e, const char *dir, const char *tag,
                                    char **client_state_json, ds_error *err)
{
    if (!e || !dir) /* libds(3): a NULL pointer argument is an error, never a crash */
        return ds_error_set(err, DS_ERR_INVALID, "ds_engine_load_checkpoint: %s is NULL", !e ? "the engine" : "dir");
    ds_engine_state_info info;
    ds_engine_state_info_get(e, &info);
    if (client_state_json)
        *client_state_json = NULL;
    ds_error lerr = {0};
    ds_status st = ds_engine_at_boundary(e) ? load_local(e, &info, dir, tag, client_state_json, &lerr)
                 : ds_error_set(&lerr, DS_ERR_INVALID, "load_checkpoint: call it between effective batches");
    char what[600];
    snprintf(what, sizeof what, "load_checkpoint %s", dir);
    st = agree(info.comm, st, &lerr, err, what);
    if (st != DS_OK && client_state_json) {
        free(*client_state_json);
        *client_state_json = NULL;
    }
    return st;
}

/* ---- offline tools: export (merge, convert) and reshard ---------------------------------------- */

static ds_status check_out(const char *out, int force, ds_error *err)
{
    struct stat sb;
    if (!force && lstat(out, &sb) == 0)
        return ds_error_set(err, DS_ERR_INVALID, "%s: exists; not overwriting it (use --force)", out);
    return DS_OK;
}

ds_status ds_ckpt_export(ds_ckpt *c, const char *out, ds_dtype dtype, int with_optimizer,
                         int force, ds_error *err)
{
    if (dtype != DS_F32 && dtype != DS_F16 && dtype != DS_BF16)
        return ds_error_set(err, DS_ERR_INVALID, "export: dtype %s: expected F32, F16 or BF16", ds_dtype_name(dtype));
    ds_status st = check_out(out, force, err);
    if (st != DS_OK)
        return st;
    int per = 1 + (with_optimizer ? c->n_state : 0);
    int n = c->n_params * per;
    st_decl *d = calloc((size_t)n + 1, sizeof *d);
    char **names = calloc((size_t)n + 1, sizeof *names);
    void *conv = malloc(CHUNK * 2);
    if (!d || !names || !conv) {
        free(d);
        free(names);
        free(conv);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; k < per; k++)
        for (int i = 0; i < c->n_params; i++) {
            int j = k * c->n_params + i;
            const ds_ckpt_param *p = &c->params[i];
            size_t len = strlen(p->name) + 64;
            names[j] = malloc(len);
            if (names[j]) {
                if (k == 0)
                    snprintf(names[j], len, "%s", p->name);
                else
                    snprintf(names[j], len, "optimizer.%s.%s", c->state_names[k - 1], p->name);
            }
            d[j].name = names[j];
            d[j].dtype = k == 0 ? dtype : DS_F32;
            d[j].ndim = p->ndim;
            memcpy(d[j].shape, p->shape, sizeof d[j].shape);
        }
    json_object *meta = json_object_new_object();
    char t[64];
    json_object_object_add(meta, "format", json_object_new_string("pt"));
    json_object_object_add(meta, "tag", json_object_new_string(c->tag));
    snprintf(t, sizeof t, "%lld", (long long)c->global_steps);
    json_object_object_add(meta, "global_steps", json_object_new_string(t));
    if (with_optimizer) {
        json_object_object_add(meta, "optimizer", json_object_new_string(c->optimizer));
        snprintf(t, sizeof t, "%lld", (long long)c->optimizer_step);
        json_object_object_add(meta, "optimizer_step", json_object_new_string(t));
    }
    out_file o;
    st = out_open(&o, out, err);
    o.noreplace = !force;
    if (st == DS_OK)
        st = st_write_header(&o, d, n, meta, err);
    json_object_put(meta);
    sink_out s = {.o = &o, .conv = conv};
    for (int j = 0; j < n && st == DS_OK; j++) {
        int k = j / c->n_params;
        const ds_ckpt_param *p = &c->params[j % c->n_params];
        s.dtype = d[j].dtype;
        st = ds_ckpt_read_range(c, k == 0 ? "fp32" : c->state_names[k - 1], p->offset, p->offset + p->numel,
                                sink_write, &s, err);
    }
    if (st == DS_OK)
        st = out_close(&o, err);
    else if (o.part)
        out_abort(&o);
    if (st == DS_OK) {
        /* the rename over an existing file (force) is atomic; make it durable */
        char dir[4096];
        const char *slash = strrchr(out, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out) + (slash == out) : 1, slash ? out : ".");
        st = fsync_dir(dir, err);
    }
    for (int j = 0; j < n; j++)
        free(names[j]);
    free(names);
    free(d);
    free(conv);
    return st;
}

typedef struct ckpt_reader {
    ds_ckpt *c;
} ckpt_reader;

static ds_status ckpt_range(void *ctx, int buffer, int64_t b, int64_t e, ds_ckpt_sink sink,
                            void *sctx, ds_error *err)
{
    ds_ckpt *c = ((ckpt_reader *)ctx)->c;
    return ds_ckpt_read_range(c, buffer < 0 ? "fp32" : c->state_names[buffer], b, e, sink, sctx, err);
}

static ds_status copy_file(const char *src, const char *dst, ds_ckpt_file *rec, ds_error *err)
{
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_IO, "%s: %s", src, strerror(errno));
    char *buf = malloc(1 << 20);
    out_file o;
    ds_status st = buf ? out_open(&o, dst, err) : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    while (st == DS_OK) {
        ssize_t n = read(fd, buf, 1 << 20);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            st = ds_error_set(err, DS_ERR_IO, "%s: read error: %s", src, strerror(errno));
        if (n <= 0)
            break;
        st = out_write(&o, buf, (size_t)n, err);
    }
    close(fd);
    free(buf);
    if (st == DS_OK)
        st = out_close(&o, err);
    else if (buf && o.part)
        out_abort(&o);
    if (st == DS_OK) {
        rec->bytes = o.bytes;
        memcpy(rec->sha256, o.digest, 32);
    }
    return st;
}

/* An existing OUT that reshard --force may replace, whole: an empty directory, or a checkpoint
 * directory that holds nothing but checkpoints (latest, tags with a manifest, the leftovers of
 * interrupted saves and prunes, ds-train's lock file) and that no ds-train run is saving into
 * (its lock); anything else is somebody's, and stays: a directory with other files in it
 * (notes, a tensorboard folder) is refused, naming them. */
ds_status ds_ckpt_check_output_dir(const char *out, ds_error *err)
{
    struct stat sb;
    if (lstat(out, &sb) != 0)
        return DS_OK;
    if (!S_ISDIR(sb.st_mode))
        return ds_error_set(err, DS_ERR_INVALID, "%s: exists and is not a directory; not replacing it", out);
    char *lp = path_join(out, "latest"), **tags = NULL;
    int n = 0, is_ckpt = lp && stat(lp, &sb) == 0 && S_ISREG(sb.st_mode), empty = 1;
    free(lp);
    ds_error ignore = {0};
    if (ds_ckpt_list(out, &tags, &n, NULL, NULL, &ignore) != DS_OK)
        n = 0, tags = NULL;
    is_ckpt |= n > 0;
    char others[512] = "";
    int n_others = 0;
    DIR *d = opendir(out);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        const char *nm = de->d_name;
        if (!strcmp(nm, ".") || !strcmp(nm, ".."))
            continue;
        empty = 0;
        int ours = !strcmp(nm, "latest") || !strncmp(nm, "latest.part.", 12) || !strcmp(nm, ".ds-train.lock") ||
                   !strncmp(nm, ".tmp.", 5) || !strncmp(nm, ".del.", 5);
        for (int i = 0; i < n && !ours; i++)
            ours = !strcmp(nm, tags[i]);
        if (!ours && n_others++ < 3) {
            size_t k = strlen(others);
            snprintf(others + k, sizeof others - k, "%s%.100s", k ? ", " : "", nm);
        }
    }
    if (d)
        closedir(d);
    ds_ckpt_free_list(tags, n);
    if (!is_ckpt && !empty)
        return ds_error_set(err, DS_ERR_INVALID, "%s: exists and is not a checkpoint directory (no latest, no tag "
                            "with " MANIFEST "); not replacing it, even with --force", out);
    if (n_others)
        return ds_error_set(err, DS_ERR_INVALID, "%s: holds more than checkpoints (%s%s); --force replaces the whole "
                            "directory, so it is not replaced: give another OUT", out, others,
                            n_others > 3 ? ", ..." : "");
    char *lk = path_join(out, ".ds-train.lock");
    int fd = lk ? open(lk, O_RDONLY | O_CLOEXEC) : -1;
    int busy = fd >= 0 && flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK; /* (a run holds it LOCK_EX) */
    if (fd >= 0)
        close(fd);
    free(lk);
    if (busy)
        return ds_error_set(err, DS_ERR_INVALID, "%s: a ds-train run is saving checkpoints there (it holds "
                            "%s/.ds-train.lock); not replacing it, even with --force", out, out);
    return DS_OK;
}

ds_status ds_ckpt_reshard(ds_ckpt *c, const char *out_arg, int dp, int force, ds_error *err)
{
    if (dp < 1 || dp > 1 << 16)
        return ds_error_set(err, DS_ERR_INVALID, "reshard: --dp %d: expected 1 .. 65536", dp);
    /* OUT without trailing slashes: its temporary and set-aside names are siblings of it */
    char out[4096];
    size_t ol = strlen(out_arg);
    if (ol >= sizeof out)
        return ds_error_set(err, DS_ERR_INVALID, "reshard: %s: path too long", out_arg);
    memcpy(out, out_arg, ol + 1);
    while (ol > 1 && out[ol - 1] == '/')
        out[--ol] = 0;
    ds_status st = check_out(out, force, err);
    if (st == DS_OK)
        st = ds_ckpt_check_output_dir(out, err);
    if (st != DS_OK)
        return st;
    struct stat sb0;
    const int had_at_start = lstat(out, &sb0) == 0; /* (what --force was allowed to replace) */
    /* everything goes to OUT.tmp.PID first; OUT appears (or is replaced) by renames at the end */
    size_t len = strlen(out) + 64;
    char *tmp = malloc(len), *old = malloc(len), *tagdir = NULL;
    ds_ckpt_file *files = calloc((size_t)dp + 2, sizeof *files);
    char **names = calloc((size_t)dp, sizeof *names);
    if (!tmp || !old || !files || !names) {
        st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        goto done;
    }
    snprintf(tmp, len, "%s.tmp.%ld", out, (long)getpid());
    snprintf(old, len, "%s.old.%ld", out, (long)getpid());
    rm_tree(tmp);
    if ((st = ds_mkdir_p(tmp, err)) != DS_OK || !(tagdir = path_join(tmp, c->tag)))
        goto done;
    if (mkdir(tagdir, 0755) != 0) {
        st = ds_error_set(err, DS_ERR_IO, "%s: cannot create: %s", tagdir, strerror(errno));
        goto done;
    }
    char *src = path_join(c->path, c->model_file), *dst = path_join(tagdir, c->model_file);
    st = src && dst ? copy_file(src, dst, &files[1], err) : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    files[1].name = c->model_file;
    free(src);
    free(dst);
    ckpt_reader rd = {c};
    for (int r = 0; r < dp && st == DS_OK; r++) {
        char nm[160];
        int64_t b, e;
        part_file_name(nm, sizeof nm, r, c->precision);
        names[r] = strdup(nm);
        files[2 + r].name = names[r];
        ds_ckpt_partition_range(c->numel, dp, r, &b, &e);
        char *p = path_join(tagdir, nm);
        st = p && names[r] ? write_partition_file(p, r, dp, b, e, c->n_state, c->state_names, ckpt_range, &rd,
                                                  &files[2 + r], err)
                           : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
        free(p);
    }
    if (st != DS_OK)
        goto done;
    json_object *m = json_tokener_parse(json_object_to_json_string(c->manifest));
    json_object_object_add(m, "partition", partition_json(c->numel, dp, (const char *const *)names));
    json_object_object_add(m, "dp_world_size", json_object_new_int(dp));
    json_object *fl = json_object_new_object();
    for (int i = 1; i < dp + 2; i++)
        json_object_object_add(fl, files[i].name, json_object_new_int64(files[i].bytes));
    json_object_object_add(m, "files", fl);
    char *mp = path_join(tagdir, MANIFEST);
    files[0].name = (char *)MANIFEST;
    st = mp ? write_json_file(mp, m, &files[0], err) : ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    free(mp);
    json_object_put(m);
    if (st == DS_OK)
        st = write_sums(tagdir, files, dp + 2, err);
    if (st == DS_OK)
        st = fsync_dir(tagdir, err);
    if (st == DS_OK)
        st = write_latest(tmp, c->tag, err);
    struct stat sb;
    int had = lstat(out, &sb) == 0;
    /* only what was there at the start, with --force, is replaced, and only if it is still a
     * directory of checkpoints that no run is saving into: an OUT that appeared while this ran
     * (a user's folder, a run's first save) is somebody else's */
    if (st == DS_OK && had && (!force || !had_at_start))
        st = ds_error_set(err, DS_ERR_INVALID, "%s: appeared while this ran; not replacing it%s (the result is "
                          "not kept)", out, force ? "" : " (use --force)");
    if (st == DS_OK && had)
        st = ds_ckpt_check_output_dir(out, err);
    if (st == DS_OK && had && rename(out, old) != 0)
        st = ds_error_set(err, DS_ERR_IO, "%s: cannot move it aside: %s", out, strerror(errno));
    if (st == DS_OK && rename_noreplace(tmp, out) != 0) { /* (OUT is set aside or was never there) */
        st = errno == EEXIST ? ds_error_set(err, DS_ERR_INVALID, "%s: appeared while this ran; not replacing it%s",
                                            out, force ? "" : " (use --force)")
                             : ds_error_set(err, DS_ERR_IO, "%s: cannot rename %s to it: %s", out, tmp, strerror(errno));
        if (had && rename(old, out) != 0 && err) { /* say where the original is */
            size_t k = strlen(err->msg);
            snprintf(err->msg + k, sizeof err->msg - k, "; the checkpoint that was there is at %s", old);
        }
    }
    if (st == DS_OK) { /* the rename itself made durable before the old copy goes */
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", out);
        char *slash = strrchr(parent, '/');
        if (!slash)
            snprintf(parent, sizeof parent, ".");
        else if (slash == parent)
            parent[1] = 0;
        else
            *slash = 0;
        st = fsync_dir(parent, err);
    }
    if (st == DS_OK && had)
        rm_tree(old);
done:
    if (st != DS_OK && tmp)
        rm_tree(tmp);
    for (int r = 0; names && r < dp; r++)
        free(names[r]);
    free(names);
    free(files);
    free(tagdir);
    free(tmp);
    free(old);
    return st;
}
