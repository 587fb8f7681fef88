/* Model loading: a diffusers folder or a single-file LDM checkpoint.
 *
 * A diffusers folder is driven by its config.json files, so a tiny test model
 * and real SD 1.5 or 2.x go through the same code. A single-file checkpoint
 * carries no configs: its family (SD 1.x or 2.x) is read off its tensors,
 * sizes from their shapes, and the rest is the family's configuration. Pickle checkpoints (.ckpt, .pt, .bin) are refused, since
 * loading one runs arbitrary code. */
#ifndef SDW_MODEL_H
#define SDW_MODEL_H

#include <json-c/json.h>
#include <stdint.h>

#include "base/err.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

typedef enum sdw_layout { SDW_LAYOUT_DIFFUSERS, SDW_LAYOUT_LDM } sdw_layout;

/* Where a tensor a loader asks for lives when a file's layout differs from
 * the loader's names: its name there (after the prefix) and, for a tensor
 * stored fused with others along its first dimension (OpenCLIP's in_proj is
 * [q; k; v]), which of nblocks equal row blocks it is (nblocks 1: all of it);
 * transpose: a matrix stored as its transpose (OpenCLIP's text_projection,
 * which it multiplies from the right). */
typedef struct sdw_weights_loc {
    char name[256];
    int block, nblocks;
    int transpose;
} sdw_weights_loc;

/* Fills loc for a loader's tensor name; nonzero when the layout has no such
 * tensor. */
typedef int (*sdw_weights_map_fn)(const char *name, sdw_weights_loc *loc);

/* The weights of one model part: the files that hold it and the prefix its
 * tensor names carry there ("" or "text_model." for a diffusers text encoder,
 * "cond_stage_model.transformer.text_model." for the CLIP tower of an LDM
 * file, "model.diffusion_model." for its UNet). */
typedef struct sdw_weights {
    const sdw_st_file *const *files;
    size_t nfiles;
    char prefix[128];
    char part[32];  /* "text_encoder", "unet", "vae": starts every message */
    /* NULL: a loader's name is the file's (after the prefix), whole. */
    sdw_weights_map_fn map;
    /* A synthetic source instead of files (NULL: none): sdw_weights_load
     * asks it to fill out[numel] for the tensor at loc (loc->name has the
     * prefix) with the shape the loader expects (of the one block, for a
     * fused tensor), and sdw_weights_find reports every name absent, so
     * loaders take their diffusers-name paths. This is how the loaders
     * themselves enumerate a model's parameters (sdworker-mkmodel). Returns 0
     * or a negative sdw_status after sdw_fail. */
    /* Where the layers loaded from these weights are listed (NULL: not
     * listed), for LoRA (see nn.h). */
    struct sdw_layer_set *layers;
    int (*synth)(void *ctx, const sdw_weights_loc *loc, int ndim, const int64_t *shape, float *out,
                 sdw_error *e);
    void *synth_ctx;
} sdw_weights;

/* Tensor prefixes of a single-file (LDM) checkpoint: the SD 1.x CLIP tower
 * (then transformers' names), the SD 2.x OpenCLIP tower (then OpenCLIP's,
 * see sdw_weights_openclip), the UNet and the VAE. */
#define SDW_LDM_CLIP_PREFIX "cond_stage_model.transformer.text_model."
#define SDW_LDM_OPENCLIP_PREFIX "cond_stage_model.model."
#define SDW_LDM_UNET_PREFIX "model.diffusion_model."
#define SDW_LDM_VAE_PREFIX "first_stage_model."
/* SDXL's single files (SGM): the ViT-L tower in transformers' names, the
 * OpenCLIP bigG one (sdw_weights_openclip's, with its text_projection); the
 * UNet and VAE as above. The refiner holds only bigG, as embedder 0. */
#define SDW_SGM_CLIP_PREFIX "conditioner.embedders.0.transformer.text_model."
#define SDW_SGM_OPENCLIP_PREFIX "conditioner.embedders.1.model."
#define SDW_SGM_REFINER_PREFIX "conditioner.embedders.0.model."

/* The map from the CLIP loader's names (transformers 5's CLIPTextModel:
 * embeddings.*, encoder.layers.N.*, final_layer_norm.*) to an OpenCLIP text
 * tower's as an LDM file holds it: token_embedding.weight,
 * positional_embedding, transformer.resblocks.N.{ln_1, attn.in_proj_*
 * (q, k, v as row blocks 0, 1, 2), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj},
 * ln_final, and text_projection.weight as text_projection transposed; the
 * same renaming as diffusers' convert_open_clip_checkpoint. */
int sdw_weights_openclip(const char *name, sdw_weights_loc *loc);

/* The map for a CLIPTextModelWithProjection as transformers (every version)
 * saves it: the tower's names under text_model., text_projection.weight
 * beside it. */
int sdw_weights_text_model(const char *name, sdw_weights_loc *loc);

/* Looks up the tensor that holds name (all of a fused one); SDW_ENOTFOUND
 * when absent (always, for a synthetic source). */
int sdw_weights_find(const sdw_weights *w, const char *name, const sdw_st_tensor **t, sdw_error *e);
/* Loads name as float32 into a new malloc'd buffer after checking that it is
 * floating point and has exactly the given shape (a fused tensor: nblocks
 * times the rows, the other sizes equal), from the synthetic source, when
 * set, in that shape. */
int sdw_weights_load(const sdw_weights *w, const char *name, int ndim, const int64_t *shape,
                     float **out, sdw_error *e);
/* When name is stored in a file as IEEE half precision with exactly the
 * given shape (of its block, for a fused tensor), copies its values into a new malloc'd buffer and returns
 * 0; returns 1 (out NULL) when it is not (absent, another dtype or shape, or a
 * synthetic source), leaving sdw_weights_load to load or report it. */
int sdw_weights_load_f16(const sdw_weights *w, const char *name, int ndim, const int64_t *shape,
                         uint16_t **out, sdw_error *e);

typedef struct sdw_clip_config {
    int vocab_size;        /* 49408 */
    int hidden_size;       /* 768 */
    int intermediate_size; /* 3072 */
    int num_layers;        /* 12 */
    int num_heads;         /* 12 */
    int max_positions;     /* 77 */
    int quick_gelu;        /* 1: x*sigmoid(1.702x), 0: exact erf gelu */
    float layer_norm_eps;  /* 1e-5 */
    int32_t pad_id;        /* 49407 for SD 1.x */
    /* CLIPTextModelWithProjection's text_projection (no bias) maps the
     * pooled state to this width; 0 for a CLIPTextModel, which has none. */
    int projection_dim;
} sdw_clip_config;

typedef struct sdw_model {
    char path[4096];
    sdw_layout layout;
    sdw_st_file *files; /* every file opened, owned */
    size_t nfiles;
    sdw_clip_config clip;
    sdw_weights text_encoder;
    sdw_weights unet;
    sdw_weights vae;
    sdw_tokenizer *tokenizer;
    /* SDXL's second text encoder (OpenCLIP bigG with its projection) and
     * its tokenizer, which pads with "!"; files NULL and tokenizer_2 NULL
     * for the other families. */
    sdw_clip_config clip2;
    sdw_weights text_encoder_2;
    sdw_tokenizer *tokenizer_2;
    /* model_index.json's force_zeros_for_empty_prompt (SDXL): without a
     * negative prompt the unconditional embeddings are zeros, not "". */
    int force_zeros;
    /* config.json of each part as parsed. A single file has none; for it
     * unet_config is synthesized from the tensors' shapes for SD 2.x (NULL
     * for SD 1.x, whose architecture is fixed: sdw_unet_config_parse's
     * default), vae_config stays NULL (SD 1.x and 2.x share the VAE), and
     * scheduler_config is the scheduler_config.json of the repository
     * diffusers takes a single file of that family's configs from (see
     * family). */
    json_object *unet_config;
    json_object *vae_config;
    json_object *scheduler_config;
    /* "sd1", "sd2" or "sdxl". SDXL is a folder with a text_encoder_2. SD 2.x is an OpenCLIP text tower (exact-erf gelu in a
     * folder's text encoder config, cond_stage_model.model.* in a single
     * file) or, as diffusers decides for single files, a UNet whose
     * input_blocks.2.1 cross-attention reads 1024-wide text states. */
    const char *family;
    /* The UNet takes 9 input channels (latents, mask, masked-image latents). */
    int inpainting;
    /* Side in pixels of the images the model was trained on: a folder's
     * unet sample_size times the VAE's scale; for a single file diffusers'
     * default for the family: 512 for SD 1.x, 768 for SD 2.x (as
     * stabilityai/stable-diffusion-2-1) and 512 for SD 2.x inpainting (as
     * stabilityai/stable-diffusion-2-inpainting). */
    int default_size;
} sdw_model;

/* Opens whatever the model holds: the text encoder and tokenizer must be
 * there and valid; the UNet, VAE and scheduler parts of a diffusers folder are
 * opened and checked when their folders exist and left empty (files NULL,
 * config NULL) when absent, so that a text-encoder-only folder still loads.
 * The struct owns heap memory behind pointers into itself: do not copy it. */
int sdw_model_open(sdw_model *m, const char *path, sdw_error *e);
/* Fails with SDW_ENOTFOUND, naming what is missing, unless the model has
 * everything a txt2img pipeline needs: UNet and VAE weights, and for a
 * diffusers folder their configs and the scheduler config. A single file's
 * configs are implied (see unet_config above). */
int sdw_model_require_pipeline(const sdw_model *m, sdw_error *e);
/* What the UNet predicts, as the scheduler config says: "epsilon" or
 * "v_prediction" ("epsilon" when the config has no prediction_type or there
 * is no scheduler config). */
const char *sdw_model_prediction(const sdw_model *m);
/* Sets the scheduler config's prediction_type: "epsilon", or "v" /
 * "v_prediction". A single file does not say which it was trained for
 * (an SD 2-base file is epsilon, diffusers' v2 default is not), so the
 * configuration may. SDW_EINVAL for another value, SDW_ENOTFOUND for a
 * folder without a scheduler config. */
int sdw_model_set_prediction(sdw_model *m, const char *prediction, sdw_error *e);
void sdw_model_close(sdw_model *m);

#endif
