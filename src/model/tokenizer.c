/* CLIP byte-level BPE, matching transformers 4.46.3 CLIPTokenizer (the slow
 * Python class) without ftfy, which is what diffusers users get from a plain
 * `pip install diffusers transformers`:
 *
 *   1. PreTrainedTokenizer.tokenize splits the raw text at the literal added
 *      tokens "<|startoftext|>" and "<|endoftext|>", which map straight to
 *      their ids; every other piece goes through CLIPTokenizer._tokenize.
 *   2. BasicTokenizer(strip_accents=False, do_split_on_punc=False): drop NUL,
 *      U+FFFD and category C* except \t\n\r; whitespace (\t\n\r, Zs) becomes
 *      a space; spaces go around CJK ideographs; NFC; str.split(); each word
 *      str.lower()'d.
 *   3. The pattern <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *      [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ with re.IGNORECASE (regex module)
 *      finds the pieces; each piece's UTF-8 bytes become bytes_to_unicode
 *      symbols, "</w>" joins the last one, and the lowest-ranked adjacent pair
 *      is merged (all its occurrences, left to right) until none has a rank.
 *
 * Quirks of the reference reproduced here: str.lower() maps U+0130 to
 * "i\u0307" and applies the final-sigma rule within each word; IGNORECASE
 * lets U+017F (long s) stand for 's' in the literals ("'ſ" is a contraction,
 * "<|ſtartoftext|>" matches the special-token alternative but, unlike the
 * exact string, which transformers' BPE cache maps to its id, is BPE'd as
 * bytes); and U+0345, whose case variants are letters, matches no
 * alternative at all, so it vanishes.
 *
 * Unicode versions: the reference venv's Python 3.11 unicodedata is
 * Unicode 14.0, Debian 12's utf8proc 2.8 is 15.0, and the regex module
 * carries its own, newer tables. Code points first assigned in 15.0 are Cn to
 * Python, so cleanup drops them; new15[] below keeps that so. For everything
 * assigned in 14.0 the categories, lowercase mappings, Zs/whitespace and L/N
 * classes of all three agree (checked exhaustively against the venv). What
 * could still differ: a utf8proc for Unicode 15.1 or later would need its
 * additions listed too (sdw_tok_unicode_version() lets tests notice), and
 * users whose Python is 3.12+ (Unicode 15.0/15.1) keep the new15[] code
 * points that 3.11 drops.
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

/* transformers keeps merges.txt lines [1, 49152 - 256 - 2 + 1): the header is
 * line 0, and the vocabulary has room for 48894 merges. */
#define MERGE_LINES_END (49152 - 256 - 2 + 1)

static const char START_TOK[] = "<|startoftext|>";
static const char END_TOK[] = "<|endoftext|>";

typedef struct merge_slot {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t merged;
} merge_slot;

struct sdw_tokenizer {
    int32_t byte_id[256];     /* bytes_to_unicode symbol of each byte */
    int32_t byte_end_id[256]; /* the same symbol with "</w>" */
    int32_t start_id, end_id;
    merge_slot *merges;
    size_t merge_mask;
};

/* ---- vocabulary string map, used only while loading ---- */

typedef struct str_slot {
    const char *s;
    size_t len;
    int32_t id;
} str_slot;

typedef struct str_map {
    str_slot *slots;
    size_t mask, count;
} str_map;

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

static int str_map_init(str_map *m, size_t expected, sdw_error *e)
{
    size_t cap = pow2_at_least(expected * 2);
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots)
        return sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory for the vocabulary");
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

/* Later entries win, as they do when Python builds a dict from a list. The
 * caller keeps s alive and sizes the map for every insertion. */
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

/* ASCII whitespace as str.split() and str.strip() see it in merges files
 * (whose symbols never contain Unicode whitespace). */
static bool is_space_byte(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

typedef struct line_span {
    const char *p;
    size_t n;
} line_span;

/* Builds the merge table and byte/special ids from the vocabulary map and the
 * merge lines (header already removed). Every symbol a merge names, and the
 * symbol it makes, must be in the vocabulary: that lets BPE work on ids. */
static int build_tables(sdw_tokenizer *t, const str_map *vocab, const line_span *lines,
                        size_t nlines, const char *what, sdw_error *e)
{
    uint32_t cp[256];
    uint8_t order[256];
    bytes_to_unicode(cp, order);
    for (int b = 0; b < 256; b++) {
        char sym[16];
        utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp[b], (utf8proc_uint8_t *)sym);
        memcpy(sym + n, "</w>", 4);
        t->byte_id[b] = str_map_get(vocab, sym, (size_t)n);
        t->byte_end_id[b] = str_map_get(vocab, sym, (size_t)n + 4);
        if (t->byte_id[b] < 0 || t->byte_end_id[b] < 0)
            return sdw_fail(e, SDW_EFORMAT, "%s: vocabulary lacks the symbol for byte 0x%02x", what, b);
    }
    t->start_id = str_map_get(vocab, START_TOK, sizeof START_TOK - 1);
    t->end_id = str_map_get(vocab, END_TOK, sizeof END_TOK - 1);
    if (t->start_id < 0 || t->end_id < 0)
        return sdw_fail(e, SDW_EFORMAT, "%s: vocabulary lacks <|startoftext|> or <|endoftext|>", what);

    size_t cap = pow2_at_least(nlines * 2 + 1);
    t->merges = calloc(cap, sizeof *t->merges);
    if (!t->merges)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %zu merges", what, nlines);
    t->merge_mask = cap - 1;

    char *buf = NULL;
    size_t bufcap = 0;
    for (size_t i = 0; i < nlines; i++) {
        const char *p = lines[i].p, *end = p + lines[i].n;
        const char *tok[3];
        size_t len[3];
        int ntok = 0;
        /* str.split(): runs of whitespace separate, ends are ignored. */
        while (p < end && ntok < 3) {
            while (p < end && is_space_byte(*p))
                p++;
            if (p == end)
                break;
            tok[ntok] = p;
            while (p < end && !is_space_byte(*p))
                p++;
            len[ntok] = (size_t)(p - tok[ntok]);
            ntok++;
        }
        if (ntok != 2) {
            free(buf);
            return sdw_fail(e, SDW_EFORMAT, "%s: merge line %zu has %s than two symbols", what, i + 2,
                            ntok < 2 ? "fewer" : "more");
        }
        if (len[0] + len[1] > bufcap) {
            bufcap = (len[0] + len[1]) * 2;
            char *nb = realloc(buf, bufcap);
            if (!nb) {
                free(buf);
                return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", what);
            }
            buf = nb;
        }
        memcpy(buf, tok[0], len[0]);
        memcpy(buf + len[0], tok[1], len[1]);
        int32_t a = str_map_get(vocab, tok[0], len[0]);
        int32_t b = str_map_get(vocab, tok[1], len[1]);
        int32_t ab = str_map_get(vocab, buf, len[0] + len[1]);
        if (a < 0 || b < 0 || ab < 0) {
            const char *which = a < 0 ? tok[0] : b < 0 ? tok[1] : buf;
            int wl = (int)(a < 0 ? len[0] : b < 0 ? len[1] : len[0] + len[1]);
            int r = sdw_fail(e, SDW_EFORMAT, "%s: merge line %zu names \"%.*s\", which is not in the vocabulary",
                             what, i + 2, wl > 64 ? 64 : wl, which);
            free(buf);
            return r;
        }
        merge_slot *s = (merge_slot *)merge_find(t, a, b);
        s->key = pair_key(a, b);
        s->rank = (int32_t)i;
        s->merged = ab;
    }
    free(buf);
    return 0;
}

/* Splits text into at most `max` lines on '\n', keeping line 0 apart. */
static size_t split_lines(const char *text, size_t n, line_span *out, size_t max)
{
    size_t k = 0;
    const char *p = text, *end = text + n;
    while (k < max) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        out[k].p = p;
        out[k].n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        k++;
        if (!nl)
            break;
        p = nl + 1;
    }
    return k;
}

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

int sdw_tok_load_hf(sdw_tokenizer **out, const char *vocab_json, const char *merges_txt, sdw_error *e)
{
    *out = NULL;
    char *mtext = NULL;
    size_t mlen = 0;
    line_span *lines = NULL;
    str_map vocab = {0};
    sdw_tokenizer *t = NULL;
    int rc;

    json_tokener *jt = json_tokener_new();
    char *vtext = NULL;
    size_t vlen = 0;
    json_object *root = NULL;
    if (!jt) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", vocab_json);
        goto done;
    }
    if ((rc = read_file(vocab_json, &vtext, &vlen, e)) < 0)
        goto done;
    root = json_tokener_parse_ex(jt, vtext, (int)vlen);
    enum json_tokener_error jerr = json_tokener_get_error(jt);
    size_t at = json_tokener_get_parse_end(jt);
    while (root && at < vlen && is_space_byte(vtext[at]))
        at++;
    if (!root || jerr != json_tokener_success || at < vlen) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: invalid JSON: %s near byte %zu", vocab_json,
                      jerr == json_tokener_continue || (!root && jerr == json_tokener_success)
                          ? "unexpected end of input"
                      : jerr != json_tokener_success ? json_tokener_error_desc(jerr)
                                                     : "trailing data",
                      at);
        goto done;
    }
    if (!json_object_is_type(root, json_type_object)) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: expected a JSON object of token -> id", vocab_json);
        goto done;
    }
    if ((rc = str_map_init(&vocab, (size_t)json_object_object_length(root), e)) < 0)
        goto done;
    json_object_object_foreach(root, key, val)
    {
        if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 0 ||
            json_object_get_int64(val) > INT32_MAX) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: id of \"%.64s\" is not a non-negative integer", vocab_json, key);
            goto done;
        }
        str_map_put(&vocab, key, strlen(key), (int32_t)json_object_get_int64(val));
    }

    if ((rc = read_file(merges_txt, &mtext, &mlen, e)) < 0)
        goto done;
    /* transformers strips the whole file before splitting it into lines. */
    size_t a = 0, b = mlen;
    while (a < b && is_space_byte(mtext[a]))
        a++;
    while (b > a && is_space_byte(mtext[b - 1]))
        b--;
    lines = malloc(MERGE_LINES_END * sizeof *lines);
    if (!lines) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", merges_txt);
        goto done;
    }
    size_t nlines = split_lines(mtext + a, b - a, lines, MERGE_LINES_END);
    if (nlines == 0 || lines[0].n < 8 || memcmp(lines[0].p, "#version", 8) != 0) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: missing \"#version\" header line", merges_txt);
        goto done;
    }
    t = calloc(1, sizeof *t);
    if (!t) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", merges_txt);
        goto done;
    }
    if ((rc = build_tables(t, &vocab, lines + 1, nlines - 1, merges_txt, e)) < 0)
        goto done;
    *out = t;
    t = NULL;
done:
    sdw_tok_free(t);
    free(lines);
    free(mtext);
    free(vocab.slots);
    json_object_put(root);
    free(vtext);
    if (jt)
        json_tokener_free(jt);
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
    char *text = NULL, *syms = NULL;
    size_t len = 0;
    line_span *lines = NULL;
    str_map vocab = {0};
    sdw_tokenizer *t = NULL;
    int rc;

    if ((rc = read_gz(path, &text, &len, e)) < 0)
        return rc;
    lines = malloc(MERGE_LINES_END * sizeof *lines);
    if (!lines) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    /* OpenAI's header line is not "#version"; like open_clip and the SD
     * tokenizer it was converted into, skip line 0 whatever it says. */
    size_t nlines = split_lines(text, len, lines, MERGE_LINES_END);
    if (nlines < 2) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: no merges", path);
        goto done;
    }
    size_t nmerges = nlines - 1;

    /* The vocabulary is byte symbols, the same with "</w>", every merge's
     * result, then the two special tokens: build those strings in one arena. */
    uint32_t cp[256];
    uint8_t order[256];
    bytes_to_unicode(cp, order);
    size_t arena = 512 * 8 + len + 64, used = 0;
    syms = malloc(arena);
    if (!syms || (rc = str_map_init(&vocab, 512 + nmerges + 2, e)) < 0) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    int32_t id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < 256; k++) {
            char *s = syms + used;
            size_t n = (size_t)utf8proc_encode_char((utf8proc_int32_t)cp[order[k]], (utf8proc_uint8_t *)s);
            if (pass) {
                memcpy(s + n, "</w>", 4);
                n += 4;
            }
            used += n;
            str_map_put(&vocab, s, n, id++);
        }
    for (size_t i = 1; i < nlines; i++) {
        char *s = syms + used;
        size_t n = 0;
        for (size_t j = 0; j < lines[i].n; j++)
            if (!is_space_byte(lines[i].p[j]))
                s[n++] = lines[i].p[j];
        used += n;
        str_map_put(&vocab, s, n, id++);
    }
    str_map_put(&vocab, START_TOK, sizeof START_TOK - 1, id++);
    str_map_put(&vocab, END_TOK, sizeof END_TOK - 1, id++);

    t = calloc(1, sizeof *t);
    if (!t) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    if ((rc = build_tables(t, &vocab, lines + 1, nmerges, path, e)) < 0)
        goto done;
    *out = t;
    t = NULL;
done:
    sdw_tok_free(t);
    free(vocab.slots);
    free(syms);
    free(lines);
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
    free(t->merges);
    free(t);
}

/* ---- writing ---- */

typedef struct tok_str {
    char *s; /* NULL until known */
} tok_str;

static int cmp_rank(const void *a, const void *b)
{
    const merge_slot *x = *(const merge_slot *const *)a, *y = *(const merge_slot *const *)b;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

static char *str_cat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (s) {
        memcpy(s, a, na);
        memcpy(s + na, b, nb + 1);
    }
    return s;
}

/* Spells every id from the byte symbols up, in rank order: a merge's parts
 * are byte symbols or results of earlier merges. */
static int spell_ids(const sdw_tokenizer *t, const merge_slot **ranked, size_t nm, tok_str *str, int32_t nid,
                     sdw_error *e)
{
    uint32_t cp[256];
    uint8_t order[256];
    bytes_to_unicode(cp, order);
    for (int b = 0; b < 256; b++) {
        char sym[16];
        utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp[b], (utf8proc_uint8_t *)sym);
        sym[n] = 0;
        str[t->byte_id[b]].s = strdup(sym);
        memcpy(sym + n, "</w>", 5);
        str[t->byte_end_id[b]].s = strdup(sym);
        if (!str[t->byte_id[b]].s || !str[t->byte_end_id[b]].s)
            return sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
    }
    if (!(str[t->start_id].s = strdup(START_TOK)) || !(str[t->end_id].s = strdup(END_TOK)))
        return sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < nm; i++) {
        int32_t a = (int32_t)((ranked[i]->key - 1) >> 32), b = (int32_t)((ranked[i]->key - 1) & 0xffffffffu);
        if (a >= nid || b >= nid || !str[a].s || !str[b].s)
            return sdw_fail(e, SDW_EFORMAT, "tokenizer: merge %d uses a symbol no earlier merge makes",
                            ranked[i]->rank);
        if (!str[ranked[i]->merged].s && !(str[ranked[i]->merged].s = str_cat(str[a].s, str[b].s)))
            return sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
    }
    return 0;
}

static int write_vocab(const tok_str *str, int32_t nid, const char *path, sdw_error *e)
{
    json_object *o = json_object_new_object();
    if (!o)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    for (int32_t i = 0; i < nid; i++)
        if (str[i].s && json_object_object_add(o, str[i].s, json_object_new_int(i)) < 0) {
            json_object_put(o);
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        }
    int rc = json_object_to_file_ext(path, o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    json_object_put(o);
    if (rc < 0)
        return sdw_fail(e, SDW_EIO, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

static int write_merges(const merge_slot **ranked, size_t nm, const tok_str *str,
                        const char *path, sdw_error *e)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return sdw_fail(e, SDW_EIO, "%s: cannot create: %s", path, strerror(errno));
    fputs("#version: 0.2\n", f);
    for (size_t i = 0; i < nm; i++) {
        int32_t a = (int32_t)((ranked[i]->key - 1) >> 32), b = (int32_t)((ranked[i]->key - 1) & 0xffffffffu);
        fprintf(f, "%s %s\n", str[a].s, str[b].s);
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return sdw_fail(e, SDW_EIO, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

int sdw_tok_save_hf(const sdw_tokenizer *t, const char *vocab_json, const char *merges_txt, sdw_error *e)
{
    size_t nm = 0;
    int32_t nid = t->start_id > t->end_id ? t->start_id + 1 : t->end_id + 1;
    for (size_t i = 0; i <= t->merge_mask; i++)
        if (t->merges[i].key) {
            nm++;
            if (t->merges[i].merged >= nid)
                nid = t->merges[i].merged + 1;
        }
    for (int b = 0; b < 256; b++) {
        if (t->byte_id[b] >= nid)
            nid = t->byte_id[b] + 1;
        if (t->byte_end_id[b] >= nid)
            nid = t->byte_end_id[b] + 1;
    }
    const merge_slot **ranked = malloc((nm ? nm : 1) * sizeof *ranked);
    tok_str *str = calloc((size_t)nid, sizeof *str);
    int rc = 0;
    if (!ranked || !str) {
        rc = sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    nm = 0;
    for (size_t i = 0; i <= t->merge_mask; i++)
        if (t->merges[i].key)
            ranked[nm++] = &t->merges[i];
    qsort(ranked, nm, sizeof *ranked, cmp_rank);
    if ((rc = spell_ids(t, ranked, nm, str, nid, e)) == 0 && (rc = write_vocab(str, nid, vocab_json, e)) == 0)
        rc = write_merges(ranked, nm, str, merges_txt, e);
done:
    for (int32_t i = 0; str && i < nid; i++)
        free(str[i].s);
    free(str);
    free(ranked);
    return rc;
}

const char *sdw_tok_unicode_version(void)
{
    return utf8proc_unicode_version();
}

/* ---- text cleanup: Unicode predicates as Python 3.11 sees them ---- */

typedef struct cp_range {
    uint32_t lo, hi;
} cp_range;

/* Assigned in Unicode 15.0 (utf8proc 2.8), unassigned in 14.0 (Python 3.11). */
static const cp_range new15[] = {
    {0xCF3, 0xCF3},     {0xECE, 0xECE},     {0x10EFD, 0x10EFF}, {0x1123F, 0x11241}, {0x11B00, 0x11B09},
    {0x11F00, 0x11F10}, {0x11F12, 0x11F3A}, {0x11F3E, 0x11F59}, {0x1342F, 0x1342F}, {0x13439, 0x13455},
    {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D},
    {0x1E08F, 0x1E08F}, {0x1E4D0, 0x1E4F9}, {0x1F6DC, 0x1F6DC}, {0x1F774, 0x1F776}, {0x1F77B, 0x1F77F},
    {0x1F7D9, 0x1F7D9}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA88}, {0x1FAAD, 0x1FAAF}, {0x1FABB, 0x1FABD},
    {0x1FABF, 0x1FABF}, {0x1FACE, 0x1FACF}, {0x1FADA, 0x1FADB}, {0x1FAE8, 0x1FAE8}, {0x1FAF7, 0x1FAF8},
    {0x2B739, 0x2B739}, {0x31350, 0x323AF},
};

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

static utf8proc_category_t category14(uint32_t c)
{
    if (in_ranges(c, new15, sizeof new15 / sizeof new15[0]))
        return UTF8PROC_CATEGORY_CN;
    return utf8proc_category((utf8proc_int32_t)c);
}

static bool is_other(utf8proc_category_t k)
{
    return k == UTF8PROC_CATEGORY_CN || k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF ||
           k == UTF8PROC_CATEGORY_CS || k == UTF8PROC_CATEGORY_CO;
}

static bool is_letter(utf8proc_category_t k)
{
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static bool is_number(utf8proc_category_t k)
{
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

/* BasicTokenizer._is_chinese_char */
static bool is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* str.isspace(), for the characters that survive cleanup: everything else
 * Python counts as whitespace is Zs (already a space) or Cc (dropped). */
static bool py_space(uint32_t c)
{
    return c == ' ' || c == 0x2028 || c == 0x2029;
}

/* Python's Case_Ignorable: Mn, Me, Cf, Lm, Sk and Word_Break MidLetter,
 * MidNumLet or Single_Quote. Used only for the final-sigma rule. */
static bool case_ignorable(uint32_t c)
{
    static const uint32_t mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,  0x5F4,  0x2018, 0x2019,
                                   0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    utf8proc_category_t k = category14(c);
    if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
        k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK)
        return true;
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        if (mid[i] == c)
            return true;
    return false;
}

/* Python's Cased (Lowercase, Uppercase or Lt). Letters with a case mapping
 * cover it but for the Other_Lowercase/Other_Uppercase symbols below. */
static bool cased(uint32_t c)
{
    utf8proc_category_t k = category14(c);
    if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT)
        return true;
    if (utf8proc_tolower((utf8proc_int32_t)c) != (utf8proc_int32_t)c ||
        utf8proc_toupper((utf8proc_int32_t)c) != (utf8proc_int32_t)c)
        return true;
    return c == 0xAA || c == 0xBA || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
           (c >= 0x1F170 && c <= 0x1F189);
}

/* str.lower() of Σ: final form when a cased letter precedes (skipping
 * case-ignorables) and none follows. */
static uint32_t lower_sigma(const uint32_t *w, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && case_ignorable(w[j - 1]))
        j--;
    if (j == 0 || !cased(w[j - 1]))
        return 0x3C3;
    j = i + 1;
    while (j < n && case_ignorable(w[j]))
        j++;
    return (j == n || !cased(w[j])) ? 0x3C2 : 0x3C3;
}

/* ---- growable buffers for one encode call ---- */

typedef SDW_VEC(uint32_t) u32vec;
typedef SDW_VEC(int32_t) i32vec;

/* true when pushed: the callers chain them with && */
static bool u32_push(u32vec *b, uint32_t x)
{
    return sdw_vec_push(b, x, NULL) == SDW_OK;
}

static bool i32_push(i32vec *b, int32_t x)
{
    return sdw_vec_push(b, x, NULL) == SDW_OK;
}

typedef struct bpe_work {
    int32_t *sym, *rank;
    int *next, *prev;
    size_t cap;
} bpe_work;

/* ---- BPE ---- */

static int bpe_word(const sdw_tokenizer *t, const uint8_t *bytes, size_t n, bpe_work *w, i32vec *out)
{
    if (n > w->cap) {
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
        if (!s || !r || !nx || !pv)
            return SDW_ENOMEM;
        w->cap = cap;
    }
    int32_t *sym = w->sym, *rank = w->rank;
    int *next = w->next, *prev = w->prev;
    int last = (int)n - 1;
    for (int i = 0; i <= last; i++) {
        sym[i] = i == last ? t->byte_end_id[bytes[i]] : t->byte_id[bytes[i]];
        next[i] = i == last ? -1 : i + 1;
        prev[i] = i - 1;
    }
    for (int i = 0; i < last; i++)
        rank[i] = pair_rank(t, sym[i], sym[i + 1]);
    if (last >= 0)
        rank[last] = INT32_MAX;

    /* Each round merges every occurrence of the lowest-ranked pair, left to
     * right: a rank names exactly one pair, so rank[i] == best finds them. */
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
    for (int i = 0; i >= 0; i = next[i])
        if (!i32_push(out, sym[i]))
            return SDW_ENOMEM;
    return 0;
}

/* ---- the CLIP pattern over one lowercased word ---- */

/* Case-insensitive equality with one ASCII pattern character, as the regex
 * module's IGNORECASE sees it: only the ASCII capital and, for 's', U+017F
 * LATIN SMALL LETTER LONG S fold onto these letters. */
static bool lit_eq(uint32_t c, char p)
{
    if (c == (uint32_t)(unsigned char)p)
        return true;
    if (p >= 'a' && p <= 'z' && c == (uint32_t)(p - 'a' + 'A'))
        return true;
    return p == 's' && c == 0x17F;
}

/* Length of the literal at w[i] (case-insensitive), or 0; *exact says whether
 * it matched byte for byte. */
static size_t match_lit(const uint32_t *w, size_t n, size_t i, const char *lit, bool *exact)
{
    size_t k = 0;
    *exact = true;
    for (; lit[k]; k++) {
        if (i + k >= n || !lit_eq(w[i + k], lit[k]))
            return 0;
        if (w[i + k] != (uint32_t)(unsigned char)lit[k])
            *exact = false;
    }
    return k;
}

enum cls { CLS_SPACE, CLS_LETTER, CLS_NUMBER, CLS_OTHER, CLS_NONE };

static enum cls classify(uint32_t c)
{
    if (c == ' ' || c == 0x2028 || c == 0x2029)
        return CLS_SPACE;
    /* U+0345 folds to a Greek letter, so under IGNORECASE it is neither in
     * [\p{L}] nor in [^\s\p{L}\p{N}]: no alternative matches and findall
     * skips it. */
    if (c == 0x345)
        return CLS_NONE;
    utf8proc_category_t k = category14(c);
    if (is_letter(k))
        return CLS_LETTER;
    if (is_number(k))
        return CLS_NUMBER;
    return CLS_OTHER;
}

static int encode_piece(const sdw_tokenizer *t, const uint32_t *w, size_t n, bpe_work *bw, i32vec *out)
{
    uint8_t stackbuf[256], *bytes = stackbuf;
    if (n * 4 > sizeof stackbuf && !(bytes = malloc(n * 4)))
        return SDW_ENOMEM;
    size_t nb = 0;
    for (size_t i = 0; i < n; i++)
        nb += (size_t)utf8proc_encode_char((utf8proc_int32_t)w[i], bytes + nb);
    int rc = bpe_word(t, bytes, nb, bw, out);
    if (bytes != stackbuf)
        free(bytes);
    return rc;
}

static int encode_word(const sdw_tokenizer *t, const uint32_t *w, size_t n, bpe_work *bw, i32vec *out)
{
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    size_t i = 0;
    while (i < n) {
        bool exact;
        size_t m;
        int rc;
        if ((m = match_lit(w, n, i, START_TOK, &exact)) || (m = match_lit(w, n, i, END_TOK, &exact))) {
            /* transformers' BPE cache holds the exact special strings, so
             * only those become special ids; ſ-spelled ones are plain BPE. */
            if (exact) {
                if (!i32_push(out, m == sizeof START_TOK - 1 ? t->start_id : t->end_id))
                    return SDW_ENOMEM;
            } else if ((rc = encode_piece(t, w + i, m, bw, out)) < 0) {
                return rc;
            }
            i += m;
            continue;
        }
        m = 0;
        for (size_t k = 0; k < sizeof contractions / sizeof contractions[0] && !m; k++)
            m = match_lit(w, n, i, contractions[k], &exact);
        if (!m) {
            enum cls c = classify(w[i]);
            if (c == CLS_NUMBER) {
                m = 1;
            } else if (c == CLS_LETTER || c == CLS_OTHER) {
                m = 1;
                while (i + m < n && classify(w[i + m]) == c)
                    m++;
            } else {
                i++;
                continue;
            }
        }
        if ((rc = encode_piece(t, w + i, m, bw, out)) < 0)
            return rc;
        i += m;
    }
    return 0;
}

/* ---- one piece of text between special tokens ---- */

static int utf8_decode(const char *s, size_t n, u32vec *out, sdw_error *e)
{
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k < 0)
            return sdw_fail(e, SDW_EINVAL, "tokenizer: text is not valid UTF-8 (at byte %zu)", i);
        if (!u32_push(out, (uint32_t)c))
            return sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
        i += (size_t)k;
    }
    return 0;
}

static int tokenize_segment(const sdw_tokenizer *t, const char *s, size_t n, bpe_work *bw, i32vec *out,
                            sdw_error *e)
{
    u32vec raw = {0}, cleaned = {0}, norm = {0};
    uint8_t *utf8 = NULL, *nfc = NULL;
    int rc = 0;

    if ((rc = utf8_decode(s, n, &raw, e)) < 0)
        goto done;
    /* _clean_text, then _tokenize_chinese_chars */
    for (size_t i = 0; i < raw.n; i++) {
        uint32_t c = raw.v[i];
        bool ok = true;
        if (c == 0 || c == 0xFFFD)
            continue;
        if (c == '\t' || c == '\n' || c == '\r') {
            ok = u32_push(&cleaned, ' ');
        } else {
            utf8proc_category_t k = category14(c);
            if (is_other(k))
                continue;
            if (k == UTF8PROC_CATEGORY_ZS)
                ok = u32_push(&cleaned, ' ');
            else if (is_cjk(c))
                ok = u32_push(&cleaned, ' ') && u32_push(&cleaned, c) && u32_push(&cleaned, ' ');
            else
                ok = u32_push(&cleaned, c);
        }
        if (!ok)
            goto oom;
    }
    if (!(utf8 = malloc(cleaned.n * 4 + 1)))
        goto oom;
    size_t nb = 0;
    for (size_t i = 0; i < cleaned.n; i++)
        nb += (size_t)utf8proc_encode_char((utf8proc_int32_t)cleaned.v[i], utf8 + nb);
    utf8[nb] = 0;
    utf8proc_ssize_t nn = utf8proc_map(utf8, (utf8proc_ssize_t)nb, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nn < 0) {
        rc = sdw_fail(e, nn == UTF8PROC_ERROR_NOMEM ? SDW_ENOMEM : SDW_EINVAL, "tokenizer: NFC failed: %s",
                      utf8proc_errmsg(nn));
        goto done;
    }
    if ((rc = utf8_decode((const char *)nfc, (size_t)nn, &norm, e)) < 0)
        goto done;

    /* str.split(), lower() per word, then the pattern within each word:
     * joining words with single spaces, as transformers does, cannot join
     * two matches because no alternative matches a space. */
    for (size_t i = 0; i < norm.n;) {
        while (i < norm.n && py_space(norm.v[i]))
            i++;
        size_t j = i;
        while (j < norm.n && !py_space(norm.v[j]))
            j++;
        if (j == i)
            break;
        u32vec low = {0};
        for (size_t k = i; k < j; k++) {
            uint32_t c = norm.v[k];
            bool ok;
            /* U+0130 is the one full lowercase mapping longer than one code
             * point (SpecialCasing.txt, unconditional part). */
            if (c == 0x130)
                ok = u32_push(&low, 'i') && u32_push(&low, 0x307);
            else if (c == 0x3A3)
                ok = u32_push(&low, lower_sigma(norm.v + i, j - i, k - i));
            else
                ok = u32_push(&low, (uint32_t)utf8proc_tolower((utf8proc_int32_t)c));
            if (!ok) {
                free(low.v);
                goto oom;
            }
        }
        rc = encode_word(t, low.v, low.n, bw, out);
        free(low.v);
        if (rc < 0)
            goto oom;
        i = j;
    }
    goto done;
oom:
    rc = sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
done:
    free(raw.v);
    free(cleaned.v);
    free(norm.v);
    free(utf8);
    free(nfc);
    return rc;
}

static int tokenize_all(const sdw_tokenizer *t, const char *text, size_t len, i32vec *out, sdw_error *e)
{
    if (!t || !text)
        return sdw_fail(e, SDW_EINVAL, "tokenizer: no tokenizer or text");
    bpe_work bw = {0};
    int rc = 0;
    const char *p = text, *end = text + len;
    /* The added-token trie: split at the literal special tokens first. */
    for (;;) {
        size_t left = (size_t)(end - p);
        const char *s = memmem(p, left, START_TOK, sizeof START_TOK - 1);
        const char *en = memmem(p, left, END_TOK, sizeof END_TOK - 1);
        const char *hit = s && (!en || s < en) ? s : en;
        size_t seg = hit ? (size_t)(hit - p) : left;
        if (seg && (rc = tokenize_segment(t, p, seg, &bw, out, e)) < 0)
            break;
        if (!hit)
            break;
        if (!i32_push(out, hit == s ? t->start_id : t->end_id)) {
            rc = sdw_fail(e, SDW_ENOMEM, "tokenizer: out of memory");
            break;
        }
        p = hit + (hit == s ? sizeof START_TOK - 1 : sizeof END_TOK - 1);
    }
    free(bw.sym);
    free(bw.rank);
    free(bw.next);
    free(bw.prev);
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
    free(out.v);
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
    i32vec out = {0};
    int rc = tokenize_all(t, text, len, &out, e);
    if (rc == 0) {
        size_t keep = out.n < (size_t)ctx - 2 ? out.n : (size_t)ctx - 2;
        ids[0] = t->start_id;
        if (keep)
            memcpy(ids + 1, out.v, keep * sizeof *ids);
        ids[keep + 1] = t->end_id;
        for (size_t i = keep + 2; i < (size_t)ctx; i++)
            ids[i] = pad_id;
        rc = (int)keep + 2;
    }
    free(out.v);
    return rc;
}

int sdw_tok_encode(const sdw_tokenizer *t, const char *text, int32_t *ids, int len, int32_t pad_id,
                   sdw_error *e)
{
    return sdw_tok_encode_n(t, text, text ? strlen(text) : 0, ids, len, pad_id, e);
}
