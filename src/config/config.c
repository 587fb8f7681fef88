#include "config/config.h"

#include "base/sampler.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KIB ((size_t)1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)
#define FILE_MAX (1 * MIB)

enum key_type { K_INT, K_SIZE, K_LISTEN, K_PM, K_RING_NAME, K_DEVICE, K_LOG };

struct key {
    const char *name;
    enum key_type type;
    size_t off;
    long long min, max;
    bool zero_ok;           /* 0 means "derived" even though min > 0 */
};

#define OFF(f) offsetof(sdw_config, f)

static const struct key keys[] = {
    { "listen", K_LISTEN, 0, 0, 0, false },
    { "pm", K_PM, 0, 0, 0, false },
    { "pm.max_children", K_INT, OFF(pm_max_children), 1, 4096, false },
    { "pm.start_servers", K_INT, OFF(pm_start_servers), 1, 4096, false },
    { "pm.min_spare_servers", K_INT, OFF(pm_min_spare_servers), 1, 4096, false },
    { "pm.max_spare_servers", K_INT, OFF(pm_max_spare_servers), 1, 4096, false },
    { "pm.max_requests", K_INT, OFF(pm_max_requests), 0, INT_MAX, false },
    { "pm.max_streams_per_child", K_INT, OFF(pm_max_streams_per_child), 1, 4096, false },
    { "ring.name", K_RING_NAME, 0, 0, 0, false },
    { "ring.slots", K_INT, OFF(ring_slots), 1, 65536, false },
    { "ring.max_queued", K_INT, OFF(ring_max_queued), 1, 65536, false },
    { "ring.input_bytes", K_SIZE, OFF(ring_input_bytes), 64 * 1024, 4LL << 30, true },
    { "ring.log_bytes", K_SIZE, OFF(ring_log_bytes), 4 * 1024, 64LL << 20, false },
    { "ring.image_bytes", K_SIZE, OFF(ring_image_bytes), 64 * 1024, 4LL << 30, true },
    { "result_ttl", K_INT, OFF(result_ttl), 1, 7 * 24 * 3600, false },
    { "preview_interval", K_INT, OFF(preview_interval), 0, 10000, false },
    { "keepalive_interval", K_INT, OFF(keepalive_interval), 1, 3600, false },
    { "limits.max_body_bytes", K_SIZE, OFF(max_body_bytes), 1024, 1LL << 30, false },
    { "limits.max_prompt_bytes", K_SIZE, OFF(max_prompt_bytes), 1, 1LL << 20, false },
    { "limits.max_image_bytes", K_SIZE, OFF(max_image_bytes), 1024, 256LL << 20, false },
    { "limits.max_pixels", K_SIZE, OFF(max_pixels), 64 * 64, 2048 * 2048, false },
    { "device", K_DEVICE, 0, 0, 0, false },
    { "threads", K_INT, OFF(threads), 0, 4096, false },
    { "engine.restart_delay_ms", K_INT, OFF(engine_restart_delay_ms), 0, 600000, false },
    { "engine.stop_timeout_s", K_INT, OFF(engine_stop_timeout_s), 0, 3600, false },
    { "engine.warmup", K_INT, OFF(engine_warmup), -1, 2048, false },
    { "log_level", K_LOG, 0, 0, 0, false },
    { "limits.max_loras", K_INT, OFF(max_loras), 0, SDW_CONFIG_MAX_LORAS_PER_JOB, false },
    { "lora_cache_bytes", K_SIZE, OFF(lora_cache_bytes), 1 << 20, 1LL << 40, false },
};
#define N_KEYS (sizeof keys / sizeof keys[0])

void sdw_config_defaults(sdw_config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->listen, "unix:/run/sdworker/fcgi.sock");
    c->listen_unix = true;
    strcpy(c->listen_path, "/run/sdworker/fcgi.sock");
    c->pm = SDW_PM_DYNAMIC;
    c->pm_max_children = 16;
    c->pm_start_servers = 4;
    c->pm_min_spare_servers = 2;
    c->pm_max_spare_servers = 6;
    c->pm_max_requests = 1000;
    c->pm_max_streams_per_child = 128;
    strcpy(c->ring_name, "/sdworker");
    c->ring_slots = 64;
    c->ring_max_queued = 32;
    c->ring_input_bytes = 0;
    c->ring_log_bytes = 64 * KIB;
    c->ring_image_bytes = 0;
    c->result_ttl = 600;
    c->preview_interval = 5;
    c->keepalive_interval = 15;
    c->max_body_bytes = 32 * MIB;
    c->max_prompt_bytes = 4096;
    c->max_image_bytes = 4 * MIB;
    c->max_pixels = 1024 * 1024;
    c->device = (sdw_device){SDW_DEVICE_CPU, 0};
    c->threads = 0;
    c->engine_restart_delay_ms = 1000;
    c->engine_stop_timeout_s = 20;
    c->engine_warmup = -1;
    c->log_level = SDW_LOG_INFO;
    c->max_loras = 4;
    c->lora_cache_bytes = 1024 * MIB;
}

/* "where" is "file:line" or "command line"; every message names the key. */
static int bad(sdw_error *e, const char *where, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad(sdw_error *e, const char *where, const char *key, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (key)
        return sdw_fail(e, SDW_EINVAL, "%s: %s: %s", where, key, msg);
    return sdw_fail(e, SDW_EINVAL, "%s: %s", where, msg);
}

static int parse_ll(const char *v, long long *out)
{
    if (!*v || isspace((unsigned char)*v))
        return -1;
    errno = 0;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return -1;
    *out = x;
    return 0;
}

/* Integers with an optional binary suffix: 512k, 32M, 32MiB, 1G. */
static int parse_size(const char *v, long long *out)
{
    if (!isdigit((unsigned char)*v))
        return -1;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno)
        return -1;
    unsigned long long mul = 1;
    if (*end) {
        char u = (char)tolower((unsigned char)*end);
        mul = u == 'k' ? KIB : u == 'm' ? MIB : u == 'g' ? GIB : 0;
        if (!mul)
            return -1;
        end++;
        if (strcmp(end, "") && strcmp(end, "iB") && strcmp(end, "B"))
            return -1;
    }
    if (x > (unsigned long long)LLONG_MAX / mul)
        return -1;
    *out = (long long)(x * mul);
    return 0;
}

static int set_listen(sdw_config *c, const char *v, const char *where, const char *key, sdw_error *e)
{
    if (strlen(v) >= sizeof c->listen)
        return bad(e, where, key, "value too long");
    if (!strncmp(v, "unix:", 5)) {
        const char *p = v + 5;
        if (p[0] != '/')
            return bad(e, where, key, "'%s': a Unix socket path must be absolute (unix:/path)", v);
        if (strlen(p) >= sizeof c->listen_path)
            return bad(e, where, key, "'%s': socket path longer than %zu bytes", v,
                       sizeof c->listen_path - 1);
        strcpy(c->listen, v);
        c->listen_unix = true;
        strcpy(c->listen_path, p);
        c->listen_host[0] = '\0';
        c->listen_port = 0;
        return 0;
    }
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return bad(e, where, key, "'%s': expected unix:/path or ADDRESS:PORT", v);
    size_t hl = (size_t)(colon - v);
    char host[64];
    if (hl >= sizeof host)
        return bad(e, where, key, "'%s': address too long", v);
    memcpy(host, v, hl);
    host[hl] = '\0';
    struct in_addr a;
    if (strcmp(host, "localhost") && inet_pton(AF_INET, host, &a) != 1)
        return bad(e, where, key, "'%s': '%s' is not an IPv4 address or localhost", v, host);
    long long port;
    if (parse_ll(colon + 1, &port) || port < 1 || port > 65535)
        return bad(e, where, key, "'%s': port must be 1-65535", v);
    strcpy(c->listen, v);
    c->listen_unix = false;
    c->listen_path[0] = '\0';
    strcpy(c->listen_host, host);
    c->listen_port = (int)port;
    return 0;
}

static int set_ring_name(sdw_config *c, const char *v, const char *where, const char *key, sdw_error *e)
{
    size_t n = strlen(v);
    if (v[0] != '/' || n < 2 || n > 201)
        return bad(e, where, key, "'%s': expected '/' followed by 1-200 of A-Z a-z 0-9 . _ -", v);
    for (size_t i = 1; i < n; i++)
        if (!isalnum((unsigned char)v[i]) && !strchr("._-", v[i]))
            return bad(e, where, key, "'%s': expected '/' followed by 1-200 of A-Z a-z 0-9 . _ -", v);
    memcpy(c->ring_name, v, n + 1);
    return 0;
}

static int set_device(sdw_config *c, const char *v, const char *where, const char *key, sdw_error *e)
{
    sdw_error de;
    if (sdw_device_parse(v, &c->device, &de))
        return bad(e, where, key, "%s", de.msg);
    return 0;
}

/* Model and API key names. */
static bool entry_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (!len || len >= SDW_CONFIG_NAME_MAX)
        return false;
    for (const char *p = n; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
            return false;
    return true;
}

/* model.<name>.<option>: the request defaults of sdw_config_model. */
enum model_opt { OPT_STEPS, OPT_GUIDANCE, OPT_SIZE, OPT_SAMPLER, OPT_PREDICTION, N_MODEL_OPTS };
static const char *const model_opt_names[N_MODEL_OPTS] = {"steps", "guidance", "size", "sampler", "prediction"};

/* The option that key's last dot-separated part names, or -1; *name_len is
 * the length of the model name before it. */
static int model_option_of(const char *key, size_t *name_len)
{
    const char *dot = strrchr(key, '.');
    if (!dot)
        return -1;
    for (int i = 0; i < N_MODEL_OPTS; i++)
        if (!strcmp(dot + 1, model_opt_names[i])) {
            *name_len = (size_t)(dot - key);
            return i;
        }
    return -1;
}

static int find_model(const sdw_config *c, const char *name, size_t n)
{
    for (int i = 0; i < c->n_models; i++)
        if (strlen(c->models[i].name) == n && !memcmp(c->models[i].name, name, n))
            return i;
    return -1;
}

static int parse_side(const char *s, char **end)
{
    errno = 0;
    long v = strtol(s, end, 10);
    if (errno || *end == s || v < 64 || v > 2048 || v % 8)
        return -1;
    return (int)v;
}

/* Returns the option's index, or a negative status. */
static int set_model_option(sdw_config *c, const char *rest, const char *v, const char *where,
                            const char *key, sdw_error *e)
{
    size_t n;
    int opt = model_option_of(rest, &n);
    int i = find_model(c, rest, n);
    if (i < 0)
        return bad(e, where, key, "no model \"%.*s\" defined before this line (model.%.*s = <path>)",
                   (int)n, rest, (int)n, rest);
    sdw_config_model *m = &c->models[i];
    char *end;
    switch ((enum model_opt)opt) {
    case OPT_STEPS: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < 1 || x > 150)
            return bad(e, where, key, "expected an integer in [1,150]");
        m->steps = (int)x;
        break;
    }
    case OPT_GUIDANCE: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !(x >= 0 && x <= 30))
            return bad(e, where, key, "expected a number in [0,30]");
        m->guidance = x;
        break;
    }
    case OPT_SIZE: {
        int w = parse_side(v, &end), h = -1;
        if (w > 0 && *end == 'x')
            h = parse_side(end + 1, &end);
        if (w < 0 || h < 0 || *end)
            return bad(e, where, key, "expected WIDTHxHEIGHT, each a multiple of 8 in [64,2048]");
        m->width = w;
        m->height = h;
        break;
    }
    case OPT_SAMPLER: {
        int x = sdw_sampler_parse(v);
        if (x < 0)
            return bad(e, where, key, "expected one of %s", sdw_sampler_names);
        m->sampler = x;
        break;
    }
    case OPT_PREDICTION:
        if (!strcmp(v, "epsilon"))
            strcpy(m->prediction, "epsilon");
        else if (!strcmp(v, "v") || !strcmp(v, "v_prediction"))
            strcpy(m->prediction, "v_prediction");
        else
            return bad(e, where, key, "expected epsilon or v_prediction (or v)");
        break;
    case N_MODEL_OPTS:
        break;
    }
    return i * N_MODEL_OPTS + opt;
}

/* Returns the index of the model set, or a negative status. */
static int set_model(sdw_config *c, const char *name, const char *v, const char *basedir,
                     const char *where, const char *key, sdw_error *e)
{
    if (!entry_name_ok(name))
        return bad(e, where, key, "model names are 1-%d of A-Z a-z 0-9 . _ -", SDW_CONFIG_NAME_MAX - 1);
    if (!*v)
        return bad(e, where, key, "empty model path");
    char path[SDW_CONFIG_PATH_MAX];
    int n;
    if (v[0] != '/' && basedir && *basedir)
        n = snprintf(path, sizeof path, "%s/%s", basedir, v);
    else
        n = snprintf(path, sizeof path, "%s", v);
    if (n < 0 || (size_t)n >= sizeof path)
        return bad(e, where, key, "model path too long");
    int i;
    for (i = 0; i < c->n_models; i++)
        if (!strcmp(c->models[i].name, name))
            break;
    if (i == c->n_models) {
        if (c->n_models == SDW_CONFIG_MAX_MODELS)
            return bad(e, where, key, "more than %d models", SDW_CONFIG_MAX_MODELS);
        c->n_models++;
        memset(&c->models[i], 0, sizeof c->models[i]);
        strcpy(c->models[i].name, name);
        c->models[i].guidance = -1;
        c->models[i].sampler = -1;
    }
    strcpy(c->models[i].path, path);
    return i;
}

/* lora.<name> = <file> and lora_dir = <folder>: relative paths are the
 * configuration file's folder's. */
static int config_path(char *out, size_t cap, const char *v, const char *basedir)
{
    int n = v[0] != '/' && basedir && *basedir ? snprintf(out, cap, "%s/%s", basedir, v) : snprintf(out, cap, "%s", v);
    return n < 0 || (size_t)n >= cap;
}

static int set_lora(sdw_config *c, const char *name, const char *v, const char *basedir, const char *where,
                    const char *key, sdw_error *e)
{
    if (!entry_name_ok(name) || name[0] == '.')
        return bad(e, where, key, "LoRA names are 1-%d of A-Z a-z 0-9 . _ -, not starting with '.'",
                   SDW_CONFIG_NAME_MAX - 1);
    int i;
    for (i = 0; i < c->n_loras; i++)
        if (!strcmp(c->loras[i].name, name))
            break;
    if (i == SDW_CONFIG_MAX_LORAS)
        return bad(e, where, key, "more than %d LoRAs", SDW_CONFIG_MAX_LORAS);
    char path[SDW_CONFIG_PATH_MAX];
    if (config_path(path, sizeof path, v, basedir))
        return bad(e, where, key, "LoRA path too long");
    if (i == c->n_loras)
        c->n_loras++;
    strcpy(c->loras[i].name, name);
    strcpy(c->loras[i].path, path);
    return i;
}

static int hex_digit(char ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
         : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* "max_queued=N" style option: 1 when word is name=..., with *out set. */
static int key_option(const char *word, const char *name, long long max, long long *out,
                      const char *where, const char *key, sdw_error *e)
{
    size_t n = strlen(name);
    if (strncmp(word, name, n) || word[n] != '=')
        return 0;
    if (parse_ll(word + n + 1, out) || *out < 0 || *out > max)
        return bad(e, where, key, "'%s': %s must be 0-%lld (0 = no limit)", word, name, max);
    return 1;
}

/* Returns the index of the API key set, or a negative status. The value is
 * parsed whole before anything changes, so a rejected line changes nothing. */
static int set_api_key(sdw_config *c, const char *name, const char *v, const char *where,
                       const char *key, sdw_error *e)
{
    if (!entry_name_ok(name))
        return bad(e, where, key, "API key names are 1-%d of A-Z a-z 0-9 . _ -", SDW_CONFIG_NAME_MAX - 1);
    sdw_config_key k;
    memset(&k, 0, sizeof k); /* padding too: configurations are compared with memcmp */
    static const char prefix[] = "sha256:";
    size_t hl = strcspn(v, " \t");
    if (strncmp(v, prefix, sizeof prefix - 1) || hl != sizeof prefix - 1 + 2 * SDW_CONFIG_KEY_HASH_LEN)
        return bad(e, where, key, "expected sha256:<%d hex digits> (the key's hash, from "
                   "sdworker-fcgi --hash-key), then options", 2 * SDW_CONFIG_KEY_HASH_LEN);
    for (int i = 0; i < SDW_CONFIG_KEY_HASH_LEN; i++) {
        int hi = hex_digit(v[sizeof prefix - 1 + 2 * i]), lo = hex_digit(v[sizeof prefix + 2 * i]);
        if (hi < 0 || lo < 0)
            return bad(e, where, key, "the sha256 hash must be %d hex digits", 2 * SDW_CONFIG_KEY_HASH_LEN);
        k.sha256[i] = (unsigned char)(hi << 4 | lo);
    }
    bool seen_queued = false, seen_minute = false;
    const char *p = v + hl;
    for (;;) {
        p += strspn(p, " \t");
        if (!*p)
            break;
        char word[64];
        size_t wl = strcspn(p, " \t");
        if (wl >= sizeof word)
            return bad(e, where, key, "'%.20s...': options are admin, max_queued=N and per_minute=N", p);
        memcpy(word, p, wl);
        word[wl] = '\0';
        p += wl;
        long long x;
        int rc;
        if (!strcmp(word, "admin")) {
            if (k.admin)
                return bad(e, where, key, "'admin' given twice");
            k.admin = true;
        } else if ((rc = key_option(word, "max_queued", 65536, &x, where, key, e)) != 0) {
            if (rc < 0)
                return rc;
            if (seen_queued)
                return bad(e, where, key, "max_queued given twice");
            seen_queued = true;
            k.max_queued = (int)x;
        } else if ((rc = key_option(word, "per_minute", 1000000, &x, where, key, e)) != 0) {
            if (rc < 0)
                return rc;
            if (seen_minute)
                return bad(e, where, key, "per_minute given twice");
            seen_minute = true;
            k.per_minute = (int)x;
        } else {
            return bad(e, where, key, "'%s': options are admin, max_queued=N and per_minute=N", word);
        }
    }
    k.owner = (uint32_t)k.sha256[0] << 24 | (uint32_t)k.sha256[1] << 16 | (uint32_t)k.sha256[2] << 8 |
              k.sha256[3];
    if (k.owner == 0)
        k.owner = 1;
    int i;
    for (i = 0; i < c->n_keys; i++)
        if (!strcmp(c->keys[i].name, name))
            break;
    if (i == c->n_keys) {
        if (c->n_keys == SDW_CONFIG_MAX_KEYS)
            return bad(e, where, key, "more than %d API keys", SDW_CONFIG_MAX_KEYS);
        c->n_keys++;
    }
    strcpy(k.name, name);
    c->keys[i] = k;
    return i;
}

static int set_key(sdw_config *c, const struct key *k, const char *v, const char *where, sdw_error *e)
{
    long long x;
    switch (k->type) {
    case K_LISTEN:
        return set_listen(c, v, where, k->name, e);
    case K_RING_NAME:
        return set_ring_name(c, v, where, k->name, e);
    case K_DEVICE:
        return set_device(c, v, where, k->name, e);
    case K_PM:
        if (!strcmp(v, "static"))
            c->pm = SDW_PM_STATIC;
        else if (!strcmp(v, "dynamic"))
            c->pm = SDW_PM_DYNAMIC;
        else
            return bad(e, where, k->name, "'%s': expected static or dynamic", v);
        return 0;
    case K_LOG:
        for (int i = 0; i < SDW_LOG_LEVELS; i++)
            if (!strcmp(v, sdw_log_level_name((sdw_log_level)i))) {
                c->log_level = (sdw_log_level)i;
                return 0;
            }
        return bad(e, where, k->name, "'%s': expected error, warn, info or debug", v);
    case K_INT:
        if (parse_ll(v, &x))
            return bad(e, where, k->name, "'%s': not an integer", v);
        if (x < k->min || x > k->max)
            return bad(e, where, k->name, "%lld is out of range %lld-%lld", x, k->min, k->max);
        *(int *)((char *)c + k->off) = (int)x;
        return 0;
    case K_SIZE:
        if (parse_size(v, &x))
            return bad(e, where, k->name, "'%s': expected a byte count (suffixes k, M, G)", v);
        if ((x < k->min && !(x == 0 && k->zero_ok)) || x > k->max)
            return bad(e, where, k->name, "%lld is out of range %lld-%lld%s", x, k->min, k->max,
                       k->zero_ok ? " (or 0 = derived from the limits)" : "");
        *(size_t *)((char *)c + k->off) = (size_t)x;
        return 0;
    }
    return bad(e, where, k->name, "unhandled key type");
}

static const struct key *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].name, name))
            return &keys[i];
    return NULL;
}

/* Splits one line into key and value (both NUL-terminated in place). Returns
 * 1 for an assignment, 0 for a blank or comment line, or an error. */
static int split_line(char *s, char **key, char **val, const char *where, sdw_error *e)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s || *s == '#')
        return 0;
    char *k = s;
    while (*s && *s != '=' && *s != ' ' && *s != '\t')
        s++;
    char *kend = s;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s != '=' || kend == k)
        return bad(e, where, NULL, "expected 'key = value'");
    *kend = '\0';
    s++;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '"') {
        char *out = ++s;
        char *v = out;
        for (;;) {
            if (!*s)
                return bad(e, where, k, "unterminated quoted value");
            if (*s == '"')
                break;
            if (*s == '\\') {
                if (s[1] != '"' && s[1] != '\\')
                    return bad(e, where, k, "only \\\" and \\\\ may be escaped in a quoted value");
                s++;
            }
            *out++ = *s++;
        }
        s++;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s && *s != '#')
            return bad(e, where, k, "unexpected text after the closing quote");
        *out = '\0';
        *key = k;
        *val = v;
        return 1;
    }
    char *v = s;
    char *end = s;
    for (; *s; s++) {
        if (*s == '#' && (s == v || s[-1] == ' ' || s[-1] == '\t'))
            break;
        if (*s != ' ' && *s != '\t')
            end = s + 1;
    }
    *end = '\0';
    if (!*v)
        return bad(e, where, k, "empty value (write \"\" for an empty string)");
    *key = k;
    *val = v;
    return 1;
}

static int assign(sdw_config *c, const char *key, const char *val, const char *basedir,
                  const char *where, sdw_error *e)
{
    size_t n;
    if (!strncmp(key, "model.", 6) && model_option_of(key + 6, &n) >= 0)
        return set_model_option(c, key + 6, val, where, key, e);
    if (!strncmp(key, "model.", 6))
        return set_model(c, key + 6, val, basedir, where, key, e);
    if (!strncmp(key, "api_key.", 8))
        return set_api_key(c, key + 8, val, where, key, e);
    if (!strncmp(key, "lora.", 5))
        return set_lora(c, key + 5, val, basedir, where, key, e);
    if (!strcmp(key, "lora_dir")) {
        if (config_path(c->lora_dir, sizeof c->lora_dir, val, basedir))
            return bad(e, where, key, "path too long");
        return 0;
    }
    const struct key *k = find_key(key);
    if (!k)
        return bad(e, where, key, "unknown key");
    int rc = set_key(c, k, val, where, e);
    return rc < 0 ? rc : (int)(k - keys);
}

int sdw_config_parse(sdw_config *c, const char *text, size_t len, const char *origin,
                     const char *basedir, sdw_error *e)
{
    if (memchr(text, '\0', len))
        return sdw_fail(e, SDW_EFORMAT, "%s: contains a NUL byte", origin);
    char *buf = malloc(len + 1);
    if (!buf)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", origin);
    memcpy(buf, text, len);
    buf[len] = '\0';

    /* The line where each key (and each model, by index) was set in this
     * text, to report duplicates with both line numbers. */
    int key_line[N_KEYS] = { 0 };
    int model_line[SDW_CONFIG_MAX_MODELS] = { 0 };
    int option_line[SDW_CONFIG_MAX_MODELS * N_MODEL_OPTS] = { 0 };
    int api_key_line[SDW_CONFIG_MAX_KEYS] = { 0 };
    int lora_line[SDW_CONFIG_MAX_LORAS] = { 0 }, lora_dir_line = 0;
    int rc = 0, lineno = 0;
    char *line = buf;
    while (line && rc == 0) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[ll - 1] = '\0';
        lineno++;
        char where[300];
        snprintf(where, sizeof where, "%s:%d", origin, lineno);
        char *key, *val;
        int n = split_line(line, &key, &val, where, e);
        if (n < 0) {
            rc = n;
        } else if (n > 0) {
            /* Checked before assigning so that a rejected line changes nothing. */
            int *seen = NULL;
            size_t name_len;
            int opt = !strncmp(key, "model.", 6) ? model_option_of(key + 6, &name_len) : -1;
            if (opt >= 0) {
                int i = find_model(c, key + 6, name_len);
                if (i >= 0)
                    seen = &option_line[i * N_MODEL_OPTS + opt];
            } else if (!strncmp(key, "model.", 6)) {
                for (int i = 0; i < c->n_models; i++)
                    if (!strcmp(c->models[i].name, key + 6))
                        seen = &model_line[i];
            } else if (!strncmp(key, "api_key.", 8)) {
                for (int i = 0; i < c->n_keys; i++)
                    if (!strcmp(c->keys[i].name, key + 8))
                        seen = &api_key_line[i];
            } else if (!strncmp(key, "lora.", 5)) {
                for (int i = 0; i < c->n_loras; i++)
                    if (!strcmp(c->loras[i].name, key + 5))
                        seen = &lora_line[i];
            } else if (!strcmp(key, "lora_dir")) {
                seen = &lora_dir_line;
            } else {
                const struct key *k = find_key(key);
                if (k)
                    seen = &key_line[k - keys];
            }
            if (seen && *seen) {
                rc = bad(e, where, key, "duplicate key (first set at line %d)", *seen);
            } else {
                int idx = assign(c, key, val, basedir, where, e);
                if (idx < 0)
                    rc = idx;
                else if (opt >= 0)
                    option_line[idx] = lineno;
                else if (!strncmp(key, "model.", 6))
                    model_line[idx] = lineno;
                else if (!strncmp(key, "api_key.", 8))
                    api_key_line[idx] = lineno;
                else if (!strncmp(key, "lora.", 5))
                    lora_line[idx] = lineno;
                else if (!strcmp(key, "lora_dir"))
                    lora_dir_line = lineno;
                else
                    key_line[idx] = lineno;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    return rc;
}

int sdw_config_load(sdw_config *c, const char *path, sdw_error *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "%s: %s", path, strerror(errno));
    char *text = malloc(FILE_MAX + 1);
    if (!text) {
        fclose(f);
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    }
    size_t len = fread(text, 1, FILE_MAX + 1, f);
    int err = ferror(f);
    fclose(f);
    int rc;
    if (err) {
        rc = sdw_fail(e, SDW_EIO, "%s: read error", path);
    } else if (len > FILE_MAX) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: larger than %zu bytes", path, FILE_MAX);
    } else {
        char dir[SDW_CONFIG_PATH_MAX];
        const char *slash = strrchr(path, '/');
        if (!slash)
            strcpy(dir, ".");
        else if (slash == path)
            strcpy(dir, "/");
        else
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        rc = sdw_config_parse(c, text, len, path, dir, e);
    }
    free(text);
    return rc;
}

int sdw_config_set(sdw_config *c, const char *assignment, sdw_error *e)
{
    size_t n = strlen(assignment);
    if (strchr(assignment, '\n'))
        return bad(e, "command line", NULL, "'%s': one key=value per override", assignment);
    char *buf = malloc(n + 1);
    if (!buf)
        return sdw_fail(e, SDW_ENOMEM, "command line: out of memory");
    memcpy(buf, assignment, n + 1);
    char *key, *val;
    int rc = split_line(buf, &key, &val, "command line", e);
    if (rc == 0)
        rc = bad(e, "command line", NULL, "'%s': expected key=value", assignment);
    else if (rc > 0)
        rc = assign(c, key, val, NULL, "command line", e);
    free(buf);
    return rc < 0 ? rc : 0;
}

int sdw_config_validate(const sdw_config *c, sdw_error *e)
{
    if (c->pm == SDW_PM_DYNAMIC) {
        if (c->pm_max_spare_servers > c->pm_max_children)
            return sdw_fail(e, SDW_EINVAL,
                            "pm.max_spare_servers (%d) must not exceed pm.max_children (%d)",
                            c->pm_max_spare_servers, c->pm_max_children);
        if (c->pm_min_spare_servers > c->pm_max_spare_servers)
            return sdw_fail(e, SDW_EINVAL,
                            "pm.min_spare_servers (%d) must not exceed pm.max_spare_servers (%d)",
                            c->pm_min_spare_servers, c->pm_max_spare_servers);
        if (c->pm_start_servers < c->pm_min_spare_servers ||
            c->pm_start_servers > c->pm_max_spare_servers)
            return sdw_fail(e, SDW_EINVAL,
                            "pm.start_servers (%d) must lie between pm.min_spare_servers (%d) "
                            "and pm.max_spare_servers (%d)",
                            c->pm_start_servers, c->pm_min_spare_servers, c->pm_max_spare_servers);
    }
    if (c->ring_max_queued > c->ring_slots)
        return sdw_fail(e, SDW_EINVAL, "ring.max_queued (%d) must not exceed ring.slots (%d)",
                        c->ring_max_queued, c->ring_slots);
    if (c->n_models == 0)
        return sdw_fail(e, SDW_EINVAL, "no model configured (add a line model.<name> = <path>)");
    for (int i = 0; i < c->n_keys; i++)
        for (int j = i + 1; j < c->n_keys; j++) {
            const sdw_config_key *a = &c->keys[i], *b = &c->keys[j];
            if (!memcmp(a->sha256, b->sha256, sizeof a->sha256))
                return sdw_fail(e, SDW_EINVAL, "api_key.%s and api_key.%s are the same key", a->name, b->name);
            /* Jobs are told apart by owner: two keys sharing one would see
             * each other's jobs. */
            if (a->owner == b->owner)
                return sdw_fail(e, SDW_EINVAL,
                                "api_key.%s and api_key.%s: their hashes begin with the same 32 bits; "
                                "make a new key for one of them", a->name, b->name);
        }
    return 0;
}

const sdw_config_model *sdw_config_model_find(const sdw_config *c, const char *name)
{
    if (!name || !*name)
        return c->n_models ? &c->models[0] : NULL;
    for (int i = 0; i < c->n_models; i++)
        if (!strcmp(c->models[i].name, name))
            return &c->models[i];
    return NULL;
}

void sdw_config_ring_sizes(const sdw_config *c, size_t *input_bytes, size_t *log_bytes,
                           size_t *image_bytes)
{
    /* A request holds at most two decoded image files, two prompts and a
     * few hundred bytes of parameters; an image event is a PNG of at most
     * ~3 bytes per pixel, base64-encoded (x4/3) inside a small JSON object. */
    if (input_bytes)
        *input_bytes = c->ring_input_bytes ? c->ring_input_bytes
                                           : 2 * c->max_image_bytes + 2 * c->max_prompt_bytes + 64 * KIB;
    if (log_bytes)
        *log_bytes = c->ring_log_bytes;
    if (image_bytes)
        *image_bytes = c->ring_image_bytes ? c->ring_image_bytes : 4 * c->max_pixels + 64 * KIB;
}

static void put_str(FILE *f, const char *key, const char *v)
{
    bool quote = !*v || strchr(v, '#') || strchr(v, '"') || strchr(v, '\\') ||
                 isspace((unsigned char)v[0]) || isspace((unsigned char)v[strlen(v) - 1]);
    if (!quote) {
        fprintf(f, "%s = %s\n", key, v);
        return;
    }
    fprintf(f, "%s = \"", key);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', f);
        fputc(*p, f);
    }
    fputs("\"\n", f);
}

int sdw_config_dump(const sdw_config *c, FILE *f)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key *k = &keys[i];
        switch (k->type) {
        case K_LISTEN:
            put_str(f, k->name, c->listen);
            break;
        case K_PM:
            fprintf(f, "%s = %s\n", k->name, c->pm == SDW_PM_STATIC ? "static" : "dynamic");
            break;
        case K_RING_NAME:
            put_str(f, k->name, c->ring_name);
            break;
        case K_DEVICE: {
            char dev[16];
            fprintf(f, "%s = %s\n", k->name, sdw_device_str(c->device, dev, sizeof dev));
            break;
        }
        case K_LOG:
            fprintf(f, "%s = %s\n", k->name, sdw_log_level_name(c->log_level));
            break;
        case K_INT:
            fprintf(f, "%s = %d\n", k->name, *(const int *)((const char *)c + k->off));
            break;
        case K_SIZE: {
            size_t v = *(const size_t *)((const char *)c + k->off);
            fprintf(f, "%s = %zu\n", k->name, v);
            if (v == 0 && k->zero_ok) {
                size_t in, img;
                sdw_config_ring_sizes(c, &in, NULL, &img);
                fprintf(f, "# (derived: %zu)\n", k->off == OFF(ring_input_bytes) ? in : img);
            }
            break;
        }
        }
    }
    for (int i = 0; i < c->n_models; i++) {
        char key[SDW_CONFIG_NAME_MAX + 8];
        const sdw_config_model *m = &c->models[i];
        snprintf(key, sizeof key, "model.%s", m->name);
        put_str(f, key, m->path);
        if (m->steps)
            fprintf(f, "%s.steps = %d\n", key, m->steps);
        if (m->guidance >= 0)
            fprintf(f, "%s.guidance = %.17g\n", key, m->guidance);
        if (m->width)
            fprintf(f, "%s.size = %dx%d\n", key, m->width, m->height);
        if (m->sampler >= 0)
            fprintf(f, "%s.sampler = %s\n", key, sdw_sampler_name(m->sampler));
        if (m->prediction[0])
            fprintf(f, "%s.prediction = %s\n", key, m->prediction);
    }
    if (c->lora_dir[0])
        put_str(f, "lora_dir", c->lora_dir);
    for (int i = 0; i < c->n_loras; i++) {
        char key[SDW_CONFIG_NAME_MAX + 8];
        snprintf(key, sizeof key, "lora.%s", c->loras[i].name);
        put_str(f, key, c->loras[i].path);
    }
    for (int i = 0; i < c->n_keys; i++) {
        const sdw_config_key *k = &c->keys[i];
        fprintf(f, "api_key.%s = sha256:", k->name);
        for (int j = 0; j < SDW_CONFIG_KEY_HASH_LEN; j++)
            fprintf(f, "%02x", k->sha256[j]);
        if (k->admin)
            fputs(" admin", f);
        if (k->max_queued)
            fprintf(f, " max_queued=%d", k->max_queued);
        if (k->per_minute)
            fprintf(f, " per_minute=%d", k->per_minute);
        fputc('\n', f);
    }
    return ferror(f) ? SDW_EIO : 0;
}
