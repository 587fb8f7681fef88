/* The Stable Diffusion 1.x, 2.x and XL pipelines: txt2img, img2img and inpainting, as
 * diffusers runs them (same noise draws in the same order from one
 * torch-exact generator, same scheduler arithmetic), on any backend.
 *
 * A pipeline holds one loaded model: tokenizer, CLIP text encoder, UNet,
 * VAE and the model's scheduler configuration. Generation reports each step
 * through a callback, which can render a cheap preview and cancel. */
#ifndef SDW_PIPELINE_H
#define SDW_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "image/image.h"
#include "model/lora.h"
#include "tensor/tensor.h"

typedef enum sdw_gen_kind {
    SDW_GEN_TXT2IMG,
    SDW_GEN_IMG2IMG,
    SDW_GEN_INPAINT,
} sdw_gen_kind;

typedef struct sdw_gen_params {
    sdw_gen_kind kind;
    const char *prompt;          /* UTF-8, NUL-terminated */
    const char *negative_prompt; /* NULL: none given, which is "" except for a model with
                                    force_zeros_for_empty_prompt (SDXL): zero embeddings */
    int steps;                   /* 1..1000 */
    float guidance;              /* > 1 enables classifier-free guidance */
    int width, height;           /* txt2img only; multiples of the VAE's scale (8) */
    uint64_t seed;
    const char *sampler;         /* NULL or "" = the model's own scheduler */
    float eta;                   /* ddim only */
    int clip_skip;               /* 0 = off */
    double strength;             /* img2img (e.g. 0.8) and inpaint (e.g. 1.0): 0..1; double
                                    because diffusers computes int(steps * strength) in
                                    Python floats, and 0.7f * 10 truncates to 6 */
    const sdw_image *init_image; /* img2img and inpaint: RGB */
    const sdw_image *mask;       /* inpaint: grey or RGB, white = repaint, init's size */
    /* LoRAs for this generation only (checked, then run beside the frozen
     * weights, then detached: see lora.h). */
    const sdw_lora_use *loras;
    int nloras;
    /* SDXL's micro-conditioning (add_time_ids), sizes in pixels; 0 = the
     * image's size (diffusers' default), crops default to 0, 0. Other
     * families take none of them. */
    int original_width, original_height;
    int crop_top, crop_left;
    int target_width, target_height;
} sdw_gen_params;

/* Defaults as diffusers and rbee have them: 20 steps, guidance 7.5,
 * 512x512, strength 0.8 (1.0 for inpaint), the model's sampler. */
void sdw_gen_params_init(sdw_gen_params *gp, sdw_gen_kind kind);

typedef struct sdw_gen_timings {
    double load_s;       /* left as the caller set it (sdw_pipeline_load's time) */
    double lora_s;       /* checking, building and attaching the LoRAs' updates */
    double encode_s;     /* tokenizer + text encoder */
    double prepare_s;    /* VAE encoding of init/masked images, initial noise */
    double denoise_s;    /* all sampling steps */
    int unet_calls;      /* sampling steps as UNet evaluations (PNDM: steps + 1) */
    int graph_replays;   /* of which replayed from a recorded graph (CUDA) */
    char graph_note[200]; /* why steps were not recorded, "" when they were or graphs do not apply */
    double decode_s;     /* VAE decode and pixel conversion */
    double total_s;
    /* Device memory in bytes, 0 on the CPU (sdw_backend_memory): reserved
     * when the generation starts, the most reserved at once while encoding
     * and denoising, and while decoding (after sdw_backend_trim) on the
     * VAE's backend (the float32 one, for a force_upcast VAE). */
    size_t mem_start, mem_denoise_peak, mem_decode_peak;
} sdw_gen_timings;

typedef struct sdw_pipeline sdw_pipeline;

/* Called after every sampling step (step counts from 1 to total). Return
 * non-zero to cancel: generation then stops with SDW_ECANCELLED. */
typedef int (*sdw_gen_callback)(void *ctx, sdw_pipeline *p, int step, int total);

/* How a model is to be run where its files do not say, or say wrong. */
typedef struct sdw_pipeline_options {
    /* "epsilon" or "v_prediction" over the model's scheduler config (or, for
     * a single file, over what its architecture implies); NULL or "" keeps
     * the model's. */
    const char *prediction;
    /* A float32 backend on be's device, for a VAE that must not run in half
     * precision (its force_upcast, sdw_vae_needs_upcast, where be stores
     * halves): it decodes and encodes there. NULL: such a VAE runs on be,
     * in fp16, as diffusers' SD 1.x/2.x pipelines run it, with a warning. */
    sdw_backend *fp32;
} sdw_pipeline_options;

/* options may be NULL (the model's own settings). */
int sdw_pipeline_load(sdw_pipeline **p, sdw_backend *be, const char *model_path, const sdw_pipeline_options *options,
                      sdw_error *e);
void sdw_pipeline_free(sdw_pipeline *p);

/* What was loaded, as the service lists it. */
typedef struct sdw_pipeline_info {
    const char *family;     /* "sd1", "sd2", "sdxl" */
    const char *prediction; /* "epsilon", "v_prediction" */
    int inpaint;            /* a 9-channel inpainting UNet */
    int width, height;      /* the size the model was trained at: its default */
    int vae_fp32;           /* the VAE runs on the options' float32 backend */
} sdw_pipeline_info;

void sdw_pipeline_describe(const sdw_pipeline *p, sdw_pipeline_info *info);

/* Whether a LoRA fits the loaded model (sdw_lora_check). */
int sdw_pipeline_lora_check(const sdw_pipeline *p, const sdw_lora *l, sdw_error *e);

/* The VAE's downscale (8 for SD 1.x) and the UNet's input channels (4, or 9
 * for inpainting models). */
int sdw_pipeline_scale(const sdw_pipeline *p);
int sdw_pipeline_unet_channels(const sdw_pipeline *p);

/* A generation's activations at their peak, beyond the weights already
 * loaded, per output pixel (width * height): in a UNet step at the largest
 * batch the model runs (2 with CFG; 1 for an LCM-distilled UNet), and in
 * the VAE decode, each in its backend's activation size (2 bytes for fp16
 * storage, else 4: the CPU computes in float32). An estimate from the
 * model's widths with constants measured on SD 1.5 (doc/architecture.md,
 * "Memory estimate"). */
typedef struct sdw_pipeline_mem {
    size_t unet_per_pixel, vae_per_pixel;
} sdw_pipeline_mem;

void sdw_pipeline_memory(const sdw_pipeline *p, sdw_pipeline_mem *m);

/* The sampler a request for `requested` (NULL or "" = the model's own
 * scheduler) runs with, e.g. "pndm" for SD 1.5's config; NULL when the name
 * is unknown or the model's scheduler unsupported. */
const char *sdw_pipeline_sampler(const sdw_pipeline *p, const char *requested);

/* The most steps a request for `requested` (as sdw_pipeline_sampler) may
 * take: LCMScheduler's original_inference_steps for lcm, else 1000; 0 when
 * the sampler is unknown or the model's scheduler unsupported. */
int sdw_pipeline_max_steps(const sdw_pipeline *p, const char *requested);

/* Runs one generation. out receives the RGB image; latents, when not NULL,
 * receives the final latents [4, h, w] (h, w = size / scale), as diffusers'
 * output_type="latent" returns them. */
int sdw_pipeline_generate(sdw_pipeline *p, const sdw_gen_params *gp, sdw_gen_callback cb, void *ctx,
                          sdw_image *out, float *latents, sdw_gen_timings *t, sdw_error *e);

/* Inside a callback: a preview of the current latents, one pixel per
 * latent, from a fixed linear map (no VAE). */
int sdw_pipeline_preview(const sdw_pipeline *p, sdw_image *img, sdw_error *e);

/* The parameters in A1111's "parameters" text form, for a PNG tEXt chunk:
 * "prompt\nNegative prompt: ...\nSteps: 20, Sampler: euler, CFG scale: 7.5,
 * Seed: 42, Size: 512x512, ...". Returns a malloc'd string. */
char *sdw_gen_params_text(const sdw_gen_params *gp, int width, int height, const char *sampler,
                          const char *model);

#endif
