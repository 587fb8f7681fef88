/* The CPU backend: OpenBLAS for matrix products, OpenMP for everything that
 * is elementwise or per row. It is the numerical reference for the other
 * backends, so it favours plain float32 arithmetic in torch's order over
 * shortcuts; reductions accumulate in double to stay clear of torch's own
 * rounding. */
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/backend.h"
#include "base/half.h"
#include "cpu/cpu_internal.h"
#include "tensor/tensor.h"

/* OpenBLAS built with DYNAMIC_ARCH (Debian's is) picks its kernels in its
 * library constructor from the CPU model number; a model newer than the
 * library (0.3.21 does not know Emerald Rapids, for one) gets the SSE3
 * "Prescott" kernels, 3-5x slower than the AVX2 ones. Its override, the
 * OPENBLAS_CORETYPE variable, is read only then, so when that fallback
 * happened on a CPU with AVX2 and FMA the selection is redone here with the
 * variable set for the duration, through the library's exported
 * (DYNAMIC_ARCH-only, hence weak) init and quit functions. The choice follows
 * the instruction set: the AVX-512 kernels where AVX-512 F/BW/DQ/VL are
 * present, else the AVX2+FMA ones. Nothing changes when the user set the
 * variable or OpenBLAS recognised the CPU. */
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));

static void repick_openblas_core(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *core = openblas_get_corename();
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit || getenv("OPENBLAS_CORETYPE") || !core ||
        strcmp(core, "Prescott"))
        return;
    __builtin_cpu_init();
    const char *pick = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        pick = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        pick = "Haswell";
    if (!pick || setenv("OPENBLAS_CORETYPE", pick, 0))
        return;
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
#endif
}

/* Every parallel loop, matrix products included, runs on OpenMP's threads:
 * OpenBLAS is kept single-threaded and each product is split over the OpenMP
 * team here. Two thread pools on the same cores (OpenBLAS's pthreads
 * yielding in a loop while OpenMP's workers spin between regions) cost a
 * third of the time on two cores. */
void sdw_cpu_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    int64_t span = m >= n ? m : n;
    if (nt > 1 && (double)m * (double)n * (double)k < 1e6)
        nt = 1;
    if (nt > span / 16)
        nt = (int)(span / 16) > 1 ? (int)(span / 16) : 1;
    if (nt == 1) {
        cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, alpha, a, (blasint)lda, b,
                    (blasint)ldb, beta, c, (blasint)ldc);
        return;
    }
    /* Split the longer side of C in multiples of 16 (the kernels' unroll). */
    int64_t chunk = ((span + nt - 1) / nt + 15) / 16 * 16;
#pragma omp parallel num_threads(nt)
    {
        int64_t i0 = (int64_t)omp_get_thread_num() * chunk;
        int64_t len = span - i0 < chunk ? span - i0 : chunk;
        if (len > 0) {
            if (m >= n)
                cblas_sgemm(CblasRowMajor, ta, tb, (blasint)len, (blasint)n, (blasint)k, alpha,
                            ta == CblasNoTrans ? a + i0 * lda : a + i0, (blasint)lda, b, (blasint)ldb, beta,
                            c + i0 * ldc, (blasint)ldc);
            else
                cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)len, (blasint)k, alpha, a, (blasint)lda,
                            tb == CblasNoTrans ? b + i0 : b + i0 * ldb, (blasint)ldb, beta, c + i0,
                            (blasint)ldc);
        }
    }
}

/* Query rows per block in attention: bounds the score buffer to
 * SDW_ATTN_QBLOCK x tk floats (4 MiB at 4096 keys) instead of tq x tk. */
#define SDW_ATTN_QBLOCK 256
/* Beyond this many keys (self-attention at 512x512 and up) the keys go in
 * blocks of SDW_ATTN_KBLOCK with a running softmax, so that each block of
 * scores (QBLOCK x KBLOCK floats, 512 KiB) stays in the core's cache through
 * the exp and the second product. A whole row of scores, 36 KiB at 768x768's
 * 9216 keys, makes every pass over it a trip to memory: most of the time of
 * those attentions went there. */
#define SDW_ATTN_KEYS_BLOCKED 1024
#define SDW_ATTN_KBLOCK 512

/* The largest activations (a transformer's feed-forward at 512x512 is 84 MB,
 * the VAE decoder's 128-256 MB) are beyond glibc's largest mmap threshold
 * (32 MiB), so malloc maps each afresh and its pages fault in (zeroed) one
 * by one on every op. Blocks of SDW_POOL_MIN bytes or more therefore come
 * from a pool: rounded up to one of eight sizes per octave, mapped directly,
 * and kept on their size's free list when freed, up to SDW_POOL_CACHE bytes
 * in all. A request that finds its list empty first unmaps cached blocks of
 * other sizes (the largest first) worth at least what it maps, so the
 * process never holds more than its peak of live blocks did without the
 * pool. Smaller blocks stay with malloc, whose heap already reuses them
 * (pooling them too, under that eviction rule, thrashed). Ops run from one
 * thread at a time (OpenMP only inside them), so the lists need no lock. */
#define SDW_POOL_MIN ((size_t)32 << 20)
#define SDW_POOL_CACHE ((size_t)512 << 20)
#define SDW_POOL_CLASSES 320
/* Each block starts with this header, its data SDW_POOL_HDR bytes on (the
 * data stays 64-byte aligned; small blocks carry it too, with class -1). */
#define SDW_POOL_HDR 64


typedef struct pool_block {
    size_t bytes;            /* mapped length, header included */
    int cls;                 /* size class, or -1 for a malloc'd block */
    struct pool_block *next; /* on its free list */
} pool_block;

typedef struct cpu_backend {
    sdw_backend base;
    pool_block *free_list[SDW_POOL_CLASSES];
    size_t cached; /* bytes on the free lists */
    int winograd;  /* 3x3 convolutions may take the Winograd path */
} cpu_backend;

int sdw_cpu_winograd(const sdw_backend *be)
{
    return ((const cpu_backend *)be)->winograd;
}

/* The smallest class of at least `bytes`: 2^o * (8 + j) / 8 for octave o,
 * step j. */
static int pool_class(size_t bytes, size_t *class_bytes)
{
    int o = 63 - __builtin_clzll((unsigned long long)bytes);
    for (;;) {
        for (int j = 0; j < 8; j++) {
            size_t c = ((size_t)1 << o) / 8 * (size_t)(8 + j);
            if (c >= bytes) {
                *class_bytes = c;
                return (o - 16) * 8 + j;
            }
        }
        o++;
    }
}

static void pool_unmap(pool_block *b)
{
    munmap(b, b->bytes);
}

/* Unmaps cached blocks, the largest first, until `want` bytes are gone or
 * nothing is cached. */
static void pool_evict(cpu_backend *cb, size_t want)
{
    size_t gone = 0;
    for (int c = SDW_POOL_CLASSES - 1; c >= 0 && gone < want; c--)
        while (cb->free_list[c] && gone < want) {
            pool_block *b = cb->free_list[c];
            cb->free_list[c] = b->next;
            cb->cached -= b->bytes;
            gone += b->bytes;
            pool_unmap(b);
        }
}

int sdw_cpu_alloc(sdw_backend *be, size_t n, float **p, sdw_error *e)
{
    cpu_backend *cb = (cpu_backend *)be;
    if (n > (SIZE_MAX - 2 * SDW_POOL_HDR) / 2 / sizeof(float))
        return sdw_fail(e, SDW_ENOMEM, "out of memory allocating %zu floats", n);
    size_t bytes = SDW_POOL_HDR + ((n * sizeof(float) + 63) & ~(size_t)63);
    pool_block *b;
    if (bytes < SDW_POOL_MIN) {
        b = aligned_alloc(64, bytes);
        if (!b)
            return sdw_fail(e, SDW_ENOMEM, "out of memory allocating %zu bytes", bytes);
        b->bytes = bytes;
        b->cls = -1;
    } else {
        size_t cbytes;
        int cls = pool_class(bytes, &cbytes);
        if (cls >= SDW_POOL_CLASSES)
            return sdw_fail(e, SDW_ENOMEM, "out of memory allocating %zu bytes", bytes);
        b = cb->free_list[cls];
        if (b) {
            cb->free_list[cls] = b->next;
            cb->cached -= b->bytes;
        } else {
            pool_evict(cb, cbytes);
            b = mmap(NULL, cbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (b == MAP_FAILED) {
                pool_evict(cb, SIZE_MAX);
                b = mmap(NULL, cbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            }
            if (b == MAP_FAILED)
                return sdw_fail(e, SDW_ENOMEM, "out of memory allocating %zu bytes", bytes);
            b->bytes = cbytes;
            b->cls = cls;
        }
    }
    *p = (float *)((char *)b + SDW_POOL_HDR);
    return SDW_OK;
}

void sdw_cpu_free(sdw_backend *be, float *p)
{
    cpu_backend *cb = (cpu_backend *)be;
    if (!p)
        return;
    pool_block *b = (pool_block *)((char *)p - SDW_POOL_HDR);
    if (b->cls < 0) {
        free(b);
    } else if (cb->cached + b->bytes <= SDW_POOL_CACHE) {
        b->next = cb->free_list[b->cls];
        cb->free_list[b->cls] = b;
        cb->cached += b->bytes;
    } else {
        pool_unmap(b);
    }
}

static int cpu_copy(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e)
{
    if (dst != src)
        memcpy(dst, src, n * sizeof(float));
    return SDW_OK;
}

/* Half-precision weights (f16 model files) stay halves in memory, half the
 * float32 footprint; blocks of rows are converted exactly to float32 just
 * before their product, so results equal those from float32 copies. */
static int cpu_weight_f16(sdw_backend *be, const uint16_t *src, size_t n, float **p, int *lowp, sdw_error *e)
{
    int rc = sdw_cpu_alloc(be, (n + 1) / 2, p, e);
    if (rc)
        return rc;
    memcpy(*p, src, n * sizeof *src);
    *lowp = 1;
    return SDW_OK;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx,f16c"))) static void halves_f16c(const uint16_t *s, float *d, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++)
        d[i] = sdw_f16_to_f32(s[i]);
}
#endif

void sdw_cpu_halves_to_f32(const uint16_t *s, float *d, int64_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("f16c")) {
        halves_f16c(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        d[i] = sdw_f16_to_f32(s[i]);
}

/* Rows per converted weight block: enough for the product to run at speed,
 * few enough for blocks to share out evenly over the threads. */
#define SDW_F16_BLOCK 256

/* Products with a half weight w [wrows, k], in blocks of its rows, each
 * converted into the thread's scratch and multiplied at once (while still in
 * cache), the blocks shared over the OpenMP threads. There are nx products
 * with the same weight (the images of a batch), so that each block is
 * converted once for all of them. w_left: C_i[wrows, n] = w x_i[k, n] (a
 * convolution: x_i a column matrix or image, ldx its row length); otherwise
 * C_i[n, wrows] = x_i[n, k] w^T (a linear layer). */
int sdw_cpu_gemm_f16w(sdw_backend *be, int w_left, const uint16_t *w, int64_t wrows, int64_t k, int nx,
                      const float *const *xs, int64_t ldx, int64_t n, float beta, float *const *cs, int64_t ldc,
                      sdw_error *e)
{
    int nt = omp_get_max_threads();
    int64_t nblk = nt * ((wrows + (int64_t)nt * SDW_F16_BLOCK - 1) / ((int64_t)nt * SDW_F16_BLOCK));
    int64_t nb = ((wrows + nblk - 1) / nblk + 15) / 16 * 16;
    nblk = (wrows + nb - 1) / nb;
    if (nt > nblk)
        nt = (int)nblk;
    float *scratch = NULL;
    int rc = sdw_cpu_alloc(be, (size_t)(nt * nb * k), &scratch, e);
    if (rc)
        return rc;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int64_t bi = 0; bi < nblk; bi++) {
        int64_t r0 = bi * nb, nr = wrows - r0 < nb ? wrows - r0 : nb;
        float *wf = scratch + (int64_t)omp_get_thread_num() * nb * k;
        sdw_cpu_halves_to_f32(w + r0 * k, wf, nr * k);
        for (int i = 0; i < nx; i++) {
            if (w_left)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nr, (blasint)n, (blasint)k, 1.0f,
                            wf, (blasint)k, xs[i], (blasint)ldx, beta, cs[i] + r0 * ldc, (blasint)ldc);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)nr, (blasint)k, 1.0f,
                            xs[i], (blasint)k, wf, (blasint)k, beta, cs[i] + r0, (blasint)ldc);
        }
    }
    sdw_cpu_free(be, scratch);
    return SDW_OK;
}

static int cpu_linear(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                      int64_t m, int64_t n, int64_t k, sdw_error *e)
{
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; i++)
            memcpy(y + i * n, bias, (size_t)n * sizeof(float));
        beta = 1.0f;
    }
    if (w_lowp)
        return sdw_cpu_gemm_f16w(be, 0, (const uint16_t *)w, n, k, 1, &x, k, m, beta, &y, n, e);
    sdw_cpu_gemm(CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, beta, y, n);
    return SDW_OK;
}

/* Mean and 1/sqrt(var + eps) of x[0..n) for LayerNorm and GroupNorm: two
 * passes in double (a one-pass E[x^2] - E[x]^2 loses precision when the mean
 * is large), each rounded to float once. */
#if defined(__x86_64__) && defined(__GNUC__)
/* expf for 8 lanes, within 2 ulp of the exact value over the whole float
 * range (denormal results included; +inf above log(FLT_MAX), 0 below the
 * smallest denormal, NaN kept). x = n ln2 + r with |r| <= ln2/2 (ln2 in two
 * parts, FMA), e^r by Cephes' degree-7 polynomial, and 2^n applied as
 * 2^(n/2) twice so that neither factor leaves the normal range. */
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x)
{
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

__attribute__((target("avx2,fma"))) static float row_max_avx2(const float *sr, int64_t n)
{
    __m256 vmx = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(sr + j));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmx);
    float mx = -INFINITY;
    for (int l = 0; l < 8; l++)
        mx = lanes[l] > mx ? lanes[l] : mx;
    for (; j < n; j++)
        mx = sr[j] > mx ? sr[j] : mx;
    return mx;
}

/* sr[j] = exp(sr[j] - mx) for j < n, returning their sum in double (4
 * lanes per half). The tail goes through exp8 too, so every entry gets the
 * same exp whatever its position. */
__attribute__((target("avx2,fma"))) static double exp_sum_avx2(float *sr, int64_t n, float mx)
{
    __m256 vm = _mm256_set1_ps(mx);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 ev = exp8(_mm256_sub_ps(_mm256_loadu_ps(sr + j), vm));
        _mm256_storeu_ps(sr + j, ev);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(ev)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(ev, 1)));
    }
    double sum = 0.0, part[4];
    if (j < n) {
        float lanes[8];
        for (int l = 0; l < 8; l++)
            lanes[l] = j + l < n ? sr[j + l] : mx;
        _mm256_storeu_ps(lanes, exp8(_mm256_sub_ps(_mm256_loadu_ps(lanes), vm)));
        for (int64_t t = j; t < n; t++) {
            sr[t] = lanes[t - j];
            sum += sr[t];
        }
    }
    _mm256_storeu_pd(part, _mm256_add_pd(s0, s1));
    return sum + (part[0] + part[1]) + (part[2] + part[3]);
}

/* exp8 on sixteen lanes: the same steps, so the same value in every lane. */
__attribute__((target("avx512f"))) static inline __m512 exp16(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    __m512i ni = _mm512_cvtps_epi32(n);
    __m512i n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, _mm512_set1_epi32(127)), 23));
    __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, _mm512_set1_epi32(127)), 23));
    return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
}

__attribute__((target("avx512f"))) static float row_max_avx512(const float *sr, int64_t n)
{
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(sr + j));
    float mx = _mm512_reduce_max_ps(vmx);
    for (; j < n; j++)
        mx = sr[j] > mx ? sr[j] : mx;
    return mx;
}

/* exp_sum_avx2 on sixteen lanes, the tail through exp16 too. */
__attribute__((target("avx512f"))) static double exp_sum_avx512(float *sr, int64_t n, float mx)
{
    __m512 vm = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 ev = exp16(_mm512_sub_ps(_mm512_loadu_ps(sr + j), vm));
        _mm512_storeu_ps(sr + j, ev);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(ev)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ev), 1))));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    if (j < n) {
        __mmask16 k = (__mmask16)((1u << (n - j)) - 1);
        __m512 ev = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(vm, k, sr + j), vm));
        _mm512_mask_storeu_ps(sr + j, k, ev);
        for (int64_t t = j; t < n; t++)
            sum += sr[t];
    }
    return sum;
}

/* One softmax row over its first `valid` entries. */
__attribute__((target("avx2,fma"))) static void softmax_row_avx2(float *sr, int64_t valid)
{
    double sum = exp_sum_avx2(sr, valid, row_max_avx2(sr, valid));
    __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    int64_t j = 0;
    for (; j + 8 <= valid; j += 8)
        _mm256_storeu_ps(sr + j, _mm256_mul_ps(_mm256_loadu_ps(sr + j), inv));
    for (; j < valid; j++)
        sr[j] *= (float)(1.0 / sum);
}
#endif

static void softmax_rows(float *s, int64_t rows, int64_t cols, int64_t row0, int causal, int avx2)
{
    for (int64_t i = 0; i < rows; i++) {
        float *sr = s + i * cols;
        int64_t valid = causal ? row0 + i + 1 : cols;
#if defined(__x86_64__) && defined(__GNUC__)
        if (avx2) {
            softmax_row_avx2(sr, valid);
            memset(sr + valid, 0, (size_t)(cols - valid) * sizeof *sr);
            continue;
        }
#endif
        float mx = -INFINITY;
        for (int64_t j = 0; j < valid; j++)
            mx = sr[j] > mx ? sr[j] : mx;
        double sum = 0.0;
        for (int64_t j = 0; j < valid; j++) {
            sr[j] = expf(sr[j] - mx);
            sum += sr[j];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < valid; j++)
            sr[j] *= inv;
        for (int64_t j = valid; j < cols; j++)
            sr[j] = 0.0f;
    }
}

static int have_avx2_fma(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
/* moments()'s two sums, 8 floats at a time into double lanes: the same
 * double accumulation as the scalar loops, in another order (far below a
 * float's rounding). */
__attribute__((target("avx2,fma"))) static void sums_avx2(const float *x, int64_t n, double *sum, double *sq)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double part[4], t = 0.0;
    _mm256_storeu_pd(part, _mm256_add_pd(s0, s1));
    for (; i < n; i++)
        t += x[i];
    *sum = part[0] + part[1] + part[2] + part[3] + t;
    double mean = *sum / (double)n;
    __m256d m = _mm256_set1_pd(mean);
    s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m);
        s0 = _mm256_fmadd_pd(d0, d0, s0);
        s1 = _mm256_fmadd_pd(d1, d1, s1);
    }
    _mm256_storeu_pd(part, _mm256_add_pd(s0, s1));
    t = 0.0;
    for (; i < n; i++) {
        double d = x[i] - mean;
        t += d * d;
    }
    *sq = part[0] + part[1] + part[2] + part[3] + t;
}
#endif

/* Mean and 1/sqrt(variance + eps) of n floats, summed in double. */
static void moments(const float *x, int64_t n, float eps, float *mean, float *rstd)
{
    double sum = 0.0, sq = 0.0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2_fma())
        sums_avx2(x, n, &sum, &sq);
    else
#endif
    {
        for (int64_t i = 0; i < n; i++)
            sum += x[i];
        double m = sum / (double)n;
        for (int64_t i = 0; i < n; i++) {
            double d = x[i] - m;
            sq += d * d;
        }
    }
    double m = sum / (double)n;
    *mean = (float)m;
    *rstd = (float)(1.0 / sqrt(sq / (double)n + eps));
}

static int cpu_layer_norm(sdw_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                          int64_t rows, int64_t n, float eps, sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float fmean, rstd;
        moments(xr, n, eps, &fmean, &rstd);
        for (int64_t i = 0; i < n; i++)
            yr[i] = (xr[i] - fmean) * rstd * gamma[i] + beta[i];
    }
    return SDW_OK;
}


/* The vector width the blocked attention's exps run at: 0 (scalar), 1
 * (AVX2), 2 (AVX-512: twice the exps per instruction, where the time of
 * 768x768's attention went once the products were in cache). */
static int attention_simd(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f"))
        return 2;
#endif
    return have_avx2_fma();
}

/* Row i of a score block: its max over n entries. */
static float scores_max(const float *sr, int64_t n, int simd)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (simd == 2)
        return row_max_avx512(sr, n);
    if (simd == 1)
        return row_max_avx2(sr, n);
#else
    (void)simd;
#endif
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++)
        mx = sr[j] > mx ? sr[j] : mx;
    return mx;
}

static double scores_exp_sum(float *sr, int64_t n, float mx, int simd)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (simd == 2)
        return exp_sum_avx512(sr, n, mx);
    if (simd == 1)
        return exp_sum_avx2(sr, n, mx);
#else
    (void)simd;
#endif
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++)
        sum += sr[j] = expf(sr[j] - mx);
    return sum;
}

/* One head's attention for nr query rows, the keys in blocks (no causal
 * mask): the running max m and sum l of each row, the output rows o
 * (stride c) rescaled by exp(m_old - m_new) whenever a block raises the max,
 * and divided by l at the end. sc holds nr x SDW_ATTN_KBLOCK scores. */
static void attention_rows_blocked(const float *qh, const float *kh, const float *vh, float *oh, int64_t nr,
                                   int64_t tk, int64_t d, int64_t c, float scale, float *sc, float *m, double *l,
                                   int simd)
{
    for (int64_t i = 0; i < nr; i++)
        m[i] = -INFINITY, l[i] = 0.0;
    for (int64_t k0 = 0; k0 < tk; k0 += SDW_ATTN_KBLOCK) {
        int64_t nk = tk - k0 < SDW_ATTN_KBLOCK ? tk - k0 : SDW_ATTN_KBLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nr, (blasint)nk, (blasint)d, scale, qh,
                    (blasint)c, kh + k0 * c, (blasint)c, 0.0f, sc, (blasint)SDW_ATTN_KBLOCK);
        for (int64_t i = 0; i < nr; i++) {
            float *sr = sc + i * SDW_ATTN_KBLOCK;
            float bm = scores_max(sr, nk, simd), mn = bm > m[i] ? bm : m[i];
            double sum = scores_exp_sum(sr, nk, mn, simd);
            if (k0) {
                float shrink = expf(m[i] - mn);
                l[i] *= shrink;
                float *orow = oh + i * c;
                for (int64_t t = 0; t < d; t++)
                    orow[t] *= shrink;
            }
            l[i] += sum;
            m[i] = mn;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nr, (blasint)d, (blasint)nk, 1.0f, sc,
                    (blasint)SDW_ATTN_KBLOCK, vh + k0 * c, (blasint)c, k0 ? 1.0f : 0.0f, oh, (blasint)c);
    }
    for (int64_t i = 0; i < nr; i++) {
        float inv = (float)(1.0 / l[i]);
        for (int64_t t = 0; t < d; t++)
            oh[i * c + t] *= inv;
    }
}

/* One thread per (batch, head, query block), each with single-threaded
 * products and its own score block of SDW_ATTN_QBLOCK x tk floats (or x
 * SDW_ATTN_KBLOCK with many keys): scratch is threads x 4 MiB at 4096 keys,
 * never heads x tq x tk, and no barrier between the products and the
 * softmax. Scores and softmax are float32 like everything
 * here, which is what a UNet's upcast_attention asks for. */
static int cpu_attention(sdw_backend *be, const float *q, const float *k, const float *v, float *out, int64_t b,
                         int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal, sdw_error *e)
{
    int64_t c = heads * d;
    int64_t qblock = tq < SDW_ATTN_QBLOCK ? tq : SDW_ATTN_QBLOCK;
    /* Work items are (batch, head, query block): a VAE's one-head attention
     * keeps every thread busy too. */
    int64_t nqb = (tq + qblock - 1) / qblock, items = b * heads * nqb;
    int nt = omp_get_max_threads();
    if (nt > items)
        nt = (int)items;
    int avx2 = have_avx2_fma();
    int blocked = !causal && tk > SDW_ATTN_KEYS_BLOCKED, simd = blocked ? attention_simd() : 0;
    /* per thread: the scores, then (blocked) each row's running max (2 *
     * qblock floats, so that the sums after them, doubles, stay aligned
     * whatever qblock is) and sum */
    int64_t per = blocked ? qblock * SDW_ATTN_KBLOCK + 4 * qblock : qblock * tk;
    float *s = NULL;
    int rc = sdw_cpu_alloc(be, (size_t)(nt * per), &s, e);
    if (rc)
        return rc;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int64_t item = 0; item < items; item++) {
        int64_t bh = item / nqb, bi = bh / heads, h = bh % heads;
        int64_t r0 = item % nqb * qblock, nr = tq - r0 < qblock ? tq - r0 : qblock;
        float *sc = s + (int64_t)omp_get_thread_num() * per;
        const float *qh = q + (bi * tq + r0) * c + h * d;
        const float *kh = k + bi * tk * c + h * d;
        const float *vh = v + bi * tk * c + h * d;
        float *oh = out + (bi * tq + r0) * c + h * d;
        if (blocked) {
            float *m = sc + qblock * SDW_ATTN_KBLOCK;
            attention_rows_blocked(qh, kh, vh, oh, nr, tk, d, c, scale, sc, m, (double *)(m + 2 * qblock), simd);
            continue;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nr, (blasint)tk, (blasint)d, scale, qh,
                    (blasint)c, kh, (blasint)c, 0.0f, sc, (blasint)tk);
        softmax_rows(sc, nr, tk, r0, causal, avx2);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nr, (blasint)d, (blasint)tk, 1.0f, sc,
                    (blasint)tk, vh, (blasint)c, 0.0f, oh, (blasint)c);
    }
    sdw_cpu_free(be, s);
    return SDW_OK;
}

#if defined(SDW_HAVE_MVEC_ERFF) && defined(__x86_64__) && defined(__GNUC__)
/* erff on eight lanes from glibc's libmvec (the vector-function ABI's AVX2
 * variant), declared with AVX2 enabled so that the ymm calling convention
 * applies. GELU's erf is most of GEGLU's time; the scalar erff call per
 * element cost about 5% of a UNet step. */
#pragma GCC push_options
#pragma GCC target("avx2")
__m256 _ZGVdN8v_erff(__m256 x);
#pragma GCC pop_options

/* The first n & ~7 elements of gelu_span; returns how many it did. */
__attribute__((target("avx2"))) static int64_t gelu_span_avx2(const float *x, const float *a, float *y, int64_t n)
{
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), r2 = _mm256_set1_ps((float)M_SQRT1_2);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 g = _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, _ZGVdN8v_erff(_mm256_mul_ps(v, r2))));
        _mm256_storeu_ps(y + i, a ? _mm256_mul_ps(_mm256_loadu_ps(a + i), g) : g);
    }
    return i;
}
#endif

/* y[i] = a[i] * gelu(x[i]) (a NULL: gelu(x[i])), exact-erf GELU in the
 * scalar code's order of operations. */
static void gelu_span(const float *x, const float *a, float *y, int64_t n, int avx2)
{
    int64_t i = 0;
#if defined(SDW_HAVE_MVEC_ERFF) && defined(__x86_64__) && defined(__GNUC__)
    if (avx2)
        i = gelu_span_avx2(x, a, y, n);
#else
    (void)avx2;
#endif
    for (; i < n; i++) {
        float g = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
        y[i] = a ? a[i] * g : g;
    }
}

/* Elements per OpenMP chunk of an elementwise GELU. */
#define GELU_CHUNK 4096

static int cpu_act(sdw_backend *be, const float *x, float *y, int64_t n, sdw_act act, sdw_error *e)
{
    switch (act) {
    case SDW_ACT_SILU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-x[i]));
        return SDW_OK;
    case SDW_ACT_GELU: {
        int avx2 = have_avx2_fma();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i += GELU_CHUNK)
            gelu_span(x + i, NULL, y + i, n - i < GELU_CHUNK ? n - i : GELU_CHUNK, avx2);
        return SDW_OK;
    }
    case SDW_ACT_QUICK_GELU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        return SDW_OK;
    }
    return sdw_fail(e, SDW_EINVAL, "unknown activation %d", (int)act);
}

static int cpu_add(sdw_backend *be, const float *a, const float *b, float *y, int64_t n, sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
    return SDW_OK;
}

static int cpu_embed(sdw_backend *be, const float *table, const int32_t *ids, const float *pos, float *y,
                     int64_t rows, int64_t dim, int64_t tpos, sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *t = table + (int64_t)ids[r] * dim;
        float *yr = y + r * dim;
        if (pos) {
            const float *p = pos + (r % tpos) * dim;
            for (int64_t i = 0; i < dim; i++)
                yr[i] = t[i] + p[i];
        } else {
            memcpy(yr, t, (size_t)dim * sizeof(float));
        }
    }
    return SDW_OK;
}

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

#if defined(__x86_64__) && defined(__GNUC__)
/* One channel of GroupNorm+SiLU, 8 lanes at a time: silu((x - mean) * sc +
 * sh) with the exponential from exp8 (within 2 ulp of expf). Returns how many
 * elements it did; the scalar loop does the rest. */
__attribute__((target("avx2,fma"))) static int64_t norm_silu_avx2(const float *x, float *y, int64_t n, float mean,
                                                                   float sc, float sh)
{
    __m256 vm = _mm256_set1_ps(mean), vs = _mm256_set1_ps(sc), vh = _mm256_set1_ps(sh);
    __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs), vh);
        __m256 den = _mm256_add_ps(one, exp8(_mm256_xor_ps(v, sign)));
        _mm256_storeu_ps(y + i, _mm256_div_ps(v, den));
    }
    return i;
}
#endif

static int cpu_group_norm(sdw_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                          int64_t b, int64_t c, int64_t n, int64_t groups, float eps, int act, sdw_error *e)
{
    int64_t cg = c / groups;
#pragma omp parallel for schedule(dynamic)
    for (int64_t t = 0; t < b * groups; t++) {
        int64_t bi = t / groups, g = t % groups;
        const float *xg = x + (bi * c + g * cg) * n;
        float *yg = y + (bi * c + g * cg) * n;
        int64_t len = cg * n;
        float fmean, rstd;
        moments(xg, len, eps, &fmean, &rstd);
        for (int64_t j = 0; j < cg; j++) {
            int64_t ch = g * cg + j;
            float sc = rstd * gamma[ch], sh = beta[ch];
            const float *xr = xg + j * n;
            float *yr = yg + j * n;
            if (act) {
                int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
                if (have_avx2_fma())
                    i = norm_silu_avx2(xr, yr, n, fmean, sc, sh);
#endif
                for (; i < n; i++)
                    yr[i] = silu((xr[i] - fmean) * sc + sh);
            }
            else
                for (int64_t i = 0; i < n; i++)
                    yr[i] = (xr[i] - fmean) * sc + sh;
        }
    }
    return SDW_OK;
}

static int cpu_upsample_nearest(sdw_backend *be, const float *x, float *y, int64_t bc, int64_t h, int64_t w,
                                int64_t oh, int64_t ow, sdw_error *e)
{
    /* torch: exact halving for 2x, else floor(dst * (float)in/out) capped. */
    float sy = (float)h / (float)oh, sx = (float)w / (float)ow;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < bc; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * oh * ow;
        for (int64_t oy = 0; oy < oh; oy++) {
            int64_t iy = oh == 2 * h ? oy >> 1 : (int64_t)floorf((float)oy * sy);
            iy = iy < h ? iy : h - 1;
            for (int64_t ox = 0; ox < ow; ox++) {
                int64_t ix = ow == 2 * w ? ox >> 1 : (int64_t)floorf((float)ox * sx);
                yp[oy * ow + ox] = xp[iy * w + (ix < w ? ix : w - 1)];
            }
        }
    }
    return SDW_OK;
}

static int cpu_concat(sdw_backend *be, const float *a, const float *c, float *y, int64_t b, int64_t na,
                      int64_t nc, sdw_error *e)
{
    for (int64_t i = 0; i < b; i++) {
        memcpy(y + i * (na + nc), a + i * na, (size_t)na * sizeof *y);
        memcpy(y + i * (na + nc) + na, c + i * nc, (size_t)nc * sizeof *y);
    }
    return SDW_OK;
}

static int cpu_transpose(sdw_backend *be, const float *x, float *y, int64_t b, int64_t m, int64_t n, sdw_error *e)
{
    enum { T = 32 };
    int64_t tm = (m + T - 1) / T, tn = (n + T - 1) / T;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < b * tm * tn; t++) {
        int64_t bi = t / (tm * tn), i0 = t / tn % tm * T, j0 = t % tn * T;
        const float *xb = x + bi * m * n;
        float *yb = y + bi * m * n;
        int64_t i1 = i0 + T < m ? i0 + T : m, j1 = j0 + T < n ? j0 + T : n;
        for (int64_t j = j0; j < j1; j++)
            for (int64_t i = i0; i < i1; i++)
                yb[j * m + i] = xb[i * n + j];
    }
    return SDW_OK;
}

static int cpu_geglu(sdw_backend *be, const float *x, float *y, int64_t rows, int64_t n, sdw_error *e)
{
    int avx2 = have_avx2_fma();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        gelu_span(x + r * 2 * n + n, x + r * 2 * n, y + r * n, n, avx2);
    return SDW_OK;
}

static int cpu_add_rows(sdw_backend *be, const float *x, const float *v, float *y, int64_t rows, int64_t n,
                        sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++)
            y[r * n + i] = x[r * n + i] + v[r];
    return SDW_OK;
}

static int cpu_scale(sdw_backend *be, const float *x, float s, float *y, int64_t n, sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = s * x[i];
    return SDW_OK;
}

static int cpu_gaussian(sdw_backend *be, const float *m, const float *noise, float s, float *y, int64_t b,
                        int64_t n, sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t bi = 0; bi < b; bi++) {
        const float *mean = m + bi * 2 * n, *lv = mean + n;
        for (int64_t i = 0; i < n; i++) {
            float v = mean[i];
            if (noise) {
                float l = lv[i] < -30.0f ? -30.0f : lv[i] > 20.0f ? 20.0f : lv[i];
                v += expf(0.5f * l) * noise[bi * n + i];
            }
            y[bi * n + i] = s * v;
        }
    }
    return SDW_OK;
}

static void cpu_destroy(sdw_backend *be)
{
    pool_evict((cpu_backend *)be, SIZE_MAX);
    free(be);
}

static const sdw_backend_ops cpu_ops = {
    .name = "cpu",
    .alloc = sdw_cpu_alloc,
    .free = sdw_cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .weight_f16 = cpu_weight_f16,
    .linear = cpu_linear,
    .layer_norm = cpu_layer_norm,
    .attention = cpu_attention,
    .act = cpu_act,
    .add = cpu_add,
    .embed = cpu_embed,
    .conv2d = sdw_cpu_conv2d,
    .group_norm = cpu_group_norm,
    .upsample_nearest = cpu_upsample_nearest,
    .concat = cpu_concat,
    .transpose = cpu_transpose,
    .geglu = cpu_geglu,
    .add_rows = cpu_add_rows,
    .scale = cpu_scale,
    .gaussian = cpu_gaussian,
    .destroy = cpu_destroy,
};

int sdw_backend_cpu(sdw_backend **out, sdw_error *e)
{
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    cb->base.ops = &cpu_ops;
    /* SDW_CPU_WINOGRAD=0: every convolution as one product with its column
     * matrix (to compare the two, or to rule the transform out). */
    const char *wg = getenv("SDW_CPU_WINOGRAD");
    cb->winograd = !wg || strcmp(wg, "0") != 0;
    repick_openblas_core();
    openblas_set_num_threads(1);
    *out = &cb->base;
    return SDW_OK;
}
