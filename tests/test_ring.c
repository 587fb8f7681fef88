/* The shared-memory job ring: state machine, FIFO, event replay, blocking
 * waits across processes, recovery from a lock holder killed with SIGKILL,
 * queue limits, expiry, eviction, cancel, engine death, concurrent
 * producers, queue positions, the threads of one process waiting at once,
 * the supervisor's attach across restarts, and the counters behind
 * /metrics. */
#define _GNU_SOURCE
#include "ring/ring.h"
#include "tap.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* Children that must be woken wait forever (-1) under this alarm, so a lost
 * wake-up kills them and fails the test instead of passing late. */
#define WATCHDOG_S 20

static char ring_name[64];
static int ring_counter;

static sdw_ring *make_ring(unsigned slots, unsigned max_queued, size_t log_bytes, size_t image_bytes)
{
    snprintf(ring_name, sizeof ring_name, "/sdw-test-ring-%d-%d", (int)getpid(), ++ring_counter);
    sdw_ring_config cfg = sdw_ring_default_config(ring_name);
    cfg.slots = slots;
    cfg.max_queued = max_queued;
    cfg.input_bytes = 4096;
    if (log_bytes)
        cfg.log_bytes = log_bytes;
    if (image_bytes)
        cfg.image_bytes = image_bytes;
    sdw_ring *r = NULL;
    sdw_error e = {0};
    if (sdw_ring_create(&cfg, &r, &e) != 0) {
        tap_diag("create %s: %s", ring_name, e.msg);
        return NULL;
    }
    return r;
}

static void drop_ring(sdw_ring *r)
{
    sdw_ring_close(r);
    sdw_ring_unlink(ring_name, NULL);
}

static int submit(sdw_ring *r, const char *input, sdw_job_id id)
{
    sdw_error e;
    return sdw_ring_submit(r, input, strlen(input), id, &e);
}

static int take(sdw_ring *r, sdw_job_id id, char *input_out, size_t cap)
{
    sdw_error e;
    void *in;
    size_t n;
    int rc = sdw_ring_take(r, 0, id, &in, &n, &e);
    if (rc == 1) {
        if (input_out) {
            size_t k = n < cap - 1 ? n : cap - 1;
            memcpy(input_out, in, k);
            input_out[k] = '\0';
        }
        free(in);
    }
    return rc;
}

static sdw_job_state state_of(sdw_ring *r, const char *id)
{
    sdw_job_info info;
    if (sdw_ring_job_status(r, id, &info, NULL) != 0)
        return (sdw_job_state)-1;
    return info.state;
}

static int child_exit_ok(pid_t pid)
{
    int st;
    return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void test_table(void)
{
    /* The documented transitions, and nothing else. */
    static const int allowed[7][7] = {
        /* to:  FREE Q  RUN DONE FAIL CANC EXP */
        [SDW_JOB_FREE] = {0, 1, 0, 0, 0, 0, 0},
        [SDW_JOB_QUEUED] = {0, 0, 1, 0, 1, 1, 0},
        [SDW_JOB_RUNNING] = {0, 0, 0, 1, 1, 1, 0},
        [SDW_JOB_DONE] = {0, 0, 0, 0, 0, 0, 1},
        [SDW_JOB_FAILED] = {0, 0, 0, 0, 0, 0, 1},
        [SDW_JOB_CANCELLED] = {0, 0, 0, 0, 0, 0, 1},
        [SDW_JOB_EXPIRED] = {1, 0, 0, 0, 0, 0, 0},
    };
    int mismatches = 0;
    for (int f = 0; f < 7; f++)
        for (int t = 0; t < 7; t++)
            if (sdw_job_transition_allowed((sdw_job_state)f, (sdw_job_state)t) != (allowed[f][t] != 0)) {
                mismatches++;
                tap_diag("%s -> %s", sdw_job_state_name((sdw_job_state)f), sdw_job_state_name((sdw_job_state)t));
            }
    tap_ok(mismatches == 0, "transition table matches the documented state machine (49 pairs)");
}

static void test_create_open(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(4, 4, 0, 0), *r2 = NULL;
    tap_ok(r != NULL, "ring created");
    if (!r)
        return;
    sdw_ring_config cfg = sdw_ring_default_config(ring_name);
    sdw_ring *dup = NULL;
    tap_ok(sdw_ring_create(&cfg, &dup, &e) < 0, "creating an existing name fails");
    tap_ok(sdw_ring_open(ring_name, &r2, &e) == 0, "ring opened by name");
    sdw_job_id id;
    submit(r, "hello", id);
    tap_ok(r2 && state_of(r2, id) == SDW_JOB_QUEUED, "second mapping sees the job");
    sdw_ring_close(r2);
    tap_ok(sdw_ring_open("/no-such-sdw-ring-xyz", &r2, &e) == SDW_ENOTFOUND, "opening a missing ring: not found");
    tap_ok(sdw_ring_open("bad/name", &r2, &e) == SDW_EINVAL, "a name with a slash inside is refused");
    cfg.name = "/sdw-test-bad-cfg";
    cfg.max_queued = cfg.slots + 1;
    tap_ok(sdw_ring_create(&cfg, &dup, &e) == SDW_EINVAL, "max_queued above slots is refused");
    tap_ok(strlen(id) == SDW_JOB_ID_LEN && strncmp(id, "job-", 4) == 0 && strspn(id + 4, "0123456789abcdef") == 32,
           "job id is job- and 32 hex digits: %s", id);
    sdw_job_info info;
    tap_ok(sdw_ring_job_status(r, "job-00000000000000000000000000000000", &info, &e) == SDW_ENOTFOUND,
           "unknown id: not found");
    tap_ok(sdw_ring_job_status(r, "job-xyz", &info, &e) == SDW_ENOTFOUND, "malformed id: not found");
    tap_ok(sdw_ring_job_status(r, NULL, &info, &e) == SDW_ENOTFOUND, "NULL id: not found");
    char big[5000];
    memset(big, 'x', sizeof big);
    tap_ok(sdw_ring_submit(r, big, sizeof big, id, &e) == SDW_ETOOBIG, "input larger than the slot area");
    drop_ring(r);
}

static void test_lifecycle(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!tap_ok(r != NULL, "ring for the lifecycle"))
        return;
    sdw_job_id id, got;
    char in[64];
    sdw_job_state after;
    tap_ok(submit(r, "params", id) == 0 && state_of(r, id) == SDW_JOB_QUEUED, "FREE -> QUEUED by submit");
    tap_ok(sdw_ring_append(r, id, "progress", "{}", 2, &e) == SDW_ESTATE, "no events while queued");
    tap_ok(sdw_ring_preview(r, id, "{}", 2, &e) == SDW_ESTATE, "no preview while queued");
    tap_ok(sdw_ring_complete(r, id, "{}", 2, &e) == SDW_ESTATE, "QUEUED -> DONE refused");
    tap_ok(sdw_ring_finish_cancelled(r, id, &e) == SDW_ESTATE, "finish_cancelled on a queued job refused");
    tap_ok(sdw_ring_expire(r, id, &e) == SDW_ESTATE, "QUEUED -> EXPIRED refused");
    tap_ok(state_of(r, id) == SDW_JOB_QUEUED, "refusals changed nothing");
    tap_ok(take(r, got, in, sizeof in) == 1 && strcmp(got, id) == 0 && strcmp(in, "params") == 0,
           "QUEUED -> RUNNING by take, with the input");
    void *copy;
    size_t clen;
    tap_ok(sdw_ring_read_input(r, id, &copy, &clen, &e) == 0 && clen == 6 && memcmp(copy, "params", 6) == 0,
           "the pool can read the input back");
    free(copy);
    tap_ok(state_of(r, id) == SDW_JOB_RUNNING, "state running");
    tap_ok(take(r, got, NULL, 0) == 0, "take with nothing queued times out at once");
    tap_ok(sdw_ring_expire(r, id, &e) == SDW_ESTATE, "RUNNING -> EXPIRED refused");
    tap_ok(sdw_ring_append(r, id, "progress", "{\"step\":1}", 10, &e) == 0, "progress while running");
    tap_ok(sdw_ring_append(r, id, "preview", "{}", 2, &e) == SDW_EINVAL, "preview through append refused");
    tap_ok(sdw_ring_append(r, id, "Bad Name", "{}", 2, &e) == SDW_EINVAL, "bad event name refused");
    tap_ok(sdw_ring_cancel_requested(r, id, &e) == 0, "no cancel requested");
    tap_ok(sdw_ring_complete(r, id, "{\"type\":\"complete\"}", 19, &e) == 0 && state_of(r, id) == SDW_JOB_DONE,
           "RUNNING -> DONE by complete");
    tap_ok(sdw_ring_complete(r, id, "{}", 2, &e) == SDW_ESTATE, "DONE -> DONE refused");
    tap_ok(sdw_ring_fail(r, id, "x", "y", &e) == SDW_ESTATE, "DONE -> FAILED refused");
    tap_ok(sdw_ring_cancel(r, id, &after, &e) == SDW_ESTATE && after == SDW_JOB_DONE, "cancelling a done job refused");
    tap_ok(sdw_ring_append(r, id, "progress", "{}", 2, &e) == SDW_ESTATE, "no events after done");
    tap_ok(sdw_ring_finish_cancelled(r, id, &e) == SDW_ESTATE, "DONE -> CANCELLED refused");
    sdw_job_info info;
    sdw_ring_job_status(r, id, &info, &e);
    tap_ok(info.created_ms > 0 && info.started_ms >= info.created_ms && info.finished_ms >= info.started_ms &&
               info.last_event_id == 2,
           "times and last event id recorded");
    tap_ok(sdw_ring_expire(r, id, &e) == 0 && state_of(r, id) == SDW_JOB_EXPIRED, "DONE -> EXPIRED");
    tap_ok(sdw_ring_expire(r, id, &e) == SDW_ESTATE, "EXPIRED -> EXPIRED refused");
    sdw_ring_event ev;
    tap_ok(sdw_ring_wait_event(r, id, 0, 0, &ev, &e) == SDW_ENOTFOUND, "events of an expired job are gone");
    tap_ok(sdw_ring_read_input(r, id, &copy, &clen, &e) == SDW_ENOTFOUND, "and so is its input");

    /* QUEUED -> FAILED, RUNNING -> FAILED, FAILED/CANCELLED -> EXPIRED. */
    sdw_job_id a, b;
    submit(r, "a", a);
    tap_ok(sdw_ring_fail(r, a, "bad_input", "cannot decode", &e) == 0 && state_of(r, a) == SDW_JOB_FAILED,
           "QUEUED -> FAILED");
    submit(r, "b", b);
    take(r, got, NULL, 0);
    tap_ok(sdw_ring_fail(r, b, "oom", "out of memory", &e) == 0 && state_of(r, b) == SDW_JOB_FAILED,
           "RUNNING -> FAILED");
    tap_ok(sdw_ring_wait_event(r, b, 0, 0, &ev, &e) == 1 && strcmp(ev.name, "error") == 0 &&
               strstr(ev.data, "\"code\":\"oom\"") && strstr(ev.data, "out of memory"),
           "fail publishes an error event with code and message: %s", ev.data ? ev.data : "");
    sdw_ring_event_free(&ev);
    tap_ok(sdw_ring_expire(r, a, &e) == 0, "FAILED -> EXPIRED");
    drop_ring(r);
}

static void test_fifo(void)
{
    enum { N = 50 };
    sdw_ring *r = make_ring(64, 64, 0, 0);
    if (!tap_ok(r != NULL, "ring for FIFO"))
        return;
    sdw_job_id ids[N], got;
    int ok = 1;
    for (int i = 0; i < N; i++) {
        char in[16];
        snprintf(in, sizeof in, "job %d", i);
        ok &= submit(r, in, ids[i]) == 0;
    }
    tap_ok(ok, "%d jobs submitted", N);
    int unique = 1;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < i; j++)
            unique &= strcmp(ids[i], ids[j]) != 0;
    tap_ok(unique, "ids are unique");
    int pos_ok = 1;
    for (int i = 0; i < N; i++) {
        sdw_job_info info;
        sdw_ring_job_status(r, ids[i], &info, NULL);
        pos_ok &= info.queue_position == (unsigned)i + 1;
    }
    tap_ok(pos_ok, "queue positions 1..%d in submit order", N);
    sdw_error e;
    sdw_job_state after;
    sdw_ring_cancel(r, ids[10], &after, &e);
    sdw_job_info info;
    sdw_ring_job_status(r, ids[20], &info, NULL);
    tap_ok(after == SDW_JOB_CANCELLED && info.queue_position == 20, "cancelling job 11 moves job 21 to position 20");
    int order = 1;
    for (int i = 0; i < N; i++) {
        if (i == 10)
            continue;
        char in[16], want[16];
        snprintf(want, sizeof want, "job %d", i);
        order &= take(r, got, in, sizeof in) == 1 && strcmp(got, ids[i]) == 0 && strcmp(in, want) == 0;
        sdw_ring_complete(r, got, "{}", 2, &e);
    }
    tap_ok(order, "the engine takes jobs oldest first");
    sdw_ring_job_status(r, ids[49], &info, NULL);
    tap_ok(info.queue_position == 0 && info.state == SDW_JOB_DONE, "no queue position once not queued");
    drop_ring(r);
}

/* Reads every event after `after` without blocking into names/ids. */
static int read_all(sdw_ring *r, const char *id, uint64_t after, char names[][16], uint64_t *ids, char **datas, int cap)
{
    int n = 0;
    sdw_ring_event ev;
    sdw_error e;
    int rc;
    while ((rc = sdw_ring_wait_event(r, id, after, 0, &ev, &e)) == 1 && n < cap) {
        strcpy(names[n], ev.name);
        ids[n] = ev.id;
        if (datas)
            datas[n] = strdup(ev.data);
        after = ev.id;
        sdw_ring_event_free(&ev);
        n++;
    }
    return rc == SDW_RING_END || rc == 0 ? n : -1;
}

static void test_replay(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(2, 2, 0, 0);
    if (!tap_ok(r != NULL, "ring for replay"))
        return;
    sdw_job_id id, got;
    submit(r, "x", id);
    take(r, got, NULL, 0);
    /* 1-3 progress, 4 preview, 5-6 progress, 7 preview, 8 progress, 9 complete */
    for (int i = 1; i <= 8; i++) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "{\"step\":%d}", i);
        if (i == 4 || i == 7)
            sdw_ring_preview(r, id, buf, (size_t)n, &e);
        else
            sdw_ring_append(r, id, "progress", buf, (size_t)n, &e);
    }
    char names[32][16];
    uint64_t ids[32];
    char *datas[32];
    int n = read_all(r, id, 0, names, ids, datas, 32);
    tap_ok(n == 7 && ids[0] == 1 && ids[3] == 5 && ids[6] == 8 && strcmp(names[6], "progress") == 0 &&
               strcmp(names[5], "preview") == 0 && ids[5] == 7,
           "while running: 6 progress events and the newest preview (7), in id order");
    tap_ok(n > 0 && strcmp(datas[0], "{\"step\":1}") == 0, "payload kept");
    for (int i = 0; i < n; i++)
        free(datas[i]);
    sdw_ring_complete(r, id, "{\"type\":\"complete\",\"image\":\"AAAA\"}", 34, &e);
    n = read_all(r, id, 0, names, ids, NULL, 32);
    int seq_ok = n == 7;
    uint64_t expect_ids[] = {1, 2, 3, 5, 6, 8, 9};
    for (int i = 0; seq_ok && i < n; i++)
        seq_ok &= ids[i] == expect_ids[i] && strcmp(names[i], i == 6 ? "complete" : "progress") == 0;
    tap_ok(seq_ok, "after complete: every progress event, then complete (previews superseded)");
    int all_from = 1;
    for (uint64_t from = 0; from <= 9; from++) {
        char names2[32][16];
        uint64_t ids2[32];
        int m = read_all(r, id, from, names2, ids2, NULL, 32);
        int expect = 0;
        for (int i = 0; i < 7; i++)
            expect += expect_ids[i] > from;
        all_from &= m == expect && (m == 0 || ids2[m - 1] == 9);
        for (int i = 0; i < m; i++)
            all_from &= ids2[i] > from;
    }
    tap_ok(all_from, "replay from every Last-Event-ID 0..9 gives exactly the later events");
    int again = read_all(r, id, 0, names, ids, NULL, 32);
    tap_ok(again == 7, "a second stream replays the same events");
    sdw_ring_event ev;
    tap_ok(sdw_ring_wait_event(r, id, 9, 1000, &ev, &e) == SDW_RING_END, "after the last event of a finished job: END");
    drop_ring(r);
}

static void test_log_bounds(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(2, 2, 8192, 2048);
    if (!tap_ok(r != NULL, "ring with a small log"))
        return;
    sdw_job_id id, got;
    submit(r, "x", id);
    take(r, got, NULL, 0);
    char big[4096];
    memset(big, 'p', sizeof big);
    tap_ok(sdw_ring_complete(r, id, big, 2048, &e) == SDW_ETOOBIG && state_of(r, id) == SDW_JOB_RUNNING,
           "complete larger than the image area refused, job still running");
    tap_ok(sdw_ring_preview(r, id, big, 2047, &e) == 0, "a preview exactly filling the image area (with its NUL)");
    tap_ok(sdw_ring_preview(r, id, big, 2000, &e) == 0, "preview within the image area");
    int appended = 0, rc;
    while ((rc = sdw_ring_append(r, id, "progress", "{\"step\":1,\"total\":20,\"percent\":5.0}", 36, &e)) == 0)
        appended++;
    tap_ok(rc == SDW_ETOOBIG && appended > 10, "log fills up and refuses further events (%d fitted)", appended);
    /* The worst case for the reserve: a long code and a long message made
     * of control characters, each escaped to six bytes. */
    char code[100], msg[1000];
    memset(code, '\x01', sizeof code - 1);
    code[sizeof code - 1] = '\0';
    memset(msg, '\x01', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    tap_ok(sdw_ring_fail(r, id, code, msg, &e) == 0, "the terminal error still fits (reserved room)");
    char names[256][16];
    uint64_t ids[256];
    int n = read_all(r, id, 0, names, ids, NULL, 256);
    tap_ok(n == appended + 2 && strcmp(names[n - 1], "error") == 0, "every event readable, error last");
    drop_ring(r);
}

static void test_wait(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!tap_ok(r != NULL, "ring for waits"))
        return;
    sdw_job_id id, got;
    submit(r, "x", id);
    take(r, got, NULL, 0);
    sdw_ring_event ev;
    tap_ok(sdw_ring_wait_event(r, id, 0, 30, &ev, &e) == 0, "wait with no event times out (0)");
    tap_ok(sdw_ring_wait_event(r, id, 0, 0, &ev, &e) == 0, "poll with no event returns 0");

    /* A reader in another process blocks until this process appends. */
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        sdw_ring *rc_ring;
        sdw_ring_event cev;
        char c = 'w';
        if (sdw_ring_open(ring_name, &rc_ring, NULL) != 0)
            _exit(3);
        if (write(pipefd[1], &c, 1) != 1)
            _exit(4);
        alarm(WATCHDOG_S);
        int rc = sdw_ring_wait_event(rc_ring, id, 0, -1, &cev, NULL);
        _exit(rc == 1 && strcmp(cev.name, "progress") == 0 && strcmp(cev.data, "{\"step\":1}") == 0 ? 0 : 1);
    }
    char c;
    tap_ok(read(pipefd[0], &c, 1) == 1, "reader child is about to wait");
    sdw_ring_append(r, id, "progress", "{\"step\":1}", 10, &e);
    tap_ok(child_exit_ok(pid), "reader in another process woke on the append and got the event");

    /* A forked engine blocks in take until a job is submitted. */
    pid = fork();
    if (pid == 0) {
        sdw_job_id cid;
        void *in;
        size_t n;
        char ch = 't';
        if (write(pipefd[1], &ch, 1) != 1)
            _exit(4);
        alarm(WATCHDOG_S);
        int rc = sdw_ring_take(r, -1, cid, &in, &n, NULL);
        _exit(rc == 1 && n == 4 && memcmp(in, "next", 4) == 0 ? 0 : 1);
    }
    tap_ok(read(pipefd[0], &c, 1) == 1, "engine child is about to wait for work");
    sdw_job_id id2;
    submit(r, "next", id2);
    tap_ok(child_exit_ok(pid), "engine in another process woke on submit and took the job");
    tap_ok(state_of(r, id2) == SDW_JOB_RUNNING, "job taken by the child is running");

    /* Cancel wakes a reader waiting on a queued job. */
    sdw_job_id id3;
    submit(r, "q", id3);
    pid = fork();
    if (pid == 0) {
        sdw_ring_event cev;
        char ch = 'c';
        if (write(pipefd[1], &ch, 1) != 1)
            _exit(4);
        alarm(WATCHDOG_S);
        int rc = sdw_ring_wait_event(r, id3, 0, -1, &cev, NULL);
        int ok = rc == 1 && strcmp(cev.name, "error") == 0 && strstr(cev.data, "\"code\":\"cancelled\"");
        rc = sdw_ring_wait_event(r, id3, cev.id, -1, &cev, NULL);
        _exit(ok && rc == SDW_RING_END ? 0 : 1);
    }
    tap_ok(read(pipefd[0], &c, 1) == 1, "reader of a queued job is about to wait");
    sdw_job_state after;
    tap_ok(sdw_ring_cancel(r, id3, &after, &e) == 0 && after == SDW_JOB_CANCELLED, "queued job cancelled at once");
    tap_ok(child_exit_ok(pid), "the waiting reader got the cancelled error event, then END");
    close(pipefd[0]);
    close(pipefd[1]);
    drop_ring(r);
}

static void test_cancel_running(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(2, 2, 0, 0);
    if (!tap_ok(r != NULL, "ring for cancel"))
        return;
    sdw_job_id id, got;
    sdw_job_state after;
    submit(r, "x", id);
    take(r, got, NULL, 0);
    sdw_ring_append(r, id, "progress", "{}", 2, &e);
    tap_ok(sdw_ring_cancel(r, id, &after, &e) == 0 && after == SDW_JOB_RUNNING, "running job: cancel requested, still running");
    sdw_job_info info;
    sdw_ring_job_status(r, id, &info, &e);
    tap_ok(info.cancel_requested, "status shows the cancel request");
    tap_ok(sdw_ring_cancel_requested(r, id, &e) == 1, "engine sees the request");
    tap_ok(sdw_ring_append(r, id, "progress", "{}", 2, &e) == 0, "engine may still report until it stops");
    tap_ok(sdw_ring_finish_cancelled(r, id, &e) == 0 && state_of(r, id) == SDW_JOB_CANCELLED, "RUNNING -> CANCELLED");
    char names[8][16];
    uint64_t ids[8];
    char *datas[8];
    int n = read_all(r, id, 0, names, ids, datas, 8);
    tap_ok(n == 3 && strcmp(names[2], "error") == 0 && strstr(datas[2], "cancelled"), "stream ends with a cancelled error");
    for (int i = 0; i < n; i++)
        free(datas[i]);
    tap_ok(sdw_ring_cancel(r, id, &after, &e) == SDW_ESTATE, "cancelling twice refused");
    tap_ok(sdw_ring_cancel(r, "job-0123456789abcdef0123456789abcdef", &after, &e) == SDW_ENOTFOUND, "cancel unknown: not found");
    drop_ring(r);
}

static void test_queue_full_and_expiry(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(3, 2, 0, 0);
    if (!tap_ok(r != NULL, "ring with 3 slots, 2 queued at most"))
        return;
    sdw_job_id a, b, c, d, got;
    submit(r, "a", a);
    submit(r, "b", b);
    tap_ok(submit(r, "c", c) == SDW_EFULL, "third queued job: queue full");
    take(r, got, NULL, 0);
    tap_ok(submit(r, "c", c) == 0, "after the engine takes one, a job fits again");
    tap_ok(submit(r, "d", d) == SDW_EFULL, "queue full again");
    take(r, got, NULL, 0);
    take(r, got, NULL, 0);
    sdw_ring_complete(r, a, "{}", 2, &e);
    sdw_ring_complete(r, b, "{}", 2, &e);
    sdw_ring_fail(r, c, "x", "y", &e);
    int64_t now = sdw_ring_now_ms();
    tap_ok(sdw_ring_sweep(r, now, &e) == 0, "nothing expires before the retention (600 s)");
    tap_ok(submit(r, "d", d) == 0 && state_of(r, a) == SDW_JOB_EXPIRED && state_of(r, b) == SDW_JOB_DONE &&
               state_of(r, c) == SDW_JOB_FAILED,
           "with every slot holding a finished job, the oldest result gives its slot to new work "
           "(and its id answers expired)");
    sdw_job_id never = "job-0123456789abcdef0123456789abcdef";
    tap_ok(state_of(r, never) == (sdw_job_state)-1, "an id never issued is still unknown");
    sdw_engine_info ei;
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.free_slots == 0 && ei.queued == 1 && ei.running == 0, "engine status counts");
    sdw_ring_event ev;
    tap_ok(sdw_ring_wait_event(r, a, 0, 0, &ev, &e) == SDW_ENOTFOUND, "the evicted job's stream is gone");
    tap_ok(sdw_ring_sweep(r, now + 600 * 1000 + 1000, &e) == 2, "the other two expire after the retention");
    tap_ok(state_of(r, b) == SDW_JOB_EXPIRED, "an expired job reports expired");
    sdw_job_id f;
    tap_ok(submit(r, "f", f) == 0 && state_of(r, f) == SDW_JOB_QUEUED, "an expired slot is reused (EXPIRED -> FREE -> QUEUED)");
    tap_ok(submit(r, "g", f) == SDW_EFULL, "but the queue limit still holds");
    drop_ring(r);
}

/* Per-owner queue limits and the owner each job records. */
static void test_owners(void)
{
    sdw_ring *r = make_ring(8, 6, 0, 0);
    if (!r)
        return tap_skip("no ring");
    sdw_job_id a1, a2, b1, any, extra;
    sdw_error e = {0};
    int ok = sdw_ring_submit_as(r, "a1", 2, 7, 2, a1, &e) == 0 && sdw_ring_submit_as(r, "a2", 2, 7, 2, a2, &e) == 0 &&
             sdw_ring_submit_as(r, "b1", 2, 9, 1, b1, &e) == 0 && submit(r, "any", any) == 0;
    tap_ok(ok, "jobs of two owners and one without (%s)", e.msg);
    tap_ok(sdw_ring_submit_as(r, "a3", 2, 7, 2, extra, &e) == SDW_ELIMIT && strstr(e.msg, "2 jobs"),
           "an owner's third job past max_queued 2: SDW_ELIMIT (%s)", e.msg);
    tap_ok(sdw_ring_submit_as(r, "b2", 2, 9, 1, extra, &e) == SDW_ELIMIT, "the other owner's own limit");
    tap_ok(sdw_ring_submit_as(r, "a3", 2, 7, 0, extra, &e) == 0, "no limit (0) for the same owner: accepted");
    sdw_job_info info;
    tap_ok(sdw_ring_job_status(r, a1, &info, &e) == 0 && info.owner == 7 && sdw_ring_job_status(r, b1, &info, &e) == 0 &&
           info.owner == 9 && sdw_ring_job_status(r, any, &info, &e) == 0 && info.owner == 0,
           "each job reports its owner (0 without one)");
    sdw_job_id t;
    take(r, t, NULL, 0);
    tap_ok(!strcmp(t, a1) && sdw_ring_submit_as(r, "a4", 2, 7, 3, extra, &e) == 0 &&
           sdw_ring_submit_as(r, "a5", 2, 7, 3, extra, &e) == SDW_ELIMIT,
           "a running job no longer counts as queued: two queued and one running take a third, not a fourth");
    drop_ring(r);
}

static void test_engine_death(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!tap_ok(r != NULL, "ring for engine death"))
        return;
    sdw_ring_set_engine(r, SDW_ENGINE_READY, 4242, "", &e);
    sdw_ring_heartbeat(r, &e);
    sdw_engine_info ei;
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.state == SDW_ENGINE_READY && ei.pid == 4242 && ei.heartbeat_ms > 0, "engine ready, pid and heartbeat");
    sdw_job_id run, q, got;
    submit(r, "r", run);
    take(r, got, NULL, 0);
    submit(r, "q", q);
    sdw_ring_append(r, run, "progress", "{}", 2, &e);
    tap_ok(sdw_ring_engine_died(r, "signal 9", &e) == 1, "one running job failed");
    tap_ok(state_of(r, run) == SDW_JOB_FAILED && state_of(r, q) == SDW_JOB_QUEUED, "running -> failed, queued stays queued");
    char names[8][16];
    uint64_t ids[8];
    char *datas[8];
    int n = read_all(r, run, 0, names, ids, datas, 8);
    tap_ok(n == 2 && strcmp(names[1], "error") == 0 && strstr(datas[1], "\"code\":\"engine_crashed\"") &&
               strstr(datas[1], "engine died"),
           "the running job's stream ends with engine_crashed");
    for (int i = 0; i < n; i++)
        free(datas[i]);
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.state == SDW_ENGINE_DEAD && strstr(ei.reason, "signal 9") && ei.queued == 1, "engine dead with reason");
    tap_ok(take(r, got, NULL, 0) == 1 && strcmp(got, q) == 0, "the next engine takes the queued job");
    drop_ring(r);
}

/* Fault hook of the children below: dies at the point named in the
 * environment, as a crash or an OOM kill would. */
static void die_now(const char *point)
{
    const char *target = getenv("SDW_RING_DIE_AT");
    if (target && strcmp(point, target) == 0)
        raise(SIGKILL);
}

static int killed_by_sigkill(pid_t pid)
{
    int st;
    return waitpid(pid, &st, 0) == pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
}

static void test_robust(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!tap_ok(r != NULL, "ring for lock-holder death"))
        return;
    sdw_job_id id, got;
    submit(r, "x", id);
    take(r, got, NULL, 0);
    sdw_ring_append(r, id, "progress", "{\"step\":1}", 10, &e);

    pid_t pid = fork();
    if (pid == 0) {
        setenv("SDW_RING_DIE_AT", "locked", 1);
        sdw_ring_set_fault_hook(die_now);
        sdw_job_info info;
        sdw_ring_job_status(r, id, &info, NULL);
        _exit(0);
    }
    tap_ok(killed_by_sigkill(pid), "child killed with SIGKILL while holding the lock");
    sdw_engine_info ei;
    tap_ok(sdw_ring_engine_status(r, &ei, &e) == 0 && ei.recoveries == 1, "next locker recovered the lock (EOWNERDEAD)");
    tap_ok(state_of(r, id) == SDW_JOB_RUNNING, "job state intact");

    pid = fork();
    if (pid == 0) {
        setenv("SDW_RING_DIE_AT", "append-written", 1);
        sdw_ring_set_fault_hook(die_now);
        sdw_ring_append(r, id, "progress", "{\"step\":2,\"half\":true}", 22, NULL);
        _exit(0);
    }
    tap_ok(killed_by_sigkill(pid), "child killed in the middle of publishing an event");
    sdw_ring_event ev;
    tap_ok(sdw_ring_wait_event(r, id, 0, 0, &ev, &e) == 1 && ev.id == 1, "first event intact after recovery");
    sdw_ring_event_free(&ev);
    tap_ok(sdw_ring_wait_event(r, id, 1, 0, &ev, &e) == 0, "the half-written event never appears");
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.recoveries == 2, "second recovery counted");
    tap_ok(sdw_ring_append(r, id, "progress", "{\"step\":2}", 10, &e) == 0, "appending works after recovery");
    tap_ok(sdw_ring_wait_event(r, id, 1, 0, &ev, &e) == 1 && ev.id == 2 && strcmp(ev.data, "{\"step\":2}") == 0,
           "the next event gets id 2 and the right data");
    sdw_ring_event_free(&ev);
    sdw_job_id id2;
    tap_ok(submit(r, "y", id2) == 0 && sdw_ring_complete(r, id, "{}", 2, &e) == 0, "ring fully usable afterwards");

    /* A reader killed while blocked in a wait leaves nothing behind. */
    pid = fork();
    if (pid == 0) {
        sdw_ring_wait_event(r, id2, 0, -1, &ev, NULL);
        _exit(0);
    }
    kill(pid, SIGKILL);
    tap_ok(killed_by_sigkill(pid), "a waiting reader killed");
    tap_ok(take(r, got, NULL, 0) == 1 && sdw_ring_append(r, got, "progress", "{}", 2, &e) == 0,
           "writer unaffected by the dead waiter");
    drop_ring(r);
}

static void test_producers(void)
{
    enum { PRODUCERS = 20, PER = 3, TOTAL = PRODUCERS * PER };
    sdw_error e;
    sdw_ring *r = make_ring(64, 64, 0, 0);
    if (!tap_ok(r != NULL, "ring for concurrent producers"))
        return;
    int idpipe[2];
    if (pipe(idpipe) != 0)
        return;
    /* The engine: takes every job as it arrives and completes it with its input. */
    pid_t engine = fork();
    if (engine == 0) {
        int order_ok = 1, last[PRODUCERS];
        for (int i = 0; i < PRODUCERS; i++)
            last[i] = -1;
        alarm(3 * WATCHDOG_S);
        for (int n = 0; n < TOTAL; n++) {
            sdw_job_id id;
            void *in;
            size_t len;
            if (sdw_ring_take(r, -1, id, &in, &len, NULL) != 1)
                _exit(2);
            char text[64];
            int p, k;
            if (len >= sizeof text)
                _exit(3);
            memcpy(text, in, len);
            text[len] = '\0';
            if (sscanf(text, "{\"p\":%d,\"k\":%d}", &p, &k) != 2 || p < 0 || p >= PRODUCERS)
                _exit(3);
            order_ok &= k == last[p] + 1;
            last[p] = k;
            if (sdw_ring_complete(r, id, in, len, NULL) != 0)
                _exit(4);
            free(in);
        }
        _exit(order_ok ? 0 : 5);
    }
    pid_t prod[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) {
        prod[p] = fork();
        if (prod[p] == 0) {
            sdw_ring *pr;
            if (sdw_ring_open(ring_name, &pr, NULL) != 0)
                _exit(2);
            for (int k = 0; k < PER; k++) {
                char in[64], line[80];
                snprintf(in, sizeof in, "{\"p\":%d,\"k\":%d}", p, k);
                sdw_job_id id;
                if (sdw_ring_submit(pr, in, strlen(in), id, NULL) != 0)
                    _exit(3);
                int n = snprintf(line, sizeof line, "%s %s\n", id, in);
                if (write(idpipe[1], line, (size_t)n) != n)
                    _exit(4);
            }
            _exit(0);
        }
    }
    close(idpipe[1]);
    int prod_ok = 1;
    for (int p = 0; p < PRODUCERS; p++)
        prod_ok &= child_exit_ok(prod[p]);
    tap_ok(prod_ok, "%d producer processes submitted %d jobs each", PRODUCERS, PER);
    tap_ok(child_exit_ok(engine), "engine process took all %d jobs, each producer's in its order", TOTAL);
    FILE *f = fdopen(idpipe[0], "r");
    char id[64], in[64];
    int seen = 0, match = 1;
    while (f && fscanf(f, "%63s %63s", id, in) == 2) {
        sdw_ring_event ev;
        int rc = sdw_ring_wait_event(r, id, 0, 0, &ev, &e);
        match &= rc == 1 && strcmp(ev.name, "complete") == 0 && strcmp(ev.data, in) == 0;
        sdw_ring_event_free(&ev);
        seen++;
    }
    if (f)
        fclose(f);
    tap_ok(seen == TOTAL && match, "every job id (%d) completed with its own input", seen);
    sdw_engine_info ei;
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.queued == 0 && ei.running == 0 && ei.recoveries == 0, "nothing left queued or running");
    drop_ring(r);
}

/* A slot's id stays known as expired after the slot goes to new work. The
 * table is hashed (16 ids per bucket, 4096 buckets): an id is forgotten once
 * 16 later ones fell into its bucket, so after 20000 reuses the first is
 * still known (all but certainly: its bucket got about 5 of them), and
 * after 300000 it is not. */
static void test_gone_ids(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(1, 1, 0, 0);
    if (!tap_ok(r != NULL, "ring with one slot"))
        return;
    sdw_job_id first, prev, cur, got;
    int ok = 1, first_known_at_20000 = 0;
    for (int i = 0; i < 300000 && ok; i++) {
        if (i > 0)
            memcpy(prev, cur, sizeof prev);
        ok = submit(r, "x", cur) == 0 && take(r, got, NULL, 0) == 1 && sdw_ring_complete(r, cur, "{}", 2, &e) == 0;
        if (i == 0)
            memcpy(first, cur, sizeof first);
        else if (i == 20000)
            first_known_at_20000 = state_of(r, first) == SDW_JOB_EXPIRED && state_of(r, prev) == SDW_JOB_EXPIRED;
    }
    tap_ok(ok && state_of(r, cur) == SDW_JOB_DONE && state_of(r, prev) == SDW_JOB_EXPIRED,
           "300000 jobs through one slot: the newest is done, the one before it answers expired");
    tap_ok(first_known_at_20000, "20000 reuses later the first job's id still answers expired, not unknown");
    tap_ok(state_of(r, first) == (sdw_job_state)-1, "300000 reuses later it is forgotten");
    drop_ring(r);
}

/* Kept results keep their slot while any other is free; when none is, the
 * oldest goes first and is counted. */
static void test_eviction(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!tap_ok(r != NULL, "ring with 4 slots"))
        return;
    sdw_job_id id[6], got;
    int ok = 1;
    for (int i = 0; i < 4 && ok; i++)
        ok = submit(r, "x", id[i]) == 0 && take(r, got, NULL, 0) == 1 && sdw_ring_complete(r, id[i], "{}", 2, &e) == 0;
    sdw_engine_info ei;
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ok && ei.slots == 4 && ei.kept == 4 && ei.free_slots == 0 && ei.evicted == 0,
           "four finished jobs: 4 kept results, 0 free, none evicted (%u kept, %u free)", ei.kept, ei.free_slots);
    sdw_ring_expire(r, id[2], &e);
    tap_ok(submit(r, "y", id[4]) == 0 && state_of(r, id[0]) == SDW_JOB_DONE && state_of(r, id[1]) == SDW_JOB_DONE &&
               state_of(r, id[3]) == SDW_JOB_DONE && state_of(r, id[2]) == SDW_JOB_EXPIRED,
           "a submission takes the expired slot, not a kept result, even the oldest");
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.evicted == 0 && ei.kept == 3 && ei.queued == 1 && ei.free_slots == 0, "still none evicted");
    tap_ok(submit(r, "z", id[5]) == 0 && state_of(r, id[0]) == SDW_JOB_EXPIRED && state_of(r, id[1]) == SDW_JOB_DONE,
           "with no slot free, the oldest kept result gives its slot up");
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.evicted == 1 && ei.kept == 2 && ei.queued == 2, "and the eviction is counted");
    sdw_job_info info;
    tap_ok(sdw_ring_job_status(r, id[0], &info, &e) == 0 && info.state == SDW_JOB_EXPIRED,
           "the evicted result's id answers expired, not unknown");
    drop_ring(r);
}

static int attach(unsigned slots, size_t log_bytes, int wait_ms, sdw_ring **r, sdw_ring_attach_info *info)
{
    sdw_ring_config cfg = sdw_ring_default_config(ring_name);
    cfg.slots = slots;
    cfg.max_queued = slots;
    cfg.input_bytes = 4096;
    cfg.log_bytes = log_bytes;
    cfg.image_bytes = 4096;
    sdw_error e = {0};
    int rc = sdw_ring_attach(&cfg, wait_ms, r, info, &e);
    if (rc)
        tap_diag("attach: %s", e.msg);
    return rc;
}

static int error_code_is(sdw_ring *r, const char *id, const char *code)
{
    char names[8][16], want[64];
    uint64_t ids[8];
    char *datas[8];
    int n = read_all(r, id, 0, names, ids, datas, 8);
    snprintf(want, sizeof want, "\"code\":\"%s\"", code);
    int ok = n > 0 && strcmp(names[n - 1], "error") == 0 && strstr(datas[n - 1], want);
    for (int i = 0; i < n; i++)
        free(datas[i]);
    return ok;
}

/* The supervisor's attach: a ring left by a stopped supervisor is re-opened
 * with its queue and results; one of another layout or a corrupt one is
 * replaced, and mappings of the old one notice. */
static void test_attach(void)
{
    sdw_error e;
    snprintf(ring_name, sizeof ring_name, "/sdw-test-ring-%d-%d", (int)getpid(), ++ring_counter);
    sdw_ring *r = NULL, *again = NULL, *pool = NULL;
    sdw_ring_attach_info info;
    tap_ok(attach(4, 16384, 0, &r, &info) == 0 && info.created && !info.replaced[0], "attach creates a missing ring");
    if (!r)
        return;
    sdw_job_id run, done, q1, q2, got;
    submit(r, "run", run);
    submit(r, "done", done);
    submit(r, "q1", q1);
    submit(r, "q2", q2);
    take(r, got, NULL, 0);
    take(r, got, NULL, 0);
    sdw_ring_complete(r, done, "{\"type\":\"complete\"}", 19, &e);
    sdw_ring_set_engine(r, SDW_ENGINE_READY, 4242, "", &e);
    tap_ok(attach(4, 16384, 300, &again, &info) < 0, "a second supervisor cannot attach while the first holds the ring");
    tap_ok(sdw_ring_open(ring_name, &pool, &e) == 0 && sdw_ring_stale(pool) == 0, "a pool mapping is current");
    sdw_ring_close(r); /* a stop: the ring stays */

    int rc = attach(4, 16384, 0, &r, &info);
    tap_ok(rc == 0 && !info.created && !info.replaced[0] && info.queued == 2 &&
               info.kept == 1 && info.interrupted == 1,
           "re-attaching with the same layout keeps the ring: 2 queued, 1 result, 1 interrupted (%u, %u, %u)",
           info.queued, info.kept, info.interrupted);
    if (!r)
        return;
    tap_ok(state_of(r, run) == SDW_JOB_FAILED && error_code_is(r, run, "engine_stopped"),
           "the job running at the stop ends with an engine_stopped error event");
    tap_ok(state_of(r, done) == SDW_JOB_DONE && state_of(r, q1) == SDW_JOB_QUEUED && state_of(r, q2) == SDW_JOB_QUEUED,
           "the kept result and the queued jobs are there");
    char in[16] = "";
    tap_ok(take(r, got, in, sizeof in) == 1 && strcmp(got, q1) == 0 && strcmp(in, "q1") == 0,
           "the queued jobs run first-in first-out after the restart, with their input");
    sdw_engine_info ei;
    sdw_ring_engine_status(r, &ei, &e);
    tap_ok(ei.state == SDW_ENGINE_STARTING && ei.pid == 0, "the engine state starts over");
    tap_ok(sdw_ring_stale(pool) == 0 && state_of(pool, q2) == SDW_JOB_QUEUED,
           "a pool mapping made before the restart is still current");

    tap_ok(sdw_ring_engine_stopped(r, "engine stopped", &e) == 1 && state_of(r, q1) == SDW_JOB_FAILED &&
               error_code_is(r, q1, "engine_stopped") && state_of(r, q2) == SDW_JOB_QUEUED,
           "sdw_ring_engine_stopped fails the running job with engine_stopped, the queued one stays");
    sdw_ring_close(r);

    /* Another layout: replaced, the old mapping retired. */
    rc = attach(6, 16384, 0, &r, &info);
    tap_ok(rc == 0 && info.created && strstr(info.replaced, "layout") &&
               info.dropped == 4,
           "a ring of another layout is replaced, dropping its 4 jobs: %s", info.replaced);
    sdw_ring_event ev;
    tap_ok(sdw_ring_stale(pool) == 1 && sdw_ring_wait_event(pool, done, 1, 1000, &ev, &e) == SDW_RING_RETIRED,
           "the old mapping is stale and a reader waiting on it is told at once");
    tap_ok(submit(pool, "late", got) == SDW_EFULL, "a submission into the retired ring is refused");
    sdw_ring_close(pool);
    tap_ok(sdw_ring_open(ring_name, &pool, &e) == 0 && state_of(pool, done) == (sdw_job_state)-1 &&
               sdw_ring_stale(pool) == 0,
           "the name opens the new, empty ring");
    sdw_ring_close(pool);
    sdw_ring_close(r);

    /* A corrupt header: replaced, nothing known about what it held. */
    int fd = shm_open(ring_name, O_RDWR, 0);
    uint32_t bogus = 99;
    tap_ok(fd >= 0 && pwrite(fd, &bogus, sizeof bogus, 8) == (ssize_t)sizeof bogus, "the header's version scribbled");
    if (fd >= 0)
        close(fd);
    tap_ok(sdw_ring_open(ring_name, &pool, &e) == SDW_EFORMAT, "a pool refuses it: %s", e.msg);
    rc = attach(6, 16384, 0, &r, &info);
    tap_ok(rc == 0 && info.created && strstr(info.replaced, "version 99") &&
               info.dropped == -1,
           "the supervisor replaces it: %s", info.replaced);
    sdw_job_id fresh;
    tap_ok(r && submit(r, "fresh", fresh) == 0, "the new ring takes work");
    sdw_ring_close(r);
    sdw_ring_unlink(ring_name, NULL);
    tap_ok(sdw_ring_open(ring_name, &pool, &e) == SDW_ENOTFOUND, "sdw_ring_close does not remove the ring; "
                                                                    "sdw_ring_unlink does");
}

struct waiter {
    sdw_ring *r;
    const char *id;
    unsigned known;
    int rc;
    unsigned pos;
    char name[16];
};

static void *wait_position(void *arg)
{
    struct waiter *w = arg;
    w->rc = sdw_ring_wait_queue_position(w->r, w->id, w->known, -1, &w->pos, NULL);
    return NULL;
}

static void *wait_event_thread(void *arg)
{
    struct waiter *w = arg;
    sdw_ring_event ev;
    w->rc = sdw_ring_wait_event(w->r, w->id, 0, -1, &ev, NULL);
    if (w->rc == 1) {
        snprintf(w->name, sizeof w->name, "%s", ev.name);
        sdw_ring_event_free(&ev);
    }
    return NULL;
}

static void test_queue_position(void)
{
    sdw_error e;
    sdw_ring *r = make_ring(8, 8, 0, 0);
    if (!tap_ok(r != NULL, "ring for queue positions"))
        return;
    alarm(WATCHDOG_S);
    sdw_job_id a, b, c, got;
    submit(r, "a", a);
    submit(r, "b", b);
    submit(r, "c", c);
    unsigned pos = 0;
    tap_ok(sdw_ring_wait_queue_position(r, c, UINT_MAX, 0, &pos, &e) == 1 && pos == 3,
           "an unknown place reads the position at once (3)");
    tap_ok(sdw_ring_wait_queue_position(r, c, 3, 30, &pos, &e) == 0, "an unchanged position times out");
    struct waiter w = { .r = r, .id = c, .known = 3 };
    pthread_t t;
    pthread_create(&t, NULL, wait_position, &w);
    sdw_job_state after;
    sdw_ring_cancel(r, b, &after, &e);
    pthread_join(t, NULL);
    tap_ok(w.rc == 1 && w.pos == 2, "cancelling the job ahead wakes a waiting thread with the new position (%u)",
           w.pos);
    take(r, got, NULL, 0);
    tap_ok(sdw_ring_wait_queue_position(r, c, 2, 0, &pos, &e) == 1 && pos == 1, "taking the head moves it to 1");
    tap_ok(sdw_ring_wait_queue_position(r, a, UINT_MAX, 0, &pos, &e) == 1 && pos == 0, "a running job is at 0");
    w = (struct waiter){ .r = r, .id = c, .known = 1 };
    pthread_create(&t, NULL, wait_position, &w);
    sdw_ring_complete(r, a, "{}", 2, &e);
    take(r, got, NULL, 0);
    pthread_join(t, NULL);
    tap_ok(w.rc == 1 && w.pos == 0 && strcmp(got, c) == 0, "the waiter learns that its job left the queue");
    tap_ok(sdw_ring_wait_queue_position(r, "job-0123456789abcdef0123456789abcdef", 0, 0, &pos, &e) == SDW_ENOTFOUND,
           "an unknown job: SDW_ENOTFOUND");

    /* Threads of one process wait on one job at once, as a pool child's
     * stream threads do; one append wakes them all. */
    enum { T = 8 };
    struct waiter ws[T];
    pthread_t ts[T];
    for (int i = 0; i < T; i++) {
        ws[i] = (struct waiter){ .r = r, .id = c };
        pthread_create(&ts[i], NULL, wait_event_thread, &ws[i]);
    }
    sdw_ring_append(r, c, "progress", "{\"step\":1}", 10, &e);
    int all = 1;
    for (int i = 0; i < T; i++) {
        pthread_join(ts[i], NULL);
        all &= ws[i].rc == 1 && strcmp(ws[i].name, "progress") == 0;
    }
    tap_ok(all, "%d threads waiting on one job all get its event", T);
    alarm(0);
    drop_ring(r);
}

static const sdw_ring_label_counts *set_of(const sdw_ring_metrics *m, const char *labels, unsigned *index)
{
    for (unsigned i = 0; i < m->n_sets; i++)
        if (!strcmp(m->set[i].labels, labels)) {
            *index = i;
            return &m->set[i];
        }
    return NULL;
}

static uint64_t failures_of(const sdw_ring_metrics *m, unsigned set, const char *code)
{
    for (unsigned i = 0; i < m->n_failures; i++)
        if (m->failure[i].set == set && !strcmp(m->failure[i].code, code))
            return m->failure[i].count;
    return 0;
}

static uint64_t hist_count(const sdw_ring_hist *h)
{
    uint64_t n = 0;
    for (int b = 0; b <= SDW_RING_HIST_BOUNDS; b++)
        n += h->bucket[b];
    return n;
}

/* The counters behind /metrics: every way a job ends counts once, under
 * its label set and, for a failure, its code; the histograms' buckets. */
static void test_metrics(void)
{
    sdw_ring *r = make_ring(8, 6, 0, 0);
    if (!r)
        return tap_skip("no ring");
    static const char la[] = "model=\"a\",operation=\"generate\",api=\"rbee\"";
    static const char lb[] = "model=\"b\",operation=\"inpaint\",api=\"rbee\"";
    sdw_job_id a1, a2, a3, b1, none, t;
    sdw_error e = {0};
    int ok = sdw_ring_submit_labelled(r, "a1", 2, 0, 0, la, a1, &e) == 0 &&
             sdw_ring_submit_labelled(r, "a2", 2, 0, 0, la, a2, &e) == 0 &&
             sdw_ring_submit_labelled(r, "a3", 2, 0, 0, la, a3, &e) == 0 &&
             sdw_ring_submit_labelled(r, "b1", 2, 0, 0, lb, b1, &e) == 0 && submit(r, "none", none) == 0;
    tap_ok(ok, "labelled and unlabelled submissions (%s)", e.msg);
    char long_labels[SDW_RING_LABELS_MAX + 1];
    memset(long_labels, 'x', sizeof long_labels - 1);
    long_labels[sizeof long_labels - 1] = '\0';
    tap_ok(sdw_ring_submit_labelled(r, "x", 1, 0, 0, long_labels, t, &e) == SDW_EINVAL,
           "labels beyond SDW_RING_LABELS_MAX refused (%s)", e.msg);
    e.msg[0] = '\0';

    take(r, t, NULL, 0);
    ok = !strcmp(t, a1) && sdw_ring_complete(r, a1, "{}", 2, &e) == 0;
    take(r, t, NULL, 0);
    ok = ok && !strcmp(t, a2) && sdw_ring_fail(r, a2, "generation_failed", "boom", &e) == 0;
    ok = ok && sdw_ring_cancel(r, a3, NULL, &e) == 0;
    take(r, t, NULL, 0);
    ok = ok && !strcmp(t, b1) && sdw_ring_engine_died(r, "signal 9", &e) == 1;
    take(r, t, NULL, 0);
    ok = ok && !strcmp(t, none) && sdw_ring_fail(r, none, "generation_failed", "boom", &e) == 0;
    tap_ok(ok, "one job of each ending: done, failed, cancelled while queued, engine death (%s)", e.msg);
    sdw_ring_observe_step(r, 0.005);
    sdw_ring_observe_step(r, 0.2);
    sdw_ring_observe_step(r, 0.25);
    sdw_ring_observe_step(r, 100);
    sdw_ring_count_restart(r);
    sdw_ring_count_restart(r);

    sdw_ring_metrics *m = malloc(sizeof *m);
    sdw_ring_metrics_read(r, m);
    unsigned ia = 99, ib = 99;
    const sdw_ring_label_counts *a = set_of(m, la, &ia), *b = set_of(m, lb, &ib);
    tap_ok(m->n_sets == 2 && a && b && m->unlabelled == 0, "two label sets, the unlabelled job in neither");
    tap_ok(a && a->submitted == 3 && a->completed == 1 && a->cancelled == 1 && a->failed_other == 0,
           "set a: 3 submitted, 1 completed, 1 cancelled");
    tap_ok(a && b && failures_of(m, ia, "generation_failed") == 1 && failures_of(m, ib, "engine_crashed") == 1 &&
               b->submitted == 1 && b->completed == 0 && m->n_failures == 2,
           "failures by set and code: a generation_failed, b engine_crashed; none for the unlabelled one");
    tap_ok(hist_count(&m->hist[SDW_RING_HIST_QUEUE_WAIT]) == 4, "queue wait: one per job taken (4)");
    tap_ok(hist_count(&m->hist[SDW_RING_HIST_JOB]) == 4, "job seconds: one per job that ran (4, not the cancelled one)");
    const sdw_ring_hist *st = &m->hist[SDW_RING_HIST_STEP];
    tap_ok(st->bucket[0] == 1 && st->bucket[4] == 2 && st->bucket[SDW_RING_HIST_BOUNDS] == 1 &&
               hist_count(st) == 4 && st->bounds[4] == 0.25 && st->sum_s > 100.45 && st->sum_s < 100.46,
           "step seconds: 0.005 in le=0.01, 0.2 and 0.25 in le=0.25, 100 in +Inf; sum %.6f", st->sum_s);
    tap_ok(m->engine_restarts == 2, "two restarts counted");

    /* The table of label sets is bounded: 256 more sets than the two there
     * leave two past it, counted as unlabelled. */
    ok = true;
    for (int i = 0; i < SDW_RING_LABEL_SETS && ok; i++) {
        char l[64];
        snprintf(l, sizeof l, "model=\"m%d\"", i);
        ok = sdw_ring_submit_labelled(r, "x", 1, 0, 0, l, t, &e) == 0 && sdw_ring_cancel(r, t, NULL, &e) == 0;
    }
    sdw_ring_metrics_read(r, m);
    tap_ok(ok && m->n_sets == SDW_RING_LABEL_SETS && m->unlabelled == 2,
           "a full table of label sets: %u sets, %llu unlabelled (%s)", m->n_sets, (unsigned long long)m->unlabelled,
           e.msg);
    free(m);
    drop_ring(r);
}

/* The engine's model table, as another process (the pool) reads it. */
static void test_models(void)
{
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!r) {
        tap_skip("no ring");
        return;
    }
    sdw_error e = {0};
    sdw_ring_model got[SDW_RING_MAX_MODELS];
    tap_ok(sdw_ring_models(r, got, SDW_RING_MAX_MODELS, &e) == 0, "no models before the engine publishes them");
    sdw_ring_model m[2] = {{.name = "sd21", .family = "sd2", .prediction = "v_prediction", .width = 768,
                            .height = 768, .weights_bytes = 5u << 30, .bytes_per_pixel = 2560,
                            .max_pixels = 1u << 21},
                           {.name = "inpaint", .family = "sd1", .prediction = "epsilon", .inpaint = 1,
                            .width = 512, .height = 512}};
    tap_ok(sdw_ring_set_models(r, m, 2, &e) == 0, "the engine publishes two models (%s)", e.msg);
    sdw_ring *other = NULL;
    int rc = sdw_ring_open(ring_name, &other, &e);
    int n = rc ? -1 : sdw_ring_models(other, got, SDW_RING_MAX_MODELS, &e);
    tap_ok(n == 2 && !memcmp(got, m, sizeof m), "another attachment reads them back (%d)", n);
    tap_ok(rc == 0 && sdw_ring_models(other, got, 1, &e) == 2 && !memcmp(got, m, sizeof m[0]),
           "a short buffer gets the first ones and the full count");
    tap_ok(sdw_ring_set_models(r, m, SDW_RING_MAX_MODELS + 1, &e) == SDW_EINVAL, "too many models are refused");
    sdw_ring_model bad = m[0];
    memset(bad.family, 'x', sizeof bad.family);
    tap_ok(sdw_ring_set_models(r, &bad, 1, &e) == SDW_EINVAL &&
               sdw_ring_models(r, got, SDW_RING_MAX_MODELS, &e) == 2,
           "an unterminated field is refused and the table kept");
    tap_ok(sdw_ring_set_models(r, m + 1, 1, &e) == 0 && sdw_ring_models(r, got, SDW_RING_MAX_MODELS, &e) == 1 &&
               !strcmp(got[0].name, "inpaint"),
           "a new engine's table replaces the old one");
    if (other)
        sdw_ring_close(other);
    drop_ring(r);
}

static void test_loras(void)
{
    sdw_ring *r = make_ring(4, 4, 0, 0);
    if (!r) {
        tap_skip("no ring");
        return;
    }
    sdw_error e = {0};
    char why[SDW_RING_LORA_WHY];
    tap_ok(sdw_ring_lora_fit(r, "ink", "sd15", why, sizeof why, &e) == SDW_ESTATE,
           "before the engine publishes, a LoRA's fit is not known");
    static sdw_ring_lora l[2];
    memset(l, 0, sizeof l);
    strcpy(l[0].name, "ink");
    strcpy(l[0].why[1], "is for sd1, the model is sd2");
    strcpy(l[1].name, "grain");
    memset(l[1].why[0], 'x', sizeof l[1].why[0]); /* cut to fit */
    sdw_ring_model m[2] = {{.name = "sd15", .family = "sd1", .prediction = "epsilon", .width = 512, .height = 512},
                           {.name = "sd21", .family = "sd2", .prediction = "v_prediction", .width = 768,
                            .height = 768}};
    tap_ok(sdw_ring_set_loras(r, l, 2, &e) == 0 && sdw_ring_set_models(r, m, 2, &e) == 0, "the engine publishes two LoRAs");
    tap_ok(sdw_ring_lora_fit(r, "ink", "sd15", why, sizeof why, &e) == 0 && !why[0], "ink fits sd15");
    int rc = sdw_ring_lora_fit(r, "ink", "sd21", why, sizeof why, &e);
    tap_ok(rc == SDW_EINVAL && !strcmp(why, "is for sd1, the model is sd2"), "ink does not fit sd21, with the reason");
    rc = sdw_ring_lora_fit(r, "grain", "sd15", why, sizeof why, &e);
    tap_ok(rc == SDW_EINVAL && strlen(why) == SDW_RING_LORA_WHY - 1, "an overlong reason is cut to its field");
    tap_ok(sdw_ring_lora_fit(r, "nope", "sd15", why, sizeof why, &e) == SDW_ENOTFOUND, "an unknown LoRA");
    static sdw_ring_lora got[SDW_RING_MAX_LORAS];
    tap_ok(sdw_ring_loras(r, got, SDW_RING_MAX_LORAS, &e) == 2 && !strcmp(got[1].name, "grain"), "the table reads back");
    tap_ok(sdw_ring_set_loras(r, l, SDW_RING_MAX_LORAS + 1, &e) == SDW_EINVAL, "too many LoRAs are refused");
    drop_ring(r);
}

int main(void)
{
    test_table();
    test_loras();
    test_create_open();
    test_lifecycle();
    test_fifo();
    test_replay();
    test_log_bounds();
    test_wait();
    test_queue_position();
    test_cancel_running();
    test_queue_full_and_expiry();
    test_gone_ids();
    test_eviction();
    test_attach();
    test_owners();
    test_engine_death();
    test_robust();
    test_producers();
    test_metrics();
    test_models();
    return tap_done();
}
