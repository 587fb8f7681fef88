/* The tokenizer against transformers 5's CLIPTokenizer: the ids of
 * tests/fixtures/tokens.json through all three loaders (the bundled
 * vocabulary, tiny-a's vocab.json + merges.txt, tiny-a-today's
 * tokenizer.json), the normalizer and the pattern's classes for every code
 * point against tests/fixtures/tokenizer-unicode.txt, the BPE merge order on
 * a hand-made vocabulary, added tokens (tests/fixtures/tokens-sd2.json's SD 2
 * "!" through tiny-sd2's tokenizer.json and the bundled vocabulary), and the
 * loaders' error paths. */
#define _GNU_SOURCE /* asprintf */
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

/* One fixture entry through one tokenizer: the 77 ids padded with pad
 * (entry[key]), and the untruncated count (entry[count], BOS and EOS
 * included). */
static int check_entry(const sdw_tokenizer *t, json_object *entry, const char *key, const char *count, int32_t pad,
                       const char **why)
{
    static char msg[sizeof ((sdw_error *)0)->msg];
    json_object *jp = json_object_object_get(entry, "prompt");
    const char *prompt = json_object_get_string(jp);
    size_t plen = (size_t)json_object_get_string_len(jp);
    json_object *want = json_object_object_get(entry, key);
    int32_t ids[SDW_TOK_CONTEXT];
    sdw_error e = {0};
    int n = sdw_tok_encode_n(t, prompt, plen, ids, SDW_TOK_CONTEXT, pad, &e);
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
    int all = sdw_tok_tokenize_n(t, prompt, plen, ids, 0, &e);
    if (all + 2 != json_object_get_int(json_object_object_get(entry, count))) {
        *why = "untruncated token count differs";
        return 0;
    }
    return 1;
}

static void test_fixture(const sdw_tokenizer *gz)
{
    const char *vocab = tap_fixture("models/tiny-a/tokenizer/vocab.json");
    const char *merges = tap_fixture("models/tiny-a/tokenizer/merges.txt");
    const char *tj = tap_fixture("models/tiny-a-today/tokenizer/tokenizer.json");
    sdw_tokenizer *hf = NULL, *js = NULL;
    sdw_error e = {0};
    int rc = sdw_tok_load_hf(&hf, vocab, merges, &e);
    tap_ok(rc == 0, "load tiny-a's vocab.json + merges.txt (%s)", rc ? e.msg : "ok");
    rc = sdw_tok_load_json(&js, tj, &e);
    tap_ok(rc == 0, "load tiny-a-today's tokenizer.json (%s)", rc ? e.msg : "ok");

    json_object *root = json_object_from_file(tap_fixture("tokens.json"));
    if (tap_ok(root && json_object_is_type(root, json_type_array), "tokens.json is a JSON array")) {
        size_t n = json_object_array_length(root);
        tap_ok(n >= 180, "tokens.json has %zu prompts", n);
        const sdw_tokenizer *toks[3] = {gz, hf, js};
        const char *names[3] = {"bundled", "vocab.json + merges.txt", "tokenizer.json"};
        for (size_t i = 0; i < n; i++) {
            json_object *entry = json_object_array_get_idx(root, i);
            const char *prompt = json_object_get_string(json_object_object_get(entry, "prompt"));
            const char *why = "missing prompt";
            int ok = prompt != NULL, k = 0;
            for (; ok && k < 3; k++)
                ok = toks[k] && check_entry(toks[k], entry, "ids", "n_tokens", SDW_TOK_EOS, &why);
            if (!tap_ok(ok, "prompt %zu \"%s\"", i, prompt ? show(prompt) : "(missing)"))
                tap_diag("%s vocabulary: %s", names[k - 1], why);
        }
    }
    json_object_put(root);
    sdw_tok_free(hf);
    sdw_tok_free(js);
}

/* tests/fixtures/tokens-sd2.json: SD 2's pad token "!" is an added token,
 * split out as id 0 wherever a prompt has it. "ids" are tiny-sd2's
 * tokenizer.json (every token matched as written), "ids_hub" the hub's
 * old-layout SD 2 folder, which single files get: the bundled vocabulary,
 * the special tokens normalized, "!" as written. */
static void test_sd2(void)
{
    sdw_tokenizer *js = NULL, *hub = NULL;
    sdw_error e = {0};
    int rc = sdw_tok_load_json(&js, tap_fixture("models/tiny-sd2/tokenizer/tokenizer.json"), &e);
    tap_ok(rc == 0, "load tiny-sd2's tokenizer.json (%s)", rc ? e.msg : "ok");
    rc = sdw_tok_load_default(&hub, &e);
    if (tap_ok(rc == 0, "load the bundled vocabulary (%s)", rc ? e.msg : "ok"))
        tap_ok(sdw_tok_add_special(hub, "!", false, &e) == 0, "\"!\" added to it is id 0");
    json_object *root = json_object_from_file(tap_fixture("tokens-sd2.json"));
    if (tap_ok(root && json_object_is_type(root, json_type_array), "tokens-sd2.json is a JSON array")) {
        size_t n = json_object_array_length(root), bangs = 0;
        for (size_t i = 0; i < n; i++) {
            json_object *entry = json_object_array_get_idx(root, i);
            const char *prompt = json_object_get_string(json_object_object_get(entry, "prompt"));
            const char *why = "missing prompt";
            bangs += prompt && strchr(prompt, '!');
            if (!tap_ok(prompt && js && check_entry(js, entry, "ids", "n_tokens", 0, &why),
                        "tokenizer.json: prompt %zu \"%s\"", i, prompt ? show(prompt) : "(missing)"))
                tap_diag("%s", why);
            why = "missing prompt";
            if (!tap_ok(prompt && hub && check_entry(hub, entry, "ids_hub", "n_tokens_hub", 0, &why),
                        "bundled + \"!\": prompt %zu \"%s\"", i, prompt ? show(prompt) : "(missing)"))
                tap_diag("%s", why);
        }
        tap_ok(n >= 60 && bangs >= 30, "tokens-sd2.json has %zu prompts, %zu with \"!\"", n, bangs);
    }
    json_object_put(root);
    sdw_tok_free(js);
    sdw_tok_free(hub);
}

/* Parses "X,Y,..." (hex code points) into UTF-8. */
static size_t hex_utf8(const char *s, char *out)
{
    size_t k = 0;
    while (*s) {
        char *end;
        unsigned long c = strtoul(s, &end, 16);
        if (c < 0x80) {
            out[k++] = (char)c;
        } else if (c < 0x800) {
            out[k++] = (char)(0xC0 | (c >> 6));
            out[k++] = (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out[k++] = (char)(0xE0 | (c >> 12));
            out[k++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[k++] = (char)(0x80 | (c & 0x3F));
        } else {
            out[k++] = (char)(0xF0 | (c >> 18));
            out[k++] = (char)(0x80 | ((c >> 12) & 0x3F));
            out[k++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[k++] = (char)(0x80 | (c & 0x3F));
        }
        s = *end == ',' ? end + 1 : end;
    }
    return k;
}

static int normalizes_to(const char *in, size_t n, const char *want, size_t wn)
{
    char *out;
    size_t on;
    sdw_error e;
    if (sdw_tok_normalize(in, n, &out, &on, &e) < 0)
        return 0;
    int ok = on == wn && memcmp(out, want, wn) == 0;
    free(out);
    return ok;
}

/* Every code point (one "cp" range at a time) and every "seq" line of
 * tokenizer-unicode.txt; the first few mismatches are printed. */
static void test_unicode(void)
{
    FILE *f = fopen(tap_fixture("tokenizer-unicode.txt"), "r");
    if (!tap_ok(f != NULL, "%s readable", tap_fixture("tokenizer-unicode.txt")))
        return;
    static const char classes[] = "SLNO";
    char line[512], in[128], want[128];
    long cps = 0, bad_cls = 0, bad_map = 0, seqs = 0, bad_seq = 0;
    while (fgets(line, sizeof line, f)) {
        char a[64], b[256], cls, map[256];
        unsigned long lo, hi;
        if (sscanf(line, "cp %lx %lx %c %255s", &lo, &hi, &cls, map) == 4) {
            for (unsigned long c = lo; c <= hi; c++, cps++) {
                char hex[16];
                snprintf(hex, sizeof hex, "%lX", c);
                size_t n = hex_utf8(hex, in), wn;
                if (map[0] == '=') {
                    wn = hex_utf8(map + 1, want);
                } else {
                    snprintf(hex, sizeof hex, "%lX", (unsigned long)((long)c + strtol(map, NULL, 10)));
                    wn = hex_utf8(hex, want);
                }
                if (classes[sdw_tok_classify((uint32_t)c)] != cls && bad_cls++ < 5)
                    tap_diag("U+%04lX: class %c, the reference says %c", c, classes[sdw_tok_classify((uint32_t)c)],
                             cls);
                if (!normalizes_to(in, n, want, wn) && bad_map++ < 5)
                    tap_diag("U+%04lX: normalizes differently from the reference (%s)", c, map);
            }
        } else if (sscanf(line, "seq %63s %255s", a, b) == 2) {
            seqs++;
            size_t n = hex_utf8(a, in), wn = hex_utf8(b, want);
            if (!normalizes_to(in, n, want, wn) && bad_seq++ < 5)
                tap_diag("%s: normalizes differently from the reference (%s)", a, b);
        }
    }
    fclose(f);
    tap_ok(cps == 0x110000 - 0x800, "every code point but the surrogates listed (%ld)", cps);
    tap_ok(bad_cls == 0, "pattern class of every code point as the reference's (%ld differ)", bad_cls);
    tap_ok(bad_map == 0, "normalizer on every code point alone as the reference's (%ld differ)", bad_map);
    tap_ok(seqs > 1000 && bad_seq == 0,
           "normalizer on %ld reordering/composition sequences as the reference's (%ld differ)", seqs, bad_seq);
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

    /* tokenizers needs no header, skips "#version" lines anywhere and
     * takes CRLF, but no blank line. */
    write_file(tmp_path("bad.txt"), "a b\r\n#version: 0.2\n", 19);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    tap_ok(rc == 0, "merges.txt without header, with CRLF and a late #version line loads (%s)", rc ? e.msg : "ok");
    sdw_tok_free(t);
    t = NULL;
    write_file(tmp_path("bad.txt"), "#version: 0.2\n\na b\n", 19);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "merge line 2 is not two symbols", "blank line in merges.txt");
    write_file(tmp_path("bad.txt"), "#version: 0.2\na  b\n", 19);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "not two symbols", "two spaces in a merge line");

    write_file(tmp_path("bad.txt"), "#version: 0.2\na b\nq zz\n", 23);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "\"zz\", which is not in the vocabulary", "merge naming an unknown symbol");

    write_file(tmp_path("bad.txt"), "#version: 0.2\na b\nb a\n", 22);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "\"ba\", which is not in the vocabulary", "merge making an unknown symbol");

    write_file(tmp_path("bad.txt"), "#version: 0.2\na b c\n", 20);
    rc = sdw_tok_load_hf(&t, tmp_path("vocab.json"), tmp_path("bad.txt"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "not two symbols", "merge line with three symbols");

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

static const char *const thread_prompts[] = {
    "a photograph of an astronaut riding a horse", "ΟΔΥΣΣΕΥΣ café 中文 😀 it's",
    "(masterpiece:1.2), best quality, <|endoftext|> 12345", "İstanbul ﬁne Ｆｕｌｌ",
};

/* Entries in a vocab.json, or -1. */
static int vocab_size(const char *path)
{
    json_object *o = json_object_from_file(path);
    int n = o && json_object_is_type(o, json_type_object) ? json_object_object_length(o) : -1;
    json_object_put(o);
    return n;
}

/* A tokenizer.json over write_hf's vocabulary: `model` is the model
 * object's members after "type", `added` the added_tokens list. */
static void write_json_tok(const char *type, const char *model_rest, const char *added)
{
    json_object *v = json_object_from_file(tmp_path("vocab.json"));
    char *doc = NULL;
    if (asprintf(&doc, "{\"version\": \"1.0\", \"added_tokens\": %s, \"normalizer\": {\"type\": \"Lowercase\"},"
                       " \"model\": {\"type\": %s, \"vocab\": %s%s}}",
                 added, type, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), model_rest) < 0)
        exit(EXIT_FAILURE);
    write_file(tmp_path("tokenizer.json"), doc, strlen(doc));
    free(doc);
    json_object_put(v);
}

static void test_json(void)
{
    const char *extra[] = {"ab", "abc</w>"};
    const char *specials = "[{\"id\": 514, \"content\": \"<|startoftext|>\", \"normalized\": true},"
                           " {\"id\": 515, \"content\": \"<|endoftext|>\", \"normalized\": false}]";
    sdw_tokenizer *t = NULL;
    sdw_error e = {0};
    int32_t ids[16];
    write_hf(extra, 2, "#version: 0.2\na b\nab c</w>\n");

    /* Both spellings of a merge, and each special token's "normalized". */
    write_json_tok("\"BPE\"", ", \"end_of_word_suffix\": \"</w>\", \"merges\": [[\"a\", \"b\"], \"ab c</w>\"]",
                   specials);
    int rc = sdw_tok_load_json(&t, tmp_path("tokenizer.json"), &e);
    if (tap_ok(rc == 0, "minimal tokenizer.json loads (%s)", rc ? e.msg : "ok")) {
        int n = sdw_tok_tokenize(t, "ABC", ids, 16, &e);
        tap_ok(n == 1 && ids[0] == 513, "merges as a list and as \"a b\": ABC -> abc</w> (n=%d)", n);
        n = sdw_tok_tokenize(t, "<|StartOfText|><|EndOfText|><|endoftext|>", ids, 16, &e);
        /* the other case of <|endoftext|> is text: "<|", "endoftext", "|>" */
        tap_ok(n == 15 && ids[0] == 514 && ids[14] == 515,
               "normalized <|startoftext|> matches in any case, <|endoftext|> only as written (n=%d)", n);
        tap_ok(sdw_tok_add_special(t, "<|endoftext|>", true, &e) == 515, "adding a token again keeps its id");
        n = sdw_tok_tokenize(t, "<|EndOfText|>", ids, 16, &e);
        tap_ok(n == 1 && ids[0] == 515, "the later flag wins: <|EndOfText|> is the special id (n=%d)", n);
        /* tokenizers' leftmost-longest among all added tokens, the raw ones
         * first: "!" (33) and "!!" (new, 516) as written, "aB" (new, 517)
         * normalized, so found as "ab" in the lowercased text but not across
         * a raw match. */
        tap_ok(sdw_tok_add_special(t, "!", false, &e) == 33 && sdw_tok_add_special(t, "!!", false, &e) == 516 &&
                   sdw_tok_add_special(t, "aB", true, &e) == 517 && sdw_tok_add_special(t, "", true, &e) < 0,
               "added ids: the vocabulary's, else the next past it; none for empty content");
        n = sdw_tok_tokenize(t, "!!!c AB a!b", ids, 16, &e);
        tap_ok(n == 7 && ids[0] == 516 && ids[1] == 33 && ids[2] == 256 + 'c' && ids[3] == 517 &&
                   ids[4] == 256 + 'a' && ids[5] == 33 && ids[6] == 256 + 'b',
               "\"!!!\" is \"!!\" then \"!\"; \"AB\" matches normalized; \"a!b\" is cut at \"!\" (n=%d)", n);
        tap_ok(sdw_tok_added_id(t, "!!") == 516 && sdw_tok_added_id(t, "ab") == -1 &&
                   sdw_tok_vocab_id(t, "!!") == 516,
               "sdw_tok_added_id knows only added tokens, sdw_tok_vocab_id them first");
        sdw_tok_clear_added(t);
        n = sdw_tok_tokenize(t, "!", ids, 16, &e);
        int m = sdw_tok_tokenize(t, "<|endoftext|>", ids + 1, 15, &e);
        tap_ok(n == 1 && ids[0] == 256 + 33 && m == 13 && sdw_tok_added_id(t, "!") == -1,
               "after sdw_tok_clear_added \"!\" is BPE'd again, <|endoftext|> is text (n=%d, %d)", n, m);
        n = sdw_tok_encode(t, "a", ids, 4, 0, &e);
        tap_ok(n == 3 && ids[0] == 514 && ids[2] == 515 && ids[3] == 0,
               "BOS and EOS from the vocabulary then (n=%d)", n);
        tap_ok(sdw_tok_vocab_id(t, "!") == 33 && sdw_tok_vocab_id(t, "!</w>") == 256 + 33 &&
                   sdw_tok_vocab_id(t, "abc</w>") == 513 && sdw_tok_vocab_id(t, "zz") == -1,
               "sdw_tok_vocab_id looks up the loaded vocabulary");
    }
    sdw_tok_free(t);
    t = NULL;

    static const struct {
        const char *type, *rest, *added;
        int code;
        const char *needle, *what;
    } bad[] = {
        {"\"WordPiece\"", ", \"merges\": []", "[]", SDW_EUNSUPPORTED,
         "model.type \"WordPiece\" is not supported (only BPE)", "WordPiece model"},
        {"null", ", \"merges\": []", "[]", SDW_EUNSUPPORTED, "model.type is missing", "no model type"},
        {"\"BPE\"", ", \"merges\": [[\"a\", \"b\", \"c\"]]", "[]", SDW_EFORMAT, "model.merges[0] is neither",
         "merge of three symbols"},
        {"\"BPE\"", ", \"merges\": [\"a b\", 7]", "[]", SDW_EFORMAT, "model.merges[1] is neither", "merge as a number"},
        {"\"BPE\"", ", \"merges\": [\"ab\"]", "[]", SDW_EFORMAT, "model.merges[0] is neither",
         "merge string without space"},
        {"\"BPE\"", ", \"merges\": {}", "[]", SDW_EFORMAT, "model.merges must be a list", "merges not a list"},
        {"\"BPE\"", ", \"merges\": [[\"a\", \"zz\"]]", "[]", SDW_EFORMAT,
         "model.merges entry 0 names \"zz\", which is not in the vocabulary", "merge naming an unknown symbol"},
        {"\"BPE\"", ", \"merges\": [[\"b\", \"a\"]]", "[]", SDW_EFORMAT, "\"ba\", which is not in the vocabulary",
         "merge making an unknown symbol"},
        {"\"BPE\"", ", \"end_of_word_suffix\": \"##\", \"merges\": []", "[]", SDW_EUNSUPPORTED,
         "model.end_of_word_suffix is \"##\"", "another end-of-word suffix"},
        {"\"BPE\"", ", \"merges\": []", "[{\"id\": 3, \"content\": \"<|endoftext|>\"}]", SDW_EFORMAT,
         "added_tokens[0].id is 3, but transformers 5 gives \"<|endoftext|>\" the id 515",
         "added token with an id transformers would not give it"},
        {"\"BPE\"", ", \"merges\": []", "[{\"id\": 33, \"content\": \"a\"}]", SDW_EFORMAT,
         "added_tokens[0].id is 33, but transformers 5 gives \"a\" the id 97",
         "added token contradicting the vocabulary"},
        {"\"BPE\"", ", \"merges\": []", "[{\"content\": \"<|endoftext|>\"}]", SDW_EFORMAT,
         "added_tokens[0] needs", "added token without id"},
        {"\"BPE\"", ", \"merges\": []", "[{\"id\": 33, \"content\": \"!\"}, {\"id\": 33, \"content\": \"a\"}]",
         SDW_EFORMAT, "added_tokens[1] has the id 33 of added_tokens[0] too", "two added tokens with one id"},
        {"\"BPE\"", ", \"merges\": []", "[{\"id\": 33, \"content\": \"!\", \"lstrip\": true}]", SDW_EUNSUPPORTED,
         "added_tokens[0].lstrip is true, which is not supported", "lstrip"},
        {"\"BPE\"", ", \"merges\": []", "[{\"id\": 33, \"content\": \"!\", \"single_word\": true}]",
         SDW_EUNSUPPORTED, "added_tokens[0].single_word is true", "single_word"},
        {"\"BPE\"", ", \"merges\": []", "[{\"id\": 33, \"content\": \"\"}]", SDW_EFORMAT,
         "added_tokens[0] needs a non-empty string \"content\"", "empty added token"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_json_tok(bad[i].type, bad[i].rest, bad[i].added);
        rc = sdw_tok_load_json(&t, tmp_path("tokenizer.json"), &e);
        expect_error(rc, bad[i].code, &e, bad[i].needle, bad[i].what);
    }
    /* No vocab at all, a vocabulary without the byte symbols, a truncated
     * file, trailing garbage. */
    const char *novocab = "{\"model\": {\"type\": \"BPE\", \"merges\": []}}";
    write_file(tmp_path("tokenizer.json"), novocab, strlen(novocab));
    rc = sdw_tok_load_json(&t, tmp_path("tokenizer.json"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "model.vocab is missing", "no model.vocab");
    const char *small = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    write_file(tmp_path("tokenizer.json"), small, strlen(small));
    rc = sdw_tok_load_json(&t, tmp_path("tokenizer.json"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "lacks the symbol for byte 0x00", "vocabulary without the byte symbols");
    write_json_tok("\"BPE\"", ", \"merges\": []", specials);
    json_object *whole = json_object_from_file(tmp_path("tokenizer.json"));
    const char *text = json_object_to_json_string_ext(whole, JSON_C_TO_STRING_PLAIN);
    write_file(tmp_path("tokenizer.json"), text, strlen(text) / 2);
    rc = sdw_tok_load_json(&t, tmp_path("tokenizer.json"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "invalid JSON", "truncated tokenizer.json");
    write_file(tmp_path("tokenizer.json"), "{} {}", 5);
    rc = sdw_tok_load_json(&t, tmp_path("tokenizer.json"), &e);
    expect_error(rc, SDW_EFORMAT, &e, "trailing data", "two JSON values");
    json_object_put(whole);
    rc = sdw_tok_load_json(&t, tmp_path("missing.json"), &e);
    expect_error(rc, SDW_ENOTFOUND, &e, "missing.json", "missing tokenizer.json");
    tap_ok(t == NULL, "no tokenizer after a failed load");
}

/* sdw_tok_save_hf writes what sdw_tok_load_hf reads back to the same ids. */
static void test_save(const sdw_tokenizer *gz)
{
    sdw_tokenizer *back = NULL;
    sdw_error e = {0};
    int rc = sdw_tok_save_hf(gz, tmp_path("saved.json"), tmp_path("saved.txt"), &e);
    if (rc == 0)
        rc = sdw_tok_load_hf(&back, tmp_path("saved.json"), tmp_path("saved.txt"), &e);
    if (!tap_ok(rc == 0, "bundled vocabulary saved as vocab.json + merges.txt and loaded back (%s)", rc ? e.msg : "ok"))
        return;
    int same = 1;
    for (size_t i = 0; i < sizeof thread_prompts / sizeof thread_prompts[0]; i++) {
        int32_t a[SDW_TOK_CONTEXT], b[SDW_TOK_CONTEXT];
        sdw_tok_encode(gz, thread_prompts[i], a, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
        sdw_tok_encode(back, thread_prompts[i], b, SDW_TOK_CONTEXT, SDW_TOK_EOS, &e);
        same &= memcmp(a, b, sizeof a) == 0;
    }
    tap_ok(same && vocab_size(tmp_path("saved.json")) == 49408, "the saved tokenizer encodes alike, 49408 entries");
    sdw_tok_free(back);
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
    tap_diag("utf8proc Unicode %s (tables bridge 15.0.0 to the reference)", sdw_tok_unicode_version());

    sdw_tokenizer *gz = NULL;
    sdw_error e = {0};
    int rc = sdw_tok_load_default(&gz, &e);
    if (rc == SDW_ENOTFOUND)
        tap_ok(0, "bundled vocabulary found: %s", e.msg);
    else if (tap_ok(rc == 0, "load bundled bpe_simple_vocab_16e6.txt.gz (%s)", rc ? e.msg : "ok")) {
        test_fixture(gz);
        test_encode_edges(gz);
        test_threads(gz);
        test_save(gz);
    }
    sdw_tok_free(gz);
    test_unicode();
    test_merge_order();
    test_errors();
    test_json();
    test_sd2();

    static const char *const names[] = {"vocab.json", "merges.txt", "bad.json", "bad.txt", "cut.gz", "plain.gz",
                                        "tokenizer.json", "saved.json", "saved.txt"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unlink(tmp_path(names[i]));
    rmdir(tmpdir);
    return tap_done();
}
