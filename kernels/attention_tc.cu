// Fused attention on tensor cores, for the fp16 and bf16 precisions, after
// FlashAttention-2: one pass over the keys with an online softmax, and no
// [tq x tk] buffer. A block takes 64 query rows of one (image, head); each of
// its four warps owns 16 of them and keeps all it knows about them in
// registers: its q rows as mma operands, and its scores, probabilities and
// output sums as mma accumulators (float32). The warps share 64-key tiles of
// k and v in shared memory, v transposed, so that every operand register is
// one 32-bit load. Both products (q k^T, then p v) are mma.sync m16n8k16
// (mma.cuh) on q, k and v as stored and on the probabilities rounded to the
// type; the softmax and the normalisation are float32. The head dimension is
// padded with zeros to a multiple of 16, which adds nothing to either
// product.
//
// The layout that mma.cuh states is what keeps p in registers: the score
// accumulators of keys 16j..16j+15 (two 8-key tiles), rounded and paired,
// are the A operand of the p v product over those keys as they stand. Each
// lane holds two elements of two rows (g and g + 8) of every tile, and the
// four lanes of a quad (the same g) hold a row between them: a row's max
// and sum are two xor-shuffles away.
#include <math.h>

#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;           // query rows per warp: one mma tile
constexpr int kBQ = kWarps * kRows; // query rows per block
constexpr int kBK = 64;             // keys per tile
constexpr int kMaxD = 160;

// Rows are padded by 8 elements (16 bytes), so that the eight rows a quad
// index g reaches in one operand load start 4 banks apart at every padded
// head dimension, and 16-byte stores into a row stay aligned.
constexpr int kPad = 8;

constexpr size_t align128(size_t n)
{
    return (n + 127) / 128 * 128;
}

template <int D>
struct Smem {
    static_assert(D % 16 == 0 && D <= kMaxD, "padded head dimension");
    static constexpr int ldq = D + kPad;   // q tile [row][dim]
    static constexpr int ldk = D + kPad;   // k tile [key][dim]
    static constexpr int ldv = kBK + kPad; // v tile transposed [dim][key]
    static constexpr size_t q = 0;
    static constexpr size_t k = q + align128((size_t)kBQ * ldq * 2);
    static constexpr size_t v = k + align128((size_t)kBK * ldk * 2);
    static constexpr size_t bytes = v + align128((size_t)D * ldv * 2);
    static_assert(bytes <= 163 * 1024, "fits sm_80's dynamic shared memory");
};

// 16 bytes from src to dst, both 16-byte aligned: one load and one store on
// the GPU; the host build copies, which its aliasing rules require.
__device__ __forceinline__ void copy16(void *dst, const void *src)
{
#ifdef SDW_CUSIM
    memcpy(dst, src, 16);
#else
    *static_cast<uint4 *>(dst) = *static_cast<const uint4 *>(src);
#endif
}

// Each probability is one exp2f of (score - row max) * scale_log2, scale_log2
// = scale * log2(e) (scale > 0, so the max of the unscaled scores is the
// max of the scaled ones). The difference comes first: scaling the scores
// and then subtracting would round each to float32 at its own magnitude,
// and scores as large as SD 2.1's in fp16 (upcast_attention: q k^T past
// 65504) would carry an error of up to 2^-7 into every exponent. vec: d and
// the row pitch heads * d are multiples of 8 and q, k and v 16-byte
// aligned, so that k and v tiles move in 16-byte pieces.
template <int D, typename T>
__global__ void __launch_bounds__(kThreads)
    attention_tc_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v, T *__restrict__ out,
                        int64_t tq, int64_t tk, int64_t heads, int d, float scale_log2, int causal, int vec)
{
    using L = Smem<D>;
    SDW_DYNAMIC_SHARED(128, unsigned char, smem);
    T *qs = (T *)(smem + L::q), *ks = (T *)(smem + L::k), *vt = (T *)(smem + L::v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    const int64_t bi = blockIdx.y / heads, h = blockIdx.y % heads, c_all = heads * d;
    const int64_t q0 = (int64_t)blockIdx.x * kBQ;
    const T *qb = q + bi * tq * c_all + h * d;
    const T *kb = k + bi * tk * c_all + h * d, *vb = v + bi * tk * c_all + h * d;
    const T zero = sdw_store<T>(0.0f);

    // Query rows past tq and dimensions past d are zeros: such a row gets
    // finite scores (all 0) and is never written; the padded dimensions of
    // q, k and v (zeroed once, here: the tile loads below write [0, d) only)
    // add 0 to both products.
    for (int idx = threadIdx.x; idx < kBQ * D; idx += kThreads) {
        int r = idx / D, c = idx % D;
        int64_t qi = q0 + r;
        qs[r * L::ldq + c] = qi < tq && c < d ? qb[qi * c_all + c] : zero;
    }
    for (int idx = threadIdx.x; idx < kBK * (D - d); idx += kThreads) {
        int j = idx / (D - d), c = d + idx % (D - d);
        ks[j * L::ldk + c] = zero;
        vt[c * L::ldv + j] = zero;
    }
    __syncthreads();
    uint32_t qf[D / 16][4];
    const T *qw = qs + warp * kRows * L::ldq;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        qf[kk][0] = sdw_ld32(qw + g * L::ldq + kk * 16 + 2 * t);
        qf[kk][1] = sdw_ld32(qw + (g + 8) * L::ldq + kk * 16 + 2 * t);
        qf[kk][2] = sdw_ld32(qw + g * L::ldq + kk * 16 + 8 + 2 * t);
        qf[kk][3] = sdw_ld32(qw + (g + 8) * L::ldq + kk * 16 + 8 + 2 * t);
    }

    // This lane's rows: g and g + 8 of the warp's 16 (index 0 and 1 below).
    const int64_t row[2] = {q0 + warp * kRows + g, q0 + warp * kRows + g + 8};
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    // Under the causal mask no query of this block sees past its last row;
    // kend is block-uniform, so every warp runs the same tiles and meets the
    // same barriers.
    const int64_t kend = causal ? (q0 + kBQ < tk ? q0 + kBQ : tk) : tk;
    for (int64_t k0 = 0; k0 < kend; k0 += kBK) {
        __syncthreads(); // every warp is done with the previous k and v tiles
        // Keys past tk are zeros, not whatever memory follows: their
        // probability is 0, and 0 * NaN would still poison the product.
        if (vec) {
            const int cv = d / 8;
            for (int idx = threadIdx.x; idx < kBK * cv; idx += kThreads) {
                int j = idx / cv, c = idx % cv * 8;
                int64_t key = k0 + j;
                alignas(16) T kx[8], vx[8];
                if (key < tk) {
                    copy16(kx, kb + key * c_all + c);
                    copy16(vx, vb + key * c_all + c);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        kx[i] = vx[i] = zero;
                }
                copy16(ks + j * L::ldk + c, kx);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    vt[(c + i) * L::ldv + j] = vx[i];
            }
        } else {
            for (int idx = threadIdx.x; idx < kBK * d; idx += kThreads) {
                int j = idx / d, c = idx % d;
                int64_t key = k0 + j;
                bool ok = key < tk;
                ks[j * L::ldk + c] = ok ? kb[key * c_all + c] : zero;
                vt[c * L::ldv + j] = ok ? vb[key * c_all + c] : zero;
            }
        }
        __syncthreads();

        // Scores of 16 rows by 64 keys: eight 8-key accumulator tiles.
        float s[kBK / 8][4];
#pragma unroll
        for (int n = 0; n < kBK / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const T *kr = ks + (n * 8 + g) * L::ldk + 2 * t;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t b[2] = {sdw_ld32(kr + kk * 16), sdw_ld32(kr + kk * 16 + 8)};
                sdw_mma16816<T>(s[n], qf[kk], b);
            }
        }

        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < kBK / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int64_t key = k0 + n * 8 + 2 * t + (i & 1);
                bool ok = key < tk && (!causal || key <= row[i / 2]);
                s[n][i] = ok ? s[n][i] : -INFINITY;
                mx[i / 2] = fmaxf(mx[i / 2], s[n][i]);
            }
        float base[2], corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            // A row that has seen no key yet (m and mn both -inf) would get
            // exp2(-inf - -inf) = NaN; with base 0 its p and corr are 0
            // instead. Every real row sees key 0 in the first tile, so this
            // only guards.
            base[r] = mn == -INFINITY ? 0.0f : mn;
            corr[r] = exp2f((m[r] - base[r]) * scale_log2);
            m[r] = mn;
        }

        // Probabilities, rounded to T, straight into the A operands of p v.
        // The sums take the rounded p that the product uses, so the output
        // stays a weighted mean of v. Each lane sums its own columns; the
        // quad's partial sums meet once, at the end (corr is the same for
        // all four).
        uint32_t pa[kBK / 16][4];
        float sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < kBK / 8; n++) {
            T p[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                p[i] = sdw_store<T>(exp2f((s[n][i] - base[i / 2]) * scale_log2));
                sum[i / 2] += sdw_load(p[i]);
            }
            pa[n / 2][(n % 2) * 2] = sdw_pack2(p[0], p[1]);
            pa[n / 2][(n % 2) * 2 + 1] = sdw_pack2(p[2], p[3]);
        }
#pragma unroll
        for (int r = 0; r < 2; r++)
            l[r] = l[r] * corr[r] + sum[r];

#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
            const T *vr = vt + (n * 8 + g) * L::ldv + 2 * t;
#pragma unroll
            for (int j = 0; j < kBK / 16; j++) {
                uint32_t b[2] = {sdw_ld32(vr + j * 16), sdw_ld32(vr + j * 16 + 8)};
                sdw_mma16816<T>(o[n], pa[j], b);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (row[r] >= tq)
            continue;
        float inv = 1.0f / l[r];
        T *orow = out + (bi * tq + row[r]) * c_all + h * d;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            int c = n * 8 + 2 * t;
            if (c < d)
                orow[c] = sdw_store<T>(o[n][2 * r] * inv);
            if (c + 1 < d)
                orow[c + 1] = sdw_store<T>(o[n][2 * r + 1] * inv);
        }
    }
}

template <int D, typename T>
cudaError_t launch(const void *q, const void *k, const void *v, void *out, int64_t b, int64_t tq, int64_t tk,
                   int64_t heads, int64_t d, float scale, int causal, cudaStream_t stream)
{
    int64_t qblocks = (tq + kBQ - 1) / kBQ;
    if (qblocks > 0x7fffffff || b * heads > 65535)
        return cudaErrorInvalidValue;
    constexpr size_t bytes = Smem<D>::bytes;
    // Past 48 KiB a kernel has to opt in to more dynamic shared memory. The
    // setting belongs to the current device, so it is made on every launch
    // rather than remembered once.
    if (bytes > 48 * 1024) {
        cudaError_t rc = cudaFuncSetAttribute(attention_tc_kernel<D, T>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
        if (rc != cudaSuccess)
            return rc;
    }
    int vec = d % 8 == 0 && heads * d % 8 == 0 && (uintptr_t)q % 16 == 0 && (uintptr_t)k % 16 == 0 &&
              (uintptr_t)v % 16 == 0;
    SDW_LAUNCH(dim3((unsigned)qblocks, (unsigned)(b * heads)), kThreads, bytes, stream, attention_tc_kernel<D, T>)(
        (const T *)q, (const T *)k, (const T *)v, (T *)out, tq, tk, heads, (int)d, scale * 1.4426950408889634f, causal,
        vec);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_d(const void *q, const void *k, const void *v, void *out, int64_t b, int64_t tq, int64_t tk,
                     int64_t heads, int64_t d, float scale, int causal, cudaStream_t stream)
{
    // One instantiation per multiple of 16, so no d pays for more than 15
    // zero columns.
    switch ((d + 15) / 16) {
    case 1: return launch<16, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 2: return launch<32, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 3: return launch<48, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 4: return launch<64, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 5: return launch<80, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 6: return launch<96, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 7: return launch<112, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 8: return launch<128, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 9: return launch<144, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    case 10: return launch<160, T>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace

extern "C" cudaError_t sdw_k_attention_tc(const void *q, const void *k, const void *v, void *out, int64_t b,
                                          int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal,
                                          int dt, cudaStream_t stream)
{
    if (b <= 0 || tq <= 0 || tk <= 0 || heads <= 0 || d <= 0 || d > kMaxD || (causal && tq != tk) || !(scale > 0.0f))
        return cudaErrorInvalidValue;
    return sdw_dispatch_16(dt, [&](auto t) {
        return launch_d<decltype(t)>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    });
}
