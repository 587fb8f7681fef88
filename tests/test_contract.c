/* The request contract: defaults, every range boundary, types, malformed
 * bodies, rbee's other operations, images (their bytes, then their pixels
 * as sdw_job_request_decode_images checks them), seeds over the whole
 * 64-bit range, and the error JSON with the field at fault. */
#define _GNU_SOURCE
#include "base/err.h"
#include "contract/contract.h"
#include "image/image.h"
#include "image_fixtures.h"
#include "tap.h"

#include <json-c/json.h>
#include <stdint.h>
#include <string.h>

static const unsigned char png_bytes[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
static const unsigned char jpeg_bytes[] = {0xff, 0xd8, 0xff, 0xe0, 0, 16, 'J', 'F', 'I', 'F', 0};
static char *png_b64, *jpeg_b64;

static char *fmt_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_alloc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* A generation request with extra fields appended (extra starts with ','). */
static char *gen(const char *extra)
{
    return fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"localhost\","
                     "\"model\":\"sd15\",\"prompt\":\"a cat\"%s}", extra);
}

static char *xform(const char *op, const char *extra)
{
    return fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"sd15\",\"prompt\":\"a cat\"%s}", op, extra);
}

static char *xform_model(const char *model, const char *op, const char *extra)
{
    return fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"%s\",\"prompt\":\"a cat\","
                     "\"init_image\":\"%s\"%s}", op, model, png_b64, extra);
}

static int parse_str(const char *body, sdw_job_request *r, sdw_api_error *e, const sdw_contract_limits *lim)
{
    memset(e, 0, sizeof *e);
    return sdw_contract_parse(body, strlen(body), lim, r, e);
}

static void expect_ok(char *body, const char *what)
{
    sdw_job_request r;
    sdw_api_error e;
    int rc = parse_str(body, &r, &e, NULL);
    if (!tap_ok(rc == 0, "accepts %s", what))
        tap_diag("got %d %s: %s", e.http_status, e.code, e.message);
    sdw_job_request_free(&r);
    free(body);
}

static void expect_err_lim(char *body, int status, const char *code, const char *what,
                           const sdw_contract_limits *lim)
{
    sdw_job_request r;
    sdw_api_error e;
    int rc = parse_str(body, &r, &e, lim);
    int good = rc < 0 && e.http_status == status && e.code && strcmp(e.code, code) == 0;
    if (!tap_ok(good, "rejects %s with %d %s", what, status, code))
        tap_diag("got rc=%d %d %s: %s", rc, e.http_status, e.code ? e.code : "(null)", e.message);
    if (rc == 0)
        sdw_job_request_free(&r);
    tap_ok(r.prompt == NULL && r.init_image.data == NULL, "%s: request left empty on failure", what);
    free(body);
}

static void expect_err(char *body, int status, const char *code, const char *what)
{
    expect_err_lim(body, status, code, what, NULL);
}

static void test_defaults(void)
{
    sdw_job_request r;
    sdw_api_error e;
    char *b = gen("");
    int rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0, "minimal image_generation parses");
    tap_ok(r.op == SDW_OPERATION_GENERATE, "op");
    tap_ok(strcmp(r.hive_id, "localhost") == 0 && strcmp(r.model, "sd15") == 0, "hive_id and model");
    tap_ok(strcmp(r.prompt, "a cat") == 0, "prompt");
    tap_ok(r.negative_prompt && r.negative_prompt[0] == '\0', "negative_prompt defaults to \"\"");
    tap_ok(r.steps == 20, "steps default 20");
    tap_ok(r.guidance_scale == 7.5, "guidance default 7.5");
    tap_ok(r.width == 512 && r.height == 512, "size default 512x512");
    tap_ok(r.seed_random, "absent seed is chosen at random and marked so");
    tap_ok(r.worker_id[0] == '\0', "worker_id default empty");
    tap_ok(r.sampler == SDW_JOB_SAMPLER_DEFAULT && r.eta == 0 && r.clip_skip == 0, "sampler/eta/clip_skip defaults");
    tap_ok(r.init_image.data == NULL && r.mask_image.data == NULL, "no images for generation");
    uint64_t s1 = r.seed;
    sdw_job_request_free(&r);
    parse_str(b, &r, &e, NULL);
    tap_ok(r.seed != s1, "two random seeds differ");
    sdw_job_request_free(&r);
    free(b);

    b = gen(",\"negative_prompt\":null,\"seed\":null,\"worker_id\":null,\"loras\":null,\"sampler\":null");
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.seed_random && r.negative_prompt[0] == '\0', "nulls mean absent");
    sdw_job_request_free(&r);
    free(b);

    b = gen(",\"negative_prompt\":\"blurry\",\"steps\":30,\"guidance_scale\":5,\"width\":640,\"height\":384,"
            "\"seed\":42,\"worker_id\":\"w1\",\"loras\":[],\"sampler\":\"ddim\",\"eta\":0.5,\"clip_skip\":2,"
            "\"unknown_field\":{\"x\":[1,2,3]}");
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0, "all fields given");
    tap_ok(strcmp(r.negative_prompt, "blurry") == 0 && r.steps == 30 && r.guidance_scale == 5 &&
               r.width == 640 && r.height == 384 && r.seed == 42 && !r.seed_random &&
               strcmp(r.worker_id, "w1") == 0 && r.sampler == SDW_SAMPLER_DDIM && r.eta == 0.5 &&
               r.clip_skip == 2,
           "all given fields read");
    sdw_job_request_free(&r);
    free(b);

    char *extra = fmt_alloc(",\"init_image\":\"%s\",\"width\":77", png_b64);
    b = xform("image_transform", extra);
    free(extra);
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.op == SDW_OPERATION_TRANSFORM, "image_transform parses");
    tap_ok(r.strength == 0.8, "transform strength default 0.8");
    tap_ok(r.width == 0 && r.height == 0, "transform width/height ignored (from the image)");
    tap_ok(r.init_image.format == SDW_IMAGE_PNG && r.init_image.len == sizeof png_bytes &&
               memcmp(r.init_image.data, png_bytes, sizeof png_bytes) == 0,
           "init_image decoded to the PNG bytes");
    sdw_job_request_free(&r);
    free(b);

    b = fmt_alloc("{\"operation\":\"image_inpaint\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\","
                  "\"init_image\":\"%s\",\"mask_image\":\"%s\"}", jpeg_b64, png_b64);
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.op == SDW_OPERATION_INPAINT, "image_inpaint parses");
    tap_ok(r.strength == 1.0, "inpaint strength default 1.0");
    tap_ok(r.init_image.format == SDW_IMAGE_JPEG && r.mask_image.format == SDW_IMAGE_PNG, "inpaint images detected");
    sdw_job_request_free(&r);
    free(b);
}

static void test_ranges(void)
{
    struct {
        const char *field, *ok1, *ok2, *bad1, *bad2;
    } cases[] = {
        {"steps", "1", "150", "0", "151"},
        {"guidance_scale", "0", "30", "-0.001", "30.001"},
        {"width", "64", "1024", "56", "2056"},
        {"height", "64", "1024", "56", "2056"},
        {"clip_skip", "0", "11", "-1", "12"},
        {"eta", "0", "0", "-0.1", "1.1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char extra[128];
        const char *samp = strcmp(cases[i].field, "eta") == 0 ? ",\"sampler\":\"ddim\"" : "";
        snprintf(extra, sizeof extra, ",\"%s\":%s%s", cases[i].field, cases[i].ok1, samp);
        expect_ok(gen(extra), extra);
        snprintf(extra, sizeof extra, ",\"%s\":%s%s", cases[i].field, cases[i].ok2, samp);
        expect_ok(gen(extra), extra);
        snprintf(extra, sizeof extra, ",\"%s\":%s%s", cases[i].field, cases[i].bad1, samp);
        expect_err(gen(extra), 400, SDW_API_INVALID_VALUE, extra);
        snprintf(extra, sizeof extra, ",\"%s\":%s%s", cases[i].field, cases[i].bad2, samp);
        expect_err(gen(extra), 400, SDW_API_INVALID_VALUE, extra);
    }
    expect_ok(gen(",\"sampler\":\"ddim\",\"eta\":1"), "eta 1 with ddim");
    expect_err(gen(",\"eta\":0.5"), 400, SDW_API_INVALID_VALUE, "eta without ddim");
    expect_err(gen(",\"eta\":0.5,\"sampler\":\"euler\""), 400, SDW_API_INVALID_VALUE, "eta with euler");
    expect_ok(gen(",\"width\":2048,\"height\":512"), "width 2048 within max pixels");
    expect_err(gen(",\"width\":2048,\"height\":2048"), 400, SDW_API_INVALID_VALUE, "2048x2048 beyond max pixels");
    expect_ok(gen(",\"width\":1024,\"height\":1024"), "1024x1024 = max pixels");
    expect_err(gen(",\"width\":1024,\"height\":1032"), 400, SDW_API_INVALID_VALUE, "1024x1032 just beyond max pixels");
    sdw_contract_limits big = sdw_contract_default_limits();
    big.max_pixels = 2048 * 2048;
    {
        sdw_job_request r;
        sdw_api_error e;
        char *b = gen(",\"width\":2048,\"height\":2048");
        tap_ok(parse_str(b, &r, &e, &big) == 0, "2048x2048 allowed by a raised max_pixels");
        sdw_job_request_free(&r);
        free(b);
        b = gen(",\"width\":2056,\"height\":64");
        expect_err_lim(b, 400, SDW_API_INVALID_VALUE, "2056 wide even with raised max_pixels", &big);
    }
    expect_err(gen(",\"width\":516"), 400, SDW_API_INVALID_VALUE, "width not a multiple of 8");
    expect_err(gen(",\"height\":513"), 400, SDW_API_INVALID_VALUE, "height not a multiple of 8");
    expect_ok(gen(",\"steps\":20.0"), "steps 20.0 (integral number)");
    expect_ok(gen(",\"steps\":2e1"), "steps 2e1");
    expect_err(gen(",\"steps\":20.5"), 400, SDW_API_INVALID_VALUE, "steps 20.5");
    expect_err(gen(",\"steps\":\"20\""), 400, SDW_API_INVALID_VALUE, "steps as a string");
    expect_err(gen(",\"steps\":true"), 400, SDW_API_INVALID_VALUE, "steps as a bool");
    expect_err(gen(",\"steps\":[20]"), 400, SDW_API_INVALID_VALUE, "steps as an array");
    expect_err(gen(",\"guidance_scale\":\"7\""), 400, SDW_API_INVALID_VALUE, "guidance as a string");
    expect_err(gen(",\"steps\":1e400"), 400, SDW_API_INVALID_VALUE, "steps 1e400 (infinite)");
    expect_err(gen(",\"guidance_scale\":1e400"), 400, SDW_API_INVALID_VALUE, "guidance 1e400 (infinite)");
    expect_err(gen(",\"steps\":9223372036854775807"), 400, SDW_API_INVALID_VALUE, "steps INT64_MAX");
    expect_err(gen(",\"steps\":4294967317"), 400, SDW_API_INVALID_VALUE, "steps 2^32+21 (no wraparound)");
    expect_err(gen(",\"steps\":-9223372036854775808"), 400, SDW_API_INVALID_VALUE, "steps INT64_MIN");
    expect_err(gen(",\"steps\":99999999999999999999999"), 400, SDW_API_INVALID_VALUE, "steps beyond 64 bits");
    expect_err(gen(",\"unused\":-99999999999999999999"), 400, SDW_API_INVALID_VALUE, "any integer beyond 64 bits");
    expect_err(gen(",\"guidance_scale\":NaN"), 400, SDW_API_INVALID_JSON, "NaN");
    expect_err(gen(",\"guidance_scale\":-Infinity"), 400, SDW_API_INVALID_JSON, "-Infinity");
    expect_ok(gen(",\"note\":\"NaN Infinity 99999999999999999999999\""), "NaN and huge digits inside strings");
    expect_err(gen(",\"sampler\":\"heun\""), 400, SDW_API_INVALID_VALUE, "unknown sampler");
    expect_err(gen(",\"sampler\":\"DDIM\""), 400, SDW_API_INVALID_VALUE, "sampler names are case-sensitive");
    expect_err(gen(",\"sampler\":3"), 400, SDW_API_INVALID_VALUE, "sampler as a number");
    static const char *const samplers[] = {"euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "lcm"};
    for (int i = 0; i < 7; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, ",\"sampler\":\"%s\"", samplers[i]);
        sdw_job_request r;
        sdw_api_error e;
        char *b = gen(extra);
        int rc = parse_str(b, &r, &e, NULL);
        tap_ok(rc == 0 && strcmp(sdw_sampler_name(r.sampler), samplers[i]) == 0, "sampler %s", samplers[i]);
        sdw_job_request_free(&r);
        free(b);
    }
}

static void test_seed(void)
{
    struct {
        const char *json;
        uint64_t want;
    } ok[] = {
        {"0", 0},
        {"42", 42},
        {"9223372036854775807", 9223372036854775807ull},
        {"9223372036854775808", 9223372036854775808ull},
        {"18446744073709551615", UINT64_MAX},
        {"\"18446744073709551615\"", UINT64_MAX},
        {"\"123\"", 123},
        {"1e3", 1000},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, ",\"seed\":%s", ok[i].json);
        sdw_job_request r;
        sdw_api_error e;
        char *b = gen(extra);
        int rc = parse_str(b, &r, &e, NULL);
        tap_ok(rc == 0 && r.seed == ok[i].want && !r.seed_random, "seed %s", ok[i].json);
        sdw_job_request_free(&r);
        free(b);
    }
    const char *bad[] = {"-1", "18446744073709551616", "\"18446744073709551616\"", "\"-1\"", "\"\"", "\"12a\"",
                         "\" 1\"", "1.5", "1e300", "true", "{}", "\"000000000000000000001\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, ",\"seed\":%s", bad[i]);
        expect_err(gen(extra), 400, SDW_API_INVALID_VALUE, extra);
    }
}

static void test_strings(void)
{
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"model\":\"m\",\"prompt\":\"p\"}"), 400,
               SDW_API_INVALID_REQUEST, "missing hive_id");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"prompt\":\"p\"}"), 400,
               SDW_API_INVALID_REQUEST, "missing model");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\"}"), 400,
               SDW_API_INVALID_REQUEST, "missing prompt");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":null}"),
               400, SDW_API_INVALID_REQUEST, "null prompt");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"\"}"),
               400, SDW_API_INVALID_VALUE, "empty prompt");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\" \\t\\n \"}"),
               400, SDW_API_INVALID_VALUE, "blank prompt");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":5}"),
               400, SDW_API_INVALID_VALUE, "numeric prompt");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"a\\u0000b\"}"),
               400, SDW_API_INVALID_VALUE, "prompt with an embedded NUL");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":7,\"model\":\"m\",\"prompt\":\"p\"}"),
               400, SDW_API_INVALID_VALUE, "numeric hive_id");
    expect_err(gen(",\"negative_prompt\":[]"), 400, SDW_API_INVALID_VALUE, "negative_prompt as an array");
    expect_err(gen(",\"worker_id\":1"), 400, SDW_API_INVALID_VALUE, "numeric worker_id");
    expect_err(gen(",\"worker_id\":\"a\\nb\""), 400, SDW_API_INVALID_VALUE, "worker_id with a newline");

    const char *bad_models[] = {"", "../etc", "/abs", ".hidden", "a/../b", "a/..", "a b", "m\\u00e9"};
    for (size_t i = 0; i < sizeof bad_models / sizeof bad_models[0]; i++) {
        char *b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"%s\",\"prompt\":\"p\"}",
                            bad_models[i]);
        expect_err(b, 400, SDW_API_INVALID_VALUE, bad_models[i][0] ? bad_models[i] : "empty model");
    }
    expect_ok(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"runwayml/sd-v1.5_x\",\"prompt\":\"p\"}"),
              "model with an org prefix, dots, dashes");
    expect_ok(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"a..b\",\"prompt\":\"p\"}"),
              "model with '..' inside a name");

    /* Prompt length boundary, in bytes of UTF-8. */
    sdw_contract_limits lim = sdw_contract_default_limits();
    lim.max_prompt_bytes = 9;
    sdw_job_request r;
    sdw_api_error e;
    char *b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"\xe7\x8c\xab\xe3\x81\xa8\xf0\x9f\x90\x88\"}");
    int rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc < 0 && strcmp(e.code, SDW_API_INVALID_VALUE) == 0, "10-byte UTF-8 prompt over a 9-byte limit");
    free(b);
    b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"\xe7\x8c\xab\xe3\x81\xa8\xe3\x81\xa8\"}");
    rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc == 0 && strcmp(r.prompt, "\xe7\x8c\xab\xe3\x81\xa8\xe3\x81\xa8") == 0, "9-byte UTF-8 prompt at the limit, bytes kept");
    sdw_job_request_free(&r);
    free(b);
    b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"\\u732b\\ud83d\\udc08\"}");
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && strcmp(r.prompt, "\xe7\x8c\xab\xf0\x9f\x90\x88") == 0, "\\u escapes incl. a surrogate pair decode to UTF-8");
    sdw_job_request_free(&r);
    free(b);
    lim = sdw_contract_default_limits();
    lim.max_prompt_bytes = 4;
    b = gen(",\"negative_prompt\":\"12345\"");
    b[strlen(b) - 1] = '}';
    expect_err_lim(b, 400, SDW_API_INVALID_VALUE, "negative_prompt over the limit", &lim);
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"\xff\xfe\"}"),
               400, SDW_API_INVALID_JSON, "invalid UTF-8 in a string");
    expect_err(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"\xc3\"}"),
               400, SDW_API_INVALID_JSON, "truncated UTF-8 sequence");
}

static void test_structure(void)
{
    expect_err(fmt_alloc("{\"operation\":\"image_generation\""), 400, SDW_API_INVALID_JSON, "truncated JSON");
    expect_err(fmt_alloc("{\"operation\":\"image_gen"), 400, SDW_API_INVALID_JSON, "truncated inside a string");
    expect_err(fmt_alloc("{\"operation\":}"), 400, SDW_API_INVALID_JSON, "malformed JSON");
    expect_err(fmt_alloc("{'operation':'image_generation'}"), 400, SDW_API_INVALID_JSON, "single quotes");
    expect_err(gen(","), 400, SDW_API_INVALID_JSON, "trailing comma");
    expect_err(fmt_alloc("nul"), 400, SDW_API_INVALID_JSON, "truncated literal");
    expect_err(gen("} x"), 400, SDW_API_INVALID_JSON, "trailing garbage");
    expect_err(gen("}{}"), 400, SDW_API_INVALID_JSON, "two JSON values");
    expect_err(gen("}\n{"), 400, SDW_API_INVALID_JSON, "a second, truncated value");
    char *g = gen("");
    expect_ok(fmt_alloc(" \n%s\r\n ", g), "surrounding whitespace");
    free(g);
    expect_err(fmt_alloc("5"), 400, SDW_API_INVALID_REQUEST, "number body");
    expect_err(fmt_alloc(" "), 400, SDW_API_INVALID_JSON, "whitespace-only body");
    {
        sdw_job_request r;
        sdw_api_error e;
        int rc = sdw_contract_parse("", 0, NULL, &r, &e);
        tap_ok(rc < 0 && e.http_status == 400 && strcmp(e.code, SDW_API_INVALID_JSON) == 0, "empty body");
        char *b = gen("");
        size_t n = strlen(b);
        b[n - 1] = '\0';
        rc = sdw_contract_parse(b, n, NULL, &r, &e);
        tap_ok(rc < 0 && strcmp(e.code, SDW_API_INVALID_JSON) == 0, "NUL byte inside the body");
        free(b);
    }
    char *deep = malloc(20000);
    size_t p = 0;
    p += (size_t)sprintf(deep, "{\"operation\":\"image_generation\",\"x\":");
    for (int i = 0; i < 5000; i++)
        deep[p++] = '[';
    for (int i = 0; i < 5000; i++)
        deep[p++] = ']';
    strcpy(deep + p, "}");
    expect_err(deep, 400, SDW_API_INVALID_JSON, "nesting 5000 deep");
    expect_ok(gen(",\"x\":[[[[[[[[1]]]]]]]]"), "moderate nesting in an unknown field");

    expect_err(fmt_alloc("[]"), 400, SDW_API_INVALID_REQUEST, "array body");
    expect_err(fmt_alloc("\"image_generation\""), 400, SDW_API_INVALID_REQUEST, "string body");
    expect_err(fmt_alloc("null"), 400, SDW_API_INVALID_REQUEST, "null body");
    expect_err(fmt_alloc("{}"), 400, SDW_API_INVALID_REQUEST, "no operation");
    expect_err(fmt_alloc("{\"operation\":5}"), 400, SDW_API_INVALID_REQUEST, "numeric operation");
    expect_err(fmt_alloc("{\"operation\":null}"), 400, SDW_API_INVALID_REQUEST, "null operation");
    expect_err(fmt_alloc("{\"operation\":\"ImageGeneration\"}"), 400, SDW_API_UNKNOWN_OPERATION, "CamelCase operation");
    expect_err(fmt_alloc("{\"operation\":\"paint_me\"}"), 400, SDW_API_UNKNOWN_OPERATION, "unknown operation");

    static const char *const others[] = {
        "status", "infer", "rhai_script_save", "rhai_script_test", "rhai_script_get", "rhai_script_list",
        "rhai_script_delete", "worker_catalog_list", "worker_catalog_get", "worker_list_installed",
        "worker_installed_get", "worker_install", "worker_remove", "worker_spawn", "worker_process_list",
        "worker_process_get", "worker_process_delete", "model_download", "model_list", "model_get",
        "model_delete", "model_load", "model_unload", "queen_check", "hive_check"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        sdw_job_request r;
        sdw_api_error e;
        char *b = fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\"}", others[i]);
        int rc = parse_str(b, &r, &e, NULL);
        tap_ok(rc < 0 && e.http_status == 400 && strcmp(e.code, SDW_API_UNSUPPORTED_OPERATION) == 0 &&
                   strstr(e.message, others[i]) != NULL,
               "rbee operation %s refused as unsupported, named in the message", others[i]);
        free(b);
    }

    expect_err(gen(",\"loras\":[{\"path\":\"/x.safetensors\",\"strength\":1.0}]"), 400, SDW_API_INVALID_VALUE,
               "a LoRA by path");
    {
        sdw_job_request r;
        sdw_api_error e;
        char *b = gen(",\"loras\":[{\"path\":\"/x.safetensors\"}]");
        parse_str(b, &r, &e, NULL);
        tap_ok(strstr(e.message, "never by path") != NULL && !strcmp(e.field, "loras"), "the path message is clear: %s",
               e.message);
        free(b);
        b = gen(",\"loras\":[{\"name\":\"style\"},{\"name\":\"ink.v2\",\"weight\":-0.5},{\"name\":\"x\",\"strength\":2}]");
        int rc = parse_str(b, &r, &e, NULL);
        tap_ok(rc == 0 && r.nloras == 3 && !strcmp(r.loras[0].name, "style") && r.loras[0].weight == 1.0 &&
                   r.loras[1].weight == -0.5 && r.loras[2].weight == 2.0,
               "loras: names, weight 1.0 by default, strength as rbee's alias");
        size_t len;
        unsigned char *blob = rc ? NULL : sdw_job_request_serialize(&r, &len);
        sdw_job_request back;
        tap_ok(blob && !sdw_job_request_deserialize(blob, len, &back, &e) && back.nloras == 3 &&
                   !strcmp(back.loras[1].name, "ink.v2") && back.loras[1].weight == -0.5,
               "loras survive the ring's serialised form");
        if (blob)
            sdw_job_request_free(&back);
        free(blob);
        if (!rc)
            sdw_job_request_free(&r);
        free(b);
    }
    expect_err(gen(",\"loras\":[{\"name\":\"a\",\"weight\":4.5}]"), 400, SDW_API_INVALID_VALUE, "a LoRA weight above 4");
    expect_err(gen(",\"loras\":[{\"name\":\"a\",\"weight\":\"1\"}]"), 400, SDW_API_INVALID_VALUE, "a LoRA weight as a string");
    expect_err(gen(",\"loras\":[{\"name\":\"../a\"}]"), 400, SDW_API_INVALID_VALUE, "a LoRA name with a slash");
    expect_err(gen(",\"loras\":[{\"name\":\"a\"},{\"name\":\"a\"}]"), 400, SDW_API_INVALID_VALUE, "a LoRA twice");
    expect_err(gen(",\"loras\":[{\"name\":\"a\",\"weight\":1,\"strength\":1}]"), 400, SDW_API_INVALID_VALUE,
               "weight and strength both");
    expect_err(gen(",\"loras\":[1]"), 400, SDW_API_INVALID_VALUE, "a LoRA that is not an object");
    expect_err(gen(",\"loras\":[{},{},{},{},{},{},{},{},{}]"), 400, SDW_API_INVALID_VALUE, "nine LoRAs");
    expect_err(gen(",\"loras\":{}"), 400, SDW_API_INVALID_VALUE, "loras as an object");

    sdw_contract_limits lim = sdw_contract_default_limits();
    char *b = gen("");
    lim.max_body_bytes = strlen(b) - 1;
    expect_err_lim(b, 413, SDW_API_PAYLOAD_TOO_LARGE, "body one byte over max_body_bytes", &lim);
    b = gen("");
    lim.max_body_bytes = strlen(b);
    sdw_job_request r;
    sdw_api_error e;
    tap_ok(parse_str(b, &r, &e, &lim) == 0, "body exactly max_body_bytes");
    sdw_job_request_free(&r);
    free(b);
}

static void test_images(void)
{
    sdw_job_request r;
    sdw_api_error e;
    char *b;
    int rc;

    b = fmt_alloc("{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"input_image\":\"%s\"}", png_b64);
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.init_image.format == SDW_IMAGE_PNG, "input_image alias (rbee's client)");
    sdw_job_request_free(&r);
    free(b);
    b = fmt_alloc("{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\","
                  "\"init_image\":\"%s\",\"input_image\":\"%s\"}", jpeg_b64, png_b64);
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.init_image.format == SDW_IMAGE_JPEG, "init_image wins over input_image");
    sdw_job_request_free(&r);
    free(b);
    b = fmt_alloc("{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\","
                  "\"init_image\":\"data:image/png;base64,%s\"}", png_b64);
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.init_image.len == sizeof png_bytes, "data: URL prefix");
    sdw_job_request_free(&r);
    free(b);
    /* Base64 broken into MIME-style lines. */
    char wrapped[256];
    size_t w = 0;
    for (size_t i = 0; png_b64[i]; i++) {
        wrapped[w++] = png_b64[i];
        if (i % 4 == 3) {
            wrapped[w++] = '\\';
            wrapped[w++] = (i % 8 == 7) ? 'n' : 'r';
        }
    }
    wrapped[w] = 0;
    b = fmt_alloc("{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\","
                  "\"init_image\":\" %s \"}", wrapped);
    rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0 && r.init_image.len == sizeof png_bytes && memcmp(r.init_image.data, png_bytes, sizeof png_bytes) == 0,
           "whitespace and newlines inside base64");
    sdw_job_request_free(&r);
    free(b);

    const char *xf = "{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\"";
    expect_err(fmt_alloc("%s}", xf), 400, SDW_API_INVALID_REQUEST, "transform without an image");
    expect_err(fmt_alloc("%s,\"init_image\":null}", xf), 400, SDW_API_INVALID_REQUEST, "transform with a null image");
    expect_err(fmt_alloc("%s,\"init_image\":\"\"}", xf), 400, SDW_API_INVALID_VALUE, "empty image");
    expect_err(fmt_alloc("%s,\"init_image\":42}", xf), 400, SDW_API_INVALID_VALUE, "numeric image");
    expect_err(fmt_alloc("%s,\"init_image\":\"iVBO*w0K\"}", xf), 400, SDW_API_INVALID_VALUE, "base64 with '*'");
    expect_err(fmt_alloc("%s,\"init_image\":\"iVBO-_0K\"}", xf), 400, SDW_API_INVALID_VALUE, "base64url alphabet");
    expect_err(fmt_alloc("%s,\"init_image\":\"iVBORw0KG\"}", xf), 400, SDW_API_INVALID_VALUE, "base64 length 1 mod 4");
    expect_err(fmt_alloc("%s,\"init_image\":\"iV==BORw\"}", xf), 400, SDW_API_INVALID_VALUE, "padding in the middle");
    expect_err(fmt_alloc("%s,\"init_image\":\"iVBORw===\"}", xf), 400, SDW_API_INVALID_VALUE, "too much padding");
    expect_err(fmt_alloc("%s,\"init_image\":\"iVBORw0K====\"}", xf), 400, SDW_API_INVALID_VALUE, "padding after a full quantum");
    expect_err(fmt_alloc("%s,\"init_image\":\"data:image/png,%s\"}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
               "data: URL without ;base64");
    expect_err(fmt_alloc("%s,\"init_image\":\"R0lGODlhAQABAAAAACw=\"}", xf), 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, "a GIF");
    expect_err(fmt_alloc("%s,\"init_image\":\"aGVsbG8gd29ybGQ=\"}", xf), 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, "plain text bytes");
    expect_err(fmt_alloc("%s,\"init_image\":\"data:image/png;base64,aGVsbG8=\"}", xf), 415,
               SDW_API_UNSUPPORTED_MEDIA_TYPE, "a data: URL claiming PNG over text");
    expect_err(fmt_alloc("%s,\"init_image\":\"iVBORw0K\"}", xf), 415, SDW_API_UNSUPPORTED_MEDIA_TYPE,
               "truncated PNG magic");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":1.01}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
               "strength 1.01");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":-0.01}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
               "strength -0.01");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
               "strength 0 (diffusers refuses it: no step to run)");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0.0}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
               "strength 0.0");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0.04}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
               "strength 0.04 with 20 steps: int(0.8) = 0 steps");
    expect_ok(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0.05}", xf, png_b64), "strength 0.05 with 20 steps");
    expect_ok(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0.1,\"steps\":10}", xf, png_b64),
              "strength 0.1 with 10 steps (10 * 0.1 is 1.0 in doubles)");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0.5,\"steps\":1}", xf, png_b64), 400,
               SDW_API_INVALID_VALUE, "strength 0.5 with 1 step");
    expect_err(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":1e-3,\"steps\":150}", xf, png_b64), 400,
               SDW_API_INVALID_VALUE, "strength 0.001 with 150 steps");
    expect_ok(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":1}", xf, png_b64), "strength 1");
    expect_err(fmt_alloc("{\"operation\":\"image_inpaint\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"init_image\":\"%s\"}",
                         png_b64), 400, SDW_API_INVALID_REQUEST, "inpaint without a mask");
    expect_err(fmt_alloc("{\"operation\":\"image_inpaint\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"init_image\":\"%s\","
                         "\"mask_image\":\"aGVsbG8=\"}", png_b64), 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, "inpaint mask not an image");

    sdw_contract_limits lim = sdw_contract_default_limits();
    lim.max_image_bytes = sizeof png_bytes - 1;
    expect_err_lim(fmt_alloc("%s,\"init_image\":\"%s\"}", xf, png_b64), 413, SDW_API_PAYLOAD_TOO_LARGE,
                   "image one byte over max_image_bytes", &lim);
    lim.max_image_bytes = sizeof png_bytes;
    b = fmt_alloc("%s,\"init_image\":\"%s\"}", xf, png_b64);
    tap_ok(parse_str(b, &r, &e, &lim) == 0, "image exactly max_image_bytes");
    sdw_job_request_free(&r);
    free(b);
}

/* The error names the member at fault, in the error JSON too. */
static void expect_field(char *body, int status, const char *code, const char *field, const char *what)
{
    sdw_job_request r;
    sdw_api_error e;
    int rc = parse_str(body, &r, &e, NULL);
    char *json = rc ? sdw_api_error_json(&e) : NULL;
    char want[128];
    snprintf(want, sizeof want, "\"field\":\"%s\"}}", field);
    int good = rc < 0 && e.http_status == status && strcmp(e.code, code) == 0 && strcmp(e.field, field) == 0 &&
               json && (field[0] ? strstr(json, want) != NULL : strstr(json, "\"field\"") == NULL);
    if (!tap_ok(good, "%s: %d %s naming %s", what, status, code, field))
        tap_diag("got %d %s field '%s': %s", e.http_status, e.code ? e.code : "(null)", e.field, json ? json : "");
    if (rc == 0)
        sdw_job_request_free(&r);
    free(json);
    free(body);
}

static void test_fields(void)
{
    const char *xf = "{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\"";
    expect_field(fmt_alloc("%s,\"init_image\":\"%s\",\"strength\":0}", xf, png_b64), 400, SDW_API_INVALID_VALUE,
                 "strength", "strength 0");
    expect_field(gen(",\"steps\":0"), 400, SDW_API_INVALID_VALUE, "steps", "steps 0");
    expect_field(fmt_alloc("%s}", xf), 400, SDW_API_INVALID_REQUEST, "init_image", "a missing image");
    expect_field(fmt_alloc("%s,\"input_image\":\"@@\"}", xf), 400, SDW_API_INVALID_VALUE, "init_image",
                 "bad base64 in the alias input_image (the canonical name)");
    expect_field(fmt_alloc("%s,\"init_image\":\"aGVsbG8=\"}", xf), 415, SDW_API_UNSUPPORTED_MEDIA_TYPE, "init_image",
                 "an image that is not one");
    expect_field(gen(",\"seed\":18446744073709551616"), 400, SDW_API_INVALID_VALUE, "seed", "seed 2^64");
    expect_field(gen(",\"seed\":-1"), 400, SDW_API_INVALID_VALUE, "seed", "seed -1");
    expect_field(gen(",\"seed\":-99999999999999999999"), 400, SDW_API_INVALID_VALUE, "seed",
                 "a seed below -2^63 (caught before json-c saturates it)");
    expect_field(gen(",\"x\\\"y\":99999999999999999999"), 400, SDW_API_INVALID_VALUE, "",
                 "an unknown member that is no identifier is not echoed as a field");

    sdw_api_error e;
    sdw_api_fail(&e, 404, SDW_API_NOT_FOUND, "no such job");
    char *json = sdw_api_error_json(&e);
    tap_ok(json && strcmp(json, "{\"error\":{\"code\":\"not_found\",\"message\":\"no such job\"}}") == 0,
           "an error of no field has no \"field\": %s", json);
    free(json);
}

/* A seed beyond 2^64 - 1 says so, and random seeds cover all 64 bits. */
static void test_seed_range(void)
{
    sdw_job_request r;
    sdw_api_error e;
    char *b = gen(",\"seed\":18446744073709551616");
    parse_str(b, &r, &e, NULL);
    tap_ok(strstr(e.message, "seed") && strstr(e.message, "18446744073709551615"),
           "seed 2^64: the message gives the range: %s", e.message);
    free(b);
    b = gen(",\"seed\":11630110443127060619");
    int rc = parse_str(b, &r, &e, NULL);
    char *pj = rc ? NULL : sdw_job_request_params_json(&r);
    tap_ok(rc == 0 && r.seed == 11630110443127060619ull && pj && strstr(pj, "\"seed\":11630110443127060619,"),
           "a seed above 2^63 is kept exactly, in the params JSON too");
    free(pj);
    sdw_job_request_free(&r);
    free(b);
    uint64_t all_or = 0, all_and = UINT64_MAX;
    int high = 0;
    b = gen("");
    for (int i = 0; i < 64; i++) {
        if (parse_str(b, &r, &e, NULL) == 0) {
            all_or |= r.seed, all_and &= r.seed;
            high += r.seed >> 63;
        }
        sdw_job_request_free(&r);
    }
    free(b);
    /* Each check fails by chance with probability about 2^-57 or less. */
    tap_ok(all_or == UINT64_MAX && all_and == 0 && high > 0 && high < 64,
           "64 server-chosen seeds set and clear every bit (%d of them at or above 2^63)", high);
}

/* A request around a base64 image file; steals img. */
static char *with_image(const char *op, const char *member, unsigned char *img, size_t len, const char *extra)
{
    char *b64 = sdw_base64_encode(img, len);
    char *body = fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"%s\":\"%s\"%s}", op,
                           member, b64, extra);
    free(b64);
    free(img);
    return body;
}

static char *png_b64_of(int w, int h)
{
    size_t len;
    unsigned char *png = fx_png(w, h, 8, PNG_COLOR_TYPE_RGB, &len);
    char *b64 = sdw_base64_encode(png, len);
    free(png);
    return b64;
}

/* Parses body, then decodes its images as the pool does before queueing. */
static void expect_images(char *body, const char *code, const char *field, const char *what)
{
    sdw_job_request r;
    sdw_api_error e;
    sdw_image init, mask;
    int rc = parse_str(body, &r, &e, NULL);
    if (rc == 0) {
        rc = sdw_job_request_decode_images(&r, 1024 * 1024, &init, &mask, &e);
        sdw_job_request_free(&r);
    }
    if (!code) {
        if (!tap_ok(rc == 0 && init.pixels, "accepts %s", what))
            tap_diag("got %d %s: %s", e.http_status, e.code, e.message);
        if (rc == 0)
            sdw_image_free(&init), sdw_image_free(&mask);
    } else {
        int good = rc < 0 && e.http_status == 400 && strcmp(e.code, code) == 0 && strcmp(e.field, field) == 0;
        if (!tap_ok(good, "rejects %s: 400 %s naming %s", what, code, field))
            tap_diag("got rc=%d %d %s field '%s': %s", rc, e.http_status, e.code ? e.code : "", e.field, e.message);
        else
            tap_diag("%s", e.message);
    }
    free(body);
}

static void test_decode_images(void)
{
    size_t len;
    unsigned char *f;
    const char *T = "image_transform", *I = "image_inpaint";
    f = fx_png(64, 64, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "init_image", f, len, ""), NULL, NULL,
                  "a 64x64 PNG");
    f = fx_png(64, 64, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "init_image", f, len - 40, ""), SDW_API_INVALID_INIT_IMAGE, "init_image",
                  "a truncated PNG");
    f = fx_png(64, 64, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "input_image", f, len - 40, ""), SDW_API_INVALID_INIT_IMAGE, "init_image",
                  "a truncated PNG sent as input_image");
    f = fx_png_declared(20000, 20000, &len);
    expect_images(with_image(T, "init_image", f, len, ""), SDW_API_INVALID_INIT_IMAGE, "init_image",
                  "a PNG declaring 20000x20000");
    f = fx_png(1032, 1024, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "init_image", f, len, ""),
                  SDW_API_INVALID_INIT_IMAGE, "init_image", "a 1032x1024 PNG over max_pixels");
    f = fx_jpeg(64, 64, JCS_CMYK, 0, &len);
    expect_images(with_image(T, "init_image", f, len, ""),
                  SDW_API_INVALID_INIT_IMAGE, "init_image", "a CMYK JPEG");
    f = fx_jpeg(64, 64, JCS_YCCK, 0, &len);
    expect_images(with_image(T, "init_image", f, len, ""),
                  SDW_API_INVALID_INIT_IMAGE, "init_image", "a YCCK JPEG");
    f = fx_jpeg(64, 64, JCS_YCbCr, 0, &len);
    expect_images(with_image(T, "init_image", f, len, ""), NULL, NULL,
                  "a 64x64 JPEG");
    f = fx_jpeg(64, 64, JCS_YCbCr, 0, &len);
    expect_images(with_image(T, "init_image", f, len / 2, ""), SDW_API_INVALID_INIT_IMAGE, "init_image",
                  "a truncated JPEG");
    f = fx_png(71, 64, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "init_image", f, len, ""), NULL, NULL,
                  "a 71x64 PNG (64x64 on the grid)");
    f = fx_png(63, 64, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "init_image", f, len, ""),
                  SDW_API_INVALID_INIT_IMAGE, "init_image", "a 63x64 PNG (56x64 on the grid)");
    f = fx_png(2056, 64, 8, PNG_COLOR_TYPE_RGB, &len);
    expect_images(with_image(T, "init_image", f, len, ""),
                  SDW_API_INVALID_INIT_IMAGE, "init_image", "a 2056x64 PNG");

    char *init = png_b64_of(64, 72), mask_extra[16384];
    f = fx_png(64, 72, 8, PNG_COLOR_TYPE_GRAY, &len);
    char *m = sdw_base64_encode(f, len);
    free(f);
    snprintf(mask_extra, sizeof mask_extra, ",\"mask_image\":\"%s\"", m);
    free(m);
    expect_images(fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"init_image\":\"%s\"%s}", I,
                            init, mask_extra), NULL, NULL, "inpaint with a mask of the image's size");
    f = fx_png(64, 64, 8, PNG_COLOR_TYPE_GRAY, &len);
    m = sdw_base64_encode(f, len);
    free(f);
    snprintf(mask_extra, sizeof mask_extra, ",\"mask_image\":\"%s\"", m);
    free(m);
    expect_images(fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"init_image\":\"%s\"%s}", I,
                            init, mask_extra), SDW_API_INVALID_MASK_IMAGE, "mask_image",
                  "a 64x64 mask for a 64x72 image");
    f = fx_png(64, 72, 8, PNG_COLOR_TYPE_GRAY, &len);
    m = sdw_base64_encode(f, len - 30);
    free(f);
    snprintf(mask_extra, sizeof mask_extra, ",\"mask_image\":\"%s\"", m);
    free(m);
    expect_images(fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"init_image\":\"%s\"%s}", I,
                            init, mask_extra), SDW_API_INVALID_MASK_IMAGE, "mask_image", "a truncated mask");
    f = fx_jpeg(64, 72, JCS_CMYK, 0, &len);
    m = sdw_base64_encode(f, len);
    free(f);
    snprintf(mask_extra, sizeof mask_extra, ",\"mask_image\":\"%s\"", m);
    free(m);
    expect_images(fmt_alloc("{\"operation\":\"%s\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\",\"init_image\":\"%s\"%s}", I,
                            init, mask_extra), SDW_API_INVALID_MASK_IMAGE, "mask_image", "a CMYK mask");
    free(init);

    sdw_job_request r;
    sdw_api_error e;
    sdw_image a, b;
    char *body = gen("");
    parse_str(body, &r, &e, NULL);
    tap_ok(sdw_job_request_decode_images(&r, 1024 * 1024, &a, &b, &e) == 0 && !a.pixels && !b.pixels,
           "a generation has no images to decode");
    sdw_job_request_free(&r);
    free(body);
}

/* The engine's second line: what it takes from the ring is checked as
 * strictly as what the pool took from the client. */
static void test_ring_checks(void)
{
    sdw_job_request r, back;
    sdw_api_error e;
    char *b = fmt_alloc("{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"x\","
                        "\"init_image\":\"%s\"}", png_b64);
    int rc = parse_str(b, &r, &e, NULL);
    r.strength = 0;
    size_t n = 0;
    unsigned char *blob = rc ? NULL : sdw_job_request_serialize(&r, &n);
    rc = blob ? sdw_job_request_deserialize(blob, n, &back, &e) : 0;
    tap_ok(rc < 0 && strcmp(e.field, "strength") == 0, "a ring entry with strength 0 is refused: %s", e.message);
    free(blob);
    sdw_job_request_free(&r);
    free(b);
}

static void test_base64(void)
{
    static const struct {
        const char *in, *out;
    } v[] = {{"", ""}, {"Zg==", "f"}, {"Zm8=", "fo"}, {"Zm9v", "foo"}, {"Zm9vYg==", "foob"},
             {"Zm9vYmE=", "fooba"}, {"Zm9vYmFy", "foobar"}, {"Zg", "f"}, {"Zm8", "fo"}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        unsigned char *out;
        size_t n;
        int rc = sdw_base64_decode(v[i].in, strlen(v[i].in), 100, &out, &n);
        tap_ok(rc == 0 && n == strlen(v[i].out) && memcmp(out, v[i].out, n) == 0, "base64 \"%s\"", v[i].in);
        free(out);
        if (i < 7) {
            char *enc = sdw_base64_encode((const unsigned char *)v[i].out, strlen(v[i].out));
            tap_ok(enc && strcmp(enc, v[i].in) == 0, "encode \"%s\"", v[i].out);
            free(enc);
        }
    }
    unsigned char *out;
    size_t n;
    tap_ok(sdw_base64_decode("Zm9vYmFy", 8, 5, &out, &n) == SDW_EINVAL, "decode over max_out");
    tap_ok(sdw_base64_decode("Z===", 4, 5, &out, &n) == SDW_EFORMAT, "Z=== rejected");
    tap_ok(sdw_base64_decode("Zg=a", 4, 5, &out, &n) == SDW_EFORMAT, "data after padding rejected");
}

static void test_error_json(void)
{
    sdw_api_error e;
    sdw_api_fail(&e, 400, SDW_API_INVALID_VALUE, "quote \" backslash \\ newline \n tab \t bell \x07 slash / end");
    char *s = sdw_api_error_json(&e);
    tap_ok(s != NULL, "error JSON rendered");
    tap_ok(s && strchr(s, '\n') == NULL && strchr(s, '\t') == NULL && strchr(s, '\x07') == NULL,
           "no raw control characters in error JSON");
    json_object *o = s ? json_tokener_parse(s) : NULL, *err, *code, *msg;
    int ok = o && json_object_object_get_ex(o, "error", &err) && json_object_object_get_ex(err, "code", &code) &&
             json_object_object_get_ex(err, "message", &msg);
    tap_ok(ok && strcmp(json_object_get_string(code), "invalid_value") == 0, "error.code round-trips");
    tap_ok(ok && strcmp(json_object_get_string(msg), e.message) == 0, "error.message round-trips with escapes");
    json_object_put(o);
    free(s);

    /* A message clipped in the middle of a multi-byte character stays UTF-8. */
    char longmsg[1200];
    memset(longmsg, 'a', 510);
    strcpy(longmsg + 510, "\xe7\x8c\xab\xe7\x8c\xab");
    sdw_api_fail(&e, 400, SDW_API_INVALID_VALUE, "%s", longmsg);
    tap_ok(strlen(e.message) == 510, "truncated message drops the partial character");
    s = sdw_api_error_json(&e);
    json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    o = json_tokener_parse_ex(tok, s, (int)strlen(s));
    tap_ok(o != NULL, "clipped message renders valid UTF-8 JSON");
    json_object_put(o);
    json_tokener_free(tok);
    free(s);

    /* Unknown operation names are echoed, clipped, inside valid JSON. */
    sdw_job_request r;
    char *b = fmt_alloc("{\"operation\":\"x\\\"y\\n%s\"}", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz");
    parse_str(b, &r, &e, NULL);
    s = sdw_api_error_json(&e);
    o = json_tokener_parse(s);
    tap_ok(o != NULL && strcmp(e.code, SDW_API_UNKNOWN_OPERATION) == 0, "hostile operation name renders as valid JSON");
    json_object_put(o);
    free(s);
    free(b);

    /* 63 ASCII bytes then a 3-byte character: clipping at 64 bytes must not
     * leave half of it inside the message. */
    b = fmt_alloc("{\"operation\":\"%s\xe7\x8c\xab\"}", "ooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo");
    parse_str(b, &r, &e, NULL);
    s = sdw_api_error_json(&e);
    tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    o = json_tokener_parse_ex(tok, s, (int)strlen(s));
    tap_ok(o != NULL && strcmp(e.code, SDW_API_UNKNOWN_OPERATION) == 0, "operation name clipped at a character boundary");
    json_object_put(o);
    json_tokener_free(tok);
    free(s);
    free(b);
    expect_err(fmt_alloc("{\"operation\":\"image_generation\\u0000x\",\"hive_id\":\"h\",\"model\":\"m\",\"prompt\":\"p\"}"),
               400, SDW_API_UNKNOWN_OPERATION, "operation with an embedded NUL");
}

static void test_serialize(void)
{
    sdw_job_request r, back;
    sdw_api_error e;
    char *b = fmt_alloc("{\"operation\":\"image_inpaint\",\"hive_id\":\"h\",\"model\":\"org/m\",\"prompt\":\"a \\\"cat\\\" \xe7\x8c\xab\","
                        "\"negative_prompt\":\"dog\",\"steps\":33,\"guidance_scale\":0.1,\"seed\":18446744073709551615,"
                        "\"sampler\":\"ddim\",\"eta\":0.3,\"clip_skip\":1,\"strength\":0.35,\"worker_id\":\"w\","
                        "\"init_image\":\"%s\",\"mask_image\":\"%s\"}", png_b64, jpeg_b64);
    int rc = parse_str(b, &r, &e, NULL);
    tap_ok(rc == 0, "inpaint request for the round trip");
    size_t n = 0;
    unsigned char *blob = sdw_job_request_serialize(&r, &n);
    tap_ok(blob != NULL && n > 16, "serialised");
    rc = sdw_job_request_deserialize(blob, n, &back, &e);
    tap_ok(rc == 0, "deserialised");
    tap_ok(back.op == r.op && strcmp(back.prompt, r.prompt) == 0 && strcmp(back.negative_prompt, "dog") == 0 &&
               strcmp(back.model, "org/m") == 0 && strcmp(back.worker_id, "w") == 0 && back.steps == 33 &&
               back.guidance_scale == r.guidance_scale && back.seed == UINT64_MAX && !back.seed_random &&
               back.sampler == SDW_SAMPLER_DDIM && back.eta == r.eta && back.clip_skip == 1 &&
               back.strength == r.strength,
           "all parameters survive the round trip exactly");
    tap_ok(back.init_image.len == r.init_image.len && memcmp(back.init_image.data, r.init_image.data, r.init_image.len) == 0 &&
               back.mask_image.format == SDW_IMAGE_JPEG && back.mask_image.len == sizeof jpeg_bytes,
           "images survive the round trip");
    sdw_job_request_free(&back);
    tap_ok(sdw_job_request_deserialize(blob, n - 1, &back, &e) < 0, "truncated blob rejected");
    blob[0] = 'X';
    tap_ok(sdw_job_request_deserialize(blob, n, &back, &e) < 0, "bad magic rejected");
    free(blob);
    sdw_job_request_free(&r);
    free(b);

    b = gen(",\"guidance_scale\":7.123456789012345678");
    parse_str(b, &r, &e, NULL);
    blob = sdw_job_request_serialize(&r, &n);
    rc = sdw_job_request_deserialize(blob, n, &back, &e);
    tap_ok(rc == 0 && back.seed == r.seed && back.seed_random && back.width == 512 &&
               back.guidance_scale == r.guidance_scale,
           "random seed and its flag survive; doubles exact");
    char *pj = sdw_job_request_params_json(&r);
    tap_ok(pj && strstr(pj, "\"seed_random\":true") && strstr(pj, "\"steps\":20"), "params JSON reports the chosen seed");
    if (pj)
        tap_diag("%s", pj);
    free(pj);
    sdw_job_request_free(&back);
    sdw_job_request_free(&r);
    free(blob);
    free(b);
}

/* A Turbo-like model with its own defaults, and one (sd2) with only a size. */
static void turbo_defaults(void *ctx, const char *model, sdw_contract_defaults *d)
{
    (*(int *)ctx)++;
    if (!strcmp(model, "turbo")) {
        d->steps = 1;
        d->guidance_scale = 0;
        d->sampler = SDW_SAMPLER_EULER_A;
    } else if (!strcmp(model, "sd2")) {
        d->width = d->height = 768;
        d->sdxl = 0;
    } else if (!strcmp(model, "sdxl")) {
        d->width = d->height = 1024;
        d->sdxl = 1;
    }
}

/* SDXL's micro-conditioning fields and the given/absent negative prompt,
 * through the ring form and back. */
static void test_sdxl_fields(void)
{
    int calls = 0;
    sdw_contract_limits lim = sdw_contract_default_limits();
    lim.model_defaults = turbo_defaults;
    lim.model_defaults_ctx = &calls;
    sdw_job_request r, back;
    sdw_api_error e;
    char *b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sdxl\",\"prompt\":\"a cat\","
                        "\"original_size\":{\"width\":2048,\"height\":1536},\"crops_coords_top_left\":{\"top\":0,"
                        "\"left\":64},\"target_size\":{\"height\":1024,\"width\":1024}}");
    int rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc == 0 && r.width == 1024 && r.original_width == 2048 && r.original_height == 1536 && r.has_crops &&
               r.crop_top == 0 && r.crop_left == 64 && r.target_width == 1024 && r.target_height == 1024 &&
               !r.negative_prompt_given && r.negative_prompt && !r.negative_prompt[0],
           "an SDXL model takes original_size, crops_coords_top_left, target_size; no negative prompt given (%s)",
           e.message);
    size_t len = 0;
    unsigned char *blob = rc ? NULL : sdw_job_request_serialize(&r, &len);
    rc = blob ? sdw_job_request_deserialize(blob, len, &back, &e) : -1;
    tap_ok(rc == 0 && back.original_width == 2048 && back.original_height == 1536 && back.has_crops &&
               back.crop_left == 64 && back.target_width == 1024 && !back.negative_prompt_given,
           "they survive the ring form, and so does the missing negative prompt (%s)", rc ? e.message : "");
    if (!rc)
        sdw_job_request_free(&back);
    free(blob);
    sdw_job_request_free(&r);
    free(b);
    b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sdxl\",\"prompt\":\"a cat\","
                  "\"negative_prompt\":\"\"}");
    rc = parse_str(b, &r, &e, &lim);
    blob = rc ? NULL : sdw_job_request_serialize(&r, &len);
    int rc2 = blob ? sdw_job_request_deserialize(blob, len, &back, &e) : -1;
    tap_ok(rc == 0 && r.negative_prompt_given && !r.has_crops && !r.original_width && rc2 == 0 &&
               back.negative_prompt_given,
           "an explicit \"\" negative prompt is given, through the ring form too");
    if (!rc2)
        sdw_job_request_free(&back);
    if (!rc)
        sdw_job_request_free(&r);
    free(blob);
    free(b);
    expect_err_lim(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sd2\","
                             "\"prompt\":\"a cat\",\"target_size\":{\"width\":512,\"height\":512}}"),
                   400, SDW_API_INVALID_VALUE, "target_size for an SD 2 model", &lim);
    b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sd2\",\"prompt\":\"a cat\","
                  "\"crops_coords_top_left\":{\"top\":0,\"left\":0}}");
    rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc < 0 && !strcmp(e.field, "crops_coords_top_left") && strstr(e.message, "SDXL"),
           "crops for a non-SDXL model name the field: %s", e.message);
    if (!rc)
        sdw_job_request_free(&r);
    free(b);
    static const char *const bad_pairs[] = {
        ",\"original_size\":{\"width\":0,\"height\":512}", ",\"original_size\":[512,512]",
        ",\"target_size\":{\"width\":512}", ",\"crops_coords_top_left\":{\"top\":-1,\"left\":0}",
        ",\"crops_coords_top_left\":{\"top\":1,\"left\":0,\"x\":2}", ",\"target_size\":{\"width\":1.5,\"height\":8}",
    };
    for (size_t i = 0; i < sizeof bad_pairs / sizeof bad_pairs[0]; i++)
        expect_err(gen(bad_pairs[i]), 400, SDW_API_INVALID_VALUE, bad_pairs[i]);
}

static void test_model_defaults(void)
{
    int calls = 0;
    sdw_contract_limits lim = sdw_contract_default_limits();
    lim.model_defaults = turbo_defaults;
    lim.model_defaults_ctx = &calls;
    sdw_job_request r;
    sdw_api_error e;
    char *b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"turbo\","
                        "\"prompt\":\"a cat\"}");
    int rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc == 0 && calls == 1 && r.steps == 1 && r.guidance_scale == 0 && r.sampler == SDW_SAMPLER_EULER_A &&
               r.width == 512,
           "a bare request takes the model's steps, guidance and sampler (%d %g %d)", r.steps, r.guidance_scale,
           r.sampler);
    if (!rc)
        sdw_job_request_free(&r);
    free(b);
    b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"turbo\","
                  "\"prompt\":\"a cat\",\"steps\":4,\"guidance_scale\":1.5,\"sampler\":\"ddim\",\"eta\":0.5}");
    rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc == 0 && r.steps == 4 && r.guidance_scale == 1.5 && r.sampler == SDW_SAMPLER_DDIM,
           "fields the request gives win over the model's (%s)", e.message);
    if (!rc)
        sdw_job_request_free(&r);
    free(b);
    b = fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sd2\","
                  "\"prompt\":\"a cat\",\"height\":512}");
    rc = parse_str(b, &r, &e, &lim);
    tap_ok(rc == 0 && r.width == 768 && r.height == 512 && r.steps == 20 && r.guidance_scale == 7.5,
           "a model's size fills the side left out; other defaults stay built in (%dx%d)", r.width, r.height);
    if (!rc)
        sdw_job_request_free(&r);
    free(b);
    /* Defaults obey the same limits as given values. */
    lim.max_pixels = 600 * 600;
    expect_err_lim(fmt_alloc("{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sd2\","
                             "\"prompt\":\"a cat\"}"),
                   400, SDW_API_INVALID_VALUE, "a model's default size beyond max_pixels", &lim);
    /* A transform's strength is checked against the model's steps. */
    lim.max_pixels = 1024 * 1024;
    expect_err_lim(xform_model("turbo", "image_transform", ",\"strength\":0.5"), 400, SDW_API_INVALID_VALUE,
                   "strength 0.5 with the model's 1 step", &lim);
}

int main(void)
{
    png_b64 = sdw_base64_encode(png_bytes, sizeof png_bytes);
    jpeg_b64 = sdw_base64_encode(jpeg_bytes, sizeof jpeg_bytes);
    test_defaults();
    test_ranges();
    test_seed();
    test_strings();
    test_structure();
    test_images();
    test_base64();
    test_error_json();
    test_serialize();
    test_fields();
    test_seed_range();
    test_decode_images();
    test_ring_checks();
    test_model_defaults();
    test_sdxl_fields();
    free(png_b64);
    free(jpeg_b64);
    return tap_done();
}
