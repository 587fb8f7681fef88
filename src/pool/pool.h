/* The prefork FastCGI pool (sdworker-fcgi): one master process that binds the
 * socket, opens the job ring and keeps a set of child processes alive, in the
 * manner of php-fpm's process manager. A child's main thread accepts one
 * FastCGI request at a time and answers it (http.h), except an event stream:
 * that goes to a thread of its own (64 KiB of stack, detached), so that a
 * stream costs a thread and a connection, not a process, and short requests
 * never wait behind streams. A child serves up to pm.max_streams_per_child
 * streams; one request more answers 503 too_many_streams (Retry-After).
 *
 * Process management:
 *   static   pm.max_children children at all times.
 *   dynamic  pm.start_servers at boot; more are forked while fewer than
 *            pm.min_spare_servers are spare (waiting in accept with room
 *            for another stream; never more than pm.max_children), spare
 *            ones with no stream beyond pm.max_spare_servers are told to
 *            exit.
 * A child with no room for another stream stops competing for connections
 * while a sibling with room is taking them, so streams spread over the
 * children and the short requests go to a child that can take anything;
 * when every child is full (or the ones with room are held up by a slow
 * request) the full ones accept again (and answer streams with 503).
 * A child retires after pm.max_requests requests (0 = never) and is replaced.
 * A child that dies is replaced; its open streams end, and their clients
 * reconnect with Last-Event-ID.
 *
 * Children report their state (idle, busy) and their streams in a
 * scoreboard in anonymous shared memory, which GET /v1/pool/status reads.
 * In dynamic mode a child that changes the spare count past a bound sends
 * the master SIGUSR2, so the master sleeps in ppoll without a timer.
 *
 * Signals to the master:
 *   SIGHUP          re-read the configuration file and replace the children:
 *                   the old ones stop accepting, finish their current
 *                   request and their open streams, and exit; new ones take
 *                   new requests. `listen` and `ring.name` changes need a
 *                   restart (warned).
 *   SIGTERM/SIGINT  stop: close the socket, let the children finish their
 *                   requests and streams for the grace period, then SIGKILL
 *                   the rest (open streams end; clients reconnect later);
 *                   exit 0.
 * Signals to a child: SIGQUIT, SIGTERM or SIGINT = stop accepting, finish
 * the current request and the open streams, then exit. Only the main
 * thread takes them, and only while it waits for a connection; stream
 * threads block every signal. */
#ifndef SDW_POOL_H
#define SDW_POOL_H

#include "base/err.h"
#include "config/config.h"
#include "ring/ring.h"

#include <fcgiapp.h>

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

#endif
