/* The pool's scoreboard: one table in anonymous shared memory, mapped by the
 * master before it forks, where every child publishes its state (idle,
 * busy, its open streams and their jobs) and the master publishes the
 * process manager's settings. The master reads it to keep the right number
 * of children; a child reads it to leave connections to a sibling with room
 * for streams; the status page (http.c) reads it through the calls below.
 * It is the one thing the pool's process manager (pool.c) and its request
 * handlers (http.c) share, so that neither includes the other's header
 * the wrong way: pool.c -> http.h -> board.h, pool.c -> board.h.
 *
 * Fields marked atomic are written by one process and read by others with
 * the __atomic builtins (sdw_board_load/store); the rest change only in the
 * master between forks or reloads. */
#ifndef SDW_BOARD_H
#define SDW_BOARD_H

#include "config/config.h"
#include "ring/ring.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Scoreboard slots: enough for pm.max_children's upper bound (4096) twice,
 * so a reload can start a full new set while the old one drains. */
#define SDW_BOARD_SLOTS 8192
/* Open streams the status page can name, over all children: 16 times the
 * default capacity (16 x 128). Pages are backed only as entries are used. */
#define SDW_STREAM_SLOTS 32768

typedef enum sdw_child_state {
    SDW_CHILD_FREE = 0,  /* slot unused */
    SDW_CHILD_STARTING,  /* forked, not yet in accept: counts as idle */
    SDW_CHILD_IDLE,      /* the main thread waits for a connection */
    SDW_CHILD_BUSY,      /* the main thread answers a request */
} sdw_child_state;

typedef struct sdw_board_slot {
    pid_t pid;
    unsigned gen;
    int state;              /* sdw_child_state, atomic */
    int retiring;           /* atomic: told to exit after its current request */
    int streams;            /* atomic: open streams, written by the child */
    int max_streams;        /* its configuration's pm.max_streams_per_child */
    int64_t started_ms;     /* CLOCK_MONOTONIC */
    int64_t busy_ms;        /* atomic: when the main thread last took a request */
} sdw_board_slot;

/* One open stream, for the status page. A child claims a free entry (owner
 * 0 -> its slot + 1) and clears it when the stream ends; the master clears
 * the entries of a child that died. */
typedef struct sdw_stream_entry {
    int owner;              /* atomic */
    pid_t pid;
    sdw_job_id job;
} sdw_stream_entry;

/* The pool's own counters for /metrics (metrics.h), by API and code:
 * what only pool processes see, the requests refused before a job exists.
 * Atomic; they start at zero with the master and survive reloads. */
#define SDW_POOL_APIS 4           /* rbee; room for the OpenAI and A1111 routes */
#define SDW_POOL_REJECT_CODES 24  /* sdw_metrics_reject_codes, "other" last */
#define SDW_POOL_IMAGES 2         /* init_image, mask_image */

typedef struct sdw_pool_counters {
    uint64_t rejected[SDW_POOL_APIS][SDW_POOL_REJECT_CODES];
    uint64_t image_rejected[SDW_POOL_APIS][SDW_POOL_IMAGES];
} sdw_pool_counters;

typedef struct sdw_board {
    pid_t master;
    sdw_pm_mode mode;
    int max_children, min_spare, max_spare, max_streams;
    unsigned gen;           /* the configuration generation children must match */
    unsigned reloads;
    int high;               /* slots [0, high) may be in use */
    int stream_high;        /* atomic: entries [0, stream_high) may be in use */
    int64_t start_time_s;
    uint64_t accepted;      /* atomic */
    uint64_t max_reached;   /* atomic */
    sdw_pool_counters counters;
    sdw_board_slot slot[SDW_BOARD_SLOTS];
    sdw_stream_entry stream[SDW_STREAM_SLOTS];
} sdw_board;

static inline int sdw_board_load(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void sdw_board_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Whether a child can take another stream. */
static inline bool sdw_board_has_room(const sdw_board_slot *sl)
{
    return __atomic_load_n(&sl->streams, __ATOMIC_ACQUIRE) < sl->max_streams;
}

typedef struct sdw_pool_stats {
    sdw_pm_mode mode;
    int max_children;
    int children;                   /* current configuration's children */
    int idle, active;               /* idle in accept / answering a request */
    int streams;                    /* open event streams, retiring children's too */
    int max_streams_per_child;
    int retiring;                   /* children finishing before they exit */
    uint64_t accepted;              /* requests accepted since the start */
    uint64_t max_children_reached;  /* times every child was busy at max_children */
    int64_t start_time_s;           /* CLOCK_REALTIME seconds */
    unsigned reloads;
    int listen_queue, listen_queue_max; /* -1 when unknown (Unix socket) */
} sdw_pool_stats;

typedef struct sdw_pool_proc {
    int pid;
    const char *state;              /* "starting", "idle", "busy" (the main thread's) */
    bool retiring;                  /* exits after its current request and streams */
    int64_t age_ms;
    int streams;                    /* open event streams */
} sdw_pool_proc;

typedef struct sdw_pool_stream {
    int pid;                        /* the child serving it */
    sdw_job_id job;
} sdw_pool_stream;

/* idle: spare children, waiting in accept (or about to) with room for
 * another stream; busy: the other current ones; streams: open streams,
 * retiring children's too; retiring: children finishing before they exit. */
void sdw_board_count(const sdw_board *b, int *total, int *idle, int *busy, int *streams, int *retiring);
/* The counts the status page shows; listen_fd is the listening TCP socket
 * whose accept queue to report, -1 for a Unix socket (unknown). */
void sdw_board_stats(const sdw_board *b, int listen_fd, sdw_pool_stats *st);
/* Lists up to max children; returns how many were written. */
int sdw_board_list(const sdw_board *b, sdw_pool_proc *out, int max);
/* Lists up to max open streams; returns how many were written. */
int sdw_board_list_streams(const sdw_board *b, sdw_pool_stream *out, int max);

#endif
