/* Tests for lib/io: safetensors round trips and refusals, .npy reading (hand-written and
 * numpy-made fixtures), token and feature datasets (text, llm.c shards, Megatron .bin/.idx,
 * NumPy) and the sampler. Every test works in its own mkdtemp directory under /tmp. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ds/data.h"
#include "ds/safetensors.h"
#include "io/npy.h"

#ifndef DS_TEST_DIR
#define DS_TEST_DIR "tests"
#endif

static char tmpdir[64]; /* per test: criterion runs each test in its own process */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/ds-test-io-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(io, .init = setup, .fini = teardown);

static const char *tpath(char *buf, const char *name)
{
    snprintf(buf, 512, "%s/%s", tmpdir, name);
    return buf;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static size_t read_file(const char *path, void *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* Files in tmpdir whose name contains ".tmp." (leftover temporaries). */
static int count_temps(void)
{
    DIR *d = opendir(tmpdir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

#define EXPECT_ERR(st, err, code_, ...)                                                         \
    do {                                                                                        \
        cr_assert_eq((st), (code_), "status %d, message: %s", (int)(st), (err).msg);            \
        const char *subs_[] = {__VA_ARGS__};                                                    \
        for (size_t i_ = 0; i_ < sizeof subs_ / sizeof subs_[0]; i_++)                          \
            cr_assert(strstr((err).msg, subs_[i_]), "message lacks \"%s\": %s", subs_[i_],      \
                      (err).msg);                                                               \
    } while (0)

/* --- safetensors ---------------------------------------------------------------------------- */

Test(io, st_roundtrip_all_dtypes)
{
    char path[512];
    tpath(path, "all.safetensors");
    static const int64_t shape[2] = {2, 3}, empty_shape[2] = {0, 4};
    uint8_t bufs[DS_DTYPE_COUNT][48];
    ds_st_entry e[DS_DTYPE_COUNT + 2];
    char names[DS_DTYPE_COUNT][16];
    for (int t = 0; t < DS_DTYPE_COUNT; t++) {
        for (int i = 0; i < 48; i++)
            bufs[t][i] = (uint8_t)(t * 31 + i * 7 + 1);
        if (t == DS_BOOL)
            for (int i = 0; i < 6; i++)
                bufs[t][i] = i & 1;
        snprintf(names[t], sizeof names[t], "t.%s", ds_dtype_name((ds_dtype)t));
        e[t] = (ds_st_entry){names[t], (ds_dtype)t, 2, shape, bufs[t]};
    }
    float scalar = 3.5f;
    e[DS_DTYPE_COUNT] = (ds_st_entry){"scalar", DS_F32, 0, NULL, &scalar};
    e[DS_DTYPE_COUNT + 1] = (ds_st_entry){"empty", DS_I32, 2, empty_shape, NULL};
    const char *mk[] = {"format", "note"}, *mv[] = {"pt", "quote \" and \\ and ünïcode"};
    ds_error err = {0};
    cr_assert_eq(ds_st_write(path, e, DS_DTYPE_COUNT + 2, mk, mv, 2, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(count_temps(), 0);

    uint8_t raw[4096];
    size_t n = read_file(path, raw, sizeof raw);
    uint64_t hlen = ds_ld_u64(raw);
    cr_assert_eq(hlen % 8, 0, "data section must start 8-byte aligned");
    cr_assert_eq(raw[8], '{');
    cr_assert(n > 8 + hlen);

    ds_safetensors *st;
    cr_assert_eq(ds_st_open(&st, path, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(st->n, DS_DTYPE_COUNT + 2);
    for (int i = 1; i < st->n; i++)
        cr_assert(st->tensors[i].begin >= st->tensors[i - 1].begin, "tensors in offset order");
    for (int t = 0; t < DS_DTYPE_COUNT; t++) {
        const ds_st_tensor *x = ds_st_find(st, names[t]);
        cr_assert(x, "%s missing", names[t]);
        cr_assert_eq(x->dtype, (ds_dtype)t);
        cr_assert_eq(x->ndim, 2);
        cr_assert_eq(x->shape[0], 2);
        cr_assert_eq(x->shape[1], 3);
        cr_assert_eq(x->end - x->begin, 6 * ds_dtype_size((ds_dtype)t));
        cr_assert_eq(memcmp(ds_st_data(st, x), bufs[t], 6 * ds_dtype_size((ds_dtype)t)), 0);
    }
    const ds_st_tensor *s = ds_st_find(st, "scalar");
    cr_assert(s && s->ndim == 0 && s->end - s->begin == 4);
    float got;
    memcpy(&got, ds_st_data(st, s), 4);
    cr_assert_eq(got, 3.5f);
    const ds_st_tensor *z = ds_st_find(st, "empty");
    cr_assert(z && z->ndim == 2 && z->shape[0] == 0 && z->shape[1] == 4 && z->begin == z->end);
    cr_assert_null(ds_st_find(st, "nope"));
    char *v = ds_st_metadata_get(st, "note");
    cr_assert_str_eq(v, mv[1]);
    free(v);
    v = ds_st_metadata_get(st, "format");
    cr_assert_str_eq(v, "pt");
    free(v);
    cr_assert_null(ds_st_metadata_get(st, "missing"));
    ds_st_close(st);
}

Test(io, st_no_metadata_and_no_tensors)
{
    char path[512];
    ds_error err = {0};
    ds_safetensors *st;
    cr_assert_eq(ds_st_write(tpath(path, "e.safetensors"), NULL, 0, NULL, NULL, 0, &err), DS_OK);
    cr_assert_eq(ds_st_open(&st, path, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(st->n, 0);
    cr_assert_null(st->metadata_json);
    cr_assert_null(ds_st_metadata_get(st, "format"));
    ds_st_close(st);
}

/* Written by the reference implementation (scripts/make-st-fixture.py). */
Test(io, st_reads_reference_file)
{
    ds_error err = {0};
    ds_safetensors *st;
    cr_assert_eq(ds_st_open(&st, DS_TEST_DIR "/data/reference.safetensors", &err), DS_OK, "%s",
                 err.msg);
    cr_assert_eq(st->n, 6);
    const ds_st_tensor *w = ds_st_find(st, "w");
    cr_assert(w && w->dtype == DS_F32 && w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 3);
    float wf[6];
    memcpy(wf, ds_st_data(st, w), sizeof wf);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(wf[i], (float)i - 2);
    const ds_st_tensor *h = ds_st_find(st, "h");
    cr_assert_eq(ds_f16_to_f32(ds_ld_u16(ds_st_data(st, h))), 1.5f);
    cr_assert_eq(ds_f16_to_f32(ds_ld_u16((const uint8_t *)ds_st_data(st, h) + 2)), -2.0f);
    const ds_st_tensor *ids = ds_st_find(st, "ids");
    cr_assert_eq((int64_t)ds_ld_u64((const uint8_t *)ds_st_data(st, ids) + 8), -8);
    const ds_st_tensor *m = ds_st_find(st, "mask");
    cr_assert(m->dtype == DS_BOOL && ((const uint8_t *)ds_st_data(st, m))[0] == 1);
    const ds_st_tensor *sc = ds_st_find(st, "scalar");
    cr_assert(sc->dtype == DS_F64 && sc->ndim == 0);
    const ds_st_tensor *e = ds_st_find(st, "empty");
    cr_assert(e->dtype == DS_I32 && e->shape[0] == 0 && e->shape[1] == 4);
    char *v = ds_st_metadata_get(st, "step");
    cr_assert_str_eq(v, "12");
    free(v);
    ds_st_close(st);
}

Test(io, st_overwrite_and_failed_write_keeps_target)
{
    char path[512], bad[512];
    tpath(path, "model.safetensors");
    int64_t shape[1] = {2};
    float a[2] = {1, 2}, b[2] = {3, 4};
    ds_st_entry ea = {"w", DS_F32, 1, shape, a}, eb = {"w", DS_F32, 1, shape, b};
    ds_error err = {0};
    cr_assert_eq(ds_st_write(path, &ea, 1, NULL, NULL, 0, &err), DS_OK);
    cr_assert_eq(ds_st_write(path, &eb, 1, NULL, NULL, 0, &err), DS_OK);
    uint8_t before[512], after[512];
    size_t nb = read_file(path, before, sizeof before);
    ds_safetensors *st;
    cr_assert_eq(ds_st_open(&st, path, &err), DS_OK);
    cr_assert_eq(memcmp(ds_st_data(st, ds_st_find(st, "w")), b, 8), 0);
    ds_st_close(st);

    /* invalid request: duplicate names; nothing is created and the target is untouched */
    ds_st_entry dup[2] = {ea, ea};
    EXPECT_ERR(ds_st_write(path, dup, 2, NULL, NULL, 0, &err), err, DS_ERR_INVALID, path,
               "duplicate tensor name \"w\"");
    /* the directory does not exist */
    EXPECT_ERR(ds_st_write(tpath(bad, "no/such/dir/x.safetensors"), &ea, 1, NULL, NULL, 0, &err),
               err, DS_ERR_IO, bad);
    /* a target that is not a regular file (a non-empty directory) is refused, and kept */
    tpath(bad, "isdir");
    cr_assert_eq(mkdir(bad, 0755), 0);
    char inner[600];
    snprintf(inner, sizeof inner, "%s/keep", bad);
    write_file(inner, "x", 1);
    EXPECT_ERR(ds_st_write(bad, &ea, 1, NULL, NULL, 0, &err), err, DS_ERR_INVALID, "not a regular file");
    struct stat sb;
    cr_assert(stat(inner, &sb) == 0);
    cr_assert_eq(count_temps(), 0, "temporary files must be removed on failure");
    cr_assert_eq(read_file(path, after, sizeof after), nb);
    cr_assert_eq(memcmp(before, after, nb), 0);
}

/* A safetensors file with the given header text and n zero data bytes. */
static void make_st(const char *path, const char *json, size_t ndata)
{
    uint8_t buf[4096] = {0};
    uint64_t h = strlen(json);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(h >> (8 * i));
    memcpy(buf + 8, json, h);
    write_file(path, buf, 8 + h + ndata);
}

static void expect_st_error(const char *name, const char *json, size_t ndata, const char *what,
                            const char *what2)
{
    char path[512];
    tpath(path, name);
    make_st(path, json, ndata);
    ds_error err = {0};
    ds_safetensors *st = (ds_safetensors *)1;
    ds_status rc = ds_st_open(&st, path, &err);
    cr_assert_neq(rc, DS_OK, "%s should be refused", name);
    cr_assert_null(st);
    cr_assert(strstr(err.msg, path), "message must name the file: %s", err.msg);
    cr_assert(strstr(err.msg, what), "message lacks \"%s\": %s", what, err.msg);
    cr_assert(strstr(err.msg, what2), "message lacks \"%s\": %s", what2, err.msg);
}

Test(io, st_refuses_bad_files)
{
    expect_st_error("json.st", "{\"a\": {\"dtype\": \"F32\", ", 0, "invalid JSON", "header");
    expect_st_error("notobj.st", "[1, 2]                 ", 0, "not a safetensors", "");
    expect_st_error("dup.st",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                    8, "duplicate key", "\"a\"");
    expect_st_error("overlap.st",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                    12, "overlap", "\"b\"");
    expect_st_error("range.st", "{\"big\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
                    8, "\"big\"", "ends at byte 16");
    expect_st_error("size.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                    "\"w\"", "needs 12 bytes");
    expect_st_error("dtype.st", "{\"w\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                    "\"w\"", "unsupported dtype \"F8\"");
    expect_st_error("neg.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
                    "\"w\"", "non-negative");
    expect_st_error("offs.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,1]}}", 4,
                    "\"w\"", "data_offsets");
    expect_st_error("missing.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 4, "\"w\"",
                    "data_offsets");
    expect_st_error("extra.st",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 4,
                    "\"w\"", "unexpected key \"x\"");
    expect_st_error("meta.st", "{\"__metadata__\":{\"k\":3}}", 0, "__metadata__", "\"k\"");
}

Test(io, st_refuses_truncated)
{
    char path[512], cut[512];
    tpath(path, "full.safetensors");
    int64_t shape[1] = {4};
    double d[4] = {1, 2, 3, 4};
    ds_st_entry e = {"w", DS_F64, 1, shape, d};
    ds_error err = {0};
    cr_assert_eq(ds_st_write(path, &e, 1, NULL, NULL, 0, &err), DS_OK);
    uint8_t buf[1024];
    size_t n = read_file(path, buf, sizeof buf);
    size_t cuts[] = {n - 1, n - 32, 8 + 10, 5, 0};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        tpath(cut, "cut.safetensors");
        write_file(cut, buf, cuts[i]);
        ds_safetensors *st;
        EXPECT_ERR(ds_st_open(&st, cut, &err), err, DS_ERR_INVALID, cut, "truncated");
    }
    ds_safetensors *st;
    EXPECT_ERR(ds_st_open(&st, tpath(cut, "absent.safetensors"), &err), err, DS_ERR_IO, cut);
}

/* --- npy --------------------------------------------------------------------------------- */

/* A .npy file written by hand: magic, version, header dict padded to 64 bytes, data. */
static void write_npy(const char *path, int major, const char *dict, const void *data, size_t n)
{
    uint8_t buf[4096];
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t hlen = (pre + dl + 1 + 63) / 64 * 64 - pre;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (uint8_t)major;
    buf[7] = 0;
    for (size_t i = 0; i < pre - 8; i++)
        buf[8 + i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + pre, dict, dl);
    memset(buf + pre + dl, ' ', hlen - dl - 1);
    buf[pre + hlen - 1] = '\n';
    if (n)
        memcpy(buf + pre + hlen, data, n);
    write_file(path, buf, pre + hlen + n);
}

Test(io, npy_handwritten)
{
    char path[512];
    ds_error err = {0};
    ds_npy *a;
    float f[4] = {1, -2, 3.5f, 4};
    write_npy(tpath(path, "f.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
              f, sizeof f);
    cr_assert_eq(ds_npy_open(&a, path, &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 2);
    cr_assert_eq(a->numel, 4);
    cr_assert_eq(ds_npy_get_f64(a, 2), 3.5);
    ds_npy_close(a);

    int16_t s[3] = {-5, 0, 300};
    write_npy(tpath(path, "s.npy"), 3, "{\"shape\": (3,), \"descr\": \"<i2\", \"fortran_order\": False}",
              s, sizeof s);
    cr_assert_eq(ds_npy_open(&a, path, &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_I16 && a->ndim == 1 && a->shape[0] == 3);
    cr_assert_eq(ds_npy_get_i64(a, 0), -5);
    cr_assert_eq(ds_npy_get_i64(a, 2), 300);
    ds_npy_close(a);

    double d = -0.25;
    write_npy(tpath(path, "d.npy"), 2, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &d,
              8);
    cr_assert_eq(ds_npy_open(&a, path, &err), DS_OK, "%s", err.msg);
    cr_assert(a->ndim == 0 && a->numel == 1 && ds_npy_get_f64(a, 0) == -0.25);
    ds_npy_close(a);

    write_npy(tpath(path, "z.npy"), 1, "{'descr': '|i1', 'fortran_order': False, 'shape': (0, 5L), }",
              NULL, 0);
    cr_assert_eq(ds_npy_open(&a, path, &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_I8 && a->numel == 0 && a->shape[1] == 5);
    ds_npy_close(a);
}

Test(io, npy_refusals)
{
    char path[512];
    ds_error err = {0};
    ds_npy *a;
    float f[4] = {0};
    write_npy(tpath(path, "fo.npy"), 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
              f, sizeof f);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_UNSUPPORTED, path, "Fortran order");
    write_npy(tpath(path, "be.npy"), 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }",
              f, sizeof f);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_UNSUPPORTED, path, "'>f4'");
    write_npy(tpath(path, "tr.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
              f, sizeof f);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_INVALID, path, "truncated", "20", "16");
    write_npy(tpath(path, "st.npy"), 1,
              "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }", f, sizeof f);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_UNSUPPORTED, path, "structured");
    write_npy(tpath(path, "ns.npy"), 1, "{'descr': '<f4', 'fortran_order': False, }", f, sizeof f);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_INVALID, path, "'shape'");
    write_npy(tpath(path, "v9.npy"), 1, "{}", f, 0);
    uint8_t raw[128];
    size_t n = read_file(path, raw, sizeof raw);
    raw[6] = 9;
    write_file(path, raw, n);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_UNSUPPORTED, path, "version 9.0");
    write_file(tpath(path, "txt.npy"), "hello world, not numpy", 22);
    EXPECT_ERR(ds_npy_open(&a, path, &err), err, DS_ERR_INVALID, path, "magic");
}

/* Written by numpy (scripts/make-npy-fixtures.py). */
Test(io, npy_numpy_fixtures)
{
    ds_error err = {0};
    ds_npy *a;
    cr_assert_eq(ds_npy_open(&a, DS_TEST_DIR "/data/npy_f32_2x3.npy", &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(ds_npy_get_f64(a, i), i * 0.5 - 1);
    ds_npy_close(a);
    cr_assert_eq(ds_npy_open(&a, DS_TEST_DIR "/data/npy_i64_5.npy", &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_I64 && a->numel == 5 && ds_npy_get_i64(a, 1) == 2);
    ds_npy_close(a);
    cr_assert_eq(ds_npy_open(&a, DS_TEST_DIR "/data/npy_bool_3.npy", &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_BOOL && ds_npy_get_i64(a, 0) == 1 && ds_npy_get_i64(a, 1) == 0);
    ds_npy_close(a);
    cr_assert_eq(ds_npy_open(&a, DS_TEST_DIR "/data/npy_f64_scalar.npy", &err), DS_OK, "%s", err.msg);
    cr_assert(a->ndim == 0 && ds_npy_get_f64(a, 0) == 2.5);
    ds_npy_close(a);
    cr_assert_eq(ds_npy_open(&a, DS_TEST_DIR "/data/npy_u1_v2.npy", &err), DS_OK, "%s", err.msg);
    cr_assert(a->dtype == DS_U8 && a->numel == 3 && ds_npy_get_i64(a, 2) == 255);
    ds_npy_close(a);
    EXPECT_ERR(ds_npy_open(&a, DS_TEST_DIR "/data/npy_fortran_2x2.npy", &err), err,
               DS_ERR_UNSUPPORTED, "npy_fortran_2x2.npy", "Fortran");
}

/* --- token datasets ---------------------------------------------------------------------- */

static void expect_sample(const ds_dataset *ds, int64_t k, int T, const int32_t *want_in,
                          const int32_t *want_tg)
{
    int32_t in[64], tg[64];
    ds_error err = {0};
    cr_assert_eq(ds_dataset_get_tokens(ds, k, in, tg, &err), DS_OK, "%s", err.msg);
    for (int i = 0; i < T; i++) {
        cr_assert_eq(in[i], want_in[i], "sample %lld input %d: %d != %d", (long long)k, i, in[i],
                     want_in[i]);
        cr_assert_eq(tg[i], want_tg[i], "sample %lld target %d: %d != %d", (long long)k, i, tg[i],
                     want_tg[i]);
    }
}

static void expect_text_sample(const ds_dataset *ds, int64_t k, const char *in, const char *tg)
{
    int32_t a[64], b[64];
    int T = (int)strlen(in);
    for (int i = 0; i < T; i++) {
        a[i] = (uint8_t)in[i];
        b[i] = (uint8_t)tg[i];
    }
    expect_sample(ds, k, T, a, b);
}

Test(io, text_file)
{
    char path[512];
    write_file(tpath(path, "t.txt"), "hello world!", 12);
    ds_dataset *ds;
    ds_error err = {0};
    cr_assert_eq(ds_dataset_open_tokens(&ds, path, 4, 256, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_dataset_kind_of(ds), DS_DATASET_TOKENS);
    cr_assert_eq(ds_dataset_len(ds), 2); /* (12 - 1) / 4 */
    cr_assert_str_eq(ds_dataset_describe(ds), "text, 1 file, 12 tokens");
    expect_text_sample(ds, 0, "hell", "ello");
    expect_text_sample(ds, 1, "o wo", " wor");
    int32_t in[4], tg[4];
    EXPECT_ERR(ds_dataset_get_tokens(ds, 2, in, tg, &err), err, DS_ERR_INVALID, "sample 2");
    ds_dataset_close(ds);
    /* exactly T+1 tokens is one sample; fewer is an error naming the file */
    cr_assert_eq(ds_dataset_open_tokens(&ds, path, 11, 256, &err), DS_OK);
    cr_assert_eq(ds_dataset_len(ds), 1);
    ds_dataset_close(ds);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 12, 256, &err), err, DS_ERR_INVALID, path,
               "12 tokens", "at least 13");
}

Test(io, text_directory)
{
    char dir[512], p[600];
    tpath(dir, "corpus");
    cr_assert_eq(mkdir(dir, 0755), 0);
    snprintf(p, sizeof p, "%s/b.txt", dir);
    write_file(p, "def", 3);
    snprintf(p, sizeof p, "%s/a.txt", dir);
    write_file(p, "abc", 3);
    snprintf(p, sizeof p, "%s/c.txt", dir);
    write_file(p, "", 0);
    snprintf(p, sizeof p, "%s/.hidden", dir);
    write_file(p, "zzz", 3);
    snprintf(p, sizeof p, "%s/sub", dir);
    cr_assert_eq(mkdir(p, 0755), 0);
    ds_dataset *ds;
    ds_error err = {0};
    cr_assert_eq(ds_dataset_open_tokens(&ds, dir, 2, 256, &err), DS_OK, "%s", err.msg);
    cr_assert_str_eq(ds_dataset_describe(ds), "text, 3 files, 6 tokens");
    cr_assert_eq(ds_dataset_len(ds), 2);
    expect_text_sample(ds, 0, "ab", "bc");
    expect_text_sample(ds, 1, "cd", "de"); /* crosses from a.txt into b.txt */
    ds_dataset_close(ds);
}

Test(io, token_out_of_vocab)
{
    char path[512];
    write_file(tpath(path, "hi.txt"), "abc\xc8xyz", 7);
    ds_dataset *ds = (ds_dataset *)1;
    ds_error err = {0};
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 2, 128, &err), err, DS_ERR_INVALID, path,
               "token 3", "200", "vocab_size is 128");
    cr_assert_null(ds);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, tpath(path, "absent"), 2, 128, &err), err, DS_ERR_IO,
               path);
}

/* An llm.c GPT-2 shard: 256 int32 header (magic, version, count), uint16 tokens. */
static void write_llmc(const char *path, const uint16_t *tok, int n, int version, int claimed)
{
    uint8_t buf[1024 + 2 * 64] = {0};
    int32_t h[3] = {20240520, version, claimed};
    memcpy(buf, h, sizeof h);
    memcpy(buf + 1024, tok, 2 * (size_t)n);
    write_file(path, buf, 1024 + 2 * (size_t)n);
}

Test(io, llmc_shard)
{
    char path[512];
    uint16_t tok[10];
    for (int i = 0; i < 10; i++)
        tok[i] = (uint16_t)(100 * i);
    write_llmc(tpath(path, "train_000.bin"), tok, 10, 1, 10);
    ds_dataset *ds;
    ds_error err = {0};
    cr_assert_eq(ds_dataset_open_tokens(&ds, path, 3, 50257, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_dataset_len(ds), 3);
    cr_assert_str_eq(ds_dataset_describe(ds), "llm.c shards, 1 file, 10 tokens (uint16)");
    expect_sample(ds, 2, 3, (int32_t[]){600, 700, 800}, (int32_t[]){700, 800, 900});
    ds_dataset_close(ds);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 3, 800, &err), err, DS_ERR_INVALID, path, "token 8",
               "is 800");

    write_llmc(path, tok, 10, 2, 10);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 3, 50257, &err), err, DS_ERR_UNSUPPORTED, path,
               "version 2", "expected 1");
    write_llmc(path, tok, 9, 1, 10);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 3, 50257, &err), err, DS_ERR_INVALID, path,
               "truncated", "10 uint16 tokens");
    write_llmc(path, tok, 10, 1, 0);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 3, 50257, &err), err, DS_ERR_INVALID, path, "0 tokens");
    int32_t hdr[3] = {20240520, 1, 10}; /* the first 12 bytes of a header: its size is named */
    write_file(path, hdr, sizeof hdr);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 3, 50257, &err), err, DS_ERR_INVALID, path,
               "truncated llm.c token shard: 12 bytes", "the header alone is 1024");
    write_file(tpath(path, "raw.bin"), "not a shard at all", 18);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, path, 3, 50257, &err), err, DS_ERR_INVALID, path,
               "llm.c", "Megatron");
}

Test(io, llmc_shards_glob_and_directory)
{
    char dir[512], p[600];
    tpath(dir, "shards");
    cr_assert_eq(mkdir(dir, 0755), 0);
    uint16_t a[4] = {1, 2, 3, 4}, b[3] = {5, 6, 7};
    snprintf(p, sizeof p, "%s/s_001.bin", dir);
    write_llmc(p, b, 3, 1, 3);
    snprintf(p, sizeof p, "%s/s_000.bin", dir);
    write_llmc(p, a, 4, 1, 4);
    ds_dataset *ds;
    ds_error err = {0};
    snprintf(p, sizeof p, "%s/s_*.bin", dir);
    cr_assert_eq(ds_dataset_open_tokens(&ds, p, 2, 50257, &err), DS_OK, "%s", err.msg);
    cr_assert_str_eq(ds_dataset_describe(ds), "llm.c shards, 2 files, 7 tokens (uint16)");
    cr_assert_eq(ds_dataset_len(ds), 3);
    expect_sample(ds, 1, 2, (int32_t[]){3, 4}, (int32_t[]){4, 5});
    expect_sample(ds, 2, 2, (int32_t[]){5, 6}, (int32_t[]){6, 7});
    ds_dataset_close(ds);
    cr_assert_eq(ds_dataset_open_tokens(&ds, dir, 2, 50257, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_dataset_len(ds), 3);
    ds_dataset_close(ds);
    snprintf(p, sizeof p, "%s/notes.txt", dir);
    write_file(p, "hi", 2);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, dir, 2, 50257, &err), err, DS_ERR_INVALID, dir, "mixes",
               "notes.txt");
}

/* --- Megatron indexed datasets --------------------------------------------------------------- */

static size_t put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 8;
}

static size_t put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 4;
}

/* The index layout of spec §6.1 (document mode: one sequence per document). */
static size_t make_idx(uint8_t *buf, int code, int itemsize, const int32_t *lens, int S)
{
    size_t o = 0;
    memcpy(buf, "MMIDIDX\0\0", 9);
    o += 9;
    o += put_u64(buf + o, 1);
    buf[o++] = (uint8_t)code;
    o += put_u64(buf + o, (uint64_t)S);
    o += put_u64(buf + o, (uint64_t)S + 1);
    for (int i = 0; i < S; i++)
        o += put_u32(buf + o, (uint32_t)lens[i]);
    uint64_t ptr = 0;
    for (int i = 0; i < S; i++) {
        o += put_u64(buf + o, ptr);
        ptr += (uint64_t)lens[i] * (uint64_t)itemsize;
    }
    for (int i = 0; i <= S; i++)
        o += put_u64(buf + o, (uint64_t)i);
    return o;
}

Test(io, megatron_handwritten)
{
    char prefix[512], p[600], q[600];
    tpath(prefix, "corpus_text_document");
    int32_t lens[3] = {3, 1, 4};
    int32_t tok[8] = {10, 11, 12, 20, 30, 31, 32, 33};
    uint8_t idx[512];
    size_t n = make_idx(idx, 4, 4, lens, 3);
    cr_assert_eq(n, 34 + 12 * 3 + 8 * 4);
    snprintf(p, sizeof p, "%s.idx", prefix);
    write_file(p, idx, n);
    snprintf(q, sizeof q, "%s.bin", prefix);
    write_file(q, tok, sizeof tok);
    ds_dataset *ds;
    ds_error err = {0};
    const char *names[] = {prefix, p, q};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(ds_dataset_open_tokens(&ds, names[i], 3, 100, &err), DS_OK, "%s", err.msg);
        cr_assert_str_eq(ds_dataset_describe(ds), "megatron, 3 documents, 8 tokens (int32)");
        cr_assert_eq(ds_dataset_len(ds), 2);
        expect_sample(ds, 1, 3, (int32_t[]){20, 30, 31}, (int32_t[]){30, 31, 32});
        ds_dataset_close(ds);
    }
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 33, &err), err, DS_ERR_INVALID, q, "token 7",
               "is 33");

    /* corruptions, each named with the file at fault */
    uint8_t bad[512];
    memcpy(bad, idx, n);
    bad[3] = 'X';
    write_file(p, bad, n);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_INVALID, p, "magic");
    memcpy(bad, idx, n);
    bad[9] = 2;
    write_file(p, bad, n);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_UNSUPPORTED, p,
               "version 2");
    memcpy(bad, idx, n);
    bad[17] = 7;
    write_file(p, bad, n);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_UNSUPPORTED, p,
               "dtype code 7");
    memcpy(bad, idx, n);
    bad[17] = 9;
    write_file(p, bad, n);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_INVALID, p,
               "dtype code 9");
    memcpy(bad, idx, n);
    put_u64(bad + 34 + 12 + 8 * 2, 13); /* pointer of sequence 2 should be 16 */
    write_file(p, bad, n);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_INVALID, p,
               "sequence 2", "pointer 13", "expected 16");
    memcpy(bad, idx, n);
    put_u64(bad + 34 + 36 + 24, 2); /* last document-index entry should be S = 3 */
    write_file(p, bad, n);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_INVALID, p,
               "document index");
    write_file(p, idx, n - 1);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_INVALID, p, "truncated");
    write_file(p, idx, n);
    write_file(q, tok, sizeof tok - 4);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, prefix, 3, 100, &err), err, DS_ERR_INVALID, q,
               "truncated", "8 int32 tokens");
    remove(q);
    EXPECT_ERR(ds_dataset_open_tokens(&ds, p, 3, 100, &err), err, DS_ERR_IO, q);
}

/* Written by scripts/make-megatron-fixture.py, which follows Megatron's own builder. */
Test(io, megatron_fixture)
{
    ds_dataset *ds;
    ds_error err = {0};
    cr_assert_eq(ds_dataset_open_tokens(&ds, DS_TEST_DIR "/data/megatron_tiny", 5, 50257, &err),
                 DS_OK, "%s", err.msg);
    cr_assert_str_eq(ds_dataset_describe(ds), "megatron, 3 documents, 15 tokens (uint16)");
    cr_assert_eq(ds_dataset_len(ds), 2);
    expect_sample(ds, 0, 5, (int32_t[]){11, 12, 13, 14, 0}, (int32_t[]){12, 13, 14, 0, 21});
    expect_sample(ds, 1, 5, (int32_t[]){21, 22, 0, 31, 32}, (int32_t[]){22, 0, 31, 32, 33});
    ds_dataset_close(ds);
}

/* --- feature datasets ------------------------------------------------------------------------ */

Test(io, npy_features)
{
    char x[512], y[512], yv[512];
    float xs[6] = {1, 2, 3, 4, 5, 6};
    int32_t ys[3] = {2, 0, 1};
    double yvs[3] = {0.5, -1, 2};
    write_npy(tpath(x, "x.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", xs,
              sizeof xs);
    write_npy(tpath(y, "y.npy"), 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", ys,
              sizeof ys);
    write_npy(tpath(yv, "yv.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 1), }",
              yvs, sizeof yvs);
    ds_dataset *ds;
    ds_error err = {0};
    cr_assert_eq(ds_dataset_open_npy(&ds, x, y, 2, DS_LABEL_CLASS, 3, 0, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(ds_dataset_kind_of(ds), DS_DATASET_FEATURES);
    cr_assert_eq(ds_dataset_len(ds), 3);
    float f[2];
    int32_t c;
    cr_assert_eq(ds_dataset_get_features(ds, 1, f, &c, NULL, &err), DS_OK);
    cr_assert(f[0] == 3 && f[1] == 4 && c == 0);
    ds_dataset_close(ds);
    cr_assert_eq(ds_dataset_open_npy(&ds, x, yv, 2, DS_LABEL_VECTOR, 0, 1, &err), DS_OK, "%s", err.msg);
    float v;
    cr_assert_eq(ds_dataset_get_features(ds, 2, f, NULL, &v, &err), DS_OK);
    cr_assert(f[0] == 5 && v == 2.0f);
    ds_dataset_close(ds);

    EXPECT_ERR(ds_dataset_open_npy(&ds, x, y, 2, DS_LABEL_CLASS, 2, 0, &err), err, DS_ERR_INVALID, y,
               "label 0 is 2", "[0, 2)");
    EXPECT_ERR(ds_dataset_open_npy(&ds, x, y, 3, DS_LABEL_CLASS, 3, 0, &err), err, DS_ERR_INVALID, x,
               "(N, 3)", "(3, 2)");
    EXPECT_ERR(ds_dataset_open_npy(&ds, x, yv, 2, DS_LABEL_CLASS, 3, 0, &err), err, DS_ERR_INVALID, yv,
               "(3,)", "<f8", "(3, 1)");
    EXPECT_ERR(ds_dataset_open_npy(&ds, x, DS_TEST_DIR "/data/npy_i64_5.npy", 2, DS_LABEL_CLASS, 3, 0,
                                   &err), err, DS_ERR_INVALID, "npy_i64_5.npy", "(5,)");
}

/* --- sampler ---------------------------------------------------------------------------------- */

Test(io, sampler_sequential_wraps)
{
    ds_sampler s;
    ds_error err = {0};
    cr_assert_eq(ds_sampler_init(&s, DS_ORDER_SEQUENTIAL, 1, 5, &err), DS_OK);
    for (int64_t p = 0; p < 23; p++)
        cr_assert_eq(ds_sampler_index(&s, p), p % 5);
    ds_sampler_free(&s);
    EXPECT_ERR(ds_sampler_init(&s, DS_ORDER_SHUFFLED, 1, 0, &err), err, DS_ERR_INVALID, "0 samples");
}

Test(io, sampler_shuffled)
{
    enum { N = 50 };
    ds_sampler s, t, u;
    ds_error err = {0};
    cr_assert_eq(ds_sampler_init(&s, DS_ORDER_SHUFFLED, 42, N, &err), DS_OK);
    cr_assert_eq(ds_sampler_init(&t, DS_ORDER_SHUFFLED, 42, N, &err), DS_OK);
    cr_assert_eq(ds_sampler_init(&u, DS_ORDER_SHUFFLED, 43, N, &err), DS_OK);
    int64_t order[4][N];
    for (int e = 0; e < 4; e++) {
        int seen[N] = {0}, identity = 1;
        for (int i = 0; i < N; i++) {
            int64_t k = ds_sampler_index(&s, (int64_t)e * N + i);
            cr_assert(k >= 0 && k < N);
            cr_assert_eq(seen[k]++, 0, "epoch %d repeats sample %lld", e, (long long)k);
            order[e][i] = k;
            identity &= k == i;
        }
        cr_assert_not(identity, "epoch %d is not shuffled", e);
    }
    for (int e = 1; e < 4; e++)
        cr_assert_neq(memcmp(order[e], order[e - 1], sizeof order[e]), 0, "epochs %d and %d agree",
                      e - 1, e);
    /* same seed, visited in another order (a resumed run jumps straight to epoch 2) */
    for (int e = 3; e >= 0; e--)
        for (int i = N - 1; i >= 0; i--)
            cr_assert_eq(ds_sampler_index(&t, (int64_t)e * N + i), order[e][i]);
    int differ = 0;
    for (int i = 0; i < N; i++)
        differ += ds_sampler_index(&u, i) != order[0][i];
    cr_assert(differ > 0, "another seed gives another order");
    ds_sampler_free(&s);
    ds_sampler_free(&t);
    ds_sampler_free(&u);

    /* n = 1 and a large epoch number still work */
    cr_assert_eq(ds_sampler_init(&s, DS_ORDER_SHUFFLED, 7, 1, &err), DS_OK);
    cr_assert_eq(ds_sampler_index(&s, 123456789), 0);
    ds_sampler_free(&s);
}
