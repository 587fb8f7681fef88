// What the host stand-ins for the CUDA runtime (fake_cudart.cc), cuBLAS
// (fake_cublas.cc) and cuDNN (fake_cudnn.cc) share: the registry of
// "device" allocations and the streams. They let the CUDA backend (src/cuda/)
// run unchanged on a machine without a GPU, with kernels/*.cu running in
// the simulator of cusim.h, so that the backend's use of the three APIs
// (argument orders, sizes, descriptors, graph capture) is checked where the
// real libraries cannot run. One device, used from one host thread.
#ifndef SDW_FAKE_CUDA_H
#define SDW_FAKE_CUDA_H

#include "cusim.h"

#include <cstdint>
#include <cstring>
#include <functional>

namespace sdw_fake {

// Whether [p, p + bytes) lies inside one live cudaMalloc allocation.
bool device_range(const void *p, size_t bytes);
// Whether p points into a live allocation at all.
bool device_pointer(const void *p);
// Whether s is 0, a special stream handle or a live stream.
bool valid_stream(cudaStream_t s);
// Whether s is being captured (its capture may have been invalidated).
bool capturing(cudaStream_t s);
// Marks the capture on s as broken by an operation a capture may not
// contain: cudaStreamEndCapture then fails.
void invalidate(cudaStream_t s);
// Runs work in stream order: now (every stream is synchronous here), or,
// while s is being captured, as a node of the graph.
void submit(cudaStream_t s, std::function<void()> work);

// The element types the fake libraries read and write, whatever each
// library's own enum calls them: loads widen to float, stores round once, to
// nearest even, as the libraries' epilogues do.
enum class Elem { f32, f16, bf16 };

inline float load(const void *p, Elem t, int64_t i)
{
    switch (t) {
    case Elem::f16: return __half2float(static_cast<const __half *>(p)[i]);
    case Elem::bf16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    default: return static_cast<const float *>(p)[i];
    }
}

inline void store(void *p, Elem t, int64_t i, float v)
{
    switch (t) {
    case Elem::f16: static_cast<__half *>(p)[i] = __float2half_rn(v); break;
    case Elem::bf16: static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float *>(p)[i] = v; break;
    }
}

// TF32 keeps 10 of float's 23 mantissa bits (rounded to nearest): what
// tensor cores read float32 operands as when TF32 math is allowed, in
// cuBLAS and cuDNN alike.
inline float tf32(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0xfffu + ((u >> 13) & 1)) & ~0x1fffu;
    memcpy(&v, &u, sizeof v);
    return v;
}

} // namespace sdw_fake

#endif
