// A host stand-in for the cuBLAS calls of the CUDA backend, src/cuda/ (see
// fake_cuda.h): handles, stream, math mode and workspace, and the general
// products cublasGemmEx and cublasGemmStridedBatchedEx with what the
// backend uses of them (float32, fp16 or bf16 operands, float32 results,
// CUBLAS_COMPUTE_32F). The product follows the cuBLAS documentation
// literally, so that a wrong transpose, leading dimension or stride gives a
// wrong answer or an error here as it would on a GPU: column-major storage,
// C = alpha op(A) op(B) + beta C with op(A) m x k, op(B) k x n, C m x n,
// lda >= max(1, rows of A as stored) and so on, batch i of a strided call at
// A + i strideA, B + i strideB, C + i strideC. Operands must lie inside live
// device allocations. Sums are taken in double: the real library's order of
// summation and tensor-core rounding are not modelled.
#include "fake_cuda.h"

#include <cublas_v2.h>

#include <algorithm>
#include <set>
#include <vector>

struct cublasContext {
    cudaStream_t stream = nullptr;
    void *workspace = nullptr;
    size_t workspace_bytes = 0;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

std::set<cublasHandle_t> g_handles;

size_t type_size(cudaDataType t)
{
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    default: return 0;
    }
}

sdw_fake::Elem elem(cudaDataType t)
{
    return t == CUDA_R_16F ? sdw_fake::Elem::f16 : t == CUDA_R_16BF ? sdw_fake::Elem::bf16 : sdw_fake::Elem::f32;
}

float load(const void *p, cudaDataType t, int64_t i)
{
    return sdw_fake::load(p, elem(t), i);
}

void store(void *p, cudaDataType t, int64_t i, float v)
{
    sdw_fake::store(p, elem(t), i, v);
}

struct Gemm {
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha, beta;
    const void *a, *b;
    void *c;
    cudaDataType at, bt, ct;
    int lda, ldb, ldc;
    long long sa, sb, sc;
    int batch;
    bool round_tf32;

    // Bytes from the first to one past the last element each operand of the
    // whole (batched) call reaches.
    size_t extent(int rows, int cols, int ld, long long stride, size_t es) const
    {
        return ((size_t)(cols - 1) * ld + rows + (size_t)(batch - 1) * stride) * es;
    }
    size_t a_bytes() const
    {
        return extent(ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda, sa, type_size(at));
    }
    size_t b_bytes() const
    {
        return extent(tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb, sb, type_size(bt));
    }
    size_t c_bytes() const
    {
        return extent(m, n, ldc, sc, type_size(ct));
    }
    bool in_bounds() const
    {
        return (k == 0 || (sdw_fake::device_range(a, a_bytes()) && sdw_fake::device_range(b, b_bytes()))) &&
               sdw_fake::device_range(c, c_bytes());
    }

    void run() const
    {
        if (!in_bounds())
            sdw_cusim::die("a replayed cuBLAS product reaches memory that was freed since it was captured");
        // op(A) by rows and op(B) by columns, so that each entry of C is
        // one contiguous dot product.
        std::vector<float> ra((size_t)m * k), cb((size_t)n * k);
        for (int i = 0; i < batch; i++) {
            for (int r = 0; r < m; r++)
                for (int l = 0; l < k; l++) {
                    int64_t at_ = ta == CUBLAS_OP_N ? r + (int64_t)l * lda : l + (int64_t)r * lda;
                    float v = load(a, at, i * sa + at_);
                    ra[(size_t)r * k + l] = round_tf32 ? sdw_fake::tf32(v) : v;
                }
            for (int col = 0; col < n; col++)
                for (int l = 0; l < k; l++) {
                    int64_t bt_ = tb == CUBLAS_OP_N ? l + (int64_t)col * ldb : col + (int64_t)l * ldb;
                    float v = load(b, bt, i * sb + bt_);
                    cb[(size_t)col * k + l] = round_tf32 ? sdw_fake::tf32(v) : v;
                }
            for (int col = 0; col < n; col++)
                for (int r = 0; r < m; r++) {
                    const float *x = &ra[(size_t)r * k], *y = &cb[(size_t)col * k];
                    double s = 0;
                    for (int l = 0; l < k; l++)
                        s += (double)x[l] * y[l];
                    int64_t at_c = i * sc + r + (int64_t)col * ldc;
                    // "If beta == 0, C does not have to be a valid input."
                    double prev = beta == 0.0f ? 0.0 : (double)beta * load(c, ct, at_c);
                    store(c, ct, at_c, (float)(alpha * s + prev));
                }
        }
    }
};

bool transpose_op(cublasOperation_t t)
{
    // For real operands CUBLAS_OP_C is the transpose.
    return t == CUBLAS_OP_N || t == CUBLAS_OP_T || t == CUBLAS_OP_C;
}

cublasStatus_t gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                    const void *alpha, const void *A, cudaDataType Atype, int lda, long long strideA, const void *B,
                    cudaDataType Btype, int ldb, long long strideB, const void *beta, void *C, cudaDataType Ctype,
                    int ldc, long long strideC, int batchCount, cublasComputeType_t computeType,
                    cublasGemmAlgo_t algo)
{
    if (!g_handles.count(handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || batchCount < 0 || !transpose_op(transa) || !transpose_op(transb) || !alpha ||
        !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    int rows_a = transa == CUBLAS_OP_N ? m : k, rows_b = transb == CUBLAS_OP_N ? k : n;
    if (lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    // Negative strides are not something the backend has a use for.
    if (strideA < 0 || strideB < 0 || strideC < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!(algo == CUBLAS_GEMM_DEFAULT || algo == CUBLAS_GEMM_DEFAULT_TENSOR_OP ||
          (algo >= CUBLAS_GEMM_ALGO0 && algo <= CUBLAS_GEMM_ALGO23) ||
          (algo >= CUBLAS_GEMM_ALGO0_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP)))
        return CUBLAS_STATUS_INVALID_VALUE;
    // The combinations of the "cublasGemmEx: supported types" table under
    // CUBLAS_COMPUTE_32F that have A and B of one type and C of that type or
    // float32 (16F or 16BF operands); the others the real library has are
    // not simulated.
    bool fast_tf32 = computeType == CUBLAS_COMPUTE_32F_FAST_TF32;
    if (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC && !fast_tf32)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((Ctype != CUDA_R_32F && Ctype != Atype) || Atype != Btype || !type_size(Atype) ||
        (fast_tf32 && Atype != CUDA_R_32F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    // In CUBLAS_POINTER_MODE_HOST (the default) alpha and beta are read on
    // the host, at the call.
    if (sdw_fake::device_pointer(alpha) || sdw_fake::device_pointer(beta))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool pedantic = computeType == CUBLAS_COMPUTE_32F_PEDANTIC || (handle->math & 0xf) == CUBLAS_PEDANTIC_MATH;
    Gemm g{transa,
           transb,
           m,
           n,
           k,
           *static_cast<const float *>(alpha),
           *static_cast<const float *>(beta),
           A,
           B,
           C,
           Atype,
           Btype,
           Ctype,
           lda,
           ldb,
           ldc,
           strideA,
           strideB,
           strideC,
           batchCount,
           Atype == CUDA_R_32F && !pedantic && (fast_tf32 || (handle->math & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH)};
    if (m == 0 || n == 0 || batchCount == 0)
        return CUBLAS_STATUS_SUCCESS;
    if (!g.in_bounds())
        return CUBLAS_STATUS_INVALID_VALUE;
    sdw_fake::submit(handle->stream, [g] { g.run(); });
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    if (!handle)
        return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext;
    g_handles.insert(*handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    if (!g_handles.erase(handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId)
{
    if (!g_handles.count(handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!sdw_fake::valid_stream(streamId))
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->stream = streamId;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    if (!g_handles.count(handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    unsigned base = mode & 0xf, flags = mode & ~0xfu;
    if (base > CUBLAS_TF32_TENSOR_OP_MATH || (flags & ~(unsigned)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION))
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes)
{
    if (!g_handles.count(handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    // "The workspace pointer has to be aligned to at least 256 bytes";
    // the bytes given must be device memory.
    if ((uintptr_t)workspace % 256 ||
        (workspaceSizeInBytes && !sdw_fake::device_range(workspace, workspaceSizeInBytes)))
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->workspace = workspace;
    handle->workspace_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C, Ctype, ldc, 0,
                1, computeType, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C,
                Ctype, ldc, strideC, batchCount, computeType, algo);
}

} // extern "C"
