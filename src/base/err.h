/* Error reporting shared by every module of every process.
 *
 * Functions that can fail return 0 on success or a negative sdw_status, and
 * describe the failure in a caller-provided sdw_error so that the message can
 * reach a log line, an HTTP body or an SSE error event unchanged. */
#ifndef SDW_ERR_H
#define SDW_ERR_H

#include <stddef.h>

typedef enum sdw_status {
    SDW_OK = 0,
    SDW_EINVAL = -1,        /* bad argument or request value */
    SDW_EIO = -2,           /* file or device I/O failed */
    SDW_ENOMEM = -3,        /* allocation failed */
    SDW_EFORMAT = -4,       /* malformed file or data */
    SDW_EUNSUPPORTED = -5,  /* valid, but not something we do */
    SDW_ENOTFOUND = -6,     /* missing file, tensor or model */
    SDW_EDEVICE = -7,       /* CUDA, cuBLAS or cuDNN failure */
    SDW_ECANCELLED = -8,    /* stopped on request */
    SDW_EFULL = -9,         /* job ring: no free slot or too many queued (503 + Retry-After) */
    SDW_ESTATE = -10,       /* job ring: the job is not in a state that allows this */
    SDW_ETOOBIG = -11,      /* job ring: input or event larger than its slot area */
    SDW_ELIMIT = -12,       /* job ring: the owner's own queued-job limit (429 + Retry-After) */
} sdw_status;

typedef struct sdw_error {
    int code;
    char msg[512];
} sdw_error;

/* Records code and a printf-style message in e (which may be NULL) and
 * returns code, so that call sites read `return sdw_fail(e, ...)`. */
int sdw_fail(sdw_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in e with more context ("loading unet: ..."). */
int sdw_fail_wrap(sdw_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *sdw_status_name(int code);

#endif
