/* API keys for the HTTP API (config.h's api_key.<name> lines): who sent a
 * request, and each key's submission rate, shared by every pool process.
 *
 * A key travels as `Authorization: Bearer <key>`. The configuration holds
 * only its SHA-256, so the pool hashes what it is sent (nettle) and compares
 * the digest with every configured one in constant time, without stopping
 * at a match: how long a check takes says nothing about which bytes were
 * right. Keys never reach a log line or an error message.
 *
 * The rate is a token bucket (GCRA) per key: a key may submit per_minute
 * jobs at once, then one every 60/per_minute seconds; a refused submission
 * costs nothing. The buckets live in anonymous shared memory that the pool
 * master maps before it forks, so all children count together; they start
 * full again when the pool restarts. */
#ifndef SDW_AUTH_H
#define SDW_AUTH_H

#include "config/config.h"
#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "sha256:" and 64 hex digits, with the NUL. */
#define SDW_AUTH_HASH_TEXT_LEN (7 + 2 * SDW_CONFIG_KEY_HASH_LEN + 1)

typedef struct sdw_auth_caller {
    const sdw_config_key *key;      /* NULL when no keys are configured */
    uint32_t owner;                 /* the owner of the caller's jobs in the ring; 0 without keys */
    bool admin;                     /* may see every job and the pool's full status */
} sdw_auth_caller;

/* Finds the key an Authorization header value carries (NULL when the
 * request has none). 0 with *who filled; SDW_ENOTFOUND when there is no
 * Bearer credential; SDW_EINVAL when there is one and it matches no key.
 * Only for a configuration with keys. */
int sdw_auth_identify(const sdw_config *cfg, const char *authorization, sdw_auth_caller *who, sdw_error *e);

/* Checks that key (len bytes) can be sent as a Bearer token (RFC 6750's
 * b64token: letters, digits and -._~+/, then optional '=') and is at least
 * 16 bytes long, then writes "sha256:<hex>" for an api_key line. */
int sdw_auth_hash_text(const char *key, size_t len, char out[SDW_AUTH_HASH_TEXT_LEN], sdw_error *e);

typedef struct sdw_auth_rates sdw_auth_rates;

/* Maps the shared bucket table; call before forking the processes that
 * share it. */
int sdw_auth_rates_create(sdw_auth_rates **out, sdw_error *e);
void sdw_auth_rates_destroy(sdw_auth_rates *r);

/* Takes one submission from owner's bucket of per_minute (> 0) at now_ms
 * (CLOCK_MONOTONIC). 0 when it may go ahead; SDW_ELIMIT with
 * *retry_after_s (>= 1) when the bucket is empty. */
int sdw_auth_rate_take(sdw_auth_rates *r, uint32_t owner, int per_minute, int64_t now_ms, int *retry_after_s,
                       sdw_error *e);

#endif
