/* libFuzzer target for the CLIP tokenizer: any bytes as a prompt, against
 * the bundled vocabulary (loaded once). Text that is not UTF-8 is refused;
 * any other text encodes to BOS, at most 75 tokens of the vocabulary, EOS
 * and padding, and those tokens are the first ones sdw_tok_tokenize_n gives;
 * the same holds with the special tokens matched only in the raw text, and
 * sdw_tok_normalize accepts the text.
 * The vocabulary loads in LLVMFuzzerInitialize under libFuzzer, so that
 * its time does not count as the first input's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/tokenizer.h"

#ifndef SDW_FUZZ_DATA_DIR
#define SDW_FUZZ_DATA_DIR "data"
#endif

#define VOCAB_SIZE 49408

static sdw_tokenizer *g_tok;

int fuzz_tokenizer_init(void)
{
    if (g_tok)
        return 0;
    const char *dir = getenv("SDW_DATA_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/bpe_simple_vocab_16e6.txt.gz", dir && *dir ? dir : SDW_FUZZ_DATA_DIR);
    sdw_error e = { 0 };
    int rc = sdw_tok_load_bpe_gz(&g_tok, path, &e);
    if (rc < 0)
        fprintf(stderr, "fuzz_tokenizer: %s\n", e.msg);
    return rc;
}

int fuzz_tokenizer_one(const uint8_t *data, size_t size)
{
    if (fuzz_tokenizer_init() < 0)
        abort();
    int32_t ids[SDW_TOK_CONTEXT], all[SDW_TOK_CONTEXT];
    sdw_error e = { 0 };
    int n = sdw_tok_encode_n(g_tok, (const char *)data, size, ids, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
    if (n < 0)
        return n;
    if (n < 2 || n > SDW_TOK_CONTEXT || ids[0] != SDW_TOK_BOS || ids[n - 1] != SDW_TOK_EOS)
        abort();
    for (int i = 0; i < SDW_TOK_CONTEXT; i++)
        if (ids[i] < 0 || ids[i] >= VOCAB_SIZE || (i >= n && ids[i] != SDW_TOK_EOS))
            abort();
    int m = sdw_tok_tokenize_n(g_tok, (const char *)data, size, all, SDW_TOK_CONTEXT, &e);
    if (m < n - 2 || (m <= SDW_TOK_CONTEXT - 2 && m != n - 2) || memcmp(all, ids + 1, (size_t)(n - 2) * sizeof *ids))
        abort();
    /* The other way of matching added tokens: in the raw text only, with
     * SD 2's "!" beside the special tokens; then back to the first way. */
    if (sdw_tok_add_special(g_tok, "<|startoftext|>", false, &e) < 0 ||
        sdw_tok_add_special(g_tok, "<|endoftext|>", false, &e) < 0 || sdw_tok_add_special(g_tok, "!", false, &e) != 0)
        abort();
    m = sdw_tok_encode_n(g_tok, (const char *)data, size, ids, SDW_TOK_CONTEXT, 0, &e);
    sdw_tok_clear_added(g_tok);
    if (sdw_tok_add_special(g_tok, "<|startoftext|>", true, &e) < 0 ||
        sdw_tok_add_special(g_tok, "<|endoftext|>", true, &e) < 0)
        abort();
    if (m < 2 || m > SDW_TOK_CONTEXT || ids[m - 1] != SDW_TOK_EOS)
        abort();
    for (int i = 0; i < m; i++)
        if (ids[i] < 0 || ids[i] >= VOCAB_SIZE)
            abort();
    char *norm;
    size_t nlen;
    if (sdw_tok_normalize((const char *)data, size, &norm, &nlen, &e) < 0)
        abort();
    free(norm);
    return 0;
}

#ifdef SDW_LIBFUZZER
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    return fuzz_tokenizer_init() < 0 ? 1 : 0;
}
#endif

SDW_FUZZ_ENTRY(fuzz_tokenizer_one)
