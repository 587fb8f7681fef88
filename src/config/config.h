/* The sdworker configuration file, shared by the FastCGI pool and the engine.
 *
 * Format: one `key = value` per line; `#` at the start of a line, or after
 * whitespace outside quotes, begins a comment; no sections. A value is either
 * unquoted (surrounding whitespace trimmed) or double-quoted, where \" and \\
 * are the only escapes. Keys and their defaults are listed in
 * conf/sdworker.conf; sdw_config_dump writes them all.
 *
 * Duplicate keys: within one file a key may appear once (a second occurrence
 * is an error naming both lines, because two values for one setting are
 * almost always an editing mistake). Command-line overrides, applied after
 * the file, replace the file's value: that is their purpose.
 *
 * Models: `model.<name> = <path>` lines, repeatable with distinct names; the
 * first one listed is the default model. A relative path in a file is
 * relative to the file's directory. Paths are not opened here: the engine
 * reports a missing model when it loads it. `model.<name>.<option> = value`
 * sets one of the model's request defaults (sdw_config_model), after its
 * model.<name> line; so that the two never collide, a model name may not end
 * in "." followed by an option's name.
 *
 * API keys: `api_key.<name> = sha256:<64 hex digits> [admin] [max_queued=N]
 * [per_minute=N]`, repeatable with distinct names (1-63 of A-Z a-z 0-9 . _ -),
 * like models. The value is the SHA-256 of the key, never the key itself
 * (`sdworker-fcgi --hash-key` prints it), then options separated by spaces:
 * admin (may read the pool's full status and every job), max_queued (jobs of
 * this key waiting in the queue at once, 0 = only ring.max_queued applies)
 * and per_minute (submissions a minute, 0 = no limit). With no api_key line
 * the API is open. Two names for one key, or two keys whose owner ids (the
 * hash's first 32 bits) coincide, fail sdw_config_validate.
 *
 * Usage: sdw_config_defaults, then sdw_config_load (optional), then
 * sdw_config_set for each command-line override, then sdw_config_validate
 * for the checks that involve several keys. Every error message starts with
 * "file:line: key: " (or "command line: key: ") so it can be printed as is. */
#ifndef SDW_CONFIG_H
#define SDW_CONFIG_H

#include "base/device.h"
#include "base/err.h"
#include "base/log.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SDW_CONFIG_MAX_MODELS 32
#define SDW_CONFIG_NAME_MAX 64      /* model names, with the NUL */
#define SDW_CONFIG_PATH_MAX 4096
#define SDW_CONFIG_MAX_KEYS 64
#define SDW_CONFIG_KEY_HASH_LEN 32  /* SHA-256 */
#define SDW_CONFIG_MAX_LORAS 64     /* lora.<name> lines and lora_dir files together */
#define SDW_CONFIG_MAX_LORAS_PER_JOB 8

/* lora.<name> = <file>: a LoRA requests may name. */
typedef struct sdw_config_lora {
    char name[SDW_CONFIG_NAME_MAX];
    char path[SDW_CONFIG_PATH_MAX];
} sdw_config_lora;

typedef enum sdw_pm_mode { SDW_PM_STATIC = 0, SDW_PM_DYNAMIC } sdw_pm_mode;

/* What a request that leaves a field out gets for this model
 * (`model.<name>.<option> = value`). Unset options (0, -1, "") fall back to
 * what the model itself implies (its image size), then to the contract's
 * defaults (20 steps, guidance 7.5, the model's scheduler). */
typedef struct sdw_config_model {
    char name[SDW_CONFIG_NAME_MAX];
    char path[SDW_CONFIG_PATH_MAX];
    int steps;                      /* .steps [1,150]; 0 = unset */
    double guidance;                /* .guidance [0,30]; -1 = unset */
    int width, height;              /* .size = WxH, multiples of 8 in [64,2048]; 0 = unset */
    int sampler;                    /* .sampler, an sdw_sampler; -1 = unset */
    /* .prediction = epsilon | v_prediction ("v" is accepted as an alias):
     * what the UNet predicts, overriding the model's scheduler config or,
     * for a single file, what its architecture implies. "" = unset. */
    char prediction[16];
} sdw_config_model;

typedef struct sdw_config_key {
    char name[SDW_CONFIG_NAME_MAX];
    unsigned char sha256[SDW_CONFIG_KEY_HASH_LEN];
    /* Who a job belongs to in the job ring: the hash's first 32 bits, or 1
     * when they are 0 (0 = a job submitted while no keys were configured). Taken from the
     * key rather than its name or position so that reordering or renaming
     * keys keeps every job with its owner, and a replaced key loses them. */
    uint32_t owner;
    bool admin;
    int max_queued;                 /* 0 = no per-key limit */
    int per_minute;                 /* 0 = no limit */
} sdw_config_key;

typedef struct sdw_config {
    /* FastCGI socket as written ("unix:/run/sdworker/fcgi.sock" or
     * "127.0.0.1:9000"), and its parsed form: listen_path for a Unix socket,
     * otherwise listen_host (an IPv4 address or "localhost") and listen_port. */
    char listen[SDW_CONFIG_PATH_MAX];
    bool listen_unix;
    char listen_path[108];          /* sizeof(sockaddr_un.sun_path) */
    char listen_host[64];
    int listen_port;

    sdw_pm_mode pm;
    int pm_max_children;
    int pm_start_servers;           /* dynamic only */
    int pm_min_spare_servers;       /* dynamic only */
    int pm_max_spare_servers;       /* dynamic only */
    int pm_max_requests;            /* 0 = a child is never recycled */
    int pm_max_streams_per_child;   /* event streams one child serves at once */

    char ring_name[202];            /* "/" + up to 200 of [A-Za-z0-9._-] */
    int ring_slots;
    int ring_max_queued;
    /* Per-slot areas of the job ring; 0 in input/image = derived from the
     * limits (sdw_config_ring_sizes). */
    size_t ring_input_bytes;
    size_t ring_log_bytes;
    size_t ring_image_bytes;

    int result_ttl;                 /* seconds a finished job stays readable */
    int preview_interval;           /* steps between previews; 0 = none */
    int keepalive_interval;         /* seconds between SSE comment lines */

    size_t max_body_bytes;          /* whole request body */
    size_t max_prompt_bytes;        /* prompt and negative_prompt, each */
    size_t max_image_bytes;         /* each decoded init or mask image file */
    size_t max_pixels;              /* width * height */

    sdw_device device;
    int threads;                    /* 0 = all cores */

    int engine_restart_delay_ms;
    int engine_stop_timeout_s;      /* a stopping engine's grace for its running job */
    int engine_warmup;              /* side of the square warm-up image; 0 none, -1 512 on CUDA, none on the CPU */
    sdw_log_level log_level;

    int n_models;
    sdw_config_model models[SDW_CONFIG_MAX_MODELS];

    /* LoRA: the files named by lora.<name> lines, and every
     * <stem>.safetensors in lora_dir ("" = none) as <stem> (a lora.<name>
     * line wins over a file of the same stem); limits.max_loras per job (0
     * turns LoRA off, at most 8); parsed files kept in the engine up to
     * lora_cache_bytes, least recently used out first. */
    int n_loras;
    sdw_config_lora loras[SDW_CONFIG_MAX_LORAS];
    char lora_dir[SDW_CONFIG_PATH_MAX];
    int max_loras;
    size_t lora_cache_bytes;

    int n_keys;                     /* 0 = the API is open */
    sdw_config_key keys[SDW_CONFIG_MAX_KEYS];
} sdw_config;

/* Fills c with the defaults (no models). */
void sdw_config_defaults(sdw_config *c);

/* Parses the file at path on top of c's current values. */
int sdw_config_load(sdw_config *c, const char *path, sdw_error *e);

/* Parses configuration text; origin names it in messages ("file.conf") and
 * basedir (may be NULL) anchors relative model paths. */
int sdw_config_parse(sdw_config *c, const char *text, size_t len, const char *origin,
                     const char *basedir, sdw_error *e);

/* Applies one "key=value" override from the command line (spaces around '='
 * allowed, value may be quoted). A model.<name> or api_key.<name> override
 * replaces that entry or appends a new one. */
int sdw_config_set(sdw_config *c, const char *assignment, sdw_error *e);

/* Checks the relations between keys: pm spare counts within max_children,
 * ring.max_queued <= ring.slots, at least one model, API keys distinct. */
int sdw_config_validate(const sdw_config *c, sdw_error *e);

/* The model called name, or the default (first) model when name is NULL or
 * empty; NULL when there is no such model. */
const sdw_config_model *sdw_config_model_find(const sdw_config *c, const char *name);

/* The effective per-slot ring sizes (derived ones filled in). */
void sdw_config_ring_sizes(const sdw_config *c, size_t *input_bytes, size_t *log_bytes,
                           size_t *image_bytes);

/* Writes every key with its current value in the file format (models, the
 * default first, then API keys, last), so that the output parses back to the same config.
 * Returns 0 or SDW_EIO. */
int sdw_config_dump(const sdw_config *c, FILE *f);


#endif
