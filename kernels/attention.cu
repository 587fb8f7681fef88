// Fused attention in float32: one pass over the keys with an online softmax
// (running max and sum, the accumulator rescaled when the max grows), so no
// [tq, tk] score matrix is ever stored. Each query row is handled by a group
// of G consecutive lanes that split the head dimension between them (lane s
// holds dimensions s, s+G, s+2G, ...), which keeps q and the accumulator in
// registers up to d = 160 and makes the lanes of a group read consecutive
// shared-memory words; the other groups of the warp read the same words
// (a broadcast). Keys and values go through shared memory in tiles of BK
// rows, converted to float32 as they are copied there; scores are taken CH
// keys at a time so that the rescale happens once per chunk rather than once
// per key.
#include <math.h>

#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 16;

template <typename T, int G, int DPT>
__global__ void __launch_bounds__(kThreads) attention_kernel(const T *__restrict__ q, const T *__restrict__ k,
                                                             const T *__restrict__ v, T *__restrict__ out, int64_t tq,
                                                             int64_t tk, int64_t heads, int d, float scale,
                                                             int causal)
{
    constexpr int D = G * DPT; // head dimension padded to the lanes' share
    constexpr int QPB = kThreads / G;
    constexpr int BK = D <= 80 ? 64 : 32; // 40 KiB of static shared memory at most
    static_assert(BK % kChunk == 0, "chunks tile the key block");
    __shared__ float ks[BK * D];
    __shared__ float vs[BK * D];

    const int64_t bi = blockIdx.y / heads, h = blockIdx.y % heads, c_all = heads * d;
    const int sub = threadIdx.x % G;
    const int64_t qi = (int64_t)blockIdx.x * QPB + threadIdx.x / G;
    const bool active = qi < tq;

    float qr[DPT], acc[DPT];
    const T *qrow = q + (bi * tq + (active ? qi : 0)) * c_all + h * d;
#pragma unroll
    for (int t = 0; t < DPT; t++) {
        int c = t * G + sub;
        qr[t] = active && c < d ? sdw_load(qrow[c]) : 0.0f;
        acc[t] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;

    // The last key any query of this block may see; block-uniform, so every
    // lane runs the same iterations and the full-warp shuffles stay converged.
    int64_t last_q = (int64_t)(blockIdx.x + 1) * QPB - 1;
    int64_t kend = causal ? (last_q + 1 < tk ? last_q + 1 : tk) : tk;
    const T *kb = k + bi * tk * c_all + h * d, *vb = v + bi * tk * c_all + h * d;

    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BK * D; idx += kThreads) {
            int key = idx / D, c = idx % D;
            int64_t kk = k0 + key;
            bool ok = kk < tk && c < d;
            ks[idx] = ok ? sdw_load(kb[kk * c_all + c]) : 0.0f;
            vs[idx] = ok ? sdw_load(vb[kk * c_all + c]) : 0.0f;
        }
        __syncthreads();
        int kn = (int)(kend - k0 < BK ? kend - k0 : BK);
        for (int j0 = 0; j0 < kn; j0 += kChunk) {
            float sc[kChunk];
            float mc = -INFINITY;
#pragma unroll
            for (int jj = 0; jj < kChunk; jj++) {
                const float *kr = ks + (j0 + jj) * D + sub;
                float part = 0.0f;
#pragma unroll
                for (int t = 0; t < DPT; t++)
                    part += qr[t] * kr[t * G];
#pragma unroll
                for (int off = G / 2; off > 0; off >>= 1)
                    part += __shfl_xor_sync(0xffffffffu, part, off);
                int64_t kk = k0 + j0 + jj;
                bool ok = j0 + jj < kn && (!causal || kk <= qi);
                sc[jj] = ok ? part * scale : -INFINITY;
                mc = fmaxf(mc, sc[jj]);
            }
            // Key 0 is valid for every query, so m is finite after the first
            // chunk and later all-masked chunks give p = 0, never NaN.
            float mn = fmaxf(m, mc);
            float corr = expf(m - mn);
            l *= corr;
#pragma unroll
            for (int t = 0; t < DPT; t++)
                acc[t] *= corr;
#pragma unroll
            for (int jj = 0; jj < kChunk; jj++) {
                float p = expf(sc[jj] - mn);
                l += p;
                const float *vr = vs + (j0 + jj) * D + sub;
#pragma unroll
                for (int t = 0; t < DPT; t++)
                    acc[t] += p * vr[t * G];
            }
            m = mn;
        }
    }
    if (!active)
        return;
    float inv = 1.0f / l;
    T *orow = out + (bi * tq + qi) * c_all + h * d;
#pragma unroll
    for (int t = 0; t < DPT; t++) {
        int c = t * G + sub;
        if (c < d)
            orow[c] = sdw_store<T>(acc[t] * inv);
    }
}

template <typename T, int G, int DPT>
cudaError_t launch(const void *q, const void *k, const void *v, void *out, int64_t b, int64_t tq, int64_t tk,
                   int64_t heads, int64_t d, float scale, int causal, cudaStream_t stream)
{
    constexpr int QPB = kThreads / G;
    int64_t qblocks = (tq + QPB - 1) / QPB;
    if (qblocks > 0x7fffffff || b * heads > 65535)
        return cudaErrorInvalidValue;
    SDW_LAUNCH(dim3((unsigned)qblocks, (unsigned)(b * heads)), kThreads, 0, stream, attention_kernel<T, G, DPT>)(
        (const T *)q, (const T *)k, (const T *)v, (T *)out, tq, tk, heads, (int)d, scale, causal);
    return cudaGetLastError();
}

constexpr int kSoftThreads = 256;

// Softmax over rows of length n, as the CPU backend's softmax_rows: max,
// then expf(s - max) with the sum in double, then one multiply by the float
// reciprocal. Row r is query r0 + r % rpb of its head; under the causal mask
// only its first r0 + r % rpb + 1 entries count and the rest become 0. The
// exponentials are taken again in the last pass rather than kept in p, so
// that a 16-bit p is rounded once; p may alias s (float), as every entry is
// read and written by the same thread.
template <typename T>
__global__ void __launch_bounds__(kSoftThreads) softmax_rows_kernel(const float *s, T *p, int64_t n, int64_t rpb,
                                                                    int64_t r0, int causal)
{
    __shared__ float fmax_s[kSoftThreads / 32];
    __shared__ double sum_s[kSoftThreads / 32];
    const float *row = s + (int64_t)blockIdx.x * n;
    T *prow = p + (int64_t)blockIdx.x * n;
    int64_t valid = causal ? r0 + blockIdx.x % rpb + 1 : n;
    valid = valid < n ? valid : n;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < valid; j += kSoftThreads)
        mx = fmaxf(mx, row[j]);
    for (int off = 16; off > 0; off >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (lane == 0)
        fmax_s[warp] = mx;
    __syncthreads();
    mx = fmax_s[0];
    for (int w = 1; w < kSoftThreads / 32; w++)
        mx = fmaxf(mx, fmax_s[w]);

    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < valid; j += kSoftThreads)
        sum += expf(row[j] - mx);
    for (int off = 16; off > 0; off >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0)
        sum_s[warp] = sum;
    __syncthreads();
    sum = 0.0;
    for (int w = 0; w < kSoftThreads / 32; w++)
        sum += sum_s[w];
    float inv = (float)(1.0 / sum);
    for (int64_t j = threadIdx.x; j < n; j += kSoftThreads)
        prow[j] = sdw_store<T>(j < valid ? expf(row[j] - mx) * inv : 0.0f);
}

} // namespace

extern "C" cudaError_t sdw_k_softmax_rows(const float *s, void *p, int64_t rows, int64_t n, int64_t rpb, int64_t r0,
                                          int causal, int dt, cudaStream_t stream)
{
    if (rows <= 0 || n <= 0 || rpb <= 0 || r0 < 0 || rows > 0x7fffffff)
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        SDW_LAUNCH((unsigned)rows, kSoftThreads, 0, stream, softmax_rows_kernel<T>)(s, (T *)p, n, rpb, r0, causal);
        return cudaGetLastError();
    });
}

extern "C" cudaError_t sdw_k_attention(const void *q, const void *k, const void *v, void *out, int64_t b,
                                       int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal,
                                       int dt, cudaStream_t stream)
{
    if (b <= 0 || tq <= 0 || tk <= 0 || heads <= 0 || d <= 0 || d > 160 || (causal && tq != tk))
        return cudaErrorInvalidValue;
    return sdw_dispatch(dt, [&](auto t) {
        using T = decltype(t);
        switch (d) {
        case 40: return launch<T, 4, 10>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
        case 64: return launch<T, 4, 16>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
        case 80: return launch<T, 8, 10>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
        case 160: return launch<T, 8, 20>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
        default:
            if (d <= 64)
                return launch<T, 4, 16>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
            return launch<T, 8, 20>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
        }
    });
}
