/* The CPU backend's convolutions: 1x1 as a product with the image itself,
 * 3x3 stride-1 over enough tiles by Winograd F(2x2, 3x3), everything else by
 * im2col in blocks of output rows and one product per block. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_internal.h"

/* im2col scratch per convolution, in floats (16 MiB): output rows are taken
 * in blocks whose column matrix fits, so that a 3x3 conv at 512x512 does not
 * need a 1.2 GB column buffer while each sgemm stays wide enough to run at
 * full speed. */
#define SDW_CONV_SCRATCH (4 << 20)
/* Images whose products share one conversion of a half weight. */
#define SDW_CONV_BATCH 4

/* Column matrix rows [k][nr*ow] for output rows oy0..oy0+nr of one image. */
static void im2col(const float *x, float *col, int64_t c, int64_t h, int64_t wd, int64_t kh, int64_t kw,
                   int64_t ow, int64_t oy0, int64_t nr, int stride, int pad_t, int pad_l)
{
    int64_t k = c * kh * kw, ncols = nr * ow;
#pragma omp parallel for schedule(static)
    for (int64_t ki = 0; ki < k; ki++) {
        int64_t ci = ki / (kh * kw), ky = ki / kw % kh, kx = ki % kw;
        const float *xc = x + ci * h * wd;
        float *dst = col + ki * ncols;
        /* Output columns ox whose input column ix = ox*stride - pad_l + kx is inside. */
        int64_t lo = 0, hi = ow;
        while (lo < ow && lo * stride - pad_l + kx < 0)
            lo++;
        while (hi > lo && (hi - 1) * stride - pad_l + kx >= wd)
            hi--;
        for (int64_t r = 0; r < nr; r++, dst += ow) {
            int64_t iy = (oy0 + r) * stride - pad_t + ky;
            if (iy < 0 || iy >= h) {
                memset(dst, 0, (size_t)ow * sizeof *dst);
                continue;
            }
            const float *src = xc + iy * wd - pad_l + kx;
            for (int64_t ox = 0; ox < lo; ox++)
                dst[ox] = 0.0f;
            if (stride == 1)
                memcpy(dst + lo, src + lo, (size_t)(hi - lo) * sizeof *dst);
            else
                for (int64_t ox = lo; ox < hi; ox++)
                    dst[ox] = src[ox * stride];
            for (int64_t ox = hi; ox < ow; ox++)
                dst[ox] = 0.0f;
        }
    }
}

/* Winograd F(2x2, 3x3) for the 3x3, stride-1, pad-1 convolutions over many
 * pixels (most of a UNet step and nearly all of the VAE decoder): each 2x2
 * output tile is A^T [(G g G^T) . (B^T d B)] A of its 4x4 input patch d, so
 * the product over channels becomes 16 products [o, c] x [c, tiles], 16
 * multiplications per tile and channel pair where the column matrix takes
 * 36. The transforms only add, subtract and halve, which keeps the rounding
 * within a few ulps of the direct sum (tests/test_ops bounds both paths by
 * the same 1e-5 against a double reference). Few tiles do not pay for
 * transforming the weights, and products that narrow run slowly: those go
 * through im2col. */
#define SDW_WINO_MIN_TILES 128
/* Floats per transformed block (inputs, weights, products): 4 MiB each,
 * the size of this Xeon's two L2 caches (2, 8 and 16 MiB measured slower). */
#define SDW_WINO_BLOCK (1 << 20)
/* Floats for the side transformed whole (64 MiB). */
#define SDW_WINO_ALL (16 << 20)

/* Floats between two of the 16 transformed planes: whole cache lines and
 * one more, so that the planes, written and read side by side, do not share
 * cache sets (a multiple of 4 KiB apart, they would). */
static int64_t wino_plane(int64_t n)
{
    return (n + 15) / 16 * 16 + 16;
}

/* Floats of scratch per thread: the input and output transforms of rows of
 * tw tiles, or one output channel's weights (c x 3 x 3) as float32. */
static int64_t wino_scratch(int64_t tw, int64_t c)
{
    int64_t rows = 8 * (2 * tw + 2) + 2 * (tw + 1);
    return rows > 9 * c ? rows : 9 * c;
}

/* v[xi][ci][j] = (B^T d B)[xi] for the patches of tile rows r0..r0+nr of
 * the batch (th tile rows an image, tw tiles a row; j = (r - r0) tw + tx).
 * Per channel and tile row: the four input rows, zero-padded, are combined
 * along the columns first (B^T d), then split into even and odd columns, so
 * that every step runs along a row of tiles. */
static void wino_input(const float *x, float *v, int64_t xs, float *scratch, int64_t ts, int64_t c, int64_t h,
                       int64_t wd, int64_t th, int64_t tw, int64_t r0, int64_t nr)
{
    int64_t pw = 2 * tw + 2;
#pragma omp parallel
    {
        float *p = scratch + omp_get_thread_num() * ts, *sr = p + 4 * pw, *ev = p + 8 * pw,
              *od = ev + tw + 1;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < c * nr; k++) {
            int64_t ci = k / nr, r = r0 + k % nr, img = r / th, ty = r % th;
            const float *xc = x + (img * c + ci) * h * wd;
            for (int a = 0; a < 4; a++) {
                int64_t iy = 2 * ty - 1 + a;
                float *pa = p + a * pw;
                memset(pa, 0, (size_t)pw * sizeof *pa);
                if (iy >= 0 && iy < h)
                    memcpy(pa + 1, xc + iy * wd, (size_t)wd * sizeof *pa);
            }
#pragma omp simd
            for (int64_t i = 0; i < pw; i++) {
                sr[i] = p[i] - p[2 * pw + i];
                sr[pw + i] = p[pw + i] + p[2 * pw + i];
                sr[2 * pw + i] = p[2 * pw + i] - p[pw + i];
                sr[3 * pw + i] = p[pw + i] - p[3 * pw + i];
            }
            float *dst = v + ci * nr * tw + (k % nr) * tw;
            for (int a = 0; a < 4; a++) {
                const float *sa = sr + a * pw;
#pragma omp simd
                for (int64_t i = 0; i <= tw; i++)
                    ev[i] = sa[2 * i], od[i] = sa[2 * i + 1];
                float *d0 = dst + 4 * a * xs, *d1 = d0 + xs, *d2 = d1 + xs, *d3 = d2 + xs;
#pragma omp simd
                for (int64_t i = 0; i < tw; i++) {
                    d0[i] = ev[i] - ev[i + 1];
                    d1[i] = od[i] + ev[i + 1];
                    d2[i] = ev[i + 1] - od[i];
                    d3[i] = od[i] - od[i + 1];
                }
            }
        }
    }
}

/* u[xi][oi][ci] = (G g G^T)[xi] for output channels o0..o0+no; half
 * weights are converted a channel at a time (F16C) into the scratch. */
static void wino_weight(const float *w, int w_lowp, float *u, int64_t us, float *scratch, int64_t ts, int64_t o0,
                        int64_t no, int64_t c)
{
#pragma omp parallel for schedule(static)
    for (int64_t oi = 0; oi < no; oi++) {
        float *f = scratch + omp_get_thread_num() * ts;
        if (w_lowp)
            sdw_cpu_halves_to_f32((const uint16_t *)w + (o0 + oi) * c * 9, f, c * 9);
        const float *wo = w_lowp ? f : w + (o0 + oi) * c * 9;
#pragma omp simd
        for (int64_t ci = 0; ci < c; ci++) {
            const float *g = wo + ci * 9;
            float s[4][3];
            for (int q = 0; q < 3; q++) {
                s[0][q] = g[q];
                s[1][q] = 0.5f * (g[q] + g[3 + q] + g[6 + q]);
                s[2][q] = 0.5f * (g[q] - g[3 + q] + g[6 + q]);
                s[3][q] = g[6 + q];
            }
            float *dst = u + oi * c + ci;
            for (int a = 0; a < 4; a++) {
                dst[(4 * a + 0) * us] = s[a][0];
                dst[(4 * a + 1) * us] = 0.5f * (s[a][0] + s[a][1] + s[a][2]);
                dst[(4 * a + 2) * us] = 0.5f * (s[a][0] - s[a][1] + s[a][2]);
                dst[(4 * a + 3) * us] = s[a][2];
            }
        }
    }
}

/* y (+)= A^T m A for output channels o0..o0+no and tile rows r0..r0+nr,
 * the tiles' parts inside the oh x ow image; along rows of tiles, as the
 * input transform. */
static void wino_output(const float *m, int64_t ms, float *scratch, int64_t ts, float *y, int add, int64_t o0,
                        int64_t no, int64_t o, int64_t oh, int64_t ow, int64_t th, int64_t tw, int64_t r0, int64_t nr)
{
#pragma omp parallel
    {
        float *rr = scratch + omp_get_thread_num() * ts, *v0 = rr + 8 * tw, *v1 = v0 + tw;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < no * nr; k++) {
            int64_t oi = k / nr, r = r0 + k % nr, img = r / th, ty = r % th;
            const float *src = m + oi * nr * tw + (k % nr) * tw;
            for (int q = 0; q < 4; q++) {
                const float *m0 = src + q * ms, *m1 = m0 + 4 * ms, *m2 = m1 + 4 * ms, *m3 = m2 + 4 * ms;
                float *ra = rr + q * tw, *rb = rr + (4 + q) * tw;
#pragma omp simd
                for (int64_t i = 0; i < tw; i++) {
                    ra[i] = m0[i] + m1[i] + m2[i];
                    rb[i] = m1[i] - m2[i] - m3[i];
                }
            }
            float *yc = y + (img * o + o0 + oi) * oh * ow;
            for (int a = 0; a < 2 && 2 * ty + a < oh; a++) {
                const float *q0 = rr + 4 * a * tw, *q1 = q0 + tw, *q2 = q1 + tw, *q3 = q2 + tw;
#pragma omp simd
                for (int64_t i = 0; i < tw; i++) {
                    v0[i] = q0[i] + q1[i] + q2[i];
                    v1[i] = q1[i] - q2[i] - q3[i];
                }
                float *row = yc + (2 * ty + a) * ow;
                int64_t full = ow / 2;
                if (add)
#pragma omp simd
                    for (int64_t i = 0; i < full; i++)
                        row[2 * i] += v0[i], row[2 * i + 1] += v1[i];
                else
#pragma omp simd
                    for (int64_t i = 0; i < full; i++)
                        row[2 * i] = v0[i], row[2 * i + 1] = v1[i];
                if (ow & 1)
                    row[ow - 1] = add ? row[ow - 1] + v0[full] : v0[full];
            }
        }
    }
}

/* Blocks for a Winograd convolution: tile rows rb at a time, output
 * channels ob at a time. Each transform should run once: all the tiles'
 * inputs are transformed at once where there are fewer tiles than output
 * channels (ob then bounds the weights' and products' blocks), else all the
 * weights (rb then bounds the inputs' and products' blocks). 0 when that
 * side would exceed SDW_WINO_ALL floats or there are too few tiles. */
static int wino_plan(int64_t b, int64_t c, int64_t h, int64_t wd, int64_t o, int64_t *rb, int64_t *ob)
{
    int64_t tw = (wd + 1) / 2, rows = b * ((h + 1) / 2), tiles = rows * tw;
    if (tiles < SDW_WINO_MIN_TILES)
        return 0;
    if (tiles <= o) {
        if (16 * c * tiles > SDW_WINO_ALL)
            return 0;
        int64_t n = SDW_WINO_BLOCK / (16 * (c > tiles ? c : tiles));
        *rb = rows;
        *ob = n < 16 ? 16 : n > o ? o : n;
    } else {
        if (16 * o * c > SDW_WINO_ALL)
            return 0;
        int64_t n = SDW_WINO_BLOCK / (16 * (c > o ? c : o) * tw);
        *ob = o;
        *rb = n < 1 ? 1 : n > rows ? rows : n;
    }
    return 1;
}

static int conv3x3_winograd(sdw_backend *be, const float *x, const float *w, int w_lowp, float *y, int64_t b,
                            int64_t c, int64_t h, int64_t wd, int64_t o, int64_t rb, int64_t ob, int add,
                            sdw_error *e)
{
    int64_t th = (h + 1) / 2, tw = (wd + 1) / 2, rows = b * th;
    int64_t vs = wino_plane(c * rb * tw), us = wino_plane(ob * c), ms = wino_plane(ob * rb * tw);
    int64_t ts = wino_scratch(tw, c);
    float *v = NULL, *u = NULL, *m = NULL, *t = NULL;
    int rc = sdw_cpu_alloc(be, (size_t)(16 * vs), &v, e);
    if (!rc)
        rc = sdw_cpu_alloc(be, (size_t)(16 * us), &u, e);
    if (!rc)
        rc = sdw_cpu_alloc(be, (size_t)(16 * ms), &m, e);
    if (!rc)
        rc = sdw_cpu_alloc(be, (size_t)(omp_get_max_threads() * ts), &t, e);
    for (int64_t r0 = 0; !rc && r0 < rows; r0 += rb) {
        int64_t nr = rows - r0 < rb ? rows - r0 : rb, nt = nr * tw;
        wino_input(x, v, vs, t, ts, c, h, wd, th, tw, r0, nr);
        for (int64_t o0 = 0; o0 < o; o0 += ob) {
            int64_t no = o - o0 < ob ? o - o0 : ob;
            if (ob < o || r0 == 0)
                wino_weight(w, w_lowp, u, us, t, ts, o0, no, c);
#pragma omp parallel for schedule(static)
            for (int xi = 0; xi < 16; xi++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)no, (blasint)nt, (blasint)c, 1.0f,
                            u + xi * us, (blasint)c, v + xi * vs, (blasint)nt, 0.0f, m + xi * ms, (blasint)nt);
            wino_output(m, ms, t, ts, y, add, o0, no, o, h, wd, th, tw, r0, nr);
        }
    }
    sdw_cpu_free(be, t);
    sdw_cpu_free(be, m);
    sdw_cpu_free(be, u);
    sdw_cpu_free(be, v);
    return rc;
}

int sdw_cpu_conv2d(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y, int64_t b,
                   int64_t c, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw, int64_t oh, int64_t ow,
                   int stride, int pad_t, int pad_l, sdw_error *e)
{
    int64_t k = c * kh * kw, npix = oh * ow;
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < b * o; r++)
            for (int64_t i = 0; i < npix; i++)
                y[r * npix + i] = bias[r % o];
        beta = 1.0f;
    }
    int64_t wrb, wob;
    if (sdw_cpu_winograd(be) && kh == 3 && kw == 3 && stride == 1 && pad_t == 1 && pad_l == 1 &&
        oh == h && ow == wd && wino_plan(b, c, h, wd, o, &wrb, &wob))
        return conv3x3_winograd(be, x, w, w_lowp, y, b, c, h, wd, o, wrb, wob, bias != NULL, e);
    /* A pointwise conv is a product with the image itself: no copy. */
    if (kh == 1 && kw == 1 && stride == 1 && pad_t == 0 && pad_l == 0 && oh == h && ow == wd) {
        if (!w_lowp) {
            for (int64_t bi = 0; bi < b; bi++)
                sdw_cpu_gemm(CblasNoTrans, CblasNoTrans, o, npix, c, 1.0f, w, c, x + bi * c * npix, npix, beta,
                     y + bi * o * npix, npix);
            return SDW_OK;
        }
        int rc = SDW_OK;
        for (int64_t b0 = 0; !rc && b0 < b; b0 += SDW_CONV_BATCH) {
            int nx = b - b0 < SDW_CONV_BATCH ? (int)(b - b0) : SDW_CONV_BATCH;
            const float *xs[SDW_CONV_BATCH];
            float *ys[SDW_CONV_BATCH];
            for (int i = 0; i < nx; i++)
                xs[i] = x + (b0 + i) * c * npix, ys[i] = y + (b0 + i) * o * npix;
            rc = sdw_cpu_gemm_f16w(be, 1, (const uint16_t *)w, o, c, nx, xs, npix, npix, beta, ys, npix, e);
        }
        return rc;
    }
    /* Output rows in blocks whose column matrices, for up to SDW_CONV_BATCH
     * images at once where they fit (so that a half weight is converted once
     * for them all), stay within the scratch. */
    int64_t nimg = w_lowp && b > 1 && SDW_CONV_SCRATCH / ((b < SDW_CONV_BATCH ? b : SDW_CONV_BATCH) * k * ow) >= 1
                       ? (b < SDW_CONV_BATCH ? b : SDW_CONV_BATCH)
                       : 1;
    int64_t rb = SDW_CONV_SCRATCH / (nimg * k * ow);
    rb = rb < 1 ? 1 : rb > oh ? oh : rb;
    float *col = NULL;
    int rc = sdw_cpu_alloc(be, (size_t)(nimg * k * rb * ow), &col, e);
    if (rc)
        return rc;
    for (int64_t b0 = 0; !rc && b0 < b; b0 += nimg) {
        int nx = b - b0 < nimg ? (int)(b - b0) : (int)nimg;
        for (int64_t oy0 = 0; !rc && oy0 < oh; oy0 += rb) {
            int64_t nr = oh - oy0 < rb ? oh - oy0 : rb;
            const float *xs[SDW_CONV_BATCH];
            float *ys[SDW_CONV_BATCH];
            for (int i = 0; i < nx; i++) {
                float *ci = col + i * k * nr * ow;
                im2col(x + (b0 + i) * c * h * wd, ci, c, h, wd, kh, kw, ow, oy0, nr, stride, pad_t, pad_l);
                xs[i] = ci, ys[i] = y + (b0 + i) * o * npix + oy0 * ow;
            }
            if (w_lowp)
                rc = sdw_cpu_gemm_f16w(be, 1, (const uint16_t *)w, o, k, nx, xs, nr * ow, nr * ow, beta, ys, npix, e);
            else
                sdw_cpu_gemm(CblasNoTrans, CblasNoTrans, o, nr * ow, k, 1.0f, w, k, xs[0], nr * ow, beta, ys[0], npix);
        }
    }
    sdw_cpu_free(be, col);
    return rc;
}
