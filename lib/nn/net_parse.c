/* Network files: JSON -> a flat list of layers with inferred shapes and a parameter table.
 * `repeat` is unrolled (children named <name>.<i>.<child>), `residual` becomes a BEGIN/END pair.
 * Every error names the file and the JSON path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_util.h"
#include "ds/net.h"
#include "ds/rng.h"

typedef struct parser {
    ds_net *net;
    const char *file;
    ds_error *err;
    int cap;
    int64_t dim; /* running feature size */
    ds_status layer_st; /* why new_layer gave NULL */
    int depth;          /* repeats the parser is inside */
    const char *ckpt;   /* the JSON path of the checkpointed repeat it is inside, or NULL */
    int rcap;           /* capacity of net->repeats */
} parser;

const char *ds_layer_kind_name(ds_layer_kind k)
{
    switch (k) {
    case DS_LAYER_EMBEDDING: return "embedding";
    case DS_LAYER_POSITION_EMBEDDING: return "position_embedding";
    case DS_LAYER_LAYERNORM: return "layernorm";
    case DS_LAYER_LINEAR: return "linear";
    case DS_LAYER_ATTENTION: return "attention";
    case DS_LAYER_GELU: return "gelu";
    case DS_LAYER_RELU: return "relu";
    case DS_LAYER_DROPOUT: return "dropout";
    case DS_LAYER_RESIDUAL_BEGIN: return "residual";
    case DS_LAYER_RESIDUAL_END: return "residual_end";
    }
    return "?";
}

static ds_status perr(parser *p, const char *jpath, const char *fmt, const char *a, const char *b)
{
    char msg[512];
    snprintf(msg, sizeof msg, fmt, a ? a : "", b ? b : "");
    return ds_error_set(p->err, DS_ERR_INVALID, "%s: %s%s%s", p->file, jpath, *jpath ? ": " : "",
                        msg);
}

/* Only the listed keys may appear in an object. */
static ds_status check_keys(parser *p, json_object *obj, const char *jpath, const char *const *allowed)
{
    json_object_object_foreach(obj, key, val)
    {
        (void)val;
        int ok = 0;
        for (int i = 0; allowed[i]; i++)
            if (strcmp(key, allowed[i]) == 0)
                ok = 1;
        if (!ok) {
            char list[256] = "";
            for (int i = 0; allowed[i]; i++) {
                strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
                strncat(list, allowed[i], sizeof list - strlen(list) - 1);
            }
            char path[256];
            snprintf(path, sizeof path, "%s%s%s", jpath, *jpath ? "." : "", key);
            return perr(p, path, "unknown key (expected one of: %s)", list, NULL);
        }
    }
    return DS_OK;
}

/* Integer field: required (def < 0 means required) and >= min. */
static ds_status get_int(parser *p, json_object *obj, const char *jpath, const char *key,
                         int64_t def, int64_t min, int64_t *out)
{
    json_object *v;
    char path[256];
    snprintf(path, sizeof path, "%s%s%s", jpath, *jpath ? "." : "", key);
    if (!json_object_object_get_ex(obj, key, &v)) {
        if (def < 0)
            return perr(p, path, "missing (expected an integer)", NULL, NULL);
        *out = def;
        return DS_OK;
    }
    int64_t x;
    if (json_object_is_type(v, json_type_int)) {
        x = json_object_get_int64(v);
    } else if (json_object_is_type(v, json_type_double) && fabs(json_object_get_double(v)) < 9.2e18 &&
               json_object_get_double(v) == floor(json_object_get_double(v))) {
        x = (int64_t)json_object_get_double(v); /* in range: 644e36 is no integer here, and no wrap */
    } else {
        char found[80];
        ds_json_render(v, found, sizeof found);
        return perr(p, path, "expected an integer, found %s", found, NULL);
    }
    /* sizes beyond 2^31 are never meant and would overflow the products below */
    if (x > 2147483647) {
        char m[64];
        snprintf(m, sizeof m, "%lld", (long long)x);
        return perr(p, path, "%s is too large (at most 2147483647)", m, NULL);
    }
    if (x < min) {
        char m[64];
        snprintf(m, sizeof m, "%lld, found %lld", (long long)min, (long long)x);
        return perr(p, path, "expected an integer >= %s", m, NULL);
    }
    *out = x;
    return DS_OK;
}

static ds_status get_bool(parser *p, json_object *obj, const char *jpath, const char *key, int def,
                          int *out)
{
    json_object *v;
    if (!json_object_object_get_ex(obj, key, &v)) {
        *out = def;
        return DS_OK;
    }
    if (!json_object_is_type(v, json_type_boolean)) {
        char path[256], found[80];
        snprintf(path, sizeof path, "%s.%s", jpath, key);
        ds_json_render(v, found, sizeof found);
        return perr(p, path, "expected true or false, found %s", found, NULL);
    }
    *out = json_object_get_boolean(v);
    return DS_OK;
}

/* Optional string field; *out NULL if absent. */
static ds_status get_str(parser *p, json_object *obj, const char *jpath, const char *key,
                         const char **out)
{
    json_object *v;
    *out = NULL;
    if (!json_object_object_get_ex(obj, key, &v))
        return DS_OK;
    if (!json_object_is_type(v, json_type_string)) {
        char path[256], found[80];
        snprintf(path, sizeof path, "%s%s%s", jpath, *jpath ? "." : "", key);
        ds_json_render(v, found, sizeof found);
        return perr(p, path, "expected a string, found %s", found, NULL);
    }
    *out = json_object_get_string(v);
    return DS_OK;
}

/* Layers a network may expand to (repeat counts multiply): far above any real model's (a
 * 96-block GPT has about 1,000), and low enough that a typo in a count is refused at once
 * instead of eating memory and time. */
#define DS_NET_MAX_LAYERS 16384

/* A layer's forward FLOPs per sample, worked out in double (exact below 2^53) and refused past
 * 2^62, where the int64 products and their sum over the layers would overflow (seq_len 1e8 with
 * attention: 4 T^2 C). */
static ds_status set_flops(parser *p, ds_layer *l, const char *jpath, double flops)
{
    if (!(flops < 0x1p62)) {
        char m[64];
        snprintf(m, sizeof m, "%.3g", flops);
        return perr(p, jpath, "%s forward FLOPs per sample: too large (at most 2^62; seq_len or dim too large)", m,
                    NULL);
    }
    l->flops = (int64_t)flops;
    return DS_OK;
}

static ds_layer *new_layer(parser *p, ds_layer_kind kind, const char *path, const char *jpath)
{
    ds_net *net = p->net;
    if (net->n_layers >= DS_NET_MAX_LAYERS) {
        p->layer_st = ds_error_set(p->err, DS_ERR_INVALID, "%s: %s: the network expands to more than %d layers "
                                   "(repeat counts multiply); expected at most that", p->file, jpath,
                                   DS_NET_MAX_LAYERS);
        return NULL;
    }
    if (net->n_layers == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 32;
        ds_layer *l = realloc(net->layers, (size_t)p->cap * sizeof *l);
        if (!l) {
            p->layer_st = ds_error_set(p->err, DS_ERR_NOMEM, "out of memory");
            return NULL;
        }
        net->layers = l;
    }
    ds_layer *l = &net->layers[net->n_layers++];
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->w = l->b = l->w2 = l->b2 = -1;
    l->begin = -1;
    snprintf(l->path, sizeof l->path, "%s", path);
    snprintf(l->json_path, sizeof l->json_path, "%s", jpath);
    l->in_dim = l->out_dim = p->dim;
    return l;
}

static int add_param(parser *p, const char *prefix, const char *suffix, int ndim, int64_t d0,
                     int64_t d1, ds_param_init init)
{
    char name[DS_NAME_MAX + 16];
    snprintf(name, sizeof name, "%s.%s", prefix, suffix);
    int64_t shape[2] = {d0, d1};
    int idx = ds_table_add(&p->net->params, name, ndim, shape, p->err);
    if (idx < 0) {
        const char *jpath = p->net->n_layers > 0 ? p->net->layers[p->net->n_layers - 1].json_path : "";
        ds_error_prefix(p->err, "%s: %s%s", p->file, jpath, *jpath ? ": " : "");
        return -1;
    }
    ds_param_init *in = realloc(p->net->init, (size_t)p->net->params.cap * sizeof *in);
    if (!in) {
        ds_error_set(p->err, DS_ERR_NOMEM, "out of memory");
        return -1;
    }
    p->net->init = in;
    in[idx] = init;
    p->net->total_params += p->net->params.t[idx].numel;
    return idx;
}

static ds_status parse_layers(parser *p, json_object *arr, const char *jpath, const char *prefix);

static ds_status need_name(parser *p, json_object *obj, const char *jpath, const char *type,
                           const char *prefix, char *path_out)
{
    const char *name;
    ds_status st = get_str(p, obj, jpath, "name", &name);
    if (st != DS_OK)
        return st;
    if (!name || !*name) {
        char path[256];
        snprintf(path, sizeof path, "%s.name", jpath);
        return perr(p, path, name ? "empty: a %s layer needs a \"name\" (its parameters are named after it)"
                                  : "missing: a %s layer needs a \"name\" (its parameters are named after it)",
                    type, NULL);
    }
    if (strchr(name, '.') || strlen(name) > 64) {
        char path[256];
        snprintf(path, sizeof path, "%s.name", jpath);
        return perr(p, path, "\"%s\" is not a valid name (no dots, at most 64 characters)", name, NULL);
    }
    /* the full name, and its longest parameter name (NAME.weight; an attention's
     * NAME.proj.weight; a repeat has none, its layers are checked as they come), must fit:
     * never cut */
    const size_t full = strlen(prefix) + (*prefix ? 1 : 0) + strlen(name);
    const char *suffix = !strcmp(type, "attention") ? ".proj.weight" : !strcmp(type, "repeat") ? "" : ".weight";
    if (full + strlen(suffix) >= DS_NAME_MAX) {
        char path[256], msg[DS_NAME_MAX * 2 + 128];
        snprintf(path, sizeof path, "%s.name", jpath);
        snprintf(msg, sizeof msg, "the layer's full name %s%s%s is %zu characters; with its parameters' suffix "
                 "(\"%s\") names must stay under %d: shorten it or the enclosing repeats' names",
                 prefix, *prefix ? "." : "", name, full, suffix, DS_NAME_MAX);
        return perr(p, path, "%s", msg, NULL);
    }
    snprintf(path_out, DS_NAME_MAX, "%s%s%s", prefix, *prefix ? "." : "", name);
    return DS_OK;
}

/* the name of a layer without parameters: ignored, but a string if given */
static ds_status unused_name(parser *p, json_object *obj, const char *jpath)
{
    const char *name;
    return get_str(p, obj, jpath, "name", &name);
}

static ds_status parse_layer(parser *p, json_object *obj, const char *jpath, const char *prefix)
{
    ds_net *net = p->net;
    if (!json_object_is_type(obj, json_type_object)) {
        char found[80];
        ds_json_render(obj, found, sizeof found);
        return perr(p, jpath, "expected a layer object, found %s", found, NULL);
    }
    const char *type;
    ds_status st = get_str(p, obj, jpath, "type", &type);
    if (st != DS_OK)
        return st;
    if (!type) {
        char path[256];
        snprintf(path, sizeof path, "%s.type", jpath);
        return perr(p, path, "missing (expected a layer type)", NULL, NULL);
    }
    char path[DS_NAME_MAX] = "";
    const int64_t T = net->positions;

    if (strcmp(type, "embedding") == 0) {
        static const char *const keys[] = {"type", "name", "dim", NULL};
        int64_t dim;
        if ((st = check_keys(p, obj, jpath, keys)) || (st = need_name(p, obj, jpath, type, prefix, path)) ||
            (st = get_int(p, obj, jpath, "dim", -1, 1, &dim)))
            return st;
        if (net->input != DS_INPUT_TOKENS || net->n_layers != 0)
            return perr(p, jpath, "an embedding must be the first layer of a tokens network", NULL, NULL);
        ds_layer *l = new_layer(p, DS_LAYER_EMBEDDING, path, jpath);
        if (!l)
            return p->layer_st;
        l->in_dim = 1;
        l->out_dim = p->dim = dim;
        if ((l->w = add_param(p, path, "weight", 2, net->vocab_size, dim, DS_INIT_NORMAL)) < 0)
            return p->err->code;
        l->params = net->vocab_size * dim;
        return DS_OK;
    }
    if (net->n_layers == 0 && net->input == DS_INPUT_TOKENS)
        return perr(p, jpath, "the first layer of a tokens network must be an embedding, found \"%s\"",
                    type, NULL);
    if (strcmp(type, "position_embedding") == 0) {
        static const char *const keys[] = {"type", "name", NULL};
        if ((st = check_keys(p, obj, jpath, keys)) || (st = need_name(p, obj, jpath, type, prefix, path)))
            return st;
        if (net->input != DS_INPUT_TOKENS)
            return perr(p, jpath, "position_embedding needs a tokens input", NULL, NULL);
        ds_layer *l = new_layer(p, DS_LAYER_POSITION_EMBEDDING, path, jpath);
        if (!l)
            return p->layer_st;
        if ((l->w = add_param(p, path, "weight", 2, net->seq_len, p->dim, DS_INIT_NORMAL)) < 0)
            return p->err->code;
        l->params = net->seq_len * p->dim;
        if ((st = set_flops(p, l, jpath, (double)T * p->dim)) != DS_OK)
            return st;
        return DS_OK;
    }
    if (strcmp(type, "layernorm") == 0) {
        static const char *const keys[] = {"type", "name", "eps", NULL};
        if ((st = check_keys(p, obj, jpath, keys)) || (st = need_name(p, obj, jpath, type, prefix, path)))
            return st;
        double eps = 1e-5;
        json_object *v;
        if (json_object_object_get_ex(obj, "eps", &v)) {
            char epath[256], found[80];
            snprintf(epath, sizeof epath, "%s.eps", jpath);
            ds_json_render(v, found, sizeof found);
            if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
                return perr(p, epath, "expected a number, found %s", found, NULL);
            eps = json_object_get_double(v);
            if (!(eps > 0))
                return perr(p, epath, "expected a positive number, found %s", found, NULL);
            const float e32 = (float)eps; /* layernorm computes in fp32: 1e-60 would be 0, 1e60 inf */
            if (!(e32 > 0) || isinf(e32))
                return perr(p, epath, "expected a positive number that fp32 holds (1e-45 to 3.4e38), found %s",
                            found, NULL);
        }
        ds_layer *l = new_layer(p, DS_LAYER_LAYERNORM, path, jpath);
        if (!l)
            return p->layer_st;
        l->eps = (float)eps;
        if ((l->w = add_param(p, path, "weight", 1, p->dim, 0, DS_INIT_ONES)) < 0 ||
            (l->b = add_param(p, path, "bias", 1, p->dim, 0, DS_INIT_ZEROS)) < 0)
            return p->err->code;
        l->params = 2 * p->dim;
        if ((st = set_flops(p, l, jpath, 8.0 * T * p->dim)) != DS_OK)
            return st;
        return DS_OK;
    }
    if (strcmp(type, "linear") == 0) {
        static const char *const keys[] = {"type", "name", "out", "bias", "tied_to", NULL};
        int64_t out;
        int bias;
        const char *tied;
        if ((st = check_keys(p, obj, jpath, keys)) || (st = need_name(p, obj, jpath, type, prefix, path)) ||
            (st = get_int(p, obj, jpath, "out", -1, 1, &out)) ||
            (st = get_bool(p, obj, jpath, "bias", 1, &bias)) ||
            (st = get_str(p, obj, jpath, "tied_to", &tied)))
            return st;
        int tied_idx = -1;
        if (tied) {
            char wname[DS_NAME_MAX + 16];
            snprintf(wname, sizeof wname, "%s.weight", tied);
            tied_idx = ds_table_find(&net->params, wname);
            char tpath[256];
            snprintf(tpath, sizeof tpath, "%s.tied_to", jpath);
            if (tied_idx < 0) {
                for (int k = 0; k < net->n_layers; k++) /* a layer of that name whose weight is another's */
                    if (!strcmp(net->layers[k].path, tied) && net->layers[k].kind == DS_LAYER_LINEAR &&
                        net->layers[k].tied) {
                        char owner[DS_NAME_MAX], msg[2 * DS_NAME_MAX + 96];
                        snprintf(owner, sizeof owner, "%s", net->params.t[net->layers[k].w].name);
                        char *dot = strrchr(owner, '.'); /* OWNER.weight */
                        if (dot)
                            *dot = 0;
                        snprintf(msg, sizeof msg, "\"%s\" has no weight of its own: it is tied to \"%s\"; tie to "
                                 "that (\"tied_to\": \"%s\")", tied, owner, owner);
                        return perr(p, tpath, "%s", msg, NULL);
                    }
                return perr(p, tpath, "no earlier layer \"%s\" with a weight to tie to", tied, NULL);
            }
            const ds_tensor_info *ti = &net->params.t[tied_idx];
            if (ti->ndim != 2 || ti->shape[0] != out || ti->shape[1] != p->dim) {
                char want[64], have[64];
                snprintf(want, sizeof want, "[%lld, %lld]", (long long)out, (long long)p->dim);
                ds_shape_str(ti->ndim, ti->shape, have, sizeof have);
                char both[160];
                snprintf(both, sizeof both, "%s but %s.weight is %s", want, tied, have);
                return perr(p, tpath, "a tied weight must have the shape [out, in] = %s", both, NULL);
            }
        }
        ds_layer *l = new_layer(p, DS_LAYER_LINEAR, path, jpath);
        if (!l)
            return p->layer_st;
        l->out_dim = out;
        if (tied_idx >= 0) {
            l->w = tied_idx;
            l->tied = 1;
        } else {
            if ((l->w = add_param(p, path, "weight", 2, out, p->dim, DS_INIT_NORMAL)) < 0)
                return p->err->code;
            l->params += out * p->dim;
        }
        if (bias) {
            if ((l->b = add_param(p, path, "bias", 1, out, 0, DS_INIT_ZEROS)) < 0)
                return p->err->code;
            l->params += out;
        }
        if ((st = set_flops(p, l, jpath, 2.0 * T * p->dim * out)) != DS_OK)
            return st;
        p->dim = out;
        return DS_OK;
    }
    if (strcmp(type, "attention") == 0) {
        static const char *const keys[] = {"type", "name", "heads", "causal", NULL};
        int64_t heads;
        int causal;
        if ((st = check_keys(p, obj, jpath, keys)) || (st = need_name(p, obj, jpath, type, prefix, path)) ||
            (st = get_int(p, obj, jpath, "heads", -1, 1, &heads)) ||
            (st = get_bool(p, obj, jpath, "causal", 1, &causal)))
            return st;
        if (net->input != DS_INPUT_TOKENS)
            return perr(p, jpath, "attention needs a tokens input (a sequence)", NULL, NULL);
        if (p->dim % heads != 0) {
            char path2[256], msg[96];
            snprintf(path2, sizeof path2, "%s.heads", jpath);
            snprintf(msg, sizeof msg, "%lld does not divide dim %lld", (long long)heads, (long long)p->dim);
            return perr(p, path2, "%s", msg, NULL);
        }
        ds_layer *l = new_layer(p, DS_LAYER_ATTENTION, path, jpath);
        if (!l)
            return p->layer_st;
        l->heads = (int)heads;
        l->causal = causal;
        int64_t C = p->dim;
        char sub[DS_NAME_MAX + 8];
        snprintf(sub, sizeof sub, "%s.qkv", path);
        if ((l->w = add_param(p, sub, "weight", 2, 3 * C, C, DS_INIT_NORMAL)) < 0 ||
            (l->b = add_param(p, sub, "bias", 1, 3 * C, 0, DS_INIT_ZEROS)) < 0)
            return p->err->code;
        snprintf(sub, sizeof sub, "%s.proj", path);
        if ((l->w2 = add_param(p, sub, "weight", 2, C, C, DS_INIT_NORMAL)) < 0 ||
            (l->b2 = add_param(p, sub, "bias", 1, C, 0, DS_INIT_ZEROS)) < 0)
            return p->err->code;
        l->params = 3 * C * C + 3 * C + C * C + C;
        /* qkv and proj products, then q.k and p.v over all T*T pairs (as commonly counted) */
        if ((st = set_flops(p, l, jpath, 2.0 * T * C * 3 * C + 2.0 * T * C * C + 4.0 * T * T * C)) != DS_OK)
            return st;
        l->flops_tt = 4 * T * T * C;
        return DS_OK;
    }
    if (strcmp(type, "gelu") == 0) {
        static const char *const keys[] = {"type", "name", "approximate", NULL};
        const char *approx;
        if ((st = check_keys(p, obj, jpath, keys)) || (st = unused_name(p, obj, jpath)) ||
            (st = get_str(p, obj, jpath, "approximate", &approx)))
            return st;
        if (approx && strcmp(approx, "tanh") != 0 && strcmp(approx, "none") != 0) {
            char path2[256];
            snprintf(path2, sizeof path2, "%s.approximate", jpath);
            return perr(p, path2, "expected \"tanh\" or \"none\", found \"%s\"", approx, NULL);
        }
        ds_layer *l = new_layer(p, DS_LAYER_GELU, prefix, jpath);
        if (!l)
            return p->layer_st;
        l->approximate = approx && strcmp(approx, "tanh") == 0;
        if ((st = set_flops(p, l, jpath, 8.0 * T * p->dim)) != DS_OK)
            return st;
        return DS_OK;
    }
    if (strcmp(type, "relu") == 0) {
        static const char *const keys[] = {"type", "name", NULL};
        if ((st = check_keys(p, obj, jpath, keys)) || (st = unused_name(p, obj, jpath)))
            return st;
        ds_layer *l = new_layer(p, DS_LAYER_RELU, prefix, jpath);
        if (!l)
            return p->layer_st;
        if ((st = set_flops(p, l, jpath, (double)T * p->dim)) != DS_OK)
            return st;
        return DS_OK;
    }
    if (strcmp(type, "dropout") == 0) {
        static const char *const keys[] = {"type", "name", "p", NULL};
        if ((st = check_keys(p, obj, jpath, keys)) || (st = unused_name(p, obj, jpath)))
            return st;
        double prob = 0.5;
        json_object *v;
        char path2[256], found[80];
        snprintf(path2, sizeof path2, "%s.p", jpath);
        if (json_object_object_get_ex(obj, "p", &v)) {
            if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)) {
                ds_json_render(v, found, sizeof found);
                return perr(p, path2, "expected a probability in [0, 1), found %s", found, NULL);
            }
            prob = json_object_get_double(v);
        }
        /* in fp32 too: a p within 3e-8 of 1 rounds to 1.0f, which would drop every value */
        if (!(prob >= 0 && prob < 1 && (float)prob < 1.0f)) {
            snprintf(found, sizeof found, "%.17g%s", prob, prob < 1 && prob >= 0 ? " (1 in fp32)" : "");
            return perr(p, path2, "expected a probability in [0, 1), found %s", found, NULL);
        }
        ds_layer *l = new_layer(p, DS_LAYER_DROPOUT, prefix, jpath);
        if (!l)
            return p->layer_st;
        l->p = (float)prob;
        if ((st = set_flops(p, l, jpath, (double)T * p->dim)) != DS_OK)
            return st;
        return DS_OK;
    }
    if (strcmp(type, "residual") == 0) {
        static const char *const keys[] = {"type", "name", "layers", NULL};
        if ((st = check_keys(p, obj, jpath, keys)) || (st = unused_name(p, obj, jpath)))
            return st;
        json_object *arr;
        char sub[256];
        snprintf(sub, sizeof sub, "%s.layers", jpath);
        if (!json_object_object_get_ex(obj, "layers", &arr) || !json_object_is_type(arr, json_type_array) ||
            json_object_array_length(arr) == 0)
            return perr(p, sub, "expected a non-empty array of layers", NULL, NULL);
        int64_t dim_in = p->dim;
        ds_layer *l = new_layer(p, DS_LAYER_RESIDUAL_BEGIN, prefix, jpath);
        if (!l)
            return p->layer_st;
        int begin = net->n_layers - 1;
        if ((st = parse_layers(p, arr, sub, prefix)))
            return st;
        if (p->dim != dim_in) {
            char msg[128];
            snprintf(msg, sizeof msg, "the branch maps %lld features to %lld; a residual needs them equal",
                     (long long)dim_in, (long long)p->dim);
            return perr(p, jpath, "%s", msg, NULL);
        }
        l = new_layer(p, DS_LAYER_RESIDUAL_END, prefix, jpath);
        if (!l)
            return p->layer_st;
        l->begin = begin;
        if ((st = set_flops(p, l, jpath, (double)T * p->dim)) != DS_OK)
            return st;
        return DS_OK;
    }
    if (strcmp(type, "repeat") == 0) {
        static const char *const keys[] = {"type", "name", "count", "layers", "checkpoint", NULL};
        int64_t count;
        int ckpt;
        if ((st = check_keys(p, obj, jpath, keys)) || (st = need_name(p, obj, jpath, type, prefix, path)) ||
            (st = get_int(p, obj, jpath, "count", -1, 1, &count)) ||
            (st = get_bool(p, obj, jpath, "checkpoint", 0, &ckpt)))
            return st;
        json_object *arr;
        char sub[256];
        snprintf(sub, sizeof sub, "%s.layers", jpath);
        if (!json_object_object_get_ex(obj, "layers", &arr) || !json_object_is_type(arr, json_type_array) ||
            json_object_array_length(arr) == 0)
            return perr(p, sub, "expected a non-empty array of layers", NULL, NULL);
        if (ckpt && p->ckpt) {
            char path2[256];
            snprintf(path2, sizeof path2, "%s.checkpoint", jpath);
            return perr(p, path2, "a repeat inside a checkpointed repeat (%s) cannot be checkpointed too; "
                        "expected \"checkpoint\" on one of them", p->ckpt, NULL);
        }
        if (net->n_repeats == p->rcap) {
            p->rcap = p->rcap ? 2 * p->rcap : 8;
            ds_repeat *r = realloc(net->repeats, (size_t)p->rcap * sizeof *r);
            if (!r)
                return ds_error_set(p->err, DS_ERR_NOMEM, "out of memory");
            net->repeats = r;
        }
        int ri = net->n_repeats++;
        net->repeats[ri] = (ds_repeat){.first = net->n_layers, .count = (int)count, .depth = p->depth,
                                       .checkpoint = ckpt};
        snprintf(net->repeats[ri].json_path, sizeof net->repeats[ri].json_path, "%s", jpath);
        snprintf(net->repeats[ri].name, sizeof net->repeats[ri].name, "%s", path);
        const char *outer = p->ckpt;
        if (ckpt)
            p->ckpt = jpath;
        p->depth++;
        for (int64_t i = 0; i < count && st == DS_OK; i++) {
            char pre[DS_NAME_MAX];
            if ((size_t)snprintf(pre, sizeof pre, "%s.%lld", path, (long long)i) >= sizeof pre) {
                char msg[DS_NAME_MAX + 64];
                snprintf(msg, sizeof msg, "the copies' names (%s.%lld) are too long: shorten the name", path,
                         (long long)i);
                return perr(p, jpath, "%s", msg, NULL);
            }
            st = parse_layers(p, arr, sub, pre);
            if (i == 0)
                net->repeats[ri].len = net->n_layers - net->repeats[ri].first;
            else if (st != DS_OK && st != DS_ERR_NOMEM) { /* the JSON path is copy 0's too: say which copy */
                char msg[sizeof p->err->msg];
                snprintf(msg, sizeof msg, "%s", p->err->msg);
                ds_error_set(p->err, st, "%s (in copy %s)", msg, pre);
            }
        }
        p->depth--;
        p->ckpt = outer;
        return st;
    }
    return perr(p, jpath,
                "unknown layer type \"%s\" (expected embedding, position_embedding, repeat, residual, "
                "layernorm, attention, linear, gelu, relu or dropout)",
                type, NULL);
}

static ds_status parse_layers(parser *p, json_object *arr, const char *jpath, const char *prefix)
{
    size_t n = json_object_array_length(arr);
    for (size_t i = 0; i < n; i++) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s[%zu]", jpath, i);
        ds_status st = parse_layer(p, json_object_array_get_idx(arr, i), sub, prefix);
        if (st != DS_OK)
            return st;
    }
    return DS_OK;
}

/* A top-level key that is absent ("missing (expected ...)") or of the wrong kind ("expected
 * ..., found ..."). */
static ds_status missing_or(parser *p, json_object *root, const char *key, const char *want)
{
    json_object *v;
    char found[80];
    if (!json_object_object_get_ex(root, key, &v))
        return perr(p, key, "missing (expected %s)", want, NULL);
    ds_json_render(v, found, sizeof found);
    return perr(p, key, "expected %s, found %s", want, found);
}

static ds_status parse_net(parser *p, json_object *root)
{
    ds_net *net = p->net;
    ds_status st;
    if (!json_object_is_type(root, json_type_object))
        return perr(p, "", "expected a JSON object with \"input\", \"layers\" and \"loss\"", NULL, NULL);
    static const char *const top[] = {"input", "layers", "loss", "name", "description", NULL};
    if ((st = check_keys(p, root, "", top)))
        return st;
    json_object *in, *layers, *loss;
    if (!json_object_object_get_ex(root, "input", &in) || !json_object_is_type(in, json_type_object))
        return missing_or(p, root, "input", "an object such as {\"type\": \"tokens\", ...}");
    const char *itype;
    if ((st = get_str(p, in, "input", "type", &itype)))
        return st;
    if (itype && strcmp(itype, "tokens") == 0) {
        static const char *const keys[] = {"type", "vocab_size", "seq_len", NULL};
        net->input = DS_INPUT_TOKENS;
        if ((st = check_keys(p, in, "input", keys)) ||
            (st = get_int(p, in, "input", "vocab_size", -1, 1, &net->vocab_size)) ||
            (st = get_int(p, in, "input", "seq_len", -1, 1, &net->seq_len)))
            return st;
        if (net->vocab_size > 2147483647)
            return perr(p, "input.vocab_size", "too large (at most 2^31-1)", NULL, NULL);
        net->positions = net->seq_len;
        p->dim = 0;
    } else if (itype && strcmp(itype, "features") == 0) {
        static const char *const keys[] = {"type", "dim", NULL};
        net->input = DS_INPUT_FEATURES;
        if ((st = check_keys(p, in, "input", keys)) ||
            (st = get_int(p, in, "input", "dim", -1, 1, &net->feature_dim)))
            return st;
        net->positions = 1;
        p->dim = net->feature_dim;
    } else {
        char found[80];
        snprintf(found, sizeof found, itype ? "\"%.60s\"" : "nothing", itype);
        return perr(p, "input.type", "expected \"tokens\" or \"features\", found %s", found, NULL);
    }
    if (!json_object_object_get_ex(root, "layers", &layers) ||
        !json_object_is_type(layers, json_type_array) || json_object_array_length(layers) == 0)
        return missing_or(p, root, "layers", "a non-empty array of layers");
    if ((st = parse_layers(p, layers, "layers", "")))
        return st;
    net->out_dim = p->dim;

    if (!json_object_object_get_ex(root, "loss", &loss) || !json_object_is_type(loss, json_type_object))
        return missing_or(p, root, "loss", "{\"type\": \"cross_entropy\"} or {\"type\": \"mse\"}");
    static const char *const lkeys[] = {"type", NULL};
    const char *ltype;
    if ((st = check_keys(p, loss, "loss", lkeys)) || (st = get_str(p, loss, "loss", "type", &ltype)))
        return st;
    if (ltype && strcmp(ltype, "cross_entropy") == 0) {
        net->loss = DS_LOSS_CROSS_ENTROPY;
        if (net->input == DS_INPUT_TOKENS && net->out_dim != net->vocab_size) {
            char msg[128];
            snprintf(msg, sizeof msg, "the last layer gives %lld features but the vocabulary has %lld tokens",
                     (long long)net->out_dim, (long long)net->vocab_size);
            return perr(p, "loss", "cross_entropy over next tokens: %s", msg, NULL);
        }
    } else if (ltype && strcmp(ltype, "mse") == 0) {
        net->loss = DS_LOSS_MSE;
        if (net->input == DS_INPUT_TOKENS)
            return perr(p, "loss.type", "mse needs a features input (tokens predict the next token: use cross_entropy)",
                        NULL, NULL);
    } else {
        char found[80];
        snprintf(found, sizeof found, ltype ? "\"%.60s\"" : "nothing", ltype);
        return perr(p, "loss.type", "expected \"cross_entropy\" or \"mse\", found %s", found, NULL);
    }
    if (net->n_layers > 0 && net->layers[net->n_layers - 1].kind == DS_LAYER_EMBEDDING &&
        net->n_layers == 1)
        return perr(p, "layers", "a network needs at least one layer after the embedding", NULL, NULL);
    double total = 0;
    for (int i = 0; i < net->n_layers; i++)
        total += (double)net->layers[i].flops;
    if (!(total < 0x1p62)) {
        char m[64];
        snprintf(m, sizeof m, "%.3g", total);
        return perr(p, "layers", "%s forward FLOPs per sample in all: too large (at most 2^62)", m, NULL);
    }
    for (int i = 0; i < net->n_layers; i++)
        net->flops_per_sample += net->layers[i].flops;
    /* the tied head's product counts even though it owns no parameter (already in flops) */
    return DS_OK;
}

ds_status ds_net_parse_string(ds_net **out, const char *json, const char *name, ds_error *err)
{
    json_object *root;
    ds_status st = ds_json_parse(json, name, &root, err);
    if (st != DS_OK)
        return st;
    ds_net *net = calloc(1, sizeof *net);
    if (!net) {
        json_object_put(root);
        return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    ds_table_init(&net->params);
    ds_error local = {0}; /* err may be NULL; the parser reads the code back from it */
    parser p = {.net = net, .file = name, .err = err ? err : &local};
    st = parse_net(&p, root);
    json_object_put(root);
    if (st == DS_OK) {
        net->source_name = strdup(name);
        net->json_text = strdup(json);
        if (!net->source_name || !net->json_text)
            st = ds_error_set(err, DS_ERR_NOMEM, "out of memory");
    }
    if (st != DS_OK) {
        ds_net_free(net);
        return st;
    }
    *out = net;
    return DS_OK;
}

ds_status ds_net_parse_file(ds_net **out, const char *path, ds_error *err)
{
    json_object *root;
    char *text = NULL;
    ds_status st = ds_json_parse_file(path, &root, &text, err);
    if (st != DS_OK)
        return st;
    json_object_put(root);
    st = ds_net_parse_string(out, text, path, err);
    free(text);
    return st;
}

void ds_net_free(ds_net *net)
{
    if (!net)
        return;
    ds_table_free(&net->params);
    free(net->layers);
    free(net->repeats);
    free(net->init);
    free(net->source_name);
    free(net->json_text);
    free(net);
}

int ds_net_checkpoint_repeats(ds_net *net, int on)
{
    int n = 0;
    for (int i = 0; i < net->n_repeats; i++) {
        net->repeats[i].checkpoint = on && net->repeats[i].depth == 0;
        n += net->repeats[i].checkpoint;
    }
    return n;
}

int ds_net_checkpoints(const ds_net *net)
{
    int n = 0;
    for (int i = 0; i < net->n_repeats; i++)
        if (net->repeats[i].checkpoint)
            n += net->repeats[i].count;
    return n;
}

int64_t ds_net_flops_per_sample_at(const ds_net *net, int64_t T)
{
    const int64_t S = net->positions;
    if (T >= S || T < 1)
        return net->flops_per_sample;
    int64_t f = 0; /* every count is a multiple of S, the quadratic parts of S * S */
    for (int i = 0; i < net->n_layers; i++) {
        const ds_layer *l = &net->layers[i];
        f += (l->flops - l->flops_tt) / S * T + l->flops_tt / S / S * T * T;
    }
    return f;
}

int64_t ds_net_recompute_flops(const ds_net *net)
{
    int64_t f = 0;
    for (int i = 0; i < net->n_repeats; i++) {
        const ds_repeat *r = &net->repeats[i];
        if (!r->checkpoint)
            continue;
        for (int j = r->first; j < r->first + (r->count - 1) * r->len; j++)
            f += net->layers[j].flops;
    }
    return f;
}

/* Tensor i's initial values from the one stream (the tensors in table order). */
static void fill_tensor(const ds_net *net, int i, ds_rng *rng, float *out)
{
    for (int64_t j = 0; j < net->params.t[i].numel; j++) {
        switch (net->init[i]) {
        case DS_INIT_NORMAL: out[j] = (float)(0.02 * ds_rng_normal(rng)); break;
        case DS_INIT_ONES: out[j] = 1.0f; break;
        case DS_INIT_ZEROS: out[j] = 0.0f; break;
        }
    }
}

ds_status ds_net_init_each(const ds_net *net, uint64_t seed, float *buf,
                           ds_status (*fn)(void *ctx, int tensor, const float *values, ds_error *err), void *ctx,
                           ds_error *err)
{
    ds_rng rng;
    ds_rng_seed(&rng, seed);
    for (int i = 0; i < net->params.n; i++) {
        fill_tensor(net, i, &rng, buf);
        ds_status st = fn(ctx, i, buf, err);
        if (st != DS_OK)
            return st;
    }
    return DS_OK;
}

void ds_net_init_params(const ds_net *net, float *flat, uint64_t seed)
{
    ds_rng rng;
    ds_rng_seed(&rng, seed);
    memset(flat, 0, (size_t)net->params.total * sizeof(float));
    for (int i = 0; i < net->params.n; i++)
        fill_tensor(net, i, &rng, flat + net->params.t[i].offset);
}

static void human(double x, char *buf, size_t n)
{
    const char *u = "";
    if (x >= 1e12) { x /= 1e12; u = "T"; }
    else if (x >= 1e9) { x /= 1e9; u = "G"; }
    else if (x >= 1e6) { x /= 1e6; u = "M"; }
    else if (x >= 1e3) { x /= 1e3; u = "K"; }
    if (*u)
        snprintf(buf, n, "%.2f%s", x, u);
    else
        snprintf(buf, n, "%.0f", x);
}

char *ds_net_summary(const ds_net *net, int64_t batch)
{
    size_t cap = 4096 + (size_t)net->n_layers * 160 + (size_t)net->n_repeats * (DS_NAME_MAX + 24), used = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
#define OUT(...) used += (size_t)snprintf(s + used, used < cap ? cap - used : 0, __VA_ARGS__)
    OUT("%-28s %-20s %-18s %12s %12s\n", "layer", "type", "output", "params", "FLOPs");
    for (int i = 0; i < net->n_layers; i++) {
        const ds_layer *l = &net->layers[i];
        if (l->kind == DS_LAYER_RESIDUAL_BEGIN)
            continue;
        char shape[64], prm[32], fl[32], type[48];
        if (net->input == DS_INPUT_TOKENS)
            snprintf(shape, sizeof shape, "[%lld, %lld, %lld]", (long long)batch,
                     (long long)net->seq_len, (long long)l->out_dim);
        else
            snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)batch, (long long)l->out_dim);
        human((double)l->params, prm, sizeof prm);
        human((double)l->flops * (double)batch, fl, sizeof fl);
        snprintf(type, sizeof type, "%s%s", l->kind == DS_LAYER_RESIDUAL_END ? "residual (add)" : ds_layer_kind_name(l->kind),
                 l->tied ? " (tied)" : "");
        OUT("%-28s %-20s %-18s %12s %12s\n", *l->path ? l->path : "-", type, shape, prm, fl);
    }
    char prm[32], fl[32], fl3[32];
    human((double)net->total_params, prm, sizeof prm);
    human((double)net->flops_per_sample * (double)batch, fl, sizeof fl);
    human(3.0 * (double)net->flops_per_sample * (double)batch, fl3, sizeof fl3);
    OUT("total: %lld parameters (%s) in %d tensors, %.2f MB in fp32\n", (long long)net->total_params,
        prm, net->params.n, (double)net->total_params * 4 / 1e6);
    OUT("FLOPs per step of batch %lld: forward %s, forward+backward %s\n", (long long)batch, fl, fl3);
    const int kept = ds_net_checkpoints(net);
    if (kept) {
        char rf[32], hw[32];
        const double re = (double)ds_net_recompute_flops(net) * (double)batch;
        human(re, rf, sizeof rf);
        human(3.0 * (double)net->flops_per_sample * (double)batch + re, hw, sizeof hw);
        OUT("activation checkpointing: %d checkpoints (", kept);
        for (int i = 0, k = 0; i < net->n_repeats; i++)
            if (net->repeats[i].checkpoint)
                OUT("%s%s x %d", k++ ? ", " : "", net->repeats[i].name, net->repeats[i].count);
        OUT("); backward recomputes forward %s, so a step computes %s\n", rf, hw);
    }
#undef OUT
    return s;
}
