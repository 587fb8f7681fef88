/* LoRA: the parser (kohya and PEFT layouts, alphas, bad files), SGM path
 * mapping, matching against the tiny models, and generation against
 * diffusers' load_lora_weights + set_adapters for every case in
 * tests/fixtures/lora/cases.json (tests/reference/fixtures_lora.py), on SD 1,
 * SD 2 and SDXL (kohya's SGM names, both text encoders) and LCM-LoRA under
 * the lcm sampler: final latents within 1e-4 relative error, pixels within 1.
 * After a LoRA job, and after one whose LoRA failed, the model gives bit for
 * bit what it gave before any LoRA. LoRAs for another family are refused
 * naming it. */
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "fixture.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "pipeline/pipeline.h"
#include "tap.h"

#define LATENT_TOL 1e-4

static sdw_backend *be;
static sdw_pipeline *tiny_a, *tiny_sd2, *tiny_sdxl;

static sdw_lora *open_fixture(const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", tap_fixture("lora"), file);
    sdw_lora *l = NULL;
    sdw_error e;
    if (sdw_lora_open(&l, path, &e))
        tap_diag("%s", e.msg);
    return l;
}

static void sgm_names(void)
{
    static const char *const cases[][2] = {
        {"input_blocks_4_1_transformer_blocks_0_attn1_to_q", "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"},
        {"input_blocks_8_1_proj_in", "down_blocks_2_attentions_1_proj_in"},
        {"input_blocks_1_0_in_layers_2", "down_blocks_0_resnets_0_conv1"},
        {"input_blocks_5_0_skip_connection", "down_blocks_1_resnets_1_conv_shortcut"},
        {"input_blocks_2_0_emb_layers_1", "down_blocks_0_resnets_1_time_emb_proj"},
        {"input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"},
        {"middle_block_0_out_layers_3", "mid_block_resnets_0_conv2"},
        {"middle_block_1_transformer_blocks_3_ff_net_2", "mid_block_attentions_0_transformer_blocks_3_ff_net_2"},
        {"middle_block_2_in_layers_2", "mid_block_resnets_1_conv1"},
        {"output_blocks_0_1_transformer_blocks_9_attn2_to_out_0", "up_blocks_0_attentions_0_transformer_blocks_9_attn2_to_out_0"},
        {"output_blocks_5_2_conv", "up_blocks_1_upsamplers_0_conv"},
        {"output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"},
        {"output_blocks_7_0_skip_connection", "up_blocks_2_resnets_1_conv_shortcut"},
        {"input_blocks_0_0", "conv_in"},
        {"out_2", "conv_out"},
        {"time_embed_2", "time_embedding_linear_2"},
        {"label_emb_0_0", "add_embedding_linear_1"},
        {"down_blocks_0_attentions_0_proj_in", "down_blocks_0_attentions_0_proj_in"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[200] = "";
        int rc = sdw_lora_sgm_path(cases[i][0], 2, out, sizeof out);
        tap_ok(!rc && !strcmp(out, cases[i][1]), "SGM %s -> %s (%s)", cases[i][0], cases[i][1], out);
    }
    /* tiny-sdxl's one layer per block: a level is two SGM blocks. */
    static const char *const one[][2] = {
        {"input_blocks_1_0_in_layers_2", "down_blocks_0_resnets_0_conv1"},
        {"input_blocks_2_0_op", "down_blocks_0_downsamplers_0_conv"},
        {"input_blocks_3_1_proj_in", "down_blocks_1_attentions_0_proj_in"},
        {"output_blocks_1_1_transformer_blocks_1_attn2_to_k", "up_blocks_0_attentions_1_transformer_blocks_1_attn2_to_k"},
        {"output_blocks_1_2_conv", "up_blocks_0_upsamplers_0_conv"},
        {"output_blocks_3_0_skip_connection", "up_blocks_1_resnets_1_conv_shortcut"},
    };
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        char out[200] = "";
        int rc = sdw_lora_sgm_path(one[i][0], 1, out, sizeof out);
        tap_ok(!rc && !strcmp(out, one[i][1]), "SGM, 1 layer per block, %s -> %s (%s)", one[i][0], one[i][1], out);
    }
    char out[200];
    tap_ok(sdw_lora_sgm_path("input_blocks_1_0_norm9", 2, out, sizeof out) != 0 &&
               sdw_lora_sgm_path("middle_block_7_in_layers_2", 2, out, sizeof out) != 0 &&
               sdw_lora_sgm_path("input_blocks_3_1_proj_in", 2, out, sizeof out) != 0 &&
               sdw_lora_sgm_path("input_blocks_3_0_op", 1, out, sizeof out) != 0,
           "SGM paths that name no layer are refused");
}

static const sdw_lora_module *module(const sdw_lora *l, const char *flat)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->m[i].flat, flat))
            return &l->m[i];
    return NULL;
}

static void parsing(void)
{
    sdw_lora *k = open_fixture("a-kohya-attn.safetensors"), *p = open_fixture("a-peft.safetensors"),
             *c = open_fixture("a-kohya-locon.safetensors");
    if (!tap_ok(k && p && c, "the fixture LoRAs open"))
        goto out;
    tap_ok(k->n == 60 && p->n == 60 && c->n == 30, "modules: kohya %zu, PEFT %zu, LoCon %zu (60, 60, 30)", k->n, p->n,
           c->n);
    const sdw_lora_module *m = module(k, "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0");
    tap_ok(m && !strcmp(m->part, "unet") && m->alpha == 2.0f && m->down->shape[0] == 4,
           "kohya: a UNet module with alpha 2 and rank 4 (scale 0.5)");
    m = module(k, "encoder_layers_1_mlp_fc2");
    tap_ok(m && !strcmp(m->part, "text_encoder") && !strcmp(m->key, "lora_te_text_model_encoder_layers_1_mlp_fc2"),
           "kohya: lora_te_text_model_* names the text encoder's layers");
    m = module(p, "encoder_layers_0_self_attn_q_proj");
    tap_ok(m && !strcmp(m->part, "text_encoder") && m->alpha == 2.0f, "PEFT: no alpha means alpha = rank (2)");
    m = module(c, "down_blocks_0_downsamplers_0_conv");
    tap_ok(m && m->down->ndim == 4 && m->down->shape[2] == 3 && m->up->shape[2] == 1 && m->alpha == 3.0f,
           "LoCon: a 3x3 down factor, a 1x1 up factor, alpha = rank without one");
    tap_ok(!strcmp(k->family, "sd1") && !strcmp(c->family, ""), "the family kohya's metadata states (sd1, none)");
    sdw_error e;
    tap_ok(!sdw_pipeline_lora_check(tiny_a, k, &e) && !sdw_pipeline_lora_check(tiny_a, p, &e) &&
               !sdw_pipeline_lora_check(tiny_a, c, &e),
           "each fits tiny-a");
    int rc = sdw_pipeline_lora_check(tiny_sd2, k, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "is for sd1, the model is sd2"), "an SD 1 LoRA on SD 2: %s", e.msg);
    rc = sdw_pipeline_lora_check(tiny_sd2, c, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "shape mismatch") && strstr(e.msg, "another model family"),
           "an SD 1 LoRA without metadata on SD 2: %s", e.msg);
    sdw_lora_use u = {.lora = k, .name = "k", .weight = 4.5f};
    sdw_lora_applied *a = NULL;
    rc = sdw_lora_apply(NULL, "sd1", &u, 1, be, &a, &e);
    tap_ok(rc == SDW_EINVAL && !a && strstr(e.msg, "LoRA k: weight 4.5 outside [-4, 4]"), "weight 4.5: %s", e.msg);
    u.weight = NAN;
    rc = sdw_lora_apply(NULL, "sd1", &u, 1, be, &a, &e);
    tap_ok(rc == SDW_EINVAL && !a, "weight NaN: %s", e.msg);
out:
    sdw_lora_free(k), sdw_lora_free(p), sdw_lora_free(c);
}

/* SDXL's files: SGM UNet paths kept as written and mapped with the model's
 * layers_per_block, both text encoders, and the family told both ways. */
static void sdxl_parsing(void)
{
    sdw_lora *k = open_fixture("xl-kohya.safetensors"), *p = open_fixture("xl-peft.safetensors"),
             *a = open_fixture("a-kohya-attn.safetensors"), *c = open_fixture("a-kohya-locon.safetensors");
    if (!tap_ok(k && p && a && c, "the SDXL fixture LoRAs open"))
        goto out;
    const sdw_lora_module *m = module(k, "output_blocks_1_2_conv");
    tap_ok(m && m->sgm && !strcmp(m->part, "unet") && m->alpha == 2.0f, "kohya SDXL: an SGM upsampler, alpha 2");
    m = module(k, "encoder_layers_2_mlp_fc1");
    tap_ok(m && !strcmp(m->part, "text_encoder"), "kohya SDXL: lora_te1_ is the first text encoder");
    size_t te2 = 0, te2p = 0;
    for (size_t i = 0; i < k->n; i++)
        te2 += !strcmp(k->m[i].part, "text_encoder_2") && !strncmp(k->m[i].key, "lora_te2_", 9);
    for (size_t i = 0; i < p->n; i++)
        te2p += !strcmp(p->m[i].part, "text_encoder_2");
    tap_ok(te2 == 18 && te2p == 18, "lora_te2_ and text_encoder_2. name the second (%zu, %zu of 18)", te2, te2p);
    tap_ok(!strcmp(k->family, "sdxl") && !strcmp(p->family, ""), "the family kohya's metadata states (sdxl, none)");
    sdw_error e;
    tap_ok(!sdw_pipeline_lora_check(tiny_sdxl, k, &e) && !sdw_pipeline_lora_check(tiny_sdxl, p, &e),
           "each fits tiny-sdxl");
    int rc = sdw_pipeline_lora_check(tiny_sdxl, a, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "is for sd1, the model is sdxl"), "an SD 1 LoRA on SDXL: %s", e.msg);
    rc = sdw_pipeline_lora_check(tiny_sdxl, c, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "another model family than sdxl"),
           "an SD 1 UNet LoRA without metadata on SDXL: %s", e.msg);
    rc = sdw_pipeline_lora_check(tiny_a, k, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "is for sdxl, the model is sd1"), "an SDXL LoRA on SD 1: %s", e.msg);
    rc = sdw_pipeline_lora_check(tiny_a, p, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "is for sdxl (text_encoder_2.") && strstr(e.msg, "the model is sd1"),
           "an SDXL LoRA without metadata on SD 1: %s", e.msg);
    rc = sdw_pipeline_lora_check(tiny_sd2, p, &e);
    tap_ok(rc == SDW_EINVAL && strstr(e.msg, "the model is sd2"), "and on SD 2: %s", e.msg);
out:
    sdw_lora_free(k), sdw_lora_free(p), sdw_lora_free(a), sdw_lora_free(c);
}

/* A file of the given tensors (each [rows, cols] of `v`, or a scalar when
 * rows is 0), parsed as a LoRA; returns the status and fills e. */
typedef struct tspec {
    const char *name;
    int64_t rows, cols;
    float v;
} tspec;

static int parse_spec(const tspec *t, int n, sdw_lora **out, sdw_error *e)
{
    char path[] = "/tmp/sdw-lora-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return sdw_fail(e, SDW_EIO, "mkstemp");
    close(fd);
    sdw_st_entry ent[8];
    int64_t shapes[8][2];
    float *data[8];
    for (int i = 0; i < n; i++) {
        shapes[i][0] = t[i].rows, shapes[i][1] = t[i].cols;
        int64_t numel = t[i].rows ? t[i].rows * t[i].cols : 1;
        data[i] = malloc((size_t)numel * sizeof(float));
        for (int64_t j = 0; j < numel; j++)
            data[i][j] = t[i].v;
        ent[i] = (sdw_st_entry){t[i].name, SDW_DT_F32, t[i].rows ? 2 : 0, shapes[i], data[i]};
    }
    int rc = sdw_st_write(path, ent, (size_t)n, NULL, 0, e);
    for (int i = 0; i < n; i++)
        free(data[i]);
    if (!rc)
        rc = sdw_lora_open(out, path, e);
    unlink(path);
    return rc;
}

static void bad_files(void)
{
    static const char q[] = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    char d[160], u[160], al[160];
    snprintf(d, sizeof d, "%s.lora_down.weight", q);
    snprintf(u, sizeof u, "%s.lora_up.weight", q);
    snprintf(al, sizeof al, "%s.alpha", q);
    struct {
        const char *what, *needle;
        tspec t[4];
        int n;
    } cases[] = {
        {"a missing up factor", "has no up factor", {{d, 4, 32, 0.1f}}, 1},
        {"a rank mismatch", "rank mismatch", {{d, 4, 32, 0.1f}, {u, 32, 3, 0.1f}}, 2},
        {"a negative alpha", "positive and finite", {{d, 4, 32, 0.1f}, {u, 32, 4, 0.1f}, {al, 0, 0, -1}}, 3},
        {"an infinite alpha", "positive and finite", {{d, 4, 32, 0.1f}, {u, 32, 4, 0.1f}, {al, 0, 0, INFINITY}}, 3},
        {"a LoHa tensor", "not supported", {{"lora_unet_x.hada_w1_a", 4, 4, 0}}, 1},
        {"a tensor of no LoRA", "not a LoRA tensor", {{"model.diffusion_model.x.weight", 4, 4, 0}}, 1},
        {"the same layer in two layouts",
         "update the same layer",
         {{d, 4, 32, 0.1f},
          {u, 32, 4, 0.1f},
          {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", 4, 32, 0.1f}},
         3},
        {"a module twice", "given twice", {{d, 4, 32, 0.1f}, {al, 0, 0, 1}, {al, 0, 0, 1}}, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sdw_lora *l = NULL;
        sdw_error e = {0};
        int rc = parse_spec(cases[i].t, cases[i].n, &l, &e);
        /* The writer may itself refuse a duplicate name: then so does the reader. */
        tap_ok(rc != 0 && !l && (strstr(e.msg, cases[i].needle) || strstr(e.msg, "duplicate") ||
                                 strstr(e.msg, "twice")),
               "%s is refused: %s", cases[i].what, e.msg);
        sdw_lora_free(l);
    }

    /* Keys that match nothing; a non-finite factor is refused when applied. */
    tspec none[] = {{"lora_unet_nowhere_to_q.lora_down.weight", 4, 32, 0.1f},
                    {"lora_unet_nowhere_to_q.lora_up.weight", 32, 4, 0.1f}};
    sdw_lora *l = NULL;
    sdw_error e;
    if (tap_ok(!parse_spec(none, 2, &l, &e), "a LoRA for no layer parses")) {
        int rc = sdw_pipeline_lora_check(tiny_a, l, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "none of its 1 modules") && strstr(e.msg, "lora_unet_nowhere_to_q"),
               "a LoRA whose keys match nothing: %s", e.msg);
        sdw_lora_free(l);
    }
    /* tiny-a has one layer per block: input_blocks_1_1 is down_blocks_0_attentions_0. */
    tspec twice[] = {{"lora_unet_input_blocks_1_1_proj_in.lora_down.weight", 4, 32, 0.1f},
                     {"lora_unet_input_blocks_1_1_proj_in.lora_up.weight", 32, 4, 0.1f},
                     {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 4, 32, 0.1f},
                     {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 32, 4, 0.1f}};
    l = NULL;
    if (tap_ok(!parse_spec(twice, 4, &l, &e), "one layer by its SGM and its diffusers name parses")) {
        int rc = sdw_pipeline_lora_check(tiny_a, l, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "update the same layer"), "and is refused against the model: %s",
               e.msg);
        sdw_lora_free(l);
    }
    tspec nan[] = {{d, 4, 32, 0.1f}, {u, 32, 4, NAN}};
    l = NULL;
    int rc = parse_spec(nan, 2, &l, &e);
    tap_ok(rc == SDW_EFORMAT && !l && strstr(e.msg, "not finite"), "a NaN factor is refused at load: %s", e.msg);

    /* Truncated: every cut of a real file is refused, never a crash. */
    char path[4096];
    snprintf(path, sizeof path, "%s/a-kohya-locon.safetensors", tap_fixture("lora"));
    FILE *f = fopen(path, "rb");
    char *buf = malloc(1 << 20);
    size_t len = f ? fread(buf, 1, 1 << 20, f) : 0;
    if (f)
        fclose(f);
    int refused = 0, tries = 0;
    for (size_t cut = 0; cut < len; cut += len / 97 + 1, tries++) {
        sdw_lora *t = NULL;
        if (sdw_lora_parse(&t, buf, cut, &e))
            refused++;
        sdw_lora_free(t);
    }
    tap_ok(len > 0 && refused == tries, "%d of %d truncations of a LoRA are refused", refused, tries);
    free(buf);
}

/* The generation of a case (cases.json), or the one test_lora's own checks
 * use when c is NULL: tiny-a's defaults in fixtures_lora.py. */
static int gen(sdw_pipeline *p, json_object *c, const sdw_lora_use *u, int n, float *lat, sdw_image *img,
               sdw_error *e)
{
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, SDW_GEN_TXT2IMG);
    gp.prompt = "a photo of a cat";
    gp.negative_prompt = "blurry";
    gp.steps = 4;
    gp.guidance = 7.5f;
    gp.width = gp.height = 64;
    gp.seed = 77;
    gp.sampler = "euler";
    json_object *v;
    if (c && json_object_object_get_ex(c, "steps", &v))
        gp.steps = json_object_get_int(v);
    if (c && json_object_object_get_ex(c, "guidance", &v))
        gp.guidance = (float)json_object_get_double(v);
    if (c && json_object_object_get_ex(c, "sampler", &v))
        gp.sampler = json_object_get_string(v);
    gp.loras = u;
    gp.nloras = n;
    return sdw_pipeline_generate(p, &gp, NULL, NULL, img, lat, NULL, e);
}

static sdw_pipeline *case_model(const char *model)
{
    return !strcmp(model, "tiny-a") ? tiny_a : !strcmp(model, "tiny-sd2") ? tiny_sd2
                                           : !strcmp(model, "tiny-sdxl") ? tiny_sdxl : NULL;
}

/* Each case against diffusers, beside the same job without its LoRAs before
 * and after: the LoRA must matter, and leave nothing behind. */
static void one_case(json_object *c)
{
    json_object *v, *loras;
    const char *name = json_object_object_get_ex(c, "name", &v) ? json_object_get_string(v) : "?";
    const char *model = json_object_object_get_ex(c, "model", &v) ? json_object_get_string(v) : "?";
    sdw_pipeline *p = case_model(model);
    if (!tap_ok(p && json_object_object_get_ex(c, "loras", &loras), "%s: model %s and LoRAs known", name, model))
        return;
    int n = (int)json_object_array_length(loras);
    sdw_lora_use u[4] = {0};
    sdw_lora *l[4] = {0};
    for (int i = 0; i < n && i < 4; i++) {
        json_object *o = json_object_array_get_idx(loras, (size_t)i), *f, *w;
        json_object_object_get_ex(o, "file", &f);
        json_object_object_get_ex(o, "weight", &w);
        l[i] = open_fixture(json_object_get_string(f));
        u[i] = (sdw_lora_use){.lora = l[i], .name = json_object_get_string(f), .weight = (float)json_object_get_double(w)};
    }
    char file[256];
    snprintf(file, sizeof file, "lora/%s.safetensors", name);
    sdw_st_file ref;
    sdw_error e;
    const sdw_st_tensor *tl = NULL, *tp = NULL;
    float *want_lat = NULL, *want_pix = NULL;
    int64_t nlat = 0, npix = 0; /* tl and tp go with the file */
    if (!sdw_st_open(&ref, tap_fixture(file), &e)) {
        want_lat = fixture_f32(&ref, "latents", &tl);
        want_pix = fixture_f32(&ref, "image", &tp);
        nlat = tl ? tl->numel : 0, npix = tp ? tp->numel : 0;
        sdw_st_close(&ref);
    } else {
        tap_diag("%s", e.msg);
    }
    sdw_image img = {0}, base_img = {0};
    float lat[4 * 8 * 8], base[4 * 8 * 8];
    int rc = gen(p, c, NULL, 0, base, &base_img, &e);
    tap_ok(!rc, "%s: generates without LoRA%s%s", name, rc ? ": " : "", rc ? e.msg : "");
    if (!rc && tap_ok(want_lat && want_pix && nlat == 4 * 8 * 8 && npix == 64 * 64 * 3, "%s: reference readable", name)) {
        rc = gen(p, c, u, n, lat, &img, &e);
        if (tap_ok(!rc, "%s: generates with %d LoRA(s)%s%s", name, n, rc ? ": " : "", rc ? e.msg : "")) {
            double rel = max_rel_err(lat, want_lat, 4 * 8 * 8);
            tap_ok(rel <= LATENT_TOL, "%s: latents max rel err %.2e (tolerance %.0e)", name, rel, LATENT_TOL);
            tap_ok(max_rel_err(base, want_lat, 4 * 8 * 8) > 1e-2, "%s: the LoRA matters (%.2e from no LoRA)", name,
                   max_rel_err(base, want_lat, 4 * 8 * 8));
            int maxd = 0;
            for (int64_t i = 0; i < npix && i < 64 * 64 * 3; i++) {
                int d = abs((int)img.pixels[i] - (int)want_pix[i]);
                maxd = d > maxd ? d : maxd;
            }
            tap_ok(maxd <= 1, "%s: pixels within %d of diffusers'", name, maxd);
            sdw_image_free(&img);
        }
        float after[4 * 8 * 8];
        rc = gen(p, c, NULL, 0, after, &img, &e);
        tap_ok(!rc && !memcmp(after, base, sizeof after) && base_img.width == img.width &&
                   !memcmp(img.pixels, base_img.pixels, (size_t)img.width * img.height * 3),
               "%s: the next job without LoRA gives bit for bit the image of before", name);
        sdw_image_free(&img);
    }
    sdw_image_free(&base_img);
    free(want_lat);
    free(want_pix);
    for (int i = 0; i < n && i < 4; i++)
        sdw_lora_free(l[i]);
}

static sdw_pipeline *load(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", tap_fixture("models"), name);
    sdw_pipeline *p = NULL;
    sdw_error e;
    int rc = sdw_pipeline_load(&p, be, dir, NULL, &e);
    tap_ok(!rc, "%s loads%s%s", name, rc ? ": " : "", rc ? e.msg : "");
    return p;
}

int main(void)
{
    sdw_error e;
    sgm_names();
    if (sdw_backend_cpu(&be, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
    tiny_a = load("tiny-a");
    tiny_sd2 = load("tiny-sd2");
    tiny_sdxl = load("tiny-sdxl");
    if (!tiny_a || !tiny_sd2 || !tiny_sdxl)
        return tap_done();
    parsing();
    sdxl_parsing();
    bad_files();

    float base_a[4 * 8 * 8];
    sdw_image base_img = {0};
    int rc = gen(tiny_a, NULL, NULL, 0, base_a, &base_img, &e);
    tap_ok(!rc, "tiny-a without LoRA%s%s", rc ? ": " : "", rc ? e.msg : "");

    json_object *cases = json_object_from_file(tap_fixture("lora/cases.json"));
    if (tap_ok(cases && json_object_is_type(cases, json_type_array), "lora/cases.json readable")) {
        for (size_t i = 0; i < json_object_array_length(cases); i++)
            one_case(json_object_array_get_idx(cases, i));
        json_object_put(cases);
    }

    /* A job whose second LoRA does not fit changes nothing. */
    sdw_lora *good = open_fixture("a-kohya-attn.safetensors"), *bad = open_fixture("sd2-kohya.safetensors");
    if (tap_ok(good && bad, "a good and a misfit LoRA")) {
        sdw_lora_use use[2] = {{good, "good", 1.0f}, {bad, "bad", 1.0f}};
        float lat[4 * 8 * 8];
        sdw_image img = {0};
        rc = gen(tiny_a, NULL, use, 2, lat, &img, &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "LoRA bad: is for sd2"), "a job with a misfit LoRA fails: %s", e.msg);
        rc = gen(tiny_a, NULL, NULL, 0, lat, &img, &e);
        tap_ok(!rc && !memcmp(lat, base_a, sizeof lat), "and the next job is bit for bit the one of before");
        sdw_image_free(&img);
    }
    sdw_lora_free(good);
    sdw_lora_free(bad);
    sdw_image_free(&base_img);
    sdw_pipeline_free(tiny_a);
    sdw_pipeline_free(tiny_sd2);
    sdw_pipeline_free(tiny_sdxl);
    sdw_backend_destroy(be);
    return tap_done();
}
