#include "image/image.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

void sdw_image_free(sdw_image *img)
{
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

int sdw_image_alloc(sdw_image *img, int w, int h, int channels, sdw_error *e)
{
    if (w <= 0 || h <= 0 || (int64_t)w * h > SDW_IMAGE_MAX_PIXELS)
        return sdw_fail(e, SDW_EINVAL, "image size %dx%d outside 1..%d pixels", w, h, SDW_IMAGE_MAX_PIXELS);
    img->pixels = malloc((size_t)w * h * channels);
    if (!img->pixels)
        return sdw_fail(e, SDW_ENOMEM, "out of memory for a %dx%d image", w, h);
    img->width = w, img->height = h, img->channels = channels;
    return SDW_OK;
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

static int decode_png(sdw_image *img, const void *data, size_t len, sdw_error *e)
{
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&pi, data, len))
        return sdw_fail(e, SDW_EFORMAT, "broken PNG: %s", pi.message);
    /* RGBA then dropping alpha is what PIL's convert("RGB") does: no
     * compositing onto a background. */
    pi.format = PNG_FORMAT_RGBA;
    int rc = sdw_image_alloc(img, (int)pi.width, (int)pi.height, 3, e);
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

static void jpeg_quiet(j_common_ptr cinfo, int level)
{
}

static int decode_jpeg(sdw_image *img, const void *data, size_t len, sdw_error *e)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_err je;
    cinfo.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = jpeg_error_exit;
    je.mgr.emit_message = jpeg_quiet;
    /* volatile: modified between setjmp and a possible longjmp */
    sdw_image *volatile out = img;
    if (setjmp(je.jump)) {
        jpeg_destroy_decompress(&cinfo);
        sdw_image_free(out);
        return sdw_fail(e, SDW_EFORMAT, "broken JPEG: %s", je.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    int rc = sdw_image_alloc(img, (int)cinfo.image_width, (int)cinfo.image_height, 3, e);
    if (rc) {
        jpeg_destroy_decompress(&cinfo);
        return rc;
    }
    jpeg_start_decompress(&cinfo);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = img->pixels + (size_t)cinfo.output_scanline * img->width * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return SDW_OK;
}

int sdw_image_decode(sdw_image *img, const void *data, size_t len, int grey, sdw_error *e)
{
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *p = data;
    memset(img, 0, sizeof *img);
    int rc;
    if (len >= 8 && !memcmp(p, png_magic, 8))
        rc = decode_png(img, data, len, e);
    else if (len >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        rc = decode_jpeg(img, data, len, e);
    else
        return sdw_fail(e, SDW_EUNSUPPORTED, "not a PNG or JPEG image");
    if (!rc && grey)
        to_grey(img);
    return rc;
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
