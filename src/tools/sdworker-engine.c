/* sdworker-engine: attaches the job ring (re-opening the one a previous
 * supervisor left, with its queue and results) and supervises the engine
 * process that owns the device. If the engine dies (a crash, the OOM
 * killer, kill -9), the job it was running gets an error event, queued jobs
 * stay queued, and a new engine starts after engine.restart_delay_ms. On
 * SIGTERM the engine finishes its job within engine.stop_timeout_s (or ends
 * it with an engine_stopped error event) and the ring stays for the next
 * start. The supervisor also expires finished jobs once their retention
 * ends. */
#include "sdw-build.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "ring/ring.h"
#include "runner/runner.h"

/* After engine.stop_timeout_s the engine has ended its job itself unless a
 * single step or the decode outlasts the estimate; this much later it is
 * killed. The unit's TimeoutStopSec covers both. */
#define STOP_KILL_SLACK_MS 3000
/* How long to wait beyond the stop timeout for the ring's previous owner
 * (an old supervisor's engine finishing its job) to let go of it. */
#define ATTACH_SLACK_MS 10000

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
            "Creates the shared-memory job ring named by ring.name, or re-opens the one\n"
            "a previous run left with its queued jobs, and runs the engine that serves\n"
            "the configured models, restarting it if it dies.\n"
            "\n"
            "  -c, --config FILE     configuration file (see conf/sdworker.conf)\n"
            "  -o, --set KEY=VALUE   override one setting, e.g. -o model.tiny=/var/lib/tiny\n"
            "      --print-config    print the effective configuration and exit\n"
            "  -h, --help            this text\n"
            "\n"
            "Exit status: 0 after SIGTERM/SIGINT (the ring stays for the next start),\n"
            "1 on a usage or configuration error, 2 when the ring cannot be attached.\n");
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

static int attach_ring(const sdw_config *cfg, sdw_ring **ring)
{
    sdw_error e;
    sdw_ring_config rc = sdw_ring_default_config(cfg->ring_name);
    rc.slots = (unsigned)cfg->ring_slots;
    rc.max_queued = (unsigned)cfg->ring_max_queued;
    rc.retention_s = (unsigned)cfg->result_ttl;
    sdw_config_ring_sizes(cfg, &rc.input_bytes, &rc.log_bytes, &rc.image_bytes);
    sdw_ring_attach_info info;
    int wait_ms = cfg->engine_stop_timeout_s * 1000 + STOP_KILL_SLACK_MS + ATTACH_SLACK_MS;
    int st = sdw_ring_attach(&rc, 0, ring, &info, &e);
    if (st == SDW_ESTATE) {
        sdw_log(SDW_LOG_WARN, "%s; waiting up to %d s for it to exit", e.msg, wait_ms / 1000);
        st = sdw_ring_attach(&rc, wait_ms, ring, &info, &e);
    }
    if (st) {
        sdw_log(SDW_LOG_ERROR, "%s", e.msg);
        return -1;
    }
    if (info.replaced[0] && info.dropped >= 0)
        sdw_log(SDW_LOG_WARN, "replaced job ring %s: %s; its %d job(s) were dropped", cfg->ring_name, info.replaced,
                info.dropped);
    else if (info.replaced[0])
        sdw_log(SDW_LOG_WARN, "replaced job ring %s: %s; whatever it held was dropped", cfg->ring_name,
                info.replaced);
    else if (info.created)
        sdw_log(SDW_LOG_INFO, "created job ring %s (%u slots)", cfg->ring_name, rc.slots);
    else
        sdw_log(SDW_LOG_INFO,
                "re-opened job ring %s: %u queued job(s) and %u result(s) kept, %u job(s) running at the last "
                "stop failed (engine_stopped)",
                cfg->ring_name, info.queued, info.kept, info.interrupted);
    return 0;
}

static pid_t spawn_engine(const sdw_config *cfg, sdw_ring *ring)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* An engine outliving a killed supervisor would keep the ring's owner
     * lock: it stops (finishing its job, as on any stop) with it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(0);
    /* No SA_RESTART: the stop request must end the engine's wait for work. */
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
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
    if (attach_ring(&cfg, &ring))
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
    const int64_t base_delay = cfg.engine_restart_delay_ms > 0 ? cfg.engine_restart_delay_ms : 1;
    int64_t delay = base_delay;
    int stopping = 0;
    for (;;) {
        /* A second at most; less when a new engine is due sooner, so that
         * engine.restart_delay_ms is the delay, not the next tick. */
        struct timespec tick = {1, 0};
        if (!stopping && child == 0) {
            int64_t left = restart_at - sdw_ring_now_ms();
            left = left < 1 ? 1 : left > 1000 ? 1000 : left;
            tick = (struct timespec){left / 1000, (left % 1000) * 1000000};
        }
        int sig = sigtimedwait(&set, NULL, &tick);
        if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
            stopping = 1;
            stop_deadline = sdw_ring_now_ms() + (int64_t)cfg.engine_stop_timeout_s * 1000 + STOP_KILL_SLACK_MS;
            if (child > 0) {
                sdw_log(SDW_LOG_INFO, "stopping; a running job may finish within %d s, queued jobs stay in the ring",
                        cfg.engine_stop_timeout_s);
                kill(child, SIGTERM);
            }
        }
        if (stopping && child > 0 && sdw_ring_now_ms() >= stop_deadline) {
            sdw_log(SDW_LOG_WARN, "the engine did not stop in time; killing it");
            kill(child, SIGKILL);
            stop_deadline = INT64_MAX;
        }
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
            bool was_ready = false;
            if (sdw_ring_engine_status(ring, &info, &e) == 0) {
                was_ready = info.state == SDW_ENGINE_READY;
                if (info.state == SDW_ENGINE_DEAD && info.reason[0])
                    snprintf(why, sizeof why, "%s", info.reason);
                else
                    describe_exit(status, why, sizeof why);
            } else {
                describe_exit(status, why, sizeof why);
            }
            int failed = sdw_ring_engine_died(ring, why, &e);
            sdw_log(SDW_LOG_WARN, "%s; %d running job(s) failed", why, failed < 0 ? 0 : failed);
            /* An engine that dies soon after starting, before it got ready
             * (no device, a model that fails to load), is retried ever
             * more slowly, up to a minute; /ready reports why meanwhile.
             * One that was ready (killed, crashed on a job) is replaced
             * after engine.restart_delay_ms, however soon. */
            int64_t now = sdw_ring_now_ms();
            delay = !was_ready && now - started_at < 10000 ? (delay * 2 < 60000 ? delay * 2 : 60000)
                                                           : base_delay;
            restart_at = now + delay;
        }
        if (stopping && child == 0)
            break;
        if (!stopping && child == 0 && sdw_ring_now_ms() >= restart_at) {
            sdw_log(SDW_LOG_INFO, "starting a new engine");
            sdw_ring_count_restart(ring);
            started_at = sdw_ring_now_ms();
            child = spawn_engine(&cfg, ring);
        }
        sdw_ring_sweep(ring, sdw_ring_now_ms(), &e);
    }
    /* A job the engine neither finished nor ended (it was killed, or it
     * crashed on the way out) must not stay RUNNING for the next start to
     * find: it gets its engine_stopped error event now. */
    int failed = sdw_ring_engine_stopped(ring, "engine stopped", &e);
    sdw_engine_info info;
    if (sdw_ring_engine_status(ring, &info, &e) == 0)
        sdw_log(SDW_LOG_INFO, "stopped; %d running job(s) failed (engine_stopped), %u queued job(s) stay in the ring "
                "%s for the next start", failed < 0 ? 0 : failed, info.queued, cfg.ring_name);
    sdw_ring_close(ring);
    return 0;
}
