/* safetensors reader (memory-mapped; the header is validated in full before any tensor is
 * used) and atomic writer (temporary file in the target's directory, fsync, rename, fsync of
 * the directory), byte-compatible with the reference implementation's output. */
#include "ds/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json_util.h"
#include "io/npy.h"

/* The reference refuses headers above 100 MB; so do we, before allocating for one. */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

static ds_status parse_u64(json_object *v, uint64_t *out)
{
    if (!json_object_is_type(v, json_type_int))
        return DS_ERR_INVALID;
    errno = 0;
    int64_t x = json_object_get_int64(v);
    if (x < 0 || errno)
        return DS_ERR_INVALID;
    *out = (uint64_t)x;
    return DS_OK;
}

static ds_status parse_tensor(const char *path, const char *name, json_object *v, ds_st_tensor *t,
                              ds_error *err)
{
    char buf[72];
    if (!json_object_is_type(v, json_type_object))
        return ds_error_set(err, DS_ERR_INVALID, "%s: tensor \"%s\": expected an object, found %s",
                            path, name, ds_json_type_name(v));
    json_object *dt = NULL, *shape = NULL, *offs = NULL;
    json_object_object_foreach(v, key, val) {
        if (strcmp(key, "dtype") == 0)
            dt = val;
        else if (strcmp(key, "shape") == 0)
            shape = val;
        else if (strcmp(key, "data_offsets") == 0)
            offs = val;
        else
            return ds_error_set(err, DS_ERR_INVALID,
                                "%s: tensor \"%s\": unexpected key \"%s\" (expected dtype, shape, "
                                "data_offsets)", path, name, key);
    }
    if (!dt || !shape || !offs)
        return ds_error_set(err, DS_ERR_INVALID, "%s: tensor \"%s\": missing \"%s\"", path, name,
                            !dt ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!json_object_is_type(dt, json_type_string) ||
        ds_dtype_parse(json_object_get_string(dt), &t->dtype) != 0) {
        ds_json_render(dt, buf, sizeof buf);
        return ds_error_set(err, DS_ERR_UNSUPPORTED,
                            "%s: tensor \"%s\": unsupported dtype %s (expected one of F64 F32 F16 "
                            "BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)", path, name, buf);
    }
    if (!json_object_is_type(shape, json_type_array) ||
        json_object_array_length(shape) > DS_ST_MAX_DIMS) {
        ds_json_render(shape, buf, sizeof buf);
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: tensor \"%s\": shape must be an array of at most %d non-negative "
                            "integers, found %s", path, name, DS_ST_MAX_DIMS, buf);
    }
    t->ndim = (int)json_object_array_length(shape);
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d;
        if (parse_u64(json_object_array_get_idx(shape, (size_t)i), &d)) {
            ds_json_render(shape, buf, sizeof buf);
            return ds_error_set(err, DS_ERR_INVALID,
                                "%s: tensor \"%s\": shape must hold non-negative integers, found %s",
                                path, name, buf);
        }
        t->shape[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / 8 / d)
            overflow = 1;
        numel *= d;
    }
    if (!json_object_is_type(offs, json_type_array) || json_object_array_length(offs) != 2 ||
        parse_u64(json_object_array_get_idx(offs, 0), &t->begin) ||
        parse_u64(json_object_array_get_idx(offs, 1), &t->end) || t->begin > t->end) {
        ds_json_render(offs, buf, sizeof buf);
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: tensor \"%s\": data_offsets must be [begin, end] with 0 <= begin "
                            "<= end, found %s", path, name, buf);
    }
    if (overflow) {
        ds_json_render(shape, buf, sizeof buf);
        return ds_error_set(err, DS_ERR_INVALID, "%s: tensor \"%s\": shape %s is too large (more than 2^61 "
                            "elements)", path, name, buf);
    }
    uint64_t bytes = numel * ds_dtype_size(t->dtype);
    if (bytes != t->end - t->begin)
        return ds_error_set(err, DS_ERR_INVALID,
                            "%s: tensor \"%s\": %s of shape with %llu elements needs %llu bytes, but "
                            "data_offsets [%llu, %llu] span %llu", path, name,
                            ds_dtype_name(t->dtype), (unsigned long long)numel,
                            (unsigned long long)bytes, (unsigned long long)t->begin,
                            (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
    return DS_OK;
}

static int cmp_range(const void *a, const void *b)
{
    const ds_st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

ds_status ds_st_open(ds_safetensors **out, const char *path, ds_error *err)
{
    *out = NULL;
    ds_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
    }
    ds_mapped m;
    ds_status rc = ds_map_file(path, &m, err);
    char *text = NULL;
    json_object *root = NULL;
    if (rc)
        goto fail;
    st->map = (void *)m.data;
    st->map_size = m.size;
    if (m.size < 8) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: truncated: %zu bytes, too short for the 8-byte header length", path,
                          m.size);
        goto fail;
    }
    uint64_t hlen = ds_ld_u64(m.data);
    if (hlen > m.size - 8) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: truncated or not a safetensors file: header length %llu but the "
                          "file has %zu bytes after the length", path, (unsigned long long)hlen,
                          m.size - 8);
        goto fail;
    }
    if (hlen > ST_MAX_HEADER || hlen < 2 || m.data[8] != '{') {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: not a safetensors file: the header (%llu bytes) must be a JSON "
                          "object of at most %u bytes", path, (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    text = malloc(hlen + 1);
    if (!text) {
        rc = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    memcpy(text, m.data + 8, hlen);
    text[hlen] = '\0';
    if (strlen(text) != hlen) {
        rc = ds_error_set(err, DS_ERR_INVALID, "%s: corrupted header: NUL byte inside the JSON", path);
        goto fail;
    }
    char hname[256];
    snprintf(hname, sizeof hname, "%s (header)", path);
    if ((rc = ds_json_parse(text, hname, &root, err)))
        goto fail;
    if (!json_object_is_type(root, json_type_object)) {
        rc = ds_error_set(err, DS_ERR_INVALID, "%s: header must be a JSON object", path);
        goto fail;
    }
    int count = json_object_object_length(root);
    st->tensors = calloc((size_t)count + 1, sizeof *st->tensors);
    if (!st->tensors) {
        rc = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    json_object_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_object_is_type(val, json_type_object)) {
                rc = ds_error_set(err, DS_ERR_INVALID, "%s: __metadata__ must be an object, found %s",
                                  path, ds_json_type_name(val));
                goto fail;
            }
            json_object_object_foreach(val, mk, mv) {
                if (!json_object_is_type(mv, json_type_string)) {
                    rc = ds_error_set(err, DS_ERR_INVALID,
                                      "%s: __metadata__ \"%s\" must be a string, found %s", path, mk,
                                      ds_json_type_name(mv));
                    goto fail;
                }
            }
            st->metadata_json = strdup(json_object_to_json_string_ext(
                val, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
            if (!st->metadata_json) {
                rc = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
                goto fail;
            }
            continue;
        }
        ds_st_tensor *t = &st->tensors[st->n];
        if (!(t->name = strdup(key))) {
            rc = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        st->n++;
        if ((rc = parse_tensor(path, key, val, t, err)))
            goto fail;
    }
    qsort(st->tensors, (size_t)st->n, sizeof *st->tensors, cmp_range);
    uint64_t data_size = m.size - 8 - hlen;
    const ds_st_tensor *last = NULL; /* the non-empty tensor reaching furthest so far */
    for (int i = 0; i < st->n; i++) {
        const ds_st_tensor *t = &st->tensors[i];
        if (t->end > data_size) {
            rc = ds_error_set(err, DS_ERR_INVALID,
                              "%s: truncated or corrupted: tensor \"%s\" ends at byte %llu of the "
                              "data section, which has only %llu bytes", path, t->name,
                              (unsigned long long)t->end, (unsigned long long)data_size);
            goto fail;
        }
        if (t->begin == t->end)
            continue; /* an empty tensor occupies no bytes */
        if (last && last->end > t->begin) {
            rc = ds_error_set(err, DS_ERR_INVALID,
                              "%s: corrupted: tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] "
                              "overlap", path, last->name, (unsigned long long)last->begin,
                              (unsigned long long)last->end, t->name,
                              (unsigned long long)t->begin, (unsigned long long)t->end);
            goto fail;
        }
        last = t;
    }
    st->data = m.data + 8 + hlen;
    json_object_put(root);
    free(text);
    *out = st;
    return DS_OK;
fail:
    if (root)
        json_object_put(root);
    free(text);
    ds_st_close(st);
    return rc;
}

void ds_st_close(ds_safetensors *st)
{
    if (!st)
        return;
    if (st->map) {
        ds_mapped m = {st->map, st->map_size};
        ds_unmap_file(&m);
    }
    for (int i = 0; i < st->n; i++)
        free(st->tensors[i].name);
    free(st->tensors);
    free(st->metadata_json);
    free(st->path);
    free(st);
}

const ds_st_tensor *ds_st_find(const ds_safetensors *st, const char *name)
{
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->tensors[i].name, name) == 0)
            return &st->tensors[i];
    return NULL;
}

/* Note: the reference pads headers to 8 bytes, but files from other writers may leave tensor
 * data unaligned; readers of wide types should copy rather than dereference. */
const void *ds_st_data(const ds_safetensors *st, const ds_st_tensor *t)
{
    return st->data + t->begin;
}

char *ds_st_metadata_get(const ds_safetensors *st, const char *key)
{
    if (!st->metadata_json)
        return NULL;
    json_object *meta = json_tokener_parse(st->metadata_json), *v;
    char *out = NULL;
    if (meta && json_object_object_get_ex(meta, key, &v))
        out = strdup(json_object_get_string(v));
    json_object_put(meta);
    return out;
}

/* --- writer ------------------------------------------------------------------------------- */

static ds_status write_all(int fd, const void *buf, size_t n, const char *path, ds_error *err)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return ds_error_set(err, DS_ERR_IO, "%s: write failed: %s", path,
                                w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return DS_OK;
}

/* Header JSON in the reference layout: "__metadata__" first, then tensors in the given order
 * with contiguous data_offsets; padded with spaces so the data section starts 8-byte aligned. */
static ds_status build_header(const char *path, const ds_st_entry *e, int n,
                              const char *const *mk, const char *const *mv, int n_meta,
                              char **out, size_t *out_len, ds_error *err)
{
    json_object *root = json_object_new_object();
    if (!root)
        return ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
    ds_status rc = DS_OK;
    if (n_meta > 0) {
        json_object *meta = json_object_new_object();
        json_object_object_add(root, "__metadata__", meta);
        for (int i = 0; i < n_meta; i++) {
            if (!mk[i] || !mv[i]) {
                rc = ds_error_set(err, DS_ERR_INVALID, "%s: metadata entry %d has a NULL key or value",
                                  path, i);
                goto done;
            }
            if (json_object_object_get_ex(meta, mk[i], NULL)) {
                rc = ds_error_set(err, DS_ERR_INVALID, "%s: duplicate metadata key \"%s\"", path, mk[i]);
                goto done;
            }
            json_object_object_add(meta, mk[i], json_object_new_string(mv[i]));
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const char *name = e[i].name;
        if (!name || !*name || strcmp(name, "__metadata__") == 0) {
            rc = ds_error_set(err, DS_ERR_INVALID, "%s: tensor %d has an invalid name \"%s\"", path, i,
                              name ? name : "(null)");
            goto done;
        }
        if (json_object_object_get_ex(root, name, NULL)) {
            rc = ds_error_set(err, DS_ERR_INVALID, "%s: duplicate tensor name \"%s\"", path, name);
            goto done;
        }
        if ((unsigned)e[i].dtype >= DS_DTYPE_COUNT || e[i].ndim < 0 || e[i].ndim > DS_ST_MAX_DIMS) {
            rc = ds_error_set(err, DS_ERR_INVALID, "%s: tensor \"%s\": invalid dtype or ndim %d", path,
                              name, e[i].ndim);
            goto done;
        }
        json_object *t = json_object_new_object(), *shape = json_object_new_array(),
                    *offs = json_object_new_array();
        json_object_object_add(root, name, t);
        json_object_object_add(t, "dtype", json_object_new_string(ds_dtype_name(e[i].dtype)));
        json_object_object_add(t, "shape", shape);
        json_object_object_add(t, "data_offsets", offs);
        uint64_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            if (e[i].shape[d] < 0) {
                rc = ds_error_set(err, DS_ERR_INVALID, "%s: tensor \"%s\": negative dimension %lld",
                                  path, name, (long long)e[i].shape[d]);
                goto done;
            }
            json_object_array_add(shape, json_object_new_int64(e[i].shape[d]));
            numel *= (uint64_t)e[i].shape[d];
        }
        uint64_t bytes = numel * ds_dtype_size(e[i].dtype);
        if (bytes && !e[i].data) {
            rc = ds_error_set(err, DS_ERR_INVALID, "%s: tensor \"%s\" has no data", path, name);
            goto done;
        }
        json_object_array_add(offs, json_object_new_int64((int64_t)off));
        json_object_array_add(offs, json_object_new_int64((int64_t)(off + bytes)));
        off += bytes;
    }
    {
        const char *s = json_object_to_json_string_ext(
            root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t len = s ? strlen(s) : 0, padded = (len + 7) / 8 * 8;
        char *h = s ? malloc(padded) : NULL;
        if (!h) {
            rc = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        memcpy(h, s, len);
        memset(h + len, ' ', padded - len);
        *out = h;
        *out_len = padded;
    }
done:
    json_object_put(root);
    return rc;
}

ds_status ds_st_write(const char *path, const ds_st_entry *entries, int n,
                      const char *const *meta_keys, const char *const *meta_values, int n_meta,
                      ds_error *err)
{
    char *header = NULL;
    size_t hlen = 0;
    ds_status rc = build_header(path, entries, n, meta_keys, meta_values, n_meta, &header, &hlen, err);
    if (rc)
        return rc;
    /* only a regular file is ever replaced (rename over a device node would replace the node) */
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        free(header);
        return ds_error_set(err, DS_ERR_INVALID, "%s: exists and is not a regular file; not replacing it", path);
    }
    /* The temporary file lives beside the target so that rename() is atomic (same filesystem). */
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 0;
    char dir[4096], tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%.*s%s.%s.tmp.XXXXXX", (int)dlen, path, slash ? "/" : "",
                 slash ? slash + 1 : path) >= (int)sizeof tmp) {
        free(header);
        return ds_error_set(err, DS_ERR_INVALID, "%s: path too long", path);
    }
    snprintf(dir, sizeof dir, "%.*s", (int)(slash ? (dlen ? dlen : 1) : 1), slash ? path : ".");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(header);
        return ds_error_set(err, DS_ERR_IO, "%s: cannot create a temporary file in %s: %s", path,
                            dir, strerror(e));
    }
    /* mkstemp makes 0600; checkpoints and weights are meant to be shared like ordinary files. */
    fchmod(fd, 0644);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    rc = write_all(fd, len8, 8, tmp, err);
    if (!rc)
        rc = write_all(fd, header, hlen, tmp, err);
    for (int i = 0; i < n && !rc; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++)
            numel *= (uint64_t)entries[i].shape[d];
        rc = write_all(fd, entries[i].data, numel * ds_dtype_size(entries[i].dtype), tmp, err);
    }
    free(header);
    if (!rc && fsync(fd) != 0)
        rc = ds_error_set(err, DS_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !rc)
        rc = ds_error_set(err, DS_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = ds_error_set(err, DS_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp,
                          strerror(errno));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    /* Make the rename itself durable. Some filesystems cannot fsync a directory (EINVAL). */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0 && errno != EINVAL && errno != ENOTSUP)
            rc = ds_error_set(err, DS_ERR_IO, "%s: written, but fsync of directory %s failed: %s",
                              path, dir, strerror(errno));
        close(dfd);
    }
    return rc;
}
