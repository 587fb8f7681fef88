/* A minimal TAP producer for the automake TAP driver: each check is one
 * "ok"/"not ok" line, the plan comes last, and the exit status is non-zero
 * when any check failed. Header-only so every test binary stays one file. */
#ifndef SDW_TAP_H
#define SDW_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_n, tap_failed;

static inline int tap_ok(int cond, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d - ", cond ? "ok" : "not ok", ++tap_n);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!cond)
        tap_failed++;
    fflush(stdout);
    return cond;
}

static inline void tap_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("ok %d # SKIP ", ++tap_n);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static inline void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* Path of a fixture file: $SDW_FIXTURES/name (set by make check). */
static inline const char *tap_fixture(const char *name)
{
    static char buf[8][4096];
    static int k;
    const char *dir = getenv("SDW_FIXTURES");
    char *b = buf[k++ & 7];
    snprintf(b, sizeof buf[0], "%s/%s", dir ? dir : "tests/fixtures", name);
    return b;
}

#endif
