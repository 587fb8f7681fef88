#define _GNU_SOURCE /* ppoll */
#include "pool.h"

#include "http.h"

#include <errno.h>
#include <fcgiapp.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Scoreboard slots: enough for pm.max_children's upper bound (4096) twice,
 * so a reload can start a full new set while the old one drains. */
#define BOARD_SLOTS 8192
#define LISTEN_BACKLOG 128
/* Children that die this soon after their start count as failing to start;
 * after a run of them the master waits before forking again. */
#define FAST_FAIL_MS 1000
#define FAST_FAIL_LIMIT 5
#define RESPAWN_PAUSE_MS 1000

enum child_state {
    CHILD_FREE = 0,  /* slot unused */
    CHILD_STARTING,  /* forked, not yet in accept: counts as idle */
    CHILD_IDLE,
    CHILD_BUSY,
    CHILD_STREAM,
};

struct board_slot {
    pid_t pid;
    unsigned gen;
    int state;              /* enum child_state, atomic */
    int retiring;           /* atomic: told to exit after its current request */
    int64_t started_ms;     /* CLOCK_MONOTONIC */
    sdw_job_id job;         /* written by the child while it streams */
};

struct board {
    pid_t master;
    sdw_pm_mode mode;
    int max_children, min_spare, max_spare;
    unsigned gen;           /* the configuration generation children must match */
    unsigned reloads;
    int high;               /* slots [0, high) may be in use */
    int64_t start_time_s;
    uint64_t accepted;      /* atomic */
    uint64_t max_reached;   /* atomic */
    struct board_slot slot[BOARD_SLOTS];
};

struct sdw_pool {
    sdw_pool_options opt;
    sdw_config cfg;
    sdw_ring *ring;
    int listen_fd;
    struct board *board;
    int self;               /* the child's slot; -1 in the master */
};

static sdw_log_level log_level = SDW_LOG_INFO;

void sdw_pool_log(sdw_log_level level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One write per line so that lines of concurrent children do not mix. */
    char out[1100];
    int n = snprintf(out, sizeof out, "sdworker-fcgi[%d]: %s: %s\n", (int)getpid(),
                     sdw_log_level_name(level), line);
    if (n > (int)sizeof out - 1)
        n = sizeof out - 1;
    ssize_t w = write(STDERR_FILENO, out, (size_t)n);
    (void)w;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int load_state(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store_state(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

int sdw_pool_load_config(const sdw_pool_options *o, sdw_config *c, sdw_error *e)
{
    sdw_config_defaults(c);
    if (o->config_path) {
        int rc = sdw_config_load(c, o->config_path, e);
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < o->n_overrides; i++) {
        int rc = sdw_config_set(c, o->overrides[i], e);
        if (rc < 0)
            return rc;
    }
    return sdw_config_validate(c, e);
}

/* ---- the scoreboard, as children and the status page see it ---- */

static void count_children(const struct board *b, int *total, int *idle, int *busy, int *streams,
                           int *retiring)
{
    int t = 0, i = 0, a = 0, s = 0, r = 0;
    for (int k = 0; k < __atomic_load_n(&b->high, __ATOMIC_ACQUIRE); k++) {
        const struct board_slot *sl = &b->slot[k];
        int st = load_state(&sl->state);
        if (st == CHILD_FREE)
            continue;
        if (load_state(&sl->retiring) || sl->gen != b->gen) {
            r++;
            if (st == CHILD_STREAM)
                s++;
            continue;
        }
        t++;
        if (st == CHILD_STARTING || st == CHILD_IDLE)
            i++;
        else
            a++;
        if (st == CHILD_STREAM)
            s++;
    }
    *total = t, *idle = i, *busy = a, *streams = s, *retiring = r;
}

void sdw_pool_stats_get(const sdw_pool *p, sdw_pool_stats *st)
{
    const struct board *b = p->board;
    memset(st, 0, sizeof *st);
    st->mode = b->mode;
    st->max_children = b->max_children;
    count_children(b, &st->children, &st->idle, &st->active, &st->streams, &st->retiring);
    st->accepted = __atomic_load_n(&b->accepted, __ATOMIC_RELAXED);
    st->max_children_reached = __atomic_load_n(&b->max_reached, __ATOMIC_RELAXED);
    st->start_time_s = b->start_time_s;
    st->reloads = b->reloads;
    st->listen_queue = st->listen_queue_max = -1;
    if (!p->cfg.listen_unix) {
        /* For a listening TCP socket Linux reports the accept queue in
         * tcpi_unacked and its limit in tcpi_sacked. */
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        if (getsockopt(p->listen_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
            st->listen_queue = (int)ti.tcpi_unacked;
            st->listen_queue_max = (int)ti.tcpi_sacked;
        }
    }
}

int sdw_pool_list(const sdw_pool *p, sdw_pool_proc *out, int max)
{
    static const char *const names[] = { "free", "starting", "idle", "busy", "stream" };
    const struct board *b = p->board;
    int n = 0;
    int64_t now = mono_ms();
    for (int k = 0; k < __atomic_load_n(&b->high, __ATOMIC_ACQUIRE) && n < max; k++) {
        const struct board_slot *sl = &b->slot[k];
        int st = load_state(&sl->state);
        if (st == CHILD_FREE || sl->pid <= 0)
            continue;
        out[n].pid = sl->pid;
        out[n].state = names[st];
        out[n].retiring = load_state(&sl->retiring) || sl->gen != b->gen;
        out[n].age_ms = now - sl->started_ms;
        memcpy(out[n].job, st == CHILD_STREAM ? sl->job : "", st == CHILD_STREAM ? sizeof out[n].job : 1);
        out[n].job[SDW_JOB_ID_LEN] = '\0';
        n++;
    }
    return n;
}

void sdw_pool_set_streaming(sdw_pool *p, const char *job_id)
{
    if (p->self < 0)
        return;
    struct board_slot *sl = &p->board->slot[p->self];
    if (job_id)
        snprintf(sl->job, sizeof sl->job, "%s", job_id);
    store_state(&sl->state, job_id ? CHILD_STREAM : CHILD_BUSY);
}

/* The supervisor replaces the ring when its layout changes, and a process
 * still mapping the old one would queue jobs that no engine takes and keep
 * its memory alive. Children check before every request, the master when
 * it wakes, so that children forked later start from the current ring. */
static void refresh_ring(sdw_pool *p)
{
    if (sdw_ring_stale(p->ring) != 1)
        return;
    sdw_ring *next;
    sdw_error e = { 0 };
    if (sdw_ring_open(p->cfg.ring_name, &next, &e) < 0) {
        sdw_pool_log(SDW_LOG_DEBUG, "the job ring was replaced; the new one is not ready yet: %s", e.msg);
        return;
    }
    sdw_ring_close(p->ring);
    p->ring = next;
    sdw_pool_log(p->self < 0 ? SDW_LOG_INFO : SDW_LOG_DEBUG, "the job ring %s was replaced; re-attached",
                 p->cfg.ring_name);
}

/* ---- a child ---- */

static volatile sig_atomic_t child_quit;

static void on_child_quit(int sig)
{
    (void)sig;
    child_quit = 1;
}

/* In dynamic mode, tells the master when this child's change moved the idle
 * count past a spare bound, so that it forks or retires children. */
static void nudge_master(const sdw_pool *p, bool became_busy)
{
    const struct board *b = p->board;
    if (b->mode != SDW_PM_DYNAMIC)
        return;
    int total, idle, busy, streams, retiring;
    count_children(b, &total, &idle, &busy, &streams, &retiring);
    if ((became_busy && idle < b->min_spare) || (!became_busy && idle > b->max_spare))
        kill(b->master, SIGUSR2);
}

static void child_main(sdw_pool *p)
{
    struct board_slot *me = &p->board->slot[p->self];
    sigset_t quit_set, none;
    sigemptyset(&none);
    sigemptyset(&quit_set);
    sigaddset(&quit_set, SIGQUIT);
    sigaddset(&quit_set, SIGTERM);
    sigaddset(&quit_set, SIGINT);

    struct sigaction sa = { 0 };
    sa.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    /* No SA_RESTART: the signal must end the wait for a connection. */
    sa.sa_handler = on_child_quit;
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* The quit signals stay blocked except in the wait for a connection,
     * so that a reload never interrupts a read or write to nginx. */
    sigprocmask(SIG_SETMASK, &quit_set, NULL);
    /* A master that dies without stopping us must not leave children
     * accepting on its socket forever. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != p->board->master)
        _exit(0);

    if (FCGX_Init() != 0) {
        sdw_pool_log(SDW_LOG_ERROR, "FCGX_Init failed");
        _exit(1);
    }
    FCGX_Request req;
    if (FCGX_InitRequest(&req, p->listen_fd, 0) != 0) {
        sdw_pool_log(SDW_LOG_ERROR, "FCGX_InitRequest failed");
        _exit(1);
    }
    sdw_http_ctx ctx = { .cfg = &p->cfg, .ring = p->ring, .pool = p };
    int served = 0;
    for (;;) {
        store_state(&me->state, CHILD_IDLE);
        if (served > 0 && !load_state(&me->retiring))
            nudge_master(p, false);
        /* The quit signals are taken only while waiting here: libfcgi's
         * reads of a request's parameters are never interrupted. Every idle
         * child wakes for a new connection; the listening socket is
         * non-blocking, so the ones that lose the race see EAGAIN. */
        struct pollfd pfd = { .fd = p->listen_fd, .events = POLLIN };
        int pr = child_quit ? -1 : ppoll(&pfd, 1, NULL, &none);
        if (child_quit)
            break;
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            sdw_pool_log(SDW_LOG_ERROR, "poll: %s, child exits", strerror(errno));
            break;
        }
        int rc = FCGX_Accept_r(&req);
        if (rc == -EAGAIN || rc == -EWOULDBLOCK || rc == -ECONNABORTED)
            continue;
        if (rc < 0) {
            sdw_pool_log(SDW_LOG_ERROR, "accept failed (%d), child exits", rc);
            break;
        }
        store_state(&me->state, CHILD_BUSY);
        __atomic_add_fetch(&p->board->accepted, 1, __ATOMIC_RELAXED);
        nudge_master(p, true);
        refresh_ring(p);
        ctx.ring = p->ring;
        sdw_http_handle(&ctx, &req);
        FCGX_Finish_r(&req);
        served++;
        if (child_quit)
            break;
        if (p->cfg.pm_max_requests > 0 && served >= p->cfg.pm_max_requests) {
            sdw_pool_log(SDW_LOG_DEBUG, "served %d requests, recycling", served);
            break;
        }
    }
    FCGX_Free(&req, 0);
    _exit(0);
}

/* ---- the master ---- */

static volatile sig_atomic_t got_chld, got_hup, got_term, got_usr2;

static void on_master_signal(int sig)
{
    switch (sig) {
    case SIGCHLD: got_chld = 1; break;
    case SIGHUP: got_hup = 1; break;
    case SIGUSR2: got_usr2 = 1; break;
    default: got_term = 1; break;
    }
}

static int bind_socket(const sdw_config *c, sdw_error *e)
{
    char spec[SDW_CONFIG_PATH_MAX + 16];
    if (c->listen_unix) {
        snprintf(spec, sizeof spec, "%s", c->listen_path);
        /* A stale socket from a previous run would make bind fail; a live
         * pool on the same path is told apart by connecting to it. */
        struct stat st;
        if (stat(c->listen_path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode))
                return sdw_fail(e, SDW_EIO, "%s exists and is not a socket", c->listen_path);
            int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_un sun = { .sun_family = AF_UNIX };
            snprintf(sun.sun_path, sizeof sun.sun_path, "%s", c->listen_path);
            bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof sun) == 0;
            if (probe >= 0)
                close(probe);
            if (live)
                return sdw_fail(e, SDW_EIO, "another process listens on %s", c->listen_path);
            unlink(c->listen_path);
        }
    } else {
        snprintf(spec, sizeof spec, "%s:%d", c->listen_host, c->listen_port);
    }
    /* nginx (often another user in the same group) must connect: owner and
     * group read/write, nobody else. */
    mode_t old = umask(0117);
    int fd = FCGX_OpenSocket(spec, LISTEN_BACKLOG);
    umask(old);
    if (fd < 0)
        return sdw_fail(e, SDW_EIO, "cannot listen on %s: %s", c->listen, strerror(errno));
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        close(fd);
        return sdw_fail(e, SDW_EIO, "%s: cannot make the socket non-blocking: %s", c->listen, strerror(errno));
    }
    return fd;
}

static int open_ring(const sdw_config *c, int wait_s, sdw_ring **ring, sdw_error *e)
{
    int64_t deadline = mono_ms() + (int64_t)wait_s * 1000;
    bool told = false;
    for (;;) {
        int rc = sdw_ring_open(c->ring_name, ring, e);
        if (rc == 0)
            return 0;
        if (mono_ms() >= deadline)
            return sdw_fail_wrap(e, "job ring %s (created by the engine supervisor; is it running?)",
                                 c->ring_name);
        if (!told) {
            sdw_pool_log(SDW_LOG_INFO, "waiting up to %d s for the job ring %s: %s", wait_s,
                         c->ring_name, e->msg);
            told = true;
        }
        struct timespec ts = { 0, 200 * 1000000L };
        nanosleep(&ts, NULL);
    }
}

static int spawn(sdw_pool *p)
{
    struct board *b = p->board;
    int k = 0;
    while (k < BOARD_SLOTS && load_state(&b->slot[k].state) != CHILD_FREE)
        k++;
    if (k == BOARD_SLOTS) {
        sdw_pool_log(SDW_LOG_ERROR, "scoreboard full, not forking");
        return -1;
    }
    struct board_slot *sl = &b->slot[k];
    sl->gen = b->gen;
    sl->pid = 0;
    store_state(&sl->retiring, 0);
    sl->started_ms = mono_ms();
    store_state(&sl->state, CHILD_STARTING);
    if (k >= b->high)
        __atomic_store_n(&b->high, k + 1, __ATOMIC_RELEASE);
    pid_t pid = fork();
    if (pid < 0) {
        sdw_pool_log(SDW_LOG_ERROR, "fork: %s", strerror(errno));
        store_state(&sl->state, CHILD_FREE);
        return -1;
    }
    if (pid == 0) {
        p->self = k;
        sl->pid = getpid();
        child_main(p);
    }
    sl->pid = pid;
    sdw_pool_log(SDW_LOG_DEBUG, "forked child %d", (int)pid);
    return 0;
}

static void retire(struct board_slot *sl)
{
    store_state(&sl->retiring, 1);
    if (sl->pid > 0)
        kill(sl->pid, SIGQUIT);
}

static void signal_all(struct board *b, int sig)
{
    for (int k = 0; k < b->high; k++)
        if (load_state(&b->slot[k].state) != CHILD_FREE && b->slot[k].pid > 0)
            kill(b->slot[k].pid, sig);
}

static int live_children(const struct board *b)
{
    int n = 0;
    for (int k = 0; k < b->high; k++)
        n += load_state(&b->slot[k].state) != CHILD_FREE;
    return n;
}

/* Reaps exited children; returns how many of them died soon after forking
 * with a failure. */
static int reap(struct board *b, bool stopping)
{
    int fast_fails = 0;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int k = 0;
        while (k < b->high && b->slot[k].pid != pid)
            k++;
        if (k == b->high)
            continue;
        struct board_slot *sl = &b->slot[k];
        bool expected = load_state(&sl->retiring) || stopping;
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!clean) {
            if (WIFSIGNALED(status))
                sdw_pool_log(expected ? SDW_LOG_INFO : SDW_LOG_WARN, "child %d killed by signal %d%s",
                             (int)pid, WTERMSIG(status), stopping ? "" : ", replacing it");
            else
                sdw_pool_log(SDW_LOG_WARN, "child %d exited with status %d", (int)pid,
                             WEXITSTATUS(status));
            if (mono_ms() - sl->started_ms < FAST_FAIL_MS)
                fast_fails++;
        } else {
            sdw_pool_log(SDW_LOG_DEBUG, "child %d exited", (int)pid);
        }
        sl->pid = 0;
        store_state(&sl->state, CHILD_FREE);
    }
    while (b->high > 0 && load_state(&b->slot[b->high - 1].state) == CHILD_FREE)
        b->high--;
    return fast_fails;
}

/* Forks or retires children to match the process-manager rules. */
static void maintain(sdw_pool *p, bool booting)
{
    struct board *b = p->board;
    const sdw_config *c = &p->cfg;
    int total, idle, busy, streams, retiring;
    count_children(b, &total, &idle, &busy, &streams, &retiring);
    int want = 0;
    if (c->pm == SDW_PM_STATIC) {
        want = c->pm_max_children - total;
    } else {
        if (booting && total < c->pm_start_servers)
            want = c->pm_start_servers - total;
        if (idle + want < c->pm_min_spare_servers)
            want = c->pm_min_spare_servers - idle;
        if (total + want > c->pm_max_children)
            want = c->pm_max_children - total;
        if (idle > c->pm_max_spare_servers) {
            int extra = idle - c->pm_max_spare_servers;
            for (int k = 0; k < b->high && extra > 0; k++) {
                struct board_slot *sl = &b->slot[k];
                if (sl->gen == b->gen && !load_state(&sl->retiring) && load_state(&sl->state) == CHILD_IDLE) {
                    retire(sl);
                    extra--;
                }
            }
        }
    }
    if (idle == 0 && total >= c->pm_max_children) {
        __atomic_add_fetch(&b->max_reached, 1, __ATOMIC_RELAXED);
        sdw_pool_log(SDW_LOG_WARN, "all %d children are busy (pm.max_children reached)", total);
    }
    for (int i = 0; i < want; i++)
        if (spawn(p) < 0)
            break;
}

static void publish_pm(struct board *b, const sdw_config *c)
{
    b->mode = c->pm;
    b->max_children = c->pm_max_children;
    b->min_spare = c->pm_min_spare_servers;
    b->max_spare = c->pm_max_spare_servers;
}

static void reload(sdw_pool *p)
{
    sdw_config next;
    sdw_error e = { 0 };
    if (sdw_pool_load_config(&p->opt, &next, &e) < 0) {
        sdw_pool_log(SDW_LOG_ERROR, "reload: %s; keeping the running configuration", e.msg);
        return;
    }
    if (strcmp(next.listen, p->cfg.listen) != 0) {
        sdw_pool_log(SDW_LOG_WARN, "reload: listen changed to %s; it takes effect on restart", next.listen);
        memcpy(next.listen, p->cfg.listen, sizeof next.listen);
        next.listen_unix = p->cfg.listen_unix;
        memcpy(next.listen_path, p->cfg.listen_path, sizeof next.listen_path);
        memcpy(next.listen_host, p->cfg.listen_host, sizeof next.listen_host);
        next.listen_port = p->cfg.listen_port;
    }
    if (strcmp(next.ring_name, p->cfg.ring_name) != 0) {
        sdw_pool_log(SDW_LOG_WARN, "reload: ring.name changed to %s; it takes effect on restart",
                     next.ring_name);
        memcpy(next.ring_name, p->cfg.ring_name, sizeof next.ring_name);
    }
    p->cfg = next;
    log_level = next.log_level;
    struct board *b = p->board;
    b->gen++;
    b->reloads++;
    publish_pm(b, &p->cfg);
    for (int k = 0; k < b->high; k++) {
        struct board_slot *sl = &b->slot[k];
        if (load_state(&sl->state) != CHILD_FREE && sl->gen != b->gen)
            retire(sl);
    }
    sdw_pool_log(SDW_LOG_INFO, "reloaded the configuration (pm %s, max_children %d)",
                 p->cfg.pm == SDW_PM_STATIC ? "static" : "dynamic", p->cfg.pm_max_children);
}

int sdw_pool_run(const sdw_pool_options *o, sdw_error *e)
{
    sdw_pool pool = { .opt = *o, .listen_fd = -1, .self = -1 };
    sdw_pool *p = &pool;
    int rc = sdw_pool_load_config(o, &p->cfg, e);
    if (rc < 0)
        return rc;
    log_level = p->cfg.log_level;

    struct sigaction sa = { 0 };
    sa.sa_handler = on_master_signal;
    sigemptyset(&sa.sa_mask);
    sigset_t handled, waitmask;
    sigemptyset(&handled);
    int sigs[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGUSR2 };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        sigaddset(&handled, sigs[i]);
        sigaction(sigs[i], &sa, NULL);
    }
    /* Signals are only taken inside ppoll, so no flag is missed between a
     * check and the wait. */
    sigprocmask(SIG_BLOCK, &handled, &waitmask);
    sigdelset(&waitmask, SIGCHLD);
    sigdelset(&waitmask, SIGHUP);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    sigdelset(&waitmask, SIGUSR2);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    p->listen_fd = bind_socket(&p->cfg, e);
    if (p->listen_fd < 0)
        return p->listen_fd;
    rc = open_ring(&p->cfg, o->ring_wait_s, &p->ring, e);
    if (rc < 0) {
        close(p->listen_fd);
        if (p->cfg.listen_unix)
            unlink(p->cfg.listen_path);
        return rc;
    }
    p->board = mmap(NULL, sizeof(struct board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p->board == MAP_FAILED) {
        sdw_ring_close(p->ring);
        close(p->listen_fd);
        return sdw_fail(e, SDW_ENOMEM, "scoreboard: %s", strerror(errno));
    }
    struct board *b = p->board;
    b->master = getpid();
    b->start_time_s = time(NULL);
    publish_pm(b, &p->cfg);
    sdw_pool_log(SDW_LOG_INFO, "listening on %s, ring %s, pm %s, max_children %d", p->cfg.listen,
                 p->cfg.ring_name, p->cfg.pm == SDW_PM_STATIC ? "static" : "dynamic",
                 p->cfg.pm_max_children);

    bool booting = true, stopping = false, killed = false;
    int64_t stop_deadline = 0, pause_until = 0;
    int fast_fail_run = 0;
    for (;;) {
        got_chld = 0;
        int ff = reap(b, stopping);
        fast_fail_run = ff > 0 ? fast_fail_run + ff : (live_children(b) > 0 ? 0 : fast_fail_run);
        if (fast_fail_run >= FAST_FAIL_LIMIT) {
            sdw_pool_log(SDW_LOG_ERROR, "children keep failing at start; pausing %d ms", RESPAWN_PAUSE_MS);
            pause_until = mono_ms() + RESPAWN_PAUSE_MS;
            fast_fail_run = 0;
        }
        if (got_term && !stopping) {
            stopping = true;
            stop_deadline = mono_ms() + (int64_t)o->grace_s * 1000;
            sdw_pool_log(SDW_LOG_INFO, "stopping: %d children finish their requests (grace %d s)",
                         live_children(b), o->grace_s);
            close(p->listen_fd);
            if (p->cfg.listen_unix)
                unlink(p->cfg.listen_path);
            for (int k = 0; k < b->high; k++)
                if (load_state(&b->slot[k].state) != CHILD_FREE)
                    retire(&b->slot[k]);
        }
        struct timespec ts, *tsp = NULL;
        if (stopping) {
            if (live_children(b) == 0)
                break;
            int64_t left = stop_deadline - mono_ms();
            if (left <= 0 && !killed) {
                sdw_pool_log(SDW_LOG_WARN, "grace over: killing %d children", live_children(b));
                signal_all(b, SIGKILL);
                killed = true;
            }
            if (!killed) {
                ts.tv_sec = left / 1000;
                ts.tv_nsec = (left % 1000) * 1000000L;
                tsp = &ts;
            }
        } else {
            if (got_hup) {
                got_hup = 0;
                reload(p);
            }
            got_usr2 = 0;
            refresh_ring(p);
            int64_t wait = pause_until - mono_ms();
            if (wait <= 0) {
                maintain(p, booting);
                booting = false;
            } else {
                ts.tv_sec = wait / 1000;
                ts.tv_nsec = (wait % 1000) * 1000000L;
                tsp = &ts;
            }
        }
        if (!got_chld && !got_hup && !got_usr2 && !(got_term && !stopping))
            ppoll(NULL, 0, tsp, &waitmask);
    }
    sdw_ring_close(p->ring);
    munmap(p->board, sizeof *p->board);
    sdw_pool_log(SDW_LOG_INFO, "stopped");
    return 0;
}
