/* The UNet against diffusers' UNet2DConditionModel on the tiny fixture
 * models (tests/reference/fixtures_unet_vae.py, fixtures_sd2.py): batch 2,
 * timesteps like 981 and 500.5, a non-square latent for tiny-b; SD 2.x's
 * per-level heads, linear projections and 9 input channels; SDXL's text_time
 * addition embedding (pooled text, time ids) and [1,2] transformer depths; from the
 * diffusers folder and from the same weights re-keyed as an LDM single file
 * with the key map that diffusers' own converter confirmed, or tiny-sd2's
 * single file, whose UNet config is read off its shapes; and the errors for
 * bad configs, missing tensors and mismatched shapes. */
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "fixture.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/unet.h"
#include "tap.h"

#define TOL 1e-4

static sdw_backend *be;

static int parse_with(const sdw_model *m, const char *key, json_object *val, sdw_unet_config *cfg, sdw_error *e);

/* Runs the fixture case through u; the max relative error, or INFINITY. */
static double run_case(sdw_unet *u, const sdw_st_file *fx, sdw_error *e)
{
    const sdw_st_tensor *li, *ci, *wi, *pi = NULL;
    float *lat = fixture_f32(fx, "latents", &li), *ctx = fixture_f32(fx, "encoder_hidden_states", &ci);
    float *ts = fixture_f32(fx, "timesteps", NULL), *want = fixture_f32(fx, "eps", &wi);
    float *got = want ? malloc((size_t)wi->numel * sizeof *got) : NULL;
    /* SDXL's added conditioning, where the fixture has it */
    float *pooled = sdw_st_find(fx, "text_embeds") ? fixture_f32(fx, "text_embeds", &pi) : NULL;
    float *ids = sdw_st_find(fx, "time_ids") ? fixture_f32(fx, "time_ids", NULL) : NULL;
    double r = INFINITY;
    sdw_tensor x = {0}, c = {0}, y = {0}, p = {0};
    sdw_unet_cond cond = {.text_embeds = pooled ? &p : NULL, .time_ids = ids};
    /* eps has out_channels (4) where an inpainting UNet's latents have 9 */
    if (lat && ctx && ts && got && !sdw_tensor_from_host(&x, be, 4, li->shape, lat, e) &&
        !sdw_tensor_from_host(&c, be, 3, ci->shape, ctx, e) && !sdw_tensor_new(&y, be, 4, wi->shape, e) &&
        (!pooled || !sdw_tensor_from_host(&p, be, 2, pi->shape, pooled, e)) &&
        !sdw_unet_forward(u, &x, ts, &c, pooled || ids ? &cond : NULL, &y, e) && !sdw_tensor_to_host(&y, got, e))
        r = max_rel_err(got, want, (size_t)wi->numel);
    sdw_tensor_free(&x), sdw_tensor_free(&c), sdw_tensor_free(&y), sdw_tensor_free(&p);
    free(lat), free(ctx), free(ts), free(want), free(got), free(pooled), free(ids);
    return r;
}

/* A text_time UNet without its conditioning, and an unknown addition type. */
static void check_sdxl_errors(void)
{
    sdw_error e;
    sdw_model m;
    if (sdw_model_open(&m, tap_fixture("models/tiny-sdxl"), &e)) {
        tap_ok(0, "tiny-sdxl opens: %s", e.msg);
        return;
    }
    sdw_unet_config cfg;
    sdw_unet *u = NULL;
    int rc = sdw_unet_config_parse(&cfg, m.unet_config, &e);
    tap_ok(rc == 0 && cfg.text_time && cfg.add_time_dim == 8 && cfg.add_in == 60 && cfg.tlayers[0] == 1 &&
               cfg.tlayers[1] == 2 && !cfg.down_attn[0] && cfg.heads[1] == 2,
           "tiny-sdxl: text_time, 8-wide time ids, 60 add_embedding inputs, transformer layers [1,2]");
    if (!rc && !(rc = sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e))) {
        int64_t xs[4] = {1, 4, 8, 8}, cs[3] = {1, 77, 24};
        sdw_tensor x = {0}, c = {0}, y = {0};
        float t = 500;
        if (!sdw_tensor_new(&x, be, 4, xs, &e) && !sdw_tensor_new(&c, be, 3, cs, &e) &&
            !sdw_tensor_new(&y, be, 4, xs, &e)) {
            rc = sdw_unet_forward(u, &x, &t, &c, NULL, &y, &e);
            tap_ok(rc == SDW_EINVAL && strstr(e.msg, "time ids"), "a text_time UNet without its conditioning: %s",
                   e.msg);
        }
        sdw_tensor_free(&x), sdw_tensor_free(&c), sdw_tensor_free(&y);
        sdw_unet_free(u);
    }
    rc = parse_with(&m, "addition_embed_type", json_object_new_string("text_image"), &cfg, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "text_image"), "addition_embed_type text_image is refused: %s",
           e.msg);
    sdw_model_close(&m);
}

/* The diffusers weights written again under their LDM names. */
static int write_ldm(const sdw_model *m, const char *model, const char *path)
{
    char name[256];
    snprintf(name, sizeof name, "ldm-keys-%s.json", model);
    json_object *keys = json_object_from_file(tap_fixture(name)), *map;
    int rc = keys && json_object_object_get_ex(keys, "unet", &map)
                 ? fixture_write_ldm(m->unet.files[0], map, "model.diffusion_model.", 0, path)
                 : -1;
    json_object_put(keys);
    return rc;
}

/* The folder's weights re-keyed by ldm-keys-<model>.json. */
static void check_rekeyed(const char *model, const sdw_model *m, const sdw_unet_config *cfg, const sdw_st_file *fx)
{
    char tmp[] = "/tmp/sdw-unet-ldm-XXXXXX";
    sdw_error e;
    sdw_unet *u = NULL;
    int rc, fd = mkstemp(tmp);
    if (fd >= 0)
        close(fd);
    if (fd < 0 || write_ldm(m, model, tmp)) {
        tap_ok(0, "%s: LDM re-keyed file written", model);
        unlink(tmp);
        return;
    }
    sdw_st_file lf;
    if (!(rc = sdw_st_open(&lf, tmp, &e))) {
        const sdw_st_file *files[1] = {&lf};
        sdw_weights w = {.files = files, .nfiles = 1};
        snprintf(w.prefix, sizeof w.prefix, "model.diffusion_model.");
        if (!(rc = sdw_unet_load(&u, be, cfg, &w, SDW_LAYOUT_LDM, &e))) {
            double r = run_case(u, fx, &e);
            tap_ok(r <= TOL, "%s: LDM single-file names give the same eps, max rel err %.2e%s%s", model, r,
                   isinf(r) ? ": " : "", isinf(r) ? e.msg : "");
            sdw_unet_free(u);
        } else {
            tap_ok(0, "%s: UNet loads from LDM names: %s", model, e.msg);
        }
        /* The diffusers names are not in an LDM file: loading it as diffusers names one. */
        rc = sdw_unet_load(&u, be, cfg, &w, SDW_LAYOUT_DIFFUSERS, &e);
        tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "conv_in.weight"),
               "%s: an LDM file read with diffusers names fails naming the tensor: %s", model, e.msg);
        sdw_st_close(&lf);
    } else {
        tap_ok(0, "%s: LDM file opens: %s", model, e.msg);
    }
    unlink(tmp);
}

/* models/<model>.safetensors, the single file the reference's converter
 * reads back to the folder's weights. Its UNet config is read off the
 * shapes; heads (64 channels each, so 1 for this tiny model) and
 * normalisation groups are not in them, so the run takes the folder's
 * config, as diffusers' from_single_file(config=) does. */
static void check_single(const char *model, const sdw_unet_config *cfg, const sdw_st_file *fx)
{
    char path[256];
    sdw_error e;
    sdw_model m;
    snprintf(path, sizeof path, "models/%s.safetensors", model);
    int rc = sdw_model_open(&m, tap_fixture(path), &e);
    if (!tap_ok(rc == 0, "%s: single file opens%s%s", model, rc ? ": " : "", rc ? e.msg : ""))
        return;
    sdw_unet_config sc;
    sdw_unet *u = NULL;
    rc = sdw_unet_config_parse(&sc, m.unet_config, &e);
    int same = !rc && sc.in_channels == cfg->in_channels && sc.out_channels == cfg->out_channels &&
               sc.nblocks == cfg->nblocks && sc.layers_per_block == cfg->layers_per_block &&
               sc.cross_attention_dim == cfg->cross_attention_dim && sc.linear_projection == cfg->linear_projection &&
               sc.text_time == cfg->text_time && sc.add_time_dim == cfg->add_time_dim && sc.add_in == cfg->add_in &&
               sc.upcast_attention == cfg->upcast_attention;
    for (int i = 0; same && i < cfg->nblocks; i++)
        same = sc.block_out[i] == cfg->block_out[i] && sc.down_attn[i] == cfg->down_attn[i] &&
               sc.up_attn[i] == cfg->up_attn[i] && sc.tlayers[i] == cfg->tlayers[i] &&
               sc.heads[i] == (cfg->block_out[i] / 64 > 1 ? cfg->block_out[i] / 64 : 1);
    tap_ok(same, "%s: the config read off the single file's shapes is the folder's, heads channels/64%s%s", model,
           rc ? ": " : "", rc ? e.msg : "");
    if (!(rc = sdw_unet_load(&u, be, cfg, &m.unet, m.layout, &e))) {
        double r = run_case(u, fx, &e);
        tap_ok(r <= TOL, "%s: the single file gives the same output, max rel err %.2e%s%s", model, r,
               isinf(r) ? ": " : "", isinf(r) ? e.msg : "");
        sdw_unet_free(u);
    } else {
        tap_ok(0, "%s: UNet loads from the single file: %s", model, e.msg);
    }
    sdw_model_close(&m);
}

enum { NO_LDM, LDM_REKEY, LDM_FILE };

static void check_model(const char *model, int ldm)
{
    char path[256];
    sdw_error e;
    sdw_model m;
    snprintf(path, sizeof path, "models/%s", model);
    int rc = sdw_model_open(&m, tap_fixture(path), &e);
    if (!tap_ok(rc == 0, "%s: model opens%s%s", model, rc ? ": " : "", rc ? e.msg : ""))
        return;
    sdw_st_file fx;
    snprintf(path, sizeof path, "unet-%s.safetensors", model);
    if (sdw_st_open(&fx, tap_fixture(path), &e)) {
        tap_ok(0, "%s: fixture %s: %s", model, path, e.msg);
        sdw_model_close(&m);
        return;
    }
    sdw_unet_config cfg;
    sdw_unet *u = NULL;
    rc = sdw_unet_config_parse(&cfg, m.unet_config, &e);
    if (!rc)
        rc = sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e);
    if (tap_ok(rc == 0, "%s: config parses and the UNet loads%s%s", model, rc ? ": " : "", rc ? e.msg : "")) {
        double r = run_case(u, &fx, &e);
        tap_ok(r <= TOL, "%s: eps matches diffusers, max rel err %.2e (tolerance %.0e)%s%s", model, r, TOL,
               isinf(r) ? ": " : "", isinf(r) ? e.msg : "");
        sdw_unet_free(u);
        if (ldm == LDM_REKEY)
            check_rekeyed(model, &m, &cfg, &fx);
        if (ldm == LDM_FILE)
            check_single(model, &cfg, &fx);
    }
    sdw_st_close(&fx);
    sdw_model_close(&m);
}

/* Parses the model's config with one field replaced. */
static int parse_with(const sdw_model *m, const char *key, json_object *val, sdw_unet_config *cfg, sdw_error *e)
{
    json_object *j = json_tokener_parse(json_object_to_json_string(m->unet_config));
    json_object_object_add(j, key, val);
    int rc = sdw_unet_config_parse(cfg, j, e);
    json_object_put(j);
    return rc;
}

static void check_errors(void)
{
    sdw_error e;
    sdw_model m;
    if (sdw_model_open(&m, tap_fixture("models/tiny-b"), &e)) {
        tap_ok(0, "tiny-b opens: %s", e.msg);
        return;
    }
    sdw_unet_config cfg;
    int rc = parse_with(&m, "act_fn", json_object_new_string("gelu"), &cfg, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "act_fn"), "act_fn gelu is refused: %s", e.msg);
    rc = parse_with(&m, "attention_head_dim", json_object_new_string("8"), &cfg, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "attention_head_dim"), "a string head count is refused: %s", e.msg);
    json_object *two = json_object_new_array();
    json_object_array_add(two, json_object_new_int(2));
    json_object_array_add(two, json_object_new_int(2));
    rc = parse_with(&m, "attention_head_dim", two, &cfg, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "2 entries for 3 blocks"), "a short per-block list is refused: %s",
           e.msg);
    rc = parse_with(&m, "up_block_types", json_object_new_string("UpBlock2D"), &cfg, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "up_block_types"), "up_block_types that is not a list: %s", e.msg);
    rc = parse_with(&m, "num_attention_heads", json_object_new_int(8), &cfg, &e);
    tap_ok(rc == SDW_EUNSUPPORTED, "num_attention_heads is refused like diffusers does: %s", e.msg);
    rc = parse_with(&m, "only_cross_attention", json_object_new_boolean(1), &cfg, &e);
    tap_ok(rc == SDW_EUNSUPPORTED, "only_cross_attention is refused: %s", e.msg);
    rc = sdw_unet_config_parse(&cfg, m.unet_config, &e);
    tap_ok(rc == 0 && !cfg.upcast_attention, "upcast_attention false is read as false");
    rc = parse_with(&m, "upcast_attention", json_object_new_boolean(1), &cfg, &e);
    tap_ok(rc == 0 && cfg.upcast_attention, "upcast_attention true (SD 2.1) is accepted and kept");
    rc = parse_with(&m, "upcast_attention", json_object_new_string("true"), &cfg, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "upcast_attention"), "a string upcast_attention is refused: %s", e.msg);
    rc = sdw_unet_config_parse(&cfg, NULL, &e);
    tap_ok(rc == 0 && !cfg.upcast_attention, "SD 1.x (no config) does not upcast");

    sdw_unet *u = NULL;
    rc = parse_with(&m, "cross_attention_dim", json_object_new_int(24), &cfg, &e);
    if (!rc)
        rc = sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "attn2.to_k.weight") && strstr(e.msg, "[16,24]"),
           "a cross_attention_dim the weights do not have names the tensor and both shapes: %s", e.msg);
    rc = parse_with(&m, "attention_head_dim", json_object_new_int(3), &cfg, &e);
    if (!rc)
        rc = sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "3 attention heads"), "3 heads for 16 channels is refused: %s", e.msg);
    rc = parse_with(&m, "time_cond_proj_dim", json_object_new_int(3), &cfg, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "time_cond_proj_dim 3"), "a 3-wide guidance embedding is refused: %s",
           e.msg);
    rc = parse_with(&m, "time_cond_proj_dim", json_object_new_int(8), &cfg, &e);
    if (!rc)
        rc = sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "time_embedding.cond_proj"),
           "time_cond_proj_dim without the cond_proj weight names it: %s", e.msg);
    rc = parse_with(&m, "layers_per_block", json_object_new_int(3), &cfg, &e);
    if (!rc)
        rc = sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "resnets.2"), "a missing resnet is named: %s", e.msg);

    if (!sdw_unet_config_parse(&cfg, m.unet_config, &e) &&
        !sdw_unet_load(&u, be, &cfg, &m.unet, SDW_LAYOUT_DIFFUSERS, &e)) {
        int64_t xs[4] = {1, 4, 8, 8}, cs[3] = {1, 77, 8}, ys[4] = {1, 4, 8, 8};
        sdw_tensor x, c, y;
        float t = 10;
        sdw_tensor_new(&x, be, 4, xs, &e), sdw_tensor_new(&c, be, 3, cs, &e), sdw_tensor_new(&y, be, 4, ys, &e);
        rc = sdw_unet_forward(u, &x, &t, &c, NULL, &y, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "[1,77,8]"), "text states of the wrong width are refused: %s",
               e.msg);
        float tc[8] = {0}, ids[6] = {0};
        sdw_unet_cond lcm = {.timestep_cond = tc}, xl = {.time_ids = ids};
        sdw_tensor_free(&c);
        cs[2] = cfg.cross_attention_dim;
        sdw_tensor_new(&c, be, 3, cs, &e);
        rc = sdw_unet_forward(u, &x, &t, &c, &lcm, &y, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "time_cond_proj_dim"),
               "a guidance embedding for a UNet without time_cond_proj_dim is refused: %s", e.msg);
        rc = sdw_unet_forward(u, &x, &t, &c, &xl, &y, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "time_ids"), "SDXL time ids for an SD UNet are refused: %s", e.msg);
        sdw_tensor_free(&x), sdw_tensor_free(&c), sdw_tensor_free(&y);
        sdw_unet_free(u);
    } else {
        tap_ok(0, "tiny-b loads: %s", e.msg);
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
    check_model("tiny-a", LDM_REKEY);
    check_model("tiny-b", LDM_REKEY);
    check_model("tiny-sd2", LDM_FILE);
    check_model("tiny-sd2-inpaint", NO_LDM);
    check_model("tiny-sdxl", LDM_FILE);
    check_sdxl_errors();
    check_errors();
    sdw_backend_destroy(be);
    return tap_done();
}
