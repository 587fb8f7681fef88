/* Small image files made by the tests themselves (none is committed): PNGs
 * of any colour type and depth through libpng's low-level writer (no gAMA
 * chunk, as external tools write them), a PNG that only declares its size,
 * and JPEGs in any colour space libjpeg writes. Each returns a malloc'd
 * file and its length, or NULL. */
#ifndef SDW_TEST_IMAGE_FIXTURES_H
#define SDW_TEST_IMAGE_FIXTURES_H

#include <png.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <jpeglib.h>

typedef struct fx_buf {
    unsigned char *p;
    size_t n, cap;
} fx_buf;

static inline void fx_put(fx_buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static inline void fx_png_write(png_structp png, png_bytep data, size_t n)
{
    fx_put(png_get_io_ptr(png), data, n);
}

static inline void fx_png_flush(png_structp png)
{
}

/* Sample k of pixel (x, y) at full scale 2^depth - 1: a gradient that uses
 * the whole range, different in every channel. */
static inline unsigned fx_sample(int x, int y, int k, int w, int h, int depth)
{
    unsigned max = (1u << depth) - 1;
    unsigned v = k == 0 ? (unsigned)((uint64_t)x * max / (unsigned)(w > 1 ? w - 1 : 1))
               : k == 1 ? (unsigned)((uint64_t)y * max / (unsigned)(h > 1 ? h - 1 : 1))
                        : (unsigned)((uint64_t)(x + y) * max / (unsigned)(w + h > 2 ? w + h - 2 : 1));
    return k == 3 ? max - v : v;
}

/* A w x h PNG of color_type (PNG_COLOR_TYPE_GRAY, _GRAY_ALPHA, _RGB,
 * _RGB_ALPHA or _PALETTE) with depth-bit samples (8 or 16; 8 for palette). */
static inline unsigned char *fx_png(int w, int h, int depth, int color_type, size_t *len)
{
    fx_buf b = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    int ch = color_type == PNG_COLOR_TYPE_GRAY ? 1 : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
           : color_type == PNG_COLOR_TYPE_RGB ? 3 : color_type == PNG_COLOR_TYPE_RGB_ALPHA ? 4 : 1;
    size_t row_bytes = (size_t)w * ch * (depth / 8);
    unsigned char *row = malloc(row_bytes);
    if (!png || !info || !row || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(row);
        free(b.p);
        return NULL;
    }
    png_set_write_fn(png, &b, fx_png_write, fx_png_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[256];
        for (int i = 0; i < 256; i++)
            pal[i].red = (png_byte)i, pal[i].green = (png_byte)(255 - i), pal[i].blue = (png_byte)(i / 2);
        png_set_PLTE(png, info, pal, 256);
    }
    png_write_info(png, info);
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++)
            for (int k = 0; k < ch; k++) {
                unsigned v = fx_sample(x, y, ch == 2 && k == 1 ? 3 : k, w, h, depth);
                unsigned char *p = row + ((size_t)x * ch + k) * (depth / 8);
                if (depth == 16)
                    p[0] = (unsigned char)(v >> 8), p[1] = (unsigned char)v;
                else
                    p[0] = (unsigned char)v;
            }
        png_write_row(png, row);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    *len = b.n;
    return b.p;
}

static inline void fx_chunk(fx_buf *b, const char *type, const unsigned char *data, uint32_t n)
{
    unsigned char be[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                           (unsigned char)n};
    fx_put(b, be, 4);
    fx_put(b, type, 4);
    if (n)
        fx_put(b, data, n);
    uLong crc = crc32(0, (const Bytef *)type, 4);
    crc = crc32(crc, data, n);
    unsigned char c[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16), (unsigned char)(crc >> 8),
                          (unsigned char)crc};
    fx_put(b, c, 4);
}

/* A valid PNG header that declares w x h 8-bit RGB, then an IDAT of a few
 * bytes and IEND: what a decompression bomb or a lie looks like, about a
 * hundred bytes. */
static inline unsigned char *fx_png_declared(uint32_t w, uint32_t h, size_t *len)
{
    fx_buf b = {0};
    fx_put(&b, "\x89PNG\r\n\x1a\n", 8);
    unsigned char ihdr[13] = {(unsigned char)(w >> 24), (unsigned char)(w >> 16), (unsigned char)(w >> 8),
                              (unsigned char)w, (unsigned char)(h >> 24), (unsigned char)(h >> 16),
                              (unsigned char)(h >> 8), (unsigned char)h, 8, PNG_COLOR_TYPE_RGB, 0, 0, 0};
    fx_chunk(&b, "IHDR", ihdr, 13);
    unsigned char zero[16] = {0}, z[64];
    uLongf zn = sizeof z;
    compress(z, &zn, zero, sizeof zero);
    fx_chunk(&b, "IDAT", z, (uint32_t)zn);
    fx_chunk(&b, "IEND", NULL, 0);
    *len = b.n;
    return b.p;
}

typedef struct fx_jpeg_err {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
} fx_jpeg_err;

static inline void fx_jpeg_error(j_common_ptr c)
{
    longjmp(((fx_jpeg_err *)c->err)->jump, 1);
}

/* A w x h JPEG stored in colour space cs (JCS_GRAYSCALE, JCS_YCbCr, JCS_RGB,
 * JCS_CMYK or JCS_YCCK), from a gradient; scans > 0 writes a progressive
 * file of that many scans (at most 1 + 3 * 63, one coefficient band each),
 * 0 a baseline one. */
static inline unsigned char *fx_jpeg(int w, int h, J_COLOR_SPACE cs, int scans, size_t *len)
{
    struct jpeg_compress_struct c;
    fx_jpeg_err je;
    unsigned char *out = NULL;
    unsigned long n = 0;
    int in_ch = cs == JCS_GRAYSCALE ? 1 : cs == JCS_CMYK || cs == JCS_YCCK ? 4 : 3;
    unsigned char *row = malloc((size_t)w * in_ch);
    static jpeg_scan_info script[1 + 3 * 63];
    c.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = fx_jpeg_error;
    if (!row || setjmp(je.jump)) {
        jpeg_destroy_compress(&c);
        free(row);
        free(out);
        return NULL;
    }
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &out, &n);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
    c.input_components = in_ch;
    c.in_color_space = in_ch == 1 ? JCS_GRAYSCALE : in_ch == 4 ? JCS_CMYK : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_colorspace(&c, cs);
    if (scans > 0 && in_ch == 3) {
        script[0] = (jpeg_scan_info){3, {0, 1, 2}, 0, 0, 0, 0};
        int k = 1;
        for (int comp = 0; comp < 3; comp++)
            for (int band = 1; band <= 63; band++)
                script[k++] = (jpeg_scan_info){1, {comp}, band, band, 0, 0};
        c.scan_info = script;
        c.num_scans = scans < k ? scans : k;
    }
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        for (int x = 0; x < w; x++)
            for (int k = 0; k < in_ch; k++)
                row[x * in_ch + k] = (unsigned char)fx_sample(x, (int)c.next_scanline, k, w, h, 8);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    *len = n;
    return out;
}

#endif
