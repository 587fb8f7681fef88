#define _GNU_SOURCE /* ppoll */
#include "pool/pool.h"

#include "base/clock.h"
#include "pool/board.h"
#include "pool/http.h"

#include <errno.h>
#include <fcgiapp.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LISTEN_BACKLOG 1024
/* Children that die this soon after their start count as failing to start;
 * after a run of them the master waits before forking again. */
#define FAST_FAIL_MS 1000
#define FAST_FAIL_LIMIT 5
#define RESPAWN_PAUSE_MS 1000
/* A stream thread's stack: it runs the SSE loop, the ring calls and the
 * logger, a few KiB deep; what is never touched costs no memory. */
#define STREAM_STACK (64 * 1024)
/* How often a full child that left the accepting to its siblings looks
 * again whether one of them still can take a connection. */
#define FULL_RECHECK_MS 50
/* A sibling whose main thread has been answering one request (or starting)
 * this long does not count as taking connections: the full children accept
 * again, so one slow request never holds up the pool. */
#define STALL_MS 50

/* A child's mapping of the ring and the stream threads still reading it:
 * a child that re-attaches to a replaced ring unmaps the old one only when
 * its last stream there has ended. */
struct ring_use {
    sdw_ring *ring;
    int users;              /* atomic: the child while it is current, and each stream on it */
};

struct sdw_pool {
    sdw_pool_options opt;
    sdw_config cfg;
    sdw_ring *ring;         /* the current mapping */
    struct ring_use *use;   /* a child's users of ring; NULL in the master */
    int listen_fd;
    sdw_board *board;
    sdw_auth_rates *rates;  /* shared by the children, kept across reloads */
    int self;               /* the child's slot; -1 in the master */
    /* A child's own, used by its main thread only: */
    sdw_http_ctx ctx;
    int wake_fd;            /* eventfd: a stream thread has ended */
    bool req_taken;         /* the request being answered now belongs to a stream thread */
    pthread_attr_t stream_attr;
};


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

/* ---- a child ---- */

static volatile sig_atomic_t child_quit;

static void on_child_quit(int sig)
{
    (void)sig;
    child_quit = 1;
}

/* In dynamic mode, tells the master when this child's change moved the
 * spare count past a bound, so that it forks or retires children; a child
 * that retires by itself always tells it, to be replaced. */
static void nudge_master(const sdw_pool *p, bool less_spare)
{
    const sdw_board *b = p->board;
    if (b->mode != SDW_PM_DYNAMIC)
        return;
    int total, idle, busy, streams, retiring;
    sdw_board_count(b, &total, &idle, &busy, &streams, &retiring);
    if ((less_spare && idle < b->min_spare) || (!less_spare && idle > b->max_spare))
        kill(b->master, SIGUSR2);
}

/* Whether another current child with room for a stream is taking
 * connections now: waiting in accept, or busy or starting only briefly. */
static bool sibling_takes_streams(const sdw_pool *p)
{
    const sdw_board *b = p->board;
    int64_t now = sdw_now_ms();
    for (int k = 0; k < __atomic_load_n(&b->high, __ATOMIC_ACQUIRE); k++) {
        const sdw_board_slot *sl = &b->slot[k];
        int st = sdw_board_load(&sl->state);
        if (k == p->self || st == SDW_CHILD_FREE || sl->gen != b->gen || sdw_board_load(&sl->retiring) || !sdw_board_has_room(sl))
            continue;
        if (st == SDW_CHILD_IDLE)
            return true;
        int64_t since = st == SDW_CHILD_BUSY ? __atomic_load_n(&sl->busy_ms, __ATOMIC_RELAXED) : sl->started_ms;
        if (now - since < STALL_MS)
            return true;
    }
    return false;
}

static int claim_entry(sdw_pool *p, const char *job_id)
{
    sdw_board *b = p->board;
    for (int k = 0; k < SDW_STREAM_SLOTS; k++) {
        sdw_stream_entry *en = &b->stream[k];
        int free_ = 0;
        /* Claimed as -(slot + 1) until the fields are written, so that the
         * status page never shows a half-written entry. */
        if (!__atomic_compare_exchange_n(&en->owner, &free_, -(p->self + 1), false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            continue;
        en->pid = getpid();
        snprintf(en->job, sizeof en->job, "%s", job_id);
        sdw_board_store(&en->owner, p->self + 1);
        int high = __atomic_load_n(&b->stream_high, __ATOMIC_RELAXED);
        while (high < k + 1 && !__atomic_compare_exchange_n(&b->stream_high, &high, k + 1, true,
                                                             __ATOMIC_RELEASE, __ATOMIC_RELAXED))
            ;
        return k;
    }
    return -1;
}

struct stream_job {
    sdw_pool *p;
    sdw_http_ctx ctx;       /* the child's, with the ring the stream started on */
    struct ring_use *use;
    FCGX_Request *req;
    int entry;
    sdw_job_id job;
    uint64_t after;
};

static void ring_use_put(struct ring_use *u)
{
    if (__atomic_sub_fetch(&u->users, 1, __ATOMIC_ACQ_REL) == 0) {
        sdw_ring_close(u->ring);
        free(u);
    }
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
        sdw_log(SDW_LOG_DEBUG, "the job ring was replaced; the new one is not ready yet: %s", e.msg);
        return;
    }
    if (p->use) {
        struct ring_use *u = malloc(sizeof *u);
        if (!u) {
            sdw_ring_close(next);
            return;
        }
        *u = (struct ring_use){ .ring = next, .users = 1 };
        ring_use_put(p->use);
        p->use = u;
        p->ctx.ring = next;
    } else {
        sdw_ring_close(p->ring);
    }
    p->ring = next;
    sdw_log(p->self < 0 ? SDW_LOG_INFO : SDW_LOG_DEBUG, "the job ring %s was replaced; re-attached",
            p->cfg.ring_name);
}

static void *stream_thread(void *arg)
{
    struct stream_job *sj = arg;
    sdw_pool *p = sj->p;
    sdw_http_stream(&sj->ctx, sj->req, sj->job, sj->after);
    ring_use_put(sj->use);
    FCGX_Finish_r(sj->req);
    free(sj->req);
    sdw_board_store(&p->board->stream[sj->entry].owner, 0);
    __atomic_sub_fetch(&p->board->slot[p->self].streams, 1, __ATOMIC_RELEASE);
    free(sj);
    /* The main thread may wait for room, or for the last stream to end. */
    uint64_t one = 1;
    ssize_t w = write(p->wake_fd, &one, sizeof one);
    (void)w;
    return NULL;
}

/* The http_ctx's stream_start: hands req, just accepted by the calling
 * child's main thread, to a new stream thread, which runs sdw_http_stream
 * and finishes and frees req. SDW_EFULL when the child already serves
 * pm.max_streams_per_child streams, SDW_ENOMEM when no thread could start:
 * then req is still the caller's to answer. */
static int stream_start(void *host, FCGX_Request *req, const char *job_id, uint64_t after, sdw_error *e)
{
    sdw_pool *p = host;
    sdw_board_slot *me = &p->board->slot[p->self];
    int open = __atomic_load_n(&me->streams, __ATOMIC_RELAXED);
    if (open >= p->cfg.pm_max_streams_per_child)
        return sdw_fail(e, SDW_EFULL, "every stream this server can hold is open (%d per process)",
                        p->cfg.pm_max_streams_per_child);
    struct stream_job *sj = malloc(sizeof *sj);
    if (!sj)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    sj->entry = claim_entry(p, job_id);
    if (sj->entry < 0) {
        free(sj);
        return sdw_fail(e, SDW_EFULL, "the pool's table of %d open streams is full", SDW_STREAM_SLOTS);
    }
    sj->p = p;
    sj->ctx = p->ctx;
    sj->use = p->use;
    __atomic_add_fetch(&sj->use->users, 1, __ATOMIC_RELAXED);
    sj->req = req;
    sj->after = after;
    snprintf(sj->job, sizeof sj->job, "%s", job_id);
    /* Counted before the thread runs: it may end before pthread_create
     * returns. The thread starts with every signal blocked (the main thread
     * alone takes the quit signals). */
    __atomic_add_fetch(&me->streams, 1, __ATOMIC_RELEASE);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, &p->stream_attr, stream_thread, sj);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        __atomic_sub_fetch(&me->streams, 1, __ATOMIC_RELEASE);
        sdw_board_store(&p->board->stream[sj->entry].owner, 0);
        ring_use_put(sj->use);
        free(sj);
        return sdw_fail(e, SDW_ENOMEM, "cannot start a stream thread: %s", strerror(rc));
    }
    p->req_taken = true;
    return 0;
}

static FCGX_Request *new_request(const sdw_pool *p)
{
    FCGX_Request *req = malloc(sizeof *req);
    if (req && FCGX_InitRequest(req, p->listen_fd, 0) != 0) {
        free(req);
        req = NULL;
    }
    return req;
}

static void drain_wake(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
}

/* Waits for the open streams to end: a retiring child lets them run to the
 * job's end (the master's SIGKILL at the end of a stop's grace cuts them,
 * and their clients reconnect with Last-Event-ID). */
static void wait_streams(sdw_pool *p)
{
    sdw_board_slot *me = &p->board->slot[p->self];
    int open;
    while ((open = __atomic_load_n(&me->streams, __ATOMIC_ACQUIRE)) > 0) {
        struct pollfd pfd = { .fd = p->wake_fd, .events = POLLIN };
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
            sdw_log(SDW_LOG_ERROR, "poll: %s; leaving %d streams", strerror(errno), open);
            return;
        }
        drain_wake(p->wake_fd);
    }
}

static void child_main(sdw_pool *p)
{
    sdw_board_slot *me = &p->board->slot[p->self];
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

    p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->wake_fd < 0) {
        sdw_log(SDW_LOG_ERROR, "eventfd: %s", strerror(errno));
        _exit(1);
    }
    int rc = pthread_attr_init(&p->stream_attr);
    if (rc == 0)
        rc = pthread_attr_setstacksize(&p->stream_attr, STREAM_STACK);
    if (rc == 0)
        rc = pthread_attr_setdetachstate(&p->stream_attr, PTHREAD_CREATE_DETACHED);
    if (rc != 0) {
        sdw_log(SDW_LOG_ERROR, "stream thread attributes: %s", strerror(rc));
        _exit(1);
    }
    if (FCGX_Init() != 0) {
        sdw_log(SDW_LOG_ERROR, "FCGX_Init failed");
        _exit(1);
    }
    FCGX_Request *req = new_request(p);
    if (!req) {
        sdw_log(SDW_LOG_ERROR, "FCGX_InitRequest failed");
        _exit(1);
    }
    p->use = malloc(sizeof *p->use);
    if (!p->use) {
        sdw_log(SDW_LOG_ERROR, "out of memory, child exits");
        _exit(1);
    }
    *p->use = (struct ring_use){ .ring = p->ring, .users = 1 };
    p->ctx = (sdw_http_ctx){ .cfg = &p->cfg,
                             .ring = p->ring,
                             .board = p->board,
                             .listen_fd = p->cfg.listen_unix ? -1 : p->listen_fd,
                             .rates = p->rates,
                             .counters = &p->board->counters,
                             .stream_start = stream_start,
                             .host = p };
    int served = 0;
    for (;;) {
        sdw_board_store(&me->state, SDW_CHILD_IDLE);
        if (served > 0 && !sdw_board_load(&me->retiring))
            nudge_master(p, false);
        /* A full child leaves the connections to siblings with room, and
         * looks again now and then: when they have all filled up (or are
         * held up by a slow request), it accepts too, so /health and
         * submits are always answered. */
        bool listen = sdw_board_has_room(me) || !sibling_takes_streams(p);
        /* The quit signals are taken only while waiting here: libfcgi's
         * reads of a request's parameters are never interrupted. Every
         * accepting child wakes for a new connection; the listening socket
         * is non-blocking, so the ones that lose the race see EAGAIN. */
        struct pollfd pfd[2] = { { .fd = p->wake_fd, .events = POLLIN }, { .fd = p->listen_fd, .events = POLLIN } };
        struct timespec recheck = { 0, FULL_RECHECK_MS * 1000000L };
        int pr = child_quit ? -1 : ppoll(pfd, listen ? 2 : 1, listen ? NULL : &recheck, &none);
        if (child_quit)
            break;
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            sdw_log(SDW_LOG_ERROR, "poll: %s, child exits", strerror(errno));
            break;
        }
        if (pfd[0].revents & POLLIN)
            drain_wake(p->wake_fd);
        if (!listen || !(pfd[1].revents & POLLIN))
            continue;
        rc = FCGX_Accept_r(req);
        if (rc == -EAGAIN || rc == -EWOULDBLOCK || rc == -ECONNABORTED)
            continue;
        if (rc < 0) {
            sdw_log(SDW_LOG_ERROR, "accept failed (%d), child exits", rc);
            break;
        }
        __atomic_store_n(&me->busy_ms, sdw_now_ms(), __ATOMIC_RELAXED);
        sdw_board_store(&me->state, SDW_CHILD_BUSY);
        __atomic_add_fetch(&p->board->accepted, 1, __ATOMIC_RELAXED);
        nudge_master(p, true);
        refresh_ring(p);
        p->req_taken = false;
        sdw_http_handle(&p->ctx, req);
        if (p->req_taken) {
            req = new_request(p);
            if (!req) {
                sdw_log(SDW_LOG_ERROR, "out of memory for a request, child exits");
                break;
            }
        } else {
            FCGX_Finish_r(req);
        }
        served++;
        if (child_quit)
            break;
        if (p->cfg.pm_max_requests > 0 && served >= p->cfg.pm_max_requests) {
            sdw_log(SDW_LOG_DEBUG, "served %d requests, recycling", served);
            break;
        }
    }
    /* Out of the accept loop for good: the master replaces this child
     * while its streams run to their end. */
    sdw_board_store(&me->state, SDW_CHILD_IDLE);
    if (!sdw_board_load(&me->retiring)) {
        sdw_board_store(&me->retiring, 1);
        kill(p->board->master, SIGUSR2);
    }
    if (req) {
        FCGX_Free(req, 1);
        free(req);
    }
    wait_streams(p);
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
    int64_t deadline = sdw_now_ms() + (int64_t)wait_s * 1000;
    bool told = false;
    for (;;) {
        int rc = sdw_ring_open(c->ring_name, ring, e);
        if (rc == 0)
            return 0;
        if (sdw_now_ms() >= deadline)
            return sdw_fail_wrap(e, "job ring %s (created by the engine supervisor; is it running?)",
                                 c->ring_name);
        if (!told) {
            sdw_log(SDW_LOG_INFO, "waiting up to %d s for the job ring %s: %s", wait_s,
                    c->ring_name, e->msg);
            told = true;
        }
        struct timespec ts = { 0, 200 * 1000000L };
        nanosleep(&ts, NULL);
    }
}

static int spawn(sdw_pool *p)
{
    sdw_board *b = p->board;
    int k = 0;
    while (k < SDW_BOARD_SLOTS && sdw_board_load(&b->slot[k].state) != SDW_CHILD_FREE)
        k++;
    if (k == SDW_BOARD_SLOTS) {
        sdw_log(SDW_LOG_ERROR, "scoreboard full, not forking");
        return -1;
    }
    sdw_board_slot *sl = &b->slot[k];
    sl->gen = b->gen;
    sl->pid = 0;
    sl->max_streams = p->cfg.pm_max_streams_per_child;
    sdw_board_store(&sl->streams, 0);
    sdw_board_store(&sl->retiring, 0);
    sl->started_ms = sdw_now_ms();
    sdw_board_store(&sl->state, SDW_CHILD_STARTING);
    if (k >= b->high)
        __atomic_store_n(&b->high, k + 1, __ATOMIC_RELEASE);
    pid_t pid = fork();
    if (pid < 0) {
        sdw_log(SDW_LOG_ERROR, "fork: %s", strerror(errno));
        sdw_board_store(&sl->state, SDW_CHILD_FREE);
        return -1;
    }
    if (pid == 0) {
        p->self = k;
        sl->pid = getpid();
        child_main(p);
    }
    sl->pid = pid;
    sdw_log(SDW_LOG_DEBUG, "forked child %d", (int)pid);
    return 0;
}

static void retire(sdw_board_slot *sl)
{
    sdw_board_store(&sl->retiring, 1);
    if (sl->pid > 0)
        kill(sl->pid, SIGQUIT);
}

static void signal_all(sdw_board *b, int sig)
{
    for (int k = 0; k < b->high; k++)
        if (sdw_board_load(&b->slot[k].state) != SDW_CHILD_FREE && b->slot[k].pid > 0)
            kill(b->slot[k].pid, sig);
}

static int live_children(const sdw_board *b)
{
    int n = 0;
    for (int k = 0; k < b->high; k++)
        n += sdw_board_load(&b->slot[k].state) != SDW_CHILD_FREE;
    return n;
}

/* Reaps exited children; returns how many of them died soon after forking
 * with a failure. */
static int reap(sdw_board *b, bool stopping)
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
        sdw_board_slot *sl = &b->slot[k];
        bool expected = sdw_board_load(&sl->retiring) || stopping;
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!clean) {
            if (WIFSIGNALED(status))
                sdw_log(expected ? SDW_LOG_INFO : SDW_LOG_WARN, "child %d killed by signal %d%s",
                        (int)pid, WTERMSIG(status), stopping ? "" : ", replacing it");
            else
                sdw_log(SDW_LOG_WARN, "child %d exited with status %d", (int)pid,
                        WEXITSTATUS(status));
            if (sdw_now_ms() - sl->started_ms < FAST_FAIL_MS)
                fast_fails++;
        } else {
            sdw_log(SDW_LOG_DEBUG, "child %d exited", (int)pid);
        }
        /* Its streams died with it; the slot's next child starts clean. */
        for (int j = 0; j < __atomic_load_n(&b->stream_high, __ATOMIC_ACQUIRE); j++) {
            int owner = sdw_board_load(&b->stream[j].owner);
            if (owner == k + 1 || owner == -(k + 1))
                sdw_board_store(&b->stream[j].owner, 0);
        }
        sl->pid = 0;
        sdw_board_store(&sl->state, SDW_CHILD_FREE);
    }
    while (b->high > 0 && sdw_board_load(&b->slot[b->high - 1].state) == SDW_CHILD_FREE)
        b->high--;
    return fast_fails;
}

/* Forks or retires children to match the process-manager rules. */
static void maintain(sdw_pool *p, bool booting)
{
    sdw_board *b = p->board;
    const sdw_config *c = &p->cfg;
    int total, idle, busy, streams, retiring;
    sdw_board_count(b, &total, &idle, &busy, &streams, &retiring);
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
                sdw_board_slot *sl = &b->slot[k];
                /* One with streams would linger until they end: keep it. */
                if (sl->gen == b->gen && !sdw_board_load(&sl->retiring) && sdw_board_load(&sl->state) == SDW_CHILD_IDLE &&
                    sdw_board_load(&sl->streams) == 0) {
                    retire(sl);
                    extra--;
                }
            }
        }
    }
    if (idle == 0 && total >= c->pm_max_children) {
        __atomic_add_fetch(&b->max_reached, 1, __ATOMIC_RELAXED);
        sdw_log(SDW_LOG_WARN, "all %d children are busy (pm.max_children reached)", total);
    }
    for (int i = 0; i < want; i++)
        if (spawn(p) < 0)
            break;
}

static void publish_pm(sdw_board *b, const sdw_config *c)
{
    b->mode = c->pm;
    b->max_children = c->pm_max_children;
    b->min_spare = c->pm_min_spare_servers;
    b->max_spare = c->pm_max_spare_servers;
    b->max_streams = c->pm_max_streams_per_child;
}

/* Every stream holds a connection to nginx in a child: the soft limit of
 * open files (often 1024) goes up to the hard one. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        sdw_log(SDW_LOG_WARN, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    if (rl.rlim_cur == rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        sdw_log(SDW_LOG_WARN, "cannot raise the open-file limit from %llu: %s", (unsigned long long)was,
                strerror(errno));
    else
        sdw_log(SDW_LOG_DEBUG, "open-file limit raised from %llu to %llu", (unsigned long long)was,
                (unsigned long long)rl.rlim_cur);
}

static void reload(sdw_pool *p)
{
    sdw_config next;
    sdw_error e = { 0 };
    if (sdw_pool_load_config(&p->opt, &next, &e) < 0) {
        sdw_log(SDW_LOG_ERROR, "reload: %s; keeping the running configuration", e.msg);
        return;
    }
    if (strcmp(next.listen, p->cfg.listen) != 0) {
        sdw_log(SDW_LOG_WARN, "reload: listen changed to %s; it takes effect on restart", next.listen);
        memcpy(next.listen, p->cfg.listen, sizeof next.listen);
        next.listen_unix = p->cfg.listen_unix;
        memcpy(next.listen_path, p->cfg.listen_path, sizeof next.listen_path);
        memcpy(next.listen_host, p->cfg.listen_host, sizeof next.listen_host);
        next.listen_port = p->cfg.listen_port;
    }
    if (strcmp(next.ring_name, p->cfg.ring_name) != 0) {
        sdw_log(SDW_LOG_WARN, "reload: ring.name changed to %s; it takes effect on restart",
                next.ring_name);
        memcpy(next.ring_name, p->cfg.ring_name, sizeof next.ring_name);
    }
    p->cfg = next;
    sdw_log_set_level(next.log_level);
    sdw_board *b = p->board;
    b->gen++;
    b->reloads++;
    publish_pm(b, &p->cfg);
    for (int k = 0; k < b->high; k++) {
        sdw_board_slot *sl = &b->slot[k];
        if (sdw_board_load(&sl->state) != SDW_CHILD_FREE && sl->gen != b->gen)
            retire(sl);
    }
    sdw_log(SDW_LOG_INFO, "reloaded the configuration (pm %s, max_children %d, %d API keys)",
            p->cfg.pm == SDW_PM_STATIC ? "static" : "dynamic", p->cfg.pm_max_children, p->cfg.n_keys);
}

/* The master's signals are taken only inside ppoll (with waitmask), so no
 * flag is missed between a check and the wait. */
static void master_signals(sigset_t *waitmask)
{
    struct sigaction sa = { 0 };
    sa.sa_handler = on_master_signal;
    sigemptyset(&sa.sa_mask);
    sigset_t handled;
    sigemptyset(&handled);
    static const int sigs[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGUSR2 };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        sigaddset(&handled, sigs[i]);
        sigaction(sigs[i], &sa, NULL);
    }
    sigprocmask(SIG_BLOCK, &handled, waitmask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigdelset(waitmask, sigs[i]);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* The socket, the ring, the scoreboard and the rate table, or nothing. */
static int master_open(sdw_pool *p, sdw_error *e)
{
    p->listen_fd = bind_socket(&p->cfg, e);
    if (p->listen_fd < 0)
        return p->listen_fd;
    int rc = open_ring(&p->cfg, p->opt.ring_wait_s, &p->ring, e);
    if (rc < 0)
        goto no_ring;
    p->board = mmap(NULL, sizeof(sdw_board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p->board == MAP_FAILED) {
        rc = sdw_fail(e, SDW_ENOMEM, "scoreboard: %s", strerror(errno));
        goto no_board;
    }
    if ((rc = sdw_auth_rates_create(&p->rates, e)) < 0)
        goto no_rates;
    p->board->master = getpid();
    p->board->start_time_s = time(NULL);
    publish_pm(p->board, &p->cfg);
    return 0;
no_rates:
    munmap(p->board, sizeof *p->board);
no_board:
    sdw_ring_close(p->ring);
no_ring:
    close(p->listen_fd);
    if (p->cfg.listen_unix)
        unlink(p->cfg.listen_path);
    return rc;
}

static void set_timeout(struct timespec *ts, int64_t ms)
{
    ts->tv_sec = ms / 1000;
    ts->tv_nsec = (ms % 1000) * 1000000L;
}

/* Keeps the children until a stop, then lets them finish for the grace
 * period and kills the rest. */
static void master_loop(sdw_pool *p, const sigset_t *waitmask)
{
    sdw_board *b = p->board;
    bool booting = true, stopping = false, killed = false;
    int64_t stop_deadline = 0, pause_until = 0;
    int fast_fail_run = 0;
    for (;;) {
        got_chld = 0;
        int ff = reap(b, stopping);
        fast_fail_run = ff > 0 ? fast_fail_run + ff : (live_children(b) > 0 ? 0 : fast_fail_run);
        if (fast_fail_run >= FAST_FAIL_LIMIT) {
            sdw_log(SDW_LOG_ERROR, "children keep failing at start; pausing %d ms", RESPAWN_PAUSE_MS);
            pause_until = sdw_now_ms() + RESPAWN_PAUSE_MS;
            fast_fail_run = 0;
        }
        if (got_term && !stopping) {
            stopping = true;
            stop_deadline = sdw_now_ms() + (int64_t)p->opt.grace_s * 1000;
            sdw_log(SDW_LOG_INFO, "stopping: %d children finish their requests (grace %d s)",
                    live_children(b), p->opt.grace_s);
            close(p->listen_fd);
            if (p->cfg.listen_unix)
                unlink(p->cfg.listen_path);
            for (int k = 0; k < b->high; k++)
                if (sdw_board_load(&b->slot[k].state) != SDW_CHILD_FREE)
                    retire(&b->slot[k]);
        }
        struct timespec ts, *tsp = NULL;
        if (stopping) {
            if (live_children(b) == 0)
                break;
            int64_t left = stop_deadline - sdw_now_ms();
            if (left <= 0 && !killed) {
                sdw_log(SDW_LOG_WARN, "grace over: killing %d children", live_children(b));
                signal_all(b, SIGKILL);
                killed = true;
            }
            if (!killed)
                set_timeout(tsp = &ts, left);
        } else {
            if (got_hup) {
                got_hup = 0;
                reload(p);
            }
            got_usr2 = 0;
            refresh_ring(p);
            int64_t wait = pause_until - sdw_now_ms();
            if (wait <= 0) {
                maintain(p, booting);
                booting = false;
            } else {
                set_timeout(tsp = &ts, wait);
            }
        }
        if (!got_chld && !got_hup && !got_usr2 && !(got_term && !stopping))
            ppoll(NULL, 0, tsp, waitmask);
    }
}

int sdw_pool_run(const sdw_pool_options *o, sdw_error *e)
{
    sdw_pool pool = { .opt = *o, .listen_fd = -1, .self = -1, .wake_fd = -1 };
    sdw_pool *p = &pool;
    int rc = sdw_pool_load_config(o, &p->cfg, e);
    if (rc < 0)
        return rc;
    sdw_log_set_level(p->cfg.log_level);
    sigset_t waitmask;
    master_signals(&waitmask);
    raise_nofile();
    if ((rc = master_open(p, e)) < 0)
        return rc;
    sdw_log(SDW_LOG_INFO, "listening on %s, ring %s, pm %s, max_children %d, max_streams_per_child %d, %d API keys%s",
            p->cfg.listen, p->cfg.ring_name, p->cfg.pm == SDW_PM_STATIC ? "static" : "dynamic",
            p->cfg.pm_max_children, p->cfg.pm_max_streams_per_child, p->cfg.n_keys,
            p->cfg.n_keys ? "" : " (the API is open)");
    master_loop(p, &waitmask);
    sdw_ring_close(p->ring);
    munmap(p->board, sizeof *p->board);
    sdw_auth_rates_destroy(p->rates);
    sdw_log(SDW_LOG_INFO, "stopped");
    return 0;
}
