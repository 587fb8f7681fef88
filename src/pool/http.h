/* The HTTP API of sdworker, answered by a pool child for one FastCGI request.
 *
 *   POST   /v1/jobs               submit an rbee operation -> 202 {job_id, sse_url}
 *   GET    /v1/jobs/{id}          job status
 *   DELETE /v1/jobs/{id}          cancel
 *   GET    /v1/jobs/{id}/stream   server-sent events (sse.h)
 *   GET    /health, /ready, /v1/models, /v1/pool/status
 *   GET    /metrics               Prometheus text format (metrics.h)
 *   HEAD   wherever GET goes: GET's status and headers, no body (on a
 *          stream, the event-stream head without holding the stream)
 *   (the reference for clients, with every field and code: doc/api.md)
 *
 * Routing uses SCRIPT_NAME + PATH_INFO when PATH_INFO is set (nginx's
 * configuration in conf/nginx), else DOCUMENT_URI, else REQUEST_URI without
 * its query; one trailing slash is ignored. Every error body is
 * {"error":{"code","message"}} (sdw_api_error_json).
 *
 * Decisions:
 * - Jobs are accepted whatever the engine state (starting, loading, dead):
 *   the ring keeps queued jobs across engine restarts. Only an engine that
 *   has been DEAD with no heartbeat for SDW_HTTP_DEAD_ENGINE_S makes submits
 *   fail with 503 engine_unavailable (+ Retry-After), so clients do not
 *   queue work nobody will run.
 * - An expired job (finished longer ago than result_ttl, or its slot taken
 *   for newer work when every slot was in use) answers 410 with code
 *   "result_expired" on GET, DELETE and /stream; an id never seen answers
 *   404.
 * - DELETE of a queued or running job: 200 {"job_id","status":"cancelled",
 *   "state"}, rbee's reply; "state" is "cancelled" for a queued job and
 *   "running" for one the engine stops at its next step (its stream then
 *   ends with an error event of code "cancelled"). Of a finished job: 409
 *   job_finished.
 * - A full queue: 503 queue_full with Retry-After: SDW_HTTP_RETRY_AFTER_S.
 * - API keys (auth.h), when the configuration has any: every path under
 *   /v1/ answers 401 unauthorized (with WWW-Authenticate: Bearer) without a
 *   valid key, before routing, so that nothing about the API is learnt
 *   without one; /health and /ready stay open for probes. A key sees,
 *   streams and cancels only its own jobs: another key's job answers 404 as
 *   an unknown one would. An expired job answers 410 to any key (its data
 *   is gone, and an id whose slot went to new work has no owner left). An
 *   admin key may act on every job. POST /v1/jobs beyond the key's
 *   per_minute answers 429 rate_limited, beyond its max_queued 429
 *   too_many_queued, both with Retry-After. A POST that per_minute lets
 *   through counts whether the job is then accepted or not (a 400, a 429
 *   too_many_queued): the rate bounds the work a key makes the pool do.
 * - /v1/pool/status?full (pids and the job ids streamed) answers only an
 *   admin key, and with no keys configured only a client on the loopback
 *   address (REMOTE_ADDR 127.0.0.0/8 or ::1, i.e. on the host itself
 *   through a local nginx); others get 403 forbidden. The plain status has
 *   no job ids and answers any caller the API answers.
 * - /metrics is operator data, answered as the full pool status is: an
 *   admin key when keys are configured (401 without a valid key, 403 with
 *   another), the loopback address when none are (403 from elsewhere).
 *   Submissions refused here count in it by code (sdw_metrics_count_rejection),
 *   401 and 429 on POST /v1/jobs included.
 * - A stream when the process has no room for another (a thread each, up to
 *   pm.max_streams_per_child): 503 too_many_streams with Retry-After. */
#ifndef SDW_HTTP_H
#define SDW_HTTP_H

#include "config/config.h"
#include "pool/auth.h"
#include "pool/board.h"
#include "ring/ring.h"

#include <fcgiapp.h>
#include <stdbool.h>
#include <stddef.h>

#define SDW_HTTP_DEAD_ENGINE_S 60
#define SDW_HTTP_RETRY_AFTER_S 5

typedef struct sdw_http_ctx {
    const sdw_config *cfg;
    sdw_ring *ring;
    const sdw_board *board;         /* the pool's scoreboard, for the status page */
    int listen_fd;                  /* the listening TCP socket, -1 for a Unix one */
    sdw_auth_rates *rates;          /* per-key submission rates, shared by the pool */
    sdw_pool_counters *counters;    /* the pool's /metrics counters, in the scoreboard */
    /* Hands a stream request, looked up and allowed, to the process's
     * stream threads (the pool's; host is theirs): 0 when they own req and
     * run sdw_http_stream on it, else an error with req still the
     * caller's to answer. */
    int (*stream_start)(void *host, FCGX_Request *req, const char *job_id, uint64_t after, sdw_error *e);
    void *host;
} sdw_http_ctx;

/* The pure parsing of a request's FastCGI parameters, apart from the
 * answering so that the fuzz targets (tests/fuzz/fuzz_http.c) reach it
 * without a socket, a ring or a pool. */
typedef enum sdw_http_route {
    SDW_ROUTE_NONE = 0,
    SDW_ROUTE_HEALTH,
    SDW_ROUTE_READY,
    SDW_ROUTE_MODELS,
    SDW_ROUTE_POOL_STATUS,
    SDW_ROUTE_JOBS,
    SDW_ROUTE_JOB,          /* /v1/jobs/{id} */
    SDW_ROUTE_JOB_STREAM,   /* /v1/jobs/{id}/stream */
    SDW_ROUTE_METRICS,      /* /metrics */
} sdw_http_route;

/* The request path as the client sent it (see routing above), without the
 * query and one trailing slash, truncated to n - 1 bytes; false when none of
 * the variables is set. */
bool sdw_http_request_path(FCGX_ParamArray env, char *buf, size_t n);

/* The route of a path from sdw_http_request_path; for the two job routes,
 * job_id receives the id (which has the form of sdw_job_id). */
sdw_http_route sdw_http_route_of(const char *path, char job_id[SDW_JOB_ID_LEN + 1]);

/* Whether a Content-Type value (may be NULL) is application/json, with or
 * without parameters. */
bool sdw_http_is_json_type(const char *content_type);

/* Answers one accepted request completely (the caller finishes it), except
 * an event stream, which it hands on through ctx->stream_start: then the
 * request is no longer the caller's. */
void sdw_http_handle(const sdw_http_ctx *ctx, FCGX_Request *req);

/* The stream thread's half of GET /v1/jobs/{id}/stream: the SSE response
 * (sse.h) until the job ends or the client goes away. */
void sdw_http_stream(const sdw_http_ctx *ctx, FCGX_Request *req, const char *job_id, uint64_t after);

/* Writes a complete JSON response: status line, Content-Type, optional extra
 * header lines (each ending in \r\n, may be NULL) and the body. Returns 0,
 * or -1 when the connection failed. */
int sdw_http_reply(FCGX_Stream *out, int status, const char *extra_headers, const char *body);

#endif
