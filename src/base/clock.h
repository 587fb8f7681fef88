/* The monotonic clock, in seconds, that the engine and its tools time
 * phases and ops with. */
#ifndef SDW_CLOCK_H
#define SDW_CLOCK_H

#include <time.h>

static inline double sdw_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#endif
