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
struct json_object;

/* A tokenizers tokenizer.json, as transformers 5 writes into a diffusers
 * tokenizer/ folder. Like transformers 5's CLIPTokenizer, which rebuilds the
 * normalizer, pre-tokenizer and post-processor from its own code, only the
 * model's vocab and merges (lists ["a", "b"] or strings "a b") and
 * added_tokens are read; model.type must be "BPE" and
 * model.end_of_word_suffix, when given, "</w>". Every added token is added
 * in the order of its id, as transformers does (see sdw_tok_add_special),
 * and must get the id the file gives it; lstrip, rstrip and single_word are
 * refused; <|startoftext|> and <|endoftext|> must have ids, in model.vocab
 * or as added tokens. SD 2's files list "!", its pad token, so that "!" in
 * a prompt is id 0 there, never BPE'd. */
int sdw_tok_load_json(sdw_tokenizer **t, const char *path, sdw_error *e);
/* An older diffusers tokenizer/ folder: vocab.json and merges.txt, the
 * latter read as tokenizers reads it (every line "a b" but those starting
 * with "#version"). This and the next two loaders add <|startoftext|> and
 * <|endoftext|> (which the vocabulary must hold) as "normalized" added
 * tokens; model.c replaces them by what a folder's files say. */
int sdw_tok_load_hf(sdw_tokenizer **t, const char *vocab_json, const char *merges_txt, sdw_error *e);
/* OpenAI's bpe_simple_vocab_16e6.txt.gz, as shipped in data/: its first
 * 48894 merges make SD's 49408-token vocabulary. */
int sdw_tok_load_bpe_gz(sdw_tokenizer **t, const char *path, sdw_error *e);
/* The bundled vocabulary, found as base/datadir.h says. */
int sdw_tok_load_default(sdw_tokenizer **t, sdw_error *e);
void sdw_tok_free(sdw_tokenizer *t);

/* Adds `content` to the added vocabulary as tokenizers' add_tokens does,
 * and returns its id (or a negative sdw_status: empty content, text that is
 * not UTF-8). An added token is cut out of a prompt before BPE sees it:
 * one not "normalized" is found in the raw text exactly as written, one
 * "normalized" in the normalized text as its own normalized form (so
 * "<|EndOfText|>" too); among all of them, leftmost-longest, the raw ones
 * first (tokenizer.c says more). A content added before keeps its id and
 * takes the new flag, the last one winning as in tokenizers; a new one gets
 * its vocabulary id, else the next id past the vocabulary and the added
 * ids. Add before encoding: encoding does not lock. */
int sdw_tok_add_special(sdw_tokenizer *t, const char *content, bool normalized, sdw_error *e);
int sdw_tok_add_special_n(sdw_tokenizer *t, const char *content, size_t len, bool normalized, sdw_error *e);
/* Empties the added vocabulary: transformers 5 builds CLIPTokenizer's
 * afresh from a folder's files. Encoding then needs <|startoftext|> and
 * <|endoftext|> in the vocabulary. */
void sdw_tok_clear_added(sdw_tokenizer *t);
/* The id of an added token, or -1. */
int32_t sdw_tok_added_id(const sdw_tokenizer *t, const char *token);

/* An AddedToken as tokenizers and transformers write it in JSON (o:
 * {"content": ..., "normalized": ..., "special": ...}), for `field` of
 * `path` in errors: *content (in o) and *len, and *normalized, which
 * defaults to "not special", `special` forcing special (as transformers
 * does for special_tokens_map.json). lstrip, rstrip and single_word must be
 * false. */
int sdw_tok_read_added(struct json_object *o, bool special, const char *path, const char *field,
                       const char **content, size_t *len, bool *normalized, sdw_error *e);

/* The id of a token spelled as in vocab.json (byte symbols, "</w>"
 * included: "!" is 0, "!</w>" 256), an added token first, as tokenizers'
 * token_to_id, or -1: how a folder's pad_token becomes an id. */
int32_t sdw_tok_vocab_id(const sdw_tokenizer *t, const char *token);

/* Writes the tokenizer as a diffusers tokenizer/ folder's vocab.json (every
 * entry of the loaded vocabulary) and merges.txt (its merges by rank), which
 * sdw_tok_load_hf reads back to the same tokenizer. */
int sdw_tok_save_hf(const sdw_tokenizer *t, const char *vocab_json, const char *merges_txt, sdw_error *e);

/* Writes exactly `len` ids: BOS, the text's tokens truncated so that EOS
 * still fits, EOS, then pad_id: what tokenizer(text, padding="max_length",
 * max_length=len, truncation=True) gives. Returns the number of tokens before
 * padding (BOS and EOS included), or a negative sdw_status (SDW_EINVAL for
 * text that is not valid UTF-8, or a tokenizer whose <|startoftext|> or
 * <|endoftext|> has no id). */
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
