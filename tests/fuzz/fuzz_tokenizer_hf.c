/* libFuzzer target for the loader of an older diffusers tokenizer/ folder
 * (sdw_tok_load_hf; fuzz_tokenizer_json covers tokenizer.json):
 * any bytes as vocab.json up to the first NUL byte and merges.txt after it.
 * A vocabulary that loads must then encode a prompt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "model/tokenizer.h"

/* The two files, in a private directory made once, reused, and removed at
 * exit. */
static char g_dir[32], g_vocab[64], g_merges[64];

static void remove_files(void)
{
    unlink(g_vocab);
    unlink(g_merges);
    rmdir(g_dir);
}

static int write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t put = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) == 0 && put == size ? 0 : -1;
}

int fuzz_tokenizer_hf_one(const uint8_t *data, size_t size)
{
    if (!g_vocab[0]) {
        snprintf(g_dir, sizeof g_dir, "/tmp/sdw-fuzz-tok.XXXXXX");
        if (!mkdtemp(g_dir))
            abort();
        snprintf(g_vocab, sizeof g_vocab, "%s/vocab.json", g_dir);
        snprintf(g_merges, sizeof g_merges, "%s/merges.txt", g_dir);
        atexit(remove_files);
    }
    const uint8_t *merges = memchr(data, 0, size);
    size_t vlen = merges ? (size_t)(merges - data) : size;
    merges = merges ? merges + 1 : data + size;
    if (write_file(g_vocab, data, vlen) < 0 || write_file(g_merges, merges, size - (size_t)(merges - data)) < 0)
        abort();
    sdw_tokenizer *t;
    sdw_error e = { 0 };
    int rc = sdw_tok_load_hf(&t, g_vocab, g_merges, &e);
    if (rc < 0)
        return rc;
    int32_t ids[SDW_TOK_CONTEXT];
    sdw_tok_encode(t, "a photo of an astronaut riding a horse", ids, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
    sdw_tok_free(t);
    return 0;
}

SDW_FUZZ_ENTRY(fuzz_tokenizer_hf_one)
