// LayerNorm, one block per row: its mean and variance by sdw_block_moments
// (two passes in double; rows are short enough, a few thousand at most, to
// stay in L1 between them), the mean and 1/std rounded to float once, as the
// CPU twin does. x and y may be the same
// buffer (each element is read and written by one thread), so no
// __restrict__ on them.
#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void layer_norm_kernel(const T *x, const T *__restrict__ gamma, const T *__restrict__ beta, T *y,
                                  int64_t n, float eps)
{
    __shared__ double shared[kThreads / 32];
    const T *xr = x + blockIdx.x * n;
    T *yr = y + blockIdx.x * n;
    double mean, m2;
    sdw_block_moments<kThreads>(xr, 0, n, shared, &mean, &m2);
    float rstd = (float)(1.0 / sqrt(m2 / (double)n + eps)), fmean = (float)mean;
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
        yr[i] = sdw_store<T>((sdw_load(xr[i]) - fmean) * rstd * sdw_load(gamma[i]) + sdw_load(beta[i]));
}

} // namespace

extern "C" cudaError_t sdw_k_layer_norm(const void *x, const void *gamma, const void *beta, void *y, int64_t rows,
                                        int64_t n, float eps, int dt, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0 || rows > 0x7fffffff)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH((unsigned)rows, kThreads, 0, stream, layer_norm_kernel<T>)((const T *)x, (const T *)gamma,
                                                                             (const T *)beta, (T *)y, n, eps);
        return cudaGetLastError();
    });
}
