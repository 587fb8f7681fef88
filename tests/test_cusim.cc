/* Every kernel in kernels/, run on the host by the simulator in
 * tests/cusim (the real kernel source, built as C++ with -DSDW_CUSIM, one
 * fiber per CUDA thread), against its CPU twin, on fresh random
 * inputs, with host memory standing in for device memory. The error measure
 * is tests/fixture.h's: max |got - want| / max |want|, NaN counting as
 * infinitely wrong; float32 kernels within 1e-5, fp16 and bf16 within 1e-2,
 * data movement and conversions exact. Outputs are poisoned with NaN before
 * every call, so a kernel that skips elements cannot pass. Shapes are small
 * (the simulator is slow) but cover partial blocks and tiles, odd sizes and
 * every instantiation. On a GPU, tests/test_cuda_kernels.c checks the same
 * kernels through the CUDA backend. */
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <vector>

#include "kernels.h"
extern "C" {
#include "safetensors.h"
#include "tap.h"
#include "tensor.h"
}

namespace {

using vec = std::vector<float>;

sdw_backend *cpu;
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

template <typename T>
std::vector<T> poisoned(size_t n)
{
    std::vector<T> v(n);
    memset(v.data(), 0xff, n * sizeof(T));
    return v;
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
void report(const char *what, cudaError_t rc, int cpu_rc, const vec &got, const vec &want, double tol)
{
    if (rc != cudaSuccess || cpu_rc) {
        tap_ok(0, "%s: kernel %d, CPU %d", what, (int)rc, cpu_rc);
        return;
    }
    if (tol == 0) {
        size_t bad = 0;
        for (size_t i = 0; i < got.size(); i++)
            bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
        tap_ok(bad == 0, "%s: exact (%zu of %zu differ)", what, bad, got.size());
        return;
    }
    double r = rel_err(got, want);
    tap_ok(r <= tol, "%s: rel err %.2e (tol %.0e)", what, r, tol);
}

sdw_error err;

float round_to(float v, int dtype)
{
    return dtype == SDW_K_F16 ? sdw_f16_to_f32(sdw_f32_to_f16(v)) : sdw_bf16_to_f32(sdw_f32_to_bf16(v));
}

void check_layer_norm(int64_t rows, int64_t n, bool in_place)
{
    vec x = rand_vec(rows * n, 3, 4), g = rand_vec(n, 1, 1), b = rand_vec(n, 1), want(rows * n);
    int crc = cpu->ops->layer_norm(cpu, x.data(), g.data(), b.data(), want.data(), rows, n, 1e-5f, &err);
    vec got = in_place ? x : poisoned<float>(rows * n);
    cudaError_t rc = sdw_k_layer_norm(in_place ? got.data() : x.data(), g.data(), b.data(), got.data(), rows, n,
                                      1e-5f, 0);
    char what[96];
    snprintf(what, sizeof what, "layer_norm %lldx%lld%s", (long long)rows, (long long)n, in_place ? " in place" : "");
    report(what, rc, crc, got, want, 1e-5);
}

void check_act(int act, const char *name, int64_t n)
{
    vec x = rand_vec(n, 6), want(n), got = poisoned<float>(n);
    int crc = cpu->ops->act(cpu, x.data(), want.data(), n, (sdw_act)act, &err);
    cudaError_t rc = sdw_k_act(x.data(), got.data(), n, act, 0);
    char what[64];
    snprintf(what, sizeof what, "act %s n=%lld", name, (long long)n);
    report(what, rc, crc, got, want, 1e-5);
}

void check_elementwise()
{
    char what[96];
    {
        int64_t n = 1000;
        vec a = rand_vec(n, 2), b = rand_vec(n, 2), want(n), got = poisoned<float>(n);
        int crc = cpu->ops->add(cpu, a.data(), b.data(), want.data(), n, &err);
        report("add n=1000", sdw_k_add(a.data(), b.data(), got.data(), n, 0), crc, got, want, 0);
        got = poisoned<float>(n);
        crc = cpu->ops->scale(cpu, a.data(), 0.18215f, want.data(), n, &err);
        report("scale n=1000", sdw_k_scale(a.data(), 0.18215f, got.data(), n, 0), crc, got, want, 0);
    }
    {
        int64_t rows = 37, n = 29;
        vec x = rand_vec(rows * n, 2), v = rand_vec(rows, 2), want(rows * n), got = poisoned<float>(rows * n);
        int crc = cpu->ops->add_rows(cpu, x.data(), v.data(), want.data(), rows, n, &err);
        report("add_rows 37x29", sdw_k_add_rows(x.data(), v.data(), got.data(), rows, n, 0), crc, got, want, 0);
        // fill_rows has no CPU op of its own (the CPU linear starts from
        // the bias directly): the reference is the contract.
        vec bias = rand_vec(n, 1);
        got = poisoned<float>(rows * n);
        for (int64_t i = 0; i < rows * n; i++)
            want[i] = bias[i % n];
        report("fill_rows 37x29", sdw_k_fill_rows(bias.data(), got.data(), rows, n, 0), 0, got, want, 0);
    }
    for (int with_noise = 0; with_noise < 2; with_noise++) {
        int64_t b = 3, n = 111;
        vec m = rand_vec(b * 2 * n, 25), noise = rand_vec(b * n, 1), want(b * n), got = poisoned<float>(b * n);
        const float *nz = with_noise ? noise.data() : nullptr;
        int crc = cpu->ops->gaussian(cpu, m.data(), nz, 0.5f, want.data(), b, n, &err);
        snprintf(what, sizeof what, "gaussian 3x111 %s", with_noise ? "with noise" : "mean only");
        report(what, sdw_k_gaussian(m.data(), nz, 0.5f, got.data(), b, n, 0), crc, got, want, 1e-5);
    }
    {
        int64_t rows = 13, n = 77;
        vec x = rand_vec(rows * 2 * n, 4), want(rows * n), got = poisoned<float>(rows * n);
        int crc = cpu->ops->geglu(cpu, x.data(), want.data(), rows, n, &err);
        report("geglu 13x77", sdw_k_geglu(x.data(), got.data(), rows, n, 0), crc, got, want, 1e-5);
    }
    {
        int64_t b = 3, na = 50, nc = 71;
        vec a = rand_vec(b * na, 1), c = rand_vec(b * nc, 1), want(b * (na + nc)), got = poisoned<float>(b * (na + nc));
        int crc = cpu->ops->concat(cpu, a.data(), c.data(), want.data(), b, na, nc, &err);
        report("concat 3x(50+71)", sdw_k_concat(a.data(), c.data(), got.data(), b, na, nc, 0), crc, got, want, 0);
    }
    // Whole tiles, partial tiles in both directions, and a single row.
    const int64_t tr[][3] = {{1, 64, 32}, {2, 33, 70}, {3, 5, 100}, {1, 1, 45}};
    for (auto &s : tr) {
        int64_t n = s[0] * s[1] * s[2];
        vec x = rand_vec(n, 1), want(n), got = poisoned<float>(n);
        int crc = cpu->ops->transpose(cpu, x.data(), want.data(), s[0], s[1], s[2], &err);
        snprintf(what, sizeof what, "transpose %lldx%lldx%lld", (long long)s[0], (long long)s[1], (long long)s[2]);
        report(what, sdw_k_transpose(x.data(), got.data(), s[0], s[1], s[2], 0), crc, got, want, 0);
    }
    for (int with_pos = 0; with_pos < 2; with_pos++) {
        int64_t vocab = 100, dim = 48, tpos = 7, rows = 2 * tpos;
        vec table = rand_vec(vocab * dim, 1), pos = rand_vec(tpos * dim, 1), want(rows * dim),
            got = poisoned<float>(rows * dim);
        std::vector<int32_t> ids(rows);
        for (auto &id : ids)
            id = (int32_t)(rand_u32() % vocab);
        const float *p = with_pos ? pos.data() : nullptr;
        int crc = cpu->ops->embed(cpu, table.data(), ids.data(), p, want.data(), rows, dim, tpos, &err);
        snprintf(what, sizeof what, "embed 14x48%s", with_pos ? " + positions" : "");
        report(what, sdw_k_embed(table.data(), ids.data(), p, got.data(), rows, dim, tpos, 0), crc, got, want, 0);
    }
    // 2x (the exact halving), and sizes where floor(dst * in/out) decides.
    const int64_t up[][5] = {{3, 8, 5, 16, 10}, {2, 5, 7, 8, 11}, {1, 9, 4, 4, 13}};
    for (auto &s : up) {
        int64_t n = s[0] * s[3] * s[4];
        vec x = rand_vec(s[0] * s[1] * s[2], 1), want(n), got = poisoned<float>(n);
        int crc = cpu->ops->upsample_nearest(cpu, x.data(), want.data(), s[0], s[1], s[2], s[3], s[4], &err);
        snprintf(what, sizeof what, "upsample_nearest %lldx%lldx%lld -> %lldx%lld", (long long)s[0], (long long)s[1],
                 (long long)s[2], (long long)s[3], (long long)s[4]);
        report(what, sdw_k_upsample_nearest(x.data(), got.data(), s[0], s[1], s[2], s[3], s[4], 0), crc, got, want,
               0);
    }
}

void check_group_norm(int64_t b, int64_t c, int64_t n, int64_t groups, int silu)
{
    int64_t total = b * c * n;
    vec x = rand_vec(total, 3, 2), g = rand_vec(c, 1, 1), bt = rand_vec(c, 1), want(total), got = poisoned<float>(total);
    vec stats = poisoned<float>(b * groups * 2);
    int crc = cpu->ops->group_norm(cpu, x.data(), g.data(), bt.data(), want.data(), b, c, n, groups, 1e-6f, silu, &err);
    cudaError_t rc = sdw_k_group_stats(x.data(), stats.data(), b, c, n, groups, 1e-6f, 0);
    if (rc == cudaSuccess)
        rc = sdw_k_group_apply(x.data(), stats.data(), g.data(), bt.data(), got.data(), b, c, n, groups, silu, 0);
    char what[96];
    snprintf(what, sizeof what, "group_norm b=%lld c=%lld n=%lld groups=%lld%s", (long long)b, (long long)c,
             (long long)n, (long long)groups, silu ? " + silu" : "");
    report(what, rc, crc, got, want, 1e-5);
}

// kernels.h's contract for sdw_k_softmax_rows, in double.
void check_softmax_rows(int64_t heads, int64_t rpb, int64_t n, int64_t r0, int causal)
{
    int64_t rows = heads * rpb;
    vec s = rand_vec(rows * n, 8), want(rows * n), got = s;
    for (int64_t r = 0; r < rows; r++) {
        const float *x = &s[r * n];
        int64_t valid = causal ? r0 + r % rpb + 1 : n;
        valid = valid < n ? valid : n;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < valid; j++)
            mx = x[j] > mx ? x[j] : mx;
        for (int64_t j = 0; j < valid; j++)
            sum += exp(x[j] - mx);
        for (int64_t j = 0; j < n; j++)
            want[r * n + j] = j < valid ? (float)(exp(x[j] - mx) / sum) : 0.0f;
    }
    cudaError_t rc = sdw_k_softmax_rows(got.data(), rows, n, rpb, r0, causal, 0);
    char what[96];
    snprintf(what, sizeof what, "softmax_rows %lld heads x %lld rows x %lld, r0=%lld%s", (long long)heads,
             (long long)rpb, (long long)n, (long long)r0, causal ? " causal" : "");
    report(what, rc, 0, got, want, 1e-5);
}

void check_attention(int64_t b, int64_t tq, int64_t tk, int64_t heads, int64_t d, int causal, int tc)
{
    int64_t c = heads * d;
    vec q = rand_vec(b * tq * c, 2), k = rand_vec(b * tk * c, 2), v = rand_vec(b * tk * c, 1), want(b * tq * c);
    float scale = 1.0f / sqrtf((float)d);
    int crc = cpu->ops->attention(cpu, q.data(), k.data(), v.data(), want.data(), b, tq, tk, heads, d, scale, causal,
                                  &err);
    char what[128];
    if (!tc) {
        vec got = poisoned<float>(b * tq * c);
        cudaError_t rc = sdw_k_attention(q.data(), k.data(), v.data(), got.data(), b, tq, tk, heads, d, scale, causal, 0);
        snprintf(what, sizeof what, "attention b=%lld tq=%lld tk=%lld heads=%lld d=%lld%s", (long long)b,
                 (long long)tq, (long long)tk, (long long)heads, (long long)d, causal ? " causal" : "");
        report(what, rc, crc, got, want, 1e-5);
        return;
    }
    // A second reference takes q, k and v rounded to the kernel's type, as
    // the kernel does: what remains is the kernel's own error (the rounded
    // probabilities, sums in another order), which must be well under the
    // quantisation error the first comparison allows.
    for (int dt = SDW_K_F16; dt <= SDW_K_BF16; dt++) {
        vec ql = q, kl = k, vl = v, want_lp(b * tq * c);
        for (vec *t : {&ql, &kl, &vl})
            for (auto &x : *t)
                x = round_to(x, dt);
        int crc_lp = cpu->ops->attention(cpu, ql.data(), kl.data(), vl.data(), want_lp.data(), b, tq, tk, heads, d,
                                         scale, causal, &err);
        vec got = poisoned<float>(b * tq * c);
        cudaError_t rc = sdw_k_attention_tc(q.data(), k.data(), v.data(), got.data(), b, tq, tk, heads, d, scale,
                                            causal, dt, 0);
        snprintf(what, sizeof what, "attention_tc %s b=%lld tq=%lld tk=%lld heads=%lld d=%lld%s",
                 dt == SDW_K_F16 ? "fp16" : "bf16", (long long)b, (long long)tq, (long long)tk, (long long)heads,
                 (long long)d, causal ? " causal" : "");
        report(what, rc, crc, got, want, 1e-2);
        strncat(what, ", inputs rounded", sizeof what - strlen(what) - 1);
        report(what, rc, crc_lp, got, want_lp, dt == SDW_K_F16 ? 1e-3 : 5e-3);
    }
}

// Inputs for the conversions: random values over many binades, plus the
// edges of half precision (its largest value, the first that rounds to
// infinity, subnormals, signed zeros) and of bfloat16 (a tie, overflow).
vec conversion_inputs(size_t n)
{
    vec x = rand_vec(n, 1);
    for (size_t i = 0; i < n; i++)
        x[i] = ldexpf(x[i], (int)(rand_u32() % 40) - 25);
    const float edges[] = {0.0f, -0.0f, 65504.0f, 65520.0f, -65536.0f, 6.0e-8f, 3.0e-8f, -1.0e-5f, 1.0f + 0x1p-11f,
                           1.0f + 0x1p-8f, 3.4e38f, 1e-40f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0] && i < n; i++)
        x[i * 7 % n] = edges[i];
    return x;
}

uint16_t to_bits(float v, int dtype)
{
    return dtype == SDW_K_F16 ? sdw_f32_to_f16(v) : sdw_f32_to_bf16(v);
}

float from_bits(uint16_t h, int dtype)
{
    return dtype == SDW_K_F16 ? sdw_f16_to_f32(h) : sdw_bf16_to_f32(h);
}

const char *dtype_name[] = {"f32", "f16", "bf16"};

// The packed outputs compared with the library's own conversions
// (src/engine/safetensors.c), as floats so that report() can compare bits.
vec widen(const void *y, size_t n, int dtype)
{
    vec w(n);
    for (size_t i = 0; i < n; i++)
        w[i] = dtype == SDW_K_F32 ? ((const float *)y)[i] : from_bits(((const uint16_t *)y)[i], dtype);
    return w;
}

void check_pack(int dtype)
{
    char what[96];
    size_t n = 1000;
    vec x = conversion_inputs(n), want(n);
    for (size_t i = 0; i < n; i++)
        want[i] = dtype == SDW_K_F32 ? x[i] : from_bits(to_bits(x[i], dtype), dtype);
    std::vector<uint32_t> y = poisoned<uint32_t>(n); // room for floats
    cudaError_t rc = sdw_k_pack(x.data(), y.data(), (int64_t)n, dtype, 0);
    snprintf(what, sizeof what, "pack %s n=%zu", dtype_name[dtype], n);
    report(what, rc, 0, widen(y.data(), n, dtype), want, 0);
    if (dtype != SDW_K_F32 && rc == cudaSuccess) {
        const uint16_t *h = (const uint16_t *)y.data();
        bool tail = true; // nothing written past n halves
        for (size_t i = n; i < 2 * n; i++)
            tail = tail && h[i] == 0xffff;
        tap_ok(tail, "pack %s writes n halves and no more", dtype_name[dtype]);
    }

    // x [bc, h, w] -> [bc, hp, wp] with pad_t rows above, pad_l columns left.
    const int64_t pp[][7] = {{3, 7, 9, 9, 11, 1, 1}, {2, 8, 8, 9, 9, 0, 0}, {1, 5, 6, 8, 7, 2, 0}};
    for (auto &s : pp) {
        int64_t bc = s[0], h = s[1], w = s[2], hp = s[3], wp = s[4];
        int pt = (int)s[5], pl = (int)s[6];
        size_t m = (size_t)(bc * hp * wp);
        vec xi = rand_vec(bc * h * w, 3), wp_want(m);
        for (int64_t p = 0; p < bc; p++)
            for (int64_t r = 0; r < hp; r++)
                for (int64_t col = 0; col < wp; col++) {
                    int64_t sr = r - pt, sc = col - pl;
                    float v = sr >= 0 && sr < h && sc >= 0 && sc < w ? xi[(p * h + sr) * w + sc] : 0.0f;
                    wp_want[(p * hp + r) * wp + col] = dtype == SDW_K_F32 ? v : from_bits(to_bits(v, dtype), dtype);
                }
        std::vector<uint32_t> yp = poisoned<uint32_t>(m);
        rc = sdw_k_pack_pad(xi.data(), yp.data(), bc, h, w, hp, wp, pt, pl, dtype, 0);
        snprintf(what, sizeof what, "pack_pad %s %lldx%lldx%lld -> %lldx%lld at (%d, %d)", dtype_name[dtype],
                 (long long)bc, (long long)h, (long long)w, (long long)hp, (long long)wp, pt, pl);
        report(what, rc, 0, widen(yp.data(), m, dtype), wp_want, 0);
    }

    // [rows, n] of dtype -> float, with and without a bias of nb entries
    // (rows % nb), and in place for float32.
    for (int variant = 0; variant < (dtype == SDW_K_F32 ? 3 : 2); variant++) {
        int64_t rows = 12, cols = 45, nb = 4;
        size_t m = (size_t)(rows * cols);
        vec src = rand_vec(m, 4), bias = rand_vec(nb, 1), ub_want(m);
        std::vector<uint32_t> packed(m);
        for (size_t i = 0; i < m; i++) {
            uint32_t bits;
            memcpy(&bits, &src[i], 4);
            packed[i] = dtype == SDW_K_F32 ? bits : to_bits(src[i], dtype);
        }
        std::vector<uint16_t> halves(m);
        for (size_t i = 0; i < m; i++)
            halves[i] = (uint16_t)packed[i];
        const void *xin = dtype == SDW_K_F32 ? (const void *)packed.data() : (const void *)halves.data();
        vec widened = widen(xin, m, dtype);
        const float *bp = variant ? bias.data() : nullptr;
        for (size_t i = 0; i < m; i++)
            ub_want[i] = bp ? widened[i] + bp[i / cols % nb] : widened[i];
        bool in_place = variant == 2 && dtype == SDW_K_F32;
        vec got = in_place ? widened : poisoned<float>(m);
        rc = sdw_k_unpack_bias(in_place ? (const void *)got.data() : xin, bp, got.data(), rows, cols, nb, dtype, 0);
        snprintf(what, sizeof what, "unpack_bias %s 12x45%s%s", dtype_name[dtype], bp ? " + bias[4]" : "",
                 in_place ? " in place" : "");
        report(what, rc, 0, got, ub_want, 0);
    }
}

// Refusals that happen before any launch.
void check_refusals()
{
    float x[4] = {0};
    tap_ok(sdw_k_attention(x, x, x, x, 1, 1, 1, 1, 161, 1.0f, 0, 0) == cudaErrorInvalidValue,
           "attention refuses d = 161");
    tap_ok(sdw_k_attention_tc(x, x, x, x, 1, 2, 3, 1, 16, 1.0f, 1, SDW_K_F16, 0) == cudaErrorInvalidValue,
           "attention_tc refuses causal with tq != tk");
    tap_ok(sdw_k_pack(x, x, 4, 7, 0) == cudaErrorInvalidValue, "pack refuses an unknown dtype");
    tap_ok(sdw_k_group_stats(x, x, 1, 6, 1, 4, 1e-5f, 0) == cudaErrorInvalidValue,
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
    check_layer_norm(3, 77, false);
    check_layer_norm(5, 320, false);
    check_layer_norm(2, 1000, true);
    const char *acts[] = {"silu", "gelu", "quick_gelu"};
    for (int a = 0; a < 3; a++)
        check_act(a, acts[a], a == 0 ? 1000 : 513);
    check_elementwise();

    check_group_norm(2, 64, 50, 32, 0);
    check_group_norm(2, 64, 50, 32, 1);
    check_group_norm(1, 32, 300, 8, 1);
    check_group_norm(3, 6, 7, 3, 0);

    check_softmax_rows(2, 40, 77, 0, 1);
    check_softmax_rows(3, 17, 300, 100, 1);
    check_softmax_rows(2, 9, 1000, 0, 0);

    // SIMT attention: each instantiation (d 40, 64, 80, 160), the generic
    // ones (d 8 and 33 in <4,16>), tk not a multiple of the key tile (64 or
    // 32), several query blocks, causal and not.
    check_attention(1, 77, 77, 2, 40, 1, 0);
    check_attention(2, 50, 77, 2, 64, 0, 0);
    check_attention(1, 100, 150, 1, 80, 0, 0);
    check_attention(1, 70, 70, 1, 160, 1, 0);
    check_attention(1, 40, 37, 2, 8, 0, 0);
    check_attention(1, 33, 33, 3, 33, 1, 0);
    check_attention(1, 300, 300, 1, 64, 1, 0);

    // Tensor cores: d = 1 and 40 padded, 16, 80 and 160 exact; query blocks
    // of 64 rows with a partial one, tk past a multiple of 64.
    check_attention(1, 100, 37, 2, 40, 0, 1);
    check_attention(1, 65, 65, 1, 16, 1, 1);
    check_attention(2, 70, 130, 1, 80, 0, 1);
    check_attention(1, 129, 129, 1, 160, 1, 1);
    check_attention(1, 20, 77, 2, 1, 0, 1);
    check_attention(1, 20, 300, 2, 40, 0, 1);
    check_attention(1, 129, 129, 1, 1, 1, 1);

    for (int dt = SDW_K_F32; dt <= SDW_K_BF16; dt++)
        check_pack(dt);

    tap_diag("%.1f s of CPU, %ld s of wall time", (double)(clock() - t0) / CLOCKS_PER_SEC, (long)(time(nullptr) - w0));
    sdw_backend_destroy(cpu);
    return tap_done();
}
