/* CLIP byte-level BPE, matching transformers 5's CLIPTokenizer, a thin
 * class over a tokenizers (Rust) pipeline that transformers builds in code:
 * whatever a tokenizer.json says about normalizers or pre-tokenizers is
 * ignored, only its vocabulary and merges are used. For a prompt that is:
 *
 *   1. Normalizer, on the whole text: NFC; every run of \s (Oniguruma's
 *      \s, which is Unicode White_Space: \t-\r, space, U+0085, U+00A0,
 *      U+1680, U+2000-200A, U+2028/2029, U+202F, U+205F, U+3000) becomes one
 *      space; then each code point is lowercased alone (Rust's
 *      char::to_lowercase: no final-sigma context, U+0130 -> "i\u0307").
 *      Nothing is dropped: control, format and zero-width characters,
 *      U+FEFF and NUL stay and become byte tokens.
 *   2. The added tokens (the two special ones, SD 2's pad "!", whatever a
 *      folder adds; sdw_tok_add_special): those not "normalized" are found
 *      before step 1, in the raw text, exactly as written; step 1 runs on
 *      each stretch between those matches, and the "normalized" ones are
 *      found in its result as their own normalized form, so in any case
 *      ("<|EndOfText|>"). Both searches are tokenizers' Aho-Corasick in
 *      leftmost-longest mode, so a raw "!" cuts "a|>!" before a normalized
 *      "|>!" could match, and of "!" and "!!" the longer wins at a position.
 *   3. Between them, the pattern <\|startoftext\|>|<\|endoftext\|>|'s|'t|
 *      're|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (case-sensitive)
 *      picks the pieces and whitespace is dropped. Its special-token
 *      alternatives match the lowercased spelling of a special token that
 *      was not an added-token match. Ideographs are letters like any other:
 *      "東京" is one piece.
 *   4. ByteLevel (use_regex, no prefix space) re-splits each piece with
 *      GPT-2's pattern, which leaves every piece of step 3 whole but a
 *      special token's ("<|", "endoftext", "|>"), and maps its UTF-8 bytes
 *      to symbols; BPE then merges, "</w>" on the last one.
 *
 * Unicode versions. The reference mixes three sets of tables, none of them
 * utf8proc 15.0's (Debian 12), so tables below bridge each difference; all
 * were found by comparing every code point (tests/reference/make_fixtures.py
 * writes them to tests/fixtures/tokenizer-unicode.txt, which test_tokenizer
 * checks code point by code point):
 *   - \p{L} and \p{N} are Oniguruma's Unicode 16.0: letters_16[] and
 *     numbers_16[] are what 16.0 assigned.
 *   - Lowercasing is Rust's std, Unicode 17.0: lower_17[] holds the case
 *     pairs utf8proc 15.0 does not know.
 *   - NFC is unicode-normalization-alignments 0.1.12, whose tables are
 *     Unicode 9.0. Normalization stability makes it agree with utf8proc on
 *     any text of characters that 9.0 had; every later character that 9.0
 *     therefore sees as an inert starter but utf8proc can reorder, compose
 *     or decompose is in nfc_inert[], where the text is cut into pieces that
 *     utf8proc normalizes separately.
 * A utf8proc for a newer Unicode would keep these tables right as far as
 * they go, but would move characters assigned after 15.0 into its own
 * reordering and case tables: the per-code-point test then fails and says
 * which.
 *
 * All tables are read-only after loading, so concurrent encodes are safe. */
#define _GNU_SOURCE /* memmem */
#include "model/tokenizer.h"

#include "base/datadir.h"
#include "base/vec.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

/* OpenAI's file holds 262k merges; SD's vocabulary has room for the first
 * 49152 - 256 - 2, which follow the header line. */
#define GZ_MERGE_LINES_END (49152 - 256 - 2 + 1)

static const char START_TOK[] = "<|startoftext|>";
static const char END_TOK[] = "<|endoftext|>";
static const char SUFFIX[] = "</w>";

typedef struct merge_slot {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t merged;
} merge_slot;

/* ---- token -> id map ---- */

typedef struct str_slot {
    const char *s;
    size_t len;
    int32_t id;
} str_slot;

typedef struct str_map {
    str_slot *slots;
    size_t mask, count;
} str_map;

/* An entry of tokenizers' AddedVocabulary. */
typedef struct added_tok {
    char *text; /* its content, with a NUL after it */
    size_t len;
    uint32_t *norm; /* the normalized content that normalized ones match */
    size_t nlen;
    int32_t id;
    bool normalized;
} added_tok;

struct sdw_tokenizer {
    int32_t byte_id[256];     /* bytes_to_unicode symbol of each byte */
    int32_t byte_end_id[256]; /* the same symbol with "</w>" */
    added_tok *added;         /* in the order they were added */
    size_t nadded, added_cap;
    merge_slot *merges;
    size_t merge_mask, nmerges;
    str_map vocab; /* its strings live in vocab_text */
    char *vocab_text;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static int str_map_init(str_map *m, size_t expected, const char *what, sdw_error *e)
{
    size_t cap = pow2_at_least(expected * 2);
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for the vocabulary", what);
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

static str_slot *str_map_find(const str_map *m, const char *s, size_t n)
{
    for (size_t i = hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        str_slot *sl = &m->slots[i];
        if (!sl->s || (sl->len == n && memcmp(sl->s, s, n) == 0))
            return sl;
    }
}

/* Later entries win, as they do when Python or serde builds a map. The
 * caller keeps s alive until str_map_own and sizes the map for every
 * insertion. */
static void str_map_put(str_map *m, const char *s, size_t n, int32_t id)
{
    str_slot *sl = str_map_find(m, s, n);
    if (!sl->s) {
        sl->s = s;
        sl->len = n;
        m->count++;
    }
    sl->id = id;
}

static int32_t str_map_get(const str_map *m, const char *s, size_t n)
{
    const str_slot *sl = str_map_find(m, s, n);
    return sl->s ? sl->id : -1;
}

/* Copies the strings of a map built over a parser's buffers into one
 * allocation, which *text then owns, each with a NUL after it (vocabulary
 * entries hold none, so they read as C strings too). */
static int str_map_own(str_map *m, char **text, const char *what, sdw_error *e)
{
    size_t total = 1;
    for (size_t i = 0; i <= m->mask; i++)
        total += m->slots[i].s ? m->slots[i].len + 1 : 0;
    char *p = malloc(total);
    if (!p)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for the vocabulary", what);
    *text = p;
    for (size_t i = 0; i <= m->mask; i++)
        if (m->slots[i].s) {
            memcpy(p, m->slots[i].s, m->slots[i].len);
            m->slots[i].s = p;
            p += m->slots[i].len;
            *p++ = 0;
        }
    return 0;
}

/* GPT-2's reversible byte-to-symbol map: printable Latin-1 bytes stand for
 * themselves, the rest take code points from U+0100 on, in byte order.
 * Fills the code point of each byte; `order` lists bytes in the order the
 * OpenAI vocabulary enumerates them (printables first). */
static void bytes_to_unicode(uint32_t cp[256], uint8_t order[256])
{
    bool printable[256] = {false};
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        printable[b] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    for (int b = 0; b < 256; b++)
        if (printable[b]) {
            cp[b] = (uint32_t)b;
            order[k++] = (uint8_t)b;
        }
    for (int b = 0; b < 256; b++)
        if (!printable[b]) {
            cp[b] = 256u + (uint32_t)extra++;
            order[k++] = (uint8_t)b;
        }
}

/* ---- merge table ---- */

static uint64_t pair_key(int32_t a, int32_t b)
{
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static const merge_slot *merge_find(const sdw_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = pair_key(a, b);
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *s = &t->merges[i];
        if (s->key == key || s->key == 0)
            return s;
    }
}

static int32_t pair_rank(const sdw_tokenizer *t, int32_t a, int32_t b)
{
    const merge_slot *s = merge_find(t, a, b);
    return s->key ? s->rank : INT32_MAX;
}

/* Makes a tokenizer over a loaded vocabulary, which it takes over (strings
 * in *text, or copied there when *text is NULL), with room for nmerges
 * merges and no added tokens. Every symbol BPE starts from, byte symbols
 * with and without "</w>", must have ids, so that BPE works on ids. */
static int tok_new(sdw_tokenizer **out, str_map *vocab, char **text, size_t nmerges, const char *what,
                   sdw_error *e)
{
    sdw_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", what);
    t->vocab = *vocab;
    *vocab = (str_map){0};
    t->vocab_text = *text;
    *text = NULL;
    int rc = 0;
    if (!t->vocab_text && (rc = str_map_own(&t->vocab, &t->vocab_text, what, e)) < 0)
        goto fail;

    uint32_t cp[256];
    uint8_t order[256];
    bytes_to_unicode(cp, order);
    for (int b = 0; b < 256; b++) {
        char sym[16];
        utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp[b], (utf8proc_uint8_t *)sym);
        memcpy(sym + n, SUFFIX, sizeof SUFFIX - 1);
        t->byte_id[b] = str_map_get(&t->vocab, sym, (size_t)n);
        t->byte_end_id[b] = str_map_get(&t->vocab, sym, (size_t)n + sizeof SUFFIX - 1);
        if (t->byte_id[b] < 0 || t->byte_end_id[b] < 0) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: vocabulary lacks the symbol for byte 0x%02x%s", what, b,
                          t->byte_id[b] < 0 ? "" : " with </w>");
            goto fail;
        }
    }
    size_t cap = pow2_at_least(nmerges * 2 + 1);
    if (!(t->merges = calloc(cap, sizeof *t->merges))) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %zu merges", what, nmerges);
        goto fail;
    }
    t->merge_mask = cap - 1;
    *out = t;
    return 0;
fail:
    sdw_tok_free(t);
    return rc;
}

/* A merge's two symbols, each with its length. */
typedef struct merge_pair {
    const char *a, *b;
    size_t na, nb;
} merge_pair;

/* Splits "a b" as tokenizers does (str::split(' ') must give two parts):
 * false for a line with no space or more than one. */
static bool split_pair(const char *s, size_t n, merge_pair *p)
{
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
        return false;
    *p = (merge_pair){s, sp + 1, (size_t)(sp - s), n - (size_t)(sp + 1 - s)};
    return true;
}

/* Adds the merge of rank t->nmerges (a later duplicate wins, as in
 * tokenizers' map). Its symbols and their concatenation must all be in the
 * vocabulary; `where` and `index` name the merge in an error. */
static int add_merge(sdw_tokenizer *t, const merge_pair *p, char **buf, size_t *bufcap, const char *what,
                     const char *where, size_t index, sdw_error *e)
{
    size_t n = p->na + p->nb;
    if (n > *bufcap) {
        char *nb = realloc(*buf, n * 2);
        if (!nb)
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", what);
        *buf = nb;
        *bufcap = n * 2;
    }
    memcpy(*buf, p->a, p->na);
    memcpy(*buf + p->na, p->b, p->nb);
    int32_t a = str_map_get(&t->vocab, p->a, p->na);
    int32_t b = str_map_get(&t->vocab, p->b, p->nb);
    int32_t ab = str_map_get(&t->vocab, *buf, n);
    if (a < 0 || b < 0 || ab < 0) {
        const char *which = a < 0 ? p->a : b < 0 ? p->b : *buf;
        size_t wl = a < 0 ? p->na : b < 0 ? p->nb : n;
        return sdw_fail(e, SDW_EFORMAT, "%s: %s %zu names \"%.*s\", which is not in the vocabulary", what, where,
                        index, wl > 64 ? 64 : (int)wl, which);
    }
    merge_slot *s = (merge_slot *)merge_find(t, a, b);
    s->key = pair_key(a, b);
    s->rank = (int32_t)t->nmerges++;
    s->merged = ab;
    return 0;
}

/* What the vocabulary files alone make of the special tokens: both added,
 * "normalized", as SD's folders mark them. Both must be in the vocabulary. */
static int add_clip_specials(sdw_tokenizer *t, const char *what, sdw_error *e)
{
    for (int k = 0; k < 2; k++) {
        const char *s = k ? END_TOK : START_TOK;
        int rc;
        if (str_map_get(&t->vocab, s, strlen(s)) < 0)
            return sdw_fail(e, SDW_EFORMAT, "%s: vocabulary lacks %s", what, s);
        if ((rc = sdw_tok_add_special(t, s, true, e)) < 0)
            return rc;
    }
    return 0;
}

/* ---- reading files ---- */

static int read_file(const char *path, char **data, size_t *len, sdw_error *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) {
            fclose(f);
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb)
            free(buf);
        buf = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return sdw_fail(e, SDW_EIO, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The whole file as one JSON value; trailing bytes other than whitespace
 * are an error, as they are to Python's json and serde. */
static int read_json_file(const char *path, json_object **root, sdw_error *e)
{
    char *text = NULL;
    size_t len = 0;
    *root = NULL;
    int rc = read_file(path, &text, &len, e);
    if (rc < 0)
        return rc;
    json_tokener *jt = json_tokener_new();
    if (!jt) {
        free(text);
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    }
    json_object *o = len <= INT32_MAX ? json_tokener_parse_ex(jt, text, (int)len) : NULL;
    enum json_tokener_error jerr = json_tokener_get_error(jt);
    size_t at = json_tokener_get_parse_end(jt);
    while (o && at < len && is_json_space(text[at]))
        at++;
    if (!o || jerr != json_tokener_success || at < len) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: invalid JSON: %s near byte %zu", path,
                      jerr == json_tokener_continue || (!o && jerr == json_tokener_success)
                          ? "unexpected end of input"
                      : jerr != json_tokener_success ? json_tokener_error_desc(jerr)
                                                     : "trailing data",
                      at);
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(jt);
    free(text);
    *root = o;
    return rc;
}

/* A JSON object of token -> id into a fresh map over the object's keys.
 * `field` names the object in errors ("model.vocab"), NULL for a whole
 * vocab.json. */
static int read_vocab(json_object *o, str_map *m, const char *what, const char *field, sdw_error *e)
{
    const char *in = field ? field : "the vocabulary";
    if (!json_object_is_type(o, json_type_object))
        return sdw_fail(e, SDW_EFORMAT, "%s: %s must be a JSON object of token -> id", what, in);
    int rc = str_map_init(m, (size_t)json_object_object_length(o), what, e);
    if (rc < 0)
        return rc;
    json_object_object_foreach(o, key, val)
    {
        if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 0 ||
            json_object_get_int64(val) > INT32_MAX)
            return sdw_fail(e, SDW_EFORMAT, "%s: id of \"%.64s\" in %s is not a non-negative integer", what, key,
                            in);
        str_map_put(m, key, strlen(key), (int32_t)json_object_get_int64(val));
    }
    return 0;
}

int sdw_tok_load_hf(sdw_tokenizer **out, const char *vocab_json, const char *merges_txt, sdw_error *e)
{
    *out = NULL;
    json_object *root = NULL;
    str_map vocab = {0};
    char *text = NULL, *mtext = NULL, *buf = NULL;
    size_t mlen = 0, bufcap = 0;
    sdw_tokenizer *t = NULL;
    int rc;
    if ((rc = read_json_file(vocab_json, &root, e)) < 0 ||
        (rc = read_vocab(root, &vocab, vocab_json, NULL, e)) < 0 ||
        (rc = read_file(merges_txt, &mtext, &mlen, e)) < 0)
        goto done;
    size_t nlines = 1;
    for (size_t i = 0; i < mlen; i++)
        nlines += mtext[i] == '\n';
    if ((rc = tok_new(&t, &vocab, &text, nlines, vocab_json, e)) < 0)
        goto done;
    /* tokenizers reads lines (a "\r" before the "\n" dropped, no empty line
     * after a final "\n"), skips those starting with "#version" wherever
     * they are, and takes every other line as a merge: no header required,
     * no limit on the count, no blank lines. */
    size_t lineno = 0;
    for (const char *p = mtext, *end = mtext + mlen; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        size_t n = (size_t)(eol - p);
        lineno++;
        if (nl && n > 0 && p[n - 1] == '\r')
            n--;
        merge_pair pair;
        if (n >= 8 && memcmp(p, "#version", 8) == 0) {
            /* a version line */
        } else if (!split_pair(p, n, &pair)) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: merge line %zu is not two symbols separated by one space",
                          merges_txt, lineno);
            goto done;
        } else if ((rc = add_merge(t, &pair, &buf, &bufcap, merges_txt, "merge line", lineno, e)) < 0) {
            goto done;
        }
        p = nl ? nl + 1 : end;
    }
    if ((rc = add_clip_specials(t, vocab_json, e)) < 0)
        goto done;
    *out = t;
    t = NULL;
done:
    sdw_tok_free(t);
    free(buf);
    free(mtext);
    free(text);
    free(vocab.slots);
    json_object_put(root);
    return rc;
}

static bool json_flag(json_object *o, const char *key, bool def)
{
    json_object *x;
    return json_object_object_get_ex(o, key, &x) && !json_object_is_type(x, json_type_null)
               ? json_object_get_boolean(x)
               : def;
}

int sdw_tok_read_added(json_object *o, bool special, const char *path, const char *field, const char **content,
                       size_t *len, bool *normalized, sdw_error *e)
{
    static const char *const unsupported[] = {"lstrip", "rstrip", "single_word"};
    json_object *c;
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "content", &c) ||
        !json_object_is_type(c, json_type_string) || json_object_get_string_len(c) == 0)
        return sdw_fail(e, SDW_EFORMAT, "%s: %s needs a non-empty string \"content\"", path, field);
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        if (json_flag(o, unsupported[i], false))
            return sdw_fail(e, SDW_EUNSUPPORTED, "%s: %s.%s is true, which is not supported", path, field,
                            unsupported[i]);
    *content = json_object_get_string(c);
    *len = (size_t)json_object_get_string_len(c);
    /* transformers' AddedToken: normalized defaults to "not special" */
    *normalized = json_flag(o, "normalized", !(special || json_flag(o, "special", false)));
    return 0;
}

typedef struct json_added {
    json_object *tok;
    int32_t id;
    size_t index;
} json_added;

static int cmp_json_added(const void *a, const void *b)
{
    const json_added *x = a, *y = b;
    return x->id != y->id ? (x->id > y->id) - (x->id < y->id) : (x->index > y->index) - (x->index < y->index);
}

/* added_tokens, as transformers 5 takes them over into CLIPTokenizer's
 * added vocabulary: in the order of their ids, each one getting the id
 * tokenizers gives it (its vocabulary id, else the next one past the
 * vocabulary), which must be the id the file says. */
static int read_added(sdw_tokenizer *t, json_object *root, const char *path, sdw_error *e)
{
    json_object *list, *id;
    if (!json_object_object_get_ex(root, "added_tokens", &list) || json_object_is_type(list, json_type_null))
        return 0;
    if (!json_object_is_type(list, json_type_array))
        return sdw_fail(e, SDW_EFORMAT, "%s: added_tokens must be a list", path);
    size_t n = json_object_array_length(list);
    json_added *v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_object *tok = json_object_array_get_idx(list, i);
        if (!json_object_is_type(tok, json_type_object) || !json_object_object_get_ex(tok, "id", &id) ||
            !json_object_is_type(id, json_type_int) || json_object_get_int64(id) < 0 ||
            json_object_get_int64(id) > INT32_MAX)
            rc = sdw_fail(e, SDW_EFORMAT, "%s: added_tokens[%zu] needs a non-negative integer \"id\"", path, i);
        v[i] = (json_added){tok, (int32_t)json_object_get_int64(id), i};
    }
    if (rc == 0)
        qsort(v, n, sizeof *v, cmp_json_added);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char field[48];
        const char *content;
        size_t len;
        bool norm;
        snprintf(field, sizeof field, "added_tokens[%zu]", v[i].index);
        if (i > 0 && v[i].id == v[i - 1].id) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: %s has the id %d of added_tokens[%zu] too", path, field, v[i].id,
                          v[i - 1].index);
        } else if ((rc = sdw_tok_read_added(v[i].tok, false, path, field, &content, &len, &norm, e)) == 0) {
            rc = sdw_tok_add_special_n(t, content, len, norm, e);
            if (rc >= 0 && rc != v[i].id)
                rc = sdw_fail(e, SDW_EFORMAT, "%s: %s.id is %d, but transformers 5 gives \"%.64s\" the id %d", path,
                              field, v[i].id, content, rc);
            rc = rc < 0 ? rc : 0;
        }
    }
    free(v);
    return rc;
}

int sdw_tok_load_json(sdw_tokenizer **out, const char *path, sdw_error *e)
{
    *out = NULL;
    json_object *root = NULL, *model, *x, *merges;
    str_map vocab = {0};
    char *text = NULL, *buf = NULL;
    size_t bufcap = 0;
    sdw_tokenizer *t = NULL;
    int rc;
    if ((rc = read_json_file(path, &root, e)) < 0)
        goto done;
    if (!json_object_is_type(root, json_type_object) || !json_object_object_get_ex(root, "model", &model) ||
        !json_object_is_type(model, json_type_object)) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: no \"model\" object", path);
        goto done;
    }
    if (!json_object_object_get_ex(model, "type", &x) || !json_object_is_type(x, json_type_string)) {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: model.type is missing (only BPE is supported)", path);
        goto done;
    }
    if (strcmp(json_object_get_string(x), "BPE") != 0) {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: model.type \"%.64s\" is not supported (only BPE)", path,
                      json_object_get_string(x));
        goto done;
    }
    /* CLIPTokenizer fixes "</w>" whatever the file says; a file made for
     * another suffix has a vocabulary that would not fit it. */
    if (json_object_object_get_ex(model, "end_of_word_suffix", &x) && !json_object_is_type(x, json_type_null) &&
        (!json_object_is_type(x, json_type_string) || strcmp(json_object_get_string(x), SUFFIX) != 0)) {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: model.end_of_word_suffix is \"%.64s\", but CLIP's is \"</w>\"", path,
                      json_object_get_string(x));
        goto done;
    }
    if (!json_object_object_get_ex(model, "vocab", &x)) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: model.vocab is missing", path);
        goto done;
    }
    if ((rc = read_vocab(x, &vocab, path, "model.vocab", e)) < 0)
        goto done;
    if (!json_object_object_get_ex(model, "merges", &merges) || !json_object_is_type(merges, json_type_array)) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: model.merges must be a list", path);
        goto done;
    }
    size_t nm = json_object_array_length(merges);
    if ((rc = tok_new(&t, &vocab, &text, nm, path, e)) < 0 || (rc = read_added(t, root, path, e)) < 0)
        goto done;
    for (int k = 0; k < 2; k++)
        if (sdw_tok_vocab_id(t, k ? END_TOK : START_TOK) < 0) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: neither model.vocab nor added_tokens has %s", path,
                          k ? END_TOK : START_TOK);
            goto done;
        }
    for (size_t i = 0; i < nm; i++) {
        json_object *m = json_object_array_get_idx(merges, i), *a, *b;
        merge_pair pair;
        bool ok;
        if (json_object_is_type(m, json_type_string)) {
            ok = split_pair(json_object_get_string(m), (size_t)json_object_get_string_len(m), &pair);
        } else {
            ok = json_object_is_type(m, json_type_array) && json_object_array_length(m) == 2 &&
                 json_object_is_type(a = json_object_array_get_idx(m, 0), json_type_string) &&
                 json_object_is_type(b = json_object_array_get_idx(m, 1), json_type_string);
            if (ok)
                pair = (merge_pair){json_object_get_string(a), json_object_get_string(b),
                                    (size_t)json_object_get_string_len(a), (size_t)json_object_get_string_len(b)};
        }
        if (!ok) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: model.merges[%zu] is neither [\"a\", \"b\"] nor \"a b\"", path, i);
            goto done;
        }
        if ((rc = add_merge(t, &pair, &buf, &bufcap, path, "model.merges entry", i, e)) < 0)
            goto done;
    }
    *out = t;
    t = NULL;
done:
    sdw_tok_free(t);
    free(buf);
    free(text);
    free(vocab.slots);
    json_object_put(root);
    return rc;
}

static int read_gz(const char *path, char **data, size_t *len, sdw_error *e)
{
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "%s: %s", path, strerror(errno));
    unsigned char magic[2] = {0, 0};
    size_t got = fread(magic, 1, 2, probe);
    fclose(probe);
    if (got != 2 || magic[0] != 0x1f || magic[1] != 0x8b)
        return sdw_fail(e, SDW_EFORMAT, "%s: not a gzip file", path);

    gzFile gz = gzopen(path, "rb");
    if (!gz)
        return sdw_fail(e, SDW_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4 << 20, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) {
            gzclose(gz);
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        }
        int r = gzread(gz, buf + n, (unsigned)(cap - n));
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(gz, &zerr);
            int rc = sdw_fail(e, SDW_EFORMAT, "%s: corrupt gzip data: %s", path, msg);
            free(buf);
            gzclose(gz);
            return rc;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    /* A truncated stream ends without error from gzread; gzerror tells. */
    int zerr = Z_OK;
    const char *msg = gzerror(gz, &zerr);
    if (zerr != Z_OK) {
        int rc = sdw_fail(e, SDW_EFORMAT, "%s: corrupt or truncated gzip data: %s", path, msg);
        free(buf);
        gzclose(gz);
        return rc;
    }
    gzclose(gz);
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

int sdw_tok_load_bpe_gz(sdw_tokenizer **out, const char *path, sdw_error *e)
{
    *out = NULL;
    char *text = NULL, *syms = NULL, *buf = NULL;
    size_t len = 0, bufcap = 0;
    str_map vocab = {0};
    sdw_tokenizer *t = NULL;
    int rc;

    if ((rc = read_gz(path, &text, &len, e)) < 0)
        return rc;
    /* OpenAI's header line is not "#version"; like open_clip and the SD
     * tokenizer it was converted into, skip line 0 whatever it says. */
    merge_pair *pairs = malloc(GZ_MERGE_LINES_END * sizeof *pairs);
    if (!pairs) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    size_t nm = 0;
    const char *p = memchr(text, '\n', len), *end = text + len;
    for (p = p ? p + 1 : end; p < end && nm + 1 < GZ_MERGE_LINES_END; nm++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        if (!split_pair(p, n, &pairs[nm])) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: line %zu is not two symbols separated by one space", path, nm + 2);
            goto done;
        }
        p = nl ? nl + 1 : end;
    }
    if (nm == 0) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: no merges", path);
        goto done;
    }

    /* The vocabulary is byte symbols, the same with "</w>", every merge's
     * result, then the two special tokens: build those strings in one arena,
     * which the tokenizer keeps. */
    uint32_t cp[256];
    uint8_t order[256];
    bytes_to_unicode(cp, order);
    size_t used = 0;
    syms = malloc(512 * 9 + 2 * len + sizeof START_TOK + sizeof END_TOK);
    if (!syms || (rc = str_map_init(&vocab, 512 + nm + 2, path, e)) < 0) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    int32_t id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < 256; k++) {
            char *s = syms + used;
            size_t n = (size_t)utf8proc_encode_char((utf8proc_int32_t)cp[order[k]], (utf8proc_uint8_t *)s);
            if (pass) {
                memcpy(s + n, SUFFIX, sizeof SUFFIX - 1);
                n += sizeof SUFFIX - 1;
            }
            s[n] = 0;
            used += n + 1;
            str_map_put(&vocab, s, n, id++);
        }
    for (size_t i = 0; i < nm; i++) {
        char *s = syms + used;
        memcpy(s, pairs[i].a, pairs[i].na);
        memcpy(s + pairs[i].na, pairs[i].b, pairs[i].nb);
        s[pairs[i].na + pairs[i].nb] = 0;
        used += pairs[i].na + pairs[i].nb + 1;
        str_map_put(&vocab, s, pairs[i].na + pairs[i].nb, id++);
    }
    memcpy(syms + used, START_TOK, sizeof START_TOK);
    str_map_put(&vocab, syms + used, sizeof START_TOK - 1, id++);
    used += sizeof START_TOK;
    memcpy(syms + used, END_TOK, sizeof END_TOK);
    str_map_put(&vocab, syms + used, sizeof END_TOK - 1, id++);

    if ((rc = tok_new(&t, &vocab, &syms, nm, path, e)) < 0)
        goto done;
    for (size_t i = 0; i < nm; i++)
        if ((rc = add_merge(t, &pairs[i], &buf, &bufcap, path, "line", i + 2, e)) < 0)
            goto done;
    if ((rc = add_clip_specials(t, path, e)) < 0)
        goto done;
    *out = t;
    t = NULL;
done:
    sdw_tok_free(t);
    free(vocab.slots);
    free(syms);
    free(buf);
    free(pairs);
    free(text);
    return rc;
}

int sdw_tok_load_default(sdw_tokenizer **t, sdw_error *e)
{
    char path[4096];
    int rc = sdw_data_path("bpe_simple_vocab_16e6.txt.gz", path, sizeof path, e);
    return rc < 0 ? rc : sdw_tok_load_bpe_gz(t, path, e);
}

void sdw_tok_free(sdw_tokenizer *t)
{
    if (!t)
        return;
    sdw_tok_clear_added(t);
    free(t->added);
    free(t->merges);
    free(t->vocab.slots);
    free(t->vocab_text);
    free(t);
}

static added_tok *find_added(const sdw_tokenizer *t, const char *s, size_t n)
{
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && memcmp(t->added[i].text, s, n) == 0)
            return &t->added[i];
    return NULL;
}

int32_t sdw_tok_vocab_id(const sdw_tokenizer *t, const char *token)
{
    const added_tok *a = find_added(t, token, strlen(token));
    return a ? a->id : str_map_get(&t->vocab, token, strlen(token));
}

int32_t sdw_tok_added_id(const sdw_tokenizer *t, const char *token)
{
    const added_tok *a = find_added(t, token, strlen(token));
    return a ? a->id : -1;
}

void sdw_tok_clear_added(sdw_tokenizer *t)
{
    for (size_t i = 0; i < t->nadded; i++) {
        free(t->added[i].text);
        free(t->added[i].norm);
    }
    t->nadded = 0;
}

/* ---- writing ---- */

static int cmp_slot_id(const void *a, const void *b)
{
    const str_slot *x = *(const str_slot *const *)a, *y = *(const str_slot *const *)b;
    return (x->id > y->id) - (x->id < y->id);
}

static int cmp_rank(const void *a, const void *b)
{
    const merge_slot *x = *(const merge_slot *const *)a, *y = *(const merge_slot *const *)b;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

/* The vocabulary entry of an id: entries sorted by id, searched. Where two
 * entries share an id, either spells it. */
static const str_slot *slot_of_id(const str_slot *const *by_id, size_t n, int32_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (by_id[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && by_id[lo]->id == id ? by_id[lo] : NULL;
}

static int write_vocab(const str_slot *const *by_id, size_t n, const char *path, sdw_error *e)
{
    json_object *o = json_object_new_object();
    if (!o)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++)
        if (json_object_object_add(o, by_id[i]->s, json_object_new_int(by_id[i]->id)) < 0) {
            json_object_put(o);
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        }
    int rc = json_object_to_file_ext(path, o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    json_object_put(o);
    if (rc < 0)
        return sdw_fail(e, SDW_EIO, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

static int write_merges(const sdw_tokenizer *t, const str_slot *const *by_id, size_t n, const char *path,
                        sdw_error *e)
{
    const merge_slot **ranked = malloc((t->nmerges ? t->nmerges : 1) * sizeof *ranked);
    if (!ranked)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    size_t nm = 0;
    for (size_t i = 0; i <= t->merge_mask; i++)
        if (t->merges[i].key)
            ranked[nm++] = &t->merges[i];
    qsort(ranked, nm, sizeof *ranked, cmp_rank);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(ranked);
        return sdw_fail(e, SDW_EIO, "%s: cannot create: %s", path, strerror(errno));
    }
    fputs("#version: 0.2\n", f);
    for (size_t i = 0; i < nm; i++) {
        uint64_t k = ranked[i]->key - 1;
        const str_slot *a = slot_of_id(by_id, n, (int32_t)(k >> 32));
        const str_slot *b = slot_of_id(by_id, n, (int32_t)(k & 0xffffffffu));
        fprintf(f, "%s %s\n", a->s, b->s);
    }
    free(ranked);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return sdw_fail(e, SDW_EIO, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

int sdw_tok_save_hf(const sdw_tokenizer *t, const char *vocab_json, const char *merges_txt, sdw_error *e)
{
    const str_slot **by_id = malloc((t->vocab.count ? t->vocab.count : 1) * sizeof *by_id);
    if (!by_id)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", vocab_json);
    size_t n = 0;
    for (size_t i = 0; i <= t->vocab.mask; i++)
        if (t->vocab.slots[i].s)
            by_id[n++] = &t->vocab.slots[i];
    qsort(by_id, n, sizeof *by_id, cmp_slot_id);
    int rc = write_vocab(by_id, n, vocab_json, e);
    if (rc == 0)
        rc = write_merges(t, by_id, n, merges_txt, e);
    free(by_id);
    return rc;
}

const char *sdw_tok_unicode_version(void)
{
    return utf8proc_unicode_version();
}

/* ---- Unicode tables: where the reference's differ from utf8proc 15.0 ---- */

typedef struct cp_range {
    uint32_t lo, hi;
} cp_range;

static bool in_ranges(uint32_t c, const cp_range *r, size_t n)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo)
            hi = mid;
        else if (c > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

#define IN_TABLE(c, table) in_ranges((c), (table), sizeof(table) / sizeof(table)[0])

/* Letters and numbers Unicode 16.0 assigned (Oniguruma's \p{L}, \p{N}). */
static const cp_range letters_16[] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},   {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x11380, 0x11389}, {0x1138B, 0x1138B}, {0x1138E, 0x1138E},
    {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3}, {0x11BC0, 0x11BE0},
    {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF}, {0x1E5D0, 0x1E5ED},
    {0x1E5F0, 0x1E5F0}, {0x2EBF0, 0x2EE5D},
};
static const cp_range numbers_16[] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1E5F1, 0x1E5FA},
};

/* Lowercase mappings of Unicode 16.0 and 17.0 (Rust's std): lo..hi map to
 * themselves plus delta. */
static const struct {
    uint32_t lo, hi;
    int32_t delta;
} lower_17[] = {
    {0x1C89, 0x1C89, 1},      {0xA7CB, 0xA7CB, -42343}, {0xA7CC, 0xA7CC, 1},   {0xA7CE, 0xA7CE, 1},
    {0xA7D2, 0xA7D2, 1},      {0xA7D4, 0xA7D4, 1},      {0xA7DA, 0xA7DA, 1},   {0xA7DC, 0xA7DC, -42561},
    {0x10D50, 0x10D65, 0x20}, {0x16EA0, 0x16EB8, 0x1B},
};

/* Characters after Unicode 9.0 that utf8proc 15.0 can reorder (nonzero
 * combining class), compose (U+11930, U+11935) or decompose (U+11938),
 * and the reference's NFC leaves where they are. */
static const cp_range nfc_inert[] = {
    {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},     {0xC3C, 0xC3C},
    {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},   {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},
    {0xA82C, 0xA82C},   {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11930, 0x11930}, {0x11935, 0x11935}, {0x11938, 0x11938}, {0x1193D, 0x1193E}, {0x11943, 0x11943},
    {0x119E0, 0x119E0}, {0x11A34, 0x11A34}, {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42},
    {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F},
    {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

/* Unicode White_Space, which is what Oniguruma's \s matches. */
static bool is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

sdw_tok_class sdw_tok_classify(uint32_t c)
{
    if (is_space(c))
        return SDW_TOK_SPACE;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    if ((k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || IN_TABLE(c, letters_16))
        return SDW_TOK_LETTER;
    if ((k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO) || IN_TABLE(c, numbers_16))
        return SDW_TOK_NUMBER;
    return SDW_TOK_OTHER;
}

static uint32_t lower(uint32_t c)
{
    size_t lo = 0, hi = sizeof lower_17 / sizeof lower_17[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < lower_17[mid].lo)
            hi = mid;
        else if (c > lower_17[mid].hi)
            lo = mid + 1;
        else
            return (uint32_t)((int32_t)c + lower_17[mid].delta);
    }
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
}

/* ---- the normalizer ---- */

typedef SDW_VEC(uint32_t) u32vec;
typedef SDW_VEC(int32_t) i32vec;

/* NFC of valid UTF-8 s[0..n) by utf8proc, appended to out. */
static int nfc_span(const char *s, size_t n, u32vec *out, sdw_error *e)
{
    if (n == 0)
        return 0;
    for (;;) {
        size_t room = out->cap - out->n;
        utf8proc_ssize_t k = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
                                                (utf8proc_int32_t *)out->v + out->n, (utf8proc_ssize_t)room,
                                                UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (k < 0)
            return sdw_fail(e, k == UTF8PROC_ERROR_NOMEM ? SDW_ENOMEM : SDW_EINVAL, "tokenizer: NFC failed: %s",
                            utf8proc_errmsg(k));
        if ((size_t)k <= room) {
            k = utf8proc_normalize_utf32((utf8proc_int32_t *)out->v + out->n, k, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (k < 0)
                return sdw_fail(e, SDW_EINVAL, "tokenizer: NFC failed: %s", utf8proc_errmsg(k));
            out->n += (size_t)k;
            return 0;
        }
        if (sdw_vec_reserve(out, out->n + (size_t)k, e) < 0)
            return SDW_ENOMEM;
    }
}

/* The normalizer over the whole text: NFC (cut at nfc_inert characters,
 * see the top of this file), whitespace runs to one space, lowercase. */
static int normalize(const char *s, size_t n, u32vec *out, sdw_error *e)
{
    u32vec nfc = {0};
    int rc = 0;
    size_t i = 0, start = 0;
    if (sdw_vec_reserve(&nfc, n + 16, e) < 0)
        return SDW_ENOMEM;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k < 0) {
            rc = sdw_fail(e, SDW_EINVAL, "tokenizer: text is not valid UTF-8 (at byte %zu)", i);
            goto done;
        }
        if (IN_TABLE((uint32_t)c, nfc_inert)) {
            if ((rc = nfc_span(s + start, i - start, &nfc, e)) < 0 || (rc = sdw_vec_push(&nfc, (uint32_t)c, e)) < 0)
                goto done;
            start = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if ((rc = nfc_span(s + start, n - start, &nfc, e)) < 0 || (rc = sdw_vec_reserve(out, nfc.n + 1, e)) < 0)
        goto done;
    bool in_space = false;
    for (size_t j = 0; j < nfc.n; j++) {
        uint32_t c = nfc.v[j];
        if (is_space(c)) {
            if (!in_space && (rc = sdw_vec_push(out, ' ', e)) < 0)
                goto done;
            in_space = true;
            continue;
        }
        in_space = false;
        /* U+0130 is the one code point whose lowercase (SpecialCasing.txt,
         * unconditional part) is two. */
        if (c == 0x130)
            rc = sdw_vec_push(out, 'i', e) < 0 ? SDW_ENOMEM : sdw_vec_push(out, 0x307, e);
        else
            rc = sdw_vec_push(out, lower(c), e);
        if (rc < 0)
            goto done;
    }
done:
    sdw_vec_free(&nfc);
    return rc;
}

int sdw_tok_normalize(const char *text, size_t len, char **out, size_t *out_len, sdw_error *e)
{
    u32vec norm = {0};
    *out = NULL;
    *out_len = 0;
    int rc = normalize(text, len, &norm, e);
    char *s = rc == 0 ? malloc(norm.n * 4 + 1) : NULL;
    if (rc == 0 && !s)
        rc = sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
    if (rc == 0) {
        size_t k = 0;
        for (size_t i = 0; i < norm.n; i++)
            k += (size_t)utf8proc_encode_char((utf8proc_int32_t)norm.v[i], (utf8proc_uint8_t *)s + k);
        s[k] = 0;
        *out = s;
        *out_len = k;
    }
    sdw_vec_free(&norm);
    return rc;
}

/* ---- added tokens ---- */

/* tokenizers' AddedVocabulary::add_tokens for one token: a content seen
 * before keeps its id and takes the new flag; a new one takes its id in
 * the vocabulary, else the next id past both the vocabulary's size and
 * the added ids at or beyond it. */
int sdw_tok_add_special_n(sdw_tokenizer *t, const char *content, size_t len, bool normalized, sdw_error *e)
{
    if (len == 0)
        return sdw_fail(e, SDW_EINVAL, "tokenizer: an added token cannot be empty");
    u32vec norm = {0};
    int rc;
    if (normalized && (rc = normalize(content, len, &norm, e)) < 0)
        return rc;
    added_tok *a = find_added(t, content, len);
    if (!a) {
        char *text = malloc(len + 1);
        if (!text || sdw_vec_grow((void **)&t->added, &t->added_cap, t->nadded + 1, sizeof *t->added, NULL) < 0) {
            free(text);
            sdw_vec_free(&norm);
            return sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
        }
        memcpy(text, content, len);
        text[len] = 0;
        int32_t id = str_map_get(&t->vocab, content, len);
        if (id < 0) {
            int32_t size = (int32_t)t->vocab.count, max = -1;
            for (size_t i = 0; i < t->nadded; i++)
                max = t->added[i].id > max ? t->added[i].id : max;
            id = max >= size ? max + 1 : size;
        }
        a = &t->added[t->nadded++];
        *a = (added_tok){.text = text, .len = len, .id = id};
    }
    free(a->norm);
    a->norm = norm.v;
    a->nlen = norm.n;
    a->normalized = normalized;
    return a->id;
}

int sdw_tok_add_special(sdw_tokenizer *t, const char *content, bool normalized, sdw_error *e)
{
    return sdw_tok_add_special_n(t, content, strlen(content), normalized, e);
}

/* ---- BPE ---- */

typedef struct bpe_work {
    int32_t *sym, *rank;
    int *next, *prev;
    uint8_t *bytes;
    size_t cap;
} bpe_work;

static void bpe_work_free(bpe_work *w)
{
    free(w->sym);
    free(w->rank);
    free(w->next);
    free(w->prev);
    free(w->bytes);
}

static int bpe_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = n * 2;
    int32_t *s = realloc(w->sym, cap * sizeof *s);
    if (s)
        w->sym = s;
    int32_t *r = realloc(w->rank, cap * sizeof *r);
    if (r)
        w->rank = r;
    int *nx = realloc(w->next, cap * sizeof *nx);
    if (nx)
        w->next = nx;
    int *pv = realloc(w->prev, cap * sizeof *pv);
    if (pv)
        w->prev = pv;
    uint8_t *b = realloc(w->bytes, cap);
    if (b)
        w->bytes = b;
    if (!s || !r || !nx || !pv || !b)
        return SDW_ENOMEM;
    w->cap = cap;
    return 0;
}

/* One piece: its UTF-8 bytes as byte symbols, "</w>" on the last, merged
 * lowest rank first. */
static int bpe_piece(const sdw_tokenizer *t, const uint32_t *w, size_t nc, bpe_work *bw, i32vec *out)
{
    if (nc > INT32_MAX / 4 || bpe_reserve(bw, nc * 4) < 0)
        return SDW_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < nc; i++)
        n += (size_t)utf8proc_encode_char((utf8proc_int32_t)w[i], bw->bytes + n);
    int32_t *sym = bw->sym, *rank = bw->rank;
    int *next = bw->next, *prev = bw->prev;
    int last = (int)n - 1;
    for (int i = 0; i <= last; i++) {
        sym[i] = i == last ? t->byte_end_id[bw->bytes[i]] : t->byte_id[bw->bytes[i]];
        next[i] = i == last ? -1 : i + 1;
        prev[i] = i - 1;
    }
    for (int i = 0; i < last; i++)
        rank[i] = pair_rank(t, sym[i], sym[i + 1]);
    if (last >= 0)
        rank[last] = INT32_MAX;

    /* Each round merges every occurrence of the lowest-ranked pair, left to
     * right: a rank names exactly one pair, so rank[i] == best finds them.
     * tokenizers' priority queue (lowest rank, then leftmost) ends in the
     * same symbols. */
    for (;;) {
        int32_t best = INT32_MAX;
        for (int i = 0; i >= 0; i = next[i])
            if (rank[i] < best)
                best = rank[i];
        if (best == INT32_MAX)
            break;
        for (int i = 0; i >= 0; i = next[i]) {
            if (rank[i] != best)
                continue;
            int j = next[i];
            sym[i] = merge_find(t, sym[i], sym[j])->merged;
            next[i] = next[j];
            if (next[j] >= 0)
                prev[next[j]] = i;
            rank[i] = next[i] >= 0 ? pair_rank(t, sym[i], sym[next[i]]) : INT32_MAX;
            if (prev[i] >= 0)
                rank[prev[i]] = pair_rank(t, sym[prev[i]], sym[i]);
        }
    }
    for (int i = 0; i >= 0 && last >= 0; i = next[i])
        if (sdw_vec_push(out, sym[i], NULL) < 0)
            return SDW_ENOMEM;
    return 0;
}

/* ---- the pre-tokenizer's pattern over normalized text ---- */

/* 's 't 're 've 'm 'll 'd, case-sensitively: the text is lowercase, and no
 * other code point lowercases to these ASCII letters. */
static size_t contraction(const uint32_t *w, size_t n, size_t i)
{
    if (w[i] != '\'' || i + 1 >= n)
        return 0;
    uint32_t a = w[i + 1], b = i + 2 < n ? w[i + 2] : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* Length of "<|startoftext|>" or "<|endoftext|>" at w[i], else 0. */
static size_t special_at(const uint32_t *w, size_t n, size_t i)
{
    for (int k = 0; k < 2; k++) {
        const char *s = k ? END_TOK : START_TOK;
        size_t sl = k ? sizeof END_TOK - 1 : sizeof START_TOK - 1, j = 0;
        while (j < sl && i + j < n && w[i + j] == (uint32_t)(unsigned char)s[j])
            j++;
        if (j == sl)
            return sl;
    }
    return 0;
}

static int pretokenize(const sdw_tokenizer *t, const uint32_t *w, size_t n, bpe_work *bw, i32vec *out)
{
    size_t i = 0;
    while (i < n) {
        sdw_tok_class c = sdw_tok_classify(w[i]);
        if (c == SDW_TOK_SPACE) {
            i++;
            continue;
        }
        /* The pattern's first alternatives: a special token that was not
         * an added-token match (one matched in the raw text, here in
         * another case). ByteLevel's GPT-2 pattern then cuts that piece into
         * "<|", the word and "|>". */
        size_t m = special_at(w, n, i);
        if (m) {
            int rc;
            if ((rc = bpe_piece(t, w + i, 2, bw, out)) < 0 || (rc = bpe_piece(t, w + i + 2, m - 4, bw, out)) < 0 ||
                (rc = bpe_piece(t, w + i + m - 2, 2, bw, out)) < 0)
                return rc;
            i += m;
            continue;
        }
        m = contraction(w, n, i);
        if (!m) {
            m = 1;
            if (c != SDW_TOK_NUMBER)
                while (i + m < n && sdw_tok_classify(w[i + m]) == c)
                    m++;
        }
        int rc = bpe_piece(t, w + i, m, bw, out);
        if (rc < 0)
            return rc;
        i += m;
    }
    return 0;
}

/* tokenizers' AddedVocabulary finds its tokens with Aho-Corasick in
 * leftmost-longest mode: the first position where one of them starts, the
 * longest of those that start there. These find the next match in s[from..n)
 * among the tokens not "normalized" (raw bytes) or those that are (their
 * normalized content, in normalized text), returning its position (n for
 * none) and the token in *hit. */
static size_t find_raw(const sdw_tokenizer *t, const char *s, size_t n, size_t from, const added_tok **hit)
{
    for (size_t i = from; i < n; i++) {
        const added_tok *best = NULL;
        for (size_t k = 0; k < t->nadded; k++) {
            const added_tok *a = &t->added[k];
            if (!a->normalized && a->len <= n - i && (!best || a->len > best->len) &&
                memcmp(s + i, a->text, a->len) == 0)
                best = a;
        }
        if (best) {
            *hit = best;
            return i;
        }
    }
    return n;
}

static size_t find_normalized(const sdw_tokenizer *t, const uint32_t *w, size_t n, size_t from,
                              const added_tok **hit)
{
    for (size_t i = from; i < n; i++) {
        const added_tok *best = NULL;
        for (size_t k = 0; k < t->nadded; k++) {
            const added_tok *a = &t->added[k];
            if (a->normalized && a->nlen <= n - i && (!best || a->nlen > best->nlen) &&
                memcmp(w + i, a->norm, a->nlen * sizeof *w) == 0)
                best = a;
        }
        if (best) {
            *hit = best;
            return i;
        }
    }
    return n;
}

/* One stretch of raw text between raw added-token matches: normalized,
 * then cut at the normalized ones. */
static int tokenize_raw(const sdw_tokenizer *t, const char *text, size_t len, bpe_work *bw, i32vec *out,
                        sdw_error *e)
{
    u32vec norm = {0};
    int rc = normalize(text, len, &norm, e);
    for (size_t i = 0; rc == 0 && i < norm.n;) {
        const added_tok *hit = NULL;
        size_t at = find_normalized(t, norm.v, norm.n, i, &hit);
        if ((rc = pretokenize(t, norm.v + i, at - i, bw, out)) < 0 ||
            (hit && (rc = sdw_vec_push(out, hit->id, NULL)) < 0))
            rc = sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
        i = hit ? at + hit->nlen : at;
    }
    sdw_vec_free(&norm);
    return rc;
}

/* tokenizers' added vocabulary: the tokens not marked "normalized" are
 * found in the raw text first (exactly, so case matters), the others in
 * each stretch's normalized text. */
static int tokenize_all(const sdw_tokenizer *t, const char *text, size_t len, i32vec *out, sdw_error *e)
{
    if (!t || !text)
        return sdw_fail(e, SDW_EINVAL, "tokenizer: no tokenizer or text");
    bpe_work bw = {0};
    int rc = 0;
    for (size_t p = 0; p < len;) {
        const added_tok *hit = NULL;
        size_t at = find_raw(t, text, len, p, &hit);
        if (at > p && (rc = tokenize_raw(t, text + p, at - p, &bw, out, e)) < 0)
            break;
        if (hit && sdw_vec_push(out, hit->id, NULL) < 0) {
            rc = sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
            break;
        }
        p = hit ? at + hit->len : at;
    }
    bpe_work_free(&bw);
    return rc;
}

int sdw_tok_tokenize_n(const sdw_tokenizer *t, const char *text, size_t len, int32_t *ids, int cap,
                       sdw_error *e)
{
    i32vec out = {0};
    int rc = tokenize_all(t, text, len, &out, e);
    if (rc == 0) {
        if (out.n > INT32_MAX) {
            rc = sdw_fail(e, SDW_EINVAL, "tokenizer: text too long");
        } else {
            for (size_t i = 0; i < out.n && (int)i < cap; i++)
                ids[i] = out.v[i];
            rc = (int)out.n;
        }
    }
    sdw_vec_free(&out);
    return rc;
}

int sdw_tok_tokenize(const sdw_tokenizer *t, const char *text, int32_t *ids, int cap, sdw_error *e)
{
    return sdw_tok_tokenize_n(t, text, text ? strlen(text) : 0, ids, cap, e);
}

int sdw_tok_encode_n(const sdw_tokenizer *t, const char *text, size_t len, int32_t *ids, int ctx,
                     int32_t pad_id, sdw_error *e)
{
    if (ctx < 2)
        return sdw_fail(e, SDW_EINVAL, "tokenizer: context of %d cannot hold BOS and EOS", ctx);
    /* transformers' post-processor adds them by id, whatever their flags */
    int32_t bos = t ? sdw_tok_vocab_id(t, START_TOK) : -1, eos = t ? sdw_tok_vocab_id(t, END_TOK) : -1;
    if (t && (bos < 0 || eos < 0))
        return sdw_fail(e, SDW_EINVAL, "tokenizer: no id for %s", bos < 0 ? START_TOK : END_TOK);
    i32vec out = {0};
    int rc = tokenize_all(t, text, len, &out, e);
    if (rc == 0) {
        size_t keep = out.n < (size_t)ctx - 2 ? out.n : (size_t)ctx - 2;
        ids[0] = bos;
        if (keep)
            memcpy(ids + 1, out.v, keep * sizeof *ids);
        ids[keep + 1] = eos;
        for (size_t i = keep + 2; i < (size_t)ctx; i++)
            ids[i] = pad_id;
        rc = (int)keep + 2;
    }
    sdw_vec_free(&out);
    return rc;
}

int sdw_tok_encode(const sdw_tokenizer *t, const char *text, int32_t *ids, int len, int32_t pad_id,
                   sdw_error *e)
{
    return sdw_tok_encode_n(t, text, text ? strlen(text) : 0, ids, len, pad_id, e);
}
