// LayerNorm, one block per row. Two passes over the row (mean, then the
// centred sum of squares) rather than a one-pass E[x^2]-E[x]^2, which loses
// precision when the mean is large; rows are short enough (<= a few thousand)
// to stay in L1 between passes.
#include "kernels.h"

namespace {

constexpr int kThreads = 256;

__device__ float block_sum(float v, float *shared)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < kThreads / 32 ? shared[lane] : 0.0f;
        for (int off = 16; off > 0; off >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0)
            shared[0] = v;
    }
    __syncthreads();
    float total = shared[0];
    __syncthreads();
    return total;
}

__global__ void layer_norm_kernel(const float *__restrict__ x, const float *__restrict__ gamma,
                                  const float *__restrict__ beta, float *__restrict__ y, int64_t n, float eps)
{
    __shared__ float shared[kThreads / 32];
    const float *xr = x + blockIdx.x * n;
    float *yr = y + blockIdx.x * n;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
        s += xr[i];
    float mean = block_sum(s, shared) / (float)n;
    float sq = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        float d = xr[i] - mean;
        sq += d * d;
    }
    float rstd = rsqrtf(block_sum(sq, shared) / (float)n + eps);
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
        yr[i] = (xr[i] - mean) * rstd * gamma[i] + beta[i];
}

} // namespace

extern "C" cudaError_t sdw_k_layer_norm(const float *x, const float *gamma, const float *beta, float *y,
                                        int64_t rows, int64_t n, float eps, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0 || rows > 0x7fffffff)
        return cudaErrorInvalidValue;
    layer_norm_kernel<<<(unsigned)rows, kThreads, 0, stream>>>(x, gamma, beta, y, n, eps);
    return cudaGetLastError();
}
