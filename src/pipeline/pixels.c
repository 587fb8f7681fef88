#include "pipeline/pixels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Weights of a triangle filter resampling n source samples to m: for each
 * output sample, a window [first, first+count) and its normalised weights. */
typedef struct taps {
    int *first, *count;
    float *w;
    int width;
} taps;

static int taps_make(taps *t, int n, int m)
{
    double scale = (double)n / m, support = scale > 1 ? scale : 1;
    t->width = (int)ceil(support) * 2 + 1;
    t->first = malloc((size_t)m * sizeof *t->first);
    t->count = malloc((size_t)m * sizeof *t->count);
    t->w = malloc((size_t)m * t->width * sizeof *t->w);
    if (!t->first || !t->count || !t->w)
        return -1;
    for (int i = 0; i < m; i++) {
        double center = (i + 0.5) * scale;
        int lo = (int)floor(center - support), hi = (int)ceil(center + support);
        lo = lo < 0 ? 0 : lo;
        hi = hi > n ? n : hi;
        if (hi - lo > t->width)
            hi = lo + t->width;
        double sum = 0;
        float *w = t->w + (size_t)i * t->width;
        for (int j = lo; j < hi; j++) {
            double x = fabs((j + 0.5 - center) / support);
            w[j - lo] = (float)(x < 1 ? 1 - x : 0);
            sum += w[j - lo];
        }
        for (int j = lo; j < hi; j++)
            w[j - lo] = sum > 0 ? (float)(w[j - lo] / sum) : 0;
        t->first[i] = lo;
        t->count[i] = hi - lo;
    }
    return 0;
}

static void taps_free(taps *t)
{
    free(t->first), free(t->count), free(t->w);
}

int sdw_image_resize(const sdw_image *src, int w, int h, sdw_image *dst, sdw_error *e)
{
    memset(dst, 0, sizeof *dst);
    int c = src->channels, rc;
    if ((rc = sdw_image_alloc(dst, w, h, c, e)))
        return rc;
    taps tx = {0}, ty = {0};
    float *mid = malloc((size_t)src->height * w * c * sizeof *mid);
    if (!mid || taps_make(&tx, src->width, w) || taps_make(&ty, src->height, h)) {
        free(mid), taps_free(&tx), taps_free(&ty), sdw_image_free(dst);
        return sdw_fail(e, SDW_ENOMEM, "out of memory resizing an image");
    }
#pragma omp parallel for schedule(static)
    for (int y = 0; y < src->height; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                float s = 0;
                const float *wt = tx.w + (size_t)x * tx.width;
                for (int j = 0; j < tx.count[x]; j++)
                    s += wt[j] * src->pixels[((size_t)y * src->width + tx.first[x] + j) * c + k];
                mid[((size_t)y * w + x) * c + k] = s;
            }
#pragma omp parallel for schedule(static)
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                float s = 0;
                const float *wt = ty.w + (size_t)y * ty.width;
                for (int j = 0; j < ty.count[y]; j++)
                    s += wt[j] * mid[((size_t)(ty.first[y] + j) * w + x) * c + k];
                s = s < 0 ? 0 : s > 255 ? 255 : s;
                dst->pixels[((size_t)y * w + x) * c + k] = (uint8_t)lrintf(s);
            }
    free(mid), taps_free(&tx), taps_free(&ty);
    return SDW_OK;
}

void sdw_image_to_float(const sdw_image *img, float *dst)
{
    size_t plane = (size_t)img->width * img->height;
    for (int k = 0; k < img->channels; k++)
        for (size_t i = 0; i < plane; i++)
            dst[k * plane + i] = 2.0f * (img->pixels[i * img->channels + k] / 255.0f) - 1.0f;
}

int sdw_image_from_float(sdw_image *img, const float *src, int width, int height, sdw_error *e)
{
    memset(img, 0, sizeof *img);
    int rc = sdw_image_alloc(img, width, height, 3, e);
    if (rc)
        return rc;
    size_t plane = (size_t)width * height;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < plane; i++) {
            float v = src[k * plane + i] / 2.0f + 0.5f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            img->pixels[i * 3 + k] = (uint8_t)rintf(v * 255.0f);
        }
    return SDW_OK;
}

/* Least-squares fit of decoded RGB on the four SD 1.x latent channels, a
 * commonly used approximation: good enough to watch an image form. */
static const float preview_map[4][3] = {
    {0.298f, 0.207f, 0.208f},
    {0.187f, 0.286f, 0.173f},
    {-0.158f, 0.189f, 0.264f},
    {-0.184f, -0.271f, -0.473f},
};

int sdw_latent_preview(sdw_image *img, const float *latents, int width, int height, sdw_error *e)
{
    memset(img, 0, sizeof *img);
    int rc = sdw_image_alloc(img, width, height, 3, e);
    if (rc)
        return rc;
    size_t plane = (size_t)width * height;
    for (size_t i = 0; i < plane; i++)
        for (int k = 0; k < 3; k++) {
            float v = 0;
            for (int c = 0; c < 4; c++)
                v += latents[c * plane + i] * preview_map[c][k];
            v = (v + 1.0f) * 127.5f;
            img->pixels[i * 3 + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lrintf(v));
        }
    return SDW_OK;
}
