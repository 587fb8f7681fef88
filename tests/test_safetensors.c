/* safetensors: round trips through the writer, half/bfloat16 conversions at
 * their edges, and every class of malformed file the parser must reject. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/half.h"
#include "model/safetensors.h"
#include "tap.h"

static char tmpdir[] = "/tmp/sdw-st-XXXXXX";

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* A file image: 8-byte length, header text, then dlen bytes of data. */
static uint8_t *image(const char *hdr, uint64_t claimed, size_t dlen, size_t *len)
{
    size_t h = strlen(hdr);
    *len = 8 + h + dlen;
    uint8_t *b = calloc(1, *len);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(claimed >> (8 * i));
    memcpy(b + 8, hdr, h);
    return b;
}

/* Parses hdr followed by dlen data bytes; checks the status and that the
 * message mentions `needle` (and a second string when given). */
static void expect(const char *what, const char *hdr, size_t dlen, int code, const char *needle,
                   const char *needle2)
{
    size_t len;
    uint8_t *b = image(hdr, strlen(hdr), dlen, &len);
    sdw_st_file f;
    sdw_error e = {0};
    int rc = sdw_st_parse(&f, b, len, &e);
    int ok = rc == code && (!needle || strstr(e.msg, needle)) && (!needle2 || strstr(e.msg, needle2));
    tap_ok(ok, "%s: rc %s, message mentions %s", what, sdw_status_name(rc), needle ? needle : "-");
    if (!ok)
        tap_diag("got: %s", e.msg);
    if (rc == 0)
        sdw_st_close(&f);
    free(b);
}

static void test_roundtrip(void)
{
    enum { N = 37 };
    float a[N], b[6], c[N];
    for (int i = 0; i < N; i++) {
        a[i] = sinf((float)i) * 1000.0f;
        c[i] = (float)i * 0.3f - 5.0f;
    }
    const float bvals[6] = {0.5f, -2.0f, 65504.0f, 1.0f / 16777216.0f, 3.14159f, 1e-3f};
    memcpy(b, bvals, sizeof b);
    const int64_t sa[2] = {1, N}, sb[3] = {1, 2, 3}, sc[1] = {N};
    const sdw_st_entry ents[4] = {
        {"alpha", SDW_DT_F32, 2, sa, a},
        {"beta.half", SDW_DT_F16, 3, sb, b},
        {"gamma", SDW_DT_BF16, 1, sc, c},
        {"scalar", SDW_DT_F32, 0, NULL, a},
    };
    const char *meta[4] = {"format", "pt", "note", "round \"trip\""};
    char path[256];
    snprintf(path, sizeof path, "%s/rt.safetensors", tmpdir);
    sdw_error e = {0};
    int rc = sdw_st_write(path, ents, 4, meta, 2, &e);
    tap_ok(rc == 0, "write three dtypes (%s)", e.msg);

    FILE *fp = fopen(path, "rb");
    uint8_t hdr8[8] = {0};
    char first = 0, last = 0;
    uint64_t n = 0;
    if (fp && fread(hdr8, 1, 8, fp) == 8) {
        for (int i = 7; i >= 0; i--)
            n = n << 8 | hdr8[i];
        first = (char)fgetc(fp);
        fseek(fp, (long)(8 + n - 1), SEEK_SET);
        last = (char)fgetc(fp);
    }
    if (fp)
        fclose(fp);
    tap_ok(n % 8 == 0 && first == '{' && (last == '}' || last == ' '),
           "header length %llu is 8-aligned, starts with '{', padded with spaces",
           (unsigned long long)n);

    sdw_st_file f;
    rc = sdw_st_open(&f, path, &e);
    if (!tap_ok(rc == 0, "reopen written file (%s)", e.msg))
        return;
    tap_ok(f.ntensors == 4, "4 tensors");
    tap_ok(f.nmeta == 2 && sdw_st_meta(&f, "format") && strcmp(sdw_st_meta(&f, "format"), "pt") == 0 &&
               sdw_st_meta(&f, "note") && strcmp(sdw_st_meta(&f, "note"), "round \"trip\"") == 0 &&
               !sdw_st_meta(&f, "missing"),
           "metadata read back");
    tap_ok(((uintptr_t)f.tensors[0].data - (uintptr_t)f.map) % 8 == 0, "data area is 8-aligned");
    const sdw_st_tensor *ta = sdw_st_find(&f, "alpha"), *tb = sdw_st_find(&f, "beta.half"),
                        *tc = sdw_st_find(&f, "gamma"), *ts = sdw_st_find(&f, "scalar");
    tap_ok(ta && tb && tc && ts && !sdw_st_find(&f, "delta"), "find by name");
    if (!(ta && tb && tc && ts)) {
        sdw_st_close(&f);
        return;
    }
    tap_ok(ta->dtype == SDW_DT_F32 && ta->ndim == 2 && ta->shape[0] == 1 && ta->shape[1] == N &&
               ta->numel == N && ta->nbytes == N * 4,
           "F32 dtype and shape");
    tap_ok(tb->dtype == SDW_DT_F16 && tb->ndim == 3 && tb->shape[2] == 3 && tb->nbytes == 12,
           "F16 dtype and shape");
    tap_ok(tc->dtype == SDW_DT_BF16 && tc->ndim == 1 && tc->nbytes == N * 2, "BF16 dtype and shape");
    tap_ok(ts->ndim == 0 && ts->numel == 1 && ts->nbytes == 4, "rank-0 tensor has one element");
    float out[N];
    int same = sdw_st_to_f32(ta, out, &e) == 0 && memcmp(out, a, sizeof a) == 0;
    tap_ok(same, "F32 values exact");
    same = sdw_st_to_f32(tb, out, &e) == 0;
    for (int i = 0; same && i < 6; i++)
        same = bits_of(out[i]) == bits_of(sdw_f16_to_f32(sdw_f32_to_f16(b[i])));
    tap_ok(same && out[0] == 0.5f && out[2] == 65504.0f && out[3] == b[3],
           "F16 values are the rounded inputs, representable ones exact");
    same = sdw_st_to_f32(tc, out, &e) == 0;
    for (int i = 0; same && i < N; i++)
        same = bits_of(out[i]) == bits_of(sdw_bf16_to_f32(sdw_f32_to_bf16(c[i]))) &&
               fabsf(out[i] - c[i]) <= fabsf(c[i]) / 256.0f;
    tap_ok(same, "BF16 values are the rounded inputs");
    sdw_st_close(&f);

    /* The same image parsed from memory yields the same tensors. */
    fp = fopen(path, "rb");
    static uint8_t img[4096];
    size_t len = fp ? fread(img, 1, sizeof img, fp) : 0;
    if (fp)
        fclose(fp);
    rc = sdw_st_parse(&f, img, len, &e);
    tap_ok(rc == 0 && f.ntensors == 4 && f.path == NULL && sdw_st_find(&f, "gamma"),
           "sdw_st_parse of the same bytes");
    if (rc == 0)
        sdw_st_close(&f);
}

static void test_f16(void)
{
    tap_ok(sdw_f16_to_f32(0x0001) == ldexpf(1, -24), "f16 smallest subnormal");
    tap_ok(sdw_f16_to_f32(0x03ff) == ldexpf(1023, -24), "f16 largest subnormal");
    tap_ok(sdw_f16_to_f32(0x0400) == ldexpf(1, -14), "f16 smallest normal");
    tap_ok(sdw_f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    tap_ok(sdw_f16_to_f32(0x3c00) == 1.0f && sdw_f16_to_f32(0xc000) == -2.0f, "f16 1 and -2");
    tap_ok(isinf(sdw_f16_to_f32(0x7c00)) && sdw_f16_to_f32(0xfc00) < 0 && isinf(sdw_f16_to_f32(0xfc00)),
           "f16 infinities");
    tap_ok(isnan(sdw_f16_to_f32(0x7e00)) && isnan(sdw_f16_to_f32(0x7c01)), "f16 NaNs");
    tap_ok(bits_of(sdw_f16_to_f32(0x8000)) == 0x80000000u, "f16 negative zero");

    tap_ok(sdw_f32_to_f16(65519.0f) == 0x7bff, "65519 rounds to f16 max");
    tap_ok(sdw_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to inf (tie to even)");
    tap_ok(sdw_f32_to_f16(1e10f) == 0x7c00 && sdw_f32_to_f16(-1e10f) == 0xfc00, "overflow to inf");
    tap_ok(sdw_f32_to_f16(ldexpf(1, -25)) == 0x0000, "2^-25 ties to zero (even)");
    tap_ok(sdw_f32_to_f16(ldexpf(3, -26)) == 0x0001, "1.5 * 2^-25 rounds to smallest subnormal");
    tap_ok(sdw_f32_to_f16(ldexpf(3, -25)) == 0x0002, "1.5 ulp subnormal ties to even (2)");
    tap_ok(sdw_f32_to_f16(ldexpf(5, -25)) == 0x0002, "2.5 ulp subnormal ties to even (2)");
    tap_ok(sdw_f32_to_f16(ldexpf(2047, -25)) == 0x0400, "subnormal rounding carries into the normal range");
    tap_ok(sdw_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00, "1 + half ulp ties to even");
    tap_ok(sdw_f32_to_f16(1.0f + ldexpf(3, -11)) == 0x3c02, "1 + 1.5 ulp ties to even (up)");
    tap_ok(sdw_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)) == 0x3c01, "above the tie rounds up");
    tap_ok(sdw_f32_to_f16(ldexpf(1, -30)) == 0 && sdw_f32_to_f16(-ldexpf(1, -30)) == 0x8000,
           "underflow keeps the sign");
    tap_ok((sdw_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (sdw_f32_to_f16(NAN) & 0x3ff) != 0, "NaN stays NaN");
    tap_ok(sdw_f32_to_f16(f32_of(0x7f800001u)) != 0x7c00, "signalling NaN payload does not become inf");

    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sdw_f16_to_f32((uint16_t)h);
        if (!isnan(f) && sdw_f32_to_f16(f) != h)
            bad++;
    }
    tap_ok(bad == 0, "every non-NaN f16 round trips (%d failures)", bad);
#ifdef __FLT16_MAX__
    /* The compiler's own conversion rounds to nearest even: compare with it. */
    uint32_t x = 12345;
    bad = 0;
    for (int i = 0; i < 2000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f = f32_of(x);
        if (isnan(f))
            continue;
        _Float16 r = (_Float16)f;
        uint16_t want;
        memcpy(&want, &r, 2);
        if (sdw_f32_to_f16(f) != want)
            bad++;
    }
    tap_ok(bad == 0, "f32->f16 agrees with the compiler's _Float16 on 2M random floats (%d differ)", bad);
#else
    tap_skip("no _Float16 in this compiler");
#endif
}

static void test_bf16(void)
{
    tap_ok(sdw_bf16_to_f32(0x3f80) == 1.0f && sdw_bf16_to_f32(0xc040) == -3.0f, "bf16 1 and -3");
    tap_ok(sdw_f32_to_bf16(1.0f + ldexpf(1, -8)) == 0x3f80, "bf16 tie to even (down)");
    tap_ok(sdw_f32_to_bf16(1.0f + ldexpf(3, -8)) == 0x3f82, "bf16 tie to even (up)");
    tap_ok(sdw_f32_to_bf16(1.0f + ldexpf(1, -8) + ldexpf(1, -20)) == 0x3f81, "bf16 above tie rounds up");
    tap_ok(sdw_f32_to_bf16(f32_of(0x7f7fffffu)) == 0x7f80, "FLT_MAX rounds to bf16 inf");
    tap_ok(sdw_f32_to_bf16(INFINITY) == 0x7f80 && sdw_f32_to_bf16(-INFINITY) == 0xff80, "bf16 infinities");
    tap_ok(isnan(sdw_bf16_to_f32(sdw_f32_to_bf16(NAN))), "NaN stays NaN");
    tap_ok(isnan(sdw_bf16_to_f32(sdw_f32_to_bf16(f32_of(0x7f800001u)))), "low-payload NaN stays NaN");
    tap_ok(sdw_bf16_to_f32(sdw_f32_to_bf16(f32_of(0x00010000u))) == f32_of(0x00010000u),
           "bf16 subnormal exact");
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sdw_bf16_to_f32((uint16_t)h);
        if (bits_of(f) != h << 16 || (!isnan(f) && sdw_f32_to_bf16(f) != h))
            bad++;
    }
    tap_ok(bad == 0, "every non-NaN bf16 round trips (%d failures)", bad);
}

static void test_convert_other(void)
{
    const double d[3] = {1.5, -1e300, 1e-50};
    const int32_t iv[2] = {1, 2};
    sdw_st_tensor t = {.name = "w", .dtype = SDW_DT_F64, .ndim = 1, .shape = {3}, .numel = 3,
                       .nbytes = 24, .data = d};
    float out[3];
    sdw_error e = {0};
    tap_ok(sdw_st_to_f32(&t, out, &e) == 0 && out[0] == 1.5f && isinf(out[1]) && out[1] < 0 &&
               out[2] == 0.0f,
           "F64 converts, overflow to -inf, underflow to 0");
    t.dtype = SDW_DT_I32;
    t.numel = 2;
    t.data = iv;
    int rc = sdw_st_to_f32(&t, out, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "I32") && strstr(e.msg, "'w'"),
           "integer tensor: unsupported, message names dtype and tensor (%s)", e.msg);

    /* Large enough to take the OpenMP path. */
    enum { BIG = 300000 };
    uint16_t *h = malloc(BIG * 2);
    float *o = malloc(BIG * 4);
    for (int i = 0; i < BIG; i++)
        h[i] = (uint16_t)(i * 7);
    sdw_st_tensor big = {.name = "big", .dtype = SDW_DT_F16, .ndim = 1, .shape = {BIG}, .numel = BIG,
                         .nbytes = BIG * 2, .data = h};
    int bad = sdw_st_to_f32(&big, o, &e) != 0;
    for (int i = 0; i < BIG && !bad; i++) {
        float want = sdw_f16_to_f32(h[i]);
        bad = isnan(want) ? !isnan(o[i]) : bits_of(o[i]) != bits_of(want);
    }
    tap_ok(!bad, "large F16 conversion (parallel) matches element-wise");
    free(h);
    free(o);
}

static void test_errors(void)
{
    sdw_st_file f;
    sdw_error e = {0};
    uint8_t small[5] = {0};
    tap_ok(sdw_st_parse(&f, small, 5, &e) == SDW_EFORMAT && strstr(e.msg, "too short"), "5-byte file");

    size_t len;
    uint8_t *b = image("{}", (uint64_t)SDW_ST_MAX_HEADER + 1, 0, &len);
    tap_ok(sdw_st_parse(&f, b, len, &e) == SDW_EFORMAT && strstr(e.msg, "exceeds the limit"),
           "header length over the limit (%s)", e.msg);
    free(b);
    b = image("{}", 1000, 0, &len);
    tap_ok(sdw_st_parse(&f, b, len, &e) == SDW_EFORMAT && strstr(e.msg, "past the end"),
           "header length past the end of the file (%s)", e.msg);
    free(b);
    b = image("{}", UINT64_MAX, 0, &len);
    tap_ok(sdw_st_parse(&f, b, len, &e) == SDW_EFORMAT, "header length 2^64-1");
    free(b);

    expect("empty header", "", 0, SDW_EFORMAT, "empty", NULL);
    expect("valid empty file", "{}", 0, 0, NULL, NULL);
    expect("space padding accepted", "{}      ", 0, 0, NULL, NULL);
    expect("truncated JSON", "{\"a\": {\"dtype\"", 0, SDW_EFORMAT, "not valid JSON", NULL);
    expect("bad JSON", "{\"a\" 1}", 0, SDW_EFORMAT, "not valid JSON", NULL);
    expect("non-object header", "[1, 2]  ", 0, SDW_EFORMAT, "not a JSON object", NULL);
    expect("trailing garbage", "{}  x", 0, SDW_EFORMAT, "after the JSON header", NULL);
    expect("second JSON value", "{}{}", 0, SDW_EFORMAT, "after the JSON header", NULL);
    expect("invalid UTF-8", "{\"\xff\xfe\": 1}", 0, SDW_EFORMAT, "not valid JSON", NULL);
    expect("entry not an object", "{\"w\": 3}", 0, SDW_EFORMAT, "'w'", "not an object");
    expect("missing dtype", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, SDW_EFORMAT,
           "'w'", "dtype");
    expect("unknown dtype", "{\"w\": {\"dtype\": \"F4\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
           SDW_EUNSUPPORTED, "'w'", "'F4'");
    expect("shape not an array", "{\"w\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}",
           4, SDW_EFORMAT, "'w'", "shape");
    expect("negative dimension",
           "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, SDW_EFORMAT,
           "'w'", "shape[0]");
    expect("fractional dimension",
           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.0], \"data_offsets\": [0, 4]}}", 4, SDW_EFORMAT,
           "'w'", "shape[0]");
    expect("too many dimensions",
           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
           SDW_EUNSUPPORTED, "'w'", "dimensions");
    expect("element count overflow",
           "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}",
           4, SDW_EFORMAT, "'w'", "overflows");
    expect("byte size overflow",
           "{\"w\": {\"dtype\": \"F64\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 4]}}", 4,
           SDW_EFORMAT, "'w'", "overflows");
    expect("dimension above INT64_MAX",
           "{\"w\": {\"dtype\": \"U8\", \"shape\": [18446744073709551615], \"data_offsets\": [0, 4]}}",
           4, SDW_EFORMAT, "'w'", NULL);
    expect("offsets not a pair", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}",
           4, SDW_EFORMAT, "'w'", "data_offsets");
    expect("negative offset",
           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4, SDW_EFORMAT,
           "'w'", "data_offsets");
    expect("end before begin", "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}",
           4, SDW_EFORMAT, "'w'", "end before");
    expect("end past data", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4,
           SDW_EFORMAT, "'w'", "past the data area");
    expect("size mismatch", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4,
           SDW_EFORMAT, "'w'", "needs 8");
    expect("overlap",
           "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
           " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
           12, SDW_EFORMAT, "'b' overlaps tensor 'a'", NULL);
    expect("gap",
           "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
           " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
           12, SDW_EFORMAT, "'b'", "gap");
    expect("uncovered trailing data",
           "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8, SDW_EFORMAT,
           "cover 4 of the 8", NULL);
    expect("data but no tensors", "{}", 4, SDW_EFORMAT, "no tensors", NULL);
    expect("zero-size tensors share an offset",
           "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]},"
           " \"b\": {\"dtype\": \"F16\", \"shape\": [2, 0], \"data_offsets\": [0, 0]},"
           " \"c\": {\"dtype\": \"BOOL\", \"shape\": [4], \"data_offsets\": [0, 4]}}",
           4, 0, NULL, NULL);
    expect("duplicate tensor name",
           "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
           " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
           8, SDW_EFORMAT, "'a'", "more than once");
    expect("duplicate name spelled with an escape",
           "{\"ab\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
           " \"a\\u0062\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
           2, SDW_EFORMAT, "'ab'", "more than once");
    expect("metadata not an object", "{\"__metadata__\": [1]}", 0, SDW_EFORMAT, "__metadata__", NULL);
    expect("metadata value not a string", "{\"__metadata__\": {\"k\": 1}}", 0, SDW_EFORMAT, "'k'", NULL);
    expect("key-like strings inside values are not keys",
           "{\"__metadata__\": {\"x\": \"{\\\"y\\\": \\\"z\\\"}\"}, \"w\": "
           "{\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
           1, 0, NULL, NULL);

    /* From a file: the message names the path. */
    char path[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
    FILE *fp = fopen(path, "wb");
    const char *hw = "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}";
    b = image(hw, strlen(hw), 4, &len);
    if (fp) {
        fwrite(b, 1, len, fp);
        fclose(fp);
    }
    free(b);
    int rc = sdw_st_open(&f, path, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, path) && strstr(e.msg, "'w'"),
           "file error names the file and tensor (%s)", e.msg);
    snprintf(path, sizeof path, "%s/nonexistent.safetensors", tmpdir);
    rc = sdw_st_open(&f, path, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, path), "missing file: not found, names it");
    rc = sdw_st_open(&f, tmpdir, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "regular file"), "a directory is refused");
}

static void test_write_errors(void)
{
    float x[2] = {1, 2};
    const int64_t s[1] = {2};
    sdw_error e = {0};
    char path[256];
    snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
    sdw_st_entry en[2] = {{"a", SDW_DT_F64, 1, s, x}, {"b", SDW_DT_F32, 1, s, x}};
    tap_ok(sdw_st_write(path, en, 1, NULL, 0, &e) == SDW_EUNSUPPORTED && strstr(e.msg, "F64"),
           "writing F64 is unsupported");
    en[0].dtype = SDW_DT_F32;
    en[1].name = "a";
    tap_ok(sdw_st_write(path, en, 2, NULL, 0, &e) == SDW_EINVAL && strstr(e.msg, "'a'"),
           "duplicate names refused");
    tap_ok(access(path, F_OK) != 0, "nothing written on error");
    snprintf(path, sizeof path, "%s/no/such/dir/w.safetensors", tmpdir);
    tap_ok(sdw_st_write(path, en, 1, NULL, 0, &e) == SDW_EIO && strstr(e.msg, path),
           "unwritable path: io error naming it");
    snprintf(path, sizeof path, "%s/empty.safetensors", tmpdir);
    sdw_st_file f;
    int ok = sdw_st_write(path, NULL, 0, NULL, 0, &e) == 0 && sdw_st_open(&f, path, &e) == 0;
    tap_ok(ok && f.ntensors == 0, "an empty file writes and reads (%s)", e.msg);
    if (ok)
        sdw_st_close(&f);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        tap_ok(0, "mkdtemp");
        return tap_done();
    }
    test_roundtrip();
    test_f16();
    test_bf16();
    test_convert_other();
    test_errors();
    test_write_errors();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        tap_diag("could not remove %s", tmpdir);
    return tap_done();
}
