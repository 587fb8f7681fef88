// Elementwise and copy kernels: every one is a grid-stride loop over its
// output, memory-bound, with the arithmetic written as in its CPU twin
// (src/engine/backend_cpu.c) so that the two agree to rounding. Pointers that
// an in-place call may alias carry no __restrict__.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"
#include "launch.cuh"

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n)
{
    int64_t blocks = (n + kThreads - 1) / kThreads;
    return (unsigned)(blocks < 65535 ? blocks : 65535);
}

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ void add_kernel(const float *a, const float *b, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

__global__ void scale_kernel(const float *x, float s, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = s * x[i];
}

__global__ void add_rows_kernel(const float *x, const float *v, float *y, int64_t rows, int64_t n)
{
    GRID_STRIDE(i, rows * n) y[i] = x[i] + v[i / n];
}

__global__ void fill_rows_kernel(const float *__restrict__ v, float *__restrict__ y, int64_t rows, int64_t n)
{
    GRID_STRIDE(i, rows * n) y[i] = v[i % n];
}

__global__ void gaussian_kernel(const float *m, const float *noise, float s, float *y, int64_t b, int64_t n)
{
    GRID_STRIDE(i, b * n)
    {
        int64_t bi = i / n, j = i % n;
        float v = m[bi * 2 * n + j];
        if (noise) {
            float l = m[bi * 2 * n + n + j];
            l = l < -30.0f ? -30.0f : l > 20.0f ? 20.0f : l;
            v += expf(0.5f * l) * noise[i];
        }
        y[i] = s * v;
    }
}

__global__ void geglu_kernel(const float *__restrict__ x, float *__restrict__ y, int64_t rows, int64_t n)
{
    GRID_STRIDE(i, rows * n)
    {
        int64_t r = i / n, j = i % n;
        float a = x[r * 2 * n + j], g = x[r * 2 * n + n + j];
        y[i] = a * (0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
    }
}

__global__ void concat_kernel(const float *__restrict__ a, const float *__restrict__ c, float *__restrict__ y,
                              int64_t b, int64_t na, int64_t nc)
{
    int64_t row = na + nc;
    GRID_STRIDE(i, b * row)
    {
        int64_t r = i / row, j = i % row;
        y[i] = j < na ? a[r * na + j] : c[r * nc + (j - na)];
    }
}

constexpr int kTile = 32;

// One 32x32 tile per block through shared memory, padded by one column so
// that the transposed reads do not hit the same bank.
__global__ void transpose_kernel(const float *__restrict__ x, float *__restrict__ y, int64_t m, int64_t n)
{
    __shared__ float tile[kTile][kTile + 1];
    const float *xb = x + blockIdx.z * m * n;
    float *yb = y + blockIdx.z * m * n;
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

__global__ void embed_kernel(const float *__restrict__ table, const int32_t *__restrict__ ids,
                             const float *__restrict__ pos, float *__restrict__ y, int64_t rows, int64_t dim,
                             int64_t tpos)
{
    GRID_STRIDE(i, rows * dim)
    {
        int64_t r = i / dim, j = i % dim;
        float v = table[(int64_t)ids[r] * dim + j];
        y[i] = pos ? v + pos[(r % tpos) * dim + j] : v;
    }
}

__global__ void upsample_kernel(const float *__restrict__ x, float *__restrict__ y, int64_t bc, int64_t h,
                                int64_t w, int64_t oh, int64_t ow, float sy, float sx)
{
    GRID_STRIDE(i, bc * oh * ow)
    {
        int64_t p = i / (oh * ow), oy = i / ow % oh, ox = i % ow;
        int64_t iy = oh == 2 * h ? oy >> 1 : (int64_t)floorf((float)oy * sy);
        int64_t ix = ow == 2 * w ? ox >> 1 : (int64_t)floorf((float)ox * sx);
        iy = iy < h ? iy : h - 1;
        ix = ix < w ? ix : w - 1;
        y[i] = x[(p * h + iy) * w + ix];
    }
}

template <typename T> __device__ T from_float(float v);
template <> __device__ float from_float<float>(float v) { return v; }
template <> __device__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ float to_float(float v) { return v; }
__device__ float to_float(__half v) { return __half2float(v); }
__device__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __global__ void pack_kernel(const float *__restrict__ x, T *__restrict__ y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = from_float<T>(x[i]);
}

template <typename T>
__global__ void pack_pad_kernel(const float *__restrict__ x, T *__restrict__ y, int64_t bc, int64_t h, int64_t w,
                                int64_t hp, int64_t wp, int pad_t, int pad_l)
{
    GRID_STRIDE(i, bc * hp * wp)
    {
        int64_t p = i / (hp * wp), r = i / wp % hp - pad_t, c = i % wp - pad_l;
        float v = r >= 0 && r < h && c >= 0 && c < w ? x[(p * h + r) * w + c] : 0.0f;
        y[i] = from_float<T>(v);
    }
}

// x may alias y for T = float: each element is read before it is written, by one thread.
template <typename T>
__global__ void unpack_bias_kernel(const T *x, const float *__restrict__ bias, float *y, int64_t rows, int64_t n,
                                   int64_t nb)
{
    GRID_STRIDE(i, rows * n)
    {
        float v = to_float(x[i]);
        y[i] = bias ? v + bias[i / n % nb] : v;
    }
}

} // namespace

extern "C" cudaError_t sdw_k_add(const float *a, const float *b, float *y, int64_t n, cudaStream_t stream)
{
    if (n <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(n), kThreads, 0, stream, add_kernel)(a, b, y, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_scale(const float *x, float s, float *y, int64_t n, cudaStream_t stream)
{
    if (n <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(n), kThreads, 0, stream, scale_kernel)(x, s, y, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_add_rows(const float *x, const float *v, float *y, int64_t rows, int64_t n,
                                      cudaStream_t stream)
{
    if (rows <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(rows * n), kThreads, 0, stream, add_rows_kernel)(x, v, y, rows, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_fill_rows(const float *v, float *y, int64_t rows, int64_t n, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(rows * n), kThreads, 0, stream, fill_rows_kernel)(v, y, rows, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_gaussian(const float *m, const float *noise, float s, float *y, int64_t b, int64_t n,
                                      cudaStream_t stream)
{
    if (b <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(b * n), kThreads, 0, stream, gaussian_kernel)(m, noise, s, y, b, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_geglu(const float *x, float *y, int64_t rows, int64_t n, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(rows * n), kThreads, 0, stream, geglu_kernel)(x, y, rows, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_concat(const float *a, const float *c, float *y, int64_t b, int64_t na, int64_t nc,
                                    cudaStream_t stream)
{
    if (b <= 0 || na <= 0 || nc <= 0)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(b * (na + nc)), kThreads, 0, stream, concat_kernel)(a, c, y, b, na, nc);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_transpose(const float *x, float *y, int64_t b, int64_t m, int64_t n,
                                       cudaStream_t stream)
{
    int64_t tm = (m + kTile - 1) / kTile, tn = (n + kTile - 1) / kTile;
    if (b <= 0 || m <= 0 || n <= 0 || tn > 0x7fffffff || tm > 65535 || b > 65535)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(dim3((unsigned)tn, (unsigned)tm, (unsigned)b), dim3(kTile, 8), 0, stream, transpose_kernel)(x, y, m, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_embed(const float *table, const int32_t *ids, const float *pos, float *y, int64_t rows,
                                   int64_t dim, int64_t tpos, cudaStream_t stream)
{
    if (rows <= 0 || dim <= 0 || (pos && tpos <= 0))
        return cudaErrorInvalidValue;
    SDW_LAUNCH(grid_for(rows * dim), kThreads, 0, stream, embed_kernel)(table, ids, pos, y, rows, dim, tpos);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_upsample_nearest(const float *x, float *y, int64_t bc, int64_t h, int64_t w,
                                              int64_t oh, int64_t ow, cudaStream_t stream)
{
    if (bc <= 0 || h <= 0 || w <= 0 || oh <= 0 || ow <= 0)
        return cudaErrorInvalidValue;
    float sy = (float)h / (float)oh, sx = (float)w / (float)ow;
    SDW_LAUNCH(grid_for(bc * oh * ow), kThreads, 0, stream, upsample_kernel)(x, y, bc, h, w, oh, ow, sy, sx);
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_pack(const float *x, void *y, int64_t n, int dtype, cudaStream_t stream)
{
    if (n <= 0)
        return cudaErrorInvalidValue;
    switch (dtype) {
    case SDW_K_F32: SDW_LAUNCH(grid_for(n), kThreads, 0, stream, pack_kernel<float>)(x, (float *)y, n); break;
    case SDW_K_F16: SDW_LAUNCH(grid_for(n), kThreads, 0, stream, pack_kernel<__half>)(x, (__half *)y, n); break;
    case SDW_K_BF16:
        SDW_LAUNCH(grid_for(n), kThreads, 0, stream, pack_kernel<__nv_bfloat16>)(x, (__nv_bfloat16 *)y, n);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_pack_pad(const float *x, void *y, int64_t bc, int64_t h, int64_t w, int64_t hp,
                                      int64_t wp, int pad_t, int pad_l, int dtype, cudaStream_t stream)
{
    if (bc <= 0 || h <= 0 || w <= 0 || hp <= 0 || wp <= 0 || pad_t < 0 || pad_l < 0)
        return cudaErrorInvalidValue;
    unsigned g = grid_for(bc * hp * wp);
    switch (dtype) {
    case SDW_K_F32:
        SDW_LAUNCH(g, kThreads, 0, stream, pack_pad_kernel<float>)(x, (float *)y, bc, h, w, hp, wp, pad_t, pad_l);
        break;
    case SDW_K_F16:
        SDW_LAUNCH(g, kThreads, 0, stream, pack_pad_kernel<__half>)(x, (__half *)y, bc, h, w, hp, wp, pad_t, pad_l);
        break;
    case SDW_K_BF16:
        SDW_LAUNCH(g, kThreads, 0, stream, pack_pad_kernel<__nv_bfloat16>)(x, (__nv_bfloat16 *)y, bc, h, w, hp, wp,
                                                                           pad_t, pad_l);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t sdw_k_unpack_bias(const void *x, const float *bias, float *y, int64_t rows, int64_t n,
                                         int64_t nb, int dtype, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0 || (bias && nb <= 0))
        return cudaErrorInvalidValue;
    unsigned g = grid_for(rows * n);
    switch (dtype) {
    case SDW_K_F32:
        SDW_LAUNCH(g, kThreads, 0, stream, unpack_bias_kernel<float>)((const float *)x, bias, y, rows, n, nb);
        break;
    case SDW_K_F16:
        SDW_LAUNCH(g, kThreads, 0, stream, unpack_bias_kernel<__half>)((const __half *)x, bias, y, rows, n, nb);
        break;
    case SDW_K_BF16:
        SDW_LAUNCH(g, kThreads, 0, stream, unpack_bias_kernel<__nv_bfloat16>)((const __nv_bfloat16 *)x, bias, y, rows,
                                                                              n, nb);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
