/* Checkpoints on disk (ds-checkpoint(5)): DeepSpeed's directory shape (latest, TAG/,
 * mp_rank_00_model_states, zero_pp_rank_D_mp_rank_00_optim_states) with tensors in safetensors
 * files, metadata in TAG/manifest.json and a SHA-256 of every file in TAG/SHA256SUMS. Opening,
 * verifying, merging, converting and re-sharding a checkpoint; the engine's save and load
 * (ds_engine_save_checkpoint / ds_engine_load_checkpoint, ds/engine.h) are built on the same
 * code. Everything streams through fixed buffers: memory does not grow with the model. */
#ifndef DS_CKPT_H
#define DS_CKPT_H

#include <stdint.h>

#include "ds/dtype.h"
#include "ds/status.h"
#include "ds/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DS_CKPT_FORMAT_VERSION 1
#define DS_CKPT_ALIGN 16 /* the partition rule's alignment unit (elements) per partition */

/* The ZeRO partition rule (engine.h): N elements over W partitions; partition r is
 * [*begin, *end). Returns the padded length Np. */
int64_t ds_ckpt_partition_range(int64_t numel, int world, int r, int64_t *begin, int64_t *end);

typedef struct ds_ckpt_param {
    char name[DS_NAME_MAX];
    int ndim;
    int64_t shape[DS_MAX_DIMS];
    int64_t offset, numel; /* elements, in the flat buffers */
} ds_ckpt_param;

typedef struct ds_ckpt_partition {
    int64_t begin, end;   /* flat elements stored in this file */
    char *file;           /* name inside the tag directory */
} ds_ckpt_partition;

typedef struct ds_ckpt_file {
    char *name;           /* inside the tag directory */
    int64_t bytes;
    uint8_t sha256[32];
} ds_ckpt_file;

/* An opened tag: manifest and checksum list parsed, every listed file present with its size. */
typedef struct ds_ckpt {
    char *dir, *tag, *path;  /* path = dir/tag */
    int version;
    int64_t global_steps, global_samples, micro_steps, skipped_steps, optimizer_step;
    int zero_stage, dp_world_size, mp_world_size;
    char precision[8];       /* "fp32", "fp16", "bf16" */
    char *optimizer;
    int n_state;
    char *state_names[8];
    int64_t numel;           /* N of the flat buffers */
    int partition_world;
    ds_ckpt_partition *parts;
    int n_params;
    ds_ckpt_param *params;
    char *model_file;        /* mp_rank_00_model_states.safetensors */
    int n_files;
    ds_ckpt_file *files;     /* every file of the tag but SHA256SUMS, manifest.json first */
    void *manifest;          /* json_object * (internal) */
    void *readers;           /* open partition files (internal) */
} ds_ckpt;

/* The tag DIR/latest names (malloc'ed), or *tag = NULL and DS_OK when there is no DIR/latest. */
ds_status ds_ckpt_latest(const char *dir, char **tag, ds_error *err);
/* The checkpoint a resume takes: the last saved tag of DIR (by the manifests' save_seq, then
 * global step; the one latest names when it is among the last). Later than latest only when a
 * save was interrupted after its tag directory was committed and before latest was rewritten.
 * *tag = NULL: none. */
ds_status ds_ckpt_newest(const char *dir, char **tag, ds_error *err);
/* The tags of DIR that hold a manifest.json, oldest step first (malloc'ed array of malloc'ed
 * strings), and the names of leftover temporary directories of interrupted saves. */
ds_status ds_ckpt_list(const char *dir, char ***tags, int *n, char ***leftovers, int *n_left,
                       ds_error *err);
void ds_ckpt_free_list(char **names, int n);
/* Open DIR/TAG (tag NULL: latest). Checks completeness (every file the manifest lists exists
 * with the size SHA256SUMS records) and the manifest's own checksum; not the other files'
 * checksums (ds_ckpt_verify_file). Errors name the file and what was expected. */
ds_status ds_ckpt_open(ds_ckpt **out, const char *dir, const char *tag, ds_error *err);
void ds_ckpt_close(ds_ckpt *c);
/* Hash files[i] and compare with SHA256SUMS ("checksum mismatch (file damaged?)"). */
ds_status ds_ckpt_verify_file(ds_ckpt *c, int i, ds_error *err);
/* The manifest's value at a top-level key as JSON text (malloc'ed), or NULL. */
char *ds_ckpt_manifest_get(const ds_ckpt *c, const char *key);

/* Copy flat elements [begin, end) of a stored buffer ("fp32" master weights or a state name)
 * from the partition files, in chunks of at most 1 Mi elements: sink(ctx, first element,
 * values, count) in increasing order. Memory: one chunk. */
typedef ds_status (*ds_ckpt_sink)(void *ctx, int64_t first, const float *values, int64_t count,
                                  ds_error *err);
ds_status ds_ckpt_read_range(ds_ckpt *c, const char *buffer, int64_t begin, int64_t end,
                             ds_ckpt_sink sink, void *ctx, ds_error *err);

/* One safetensors file of the full weights by parameter name in dtype (DS_F32, DS_F16,
 * DS_BF16), which PyTorch loads by name; with_optimizer adds the full optimizer state as
 * "optimizer.<state>.<param>" (fp32) and the counters as metadata. Streams: memory is a
 * constant, whatever the model's size. An existing out is refused unless force. */
ds_status ds_ckpt_export(ds_ckpt *c, const char *out, ds_dtype dtype, int with_optimizer,
                         int force, ds_error *err);
/* A copy of the checkpoint (out/latest, out/TAG) with its partitioned state re-cut for dp
 * data-parallel ranks under the partition rule; resumable on dp ranks (and, like any
 * checkpoint, on any other count). */
ds_status ds_ckpt_reshard(ds_ckpt *c, const char *out, int dp, int force, ds_error *err);
/* Whether reshard may replace out (with force): absent, an empty directory or a checkpoint
 * directory (a latest file, or a tag with a manifest); DS_ERR_INVALID naming it otherwise. */
ds_status ds_ckpt_check_output_dir(const char *out, ds_error *err);
/* Delete all but the last keep saved complete tags of dir (save_seq order, as ds_ckpt_newest;
 * never the one latest names). */
ds_status ds_ckpt_prune(const char *dir, int keep, int *deleted, ds_error *err);

#ifdef __cplusplus
}
#endif
#endif
