/* Every kernel in kernels/, run on the host by the simulator in
 * tests/cusim (the real kernel source, built as C++ with -DSDW_CUSIM, one
 * fiber per CUDA thread), against its CPU twin, on fresh random inputs, in
 * each storage type (float32, half, bfloat16), with host memory standing in
 * for device memory. Inputs are drawn as floats and rounded to the storage
 * type; the CPU twin gets the rounded values as floats, so what remains is
 * the kernel's own error: its float32 arithmetic in another order, and the
 * one rounding of its output (see kTolF32 and kUnit*). The error measure is
 * tests/fixture.h's: max |got - want| / max |want|, NaN counting as
 * infinitely wrong. Data movement is exact, and so is arithmetic whose
 * float32 result matches the CPU's bit for bit (its output is then that
 * result rounded to the type). Outputs are poisoned with NaN before every
 * call and followed by a poisoned guard, so a kernel that skips elements or
 * writes past its output (say, floats into a 16-bit tensor) cannot pass.
 * Shapes are small (the simulator is slow) but cover partial blocks and
 * tiles, odd sizes and every instantiation. tests/test_backend_ops.c checks
 * the same kernels through the CUDA backend's ops, on a GPU and over the
 * simulator. */
// First, as in tests/cusim/kernel_*.cc: its qualifiers go before the
// toolkit's headers, and it defines the runtime calls the kernels make
// (cudaGetLastError).
#include "cusim.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <functional>
#include <vector>

#include "kernels.h"
extern "C" {
#include "backend/backend.h"
#include "base/half.h"
#include "cpu/twins.h"
#include "tap.h"
#include "tensor/tensor.h"
}

namespace {

using vec = std::vector<float>;

// Float32 arithmetic in another order than the CPU's.
constexpr double kTolF32 = 1e-5;
// The unit roundoff of the 16-bit types: rounding to nearest moves a value
// by at most this fraction of its magnitude, so a 16-bit output is within
// kUnit * max |want| of the float32 result it rounds.
constexpr double kUnitF16 = 0x1p-11, kUnitBF16 = 0x1p-8;
// attention_tc also rounds the probabilities to the type before the second
// product: the output is then a mean of v with weights off by up to two
// units each, which averages out over the keys. An allowance of one more
// unit, not a bound (observed: up to about 1.05 units in all).
constexpr double kTolTcF16 = kTolF32 + 2 * kUnitF16, kTolTcBF16 = kTolF32 + 2 * kUnitBF16;

const int kTypes[] = {SDW_K_F32, SDW_K_F16, SDW_K_BF16};
const char *const kTypeName[] = {"f32", "f16", "bf16"};

// Elementwise math in dt: within float32's tolerance and the output's rounding.
double tol_for(int dt)
{
    return kTolF32 + (dt == SDW_K_F16 ? kUnitF16 : dt == SDW_K_BF16 ? kUnitBF16 : 0);
}

sdw_backend *cpu;
sdw_error err;
uint64_t lcg = 0x9e3779b97f4a7c15ull;

vec rand_vec(size_t n, float scale, float offset = 0.0f)
{
    vec v(n);
    for (auto &x : v) {
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        x = (float)((double)(lcg >> 11) / 9007199254740992.0 * 2.0 - 1.0) * scale + offset;
    }
    return v;
}

uint32_t rand_u32()
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(lcg >> 32);
}

float round_to(float v, int dt)
{
    switch (dt) {
    case SDW_K_F16: return sdw_f16_to_f32(sdw_f32_to_f16(v));
    case SDW_K_BF16: return sdw_bf16_to_f32(sdw_f32_to_bf16(v));
    default: return v;
    }
}

vec rounded(vec v, int dt)
{
    for (auto &x : v)
        x = round_to(x, dt);
    return v;
}

// A tensor of n values in storage type dt, then kGuard bytes that no kernel
// may write.
constexpr size_t kGuard = 64;

struct Dev {
    int dt;
    size_t n;
    std::vector<uint32_t> words;

    size_t bytes() const { return n * (dt == SDW_K_F32 ? 4 : 2); }
    void *p() { return words.data(); }
    const void *p() const { return words.data(); }
};

// All bits set: NaN in float, half and bfloat16 alike.
Dev poisoned(size_t n, int dt)
{
    Dev d{dt, n, {}};
    d.words.assign((d.bytes() + kGuard + 3) / 4, 0xffffffffu);
    return d;
}

// x rounded to dt in place, as the CPU twin's inputs, and stored in dt, as
// the kernel's.
Dev stored(vec &x, int dt)
{
    Dev d = poisoned(x.size(), dt);
    for (size_t i = 0; i < x.size(); i++) {
        x[i] = round_to(x[i], dt);
        if (dt == SDW_K_F32)
            memcpy((char *)d.p() + 4 * i, &x[i], 4);
        else {
            uint16_t h = dt == SDW_K_F16 ? sdw_f32_to_f16(x[i]) : sdw_f32_to_bf16(x[i]);
            memcpy((char *)d.p() + 2 * i, &h, 2);
        }
    }
    return d;
}

vec widen(const Dev &d)
{
    vec w(d.n);
    for (size_t i = 0; i < d.n; i++) {
        uint16_t h;
        if (d.dt == SDW_K_F32)
            memcpy(&w[i], (const char *)d.p() + 4 * i, 4);
        else {
            memcpy(&h, (const char *)d.p() + 2 * i, 2);
            w[i] = d.dt == SDW_K_F16 ? sdw_f16_to_f32(h) : sdw_bf16_to_f32(h);
        }
    }
    return w;
}

bool guard_intact(const Dev &d)
{
    const unsigned char *g = (const unsigned char *)d.p() + d.bytes();
    for (size_t i = 0; i < kGuard; i++)
        if (g[i] != 0xff)
            return false;
    return true;
}

double rel_err(const vec &got, const vec &want)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (std::isnan(got[i]))
            return INFINITY;
        double d = fabs((double)got[i] - want[i]);
        num = d > num ? d : num;
        den = fabs(want[i]) > den ? fabs(want[i]) : den;
    }
    return num / (den > 0 ? den : 1);
}

// Tolerance 0 means bit for bit.
void report(const char *what, cudaError_t rc, int cpu_rc, const Dev &out, const vec &want, double tol)
{
    if (rc != cudaSuccess || cpu_rc) {
        tap_ok(0, "%s: kernel %d, CPU %d", what, (int)rc, cpu_rc);
        return;
    }
    if (!guard_intact(out)) {
        tap_ok(0, "%s: wrote past the end of its output", what);
        return;
    }
    vec got = widen(out);
    if (tol == 0) {
        size_t bad = 0;
        for (size_t i = 0; i < got.size(); i++)
            bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
        tap_ok(bad == 0, "%s: exact (%zu of %zu differ)", what, bad, got.size());
        return;
    }
    double r = rel_err(got, want);
    tap_ok(r <= tol, "%s: rel err %.2e (tol %.2e)", what, r, tol);
}

void check_layer_norm(int dt, int64_t rows, int64_t n, bool in_place)
{
    vec x = rand_vec(rows * n, 3, 4), g = rand_vec(n, 1, 1), b = rand_vec(n, 1), want(rows * n);
    Dev dx = stored(x, dt), dg = stored(g, dt), db = stored(b, dt);
    int crc = cpu->ops->layer_norm(cpu, x.data(), g.data(), b.data(), want.data(), rows, n, 1e-5f, &err);
    Dev got = in_place ? dx : poisoned(rows * n, dt);
    cudaError_t rc = sdw_k_layer_norm((in_place ? got : dx).p(), dg.p(), db.p(), got.p(), rows, n, 1e-5f, dt, 0);
    char what[96];
    snprintf(what, sizeof what, "layer_norm %s %lldx%lld%s", kTypeName[dt], (long long)rows, (long long)n,
             in_place ? " in place" : "");
    report(what, rc, crc, got, want, tol_for(dt));
}

void check_act(int dt, int act, const char *name, int64_t n)
{
    vec x = rand_vec(n, 6), want(n);
    Dev dx = stored(x, dt), got = poisoned(n, dt);
    int crc = cpu->ops->act(cpu, x.data(), want.data(), n, (sdw_act)act, &err);
    cudaError_t rc = sdw_k_act(dx.p(), got.p(), n, act, dt, 0);
    char what[64];
    snprintf(what, sizeof what, "act %s %s n=%lld", kTypeName[dt], name, (long long)n);
    report(what, rc, crc, got, want, tol_for(dt));
}

void check_elementwise(int dt)
{
    const char *tn = kTypeName[dt];
    char what[128];
    {
        int64_t n = 1000;
        vec a = rand_vec(n, 2), b = rand_vec(n, 2), want(n);
        Dev da = stored(a, dt), db = stored(b, dt), got = poisoned(n, dt);
        int crc = cpu->ops->add(cpu, a.data(), b.data(), want.data(), n, &err);
        snprintf(what, sizeof what, "add %s n=1000", tn);
        report(what, sdw_k_add(da.p(), db.p(), got.p(), n, dt, 0), crc, got, rounded(want, dt), 0);
        got = poisoned(n, dt);
        crc = cpu->ops->scale(cpu, a.data(), 0.18215f, want.data(), n, &err);
        snprintf(what, sizeof what, "scale %s n=1000", tn);
        report(what, sdw_k_scale(da.p(), 0.18215f, got.p(), n, dt, 0), crc, got, rounded(want, dt), 0);
    }
    // A vector per row (nv = rows), and a bias per channel over a batch of
    // 37 / 5 images (nv < rows, v[r % nv]); the CPU op takes the former, so
    // it gets v repeated.
    for (int64_t nv : {37, 5}) {
        int64_t rows = 37, n = 29;
        vec x = rand_vec(rows * n, 2), v = rand_vec(nv, 2), vr(rows), want(rows * n);
        Dev dx = stored(x, dt), dv = stored(v, dt), got = poisoned(rows * n, dt);
        for (int64_t r = 0; r < rows; r++)
            vr[r] = v[r % nv];
        int crc = cpu->ops->add_rows(cpu, x.data(), vr.data(), want.data(), rows, n, &err);
        snprintf(what, sizeof what, "add_rows %s 37x29, nv=%lld", tn, (long long)nv);
        report(what, sdw_k_add_rows(dx.p(), dv.p(), got.p(), rows, n, nv, dt, 0), crc, got, rounded(want, dt), 0);
    }
    {
        // fill_rows has no CPU op of its own (the CPU linear starts from
        // the bias directly): its twin is src/cpu/twins.c's.
        int64_t rows = 37, n = 29;
        vec bias = rand_vec(n, 1), want(rows * n);
        Dev dbias = stored(bias, dt), got = poisoned(rows * n, dt);
        sdw_cpu_fill_rows(bias.data(), want.data(), rows, n);
        snprintf(what, sizeof what, "fill_rows %s 37x29", tn);
        report(what, sdw_k_fill_rows(dbias.p(), got.p(), rows, n, dt, 0), 0, got, want, 0);
    }
    for (int with_noise = 0; with_noise < 2; with_noise++) {
        int64_t b = 3, n = 111;
        vec m = rand_vec(b * 2 * n, 25), noise = rand_vec(b * n, 1), want(b * n);
        Dev dm = stored(m, dt), dnoise = stored(noise, dt), got = poisoned(b * n, dt);
        int crc = cpu->ops->gaussian(cpu, m.data(), with_noise ? noise.data() : nullptr, 0.5f, want.data(), b, n,
                                     &err);
        snprintf(what, sizeof what, "gaussian %s 3x111 %s", tn, with_noise ? "with noise" : "mean only");
        report(what, sdw_k_gaussian(dm.p(), with_noise ? dnoise.p() : nullptr, 0.5f, got.p(), b, n, dt, 0), crc, got,
               want, tol_for(dt));
    }
    {
        int64_t rows = 13, n = 77;
        vec x = rand_vec(rows * 2 * n, 4), want(rows * n);
        Dev dx = stored(x, dt), got = poisoned(rows * n, dt);
        int crc = cpu->ops->geglu(cpu, x.data(), want.data(), rows, n, &err);
        snprintf(what, sizeof what, "geglu %s 13x77", tn);
        report(what, sdw_k_geglu(dx.p(), got.p(), rows, n, dt, 0), crc, got, want, tol_for(dt));
    }
    {
        int64_t b = 3, na = 50, nc = 71;
        vec a = rand_vec(b * na, 1), c = rand_vec(b * nc, 1), want(b * (na + nc));
        Dev da = stored(a, dt), dc = stored(c, dt), got = poisoned(b * (na + nc), dt);
        int crc = cpu->ops->concat(cpu, a.data(), c.data(), want.data(), b, na, nc, &err);
        snprintf(what, sizeof what, "concat %s 3x(50+71)", tn);
        report(what, sdw_k_concat(da.p(), dc.p(), got.p(), b, na, nc, dt, 0), crc, got, want, 0);
    }
    // Whole tiles, partial tiles in both directions, and a single row.
    const int64_t tr[][3] = {{1, 64, 32}, {2, 33, 70}, {3, 5, 100}, {1, 1, 45}};
    for (auto &s : tr) {
        int64_t n = s[0] * s[1] * s[2];
        vec x = rand_vec(n, 1), want(n);
        Dev dx = stored(x, dt), got = poisoned(n, dt);
        int crc = cpu->ops->transpose(cpu, x.data(), want.data(), s[0], s[1], s[2], &err);
        snprintf(what, sizeof what, "transpose %s %lldx%lldx%lld", tn, (long long)s[0], (long long)s[1],
                 (long long)s[2]);
        report(what, sdw_k_transpose(dx.p(), got.p(), s[0], s[1], s[2], dt, 0), crc, got, want, 0);
    }
    // Without positions a copy; with them one float32 addition, as the CPU's.
    for (int with_pos = 0; with_pos < 2; with_pos++) {
        int64_t vocab = 100, dim = 48, tpos = 7, rows = 2 * tpos;
        vec table = rand_vec(vocab * dim, 1), pos = rand_vec(tpos * dim, 1), want(rows * dim);
        Dev dtable = stored(table, dt), dpos = stored(pos, dt), got = poisoned(rows * dim, dt);
        std::vector<int32_t> ids(rows);
        for (auto &id : ids)
            id = (int32_t)(rand_u32() % vocab);
        int crc = cpu->ops->embed(cpu, table.data(), ids.data(), with_pos ? pos.data() : nullptr, want.data(), rows,
                                  dim, tpos, &err);
        snprintf(what, sizeof what, "embed %s 14x48%s", tn, with_pos ? " + positions" : "");
        report(what, sdw_k_embed(dtable.p(), ids.data(), with_pos ? dpos.p() : nullptr, got.p(), rows, dim, tpos, dt, 0),
               crc, got, rounded(want, dt), 0);
    }
    // 2x (the exact halving), and sizes where floor(dst * in/out) decides.
    const int64_t up[][5] = {{3, 8, 5, 16, 10}, {2, 5, 7, 8, 11}, {1, 9, 4, 4, 13}};
    for (auto &s : up) {
        int64_t n = s[0] * s[3] * s[4];
        vec x = rand_vec(s[0] * s[1] * s[2], 1), want(n);
        Dev dx = stored(x, dt), got = poisoned(n, dt);
        int crc = cpu->ops->upsample_nearest(cpu, x.data(), want.data(), s[0], s[1], s[2], s[3], s[4], &err);
        snprintf(what, sizeof what, "upsample_nearest %s %lldx%lldx%lld -> %lldx%lld", tn, (long long)s[0],
                 (long long)s[1], (long long)s[2], (long long)s[3], (long long)s[4]);
        report(what, sdw_k_upsample_nearest(dx.p(), got.p(), s[0], s[1], s[2], s[3], s[4], dt, 0), crc, got, want, 0);
    }
    // x [bc, h, w] -> [bc, hp, wp] with pad_t rows above, pad_l columns left;
    // no CPU op (the CPU convolution reads past its input as zeros), so the
    // reference is its twin in src/cpu/twins.c.
    const int64_t pp[][7] = {{3, 7, 9, 9, 11, 1, 1}, {2, 8, 8, 9, 9, 0, 0}, {1, 5, 6, 8, 7, 2, 0}};
    for (auto &s : pp) {
        int64_t bc = s[0], h = s[1], w = s[2], hp = s[3], wp = s[4];
        int pt = (int)s[5], pl = (int)s[6];
        vec x = rand_vec(bc * h * w, 3), want(bc * hp * wp);
        Dev dx = stored(x, dt), got = poisoned(bc * hp * wp, dt);
        sdw_cpu_pad(x.data(), want.data(), bc, h, w, hp, wp, pt, pl);
        snprintf(what, sizeof what, "pad %s %lldx%lldx%lld -> %lldx%lld at (%d, %d)", tn, (long long)bc, (long long)h,
                 (long long)w, (long long)hp, (long long)wp, pt, pl);
        report(what, sdw_k_pad(dx.p(), got.p(), bc, h, w, hp, wp, pt, pl, dt, 0), 0, got, want, 0);
    }
    // im2col: the columns a convolution's product per image takes, from the
    // contract (b, c, h, w, kh, kw, oh, ow, stride, pad_t, pad_l, p0, np):
    // 3x3 same, whole and a band of positions from the middle of a row to
    // the middle of another; strided with uneven padding; 1x3; 1x1.
    const int64_t ic[][13] = {{2, 3, 5, 7, 3, 3, 5, 7, 1, 1, 1, 0, 35},
                              {2, 3, 5, 7, 3, 3, 5, 7, 1, 1, 1, 10, 13},
                              {1, 2, 9, 8, 3, 3, 4, 4, 2, 0, 1, 0, 16},
                              {1, 4, 3, 6, 1, 3, 3, 4, 1, 0, 0, 0, 12},
                              {2, 5, 4, 3, 1, 1, 4, 3, 1, 0, 0, 0, 12}};
    for (auto &s : ic) {
        int64_t b = s[0], c = s[1], h = s[2], w = s[3], kh = s[4], kw = s[5], oh = s[6], ow = s[7];
        int st = (int)s[8], pt = (int)s[9], pl = (int)s[10];
        int64_t p0 = s[11], np = s[12], rows = c * kh * kw;
        vec x = rand_vec(b * c * h * w, 3), want(b * rows * np);
        Dev dx = stored(x, dt), got = poisoned(b * rows * np, dt);
        for (int64_t bi = 0; bi < b; bi++)
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t ky = 0; ky < kh; ky++)
                    for (int64_t kx = 0; kx < kw; kx++)
                        for (int64_t p = p0; p < p0 + np; p++) {
                            int64_t iy = p / ow * st - pt + ky, ix = p % ow * st - pl + kx;
                            want[(bi * rows + (ch * kh + ky) * kw + kx) * np + p - p0] =
                                iy >= 0 && iy < h && ix >= 0 && ix < w ? x[((bi * c + ch) * h + iy) * w + ix] : 0.0f;
                        }
        snprintf(what, sizeof what,
                 "im2col %s %lldx%lldx%lldx%lld k%lldx%lld s%d -> %lldx%lld at (%d, %d), positions %lld..%lld", tn,
                 (long long)b, (long long)c, (long long)h, (long long)w, (long long)kh, (long long)kw, st,
                 (long long)oh, (long long)ow, pt, pl, (long long)p0, (long long)(p0 + np - 1));
        report(what, sdw_k_im2col(dx.p(), got.p(), b, c, h, w, kh, kw, oh, ow, st, pt, pl, p0, np, dt, 0), 0, got,
               want, 0);
    }
}

void check_group_norm(int dt, int64_t b, int64_t c, int64_t n, int64_t groups, int silu)
{
    int64_t total = b * c * n;
    vec x = rand_vec(total, 3, 2), g = rand_vec(c, 1, 1), bt = rand_vec(c, 1), want(total);
    Dev dx = stored(x, dt), dg = stored(g, dt), dbt = stored(bt, dt), got = poisoned(total, dt);
    Dev stats = poisoned(b * groups * 2, SDW_K_F32), part = poisoned(2 * sdw_k_group_scratch(b, c, n, groups), SDW_K_F32);
    int crc = cpu->ops->group_norm(cpu, x.data(), g.data(), bt.data(), want.data(), b, c, n, groups, 1e-6f, silu, &err);
    cudaError_t rc = sdw_k_group_stats(dx.p(), (float *)stats.p(), (double *)part.p(), b, c, n, groups, 1e-6f, dt, 0);
    if (rc == cudaSuccess && !guard_intact(part))
        rc = cudaErrorIllegalAddress;
    if (rc == cudaSuccess && !guard_intact(stats))
        rc = cudaErrorIllegalAddress; // stats are float32 whatever dt
    if (rc == cudaSuccess)
        rc = sdw_k_group_apply(dx.p(), (const float *)stats.p(), dg.p(), dbt.p(), got.p(), b, c, n, groups, silu, dt,
                               0);
    char what[96];
    snprintf(what, sizeof what, "group_norm %s b=%lld c=%lld n=%lld groups=%lld%s", kTypeName[dt], (long long)b,
             (long long)c, (long long)n, (long long)groups, silu ? " + silu" : "");
    report(what, rc, crc, got, want, tol_for(dt));
}

// Against its twin in src/cpu/twins.c, which computes in double. The
// scores are float32 whatever dt; a float32 p is also written over s.
void check_softmax_rows(int dt, int64_t heads, int64_t rpb, int64_t n, int64_t r0, int causal, bool in_place)
{
    int64_t rows = heads * rpb;
    vec s = rand_vec(rows * n, 8), want(rows * n);
    sdw_cpu_softmax_rows(s.data(), want.data(), rows, n, rpb, r0, causal);
    Dev ds = stored(s, SDW_K_F32), got = in_place ? ds : poisoned(rows * n, dt);
    cudaError_t rc = sdw_k_softmax_rows((const float *)(in_place ? got : ds).p(), got.p(), rows, n, rpb, r0, causal,
                                        dt, 0);
    char what[128];
    snprintf(what, sizeof what, "softmax_rows %s %lld heads x %lld rows x %lld, r0=%lld%s%s", kTypeName[dt],
             (long long)heads, (long long)rpb, (long long)n, (long long)r0, causal ? " causal" : "",
             in_place ? " in place" : "");
    report(what, rc, 0, got, want, tol_for(dt));
}

// q or k whose scores lie past fp16's range after the 1/sqrt(d) scale, as
// SD 2.1's (upcast_attention) can: the first sqrt(d)/2 dimensions of every
// head are 512 and the others multiples of 1/2 in [-2, 2], so a score is
// 2^17 plus a spread of a few units, exact in float32 in any order of
// summation (d a power of 4) and exact in either 16-bit type.
vec big_scores(size_t n, int64_t d)
{
    vec v = rand_vec(n, 4);
    int64_t big = (int64_t)sqrt((double)d) / 2;
    for (size_t i = 0; i < n; i++)
        v[i] = (int64_t)i % d < big ? 512.0f : nearbyintf(v[i]) / 2;
    return v;
}

void check_attention(int dt, int64_t b, int64_t tq, int64_t tk, int64_t heads, int64_t d, int causal, int tc,
                     bool big = false)
{
    int64_t c = heads * d;
    vec q = big ? big_scores(b * tq * c, d) : rand_vec(b * tq * c, 2);
    vec k = big ? big_scores(b * tk * c, d) : rand_vec(b * tk * c, 2);
    vec v = rand_vec(b * tk * c, 1), want(b * tq * c);
    Dev dq = stored(q, dt), dk = stored(k, dt), dv = stored(v, dt), got = poisoned(b * tq * c, dt);
    float scale = 1.0f / sqrtf((float)d);
    int crc = cpu->ops->attention(cpu, q.data(), k.data(), v.data(), want.data(), b, tq, tk, heads, d, scale, causal,
                                  &err);
    cudaError_t rc = (tc ? sdw_k_attention_tc : sdw_k_attention)(dq.p(), dk.p(), dv.p(), got.p(), b, tq, tk, heads,
                                                                 d, scale, causal, dt, 0);
    char what[128];
    snprintf(what, sizeof what, "attention%s %s b=%lld tq=%lld tk=%lld heads=%lld d=%lld%s%s", tc ? "_tc" : "",
             kTypeName[dt], (long long)b, (long long)tq, (long long)tk, (long long)heads, (long long)d,
             causal ? " causal" : "", big ? ", scores about 2^17" : "");
    report(what, rc, crc, got, want, !tc ? tol_for(dt) : dt == SDW_K_F16 ? kTolTcF16 : kTolTcBF16);
}

// Refusals that happen before any launch: nothing is written and no launch
// error is left behind.
void check_refusals()
{
    vec in(4096, 0.0f);
    float stats[8] = {0, 1, 0, 1, 0, 1, 0, 1};
    double part[16] = {0};
    int32_t ids[4] = {0};
    const float *x = in.data();
    struct Call {
        const char *name;
        int good_dt; // with which the same call runs
        std::function<cudaError_t(void *y, int dt)> run;
    };
    const Call calls[] = {
        {"layer_norm", SDW_K_F32, [&](void *y, int dt) { return sdw_k_layer_norm(x, x, x, y, 2, 4, 1e-5f, dt, 0); }},
        {"act", SDW_K_F32, [&](void *y, int dt) { return sdw_k_act(x, y, 8, 0, dt, 0); }},
        {"add", SDW_K_F32, [&](void *y, int dt) { return sdw_k_add(x, x, y, 8, dt, 0); }},
        {"scale", SDW_K_F32, [&](void *y, int dt) { return sdw_k_scale(x, 2.0f, y, 8, dt, 0); }},
        {"add_rows", SDW_K_F32, [&](void *y, int dt) { return sdw_k_add_rows(x, x, y, 2, 4, 1, dt, 0); }},
        {"fill_rows", SDW_K_F32, [&](void *y, int dt) { return sdw_k_fill_rows(x, y, 2, 4, dt, 0); }},
        {"gaussian", SDW_K_F32, [&](void *y, int dt) { return sdw_k_gaussian(x, x, 1.0f, y, 2, 4, dt, 0); }},
        {"geglu", SDW_K_F32, [&](void *y, int dt) { return sdw_k_geglu(x, y, 2, 4, dt, 0); }},
        {"concat", SDW_K_F32, [&](void *y, int dt) { return sdw_k_concat(x, x, y, 2, 2, 2, dt, 0); }},
        {"transpose", SDW_K_F32, [&](void *y, int dt) { return sdw_k_transpose(x, y, 1, 2, 4, dt, 0); }},
        {"embed", SDW_K_F32, [&](void *y, int dt) { return sdw_k_embed(x, ids, x, y, 2, 4, 2, dt, 0); }},
        {"upsample_nearest", SDW_K_F32,
         [&](void *y, int dt) { return sdw_k_upsample_nearest(x, y, 1, 2, 2, 4, 4, dt, 0); }},
        {"pad", SDW_K_F32, [&](void *y, int dt) { return sdw_k_pad(x, y, 1, 2, 2, 3, 3, 1, 1, dt, 0); }},
        {"im2col", SDW_K_F32,
         [&](void *y, int dt) { return sdw_k_im2col(x, y, 1, 1, 2, 2, 1, 1, 2, 2, 1, 0, 0, 0, 4, dt, 0); }},
        {"group_stats", SDW_K_F32,
         [&](void *y, int dt) { return sdw_k_group_stats(x, (float *)y, part, 1, 4, 2, 2, 1e-5f, dt, 0); }},
        {"group_apply", SDW_K_F32,
         [&](void *y, int dt) { return sdw_k_group_apply(x, stats, x, x, y, 1, 4, 2, 2, 1, dt, 0); }},
        {"attention", SDW_K_F32,
         [&](void *y, int dt) { return sdw_k_attention(x, x, x, y, 1, 2, 2, 1, 8, 1.0f, 1, dt, 0); }},
        {"attention_tc", SDW_K_F16,
         [&](void *y, int dt) { return sdw_k_attention_tc(x, x, x, y, 1, 2, 2, 1, 16, 1.0f, 1, dt, 0); }},
        {"softmax_rows", SDW_K_F32,
         [&](void *y, int dt) { return sdw_k_softmax_rows(x, y, 2, 4, 2, 0, 1, dt, 0); }},
    };
    for (const Call &c : calls) {
        Dev y = poisoned(64, SDW_K_F32);
        cudaError_t good = c.run(y.p(), c.good_dt);
        bool refused = true;
        for (int bad : {-1, 3, c.good_dt == SDW_K_F16 ? SDW_K_F32 : 7}) {
            Dev untouched = poisoned(64, SDW_K_F32);
            y = untouched;
            cudaError_t rc = c.run(y.p(), bad);
            refused = refused && rc == cudaErrorInvalidValue && cudaGetLastError() == cudaSuccess &&
                      y.words == untouched.words;
        }
        tap_ok(good == cudaSuccess && refused, "%s runs with dt %s and refuses an unknown dt%s (%d)", c.name,
               kTypeName[c.good_dt], c.good_dt == SDW_K_F16 ? " or f32" : "", (int)good);
    }
    tap_ok(sdw_k_attention(x, x, x, in.data(), 1, 1, 1, 1, 161, 1.0f, 0, SDW_K_F32, 0) == cudaErrorInvalidValue,
           "attention refuses d = 161");
    tap_ok(sdw_k_attention_tc(x, x, x, in.data(), 1, 2, 3, 1, 16, 1.0f, 1, SDW_K_F16, 0) == cudaErrorInvalidValue,
           "attention_tc refuses causal with tq != tk");
    // It takes the row max of the unscaled scores, which only a positive
    // scale leaves where it is.
    tap_ok(sdw_k_attention_tc(x, x, x, in.data(), 1, 2, 2, 1, 16, -1.0f, 0, SDW_K_F16, 0) == cudaErrorInvalidValue &&
               sdw_k_attention_tc(x, x, x, in.data(), 1, 2, 2, 1, 16, NAN, 0, SDW_K_F16, 0) == cudaErrorInvalidValue,
           "attention_tc refuses a scale that is not positive");
    tap_ok(sdw_k_group_stats(x, in.data(), part, 1, 6, 1, 4, 1e-5f, SDW_K_F32, 0) == cudaErrorInvalidValue,
           "group_stats refuses channels not divisible by groups");
}

} // namespace

int main(void)
{
    if (sdw_backend_cpu(&cpu, &err)) {
        tap_ok(0, "CPU backend: %s", err.msg);
        return tap_done();
    }
    clock_t t0 = clock();
    time_t w0 = time(nullptr);

    check_refusals();
    for (int dt : kTypes) {
        check_layer_norm(dt, 3, 77, false);
        check_layer_norm(dt, 5, 320, false);
        check_layer_norm(dt, 2, 1000, true);
        const char *acts[] = {"silu", "gelu", "quick_gelu"};
        for (int a = 0; a < 3; a++)
            check_act(dt, a, acts[a], a == 0 ? 1000 : 513);
        check_elementwise(dt);

        check_group_norm(dt, 2, 64, 50, 32, 0);
        check_group_norm(dt, 2, 64, 50, 32, 1);
        check_group_norm(dt, 1, 32, 300, 8, 1);
        check_group_norm(dt, 3, 6, 7, 3, 0);
        check_group_norm(dt, 1, 8, 3001, 2, 1); // each group in three uneven pieces, merged

        check_softmax_rows(dt, 2, 40, 77, 0, 1, dt == SDW_K_F32);
        check_softmax_rows(dt, 3, 17, 300, 100, 1, false);
        check_softmax_rows(dt, 2, 9, 1000, 0, 0, dt == SDW_K_F32);

        // SIMT attention: each instantiation (d 40, 64, 80, 160), the generic
        // ones (d 8 and 33 in <4,16>), tk not a multiple of the key tile (64
        // or 32), several query blocks, causal and not.
        check_attention(dt, 1, 77, 77, 2, 40, 1, 0);
        check_attention(dt, 2, 50, 77, 2, 64, 0, 0);
        check_attention(dt, 1, 100, 150, 1, 80, 0, 0);
        check_attention(dt, 1, 70, 70, 1, 160, 1, 0);
        check_attention(dt, 1, 40, 37, 2, 8, 0, 0);
        check_attention(dt, 1, 33, 33, 3, 33, 1, 0);
        check_attention(dt, 1, 300, 300, 1, 64, 1, 0);
        // Scores past fp16's 65504: the SIMT kernel keeps them in float32.
        check_attention(dt, 1, 70, 77, 2, 64, 0, 0, true);
        check_attention(dt, 1, 40, 40, 2, 16, 1, 0, true);
    }

    // Tensor cores: d = 1, 36 and 40 padded, 16, 80 and 160 exact; query
    // blocks of 64 rows with a partial one, tk past a multiple of 64; k and v
    // tiles moved in 16-byte pieces (d a multiple of 8) and, at d = 1 and
    // 36, element by element.
    for (int dt : {SDW_K_F16, SDW_K_BF16}) {
        check_attention(dt, 1, 70, 90, 3, 36, 0, 1);
        check_attention(dt, 1, 100, 37, 2, 40, 0, 1);
        check_attention(dt, 1, 65, 65, 1, 16, 1, 1);
        check_attention(dt, 2, 70, 130, 1, 80, 0, 1);
        check_attention(dt, 1, 129, 129, 1, 160, 1, 1);
        check_attention(dt, 1, 20, 77, 2, 1, 0, 1);
        check_attention(dt, 1, 20, 300, 2, 40, 0, 1);
        check_attention(dt, 1, 129, 129, 1, 1, 1, 1);
        // Scores past fp16's 65504: float32 accumulators, scale and softmax.
        check_attention(dt, 1, 70, 77, 2, 64, 0, 1, true);
        check_attention(dt, 1, 65, 65, 2, 16, 1, 1, true);
    }

    tap_diag("%.1f s of CPU, %ld s of wall time", (double)(clock() - t0) / CLOCKS_PER_SEC, (long)(time(nullptr) - w0));
    sdw_backend_destroy(cpu);
    return tap_done();
}
