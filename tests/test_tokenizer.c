/* The tokenizer against ids produced by transformers' CLIPTokenizer (no ftfy)
 * in tests/fixtures/tokens.json, through both vocabulary loaders, plus the
 * BPE merge order on a hand-made vocabulary and the loaders' error paths. */
#include <json-c/json.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/tokenizer.h"
#include "tap.h"

static char tmpdir[] = "/tmp/sdw-tok-XXXXXX";

static const char *tmp_path(const char *name)
{
    static char buf[4][4096];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
    return b;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        perror(path);
        exit(EXIT_FAILURE);
    }
    fclose(f);
}

/* The prompt, printable, for a TAP line. */
static const char *show(const char *s)
{
    static char buf[96];
    size_t k = 0;
    for (; *s && k + 9 < sizeof buf; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            k += (size_t)snprintf(buf + k, sizeof buf - k, "\\x%02x", c);
        else
            buf[k++] = (char)c;
    }
    if (*s) {
        while (k > 0 && ((unsigned char)buf[k - 1] & 0xC0) == 0x80)
            k--;
        if (k > 0 && (unsigned char)buf[k - 1] >= 0xC0)
            k--;
        memcpy(buf + k, "...", 4);
    } else {
        buf[k] = 0;
    }
    return buf;
}

static int same_ids(const int32_t *got, json_object *want, int n)
{
    if (!want || json_object_array_length(want) != (size_t)n)
        return 0;
    for (int i = 0; i < n; i++)
        if (got[i] != json_object_get_int(json_object_array_get_idx(want, (size_t)i)))
            return 0;
    return 1;
}

static void diag_ids(const char *label, const int32_t *ids, int n)
{
    char line[1024];
    size_t k = 0;
    for (int i = 0; i < n && k + 12 < sizeof line; i++)
        k += (size_t)snprintf(line + k, sizeof line - k, " %d", ids[i]);
    tap_diag("%s:%s", label, line);
}

/* One fixture entry through one tokenizer: the padded 77 ids, and the full
 * token list when the fixture has one ("full", BOS and EOS included). */
static int check_entry(const sdw_tokenizer *t, json_object *entry, const char **why)
{
    static char msg[sizeof ((sdw_error *)0)->msg];
    json_object *jp = json_object_object_get(entry, "prompt");
    const char *prompt = json_object_get_string(jp);
    size_t plen = (size_t)json_object_get_string_len(jp);
    json_object *want = json_object_object_get(entry, "ids");
    json_object *full = json_object_object_get(entry, "full");
    int32_t ids[SDW_TOK_CONTEXT];
    sdw_error e = {0};
    int n = sdw_tok_encode_n(t, prompt, plen, ids, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
    if (n < 0) {
        memcpy(msg, e.msg, sizeof msg);
        *why = msg;
        return 0;
    }
    if (!same_ids(ids, want, SDW_TOK_CONTEXT)) {
        *why = "77 ids differ";
        diag_ids("got ", ids, SDW_TOK_CONTEXT);
        return 0;
    }
    if (full) {
        int cap = (int)json_object_array_length(full);
        int32_t *all = malloc(sizeof *all * (size_t)(cap + 2));
        int m = sdw_tok_tokenize_n(t, prompt, plen, all + 1, cap, &e);
        int ok = m == cap - 2;
        if (ok) {
            all[0] = SDW_TOK_BOS;
            all[cap - 1] = SDW_TOK_EOS;
            ok = same_ids(all, full, cap);
        }
        free(all);
        if (!ok) {
            *why = "untruncated tokens differ";
            return 0;
        }
    }
    return 1;
}

/* Entries in a vocab.json: the HF fixture only stands in for SD's
 * vocabulary when it is the full 49408-token one. */
static int vocab_entries(const char *path)
{
    json_object *o = json_object_from_file(path);
    int n = o && json_object_is_type(o, json_type_object) ? json_object_object_length(o) : -1;
    json_object_put(o);
    return n;
}

static void test_fixture(const sdw_tokenizer *gz)
{
    const char *vocab = tap_fixture("models/tiny-a/tokenizer/vocab.json");
    const char *merges = tap_fixture("models/tiny-a/tokenizer/merges.txt");
    sdw_tokenizer *hf = NULL;
    sdw_error e = {0};
    if (access(vocab, R_OK) != 0 || access(merges, R_OK) != 0) {
        tap_ok(0, "HF-layout tokenizer present at %s", vocab);
    } else if (vocab_entries(vocab) != 49408) {
        tap_ok(0, "%s is the 49408-token SD vocabulary", vocab);
    } else {
        int rc = sdw_tok_load_hf(&hf, vocab, merges, &e);
        tap_ok(rc == 0, "load HF-layout tokenizer (%s)", rc ? e.msg : "ok");
    }

    if (access(tap_fixture("tokens.json"), R_OK) != 0) {
        tap_ok(0, "fixture %s present", tap_fixture("tokens.json"));
        sdw_tok_free(hf);
        return;
    }
    json_object *root = json_object_from_file(tap_fixture("tokens.json"));
    if (!tap_ok(root && json_object_is_type(root, json_type_array), "tokens.json is a JSON array")) {
        sdw_tok_free(hf);
        return;
    }
    size_t n = json_object_array_length(root);
    tap_ok(n >= 120, "tokens.json has %zu prompts", n);
    for (size_t i = 0; i < n; i++) {
        json_object *entry = json_object_array_get_idx(root, i);
        const char *prompt = json_object_get_string(json_object_object_get(entry, "prompt"));
        const char *why = "";
        int ok = prompt && check_entry(gz, entry, &why);
        const char *which = "gz";
        if (ok && hf) {
            ok = check_entry(hf, entry, &why);
            which = "hf";
        }
        if (!tap_ok(ok, "prompt %zu \"%s\"", i, prompt ? show(prompt) : "(missing)"))
            tap_diag("%s vocabulary: %s", which, why);
    }
    json_object_put(root);
    sdw_tok_free(hf);
}

/* A minimal vocabulary in HF layout: the 512 byte symbols, extra symbols
 * `extra` (ids from 512 on), the two special tokens, and the merge lines. */
static void write_hf(const char *extra[], int nextra, const char *merges_txt)
{
    json_object *v = json_object_new_object();
    int id = 0;
    char sym[16];
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            int cp = b;
            if (!printable) {
                int k = 0;
                for (int c = 0; c < b; c++)
                    k += !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
                cp = 256 + k;
            }
            int n = cp < 0x80 ? (sym[0] = (char)cp, 1)
                              : (sym[0] = (char)(0xC0 | (cp >> 6)), sym[1] = (char)(0x80 | (cp & 0x3F)), 2);
            memcpy(sym + n, pass ? "</w>" : "", pass ? 5 : 1);
            json_object_object_add(v, sym, json_object_new_int(id++));
        }
    for (int i = 0; i < nextra; i++)
        json_object_object_add(v, extra[i], json_object_new_int(id++));
    json_object_object_add(v, "<|startoftext|>", json_object_new_int(id++));
    json_object_object_add(v, "<|endoftext|>", json_object_new_int(id++));
    json_object_to_file_ext(tmp_path("vocab.json"), v, JSON_C_TO_STRING_PLAIN);
    json_object_put(v);
    write_file(tmp_path("merges.txt"), merges_txt, strlen(merges_txt));
}

static void test_merge_order(void)
{
    /* Ranks: "a a" < "a a</w>" < "aa a</w>". Each round merges every
     * occurrence of the best pair left to right without overlap, so
     * a a a a</w> becomes aa a a</w> (not a aa a</w>), then aa aa</w>. */
    const char *extra[] = {"aa", "aa</w>", "aaa</w>"};
    write_hf(extra, 3, "#version: 0.2\na a\na a</w>\naa a</w>\n");
    sdw_tokenizer *t = NULL;
    sdw_error e = {0};
    int rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("merges.txt"), &e);
    if (!tap_ok(rc == 0, "load hand-made vocabulary (%s)", rc ? e.msg : "ok"))
        return;
    int32_t ids[8];
    int n = sdw_tok_tokenize(t, "aaa", ids, 8, &e);
    tap_ok(n == 1 && ids[0] == 514, "aaa -> aaa</w> (n=%d id=%d)", n, n > 0 ? ids[0] : -1);
    n = sdw_tok_tokenize(t, "aaaa", ids, 8, &e);
    tap_ok(n == 2 && ids[0] == 512 && ids[1] == 513, "aaaa -> aa aa</w> (n=%d)", n);
    n = sdw_tok_tokenize(t, "aaaaa", ids, 8, &e);
    tap_ok(n == 2 && ids[0] == 512 && ids[1] == 514, "aaaaa -> aa aaa</w> (n=%d)", n);
    n = sdw_tok_tokenize(t, "b", ids, 8, &e);
    tap_ok(n == 1 && ids[0] == 256 + 'b', "b -> b</w> (id=%d)", n > 0 ? ids[0] : -1);
    n = sdw_tok_tokenize(t, "x<|endoftext|>", ids, 8, &e);
    tap_ok(n == 2 && ids[1] == 516, "a literal <|endoftext|> keeps its vocabulary id (n=%d)", n);
    sdw_tok_free(t);
}

static void expect_error(int rc, int code, const sdw_error *e, const char *needle, const char *what)
{
    tap_ok(rc == code && strstr(e->msg, needle) != NULL, "%s: %s (rc=%d)", what, e->msg, rc);
}

static void test_errors(void)
{
    sdw_tokenizer *t = NULL;
    sdw_error e = {0};
    const char *extra[] = {"ab"};

    write_hf(extra, 1, "#version: 0.2\na b\n");
    write_file(tmp_path("bad.json"), "{\"a\": 1, \"b\": ", 14);
    int rc = sdw_tok_load_hf(&t, tmp_path("bad.json"), tmp_path("merges.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "invalid JSON", "truncated vocab.json");
    tap_ok(t == NULL, "no tokenizer after a failed load");

    write_file(tmp_path("bad.json"), "[1, 2]", 6);
    rc = sdw_tok_load_hf(&t, tmp_path("bad.json"), tmp_path("merges.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "JSON object", "vocab.json not an object");

    write_file(tmp_path("bad.json"), "{\"a\": 1} x", 10);
    rc = sdw_tok_load_hf(&t, tmp_path("bad.json"), tmp_path("merges.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "invalid JSON", "trailing garbage after vocab.json");

    write_file(tmp_path("bad.txt"), "a b\n", 4);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "#version", "merges.txt without header");

    write_file(tmp_path("bad.txt"), "#version: 0.2\na b\nq zz\n", 23);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "\"zz\", which is not in the vocabulary", "merge naming an unknown symbol");

    write_file(tmp_path("bad.txt"), "#version: 0.2\na b\nb a\n", 22);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "\"ba\", which is not in the vocabulary", "merge making an unknown symbol");

    write_file(tmp_path("bad.txt"), "#version: 0.2\na b c\n", 20);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "more than two", "merge line with three symbols");

    rc = sdw_tok_load_hf(&t, tmp_path("missing.json"), tmp_path("merges.txt"), &e);
    expect_error(rc, SDW_ENOTFOUND, &e, "missing.json", "missing vocab.json");

    /* Truncated gzip: the real vocabulary cut in half. */
    char gzpath[4096];
    const char *dir = getenv("SDW_DATA_DIR");
    snprintf(gzpath, sizeof gzpath, "%s/bpe_simple_vocab_16e6.txt.gz", dir ? dir : "data");
    FILE *f = fopen(gzpath, "rb");
    if (f) {
        static char buf[2 << 20];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        write_file(tmp_path("cut.gz"), buf, n / 2);
        rc = sdw_tok_load_bpe_gz(&t, tmp_path("cut.gz"), &e);
        expect_error(rc, SDW_EFORMAT, &e, "gzip", "truncated bpe_simple_vocab_16e6.txt.gz");
    } else {
        tap_ok(0, "bundled vocabulary %s present", gzpath);
    }
    write_file(tmp_path("plain.gz"), "#version\na b\n", 13);
    rc = sdw_tok_load_bpe_gz(&t, tmp_path("plain.gz"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "not a gzip file", "uncompressed file given as .gz");
    rc = sdw_tok_load_bpe_gz(&t, tmp_path("missing.gz"), &e);
    expect_error(rc, SDW_ENOTFOUND, &e, "missing.gz", "missing gz");
}

static void test_encode_edges(const sdw_tokenizer *t)
{
    int32_t ids[SDW_TOK_CONTEXT];
    sdw_error e = {0};
    int rc = sdw_tok_encode(t, "a \xff b", ids, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
    expect_error(rc, SDW_EINVAL, &e, "UTF-8", "invalid UTF-8 prompt");
    rc = sdw_tok_encode(t, "a \xed\xa0\x80", ids, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
    expect_error(rc, SDW_EINVAL, &e, "UTF-8", "UTF-8-encoded surrogate");
    rc = sdw_tok_encode(t, "a", ids, 1, SDW_TOK_EOS, &e);
    expect_error(rc, SDW_EINVAL, &e, "BOS and EOS", "context too small");

    char longp[4000] = "";
    for (int i = 0; i < 200; i++)
        strcat(longp, "cat ");
    rc = sdw_tok_encode(t, longp, ids, SDW_TOK_CONTEXT, 0, &e);
    tap_ok(rc == SDW_TOK_CONTEXT && ids[0] == SDW_TOK_BOS && ids[76] == SDW_TOK_EOS,
           "truncation keeps BOS and EOS (rc=%d)", rc);
    int32_t all[256];
    tap_ok(sdw_tok_tokenize(t, longp, all, 10, &e) == 200, "tokenize counts past its capacity");
    rc = sdw_tok_encode(t, "cat", ids, SDW_TOK_CONTEXT, 0, &e);
    tap_ok(rc == 3 && ids[2] == SDW_TOK_EOS && ids[3] == 0 && ids[76] == 0, "padding uses pad_id (rc=%d)", rc);
}

#define NTHREADS 4

typedef struct job {
    const sdw_tokenizer *t;
    int ok;
} job;

static const char *const thread_prompts[] = {
    "a photograph of an astronaut riding a horse", "ΟΔΥΣΣΕΥΣ café 中文 😀 it's",
    "(masterpiece:1.2), best quality, <|endoftext|> 12345", "İstanbul ﬁne Ｆｕｌｌ",
};

static void *encode_many(void *arg)
{
    job *j = arg;
    int32_t want[4][SDW_TOK_CONTEXT], got[SDW_TOK_CONTEXT];
    sdw_error e;
    j->ok = 1;
    for (int p = 0; p < 4; p++)
        sdw_tok_encode(j->t, thread_prompts[p], want[p], SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
    for (int k = 0; k < 2000; k++) {
        int p = k & 3;
        if (sdw_tok_encode(j->t, thread_prompts[p], got, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e) < 0 ||
            memcmp(got, want[p], sizeof got) != 0)
            j->ok = 0;
    }
    return NULL;
}

static void test_threads(const sdw_tokenizer *t)
{
    pthread_t th[NTHREADS];
    job jobs[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        jobs[i] = (job){t, 0};
        pthread_create(&th[i], NULL, encode_many, &jobs[i]);
    }
    int ok = 1;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        ok &= jobs[i].ok;
    }
    tap_ok(ok, "concurrent encodes from %d threads agree", NTHREADS);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    tap_diag("utf8proc Unicode %s (tables assume 15.0.0)", sdw_tok_unicode_version());

    sdw_tokenizer *gz = NULL;
    sdw_error e = {0};
    int rc = sdw_tok_load_default(&gz, &e);
    if (rc == SDW_ENOTFOUND)
        tap_ok(0, "bundled vocabulary found: %s", e.msg);
    else if (tap_ok(rc == 0, "load bundled bpe_simple_vocab_16e6.txt.gz (%s)", rc ? e.msg : "ok")) {
        test_fixture(gz);
        test_encode_edges(gz);
        test_threads(gz);
    }
    sdw_tok_free(gz);
    test_merge_order();
    test_errors();

    static const char *const names[] = {"vocab.json", "merges.txt", "bad.json", "bad.txt", "cut.gz", "plain.gz"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unlink(tmp_path(names[i]));
    rmdir(tmpdir);
    return tap_done();
}
