// Elementwise activations. The constants and formulas match the CPU twin
// (src/cpu/backend_cpu.c, cpu_act) so that the two agree to rounding.
#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace {

enum { kSilu = 0, kGelu = 1, kQuickGelu = 2 }; // sdw_act in tensor.h

template <typename T>
__global__ void act_kernel(const T *x, T *y, int64_t n, int act)
{
    SDW_GRID_STRIDE(i, n) {
        float v = sdw_load(x[i]);
        switch (act) {
        case kSilu: y[i] = sdw_store<T>(v / (1.0f + expf(-v))); break;
        case kGelu: y[i] = sdw_store<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f))); break;
        default: y[i] = sdw_store<T>(v / (1.0f + expf(-1.702f * v))); break;
        }
    }
}

} // namespace

extern "C" cudaError_t sdw_k_act(const void *x, void *y, int64_t n, int act, int dt, cudaStream_t stream)
{
    if (n <= 0 || act < kSilu || act > kQuickGelu)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(n), SDW_BLOCK_THREADS, 0, stream, act_kernel<T>)((const T *)x, (T *)y, n, act);
        return cudaGetLastError();
    });
}
