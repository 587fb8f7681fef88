/* What the CUDA backend's files share among themselves (backend_cuda.c:
 * the backend, its memory, graphs and most ops; conv_cuda.c: convolutions
 * and their plans). Nothing outside src/cuda/ includes this: the rest of
 * the engine reaches the backend through tensor/tensor.h and
 * backend/backend.h only. */
#ifndef SDW_CUDA_INTERNAL_H
#define SDW_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "backend/backend.h"
#include "base/vec.h"
#include "cuda/devmem.h"
#include "kernels/kernels.h"
#include "tensor/tensor.h"

enum { CONV_AUTO, CONV_CUDNN, CONV_GEMM };

/* A captured sequence of ops, and the blocks it uses for its temporaries:
 * they are its own while it lives, since every replay writes them. */
typedef struct cuda_graph {
    cudaGraphExec_t exec;
    sdw_devmem_owned *owned;
} cuda_graph;

/* A convolution as the planner sees it: the input as given to cuDNN (after
 * any explicit padding), the filter, symmetric padding and stride, the
 * output size. Compared with memcmp: ints only, so no padding bytes. */
typedef struct conv_shape {
    int dtype, b, ch, h, w, o, kh, kw, pad_h, pad_w, stride, oh, ow;
} conv_shape;

typedef struct conv_plan {
    conv_shape key;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgo_t algo;
    int gemm;        /* im2col into the workspace and one product per image (cuBLAS) instead of cuDNN */
    int whole;       /* gemm: the columns of every image fit in the workspace at once */
    int64_t band;    /* gemm, not whole: output positions of one image per product */
    size_t ws_bytes; /* the workspace it needs: cuDNN's algorithm's, or the columns */
} conv_plan;

typedef struct cuda_be {
    sdw_backend pub;
    int device;
    sdw_precision prec;
    int dtype; /* SDW_K_*: the storage type of every tensor */
    cudaStream_t stream;
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    sdw_devmem *mem;
    SDW_VEC(conv_plan) plans; /* one per shape seen */
    void *ws;
    size_t ws_bytes;
    size_t ws_cap; /* the most a convolution's algorithm may use */
    void *blas_ws; /* cuBLAS's workspace, ours so that it never allocates during a capture */
    int graphs; /* captures allowed: SDW_CUDA_GRAPHS is not "0" */
    int attn_simt; /* SDW_CUDA_ATTENTION=simt: the float32 attention kernel in every precision */
    int trim;      /* SDW_CUDA_TRIM=1: cached blocks go back to the driver before each denoising and decode */
    int conv_mode; /* SDW_CUDA_CONV: CONV_AUTO, CONV_CUDNN or CONV_GEMM */
} cuda_be;

static inline cuda_be *priv(sdw_backend *be)
{
    return be->priv;
}

/* The failed call as an sdw_status (SDW_ENOMEM for allocation failures,
 * else SDW_EDEVICE) with file, line and the library's message. */
int sdw_cuda_err(sdw_error *e, cudaError_t rc, const char *call, const char *file, int line);
int sdw_cublas_err(sdw_error *e, cublasStatus_t rc, const char *call, const char *file, int line);
int sdw_cudnn_err(sdw_error *e, cudnnStatus_t rc, const char *call, const char *file, int line);

#define CU(call)                                                                                                  \
    do {                                                                                                          \
        cudaError_t cu_rc_ = (call);                                                                              \
        if (cu_rc_ != cudaSuccess)                                                                                \
            return sdw_cuda_err(e, cu_rc_, #call, __FILE__, __LINE__);                                                \
    } while (0)
#define CUBLAS(call)                                                                                              \
    do {                                                                                                          \
        cublasStatus_t cb_rc_ = (call);                                                                           \
        if (cb_rc_ != CUBLAS_STATUS_SUCCESS)                                                                      \
            return sdw_cublas_err(e, cb_rc_, #call, __FILE__, __LINE__);                                              \
    } while (0)
#define CUDNN(call)                                                                                               \
    do {                                                                                                          \
        cudnnStatus_t dn_rc_ = (call);                                                                            \
        if (dn_rc_ != CUDNN_STATUS_SUCCESS)                                                                       \
            return sdw_cudnn_err(e, dn_rc_, #call, __FILE__, __LINE__);                                               \
    } while (0)
/* Like CU, for the steps after a scratch block was taken: the block goes
 * back to the cache (stream order keeps that safe) before returning. */
#define CU_OR(call, cleanup)                                                                                      \
    do {                                                                                                          \
        cudaError_t cu_rc_ = (call);                                                                              \
        if (cu_rc_ != cudaSuccess) {                                                                              \
            cleanup;                                                                                              \
            return sdw_cuda_err(e, cu_rc_, #call, __FILE__, __LINE__);                                                \
        }                                                                                                         \
    } while (0)

static inline int dev_alloc(cuda_be *c, size_t bytes, void **out, sdw_error *e)
{
    return sdw_devmem_alloc(c->mem, bytes, out, e);
}

static inline void dev_free(cuda_be *c, void *p)
{
    sdw_devmem_free(c->mem, p);
}

static inline size_t dtype_size(int dtype)
{
    return dtype == SDW_K_F32 ? 4 : 2;
}

static inline int too_big(sdw_error *e, const char *op, int64_t v)
{
    return sdw_fail(e, SDW_EUNSUPPORTED, "%s: dimension %lld exceeds the CUDA backend's int range", op, (long long)v);
}

static inline cudaDataType_t blas_type(int dtype)
{
    return dtype == SDW_K_F16 ? CUDA_R_16F : dtype == SDW_K_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* Only the CPU backend makes low-precision weights (its halves); a tensor
 * here is always in the storage type. */
static inline int no_lowp(int w_lowp, const char *op, sdw_error *e)
{
    return w_lowp ? sdw_fail(e, SDW_EINVAL, "cuda: %s: a weight in another backend's format", op) : SDW_OK;
}

/* The backend's conv2d op (tensor.h's contract), and the plans it keeps. */
int sdw_cuda_conv2d(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                    int64_t b, int64_t ch, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw, int64_t oh,
                    int64_t ow, int stride, int pad_t, int pad_l, sdw_error *e);
void sdw_cuda_conv_plans_free(cuda_be *c);

#endif
