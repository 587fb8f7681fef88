/* Plain C twins of the CUDA kernels that are pieces of a CUDA op rather than
 * an op of their own, so that the CPU backend has no op to stand for them
 * (kernels/kernels.h names the twin of every kernel): the bias broadcast
 * before a product, the explicit padding before a cuDNN convolution, and
 * the softmax of the attention cuBLAS takes. Each keeps its kernel's
 * contract on float32 tensors and is the reference its kernel is tested
 * against (tests/test_cusim.cc). */
#ifndef SDW_CPU_TWINS_H
#define SDW_CPU_TWINS_H

#include <stdint.h>

/* y[r, i] = v[i] for r < rows, i < n: sdw_k_fill_rows. */
void sdw_cpu_fill_rows(const float *v, float *y, int64_t rows, int64_t n);

/* x [bc, h, w] -> y [bc, hp, wp], y[p, r, c] = x[p, r - pad_t, c - pad_l],
 * zero outside x: sdw_k_pad. */
void sdw_cpu_pad(const float *x, float *y, int64_t bc, int64_t h, int64_t w, int64_t hp, int64_t wp, int pad_t,
                 int pad_l);

/* Softmax over each of `rows` rows of s [rows, n] into p [rows, n] (p may
 * be s), rows in blocks of rpb per head, row r being query r0 + r % rpb;
 * when causal only its first r0 + r % rpb + 1 entries count and the others
 * are 0: sdw_k_softmax_rows. Exponentials and sums are taken in double and
 * each output rounded once, so that the twin is the value the kernel's
 * float32 arithmetic approximates rather than another approximation. */
void sdw_cpu_softmax_rows(const float *s, float *p, int64_t rows, int64_t n, int64_t rpb, int64_t r0, int causal);

#endif
