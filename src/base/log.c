#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static const char *log_program = "sdworker";
static sdw_log_level log_level = SDW_LOG_INFO;

static const char *const level_names[SDW_LOG_LEVELS] = {"error", "warn", "info", "debug"};

const char *sdw_log_level_name(sdw_log_level l)
{
    return (unsigned)l < SDW_LOG_LEVELS ? level_names[l] : "?";
}

void sdw_log_init(const char *program, sdw_log_level level)
{
    log_program = program;
    log_level = level;
}

void sdw_log_set_level(sdw_log_level level)
{
    log_level = level;
}

void sdw_log(sdw_log_level level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    char out[1200];
    int n = snprintf(out, sizeof out, "%s[%d]: %s: %s\n", log_program, (int)getpid(), sdw_log_level_name(level),
                     line);
    if (n > (int)sizeof out - 1) {
        n = sizeof out - 1;
        out[n - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, out, (size_t)n);
    (void)w;
}
