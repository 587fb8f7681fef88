// Block-wide reductions shared by the normalisation kernels.
#ifndef SDW_REDUCE_CUH
#define SDW_REDUCE_CUH

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

#endif
