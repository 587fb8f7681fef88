/* Our own CUDA kernels, callable from C. Each has a CPU twin in
 * src/engine/backend_cpu.c that is its numerical reference, and a test in
 * tests/test_cuda_kernels.c that compares the two on fresh random inputs.
 * Pointers are device memory; launches are asynchronous on `stream` and
 * return the launch's cudaError_t (0 on success). A launch whose sizes do not
 * fit the grid returns cudaErrorInvalidValue without running. */
#ifndef SDW_KERNELS_H
#define SDW_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of the low-precision copies the backend feeds to cuBLAS and
 * cuDNN (float32 tensors are converted to these and back). */
enum { SDW_K_F32 = 0, SDW_K_F16 = 1, SDW_K_BF16 = 2 };

/* Per row of length n: (x - mean) / sqrt(var + eps) * gamma + beta. */
cudaError_t sdw_k_layer_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t rows,
                             int64_t n, float eps, cudaStream_t stream);

/* Elementwise activation; act is an sdw_act value (tensor.h). */
cudaError_t sdw_k_act(const float *x, float *y, int64_t n, int act, cudaStream_t stream);

/* y = a + b over n. */
cudaError_t sdw_k_add(const float *a, const float *b, float *y, int64_t n, cudaStream_t stream);
/* y = s * x over n. */
cudaError_t sdw_k_scale(const float *x, float s, float *y, int64_t n, cudaStream_t stream);
/* y[r, i] = x[r, i] + v[r]. */
cudaError_t sdw_k_add_rows(const float *x, const float *v, float *y, int64_t rows, int64_t n, cudaStream_t stream);
/* y[r, i] = v[i]: a bias broadcast over rows, before a product accumulates onto it. */
cudaError_t sdw_k_fill_rows(const float *v, float *y, int64_t rows, int64_t n, cudaStream_t stream);
/* y[b, i] = s * (mean + exp(clamp(logvar, -30, 20) / 2) * noise), m [b, 2n] = mean then logvar;
 * noise NULL gives s * mean. */
cudaError_t sdw_k_gaussian(const float *m, const float *noise, float s, float *y, int64_t b, int64_t n,
                           cudaStream_t stream);
/* x [rows, 2n] -> y [rows, n] = x[:, :n] * gelu(x[:, n:]), exact erf gelu. */
cudaError_t sdw_k_geglu(const float *x, float *y, int64_t rows, int64_t n, cudaStream_t stream);
/* y[i] = concat(a[i] (na floats), c[i] (nc floats)) for each of b rows. */
cudaError_t sdw_k_concat(const float *a, const float *c, float *y, int64_t b, int64_t na, int64_t nc,
                         cudaStream_t stream);
/* x [b, m, n] -> y [b, n, m]. */
cudaError_t sdw_k_transpose(const float *x, float *y, int64_t b, int64_t m, int64_t n, cudaStream_t stream);
/* y[r, :] = table[ids[r], :] + pos[r % tpos, :] (pos may be NULL); ids in device memory. */
cudaError_t sdw_k_embed(const float *table, const int32_t *ids, const float *pos, float *y, int64_t rows,
                        int64_t dim, int64_t tpos, cudaStream_t stream);
/* x [bc, h, w] -> y [bc, oh, ow] by torch's 'nearest' rule, as cpu_upsample_nearest. */
cudaError_t sdw_k_upsample_nearest(const float *x, float *y, int64_t bc, int64_t h, int64_t w, int64_t oh,
                                   int64_t ow, cudaStream_t stream);

/* GroupNorm over x [b, c, n]: sdw_k_group_stats writes (mean, rstd) per
 * (b, group) into stats [b * groups * 2], accumulating in double as the CPU
 * twin does; sdw_k_group_apply then normalises, scales and shifts, and
 * applies SiLU when silu != 0. */
cudaError_t sdw_k_group_stats(const float *x, float *stats, int64_t b, int64_t c, int64_t n, int64_t groups,
                              float eps, cudaStream_t stream);
cudaError_t sdw_k_group_apply(const float *x, const float *stats, const float *gamma, const float *beta, float *y,
                              int64_t b, int64_t c, int64_t n, int64_t groups, int silu, cudaStream_t stream);

/* Conversions for the tensor-core paths. sdw_k_pack: float x [n] -> y [n] of
 * type dtype. sdw_k_pack_pad: x [bc, h, w] -> y [bc, hp, wp] of type dtype,
 * y[p, r, c] = x[p, r - pad_t, c - pad_l], zero outside x: the explicit
 * padding a convolution with uneven bottom/right padding needs.
 * sdw_k_unpack_bias: x [rows, n] of type dtype -> float y, plus bias[r % nb]
 * when bias is not NULL; x may equal y when dtype is SDW_K_F32. */
cudaError_t sdw_k_pack(const float *x, void *y, int64_t n, int dtype, cudaStream_t stream);
cudaError_t sdw_k_pack_pad(const float *x, void *y, int64_t bc, int64_t h, int64_t w, int64_t hp, int64_t wp,
                           int pad_t, int pad_l, int dtype, cudaStream_t stream);
cudaError_t sdw_k_unpack_bias(const void *x, const float *bias, float *y, int64_t rows, int64_t n, int64_t nb,
                              int dtype, cudaStream_t stream);

/* Fused attention, one pass with an online softmax and no [tq, tk] score
 * buffer: q [b, tq, heads*d], k and v [b, tk, heads*d], out like q,
 * softmax(q k^T * scale) v per head, keys after the query masked when causal.
 * Any d from 1 to 160; d in {40, 64, 80, 160} has its own instantiation. */
cudaError_t sdw_k_attention(const float *q, const float *k, const float *v, float *out, int64_t b, int64_t tq,
                            int64_t tk, int64_t heads, int64_t d, float scale, int causal, cudaStream_t stream);

/* The same attention on tensor cores, for the fp16 and bf16 precisions: q, k,
 * v and the probabilities are rounded to dtype (SDW_K_F16 or SDW_K_BF16)
 * before the two products, which accumulate in float32 as the softmax does.
 * Any d from 1 to 160, padded with zeros to a multiple of 16. */
cudaError_t sdw_k_attention_tc(const float *q, const float *k, const float *v, float *out, int64_t b, int64_t tq,
                               int64_t tk, int64_t heads, int64_t d, float scale, int causal, int dtype,
                               cudaStream_t stream);

/* Softmax in place over each of `rows` rows of s [rows, n], as the CPU
 * backend's: rows come in blocks of rpb per head, row r being query
 * r0 + r % rpb; when causal, only its first r0 + r % rpb + 1 entries count and
 * the others are set to 0. The score step of the attention for head
 * dimensions sdw_k_attention does not take. */
cudaError_t sdw_k_softmax_rows(float *s, int64_t rows, int64_t n, int64_t rpb, int64_t r0, int causal,
                               cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
