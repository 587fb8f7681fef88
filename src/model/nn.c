#include "model/nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/param.h"

/* prefix.part into buf; names are far shorter than buf, so a cut name can
 * only come from a bad prefix and then fails to load by name. */
static const char *join(char *buf, size_t cap, const char *prefix, const char *part)
{
    if ((size_t)snprintf(buf, cap, "%s.%s", prefix, part) >= cap)
        buf[0] = 0;
    return buf;
}

static int file_name(const sdw_loader *l, const char *name, char *out, size_t cap, sdw_error *e)
{
    if (!l->rename) {
        if ((size_t)snprintf(out, cap, "%s", name) >= cap)
            return sdw_fail(e, SDW_EINVAL, "tensor name %s is too long", name);
        return SDW_OK;
    }
    if (l->rename(l->ctx, name, out, cap))
        return sdw_fail(e, SDW_EINVAL, "no single-file name for %s", name);
    return SDW_OK;
}

int sdw_nn_load(const sdw_loader *l, sdw_tensor *t, const char *name, int ndim, const int64_t *shape,
                sdw_error *e)
{
    char fname[256];
    int rc = file_name(l, name, fname, sizeof fname, e);
    if (!rc)
        rc = sdw_param_load(t, l->be, l->w, fname, ndim, shape, e);
    return rc;
}

int sdw_nn_has(const sdw_loader *l, const char *name)
{
    char fname[256];
    const sdw_st_tensor *t;
    sdw_error e;
    return !file_name(l, name, fname, sizeof fname, &e) && !sdw_weights_find(l->w, fname, &t, &e);
}

int sdw_nn_load_matrix(const sdw_loader *l, sdw_tensor *t, const char *name, int64_t rows, int64_t cols,
                       sdw_error *e)
{
    char fname[256];
    const sdw_st_tensor *st;
    int rc = file_name(l, name, fname, sizeof fname, e);
    if (rc)
        return rc;
    if (!sdw_weights_find(l->w, fname, &st, e) && st->ndim == 4) {
        int64_t s4[4] = {rows, cols, 1, 1}, s2[2] = {rows, cols};
        if ((rc = sdw_param_load_weight(t, l->be, l->w, fname, 4, s4, e)))
            return rc;
        sdw_tensor v;
        if ((rc = sdw_tensor_view(&v, t, 2, s2, e)))
            return rc;
        v.owns = t->owns; /* the same allocation, now seen as a matrix */
        *t = v;
        return SDW_OK;
    }
    int64_t s2[2] = {rows, cols};
    return sdw_param_load_weight(t, l->be, l->w, fname, 2, s2, e);
}

int sdw_layer_set_add(sdw_layer_set *s, const char *part, const char *path, sdw_linear *lin, sdw_conv *conv,
                      sdw_error *e)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        sdw_layer_ref *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return sdw_fail(e, SDW_ENOMEM, "out of memory");
        s->v = v, s->cap = cap;
    }
    sdw_layer_ref *r = &s->v[s->n];
    if ((size_t)snprintf(r->part, sizeof r->part, "%s", part) >= sizeof r->part ||
        (size_t)snprintf(r->path, sizeof r->path, "%s", path) >= sizeof r->path)
        return sdw_fail(e, SDW_EINVAL, "layer name %s.%s is too long", part, path);
    memcpy(r->flat, r->path, sizeof r->flat);
    for (char *c = r->flat; *c; c++)
        if (*c == '.')
            *c = '_';
    r->linear = lin, r->conv = conv;
    s->n++;
    return SDW_OK;
}

void sdw_layer_set_free(sdw_layer_set *s)
{
    free(s->v);
    *s = (sdw_layer_set){0};
}

int sdw_linear_load(const sdw_loader *l, sdw_linear *m, const char *prefix, int64_t out, int64_t in, int bias,
                    sdw_error *e)
{
    char name[256];
    m->in = in, m->out = out;
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = sdw_nn_load_matrix(l, &m->w, name, out, in, e);
    if (!rc && bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        rc = sdw_nn_load(l, &m->b, name, 1, &out, e);
    }
    if (!rc && l->w->layers)
        rc = sdw_layer_set_add(l->w->layers, l->w->part, prefix, m, NULL, e);
    return rc;
}

/* The shape of x with its last dimension n. */
static void rows_of(const sdw_tensor *x, int64_t n, int64_t *shape)
{
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    shape[x->ndim - 1] = n;
}

int sdw_linear_forward(const sdw_linear *m, const sdw_tensor *x, sdw_tensor *y, sdw_error *e)
{
    int rc = sdw_op_linear(x, &m->w, m->b.data ? &m->b : NULL, y, e);
    for (const sdw_delta *d = m->delta; !rc && d; d = d->next) {
        int64_t sr[SDW_MAX_DIMS], so[SDW_MAX_DIMS];
        rows_of(x, d->down.shape[0], sr);
        rows_of(x, m->out, so);
        sdw_tensor r = {0}, o = {0};
        if (!(rc = sdw_tensor_new(&r, x->be, x->ndim, sr, e)) && !(rc = sdw_tensor_new(&o, x->be, x->ndim, so, e)) &&
            !(rc = sdw_op_linear(x, &d->down, NULL, &r, e)) && !(rc = sdw_op_linear(&r, &d->up, NULL, &o, e)))
            rc = sdw_op_add(y, &o, y, e);
        sdw_tensor_free(&r);
        sdw_tensor_free(&o);
    }
    return rc;
}

void sdw_linear_free(sdw_linear *m)
{
    sdw_tensor_free(&m->w);
    sdw_tensor_free(&m->b);
}

int sdw_conv_load(const sdw_loader *l, sdw_conv *c, const char *prefix, int64_t cout, int64_t cin, int k,
                  int stride, int pad, sdw_error *e)
{
    char name[256];
    int64_t ws[4] = {cout, cin, k, k};
    c->cin = cin, c->cout = cout, c->k = k;
    c->g = (sdw_conv2d_geom){.stride = stride, .pad_t = pad, .pad_l = pad};
    snprintf(name, sizeof name, "%s.weight", prefix);
    char fname[256];
    int rc = file_name(l, name, fname, sizeof fname, e);
    if (!rc)
        rc = sdw_param_load_weight(&c->w, l->be, l->w, fname, 4, ws, e);
    if (!rc) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        rc = sdw_nn_load(l, &c->b, name, 1, &cout, e);
    }
    if (!rc && l->w->layers)
        rc = sdw_layer_set_add(l->w->layers, l->w->part, prefix, NULL, c, e);
    return rc;
}

int sdw_conv_add_deltas(const sdw_conv *c, const sdw_tensor *x, sdw_tensor *y, sdw_error *e)
{
    int rc = SDW_OK;
    for (const sdw_delta *d = c->delta; !rc && d; d = d->next) {
        int64_t rs[4] = {y->shape[0], d->down.shape[0], y->shape[2], y->shape[3]};
        sdw_tensor r = {0}, o = {0};
        sdw_conv2d_geom one = {.stride = 1};
        if (!(rc = sdw_tensor_new(&r, x->be, 4, rs, e)) && !(rc = sdw_tensor_new(&o, x->be, 4, y->shape, e)) &&
            !(rc = sdw_op_conv2d(x, &d->down, NULL, c->g, &r, e)) &&
            !(rc = sdw_op_conv2d(&r, &d->up, NULL, one, &o, e)))
            rc = sdw_op_add(y, &o, y, e);
        sdw_tensor_free(&r);
        sdw_tensor_free(&o);
    }
    return rc;
}

int sdw_conv_forward(const sdw_conv *c, const sdw_tensor *x, int extra_pad, sdw_tensor *y, sdw_error *e)
{
    if (x->ndim != 4 || x->shape[1] != c->cin) {
        char s[96];
        return sdw_fail(e, SDW_EINVAL, "conv: input %s, expected %lld channels",
                        sdw_shape_str(x->ndim, x->shape, s, sizeof s), (long long)c->cin);
    }
    int64_t oh = (x->shape[2] + 2 * c->g.pad_t + extra_pad - c->k) / c->g.stride + 1;
    int64_t ow = (x->shape[3] + 2 * c->g.pad_l + extra_pad - c->k) / c->g.stride + 1;
    int64_t ys[4] = {x->shape[0], c->cout, oh, ow};
    int rc = sdw_tensor_new(y, x->be, 4, ys, e);
    if (!rc && !(rc = sdw_op_conv2d(x, &c->w, &c->b, c->g, y, e)))
        rc = sdw_conv_add_deltas(c, x, y, e);
    if (rc)
        sdw_tensor_free(y);
    return rc;
}

void sdw_conv_free(sdw_conv *c)
{
    sdw_tensor_free(&c->w);
    sdw_tensor_free(&c->b);
}

int sdw_gnorm_load(const sdw_loader *l, sdw_gnorm *n, const char *prefix, int64_t c, int groups, float eps,
                   sdw_error *e)
{
    char name[256];
    n->groups = groups, n->eps = eps;
    if (groups <= 0 || c % groups)
        return sdw_fail(e, SDW_EINVAL, "%s: %lld channels do not split into %d groups", prefix, (long long)c,
                        groups);
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = sdw_nn_load(l, &n->w, name, 1, &c, e);
    if (!rc) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        rc = sdw_nn_load(l, &n->b, name, 1, &c, e);
    }
    return rc;
}

void sdw_gnorm_free(sdw_gnorm *n)
{
    sdw_tensor_free(&n->w);
    sdw_tensor_free(&n->b);
}

static int gnorm(const sdw_gnorm *n, const sdw_tensor *x, int silu, sdw_tensor *y, sdw_error *e)
{
    return sdw_op_group_norm(x, n->groups, &n->w, &n->b, n->eps, silu, y, e);
}

int sdw_resnet_load(const sdw_loader *l, sdw_resnet *r, const char *prefix, int64_t cin, int64_t cout,
                    int64_t temb_dim, int groups, float eps, sdw_error *e)
{
    char p[256];
    int rc;
    r->cin = cin, r->cout = cout;
    r->has_temb = temb_dim > 0;
    r->has_sc = cin != cout;
#define PART(s) join(p, sizeof p, prefix, s)
    if ((rc = sdw_gnorm_load(l, &r->n1, PART("norm1"), cin, groups, eps, e)) ||
        (rc = sdw_conv_load(l, &r->c1, PART("conv1"), cout, cin, 3, 1, 1, e)) ||
        (r->has_temb && (rc = sdw_linear_load(l, &r->temb, PART("time_emb_proj"), cout, temb_dim, 1, e))) ||
        (rc = sdw_gnorm_load(l, &r->n2, PART("norm2"), cout, groups, eps, e)) ||
        (rc = sdw_conv_load(l, &r->c2, PART("conv2"), cout, cout, 3, 1, 1, e)) ||
        (r->has_sc && (rc = sdw_conv_load(l, &r->sc, PART("conv_shortcut"), cout, cin, 1, 1, 0, e))))
        return rc;
#undef PART
    return SDW_OK;
}

int sdw_resnet_forward(const sdw_resnet *r, const sdw_tensor *x, const sdw_tensor *temb_act, sdw_tensor *y,
                       sdw_error *e)
{
    sdw_tensor h = {0}, h2 = {0}, t = {0}, s = {0};
    int rc = sdw_tensor_new(&h, x->be, x->ndim, x->shape, e);
    if (!rc)
        rc = gnorm(&r->n1, x, 1, &h, e);
    if (!rc)
        rc = sdw_conv_forward(&r->c1, &h, 0, &h2, e);
    sdw_tensor_free(&h);
    if (!rc && r->has_temb) {
        int64_t ts[2] = {x->shape[0], r->cout};
        if (!(rc = sdw_tensor_new(&t, x->be, 2, ts, e)) && !(rc = sdw_linear_forward(&r->temb, temb_act, &t, e)))
            rc = sdw_op_add_channel(&h2, &t, &h2, e);
        sdw_tensor_free(&t);
    }
    /* The group norm reads each group whole before writing it: in place is safe. */
    if (!rc)
        rc = gnorm(&r->n2, &h2, 1, &h2, e);
    if (!rc)
        rc = sdw_conv_forward(&r->c2, &h2, 0, y, e);
    sdw_tensor_free(&h2);
    if (rc)
        return rc;
    if (r->has_sc) {
        if (!(rc = sdw_conv_forward(&r->sc, x, 0, &s, e)))
            rc = sdw_op_add(y, &s, y, e);
        sdw_tensor_free(&s);
    } else {
        rc = sdw_op_add(y, x, y, e);
    }
    if (rc)
        sdw_tensor_free(y);
    return rc;
}

void sdw_resnet_free(sdw_resnet *r)
{
    sdw_gnorm_free(&r->n1), sdw_gnorm_free(&r->n2);
    sdw_conv_free(&r->c1), sdw_conv_free(&r->c2), sdw_conv_free(&r->sc);
    sdw_linear_free(&r->temb);
}

static int tblock_load(const sdw_loader *l, sdw_tblock *b, const char *prefix, int64_t c, int64_t ctx_dim,
                       sdw_error *e)
{
    char p[256];
    int rc = SDW_OK;
    for (int i = 0; !rc && i < 3; i++) {
        snprintf(p, sizeof p, "%s.norm%d.weight", prefix, i + 1);
        if (!(rc = sdw_nn_load(l, &b->ln_w[i], p, 1, &c, e))) {
            snprintf(p, sizeof p, "%s.norm%d.bias", prefix, i + 1);
            rc = sdw_nn_load(l, &b->ln_b[i], p, 1, &c, e);
        }
    }
#define PART(s) join(p, sizeof p, prefix, s)
    if (rc || (rc = sdw_linear_load(l, &b->q1, PART("attn1.to_q"), c, c, 0, e)) ||
        (rc = sdw_linear_load(l, &b->k1, PART("attn1.to_k"), c, c, 0, e)) ||
        (rc = sdw_linear_load(l, &b->v1, PART("attn1.to_v"), c, c, 0, e)) ||
        (rc = sdw_linear_load(l, &b->o1, PART("attn1.to_out.0"), c, c, 1, e)) ||
        (rc = sdw_linear_load(l, &b->q2, PART("attn2.to_q"), c, c, 0, e)) ||
        (rc = sdw_linear_load(l, &b->k2, PART("attn2.to_k"), c, ctx_dim, 0, e)) ||
        (rc = sdw_linear_load(l, &b->v2, PART("attn2.to_v"), c, ctx_dim, 0, e)) ||
        (rc = sdw_linear_load(l, &b->o2, PART("attn2.to_out.0"), c, c, 1, e)) ||
        (rc = sdw_linear_load(l, &b->ff1, PART("ff.net.0.proj"), 8 * c, c, 1, e)) ||
        (rc = sdw_linear_load(l, &b->ff2, PART("ff.net.2"), c, 4 * c, 1, e)))
        return rc;
#undef PART
    return SDW_OK;
}

static void tblock_free(sdw_tblock *b)
{
    for (int i = 0; i < 3; i++)
        sdw_tensor_free(&b->ln_w[i]), sdw_tensor_free(&b->ln_b[i]);
    sdw_linear *all[] = {&b->q1, &b->k1, &b->v1, &b->o1, &b->q2, &b->k2, &b->v2, &b->o2, &b->ff1, &b->ff2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sdw_linear_free(all[i]);
}

int sdw_transformer_load(const sdw_loader *l, sdw_transformer *t, const char *prefix, int64_t c, int heads,
                         int nblocks, int64_t ctx_dim, int groups, sdw_error *e)
{
    char p[256];
    int rc;
    t->c = c, t->heads = heads, t->ctx_dim = ctx_dim;
    if (heads <= 0 || c % heads)
        return sdw_fail(e, SDW_EINVAL, "%s: %lld channels do not split into %d attention heads", prefix,
                        (long long)c, heads);
    t->blocks = calloc((size_t)nblocks, sizeof *t->blocks);
    if (!t->blocks)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    t->nblocks = nblocks;
    if ((rc = sdw_gnorm_load(l, &t->norm, join(p, sizeof p, prefix, "norm"), c, groups, 1e-6f, e)))
        return rc;
    if ((rc = sdw_linear_load(l, &t->pin, join(p, sizeof p, prefix, "proj_in"), c, c, 1, e)))
        return rc;
    for (int i = 0; i < nblocks; i++) {
        snprintf(p, sizeof p, "%s.transformer_blocks.%d", prefix, i);
        if ((rc = tblock_load(l, &t->blocks[i], p, c, ctx_dim, e)))
            return rc;
    }
    return sdw_linear_load(l, &t->pout, join(p, sizeof p, prefix, "proj_out"), c, c, 1, e);
}

void sdw_transformer_free(sdw_transformer *t)
{
    sdw_gnorm_free(&t->norm);
    sdw_linear_free(&t->pin), sdw_linear_free(&t->pout);
    for (int i = 0; t->blocks && i < t->nblocks; i++)
        tblock_free(&t->blocks[i]);
    free(t->blocks);
    t->blocks = NULL;
}

/* Scratch of one transformer call: four [b,n,c] token buffers, the
 * cross-attention keys and values [b,tokens,c], the feed-forward's [b,n,8c]
 * and its gated half [b,n,4c]. */
typedef struct tscratch {
    sdw_tensor hn, q, a, o, k2, v2, ff, gated;
} tscratch;

static int attn_block(const sdw_tblock *b, int heads, sdw_tensor *h, const sdw_tensor *ctx, tscratch *s,
                      sdw_error *e)
{
    int rc;
    if ((rc = sdw_op_layer_norm(h, &b->ln_w[0], &b->ln_b[0], 1e-5f, &s->hn, e)) ||
        (rc = sdw_linear_forward(&b->q1, &s->hn, &s->q, e)) || (rc = sdw_linear_forward(&b->k1, &s->hn, &s->a, e)) ||
        (rc = sdw_linear_forward(&b->v1, &s->hn, &s->o, e)) ||
        (rc = sdw_op_attention(&s->q, &s->a, &s->o, heads, 0, &s->hn, e)) ||
        (rc = sdw_linear_forward(&b->o1, &s->hn, &s->o, e)) || (rc = sdw_op_add(h, &s->o, h, e)))
        return rc;
    if ((rc = sdw_op_layer_norm(h, &b->ln_w[1], &b->ln_b[1], 1e-5f, &s->hn, e)) ||
        (rc = sdw_linear_forward(&b->q2, &s->hn, &s->q, e)) || (rc = sdw_linear_forward(&b->k2, ctx, &s->k2, e)) ||
        (rc = sdw_linear_forward(&b->v2, ctx, &s->v2, e)) ||
        (rc = sdw_op_attention(&s->q, &s->k2, &s->v2, heads, 0, &s->a, e)) ||
        (rc = sdw_linear_forward(&b->o2, &s->a, &s->o, e)) || (rc = sdw_op_add(h, &s->o, h, e)))
        return rc;
    if ((rc = sdw_op_layer_norm(h, &b->ln_w[2], &b->ln_b[2], 1e-5f, &s->hn, e)) ||
        (rc = sdw_linear_forward(&b->ff1, &s->hn, &s->ff, e)) || (rc = sdw_op_geglu(&s->ff, &s->gated, e)) ||
        (rc = sdw_linear_forward(&b->ff2, &s->gated, &s->o, e)) || (rc = sdw_op_add(h, &s->o, h, e)))
        return rc;
    return SDW_OK;
}

int sdw_transformer_forward(const sdw_transformer *t, const sdw_tensor *x, const sdw_tensor *ctx, sdw_tensor *y,
                            sdw_error *e)
{
    if (x->ndim != 4 || x->shape[1] != t->c || ctx->ndim != 3 || ctx->shape[0] != x->shape[0] ||
        ctx->shape[2] != t->ctx_dim) {
        char a[96], b[96];
        return sdw_fail(e, SDW_EINVAL, "transformer: input %s and context %s, expected %lld channels and width %lld",
                        sdw_shape_str(x->ndim, x->shape, a, sizeof a), sdw_shape_str(ctx->ndim, ctx->shape, b, sizeof b),
                        (long long)t->c, (long long)t->ctx_dim);
    }
    int64_t bs = x->shape[0], c = t->c, n = x->shape[2] * x->shape[3], tok = ctx->shape[1];
    int64_t sh[3] = {bs, n, c}, sk[3] = {bs, tok, c}, sf[3] = {bs, n, 8 * c}, sg[3] = {bs, n, 4 * c};
    int64_t chw[3] = {bs, c, n};
    tscratch s = {0};
    sdw_tensor gn = {0}, h = {0}, cv = {0}, yv = {0};
    int rc;
    if ((rc = sdw_tensor_new(&gn, x->be, 4, x->shape, e)) || (rc = sdw_tensor_new(&h, x->be, 3, sh, e)) ||
        (rc = sdw_tensor_new(&s.hn, x->be, 3, sh, e)) || (rc = sdw_tensor_new(&s.q, x->be, 3, sh, e)) ||
        (rc = sdw_tensor_new(&s.a, x->be, 3, sh, e)) || (rc = sdw_tensor_new(&s.o, x->be, 3, sh, e)) ||
        (rc = sdw_tensor_new(&s.k2, x->be, 3, sk, e)) || (rc = sdw_tensor_new(&s.v2, x->be, 3, sk, e)) ||
        (rc = sdw_tensor_new(&s.ff, x->be, 3, sf, e)) || (rc = sdw_tensor_new(&s.gated, x->be, 3, sg, e)) ||
        (rc = sdw_tensor_new(y, x->be, 4, x->shape, e)))
        goto out;
    /* GroupNorm in NCHW, then tokens [b, hw, c] for the blocks and back. */
    if ((rc = gnorm(&t->norm, x, 0, &gn, e)) || (rc = sdw_tensor_view(&cv, &gn, 3, chw, e)) ||
        (rc = sdw_op_transpose(&cv, &s.hn, e)) || (rc = sdw_linear_forward(&t->pin, &s.hn, &h, e)))
        goto out;
    for (int i = 0; i < t->nblocks; i++)
        if ((rc = attn_block(&t->blocks[i], t->heads, &h, ctx, &s, e)))
            goto out;
    if ((rc = sdw_linear_forward(&t->pout, &h, &s.hn, e)) || (rc = sdw_tensor_view(&yv, y, 3, chw, e)) ||
        (rc = sdw_op_transpose(&s.hn, &yv, e)) || (rc = sdw_op_add(y, x, y, e)))
        goto out;
out:
    if (rc)
        sdw_tensor_free(y);
    sdw_tensor *all[] = {&gn, &h, &s.hn, &s.q, &s.a, &s.o, &s.k2, &s.v2, &s.ff, &s.gated};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sdw_tensor_free(all[i]);
    return rc;
}
