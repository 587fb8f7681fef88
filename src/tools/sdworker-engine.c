/* sdworker-engine: creates the job ring and supervises the engine process
 * that owns the device. If the engine dies (a crash, the OOM killer, kill
 * -9), the job it was running gets an error event, queued jobs stay queued,
 * and a new engine starts after engine.restart_delay_ms. The supervisor also
 * expires finished jobs once their retention ends. */
#include "sdw-build.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "ring/ring.h"
#include "runner/runner.h"

/* How long a stopping engine may finish its current job. */
#define STOP_GRACE_MS 10000

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    stop_requested = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sdworker-engine [-c FILE] [-o KEY=VALUE]... [--print-config]\n"
            "\n"
            "Creates the shared-memory job ring named by ring.name and runs the engine\n"
            "that serves the configured models, restarting it if it dies.\n"
            "\n"
            "  -c, --config FILE     configuration file (see conf/sdworker.conf)\n"
            "  -o, --set KEY=VALUE   override one setting, e.g. -o model.tiny=/var/lib/tiny\n"
            "      --print-config    print the effective configuration and exit\n"
            "  -h, --help            this text\n"
            "\n"
            "Exit status: 0 after SIGTERM/SIGINT, 1 on a usage or configuration error,\n"
            "2 when the ring cannot be created.\n");
}

static int load_config(int argc, char **argv, sdw_config *cfg, int *print)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"set", required_argument, NULL, 'o'},
                                         {"print-config", no_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    sdw_error e;
    const char *file = NULL;
    char **sets = calloc((size_t)argc, sizeof *sets);
    int nsets = 0, c;
    *print = 0;
    while ((c = getopt_long(argc, argv, "c:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': file = optarg; break;
        case 'o': sets[nsets++] = optarg; break;
        case 'p': *print = 1; break;
        case 'h': usage(stdout); free(sets); exit(0);
        default: usage(stderr); free(sets); return -1;
        }
    }
    sdw_config_defaults(cfg);
    int rc = file ? sdw_config_load(cfg, file, &e) : 0;
    for (int i = 0; !rc && i < nsets; i++)
        rc = sdw_config_set(cfg, sets[i], &e);
    if (!rc)
        rc = sdw_config_validate(cfg, &e);
    free(sets);
    if (rc)
        sdw_log(SDW_LOG_ERROR, "%s", e.msg);
    return rc;
}

static int create_ring(const sdw_config *cfg, sdw_ring **ring)
{
    sdw_error e;
    sdw_ring_config rc = sdw_ring_default_config(cfg->ring_name);
    rc.slots = (unsigned)cfg->ring_slots;
    rc.max_queued = (unsigned)cfg->ring_max_queued;
    rc.retention_s = (unsigned)cfg->result_ttl;
    sdw_config_ring_sizes(cfg, &rc.input_bytes, &rc.log_bytes, &rc.image_bytes);
    /* A ring left by a supervisor that was killed holds nothing we could
     * serve: its jobs' clients are gone with the pool that served them. */
    sdw_ring_unlink(cfg->ring_name, &e);
    if (sdw_ring_create(&rc, ring, &e)) {
        sdw_log(SDW_LOG_ERROR, "%s", e.msg);
        return -1;
    }
    return 0;
}

static pid_t spawn_engine(const sdw_config *cfg, sdw_ring *ring)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    sdw_error e = {0};
    int rc = sdw_runner_run(cfg, ring, &stop_requested, &e);
    if (rc) {
        sdw_log(SDW_LOG_ERROR, "%s", e.msg);
        sdw_ring_set_engine(ring, SDW_ENGINE_DEAD, getpid(), e.msg, &e);
    }
    _exit(rc ? 3 : 0);
}

static void describe_exit(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "engine killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "engine exited with status %d", WEXITSTATUS(status));
}

int main(int argc, char **argv)
{
    sdw_config cfg;
    int print;
    sdw_log_init("sdworker-engine", SDW_LOG_INFO);
    if (load_config(argc, argv, &cfg, &print))
        return 1;
    sdw_log_set_level(cfg.log_level);
    if (print)
        return sdw_config_dump(&cfg, stdout) ? 1 : 0;
    sdw_ring *ring;
    if (create_ring(&cfg, &ring))
        return 2;

    /* Signals are taken synchronously with sigtimedwait: no handler races. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);

    sdw_error e;
    pid_t child = spawn_engine(&cfg, ring);
    int64_t restart_at = 0, stop_deadline = 0, started_at = sdw_ring_now_ms();
    int64_t delay = cfg.engine_restart_delay_ms > 0 ? cfg.engine_restart_delay_ms : 1;
    int stopping = 0;
    for (;;) {
        struct timespec tick = {1, 0};
        int sig = sigtimedwait(&set, NULL, &tick);
        if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
            stopping = 1;
            stop_deadline = sdw_ring_now_ms() + STOP_GRACE_MS;
            if (child > 0)
                kill(child, SIGTERM);
        }
        /* The engine stops between jobs; one still running when the grace
         * period ends is not worth waiting for. */
        if (stopping && child > 0 && sdw_ring_now_ms() >= stop_deadline)
            kill(child, SIGKILL);
        int status;
        pid_t done;
        while ((done = waitpid(-1, &status, WNOHANG)) > 0) {
            if (done != child)
                continue;
            child = 0;
            if (stopping)
                break;
            /* An engine that failed on purpose (no device, a model that
             * does not load) left its reason in the ring: keep it. */
            char why[400];
            sdw_engine_info info;
            if (sdw_ring_engine_status(ring, &info, &e) == 0 && info.state == SDW_ENGINE_DEAD && info.reason[0])
                snprintf(why, sizeof why, "%s", info.reason);
            else
                describe_exit(status, why, sizeof why);
            int failed = sdw_ring_engine_died(ring, why, &e);
            sdw_log(SDW_LOG_WARN, "%s; %d running job(s) failed", why, failed < 0 ? 0 : failed);
            /* An engine that dies soon after starting (no device, a model
             * that fails to load) is retried ever more slowly, up to a
             * minute; /ready reports why meanwhile. */
            int64_t now = sdw_ring_now_ms();
            delay = now - started_at < 10000 ? (delay * 2 < 60000 ? delay * 2 : 60000) : cfg.engine_restart_delay_ms;
            restart_at = now + delay;
        }
        if (stopping && child == 0)
            break;
        if (!stopping && child == 0 && sdw_ring_now_ms() >= restart_at) {
            sdw_log(SDW_LOG_INFO, "starting a new engine");
            started_at = sdw_ring_now_ms();
            child = spawn_engine(&cfg, ring);
        }
        sdw_ring_sweep(ring, sdw_ring_now_ms(), &e);
    }
    sdw_ring_close(ring);
    sdw_ring_unlink(cfg.ring_name, &e);
    return 0;
}
