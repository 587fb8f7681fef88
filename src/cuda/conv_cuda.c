/* The CUDA backend's convolutions. Each shape is planned once, on the real
 * buffers: cuDNN's best algorithm against im2col and one cuBLAS product,
 * timed alike, the faster kept (SDW_CUDA_CONV forces one way); 1x1
 * convolutions are always a cuBLAS product. */
#include "sdw-build.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "cuda/cuda_internal.h"

static void plan_destroy(conv_plan *p)
{
    cudnnDestroyTensorDescriptor(p->xd);
    cudnnDestroyTensorDescriptor(p->yd);
    cudnnDestroyFilterDescriptor(p->wd);
    cudnnDestroyConvolutionDescriptor(p->cd);
}

void sdw_cuda_conv_plans_free(cuda_be *c)
{
    for (size_t i = 0; i < c->plans.n; i++)
        plan_destroy(&c->plans.v[i]);
    sdw_vec_free(&c->plans);
}

static int ensure_ws(cuda_be *c, size_t bytes, sdw_error *e)
{
    if (bytes <= c->ws_bytes)
        return SDW_OK;
    /* A live graph's convolutions keep the old workspace's address. */
    sdw_devmem_retire(c->mem, c->ws);
    c->ws = NULL;
    c->ws_bytes = 0;
    int rc = dev_alloc(c, bytes, &c->ws, e);
    if (rc)
        return rc;
    c->ws_bytes = bytes;
    return SDW_OK;
}

/* For b images, positions p0..p0 + np - 1 of their y (o x ytotal each) =
 * w (o x rows) cols[b] (rows x np), one strided batch. Column-major that is
 * y^T = cols^T w^T: np x o from np x rows and rows x o, leading dimensions
 * np, rows and ytotal. */
static int conv_gemm(cuda_be *c, const void *cols, const void *w, void *y, int64_t b, int64_t rows, int64_t np,
                     int64_t o, int64_t p0, int64_t ytotal, sdw_error *e)
{
    float alpha = 1.0f, beta = 0.0f;
    cudaDataType_t t = blas_type(c->dtype);
    void *yp = (char *)y + (size_t)p0 * dtype_size(c->dtype);
    CUBLAS(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)np, (int)o, (int)rows, &alpha, cols, t,
                                      (int)np, rows * np, w, t, (int)rows, 0, &beta, yp, t, (int)ytotal, o * ytotal,
                                      (int)b, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return SDW_OK;
}

/* Runs a planned convolution of x by w into y (no bias). The columns'
 * product is the 1x1 one (conv1x1) over ch * kh * kw rows; where the
 * columns of every image do not fit in the workspace at once, they are
 * made and multiplied a band of output positions (p->band) of one image at
 * a time. */
static int conv_run(cuda_be *c, const conv_plan *p, const void *x, const void *w, void *y, sdw_error *e)
{
    const conv_shape *k = &p->key;
    if (!p->gemm) {
        float alpha = 1.0f, beta = 0.0f;
        CUDNN(cudnnConvolutionForward(c->dnn, &alpha, p->xd, x, p->wd, w, p->cd, p->algo, c->ws, p->ws_bytes, &beta,
                                      p->yd, y));
        return SDW_OK;
    }
    int64_t b = k->b, ch = k->ch, oh = k->oh, ow = k->ow, np = oh * ow, rows = ch * k->kh * k->kw;
    if (p->whole) {
        CU(sdw_k_im2col(x, c->ws, b, ch, k->h, k->w, k->kh, k->kw, oh, ow, k->stride, k->pad_h, k->pad_w, 0, np,
                        c->dtype, c->stream));
        return conv_gemm(c, c->ws, w, y, b, rows, np, k->o, 0, np, e);
    }
    size_t ds = dtype_size(c->dtype);
    for (int64_t i = 0; i < b; i++) {
        const void *xi = (const char *)x + (size_t)(i * ch * k->h * k->w) * ds;
        void *yi = (char *)y + (size_t)(i * k->o * np) * ds;
        for (int64_t p0 = 0; p0 < np; p0 += p->band) {
            int64_t n = np - p0 < p->band ? np - p0 : p->band;
            CU(sdw_k_im2col(xi, c->ws, 1, ch, k->h, k->w, k->kh, k->kw, oh, ow, k->stride, k->pad_h, k->pad_w, p0,
                            n, c->dtype, c->stream));
            int rc = conv_gemm(c, c->ws, w, yi, 1, rows, n, k->o, p0, np, e);
            if (rc)
                return rc;
        }
    }
    return SDW_OK;
}

/* Seconds per run of the plan, the best of three after one to warm up,
 * each waited for: cuDNN's own timings cannot be compared with a cuBLAS
 * product's, so both ways are timed alike. */
static int conv_time(cuda_be *c, const conv_plan *p, const void *x, const void *w, void *y, double *secs,
                     sdw_error *e)
{
    *secs = INFINITY;
    for (int i = 0; i < 4; i++) {
        double t0 = sdw_now_s();
        int rc = conv_run(c, p, x, w, y, e);
        if (rc)
            return rc;
        CU(cudaStreamSynchronize(c->stream));
        double dt = sdw_now_s() - t0;
        if (i && dt < *secs)
            *secs = dt;
    }
    return SDW_OK;
}

/* cuDNN's descriptors for the shape, checked against the output size the
 * op was given. */
static int plan_describe(conv_plan *p, sdw_error *e)
{
    const conv_shape *k = &p->key;
    cudnnDataType_t t = k->dtype == SDW_K_F16    ? CUDNN_DATA_HALF
                        : k->dtype == SDW_K_BF16 ? CUDNN_DATA_BFLOAT16
                                                 : CUDNN_DATA_FLOAT;
    CUDNN(cudnnCreateTensorDescriptor(&p->xd));
    CUDNN(cudnnCreateTensorDescriptor(&p->yd));
    CUDNN(cudnnCreateFilterDescriptor(&p->wd));
    CUDNN(cudnnCreateConvolutionDescriptor(&p->cd));
    CUDNN(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NCHW, t, k->b, k->ch, k->h, k->w));
    CUDNN(cudnnSetFilter4dDescriptor(p->wd, t, CUDNN_TENSOR_NCHW, k->o, k->ch, k->kh, k->kw));
    CUDNN(cudnnSetConvolution2dDescriptor(p->cd, k->pad_h, k->pad_w, k->stride, k->stride, 1, 1,
                                          CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN(cudnnSetConvolutionMathType(p->cd, k->dtype == SDW_K_F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
    int on, oc, oh, ow;
    CUDNN(cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &on, &oc, &oh, &ow));
    if (on != k->b || oc != k->o || oh != k->oh || ow != k->ow)
        return sdw_fail(e, SDW_EDEVICE, "conv2d: cuDNN output %dx%dx%dx%d, expected %dx%dx%dx%d", on, oc, oh, ow,
                        k->b, k->o, k->oh, k->ow);
    CUDNN(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NCHW, t, on, oc, oh, ow));
    return SDW_OK;
}

/* cuDNN times its candidates on the real buffers (x, w, y); the fastest
 * that fits the workspace is taken, and in float32 only direct algorithms
 * without TF32 tensor-core math qualify, so that float32 results match the
 * CPU reference. */
static int plan_pick_cudnn(cuda_be *c, conv_plan *p, const void *x, const void *w, void *y, sdw_error *e)
{
    const conv_shape *k = &p->key;
    int f32 = k->dtype == SDW_K_F32;
    int rc = ensure_ws(c, c->ws_cap, e);
    if (rc)
        return rc;
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int found = 0;
    CUDNN(cudnnFindConvolutionForwardAlgorithmEx(c->dnn, p->xd, x, p->wd, w, p->cd, p->yd, y,
                                                 CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf, c->ws,
                                                 c->ws_bytes));
    /* Float32 also keeps to the algorithms that sum the products directly:
     * the FFT and Winograd ones transform the operands and round the
     * transforms (an H100 picked one for the UNet's 8x8 layers that was
     * 2.2e-5 off the CPU at 11520 products per output). */
    int pick = -1;
    for (int i = 0; i < found && pick < 0; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= c->ws_cap &&
            (!f32 || ((perf[i].mathType == CUDNN_FMA_MATH || perf[i].mathType == CUDNN_DEFAULT_MATH) &&
                      (perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
                       perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
                       perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM ||
                       perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT))))
            pick = i;
    if (pick < 0)
        return sdw_fail(e, SDW_EDEVICE, "conv2d: cuDNN has no algorithm for %dx%dx%dx%d * %dx%dx%dx%d (%s)", k->b,
                        k->ch, k->h, k->w, k->o, k->ch, k->kh, k->kw,
                        f32 ? "float32 without TF32" : "tensor cores");
    /* DEFAULT_MATH would allow TF32 on Ampere and later: float32 stays FMA. */
    CUDNN(cudnnSetConvolutionMathType(p->cd, f32 ? CUDNN_FMA_MATH : perf[pick].mathType));
    p->algo = perf[pick].algo;
    p->ws_bytes = perf[pick].memory;
    return SDW_OK;
}

/* im2col and a cuBLAS product instead, where it is faster (cuDNN's NCHW
 * algorithms are slow on the UNet's small, wide layers) or SDW_CUDA_CONV
 * says gemm: the columns of every image at once, or else of one image a
 * band of positions at a time, a multiple of 256 (whole GEMM tiles) where it
 * can. */
static int plan_weigh_gemm(cuda_be *c, conv_plan *p, const void *x, const void *w, void *y, sdw_error *e)
{
    const conv_shape *k = &p->key;
    int64_t np = (int64_t)k->oh * k->ow;
    size_t per_pos = (size_t)k->ch * (size_t)(k->kh * k->kw) * dtype_size(k->dtype);
    int whole = (size_t)k->b * (size_t)np * per_pos <= c->ws_cap;
    int64_t band = np;
    if (!whole) {
        band = (int64_t)(c->ws_cap / per_pos);
        band = band > np ? np : band > 256 ? band / 256 * 256 : band;
    }
    if (c->conv_mode == CONV_CUDNN || band <= 0)
        return SDW_OK;
    conv_plan g = *p;
    g.gemm = 1;
    g.whole = whole;
    g.band = band;
    g.ws_bytes = (size_t)(whole ? k->b : 1) * (size_t)band * per_pos;
    double t_dnn = 0, t_gemm = 0;
    int rc;
    if (c->conv_mode == CONV_AUTO &&
        ((rc = conv_time(c, p, x, w, y, &t_dnn, e)) || (rc = conv_time(c, &g, x, w, y, &t_gemm, e))))
        return rc;
    if (c->conv_mode == CONV_GEMM || t_gemm < t_dnn) {
        p->gemm = 1;
        p->whole = g.whole;
        p->band = g.band;
        p->ws_bytes = g.ws_bytes;
    }
    return SDW_OK;
}

/* The plan for a shape, made the first time it is seen (cuDNN's best
 * algorithm, then timed against im2col + cuBLAS; SDW_CUDA_CONV=cudnn or gemm
 * takes one way throughout) and kept for the backend's life. */
static int conv_plan_get(cuda_be *c, const conv_shape *key, const void *x, const void *w, void *y, conv_plan **out,
                         sdw_error *e)
{
    for (size_t i = 0; i < c->plans.n; i++)
        if (!memcmp(&c->plans.v[i].key, key, sizeof *key)) {
            *out = &c->plans.v[i];
            return SDW_OK;
        }
    if (sdw_devmem_recording(c->mem))
        return sdw_fail(e, SDW_EUNSUPPORTED, "conv2d: no algorithm chosen yet for this shape, and choosing one "
                                             "(timing candidates) cannot be captured; run the step once first");
    /* Room first, so that a plan made is never lost to a failed push. */
    int rc = sdw_vec_reserve(&c->plans, c->plans.n + 1, e);
    if (rc)
        return rc;
    conv_plan *p = &c->plans.v[c->plans.n];
    memset(p, 0, sizeof *p);
    p->key = *key;
    if ((rc = plan_describe(p, e)) || (rc = plan_pick_cudnn(c, p, x, w, y, e)) ||
        (rc = plan_weigh_gemm(c, p, x, w, y, e))) {
        plan_destroy(p);
        return rc;
    }
    c->plans.n++;
    *out = p;
    return SDW_OK;
}

/* A 1x1 convolution is a product per image, y[b] (o x hw) = w (o x ch) x[b]
 * (ch x hw), taken as one strided batch through cuBLAS (conv_gemm): cuDNN's
 * NCHW algorithms for these shapes (the UNet's shortcuts, a few hundred
 * positions over thousands of channels) ran at 4 to 15 TFLOP/s on an H100.
 * The bias is added after, as on cuDNN's path. */
static int conv1x1(cuda_be *c, const float *x, const float *w, const float *bias, float *y, int64_t b, int64_t ch,
                   int64_t hw, int64_t o, sdw_error *e)
{
    int rc = conv_gemm(c, x, w, y, b, ch, hw, o, 0, hw, e);
    if (!rc && bias)
        CU(sdw_k_add_rows(y, bias, y, b * o, hw, o, c->dtype, c->stream));
    return rc;
}

int sdw_cuda_conv2d(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                       int64_t b, int64_t ch, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw, int64_t oh,
                       int64_t ow, int stride, int pad_t, int pad_l, sdw_error *e)
{
    cuda_be *c = priv(be);
    int rc = no_lowp(w_lowp, "conv2d", e);
    if (rc)
        return rc;
    int64_t dims[] = {b, ch, h, wd, o, kh, kw, oh, ow, b * ch * h * wd, b * o * oh * ow};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++)
        if (dims[i] > INT_MAX)
            return too_big(e, "conv2d", dims[i]);
    /* cuDNN pads symmetrically. When the output size implies other bottom or
     * right padding (the VAE encoder's 0,1 downsampling), the input is padded
     * here and convolved without padding. */
    int64_t sym_h = h + 2 * pad_t >= kh ? (h + 2 * pad_t - kh) / stride + 1 : -1;
    int64_t sym_w = wd + 2 * pad_l >= kw ? (wd + 2 * pad_l - kw) / stride + 1 : -1;
    int explicit_pad = sym_h != oh || sym_w != ow;
    int64_t hp = explicit_pad ? (oh - 1) * stride + kh : h, wp = explicit_pad ? (ow - 1) * stride + kw : wd;
    if (hp > INT_MAX || wp > INT_MAX || b * ch * hp * wp > INT_MAX)
        return too_big(e, "conv2d", b * ch * hp * wp);
    int dt = c->dtype;
    if (kh == 1 && kw == 1 && stride == 1 && !explicit_pad && pad_t == 0 && pad_l == 0)
        return conv1x1(c, x, w, bias, y, b, ch, h * wd, o, e);
    const void *xin = x;
    void *xs = NULL;
    if (explicit_pad) {
        if ((rc = dev_alloc(c, (size_t)(b * ch * hp * wp) * dtype_size(dt), &xs, e)))
            return rc;
        CU_OR(sdw_k_pad(x, xs, b * ch, h, wd, hp, wp, pad_t, pad_l, dt, c->stream), dev_free(c, xs));
        xin = xs;
    }
    conv_shape key = {dt, (int)b, (int)ch, (int)hp, (int)wp, (int)o, (int)kh, (int)kw, explicit_pad ? 0 : pad_t,
                      explicit_pad ? 0 : pad_l, stride, (int)oh, (int)ow};
    conv_plan *p = NULL;
    if ((rc = conv_plan_get(c, &key, xin, w, y, &p, e)) || (rc = ensure_ws(c, p->ws_bytes, e)) ||
        (rc = conv_run(c, p, xin, w, y, e)))
        goto out;
    /* In place, one pass over y: bias[o] for every image's channel o. */
    if (bias) {
        cudaError_t cr = sdw_k_add_rows(y, bias, y, b * o, oh * ow, o, dt, c->stream);
        if (cr != cudaSuccess)
            rc = sdw_cuda_err(e, cr, "sdw_k_add_rows", __FILE__, __LINE__);
    }
out:
    dev_free(c, xs);
    return rc;
}
