// GroupNorm in two launches: statistics with one block per (image, group),
// accumulated in double and in two passes (mean, then the centred sum of
// squares) like the CPU twin; then a grid-wide pass that normalises every
// element, so that the heavy pass is not limited to b * groups blocks.
#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace {

constexpr int kStatThreads = 512;
constexpr int kThreads = 256;

template <typename T>
__global__ void group_stats_kernel(const T *__restrict__ x, float *__restrict__ stats, int64_t len, float eps)
{
    __shared__ double shared[kStatThreads / 32];
    const T *xg = x + blockIdx.x * len;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += kStatThreads)
        s += sdw_load(xg[i]);
    double mean = sdw_block_sum<kStatThreads>(s, shared) / (double)len;
    double sq = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += kStatThreads) {
        double d = sdw_load(xg[i]) - mean;
        sq += d * d;
    }
    double var = sdw_block_sum<kStatThreads>(sq, shared) / (double)len;
    if (threadIdx.x == 0) {
        stats[2 * blockIdx.x] = (float)mean;
        stats[2 * blockIdx.x + 1] = (float)(1.0 / sqrt(var + eps));
    }
}

template <typename T>
__global__ void group_apply_kernel(const T *x, const float *__restrict__ stats, const T *__restrict__ gamma,
                                   const T *__restrict__ beta, T *y, int64_t total, int64_t c, int64_t n, int64_t cg,
                                   int silu)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t bc = i / n, ch = bc % c, grp = bc / cg; // bc / cg == b * groups + group
        float mean = stats[2 * grp], rstd = stats[2 * grp + 1];
        float v = (sdw_load(x[i]) - mean) * (rstd * sdw_load(gamma[ch])) + sdw_load(beta[ch]);
        y[i] = sdw_store<T>(silu ? v / (1.0f + expf(-v)) : v);
    }
}

} // namespace

extern "C" cudaError_t sdw_k_group_stats(const void *x, float *stats, int64_t b, int64_t c, int64_t n, int64_t groups,
                                         float eps, int dt, cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups || b * groups > 0x7fffffff)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH((unsigned)(b * groups), kStatThreads, 0, stream, group_stats_kernel<T>)((const T *)x, stats,
                                                                                          c / groups * n, eps);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_group_apply(const void *x, const float *stats, const void *gamma, const void *beta,
                                         void *y, int64_t b, int64_t c, int64_t n, int64_t groups, int silu, int dt,
                                         cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups)
        return cudaErrorInvalidValue;
    int64_t total = b * c * n, blocks = (total + kThreads - 1) / kThreads;
    unsigned grid = (unsigned)(blocks < 65535 * 4 ? blocks : 65535 * 4);
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(grid, kThreads, 0, stream, group_apply_kernel<T>)((const T *)x, stats, (const T *)gamma,
                                                                    (const T *)beta, (T *)y, total, c, n, c / groups,
                                                                    silu);
        return cudaGetLastError();
    });
}
