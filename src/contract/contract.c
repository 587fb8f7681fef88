#include "contract/contract.h"
#include "base/err.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Deep enough for any request we accept (the deepest is loras[{...}]),
 * shallow enough that a hostile body cannot make the tokenizer work hard. */
#define JSON_MAX_DEPTH 16
#define MAX_EXACT_DOUBLE 9007199254740992.0 /* 2^53 */

/* Drops an incomplete UTF-8 sequence left at the end of s by truncation, so
 * that a clipped message still renders as valid JSON text. */
static void utf8_clip(char *s)
{
    size_t n = strlen(s), i = n, k = 0;
    while (i > 0 && k < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        k++;
    }
    if (i == 0)
        return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
    if (lead >= 0x80 && need != k)
        s[i - 1] = '\0';
}

static int api_vfail(sdw_api_error *e, int http_status, const char *code, const char *field, const char *fmt,
                     va_list ap)
{
    if (e) {
        e->http_status = http_status;
        e->code = code;
        e->retry_after_s = 0;
        snprintf(e->field, sizeof e->field, "%s", field ? field : "");
        vsnprintf(e->message, sizeof e->message, fmt, ap);
        utf8_clip(e->message);
    }
    return http_status >= 500 ? SDW_EIO : SDW_EINVAL;
}

int sdw_api_fail(sdw_api_error *e, int http_status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = api_vfail(e, http_status, code, NULL, fmt, ap);
    va_end(ap);
    return rc;
}

int sdw_api_fail_field(sdw_api_error *e, int http_status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = api_vfail(e, http_status, code, field, fmt, ap);
    va_end(ap);
    return rc;
}

char *sdw_api_error_json(const sdw_api_error *e)
{
    json_object *root = json_object_new_object(), *inner = json_object_new_object();
    char *out = NULL;
    if (!root || !inner)
        goto done;
    json_object_object_add(inner, "code", json_object_new_string(e->code ? e->code : SDW_API_INTERNAL));
    json_object_object_add(inner, "message", json_object_new_string(e->message));
    if (e->field[0])
        json_object_object_add(inner, "field", json_object_new_string(e->field));
    json_object_object_add(root, "error", inner);
    inner = NULL;
    const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    out = s ? strdup(s) : NULL;
done:
    json_object_put(inner);
    json_object_put(root);
    return out;
}

sdw_contract_defaults sdw_contract_builtin_defaults(void)
{
    return (sdw_contract_defaults){
        .steps = 20, .guidance_scale = 7.5, .width = 512, .height = 512, .sampler = SDW_JOB_SAMPLER_DEFAULT,
        .sdxl = -1,
    };
}

sdw_contract_limits sdw_contract_default_limits(void)
{
    return (sdw_contract_limits){
        .max_body_bytes = 8u << 20,
        .max_prompt_bytes = 4096,
        .max_pixels = 1024 * 1024,
        .max_image_bytes = 2u << 20,
    };
}

const char *sdw_operation_name(sdw_operation op)
{
    switch (op) {
    case SDW_OPERATION_GENERATE: return "image_generation";
    case SDW_OPERATION_TRANSFORM: return "image_transform";
    case SDW_OPERATION_INPAINT: return "image_inpaint";
    }
    return "";
}


/* The rbee operations that exist but are not image work. */
static const char *const other_rbee_ops[] = {
    "status", "infer", "rhai_script_save", "rhai_script_test", "rhai_script_get",
    "rhai_script_list", "rhai_script_delete", "worker_catalog_list", "worker_catalog_get",
    "worker_list_installed", "worker_installed_get", "worker_install", "worker_remove",
    "worker_spawn", "worker_process_list", "worker_process_get", "worker_process_delete",
    "model_download", "model_list", "model_get", "model_delete", "model_load", "model_unload",
    "queen_check", "hive_check",
};

void sdw_job_request_free(sdw_job_request *req)
{
    if (!req)
        return;
    free(req->prompt);
    free(req->negative_prompt);
    free(req->init_image.data);
    free(req->mask_image.data);
    memset(req, 0, sizeof *req);
}

/* ---- base64 ---- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static int is_b64_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

int sdw_base64_decode(const char *in, size_t len, size_t max_out,
                      unsigned char **out, size_t *out_len)
{
    size_t n = 0, pad = 0;
    *out = NULL;
    *out_len = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (is_b64_space(c))
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad || b64_value(c) < 0)
            return SDW_EFORMAT;
        n++;
    }
    if (n % 4 == 1 || pad > 2 || (pad && (n + pad) % 4 != 0))
        return SDW_EFORMAT;
    size_t olen = n / 4 * 3 + (n % 4 == 3 ? 2 : n % 4 == 2 ? 1 : 0);
    if (olen > max_out)
        return SDW_EINVAL;
    unsigned char *buf = malloc(olen ? olen : 1);
    if (!buf)
        return SDW_ENOMEM;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0)
            continue;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (unsigned char)(acc >> bits);
        }
    }
    *out = buf;
    *out_len = o;
    return 0;
}

char *sdw_base64_encode(const unsigned char *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *s = malloc((len + 2) / 3 * 4 + 1), *p = s;
    if (!s)
        return NULL;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *p++ = tab[v >> 18];
        *p++ = tab[(v >> 12) & 63];
        *p++ = tab[(v >> 6) & 63];
        *p++ = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < len ? (uint32_t)data[i + 1] << 8 : 0);
        *p++ = tab[v >> 18];
        *p++ = tab[(v >> 12) & 63];
        *p++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = '\0';
    return s;
}

/* ---- lexical pre-scan ---- */

/* The member name a number belongs to, for the error's "field": the last
 * string followed by ':', when it is a plain identifier (anything else is
 * not a field of the contract and stays out of the reply). */
static void prescan_field(const char *s, size_t key, size_t key_len, char *out, size_t cap)
{
    out[0] = '\0';
    if (key_len == 0 || key_len >= cap)
        return;
    for (size_t i = 0; i < key_len; i++) {
        char c = s[key + i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return;
    }
    memcpy(out, s + key, key_len);
    out[key_len] = '\0';
}

/* json-c saturates integer literals that do not fit 64 bits and accepts NaN
 * and Infinity even in strict mode; both would turn a bad request into a
 * silently different one, so they are caught on the raw text first. */
static int prescan(const char *s, size_t len, sdw_api_error *e)
{
    int in_str = 0;
    size_t str = 0, str_len = 0, key = 0, key_len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_str = 0;
                str_len = i - str;
            }
            continue;
        }
        if (c == '"') {
            in_str = 1;
            str = i + 1;
        } else if (c == ':') {
            key = str, key_len = str_len;
        } else if (c == 'N' || c == 'I') {
            return sdw_api_fail(e, 400, SDW_API_INVALID_JSON, "NaN and Infinity are not JSON numbers");
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i, digits = 0;
            int neg = c == '-', integral = 1;
            if (neg)
                j++;
            while (j < len && s[j] == '0' && j + 1 < len && s[j + 1] >= '0' && s[j + 1] <= '9')
                j++;
            size_t start = j;
            while (j < len && s[j] >= '0' && s[j] <= '9')
                j++, digits++;
            if (j < len && (s[j] == '.' || s[j] == 'e' || s[j] == 'E'))
                integral = 0;
            if (integral && digits >= 19) {
                const char *lim = neg ? "9223372036854775808" : "18446744073709551615";
                size_t ll = strlen(lim);
                if (digits > ll || (digits == ll && memcmp(s + start, lim, ll) > 0)) {
                    char field[sizeof e->field];
                    prescan_field(s, key, key_len, field, sizeof field);
                    return sdw_api_fail_field(e, 400, SDW_API_INVALID_VALUE, field,
                                              "%s%sinteger literal %.*s%.*s does not fit in 64 bits%s", field,
                                              field[0] ? ": " : "", neg ? 1 : 0, "-",
                                              (int)(digits > 40 ? 40 : digits), s + start,
                                              strcmp(field, "seed") ? "" : " (seeds are 0 to 18446744073709551615)");
                }
            }
            while (j < len && strchr("0123456789.eE+-", s[j]) && s[j])
                j++;
            i = j - 1;
        }
    }
    return 0;
}

/* ---- field access ---- */

typedef struct parse_ctx {
    json_object *obj;
    const sdw_contract_limits *lim;
    sdw_api_error *e;
    int internal; /* parsing our own serialised form */
} parse_ctx;

/* A field that is absent or JSON null. */
static json_object *field(parse_ctx *c, const char *name)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(c->obj, name, &v) || json_object_is_type(v, json_type_null))
        return NULL;
    return v;
}

static int bad(parse_ctx *c, const char *name, const char *what)
{
    return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_VALUE, name, "%s must be %s", name, what);
}

static int missing(parse_ctx *c, const char *name)
{
    return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_REQUEST, name, "missing required field '%s'", name);
}

/* An integral JSON number: an int literal, or a float literal whose value is
 * an exactly representable integer (20.0 is fine, 20.5 is not). */
static int as_int64(json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
        return 1;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        if (!isfinite(d) || d != floor(d) || fabs(d) > MAX_EXACT_DOUBLE)
            return 0;
        *out = (int64_t)d;
        return 1;
    }
    return 0;
}

static int get_int(parse_ctx *c, const char *name, int def, int lo, int hi, int *out)
{
    json_object *v = field(c, name);
    int64_t x;
    if (!v) {
        *out = def;
        return 0;
    }
    char what[96];
    snprintf(what, sizeof what, "an integer in [%d, %d]", lo, hi);
    if (!as_int64(v, &x) || x < lo || x > hi)
        return bad(c, name, what);
    *out = (int)x;
    return 0;
}

/* A number in [lo, hi], or in (lo, hi] when lo_open. */
static int get_num(parse_ctx *c, const char *name, double def, double lo, double hi, int lo_open, double *out)
{
    json_object *v = field(c, name);
    if (!v) {
        *out = def;
        return 0;
    }
    char what[96];
    snprintf(what, sizeof what, "a number in %c%g, %g]", lo_open ? '(' : '[', lo, hi);
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return bad(c, name, what);
    double d = json_object_get_double(v);
    if (!isfinite(d) || d < lo || (lo_open && d == lo) || d > hi)
        return bad(c, name, what);
    *out = d;
    return 0;
}

/* A string field without embedded NULs; *s and *n point into the object. */
static int get_str(parse_ctx *c, const char *name, int required, const char **s, size_t *n)
{
    json_object *v = field(c, name);
    *s = NULL;
    *n = 0;
    if (!v)
        return required ? missing(c, name) : 0;
    if (!json_object_is_type(v, json_type_string))
        return bad(c, name, "a string");
    *s = json_object_get_string(v);
    *n = (size_t)json_object_get_string_len(v);
    if (memchr(*s, '\0', *n))
        return bad(c, name, "a string without NUL characters");
    return 0;
}

/* ---- LoRA (loras: [{"name": ..., "weight": ...}]) ---- */

static int lora_name_ok(const char *s, size_t n)
{
    if (!n || n >= SDW_LORA_NAME_MAX || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

static int lora_bad(parse_ctx *c, size_t i, const char *fmt, const char *arg)
{
    char what[200];
    snprintf(what, sizeof what, fmt, arg);
    return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_VALUE, "loras", "loras[%zu]: %s", i, what);
}

static int get_loras(parse_ctx *c, sdw_job_request *r)
{
    json_object *a = field(c, "loras");
    if (!a)
        return 0;
    if (!json_object_is_type(a, json_type_array))
        return bad(c, "loras", "an array");
    size_t n = json_object_array_length(a);
    if (n > SDW_JOB_MAX_LORAS)
        return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_VALUE, "loras", "loras: %zu LoRAs, at most %d", n,
                                  SDW_JOB_MAX_LORAS);
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(a, i), *v;
        if (!json_object_is_type(o, json_type_object))
            return lora_bad(c, i, "%s", "must be an object {\"name\": ..., \"weight\": ...}");
        if (json_object_object_get_ex(o, "path", &v))
            return lora_bad(c, i, "%s",
                            "LoRAs are chosen by name from the configured ones, never by path: give \"name\"");
        if (!json_object_object_get_ex(o, "name", &v) || !json_object_is_type(v, json_type_string))
            return lora_bad(c, i, "%s", "needs \"name\", a string");
        const char *s = json_object_get_string(v);
        size_t sl = (size_t)json_object_get_string_len(v);
        if (!lora_name_ok(s, sl) || memchr(s, 0, sl))
            return lora_bad(c, i, "name must be 1-%s characters of [A-Za-z0-9._-], not starting with '.'", "63");
        for (size_t k = 0; k < i; k++)
            if (!strcmp(r->loras[k].name, s))
                return lora_bad(c, i, "%s is given twice", s);
        json_object *w = NULL, *st = NULL;
        json_object_object_get_ex(o, "weight", &w);
        json_object_object_get_ex(o, "strength", &st); /* rbee's name for it */
        if (w && st)
            return lora_bad(c, i, "%s", "give weight or strength, not both");
        if (!w)
            w = st;
        double d = 1.0;
        if (w && !json_object_is_type(w, json_type_null)) {
            if (!json_object_is_type(w, json_type_int) && !json_object_is_type(w, json_type_double))
                return lora_bad(c, i, "%s", "weight must be a number in [-4, 4]");
            d = json_object_get_double(w);
            if (!isfinite(d) || d < -SDW_LORA_MAX_WEIGHT || d > SDW_LORA_MAX_WEIGHT)
                return lora_bad(c, i, "%s", "weight must be a number in [-4, 4]");
        }
        memcpy(r->loras[i].name, s, sl + 1);
        r->loras[i].weight = d;
        r->nloras = (int)i + 1;
    }
    return 0;
}

static int get_id_field(parse_ctx *c, const char *name, int required, char *dst)
{
    const char *s;
    size_t n;
    int rc = get_str(c, name, required, &s, &n);
    if (rc || !s)
        return rc;
    if (n >= SDW_ID_FIELD_MAX)
        return bad(c, name, "at most 255 bytes long");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return bad(c, name, "free of control characters");
    memcpy(dst, s, n + 1);
    return 0;
}

static int valid_model_name(const char *s, size_t n)
{
    if (n == 0 || s[0] == '/' || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-' || ch == '/'))
            return 0;
        if (ch == '.' && i + 1 < n && s[i + 1] == '.' && (i == 0 || s[i - 1] == '/') &&
            (i + 2 == n || s[i + 2] == '/'))
            return 0;
    }
    return 1;
}

static int get_prompt(parse_ctx *c, const char *name, int required, char **dst)
{
    const char *s;
    size_t n;
    int rc = get_str(c, name, required, &s, &n);
    if (rc)
        return rc;
    if (!s)
        s = "", n = 0;
    if (n > c->lim->max_prompt_bytes) {
        char what[64];
        snprintf(what, sizeof what, "at most %zu bytes long", c->lim->max_prompt_bytes);
        return bad(c, name, what);
    }
    if (required) {
        size_t i = 0;
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            i++;
        if (i == n)
            return bad(c, name, "a non-empty string");
    }
    *dst = strndup(s, n);
    if (!*dst)
        return sdw_api_fail(c->e, 500, SDW_API_INTERNAL, "out of memory");
    return 0;
}

static int get_seed(parse_ctx *c, sdw_job_request *r)
{
    static const char what[] = "an integer in [0, 18446744073709551615] or a decimal string of one";
    json_object *v = field(c, "seed");
    if (c->internal) {
        json_object *sr = field(c, "seed_random");
        r->seed_random = sr && json_object_get_boolean(sr);
    }
    if (!v) {
        if (c->internal)
            return missing(c, "seed");
        if (getrandom(&r->seed, sizeof r->seed, 0) != (ssize_t)sizeof r->seed)
            return sdw_api_fail(c->e, 500, SDW_API_INTERNAL, "no randomness for a seed: %s", strerror(errno));
        r->seed_random = true;
        return 0;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        size_t n = (size_t)json_object_get_string_len(v);
        if (n == 0 || n > 20 || strspn(s, "0123456789") != n)
            return bad(c, "seed", what);
        errno = 0;
        unsigned long long x = strtoull(s, NULL, 10);
        if (errno == ERANGE)
            return bad(c, "seed", what);
        r->seed = x;
        return 0;
    }
    int64_t x;
    if (!as_int64(v, &x) || x < 0)
        return bad(c, "seed", what);
    r->seed = json_object_is_type(v, json_type_int) ? json_object_get_uint64(v) : (uint64_t)x;
    return 0;
}

static int image_bad(parse_ctx *c, const char *field, const char *name, const char *what)
{
    return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_VALUE, field, "%s must be %s", name, what);
}

static int get_image(parse_ctx *c, const char *name, const char *alias, sdw_image_blob *img)
{
    const char *s, *field = name; /* the canonical name, whichever was sent */
    size_t n;
    int rc = get_str(c, name, 0, &s, &n);
    if (rc)
        return rc;
    if (!s && alias) {
        if ((rc = get_str(c, alias, 0, &s, &n)))
            return rc;
        if (s)
            name = alias;
    }
    if (!s)
        return missing(c, name);
    while (n && is_b64_space((unsigned char)*s))
        s++, n--;
    if (n >= 5 && memcmp(s, "data:", 5) == 0) {
        const char *comma = memchr(s, ',', n);
        if (!comma || comma - s < 12 || memcmp(comma - 7, ";base64", 7) != 0)
            return image_bad(c, field, name, "base64 data (a data: URL needs \";base64,\")");
        n -= (size_t)(comma + 1 - s);
        s = comma + 1;
    }
    rc = sdw_base64_decode(s, n, c->lim->max_image_bytes, &img->data, &img->len);
    if (rc == SDW_EINVAL)
        return sdw_api_fail_field(c->e, 413, SDW_API_PAYLOAD_TOO_LARGE, field, "%s is larger than %zu bytes",
                                  name, c->lim->max_image_bytes);
    if (rc == SDW_ENOMEM)
        return sdw_api_fail(c->e, 500, SDW_API_INTERNAL, "out of memory");
    if (rc)
        return image_bad(c, field, name, "valid base64 (standard alphabet, padding only at the end)");
    if (img->len == 0)
        return image_bad(c, field, name, "a non-empty image");
    if (img->len >= 8 && memcmp(img->data, "\x89PNG\r\n\x1a\n", 8) == 0)
        img->format = SDW_IMAGE_PNG;
    else if (img->len >= 3 && memcmp(img->data, "\xff\xd8\xff", 3) == 0)
        img->format = SDW_IMAGE_JPEG;
    else
        return sdw_api_fail_field(c->e, 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, field, "%s is neither PNG nor JPEG",
                                  name);
    return 0;
}

static int get_sampler(parse_ctx *c, int *out)
{
    const char *s;
    size_t n;
    int rc = get_str(c, "sampler", 0, &s, &n);
    if (rc || !s)
        return rc;
    int named = sdw_sampler_parse(s);
    if (named >= 0) {
        *out = named;
        return 0;
    }
    return sdw_api_fail(c->e, 400, SDW_API_INVALID_VALUE, "sampler must be one of %s", sdw_sampler_names);
}

/* {"<ka>": int, "<kb>": int} with both in [lo, hi], or absent/null
 * (*given 0, outputs untouched). */
static int get_pair(parse_ctx *c, const char *name, const char *ka, const char *kb, int lo, int hi, int *a, int *b,
                    bool *given)
{
    json_object *v = field(c, name), *x, *y;
    int64_t va, vb;
    char what[128];
    *given = v != NULL;
    if (!v)
        return 0;
    snprintf(what, sizeof what, "an object {\"%s\": %d..%d, \"%s\": %d..%d}", ka, lo, hi, kb, lo, hi);
    if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 2 ||
        !json_object_object_get_ex(v, ka, &x) || !json_object_object_get_ex(v, kb, &y) || !as_int64(x, &va) ||
        !as_int64(y, &vb) || va < lo || va > hi || vb < lo || vb > hi)
        return bad(c, name, what);
    *a = (int)va, *b = (int)vb;
    return 0;
}

/* SDXL's original_size, crops_coords_top_left and target_size. */
static int get_micro(parse_ctx *c, const sdw_contract_defaults *d, sdw_job_request *r)
{
    bool given[3];
    int rc;
    if ((rc = get_pair(c, "original_size", "width", "height", 1, 16384, &r->original_width, &r->original_height,
                       &given[0])) ||
        (rc = get_pair(c, "crops_coords_top_left", "top", "left", 0, 16384, &r->crop_top, &r->crop_left,
                       &given[1])) ||
        (rc = get_pair(c, "target_size", "width", "height", 1, 16384, &r->target_width, &r->target_height,
                       &given[2])))
        return rc;
    r->has_crops = given[1];
    static const char *const names[3] = {"original_size", "crops_coords_top_left", "target_size"};
    for (int i = 0; i < 3; i++)
        if (given[i] && d->sdxl == 0)
            return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_VALUE, names[i],
                                      "%s applies to SDXL models only; %s is not one", names[i], r->model);
    return 0;
}

static int parse_fields(parse_ctx *c, sdw_operation op, sdw_job_request *r)
{
    int rc;
    const char *s;
    size_t n;
    r->op = op;
    if ((rc = get_id_field(c, "hive_id", 1, r->hive_id)) ||
        (rc = get_id_field(c, "worker_id", 0, r->worker_id)))
        return rc;
    if ((rc = get_str(c, "model", 1, &s, &n)))
        return rc;
    if (n >= SDW_ID_FIELD_MAX || !valid_model_name(s, n))
        return bad(c, "model", "1-255 characters of [A-Za-z0-9._/-], not starting with '/' or '.', without '..'");
    memcpy(r->model, s, n + 1);
    sdw_contract_defaults d = sdw_contract_builtin_defaults();
    if (c->lim->model_defaults)
        c->lim->model_defaults(c->lim->model_defaults_ctx, r->model, &d);
    r->sampler = d.sampler;
    if ((rc = get_prompt(c, "prompt", 1, &r->prompt)) ||
        (rc = get_prompt(c, "negative_prompt", 0, &r->negative_prompt)) ||
        (rc = get_int(c, "steps", d.steps, 1, 150, &r->steps)) ||
        (rc = get_num(c, "guidance_scale", d.guidance_scale, 0, 30, 0, &r->guidance_scale)) ||
        (rc = get_sampler(c, &r->sampler)) ||
        (rc = get_num(c, "eta", 0, 0, 1, 0, &r->eta)) ||
        (rc = get_int(c, "clip_skip", 0, 0, 11, &r->clip_skip)) ||
        (rc = get_seed(c, r)) || (rc = get_micro(c, &d, r)))
        return rc;
    r->negative_prompt_given = field(c, "negative_prompt") != NULL;
    if (r->eta != 0 && r->sampler != SDW_SAMPLER_DDIM)
        return bad(c, "eta", "0 unless sampler is ddim");

    if ((rc = get_loras(c, r)))
        return rc;

    if (op == SDW_OPERATION_GENERATE) {
        if ((rc = get_int(c, "width", d.width, SDW_CONTRACT_MIN_SIDE, SDW_CONTRACT_MAX_SIDE, &r->width)) ||
            (rc = get_int(c, "height", d.height, SDW_CONTRACT_MIN_SIDE, SDW_CONTRACT_MAX_SIDE, &r->height)))
            return rc;
        if (r->width % SDW_CONTRACT_GRID)
            return bad(c, "width", "a multiple of 8");
        if (r->height % SDW_CONTRACT_GRID)
            return bad(c, "height", "a multiple of 8");
        if ((size_t)r->width * (size_t)r->height > c->lim->max_pixels)
            return sdw_api_fail(c->e, 400, SDW_API_INVALID_VALUE,
                                "width*height must be at most %zu pixels", c->lim->max_pixels);
        return 0;
    }
    /* diffusers denoises the last int(steps * strength) of the steps and
     * refuses none ("the number of pipeline steps is 0 which is < 1"), as
     * the engine's scheduler does: strength 0 always, a small one with few
     * steps. The product is a double, as Python computes it. */
    if ((rc = get_num(c, "strength", op == SDW_OPERATION_INPAINT ? 1.0 : 0.8, 0, 1, 1, &r->strength)))
        return rc;
    if ((int)((double)r->steps * r->strength) < 1)
        return sdw_api_fail_field(c->e, 400, SDW_API_INVALID_VALUE, "strength",
                                  "strength %g with %d steps denoises no step: steps * strength must be at least 1",
                                  r->strength, r->steps);
    if (c->internal)
        return 0;
    if ((rc = get_image(c, "init_image", "input_image", &r->init_image)))
        return rc;
    if (op == SDW_OPERATION_INPAINT && (rc = get_image(c, "mask_image", NULL, &r->mask_image)))
        return rc;
    return 0;
}

static int parse_operation(json_object *root, sdw_api_error *e, sdw_operation *op)
{
    json_object *v;
    if (!json_object_object_get_ex(root, "operation", &v) || !json_object_is_type(v, json_type_string))
        return sdw_api_fail(e, 400, SDW_API_INVALID_REQUEST, "\"operation\" must be present and a string");
    const char *name = json_object_get_string(v);
    if (strlen(name) != (size_t)json_object_get_string_len(v))
        return sdw_api_fail(e, 400, SDW_API_UNKNOWN_OPERATION, "unknown operation (contains a NUL character)");
    for (int k = SDW_OPERATION_GENERATE; k <= SDW_OPERATION_INPAINT; k++)
        if (strcmp(name, sdw_operation_name((sdw_operation)k)) == 0) {
            *op = (sdw_operation)k;
            return 0;
        }
    for (size_t i = 0; i < sizeof other_rbee_ops / sizeof other_rbee_ops[0]; i++)
        if (strcmp(name, other_rbee_ops[i]) == 0)
            return sdw_api_fail(e, 400, SDW_API_UNSUPPORTED_OPERATION,
                                "operation '%s' is not supported by this image worker "
                                "(supported: image_generation, image_transform, image_inpaint)", name);
    char shown[65];
    snprintf(shown, sizeof shown, "%s", name);
    utf8_clip(shown);
    return sdw_api_fail(e, 400, SDW_API_UNKNOWN_OPERATION, "unknown operation '%s'", shown);
}

static int parse_json(const char *body, size_t len, const sdw_contract_limits *lim, int internal,
                      sdw_job_request *req, sdw_api_error *e)
{
    memset(req, 0, sizeof *req);
    if (len == 0)
        return sdw_api_fail(e, 400, SDW_API_INVALID_JSON, "empty request body");
    if (len > 0x7fffffff)
        return sdw_api_fail(e, 413, SDW_API_PAYLOAD_TOO_LARGE, "request body is larger than 2 GiB");
    int rc = prescan(body, len, e);
    if (rc)
        return rc;
    json_tokener *tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    if (!tok)
        return sdw_api_fail(e, 500, SDW_API_INTERNAL, "out of memory");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    if (!root && jerr == json_tokener_continue) {
        /* A top-level literal ("null", "5") is only complete at end of
         * input, which json-c learns from a terminating NUL. */
        root = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
        end = len;
    }
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success) {
        json_object_put(root);
        if (jerr == json_tokener_success)
            return sdw_api_fail(e, 400, SDW_API_INVALID_REQUEST, "the body must be a JSON object");
        if (jerr == json_tokener_continue)
            return sdw_api_fail(e, 400, SDW_API_INVALID_JSON, "truncated JSON body");
        if (jerr == json_tokener_error_depth)
            return sdw_api_fail(e, 400, SDW_API_INVALID_JSON, "JSON nested deeper than %d levels", JSON_MAX_DEPTH);
        return sdw_api_fail(e, 400, SDW_API_INVALID_JSON, "malformed JSON at byte %zu: %s",
                            end, json_tokener_error_desc(jerr));
    }
    for (; end < len; end++)
        if (!strchr(" \t\r\n", body[end]) || !body[end]) {
            json_object_put(root);
            return sdw_api_fail(e, 400, SDW_API_INVALID_JSON, "unexpected data after the JSON value at byte %zu", end);
        }
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return sdw_api_fail(e, 400, SDW_API_INVALID_REQUEST, "the body must be a JSON object");
    }
    sdw_operation op = SDW_OPERATION_GENERATE;
    rc = parse_operation(root, e, &op);
    if (!rc) {
        parse_ctx c = {.obj = root, .lim = lim, .e = e, .internal = internal};
        rc = parse_fields(&c, op, req);
    }
    json_object_put(root);
    if (rc)
        sdw_job_request_free(req);
    return rc;
}

int sdw_contract_parse(const char *body, size_t len, const sdw_contract_limits *limits,
                       sdw_job_request *req, sdw_api_error *e)
{
    sdw_contract_limits def = sdw_contract_default_limits();
    const sdw_contract_limits *lim = limits ? limits : &def;
    memset(req, 0, sizeof *req);
    if (len > lim->max_body_bytes)
        return sdw_api_fail(e, 413, SDW_API_PAYLOAD_TOO_LARGE, "request body is larger than %zu bytes",
                            lim->max_body_bytes);
    return parse_json(body, len, lim, 0, req, e);
}

/* ---- params JSON and the ring form ---- */

/* The shortest %g form that reads back as the same double, so 7.5 stays
 * "7.5" but nothing is lost in the round trip through the ring. */
static json_object *exact_double(double v)
{
    char buf[32];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strcat(buf, ".0");
    return json_object_new_double_s(v, buf);
}

char *sdw_job_request_params_json(const sdw_job_request *r)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "operation", json_object_new_string(sdw_operation_name(r->op)));
    json_object_object_add(o, "hive_id", json_object_new_string(r->hive_id));
    json_object_object_add(o, "model", json_object_new_string(r->model));
    if (r->worker_id[0])
        json_object_object_add(o, "worker_id", json_object_new_string(r->worker_id));
    json_object_object_add(o, "prompt", json_object_new_string(r->prompt ? r->prompt : ""));
    /* null when not given: SDXL tells the two apart */
    json_object_object_add(o, "negative_prompt", r->negative_prompt_given && r->negative_prompt
                                                     ? json_object_new_string(r->negative_prompt)
                                                     : NULL);
    json_object_object_add(o, "steps", json_object_new_int(r->steps));
    json_object_object_add(o, "guidance_scale", exact_double(r->guidance_scale));
    if (r->op == SDW_OPERATION_GENERATE) {
        json_object_object_add(o, "width", json_object_new_int(r->width));
        json_object_object_add(o, "height", json_object_new_int(r->height));
    } else {
        json_object_object_add(o, "strength", exact_double(r->strength));
    }
    json_object_object_add(o, "seed", json_object_new_uint64(r->seed));
    json_object_object_add(o, "seed_random", json_object_new_boolean(r->seed_random));
    if (r->sampler != SDW_JOB_SAMPLER_DEFAULT)
        json_object_object_add(o, "sampler", json_object_new_string(sdw_sampler_name(r->sampler)));
    json_object_object_add(o, "eta", exact_double(r->eta));
    json_object_object_add(o, "clip_skip", json_object_new_int(r->clip_skip));
    if (r->nloras) {
        json_object *a = json_object_new_array();
        for (int i = 0; i < r->nloras; i++) {
            json_object *l = json_object_new_object();
            json_object_object_add(l, "name", json_object_new_string(r->loras[i].name));
            json_object_object_add(l, "weight", exact_double(r->loras[i].weight));
            json_object_array_add(a, l);
        }
        json_object_object_add(o, "loras", a);
    }
    struct {
        const char *name, *ka, *kb;
        int a, b, given;
    } micro[] = {
        {"original_size", "width", "height", r->original_width, r->original_height, r->original_width > 0},
        {"crops_coords_top_left", "top", "left", r->crop_top, r->crop_left, r->has_crops},
        {"target_size", "width", "height", r->target_width, r->target_height, r->target_width > 0},
    };
    for (size_t i = 0; i < sizeof micro / sizeof micro[0]; i++) {
        if (!micro[i].given)
            continue;
        json_object *pr = json_object_new_object();
        json_object_object_add(pr, micro[i].ka, json_object_new_int(micro[i].a));
        json_object_object_add(pr, micro[i].kb, json_object_new_int(micro[i].b));
        json_object_object_add(o, micro[i].name, pr);
    }
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *out = s ? strdup(s) : NULL;
    json_object_put(o);
    return out;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#define BLOB_HEADER 16

unsigned char *sdw_job_request_serialize(const sdw_job_request *r, size_t *len)
{
    char *params = sdw_job_request_params_json(r);
    if (!params)
        return NULL;
    size_t pl = strlen(params), il = r->init_image.len, ml = r->mask_image.len;
    if (pl > UINT32_MAX || il > UINT32_MAX || ml > UINT32_MAX) {
        free(params);
        return NULL;
    }
    unsigned char *buf = malloc(BLOB_HEADER + pl + il + ml);
    if (buf) {
        memcpy(buf, "SDWJ", 4);
        put_u32(buf + 4, (uint32_t)pl);
        put_u32(buf + 8, (uint32_t)il);
        put_u32(buf + 12, (uint32_t)ml);
        memcpy(buf + BLOB_HEADER, params, pl);
        if (il)
            memcpy(buf + BLOB_HEADER + pl, r->init_image.data, il);
        if (ml)
            memcpy(buf + BLOB_HEADER + pl + il, r->mask_image.data, ml);
        *len = BLOB_HEADER + pl + il + ml;
    }
    free(params);
    return buf;
}

static int take_image(const unsigned char *p, size_t n, sdw_image_blob *img, sdw_api_error *e)
{
    if (n >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        img->format = SDW_IMAGE_PNG;
    else if (n >= 3 && memcmp(p, "\xff\xd8\xff", 3) == 0)
        img->format = SDW_IMAGE_JPEG;
    else
        return sdw_api_fail(e, 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, "serialised image is neither PNG nor JPEG");
    img->data = malloc(n);
    if (!img->data)
        return sdw_api_fail(e, 500, SDW_API_INTERNAL, "out of memory");
    memcpy(img->data, p, n);
    img->len = n;
    return 0;
}

int sdw_job_request_deserialize(const unsigned char *buf, size_t len, sdw_job_request *req, sdw_api_error *e)
{
    memset(req, 0, sizeof *req);
    if (len < BLOB_HEADER || memcmp(buf, "SDWJ", 4) != 0)
        return sdw_api_fail(e, 400, SDW_API_INVALID_REQUEST, "not a serialised job request");
    size_t pl = get_u32(buf + 4), il = get_u32(buf + 8), ml = get_u32(buf + 12);
    if (BLOB_HEADER + pl + il + ml != len)
        return sdw_api_fail(e, 400, SDW_API_INVALID_REQUEST, "serialised job request has inconsistent lengths");
    /* The pool enforced its configured limits already; only structure and
     * ranges are checked again here. */
    sdw_contract_limits open = {
        .max_body_bytes = SIZE_MAX, .max_prompt_bytes = SIZE_MAX, .max_pixels = SIZE_MAX, .max_image_bytes = SIZE_MAX};
    int rc = parse_json((const char *)buf + BLOB_HEADER, pl, &open, 1, req, e);
    if (rc)
        return rc;
    int needs_init = req->op != SDW_OPERATION_GENERATE, needs_mask = req->op == SDW_OPERATION_INPAINT;
    if (needs_init != (il > 0) || needs_mask != (ml > 0))
        rc = sdw_api_fail(e, 400, SDW_API_INVALID_REQUEST, "serialised job request has the wrong images for %s",
                          sdw_operation_name(req->op));
    if (!rc && il)
        rc = take_image(buf + BLOB_HEADER + pl, il, &req->init_image, e);
    if (!rc && ml)
        rc = take_image(buf + BLOB_HEADER + pl + il, ml, &req->mask_image, e);
    if (rc)
        sdw_job_request_free(req);
    return rc;
}
