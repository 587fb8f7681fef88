/* The backend registry: the one place that knows which backends this build
 * has and makes one for a device (base/device.h). Model code never calls a
 * backend's constructor; it gets a sdw_backend from here and then speaks
 * only the op interface of tensor/tensor.h. */
#ifndef SDW_BACKEND_H
#define SDW_BACKEND_H

#include "base/device.h"
#include "base/err.h"
#include "tensor/tensor.h"

/* Precision of an accelerator backend: the type every tensor is stored in
 * (float32, or IEEE half or bfloat16 for activations and weights alike),
 * with float32 accumulation in products and convolutions and float32
 * arithmetic in every other op whatever the storage. */
typedef enum sdw_precision {
    SDW_PREC_FP32,
    SDW_PREC_FP16,
    SDW_PREC_BF16,
} sdw_precision;

/* "fp32", "fp16" or "bf16"; -1 for anything else. */
int sdw_precision_parse(const char *name);

/* The backend for device d (precision applies to CUDA). A CUDA device in a
 * build without the CUDA backend is SDW_EUNSUPPORTED; CUDA's own failures
 * are SDW_EDEVICE (no usable device) or SDW_ENOTFOUND (no such index). */
int sdw_backend_open(sdw_backend **be, sdw_device d, sdw_precision prec, sdw_error *e);

/* The constructors behind sdw_backend_open, for tests that name a backend. */
/* The CPU backend: OpenBLAS sgemm for products, OpenMP for the rest. */
int sdw_backend_cpu(sdw_backend **be, sdw_error *e);
#include "sdw-build.h"
#ifdef SDW_HAVE_CUDA
/* The CUDA backend on device `device` (0-based). */
int sdw_backend_cuda(sdw_backend **be, int device, sdw_precision prec, sdw_error *e);
#endif

#endif
