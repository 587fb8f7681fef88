/* The CPU backend: OpenBLAS for matrix products, OpenMP for everything that
 * is elementwise or per row. It is the numerical reference for the other
 * backends, so it favours plain float32 arithmetic in torch's order over
 * shortcuts; reductions accumulate in double to stay clear of torch's own
 * rounding. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

/* Query rows per block in attention: bounds the score buffer to
 * SDW_ATTN_QBLOCK x tk floats (4 MiB at 4096 keys) instead of tq x tk. */
#define SDW_ATTN_QBLOCK 256

static int cpu_alloc(sdw_backend *be, size_t n, float **p, sdw_error *e)
{
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!*p)
        return sdw_fail(e, SDW_ENOMEM, "out of memory allocating %zu bytes", bytes);
    return SDW_OK;
}

static void cpu_free(sdw_backend *be, float *p)
{
    free(p);
}

static int cpu_copy(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e)
{
    if (dst != src)
        memcpy(dst, src, n * sizeof(float));
    return SDW_OK;
}

static int cpu_linear(sdw_backend *be, const float *x, const float *w, const float *bias, float *y, int64_t m,
                      int64_t n, int64_t k, sdw_error *e)
{
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; i++)
            memcpy(y + i * n, bias, (size_t)n * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)m, (blasint)n, (blasint)k, 1.0f, x,
                (blasint)k, w, (blasint)k, beta, y, (blasint)n);
    return SDW_OK;
}

static int cpu_layer_norm(sdw_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                          int64_t rows, int64_t n, float eps, sdw_error *e)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double sum = 0.0, sq = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += xr[i];
        double mean = sum / (double)n;
        for (int64_t i = 0; i < n; i++) {
            double d = xr[i] - mean;
            sq += d * d;
        }
        float rstd = (float)(1.0 / sqrt(sq / (double)n + eps));
        float fmean = (float)mean;
        for (int64_t i = 0; i < n; i++)
            yr[i] = (xr[i] - fmean) * rstd * gamma[i] + beta[i];
    }
    return SDW_OK;
}

static void softmax_rows(float *s, int64_t rows, int64_t cols, int64_t row0, int causal)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        float *sr = s + i * cols;
        int64_t valid = causal ? row0 + i + 1 : cols;
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

static int cpu_attention(sdw_backend *be, const float *q, const float *k, const float *v, float *out, int64_t b,
                         int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal, sdw_error *e)
{
    int64_t c = heads * d;
    int64_t qblock = tq < SDW_ATTN_QBLOCK ? tq : SDW_ATTN_QBLOCK;
    float *s = NULL;
    int rc = cpu_alloc(be, (size_t)(qblock * tk), &s, e);
    if (rc)
        return rc;
    for (int64_t bi = 0; bi < b; bi++) {
        for (int64_t h = 0; h < heads; h++) {
            const float *qh = q + bi * tq * c + h * d;
            const float *kh = k + bi * tk * c + h * d;
            const float *vh = v + bi * tk * c + h * d;
            float *oh = out + bi * tq * c + h * d;
            for (int64_t r0 = 0; r0 < tq; r0 += qblock) {
                int64_t nr = tq - r0 < qblock ? tq - r0 : qblock;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nr, (blasint)tk, (blasint)d, scale,
                            qh + r0 * c, (blasint)c, kh, (blasint)c, 0.0f, s, (blasint)tk);
                softmax_rows(s, nr, tk, r0, causal);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nr, (blasint)d, (blasint)tk, 1.0f,
                            s, (blasint)tk, vh, (blasint)c, 0.0f, oh + r0 * c, (blasint)c);
            }
        }
    }
    free(s);
    return SDW_OK;
}

static int cpu_act(sdw_backend *be, const float *x, float *y, int64_t n, sdw_act act, sdw_error *e)
{
    switch (act) {
    case SDW_ACT_SILU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-x[i]));
        return SDW_OK;
    case SDW_ACT_GELU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
        return SDW_OK;
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

static void cpu_destroy(sdw_backend *be)
{
    free(be);
}

static const sdw_backend_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .linear = cpu_linear,
    .layer_norm = cpu_layer_norm,
    .attention = cpu_attention,
    .act = cpu_act,
    .add = cpu_add,
    .embed = cpu_embed,
    .destroy = cpu_destroy,
};

int sdw_backend_cpu(sdw_backend **out, sdw_error *e)
{
    sdw_backend *be = calloc(1, sizeof *be);
    if (!be)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    be->ops = &cpu_ops;
    *out = be;
    return SDW_OK;
}
