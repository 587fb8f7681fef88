#include "image/image.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

void sdw_image_free(sdw_image *img)
{
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

static int alloc_within(sdw_image *img, int64_t w, int64_t h, int channels, size_t max_pixels, sdw_error *e)
{
    if (max_pixels > SDW_IMAGE_MAX_PIXELS)
        max_pixels = SDW_IMAGE_MAX_PIXELS;
    if (w <= 0 || h <= 0)
        return sdw_fail(e, SDW_EINVAL, "image is %lldx%lld: no pixels", (long long)w, (long long)h);
    if ((uint64_t)w * (uint64_t)h > max_pixels)
        return sdw_fail(e, SDW_EINVAL, "image is %lldx%lld, %llu pixels, over the limit of %zu", (long long)w,
                        (long long)h, (unsigned long long)w * (unsigned long long)h, max_pixels);
    img->pixels = malloc((size_t)w * h * channels);
    if (!img->pixels)
        return sdw_fail(e, SDW_ENOMEM, "out of memory for a %lldx%lld image", (long long)w, (long long)h);
    img->width = (int)w, img->height = (int)h, img->channels = channels;
    return SDW_OK;
}

int sdw_image_alloc(sdw_image *img, int w, int h, int channels, sdw_error *e)
{
    return alloc_within(img, w, h, channels, SDW_IMAGE_MAX_PIXELS, e);
}

/* PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, which is what
 * diffusers applies to masks. */
static uint8_t luma(const uint8_t *rgb)
{
    return (uint8_t)((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

uint8_t sdw_image_grey_at(const sdw_image *img, size_t pixel)
{
    const uint8_t *px = img->pixels + pixel * img->channels;
    return img->channels == 1 ? px[0] : luma(px);
}

/* Replaces an RGB image by its grey version in place. */
static void to_grey(sdw_image *img)
{
    size_t n = (size_t)img->width * img->height;
    for (size_t i = 0; i < n; i++)
        img->pixels[i] = luma(img->pixels + 3 * i);
    img->channels = 1;
}

static int decode_png(sdw_image *img, const void *data, size_t len, size_t max_pixels, sdw_error *e)
{
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    /* This reads the chunks up to the first IDAT only: the size is known,
     * and refused when too large, before any pixel memory exists. */
    if (!png_image_begin_read_from_memory(&pi, data, len))
        return sdw_fail(e, SDW_EFORMAT, "broken PNG: %s", pi.message);
    /* RGBA then dropping alpha is what PIL's convert("RGB") does: no
     * compositing onto a background. */
    pi.format = PNG_FORMAT_RGBA;
    /* libpng takes 16-bit samples without a gAMA or sRGB chunk as linear
     * and brightens them on the way to 8 bits; PIL keeps their high byte.
     * Read as sRGB, they are only rescaled, within one level of PIL. */
    pi.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    int rc = alloc_within(img, (int64_t)pi.width, (int64_t)pi.height, 3, max_pixels, e);
    uint8_t *rgba = rc ? NULL : malloc(PNG_IMAGE_SIZE(pi));
    if (rc || !rgba) {
        png_image_free(&pi);
        free(rgba);
        sdw_image_free(img);
        return rc ? rc : sdw_fail(e, SDW_ENOMEM, "out of memory decoding a PNG");
    }
    if (!png_image_finish_read(&pi, NULL, rgba, 0, NULL)) {
        rc = sdw_fail(e, SDW_EFORMAT, "broken PNG: %s", pi.message);
        png_image_free(&pi);
        free(rgba);
        sdw_image_free(img);
        return rc;
    }
    size_t n = (size_t)img->width * img->height;
    for (size_t i = 0; i < n; i++)
        memcpy(img->pixels + 3 * i, rgba + 4 * i, 3);
    free(rgba);
    return SDW_OK;
}

typedef struct jpeg_err {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_error_exit(j_common_ptr cinfo)
{
    jpeg_err *je = (jpeg_err *)cinfo->err;
    je->mgr.format_message(cinfo, je->msg);
    longjmp(je->jump, 1);
}

/* Warnings are corrupt data libjpeg works around. The one that matters is
 * a file that ends early: libjpeg pads it with grey where PIL refuses it.
 * Its Huffman decoder reads ahead, so a file that lacks only the final EOI
 * marker cannot be told from one cut in its last bits, and is refused too. */
static void jpeg_message(j_common_ptr cinfo, int level)
{
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
        jpeg_error_exit(cinfo);
}

/* A progressive JPEG may hold any number of scans, each a pass over the
 * whole image, so a few kilobytes can cost minutes of decoding. Encoders
 * write about ten. */
#define JPEG_MAX_SCANS 100

static void jpeg_progress(j_common_ptr cinfo)
{
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->is_decompressor && d->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_err *je = (jpeg_err *)cinfo->err;
        snprintf(je->msg, sizeof je->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(je->jump, 1);
    }
}

static int decode_jpeg(sdw_image *img, const void *data, size_t len, size_t max_pixels, sdw_error *e)
{
    struct jpeg_decompress_struct cinfo;
    struct jpeg_progress_mgr progress = {.progress_monitor = jpeg_progress};
    jpeg_err je;
    cinfo.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = jpeg_error_exit;
    je.mgr.emit_message = jpeg_message;
    /* volatile: modified between setjmp and a possible longjmp */
    sdw_image *volatile out = img;
    if (setjmp(je.jump)) {
        jpeg_destroy_decompress(&cinfo);
        sdw_image_free(out);
        return sdw_fail(e, SDW_EFORMAT, "broken JPEG: %s", je.msg);
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &progress;
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    int rc = SDW_OK;
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK)
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "CMYK JPEG is not supported (convert it to RGB)");
    else if (cinfo.jpeg_color_space != JCS_GRAYSCALE && cinfo.jpeg_color_space != JCS_YCbCr &&
             cinfo.jpeg_color_space != JCS_RGB)
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "JPEG colour space %d is not supported (grey, YCbCr or RGB are)",
                      (int)cinfo.jpeg_color_space);
    else if (cinfo.data_precision != 8)
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "%d-bit JPEG is not supported (8-bit is)", cinfo.data_precision);
    if (!rc)
        rc = alloc_within(img, cinfo.image_width, cinfo.image_height, 3, max_pixels, e);
    if (rc) {
        jpeg_destroy_decompress(&cinfo);
        return rc;
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = img->pixels + (size_t)cinfo.output_scanline * img->width * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return SDW_OK;
}

int sdw_image_decode_max(sdw_image *img, const void *data, size_t len, int grey, size_t max_pixels,
                         sdw_error *e)
{
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *p = data;
    memset(img, 0, sizeof *img);
    int rc;
    if (len >= 8 && !memcmp(p, png_magic, 8))
        rc = decode_png(img, data, len, max_pixels, e);
    else if (len >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        rc = decode_jpeg(img, data, len, max_pixels, e);
    else
        return sdw_fail(e, SDW_EUNSUPPORTED, "not a PNG or JPEG image");
    if (!rc && grey)
        to_grey(img);
    return rc;
}

int sdw_image_decode(sdw_image *img, const void *data, size_t len, int grey, sdw_error *e)
{
    return sdw_image_decode_max(img, data, len, grey, SDW_IMAGE_MAX_PIXELS, e);
}

int sdw_image_load(sdw_image *img, const char *path, int grey, sdw_error *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return sdw_fail(e, SDW_ENOTFOUND, "%s: cannot open", path);
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = SDW_OK;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *nb = cap > ((size_t)256 << 20) ? NULL : realloc(buf, cap);
            if (!nb) {
                rc = sdw_fail(e, SDW_EINVAL, "%s: larger than 256 MiB", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                rc = sdw_fail(e, SDW_EIO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (!rc) {
        rc = sdw_image_decode(img, buf, len, grey, e);
        if (rc)
            sdw_fail_wrap(e, "%s", path);
    }
    free(buf);
    return rc;
}

typedef struct membuf {
    uint8_t *data;
    size_t len, cap;
    int failed;
} membuf;

static void png_mem_write(png_structp png, png_bytep data, size_t len)
{
    membuf *m = png_get_io_ptr(png);
    if (m->failed)
        return;
    if (m->len + len > m->cap) {
        size_t cap = m->cap ? m->cap : 1 << 16;
        while (cap < m->len + len)
            cap *= 2;
        uint8_t *nd = realloc(m->data, cap);
        if (!nd) {
            m->failed = 1;
            return;
        }
        m->data = nd, m->cap = cap;
    }
    memcpy(m->data + m->len, data, len);
    m->len += len;
}

static void png_mem_flush(png_structp png)
{
}

static void png_error_fn(png_structp png, png_const_charp msg)
{
    snprintf(png_get_error_ptr(png), 256, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warning_fn(png_structp png, png_const_charp msg)
{
}

int sdw_png_encode(const sdw_image *img, const char *const *text, size_t ntext, uint8_t **out, size_t *outlen,
                   sdw_error *e)
{
    char msg[256] = "";
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, msg, png_error_fn, png_warning_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_textp texts = ntext ? calloc(ntext, sizeof *texts) : NULL;
    if (!png || !info || (ntext && !texts)) {
        png_destroy_write_struct(&png, &info);
        free(texts);
        return sdw_fail(e, SDW_ENOMEM, "out of memory encoding PNG");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(texts);
        free(m.data);
        return sdw_fail(e, SDW_EIO, "PNG encoding failed: %s", msg);
    }
    png_set_write_fn(png, &m, png_mem_write, png_mem_flush);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 img->channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (size_t i = 0; i < ntext; i++) {
        texts[i].compression = PNG_TEXT_COMPRESSION_NONE;
        texts[i].key = (png_charp)text[2 * i];
        texts[i].text = (png_charp)text[2 * i + 1];
    }
    if (ntext)
        png_set_text(png, info, texts, (int)ntext);
    png_write_info(png, info);
    for (int y = 0; y < img->height; y++)
        png_write_row(png, img->pixels + (size_t)y * img->width * img->channels);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(texts);
    if (m.failed) {
        free(m.data);
        return sdw_fail(e, SDW_ENOMEM, "out of memory encoding PNG");
    }
    *out = m.data;
    *outlen = m.len;
    return SDW_OK;
}

int sdw_png_save(const sdw_image *img, const char *path, const char *const *text, size_t ntext, sdw_error *e)
{
    uint8_t *buf;
    size_t len;
    int rc = sdw_png_encode(img, text, ntext, &buf, &len, e);
    if (rc)
        return rc;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(buf);
        return sdw_fail(e, SDW_EIO, "%s: cannot create", path);
    }
    size_t put = fwrite(buf, 1, len, f);
    free(buf);
    if (fclose(f) != 0 || put != len)
        return sdw_fail(e, SDW_EIO, "%s: write failed", path);
    return SDW_OK;
}
