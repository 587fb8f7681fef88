/* The engine side of tests/test_pool.sh: a test driver, not an engine. It
 * creates or removes the job ring, sets the engine state, expires jobs, and
 * in "run" mode takes jobs and publishes scripted events through the ring
 * API at a controllable pace:
 *
 *   test_pool_engine create CONF
 *   test_pool_engine unlink CONF
 *   test_pool_engine state CONF starting|loading|ready|dead REASON
 *   test_pool_engine expire CONF JOB_ID
 *   test_pool_engine restart CONF
 *   test_pool_engine models CONF MAX_PIXELS
 *   test_pool_engine run CONF STEP_MS PREVIEW_EVERY
 *
 * In run mode a job gets `steps` progress events STEP_MS apart, a preview
 * every PREVIEW_EVERY steps (0 = none) and a complete event; a prompt that
 * contains "fail" ends with an error event at step 2 instead, and a cancel
 * request is honoured before each step. Each step is reported to the
 * ring's step histogram as STEP_MS long, as the engine reports its own;
 * "restart" counts an engine restart as the supervisor does; "models"
 * publishes the configured models as SD 1.x 512x512 ones with a memory
 * estimate of MAX_PIXELS (weights 2 GiB, 3072 bytes a pixel), PNDM as
 * their own sampler and lcm taking at most 50 steps. */
#include "config/config.h"
#include "contract/contract.h"
#include "ring/ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A 1x1 PNG: enough for the client side to see an image. */
static const char tiny_png[] =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAW+0W3QAAAABJRU5ErkJggg==";

static int die(const char *what, const sdw_error *e)
{
    fprintf(stderr, "test_pool_engine: %s: %s\n", what, e->msg);
    return 1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int run_job(sdw_ring *r, const char *id, const sdw_job_request *jr, int step_ms, int preview_every)
{
    sdw_error e = { 0 };
    char buf[512];
    int total = jr->steps;
    for (int step = 1; step <= total; step++) {
        if (sdw_ring_cancel_requested(r, id, &e) == 1) {
            fprintf(stderr, "test_pool_engine: %s cancelled at step %d\n", id, step);
            return sdw_ring_finish_cancelled(r, id, &e) < 0 ? die("finish_cancelled", &e) : 0;
        }
        if (step == 2 && strstr(jr->prompt, "fail"))
            return sdw_ring_fail(r, id, "test_failure", "the test engine was asked to fail", &e) < 0
                       ? die("fail", &e)
                       : 0;
        sleep_ms(step_ms);
        sdw_ring_observe_step(r, step_ms / 1000.0);
        int n = snprintf(buf, sizeof buf, "{\"type\":\"progress\",\"step\":%d,\"total\":%d,\"percent\":%.1f}",
                         step, total, 100.0 * step / total);
        if (sdw_ring_append(r, id, "progress", buf, (size_t)n, &e) < 0)
            return die("append", &e);
        if (preview_every > 0 && step % preview_every == 0 && step < total) {
            n = snprintf(buf, sizeof buf,
                         "{\"type\":\"preview\",\"step\":%d,\"total\":%d,\"percent\":%.1f,"
                         "\"image\":\"%s\",\"format\":\"png\"}",
                         step, total, 100.0 * step / total, tiny_png);
            if (sdw_ring_preview(r, id, buf, (size_t)n, &e) < 0)
                return die("preview", &e);
        }
    }
    int n = snprintf(buf, sizeof buf, "{\"type\":\"complete\",\"image\":\"%s\",\"format\":\"png\",\"seed\":%llu}",
                     tiny_png, (unsigned long long)jr->seed);
    return sdw_ring_complete(r, id, buf, (size_t)n, &e) < 0 ? die("complete", &e) : 0;
}

static int run(sdw_ring *r, int step_ms, int preview_every)
{
    sdw_error e = { 0 };
    if (sdw_ring_set_engine(r, SDW_ENGINE_READY, getpid(), "", &e) < 0)
        return die("set_engine", &e);
    for (;;) {
        sdw_job_id id;
        void *input;
        size_t len;
        int rc = sdw_ring_take(r, 1000, id, &input, &len, &e);
        if (rc < 0)
            return die("take", &e);
        sdw_ring_heartbeat(r, &e);
        if (rc == 0)
            continue;
        sdw_job_request jr;
        sdw_api_error err = { 0 };
        if (sdw_job_request_deserialize(input, len, &jr, &err) < 0) {
            free(input);
            if (sdw_ring_fail(r, id, err.code, err.message, &e) < 0)
                return die("fail", &e);
            continue;
        }
        free(input);
        rc = run_job(r, id, &jr, step_ms, preview_every);
        sdw_job_request_free(&jr);
        if (rc)
            return rc;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test_pool_engine create|unlink|state|expire|restart|run CONF ...\n");
        return 2;
    }
    const char *cmd = argv[1];
    sdw_config cfg;
    sdw_error e = { 0 };
    sdw_config_defaults(&cfg);
    if (sdw_config_load(&cfg, argv[2], &e) < 0)
        return die(argv[2], &e);
    if (strcmp(cmd, "unlink") == 0)
        return sdw_ring_unlink(cfg.ring_name, &e) < 0 ? die("unlink", &e) : 0;
    sdw_ring *r;
    if (strcmp(cmd, "create") == 0) {
        sdw_ring_unlink(cfg.ring_name, NULL);
        sdw_ring_config rc = sdw_ring_default_config(cfg.ring_name);
        rc.slots = (unsigned)cfg.ring_slots;
        rc.max_queued = (unsigned)cfg.ring_max_queued;
        sdw_config_ring_sizes(&cfg, &rc.input_bytes, &rc.log_bytes, &rc.image_bytes);
        rc.retention_s = (unsigned)cfg.result_ttl;
        if (sdw_ring_create(&rc, &r, &e) < 0)
            return die("create", &e);
        sdw_ring_close(r);
        return 0;
    }
    if (sdw_ring_open(cfg.ring_name, &r, &e) < 0)
        return die("open", &e);
    int status = 2;
    if (strcmp(cmd, "state") == 0 && argc == 5) {
        static const char *const names[] = { "starting", "loading", "ready", "dead" };
        for (int s = 0; s < 4; s++)
            if (strcmp(argv[3], names[s]) == 0)
                status = sdw_ring_set_engine(r, (sdw_engine_state)s, 0, argv[4], &e) < 0 ? die("state", &e) : 0;
    } else if (strcmp(cmd, "expire") == 0 && argc == 4) {
        status = sdw_ring_expire(r, argv[3], &e) < 0 ? die("expire", &e) : 0;
    } else if (strcmp(cmd, "restart") == 0 && argc == 3) {
        sdw_ring_count_restart(r);
        status = 0;
    } else if (strcmp(cmd, "models") == 0 && argc == 4) {
        sdw_ring_model t[SDW_RING_MAX_MODELS] = { 0 };
        for (int i = 0; i < cfg.n_models && i < SDW_RING_MAX_MODELS; i++) {
            snprintf(t[i].name, sizeof t[i].name, "%s", cfg.models[i].name);
            snprintf(t[i].family, sizeof t[i].family, "sd1");
            snprintf(t[i].prediction, sizeof t[i].prediction, "epsilon");
            t[i].width = t[i].height = 512;
            t[i].weights_bytes = (uint64_t)2 << 30;
            t[i].bytes_per_pixel = 3072;
            t[i].max_pixels = strtoull(argv[3], NULL, 10);
            snprintf(t[i].own_sampler, sizeof t[i].own_sampler, "pndm");
            t[i].lcm_max_steps = 50;
        }
        status = sdw_ring_set_models(r, t, cfg.n_models, &e) < 0 ? die("models", &e) : 0;
    } else if (strcmp(cmd, "run") == 0 && argc == 5) {
        status = run(r, atoi(argv[3]), atoi(argv[4]));
    }
    if (status == 2)
        fprintf(stderr, "test_pool_engine: bad arguments for %s\n", cmd);
    sdw_ring_close(r);
    return status;
}
