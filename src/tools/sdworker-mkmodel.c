/* sdworker-mkmodel: writes a random-weight Stable Diffusion 1.x, 2.x or XL model,
 * as a diffusers folder (in the layout diffusers 0.42 and transformers 5
 * save) or as a single-file LDM checkpoint.
 *
 * The tensor list is never written down here: the engine's own loaders
 * (CLIP, UNet, VAE) run against a synthetic weight source that records every
 * name and shape they ask for, so the files hold exactly what sdworker loads.
 * Values are deterministic: each tensor has its own generator seeded from
 * --seed and its diffusers name, so a folder and a single file made with the
 * same seed hold the same numbers under different names. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "backend/backend.h"
#include "base/vec.h"
#include "model/clip.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/unet.h"
#include "model/vae.h"
#include "pipeline/rng.h"
#include "tensor/tensor.h"

#define MAX_BLOCKS 4

typedef enum sched_kind { SCHED_PNDM, SCHED_DDIM, SCHED_EULER, SCHED_EULER_A } sched_kind;

typedef struct mk_config {
    const char *name;
    /* SD 2.x: an OpenCLIP text tower (gelu, pad token "!"; in a single file
     * cond_stage_model.model.* with its fused in_proj, one more block than
     * diffusers uses and the text projection, as the real files hold them),
     * per-level heads of 64 channels and linear transformer projections. */
    int sd2;
    /* SDXL: a second, gelu text encoder with a projection (bigG), padding
     * with "!"; the UNet attends to both side by side, has per-level
     * transformer depths and the text_time addition embedding; the VAE
     * scales latents by 0.13025. Folders only. */
    int sdxl;
    int text_hidden, text_inter, text_layers, text_heads;
    int text2_hidden, text2_inter, text2_layers, text2_heads, text2_proj;
    int unet_tlayers[MAX_BLOCKS], add_time_dim;
    int unet_in, unet_nblocks, unet_blocks[MAX_BLOCKS], unet_down_attn[MAX_BLOCKS], unet_layers;
    int unet_heads[MAX_BLOCKS];
    int unet_groups, unet_sample, upcast;
    int vae_nblocks, vae_blocks[MAX_BLOCKS], vae_layers, vae_groups, vae_sample;
    sched_kind sched;
    const char *prediction;
    const char *spacing; /* NULL: no timestep_spacing key, as in SD 2.x's hub configs */
    sdw_dtype dtype;
} mk_config;

#define SD_VAE .vae_nblocks = 4, .vae_blocks = {128, 256, 512, 512}, .vae_layers = 2, .vae_groups = 32
#define SD2_TEXT .sd2 = 1, .text_hidden = 1024, .text_inter = 4096, .text_layers = 23, .text_heads = 16
#define SD2_UNET                                                                                            \
    .unet_nblocks = 4, .unet_blocks = {320, 640, 1280, 1280}, .unet_down_attn = {1, 1, 1, 0}, .unet_layers = 2, \
    .unet_heads = {5, 10, 20, 20}, .unet_groups = 32

/* tiny: the service's demo model. Attention only below full latent
 * resolution and a 16-channel VAE top level keep 512x512 cheap on a laptop,
 * while every kind of block SD 1.5 has is still there (cross-attention down
 * and up blocks, plain blocks, the attention mid block, a 4-level VAE with a
 * scale of 8). tiny-sd2: the same for SD 2.x, sized so that a single file's
 * implied heads (channels / 64) are the folder's. The SD 2.x configs follow
 * the stabilityai repositories: -2-1-base (PNDM, epsilon, 512), -2-1 (DDIM,
 * v-prediction, 768, upcast attention), -2-inpainting (512, epsilon) and
 * sd-turbo (2.1's architecture at 512, Euler with trailing timesteps; its hub
 * JSON not re-read here). */
/* SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0): ViT-L and bigG,
 * UNet 320/640/1280 with no attention in the first level, 1/2/10
 * transformer layers, 64-wide heads; sdxl-turbo the same at 512 with Euler
 * ancestral on trailing timesteps. */
#define SDXL_TEXT                                                                                                \
    .sdxl = 1, .text_hidden = 768, .text_inter = 3072, .text_layers = 12, .text_heads = 12, .text2_hidden = 1280, \
    .text2_inter = 5120, .text2_layers = 32, .text2_heads = 20, .text2_proj = 1280
#define SDXL_UNET                                                                                             \
    .unet_in = 4, .unet_nblocks = 3, .unet_blocks = {320, 640, 1280}, .unet_down_attn = {0, 1, 1}, .unet_layers = 2, \
    .unet_heads = {5, 10, 20}, .unet_tlayers = {1, 2, 10}, .add_time_dim = 256, .unet_groups = 32

static const mk_config configs[] = {
    {.name = "tiny", .text_hidden = 64, .text_inter = 128, .text_layers = 2, .text_heads = 2, .unet_in = 4,
     .unet_nblocks = 3, .unet_blocks = {32, 64, 64}, .unet_down_attn = {0, 1, 1}, .unet_layers = 1,
     .unet_heads = {2, 2, 2}, .unet_groups = 32, .unet_sample = 64, .vae_nblocks = 4, .vae_blocks = {16, 32, 64, 64},
     .vae_layers = 1, .vae_groups = 16, .vae_sample = 512, .sched = SCHED_PNDM, .prediction = "epsilon",
     .spacing = "leading", .dtype = SDW_DT_F32},
    {.name = "sd15", .text_hidden = 768, .text_inter = 3072, .text_layers = 12, .text_heads = 12, .unet_in = 4,
     .unet_nblocks = 4, .unet_blocks = {320, 640, 1280, 1280}, .unet_down_attn = {1, 1, 1, 0}, .unet_layers = 2,
     .unet_heads = {8, 8, 8, 8}, .unet_groups = 32, .unet_sample = 64, SD_VAE, .vae_sample = 512,
     .sched = SCHED_PNDM, .prediction = "epsilon", .spacing = "leading", .dtype = SDW_DT_F16},
    {.name = "sd15-inpaint", .text_hidden = 768, .text_inter = 3072, .text_layers = 12, .text_heads = 12,
     .unet_in = 9, .unet_nblocks = 4, .unet_blocks = {320, 640, 1280, 1280}, .unet_down_attn = {1, 1, 1, 0},
     .unet_layers = 2, .unet_heads = {8, 8, 8, 8}, .unet_groups = 32, .unet_sample = 64, SD_VAE, .vae_sample = 512,
     .sched = SCHED_PNDM, .prediction = "epsilon", .spacing = "leading", .dtype = SDW_DT_F16},
    {.name = "sd2-base", SD2_TEXT, .unet_in = 4, SD2_UNET, .unet_sample = 64, SD_VAE, .vae_sample = 512,
     .sched = SCHED_PNDM, .prediction = "epsilon", .dtype = SDW_DT_F16},
    {.name = "sd21", SD2_TEXT, .unet_in = 4, SD2_UNET, .unet_sample = 96, .upcast = 1, SD_VAE, .vae_sample = 768,
     .sched = SCHED_DDIM, .prediction = "v_prediction", .dtype = SDW_DT_F16},
    {.name = "sd2-inpaint", SD2_TEXT, .unet_in = 9, SD2_UNET, .unet_sample = 64, SD_VAE, .vae_sample = 512,
     .sched = SCHED_PNDM, .prediction = "epsilon", .dtype = SDW_DT_F16},
    {.name = "sd-turbo", SD2_TEXT, .unet_in = 4, SD2_UNET, .unet_sample = 64, SD_VAE, .vae_sample = 512,
     .sched = SCHED_EULER, .prediction = "epsilon", .spacing = "trailing", .dtype = SDW_DT_F16},
    {.name = "tiny-sd2", .sd2 = 1, .text_hidden = 64, .text_inter = 128, .text_layers = 2, .text_heads = 1,
     .unet_in = 4, .unet_nblocks = 2, .unet_blocks = {64, 128}, .unet_down_attn = {1, 1}, .unet_layers = 1,
     .unet_heads = {1, 2}, .unet_groups = 32, .unet_sample = 8, .upcast = 1, .vae_nblocks = 4,
     .vae_blocks = {16, 32, 64, 64}, .vae_layers = 1, .vae_groups = 16, .vae_sample = 64, .sched = SCHED_DDIM,
     .prediction = "v_prediction", .dtype = SDW_DT_F32},
    {.name = "sdxl", SDXL_TEXT, SDXL_UNET, .unet_sample = 128, SD_VAE, .vae_sample = 1024, .sched = SCHED_EULER,
     .prediction = "epsilon", .spacing = "leading", .dtype = SDW_DT_F16},
    {.name = "sdxl-turbo", SDXL_TEXT, SDXL_UNET, .unet_sample = 64, SD_VAE, .vae_sample = 512, .sched = SCHED_EULER_A,
     .prediction = "epsilon", .spacing = "trailing", .dtype = SDW_DT_F16},
    {.name = "tiny-sdxl", .sdxl = 1, .text_hidden = 64, .text_inter = 128, .text_layers = 2, .text_heads = 1,
     .text2_hidden = 64, .text2_inter = 128, .text2_layers = 3, .text2_heads = 1, .text2_proj = 64, .unet_in = 4,
     .unet_nblocks = 2, .unet_blocks = {64, 128}, .unet_down_attn = {0, 1}, .unet_layers = 1, .unet_heads = {1, 2},
     .unet_tlayers = {1, 2}, .add_time_dim = 32, .unet_groups = 32, .unet_sample = 64, .vae_nblocks = 4,
     .vae_blocks = {16, 32, 64, 64}, .vae_layers = 1, .vae_groups = 16, .vae_sample = 512, .sched = SCHED_EULER,
     .prediction = "epsilon", .spacing = "leading", .dtype = SDW_DT_F32},
};

static const char *const sched_class[] = {"PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                          "EulerAncestralDiscreteScheduler"};

/* ---- config.json files ---- */

static json_object *int_array(const int *v, int n)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_int(v[i]));
    return a;
}

static json_object *str_array(const char *const *v, int n)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_string(v[i]));
    return a;
}

static void add(json_object *o, const char *k, json_object *v)
{
    json_object_object_add(o, k, v);
}

/* second: SDXL's text_encoder_2 */
static json_object *text_config(const mk_config *c, int second)
{
    json_object *o = json_object_new_object();
    add(o, "architectures",
        str_array((const char *const[]){second ? "CLIPTextModelWithProjection" : "CLIPTextModel"}, 1));
    add(o, "attention_dropout", json_object_new_double(0));
    add(o, "bos_token_id", json_object_new_int(SDW_TOK_BOS));
    add(o, "dropout", json_object_new_double(0));
    add(o, "dtype", json_object_new_string(c->dtype == SDW_DT_F16    ? "float16"
                                           : c->dtype == SDW_DT_BF16 ? "bfloat16"
                                                                     : "float32"));
    add(o, "eos_token_id", json_object_new_int(SDW_TOK_EOS));
    add(o, "hidden_act", json_object_new_string(c->sd2 || second ? "gelu" : "quick_gelu"));
    add(o, "hidden_size", json_object_new_int(second ? c->text2_hidden : c->text_hidden));
    add(o, "initializer_factor", json_object_new_double(1));
    add(o, "initializer_range", json_object_new_double(0.02));
    add(o, "intermediate_size", json_object_new_int(second ? c->text2_inter : c->text_inter));
    add(o, "layer_norm_eps", json_object_new_double(1e-5));
    add(o, "max_position_embeddings", json_object_new_int(SDW_TOK_CONTEXT));
    add(o, "model_type", json_object_new_string("clip_text_model"));
    add(o, "num_attention_heads", json_object_new_int(second ? c->text2_heads : c->text_heads));
    add(o, "num_hidden_layers", json_object_new_int(second ? c->text2_layers : c->text_layers));
    add(o, "pad_token_id", json_object_new_int(1));
    add(o, "projection_dim", json_object_new_int(second ? c->text2_proj : c->sd2 ? 512 : c->text_hidden));
    add(o, "transformers_version", json_object_new_string("5.24.0"));
    add(o, "vocab_size", json_object_new_int(49408));
    return o;
}

static json_object *unet_config(const mk_config *c)
{
    const char *down[MAX_BLOCKS], *up[MAX_BLOCKS];
    int n = c->unet_nblocks;
    for (int i = 0; i < n; i++) {
        down[i] = c->unet_down_attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[n - 1 - i] = c->unet_down_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    json_object *o = json_object_new_object();
    add(o, "_class_name", json_object_new_string("UNet2DConditionModel"));
    add(o, "_diffusers_version", json_object_new_string("0.31.0"));
    add(o, "act_fn", json_object_new_string("silu"));
    /* SD 1.x's hub configs give one head count, SD 2.x's one per level */
    add(o, "attention_head_dim",
        c->sd2 || c->sdxl ? int_array(c->unet_heads, n) : json_object_new_int(c->unet_heads[0]));
    add(o, "block_out_channels", int_array(c->unet_blocks, n));
    add(o, "center_input_sample", json_object_new_boolean(0));
    add(o, "cross_attention_dim", json_object_new_int(c->text_hidden + (c->sdxl ? c->text2_hidden : 0)));
    if (c->sdxl) {
        add(o, "addition_embed_type", json_object_new_string("text_time"));
        add(o, "addition_time_embed_dim", json_object_new_int(c->add_time_dim));
        add(o, "projection_class_embeddings_input_dim", json_object_new_int(c->text2_proj + 6 * c->add_time_dim));
        add(o, "transformer_layers_per_block", int_array(c->unet_tlayers, n));
    }
    add(o, "down_block_types", str_array(down, n));
    add(o, "downsample_padding", json_object_new_int(1));
    add(o, "flip_sin_to_cos", json_object_new_boolean(1));
    add(o, "freq_shift", json_object_new_int(0));
    add(o, "in_channels", json_object_new_int(c->unet_in));
    add(o, "layers_per_block", json_object_new_int(c->unet_layers));
    add(o, "mid_block_scale_factor", json_object_new_int(1));
    add(o, "norm_eps", json_object_new_double(1e-5));
    add(o, "norm_num_groups", json_object_new_int(c->unet_groups));
    add(o, "out_channels", json_object_new_int(4));
    add(o, "sample_size", json_object_new_int(c->unet_sample));
    add(o, "up_block_types", str_array(up, n));
    add(o, "upcast_attention", json_object_new_boolean(c->upcast));
    add(o, "use_linear_projection", json_object_new_boolean(c->sd2 || c->sdxl));
    return o;
}

static json_object *vae_config(const mk_config *c)
{
    const char *down[MAX_BLOCKS], *up[MAX_BLOCKS];
    for (int i = 0; i < c->vae_nblocks; i++)
        down[i] = "DownEncoderBlock2D", up[i] = "UpDecoderBlock2D";
    json_object *o = json_object_new_object();
    add(o, "_class_name", json_object_new_string("AutoencoderKL"));
    add(o, "_diffusers_version", json_object_new_string("0.31.0"));
    add(o, "act_fn", json_object_new_string("silu"));
    add(o, "block_out_channels", int_array(c->vae_blocks, c->vae_nblocks));
    add(o, "down_block_types", str_array(down, c->vae_nblocks));
    add(o, "in_channels", json_object_new_int(3));
    add(o, "latent_channels", json_object_new_int(4));
    add(o, "layers_per_block", json_object_new_int(c->vae_layers));
    add(o, "norm_num_groups", json_object_new_int(c->vae_groups));
    add(o, "out_channels", json_object_new_int(3));
    add(o, "sample_size", json_object_new_int(c->vae_sample));
    add(o, "scaling_factor", json_object_new_double(c->sdxl ? 0.13025 : 0.18215));
    add(o, "up_block_types", str_array(up, c->vae_nblocks));
    return o;
}

/* The hub's scheduler_config.json of the model c imitates (SD 1.5's PNDM for
 * the SD 1.x configs). */
static json_object *scheduler_config(const mk_config *c)
{
    json_object *o = json_object_new_object();
    add(o, "_class_name", json_object_new_string(sched_class[c->sched]));
    add(o, "_diffusers_version", json_object_new_string("0.31.0"));
    add(o, "beta_end", json_object_new_double(0.012));
    add(o, "beta_schedule", json_object_new_string("scaled_linear"));
    add(o, "beta_start", json_object_new_double(0.00085));
    add(o, "clip_sample", json_object_new_boolean(0));
    if (c->sched == SCHED_EULER || c->sched == SCHED_EULER_A) {
        add(o, "interpolation_type", json_object_new_string("linear"));
        add(o, "sample_max_value", json_object_new_double(1.0));
        add(o, "timestep_type", json_object_new_string("discrete"));
        add(o, "use_karras_sigmas", json_object_new_boolean(0));
    }
    add(o, "num_train_timesteps", json_object_new_int(1000));
    add(o, "prediction_type", json_object_new_string(c->prediction));
    add(o, "set_alpha_to_one", json_object_new_boolean(0));
    add(o, "skip_prk_steps", json_object_new_boolean(1));
    add(o, "steps_offset", json_object_new_int(1));
    if (c->spacing)
        add(o, "timestep_spacing", json_object_new_string(c->spacing));
    add(o, "trained_betas", NULL);
    return o;
}

static json_object *model_index(const mk_config *c)
{
    json_object *o = json_object_new_object();
    add(o, "_class_name", json_object_new_string(c->sdxl           ? "StableDiffusionXLPipeline"
                                                 : c->unet_in == 9 ? "StableDiffusionInpaintPipeline"
                                                                   : "StableDiffusionPipeline"));
    add(o, "_diffusers_version", json_object_new_string("0.31.0"));
    if (c->sdxl) {
        add(o, "force_zeros_for_empty_prompt", json_object_new_boolean(1));
        add(o, "text_encoder_2", str_array((const char *const[]){"transformers", "CLIPTextModelWithProjection"}, 2));
        add(o, "tokenizer_2", str_array((const char *const[]){"transformers", "CLIPTokenizer"}, 2));
    }
    /* [null, null]: no safety checker, feature extractor or (SDXL) image encoder */
    json_object *none[2] = {json_object_new_array(), json_object_new_array()};
    for (int i = 0; i < 2; i++)
        json_object_array_add(none[i], NULL), json_object_array_add(none[i], NULL);
    add(o, "feature_extractor", none[0]);
    if (c->sdxl) {
        add(o, "image_encoder", none[1]);
    } else {
        add(o, "requires_safety_checker", json_object_new_boolean(0));
        add(o, "safety_checker", none[1]);
    }
    add(o, "scheduler", str_array((const char *const[]){"diffusers", sched_class[c->sched]}, 2));
    add(o, "text_encoder", str_array((const char *const[]){"transformers", "CLIPTextModel"}, 2));
    add(o, "tokenizer", str_array((const char *const[]){"transformers", "CLIPTokenizer"}, 2));
    add(o, "unet", str_array((const char *const[]){"diffusers", "UNet2DConditionModel"}, 2));
    add(o, "vae", str_array((const char *const[]){"diffusers", "AutoencoderKL"}, 2));
    return o;
}

/* SD 2.x's tokenizer pads with "!" (id 0), SD 1.x's with <|endoftext|>;
 * SDXL's first pads as SD 1.x's, its second as SD 2.x's. */
static const char *pad_token(const mk_config *c, int second)
{
    return c->sd2 || second ? "!" : "<|endoftext|>";
}

static json_object *special_tokens_map(const mk_config *c, int second)
{
    json_object *o = json_object_new_object();
    add(o, "bos_token", json_object_new_string("<|startoftext|>"));
    add(o, "eos_token", json_object_new_string("<|endoftext|>"));
    add(o, "pad_token", json_object_new_string(pad_token(c, second)));
    add(o, "unk_token", json_object_new_string("<|endoftext|>"));
    return o;
}

static json_object *tokenizer_config(const mk_config *c, int second)
{
    json_object *o = json_object_new_object();
    add(o, "add_prefix_space", json_object_new_boolean(0));
    add(o, "bos_token", json_object_new_string("<|startoftext|>"));
    add(o, "clean_up_tokenization_spaces", json_object_new_boolean(1));
    add(o, "do_lower_case", json_object_new_boolean(1));
    add(o, "eos_token", json_object_new_string("<|endoftext|>"));
    add(o, "errors", json_object_new_string("replace"));
    add(o, "model_max_length", json_object_new_int(SDW_TOK_CONTEXT));
    add(o, "pad_token", json_object_new_string(pad_token(c, second)));
    add(o, "tokenizer_class", json_object_new_string("CLIPTokenizer"));
    add(o, "unk_token", json_object_new_string("<|endoftext|>"));
    return o;
}

/* Writes o (and drops the reference) as dir/name. */
static int write_json(const char *dir, const char *name, json_object *o, sdw_error *e)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int rc = json_object_to_file_ext(path, o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE);
    json_object_put(o);
    if (rc < 0)
        return sdw_fail(e, SDW_EIO, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

static int make_dir(const char *path, sdw_error *e)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return sdw_fail(e, SDW_EIO, "%s: cannot create: %s", path, strerror(errno));
    return 0;
}

/* ---- enumerating parameters through the loaders ---- */

typedef struct rec_tensor {
    char *name; /* where the loader's tensor lives (prefix included) */
    int block, nblocks; /* its row block of a fused tensor (nblocks 1: none) */
    int ndim;
    int64_t shape[4]; /* of the block */
    int64_t numel;
} rec_tensor;

typedef SDW_VEC(rec_tensor) recorder;

static int record(void *ctx, const sdw_weights_loc *loc, int ndim, const int64_t *shape, float *out, sdw_error *e)
{
    recorder *r = ctx;
    if (ndim < 1 || ndim > 4)
        return sdw_fail(e, SDW_EINVAL, "%s: %d dimensions", loc->name, ndim);
    int rc = sdw_vec_reserve(r, r->n + 1, e);
    if (rc)
        return rc;
    rec_tensor *t = &r->v[r->n];
    if (!(t->name = strdup(loc->name)))
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    t->block = loc->block;
    t->nblocks = loc->nblocks;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i], t->numel *= shape[i];
    r->n++;
    memset(out, 0, (size_t)t->numel * sizeof *out);
    return 0;
}

static void recorder_free(recorder *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i].name);
    sdw_vec_free(r);
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

typedef enum part { PART_TEXT, PART_UNET, PART_VAE, PART_TEXT2 } part;

static const char *const part_names[] = {"text_encoder", "unet", "vae", "text_encoder_2"};

/* Runs one part's loader on the CPU backend with a recording source, then
 * frees what it loaded; extra_layers more text encoder blocks than c has
 * (the OpenCLIP block SD 2 leaves out). */
static int enumerate(const mk_config *c, part p, sdw_layout layout, int extra_layers, recorder *r, sdw_error *e)
{
    sdw_backend *be;
    int rc = sdw_backend_cpu(&be, e);
    if (rc)
        return rc;
    sdw_weights w = {.synth = record, .synth_ctx = r};
    snprintf(w.part, sizeof w.part, "%s", part_names[p]);
    const char *prefix = "";
    if (layout == SDW_LAYOUT_LDM)
        prefix = p == PART_UNET ? SDW_LDM_UNET_PREFIX
                 : p == PART_VAE ? SDW_LDM_VAE_PREFIX
                 : c->sd2        ? SDW_LDM_OPENCLIP_PREFIX
                                 : SDW_LDM_CLIP_PREFIX;
    snprintf(w.prefix, sizeof w.prefix, "%s", prefix);
    if (p == PART_TEXT) {
        sdw_clip_config cc = {.vocab_size = 49408, .hidden_size = c->text_hidden,
                              .intermediate_size = c->text_inter, .num_layers = c->text_layers + extra_layers,
                              .num_heads = c->text_heads, .max_positions = SDW_TOK_CONTEXT,
                              .quick_gelu = !c->sd2, .layer_norm_eps = 1e-5f,
                              .pad_id = c->sd2 ? 0 : SDW_TOK_EOS};
        sdw_clip *clip = NULL;
        if (layout == SDW_LAYOUT_LDM && c->sd2)
            w.map = sdw_weights_openclip;
        rc = sdw_clip_load(&clip, be, &cc, &w, e);
        sdw_clip_free(clip);
    } else if (p == PART_TEXT2) {
        /* as transformers saves a CLIPTextModelWithProjection */
        sdw_clip_config cc = {.vocab_size = 49408, .hidden_size = c->text2_hidden,
                              .intermediate_size = c->text2_inter, .num_layers = c->text2_layers,
                              .num_heads = c->text2_heads, .max_positions = SDW_TOK_CONTEXT, .quick_gelu = 0,
                              .layer_norm_eps = 1e-5f, .pad_id = 0, .projection_dim = c->text2_proj};
        sdw_clip *clip = NULL;
        w.map = sdw_weights_text_model;
        rc = sdw_clip_load(&clip, be, &cc, &w, e);
        sdw_clip_free(clip);
    } else if (p == PART_UNET) {
        json_object *j = unet_config(c);
        sdw_unet_config uc;
        sdw_unet *u = NULL;
        if (!(rc = sdw_unet_config_parse(&uc, j, e)))
            rc = sdw_unet_load(&u, be, &uc, &w, layout, e);
        sdw_unet_free(u);
        json_object_put(j);
    } else {
        json_object *j = vae_config(c);
        sdw_vae_config vc;
        sdw_vae *v = NULL;
        if (!(rc = sdw_vae_config_parse(&vc, j, e)))
            rc = sdw_vae_load(&v, be, &vc, &w, layout, e);
        sdw_vae_free(v);
        json_object_put(j);
    }
    sdw_backend_destroy(be);
    return rc;
}

/* sdw_nn_load_matrix takes [rows, cols] or [rows, cols, 1, 1], and with
 * nothing to probe it asks for the former; the files diffusers and LDM
 * write hold some of those matrices as 1x1 convolutions, and the other
 * programs that read these models want them so: the UNet transformers'
 * proj_in/proj_out in both layouts unless they are linear (SD 2.x), the VAE
 * attention projections in LDM files. */
static void conv_shape(const mk_config *c, rec_tensor *t, part p, sdw_layout layout, const char *diffusers_name)
{
    static const char *const vae_attn[] = {".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"};
    int conv = 0;
    if (t->ndim != 2)
        return;
    if (p == PART_UNET && !c->sd2 && !c->sdxl)
        conv = strstr(diffusers_name, "attentions.") &&
               (ends_with(diffusers_name, ".proj_in.weight") || ends_with(diffusers_name, ".proj_out.weight"));
    if (p == PART_VAE && layout == SDW_LAYOUT_LDM)
        for (size_t i = 0; i < sizeof vae_attn / sizeof vae_attn[0]; i++)
            conv |= ends_with(diffusers_name, vae_attn[i]);
    if (conv)
        t->ndim = 4, t->shape[2] = t->shape[3] = 1;
}

/* ---- values ---- */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Values of the tensor whose diffusers name is t->name: scaled like a
 * trained network's so activations stay O(1) through every layer. */
static void fill(float *out, const rec_tensor *t, uint64_t seed)
{
    const char *name = t->name;
    sdw_rng rng;
    sdw_rng_seed(&rng, seed ^ name_hash(name));
    sdw_rng_randn(&rng, out, (size_t)t->numel);
    float mul, off = 0;
    if (ends_with(name, ".bias"))
        mul = 0.1f;
    else if (!strncmp(name, "embeddings.", 11) || !strncmp(name, "text_model.embeddings.", 22))
        mul = 0.5f;
    else if (t->ndim == 1)
        mul = 0.1f, off = 1;
    else
        mul = (float)(1.0 / sqrt((double)(t->numel / t->shape[0])));
    for (int64_t i = 0; i < t->numel; i++)
        out[i] = off + mul * out[i];
}

/* One tensor of an output file: its name and shape there, and the recorded
 * tensors whose values it holds, one per row block (q, k and v of a fused
 * OpenCLIP in_proj; otherwise just one). */
typedef struct out_tensor {
    const char *name;
    int ndim;
    int64_t shape[4];
    int64_t numel;
    const rec_tensor *src[3];
    int nsrc;
} out_tensor;

static out_tensor whole(const char *name, const rec_tensor *shape, const rec_tensor *src)
{
    out_tensor o = {.name = name, .ndim = shape->ndim, .numel = shape->numel, .src = {src}, .nsrc = 1};
    memcpy(o.shape, shape->shape, sizeof o.shape);
    return o;
}

static int write_tensors(const char *path, const out_tensor *out, size_t n, const mk_config *c, uint64_t seed,
                         sdw_error *e)
{
    sdw_st_entry *ent = calloc(n ? n : 1, sizeof *ent);
    float **data = calloc(n ? n : 1, sizeof *data);
    int rc = 0;
    if (!ent || !data) {
        rc = sdw_fail(e, SDW_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!(data[i] = malloc((size_t)out[i].numel * sizeof **data))) {
            rc = sdw_fail(e, SDW_ENOMEM, "out of memory for %s", out[i].name);
            goto out;
        }
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < out[i].nsrc; k++)
            fill(data[i] + k * out[i].src[0]->numel, out[i].src[k], seed);
    for (size_t i = 0; i < n; i++)
        ent[i] = (sdw_st_entry){.name = out[i].name, .dtype = c->dtype, .ndim = out[i].ndim,
                                .shape = out[i].shape, .data = data[i]};
    const char *meta[] = {"format", "pt", "sdworker", "random weights from sdworker-mkmodel"};
    rc = sdw_st_write(path, ent, n, meta, 2, e);
out:
    for (size_t i = 0; data && i < n; i++)
        free(data[i]);
    free(data);
    free(ent);
    return rc;
}

/* ---- the two layouts ---- */

static int write_tokenizer(const mk_config *c, const char *root, int second, sdw_error *e)
{
    char dir[4096], vocab[4200], merges[4200];
    sdw_tokenizer *t;
    snprintf(dir, sizeof dir, "%s/%s", root, second ? "tokenizer_2" : "tokenizer");
    int rc = make_dir(dir, e);
    if (rc || (rc = sdw_tok_load_default(&t, e)))
        return rc;
    snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
    snprintf(merges, sizeof merges, "%s/merges.txt", dir);
    rc = sdw_tok_save_hf(t, vocab, merges, e);
    sdw_tok_free(t);
    if (!rc && !(rc = write_json(dir, "special_tokens_map.json", special_tokens_map(c, second), e)))
        rc = write_json(dir, "tokenizer_config.json", tokenizer_config(c, second), e);
    return rc;
}

static int make_folder(const mk_config *c, const char *root, uint64_t seed, sdw_error *e)
{
    static const char *const files[] = {"model.safetensors", "diffusion_pytorch_model.safetensors",
                                        "diffusion_pytorch_model.safetensors", "model.safetensors"};
    char dir[4096], path[4200];
    int rc;
    if ((rc = make_dir(root, e)) || (rc = write_json(root, "model_index.json", model_index(c), e)) ||
        (rc = write_tokenizer(c, root, 0, e)) || (c->sdxl && (rc = write_tokenizer(c, root, 1, e))))
        return rc;
    snprintf(dir, sizeof dir, "%s/scheduler", root);
    if ((rc = make_dir(dir, e)) || (rc = write_json(dir, "scheduler_config.json", scheduler_config(c), e)))
        return rc;
    for (part p = PART_TEXT; p <= (c->sdxl ? PART_TEXT2 : PART_VAE); p++) {
        snprintf(dir, sizeof dir, "%s/%s", root, part_names[p]);
        json_object *cfg = p == PART_TEXT    ? text_config(c, 0)
                           : p == PART_TEXT2 ? text_config(c, 1)
                           : p == PART_UNET  ? unet_config(c)
                                             : vae_config(c);
        if ((rc = make_dir(dir, e)) || (rc = write_json(dir, "config.json", cfg, e)))
            return rc;
        recorder r = {0};
        if (!(rc = enumerate(c, p, SDW_LAYOUT_DIFFUSERS, 0, &r, e))) {
            out_tensor *t = malloc((r.n ? r.n : 1) * sizeof *t);
            if (!t)
                rc = sdw_fail(e, SDW_ENOMEM, "out of memory");
            for (size_t i = 0; t && i < r.n; i++) {
                conv_shape(c, &r.v[i], p, SDW_LAYOUT_DIFFUSERS, r.v[i].name);
                t[i] = whole(r.v[i].name, &r.v[i], &r.v[i]);
            }
            snprintf(path, sizeof path, "%s/%s", dir, files[p]);
            if (t)
                rc = write_tensors(path, t, r.n, c, seed, e);
            free(t);
        }
        recorder_free(&r);
        if (rc)
            return sdw_fail_wrap(e, "%s", part_names[p]);
    }
    return 0;
}

/* Adds the single-file tensor b, whose values are those of the diffusers
 * tensor a, to out[*n]: a block of a fused tensor joins the entry of its
 * name (its siblings are loaded just before it). */
static int add_single(out_tensor *out, size_t *n, const rec_tensor *a, const rec_tensor *b, sdw_error *e)
{
    if (a->numel != b->numel)
        return sdw_fail(e, SDW_EFORMAT, "%s and %s differ in size", a->name, b->name);
    if (b->nblocks == 1) {
        out[(*n)++] = whole(b->name, b, a);
        return 0;
    }
    size_t i = *n;
    while (i > 0 && *n - i < 8 && strcmp(out[i - 1].name, b->name))
        i--;
    if (i == 0 || strcmp(out[i - 1].name, b->name)) {
        if (b->nblocks > 3)
            return sdw_fail(e, SDW_EINVAL, "%s: %d blocks", b->name, b->nblocks);
        out[*n] = whole(b->name, b, NULL);
        out[*n].nsrc = b->nblocks;
        out[*n].shape[0] *= b->nblocks;
        out[*n].numel *= b->nblocks;
        i = ++*n;
    }
    out[i - 1].src[b->block] = a;
    return 0;
}

/* The loaders ask for the same tensors in the same order whatever the
 * layout, so running each twice pairs every diffusers name with the name the
 * engine reads from a single file, with no mapping written down here. An SD
 * 2.x text tower is enumerated with the block diffusers drops, and gets the
 * projection SD does not use, so the file has the real OpenCLIP key set. */
static int make_single(const mk_config *c, const char *path, uint64_t seed, sdw_error *e)
{
    recorder d[3] = {{0}}, l[3] = {{0}};
    out_tensor *out = NULL;
    rec_tensor proj = {.name = SDW_LDM_OPENCLIP_PREFIX "text_projection", .nblocks = 1, .ndim = 2,
                       .shape = {c->text_hidden, c->text_hidden}, .numel = (int64_t)c->text_hidden * c->text_hidden};
    size_t n = 1;
    int rc = 0;
    for (part p = PART_TEXT; !rc && p <= PART_VAE; p++) {
        int extra = p == PART_TEXT && c->sd2;
        if (!(rc = enumerate(c, p, SDW_LAYOUT_DIFFUSERS, extra, &d[p], e)) &&
            !(rc = enumerate(c, p, SDW_LAYOUT_LDM, extra, &l[p], e)) && d[p].n != l[p].n)
            rc = sdw_fail(e, SDW_EFORMAT, "%s: %zu tensors by diffusers names, %zu by LDM names", part_names[p],
                          d[p].n, l[p].n);
        n += d[p].n;
    }
    if (!rc && !(out = malloc(n * sizeof *out)))
        rc = sdw_fail(e, SDW_ENOMEM, "out of memory");
    n = 0;
    for (part p = PART_TEXT; !rc && p <= PART_VAE; p++)
        for (size_t i = 0; !rc && i < d[p].n; i++) {
            conv_shape(c, &l[p].v[i], p, SDW_LAYOUT_LDM, d[p].v[i].name);
            rc = add_single(out, &n, &d[p].v[i], &l[p].v[i], e);
        }
    for (size_t i = 0; !rc && i < n; i++)
        for (int k = 0; k < out[i].nsrc; k++)
            if (!out[i].src[k])
                rc = sdw_fail(e, SDW_EFORMAT, "%s: block %d was never loaded", out[i].name, k);
    if (!rc && c->sd2)
        out[n++] = whole(proj.name, &proj, &proj);
    if (!rc)
        rc = write_tensors(path, out, n, c, seed, e);
    for (part p = PART_TEXT; p <= PART_VAE; p++)
        recorder_free(&d[p]), recorder_free(&l[p]);
    free(out);
    return rc;
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sdworker-mkmodel --config NAME [--dtype f16|f32|bf16] [--seed N]\n"
            "                        (OUTDIR | --single-file OUT.safetensors)\n"
            "\n"
            "Writes a Stable Diffusion 1.x, 2.x or XL model with random weights, for tests and benchmarks.\n"
            "\n"
            "  OUTDIR            a diffusers folder: model_index.json, text_encoder/, tokenizer/\n"
            "                    (the bundled CLIP vocabulary), unet/, vae/, scheduler/\n"
            "  --single-file F   one safetensors file with LDM (CompVis) names instead (SD 2.x: the\n"
            "                    OpenCLIP text tower). sdworker reads an SD 1.x single file with SD 1.x's\n"
            "                    fixed configuration, so of those only sd15 and sd15-inpaint run; an SD 2.x\n"
            "                    one's UNet is read off its shapes (64-channel heads), so all of those run\n"
            "  --config NAME     sd15: Stable Diffusion 1.5's exact architecture (1.07 G parameters)\n"
            "                    sd15-inpaint: the same with a 9-channel UNet input\n"
            "                    sd2-base: SD 2.1-base (512, epsilon, PNDM); sd21: SD 2.1 (768,\n"
            "                    v-prediction, DDIM, upcast attention); sd2-inpaint: SD 2 inpainting\n"
            "                    (9 channels, 512, epsilon); sd-turbo: SD 2.1's architecture at 512 with\n"
            "                    Euler on trailing timesteps\n"
            "                    tiny: a small SD-shaped model (text 64 wide, 2 layers; UNet blocks\n"
            "                    32/64/64; VAE blocks 16/32/64/64, scale 8) that runs 512x512 in seconds\n"
            "                    tiny-sd2: the same for SD 2.x (gelu text encoder padding with \"!\",\n"
            "                    UNet blocks 64/128 with 1 and 2 heads, linear projections, v-prediction)\n"
            "                    sdxl: SDXL base 1.0's architecture (ViT-L and bigG text encoders, UNet\n"
            "                    320/640/1280 with 1/2/10 transformer layers, 1024); sdxl-turbo: the same\n"
            "                    at 512 with Euler ancestral on trailing timesteps; tiny-sdxl: a small\n"
            "                    SDXL-shaped model (folders only, for all three)\n"
            "  --dtype T         f16 (default for the full-size configs), f32 (for the tiny ones) or bf16\n"
            "  --seed N          the weights' seed (default 0); the same seed gives the same files\n"
            "\n"
            "Exit status: 0 on success, 1 on a failure to build or write the model, 2 on bad usage.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"dtype", required_argument, 0, 'd'},
        {"seed", required_argument, 0, 's'},   {"single-file", required_argument, 0, 'f'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    const char *cfg_name = NULL, *dtype = NULL, *single = NULL;
    uint64_t seed = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 'c': cfg_name = optarg; break;
        case 'd': dtype = optarg; break;
        case 'f': single = optarg; break;
        case 's':
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || !*optarg || *end || *optarg == '-') {
                fprintf(stderr, "sdworker-mkmodel: --seed: '%s' is not a non-negative integer\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    const char *outdir = optind < argc ? argv[optind] : NULL;
    if (!cfg_name || (!outdir == !single) || argc - optind > (single ? 0 : 1)) {
        fprintf(stderr, "sdworker-mkmodel: need --config and exactly one of OUTDIR or --single-file "
                        "(see --help)\n");
        return 2;
    }
    mk_config c;
    size_t k;
    for (k = 0; k < sizeof configs / sizeof configs[0] && strcmp(configs[k].name, cfg_name); k++)
        ;
    if (k == sizeof configs / sizeof configs[0]) {
        fprintf(stderr, "sdworker-mkmodel: unknown config '%s' (", cfg_name);
        for (k = 0; k < sizeof configs / sizeof configs[0]; k++)
            fprintf(stderr, "%s%s", k ? ", " : "", configs[k].name);
        fprintf(stderr, ")\n");
        return 2;
    }
    c = configs[k];
    if (dtype) {
        if (!strcmp(dtype, "f16"))
            c.dtype = SDW_DT_F16;
        else if (!strcmp(dtype, "f32"))
            c.dtype = SDW_DT_F32;
        else if (!strcmp(dtype, "bf16"))
            c.dtype = SDW_DT_BF16;
        else {
            fprintf(stderr, "sdworker-mkmodel: unknown dtype '%s' (f16, f32, bf16)\n", dtype);
            return 2;
        }
    }
    sdw_error e = {0};
    if (single && c.sdxl) {
        fprintf(stderr, "sdworker-mkmodel: --single-file: the SDXL configs make folders only\n");
        return 2;
    }
    int rc = single ? make_single(&c, single, seed, &e) : make_folder(&c, outdir, seed, &e);
    if (rc) {
        fprintf(stderr, "sdworker-mkmodel: %s\n", e.msg);
        return 1;
    }
    return 0;
}
