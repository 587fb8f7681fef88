/* The configuration parser: defaults, every key, rejected values with their
 * file:line, duplicates, overrides, models, and the dump round trip. */
#include "base/sampler.h"
#include "config/config.h"
#include "tap.h"

#include <string.h>
#include <unistd.h>

static sdw_error err;

static int parse(sdw_config *c, const char *text)
{
    sdw_config_defaults(c);
    memset(&err, 0, sizeof err);
    return sdw_config_parse(c, text, strlen(text), "t.conf", "/etc/sdworker", &err);
}

/* The text must be rejected with a message containing want. */
static void rejects(const char *text, const char *want)
{
    sdw_config c;
    int rc = parse(&c, text);
    tap_ok(rc == SDW_EINVAL && strstr(err.msg, want), "rejected: %s (want '%s')", err.msg, want);
}

static void test_defaults(void)
{
    sdw_config c;
    sdw_config_defaults(&c);
    tap_ok(!strcmp(c.listen, "unix:/run/sdworker/fcgi.sock") && c.listen_unix &&
           !strcmp(c.listen_path, "/run/sdworker/fcgi.sock"), "default listen");
    tap_ok(c.pm == SDW_PM_DYNAMIC && c.pm_max_children == 16 && c.pm_max_requests == 1000,
           "default pm");
    tap_ok(c.pm_min_spare_servers <= c.pm_start_servers &&
           c.pm_start_servers <= c.pm_max_spare_servers &&
           c.pm_max_spare_servers <= c.pm_max_children, "default spare counts are consistent");
    tap_ok(!strcmp(c.ring_name, "/sdworker") && c.ring_slots == 64 && c.ring_max_queued == 32,
           "default ring");
    tap_ok(c.result_ttl == 600 && c.preview_interval == 5 && c.keepalive_interval == 15,
           "default timings");
    tap_ok(c.max_body_bytes == 32u << 20 && c.max_prompt_bytes == 4096 &&
           c.max_pixels == 1024 * 1024, "default limits");
    tap_ok(c.device.kind == SDW_DEVICE_CPU && c.threads == 0 && c.log_level == SDW_LOG_INFO && c.engine_warmup == -1,
           "default device, threads, log level, warm-up (auto)");
    tap_ok(c.n_models == 0 && !sdw_config_model_find(&c, NULL), "no default model");
    sdw_error e = { 0 };
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "no model"),
           "validate requires a model: %s", e.msg);
    size_t in, lg, img;
    sdw_config_ring_sizes(&c, &in, &lg, &img);
    tap_ok(in >= 2 * c.max_image_bytes && lg == 64 * 1024 && img >= 4 * c.max_pixels,
           "derived ring sizes cover two images and a base64 PNG (%zu %zu %zu)", in, lg, img);
}

static void test_every_key(void)
{
    static const char text[] =
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "listen = 127.0.0.1:9000\n"
        "pm = static\n"
        "pm.max_children = 40\n"
        "pm.start_servers = 5\n"
        "pm.min_spare_servers = 3\n"
        "pm.max_spare_servers = 7\n"
        "pm.max_requests = 0\n"
        "ring.name = \"/sdw-test.1\"\n"
        "ring.slots = 128\n"
        "ring.max_queued = 100\n"
        "ring.input_bytes = 8M\n"
        "ring.log_bytes = 128k\n"
        "ring.image_bytes = 1GiB\n"
        "result_ttl = 60\n"
        "preview_interval = 0\n"
        "keepalive_interval = 30   # trailing comment\n"
        "limits.max_body_bytes = 16MiB\n"
        "limits.max_prompt_bytes = 1000\n"
        "limits.max_image_bytes = 3000000\n"
        "limits.max_pixels = 262144\n"
        "device = cuda:1\n"
        "threads = 8\n"
        "engine.warmup = 256\n"
        "engine.restart_delay_ms = 250\n"
        "engine.stop_timeout_s = 7\n"
        "log_level = debug\r\n"
        "model.sd15 = models/sd15\n"
        "model.tiny = \"/srv/m/tiny #1\"\n";
    sdw_config c;
    int rc = parse(&c, text);
    tap_ok(rc == 0, "every key parses (%s)", err.msg);
    tap_ok(!c.listen_unix && !strcmp(c.listen_host, "127.0.0.1") && c.listen_port == 9000,
           "listen TCP");
    tap_ok(c.pm == SDW_PM_STATIC && c.pm_max_children == 40 && c.pm_start_servers == 5 &&
           c.pm_min_spare_servers == 3 && c.pm_max_spare_servers == 7 && c.pm_max_requests == 0,
           "pm keys");
    tap_ok(!strcmp(c.ring_name, "/sdw-test.1") && c.ring_slots == 128 && c.ring_max_queued == 100,
           "ring keys");
    tap_ok(c.ring_input_bytes == 8u << 20 && c.ring_log_bytes == 128u << 10 &&
           c.ring_image_bytes == 1u << 30, "ring sizes with suffixes");
    tap_ok(c.result_ttl == 60 && c.preview_interval == 0 && c.keepalive_interval == 30,
           "timings, trailing comment stripped");
    tap_ok(c.max_body_bytes == 16u << 20 && c.max_prompt_bytes == 1000 &&
           c.max_image_bytes == 3000000 && c.max_pixels == 262144, "limits");
    tap_ok(c.device.kind == SDW_DEVICE_CUDA && c.device.index == 1 && c.threads == 8 &&
           c.engine_restart_delay_ms == 250 && c.engine_stop_timeout_s == 7 && c.engine_warmup == 256,
           "device, threads, restart delay, stop timeout, warm-up");
    tap_ok(c.log_level == SDW_LOG_DEBUG, "log_level with CRLF line end");
    tap_ok(c.n_models == 2 && !strcmp(c.models[0].path, "/etc/sdworker/models/sd15") &&
           !strcmp(c.models[1].path, "/srv/m/tiny #1"),
           "models: relative path anchored at basedir, quoted '#' kept (%s, %s)",
           c.models[0].path, c.models[1].path);
    const sdw_config_model *m = sdw_config_model_find(&c, NULL);
    tap_ok(m && !strcmp(m->name, "sd15"), "first model is the default");
    m = sdw_config_model_find(&c, "tiny");
    tap_ok(m && !strcmp(m->name, "tiny"), "model found by name");
    tap_ok(!sdw_config_model_find(&c, "sd21") && sdw_config_model_find(&c, "")->path ==
           c.models[0].path, "unknown model is NULL, empty name is the default");
    sdw_error e = { 0 };
    tap_ok(sdw_config_validate(&c, &e) == 0, "static pool validates without spare checks (%s)",
           e.msg);

    sdw_config d;
    rc = parse(&d, "device = cuda\nlisten = localhost:80\nlisten = unix:/tmp/s\n");
    tap_ok(rc == SDW_EINVAL && strstr(err.msg, "t.conf:3: listen: duplicate key (first set at line 2)"),
           "duplicate key in one file is an error with both lines: %s", err.msg);
    rc = parse(&d, "device = cuda\nlisten = localhost:80\n");
    tap_ok(rc == 0 && d.device.kind == SDW_DEVICE_CUDA && d.device.index == 0 &&
           !strcmp(d.listen_host, "localhost") && d.listen_port == 80, "cuda alone, localhost");
    rc = parse(&d, "model.a = /x\nmodel.b = /y\nmodel.a = /z\n");
    tap_ok(rc == SDW_EINVAL && strstr(err.msg, "t.conf:3: model.a: duplicate key (first set at line 1)") &&
           !strcmp(d.models[0].path, "/x") && d.n_models == 2,
           "duplicate model is an error and leaves the first value: %s", err.msg);
}

static void test_rejections(void)
{
    rejects("bogus = 1\n", "t.conf:1: bogus: unknown key");
    rejects("\n\nlisten = /run/x.sock\n", "t.conf:3: listen:");
    rejects("listen = unix:run/x\n", "must be absolute");
    rejects("listen = 10.0.0.300:9000\n", "not an IPv4 address");
    rejects("listen = 127.0.0.1:0\n", "port must be 1-65535");
    rejects("listen = 127.0.0.1:70000\n", "port must be 1-65535");
    rejects("listen = unix:/a/very/long/path/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
            "socket path longer");
    rejects("pm = ondemand\n", "t.conf:1: pm: 'ondemand': expected static or dynamic");
    rejects("pm.max_children = 0\n", "pm.max_children: 0 is out of range");
    rejects("pm.max_children = 12x\n", "pm.max_children: '12x': not an integer");
    rejects("pm.max_children = -3\n", "out of range");
    rejects("pm.max_requests = 99999999999999999999\n", "not an integer");
    rejects("ring.name = sdworker\n", "ring.name: 'sdworker': expected '/'");
    rejects("ring.name = /a/b\n", "ring.name:");
    rejects("ring.slots = 0\n", "ring.slots: 0 is out of range");
    rejects("ring.log_bytes = 0\n", "ring.log_bytes: 0 is out of range");
    rejects("ring.input_bytes = 1k\n", "or 0 = derived");
    rejects("ring.image_bytes = 12T\n", "expected a byte count");
    rejects("limits.max_body_bytes = 32 MiB\n", "expected a byte count");
    rejects("limits.max_body_bytes = -1\n", "expected a byte count");
    rejects("limits.max_pixels = 5000000\n", "limits.max_pixels: 5000000 is out of range");
    rejects("limits.max_prompt_bytes = 0\n", "out of range");
    rejects("result_ttl = 0\n", "result_ttl:");
    rejects("keepalive_interval = 0\n", "keepalive_interval:");
    rejects("preview_interval = -1\n", "preview_interval:");
    rejects("device = gpu\n", "device: 'gpu': expected cpu, cuda or cuda:N");
    rejects("device = cuda:x\n", "device:");
    rejects("device = cuda:64\n", "device:");
    rejects("threads = many\n", "threads:");
    rejects("engine.restart_delay_ms = -5\n", "engine.restart_delay_ms:");
    rejects("engine.stop_timeout_s = 3601\n", "engine.stop_timeout_s:");
    rejects("engine.warmup = -2\n", "engine.warmup: -2 is out of range -1-2048");
    rejects("log_level = verbose\n", "log_level: 'verbose'");
    rejects("model.bad/name = /x\n", "model.bad/name: model names");
    rejects("model. = /x\n", "model.: model names");
    rejects("model.a = \"\"\n", "model.a: empty model path");
    rejects("just some words\n", "t.conf:1: expected 'key = value'");
    rejects("= 3\n", "expected 'key = value'");
    rejects("threads =\n", "threads: empty value");
    rejects("threads = # nothing\n", "threads: empty value");
    rejects("ring.name = \"/abc\n", "unterminated quoted value");
    rejects("ring.name = \"/abc\" extra\n", "unexpected text after the closing quote");
    rejects("ring.name = \"/a\\bc\"\n", "may be escaped");
    rejects("# ok\nthreads = 2\n\n   \npm=oops\n", "t.conf:5: pm:");
    sdw_config c;
    sdw_config_defaults(&c);
    int rc = sdw_config_parse(&c, "threads = 1\0\n", 13, "nul.conf", NULL, &err);
    tap_ok(rc == SDW_EFORMAT && strstr(err.msg, "NUL"), "NUL byte rejected: %s", err.msg);
}

static void test_validate(void)
{
    sdw_config c;
    sdw_error e;
    parse(&c, "model.m = /m\npm.max_spare_servers = 20\n");
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "pm.max_spare_servers (20)"),
           "max_spare > max_children: %s", e.msg);
    parse(&c, "model.m = /m\npm.min_spare_servers = 5\npm.start_servers=5\npm.max_spare_servers = 4\n");
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "pm.min_spare_servers (5)"),
           "min_spare > max_spare: %s", e.msg);
    parse(&c, "model.m = /m\npm.start_servers = 1\n");
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "pm.start_servers (1)"),
           "start_servers below min_spare: %s", e.msg);
    parse(&c, "model.m = /m\nring.slots = 8\n");
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "ring.max_queued (32)"),
           "max_queued > slots: %s", e.msg);
    parse(&c, "model.m = /m\n");
    tap_ok(sdw_config_validate(&c, &e) == 0, "defaults plus a model validate");
}

static void test_overrides(void)
{
    sdw_config c;
    parse(&c, "threads = 2\nmodel.a = /a\n");
    sdw_error e = { 0 };
    tap_ok(sdw_config_set(&c, "threads=6", &e) == 0 && c.threads == 6, "override replaces file value");
    tap_ok(sdw_config_set(&c, "threads = 7", &e) == 0 && c.threads == 7, "override with spaces");
    tap_ok(sdw_config_set(&c, "threads=8", &e) == 0 && c.threads == 8, "overrides may repeat (last wins)");
    tap_ok(sdw_config_set(&c, "model.b=rel/b", &e) == 0 && c.n_models == 2 &&
           !strcmp(c.models[1].path, "rel/b"), "model override appends, relative to cwd");
    tap_ok(sdw_config_set(&c, "model.a=\"/new a\"", &e) == 0 && c.n_models == 2 &&
           !strcmp(c.models[0].path, "/new a"), "model override replaces a path, keeps order");
    int rc = sdw_config_set(&c, "threads", &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "command line"), "override without '=': %s", e.msg);
    rc = sdw_config_set(&c, "nope=1", &e);
    tap_ok(rc == SDW_EINVAL && !strcmp(e.msg, "command line: nope: unknown key"), "unknown override: %s", e.msg);
    rc = sdw_config_set(&c, "threads=1\nthreads=2", &e);
    tap_ok(rc == SDW_EINVAL, "override with a newline rejected");
    rc = sdw_config_set(&c, "", &e);
    tap_ok(rc == SDW_EINVAL, "empty override rejected");
}

static void test_models_limit(void)
{
    char text[SDW_CONFIG_MAX_MODELS * 32 + 64];
    size_t n = 0;
    for (int i = 0; i <= SDW_CONFIG_MAX_MODELS; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "model.m%d = /m/%d\n", i, i);
    sdw_config c;
    int rc = parse(&c, text);
    tap_ok(rc == SDW_EINVAL && strstr(err.msg, "more than") && c.n_models == SDW_CONFIG_MAX_MODELS,
           "model count limit: %s", err.msg);
    tap_ok(!strcmp(c.models[SDW_CONFIG_MAX_MODELS - 1].name, "m31") &&
           !strcmp(sdw_config_model_find(&c, "m7")->path, "/m/7"), "models kept in file order");
}

#define H1 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define H2 "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static void test_api_keys(void)
{
    sdw_config c;
    int rc = parse(&c, "model.m = /m\n"
                       "api_key.alice = sha256:" H1 "\n"
                       "api_key.ops-1 = sha256:" H2 "  admin max_queued=4\tper_minute=30 # comment\n"
                       "api_key.z = \"sha256:" "0000000089ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef" " per_minute=0\"\n");
    tap_ok(rc == 0 && c.n_keys == 3, "three API keys parse (%s)", err.msg);
    const sdw_config_key *a = &c.keys[0], *o = &c.keys[1], *z = &c.keys[2];
    tap_ok(!strcmp(a->name, "alice") && a->sha256[0] == 0x01 && a->sha256[31] == 0xef && !a->admin &&
           a->max_queued == 0 && a->per_minute == 0, "a key without options: no limits, not admin");
    tap_ok(a->owner == 0x01234567u, "the owner id is the hash's first 32 bits (%08x)", a->owner);
    tap_ok(!strcmp(o->name, "ops-1") && o->admin && o->max_queued == 4 && o->per_minute == 30 &&
           o->owner == 0xffeeddccu, "admin, max_queued and per_minute, spaces and tabs, trailing comment");
    tap_ok(z->sha256[4] == 0x89 && z->owner == 1, "upper-case hex; a hash starting with 32 zero bits owns as 1");
    sdw_error e = { 0 };
    tap_ok(sdw_config_validate(&c, &e) == 0, "distinct keys validate (%s)", e.msg);

    rc = parse(&c, "api_key.a = sha256:" H1 "\napi_key.a = sha256:" H2 "\n");
    tap_ok(rc == SDW_EINVAL && strstr(err.msg, "t.conf:2: api_key.a: duplicate key (first set at line 1)"),
           "a key name twice in a file: %s", err.msg);
    parse(&c, "model.m = /m\napi_key.a = sha256:" H1 "\napi_key.b = sha256:" H1 " admin\n");
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "api_key.a and api_key.b are the same key"),
           "one key under two names fails validation: %s", e.msg);
    parse(&c, "model.m = /m\napi_key.a = sha256:" H1 "\n"
              "api_key.b = sha256:01234567" "ffffffffffffffffffffffffffffffffffffffffffffffffffffffff" "\n");
    tap_ok(sdw_config_validate(&c, &e) == SDW_EINVAL && strstr(e.msg, "same 32 bits"),
           "two keys with one owner id fail validation: %s", e.msg);

    rejects("api_key.a = " H1 "\n", "api_key.a: expected sha256:<64 hex digits>");
    rejects("api_key.a = sha256:" H1 "0\n", "expected sha256:<64 hex digits>");
    rejects("api_key.a = sha256:0123\n", "expected sha256:<64 hex digits>");
    rejects("api_key.a = sha256:g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
            "must be 64 hex digits");
    rejects("api_key.a = md5:0123456789abcdef0123456789abcdef\n", "expected sha256:");
    rejects("api_key.a = sha256:" H1 " root\n", "'root': options are admin, max_queued=N and per_minute=N");
    rejects("api_key.a = sha256:" H1 " max_queued=-1\n", "max_queued must be 0-65536");
    rejects("api_key.a = sha256:" H1 " per_minute=lots\n", "per_minute must be 0-1000000");
    rejects("api_key.a = sha256:" H1 " per_minute=1 per_minute=2\n", "per_minute given twice");
    rejects("api_key.a = sha256:" H1 " admin admin\n", "'admin' given twice");
    rejects("api_key.a = sha256:" H1 " max_queued=0000000000000000000000000000000000000000000000000000000000001\n",
            "options are admin");
    rejects("api_key.a/b = sha256:" H1 "\n", "api_key.a/b: API key names are");
    rejects("api_key. = sha256:" H1 "\n", "API key names are");

    parse(&c, "api_key.a = sha256:" H1 " per_minute=5\n");
    tap_ok(sdw_config_set(&c, "api_key.a=sha256:" H2 " admin", &e) == 0 && c.n_keys == 1 && c.keys[0].admin &&
           c.keys[0].per_minute == 0 && c.keys[0].sha256[0] == 0xff, "an override replaces a key whole");
    tap_ok(sdw_config_set(&c, "api_key.b = sha256:" H1, &e) == 0 && c.n_keys == 2 && !strcmp(c.keys[1].name, "b"),
           "an override adds a key");

    char text[SDW_CONFIG_MAX_KEYS * 100 + 100];
    size_t n = 0;
    for (int i = 0; i <= SDW_CONFIG_MAX_KEYS; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "api_key.k%d = sha256:%08x%s\n", i, i + 1, H1 + 8);
    rc = parse(&c, text);
    tap_ok(rc == SDW_EINVAL && strstr(err.msg, "more than 64 API keys") && c.n_keys == SDW_CONFIG_MAX_KEYS,
           "API key count limit: %s", err.msg);
}

static void test_model_options(void)
{
    sdw_config c;
    int rc = parse(&c, "model.turbo = /m/sd-turbo\nmodel.turbo.steps = 1\nmodel.turbo.guidance = 0\n"
                       "model.turbo.size = 512x512\nmodel.turbo.sampler = euler_a\n"
                       "model.v2 = /m/v2.safetensors\nmodel.v2.prediction = v\nmodel.v2.size=768x640\n"
                       "model.plain = /m/plain\n");
    const sdw_config_model *t = sdw_config_model_find(&c, "turbo"), *v = sdw_config_model_find(&c, "v2"),
                           *p = sdw_config_model_find(&c, "plain");
    tap_ok(rc == 0 && c.n_models == 3 && t && v && p, "models with options parse (%s)", err.msg);
    if (!t || !v || !p)
        return;
    tap_ok(t->steps == 1 && t->guidance == 0 && t->width == 512 && t->height == 512 && t->sampler == SDW_SAMPLER_EULER_A &&
           !t->prediction[0], "turbo's steps, guidance, size and sampler");
    tap_ok(!strcmp(v->prediction, "v_prediction") && v->width == 768 && v->height == 640 && !v->steps &&
           v->guidance < 0 && v->sampler < 0, "v2's prediction (v is v_prediction) and size; the rest unset");
    tap_ok(!p->steps && p->guidance < 0 && !p->width && p->sampler < 0 && !p->prediction[0], "no options: all unset");
    tap_ok(!strcmp(t->path, "/m/sd-turbo"), "an option does not touch the model's path");

    rejects("model.a.steps = 4\nmodel.a = /a\n", "no model \"a\" defined before this line");
    rejects("model.a = /a\nmodel.a.steps = 0\n", "t.conf:2: model.a.steps: expected an integer in [1,150]");
    rejects("model.a = /a\nmodel.a.steps = 4x\n", "model.a.steps: expected an integer");
    rejects("model.a = /a\nmodel.a.guidance = 31\n", "model.a.guidance: expected a number in [0,30]");
    rejects("model.a = /a\nmodel.a.guidance = nan\n", "expected a number in [0,30]");
    rejects("model.a = /a\nmodel.a.size = 512\n", "model.a.size: expected WIDTHxHEIGHT");
    rejects("model.a = /a\nmodel.a.size = 500x512\n", "each a multiple of 8 in [64,2048]");
    rejects("model.a = /a\nmodel.a.size = 512x4096\n", "expected WIDTHxHEIGHT");
    rejects("model.a = /a\nmodel.a.sampler = heun\n", "model.a.sampler: expected one of");
    rejects("model.a = /a\nmodel.a.prediction = sample\n", "expected epsilon or v_prediction");
    rejects("model.a = /a\nmodel.a.steps = 4\nmodel.a.steps = 5\n", "duplicate key (first set at line 2)");

    /* A dotted model name keeps working; its options follow it. */
    rc = parse(&c, "model.sd2.1 = /m/21\nmodel.sd2.1.steps = 25\n");
    const sdw_config_model *d = sdw_config_model_find(&c, "sd2.1");
    tap_ok(rc == 0 && d && d->steps == 25, "options of a dotted model name (%s)", err.msg);

    sdw_error e = {0};
    tap_ok(sdw_config_set(&c, "model.sd2.1.guidance = 3.5", &e) == 0 && d->guidance == 3.5 && d->steps == 25,
           "a command-line override sets one option (%s)", e.msg);
}

static void test_dump_roundtrip(void)
{
    sdw_config a, b;
    parse(&a, "listen = localhost:9001\npm = static\nring.name=/x\nring.image_bytes = 2M\n"
              "device = cuda:3\nlog_level = warn\nmodel.one = \"/p with \\\"q\\\" # and \\\\\"\n"
              "model.two = /two\nmodel.two.steps = 4\nmodel.two.guidance = 1.25\nmodel.two.size = 768x512\n"
              "model.two.sampler = ddim\nmodel.two.prediction = v_prediction\n"
              "api_key.alice = sha256:" H1 "\napi_key.ops = sha256:" H2 " admin max_queued=3 per_minute=9\n");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    tap_ok(sdw_config_dump(&a, f) == 0, "dump writes");
    fclose(f);
    tap_ok(strstr(buf, "model.one = \"/p with \\\"q\\\" # and \\\\\"\n") != NULL,
           "dump quotes and escapes a path that needs it");
    tap_ok(strstr(buf, "ring.input_bytes = 0\n# (derived: ") != NULL, "dump shows derived sizes");
    tap_ok(strstr(buf, "model.two = /two\nmodel.two.steps = 4\nmodel.two.guidance = 1.25\n"
                       "model.two.size = 768x512\nmodel.two.sampler = ddim\nmodel.two.prediction = v_prediction\n") !=
               NULL,
           "dump writes a model's options after it");
    tap_ok(strstr(buf, "api_key.alice = sha256:" H1 "\napi_key.ops = sha256:" H2
                       " admin max_queued=3 per_minute=9\n") != NULL, "dump writes API keys with their options");
    sdw_config_defaults(&b);
    int rc = sdw_config_parse(&b, buf, len, "dump", NULL, &err);
    tap_ok(rc == 0, "dump parses back (%s)", err.msg);
    tap_ok(memcmp(&a, &b, sizeof a) == 0, "dump round-trips to an identical config");
    free(buf);

    sdw_config_defaults(&a);
    buf = NULL;
    f = open_memstream(&buf, &len);
    sdw_config_dump(&a, f);
    fclose(f);
    tap_ok(strstr(buf, "keepalive_interval = 15\n") && strstr(buf, "limits.max_body_bytes = 33554432\n") &&
           strstr(buf, "listen = unix:/run/sdworker/fcgi.sock\n"), "dump of defaults");
    free(buf);
}

static void test_load(void)
{
    char dir[] = "/tmp/sdw-config-XXXXXX";
    if (!mkdtemp(dir)) {
        tap_skip("mkdtemp failed");
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/sdworker.conf", dir);
    FILE *f = fopen(path, "w");
    fputs("model.tiny = tiny-model\nthreads = 3\npm.max_children = x\n", f);
    fclose(f);
    sdw_config c;
    sdw_config_defaults(&c);
    sdw_error e;
    int rc = sdw_config_load(&c, path, &e);
    char want[300];
    snprintf(want, sizeof want, "%s:3: pm.max_children: 'x': not an integer", path);
    tap_ok(rc == SDW_EINVAL && !strcmp(e.msg, want), "load reports path:line: key: %s", e.msg);
    char mp[300];
    snprintf(mp, sizeof mp, "%s/tiny-model", dir);
    tap_ok(!strcmp(c.models[0].path, mp), "relative model path anchored at the file's directory");
    unlink(path);
    rc = sdw_config_load(&c, path, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, path), "missing file: %s", e.msg);
    rmdir(dir);
}

static void test_sample(void)
{
    const char *src = getenv("SDW_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/../../conf/sdworker.conf", src ? src : "tests/fixtures");
    sdw_config c, d;
    sdw_config_defaults(&c);
    sdw_config_defaults(&d);
    sdw_error e = { 0 };
    int rc = sdw_config_load(&c, path, &e);
    tap_ok(rc == 0, "conf/sdworker.conf parses (%s)", e.msg);
    /* The sample documents the defaults: apart from its example model it
     * must describe the same configuration as sdw_config_defaults. */
    c.n_models = 0;
    memset(c.models, 0, sizeof c.models);
    tap_ok(memcmp(&c, &d, sizeof c) == 0, "the sample's values are the defaults");
}

static void test_loras(void)
{
    sdw_config c;
    int rc = parse(&c, "model.a = /a\nlora.ink = ink.safetensors\nlora.x-1 = /l/x.safetensors\nlora_dir = loras\n"
                       "limits.max_loras = 2\nlora_cache_bytes = 64M\n");
    tap_ok(rc == 0 && c.n_loras == 2 && !strcmp(c.loras[0].name, "ink") &&
               !strcmp(c.loras[0].path, "/etc/sdworker/ink.safetensors") && !strcmp(c.loras[1].path, "/l/x.safetensors") &&
               !strcmp(c.lora_dir, "/etc/sdworker/loras") && c.max_loras == 2 && c.lora_cache_bytes == 64u << 20,
           "lora.<name>, lora_dir (relative to the file), limits.max_loras, lora_cache_bytes (%s)", err.msg);
    sdw_config_defaults(&c);
    tap_ok(c.max_loras == 4 && c.lora_cache_bytes == 1024u << 20 && !c.n_loras && !c.lora_dir[0],
           "LoRA defaults: 4 per job, a 1 GiB cache, none configured");
    rejects("lora.a = /x\nlora.a = /y\n", "duplicate key (first set at line 1)");
    rejects("lora_dir = /x\nlora_dir = /y\n", "duplicate key");
    rejects("lora.a/b = /x\n", "LoRA names");
    rejects("lora..a = /x\n", "LoRA names");
    rejects("limits.max_loras = 9\n", "limits.max_loras");
    char *buf = NULL;
    size_t len = 0;
    parse(&c, "model.a = /a\nlora.ink = /ink.safetensors\nlora_dir = /loras\n");
    FILE *f = open_memstream(&buf, &len);
    sdw_config_dump(&c, f);
    fclose(f);
    sdw_config b;
    sdw_config_defaults(&b);
    rc = sdw_config_parse(&b, buf, len, "dump", NULL, &err);
    tap_ok(rc == 0 && !memcmp(&b, &c, sizeof b), "LoRA lines round-trip through the dump");
    free(buf);
}

int main(void)
{
    test_defaults();
    test_loras();
    test_every_key();
    test_rejections();
    test_validate();
    test_overrides();
    test_models_limit();
    test_api_keys();
    test_model_options();
    test_dump_roundtrip();
    test_load();
    test_sample();
    return tap_done();
}
