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

#endif
