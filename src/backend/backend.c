#include "backend/backend.h"

#include <string.h>

int sdw_precision_parse(const char *name)
{
    return !strcmp(name, "fp32") ? SDW_PREC_FP32 : !strcmp(name, "fp16") ? SDW_PREC_FP16
                                             : !strcmp(name, "bf16") ? SDW_PREC_BF16
                                                                     : -1;
}

int sdw_backend_open(sdw_backend **be, sdw_device d, sdw_precision prec, sdw_error *e)
{
    switch (d.kind) {
    case SDW_DEVICE_CPU:
        return sdw_backend_cpu(be, e);
    case SDW_DEVICE_CUDA:
#ifdef SDW_HAVE_CUDA
        return sdw_backend_cuda(be, d.index, prec, e);
#else
        (void)prec;
        return sdw_fail(e, SDW_EUNSUPPORTED, "device cuda:%d: this build has no CUDA backend (./configure --with-cuda)",
                        d.index);
#endif
    }
    return sdw_fail(e, SDW_EINVAL, "unknown device kind %d", (int)d.kind);
}
