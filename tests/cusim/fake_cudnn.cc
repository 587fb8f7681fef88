// A host stand-in for the cuDNN calls of the CUDA backend, src/cuda/ (see
// fake_cuda.h): 4-d NCHW tensor and filter descriptors in float, half or
// bfloat16, 2-d convolution descriptors, the algorithm search and the
// forward convolution. The convolution is the documented one, computed
// literally (cross-correlation, or true convolution with the filter
// flipped; the descriptor's padding, stride and dilation; y = alpha conv +
// beta y, y not read when beta is 0), and every call checks that its
// descriptors agree with each other and its pointers lie in live device
// allocations, as the backend must make sure of on a GPU. Sums are taken
// in double; float32 operands are rounded to TF32 unless the descriptor
// asks for FMA math, as Ampere and later GPUs do by default.
#include "fake_cuda.h"

#include <cudnn.h>

#include <set>
#include <vector>

struct cudnnContext {
    cudaStream_t stream = nullptr;
};

struct cudnnTensorStruct {
    bool set = false;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int n = 0, c = 0, h = 0, w = 0;
};

struct cudnnFilterStruct {
    bool set = false;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int k = 0, c = 0, h = 0, w = 0;
};

struct cudnnConvolutionStruct {
    bool set = false;
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

std::set<const void *> g_objects; // handles and descriptors alive

template <typename T>
bool alive(T *p)
{
    return p && g_objects.count(p);
}

template <typename T>
cudnnStatus_t create(T **out)
{
    if (!out)
        return CUDNN_STATUS_BAD_PARAM;
    *out = new T;
    g_objects.insert(*out);
    return CUDNN_STATUS_SUCCESS;
}

template <typename T>
cudnnStatus_t destroy(T *p)
{
    // Destroying NULL is allowed.
    if (!p)
        return CUDNN_STATUS_SUCCESS;
    if (!g_objects.erase(p))
        return CUDNN_STATUS_BAD_PARAM;
    delete p;
    return CUDNN_STATUS_SUCCESS;
}

size_t type_size(cudnnDataType_t t)
{
    return t == CUDNN_DATA_FLOAT ? 4 : t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16 ? 2 : 0;
}

sdw_fake::Elem elem(cudnnDataType_t t)
{
    return t == CUDNN_DATA_HALF       ? sdw_fake::Elem::f16
           : t == CUDNN_DATA_BFLOAT16 ? sdw_fake::Elem::bf16
                                      : sdw_fake::Elem::f32;
}

float load(const void *p, cudnnDataType_t t, size_t i)
{
    return sdw_fake::load(p, elem(t), (int64_t)i);
}

void store(void *p, cudnnDataType_t t, size_t i, float v)
{
    sdw_fake::store(p, elem(t), (int64_t)i, v);
}

// The documented 4-d sizes of the layout types the backend uses; the
// real library has more (NHWC, vectorised types), not simulated here.
cudnnStatus_t check_4d(cudnnTensorFormat_t format, cudnnDataType_t type, int n, int c, int h, int w)
{
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    if (format != CUDNN_TENSOR_NCHW || !type_size(type))
        return CUDNN_STATUS_NOT_SUPPORTED;
    if ((int64_t)n * c * h * w > INT32_MAX)
        return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

size_t bytes(const cudnnTensorStruct &t)
{
    return (size_t)t.n * t.c * t.h * t.w * type_size(t.type);
}

size_t bytes(const cudnnFilterStruct &f)
{
    return (size_t)f.k * f.c * f.h * f.w * type_size(f.type);
}

// "outputDim = 1 + (inputDim + 2*pad - (((filterDim-1)*dilation)+1))/convolutionStride"
cudnnStatus_t output_dim(const cudnnConvolutionStruct *cd, const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                         int *n, int *c, int *h, int *wd)
{
    if (!alive(cd) || !alive(x) || !alive(w) || !cd->set || !x->set || !w->set)
        return CUDNN_STATUS_BAD_PARAM;
    // One group: every filter spans all the input's channels.
    if (w->c != x->c)
        return CUDNN_STATUS_BAD_PARAM;
    int64_t eh = (int64_t)(w->h - 1) * cd->dil_h + 1, ew = (int64_t)(w->w - 1) * cd->dil_w + 1;
    int64_t ph = x->h + 2 * (int64_t)cd->pad_h, pw = x->w + 2 * (int64_t)cd->pad_w;
    if (ph < eh || pw < ew)
        return CUDNN_STATUS_BAD_PARAM;
    *n = x->n;
    *c = w->k;
    *h = (int)(1 + (ph - eh) / cd->u);
    *wd = (int)(1 + (pw - ew) / cd->v);
    return CUDNN_STATUS_SUCCESS;
}

// What cudnnConvolutionForward and the search require of their
// descriptors: set, of one data type with a compute type cuDNN supports for
// it (FLOAT_CONFIG, PSEUDO_HALF_CONFIG, PSEUDO_BFLOAT16_CONFIG; TRUE_HALF is
// not simulated), and y shaped as the convolution's output.
cudnnStatus_t check_conv(const cudnnTensorStruct *x, const cudnnFilterStruct *w, const cudnnConvolutionStruct *cd,
                         const cudnnTensorStruct *y)
{
    int n, c, h, wd;
    cudnnStatus_t st = output_dim(cd, x, w, &n, &c, &h, &wd);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    if (!alive(y) || !y->set)
        return CUDNN_STATUS_BAD_PARAM;
    if (x->type != w->type || x->type != y->type)
        return CUDNN_STATUS_BAD_PARAM;
    if (cd->compute != CUDNN_DATA_FLOAT)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (y->n != n || y->c != c || y->h != h || y->w != wd)
        return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
}

// The algorithms offered, and the workspace each needs: GEMM lowers the
// input to a matrix (im2col), IMPLICIT_PRECOMP_GEMM keeps a table of
// offsets, IMPLICIT_GEMM needs nothing. The sizes are of that order, not
// the real library's.
size_t workspace_need(cudnnConvolutionFwdAlgo_t algo, const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                      const cudnnTensorStruct *y)
{
    switch (algo) {
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM:
        return (size_t)x->n * w->c * w->h * w->w * y->h * y->w * type_size(x->type);
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return ((size_t)1 << 20) + (size_t)w->c * w->h * w->w * 8;
    default: return 0;
    }
}

bool offered(cudnnConvolutionFwdAlgo_t algo)
{
    return algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
           algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
}

struct Conv {
    cudnnTensorStruct x, y;
    cudnnFilterStruct w;
    cudnnConvolutionStruct cd;
    const void *xp, *wp;
    void *yp, *ws;
    size_t ws_need;
    float alpha, beta;

    bool in_bounds() const
    {
        return sdw_fake::device_range(xp, bytes(x)) && sdw_fake::device_range(wp, bytes(w)) &&
               sdw_fake::device_range(yp, bytes(y)) && (!ws_need || sdw_fake::device_range(ws, ws_need));
    }

    void run() const
    {
        if (!in_bounds())
            sdw_cusim::die("a replayed cuDNN convolution reaches memory that was freed since it was captured");
        // The algorithm's scratch: whatever it held is overwritten.
        if (ws_need)
            memset(ws, 0xff, ws_need);
        bool round = x.type == CUDNN_DATA_FLOAT && cd.math != CUDNN_FMA_MATH;
        std::vector<float> xf((size_t)x.n * x.c * x.h * x.w), wf((size_t)w.k * w.c * w.h * w.w);
        for (size_t i = 0; i < xf.size(); i++)
            xf[i] = round ? sdw_fake::tf32(load(xp, x.type, i)) : load(xp, x.type, i);
        for (size_t i = 0; i < wf.size(); i++)
            wf[i] = round ? sdw_fake::tf32(load(wp, w.type, i)) : load(wp, w.type, i);
        bool flip = cd.mode == CUDNN_CONVOLUTION;
        for (int n = 0; n < y.n; n++)
            for (int k = 0; k < y.c; k++)
                for (int oh = 0; oh < y.h; oh++)
                    for (int ow = 0; ow < y.w; ow++) {
                        double s = 0;
                        for (int c = 0; c < w.c; c++)
                            for (int r = 0; r < w.h; r++) {
                                int ih = oh * cd.u - cd.pad_h + r * cd.dil_h;
                                if (ih < 0 || ih >= x.h)
                                    continue;
                                const float *xrow = &xf[(((size_t)n * x.c + c) * x.h + ih) * x.w];
                                const float *wrow = &wf[(((size_t)k * w.c + c) * w.h + (flip ? w.h - 1 - r : r)) * w.w];
                                for (int q = 0; q < w.w; q++) {
                                    int iw = ow * cd.v - cd.pad_w + q * cd.dil_w;
                                    if (iw >= 0 && iw < x.w)
                                        s += (double)xrow[iw] * wrow[flip ? w.w - 1 - q : q];
                                }
                            }
                        size_t at = (((size_t)n * y.c + k) * y.h + oh) * y.w + ow;
                        double prev = beta == 0.0f ? 0.0 : (double)beta * load(yp, y.type, at);
                        store(yp, y.type, at, (float)(alpha * s + prev));
                    }
    }
};

} // namespace

extern "C" {

const char *cudnnGetErrorString(cudnnStatus_t status)
{
    switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT: return "CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    default: return "CUDNN_STATUS_UNKNOWN";
    }
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle)
{
    return create(handle);
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle)
{
    return destroy(handle);
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId)
{
    if (!alive(handle))
        return CUDNN_STATUS_NOT_INITIALIZED;
    if (!sdw_fake::valid_stream(streamId))
        return CUDNN_STATUS_BAD_PARAM;
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc)
{
    return create(tensorDesc);
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc)
{
    return destroy(tensorDesc);
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc)
{
    return create(filterDesc);
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc)
{
    return destroy(filterDesc);
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc)
{
    return create(convDesc);
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc)
{
    return destroy(convDesc);
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc, cudnnTensorFormat_t format,
                                         cudnnDataType_t dataType, int n, int c, int h, int w)
{
    if (!alive(tensorDesc))
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_4d(format, dataType, n, c, h, w);
    if (st == CUDNN_STATUS_SUCCESS)
        *tensorDesc = cudnnTensorStruct{true, dataType, n, c, h, w};
    return st;
}

// Note the order: data type before format, unlike the tensor's.
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc, cudnnDataType_t dataType,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w)
{
    if (!alive(filterDesc))
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_4d(format, dataType, k, c, h, w);
    if (st == CUDNN_STATUS_SUCCESS)
        *filterDesc = cudnnFilterStruct{true, dataType, k, c, h, w};
    return st;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc, int pad_h, int pad_w, int u,
                                              int v, int dilation_h, int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType)
{
    if (!alive(convDesc) || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 || dilation_w <= 0 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
        return CUDNN_STATUS_BAD_PARAM;
    convDesc->set = true;
    convDesc->pad_h = pad_h;
    convDesc->pad_w = pad_w;
    convDesc->u = u;
    convDesc->v = v;
    convDesc->dil_h = dilation_h;
    convDesc->dil_w = dilation_w;
    convDesc->mode = mode;
    convDesc->compute = computeType;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc, cudnnMathType_t mathType)
{
    if (!alive(convDesc) || (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
                             mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH))
        return CUDNN_STATUS_BAD_PARAM;
    convDesc->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t convDesc,
                                                    const cudnnTensorDescriptor_t inputTensorDesc,
                                                    const cudnnFilterDescriptor_t filterDesc, int *n, int *c, int *h,
                                                    int *w)
{
    if (!n || !c || !h || !w)
        return CUDNN_STATUS_BAD_PARAM;
    return output_dim(convDesc, inputTensorDesc, filterDesc, n, c, h, w);
}

cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                     const void *x, const cudnnFilterDescriptor_t wDesc,
                                                     const void *w, const cudnnConvolutionDescriptor_t convDesc,
                                                     const cudnnTensorDescriptor_t yDesc, void *y,
                                                     const int requestedAlgoCount, int *returnedAlgoCount,
                                                     cudnnConvolutionFwdAlgoPerf_t *perfResults, void *workSpace,
                                                     size_t workSpaceSizeInBytes)
{
    if (!alive(handle))
        return CUDNN_STATUS_NOT_INITIALIZED;
    if (requestedAlgoCount < 1 || !returnedAlgoCount || !perfResults)
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_conv(xDesc, wDesc, convDesc, yDesc);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    if (!sdw_fake::device_range(x, bytes(*xDesc)) || !sdw_fake::device_range(w, bytes(*wDesc)) ||
        !sdw_fake::device_range(y, bytes(*yDesc)) ||
        (workSpaceSizeInBytes && !sdw_fake::device_range(workSpace, workSpaceSizeInBytes)))
        return CUDNN_STATUS_BAD_PARAM;
    // The search runs and times the candidates and waits for them: the host
    // blocks, which a stream being captured cannot do.
    if (sdw_fake::capturing(handle->stream)) {
        sdw_fake::invalidate(handle->stream);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    // "The content of this tensor will be overwritten with arbitrary values."
    memset(y, 0xff, bytes(*yDesc));
    // Fastest first. float32 data also gets a TF32 tensor-core candidate,
    // which a caller that wants float32 results has to pass over.
    bool f32 = xDesc->type == CUDNN_DATA_FLOAT;
    struct {
        cudnnConvolutionFwdAlgo_t algo;
        cudnnMathType_t math;
    } cands[4] = {{CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_TENSOR_OP_MATH},
                  {CUDNN_CONVOLUTION_FWD_ALGO_GEMM, f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH},
                  {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_FMA_MATH},
                  {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH}};
    int n = 0;
    for (int i = 0; i < 4 && n < requestedAlgoCount; i++) {
        if (!f32 && i == 2)
            continue;
        cudnnConvolutionFwdAlgoPerf_t &p = perfResults[n++];
        memset(&p, 0, sizeof p);
        p.algo = cands[i].algo;
        p.mathType = cands[i].math;
        p.memory = workspace_need(p.algo, xDesc, wDesc, yDesc);
        p.determinism = CUDNN_DETERMINISTIC;
        p.time = 0.1f * (float)(i + 1);
        // An algorithm whose scratch does not fit the workspace given
        // cannot run; it is reported with a failure status.
        p.status = p.memory <= workSpaceSizeInBytes ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_SUPPORTED;
        if (p.status != CUDNN_STATUS_SUCCESS)
            p.time = -1.0f;
    }
    *returnedAlgoCount = n;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xDesc,
                                      const void *x, const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionFwdAlgo_t algo,
                                      void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y)
{
    if (!alive(handle))
        return CUDNN_STATUS_NOT_INITIALIZED;
    if (!alpha || !beta || sdw_fake::device_pointer(alpha) || sdw_fake::device_pointer(beta))
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_conv(xDesc, wDesc, convDesc, yDesc);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    if (!offered(algo))
        return CUDNN_STATUS_NOT_SUPPORTED;
    size_t need = workspace_need(algo, xDesc, wDesc, yDesc);
    if (workSpaceSizeInBytes < need)
        return CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT;
    // Scaling factors are float for float, half and bfloat16 data.
    Conv cv{*xDesc, *yDesc, *wDesc, *convDesc, x, w, y, workSpace, need, *static_cast<const float *>(alpha),
            *static_cast<const float *>(beta)};
    if (!cv.in_bounds() || (workSpaceSizeInBytes && !sdw_fake::device_range(workSpace, workSpaceSizeInBytes)))
        return CUDNN_STATUS_BAD_PARAM;
    sdw_fake::submit(handle->stream, [cv] { cv.run(); });
    return CUDNN_STATUS_SUCCESS;
}

} // extern "C"
