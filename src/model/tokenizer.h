/* CLIP byte-level BPE tokenizer, token for token equal to transformers'
 * CLIPTokenizer as Stable Diffusion 1.x pipelines use it. */
#ifndef SDW_TOKENIZER_H
#define SDW_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define SDW_TOK_BOS 49406
#define SDW_TOK_EOS 49407
#define SDW_TOK_CONTEXT 77

typedef struct sdw_tokenizer sdw_tokenizer;

/* A diffusers tokenizer/ folder: vocab.json and merges.txt. */
int sdw_tok_load_hf(sdw_tokenizer **t, const char *vocab_json, const char *merges_txt, sdw_error *e);
/* OpenAI's bpe_simple_vocab_16e6.txt.gz, as shipped in data/. */
int sdw_tok_load_bpe_gz(sdw_tokenizer **t, const char *path, sdw_error *e);
/* The bundled vocabulary, found as base/datadir.h says. */
int sdw_tok_load_default(sdw_tokenizer **t, sdw_error *e);
void sdw_tok_free(sdw_tokenizer *t);

/* Writes the tokenizer as a diffusers tokenizer/ folder's vocab.json and
 * merges.txt (which sdw_tok_load_hf reads back to the same tokenizer): every
 * token it can produce (byte symbols, merge results, the two special
 * tokens) with its id, and its merges by rank. Tokens of a loaded vocab.json
 * that no merge makes are not kept in memory, so they are not written. */
int sdw_tok_save_hf(const sdw_tokenizer *t, const char *vocab_json, const char *merges_txt, sdw_error *e);

/* Writes exactly `len` ids: BOS, the text's tokens truncated so that EOS
 * still fits, EOS, then pad_id: what tokenizer(text, padding="max_length",
 * max_length=len, truncation=True) gives. Returns the number of tokens before
 * padding (BOS and EOS included), or a negative sdw_status (SDW_EINVAL for
 * text that is not valid UTF-8). */
int sdw_tok_encode(const sdw_tokenizer *t, const char *text, int32_t *ids, int len, int32_t pad_id,
                   sdw_error *e);
/* Tokens of the text alone, no BOS/EOS, no truncation: up to cap ids written,
 * the full count returned. */
int sdw_tok_tokenize(const sdw_tokenizer *t, const char *text, int32_t *ids, int cap, sdw_error *e);

/* The same for text of known length, which may hold NUL characters (a JSON
 * "\u0000"): transformers drops them, as these do. */
int sdw_tok_encode_n(const sdw_tokenizer *t, const char *text, size_t text_len, int32_t *ids, int len,
                     int32_t pad_id, sdw_error *e);
int sdw_tok_tokenize_n(const sdw_tokenizer *t, const char *text, size_t text_len, int32_t *ids, int cap,
                       sdw_error *e);

/* The Unicode version of the linked utf8proc. The tokenizer's tables assume
 * 15.0 (Debian 12's libutf8proc 2.8); see tokenizer.c. */
const char *sdw_tok_unicode_version(void);

#endif
