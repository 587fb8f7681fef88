// Fused attention on tensor cores, for the fp16 and bf16 precisions: the
// one-pass online softmax of attention.cu, but the two products of each key
// tile (q k^T and p v) are 16x16x16 wmma products on q, k and v as they are
// stored (half or bfloat16) and on the probabilities rounded to that type,
// with everything accumulated and normalised in float32. A block takes 64
// query rows of one (image, head); each of its four warps owns 16 of them,
// and the warps share 64-key tiles of k and v, copied into shared memory.
// The head dimension is padded with zeros to a multiple of 16, which adds
// nothing to either product.
//
// wmma leaves open which lane holds which element of a fragment, so all the
// work done per row goes through shared memory instead: a warp stores its
// 16x64 score tile as float, two lanes per row turn it into probabilities
// (and rescale that row of the output when its max grows), and the output
// accumulator itself lives in shared memory between tiles, in fragments only
// for the p v product.
#include <math.h>
#include <mma.h>

#include "dtype.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace {

using namespace nvcuda;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;           // query rows per warp: one wmma tile
constexpr int kBQ = kWarps * kRows; // query rows per block
constexpr int kBK = 64;             // keys per tile
constexpr int kMaxD = 160;

// Row pitches are padded so that consecutive rows start on different banks.
// wmma wants pitches that are multiples of 8 elements for 16-bit types and 4
// for float; then every 16-row step is a multiple of 32 bytes, the alignment
// its pointers need, given 128-byte aligned sections.
constexpr int kPad16 = 8, kPad32 = 4;

constexpr size_t align128(size_t n)
{
    return (n + 127) / 128 * 128;
}

template <int D>
struct Smem {
    static_assert(D % 16 == 0 && D <= kMaxD, "padded head dimension");
    static constexpr int ldh = D + kPad16;   // q, k and v tiles (16-bit)
    static constexpr int lds = kBK + kPad32; // scores (float)
    static constexpr int ldp = kBK + kPad16; // probabilities (16-bit)
    static constexpr int ldo = D + kPad32;   // output accumulator (float)
    static constexpr size_t s = 0;
    static constexpr size_t p = s + align128((size_t)kBQ * lds * 4);
    static constexpr size_t o = p + align128((size_t)kBQ * ldp * 2);
    static constexpr size_t k = o + align128((size_t)kBQ * ldo * 4);
    static constexpr size_t v = k + align128((size_t)kBK * ldh * 2);
    static constexpr size_t l = v + align128((size_t)kBK * ldh * 2);
    static constexpr size_t bytes = l + align128((size_t)kBQ * 4);
    // The q tile is read once, into fragments, before the first key tile;
    // it shares the space of the scores and probabilities, which are first
    // written after the first tile's barriers. At d = 40 this is what
    // lets three blocks share an A100 SM (four on an H100).
    static constexpr size_t q = s;
    static_assert((size_t)kBQ * ldh * 2 <= o - s, "q fits over the scores and probabilities");
    static_assert(bytes <= 163 * 1024, "fits sm_80's dynamic shared memory");
};

// Scores arrive as log2-scaled (scale_log2 = scale * log2(e)) so that each
// probability is one exp2f.
template <int D, typename T>
__global__ void __launch_bounds__(kThreads)
    attention_tc_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v, T *__restrict__ out,
                        int64_t tq, int64_t tk, int64_t heads, int d, float scale_log2, int causal)
{
    using L = Smem<D>;
    using frag_q = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
    using frag_kt = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
    using frag_v = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
    using frag_acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

    SDW_DYNAMIC_SHARED(128, unsigned char, smem);
    T *qs = (T *)(smem + L::q), *ks = (T *)(smem + L::k), *vs = (T *)(smem + L::v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *ss = (float *)(smem + L::s) + warp * kRows * L::lds;
    T *ps = (T *)(smem + L::p) + warp * kRows * L::ldp;
    float *os = (float *)(smem + L::o) + warp * kRows * L::ldo;
    float *ls = (float *)(smem + L::l) + warp * kRows;

    const int64_t bi = blockIdx.y / heads, h = blockIdx.y % heads, c_all = heads * d;
    const int64_t q0 = (int64_t)blockIdx.x * kBQ;
    const T *qb = q + bi * tq * c_all + h * d;
    const T *kb = k + bi * tk * c_all + h * d, *vb = v + bi * tk * c_all + h * d;
    const T zero = sdw_store<T>(0.0f);

    // Query rows past tq and dimensions past d are zeros: such a row gets
    // finite scores (all 0) and is never written; the padded dimensions add 0.
    for (int idx = threadIdx.x; idx < kBQ * D; idx += kThreads) {
        int r = idx / D, c = idx % D;
        int64_t qi = q0 + r;
        qs[r * L::ldh + c] = qi < tq && c < d ? qb[qi * c_all + c] : zero;
    }
    for (int idx = lane; idx < kRows * D; idx += 32)
        os[idx / D * L::ldo + idx % D] = 0.0f;
    __syncthreads();
    frag_q qf[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wmma::load_matrix_sync(qf[kk], qs + warp * kRows * L::ldh + kk * 16, L::ldh);

    // Softmax lanes: lane 2r + half takes row r of the warp's 16, columns
    // half, half + 2, ... of each score tile; both lanes of a pair keep the
    // same running max m and sum l.
    const int r = lane / 2, half = lane % 2;
    const int64_t qrow = q0 + warp * kRows + r;
    float m = -INFINITY, l = 0.0f;

    // Under the causal mask no query of this block sees past its last row;
    // kend is block-uniform, so every warp runs the same tiles and meets the
    // same barriers.
    const int64_t kend = causal ? (q0 + kBQ < tk ? q0 + kBQ : tk) : tk;
    for (int64_t k0 = 0; k0 < kend; k0 += kBK) {
        __syncthreads(); // every warp is done with the previous k and v tiles
        // Keys past tk are zeros, not whatever memory follows: their
        // probability is 0, and 0 * NaN would still poison the product.
        for (int idx = threadIdx.x; idx < kBK * D; idx += kThreads) {
            int j = idx / D, c = idx % D;
            int64_t key = k0 + j;
            bool ok = key < tk && c < d;
            ks[j * L::ldh + c] = ok ? kb[key * c_all + c] : zero;
            vs[j * L::ldh + c] = ok ? vb[key * c_all + c] : zero;
        }
        __syncthreads();

#pragma unroll
        for (int j = 0; j < kBK / 16; j++) {
            frag_acc sf;
            wmma::fill_fragment(sf, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                frag_kt kf; // k stored [key][dim] is k^T in column-major order
                wmma::load_matrix_sync(kf, ks + j * 16 * L::ldh + kk * 16, L::ldh);
                wmma::mma_sync(sf, qf[kk], kf, sf);
            }
            wmma::store_matrix_sync(ss + j * 16, sf, L::lds, wmma::mem_row_major);
        }
        __syncwarp(); // each lane reads scores that other lanes stored

        float x[kBK / 2];
        float mx = -INFINITY;
        const float *srow = ss + r * L::lds;
#pragma unroll
        for (int i = 0; i < kBK / 2; i++) {
            int64_t key = k0 + 2 * i + half;
            bool ok = key < tk && (!causal || key <= qrow);
            x[i] = ok ? srow[2 * i + half] * scale_log2 : -INFINITY;
            mx = fmaxf(mx, x[i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float mn = fmaxf(m, mx);
        // A row that has seen no key yet (m and mn both -inf) would get
        // exp2(-inf - -inf) = NaN; with base 0 its p and corr are 0 instead.
        // Every real row sees key 0 in the first tile, so this only guards.
        float base = mn == -INFINITY ? 0.0f : mn;
        float corr = exp2f(m - base), sum = 0.0f;
        T *prow = ps + r * L::ldp;
#pragma unroll
        for (int i = 0; i < kBK / 2; i++) {
            T p = sdw_store<T>(exp2f(x[i] - base));
            prow[2 * i + half] = p;
            // The sum takes the rounded p that the product uses, so the
            // output stays a weighted mean of v.
            sum += sdw_load(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * corr + sum;
        m = mn;
        float *orow = os + r * L::ldo;
#pragma unroll 4
        for (int c = half; c < D; c += 2)
            orow[c] *= corr;
        __syncwarp(); // p and the rescaled rows are read by the whole warp

        frag_q pf[kBK / 16];
#pragma unroll
        for (int kk = 0; kk < kBK / 16; kk++)
            wmma::load_matrix_sync(pf[kk], ps + kk * 16, L::ldp);
#pragma unroll
        for (int n = 0; n < D / 16; n++) {
            frag_acc of;
            wmma::load_matrix_sync(of, os + n * 16, L::ldo, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < kBK / 16; kk++) {
                frag_v vf;
                wmma::load_matrix_sync(vf, vs + kk * 16 * L::ldh + n * 16, L::ldh);
                wmma::mma_sync(of, pf[kk], vf, of);
            }
            wmma::store_matrix_sync(os + n * 16, of, L::ldo, wmma::mem_row_major);
        }
        // The next tile's first __syncwarp orders these stores before the
        // lanes touch os, and its stores to ss and ps come after this
        // warp's reads of them (the __syncwarp above).
    }

    if (half == 0)
        ls[r] = l;
    __syncwarp();
    for (int rr = 0; rr < kRows; rr++) {
        int64_t qi = q0 + warp * kRows + rr;
        if (qi >= tq)
            break;
        float inv = 1.0f / ls[rr];
        T *orow = out + (bi * tq + qi) * c_all + h * d;
        for (int c = lane; c < d; c += 32)
            orow[c] = sdw_store<T>(os[rr * L::ldo + c] * inv);
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
    SDW_LAUNCH(dim3((unsigned)qblocks, (unsigned)(b * heads)), kThreads, bytes, stream, attention_tc_kernel<D, T>)(
        (const T *)q, (const T *)k, (const T *)v, (T *)out, tq, tk, heads, (int)d, scale * 1.4426950408889634f, causal);
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
    if (b <= 0 || tq <= 0 || tk <= 0 || heads <= 0 || d <= 0 || d > kMaxD || (causal && tq != tk))
        return cudaErrorInvalidValue;
    return sdw_dispatch_16(dt, [&](auto t) {
        return launch_d<decltype(t)>(q, k, v, out, b, tq, tk, heads, d, scale, causal, stream);
    });
}
