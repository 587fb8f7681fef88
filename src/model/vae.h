/* The diffusers AutoencoderKL (SD 1.x/2.x VAE): latents to pixels and pixels
 * to the latent posterior, from the VAE's config.json and either a diffusers
 * folder or the first_stage_model.* tensors of a single-file checkpoint. */
#ifndef SDW_VAE_H
#define SDW_VAE_H

#include <json-c/json.h>

#include "model/model.h"
#include "tensor/tensor.h"

#define SDW_VAE_MAX_BLOCKS 8

typedef struct sdw_vae_config {
    int in_channels, out_channels, latent_channels;
    int nblocks;
    int block_out[SDW_VAE_MAX_BLOCKS];
    int layers_per_block;
    int norm_groups;
    float scaling_factor;
    /* force_upcast (diffusers' default true): the VAE overflows half
     * precision (SD 1.x's, SDXL's), so it decodes and encodes in float32
     * wherever the rest runs in fp16; false for VAEs fine-tuned to fit it
     * (madebyollin/sdxl-vae-fp16-fix). */
    int force_upcast;
} sdw_vae_config;

typedef struct sdw_vae sdw_vae;

/* Reads a diffusers VAE config.json; NULL gives SD 1.x's. */
int sdw_vae_config_parse(sdw_vae_config *cfg, const json_object *json, sdw_error *e);
/* Whether this VAE must run on a float32 backend rather than on be: its
 * force_upcast, where be stores tensors as halves. The CPU computes every
 * activation in float32 (it keeps only f16 weights as halves), so never
 * there. */
int sdw_vae_needs_upcast(const sdw_vae_config *cfg, const sdw_backend *be);

int sdw_vae_load(sdw_vae **out, sdw_backend *be, const sdw_vae_config *cfg, const sdw_weights *w,
                 sdw_layout layout, sdw_error *e);
void sdw_vae_free(sdw_vae *v);

/* latents [b,latent,h,w] as the sampler holds them (scaled by
 * scaling_factor) -> image [b,out,h*f,w*f], f = 2^(nblocks-1), about [-1,1]. */
int sdw_vae_decode(sdw_vae *v, const sdw_tensor *latents, sdw_tensor *image, sdw_error *e);
/* image [b,in,H,W] in [-1,1] (H, W multiples of f) -> latents [b,latent,H/f,W/f]:
 * scaling_factor * (mean + std * noise), or scaling_factor * mean when noise
 * is NULL; noise (latents' shape) comes from the caller's generator. */
int sdw_vae_encode(sdw_vae *v, const sdw_tensor *image, const sdw_tensor *noise, sdw_tensor *latents,
                   sdw_error *e);

#endif
