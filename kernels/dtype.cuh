// The storage types of kernels.h's `dt`. Kernels are templates over the
// storage type T (float, __half or __nv_bfloat16) that load every operand
// into float32 with sdw_load, compute in float32 and round once, to nearest
// even, with sdw_store<T> as they store; both are the identity for float, so
// the float32 instantiations compute what the float-only kernels did, bit
// for bit. Copies move T as it is, with no conversion.
#ifndef SDW_DTYPE_CUH
#define SDW_DTYPE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"

__device__ __forceinline__ float sdw_load(float x)
{
    return x;
}
__device__ __forceinline__ float sdw_load(__half x)
{
    return __half2float(x);
}
__device__ __forceinline__ float sdw_load(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T sdw_store(float x);
template <>
__device__ __forceinline__ float sdw_store<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ __half sdw_store<__half>(float x)
{
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 sdw_store<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

// The one place where a dt becomes a type: returns f(T()) for the T that dt
// names, f being a generic lambda that launches the kernels for T
// (`using T = decltype(t);`) and returns the launch's error. An unknown dt
// returns cudaErrorInvalidValue and launches nothing. sdw_dispatch_16 takes
// the two 16-bit types only, for kernels that have no float32 version (the
// tensor-core products), so that none is instantiated.
template <typename F>
cudaError_t sdw_dispatch_16(int dt, F &&f)
{
    switch (dt) {
    case SDW_K_F16: return f(__half());
    case SDW_K_BF16: return f(__nv_bfloat16());
    default: return cudaErrorInvalidValue;
    }
}

template <typename F>
cudaError_t sdw_dispatch(int dt, F &&f)
{
    return dt == SDW_K_F32 ? f(0.0f) : sdw_dispatch_16(dt, f);
}

#endif
