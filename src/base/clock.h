/* The monotonic clock every process times phases, ops and deadlines with. */
#ifndef SDW_CLOCK_H
#define SDW_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline double sdw_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The same clock in whole milliseconds, for deadlines and ages. */
static inline int64_t sdw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
