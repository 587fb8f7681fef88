// The part of nvcuda::wmma that kernels/attention_tc.cu uses, for the host
// simulator (cusim.h); found before the toolkit's mma.h through the include
// order. Only 16x16x16 shapes with float accumulators.
//
// Which lane holds which element of a real fragment is unspecified, so this
// mock picks its own rule: element i of a tile (row-major) belongs to lane
// i % 32. Every lane keeps all of an A or B operand (as it would have to in
// order to compute its outputs), but of an accumulator only its own
// elements mean anything: mma_sync computes those alone and sets the rest to
// NaN, and load and store touch those alone. The .sync operations order no
// memory between lanes here, so a lane reads a tile while another may still
// be storing it unless the kernel put a __syncwarp() between them: a missing
// one shows up as stale or NaN data, or as a race under ThreadSanitizer.
// What this cannot check: code that depends on the real register layout, or
// on the hardware's own rounding inside a product (here exact products, sums
// in float).
#ifndef SDW_CUSIM_MMA_H
#define SDW_CUSIM_MMA_H

#include "cusim.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 is simulated");
    float e[16][16];
};

namespace detail {

inline float to_float(float x)
{
    return x;
}
inline float to_float(__half x)
{
    return __half2float(x);
}
inline float to_float(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

inline bool owned(int i)
{
    return i % 32 == (int)sdw_cusim::self.lane;
}

// The documented requirements of load_matrix_sync and store_matrix_sync:
// a 256-bit aligned pointer and a stride that is a multiple of 16 bytes;
// and, from the simulator, a tile inside the block's shared memory when it
// starts there.
template <typename T>
void check(const T *p, unsigned ldm, const char *what)
{
    if ((uintptr_t)p % 32)
        sdw_cusim::die("wmma::%s: pointer %p is not 32-byte aligned", what, (const void *)p);
    if (ldm * sizeof(T) % 16)
        sdw_cusim::die("wmma::%s: ldm %u is not a multiple of 16 bytes", what, ldm);
    if (!sdw_cusim::in_dynamic_shared(p, ((size_t)15 * ldm + 16) * sizeof(T)))
        sdw_cusim::die("wmma::%s: tile at %p (ldm %u) runs past the end of shared memory", what, (const void *)p, ldm);
}

} // namespace detail

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p, unsigned ldm)
{
    static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load takes a layout");
    static_assert(std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value,
                  "an operand fragment has a layout");
    detail::check(p, ldm, "load_matrix_sync");
    constexpr bool row = std::is_same<Layout, row_major>::value;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.e[r][c] = detail::to_float(row ? p[r * ldm + c] : p[c * ldm + r]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                             layout_t layout)
{
    detail::check(p, ldm, "load_matrix_sync");
    for (int i = 0; i < 256; i++) {
        int r = i / 16, c = i % 16;
        f.e[r][c] = detail::owned(i) ? (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) : NAN;
    }
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                              layout_t layout)
{
    detail::check(p, ldm, "store_matrix_sync");
    for (int i = (int)sdw_cusim::self.lane; i < 256; i += 32) {
        int r = i / 16, c = i % 16;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.e[r][c];
    }
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, float v)
{
    float x = std::is_same<T, float>::value ? v : detail::to_float(T(v));
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.e[r][c] = x;
}

template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
              const fragment<matrix_b, 16, 16, 16, T, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c)
{
    for (int i = 0; i < 256; i++) {
        int r = i / 16, n = i % 16;
        if (!detail::owned(i)) {
            d.e[r][n] = NAN;
            continue;
        }
        float s = c.e[r][n];
        for (int k = 0; k < 16; k++)
            s += a.e[r][k] * b.e[k][n];
        d.e[r][n] = s;
    }
}

} // namespace wmma
} // namespace nvcuda

#endif
