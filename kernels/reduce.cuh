// Block-wide reductions shared by the normalisation kernels.
#ifndef SDW_REDUCE_CUH
#define SDW_REDUCE_CUH

#include "dtype.cuh"

// The sum of v over a block of Threads threads (a multiple of 32), returned
// to every thread. shared holds Threads / 32 doubles. The trailing barrier
// lets the caller reduce again with the same shared buffer.
template <int Threads>
__device__ double sdw_block_sum(double v, double *shared)
{
    static_assert(Threads % 32 == 0 && Threads <= 1024, "whole warps, at most 1024 threads");
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < Threads / 32 ? shared[lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0)
            shared[0] = v;
    }
    __syncthreads();
    double total = shared[0];
    __syncthreads();
    return total;
}

// The mean of x[lo, hi) and its centred sum of squares, sum (x - mean)^2,
// over a block of Threads threads, to every thread: two passes in double
// (the mean first, as the CPU twins do), rather than one of E[x^2] - E[x]^2,
// which loses precision when the mean is large. The range should be short
// enough to stay in cache between the passes.
template <int Threads, typename T>
__device__ void sdw_block_moments(const T *x, int64_t lo, int64_t hi, double *shared, double *mean, double *m2)
{
    double s = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += Threads)
        s += sdw_load(x[i]);
    double mu = sdw_block_sum<Threads>(s, shared) / (double)(hi - lo);
    double sq = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += Threads) {
        double d = sdw_load(x[i]) - mu;
        sq += d * d;
    }
    *mean = mu;
    *m2 = sdw_block_sum<Threads>(sq, shared);
}

#endif
