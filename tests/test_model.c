/* Model loader: synthetic diffusers folders and LDM single files built in a
 * temporary directory, loaded back, and broken one way at a time. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Writes the CLIP tensors of s, names prefixed, plus `extra` names (1 element
 * each), to path. */
static int write_clip(const char *path, const spec *s, const char *prefix, const char *const *extra,
                      size_t nextra)
{
    sdw_st_entry ent[64];
    char names[64][160];
    int64_t shapes[64][2];
    size_t n = 0;
    size_t big = (size_t)s->vocab * s->hidden;
    float *data = calloc(big + 1, sizeof *data);
    for (size_t i = 0; i < big; i++)
        data[i] = (float)(i % 17) * 0.125f - 1.0f;
#define ADD(nm, r, c)                                                                               \
    do {                                                                                            \
        snprintf(names[n], sizeof names[n], "%s%s", prefix, nm);                                    \
        shapes[n][0] = r;                                                                           \
        shapes[n][1] = c;                                                                           \
        ent[n] = (sdw_st_entry){names[n], s->dtype, c ? 2 : 1, shapes[n], data};                    \
        n++;                                                                                        \
    } while (0)
    ADD("text_model.embeddings.token_embedding.weight", s->vocab, s->hidden);
    if (!s->no_position)
        ADD("text_model.embeddings.position_embedding.weight", s->positions, s->hidden);
    for (int l = 0; l < s->layers; l++) {
        char nm[128];
        snprintf(nm, sizeof nm, "text_model.encoder.layers.%d.mlp.fc1.weight", l);
        ADD(nm, s->inter, s->hidden);
        snprintf(nm, sizeof nm, "text_model.encoder.layers.%d.mlp.fc1.bias", l);
        ADD(nm, s->inter, 0);
    }
    ADD("text_model.final_layer_norm.weight", s->hidden, 0);
    for (size_t i = 0; i < nextra; i++) {
        snprintf(names[n], sizeof names[n], "%s", extra[i]);
        shapes[n][0] = 1;
        ent[n] = (sdw_st_entry){names[n], SDW_DT_F32, 1, shapes[n], data};
        n++;
    }
#undef ADD
    sdw_error e;
    int rc = sdw_st_write(path, ent, n, NULL, 0, &e);
    if (rc < 0)
        tap_diag("write %s: %s", path, e.msg);
    free(data);
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
    write_clip(pathf("%s/text_encoder/model.safetensors", d), s, "", NULL, 0);
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
    tap_ok(strcmp(m.text_encoder.prefix, "") == 0 && strcmp(m.text_encoder.part, "text_encoder") == 0 &&
               m.text_encoder.nfiles == 1,
           "text encoder weights: one file, empty prefix");
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
    rc = sdw_weights_load(&m.text_encoder, "text_model.encoder.layers.1.mlp.fc1.weight", 2, ok_shape, &w, &e);
    tap_ok(rc == 0 && w && w[0] == -1.0f && w[1] == -0.875f && w[17] == -1.0f,
           "load with the right shape converts F16 to float32");
    free(w);
    rc = sdw_weights_load(&m.text_encoder, "text_model.encoder.layers.0.mlp.fc1.weight", 2, bad_shape, &w, &e);
    tap_ok(rc == SDW_EFORMAT && w == NULL &&
               strstr(e.msg, "text_encoder: text_model.encoder.layers.0.mlp.fc1.weight has shape [16,8], "
                             "expected [3072,768]"),
           "wrong shape names both shapes (%s)", e.msg);
    const int64_t one[1] = {16};
    rc = sdw_weights_load(&m.text_encoder, "text_model.encoder.layers.0.mlp.fc1.weight", 1, one, &w, &e);
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
    put(cfg, "{\"pad_token\": \"!\"}");
    put(map, "{\"pad_token\": {\"content\": \"<|endoftext|>\"}}");
    expect_fail("pad tokens that disagree", d, SDW_EFORMAT, "contradicts", "special_tokens_map.json");
    put(cfg, "{\"pad_token\": \"<pad>\"}");
    unlink(map);
    expect_fail("pad token not in the vocabulary", d, SDW_EFORMAT, "'<pad>' is not in the vocabulary",
                "tokenizer.json");
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
    expect_fail("pad token not in vocab", d, SDW_EFORMAT, "<|no such token|>", "vocab.json");
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

static void test_ldm(void)
{
    spec s = tiny;
    s.hidden = 128;
    s.layers = 3;
    s.inter = 32;
    s.dtype = SDW_DT_BF16;
    const char *extra[3] = {"model.diffusion_model.input_blocks.0.0.weight",
                            "first_stage_model.decoder.conv_in.weight", "model_ema.decay"};
    char path[4096];
    snprintf(path, sizeof path, "%s/sd15.safetensors", root);
    write_clip(path, &s, "cond_stage_model.transformer.", extra, 3);
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
        tap_ok(strcmp(m.text_encoder.prefix, "cond_stage_model.transformer.") == 0 &&
                   strcmp(m.unet.prefix, "model.diffusion_model.") == 0 &&
                   strcmp(m.vae.prefix, "first_stage_model.") == 0,
               "prefixes");
        tap_ok(!m.unet_config && !m.vae_config && !m.scheduler_config, "no configs in a single file");
        float *w = NULL;
        const int64_t sh[2] = {32, 128};
        rc = sdw_weights_load(&m.text_encoder, "text_model.encoder.layers.2.mlp.fc1.weight", 2, sh, &w, &e);
        tap_ok(rc == 0 && w && w[2] == -0.75f, "text encoder tensor loads through the prefix");
        free(w);
        const sdw_st_tensor *t;
        tap_ok(sdw_weights_find(&m.unet, "input_blocks.0.0.weight", &t, &e) == 0 &&
                   sdw_weights_find(&m.vae, "decoder.conv_in.weight", &t, &e) == 0,
               "unet and vae tensors found through their prefixes");
        rc = sdw_weights_load(&m.text_encoder, "text_model.final_layer_norm.weight", 1, sh, &w, &e);
        tap_ok(rc == SDW_EFORMAT && strstr(e.msg, "cond_stage_model.transformer.text_model.final_layer_norm"
                                                  ".weight has shape [128], expected [32]"),
               "shape error names the full tensor name (%s)", e.msg);
        tap_ok(sdw_model_require_pipeline(&m, &e) == 0, "complete pipeline");
        sdw_model_close(&m);
    }

    s = tiny;
    write_clip(path, &s, "cond_stage_model.transformer.", NULL, 0);
    rc = sdw_model_open(&m, path, &e);
    if (tap_ok(rc == 0, "text-encoder-only LDM file opens (%s)", rc ? e.msg : "")) {
        tap_ok(m.clip.num_heads == 1 && m.clip.hidden_size == 8, "hidden 8 gives one head");
        rc = sdw_model_require_pipeline(&m, &e);
        tap_ok(rc == SDW_ENOTFOUND && strstr(e.msg, "model.diffusion_model."), "pipeline check names the UNet");
        sdw_model_close(&m);
    }

    const char *sd2[1] = {"cond_stage_model.model.token_embedding.weight"};
    write_clip(path, &s, "other.", sd2, 1);
    expect_fail("SD 2.x checkpoint", path, SDW_EUNSUPPORTED, "SD 2", path);
    write_clip(path, &s, "other.", NULL, 0);
    expect_fail("no text encoder", path, SDW_ENOTFOUND, "token_embedding", path);
    s.vocab = 1000;
    write_clip(path, &s, "cond_stage_model.transformer.", NULL, 0);
    expect_fail("vocabulary without the pad token", path, SDW_EFORMAT, "49407", NULL);
    s = tiny;
    s.positions = 10;
    write_clip(path, &s, "cond_stage_model.transformer.", NULL, 0);
    expect_fail("too few positions", path, SDW_EUNSUPPORTED, "77", NULL);
    put(path, "garbage");
    expect_fail("corrupt single file", path, SDW_EFORMAT, path, NULL);
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

int main(void)
{
    if (!mkdtemp(root)) {
        tap_ok(0, "mkdtemp");
        return tap_done();
    }
    test_diffusers_ok();
    test_diffusers_errors();
    test_tokenizer_folder();
    test_ldm();
    test_pickle();
    test_fixture();
    if (system(pathf("rm -rf '%s'", root)) != 0)
        tap_diag("could not remove %s", root);
    return tap_done();
}
