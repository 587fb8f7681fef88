#include "pool/http.h"

#include "base/clock.h"
#include "contract/contract.h"
#include "image/image.h"
#include "pool/metrics.h"
#include "pool/sse.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

/* Whether the request this thread answers is a HEAD: every reply then
 * keeps its status and headers, Content-Length included, and drops its body
 * (RFC 9110 9.3.2; a CGI script must not send one, RFC 3875 4.3.2). One per
 * thread, as a child's threads answer requests side by side. */
static _Thread_local bool head_only;

/* The response, with body[0..len) and, for JSON, a newline after it. */
static int reply_typed(FCGX_Stream *out, int status, const char *type, const char *extra_headers, const char *body,
                       size_t len, bool newline)
{
    /* libfcgi's FCGX_FPrintF has its own formatter without %zu: format here. */
    char head[512];
    int n = snprintf(head, sizeof head,
                     "Status: %d %s\r\nContent-Type: %s\r\n"
                     "Cache-Control: no-store\r\nContent-Length: %zu\r\n%s\r\n",
                     status, reason_phrase(status), type, len + newline, extra_headers ? extra_headers : "");
    if (n < 0 || n >= (int)sizeof head || FCGX_PutStr(head, n, out) != n)
        return -1;
    if (head_only)
        return 0;
    for (size_t done = 0; done < len;) {
        int chunk = len - done > (1u << 30) ? 1 << 30 : (int)(len - done);
        if (FCGX_PutStr(body + done, chunk, out) != chunk)
            return -1;
        done += (size_t)chunk;
    }
    if (newline && FCGX_PutS("\n", out) < 0)
        return -1;
    return 0;
}

int sdw_http_reply(FCGX_Stream *out, int status, const char *extra_headers, const char *body)
{
    return reply_typed(out, status, "application/json", extra_headers, body, strlen(body), true);
}

static void reply_error(FCGX_Stream *out, const sdw_api_error *err, const char *extra_headers)
{
    char headers[256] = "";
    if (extra_headers)
        snprintf(headers, sizeof headers, "%s", extra_headers);
    if (err->retry_after_s > 0) {
        size_t n = strlen(headers);
        snprintf(headers + n, sizeof headers - n, "Retry-After: %d\r\n", err->retry_after_s);
    }
    char *body = sdw_api_error_json(err);
    sdw_http_reply(out, err->http_status, headers,
                   body ? body : "{\"error\":{\"code\":\"internal_error\",\"message\":\"out of memory\"}}");
    free(body);
    if (err->http_status >= 500)
        sdw_log(SDW_LOG_WARN, "%d %s: %s", err->http_status, err->code, err->message);
    else
        sdw_log(SDW_LOG_DEBUG, "%d %s: %s", err->http_status, err->code, err->message);
}

static void fail(FCGX_Stream *out, int status, const char *code, int retry_after, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(FCGX_Stream *out, int status, const char *code, int retry_after, const char *fmt, ...)
{
    sdw_api_error err = { .http_status = status, .code = code, .retry_after_s = retry_after };
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof err.message, fmt, ap);
    va_end(ap);
    reply_error(out, &err, NULL);
}

static void reply_json(FCGX_Stream *out, int status, json_object *o)
{
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    sdw_http_reply(out, status, NULL, s);
    json_object_put(o);
}

/* RFC 3339 UTC with milliseconds. */
static void rfc3339(int64_t ms, char *buf, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, n - k, ".%03dZ", (int)(ms % 1000));
}

static json_object *json_time(int64_t ms)
{
    if (ms <= 0)
        return NULL;
    char buf[40];
    rfc3339(ms, buf, sizeof buf);
    return json_object_new_string(buf);
}

static json_object *json_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return json_time((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* ---- routing ---- */

static bool valid_job_id(const char *s, size_t n)
{
    if (n != SDW_JOB_ID_LEN || strncmp(s, "job-", 4) != 0)
        return false;
    for (size_t i = 4; i < n; i++)
        if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
            return false;
    return true;
}

bool sdw_http_request_path(FCGX_ParamArray env, char *buf, size_t n)
{
    const char *script = FCGX_GetParam("SCRIPT_NAME", env);
    const char *info = FCGX_GetParam("PATH_INFO", env);
    const char *doc = FCGX_GetParam("DOCUMENT_URI", env);
    const char *uri = FCGX_GetParam("REQUEST_URI", env);
    if (info && *info)
        snprintf(buf, n, "%s%s", script ? script : "", info);
    else if (doc && *doc)
        snprintf(buf, n, "%s", doc);
    else if (uri && *uri)
        snprintf(buf, n, "%.*s", (int)strcspn(uri, "?"), uri);
    else if (script && *script)
        snprintf(buf, n, "%s", script);
    else
        return false;
    size_t len = strlen(buf);
    if (len > 1 && buf[len - 1] == '/')
        buf[len - 1] = '\0';
    return true;
}

sdw_http_route sdw_http_route_of(const char *path, char job_id[SDW_JOB_ID_LEN + 1])
{
    if (strcmp(path, "/health") == 0)
        return SDW_ROUTE_HEALTH;
    if (strcmp(path, "/ready") == 0)
        return SDW_ROUTE_READY;
    if (strcmp(path, "/v1/models") == 0)
        return SDW_ROUTE_MODELS;
    if (strcmp(path, "/v1/pool/status") == 0)
        return SDW_ROUTE_POOL_STATUS;
    if (strcmp(path, "/metrics") == 0)
        return SDW_ROUTE_METRICS;
    if (strcmp(path, "/v1/jobs") == 0)
        return SDW_ROUTE_JOBS;
    static const char prefix[] = "/v1/jobs/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0)
        return SDW_ROUTE_NONE;
    const char *id = path + sizeof prefix - 1;
    size_t n = strcspn(id, "/");
    if (!valid_job_id(id, n))
        return SDW_ROUTE_NONE;
    memcpy(job_id, id, n);
    job_id[n] = '\0';
    if (id[n] == '\0')
        return SDW_ROUTE_JOB;
    if (strcmp(id + n, "/stream") == 0)
        return SDW_ROUTE_JOB_STREAM;
    return SDW_ROUTE_NONE;
}

/* ---- POST /v1/jobs ---- */

bool sdw_http_is_json_type(const char *ct)
{
    static const char json[] = "application/json";
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    if (strncasecmp(ct, json, sizeof json - 1) != 0)
        return false;
    ct += sizeof json - 1;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

static bool engine_gone(sdw_ring *ring, char *reason, size_t n)
{
    sdw_engine_info info;
    sdw_error e = { 0 };
    if (sdw_ring_engine_status(ring, &info, &e) < 0 || info.state != SDW_ENGINE_DEAD)
        return false;
    snprintf(reason, n, "%s", info.reason);
    return sdw_now_ms() - info.heartbeat_ms > (int64_t)SDW_HTTP_DEAD_ENGINE_S * 1000;
}

static void served_models(const sdw_config *cfg, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < cfg->n_models && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? ", " : "", cfg->models[i].name);
}

/* The engine's entry for the model called name, or NULL before it has
 * published its table. */
static const sdw_ring_model *ring_model(const sdw_ring_model *table, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(table[i].name, name))
            return &table[i];
    return NULL;
}

/* The request defaults of a model: the configuration's model.<name>.*
 * options, else the size the engine found the model trained at, else the
 * contract's own. */
static void apply_model_defaults(const sdw_config_model *m, const sdw_ring_model *rm, sdw_contract_defaults *d)
{
    if (rm && rm->width > 0 && rm->height > 0) {
        d->width = rm->width;
        d->height = rm->height;
    }
    if (rm && rm->family[0])
        d->sdxl = !strcmp(rm->family, "sdxl");
    if (m->width) {
        d->width = m->width;
        d->height = m->height;
    }
    if (m->steps)
        d->steps = m->steps;
    if (m->guidance >= 0)
        d->guidance_scale = m->guidance;
    if (m->sampler >= 0)
        d->sampler = m->sampler;
}

static void model_defaults(void *vctx, const char *name, sdw_contract_defaults *d)
{
    const sdw_http_ctx *ctx = vctx;
    const sdw_config_model *m = sdw_config_model_find(ctx->cfg, name);
    if (!m)
        return;
    sdw_ring_model table[SDW_RING_MAX_MODELS];
    sdw_error e;
    int n = sdw_ring_models(ctx->ring, table, SDW_RING_MAX_MODELS, &e);
    apply_model_defaults(m, n > 0 ? ring_model(table, n, m->name) : NULL, d);
}

/* A refused submission: counted for /metrics, then answered. decoded:
 * sdw_job_request_decode_images refused an image. */
static void reject(const sdw_http_ctx *ctx, FCGX_Stream *out, const sdw_api_error *err, bool decoded)
{
    sdw_metrics_count_rejection(ctx->counters, SDW_METRICS_API_RBEE, err->code, decoded);
    reply_error(out, err, NULL);
}

static void reject_f(const sdw_http_ctx *ctx, FCGX_Stream *out, int status, const char *code, int retry_after,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void reject_f(const sdw_http_ctx *ctx, FCGX_Stream *out, int status, const char *code, int retry_after,
                     const char *fmt, ...)
{
    sdw_api_error err = { .http_status = status, .code = code, .retry_after_s = retry_after };
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof err.message, fmt, ap);
    va_end(ap);
    reject(ctx, out, &err, false);
}

/* The request's LoRAs against limits.max_loras and the engine's table:
 * an unknown name is a 404, one that does not fit the model a 400, before
 * the job is queued. While the engine has not published its tables the job
 * queues, and the engine checks it. */
static int check_loras(const sdw_http_ctx *ctx, const sdw_job_request *jr, const char *model, sdw_api_error *err)
{
    const sdw_config *cfg = ctx->cfg;
    if (jr->nloras > cfg->max_loras)
        return cfg->max_loras ? sdw_api_fail_field(err, 400, SDW_API_INVALID_VALUE, "loras",
                                                   "%d LoRAs: at most %d (limits.max_loras)", jr->nloras,
                                                   cfg->max_loras)
                              : sdw_api_fail_field(err, 400, SDW_API_INVALID_VALUE, "loras",
                                                   "LoRA is turned off here (limits.max_loras = 0)");
    for (int i = 0; i < jr->nloras; i++) {
        char why[SDW_RING_LORA_WHY];
        sdw_error e;
        int rc = sdw_ring_lora_fit(ctx->ring, jr->loras[i].name, model, why, sizeof why, &e);
        if (rc == SDW_ENOTFOUND) {
            char names[1024] = "";
            sdw_ring_lora *table = malloc(SDW_RING_MAX_LORAS * sizeof *table);
            int n = table ? sdw_ring_loras(ctx->ring, table, SDW_RING_MAX_LORAS, &e) : 0;
            size_t used = 0;
            for (int k = 0; k < n && k < SDW_RING_MAX_LORAS && used < sizeof names; k++)
                used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", k ? ", " : "", table[k].name);
            free(table);
            return sdw_api_fail_field(err, 404, SDW_API_UNKNOWN_LORA, "loras",
                                      "LoRA \"%s\" is not configured; LoRAs: %s", jr->loras[i].name,
                                      n > 0 ? names : "(none)");
        }
        if (rc == SDW_EINVAL)
            return sdw_api_fail_field(err, 400, SDW_API_LORA_MISMATCH, "loras",
                                      "LoRA \"%s\" does not fit model %s: %s", jr->loras[i].name, model, why);
    }
    return 0;
}

static void submit_job(const sdw_http_ctx *ctx, FCGX_Request *req, const sdw_auth_caller *who)
{
    FCGX_Stream *out = req->out;
    const sdw_config *cfg = ctx->cfg;
    const char *cl = FCGX_GetParam("CONTENT_LENGTH", req->envp);
    unsigned long long length = 0;
    if (cl && *cl) {
        char *end;
        errno = 0;
        length = strtoull(cl, &end, 10);
        if (errno || *end || *cl == '-')
            return reject_f(ctx, out, 400, SDW_API_INVALID_REQUEST, 0, "bad Content-Length");
    }
    if (length > cfg->max_body_bytes)
        return reject_f(ctx, out, 413, SDW_API_PAYLOAD_TOO_LARGE, 0,
                    "request body of %llu bytes exceeds limits.max_body_bytes (%zu)", length,
                    cfg->max_body_bytes);
    const char *ct = FCGX_GetParam("CONTENT_TYPE", req->envp);
    if (!sdw_http_is_json_type(ct))
        return reject_f(ctx, out, 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, 0,
                    "Content-Type must be application/json, not %s", ct && *ct ? ct : "(none)");
    char *body = malloc(length + 1);
    if (!body)
        return reject_f(ctx, out, 500, SDW_API_INTERNAL, 0, "out of memory");
    size_t got = 0;
    while (got < length) {
        int chunk = length - got > (1u << 30) ? 1 << 30 : (int)(length - got);
        int r = FCGX_GetStr(body + got, chunk, req->in);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    body[got] = '\0';
    if (got < length) {
        free(body);
        return reject_f(ctx, out, 400, SDW_API_INVALID_REQUEST, 0, "body ended after %zu of %llu bytes", got, length);
    }

    sdw_contract_limits limits = {
        .max_body_bytes = cfg->max_body_bytes,
        .max_prompt_bytes = cfg->max_prompt_bytes,
        .max_pixels = cfg->max_pixels,
        .max_image_bytes = cfg->max_image_bytes,
        .model_defaults = model_defaults,
        .model_defaults_ctx = (void *)ctx,
    };
    sdw_job_request jr;
    sdw_api_error err = { 0 };
    int rc = sdw_contract_parse(body, got, &limits, &jr, &err);
    free(body);
    if (rc < 0)
        return reject(ctx, out, &err, false);
    const sdw_config_model *model = sdw_config_model_find(cfg, jr.model);
    if (!model) {
        char names[1024];
        served_models(cfg, names, sizeof names);
        reject_f(ctx, out, 404, SDW_API_UNKNOWN_MODEL, 0, "model \"%s\" is not served here; models: %s", jr.model,
             names);
        sdw_job_request_free(&jr);
        return;
    }
    if ((rc = check_loras(ctx, &jr, model->name, &err))) {
        sdw_job_request_free(&jr);
        return reject(ctx, out, &err, false);
    }
    /* Decoded here, in full, so that a bad image is this request's 400
     * and not a failed job; the engine decodes them again from the ring. */
    sdw_image init, mask;
    rc = sdw_job_request_decode_images(&jr, cfg->max_pixels, &init, &mask, &err);
    if (rc < 0) {
        sdw_job_request_free(&jr);
        return reject(ctx, out, &err, true);
    }
    /* The engine's estimate of what fits in memory, so that a size that
     * cannot is this request's error rather than the job's out-of-memory. */
    long long w = jr.width, h = jr.height;
    if (jr.op != SDW_OPERATION_GENERATE) /* the init image's size, cut to the latent grid as the engine does */
        w = init.width / SDW_CONTRACT_GRID * SDW_CONTRACT_GRID, h = init.height / SDW_CONTRACT_GRID * SDW_CONTRACT_GRID;
    sdw_image_free(&init);
    sdw_image_free(&mask);
    sdw_ring_model table[SDW_RING_MAX_MODELS];
    sdw_error me;
    int nm = sdw_ring_models(ctx->ring, table, SDW_RING_MAX_MODELS, &me);
    const sdw_ring_model *rm = nm > 0 ? ring_model(table, nm, model->name) : NULL;
    int sampler = jr.sampler >= 0 ? jr.sampler : rm ? sdw_sampler_parse(rm->own_sampler) : -1;
    int steps = jr.steps;
    if (rm && sampler == SDW_SAMPLER_LCM && rm->lcm_max_steps > 0 && steps > rm->lcm_max_steps) {
        sdw_job_request_free(&jr);
        return reject_f(ctx, out, 400, SDW_API_INVALID_VALUE, 0,
                        "steps %d: the lcm sampler takes at most %d on model %s (its original_inference_steps)",
                        steps, rm->lcm_max_steps, model->name);
    }
    if (rm && rm->max_pixels && (uint64_t)(w * h) > rm->max_pixels) {
        sdw_job_request_free(&jr);
        return reject_f(ctx, out, 413, SDW_API_PAYLOAD_TOO_LARGE, 0,
                        "width %lld x height %lld = %lld pixels: model %s runs at most %llu pixels in this "
                        "machine's memory (its max_pixels in /v1/models)",
                        w, h, w * h, model->name, (unsigned long long)rm->max_pixels);
    }
    char reason[256];
    if (engine_gone(ctx->ring, reason, sizeof reason)) {
        sdw_job_request_free(&jr);
        return reject_f(ctx, out, 503, SDW_API_ENGINE_UNAVAILABLE, SDW_HTTP_RETRY_AFTER_S * 6,
                    "the engine is down (%s)", reason);
    }
    char labels[SDW_RING_LABELS_MAX];
    sdw_error e = { 0 };
    rc = sdw_metrics_job_labels(model->name, jr.op, SDW_METRICS_API_RBEE, labels, sizeof labels, &e);
    if (rc < 0) {
        sdw_job_request_free(&jr);
        return reject_f(ctx, out, 500, SDW_API_INTERNAL, 0, "%s", e.msg);
    }
    size_t len;
    unsigned char *blob = sdw_job_request_serialize(&jr, &len);
    sdw_job_request_free(&jr);
    if (!blob)
        return reject_f(ctx, out, 500, SDW_API_INTERNAL, 0, "out of memory");
    sdw_job_id id;
    rc = sdw_ring_submit_labelled(ctx->ring, blob, len, who->owner, who->key ? (unsigned)who->key->max_queued : 0,
                                  labels, id, &e);
    free(blob);
    if (rc == SDW_ELIMIT)
        return reject_f(ctx, out, 429, SDW_API_TOO_MANY_QUEUED, SDW_HTTP_RETRY_AFTER_S,
                    "this key already has %d queued jobs, its max_queued", who->key->max_queued);
    if (rc == SDW_EFULL)
        return reject_f(ctx, out, 503, SDW_API_QUEUE_FULL, SDW_HTTP_RETRY_AFTER_S, "the job queue is full: %s", e.msg);
    if (rc == SDW_ETOOBIG)
        return reject_f(ctx, out, 413, SDW_API_PAYLOAD_TOO_LARGE, 0, "the request does not fit a job slot: %s", e.msg);
    if (rc < 0)
        return reject_f(ctx, out, 500, SDW_API_INTERNAL, 0, "submit: %s", e.msg);
    sdw_log(SDW_LOG_INFO, "job %s queued%s%s", id, who->key ? " for key " : "", who->key ? who->key->name : "");
    char url[64], location[96];
    snprintf(url, sizeof url, "/v1/jobs/%s/stream", id);
    snprintf(location, sizeof location, "Location: /v1/jobs/%s\r\n", id);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "job_id", json_object_new_string(id));
    json_object_object_add(o, "sse_url", json_object_new_string(url));
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    sdw_http_reply(out, 202, location, s);
    json_object_put(o);
}

/* ---- job status, cancel, stream ---- */

static void reply_lookup_error(FCGX_Stream *out, const char *id, int rc, const sdw_error *e)
{
    if (rc == SDW_ENOTFOUND)
        return fail(out, 404, SDW_API_NOT_FOUND, 0, "no job %s", id);
    fail(out, 500, SDW_API_INTERNAL, 0, "%s", e->msg);
}

static void reply_expired(FCGX_Stream *out, const char *id)
{
    fail(out, 410, SDW_API_RESULT_EXPIRED, 0,
         "job %s has finished and its result is no longer kept (result_ttl passed, or every job slot was "
         "needed for newer work)", id);
}

/* Step and total from the newest progress or preview event, and the error
 * event's body; the log is read backwards so a long job costs few copies. */
static void last_events(sdw_ring *ring, const char *id, uint64_t last, json_object *o)
{
    bool have_step = false, have_error = false;
    for (uint64_t k = last; k >= 1 && !(have_step && have_error); k--) {
        sdw_ring_event ev;
        sdw_error e = { 0 };
        if (sdw_ring_wait_event(ring, id, k - 1, 0, &ev, &e) != 1)
            break;
        if (ev.id == k) {
            bool progress = strcmp(ev.name, "progress") == 0 || strcmp(ev.name, "preview") == 0;
            bool error = strcmp(ev.name, "error") == 0;
            if ((progress && !have_step) || (error && !have_error)) {
                json_object *d = json_tokener_parse(ev.data);
                if (d && progress) {
                    json_object *v;
                    if (json_object_object_get_ex(d, "step", &v))
                        json_object_object_add(o, "step", json_object_get(v));
                    if (json_object_object_get_ex(d, "total", &v))
                        json_object_object_add(o, "total", json_object_get(v));
                    have_step = true;
                } else if (d && error) {
                    json_object *err = json_object_new_object(), *v;
                    if (json_object_object_get_ex(d, "code", &v))
                        json_object_object_add(err, "code", json_object_get(v));
                    if (json_object_object_get_ex(d, "message", &v))
                        json_object_object_add(err, "message", json_object_get(v));
                    json_object_object_add(o, "error", err);
                    have_error = true;
                }
                json_object_put(d);
            }
        }
        sdw_ring_event_free(&ev);
        have_error = true; /* an error event, when there is one, is the last */
    }
}

/* Fills info for a job that still has its data and that the caller may see;
 * otherwise answers 404 (or the ring's error) or 410 expired and returns
 * false. Another key's job is answered exactly as an unknown id. */
static bool find_live_job(const sdw_http_ctx *ctx, FCGX_Stream *out, const char *id, sdw_job_info *info,
                          const sdw_auth_caller *who)
{
    sdw_error e = { 0 };
    int rc = sdw_ring_job_status(ctx->ring, id, info, &e);
    if (rc < 0) {
        reply_lookup_error(out, id, rc, &e);
        return false;
    }
    if (ctx->cfg->n_keys && !who->admin && info->state != SDW_JOB_EXPIRED && info->owner != who->owner) {
        reply_lookup_error(out, id, SDW_ENOTFOUND, &e);
        return false;
    }
    if (info->state == SDW_JOB_EXPIRED) {
        reply_expired(out, id);
        return false;
    }
    return true;
}

static void job_status(const sdw_http_ctx *ctx, FCGX_Stream *out, const char *id, const sdw_auth_caller *who)
{
    sdw_job_info info;
    sdw_error e = { 0 };
    if (!find_live_job(ctx, out, id, &info, who))
        return;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "job_id", json_object_new_string(id));
    json_object_object_add(o, "state", json_object_new_string(sdw_job_state_name(info.state)));
    json_object_object_add(o, "queue_position", json_object_new_int((int)info.queue_position));
    json_object_object_add(o, "cancel_requested", json_object_new_boolean(info.cancel_requested));
    json_object_object_add(o, "last_event_id", json_object_new_int64((int64_t)info.last_event_id));
    json_object_object_add(o, "created", json_time(info.created_ms));
    json_object_object_add(o, "started", json_time(info.started_ms));
    json_object_object_add(o, "finished", json_time(info.finished_ms));
    json_object_object_add(o, "step", NULL);
    json_object_object_add(o, "total", NULL);
    json_object_object_add(o, "error", NULL);
    last_events(ctx->ring, id, info.last_event_id, o);
    char url[64];
    snprintf(url, sizeof url, "/v1/jobs/%s/stream", id);
    json_object_object_add(o, "sse_url", json_object_new_string(url));

    void *input;
    size_t len;
    json_object *params = NULL;
    if (sdw_ring_read_input(ctx->ring, id, &input, &len, &e) == 0) {
        sdw_job_request jr;
        sdw_api_error err = { 0 };
        if (sdw_job_request_deserialize(input, len, &jr, &err) == 0) {
            char *pj = sdw_job_request_params_json(&jr);
            if (pj)
                params = json_tokener_parse(pj);
            free(pj);
            sdw_job_request_free(&jr);
        }
        free(input);
    }
    json_object_object_add(o, "params", params);
    reply_json(out, 200, o);
}

static void job_cancel(const sdw_http_ctx *ctx, FCGX_Stream *out, const char *id, const sdw_auth_caller *who)
{
    sdw_job_info info;
    sdw_error e = { 0 };
    if (!find_live_job(ctx, out, id, &info, who))
        return;
    sdw_job_state after;
    int rc = sdw_ring_cancel(ctx->ring, id, &after, &e);
    if (rc == SDW_ESTATE)
        return fail(out, 409, "job_finished", 0, "job %s has already finished", id);
    if (rc < 0)
        return reply_lookup_error(out, id, rc, &e);
    sdw_log(SDW_LOG_INFO, "job %s: cancel (%s)", id, sdw_job_state_name(after));
    json_object *o = json_object_new_object();
    json_object_object_add(o, "job_id", json_object_new_string(id));
    /* rbee's reply, whatever the job was doing: a running job stops at its
     * next step, which "state" tells a client that cares. */
    json_object_object_add(o, "status", json_object_new_string("cancelled"));
    json_object_object_add(o, "state", json_object_new_string(sdw_job_state_name(after)));
    reply_json(out, 200, o);
}

/* The lookup answers here, at once (404, 410, another key's job); the
 * stream itself goes to a stream thread, so this process takes its next
 * request right away. */
static void job_stream(const sdw_http_ctx *ctx, FCGX_Request *req, const char *id, const sdw_auth_caller *who)
{
    sdw_job_info info;
    if (!find_live_job(ctx, req->out, id, &info, who))
        return;
    uint64_t after = sdw_sse_parse_last_event_id(FCGX_GetParam("HTTP_LAST_EVENT_ID", req->envp));
    sdw_error e = { 0 };
    int rc = ctx->stream_start(ctx->host, req, id, after, &e);
    if (rc < 0)
        fail(req->out, 503, SDW_API_TOO_MANY_STREAMS, SDW_HTTP_RETRY_AFTER_S, "cannot open the stream of %s: %s", id,
             e.msg);
}

void sdw_http_stream(const sdw_http_ctx *ctx, FCGX_Request *req, const char *job_id, uint64_t after)
{
    sdw_sse_end end = sdw_sse_stream(ctx->ring, job_id, after, ctx->cfg->keepalive_interval, req->out);
    static const char *const how[] = { "finished", "client went away", "job or ring gone", "ring failed" };
    sdw_log(end == SDW_SSE_FAILED ? SDW_LOG_WARN : SDW_LOG_DEBUG, "job %s: stream ended (%s)", job_id,
            how[end]);
}

/* The stream's response head alone: whether the job can be streamed, and
 * as what, without holding a stream open. */
static void stream_head(const sdw_http_ctx *ctx, FCGX_Stream *out, const char *id, const sdw_auth_caller *who)
{
    sdw_job_info info;
    if (find_live_job(ctx, out, id, &info, who))
        sdw_sse_head(out);
}

/* ---- service endpoints ---- */

static void health(FCGX_Stream *out)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string("healthy"));
    json_object_object_add(o, "timestamp", json_now());
    reply_json(out, 200, o);
}

static json_object *model_names(const sdw_config *cfg)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < cfg->n_models; i++)
        json_object_array_add(a, json_object_new_string(cfg->models[i].name));
    return a;
}

/* The ring's slots by what they hold: they add up to "slots", and
 * "free_slots" counts only slots holding nothing, not kept results that a
 * submission would take when nothing is free ("evicted_results" counts
 * those taken). */
static json_object *ring_json(const sdw_engine_info *info)
{
    json_object *r = json_object_new_object();
    json_object_object_add(r, "engine", json_object_new_string(sdw_engine_state_name(info->state)));
    json_object_object_add(r, "slots", json_object_new_int((int)info->slots));
    json_object_object_add(r, "queued", json_object_new_int((int)info->queued));
    json_object_object_add(r, "running", json_object_new_int((int)info->running));
    json_object_object_add(r, "kept_results", json_object_new_int((int)info->kept));
    json_object_object_add(r, "free_slots", json_object_new_int((int)info->free_slots));
    json_object_object_add(r, "evicted_results", json_object_new_uint64(info->evicted));
    json_object_object_add(r, "recoveries", json_object_new_int((int)info->recoveries));
    return r;
}

/* {"name": {"family": ..., ...}, ...} from the engine's table. */
static json_object *model_families(const sdw_http_ctx *ctx)
{
    sdw_ring_model table[SDW_RING_MAX_MODELS];
    sdw_error e;
    int n = sdw_ring_models(ctx->ring, table, SDW_RING_MAX_MODELS, &e);
    json_object *o = json_object_new_object();
    for (int i = 0; i < n && i < SDW_RING_MAX_MODELS; i++)
        json_object_object_add(o, table[i].name, json_object_new_string(table[i].family));
    return o;
}

static void ready(const sdw_http_ctx *ctx, FCGX_Stream *out)
{
    sdw_engine_info info;
    sdw_error e = { 0 };
    int rc = sdw_ring_engine_status(ctx->ring, &info, &e);
    json_object *o = json_object_new_object();
    bool ok = rc == 0 && info.state == SDW_ENGINE_READY;
    json_object_object_add(o, "ready", json_object_new_boolean(ok));
    json_object_object_add(o, "timestamp", json_now());
    if (ok) {
        json_object_object_add(o, "models", model_names(ctx->cfg));
        json_object_object_add(o, "families", model_families(ctx));
    } else {
        char reason[sizeof e.msg + 16];
        if (rc < 0)
            snprintf(reason, sizeof reason, "job ring: %s", e.msg);
        else if (info.reason[0])
            snprintf(reason, sizeof reason, "%s", info.reason);
        else
            snprintf(reason, sizeof reason, "engine %s", sdw_engine_state_name(info.state));
        json_object_object_add(o, "reason", json_object_new_string(reason));
        if (rc == 0)
            json_object_object_add(o, "engine", json_object_new_string(sdw_engine_state_name(info.state)));
    }
    if (rc == 0)
        json_object_object_add(o, "ring", ring_json(&info));
    reply_json(out, ok ? 200 : 503, o);
}

/* The names of the LoRAs that fit model, as the engine found them. */
static json_object *fitting_loras(const sdw_http_ctx *ctx, const char *model)
{
    sdw_ring_lora *table = malloc(SDW_RING_MAX_LORAS * sizeof *table);
    sdw_error e;
    int n = table ? sdw_ring_loras(ctx->ring, table, SDW_RING_MAX_LORAS, &e) : 0;
    json_object *a = json_object_new_array();
    for (int i = 0; i < n && i < SDW_RING_MAX_LORAS; i++) {
        char why[SDW_RING_LORA_WHY];
        if (!sdw_ring_lora_fit(ctx->ring, table[i].name, model, why, sizeof why, &e))
            json_object_array_add(a, json_object_new_string(table[i].name));
    }
    free(table);
    return a;
}

/* Each model with what the engine found in it (null before it has loaded
 * them: family, prediction, inpainting, the LoRAs that fit it) and the
 * defaults a request for it gets. */
static void models(const sdw_http_ctx *ctx, FCGX_Stream *out)
{
    const sdw_config *cfg = ctx->cfg;
    sdw_ring_model table[SDW_RING_MAX_MODELS];
    sdw_error e;
    int n = sdw_ring_models(ctx->ring, table, SDW_RING_MAX_MODELS, &e);
    json_object *a = json_object_new_array();
    for (int i = 0; i < cfg->n_models; i++) {
        const sdw_config_model *cm = &cfg->models[i];
        const sdw_ring_model *rm = n > 0 ? ring_model(table, n, cm->name) : NULL;
        json_object *m = json_object_new_object();
        json_object_object_add(m, "name", json_object_new_string(cm->name));
        json_object_object_add(m, "default", json_object_new_boolean(i == 0));
        json_object_object_add(m, "family", rm ? json_object_new_string(rm->family) : NULL);
        json_object_object_add(m, "prediction", rm ? json_object_new_string(rm->prediction) : NULL);
        json_object_object_add(m, "inpainting", rm ? json_object_new_boolean(rm->inpaint) : NULL);
        json_object_object_add(m, "loras", rm ? fitting_loras(ctx, cm->name) : NULL);
        sdw_contract_defaults d = sdw_contract_builtin_defaults();
        apply_model_defaults(cm, rm, &d);
        json_object *dj = json_object_new_object();
        json_object_object_add(dj, "steps", json_object_new_int(d.steps));
        json_object_object_add(dj, "guidance_scale", json_object_new_double(d.guidance_scale));
        json_object_object_add(dj, "width", json_object_new_int(d.width));
        json_object_object_add(dj, "height", json_object_new_int(d.height));
        json_object_object_add(dj, "sampler",
                               d.sampler >= 0 ? json_object_new_string(sdw_sampler_name(d.sampler)) : NULL);
        json_object_object_add(m, "defaults", dj);
        json_object *mem = NULL;
        if (rm && rm->max_pixels) {
            mem = json_object_new_object();
            json_object_object_add(mem, "weights_bytes", json_object_new_uint64(rm->weights_bytes));
            json_object_object_add(mem, "bytes_per_pixel", json_object_new_uint64(rm->bytes_per_pixel));
            json_object_object_add(mem, "max_pixels", json_object_new_uint64(rm->max_pixels));
        }
        json_object_object_add(m, "memory", mem);
        json_object_array_add(a, m);
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "models", a);
    reply_json(out, 200, o);
}

/* ?full adds the process list, as php-fpm's status page does. */
static void pool_status(const sdw_http_ctx *ctx, FCGX_Stream *out, const char *query, const sdw_auth_caller *who)
{
    bool full = query && strstr(query, "full");
    if (full && !who->admin)
        return fail(out, 403, SDW_API_FORBIDDEN, 0, "the full pool status (processes, job ids) %s",
                    ctx->cfg->n_keys ? "needs an admin API key" : "is answered on the loopback address only");
    sdw_pool_stats st;
    sdw_board_stats(ctx->board, ctx->listen_fd, &st);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "pool", json_object_new_string("sdworker"));
    json_object_object_add(o, "process_manager",
                           json_object_new_string(st.mode == SDW_PM_STATIC ? "static" : "dynamic"));
    json_object_object_add(o, "start_time", json_time(st.start_time_s * 1000));
    json_object_object_add(o, "start_since", json_object_new_int64((int64_t)time(NULL) - st.start_time_s));
    json_object_object_add(o, "accepted_conn", json_object_new_uint64(st.accepted));
    json_object_object_add(o, "listen_queue", st.listen_queue >= 0 ? json_object_new_int(st.listen_queue) : NULL);
    json_object_object_add(o, "max_listen_queue",
                           st.listen_queue_max >= 0 ? json_object_new_int(st.listen_queue_max) : NULL);
    json_object_object_add(o, "idle_processes", json_object_new_int(st.idle));
    json_object_object_add(o, "active_processes", json_object_new_int(st.active));
    json_object_object_add(o, "total_processes", json_object_new_int(st.children));
    json_object_object_add(o, "retiring_processes", json_object_new_int(st.retiring));
    json_object_object_add(o, "max_children", json_object_new_int(st.max_children));
    json_object_object_add(o, "max_children_reached", json_object_new_uint64(st.max_children_reached));
    json_object_object_add(o, "active_streams", json_object_new_int(st.streams));
    json_object_object_add(o, "max_streams_per_child", json_object_new_int(st.max_streams_per_child));
    json_object_object_add(o, "reloads", json_object_new_int((int)st.reloads));
    sdw_engine_info info;
    sdw_error e = { 0 };
    if (sdw_ring_engine_status(ctx->ring, &info, &e) == 0)
        json_object_object_add(o, "ring", ring_json(&info));
    if (full) {
        int max = st.children + st.retiring + 16, max_streams = st.streams + 64;
        sdw_pool_proc *procs = calloc((size_t)max, sizeof *procs);
        sdw_pool_stream *streams = calloc((size_t)max_streams, sizeof *streams);
        if (procs && streams) {
            int n = sdw_board_list(ctx->board, procs, max);
            int ns = sdw_board_list_streams(ctx->board, streams, max_streams);
            json_object *a = json_object_new_array();
            for (int i = 0; i < n; i++) {
                json_object *pr = json_object_new_object();
                json_object_object_add(pr, "pid", json_object_new_int(procs[i].pid));
                json_object_object_add(pr, "state", json_object_new_string(procs[i].state));
                json_object_object_add(pr, "retiring", json_object_new_boolean(procs[i].retiring));
                json_object_object_add(pr, "start_since_ms", json_object_new_int64(procs[i].age_ms));
                json_object_object_add(pr, "streams", json_object_new_int(procs[i].streams));
                json_object *jobs = json_object_new_array();
                for (int k = 0; k < ns; k++)
                    if (streams[k].pid == procs[i].pid)
                        json_object_array_add(jobs, json_object_new_string(streams[k].job));
                json_object_object_add(pr, "jobs", jobs);
                json_object_array_add(a, pr);
            }
            json_object_object_add(o, "processes", a);
        }
        free(procs);
        free(streams);
    }
    reply_json(out, 200, o);
}

/* The page is built from shared memory alone (ring.h, "metrics"; the
 * scoreboard), so a scrape never waits on the engine. */
static void metrics(const sdw_http_ctx *ctx, FCGX_Stream *out, const sdw_auth_caller *who)
{
    if (!who->admin)
        return fail(out, 403, SDW_API_FORBIDDEN, 0, "the metrics %s",
                    ctx->cfg->n_keys ? "need an admin API key" : "are answered on the loopback address only");
    char *text;
    size_t len;
    sdw_error e = { 0 };
    if (sdw_metrics_render(ctx->cfg, ctx->ring, ctx->board, &text, &len, &e) < 0)
        return fail(out, 500, SDW_API_INTERNAL, 0, "%s", e.msg);
    reply_typed(out, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len, false);
    free(text);
}

/* ---- API keys ---- */

static bool loopback(const char *addr)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (addr && inet_pton(AF_INET, addr, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return addr && inet_pton(AF_INET6, addr, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* Who is asking, and whether they may: answers 401 or 429 itself and
 * returns false when not. Runs before routing so that no path under /v1/,
 * known or not, answers anything else without a key. */
static bool authorize(const sdw_http_ctx *ctx, FCGX_Request *req, const char *method, const char *path,
                      sdw_http_route r, sdw_auth_caller *who)
{
    const sdw_config *cfg = ctx->cfg;
    memset(who, 0, sizeof *who);
    if (!cfg->n_keys) {
        /* No keys: the API is open, and the host itself is the operator. */
        who->admin = loopback(FCGX_GetParam("REMOTE_ADDR", req->envp));
        return true;
    }
    /* /metrics is operator data: it takes a key, and the handler an admin one. */
    if (strncmp(path, "/v1/", 4) && strcmp(path, "/v1") && r != SDW_ROUTE_METRICS)
        return true;
    bool submit = r == SDW_ROUTE_JOBS && strcmp(method, "POST") == 0;
    sdw_error e = { 0 };
    int rc = sdw_auth_identify(cfg, FCGX_GetParam("HTTP_AUTHORIZATION", req->envp), who, &e);
    if (rc < 0) {
        /* RFC 6750: no error attribute when no credentials came at all. */
        sdw_api_error err = { .http_status = 401, .code = SDW_API_UNAUTHORIZED };
        snprintf(err.message, sizeof err.message, "%s", e.msg);
        if (submit)
            sdw_metrics_count_rejection(ctx->counters, SDW_METRICS_API_RBEE, err.code, false);
        reply_error(req->out, &err,
                    rc == SDW_ENOTFOUND ? "WWW-Authenticate: Bearer realm=\"sdworker\"\r\n"
                                        : "WWW-Authenticate: Bearer realm=\"sdworker\", error=\"invalid_token\"\r\n");
        return false;
    }
    if (submit && who->key->per_minute > 0) {
        int retry = 0;
        rc = sdw_auth_rate_take(ctx->rates, who->owner, who->key->per_minute, sdw_ring_now_ms(), &retry, &e);
        if (rc == SDW_ELIMIT) {
            reject_f(ctx, req->out, 429, SDW_API_RATE_LIMITED, retry, "%s (per_minute)", e.msg);
            return false;
        }
        if (rc < 0) {
            fail(req->out, 500, SDW_API_INTERNAL, 0, "%s", e.msg);
            return false;
        }
    }
    return true;
}

/* ---- dispatch ---- */

void sdw_http_handle(const sdw_http_ctx *ctx, FCGX_Request *req)
{
    FCGX_Stream *out = req->out;
    const char *method = FCGX_GetParam("REQUEST_METHOD", req->envp);
    head_only = method && strcmp(method, "HEAD") == 0;
    char path[1024];
    if (!method || !sdw_http_request_path(req->envp, path, sizeof path))
        return fail(out, 400, SDW_API_INVALID_REQUEST, 0, "the request carries no method or path");
    char id[SDW_JOB_ID_LEN + 1];
    sdw_http_route r = sdw_http_route_of(path, id);
    sdw_auth_caller who;
    if (!authorize(ctx, req, method, path, r, &who))
        return;
    const char *allow;
    switch (r) {
    case SDW_ROUTE_JOBS: allow = "POST"; break;
    case SDW_ROUTE_JOB: allow = "GET, HEAD, DELETE"; break;
    case SDW_ROUTE_NONE: return fail(out, 404, SDW_API_NOT_FOUND, 0, "no route for %.200s", path);
    default: allow = "GET, HEAD"; break;
    }
    /* HEAD goes wherever GET does, to the same handler: same status and
     * headers, and sdw_http_reply leaves the body out. */
    bool get = head_only || strcmp(method, "GET") == 0;
    switch (r) {
    case SDW_ROUTE_HEALTH: if (get) return health(out); break;
    case SDW_ROUTE_READY: if (get) return ready(ctx, out); break;
    case SDW_ROUTE_MODELS: if (get) return models(ctx, out); break;
    case SDW_ROUTE_METRICS: if (get) return metrics(ctx, out, &who); break;
    case SDW_ROUTE_POOL_STATUS:
        if (get)
            return pool_status(ctx, out, FCGX_GetParam("QUERY_STRING", req->envp), &who);
        break;
    case SDW_ROUTE_JOBS: if (strcmp(method, "POST") == 0) return submit_job(ctx, req, &who); break;
    case SDW_ROUTE_JOB:
        if (get)
            return job_status(ctx, out, id, &who);
        if (strcmp(method, "DELETE") == 0)
            return job_cancel(ctx, out, id, &who);
        break;
    case SDW_ROUTE_JOB_STREAM:
        if (head_only)
            return stream_head(ctx, out, id, &who);
        if (get)
            return job_stream(ctx, req, id, &who);
        break;
    case SDW_ROUTE_NONE: break;
    }
    char headers[64];
    snprintf(headers, sizeof headers, "Allow: %s\r\n", allow);
    sdw_api_error err = { .http_status = 405, .code = SDW_API_METHOD_NOT_ALLOWED };
    snprintf(err.message, sizeof err.message, "%.16s is not allowed on %.200s (allowed: %s)", method, path, allow);
    reply_error(out, &err, headers);
}
