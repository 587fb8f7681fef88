#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int sdw_fail(sdw_error *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        e->code = code;
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int sdw_fail_wrap(sdw_error *e, const char *fmt, ...)
{
    if (!e)
        return SDW_EINVAL;
    char prefix[256], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
    return e->code;
}

const char *sdw_status_name(int code)
{
    switch (code) {
    case SDW_OK: return "ok";
    case SDW_EINVAL: return "invalid_argument";
    case SDW_EIO: return "io_error";
    case SDW_ENOMEM: return "out_of_memory";
    case SDW_EFORMAT: return "bad_format";
    case SDW_EUNSUPPORTED: return "unsupported";
    case SDW_ENOTFOUND: return "not_found";
    case SDW_EDEVICE: return "device_error";
    case SDW_ECANCELLED: return "cancelled";
    }
    return "unknown_error";
}
