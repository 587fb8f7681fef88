// The one tensor-core instruction of the fused attention (attention_tc.cu):
// mma.sync.aligned.m16n8k16 with float32 accumulators, D += A B for a 16x16
// A (row-major), a 16x8 B and a 16x8 D spread over a warp's 32 lanes, with
// operands in half or bfloat16. Unlike wmma's fragments, this shape's
// register layout is documented (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"), so a kernel may compute on its elements in place. With
// g = lane / 4 and t = lane % 4, each 32-bit operand register holds two
// consecutive elements of a row of A or a column of B, the lower-indexed one
// in its low half:
//   A: a[0] (g, 2t..2t+1), a[1] (g+8, 2t..), a[2] (g, 2t+8..), a[3] (g+8, 2t+8..)
//   B: b[0] (2t..2t+1, g), b[1] (2t+8..2t+9, g)
//   D: d[0] (g, 2t), d[1] (g, 2t+1), d[2] (g+8, 2t), d[3] (g+8, 2t+1)
// Built with -DSDW_CUSIM, tests/cusim/ptx_mma.h computes the same from that
// layout on the host.
#ifndef SDW_MMA_CUH
#define SDW_MMA_CUH

#include <stdint.h>
#include <string.h>

#include "dtype.cuh"

#ifdef SDW_CUSIM
#include "ptx_mma.h"
#else
template <typename T>
__device__ __forceinline__ void sdw_mma16816(float d[4], const uint32_t a[4], const uint32_t b[2]);

// One specialisation per operand type; ptx names it in the instruction.
#define SDW_MMA16816(T, ptx)                                                                                      \
    template <>                                                                                                   \
    __device__ __forceinline__ void sdw_mma16816<T>(float d[4], const uint32_t a[4], const uint32_t b[2])         \
    {                                                                                                             \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." ptx "." ptx ".f32 {%0, %1, %2, %3}, "               \
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                                              \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                             \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));                         \
    }
SDW_MMA16816(__half, "f16")
SDW_MMA16816(__nv_bfloat16, "bf16")
#undef SDW_MMA16816
#endif

// Two consecutive 16-bit elements as one operand register. p must be 4-byte
// aligned. The host build copies, which its aliasing rules require.
__device__ __forceinline__ uint32_t sdw_ld32(const void *p)
{
#ifdef SDW_CUSIM
    uint32_t x;
    memcpy(&x, p, sizeof x);
    return x;
#else
    return *static_cast<const uint32_t *>(p);
#endif
}

// lo and hi (already of type T) as one operand register, lo in the low half.
template <typename T>
__device__ __forceinline__ uint32_t sdw_pack2(T lo, T hi)
{
    static_assert(sizeof(T) == 2, "a 16-bit type");
    uint16_t l, h;
    memcpy(&l, &lo, 2);
    memcpy(&h, &hi, 2);
    return (uint32_t)l | (uint32_t)h << 16;
}

#endif
