/* The UNet's recorded step (sdw_unet_forward: the first call with given
 * buffers runs op by op, the second records the step as a graph, later
 * calls replay it) on the CPU, through a test backend that wraps the CPU
 * backend and records the way CUDA's stream capture does: between
 * graph_begin and graph_end ops are stored, not run; a transfer to or from
 * the host fails, as a pageable copy fails a capture; memory freed while
 * recording stays reserved until the graph is freed, since replays write
 * it. Checks: every replayed step equals the op-by-op step bit for bit, on
 * fresh inputs each time; steps are replayed from the third on; new buffers
 * start over; a refused recording falls back to op-by-op steps with the
 * reason kept; releasing frees what the recording held; an LCM UNet's
 * guidance embedding (a host input like the timesteps) reaches replays; an
 * SDXL UNet's pooled text embeddings and time ids, new every step, are what
 * its replays read. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "fixture.h"
#include "model/model.h"
#include "model/unet.h"
#include "tap.h"

enum { OP_LINEAR, OP_LAYER_NORM, OP_ATTENTION, OP_ACT, OP_ADD, OP_CONV2D, OP_GROUP_NORM, OP_UPSAMPLE, OP_CONCAT,
       OP_TRANSPOSE, OP_GEGLU, OP_ADD_ROWS, OP_SCALE, OP_GAUSSIAN };

/* One recorded op: its kind and its arguments, as the CPU op takes them. */
typedef struct rec {
    int kind;
    const float *p[4];
    float *y;
    int64_t i[12];
    int k[3];
    float f;
} rec;

typedef struct graph {
    rec *ops;
    size_t nops;
    float **held; /* freed while recording: freed for real with the graph */
    size_t nheld;
} graph;

typedef struct rec_be {
    sdw_backend pub;
    sdw_backend *cpu;
    graph *cur;      /* the recording under way, or NULL */
    int refuse_end;  /* graph_end fails, as a capture that left a block live would */
    long live;       /* blocks allocated and not yet freed for real */
} rec_be;

static rec_be *rb(sdw_backend *be)
{
    return be->priv;
}

static int push(rec_be *r, rec x, sdw_error *e)
{
    graph *g = r->cur;
    rec *ops = realloc(g->ops, (g->nops + 1) * sizeof *ops);
    if (!ops)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    g->ops = ops;
    g->ops[g->nops++] = x;
    return SDW_OK;
}

static int w_alloc(sdw_backend *be, size_t n, float **p, sdw_error *e)
{
    rec_be *r = rb(be);
    int rc = r->cpu->ops->alloc(r->cpu, n, p, e);
    r->live += rc == 0;
    return rc;
}

static void w_free(sdw_backend *be, float *p)
{
    rec_be *r = rb(be);
    if (!p)
        return;
    if (r->cur) {
        float **h = realloc(r->cur->held, (r->cur->nheld + 1) * sizeof *h);
        if (h) {
            r->cur->held = h;
            r->cur->held[r->cur->nheld++] = p;
            return;
        }
        abort();
    }
    r->live--;
    r->cpu->ops->free(r->cpu, p);
}

static int no_transfer(rec_be *r, const char *what, sdw_error *e)
{
    return r->cur ? sdw_fail(e, SDW_EUNSUPPORTED, "%s while recording", what) : SDW_OK;
}

static int w_upload(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e)
{
    rec_be *r = rb(be);
    int rc = no_transfer(r, "upload", e);
    return rc ? rc : r->cpu->ops->upload(r->cpu, dst, src, n, e);
}

static int w_download(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e)
{
    rec_be *r = rb(be);
    int rc = no_transfer(r, "download", e);
    return rc ? rc : r->cpu->ops->download(r->cpu, dst, src, n, e);
}

static int w_weight_f16(sdw_backend *be, const uint16_t *src, size_t n, float **p, int *lowp, sdw_error *e)
{
    rec_be *r = rb(be);
    int rc = no_transfer(r, "weight upload", e);
    if (!rc && !(rc = r->cpu->ops->weight_f16(r->cpu, src, n, p, lowp, e)))
        r->live++;
    return rc;
}

static int w_embed(sdw_backend *be, const float *table, const int32_t *ids, const float *pos, float *y,
                   int64_t rows, int64_t dim, int64_t tpos, sdw_error *e)
{
    rec_be *r = rb(be);
    int rc = no_transfer(r, "embed (host ids)", e);
    return rc ? rc : r->cpu->ops->embed(r->cpu, table, ids, pos, y, rows, dim, tpos, e);
}

/* Runs one op on the CPU backend. */
static int run(sdw_backend *cpu, const rec *o, sdw_error *e)
{
    const sdw_backend_ops *c = cpu->ops;
    const float *const *p = o->p;
    const int64_t *i = o->i;
    switch (o->kind) {
    case OP_LINEAR: return c->linear(cpu, p[0], p[1], o->k[0], p[2], o->y, i[0], i[1], i[2], e);
    case OP_LAYER_NORM: return c->layer_norm(cpu, p[0], p[1], p[2], o->y, i[0], i[1], o->f, e);
    case OP_ATTENTION:
        return c->attention(cpu, p[0], p[1], p[2], o->y, i[0], i[1], i[2], i[3], i[4], o->f, o->k[0], e);
    case OP_ACT: return c->act(cpu, p[0], o->y, i[0], (sdw_act)o->k[0], e);
    case OP_ADD: return c->add(cpu, p[0], p[1], o->y, i[0], e);
    case OP_CONV2D:
        return c->conv2d(cpu, p[0], p[1], o->k[0], p[2], o->y, i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7], i[8],
                         (int)i[9], (int)i[10], (int)i[11], e);
    case OP_GROUP_NORM: return c->group_norm(cpu, p[0], p[1], p[2], o->y, i[0], i[1], i[2], i[3], o->f, o->k[0], e);
    case OP_UPSAMPLE: return c->upsample_nearest(cpu, p[0], o->y, i[0], i[1], i[2], i[3], i[4], e);
    case OP_CONCAT: return c->concat(cpu, p[0], p[1], o->y, i[0], i[1], i[2], e);
    case OP_TRANSPOSE: return c->transpose(cpu, p[0], o->y, i[0], i[1], i[2], e);
    case OP_GEGLU: return c->geglu(cpu, p[0], o->y, i[0], i[1], e);
    case OP_ADD_ROWS: return c->add_rows(cpu, p[0], p[1], o->y, i[0], i[1], e);
    case OP_SCALE: return c->scale(cpu, p[0], o->f, o->y, i[0], e);
    case OP_GAUSSIAN: return c->gaussian(cpu, p[0], p[1], o->f, o->y, i[0], i[1], e);
    }
    return sdw_fail(e, SDW_EINVAL, "unknown recorded op %d", o->kind);
}

/* Records o while recording, runs it otherwise. */
static int op(sdw_backend *be, rec o, sdw_error *e)
{
    rec_be *r = rb(be);
    return r->cur ? push(r, o, e) : run(r->cpu, &o, e);
}

static int w_linear(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                    int64_t m, int64_t n, int64_t k, sdw_error *e)
{
    return op(be, (rec){OP_LINEAR, {x, w, bias}, y, {m, n, k}, {w_lowp}, 0}, e);
}

static int w_layer_norm(sdw_backend *be, const float *x, const float *g, const float *b, float *y, int64_t rows,
                        int64_t n, float eps, sdw_error *e)
{
    return op(be, (rec){OP_LAYER_NORM, {x, g, b}, y, {rows, n}, {0}, eps}, e);
}

static int w_attention(sdw_backend *be, const float *q, const float *k, const float *v, float *out, int64_t b,
                       int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal, sdw_error *e)
{
    return op(be, (rec){OP_ATTENTION, {q, k, v}, out, {b, tq, tk, heads, d}, {causal}, scale}, e);
}

static int w_act(sdw_backend *be, const float *x, float *y, int64_t n, sdw_act act, sdw_error *e)
{
    return op(be, (rec){OP_ACT, {x}, y, {n}, {(int)act}, 0}, e);
}

static int w_add(sdw_backend *be, const float *a, const float *b, float *y, int64_t n, sdw_error *e)
{
    return op(be, (rec){OP_ADD, {a, b}, y, {n}, {0}, 0}, e);
}

static int w_conv2d(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                    int64_t b, int64_t c, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw, int64_t oh,
                    int64_t ow, int stride, int pad_t, int pad_l, sdw_error *e)
{
    return op(be, (rec){OP_CONV2D, {x, w, bias}, y, {b, c, h, wd, o, kh, kw, oh, ow, stride, pad_t, pad_l}, {w_lowp}, 0},
              e);
}

static int w_group_norm(sdw_backend *be, const float *x, const float *g, const float *bt, float *y, int64_t b,
                        int64_t c, int64_t n, int64_t groups, float eps, int silu, sdw_error *e)
{
    return op(be, (rec){OP_GROUP_NORM, {x, g, bt}, y, {b, c, n, groups}, {silu}, eps}, e);
}

static int w_upsample(sdw_backend *be, const float *x, float *y, int64_t bc, int64_t h, int64_t w, int64_t oh,
                      int64_t ow, sdw_error *e)
{
    return op(be, (rec){OP_UPSAMPLE, {x}, y, {bc, h, w, oh, ow}, {0}, 0}, e);
}

static int w_concat(sdw_backend *be, const float *a, const float *c, float *y, int64_t b, int64_t na, int64_t nc,
                    sdw_error *e)
{
    return op(be, (rec){OP_CONCAT, {a, c}, y, {b, na, nc}, {0}, 0}, e);
}

static int w_transpose(sdw_backend *be, const float *x, float *y, int64_t b, int64_t m, int64_t n, sdw_error *e)
{
    return op(be, (rec){OP_TRANSPOSE, {x}, y, {b, m, n}, {0}, 0}, e);
}

static int w_geglu(sdw_backend *be, const float *x, float *y, int64_t rows, int64_t n, sdw_error *e)
{
    return op(be, (rec){OP_GEGLU, {x}, y, {rows, n}, {0}, 0}, e);
}

static int w_add_rows(sdw_backend *be, const float *x, const float *v, float *y, int64_t rows, int64_t n,
                      sdw_error *e)
{
    return op(be, (rec){OP_ADD_ROWS, {x, v}, y, {rows, n}, {0}, 0}, e);
}

static int w_scale(sdw_backend *be, const float *x, float s, float *y, int64_t n, sdw_error *e)
{
    return op(be, (rec){OP_SCALE, {x}, y, {n}, {0}, s}, e);
}

static int w_gaussian(sdw_backend *be, const float *m, const float *noise, float s, float *y, int64_t b, int64_t n,
                      sdw_error *e)
{
    return op(be, (rec){OP_GAUSSIAN, {m, noise}, y, {b, n}, {0}, s}, e);
}

static int w_graph_begin(sdw_backend *be, sdw_error *e)
{
    rec_be *r = rb(be);
    if (r->cur)
        return sdw_fail(e, SDW_EINVAL, "already recording");
    if (!(r->cur = calloc(1, sizeof *r->cur)))
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    return SDW_OK;
}

static void w_graph_free(sdw_backend *be, void *gv)
{
    rec_be *r = rb(be);
    graph *g = gv;
    for (size_t i = 0; i < g->nheld; i++) {
        r->live--;
        r->cpu->ops->free(r->cpu, g->held[i]);
    }
    free(g->held);
    free(g->ops);
    free(g);
}

static int w_graph_end(sdw_backend *be, int keep, void **out, sdw_error *e)
{
    rec_be *r = rb(be);
    graph *g = r->cur;
    r->cur = NULL;
    if (!g)
        return sdw_fail(e, SDW_EINVAL, "not recording");
    if (keep && r->refuse_end) {
        w_graph_free(be, g);
        return sdw_fail(e, SDW_EUNSUPPORTED, "test backend refuses this recording");
    }
    if (!keep) {
        w_graph_free(be, g);
        return SDW_OK;
    }
    *out = g;
    return SDW_OK;
}

static int w_graph_launch(sdw_backend *be, void *gv, sdw_error *e)
{
    graph *g = gv;
    int rc = SDW_OK;
    for (size_t i = 0; !rc && i < g->nops; i++)
        rc = run(rb(be)->cpu, &g->ops[i], e);
    return rc;
}

static void w_destroy(sdw_backend *be)
{
    rec_be *r = rb(be);
    sdw_backend_destroy(r->cpu);
    free(r);
}

static const sdw_backend_ops rec_ops = {
    .name = "recording-cpu",
    .alloc = w_alloc,
    .free = w_free,
    .upload = w_upload,
    .download = w_download,
    .weight_f16 = w_weight_f16,
    .linear = w_linear,
    .layer_norm = w_layer_norm,
    .attention = w_attention,
    .act = w_act,
    .add = w_add,
    .embed = w_embed,
    .conv2d = w_conv2d,
    .group_norm = w_group_norm,
    .upsample_nearest = w_upsample,
    .concat = w_concat,
    .transpose = w_transpose,
    .geglu = w_geglu,
    .add_rows = w_add_rows,
    .scale = w_scale,
    .gaussian = w_gaussian,
    .graph_begin = w_graph_begin,
    .graph_end = w_graph_end,
    .graph_launch = w_graph_launch,
    .graph_free = w_graph_free,
    .destroy = w_destroy,
};

static sdw_backend *rec_backend(void)
{
    rec_be *r = calloc(1, sizeof *r);
    sdw_error e;
    if (!r || sdw_backend_cpu(&r->cpu, &e))
        abort();
    r->pub.ops = &rec_ops;
    r->pub.priv = r;
    return &r->pub;
}

static sdw_unet *load(sdw_backend *be, const sdw_model *m)
{
    sdw_unet_config cfg;
    sdw_unet *u = NULL;
    sdw_error e;
    if (sdw_unet_config_parse(&cfg, m->unet_config, &e) ||
        sdw_unet_load(&u, be, &cfg, &m->unet, SDW_LAYOUT_DIFFUSERS, &e)) {
        tap_diag("%s", e.msg);
        return NULL;
    }
    return u;
}

#define B 2
#define C 4
#define H 8
#define W 8
#define T 7

/* Step `step`'s inputs: latents, timesteps and text states that differ from
 * step to step. */
static void inputs(int step, int ctx_dim, float *lat, float ts[B], float *ctx)
{
    for (int i = 0; i < B * C * H * W; i++)
        lat[i] = sinf(0.37f * (float)i + (float)step);
    for (int i = 0; i < B * T * ctx_dim; i++)
        ctx[i] = cosf(0.11f * (float)i - 0.5f * (float)step);
    ts[0] = 950.0f - 97.0f * (float)step;
    ts[1] = ts[0];
}

#define POOLED_MAX 64

/* Runs `steps` steps through u on be with one set of buffers, each on fresh
 * inputs; outputs into out[step]. pooled > 0: a text_time UNet's pooled
 * embedding width, which gets one, and time ids, new every step; a UNet with
 * time_cond_proj_dim gets a fresh guidance embedding every step. */
static int steps_on(sdw_backend *be, sdw_unet *u, int ctx_dim, int pooled, int steps, float **out, sdw_error *e)
{
    int tcd = sdw_unet_config_of(u)->time_cond_proj_dim;
    float tcond[B * 64];
    if (tcd > 64)
        return sdw_fail(e, SDW_EINVAL, "time_cond_proj_dim %d: the test takes up to 64", tcd);
    int64_t ls[4] = {B, C, H, W}, cs[3] = {B, T, ctx_dim}, ps[2] = {B, pooled};
    float lat[B * C * H * W], ts[B], *ctx = malloc(sizeof *ctx * B * T * (size_t)ctx_dim);
    float pv[B * POOLED_MAX], ids[B * 6];
    sdw_tensor x = {0}, c = {0}, y = {0}, p = {0};
    sdw_unet_cond cond = {.text_embeds = pooled ? &p : NULL, .time_ids = pooled ? ids : NULL,
                          .timestep_cond = tcd ? tcond : NULL};
    int rc = !ctx || pooled > POOLED_MAX ? sdw_fail(e, SDW_ENOMEM, "out of memory") : SDW_OK;
    if (!rc && !(rc = sdw_tensor_new(&x, be, 4, ls, e)) && !(rc = sdw_tensor_new(&c, be, 3, cs, e)))
        rc = sdw_tensor_new(&y, be, 4, ls, e);
    if (!rc && pooled)
        rc = sdw_tensor_new(&p, be, 2, ps, e);
    for (int s = 0; !rc && s < steps; s++) {
        inputs(s, ctx_dim, lat, ts, ctx);
        for (int i = 0; i < B * tcd; i++)
            tcond[i] = sinf(0.7f * (float)i + 1.3f * (float)s);
        for (int i = 0; i < B * pooled; i++)
            pv[i] = sinf(0.7f * (float)i - (float)s);
        for (int i = 0; i < B * 6; i++)
            ids[i] = (float)(64 * (i % 6 + 1) + 8 * s);
        if (!(rc = be->ops->upload(be, x.data, lat, sizeof lat / sizeof *lat, e)) &&
            !(rc = be->ops->upload(be, c.data, ctx, (size_t)(B * T * ctx_dim), e)) &&
            !(rc = pooled ? be->ops->upload(be, p.data, pv, (size_t)(B * pooled), e) : SDW_OK) &&
            !(rc = sdw_unet_forward(u, &x, ts, &c, pooled || tcd ? &cond : NULL, &y, e)))
            rc = sdw_tensor_to_host(&y, out[s], e);
    }
    sdw_tensor_free(&x), sdw_tensor_free(&c), sdw_tensor_free(&y), sdw_tensor_free(&p);
    free(ctx);
    return rc;
}

static int same(float **a, float **b, int steps)
{
    for (int s = 0; s < steps; s++)
        if (memcmp(a[s], b[s], sizeof(float) * B * C * H * W))
            return 0;
    return 1;
}

/* SDXL: the text_time UNet recorded and replayed on fresh conditioning. */
static void check_sdxl(sdw_backend *cpu, sdw_backend *rec)
{
    sdw_error e;
    sdw_model m;
    if (!tap_ok(sdw_model_open(&m, tap_fixture("models/tiny-sdxl"), &e) == 0, "tiny-sdxl opens"))
        return;
    sdw_unet *ucpu = load(cpu, &m), *u = load(rec, &m);
    enum { N = 4 };
    float *want[N], *got[N];
    for (int s = 0; s < N; s++)
        want[s] = malloc(sizeof(float) * B * C * H * W), got[s] = malloc(sizeof(float) * B * C * H * W);
    if (tap_ok(ucpu && u, "tiny-sdxl's UNet loads on both")) {
        const sdw_unet_config *c = sdw_unet_config_of(u);
        int pooled = c->add_in - 6 * c->add_time_dim;
        int rc = steps_on(cpu, ucpu, c->cross_attention_dim, pooled, N, want, &e);
        if (!rc)
            rc = steps_on(rec, u, c->cross_attention_dim, pooled, N, got, &e);
        tap_ok(rc == 0 && same(got, want, N) && sdw_unet_graph_replays(u) == N - 2,
               "tiny-sdxl: replayed steps read each step's pooled embeddings and time ids, equal bit for bit "
               "(%ld replays)%s%s %s", sdw_unet_graph_replays(u), rc ? ": " : "", rc ? e.msg : "",
               sdw_unet_graph_note(u));
    }
    for (int s = 0; s < N; s++)
        free(want[s]), free(got[s]);
    sdw_unet_free(u);
    sdw_unet_free(ucpu);
    sdw_model_close(&m);
}

int main(void)
{
    sdw_error e;
    sdw_model m;
    if (!tap_ok(sdw_model_open(&m, tap_fixture("models/tiny-a"), &e) == 0, "tiny-a opens"))
        return tap_diag("%s", e.msg), tap_done();
    sdw_backend *cpu = NULL, *rec = rec_backend();
    sdw_backend_cpu(&cpu, &e);
    sdw_unet *ucpu = load(cpu, &m), *u = load(rec, &m);
    if (!tap_ok(ucpu && u, "the UNet loads on the cpu and on the recording test backend"))
        return tap_done();
    int dim = sdw_unet_config_of(u)->cross_attention_dim;
    enum { N = 5 };
    float *want[N], *got[N];
    for (int s = 0; s < N; s++)
        want[s] = malloc(sizeof(float) * B * C * H * W), got[s] = malloc(sizeof(float) * B * C * H * W);

    int rc = steps_on(cpu, ucpu, dim, 0, N, want, &e);
    tap_ok(rc == 0 && sdw_unet_graph_replays(ucpu) == 0, "cpu: %d steps op by op, none replayed%s%s", N,
           rc ? ": " : "", rc ? e.msg : "");
    long live0 = rb(rec)->live;
    rc = steps_on(rec, u, dim, 0, N, got, &e);
    tap_ok(rc == 0 && same(got, want, N), "recorded and replayed steps equal op-by-op ones bit for bit%s%s",
           rc ? ": " : "", rc ? e.msg : "");
    tap_ok(sdw_unet_graph_replays(u) == N - 2 && !sdw_unet_graph_note(u)[0],
           "step 1 op by op, step 2 recorded, steps 3-%d replayed (%ld)", N, sdw_unet_graph_replays(u));
    tap_ok(rb(rec)->live > live0, "the recording holds the memory of its temporaries (%ld blocks)",
           rb(rec)->live - live0);
    sdw_unet_release(u);
    tap_ok(rb(rec)->live == live0, "released, everything it held is freed (%ld blocks over)", rb(rec)->live - live0);

    /* New buffers (steps_on allocates afresh): the old recording must not
     * be replayed on them. */
    rc = steps_on(rec, u, dim, 0, 3, got, &e);
    tap_ok(rc == 0 && same(got, want, 3) && sdw_unet_graph_replays(u) == N - 2 + 1,
           "new buffers: op by op, recorded, then replayed (%ld replays in all)", sdw_unet_graph_replays(u));
    rc = steps_on(rec, u, dim, 0, 3, got, &e);
    tap_ok(rc == 0 && same(got, want, 3), "and again without a release in between, still equal");

    sdw_unet_release(u);
    rb(rec)->refuse_end = 1;
    long before = sdw_unet_graph_replays(u);
    rc = steps_on(rec, u, dim, 0, N, got, &e);
    tap_ok(rc == 0 && same(got, want, N) && sdw_unet_graph_replays(u) == before,
           "a refused recording: every step op by op, results unchanged");
    tap_ok(strstr(sdw_unet_graph_note(u), "refuses") != NULL, "and the reason is kept: %s", sdw_unet_graph_note(u));
    sdw_unet_release(u);
    tap_ok(!sdw_unet_graph_note(u)[0] && rb(rec)->live == live0, "release clears the reason and frees everything");

    sdw_unet_free(u);
    sdw_unet_free(ucpu);
    tap_ok(rb(rec)->live == 0, "with the UNet freed, no block is left (%ld)", rb(rec)->live);

    sdw_model lm;
    if (tap_ok(sdw_model_open(&lm, tap_fixture("models/tiny-lcm"), &e) == 0, "tiny-lcm opens")) {
        ucpu = load(cpu, &lm), u = load(rec, &lm);
        rb(rec)->refuse_end = 0;
        rc = !ucpu || !u ? SDW_EINVAL : steps_on(cpu, ucpu, dim, 0, N, want, &e);
        if (!rc)
            rc = steps_on(rec, u, dim, 0, N, got, &e);
        tap_ok(rc == 0 && same(got, want, N) && sdw_unet_graph_replays(u) == N - 2,
               "LCM UNet: replays read each step's guidance embedding, equal to op-by-op steps (%ld replays)%s%s",
               u ? sdw_unet_graph_replays(u) : 0L, rc ? ": " : "", rc ? e.msg : "");
        sdw_unet_free(u);
        sdw_unet_free(ucpu);
        sdw_model_close(&lm);
    }
    for (int s = 0; s < N; s++)
        free(want[s]), free(got[s]);
    rb(rec)->refuse_end = 0;
    check_sdxl(cpu, rec);
    sdw_backend_destroy(rec);
    sdw_backend_destroy(cpu);
    sdw_model_close(&m);
    return tap_done();
}
