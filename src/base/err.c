#include "base/err.h"

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
    char buf[256 + 2 + sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, 256, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < 256 ? (size_t)n : 255;
    memcpy(buf + len, ": ", 2);
    memcpy(buf + len + 2, e->msg, sizeof e->msg);
    buf[sizeof buf - 1] = '\0';
    size_t total = strlen(buf);
    if (total >= sizeof e->msg)
        total = sizeof e->msg - 1;
    memcpy(e->msg, buf, total);
    e->msg[total] = '\0';
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
    case SDW_EFULL: return "full";
    case SDW_ESTATE: return "wrong_state";
    case SDW_ETOOBIG: return "too_big";
    case SDW_ELIMIT: return "limit_reached";
    }
    return "unknown_error";
}
