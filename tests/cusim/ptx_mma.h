// The host stand-in for kernels/mma.cuh's sdw_mma16816 (PTX
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}), for the simulator
// (cusim.h). The lanes exchange their operand registers through the warp
// (sdw_cusim::exchange: the instruction is warp-wide, and so is this), each
// rebuilds the whole A and B tiles from them by the layout that mma.cuh
// states after the PTX ISA, and computes its own four elements of D: exact
// products, summed in float32 in k order onto the accumulator. A kernel that
// puts an element in the wrong lane or half of a register gets a wrong
// product here as it would on the GPU. What this cannot check: the
// hardware's own summation order and rounding inside the product.
#ifndef SDW_CUSIM_PTX_MMA_H
#define SDW_CUSIM_PTX_MMA_H

#include "cusim.h"

namespace sdw_cusim {

inline float half_bits(uint16_t x, __half)
{
    __half_raw r;
    r.x = x;
    return __half2float(__half(r));
}

inline float half_bits(uint16_t x, __nv_bfloat16)
{
    __nv_bfloat16_raw r;
    r.x = x;
    return __bfloat162float(__nv_bfloat16(r));
}

} // namespace sdw_cusim

template <typename T>
inline void sdw_mma16816(float d[4], const uint32_t a[4], const uint32_t b[2])
{
    uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    unsigned char all[32][32];
    sdw_cusim::exchange(mine, sizeof mine, all, __FILE__, __LINE__);
    float A[16][16], B[16][8];
    auto elem = [&](int lane, int reg, int hi) {
        uint32_t r;
        memcpy(&r, all[lane] + 4 * reg, 4);
        return sdw_cusim::half_bits((uint16_t)(hi ? r >> 16 : r & 0xffff), T());
    };
    for (int lane = 0; lane < 32; lane++) {
        int g = lane / 4, t = lane % 4;
        for (int hi = 0; hi < 2; hi++) {
            A[g][2 * t + hi] = elem(lane, 0, hi);
            A[g + 8][2 * t + hi] = elem(lane, 1, hi);
            A[g][2 * t + 8 + hi] = elem(lane, 2, hi);
            A[g + 8][2 * t + 8 + hi] = elem(lane, 3, hi);
            B[2 * t + hi][g] = elem(lane, 4, hi);
            B[2 * t + 8 + hi][g] = elem(lane, 5, hi);
        }
    }
    int g = (int)sdw_cusim::self.lane / 4, t = (int)sdw_cusim::self.lane % 4;
    for (int i = 0; i < 4; i++) {
        int r = g + (i >= 2 ? 8 : 0), c = 2 * t + (i & 1);
        float s = d[i];
        for (int k = 0; k < 16; k++)
            s += A[r][k] * B[k][c];
        d[i] = s;
    }
}

#endif
