/* Server-sent events for GET /v1/jobs/{id}/stream.
 *
 * While the job is queued the stream says where, at once and at every move:
 *   event: queued\ndata: {"type":"queued","position":N}\n\n
 * (1 = next to run; no id line, so Last-Event-ID is untouched). Then it
 * replays every event after Last-Event-ID (or from the first),
 * then waits on the job ring for new ones, writing each as
 *   id: N\nevent: NAME\ndata: JSON\n\n
 * and flushing it at once (nginx passes it on unbuffered: X-Accel-Buffering
 * no). With nothing to send for keepalive_interval seconds it writes a
 * ": keep-alive" comment. It ends after the complete or error event, when
 * a write fails because the client went away, or when the job or the whole
 * ring is gone (the supervisor replaced it: the client reconnects and finds
 * the new one). */
#ifndef SDW_SSE_H
#define SDW_SSE_H

#include "ring/ring.h"

#include <fcgiapp.h>
#include <stdint.h>

typedef enum sdw_sse_end {
    SDW_SSE_FINISHED = 0,    /* the job ended and every event was sent */
    SDW_SSE_DISCONNECTED,    /* a write failed */
    SDW_SSE_GONE,            /* the job expired or vanished mid-stream, or the ring was replaced */
    SDW_SSE_FAILED,          /* the ring failed */
} sdw_sse_end;

/* Parses a Last-Event-ID header value: a decimal event id, else 0 (replay
 * everything). */
uint64_t sdw_sse_parse_last_event_id(const char *value);

/* Writes the response headers alone and flushes them (HEAD on a stream);
 * returns 0, or -1 when the client is gone. */
int sdw_sse_head(FCGX_Stream *out);

/* Writes the response headers and streams the job's events. */
sdw_sse_end sdw_sse_stream(sdw_ring *ring, const char *job_id, uint64_t after, int keepalive_s,
                           FCGX_Stream *out);

#endif
