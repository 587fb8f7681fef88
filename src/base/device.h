/* A compute device as configuration and command lines name it ("cpu",
 * "cuda", "cuda:N"), parsed once into a kind and an index that the backend
 * registry (backend/backend.h), the engine process and the tools share. */
#ifndef SDW_DEVICE_H
#define SDW_DEVICE_H

#include "base/err.h"

#include <stddef.h>

typedef enum sdw_device_kind { SDW_DEVICE_CPU = 0, SDW_DEVICE_CUDA } sdw_device_kind;

/* CUDA's ordinals: a host with more GPUs than this is beyond what we test. */
#define SDW_DEVICE_MAX_INDEX 63

typedef struct sdw_device {
    sdw_device_kind kind;
    int index;      /* cuda:N; 0 for the CPU */
} sdw_device;

/* "cpu", "cuda" (= cuda:0) or "cuda:N" with N in 0..SDW_DEVICE_MAX_INDEX;
 * SDW_EINVAL with the accepted forms in e for anything else. */
int sdw_device_parse(const char *s, sdw_device *d, sdw_error *e);
/* "cpu" or "cuda:N" in buf (16 bytes are enough); returns buf. */
const char *sdw_device_str(sdw_device d, char *buf, size_t n);

#endif
