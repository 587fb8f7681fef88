#include "model/vae.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"

#define VAE_EPS 1e-6f

/* The mid-block self-attention: one head as wide as the channels. */
typedef struct vae_attn {
    sdw_gnorm norm;
    sdw_linear q, k, v, o;
} vae_attn;

typedef struct vae_mid {
    sdw_resnet res[2];
    vae_attn attn;
} vae_mid;

typedef struct vae_block {
    sdw_resnet *res;
    int nres;
    sdw_conv sample; /* downsampler (encoder) or upsampler (decoder) */
    int has_sample;
} vae_block;

struct sdw_vae {
    sdw_backend *be;
    sdw_vae_config cfg;
    sdw_conv enc_in, enc_out, dec_in, dec_out, quant, post_quant;
    sdw_gnorm enc_norm, dec_norm;
    vae_block down[SDW_VAE_MAX_BLOCKS], up[SDW_VAE_MAX_BLOCKS];
    vae_mid enc_mid, dec_mid;
};

static const sdw_vae_config sd1_vae = {
    .in_channels = 3,
    .out_channels = 3,
    .latent_channels = 4,
    .nblocks = 4,
    .block_out = {128, 256, 512, 512},
    .layers_per_block = 2,
    .norm_groups = 32,
    .scaling_factor = 0.18215f,
    .force_upcast = 1,
};

/* ---- config ---- */

static json_object *field(const json_object *j, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(j, key, &v) ? v : NULL;
}

static int get_int(const json_object *j, const char *key, int *out, sdw_error *e)
{
    json_object *v = field(j, key);
    if (!v)
        return SDW_OK;
    if (!json_object_is_type(v, json_type_int) || json_object_get_int(v) <= 0)
        return sdw_fail(e, SDW_EINVAL, "vae config: %s is not a positive integer", key);
    *out = json_object_get_int(v);
    return SDW_OK;
}

static int check_types(const json_object *j, const char *key, const char *want, int n, sdw_error *e)
{
    json_object *v = field(j, key);
    if (!v)
        return SDW_OK;
    if (!json_object_is_type(v, json_type_array) || (int)json_object_array_length(v) != n)
        return sdw_fail(e, SDW_EINVAL, "vae config: %s must list %d block types", key, n);
    for (int i = 0; i < n; i++) {
        const char *s = json_object_get_string(json_object_array_get_idx(v, (size_t)i));
        if (!s || strcmp(s, want))
            return sdw_fail(e, SDW_EUNSUPPORTED, "vae config: %s[%d] is %s; only %s is supported", key, i,
                            s ? s : "null", want);
    }
    return SDW_OK;
}

int sdw_vae_config_parse(sdw_vae_config *cfg, const json_object *j, sdw_error *e)
{
    *cfg = sd1_vae;
    if (!j)
        return SDW_OK;
    if (!json_object_is_type(j, json_type_object))
        return sdw_fail(e, SDW_EINVAL, "vae config: not a JSON object");
    json_object *bo = field(j, "block_out_channels");
    if (bo) {
        if (!json_object_is_type(bo, json_type_array) || json_object_array_length(bo) < 1 ||
            json_object_array_length(bo) > SDW_VAE_MAX_BLOCKS)
            return sdw_fail(e, SDW_EINVAL, "vae config: block_out_channels must list 1..%d sizes", SDW_VAE_MAX_BLOCKS);
        cfg->nblocks = (int)json_object_array_length(bo);
        for (int i = 0; i < cfg->nblocks; i++) {
            json_object *x = json_object_array_get_idx(bo, (size_t)i);
            cfg->block_out[i] = json_object_is_type(x, json_type_int) ? json_object_get_int(x) : 0;
            if (cfg->block_out[i] <= 0)
                return sdw_fail(e, SDW_EINVAL, "vae config: block_out_channels[%d] is not a positive integer", i);
        }
    }
    int rc;
    if ((rc = get_int(j, "in_channels", &cfg->in_channels, e)) ||
        (rc = get_int(j, "out_channels", &cfg->out_channels, e)) ||
        (rc = get_int(j, "latent_channels", &cfg->latent_channels, e)) ||
        (rc = get_int(j, "layers_per_block", &cfg->layers_per_block, e)) ||
        (rc = get_int(j, "norm_num_groups", &cfg->norm_groups, e)) ||
        (rc = check_types(j, "down_block_types", "DownEncoderBlock2D", cfg->nblocks, e)) ||
        (rc = check_types(j, "up_block_types", "UpDecoderBlock2D", cfg->nblocks, e)))
        return rc;
    json_object *sf = field(j, "scaling_factor");
    if (sf) {
        double s = json_object_get_double(sf);
        if ((!json_object_is_type(sf, json_type_double) && !json_object_is_type(sf, json_type_int)) || !(s > 0))
            return sdw_fail(e, SDW_EINVAL, "vae config: scaling_factor is not a positive number");
        cfg->scaling_factor = (float)s;
    }
    json_object *fu = field(j, "force_upcast");
    if (fu && !json_object_is_type(fu, json_type_boolean))
        return sdw_fail(e, SDW_EINVAL, "vae config: force_upcast is not true or false");
    cfg->force_upcast = fu ? json_object_get_boolean(fu) : 1;
    json_object *act = field(j, "act_fn");
    if (act && strcmp(json_object_get_string(act), "silu"))
        return sdw_fail(e, SDW_EUNSUPPORTED, "vae config: act_fn = %s is not supported (only silu)",
                        json_object_get_string(act));
    static const char *const must_be_null[] = {"shift_factor", "latents_mean", "latents_std"};
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++)
        if (field(j, must_be_null[i]))
            return sdw_fail(e, SDW_EUNSUPPORTED, "vae config: %s is not supported", must_be_null[i]);
    static const char *const must_be_true[] = {"use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"};
    for (size_t i = 0; i < sizeof must_be_true / sizeof must_be_true[0]; i++) {
        json_object *v = field(j, must_be_true[i]);
        if (v && !json_object_get_boolean(v))
            return sdw_fail(e, SDW_EUNSUPPORTED, "vae config: %s = false is not supported", must_be_true[i]);
    }
    return SDW_OK;
}

/* ---- LDM names ---- */

static int put(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int put(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= cap;
}

static int resnet_part(const char *rest, char *out, size_t cap)
{
    if (!strncmp(rest, "conv_shortcut.", 14))
        return put(out, cap, "nin_shortcut.%s", rest + 14);
    return put(out, cap, "%s", rest);
}

/* diffusers name -> LDM name inside first_stage_model. (decoder blocks are
 * numbered from the lowest resolution in diffusers, the highest in LDM). */
static int ldm_name(const void *ctx, const char *name, char *out, size_t cap)
{
    const sdw_vae_config *cfg = ctx;
    static const struct {
        const char *diffusers, *ldm;
    } attn[] = {{"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."}};
    char rest[200], in[200];
    int i, j;
    if (strncmp(name, "encoder.", 8) && strncmp(name, "decoder.", 8))
        return put(out, cap, "%s", name); /* quant_conv, post_quant_conv */
    const char *s = name + 8, *sd = name[0] == 'e' ? "encoder" : "decoder";
    if (!strncmp(s, "conv_norm_out.", 14))
        return put(out, cap, "%s.norm_out.%s", sd, s + 14);
    if (sscanf(s, "down_blocks.%d.resnets.%d.%199s", &i, &j, rest) == 3)
        return resnet_part(rest, in, sizeof in) || put(out, cap, "%s.down.%d.block.%d.%s", sd, i, j, in);
    if (sscanf(s, "up_blocks.%d.resnets.%d.%199s", &i, &j, rest) == 3)
        return resnet_part(rest, in, sizeof in) ||
               put(out, cap, "%s.up.%d.block.%d.%s", sd, cfg->nblocks - 1 - i, j, in);
    if (sscanf(s, "down_blocks.%d.downsamplers.0.%199s", &i, rest) == 2)
        return put(out, cap, "%s.down.%d.downsample.%s", sd, i, rest);
    if (sscanf(s, "up_blocks.%d.upsamplers.0.%199s", &i, rest) == 2)
        return put(out, cap, "%s.up.%d.upsample.%s", sd, cfg->nblocks - 1 - i, rest);
    if (sscanf(s, "mid_block.resnets.%d.%199s", &i, rest) == 2)
        return resnet_part(rest, in, sizeof in) || put(out, cap, "%s.mid.block_%d.%s", sd, i + 1, in);
    if (!strncmp(s, "mid_block.attentions.0.", 23)) {
        s += 23;
        for (size_t k = 0; k < sizeof attn / sizeof attn[0]; k++) {
            size_t l = strlen(attn[k].diffusers);
            if (!strncmp(s, attn[k].diffusers, l))
                return put(out, cap, "%s.mid.attn_1.%s%s", sd, attn[k].ldm, s + l);
        }
        return 1;
    }
    return put(out, cap, "%s", name);
}

/* ---- loading ---- */

static int attn_load(const sdw_loader *l, vae_attn *a, const char *prefix, int64_t c, int groups, sdw_error *e)
{
    char p[160], probe[200];
    /* diffusers files before 0.14 call the projections query/key/value/proj_attn */
    snprintf(probe, sizeof probe, "%s.to_q.weight", prefix);
    int old = !sdw_nn_has(l, probe);
    snprintf(probe, sizeof probe, "%s.query.weight", prefix);
    old = old && sdw_nn_has(l, probe);
    const char *names[4] = {old ? "query" : "to_q", old ? "key" : "to_k", old ? "value" : "to_v",
                            old ? "proj_attn" : "to_out.0"};
    sdw_linear *lin[4] = {&a->q, &a->k, &a->v, &a->o};
    snprintf(p, sizeof p, "%s.group_norm", prefix);
    int rc = sdw_gnorm_load(l, &a->norm, p, c, groups, VAE_EPS, e);
    for (int i = 0; !rc && i < 4; i++) {
        snprintf(p, sizeof p, "%s.%s", prefix, names[i]);
        rc = sdw_linear_load(l, lin[i], p, c, c, 1, e);
    }
    return rc;
}

static void attn_free(vae_attn *a)
{
    sdw_gnorm_free(&a->norm);
    sdw_linear_free(&a->q), sdw_linear_free(&a->k), sdw_linear_free(&a->v), sdw_linear_free(&a->o);
}

static int mid_load(const sdw_loader *l, vae_mid *m, const char *side, int64_t c, int groups, sdw_error *e)
{
    char p[96];
    int rc = SDW_OK;
    for (int i = 0; !rc && i < 2; i++) {
        snprintf(p, sizeof p, "%s.mid_block.resnets.%d", side, i);
        rc = sdw_resnet_load(l, &m->res[i], p, c, c, 0, groups, VAE_EPS, e);
    }
    snprintf(p, sizeof p, "%s.mid_block.attentions.0", side);
    return rc ? rc : attn_load(l, &m->attn, p, c, groups, e);
}

static void mid_free(vae_mid *m)
{
    sdw_resnet_free(&m->res[0]), sdw_resnet_free(&m->res[1]);
    attn_free(&m->attn);
}

static void block_free(vae_block *b)
{
    for (int i = 0; b->res && i < b->nres; i++)
        sdw_resnet_free(&b->res[i]);
    free(b->res);
    sdw_conv_free(&b->sample);
}

void sdw_vae_free(sdw_vae *v)
{
    if (!v)
        return;
    for (int i = 0; i < v->cfg.nblocks; i++)
        block_free(&v->down[i]), block_free(&v->up[i]);
    mid_free(&v->enc_mid), mid_free(&v->dec_mid);
    sdw_conv *convs[] = {&v->enc_in, &v->enc_out, &v->dec_in, &v->dec_out, &v->quant, &v->post_quant};
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++)
        sdw_conv_free(convs[i]);
    sdw_gnorm_free(&v->enc_norm), sdw_gnorm_free(&v->dec_norm);
    free(v);
}

static int block_load(const sdw_loader *l, vae_block *b, const char *prefix, int nres, int64_t in, int64_t out,
                      int groups, int sample, int down, sdw_error *e)
{
    char p[96];
    b->res = calloc((size_t)nres, sizeof *b->res);
    if (!b->res)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    b->nres = nres;
    for (int j = 0; j < nres; j++) {
        snprintf(p, sizeof p, "%s.resnets.%d", prefix, j);
        int rc = sdw_resnet_load(l, &b->res[j], p, j ? out : in, out, 0, groups, VAE_EPS, e);
        if (rc)
            return rc;
    }
    b->has_sample = sample;
    snprintf(p, sizeof p, "%s.%s.0.conv", prefix, down ? "downsamplers" : "upsamplers");
    /* diffusers' encoder downsamples with no padding but one extra row and column at the end */
    return sample ? sdw_conv_load(l, &b->sample, p, out, out, 3, down ? 2 : 1, down ? 0 : 1, e) : SDW_OK;
}

static int load_all(sdw_vae *v, const sdw_loader *l, sdw_error *e)
{
    const sdw_vae_config *c = &v->cfg;
    int n = c->nblocks, g = c->norm_groups, lpb = c->layers_per_block, rc;
    int64_t lat = c->latent_channels, top = c->block_out[n - 1];
    char p[64];
    if ((rc = sdw_conv_load(l, &v->enc_in, "encoder.conv_in", c->block_out[0], c->in_channels, 3, 1, 1, e)))
        return rc;
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "encoder.down_blocks.%d", i);
        if ((rc = block_load(l, &v->down[i], p, lpb, c->block_out[i ? i - 1 : 0], c->block_out[i], g, i < n - 1, 1,
                             e)))
            return rc;
    }
    if ((rc = mid_load(l, &v->enc_mid, "encoder", top, g, e)) ||
        (rc = sdw_gnorm_load(l, &v->enc_norm, "encoder.conv_norm_out", top, g, VAE_EPS, e)) ||
        (rc = sdw_conv_load(l, &v->enc_out, "encoder.conv_out", 2 * lat, top, 3, 1, 1, e)) ||
        (rc = sdw_conv_load(l, &v->quant, "quant_conv", 2 * lat, 2 * lat, 1, 1, 0, e)) ||
        (rc = sdw_conv_load(l, &v->post_quant, "post_quant_conv", lat, lat, 1, 1, 0, e)) ||
        (rc = sdw_conv_load(l, &v->dec_in, "decoder.conv_in", top, lat, 3, 1, 1, e)) ||
        (rc = mid_load(l, &v->dec_mid, "decoder", top, g, e)))
        return rc;
    for (int i = 0; i < n; i++) {
        int r = n - 1 - i;
        snprintf(p, sizeof p, "decoder.up_blocks.%d", i);
        if ((rc = block_load(l, &v->up[i], p, lpb + 1, c->block_out[i ? r + 1 : r], c->block_out[r], g, i < n - 1,
                             0, e)))
            return rc;
    }
    if ((rc = sdw_gnorm_load(l, &v->dec_norm, "decoder.conv_norm_out", c->block_out[0], g, VAE_EPS, e)) ||
        (rc = sdw_conv_load(l, &v->dec_out, "decoder.conv_out", c->out_channels, c->block_out[0], 3, 1, 1, e)))
        return rc;
    return SDW_OK;
}

int sdw_vae_needs_upcast(const sdw_vae_config *cfg, const sdw_backend *be)
{
    return cfg->force_upcast && be->fp16;
}

int sdw_vae_load(sdw_vae **out, sdw_backend *be, const sdw_vae_config *cfg, const sdw_weights *w,
                 sdw_layout layout, sdw_error *e)
{
    sdw_vae *v = calloc(1, sizeof *v);
    if (!v)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    v->be = be;
    v->cfg = *cfg;
    sdw_loader l = {.be = be, .w = w, .rename = layout == SDW_LAYOUT_LDM ? ldm_name : NULL, .ctx = &v->cfg};
    int rc = load_all(v, &l, e);
    if (rc) {
        sdw_fail_wrap(e, "loading vae");
        sdw_vae_free(v);
        return rc;
    }
    *out = v;
    return SDW_OK;
}

/* ---- forward ---- */

static int replace(sdw_tensor *h, sdw_tensor *y)
{
    sdw_tensor_free(h);
    *h = *y;
    return SDW_OK;
}

static int step_res(const sdw_resnet *r, sdw_tensor *h, sdw_error *e)
{
    sdw_tensor y;
    int rc = sdw_resnet_forward(r, h, NULL, &y, e);
    return rc ? rc : replace(h, &y);
}

static int step_conv(const sdw_conv *c, sdw_tensor *h, int extra_pad, sdw_error *e)
{
    sdw_tensor y;
    int rc = sdw_conv_forward(c, h, extra_pad, &y, e);
    return rc ? rc : replace(h, &y);
}

/* h += o(attn(q,k,v of GN(h) as tokens)) */
static int attn_forward(const vae_attn *a, sdw_tensor *h, sdw_error *e)
{
    int64_t b = h->shape[0], c = h->shape[1], n = h->shape[2] * h->shape[3];
    int64_t chw[3] = {b, c, n}, tok[3] = {b, n, c};
    sdw_tensor gn = {0}, t[5] = {{0}}, cv, hv;
    int rc = sdw_tensor_new(&gn, h->be, 4, h->shape, e);
    for (int i = 0; !rc && i < 5; i++)
        rc = sdw_tensor_new(&t[i], h->be, 3, tok, e);
    if (!rc && !(rc = sdw_op_group_norm(h, a->norm.groups, &a->norm.w, &a->norm.b, a->norm.eps, 0, &gn, e)) &&
        !(rc = sdw_tensor_view(&cv, &gn, 3, chw, e)) && !(rc = sdw_op_transpose(&cv, &t[0], e)) &&
        !(rc = sdw_linear_forward(&a->q, &t[0], &t[1], e)) && !(rc = sdw_linear_forward(&a->k, &t[0], &t[2], e)) &&
        !(rc = sdw_linear_forward(&a->v, &t[0], &t[3], e)) &&
        !(rc = sdw_op_attention(&t[1], &t[2], &t[3], 1, 0, &t[4], e)) &&
        !(rc = sdw_linear_forward(&a->o, &t[4], &t[0], e)) && !(rc = sdw_tensor_view(&cv, &gn, 3, chw, e)) &&
        !(rc = sdw_op_transpose(&t[0], &cv, e)) && !(rc = sdw_tensor_view(&hv, h, 3, chw, e)))
        rc = sdw_op_add(&hv, &cv, &hv, e);
    sdw_tensor_free(&gn);
    for (int i = 0; i < 5; i++)
        sdw_tensor_free(&t[i]);
    return rc;
}

static int mid_forward(const vae_mid *m, sdw_tensor *h, sdw_error *e)
{
    int rc = step_res(&m->res[0], h, e);
    if (!rc)
        rc = attn_forward(&m->attn, h, e);
    return rc ? rc : step_res(&m->res[1], h, e);
}

static int upsample2x(sdw_tensor *h, sdw_error *e)
{
    int64_t s[4] = {h->shape[0], h->shape[1], 2 * h->shape[2], 2 * h->shape[3]};
    sdw_tensor y;
    int rc = sdw_tensor_new(&y, h->be, 4, s, e);
    if (!rc && (rc = sdw_op_upsample_nearest(h, &y, e)))
        sdw_tensor_free(&y);
    return rc ? rc : replace(h, &y);
}

static int factor(const sdw_vae_config *c)
{
    return 1 << (c->nblocks - 1);
}

static int shape_fail(sdw_error *e, const char *what, const sdw_tensor *t, const char *want)
{
    char s[96];
    return sdw_fail(e, SDW_EINVAL, "vae: %s has shape %s, expected %s", what, sdw_shape_str(t->ndim, t->shape, s, sizeof s),
                    want);
}

int sdw_vae_decode(sdw_vae *v, const sdw_tensor *latents, sdw_tensor *image, sdw_error *e)
{
    const sdw_vae_config *c = &v->cfg;
    int f = factor(c);
    if (latents->ndim != 4 || latents->shape[1] != c->latent_channels)
        return shape_fail(e, "latents", latents, "[b,latent_channels,h,w]");
    if (image->ndim != 4 || image->shape[0] != latents->shape[0] || image->shape[1] != c->out_channels ||
        image->shape[2] != f * latents->shape[2] || image->shape[3] != f * latents->shape[3])
        return shape_fail(e, "image", image, "[b,out_channels,h*f,w*f]");
    sdw_tensor z = {0}, h = {0};
    int rc = sdw_tensor_new(&z, v->be, 4, latents->shape, e);
    if (!rc && !(rc = sdw_op_scale(latents, 1.0f / c->scaling_factor, &z, e)) && !(rc = step_conv(&v->post_quant, &z, 0, e)))
        rc = sdw_conv_forward(&v->dec_in, &z, 0, &h, e);
    sdw_tensor_free(&z);
    if (!rc)
        rc = mid_forward(&v->dec_mid, &h, e);
    for (int i = 0; !rc && i < c->nblocks; i++) {
        const vae_block *b = &v->up[i];
        for (int j = 0; !rc && j < b->nres; j++)
            rc = step_res(&b->res[j], &h, e);
        if (!rc && b->has_sample && !(rc = upsample2x(&h, e)))
            rc = step_conv(&b->sample, &h, 0, e);
    }
    if (!rc && !(rc = sdw_op_group_norm(&h, v->dec_norm.groups, &v->dec_norm.w, &v->dec_norm.b, v->dec_norm.eps, 1, &h, e)))
        rc = sdw_op_conv2d(&h, &v->dec_out.w, &v->dec_out.b, v->dec_out.g, image, e);
    sdw_tensor_free(&h);
    if (rc)
        sdw_fail_wrap(e, "vae decode");
    return rc;
}

int sdw_vae_encode(sdw_vae *v, const sdw_tensor *image, const sdw_tensor *noise, sdw_tensor *latents,
                   sdw_error *e)
{
    const sdw_vae_config *c = &v->cfg;
    int f = factor(c);
    if (image->ndim != 4 || image->shape[1] != c->in_channels || image->shape[2] % f || image->shape[3] % f)
        return shape_fail(e, "image", image, "[b,in_channels,H,W] with H and W multiples of the downscale factor");
    if (latents->ndim != 4 || latents->shape[0] != image->shape[0] || latents->shape[1] != c->latent_channels ||
        latents->shape[2] * f != image->shape[2] || latents->shape[3] * f != image->shape[3])
        return shape_fail(e, "latents", latents, "[b,latent_channels,H/f,W/f]");
    sdw_tensor h = {0};
    int rc = sdw_conv_forward(&v->enc_in, image, 0, &h, e);
    for (int i = 0; !rc && i < c->nblocks; i++) {
        const vae_block *b = &v->down[i];
        for (int j = 0; !rc && j < b->nres; j++)
            rc = step_res(&b->res[j], &h, e);
        if (!rc && b->has_sample)
            rc = step_conv(&b->sample, &h, 1, e);
    }
    if (!rc && !(rc = mid_forward(&v->enc_mid, &h, e)) &&
        !(rc = sdw_op_group_norm(&h, v->enc_norm.groups, &v->enc_norm.w, &v->enc_norm.b, v->enc_norm.eps, 1, &h, e)) &&
        !(rc = step_conv(&v->enc_out, &h, 0, e)) && !(rc = step_conv(&v->quant, &h, 0, e)))
        rc = sdw_op_gaussian(&h, noise, c->scaling_factor, latents, e);
    sdw_tensor_free(&h);
    if (rc)
        sdw_fail_wrap(e, "vae encode");
    return rc;
}
