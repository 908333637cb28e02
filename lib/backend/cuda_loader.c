/* Loads the CUDA backend, libds-cuda.so (built from kernels/), with dlopen when backend "cuda"
 * is asked for. libds itself never links a CUDA library, so a CPU-only run needs none at run
 * time. Where it looks, first found wins: $DS_CUDA_BACKEND (a path; then nowhere else), the
 * directory libds was loaded from (the build tree's .libs/, an install's libdir, a packed lib/
 * folder), <that directory>/ds/, then the configured install directory (pkglibdir). */
#define _GNU_SOURCE
#include <config.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ds/backend.h"

#define MODULE "libds-cuda.so"

typedef ds_status (*create_fn)(ds_backend **out, const char *variant, ds_error *err);
typedef size_t (*abi_fn)(void);

/* The module is never unloaded (the CUDA runtime does not like being unloaded); opening it
 * again only finds the loaded copy, so nothing is cached here and libds keeps no global state. */

/* A GPU device node: cheap to test, and needs no CUDA library. */
int ds_cuda_device_present(void)
{
    return access("/dev/nvidiactl", F_OK) == 0 || access("/dev/dxg", F_OK) == 0;
}

static ds_status open_module(const char *path, create_fn *out, ds_error *err)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        return ds_error_set(err, DS_ERR_UNSUPPORTED,
                            "backend cuda: cannot load %s: %s (the CUDA libraries it needs, such as "
                            "libcublas.so, must be on the library path, e.g. "
                            "LD_LIBRARY_PATH=/usr/local/cuda/lib64)",
                            path, why ? why : "unknown error");
    }
    abi_fn abi = (abi_fn)dlsym(h, "ds_cuda_backend_abi");
    create_fn create = (create_fn)dlsym(h, "ds_cuda_backend_create");
    if (!abi || !create) {
        dlclose(h);
        return ds_error_set(err, DS_ERR_UNSUPPORTED, "backend cuda: %s is not a ds CUDA backend", path);
    }
    size_t want = sizeof(ds_backend_ops) * 4096 + sizeof(ds_backend);
    if (abi() != want) {
        dlclose(h);
        return ds_error_set(err, DS_ERR_UNSUPPORTED,
                            "backend cuda: %s was built from another version of ds/backend.h; "
                            "rebuild it with this libds",
                            path);
    }
    *out = create;
    return DS_OK;
}

static int exists(const char *p) { return access(p, F_OK) == 0; }

static ds_status find_module(create_fn *out, ds_error *err)
{
    const char *env = getenv("DS_CUDA_BACKEND");
    if (env && *env) {
        if (!exists(env))
            return ds_error_set(err, DS_ERR_UNSUPPORTED, "backend cuda: DS_CUDA_BACKEND=%s: no such file", env);
        return open_module(env, out, err);
    }
    char cand[3][4096];
    int n = 0;
    Dl_info info;
    if (dladdr((void *)&ds_cuda_device_present, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        int dir_len = slash ? (int)(slash - info.dli_fname) : 1;
        const char *dir = slash ? info.dli_fname : ".";
        snprintf(cand[n++], sizeof cand[0], "%.*s/%s", dir_len, dir, MODULE);
        snprintf(cand[n++], sizeof cand[0], "%.*s/ds/%s", dir_len, dir, MODULE);
    }
#ifdef DS_PKGLIBDIR
    snprintf(cand[n++], sizeof cand[0], "%s/%s", DS_PKGLIBDIR, MODULE);
#endif
    for (int i = 0; i < n; i++)
        if (exists(cand[i]))
            return open_module(cand[i], out, err);
#ifdef DS_WITH_CUDA
    return ds_error_set(err, DS_ERR_UNSUPPORTED,
                        "backend cuda: %s not found (looked next to libds, in its ds/ folder and in "
                        "%s; set DS_CUDA_BACKEND=/path/to/" MODULE ")",
                        MODULE, n ? cand[n - 1] : "?");
#else
    return ds_error_set(err, DS_ERR_UNSUPPORTED,
                        "backend cuda: this ds was built without the CUDA backend (configure builds "
                        "it where it finds nvcc and cuBLAS; see ds-cuda(7))");
#endif
}

ds_status ds_cuda_backend_load(ds_backend **out, const char *variant, ds_error *err)
{
    create_fn create = NULL;
    ds_status st = find_module(&create, err);
    if (st != DS_OK)
        return st;
    return create(out, variant, err);
}
