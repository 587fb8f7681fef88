#include "model/clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"
#include "model/param.h"

typedef struct clip_layer {
    sdw_tensor ln1_w, ln1_b, ln2_w, ln2_b;
    sdw_linear q, k, v, o, fc1, fc2;
} clip_layer;

struct sdw_clip {
    sdw_backend *be;
    sdw_clip_config cfg;
    sdw_tensor tok_emb, pos_emb, final_w, final_b;
    sdw_tensor proj; /* text_projection.weight [projection_dim, hidden], when projection_dim */
    clip_layer *layers;
};

static int load_vec(sdw_clip *c, const sdw_weights *w, sdw_tensor *t, const char *name, int64_t n, sdw_error *e)
{
    return sdw_param_load(t, c->be, w, name, 1, &n, e);
}

static int load_mat(sdw_clip *c, const sdw_weights *w, sdw_tensor *t, const char *name, int64_t rows,
                    int64_t cols, sdw_error *e)
{
    int64_t shape[2] = {rows, cols};
    return sdw_param_load(t, c->be, w, name, 2, shape, e);
}

/* Loads a LayerNorm (weight + bias). */
static int load_norm(sdw_clip *c, const sdw_weights *w, const char *prefix, sdw_tensor *wt, sdw_tensor *bt,
                     int64_t n, sdw_error *e)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = load_vec(c, w, wt, name, n, e);
    if (rc)
        return rc;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return load_vec(c, w, bt, name, n, e);
}

static int load_layer(sdw_clip *c, const sdw_weights *w, int i, clip_layer *l, sdw_error *e)
{
    int64_t h = c->cfg.hidden_size, f = c->cfg.intermediate_size;
    char p[192];
    /* Linear weights through sdw_linear_load: the backend may keep them in
     * their low-precision form (halves from an f16 file on the CPU: half the
     * memory, the same products), and LoRA finds them (nn.h). */
    sdw_loader ld = {.be = c->be, .w = w};
    struct {
        const char *name;
        sdw_linear *m;
        int64_t out, in;
    } parts[] = {
        {"self_attn.q_proj", &l->q, h, h},   {"self_attn.k_proj", &l->k, h, h}, {"self_attn.v_proj", &l->v, h, h},
        {"self_attn.out_proj", &l->o, h, h}, {"mlp.fc1", &l->fc1, f, h},       {"mlp.fc2", &l->fc2, h, f},
    };
    int rc;
    snprintf(p, sizeof p, "encoder.layers.%d.layer_norm1", i);
    if ((rc = load_norm(c, w, p, &l->ln1_w, &l->ln1_b, h, e)))
        return rc;
    snprintf(p, sizeof p, "encoder.layers.%d.layer_norm2", i);
    if ((rc = load_norm(c, w, p, &l->ln2_w, &l->ln2_b, h, e)))
        return rc;
    for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
        snprintf(p, sizeof p, "encoder.layers.%d.%s", i, parts[k].name);
        if ((rc = sdw_linear_load(&ld, parts[k].m, p, parts[k].out, parts[k].in, 1, e)))
            return rc;
    }
    return SDW_OK;
}

static void free_layer(clip_layer *l)
{
    sdw_tensor *all[] = {&l->ln1_w, &l->ln1_b, &l->ln2_w, &l->ln2_b};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        sdw_tensor_free(all[k]);
    sdw_linear *lin[] = {&l->q, &l->k, &l->v, &l->o, &l->fc1, &l->fc2};
    for (size_t k = 0; k < sizeof lin / sizeof lin[0]; k++)
        sdw_linear_free(lin[k]);
}

void sdw_clip_free(sdw_clip *c)
{
    if (!c)
        return;
    if (c->layers)
        for (int i = 0; i < c->cfg.num_layers; i++)
            free_layer(&c->layers[i]);
    free(c->layers);
    sdw_tensor_free(&c->tok_emb);
    sdw_tensor_free(&c->pos_emb);
    sdw_tensor_free(&c->final_w);
    sdw_tensor_free(&c->final_b);
    sdw_tensor_free(&c->proj);
    free(c);
}

int sdw_clip_load(sdw_clip **out, sdw_backend *be, const sdw_clip_config *cfg, const sdw_weights *w,
                  sdw_error *e)
{
    if (cfg->num_heads <= 0 || cfg->hidden_size % cfg->num_heads)
        return sdw_fail(e, SDW_EINVAL, "text encoder: hidden size %d does not split into %d heads",
                        cfg->hidden_size, cfg->num_heads);
    sdw_clip *c = calloc(1, sizeof *c);
    if (!c)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    c->be = be;
    c->cfg = *cfg;
    c->layers = calloc((size_t)cfg->num_layers, sizeof *c->layers);
    int rc = c->layers ? SDW_OK : sdw_fail(e, SDW_ENOMEM, "out of memory");
    if (!rc)
        rc = load_mat(c, w, &c->tok_emb, "embeddings.token_embedding.weight", cfg->vocab_size,
                      cfg->hidden_size, e);
    if (!rc)
        rc = load_mat(c, w, &c->pos_emb, "embeddings.position_embedding.weight", cfg->max_positions,
                      cfg->hidden_size, e);
    for (int i = 0; !rc && i < cfg->num_layers; i++)
        rc = load_layer(c, w, i, &c->layers[i], e);
    if (!rc)
        rc = load_norm(c, w, "final_layer_norm", &c->final_w, &c->final_b, cfg->hidden_size, e);
    if (!rc && cfg->projection_dim > 0) {
        int64_t ps[2] = {cfg->projection_dim, cfg->hidden_size};
        rc = sdw_param_load_weight(&c->proj, be, w, "text_projection.weight", 2, ps, e);
    }
    if (rc) {
        sdw_fail_wrap(e, "text encoder");
        sdw_clip_free(c);
        return rc;
    }
    *out = c;
    return SDW_OK;
}

/* Scratch activations of one forward pass. */
typedef struct clip_scratch {
    sdw_tensor h, q, k, v, attn, proj, mlp;
} clip_scratch;

static void scratch_free(clip_scratch *s)
{
    sdw_tensor *all[] = {&s->h, &s->q, &s->k, &s->v, &s->attn, &s->proj, &s->mlp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sdw_tensor_free(all[i]);
}

static int scratch_new(sdw_clip *c, clip_scratch *s, int batch, int tokens, sdw_error *e)
{
    int64_t hs[3] = {batch, tokens, c->cfg.hidden_size};
    int64_t fs[3] = {batch, tokens, c->cfg.intermediate_size};
    sdw_tensor *hidden[] = {&s->h, &s->q, &s->k, &s->v, &s->attn, &s->proj};
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++) {
        int rc = sdw_tensor_new(hidden[i], c->be, 3, hs, e);
        if (rc)
            return rc;
    }
    return sdw_tensor_new(&s->mlp, c->be, 3, fs, e);
}

/* One pre-LN block, x updated in place:
 * x += out_proj(attn(LN1 x)); x += fc2(act(fc1(LN2 x))). */
static int run_layer(sdw_clip *c, const clip_layer *l, sdw_tensor *x, clip_scratch *s, sdw_error *e)
{
    const sdw_clip_config *cfg = &c->cfg;
    int rc;
    if ((rc = sdw_op_layer_norm(x, &l->ln1_w, &l->ln1_b, cfg->layer_norm_eps, &s->h, e)) ||
        (rc = sdw_linear_forward(&l->q, &s->h, &s->q, e)) || (rc = sdw_linear_forward(&l->k, &s->h, &s->k, e)) ||
        (rc = sdw_linear_forward(&l->v, &s->h, &s->v, e)) ||
        (rc = sdw_op_attention(&s->q, &s->k, &s->v, cfg->num_heads, 1, &s->attn, e)) ||
        (rc = sdw_linear_forward(&l->o, &s->attn, &s->proj, e)) || (rc = sdw_op_add(x, &s->proj, x, e)) ||
        (rc = sdw_op_layer_norm(x, &l->ln2_w, &l->ln2_b, cfg->layer_norm_eps, &s->h, e)) ||
        (rc = sdw_linear_forward(&l->fc1, &s->h, &s->mlp, e)) ||
        (rc = sdw_op_act(&s->mlp, cfg->quick_gelu ? SDW_ACT_QUICK_GELU : SDW_ACT_GELU, &s->mlp, e)) ||
        (rc = sdw_linear_forward(&l->fc2, &s->mlp, &s->proj, e)) || (rc = sdw_op_add(x, &s->proj, x, e)))
        return rc;
    return SDW_OK;
}

static int check_out(const sdw_clip *c, const sdw_tensor *t, const char *what, int batch, int64_t rows,
                     int64_t width, sdw_error *e)
{
    int ok = rows ? t->ndim == 3 && t->shape[0] == batch && t->shape[1] == rows && t->shape[2] == width
                  : t->ndim == 2 && t->shape[0] == batch && t->shape[1] == width;
    if (ok)
        return SDW_OK;
    char s[96];
    if (rows)
        return sdw_fail(e, SDW_EINVAL, "text encoder: %s has shape %s, expected [%d,%lld,%lld]", what,
                        sdw_shape_str(t->ndim, t->shape, s, sizeof s), batch, (long long)rows, (long long)width);
    return sdw_fail(e, SDW_EINVAL, "text encoder: %s has shape %s, expected [%d,%lld]", what,
                    sdw_shape_str(t->ndim, t->shape, s, sizeof s), batch, (long long)width);
}

/* The pooled output: text_projection(final_layer_norm(x)) at each row's
 * first largest id, which is transformers' rule for the legacy eos id 2 that
 * SD's encoder configs carry and, since EOS (49407) is the largest id and
 * always there, the same position as its rule for any other. The rows are
 * picked on the host: a tensor's data is a handle, not an address. */
static int pool(sdw_clip *c, const int32_t *ids, int batch, int tokens, const sdw_tensor *x, sdw_tensor *pooled,
                sdw_error *e)
{
    int64_t h = c->cfg.hidden_size, ps[2] = {batch, h};
    size_t row = (size_t)h;
    sdw_tensor ln = {0}, picked = {0};
    float *all = malloc((size_t)batch * tokens * row * sizeof *all), *sel = malloc((size_t)batch * row * sizeof *sel);
    int rc = all && sel ? SDW_OK : sdw_fail(e, SDW_ENOMEM, "out of memory");
    if (!rc)
        rc = sdw_tensor_new(&ln, c->be, x->ndim, x->shape, e);
    if (!rc)
        rc = sdw_op_layer_norm(x, &c->final_w, &c->final_b, c->cfg.layer_norm_eps, &ln, e);
    if (!rc)
        rc = sdw_tensor_to_host(&ln, all, e);
    for (int b = 0; !rc && b < batch; b++) {
        int at = 0;
        for (int i = 1; i < tokens; i++)
            if (ids[b * tokens + i] > ids[b * tokens + at])
                at = i;
        memcpy(sel + b * row, all + ((size_t)b * tokens + at) * row, row * sizeof *sel);
    }
    if (!rc)
        rc = sdw_tensor_from_host(&picked, c->be, 2, ps, sel, e);
    if (!rc)
        rc = sdw_op_linear(&picked, &c->proj, NULL, pooled, e);
    sdw_tensor_free(&ln), sdw_tensor_free(&picked);
    free(all), free(sel);
    return rc;
}

/* Runs the embeddings and the layers; `stop` layers in, the states go to
 * out (after the final LayerNorm when final_ln); pooled, when not NULL,
 * takes all the layers. */
static int encode(sdw_clip *c, const int32_t *ids, int batch, int tokens, int stop, int final_ln, sdw_tensor *out,
                  sdw_tensor *pooled, sdw_error *e)
{
    const sdw_clip_config *cfg = &c->cfg;
    clip_scratch s = {0};
    sdw_tensor x = {0};
    int64_t xs[3] = {batch, tokens, cfg->hidden_size};
    int last = pooled ? cfg->num_layers : stop;
    int rc = scratch_new(c, &s, batch, tokens, e);
    if (!rc)
        rc = sdw_tensor_new(&x, c->be, 3, xs, e);
    if (!rc)
        rc = sdw_op_embed(&c->tok_emb, ids, &c->pos_emb, &x, e);
    for (int i = 0; !rc && i <= last; i++) {
        if (i == stop)
            rc = final_ln ? sdw_op_layer_norm(&x, &c->final_w, &c->final_b, cfg->layer_norm_eps, out, e)
                          : sdw_op_scale(&x, 1.0f, out, e);
        if (!rc && i < last)
            rc = run_layer(c, &c->layers[i], &x, &s, e);
    }
    if (!rc && pooled)
        rc = pool(c, ids, batch, tokens, &x, pooled, e);
    sdw_tensor_free(&x);
    scratch_free(&s);
    return rc;
}

int sdw_clip_encode(sdw_clip *c, const int32_t *ids, int batch, int tokens, int clip_skip, sdw_tensor *out,
                    sdw_error *e)
{
    const sdw_clip_config *cfg = &c->cfg;
    if (batch <= 0 || tokens <= 0 || tokens > cfg->max_positions)
        return sdw_fail(e, SDW_EINVAL, "text encoder: %d tokens outside 1..%d", tokens, cfg->max_positions);
    if (clip_skip < 0 || clip_skip >= cfg->num_layers)
        return sdw_fail(e, SDW_EINVAL, "text encoder: clip_skip %d outside 0..%d", clip_skip, cfg->num_layers - 1);
    int rc = check_out(c, out, "output", batch, tokens, cfg->hidden_size, e);
    return rc ? rc : encode(c, ids, batch, tokens, cfg->num_layers - clip_skip, 1, out, NULL, e);
}

int sdw_clip_encode_hidden(sdw_clip *c, const int32_t *ids, int batch, int tokens, int layer, sdw_tensor *out,
                           sdw_tensor *pooled, sdw_error *e)
{
    const sdw_clip_config *cfg = &c->cfg;
    if (batch <= 0 || tokens <= 0 || tokens > cfg->max_positions)
        return sdw_fail(e, SDW_EINVAL, "text encoder: %d tokens outside 1..%d", tokens, cfg->max_positions);
    if (layer < 0 || layer > cfg->num_layers)
        return sdw_fail(e, SDW_EINVAL, "text encoder: hidden states of layer %d outside 0..%d", layer,
                        cfg->num_layers);
    if (pooled && cfg->projection_dim <= 0)
        return sdw_fail(e, SDW_EINVAL, "text encoder: no text projection to pool with");
    int rc = check_out(c, out, "output", batch, tokens, cfg->hidden_size, e);
    if (!rc && pooled)
        rc = check_out(c, pooled, "pooled output", batch, 0, cfg->projection_dim, e);
    return rc ? rc : encode(c, ids, batch, tokens, layer, 0, out, pooled, e);
}
