#include "model/unet.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"

/* What a recorded step was made for: its buffers and shapes. All zero when
 * no direct call has run with any. */
typedef struct step_key {
    const void *x, *ctx, *eps, *text_embeds;
    int64_t xs[4], tokens;
    int tcond; /* with the guidance embedding */
} step_key;

typedef struct down_block {
    sdw_resnet *res;
    sdw_transformer *attn; /* NULL for DownBlock2D */
    sdw_conv down;
    int has_down;
} down_block;

typedef struct up_block {
    sdw_resnet *res;
    sdw_transformer *attn;
    sdw_conv up;
    int has_up;
} up_block;

struct sdw_unet {
    sdw_backend *be;
    sdw_unet_config cfg;
    sdw_conv conv_in, conv_out;
    sdw_linear t1, t2;
    sdw_linear a1, a2; /* add_embedding, for text_time */
    sdw_linear cond_proj; /* time_cond_proj_dim -> block_out[0], no bias; LCM UNets only */
    sdw_gnorm norm_out;
    down_block down[SDW_UNET_MAX_BLOCKS];
    up_block up[SDW_UNET_MAX_BLOCKS];
    sdw_resnet mid_res[2];
    sdw_transformer mid_attn;
    /* The step as a replayable graph, where the backend has graphs: the
     * first call with given buffers runs directly (and settles convolution
     * algorithms and memory), the second records the step, later ones
     * replay it. */
    sdw_tensor tfeat; /* timestep features [b, block_out[0]]: the graph's host-side input */
    sdw_tensor afeat; /* text_time: time id features [b, 6 * add_time_dim], likewise */
    sdw_tensor tcond; /* guidance embedding [b, time_cond_proj_dim]: likewise */
    sdw_graph *graph;
    step_key key;    /* of the last successful direct call, or of the graph */
    int graph_off;   /* recording failed or is unsupported: direct calls until sdw_unet_release */
    char graph_why[sizeof(sdw_error){0}.msg];
    long replays;
};

const sdw_unet_config *sdw_unet_config_of(const sdw_unet *u)
{
    return &u->cfg;
}

/* ---- config ---- */

static const sdw_unet_config sd1_config = {
    .in_channels = 4,
    .out_channels = 4,
    .nblocks = 4,
    .block_out = {320, 640, 1280, 1280},
    .down_attn = {1, 1, 1, 0},
    .up_attn = {0, 1, 1, 1},
    .heads = {8, 8, 8, 8},
    .tlayers = {1, 1, 1, 1},
    .layers_per_block = 2,
    .cross_attention_dim = 768,
    .linear_projection = 0,
    .upcast_attention = 0,
    .norm_groups = 32,
    .norm_eps = 1e-5f,
    .flip_sin_to_cos = 1,
    .freq_shift = 0,
};

static json_object *field(const json_object *j, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(j, key, &v) ? v : NULL;
}

static int get_int(const json_object *j, const char *key, int dflt, int *out, sdw_error *e)
{
    json_object *v = field(j, key);
    if (!v) {
        *out = dflt;
        return SDW_OK;
    }
    if (!json_object_is_type(v, json_type_int))
        return sdw_fail(e, SDW_EINVAL, "unet config: %s is not an integer", key);
    *out = json_object_get_int(v);
    return SDW_OK;
}

static int get_num(const json_object *j, const char *key, float dflt, float *out, sdw_error *e)
{
    json_object *v = field(j, key);
    if (!v) {
        *out = dflt;
        return SDW_OK;
    }
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return sdw_fail(e, SDW_EINVAL, "unet config: %s is not a number", key);
    *out = (float)json_object_get_double(v);
    return SDW_OK;
}

static int get_bool(const json_object *j, const char *key, int dflt, int *out, sdw_error *e)
{
    json_object *v = field(j, key);
    if (!v) {
        *out = dflt;
        return SDW_OK;
    }
    if (!json_object_is_type(v, json_type_boolean))
        return sdw_fail(e, SDW_EINVAL, "unet config: %s is not true or false", key);
    *out = json_object_get_boolean(v);
    return SDW_OK;
}

/* An int or a list of n ints (per down block). */
static int get_per_block(const json_object *j, const char *key, int dflt, int n, int *out, sdw_error *e)
{
    json_object *v = field(j, key);
    if (v && json_object_is_type(v, json_type_array)) {
        if ((int)json_object_array_length(v) != n)
            return sdw_fail(e, SDW_EINVAL, "unet config: %s has %d entries for %d blocks", key,
                            (int)json_object_array_length(v), n);
        for (int i = 0; i < n; i++) {
            json_object *x = json_object_array_get_idx(v, (size_t)i);
            if (!json_object_is_type(x, json_type_int) || json_object_get_int(x) <= 0)
                return sdw_fail(e, SDW_EINVAL, "unet config: %s[%d] is not a positive integer", key, i);
            out[i] = json_object_get_int(x);
        }
        return SDW_OK;
    }
    int one;
    int rc = get_int(j, key, dflt, &one, e);
    if (rc)
        return rc;
    if (one <= 0)
        return sdw_fail(e, SDW_EINVAL, "unet config: %s is %d", key, one);
    for (int i = 0; i < n; i++)
        out[i] = one;
    return SDW_OK;
}

static int block_types(const json_object *j, const char *key, const char *attn, const char *plain, int n, int *out,
                       sdw_error *e)
{
    json_object *v = field(j, key);
    if (!v) {
        const int *d = strcmp(key, "down_block_types") ? sd1_config.up_attn : sd1_config.down_attn;
        if (n != sd1_config.nblocks)
            return sdw_fail(e, SDW_EINVAL, "unet config: %s missing", key);
        memcpy(out, d, sizeof(int) * (size_t)n);
        return SDW_OK;
    }
    if (!json_object_is_type(v, json_type_array) || (int)json_object_array_length(v) != n)
        return sdw_fail(e, SDW_EINVAL, "unet config: %s must list %d block types", key, n);
    for (int i = 0; i < n; i++) {
        const char *s = json_object_get_string(json_object_array_get_idx(v, (size_t)i));
        if (s && !strcmp(s, attn))
            out[i] = 1;
        else if (s && !strcmp(s, plain))
            out[i] = 0;
        else
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: %s[%d] is %s; supported: %s, %s", key, i,
                            s ? s : "not a string", attn, plain);
    }
    return SDW_OK;
}

/* Options this UNet does not implement must be absent or at their defaults. */
static int check_unsupported(const json_object *j, sdw_error *e)
{
    static const char *const must_be_null[] = {
        "num_attention_heads", "class_embed_type",     "encoder_hid_dim",       "time_embedding_dim",
        "timestep_post_act",   "cross_attention_norm", "num_class_embeds",      "time_embedding_act_fn",
    };
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++) {
        json_object *v = field(j, must_be_null[i]);
        if (v)
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: %s = %s is not supported", must_be_null[i],
                            json_object_to_json_string(v));
    }
    static const struct {
        const char *key, *want;
    } strings[] = {
        {"act_fn", "silu"},
        {"time_embedding_type", "positional"},
        {"resnet_time_scale_shift", "default"},
        {"mid_block_type", "UNetMidBlock2DCrossAttn"},
        {"attention_type", "default"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        json_object *v;
        if (!json_object_object_get_ex(j, strings[i].key, &v))
            continue;
        const char *s = v ? json_object_get_string(v) : NULL;
        if (!s || strcmp(s, strings[i].want))
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: %s = %s is not supported (only %s)", strings[i].key,
                            s ? s : "null", strings[i].want);
    }
    static const struct {
        const char *key;
        int want;
    } ints[] = {{"conv_in_kernel", 3}, {"conv_out_kernel", 3}, {"downsample_padding", 1}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int v, rc = get_int(j, ints[i].key, ints[i].want, &v, e);
        if (rc)
            return rc;
        if (v != ints[i].want)
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: %s = %d is not supported (only %d)", ints[i].key, v,
                            ints[i].want);
    }
    static const char *const must_be_false[] = {"center_input_sample", "dual_cross_attention",
                                                "class_embeddings_concat"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++) {
        int v, rc = get_bool(j, must_be_false[i], 0, &v, e);
        if (rc)
            return rc;
        if (v)
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: %s = true is not supported", must_be_false[i]);
    }
    json_object *oca = field(j, "only_cross_attention");
    if (oca && (json_object_is_type(oca, json_type_array) ? 0 : json_object_get_boolean(oca)))
        return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: only_cross_attention = true is not supported");
    for (size_t i = 0; oca && json_object_is_type(oca, json_type_array) && i < json_object_array_length(oca); i++)
        if (json_object_get_boolean(json_object_array_get_idx(oca, i)))
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: only_cross_attention = true is not supported");
    const char *scales[] = {"mid_block_scale_factor", "resnet_out_scale_factor"};
    for (size_t i = 0; i < 2; i++) {
        float v;
        int rc = get_num(j, scales[i], 1.0f, &v, e);
        if (rc)
            return rc;
        if (v != 1.0f)
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: %s = %g is not supported (only 1)", scales[i], v);
    }
    return SDW_OK;
}

int sdw_unet_config_parse(sdw_unet_config *cfg, const json_object *j, sdw_error *e)
{
    *cfg = sd1_config;
    if (!j)
        return SDW_OK;
    if (!json_object_is_type(j, json_type_object))
        return sdw_fail(e, SDW_EINVAL, "unet config: not a JSON object");
    int rc = check_unsupported(j, e);
    if (rc)
        return rc;
    json_object *bo = field(j, "block_out_channels");
    if (bo) {
        if (!json_object_is_type(bo, json_type_array) || json_object_array_length(bo) < 1 ||
            json_object_array_length(bo) > SDW_UNET_MAX_BLOCKS)
            return sdw_fail(e, SDW_EINVAL, "unet config: block_out_channels must list 1..%d sizes",
                            SDW_UNET_MAX_BLOCKS);
        cfg->nblocks = (int)json_object_array_length(bo);
        for (int i = 0; i < cfg->nblocks; i++) {
            json_object *x = json_object_array_get_idx(bo, (size_t)i);
            cfg->block_out[i] = json_object_is_type(x, json_type_int) ? json_object_get_int(x) : 0;
            if (cfg->block_out[i] <= 0)
                return sdw_fail(e, SDW_EINVAL, "unet config: block_out_channels[%d] is not a positive integer", i);
        }
    }
    int n = cfg->nblocks;
    json_object *lpb = field(j, "layers_per_block");
    if (lpb && !json_object_is_type(lpb, json_type_int))
        return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: layers_per_block must be one integer");
    if ((rc = get_int(j, "in_channels", 4, &cfg->in_channels, e)) ||
        (rc = get_int(j, "out_channels", 4, &cfg->out_channels, e)) ||
        (rc = get_int(j, "layers_per_block", 2, &cfg->layers_per_block, e)) ||
        (rc = get_int(j, "cross_attention_dim", 1280, &cfg->cross_attention_dim, e)) ||
        (rc = get_bool(j, "use_linear_projection", 0, &cfg->linear_projection, e)) ||
        (rc = get_bool(j, "upcast_attention", 0, &cfg->upcast_attention, e)) ||
        (rc = get_int(j, "norm_num_groups", 32, &cfg->norm_groups, e)) ||
        (rc = get_num(j, "norm_eps", 1e-5f, &cfg->norm_eps, e)) ||
        (rc = get_bool(j, "flip_sin_to_cos", 1, &cfg->flip_sin_to_cos, e)) ||
        (rc = get_num(j, "freq_shift", 0, &cfg->freq_shift, e)) ||
        (rc = get_int(j, "time_cond_proj_dim", 0, &cfg->time_cond_proj_dim, e)) ||
        (rc = block_types(j, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D", n, cfg->down_attn, e)) ||
        (rc = block_types(j, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", n, cfg->up_attn, e)) ||
        /* diffusers' attention_head_dim is, for this model family, the number of heads */
        (rc = get_per_block(j, "attention_head_dim", 8, n, cfg->heads, e)) ||
        (rc = get_per_block(j, "transformer_layers_per_block", 1, n, cfg->tlayers, e)))
        return rc;
    json_object *aet = field(j, "addition_embed_type");
    if (aet && !json_object_is_type(aet, json_type_null)) {
        const char *v = json_object_get_string(aet);
        if (!json_object_is_type(aet, json_type_string) || strcmp(v, "text_time"))
            return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: addition_embed_type = %s is not supported (only "
                            "text_time)", json_object_to_json_string(aet));
        cfg->text_time = 1;
        if ((rc = get_int(j, "addition_time_embed_dim", 0, &cfg->add_time_dim, e)) ||
            (rc = get_int(j, "projection_class_embeddings_input_dim", 0, &cfg->add_in, e)))
            return rc;
        if (cfg->add_time_dim <= 0 || cfg->add_time_dim % 2 || cfg->add_in <= 6 * cfg->add_time_dim)
            return sdw_fail(e, SDW_EINVAL, "unet config: text_time needs an even addition_time_embed_dim (%d) and "
                            "projection_class_embeddings_input_dim (%d) above 6 times it", cfg->add_time_dim,
                            cfg->add_in);
    }
    if (field(j, "reverse_transformer_layers_per_block"))
        return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: reverse_transformer_layers_per_block is not supported");
    if (cfg->in_channels <= 0 || cfg->out_channels <= 0 || cfg->layers_per_block <= 0 ||
        cfg->cross_attention_dim <= 0 || cfg->norm_groups <= 0 || !(cfg->norm_eps > 0) ||
        cfg->time_cond_proj_dim < 0)
        return sdw_fail(e, SDW_EINVAL, "unet config: channel counts, layers, groups and eps must be positive");
    if (cfg->time_cond_proj_dim && cfg->time_cond_proj_dim < 4)
        return sdw_fail(e, SDW_EUNSUPPORTED, "unet config: time_cond_proj_dim %d is below 4 (the guidance "
                        "embedding's frequencies divide by half of it minus 1)", cfg->time_cond_proj_dim);
    if (cfg->block_out[0] % 2)
        return sdw_fail(e, SDW_EINVAL, "unet config: block_out_channels[0] = %d must be even", cfg->block_out[0]);
    return SDW_OK;
}

/* ---- LDM names ---- */

static const struct {
    const char *diffusers, *ldm;
} resnet_parts[] = {
    {"norm1", "in_layers.0"},   {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
    {"norm2", "out_layers.0"},  {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"},
};

static int put(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int put(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= cap;
}

/* A resnet's "part.rest" in LDM terms, or an attention's unchanged. */
static int inner(const char *rest, int is_resnet, char *out, size_t cap)
{
    if (!is_resnet)
        return put(out, cap, "%s", rest);
    for (size_t i = 0; i < sizeof resnet_parts / sizeof resnet_parts[0]; i++) {
        size_t k = strlen(resnet_parts[i].diffusers);
        if (!strncmp(rest, resnet_parts[i].diffusers, k) && rest[k] == '.')
            return put(out, cap, "%s%s", resnet_parts[i].ldm, rest + k);
    }
    return 1;
}

/* diffusers name -> LDM (CompVis) name for the UNet of a single-file checkpoint. */
static int ldm_name(const void *ctx, const char *name, char *out, size_t cap)
{
    const sdw_unet_config *cfg = ctx;
    int lp = cfg->layers_per_block + 1, i, j, n = 0;
    char kind[16], rest[200];
    static const struct {
        const char *diffusers, *ldm;
    } fixed[] = {{"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
                 {"add_embedding.linear_1.", "label_emb.0.0."},  {"add_embedding.linear_2.", "label_emb.0.2."},
                 {"conv_in.", "input_blocks.0.0."},            {"conv_norm_out.", "out.0."},
                 {"conv_out.", "out.2."}};
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++) {
        size_t l = strlen(fixed[k].diffusers);
        if (!strncmp(name, fixed[k].diffusers, l))
            return put(out, cap, "%s%s", fixed[k].ldm, name + l);
    }
    if (sscanf(name, "down_blocks.%d.downsamplers.0.conv.%n", &i, &n) == 1 && n)
        return put(out, cap, "input_blocks.%d.0.op.%s", (i + 1) * lp, name + n);
    if (sscanf(name, "up_blocks.%d.upsamplers.0.conv.%n", &i, &n) == 1 && n && i >= 0 && i < cfg->nblocks)
        return put(out, cap, "output_blocks.%d.%d.conv.%s", i * lp + lp - 1, cfg->up_attn[i] ? 2 : 1, name + n);
    if (sscanf(name, "down_blocks.%d.%15[a-z].%d.%199s", &i, kind, &j, rest) == 4) {
        int res = !strcmp(kind, "resnets");
        char in[200];
        return inner(rest, res, in, sizeof in) || put(out, cap, "input_blocks.%d.%d.%s", i * lp + j + 1, !res, in);
    }
    if (sscanf(name, "up_blocks.%d.%15[a-z].%d.%199s", &i, kind, &j, rest) == 4) {
        int res = !strcmp(kind, "resnets");
        char in[200];
        return inner(rest, res, in, sizeof in) || put(out, cap, "output_blocks.%d.%d.%s", i * lp + j, !res, in);
    }
    if (sscanf(name, "mid_block.%15[a-z].%d.%199s", kind, &j, rest) == 3) {
        int res = !strcmp(kind, "resnets");
        char in[200];
        return inner(rest, res, in, sizeof in) || put(out, cap, "middle_block.%d.%s", res ? 2 * j : 1, in);
    }
    return 1;
}

/* ---- loading ---- */

static void free_res(sdw_resnet *r, int n)
{
    for (int i = 0; r && i < n; i++)
        sdw_resnet_free(&r[i]);
    free(r);
}

static void free_attn(sdw_transformer *t, int n)
{
    for (int i = 0; t && i < n; i++)
        sdw_transformer_free(&t[i]);
    free(t);
}

void sdw_unet_free(sdw_unet *u)
{
    if (!u)
        return;
    int n = u->cfg.nblocks, l = u->cfg.layers_per_block;
    for (int i = 0; i < n; i++) {
        free_res(u->down[i].res, l), free_attn(u->down[i].attn, l), sdw_conv_free(&u->down[i].down);
        free_res(u->up[i].res, l + 1), free_attn(u->up[i].attn, l + 1), sdw_conv_free(&u->up[i].up);
    }
    sdw_resnet_free(&u->mid_res[0]), sdw_resnet_free(&u->mid_res[1]);
    sdw_transformer_free(&u->mid_attn);
    sdw_conv_free(&u->conv_in), sdw_conv_free(&u->conv_out);
    sdw_linear_free(&u->t1), sdw_linear_free(&u->t2);
    sdw_linear_free(&u->a1), sdw_linear_free(&u->a2), sdw_linear_free(&u->cond_proj);
    sdw_gnorm_free(&u->norm_out);
    sdw_unet_release(u);
    free(u);
}

void sdw_unet_release(sdw_unet *u)
{
    sdw_graph_free(u->graph);
    u->graph = NULL;
    sdw_tensor_free(&u->tfeat);
    sdw_tensor_free(&u->afeat);
    sdw_tensor_free(&u->tcond);
    u->key = (step_key){0};
    u->graph_off = 0;
    u->graph_why[0] = 0;
}

long sdw_unet_graph_replays(const sdw_unet *u)
{
    return u->replays;
}

const char *sdw_unet_graph_note(const sdw_unet *u)
{
    return u->graph_why;
}

static int alloc_block(sdw_resnet **res, sdw_transformer **attn, int n, int with_attn, sdw_error *e)
{
    *res = calloc((size_t)n, sizeof **res);
    *attn = with_attn ? calloc((size_t)n, sizeof **attn) : NULL;
    if (!*res || (with_attn && !*attn))
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    return SDW_OK;
}

static int load_all(sdw_unet *u, const sdw_loader *l, sdw_error *e)
{
    const sdw_unet_config *c = &u->cfg;
    int n = c->nblocks, lpb = c->layers_per_block, g = c->norm_groups, rc;
    int64_t c0 = c->block_out[0], td = 4 * c0, cd = c->cross_attention_dim;
    float eps = c->norm_eps;
    char p[128];
    if ((rc = sdw_conv_load(l, &u->conv_in, "conv_in", c0, c->in_channels, 3, 1, 1, e)) ||
        (rc = sdw_linear_load(l, &u->t1, "time_embedding.linear_1", td, c0, 1, e)) ||
        (rc = sdw_linear_load(l, &u->t2, "time_embedding.linear_2", td, td, 1, e)))
        return rc;
    if (c->text_time && ((rc = sdw_linear_load(l, &u->a1, "add_embedding.linear_1", td, c->add_in, 1, e)) ||
                         (rc = sdw_linear_load(l, &u->a2, "add_embedding.linear_2", td, td, 1, e))))
        return rc;
    if (c->time_cond_proj_dim &&
        (rc = sdw_linear_load(l, &u->cond_proj, "time_embedding.cond_proj", c0, c->time_cond_proj_dim, 0, e)))
        return rc;
    for (int i = 0; i < n; i++) {
        down_block *d = &u->down[i];
        int64_t out = c->block_out[i], in = i ? c->block_out[i - 1] : c0;
        if ((rc = alloc_block(&d->res, &d->attn, lpb, c->down_attn[i], e)))
            return rc;
        for (int j = 0; j < lpb; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            if ((rc = sdw_resnet_load(l, &d->res[j], p, j ? out : in, out, td, g, eps, e)))
                return rc;
            snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
            if (d->attn && (rc = sdw_transformer_load(l, &d->attn[j], p, out, c->heads[i], c->tlayers[i], cd, g, e)))
                return rc;
        }
        d->has_down = i < n - 1;
        snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
        if (d->has_down && (rc = sdw_conv_load(l, &d->down, p, out, out, 3, 2, 1, e)))
            return rc;
    }
    int64_t cm = c->block_out[n - 1];
    if ((rc = sdw_resnet_load(l, &u->mid_res[0], "mid_block.resnets.0", cm, cm, td, g, eps, e)) ||
        (rc = sdw_transformer_load(l, &u->mid_attn, "mid_block.attentions.0", cm, c->heads[n - 1],
                                   c->tlayers[n - 1], cd, g, e)) ||
        (rc = sdw_resnet_load(l, &u->mid_res[1], "mid_block.resnets.1", cm, cm, td, g, eps, e)))
        return rc;
    for (int i = 0; i < n; i++) {
        up_block *b = &u->up[i];
        int r = n - 1 - i; /* the down block this one mirrors */
        int64_t out = c->block_out[r], prev = c->block_out[i ? r + 1 : r], in = c->block_out[r ? r - 1 : 0];
        if ((rc = alloc_block(&b->res, &b->attn, lpb + 1, c->up_attn[i], e)))
            return rc;
        for (int j = 0; j <= lpb; j++) {
            int64_t cin = (j ? out : prev) + (j == lpb ? in : out);
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            if ((rc = sdw_resnet_load(l, &b->res[j], p, cin, out, td, g, eps, e)))
                return rc;
            snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
            if (b->attn && (rc = sdw_transformer_load(l, &b->attn[j], p, out, c->heads[r], c->tlayers[r], cd, g, e)))
                return rc;
        }
        b->has_up = i < n - 1;
        snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
        if (b->has_up && (rc = sdw_conv_load(l, &b->up, p, out, out, 3, 1, 1, e)))
            return rc;
    }
    if ((rc = sdw_gnorm_load(l, &u->norm_out, "conv_norm_out", c0, g, eps, e)) ||
        (rc = sdw_conv_load(l, &u->conv_out, "conv_out", c->out_channels, c0, 3, 1, 1, e)))
        return rc;
    return SDW_OK;
}

int sdw_unet_load(sdw_unet **out, sdw_backend *be, const sdw_unet_config *cfg, const sdw_weights *w,
                  sdw_layout layout, sdw_error *e)
{
    sdw_unet *u = calloc(1, sizeof *u);
    if (!u)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    u->be = be;
    u->cfg = *cfg;
    sdw_loader l = {.be = be, .w = w, .rename = layout == SDW_LAYOUT_LDM ? ldm_name : NULL, .ctx = &u->cfg};
    int rc = load_all(u, &l, e);
    if (rc) {
        sdw_fail_wrap(e, "loading unet");
        sdw_unet_free(u);
        return rc;
    }
    *out = u;
    return SDW_OK;
}

/* ---- forward ---- */

/* diffusers' Timesteps in float32, in torch's order of operations:
 * freq_i = exp(-ln(10000) * i / (half - shift)), [sin(t f), cos(t f)],
 * halves swapped when flip_sin_to_cos. */
static void timestep_features(const sdw_unet_config *c, int dim, const float *t, int b, float *out)
{
    int half = dim / 2;
    for (int bi = 0; bi < b; bi++) {
        float *o = out + (size_t)bi * dim;
        for (int i = 0; i < half; i++) {
            float ex = (float)-9.210340371976184 * (float)i;
            ex = ex / ((float)half - c->freq_shift);
            float arg = t[bi] * expf(ex);
            o[c->flip_sin_to_cos ? half + i : i] = sinf(arg);
            o[c->flip_sin_to_cos ? i : half + i] = cosf(arg);
        }
    }
}

/* n values' features of width dim, computed on the host, into t (made
 * [n / rows, rows * dim] on first use). */
static int upload_features(sdw_unet *u, sdw_tensor *t, const float *v, int n, int rows, int dim, sdw_error *e)
{
    int64_t fs[2] = {n / rows, (int64_t)rows * dim};
    int rc;
    if (!t->data && (rc = sdw_tensor_new(t, u->be, 2, fs, e)))
        return rc;
    float *feat = malloc(sizeof *feat * (size_t)n * dim);
    if (!feat)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    timestep_features(&u->cfg, dim, v, n, feat);
    rc = sdw_tensor_upload(t, feat, e);
    free(feat);
    return rc;
}

/* The timestep features (a text_time UNet's time id features, an LCM
 * UNet's guidance embedding) go into u->tfeat (u->afeat, u->tcond): the
 * inputs of the step that do not come in a caller's buffer. */
static int upload_time_features(sdw_unet *u, const float *timesteps, const sdw_unet_cond *cond, int b, sdw_error *e)
{
    if (u->tfeat.data && u->tfeat.shape[0] != b)
        sdw_unet_release(u); /* the graph, if any, reads the old buffers */
    int rc = upload_features(u, &u->tfeat, timesteps, b, 1, u->cfg.block_out[0], e);
    if (!rc && u->cfg.text_time)
        rc = upload_features(u, &u->afeat, cond->time_ids, 6 * b, 6, u->cfg.add_time_dim, e);
    if (!rc && cond && cond->timestep_cond) {
        int64_t cs[2] = {b, u->cfg.time_cond_proj_dim};
        if (!u->tcond.data)
            rc = sdw_tensor_new(&u->tcond, u->be, 2, cs, e);
        if (!rc)
            rc = sdw_tensor_upload(&u->tcond, cond->timestep_cond, e);
    }
    return rc;
}

/* text_time: temb += add_embedding([text_embeds, time id features]). */
static int add_embedding(sdw_unet *u, const sdw_tensor *text_embeds, sdw_tensor *temb, sdw_error *e)
{
    int64_t b = temb->shape[0], as[2] = {b, u->cfg.add_in};
    sdw_tensor in = {0}, h = {0}, y = {0};
    int rc = sdw_tensor_new(&in, u->be, 2, as, e);
    if (!rc && !(rc = sdw_op_concat(text_embeds, &u->afeat, &in, e)) &&
        !(rc = sdw_tensor_new(&h, u->be, 2, temb->shape, e)) && !(rc = sdw_linear_forward(&u->a1, &in, &h, e)) &&
        !(rc = sdw_op_act(&h, SDW_ACT_SILU, &h, e)) && !(rc = sdw_tensor_new(&y, u->be, 2, temb->shape, e)) &&
        !(rc = sdw_linear_forward(&u->a2, &h, &y, e)))
        rc = sdw_op_add(temb, &y, temb, e);
    sdw_tensor_free(&in), sdw_tensor_free(&h), sdw_tensor_free(&y);
    return rc;
}

/* diffusers' TimestepEmbedding: linear_2(silu(linear_1(features +
 * cond_proj(guidance embedding)))), plus a text_time UNet's addition
 * embedding, here followed by the SiLU each resnet applies first. */
static int time_embedding(sdw_unet *u, int b, const sdw_unet_cond *cond, sdw_tensor *temb_act, sdw_error *e)
{
    int64_t ts[2] = {b, 4 * u->cfg.block_out[0]};
    sdw_tensor h = {0}, sum = {0};
    const sdw_tensor *feat = &u->tfeat;
    int rc = SDW_OK;
    if (cond && cond->timestep_cond) {
        sdw_tensor proj = {0};
        if (!(rc = sdw_tensor_new(&proj, u->be, 2, u->tfeat.shape, e)) &&
            !(rc = sdw_linear_forward(&u->cond_proj, &u->tcond, &proj, e)) &&
            !(rc = sdw_tensor_new(&sum, u->be, 2, u->tfeat.shape, e)))
            rc = sdw_op_add(&u->tfeat, &proj, &sum, e);
        sdw_tensor_free(&proj);
        feat = &sum;
    }
    if (!rc)
        rc = sdw_tensor_new(&h, u->be, 2, ts, e);
    if (!rc && !(rc = sdw_linear_forward(&u->t1, feat, &h, e)) && !(rc = sdw_op_act(&h, SDW_ACT_SILU, &h, e)) &&
        !(rc = sdw_tensor_new(temb_act, u->be, 2, ts, e)) && !(rc = sdw_linear_forward(&u->t2, &h, temb_act, e)) &&
        !(rc = u->cfg.text_time ? add_embedding(u, cond->text_embeds, temb_act, e) : SDW_OK))
        rc = sdw_op_act(temb_act, SDW_ACT_SILU, temb_act, e); /* every resnet applies SiLU first */
    sdw_tensor_free(&h);
    sdw_tensor_free(&sum);
    return rc;
}

/* h <- f(h): the result replaces h, whose old memory is released. */
static int step_res(const sdw_resnet *r, sdw_tensor *h, const sdw_tensor *temb, sdw_error *e)
{
    sdw_tensor y;
    int rc = sdw_resnet_forward(r, h, temb, &y, e);
    if (!rc) {
        sdw_tensor_free(h);
        *h = y;
    }
    return rc;
}

static int step_attn(const sdw_transformer *t, sdw_tensor *h, const sdw_tensor *ctx, sdw_error *e)
{
    sdw_tensor y;
    int rc = sdw_transformer_forward(t, h, ctx, &y, e);
    if (!rc) {
        sdw_tensor_free(h);
        *h = y;
    }
    return rc;
}

static int step_conv(const sdw_conv *c, sdw_tensor *h, sdw_error *e)
{
    sdw_tensor y;
    int rc = sdw_conv_forward(c, h, 0, &y, e);
    if (!rc) {
        sdw_tensor_free(h);
        *h = y;
    }
    return rc;
}

static int step_copy(const sdw_tensor *h, sdw_tensor *copy, sdw_error *e)
{
    int rc = sdw_tensor_new(copy, h->be, h->ndim, h->shape, e);
    if (!rc && (rc = sdw_op_scale(h, 1.0f, copy, e)))
        sdw_tensor_free(copy);
    return rc;
}

/* Nearest upsampling to the skip connection's size (2x unless the latent
 * size is not a multiple of the total downsampling), then the conv. */
static int step_up(const sdw_conv *c, sdw_tensor *h, const sdw_tensor *skip, sdw_error *e)
{
    int64_t s[4] = {h->shape[0], h->shape[1], skip->shape[2], skip->shape[3]};
    sdw_tensor y;
    int rc = sdw_tensor_new(&y, h->be, 4, s, e);
    if (!rc && (rc = sdw_op_upsample_nearest(h, &y, e)))
        sdw_tensor_free(&y);
    if (rc)
        return rc;
    sdw_tensor_free(h);
    *h = y;
    return step_conv(c, h, e);
}

static int step_cat(sdw_tensor *h, const sdw_tensor *skip, sdw_error *e)
{
    int64_t s[4] = {h->shape[0], h->shape[1] + skip->shape[1], h->shape[2], h->shape[3]};
    sdw_tensor y;
    int rc = sdw_tensor_new(&y, h->be, 4, s, e);
    if (!rc && (rc = sdw_op_concat(h, skip, &y, e)))
        sdw_tensor_free(&y);
    if (!rc) {
        sdw_tensor_free(h);
        *h = y;
    }
    return rc;
}

/* The step after the timestep features: every op on the backend, nothing
 * moved to or from the host, so that it can be recorded as a graph. */
static int forward_body(sdw_unet *u, const sdw_tensor *x, const sdw_tensor *ctx, const sdw_unet_cond *cond,
                        sdw_tensor *eps, sdw_error *e)
{
    const sdw_unet_config *c = &u->cfg;
    int n = c->nblocks, lpb = c->layers_per_block, nskip = 0, b = (int)x->shape[0];
    sdw_tensor skips[1 + SDW_UNET_MAX_BLOCKS * 64];
    if (1 + n * lpb + n - 1 > (int)(sizeof skips / sizeof skips[0]))
        return sdw_fail(e, SDW_EUNSUPPORTED, "unet: %d layers per block is too many", lpb);
    sdw_tensor temb = {0}, h = {0};
    int rc = time_embedding(u, b, cond, &temb, e);
    if (!rc)
        rc = sdw_conv_forward(&u->conv_in, x, 0, &h, e);
    if (!rc && !(rc = step_copy(&h, &skips[nskip], e)))
        nskip++;
    for (int i = 0; !rc && i < n; i++) {
        const down_block *d = &u->down[i];
        for (int j = 0; !rc && j < lpb; j++) {
            if (!(rc = step_res(&d->res[j], &h, &temb, e)) && d->attn)
                rc = step_attn(&d->attn[j], &h, ctx, e);
            if (!rc && !(rc = step_copy(&h, &skips[nskip], e)))
                nskip++;
        }
        if (!rc && d->has_down && !(rc = step_conv(&d->down, &h, e)) && !(rc = step_copy(&h, &skips[nskip], e)))
            nskip++;
    }
    if (!rc && !(rc = step_res(&u->mid_res[0], &h, &temb, e)) && !(rc = step_attn(&u->mid_attn, &h, ctx, e)))
        rc = step_res(&u->mid_res[1], &h, &temb, e);
    for (int i = 0; !rc && i < n; i++) {
        const up_block *ub = &u->up[i];
        for (int j = 0; !rc && j <= lpb; j++) {
            sdw_tensor *skip = &skips[--nskip];
            rc = step_cat(&h, skip, e);
            sdw_tensor_free(skip);
            if (!rc && !(rc = step_res(&ub->res[j], &h, &temb, e)) && ub->attn)
                rc = step_attn(&ub->attn[j], &h, ctx, e);
        }
        if (!rc && ub->has_up)
            rc = step_up(&ub->up, &h, &skips[nskip - 1], e);
    }
    if (!rc && !(rc = sdw_op_group_norm(&h, u->norm_out.groups, &u->norm_out.w, &u->norm_out.b, u->norm_out.eps, 1,
                                        &h, e)))
        rc = sdw_op_conv2d(&h, &u->conv_out.w, &u->conv_out.b, u->conv_out.g, eps, e);
    while (nskip > 0)
        sdw_tensor_free(&skips[--nskip]);
    sdw_tensor_free(&h);
    sdw_tensor_free(&temb);
    return rc;
}

static step_key key_of(const sdw_tensor *x, const sdw_tensor *ctx, const sdw_unet_cond *cond, const sdw_tensor *eps)
{
    const void *te = cond && cond->text_embeds ? cond->text_embeds->data : NULL;
    return (step_key){x->data, ctx->data, eps->data, te, {x->shape[0], x->shape[1], x->shape[2], x->shape[3]},
                      ctx->shape[1], cond && cond->timestep_cond};
}

static int same_key(const step_key *a, const step_key *b)
{
    return a->x == b->x && a->ctx == b->ctx && a->eps == b->eps && a->text_embeds == b->text_embeds &&
           !memcmp(a->xs, b->xs, sizeof a->xs) && a->tokens == b->tokens && a->tcond == b->tcond;
}

/* Records the step and runs it once. A recording that fails leaves the
 * step to be run directly, from then on until sdw_unet_release. */
static int record(sdw_unet *u, const sdw_tensor *x, const sdw_tensor *ctx, const sdw_unet_cond *cond,
                  sdw_tensor *eps, sdw_error *e)
{
    sdw_error why;
    int rc = sdw_graph_begin(u->be, &why);
    if (!rc && (rc = forward_body(u, x, ctx, cond, eps, &why)))
        sdw_graph_abandon(u->be);
    if (!rc && (rc = sdw_graph_end(u->be, &u->graph, &why)))
        u->graph = NULL;
    if (!rc)
        return sdw_graph_launch(u->graph, e);
    u->graph_off = 1;
    snprintf(u->graph_why, sizeof u->graph_why, "%s", why.msg);
    return forward_body(u, x, ctx, cond, eps, e);
}

/* What cond holds must be what the UNet takes. */
static int check_cond(const sdw_unet *u, const sdw_unet_cond *cond, int64_t b, sdw_error *e)
{
    const sdw_unet_config *c = &u->cfg;
    const sdw_tensor *te = cond ? cond->text_embeds : NULL;
    if (cond && cond->timestep_cond && !c->time_cond_proj_dim)
        return sdw_fail(e, SDW_EINVAL, "unet: a timestep_cond given to a UNet without time_cond_proj_dim");
    if (!c->text_time) {
        if (te || (cond && cond->time_ids))
            return sdw_fail(e, SDW_EINVAL, "unet: text_embeds or time_ids for a UNet without text_time");
        return SDW_OK;
    }
    if (!te || !cond->time_ids)
        return sdw_fail(e, SDW_EINVAL, "unet: a text_time UNet needs the pooled text embeddings and the time ids");
    if (te->ndim != 2 || te->shape[0] != b || te->shape[1] + 6 * c->add_time_dim != c->add_in) {
        char s[96];
        return sdw_fail(e, SDW_EINVAL, "unet: pooled text embeddings %s, expected [%lld,%d] (%d wide add_embedding "
                        "less 6 time ids of %d)", sdw_shape_str(te->ndim, te->shape, s, sizeof s), (long long)b,
                        c->add_in - 6 * c->add_time_dim, c->add_in, c->add_time_dim);
    }
    return SDW_OK;
}

int sdw_unet_forward(sdw_unet *u, const sdw_tensor *x, const float *timesteps, const sdw_tensor *ctx,
                     const sdw_unet_cond *cond, sdw_tensor *eps, sdw_error *e)
{
    const sdw_unet_config *c = &u->cfg;
    char s1[96], s2[96], s3[96];
    if (x->ndim != 4 || x->shape[1] != c->in_channels || ctx->ndim != 3 || ctx->shape[0] != x->shape[0] ||
        ctx->shape[2] != c->cross_attention_dim || eps->ndim != 4 || eps->shape[0] != x->shape[0] ||
        eps->shape[1] != c->out_channels || eps->shape[2] != x->shape[2] || eps->shape[3] != x->shape[3])
        return sdw_fail(e, SDW_EINVAL,
                        "unet: latents %s, text states %s, output %s do not fit a UNet with %d input channels, "
                        "%d output channels and text width %d",
                        sdw_shape_str(x->ndim, x->shape, s1, sizeof s1),
                        sdw_shape_str(ctx->ndim, ctx->shape, s2, sizeof s2),
                        sdw_shape_str(eps->ndim, eps->shape, s3, sizeof s3), c->in_channels, c->out_channels,
                        c->cross_attention_dim);
    int rc = check_cond(u, cond, x->shape[0], e);
    if (!rc)
        rc = upload_time_features(u, timesteps, cond, (int)x->shape[0], e);
    if (rc)
        return rc;
    step_key k = key_of(x, ctx, cond, eps);
    int same = same_key(&u->key, &k);
    if (u->graph && !same) {
        sdw_graph_free(u->graph);
        u->graph = NULL;
    }
    if (u->graph) {
        if (!(rc = sdw_graph_launch(u->graph, e)))
            u->replays++;
    } else if (!u->graph_off && sdw_backend_has_graphs(u->be) && same) {
        rc = record(u, x, ctx, cond, eps, e);
    } else {
        rc = forward_body(u, x, ctx, cond, eps, e);
        u->key = rc ? (step_key){0} : k;
    }
    if (rc)
        sdw_fail_wrap(e, "unet");
    return rc;
}
