// Elementwise and copy kernels: every one is a grid-stride loop over its
// output, memory-bound, with the arithmetic written as in its CPU twin
// (src/cpu/backend_cpu.c) so that the two agree to rounding. Pointers that
// an in-place call may alias carry no __restrict__.
#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace {

template <typename T>
__global__ void add_kernel(const T *a, const T *b, T *y, int64_t n)
{
    SDW_GRID_STRIDE(i, n) y[i] = sdw_store<T>(sdw_load(a[i]) + sdw_load(b[i]));
}

template <typename T>
__global__ void scale_kernel(const T *x, float s, T *y, int64_t n)
{
    SDW_GRID_STRIDE(i, n) y[i] = sdw_store<T>(s * sdw_load(x[i]));
}

template <typename T>
__global__ void add_rows_kernel(const T *x, const T *v, T *y, int64_t rows, int64_t n, int64_t nv)
{
    SDW_GRID_STRIDE(i, rows * n) y[i] = sdw_store<T>(sdw_load(x[i]) + sdw_load(v[i / n % nv]));
}

template <typename T>
__global__ void fill_rows_kernel(const T *__restrict__ v, T *__restrict__ y, int64_t rows, int64_t n)
{
    SDW_GRID_STRIDE(i, rows * n) y[i] = v[i % n];
}

template <typename T>
__global__ void gaussian_kernel(const T *m, const T *noise, float s, T *y, int64_t b, int64_t n)
{
    SDW_GRID_STRIDE(i, b * n)
    {
        int64_t bi = i / n, j = i % n;
        float v = sdw_load(m[bi * 2 * n + j]);
        if (noise) {
            float l = sdw_load(m[bi * 2 * n + n + j]);
            l = l < -30.0f ? -30.0f : l > 20.0f ? 20.0f : l;
            v += expf(0.5f * l) * sdw_load(noise[i]);
        }
        y[i] = sdw_store<T>(s * v);
    }
}

template <typename T>
__global__ void geglu_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t rows, int64_t n)
{
    SDW_GRID_STRIDE(i, rows * n)
    {
        int64_t r = i / n, j = i % n;
        float a = sdw_load(x[r * 2 * n + j]), g = sdw_load(x[r * 2 * n + n + j]);
        y[i] = sdw_store<T>(a * (0.5f * g * (1.0f + erff(g * 0.70710678118654752f))));
    }
}

template <typename T>
__global__ void concat_kernel(const T *__restrict__ a, const T *__restrict__ c, T *__restrict__ y, int64_t b,
                              int64_t na, int64_t nc)
{
    int64_t row = na + nc;
    SDW_GRID_STRIDE(i, b * row)
    {
        int64_t r = i / row, j = i % row;
        y[i] = j < na ? a[r * na + j] : c[r * nc + (j - na)];
    }
}

constexpr int kTile = 32;

// One 32x32 tile per block through shared memory, padded by one column so
// that the transposed reads do not hit the same bank.
template <typename T>
__global__ void transpose_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t m, int64_t n)
{
    __shared__ T tile[kTile][kTile + 1];
    const T *xb = x + blockIdx.z * m * n;
    T *yb = y + blockIdx.z * m * n;
    int64_t i0 = (int64_t)blockIdx.y * kTile, j0 = (int64_t)blockIdx.x * kTile;
    for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
        int64_t i = i0 + r, j = j0 + threadIdx.x;
        if (i < m && j < n)
            tile[r][threadIdx.x] = xb[i * n + j];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
        int64_t j = j0 + r, i = i0 + threadIdx.x;
        if (i < m && j < n)
            yb[j * m + i] = tile[threadIdx.x][r];
    }
}

template <typename T>
__global__ void embed_kernel(const T *__restrict__ table, const int32_t *__restrict__ ids, const T *__restrict__ pos,
                             T *__restrict__ y, int64_t rows, int64_t dim, int64_t tpos)
{
    SDW_GRID_STRIDE(i, rows * dim)
    {
        int64_t r = i / dim, j = i % dim;
        T v = table[(int64_t)ids[r] * dim + j];
        y[i] = pos ? sdw_store<T>(sdw_load(v) + sdw_load(pos[(r % tpos) * dim + j])) : v;
    }
}

template <typename T>
__global__ void upsample_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t bc, int64_t h, int64_t w,
                                int64_t oh, int64_t ow, float sy, float sx)
{
    SDW_GRID_STRIDE(i, bc * oh * ow)
    {
        int64_t p = i / (oh * ow), oy = i / ow % oh, ox = i % ow;
        int64_t iy = oh == 2 * h ? oy >> 1 : (int64_t)floorf((float)oy * sy);
        int64_t ix = ow == 2 * w ? ox >> 1 : (int64_t)floorf((float)ox * sx);
        iy = iy < h ? iy : h - 1;
        ix = ix < w ? ix : w - 1;
        y[i] = x[(p * h + iy) * w + ix];
    }
}

template <typename T>
__global__ void pad_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t bc, int64_t h, int64_t w, int64_t hp,
                           int64_t wp, int pad_t, int pad_l)
{
    SDW_GRID_STRIDE(i, bc * hp * wp)
    {
        int64_t p = i / (hp * wp), r = i / wp % hp - pad_t, c = i % wp - pad_l;
        y[i] = r >= 0 && r < h && c >= 0 && c < w ? x[(p * h + r) * w + c] : sdw_store<T>(0.0f);
    }
}

// I is the index type: int32_t wherever every index fits (the sdw_k_im2col
// below checks), so that each element's divisions are 32-bit ones.
template <typename T, typename I>
__global__ void im2col_kernel(const T *__restrict__ x, T *__restrict__ col, I b, I c, I h, I w, I kh, I kw, I ow,
                              I stride, I pad_t, I pad_l, I p0, I np)
{
    const I rows = c * kh * kw, total = b * rows * np;
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * (I)blockDim.x) {
        I p = p0 + i % np, r = i / np % rows, bi = i / (np * rows);
        I ch = r / (kh * kw), ky = r / kw % kh, kx = r % kw;
        I iy = p / ow * stride - pad_t + ky, ix = p % ow * stride - pad_l + kx;
        col[i] = iy >= 0 && iy < h && ix >= 0 && ix < w ? x[((int64_t)(bi * c + ch) * h + iy) * w + ix]
                                                         : sdw_store<T>(0.0f);
    }
}

} // namespace

extern "C" cudaError_t sdw_k_im2col(const void *x, void *col, int64_t b, int64_t c, int64_t h, int64_t w, int64_t kh,
                                    int64_t kw, int64_t oh, int64_t ow, int stride, int pad_t, int pad_l, int64_t p0,
                                    int64_t np, int dt, cudaStream_t stream)
{
    if (b <= 0 || c <= 0 || h <= 0 || w <= 0 || kh <= 0 || kw <= 0 || oh <= 0 || ow <= 0 || stride <= 0 ||
        pad_t < 0 || pad_l < 0 || p0 < 0 || np <= 0 || p0 + np > oh * ow)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        // The last index of either tensor, plus a grid's stride past it.
        int64_t most = b * c * kh * kw * np, xs = b * c * h * w;
        if ((most > xs ? most : xs) + (int64_t)65535 * SDW_BLOCK_THREADS < INT32_MAX && oh * ow < INT32_MAX)
            SDW_LAUNCH(sdw_grid_for(most), SDW_BLOCK_THREADS, 0, stream, im2col_kernel<T, int32_t>)(
                (const T *)x, (T *)col, (int32_t)b, (int32_t)c, (int32_t)h, (int32_t)w, (int32_t)kh, (int32_t)kw,
                (int32_t)ow, stride, pad_t, pad_l, (int32_t)p0, (int32_t)np);
        else
            SDW_LAUNCH(sdw_grid_for(most), SDW_BLOCK_THREADS, 0, stream, im2col_kernel<T, int64_t>)(
                (const T *)x, (T *)col, b, c, h, w, kh, kw, ow, (int64_t)stride, (int64_t)pad_t, (int64_t)pad_l, p0,
                np);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_add(const void *a, const void *b, void *y, int64_t n, int dt, cudaStream_t stream)
{
    if (n <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(n), SDW_BLOCK_THREADS, 0, stream, add_kernel<T>)((const T *)a, (const T *)b, (T *)y, n);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_scale(const void *x, float s, void *y, int64_t n, int dt, cudaStream_t stream)
{
    if (n <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(n), SDW_BLOCK_THREADS, 0, stream, scale_kernel<T>)((const T *)x, s, (T *)y, n);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_add_rows(const void *x, const void *v, void *y, int64_t rows, int64_t n, int64_t nv,
                                      int dt, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0 || nv <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(rows * n), SDW_BLOCK_THREADS, 0, stream, add_rows_kernel<T>)((const T *)x, (const T *)v, (T *)y,
                                                                               rows, n, nv);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_fill_rows(const void *v, void *y, int64_t rows, int64_t n, int dt, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(rows * n), SDW_BLOCK_THREADS, 0, stream, fill_rows_kernel<T>)((const T *)v, (T *)y, rows, n);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_gaussian(const void *m, const void *noise, float s, void *y, int64_t b, int64_t n, int dt,
                                      cudaStream_t stream)
{
    if (b <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(b * n), SDW_BLOCK_THREADS, 0, stream, gaussian_kernel<T>)((const T *)m, (const T *)noise, s,
                                                                            (T *)y, b, n);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_geglu(const void *x, void *y, int64_t rows, int64_t n, int dt, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(rows * n), SDW_BLOCK_THREADS, 0, stream, geglu_kernel<T>)((const T *)x, (T *)y, rows, n);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_concat(const void *a, const void *c, void *y, int64_t b, int64_t na, int64_t nc, int dt,
                                    cudaStream_t stream)
{
    if (b <= 0 || na <= 0 || nc <= 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(b * (na + nc)), SDW_BLOCK_THREADS, 0, stream, concat_kernel<T>)((const T *)a, (const T *)c,
                                                                                  (T *)y, b, na, nc);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_transpose(const void *x, void *y, int64_t b, int64_t m, int64_t n, int dt,
                                       cudaStream_t stream)
{
    int64_t tm = (m + kTile - 1) / kTile, tn = (n + kTile - 1) / kTile;
    if (b <= 0 || m <= 0 || n <= 0 || tn > 0x7fffffff || tm > 65535 || b > 65535)
        return cudaErrorInvalidValue;
    dim3 grid((unsigned)tn, (unsigned)tm, (unsigned)b);
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(grid, dim3(kTile, 8), 0, stream, transpose_kernel<T>)((const T *)x, (T *)y, m, n);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_embed(const void *table, const int32_t *ids, const void *pos, void *y, int64_t rows,
                                   int64_t dim, int64_t tpos, int dt, cudaStream_t stream)
{
    if (rows <= 0 || dim <= 0 || (pos && tpos <= 0))
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(rows * dim), SDW_BLOCK_THREADS, 0, stream, embed_kernel<T>)((const T *)table, ids, (const T *)pos,
                                                                              (T *)y, rows, dim, tpos);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_upsample_nearest(const void *x, void *y, int64_t bc, int64_t h, int64_t w, int64_t oh,
                                              int64_t ow, int dt, cudaStream_t stream)
{
    if (bc <= 0 || h <= 0 || w <= 0 || oh <= 0 || ow <= 0)
        return cudaErrorInvalidValue;
    float sy = (float)h / (float)oh, sx = (float)w / (float)ow;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(bc * oh * ow), SDW_BLOCK_THREADS, 0, stream, upsample_kernel<T>)((const T *)x, (T *)y, bc, h, w, oh,
                                                                                   ow, sy, sx);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_pad(const void *x, void *y, int64_t bc, int64_t h, int64_t w, int64_t hp, int64_t wp,
                                 int pad_t, int pad_l, int dt, cudaStream_t stream)
{
    if (bc <= 0 || h <= 0 || w <= 0 || hp <= 0 || wp <= 0 || pad_t < 0 || pad_l < 0)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH(sdw_grid_for(bc * hp * wp), SDW_BLOCK_THREADS, 0, stream, pad_kernel<T>)((const T *)x, (T *)y, bc, h, w, hp, wp,
                                                                              pad_t, pad_l);
        return cudaGetLastError();
    });
}
