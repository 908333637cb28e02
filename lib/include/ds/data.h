/* Datasets and the sampler. Token datasets: a plain text file or a directory of text files
 * (bytes are tokens), llm.c token shards (.bin, magic 20240520), Megatron indexed datasets
 * (<prefix>.bin + <prefix>.idx). Feature datasets: NumPy .npy inputs and labels.
 * Sample k of a token dataset is tokens [k*T, k*T+T]: T inputs and the T next-token targets. */
#ifndef DS_DATA_H
#define DS_DATA_H

#include <stdint.h>

#include "ds/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_dataset ds_dataset;

typedef enum ds_dataset_kind { DS_DATASET_TOKENS, DS_DATASET_FEATURES } ds_dataset_kind;

typedef enum ds_label_kind {
    DS_LABEL_CLASS,  /* one integer class index per sample (cross_entropy) */
    DS_LABEL_VECTOR  /* a float vector per sample (mse) */
} ds_label_kind;

/* Open a token dataset for sequences of seq_len tokens. The format is detected: a directory
 * (its regular files, in name order, concatenated as bytes), a .bin with the llm.c magic, a
 * Megatron prefix (PATH.bin and PATH.idx, or PATH naming either), else a text file.
 * Every token must be < vocab_size (error names file and position). */
ds_status ds_dataset_open_tokens(ds_dataset **out, const char *path, int seq_len,
                                 int vocab_size, ds_error *err);

/* Open NumPy feature data: x of shape [N, dim] (float32/float64), y of shape [N] (integer
 * classes, each < n_classes; label_kind CLASS) or [N, label_dim] (float; label_kind VECTOR). */
ds_status ds_dataset_open_npy(ds_dataset **out, const char *x_path, const char *y_path,
                              int dim, ds_label_kind label_kind, int n_classes, int label_dim,
                              ds_error *err);

void ds_dataset_close(ds_dataset *ds);
ds_dataset_kind ds_dataset_kind_of(const ds_dataset *ds);
/* Number of samples. */
int64_t ds_dataset_len(const ds_dataset *ds);
/* A one-line description: "text, 3 files, 1234567 tokens" */
const char *ds_dataset_describe(const ds_dataset *ds);
/* A warning about the data, NULL if none: text files that look binary (a NUL byte in their first
 * 4 KiB; --data /bin/ls trains on a program's bytes). The caller decides whether to show it. */
const char *ds_dataset_warning(const ds_dataset *ds);

/* Sample k (0 <= k < len) of a token dataset: seq_len inputs and seq_len targets. */
ds_status ds_dataset_get_tokens(const ds_dataset *ds, int64_t k, int32_t *inputs,
                                int32_t *targets, ds_error *err);
/* Sample k of a feature dataset: dim floats, and either *label_class or label_vec[label_dim]. */
ds_status ds_dataset_get_features(const ds_dataset *ds, int64_t k, float *x, int32_t *label_class,
                                  float *label_vec, ds_error *err);

typedef enum ds_data_order { DS_ORDER_SHUFFLED, DS_ORDER_SEQUENTIAL } ds_data_order;

/* Which sample sits at global position p (p = step * batch + i, counting from 0 over the whole
 * run). Sequential: p mod N. Shuffled: epoch e = p / N uses a permutation of 0..N-1 drawn from
 * (seed, e); the result is perm_e[p mod N]. Stateless, so a resumed run continues exactly. */
typedef struct ds_sampler {
    ds_data_order order;
    uint64_t seed;
    int64_t n;          /* dataset length */
    int64_t cached_epoch;
    int64_t *perm;      /* permutation of the cached epoch (shuffled order only) */
} ds_sampler;

ds_status ds_sampler_init(ds_sampler *s, ds_data_order order, uint64_t seed, int64_t n,
                          ds_error *err);
int64_t ds_sampler_index(ds_sampler *s, int64_t position);
void ds_sampler_free(ds_sampler *s);

#ifdef __cplusplus
}
#endif
#endif
