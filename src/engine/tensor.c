#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

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

int sdw_tensor_to_host(const sdw_tensor *t, float *dst, sdw_error *e)
{
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
    *v = tmp;
    return SDW_OK;
}

void sdw_backend_destroy(sdw_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

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
    if (same_backend("linear", e, x, w) || same_backend("linear", e, x, bias) || same_backend("linear", e, x, y))
        return SDW_EINVAL;
    return x->be->ops->linear(x->be, x->data, w->data, bias ? bias->data : NULL, y->data, m, n, k, e);
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
    return x->be->ops->layer_norm(x->be, x->data, gamma->data, beta->data, y->data, rows_of(x), n, eps, e);
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
    return q->be->ops->attention(q->be, q->data, k->data, v->data, out->data, b, tq, tk, heads, d,
                                 1.0f / sqrtf((float)d), causal, e);
}

int sdw_op_act(const sdw_tensor *x, sdw_act act, sdw_tensor *y, sdw_error *e)
{
    if (sdw_tensor_numel(y) != sdw_tensor_numel(x))
        return shape_error(e, "activation", "output", y);
    if (same_backend("activation", e, x, y))
        return SDW_EINVAL;
    return x->be->ops->act(x->be, x->data, y->data, sdw_tensor_numel(x), act, e);
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
    return a->be->ops->add(a->be, a->data, b->data, y->data, n, e);
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
    return table->be->ops->embed(table->be, table->data, ids, pos ? pos->data : NULL, y->data, rows, dim, tpos, e);
}
