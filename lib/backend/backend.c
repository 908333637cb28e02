/* Backend selection by name. "cpu" (kernels chosen by cpuid), "cpu:avx2", "cpu:avx512",
 * "cpu:generic"; "cuda", "cuda:N" (loaded at run time, cuda_loader.c); "auto". */
#include <string.h>

#include "ds/backend.h"

ds_status ds_cpu_backend_create(ds_backend **out, const char *variant, ds_error *err);
const char *ds_cpu_backend_variant(const ds_backend *b);
/* cuda_loader.c: the CUDA backend, loaded at run time */
ds_status ds_cuda_backend_load(ds_backend **out, const char *variant, ds_error *err);
int ds_cuda_device_present(void);

ds_status ds_backend_create(ds_backend **out, const char *name, ds_error *err)
{
    if (!name || strcmp(name, "cpu") == 0)
        return ds_cpu_backend_create(out, NULL, err);
    if (strncmp(name, "cpu:", 4) == 0)
        return ds_cpu_backend_create(out, name + 4, err);
    if (strcmp(name, "cuda") == 0 || strncmp(name, "cuda:", 5) == 0) {
        if (name[4]) { /* cuda:N: N a GPU number, said before any CUDA library is looked for */
            const char *d = name + 5;
            size_t k = 0;
            while (d[k] >= '0' && d[k] <= '9' && k < 6)
                k++;
            if (k == 0 || d[k])
                return ds_error_set(err, DS_ERR_INVALID, "backend \"%s\": expected cuda:N with N a GPU number "
                                    "(0, 1, ...), found \"%s\"", name, d);
        }
        return ds_cuda_backend_load(out, name[4] ? name + 5 : NULL, err);
    }
    if (strcmp(name, "auto") == 0) {
        /* cuda when a GPU is there and the CUDA backend loads; the device-node check first
         * keeps CPU-only machines from loading any CUDA library */
        ds_error why = {0};
        ds_status st = ds_cuda_device_present() ? ds_cuda_backend_load(out, NULL, &why) : DS_ERR_UNSUPPORTED;
        if (st == DS_OK)
            return DS_OK;
        /* a GPU is there and the backend loads, but this rank's device is wrong (LOCAL_RANK
         * beyond the visible GPUs): an error, not a quiet CPU rank among GPU ranks */
        if (st == DS_ERR_INVALID) {
            if (err)
                *err = why;
            return st;
        }
        return ds_cpu_backend_create(out, NULL, err);
    }
    return ds_error_set(err, DS_ERR_INVALID, "unknown backend \"%s\" (expected cpu, cpu:avx2, cpu:avx512, "
                        "cpu:generic, cuda, cuda:N or auto)", name);
}

void ds_backend_destroy(ds_backend *b)
{
    if (b)
        b->ops->destroy(b);
}

const char *ds_backend_describe(const ds_backend *b)
{
    if (b->ops->describe)
        return b->ops->describe(b);
    if (strcmp(b->ops->name, "cpu") == 0)
        return ds_cpu_backend_variant(b);
    return b->ops->name;
}
