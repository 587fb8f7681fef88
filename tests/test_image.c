/* PNG and JPEG decoding, PNG encoding with tEXt, resizing, the pixel/float
 * conversions diffusers uses, the colour types and sizes decoding accepts
 * or refuses, and the error paths for broken input. */
#include <png.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "image/image.h"
#include "image_fixtures.h"
#include "pipeline/pixels.h"
#include "tap.h"

static sdw_image gradient(int w, int h)
{
    sdw_image img = {w, h, 3, malloc((size_t)w * h * 3)};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = img.pixels + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(x * 255 / (w - 1)), p[1] = (uint8_t)(y * 255 / (h - 1)), p[2] = (uint8_t)((x + y) & 255);
        }
    return img;
}

static int contains(const uint8_t *buf, size_t len, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= len; i++)
        if (!memcmp(buf + i, s, n))
            return 1;
    return 0;
}

static void test_png_roundtrip(void)
{
    sdw_image img = gradient(37, 21), back;
    const char *text[] = {"parameters", "a cat; steps 20; seed 42", "Software", "sdworker"};
    uint8_t *png;
    size_t len;
    sdw_error e;
    int rc = sdw_png_encode(&img, text, 2, &png, &len, &e);
    tap_ok(rc == 0 && contains(png, len, "tEXtparameters") && contains(png, len, "seed 42"),
           "PNG encodes with tEXt chunks");
    rc = sdw_image_decode(&back, png, len, 0, &e);
    tap_ok(rc == 0 && back.width == 37 && back.height == 21 && back.channels == 3 &&
               !memcmp(back.pixels, img.pixels, (size_t)37 * 21 * 3),
           "PNG decodes back to the same pixels");
    sdw_image_free(&back);
    rc = sdw_image_decode(&back, png, len / 2, 0, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "PNG"), "a truncated PNG is an error: %s", e.msg);
    if (!rc)
        sdw_image_free(&back);
    free(png);
    sdw_image_free(&img);
}

/* An RGBA PNG made with libpng's simplified API. */
static void test_png_alpha_and_grey(void)
{
    uint8_t rgba[2 * 4] = {200, 100, 50, 0, 10, 20, 30, 128};
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = 2, pi.height = 1, pi.format = PNG_FORMAT_RGBA;
    png_alloc_size_t len = 0;
    png_image_write_to_memory(&pi, NULL, &len, 0, rgba, 0, NULL);
    uint8_t *buf = malloc(len);
    png_image_write_to_memory(&pi, buf, &len, 0, rgba, 0, NULL);
    sdw_image img, grey;
    sdw_error e;
    int rc = sdw_image_decode(&img, buf, len, 0, &e);
    tap_ok(rc == 0 && img.pixels[0] == 200 && img.pixels[1] == 100 && img.pixels[2] == 50 && img.pixels[3] == 10,
           "alpha is dropped, not composited (PIL's convert(\"RGB\"))");
    rc = sdw_image_decode(&grey, buf, len, 1, &e);
    /* PIL: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 */
    tap_ok(rc == 0 && grey.channels == 1 && grey.pixels[0] == 124 && grey.pixels[1] == 18,
           "grey is PIL's ITU-R 601-2 luma: %d %d", grey.pixels[0], grey.pixels[1]);
    sdw_image_free(&img), sdw_image_free(&grey);
    free(buf);
}

static void test_jpeg(void)
{
    sdw_image img = gradient(64, 48), back;
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &buf, &len);
    c.image_width = 64, c.image_height = 48, c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = img.pixels + (size_t)c.next_scanline * 64 * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    sdw_error e;
    int rc = sdw_image_decode(&back, buf, len, 0, &e);
    int maxdiff = 0;
    for (size_t i = 0; rc == 0 && i < (size_t)64 * 48 * 3; i++) {
        int d = abs(back.pixels[i] - img.pixels[i]);
        maxdiff = d > maxdiff ? d : maxdiff;
    }
    tap_ok(rc == 0 && back.width == 64 && back.height == 48 && maxdiff < 24,
           "JPEG decodes (max pixel difference at quality 95: %d)", maxdiff);
    if (!rc)
        sdw_image_free(&back);
    rc = sdw_image_decode(&back, buf, 200, 0, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "JPEG"), "a truncated JPEG is an error: %s", e.msg);
    free(buf);
    sdw_image_free(&img);
}

static void test_errors(void)
{
    sdw_image img;
    sdw_error e;
    int rc = sdw_image_decode(&img, "GIF89a....", 10, 0, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "not a PNG or JPEG"), "other formats are refused: %s", e.msg);
    rc = sdw_image_decode(&img, "", 0, 0, &e);
    tap_ok(rc == SDW_EUNSUPPORTED, "empty input is refused");
    rc = sdw_image_load(&img, "/nonexistent/x.png", 0, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "/nonexistent/x.png"), "a missing file names itself: %s", e.msg);
    uint8_t fake[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R', 0xff, 0xff,
                      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 8, 2, 0, 0, 0, 0, 0, 0, 0};
    rc = sdw_image_decode(&img, fake, sizeof fake, 0, &e);
    tap_ok(rc != 0, "a corrupt PNG header is refused: %s", e.msg);
}

/* What the service accepts and refuses (image.h lists it). */
static void test_png_types(void)
{
    static const struct {
        int depth, type;
        const char *name;
    } types[] = {
        {8, PNG_COLOR_TYPE_GRAY, "8-bit grey"},       {16, PNG_COLOR_TYPE_GRAY, "16-bit grey"},
        {8, PNG_COLOR_TYPE_GRAY_ALPHA, "grey+alpha"}, {8, PNG_COLOR_TYPE_RGB, "8-bit RGB"},
        {16, PNG_COLOR_TYPE_RGB, "16-bit RGB"},       {16, PNG_COLOR_TYPE_RGB_ALPHA, "16-bit RGBA"},
        {8, PNG_COLOR_TYPE_PALETTE, "palette"},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t len;
        unsigned char *png = fx_png(19, 11, types[i].depth, types[i].type, &len);
        sdw_image img;
        sdw_error e;
        int rc = png ? sdw_image_decode(&img, png, len, 0, &e) : -1;
        /* Where the file has a channel, its samples must come through at 8
         * bits: the high byte of a 16-bit one, give or take a level. */
        int worst = 0, grey = types[i].type == PNG_COLOR_TYPE_GRAY || types[i].type == PNG_COLOR_TYPE_GRAY_ALPHA;
        for (int y = 0; rc == 0 && types[i].type != PNG_COLOR_TYPE_PALETTE && y < 11; y++)
            for (int x = 0; x < 19; x++)
                for (int k = 0; k < 3; k++) {
                    unsigned want = fx_sample(x, y, grey ? 0 : k, 19, 11, types[i].depth) >> (types[i].depth - 8);
                    int d = abs((int)img.pixels[(y * 19 + x) * 3 + k] - (int)want);
                    worst = d > worst ? d : worst;
                }
        if (rc == 0 && types[i].type == PNG_COLOR_TYPE_PALETTE) {
            unsigned idx = fx_sample(5, 0, 0, 19, 11, 8);
            worst = abs((int)img.pixels[5 * 3] - (int)idx) + abs((int)img.pixels[5 * 3 + 1] - (int)(255 - idx));
        }
        tap_ok(rc == 0 && img.width == 19 && img.height == 11 && img.channels == 3 && worst <= 1,
               "PNG %s decodes to 8-bit RGB (largest difference %d)", types[i].name, worst);
        if (rc == 0)
            sdw_image_free(&img);
        free(png);
    }
}

static void test_png_limits(void)
{
    size_t len;
    sdw_image img;
    sdw_error e;
    /* Decoding it would need 1.2 GB for the pixels: the size is refused
     * from the header alone, which only an EINVAL (not the EFORMAT its
     * missing pixel data would give) can show. */
    unsigned char *bomb = fx_png_declared(20000, 20000, &len);
    int rc = sdw_image_decode(&img, bomb, len, 0, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "20000x20000"),
           "a %zu-byte PNG declaring 20000x20000 is refused before allocating: %s", len, e.msg);
    rc = sdw_image_decode_max(&img, bomb, len, 1, 1024 * 1024, &e);
    tap_ok(rc == SDW_EINVAL, "... and as a mask, under a smaller limit");
    free(bomb);
    unsigned char *wide = fx_png_declared(2000000, 1, &len);
    rc = sdw_image_decode(&img, wide, len, 0, &e);
    tap_ok(rc == SDW_EFORMAT, "a width beyond libpng's own limit is a broken PNG: %s", e.msg);
    free(wide);

    unsigned char *png = fx_png(64, 65, 8, PNG_COLOR_TYPE_RGB, &len);
    rc = sdw_image_decode_max(&img, png, len, 0, 64 * 64, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "64x65"), "64x65 over a 4096-pixel limit: %s", e.msg);
    rc = sdw_image_decode_max(&img, png, len, 0, 64 * 65, &e);
    tap_ok(rc == 0 && img.width == 64 && img.height == 65, "64x65 exactly at the limit decodes");
    if (rc == 0)
        sdw_image_free(&img);
    rc = sdw_image_decode_max(&img, png, len, 0, (size_t)1 << 40, &e);
    tap_ok(rc == 0, "a limit above SDW_IMAGE_MAX_PIXELS is clamped, not an error");
    if (rc == 0)
        sdw_image_free(&img);

    /* Every prefix that loses pixel data is refused. Losing only the final
     * IEND chunk (12 bytes) is not: every pixel is there, and Pillow
     * accepts such a file too. */
    int refused = 0, total = 0, whole = 0;
    for (size_t cut = 8; cut < len; cut++) {
        rc = sdw_image_decode(&img, png, cut, 0, &e);
        if (rc == 0)
            sdw_image_free(&img);
        if (cut < len - 12)
            total++, refused += rc == SDW_EFORMAT;
        else
            whole += rc == 0;
    }
    tap_ok(refused == total, "every truncation into the pixel data of a %zu-byte PNG is a broken PNG (%d of %d)", len,
           refused, total);
    tap_ok(whole == 12, "a PNG cut only in its IEND chunk decodes (%d of 12)", whole);
    free(png);
}

static void test_jpeg_types(void)
{
    size_t len;
    sdw_image img;
    sdw_error e;
    unsigned char *jpg = fx_jpeg(40, 24, JCS_GRAYSCALE, 0, &len);
    int rc = sdw_image_decode(&img, jpg, len, 0, &e);
    tap_ok(rc == 0 && img.channels == 3 && img.pixels[0] == img.pixels[1] && img.pixels[1] == img.pixels[2],
           "a grey JPEG decodes to RGB");
    if (rc == 0)
        sdw_image_free(&img);
    free(jpg);
    jpg = fx_jpeg(40, 24, JCS_RGB, 0, &len);
    rc = sdw_image_decode(&img, jpg, len, 0, &e);
    tap_ok(rc == 0 && img.width == 40, "an RGB (not YCbCr) JPEG decodes");
    if (rc == 0)
        sdw_image_free(&img);
    free(jpg);

    jpg = fx_jpeg(40, 24, JCS_CMYK, 0, &len);
    rc = sdw_image_decode(&img, jpg, len, 0, &e);
    tap_ok(jpg && rc == SDW_EUNSUPPORTED && strstr(e.msg, "CMYK"), "a CMYK JPEG is refused: %s", e.msg);
    free(jpg);
    jpg = fx_jpeg(40, 24, JCS_YCCK, 0, &len);
    rc = sdw_image_decode(&img, jpg, len, 1, &e);
    tap_ok(jpg && rc == SDW_EUNSUPPORTED && strstr(e.msg, "CMYK"), "a YCCK JPEG is refused, as a mask too: %s",
           e.msg);
    free(jpg);

    jpg = fx_jpeg(64, 64, JCS_YCbCr, 0, &len);
    rc = sdw_image_decode_max(&img, jpg, len, 0, 64 * 63, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "64x64"), "a JPEG over the pixel limit is refused: %s", e.msg);
    /* libjpeg pads a JPEG that ends early with grey and only warns. */
    int refused = 0, total = 0;
    for (size_t cut = 3; cut < len; cut++, total++) {
        rc = sdw_image_decode(&img, jpg, cut, 0, &e);
        if (rc == 0)
            sdw_image_free(&img);
        refused += rc == SDW_EFORMAT;
    }
    tap_ok(refused == total, "every truncation of a %zu-byte JPEG is refused (%d of %d)", len, refused, total);
    rc = sdw_image_decode(&img, jpg, len - 2, 0, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "Premature end"), "... down to the EOI marker alone: %s", e.msg);
    free(jpg);

    jpg = fx_jpeg(16, 16, JCS_YCbCr, 100, &len);
    rc = sdw_image_decode(&img, jpg, len, 0, &e);
    tap_ok(jpg && rc == 0, "a progressive JPEG of 100 scans decodes");
    if (rc == 0)
        sdw_image_free(&img);
    free(jpg);
    jpg = fx_jpeg(16, 16, JCS_YCbCr, 101, &len);
    rc = sdw_image_decode(&img, jpg, len, 0, &e);
    tap_ok(jpg && rc == SDW_EFORMAT && strstr(e.msg, "scans"), "one of 101 scans is refused: %s", e.msg);
    free(jpg);
}

static void test_float_conversions(void)
{
    sdw_image img = gradient(16, 8), back;
    float *f = malloc((size_t)16 * 8 * 3 * sizeof *f);
    sdw_image_to_float(&img, f);
    tap_ok(f[0] == -1.0f && f[15] == 1.0f && f[16 * 8] == -1.0f, "pixels map to [-1,1] planes (NCHW)");
    sdw_error e;
    int rc = sdw_image_from_float(&back, f, 16, 8, &e);
    tap_ok(rc == 0 && !memcmp(back.pixels, img.pixels, (size_t)16 * 8 * 3), "float -> pixels inverts exactly");
    sdw_image_free(&back);
    float ties[3 * 2] = {0.0f, 5.0f, -5.0f, 0.0f, 0.0f, 0.0f}; /* 0 -> 127.5 -> 128 (ties to even) */
    rc = sdw_image_from_float(&back, ties, 2, 1, &e);
    tap_ok(rc == 0 && back.pixels[0] == 128 && back.pixels[3] == 255 && back.pixels[1] == 0,
           "clamping and round-half-even as numpy: %d %d", back.pixels[0], back.pixels[3]);
    sdw_image_free(&back);
    free(f);
    sdw_image_free(&img);
}

static void test_resize(void)
{
    sdw_image img = gradient(40, 30), same, small;
    sdw_error e;
    int rc = sdw_image_resize(&img, 40, 30, &same, &e);
    tap_ok(rc == 0 && !memcmp(same.pixels, img.pixels, (size_t)40 * 30 * 3), "resize to the same size is exact");
    rc = sdw_image_resize(&img, 16, 8, &small, &e);
    int mono = rc == 0;
    for (int x = 1; mono && x < 16; x++)
        mono = small.pixels[x * 3] >= small.pixels[(x - 1) * 3];
    tap_ok(mono && small.width == 16 && small.height == 8, "downscaling keeps a gradient monotonic");
    sdw_image_free(&same), sdw_image_free(&small), sdw_image_free(&img);
}

static void test_preview(void)
{
    float lat[4 * 2] = {1, 0, 0, 0, 0, 0, 0, 0};
    sdw_image img;
    sdw_error e;
    int rc = sdw_latent_preview(&img, lat, 2, 1, &e);
    tap_ok(rc == 0 && img.pixels[0] == 165 && img.pixels[3] == 128, "latent preview: (1 + 0.298) * 127.5 -> %d, zero latents -> mid grey",
           img.pixels[0]);
    sdw_image_free(&img);
}

int main(void)
{
    test_png_roundtrip();
    test_png_alpha_and_grey();
    test_jpeg();
    test_errors();
    test_png_types();
    test_png_limits();
    test_jpeg_types();
    test_float_conversions();
    test_resize();
    test_preview();
    return tap_done();
}
