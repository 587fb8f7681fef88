/* Tensors and the op interface that model code is written against.
 *
 * A tensor is float32 as model code sees it, row-major, up to four
 * dimensions, and lives in the memory of the backend that made it, in the
 * backend's storage type: float32 on the CPU, the precision's type on CUDA
 * (half in fp16, bfloat16 in bf16), so that `data` is a handle to be passed
 * to ops, never an address to compute with. Model code (the CLIP text
 * encoder, the UNet, the VAE) calls only the sdw_op_* functions below and
 * the few tensor calls above them; each checks shapes once here and then
 * dispatches to the backend, so the CPU backend and the CUDA backend
 * implement the same small set of kernels and nothing else.
 * The CPU backend is the numerical reference for every other backend. */
#ifndef SDW_TENSOR_H
#define SDW_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define SDW_MAX_DIMS 4

typedef struct sdw_backend sdw_backend;

typedef struct sdw_tensor {
    sdw_backend *be;
    float *data; /* backend memory: host for the CPU backend, device for CUDA */
    int ndim;
    int64_t shape[SDW_MAX_DIMS];
    int owns;    /* data was allocated for this tensor and is freed with it */
    int lowp;    /* data holds a weight in IEEE halves where the backend keeps
                  * other tensors in float32 (the CPU's; see
                  * sdw_tensor_weight_f16): only linear and conv2d take such a
                  * tensor, as their weight */
} sdw_tensor;

typedef enum sdw_act {
    SDW_ACT_SILU,
    SDW_ACT_GELU,       /* exact: 0.5x(1+erf(x/sqrt 2)) */
    SDW_ACT_QUICK_GELU, /* x*sigmoid(1.702x), CLIP's */
} sdw_act;

/* The kernels a backend provides. Shapes have been checked by the caller. */
typedef struct sdw_backend_ops {
    const char *name;
    /* Memory for n elements of the storage type. */
    int (*alloc)(sdw_backend *be, size_t n, float **p, sdw_error *e);
    void (*free)(sdw_backend *be, float *p);
    /* n floats to or from the storage type. */
    int (*upload)(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e);
    int (*download)(sdw_backend *be, float *dst, const float *src, size_t n, sdw_error *e);
    /* Stores a weight given as n IEEE halves in new backend memory: as
     * halves (*lowp = 1: then only linear and conv2d read it, with w_lowp
     * set), or in the storage type (*lowp = 0). */
    int (*weight_f16)(sdw_backend *be, const uint16_t *src, size_t n, float **p, int *lowp, sdw_error *e);
    /* y[m,n] = x[m,k] w[n,k]^T (+ bias[n]); w is low precision when w_lowp */
    int (*linear)(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y,
                  int64_t m, int64_t n, int64_t k, sdw_error *e);
    /* per row of length n: (x - mean) / sqrt(var + eps) * gamma + beta */
    int (*layer_norm)(sdw_backend *be, const float *x, const float *gamma, const float *beta,
                      float *y, int64_t rows, int64_t n, float eps, sdw_error *e);
    /* q[b,tq,h*d], k and v [b,tk,h*d] -> out[b,tq,h*d], softmax(q k^T * scale) v */
    int (*attention)(sdw_backend *be, const float *q, const float *k, const float *v, float *out,
                     int64_t b, int64_t tq, int64_t tk, int64_t heads, int64_t d, float scale,
                     int causal, sdw_error *e);
    int (*act)(sdw_backend *be, const float *x, float *y, int64_t n, sdw_act act, sdw_error *e);
    /* y = a + b, elementwise over n */
    int (*add)(sdw_backend *be, const float *a, const float *b, float *y, int64_t n, sdw_error *e);
    /* y[r, :] = table[ids[r], :] + pos[r % tpos, :]  (pos may be NULL) */
    int (*embed)(sdw_backend *be, const float *table, const int32_t *ids, const float *pos, float *y,
                 int64_t rows, int64_t dim, int64_t tpos, sdw_error *e);
    /* Images are NCHW. y[b,o,:,:] = bias[o] + sum over c,ky,kx of w[o,c,ky,kx] times
     * x[b,c,oy*stride-pad_t+ky, ox*stride-pad_l+kx], reads outside x being 0. */
    int (*conv2d)(sdw_backend *be, const float *x, const float *w, int w_lowp, const float *bias, float *y, int64_t b,
                  int64_t c, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw, int64_t oh, int64_t ow,
                  int stride, int pad_t, int pad_l, sdw_error *e);
    /* x [b,c,n] in groups of c/groups channels: normalised per (b, group),
     * then * gamma[c] + beta[c], then SiLU when silu is set. */
    int (*group_norm)(sdw_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                      int64_t b, int64_t c, int64_t n, int64_t groups, float eps, int silu, sdw_error *e);
    /* x [bc,h,w] -> y [bc,oh,ow], torch's 'nearest': src = floor(dst * (in/out)). */
    int (*upsample_nearest)(sdw_backend *be, const float *x, float *y, int64_t bc, int64_t h, int64_t w,
                            int64_t oh, int64_t ow, sdw_error *e);
    /* y[b] = concat(a[b] (na floats), c[b] (nc floats)) for each of b rows. */
    int (*concat)(sdw_backend *be, const float *a, const float *c, float *y, int64_t b, int64_t na, int64_t nc,
                  sdw_error *e);
    /* x [b,m,n] -> y [b,n,m] */
    int (*transpose)(sdw_backend *be, const float *x, float *y, int64_t b, int64_t m, int64_t n, sdw_error *e);
    /* x [rows,2n] -> y [rows,n]: x[:, :n] * gelu(x[:, n:]) with exact erf gelu */
    int (*geglu)(sdw_backend *be, const float *x, float *y, int64_t rows, int64_t n, sdw_error *e);
    /* y[r, i] = x[r, i] + v[r] for r < rows, i < n  (a per-channel vector into NCHW) */
    int (*add_rows)(sdw_backend *be, const float *x, const float *v, float *y, int64_t rows, int64_t n,
                    sdw_error *e);
    /* y = s * x over n */
    int (*scale)(sdw_backend *be, const float *x, float s, float *y, int64_t n, sdw_error *e);
    /* m [b, 2n] holds mean [b, n] then logvar [b, n]: y = s * (mean + exp(logvar/2) * noise),
     * logvar clamped to [-30, 20]; noise NULL gives s * mean. */
    int (*gaussian)(sdw_backend *be, const float *m, const float *noise, float s, float *y, int64_t b,
                    int64_t n, sdw_error *e);
    /* Waits until every op issued so far has finished (what a profile
     * times, profile.h); NULL where ops finish before they return. */
    int (*sync)(sdw_backend *be, sdw_error *e);
    /* Device memory the backend allocates itself (NULL on the CPU): the
     * bytes reserved now; *peak the most reserved at once since the
     * previous call. */
    size_t (*memory)(sdw_backend *be, size_t *peak);
    /* Device memory a generation could still allocate: the driver's free
     * bytes (NULL on the CPU, whose answer is the host's). */
    size_t (*available)(sdw_backend *be);
    /* At the start of a generation and between its denoising and its VAE
     * decode: gives cached memory back where the backend is set to (NULL:
     * nothing to do). */
    void (*trim)(sdw_backend *be);
    /* Recording and replaying ops (see sdw_graph_begin); NULL where the
     * backend runs every op as it is called. graph_end with keep = 0
     * abandons the recording. */
    int (*graph_begin)(sdw_backend *be, sdw_error *e);
    int (*graph_end)(sdw_backend *be, int keep, void **graph, sdw_error *e);
    int (*graph_launch)(sdw_backend *be, void *graph, sdw_error *e);
    void (*graph_free)(sdw_backend *be, void *graph);
    void (*destroy)(sdw_backend *be);
} sdw_backend_ops;

struct sdw_profile;

struct sdw_backend {
    const sdw_backend_ops *ops;
    void *priv;
    /* Tensors are stored as IEEE halves (CUDA at fp16): activations beyond
     * 65504 overflow, which bfloat16 and float32 storage never do. */
    int fp16;
    struct sdw_profile *prof; /* per-op timings while attached (profile.h) */
};

void sdw_backend_destroy(sdw_backend *be);
/* Device memory reserved now, and in *peak the most reserved at once since
 * the previous call, in bytes; both 0 where the backend does not allocate
 * its own (the CPU). */
size_t sdw_backend_memory(sdw_backend *be, size_t *peak);
/* See sdw_backend_ops.trim. */
void sdw_backend_trim(sdw_backend *be);
/* The bytes a generation could still allocate on be: free device memory,
 * or for the CPU the host's (sdw_meminfo_available). */
size_t sdw_backend_available(sdw_backend *be);

/* A recorded sequence of ops, replayed with one call (a CUDA graph: one
 * launch instead of one per kernel). Between sdw_graph_begin and
 * sdw_graph_end the ops are recorded, not run; sdw_graph_launch runs them.
 * The recorded ops must not move data to or from the host, must free every
 * tensor they allocate, and read and write the same addresses at every
 * replay: inputs are uploaded into the buffers used while recording, before
 * each launch. Memory the recorded ops used for their temporaries belongs to
 * the graph until sdw_graph_free. sdw_graph_begin is SDW_EUNSUPPORTED on a
 * backend without graphs (the CPU) or with them turned off; when
 * sdw_graph_end fails, the ops recorded since sdw_graph_begin did not run and
 * must be run again directly. */
typedef struct sdw_graph sdw_graph;
/* Whether the backend can record at all (a recording may still fail, or be
 * turned off, at sdw_graph_begin). */
int sdw_backend_has_graphs(const sdw_backend *be);
int sdw_graph_begin(sdw_backend *be, sdw_error *e);
int sdw_graph_end(sdw_backend *be, sdw_graph **g, sdw_error *e);
/* Ends a recording without keeping it (after an op failed while recording). */
void sdw_graph_abandon(sdw_backend *be);
int sdw_graph_launch(sdw_graph *g, sdw_error *e);
void sdw_graph_free(sdw_graph *g);

/* Tensor lifetime. sdw_tensor_new allocates uninitialised memory. */
int sdw_tensor_new(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape, sdw_error *e);
int sdw_tensor_from_host(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape,
                         const float *src, sdw_error *e);
/* Overwrites the whole of t with numel floats from the host. */
int sdw_tensor_upload(sdw_tensor *t, const float *src, sdw_error *e);
int sdw_tensor_to_host(const sdw_tensor *t, float *dst, sdw_error *e);
/* A weight of linear or conv2d from IEEE halves: kept as halves (lowp) on
 * the CPU, which converts blocks just before each product (exact); stored
 * like any tensor on CUDA (fp16 takes the halves as they are). */
int sdw_tensor_weight_f16(sdw_tensor *t, sdw_backend *be, int ndim, const int64_t *shape, const uint16_t *src,
                          sdw_error *e);
void sdw_tensor_free(sdw_tensor *t);
int64_t sdw_tensor_numel(const sdw_tensor *t);
/* A view with another shape over the same memory (same numel). */
int sdw_tensor_view(sdw_tensor *v, const sdw_tensor *t, int ndim, const int64_t *shape, sdw_error *e);
/* Formats a shape as "[2,77,768]" for error messages. */
const char *sdw_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

/* Ops. x's leading dimensions are flattened into rows; the last one is the
 * feature dimension. Outputs must be allocated with the right shape. */
int sdw_op_linear(const sdw_tensor *x, const sdw_tensor *w, const sdw_tensor *bias, sdw_tensor *y,
                  sdw_error *e);
int sdw_op_layer_norm(const sdw_tensor *x, const sdw_tensor *gamma, const sdw_tensor *beta, float eps,
                      sdw_tensor *y, sdw_error *e);
/* q [b,tq,heads*d], k and v [b,tk,heads*d], out like q; scale 1/sqrt(d). */
int sdw_op_attention(const sdw_tensor *q, const sdw_tensor *k, const sdw_tensor *v, int heads, int causal,
                     sdw_tensor *out, sdw_error *e);
int sdw_op_act(const sdw_tensor *x, sdw_act act, sdw_tensor *y, sdw_error *e);
int sdw_op_add(const sdw_tensor *a, const sdw_tensor *b, sdw_tensor *y, sdw_error *e);
/* ids are host memory; table [vocab,dim], pos [tpos,dim] or NULL, y [rows/tpos,tpos,dim]. */
int sdw_op_embed(const sdw_tensor *table, const int32_t *ids, const sdw_tensor *pos, sdw_tensor *y,
                 sdw_error *e);

/* Image ops. Images are NCHW [b,c,h,w]. */

/* Padding and stride of a 2-D convolution. The output size is the shape of y,
 * so padding at the bottom and right is whatever that size needs (diffusers'
 * VAE encoder pads only there), at most one more than pad_t/pad_l. */
typedef struct sdw_conv2d_geom {
    int stride, pad_t, pad_l;
} sdw_conv2d_geom;

/* x [b,c,h,w], w [o,c,kh,kw], bias [o] or NULL, y [b,o,oh,ow]. */
int sdw_op_conv2d(const sdw_tensor *x, const sdw_tensor *w, const sdw_tensor *bias, sdw_conv2d_geom g,
                  sdw_tensor *y, sdw_error *e);
/* x [b,c,...] normalised over each group of c/groups channels and all the
 * trailing positions, then * gamma[c] + beta[c], SiLU after when silu != 0. */
int sdw_op_group_norm(const sdw_tensor *x, int groups, const sdw_tensor *gamma, const sdw_tensor *beta,
                      float eps, int silu, sdw_tensor *y, sdw_error *e);
/* x [b,c,h,w] -> y [b,c,oh,ow] by torch's nearest rule (2x: each pixel repeated). */
int sdw_op_upsample_nearest(const sdw_tensor *x, sdw_tensor *y, sdw_error *e);
/* Concatenation along dimension 1: a [b,ca,...], c [b,cc,...] -> y [b,ca+cc,...]. */
int sdw_op_concat(const sdw_tensor *a, const sdw_tensor *c, sdw_tensor *y, sdw_error *e);
/* x [b,m,n] -> y [b,n,m]; NCHW <-> [b,hw,c] through views of rank 3. */
int sdw_op_transpose(const sdw_tensor *x, sdw_tensor *y, sdw_error *e);
/* GEGLU: x [..., 2n] -> y [..., n] = x[..., :n] * gelu(x[..., n:]). */
int sdw_op_geglu(const sdw_tensor *x, sdw_tensor *y, sdw_error *e);
/* y[b,c,...] = x[b,c,...] + v[b,c]: a per-channel vector added to an image. */
int sdw_op_add_channel(const sdw_tensor *x, const sdw_tensor *v, sdw_tensor *y, sdw_error *e);
/* y = s * x */
int sdw_op_scale(const sdw_tensor *x, float s, sdw_tensor *y, sdw_error *e);
/* A diagonal Gaussian given as moments [b,2c,...] (mean channels, then log
 * variance): y [b,c,...] = s * (mean + exp(clamp(logvar,-30,20)/2) * noise),
 * or s * mean when noise is NULL. noise has y's shape. */
int sdw_op_gaussian(const sdw_tensor *moments, const sdw_tensor *noise, float s, sdw_tensor *y, sdw_error *e);

#endif
