/* The request contract of the service: parses an rbee "Operation" JSON body
 * (POST /v1/jobs) into a validated sdw_job_request, renders API errors, and
 * serialises a request so it can travel through the job ring to the engine.
 *
 * Wire format (rbee-compatible): one flat JSON object tagged by "operation".
 * Unknown fields are ignored. Supported operations and their fields:
 *
 *   image_generation  hive_id*, model*, prompt*, negative_prompt (null -> ""),
 *                     steps 20 [1,150], guidance_scale 7.5 [0,30],
 *                     width/height 512 (multiples of 8 in [64,2048],
 *                     the defaults of steps, guidance_scale, width,
 *                     height and sampler being the model's own where it
 *                     has them: sdw_contract_limits.model_defaults;
 *                     width*height <= limits.max_pixels), seed (absent/null ->
 *                     random over all of [0,2^64-1]; else an integer in
 *                     [0,2^64-1] or a decimal string of one), worker_id,
 *                     loras [] (at most SDW_JOB_MAX_LORAS of {"name": a
 *                     configured LoRA, 1-63 of [A-Za-z0-9._-], "weight" 1.0
 *                     in [-4,4] (alias strength, rbee's)}; a "path" key is
 *                     refused: LoRAs are never files named by the client;
 *                     whether each exists and fits the model is the pool's
 *                     check, against the engine's table),
 *                     sampler (extension; absent -> model default),
 *                     eta 0 [0,1] (ddim only), clip_skip 0 [0,11].
 *   image_transform   as above without width/height (taken from the image;
 *                     ignored if sent), plus init_image* (alias input_image,
 *                     which rbee's client sends) and strength 0.8 (0,1] with
 *                     int(steps * strength) >= 1, as diffusers requires.
 *   image_inpaint     as image_transform plus mask_image* (white = repaint),
 *                     the size of init_image; strength defaults to 1.0.
 *   (* = required)
 *
 * hive_id and worker_id are strings of at most 255 bytes without control
 * characters. model is 1-255 bytes of [A-Za-z0-9._/-], not starting with '/'
 * or '.', with no ".." component, so that the pool can resolve it inside a
 * model directory without escaping it.
 *
 * Integers accept any JSON number with an integral value (20 and 20.0, not
 * 20.5); a non-integral value or a value beyond 2^53 given in floating form is
 * rejected because it cannot be represented exactly. Images are standard
 * base64 (optionally with a "data:<type>;base64," prefix, whitespace
 * tolerated) of a PNG or JPEG file of at most limits.max_image_bytes.
 * sdw_contract_parse checks the bytes; sdw_job_request_decode_images (which
 * the pool calls before a job is queued) decodes the pixels: the types
 * sdw_image_decode_max supports (image.h: any PNG, 8-bit grey/YCbCr/RGB
 * JPEG; not CMYK or YCCK), at most limits.max_pixels pixels, each side,
 * rounded down to a multiple of 8 as the engine does, in [64,2048].
 *
 * Error codes and HTTP statuses used by the whole service (sdw_api_error):
 *   400 invalid_json          body is not one well-formed JSON value (also:
 *                             nesting too deep, NaN/Infinity, trailing data)
 *   400 invalid_request       body is not an object, "operation" missing or not
 *                             a string, a required field missing
 *   400 invalid_value         a field has the wrong type or is out of range,
 *                             bad base64, integer literal beyond 64 bits
 *   400 invalid_init_image    init_image (or input_image) cannot be decoded:
 *                             broken, truncated, an unsupported type, too
 *                             many pixels or a side out of range
 *   400 invalid_mask_image    the same for mask_image, or its size is not
 *                             init_image's
 *   400 unsupported_operation an rbee operation this worker does not run
 *   400 unknown_operation     an operation name rbee does not define
 *   400 unsupported_feature   a valid request for something not implemented
 *   400 lora_mismatch         a LoRA that does not fit the model (another
 *                             family, no matching layer, wrong shapes)
 *   404 unknown_lora          a LoRA name that is not configured
 *   404 not_found             no such route or job
 *   404 unknown_model         the model named is not installed
 *   405 method_not_allowed
 *   413 payload_too_large     body, or an image's file bytes, beyond the limits
 *   415 unsupported_media_type an image that is neither PNG nor JPEG
 *   401 unauthorized          no API key, or a wrong one (keys configured)
 *   403 forbidden             the key may not do this (the full pool status)
 *   410 result_expired        the job's result is gone (its TTL, or its slot
 *                             taken when the ring was full)
 *   429 rate_limited          the key's per_minute (retry_after_s set)
 *   429 too_many_queued       the key's max_queued (retry_after_s set)
 *   503 queue_full            no free job slot, or ring.max_queued jobs
 *                             waiting (retry_after_s set)
 *   503 too_many_streams      the pool process has no room for a stream
 *   503 engine_unavailable    the engine is loading, dead or restarting
 *   500 internal_error        the server failed (e.g. no randomness for a seed)
 *
 * An error caused by one member of the request names it in "field", by its
 * canonical name ("init_image" when the alias input_image carried it).
 */
#ifndef SDW_CONTRACT_H
#define SDW_CONTRACT_H

#include "base/sampler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SDW_API_INVALID_JSON "invalid_json"
#define SDW_API_INVALID_REQUEST "invalid_request"
#define SDW_API_INVALID_VALUE "invalid_value"
#define SDW_API_INVALID_INIT_IMAGE "invalid_init_image"
#define SDW_API_INVALID_MASK_IMAGE "invalid_mask_image"
#define SDW_API_UNSUPPORTED_OPERATION "unsupported_operation"
#define SDW_API_UNKNOWN_OPERATION "unknown_operation"
#define SDW_API_UNSUPPORTED_FEATURE "unsupported_feature"
#define SDW_API_NOT_FOUND "not_found"
#define SDW_API_RESULT_EXPIRED "result_expired"
#define SDW_API_UNKNOWN_MODEL "unknown_model"
#define SDW_API_UNKNOWN_LORA "unknown_lora"
#define SDW_API_LORA_MISMATCH "lora_mismatch"
#define SDW_API_METHOD_NOT_ALLOWED "method_not_allowed"
#define SDW_API_PAYLOAD_TOO_LARGE "payload_too_large"
#define SDW_API_UNSUPPORTED_MEDIA_TYPE "unsupported_media_type"
#define SDW_API_QUEUE_FULL "queue_full"
#define SDW_API_ENGINE_UNAVAILABLE "engine_unavailable"
#define SDW_API_UNAUTHORIZED "unauthorized"          /* 401: no API key, or a wrong one */
#define SDW_API_FORBIDDEN "forbidden"                /* 403: the key may not do this */
#define SDW_API_RATE_LIMITED "rate_limited"          /* 429: the key's per_minute */
#define SDW_API_TOO_MANY_QUEUED "too_many_queued"    /* 429: the key's max_queued */
#define SDW_API_TOO_MANY_STREAMS "too_many_streams"  /* 503: a pool process is full */
#define SDW_API_INTERNAL "internal_error"

/* An error as the HTTP client sees it. code is one of the SDW_API_* strings
 * (static storage); field is the request member at fault, "" when none;
 * retry_after_s > 0 asks the pool to send Retry-After. */
typedef struct sdw_api_error {
    int http_status;
    const char *code;
    int retry_after_s;
    char field[64];
    char message[512];
} sdw_api_error;

/* Fills e (which may be NULL) and returns SDW_EINVAL for a 4xx status and
 * SDW_EIO for a 5xx one, so parse failures read
 * `return sdw_api_fail(e, 400, SDW_API_INVALID_VALUE, "...")`. */
int sdw_api_fail(sdw_api_error *e, int http_status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same, naming the member at fault (NULL or "" for none). */
int sdw_api_fail_field(sdw_api_error *e, int http_status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Renders {"error":{"code":"...","message":"..."}}, with "field" after the
 * message when set, with JSON escaping.
 * Returns a malloc'd NUL-terminated string, or NULL when out of memory. */
char *sdw_api_error_json(const sdw_api_error *e);

/* What a request gets for the fields it leaves out. */
typedef struct sdw_contract_defaults {
    int steps;                /* 20 */
    double guidance_scale;    /* 7.5 */
    int width, height;        /* 512 x 512 */
    int sampler;              /* SDW_JOB_SAMPLER_DEFAULT */
    /* 1: an SDXL model, which takes original_size, crops_coords_top_left
     * and target_size; 0: another family, which refuses them (400); -1 (the
     * built-in default): not known yet, so they pass to the engine. */
    int sdxl;
} sdw_contract_defaults;

sdw_contract_defaults sdw_contract_builtin_defaults(void);

typedef struct sdw_contract_limits {
    size_t max_body_bytes;    /* whole request body (default 8 MiB) */
    size_t max_prompt_bytes;  /* prompt and negative_prompt, UTF-8 bytes (default 4096) */
    size_t max_pixels;        /* width*height (default 1024*1024) */
    size_t max_image_bytes;   /* each decoded init/mask image file (default 2 MiB) */
    /* Per-model defaults (NULL: the built-in ones for every model): called
     * once the model field is read, with *d holding the built-in defaults,
     * to replace those the named model has its own of (an SD-Turbo model's
     * one step without guidance, an SD 2.1 model's 768x768). A model it does
     * not know keeps the built-in ones; the caller reports it. Fields given
     * in the request are validated as always, defaults as if given. */
    void (*model_defaults)(void *ctx, const char *model, sdw_contract_defaults *d);
    void *model_defaults_ctx;
} sdw_contract_limits;

/* The defaults above, suited to 512x512 work: two images fit in the default
 * body limit after base64's 4/3 growth, and a serialised request fits in the
 * job ring's default slot input area (sdw_ring_default_config). Raise them
 * together. */
sdw_contract_limits sdw_contract_default_limits(void);

/* Generation sizes: multiples of SDW_CONTRACT_GRID in [MIN_SIDE, MAX_SIDE];
 * an input image's size, rounded down to the grid, obeys the same. */
#define SDW_CONTRACT_GRID 8
#define SDW_CONTRACT_MIN_SIDE 64
#define SDW_CONTRACT_MAX_SIDE 2048

typedef enum sdw_operation {
    SDW_OPERATION_GENERATE = 1,
    SDW_OPERATION_TRANSFORM,
    SDW_OPERATION_INPAINT,
} sdw_operation;

/* A job's sampler: an sdw_sampler (base/sampler.h), or DEFAULT for the one
 * in the model's scheduler config. */
#define SDW_JOB_SAMPLER_DEFAULT (-1)

typedef enum sdw_image_format {
    SDW_IMAGE_NONE = 0,
    SDW_IMAGE_PNG,
    SDW_IMAGE_JPEG,
} sdw_image_format;

typedef struct sdw_image_blob {
    unsigned char *data;      /* the decoded file bytes, malloc'd */
    size_t len;
    sdw_image_format format;
} sdw_image_blob;

#define SDW_ID_FIELD_MAX 256

/* LoRA in a request: at most this many, weights within +-SDW_LORA_MAX_WEIGHT. */
#define SDW_JOB_MAX_LORAS 8
#define SDW_LORA_NAME_MAX 64
#define SDW_LORA_MAX_WEIGHT 4.0

typedef struct sdw_job_lora {
    char name[SDW_LORA_NAME_MAX];
    double weight;
} sdw_job_lora;

typedef struct sdw_job_request {
    sdw_operation op;
    char hive_id[SDW_ID_FIELD_MAX];
    char model[SDW_ID_FIELD_MAX];
    char worker_id[SDW_ID_FIELD_MAX];   /* "" when absent */
    char *prompt;                       /* malloc'd, as sent (not trimmed) */
    char *negative_prompt;              /* malloc'd, "" when absent or null */
    bool negative_prompt_given;         /* neither absent nor null: SDXL zeroes a missing one */
    int steps;
    double guidance_scale;
    int width, height;                  /* 0 for transform/inpaint: from the image */
    uint64_t seed;
    bool seed_random;                   /* the client sent no seed; we chose it */
    int sampler;                    /* sdw_sampler or SDW_JOB_SAMPLER_DEFAULT */
    double eta;
    int clip_skip;
    double strength;                    /* transform and inpaint only */
    /* SDXL micro-conditioning: original_size and target_size {width,
     * height} (0 when absent: the image's size), crops_coords_top_left
     * {top, left} (0, 0 when absent; has_crops says it was given). */
    int original_width, original_height, target_width, target_height;
    int crop_top, crop_left;
    bool has_crops;
    sdw_image_blob init_image;          /* transform and inpaint */
    sdw_image_blob mask_image;          /* inpaint */
    /* LoRA */
    int nloras;
    sdw_job_lora loras[SDW_JOB_MAX_LORAS];
} sdw_job_request;

/* Parses and validates body[0..len). On success fills *req (free it with
 * sdw_job_request_free) and returns 0; on failure returns a negative
 * sdw_status, fills *e, and leaves *req empty. limits may be NULL (defaults). */
int sdw_contract_parse(const char *body, size_t len, const sdw_contract_limits *limits,
                       sdw_job_request *req, sdw_api_error *e);

void sdw_job_request_free(sdw_job_request *req);

const char *sdw_operation_name(sdw_operation op);

/* The resolved parameters as JSON (everything but the image bytes; the seed
 * actually used and "seed_random"), for job status replies and logs.
 * Returns a malloc'd string or NULL when out of memory. */
char *sdw_job_request_params_json(const sdw_job_request *req);

struct sdw_image;

/* Decodes req's init_image (RGB) and, for inpainting, mask_image (grey) as
 * the engine works on them, and checks them (see the top of this file):
 * at most max_pixels pixels each, refused from the declared size before
 * any pixel memory is allocated; sides in range; the mask the size of the
 * image. On success *init and *mask hold the pixels (zeroed when the
 * operation has no such image; free them with sdw_image_free); on failure
 * both are empty and *e is 400 invalid_init_image or invalid_mask_image
 * (500 internal_error when out of memory). The pool calls it before
 * queueing a job and the engine again on what it takes from the ring.
 * Defined in contract_image.c, which links the image decoders (libpng,
 * libjpeg); a program that only parses requests does not need them. */
int sdw_job_request_decode_images(const sdw_job_request *req, size_t max_pixels, struct sdw_image *init,
                                  struct sdw_image *mask, sdw_api_error *e);

/* A self-contained byte form of a request, written into a job ring slot by
 * the pool and read back by the engine: "SDWJ", three little-endian u32
 * lengths (params JSON, init image, mask image), then the three parts.
 * serialize returns a malloc'd buffer (NULL when out of memory);
 * deserialize validates it as strictly as sdw_contract_parse. */
unsigned char *sdw_job_request_serialize(const sdw_job_request *req, size_t *len);
int sdw_job_request_deserialize(const unsigned char *buf, size_t len,
                                sdw_job_request *req, sdw_api_error *e);

/* Strict base64 decoding (standard alphabet; ASCII whitespace skipped; padding
 * optional but, when present, only at the end and never more than needed).
 * Returns 0 and a malloc'd buffer, SDW_EFORMAT on bad input, SDW_EINVAL when
 * the decoded size would exceed max_out, SDW_ENOMEM. */
int sdw_base64_decode(const char *in, size_t len, size_t max_out,
                      unsigned char **out, size_t *out_len);

/* Standard padded base64 of data; returns a malloc'd NUL-terminated string. */
char *sdw_base64_encode(const unsigned char *data, size_t len);

#endif
