/* libFuzzer target for the API keys: any bytes as an Authorization header
 * value (sdw_auth_identify against two configured keys), as a key to hash
 * (sdw_auth_hash_text: a key it accepts must then be found when sent as a
 * Bearer token), and as the value of an api_key.<name> line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "fuzz.h"
#include "pool/auth.h"

static sdw_config g_cfg;

static void add_key(sdw_config *c, const char *name, const char *key, const char *options)
{
    char hash[SDW_AUTH_HASH_TEXT_LEN], line[256];
    sdw_error e = { 0 };
    if (sdw_auth_hash_text(key, strlen(key), hash, &e) < 0)
        abort();
    snprintf(line, sizeof line, "api_key.%s = %s %s", name, hash, options);
    if (sdw_config_set(c, line, &e) < 0) {
        fprintf(stderr, "%s: %s\n", line, e.msg);
        abort();
    }
}

int fuzz_auth_one(const uint8_t *data, size_t size)
{
    if (!g_cfg.n_keys) {
        sdw_config_defaults(&g_cfg);
        add_key(&g_cfg, "ops", "0123456789abcdef0123", "admin");
        add_key(&g_cfg, "app", "Zm9vYmFyYmF6cXV4cXV1eA==", "max_queued=2 per_minute=10");
    }
    char *text = fuzz_strndup(data, size);
    if (!text)
        abort();
    sdw_auth_caller who;
    sdw_error e = { 0 };
    int rc = sdw_auth_identify(&g_cfg, text, &who, &e);
    if (rc == 0 ? !who.key || who.owner != who.key->owner : who.key != NULL)
        abort();

    char hash[SDW_AUTH_HASH_TEXT_LEN];
    if (sdw_auth_hash_text((const char *)data, size, hash, &e) == 0) {
        static sdw_config c;
        c = g_cfg;
        char line[128], *header = malloc(size + 16);
        snprintf(line, sizeof line, "api_key.fuzz = %s admin", hash);
        if (!header || sdw_config_set(&c, line, &e) < 0)
            abort();
        snprintf(header, size + 16, "Bearer %s", text);
        if (sdw_auth_identify(&c, header, &who, &e) < 0 || !who.admin)
            abort();
        free(header);
    }

    static sdw_config v;
    sdw_config_defaults(&v);
    char *line = malloc(size + 16);
    if (!line)
        abort();
    snprintf(line, size + 16, "api_key.v = %s", text);
    sdw_config_set(&v, line, &e);
    free(line);
    free(text);
    return rc;
}

SDW_FUZZ_ENTRY(fuzz_auth_one)
