#include "tensor/tensor.h"

#include "base/meminfo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/profile.h"

int64_t sdw_tensor_numel(const sdw_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

const char *sdw_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
    return buf;
}

static int set_shape(sdw_tensor *t, int ndim, const int64_t *shape, sdw_error *e)
{
    if (ndim < 1 || ndim > SDW_MAX_DIMS)
        return sdw_fail(e, SDW_EINVAL, "tensor rank %d outside 1..%d", ndim, SDW_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0 || shape[i] > INT64_MAX / 4 / n)
            return sdw_fail(e, SDW_EINVAL, "bad tensor dimension %lld", (long long)shape[i]);
        n *= shape[i];
        t->shape[i] = shape[i];
    }
    t->ndim = ndim;
    return SDW_OK;
}

int sdw_tensor_new(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape, sdw_error *e)
{
    memset(t, 0, sizeof *t);
    int rc = set_shape(t, ndim, shape, e);
    if (rc)
        return rc;
    t->be = be;
    rc = be->ops->alloc(be, (size_t)sdw_tensor_numel(t), &t->data, e);
    if (rc)
        return rc;
    t->owns = 1;
    return SDW_OK;
}

int sdw_tensor_from_host(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape,
                         const float *src, sdw_error *e)
{
    int rc = sdw_tensor_new(t, be, ndim, shape, e);
    if (rc)
        return rc;
    rc = be->ops->upload(be, t->data, src, (size_t)sdw_tensor_numel(t), e);
    if (rc)
        sdw_tensor_free(t);
    return rc;
}

/* The shape of a weight tensor whose memory the backend's weight op makes. */
static int weight_shape(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape, sdw_error *e)
{
    memset(t, 0, sizeof *t);
    t->be = be;
    return set_shape(t, ndim, shape, e);
}

int sdw_tensor_weight_f16(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape, const uint16_t *src,
                          sdw_error *e)
{
    int rc = weight_shape(t, be, ndim, shape, e);
    if (!rc && !(rc = be->ops->weight_f16(be, src, (size_t)sdw_tensor_numel(t), &t->data, &t->lowp, e)))
        t->owns = 1;
    return rc;
}

int sdw_tensor_upload(sdw_tensor *t, const float *src, sdw_error *e)
{
    if (t->lowp)
        return sdw_fail(e, SDW_EINVAL, "a half-precision weight cannot be overwritten with float32");
    return t->be->ops->upload(t->be, t->data, src, (size_t)sdw_tensor_numel(t), e);
}

int sdw_tensor_to_host(const sdw_tensor *t, float *dst, sdw_error *e)
{
    if (t->lowp)
        return sdw_fail(e, SDW_EINVAL, "a half-precision weight cannot be read back as float32");
    return t->be->ops->download(t->be, dst, t->data, (size_t)sdw_tensor_numel(t), e);
}

void sdw_tensor_free(sdw_tensor *t)
{
    if (t->owns && t->data)
        t->be->ops->free(t->be, t->data);
    memset(t, 0, sizeof *t);
}

int sdw_tensor_view(sdw_tensor *v, const sdw_tensor *t, int ndim, const int64_t *shape, sdw_error *e)
{
    sdw_tensor tmp = {0};
    int rc = set_shape(&tmp, ndim, shape, e);
    if (rc)
        return rc;
    if (sdw_tensor_numel(&tmp) != sdw_tensor_numel(t)) {
        char a[96], b[96];
        return sdw_fail(e, SDW_EINVAL, "cannot view %s as %s", sdw_shape_str(t->ndim, t->shape, a, sizeof a),
                        sdw_shape_str(ndim, shape, b, sizeof b));
    }
    tmp.be = t->be;
    tmp.data = t->data;
    tmp.owns = 0;
    tmp.lowp = t->lowp;
    *v = tmp;
    return SDW_OK;
}

struct sdw_graph {
    sdw_backend *be;
    void *impl;
};

int sdw_backend_has_graphs(const sdw_backend *be)
{
    return be->ops->graph_begin != NULL;
}

int sdw_graph_begin(sdw_backend *be, sdw_error *e)
{
    if (be->prof)
        return sdw_fail(e, SDW_EUNSUPPORTED, "a profile is attached: every op runs on its own, timed");
    if (!be->ops->graph_begin)
        return sdw_fail(e, SDW_EUNSUPPORTED, "the %s backend runs ops directly (no graphs)", be->ops->name);
    return be->ops->graph_begin(be, e);
}

int sdw_graph_end(sdw_backend *be, sdw_graph **g, sdw_error *e)
{
    sdw_graph *ng = malloc(sizeof *ng);
    if (!ng) {
        sdw_graph_abandon(be);
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    }
    int rc = be->ops->graph_end(be, 1, &ng->impl, e);
    if (rc) {
        free(ng);
        return rc;
    }
    ng->be = be;
    *g = ng;
    return SDW_OK;
}

void sdw_graph_abandon(sdw_backend *be)
{
    sdw_error ignored;
    void *none = NULL;
    if (be->ops->graph_end)
        be->ops->graph_end(be, 0, &none, &ignored);
}

int sdw_graph_launch(sdw_graph *g, sdw_error *e)
{
    return g->be->ops->graph_launch(g->be, g->impl, e);
}

void sdw_graph_free(sdw_graph *g)
{
    if (!g)
        return;
    g->be->ops->graph_free(g->be, g->impl);
    free(g);
}

void sdw_backend_destroy(sdw_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

size_t sdw_backend_memory(sdw_backend *be, size_t *peak)
{
    *peak = 0;
    return be->ops->memory ? be->ops->memory(be, peak) : 0;
}

size_t sdw_backend_available(sdw_backend *be)
{
    return be->ops->available ? be->ops->available(be) : sdw_meminfo_available();
}

void sdw_backend_trim(sdw_backend *be)
{
    if (be->ops->trim)
        be->ops->trim(be);
}

/* Returns the backend call's result; with a profile attached (profile.h)
 * the call is timed, into the row that the printf arguments after `flops`
 * name (evaluated only then). */
#define RUN(be, e, flops, call, ...)                                                                               \
    do {                                                                                                           \
        if (!(be)->prof)                                                                                           \
            return (call);                                                                                         \
        double t0_;                                                                                                \
        int rc_ = sdw_profile_enter((be), &t0_, (e));                                                              \
        if (!rc_)                                                                                                  \
            rc_ = (call);                                                                                          \
        return sdw_profile_leave((be), t0_, rc_, (flops), (e), __VA_ARGS__);                                       \
    } while (0)
#define LL(v) ((long long)(v))

static int64_t last_dim(const sdw_tensor *t)
{
    return t->shape[t->ndim - 1];
}

static int64_t rows_of(const sdw_tensor *t)
{
    return sdw_tensor_numel(t) / last_dim(t);
}

static int shape_error(sdw_error *e, const char *op, const char *what, const sdw_tensor *t)
{
    char s[96];
    return sdw_fail(e, SDW_EINVAL, "%s: %s has shape %s", op, what, sdw_shape_str(t->ndim, t->shape, s, sizeof s));
}

static int same_backend(const char *op, sdw_error *e, const sdw_tensor *a, const sdw_tensor *b)
{
    if (b && a->be != b->be)
        return sdw_fail(e, SDW_EINVAL, "%s: operands live on different backends", op);
    if (a->lowp || (b && b->lowp))
        return sdw_fail(e, SDW_EINVAL, "%s: a half-precision weight is not an operand here", op);
    return SDW_OK;
}

/* A weight may be half precision. */
static int same_backend_weight(const char *op, sdw_error *e, const sdw_tensor *x, const sdw_tensor *w)
{
    if (x->be != w->be)
        return sdw_fail(e, SDW_EINVAL, "%s: operands live on different backends", op);
    return SDW_OK;
}

int sdw_op_linear(const sdw_tensor *x, const sdw_tensor *w, const sdw_tensor *bias, sdw_tensor *y,
                  sdw_error *e)
{
    if (w->ndim != 2)
        return shape_error(e, "linear", "weight", w);
    int64_t n = w->shape[0], k = w->shape[1], m = rows_of(x);
    if (last_dim(x) != k)
        return shape_error(e, "linear", "input", x);
    if (bias && (bias->ndim != 1 || bias->shape[0] != n))
        return shape_error(e, "linear", "bias", bias);
    if (last_dim(y) != n || rows_of(y) != m)
        return shape_error(e, "linear", "output", y);
    if (same_backend_weight("linear", e, x, w) || same_backend("linear", e, x, bias) || same_backend("linear", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 2.0 * m * n * k,
        x->be->ops->linear(x->be, x->data, w->data, w->lowp, bias ? bias->data : NULL, y->data, m, n, k, e),
        "linear %lldx%lld * %lldx%lld%s", LL(m), LL(k), LL(n), LL(k), bias ? " + bias" : "");
}

int sdw_op_layer_norm(const sdw_tensor *x, const sdw_tensor *gamma, const sdw_tensor *beta, float eps,
                      sdw_tensor *y, sdw_error *e)
{
    int64_t n = last_dim(x);
    if (gamma->ndim != 1 || gamma->shape[0] != n)
        return shape_error(e, "layer_norm", "gamma", gamma);
    if (beta->ndim != 1 || beta->shape[0] != n)
        return shape_error(e, "layer_norm", "beta", beta);
    if (sdw_tensor_numel(y) != sdw_tensor_numel(x) || last_dim(y) != n)
        return shape_error(e, "layer_norm", "output", y);
    if (same_backend("layer_norm", e, x, gamma) || same_backend("layer_norm", e, x, beta) ||
        same_backend("layer_norm", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0, x->be->ops->layer_norm(x->be, x->data, gamma->data, beta->data, y->data, rows_of(x), n, eps, e),
        "layer_norm %lldx%lld", LL(rows_of(x)), LL(n));
}

int sdw_op_attention(const sdw_tensor *q, const sdw_tensor *k, const sdw_tensor *v, int heads, int causal,
                     sdw_tensor *out, sdw_error *e)
{
    if (q->ndim != 3)
        return shape_error(e, "attention", "q", q);
    int64_t b = q->shape[0], tq = q->shape[1], c = q->shape[2];
    if (heads <= 0 || c % heads)
        return sdw_fail(e, SDW_EINVAL, "attention: %lld channels do not split into %d heads", (long long)c, heads);
    if (k->ndim != 3 || k->shape[0] != b || k->shape[2] != c)
        return shape_error(e, "attention", "k", k);
    int64_t tk = k->shape[1];
    if (v->ndim != 3 || v->shape[0] != b || v->shape[1] != tk || v->shape[2] != c)
        return shape_error(e, "attention", "v", v);
    if (out->ndim != 3 || out->shape[0] != b || out->shape[1] != tq || out->shape[2] != c)
        return shape_error(e, "attention", "output", out);
    if (causal && tq != tk)
        return sdw_fail(e, SDW_EINVAL, "attention: a causal mask needs as many queries as keys");
    if (same_backend("attention", e, q, k) || same_backend("attention", e, q, v) ||
        same_backend("attention", e, q, out))
        return SDW_EINVAL;
    int64_t d = c / heads;
    RUN(q->be, e, 4.0 * b * heads * tq * tk * d,
        q->be->ops->attention(q->be, q->data, k->data, v->data, out->data, b, tq, tk, heads, d, 1.0f / sqrtf((float)d),
                              causal, e),
        "attention b%lld q%lld k%lld heads%d d%lld%s", LL(b), LL(tq), LL(tk), heads, LL(d), causal ? " causal" : "");
}

int sdw_op_act(const sdw_tensor *x, sdw_act act, sdw_tensor *y, sdw_error *e)
{
    if (sdw_tensor_numel(y) != sdw_tensor_numel(x))
        return shape_error(e, "activation", "output", y);
    if (same_backend("activation", e, x, y))
        return SDW_EINVAL;
    static const char *const names[] = {"silu", "gelu", "quick_gelu"};
    RUN(x->be, e, 0, x->be->ops->act(x->be, x->data, y->data, sdw_tensor_numel(x), act, e), "act %s %lld",
        (unsigned)act < 3 ? names[act] : "?", LL(sdw_tensor_numel(x)));
}

int sdw_op_add(const sdw_tensor *a, const sdw_tensor *b, sdw_tensor *y, sdw_error *e)
{
    int64_t n = sdw_tensor_numel(a);
    if (sdw_tensor_numel(b) != n)
        return shape_error(e, "add", "second operand", b);
    if (sdw_tensor_numel(y) != n)
        return shape_error(e, "add", "output", y);
    if (same_backend("add", e, a, b) || same_backend("add", e, a, y))
        return SDW_EINVAL;
    RUN(a->be, e, 0, a->be->ops->add(a->be, a->data, b->data, y->data, n, e), "add %lld", LL(n));
}

int sdw_op_embed(const sdw_tensor *table, const int32_t *ids, const sdw_tensor *pos, sdw_tensor *y,
                 sdw_error *e)
{
    if (table->ndim != 2)
        return shape_error(e, "embed", "table", table);
    int64_t vocab = table->shape[0], dim = table->shape[1];
    if (y->ndim != 3 || y->shape[2] != dim)
        return shape_error(e, "embed", "output", y);
    int64_t tpos = y->shape[1], rows = y->shape[0] * tpos;
    if (pos && (pos->ndim != 2 || pos->shape[0] < tpos || pos->shape[1] != dim))
        return shape_error(e, "embed", "position table", pos);
    for (int64_t r = 0; r < rows; r++)
        if (ids[r] < 0 || ids[r] >= vocab)
            return sdw_fail(e, SDW_EINVAL, "embed: token id %d outside the vocabulary of %lld", ids[r],
                            (long long)vocab);
    if (same_backend("embed", e, table, pos) || same_backend("embed", e, table, y))
        return SDW_EINVAL;
    RUN(table->be, e, 0,
        table->be->ops->embed(table->be, table->data, ids, pos ? pos->data : NULL, y->data, rows, dim, tpos, e),
        "embed %lldx%lld", LL(rows), LL(dim));
}

static int check_image(const char *op, const char *what, const sdw_tensor *t, sdw_error *e)
{
    return t->ndim == 4 ? SDW_OK : shape_error(e, op, what, t);
}

int sdw_op_conv2d(const sdw_tensor *x, const sdw_tensor *w, const sdw_tensor *bias, sdw_conv2d_geom g,
                  sdw_tensor *y, sdw_error *e)
{
    if (check_image("conv2d", "input", x, e) || check_image("conv2d", "weight", w, e) ||
        check_image("conv2d", "output", y, e))
        return SDW_EINVAL;
    int64_t b = x->shape[0], c = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t o = w->shape[0], kh = w->shape[2], kw = w->shape[3], oh = y->shape[2], ow = y->shape[3];
    if (w->shape[1] != c)
        return shape_error(e, "conv2d", "weight", w);
    if (bias && (bias->ndim != 1 || bias->shape[0] != o))
        return shape_error(e, "conv2d", "bias", bias);
    if (g.stride < 1 || g.pad_t < 0 || g.pad_l < 0)
        return sdw_fail(e, SDW_EINVAL, "conv2d: stride %d, padding %d,%d", g.stride, g.pad_t, g.pad_l);
    /* The bottom/right padding the output size implies. */
    int64_t pad_b = (oh - 1) * g.stride + kh - h - g.pad_t, pad_r = (ow - 1) * g.stride + kw - wd - g.pad_l;
    if (y->shape[0] != b || y->shape[1] != o || pad_b > g.pad_t + 1 || pad_r > g.pad_l + 1)
        return shape_error(e, "conv2d", "output", y);
    if (same_backend_weight("conv2d", e, x, w) || same_backend("conv2d", e, x, bias) || same_backend("conv2d", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 2.0 * b * o * oh * ow * c * kh * kw,
        x->be->ops->conv2d(x->be, x->data, w->data, w->lowp, bias ? bias->data : NULL, y->data, b, c, h, wd, o, kh, kw,
                           oh, ow, g.stride, g.pad_t, g.pad_l, e),
        "conv2d %lldx%lldx%lldx%lld * %lldx%lldx%lldx%lld stride %d", LL(b), LL(c), LL(h), LL(wd), LL(o), LL(c),
        LL(kh), LL(kw), g.stride);
}

int sdw_op_group_norm(const sdw_tensor *x, int groups, const sdw_tensor *gamma, const sdw_tensor *beta,
                      float eps, int silu, sdw_tensor *y, sdw_error *e)
{
    if (x->ndim < 2)
        return shape_error(e, "group_norm", "input", x);
    int64_t b = x->shape[0], c = x->shape[1], n = sdw_tensor_numel(x) / (b * c);
    if (groups <= 0 || c % groups)
        return sdw_fail(e, SDW_EINVAL, "group_norm: %lld channels do not split into %d groups", (long long)c,
                        groups);
    if (gamma->ndim != 1 || gamma->shape[0] != c)
        return shape_error(e, "group_norm", "gamma", gamma);
    if (beta->ndim != 1 || beta->shape[0] != c)
        return shape_error(e, "group_norm", "beta", beta);
    if (sdw_tensor_numel(y) != sdw_tensor_numel(x))
        return shape_error(e, "group_norm", "output", y);
    if (same_backend("group_norm", e, x, gamma) || same_backend("group_norm", e, x, beta) ||
        same_backend("group_norm", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0,
        x->be->ops->group_norm(x->be, x->data, gamma->data, beta->data, y->data, b, c, n, groups, eps, silu, e),
        "group_norm%s %lldx%lldx%lld in %d groups", silu ? "+silu" : "", LL(b), LL(c), LL(n), groups);
}

int sdw_op_upsample_nearest(const sdw_tensor *x, sdw_tensor *y, sdw_error *e)
{
    if (check_image("upsample", "input", x, e) || check_image("upsample", "output", y, e))
        return SDW_EINVAL;
    if (y->shape[0] != x->shape[0] || y->shape[1] != x->shape[1])
        return shape_error(e, "upsample", "output", y);
    if (same_backend("upsample", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0,
        x->be->ops->upsample_nearest(x->be, x->data, y->data, x->shape[0] * x->shape[1], x->shape[2], x->shape[3],
                                     y->shape[2], y->shape[3], e),
        "upsample %lldx%lldx%lldx%lld -> %lldx%lld", LL(x->shape[0]), LL(x->shape[1]), LL(x->shape[2]),
        LL(x->shape[3]), LL(y->shape[2]), LL(y->shape[3]));
}

int sdw_op_concat(const sdw_tensor *a, const sdw_tensor *c, sdw_tensor *y, sdw_error *e)
{
    if (a->ndim < 2 || c->ndim != a->ndim || c->shape[0] != a->shape[0])
        return shape_error(e, "concat", "second operand", c);
    for (int i = 2; i < a->ndim; i++)
        if (c->shape[i] != a->shape[i])
            return shape_error(e, "concat", "second operand", c);
    if (y->ndim != a->ndim || y->shape[0] != a->shape[0] || y->shape[1] != a->shape[1] + c->shape[1] ||
        sdw_tensor_numel(y) != sdw_tensor_numel(a) + sdw_tensor_numel(c))
        return shape_error(e, "concat", "output", y);
    if (same_backend("concat", e, a, c) || same_backend("concat", e, a, y))
        return SDW_EINVAL;
    int64_t b = a->shape[0];
    RUN(a->be, e, 0,
        a->be->ops->concat(a->be, a->data, c->data, y->data, b, sdw_tensor_numel(a) / b, sdw_tensor_numel(c) / b, e),
        "concat %lldx(%lld + %lld)", LL(b), LL(sdw_tensor_numel(a) / b), LL(sdw_tensor_numel(c) / b));
}

int sdw_op_transpose(const sdw_tensor *x, sdw_tensor *y, sdw_error *e)
{
    if (x->ndim != 3)
        return shape_error(e, "transpose", "input", x);
    if (y->ndim != 3 || y->shape[0] != x->shape[0] || y->shape[1] != x->shape[2] || y->shape[2] != x->shape[1])
        return shape_error(e, "transpose", "output", y);
    if (same_backend("transpose", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0, x->be->ops->transpose(x->be, x->data, y->data, x->shape[0], x->shape[1], x->shape[2], e),
        "transpose %lldx%lldx%lld", LL(x->shape[0]), LL(x->shape[1]), LL(x->shape[2]));
}

int sdw_op_geglu(const sdw_tensor *x, sdw_tensor *y, sdw_error *e)
{
    int64_t n2 = last_dim(x);
    if (n2 % 2)
        return shape_error(e, "geglu", "input", x);
    if (last_dim(y) != n2 / 2 || rows_of(y) != rows_of(x))
        return shape_error(e, "geglu", "output", y);
    if (same_backend("geglu", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0, x->be->ops->geglu(x->be, x->data, y->data, rows_of(x), n2 / 2, e), "geglu %lldx%lld",
        LL(rows_of(x)), LL(n2));
}

int sdw_op_add_channel(const sdw_tensor *x, const sdw_tensor *v, sdw_tensor *y, sdw_error *e)
{
    if (x->ndim < 2)
        return shape_error(e, "add_channel", "input", x);
    int64_t rows = x->shape[0] * x->shape[1];
    if (sdw_tensor_numel(v) != rows || v->shape[0] != x->shape[0])
        return shape_error(e, "add_channel", "vector", v);
    if (sdw_tensor_numel(y) != sdw_tensor_numel(x))
        return shape_error(e, "add_channel", "output", y);
    if (same_backend("add_channel", e, x, v) || same_backend("add_channel", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0, x->be->ops->add_rows(x->be, x->data, v->data, y->data, rows, sdw_tensor_numel(x) / rows, e),
        "add_channel %lldx%lld", LL(rows), LL(sdw_tensor_numel(x) / rows));
}

int sdw_op_scale(const sdw_tensor *x, float s, sdw_tensor *y, sdw_error *e)
{
    if (sdw_tensor_numel(y) != sdw_tensor_numel(x))
        return shape_error(e, "scale", "output", y);
    if (same_backend("scale", e, x, y))
        return SDW_EINVAL;
    RUN(x->be, e, 0, x->be->ops->scale(x->be, x->data, s, y->data, sdw_tensor_numel(x), e), "scale %lld",
        LL(sdw_tensor_numel(x)));
}

int sdw_op_gaussian(const sdw_tensor *moments, const sdw_tensor *noise, float s, sdw_tensor *y, sdw_error *e)
{
    if (moments->ndim < 2 || moments->shape[1] % 2)
        return shape_error(e, "gaussian", "moments", moments);
    int64_t b = moments->shape[0], n = sdw_tensor_numel(moments) / b / 2;
    if (y->ndim != moments->ndim || y->shape[0] != b || y->shape[1] * 2 != moments->shape[1] ||
        sdw_tensor_numel(y) != b * n)
        return shape_error(e, "gaussian", "output", y);
    if (noise && sdw_tensor_numel(noise) != b * n)
        return shape_error(e, "gaussian", "noise", noise);
    if (same_backend("gaussian", e, moments, noise) || same_backend("gaussian", e, moments, y))
        return SDW_EINVAL;
    RUN(moments->be, e, 0,
        moments->be->ops->gaussian(moments->be, moments->data, noise ? noise->data : NULL, s, y->data, b, n, e),
        "gaussian %lldx%lld%s", LL(b), LL(n), noise ? "" : " (mean)");
}
