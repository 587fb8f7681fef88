#include "ring/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RING_MAGIC 0x31474e4952574453ull /* "SDWRING1" */
#define RING_VERSION 6
#define ALIGN(x, a) (((x) + (a) - 1) / (a) * (a))
/* Room in every log kept back for the terminal error event, so that a job
 * whose progress events filled its log can still report how it ended. The
 * bound holds because code and message are clipped first: even if every
 * byte were escaped as \u00XX the event stays under it. */
#define ERROR_RESERVE 2048
#define ERROR_CODE_MAX 32
#define ERROR_MESSAGE_MAX 256
#define STOPPED_MESSAGE "the service was stopped while this job was running; submit it again"
/* Ids of jobs whose slot went to new work, so that a late request for one
 * gets "expired" (HTTP 410) rather than "no such job" (404). Under load
 * slots are reused many times within one retention time (a 1024-id list
 * was outrun by a few minutes of small jobs), so the ids go into a table
 * of GONE_BUCKETS buckets of GONE_WAYS, picked by the id's first random
 * bytes, each bucket forgetting its oldest: about the last 65536 ids are
 * remembered, in 1 MiB, with a lookup of one bucket. */
#define GONE_BUCKETS 4096
#define GONE_WAYS 16

struct gone_bucket {
    uint32_t next, used;
    uint8_t id[GONE_WAYS][16];
};

/* The metrics (ring.h). Inserts happen under the ring lock; a reader
 * without it takes an entry once its used flag is set (release after the
 * key is written), and every counter is read and added atomically. */
struct metric_set {
    uint32_t used;
    char labels[SDW_RING_LABELS_MAX];
    uint64_t submitted, completed, cancelled, failed_other;
};

struct metric_failure {
    uint32_t used, set;
    char code[SDW_RING_CODE_MAX];
    uint64_t count;
};

struct metric_hist {
    uint64_t bucket[SDW_RING_HIST_BOUNDS + 1];
    uint64_t sum_us;
};

struct ring_metrics {
    uint64_t engine_restarts, unlabelled;
    struct metric_hist hist[SDW_RING_HISTS];
    struct metric_set set[SDW_RING_LABEL_SETS];
    struct metric_failure failure[SDW_RING_FAILURE_SERIES];
};

/* Queue waits and job times run from a fraction of a second (a busy GPU's
 * queue, a tiny model) to the ten minutes a CPU may take; a step from
 * milliseconds (a GPU) to tens of seconds (a CPU at 1024x1024). */
static const double hist_bounds[SDW_RING_HISTS][SDW_RING_HIST_BOUNDS] = {
    [SDW_RING_HIST_QUEUE_WAIT] = {0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
    [SDW_RING_HIST_JOB] = {0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
    [SDW_RING_HIST_STEP] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
};

struct ring_header {
    uint64_t magic;
    uint32_t version, nslots, max_queued, retention_s;
    uint64_t header_bytes, slot_stride, input_cap, log_cap, image_cap, total_bytes;
    pthread_mutex_t lock;
    uint32_t work_futex;   /* bumped on submit, cancel and engine death */
    uint32_t retired;      /* a supervisor replaced this ring with a new one */
    uint64_t next_seq;
    uint32_t engine_state, recoveries;
    int32_t engine_pid;
    int64_t heartbeat_ms;
    char engine_reason[256];
    uint32_t n_models;
    sdw_ring_model models[SDW_RING_MAX_MODELS];
    uint64_t evicted;      /* kept results that gave their slot up early */
    struct gone_bucket gone[GONE_BUCKETS];
    struct ring_metrics metrics;
    /* LoRA table (sdw_ring_set_loras) */
    uint32_t n_loras;
    sdw_ring_lora loras[SDW_RING_MAX_LORAS];
};

struct ring_slot {
    uint32_t state;
    uint32_t event_futex;  /* bumped on every event and state change */
    uint32_t cancel_requested;
    uint8_t id[16];
    /* The submitter's key (sdw_ring_submit_as). */
    uint32_t owner;
    uint64_t seq;
    int64_t created_ms, started_ms, finished_ms, expires_mono_ms;
    uint64_t input_len;
    uint64_t last_event_id;
    uint64_t log_used;
    uint64_t big_id, big_len;
    char big_name[16];
    uint32_t metric_set;   /* the job's label set, index + 1; 0 = none */
};

_Static_assert(offsetof(struct ring_slot, seq) == 32 && sizeof(struct ring_slot) == 136,
               "struct ring_slot changed layout: bump RING_VERSION");

struct log_rec {
    uint64_t id;
    uint32_t len;          /* data bytes, a NUL follows them */
    char name[12];
};

struct sdw_ring {
    unsigned char *base;
    size_t size;
    struct ring_header *h;
    char name[202];
    dev_t dev;             /* the object mapped, to tell a replacement apart */
    ino_t ino;
    int owner_fd;          /* sdw_ring_attach's locked descriptor; -1 otherwise */
};

static void (*fault_hook)(const char *point);

void sdw_ring_set_fault_hook(void (*hook)(const char *point))
{
    fault_hook = hook;
}

static void fault(const char *point)
{
    if (fault_hook)
        fault_hook(point);
}

const char *sdw_job_state_name(sdw_job_state s)
{
    static const char *const n[] = {"free", "queued", "running", "done", "failed", "cancelled", "expired"};
    return (unsigned)s < sizeof n / sizeof n[0] ? n[s] : "invalid";
}

const char *sdw_engine_state_name(sdw_engine_state s)
{
    static const char *const n[] = {"starting", "loading", "ready", "dead"};
    return (unsigned)s < sizeof n / sizeof n[0] ? n[s] : "invalid";
}

bool sdw_job_transition_allowed(sdw_job_state from, sdw_job_state to)
{
    switch (from) {
    case SDW_JOB_FREE: return to == SDW_JOB_QUEUED;
    case SDW_JOB_QUEUED: return to == SDW_JOB_RUNNING || to == SDW_JOB_CANCELLED || to == SDW_JOB_FAILED;
    case SDW_JOB_RUNNING: return to == SDW_JOB_DONE || to == SDW_JOB_FAILED || to == SDW_JOB_CANCELLED;
    case SDW_JOB_DONE:
    case SDW_JOB_FAILED:
    case SDW_JOB_CANCELLED: return to == SDW_JOB_EXPIRED;
    case SDW_JOB_EXPIRED: return to == SDW_JOB_FREE;
    }
    return false;
}

static int is_terminal(uint32_t s)
{
    return s == SDW_JOB_DONE || s == SDW_JOB_FAILED || s == SDW_JOB_CANCELLED;
}

sdw_ring_config sdw_ring_default_config(const char *name)
{
    return (sdw_ring_config){
        .name = name,
        .slots = 16,
        .max_queued = 8,
        .input_bytes = (4u << 20) + (64u << 10),
        .log_bytes = 64u << 10,
        .image_bytes = 2u << 20,
        .retention_s = 600,
    };
}

static int64_t clock_ms(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sdw_ring_now_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

/* ---- futex ---- */

static void bump(uint32_t *word)
{
    __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
}

static void wake_all(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Sleeps until *word is no longer seen, the deadline passes, or a signal;
 * the caller re-checks its condition in every case. Returns 1 when a
 * signal ended the sleep. */
static int wait_change(uint32_t *word, uint32_t seen, int64_t deadline_ms)
{
    struct timespec ts, *tsp = NULL;
    if (deadline_ms >= 0) {
        int64_t left = deadline_ms - sdw_ring_now_ms();
        if (left <= 0)
            return 0;
        ts.tv_sec = left / 1000;
        ts.tv_nsec = (left % 1000) * 1000000;
        tsp = &ts;
    }
    return syscall(SYS_futex, word, FUTEX_WAIT, seen, tsp, NULL, 0) != 0 && errno == EINTR;
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : sdw_ring_now_ms() + timeout_ms;
}

static int expired_deadline(int64_t deadline_ms)
{
    return deadline_ms >= 0 && sdw_ring_now_ms() >= deadline_ms;
}

/* ---- layout ---- */

static struct ring_slot *slot_at(sdw_ring *r, unsigned i)
{
    return (struct ring_slot *)(r->base + r->h->header_bytes + (size_t)i * r->h->slot_stride);
}

static unsigned char *input_of(sdw_ring *r, struct ring_slot *s)
{
    return (unsigned char *)s + ALIGN(sizeof *s, 64);
}

static unsigned char *log_of(sdw_ring *r, struct ring_slot *s)
{
    return input_of(r, s) + r->h->input_cap;
}

static unsigned char *image_of(sdw_ring *r, struct ring_slot *s)
{
    return log_of(r, s) + r->h->log_cap;
}

/* ---- locking and repair ---- */

/* A process died inside a critical section. Single-word state stores are
 * whole or absent; what can be half done is an event publication, whose
 * record is written before log_used and last_event_id move. So the log is
 * re-walked up to log_used, cut at the first record that does not check
 * out, and last_event_id recomputed from what is really there. */
static void repair_slot(sdw_ring *r, struct ring_slot *s)
{
    uint64_t off = 0, last = 0;
    unsigned char *log = log_of(r, s);
    if (s->state > SDW_JOB_EXPIRED)
        s->state = SDW_JOB_FAILED;
    if (s->log_used > r->h->log_cap)
        s->log_used = r->h->log_cap;
    while (off + sizeof(struct log_rec) <= s->log_used) {
        struct log_rec rec;
        memcpy(&rec, log + off, sizeof rec);
        uint64_t size = ALIGN(sizeof rec + rec.len + 1, 8);
        if (rec.id <= last || rec.len > r->h->log_cap || off + size > s->log_used)
            break;
        last = rec.id;
        off += size;
    }
    s->log_used = off;
    if (s->big_len >= r->h->image_cap)
        s->big_id = 0;
    if (s->big_id > last)
        last = s->big_id;
    s->last_event_id = last;
    bump(&s->event_futex);
    wake_all(&s->event_futex);
}

static int ring_lock(sdw_ring *r, sdw_error *e)
{
    int rc = pthread_mutex_lock(&r->h->lock);
    if (rc == EOWNERDEAD) {
        /* Which slot the dead process was writing is unknown; checking
         * every slot costs a walk over a few small logs. */
        for (unsigned i = 0; i < r->h->nslots; i++)
            repair_slot(r, slot_at(r, i));
        r->h->recoveries++;
        pthread_mutex_consistent(&r->h->lock);
        rc = 0;
    }
    if (rc)
        return sdw_fail(e, SDW_EIO, "job ring lock: %s", strerror(rc));
    fault("locked");
    return 0;
}

static void ring_unlock(sdw_ring *r)
{
    pthread_mutex_unlock(&r->h->lock);
}

/* ---- ids ---- */

static void format_id(const uint8_t raw[16], sdw_job_id out)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "job-", 4);
    for (int i = 0; i < 16; i++) {
        out[4 + 2 * i] = hex[raw[i] >> 4];
        out[5 + 2 * i] = hex[raw[i] & 15];
    }
    out[SDW_JOB_ID_LEN] = '\0';
}

static int parse_id(const char *id, uint8_t raw[16])
{
    if (!id || strlen(id) != SDW_JOB_ID_LEN || memcmp(id, "job-", 4) != 0)
        return 0;
    for (int i = 0; i < 32; i++) {
        char c = id[4 + i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return 0;
        if (i % 2 == 0)
            raw[i / 2] = (uint8_t)(v << 4);
        else
            raw[i / 2] |= (uint8_t)v;
    }
    return 1;
}

/* Finds the slot of a job, under the lock. */
static struct ring_slot *find_locked(sdw_ring *r, const char *id, sdw_error *e)
{
    uint8_t raw[16];
    if (parse_id(id, raw))
        for (unsigned i = 0; i < r->h->nslots; i++) {
            struct ring_slot *s = slot_at(r, i);
            if (s->state != SDW_JOB_FREE && memcmp(s->id, raw, 16) == 0)
                return s;
        }
    sdw_fail(e, SDW_ENOTFOUND, "no job %.40s", id ? id : "(null)");
    return NULL;
}

/* Orders the stores before it ahead of the stores after it, for the
 * compiler and the CPU, so that a process killed between them leaves the
 * data written before its publication (see repair_slot). */
static void publish_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static int transition(struct ring_slot *s, sdw_job_state to, sdw_error *e)
{
    if (!sdw_job_transition_allowed((sdw_job_state)s->state, to))
        return sdw_fail(e, SDW_ESTATE, "job is %s, cannot become %s",
                        sdw_job_state_name((sdw_job_state)s->state), sdw_job_state_name(to));
    __atomic_store_n(&s->state, (uint32_t)to, __ATOMIC_SEQ_CST);
    return 0;
}

/* ---- events ---- */

static int valid_event_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof ((struct log_rec *)0)->name)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || name[i] == '_'))
            return 0;
    return 1;
}

static int append_locked(sdw_ring *r, struct ring_slot *s, const char *name, const char *data, size_t len,
                         int terminal, sdw_error *e)
{
    struct log_rec rec = {.id = s->last_event_id + 1, .len = (uint32_t)len};
    uint64_t size = ALIGN(sizeof rec + len + 1, 8);
    uint64_t room = r->h->log_cap - s->log_used;
    if (len > UINT32_MAX || size > room || (!terminal && size + ERROR_RESERVE > room))
        return sdw_fail(e, SDW_ETOOBIG, "event log of the job is full (%zu bytes)", (size_t)r->h->log_cap);
    strncpy(rec.name, name, sizeof rec.name - 1);
    unsigned char *p = log_of(r, s) + s->log_used;
    memcpy(p, &rec, sizeof rec);
    memcpy(p + sizeof rec, data, len);
    p[sizeof rec + len] = '\0';
    publish_fence();
    fault("append-written");
    s->log_used += size;
    s->last_event_id = rec.id;
    bump(&s->event_futex);
    return 0;
}

static int put_image_locked(sdw_ring *r, struct ring_slot *s, const char *name, const char *data, size_t len,
                            sdw_error *e)
{
    if (len >= r->h->image_cap)
        return sdw_fail(e, SDW_ETOOBIG, "%s event of %zu bytes exceeds the slot image area (%zu bytes)",
                        name, len, (size_t)r->h->image_cap);
    uint64_t id = s->last_event_id + 1;
    s->big_id = 0;
    publish_fence();
    memcpy(image_of(r, s), data, len);
    image_of(r, s)[len] = '\0';
    s->big_len = len;
    strncpy(s->big_name, name, sizeof s->big_name - 1);
    s->big_name[sizeof s->big_name - 1] = '\0';
    publish_fence();
    s->big_id = id;
    s->last_event_id = id;
    bump(&s->event_futex);
    return 0;
}

/* Copies s into dst (cap bytes) without leaving half a UTF-8 character at
 * the cut, so that the JSON built from it stays valid UTF-8. */
static void clip_utf8(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(s);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static char *error_json(const char *code, const char *message)
{
    char c[ERROR_CODE_MAX], m[ERROR_MESSAGE_MAX];
    clip_utf8(c, sizeof c, code);
    clip_utf8(m, sizeof m, message ? message : "");
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "type", json_object_new_string("error"));
    json_object_object_add(o, "code", json_object_new_string(c));
    json_object_object_add(o, "message", json_object_new_string(m));
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *out = s ? strdup(s) : NULL;
    json_object_put(o);
    return out;
}

static void finish_times(sdw_ring *r, struct ring_slot *s)
{
    s->finished_ms = clock_ms(CLOCK_REALTIME);
    s->expires_mono_ms = sdw_ring_now_ms() + (int64_t)r->h->retention_s * 1000;
}

/* ---- metrics ---- */

static void add64(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static uint64_t load64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void hist_observe(sdw_ring *r, sdw_ring_hist_kind k, double seconds)
{
    struct metric_hist *h = &r->h->metrics.hist[k];
    /* A wall clock stepped back between two stamps gives a negative time. */
    if (!(seconds > 0))
        seconds = 0;
    unsigned b = 0;
    while (b < SDW_RING_HIST_BOUNDS && seconds > hist_bounds[k][b])
        b++;
    add64(&h->bucket[b], 1);
    add64(&h->sum_us, (uint64_t)(seconds * 1e6 + 0.5));
}

/* The label set's index + 1, inserting it; 0 for none or no room. Sets
 * fill the table in order and never leave it, so a reader stops at the
 * first unused entry. */
static uint32_t label_set_locked(sdw_ring *r, const char *labels)
{
    struct ring_metrics *m = &r->h->metrics;
    if (!labels)
        return 0;
    for (unsigned i = 0; i < SDW_RING_LABEL_SETS; i++) {
        struct metric_set *ms = &m->set[i];
        if (!ms->used) {
            snprintf(ms->labels, sizeof ms->labels, "%s", labels);
            __atomic_store_n(&ms->used, 1, __ATOMIC_RELEASE);
            return i + 1;
        }
        if (strcmp(ms->labels, labels) == 0)
            return i + 1;
    }
    add64(&m->unlabelled, 1);
    return 0;
}

/* s has just become terminal (to) with finish_times set. */
static void count_end_locked(sdw_ring *r, struct ring_slot *s, sdw_job_state to, const char *code)
{
    struct ring_metrics *m = &r->h->metrics;
    if (s->started_ms > 0)
        hist_observe(r, SDW_RING_HIST_JOB, (double)(s->finished_ms - s->started_ms) / 1000);
    /* A slot repaired after a crash may hold anything. */
    if (s->metric_set == 0 || s->metric_set > SDW_RING_LABEL_SETS)
        return;
    uint32_t set = s->metric_set - 1;
    struct metric_set *ms = &m->set[set];
    if (to == SDW_JOB_DONE)
        return add64(&ms->completed, 1);
    if (to == SDW_JOB_CANCELLED)
        return add64(&ms->cancelled, 1);
    char c[SDW_RING_CODE_MAX];
    clip_utf8(c, sizeof c, code ? code : "failed");
    for (unsigned i = 0; i < SDW_RING_FAILURE_SERIES; i++) {
        struct metric_failure *f = &m->failure[i];
        if (!f->used) {
            f->set = set;
            memcpy(f->code, c, sizeof c);
            f->count = 1;
            __atomic_store_n(&f->used, 1, __ATOMIC_RELEASE);
            return;
        }
        if (f->set == set && strcmp(f->code, c) == 0)
            return add64(&f->count, 1);
    }
    add64(&ms->failed_other, 1);
}

void sdw_ring_metrics_read(sdw_ring *r, sdw_ring_metrics *out)
{
    const struct ring_metrics *m = &r->h->metrics;
    memset(out, 0, sizeof *out);
    out->engine_restarts = load64(&m->engine_restarts);
    out->unlabelled = load64(&m->unlabelled);
    for (int k = 0; k < SDW_RING_HISTS; k++) {
        out->hist[k].bounds = hist_bounds[k];
        for (int b = 0; b <= SDW_RING_HIST_BOUNDS; b++)
            out->hist[k].bucket[b] = load64(&m->hist[k].bucket[b]);
        out->hist[k].sum_s = (double)load64(&m->hist[k].sum_us) / 1e6;
    }
    while (out->n_sets < SDW_RING_LABEL_SETS && __atomic_load_n(&m->set[out->n_sets].used, __ATOMIC_ACQUIRE)) {
        const struct metric_set *ms = &m->set[out->n_sets];
        sdw_ring_label_counts *o = &out->set[out->n_sets++];
        memcpy(o->labels, ms->labels, sizeof o->labels);
        o->labels[sizeof o->labels - 1] = '\0';
        o->submitted = load64(&ms->submitted);
        o->completed = load64(&ms->completed);
        o->cancelled = load64(&ms->cancelled);
        o->failed_other = load64(&ms->failed_other);
    }
    for (unsigned i = 0; i < SDW_RING_FAILURE_SERIES && __atomic_load_n(&m->failure[i].used, __ATOMIC_ACQUIRE); i++) {
        const struct metric_failure *f = &m->failure[i];
        /* A set published after the sets were read is left for the next read. */
        if (f->set >= out->n_sets)
            continue;
        sdw_ring_failure_count *o = &out->failure[out->n_failures++];
        o->set = f->set;
        memcpy(o->code, f->code, sizeof o->code);
        o->code[sizeof o->code - 1] = '\0';
        o->count = load64(&f->count);
    }
}

void sdw_ring_observe_step(sdw_ring *r, double seconds)
{
    hist_observe(r, SDW_RING_HIST_STEP, seconds);
}

void sdw_ring_count_restart(sdw_ring *r)
{
    add64(&r->h->metrics.engine_restarts, 1);
}

/* Moves s to a terminal state with an error event; the JSON is built by the
 * caller outside the lock. */
static int end_with_error_locked(sdw_ring *r, struct ring_slot *s, sdw_job_state to, const char *code,
                                 const char *json, sdw_error *e)
{
    if (!sdw_job_transition_allowed((sdw_job_state)s->state, to))
        return transition(s, to, e);
    int rc = append_locked(r, s, "error", json, strlen(json), 1, e);
    if (rc)
        return rc;
    finish_times(r, s);
    transition(s, to, e);
    count_end_locked(r, s, to, code);
    bump(&s->event_futex);
    return 0;
}

/* The job of sequence number seq left the queue: every job behind it moved
 * up, and the streams waiting in sdw_ring_wait_queue_position on those jobs
 * must say so. The ones ahead stay where they are and are not woken (a
 * cancelled job at the tail wakes nobody). */
static void queue_moved_locked(sdw_ring *r, uint64_t seq)
{
    for (unsigned i = 0; i < r->h->nslots; i++) {
        struct ring_slot *s = slot_at(r, i);
        if (s->state == SDW_JOB_QUEUED && s->seq > seq) {
            bump(&s->event_futex);
            wake_all(&s->event_futex);
        }
    }
}

/* 1 = next to run, 0 = not queued. */
static unsigned queue_position_locked(sdw_ring *r, const struct ring_slot *s)
{
    if (s->state != SDW_JOB_QUEUED)
        return 0;
    unsigned pos = 1;
    for (unsigned i = 0; i < r->h->nslots; i++) {
        const struct ring_slot *o = slot_at(r, i);
        if (o->state == SDW_JOB_QUEUED && o->seq < s->seq)
            pos++;
    }
    return pos;
}

/* ---- create / open ---- */

static int valid_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 2 || n > 201 || name[0] != '/')
        return 0;
    for (size_t i = 1; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

struct layout {
    uint64_t header, stride, input, log, image, total;
};

static int check_config(const sdw_ring_config *cfg, sdw_error *e)
{
    if (!valid_name(cfg->name))
        return sdw_fail(e, SDW_EINVAL, "job ring name must be '/' and 1-200 of [A-Za-z0-9._-]");
    if (cfg->slots == 0 || cfg->slots > 4096 || cfg->max_queued == 0 || cfg->max_queued > cfg->slots)
        return sdw_fail(e, SDW_EINVAL, "job ring needs 1-4096 slots and 1..slots queued jobs");
    if (cfg->input_bytes == 0 || cfg->input_bytes > (1ull << 32) || cfg->log_bytes < 4 * ERROR_RESERVE ||
        cfg->log_bytes > (1ull << 30) || cfg->image_bytes < 1024 || cfg->image_bytes > (1ull << 32))
        return sdw_fail(e, SDW_EINVAL, "job ring area sizes out of range");
    return 0;
}

static struct layout layout_of(const sdw_ring_config *cfg)
{
    struct layout l = {
        .header = ALIGN(sizeof(struct ring_header), 4096),
        .input = ALIGN(cfg->input_bytes, 64),
        .log = ALIGN(cfg->log_bytes, 64),
        .image = ALIGN(cfg->image_bytes, 64),
    };
    l.stride = ALIGN(ALIGN(sizeof(struct ring_slot), 64) + l.input + l.log + l.image, 4096);
    l.total = l.header + l.stride * cfg->slots;
    return l;
}

/* Why the object at base (size bytes) is not a ring this build can use, or
 * NULL when it is one. Everything an opener trusts to find the slots is
 * checked, so that a corrupt header cannot send it outside the mapping. */
static const char *header_problem(const struct ring_header *h, uint64_t size, char *buf, size_t n)
{
    if (size < sizeof *h)
        return "it is too small to be a job ring";
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != RING_MAGIC)
        return "it is not an initialised job ring";
    if (h->version != RING_VERSION) {
        snprintf(buf, n, "it is a version %u job ring, this build uses version %d", h->version, RING_VERSION);
        return buf;
    }
    uint64_t slot_min = ALIGN(sizeof(struct ring_slot), 64) + h->input_cap + h->log_cap + h->image_cap;
    if (h->header_bytes != ALIGN(sizeof *h, 4096) || h->total_bytes != size || h->nslots == 0 ||
        h->nslots > 4096 || h->max_queued == 0 || h->max_queued > h->nslots || h->input_cap > (1ull << 33) ||
        h->log_cap > (1ull << 31) || h->image_cap > (1ull << 33) || h->slot_stride < slot_min ||
        h->header_bytes + h->slot_stride * h->nslots != size)
        return "its header is inconsistent (corrupt)";
    return NULL;
}

static void init_header(struct ring_header *h, const sdw_ring_config *cfg, const struct layout *l)
{
    h->version = RING_VERSION;
    h->nslots = cfg->slots;
    h->max_queued = cfg->max_queued;
    h->retention_s = cfg->retention_s;
    h->header_bytes = l->header;
    h->slot_stride = l->stride;
    h->input_cap = l->input;
    h->log_cap = l->log;
    h->image_cap = l->image;
    h->total_bytes = l->total;
    h->engine_state = SDW_ENGINE_STARTING;
}

static int wrap(void *base, size_t size, const char *name, int fd, sdw_ring **out, sdw_error *e)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        munmap(base, size);
        return sdw_fail(e, SDW_EIO, "fstat of job ring %s: %s", name, strerror(errno));
    }
    sdw_ring *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(base, size);
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    }
    r->base = base;
    r->size = size;
    r->h = base;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    r->owner_fd = -1;
    *out = r;
    return 0;
}

/* Sizes, maps and initialises the new, empty object open at fd. */
static int init_object(int fd, const sdw_ring_config *cfg, const struct layout *l, sdw_ring **out, sdw_error *e)
{
    if (ftruncate(fd, (off_t)l->total) != 0)
        return sdw_fail(e, SDW_EIO, "sizing job ring %s to %llu bytes: %s", cfg->name,
                        (unsigned long long)l->total, strerror(errno));
    void *base = mmap(NULL, l->total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return sdw_fail(e, SDW_EIO, "mapping job ring %s: %s", cfg->name, strerror(errno));
    init_header(base, cfg, l);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&((struct ring_header *)base)->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc) {
        munmap(base, l->total);
        return sdw_fail(e, SDW_EIO, "job ring mutex: %s", strerror(rc));
    }
    /* Openers check the magic, so it goes in last. */
    __atomic_store_n(&((struct ring_header *)base)->magic, RING_MAGIC, __ATOMIC_RELEASE);
    return wrap(base, l->total, cfg->name, fd, out, e);
}

int sdw_ring_create(const sdw_ring_config *cfg, sdw_ring **out, sdw_error *e)
{
    *out = NULL;
    int rc = check_config(cfg, e);
    if (rc)
        return rc;
    struct layout l = layout_of(cfg);
    int fd = shm_open(cfg->name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return sdw_fail(e, errno == EEXIST ? SDW_EINVAL : SDW_EIO, "shm_open %s: %s", cfg->name, strerror(errno));
    rc = init_object(fd, cfg, &l, out, e);
    close(fd);
    if (rc)
        shm_unlink(cfg->name);
    return rc;
}

int sdw_ring_open(const char *name, sdw_ring **out, sdw_error *e)
{
    *out = NULL;
    if (!valid_name(name))
        return sdw_fail(e, SDW_EINVAL, "job ring name must be '/' and 1-200 of [A-Za-z0-9._-]");
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "shm_open %s: %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(struct ring_header)) {
        close(fd);
        return sdw_fail(e, SDW_EFORMAT, "job ring %s is too small to be one", name);
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        close(fd);
        return sdw_fail(e, SDW_EIO, "mapping job ring %s: %s", name, strerror(err));
    }
    char buf[128];
    const char *bad = header_problem(base, (uint64_t)st.st_size, buf, sizeof buf);
    if (bad) {
        munmap(base, (size_t)st.st_size);
        close(fd);
        return sdw_fail(e, SDW_EFORMAT, "job ring %s: %s", name, bad);
    }
    int rc = wrap(base, (size_t)st.st_size, name, fd, out, e);
    close(fd);
    return rc;
}

void sdw_ring_close(sdw_ring *r)
{
    if (!r)
        return;
    munmap(r->base, r->size);
    if (r->owner_fd >= 0)
        close(r->owner_fd);
    free(r);
}

int sdw_ring_unlink(const char *name, sdw_error *e)
{
    if (shm_unlink(name) != 0)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "shm_unlink %s: %s", name, strerror(errno));
    return 0;
}

int sdw_ring_stale(sdw_ring *r)
{
    if (__atomic_load_n(&r->h->retired, __ATOMIC_ACQUIRE))
        return 1;
    int fd = shm_open(r->name, O_RDONLY, 0);
    if (fd < 0)
        return errno == ENOENT;
    struct stat st;
    int other = fstat(fd, &st) == 0 && (st.st_dev != r->dev || st.st_ino != r->ino);
    close(fd);
    return other;
}

/* ---- the supervisor's attach ---- */

/* Whether the object open at fd is still the one the name refers to. */
static int names_object(const char *name, int fd)
{
    struct stat a, b;
    int fd2 = shm_open(name, O_RDONLY, 0);
    if (fd2 < 0)
        return 0;
    int same = fstat(fd, &a) == 0 && fstat(fd2, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    close(fd2);
    return same;
}

/* The owner lock: one supervisor (and the engine it forked, which inherits
 * the descriptor) per ring, so that two engines never take from one. */
static int lock_owner(int fd, const char *name, int64_t deadline_ms, sdw_error *e)
{
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR)
            return sdw_fail(e, SDW_EIO, "locking job ring %s: %s", name, strerror(errno));
        if (sdw_ring_now_ms() >= deadline_ms)
            return sdw_fail(e, SDW_ESTATE, "job ring %s is held by another sdworker-engine (or by an engine it "
                                        "started that has not exited yet)", name);
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void wake_everyone(sdw_ring *r)
{
    bump(&r->h->work_futex);
    wake_all(&r->h->work_futex);
    for (unsigned i = 0; i < r->h->nslots; i++) {
        bump(&slot_at(r, i)->event_futex);
        wake_all(&slot_at(r, i)->event_futex);
    }
}

/* Marks a readable ring that is being replaced as retired, so that the
 * pool's streams on it end and its children re-open the name, and counts
 * the jobs it held. */
static int retire_old(sdw_ring *old)
{
    sdw_error e;
    if (ring_lock(old, &e))
        return -1;
    __atomic_store_n(&old->h->retired, 1, __ATOMIC_RELEASE);
    int jobs = 0;
    for (unsigned i = 0; i < old->h->nslots; i++) {
        uint32_t st = slot_at(old, i)->state;
        jobs += st != SDW_JOB_FREE && st != SDW_JOB_EXPIRED;
    }
    ring_unlock(old);
    wake_everyone(old);
    return jobs;
}

/* Takes over a ring that matched: torn events are cut, jobs RUNNING when
 * the last engine stopped fail with engine_stopped (their process is gone,
 * and running them again could publish a second set of events), queued
 * ones stay, and the settings that are not layout follow cfg. */
static int adopt(sdw_ring *r, const sdw_ring_config *cfg, sdw_ring_attach_info *info, sdw_error *e)
{
    char *json = error_json("engine_stopped", STOPPED_MESSAGE);
    if (!json)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = ring_lock(r, e);
    if (rc) {
        free(json);
        return rc;
    }
    for (unsigned i = 0; i < r->h->nslots; i++) {
        struct ring_slot *s = slot_at(r, i);
        repair_slot(r, s);
        if (s->input_len > r->h->input_cap)
            s->input_len = 0;
        info->queued += s->state == SDW_JOB_QUEUED;
        info->kept += is_terminal(s->state);
        if (s->state == SDW_JOB_RUNNING &&
            end_with_error_locked(r, s, SDW_JOB_FAILED, "engine_stopped", json, NULL) == 0)
            info->interrupted++;
    }
    r->h->max_queued = cfg->max_queued;
    r->h->retention_s = cfg->retention_s;
    r->h->retired = 0;
    r->h->engine_state = SDW_ENGINE_STARTING;
    r->h->engine_pid = 0;
    r->h->heartbeat_ms = sdw_ring_now_ms();
    clip_utf8(r->h->engine_reason, sizeof r->h->engine_reason, "engine starting");
    ring_unlock(r);
    free(json);
    wake_everyone(r);
    return 0;
}

int sdw_ring_attach(const sdw_ring_config *cfg, int wait_ms, sdw_ring **out, sdw_ring_attach_info *info,
                    sdw_error *e)
{
    *out = NULL;
    memset(info, 0, sizeof *info);
    int rc = check_config(cfg, e);
    if (rc)
        return rc;
    struct layout l = layout_of(cfg);
    int64_t deadline = sdw_ring_now_ms() + (wait_ms > 0 ? wait_ms : 0);
    /* Each pass replaces at most one object; more than a few passes means
     * something else keeps changing the name. */
    for (int pass = 0; pass < 8; pass++) {
        int fd = shm_open(cfg->name, O_RDWR | O_CREAT, 0600);
        if (fd < 0)
            return sdw_fail(e, SDW_EIO, "shm_open %s: %s", cfg->name, strerror(errno));
        if ((rc = lock_owner(fd, cfg->name, deadline, e))) {
            close(fd);
            return rc;
        }
        /* The owner before us may have replaced the object while we waited. */
        if (!names_object(cfg->name, fd)) {
            close(fd);
            continue;
        }
        struct stat st;
        if (fstat(fd, &st) != 0) {
            rc = sdw_fail(e, SDW_EIO, "fstat of job ring %s: %s", cfg->name, strerror(errno));
            close(fd);
            return rc;
        }
        if (st.st_size == 0) {
            info->created = true;
            rc = init_object(fd, cfg, &l, out, e);
            if (rc) {
                close(fd);
                shm_unlink(cfg->name);
                return rc;
            }
            (*out)->owner_fd = fd;
            return 0;
        }
        void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            rc = sdw_fail(e, SDW_EIO, "mapping job ring %s: %s", cfg->name, strerror(errno));
            close(fd);
            return rc;
        }
        char buf[160];
        const struct ring_header *h = base;
        const char *bad = header_problem(h, (uint64_t)st.st_size, buf, sizeof buf);
        if (!bad && (h->nslots != cfg->slots || h->input_cap != l.input || h->log_cap != l.log ||
                     h->image_cap != l.image)) {
            snprintf(buf, sizeof buf, "its layout (%u slots of %llu/%llu/%llu input/log/image bytes) differs from "
                     "the configuration's (%u of %llu/%llu/%llu)", h->nslots, (unsigned long long)h->input_cap,
                     (unsigned long long)h->log_cap, (unsigned long long)h->image_cap, cfg->slots,
                     (unsigned long long)l.input, (unsigned long long)l.log, (unsigned long long)l.image);
            sdw_ring old = {.base = base, .size = (size_t)st.st_size, .h = base, .owner_fd = -1};
            info->dropped = retire_old(&old);
            bad = buf;
        } else if (bad) {
            info->dropped = -1;
        }
        if (!bad) {
            rc = wrap(base, (size_t)st.st_size, cfg->name, fd, out, e);
            if (!rc)
                rc = adopt(*out, cfg, info, e);
            if (rc) {
                sdw_ring_close(*out);
                *out = NULL;
                close(fd);
                return rc;
            }
            (*out)->owner_fd = fd;
            return 0;
        }
        snprintf(info->replaced, sizeof info->replaced, "%s", bad);
        munmap(base, (size_t)st.st_size);
        shm_unlink(cfg->name);
        close(fd);
    }
    return sdw_fail(e, SDW_EIO, "job ring %s keeps being replaced by another process", cfg->name);
}

/* Runs the statements given on the job's slot s under the lock, with rc_
 * as the result, then wakes the job's readers. */
#define WITH_JOB(r, id, e, ...)                                   \
    do {                                                          \
        int rc_ = ring_lock(r, e);                                \
        if (rc_)                                                  \
            return rc_;                                           \
        struct ring_slot *s = find_locked(r, id, e);              \
        if (!s) {                                                 \
            ring_unlock(r);                                       \
            return SDW_ENOTFOUND;                                 \
        }                                                         \
        __VA_ARGS__;                                              \
        ring_unlock(r);                                           \
        wake_all(&s->event_futex);                                \
        return rc_;                                               \
    } while (0)

/* ---- pool side ---- */

/* Ids are random, so their first bytes spread them over the buckets. */
static struct gone_bucket *gone_bucket_of(const sdw_ring *r, const uint8_t raw[16])
{
    uint32_t k;
    memcpy(&k, raw, sizeof k);
    return &r->h->gone[k % GONE_BUCKETS];
}

static void gone_add_locked(sdw_ring *r, const uint8_t raw[16])
{
    struct gone_bucket *b = gone_bucket_of(r, raw);
    memcpy(b->id[b->next % GONE_WAYS], raw, 16);
    b->next = (b->next + 1) % GONE_WAYS;
    if (b->used < GONE_WAYS)
        b->used++;
}

static int expire_locked(sdw_ring *r, struct ring_slot *s, sdw_error *e)
{
    int rc = transition(s, SDW_JOB_EXPIRED, e);
    if (rc)
        return rc;
    s->input_len = 0;
    s->log_used = 0;
    s->big_id = 0;
    s->big_len = 0;
    bump(&s->event_futex);
    return 0;
}

static int sweep_locked(sdw_ring *r, int64_t now_ms)
{
    int n = 0;
    for (unsigned i = 0; i < r->h->nslots; i++) {
        struct ring_slot *s = slot_at(r, i);
        if (is_terminal(s->state) && s->expires_mono_ms <= now_ms && expire_locked(r, s, NULL) == 0) {
            wake_all(&s->event_futex);
            n++;
        }
    }
    return n;
}

int sdw_ring_submit(sdw_ring *r, const void *input, size_t len, sdw_job_id id, sdw_error *e)
{
    return sdw_ring_submit_as(r, input, len, 0, 0, id, e);
}

int sdw_ring_submit_as(sdw_ring *r, const void *input, size_t len, uint32_t owner, unsigned owner_max_queued,
                       sdw_job_id id, sdw_error *e)
{
    return sdw_ring_submit_labelled(r, input, len, owner, owner_max_queued, NULL, id, e);
}

int sdw_ring_submit_labelled(sdw_ring *r, const void *input, size_t len, uint32_t owner, unsigned owner_max_queued,
                             const char *labels, sdw_job_id id, sdw_error *e)
{
    uint8_t raw[16];
    if (labels && strlen(labels) >= SDW_RING_LABELS_MAX)
        return sdw_fail(e, SDW_EINVAL, "job metric labels of %zu bytes (at most %d)", strlen(labels),
                        SDW_RING_LABELS_MAX - 1);
    if (len > r->h->input_cap)
        return sdw_fail(e, SDW_ETOOBIG, "job input of %zu bytes exceeds the slot input area (%zu bytes)",
                        len, (size_t)r->h->input_cap);
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        return sdw_fail(e, SDW_EIO, "getrandom for a job id: %s", strerror(errno));
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    if (__atomic_load_n(&r->h->retired, __ATOMIC_ACQUIRE)) {
        ring_unlock(r);
        return sdw_fail(e, SDW_EFULL, "the job ring is being replaced; retry");
    }
    sweep_locked(r, sdw_ring_now_ms());
    unsigned queued = 0, owned = 0;
    struct ring_slot *pick = NULL;
    for (unsigned i = 0; i < r->h->nslots; i++) {
        struct ring_slot *s = slot_at(r, i);
        if (s->state == SDW_JOB_QUEUED) {
            queued++;
            owned += s->owner == owner;
        } else if (!pick && s->state == SDW_JOB_FREE) {
            pick = s;
        }
    }
    /* Counted under the lock, so that concurrent submits of one owner from
     * several processes cannot pass the limit together. */
    if (owner_max_queued && owned >= owner_max_queued) {
        ring_unlock(r);
        return sdw_fail(e, SDW_ELIMIT, "%u jobs of this key are queued (its max_queued)", owned);
    }
    for (unsigned i = 0; !pick && i < r->h->nslots; i++)
        if (slot_at(r, i)->state == SDW_JOB_EXPIRED)
            pick = slot_at(r, i);
    /* Kept results must not turn work away, but they are only taken when
     * nothing else is free: then the oldest finished job gives up its slot
     * before its retention ends, and the count of such evictions says
     * that ring.slots is too small for the load. */
    struct ring_slot *oldest = NULL;
    for (unsigned i = 0; !pick && i < r->h->nslots; i++) {
        struct ring_slot *s = slot_at(r, i);
        if (is_terminal(s->state) && (!oldest || s->expires_mono_ms < oldest->expires_mono_ms))
            oldest = s;
    }
    if (!pick && oldest && queued < r->h->max_queued && expire_locked(r, oldest, NULL) == 0) {
        wake_all(&oldest->event_futex);
        r->h->evicted++;
        pick = oldest;
    }
    if (queued >= r->h->max_queued || !pick) {
        ring_unlock(r);
        return sdw_fail(e, SDW_EFULL, queued >= r->h->max_queued ? "job queue is full (%u queued)"
                                                                       : "no free job slot (%u queued)", queued);
    }
    if (pick->state == SDW_JOB_EXPIRED) {
        gone_add_locked(r, pick->id);
        transition(pick, SDW_JOB_FREE, NULL);
    }
    memcpy(pick->id, raw, 16);
    pick->owner = owner;
    memcpy(input_of(r, pick), input, len);
    pick->input_len = len;
    pick->cancel_requested = 0;
    pick->seq = ++r->h->next_seq;
    pick->created_ms = clock_ms(CLOCK_REALTIME);
    pick->started_ms = pick->finished_ms = 0;
    pick->expires_mono_ms = 0;
    pick->last_event_id = pick->log_used = pick->big_id = pick->big_len = 0;
    pick->big_name[0] = '\0';
    pick->metric_set = label_set_locked(r, labels);
    if (pick->metric_set)
        add64(&r->h->metrics.set[pick->metric_set - 1].submitted, 1);
    transition(pick, SDW_JOB_QUEUED, NULL);
    bump(&r->h->work_futex);
    ring_unlock(r);
    wake_all(&r->h->work_futex);
    format_id(raw, id);
    return 0;
}

int sdw_ring_cancel(sdw_ring *r, const char *id, sdw_job_state *after, sdw_error *e)
{
    char *json = error_json("cancelled", "job cancelled");
    if (!json)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = ring_lock(r, e);
    if (rc) {
        free(json);
        return rc;
    }
    struct ring_slot *s = find_locked(r, id, e);
    if (!s) {
        rc = SDW_ENOTFOUND;
    } else if (s->state == SDW_JOB_QUEUED) {
        rc = end_with_error_locked(r, s, SDW_JOB_CANCELLED, "cancelled", json, e);
        queue_moved_locked(r, s->seq);
    } else if (s->state == SDW_JOB_RUNNING) {
        s->cancel_requested = 1;
        bump(&s->event_futex);
    } else {
        rc = sdw_fail(e, SDW_ESTATE, "job is already %s", sdw_job_state_name((sdw_job_state)s->state));
    }
    if (s && after)
        *after = (sdw_job_state)s->state;
    bump(&r->h->work_futex);
    ring_unlock(r);
    free(json);
    if (s)
        wake_all(&s->event_futex);
    wake_all(&r->h->work_futex);
    return rc;
}

/* Whether id is one of the remembered ids of jobs whose slot was reused. */
static bool gone_locked(const sdw_ring *r, const char *id)
{
    uint8_t raw[16];
    if (!parse_id(id, raw))
        return false;
    const struct gone_bucket *b = gone_bucket_of(r, raw);
    uint32_t n = b->used < GONE_WAYS ? b->used : GONE_WAYS;
    for (uint32_t i = 0; i < n; i++)
        if (memcmp(b->id[i], raw, 16) == 0)
            return true;
    return false;
}

int sdw_ring_job_status(sdw_ring *r, const char *id, sdw_job_info *info, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    struct ring_slot *s = find_locked(r, id, e);
    if (!s && gone_locked(r, id)) {
        memset(info, 0, sizeof *info);
        info->state = SDW_JOB_EXPIRED;
        ring_unlock(r);
        return 0;
    }
    if (s) {
        memset(info, 0, sizeof *info);
        info->state = (sdw_job_state)s->state;
        info->owner = s->owner;
        info->cancel_requested = s->cancel_requested != 0;
        info->last_event_id = s->last_event_id;
        info->created_ms = s->created_ms;
        info->started_ms = s->started_ms;
        info->finished_ms = s->finished_ms;
        info->queue_position = queue_position_locked(r, s);
    }
    ring_unlock(r);
    return s ? 0 : SDW_ENOTFOUND;
}

/* The first event after `after`, copied out; 0 when there is none yet. */
static int next_event_locked(sdw_ring *r, struct ring_slot *s, uint64_t after, sdw_ring_event *ev, sdw_error *e)
{
    const unsigned char *log = log_of(r, s), *src = NULL;
    struct log_rec rec;
    uint64_t off = 0;
    while (off < s->log_used) {
        memcpy(&rec, log + off, sizeof rec);
        if (rec.id > after) {
            src = log + off + sizeof rec;
            break;
        }
        off += ALIGN(sizeof rec + rec.len + 1, 8);
    }
    if (s->big_id > after && (!src || s->big_id < rec.id)) {
        rec.id = s->big_id;
        rec.len = (uint32_t)s->big_len;
        memcpy(rec.name, s->big_name, sizeof rec.name - 1);
        rec.name[sizeof rec.name - 1] = '\0';
        src = image_of(r, s);
    }
    if (!src)
        return 0;
    ev->data = malloc((size_t)rec.len + 1);
    if (!ev->data)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    memcpy(ev->data, src, rec.len);
    ev->data[rec.len] = '\0';
    ev->len = rec.len;
    ev->id = rec.id;
    memset(ev->name, 0, sizeof ev->name);
    memcpy(ev->name, rec.name, strnlen(rec.name, sizeof rec.name));
    return 1;
}

/* Takes the lock and finds a job that still has its data, for the
 * waits: 0 with the lock held and *out set; SDW_RING_RETIRED when the ring
 * was replaced, SDW_ENOTFOUND for an unknown or expired job, without the
 * lock. */
static int lock_live_job(sdw_ring *r, const char *id, struct ring_slot **out, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    if (__atomic_load_n(&r->h->retired, __ATOMIC_ACQUIRE)) {
        ring_unlock(r);
        return SDW_RING_RETIRED;
    }
    struct ring_slot *s = find_locked(r, id, e);
    if (!s || s->state == SDW_JOB_EXPIRED) {
        ring_unlock(r);
        return sdw_fail(e, SDW_ENOTFOUND, "no job %.40s (%s)", id ? id : "", s ? "expired" : "unknown");
    }
    *out = s;
    return 0;
}

int sdw_ring_wait_event(sdw_ring *r, const char *id, uint64_t after, int timeout_ms, sdw_ring_event *ev,
                        sdw_error *e)
{
    int64_t deadline = deadline_of(timeout_ms);
    memset(ev, 0, sizeof *ev);
    for (;;) {
        struct ring_slot *s;
        int rc = lock_live_job(r, id, &s, e);
        if (rc)
            return rc;
        rc = next_event_locked(r, s, after, ev, e);
        uint32_t seen = __atomic_load_n(&s->event_futex, __ATOMIC_SEQ_CST);
        int ended = is_terminal(s->state);
        ring_unlock(r);
        if (rc)
            return rc;
        if (ended)
            return SDW_RING_END;
        if (timeout_ms == 0 || expired_deadline(deadline))
            return 0;
        wait_change(&s->event_futex, seen, deadline);
    }
}

int sdw_ring_wait_queue_position(sdw_ring *r, const char *id, unsigned known, int timeout_ms,
                                 unsigned *position, sdw_error *e)
{
    int64_t deadline = deadline_of(timeout_ms);
    for (;;) {
        struct ring_slot *s;
        int rc = lock_live_job(r, id, &s, e);
        if (rc)
            return rc;
        unsigned pos = queue_position_locked(r, s);
        uint32_t seen = __atomic_load_n(&s->event_futex, __ATOMIC_SEQ_CST);
        ring_unlock(r);
        if (pos != known) {
            *position = pos;
            return 1;
        }
        if (timeout_ms == 0 || expired_deadline(deadline))
            return 0;
        wait_change(&s->event_futex, seen, deadline);
    }
}

void sdw_ring_event_free(sdw_ring_event *ev)
{
    if (ev) {
        free(ev->data);
        ev->data = NULL;
    }
}

int sdw_ring_read_input(sdw_ring *r, const char *id, void **input, size_t *len, sdw_error *e)
{
    *input = NULL;
    *len = 0;
    WITH_JOB(r, id, e, {
        if (s->state == SDW_JOB_EXPIRED) {
            rc_ = sdw_fail(e, SDW_ENOTFOUND, "job %s has expired", id);
        } else if (!(*input = malloc(s->input_len ? s->input_len : 1))) {
            rc_ = sdw_fail(e, SDW_ENOMEM, "out of memory");
        } else {
            memcpy(*input, input_of(r, s), s->input_len);
            *len = s->input_len;
        }
    });
}

/* ---- engine side ---- */

int sdw_ring_take(sdw_ring *r, int timeout_ms, sdw_job_id id, void **input, size_t *len, sdw_error *e)
{
    int64_t deadline = deadline_of(timeout_ms);
    *input = NULL;
    *len = 0;
    for (;;) {
        int rc = ring_lock(r, e);
        if (rc)
            return rc;
        if (__atomic_load_n(&r->h->retired, __ATOMIC_ACQUIRE)) {
            ring_unlock(r);
            return sdw_fail(e, SDW_ESTATE, "the job ring was replaced by a new one");
        }
        struct ring_slot *oldest = NULL;
        for (unsigned i = 0; i < r->h->nslots; i++) {
            struct ring_slot *s = slot_at(r, i);
            if (s->state == SDW_JOB_QUEUED && (!oldest || s->seq < oldest->seq))
                oldest = s;
        }
        if (oldest) {
            void *copy = malloc(oldest->input_len ? oldest->input_len : 1);
            if (!copy) {
                ring_unlock(r);
                return sdw_fail(e, SDW_ENOMEM, "out of memory");
            }
            memcpy(copy, input_of(r, oldest), oldest->input_len);
            *len = oldest->input_len;
            transition(oldest, SDW_JOB_RUNNING, NULL);
            oldest->started_ms = clock_ms(CLOCK_REALTIME);
            hist_observe(r, SDW_RING_HIST_QUEUE_WAIT, (double)(oldest->started_ms - oldest->created_ms) / 1000);
            bump(&oldest->event_futex);
            queue_moved_locked(r, oldest->seq);
            format_id(oldest->id, id);
            ring_unlock(r);
            wake_all(&oldest->event_futex);
            *input = copy;
            return 1;
        }
        uint32_t seen = __atomic_load_n(&r->h->work_futex, __ATOMIC_SEQ_CST);
        ring_unlock(r);
        if (timeout_ms == 0 || expired_deadline(deadline))
            return 0;
        /* A signal (the engine's stop request) ends the wait, so that no
         * job is taken after it. */
        if (wait_change(&r->h->work_futex, seen, deadline))
            return 0;
    }
}

static int need_running(struct ring_slot *s, const char *what, sdw_error *e)
{
    if (s->state != SDW_JOB_RUNNING)
        return sdw_fail(e, SDW_ESTATE, "%s: job is %s, not running", what,
                        sdw_job_state_name((sdw_job_state)s->state));
    return 0;
}

int sdw_ring_append(sdw_ring *r, const char *id, const char *name, const char *data, size_t len, sdw_error *e)
{
    if (!valid_event_name(name) || strcmp(name, "preview") == 0 || strcmp(name, "complete") == 0)
        return sdw_fail(e, SDW_EINVAL, "bad event name for the small-event log");
    WITH_JOB(r, id, e, {
        rc_ = need_running(s, "event", e);
        if (!rc_)
            rc_ = append_locked(r, s, name, data, len, 0, e);
    });
}

int sdw_ring_preview(sdw_ring *r, const char *id, const char *data, size_t len, sdw_error *e)
{
    WITH_JOB(r, id, e, {
        rc_ = need_running(s, "preview", e);
        if (!rc_)
            rc_ = put_image_locked(r, s, "preview", data, len, e);
    });
}

int sdw_ring_complete(sdw_ring *r, const char *id, const char *data, size_t len, sdw_error *e)
{
    WITH_JOB(r, id, e, {
        rc_ = need_running(s, "complete", e);
        if (!rc_)
            rc_ = put_image_locked(r, s, "complete", data, len, e);
        if (!rc_) {
            finish_times(r, s);
            transition(s, SDW_JOB_DONE, NULL);
            count_end_locked(r, s, SDW_JOB_DONE, NULL);
            bump(&s->event_futex);
        }
    });
}

int sdw_ring_fail(sdw_ring *r, const char *id, const char *code, const char *message, sdw_error *e)
{
    char *json = error_json(code ? code : "failed", message);
    if (!json)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = ring_lock(r, e);
    if (rc) {
        free(json);
        return rc;
    }
    struct ring_slot *s = find_locked(r, id, e);
    bool was_queued = s && s->state == SDW_JOB_QUEUED;
    rc = s ? end_with_error_locked(r, s, SDW_JOB_FAILED, code, json, e) : SDW_ENOTFOUND;
    if (was_queued)
        queue_moved_locked(r, s->seq);
    ring_unlock(r);
    free(json);
    if (s)
        wake_all(&s->event_futex);
    return rc;
}

int sdw_ring_cancel_requested(sdw_ring *r, const char *id, sdw_error *e)
{
    WITH_JOB(r, id, e, { rc_ = s->cancel_requested ? 1 : 0; });
}

int sdw_ring_finish_cancelled(sdw_ring *r, const char *id, sdw_error *e)
{
    char *json = error_json("cancelled", "job cancelled");
    if (!json)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = ring_lock(r, e);
    if (rc) {
        free(json);
        return rc;
    }
    struct ring_slot *s = find_locked(r, id, e);
    if (!s)
        rc = SDW_ENOTFOUND;
    else if (!(rc = need_running(s, "finish cancelled", e)))
        rc = end_with_error_locked(r, s, SDW_JOB_CANCELLED, "cancelled", json, e);
    ring_unlock(r);
    free(json);
    if (s)
        wake_all(&s->event_futex);
    return rc;
}

/* ---- supervisor side ---- */

int sdw_ring_set_engine(sdw_ring *r, sdw_engine_state state, pid_t pid, const char *reason, sdw_error *e)
{
    if ((unsigned)state > SDW_ENGINE_DEAD)
        return sdw_fail(e, SDW_EINVAL, "bad engine state %d", (int)state);
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    r->h->engine_state = state;
    r->h->engine_pid = pid;
    r->h->heartbeat_ms = sdw_ring_now_ms();
    clip_utf8(r->h->engine_reason, sizeof r->h->engine_reason, reason ? reason : "");
    ring_unlock(r);
    return 0;
}

int sdw_ring_set_models(sdw_ring *r, const sdw_ring_model *models, int n, sdw_error *e)
{
    if (n < 0 || n > SDW_RING_MAX_MODELS)
        return sdw_fail(e, SDW_EINVAL, "%d models: the job ring holds at most %d", n, SDW_RING_MAX_MODELS);
    for (int i = 0; i < n; i++)
        if (!memchr(models[i].name, '\0', sizeof models[i].name) ||
            !memchr(models[i].family, '\0', sizeof models[i].family) ||
            !memchr(models[i].prediction, '\0', sizeof models[i].prediction) ||
            !memchr(models[i].own_sampler, '\0', sizeof models[i].own_sampler))
            return sdw_fail(e, SDW_EINVAL, "model %d: a name field is not terminated", i);
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    memcpy(r->h->models, models, (size_t)n * sizeof *models);
    r->h->n_models = (uint32_t)n;
    ring_unlock(r);
    return 0;
}

int sdw_ring_models(sdw_ring *r, sdw_ring_model *out, int cap, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    int n = (int)r->h->n_models, k = n < cap ? n : cap;
    if (k > 0)
        memcpy(out, r->h->models, (size_t)k * sizeof *out);
    ring_unlock(r);
    return n;
}

int sdw_ring_set_loras(sdw_ring *r, const sdw_ring_lora *loras, int n, sdw_error *e)
{
    if (n < 0 || n > SDW_RING_MAX_LORAS)
        return sdw_fail(e, SDW_EINVAL, "%d LoRAs: the job ring holds at most %d", n, SDW_RING_MAX_LORAS);
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    for (int i = 0; i < n; i++) {
        sdw_ring_lora *d = &r->h->loras[i];
        clip_utf8(d->name, sizeof d->name, loras[i].name);
        for (int m = 0; m < SDW_RING_MAX_MODELS; m++)
            clip_utf8(d->why[m], sizeof d->why[m], loras[i].why[m]);
    }
    r->h->n_loras = (uint32_t)n;
    ring_unlock(r);
    return 0;
}

int sdw_ring_loras(sdw_ring *r, sdw_ring_lora *out, int cap, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    int n = (int)r->h->n_loras, k = n < cap ? n : cap;
    if (k > 0)
        memcpy(out, r->h->loras, (size_t)k * sizeof *out);
    ring_unlock(r);
    return n;
}

int sdw_ring_lora_fit(sdw_ring *r, const char *name, const char *model, char *why, size_t cap, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    int m = -1, l = -1;
    for (int i = 0; i < (int)r->h->n_models && i < SDW_RING_MAX_MODELS; i++)
        if (!strncmp(r->h->models[i].name, model, sizeof r->h->models[i].name))
            m = i;
    for (int i = 0; i < (int)r->h->n_loras && i < SDW_RING_MAX_LORAS; i++)
        if (!strncmp(r->h->loras[i].name, name, sizeof r->h->loras[i].name))
            l = i;
    if (cap)
        why[0] = 0;
    rc = m < 0 ? SDW_ESTATE : l < 0 ? SDW_ENOTFOUND : SDW_OK;
    if (!rc && r->h->loras[l].why[m][0]) {
        snprintf(why, cap, "%.*s", SDW_RING_LORA_WHY - 1, r->h->loras[l].why[m]);
        rc = SDW_EINVAL;
    }
    ring_unlock(r);
    return rc;
}

int sdw_ring_heartbeat(sdw_ring *r, sdw_error *e)
{
    __atomic_store_n(&r->h->heartbeat_ms, sdw_ring_now_ms(), __ATOMIC_RELAXED);
    return 0;
}

int sdw_ring_engine_status(sdw_ring *r, sdw_engine_info *info, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    memset(info, 0, sizeof *info);
    info->state = (sdw_engine_state)r->h->engine_state;
    info->pid = r->h->engine_pid;
    info->heartbeat_ms = __atomic_load_n(&r->h->heartbeat_ms, __ATOMIC_RELAXED);
    memcpy(info->reason, r->h->engine_reason, sizeof info->reason);
    info->reason[sizeof info->reason - 1] = '\0';
    info->recoveries = r->h->recoveries;
    info->slots = r->h->nslots;
    info->evicted = r->h->evicted;
    for (unsigned i = 0; i < r->h->nslots; i++) {
        uint32_t st = slot_at(r, i)->state;
        info->queued += st == SDW_JOB_QUEUED;
        info->running += st == SDW_JOB_RUNNING;
        info->kept += is_terminal(st);
        info->free_slots += st == SDW_JOB_FREE || st == SDW_JOB_EXPIRED;
    }
    ring_unlock(r);
    return 0;
}

/* Every RUNNING job fails with an error event of code and message; the
 * engine becomes DEAD with reason. */
static int end_running(sdw_ring *r, const char *code, const char *message, const char *reason, sdw_error *e)
{
    char *json = error_json(code, message);
    if (!json)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = ring_lock(r, e);
    if (rc) {
        free(json);
        return rc;
    }
    int failed = 0;
    for (unsigned i = 0; i < r->h->nslots; i++) {
        struct ring_slot *s = slot_at(r, i);
        if (s->state == SDW_JOB_RUNNING && end_with_error_locked(r, s, SDW_JOB_FAILED, code, json, NULL) == 0)
            failed++;
    }
    r->h->engine_state = SDW_ENGINE_DEAD;
    r->h->engine_pid = 0;
    clip_utf8(r->h->engine_reason, sizeof r->h->engine_reason, reason);
    ring_unlock(r);
    free(json);
    for (unsigned i = 0; i < r->h->nslots; i++)
        wake_all(&slot_at(r, i)->event_futex);
    return failed;
}

int sdw_ring_engine_died(sdw_ring *r, const char *reason, sdw_error *e)
{
    char msg[sizeof r->h->engine_reason], why[sizeof msg - 16];
    clip_utf8(why, sizeof why, reason ? reason : "");
    snprintf(msg, sizeof msg, "engine died%s%s", why[0] ? ": " : "", why);
    return end_running(r, "engine_crashed", msg, msg, e);
}

int sdw_ring_engine_stopped(sdw_ring *r, const char *reason, sdw_error *e)
{
    return end_running(r, "engine_stopped", STOPPED_MESSAGE, reason && reason[0] ? reason : "engine stopped", e);
}

int sdw_ring_expire(sdw_ring *r, const char *id, sdw_error *e)
{
    WITH_JOB(r, id, e, { rc_ = expire_locked(r, s, e); });
}

int sdw_ring_sweep(sdw_ring *r, int64_t now_ms, sdw_error *e)
{
    int rc = ring_lock(r, e);
    if (rc)
        return rc;
    int n = sweep_locked(r, now_ms);
    ring_unlock(r);
    return n;
}
