// LayerNorm, one block per row. Two passes over the row (mean, then the
// centred sum of squares) rather than a one-pass E[x^2]-E[x]^2, which loses
// precision when the mean is large; rows are short enough (<= a few thousand)
// to stay in L1 between passes. Sums are in double and the mean and 1/std
// rounded to float once, as the CPU twin does. x and y may be the same
// buffer (each element is read and written by one thread), so no
// __restrict__ on them.
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace {

constexpr int kThreads = 256;

__global__ void layer_norm_kernel(const float *x, const float *__restrict__ gamma, const float *__restrict__ beta,
                                  float *y, int64_t n, float eps)
{
    __shared__ double shared[kThreads / 32];
    const float *xr = x + blockIdx.x * n;
    float *yr = y + blockIdx.x * n;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
        s += xr[i];
    double mean = sdw_block_sum<kThreads>(s, shared) / (double)n;
    double sq = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        double d = xr[i] - mean;
        sq += d * d;
    }
    float rstd = (float)(1.0 / sqrt(sdw_block_sum<kThreads>(sq, shared) / (double)n + eps)), fmean = (float)mean;
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
        yr[i] = (xr[i] - fmean) * rstd * gamma[i] + beta[i];
}

} // namespace

extern "C" cudaError_t sdw_k_layer_norm(const float *x, const float *gamma, const float *beta, float *y,
                                        int64_t rows, int64_t n, float eps, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0 || rows > 0x7fffffff)
        return cudaErrorInvalidValue;
    SDW_LAUNCH((unsigned)rows, kThreads, 0, stream, layer_norm_kernel)(x, gamma, beta, y, n, eps);
    return cudaGetLastError();
}
