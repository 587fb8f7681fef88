/* sdworker-fcgi: the prefork FastCGI pool behind nginx (src/service/pool.h). */
#include "pool/auth.h"
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
            "       sdworker-fcgi --hash-key < KEYFILE\n"
            "  -c, --config FILE     sdworker.conf (default: built-in defaults only)\n"
            "  -o, --set key=value   override one configuration key (repeatable)\n"
            "      --ring-wait S     wait up to S seconds for the engine's job ring (10)\n"
            "      --grace S         on SIGTERM, let requests and streams run S seconds (10)\n"
            "      --print-config    print the effective configuration and exit\n"
            "      --hash-key        read an API key from stdin (one line) and print the\n"
            "                        sha256:<hex> that an api_key.NAME line takes\n"
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

/* The key is read, hashed and forgotten: it is never printed. */
static int hash_key(void)
{
    char key[4096];
    size_t n = fread(key, 1, sizeof key, stdin);
    if (ferror(stdin) || n == sizeof key) {
        fprintf(stderr, "sdworker-fcgi: --hash-key: expected one key, under %zu bytes, on stdin\n", sizeof key);
        return 2;
    }
    if (n && key[n - 1] == '\n')
        n--;
    if (n && key[n - 1] == '\r')
        n--;
    char text[SDW_AUTH_HASH_TEXT_LEN];
    sdw_error e = { 0 };
    int rc = sdw_auth_hash_text(key, n, text, &e);
    memset(key, 0, sizeof key);
    if (rc < 0) {
        fprintf(stderr, "sdworker-fcgi: --hash-key: %s\n", e.msg);
        return 2;
    }
    printf("%s\n", text);
    return 0;
}

int main(int argc, char **argv)
{
    enum { OPT_RING_WAIT = 256, OPT_GRACE, OPT_PRINT, OPT_HASH_KEY };
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "set", required_argument, NULL, 'o' },
        { "ring-wait", required_argument, NULL, OPT_RING_WAIT },
        { "grace", required_argument, NULL, OPT_GRACE },
        { "print-config", no_argument, NULL, OPT_PRINT },
        { "hash-key", no_argument, NULL, OPT_HASH_KEY },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    sdw_log_init("sdworker-fcgi", SDW_LOG_INFO);
    sdw_pool_options o = { .ring_wait_s = 10, .grace_s = 10 };
    const char **overrides = calloc((size_t)argc, sizeof *overrides);
    if (!overrides)
        return 1;
    bool print = false, hash = false;
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
        case OPT_HASH_KEY: hash = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (hash) {
        free(overrides);
        return hash_key();
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
