// GroupNorm in two launches: statistics with one block per (image, group),
// accumulated in double and in two passes (mean, then the centred sum of
// squares) like the CPU twin; then a grid-wide pass that normalises every
// element, so that the heavy pass is not limited to b * groups blocks.
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace {

constexpr int kStatThreads = 512;
constexpr int kThreads = 256;

__global__ void group_stats_kernel(const float *__restrict__ x, float *__restrict__ stats, int64_t len, float eps)
{
    __shared__ double shared[kStatThreads / 32];
    const float *xg = x + blockIdx.x * len;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += kStatThreads)
        s += xg[i];
    double mean = sdw_block_sum<kStatThreads>(s, shared) / (double)len;
    double sq = 0.0;
    for (int64_t i = threadIdx.x; i < len; i += kStatThreads) {
        double d = xg[i] - mean;
        sq += d * d;
    }
    double var = sdw_block_sum<kStatThreads>(sq, shared) / (double)len;
    if (threadIdx.x == 0) {
        stats[2 * blockIdx.x] = (float)mean;
        stats[2 * blockIdx.x + 1] = (float)(1.0 / sqrt(var + eps));
    }
}

__global__ void group_apply_kernel(const float *x, const float *__restrict__ stats, const float *__restrict__ gamma,
                                   const float *__restrict__ beta, float *y, int64_t total, int64_t c, int64_t n,
                                   int64_t cg, int silu)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t bc = i / n, ch = bc % c, grp = bc / cg; // bc / cg == b * groups + group
        float mean = stats[2 * grp], rstd = stats[2 * grp + 1];
        float v = (x[i] - mean) * (rstd * gamma[ch]) + beta[ch];
        y[i] = silu ? v / (1.0f + expf(-v)) : v;
    }
}

} // namespace

extern "C" cudaError_t sdw_k_group_stats(const float *x, float *stats, int64_t b, int64_t c, int64_t n,
                                         int64_t groups, float eps, cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups || b * groups > 0x7fffffff)
        return cudaErrorInvalidValue;
    SDW_LAUNCH((unsigned)(b * groups), kStatThreads, 0, stream, group_stats_kernel)(x, stats, c / groups * n, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_group_apply(const float *x, const float *stats, const float *gamma, const float *beta,
                                         float *y, int64_t b, int64_t c, int64_t n, int64_t groups, int silu,
                                         cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups)
        return cudaErrorInvalidValue;
    int64_t total = b * c * n, blocks = (total + kThreads - 1) / kThreads;
    SDW_LAUNCH((unsigned)(blocks < 65535 * 4 ? blocks : 65535 * 4), kThreads, 0, stream, group_apply_kernel)(
        x, stats, gamma, beta, y, total, c, n, c / groups, silu);
    return cudaGetLastError();
}
