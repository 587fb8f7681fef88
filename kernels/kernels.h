/* Our own CUDA kernels, callable from C. Each has a CPU twin in
 * src/engine/backend_cpu.c that is its numerical reference, and a test in
 * tests/test_cuda_kernels.c that compares the two on fresh random inputs.
 * Pointers are device memory; launches are asynchronous on `stream` and
 * return the launch's cudaError_t (0 on success). */
#ifndef SDW_KERNELS_H
#define SDW_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Per row of length n: (x - mean) / sqrt(var + eps) * gamma + beta. */
cudaError_t sdw_k_layer_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t rows,
                             int64_t n, float eps, cudaStream_t stream);

/* Elementwise activation; act is an sdw_act value (tensor.h). */
cudaError_t sdw_k_act(const float *x, float *y, int64_t n, int act, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
