/* NumPy .npy reader: magic, version 1.0/2.0/3.0 header lengths, the header's Python dict
 * literal ({'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }), then C-order data.
 * Also the read-only file mapping used by every lib/io reader. */
#include "npy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

ds_status ds_map_file(const char *path, ds_mapped *out, ds_error *err)
{
    *out = (ds_mapped){0};
    /* O_NONBLOCK: a FIFO given as a file is refused below at once instead of blocking here until
     * a writer comes (no effect on a regular file's mapping) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ds_error_set(err, DS_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ds_error_set(err, DS_ERR_IO, "%s: %s, expected a regular file", path,
                            S_ISDIR(sb.st_mode) ? "is a directory" : "is not a regular file");
    }
    if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return ds_error_set(err, DS_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
        out->data = p;
        out->size = (size_t)sb.st_size;
    }
    close(fd); /* the mapping stays valid */
    return DS_OK;
}

void ds_unmap_file(ds_mapped *m)
{
    if (m->data)
        munmap((void *)m->data, m->size);
    *m = (ds_mapped){0};
}

/* --- header dict parser ------------------------------------------------------------------ */

typedef struct hparser {
    const char *p;
    const char *path;
    ds_error *err;
} hparser;

static void skip_ws(hparser *h)
{
    while (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')
        h->p++;
}

static ds_status bad(hparser *h, const char *expected)
{
    return ds_error_set(h->err, DS_ERR_INVALID, "%s: malformed .npy header: expected %s at \"%.20s\"",
                        h->path, expected, h->p);
}

/* A Python string literal in single or double quotes (no escapes occur in npy headers). */
static ds_status parse_str(hparser *h, char *buf, size_t size)
{
    char q = *h->p;
    if (q != '\'' && q != '"')
        return bad(h, "a quoted string");
    const char *s = ++h->p;
    while (*h->p && *h->p != q)
        h->p++;
    if (!*h->p)
        return bad(h, "a closing quote");
    size_t n = (size_t)(h->p - s);
    h->p++;
    if (n >= size)
        n = size - 1; /* long descr strings are rejected later as unknown dtypes */
    memcpy(buf, s, n);
    buf[n] = '\0';
    return DS_OK;
}

static ds_status parse_shape(hparser *h, ds_npy *a)
{
    if (*h->p != '(')
        return bad(h, "a shape tuple");
    h->p++;
    a->ndim = 0;
    for (;;) {
        skip_ws(h);
        if (*h->p == ')') {
            h->p++;
            return DS_OK;
        }
        if (*h->p < '0' || *h->p > '9')
            return bad(h, "a non-negative integer in the shape");
        char *end;
        errno = 0;
        long long v = strtoll(h->p, &end, 10);
        if (errno)
            return bad(h, "a shape dimension that fits in 64 bits");
        h->p = end;
        if (*h->p == 'L') /* Python 2 long literal */
            h->p++;
        if (a->ndim == DS_NPY_MAX_DIMS)
            return ds_error_set(h->err, DS_ERR_UNSUPPORTED, "%s: more than %d dimensions in the shape",
                                h->path, DS_NPY_MAX_DIMS);
        a->shape[a->ndim++] = v;
        skip_ws(h);
        if (*h->p == ',')
            h->p++;
        else if (*h->p != ')')
            return bad(h, "',' or ')' in the shape");
    }
}

static const struct {
    const char *descr;
    ds_dtype dtype;
} npy_types[] = {
    {"<f4", DS_F32}, {"<f8", DS_F64}, {"<f2", DS_F16}, {"<i8", DS_I64}, {"<i4", DS_I32},
    {"<i2", DS_I16}, {"|i1", DS_I8},  {"<i1", DS_I8},  {"<u8", DS_U64}, {"<u4", DS_U32},
    {"<u2", DS_U16}, {"|u1", DS_U8},  {"<u1", DS_U8},  {"|b1", DS_BOOL}, {"<b1", DS_BOOL},
};

static ds_status parse_header(hparser *h, ds_npy *a)
{
    int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;
    skip_ws(h);
    if (*h->p != '{')
        return bad(h, "'{'");
    h->p++;
    for (;;) {
        skip_ws(h);
        if (*h->p == '}')
            break;
        char key[32];
        ds_status st = parse_str(h, key, sizeof key);
        if (st)
            return st;
        skip_ws(h);
        if (*h->p != ':')
            return bad(h, "':'");
        h->p++;
        skip_ws(h);
        if (strcmp(key, "descr") == 0) {
            if (*h->p == '[')
                return ds_error_set(h->err, DS_ERR_UNSUPPORTED,
                                    "%s: structured dtype (a field list) is not supported; "
                                    "expected a plain numeric array", h->path);
            if ((st = parse_str(h, a->descr, sizeof a->descr)))
                return st;
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (strncmp(h->p, "False", 5) == 0) {
                h->p += 5;
            } else if (strncmp(h->p, "True", 4) == 0) {
                h->p += 4;
                fortran = 1;
            } else {
                return bad(h, "True or False for fortran_order");
            }
            have_order = 1;
        } else if (strcmp(key, "shape") == 0) {
            if ((st = parse_shape(h, a)))
                return st;
            have_shape = 1;
        } else {
            return ds_error_set(h->err, DS_ERR_INVALID, "%s: unexpected key '%s' in the .npy header",
                                h->path, key);
        }
        skip_ws(h);
        if (*h->p == ',')
            h->p++;
        else if (*h->p != '}')
            return bad(h, "',' or '}'");
    }
    if (!have_descr || !have_order || !have_shape)
        return ds_error_set(h->err, DS_ERR_INVALID, "%s: .npy header lacks '%s'", h->path,
                            !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    if (fortran)
        return ds_error_set(h->err, DS_ERR_UNSUPPORTED,
                            "%s: array is stored in Fortran order; expected C order "
                            "(save np.ascontiguousarray(a) instead)", h->path);
    for (size_t i = 0; i < sizeof npy_types / sizeof npy_types[0]; i++)
        if (strcmp(a->descr, npy_types[i].descr) == 0) {
            a->dtype = npy_types[i].dtype;
            return DS_OK;
        }
    return ds_error_set(h->err, DS_ERR_UNSUPPORTED,
                        "%s: dtype '%s' is not supported; expected a little-endian bool, integer "
                        "or float type such as '<f4', '<f8', '<i8', '|u1'", h->path, a->descr);
}

ds_status ds_npy_open(ds_npy **out, const char *path, ds_error *err)
{
    *out = NULL;
    ds_npy *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        return ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
    }
    ds_status st = ds_map_file(path, &a->map, err);
    if (st) {
        ds_npy_close(a);
        return st;
    }
    const uint8_t *d = a->map.data;
    size_t size = a->map.size;
    char *text = NULL;
    if (size < 10 || memcmp(d, "\x93NUMPY", 6) != 0) {
        st = ds_error_set(err, DS_ERR_INVALID, "%s: not a .npy file (no \\x93NUMPY magic%s)", path,
                          size < 10 ? "; the file is shorter than a header" : "");
        goto fail;
    }
    int major = d[6], minor = d[7];
    size_t hlen, hstart;
    if (major == 1) {
        hlen = (size_t)d[8] | (size_t)d[9] << 8;
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: truncated .npy header", path);
            goto fail;
        }
        hlen = (size_t)d[8] | (size_t)d[9] << 8 | (size_t)d[10] << 16 | (size_t)d[11] << 24;
        hstart = 12;
    } else {
        st = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: .npy format version %d.%d; expected 1.0, 2.0 or 3.0", path, major, minor);
        goto fail;
    }
    if (hlen > size - hstart) {
        st = ds_error_set(err, DS_ERR_INVALID,
                          "%s: truncated: header length %zu but only %zu bytes follow", path, hlen,
                          size - hstart);
        goto fail;
    }
    text = malloc(hlen + 1);
    if (!text) {
        st = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    memcpy(text, d + hstart, hlen);
    text[hlen] = '\0';
    hparser h = {text, path, err};
    if ((st = parse_header(&h, a)))
        goto fail;
    a->numel = 1;
    for (int i = 0; i < a->ndim; i++) {
        if (a->shape[i] != 0 && a->numel > INT64_MAX / 8 / a->shape[i]) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s: shape is too large", path);
            goto fail;
        }
        a->numel *= a->shape[i];
    }
    size_t want = (size_t)a->numel * ds_dtype_size(a->dtype), have = size - hstart - hlen;
    if (have != want) {
        st = ds_error_set(err, DS_ERR_INVALID,
                          "%s: %s: shape needs %zu data bytes but the file has %zu after the header",
                          path, have < want ? "truncated" : "trailing bytes", want, have);
        goto fail;
    }
    a->data = d + hstart + hlen;
    free(text);
    *out = a;
    return DS_OK;
fail:
    free(text);
    ds_npy_close(a);
    return st;
}

void ds_npy_close(ds_npy *a)
{
    if (!a)
        return;
    ds_unmap_file(&a->map);
    free(a->path);
    free(a);
}

/* Elements may be unaligned (headers are padded to 16 or 64 bytes, not always): load bytes. */
double ds_npy_get_f64(const ds_npy *a, int64_t i)
{
    const uint8_t *b = a->data;
    size_t k = (size_t)i;
    switch (a->dtype) {
    case DS_F32: return ds_ld_f32(b + 4 * k);
    case DS_F64: {
        uint64_t u = ds_ld_u64(b + 8 * k);
        double v;
        memcpy(&v, &u, 8);
        return v;
    }
    case DS_F16: return ds_f16_to_f32(ds_ld_u16(b + 2 * k));
    case DS_BF16: return ds_bf16_to_f32(ds_ld_u16(b + 2 * k));
    case DS_U64: return (double)ds_ld_u64(b + 8 * k);
    default: return (double)ds_npy_get_i64(a, i);
    }
}

int64_t ds_npy_get_i64(const ds_npy *a, int64_t i)
{
    const uint8_t *b = a->data;
    size_t k = (size_t)i;
    switch (a->dtype) {
    case DS_I64:
    case DS_U64: return (int64_t)ds_ld_u64(b + 8 * k);
    case DS_I32: return (int32_t)ds_ld_u32(b + 4 * k);
    case DS_U32: return ds_ld_u32(b + 4 * k);
    case DS_I16: return (int16_t)ds_ld_u16(b + 2 * k);
    case DS_U16: return ds_ld_u16(b + 2 * k);
    case DS_I8: return (int8_t)b[k];
    case DS_U8:
    case DS_BOOL: return b[k];
    default: return (int64_t)ds_npy_get_f64(a, i);
    }
}
