/* torch's CPU generator, reproduced bit for bit (see rng.h).
 *
 * torch.Generator("cpu") is a plain MT19937. torch.randn on float32 takes
 * one of two routes depending on the element count:
 *
 *  - numel >= 16 (contiguous float32): every element first receives a
 *    24-bit uniform float from one 32-bit draw; then each run of 16 is turned
 *    into normals by Box-Muller, the first 8 uniforms feeding log and the
 *    last 8 feeding sin/cos. A count that is not a multiple of 16 re-draws 16
 *    fresh uniforms for the last 16 slots and transforms them again, so the
 *    overlap is overwritten and the stream advances by numel + 16 draws.
 *    torch does this with AVX2 (normal_fill_16_AVX2), whose log and sincos
 *    are the Cephes polynomials of avx_mathfun.h rather than libm, so the
 *    same float operations are spelled out here in scalar form. The kernel is
 *    never dispatched to AVX-512 (torch registers no AVX-512 normal kernel
 *    and falls back to AVX2), so this is what every AVX2-or-better x86 CPU
 *    produces.
 *  - numel < 16: each element comes from normal_distribution<double>, which
 *    makes a Box-Muller pair from two 53-bit uniforms, returns the cosine
 *    half and caches the sine half in the generator for the next scalar
 *    element, even across later calls and across large draws, which neither
 *    use nor clear the cache. Only seeding clears it.
 */
#include "pipeline/rng.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* The float path relies on each operation rounding to float once; x87-style
 * excess precision (methods 1 and 2) would change the bits. Method 16 only
 * concerns _Float16 and leaves float alone. */
#if FLT_EVAL_METHOD == 1 || FLT_EVAL_METHOD == 2
#error "rng.c needs float arithmetic evaluated in float (FLT_EVAL_METHOD 0)"
#endif

#define MT_N 624
#define MT_M 397

void sdw_rng_seed(sdw_rng *r, uint64_t seed)
{
    /* manual_seed keeps the full 64-bit seed for reporting, but the state is
     * initialised from its low 32 bits only: seeds s and s + 2^32 give the
     * same stream. */
    r->mt[0] = (uint32_t)seed;
    for (uint32_t j = 1; j < MT_N; j++)
        r->mt[j] = 1812433253u * (r->mt[j - 1] ^ (r->mt[j - 1] >> 30)) + j;
    /* torch regenerates the whole block before the first output. */
    r->idx = MT_N;
    r->has_next_normal = 0;
    r->next_normal = 0.0;
}

static void mt_twist(sdw_rng *r)
{
    for (int k = 0; k < MT_N; k++) {
        uint32_t y = (r->mt[k] & 0x80000000u) | (r->mt[(k + 1) % MT_N] & 0x7fffffffu);
        r->mt[k] = r->mt[(k + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    r->idx = 0;
}

uint32_t sdw_rng_u32(sdw_rng *r)
{
    if (r->idx >= MT_N)
        mt_twist(r);
    uint32_t y = r->mt[r->idx++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* torch's random64(): the first 32-bit draw is the high half. */
static uint64_t rng_u64(sdw_rng *r)
{
    uint64_t hi = sdw_rng_u32(r);
    return (hi << 32) | sdw_rng_u32(r);
}

/* uniform_real_distribution<float>(0, 1): the low 24 bits of one draw,
 * scaled exactly into [0, 1). */
static float uniform_f32(sdw_rng *r)
{
    return (float)(sdw_rng_u32(r) & 0xffffffu) * 0x1p-24f;
}

/* uniform_real_distribution<double>(0, 1): the low 53 bits of random64(). */
static double uniform_f64(sdw_rng *r)
{
    return (double)(rng_u64(r) & ((UINT64_C(1) << 53) - 1)) * 0x1p-53;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The constants are written as torch's header writes them, double literals
 * narrowed to float, since a float literal of the same digits can round
 * differently. */

/* log256_ps for one lane. Its argument is 1 - u with u a 24-bit uniform, so
 * it lies in [2^-24, 1]: never zero, negative or denormal, and the header's
 * clamping and NaN masking never act.
 *
 * torch's wheels are built by GCC with contraction on and FMA available in
 * the AVX2 kernel, so every multiply whose only use is an add became a fused
 * multiply-add; where two multiplies feed one add, the one earlier in the
 * source was fused. Each fmaf below is such a place, established by
 * comparing against torch's output; where the product is exact (the e * q2
 * term) fusing cannot change the result. */
static float cephes_logf(float x)
{
    uint32_t bits = f32_bits(x);
    float e = (float)((int32_t)(bits >> 23) - 0x7f) + 1.0f;
    /* Mantissa with the exponent of 0.5: m in [0.5, 1). */
    float m = f32_from_bits((bits & ~0x7f800000u) | 0x3f000000u);

    /* Below sqrt(1/2) the header uses 2m - 1 and one less in the exponent,
     * written as m - 1 + m so that no multiply is involved. */
    int low = m < (float)0.707106781186547524;
    float tmp = low ? m : 0.0f;
    m = m - 1.0f;
    if (low)
        e = e - 1.0f;
    m = m + tmp;

    float z = m * m;
    float y = (float)7.0376836292E-2;
    y = fmaf(y, m, (float)-1.1514610310E-1);
    y = fmaf(y, m, (float)1.1676998740E-1);
    y = fmaf(y, m, (float)-1.2420140846E-1);
    y = fmaf(y, m, (float)1.4249322787E-1);
    y = fmaf(y, m, (float)-1.6668057665E-1);
    y = fmaf(y, m, (float)2.0000714765E-1);
    y = fmaf(y, m, (float)-2.4999993993E-1);
    y = fmaf(y, m, (float)3.3333331174E-1);
    y = y * m;
    /* y * z + e * q1: y * z comes first and is the fused one; e * q1 is
     * rounded on its own. */
    float eq1 = e * (float)-2.12194440e-4;
    y = fmaf(y, z, eq1);
    y = fmaf(-z, 0.5f, y);
    m = m + y;
    return fmaf(e, (float)0.693359375, m);
}

/* sincos256_ps for one lane, for x >= 0 (x = 2*pi*u with u in [0, 1)). */
static void cephes_sincosf(float x, float *s, float *c)
{
    /* Octant j, rounded up to even, from x * 4/pi; truncation as cvttps. */
    int32_t j = (int32_t)(x * (float)1.27323954473516);
    j = (j + 1) & ~1;
    float y = (float)j;
    int neg_sin = (j & 4) != 0;
    int neg_cos = (~(j - 2) & 4) != 0;
    int sin_uses_sin_poly = (j & 2) == 0;

    /* x - y * pi/4 in three pieces (Cephes' extended-precision reduction). */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, (float)-2.4187564849853515625e-4, x);
    x = fmaf(y, (float)-3.77489497744594108e-8, x);

    float z = x * x;

    float yc = (float)2.443315711809948E-005;
    yc = fmaf(yc, z, (float)-1.388731625493765E-003);
    yc = fmaf(yc, z, (float)4.166664568298827E-002);
    yc = yc * z;
    /* yc * z - z * 0.5: again the earlier multiply is the fused one. */
    float half_z = z * 0.5f;
    yc = fmaf(yc, z, -half_z);
    yc = yc + 1.0f;

    float ys = (float)-1.9515295891E-4;
    ys = fmaf(ys, z, (float)8.3321608736E-3);
    ys = fmaf(ys, z, (float)-1.6666654611E-1);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    float sv = sin_uses_sin_poly ? ys : yc;
    float cv = sin_uses_sin_poly ? yc : ys;
    *s = neg_sin ? -sv : sv;
    *c = neg_cos ? -cv : cv;
}

/* normal_fill_16_AVX2 with mean 0 and std 1: lanes j and j + 8 are one
 * Box-Muller pair. */
static void normal_fill_16(float *d)
{
    /* 2.0f * c10::pi<double> is evaluated in double, then narrowed. */
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        /* 1 - u maps [0, 1) to (0, 1] so that the log is finite. */
        float radius = sqrtf(-2.0f * cephes_logf(1.0f - d[j]));
        float s, c;
        cephes_sincosf(two_pi * d[j + 8], &s, &c);
        float n1 = radius * c;
        float n2 = radius * s;
        /* torch finishes with fma(n, std, mean); with std 1 and mean 0 that
         * is n + 0, which turns a -0 (from u = 0) into +0. */
        d[j] = n1 + 0.0f;
        d[j + 8] = n2 + 0.0f;
    }
}

/* normal_distribution<double>(0, 1) with torch's one-value cache. */
static double normal_f64(sdw_rng *r)
{
    if (r->has_next_normal) {
        r->has_next_normal = 0;
        return r->next_normal + 0.0;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    /* log1p(-u2) rather than log(1 - u2), and u1 drives the angle. */
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    r->next_normal = radius * sin(theta);
    r->has_next_normal = 1;
    return radius * cos(theta) + 0.0;
}

void sdw_rng_randn(sdw_rng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)normal_f64(r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(r);
    for (size_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(r);
        normal_fill_16(tail);
    }
}
