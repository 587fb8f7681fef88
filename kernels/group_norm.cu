// GroupNorm in three launches. Statistics first: each (image, group) is cut
// into `splits` pieces, one block each, so that a batch of one with 32
// groups still fills the GPU; a block writes its piece's count, mean and
// centred sum of squares (two passes over the piece, in double, like the CPU
// twin over the whole group). A second launch merges each group's pieces in
// order (Chan et al.'s pairwise update), which gives the mean and variance
// the two whole-group passes would, to double rounding, and the same every
// run. Then one pass normalises every element, a block per row of n (one
// image's channel) or part of it, so that the channel's scale and shift are
// worked out once and no element pays for 64-bit index division.
#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace {

constexpr int kStatThreads = 512;
constexpr int kThreads = 256;
// Statistics: about this many blocks in all, none with fewer than
// kMinPiece elements.
constexpr int64_t kTargetBlocks = 1024, kMinPiece = 4096;

int64_t splits_for(int64_t bg, int64_t len)
{
    int64_t s = (kTargetBlocks + bg - 1) / bg, most = (len + kMinPiece - 1) / kMinPiece;
    s = s < most ? s : most;
    return s < 1 ? 1 : s > 65535 ? 65535 : s;
}

template <typename T>
__global__ void group_piece_kernel(const T *__restrict__ x, double *__restrict__ part, int64_t len, int64_t splits)
{
    __shared__ double shared[kStatThreads / 32];
    const int64_t bg = blockIdx.x, s = blockIdx.y;
    const int64_t lo = len * s / splits, hi = len * (s + 1) / splits;
    double mean, sq;
    sdw_block_moments<kStatThreads>(x + bg * len, lo, hi, shared, &mean, &sq);
    if (threadIdx.x == 0) {
        double *p = part + (bg * splits + s) * 3;
        p[0] = (double)(hi - lo);
        p[1] = mean;
        p[2] = sq;
    }
}

__global__ void group_merge_kernel(const double *__restrict__ part, float *__restrict__ stats, int64_t bgs,
                                   int64_t splits, int64_t len, float eps)
{
    int64_t bg = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (bg >= bgs)
        return;
    const double *p = part + bg * splits * 3;
    double n = p[0], mean = p[1], m2 = p[2];
    for (int64_t s = 1; s < splits; s++) {
        const double *q = p + s * 3;
        double nn = n + q[0], delta = q[1] - mean;
        mean += delta * q[0] / nn;
        m2 += q[2] + delta * delta * n * q[0] / nn;
        n = nn;
    }
    stats[2 * bg] = (float)mean;
    stats[2 * bg + 1] = (float)(1.0 / sqrt(m2 / (double)len + eps));
}

template <typename T>
__global__ void group_apply_kernel(const T *x, const float *__restrict__ stats, const T *__restrict__ gamma,
                                   const T *__restrict__ beta, T *y, int64_t rows, int64_t c, int64_t n, int64_t cg,
                                   int silu)
{
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        int64_t ch = row % c, grp = row / cg; // row / cg == b * groups + group
        float mean = stats[2 * grp], scale = stats[2 * grp + 1] * sdw_load(gamma[ch]), shift = sdw_load(beta[ch]);
        const T *xr = x + row * n;
        T *yr = y + row * n;
        for (int64_t i = blockIdx.x * (int64_t)kThreads + threadIdx.x; i < n; i += (int64_t)gridDim.x * kThreads) {
            float v = (sdw_load(xr[i]) - mean) * scale + shift;
            yr[i] = sdw_store<T>(silu ? v / (1.0f + expf(-v)) : v);
        }
    }
}

} // namespace

extern "C" int64_t sdw_k_group_scratch(int64_t b, int64_t c, int64_t n, int64_t groups)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups)
        return 0;
    return b * groups * splits_for(b * groups, c / groups * n) * 3;
}

extern "C" cudaError_t sdw_k_group_stats(const void *x, float *stats, double *part, int64_t b, int64_t c, int64_t n,
                                         int64_t groups, float eps, int dt, cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups || b * groups > 0x7fffffff)
        return cudaErrorInvalidValue;
    const int64_t bg = b * groups, len = c / groups * n, splits = splits_for(bg, len);
    cudaError_t rc = sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(dim3((unsigned)bg, (unsigned)splits), kStatThreads, 0, stream, group_piece_kernel<T>)(
            (const T *)x, part, len, splits);
        return cudaGetLastError();
    });
    if (rc != cudaSuccess)
        return rc;
    SDW_LAUNCH((unsigned)((bg + kThreads - 1) / kThreads), kThreads, 0, stream, group_merge_kernel)(part, stats, bg,
                                                                                                   splits, len, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_group_apply(const void *x, const float *stats, const void *gamma, const void *beta,
                                         void *y, int64_t b, int64_t c, int64_t n, int64_t groups, int silu, int dt,
                                         cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || n <= 0 || groups <= 0 || c % groups)
        return cudaErrorInvalidValue;
    // Four elements per thread in a block's first sweep of its row, and
    // enough rows side by side to fill the GPU.
    int64_t rows = b * c, bx = (n + kThreads * 4 - 1) / (kThreads * 4);
    unsigned gx = (unsigned)(bx < 1024 ? bx : 1024), gy = (unsigned)(rows < 65535 ? rows : 65535);
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(dim3(gx, gy), kThreads, 0, stream, group_apply_kernel<T>)((const T *)x, stats, (const T *)gamma,
                                                                            (const T *)beta, (T *)y, rows, c, n,
                                                                            c / groups, silu);
        return cudaGetLastError();
    });
}
