/* The one logger of every sdworker process: a line on standard error,
 * "program[pid]: level: message", written with a single write(2) so that the
 * lines of concurrent processes and threads never interleave (systemd's
 * journal and `scripts/start-service`'s log files take standard error as
 * it is). The program name and the level are set once at start, by
 * sdw_log_init; a library call never decides where logs go. */
#ifndef SDW_LOG_H
#define SDW_LOG_H

typedef enum sdw_log_level {
    SDW_LOG_ERROR = 0,
    SDW_LOG_WARN,
    SDW_LOG_INFO,
    SDW_LOG_DEBUG,
} sdw_log_level;

#define SDW_LOG_LEVELS 4

/* "error", "warn", "info", "debug"; "?" for anything else. */
const char *sdw_log_level_name(sdw_log_level l);

/* program names the lines (kept by reference: a string literal or argv[0]
 * of the process); lines above level are dropped. Before the first call
 * lines say "sdworker" and the level is info. */
void sdw_log_init(const char *program, sdw_log_level level);
void sdw_log_set_level(sdw_log_level level);
void sdw_log(sdw_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
