/* The network at run time (internal to libds): activation and gradient buffers for a fixed
 * micro-batch, and forward/backward over the flat parameter and gradient buffers through the
 * backend. The engine owns one; layers never see the optimizer or the communicator. */
#ifndef DS_NET_INTERNAL_H
#define DS_NET_INTERNAL_H

#include "ds/backend.h"
#include "ds/net.h"

typedef struct ds_model ds_model;

/* batch: samples per micro-batch (B). round: 16-bit numerics (a ds_round_mode; 0: fp32):
 * activations and their gradients are 16-bit values at every layer boundary, stored in 16 bits
 * when the backend has store16 (and DS_ACT16 is not 0), else rounded in fp32 buffers (the
 * backend must have round16). */
/* Activation checkpointing of the net's checkpointed repeats (ds_repeat.checkpoint): each
 * iteration is a segment whose output is kept (the checkpoint) while its inner activations share
 * one set of buffers with the repeat's other iterations; backward recomputes a segment's forward
 * from its input before going through it (not the repeat's last, whose activations are still
 * there). The gradients are the same bits as without checkpointing. */
typedef struct ds_model_ckpt {
    int contiguous;  /* a repeat's checkpoints in one allocation (contiguous_memory_optimization) */
    int synchronize; /* backend synchronize before and after each segment's forward and backward
                        (synchronize_checkpoint_boundary) */
    int profile;     /* time the segments' forwards, backwards and recomputations (profile) */
    int layer_drop;  /* progressive layer drop (not checkpointing, but set at creation too: a
                        dropped block's branch has its own gradient buffer): see below */
} ds_model_ckpt;

/* ck: NULL for the defaults (both 0). */
ds_status ds_model_create(ds_model **out, const ds_net *net, ds_backend *be, int64_t batch,
                          int round, const ds_model_ckpt *ck, ds_error *err);
void ds_model_destroy(ds_model *m);

/* Upload one micro-batch from host memory: inputs (tokens int32 [B*T] or features float [B*F])
 * and targets (int32 [B*T] or [B] classes, or float [B*out] for mse). */
ds_status ds_model_upload_batch(ds_model *m, const void *inputs, const void *targets, ds_error *err);

/* Forward pass on the uploaded batch; *loss is the mean loss over the batch. With grad_scale
 * > 0 the loss gradient (times grad_scale) is prepared for backward in the same pass.
 * train enables dropout; seed varies the dropout masks per micro-step. */
ds_status ds_model_forward(ds_model *m, const float *params, int train, float grad_scale,
                           uint64_t seed, double *loss, ds_error *err);
/* Backward pass after a forward with grad_scale > 0: adds this micro-batch's gradients to grads. */
ds_status ds_model_backward(ds_model *m, const float *params, float *grads, ds_error *err);
/* The last layer's output (logits) of the last forward, [B*positions, out_dim], as floats. */
ds_status ds_model_download_output(ds_model *m, float *host, ds_error *err);
/* The 16-bit format activations and weights are stored in (a ds_round_mode), 0 when they are
 * fp32: then the params given to forward and backward are the working weights as 2-byte values
 * of that format (with the flat offsets of the fp32 layout, counted in elements). */
int ds_model_storage16(const ds_model *m);
/* ZeRO-2: ptrs[i] is where tensor i's gradient is accumulated during backward (instead of
 * grads + its offset); NULL restores the flat buffer. The array must outlive its use. */
void ds_model_set_grad_ptrs(ds_model *m, float *const *ptrs);
/* ZeRO-3: ptrs[i] is where tensor i's weights are (in the storage format: 2-byte values with
 * 16-bit storage), instead of params + its offset; NULL restores the flat buffer. The pointers
 * of a layer's tensors must be valid when its fetch hook returns. */
void ds_model_set_param_ptrs(ds_model *m, const float *const *ptrs);
/* Called before each layer's forward (recomputations included) and backward that reads the
 * layer's weights: ZeRO-3 gathers them then; an error stops the pass. NULL: none. */
void ds_model_set_fetch_hook(ds_model *m, ds_status (*fetch)(void *ctx, int layer, ds_error *err), void *ctx);
/* Called after each layer's backward (layers in reverse order: the gradients of tensors no
 * layer below uses are complete then); an error stops the backward pass. NULL: none. */
void ds_model_set_backward_hook(ds_model *m, ds_status (*hook)(void *ctx, int layer, ds_error *err),
                                void *ctx);
/* The positions per sample of the following passes: 1 to the network's (a tokens network's
 * seq_len; curriculum learning's shorter sequences use the front of every buffer). Uploads then
 * take B*T rows. */
ds_status ds_model_set_positions(ds_model *m, int64_t T, ds_error *err);
int64_t ds_model_positions(const ds_model *m);
/* Progressive layer drop (created with layer_drop): the iterations of every outermost repeat
 * whose layers are residual blocks (a transformer's layers), 1..L in network order, are dropped
 * by training forwards with probability (l/L)(1 - theta): a dropped one passes its input on
 * unchanged (its layers neither run nor get gradients, their fetch hooks are not called, their
 * backward hooks are); a kept one's residual branches are scaled by 1/p_l, p_l = 1 - (l/L)(1 -
 * theta). The draws are a pure function of the forward's seed. Creation fails when the network
 * has no such repeat, or the backend no scale_act. depth: L (0: off). set: theta for the
 * following training forwards (1 until set). kept: whether the last training forward kept iteration l. */
int ds_model_layer_drop_depth(const ds_model *m);
void ds_model_set_layer_drop(ds_model *m, double theta);
int ds_model_layer_kept(const ds_model *m, int l);
/* Bytes of activation memory held. */
size_t ds_model_activation_bytes(const ds_model *m);
/* Checkpointed segments, and the segment forwards recomputed by backward passes so far. */
void ds_model_checkpoint_stats(const ds_model *m, int *segments, int64_t *recomputed);
/* With ds_model_ckpt.profile: milliseconds so far in the segments' forwards, their backwards
 * (recomputation included) and the recomputations alone; else 0. */
void ds_model_checkpoint_times(const ds_model *m, double *forward_ms, double *backward_ms, double *recompute_ms);

#endif
