/* The CPU backend's kernels against plain double-precision loops on random
 * inputs, and the shape checks of the op layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "tensor.h"

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
    test_act(SDW_ACT_SILU, "silu");
    test_act(SDW_ACT_GELU, "gelu");
    test_act(SDW_ACT_QUICK_GELU, "quick_gelu");
    test_embed();
    test_shape_errors();
    sdw_backend_destroy(be);
    return tap_done();
}
