/* sdworker-fcgi: the prefork FastCGI pool behind nginx (src/service/pool.h). */
#include "pool/pool.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sdworker-fcgi [-c FILE] [-o key=value]... [--ring-wait SECONDS]\n"
            "                     [--grace SECONDS] [--print-config]\n"
            "  -c, --config FILE     sdworker.conf (default: built-in defaults only)\n"
            "  -o, --set key=value   override one configuration key (repeatable)\n"
            "      --ring-wait S     wait up to S seconds for the engine's job ring (10)\n"
            "      --grace S         on SIGTERM, let requests and streams run S seconds (10)\n"
            "      --print-config    print the effective configuration and exit\n"
            "Signals: SIGHUP reloads the configuration, SIGTERM/SIGINT stop.\n");
}

static int parse_seconds(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || v < 0 || v > 86400)
        return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    enum { OPT_RING_WAIT = 256, OPT_GRACE, OPT_PRINT };
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "set", required_argument, NULL, 'o' },
        { "ring-wait", required_argument, NULL, OPT_RING_WAIT },
        { "grace", required_argument, NULL, OPT_GRACE },
        { "print-config", no_argument, NULL, OPT_PRINT },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    sdw_log_init("sdworker-fcgi", SDW_LOG_INFO);
    sdw_pool_options o = { .ring_wait_s = 10, .grace_s = 10 };
    const char **overrides = calloc((size_t)argc, sizeof *overrides);
    if (!overrides)
        return 1;
    bool print = false;
    int c;
    while ((c = getopt_long(argc, argv, "c:o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': o.config_path = optarg; break;
        case 'o': overrides[o.n_overrides++] = optarg; break;
        case OPT_RING_WAIT:
        case OPT_GRACE:
            if (parse_seconds(optarg, c == OPT_GRACE ? &o.grace_s : &o.ring_wait_s) < 0) {
                fprintf(stderr, "sdworker-fcgi: bad number of seconds: %s\n", optarg);
                return 2;
            }
            break;
        case OPT_PRINT: print = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    o.overrides = overrides;
    sdw_error e = { 0 };
    int rc;
    if (print) {
        sdw_config cfg;
        rc = sdw_pool_load_config(&o, &cfg, &e);
        if (rc == 0)
            rc = sdw_config_dump(&cfg, stdout);
    } else {
        rc = sdw_pool_run(&o, &e);
    }
    free(overrides);
    if (rc < 0) {
        fprintf(stderr, "sdworker-fcgi: %s\n", e.msg[0] ? e.msg : sdw_status_name(rc));
        return 1;
    }
    return 0;
}
