/* CLIP byte-level BPE tokenizer, token for token equal to transformers 5's
 * CLIPTokenizer (backed by the Rust tokenizers library) as Stable Diffusion
 * pipelines use it; tokenizer.c says what that computes and where Unicode
 * versions matter. A loaded tokenizer is read-only: any number of threads
 * may encode with it at once. */
#ifndef SDW_TOKENIZER_H
#define SDW_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* The ids of <|startoftext|> and <|endoftext|> in SD's vocabulary, and the
 * text encoder's context length. */
#define SDW_TOK_BOS 49406
#define SDW_TOK_EOS 49407
#define SDW_TOK_CONTEXT 77

typedef struct sdw_tokenizer sdw_tokenizer;

/* A tokenizers tokenizer.json, as transformers 5 writes into a diffusers
 * tokenizer/ folder. Like transformers 5's CLIPTokenizer, which rebuilds the
 * normalizer, pre-tokenizer and post-processor from its own code, only the
 * model's vocab and merges (lists ["a", "b"] or strings "a b") and the ids
 * of the two special tokens in added_tokens are read, with each one's
 * "normalized" flag (see sdw_tok_set_normalized); model.type must be "BPE"
 * and model.end_of_word_suffix, when given, "</w>". */
int sdw_tok_load_json(sdw_tokenizer **t, const char *path, sdw_error *e);
/* An older diffusers tokenizer/ folder: vocab.json and merges.txt, the
 * latter read as tokenizers reads it (every line "a b" but those starting
 * with "#version"). */
int sdw_tok_load_hf(sdw_tokenizer **t, const char *vocab_json, const char *merges_txt, sdw_error *e);
/* OpenAI's bpe_simple_vocab_16e6.txt.gz, as shipped in data/: its first
 * 48894 merges make SD's 49408-token vocabulary. */
int sdw_tok_load_bpe_gz(sdw_tokenizer **t, const char *path, sdw_error *e);
/* The bundled vocabulary, found as base/datadir.h says. */
int sdw_tok_load_default(sdw_tokenizer **t, sdw_error *e);
void sdw_tok_free(sdw_tokenizer *t);

/* Whether the special token `content` (<|startoftext|> or <|endoftext|>)
 * is a "normalized" added token, found in the normalized text and so in any
 * case ("<|EndOfText|>"), or found only exactly as written in the raw text.
 * transformers takes the flag from the folder's files (tokenizer_config.json's
 * added_tokens_decoder over tokenizer.json's added_tokens), false where they
 * say nothing; sdw_tok_load_json reads the latter, the other loaders start
 * from true, what SD folders carry. Set it before encoding; false when
 * content is not one of the two. */
bool sdw_tok_set_normalized(sdw_tokenizer *t, const char *content, bool normalized);

/* The id of a vocabulary entry spelled as in vocab.json (byte symbols,
 * "</w>" included: "!" is 0, "!</w>" 256), or -1: how a folder's pad_token
 * becomes an id. */
int32_t sdw_tok_vocab_id(const sdw_tokenizer *t, const char *token);

/* Writes the tokenizer as a diffusers tokenizer/ folder's vocab.json (every
 * entry of the loaded vocabulary) and merges.txt (its merges by rank), which
 * sdw_tok_load_hf reads back to the same tokenizer. */
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
 * "\u0000"): like any other control character, a NUL is a token of its own
 * byte, as in transformers 5. */
int sdw_tok_encode_n(const sdw_tokenizer *t, const char *text, size_t text_len, int32_t *ids, int len,
                     int32_t pad_id, sdw_error *e);
int sdw_tok_tokenize_n(const sdw_tokenizer *t, const char *text, size_t text_len, int32_t *ids, int cap,
                       sdw_error *e);

/* The two halves of the text path, for the per-code-point test against the
 * reference (tests/fixtures/tokenizer-unicode.txt):
 *
 * sdw_tok_normalize is the normalizer alone (NFC, each whitespace run to one
 * space, per-code-point lowercase): the text's normalized form as malloc'd
 * UTF-8 with a terminating NUL in *out, its length in *out_len; SDW_EINVAL
 * for text that is not UTF-8.
 *
 * sdw_tok_classify says which alternative of the pre-tokenizer's pattern a
 * code point of normalized text falls in: whitespace (dropped), a letter
 * (runs form one piece), a number (each one a piece of its own) or anything
 * else (runs form one piece). */
int sdw_tok_normalize(const char *text, size_t len, char **out, size_t *out_len, sdw_error *e);

typedef enum sdw_tok_class { SDW_TOK_SPACE, SDW_TOK_LETTER, SDW_TOK_NUMBER, SDW_TOK_OTHER } sdw_tok_class;
sdw_tok_class sdw_tok_classify(uint32_t cp);

/* The Unicode version of the linked utf8proc. tokenizer.c's tables bridge
 * utf8proc 15.0 (Debian 12's libutf8proc 2.8) to the reference's Unicode
 * tables; with another version the per-code-point test says what moved. */
const char *sdw_tok_unicode_version(void);

#endif
