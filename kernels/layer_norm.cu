// LayerNorm, one block per row. Two passes over the row (mean, then the
// centred sum of squares) rather than a one-pass E[x^2]-E[x]^2, which loses
// precision when the mean is large; rows are short enough (<= a few thousand)
// to stay in L1 between passes. Sums are in double and the mean and 1/std
// rounded to float once, as the CPU twin does. x and y may be the same
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
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
        s += sdw_load(xr[i]);
    double mean = sdw_block_sum<kThreads>(s, shared) / (double)n;
    double sq = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        double d = sdw_load(xr[i]) - mean;
        sq += d * d;
    }
    float rstd = (float)(1.0 / sqrt(sdw_block_sum<kThreads>(sq, shared) / (double)n + eps)), fmean = (float)mean;
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
