/* A user-supplied optimizer with libds: sign-SGD with momentum (p -= lr * sign(m), m = b m + g),
 * registered under the name "SignSGD" and selected by the config's optimizer.type, training a
 * small MLP on a synthetic 4-class problem. Build against an installed libds:
 *
 *     cc user-optimizer.c $(pkg-config --cflags --libs libds) -o user-optimizer
 *
 * It prints the loss every 20 steps and exits 0 when training lowered the loss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ds/ds.h>

typedef struct sign_sgd {
    double beta; /* optimizer.params.beta, default 0.9 */
} sign_sgd;

/* Read "beta" from optimizer.params; anything else is an error naming the key. A real program
 * would use a JSON parser (json-c); this one only scans for the number. */
static ds_status sign_init(void *ctx, const char *params_json, ds_error *err)
{
    sign_sgd *o = ctx;
    o->beta = 0.9;
    const char *b = strstr(params_json, "\"beta\"");
    if (b) {
        char *end;
        b = strchr(b, ':');
        o->beta = b ? strtod(b + 1, &end) : -1;
        if (!b || end == b + 1 || o->beta < 0 || o->beta >= 1)
            return ds_error_set(err, DS_ERR_INVALID, "optimizer.params.beta: expected a number in [0, 1)");
    }
    return DS_OK;
}

static ds_status sign_step(void *ctx, const ds_user_optimizer_step *s, ds_error *err)
{
    (void)err;
    const sign_sgd *o = ctx;
    float *m = s->state[0];
    for (int64_t i = 0; i < s->n; i++) {
        m[i] = (float)o->beta * m[i] + s->grads[i] * s->grad_scale;
        s->params[i] -= (float)s->lr * (float)((m[i] > 0) - (m[i] < 0));
    }
    return DS_OK;
}

int main(void)
{
    const char *net = "{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": ["
                      "{\"type\": \"linear\", \"name\": \"fc1\", \"out\": 32}, {\"type\": \"relu\"},"
                      "{\"type\": \"linear\", \"name\": \"fc2\", \"out\": 4}],"
                      "\"loss\": {\"type\": \"cross_entropy\"}}";
    const char *config = "{\"train_micro_batch_size_per_gpu\": 16, \"gradient_clipping\": 1.0,"
                         "\"optimizer\": {\"type\": \"SignSGD\", \"params\": {\"lr\": 0.002, \"beta\": 0.9}}}";
    sign_sgd state;
    ds_user_optimizer opts_user = {.name = "SignSGD", .n_state = 1, .init = sign_init,
                                   .step = sign_step, .ctx = &state};
    ds_engine_options o = {.config_json = config, .config_name = "example ds.json",
                           .net_json = net, .net_name = "example net.json",
                           .user_optimizers = &opts_user, .n_user_optimizers = 1};
    ds_engine *e;
    ds_error err = {0};
    if (ds_initialize(&e, &o, &err) != DS_OK) {
        fprintf(stderr, "user-optimizer: %s\n", err.msg);
        return 1;
    }
    float x[16 * 8];
    int32_t y[16];
    uint64_t r = 42;
    double first = 0, last = 0;
    for (int step = 1; step <= 200; step++) {
        for (int i = 0; i < 16; i++) { /* the class is the quadrant of (x0, x1) */
            for (int k = 0; k < 8; k++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                x[i * 8 + k] = (float)((double)(r >> 11) / 9007199254740992.0 * 2 - 1);
            }
            y[i] = (x[i * 8] > 0) + 2 * (x[i * 8 + 1] > 0);
        }
        ds_batch b = {.x = x, .labels = y};
        double loss;
        if (ds_engine_forward(e, &b, &loss, &err) || ds_engine_backward(e, &err) || ds_engine_step(e, &err)) {
            fprintf(stderr, "user-optimizer: %s\n", err.msg);
            ds_engine_destroy(e);
            return 1;
        }
        if (step <= 20)
            first += loss / 20;
        if (step > 180)
            last += loss / 20;
        if (step % 20 == 0)
            printf("step %d: loss %.4f\n", step, loss);
    }
    printf("mean loss of the first 20 steps %.4f, of the last 20 %.4f\n", first, last);
    ds_engine_destroy(e);
    return last < 0.8 * first ? 0 : 1;
}
