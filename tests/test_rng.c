/* The generator against known MT19937 outputs, against its own stream
 * accounting, and bit for bit against torch.randn dumps
 * (tests/fixtures/randn.safetensors, cases listed in randn_cases.json). */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "model/safetensors.h"
#include "pipeline/rng.h"
#include "tap.h"

static void test_mt19937_reference(void)
{
    /* The reference implementation's (and std::mt19937's) outputs for the
     * default seed 5489; the 10000th is the value C++11 specifies. */
    static const uint32_t first[5] = {3499211612u, 581869302u, 3890346734u,
                                      3586334585u, 545404204u};
    sdw_rng r;
    sdw_rng_seed(&r, 5489);
    int ok = 1;
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++) {
        v = sdw_rng_u32(&r);
        if (i < 5 && v != first[i]) {
            tap_diag("output %d: got %" PRIu32 ", want %" PRIu32, i, v, first[i]);
            ok = 0;
        }
    }
    tap_ok(ok, "seed 5489: first five outputs match the MT19937 reference");
    tap_ok(v == 4123659995u, "seed 5489: 10000th output is 4123659995 (got %" PRIu32 ")", v);
}

static void test_seed_truncation(void)
{
    /* torch seeds the state from the low 32 bits of the 64-bit seed. */
    sdw_rng a, b;
    sdw_rng_seed(&a, 5);
    sdw_rng_seed(&b, (UINT64_C(1) << 32) + 5);
    int same = 1;
    for (int i = 0; i < 2000; i++)
        same &= sdw_rng_u32(&a) == sdw_rng_u32(&b);
    tap_ok(same, "seeds 5 and 2^32 + 5 give the same stream");
}

static void test_stream_accounting(void)
{
    /* A large draw uses one 32-bit output per element plus 16 more when the
     * count is not a multiple of 16; the next output must follow on. */
    static const size_t sizes[] = {16, 17, 31, 32, 40, 768};
    static float buf[768];
    int ok = 1;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        size_t used = n + (n % 16 ? 16 : 0);
        sdw_rng a, b;
        sdw_rng_seed(&a, 99);
        sdw_rng_seed(&b, 99);
        sdw_rng_randn(&a, buf, n);
        for (size_t i = 0; i < used; i++)
            sdw_rng_u32(&b);
        if (sdw_rng_u32(&a) != sdw_rng_u32(&b)) {
            tap_diag("randn(%zu) did not consume %zu outputs", n, used);
            ok = 0;
        }
    }
    tap_ok(ok, "randn(n >= 16) consumes n (+16 for a partial block) 32-bit outputs");

    /* Small draws share one cached Box-Muller pair: randn(1) twice equals
     * randn(2), and a large draw in between neither uses nor clears it. */
    sdw_rng a, b;
    float two[2], one0, one1;
    sdw_rng_seed(&a, 11);
    sdw_rng_randn(&a, two, 2);
    sdw_rng_seed(&b, 11);
    sdw_rng_randn(&b, &one0, 1);
    sdw_rng_randn(&b, &one1, 1);
    tap_ok(memcmp(&two[0], &one0, sizeof(float)) == 0 &&
               memcmp(&two[1], &one1, sizeof(float)) == 0,
           "randn(1), randn(1) equals randn(2)");
    tap_ok(b.has_next_normal == 0 && a.has_next_normal == 0,
           "an even number of scalar normals leaves no cached sample");
    sdw_rng_seed(&b, 11);
    sdw_rng_randn(&b, &one0, 1);
    tap_ok(b.has_next_normal == 1, "one scalar normal leaves the sine half cached");
    sdw_rng_randn(&b, buf, 32);
    tap_ok(b.has_next_normal == 1, "a large draw keeps the cached scalar sample");
}

static int json_seed(json_object *o, uint64_t *seed)
{
    if (json_object_is_type(o, json_type_int)) {
        *seed = json_object_get_uint64(o);
        return 0;
    }
    if (json_object_is_type(o, json_type_string)) {
        const char *s = json_object_get_string(o);
        char *end;
        errno = 0;
        *seed = strtoull(s, &end, 10);
        return (errno || end == s || *end) ? -1 : 0;
    }
    return -1;
}

static void check_draw(const sdw_st_file *st, sdw_rng *r, uint64_t seed, json_object *draw)
{
    json_object *jname, *jshape;
    if (!json_object_object_get_ex(draw, "name", &jname) ||
        !json_object_object_get_ex(draw, "shape", &jshape) ||
        !json_object_is_type(jshape, json_type_array)) {
        tap_ok(0, "seed %" PRIu64 ": malformed draw entry in randn_cases.json", seed);
        return;
    }
    const char *name = json_object_get_string(jname);
    size_t numel = 1;
    for (size_t i = 0; i < json_object_array_length(jshape); i++)
        numel *= (size_t)json_object_get_int64(json_object_array_get_idx(jshape, i));

    const sdw_st_tensor *t = sdw_st_find(st, name);
    if (!t || t->numel != (int64_t)numel) {
        tap_ok(0, "%s: tensor missing or with %" PRId64 " elements instead of %zu", name,
               t ? t->numel : (int64_t)-1, numel);
        return;
    }
    float *want = malloc(numel * sizeof *want);
    float *got = malloc(numel * sizeof *got);
    sdw_error e = {0};
    int ok = want && got && sdw_st_to_f32(t, want, &e) == 0;
    if (!ok) {
        tap_ok(0, "%s: cannot read reference: %s", name, e.msg);
    } else {
        sdw_rng_randn(r, got, numel);
        size_t bad = numel;
        for (size_t i = 0; i < numel && bad == numel; i++)
            if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
                bad = i;
        ok = bad == numel;
        if (!ok)
            tap_diag("%s: first mismatch at %zu: %.9g, torch %.9g", name, bad,
                     (double)got[bad], (double)want[bad]);
        tap_ok(ok, "%s (%zu values) bit-identical to torch", name, numel);
    }
    free(want);
    free(got);
}

static void test_torch_fixture(void)
{
    json_object *cases = json_object_from_file(tap_fixture("randn_cases.json"));
    json_object *list = cases;
    if (cases && json_object_is_type(cases, json_type_object))
        json_object_object_get_ex(cases, "cases", &list);
    if (!list || !json_object_is_type(list, json_type_array) ||
        json_object_array_length(list) == 0) {
        tap_ok(0, "randn_cases.json readable with a list of cases");
        json_object_put(cases);
        return;
    }
    sdw_st_file st;
    sdw_error e = {0};
    if (sdw_st_open(&st, tap_fixture("randn.safetensors"), &e) != 0) {
        tap_ok(0, "open randn.safetensors: %s", e.msg);
        json_object_put(cases);
        return;
    }
    for (size_t c = 0; c < json_object_array_length(list); c++) {
        json_object *cs = json_object_array_get_idx(list, c);
        json_object *jseed, *draws;
        uint64_t seed;
        if (!json_object_object_get_ex(cs, "seed", &jseed) || json_seed(jseed, &seed) != 0 ||
            !json_object_object_get_ex(cs, "draws", &draws) ||
            !json_object_is_type(draws, json_type_array)) {
            tap_ok(0, "case %zu: malformed in randn_cases.json", c);
            continue;
        }
        /* One generator per case: the draws continue its stream as
         * successive torch.randn calls on one torch.Generator do. */
        sdw_rng r;
        sdw_rng_seed(&r, seed);
        for (size_t d = 0; d < json_object_array_length(draws); d++)
            check_draw(&st, &r, seed, json_object_array_get_idx(draws, d));
    }
    sdw_st_close(&st);
    json_object_put(cases);
}

int main(void)
{
    test_mt19937_reference();
    test_seed_truncation();
    test_stream_accounting();
    test_torch_fixture();
    return tap_done();
}
