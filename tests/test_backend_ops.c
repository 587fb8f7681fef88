/* The backend-ops test, after ggml's test-backend-ops: a table of named
 * cases, one or more per op, each run on every backend this build can open
 * and compared with the CPU backend, the numerical reference (the CPU
 * against itself would be trivially equal; tests/test_ops checks it
 * against double precision).
 *
 *   test_backend_ops [-o OP] [-b BACKEND] [--list]
 *
 * -o runs only the cases of one op, -b only the backends whose name is
 * BACKEND or starts with BACKEND and a '-' ("cuda" is every CUDA backend,
 * "cuda-fp16" the fp16 one in each of its settings), --list prints the
 * backends and the cases without running anything. TAP: one line per case
 * per backend, and a line for each backend that opens.
 *
 * The backends beside the CPU are the CUDA backend on device 0 in each
 * precision (cuda-fp32, cuda-fp16, cuda-bf16), and the same started with
 * each way of taking convolutions forced (-cudnn, -gemm, and -gemm-ws1,
 * whose 1 MiB workspace takes the columns in bands), which run the conv2d
 * cases only since those settings change nothing else. In
 * tests/test_backend_ops_sim that backend runs over host stand-ins for the
 * CUDA libraries and the simulated kernels (tests/cusim), on smaller shapes
 * of the same kinds. A build without the CUDA backend has no backend to
 * compare, and says so with a TAP skip.
 *
 * Tolerances: float32 within 1e-5 relative error (max abs difference over
 * max abs reference), fp16 and bf16 within 1e-2, where the device stores
 * inputs and outputs in half or bfloat16 while the CPU keeps the float32
 * inputs: the bound covers that rounding too (except bf16 GroupNorm's,
 * which needs 1.5e-2: see group_norm_tol). Device outputs are poisoned (all
 * bits set: NaN) before every op so that one that skips elements cannot
 * pass, and NaN anywhere fails. Without a CUDA device the test checks that
 * the backend refuses to start with a clear error and skips the rest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/half.h"
#include "fixture.h"
#include "tap.h"
#include "tensor/tensor.h"
#ifdef SDW_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels.h"
#endif

#define NPREC 3
static const double prec_tol[NPREC] = {1e-5, 1e-2, 1e-2};
#ifdef SDW_HAVE_CUDA
static const char *prec_name[NPREC] = {"fp32", "fp16", "bf16"};
/* Bytes per element of a tensor in each precision's storage type. */
static const size_t prec_bytes[NPREC] = {4, 2, 2};

/* The CUDA backend's settings besides its precision, as groups of backends
 * open at once: the defaults, under which every case runs, and each way of
 * taking convolutions forced, under which the conv2d cases run again. */
typedef struct bo_group {
    const char *suffix, *conv, *ws; /* name suffix, SDW_CUDA_CONV, SDW_CUDA_WORKSPACE_MIB (NULL: as inherited) */
} bo_group;
static const bo_group groups[] = {{"", NULL, NULL}, {"-cudnn", "cudnn", NULL}, {"-gemm", "gemm", NULL},
                                  {"-gemm-ws1", "gemm", "1"}};
#define NGROUPS (int)(sizeof groups / sizeof *groups)
#endif

/* The CPU, and the backends of the open group by precision (NULL where -b
 * left one out), with their names for the TAP lines. */
static sdw_backend *cpu, *gpu[NPREC];
static char gpu_name[NPREC][32];
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

/* An input on the CPU and on every open device backend, from the same host
 * data. */
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
        if (gpu[p] && sdw_tensor_from_host(&a->t[1 + p], gpu[p], nd, s, host, &e)) {
            tap_diag("%s upload: %s", gpu_name[p], e.msg);
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
    for (int i = 0; i < 1 + NPREC; i++) {
        sdw_backend *be = i ? gpu[i - 1] : cpu;
        if (!be)
            continue;
        if (sdw_tensor_weight_f16(&a->t[i], be, nd, s, halves, &e)) {
            tap_diag("%s f16 weight: %s", i ? gpu_name[i - 1] : "cpu", e.msg);
            ok_so_far = 0;
        } else if (i && a->t[i].lowp) {
            tap_diag("%s keeps an f16 weight in another format than its tensors'", gpu_name[i - 1]);
            ok_so_far = 0;
        }
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

/* All bits set (NaN in every storage type) over the n elements of a device
 * tensor of precision p. */
static int poison(void *data, size_t n, int p)
{
#ifdef SDW_HAVE_CUDA
    /* The backend's stream does not synchronise with the legacy stream. */
    return cudaDeviceSynchronize() != cudaSuccess || cudaMemset(data, 0xff, n * prec_bytes[p]) != cudaSuccess ||
           cudaDeviceSynchronize() != cudaSuccess;
#else
    /* No device backend is ever open in a build without one. */
    (void)data, (void)n, (void)p;
    return -1;
#endif
}

/* An output: uninitialised on the CPU, NaN-poisoned on the devices. */
static void arg_out(arg *a, int nd, const int64_t *s)
{
    sdw_error e;
    memset(a, 0, sizeof *a);
    if (sdw_tensor_new(&a->t[0], cpu, nd, s, &e))
        ok_so_far = 0;
    for (int p = 0; p < NPREC; p++) {
        if (!gpu[p])
            continue;
        if (sdw_tensor_new(&a->t[1 + p], gpu[p], nd, s, &e)) {
            tap_diag("%s alloc: %s", gpu_name[p], e.msg);
            ok_so_far = 0;
        } else if (poison(a->t[1 + p].data, (size_t)numel(nd, s), p))
            ok_so_far = 0;
    }
}

static void arg_free(arg *a)
{
    for (int i = 0; i < 1 + NPREC; i++)
        sdw_tensor_free(&a->t[i]);
}

/* Runs one op on the CPU and each open device backend (op receives the
 * slot: 0 = CPU, 1 + p = the backend of precision p) and compares y, with
 * bounds per precision. */
typedef int (*op_fn)(int slot, void *ctx, sdw_error *e);

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
        if (!gpu[p])
            continue;
        int rc = op(1 + p, ctx, &e);
        if (!rc)
            rc = sdw_tensor_to_host(&y->t[1 + p], got, &e);
        double r = rc ? INFINITY : max_rel_err(got, want, n);
        tap_ok(!rc && r <= tol[p], "%s: %s vs CPU: rel err %.2e%s%s", what, gpu_name[p], r, rc ? ": " : "",
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

/* A case of the table: the op -o selects it by, its name (label, from p),
 * and run, which makes fresh inputs, runs them on the CPU and the open
 * backends and reports. */
typedef struct bo_case bo_case;
struct bo_case {
    const char *op;
    void (*label)(const bo_case *c, char *buf, size_t len);
    void (*run)(const bo_case *c, const char *label);
    unsigned flags;
    int64_t p[11];
};
/* Also run by the backends that force a way of taking convolutions. The
 * other cases run with the default group open, and those that check the
 * CUDA backend itself rather than an op against the CPU ("cuda", and the
 * SIMT attention) report their own lines. */
#define BO_CONV 1u

/* A case's parameter, for its label. */
#define P(i) ((long long)c->p[i])

static int do_linear(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_linear(T(c->x, s), T(c->w, s), T(c->b, s), T(c->y, s), e);
}

/* p: m, n, k, bias, weight from halves (as a model loader stores it). */
static void label_linear(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "linear %lldx%lld * %lldx%lld%s%s", P(0), P(2), P(1), P(2), c->p[4] ? " (f16 weight)" : "",
             c->p[3] ? " + bias" : "");
}

static void run_linear(const bo_case *bc, const char *what)
{
    int64_t m = bc->p[0], n = bc->p[1], k = bc->p[2];
    arg x, w, b, y;
    int64_t xs[2] = {m, k}, ws[2] = {n, k}, ys[2] = {m, n};
    arg_rand(&x, 2, xs, 1, 0);
    if (bc->p[4])
        arg_f16(&w, 2, ws, 0.05f);
    else
        arg_rand(&w, 2, ws, 0.05f, 0);
    arg_rand(&b, 1, &n, 1, 0);
    arg_out(&y, 2, ys);
    ctx c = {.x = &x, .w = &w, .b = bc->p[3] ? &b : NULL, .y = &y};
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

static void label_rewritten_weight(const bo_case *c, char *buf, size_t len)
{
    (void)c;
    snprintf(buf, len, "linear after its weight was re-uploaded and scaled in place");
}

static void run_rewritten_weight(const bo_case *bc, const char *what)
{
    (void)bc;
    arg x, w, y;
    int64_t xs[2] = {64, 96}, ws[2] = {48, 96}, ys[2] = {64, 48};
    arg_rand(&x, 2, xs, 1, 0);
    arg_rand(&w, 2, ws, 0.05f, 0);
    arg_out(&y, 2, ys);
    float *fresh = rand_buf((size_t)numel(2, ws), 0.05f, 0);
    ctx c = {.x = &x, .w = &w, .y = &y, .host = fresh};
    check(what, do_rewrite, &c, &y);
    arg_free(&x), arg_free(&w), arg_free(&y);
    free(fresh);
}

static int do_layer_norm(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_layer_norm(T(c->x, s), T(c->w, s), T(c->b, s), 1e-5f, T(c->y, s), e);
}

/* p: rows, n. */
static void label_layer_norm(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "layer_norm %lldx%lld", P(0), P(1));
}

static void run_layer_norm(const bo_case *bc, const char *what)
{
    int64_t rows = bc->p[0], n = bc->p[1];
    arg x, g, b, y;
    int64_t s[2] = {rows, n};
    arg_rand(&x, 2, s, 3, 4);
    arg_rand(&g, 1, &n, 1, 1);
    arg_rand(&b, 1, &n, 1, 0);
    arg_out(&y, 2, s);
    ctx c = {.x = &x, .w = &g, .b = &b, .y = &y};
    check(what, do_layer_norm, &c, &y);
    arg_free(&x), arg_free(&g), arg_free(&b), arg_free(&y);
}

static int do_attention(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_attention(T(c->x, s), T(c->w, s), T(c->b, s), c->i0, c->i1, T(c->y, s), e);
}

/* Fresh q, k, v and a poisoned output for one attention case (p: b, tq,
 * tk, heads, d, causal), as ctx. */
static ctx attention_args(arg *q, arg *k, arg *v, arg *o, const int64_t *p)
{
    int64_t qs[3] = {p[0], p[1], p[3] * p[4]}, ks[3] = {p[0], p[2], p[3] * p[4]};
    arg_rand(q, 3, qs, 2, 0);
    arg_rand(k, 3, ks, 2, 0);
    arg_rand(v, 3, ks, 1, 0);
    arg_out(o, 3, qs);
    return (ctx){.x = q, .w = k, .b = v, .y = o, .i0 = (int)p[3], .i1 = (int)p[5]};
}

static void label_attention(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s b=%lld tq=%lld tk=%lld heads=%lld d=%lld%s", c->op, P(0), P(1), P(2), P(3), P(4),
             c->p[5] ? " causal" : "");
}

static void run_attention(const bo_case *bc, const char *what)
{
    arg q, k, v, o;
    ctx c = attention_args(&q, &k, &v, &o, bc->p);
    check(what, do_attention, &c, &o);
    arg_free(&q), arg_free(&k), arg_free(&v), arg_free(&o);
}

/* q or k for attention scores past fp16's largest finite value (65504)
 * after the 1/sqrt(d) scale, as SD 2.1's get in fp16 (its UNet config's
 * upcast_attention): in every head the first sqrt(d)/2 dimensions are 512
 * and the others multiples of 1/2 in [-2, 2]. A score is then 2^17 plus a
 * spread of a few units, and exact in float32 in any summation order (d a
 * power of 4: the scale is a power of 2), so that the float32 backends
 * agree with the CPU to their usual bound; stored in either 16-bit type the
 * inputs are exact too. Scores or a softmax taken in fp16 would be inf and
 * NaN. */
static void arg_big_scores(arg *a, const int64_t *s, int64_t d)
{
    size_t n = (size_t)numel(3, s);
    float *h = rand_buf(n, 4, 0);
    int64_t big = (int64_t)sqrtf((float)d) / 2;
    for (size_t i = 0; i < n; i++)
        h[i] = (int64_t)i % d < big ? 512.0f : nearbyintf(h[i]) / 2;
    arg_host(a, 3, s, h);
    free(h);
}

/* p: b, tq, tk, heads, d (a power of 4). */
static void label_attention_big(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "attention b=%lld tq=%lld tk=%lld heads=%lld d=%lld, scores about 2^17 (past fp16's range: "
             "upcast_attention)", P(0), P(1), P(2), P(3), P(4));
}

static void run_attention_big(const bo_case *bc, const char *what)
{
    const int64_t *p = bc->p;
    int64_t qs[3] = {p[0], p[1], p[3] * p[4]}, ks[3] = {p[0], p[2], p[3] * p[4]};
    arg q, k, v, o;
    arg_big_scores(&q, qs, p[4]);
    arg_big_scores(&k, ks, p[4]);
    arg_rand(&v, 3, ks, 1, 0);
    arg_out(&o, 3, qs);
    ctx c = {.x = &q, .w = &k, .b = &v, .y = &o, .i0 = (int)p[3], .i1 = 0};
    check(what, do_attention, &c, &o);
    arg_free(&q), arg_free(&k), arg_free(&v), arg_free(&o);
}

#ifdef SDW_HAVE_CUDA
/* The tensor-core kernel called directly, on the fp16 and bf16 backends'
 * device copies of the inputs, against the CPU backend. (Those backends'
 * attention reaches the same kernel unless SDW_CUDA_ATTENTION=simt is set;
 * here no backend code is in between.) */
static void run_attention_tc(const bo_case *bc, const char *what)
{
    const int64_t *p = bc->p;
    arg q, k, v, o;
    ctx c = attention_args(&q, &k, &v, &o, p);
    size_t n = (size_t)(p[0] * p[1] * p[3] * p[4]);
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    if (!want || !got)
        abort();
    sdw_error e;
    if (!ok_so_far || do_attention(0, &c, &e) || sdw_tensor_to_host(&o.t[0], want, &e)) {
        tap_ok(0, "%s: setup failed", what);
        ok_so_far = 1;
    } else
        for (int dt = SDW_K_F16; dt <= SDW_K_BF16; dt++) {
            if (!gpu[dt])
                continue;
            cudaError_t rc = cudaDeviceSynchronize();
            if (rc == cudaSuccess)
                rc = cudaMemset(o.t[1 + dt].data, 0xff, n * prec_bytes[dt]);
            if (rc == cudaSuccess)
                rc = sdw_k_attention_tc(q.t[1 + dt].data, k.t[1 + dt].data, v.t[1 + dt].data, o.t[1 + dt].data,
                                        p[0], p[1], p[2], p[3], p[4], 1.0f / sqrtf((float)p[4]), (int)p[5], dt, 0);
            if (rc == cudaSuccess)
                rc = cudaDeviceSynchronize();
            int drc = rc == cudaSuccess ? sdw_tensor_to_host(&o.t[1 + dt], got, &e) : 0;
            double r = rc != cudaSuccess || drc ? INFINITY : max_rel_err(got, want, n);
            tap_ok(rc == cudaSuccess && !drc && r <= prec_tol[dt], "%s: %s vs CPU: rel err %.2e%s%s", what,
                   gpu_name[dt], r, rc != cudaSuccess || drc ? ": " : "",
                   rc != cudaSuccess ? cudaGetErrorString(rc) : drc ? e.msg : "");
        }
    free(want);
    free(got);
    arg_free(&q), arg_free(&k), arg_free(&v), arg_free(&o);
}

/* The CUDA backend of precision p on device `device`, started with each
 * (name, value) of env set where the value is not NULL, and the
 * environment as it was afterwards. */
static int cuda_open(sdw_backend **be, int device, sdw_precision p, const char *const env[][2], int nenv,
                     sdw_error *e)
{
    char *saved[2] = {0};
    int set[2] = {0};
    for (int i = 0; i < nenv && i < 2; i++) {
        if (!env[i][1])
            continue;
        const char *old = getenv(env[i][0]);
        saved[i] = old ? strdup(old) : NULL;
        set[i] = 1;
        setenv(env[i][0], env[i][1], 1);
    }
    int rc = sdw_backend_cuda(be, device, p, e);
    for (int i = 0; i < nenv && i < 2; i++) {
        if (!set[i])
            continue;
        if (saved[i])
            setenv(env[i][0], saved[i], 1);
        else
            unsetenv(env[i][0]);
        free(saved[i]);
    }
    return rc;
}

/* SDW_CUDA_ATTENTION=simt: an fp16 backend started with it runs the float32
 * kernel on its halves, so its attention is the fp32 backend's on the same
 * halves, rounded to half: bit for bit. Run with cuda-fp16 open; the fp32
 * side is cuda-fp32 when it is open too, else one started here. */
static void label_attention_simt(const bo_case *c, char *buf, size_t len)
{
    (void)c;
    snprintf(buf, len, "attention 2x77 heads=8 d=40 on cuda-fp16 with SDW_CUDA_ATTENTION=simt, bit for bit the fp32 "
                       "kernel's");
}

static void run_attention_simt(const bo_case *bc, const char *what)
{
    (void)bc, (void)what;
    if (!gpu[SDW_PREC_FP16])
        return;
    static const char *const simt_env[][2] = {{"SDW_CUDA_ATTENTION", "simt"}};
    sdw_backend *simt = NULL, *fp32 = gpu[SDW_PREC_FP32];
    sdw_error e;
    int rc = cuda_open(&simt, 0, SDW_PREC_FP16, simt_env, 1, &e);
    if (!tap_ok(rc == 0, "fp16 backend with SDW_CUDA_ATTENTION=simt starts%s%s", rc ? ": " : "", rc ? e.msg : ""))
        return;
    if (!fp32 && sdw_backend_cuda(&fp32, 0, SDW_PREC_FP32, &e)) {
        tap_ok(0, "SDW_CUDA_ATTENTION=simt: the fp32 backend to compare with: %s", e.msg);
        sdw_backend_destroy(simt);
        return;
    }
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
    sdw_backend *bes[2] = {fp32, simt};
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
    if (fp32 != gpu[SDW_PREC_FP32])
        sdw_backend_destroy(fp32);
    sdw_backend_destroy(simt);
}
#endif

static int do_act(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_act(T(c->x, s), (sdw_act)c->i0, T(c->y, s), e);
}

static const char *const act_name[] = {"silu", "gelu", "quick_gelu"};

/* p: the sdw_act, n. */
static void label_act(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "act %s n=%lld", act_name[c->p[0]], P(1));
}

static void run_act(const bo_case *bc, const char *what)
{
    int64_t n = bc->p[1];
    arg x, y;
    arg_rand(&x, 1, &n, 8, 0);
    arg_out(&y, 1, &n);
    ctx c = {.x = &x, .y = &y, .i0 = (int)bc->p[0]};
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

/* p: n. */
static void label_n(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s n=%lld", c->op, P(0));
}

static void run_add(const bo_case *bc, const char *what)
{
    int64_t n = bc->p[0];
    arg a, b, y;
    arg_rand(&a, 1, &n, 5, 0);
    arg_rand(&b, 1, &n, 5, 1);
    arg_out(&y, 1, &n);
    ctx c = {.x = &a, .w = &b, .y = &y};
    check(what, do_add, &c, &y);
    arg_free(&a), arg_free(&b), arg_free(&y);
}

static void run_scale(const bo_case *bc, const char *what)
{
    int64_t n = bc->p[0];
    arg a, y;
    arg_rand(&a, 1, &n, 5, 0);
    arg_out(&y, 1, &n);
    ctx c = {.x = &a, .y = &y, .f = 0.18215f};
    check(what, do_scale, &c, &y);
    arg_free(&a), arg_free(&y);
}

static int do_geglu(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_geglu(T(c->x, s), T(c->y, s), e);
}

/* p: rows (of 2 x 1280). */
static void label_geglu(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "geglu %lldx2560", P(0));
}

static void run_geglu(const bo_case *bc, const char *what)
{
    arg a, y;
    int64_t xs[2] = {bc->p[0], 2 * 1280}, ys[2] = {bc->p[0], 1280};
    arg_rand(&a, 2, xs, 4, 0);
    arg_out(&y, 2, ys);
    ctx c = {.x = &a, .y = &y};
    check(what, do_geglu, &c, &y);
    arg_free(&a), arg_free(&y);
}

static int do_add_channel(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_add_channel(T(c->x, s), T(c->w, s), T(c->y, s), e);
}

/* p: b, c, h, w. */
static void label_add_channel(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "add_channel %lldx%lldx%lldx%lld", P(0), P(1), P(2), P(3));
}

static void run_add_channel(const bo_case *bc, const char *what)
{
    arg a, b, y;
    int64_t is[4] = {bc->p[0], bc->p[1], bc->p[2], bc->p[3]}, vs[2] = {bc->p[0], bc->p[1]};
    arg_rand(&a, 4, is, 3, 0);
    arg_rand(&b, 2, vs, 3, 0);
    arg_out(&y, 4, is);
    ctx c = {.x = &a, .w = &b, .y = &y};
    check(what, do_add_channel, &c, &y);
    arg_free(&a), arg_free(&b), arg_free(&y);
}

static int do_embed(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_embed(T(c->x, s), c->ids, T(c->w, s), T(c->y, s), e);
}

/* p: with positions. */
static void label_embed(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "embed 2x77 from 1000x96%s", c->p[0] ? " + positions" : "");
}

static void run_embed(const bo_case *bc, const char *what)
{
    arg table, pos, y;
    int64_t ts[2] = {1000, 96}, ps[2] = {80, 96}, ys[3] = {2, 77, 96};
    int32_t ids[2 * 77];
    for (int i = 0; i < 2 * 77; i++)
        ids[i] = (int32_t)((i * 7919u + 13) % 1000);
    arg_rand(&table, 2, ts, 1, 0);
    arg_rand(&pos, 2, ps, 1, 0);
    arg_out(&y, 3, ys);
    ctx c = {.x = &table, .w = bc->p[0] ? &pos : NULL, .y = &y, .ids = ids};
    check(what, do_embed, &c, &y);
    arg_free(&table), arg_free(&pos), arg_free(&y);
}

static int do_conv(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_conv2d(T(c->x, s), T(c->w, s), T(c->b, s), c->g, T(c->y, s), e);
}

/* p: b, c, h, w, o, k, stride, pad, oh, ow, bias. */
static void label_conv(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "conv2d %lldx%lldx%lldx%lld k%lld s%lld p%lld -> %lldx%lldx%lldx%lld%s", P(0), P(1), P(2),
             P(3), P(5), P(6), P(7), P(0), P(4), P(8), P(9), c->p[10] ? " + bias" : "");
}

static void run_conv(const bo_case *bc, const char *what)
{
    const int64_t *p = bc->p;
    int64_t ch = p[1], k = p[5];
    arg x, wt, bs, y;
    int64_t xs[4] = {p[0], ch, p[2], p[3]}, wsh[4] = {p[4], ch, k, k}, ys[4] = {p[0], p[4], p[8], p[9]};
    arg_rand(&x, 4, xs, 1, 0);
    arg_rand(&wt, 4, wsh, 1.0f / sqrtf((float)(ch * k * k)), 0);
    arg_rand(&bs, 1, &p[4], 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &x, .w = &wt, .b = p[10] ? &bs : NULL, .y = &y, .g = {(int)p[6], (int)p[7], (int)p[7]}};
    check(what, do_conv, &c, &y);
    arg_free(&x), arg_free(&wt), arg_free(&bs), arg_free(&y);
}

/* p: b, c, h, w, o, k; stride 1, same size, bias. */
static void label_conv_w(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "conv2d %lldx%lldx%lldx%lld k%lld (f16 weight) -> %lld channels + bias", P(0), P(1), P(2),
             P(3), P(5), P(4));
}

static void run_conv_w(const bo_case *bc, const char *what)
{
    const int64_t *p = bc->p;
    int64_t ch = p[1], k = p[5];
    arg x, wt, bs, y;
    int64_t xs[4] = {p[0], ch, p[2], p[3]}, wsh[4] = {p[4], ch, k, k}, ys[4] = {p[0], p[4], p[2], p[3]};
    arg_rand(&x, 4, xs, 1, 0);
    arg_f16(&wt, 4, wsh, 1.0f / sqrtf((float)(ch * k * k)));
    arg_rand(&bs, 1, &p[4], 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &x, .w = &wt, .b = &bs, .y = &y, .g = {1, (int)(k / 2), (int)(k / 2)}};
    check(what, do_conv, &c, &y);
    arg_free(&x), arg_free(&wt), arg_free(&bs), arg_free(&y);
}

static int do_group_norm(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_group_norm(T(c->x, s), c->i0, T(c->w, s), T(c->b, s), 1e-5f, c->i1, T(c->y, s), e);
}

/* p: b, c, h, w, groups, silu, in place. */
static void label_group_norm(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "group_norm%s%s %lldx%lldx%lldx%lld in %lld groups", c->p[5] ? "+silu" : "",
             c->p[6] ? " in place" : "", P(0), P(1), P(2), P(3), P(4));
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

static void run_group_norm(const bo_case *bc, const char *what)
{
    const int64_t *p = bc->p;
    arg x, g, bt, y;
    int64_t s[4] = {p[0], p[1], p[2], p[3]};
    float *host = rand_buf((size_t)numel(4, s), 2, 3);
    arg_host(&x, 4, s, host);
    arg_rand(&g, 1, &p[1], 1, 1);
    arg_rand(&bt, 1, &p[1], 1, 0);
    ctx c = {.x = &x, .w = &g, .b = &bt, .host = host, .i0 = (int)p[4], .i1 = (int)p[5]};
    if (p[6])
        check_tol(what, do_group_norm_inplace, &c, &x, group_norm_tol);
    else {
        arg_out(&y, 4, s);
        c.y = &y;
        check_tol(what, do_group_norm, &c, &y, group_norm_tol);
        arg_free(&y);
    }
    arg_free(&x), arg_free(&g), arg_free(&bt);
    free(host);
}

static int do_upsample(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_upsample_nearest(T(c->x, s), T(c->y, s), e);
}

/* p: h, w, oh, ow (of 2x5 planes). */
static void label_upsample(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "upsample_nearest %lldx%lld -> %lldx%lld", P(0), P(1), P(2), P(3));
}

static void run_upsample(const bo_case *bc, const char *what)
{
    arg x, y;
    int64_t xs[4] = {2, 5, bc->p[0], bc->p[1]}, ys[4] = {2, 5, bc->p[2], bc->p[3]};
    arg_rand(&x, 4, xs, 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &x, .y = &y};
    check(what, do_upsample, &c, &y);
    arg_free(&x), arg_free(&y);
}

static int do_concat(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_concat(T(c->x, s), T(c->w, s), T(c->y, s), e);
}

/* p: ch, hw: ch and 2 ch channels of hw x hw, two images. */
static void label_concat(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "concat 2x%lldx%lldx%lld + 2x%lldx%lldx%lld", P(0), P(1), P(1), 2 * P(0), P(1), P(1));
}

static void run_concat(const bo_case *bc, const char *what)
{
    int64_t ch = bc->p[0], hw = bc->p[1];
    arg a, b, y;
    int64_t as[4] = {2, ch, hw, hw}, bs[4] = {2, 2 * ch, hw, hw}, ys[4] = {2, 3 * ch, hw, hw};
    arg_rand(&a, 4, as, 1, 0);
    arg_rand(&b, 4, bs, 1, 0);
    arg_out(&y, 4, ys);
    ctx c = {.x = &a, .w = &b, .y = &y};
    check(what, do_concat, &c, &y);
    arg_free(&a), arg_free(&b), arg_free(&y);
}

static int do_transpose(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_transpose(T(c->x, s), T(c->y, s), e);
}

/* p: b, m, n. */
static void label_transpose(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "transpose %lldx%lldx%lld", P(0), P(1), P(2));
}

static void run_transpose(const bo_case *bc, const char *what)
{
    arg a, y;
    int64_t xs[3] = {bc->p[0], bc->p[1], bc->p[2]}, ts[3] = {bc->p[0], bc->p[2], bc->p[1]};
    arg_rand(&a, 3, xs, 1, 0);
    arg_out(&y, 3, ts);
    ctx c = {.x = &a, .y = &y};
    check(what, do_transpose, &c, &y);
    arg_free(&a), arg_free(&y);
}

static int do_gaussian(int s, void *v, sdw_error *e)
{
    ctx *c = v;
    return sdw_op_gaussian(T(c->x, s), T(c->w, s), c->f, T(c->y, s), e);
}

/* p: with noise. */
static void label_gaussian(const bo_case *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->p[0] ? "gaussian sample (logvar clamped)" : "gaussian mean");
}

static void run_gaussian(const bo_case *bc, const char *what)
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
    ctx c = {.x = &m, .w = bc->p[0] ? &noise : NULL, .y = &y, .f = 0.18215f};
    check(what, do_gaussian, &c, &y);
    arg_free(&m), arg_free(&noise), arg_free(&y);
}

#ifdef SDW_HAVE_CUDA
/* The device count, for the refusal of the device one past the last. */
static int ndevices;

static void label_cuda_open(const bo_case *c, char *buf, size_t len)
{
    (void)c;
    snprintf(buf, len, "a device past the last and bad SDW_CUDA_WORKSPACE_MIB values are refused");
}

static void run_cuda_open(const bo_case *bc, const char *what)
{
    (void)bc, (void)what;
    sdw_backend *bad = NULL;
    sdw_error e;
    int rc = sdw_backend_cuda(&bad, ndevices, SDW_PREC_FP32, &e);
    tap_ok(rc == SDW_ENOTFOUND && !bad, "device %d (one past the last) is refused: %s", ndevices, e.msg);
    const char *ws_bad[] = {"0", "12x", "", "65537"};
    for (size_t i = 0; i < sizeof ws_bad / sizeof *ws_bad; i++) {
        const char *const env[][2] = {{"SDW_CUDA_WORKSPACE_MIB", ws_bad[i]}};
        rc = cuda_open(&bad, 0, SDW_PREC_FP16, env, 1, &e);
        tap_ok(rc == SDW_EINVAL && !bad && strstr(e.msg, "SDW_CUDA_WORKSPACE_MIB"),
               "SDW_CUDA_WORKSPACE_MIB='%s' is refused: %s", ws_bad[i], rc ? e.msg : "(it started)");
        sdw_backend_destroy(bad);
        bad = NULL;
    }
    static const char *const ws64[][2] = {{"SDW_CUDA_WORKSPACE_MIB", "64"}};
    rc = cuda_open(&bad, 0, SDW_PREC_FP16, ws64, 1, &e);
    tap_ok(rc == 0, "SDW_CUDA_WORKSPACE_MIB=64 starts%s%s", rc ? ": " : "", rc ? e.msg : "");
    sdw_backend_destroy(bad);
}

static void label_cuda_kernel_args(const bo_case *c, char *buf, size_t len)
{
    (void)c;
    snprintf(buf, len, "kernels refuse launches outside their contract");
}

static void run_cuda_kernel_args(const bo_case *bc, const char *what)
{
    (void)bc, (void)what;
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
}

#define CUDA_OPEN() {"cuda", label_cuda_open, run_cuda_open, 0, {0}}
#define CUDA_KERNEL_ARGS() {"cuda", label_cuda_kernel_args, run_cuda_kernel_args, 0, {0}}
#define ATTENTION_TC(b, tq, tk, heads, d, causal)                                                                  \
    {"attention_tc", label_attention, run_attention_tc, 0, {b, tq, tk, heads, d, causal}}
#define ATTENTION_SIMT() {"attention", label_attention_simt, run_attention_simt, 0, {0}}
#endif

#define LINEAR(m, n, k, bias) {"linear", label_linear, run_linear, 0, {m, n, k, bias, 0}}
#define LINEAR_F16W(m, n, k) {"linear", label_linear, run_linear, 0, {m, n, k, 1, 1}}
#define LINEAR_REWRITTEN() {"linear", label_rewritten_weight, run_rewritten_weight, 0, {0}}
#define LAYER_NORM(rows, n) {"layer_norm", label_layer_norm, run_layer_norm, 0, {rows, n}}
#define ATTENTION(b, tq, tk, heads, d, causal)                                                                     \
    {"attention", label_attention, run_attention, 0, {b, tq, tk, heads, d, causal}}
#define ATTENTION_BIG(b, tq, tk, heads, d) {"attention", label_attention_big, run_attention_big, 0, {b, tq, tk, heads, d}}
#define ACT(act, n) {"act", label_act, run_act, 0, {act, n}}
#define ADD(n) {"add", label_n, run_add, 0, {n}}
#define SCALE(n) {"scale", label_n, run_scale, 0, {n}}
#define GEGLU(rows) {"geglu", label_geglu, run_geglu, 0, {rows}}
#define ADD_CHANNEL(b, c, h, w) {"add_channel", label_add_channel, run_add_channel, 0, {b, c, h, w}}
#define EMBED(pos) {"embed", label_embed, run_embed, 0, {pos}}
#define CONV2D(b, c, h, w, o, k, stride, pad, oh, ow, bias)                                                        \
    {"conv2d", label_conv, run_conv, BO_CONV, {b, c, h, w, o, k, stride, pad, oh, ow, bias}}
#define CONV2D_F16W(b, c, h, w, o, k) {"conv2d", label_conv_w, run_conv_w, BO_CONV, {b, c, h, w, o, k}}
#define GROUP_NORM(b, c, h, w, groups, silu)                                                                       \
    {"group_norm", label_group_norm, run_group_norm, 0, {b, c, h, w, groups, silu, 0}}
#define GROUP_NORM_INPLACE(b, c, h, w, groups, silu)                                                               \
    {"group_norm", label_group_norm, run_group_norm, 0, {b, c, h, w, groups, silu, 1}}
#define UPSAMPLE(h, w, oh, ow) {"upsample_nearest", label_upsample, run_upsample, 0, {h, w, oh, ow}}
#define CONCAT(ch, hw) {"concat", label_concat, run_concat, 0, {ch, hw}}
#define TRANSPOSE(b, m, n) {"transpose", label_transpose, run_transpose, 0, {b, m, n}}
#define GAUSSIAN(noise) {"gaussian", label_gaussian, run_gaussian, 0, {noise}}

static const bo_case cases[] = {
#ifdef SDW_HAVE_CUDA
    CUDA_OPEN(),
#endif
#ifdef SDW_CUSIM
    /* Built against the host simulation of the kernels and the fake CUDA
     * libraries (tests/cusim), where a block of threads takes milliseconds:
     * the same kinds of cases (every op and storage, odd sizes, explicit
     * padding, the cuBLAS attention past d = 160, causal) on small shapes. */
    LINEAR(37, 80, 96, 1),
    LINEAR(7, 33, 5, 0),
    LINEAR_REWRITTEN(),
    LINEAR_F16W(37, 80, 96),
    LINEAR_F16W(7, 33, 5),
    LAYER_NORM(20, 320),
    LAYER_NORM(7, 33),
    ATTENTION(2, 77, 77, 2, 40, 1),
    ATTENTION(1, 100, 37, 3, 33, 0),
    ATTENTION(1, 64, 77, 2, 160, 0),
    ATTENTION(1, 5, 130, 2, 8, 0),
    ATTENTION_TC(1, 100, 37, 3, 33, 0),
    ATTENTION_TC(1, 65, 65, 1, 16, 1),
    ATTENTION_SIMT(),
    ATTENTION(1, 64, 64, 1, 512, 0),
    ATTENTION(2, 37, 50, 3, 161, 0),
    ATTENTION(1, 45, 45, 2, 200, 1),
    /* Scores past fp16's range: the fused kernels and, at d = 256, cuBLAS. */
    ATTENTION_BIG(1, 70, 77, 2, 64),
    ATTENTION_BIG(1, 20, 30, 1, 256),
    ACT(SDW_ACT_SILU, 1000),
    ACT(SDW_ACT_GELU, 1003),
    ACT(SDW_ACT_QUICK_GELU, 513),
    ADD(10007),
    SCALE(10007),
    GEGLU(3),
    ADD_CHANNEL(2, 320, 9, 13),
    EMBED(1),
    EMBED(0),
    CONV2D(2, 9, 24, 40, 32, 3, 1, 1, 24, 40, 0),
    CONV2D(1, 40, 8, 8, 24, 1, 1, 0, 8, 8, 1),
    CONV2D(2, 24, 5, 7, 16, 1, 1, 0, 5, 7, 0), /* 1x1: a strided batch of products through cuBLAS */
    CONV2D(1, 16, 16, 16, 24, 3, 2, 1, 8, 8, 1), /* downsample */
    CONV2D(1, 16, 16, 16, 16, 3, 2, 0, 8, 8, 1), /* bottom/right pad 1 */
    CONV2D(1, 8, 31, 16, 5, 3, 2, 0, 15, 8, 1),
    CONV2D_F16W(1, 16, 10, 12, 24, 3),
    CONV2D_F16W(1, 40, 9, 7, 24, 1),
    /* Columns past 1 MiB: in bands of positions on the -gemm-ws1 backends. */
    CONV2D(1, 32, 48, 40, 8, 3, 1, 1, 48, 40, 1),
    CONV2D(2, 16, 40, 40, 8, 3, 1, 1, 40, 40, 0),
    GROUP_NORM(2, 32, 8, 8, 8, 1),
    GROUP_NORM(1, 9, 5, 7, 3, 0),
    GROUP_NORM_INPLACE(1, 16, 16, 16, 4, 1),
    GROUP_NORM_INPLACE(2, 6, 3, 5, 2, 0),
    UPSAMPLE(8, 8, 16, 16),
    UPSAMPLE(3, 5, 7, 11),
    CONCAT(16, 8),
    TRANSPOSE(2, 16, 64),
    TRANSPOSE(3, 33, 65),
    GAUSSIAN(1),
    GAUSSIAN(0),
#else
    LINEAR(154, 320, 768, 1),
    LINEAR(2048, 1280, 320, 1),
    LINEAR(7, 33, 5, 0),
    LINEAR_REWRITTEN(),
    LINEAR_F16W(154, 320, 768),
    LINEAR_F16W(7, 33, 5),
    LAYER_NORM(154, 768),
    LAYER_NORM(7, 33),
    LAYER_NORM(4096, 320),
    ATTENTION(2, 4096, 4096, 8, 40, 0),
    ATTENTION(2, 4096, 77, 8, 40, 0),
    ATTENTION(2, 77, 77, 12, 64, 1),
    ATTENTION(2, 1024, 1024, 8, 80, 0),
    ATTENTION(2, 256, 256, 8, 160, 0),
    ATTENTION(1, 100, 37, 3, 33, 0),
    ATTENTION(1, 65, 65, 2, 100, 1),
    ATTENTION(2, 64, 64, 8, 160, 0), /* the UNet's innermost self-attention at 512x512 */
    ATTENTION(2, 64, 77, 8, 160, 0), /* and its cross-attention */
    ATTENTION(1, 5, 130, 2, 8, 0),   /* fewer queries than a warp's 16 rows, keys past two tiles */
    ATTENTION(1, 130, 130, 2, 120, 1),
#ifdef SDW_HAVE_CUDA
    ATTENTION_TC(2, 4096, 77, 8, 40, 0),
    ATTENTION_TC(2, 256, 256, 8, 160, 0),
    ATTENTION_TC(2, 77, 77, 12, 64, 1),
    ATTENTION_TC(1, 100, 37, 3, 33, 0),
    ATTENTION_TC(1, 129, 129, 1, 1, 1),
    ATTENTION_SIMT(),
#endif
    /* Head dimensions above the fused kernel's 160 go through cuBLAS: the
     * VAE's mid-block attention (one head of 512 over 64x64 tokens), and odd
     * sizes with and without the causal mask. */
    ATTENTION(1, 4096, 4096, 1, 512, 0),
    ATTENTION(2, 37, 50, 3, 161, 0),
    ATTENTION(1, 45, 45, 2, 200, 1),
    /* Scores past fp16's range, as SD 2.1's (upcast_attention): its
     * self-attention at 768x768 in the first block (5 heads of 64 over 96x96
     * tokens) and its cross-attention; then cuBLAS's path. */
    ATTENTION_BIG(1, 9216, 9216, 5, 64),
    ATTENTION_BIG(2, 9216, 77, 5, 64),
    ATTENTION_BIG(1, 1024, 1024, 1, 256),
    ACT(SDW_ACT_SILU, 1 << 20),
    ACT(SDW_ACT_GELU, 1000003),
    ACT(SDW_ACT_QUICK_GELU, 77 * 3072),
    ADD(1000003),
    SCALE(1000003),
    GEGLU(300),
    ADD_CHANNEL(2, 320, 9, 13),
    EMBED(1),
    EMBED(0),
    CONV2D(2, 320, 32, 32, 320, 3, 1, 1, 32, 32, 1),
    CONV2D(2, 1280, 8, 8, 1280, 3, 1, 1, 8, 8, 1), /* the UNet's innermost: 128 positions, 11520 deep */
    CONV2D(2, 4, 64, 64, 320, 3, 1, 1, 64, 64, 1),
    CONV2D(2, 9, 24, 40, 32, 3, 1, 1, 24, 40, 0),
    CONV2D(2, 640, 16, 16, 320, 1, 1, 0, 16, 16, 1),
    CONV2D(2, 2560, 8, 8, 1280, 1, 1, 0, 8, 8, 0),
    CONV2D(1, 128, 64, 64, 128, 3, 2, 1, 32, 32, 1),    /* UNet downsample */
    CONV2D(1, 64, 64, 64, 64, 3, 2, 0, 32, 32, 1),      /* VAE encoder: bottom/right pad 1 */
    CONV2D(1, 8, 31, 16, 5, 3, 2, 0, 15, 8, 1),         /* odd sizes, implied pad 0 and 1 */
    CONV2D(1, 128, 512, 512, 3, 3, 1, 1, 512, 512, 1), /* the VAE decoder's last conv at 512x512 */
    CONV2D_F16W(2, 64, 20, 24, 96, 3),
    CONV2D_F16W(1, 40, 9, 7, 24, 1),
    GROUP_NORM(2, 320, 32, 32, 32, 1),
    GROUP_NORM(2, 320, 32, 32, 32, 0),
    GROUP_NORM(1, 9, 5, 7, 3, 1),
    GROUP_NORM_INPLACE(1, 128, 512, 512, 32, 1), /* the VAE decoder's last norm: 33.5M elements */
    GROUP_NORM_INPLACE(2, 6, 3, 5, 2, 0),
    UPSAMPLE(16, 16, 32, 32),
    UPSAMPLE(3, 5, 7, 11),
    CONCAT(320, 16),
    TRANSPOSE(2, 320, 4096),
    TRANSPOSE(3, 33, 65),
    GAUSSIAN(1),
    GAUSSIAN(0),
#endif
#ifdef SDW_HAVE_CUDA
    CUDA_KERNEL_ARGS(),
#endif
};
#define NCASES (int)(sizeof cases / sizeof *cases)

/* -o and -b, NULL when not given. */
static const char *only_op, *only_backend;

#ifdef SDW_HAVE_CUDA
/* Whether -b selects the backend `name`: it is -b's argument, or starts with
 * it and a '-'. */
static int backend_selected(const char *name)
{
    if (!only_backend)
        return 1;
    size_t n = strlen(only_backend);
    return !strncmp(name, only_backend, n) && (name[n] == '\0' || name[n] == '-');
}

static int case_selected(const bo_case *c, int group)
{
    if (only_op && strcmp(c->op, only_op))
        return 0;
    return group == 0 || (c->flags & BO_CONV);
}

static void backend_name(char *buf, size_t len, int group, int p)
{
    snprintf(buf, len, "cuda-%s%s", prec_name[p], groups[group].suffix);
}
#endif

static int usage(const char *prog, const char *why)
{
    if (why)
        fprintf(stderr, "%s: %s\n", prog, why);
    fprintf(stderr, "usage: %s [-o OP] [-b BACKEND] [--list]\n", prog);
    return 2;
}

/* The backends and cases this build has, without opening anything. */
static int list(void)
{
    printf("backends:\n  cpu (the reference)\n");
#ifdef SDW_HAVE_CUDA
    for (int g = 0; g < NGROUPS; g++)
        for (int p = 0; p < NPREC; p++) {
            char name[32];
            backend_name(name, sizeof name, g, p);
            printf("  %s%s%s%s%s%s\n", name, g ? " (SDW_CUDA_CONV=" : "", g ? groups[g].conv : "",
                   groups[g].ws ? " SDW_CUDA_WORKSPACE_MIB=" : "", groups[g].ws ? groups[g].ws : "",
                   g ? "; conv2d only)" : "");
        }
#endif
    printf("cases (op: name):\n");
    for (int i = 0; i < NCASES; i++) {
        char label[160];
        cases[i].label(&cases[i], label, sizeof label);
        printf("  %s: %s\n", cases[i].op, label);
    }
    return 0;
}

#ifdef SDW_HAVE_CUDA
static void close_group(void)
{
    for (int p = 0; p < NPREC; p++) {
        sdw_backend_destroy(gpu[p]);
        gpu[p] = NULL;
    }
}

/* Opens the selected backends of group g, one TAP line each; -1 when one
 * failed (its cases are not run) or none is selected. */
static int open_group(int g)
{
    const char *const env[][2] = {{"SDW_CUDA_CONV", groups[g].conv}, {"SDW_CUDA_WORKSPACE_MIB", groups[g].ws}};
    int opened = 0, failed = 0;
    for (int p = 0; p < NPREC; p++) {
        backend_name(gpu_name[p], sizeof gpu_name[p], g, p);
        if (!backend_selected(gpu_name[p]))
            continue;
        sdw_error e;
        /* The call first: the message's arguments must see its result. */
        int rc = cuda_open(&gpu[p], 0, (sdw_precision)p, env, 2, &e);
        tap_ok(rc == 0, "%s%s%s%s%s%s opens%s%s", gpu_name[p], g ? " (SDW_CUDA_CONV=" : "", g ? groups[g].conv : "",
               groups[g].ws ? " SDW_CUDA_WORKSPACE_MIB=" : "", groups[g].ws ? groups[g].ws : "", g ? ")" : "",
               rc ? ": " : "", rc ? e.msg : "");
        if (rc)
            failed = 1;
        else
            opened = 1;
    }
    if (failed || !opened) {
        close_group();
        return -1;
    }
    return 0;
}

/* Every selected case on every selected CUDA backend, against the CPU. */
static void run_cuda(void)
{
    cudaError_t crc = cudaGetDeviceCount(&ndevices);
    sdw_error e;
    if (crc != cudaSuccess || ndevices == 0) {
        sdw_backend *be = NULL;
        int rc = sdw_backend_cuda(&be, 0, SDW_PREC_FP32, &e);
        tap_ok(rc == SDW_EDEVICE && be == NULL && e.msg[0], "without a device the backend refuses: %s",
               rc ? e.msg : "(it started)");
        tap_skip("no CUDA device (%s)", crc != cudaSuccess ? cudaGetErrorString(crc) : "none found");
        return;
    }
    ok_so_far = 1;
    for (int g = 0; g < NGROUPS; g++) {
        int any = 0;
        for (int i = 0; i < NCASES && !any; i++)
            any = case_selected(&cases[i], g);
        if (!any || open_group(g))
            continue;
        for (int i = 0; i < NCASES; i++) {
            if (!case_selected(&cases[i], g))
                continue;
            char label[160];
            cases[i].label(&cases[i], label, sizeof label);
            cases[i].run(&cases[i], label);
        }
        close_group();
    }
    if (!tap_n)
        tap_skip("no case of -o %s runs on -b %s", only_op ? only_op : "(any)", only_backend ? only_backend : "(any)");
}
#endif

int main(int argc, char **argv)
{
    int listing = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list"))
            listing = 1;
        else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            only_op = argv[++i];
        else if (!strcmp(argv[i], "-b") && i + 1 < argc)
            only_backend = argv[++i];
        else
            return usage(argv[0], strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? "unknown argument" : NULL);
    }
    /* A misspelt op or backend would otherwise run nothing and pass. */
    int known = !only_op;
    for (int i = 0; i < NCASES && !known; i++)
        known = !strcmp(cases[i].op, only_op);
    if (!known)
        return usage(argv[0], "no such op (--list shows them)");
    known = !only_backend || !strcmp(only_backend, "cpu");
#ifdef SDW_HAVE_CUDA
    for (int g = 0; g < NGROUPS && !known; g++)
        for (int p = 0; p < NPREC && !known; p++) {
            char name[32];
            backend_name(name, sizeof name, g, p);
            known = backend_selected(name);
        }
#endif
    if (!known)
        return usage(argv[0], "no such backend (--list shows them)");
    if (listing)
        return list();

    sdw_error e;
    if (sdw_backend_cpu(&cpu, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
#ifdef SDW_HAVE_CUDA
    if (only_backend && !strcmp(only_backend, "cpu"))
        tap_skip("-b cpu: the CPU is the reference, nothing to compare with it");
    else
        run_cuda();
#else
    tap_skip("no backend beside the CPU in this build, nothing to compare with it (tests/test_ops checks the CPU "
             "against double precision)");
#endif
    sdw_backend_destroy(cpu);
    return tap_done();
}
