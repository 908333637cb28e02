/* Backend selection by name. "cpu" (kernels chosen by cpuid), "cpu:avx2", "cpu:generic". */
#include <string.h>

#include "ds/backend.h"

ds_status ds_cpu_backend_create(ds_backend **out, const char *variant, ds_error *err);
const char *ds_cpu_backend_variant(const ds_backend *b);

ds_status ds_backend_create(ds_backend **out, const char *name, ds_error *err)
{
    if (!name || strcmp(name, "cpu") == 0)
        return ds_cpu_backend_create(out, NULL, err);
    if (strncmp(name, "cpu:", 4) == 0)
        return ds_cpu_backend_create(out, name + 4, err);
    if (strcmp(name, "cuda") == 0)
        return ds_error_set(err, DS_ERR_UNSUPPORTED,
                            "backend \"cuda\" is not built yet in this version of ds (CPU only)");
    return ds_error_set(err, DS_ERR_INVALID, "unknown backend \"%s\" (expected cpu or cuda)", name);
}

void ds_backend_destroy(ds_backend *b)
{
    if (b)
        b->ops->destroy(b);
}

const char *ds_backend_describe(const ds_backend *b)
{
    if (strcmp(b->ops->name, "cpu") == 0)
        return ds_cpu_backend_variant(b);
    return b->ops->name;
}
