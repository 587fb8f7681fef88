/* Model loading: a diffusers folder or a single-file LDM checkpoint.
 *
 * A diffusers folder is driven by its config.json files, so a tiny test model
 * and real SD 1.5 go through the same code. A single-file checkpoint carries
 * no configs: the SD 1.x configuration is implied and sizes are read from the
 * tensors' shapes. Pickle checkpoints (.ckpt, .pt, .bin) are refused, since
 * loading one runs arbitrary code. */
#ifndef SDW_MODEL_H
#define SDW_MODEL_H

#include <json-c/json.h>
#include <stdint.h>

#include "base/err.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

typedef enum sdw_layout { SDW_LAYOUT_DIFFUSERS, SDW_LAYOUT_LDM } sdw_layout;

/* The weights of one model part: the files that hold it and the prefix its
 * tensor names carry there ("" in a diffusers folder,
 * "cond_stage_model.transformer." for the CLIP tower of an LDM file). */
typedef struct sdw_weights {
    const sdw_st_file *const *files;
    size_t nfiles;
    char prefix[128];
    char part[32];  /* "text_encoder", "unet", "vae": starts every message */
    /* A synthetic source instead of files (NULL: none): sdw_weights_load
     * asks it to fill out[numel] for prefix+name with the shape the loader
     * expects, and sdw_weights_find reports every name absent, so loaders
     * take their diffusers-name paths. This is how the loaders themselves
     * enumerate a model's parameters (sdworker-mkmodel). Returns 0 or a
     * negative sdw_status after sdw_fail. */
    int (*synth)(void *ctx, const char *full_name, int ndim, const int64_t *shape, float *out,
                 sdw_error *e);
    void *synth_ctx;
} sdw_weights;

/* Looks up prefix+name; SDW_ENOTFOUND when absent (always, for a synthetic
 * source). */
int sdw_weights_find(const sdw_weights *w, const char *name, const sdw_st_tensor **t, sdw_error *e);
/* Loads prefix+name as float32 into a new malloc'd buffer after checking that
 * it is floating point and has exactly the given shape (from the synthetic
 * source, when set, in that shape). */
int sdw_weights_load(const sdw_weights *w, const char *name, int ndim, const int64_t *shape,
                     float **out, sdw_error *e);
/* When prefix+name is stored in a file as IEEE half precision with exactly
 * the given shape, copies its values into a new malloc'd buffer and returns
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
    /* config.json of each part as parsed (NULL for a single-file checkpoint). */
    json_object *unet_config;
    json_object *vae_config;
    json_object *scheduler_config;
} sdw_model;

/* Opens whatever the model holds: the text encoder and tokenizer must be
 * there and valid; the UNet, VAE and scheduler parts of a diffusers folder are
 * opened and checked when their folders exist and left empty (files NULL,
 * config NULL) when absent, so that a text-encoder-only folder still loads.
 * The struct owns heap memory behind pointers into itself: do not copy it. */
int sdw_model_open(sdw_model *m, const char *path, sdw_error *e);
/* Fails with SDW_ENOTFOUND, naming what is missing, unless the model has
 * everything a txt2img pipeline needs: UNet and VAE weights, and for a
 * diffusers folder their configs and the scheduler config. A single-file
 * checkpoint has no configs; SD 1.x defaults apply to it. */
int sdw_model_require_pipeline(const sdw_model *m, sdw_error *e);
void sdw_model_close(sdw_model *m);

#endif
