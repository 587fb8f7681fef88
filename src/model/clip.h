/* The CLIP text encoder that conditions Stable Diffusion: token and position
 * embeddings, pre-LN transformer blocks with a causal mask, and the final
 * LayerNorm. For SD 1.5 it maps [B,77] token ids to [B,77,768], for SD 2.x
 * (OpenCLIP ViT-H, exact gelu, 23 of its 24 blocks) to [B,77,1024]; SDXL
 * takes the penultimate states of two (ViT-L and OpenCLIP bigG, the second
 * with its text projection for the pooled embedding). It asks
 * the weights for transformers 5's CLIPTextModel names (embeddings.*,
 * encoder.layers.N.*, final_layer_norm.*); sdw_weights' prefix and map find
 * them in the other layouts. */
#ifndef SDW_CLIP_H
#define SDW_CLIP_H

#include "model/model.h"
#include "tensor/tensor.h"

typedef struct sdw_clip sdw_clip;

int sdw_clip_load(sdw_clip **c, sdw_backend *be, const sdw_clip_config *cfg, const sdw_weights *w,
                  sdw_error *e);
void sdw_clip_free(sdw_clip *c);

/* ids: host [batch, tokens] with tokens <= max_positions; out: [batch,
 * tokens, hidden] on the encoder's backend. clip_skip k (0 = off) stops k
 * layers early and applies the final LayerNorm there, as diffusers'
 * clip_skip does (A1111's "clip skip 2" is k = 1). */
int sdw_clip_encode(sdw_clip *c, const int32_t *ids, int batch, int tokens, int clip_skip, sdw_tensor *out,
                    sdw_error *e);
/* transformers' hidden_states[layer] into out [batch, tokens, hidden]: the
 * embeddings for 0, else the output of that many layers, without the final
 * LayerNorm (SDXL conditions on num_layers - 1, hidden_states[-2]). pooled,
 * when not NULL, receives [batch, projection_dim]: the text projection of
 * the final-LayerNormed last layer at the EOS position (text_embeds of a
 * CLIPTextModelWithProjection); it needs a projection. */
int sdw_clip_encode_hidden(sdw_clip *c, const int32_t *ids, int batch, int tokens, int layer, sdw_tensor *out,
                           sdw_tensor *pooled, sdw_error *e);

#endif
