/* The diffusers UNet2DConditionModel (SD 1.x/2.x/XL family): the noise
 * prediction eps(latents, timestep, text states), built from the model's
 * config.json and loaded from either a diffusers folder or the
 * model.diffusion_model.* tensors of a single-file LDM checkpoint. */
#ifndef SDW_UNET_H
#define SDW_UNET_H

#include <json-c/json.h>

#include "model/model.h"
#include "tensor/tensor.h"

#define SDW_UNET_MAX_BLOCKS 8

typedef struct sdw_unet_config {
    int in_channels, out_channels;
    int nblocks;
    int block_out[SDW_UNET_MAX_BLOCKS];
    int down_attn[SDW_UNET_MAX_BLOCKS]; /* CrossAttnDownBlock2D (1) or DownBlock2D (0) */
    int up_attn[SDW_UNET_MAX_BLOCKS];   /* in up-block order: CrossAttnUpBlock2D (1) or UpBlock2D */
    int heads[SDW_UNET_MAX_BLOCKS];     /* per down block; up blocks take them reversed, the mid block the last */
    int tlayers[SDW_UNET_MAX_BLOCKS];   /* transformer_layers_per_block, likewise */
    int layers_per_block;
    int cross_attention_dim;
    int linear_projection;
    /* upcast_attention (SD 2.1's 768 models): q k^T and its softmax in
     * float32 when the model runs in fp16 or bf16, without which SD 2.1
     * overflows to NaN. Kept as the model states it; no backend needs to
     * branch on it, since each computes attention so always: the CPU in
     * float32 throughout, CUDA with float32 accumulation, scale and softmax
     * on every path (kernels/kernels.h, sdw_k_attention_tc). */
    int upcast_attention;
    int norm_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    /* LCM-distilled UNets: the width of the guidance-scale embedding that
     * time_embedding.cond_proj adds to the timestep features; 0 = none. */
    int time_cond_proj_dim;
    /* addition_embed_type "text_time" (SDXL), else 0: each of the 6 time
     * ids gets a sinusoidal embedding of addition_time_embed_dim, which
     * with the pooled text embedding ([pooled, time ids], add_in wide) goes
     * through add_embedding and is added to the time embedding. */
    int text_time;
    int add_time_dim; /* addition_time_embed_dim */
    int add_in;       /* projection_class_embeddings_input_dim */
} sdw_unet_config;

/* Conditioning some UNets take besides the text states; NULL members (or a
 * NULL cond) mean none. */
typedef struct sdw_unet_cond {
    const sdw_tensor *text_embeds; /* SDXL: pooled text embedding [b, projection_dim] on the UNet's backend */
    const float *time_ids;         /* SDXL: host [b, 6]: original h, w, crop top, left, target h, w */
    const float *timestep_cond;    /* LCM-distilled UNets: host [b, time_cond_proj_dim] */
} sdw_unet_cond;

typedef struct sdw_unet sdw_unet;

/* Reads a diffusers UNet config.json, refusing what this UNet does not
 * implement; NULL gives SD 1.x (the configuration implied by LDM files). */
int sdw_unet_config_parse(sdw_unet_config *cfg, const json_object *json, sdw_error *e);

/* layout says how w's tensors are named (diffusers or LDM). */
int sdw_unet_load(sdw_unet **out, sdw_backend *be, const sdw_unet_config *cfg, const sdw_weights *w,
                  sdw_layout layout, sdw_error *e);
void sdw_unet_free(sdw_unet *u);
const sdw_unet_config *sdw_unet_config_of(const sdw_unet *u);

/* x [b,in_channels,h,w], timesteps: b floats on the host, ctx
 * [b,tokens,cross_attention_dim] -> eps [b,out_channels,h,w]. A text_time
 * UNet needs cond's text_embeds and time_ids; other UNets refuse them.
 *
 * cond->timestep_cond, for a UNet with time_cond_proj_dim, goes through
 * time_embedding.cond_proj into the timestep embedding; without it that
 * UNet runs unconditioned on guidance, as diffusers does when given none.
 * Conditioning the UNet has no layer for is refused.
 *
 * On a backend with graphs (CUDA) the step is recorded once and replayed:
 * the first call with given x, ctx and eps buffers runs op by op, the
 * second records the step, later ones replay it, reading x, ctx and
 * cond's text_embeds from the same buffers (the timesteps, time ids and
 * timestep_cond are host values: each call copies them into buffers the
 * UNet owns, which the recording reads). The recording, and the memory it uses for temporaries, is
 * kept until the buffers or shapes change or sdw_unet_release: call that
 * when a denoising loop ends, so that what follows (the VAE) can use the
 * memory. SDW_CUDA_GRAPHS=0 in the environment turns recording off. */
int sdw_unet_forward(sdw_unet *u, const sdw_tensor *x, const float *timesteps, const sdw_tensor *ctx,
                     const sdw_unet_cond *cond, sdw_tensor *eps, sdw_error *e);
/* Drops the recorded step and its memory. */
void sdw_unet_release(sdw_unet *u);
/* How many steps have been replayed from a recording (tests, benchmarks). */
long sdw_unet_graph_replays(const sdw_unet *u);
/* Why the step is not being recorded ("" when it is, or was never tried). */
const char *sdw_unet_graph_note(const sdw_unet *u);

#endif
