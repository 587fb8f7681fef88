/* PNG and JPEG decoding, PNG encoding with tEXt, resizing, the pixel/float
 * conversions diffusers uses, and the error paths for broken input. */
#include <png.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "image/image.h"
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
    test_float_conversions();
    test_resize();
    test_preview();
    return tap_done();
}
