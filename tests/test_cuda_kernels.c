/* Every op of the CUDA backend against the CPU backend, on fresh random
 * inputs, in each precision: float32 within 1e-5 relative error (max abs
 * difference over max abs reference), fp16 and bf16 within 1e-2, where the
 * device stores inputs and outputs in half or bfloat16 while the CPU keeps
 * the float32 inputs: the bound covers that rounding too (except bf16
 * GroupNorm's, which needs 1.5e-2: see group_norm_tol). Device
 * outputs are poisoned (all bits set: NaN) before every op so that one that
 * skips elements cannot pass, and NaN anywhere fails. Without a CUDA device
 * the test checks that the backend refuses to start with a clear error and
 * skips the rest. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/half.h"
#include "fixture.h"
#include "kernels.h"
#include "tap.h"
#include "tensor/tensor.h"

#define NPREC 3
static const char *prec_name[NPREC] = {"fp32", "fp16", "bf16"};
static const double prec_tol[NPREC] = {1e-5, 1e-2, 1e-2};
/* Bytes per element of a tensor in each precision's storage type. */
static const size_t prec_bytes[NPREC] = {4, 2, 2};

static sdw_backend *cpu, *gpu[NPREC];
static uint64_t lcg = 0x9e3779b97f4a7c15ull;

static float *rand_buf(size_t n, float scale, float offset)
{
    float *p = malloc(n * sizeof *p);
    if (!p)
        abort();
    for (size_t i = 0; i < n; i++) {
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(lcg >> 11) / 9007199254740992.0 * 2.0 - 1.0) * scale + offset;
    }
    return p;
}

static int64_t numel(int nd, const int64_t *s)
{
    int64_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= s[i];
    return n;
}

/* An input on the CPU and on every device backend, from the same host data. */
typedef struct arg {
    sdw_tensor t[1 + NPREC];
} arg;

static int ok_so_far;

static void arg_host(arg *a, int nd, const int64_t *s, const float *host)
{
    sdw_error e;
    memset(a, 0, sizeof *a);
    if (sdw_tensor_from_host(&a->t[0], cpu, nd, s, host, &e)) {
        tap_diag("cpu upload: %s", e.msg);
        ok_so_far = 0;
    }
    for (int p = 0; p < NPREC; p++)
        if (sdw_tensor_from_host(&a->t[1 + p], gpu[p], nd, s, host, &e)) {
            tap_diag("%s upload: %s", prec_name[p], e.msg);
            ok_so_far = 0;
        }
}

/* A weight given as IEEE halves, as an f16 model file has it: the CPU
 * backend keeps the halves (and its products take the w_lowp path), the
 * devices store it like any tensor. */
static void arg_f16(arg *a, int nd, const int64_t *s, float scale)
{
    size_t n = (size_t)numel(nd, s);
    float *h = rand_buf(n, scale, 0);
    uint16_t *halves = malloc(n * sizeof *halves);
    if (!halves)
        abort();
    for (size_t i = 0; i < n; i++)
        halves[i] = sdw_f32_to_f16(h[i]);
    free(h);
    sdw_error e;
    memset(a, 0, sizeof *a);
    for (int i = 0; i < 1 + NPREC; i++)
        if (sdw_tensor_weight_f16(&a->t[i], i ? gpu[i - 1] : cpu, nd, s, halves, &e)) {
            tap_diag("%s f16 weight: %s", i ? prec_name[i - 1] : "cpu", e.msg);
            ok_so_far = 0;
        } else if (i && a->t[i].lowp) {
            tap_diag("%s keeps an f16 weight in another format than its tensors'", prec_name[i - 1]);
            ok_so_far = 0;
        }
    if (!a->t[0].lowp) {
        tap_diag("the CPU backend no longer keeps f16 weights as halves: the w_lowp path is not compared");
        ok_so_far = 0;
    }
    free(halves);
}

static void arg_rand(arg *a, int nd, const int64_t *s, float scale, float offset)
{
    float *h = rand_buf((size_t)numel(nd, s), scale, offset);
    arg_host(a, nd, s, h);
    free(h);
}

/* An output: uninitialised on the CPU, NaN-poisoned on the devices. */
static void arg_out(arg *a, int nd, const int64_t *s)
{
    sdw_error e;
    memset(a, 0, sizeof *a);
    if (sdw_tensor_new(&a->t[0], cpu, nd, s, &e))
        ok_so_far = 0;
    for (int p = 0; p < NPREC; p++) {
        if (sdw_tensor_new(&a->t[1 + p], gpu[p], nd, s, &e)) {
            tap_diag("%s alloc: %s", prec_name[p], e.msg);
            ok_so_far = 0;
            continue;
        }
        /* The backend's stream does not synchronise with the legacy stream. */
        if (cudaDeviceSynchronize() != cudaSuccess ||
            cudaMemset(a->t[1 + p].data, 0xff, (size_t)numel(nd, s) * prec_bytes[p]) != cudaSuccess ||
            cudaDeviceSynchronize() != cudaSuccess)
            ok_so_far = 0;
    }
}

static void arg_free(arg *a)
{
    for (int i = 0; i < 1 + NPREC; i++)
        sdw_tensor_free(&a->t[i]);
}

/* Runs one op on the CPU and each device backend (op receives the slot:
 * 0 = CPU, 1.. = devices) and compares y. */
typedef int (*op_fn)(int slot, void *ctx, sdw_error *e);

/* check with bounds of its own per precision, for an op whose inputs'
 * rounding to the storage type alone moves the result past prec_tol. */
static void check_tol(const char *what, op_fn op, void *ctx, arg *y, const double tol[NPREC])
{
    sdw_error e;
    if (!ok_so_far) {
        tap_ok(0, "%s: setup failed", what);
        ok_so_far = 1;
        return;
    }
    if (op(0, ctx, &e)) {
        tap_ok(0, "%s: cpu: %s", what, e.msg);
        return;
    }
    size_t n = (size_t)sdw_tensor_numel(&y->t[0]);
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    if (!want || !got || sdw_tensor_to_host(&y->t[0], want, &e))
        abort();
    for (int p = 0; p < NPREC; p++) {
        int rc = op(1 + p, ctx, &e);
        if (!rc)
            rc = sdw_tensor_to_host(&y->t[1 + p], got, &e);
        double r = rc ? INFINITY : max_rel_err(got, want, n);
        tap_ok(!rc && r <= tol[p], "%s %s vs CPU: rel err %.2e%s%s", what, prec_name[p], r, rc ? ": " : "",
               rc ? e.msg : "");
    }
    free(want);
    free(got);
}

static void check(const char *what, op_fn op, void *ctx, arg *y)
{
    check_tol(what, op, ctx, y, prec_tol);
}

/* GroupNorm's inputs here sit 1.5 spreads off zero, so the normalisation
 * scales their rounding up: computed exactly in float64 (torch) from inputs
 * and output rounded to bfloat16, these cases land at 0.96e-2 to 1.06e-2,
 * bf16's floor for them, above prec_tol. fp16 (3 more bits) stays within 1e-2. */
static const double group_norm_tol[NPREC] = {1e-5, 1e-2, 1.5e-2};

typedef struct ctx {
    arg *x, *w, *b, *y, *z;
    const int32_t *ids;
    const float *host;
    int i0, i1, i2;
    float f;
    sdw_conv2d_geom g;
} ctx;

#define T(a, s) ((a) ? &(a)->t[s] : NULL)

static int do_linear(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_linear(T(c->x, s), T(c->w, s), T(c->b, s), T(c->y, s), e);
}

static void check_linear(int64_t m, int64_t n, int64_t k, int bias)
{
    arg x, w, b, y;
    int64_t xs[2] = {m, k}, ws[2] = {n, k}, ys[2] = {m, n};
    arg_rand(&x, 2, xs, 1, 0);
    arg_rand(&w, 2, ws, 0.05f, 0);
    arg_rand(&b, 1, &n, 1, 0);
    arg_out(&y, 2, ys);
    ctx c = {.x = &x, .w = &w, .b = bias ? &b : NULL, .y = &y};
    char what[96];
    snprintf(what, sizeof what, "linear %lldx%lld * %lldx%lld%s", (long long)m, (long long)k, (long long)n,
             (long long)k, bias ? " + bias" : "");
    check(what, do_linear, &c, &y);
    arg_free(&x), arg_free(&w), arg_free(&b), arg_free(&y);
}

/* Linear with its weight stored as a model loader stores it from halves. */
static void check_linear_w(int64_t m, int64_t n, int64_t k)
{
    arg x, w, b, y;
    int64_t xs[2] = {m, k}, ws[2] = {n, k}, ys[2] = {m, n};
    arg_rand(&x, 2, xs, 1, 0);
    arg_f16(&w, 2, ws, 0.05f);
    arg_rand(&b, 1, &n, 1, 0);
    arg_out(&y, 2, ys);
    ctx c = {.x = &x, .w = &w, .b = &b, .y = &y};
    char what[96];
    snprintf(what, sizeof what, "linear %lldx%lld * %lldx%lld (f16 weight) + bias", (long long)m, (long long)k,
             (long long)n, (long long)k);
    check(what, do_linear, &c, &y);
    arg_free(&x), arg_free(&w), arg_free(&b), arg_free(&y);
}

/* A weight rewritten after a product read it, by an upload and then by an
 * op writing into it: the next product must use the new values. */
static int do_rewrite(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    int64_t n = sdw_tensor_numel(&c->w->t[s]);
    int rc = sdw_op_linear(T(c->x, s), T(c->w, s), NULL, T(c->y, s), e);
    if (!rc)
        rc = c->w->t[s].be->ops->upload(c->w->t[s].be, c->w->t[s].data, c->host, (size_t)n, e);
    if (!rc)
        rc = sdw_op_linear(T(c->x, s), T(c->w, s), NULL, T(c->y, s), e);
    if (!rc)
        rc = sdw_op_scale(T(c->w, s), -3.0f, T(c->w, s), e);
    return rc ? rc : sdw_op_linear(T(c->x, s), T(c->w, s), NULL, T(c->y, s), e);
}

static void check_rewritten_weight(void)
{
    arg x, w, y;
    int64_t xs[2] = {64, 96}, ws[2] = {48, 96}, ys[2] = {64, 48};
    arg_rand(&x, 2, xs, 1, 0);
    arg_rand(&w, 2, ws, 0.05f, 0);
    arg_out(&y, 2, ys);
    float *fresh = rand_buf((size_t)numel(2, ws), 0.05f, 0);
    ctx c = {.x = &x, .w = &w, .y = &y, .host = fresh};
    check("linear after its weight was re-uploaded and scaled in place", do_rewrite, &c, &y);
    arg_free(&x), arg_free(&w), arg_free(&y);
    free(fresh);
}

static int do_layer_norm(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_layer_norm(T(c->x, s), T(c->w, s), T(c->b, s), 1e-5f, T(c->y, s), e);
}

static void check_layer_norm(int64_t rows, int64_t n)
{
    arg x, g, b, y;
    int64_t s[2] = {rows, n};
    arg_rand(&x, 2, s, 3, 4);
    arg_rand(&g, 1, &n, 1, 1);
    arg_rand(&b, 1, &n, 1, 0);
    arg_out(&y, 2, s);
    ctx c = {.x = &x, .w = &g, .b = &b, .y = &y};
    char what[64];
    snprintf(what, sizeof what, "layer_norm %lldx%lld", (long long)rows, (long long)n);
    check(what, do_layer_norm, &c, &y);
    arg_free(&x), arg_free(&g), arg_free(&b), arg_free(&y);
}

static int do_attention(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_attention(T(c->x, s), T(c->w, s), T(c->b, s), c->i0, c->i1, T(c->y, s), e);
}

/* Fresh q, k, v and a poisoned output for one attention case, as ctx. */
static ctx attention_args(arg *q, arg *k, arg *v, arg *o, int64_t b, int64_t tq, int64_t tk, int heads, int64_t d,
                          int causal)
{
    int64_t qs[3] = {b, tq, heads * d}, ks[3] = {b, tk, heads * d};
    arg_rand(q, 3, qs, 2, 0);
    arg_rand(k, 3, ks, 2, 0);
    arg_rand(v, 3, ks, 1, 0);
    arg_out(o, 3, qs);
    return (ctx){.x = q, .w = k, .b = v, .y = o, .i0 = heads, .i1 = causal};
}

static void check_attention(int64_t b, int64_t tq, int64_t tk, int heads, int64_t d, int causal)
{
    arg q, k, v, o;
    ctx c = attention_args(&q, &k, &v, &o, b, tq, tk, heads, d, causal);
    char what[96];
    snprintf(what, sizeof what, "attention b=%lld tq=%lld tk=%lld heads=%d d=%lld%s", (long long)b, (long long)tq,
             (long long)tk, heads, (long long)d, causal ? " causal" : "");
    check(what, do_attention, &c, &o);
    arg_free(&q), arg_free(&k), arg_free(&v), arg_free(&o);
}

/* The tensor-core kernel called directly, on the fp16 and bf16 backends'
 * device copies of the inputs, against the CPU backend. (Those backends'
 * attention in check_attention reaches the same kernel unless
 * SDW_CUDA_ATTENTION=simt is set; here no backend code is in between.) */
static void check_attention_tc(int64_t b, int64_t tq, int64_t tk, int heads, int64_t d, int causal)
{
    arg q, k, v, o;
    ctx c = attention_args(&q, &k, &v, &o, b, tq, tk, heads, d, causal);
    char what[96];
    snprintf(what, sizeof what, "sdw_k_attention_tc b=%lld tq=%lld tk=%lld heads=%d d=%lld%s", (long long)b,
             (long long)tq, (long long)tk, heads, (long long)d, causal ? " causal" : "");
    size_t n = (size_t)(b * tq * heads * d);
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    if (!want || !got)
        abort();
    sdw_error e;
    if (!ok_so_far || do_attention(0, &c, &e) || sdw_tensor_to_host(&o.t[0], want, &e)) {
        tap_ok(0, "%s: setup failed", what);
        ok_so_far = 1;
    } else
        for (int dt = SDW_K_F16; dt <= SDW_K_BF16; dt++) {
            cudaError_t rc = cudaDeviceSynchronize();
            if (rc == cudaSuccess)
                rc = cudaMemset(o.t[1 + dt].data, 0xff, n * prec_bytes[dt]);
            if (rc == cudaSuccess)
                rc = sdw_k_attention_tc(q.t[1 + dt].data, k.t[1 + dt].data, v.t[1 + dt].data, o.t[1 + dt].data, b,
                                        tq, tk, heads, d, 1.0f / sqrtf((float)d), causal, dt, 0);
            if (rc == cudaSuccess)
                rc = cudaDeviceSynchronize();
            int drc = rc == cudaSuccess ? sdw_tensor_to_host(&o.t[1 + dt], got, &e) : 0;
            double r = rc != cudaSuccess || drc ? INFINITY : max_rel_err(got, want, n);
            tap_ok(rc == cudaSuccess && !drc && r <= prec_tol[dt], "%s %s vs CPU: rel err %.2e%s%s", what,
                   prec_name[dt], r, rc != cudaSuccess || drc ? ": " : "",
                   rc != cudaSuccess ? cudaGetErrorString(rc) : drc ? e.msg : "");
        }
    free(want);
    free(got);
    arg_free(&q), arg_free(&k), arg_free(&v), arg_free(&o);
}

/* SDW_CUDA_ATTENTION=simt: an fp16 backend started with it runs the float32
 * kernel on its halves, so its attention is the fp32 backend's on the same
 * halves, rounded to half: bit for bit. */
static void check_attention_simt(void)
{
    const char *old = getenv("SDW_CUDA_ATTENTION");
    char *saved = old ? strdup(old) : NULL;
    setenv("SDW_CUDA_ATTENTION", "simt", 1);
    sdw_backend *simt = NULL;
    sdw_error e;
    int rc = sdw_backend_cuda(&simt, 0, SDW_PREC_FP16, &e);
    if (saved)
        setenv("SDW_CUDA_ATTENTION", saved, 1);
    else
        unsetenv("SDW_CUDA_ATTENTION");
    free(saved);
    if (!tap_ok(rc == 0, "fp16 backend with SDW_CUDA_ATTENTION=simt starts%s%s", rc ? ": " : "", rc ? e.msg : ""))
        return;
    int64_t s[3] = {2, 77, 8 * 40}, n = 2 * 77 * 8 * 40;
    float *hq = rand_buf((size_t)n, 2, 0), *hk = rand_buf((size_t)n, 2, 0), *hv = rand_buf((size_t)n, 1, 0);
    for (int64_t i = 0; i < n; i++) {
        hq[i] = sdw_f16_to_f32(sdw_f32_to_f16(hq[i]));
        hk[i] = sdw_f16_to_f32(sdw_f32_to_f16(hk[i]));
        hv[i] = sdw_f16_to_f32(sdw_f32_to_f16(hv[i]));
    }
    float *a = malloc((size_t)n * sizeof *a), *bb = malloc((size_t)n * sizeof *bb);
    if (!a || !bb)
        abort();
    sdw_backend *bes[2] = {gpu[0], simt};
    float *res[2] = {a, bb};
    rc = 0;
    for (int i = 0; i < 2 && !rc; i++) {
        sdw_tensor q = {0}, k = {0}, v = {0}, o = {0};
        rc = sdw_tensor_from_host(&q, bes[i], 3, s, hq, &e) || sdw_tensor_from_host(&k, bes[i], 3, s, hk, &e) ||
             sdw_tensor_from_host(&v, bes[i], 3, s, hv, &e) || sdw_tensor_new(&o, bes[i], 3, s, &e) ||
             sdw_op_attention(&q, &k, &v, 8, 0, &o, &e) || sdw_tensor_to_host(&o, res[i], &e);
        sdw_tensor_free(&q), sdw_tensor_free(&k), sdw_tensor_free(&v), sdw_tensor_free(&o);
    }
    size_t differ = 0;
    for (int64_t i = 0; !rc && i < n; i++)
        differ += sdw_f32_to_f16(a[i]) != sdw_f32_to_f16(bb[i]);
    tap_ok(!rc && !differ,
           "SDW_CUDA_ATTENTION=simt: fp16 attention is the fp32 kernel's, rounded to half (%zu of %lld differ)%s%s",
           differ, (long long)n, rc ? ": " : "", rc ? e.msg : "");
    free(hq), free(hk), free(hv), free(a), free(bb);
    sdw_backend_destroy(simt);
}

static int do_act(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_act(T(c->x, s), (sdw_act)c->i0, T(c->y, s), e);
}

static void check_act(sdw_act act, const char *name, int64_t n)
{
    arg x, y;
    arg_rand(&x, 1, &n, 8, 0);
    arg_out(&y, 1, &n);
    ctx c = {.x = &x, .y = &y, .i0 = (int)act};
    char what[64];
    snprintf(what, sizeof what, "%s n=%lld", name, (long long)n);
    check(what, do_act, &c, &y);
    arg_free(&x), arg_free(&y);
}

static int do_add(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_add(T(c->x, s), T(c->w, s), T(c->y, s), e);
}

static int do_scale(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_scale(T(c->x, s), c->f, T(c->y, s), e);
}

static int do_geglu(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_geglu(T(c->x, s), T(c->y, s), e);
}

static int do_add_channel(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_add_channel(T(c->x, s), T(c->w, s), T(c->y, s), e);
}

static void check_elementwise(int64_t n, int64_t geglu_rows)
{
    arg a, b, y;
    arg_rand(&a, 1, &n, 5, 0);
    arg_rand(&b, 1, &n, 5, 1);
    arg_out(&y, 1, &n);
    ctx c = {.x = &a, .w = &b, .y = &y, .f = 0.18215f};
    char what[64];
    snprintf(what, sizeof what, "add n=%lld", (long long)n);
    check(what, do_add, &c, &y);
    arg_free(&y);
    arg_out(&y, 1, &n);
    snprintf(what, sizeof what, "scale n=%lld", (long long)n);
    check(what, do_scale, &c, &y);
    arg_free(&a), arg_free(&b), arg_free(&y);

    int64_t xs[2] = {geglu_rows, 2 * 1280}, ys[2] = {geglu_rows, 1280};
    arg_rand(&a, 2, xs, 4, 0);
    arg_out(&y, 2, ys);
    c = (ctx){.x = &a, .y = &y};
    snprintf(what, sizeof what, "geglu %lldx2560", (long long)geglu_rows);
    check(what, do_geglu, &c, &y);
    arg_free(&a), arg_free(&y);

    int64_t is[4] = {2, 320, 9, 13}, vs[2] = {2, 320};
    arg_rand(&a, 4, is, 3, 0);
    arg_rand(&b, 2, vs, 3, 0);
    arg_out(&y, 4, is);
    c = (ctx){.x = &a, .w = &b, .y = &y};
    check("add_channel 2x320x9x13", do_add_channel, &c, &y);
    arg_free(&a), arg_free(&b), arg_free(&y);
}

static int do_embed(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_embed(T(c->x, s), c->ids, T(c->w, s), T(c->y, s), e);
}

static void check_embed(int with_pos)
{
    arg table, pos, y;
    int64_t ts[2] = {1000, 96}, ps[2] = {80, 96}, ys[3] = {2, 77, 96};
    int32_t ids[2 * 77];
    for (int i = 0; i < 2 * 77; i++)
        ids[i] = (int32_t)((i * 7919u + 13) % 1000);
    arg_rand(&table, 2, ts, 1, 0);
    arg_rand(&pos, 2, ps, 1, 0);
    arg_out(&y, 3, ys);
    ctx c = {.x = &table, .w = with_pos ? &pos : NULL, .y = &y, .ids = ids};
    check(with_pos ? "embed 2x77 from 1000x96 + positions" : "embed 2x77 from 1000x96", do_embed, &c, &y);
    arg_free(&table), arg_free(&pos), arg_free(&y);
}

/* How the GPU backends take convolutions, for the checks' names: "" when
 * they pick (the default), else the SDW_CUDA_CONV they started with. */
static char conv_label[64];

static int do_conv(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_conv2d(T(c->x, s), T(c->w, s), T(c->b, s), c->g, T(c->y, s), e);
}

static void check_conv(int64_t b, int64_t ch, int64_t h, int64_t w, int64_t o, int64_t k, int stride, int pad,
                       int64_t oh, int64_t ow, int bias)
{
    arg x, wt, bs, y;
    int64_t xs[4] = {b, ch, h, w}, wsh[4] = {o, ch, k, k}, ys[4] = {b, o, oh, ow};
    arg_rand(&x, 4, xs, 1, 0);
    arg_rand(&wt, 4, wsh, 1.0f / sqrtf((float)(ch * k * k)), 0);
    arg_rand(&bs, 1, &o, 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &x, .w = &wt, .b = bias ? &bs : NULL, .y = &y, .g = {stride, pad, pad}};
    char what[128];
    snprintf(what, sizeof what, "conv2d %lldx%lldx%lldx%lld k%lld s%d p%d -> %lldx%lldx%lldx%lld%s%s", (long long)b,
             (long long)ch, (long long)h, (long long)w, (long long)k, stride, pad, (long long)b, (long long)o,
             (long long)oh, (long long)ow, bias ? " + bias" : "", conv_label);
    check(what, do_conv, &c, &y);
    arg_free(&x), arg_free(&wt), arg_free(&bs), arg_free(&y);
}

static void check_conv_w(int64_t b, int64_t ch, int64_t h, int64_t w, int64_t o, int64_t k)
{
    arg x, wt, bs, y;
    int64_t xs[4] = {b, ch, h, w}, wsh[4] = {o, ch, k, k}, ys[4] = {b, o, h, w};
    arg_rand(&x, 4, xs, 1, 0);
    arg_f16(&wt, 4, wsh, 1.0f / sqrtf((float)(ch * k * k)));
    arg_rand(&bs, 1, &o, 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &x, .w = &wt, .b = &bs, .y = &y, .g = {1, (int)(k / 2), (int)(k / 2)}};
    char what[128];
    snprintf(what, sizeof what, "conv2d %lldx%lldx%lldx%lld k%lld (f16 weight) -> %lld channels + bias%s",
             (long long)b, (long long)ch, (long long)h, (long long)w, (long long)k, (long long)o, conv_label);
    check(what, do_conv, &c, &y);
    arg_free(&x), arg_free(&wt), arg_free(&bs), arg_free(&y);
}

static int do_group_norm(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_group_norm(T(c->x, s), c->i0, T(c->w, s), T(c->b, s), 1e-5f, c->i1, T(c->y, s), e);
}

static void check_group_norm(int64_t b, int64_t ch, int64_t h, int64_t w, int groups, int silu)
{
    arg x, g, bt, y;
    int64_t s[4] = {b, ch, h, w};
    arg_rand(&x, 4, s, 2, 3);
    arg_rand(&g, 1, &ch, 1, 1);
    arg_rand(&bt, 1, &ch, 1, 0);
    arg_out(&y, 4, s);
    ctx c = {.x = &x, .w = &g, .b = &bt, .y = &y, .i0 = groups, .i1 = silu};
    char what[96];
    snprintf(what, sizeof what, "group_norm%s %lldx%lldx%lldx%lld in %d groups", silu ? "+silu" : "", (long long)b,
             (long long)ch, (long long)h, (long long)w, groups);
    check_tol(what, do_group_norm, &c, &y, group_norm_tol);
    arg_free(&x), arg_free(&g), arg_free(&bt), arg_free(&y);
}

/* In place (y == x), as the VAE's last norm runs: x is uploaded afresh
 * before each backend's run. */
static int do_group_norm_inplace(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    sdw_tensor *x = T(c->x, s);
    int rc = x->be->ops->upload(x->be, x->data, c->host, (size_t)sdw_tensor_numel(x), e);
    return rc ? rc : sdw_op_group_norm(x, c->i0, T(c->w, s), T(c->b, s), 1e-6f, c->i1, x, e);
}

static void check_group_norm_inplace(int64_t b, int64_t ch, int64_t h, int64_t w, int groups, int silu)
{
    arg x, g, bt;
    int64_t s[4] = {b, ch, h, w};
    float *host = rand_buf((size_t)numel(4, s), 2, 3);
    arg_host(&x, 4, s, host);
    arg_rand(&g, 1, &ch, 1, 1);
    arg_rand(&bt, 1, &ch, 1, 0);
    ctx c = {.x = &x, .w = &g, .b = &bt, .host = host, .i0 = groups, .i1 = silu};
    char what[96];
    snprintf(what, sizeof what, "group_norm%s in place %lldx%lldx%lldx%lld in %d groups", silu ? "+silu" : "",
             (long long)b, (long long)ch, (long long)h, (long long)w, groups);
    check_tol(what, do_group_norm_inplace, &c, &x, group_norm_tol);
    arg_free(&x), arg_free(&g), arg_free(&bt);
    free(host);
}

static int do_upsample(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_upsample_nearest(T(c->x, s), T(c->y, s), e);
}

static void check_upsample(int64_t h, int64_t w, int64_t oh, int64_t ow)
{
    arg x, y;
    int64_t xs[4] = {2, 5, h, w}, ys[4] = {2, 5, oh, ow};
    arg_rand(&x, 4, xs, 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &x, .y = &y};
    char what[64];
    snprintf(what, sizeof what, "upsample_nearest %lldx%lld -> %lldx%lld", (long long)h, (long long)w,
             (long long)oh, (long long)ow);
    check(what, do_upsample, &c, &y);
    arg_free(&x), arg_free(&y);
}

static int do_concat(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_concat(T(c->x, s), T(c->w, s), T(c->y, s), e);
}

static int do_transpose(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_transpose(T(c->x, s), T(c->y, s), e);
}

/* Concatenation of ch and 2 ch channels of hw x hw, transposes of
 * 2 x ch x t and of an odd shape. */
static void check_layout(int64_t ch, int64_t hw, int64_t t)
{
    arg a, b, y;
    int64_t as[4] = {2, ch, hw, hw}, bs[4] = {2, 2 * ch, hw, hw}, ys[4] = {2, 3 * ch, hw, hw};
    arg_rand(&a, 4, as, 1, 0);
    arg_rand(&b, 4, bs, 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &a, .w = &b, .y = &y};
    char what[64];
    snprintf(what, sizeof what, "concat 2x%lld + 2x%lld channels", (long long)ch, (long long)(2 * ch));
    check(what, do_concat, &c, &y);
    arg_free(&a), arg_free(&b), arg_free(&y);

    int64_t dims[2][3] = {{2, ch, t}, {3, 33, 65}};
    for (int i = 0; i < 2; i++) {
        int64_t ts[3] = {dims[i][0], dims[i][2], dims[i][1]};
        arg_rand(&a, 3, dims[i], 1, 0);
        arg_out(&y, 3, ts);
        c = (ctx){.x = &a, .y = &y};
        snprintf(what, sizeof what, "transpose %lldx%lldx%lld", (long long)dims[i][0], (long long)dims[i][1],
                 (long long)dims[i][2]);
        check(what, do_transpose, &c, &y);
        arg_free(&a), arg_free(&y);
    }
}

static int do_gaussian(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_gaussian(T(c->x, s), T(c->w, s), c->f, T(c->y, s), e);
}

static void check_gaussian(int with_noise)
{
    arg m, noise, y;
    int64_t ms[4] = {2, 8, 24, 20}, ys[4] = {2, 4, 24, 20};
    float *h = rand_buf((size_t)numel(4, ms), 3, 0);
    for (int i = 0; i < 40; i++) /* logvars beyond both clamps */
        h[4 * 24 * 20 + i] = i % 2 ? 45.0f : -60.0f;
    arg_host(&m, 4, ms, h);
    free(h);
    arg_rand(&noise, 4, ys, 2, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &m, .w = with_noise ? &noise : NULL, .y = &y, .f = 0.18215f};
    check(with_noise ? "gaussian sample (logvar clamped)" : "gaussian mean", do_gaussian, &c, &y);
    arg_free(&m), arg_free(&noise), arg_free(&y);
}

/* The convolution cases, run once per way the backend can take them
 * (main): cuDNN or im2col and a cuBLAS product, or the faster per shape. */
static void conv_cases(void)
{
#ifdef SDW_CUSIM
    check_conv(2, 9, 24, 40, 32, 3, 1, 1, 24, 40, 0);
    check_conv(1, 40, 8, 8, 24, 1, 1, 0, 8, 8, 1);
    check_conv(2, 24, 5, 7, 16, 1, 1, 0, 5, 7, 0); /* 1x1: a strided batch of products through cuBLAS */
    check_conv(1, 16, 16, 16, 24, 3, 2, 1, 8, 8, 1); /* downsample */
    check_conv(1, 16, 16, 16, 16, 3, 2, 0, 8, 8, 1); /* bottom/right pad 1 */
    check_conv(1, 8, 31, 16, 5, 3, 2, 0, 15, 8, 1);
    check_conv_w(1, 16, 10, 12, 24, 3);
    check_conv_w(1, 40, 9, 7, 24, 1);
    /* Columns past 1 MiB: in bands of positions under SDW_CUDA_WORKSPACE_MIB=1. */
    check_conv(1, 32, 48, 40, 8, 3, 1, 1, 48, 40, 1);
    check_conv(2, 16, 40, 40, 8, 3, 1, 1, 40, 40, 0);
#else
    check_conv(2, 320, 32, 32, 320, 3, 1, 1, 32, 32, 1);
    check_conv(2, 1280, 8, 8, 1280, 3, 1, 1, 8, 8, 1); /* the UNet's innermost: 128 positions, 11520 deep */
    check_conv(2, 4, 64, 64, 320, 3, 1, 1, 64, 64, 1);
    check_conv(2, 9, 24, 40, 32, 3, 1, 1, 24, 40, 0);
    check_conv(2, 640, 16, 16, 320, 1, 1, 0, 16, 16, 1);
    check_conv(2, 2560, 8, 8, 1280, 1, 1, 0, 8, 8, 0);
    check_conv(1, 128, 64, 64, 128, 3, 2, 1, 32, 32, 1); /* UNet downsample */
    check_conv(1, 64, 64, 64, 64, 3, 2, 0, 32, 32, 1);   /* VAE encoder: bottom/right pad 1 */
    check_conv(1, 8, 31, 16, 5, 3, 2, 0, 15, 8, 1);      /* odd sizes, implied pad 0 and 1 */
    check_conv(1, 128, 512, 512, 3, 3, 1, 1, 512, 512, 1); /* the VAE decoder's last conv at 512x512 */
    check_conv_w(2, 64, 20, 24, 96, 3);
    check_conv_w(1, 40, 9, 7, 24, 1);
#endif
}

/* The GPU backends, one per precision, started afresh with SDW_CUDA_CONV set
 * to conv and SDW_CUDA_WORKSPACE_MIB to ws (NULL: unset). */
static int start_gpus(const char *conv, const char *ws)
{
    sdw_error e;
    for (int p = 0; p < NPREC; p++) {
        sdw_backend_destroy(gpu[p]);
        gpu[p] = NULL;
    }
    if (conv)
        setenv("SDW_CUDA_CONV", conv, 1);
    if (ws)
        setenv("SDW_CUDA_WORKSPACE_MIB", ws, 1);
    for (int p = 0; p < NPREC; p++) {
        /* The call first: the message's arguments must see its result. */
        int brc = sdw_backend_cuda(&gpu[p], 0, (sdw_precision)p, &e);
        if (!tap_ok(brc == 0, "cuda backend %s%s%s%s%s starts%s%s", prec_name[p], conv ? " with SDW_CUDA_CONV=" : "",
                    conv ? conv : "", ws ? " SDW_CUDA_WORKSPACE_MIB=" : "", ws ? ws : "", brc ? ": " : "",
                    brc ? e.msg : ""))
            break;
    }
    unsetenv("SDW_CUDA_CONV");
    unsetenv("SDW_CUDA_WORKSPACE_MIB");
    snprintf(conv_label, sizeof conv_label, "%s%s%s%s%s", conv ? " [SDW_CUDA_CONV=" : "", conv ? conv : "",
             ws ? " SDW_CUDA_WORKSPACE_MIB=" : "", ws ? ws : "", conv ? "]" : "");
    for (int p = 0; p < NPREC; p++)
        if (!gpu[p])
            return -1;
    return 0;
}

int main(void)
{
    int count = 0;
    cudaError_t crc = cudaGetDeviceCount(&count);
    sdw_error e;
    if (crc != cudaSuccess || count == 0) {
        sdw_backend *be = NULL;
        int rc = sdw_backend_cuda(&be, 0, SDW_PREC_FP32, &e);
        tap_ok(rc == SDW_EDEVICE && be == NULL && e.msg[0], "without a device the backend refuses: %s",
               rc ? e.msg : "(it started)");
        tap_skip("no CUDA device (%s)", crc != cudaSuccess ? cudaGetErrorString(crc) : "none found");
        return tap_done();
    }
    if (sdw_backend_cpu(&cpu, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
    if (start_gpus(NULL, NULL))
        return tap_done();
    sdw_backend *bad = NULL;
    int rc = sdw_backend_cuda(&bad, count, SDW_PREC_FP32, &e);
    tap_ok(rc == SDW_ENOTFOUND && !bad, "device %d (one past the last) is refused: %s", count, e.msg);
    const char *ws_bad[] = {"0", "12x", "", "65537"};
    for (size_t i = 0; i < sizeof ws_bad / sizeof *ws_bad; i++) {
        setenv("SDW_CUDA_WORKSPACE_MIB", ws_bad[i], 1);
        rc = sdw_backend_cuda(&bad, 0, SDW_PREC_FP16, &e);
        tap_ok(rc == SDW_EINVAL && !bad && strstr(e.msg, "SDW_CUDA_WORKSPACE_MIB"),
               "SDW_CUDA_WORKSPACE_MIB='%s' is refused: %s", ws_bad[i], rc ? e.msg : "(it started)");
        sdw_backend_destroy(bad);
        bad = NULL;
    }
    setenv("SDW_CUDA_WORKSPACE_MIB", "64", 1);
    rc = sdw_backend_cuda(&bad, 0, SDW_PREC_FP16, &e);
    unsetenv("SDW_CUDA_WORKSPACE_MIB");
    tap_ok(rc == 0, "SDW_CUDA_WORKSPACE_MIB=64 starts%s%s", rc ? ": " : "", rc ? e.msg : "");
    sdw_backend_destroy(bad);
    ok_so_far = 1;

#ifdef SDW_CUSIM
    /* Built against the host simulation of the kernels and the fake CUDA
     * libraries (tests/cusim), where a block of threads takes milliseconds:
     * the same kinds of cases (every op and storage, odd sizes, explicit
     * padding, the cuBLAS attention past d = 160, causal) on small shapes. */
    check_linear(37, 80, 96, 1);
    check_linear(7, 33, 5, 0);
    check_rewritten_weight();
    check_linear_w(37, 80, 96);
    check_linear_w(7, 33, 5);
    check_layer_norm(20, 320);
    check_layer_norm(7, 33);
    check_attention(2, 77, 77, 2, 40, 1);
    check_attention(1, 100, 37, 3, 33, 0);
    check_attention(1, 64, 77, 2, 160, 0);
    check_attention(1, 5, 130, 2, 8, 0);
    check_attention_tc(1, 100, 37, 3, 33, 0);
    check_attention_tc(1, 65, 65, 1, 16, 1);
    check_attention_simt();
    check_attention(1, 64, 64, 1, 512, 0);
    check_attention(2, 37, 50, 3, 161, 0);
    check_attention(1, 45, 45, 2, 200, 1);
    check_act(SDW_ACT_SILU, "silu", 1000);
    check_act(SDW_ACT_GELU, "gelu", 1003);
    check_act(SDW_ACT_QUICK_GELU, "quick_gelu", 513);
    check_elementwise(10007, 3);
    check_embed(1);
    check_embed(0);
    conv_cases();
    check_group_norm(2, 32, 8, 8, 8, 1);
    check_group_norm(1, 9, 5, 7, 3, 0);
    check_group_norm_inplace(1, 16, 16, 16, 4, 1);
    check_group_norm_inplace(2, 6, 3, 5, 2, 0);
    check_upsample(8, 8, 16, 16);
    check_upsample(3, 5, 7, 11);
    check_layout(16, 8, 64);
    check_gaussian(1);
    check_gaussian(0);
#else
    check_linear(154, 320, 768, 1);
    check_linear(2048, 1280, 320, 1);
    check_linear(7, 33, 5, 0);
    check_rewritten_weight();
    check_linear_w(154, 320, 768);
    check_linear_w(7, 33, 5);
    check_layer_norm(154, 768);
    check_layer_norm(7, 33);
    check_layer_norm(4096, 320);
    check_attention(2, 4096, 4096, 8, 40, 0);
    check_attention(2, 4096, 77, 8, 40, 0);
    check_attention(2, 77, 77, 12, 64, 1);
    check_attention(2, 1024, 1024, 8, 80, 0);
    check_attention(2, 256, 256, 8, 160, 0);
    check_attention(1, 100, 37, 3, 33, 0);
    check_attention(1, 65, 65, 2, 100, 1);
    check_attention(2, 64, 64, 8, 160, 0);  /* the UNet's innermost self-attention at 512x512 */
    check_attention(2, 64, 77, 8, 160, 0);  /* and its cross-attention */
    check_attention(1, 5, 130, 2, 8, 0);    /* fewer queries than a warp's 16 rows, keys past two tiles */
    check_attention(1, 130, 130, 2, 120, 1);
    check_attention_tc(2, 4096, 77, 8, 40, 0);
    check_attention_tc(2, 256, 256, 8, 160, 0);
    check_attention_tc(2, 77, 77, 12, 64, 1);
    check_attention_tc(1, 100, 37, 3, 33, 0);
    check_attention_tc(1, 129, 129, 1, 1, 1);
    check_attention_simt();
    /* Head dimensions above the fused kernel's 160 go through cuBLAS: the
     * VAE's mid-block attention (one head of 512 over 64x64 tokens), and odd
     * sizes with and without the causal mask. */
    check_attention(1, 4096, 4096, 1, 512, 0);
    check_attention(2, 37, 50, 3, 161, 0);
    check_attention(1, 45, 45, 2, 200, 1);
    check_act(SDW_ACT_SILU, "silu", 1 << 20);
    check_act(SDW_ACT_GELU, "gelu", 1000003);
    check_act(SDW_ACT_QUICK_GELU, "quick_gelu", 77 * 3072);
    check_elementwise(1000003, 300);
    check_embed(1);
    check_embed(0);
    conv_cases();
    check_group_norm(2, 320, 32, 32, 32, 1);
    check_group_norm(2, 320, 32, 32, 32, 0);
    check_group_norm(1, 9, 5, 7, 3, 1);
    check_group_norm_inplace(1, 128, 512, 512, 32, 1); /* the VAE decoder's last norm: 33.5M elements */
    check_group_norm_inplace(2, 6, 3, 5, 2, 0);
    check_upsample(16, 16, 32, 32);
    check_upsample(3, 5, 7, 11);
    check_layout(320, 16, 4096);
    check_gaussian(1);
    check_gaussian(0);
#endif
    tap_ok(sdw_k_act(NULL, NULL, 0, 0, SDW_K_F32, 0) == cudaErrorInvalidValue, "an empty launch is refused");
    tap_ok(sdw_k_attention(NULL, NULL, NULL, NULL, 1, 1, 1, 1, 161, 1.0f, 0, SDW_K_F32, 0) == cudaErrorInvalidValue,
           "attention refuses a head dimension above 160");
    tap_ok(sdw_k_attention_tc(NULL, NULL, NULL, NULL, 1, 1, 1, 1, 161, 1.0f, 0, SDW_K_F16, 0) == cudaErrorInvalidValue,
           "tensor-core attention refuses a head dimension above 160");
    tap_ok(sdw_k_attention_tc(NULL, NULL, NULL, NULL, 1, 1, 1, 1, 40, 1.0f, 0, SDW_K_F32, 0) == cudaErrorInvalidValue,
           "tensor-core attention refuses float32 operands");
    tap_ok(sdw_k_scale(NULL, 1.0f, NULL, 4, 7, 0) == cudaErrorInvalidValue, "an unknown storage type is refused");
    tap_ok(sdw_k_attention_tc(NULL, NULL, NULL, NULL, 1, 2, 3, 1, 40, 1.0f, 1, SDW_K_BF16, 0) == cudaErrorInvalidValue,
           "tensor-core attention refuses a causal mask with tq != tk");

    const char *modes[][2] = {{"cudnn", NULL}, {"gemm", NULL}, {"gemm", "1"}};
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
        if (!start_gpus(modes[i][0], modes[i][1]))
            conv_cases();
    for (int p = 0; p < NPREC; p++)
        sdw_backend_destroy(gpu[p]);
    sdw_backend_destroy(cpu);
    return tap_done();
}
