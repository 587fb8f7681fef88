#include "pipeline/pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "model/clip.h"
#include "model/lora.h"
#include "model/model.h"
#include "model/unet.h"
#include "model/vae.h"
#include "pipeline/pixels.h"
#include "pipeline/rng.h"
#include "pipeline/scheduler.h"

struct sdw_pipeline {
    sdw_backend *be;
    sdw_backend *vae_be; /* be, or the float32 backend for a force_upcast VAE */
    sdw_model model;
    sdw_clip *clip;
    sdw_clip *clip2; /* SDXL's second text encoder, else NULL */
    sdw_unet *unet;
    sdw_vae *vae;
    sdw_layer_set layers; /* the text encoder's and the UNet's, for LoRA */
    int scale;           /* VAE downscale: 2^(blocks-1) */
    int latent_channels; /* 4 */
    int vae_channels;    /* the VAE decoder's width at full resolution: block_out[0] */
    /* During a generation: the current latents and their grid, for previews. */
    const float *cur_latents;
    int cur_h, cur_w;
};

void sdw_gen_params_init(sdw_gen_params *gp, sdw_gen_kind kind)
{
    memset(gp, 0, sizeof *gp);
    gp->kind = kind;
    gp->steps = 20;
    gp->guidance = 7.5f;
    gp->width = gp->height = 512;
    gp->strength = kind == SDW_GEN_INPAINT ? 1.0 : 0.8;
}

int sdw_pipeline_scale(const sdw_pipeline *p)
{
    return p->scale;
}

int sdw_pipeline_unet_channels(const sdw_pipeline *p)
{
    return sdw_unet_config_of(p->unet)->in_channels;
}

void sdw_pipeline_free(sdw_pipeline *p)
{
    if (!p)
        return;
    sdw_clip_free(p->clip);
    sdw_clip_free(p->clip2);
    sdw_unet_free(p->unet);
    sdw_vae_free(p->vae);
    sdw_layer_set_free(&p->layers);
    sdw_model_close(&p->model);
    free(p);
}

/* A single file implies SD 1.x's UNet config, but inpainting checkpoints
 * (sd-v1-5-inpainting) take 9 input channels: read them off conv_in. */
static int ldm_in_channels(const sdw_model *m, sdw_unet_config *cfg, sdw_error *e)
{
    const sdw_st_tensor *t;
    if (m->layout != SDW_LAYOUT_LDM)
        return SDW_OK;
    int rc = sdw_weights_find(&m->unet, "input_blocks.0.0.weight", &t, e);
    if (rc)
        return rc;
    if (t->ndim != 4 || t->shape[1] <= 0 || t->shape[1] > 64)
        return sdw_fail(e, SDW_EFORMAT, "unet: input_blocks.0.0.weight is not a convolution weight");
    cfg->in_channels = (int)t->shape[1];
    return SDW_OK;
}

static int load_parts(sdw_pipeline *p, sdw_backend *fp32, sdw_error *e)
{
    sdw_model *m = &p->model;
    sdw_unet_config ucfg;
    sdw_vae_config vcfg;
    int rc;
    m->text_encoder.layers = m->text_encoder_2.layers = m->unet.layers = &p->layers;
    if ((rc = sdw_model_require_pipeline(m, e)) || (rc = sdw_clip_load(&p->clip, p->be, &m->clip, &m->text_encoder, e)) ||
        (rc = sdw_unet_config_parse(&ucfg, m->unet_config, e)) || (rc = ldm_in_channels(m, &ucfg, e)) ||
        (rc = sdw_unet_load(&p->unet, p->be, &ucfg, &m->unet, m->layout, e)) ||
        (rc = sdw_vae_config_parse(&vcfg, m->vae_config, e)))
        return rc;
    p->vae_be = p->be;
    if (sdw_vae_needs_upcast(&vcfg, p->be)) {
        if (fp32)
            p->vae_be = fp32;
        else
            sdw_log(SDW_LOG_WARN, "%s: the VAE's config says force_upcast, but no float32 backend was given: it "
                    "runs in fp16, where it may overflow to black or NaN images", m->path);
    }
    if ((rc = sdw_vae_load(&p->vae, p->vae_be, &vcfg, &m->vae, m->layout, e)))
        return rc;
    p->scale = 1 << (vcfg.nblocks - 1);
    p->latent_channels = vcfg.latent_channels;
    p->vae_channels = vcfg.block_out[0];
    if (m->text_encoder_2.nfiles && (rc = sdw_clip_load(&p->clip2, p->be, &m->clip2, &m->text_encoder_2, e)))
        return rc;
    int width = m->clip.hidden_size + (p->clip2 ? m->clip2.hidden_size : 0);
    if (ucfg.cross_attention_dim != width)
        return sdw_fail(e, SDW_EFORMAT, "the UNet attends to %d-wide text states but the text encoder%s make%s %d",
                        ucfg.cross_attention_dim, p->clip2 ? "s" : "", p->clip2 ? "" : "s", width);
    if (!p->clip2 != !ucfg.text_time)
        return sdw_fail(e, SDW_EFORMAT, "%s", p->clip2 ? "two text encoders (SDXL) but a UNet without text_time"
                                                       : "a text_time UNet (SDXL) without a text_encoder_2");
    if (p->clip2 && m->clip2.projection_dim + 6 * ucfg.add_time_dim != ucfg.add_in)
        return sdw_fail(e, SDW_EFORMAT, "the UNet's add_embedding takes %d inputs, not %d pooled + 6 x %d time ids",
                        ucfg.add_in, m->clip2.projection_dim, ucfg.add_time_dim);
    if (ucfg.out_channels != vcfg.latent_channels ||
        (ucfg.in_channels != vcfg.latent_channels && ucfg.in_channels != 2 * vcfg.latent_channels + 1))
        return sdw_fail(e, SDW_EFORMAT, "UNet channels %d in / %d out do not fit a VAE with %d latent channels",
                        ucfg.in_channels, ucfg.out_channels, vcfg.latent_channels);
    return SDW_OK;
}

int sdw_pipeline_load(sdw_pipeline **out, sdw_backend *be, const char *model_path, const sdw_pipeline_options *o,
                      sdw_error *e)
{
    sdw_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    p->be = be;
    int rc = sdw_model_open(&p->model, model_path, e);
    if (rc) {
        free(p);
        return rc;
    }
    if (o && o->prediction && *o->prediction) {
        char own[16];
        snprintf(own, sizeof own, "%s", sdw_model_prediction(&p->model));
        /* its messages name the model already */
        if ((rc = sdw_model_set_prediction(&p->model, o->prediction, e))) {
            sdw_pipeline_free(p);
            return rc;
        }
        /* Nothing in the weights tells the two apart, and the wrong one
         * draws noise: say so where someone will look. */
        if (strcmp(own, sdw_model_prediction(&p->model)))
            sdw_log(SDW_LOG_WARN, "%s: running as %s, overriding the %s %s", model_path,
                    sdw_model_prediction(&p->model), own,
                    p->model.layout == SDW_LAYOUT_LDM ? "its family implies" : "its scheduler config gives");
    }
    rc = load_parts(p, o ? o->fp32 : NULL, e);
    if (rc) {
        sdw_fail_wrap(e, "%s", model_path);
        sdw_pipeline_free(p);
        return rc;
    }
    *out = p;
    return SDW_OK;
}

void sdw_pipeline_describe(const sdw_pipeline *p, sdw_pipeline_info *info)
{
    info->family = p->model.family;
    info->prediction = sdw_model_prediction(&p->model);
    info->inpaint = p->model.inpainting;
    info->width = info->height = p->model.default_size;
    info->vae_fp32 = p->vae_be != p->be;
}

/* Live activations at the peak, in elements per output pixel per channel of
 * the stage's full-resolution width. The UNet's: at latent resolution the
 * skip connections (1 + layers_per_block of them, and those of the lower
 * levels, about 2.5 more in SD's 1:2:4:4 widths) and a transformer's
 * feed-forward (12 more: the 8-wide GEGLU input, its 4-wide output) with
 * the block's input and norm, 20 in all, rounded up to 24 for the
 * attention's per-thread blocks. The VAE decoder's: its last upsampler and
 * first full-resolution resnet hold 2 * block_out[1] (= 4 block_out[0] in
 * SD's) plus the resnet's block_out[0]-wide halves, and the CPU's
 * convolutions their column blocks: measured at 5.0-5.2 for SD 1.5 (1.07 G
 * parameters, 256-768 px, doc/architecture.md), taken as 6. */
#define SDW_UNET_ACT_PER_C0 24
#define SDW_VAE_ACT_PER_C0 6

void sdw_pipeline_memory(const sdw_pipeline *p, sdw_pipeline_mem *m)
{
    const sdw_unet_config *u = sdw_unet_config_of(p->unet);
    int batch = u->time_cond_proj_dim ? 1 : 2;
    size_t latent_px = (size_t)p->scale * (size_t)p->scale;
    size_t unet_elem = p->be->fp16 ? 2 : 4, vae_elem = p->vae_be->fp16 ? 2 : 4;
    m->unet_per_pixel = (SDW_UNET_ACT_PER_C0 * (size_t)batch * (size_t)u->block_out[0] * unet_elem + latent_px - 1) /
                        latent_px;
    m->vae_per_pixel = SDW_VAE_ACT_PER_C0 * (size_t)p->vae_channels * vae_elem;
}

const char *sdw_pipeline_sampler(const sdw_pipeline *p, const char *requested)
{
    sdw_sched *s;
    sdw_error e;
    if (sdw_sched_create(&s, p->model.scheduler_config, requested, 0.0f, &e))
        return NULL;
    const char *name = sdw_sched_sampler_name(s);
    sdw_sched_free(s);
    return name;
}

int sdw_pipeline_max_steps(const sdw_pipeline *p, const char *requested)
{
    sdw_sched *s;
    sdw_error e;
    if (sdw_sched_create(&s, p->model.scheduler_config, requested, 0.0f, &e))
        return 0;
    int n = sdw_sched_max_steps(s);
    sdw_sched_free(s);
    return n < 1000 ? n : 1000;
}

int sdw_pipeline_preview(const sdw_pipeline *p, sdw_image *img, sdw_error *e)
{
    if (!p->cur_latents)
        return sdw_fail(e, SDW_EINVAL, "no generation in progress");
    return sdw_latent_preview(img, p->cur_latents, p->cur_w, p->cur_h, e);
}

/* Everything one generation allocates, freed in one place. */
typedef struct gen_state {
    int batch;             /* 2 with classifier-free guidance, else 1 */
    int h, w;              /* latent grid */
    size_t n;              /* latent_channels * h * w */
    int cin;               /* UNet input channels */
    sdw_rng rng;
    sdw_sched *sched;
    sdw_tensor ctx, x, eps;
    sdw_tensor pooled;     /* SDXL: [batch, projection_dim] */
    float time_ids[2 * 6]; /* SDXL: per batch item */
    float *latents, *noise, *step_noise, *unet_in, *eps_host;
    float *tcond;          /* LCM-distilled UNets: the guidance embedding [time_cond_proj_dim] */
    float *image_latents;  /* inpaint on a 4-channel model: the clean init latents */
    float *mask, *masked_latents; /* inpaint: [h*w] binary mask, [n] latents */
} gen_state;

static void gen_free(gen_state *s)
{
    sdw_sched_free(s->sched);
    sdw_tensor_free(&s->ctx);
    sdw_tensor_free(&s->pooled);
    sdw_tensor_free(&s->x);
    sdw_tensor_free(&s->eps);
    free(s->latents), free(s->noise), free(s->step_noise), free(s->unet_in), free(s->eps_host);
    free(s->image_latents), free(s->mask), free(s->masked_latents), free(s->tcond);
}

/* get_guidance_scale_embedding of diffusers' SD pipelines, in its float32
 * operations: w = (guidance - 1) * 1000, f_i = exp(-i ln(10000) / (half - 1)),
 * [sin(w f), cos(w f)], a zero after them for an odd width. */
static void guidance_embedding(float guidance, int dim, float *out)
{
    int half = dim / 2;
    float w = (float)((double)guidance - 1.0) * 1000.0f;
    float step = logf(10000.0f) / (float)(half - 1);
    for (int i = 0; i < half; i++) {
        float a = w * expf((float)i * -step);
        out[i] = sinf(a);
        out[half + i] = cosf(a);
    }
    if (dim % 2)
        out[dim - 1] = 0.0f;
}

/* One text through an SDXL encoder: hidden_states[-(2 + skip)] into
 * host[tokens, width] at a row stride of stride floats, and for the second
 * encoder the pooled embedding. */
static int encode_xl_one(sdw_pipeline *p, sdw_clip *c, const sdw_clip_config *cc, const sdw_tokenizer *tok,
                         const char *text, int skip, float *host, size_t stride, float *pooled, sdw_error *e)
{
    int tokens = SDW_TOK_CONTEXT;
    int32_t ids[SDW_TOK_CONTEXT];
    int64_t hs[3] = {1, tokens, cc->hidden_size}, ps[2] = {1, cc->projection_dim};
    size_t row = (size_t)cc->hidden_size;
    sdw_tensor h = {0}, pt = {0};
    float *buf = malloc((size_t)tokens * row * sizeof *buf);
    int rc = buf ? SDW_OK : sdw_fail(e, SDW_ENOMEM, "out of memory");
    if (!rc && (rc = sdw_tok_encode(tok, text, ids, tokens, cc->pad_id, e)) > 0)
        rc = SDW_OK;
    if (!rc)
        rc = sdw_tensor_new(&h, p->be, 3, hs, e);
    if (!rc && pooled)
        rc = sdw_tensor_new(&pt, p->be, 2, ps, e);
    if (!rc)
        rc = sdw_clip_encode_hidden(c, ids, 1, tokens, cc->num_layers - 1 - skip, &h, pooled ? &pt : NULL, e);
    if (!rc)
        rc = sdw_tensor_to_host(&h, buf, e);
    if (!rc && pooled)
        rc = sdw_tensor_to_host(&pt, pooled, e);
    for (int t = 0; !rc && t < tokens; t++)
        memcpy(host + (size_t)t * stride, buf + (size_t)t * row, row * sizeof *buf);
    sdw_tensor_free(&h), sdw_tensor_free(&pt);
    free(buf);
    return rc;
}

/* SDXL's encode_prompt: per text, the penultimate states of both encoders
 * side by side and the second's pooled embedding; a missing negative prompt
 * is zeros when the model says force_zeros_for_empty_prompt. clip_skip goes
 * to the prompt only, as for SD. */
static int encode_text_xl(sdw_pipeline *p, const sdw_gen_params *gp, gen_state *s, sdw_error *e)
{
    const sdw_model *m = &p->model;
    int tokens = SDW_TOK_CONTEXT, h1 = m->clip.hidden_size, h2 = m->clip2.hidden_size, pd = m->clip2.projection_dim;
    size_t row = (size_t)tokens * (h1 + h2);
    int64_t cs[3] = {s->batch, tokens, h1 + h2}, ps[2] = {s->batch, pd};
    float *ctx = calloc((size_t)s->batch * row, sizeof *ctx), *pooled = calloc((size_t)s->batch * pd, sizeof *pooled);
    int rc = ctx && pooled ? SDW_OK : sdw_fail(e, SDW_ENOMEM, "out of memory");
    for (int b = 0; !rc && b < s->batch; b++) {
        int positive = b + 1 == s->batch;
        const char *text = positive ? gp->prompt : gp->negative_prompt ? gp->negative_prompt : "";
        if (!positive && !gp->negative_prompt && m->force_zeros)
            continue;
        int skip = positive ? gp->clip_skip : 0;
        float *at = ctx + b * row;
        if ((rc = encode_xl_one(p, p->clip, &m->clip, m->tokenizer, text, skip, at, (size_t)(h1 + h2), NULL, e)) ||
            (rc = encode_xl_one(p, p->clip2, &m->clip2, m->tokenizer_2, text, skip, at + h1, (size_t)(h1 + h2),
                                pooled + (size_t)b * pd, e)))
            sdw_fail_wrap(e, positive ? "prompt" : "negative prompt");
    }
    if (!rc)
        rc = sdw_tensor_from_host(&s->ctx, p->be, 3, cs, ctx, e);
    if (!rc)
        rc = sdw_tensor_from_host(&s->pooled, p->be, 2, ps, pooled, e);
    free(ctx), free(pooled);
    return rc;
}

/* add_time_ids, (height, width) pairs: the original size, the crop's top
 * left, the target size; the negative half the same (diffusers' default
 * when no negative sizes are given). */
static void time_ids(const sdw_gen_params *gp, int W, int H, gen_state *s)
{
    float v[6] = {(float)(gp->original_height ? gp->original_height : H),
                  (float)(gp->original_width ? gp->original_width : W),
                  (float)gp->crop_top,
                  (float)gp->crop_left,
                  (float)(gp->target_height ? gp->target_height : H),
                  (float)(gp->target_width ? gp->target_width : W)};
    for (int b = 0; b < s->batch; b++)
        memcpy(s->time_ids + 6 * b, v, sizeof v);
}

/* Token ids for [negative; prompt] (or just the prompt without guidance),
 * through the text encoder. diffusers applies clip_skip to the prompt only,
 * never to the negative prompt; so do we, to produce the same images. */
static int encode_text(sdw_pipeline *p, const sdw_gen_params *gp, gen_state *s, sdw_error *e)
{
    if (p->clip2)
        return encode_text_xl(p, gp, s, e);
    const sdw_clip_config *cc = &p->model.clip;
    int tokens = SDW_TOK_CONTEXT;
    int32_t ids[2 * SDW_TOK_CONTEXT];
    int64_t shape[3] = {s->batch, tokens, cc->hidden_size};
    int rc = sdw_tensor_new(&s->ctx, p->be, 3, shape, e);
    if (rc)
        return rc;
    const char *texts[2] = {gp->negative_prompt ? gp->negative_prompt : "", gp->prompt};
    const char **t = s->batch == 2 ? texts : texts + 1;
    for (int b = 0; b < s->batch; b++) {
        rc = sdw_tok_encode(p->model.tokenizer, t[b], ids + b * tokens, tokens, cc->pad_id, e);
        if (rc < 0)
            return sdw_fail_wrap(e, b + 1 < s->batch ? "negative prompt" : "prompt");
    }
    if (gp->clip_skip == 0)
        return sdw_clip_encode(p->clip, ids, s->batch, tokens, 0, &s->ctx, e);
    /* Each text alone (their clip_skip differs), gathered on the host: a
     * tensor's data is a handle, not an address to offset. */
    int64_t one[3] = {1, tokens, cc->hidden_size};
    size_t row = (size_t)tokens * cc->hidden_size;
    float *host = malloc((size_t)s->batch * row * sizeof *host);
    if (!host)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    sdw_tensor part;
    for (int b = 0; !rc && b < s->batch; b++) {
        int skip = b + 1 == s->batch ? gp->clip_skip : 0;
        if ((rc = sdw_tensor_new(&part, p->be, 3, one, e)))
            break;
        rc = sdw_clip_encode(p->clip, ids + b * tokens, 1, tokens, skip, &part, e);
        if (!rc)
            rc = sdw_tensor_to_host(&part, host + b * row, e);
        sdw_tensor_free(&part);
    }
    if (!rc)
        rc = sdw_tensor_upload(&s->ctx, host, e);
    free(host);
    return rc;
}

/* 0.18215 * (mean + std * noise) of an image's posterior, noise drawn from
 * the generator now, exactly where diffusers draws it. */
static int encode_image(sdw_pipeline *p, gen_state *s, const float *pixels, float *out, sdw_error *e)
{
    int64_t ishape[4] = {1, 3, s->h * p->scale, s->w * p->scale};
    int64_t lshape[4] = {1, p->latent_channels, s->h, s->w};
    sdw_tensor img = {0}, noise = {0}, lat = {0};
    /* step_noise is free scratch until sampling starts */
    sdw_rng_randn(&s->rng, s->step_noise, s->n);
    int rc = sdw_tensor_from_host(&img, p->vae_be, 4, ishape, pixels, e);
    if (!rc)
        rc = sdw_tensor_from_host(&noise, p->vae_be, 4, lshape, s->step_noise, e);
    if (!rc)
        rc = sdw_tensor_new(&lat, p->vae_be, 4, lshape, e);
    if (!rc)
        rc = sdw_vae_encode(p->vae, &img, &noise, &lat, e);
    if (!rc)
        rc = sdw_tensor_to_host(&lat, out, e);
    sdw_tensor_free(&img), sdw_tensor_free(&noise), sdw_tensor_free(&lat);
    return rc;
}

/* The init image in [-1,1] NCHW, and for inpainting the binarised mask
 * (>= 0.5 repaints) and the image with the repaint region zeroed. */
static int prepare_images(sdw_pipeline *p, const sdw_gen_params *gp, gen_state *s, sdw_error *e)
{
    int H = s->h * p->scale, W = s->w * p->scale;
    size_t plane = (size_t)H * W;
    float *pixels = malloc(3 * plane * sizeof *pixels);
    if (!pixels)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    sdw_image_to_float(gp->init_image, pixels);
    int rc = SDW_OK;
    if (gp->kind == SDW_GEN_IMG2IMG) {
        rc = encode_image(p, s, pixels, s->image_latents, e);
        free(pixels);
        return rc;
    }
    const sdw_image *m = gp->mask;
    float *full = malloc(plane * sizeof *full);
    if (!full) {
        free(pixels);
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < plane; i++)
        full[i] = sdw_image_grey_at(m, i) / 255.0f >= 0.5f ? 1.0f : 0.0f;
    /* torch's nearest downsampling by an integer factor picks the top-left pixel. */
    for (int y = 0; y < s->h; y++)
        for (int x = 0; x < s->w; x++)
            s->mask[(size_t)y * s->w + x] = full[(size_t)y * p->scale * W + (size_t)x * p->scale];
    float *masked = malloc(3 * plane * sizeof *masked);
    if (!masked)
        rc = sdw_fail(e, SDW_ENOMEM, "out of memory");
    for (int c = 0; !rc && c < 3; c++)
        for (size_t i = 0; i < plane; i++)
            masked[c * plane + i] = pixels[c * plane + i] * (full[i] < 0.5f ? 1.0f : 0.0f);
    /* diffusers' draw order: the init image's posterior (4-channel models,
     * or strength < 1), then the initial noise, then the masked image's. */
    int need_image = s->cin == p->latent_channels || gp->strength < 1.0;
    if (!rc && need_image)
        rc = encode_image(p, s, pixels, s->image_latents, e);
    if (!rc)
        sdw_rng_randn(&s->rng, s->noise, s->n);
    if (!rc)
        rc = encode_image(p, s, masked, s->masked_latents, e);
    free(masked), free(full), free(pixels);
    return rc;
}

static int initial_latents(sdw_pipeline *p, const sdw_gen_params *gp, gen_state *s, sdw_error *e)
{
    float sigma = sdw_sched_init_noise_sigma(s->sched);
    if (gp->kind == SDW_GEN_TXT2IMG) {
        sdw_rng_randn(&s->rng, s->noise, s->n);
        for (size_t i = 0; i < s->n; i++)
            s->latents[i] = s->noise[i] * sigma;
        return SDW_OK;
    }
    int rc = prepare_images(p, gp, s, e);
    if (rc)
        return rc;
    if (gp->kind == SDW_GEN_IMG2IMG) {
        sdw_rng_randn(&s->rng, s->noise, s->n);
        return sdw_sched_add_noise(s->sched, 0, s->image_latents, s->noise, s->latents, s->n, e);
    }
    if (gp->strength >= 1.0) {
        for (size_t i = 0; i < s->n; i++)
            s->latents[i] = s->noise[i] * sigma;
        return SDW_OK;
    }
    return sdw_sched_add_noise(s->sched, 0, s->image_latents, s->noise, s->latents, s->n, e);
}

/* The UNet input for the current step: the scaled latents, once per batch
 * item, with the mask and masked-image latents appended for 9-channel
 * inpainting models. */
static void build_unet_input(sdw_pipeline *p, gen_state *s, const float *scaled)
{
    size_t plane = (size_t)s->h * s->w, lat = s->n;
    for (int b = 0; b < s->batch; b++) {
        float *dst = s->unet_in + (size_t)b * s->cin * plane;
        memcpy(dst, scaled, lat * sizeof *dst);
        if (s->cin != p->latent_channels) {
            memcpy(dst + lat, s->mask, plane * sizeof *dst);
            memcpy(dst + lat + plane, s->masked_latents, lat * sizeof *dst);
        }
    }
}

static int denoise(sdw_pipeline *p, const sdw_gen_params *gp, gen_state *s, sdw_gen_callback cb, void *ctx,
                   int *calls, sdw_error *e)
{
    int total = sdw_sched_num_calls(s->sched);
    const float *ts = sdw_sched_timesteps(s->sched);
    float *scaled = malloc(s->n * sizeof *scaled);
    if (!scaled)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = SDW_OK;
    size_t plane = (size_t)s->h * s->w;
    sdw_unet_cond cond = {.text_embeds = s->pooled.data ? &s->pooled : NULL,
                          .time_ids = s->pooled.data ? s->time_ids : NULL,
                          .timestep_cond = s->tcond};
    for (int i = 0; i < total && !rc; i++) {
        float t[2] = {ts[i], ts[i]};
        sdw_sched_scale_model_input(s->sched, s->latents, scaled, s->n);
        build_unet_input(p, s, scaled);
        rc = sdw_tensor_upload(&s->x, s->unet_in, e);
        if (!rc)
            rc = sdw_unet_forward(p->unet, &s->x, t, &s->ctx, &cond, &s->eps, e);
        if (!rc)
            rc = sdw_tensor_to_host(&s->eps, s->eps_host, e);
        if (rc)
            break;
        float *guided = s->eps_host;
        if (s->batch == 2) {
            /* uncond + g * (text - uncond), in torch's operation order */
            const float *c = s->eps_host + s->n;
            for (size_t k = 0; k < s->n; k++)
                guided[k] = guided[k] + gp->guidance * (c[k] - guided[k]);
        }
        if (sdw_sched_step_needs_noise(s->sched))
            sdw_rng_randn(&s->rng, s->step_noise, s->n);
        rc = sdw_sched_step(s->sched, guided, s->latents, s->step_noise, s->n, e);
        if (!rc && gp->kind == SDW_GEN_INPAINT && s->cin == p->latent_channels) {
            /* 4-channel models keep the known region: outside the mask the
             * init latents, noised to the next timestep (clean at the end). */
            const float *known = s->image_latents;
            if (i + 1 < total) {
                rc = sdw_sched_add_noise(s->sched, i + 1, s->image_latents, s->noise, scaled, s->n, e);
                known = scaled;
            }
            for (size_t k = 0; !rc && k < s->n; k++) {
                float m = s->mask[k % plane];
                s->latents[k] = (1.0f - m) * known[k] + m * s->latents[k];
            }
        }
        *calls = i + 1;
        if (!rc && cb && cb(ctx, p, i + 1, total))
            rc = sdw_fail(e, SDW_ECANCELLED, "cancelled after step %d of %d", i + 1, total);
    }
    free(scaled);
    return rc;
}

static int check_params(const sdw_pipeline *p, const sdw_gen_params *gp, int *W, int *H, sdw_error *e)
{
    if (!gp->prompt)
        return sdw_fail(e, SDW_EINVAL, "a prompt is required");
    if (gp->steps < 1 || gp->steps > 1000)
        return sdw_fail(e, SDW_EINVAL, "steps %d outside 1..1000", gp->steps);
    if (!(gp->guidance >= 0 && gp->guidance <= 100))
        return sdw_fail(e, SDW_EINVAL, "guidance %g outside 0..100", gp->guidance);
    /* SDXL's clip_skip k reads hidden_states[-(k + 2)] of both encoders */
    int layers = p->model.clip.num_layers;
    if (p->clip2)
        layers = (layers < p->model.clip2.num_layers ? layers : p->model.clip2.num_layers) - 1;
    if (gp->clip_skip < 0 || gp->clip_skip >= layers)
        return sdw_fail(e, SDW_EINVAL, "clip_skip %d outside 0..%d", gp->clip_skip, layers - 1);
    if (!p->clip2 && (gp->original_width || gp->original_height || gp->crop_top || gp->crop_left ||
                      gp->target_width || gp->target_height))
        return sdw_fail(e, SDW_EINVAL, "original_size, crops_coords_top_left and target_size apply to SDXL models "
                        "only");
    if (gp->original_width < 0 || gp->original_height < 0 || gp->crop_top < 0 || gp->crop_left < 0 ||
        gp->target_width < 0 || gp->target_height < 0)
        return sdw_fail(e, SDW_EINVAL, "original_size, crops_coords_top_left and target_size must not be negative");
    int unet9 = sdw_pipeline_unet_channels(p) != p->latent_channels;
    if (gp->kind == SDW_GEN_TXT2IMG) {
        if (unet9)
            return sdw_fail(e, SDW_EINVAL, "this is an inpainting model: it needs an init image and a mask");
        *W = gp->width, *H = gp->height;
    } else {
        if (!gp->init_image || gp->init_image->channels != 3)
            return sdw_fail(e, SDW_EINVAL, "an RGB init image is required");
        if (!(gp->strength >= 0 && gp->strength <= 1))
            return sdw_fail(e, SDW_EINVAL, "strength %g outside 0..1", gp->strength);
        if (gp->kind == SDW_GEN_IMG2IMG && unet9)
            return sdw_fail(e, SDW_EINVAL, "this is an inpainting model: image_transform needs a standard model");
        *W = gp->init_image->width, *H = gp->init_image->height;
        if (gp->kind == SDW_GEN_INPAINT &&
            (!gp->mask || gp->mask->width != *W || gp->mask->height != *H))
            return sdw_fail(e, SDW_EINVAL, "the mask must be %dx%d, the init image's size", *W, *H);
    }
    if (*W <= 0 || *H <= 0 || *W % p->scale || *H % p->scale)
        return sdw_fail(e, SDW_EINVAL, "size %dx%d is not a positive multiple of %d", *W, *H, p->scale);
    return SDW_OK;
}

static int alloc_state(sdw_pipeline *p, gen_state *s, sdw_error *e)
{
    size_t plane = (size_t)s->h * s->w;
    s->n = (size_t)p->latent_channels * plane;
    s->latents = malloc(s->n * sizeof(float));
    s->noise = malloc(s->n * sizeof(float));
    s->step_noise = malloc(s->n * sizeof(float));
    s->image_latents = malloc(s->n * sizeof(float));
    s->masked_latents = malloc(s->n * sizeof(float));
    s->mask = malloc(plane * sizeof(float));
    s->unet_in = malloc((size_t)s->batch * s->cin * plane * sizeof(float));
    s->eps_host = malloc((size_t)s->batch * s->n * sizeof(float));
    if (!s->latents || !s->noise || !s->step_noise || !s->image_latents || !s->masked_latents || !s->mask ||
        !s->unet_in || !s->eps_host)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int64_t xs[4] = {s->batch, s->cin, s->h, s->w}, es[4] = {s->batch, p->latent_channels, s->h, s->w};
    int rc = sdw_tensor_new(&s->x, p->be, 4, xs, e);
    return rc ? rc : sdw_tensor_new(&s->eps, p->be, 4, es, e);
}

static int decode(sdw_pipeline *p, gen_state *s, sdw_image *out, sdw_error *e)
{
    int64_t ls[4] = {1, p->latent_channels, s->h, s->w};
    int64_t is[4] = {1, 3, s->h * p->scale, s->w * p->scale};
    sdw_tensor lat = {0}, img = {0};
    float *pixels = malloc((size_t)3 * is[2] * is[3] * sizeof *pixels);
    int rc = pixels ? SDW_OK : sdw_fail(e, SDW_ENOMEM, "out of memory");
    if (!rc)
        rc = sdw_tensor_from_host(&lat, p->vae_be, 4, ls, s->latents, e);
    if (!rc)
        rc = sdw_tensor_new(&img, p->vae_be, 4, is, e);
    if (!rc)
        rc = sdw_vae_decode(p->vae, &lat, &img, e);
    if (!rc)
        rc = sdw_tensor_to_host(&img, pixels, e);
    if (!rc)
        rc = sdw_image_from_float(out, pixels, (int)is[3], (int)is[2], e);
    sdw_tensor_free(&lat), sdw_tensor_free(&img);
    free(pixels);
    return rc;
}

int sdw_pipeline_generate(sdw_pipeline *p, const sdw_gen_params *gp, sdw_gen_callback cb, void *ctx,
                          sdw_image *out, float *latents, sdw_gen_timings *t, sdw_error *e)
{
    sdw_gen_timings tm = {.load_s = t ? t->load_s : 0};
    double t0 = sdw_now_s(), t1;
    size_t peak; /* since the previous generation: discarded, the count starts here */
    /* Without this the VAE's cached blocks, of other sizes than the UNet's,
     * would stay reserved through the denoising too. */
    sdw_backend_trim(p->be);
    tm.mem_start = sdw_backend_memory(p->be, &peak);
    if (p->vae_be != p->be) {
        sdw_backend_trim(p->vae_be);
        tm.mem_start += sdw_backend_memory(p->vae_be, &peak);
    }
    int W = 0, H = 0;
    int rc = check_params(p, gp, &W, &H, e);
    if (rc)
        return rc;
    /* The job's LoRAs, attached for this generation only and detached
     * below whatever happens: the next job sees the model as loaded. */
    sdw_lora_applied *loras = NULL;
    if ((rc = sdw_lora_apply(&p->layers, p->model.family, gp->loras, gp->nloras, p->be, &loras, e)))
        return rc;
    t1 = sdw_now_s(), tm.lora_s = t1 - t0, t0 = t1;
    gen_state s = {0};
    /* diffusers' do_classifier_free_guidance: an LCM-distilled UNet takes the
     * guidance as an embedding instead, at batch 1. */
    int tcd = sdw_unet_config_of(p->unet)->time_cond_proj_dim;
    s.batch = gp->guidance > 1.0f && !tcd ? 2 : 1;
    if (tcd) {
        if (!(s.tcond = malloc((size_t)tcd * sizeof *s.tcond))) {
            rc = sdw_fail(e, SDW_ENOMEM, "out of memory");
            goto done;
        }
        guidance_embedding(gp->guidance, tcd, s.tcond);
    }
    s.h = H / p->scale, s.w = W / p->scale;
    s.cin = sdw_pipeline_unet_channels(p);
    sdw_rng_seed(&s.rng, gp->seed);
    double strength = gp->kind == SDW_GEN_TXT2IMG ? 1.0 : gp->strength;
    if ((rc = alloc_state(p, &s, e)) || (rc = sdw_sched_create(&s.sched, p->model.scheduler_config, gp->sampler,
                                                                gp->eta, e)) ||
        (rc = sdw_sched_set_timesteps(s.sched, gp->steps, strength, e)))
        goto done;
    time_ids(gp, W, H, &s);
    rc = encode_text(p, gp, &s, e);
    t1 = sdw_now_s(), tm.encode_s = t1 - t0, t0 = t1;
    if (!rc)
        rc = initial_latents(p, gp, &s, e);
    t1 = sdw_now_s(), tm.prepare_s = t1 - t0, t0 = t1;
    p->cur_latents = s.latents, p->cur_h = s.h, p->cur_w = s.w;
    long replays = sdw_unet_graph_replays(p->unet);
    if (!rc)
        rc = denoise(p, gp, &s, cb, ctx, &tm.unet_calls, e);
    tm.graph_replays = (int)(sdw_unet_graph_replays(p->unet) - replays);
    snprintf(tm.graph_note, sizeof tm.graph_note, "%s", sdw_unet_graph_note(p->unet));
    /* The recorded step's memory goes back for the VAE and the next job. */
    sdw_unet_release(p->unet);
    sdw_backend_memory(p->be, &tm.mem_denoise_peak);
    sdw_backend_trim(p->be);
    p->cur_latents = NULL;
    t1 = sdw_now_s(), tm.denoise_s = t1 - t0, t0 = t1;
    if (!rc && latents)
        memcpy(latents, s.latents, s.n * sizeof *latents);
    if (!rc)
        rc = decode(p, &s, out, e);
    tm.decode_s = sdw_now_s() - t0;
    sdw_backend_memory(p->vae_be, &tm.mem_decode_peak);
    tm.total_s = tm.lora_s + tm.encode_s + tm.prepare_s + tm.denoise_s + tm.decode_s;
    if (t)
        *t = tm;
done:
    gen_free(&s);
    sdw_lora_remove(loras);
    return rc;
}

int sdw_pipeline_lora_check(const sdw_pipeline *p, const sdw_lora *l, sdw_error *e)
{
    return sdw_lora_check(l, &p->layers, p->model.family, e);
}

char *sdw_gen_params_text(const sdw_gen_params *gp, int width, int height, const char *sampler,
                          const char *model)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fprintf(f, "%s\n", gp->prompt ? gp->prompt : "");
    if (gp->negative_prompt && *gp->negative_prompt)
        fprintf(f, "Negative prompt: %s\n", gp->negative_prompt);
    fprintf(f, "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d", gp->steps, sampler ? sampler : "default", gp->guidance,
            (unsigned long long)gp->seed, width, height);
    if (gp->kind != SDW_GEN_TXT2IMG)
        fprintf(f, ", Denoising strength: %g", gp->strength);
    if (gp->clip_skip)
        fprintf(f, ", Clip skip: %d", gp->clip_skip + 1);
    if (gp->eta)
        fprintf(f, ", Eta: %g", gp->eta);
    if (model)
        fprintf(f, ", Model: %s", model);
    fprintf(f, ", Generator: sdworker");
    fclose(f);
    return buf;
}
