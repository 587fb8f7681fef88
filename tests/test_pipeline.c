/* Whole pipelines against diffusers on the tiny random-weight models: every
 * case in tests/fixtures/pipeline/cases.json (txt2img with each sampler,
 * non-square sizes, no CFG, img2img, 4- and 9-channel inpainting), written by
 * tests/reference/fixtures_pipeline.py. Final latents within 1e-4 relative
 * error, pixels within 1. */
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "base/meminfo.h"
#include "fixture.h"
#include "model/safetensors.h"
#include "pipeline/pipeline.h"
#include "tap.h"

#define LATENT_TOL 1e-4

typedef struct loaded {
    char name[64];
    sdw_pipeline *p;
} loaded;

static sdw_backend *be;
static loaded models[16];
static int nmodels;

static sdw_pipeline *model(const char *name)
{
    for (int i = 0; i < nmodels; i++)
        if (!strcmp(models[i].name, name))
            return models[i].p;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", tap_fixture("models"), name);
    sdw_error e;
    sdw_pipeline *p = NULL;
    int rc = sdw_pipeline_load(&p, be, dir, NULL, &e);
    tap_ok(rc == 0, "%s loads%s%s", name, rc ? ": " : "", rc ? e.msg : "");
    if (rc || nmodels == 16)
        return NULL;
    snprintf(models[nmodels].name, sizeof models[0].name, "%s", name);
    models[nmodels++].p = p;
    return p;
}

static const char *str(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                                             : NULL;
}

static double num(json_object *o, const char *key, double dflt)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && !json_object_is_type(v, json_type_null) ? json_object_get_double(v)
                                                                                            : dflt;
}

static int load_image(sdw_image *img, const char *file, int grey)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", tap_fixture("pipeline"), file);
    sdw_error e;
    int rc = sdw_image_load(img, path, grey, &e);
    if (rc)
        tap_diag("%s", e.msg);
    return rc;
}

static int count_steps(void *ctx, sdw_pipeline *p, int step, int total)
{
    int *calls = ctx;
    *calls = step;
    return 0;
}

/* SDXL's {"width": W, "height": H} or {"top": T, "left": L}; absent or null
 * leaves a and b. */
static void pair(json_object *c, const char *key, const char *ka, const char *kb, int *a, int *b)
{
    json_object *v;
    if (json_object_object_get_ex(c, key, &v) && json_object_is_type(v, json_type_object)) {
        *a = (int)num(v, ka, *a);
        *b = (int)num(v, kb, *b);
    }
}

static void run_case(const char *dir, json_object *c)
{
    const char *name = str(c, "name"), *kind = str(c, "kind");
    sdw_pipeline *p = model(str(c, "model"));
    if (!p) {
        tap_ok(0, "%s: model available", name);
        return;
    }
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, !strcmp(kind, "img2img") ? SDW_GEN_IMG2IMG
                             : !strcmp(kind, "inpaint") ? SDW_GEN_INPAINT
                                                        : SDW_GEN_TXT2IMG);
    gp.prompt = str(c, "prompt");
    gp.negative_prompt = str(c, "negative_prompt");
    gp.steps = (int)num(c, "steps", 20);
    gp.guidance = (float)num(c, "guidance", 7.5);
    gp.width = (int)num(c, "width", 64);
    gp.height = (int)num(c, "height", 64);
    gp.seed = (uint64_t)num(c, "seed", 0);
    gp.sampler = str(c, "sampler");
    gp.eta = (float)num(c, "eta", 0);
    gp.strength = num(c, "strength", gp.strength);
    pair(c, "original_size", "width", "height", &gp.original_width, &gp.original_height);
    pair(c, "crops_coords_top_left", "top", "left", &gp.crop_top, &gp.crop_left);
    pair(c, "target_size", "width", "height", &gp.target_width, &gp.target_height);
    sdw_image init = {0}, mask = {0}, out = {0};
    if (str(c, "init_image") && load_image(&init, str(c, "init_image"), 0)) {
        tap_ok(0, "%s: init image readable", name);
        return;
    }
    if (str(c, "mask_image") && load_image(&mask, str(c, "mask_image"), 1)) {
        tap_ok(0, "%s: mask readable", name);
        sdw_image_free(&init);
        return;
    }
    gp.init_image = init.pixels ? &init : NULL;
    gp.mask = mask.pixels ? &mask : NULL;

    char file[256];
    snprintf(file, sizeof file, "%s/%s.safetensors", dir, name);
    sdw_st_file ref;
    sdw_error e;
    int64_t nlat = 0, npix = 0;
    float *want_lat = NULL, *want_pix = NULL;
    if (sdw_st_open(&ref, tap_fixture(file), &e) == 0) {
        const sdw_st_tensor *tl = NULL, *tp = NULL;
        want_lat = fixture_f32(&ref, "latents", &tl);
        want_pix = fixture_f32(&ref, "image", &tp);
        nlat = tl ? tl->numel : 0;
        npix = tp ? tp->numel : 0;
        sdw_st_close(&ref);
    }
    if (!tap_ok(want_lat && want_pix, "%s: reference readable", name))
        goto out;

    float *lat = malloc((size_t)nlat * sizeof *lat);
    int calls = 0;
    int rc = sdw_pipeline_generate(p, &gp, count_steps, &calls, &out, lat, NULL, &e);
    if (!tap_ok(rc == 0, "%s: generates%s%s", name, rc ? ": " : "", rc ? e.msg : "")) {
        free(lat);
        goto out;
    }
    double rel = max_rel_err(lat, want_lat, (size_t)nlat);
    tap_ok(rel <= LATENT_TOL, "%s: %s %d steps (%d UNet calls): latents max rel err %.2e (tolerance %.0e)", name,
           gp.sampler ? gp.sampler : "default", gp.steps, calls, rel, LATENT_TOL);
    int maxd = out.width * out.height * 3 == npix ? 0 : 999;
    for (int64_t i = 0; maxd < 999 && i < npix; i++) {
        int d = abs((int)out.pixels[i] - (int)want_pix[i]);
        maxd = d > maxd ? d : maxd;
    }
    tap_ok(maxd <= 1, "%s: %dx%d pixels within %d of diffusers'", name, out.width, out.height, maxd);
    free(lat);
    sdw_image_free(&out);
out:
    free(want_lat), free(want_pix);
    sdw_image_free(&init), sdw_image_free(&mask);
}

static int cancel_at_two(void *ctx, sdw_pipeline *p, int step, int total)
{
    sdw_image img;
    sdw_error e;
    int ok = sdw_pipeline_preview(p, &img, &e) == 0 && img.width == 8 && img.height == 8;
    *(int *)ctx += ok;
    if (ok)
        sdw_image_free(&img);
    return step == 2;
}

static void test_callbacks_and_errors(void)
{
    sdw_pipeline *p = model("tiny-a");
    if (!p)
        return;
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, SDW_GEN_TXT2IMG);
    gp.prompt = "a cat";
    gp.steps = 5;
    gp.width = gp.height = 64;
    gp.sampler = "euler";
    sdw_image out = {0};
    sdw_error e;
    int previews = 0;
    int rc = sdw_pipeline_generate(p, &gp, cancel_at_two, &previews, &out, NULL, NULL, &e);
    tap_ok(rc == SDW_ECANCELLED && previews == 2, "a callback previews each step and cancels after step 2: %s",
           e.msg);
    gp.width = 60;
    rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, NULL, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "multiple of 8"), "a size off the latent grid is refused: %s", e.msg);
    gp.width = 64;
    gp.sampler = "lms";
    rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, NULL, &e);
    tap_ok(rc != 0 && strstr(e.msg, "euler_a"), "an unknown sampler lists the valid ones: %s", e.msg);
    gp.sampler = NULL;
    gp.kind = SDW_GEN_IMG2IMG;
    rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, NULL, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "init image"), "img2img without an image is refused: %s", e.msg);
    sdw_gen_params_init(&gp, SDW_GEN_TXT2IMG);
    gp.prompt = "x";
    gp.seed = 3;
    char *text = sdw_gen_params_text(&gp, 512, 512, "euler", "tiny");
    tap_ok(text && strstr(text, "Steps: 20, Sampler: euler, CFG scale: 7.5, Seed: 3, Size: 512x512"),
           "parameters text in A1111's form");
    free(text);
    gp.seed = 11630110443127060619ull;
    text = sdw_gen_params_text(&gp, 512, 512, "euler", "tiny");
    tap_ok(text && strstr(text, "Seed: 11630110443127060619,"), "a seed above 2^63 is written exactly");
    free(text);
}

/* What describe reports, the prediction override, and a model whose parts
 * disagree. */
static void test_describe_and_options(void)
{
    static const struct {
        const char *name, *family, *prediction;
        int inpaint, size;
    } want[] = {
        {"tiny-a", "sd1", "epsilon", 0, 64},
        {"tiny-inpaint", "sd1", "epsilon", 1, 64},
        {"tiny-sd2", "sd2", "v_prediction", 0, 64},
        {"tiny-sd2-inpaint", "sd2", "epsilon", 1, 64},
        {"tiny-sd2-turbo", "sd2", "epsilon", 0, 64},
        {"tiny-sdxl", "sdxl", "epsilon", 0, 64},
        {"tiny-sdxl-turbo", "sdxl", "epsilon", 0, 64},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        sdw_pipeline *p = model(want[i].name);
        if (!p)
            continue;
        sdw_pipeline_info pi;
        sdw_pipeline_describe(p, &pi);
        tap_ok(!strcmp(pi.family, want[i].family) && !strcmp(pi.prediction, want[i].prediction) &&
                   pi.inpaint == want[i].inpaint && pi.width == want[i].size && pi.height == want[i].size,
               "%s: %s %s%s %dx%d", want[i].name, pi.family, pi.prediction, pi.inpaint ? " inpainting" : "", pi.width,
               pi.height);
    }

    /* The memory estimate: an LCM-distilled UNet runs at batch 1 (no CFG),
     * and the VAE's share does not depend on it. */
    sdw_pipeline *pa = model("tiny-a"), *pl = model("tiny-lcm");
    if (pa && pl) {
        sdw_pipeline_mem ma, ml;
        sdw_pipeline_memory(pa, &ma);
        sdw_pipeline_memory(pl, &ml);
        tap_ok(ma.unet_per_pixel > 0 && ma.vae_per_pixel > 0 && ml.unet_per_pixel * 2 == ma.unet_per_pixel &&
                   ml.vae_per_pixel == ma.vae_per_pixel,
               "memory per pixel: tiny-a UNet %zu (batch 2), VAE %zu bytes; tiny-lcm UNet %zu (batch 1)",
               ma.unet_per_pixel, ma.vae_per_pixel, ml.unet_per_pixel);
    }
    if (pa && pl)
        tap_ok(sdw_pipeline_max_steps(pa, "lcm") == 50 && sdw_pipeline_max_steps(pa, NULL) == 1000 &&
                   sdw_pipeline_max_steps(pl, NULL) == 50 && !strcmp(sdw_pipeline_sampler(pl, NULL), "lcm") &&
                   sdw_pipeline_max_steps(pa, "lms") == 0,
               "lcm takes at most original_inference_steps (50) steps, named or the model's own; others 1000");
    long long total_kb = -1;
    FILE *mi = fopen("/proc/meminfo", "r");
    if (mi) {
        char line[256];
        while (fgets(line, sizeof line, mi))
            if (sscanf(line, "MemTotal: %lld", &total_kb) == 1)
                break;
        fclose(mi);
    }
    size_t avail = sdw_backend_available(be), anon = sdw_meminfo_rss_anon();
    tap_ok(avail > 0 && total_kb > 0 && avail <= (size_t)total_kb * 1024 && anon > 0,
           "the CPU backend's available memory is the host's: %zu MiB of %lld, this process holding %zu MiB",
           avail >> 20, total_kb >> 10, anon >> 20);

    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-sd2", tap_fixture("models"));
    sdw_pipeline *p = NULL;
    sdw_error e = {0};
    sdw_pipeline_options o = {.prediction = "epsilon"};
    int rc = sdw_pipeline_load(&p, be, dir, &o, &e);
    sdw_pipeline_info pi = {0};
    if (!rc)
        sdw_pipeline_describe(p, &pi);
    tap_ok(rc == 0 && !strcmp(pi.prediction, "epsilon"), "the prediction option overrides the model's v_prediction");
    sdw_pipeline_free(p);
    p = NULL;
    o.prediction = "sample";
    rc = sdw_pipeline_load(&p, be, dir, &o, &e);
    tap_ok(rc == SDW_EINVAL && !p && strstr(e.msg, "'sample'") && strstr(e.msg, "tiny-sd2"),
           "an unknown prediction type is refused, naming the model: %s", e.msg);

    /* tiny-a with a UNet config whose cross-attention width its weights and
     * its text encoder do not have */
    char tmpl[] = "/tmp/sdw-pipeline-XXXXXX", path[4096], from[4096];
    if (!mkdtemp(tmpl)) {
        tap_skip("mkdtemp failed");
        return;
    }
    static const char *const parts[] = {"model_index.json", "text_encoder", "tokenizer", "vae", "scheduler"};
    int ok = 1;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(from, sizeof from, "%s/tiny-a/%s", tap_fixture("models"), parts[i]);
        snprintf(path, sizeof path, "%s/%s", tmpl, parts[i]);
        ok &= realpath(from, dir) && symlink(dir, path) == 0;
    }
    snprintf(path, sizeof path, "%s/unet", tmpl);
    ok &= mkdir(path, 0755) == 0;
    snprintf(from, sizeof from, "%s/tiny-a/unet/diffusion_pytorch_model.safetensors", tap_fixture("models"));
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", tmpl);
    ok &= realpath(from, dir) && symlink(dir, path) == 0;
    snprintf(from, sizeof from, "%s/tiny-a/unet/config.json", tap_fixture("models"));
    json_object *cfg = json_object_from_file(from);
    ok &= cfg != NULL;
    if (cfg) {
        json_object_object_add(cfg, "cross_attention_dim", json_object_new_int(24));
        snprintf(path, sizeof path, "%s/unet/config.json", tmpl);
        ok &= json_object_to_file(path, cfg) == 0;
        json_object_put(cfg);
    }
    if (tap_ok(ok, "a tiny-a copy with a 24-wide cross-attention config")) {
        rc = sdw_pipeline_load(&p, be, tmpl, NULL, &e);
        tap_ok(rc != 0 && !p && strstr(e.msg, tmpl) && strstr(e.msg, "attn2.to_k.weight") && strstr(e.msg, "[32,16]"),
               "a UNet whose config does not fit its weights or text encoder is refused at load: %s", e.msg);
    }
    if (system(NULL) && snprintf(path, sizeof path, "rm -rf '%s'", tmpl) > 0 && system(path) != 0)
        tap_diag("could not remove %s", tmpl);
}

int main(void)
{
    sdw_error e;
    if (sdw_backend_cpu(&be, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
    /* SD 1.x/2.x cases (fixtures_pipeline.py), then SDXL's (fixtures_sdxl.py) */
    static const char *const dirs[] = {"pipeline", "pipeline-sdxl"};
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char file[64];
        snprintf(file, sizeof file, "%s/cases.json", dirs[d]);
        json_object *cases = json_object_from_file(tap_fixture(file));
        if (tap_ok(cases && json_object_is_type(cases, json_type_array), "%s readable", file)) {
            for (size_t i = 0; i < json_object_array_length(cases); i++)
                run_case(dirs[d], json_object_array_get_idx(cases, i));
        }
        json_object_put(cases);
    }
    test_callbacks_and_errors();
    test_describe_and_options();
    for (int i = 0; i < nmodels; i++)
        sdw_pipeline_free(models[i].p);
    sdw_backend_destroy(be);
    return tap_done();
}
