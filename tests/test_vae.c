/* The VAE against diffusers' AutoencoderKL on the two tiny fixture models
 * (tests/reference/fixtures_unet_vae.py): decode of scaled latents, encode to
 * the scaled posterior mean and to a sample with stored noise; from the
 * diffusers folder and from the weights re-keyed under LDM names (attention
 * projections as 1x1 convs, as the original checkpoints store them); tiny-a
 * again at 128x128, where the CPU backend's 3x3 convolutions take the
 * Winograd path; and errors for bad configs, missing tensors and wrong
 * shapes. */
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "fixture.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/vae.h"
#include "tap.h"

#define TOL 1e-4

static sdw_backend *be;

/* Decode and both encodes; errors into r[3]. */
static void run_cases(sdw_vae *v, const sdw_st_file *fx, double r[3], sdw_error *e)
{
    const sdw_st_tensor *zi, *ii, *mi;
    float *z = fixture_f32(fx, "latents", &zi), *dec = fixture_f32(fx, "decoded", NULL), *img = fixture_f32(fx, "image", &ii);
    float *mean = fixture_f32(fx, "mean", &mi), *noise = fixture_f32(fx, "noise", NULL), *smp = fixture_f32(fx, "sample", NULL);
    r[0] = r[1] = r[2] = INFINITY;
    sdw_tensor tz = {0}, tout = {0}, ti = {0}, tn = {0}, tl = {0};
    int64_t os[4] = {zi->shape[0], 3, zi->shape[2] * 8, zi->shape[3] * 8};
    float *buf = malloc(sizeof *buf * (size_t)(os[0] * os[1] * os[2] * os[3] + ii->numel));
    if (!sdw_tensor_from_host(&tz, be, 4, zi->shape, z, e) && !sdw_tensor_new(&tout, be, 4, os, e) &&
        !sdw_vae_decode(v, &tz, &tout, e) && !sdw_tensor_to_host(&tout, buf, e))
        r[0] = max_rel_err(buf, dec, (size_t)sdw_tensor_numel(&tout));
    if (!sdw_tensor_from_host(&ti, be, 4, ii->shape, img, e) && !sdw_tensor_from_host(&tn, be, 4, mi->shape, noise, e) &&
        !sdw_tensor_new(&tl, be, 4, mi->shape, e)) {
        if (!sdw_vae_encode(v, &ti, NULL, &tl, e) && !sdw_tensor_to_host(&tl, buf, e))
            r[1] = max_rel_err(buf, mean, (size_t)mi->numel);
        if (!sdw_vae_encode(v, &ti, &tn, &tl, e) && !sdw_tensor_to_host(&tl, buf, e))
            r[2] = max_rel_err(buf, smp, (size_t)mi->numel);
    }
    sdw_tensor_free(&tz), sdw_tensor_free(&tout), sdw_tensor_free(&ti), sdw_tensor_free(&tn), sdw_tensor_free(&tl);
    free(z), free(dec), free(img), free(mean), free(noise), free(smp), free(buf);
}

static void report(const char *model, const char *how, const double r[3], const sdw_error *e)
{
    static const char *what[3] = {"decode", "encode (posterior mean)", "encode (sample with given noise)"};
    for (int i = 0; i < 3; i++)
        tap_ok(r[i] <= TOL, "%s %s: %s matches diffusers, max rel err %.2e (tolerance %.0e)%s%s", model, how, what[i],
               r[i], TOL, isinf(r[i]) ? ": " : "", isinf(r[i]) ? e->msg : "");
}

/* The diffusers weights written again under their LDM names. */
static int write_ldm(const sdw_model *m, const char *model, const char *path)
{
    char name[256];
    snprintf(name, sizeof name, "ldm-keys-%s.json", model);
    json_object *keys = json_object_from_file(tap_fixture(name)), *map;
    int rc = keys && json_object_object_get_ex(keys, "vae", &map)
                 ? fixture_write_ldm(m->vae.files[0], map, "first_stage_model.", 1, path)
                 : -1;
    json_object_put(keys);
    return rc;
}

/* Against the fixture "vae-<model><suffix>.safetensors"; the weights
 * re-keyed under LDM names only against the model's own (suffix ""). */
static void check_model(const char *model, const char *suffix)
{
    char path[256], tmp[] = "/tmp/sdw-vae-ldm-XXXXXX";
    sdw_error e;
    sdw_model m;
    double r[3];
    snprintf(path, sizeof path, "models/%s", model);
    if (!tap_ok(sdw_model_open(&m, tap_fixture(path), &e) == 0, "%s: model opens", model))
        return tap_diag("%s", e.msg);
    sdw_st_file fx;
    snprintf(path, sizeof path, "vae-%s%s.safetensors", model, suffix);
    if (sdw_st_open(&fx, tap_fixture(path), &e)) {
        tap_ok(0, "%s: fixture %s: %s", model, path, e.msg);
        sdw_model_close(&m);
        return;
    }
    sdw_vae_config cfg;
    sdw_vae *v = NULL;
    int rc = sdw_vae_config_parse(&cfg, m.vae_config, &e);
    if (!rc)
        rc = sdw_vae_load(&v, be, &cfg, &m.vae, SDW_LAYOUT_DIFFUSERS, &e);
    if (tap_ok(rc == 0, "%s: config parses and the VAE loads%s%s", model, rc ? ": " : "", rc ? e.msg : "")) {
        run_cases(v, &fx, r, &e);
        snprintf(path, sizeof path, "diffusers names%s%s", *suffix ? ", fixture " : "", suffix);
        report(model, path, r, &e);
        sdw_vae_free(v);
    }
    if (*suffix) {
        sdw_st_close(&fx);
        sdw_model_close(&m);
        return;
    }
    int fd = mkstemp(tmp);
    if (fd >= 0)
        close(fd);
    if (fd >= 0 && write_ldm(&m, model, tmp) == 0) {
        sdw_st_file lf;
        if (!sdw_st_open(&lf, tmp, &e)) {
            const sdw_st_file *files[1] = {&lf};
            sdw_weights w = {.files = files, .nfiles = 1};
            snprintf(w.prefix, sizeof w.prefix, "first_stage_model.");
            rc = sdw_vae_load(&v, be, &cfg, &w, SDW_LAYOUT_LDM, &e);
            if (tap_ok(rc == 0, "%s: VAE loads from LDM names%s%s", model, rc ? ": " : "", rc ? e.msg : "")) {
                run_cases(v, &fx, r, &e);
                report(model, "LDM names", r, &e);
                sdw_vae_free(v);
            }
            sdw_st_close(&lf);
        } else {
            tap_ok(0, "%s: LDM file opens: %s", model, e.msg);
        }
    } else {
        tap_ok(0, "%s: LDM re-keyed file written", model);
    }
    unlink(tmp);
    sdw_st_close(&fx);
    sdw_model_close(&m);
}

static int parse_with(const sdw_model *m, const char *key, json_object *val, sdw_vae_config *cfg, sdw_error *e)
{
    json_object *j = json_tokener_parse(json_object_to_json_string(m->vae_config));
    json_object_object_add(j, key, val);
    int rc = sdw_vae_config_parse(cfg, j, e);
    json_object_put(j);
    return rc;
}

static void check_errors(void)
{
    sdw_error e;
    sdw_model m;
    if (sdw_model_open(&m, tap_fixture("models/tiny-a"), &e)) {
        tap_ok(0, "tiny-a opens: %s", e.msg);
        return;
    }
    sdw_vae_config cfg;
    sdw_vae *v = NULL;
    int rc = parse_with(&m, "act_fn", json_object_new_string("relu"), &cfg, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "act_fn"), "act_fn relu is refused: %s", e.msg);
    rc = parse_with(&m, "scaling_factor", json_object_new_int(-1), &cfg, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "scaling_factor"), "a negative scaling factor is refused: %s", e.msg);
    /* force_upcast: diffusers' default true; a float32 backend for the VAE
     * only where the rest stores halves (a stand-in backend says so). */
    sdw_backend half = *be;
    half.fp16 = 1;
    rc = sdw_vae_config_parse(&cfg, m.vae_config, &e);
    tap_ok(rc == 0 && cfg.force_upcast && sdw_vae_needs_upcast(&cfg, &half) && !sdw_vae_needs_upcast(&cfg, be),
           "no force_upcast in the config: true, so float32 beside fp16 storage, and never on the CPU");
    rc = parse_with(&m, "force_upcast", json_object_new_boolean(0), &cfg, &e);
    tap_ok(rc == 0 && !cfg.force_upcast && !sdw_vae_needs_upcast(&cfg, &half),
           "force_upcast false (an fp16-fixed VAE): it stays in fp16");
    rc = parse_with(&m, "force_upcast", json_object_new_boolean(1), &cfg, &e);
    tap_ok(rc == 0 && cfg.force_upcast && sdw_vae_needs_upcast(&cfg, &half), "force_upcast true: float32");
    rc = parse_with(&m, "force_upcast", json_object_new_string("yes"), &cfg, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "force_upcast"), "a force_upcast that is not a boolean is refused: %s",
           e.msg);
    rc = parse_with(&m, "scaling_factor", json_object_new_double(0.13025), &cfg, &e);
    tap_ok(rc == 0 && cfg.scaling_factor == 0.13025f, "the scaling factor comes from the config (SDXL's 0.13025)");
    rc = sdw_vae_config_parse(&cfg, NULL, &e);
    tap_ok(rc == 0 && cfg.force_upcast && cfg.scaling_factor == 0.18215f,
           "a single file's implied SD 1.x VAE: force_upcast, 0.18215");
    rc = parse_with(&m, "latent_channels", json_object_new_int(8), &cfg, &e);
    if (!rc)
        rc = sdw_vae_load(&v, be, &cfg, &m.vae, SDW_LAYOUT_DIFFUSERS, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "encoder.conv_out.weight") && strstr(e.msg, "[16,32,3,3]"),
           "latent_channels the weights do not have names the tensor and both shapes: %s", e.msg);
    rc = parse_with(&m, "layers_per_block", json_object_new_int(2), &cfg, &e);
    if (!rc)
        rc = sdw_vae_load(&v, be, &cfg, &m.vae, SDW_LAYOUT_DIFFUSERS, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "encoder.down_blocks.0.resnets.1"), "a missing resnet is named: %s",
           e.msg);
    if (!sdw_vae_config_parse(&cfg, m.vae_config, &e) && !sdw_vae_load(&v, be, &cfg, &m.vae, SDW_LAYOUT_DIFFUSERS, &e)) {
        int64_t zs[4] = {1, 4, 2, 2}, is[4] = {1, 3, 12, 16}, ls[4] = {1, 4, 2, 2};
        sdw_tensor z, i, l;
        sdw_tensor_new(&z, be, 4, zs, &e), sdw_tensor_new(&i, be, 4, is, &e), sdw_tensor_new(&l, be, 4, ls, &e);
        rc = sdw_vae_decode(v, &z, &i, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "[1,3,12,16]"), "decode into a wrongly sized image is refused: %s",
               e.msg);
        rc = sdw_vae_encode(v, &i, NULL, &l, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "multiples"), "encode of a 12x16 image (factor 8) is refused: %s",
               e.msg);
        sdw_tensor_free(&z), sdw_tensor_free(&i), sdw_tensor_free(&l);
        sdw_vae_free(v);
    } else {
        tap_ok(0, "tiny-a VAE loads: %s", e.msg);
    }
    sdw_model_close(&m);
}

int main(void)
{
    sdw_error e;
    if (sdw_backend_cpu(&be, &e)) {
        tap_ok(0, "CPU backend: %s", e.msg);
        return tap_done();
    }
    check_model("tiny-a", "");
    check_model("tiny-b", "");
    check_model("tiny-a", "-128");
    check_errors();
    sdw_backend_destroy(be);
    return tap_done();
}
