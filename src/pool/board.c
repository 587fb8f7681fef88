#include "pool/board.h"

#include "base/clock.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

void sdw_board_count(const sdw_board *b, int *total, int *idle, int *busy, int *streams, int *retiring)
{
    int t = 0, i = 0, a = 0, s = 0, r = 0;
    for (int k = 0; k < __atomic_load_n(&b->high, __ATOMIC_ACQUIRE); k++) {
        const sdw_board_slot *sl = &b->slot[k];
        int st = sdw_board_load(&sl->state);
        if (st == SDW_CHILD_FREE)
            continue;
        s += __atomic_load_n(&sl->streams, __ATOMIC_RELAXED);
        if (sdw_board_load(&sl->retiring) || sl->gen != b->gen) {
            r++;
            continue;
        }
        t++;
        if ((st == SDW_CHILD_STARTING || st == SDW_CHILD_IDLE) && sdw_board_has_room(sl))
            i++;
        else
            a++;
    }
    *total = t, *idle = i, *busy = a, *streams = s, *retiring = r;
}

void sdw_board_stats(const sdw_board *b, int listen_fd, sdw_pool_stats *st)
{
    memset(st, 0, sizeof *st);
    st->mode = b->mode;
    st->max_children = b->max_children;
    sdw_board_count(b, &st->children, &st->idle, &st->active, &st->streams, &st->retiring);
    st->max_streams_per_child = b->max_streams;
    st->accepted = __atomic_load_n(&b->accepted, __ATOMIC_RELAXED);
    st->max_children_reached = __atomic_load_n(&b->max_reached, __ATOMIC_RELAXED);
    st->start_time_s = b->start_time_s;
    st->reloads = b->reloads;
    st->listen_queue = st->listen_queue_max = -1;
    if (listen_fd >= 0) {
        /* For a listening TCP socket Linux reports the accept queue in
         * tcpi_unacked and its limit in tcpi_sacked. */
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        if (getsockopt(listen_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
            st->listen_queue = (int)ti.tcpi_unacked;
            st->listen_queue_max = (int)ti.tcpi_sacked;
        }
    }
}

int sdw_board_list(const sdw_board *b, sdw_pool_proc *out, int max)
{
    static const char *const names[] = { "free", "starting", "idle", "busy" };
    int n = 0;
    int64_t now = sdw_now_ms();
    for (int k = 0; k < __atomic_load_n(&b->high, __ATOMIC_ACQUIRE) && n < max; k++) {
        const sdw_board_slot *sl = &b->slot[k];
        int st = sdw_board_load(&sl->state);
        if (st == SDW_CHILD_FREE || sl->pid <= 0)
            continue;
        out[n].pid = sl->pid;
        out[n].state = names[st];
        out[n].retiring = sdw_board_load(&sl->retiring) || sl->gen != b->gen;
        out[n].age_ms = now - sl->started_ms;
        out[n].streams = __atomic_load_n(&sl->streams, __ATOMIC_RELAXED);
        n++;
    }
    return n;
}

int sdw_board_list_streams(const sdw_board *b, sdw_pool_stream *out, int max)
{
    int n = 0;
    for (int k = 0; k < __atomic_load_n(&b->stream_high, __ATOMIC_ACQUIRE) && n < max; k++) {
        const sdw_stream_entry *en = &b->stream[k];
        if (!sdw_board_load(&en->owner))
            continue;
        out[n].pid = en->pid;
        memcpy(out[n].job, en->job, sizeof out[n].job);
        out[n].job[SDW_JOB_ID_LEN] = '\0';
        n++;
    }
    return n;
}
