/* Image files: PNG (libpng) and JPEG (libjpeg-turbo) decoding into 8-bit
 * RGB or grey, and PNG encoding with the generation parameters in tEXt
 * chunks. Below the engine: the FastCGI pool decodes submitted images with
 * it too, so it needs nothing but the codecs (no OpenMP, no BLAS). */
#ifndef SDW_IMAGE_H
#define SDW_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct sdw_image {
    int width, height;
    int channels;     /* 3 (RGB) or 1 (grey) */
    uint8_t *pixels;  /* row-major, interleaved, width*height*channels */
} sdw_image;

/* Refuses images with more pixels than this (decompression bombs). */
#define SDW_IMAGE_MAX_PIXELS (4096 * 4096)

/* Decodes PNG or JPEG bytes (told apart by their magic) into RGB, or into
 * one grey channel when grey is set (masks), refusing more than max_pixels
 * pixels (at most SDW_IMAGE_MAX_PIXELS) from the declared size, before any
 * pixel buffer is allocated.
 *
 * Supported: PNG of every colour type and bit depth (palette, grey, RGB,
 * with or without alpha, 1 to 16 bits, interlaced or not; alpha is dropped,
 * 16-bit samples are scaled to 8 bits, not gamma-converted); baseline,
 * progressive or arithmetic 8-bit JPEG in grey, YCbCr or RGB. Refused:
 * CMYK and YCCK JPEG and 12-bit JPEG (SDW_EUNSUPPORTED), a size over the
 * limit (SDW_EINVAL), and any broken or truncated file (SDW_EFORMAT): a
 * JPEG that ends early too, even by its EOI marker alone, which libjpeg
 * would pad with grey, and a progressive one of more than 100 scans. A PNG
 * that lacks only its IEND chunk has all its pixels and is accepted. */
int sdw_image_decode_max(sdw_image *img, const void *data, size_t len, int grey, size_t max_pixels,
                         sdw_error *e);
/* sdw_image_decode_max with max_pixels SDW_IMAGE_MAX_PIXELS. */
int sdw_image_decode(sdw_image *img, const void *data, size_t len, int grey, sdw_error *e);
int sdw_image_load(sdw_image *img, const char *path, int grey, sdw_error *e);
void sdw_image_free(sdw_image *img);

/* Uninitialised pixels for a w x h image of 1 or 3 channels. */
int sdw_image_alloc(sdw_image *img, int w, int h, int channels, sdw_error *e);

/* A pixel's grey level: itself for a grey image, PIL's convert("L") luma
 * (ITU-R 601-2, 16-bit fixed point) for an RGB one. */
uint8_t sdw_image_grey_at(const sdw_image *img, size_t pixel);

/* Encodes img as PNG into a malloc'd buffer; text is NULL or pairs of
 * key, value strings (ntext pairs) written as tEXt chunks. */
int sdw_png_encode(const sdw_image *img, const char *const *text, size_t ntext, uint8_t **out, size_t *outlen,
                   sdw_error *e);
int sdw_png_save(const sdw_image *img, const char *path, const char *const *text, size_t ntext, sdw_error *e);

#endif
