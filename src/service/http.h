/* The HTTP API of sdworker, answered by a pool child for one FastCGI request.
 *
 *   POST   /v1/jobs               submit an rbee operation -> 202 {job_id, sse_url}
 *   GET    /v1/jobs/{id}          job status
 *   DELETE /v1/jobs/{id}          cancel
 *   GET    /v1/jobs/{id}/stream   server-sent events (sse.h)
 *   GET    /health, /ready, /v1/models, /v1/pool/status
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
 * - A full queue: 503 queue_full with Retry-After: SDW_HTTP_RETRY_AFTER_S. */
#ifndef SDW_HTTP_H
#define SDW_HTTP_H

#include "service/config.h"
#include "pool.h"
#include "ring.h"

#include <fcgiapp.h>

#define SDW_HTTP_DEAD_ENGINE_S 60
#define SDW_HTTP_RETRY_AFTER_S 5

typedef struct sdw_http_ctx {
    const sdw_config *cfg;
    sdw_ring *ring;
    sdw_pool *pool;
} sdw_http_ctx;

/* Answers one accepted request completely (the caller finishes it). */
void sdw_http_handle(const sdw_http_ctx *ctx, FCGX_Request *req);

/* Writes a complete JSON response: status line, Content-Type, optional extra
 * header lines (each ending in \r\n, may be NULL) and the body. Returns 0,
 * or -1 when the connection failed. */
int sdw_http_reply(FCGX_Stream *out, int status, const char *extra_headers, const char *body);

#endif
