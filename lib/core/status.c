/* Status names and the error-message helpers. No printing, no exit: callers decide. */
#include "ds/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *ds_status_str(ds_status st)
{
    switch (st) {
    case DS_OK: return "ok";
    case DS_ERR_INVALID: return "invalid input";
    case DS_ERR_IO: return "i/o error";
    case DS_ERR_NOMEM: return "out of memory";
    case DS_ERR_UNSUPPORTED: return "not supported";
    case DS_ERR_BACKEND: return "backend error";
    case DS_ERR_NUMERIC: return "numerical error";
    case DS_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

ds_status ds_error_set(ds_error *err, ds_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

ds_status ds_error_prefix(ds_error *err, const char *fmt, ...)
{
    if (!err)
        return DS_ERR_INTERNAL;
    char head[DS_ERROR_MSG_MAX], old[DS_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t hl = strnlen(head, sizeof head - 1), ol = strnlen(old, sizeof old - 1);
    if (hl + ol > sizeof err->msg - 1)
        ol = sizeof err->msg - 1 - hl; /* keep the context, cut the tail */
    memcpy(err->msg, head, hl);
    memcpy(err->msg + hl, old, ol);
    err->msg[hl + ol] = '\0';
    return err->code;
}

void ds_error_clear(ds_error *err)
{
    if (err) {
        err->code = DS_OK;
        err->msg[0] = '\0';
    }
}
