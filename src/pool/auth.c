#include "pool/auth.h"

#include <errno.h>
#include <nettle/memops.h>
#include <nettle/sha2.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#define MIN_KEY_LEN 16
/* Room for every configured key and as many again, so that the keys of a
 * configuration replaced by a reload can keep their buckets a while. */
#define RATE_ENTRIES (2 * SDW_CONFIG_MAX_KEYS)
#define MINUTE_US INT64_C(60000000)

static void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE])
{
    struct sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, len, data);
    sha256_digest(&c, SHA256_DIGEST_SIZE, out);
}

int sdw_auth_identify(const sdw_config *cfg, const char *authorization, sdw_auth_caller *who, sdw_error *e)
{
    memset(who, 0, sizeof *who);
    static const char scheme[] = "Bearer";
    const char *p = authorization ? authorization : "";
    p += strspn(p, " \t");
    if (strncasecmp(p, scheme, sizeof scheme - 1) || (p[sizeof scheme - 1] != ' ' && p[sizeof scheme - 1] != '\t'))
        return sdw_fail(e, SDW_ENOTFOUND, "this API needs a key: send Authorization: Bearer <key>");
    p += sizeof scheme - 1;
    p += strspn(p, " \t");
    size_t len = strlen(p);
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    uint8_t digest[SHA256_DIGEST_SIZE];
    sha256(p, len, digest);
    /* Every key is compared, whatever matched before. */
    const sdw_config_key *found = NULL;
    for (int i = 0; i < cfg->n_keys; i++) {
        int same = memeql_sec(digest, cfg->keys[i].sha256, sizeof digest);
        found = same ? &cfg->keys[i] : found;
    }
    if (!found)
        return sdw_fail(e, SDW_EINVAL, "the API key is not valid");
    who->key = found;
    who->owner = found->owner;
    who->admin = found->admin;
    return 0;
}

static bool b64token(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
                       strchr("-._~+/", s[i])))
        i++;
    if (i == 0)
        return false;
    while (i < len && s[i] == '=')
        i++;
    return i == len;
}

int sdw_auth_hash_text(const char *key, size_t len, char out[SDW_AUTH_HASH_TEXT_LEN], sdw_error *e)
{
    if (memchr(key, '\0', len) || !b64token(key, len))
        return sdw_fail(e, SDW_EINVAL, "a key may hold only letters, digits and - . _ ~ + / "
                        "(then '=' padding), so that it can be sent as a Bearer token");
    if (len < MIN_KEY_LEN)
        return sdw_fail(e, SDW_EINVAL, "a key of %zu characters is too easy to guess: use at least %d "
                        "(e.g. head -c 24 /dev/urandom | base64)", len, MIN_KEY_LEN);
    uint8_t digest[SHA256_DIGEST_SIZE];
    sha256(key, len, digest);
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "sha256:", 7);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) {
        out[7 + 2 * i] = hex[digest[i] >> 4];
        out[8 + 2 * i] = hex[digest[i] & 15];
    }
    out[SDW_AUTH_HASH_TEXT_LEN - 1] = '\0';
    return 0;
}

/* ---- rates ---- */

struct rate_entry {
    uint32_t owner;                 /* 0 = unused */
    int64_t tat_us;                 /* GCRA's theoretical arrival time */
};

struct sdw_auth_rates {
    pthread_mutex_t lock;           /* process-shared, robust */
    struct rate_entry entry[RATE_ENTRIES];
};

int sdw_auth_rates_create(sdw_auth_rates **out, sdw_error *e)
{
    *out = NULL;
    sdw_auth_rates *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return sdw_fail(e, SDW_ENOMEM, "API key rate table: %s", strerror(errno));
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    /* A child killed while it holds the lock must not stop every submit. */
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&r->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc) {
        munmap(r, sizeof *r);
        return sdw_fail(e, SDW_EIO, "API key rate table mutex: %s", strerror(rc));
    }
    *out = r;
    return 0;
}

void sdw_auth_rates_destroy(sdw_auth_rates *r)
{
    if (r)
        munmap(r, sizeof *r);
}

int sdw_auth_rate_take(sdw_auth_rates *r, uint32_t owner, int per_minute, int64_t now_ms, int *retry_after_s,
                       sdw_error *e)
{
    *retry_after_s = 0;
    int rc = pthread_mutex_lock(&r->lock);
    if (rc == EOWNERDEAD) {
        /* Each entry is written in whole-word stores: nothing to repair. */
        pthread_mutex_consistent(&r->lock);
        rc = 0;
    }
    if (rc)
        return sdw_fail(e, SDW_EIO, "API key rate table lock: %s", strerror(rc));
    int64_t now = now_ms * 1000;
    struct rate_entry *b = NULL, *spare = NULL;
    for (int i = 0; i < RATE_ENTRIES && !b; i++) {
        struct rate_entry *x = &r->entry[i];
        if (x->owner == owner)
            b = x;
        /* A bucket that has refilled completely holds no information, so
         * its entry can go to another key; the fullest one does if every
         * entry is in use. */
        else if (!spare || x->owner == 0 || (spare->owner != 0 && x->tat_us < spare->tat_us))
            spare = x;
    }
    if (!b) {
        b = spare;
        b->owner = owner;
        b->tat_us = now;
    }
    int64_t interval = MINUTE_US / per_minute;
    int64_t tolerance = interval * (per_minute - 1);
    int64_t tat = b->tat_us > now ? b->tat_us : now;
    int out = 0;
    if (tat - now > tolerance) {
        int64_t wait_us = tat - tolerance - now;
        *retry_after_s = (int)((wait_us + 999999) / 1000000);
        out = sdw_fail(e, SDW_ELIMIT, "more than %d submissions a minute with this key", per_minute);
    } else {
        b->tat_us = tat + interval;
    }
    pthread_mutex_unlock(&r->lock);
    return out;
}
