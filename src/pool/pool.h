/* The prefork FastCGI pool (sdworker-fcgi): one master process that binds the
 * socket, opens the job ring and keeps a set of child processes alive, in the
 * manner of php-fpm's process manager; each child accepts one FastCGI request
 * at a time and answers it (http.h).
 *
 * Process management:
 *   static   pm.max_children children at all times.
 *   dynamic  pm.start_servers at boot; more are forked while fewer than
 *            pm.min_spare_servers sit idle in accept (never more than
 *            pm.max_children), idle ones beyond pm.max_spare_servers are told
 *            to exit.
 * A child exits after pm.max_requests requests (0 = never) and is replaced.
 * A child that dies is replaced; its open stream ends, and the client
 * reconnects with Last-Event-ID.
 *
 * Children report their state (idle, busy, streaming) in a scoreboard in
 * anonymous shared memory, which GET /v1/pool/status reads. In dynamic mode a
 * child that changes the idle count past a spare bound sends the master
 * SIGUSR2, so the master sleeps in ppoll without a timer.
 *
 * Signals to the master:
 *   SIGHUP          re-read the configuration file and replace the children:
 *                   the old ones finish their current request (an event
 *                   stream included) and exit; new ones take new requests.
 *                   `listen` and `ring.name` changes need a restart (warned).
 *   SIGTERM/SIGINT  stop: close the socket, let the children finish their
 *                   current request for the grace period, then SIGKILL the
 *                   rest (open streams end; clients reconnect later); exit 0.
 * Signals to a child: SIGQUIT, SIGTERM or SIGINT = finish the current
 * request, then exit. */
#ifndef SDW_POOL_H
#define SDW_POOL_H

#include "base/err.h"
#include "config/config.h"
#include "ring/ring.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct sdw_pool_options {
    const char *config_path;        /* NULL = defaults only */
    const char *const *overrides;   /* "key=value", applied after the file */
    int n_overrides;
    int ring_wait_s;                /* keep retrying sdw_ring_open this long */
    int grace_s;                    /* SIGTERM: how long current requests may go on */
} sdw_pool_options;

/* Loads and validates the configuration the options name. */
int sdw_pool_load_config(const sdw_pool_options *o, sdw_config *c, sdw_error *e);

/* Runs the master until SIGTERM/SIGINT. Returns 0 after a clean stop, a
 * negative sdw_status when the socket or the ring could not be set up. */
int sdw_pool_run(const sdw_pool_options *o, sdw_error *e);

typedef struct sdw_pool sdw_pool;

typedef struct sdw_pool_stats {
    sdw_pm_mode mode;
    int max_children;
    int children;                   /* current configuration's children */
    int idle, active;               /* idle in accept / answering a request */
    int streams;                    /* active children inside an event stream */
    int retiring;                   /* children finishing before they exit */
    uint64_t accepted;              /* requests accepted since the start */
    uint64_t max_children_reached;  /* times every child was busy at max_children */
    int64_t start_time_s;           /* CLOCK_REALTIME seconds */
    unsigned reloads;
    int listen_queue, listen_queue_max; /* -1 when unknown (Unix socket) */
} sdw_pool_stats;

/* A child's view of the pool, for the request handlers. */
void sdw_pool_stats_get(const sdw_pool *p, sdw_pool_stats *st);
typedef struct sdw_pool_proc {
    int pid;
    const char *state;              /* "starting", "idle", "busy", "stream" */
    bool retiring;                  /* exits after its current request */
    int64_t age_ms;
    sdw_job_id job;                 /* the job streamed, "" when none */
} sdw_pool_proc;

/* Lists up to max children; returns how many were written. */
int sdw_pool_list(const sdw_pool *p, sdw_pool_proc *out, int max);
/* Marks the calling child as streaming job_id's events, or (NULL) as out of
 * the stream again. */
void sdw_pool_set_streaming(sdw_pool *p, const char *job_id);

#endif
