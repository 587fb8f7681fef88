/* The `sdworker` client: usage errors and their exit status, and whole runs
 * against a forked HTTP server on 127.0.0.1 serving canned answers (202 and
 * an event stream, rejections, error events, a dropped stream that must be
 * resumed with Last-Event-ID, GET /v1/models). Runs ./sdworker from the
 * build directory. */
#define _GNU_SOURCE
#include "tap.h"

#include <json-c/json.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *cli = "./sdworker";
static char tmpdir[64];

/* The base64 of an 8-byte PNG signature plus "IMG": enough to check that the
 * client decodes and writes the complete event's image byte for byte. */
static const unsigned char image_bytes[] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 'I', 'M', 'G' };
#define IMAGE_B64 "iVBORw0KGgpJTUc="

enum scenario { OK_RUN, REJECT, JOB_ERROR, CANCELLED_EVT, DROP_ONCE, GONE, KEYED, MODELS_HTML, MODELS_NAMELESS };

/* GET /v1/models: a loaded model, an inpainting one with its own sampler,
 * and one the engine has not loaded yet (nulls). */
#define MODELS_JSON                                                                                              \
    "{\"models\":[{\"name\":\"tiny\",\"default\":true,\"family\":\"sd1\",\"prediction\":\"epsilon\","         \
    "\"inpainting\":false,\"defaults\":{\"steps\":20,\"guidance_scale\":7.5,\"width\":512,\"height\":512,"      \
    "\"sampler\":null}},"                                                                                     \
    "{\"name\":\"sd2-inpaint\",\"default\":false,\"family\":\"sd2\",\"prediction\":\"v_prediction\","          \
    "\"inpainting\":true,\"defaults\":{\"steps\":3,\"guidance_scale\":0.0,\"width\":768,\"height\":640,"        \
    "\"sampler\":\"dpmpp_2m\"}},"                                                                             \
    "{\"name\":\"later\",\"default\":false,\"family\":null,\"prediction\":null,\"inpainting\":null,"            \
    "\"defaults\":{\"steps\":20,\"guidance_scale\":7.5,\"width\":512,\"height\":512,\"sampler\":null}}]}"

/* KEYED: the server answers 401 unless a request carries this key. */
#define GOOD_KEY "right-key-0123456789abcdef"

/* The seed member of the canned complete event, as JSON text. */
static const char *complete_seed = "1234567";

/* ---- the canned server (a child process) ---- */

static void send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* Reads one request: headers, then Content-Length bytes of body. */
static int read_request(int fd, char *buf, size_t cap, char **body)
{
    size_t n = 0;
    char *end = NULL;
    while (!end) {
        if (n + 1 >= cap)
            return -1;
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            return -1;
        n += (size_t)r;
        buf[n] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    *body = end + 4;
    const char *cl = strcasestr(buf, "Content-Length:");
    size_t want = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    while ((size_t)(buf + n - *body) < want) {
        if (n + 1 >= cap)
            return -1;
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            return -1;
        n += (size_t)r;
        buf[n] = '\0';
    }
    return 0;
}

static void log_append(const char *path, const char *what, const char *text)
{
    FILE *f = fopen(path, "a");
    if (f) {
        fprintf(f, "%s\n%s\n", what, text);
        fclose(f);
    }
}

static void serve(int ls, enum scenario sc, const char *log)
{
    static char buf[1 << 22];
    int stream_gets = 0;
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        char *body;
        if (read_request(fd, buf, sizeof buf, &body) == 0) {
            const char *auth = strcasestr(buf, "\r\nAuthorization:");
            char value[256] = "none";
            if (auth && auth < body)
                sscanf(auth + 16, " %255[^\r\n]", value);
            char what[32];
            snprintf(what, sizeof what, "AUTH(%.*s)", (int)strcspn(buf, " "), buf);
            log_append(log, what, value);
            if (sc == KEYED && strcmp(value, "Bearer " GOOD_KEY)) {
                send_all(fd, "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                             "WWW-Authenticate: Bearer realm=\"sdworker\"\r\nConnection: close\r\n\r\n"
                             "{\"error\":{\"code\":\"unauthorized\",\"message\":\"the API key is not valid\"}}");
                close(fd);
                continue;
            }
            if (!strncmp(buf, "GET /v1/models ", 15)) {
                send_all(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                send_all(fd, sc == MODELS_HTML ? "<html><body>It works!</body></html>"
                           : sc == MODELS_NAMELESS ? "{\"models\":[{\"family\":\"sd1\"}]}" : MODELS_JSON);
            } else if (!strncmp(buf, "POST /v1/jobs ", 14)) {
                log_append(log, "POST", body);
                if (sc == REJECT)
                    send_all(fd, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                                 "Connection: close\r\n\r\n"
                                 "{\"error\":{\"code\":\"invalid_request\",\"message\":\"steps must be 1-150\"}}");
                else
                    send_all(fd, "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                                 "Connection: close\r\n\r\n"
                                 "{\"job_id\":\"job-1\",\"sse_url\":\"/v1/jobs/job-1/stream\"}");
            } else if (!strncmp(buf, "GET /v1/jobs/job-1/stream ", 26)) {
                stream_gets++;
                const char *lei = strcasestr(buf, "Last-Event-ID:");
                char line[128] = "none";
                if (lei)
                    sscanf(lei + 14, " %127[^\r\n]", line);
                log_append(log, "GET-LAST-EVENT-ID", line);
                if (sc == GONE) {
                    send_all(fd, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                                 "Connection: close\r\n\r\n"
                                 "{\"error\":{\"code\":\"not_found\",\"message\":\"no such job\"}}");
                    close(fd);
                    continue;
                }
                send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
                if (sc == DROP_ONCE && stream_gets == 1) {
                    /* Two events, a half-written third, then the connection drops. */
                    send_all(fd, "retry: 10\n\n"
                                 "id: 1\nevent: progress\ndata: {\"type\":\"progress\",\"step\":1,\"total\":4,\"percent\":25.0}\n\n"
                                 ": keep-alive\n\n"
                                 "id: 2\r\nevent: progress\r\ndata: {\"type\":\"progress\",\"step\":2,\"total\":4,\"percent\":50.0}\r\n\r\n"
                                 "id: 3\nevent: progress\ndata: {\"type\":");
                    close(fd);
                    continue;
                }
                send_all(fd, "id: 3\nevent: progress\ndata: {\"type\":\"progress\",\"step\":3,\"total\":4,\"percent\":75.0}\n\n"
                             "id: 4\nevent: preview\ndata: {\"type\":\"preview\",\"step\":4,\"total\":4,\"percent\":100.0,"
                             "\"image\":\"" IMAGE_B64 "\",\"format\":\"png\"}\n\n");
                if (sc == JOB_ERROR)
                    send_all(fd, "id: 5\nevent: error\ndata: {\"type\":\"error\",\"message\":\"out of memory in the VAE\","
                                 "\"code\":\"engine_error\"}\n\n");
                else if (sc == CANCELLED_EVT)
                    send_all(fd, "id: 5\nevent: error\ndata: {\"type\":\"error\",\"message\":\"cancelled by request\","
                                 "\"code\":\"cancelled\"}\n\n");
                else {
                    send_all(fd, "id: 5\nevent: complete\ndata: {\"type\":\"complete\",\"image\":\"" IMAGE_B64 "\","
                                 "\"format\":\"png\",\"seed\":");
                    send_all(fd, complete_seed);
                    send_all(fd, ",\ndata: \"width\":512,\"height\":512,\"timings\":{\"total_ms\":42}}\n\n");
                }
            } else {
                send_all(fd, "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
            }
        }
        close(fd);
    }
}

static pid_t start_server(enum scenario sc, int *port, const char *log)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 8) ||
        getsockname(ls, (struct sockaddr *)&a, &al))
        return -1;
    *port = ntohs(a.sin_port);
    unlink(log);
    pid_t pid = fork();
    if (pid == 0) {
        serve(ls, sc, log);
        _exit(0);
    }
    close(ls);
    return pid;
}

/* ---- running the client ---- */

struct run {
    int status;
    char out[4096], err[8192];
};

static void slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
}

/* Runs the client with argv (NULL-terminated, argv[0] ignored). */
static void run_cli(struct run *r, char *const argv[])
{
    char out[128], err[128];
    snprintf(out, sizeof out, "%s/stdout", tmpdir);
    snprintf(err, sizeof err, "%s/stderr", tmpdir);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int in = open("/dev/null", O_RDONLY);
        dup2(o, 1);
        dup2(e, 2);
        dup2(in, 0);
        execv(cli, argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(out, r->out, sizeof r->out);
    slurp(err, r->err, sizeof r->err);
}

/* Client output for a TAP description: one line. */
static const char *oneline(const char *s)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ & 7];
    size_t n = 0;
    for (; *s && n + 4 < sizeof buf[0]; s++) {
        if (*s == '\n') {
            if (s[1])
                memcpy(b + n, " | ", 3), n += 3;
        } else if (*s != '\r') {
            b[n++] = *s;
        }
    }
    b[n] = '\0';
    return b;
}

#define RUN(r, ...) do { char *const av_[] = { "sdworker", __VA_ARGS__, NULL }; run_cli(r, av_); } while (0)

static void usage_errors(void)
{
    struct run r;
    RUN(&r, "--help");
    tap_ok(r.status == 0 && strstr(r.out, "Exit status:") && strstr(r.out, "6  the output file"),
           "--help exits 0 and documents the exit codes");
    RUN(&r, "image", "--help");
    tap_ok(r.status == 0 && strstr(r.out, "Usage:"), "image --help exits 0");
    char *const none[] = { "sdworker", NULL };
    run_cli(&r, none);
    tap_ok(r.status == 1 && strstr(r.err, "missing command"), "no arguments: exit 1 (%s)", oneline(r.err));
    RUN(&r, "video", "generate");
    tap_ok(r.status == 1 && strstr(r.err, "unknown command 'video'"), "unknown command: exit 1");
    RUN(&r, "image", "upscale", "--prompt", "x");
    tap_ok(r.status == 1 && strstr(r.err, "unknown image command 'upscale'"), "unknown image command: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--output", "o.png");
    tap_ok(r.status == 1 && strstr(r.err, "--prompt is required"), "missing --prompt: exit 1 (%s)", oneline(r.err));
    RUN(&r, "image", "generate", "--prompt", "p", "--output", "o.png");
    tap_ok(r.status == 1 && strstr(r.err, "--model is required"), "missing --model: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p");
    tap_ok(r.status == 1 && strstr(r.err, "--output is required"), "missing --output: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--steps", "ten");
    tap_ok(r.status == 1 && strstr(r.err, "--steps: 'ten' is not an integer"), "bad --steps: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--guidance", "7,5");
    tap_ok(r.status == 1 && strstr(r.err, "--guidance: '7,5' is not a number"), "bad --guidance: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--seed", "-1");
    tap_ok(r.status == 1 && strstr(r.err, "--seed"), "negative --seed: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--frobnicate");
    tap_ok(r.status == 1 && strstr(r.err, "unknown option '--frobnicate'"), "unknown option: exit 1 (%s)", oneline(r.err));
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--steps");
    tap_ok(r.status == 1 && strstr(r.err, "--steps needs a value"), "option without its value: exit 1 (%s)", oneline(r.err));
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "stray");
    tap_ok(r.status == 1 && strstr(r.err, "unexpected argument 'stray'"), "stray argument: exit 1");
    RUN(&r, "image", "transform", "--model", "m", "--prompt", "p", "-o", "o.png");
    tap_ok(r.status == 1 && strstr(r.err, "--input is required"), "transform without --input: exit 1");
    RUN(&r, "image", "inpaint", "--model", "m", "--prompt", "p", "-o", "o.png", "--input", "x.png");
    tap_ok(r.status == 1 && strstr(r.err, "--mask is required"), "inpaint without --mask: exit 1");
    RUN(&r, "image", "transform", "--model", "m", "--prompt", "p", "-o", "o.png", "--input", "x.png",
        "--width", "64");
    tap_ok(r.status == 1 && strstr(r.err, "generate only"), "transform with --width: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--strength", "0.5");
    tap_ok(r.status == 1 && strstr(r.err, "apply to transform and inpaint"), "generate with --strength: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--url", "ftp://x");
    tap_ok(r.status == 1 && strstr(r.err, "http://"), "non-HTTP --url: exit 1");
    RUN(&r, "image");
    tap_ok(r.status == 1 && strstr(r.err, "image: missing command"), "image without a command: exit 1 (%s)",
           oneline(r.err));
    RUN(&r, "model");
    tap_ok(r.status == 1 && strstr(r.err, "model: missing command (list)"), "model without a command: exit 1 (%s)",
           oneline(r.err));
    RUN(&r, "model", "remove");
    tap_ok(r.status == 1 && strstr(r.err, "unknown model command 'remove'"), "unknown model command: exit 1");
    RUN(&r, "model", "--help");
    tap_ok(r.status == 0 && strstr(r.out, "model list [--url URL] [--api-key KEY] [--json]"),
           "model --help exits 0 and shows model list");
    RUN(&r, "model", "list", "--prompt", "p");
    tap_ok(r.status == 1 && strstr(r.err, "model list: --prompt does not apply"),
           "an image option to model list: exit 1 (%s)", oneline(r.err));
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "o.png", "--json");
    tap_ok(r.status == 1 && strstr(r.err, "image generate: --json does not apply"),
           "--json to an image command: exit 1 (%s)", oneline(r.err));
    RUN(&r, "model", "list", "--url", "ftp://x");
    tap_ok(r.status == 1 && strstr(r.err, "http://"), "model list with a non-HTTP --url: exit 1");

    char notimg[128];
    snprintf(notimg, sizeof notimg, "%s/not-an-image.png", tmpdir);
    FILE *f = fopen(notimg, "w");
    fputs("hello", f);
    fclose(f);
    char outp[128];
    snprintf(outp, sizeof outp, "%s/o.png", tmpdir);
    RUN(&r, "image", "transform", "--model", "m", "--prompt", "p", "-o", outp, "--input", notimg,
        "--url", "http://127.0.0.1:1");
    tap_ok(r.status == 1 && strstr(r.err, "not a PNG or JPEG"), "--input that is not an image: exit 1 (%s)", oneline(r.err));
    RUN(&r, "image", "transform", "--model", "m", "--prompt", "p", "-o", outp, "--input", "/nonexistent.png");
    tap_ok(r.status == 1 && strstr(r.err, "/nonexistent.png"), "missing --input file: exit 1");
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", "/nonexistent-dir/o.png");
    tap_ok(r.status == 6 && strstr(r.err, "/nonexistent-dir"), "unwritable --output refused before submitting: exit 6 (%s)",
           oneline(r.err));
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", tmpdir);
    tap_ok(r.status == 6 && strstr(r.err, "is a directory"), "--output naming a directory: exit 6");
}

static void connection_failure(void)
{
    int port;
    char log[128];
    snprintf(log, sizeof log, "%s/unused.log", tmpdir);
    /* A port that was just free and now has no listener. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &al);
    port = ntohs(a.sin_port);
    close(s);
    char url[64], outp[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    snprintf(outp, sizeof outp, "%s/o.png", tmpdir);
    struct run r;
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 4 && strstr(r.err, "cannot submit"), "nothing listening: exit 4 (%s)", oneline(r.err));
    RUN(&r, "model", "list", "--url", url);
    tap_ok(r.status == 4 && strstr(r.err, "cannot query") && strstr(r.err, "/v1/models") && !r.out[0],
           "model list with nothing listening: exit 4 (%s)", oneline(r.err));
}

static void model_list(void)
{
    char log[128], url[64];
    snprintf(log, sizeof log, "%s/models.log", tmpdir);
    int port;
    struct run r;

    pid_t pid = start_server(OK_RUN, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    RUN(&r, "model", "list", "--url", url);
    tap_ok(r.status == 0 &&
               !strcmp(r.out, "NAME            FAMILY           PREDICTION    SIZE     STEPS  GUIDANCE  SAMPLER\n"
                              "tiny (default)  sd1              epsilon       512x512  20     7.5       model's\n"
                              "sd2-inpaint     sd2, inpainting  v_prediction  768x640  3      0         dpmpp_2m\n"
                              "later           -                -             512x512  20     7.5       model's\n"),
           "model list: aligned columns, the default marked, '-' while loading (%d: %s%s)", r.status, r.out,
           oneline(r.err));
    RUN(&r, "model", "list", "--json", "--url", url);
    tap_ok(r.status == 0 && !strcmp(r.out, MODELS_JSON "\n"), "model list --json: the body as sent (%s)",
           oneline(r.out));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    pid = start_server(MODELS_HTML, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "model", "list", "--json", "--url", url);
    tap_ok(r.status == 2 && strstr(r.err, "unexpected response to GET") && strstr(r.err, "It works!") && !r.out[0],
           "model list from a server that answers HTML: exit 2 (%s)", oneline(r.err));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    pid = start_server(MODELS_NAMELESS, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "model", "list", "--url", url);
    tap_ok(r.status == 2 && strstr(r.err, "unexpected response") && !r.out[0],
           "a models entry without a name: exit 2, no partial table (%s)", oneline(r.err));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static bool file_equals(const char *path, const unsigned char *want, size_t n)
{
    unsigned char buf[64];
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return got == n && !memcmp(buf, want, n);
}

static void with_server(void)
{
    char log[128], url[64], outp[128], input[128], maskp[128];
    snprintf(log, sizeof log, "%s/server.log", tmpdir);
    snprintf(outp, sizeof outp, "%s/out.png", tmpdir);
    snprintf(input, sizeof input, "%s/in.png", tmpdir);
    snprintf(maskp, sizeof maskp, "%s/mask.jpg", tmpdir);
    FILE *f = fopen(input, "wb");
    fwrite(image_bytes, 1, sizeof image_bytes, f);
    fclose(f);
    static const unsigned char jpeg[] = { 0xff, 0xd8, 0xff, 0xe0, 'J', 'F', 'I', 'F' };
    f = fopen(maskp, "wb");
    fwrite(jpeg, 1, sizeof jpeg, f);
    fclose(f);
    int port;
    struct run r;
    char logtext[1 << 16];

    /* 1. A complete run: request body, image written, seed printed. */
    pid_t pid = start_server(OK_RUN, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    RUN(&r, "image", "inpaint", "--hive", "h1", "--model", "sd15", "--prompt", "a \"fox\"",
        "--negative-prompt", "blur", "--steps", "4", "--guidance", "6.5", "--seed", "18446744073709551615",
        "--sampler", "ddim", "--input", input, "--mask", maskp, "--strength", "0.6", "--output", outp,
        "--url", url);
    tap_ok(r.status == 0, "complete run: exit 0 (%d: %s)", r.status, oneline(r.err));
    tap_ok(file_equals(outp, image_bytes, sizeof image_bytes), "the complete event's image is written byte for byte");
    tap_ok(!strcmp(r.out, "seed: 1234567\n"), "the seed is printed on stdout (%s)", oneline(r.out));
    tap_ok(strstr(r.err, "progress: step 3/4 (75%)") && strstr(r.err, "preview: step 4/4") &&
           strstr(r.err, "wrote") && strstr(r.err, "512x512") && strstr(r.err, "total_ms"),
           "plain progress lines on a non-tty stderr, then size and timings");
    slurp(log, logtext, sizeof logtext);
    char *post = strstr(logtext, "POST\n");
    json_object *j = post ? json_tokener_parse(post + 5) : NULL;
    json_object *v;
#define FIELD(k) (json_object_object_get_ex(j, k, &v) ? v : NULL)
    tap_ok(j != NULL, "the request body is JSON");
    tap_ok(j && !strcmp(json_object_get_string(FIELD("operation")), "image_inpaint") &&
           !strcmp(json_object_get_string(FIELD("hive_id")), "h1") &&
           !strcmp(json_object_get_string(FIELD("model")), "sd15") &&
           !strcmp(json_object_get_string(FIELD("prompt")), "a \"fox\"") &&
           !strcmp(json_object_get_string(FIELD("negative_prompt")), "blur") &&
           !strcmp(json_object_get_string(FIELD("sampler")), "ddim"), "string fields");
    tap_ok(j && json_object_get_int(FIELD("steps")) == 4 && json_object_get_double(FIELD("guidance_scale")) == 6.5 &&
           json_object_get_double(FIELD("strength")) == 0.6 &&
           json_object_get_uint64(FIELD("seed")) == 18446744073709551615ull, "numeric fields, a 64-bit seed");
    tap_ok(j && !strcmp(json_object_get_string(FIELD("init_image")), IMAGE_B64) &&
           !strcmp(json_object_get_string(FIELD("mask_image")), "/9j/4EpGSUY="), "init and mask images as base64");
    tap_ok(j && !FIELD("width") && !FIELD("height"), "no size for inpaint");
    json_object_put(j);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* 2. Generation with defaults: optional fields left to the server. */
    pid = start_server(OK_RUN, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "-q", "--url", url);
    tap_ok(r.status == 0 && !strcmp(r.err, "") && !strcmp(r.out, "seed: 1234567\n"),
           "--quiet: nothing on stderr, the seed on stdout (%s)", oneline(r.err));
    slurp(log, logtext, sizeof logtext);
    post = strstr(logtext, "POST\n");
    j = post ? json_tokener_parse(post + 5) : NULL;
    tap_ok(j && !strcmp(json_object_get_string(FIELD("operation")), "image_generation") &&
           !strcmp(json_object_get_string(FIELD("hive_id")), "localhost") && !FIELD("steps") &&
           !FIELD("seed") && !FIELD("sampler") && !FIELD("negative_prompt") && !FIELD("init_image"),
           "defaults: hive_id localhost, optional fields absent");
    json_object_put(j);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* 2b. Seeds of the whole unsigned 64-bit range, as the server sends
     * them (a JSON integer, or a string), come out exactly. */
    static const struct {
        const char *json, *printed;
    } seeds[] = {
        {"11630110443127060619", "seed: 11630110443127060619\n"},
        {"9223372036854775808", "seed: 9223372036854775808\n"},
        {"18446744073709551615", "seed: 18446744073709551615\n"},
        {"0", "seed: 0\n"},
        {"\"11630110443127060619\"", "seed: 11630110443127060619\n"},
        {"-1", ""},
        {"\"12x\"", ""},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        complete_seed = seeds[i].json;
        pid = start_server(OK_RUN, &port, log);
        snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
        RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
        tap_ok(r.status == 0 && !strcmp(r.out, seeds[i].printed) &&
                   (seeds[i].printed[0] || strstr(r.err, "seed is not an integer")),
               "complete event seed %s: stdout '%s'", seeds[i].json, oneline(r.out));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    complete_seed = "1234567";

    /* 3. Rejection. */
    pid = start_server(REJECT, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "--steps", "999", "-o", outp, "--url", url);
    tap_ok(r.status == 2 && strstr(r.err, "steps must be 1-150") && strstr(r.err, "HTTP 400"),
           "400 with a JSON error: exit 2 and error.message printed (%s)", oneline(r.err));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* 4. Error event. */
    unlink(outp);
    pid = start_server(JOB_ERROR, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 3 && strstr(r.err, "out of memory in the VAE"), "error event: exit 3 with its message (%s)", oneline(r.err));
    tap_ok(access(outp, F_OK) != 0, "no output file after a failed job");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* 5. Cancelled (an error event with code "cancelled"). */
    pid = start_server(CANCELLED_EVT, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 5 && strstr(r.err, "cancelled"), "cancelled job: exit 5 (%s)", oneline(r.err));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* 6. The stream drops after event 2: the client resumes from id 2. */
    pid = start_server(DROP_ONCE, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 0 && file_equals(outp, image_bytes, sizeof image_bytes),
           "dropped stream: reconnected and finished (%d: %s)", r.status, oneline(r.err));
    slurp(log, logtext, sizeof logtext);
    tap_ok(strstr(logtext, "GET-LAST-EVENT-ID\nnone\n") && strstr(logtext, "GET-LAST-EVENT-ID\n2\n"),
           "first GET without Last-Event-ID, the second with Last-Event-ID: 2");
    tap_ok(strstr(r.err, "step 1/4") && strstr(r.err, "step 2/4") && strstr(r.err, "step 3/4") &&
           strstr(r.err, "reconnecting"), "events before and after the drop were all seen once");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* 7. The job vanished (404 on its stream). */
    pid = start_server(GONE, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 3 && strstr(r.err, "no such job"), "404 on the stream: exit 3 (%s)", oneline(r.err));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
#undef FIELD
}

/* --api-key and SDW_API_KEY: sent as a Bearer token on every request. */
static void api_keys(void)
{
    char log[128], url[64], outp[128], logtext[1 << 16];
    snprintf(log, sizeof log, "%s/keys.log", tmpdir);
    snprintf(outp, sizeof outp, "%s/key.png", tmpdir);
    int port;
    struct run r;
    pid_t pid = start_server(KEYED, &port, log);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);

    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 2 && strstr(r.err, "the API key is not valid") && strstr(r.err, "HTTP 401"),
           "no key for a keyed server: exit 2 with its message (%s)", oneline(r.err));
    slurp(log, logtext, sizeof logtext);
    tap_ok(strstr(logtext, "AUTH(POST)\nnone\n") != NULL, "without a key no Authorization header is sent");

    unlink(log);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url, "--api-key", GOOD_KEY);
    tap_ok(r.status == 0 && file_equals(outp, image_bytes, sizeof image_bytes),
           "--api-key: the run completes (%d: %s)", r.status, oneline(r.err));
    slurp(log, logtext, sizeof logtext);
    tap_ok(strstr(logtext, "AUTH(POST)\nBearer " GOOD_KEY "\n") && strstr(logtext, "AUTH(GET)\nBearer " GOOD_KEY "\n") &&
           !strstr(logtext, ")\nnone\n"), "--api-key goes as Authorization: Bearer on the submit and the stream");
    tap_ok(!strstr(r.err, GOOD_KEY) && !strstr(r.out, GOOD_KEY), "the key is not printed");

    RUN(&r, "model", "list", "--url", url);
    tap_ok(r.status == 2 && strstr(r.err, "HTTP 401") && strstr(r.err, "the API key is not valid") && !r.out[0],
           "model list without a key for a keyed server: exit 2 with its message (%s)", oneline(r.err));
    unlink(log);
    RUN(&r, "model", "list", "--url", url, "--api-key", GOOD_KEY);
    slurp(log, logtext, sizeof logtext);
    tap_ok(r.status == 0 && strstr(r.out, "tiny (default)") && strstr(logtext, "AUTH(GET)\nBearer " GOOD_KEY "\n"),
           "model list --api-key: sent as a Bearer token, the list printed (%d: %s)", r.status, oneline(r.err));

    unlink(log);
    setenv("SDW_API_KEY", GOOD_KEY, 1);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    slurp(log, logtext, sizeof logtext);
    tap_ok(r.status == 0 && strstr(logtext, "AUTH(POST)\nBearer " GOOD_KEY "\n"),
           "SDW_API_KEY is sent when there is no --api-key (%d: %s)", r.status, oneline(r.err));
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url, "--api-key",
        "wrong-key-0123456789abcdef");
    tap_ok(r.status == 2 && strstr(r.err, "HTTP 401"), "--api-key wins over SDW_API_KEY (%s)", oneline(r.err));
    setenv("SDW_API_KEY", "two words", 1);
    RUN(&r, "image", "generate", "--model", "m", "--prompt", "p", "-o", outp, "--url", url);
    tap_ok(r.status == 1 && strstr(r.err, "space or control character") && !strstr(r.err, "two words"),
           "a key that would break the header line: exit 1, not echoed (%s)", oneline(r.err));
    unsetenv("SDW_API_KEY");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("SDW_CLI"))
        cli = getenv("SDW_CLI");
    if (access(cli, X_OK)) {
        printf("1..0 # SKIP %s not built\n", cli);
        return 0;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sdw-cli-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        tap_ok(0, "mkdtemp");
        return tap_done();
    }
    /* The caller's environment must not decide what is sent. */
    unsetenv("SDW_API_KEY");
    usage_errors();
    connection_failure();
    with_server();
    model_list();
    api_keys();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        tap_diag("could not remove %s", tmpdir);
    return tap_done();
}
