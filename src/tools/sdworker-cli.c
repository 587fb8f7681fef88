/* sdworker: the command-line client of the sdworker service, with
 * rbee-keeper's planned syntax (`image generate|transform|inpaint`,
 * `model list`).
 *
 * An image command submits one operation (POST /v1/jobs), follows the job's
 * event stream (reconnecting with Last-Event-ID when the connection drops,
 * so no event is lost or repeated), draws progress on stderr, and writes the
 * final PNG. `model list` prints GET /v1/models as a table. The exit status
 * tells a script what happened; see usage(). */
#ifdef HAVE_CONFIG_H
#include "sdw-build.h"

#include "contract/contract.h"

/* The largest result image the client accepts (a 2048x2048 PNG fits). */
#define MAX_IMAGE_BYTES ((size_t)64 << 20)
#endif

#include <curl/curl.h>
#include <json-c/json.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,
    EXIT_REJECTED = 2,
    EXIT_JOB_FAILED = 3,
    EXIT_CONNECTION = 4,
    EXIT_CANCELLED = 5,
    EXIT_OUTPUT = 6,
};

#define DEFAULT_URL "http://127.0.0.1:8080"
#define MAX_INPUT_FILE (64L << 20)
/* Consecutive reconnects without receiving an event before giving up. */
#define MAX_RECONNECTS 10

static const char *prog = "sdworker";

static void usage(FILE *f)
{
    fprintf(f,
"Usage: %s image generate|transform|inpaint [OPTIONS] --output FILE\n"
"       %s model list [--url URL] [--api-key KEY] [--json]\n"
"\n"
"image submits a job to an sdworker service, follows its progress and\n"
"writes the resulting PNG. The seed used is printed on stdout.\n"
"model list prints the models the service serves, one a line: the name\n"
"(the default one marked), family, prediction type and the defaults a\n"
"request for it gets; '-' while the engine has not loaded it yet.\n"
"\n"
"Options:\n"
"  --url URL               service base URL (default " DEFAULT_URL ")\n"
"  --api-key KEY           API key, sent as Authorization: Bearer KEY (default:\n"
"                          $SDW_API_KEY; the environment keeps it out of ps)\n"
"  --json                  model list: the server's JSON as it sent it\n"
"  -h, --help              this text\n"
"      --version           the version\n"
"\n"
"Image options:\n"
"  --hive ID               hive_id sent with the operation (default localhost)\n"
"  --model NAME            model name (required; see model list)\n"
"  --prompt TEXT           the prompt (required)\n"
"  --negative-prompt TEXT  what to steer away from\n"
"  --steps N               denoising steps, 1-150 (server default 20)\n"
"  --guidance X            classifier-free guidance scale, 0-30 (server\n"
"                          default 7.5)\n"
"  --width N, --height N   image size, generate only: multiples of 8 in\n"
"                          64-2048 (server default 512x512)\n"
"  --seed N                seed, 0 to 18446744073709551615 (default: random,\n"
"                          chosen by the server)\n"
"  --sampler NAME          %s\n"
"  --lora NAME[:WEIGHT]    apply a LoRA the server has configured (weight\n"
"                          -4 to 4, default 1); repeat for several\n"
"  --input FILE            init image, PNG or JPEG (transform, inpaint)\n"
"  --mask FILE             mask image, white = repaint (inpaint)\n"
"  --strength X            how far to move from the init image, over 0 and at\n"
"                          most 1, with steps * strength >= 1 (transform,\n"
"                          inpaint; server default 0.8, 1 for inpaint)\n"
"  -o, --output FILE       where to write the PNG (required)\n"
"  -q, --quiet             no progress or informational output\n"
"\n"
"Value ranges are checked by the server, which answers with a message.\n"
"Ctrl-C cancels the job on the server (DELETE /v1/jobs/{id}).\n"
"\n"
"Exit status:\n"
"  0  the image was written (model list: the list was printed)\n"
"  1  usage error (bad option, missing argument, unreadable input file)\n"
"  2  the server rejected the request (its error message is printed) or\n"
"     answered with something other than the JSON expected\n"
"  3  the job failed (an error event, or the job was lost)\n"
"  4  connection failure (the service could not be reached)\n"
"  5  the job was cancelled\n"
"  6  the output file could not be written\n",
            prog, prog, sdw_sampler_names);
}

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- options ---- */

enum command { CMD_IMAGE, CMD_MODEL_LIST };

struct opts {
    enum command command;
    const char *noun, *verb; /* as typed, for messages: "image", "generate" */
    const char *operation;   /* image_generation, image_transform, image_inpaint */
    const char *url, *api_key, *hive, *model, *prompt, *negative, *sampler;
    const char *input, *mask, *output;
    long steps, width, height;
    double guidance, strength;
    uint64_t seed;
    bool has_steps, has_width, has_height, has_guidance, has_strength, has_seed;
    bool quiet, json;
    int nloras;
    const char *lora_names[8];
    double lora_weights[8];
};

static int parse_long(const char *opt, const char *v, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) {
        msg("%s: '%s' is not an integer", opt, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_double(const char *opt, const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || x != x) {
        msg("%s: '%s' is not a number", opt, v);
        return -1;
    }
    *out = x;
    return 0;
}

enum { OPT_HIVE = 256, OPT_MODEL, OPT_PROMPT, OPT_NEG, OPT_STEPS, OPT_GUIDANCE, OPT_WIDTH,
       OPT_HEIGHT, OPT_SEED, OPT_SAMPLER, OPT_INPUT, OPT_STRENGTH, OPT_MASK, OPT_URL, OPT_API_KEY,
       OPT_VERSION, OPT_JSON, OPT_LORA };

static bool is_help(const char *arg)
{
    return !strcmp(arg, "--help") || !strcmp(arg, "-h");
}

/* "image generate|transform|inpaint" or "model list" (or --help,
 * --version) into o. -1 to go on, else the exit status. */
static int parse_command(int argc, char **argv, struct opts *o)
{
    static const struct {
        const char *verb, *operation;
    } image_verbs[] = {
        { "generate", "image_generation" },
        { "transform", "image_transform" },
        { "inpaint", "image_inpaint" },
    };

    memset(o, 0, sizeof *o);
    o->url = DEFAULT_URL;
    o->api_key = getenv("SDW_API_KEY");
    o->hive = "localhost";
    const char *noun = o->noun = argc >= 2 ? argv[1] : NULL;
    const char *verb = o->verb = argc >= 3 ? argv[2] : NULL;

    if (noun && is_help(noun)) {
        usage(stdout);
        return EXIT_OK;
    }
    if (noun && !strcmp(noun, "--version")) {
        printf("sdworker " PACKAGE_VERSION "\n");
        return EXIT_OK;
    }
    if (!noun || (strcmp(noun, "image") && strcmp(noun, "model"))) {
        if (noun)
            msg("unknown command '%s' (image or model)", noun);
        else
            msg("missing command");
        fprintf(stderr, "Try '%s --help'.\n", prog);
        return EXIT_USAGE;
    }
    if (verb && is_help(verb)) {
        usage(stdout);
        return EXIT_OK;
    }
    if (!strcmp(noun, "model")) {
        if (verb && !strcmp(verb, "list")) {
            o->command = CMD_MODEL_LIST;
            return -1;
        }
        if (verb)
            msg("unknown model command '%s' (list)", verb);
        else
            msg("model: missing command (list)");
        return EXIT_USAGE;
    }
    for (size_t i = 0; verb && i < sizeof image_verbs / sizeof image_verbs[0]; i++)
        if (!strcmp(verb, image_verbs[i].verb)) {
            o->command = CMD_IMAGE;
            o->operation = image_verbs[i].operation;
            return -1;
        }
    if (verb)
        msg("unknown image command '%s' (generate, transform or inpaint)", verb);
    else
        msg("image: missing command (generate, transform or inpaint)");
    return EXIT_USAGE;
}

/* The options after "NOUN VERB"; -1 to go on, else the exit status. */
static int parse_options(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        { "hive", required_argument, NULL, OPT_HIVE },
        { "model", required_argument, NULL, OPT_MODEL },
        { "prompt", required_argument, NULL, OPT_PROMPT },
        { "negative-prompt", required_argument, NULL, OPT_NEG },
        { "steps", required_argument, NULL, OPT_STEPS },
        { "guidance", required_argument, NULL, OPT_GUIDANCE },
        { "width", required_argument, NULL, OPT_WIDTH },
        { "height", required_argument, NULL, OPT_HEIGHT },
        { "seed", required_argument, NULL, OPT_SEED },
        { "sampler", required_argument, NULL, OPT_SAMPLER },
        { "input", required_argument, NULL, OPT_INPUT },
        { "strength", required_argument, NULL, OPT_STRENGTH },
        { "mask", required_argument, NULL, OPT_MASK },
        { "output", required_argument, NULL, 'o' },
        { "url", required_argument, NULL, OPT_URL },
        { "api-key", required_argument, NULL, OPT_API_KEY },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, OPT_VERSION },
        { "json", no_argument, NULL, OPT_JSON },
        { "lora", required_argument, NULL, OPT_LORA },
        { NULL, 0, NULL, 0 },
    };
    /* getopt_long sees "sdworker --opt ..." */
    int gargc = argc - 2;
    char **gargv = argv + 2;
    optind = 1;
    opterr = 0;
    for (;;) {
        int li = -1;
        int c = getopt_long(gargc, gargv, ":o:qh", longopts, &li);
        if (c == -1)
            break;
        const char *name = gargv[optind - 1];
        /* One table serves both commands, so that an option of the other
         * one is named as such rather than called unknown. Its name comes
         * from the table: argv holds its value when that was separate. */
        bool shared = c == OPT_URL || c == OPT_API_KEY || c == 'h' || c == OPT_VERSION || c == ':' || c == '?';
        if (!shared && (c == OPT_JSON) != (o->command == CMD_MODEL_LIST)) {
            char opt[64];
            if (li >= 0)
                snprintf(opt, sizeof opt, "--%s", longopts[li].name);
            else
                snprintf(opt, sizeof opt, "-%c", c);
            msg("%s %s: %s does not apply", o->noun, o->verb, opt);
            return EXIT_USAGE;
        }
        switch (c) {
        case OPT_HIVE: o->hive = optarg; break;
        case OPT_MODEL: o->model = optarg; break;
        case OPT_PROMPT: o->prompt = optarg; break;
        case OPT_NEG: o->negative = optarg; break;
        case OPT_SAMPLER: o->sampler = optarg; break;
        case OPT_LORA: {
            if (o->nloras == (int)(sizeof o->lora_names / sizeof o->lora_names[0])) {
                msg("--lora: at most %d", o->nloras);
                return EXIT_USAGE;
            }
            /* NAME:WEIGHT; names hold no ':' (the server allows [A-Za-z0-9._-]). */
            char *colon = strrchr(optarg, ':');
            double w = 1.0;
            if (colon) {
                *colon = 0;
                if (parse_double("--lora", colon + 1, &w))
                    return EXIT_USAGE;
            }
            if (!*optarg) {
                msg("--lora: expected NAME or NAME:WEIGHT");
                return EXIT_USAGE;
            }
            o->lora_names[o->nloras] = optarg;
            o->lora_weights[o->nloras++] = w;
            break;
        }
        case OPT_INPUT: o->input = optarg; break;
        case OPT_MASK: o->mask = optarg; break;
        case OPT_URL: o->url = optarg; break;
        case OPT_API_KEY: o->api_key = optarg; break;
        case 'o': o->output = optarg; break;
        case 'q': o->quiet = true; break;
        case OPT_JSON: o->json = true; break;
        case 'h': usage(stdout); return EXIT_OK;
        case OPT_VERSION: printf("sdworker " PACKAGE_VERSION "\n"); return EXIT_OK;
        case OPT_STEPS:
            if (parse_long("--steps", optarg, &o->steps)) return EXIT_USAGE;
            o->has_steps = true;
            break;
        case OPT_WIDTH:
            if (parse_long("--width", optarg, &o->width)) return EXIT_USAGE;
            o->has_width = true;
            break;
        case OPT_HEIGHT:
            if (parse_long("--height", optarg, &o->height)) return EXIT_USAGE;
            o->has_height = true;
            break;
        case OPT_GUIDANCE:
            if (parse_double("--guidance", optarg, &o->guidance)) return EXIT_USAGE;
            o->has_guidance = true;
            break;
        case OPT_STRENGTH:
            if (parse_double("--strength", optarg, &o->strength)) return EXIT_USAGE;
            o->has_strength = true;
            break;
        case OPT_SEED: {
            char *end;
            errno = 0;
            o->seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-') {
                msg("--seed: '%s' is not an integer 0-%" PRIu64, optarg, UINT64_MAX);
                return EXIT_USAGE;
            }
            o->has_seed = true;
            break;
        }
        case ':':
            msg("%s needs a value", name);
            return EXIT_USAGE;
        default:
            msg("unknown option '%s'", name);
            fprintf(stderr, "Try '%s --help'.\n", prog);
            return EXIT_USAGE;
        }
    }
    if (optind < gargc) {
        msg("unexpected argument '%s'", gargv[optind]);
        return EXIT_USAGE;
    }
    return -1;
}

/* The image options that go together or not at all. */
static int check_image_options(const struct opts *o)
{
    const char *sub = o->verb;
    bool gen = !strcmp(o->operation, "image_generation");
    bool inpaint = !strcmp(o->operation, "image_inpaint");
    const char *missing = !o->model ? "--model" : !o->prompt ? "--prompt" : !o->output ? "--output"
                        : !gen && !o->input ? "--input" : inpaint && !o->mask ? "--mask" : NULL;
    if (missing) {
        msg("image %s: %s is required", sub, missing);
        return EXIT_USAGE;
    }
    if (!gen && (o->has_width || o->has_height)) {
        msg("image %s: the size comes from --input; --width/--height apply to generate only", sub);
        return EXIT_USAGE;
    }
    if (gen && (o->input || o->mask || o->has_strength)) {
        msg("image generate: --input, --mask and --strength apply to transform and inpaint");
        return EXIT_USAGE;
    }
    if (!inpaint && o->mask) {
        msg("image %s: --mask applies to inpaint only", sub);
        return EXIT_USAGE;
    }
    return -1;
}

/* --url and the API key's form, which every command uses. */
static int check_connection(struct opts *o)
{
    if (strncmp(o->url, "http://", 7) && strncmp(o->url, "https://", 8)) {
        msg("--url: '%s' must start with http:// or https://", o->url);
        return EXIT_USAGE;
    }
    if (o->api_key && !*o->api_key)
        o->api_key = NULL;
    /* The key goes into a header line: nothing may break out of it. The
     * message does not repeat the key. */
    for (const char *p = o->api_key; p && *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            msg("the API key (--api-key or SDW_API_KEY) contains a space or control character");
            return EXIT_USAGE;
        }
    return -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    int rc = parse_command(argc, argv, o);
    if (rc < 0)
        rc = parse_options(argc, argv, o);
    if (rc < 0 && o->command == CMD_IMAGE)
        rc = check_image_options(o);
    if (rc < 0)
        rc = check_connection(o);
    return rc;
}

/* ---- request ---- */

/* Reads a PNG or JPEG file and returns it base64-encoded, or NULL. */
static char *read_image_b64(const char *opt, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        msg("%s %s: %s", opt, path, strerror(errno));
        return NULL;
    }
    unsigned char *buf = malloc(MAX_INPUT_FILE + 1);
    size_t n = buf ? fread(buf, 1, MAX_INPUT_FILE + 1, f) : 0;
    bool err = ferror(f);
    fclose(f);
    char *out = NULL;
    static const unsigned char png[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    if (!buf || err)
        msg("%s %s: read error", opt, path);
    else if (n > MAX_INPUT_FILE)
        msg("%s %s: larger than %ld bytes", opt, path, MAX_INPUT_FILE);
    else if (!(n >= 8 && !memcmp(buf, png, 8)) && !(n >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff))
        msg("%s %s: not a PNG or JPEG file", opt, path);
    else if (!(out = sdw_base64_encode(buf, n)))
        msg("out of memory");
    free(buf);
    return out;
}

static void add_str(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v));
}

/* The operation JSON in rbee's flat shape; NULL with a message on failure. */
static char *build_request(const struct opts *o)
{
    json_object *r = json_object_new_object();
    add_str(r, "operation", o->operation);
    add_str(r, "hive_id", o->hive);
    add_str(r, "model", o->model);
    add_str(r, "prompt", o->prompt);
    if (o->negative)
        add_str(r, "negative_prompt", o->negative);
    if (o->has_steps)
        json_object_object_add(r, "steps", json_object_new_int64(o->steps));
    if (o->has_guidance)
        json_object_object_add(r, "guidance_scale", json_object_new_double(o->guidance));
    if (o->has_width)
        json_object_object_add(r, "width", json_object_new_int64(o->width));
    if (o->has_height)
        json_object_object_add(r, "height", json_object_new_int64(o->height));
    if (o->has_seed)
        json_object_object_add(r, "seed", o->seed <= INT64_MAX ? json_object_new_int64((int64_t)o->seed)
                                                               : json_object_new_uint64(o->seed));
    if (o->sampler)
        add_str(r, "sampler", o->sampler);
    if (o->has_strength)
        json_object_object_add(r, "strength", json_object_new_double(o->strength));
    if (o->nloras) {
        json_object *a = json_object_new_array();
        for (int i = 0; i < o->nloras; i++) {
            json_object *l = json_object_new_object();
            add_str(l, "name", o->lora_names[i]);
            json_object_object_add(l, "weight", json_object_new_double(o->lora_weights[i]));
            json_object_array_add(a, l);
        }
        json_object_object_add(r, "loras", a);
    }
    char *result = NULL;
    if (o->input) {
        char *b = read_image_b64("--input", o->input);
        if (!b)
            goto out;
        json_object_object_add(r, "init_image", json_object_new_string(b));
        free(b);
    }
    if (o->mask) {
        char *b = read_image_b64("--mask", o->mask);
        if (!b)
            goto out;
        json_object_object_add(r, "mask_image", json_object_new_string(b));
        free(b);
    }
    result = strdup(json_object_to_json_string_ext(r, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
out:
    json_object_put(r);
    return result;
}

/* ---- HTTP ---- */

struct buf {
    char *p;
    size_t n, cap;
};

static size_t buf_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t n = size * nmemb;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
    return n;
}

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int xfer_check(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)ud, (void)a, (void)b, (void)c, (void)d;
    return interrupted;
}

/* Set once from the options; every request carries it. */
static const char *api_key;

static CURL *easy(const char *url, char *errbuf)
{
    CURL *h = curl_easy_init();
    if (!h)
        return NULL;
    if (api_key) {
        /* libcurl sends it on the first request, and not to another host
         * a redirect may lead to. */
        curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
        curl_easy_setopt(h, CURLOPT_XOAUTH2_BEARER, api_key);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "sdworker/" PACKAGE_VERSION);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, xfer_check);
    errbuf[0] = '\0';
    return h;
}

static const char *curl_msg(CURLcode rc, const char *errbuf)
{
    return errbuf[0] ? errbuf : curl_easy_strerror(rc);
}

/* Prints the server's {"error":{"code","message"}} (or the raw body). */
static void print_server_error(long status, const struct buf *body, const char *retry_after)
{
    json_object *j = body->p ? json_tokener_parse(body->p) : NULL;
    json_object *err = NULL, *m = NULL, *code = NULL;
    if (j && json_object_object_get_ex(j, "error", &err) && json_object_is_type(err, json_type_object)) {
        json_object_object_get_ex(err, "message", &m);
        json_object_object_get_ex(err, "code", &code);
    }
    if (m)
        msg("server rejected the request (HTTP %ld%s%s): %s", status, code ? ", " : "",
            code ? json_object_get_string(code) : "", json_object_get_string(m));
    else
        msg("server rejected the request (HTTP %ld): %.200s", status, body->p ? body->p : "");
    if (retry_after)
        msg("the server asks to retry after %s seconds", retry_after);
    json_object_put(j);
}

struct hdrs {
    char retry_after[32];
};

static size_t header_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    struct hdrs *h = ud;
    size_t n = size * nmemb;
    if (n > 12 && !strncasecmp(data, "Retry-After:", 12)) {
        size_t i = 12, j = 0;
        while (i < n && data[i] == ' ')
            i++;
        while (i < n && j + 1 < sizeof h->retry_after && data[i] != '\r' && data[i] != '\n')
            h->retry_after[j++] = data[i++];
        h->retry_after[j] = '\0';
    }
    return n;
}

/* The length of --url without its trailing slashes, which the paths
 * appended to it bring themselves. */
static int base_len(const char *url)
{
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    return (int)n;
}

/* One request that expects a JSON answer: a GET, or a POST of body. The
 * answer's body goes to resp. EXIT_OK on a 2xx; otherwise prints why
 * ("cannot <what> URL", or the server's error) and returns the exit
 * status. */
static int request(const char *what, const char *url, const char *body, long timeout_s, struct buf *resp)
{
    char errbuf[CURL_ERROR_SIZE];
    CURL *h = easy(url, errbuf);
    if (!h)
        return EXIT_CONNECTION;
    struct hdrs hd = { { 0 } };
    struct curl_slist *headers = curl_slist_append(NULL, "Accept: application/json");
    if (body) {
        headers = curl_slist_append(headers, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &hd);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    int ret = EXIT_OK;
    if (interrupted) {
        msg("interrupted before the server answered");
        ret = EXIT_CANCELLED;
    } else if (rc != CURLE_OK) {
        msg("cannot %s %s: %s", what, url, curl_msg(rc, errbuf));
        ret = EXIT_CONNECTION;
    } else if (status < 200 || status > 299) {
        print_server_error(status, resp, hd.retry_after[0] ? hd.retry_after : NULL);
        ret = EXIT_REJECTED;
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    return ret;
}

/* A 2xx answer without what it should hold: a proxy's page, another
 * service on the port. */
static int unexpected(const char *method, const char *url, const struct buf *resp)
{
    msg("unexpected response to %s %s: %.200s", method, url, resp->p ? resp->p : "");
    return EXIT_REJECTED;
}

/* POSTs the job; on success fills job_id and the absolute stream URL. */
static int submit(const struct opts *o, const char *body, char **job_id, char **stream_url)
{
    char url[4096];
    int ul = base_len(o->url);
    snprintf(url, sizeof url, "%.*s/v1/jobs", ul, o->url);
    struct buf resp = { 0 };
    int ret = request("submit to", url, body, 300L, &resp);
    if (ret != EXIT_OK)
        goto out;
    json_object *j = json_tokener_parse(resp.p ? resp.p : "");
    json_object *id = NULL, *sse = NULL;
    if (!j || !json_object_object_get_ex(j, "job_id", &id) || !json_object_is_type(id, json_type_string)) {
        ret = unexpected("POST", url, &resp);
    } else {
        *job_id = strdup(json_object_get_string(id));
        char su[4096];
        const char *s = json_object_object_get_ex(j, "sse_url", &sse) ? json_object_get_string(sse) : NULL;
        /* An absolute path is taken relative to --url, so that a
         * service behind a path prefix still works. */
        if (s && (!strncmp(s, "http://", 7) || !strncmp(s, "https://", 8)))
            snprintf(su, sizeof su, "%s", s);
        else if (s && s[0] == '/')
            snprintf(su, sizeof su, "%.*s%s", ul, o->url, s);
        else
            snprintf(su, sizeof su, "%.*s/v1/jobs/%s/stream", ul, o->url, *job_id);
        *stream_url = strdup(su);
    }
    json_object_put(j);
out:
    free(resp.p);
    return ret;
}

static void cancel_job(const struct opts *o, const char *job_id)
{
    char url[4096], errbuf[CURL_ERROR_SIZE];
    snprintf(url, sizeof url, "%.*s/v1/jobs/%s", base_len(o->url), o->url, job_id);
    interrupted = 0;
    CURL *h = easy(url, errbuf);
    if (!h)
        return;
    struct buf resp = { 0 };
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK)
        msg("could not cancel %s: %s", job_id, curl_msg(rc, errbuf));
    else if (status != 200)
        msg("cancelling %s: HTTP %ld", job_id, status);
    curl_easy_cleanup(h);
    free(resp.p);
}

/* ---- the event stream ---- */

enum outcome { RUNNING = 0, COMPLETED, FAILED, CANCELLED };

struct stream {
    const struct opts *o;
    CURL *h;
    struct buf errbody;     /* the body of a non-200 answer to the GET */
    /* SSE parser state (the WHATWG event-stream rules, on bytes). */
    char *line;
    size_t line_n, line_cap;
    bool after_cr;
    char event[64];
    struct buf data;
    char id_buf[256];       /* the id field seen so far ... */
    char last_id[256];      /* ... becomes the last event id at dispatch */
    long retry_ms;
    unsigned events;        /* dispatched on this connection */
    /* The job. */
    enum outcome outcome;
    char error[512];
    unsigned char *image;
    size_t image_len;
    uint64_t seed;
    bool has_seed;
    int width, height;
    char *timings;
    bool tty, bar_drawn;
};

static void draw_progress(struct stream *s, long step, long total, double pct, bool preview)
{
    if (s->o->quiet)
        return;
    if (!s->tty) {
        fprintf(stderr, "%s: step %ld/%ld (%.0f%%)\n", preview ? "preview" : "progress", step, total, pct);
        return;
    }
    enum { W = 30 };
    int fill = pct <= 0 ? 0 : pct >= 100 ? W : (int)(pct * W / 100);
    char bar[W + 1];
    memset(bar, '#', (size_t)fill);
    memset(bar + fill, '.', (size_t)(W - fill));
    bar[W] = '\0';
    fprintf(stderr, "\r[%s] %3.0f%%  step %ld/%ld", bar, pct, step, total);
    s->bar_drawn = true;
}

static void end_bar(struct stream *s)
{
    if (s->bar_drawn) {
        fputc('\n', stderr);
        s->bar_drawn = false;
    }
}

static void set_failed(struct stream *s, enum outcome oc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_failed(struct stream *s, enum outcome oc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    s->outcome = oc;
}

static double num(json_object *j, const char *k, double dflt)
{
    json_object *v;
    return json_object_object_get_ex(j, k, &v) ? json_object_get_double(v) : dflt;
}

/* A seed as the server sends it: a JSON integer, which json-c holds as
 * int64 or, above INT64_MAX, as uint64 (get_int64 would clip those), or a
 * decimal string. */
static bool event_seed(json_object *v, uint64_t *seed)
{
    if (json_object_is_type(v, json_type_int)) {
        if (json_object_get_int64(v) < 0)
            return false;
        *seed = json_object_get_uint64(v);
        return true;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *t = json_object_get_string(v);
        size_t n = strlen(t);
        char *end;
        errno = 0;
        unsigned long long x = strtoull(t, &end, 10);
        if (n == 0 || n > 20 || strspn(t, "0123456789") != n || errno)
            return false;
        *seed = x;
        return true;
    }
    return false;
}

static void on_event(struct stream *s, const char *type, const char *data)
{
    s->events++;
    /* rbee's job-client end markers, for servers that send them. */
    if (!strcmp(data, "[DONE]")) {
        if (s->outcome == RUNNING)
            set_failed(s, FAILED, "the stream ended without an image");
        return;
    }
    if (!strncmp(data, "[ERROR]", 7)) {
        set_failed(s, FAILED, "%s", data[7] == ' ' ? data + 8 : data + 7);
        return;
    }
    if (!strcmp(data, "[CANCELLED]")) {
        set_failed(s, CANCELLED, "the job was cancelled");
        return;
    }
    json_object *j = json_tokener_parse(data);
    if (!j || !json_object_is_type(j, json_type_object)) {
        json_object_put(j);
        set_failed(s, FAILED, "malformed %s event from the server", type);
        return;
    }
    if (!strcmp(type, "progress") || !strcmp(type, "preview")) {
        long step = (long)num(j, "step", 0), total = (long)num(j, "total", 0);
        double pct = num(j, "percent", total > 0 ? 100.0 * (double)step / (double)total : 0);
        draw_progress(s, step, total, pct, type[1] == 'r' && type[2] == 'e');
    } else if (!strcmp(type, "complete")) {
        json_object *img, *v;
        if (!json_object_object_get_ex(j, "image", &img) || !json_object_is_type(img, json_type_string) ||
            sdw_base64_decode(json_object_get_string(img), (size_t)json_object_get_string_len(img), MAX_IMAGE_BYTES,
                              &s->image, &s->image_len) ||
            !s->image_len) {
            set_failed(s, FAILED, "the complete event carries no valid base64 image");
        } else {
            s->outcome = COMPLETED;
            if (json_object_object_get_ex(j, "seed", &v)) {
                s->has_seed = event_seed(v, &s->seed);
                if (!s->has_seed && !s->o->quiet)
                    msg("the complete event's seed is not an integer 0-%" PRIu64, UINT64_MAX);
            }
            s->width = (int)num(j, "width", 0);
            s->height = (int)num(j, "height", 0);
            if (json_object_object_get_ex(j, "timings", &v))
                s->timings = strdup(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
        }
    } else if (!strcmp(type, "error")) {
        json_object *m, *code;
        const char *text = json_object_object_get_ex(j, "message", &m) ? json_object_get_string(m) : "unknown error";
        const char *c = json_object_object_get_ex(j, "code", &code) ? json_object_get_string(code) : "";
        set_failed(s, strcmp(c, "cancelled") ? FAILED : CANCELLED, "%s", text);
    }
    json_object_put(j);
}

static void sse_line(struct stream *s, char *line, size_t n)
{
    if (n == 0) {
        /* An event cut off by a dropped connection never reaches this
         * point, so its id is not claimed on reconnect. */
        memcpy(s->last_id, s->id_buf, sizeof s->last_id);
        if (s->data.n) {
            if (s->data.p[s->data.n - 1] == '\n')
                s->data.p[--s->data.n] = '\0';
            on_event(s, s->event[0] ? s->event : "message", s->data.p);
        }
        s->data.n = 0;
        s->event[0] = '\0';
        return;
    }
    if (line[0] == ':')
        return;   /* comment: the server's keep-alive */
    char *colon = memchr(line, ':', n);
    char *val = colon ? colon + 1 : line + n;
    if (colon) {
        *colon = '\0';
        if (*val == ' ')
            val++;
    }
    if (!strcmp(line, "event")) {
        snprintf(s->event, sizeof s->event, "%s", val);
    } else if (!strcmp(line, "data")) {
        buf_write(val, 1, strlen(val), &s->data);
        buf_write("\n", 1, 1, &s->data);
    } else if (!strcmp(line, "id")) {
        snprintf(s->id_buf, sizeof s->id_buf, "%s", val);
    } else if (!strcmp(line, "retry")) {
        char *end;
        long ms = strtol(val, &end, 10);
        if (*val && !*end && ms >= 0)
            s->retry_ms = ms;
    }
}

static size_t sse_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct stream *s = ud;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200)
        return buf_write(data, size, nmemb, &s->errbody);
    for (size_t i = 0; i < n; i++) {
        char c = data[i];
        if (s->after_cr && c == '\n') {
            s->after_cr = false;
            continue;
        }
        s->after_cr = c == '\r';
        if (c == '\r' || c == '\n') {
            s->line[s->line_n] = '\0';
            sse_line(s, s->line, s->line_n);
            s->line_n = 0;
            if (s->outcome != RUNNING)
                return 0;   /* a final event: stop reading */
            continue;
        }
        if (s->line_n + 2 > s->line_cap) {
            size_t cap = s->line_cap ? s->line_cap * 2 : 4096;
            char *p = realloc(s->line, cap);
            if (!p)
                return 0;
            s->line = p;
            s->line_cap = cap;
        }
        s->line[s->line_n++] = c;
    }
    return n;
}

/* Follows the stream until a final event, reconnecting with Last-Event-ID
 * after a drop. Returns the exit status. */
static int follow(struct stream *s, const char *url)
{
    int failures = 0;
    for (;;) {
        char errbuf[CURL_ERROR_SIZE];
        CURL *h = easy(url, errbuf);
        if (!h)
            return EXIT_CONNECTION;
        struct curl_slist *headers = curl_slist_append(NULL, "Accept: text/event-stream");
        headers = curl_slist_append(headers, "Cache-Control: no-cache");
        if (s->last_id[0]) {
            char hdr[300];
            snprintf(hdr, sizeof hdr, "Last-Event-ID: %s", s->last_id);
            headers = curl_slist_append(headers, hdr);
        }
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
        /* A stream silent for four keep-alive intervals is dead. */
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
        s->line_n = 0;
        s->after_cr = false;
        s->data.n = 0;
        s->event[0] = '\0';
        s->events = 0;
        memcpy(s->id_buf, s->last_id, sizeof s->id_buf);
        s->errbody.n = 0;
        s->h = h;
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(headers);
        curl_easy_cleanup(h);
        s->h = NULL;
        if (interrupted)
            return EXIT_CANCELLED;
        if (s->outcome != RUNNING)
            return EXIT_OK;
        /* A client error will not go away by asking again (the job is
         * unknown or expired); 429 and 5xx (an overloaded or restarting
         * service) are retried like a dropped connection. */
        if (status >= 400 && status < 500 && status != 408 && status != 429) {
            json_object *j = s->errbody.p ? json_tokener_parse(s->errbody.p) : NULL;
            json_object *err, *m;
            if (j && json_object_object_get_ex(j, "error", &err) && json_object_object_get_ex(err, "message", &m))
                set_failed(s, FAILED, "HTTP %ld on the event stream: %s", status, json_object_get_string(m));
            else
                set_failed(s, FAILED, "HTTP %ld on the event stream", status);
            json_object_put(j);
            return EXIT_OK;
        }
        if (s->events)
            failures = 0;
        if (++failures > MAX_RECONNECTS) {
            end_bar(s);
            msg("lost the event stream: %s", rc != CURLE_OK ? curl_msg(rc, errbuf) : "closed without a result");
            return EXIT_CONNECTION;
        }
        if (!s->o->quiet && !s->tty)
            fprintf(stderr, "%s: stream interrupted (%s), reconnecting\n", prog,
                    rc != CURLE_OK ? curl_msg(rc, errbuf) : status == 200 ? "closed" : "HTTP error");
        long ms = s->retry_ms;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) && errno == EINTR && !interrupted)
            ;
        if (interrupted)
            return EXIT_CANCELLED;
    }
}

/* Refuses early, before any work is queued, when the output cannot be
 * created: a missing or read-only directory, or a directory named as file. */
static bool output_writable(const char *path)
{
    struct stat st;
    if (!stat(path, &st) && S_ISDIR(st.st_mode)) {
        msg("--output %s: is a directory", path);
        return false;
    }
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        strcpy(dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    if (access(dir, W_OK)) {
        msg("--output %s: %s: %s", path, dir, strerror(errno));
        return false;
    }
    return true;
}

static int write_output(const char *path, const unsigned char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        msg("--output %s: %s", path, strerror(errno));
        return -1;
    }
    size_t w = fwrite(p, 1, n, f);
    int rc = fclose(f);
    if (w != n || rc) {
        msg("--output %s: write failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- model list ---- */

enum { COL_NAME, COL_FAMILY, COL_PREDICTION, COL_SIZE, COL_STEPS, COL_GUIDANCE, COL_SAMPLER, N_COLS };

#define CELL 128
typedef char row[N_COLS][CELL];

/* A member as a cell: a string as is, a number in %g, "-" while it is
 * null (the engine has not loaded the model yet) or absent. */
static void cell(char *dst, json_object *obj, const char *key)
{
    json_object *v = NULL;
    json_object_object_get_ex(obj, key, &v);
    if (json_object_is_type(v, json_type_string))
        snprintf(dst, CELL, "%s", json_object_get_string(v));
    else if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double))
        snprintf(dst, CELL, "%g", json_object_get_double(v));
    else
        snprintf(dst, CELL, "-");
}

/* One entry of "models" as a line; -1 if it is not a named model. */
static int model_row(json_object *m, row r)
{
    json_object *name, *v, *d = NULL;
    if (!json_object_object_get_ex(m, "name", &name) || !json_object_is_type(name, json_type_string))
        return -1;
    bool dflt = json_object_object_get_ex(m, "default", &v) && json_object_get_boolean(v);
    snprintf(r[COL_NAME], CELL, "%s%s", json_object_get_string(name), dflt ? " (default)" : "");
    cell(r[COL_FAMILY], m, "family");
    if (json_object_object_get_ex(m, "inpainting", &v) && json_object_get_boolean(v)) {
        size_t k = strlen(r[COL_FAMILY]);
        snprintf(r[COL_FAMILY] + k, CELL - k, ", inpainting");
    }
    cell(r[COL_PREDICTION], m, "prediction");
    json_object_object_get_ex(m, "defaults", &d);
    char w[CELL], h[CELL];
    cell(w, d, "width");
    cell(h, d, "height");
    snprintf(r[COL_SIZE], CELL, "%.60sx%.60s", w, h);
    if (!strcmp(w, "-") || !strcmp(h, "-"))
        snprintf(r[COL_SIZE], CELL, "-");
    cell(r[COL_STEPS], d, "steps");
    cell(r[COL_GUIDANCE], d, "guidance_scale");
    /* A null sampler is known: the model's own scheduler decides. */
    if (json_object_object_get_ex(d, "sampler", &v) && !v)
        snprintf(r[COL_SAMPLER], CELL, "model's");
    else
        cell(r[COL_SAMPLER], d, "sampler");
    return 0;
}

static void print_row(row r, const int *width)
{
    for (int c = 0; c < N_COLS - 1; c++)
        printf("%-*s  ", width[c], r[c]);
    printf("%s\n", r[N_COLS - 1]);
}

/* The table under a header line; -1, with nothing printed, if an entry is
 * not a model. */
static int print_models(json_object *models)
{
    static const char *const head[N_COLS] = { "NAME", "FAMILY", "PREDICTION", "SIZE", "STEPS", "GUIDANCE",
                                              "SAMPLER" };
    size_t n = json_object_array_length(models);
    int width[N_COLS];
    row r;
    for (int c = 0; c < N_COLS; c++)
        width[c] = (int)strlen(head[c]);
    /* Two passes over the answer, the widths first, rather than a copy of
     * it in memory. */
    for (size_t i = 0; i < n; i++) {
        if (model_row(json_object_array_get_idx(models, i), r))
            return -1;
        for (int c = 0; c < N_COLS; c++)
            if ((int)strlen(r[c]) > width[c])
                width[c] = (int)strlen(r[c]);
    }
    for (int c = 0; c < N_COLS; c++)
        snprintf(r[c], CELL, "%s", head[c]);
    print_row(r, width);
    for (size_t i = 0; i < n; i++) {
        model_row(json_object_array_get_idx(models, i), r);
        print_row(r, width);
    }
    return 0;
}

/* GET /v1/models, printed as a table or (--json) as the server sent it. */
static int list_models(const struct opts *o)
{
    char url[4096];
    snprintf(url, sizeof url, "%.*s/v1/models", base_len(o->url), o->url);
    struct buf resp = { 0 };
    int ret = request("query", url, NULL, 30L, &resp);
    if (ret != EXIT_OK)
        goto out;
    json_object *j = json_tokener_parse(resp.p ? resp.p : ""), *models;
    if (!json_object_object_get_ex(j, "models", &models) || !json_object_is_type(models, json_type_array))
        ret = unexpected("GET", url, &resp);
    else if (o->json)
        /* The server ends its body without a newline; a shell prompt or
         * a line-reading script needs one. */
        printf("%s%s", resp.p, resp.p[resp.n - 1] == '\n' ? "" : "\n");
    else if (print_models(models))
        ret = unexpected("GET", url, &resp);
    json_object_put(j);
out:
    free(resp.p);
    return ret;
}

/* ---- image commands ---- */

static int run_image(const struct opts *o)
{
    if (!output_writable(o->output))
        return EXIT_OUTPUT;
    char *body = build_request(o);
    if (!body)
        return EXIT_USAGE;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = (int)SA_RESETHAND;   /* a second Ctrl-C ends the program at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char *job_id = NULL, *stream_url = NULL;
    int rc = submit(o, body, &job_id, &stream_url);
    free(body);
    if (rc != EXIT_OK)
        goto done;
    if (!o->quiet)
        msg("job %s accepted", job_id);

    struct stream s;
    memset(&s, 0, sizeof s);
    s.o = o;
    s.retry_ms = 1000;
    s.tty = isatty(STDERR_FILENO);
    rc = follow(&s, stream_url);
    end_bar(&s);
    if (rc == EXIT_CANCELLED && interrupted) {
        msg("interrupted: cancelling %s", job_id);
        cancel_job(o, job_id);
    } else if (rc == EXIT_OK) {
        switch (s.outcome) {
        case COMPLETED:
            if (write_output(o->output, s.image, s.image_len)) {
                rc = EXIT_OUTPUT;
                break;
            }
            if (s.has_seed)
                printf("seed: %" PRIu64 "\n", s.seed);
            if (!o->quiet) {
                if (s.width > 0)
                    msg("wrote %s (%dx%d)", o->output, s.width, s.height);
                else
                    msg("wrote %s", o->output);
                if (s.timings)
                    msg("timings: %s", s.timings);
            }
            break;
        case CANCELLED:
            msg("job %s was cancelled: %s", job_id, s.error);
            rc = EXIT_CANCELLED;
            break;
        default:
            msg("job %s failed: %s", job_id, s.error);
            rc = EXIT_JOB_FAILED;
            break;
        }
    }
    free(s.line);
    free(s.data.p);
    free(s.errbody.p);
    free(s.image);
    free(s.timings);
done:
    free(job_id);
    free(stream_url);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    api_key = o.api_key;
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        msg("libcurl initialisation failed");
        return EXIT_CONNECTION;
    }
    rc = o.command == CMD_MODEL_LIST ? list_models(&o) : run_image(&o);
    curl_global_cleanup();
    return rc;
}
