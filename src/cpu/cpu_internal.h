/* What the CPU backend's files share among themselves (backend_cpu.c: the
 * backend, its memory and most ops; conv_cpu.c: the convolutions). Nothing
 * outside src/cpu/ includes this: the rest of the engine reaches the CPU
 * backend through tensor/tensor.h and backend/backend.h only. */
#ifndef SDW_CPU_INTERNAL_H
#define SDW_CPU_INTERNAL_H

#include <cblas.h>
#include <stdint.h>

#include "tensor/tensor.h"

/* Backend memory for n floats (64-byte aligned; large blocks pooled). */
int sdw_cpu_alloc(sdw_backend *be, size_t n, float **p, sdw_error *e);
void sdw_cpu_free(sdw_backend *be, float *p);

/* Row-major sgemm split over the OpenMP team (OpenBLAS single-threaded). */
void sdw_cpu_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
/* nx products with one half-precision weight w [wrows, k], converted block
 * by block once for all of them: C_i[wrows, n] = w x_i (w_left, a
 * convolution) or C_i[n, wrows] = x_i w^T (a linear layer). */
int sdw_cpu_gemm_f16w(sdw_backend *be, int w_left, const uint16_t *w, int64_t wrows, int64_t k, int nx,
                      const float *const *xs, int64_t ldx, int64_t n, float beta, float *const *cs, int64_t ldc,
                      sdw_error *e);
/* n IEEE halves to float32 (F16C where the CPU has it; exact either way). */
void sdw_cpu_halves_to_f32(const uint16_t *s, float *d, int64_t n);

/* Whether 3x3 convolutions may take the Winograd path (SDW_CPU_WINOGRAD). */
int sdw_cpu_winograd(const sdw_backend *be);

/* The backend's conv2d op (tensor.h's contract). */
int sdw_cpu_conv2d(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                   int64_t b, int64_t c, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw, int64_t oh,
                   int64_t ow, int stride, int pad_t, int pad_l, sdw_error *e);

#endif
