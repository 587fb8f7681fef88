/* The CLIP text encoder against transformers' CLIPTextModel on the tiny
 * random-weight models that tests/reference/make_fixtures.py and
 * fixtures_sd2.py save: the last hidden state and diffusers' clip_skip=1
 * output, from a diffusers folder (transformers 4's and 5's spellings), from
 * the same weights re-keyed as a single-file LDM checkpoint, and for SD 2.x
 * (gelu, padding with "!") from the OpenCLIP single file the reference's
 * converter reads back to the folder's weights; SDXL's two encoders
 * (fixtures_sdxl.py): the penultimate states of each and the second's
 * pooled projection, in today's layout, the old hub one and the SGM single
 * file (OpenCLIP bigG with its transposed text_projection). */
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "fixture.h"
#include "model/clip.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tap.h"

#define TOL 1e-4

static sdw_backend *be;

typedef struct fixture {
    sdw_st_file st;
    int k, t, h;
    float *ids, *embeds, *skip1;
    json_object *prompts;
} fixture;

static int fixture_open(fixture *fx, const char *model)
{
    char name[256];
    sdw_error e;
    snprintf(name, sizeof name, "embeds-%s.safetensors", model);
    if (sdw_st_open(&fx->st, tap_fixture(name), &e)) {
        tap_diag("%s", e.msg);
        return -1;
    }
    const sdw_st_tensor *emb = sdw_st_find(&fx->st, "embeds");
    if (!emb || emb->ndim != 3)
        return -1;
    fx->k = (int)emb->shape[0], fx->t = (int)emb->shape[1], fx->h = (int)emb->shape[2];
    fx->ids = fixture_f32(&fx->st, "ids", NULL);
    fx->embeds = fixture_f32(&fx->st, "embeds", NULL);
    fx->skip1 = fixture_f32(&fx->st, "embeds_clip_skip1", NULL);
    const char *p = sdw_st_meta(&fx->st, "prompts");
    fx->prompts = p ? json_tokener_parse(p) : NULL;
    return fx->ids && fx->embeds && fx->skip1 && fx->prompts ? 0 : -1;
}

static void fixture_close(fixture *fx)
{
    free(fx->ids), free(fx->embeds), free(fx->skip1);
    json_object_put(fx->prompts);
    sdw_st_close(&fx->st);
}

/* Encodes all fixture prompts in one batch and compares both outputs. */
static void check_encoder(const char *label, const sdw_model *m, fixture *fx)
{
    sdw_error e;
    sdw_clip *clip = NULL;
    int rc = sdw_clip_load(&clip, be, &m->clip, &m->text_encoder, &e);
    if (!tap_ok(rc == 0, "%s: text encoder loads%s%s", label, rc ? ": " : "", rc ? e.msg : ""))
        return;
    size_t n = (size_t)fx->k * fx->t * fx->h;
    int32_t *ids = malloc((size_t)fx->k * fx->t * sizeof *ids);
    float *got = malloc(n * sizeof *got);
    for (int i = 0; i < fx->k * fx->t; i++)
        ids[i] = (int32_t)fx->ids[i];
    int64_t shape[3] = {fx->k, fx->t, fx->h};
    sdw_tensor out;
    sdw_tensor_new(&out, be, 3, shape, &e);
    for (int skip = 0; skip <= 1; skip++) {
        rc = sdw_clip_encode(clip, ids, fx->k, fx->t, skip, &out, &e);
        if (rc == 0)
            rc = sdw_tensor_to_host(&out, got, &e);
        double r = rc ? INFINITY : max_rel_err(got, skip ? fx->skip1 : fx->embeds, n);
        tap_ok(rc == 0 && r <= TOL, "%s: %d prompts, clip_skip %d: max rel err %.2e (tolerance %.0e)%s%s", label,
               fx->k, skip, r, TOL, rc ? ": " : "", rc ? e.msg : "");
    }
    rc = sdw_clip_encode(clip, ids, fx->k, fx->t, m->clip.num_layers, &out, &e);
    tap_ok(rc == SDW_EINVAL, "%s: clip_skip as large as the layer count is refused: %s", label, e.msg);
    sdw_tensor_free(&out);
    free(ids), free(got);
    sdw_clip_free(clip);
}

/* The model's own tokenizer must give the fixture's ids for its prompts. */
static void check_tokens(const char *label, const sdw_model *m, fixture *fx)
{
    int32_t ids[SDW_TOK_CONTEXT];
    int bad = -1;
    sdw_error e;
    for (int i = 0; i < fx->k && bad < 0; i++) {
        const char *p = json_object_get_string(json_object_array_get_idx(fx->prompts, (size_t)i));
        if (sdw_tok_encode(m->tokenizer, p, ids, fx->t, m->clip.pad_id, &e) < 0)
            bad = i;
        for (int j = 0; j < fx->t && bad < 0; j++)
            if (ids[j] != (int32_t)fx->ids[i * fx->t + j])
                bad = i;
    }
    tap_ok(bad < 0, "%s: the model's tokenizer reproduces the fixture ids%s", label, bad >= 0 ? " (mismatch)" : "");
}

/* Re-keys the diffusers text encoder as an LDM single-file checkpoint. */
static int write_ldm(const char *model_dir, const char *path)
{
    char src[4096];
    snprintf(src, sizeof src, "%s/text_encoder/model.safetensors", model_dir);
    sdw_st_file f;
    sdw_error e;
    if (sdw_st_open(&f, src, &e))
        return -1;
    int rc = fixture_write_ldm(&f, NULL, "cond_stage_model.transformer.", 0, path);
    sdw_st_close(&f);
    return rc;
}

/* single_file: also re-key it as an LDM file; only for a model whose head
 * count is the one a single file implies (hidden/64, at least 1). embeds
 * names the reference (another model with the same weights, or the model).
 * tokens: compare the model's tokenizer with the reference ids, which for
 * the fixtures transformers 5 saved it gives differently (a pad token "!"
 * is an added token there, CJK is not split); the tokenizer.json work
 * checks those. */
static void check_model(const char *model, const char *embeds, int single_file, int tokens)
{
    char dir[4096], label[64];
    snprintf(dir, sizeof dir, "%s", tap_fixture("models"));
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", model);
    fixture fx = {0};
    if (!tap_ok(fixture_open(&fx, embeds) == 0, "%s: reference embeddings readable", model))
        return;
    sdw_model m;
    sdw_error e;
    snprintf(label, sizeof label, "%s (diffusers)", model);
    int rc = sdw_model_open(&m, dir, &e);
    if (tap_ok(rc == 0, "%s: opens%s%s", label, rc ? ": " : "", rc ? e.msg : "")) {
        if (tokens)
            check_tokens(label, &m, &fx);
        /* the first prompt is short: its last id is the padding */
        tap_ok(m.clip.pad_id == (int32_t)fx.ids[fx.t - 1], "%s: pad id %d as the reference pads", label,
               m.clip.pad_id);
        check_encoder(label, &m, &fx);
        sdw_model_close(&m);
    }

    char tmpl[] = "/tmp/sdw-clip-XXXXXX", path[4096];
    if (!single_file || !mkdtemp(tmpl)) {
        fixture_close(&fx);
        return;
    }
    snprintf(path, sizeof path, "%s/%s.safetensors", tmpl, model);
    snprintf(label, sizeof label, "%s (single file)", model);
    rc = write_ldm(dir, path);
    if (rc == 0)
        rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "%s: opens%s%s", label, rc ? ": " : "", rc ? e.msg : "")) {
        tap_ok(m.layout == SDW_LAYOUT_LDM && m.clip.num_heads == 1 && m.clip.num_layers == 2,
               "%s: layout and sizes inferred from the tensors", label);
        check_encoder(label, &m, &fx);
        sdw_model_close(&m);
    }
    unlink(path);
    rmdir(tmpl);
    fixture_close(&fx);
}

/* tiny-sd2.safetensors: the OpenCLIP tower with an unused third block. A
 * single file does not say the head count of a tower this small (64-wide
 * heads would be one), so it comes from the folder, as diffusers'
 * from_single_file(config=) takes it. */
static void check_openclip(void)
{
    const char *label = "tiny-sd2 (OpenCLIP single file)";
    fixture fx = {0};
    if (!tap_ok(fixture_open(&fx, "tiny-sd2") == 0, "%s: reference embeddings readable", label))
        return;
    sdw_model m;
    sdw_error e;
    int rc = sdw_model_open(&m, tap_fixture("models/tiny-sd2.safetensors"), &e);
    if (tap_ok(rc == 0, "%s: opens%s%s", label, rc ? ": " : "", rc ? e.msg : "")) {
        const sdw_clip_config *c = &m.clip;
        tap_ok(c->num_layers == 2 && c->hidden_size == 16 && c->intermediate_size == 64 && c->num_heads == 1 &&
                   !c->quick_gelu && c->pad_id == 0 && !strcmp(m.family, "sd2"),
               "%s: 3 blocks give 2 layers; gelu, pad 0, sd2", label);
        m.clip.num_heads = 2;
        check_encoder(label, &m, &fx);
        sdw_model_close(&m);
    }
    fixture_close(&fx);
}

/* One SDXL encoder: the model's tokenizer gives the reference ids, which
 * give hidden_states[-2] and, for the second, the pooled embedding. */
static void check_xl_encoder(const char *label, const sdw_clip_config *cc, const sdw_weights *w,
                             const sdw_tokenizer *tok, const sdw_st_file *fx, const char *ids_name,
                             const char *hidden_name, const char *pooled_name)
{
    sdw_error e;
    sdw_clip *clip = NULL;
    const sdw_st_tensor *hi, *pi = NULL;
    float *fids = fixture_f32(fx, ids_name, NULL), *want = fixture_f32(fx, hidden_name, &hi);
    float *want_p = pooled_name ? fixture_f32(fx, pooled_name, &pi) : NULL;
    const char *prompts_json = sdw_st_meta(fx, "prompts");
    json_object *prompts = prompts_json ? json_tokener_parse(prompts_json) : NULL;
    if (!tap_ok(fids && want && prompts && (!pooled_name || want_p), "%s: reference readable", label))
        goto out;
    int k = (int)hi->shape[0], t = (int)hi->shape[1], bad = -1;
    int32_t *ids = malloc((size_t)k * t * sizeof *ids), row[SDW_TOK_CONTEXT];
    for (int i = 0; i < k * t; i++)
        ids[i] = (int32_t)fids[i];
    for (int i = 0; i < k && bad < 0; i++)
        if (sdw_tok_encode(tok, json_object_get_string(json_object_array_get_idx(prompts, (size_t)i)), row, t,
                           cc->pad_id, &e) < 0 || memcmp(row, ids + i * t, sizeof row))
            bad = i;
    tap_ok(bad < 0, "%s: the tokenizer (pad id %d) reproduces the reference ids%s", label, cc->pad_id,
           bad >= 0 ? " (mismatch)" : "");
    int rc = sdw_clip_load(&clip, be, cc, w, &e);
    if (tap_ok(rc == 0, "%s: loads%s%s", label, rc ? ": " : "", rc ? e.msg : "")) {
        sdw_tensor h = {0}, p = {0};
        int64_t pshape[2] = {k, cc->projection_dim};
        float *got = malloc((size_t)hi->numel * sizeof *got), *got_p = malloc(((size_t)k * cc->projection_dim + 1) * sizeof *got_p);
        rc = sdw_tensor_new(&h, be, 3, hi->shape, &e);
        if (!rc && want_p)
            rc = sdw_tensor_new(&p, be, 2, pshape, &e);
        if (!rc)
            rc = sdw_clip_encode_hidden(clip, ids, k, t, cc->num_layers - 1, &h, want_p ? &p : NULL, &e);
        if (!rc)
            rc = sdw_tensor_to_host(&h, got, &e);
        if (!rc && want_p)
            rc = sdw_tensor_to_host(&p, got_p, &e);
        double r = rc ? INFINITY : max_rel_err(got, want, (size_t)hi->numel);
        tap_ok(r <= TOL, "%s: %d prompts, hidden_states[-2]: max rel err %.2e%s%s", label, k, r, rc ? ": " : "",
               rc ? e.msg : "");
        if (want_p) {
            r = rc ? INFINITY : max_rel_err(got_p, want_p, (size_t)pi->numel);
            tap_ok(r <= TOL, "%s: pooled text_embeds [%d,%d]: max rel err %.2e", label, k, cc->projection_dim, r);
        } else {
            rc = sdw_clip_encode_hidden(clip, ids, k, t, cc->num_layers - 1, &h, &h, &e);
            tap_ok(rc == SDW_EINVAL && strstr(e.msg, "projection"), "%s: no pooled output without a projection: %s",
                   label, e.msg);
        }
        sdw_tensor_free(&h), sdw_tensor_free(&p);
        free(got), free(got_p);
        free(ids);
        sdw_clip_free(clip);
    } else {
        free(ids);
    }
out:
    free(fids), free(want), free(want_p);
    json_object_put(prompts);
}

/* A single file does not say the head count of towers this small (64-wide
 * heads would be one each): it comes from the folder, as diffusers'
 * from_single_file(config=) takes it. */
static void check_sdxl(const char *model, int single_file)
{
    char dir[4096], label[96];
    snprintf(dir, sizeof dir, "%s/%s", tap_fixture("models"), model);
    sdw_st_file fx;
    sdw_model m;
    sdw_error e;
    if (!tap_ok(sdw_st_open(&fx, tap_fixture("embeds-tiny-sdxl.safetensors"), &e) == 0,
                "%s: reference embeddings readable", model))
        return;
    int rc = sdw_model_open(&m, dir, &e);
    if (tap_ok(rc == 0, "%s: opens%s%s", model, rc ? ": " : "", rc ? e.msg : "")) {
        if (single_file) {
            tap_ok(m.layout == SDW_LAYOUT_LDM && m.clip.num_layers == 3 && m.clip2.num_layers == 3 &&
                       m.clip.hidden_size == 8 && m.clip2.hidden_size == 16 && m.clip2.intermediate_size == 48 &&
                       m.clip.num_heads == 1 && m.clip2.num_heads == 1 && m.default_size == 1024,
                   "%s: SGM layout; both towers' sizes, every block, read off the tensors; 1024x1024", model);
            m.clip.num_heads = m.clip2.num_heads = 2;
        }
        tap_ok(!strcmp(m.family, "sdxl") && m.force_zeros && m.clip.projection_dim == 0 &&
                   m.clip2.projection_dim == 12 && m.clip.quick_gelu && !m.clip2.quick_gelu && m.clip.pad_id == 49407 &&
                   m.clip2.pad_id == 0,
               "%s: sdxl, force_zeros, quick_gelu ViT-L padding with 49407, gelu bigG padding with \"!\" (0), "
               "projection 12", model);
        snprintf(label, sizeof label, "%s text_encoder", model);
        check_xl_encoder(label, &m.clip, &m.text_encoder, m.tokenizer, &fx, "ids", "hidden_1", NULL);
        snprintf(label, sizeof label, "%s text_encoder_2", model);
        check_xl_encoder(label, &m.clip2, &m.text_encoder_2, m.tokenizer_2, &fx, "ids_2", "hidden_2", "pooled");
        sdw_model_close(&m);
    }
    sdw_st_close(&fx);
}

int main(void)
{
    sdw_error e;
    if (sdw_backend_cpu(&be, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
    check_model("tiny-a", "tiny-a", 0, 1);
    check_model("tiny-b", "tiny-b", 1, 1);
    check_model("tiny-a-today", "tiny-a", 0, 0);
    check_model("tiny-sd2", "tiny-sd2", 0, 0);
    check_model("tiny-sd2-inpaint", "tiny-sd2-inpaint", 0, 0);
    check_openclip();
    check_sdxl("tiny-sdxl", 0);       /* tokenizer.json, unprefixed ViT-L */
    check_sdxl("tiny-sdxl-turbo", 0); /* vocab.json + merges.txt, text_model.-prefixed ViT-L */
    check_sdxl("tiny-sdxl.safetensors", 1);
    sdw_backend_destroy(be);
    return tap_done();
}
