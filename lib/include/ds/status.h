/* Status codes and error messages for libds.
 * Every fallible libds function returns a ds_status and, when given a ds_error,
 * fills it with a message a user can act on. libds never prints and never exits. */
#ifndef DS_STATUS_H
#define DS_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds_status {
    DS_OK = 0,
    DS_ERR_INVALID = 1,     /* bad input: config, network, data, flags, arguments */
    DS_ERR_IO = 2,          /* a file could not be read or written */
    DS_ERR_NOMEM = 3,       /* an allocation failed */
    DS_ERR_UNSUPPORTED = 4, /* a valid request for something not built (yet) */
    DS_ERR_BACKEND = 5,     /* the compute backend failed (oneDNN, CUDA, ...) */
    DS_ERR_NUMERIC = 6,     /* non-finite loss or gradient where it cannot be handled */
    DS_ERR_INTERNAL = 7     /* a broken invariant: a bug in libds */
} ds_status;

#define DS_ERROR_MSG_MAX 1024

typedef struct ds_error {
    ds_status code;
    char msg[DS_ERROR_MSG_MAX];
} ds_error;

/* Human-readable name of a status ("invalid input", ...). */
const char *ds_status_str(ds_status st);

/* Record an error (printf-style) in err, which may be NULL; returns code so callers can write
 * `return ds_error_set(err, DS_ERR_INVALID, "...")`. */
ds_status ds_error_set(ds_error *err, ds_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepend context to an existing message: "net.json: " + old message. */
ds_status ds_error_prefix(ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void ds_error_clear(ds_error *err);

#ifdef __cplusplus
}
#endif
#endif
