/* Pixels in and out of the pipeline: resampling, and the conversions
 * between 8-bit RGB and the [-1, 1] NCHW floats the VAE works in. */
#ifndef SDW_PIXELS_H
#define SDW_PIXELS_H

#include "base/err.h"
#include "image/image.h"

/* Resamples to w x h with a separable triangle (bilinear, antialiased when
 * shrinking) filter; used for inputs whose size is not a multiple of 8. */
int sdw_image_resize(const sdw_image *src, int w, int h, sdw_image *dst, sdw_error *e);

/* RGB pixels -> [1,3,H,W] floats 2x/255 - 1, as diffusers' preprocessing. */
void sdw_image_to_float(const sdw_image *img, float *dst);
/* [1,3,H,W] floats -> RGB pixels: round(clamp(x/2 + 0.5, 0, 1) * 255) with
 * ties to even, as diffusers' postprocessing (torch then numpy) does. */
int sdw_image_from_float(sdw_image *img, const float *src, int width, int height, sdw_error *e);

/* A cheap preview of latents [4,h,w] without the VAE: a fixed linear map
 * from the four SD 1.x latent channels to RGB, one pixel per latent. */
int sdw_latent_preview(sdw_image *img, const float *latents, int width, int height, sdw_error *e);

#endif
