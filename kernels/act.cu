// Elementwise activations. The constants and formulas match the CPU twin
// (src/engine/backend_cpu.c, cpu_act) so that the two agree to rounding.
#include "kernels.h"
#include "launch.cuh"

namespace {

enum { kSilu = 0, kGelu = 1, kQuickGelu = 2 }; // sdw_act in tensor.h

__global__ void act_kernel(const float *x, float *y, int64_t n, int act)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        switch (act) {
        case kSilu: y[i] = v / (1.0f + expf(-v)); break;
        case kGelu: y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); break;
        default: y[i] = v / (1.0f + expf(-1.702f * v)); break;
        }
    }
}

} // namespace

extern "C" cudaError_t sdw_k_act(const float *x, float *y, int64_t n, int act, cudaStream_t stream)
{
    if (n <= 0 || act < kSilu || act > kQuickGelu)
        return cudaErrorInvalidValue;
    int64_t blocks = (n + 255) / 256;
    SDW_LAUNCH((unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, stream, act_kernel)(x, y, n, act);
    return cudaGetLastError();
}
