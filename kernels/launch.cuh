// How kernels are launched and how a kernel declares dynamic shared memory,
// written once so that the same sources build two ways: with nvcc, into the
// CUDA backend, and with -DSDW_CUSIM as plain C++, where tests/cusim/cusim.h
// runs each block's threads on host threads (tests/test_cusim.cc compares
// every kernel with the CPU backend that way on machines without a GPU).
//
// SDW_LAUNCH(grid, block, smem, stream, kernel)(args...) is
// kernel<<<grid, block, smem, stream>>>(args...); the kernel comes last
// because a template's arguments contain commas.
#ifndef SDW_LAUNCH_CUH
#define SDW_LAUNCH_CUH

#ifdef SDW_CUSIM
#include "cusim.h"
#define SDW_LAUNCH(grid, block, smem, stream, ...) sdw_cusim::launch(grid, block, smem, stream, __VA_ARGS__)
// A host "extern __shared__" would be an ordinary global; the simulator
// hands out its block's buffer instead.
#define SDW_DYNAMIC_SHARED(align, type, name) type *name = (type *)sdw_cusim::dynamic_shared()
#else
#define SDW_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define SDW_DYNAMIC_SHARED(align, type, name) extern __shared__ __align__(align) type name[]
#endif

#include <stdint.h>

// The elementwise kernels' shape: a grid-stride loop over n outputs,
// SDW_BLOCK_THREADS threads a block and at most 65535 blocks (the limit of
// a grid's y and z, kept for x too so that one rule serves every launch).
#define SDW_BLOCK_THREADS 256

static inline unsigned sdw_grid_for(int64_t n)
{
    int64_t blocks = (n + SDW_BLOCK_THREADS - 1) / SDW_BLOCK_THREADS;
    return (unsigned)(blocks < 65535 ? blocks : 65535);
}

#define SDW_GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#endif
