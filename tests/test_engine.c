/* sdworker-engine end to end through the job ring, without HTTP: a job runs
 * and streams progress then a PNG; a job the pool would have refused is
 * refused by the engine too; a queued and a running job are cancelled; an
 * engine killed with SIGKILL mid-job fails that job only, restarts, and then
 * runs the job that was waiting; a supervisor stopped with SIGTERM lets the
 * running job finish (or, with no grace, ends it with engine_stopped) and
 * leaves the queue in the ring for the next one; a supervisor with another
 * ring layout replaces the ring. */
#define _GNU_SOURCE
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sdw-build.h"

#include "contract/contract.h"
#include "image/image.h"
#include "image_fixtures.h"
#include "ring/ring.h"
#include "tap.h"

static char ring_name[64];
static pid_t engine_pid;

/* SIGTERM to the supervisor; true when it exited 0. */
static int stop_engine(void)
{
    int status = -1;
    if (engine_pid > 0) {
        kill(engine_pid, SIGTERM);
        waitpid(engine_pid, &status, 0);
        engine_pid = 0;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* extra: one more -o setting, or NULL. */
static sdw_ring *start_engine(const char *device, const char *extra)
{
    char model[4200], ringopt[128], devopt[64];
    snprintf(devopt, sizeof devopt, "device=%s", device);
    snprintf(model, sizeof model, "model.tiny=%s", tap_fixture("models/tiny-a"));
    snprintf(ringopt, sizeof ringopt, "ring.name=%s", ring_name);
    engine_pid = fork();
    if (engine_pid == 0) {
        execl("./sdworker-engine", "sdworker-engine", "-o", model, "-o", ringopt, "-o", "preview_interval=2", "-o",
              "engine.restart_delay_ms=100", "-o", "log_level=warn", "-o", devopt, "-o",
              extra ? extra : "log_level=warn", (char *)NULL);
        _exit(127);
    }
    sdw_ring *r = NULL;
    sdw_error e;
    for (int i = 0; i < 200 && !r; i++) {
        if (sdw_ring_open(ring_name, &r, &e))
            usleep(50000);
    }
    return r;
}

static sdw_job_state state_of(sdw_ring *r, const char *id)
{
    sdw_job_info info;
    sdw_error e;
    return sdw_ring_job_status(r, id, &info, &e) == 0 ? info.state : (sdw_job_state)-1;
}

static int wait_ready(sdw_ring *r, int timeout_ms, pid_t *pid)
{
    sdw_engine_info info;
    sdw_error e;
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        if (sdw_ring_engine_status(r, &info, &e) == 0 && info.state == SDW_ENGINE_READY) {
            if (pid)
                *pid = info.pid;
            return 1;
        }
        usleep(20000);
    }
    return 0;
}

static int submit(sdw_ring *r, const char *json, sdw_job_id id)
{
    sdw_job_request req;
    sdw_api_error ae;
    sdw_error e;
    if (sdw_contract_parse(json, strlen(json), NULL, &req, &ae)) {
        tap_diag("parse: %s", ae.message);
        return -1;
    }
    size_t len;
    unsigned char *buf = sdw_job_request_serialize(&req, &len);
    int rc = buf ? sdw_ring_submit(r, buf, len, id, &e) : -1;
    free(buf);
    sdw_job_request_free(&req);
    return rc;
}

typedef struct seen {
    int progress, previews, complete, error;
    char error_code[64];
    int width, height, png_ok;
    uint64_t last_id;
} seen;

/* Reads a job's events until its stream ends; stop_after_progress > 0
 * returns early after that many progress events. */
static void follow(sdw_ring *r, const char *id, seen *s, int stop_after_progress)
{
    sdw_error e;
    for (;;) {
        sdw_ring_event ev;
        int rc = sdw_ring_wait_event(r, id, s->last_id, 30000, &ev, &e);
        if (rc != 1)
            return;
        s->last_id = ev.id;
        json_object *o = json_tokener_parse(ev.data);
        if (!strcmp(ev.name, "progress"))
            s->progress++;
        else if (!strcmp(ev.name, "preview"))
            s->previews++;
        else if (!strcmp(ev.name, "error")) {
            s->error++;
            json_object *c;
            if (json_object_object_get_ex(o, "code", &c))
                snprintf(s->error_code, sizeof s->error_code, "%s", json_object_get_string(c));
        } else if (!strcmp(ev.name, "complete")) {
            s->complete++;
            json_object *img, *w, *h;
            if (json_object_object_get_ex(o, "image", &img) && json_object_object_get_ex(o, "width", &w) &&
                json_object_object_get_ex(o, "height", &h)) {
                s->width = json_object_get_int(w), s->height = json_object_get_int(h);
                unsigned char *png;
                size_t len;
                const char *b64 = json_object_get_string(img);
                sdw_image dec;
                if (sdw_base64_decode(b64, strlen(b64), 1 << 24, &png, &len) == 0) {
                    s->png_ok = sdw_image_decode(&dec, png, len, 0, &e) == 0 && dec.width == s->width &&
                                dec.height == s->height;
                    if (s->png_ok)
                        sdw_image_free(&dec);
                    free(png);
                }
            }
        }
        json_object_put(o);
        sdw_ring_event_free(&ev);
        if (stop_after_progress && s->progress >= stop_after_progress)
            return;
    }
}

/* An engine that cannot get its device leaves the service up: /ready's
 * reason (the ring's engine state) says why, and queued jobs wait. */
static void check_bad_device(void)
{
    snprintf(ring_name, sizeof ring_name, "/sdw-test-engine-dev-%d", (int)getpid());
#ifdef SDW_HAVE_CUDA
    sdw_ring *r = start_engine("cuda:63", NULL);
#else
    sdw_ring *r = start_engine("cuda:0", NULL);
#endif
    sdw_engine_info info = {0};
    sdw_error e;
    int dead = 0;
    for (int i = 0; r && i < 300 && !dead; i++) {
        dead = sdw_ring_engine_status(r, &info, &e) == 0 && info.state == SDW_ENGINE_DEAD && info.reason[0];
        if (!dead)
            usleep(20000);
    }
    tap_ok(dead && strstr(info.reason, "cuda"), "an engine without its device reports why: %s", info.reason);
    if (r)
        sdw_ring_close(r);
    stop_engine();
    sdw_ring_unlink(ring_name, NULL);
}

/* An inpaint request for a 64x64 image with a 64x72 mask: the pool answers
 * it 400 invalid_mask_image, and the engine, which may find it in a ring
 * the pool did not write, refuses it the same way. */
static char *mismatched_inpaint(void)
{
    size_t n;
    unsigned char *f = fx_png(64, 64, 8, PNG_COLOR_TYPE_RGB, &n);
    char *init = sdw_base64_encode(f, n);
    free(f);
    f = fx_png(64, 72, 8, PNG_COLOR_TYPE_GRAY, &n);
    char *mask = sdw_base64_encode(f, n);
    free(f);
    char *json = NULL;
    if (asprintf(&json,
                 "{\"operation\":\"image_inpaint\",\"hive_id\":\"h\",\"model\":\"tiny\",\"prompt\":\"a cat\","
                 "\"steps\":4,\"init_image\":\"%s\",\"mask_image\":\"%s\"}", init, mask) < 0)
        json = NULL;
    free(init);
    free(mask);
    return json;
}

#define JOB(steps, extra)                                                                                       \
    "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"tiny\",\"prompt\":\"a cat\","           \
    "\"width\":64,\"height\":64,\"seed\":7,\"sampler\":\"euler\",\"steps\":" #steps extra "}"

int main(void)
{
    snprintf(ring_name, sizeof ring_name, "/sdw-test-engine-%d", (int)getpid());
    /* A generous stop timeout: the job running at the SIGTERM below (30
     * tiny steps) must be judged able to finish even on a loaded machine. */
    sdw_ring *r = start_engine("cpu", "engine.stop_timeout_s=120");
    if (!tap_ok(r != NULL, "the supervisor creates the ring")) {
        stop_engine();
        return tap_done();
    }
    pid_t worker;
    tap_ok(wait_ready(r, 30000, &worker), "the engine loads the model and reports ready");

    sdw_job_id a, b;
    seen sa = {0};
    tap_ok(submit(r, JOB(4, ""), a) == 0, "a job is queued");
    follow(r, a, &sa, 0);
    tap_ok(sa.progress == 4 && sa.complete == 1 && sa.error == 0,
           "it streams 4 progress events and one complete event (%d, %d, %d)", sa.progress, sa.complete, sa.error);
    tap_ok(sa.png_ok && sa.width == 64 && sa.height == 64, "the complete event carries a 64x64 PNG");

    sdw_job_id mm;
    seen sm = {0};
    char *bad = mismatched_inpaint();
    tap_ok(bad && submit(r, bad, mm) == 0, "an inpaint job with a mask of another size reaches the ring");
    follow(r, mm, &sm, 0);
    tap_ok(sm.error == 1 && sm.progress == 0 && !strcmp(sm.error_code, "invalid_mask_image"),
           "the engine refuses it before any step: %s", sm.error_code);
    free(bad);

    /* A running job cancelled between steps; then a queued one at once. */
    sdw_job_state after;
    sdw_error e;
    seen sb = {0};
    tap_ok(submit(r, JOB(60, ""), b) == 0, "a long job is queued");
    follow(r, b, &sb, 1);
    sdw_job_id c;
    submit(r, JOB(60, ""), c);
    tap_ok(sdw_ring_cancel(r, c, &after, &e) == 0 && after == SDW_JOB_CANCELLED, "a queued job is cancelled at once");
    tap_ok(sdw_ring_cancel(r, b, &after, &e) == 0, "a running job accepts a cancel request");
    follow(r, b, &sb, 0);
    tap_ok(sb.error == 1 && !strcmp(sb.error_code, "cancelled") && sb.complete == 0 && sb.progress < 60,
           "the running job ends with a cancelled error after %d steps", sb.progress);

    /* Kill the engine mid-job: that job fails, the queued one survives. */
    sdw_job_id d, f;
    seen sd = {0}, sf = {0};
    submit(r, JOB(60, ""), d);
    follow(r, d, &sd, 2);
    submit(r, JOB(3, ",\"seed\":8"), f);
    kill(worker, SIGKILL);
    follow(r, d, &sd, 0);
    tap_ok(sd.error == 1 && !strcmp(sd.error_code, "engine_crashed"), "the job running in a killed engine fails: %s",
           sd.error_code);
    pid_t worker2 = 0;
    tap_ok(wait_ready(r, 30000, &worker2) && worker2 != worker, "a new engine starts and gets ready");
    follow(r, f, &sf, 0);
    tap_ok(sf.complete == 1 && sf.png_ok, "the job queued during the crash runs on the new engine");

    /* SIGTERM with a job running and one queued: the running one finishes
     * within the grace, the queued one waits in the ring for the next
     * supervisor, which re-opens it rather than making a new one. */
    sdw_job_id g, h;
    seen sg = {0}, sh = {0};
    submit(r, JOB(30, ""), g);
    follow(r, g, &sg, 2);
    submit(r, JOB(3, ",\"seed\":9"), h);
    tap_ok(stop_engine(), "SIGTERM stops the supervisor (exit 0)");
    follow(r, g, &sg, 0);
    tap_ok(sg.complete == 1 && sg.error == 0 && sg.progress == 30,
           "the job running at the stop finished within engine.stop_timeout_s (%d steps)", sg.progress);
    tap_ok(sdw_ring_stale(r) == 0 && state_of(r, h) == SDW_JOB_QUEUED, "the ring stays, the queued job in it");
    sdw_ring *r2 = start_engine("cpu", NULL);
    tap_ok(r2 && wait_ready(r2, 30000, NULL) && sdw_ring_stale(r) == 0,
           "a new supervisor re-opens the same ring and gets ready");
    follow(r, h, &sh, 0);
    tap_ok(sh.complete == 1 && sh.png_ok, "the job queued across the restart completes");
    sdw_ring_close(r2);
    stop_engine();

    /* No grace: the running job ends with engine_stopped, never silently. */
    sdw_job_id k, m;
    seen sk = {0};
    r2 = start_engine("cpu", "engine.stop_timeout_s=0");
    wait_ready(r, 30000, NULL);
    submit(r, JOB(60, ""), k);
    follow(r, k, &sk, 2);
    submit(r, JOB(3, ",\"seed\":10"), m);
    tap_ok(stop_engine(), "SIGTERM with engine.stop_timeout_s = 0 stops the supervisor");
    follow(r, k, &sk, 0);
    tap_ok(sk.error == 1 && !strcmp(sk.error_code, "engine_stopped") && sk.complete == 0,
           "the running job ends with an engine_stopped error event after %d steps", sk.progress);
    tap_ok(state_of(r, m) == SDW_JOB_QUEUED, "the queued job is still queued");
    sdw_ring_close(r2);

    /* Another layout: the ring is replaced; the old mapping notices. */
    r2 = start_engine("cpu", "ring.slots=32");
    if (r2)
        sdw_ring_close(r2); /* perhaps the old ring, mapped before the replacement */
    int stale = 0;
    for (int i = 0; i < 200 && !(stale = sdw_ring_stale(r) == 1); i++)
        usleep(50000);
    r2 = NULL;
    for (int i = 0; i < 200 && sdw_ring_open(ring_name, &r2, &e); i++)
        usleep(50000);
    tap_ok(stale && r2 && wait_ready(r2, 30000, NULL) && state_of(r2, m) == (sdw_job_state)-1,
           "a supervisor with another ring.slots replaces the ring; mappings of the old one are stale");
    if (r2)
        sdw_ring_close(r2);
    sdw_ring_close(r);
    stop_engine();
    sdw_ring_unlink(ring_name, NULL);
    check_bad_device();
    return tap_done();
}
