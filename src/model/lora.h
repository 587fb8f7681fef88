/* LoRA: low-rank updates of a loaded model's layers, per job.
 *
 * Files are safetensors in the kohya/A1111 layout (lora_unet_*, lora_te_*,
 * lora_te1_* / lora_te2_*, .lora_down / .lora_up / .alpha, LoCon's
 * convolutions; SDXL's SGM UNet paths mapped to diffusers') or in the
 * diffusers/PEFT one (unet. / text_encoder. / text_encoder_2. prefixes,
 * .lora_A / .lora_B, or the older .lora.down / .lora.up). Every module is
 * matched against the layers the model's loaders listed (nn.h's
 * sdw_layer_set) by its path with '.' written as '_', the way kohya names
 * them, so both layouts meet the model in one form.
 *
 * Applying runs each update beside the frozen weight (sdw_delta): the base
 * weights are never written, so removing the updates gives back exactly the
 * model as loaded. The scale is diffusers': weight * alpha / rank, alpha
 * being the rank when the file has none. */
#ifndef SDW_LORA_H
#define SDW_LORA_H

#include <stddef.h>
#include <sys/types.h>

#include "base/err.h"
#include "model/nn.h"
#include "model/safetensors.h"

/* One module of a file: the layer it updates and its two factors. */
typedef struct sdw_lora_module {
    char part[32];  /* "unet", "text_encoder", "text_encoder_2" */
    char flat[200]; /* the layer's path with '_' for '.': diffusers' or SGM's */
    int sgm;        /* flat is an SGM UNet path, mapped when matched */
    char key[232];  /* the module as the file names it, for messages */
    const sdw_st_tensor *down, *up;
    float alpha; /* the rank when the file gives none */
} sdw_lora_module;

typedef struct sdw_lora {
    char path[4096]; /* "" when parsed from memory */
    void *buf;       /* the file image, owned (NULL when parsed from memory) */
    size_t len;
    sdw_st_file st;
    sdw_lora_module *m;
    size_t n;
    /* "sd1", "sd2", "sdxl" as kohya's metadata (ss_base_model_version)
     * states it, "" when it does not. */
    char family[16];
    /* The file as read, to tell a later change. */
    dev_t dev;
    ino_t ino;
    off_t size;
    long long mtime_ns;
} sdw_lora;

/* Reads and checks a whole file (a truncated, malformed or hostile one is an
 * error naming it): every tensor a known LoRA tensor, each module with both
 * factors of matching rank and finite values, a positive finite alpha when
 * present, no module twice. The file is read, not mapped, so that it may change afterwards. */
int sdw_lora_open(sdw_lora **out, const char *path, sdw_error *e);
/* The same on a file image in memory, which must outlive the result. */
int sdw_lora_parse(sdw_lora **out, const void *buf, size_t len, sdw_error *e);
void sdw_lora_free(sdw_lora *l);
/* Memory the parsed file holds. */
size_t sdw_lora_bytes(const sdw_lora *l);
/* 1 when the file at l's path is no longer the one read (another size,
 * mtime or inode, or gone). */
int sdw_lora_changed(const sdw_lora *l);

/* Writes into out the diffusers path (with '_' for '.') of an SGM
 * (LDM/SDXL single-file) UNet path written kohya's way, e.g. with
 * layers_per_block 2 input_blocks_4_1_transformer_blocks_0_attn1_to_q ->
 * down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q; a path in
 * diffusers' form is copied unchanged. SGM numbers a level's layers in one
 * run, so the mapping needs the UNet's layers_per_block (2 in SD and SDXL;
 * sdw_lora_check reads it off the model's layers, as diffusers reads it off
 * the UNet config). Nonzero when an SGM path names no diffusers layer or out
 * is too small. */
int sdw_lora_sgm_path(const char *flat, int layers_per_block, char *out, size_t cap);

/* Whether l fits the model whose layers s lists (family "sd1", "sd2", ...):
 * its stated family matches, and so does the one its text encoder names
 * imply (SDXL's two, SD 1/2's one), every module finds its layer, no layer
 * twice, and every factor has the layer's shape. The error names the LoRA's
 * module and says why. */
int sdw_lora_check(const sdw_lora *l, const sdw_layer_set *s, const char *family, sdw_error *e);

typedef struct sdw_lora_use {
    const sdw_lora *lora;
    const char *name; /* for messages */
    float weight;
} sdw_lora_use;

typedef struct sdw_lora_applied sdw_lora_applied;

/* Checks every LoRA, then builds each update on be and attaches it to its
 * layer. All or nothing: on failure no layer is changed. *out is NULL for
 * n = 0. */
int sdw_lora_apply(const sdw_layer_set *s, const char *family, const sdw_lora_use *u, int n, sdw_backend *be,
                   sdw_lora_applied **out, sdw_error *e);
/* Detaches and frees every update a (may be NULL). */
void sdw_lora_remove(sdw_lora_applied *a);

#endif
