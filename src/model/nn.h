/* Building blocks shared by the UNet and the VAE: parameter loading through a
 * name translation (diffusers names in the code, LDM names in single-file
 * checkpoints), convolutions, normalisations, ResNet blocks and the spatial
 * transformer. Everything runs through the sdw_op_* interface, so each block
 * works unchanged on every backend. */
#ifndef SDW_NN_H
#define SDW_NN_H

#include "model/model.h"
#include "tensor/tensor.h"

/* Writes the name a diffusers-named tensor has in the file; nonzero when it
 * has none or the buffer is too small. */
typedef int (*sdw_rename_fn)(const void *ctx, const char *name, char *out, size_t cap);

typedef struct sdw_loader {
    sdw_backend *be;
    const sdw_weights *w;
    sdw_rename_fn rename; /* NULL: diffusers names as they are */
    const void *ctx;
} sdw_loader;

/* Loads the tensor the diffusers name refers to, with exactly this shape. */
int sdw_nn_load(const sdw_loader *l, sdw_tensor *t, const char *name, int ndim, const int64_t *shape,
                sdw_error *e);
/* Loads a [rows, cols] matrix stored either so or as a 1x1 convolution
 * weight [rows, cols, 1, 1] (LDM attention and projection layers). */
int sdw_nn_load_matrix(const sdw_loader *l, sdw_tensor *t, const char *name, int64_t rows, int64_t cols,
                       sdw_error *e);
/* 1 when the diffusers-named tensor exists in the file. */
int sdw_nn_has(const sdw_loader *l, const char *name);

/* A low-rank update run beside a frozen weight (a LoRA's, for one job):
 * the layer's output gains up(down(x)), the scale already in up. For a
 * linear layer down is [r,in] and up [out,r]; for a convolution down is
 * [r,cin,k,k] with the convolution's own geometry and up [cout,r,1,1].
 * Several chain through next. Owned by whoever attached them (lora.h). */
typedef struct sdw_delta {
    sdw_tensor down, up;
    const struct sdw_delta *next;
} sdw_delta;

typedef struct sdw_linear {
    sdw_tensor w, b; /* b.data NULL: no bias */
    int64_t in, out;
    const sdw_delta *delta; /* NULL: the weight alone */
} sdw_linear;

typedef struct sdw_conv {
    sdw_tensor w, b;
    int64_t cin, cout, k;
    sdw_conv2d_geom g;
    const sdw_delta *delta;
} sdw_conv;

/* The layers a model part built, by the diffusers path they were loaded
 * under: what a LoRA can target. sdw_linear_load and sdw_conv_load add
 * every layer they load when the weights carry a set (sdw_weights.layers),
 * so that each new layer is covered without more code. */
typedef struct sdw_layer_ref {
    char part[32];   /* sdw_weights.part: "unet", "text_encoder", ... */
    char path[200];  /* "down_blocks.0.attentions.0.proj_in" */
    char flat[200];  /* the same with '_' for '.', as LoRA files name it */
    sdw_linear *linear; /* exactly one of the two is set */
    sdw_conv *conv;
} sdw_layer_ref;

struct sdw_layer_set {
    sdw_layer_ref *v;
    size_t n, cap;
};
typedef struct sdw_layer_set sdw_layer_set;

int sdw_layer_set_add(sdw_layer_set *s, const char *part, const char *path, sdw_linear *lin, sdw_conv *conv,
                      sdw_error *e);
void sdw_layer_set_free(sdw_layer_set *s);

typedef struct sdw_gnorm {
    sdw_tensor w, b;
    int groups;
    float eps;
} sdw_gnorm;

int sdw_linear_load(const sdw_loader *l, sdw_linear *m, const char *prefix, int64_t out, int64_t in, int bias,
                    sdw_error *e);
/* y = x w^T + b (+ each delta's up(down(x))). */
int sdw_linear_forward(const sdw_linear *m, const sdw_tensor *x, sdw_tensor *y, sdw_error *e);
void sdw_linear_free(sdw_linear *m);

/* A kxk convolution with bias, stride and symmetric padding. */
int sdw_conv_load(const sdw_loader *l, sdw_conv *c, const char *prefix, int64_t cout, int64_t cin, int k,
                  int stride, int pad, sdw_error *e);
/* y [b,cout,oh,ow] with oh, ow from the input size and the geometry, plus
 * extra_pad rows and columns at the bottom and right (the VAE encoder's). */
int sdw_conv_forward(const sdw_conv *c, const sdw_tensor *x, int extra_pad, sdw_tensor *y, sdw_error *e);
/* Adds c's deltas for input x to y, an output of c's own convolution (for
 * callers that run sdw_op_conv2d themselves, into a buffer they own). */
int sdw_conv_add_deltas(const sdw_conv *c, const sdw_tensor *x, sdw_tensor *y, sdw_error *e);
void sdw_conv_free(sdw_conv *c);

int sdw_gnorm_load(const sdw_loader *l, sdw_gnorm *n, const char *prefix, int64_t c, int groups, float eps,
                   sdw_error *e);
void sdw_gnorm_free(sdw_gnorm *n);

/* ResNet block: GN-SiLU-conv, + time embedding projection (when temb_dim >
 * 0), GN-SiLU-conv, + the input (through a 1x1 conv when channels change). */
typedef struct sdw_resnet {
    sdw_gnorm n1, n2;
    sdw_conv c1, c2, sc;
    sdw_linear temb;
    int has_sc, has_temb;
    int64_t cin, cout;
} sdw_resnet;

int sdw_resnet_load(const sdw_loader *l, sdw_resnet *r, const char *prefix, int64_t cin, int64_t cout,
                    int64_t temb_dim, int groups, float eps, sdw_error *e);
/* temb_act is SiLU(time embedding) [b,temb_dim], or NULL without one; y is
 * allocated here as [b,cout,h,w]. */
int sdw_resnet_forward(const sdw_resnet *r, const sdw_tensor *x, const sdw_tensor *temb_act, sdw_tensor *y,
                       sdw_error *e);
void sdw_resnet_free(sdw_resnet *r);

/* diffusers' Transformer2DModel with BasicTransformerBlocks: GroupNorm (eps
 * 1e-6), proj_in, per block self-attention, cross-attention and a GEGLU
 * feed-forward (each pre-LayerNorm with a residual), proj_out, + the input. */
typedef struct sdw_tblock {
    sdw_tensor ln_w[3], ln_b[3];
    sdw_linear q1, k1, v1, o1, q2, k2, v2, o2, ff1, ff2;
} sdw_tblock;

typedef struct sdw_transformer {
    sdw_gnorm norm;
    sdw_linear pin, pout; /* 1x1 conv weights are read as matrices */
    sdw_tblock *blocks;
    int nblocks, heads;
    int64_t c, ctx_dim;
} sdw_transformer;

int sdw_transformer_load(const sdw_loader *l, sdw_transformer *t, const char *prefix, int64_t c, int heads,
                         int nblocks, int64_t ctx_dim, int groups, sdw_error *e);
/* x [b,c,h,w], ctx [b,tokens,ctx_dim]; y allocated here like x. */
int sdw_transformer_forward(const sdw_transformer *t, const sdw_tensor *x, const sdw_tensor *ctx, sdw_tensor *y,
                            sdw_error *e);
void sdw_transformer_free(sdw_transformer *t);

#endif
