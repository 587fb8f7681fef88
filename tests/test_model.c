/* Model loader: synthetic diffusers folders and LDM single files built in a
 * temporary directory, loaded back, and broken one way at a time. */
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/half.h"
#include "backend/backend.h"
#include "fixture.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "tap.h"

static char root[] = "/tmp/sdw-model-XXXXXX";

typedef struct spec {
    int vocab, hidden, positions, inter, layers;
    sdw_dtype dtype;
    int no_position;      /* drop the position embedding */
} spec;

static const spec tiny = {49408, 8, 77, 16, 2, SDW_DT_F16, 0};

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *pathf(const char *fmt, ...)
{
    static char buf[8][4096];
    static int k;
    char *b = buf[k++ & 7];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof buf[0], fmt, ap);
    va_end(ap);
    return b;
}

static int copy(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t n;
    int ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a)
        fclose(a);
    if (b)
        fclose(b);
    return ok ? 0 : -1;
}

/* A tensor of a hand-made file: its name and shape, values from the common
 * pattern. */
typedef struct shaped {
    const char *name;
    int ndim;
    int64_t shape[4];
} shaped;

/* The pattern every written tensor holds: (i % 17) / 8 - 1. */
static float pattern(size_t i)
{
    return (float)(i % 17) * 0.125f - 1.0f;
}

/* Writes the tensors t[n] as dtype to path. */
static int write_shaped(const char *path, sdw_dtype dtype, const shaped *t, size_t n)
{
    sdw_st_entry ent[96];
    size_t big = 1;
    if (n > sizeof ent / sizeof ent[0])
        return -1;
    for (size_t i = 0; i < n; i++) {
        size_t k = 1;
        for (int d = 0; d < t[i].ndim; d++)
            k *= (size_t)t[i].shape[d];
        big = k > big ? k : big;
    }
    float *data = calloc(big, sizeof *data);
    for (size_t i = 0; data && i < big; i++)
        data[i] = pattern(i);
    for (size_t i = 0; i < n; i++)
        ent[i] = (sdw_st_entry){t[i].name, dtype, t[i].ndim, t[i].shape, data};
    sdw_error e;
    int rc = data ? sdw_st_write(path, ent, n, NULL, 0, &e) : -1;
    if (rc < 0)
        tap_diag("write %s: %s", path, data ? e.msg : "out of memory");
    free(data);
    return rc;
}

typedef struct names {
    shaped t[96];
    char name[96][192];
    size_t n;
} names;

static void add(names *l, int64_t r, int64_t c, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void add(names *l, int64_t r, int64_t c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->name[l->n], sizeof l->name[0], fmt, ap);
    va_end(ap);
    l->t[l->n] = (shaped){l->name[l->n], c ? 2 : 1, {r, c}};
    l->n++;
}

static void add_all(names *l, const shaped *extra, size_t nextra)
{
    for (size_t i = 0; i < nextra; i++)
        l->t[l->n++] = extra[i];
}

/* Writes the CLIP tensors of s (transformers 5 names after prefix) plus the
 * `extra` tensors to path. */
static int write_clip(const char *path, const spec *s, const char *prefix, const shaped *extra, size_t nextra)
{
    names *l = calloc(1, sizeof *l);
    add(l, s->vocab, s->hidden, "%sembeddings.token_embedding.weight", prefix);
    if (!s->no_position)
        add(l, s->positions, s->hidden, "%sembeddings.position_embedding.weight", prefix);
    for (int i = 0; i < s->layers; i++) {
        add(l, s->inter, s->hidden, "%sencoder.layers.%d.mlp.fc1.weight", prefix, i);
        add(l, s->inter, 0, "%sencoder.layers.%d.mlp.fc1.bias", prefix, i);
    }
    add(l, s->hidden, 0, "%sfinal_layer_norm.weight", prefix);
    add_all(l, extra, nextra);
    int rc = write_shaped(path, s->dtype, l->t, l->n);
    free(l);
    return rc;
}

/* The same sizes as an OpenCLIP tower (SD 2.x single file): `blocks`
 * resblocks whose in_proj has in_rows rows, plus `extra`. */
static int write_openclip(const char *path, const spec *s, int blocks, int64_t in_rows, const shaped *extra,
                          size_t nextra)
{
    names *l = calloc(1, sizeof *l);
    const char *p = "cond_stage_model.model.";
    int64_t h = s->hidden;
    add(l, s->vocab, h, "%stoken_embedding.weight", p);
    add(l, s->positions, h, "%spositional_embedding", p);
    add(l, h, h, "%stext_projection", p);
    add(l, h, 0, "%sln_final.weight", p);
    for (int b = 0; b < blocks; b++) {
        add(l, in_rows, h, "%stransformer.resblocks.%d.attn.in_proj_weight", p, b);
        add(l, in_rows, 0, "%stransformer.resblocks.%d.attn.in_proj_bias", p, b);
        add(l, s->inter, h, "%stransformer.resblocks.%d.mlp.c_fc.weight", p, b);
    }
    add_all(l, extra, nextra);
    int rc = write_shaped(path, s->dtype, l->t, l->n);
    free(l);
    return rc;
}

/* I32 tensors cannot come from sdw_st_write; append one by hand. */
static void write_int_tensor_file(const char *path)
{
    const char hdr[] = "{\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    FILE *f = fopen(path, "wb");
    uint64_t n = sizeof hdr - 1;
    if (!f)
        return;
    for (int i = 0; i < 8; i++)
        fputc((int)(n >> (8 * i)) & 0xff, f);
    fwrite(hdr, 1, n, f);
    fwrite("\1\0\0\0\2\0\0\0", 1, 8, f);
    fclose(f);
}

static void write_tokenizer(const char *dir)
{
    const char *fx = tap_fixture("models/tiny-a/tokenizer");
    if (copy(pathf("%s/vocab.json", fx), pathf("%s/vocab.json", dir)) == 0 &&
        copy(pathf("%s/merges.txt", fx), pathf("%s/merges.txt", dir)) == 0)
        return;
    /* Without the fixture: a vocabulary with the 512 byte-level base tokens
     * and the special tokens, which is all a byte-level BPE needs. */
    FILE *f = fopen(pathf("%s/vocab.json", dir), "w");
    if (!f)
        return;
    fputs("{", f);
    int id = 0;
    for (int w = 0; w < 2; w++)
        for (int b = 0, extra = 0; b < 256; b++) {
            int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
            int cp = printable ? b : 256 + extra++;
            char u[16];
            if (cp < 0x80)
                snprintf(u, sizeof u, "%s", cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : (char[]){(char)cp, 0});
            else
                snprintf(u, sizeof u, "\\u%04x", cp);
            fprintf(f, "\"%s%s\": %d, ", u, w ? "</w>" : "", id++);
        }
    fputs("\"<|startoftext|>\": 49406, \"<|endoftext|>\": 49407}", f);
    fclose(f);
    put(pathf("%s/merges.txt", dir), "#version: 0.2\n");
}

/* A complete diffusers folder at root/name. */
static char *make_diffusers(const char *name, const spec *s)
{
    char *d = strdup(pathf("%s/%s", root, name));
    mkdir(d, 0755);
    put(pathf("%s/model_index.json", d), "{\"_class_name\": \"StableDiffusionPipeline\"}");
    mkdir(pathf("%s/text_encoder", d), 0755);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d, "
             "\"num_hidden_layers\": %d, \"num_attention_heads\": 2, \"max_position_embeddings\": %d, "
             "\"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-05, \"pad_token_id\": 1}",
             s->vocab, s->hidden, s->inter, s->layers, s->positions);
    put(pathf("%s/text_encoder/config.json", d), cfg);
    /* transformers 4's spelling, with the position_ids buffer it saved */
    const shaped ids = {"text_model.embeddings.position_ids", 2, {1, 77}};
    write_clip(pathf("%s/text_encoder/model.safetensors", d), s, "text_model.", &ids, 1);
    mkdir(pathf("%s/tokenizer", d), 0755);
    write_tokenizer(pathf("%s/tokenizer", d));
    put(pathf("%s/tokenizer/special_tokens_map.json", d),
        "{\"pad_token\": \"<|endoftext|>\", \"eos_token\": {\"content\": \"<|endoftext|>\"}}");
    const char *parts[2] = {"unet", "vae"};
    for (int i = 0; i < 2; i++) {
        mkdir(pathf("%s/%s", d, parts[i]), 0755);
        put(pathf("%s/%s/config.json", d, parts[i]), "{\"sample_size\": 8, \"in_channels\": 4}");
        float x[4] = {1, 2, 3, 4};
        const int64_t sh[1] = {4};
        sdw_st_entry en = {"conv_in.weight", SDW_DT_F32, 1, sh, x};
        sdw_error e;
        sdw_st_write(pathf("%s/%s/diffusion_pytorch_model.fp16.safetensors", d, parts[i]), &en, 1, NULL,
                     0, &e);
    }
    mkdir(pathf("%s/scheduler", d), 0755);
    put(pathf("%s/scheduler/scheduler_config.json", d), "{\"_class_name\": \"PNDMScheduler\"}");
    return d;
}

/* Opens path, expects code and a message containing needle (and needle2). */
static void expect_fail(const char *what, const char *path, int code, const char *needle,
                        const char *needle2)
{
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, path, &e);
    int ok = rc == code && strstr(e.msg, needle) && (!needle2 || strstr(e.msg, needle2));
    tap_ok(ok, "%s: %s, message mentions %s", what, sdw_status_name(code), needle);
    if (!ok)
        tap_diag("rc %d: %s", rc, e.msg);
    if (rc == 0)
        sdw_model_close(&m);
}

static void test_diffusers_ok(void)
{
    char *d = make_diffusers("good", &tiny);
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, d, &e);
    if (!tap_ok(rc == 0, "diffusers folder opens (%s)", rc ? e.msg : "")) {
        free(d);
        return;
    }
    const sdw_clip_config *c = &m.clip;
    tap_ok(m.layout == SDW_LAYOUT_DIFFUSERS, "layout is diffusers");
    tap_ok(c->vocab_size == 49408 && c->hidden_size == 8 && c->intermediate_size == 16 &&
               c->num_layers == 2 && c->num_heads == 2 && c->max_positions == 77 && c->quick_gelu == 1 &&
               c->layer_norm_eps == 1e-5f,
           "CLIP config read from text_encoder/config.json");
    tap_ok(c->pad_id == 49407, "pad id from special_tokens_map.json (config's pad_token_id ignored)");
    tap_ok(m.tokenizer != NULL, "tokenizer loaded");
    tap_ok(strcmp(m.text_encoder.prefix, "text_model.") == 0 && strcmp(m.text_encoder.part, "text_encoder") == 0 &&
               m.text_encoder.nfiles == 1 && !m.text_encoder.map,
           "text encoder weights: one file, the text_model. prefix it uses");
    tap_ok(m.family && !strcmp(m.family, "sd1") && !m.inpainting && m.default_size == 64 &&
               !strcmp(sdw_model_prediction(&m), "epsilon"),
           "sd1 (quick_gelu), not inpainting, 8 x 2^3 = 64 px, epsilon without a prediction_type");
    tap_ok(m.unet.nfiles == 1 && m.vae.nfiles == 1 && strstr(m.unet.files[0]->path, ".fp16.safetensors"),
           "unet and vae weights (fp16 variant file names)");
    json_object *x;
    tap_ok(m.unet_config && json_object_object_get_ex(m.unet_config, "sample_size", &x) &&
               json_object_get_int(x) == 8 && m.vae_config && m.scheduler_config,
           "unet, vae and scheduler configs parsed");
    tap_ok(sdw_model_require_pipeline(&m, &e) == 0, "complete pipeline");

    const sdw_st_tensor *t;
    tap_ok(sdw_weights_find(&m.unet, "conv_in.weight", &t, &e) == 0 && t->numel == 4, "find a unet tensor");
    rc = sdw_weights_find(&m.text_encoder, "nope.weight", &t, &e);
    tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "nope.weight") && strstr(e.msg, "model.safetensors") &&
               strstr(e.msg, "text_encoder"),
           "missing tensor: not found, names tensor, part and file (%s)", e.msg);
    float *w = NULL;
    const int64_t ok_shape[2] = {16, 8}, bad_shape[2] = {3072, 768};
    rc = sdw_weights_load(&m.text_encoder, "encoder.layers.1.mlp.fc1.weight", 2, ok_shape, &w, &e);
    tap_ok(rc == 0 && w && w[0] == -1.0f && w[1] == -0.875f && w[17] == -1.0f,
           "load with the right shape converts F16 to float32");
    free(w);
    rc = sdw_weights_load(&m.text_encoder, "encoder.layers.0.mlp.fc1.weight", 2, bad_shape, &w, &e);
    tap_ok(rc == SDW_EFORMAT && w == NULL &&
               strstr(e.msg, "text_encoder: text_model.encoder.layers.0.mlp.fc1.weight has shape [16,8], "
                             "expected [3072,768]"),
           "wrong shape names both shapes (%s)", e.msg);
    const int64_t one[1] = {16};
    rc = sdw_weights_load(&m.text_encoder, "encoder.layers.0.mlp.fc1.weight", 1, one, &w, &e);
    tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "expected [16]"), "wrong rank is a shape error");
    sdw_model_close(&m);

    /* An integer tensor: the dtype check. */
    sdw_st_file f;
    write_int_tensor_file(pathf("%s/int.safetensors", root));
    if (tap_ok(sdw_st_open(&f, pathf("%s/int.safetensors", root), &e) == 0, "int tensor file opens")) {
        const sdw_st_file *fp = &f;
        sdw_weights iw = {.files = &fp, .nfiles = 1, .prefix = "", .part = "unet"};
        const int64_t s2[1] = {2};
        rc = sdw_weights_load(&iw, "i", 1, s2, &w, &e);
        tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "I32") && strstr(e.msg, "unet: i"),
               "integer dtype refused, names dtype and tensor (%s)", e.msg);
        sdw_st_close(&f);
    }

    /* Variants: gelu, a different eps, an AddedToken-style pad token. */
    put(pathf("%s/text_encoder/config.json", d),
        "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 8, \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\","
        " \"layer_norm_eps\": 1e-6}");
    put(pathf("%s/tokenizer/special_tokens_map.json", d), "{\"pad_token\": {\"content\": \"!\"}}");
    rename(pathf("%s/text_encoder/model.safetensors", d), pathf("%s/text_encoder/model.fp16.safetensors", d));
    unlink(pathf("%s/scheduler/scheduler_config.json", d));
    rmdir(pathf("%s/scheduler", d));
    rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "variant folder opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.quick_gelu == 0 && m.clip.layer_norm_eps == 1e-6f && m.clip.num_heads == 8,
               "gelu, eps and heads from config");
        tap_ok(!strcmp(m.family, "sd2"), "a gelu text encoder is SD 2's OpenCLIP tower");
        json_object *vocab = json_object_from_file(pathf("%s/tokenizer/vocab.json", d)), *id = NULL;
        int want = vocab && json_object_object_get_ex(vocab, "!", &id) ? json_object_get_int(id) : -1;
        json_object_put(vocab);
        tap_ok(want >= 0 && m.clip.pad_id == want,
               "pad token given as {\"content\": \"!\"} looked up in vocab.json (%d, want %d)",
               m.clip.pad_id, want);
        tap_ok(strstr(m.text_encoder.files[0]->path, "model.fp16.safetensors") != NULL,
               "model.fp16.safetensors used when model.safetensors is absent");
        rc = sdw_model_require_pipeline(&m, &e);
        tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "scheduler_config.json"),
               "no scheduler: pipeline check names it");
        sdw_model_close(&m);
    }
    free(d);
}

/* The tokenizer/ folder: tokenizer.json first, the pad token from
 * tokenizer_config.json or special_tokens_map.json, and their errors. */
static void test_tokenizer_folder(void)
{
    const char *today = tap_fixture("models/tiny-a-today/tokenizer/tokenizer.json");
    char *d = make_diffusers("tok", &tiny);
    const char *tj = pathf("%s/tokenizer/tokenizer.json", d);
    const char *cfg = pathf("%s/tokenizer/tokenizer_config.json", d);
    const char *map = pathf("%s/tokenizer/special_tokens_map.json", d);
    sdw_model m;
    sdw_error e = {0};
    int32_t ids[SDW_TOK_CONTEXT];
    if (!tap_ok(copy(today, tj) == 0, "copy %s", today)) {
        free(d);
        return;
    }
    /* tokenizer.json wins: a broken vocab.json next to it is not read. */
    put(pathf("%s/tokenizer/vocab.json", d), "not json");
    put(cfg, "{\"pad_token\": \"!\"}");
    unlink(map);
    int rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "folder with tokenizer.json opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.pad_id == 0, "pad_token \"!\" from tokenizer_config.json is id 0 (%d)", m.clip.pad_id);
        rc = sdw_tok_encode(m.tokenizer, "a photo of a cat", ids, SDW_TOK_CONTEXT, m.clip.pad_id, &e);
        tap_ok(rc == 7 && ids[1] == 320 && ids[5] == 2368 && ids[6] == SDW_TOK_EOS && ids[7] == 0,
               "its tokenizer encodes and pads with 0");
        sdw_model_close(&m);
    }
    /* added_tokens_decoder overrides tokenizer.json's "normalized". */
    put(cfg, "{\"added_tokens_decoder\": {\"49407\": {\"content\": \"<|endoftext|>\", \"normalized\": false}}}");
    rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "folder with added_tokens_decoder opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.pad_id == SDW_TOK_EOS, "no pad_token anywhere: <|endoftext|>");
        rc = sdw_tok_encode(m.tokenizer, "<|ENDOFTEXT|> <|endoftext|>", ids, SDW_TOK_CONTEXT, m.clip.pad_id, &e);
        tap_ok(rc == 9 && ids[7] == SDW_TOK_EOS,
               "<|endoftext|> not normalized: only the exact spelling is special (%d)", rc);
        sdw_model_close(&m);
    }
    /* Without added_tokens_decoder, special_tokens_map.json's named tokens
     * replace tokenizer_config.json's; with one, the map is not read. */
    put(cfg, "{\"pad_token\": \"!\"}");
    put(map, "{\"pad_token\": {\"content\": \"<|endoftext|>\"}}");
    rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "folder with two pad tokens opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.pad_id == SDW_TOK_EOS, "special_tokens_map.json's pad token wins (%d)", m.clip.pad_id);
        sdw_model_close(&m);
    }
    put(cfg, "{\"pad_token\": \"!\", \"added_tokens_decoder\": {}}");
    rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "folder with two pad tokens and added_tokens_decoder opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.pad_id == 0, "then tokenizer_config.json's pad token wins (%d)", m.clip.pad_id);
        sdw_model_close(&m);
    }
    put(cfg, "{\"pad_token\": \"<pad>\"}");
    unlink(map);
    expect_fail("pad token not in the vocabulary", d, SDW_EFORMAT, "'<pad>' is id 49408, outside",
                "tokenizer_config.json");
    put(cfg, "{\"added_tokens_decoder\": {\"7\": {\"content\": \"!\"}}}");
    expect_fail("added_tokens_decoder id transformers would not give", d, SDW_EFORMAT,
                "added_tokens_decoder[\"7\"] is filed under id 7, but transformers 5 gives \"!\" the id 0", NULL);
    put(cfg, "{\"added_tokens_decoder\": {\"x\": {\"content\": \"!\"}}}");
    expect_fail("added_tokens_decoder key not an id", d, SDW_EFORMAT, "key \"x\" is not a token id", NULL);
    put(cfg, "{\"added_tokens_decoder\": {\"0\": {\"content\": \"!\", \"rstrip\": true}}}");
    expect_fail("added_tokens_decoder rstrip", d, SDW_EUNSUPPORTED, "added_tokens_decoder[\"0\"].rstrip is true",
                "tokenizer_config.json");
    put(cfg, "{\"eos_token\": \"</s>\"}");
    expect_fail("another eos_token", d, SDW_EUNSUPPORTED, "eos_token is '</s>', but CLIP's is '<|endoftext|>'",
                "tokenizer_config.json");
    put(cfg, "{\"pad_token\": 3}");
    expect_fail("pad token a number", d, SDW_EFORMAT, "pad_token must be a string", NULL);
    put(tj, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
    expect_fail("WordPiece tokenizer.json", d, SDW_EUNSUPPORTED, "tokenizer.json: model.type \"WordPiece\"", NULL);
    free(d);
}

/* Each case builds a fresh folder, breaks one thing, and expects one error. */
static void test_diffusers_errors(void)
{
    char *d;
    expect_fail("missing path", pathf("%s/absent", root), SDW_ENOTFOUND, "absent", NULL);

    d = make_diffusers("e1", &tiny);
    unlink(pathf("%s/model_index.json", d));
    expect_fail("no model_index.json", d, SDW_ENOTFOUND, "model_index.json", d);
    put(pathf("%s/model_index.json", d), "{\"a\": ");
    expect_fail("invalid model_index.json", d, SDW_EFORMAT, "model_index.json", "JSON");
    put(pathf("%s/model_index.json", d), "[]");
    expect_fail("model_index.json not an object", d, SDW_EFORMAT, "model_index.json", "object");
    put(pathf("%s/model_index.json", d), "{}");

    const char *cfgp = pathf("%s/text_encoder/config.json", d);
    char cfgpath[4096];
    snprintf(cfgpath, sizeof cfgpath, "%s", cfgp);
    unlink(cfgpath);
    expect_fail("missing text encoder config", d, SDW_ENOTFOUND, cfgpath, NULL);
    put(cfgpath, "{\"vocab_size\": 49408, \"hidden_size\": \"8\"}");
    expect_fail("config field wrong type", d, SDW_EFORMAT, "hidden_size", cfgpath);
    put(cfgpath, "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16}");
    expect_fail("config field missing", d, SDW_EFORMAT, "num_hidden_layers", "missing");
    put(cfgpath,
        "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 0,"
        " \"num_attention_heads\": 2, \"max_position_embeddings\": 77}");
    expect_fail("config field out of range", d, SDW_EFORMAT, "num_hidden_layers", "range");
    put(cfgpath,
        "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 3, \"max_position_embeddings\": 77}");
    expect_fail("hidden not divisible by heads", d, SDW_EFORMAT, "divisible", NULL);
    put(cfgpath,
        "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 2, \"max_position_embeddings\": 77, \"hidden_act\": \"relu\"}");
    expect_fail("unknown activation", d, SDW_EUNSUPPORTED, "relu", NULL);
    put(cfgpath,
        "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 2, \"max_position_embeddings\": 77, \"layer_norm_eps\": -1}");
    expect_fail("bad layer_norm_eps", d, SDW_EFORMAT, "layer_norm_eps", NULL);
    put(cfgpath,
        "{\"vocab_size\": 1000, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 2, \"max_position_embeddings\": 77}");
    expect_fail("config disagrees with the embedding", d, SDW_EFORMAT, "token_embedding",
                "[49408,8]");
    put(cfgpath,
        "{\"vocab_size\": 49408, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 2, \"max_position_embeddings\": 77}");

    char wpath[4096];
    snprintf(wpath, sizeof wpath, "%s/text_encoder/model.safetensors", d);
    rename(wpath, pathf("%s/text_encoder/keep", d));
    expect_fail("missing weights", d, SDW_ENOTFOUND, "model.safetensors", "text_encoder");
    put(pathf("%s/text_encoder/pytorch_model.bin", d), "PK\3\4");
    expect_fail("pickle-only weights", d, SDW_EUNSUPPORTED, "pytorch_model.bin", "arbitrary code");
    unlink(pathf("%s/text_encoder/pytorch_model.bin", d));
    put(wpath, "\x10\0\0\0\0\0\0\0{\"a\": [1, 2, 3]} ");
    expect_fail("corrupt safetensors", d, SDW_EFORMAT, wpath, NULL);
    spec nopos = tiny;
    nopos.no_position = 1;
    write_clip(wpath, &nopos, "", NULL, 0);
    expect_fail("missing tensor", d, SDW_ENOTFOUND, "position_embedding", wpath);
    rename(pathf("%s/text_encoder/keep", d), wpath);

    char tok[4096];
    snprintf(tok, sizeof tok, "%s/tokenizer/vocab.json", d);
    rename(tok, pathf("%s/tokenizer/keep", d));
    expect_fail("missing vocab.json", d, SDW_ENOTFOUND, tok, NULL);
    rename(pathf("%s/tokenizer/keep", d), tok);
    snprintf(tok, sizeof tok, "%s/tokenizer/merges.txt", d);
    rename(tok, pathf("%s/tokenizer/keep", d));
    expect_fail("missing merges.txt", d, SDW_ENOTFOUND, tok, NULL);
    rename(pathf("%s/tokenizer/keep", d), tok);
    put(pathf("%s/tokenizer/special_tokens_map.json", d), "{\"pad_token\": \"<|no such token|>\"}");
    /* transformers adds it as a new token past the vocabulary */
    expect_fail("pad token not in vocab", d, SDW_EFORMAT, "'<|no such token|>' is id 49408, outside",
                "special_tokens_map.json");
    put(pathf("%s/tokenizer/special_tokens_map.json", d), "{\"pad_token\": 5}");
    expect_fail("pad token wrong type", d, SDW_EFORMAT, "pad_token", NULL);
    unlink(pathf("%s/tokenizer/special_tokens_map.json", d));

    char upath[4096];
    snprintf(upath, sizeof upath, "%s/unet/config.json", d);
    unlink(upath);
    expect_fail("unet folder without config", d, SDW_ENOTFOUND, upath, NULL);
    put(upath, "{}");
    unlink(pathf("%s/vae/diffusion_pytorch_model.fp16.safetensors", d));
    expect_fail("vae folder without weights", d, SDW_ENOTFOUND, "vae", "diffusion_pytorch_model");

    /* Text encoder alone: opens, but is not a pipeline. */
    unlink(pathf("%s/unet/config.json", d));
    unlink(pathf("%s/unet/diffusion_pytorch_model.fp16.safetensors", d));
    rmdir(pathf("%s/unet", d));
    unlink(pathf("%s/vae/config.json", d));
    rmdir(pathf("%s/vae", d));
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "text-encoder-only folder opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.unet.nfiles == 0 && !m.unet_config && m.clip.pad_id == 49407,
               "no unet; default pad id without special_tokens_map.json");
        rc = sdw_model_require_pipeline(&m, &e);
        tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "unet"), "pipeline check names the missing unet (%s)",
               e.msg);
        sdw_model_close(&m);
    }
    rename(pathf("%s/text_encoder", d), pathf("%s/te", d));
    expect_fail("missing text_encoder folder", d, SDW_ENOTFOUND, "text_encoder", "missing");
    free(d);
}

/* transformers 5 writes the text encoder without text_model.; either
 * spelling loads, a file with both or neither does not. */
static void test_text_spellings(void)
{
    char *d = make_diffusers("today", &tiny);
    char wpath[4096];
    snprintf(wpath, sizeof wpath, "%s/text_encoder/model.safetensors", d);
    write_clip(wpath, &tiny, "", NULL, 0);
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, d, &e);
    if (tap_ok(rc == 0, "text encoder without text_model. opens (%s)", rc ? e.msg : "")) {
        float *w = NULL;
        const int64_t sh[2] = {16, 8};
        rc = sdw_weights_load(&m.text_encoder, "encoder.layers.1.mlp.fc1.weight", 2, sh, &w, &e);
        tap_ok(!strcmp(m.text_encoder.prefix, "") && rc == 0 && w && w[1] == -0.875f,
               "no prefix; tensors load by transformers 5's names");
        free(w);
        sdw_model_close(&m);
    }
    const shaped both = {"embeddings.token_embedding.weight", 2, {49408, 8}};
    write_clip(wpath, &tiny, "text_model.", &both, 1);
    expect_fail("both spellings of the token embedding", d, SDW_EFORMAT, "both", wpath);
    write_clip(wpath, &tiny, "clip.", NULL, 0);
    expect_fail("neither spelling", d, SDW_ENOTFOUND, "neither", wpath);
    free(d);
}

static int json_int_at(const json_object *o, const char *key, int idx)
{
    json_object *x;
    if (!o || !json_object_object_get_ex(o, key, &x))
        return -1;
    if (idx >= 0)
        x = json_object_is_type(x, json_type_array) ? json_object_array_get_idx(x, (size_t)idx) : NULL;
    return x && (json_object_is_type(x, json_type_int) || json_object_is_type(x, json_type_boolean))
               ? json_object_get_int(x)
               : -1;
}

static const char *json_str_at(const json_object *o, const char *key, int idx)
{
    json_object *x;
    if (!o || !json_object_object_get_ex(o, key, &x))
        return "";
    if (idx >= 0)
        x = json_object_is_type(x, json_type_array) ? json_object_array_get_idx(x, (size_t)idx) : NULL;
    return x && json_object_is_type(x, json_type_string) ? json_object_get_string(x) : "";
}

static void test_ldm(void)
{
    spec s = tiny;
    s.hidden = 128;
    s.layers = 3;
    s.inter = 32;
    s.dtype = SDW_DT_BF16;
    const shaped extra[3] = {{"model.diffusion_model.input_blocks.0.0.weight", 4, {320, 4, 3, 3}},
                             {"first_stage_model.decoder.conv_in.weight", 1, {1}},
                             {"model_ema.decay", 1, {1}}};
    char path[4096];
    snprintf(path, sizeof path, "%s/sd15.safetensors", root);
    write_clip(path, &s, "cond_stage_model.transformer.text_model.", extra, 3);
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "LDM single file opens (%s)", rc ? e.msg : "")) {
        const sdw_clip_config *c = &m.clip;
        tap_ok(m.layout == SDW_LAYOUT_LDM, "layout is LDM");
        tap_ok(c->vocab_size == 49408 && c->hidden_size == 128 && c->max_positions == 77 &&
                   c->num_layers == 3 && c->intermediate_size == 32 && c->num_heads == 2,
               "sizes from tensor shapes, heads = hidden/64");
        tap_ok(c->quick_gelu == 1 && c->layer_norm_eps == 1e-5f && c->pad_id == 49407 && m.tokenizer,
               "SD 1.x defaults and the bundled tokenizer");
        tap_ok(strcmp(m.text_encoder.prefix, "cond_stage_model.transformer.text_model.") == 0 &&
                   strcmp(m.unet.prefix, "model.diffusion_model.") == 0 &&
                   strcmp(m.vae.prefix, "first_stage_model.") == 0,
               "prefixes");
        tap_ok(!m.unet_config && !m.vae_config && m.scheduler_config &&
                   !strcmp(json_str_at(m.scheduler_config, "_class_name", -1), "PNDMScheduler") &&
                   !strcmp(sdw_model_prediction(&m), "epsilon"),
               "SD 1.x's fixed UNet and VAE (no configs) and SD 1.5's PNDM scheduler config");
        tap_ok(!strcmp(m.family, "sd1") && !m.inpainting && m.default_size == 512, "sd1, 4 channels, 512 px");
        float *w = NULL;
        const int64_t sh[2] = {32, 128};
        rc = sdw_weights_load(&m.text_encoder, "encoder.layers.2.mlp.fc1.weight", 2, sh, &w, &e);
        tap_ok(rc == 0 && w && w[2] == -0.75f, "text encoder tensor loads through the prefix");
        free(w);
        const sdw_st_tensor *t;
        tap_ok(sdw_weights_find(&m.unet, "input_blocks.0.0.weight", &t, &e) == 0 &&
                   sdw_weights_find(&m.vae, "decoder.conv_in.weight", &t, &e) == 0,
               "unet and vae tensors found through their prefixes");
        rc = sdw_weights_load(&m.text_encoder, "final_layer_norm.weight", 1, sh, &w, &e);
        tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "cond_stage_model.transformer.text_model.final_layer_norm"
                                                  ".weight has shape [128], expected [32]"),
               "shape error names the full tensor name (%s)", e.msg);
        tap_ok(sdw_model_require_pipeline(&m, &e) == 0, "complete pipeline");
        rc = sdw_model_set_prediction(&m, "v", &e);
        tap_ok(rc == 0 && !strcmp(sdw_model_prediction(&m), "v_prediction"), "prediction set to v_prediction");
        rc = sdw_model_set_prediction(&m, "sample", &e);
        tap_ok(rc == SDW_EINVAL && strstr(e.msg, "'sample'") && !strcmp(sdw_model_prediction(&m), "v_prediction"),
               "another prediction type is refused, the config unchanged (%s)", e.msg);
        rc = sdw_model_set_prediction(&m, "epsilon", &e);
        tap_ok(rc == 0 && !strcmp(sdw_model_prediction(&m), "epsilon"), "and back to epsilon");
        sdw_model_close(&m);
    }

    s = tiny;
    write_clip(path, &s, "cond_stage_model.transformer.text_model.", NULL, 0);
    rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "text-encoder-only LDM file opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.num_heads == 1 && m.clip.hidden_size == 8, "hidden 8 gives one head");
        rc = sdw_model_require_pipeline(&m, &e);
        tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "model.diffusion_model."), "pipeline check names the UNet");
        sdw_model_close(&m);
    }

    write_clip(path, &s, "other.", NULL, 0);
    expect_fail("no text encoder", path, SDW_ENOTFOUND, "cond_stage_model.model.token_embedding", path);
    s.vocab = 1000;
    write_clip(path, &s, "cond_stage_model.transformer.text_model.", NULL, 0);
    expect_fail("vocabulary without the pad token", path, SDW_EFORMAT, "49407", NULL);
    s = tiny;
    s.positions = 10;
    write_clip(path, &s, "cond_stage_model.transformer.text_model.", NULL, 0);
    expect_fail("too few positions", path, SDW_EUNSUPPORTED, "77", NULL);
    put(path, "garbage");
    expect_fail("corrupt single file", path, SDW_EFORMAT, path, NULL);
}

/* An SD 2.x single file: the OpenCLIP tower with its last block left out,
 * q/k/v as row blocks of in_proj, and the family's configs. */
static void test_openclip(void)
{
    spec s = tiny;
    s.hidden = 8;
    s.inter = 16;
    s.dtype = SDW_DT_F16;
    char path[4096];
    snprintf(path, sizeof path, "%s/sd2-text.safetensors", root);
    write_openclip(path, &s, 3, 24, NULL, 0);
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "OpenCLIP single file opens (%s)", rc ? e.msg : "")) {
        const sdw_clip_config *c = &m.clip;
        tap_ok(c->hidden_size == 8 && c->num_layers == 2 && c->intermediate_size == 16 && c->num_heads == 1 &&
                   c->quick_gelu == 0 && c->pad_id == 0 && c->max_positions == 77,
               "3 resblocks give 2 layers; gelu, pad \"!\" (0), heads = hidden/64");
        tap_ok(!strcmp(m.text_encoder.prefix, "cond_stage_model.model.") && m.text_encoder.map,
               "OpenCLIP prefix and name map");
        tap_ok(!strcmp(m.family, "sd2") && !m.inpainting && m.default_size == 768 && !m.unet_config &&
                   !strcmp(json_str_at(m.scheduler_config, "_class_name", -1), "DDIMScheduler") &&
                   !strcmp(sdw_model_prediction(&m), "v_prediction"),
               "sd2 defaults as stabilityai/stable-diffusion-2-1: 768 px, DDIM, v-prediction");
        float *w = NULL;
        uint16_t *h = NULL;
        const int64_t sq[2] = {8, 8}, sv[1] = {8}, sf[2] = {16, 8};
        rc = sdw_weights_load(&m.text_encoder, "encoder.layers.1.self_attn.k_proj.weight", 2, sq, &w, &e);
        tap_ok(rc == 0 && w && w[0] == pattern(64) && w[63] == pattern(127),
               "k_proj is rows 8..15 of resblocks.1's in_proj_weight (%s)", rc ? e.msg : "");
        free(w);
        rc = sdw_weights_load(&m.text_encoder, "encoder.layers.0.self_attn.v_proj.bias", 1, sv, &w, &e);
        tap_ok(rc == 0 && w && w[0] == pattern(16) && w[7] == pattern(23), "v_proj.bias is in_proj_bias[16:24]");
        free(w);
        rc = sdw_weights_load_f16(&m.text_encoder, "encoder.layers.0.self_attn.v_proj.weight", 2, sq, &h, &e);
        tap_ok(rc == 0 && h && sdw_f16_to_f32(h[0]) == pattern(128) && sdw_f16_to_f32(h[63]) == pattern(191),
               "the half fast path copies the same block");
        free(h);
        rc = sdw_weights_load(&m.text_encoder, "encoder.layers.1.mlp.fc1.weight", 2, sf, &w, &e);
        tap_ok(rc == 0 && w, "mlp.fc1 is mlp.c_fc");
        free(w);
        const sdw_st_tensor *t;
        tap_ok(sdw_weights_find(&m.text_encoder, "embeddings.position_embedding.weight", &t, &e) == 0 &&
                   !strcmp(t->name, "cond_stage_model.model.positional_embedding"),
               "the position embedding is positional_embedding");
        rc = sdw_weights_find(&m.text_encoder, "encoder.layers.0.self_attn.nope.weight", &t, &e);
        tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "no counterpart") && strstr(e.msg, path),
               "a name OpenCLIP has no counterpart for (%s)", e.msg);
        sdw_model_close(&m);
    }
    write_openclip(path, &s, 3, 16, NULL, 0);
    rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "an in_proj of the wrong size still opens (%s)", rc ? e.msg : "")) {
        float *w = NULL;
        const int64_t sq[2] = {8, 8};
        rc = sdw_weights_load(&m.text_encoder, "encoder.layers.0.self_attn.q_proj.weight", 2, sq, &w, &e);
        tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
                                               " has shape [16,8], expected [24,8]") && strstr(e.msg, path),
               "loading q from it names the tensor, both shapes and the file (%s)", e.msg);
        uint16_t *h = NULL;
        rc = sdw_weights_load_f16(&m.text_encoder, "encoder.layers.0.self_attn.q_proj.weight", 2, sq, &h, &e);
        tap_ok(rc == 1 && !h, "the half fast path leaves it to the checked load");
        sdw_model_close(&m);
    }
    write_openclip(path, &s, 1, 24, NULL, 0);
    expect_fail("one OpenCLIP block, none left", path, SDW_ENOTFOUND, "too few", NULL);

    /* With a UNet: its config read off the shapes. 2 levels of 64 and 128
     * channels, one resnet each; attention on the first, and in the mid
     * block with 2 transformer blocks; 9 input channels. */
    const shaped unet[] = {
        {"model.diffusion_model.input_blocks.0.0.weight", 4, {64, 9, 3, 3}},
        {"model.diffusion_model.input_blocks.1.0.out_layers.3.weight", 4, {64, 64, 3, 3}},
        {"model.diffusion_model.input_blocks.1.1.proj_in.weight", 2, {64, 64}},
        {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 2, {64, 8}},
        {"model.diffusion_model.input_blocks.2.0.op.weight", 4, {64, 64, 3, 3}},
        {"model.diffusion_model.input_blocks.3.0.out_layers.3.weight", 4, {128, 128, 3, 3}},
        {"model.diffusion_model.middle_block.1.proj_in.weight", 2, {128, 128}},
        {"model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2, {128, 8}},
        {"model.diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_k.weight", 2, {128, 8}},
        {"model.diffusion_model.output_blocks.2.1.proj_in.weight", 2, {64, 64}},
        {"model.diffusion_model.out.2.weight", 4, {4, 64, 3, 3}},
    };
    size_t nu = sizeof unet / sizeof unet[0];
    snprintf(path, sizeof path, "%s/sd2-inpaint.safetensors", root);
    write_openclip(path, &s, 3, 24, unet, nu);
    rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "OpenCLIP file with a UNet opens (%s)", rc ? e.msg : "")) {
        const json_object *u = m.unet_config;
        tap_ok(m.inpainting && m.default_size == 512 &&
                   !strcmp(json_str_at(m.scheduler_config, "_class_name", -1), "PNDMScheduler") &&
                   !strcmp(sdw_model_prediction(&m), "epsilon"),
               "9 channels: inpainting, 512 px, epsilon as stabilityai/stable-diffusion-2-inpainting");
        tap_ok(u && json_int_at(u, "in_channels", -1) == 9 && json_int_at(u, "out_channels", -1) == 4 &&
                   json_int_at(u, "block_out_channels", 0) == 64 && json_int_at(u, "block_out_channels", 1) == 128 &&
                   json_int_at(u, "layers_per_block", -1) == 1 && json_int_at(u, "cross_attention_dim", -1) == 8 &&
                   json_int_at(u, "use_linear_projection", -1) == 1 && json_int_at(u, "sample_size", -1) == 64 &&
                   json_int_at(u, "upcast_attention", -1) == 0,
               "UNet sizes read off the shapes");
        tap_ok(!strcmp(json_str_at(u, "down_block_types", 0), "CrossAttnDownBlock2D") &&
                   !strcmp(json_str_at(u, "down_block_types", 1), "DownBlock2D") &&
                   !strcmp(json_str_at(u, "up_block_types", 0), "UpBlock2D") &&
                   !strcmp(json_str_at(u, "up_block_types", 1), "CrossAttnUpBlock2D"),
               "block types from where proj_in is");
        tap_ok(json_int_at(u, "attention_head_dim", 0) == 1 && json_int_at(u, "attention_head_dim", 1) == 2 &&
                   json_int_at(u, "transformer_layers_per_block", 0) == 1 &&
                   json_int_at(u, "transformer_layers_per_block", 1) == 2,
               "heads = channels / 64; the last level's depth is the mid block's");
        sdw_model_close(&m);
    }
    /* diffusers' own test: an SD 1.x text tower, but the UNet reads 1024-wide states. */
    const shaped v2[] = {{"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", 2, {16, 1024}}};
    snprintf(path, sizeof path, "%s/v2key.safetensors", root);
    write_clip(path, &tiny, "cond_stage_model.transformer.text_model.", v2, 1);
    expect_fail("a v2 UNet whose layout cannot be read", path, SDW_EFORMAT, "input_blocks.0.0.weight", path);
    write_openclip(path, &s, 3, 24, unet + 1, nu - 1);
    expect_fail("an SD 2 UNet without conv_in", path, SDW_EFORMAT, "input_blocks.0.0.weight", "cannot read");
}

static void test_pickle(void)
{
    const char *names[4] = {"m.ckpt", "m.pt", "m.pth", "m.bin"};
    for (int i = 0; i < 4; i++) {
        char *p = pathf("%s/%s", root, names[i]);
        put(p, "whatever");
        expect_fail(names[i], p, SDW_EUNSUPPORTED, "arbitrary code", "save_file");
    }
    char *p = pathf("%s/zip.safetensors", root);
    put(p, "PK\3\4rest");
    expect_fail("zip magic under a .safetensors name", p, SDW_EUNSUPPORTED, "arbitrary code", NULL);
    p = pathf("%s/pickle.safetensors", root);
    put(p, "\x80\x04rest");
    expect_fail("pickle magic under a .safetensors name", p, SDW_EUNSUPPORTED, "arbitrary code", NULL);
    p = pathf("%s/model.gguf", root);
    put(p, "GGUF....");
    expect_fail("unknown extension", p, SDW_EUNSUPPORTED, "unknown model format", NULL);
}

static void test_fixture(void)
{
    const char *dir = tap_fixture("models/tiny-a");
    if (access(pathf("%s/model_index.json", dir), F_OK) != 0) {
        tap_ok(0, "fixture models/tiny-a present");
        return;
    }
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, dir, &e);
    if (!tap_ok(rc == 0, "fixture tiny-a opens (%s)", rc ? e.msg : ""))
        return;
    tap_ok(m.clip.hidden_size == 16 && m.clip.num_heads == 4 && m.clip.num_layers == 2 &&
               m.clip.vocab_size == 49408 && m.clip.pad_id == 49407,
           "tiny-a text encoder config");
    tap_ok(sdw_model_require_pipeline(&m, &e) == 0, "tiny-a is a complete pipeline (%s)", e.msg);
    sdw_model_close(&m);
}

/* The fixtures diffusers 0.42 + transformers 5 saved (fixtures_sd2.py,
 * make_fixtures.py's tiny-a-today) and the SD 2 single file. */
static void test_today_fixtures(void)
{
    static const struct {
        const char *name, *family, *prediction;
        int inpainting, size;
    } want[] = {
        {"tiny-a-today", "sd1", "epsilon", 0, 64},
        {"tiny-sd2", "sd2", "v_prediction", 0, 64},
        {"tiny-sd2-inpaint", "sd2", "epsilon", 1, 64},
        {"tiny-sd2.safetensors", "sd2", "v_prediction", 0, 768},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        sdw_model m;
        sdw_error e = {0};
        int rc = sdw_model_open(&m, tap_fixture(pathf("models/%s", want[i].name)), &e);
        if (tap_ok(rc == 0, "%s opens (%s)", want[i].name, rc ? e.msg : "")) {
            tap_ok(!strcmp(m.family, want[i].family) && m.inpainting == want[i].inpainting &&
                       m.default_size == want[i].size && !strcmp(sdw_model_prediction(&m), want[i].prediction),
                   "%s: %s, inpainting %d, %d px, %s (got %s, %d, %d, %s)", want[i].name, want[i].family,
                   want[i].inpainting, want[i].size, want[i].prediction, m.family, m.inpainting, m.default_size,
                   sdw_model_prediction(&m));
            tap_ok(!strcmp(m.text_encoder.prefix, m.layout == SDW_LAYOUT_LDM ? "cond_stage_model.model." : "") &&
                       sdw_model_require_pipeline(&m, &e) == 0,
                   "%s: text encoder without text_model., a complete pipeline", want[i].name);
            sdw_model_close(&m);
        }
    }
}

/* Every prompt of tests/fixtures/tokens-sd2.json through m's tokenizer,
 * padded with its pad token, against the ids under key. */
static void check_sd2_ids(const sdw_model *m, const char *key, const char *what)
{
    json_object *root = json_object_from_file(tap_fixture("tokens-sd2.json"));
    size_t n = root ? json_object_array_length(root) : 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *entry = json_object_array_get_idx(root, i), *jp = json_object_object_get(entry, "prompt");
        json_object *want = json_object_object_get(entry, key);
        int32_t ids[SDW_TOK_CONTEXT];
        sdw_error e = {0};
        int rc = sdw_tok_encode_n(m->tokenizer, json_object_get_string(jp), (size_t)json_object_get_string_len(jp),
                                  ids, SDW_TOK_CONTEXT, m->clip.pad_id, &e);
        int ok = rc > 0 && json_object_array_length(want) == SDW_TOK_CONTEXT;
        for (int k = 0; ok && k < SDW_TOK_CONTEXT; k++)
            ok = ids[k] == json_object_get_int(json_object_array_get_idx(want, (size_t)k));
        if (!ok && bad++ < 3)
            tap_diag("%s: \"%s\" differs (%s)", what, json_object_get_string(jp), rc < 0 ? e.msg : "ids");
    }
    tap_ok(n >= 60 && bad == 0, "%s: %zu of %zu prompts of tokens-sd2.json as transformers 5", what, n - bad, n);
    json_object_put(root);
}

/* SD 2's pad token "!" is an added token wherever its tokenizer comes
 * from: tiny-sd2's tokenizer.json, an old-layout folder as the hub ships
 * SD 2 (its special tokens normalized), the same with an
 * added_tokens_decoder as transformers 4.34+ saved it, and a single file. */
static void test_sd2_tokenizers(void)
{
    static const char hub_map[] =
        "{\"bos_token\": {\"content\": \"<|startoftext|>\", \"normalized\": true},"
        " \"eos_token\": {\"content\": \"<|endoftext|>\", \"normalized\": true}, \"pad_token\": \"!\","
        " \"unk_token\": {\"content\": \"<|endoftext|>\", \"normalized\": true}}";
    static const char hub_cfg[] =
        "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<|startoftext|>\", \"normalized\": true},"
        " \"eos_token\": {\"__type\": \"AddedToken\", \"content\": \"<|endoftext|>\", \"normalized\": true},"
        " \"pad_token\": \"<|endoftext|>\", \"unk_token\": \"<|endoftext|>\", \"tokenizer_class\": \"CLIPTokenizer\"}";
    static const char dec_cfg[] =
        "{\"added_tokens_decoder\": {\"0\": {\"content\": \"!\", \"normalized\": false, \"special\": true},"
        " \"49406\": {\"content\": \"<|startoftext|>\", \"normalized\": false, \"special\": true},"
        " \"49407\": {\"content\": \"<|endoftext|>\", \"normalized\": false, \"special\": true}},"
        " \"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", \"pad_token\": \"!\"}";
    const struct {
        const char *name, *tokenizer_json, *map, *cfg, *key;
    } cases[] = {
        {"sd2-json", "models/tiny-sd2/tokenizer/tokenizer.json", NULL,
         "{\"pad_token\": \"!\", \"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\"}", "ids"},
        {"sd2-hub", NULL, hub_map, hub_cfg, "ids_hub"},
        {"sd2-decoder", NULL, hub_map, dec_cfg, "ids"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *d = make_diffusers(cases[i].name, &tiny);
        const char *dir = pathf("%s/tokenizer", d);
        int ok = cases[i].tokenizer_json
                     ? copy(tap_fixture(cases[i].tokenizer_json), pathf("%s/tokenizer.json", dir)) == 0
                     : copy(tap_fixture("models/tiny-a/tokenizer/vocab.json"), pathf("%s/vocab.json", dir)) == 0 &&
                           copy(tap_fixture("models/tiny-a/tokenizer/merges.txt"), pathf("%s/merges.txt", dir)) == 0;
        if (cases[i].map)
            put(pathf("%s/special_tokens_map.json", dir), cases[i].map);
        else
            unlink(pathf("%s/special_tokens_map.json", dir));
        put(pathf("%s/tokenizer_config.json", dir), cases[i].cfg);
        sdw_model m;
        sdw_error e = {0};
        int rc = ok ? sdw_model_open(&m, d, &e) : SDW_EIO;
        if (tap_ok(rc == 0, "%s opens (%s)", cases[i].name, rc ? e.msg : "")) {
            tap_ok(m.clip.pad_id == 0, "%s pads with \"!\" (%d)", cases[i].name, m.clip.pad_id);
            check_sd2_ids(&m, cases[i].key, cases[i].name);
            sdw_model_close(&m);
        }
        free(d);
    }
    sdw_model m;
    sdw_error e = {0};
    int rc = sdw_model_open(&m, tap_fixture("models/tiny-sd2.safetensors"), &e);
    if (tap_ok(rc == 0, "tiny-sd2.safetensors opens (%s)", rc ? e.msg : "")) {
        check_sd2_ids(&m, "ids_hub", "tiny-sd2.safetensors");
        sdw_model_close(&m);
    }
}

/* One batch of ids through m's text encoder, and one UNet step on
 * pattern inputs; NULL on failure (diagnosed). */
static float *run_parts(const sdw_model *m, sdw_backend *be, size_t *n_text, size_t *n_eps)
{
    sdw_error e;
    sdw_clip *clip = NULL;
    sdw_unet *u = NULL;
    sdw_unet_config cfg;
    int32_t ids[2 * 77];
    for (int i = 0; i < 2 * 77; i++)
        ids[i] = i % 77 == 0 ? 49406 : i % 77 < 9 ? 320 + 97 * i : i % 77 == 9 ? 49407 : m->clip.pad_id;
    int64_t ts[3] = {2, 77, m->clip.hidden_size}, xs[4] = {2, 4, 8, 8};
    float t[2] = {999, 250.5}, *x = malloc(2 * 4 * 64 * sizeof *x);
    *n_text = (size_t)2 * 77 * m->clip.hidden_size, *n_eps = 2 * 4 * 64;
    float *out = malloc((*n_text + *n_eps) * sizeof *out);
    for (size_t i = 0; i < *n_eps; i++)
        x[i] = pattern(i * 7);
    sdw_tensor emb = {0}, lat = {0}, eps = {0};
    int rc = sdw_clip_load(&clip, be, &m->clip, &m->text_encoder, &e);
    if (!rc && !(rc = sdw_tensor_new(&emb, be, 3, ts, &e)) && !(rc = sdw_clip_encode(clip, ids, 2, 77, 0, &emb, &e)))
        rc = sdw_tensor_to_host(&emb, out, &e);
    if (!rc && !(rc = sdw_unet_config_parse(&cfg, m->unet_config, &e)) &&
        !(rc = sdw_unet_load(&u, be, &cfg, &m->unet, m->layout, &e)) &&
        !(rc = sdw_tensor_from_host(&lat, be, 4, xs, x, &e)) && !(rc = sdw_tensor_new(&eps, be, 4, xs, &e)) &&
        !(rc = sdw_unet_forward(u, &lat, t, &emb, NULL, &eps, &e)))
        rc = sdw_tensor_to_host(&eps, out + *n_text, &e);
    if (rc) {
        tap_diag("%s: %s", m->path, e.msg);
        free(out);
        out = NULL;
    }
    sdw_tensor_free(&emb), sdw_tensor_free(&lat), sdw_tensor_free(&eps);
    sdw_clip_free(clip);
    sdw_unet_free(u);
    free(x);
    return out;
}

/* sdworker-mkmodel's tiny-sd2 as a folder and as a single file (OpenCLIP
 * tower with its fused in_proj and unused last block; UNet config read off
 * the shapes) must be the same model. */
static void test_mkmodel_sd2(void)
{
    const char *tool = getenv("SDW_TOOLS_DIR") ? pathf("%s/sdworker-mkmodel", getenv("SDW_TOOLS_DIR"))
                                               : "src/tools/sdworker-mkmodel";
    if (access(tool, X_OK) != 0) {
        tap_skip("no %s to make tiny-sd2 with", tool);
        return;
    }
    char *dir = strdup(pathf("%s/mk-sd2", root)), *file = strdup(pathf("%s/mk-sd2.safetensors", root));
    int made = system(pathf("'%s' --config tiny-sd2 --seed 5 '%s' && '%s' --config tiny-sd2 --seed 5 "
                            "--single-file '%s'", tool, dir, tool, file)) == 0;
    sdw_model a, b;
    sdw_error e;
    sdw_backend *be = NULL;
    if (!tap_ok(made && sdw_model_open(&a, dir, &e) == 0, "mkmodel tiny-sd2 folder opens") ||
        !tap_ok(sdw_model_open(&b, file, &e) == 0, "mkmodel tiny-sd2 single file opens (%s)", e.msg)) {
        if (made)
            sdw_model_close(&a);
        free(dir), free(file);
        return;
    }
    tap_ok(!strcmp(a.family, "sd2") && !strcmp(b.family, "sd2") && a.clip.pad_id == 0 && b.clip.pad_id == 0 &&
               !memcmp(&a.clip, &b.clip, sizeof a.clip) && !strcmp(sdw_model_prediction(&a), "v_prediction") &&
               !strcmp(sdw_model_prediction(&b), "v_prediction"),
           "both sd2, the same text encoder config (pad 0), v-prediction");
    size_t nt, ne;
    float *ra = NULL, *rb = NULL;
    if (!sdw_backend_cpu(&be, &e)) {
        ra = run_parts(&a, be, &nt, &ne);
        rb = run_parts(&b, be, &nt, &ne);
    }
    tap_ok(ra && rb && !memcmp(ra, rb, nt * sizeof *ra), "the same text embeddings from both forms");
    tap_ok(ra && rb && !memcmp(ra + nt, rb + nt, ne * sizeof *ra), "the same UNet output from both forms");
    free(ra), free(rb);
    sdw_backend_destroy(be);
    sdw_model_close(&a);
    sdw_model_close(&b);
    free(dir), free(file);
}

int main(void)
{
    if (!mkdtemp(root)) {
        tap_ok(0, "mkdtemp");
        return tap_done();
    }
    test_diffusers_ok();
    test_diffusers_errors();
    test_text_spellings();
    test_tokenizer_folder();
    test_ldm();
    test_openclip();
    test_pickle();
    test_fixture();
    test_today_fixtures();
    test_sd2_tokenizers();
    test_mkmodel_sd2();
    if (system(pathf("rm -rf '%s'", root)) != 0)
        tap_diag("could not remove %s", root);
    return tap_done();
}
