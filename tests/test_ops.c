/* The CPU backend's kernels against plain double-precision loops on random
 * inputs, and the shape checks of the op layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/half.h"
#include "tap.h"
#include "tensor/tensor.h"

static uint64_t lcg = 88172645463325252ull;

static float frand(void)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(lcg >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rand_buf(size_t n)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

static double max_rel(const float *got, const double *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        num = d > num ? d : num;
        den = fabs(want[i]) > den ? fabs(want[i]) : den;
    }
    return num / (den > 0 ? den : 1);
}

static sdw_backend *be;

static void up(sdw_tensor *t, int ndim, const int64_t *shape, const float *src)
{
    sdw_error e;
    if (sdw_tensor_from_host(t, be, ndim, shape, src, &e)) {
        tap_diag("%s", e.msg);
        exit(1);
    }
}

static void test_linear(int64_t m, int64_t n, int64_t k, int with_bias)
{
    float *x = rand_buf((size_t)(m * k)), *w = rand_buf((size_t)(n * k)), *b = rand_buf((size_t)n);
    float *y = malloc((size_t)(m * n) * sizeof *y);
    double *ref = malloc((size_t)(m * n) * sizeof *ref);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = with_bias ? b[j] : 0;
            for (int64_t t = 0; t < k; t++)
                s += (double)x[i * k + t] * w[j * k + t];
            ref[i * n + j] = s;
        }
    sdw_tensor tx, tw, tb, ty;
    sdw_error e;
    int64_t sx[2] = {m, k}, sw[2] = {n, k}, sy[2] = {m, n};
    up(&tx, 2, sx, x);
    up(&tw, 2, sw, w);
    up(&tb, 1, &n, b);
    sdw_tensor_new(&ty, be, 2, sy, &e);
    int rc = sdw_op_linear(&tx, &tw, with_bias ? &tb : NULL, &ty, &e);
    sdw_tensor_to_host(&ty, y, &e);
    double r = max_rel(y, ref, (size_t)(m * n));
    tap_ok(rc == 0 && r < 1e-5, "linear %lldx%lldx%lld bias=%d: rel err %.2e", (long long)m, (long long)n,
           (long long)k, with_bias, r);
    sdw_tensor_free(&tx), sdw_tensor_free(&tw), sdw_tensor_free(&tb), sdw_tensor_free(&ty);
    free(x), free(w), free(b), free(y), free(ref);
}

static void test_layer_norm(int64_t rows, int64_t n)
{
    float *x = rand_buf((size_t)(rows * n)), *g = rand_buf((size_t)n), *b = rand_buf((size_t)n);
    for (int64_t i = 0; i < rows * n; i++)
        x[i] = x[i] * 3 + 5; /* an offset mean is where naive single-pass variance goes wrong */
    float *y = malloc((size_t)(rows * n) * sizeof *y);
    double *ref = malloc((size_t)(rows * n) * sizeof *ref);
    for (int64_t r = 0; r < rows; r++) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; i++)
            mean += x[r * n + i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++)
            var += (x[r * n + i] - mean) * (x[r * n + i] - mean);
        var /= (double)n;
        for (int64_t i = 0; i < n; i++)
            ref[r * n + i] = (x[r * n + i] - mean) / sqrt(var + 1e-5) * g[i] + b[i];
    }
    sdw_tensor tx, tg, tb, ty;
    sdw_error e;
    int64_t s[2] = {rows, n};
    up(&tx, 2, s, x);
    up(&tg, 1, &n, g);
    up(&tb, 1, &n, b);
    sdw_tensor_new(&ty, be, 2, s, &e);
    int rc = sdw_op_layer_norm(&tx, &tg, &tb, 1e-5f, &ty, &e);
    sdw_tensor_to_host(&ty, y, &e);
    double r = max_rel(y, ref, (size_t)(rows * n));
    tap_ok(rc == 0 && r < 1e-5, "layer_norm %lldx%lld: rel err %.2e", (long long)rows, (long long)n, r);
    sdw_tensor_free(&tx), sdw_tensor_free(&tg), sdw_tensor_free(&tb), sdw_tensor_free(&ty);
    free(x), free(g), free(b), free(y), free(ref);
}

static void test_attention(int64_t b, int64_t tq, int64_t tk, int heads, int64_t d, int causal)
{
    int64_t c = heads * d;
    float *q = rand_buf((size_t)(b * tq * c)), *k = rand_buf((size_t)(b * tk * c)), *v = rand_buf((size_t)(b * tk * c));
    float *o = malloc((size_t)(b * tq * c) * sizeof *o);
    double *ref = calloc((size_t)(b * tq * c), sizeof *ref), *p = malloc((size_t)tk * sizeof *p);
    double scale = 1.0 / sqrt((double)d);
    for (int64_t bi = 0; bi < b; bi++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < tq; i++) {
                double mx = -INFINITY, sum = 0;
                int64_t valid = causal ? i + 1 : tk;
                for (int64_t j = 0; j < valid; j++) {
                    double s = 0;
                    for (int64_t t = 0; t < d; t++)
                        s += (double)q[(bi * tq + i) * c + h * d + t] * k[(bi * tk + j) * c + h * d + t];
                    p[j] = s * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int64_t j = 0; j < valid; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int64_t j = 0; j < valid; j++)
                    for (int64_t t = 0; t < d; t++)
                        ref[(bi * tq + i) * c + h * d + t] += p[j] / sum * v[(bi * tk + j) * c + h * d + t];
            }
    sdw_tensor tq_, tk_, tv_, to_;
    sdw_error e;
    int64_t sq[3] = {b, tq, c}, sk[3] = {b, tk, c};
    up(&tq_, 3, sq, q);
    up(&tk_, 3, sk, k);
    up(&tv_, 3, sk, v);
    sdw_tensor_new(&to_, be, 3, sq, &e);
    int rc = sdw_op_attention(&tq_, &tk_, &tv_, heads, causal, &to_, &e);
    sdw_tensor_to_host(&to_, o, &e);
    double r = max_rel(o, ref, (size_t)(b * tq * c));
    tap_ok(rc == 0 && r < 1e-5, "attention b=%lld tq=%lld tk=%lld heads=%d d=%lld causal=%d: rel err %.2e",
           (long long)b, (long long)tq, (long long)tk, heads, (long long)d, causal, r);
    sdw_tensor_free(&tq_), sdw_tensor_free(&tk_), sdw_tensor_free(&tv_), sdw_tensor_free(&to_);
    free(q), free(k), free(v), free(o), free(ref), free(p);
}

/* The softmax's exp, seen through attention with two keys: logits 0 and
 * t/2 (q = [t,0,0,0], k1 = [1,0,0,0], scale 1/2: exact) and one-hot values,
 * so out[1] = e^(t/2) / (1 + e^(t/2)). Against double precision that is
 * the exp's error plus two roundings (the reciprocal, the product): within
 * 4 ulp (4 * 2^-23 relative) over t/2 in [-80, 0] only if the exp is within
 * about 2. */
static float *download(const sdw_tensor *t);

static void test_softmax_exp(void)
{
    sdw_error e;
    int64_t tq = 4001, s3[3] = {1, tq, 4}, k3[3] = {1, 2, 4};
    float *q = calloc((size_t)(tq * 4), sizeof *q), kv[8] = {0, 0, 0, 0, 1, 0, 0, 0};
    float vv[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    for (int64_t i = 0; i < tq; i++)
        q[i * 4] = -160.0f * (float)i / (float)(tq - 1) + (i % 7) * 1e-3f;
    sdw_tensor tq_, tk, tv, to;
    up(&tq_, 3, s3, q), up(&tk, 3, k3, kv), up(&tv, 3, k3, vv);
    sdw_tensor_new(&to, be, 3, s3, &e);
    int rc = sdw_op_attention(&tq_, &tk, &tv, 1, 0, &to, &e);
    float *o = download(&to);
    double worst = 0.0;
    for (int64_t i = 0; i < tq; i++) {
        double x = exp((double)(q[i * 4] * 0.5f)), want = x / (1.0 + x);
        double r = fabs(o[i * 4 + 1] - want) / want;
        worst = r > worst ? r : worst;
    }
    tap_ok(rc == 0 && worst <= 4.0 / 8388608.0, "softmax exp over [-80, 0]: max rel err %.2e (%.2f ulp)", worst,
           worst * 8388608.0);
    free(o), free(q);
    sdw_tensor_free(&tq_), sdw_tensor_free(&tk), sdw_tensor_free(&tv), sdw_tensor_free(&to);
}

static void test_act(sdw_act act, const char *name)
{
    int64_t n = 4099;
    float *x = rand_buf((size_t)n), *y = malloc((size_t)n * sizeof *y);
    double *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++) {
        double v = x[i] * 8.0;
        x[i] = (float)v;
        v = x[i];
        ref[i] = act == SDW_ACT_SILU ? v / (1 + exp(-v))
               : act == SDW_ACT_GELU ? 0.5 * v * (1 + erf(v / sqrt(2.0)))
                                     : v / (1 + exp(-1.702 * v));
    }
    sdw_tensor tx, ty;
    sdw_error e;
    up(&tx, 1, &n, x);
    sdw_tensor_new(&ty, be, 1, &n, &e);
    int rc = sdw_op_act(&tx, act, &ty, &e);
    sdw_tensor_to_host(&ty, y, &e);
    double r = max_rel(y, ref, (size_t)n);
    tap_ok(rc == 0 && r < 1e-6, "%s: rel err %.2e", name, r);
    sdw_tensor_free(&tx), sdw_tensor_free(&ty);
    free(x), free(y), free(ref);
}

static void test_embed(void)
{
    int64_t vocab = 50, dim = 6, tpos = 5, batch = 2;
    float *table = rand_buf((size_t)(vocab * dim)), *pos = rand_buf((size_t)(tpos * dim));
    int32_t ids[10] = {0, 49, 3, 3, 7, 1, 2, 48, 0, 9};
    float y[60];
    sdw_tensor tt, tp, ty;
    sdw_error e;
    int64_t st[2] = {vocab, dim}, sp[2] = {tpos, dim}, sy[3] = {batch, tpos, dim};
    up(&tt, 2, st, table);
    up(&tp, 2, sp, pos);
    sdw_tensor_new(&ty, be, 3, sy, &e);
    int rc = sdw_op_embed(&tt, ids, &tp, &ty, &e);
    sdw_tensor_to_host(&ty, y, &e);
    int same = rc == 0;
    for (int r = 0; r < 10; r++)
        for (int i = 0; i < dim; i++)
            same &= y[r * dim + i] == table[ids[r] * dim + i] + pos[(r % tpos) * dim + i];
    tap_ok(same, "embed gathers token rows and adds positions");
    ids[4] = 50;
    rc = sdw_op_embed(&tt, ids, &tp, &ty, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "token id 50"), "embed rejects an id outside the vocabulary: %s", e.msg);
    sdw_tensor_free(&tt), sdw_tensor_free(&tp), sdw_tensor_free(&ty);
    free(table), free(pos);
}

static void test_shape_errors(void)
{
    sdw_tensor x, w, y;
    sdw_error e;
    int64_t sx[2] = {3, 4}, sw[2] = {5, 6}, sy[2] = {3, 5};
    sdw_tensor_new(&x, be, 2, sx, &e);
    sdw_tensor_new(&w, be, 2, sw, &e);
    sdw_tensor_new(&y, be, 2, sy, &e);
    int rc = sdw_op_linear(&x, &w, NULL, &y, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "input has shape [3,4]"), "linear names a mismatched input: %s", e.msg);
    rc = sdw_op_attention(&x, &x, &x, 3, 0, &x, &e);
    tap_ok(rc == SDW_EINVAL, "attention rejects a 2-D query: %s", e.msg);
    int64_t bad[2] = {3, 0};
    sdw_tensor z;
    rc = sdw_tensor_new(&z, be, 2, bad, &e);
    tap_ok(rc == SDW_EINVAL, "a zero dimension is refused: %s", e.msg);
    int64_t vs[1] = {13};
    rc = sdw_tensor_view(&z, &x, 1, vs, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "[3,4]"), "a view must keep numel: %s", e.msg);
    sdw_tensor_free(&x), sdw_tensor_free(&w), sdw_tensor_free(&y);
}

static float *download(const sdw_tensor *t)
{
    sdw_error e;
    float *p = malloc((size_t)sdw_tensor_numel(t) * sizeof *p);
    sdw_tensor_to_host(t, p, &e);
    return p;
}

/* pad_b/pad_r follow from the output size, as in the op. */
static void test_conv2d(int64_t b, int64_t c, int64_t h, int64_t w, int64_t o, int64_t k, int stride, int pad,
                        int extra)
{
    int64_t oh = (h + 2 * pad + extra - k) / stride + 1, ow = (w + 2 * pad + extra - k) / stride + 1;
    int64_t xs[4] = {b, c, h, w}, ws[4] = {o, c, k, k}, ys[4] = {b, o, oh, ow};
    float *x = rand_buf((size_t)(b * c * h * w)), *wt = rand_buf((size_t)(o * c * k * k)), *bias = rand_buf((size_t)o);
    double *ref = malloc((size_t)(b * o * oh * ow) * sizeof *ref);
    for (int64_t bi = 0; bi < b; bi++)
        for (int64_t oi = 0; oi < o; oi++)
            for (int64_t y = 0; y < oh; y++)
                for (int64_t xo = 0; xo < ow; xo++) {
                    double sum = bias[oi];
                    for (int64_t ci = 0; ci < c; ci++)
                        for (int64_t ky = 0; ky < k; ky++)
                            for (int64_t kx = 0; kx < k; kx++) {
                                int64_t iy = y * stride - pad + ky, ix = xo * stride - pad + kx;
                                if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                                    sum += (double)x[((bi * c + ci) * h + iy) * w + ix] *
                                           wt[((oi * c + ci) * k + ky) * k + kx];
                            }
                    ref[((bi * o + oi) * oh + y) * ow + xo] = sum;
                }
    sdw_tensor tx, tw, tb, ty;
    sdw_error e;
    up(&tx, 4, xs, x), up(&tw, 4, ws, wt), up(&tb, 1, &o, bias);
    sdw_tensor_new(&ty, be, 4, ys, &e);
    int rc = sdw_op_conv2d(&tx, &tw, &tb, (sdw_conv2d_geom){stride, pad, pad}, &ty, &e);
    float *got = download(&ty);
    double r = max_rel(got, ref, (size_t)(b * o * oh * ow));
    tap_ok(rc == 0 && r < 1e-5, "conv2d b%lld c%lld %lldx%lld -> o%lld k%lld stride %d pad %d(+%d)%s: rel err %.2e",
           (long long)b, (long long)c, (long long)h, (long long)w, (long long)o, (long long)k, stride, pad, extra,
           getenv("SDW_CPU_WINOGRAD") ? ", im2col only" : "", r);
    sdw_tensor_free(&tx), sdw_tensor_free(&tw), sdw_tensor_free(&tb), sdw_tensor_free(&ty);
    free(x), free(wt), free(bias), free(ref), free(got);
}

/* 3x3, stride 1, pad 1 over 128 tiles (2x2 outputs) or more take the
 * Winograd path by default: odd sizes (partial tiles), every weight
 * transformed at once over several blocks of tile rows (the 300x40), and
 * every tile at once over two blocks of output channels (the 400 -> 200). */
static void test_convs(void)
{
    test_conv2d(2, 3, 7, 9, 5, 3, 1, 1, 0);
    test_conv2d(1, 4, 8, 12, 6, 3, 2, 1, 0);
    test_conv2d(2, 3, 8, 8, 4, 3, 2, 0, 1); /* the VAE encoder's bottom/right-only padding */
    test_conv2d(2, 5, 6, 7, 3, 1, 1, 0, 0);
    test_conv2d(2, 8, 17, 23, 12, 3, 1, 1, 0);
    test_conv2d(1, 64, 300, 40, 2, 3, 1, 1, 0);
    test_conv2d(2, 400, 15, 17, 200, 3, 1, 1, 0);
}

static void test_group_norm(int silu)
{
    int64_t b = 2, c = 12, n = 35, groups = 4, cg = c / groups, xs[3] = {b, c, n};
    float *x = rand_buf((size_t)(b * c * n)), *g = rand_buf((size_t)c), *bt = rand_buf((size_t)c);
    for (int64_t i = 0; i < b * c * n; i++)
        x[i] = x[i] * 2 + 3;
    double *ref = malloc((size_t)(b * c * n) * sizeof *ref);
    for (int64_t bi = 0; bi < b; bi++)
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *xg = x + (bi * c + gi * cg) * n;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < cg * n; i++)
                mean += xg[i];
            mean /= (double)(cg * n);
            for (int64_t i = 0; i < cg * n; i++)
                var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)(cg * n);
            for (int64_t i = 0; i < cg * n; i++) {
                int64_t ch = gi * cg + i / n;
                double v = (xg[i] - mean) / sqrt(var + 1e-6) * g[ch] + bt[ch];
                ref[(bi * c + gi * cg) * n + i] = silu ? v / (1 + exp(-v)) : v;
            }
        }
    sdw_tensor tx, tg, tb, ty;
    sdw_error e;
    up(&tx, 3, xs, x), up(&tg, 1, &c, g), up(&tb, 1, &c, bt);
    sdw_tensor_new(&ty, be, 3, xs, &e);
    int rc = sdw_op_group_norm(&tx, (int)groups, &tg, &tb, 1e-6f, silu, &ty, &e);
    float *got = download(&ty);
    double r = max_rel(got, ref, (size_t)(b * c * n));
    tap_ok(rc == 0 && r < 1e-5, "group_norm silu=%d: rel err %.2e", silu, r);
    rc = sdw_op_group_norm(&tx, 5, &tg, &tb, 1e-6f, silu, &ty, &e);
    tap_ok(rc == SDW_EINVAL, "group_norm: 12 channels in 5 groups refused: %s", e.msg);
    sdw_tensor_free(&tx), sdw_tensor_free(&tg), sdw_tensor_free(&tb), sdw_tensor_free(&ty);
    free(x), free(g), free(bt), free(ref), free(got);
}

/* Upsample (2x and 3x5 -> 7x8), concat, transpose, GEGLU, add_channel, scale, gaussian. */
static void test_image_misc(void)
{
    sdw_error e;
    int64_t xs[4] = {2, 3, 3, 5}, y2[4] = {2, 3, 6, 10}, y7[4] = {2, 3, 7, 8};
    float *x = rand_buf(90);
    sdw_tensor tx, ty, tz;
    up(&tx, 4, xs, x);
    for (int k = 0; k < 2; k++) {
        const int64_t *ys = k ? y7 : y2;
        sdw_tensor_new(&ty, be, 4, ys, &e);
        int rc = sdw_op_upsample_nearest(&tx, &ty, &e);
        float *got = download(&ty);
        int bad = rc != 0;
        for (int64_t p = 0; p < 6; p++)
            for (int64_t i = 0; i < ys[2]; i++)
                for (int64_t j = 0; j < ys[3]; j++) {
                    int64_t si = (int64_t)floor(i * (3.0 / ys[2])), sj = (int64_t)floor(j * (5.0 / ys[3]));
                    bad |= got[(p * ys[2] + i) * ys[3] + j] != x[(p * 3 + si) * 5 + sj];
                }
        tap_ok(!bad, "upsample_nearest to %lldx%lld", (long long)ys[2], (long long)ys[3]);
        free(got);
        sdw_tensor_free(&ty);
    }
    int64_t cs[4] = {2, 6, 3, 5}, t3[3] = {2, 3, 15}, t3t[3] = {2, 15, 3};
    sdw_tensor_new(&ty, be, 4, cs, &e);
    int rc = sdw_op_concat(&tx, &tx, &ty, &e);
    float *got = download(&ty);
    int bad = rc != 0;
    for (int64_t i = 0; i < 180; i++)
        bad |= got[i] != x[i / 90 * 45 + i % 45];
    tap_ok(!bad, "concat along channels");
    free(got), sdw_tensor_free(&ty);
    sdw_tensor v, vt;
    sdw_tensor_view(&v, &tx, 3, t3, &e);
    sdw_tensor_new(&vt, be, 3, t3t, &e);
    rc = sdw_op_transpose(&v, &vt, &e);
    got = download(&vt);
    bad = rc != 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t i = 0; i < 3; i++)
            for (int64_t j = 0; j < 15; j++)
                bad |= got[(b * 15 + j) * 3 + i] != x[(b * 3 + i) * 15 + j];
    tap_ok(!bad, "transpose [2,3,15] -> [2,15,3]");
    free(got), sdw_tensor_free(&vt);

    int64_t vs[2] = {2, 3};
    /* Rows of 15 (the scalar tail only) and of 1283 (vector lanes, where
     * the CPU has them, and a tail), gates spread over [-8, 8]. */
    for (int t = 0; t < 2; t++) {
        int64_t gn = t ? 1283 : 15, gs[2] = {3, 2 * gn}, gh[2] = {3, gn};
        float *gx = rand_buf((size_t)(6 * gn));
        for (int64_t i = 0; i < 6 * gn; i++)
            gx[i] *= 8.0f;
        sdw_tensor tg;
        up(&tg, 2, gs, gx);
        sdw_tensor_new(&ty, be, 2, gh, &e);
        rc = sdw_op_geglu(&tg, &ty, &e);
        got = download(&ty);
        double *ref = malloc((size_t)(3 * gn) * sizeof *ref);
        for (int64_t r = 0; r < 3; r++)
            for (int64_t i = 0; i < gn; i++) {
                double a = gx[r * 2 * gn + i], g = gx[r * 2 * gn + gn + i];
                ref[r * gn + i] = a * 0.5 * g * (1 + erf(g / sqrt(2.0)));
            }
        double err = max_rel(got, ref, (size_t)(3 * gn));
        tap_ok(rc == 0 && err < 1e-6, "geglu 3x%lld: rel err %.2e", (long long)gn, err);
        free(got), free(ref), free(gx), sdw_tensor_free(&ty), sdw_tensor_free(&tg);
    }

    sdw_tensor tv;
    up(&tv, 2, vs, x + 50);
    sdw_tensor_new(&ty, be, 4, xs, &e);
    rc = sdw_op_add_channel(&tx, &tv, &ty, &e);
    got = download(&ty);
    bad = rc != 0;
    for (int64_t i = 0; i < 90; i++)
        bad |= got[i] != x[i] + x[50 + i / 15];
    tap_ok(!bad, "add_channel");
    free(got);
    rc = sdw_op_scale(&tx, -0.5f, &ty, &e);
    got = download(&ty);
    bad = rc != 0;
    for (int64_t i = 0; i < 90; i++)
        bad |= got[i] != -0.5f * x[i];
    tap_ok(!bad, "scale");
    free(got), sdw_tensor_free(&ty), sdw_tensor_free(&tv);

    /* moments [1,2,... ] with logvar beyond both clamps */
    int64_t ms[3] = {2, 2, 3}, hs[3] = {2, 1, 3};
    float mom[12] = {0.5f, -1, 2, 40, -50, 0.3f, 1, 2, 3, -0.2f, 0.7f, -31};
    float noise[6] = {1, -1, 0.5f, 2, 0.25f, -3};
    sdw_tensor tm, tn;
    up(&tm, 3, ms, mom), up(&tn, 3, hs, noise);
    sdw_tensor_new(&tz, be, 3, hs, &e);
    rc = sdw_op_gaussian(&tm, &tn, 0.25f, &tz, &e);
    got = download(&tz);
    double gref[6];
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 3; i++) {
            double lv = fmin(fmax(mom[b * 6 + 3 + i], -30), 20);
            gref[b * 3 + i] = 0.25 * (mom[b * 6 + i] + exp(0.5 * lv) * noise[b * 3 + i]);
        }
    double err = max_rel(got, gref, 6);
    tap_ok(rc == 0 && err < 1e-6, "gaussian with clamped logvar: rel err %.2e", err);
    free(got), sdw_tensor_free(&tz), sdw_tensor_free(&tm), sdw_tensor_free(&tn);
    sdw_tensor_free(&tx);
    free(x);
}

/* Weights kept as halves (f16 files) must give the products of their exact
 * float32 values: compared with the same values loaded as float32, for
 * linear layers and convolutions over several converted row blocks. */
static void test_f16_weights(void)
{
    sdw_error e;
    int64_t m = 70, n = 600, k = 144;
    size_t nw = (size_t)(n * k);
    uint16_t *h = malloc(nw * sizeof *h);
    float *wf = malloc(nw * sizeof *wf), *x = rand_buf((size_t)(m * k)), *b = rand_buf((size_t)n);
    for (size_t i = 0; i < nw; i++) {
        h[i] = sdw_f32_to_f16(frand());
        wf[i] = sdw_f16_to_f32(h[i]);
    }
    sdw_tensor tx, tb, th, tf, y1, y2;
    int64_t sx[2] = {m, k}, sw[2] = {n, k}, sy[2] = {m, n};
    up(&tx, 2, sx, x), up(&tb, 1, &n, b), up(&tf, 2, sw, wf);
    int rc = sdw_tensor_weight_f16(&th, be, 2, sw, h, &e);
    tap_ok(rc == 0 && th.lowp, "the cpu backend keeps an f16 weight as halves");
    sdw_tensor_new(&y1, be, 2, sy, &e), sdw_tensor_new(&y2, be, 2, sy, &e);
    rc = sdw_op_linear(&tx, &th, &tb, &y1, &e) || sdw_op_linear(&tx, &tf, &tb, &y2, &e);
    float *g1 = download(&y1), *g2 = download(&y2);
    double *ref = malloc((size_t)(m * n) * sizeof *ref);
    for (size_t i = 0; i < (size_t)(m * n); i++)
        ref[i] = g2[i];
    double r = max_rel(g1, ref, (size_t)(m * n));
    tap_ok(rc == 0 && r < 1e-6, "linear with an f16 weight equals its float32 copy: rel err %.2e", r);
    free(g1), free(g2), free(ref);
    sdw_tensor_free(&y1), sdw_tensor_free(&y2), sdw_tensor_free(&tx);

    /* 1x1 (direct) and 3x3 convolutions, o = 600, c = 144 and 16, one image
     * (halves converted block by block) and two (converted once); the 3x3
     * ones through im2col (9x11: 30 tiles) and Winograd (24x22: 132). */
    for (int t = 0; t < 6; t++) {
        int kk = t < 2 ? 1 : 3, bs = 1 + t % 2, ih = t < 4 ? 9 : 24, iw = t < 4 ? 11 : 22;
        int64_t c = k / (kk * kk), xs[4] = {bs, c, ih, iw}, ws[4] = {n, c, kk, kk}, ys[4] = {bs, n, ih, iw};
        float *xi = rand_buf((size_t)(bs * c * ih * iw));
        sdw_tensor ti, hv, fv;
        up(&ti, 4, xs, xi);
        sdw_tensor_view(&hv, &th, 4, ws, &e), sdw_tensor_view(&fv, &tf, 4, ws, &e);
        sdw_tensor_new(&y1, be, 4, ys, &e), sdw_tensor_new(&y2, be, 4, ys, &e);
        sdw_conv2d_geom g = {1, kk / 2, kk / 2};
        rc = sdw_op_conv2d(&ti, &hv, &tb, g, &y1, &e) || sdw_op_conv2d(&ti, &fv, &tb, g, &y2, &e);
        size_t ny = (size_t)sdw_tensor_numel(&y1);
        g1 = download(&y1), g2 = download(&y2);
        ref = malloc(ny * sizeof *ref);
        for (size_t i = 0; i < ny; i++)
            ref[i] = g2[i];
        r = max_rel(g1, ref, ny);
        tap_ok(rc == 0 && r < 1e-6,
               "conv2d %dx%d over %dx%d, %d image(s), with an f16 weight equals its float32 copy: rel err %.2e", kk,
               kk, ih, iw, bs, r);
        free(g1), free(g2), free(ref), free(xi);
        sdw_tensor_free(&y1), sdw_tensor_free(&y2), sdw_tensor_free(&ti);
    }
    rc = sdw_op_add(&th, &tf, &tf, &e);
    tap_ok(rc == SDW_EINVAL, "an f16 weight is refused as an add operand: %s", e.msg);
    float one;
    rc = sdw_tensor_to_host(&th, &one, &e);
    tap_ok(rc == SDW_EINVAL, "an f16 weight is not read back as float32: %s", e.msg);
    sdw_tensor_free(&th), sdw_tensor_free(&tf), sdw_tensor_free(&tb);
    free(h), free(wf), free(x), free(b);
}

/* Blocks over glibc's mmap threshold are reused once freed, pages and all
 * (a fresh mapping would read as zeros), and a reused block holds whatever
 * it held: ops must not rely on zeroed memory. */
static void test_pool(void)
{
    sdw_error e;
    sdw_tensor a, b, c;
    int64_t big = 9 << 20, other = 10 << 20, small = 100;
    int rc = sdw_tensor_new(&a, be, 1, &big, &e);
    float *pa = a.data;
    int aligned = rc == 0 && ((uintptr_t)pa & 63) == 0;
    for (int64_t i = 0; rc == 0 && i < big; i += 4099)
        pa[i] = 1.5f;
    sdw_tensor_free(&a);
    rc = rc || sdw_tensor_new(&b, be, 1, &big, &e);
    int kept = rc == 0 && b.data == pa;
    for (int64_t i = 0; kept && i < big; i += 4099)
        kept = b.data[i] == 1.5f;
    tap_ok(kept, "a freed %lld-float block, pages and contents, serves the next request of its size",
           (long long)big);
    rc = sdw_tensor_new(&c, be, 1, &other, &e);
    aligned = aligned && rc == 0 && ((uintptr_t)c.data & 63) == 0 && c.data != b.data;
    sdw_tensor_free(&c);
    rc = sdw_tensor_new(&c, be, 1, &small, &e);
    aligned = aligned && rc == 0 && ((uintptr_t)c.data & 63) == 0;
    tap_ok(aligned, "pool and small blocks are 64-byte aligned and distinct");
    for (int64_t i = 0; i < big; i++)
        b.data[i] = (float)i;
    int same = 1;
    for (int64_t i = 0; i < big; i += 4099)
        same &= b.data[i] == (float)i;
    tap_ok(same, "a reused block is fully writable");
    sdw_tensor_free(&b), sdw_tensor_free(&c);
}

int main(void)
{
    sdw_error e;
    if (sdw_backend_cpu(&be, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
    test_linear(7, 5, 3, 1);
    test_linear(77, 96, 32, 1);
    test_linear(130, 64, 257, 0);
    test_layer_norm(77, 32);
    test_layer_norm(5, 768);
    test_attention(2, 77, 77, 4, 8, 1);
    test_attention(1, 77, 77, 1, 16, 1);
    test_attention(2, 300, 77, 2, 16, 0);  /* more queries than one block, cross-attention shape */
    test_attention(1, 600, 600, 2, 8, 1);  /* causal mask across query blocks */
    /* keys in blocks with a running softmax: a partial last block, and
     * query rows over more than one block */
    test_attention(2, 300, 1300, 2, 16, 0);
    test_attention(1, 64, 2048, 3, 8, 0);
    test_softmax_exp();
    test_act(SDW_ACT_SILU, "silu");
    test_act(SDW_ACT_GELU, "gelu");
    test_act(SDW_ACT_QUICK_GELU, "quick_gelu");
    test_embed();
    test_convs();
    /* The same convolutions with the Winograd path switched off: the 3x3
     * ones over many tiles then go through im2col, in several row blocks. */
    sdw_backend *wino = be;
    setenv("SDW_CPU_WINOGRAD", "0", 1);
    if (sdw_backend_cpu(&be, &e))
        tap_ok(0, "cpu backend without Winograd: %s", e.msg);
    else {
        test_convs();
        sdw_backend_destroy(be);
    }
    unsetenv("SDW_CPU_WINOGRAD");
    be = wino;
    test_group_norm(0);
    test_group_norm(1);
    test_image_misc();
    test_f16_weights();
    test_shape_errors();
    test_pool();
    sdw_backend_destroy(be);
    return tap_done();
}
