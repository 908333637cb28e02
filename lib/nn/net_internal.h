/* The network at run time (internal to libds): activation and gradient buffers for a fixed
 * micro-batch, and forward/backward over the flat parameter and gradient buffers through the
 * backend. The engine owns one; layers never see the optimizer or the communicator. */
#ifndef DS_NET_INTERNAL_H
#define DS_NET_INTERNAL_H

#include "ds/backend.h"
#include "ds/net.h"

typedef struct ds_model ds_model;

/* batch: samples per micro-batch (B). */
ds_status ds_model_create(ds_model **out, const ds_net *net, ds_backend *be, int64_t batch,
                          ds_error *err);
void ds_model_destroy(ds_model *m);

/* Backend buffers for one micro-batch: inputs (tokens int32 [B*T] or features float [B*F]) and
 * targets (int32 [B*T] or [B] classes, or float [B*out] for mse). */
void *ds_model_input_buffer(ds_model *m);
void *ds_model_target_buffer(ds_model *m);
size_t ds_model_input_bytes(const ds_model *m);
size_t ds_model_target_bytes(const ds_model *m);

/* Forward pass on the uploaded batch; *loss is the mean loss over the batch. With grad_scale
 * > 0 the loss gradient (times grad_scale) is prepared for backward in the same pass.
 * train enables dropout; seed varies the dropout masks per micro-step. */
ds_status ds_model_forward(ds_model *m, const float *params, int train, float grad_scale,
                           uint64_t seed, double *loss, ds_error *err);
/* Backward pass after a forward with grad_scale > 0: adds this micro-batch's gradients to grads. */
ds_status ds_model_backward(ds_model *m, const float *params, float *grads, ds_error *err);
/* The last layer's output (logits) of the last forward, [B*positions, out_dim] floats. */
const float *ds_model_output(const ds_model *m);
/* 16-bit numerics (a ds_round_mode; 0: fp32): activations and their gradients are rounded to
 * the format at every layer boundary. The backend must have round16. */
void ds_model_set_round(ds_model *m, int mode);
/* ZeRO-2: ptrs[i] is where tensor i's gradient is accumulated during backward (instead of
 * grads + its offset); NULL restores the flat buffer. The array must outlive its use. */
void ds_model_set_grad_ptrs(ds_model *m, float *const *ptrs);
/* Called after each layer's backward (layers in reverse order: the gradients of tensors no
 * layer below uses are complete then); an error stops the backward pass. NULL: none. */
void ds_model_set_backward_hook(ds_model *m, ds_status (*hook)(void *ctx, int layer, ds_error *err),
                                void *ctx);
/* Bytes of activation memory held. */
size_t ds_model_activation_bytes(const ds_model *m);

#endif
