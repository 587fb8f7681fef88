/* libFuzzer target for PNG and JPEG decoding (sdw_image_decode): any bytes
 * are refused, or decode to an image within SDW_IMAGE_MAX_PIXELS whose every
 * pixel can be read. A small decoded image also goes through the PNG encoder
 * and back, which must give the same pixels, through the grey decoding that
 * masks use, and through sdw_image_decode_max with a limit one pixel short,
 * which must refuse it. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "image/image.h"

/* Images up to this many pixels take the extra round trips; larger ones are
 * only decoded, so that an execution stays fast. */
#define SMALL_PIXELS (256 * 256)

static unsigned touch(const sdw_image *img)
{
    size_t n = (size_t)img->width * img->height * img->channels;
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += img->pixels[i];
    return sum;
}

static void check(const sdw_image *img, int channels)
{
    if (img->width <= 0 || img->height <= 0 || (int64_t)img->width * img->height > SDW_IMAGE_MAX_PIXELS ||
        img->channels != channels || !img->pixels)
        abort();
}

static void png_round_trip(const sdw_image *img)
{
    static const char *const text[] = { "fuzz", "1" };
    uint8_t *png;
    size_t len;
    sdw_error e = { 0 };
    if (sdw_png_encode(img, text, 1, &png, &len, &e) < 0)
        abort();
    sdw_image back;
    if (sdw_image_decode(&back, png, len, 0, &e) < 0 || back.width != img->width || back.height != img->height ||
        memcmp(back.pixels, img->pixels, (size_t)img->width * img->height * 3))
        abort();
    sdw_image_free(&back);
    free(png);
}

int fuzz_image_one(const uint8_t *data, size_t size)
{
    sdw_image img;
    sdw_error e = { 0 };
    int rc = sdw_image_decode(&img, data, size, 0, &e);
    if (rc < 0) {
        if (img.pixels)
            abort();
        return rc;
    }
    check(&img, 3);
    volatile unsigned sum = touch(&img);
    (void)sum;
    if ((int64_t)img.width * img.height <= SMALL_PIXELS) {
        png_round_trip(&img);
        sdw_image grey;
        if (sdw_image_decode(&grey, data, size, 1, &e) < 0)
            abort();
        check(&grey, 1);
        for (size_t i = 0; i < (size_t)img.width * img.height; i++)
            if (grey.pixels[i] != sdw_image_grey_at(&img, i))
                abort();
        sdw_image_free(&grey);
        size_t pixels = (size_t)img.width * img.height;
        if (sdw_image_decode_max(&grey, data, size, 0, pixels - 1, &e) != SDW_EINVAL || grey.pixels)
            abort();
    }
    sdw_image_free(&img);
    return 0;
}

SDW_FUZZ_ENTRY(fuzz_image_one)
