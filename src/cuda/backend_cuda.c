/* The CUDA backend: cuBLAS for matrix products, cuDNN for convolutions, our
 * kernels (kernels/) for everything else, all on one stream.
 *
 * Every tensor is stored in one type, the storage type of the precision:
 * float32 in fp32; IEEE half in fp16 and bfloat16 in bf16, activations and
 * weights alike, as diffusers runs a model it has cast to torch.float16.
 * The op interface's float pointers are then handles to 2-byte elements:
 * uploads and downloads convert on the host (rounding to nearest even, as
 * the kernels do when they store), and no op converts anything on the
 * device. Every product and convolution accumulates in float32 and every
 * kernel computes in float32; what a low precision rounds is each stored
 * value, once. float32 products exclude TF32, so that fp32 matches the CPU
 * reference.
 *
 * Memory comes from a caching allocator (devmem.h): freed blocks are kept by
 * exact (rounded) size and handed out again, so once the first step has run
 * every later step reuses the same blocks and never calls cudaMalloc. Reuse
 * is safe without events because every user of a block runs on the one
 * stream. */
#include "sdw-build.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "cuda/cuda_internal.h"

/* Convolution algorithms may use this much scratch unless
 * SDW_CUDA_WORKSPACE_MIB says otherwise; cuDNN's search is limited to it. */
#define CUDA_WS_MIB 256
/* cuBLAS's workspace: what NVIDIA recommends for Hopper. */
#define CUDA_BLAS_WS_BYTES ((size_t)32 << 20)

int sdw_cuda_err(sdw_error *e, cudaError_t rc, const char *call, const char *file, int line)
{
    return sdw_fail(e, rc == cudaErrorMemoryAllocation ? SDW_ENOMEM : SDW_EDEVICE, "%s:%d: %s: %s (%s)", file, line,
                    call, cudaGetErrorString(rc), cudaGetErrorName(rc));
}

int sdw_cublas_err(sdw_error *e, cublasStatus_t rc, const char *call, const char *file, int line)
{
    return sdw_fail(e, rc == CUBLAS_STATUS_ALLOC_FAILED ? SDW_ENOMEM : SDW_EDEVICE, "%s:%d: %s: %s", file, line, call,
                    cublasGetStatusString(rc));
}

int sdw_cudnn_err(sdw_error *e, cudnnStatus_t rc, const char *call, const char *file, int line)
{
    return sdw_fail(e, rc == CUDNN_STATUS_ALLOC_FAILED ? SDW_ENOMEM : SDW_EDEVICE, "%s:%d: %s: %s", file, line, call,
                    cudnnGetErrorString(rc));
}

/* The allocator's hooks (devmem.h): cudaMalloc and cudaFree. */
static int raw_alloc(void *ctx, size_t bytes, void **p, sdw_error *e)
{
    cuda_be *c = ctx;
    cudaError_t cr = cudaMalloc(p, bytes);
    if (cr == cudaSuccess)
        return SDW_OK;
    cudaGetLastError(); /* an allocation failure is not sticky: clear it */
    size_t fr = 0, total = 0;
    cudaMemGetInfo(&fr, &total);
    return sdw_fail(e, cr == cudaErrorMemoryAllocation ? SDW_ENOMEM : SDW_EDEVICE,
                    "CUDA device %d: cannot allocate %zu MiB (%s; %zu of %zu MiB free, %zu MiB held by sdworker)",
                    c->device, bytes >> 20, cudaGetErrorString(cr), fr >> 20, total >> 20,
                    sdw_devmem_reserved(c->mem) >> 20);
}

static void raw_free(void *ctx, void *p)
{
    (void)ctx;
    cudaFree(p);
}

static int cuda_alloc(sdw_backend *be, size_t n, float **p, sdw_error *e)
{
    cuda_be *c = priv(be);
    return dev_alloc(c, n * dtype_size(c->dtype), (void **)p, e);
}

static void cuda_free(sdw_backend *be, float *p)
{
    dev_free(priv(be), p);
}

/* n floats in the storage type, into a new host buffer (free it). */
static int to_storage(const cuda_be *c, const float *src, size_t n, uint16_t **out, sdw_error *e)
{
    uint16_t *h = malloc(n ? n * sizeof *h : 1);
    if (!h)
        return sdw_fail(e, SDW_ENOMEM, "out of host memory converting %zu values", n);
    for (size_t i = 0; i < n; i++)
        h[i] = c->dtype == SDW_K_F16 ? sdw_f32_to_f16(src[i]) : sdw_f32_to_bf16(src[i]);
    *out = h;
    return SDW_OK;
}

static int cuda_upload(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e)
{
    cuda_be *c = priv(be);
    /* From pageable memory the call returns once the source has been
     * staged, so the caller may reuse src (and we may free h) at once. */
    if (c->dtype == SDW_K_F32) {
        CU(cudaMemcpyAsync(dst, src, n * sizeof *src, cudaMemcpyHostToDevice, c->stream));
        return SDW_OK;
    }
    uint16_t *h = NULL;
    int rc = to_storage(c, src, n, &h, e);
    if (rc)
        return rc;
    cudaError_t cr = cudaMemcpyAsync(dst, h, n * sizeof *h, cudaMemcpyHostToDevice, c->stream);
    free(h);
    if (cr != cudaSuccess)
        return sdw_cuda_err(e, cr, "cudaMemcpyAsync", __FILE__, __LINE__);
    return SDW_OK;
}

static int cuda_download(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e)
{
    cuda_be *c = priv(be);
    uint16_t *h = NULL;
    if (c->dtype != SDW_K_F32 && !(h = malloc(n ? n * sizeof *h : 1)))
        return sdw_fail(e, SDW_ENOMEM, "out of host memory converting %zu values", n);
    cudaError_t cr = cudaMemcpyAsync(h ? (void *)h : (void *)dst, src, n * dtype_size(c->dtype),
                                     cudaMemcpyDeviceToHost, c->stream);
    /* The synchronisation is also where an earlier asynchronous kernel
     * failure surfaces. */
    if (cr == cudaSuccess)
        cr = cudaStreamSynchronize(c->stream);
    if (cr == cudaSuccess && h)
        for (size_t i = 0; i < n; i++)
            dst[i] = c->dtype == SDW_K_F16 ? sdw_f16_to_f32(h[i]) : sdw_bf16_to_f32(h[i]);
    free(h);
    if (cr != cudaSuccess)
        return sdw_cuda_err(e, cr, "cudaMemcpyAsync/cudaStreamSynchronize", __FILE__, __LINE__);
    return SDW_OK;
}

/* A weight given as halves is stored like any tensor; fp16 takes the halves
 * as they are, the other types convert them through float32 (every half is
 * exact as a float). */
static int cuda_weight_f16(sdw_backend *be, const uint16_t *src, size_t n, float **p, int *lowp, sdw_error *e)
{
    cuda_be *c = priv(be);
    *lowp = 0;
    int rc = cuda_alloc(be, n, p, e);
    if (rc)
        return rc;
    if (c->dtype == SDW_K_F16) {
        cudaError_t cr = cudaMemcpyAsync(*p, src, n * sizeof *src, cudaMemcpyHostToDevice, c->stream);
        if (cr != cudaSuccess)
            rc = sdw_cuda_err(e, cr, "cudaMemcpyAsync", __FILE__, __LINE__);
    } else {
        float *host = malloc(n ? n * sizeof *host : 1);
        if (!host)
            rc = sdw_fail(e, SDW_ENOMEM, "out of memory converting a weight");
        for (size_t i = 0; host && i < n; i++)
            host[i] = sdw_f16_to_f32(src[i]);
        if (host)
            rc = cuda_upload(be, *p, host, n, e);
        free(host);
    }
    if (rc) {
        cuda_free(be, *p);
        *p = NULL;
    }
    return rc;
}

static int cuda_linear(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                       int64_t m, int64_t n, int64_t k, sdw_error *e)
{
    cuda_be *c = priv(be);
    int rc = no_lowp(w_lowp, "linear", e);
    if (rc)
        return rc;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return too_big(e, "linear", m > n ? (m > k ? m : k) : (n > k ? n : k));
    /* The bias goes in first and the product accumulates onto it in float32
     * (beta = 1), so that y is rounded to the storage type once. */
    float alpha = 1.0f, beta = 0.0f;
    if (bias) {
        CU(sdw_k_fill_rows(bias, y, m, n, c->dtype, c->stream));
        beta = 1.0f;
    }
    /* cuBLAS is column-major: row-major y[m,n] = x[m,k] w[n,k]^T is the
     * column-major n x m product op(w) x with w read as k x n transposed and
     * x as k x m, leading dimensions k, k and n. */
    cudaDataType_t t = blas_type(c->dtype);
    CUBLAS(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k, &alpha, w, t, (int)k, x, t, (int)k,
                        &beta, y, t, (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return SDW_OK;
}

static int cuda_layer_norm(sdw_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                           int64_t rows, int64_t n, float eps, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_layer_norm(x, gamma, beta, y, rows, n, eps, c->dtype, c->stream));
    return SDW_OK;
}

/* Score scratch of the attention that goes through cuBLAS, in floats
 * (128 MiB): query rows are taken in blocks whose scores for every head fit. */
#define CUDA_ATTN_SCRATCH ((int64_t)1 << 25)

/* Attention as the CPU backend computes it, for what the fused kernels do
 * not take: head dimensions above 160 (the VAE's one head of 512) or more
 * than 65535 (image, head) pairs. Per image and block of query rows, one
 * batched product over the heads gives the float32 scores scale * q k^T,
 * the softmax kernel normalises them into probabilities of the storage
 * type, and a second batched product multiplies by v. */
static int attention_gemm(cuda_be *c, const float *q, const float *k, const float *v, float *out, int64_t b,
                          int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal, sdw_error *e)
{
    int64_t cc = heads * d, qb = CUDA_ATTN_SCRATCH / (heads * tk);
    qb = qb < 1 ? 1 : qb > tq ? tq : qb;
    if (tk > INT_MAX || cc > INT_MAX || heads > INT_MAX || qb * tk > INT_MAX)
        return too_big(e, "attention", tk > cc ? tk : cc);
    size_t es = dtype_size(c->dtype), ns = (size_t)(heads * qb * tk);
    cudaDataType_t t = blas_type(c->dtype);
    void *s = NULL, *pr = NULL;
    int rc = dev_alloc(c, ns * sizeof(float), &s, e);
    if (rc)
        return rc;
    /* float32 probabilities overwrite their scores. */
    if (c->dtype == SDW_K_F32)
        pr = s;
    else if ((rc = dev_alloc(c, ns * es, &pr, e))) {
        dev_free(c, s);
        return rc;
    }
    float one = 1.0f, zero = 0.0f;
    for (int64_t bi = 0; !rc && bi < b; bi++)
        for (int64_t r0 = 0; !rc && r0 < tq; r0 += qb) {
            int64_t nr = tq - r0 < qb ? tq - r0 : qb;
            size_t qo = (size_t)((bi * tq + r0) * cc) * es, ko = (size_t)(bi * tk * cc) * es;
            const char *qh = (const char *)q + qo, *kh = (const char *)k + ko, *vh = (const char *)v + ko;
            char *oh = (char *)out + qo;
            /* Column-major, per head: s^T [tk, nr] = (k [tk, d] as d x tk)^T (q [nr, d] as d x nr);
             * then out^T [d, nr] = (v as d x tk) (p^T [tk, nr]). */
            cublasStatus_t st = cublasGemmStridedBatchedEx(
                c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)tk, (int)nr, (int)d, &scale, kh, t, (int)cc, d, qh, t,
                (int)cc, d, &zero, s, CUDA_R_32F, (int)tk, nr * tk, (int)heads, CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS) {
                rc = sdw_cublas_err(e, st, "cublasGemmStridedBatchedEx", __FILE__, __LINE__);
                break;
            }
            cudaError_t cr = sdw_k_softmax_rows(s, pr, heads * nr, tk, nr, r0, causal, c->dtype, c->stream);
            if (cr != cudaSuccess) {
                rc = sdw_cuda_err(e, cr, "sdw_k_softmax_rows", __FILE__, __LINE__);
                break;
            }
            st = cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, (int)nr, (int)tk, &one, vh, t,
                                            (int)cc, d, pr, t, (int)tk, nr * tk, &zero, oh, t, (int)cc, d,
                                            (int)heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS)
                rc = sdw_cublas_err(e, st, "cublasGemmStridedBatchedEx", __FILE__, __LINE__);
        }
    if (pr != s)
        dev_free(c, pr);
    dev_free(c, s);
    return rc;
}

static int cuda_attention(sdw_backend *be, const float *q, const float *k, const float *v, float *out, int64_t b,
                          int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale, int causal, sdw_error *e)
{
    cuda_be *c = priv(be);
    if (d > 160 || b * heads > 65535)
        return attention_gemm(c, q, k, v, out, b, tq, tk, heads, d, scale, causal, e);
    /* fp16 and bf16 run both products on tensor cores; float32, or
     * SDW_CUDA_ATTENTION=simt, the float32 kernel. */
    if (c->dtype != SDW_K_F32 && !c->attn_simt)
        CU(sdw_k_attention_tc(q, k, v, out, b, tq, tk, heads, d, scale, causal, c->dtype, c->stream));
    else
        CU(sdw_k_attention(q, k, v, out, b, tq, tk, heads, d, scale, causal, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_act(sdw_backend *be, const float *x, float *y, int64_t n, sdw_act act, sdw_error *e)
{
    cuda_be *c = priv(be);
    if (act != SDW_ACT_SILU && act != SDW_ACT_GELU && act != SDW_ACT_QUICK_GELU)
        return sdw_fail(e, SDW_EINVAL, "unknown activation %d", (int)act);
    CU(sdw_k_act(x, y, n, (int)act, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_add(sdw_backend *be, const float *a, const float *b, float *y, int64_t n, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_add(a, b, y, n, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_embed(sdw_backend *be, const float *table, const int32_t *ids, const float *pos, float *y,
                      int64_t rows, int64_t dim, int64_t tpos, sdw_error *e)
{
    cuda_be *c = priv(be);
    void *dids = NULL;
    int rc = dev_alloc(c, (size_t)rows * sizeof *ids, &dids, e);
    if (rc)
        return rc;
    CU_OR(cudaMemcpyAsync(dids, ids, (size_t)rows * sizeof *ids, cudaMemcpyHostToDevice, c->stream), dev_free(c, dids));
    CU_OR(sdw_k_embed(table, dids, pos, y, rows, dim, tpos, c->dtype, c->stream), dev_free(c, dids));
    dev_free(c, dids);
    return SDW_OK;
}

static int cuda_group_norm(sdw_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                           int64_t b, int64_t ch, int64_t n, int64_t groups, float eps, int silu, sdw_error *e)
{
    cuda_be *c = priv(be);
    /* One block: the float32 (mean, rstd) pairs, then the doubles of the
     * pieces' statistics, at an 8-byte boundary. */
    size_t sb = ((size_t)(b * groups) * 2 * sizeof(float) + 7) / 8 * 8;
    void *stats = NULL;
    int rc = dev_alloc(c, sb + (size_t)sdw_k_group_scratch(b, ch, n, groups) * sizeof(double), &stats, e);
    if (rc)
        return rc;
    double *part = (double *)((char *)stats + sb);
    CU_OR(sdw_k_group_stats(x, stats, part, b, ch, n, groups, eps, c->dtype, c->stream), dev_free(c, stats));
    CU_OR(sdw_k_group_apply(x, stats, gamma, beta, y, b, ch, n, groups, silu, c->dtype, c->stream), dev_free(c, stats));
    dev_free(c, stats);
    return SDW_OK;
}

static int cuda_upsample_nearest(sdw_backend *be, const float *x, float *y, int64_t bc, int64_t h, int64_t w,
                                 int64_t oh, int64_t ow, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_upsample_nearest(x, y, bc, h, w, oh, ow, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_concat(sdw_backend *be, const float *a, const float *cc, float *y, int64_t b, int64_t na, int64_t nc,
                       sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_concat(a, cc, y, b, na, nc, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_transpose(sdw_backend *be, const float *x, float *y, int64_t b, int64_t m, int64_t n, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_transpose(x, y, b, m, n, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_geglu(sdw_backend *be, const float *x, float *y, int64_t rows, int64_t n, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_geglu(x, y, rows, n, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_add_rows(sdw_backend *be, const float *x, const float *v, float *y, int64_t rows, int64_t n,
                         sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_add_rows(x, v, y, rows, n, rows, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_scale(sdw_backend *be, const float *x, float s, float *y, int64_t n, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_scale(x, s, y, n, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_gaussian(sdw_backend *be, const float *m, const float *noise, float s, float *y, int64_t b, int64_t n,
                         sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(sdw_k_gaussian(m, noise, s, y, b, n, c->dtype, c->stream));
    return SDW_OK;
}

static int cuda_sync(sdw_backend *be, sdw_error *e)
{
    CU(cudaStreamSynchronize(priv(be)->stream));
    return SDW_OK;
}

/* Graph capture. The allocator (devmem.h) tags the blocks a capture takes
 * and gives back and makes them the graph's own when it is kept, so nothing
 * outside it can be given memory that a replay writes; a capture that
 * leaves such a block live (a temporary the ops kept) is refused, and the
 * caller runs its ops directly. */
static size_t cuda_memory(sdw_backend *be, size_t *peak)
{
    cuda_be *c = priv(be);
    *peak = sdw_devmem_take_peak(c->mem);
    return sdw_devmem_reserved(c->mem);
}

static size_t cuda_available(sdw_backend *be)
{
    (void)be;
    size_t fr = 0, total = 0;
    if (cudaMemGetInfo(&fr, &total) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return fr;
}

/* The caching allocator keeps blocks by size, so the UNet's (released with
 * its recorded step) would stay reserved beside the VAE decoder's larger
 * ones, and the decoder's beside the next job's UNet: with the switch on,
 * the peak is the larger phase's alone, at the price of the next job's
 * first step and decode obtaining their blocks from the driver again. */
static void cuda_trim(sdw_backend *be)
{
    cuda_be *c = priv(be);
    if (c->trim)
        sdw_devmem_trim(c->mem);
}

static int cuda_graph_begin(sdw_backend *be, sdw_error *e)
{
    cuda_be *c = priv(be);
    if (!c->graphs)
        return sdw_fail(e, SDW_EUNSUPPORTED, "CUDA graphs are turned off (SDW_CUDA_GRAPHS=0)");
    if (sdw_devmem_recording(c->mem))
        return sdw_fail(e, SDW_EINVAL, "a capture is already being recorded");
    /* Relaxed: the allocator may still call cudaMalloc on the host side. */
    CU(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed));
    sdw_devmem_record_begin(c->mem);
    return SDW_OK;
}

static int cuda_graph_end(sdw_backend *be, int keep, void **out, sdw_error *e)
{
    cuda_be *c = priv(be);
    if (!sdw_devmem_recording(c->mem))
        return sdw_fail(e, SDW_EINVAL, "no capture is being recorded");
    cudaGraph_t g = NULL;
    cudaError_t cr = cudaStreamEndCapture(c->stream, &g);
    int rc = SDW_OK;
    if (cr != cudaSuccess) {
        cudaGetLastError();
        rc = sdw_cuda_err(e, cr, "cudaStreamEndCapture", __FILE__, __LINE__);
        keep = 0;
    }
    cuda_graph *cg = keep ? calloc(1, sizeof *cg) : NULL;
    if (keep && !cg) {
        rc = sdw_fail(e, SDW_ENOMEM, "out of host memory");
        keep = 0;
    }
    int mrc = sdw_devmem_record_end(c->mem, keep, keep ? &cg->owned : NULL, e);
    if (!rc && mrc)
        rc = mrc;
    if (!rc && keep) {
        cr = cudaGraphInstantiate(&cg->exec, g, 0);
        if (cr != cudaSuccess) {
            cudaGetLastError();
            rc = sdw_cuda_err(e, cr, "cudaGraphInstantiate", __FILE__, __LINE__);
            sdw_devmem_owned_release(c->mem, cg->owned);
        }
    }
    if (g)
        cudaGraphDestroy(g);
    if (rc || !keep) {
        free(cg);
        return rc;
    }
    *out = cg;
    return SDW_OK;
}

static int cuda_graph_launch(sdw_backend *be, void *g, sdw_error *e)
{
    cuda_be *c = priv(be);
    CU(cudaGraphLaunch(((cuda_graph *)g)->exec, c->stream));
    return SDW_OK;
}

static void cuda_graph_free(sdw_backend *be, void *g)
{
    cuda_be *c = priv(be);
    cuda_graph *cg = g;
    /* The last launch has finished (every step downloads its result, so
     * this costs nothing) before its exec goes; the blocks' next users come
     * after it on the one stream anyway. */
    cudaStreamSynchronize(c->stream);
    cudaGraphExecDestroy(cg->exec);
    sdw_devmem_owned_release(c->mem, cg->owned);
    free(cg);
}

static void cuda_destroy(sdw_backend *be)
{
    cuda_be *c = priv(be);
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    sdw_cuda_conv_plans_free(c);
    if (c->dnn)
        cudnnDestroy(c->dnn);
    if (c->blas)
        cublasDestroy(c->blas);
    sdw_devmem_destroy(c->mem);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static const sdw_backend_ops cuda_ops = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .weight_f16 = cuda_weight_f16,
    .available = cuda_available,
    .linear = cuda_linear,
    .layer_norm = cuda_layer_norm,
    .attention = cuda_attention,
    .act = cuda_act,
    .add = cuda_add,
    .embed = cuda_embed,
    .conv2d = sdw_cuda_conv2d,
    .group_norm = cuda_group_norm,
    .upsample_nearest = cuda_upsample_nearest,
    .concat = cuda_concat,
    .transpose = cuda_transpose,
    .geglu = cuda_geglu,
    .add_rows = cuda_add_rows,
    .scale = cuda_scale,
    .gaussian = cuda_gaussian,
    .sync = cuda_sync,
    .memory = cuda_memory,
    .trim = cuda_trim,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
    .destroy = cuda_destroy,
};

static int cuda_init(cuda_be *c, sdw_error *e)
{
    int count = 0;
    cudaError_t cr = cudaGetDeviceCount(&count);
    if (cr != cudaSuccess || count == 0)
        return sdw_fail(e, SDW_EDEVICE, "cuda:%d: no CUDA device: %s", c->device,
                        cr != cudaSuccess ? cudaGetErrorString(cr) : "the driver reports none");
    if (c->device < 0 || c->device >= count)
        return sdw_fail(e, SDW_ENOTFOUND, "cuda:%d: not present (%d CUDA devices found)", c->device, count);
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, c->device));
    if (prop.major < 8)
        return sdw_fail(e, SDW_EUNSUPPORTED, "cuda:%d (%s) is compute capability %d.%d; sdworker needs 8.0+",
                        c->device, prop.name, prop.major, prop.minor);
    CU(cudaSetDevice(c->device));
    /* The first runtime call that needs a context: a device that is busy
     * (exclusive-process mode) or out of memory fails here. */
    cr = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (cr != cudaSuccess)
        return sdw_fail(e, SDW_EDEVICE, "cuda:%d (%s) unavailable: %s (%s)", c->device, prop.name,
                        cudaGetErrorString(cr), cudaGetErrorName(cr));
    CUBLAS(cublasCreate(&c->blas));
    CUBLAS(cublasSetStream(c->blas, c->stream));
    /* No TF32 behind our back: fp32 products stay fp32. */
    CUBLAS(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    /* cuBLAS would otherwise allocate its workspace on first use, which a
     * capture cannot record. */
    int rc = dev_alloc(c, CUDA_BLAS_WS_BYTES, &c->blas_ws, e);
    if (rc)
        return rc;
    CUBLAS(cublasSetWorkspace(c->blas, c->blas_ws, CUDA_BLAS_WS_BYTES));
    CUDNN(cudnnCreate(&c->dnn));
    CUDNN(cudnnSetStream(c->dnn, c->stream));
    return SDW_OK;
}

int sdw_backend_cuda(sdw_backend **out, int device, sdw_precision prec, sdw_error *e)
{
    if (prec != SDW_PREC_FP32 && prec != SDW_PREC_FP16 && prec != SDW_PREC_BF16)
        return sdw_fail(e, SDW_EINVAL, "unknown precision %d", (int)prec);
    cuda_be *c = calloc(1, sizeof *c);
    if (!c)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    c->pub.ops = &cuda_ops;
    c->pub.priv = c;
    c->pub.fp16 = prec == SDW_PREC_FP16;
    c->device = device;
    c->prec = prec;
    c->dtype = prec == SDW_PREC_FP16 ? SDW_K_F16 : prec == SDW_PREC_BF16 ? SDW_K_BF16 : SDW_K_F32;
    /* SDW_CUDA_ATTENTION=simt forces the float32 attention kernel in every
     * precision (to compare against, or to fall back on should the
     * tensor-core kernel misbehave); unset, "auto" or anything else is the
     * default: tensor cores in fp16 and bf16. Read once, here. */
    const char *attn = getenv("SDW_CUDA_ATTENTION");
    c->attn_simt = attn && !strcmp(attn, "simt");
    /* SDW_CUDA_GRAPHS=0 turns graph recording off (graph_begin refuses). */
    const char *g = getenv("SDW_CUDA_GRAPHS");
    c->graphs = !(g && !strcmp(g, "0"));
    const char *tr = getenv("SDW_CUDA_TRIM");
    c->trim = tr && !strcmp(tr, "1");
    /* SDW_CUDA_WORKSPACE_MIB: the convolutions' scratch. At 512x512 and
     * above, cuDNN's fastest algorithms for the VAE decoder's widest layers
     * may need more than the default. */
    const char *ws = getenv("SDW_CUDA_WORKSPACE_MIB");
    long mib = CUDA_WS_MIB;
    if (ws) {
        char *end;
        mib = strtol(ws, &end, 10);
        if (!*ws || *end || mib < 1 || mib > 65536) {
            free(c);
            return sdw_fail(e, SDW_EINVAL, "SDW_CUDA_WORKSPACE_MIB: '%s' is not a size in MiB in 1..65536", ws);
        }
    }
    c->ws_cap = (size_t)mib << 20;
    /* SDW_CUDA_CONV=cudnn or gemm: one way for every convolution that it
     * can take (to compare, or to test both); unset or anything else, the
     * faster for each shape. */
    const char *cv = getenv("SDW_CUDA_CONV");
    c->conv_mode = cv && !strcmp(cv, "cudnn") ? CONV_CUDNN : cv && !strcmp(cv, "gemm") ? CONV_GEMM : CONV_AUTO;
    sdw_devmem_hooks hooks = {.ctx = c, .raw_alloc = raw_alloc, .raw_free = raw_free};
    int rc = sdw_devmem_new(&c->mem, &hooks, e);
    if (!rc)
        rc = cuda_init(c, e);
    if (rc) {
        cuda_destroy(&c->pub);
        return rc;
    }
    *out = &c->pub;
    return SDW_OK;
}
