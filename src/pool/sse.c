#include "pool/sse.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t sdw_sse_parse_last_event_id(const char *value)
{
    if (!value)
        return 0;
    while (*value == ' ' || *value == '\t')
        value++;
    if (*value < '0' || *value > '9')
        return 0;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(value, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    if (errno || *end)
        return 0;
    return (uint64_t)v;
}

static int put(FCGX_Stream *out, const char *s, size_t n)
{
    return n == 0 || FCGX_PutStr(s, (int)n, out) == (int)n ? 0 : -1;
}

/* One event; a data field that spans lines becomes several data: lines, as
 * the SSE format requires (the engine's JSON is one line in practice). */
static int write_event(FCGX_Stream *out, const sdw_ring_event *ev)
{
    char head[96];
    int n = snprintf(head, sizeof head, "id: %" PRIu64 "\nevent: %s\n", ev->id, ev->name);
    if (put(out, head, (size_t)n) < 0)
        return -1;
    const char *p = ev->data, *end = ev->data + ev->len;
    do {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        if (put(out, "data: ", 6) < 0 || put(out, p, (size_t)(stop - p)) < 0 || put(out, "\n", 1) < 0)
            return -1;
        p = nl ? nl + 1 : end;
    } while (p < end);
    if (put(out, "\n", 1) < 0)
        return -1;
    return FCGX_FFlush(out) < 0 ? -1 : 0;
}

static int keep_alive(FCGX_Stream *out)
{
    static const char ka[] = ": keep-alive\n\n";
    return put(out, ka, sizeof ka - 1) < 0 || FCGX_FFlush(out) < 0 ? -1 : 0;
}

/* While the job waits in the queue: a queued event at once and another at
 * every move. These carry no id: they are the queue's state now, not events
 * of the job's log, so a reconnect gets the current place, not a replay.
 * Returns true when the job has left the queue (its events follow), false
 * with *end filled when the stream is over. */
static bool stream_queue(sdw_ring *ring, const char *job_id, int keepalive_s, FCGX_Stream *out,
                         sdw_sse_end *end)
{
    unsigned sent = UINT_MAX;
    for (;;) {
        unsigned pos;
        sdw_error e = { 0 };
        int rc = sdw_ring_wait_queue_position(ring, job_id, sent, sent == UINT_MAX ? 0 : keepalive_s * 1000,
                                              &pos, &e);
        if (rc == 1 && pos == 0)
            return true;
        int w = 0;
        if (rc == 1) {
            char ev[96];
            int n = snprintf(ev, sizeof ev, "event: queued\ndata: {\"type\":\"queued\",\"position\":%u}\n\n", pos);
            w = put(out, ev, (size_t)n) < 0 || FCGX_FFlush(out) < 0 ? -1 : 0;
            sent = pos;
        } else if (rc == 0) {
            if (sdw_ring_stale(ring) == 1) {
                *end = SDW_SSE_GONE;
                return false;
            }
            w = keep_alive(out);
        } else {
            *end = rc == SDW_ENOTFOUND || rc == SDW_RING_RETIRED ? SDW_SSE_GONE : SDW_SSE_FAILED;
            return false;
        }
        if (w < 0) {
            *end = SDW_SSE_DISCONNECTED;
            return false;
        }
    }
}

int sdw_sse_head(FCGX_Stream *out)
{
    static const char headers[] = "Status: 200 OK\r\n"
                                  "Content-Type: text/event-stream\r\n"
                                  "Cache-Control: no-cache\r\n"
                                  "X-Accel-Buffering: no\r\n"
                                  "\r\n";
    return put(out, headers, sizeof headers - 1) < 0 || FCGX_FFlush(out) < 0 ? -1 : 0;
}

sdw_sse_end sdw_sse_stream(sdw_ring *ring, const char *job_id, uint64_t after, int keepalive_s,
                           FCGX_Stream *out)
{
    if (sdw_sse_head(out) < 0)
        return SDW_SSE_DISCONNECTED;
    sdw_sse_end end;
    if (!stream_queue(ring, job_id, keepalive_s, out, &end))
        return end;
    for (;;) {
        sdw_ring_event ev;
        sdw_error e = { 0 };
        int rc = sdw_ring_wait_event(ring, job_id, after, keepalive_s * 1000, &ev, &e);
        if (rc == 1) {
            after = ev.id;
            int w = write_event(out, &ev);
            sdw_ring_event_free(&ev);
            if (w < 0)
                return SDW_SSE_DISCONNECTED;
        } else if (rc == 0) {
            /* A ring replaced without being marked retired (it could not
             * be read) is seen here; the client reconnects to a fresh child. */
            if (sdw_ring_stale(ring) == 1)
                return SDW_SSE_GONE;
            if (keep_alive(out) < 0)
                return SDW_SSE_DISCONNECTED;
        } else if (rc == SDW_RING_END) {
            return SDW_SSE_FINISHED;
        } else if (rc == SDW_ENOTFOUND || rc == SDW_RING_RETIRED) {
            return SDW_SSE_GONE;
        } else {
            return SDW_SSE_FAILED;
        }
    }
}
