/* libFuzzer target for the tokenizer.json loader (sdw_tok_load_json): any
 * bytes as the file. A tokenizer that loads must encode a prompt to ids of
 * its own vocabulary, spelling its special tokens in another case too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "model/tokenizer.h"

/* The file, in a private directory made once, reused, and removed at exit. */
static char g_dir[32], g_path[64];

static void remove_file(void)
{
    unlink(g_path);
    rmdir(g_dir);
}

int fuzz_tokenizer_json_one(const uint8_t *data, size_t size)
{
    if (!g_path[0]) {
        snprintf(g_dir, sizeof g_dir, "/tmp/sdw-fuzz-tokjson.XXXXXX");
        if (!mkdtemp(g_dir))
            abort();
        snprintf(g_path, sizeof g_path, "%s/tokenizer.json", g_dir);
        atexit(remove_file);
    }
    FILE *f = fopen(g_path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
        abort();
    sdw_tokenizer *t;
    sdw_error e = { 0 };
    int rc = sdw_tok_load_json(&t, g_path, &e);
    if (rc < 0)
        return rc;
    int32_t ids[SDW_TOK_CONTEXT];
    int n = sdw_tok_encode(t, "a photo of a CAT <|EndOfText|> <|startoftext|>", ids, SDW_TOK_CONTEXT,
                           SDW_TOK_EOS, &e);
    if (n < 2 || n > SDW_TOK_CONTEXT)
        abort();
    for (int i = 0; i < n; i++)
        if (ids[i] < 0)
            abort();
    if (sdw_tok_vocab_id(t, "<|endoftext|>") != ids[n - 1])
        abort();
    sdw_tok_free(t);
    return 0;
}

SDW_FUZZ_ENTRY(fuzz_tokenizer_json_one)
