#include "base/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sdw_device_parse(const char *s, sdw_device *d, sdw_error *e)
{
    if (!strcmp(s, "cpu")) {
        *d = (sdw_device){SDW_DEVICE_CPU, 0};
        return 0;
    }
    if (!strcmp(s, "cuda")) {
        *d = (sdw_device){SDW_DEVICE_CUDA, 0};
        return 0;
    }
    /* Digits only: strtol alone would take "cuda: 1", "cuda:+1" and "cuda:0x1". */
    if (!strncmp(s, "cuda:", 5) && s[5] && strspn(s + 5, "0123456789") == strlen(s + 5) && strlen(s + 5) <= 9) {
        long idx = strtol(s + 5, NULL, 10);
        if (idx <= SDW_DEVICE_MAX_INDEX) {
            *d = (sdw_device){SDW_DEVICE_CUDA, (int)idx};
            return 0;
        }
    }
    return sdw_fail(e, SDW_EINVAL, "'%s': expected cpu, cuda or cuda:N (N = 0-%d)", s, SDW_DEVICE_MAX_INDEX);
}

const char *sdw_device_str(sdw_device d, char *buf, size_t n)
{
    if (d.kind == SDW_DEVICE_CPU)
        snprintf(buf, n, "cpu");
    else
        snprintf(buf, n, "cuda:%d", d.index);
    return buf;
}
