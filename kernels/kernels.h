/* Our own CUDA kernels, callable from C. Each has a CPU twin that is its
 * numerical reference: the CPU backend's op of the same name in
 * src/cpu/backend_cpu.c (layer_norm, act, add, scale, add_rows, gaussian,
 * geglu, concat, transpose, embed, upsample_nearest; group_norm for
 * group_stats and group_apply, attention for attention and attention_tc),
 * src/cpu/conv_cpu.c's im2col (by whole output rows) for im2col, or, for
 * the kernels no CPU op stands for, src/cpu/twins.c (fill_rows, pad,
 * softmax_rows).
 * tests/test_cusim.cc compares each kernel with its twin on the host
 * simulator, and tests/test_backend_ops.c each op of the CUDA backend with
 * the CPU backend's, on fresh random inputs.
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

/* Storage types of device tensors (the `dt` argument of every kernel):
 * float32 in the fp32 precision; IEEE half or bfloat16 in fp16 and bf16,
 * where every tensor the backend holds, activations and weights alike, is
 * stored in that type. Kernels load their operands, compute in float32 and
 * round once, to nearest even, when they store. Pointers without a type
 * below are of type dt. */
enum { SDW_K_F32 = 0, SDW_K_F16 = 1, SDW_K_BF16 = 2 };

/* Per row of length n: (x - mean) / sqrt(var + eps) * gamma + beta. */
cudaError_t sdw_k_layer_norm(const void *x, const void *gamma, const void *beta, void *y, int64_t rows, int64_t n,
                             float eps, int dt, cudaStream_t stream);

/* Elementwise activation; act is an sdw_act value (tensor.h). */
cudaError_t sdw_k_act(const void *x, void *y, int64_t n, int act, int dt, cudaStream_t stream);

/* y = a + b over n. */
cudaError_t sdw_k_add(const void *a, const void *b, void *y, int64_t n, int dt, cudaStream_t stream);
/* y = s * x over n. */
cudaError_t sdw_k_scale(const void *x, float s, void *y, int64_t n, int dt, cudaStream_t stream);
/* y[r, i] = x[r, i] + v[r % nv] for r < rows, i < n: a per-channel vector
 * (nv = rows) or a convolution's bias over a batch (nv = channels). */
cudaError_t sdw_k_add_rows(const void *x, const void *v, void *y, int64_t rows, int64_t n, int64_t nv, int dt,
                           cudaStream_t stream);
/* y[r, i] = v[i]: a bias broadcast over rows, before a product accumulates onto it. */
cudaError_t sdw_k_fill_rows(const void *v, void *y, int64_t rows, int64_t n, int dt, cudaStream_t stream);
/* y[b, i] = s * (mean + exp(clamp(logvar, -30, 20) / 2) * noise), m [b, 2n] = mean then logvar;
 * noise NULL gives s * mean. */
cudaError_t sdw_k_gaussian(const void *m, const void *noise, float s, void *y, int64_t b, int64_t n, int dt,
                           cudaStream_t stream);
/* x [rows, 2n] -> y [rows, n] = x[:, :n] * gelu(x[:, n:]), exact erf gelu. */
cudaError_t sdw_k_geglu(const void *x, void *y, int64_t rows, int64_t n, int dt, cudaStream_t stream);
/* y[i] = concat(a[i] (na values), c[i] (nc values)) for each of b rows. */
cudaError_t sdw_k_concat(const void *a, const void *c, void *y, int64_t b, int64_t na, int64_t nc, int dt,
                         cudaStream_t stream);
/* x [b, m, n] -> y [b, n, m]. */
cudaError_t sdw_k_transpose(const void *x, void *y, int64_t b, int64_t m, int64_t n, int dt, cudaStream_t stream);
/* y[r, :] = table[ids[r], :] + pos[r % tpos, :] (pos may be NULL); ids in device memory. */
cudaError_t sdw_k_embed(const void *table, const int32_t *ids, const void *pos, void *y, int64_t rows, int64_t dim,
                        int64_t tpos, int dt, cudaStream_t stream);
/* x [bc, h, w] -> y [bc, oh, ow] by torch's 'nearest' rule, as cpu_upsample_nearest. */
cudaError_t sdw_k_upsample_nearest(const void *x, void *y, int64_t bc, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                   int dt, cudaStream_t stream);
/* x [bc, h, w] -> y [bc, hp, wp], y[p, r, c] = x[p, r - pad_t, c - pad_l],
 * zero outside x: the explicit padding a convolution with uneven
 * bottom/right padding needs (cuDNN pads symmetrically). */
cudaError_t sdw_k_pad(const void *x, void *y, int64_t bc, int64_t h, int64_t w, int64_t hp, int64_t wp, int pad_t,
                      int pad_l, int dt, cudaStream_t stream);

/* The columns of a convolution as one product per image takes them, for
 * the np output positions from p0 on (of oh * ow, row-major):
 * col[b][(c * kh + ky) * kw + kx][p - p0] = x[b][c][oy * stride - pad_t +
 * ky][ox * stride - pad_l + kx] with p = oy * ow + ox, 0 outside x (h x w). */
cudaError_t sdw_k_im2col(const void *x, void *col, int64_t b, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                         int64_t oh, int64_t ow, int stride, int pad_t, int pad_l, int64_t p0, int64_t np, int dt,
                         cudaStream_t stream);

/* GroupNorm over x [b, c, n]: sdw_k_group_stats writes float32 (mean, rstd)
 * per (b, group) into stats [b * groups * 2], accumulating in double (a
 * group is split over several blocks, whose counts, means and centred sums
 * of squares are merged exactly as the CPU twin's two passes would give
 * them), with sdw_k_group_scratch(b, c, n, groups) doubles of scratch in
 * part; sdw_k_group_apply then normalises, scales and shifts, and applies
 * SiLU when silu != 0. */
int64_t sdw_k_group_scratch(int64_t b, int64_t c, int64_t n, int64_t groups);
cudaError_t sdw_k_group_stats(const void *x, float *stats, double *part, int64_t b, int64_t c, int64_t n,
                              int64_t groups, float eps, int dt, cudaStream_t stream);
cudaError_t sdw_k_group_apply(const void *x, const float *stats, const void *gamma, const void *beta, void *y,
                              int64_t b, int64_t c, int64_t n, int64_t groups, int silu, int dt, cudaStream_t stream);

/* Fused attention, one pass with an online softmax and no [tq, tk] score
 * buffer: q [b, tq, heads*d], k and v [b, tk, heads*d], out like q,
 * softmax(q k^T * scale) v per head, keys after the query masked when causal.
 * Float32 arithmetic whatever dt (the reference, and the fallback
 * SDW_CUDA_ATTENTION=simt selects). Any d from 1 to 160; d in {40, 64, 80,
 * 160} has its own instantiation. */
cudaError_t sdw_k_attention(const void *q, const void *k, const void *v, void *out, int64_t b, int64_t tq,
                            int64_t tk, int64_t heads, int64_t d, float scale, int causal, int dt,
                            cudaStream_t stream);

/* The same attention on tensor cores, for dt SDW_K_F16 or SDW_K_BF16 only,
 * and scale > 0: the probabilities are rounded to dt before the second
 * product; both products and the softmax accumulate in float32. Any d from
 * 1 to 160, padded with zeros to a multiple of 16.
 *
 * Every CUDA attention (this one, sdw_k_attention, and the backend's cuBLAS
 * path with sdw_k_softmax_rows) takes q k^T from the stored q and k with
 * float32 accumulation, scales it and runs the softmax in float32, and
 * rounds only the probabilities (to dt, for the p v product) and the
 * output: what diffusers' upcast_attention asks of fp16 and bf16 (SD 2.1),
 * always, so that no score has to fit in a 16-bit type. */
cudaError_t sdw_k_attention_tc(const void *q, const void *k, const void *v, void *out, int64_t b, int64_t tq,
                               int64_t tk, int64_t heads, int64_t d, float scale, int causal, int dt,
                               cudaStream_t stream);

/* Softmax over each of `rows` rows of the float32 scores s [rows, n], as the
 * CPU backend's, written to p [rows, n] of type dt (p may be s when dt is
 * SDW_K_F32): rows come in blocks of rpb per head, row r being query
 * r0 + r % rpb; when causal, only its first r0 + r % rpb + 1 entries count
 * and the others are set to 0. The score step of the attention for head
 * dimensions sdw_k_attention does not take. */
cudaError_t sdw_k_softmax_rows(const float *s, void *p, int64_t rows, int64_t n, int64_t rpb, int64_t r0, int causal,
                               int dt, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
