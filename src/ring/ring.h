/* The shared-memory job ring between the FastCGI pool processes (submit,
 * cancel, status, stream), the engine process (take work, publish events) and
 * the supervisor (engine state, engine death, expiry).
 *
 * One POSIX shared-memory object (shm_open name, e.g. "/sdworker") holds a
 * header and a fixed number of job slots. Each slot owns three fixed areas:
 * the request input (an opaque blob, sdw_job_request_serialize's output),
 * an append-only log of small events, and one "image" area holding the
 * newest large event (a preview or the complete event). See
 * doc/architecture.md, "The job ring".
 *
 * Job states and the only allowed transitions:
 *
 *   FREE -> QUEUED              sdw_ring_submit
 *   QUEUED -> RUNNING           sdw_ring_take (the oldest queued job first)
 *   QUEUED -> CANCELLED         sdw_ring_cancel (immediately, error event)
 *   QUEUED -> FAILED            sdw_ring_fail (e.g. the engine rejects it)
 *   RUNNING -> DONE             sdw_ring_complete
 *   RUNNING -> FAILED           sdw_ring_fail, sdw_ring_engine_died
 *   RUNNING -> CANCELLED        sdw_ring_finish_cancelled (after the engine
 *                               saw sdw_ring_cancel's request between steps)
 *   DONE|FAILED|CANCELLED -> EXPIRED   sdw_ring_expire / sdw_ring_sweep once
 *                               the retention time has passed; data dropped,
 *                               the id still answers "expired"
 *   EXPIRED -> FREE             sdw_ring_submit reusing the slot
 *
 * Lifetime: the ring outlives its processes. The supervisor attaches with
 * sdw_ring_attach, which re-opens the object left by the previous
 * supervisor when its version and layout (slot count and area sizes)
 * match, keeping queued jobs and kept results and failing the jobs that
 * were RUNNING at the stop (code "engine_stopped"), and replaces it
 * otherwise. A stop does not remove it; only a reboot (/dev/shm is a
 * tmpfs) or sdw_ring_unlink does. Pool processes notice a replaced ring
 * with sdw_ring_stale and open the name again.
 *
 * Any other transition fails with SDW_ESTATE and changes nothing.
 *
 * Events: every job has event ids 1, 2, 3, ... in publication order. Small
 * events (progress, error and any other name) are kept in the slot's log
 * and are never dropped: an append that does not fit fails loudly instead.
 * A preview is superseded by the next preview or by the complete event (a
 * reader that arrives late skips it; the final image is in the complete
 * event). The complete event is never superseded. So a stream opened late,
 * twice, or again with Last-Event-ID replays every progress/complete/error
 * event after the id it names.
 *
 * Concurrency: one process-shared robust mutex guards the ring; a process
 * that dies holding it is recovered from by the next locker, which repairs
 * the slot the dead process was writing. Blocking waits are futex waits on
 * per-slot and ring-wide counters, so a process killed while waiting leaves
 * nothing behind; there is no sleep-polling. The threads of one process may
 * call in at once (the pool's stream threads each wait on their own job):
 * the calls keep no state outside the mapping and their arguments.
 *
 * Return values: 0 or a positive count/flag on success, a negative sdw_status
 * (SDW_EFULL, SDW_ELIMIT, SDW_ESTATE and SDW_ETOOBIG among them) on failure, with e filled. */
#ifndef SDW_RING_H
#define SDW_RING_H

#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Job ids are "job-" followed by 32 lower-case hex digits (128 random bits
 * from getrandom), in the shape of rbee's job-<uuid> ids. */
#define SDW_JOB_ID_LEN 36
typedef char sdw_job_id[SDW_JOB_ID_LEN + 1];

typedef enum sdw_job_state {
    SDW_JOB_FREE = 0,
    SDW_JOB_QUEUED,
    SDW_JOB_RUNNING,
    SDW_JOB_DONE,
    SDW_JOB_FAILED,
    SDW_JOB_CANCELLED,
    SDW_JOB_EXPIRED,
} sdw_job_state;

typedef enum sdw_engine_state {
    SDW_ENGINE_STARTING = 0,
    SDW_ENGINE_LOADING,
    SDW_ENGINE_READY,
    SDW_ENGINE_DEAD,
} sdw_engine_state;

const char *sdw_job_state_name(sdw_job_state s);
const char *sdw_engine_state_name(sdw_engine_state s);
/* The transition table above. */
bool sdw_job_transition_allowed(sdw_job_state from, sdw_job_state to);

typedef struct sdw_ring_config {
    const char *name;       /* shm_open name: "/" then up to 200 of [A-Za-z0-9._-] */
    unsigned slots;         /* job slots (default 16) */
    unsigned max_queued;    /* queued jobs allowed at once (default 8, <= slots) */
    size_t input_bytes;     /* per-slot request input (default 4 MiB + 64 KiB:
                               two 2 MiB images and the parameters) */
    size_t log_bytes;       /* per-slot small-event log (default 64 KiB: 150
                               progress events take under 20 KiB) */
    size_t image_bytes;     /* per-slot large event: a base64 PNG inside JSON.
                               A WxH RGB PNG can reach ~3WH bytes, 4WH as
                               base64, so the default 2 MiB covers 512x512
                               (and 640x640); 2048x2048 needs ~17 MiB. */
    unsigned retention_s;   /* finished jobs stay readable this long (default 600) */
} sdw_ring_config;

sdw_ring_config sdw_ring_default_config(const char *name);

typedef struct sdw_ring sdw_ring;

/* Creates and initialises a new ring; fails if the name exists. Pages are
 * only backed when touched, but the whole size must fit in /dev/shm. */
int sdw_ring_create(const sdw_ring_config *cfg, sdw_ring **out, sdw_error *e);

/* What sdw_ring_attach found under the name. */
typedef struct sdw_ring_attach_info {
    bool created;           /* a new ring was made (none was there, or it was replaced) */
    char replaced[256];     /* why an existing object was replaced; "" when none was */
    int dropped;            /* jobs lost with the replaced ring; -1 when it was unreadable */
    unsigned queued, kept;  /* of a re-opened ring: queued jobs and finished results kept */
    unsigned interrupted;   /* of a re-opened ring: jobs RUNNING at the stop, now FAILED */
} sdw_ring_attach_info;

/* The supervisor's open. Takes the ring's owner lock (an flock on the
 * object, held until sdw_ring_close by this process and by the engine it
 * forks), waiting up to wait_ms for a previous owner to exit (SDW_ESTATE
 * when it does not); then re-opens
 * the ring there when its version and layout match cfg (max_queued and
 * retention_s are taken from cfg; jobs RUNNING at the stop fail with an
 * "engine_stopped" error event; the engine state becomes STARTING), or
 * replaces a ring of another layout or version, or a corrupt one, by a new
 * one. A replaced ring that could be read is marked retired first, which
 * ends the pool's streams on it. info says what happened, for the log. */
int sdw_ring_attach(const sdw_ring_config *cfg, int wait_ms, sdw_ring **out, sdw_ring_attach_info *info,
                    sdw_error *e);

/* Maps an existing ring created by another process; sizes come from it.
 * SDW_ENOTFOUND when there is none, SDW_EFORMAT when it is not a complete
 * ring of this version (e.g. one being replaced: try again). */
int sdw_ring_open(const char *name, sdw_ring **out, sdw_error *e);
void sdw_ring_close(sdw_ring *r);
int sdw_ring_unlink(const char *name, sdw_error *e);

/* 1 when this mapping is no longer the ring under its name (the supervisor
 * retired it, replaced it with a new object, or it was removed): close it
 * and sdw_ring_open the name again. 0 otherwise, also when it cannot tell.
 * A few system calls; the pool calls it before every request. */
int sdw_ring_stale(sdw_ring *r);

/* ---- pool side ---- */

/* FREE/EXPIRED -> QUEUED. Copies the input into a slot and writes the new id.
 * The slot is a free one if any (after expiring finished jobs past their
 * retention); only when none is free does the oldest finished job give its
 * slot up before its retention ends (counted in sdw_engine_info.evicted;
 * its id then answers expired). SDW_EFULL when every slot is queued or
 * running, when max_queued jobs are already waiting, or while the ring is
 * being replaced; SDW_ETOOBIG when len exceeds input_bytes. Wakes the
 * engine. */
int sdw_ring_submit(sdw_ring *r, const void *input, size_t len, sdw_job_id id, sdw_error *e);
/* sdw_ring_submit for an owner (an API key's id; 0 = none), recorded in the
 * job (sdw_job_info.owner). SDW_ELIMIT, before any other check of the
 * queue, when owner_max_queued (0 = no limit) of the owner's jobs are
 * already queued. */
int sdw_ring_submit_as(sdw_ring *r, const void *input, size_t len, uint32_t owner, unsigned owner_max_queued,
                       sdw_job_id id, sdw_error *e);

/* Cancels a job: a QUEUED job becomes CANCELLED at once (with an error event
 * of code "cancelled"); a RUNNING one gets its cancel-requested flag set and
 * finishes as CANCELLED when the engine next checks. Returns the state the
 * job is in afterwards. SDW_ESTATE for a finished job. */
int sdw_ring_cancel(sdw_ring *r, const char *id, sdw_job_state *after, sdw_error *e);

typedef struct sdw_job_info {
    sdw_job_state state;
    uint32_t owner;             /* sdw_ring_submit_as's; 0 for an id known only as gone */
    unsigned queue_position;    /* 1 = next to run; 0 when not queued */
    bool cancel_requested;
    uint64_t last_event_id;
    int64_t created_ms, started_ms, finished_ms; /* CLOCK_REALTIME ms, 0 = not yet */
} sdw_job_info;

/* SDW_ENOTFOUND for an unknown id; an expired job reports SDW_JOB_EXPIRED,
 * and so does one whose slot has gone to new work since (about the last
 * 65536 such ids are remembered), with nothing else known about it. */
int sdw_ring_job_status(sdw_ring *r, const char *id, sdw_job_info *info, sdw_error *e);

/* A malloc'd copy of the job's input (for a status reply that shows the
 * request); SDW_ENOTFOUND once the job expired. */
int sdw_ring_read_input(sdw_ring *r, const char *id, void **input, size_t *len, sdw_error *e);

typedef struct sdw_ring_event {
    uint64_t id;
    char name[16];          /* "progress", "preview", "complete", "error", ... */
    char *data;             /* malloc'd, NUL-terminated JSON */
    size_t len;
} sdw_ring_event;

#define SDW_RING_END 2
#define SDW_RING_RETIRED 3

/* Waits up to timeout_ms for the first event with an id greater than after.
 * Returns 1 with *ev filled (free it with sdw_ring_event_free), 0 on
 * timeout (send a keep-alive and call again), SDW_RING_END when the job has
 * finished and the reader has every event, SDW_RING_RETIRED when the ring
 * was replaced by a new one (end the stream; the client reconnects),
 * SDW_ENOTFOUND for an unknown or expired job. timeout_ms 0 polls without
 * blocking. */
int sdw_ring_wait_event(sdw_ring *r, const char *id, uint64_t after, int timeout_ms,
                        sdw_ring_event *ev, sdw_error *e);
void sdw_ring_event_free(sdw_ring_event *ev);

/* Waits up to timeout_ms for the job's place in the queue (1 = next to run,
 * 0 = not queued: running or finished) to differ from known. Returns 1 with
 * *position filled when it does (at once when known is a place the job is
 * not in, e.g. UINT_MAX), 0 on timeout, SDW_RING_RETIRED when the ring was
 * replaced, SDW_ENOTFOUND for an unknown or expired job. The place changes only when a job ahead leaves the queue
 * (taken, cancelled or failed); those calls wake the waiters. */
int sdw_ring_wait_queue_position(sdw_ring *r, const char *id, unsigned known, int timeout_ms,
                                 unsigned *position, sdw_error *e);

/* ---- engine side ---- */

/* QUEUED -> RUNNING for the oldest queued job, waiting up to timeout_ms for
 * one (-1 = forever). Returns 1 with id and a malloc'd copy of the input,
 * 0 on timeout or when a signal handler ran during the wait. A negative
 * SDW_ESTATE once the ring was replaced by a new one. */
int sdw_ring_take(sdw_ring *r, int timeout_ms, sdw_job_id id, void **input, size_t *len, sdw_error *e);

/* Appends a small event (RUNNING jobs only); data is JSON text. Names
 * "preview" and "complete" are refused here: use the calls below. */
int sdw_ring_append(sdw_ring *r, const char *id, const char *name, const char *data, size_t len,
                    sdw_error *e);
/* Publishes a preview event, superseding the previous preview. */
int sdw_ring_preview(sdw_ring *r, const char *id, const char *data, size_t len, sdw_error *e);
/* RUNNING -> DONE with a complete event carrying data. */
int sdw_ring_complete(sdw_ring *r, const char *id, const char *data, size_t len, sdw_error *e);
/* QUEUED|RUNNING -> FAILED with an error event
 * {"type":"error","code":code,"message":message}; code is clipped to 31
 * bytes and message to 255 so that the event always fits the room every log
 * keeps for it. */
int sdw_ring_fail(sdw_ring *r, const char *id, const char *code, const char *message, sdw_error *e);
/* 1 when a cancel was requested for the job, 0 when not. Cheap: the engine
 * calls it between denoising steps. */
int sdw_ring_cancel_requested(sdw_ring *r, const char *id, sdw_error *e);
/* RUNNING -> CANCELLED with an error event of code "cancelled". */
int sdw_ring_finish_cancelled(sdw_ring *r, const char *id, sdw_error *e);

/* ---- supervisor side ---- */

typedef struct sdw_engine_info {
    sdw_engine_state state;
    pid_t pid;
    int64_t heartbeat_ms;   /* CLOCK_MONOTONIC ms of the last heartbeat */
    char reason[256];       /* why not ready ("model loading", "engine died: ...") */
    unsigned slots;         /* queued + running + kept + free_slots */
    unsigned queued, running;
    unsigned kept;          /* finished jobs whose results are still readable */
    unsigned free_slots;    /* slots holding nothing */
    uint64_t evicted;       /* kept results that gave up their slot before their retention ended */
    unsigned recoveries;    /* times a lock holder's death was repaired */
} sdw_engine_info;

int sdw_ring_set_engine(sdw_ring *r, sdw_engine_state state, pid_t pid, const char *reason, sdw_error *e);

/* What the engine found in each model it loaded, for the pool's model
 * listings and request defaults: only the engine opens model files. */
#define SDW_RING_MAX_MODELS 32
typedef struct sdw_ring_model {
    char name[64];
    char family[16];        /* "sd1", "sd2", "sdxl" */
    char prediction[16];    /* "epsilon", "v_prediction" */
    int inpaint;            /* a 9-channel inpainting UNet */
    int width, height;      /* the size the model was trained at */
    /* The memory estimate made at load (0: none made): the weights as held,
     * what a generation adds per pixel, and the largest width * height the
     * memory left after loading holds. */
    uint64_t weights_bytes, bytes_per_pixel, max_pixels;
    /* The model's own sampler ("" when its scheduler is unsupported) and
     * the most steps "lcm" takes on it (original_inference_steps), so that
     * the pool refuses more at submission. */
    char own_sampler[16];
    int lcm_max_steps;
} sdw_ring_model;

/* The engine replaces the table once its models are loaded (at most
 * SDW_RING_MAX_MODELS; names longer than the field are refused). */
int sdw_ring_set_models(sdw_ring *r, const sdw_ring_model *models, int n, sdw_error *e);
/* Copies up to cap entries into out and returns how many there are (0 until
 * an engine has published them), or a negative sdw_status. */
int sdw_ring_models(sdw_ring *r, sdw_ring_model *out, int cap, sdw_error *e);
/* ---- LoRA table ----
 * The engine checks every configured LoRA against every loaded model and
 * publishes the outcome, so that the pool (which links no model code) can
 * refuse a LoRA that is unknown or does not fit before queueing the job. */
#define SDW_RING_MAX_LORAS 64
#define SDW_RING_LORA_WHY 160
typedef struct sdw_ring_lora {
    char name[64];
    /* Per model, in the model table's order: "" when the LoRA fits it, else
     * why not ("is for sd1, the model is sd2", a shape mismatch, a file that
     * does not load). */
    char why[SDW_RING_MAX_MODELS][SDW_RING_LORA_WHY];
} sdw_ring_lora;

/* Replaces the table (at most SDW_RING_MAX_LORAS; reasons are cut to fit). */
int sdw_ring_set_loras(sdw_ring *r, const sdw_ring_lora *loras, int n, sdw_error *e);
/* Copies up to cap entries into out; returns how many there are. */
int sdw_ring_loras(sdw_ring *r, sdw_ring_lora *out, int cap, sdw_error *e);
/* Whether LoRA `name` fits model `model`: 0 when it does; SDW_ESTATE when
 * the model table has no such model (the engine has not published it yet);
 * SDW_ENOTFOUND when the LoRA table has no such LoRA; SDW_EINVAL when it
 * does not fit, with the reason in why. The engine publishes the LoRA table
 * before the model table, so a model in the table has its LoRAs there. */
int sdw_ring_lora_fit(sdw_ring *r, const char *name, const char *model, char *why, size_t cap, sdw_error *e);

int sdw_ring_heartbeat(sdw_ring *r, sdw_error *e);
int sdw_ring_engine_status(sdw_ring *r, sdw_engine_info *info, sdw_error *e);

/* The engine process died: every RUNNING job gets an error event (code
 * "engine_crashed") and becomes FAILED; QUEUED jobs stay queued for the next
 * engine. The engine state becomes DEAD with reason. Returns how many jobs
 * failed. */
int sdw_ring_engine_died(sdw_ring *r, const char *reason, sdw_error *e);
/* The engine was stopped on purpose (the service stopping) and did not
 * finish every job it had taken: those get an error event of code
 * "engine_stopped" saying so and become FAILED; QUEUED jobs stay for the
 * next start. The engine state becomes DEAD with reason. Returns how many
 * jobs failed. */
int sdw_ring_engine_stopped(sdw_ring *r, const char *reason, sdw_error *e);

/* DONE|FAILED|CANCELLED -> EXPIRED now, whatever the retention. */
int sdw_ring_expire(sdw_ring *r, const char *id, sdw_error *e);
/* Expires every finished job whose retention ended at or before now_ms
 * (sdw_ring_now_ms's clock). Returns how many expired. */
int sdw_ring_sweep(sdw_ring *r, int64_t now_ms, sdw_error *e);
int64_t sdw_ring_now_ms(void);

/* ---- metrics ----
 *
 * Counters of what happened to the jobs of this ring, for the pool's
 * /metrics (doc/architecture.md, "Metrics"). They are updated by whichever
 * process moves a job (a pool process submitting or cancelling, the engine,
 * the supervisor) in the same critical section as the move, or, for step
 * times and restarts, with one atomic add; sdw_ring_metrics_read takes no
 * lock, so that a scrape never waits on the engine. They live as long as
 * the ring (a re-opened ring keeps them, a replaced one starts at zero).
 *
 * A job counts under a label set: an opaque string its submitter chose
 * (the pool writes Prometheus labels, model="...",operation="...",api="...").
 * The ring keeps up to SDW_RING_LABEL_SETS distinct ones; a job whose set
 * finds no room is counted in "unlabelled" only. A failure counts under
 * its set and its error code, up to SDW_RING_FAILURE_SERIES pairs; beyond
 * that under its set's failed_other. */
#define SDW_RING_LABELS_MAX 192
#define SDW_RING_LABEL_SETS 256
#define SDW_RING_FAILURE_SERIES 512
#define SDW_RING_CODE_MAX 32
#define SDW_RING_HIST_BOUNDS 11

typedef enum sdw_ring_hist_kind {
    SDW_RING_HIST_QUEUE_WAIT,   /* started - created, each job the engine takes */
    SDW_RING_HIST_JOB,          /* finished - started, each job that ran, however it ended */
    SDW_RING_HIST_STEP,         /* sdw_ring_observe_step's */
    SDW_RING_HISTS,
} sdw_ring_hist_kind;

typedef struct sdw_ring_hist {
    const double *bounds;       /* SDW_RING_HIST_BOUNDS ascending upper bounds, seconds */
    uint64_t bucket[SDW_RING_HIST_BOUNDS + 1]; /* observations per bucket, not cumulative; the last is +Inf's */
    double sum_s;
} sdw_ring_hist;

typedef struct sdw_ring_label_counts {
    char labels[SDW_RING_LABELS_MAX];
    uint64_t submitted, completed, cancelled;
    uint64_t failed_other;      /* failures whose code found no room of its own */
} sdw_ring_label_counts;

typedef struct sdw_ring_failure_count {
    unsigned set;               /* index into sdw_ring_metrics.set */
    char code[SDW_RING_CODE_MAX];
    uint64_t count;
} sdw_ring_failure_count;

typedef struct sdw_ring_metrics {
    uint64_t engine_restarts;   /* sdw_ring_count_restart's */
    uint64_t unlabelled;        /* submissions whose label set found no room */
    sdw_ring_hist hist[SDW_RING_HISTS];
    unsigned n_sets, n_failures;
    sdw_ring_label_counts set[SDW_RING_LABEL_SETS];
    sdw_ring_failure_count failure[SDW_RING_FAILURE_SERIES];
} sdw_ring_metrics;

/* sdw_ring_submit_as, the job counting under labels (NULL: under none).
 * SDW_EINVAL when labels is SDW_RING_LABELS_MAX bytes or longer. */
int sdw_ring_submit_labelled(sdw_ring *r, const void *input, size_t len, uint32_t owner, unsigned owner_max_queued,
                             const char *labels, sdw_job_id id, sdw_error *e);
/* A snapshot of the counters, read without the lock: each number is whole,
 * the set may be a few updates apart (a histogram's sum against its
 * buckets). m is large (about 80 KiB): allocate it. */
void sdw_ring_metrics_read(sdw_ring *r, sdw_ring_metrics *m);
/* One denoising step took seconds (the engine, between steps). */
void sdw_ring_observe_step(sdw_ring *r, double seconds);
/* The supervisor started a new engine after the previous one died. */
void sdw_ring_count_restart(sdw_ring *r);

/* Test hook: the ring calls hook(point) at named points while it holds the
 * lock ("locked", "append-written": an event record is written but not yet
 * published), so a test can kill the process exactly there. NULL removes it.
 * Process-local. */
void sdw_ring_set_fault_hook(void (*hook)(const char *point));

#endif
