/* Datasets and the sampler. Token datasets are one stream of memory-mapped segments (text
 * files, llm.c shards, or a Megatron .bin), validated in full at open; feature datasets are a
 * pair of .npy files. The sampler maps a global position to a sample without state. */
#include "ds/data.h"

#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/npy.h"

#define LLMC_MAGIC_GPT2 20240520  /* version 1, uint16 tokens */
#define LLMC_MAGIC_LLAMA3 20240801 /* version 7, uint32 tokens */
#define LLMC_HEADER_BYTES 1024

typedef enum tok_type { TOK_U8, TOK_I8, TOK_U16, TOK_I16, TOK_U32, TOK_I32, TOK_I64 } tok_type;

static const struct {
    const char *name;
    int size;
} tok_info[] = {
    [TOK_U8] = {"uint8", 1},   [TOK_I8] = {"int8", 1},   [TOK_U16] = {"uint16", 2},
    [TOK_I16] = {"int16", 2},  [TOK_U32] = {"uint32", 4}, [TOK_I32] = {"int32", 4},
    [TOK_I64] = {"int64", 8},
};

/* One file's tokens inside the concatenated stream. */
typedef struct segment {
    char *file;
    ds_mapped map;
    const uint8_t *base; /* first token */
    tok_type type;
    int64_t start, n;    /* global index of the first token; token count */
} segment;

struct ds_dataset {
    ds_dataset_kind kind;
    char desc[256];
    int64_t len;
    /* tokens */
    int seq_len, vocab;
    int nseg;
    segment *segs;
    int64_t ntokens;
    int n_binary;          /* text files with a NUL byte in their first 4 KiB (ds_dataset_warning) */
    char binary_first[256], warning[512];
    /* features */
    ds_npy *x, *y;
    int dim, n_classes, label_dim;
    ds_label_kind label_kind;
};

static int64_t tok_at(const segment *s, int64_t i)
{
    const uint8_t *p = s->base + (size_t)i * (size_t)tok_info[s->type].size;
    switch (s->type) {
    case TOK_U8: return p[0];
    case TOK_I8: return (int8_t)p[0];
    case TOK_U16: return ds_ld_u16(p);
    case TOK_I16: return (int16_t)ds_ld_u16(p);
    case TOK_U32: return ds_ld_u32(p);
    case TOK_I32: return (int32_t)ds_ld_u32(p);
    case TOK_I64: return (int64_t)ds_ld_u64(p);
    }
    return -1;
}

/* Index of the first token outside [0, vocab), or -1. The whole stream is checked once at open
 * so that a bad token stops the run before step 0 rather than hours into it. */
static int64_t first_bad_token(const segment *s, int64_t vocab)
{
    if ((s->type == TOK_U8 && vocab >= 256) || (s->type == TOK_U16 && vocab >= 65536))
        return -1; /* every value of the type is in range */
    if (s->type == TOK_U16) { /* the common case (GPT-2 shards): a tight loop */
        for (int64_t i = 0; i < s->n; i++)
            if (ds_ld_u16(s->base + 2 * i) >= vocab)
                return i;
        return -1;
    }
    for (int64_t i = 0; i < s->n; i++) {
        int64_t v = tok_at(s, i);
        if (v < 0 || v >= vocab)
            return i;
    }
    return -1;
}

static ds_dataset *dataset_new(ds_dataset_kind kind, ds_error *err, const char *path)
{
    ds_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
    else
        ds->kind = kind;
    return ds;
}

void ds_dataset_close(ds_dataset *ds)
{
    if (!ds)
        return;
    for (int i = 0; i < ds->nseg; i++) {
        ds_unmap_file(&ds->segs[i].map);
        free(ds->segs[i].file);
    }
    free(ds->segs);
    ds_npy_close(ds->x);
    ds_npy_close(ds->y);
    free(ds);
}

/* Append a segment that takes ownership of map; file is copied. */
static ds_status add_segment(ds_dataset *ds, const char *file, ds_mapped map, size_t offset,
                             tok_type type, int64_t n, ds_error *err)
{
    segment *s = realloc(ds->segs, (size_t)(ds->nseg + 1) * sizeof *s);
    char *name = strdup(file);
    if (!s || !name) {
        free(name);
        if (s)
            ds->segs = s;
        ds_unmap_file(&map);
        return ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", file);
    }
    ds->segs = s;
    if (type == TOK_U8 && map.data) { /* text: a NUL byte early is a program, an archive, an image... */
        size_t k = map.size < 4096 ? map.size : 4096;
        if (memchr(map.data, 0, k) && ds->n_binary++ == 0)
            snprintf(ds->binary_first, sizeof ds->binary_first, "%s", file);
    }
    s[ds->nseg++] = (segment){name, map, map.data ? map.data + offset : NULL, type, ds->ntokens, n};
    ds->ntokens += n;
    return DS_OK;
}

/* llm.c shard: 256 int32 header (magic, version, token count), then the tokens. */
static int is_llmc(const ds_mapped *m)
{
    if (m->size < 4)
        return 0;
    uint32_t magic = ds_ld_u32(m->data);
    return magic == LLMC_MAGIC_GPT2 || magic == LLMC_MAGIC_LLAMA3;
}

static ds_status add_llmc(ds_dataset *ds, const char *file, ds_mapped m, ds_error *err)
{
    if (m.size < LLMC_HEADER_BYTES) {
        ds_status st = ds_error_set(err, DS_ERR_INVALID,
                                    "%s: truncated llm.c token shard: %zu bytes, the header alone is %d", file,
                                    m.size, LLMC_HEADER_BYTES);
        ds_unmap_file(&m); /* it zeroes m: after the message */
        return st;
    }
    uint32_t magic = ds_ld_u32(m.data);
    int32_t version = (int32_t)ds_ld_u32(m.data + 4), ntok = (int32_t)ds_ld_u32(m.data + 8);
    int gpt2 = magic == LLMC_MAGIC_GPT2, want_version = gpt2 ? 1 : 7;
    tok_type type = gpt2 ? TOK_U16 : TOK_U32;
    ds_status rc = DS_OK;
    if (version != want_version)
        rc = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: llm.c token shard with magic %u has version %d, expected %d", file,
                          magic, version, want_version);
    else if (ntok <= 0)
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: llm.c token shard header gives %d tokens, expected a positive count",
                          file, ntok);
    else if (m.size != LLMC_HEADER_BYTES + (size_t)ntok * (size_t)tok_info[type].size)
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: %s: the header gives %d %s tokens (%zu bytes with the header), but the "
                          "file has %zu bytes", file,
                          m.size < LLMC_HEADER_BYTES + (size_t)ntok * (size_t)tok_info[type].size
                              ? "truncated llm.c token shard"
                              : "llm.c token shard size mismatch",
                          ntok, tok_info[type].name,
                          LLMC_HEADER_BYTES + (size_t)ntok * (size_t)tok_info[type].size, m.size);
    if (rc) {
        ds_unmap_file(&m);
        return rc;
    }
    return add_segment(ds, file, m, LLMC_HEADER_BYTES, type, ntok, err);
}

/* Megatron MMapIndexedDataset: <prefix>.idx describes the sequences concatenated in
 * <prefix>.bin. Everything the index claims is checked against itself and the .bin size. */
static ds_status add_megatron(ds_dataset *ds, const char *prefix, int64_t *ndocs, ds_error *err)
{
    char idx_path[4096], bin_path[4096];
    snprintf(idx_path, sizeof idx_path, "%s.idx", prefix);
    snprintf(bin_path, sizeof bin_path, "%s.bin", prefix);
    ds_mapped im, bm = {0};
    ds_status rc = ds_map_file(idx_path, &im, err);
    if (rc)
        return rc;
    const uint8_t *d = im.data;
    tok_type type = TOK_U8;
    uint64_t S = 0, D = 0, total = 0;
    if (im.size >= 8 && memcmp(d, "TNTIDX\0\0", 8) == 0) {
        rc = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: legacy Megatron cached/lazy index (magic TNTIDX); expected the mmap "
                          "format (magic MMIDIDX): re-run preprocess_data.py with --dataset-impl mmap",
                          idx_path);
        goto done;
    }
    if (im.size < 34 || memcmp(d, "MMIDIDX\0\0", 9) != 0) {
        rc = ds_error_set(err, DS_ERR_INVALID, "%s: not a Megatron index: %s", idx_path,
                          im.size < 34 ? "shorter than the 34-byte header" : "magic is not MMIDIDX\\0\\0");
        goto done;
    }
    uint64_t version = ds_ld_u64(d + 9);
    if (version != 1) {
        rc = ds_error_set(err, DS_ERR_UNSUPPORTED, "%s: Megatron index version %llu, expected 1",
                          idx_path, (unsigned long long)version);
        goto done;
    }
    switch (d[17]) {
    case 1: type = TOK_U8; break;
    case 2: type = TOK_I8; break;
    case 3: type = TOK_I16; break;
    case 4: type = TOK_I32; break;
    case 5: type = TOK_I64; break;
    case 8: type = TOK_U16; break;
    case 6:
    case 7:
        rc = ds_error_set(err, DS_ERR_UNSUPPORTED,
                          "%s: dtype code %d is a float type; token ids must be integers", idx_path, d[17]);
        goto done;
    default:
        rc = ds_error_set(err, DS_ERR_INVALID, "%s: unknown dtype code %d (expected 1-5 or 8)",
                          idx_path, d[17]);
        goto done;
    }
    S = ds_ld_u64(d + 18);
    D = ds_ld_u64(d + 26);
    uint64_t avail = im.size - 34;
    /* Bound S and D before multiplying; then the size must match exactly (the multimodal
     * variant adds one mode byte per sequence). */
    if (S > avail / 12 || D > avail / 8 || (12 * S + 8 * D != avail && 13 * S + 8 * D != avail)) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: truncated or corrupted: %llu sequences and %llu document-index entries "
                          "need %s bytes, but the file has %zu", idx_path, (unsigned long long)S,
                          (unsigned long long)D,
                          S > avail / 12 || D > avail / 8 ? "more" : "a different number of",
                          im.size);
        goto done;
    }
    const uint8_t *lens = d + 34, *ptrs = lens + 4 * S, *docs = ptrs + 8 * S;
    int isz = tok_info[type].size;
    for (uint64_t i = 0; i < S; i++) {
        int32_t len = (int32_t)ds_ld_u32(lens + 4 * i);
        uint64_t ptr = ds_ld_u64(ptrs + 8 * i);
        if (len < 0) {
            rc = ds_error_set(err, DS_ERR_INVALID, "%s: sequence %llu has length %d, expected >= 0",
                              idx_path, (unsigned long long)i, len);
            goto done;
        }
        if (ptr != total * (uint64_t)isz) {
            rc = ds_error_set(err, DS_ERR_INVALID,
                              "%s: sequence %llu has pointer %llu, expected %llu (the bytes of the "
                              "sequences before it)", idx_path, (unsigned long long)i,
                              (unsigned long long)ptr, (unsigned long long)(total * (uint64_t)isz));
            goto done;
        }
        total += (uint64_t)len;
    }
    if (D < 1 || ds_ld_u64(docs) != 0 || ds_ld_u64(docs + 8 * (D - 1)) != S) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: document index must start at 0 and end at the sequence count %llu "
                          "(%llu entries found)", idx_path, (unsigned long long)S,
                          (unsigned long long)D);
        goto done;
    }
    for (uint64_t i = 1; i < D; i++)
        if (ds_ld_u64(docs + 8 * i) < ds_ld_u64(docs + 8 * (i - 1))) {
            rc = ds_error_set(err, DS_ERR_INVALID,
                              "%s: document index entry %llu (%llu) is below the previous one (%llu)",
                              idx_path, (unsigned long long)i,
                              (unsigned long long)ds_ld_u64(docs + 8 * i),
                              (unsigned long long)ds_ld_u64(docs + 8 * (i - 1)));
            goto done;
        }
    if ((rc = ds_map_file(bin_path, &bm, err)))
        goto done;
    if (bm.size != total * (uint64_t)isz) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: %s: %zu bytes, but %s describes %llu %s tokens (%llu bytes)", bin_path,
                          bm.size < total * (uint64_t)isz ? "truncated" : "size mismatch", bm.size,
                          idx_path, (unsigned long long)total, tok_info[type].name,
                          (unsigned long long)(total * (uint64_t)isz));
        ds_unmap_file(&bm);
        goto done;
    }
    /* Pointers are prefix sums, so the documents are the .bin itself, in order. */
    *ndocs = (int64_t)D - 1;
    rc = add_segment(ds, bin_path, bm, 0, type, (int64_t)total, err);
done:
    ds_unmap_file(&im);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_list(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Regular files of a directory, by name; dot files (editor and OS litter) are skipped. */
static ds_status list_dir(const char *dir, char ***out, int *n_out, ds_error *err)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return ds_error_set(err, DS_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **v = NULL;
    int n = 0;
    ds_status rc = DS_OK;
    struct dirent *de;
    while ((de = readdir(dp))) {
        if (de->d_name[0] == '.')
            continue;
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        char *full = malloc(len), **nv = realloc(v, (size_t)(n + 1) * sizeof *v);
        if (!full || !nv) {
            free(full);
            if (nv)
                v = nv;
            rc = ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        v = nv;
        snprintf(full, len, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (stat(full, &sb) != 0) { /* a symbolic link to nothing: data the user meant is missing */
            int e = errno;
            rc = e == ENOENT && lstat(full, &sb) == 0 && S_ISLNK(sb.st_mode)
                     ? ds_error_set(err, DS_ERR_IO, "%s: a symbolic link to a file that is not there", full)
                     : ds_error_set(err, DS_ERR_IO, "%s: %s", full, strerror(e));
            free(full);
            break;
        }
        if (!S_ISREG(sb.st_mode)) { /* subdirectories and special files are not read */
            free(full);
            continue;
        }
        v[n++] = full;
    }
    closedir(dp);
    if (rc) {
        free_list(v, n);
        return rc;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    *out = v;
    *n_out = n;
    return DS_OK;
}

/* A file about to be read as text that is something else ds reads another way: a NumPy file
 * (features are given with --labels; tokens come as text, llm.c shards or a Megatron dataset)
 * or a Megatron dataset's index or data file (given by its prefix). DS_OK when it looks like
 * text (any bytes are tokens of a byte-level text). */
static ds_status not_text(const char *file, const ds_mapped *m, ds_error *err)
{
    static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
    if (m->size >= 6 && !memcmp(m->data, npy_magic, 6))
        return ds_error_set(err, DS_ERR_INVALID, "%s: a NumPy file, not text: token data is text, llm.c token "
                            "shards or a Megatron dataset (a .npy holds features, given with --labels)", file);
    if (m->size >= 9 && !memcmp(m->data, "MMIDIDX\x00\x00", 9))
        return ds_error_set(err, DS_ERR_INVALID, "%s: a Megatron dataset's index, not text: give the dataset by "
                            "its prefix (--data %.*s)", file, (int)strlen(file) - 4, file);
    size_t l = strlen(file);
    if (l > 4 && !strcmp(file + l - 4, ".bin")) {
        char idx[4096];
        struct stat sb;
        snprintf(idx, sizeof idx, "%.*s.idx", (int)l - 4, file);
        if (stat(idx, &sb) == 0)
            return ds_error_set(err, DS_ERR_INVALID, "%s: a Megatron dataset's data file (%s is beside it), not "
                                "text: give the dataset by its prefix (--data %.*s)", file, idx, (int)l - 4, file);
    }
    return DS_OK;
}

/* A list of files (a directory or a glob) is either all llm.c shards or all text. */
static ds_status add_files(ds_dataset *ds, const char *what, char **files, int n, int *shards,
                           ds_error *err)
{
    int kind = -1; /* 1: llm.c shards, 0: text */
    const char *first = NULL;
    for (int i = 0; i < n; i++) {
        ds_mapped m;
        ds_status rc = ds_map_file(files[i], &m, err);
        if (rc)
            return rc;
        if (m.size == 0) { /* an empty file adds nothing, among text files or shards */
            ds_unmap_file(&m);
            continue;
        }
        int k = is_llmc(&m);
        if (kind >= 0 && k != kind) {
            ds_unmap_file(&m);
            return ds_error_set(err, DS_ERR_INVALID,
                                "%s: mixes llm.c token shards and other files (%s is a shard, %s "
                                "is not)", what, k ? files[i] : first, k ? first : files[i]);
        }
        kind = k;
        first = files[i];
        if (k)
            rc = add_llmc(ds, files[i], m, err);
        else if ((rc = not_text(files[i], &m, err)) != DS_OK)
            ds_unmap_file(&m);
        else
            rc = add_segment(ds, files[i], m, 0, TOK_U8, (int64_t)m.size, err);
        if (rc)
            return rc;
    }
    *shards = kind == 1;
    return DS_OK;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

ds_status ds_dataset_open_tokens(ds_dataset **out, const char *path, int seq_len, int vocab_size,
                                 ds_error *err)
{
    *out = NULL;
    if (seq_len < 1 || vocab_size < 1)
        return ds_error_set(err, DS_ERR_INVALID, "%s: seq_len (%d) and vocab_size (%d) must be >= 1",
                            path, seq_len, vocab_size);
    if (strlen(path) > 4000)
        return ds_error_set(err, DS_ERR_INVALID, "%.40s...: path too long", path);
    ds_dataset *ds = dataset_new(DS_DATASET_TOKENS, err, path);
    if (!ds)
        return DS_ERR_NOMEM;
    ds->seq_len = seq_len;
    ds->vocab = vocab_size;
    char prefix[4096];
    int64_t ndocs = 0;
    int nfiles = 0, shards = 0;
    const char *fmt = NULL;
    ds_status rc = DS_OK;
    struct stat sb;
    int found = stat(path, &sb) == 0;
    /* path less a 4-character extension (".bin", ".idx"): the Megatron prefix when it is one */
    snprintf(prefix, sizeof prefix, "%.*s", (int)strlen(path) - 4, path);
    if (found && S_ISDIR(sb.st_mode)) {
        char **files = NULL;
        if ((rc = list_dir(path, &files, &nfiles, err)))
            goto fail;
        rc = nfiles ? add_files(ds, path, files, nfiles, &shards, err)
                    : ds_error_set(err, DS_ERR_INVALID, "%s: directory holds no data files", path);
        free_list(files, nfiles);
        fmt = shards ? "llm.c shards" : "text";
    } else if (found && ends_with(path, ".idx")) {
        rc = add_megatron(ds, prefix, &ndocs, err);
        fmt = "megatron";
    } else if (found) {
        ds_mapped m;
        if ((rc = ds_map_file(path, &m, err)))
            goto fail;
        nfiles = 1;
        if (is_llmc(&m)) {
            rc = add_llmc(ds, path, m, err);
            fmt = "llm.c shards";
            shards = 1;
        } else if (ends_with(path, ".bin")) {
            ds_unmap_file(&m);
            char idx[sizeof prefix + 8];
            snprintf(idx, sizeof idx, "%s.idx", prefix);
            if (!exists(idx)) {
                rc = ds_error_set(err, DS_ERR_INVALID,
                                  "%s: neither an llm.c token shard (no magic %d in the header) nor "
                                  "a Megatron dataset (no %s beside it)", path, LLMC_MAGIC_GPT2, idx);
                goto fail;
            }
            rc = add_megatron(ds, prefix, &ndocs, err);
            fmt = "megatron";
        } else if ((rc = not_text(path, &m, err)) != DS_OK) {
            ds_unmap_file(&m);
            goto fail;
        } else {
            rc = m.size ? add_segment(ds, path, m, 0, TOK_U8, (int64_t)m.size, err) : DS_OK;
            fmt = "text";
        }
    } else {
        char bin[4096], idx[4096];
        snprintf(bin, sizeof bin, "%s.bin", path);
        snprintf(idx, sizeof idx, "%s.idx", path);
        glob_t g;
        if (exists(bin) && exists(idx)) {
            rc = add_megatron(ds, path, &ndocs, err);
            fmt = "megatron";
        } else if (strpbrk(path, "*?[") && glob(path, 0, NULL, &g) == 0) {
            nfiles = (int)g.gl_pathc;
            rc = add_files(ds, path, g.gl_pathv, nfiles, &shards, err);
            globfree(&g);
            fmt = shards ? "llm.c shards" : "text";
        } else {
            rc = ds_error_set(err, DS_ERR_IO,
                              "%s: no such file, directory, glob match or Megatron dataset "
                              "(%s.bin + %s.idx)", path, path, path);
        }
    }
    if (rc)
        goto fail;
    if (ds->ntokens < (int64_t)seq_len + 1) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: %lld tokens, but a sample of seq_len %d needs at least %d", path,
                          (long long)ds->ntokens, seq_len, seq_len + 1);
        goto fail;
    }
    for (int i = 0; i < ds->nseg; i++) {
        const segment *s = &ds->segs[i];
        int64_t bad = first_bad_token(s, vocab_size);
        if (bad >= 0) {
            rc = ds_error_set(err, DS_ERR_INVALID,
                              "%s: token %lld (counting from 0 in this file) is %lld, but vocab_size "
                              "is %d: token ids must be in [0, %d)", s->file, (long long)bad,
                              (long long)tok_at(s, bad), vocab_size, vocab_size);
            goto fail;
        }
    }
    ds->len = (ds->ntokens - 1) / seq_len;
    const char *tname = ds->nseg ? tok_info[ds->segs[0].type].name : "uint8";
    if (ndocs)
        snprintf(ds->desc, sizeof ds->desc, "megatron, %lld documents, %lld tokens (%s)",
                 (long long)ndocs, (long long)ds->ntokens, tname);
    else
        snprintf(ds->desc, sizeof ds->desc, "%s, %d file%s, %lld tokens%s%s%s", fmt, nfiles,
                 nfiles == 1 ? "" : "s", (long long)ds->ntokens, shards ? " (" : "",
                 shards ? tname : "", shards ? ")" : "");
    if (ds->n_binary)
        snprintf(ds->warning, sizeof ds->warning,
                 "%d of the text files look%s binary (NUL bytes in the first 4 KiB%s%.200s): every byte is a "
                 "token, so %s as if %s text", ds->n_binary, ds->n_binary == 1 ? "s" : "",
                 ds->n_binary == 1 ? ": " : "; the first: ", ds->binary_first, ds->n_binary == 1 ? "it trains" : "they train",
                 ds->n_binary == 1 ? "it were" : "they were");
    *out = ds;
    return DS_OK;
fail:
    ds_dataset_close(ds);
    return rc;
}

ds_status ds_dataset_get_tokens(const ds_dataset *ds, int64_t k, int32_t *inputs, int32_t *targets,
                                ds_error *err)
{
    if (ds->kind != DS_DATASET_TOKENS || k < 0 || k >= ds->len)
        return ds_error_set(err, DS_ERR_INVALID, "token sample %lld requested from %s (%lld samples)",
                            (long long)k, ds->desc, (long long)ds->len);
    int64_t g = k * ds->seq_len;
    int lo = 0, hi = ds->nseg - 1; /* last segment with start <= g */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ds->segs[mid].start <= g)
            lo = mid;
        else
            hi = mid - 1;
    }
    const segment *s = &ds->segs[lo];
    for (int i = 0; i <= ds->seq_len; i++, g++) {
        while (g >= s->start + s->n)
            s++; /* len guarantees the stream holds every token asked for */
        int32_t v = (int32_t)tok_at(s, g - s->start);
        if (i < ds->seq_len)
            inputs[i] = v;
        if (i > 0)
            targets[i - 1] = v;
    }
    return DS_OK;
}

/* --- NumPy features ------------------------------------------------------------------------ */

static int is_float(ds_dtype t)
{
    return t == DS_F32 || t == DS_F64 || t == DS_F16 || t == DS_BF16;
}

static void shape_str(const ds_npy *a, char *buf, size_t size)
{
    int n = snprintf(buf, size, "(");
    for (int i = 0; i < a->ndim && n < (int)size; i++)
        n += snprintf(buf + n, size - (size_t)n, "%s%lld", i ? ", " : "", (long long)a->shape[i]);
    if (n < (int)size)
        snprintf(buf + n, size - (size_t)n, "%s)", a->ndim == 1 ? "," : "");
}

ds_status ds_dataset_open_npy(ds_dataset **out, const char *x_path, const char *y_path, int dim,
                              ds_label_kind label_kind, int n_classes, int label_dim, ds_error *err)
{
    *out = NULL;
    ds_dataset *ds = dataset_new(DS_DATASET_FEATURES, err, x_path);
    if (!ds)
        return DS_ERR_NOMEM;
    ds->dim = dim;
    ds->label_kind = label_kind;
    ds->n_classes = n_classes;
    ds->label_dim = label_dim;
    char sh[128];
    ds_status rc = ds_npy_open(&ds->x, x_path, err);
    if (rc)
        goto fail;
    if ((rc = ds_npy_open(&ds->y, y_path, err)))
        goto fail;
    const ds_npy *x = ds->x, *y = ds->y;
    if (x->ndim != 2 || x->shape[1] != dim || x->shape[0] < 1 || !is_float(x->dtype)) {
        shape_str(x, sh, sizeof sh);
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: expected a float array of shape (N, %d) with N >= 1, found %s of shape %s",
                          x_path, dim, x->descr, sh);
        goto fail;
    }
    int64_t n = x->shape[0];
    shape_str(y, sh, sizeof sh);
    if (label_kind == DS_LABEL_CLASS) {
        if (y->ndim != 1 || y->shape[0] != n || is_float(y->dtype)) {
            rc = ds_error_set(err, DS_ERR_INVALID,
                              "%s: expected integer class labels of shape (%lld,) to match %s, found "
                              "%s of shape %s", y_path, (long long)n, x_path, y->descr, sh);
            goto fail;
        }
        for (int64_t i = 0; i < n; i++) {
            int64_t c = ds_npy_get_i64(y, i);
            if (c < 0 || c >= n_classes) { /* a uint64 above INT64_MAX reads negative */
                rc = ds_error_set(err, DS_ERR_INVALID,
                                  "%s: label %lld is %lld, expected a class in [0, %d)", y_path,
                                  (long long)i, (long long)c, n_classes);
                goto fail;
            }
        }
    } else if (y->ndim != 2 || y->shape[0] != n || y->shape[1] != label_dim || !is_float(y->dtype)) {
        rc = ds_error_set(err, DS_ERR_INVALID,
                          "%s: expected float label vectors of shape (%lld, %d) to match %s, found %s "
                          "of shape %s", y_path, (long long)n, label_dim, x_path, y->descr, sh);
        goto fail;
    }
    /* every value checked before the first step (as token data is): a NaN or inf, or a float64
     * beyond fp32's range, would surface only when its row is drawn, steps into the run */
    for (int a = 0; a < 2; a++) {
        const ds_npy *t = a ? y : x;
        const int64_t w = a ? label_dim : dim;
        if (a && label_kind == DS_LABEL_CLASS)
            break;
        for (int64_t i = 0; i < n * w; i++) {
            const double v = ds_npy_get_f64(t, i);
            if (isfinite((float)v)) /* what the batch will hold */
                continue;
            rc = isfinite(v) ? ds_error_set(err, DS_ERR_INVALID, "%s: row %lld, %s %lld: %g does not fit in fp32 "
                                            "(largest finite value %g)", a ? y_path : x_path, (long long)(i / w),
                                            a ? "target" : "feature", (long long)(i % w), v, (double)FLT_MAX)
                             : ds_error_set(err, DS_ERR_INVALID, "%s: row %lld, %s %lld: %g (expected a finite number)",
                                            a ? y_path : x_path, (long long)(i / w), a ? "target" : "feature",
                                            (long long)(i % w), v);
            goto fail;
        }
    }
    ds->len = n;
    snprintf(ds->desc, sizeof ds->desc, "npy, %lld samples, dim %d, %s %d", (long long)n, dim,
             label_kind == DS_LABEL_CLASS ? "classes" : "label dim",
             label_kind == DS_LABEL_CLASS ? n_classes : label_dim);
    *out = ds;
    return DS_OK;
fail:
    ds_dataset_close(ds);
    return rc;
}

ds_status ds_dataset_get_features(const ds_dataset *ds, int64_t k, float *x, int32_t *label_class,
                                  float *label_vec, ds_error *err)
{
    if (ds->kind != DS_DATASET_FEATURES || k < 0 || k >= ds->len)
        return ds_error_set(err, DS_ERR_INVALID, "feature sample %lld requested from %s (%lld samples)",
                            (long long)k, ds->desc, (long long)ds->len);
    /* a NaN or inf in the data would surface steps later as a non-finite gradient: name it here */
    for (int i = 0; i < ds->dim; i++) {
        x[i] = (float)ds_npy_get_f64(ds->x, k * ds->dim + i);
        if (!isfinite(x[i]))
            return ds_error_set(err, DS_ERR_INVALID, "%s: row %lld, feature %d: %g (expected a finite number)",
                                ds->x->path, (long long)k, i, (double)x[i]);
    }
    if (ds->label_kind == DS_LABEL_CLASS)
        *label_class = (int32_t)ds_npy_get_i64(ds->y, k);
    else
        for (int i = 0; i < ds->label_dim; i++) {
            label_vec[i] = (float)ds_npy_get_f64(ds->y, k * ds->label_dim + i);
            if (!isfinite(label_vec[i]))
                return ds_error_set(err, DS_ERR_INVALID, "%s: row %lld, target %d: %g (expected a finite number)",
                                    ds->y->path, (long long)k, i, (double)label_vec[i]);
        }
    return DS_OK;
}

ds_dataset_kind ds_dataset_kind_of(const ds_dataset *ds) { return ds->kind; }
int64_t ds_dataset_len(const ds_dataset *ds) { return ds->len; }
const char *ds_dataset_describe(const ds_dataset *ds) { return ds->desc; }

const char *ds_dataset_warning(const ds_dataset *ds) { return ds && ds->warning[0] ? ds->warning : NULL; }

/* --- sampler ------------------------------------------------------------------------------- */

/* splitmix64 (Steele, Lea, Flood 2014): a 64-bit counter run through a bijective mixer. Small,
 * fast, passes BigCrush, and fixed here forever so that orders are reproducible across builds. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound) without modulo bias: reject the low 2^64 mod bound values. */
static uint64_t uniform(uint64_t *state, uint64_t bound)
{
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t r = splitmix64(state);
        if (r >= threshold)
            return r % bound;
    }
}

ds_status ds_sampler_init(ds_sampler *s, ds_data_order order, uint64_t seed, int64_t n,
                          ds_error *err)
{
    *s = (ds_sampler){order, seed, n, -1, NULL};
    if (n < 1)
        return ds_error_set(err, DS_ERR_INVALID, "sampler: the dataset has %lld samples, expected >= 1",
                            (long long)n);
    if (order == DS_ORDER_SHUFFLED && !(s->perm = malloc((size_t)n * sizeof *s->perm)))
        return ds_error_set(err, DS_ERR_NOMEM, "sampler: out of memory for a permutation of %lld",
                            (long long)n);
    return DS_OK;
}

/* Epoch e's order: Fisher-Yates (i from n-1 down to 1, swap i with uniform j in [0, i]) driven by
 * splitmix64 whose state is s1 = next(seed); s2 = next(s1 ^ e), where next(x) is one splitmix64
 * output from state x: nearby seeds and epochs give unrelated orders. */
static void make_perm(ds_sampler *s, int64_t epoch)
{
    uint64_t st = s->seed;
    uint64_t st2 = splitmix64(&st) ^ (uint64_t)epoch;
    uint64_t state = splitmix64(&st2);
    for (int64_t i = 0; i < s->n; i++)
        s->perm[i] = i;
    for (int64_t i = s->n - 1; i > 0; i--) {
        int64_t j = (int64_t)uniform(&state, (uint64_t)i + 1);
        int64_t t = s->perm[i];
        s->perm[i] = s->perm[j];
        s->perm[j] = t;
    }
    s->cached_epoch = epoch;
}

int64_t ds_sampler_index(ds_sampler *s, int64_t position)
{
    if (s->n < 1 || position < 0)
        return -1;
    if (s->order == DS_ORDER_SEQUENTIAL || !s->perm)
        return position % s->n;
    int64_t epoch = position / s->n;
    if (epoch != s->cached_epoch)
        make_perm(s, epoch);
    return s->perm[position % s->n];
}

void ds_sampler_free(ds_sampler *s)
{
    free(s->perm);
    s->perm = NULL;
    s->cached_epoch = -1;
}
