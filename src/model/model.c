#include "model/model.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A model opens at most one file per part: text encoders (SDXL has two),
 * UNet, VAE. */
#define MAX_FILES 4

/* The CLIP loader's names (transformers 5's CLIPTextModel spelling). */
#define TOKEN_EMB "embeddings.token_embedding.weight"
#define POS_EMB "embeddings.position_embedding.weight"
/* The key diffusers reads an SD 2.x UNet off (its width is 1024 there). */
#define V2_KEY "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"

static const char fam_sd1[] = "sd1", fam_sd2[] = "sd2", fam_sdxl[] = "sdxl";

static const char pickle_advice[] =
    "pickle checkpoints (.ckpt/.pt/.pth/.bin) run arbitrary code when loaded, so sdworker never "
    "opens them; convert it once, yourself, in a trusted environment, e.g. python -c \"import torch, "
    "safetensors.torch as st; sd = torch.load('IN.ckpt', map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items() if "
    "hasattr(v, 'contiguous')}, 'OUT.safetensors')\" or diffusers' "
    "scripts/convert_original_stable_diffusion_to_diffusers.py, and load the .safetensors result";

/* ---- weights ---- */

static const char *file_label(const sdw_weights *w)
{
    return w->nfiles && w->files[0]->path ? w->files[0]->path : "<memory>";
}

/* Where name lives: the map's answer (or name itself, whole) after the
 * prefix. */
static int locate(const sdw_weights *w, const char *name, sdw_weights_loc *loc, sdw_error *e)
{
    sdw_weights_loc rel = {.block = 0, .nblocks = 1, .transpose = 0};
    if (w->map) {
        if (w->map(name, &rel))
            return sdw_fail(e, SDW_ENOTFOUND, "%s: %s has no counterpart in the layout of %s", w->part, name,
                            file_label(w));
    } else if ((size_t)snprintf(rel.name, sizeof rel.name, "%s", name) >= sizeof rel.name) {
        return sdw_fail(e, SDW_EINVAL, "%s: tensor name '%s' is too long", w->part, name);
    }
    if (rel.nblocks < 1 || rel.block < 0 || rel.block >= rel.nblocks)
        return sdw_fail(e, SDW_EINVAL, "%s: %s: block %d of %d", w->part, name, rel.block, rel.nblocks);
    *loc = rel;
    if ((size_t)snprintf(loc->name, sizeof loc->name, "%s%s", w->prefix, rel.name) >= sizeof loc->name)
        return sdw_fail(e, SDW_EINVAL, "%s: tensor name '%s%s' is too long", w->part, w->prefix, rel.name);
    return 0;
}

static int find_in(const sdw_weights *w, const char *full, const sdw_st_tensor **t, const sdw_st_file **owner)
{
    for (size_t i = 0; i < w->nfiles; i++)
        if ((*t = sdw_st_find(w->files[i], full))) {
            *owner = w->files[i];
            return 1;
        }
    return 0;
}

static int not_found(const sdw_weights *w, const char *full, sdw_error *e)
{
    if (w->synth)
        return sdw_fail(e, SDW_ENOTFOUND, "%s: tensor %s: synthetic weights are never looked up by name",
                        w->part, full);
    if (!w->nfiles)
        return sdw_fail(e, SDW_ENOTFOUND, "%s: no weights loaded (looking for %s)", w->part, full);
    return sdw_fail(e, SDW_ENOTFOUND, "%s: tensor %s not found in %s", w->part, full, file_label(w));
}

int sdw_weights_find(const sdw_weights *w, const char *name, const sdw_st_tensor **t, sdw_error *e)
{
    sdw_weights_loc loc;
    const sdw_st_file *f;
    int rc = locate(w, name, &loc, e);
    if (rc < 0)
        return rc;
    if (w->synth || !find_in(w, loc.name, t, &f))
        return not_found(w, loc.name, e);
    return 0;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

/* The stored shape loc implies for a block of `shape`: nblocks times the
 * rows. 0 when it cannot be stated (a fused scalar, an overflow). */
static int stored_shape(const sdw_weights_loc *loc, int ndim, const int64_t *shape, int64_t *out)
{
    if (ndim < (loc->nblocks > 1) || ndim > SDW_ST_MAX_DIMS || (loc->transpose && (ndim != 2 || loc->nblocks > 1)))
        return 0;
    for (int i = 0; i < ndim; i++)
        out[i] = shape[loc->transpose ? ndim - 1 - i : i];
    if (loc->nblocks > 1) {
        if (shape[0] < 0 || shape[0] > INT64_MAX / loc->nblocks)
            return 0;
        out[0] = shape[0] * loc->nblocks;
    }
    return 1;
}

/* The block of t that loc selects, as a tensor of its own: row blocks of a
 * row-major tensor are contiguous. */
static sdw_st_tensor block_of(const sdw_st_tensor *t, const sdw_weights_loc *loc)
{
    sdw_st_tensor v = *t;
    if (loc->nblocks > 1) {
        v.shape[0] /= loc->nblocks;
        v.numel /= loc->nblocks;
        v.nbytes /= (size_t)loc->nblocks;
        v.data = (const uint8_t *)t->data + (size_t)loc->block * v.nbytes;
    }
    return v;
}

/* Finds the tensor at loc and checks it holds `shape` (per block). */
static int find_checked(const sdw_weights *w, const sdw_weights_loc *loc, int ndim, const int64_t *shape,
                        sdw_st_tensor *block, const sdw_st_file **f, sdw_error *e)
{
    const sdw_st_tensor *t;
    int64_t want[SDW_ST_MAX_DIMS];
    if (!find_in(w, loc->name, &t, f))
        return not_found(w, loc->name, e);
    const char *path = (*f)->path ? (*f)->path : "<memory>";
    if (t->dtype != SDW_DT_F32 && t->dtype != SDW_DT_F16 && t->dtype != SDW_DT_BF16 &&
        t->dtype != SDW_DT_F64)
        return sdw_fail(e, SDW_EUNSUPPORTED, "%s: %s has dtype %s, expected a float type (in %s)",
                        w->part, t->name, sdw_dtype_name(t->dtype), path);
    int same = stored_shape(loc, ndim, shape, want) && t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == want[i];
    if (!same) {
        char have[160], exp[160];
        format_shape(have, sizeof have, t->ndim, t->shape);
        format_shape(exp, sizeof exp, ndim, stored_shape(loc, ndim, shape, want) ? want : shape);
        return sdw_fail(e, SDW_EFORMAT, "%s: %s has shape %s, expected %s%s (in %s)", w->part, t->name, have,
                        exp, loc->nblocks > 1 ? " (q, k and v stacked)" : "", path);
    }
    *block = block_of(t, loc);
    return 0;
}

static int synth_load(const sdw_weights *w, const sdw_weights_loc *loc, int ndim, const int64_t *shape,
                      float **out, sdw_error *e)
{
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && numel > INT64_MAX / 4 / shape[i]))
            return sdw_fail(e, SDW_EINVAL, "%s: %s: implausible shape", w->part, loc->name);
        numel *= shape[i];
    }
    float *buf = malloc(numel ? (size_t)numel * sizeof *buf : 1);
    if (!buf)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %s (%lld floats)", w->part, loc->name,
                        (long long)numel);
    int rc = w->synth(w->synth_ctx, loc, ndim, shape, buf, e);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* Each tensor is read once, at load, into the caller's own copy: its pages of
 * the read-only file mapping are dropped from this process straight after
 * (the page cache keeps them, and a later read refaults them from it), so the
 * files do not stay resident beside the loaded weights. */
static void release_pages(const sdw_st_file *f, const sdw_st_tensor *t)
{
    if (!f->map || !t->nbytes)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)t->data & ~(page - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int sdw_weights_load(const sdw_weights *w, const char *name, int ndim, const int64_t *shape,
                     float **out, sdw_error *e)
{
    sdw_weights_loc loc;
    sdw_st_tensor t;
    const sdw_st_file *f;
    *out = NULL;
    int rc = locate(w, name, &loc, e);
    if (rc < 0)
        return rc;
    if (w->synth)
        return synth_load(w, &loc, ndim, shape, out, e);
    if ((rc = find_checked(w, &loc, ndim, shape, &t, &f, e)) < 0)
        return rc;
    float *buf = malloc(t.numel ? (size_t)t.numel * sizeof *buf : 1);
    if (!buf)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %s (%lld floats)", w->part, t.name,
                        (long long)t.numel);
    if ((rc = sdw_st_to_f32(&t, buf, e)) < 0) {
        free(buf);
        return sdw_fail_wrap(e, "%s: %s", w->part, f->path ? f->path : "<memory>");
    }
    release_pages(f, &t);
    if (loc.transpose) {
        int64_t rows = t.shape[0], cols = t.shape[1];
        float *tr = malloc(t.numel ? (size_t)t.numel * sizeof *tr : 1);
        if (!tr) {
            free(buf);
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %s", w->part, t.name);
        }
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                tr[c * rows + r] = buf[r * cols + c];
        free(buf);
        buf = tr;
    }
    *out = buf;
    return 0;
}

int sdw_weights_load_f16(const sdw_weights *w, const char *name, int ndim, const int64_t *shape,
                         uint16_t **out, sdw_error *e)
{
    sdw_weights_loc loc;
    sdw_st_tensor t;
    const sdw_st_file *f;
    sdw_error ignored;
    *out = NULL;
    /* Anything but a matching half tensor is left to sdw_weights_load, which
     * loads it or says what is wrong. */
    if (w->synth || locate(w, name, &loc, &ignored) < 0 || loc.transpose ||
        find_checked(w, &loc, ndim, shape, &t, &f, &ignored) < 0 || t.dtype != SDW_DT_F16)
        return 1;
    uint16_t *buf = malloc(t.nbytes ? t.nbytes : 1);
    if (!buf)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %s (%lld halves)", w->part, t.name,
                        (long long)t.numel);
    memcpy(buf, t.data, t.nbytes);
    release_pages(f, &t);
    *out = buf;
    return 0;
}

/* OpenCLIP's names for the parts of a block, after
 * transformer.resblocks.N.; q, k and v share in_proj. */
static const struct {
    const char *clip, *openclip;
    int block;
} openclip_parts[] = {
    {"layer_norm1.", "ln_1.", 0},           {"layer_norm2.", "ln_2.", 0},
    {"self_attn.q_proj.", "attn.in_proj_", 0}, {"self_attn.k_proj.", "attn.in_proj_", 1},
    {"self_attn.v_proj.", "attn.in_proj_", 2}, {"self_attn.out_proj.", "attn.out_proj.", 0},
    {"mlp.fc1.", "mlp.c_fc.", 0},           {"mlp.fc2.", "mlp.c_proj.", 0},
};

int sdw_weights_openclip(const char *name, sdw_weights_loc *loc)
{
    static const struct {
        const char *clip, *openclip;
    } fixed[] = {
        {"embeddings.token_embedding.weight", "token_embedding.weight"},
        {"embeddings.position_embedding.weight", "positional_embedding"},
        {"final_layer_norm.weight", "ln_final.weight"},
        {"final_layer_norm.bias", "ln_final.bias"},
        {"text_projection.weight", "text_projection"},
    };
    loc->block = 0;
    loc->nblocks = 1;
    loc->transpose = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strcmp(name, fixed[i].clip)) {
            loc->transpose = !strcmp(fixed[i].openclip, "text_projection");
            return snprintf(loc->name, sizeof loc->name, "%s", fixed[i].openclip) < 0;
        }
    int layer, n = 0;
    if (sscanf(name, "encoder.layers.%d.%n", &layer, &n) != 1 || !n || layer < 0)
        return 1;
    const char *rest = name + n;
    for (size_t i = 0; i < sizeof openclip_parts / sizeof openclip_parts[0]; i++) {
        size_t k = strlen(openclip_parts[i].clip);
        if (strncmp(rest, openclip_parts[i].clip, k))
            continue;
        loc->block = openclip_parts[i].block;
        loc->nblocks = strcmp(openclip_parts[i].openclip, "attn.in_proj_") ? 1 : 3;
        size_t len = (size_t)snprintf(loc->name, sizeof loc->name, "transformer.resblocks.%d.%s%s", layer,
                                      openclip_parts[i].openclip, rest + k);
        return len >= sizeof loc->name;
    }
    return 1;
}

int sdw_weights_text_model(const char *name, sdw_weights_loc *loc)
{
    loc->block = 0;
    loc->nblocks = 1;
    loc->transpose = 0;
    const char *pre = strcmp(name, "text_projection.weight") ? "text_model." : "";
    return (size_t)snprintf(loc->name, sizeof loc->name, "%s%s", pre, name) >= sizeof loc->name;
}

/* ---- helpers ---- */

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int join(char *buf, size_t cap, const char *dir, const char *rel, sdw_error *e)
{
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, rel) >= cap)
        return sdw_fail(e, SDW_EINVAL, "%s/%s: path too long", dir, rel);
    return 0;
}

/* Parses a JSON file that must hold an object. */
static int read_json(const char *path, json_object **out, sdw_error *e)
{
    *out = NULL;
    if (!is_file(path))
        return sdw_fail(e, SDW_ENOTFOUND, "%s: missing", path);
    json_object *o = json_object_from_file(path);
    if (!o)
        return sdw_fail(e, SDW_EFORMAT, "%s: not valid JSON (%s)", path, json_util_get_last_err());
    if (!json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        return sdw_fail(e, SDW_EFORMAT, "%s: not a JSON object", path);
    }
    *out = o;
    return 0;
}

static int cfg_int(json_object *cfg, const char *path, const char *key, int lo, int hi, int *v,
                   sdw_error *e)
{
    json_object *x;
    if (!json_object_object_get_ex(cfg, key, &x))
        return sdw_fail(e, SDW_EFORMAT, "%s: missing field %s", path, key);
    if (!json_object_is_type(x, json_type_int))
        return sdw_fail(e, SDW_EFORMAT, "%s: field %s must be an integer", path, key);
    int64_t n = json_object_get_int64(x);
    if (n < lo || n > hi)
        return sdw_fail(e, SDW_EFORMAT, "%s: field %s = %lld is out of range [%d, %d]", path, key,
                        (long long)n, lo, hi);
    *v = (int)n;
    return 0;
}

/* Checks what both layouts must agree on, whichever way the sizes were found. */
static int check_clip(const sdw_clip_config *c, const char *src, sdw_error *e)
{
    if (c->num_heads < 1 || c->hidden_size % c->num_heads)
        return sdw_fail(e, SDW_EFORMAT, "%s: hidden_size %d is not divisible by %d attention heads",
                        src, c->hidden_size, c->num_heads);
    if (c->max_positions < SDW_TOK_CONTEXT)
        return sdw_fail(e, SDW_EUNSUPPORTED,
                        "%s: max_position_embeddings %d is below the %d tokens a prompt uses", src,
                        c->max_positions, SDW_TOK_CONTEXT);
    return 0;
}

/* with_projection: a CLIPTextModelWithProjection, whose projection_dim is
 * read (CLIPTextConfig saves one, 512 by default, for a CLIPTextModel too,
 * which has no projection). */
static int parse_clip_config(sdw_clip_config *c, const char *path, int with_projection, sdw_error *e)
{
    json_object *cfg;
    int rc = read_json(path, &cfg, e);
    if (rc < 0)
        return rc;
    json_object *x;
    c->projection_dim = 0;
    if (with_projection && (rc = cfg_int(cfg, path, "projection_dim", 1, 16384, &c->projection_dim, e)) < 0)
        goto out;
    if ((rc = cfg_int(cfg, path, "vocab_size", 1, 1 << 20, &c->vocab_size, e)) < 0 ||
        (rc = cfg_int(cfg, path, "hidden_size", 1, 16384, &c->hidden_size, e)) < 0 ||
        (rc = cfg_int(cfg, path, "intermediate_size", 1, 65536, &c->intermediate_size, e)) < 0 ||
        (rc = cfg_int(cfg, path, "num_hidden_layers", 1, 256, &c->num_layers, e)) < 0 ||
        (rc = cfg_int(cfg, path, "num_attention_heads", 1, 1024, &c->num_heads, e)) < 0 ||
        (rc = cfg_int(cfg, path, "max_position_embeddings", 1, 16384, &c->max_positions, e)) < 0)
        goto out;
    /* transformers' CLIPTextConfig defaults, used when the field is absent. */
    c->quick_gelu = 1;
    c->layer_norm_eps = 1e-5f;
    if (json_object_object_get_ex(cfg, "hidden_act", &x)) {
        const char *act = json_object_is_type(x, json_type_string) ? json_object_get_string(x) : NULL;
        if (!act) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: field hidden_act must be a string", path);
            goto out;
        }
        if (strcmp(act, "quick_gelu") == 0)
            c->quick_gelu = 1;
        else if (strcmp(act, "gelu") == 0)
            c->quick_gelu = 0;
        else {
            rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: hidden_act '%s' is not supported (quick_gelu, gelu)",
                          path, act);
            goto out;
        }
    }
    if (json_object_object_get_ex(cfg, "layer_norm_eps", &x)) {
        if (!json_object_is_type(x, json_type_double) && !json_object_is_type(x, json_type_int)) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: field layer_norm_eps must be a number", path);
            goto out;
        }
        double eps = json_object_get_double(x);
        if (!(eps > 0 && eps < 1)) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: field layer_norm_eps = %g is out of range (0, 1)", path,
                          eps);
            goto out;
        }
        c->layer_norm_eps = (float)eps;
    }
    rc = check_clip(c, path, e);
out:
    json_object_put(cfg);
    return rc;
}

static int open_file(sdw_model *m, const char *path, sdw_st_file **f, sdw_error *e)
{
    if (m->nfiles >= MAX_FILES)
        return sdw_fail(e, SDW_EINVAL, "%s: too many files in one model", path);
    int rc = sdw_st_open(&m->files[m->nfiles], path, e);
    if (rc < 0)
        return rc;
    *f = &m->files[m->nfiles++];
    return 0;
}

static int set_weights(sdw_weights *w, const char *part, const sdw_st_file *f, const char *prefix,
                       sdw_error *e)
{
    const sdw_st_file **files = malloc(sizeof *files);
    if (!files)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", part);
    files[0] = f;
    w->files = files;
    w->nfiles = 1;
    snprintf(w->prefix, sizeof w->prefix, "%s", prefix);
    snprintf(w->part, sizeof w->part, "%s", part);
    return 0;
}

/* The embedding tables fix vocab, hidden and position sizes; comparing them
 * with the config here turns a mismatched config into one clear error instead
 * of a shape failure deep inside the encoder. */
static int check_embeddings(const sdw_weights *w, const sdw_clip_config *c, sdw_error *e)
{
    const sdw_st_tensor *t;
    int rc;
    const int64_t want_tok[2] = {c->vocab_size, c->hidden_size};
    const int64_t want_pos[2] = {c->max_positions, c->hidden_size};
    const char *names[2] = {TOKEN_EMB, POS_EMB};
    const int64_t *want[2] = {want_tok, want_pos};
    for (int i = 0; i < 2; i++) {
        if ((rc = sdw_weights_find(w, names[i], &t, e)) < 0)
            return rc;
        if (t->ndim != 2 || t->shape[0] != want[i][0] || t->shape[1] != want[i][1]) {
            char have[160], exp[160];
            format_shape(have, sizeof have, t->ndim, t->shape);
            format_shape(exp, sizeof exp, 2, want[i]);
            return sdw_fail(e, SDW_EFORMAT, "%s: %s has shape %s, but the config implies %s (in %s)",
                            w->part, t->name, have, exp, file_label(w));
        }
    }
    return 0;
}

/* ---- family, prediction, image size ---- */

/* The scheduler_config.json of the repositories diffusers takes a single
 * file's configs from: stable-diffusion-v1-5 (and its inpainting model; the
 * same as sdw_sched_create's default), stabilityai/stable-diffusion-2-1
 * (DDIM, v-prediction) and stabilityai/stable-diffusion-2-inpainting. */
static const char sched_sd1[] =
    "{\"_class_name\":\"PNDMScheduler\",\"beta_end\":0.012,\"beta_schedule\":\"scaled_linear\","
    "\"beta_start\":0.00085,\"clip_sample\":false,\"num_train_timesteps\":1000,\"prediction_type\":\"epsilon\","
    "\"set_alpha_to_one\":false,\"skip_prk_steps\":true,\"steps_offset\":1,\"timestep_spacing\":\"leading\","
    "\"trained_betas\":null}";
static const char sched_sd21[] =
    "{\"_class_name\":\"DDIMScheduler\",\"beta_end\":0.012,\"beta_schedule\":\"scaled_linear\","
    "\"beta_start\":0.00085,\"clip_sample\":false,\"num_train_timesteps\":1000,"
    "\"prediction_type\":\"v_prediction\",\"set_alpha_to_one\":false,\"skip_prk_steps\":true,"
    "\"steps_offset\":1,\"trained_betas\":null}";
static const char sched_sd2_inpaint[] =
    "{\"_class_name\":\"PNDMScheduler\",\"beta_end\":0.012,\"beta_schedule\":\"scaled_linear\","
    "\"beta_start\":0.00085,\"clip_sample\":false,\"num_train_timesteps\":1000,\"prediction_type\":\"epsilon\","
    "\"set_alpha_to_one\":false,\"skip_prk_steps\":true,\"steps_offset\":1,\"trained_betas\":null}";

/* stabilityai/stable-diffusion-xl-base-1.0's */
static const char sched_sdxl[] =
    "{\"_class_name\":\"EulerDiscreteScheduler\",\"beta_end\":0.012,\"beta_schedule\":\"scaled_linear\","
    "\"beta_start\":0.00085,\"clip_sample\":false,\"interpolation_type\":\"linear\",\"num_train_timesteps\":1000,"
    "\"prediction_type\":\"epsilon\",\"sample_max_value\":1.0,\"set_alpha_to_one\":false,\"skip_prk_steps\":true,"
    "\"steps_offset\":1,\"timestep_spacing\":\"leading\",\"trained_betas\":null,\"use_karras_sigmas\":false}";

static int family_size(const sdw_model *m)
{
    return m->family == fam_sdxl ? 1024 : m->family == fam_sd2 && !m->inpainting ? 768 : 512;
}

static int json_int(const json_object *o, const char *key, int dflt)
{
    json_object *x;
    return o && json_object_object_get_ex(o, key, &x) && json_object_is_type(x, json_type_int)
               ? json_object_get_int(x)
               : dflt;
}

/* A folder says SD 2 by its OpenCLIP text tower, the one with exact gelu
 * (OpenAI's CLIP, SD 1.x's, uses quick_gelu); diffusers' pipelines size
 * images as unet sample_size x 2^(VAE levels - 1). The UNet and VAE parsers
 * check these fields; here an odd value only falls back to the default. */
static void folder_family(sdw_model *m)
{
    json_object *bo;
    int levels = m->vae_config && json_object_object_get_ex(m->vae_config, "block_out_channels", &bo) &&
                         json_object_is_type(bo, json_type_array)
                     ? (int)json_object_array_length(bo)
                     : 4;
    int sample = json_int(m->unet_config, "sample_size", 0);
    m->family = m->text_encoder_2.nfiles ? fam_sdxl : m->clip.quick_gelu ? fam_sd1 : fam_sd2;
    m->inpainting = json_int(m->unet_config, "in_channels", 4) == 9;
    m->default_size = sample > 0 && sample <= 4096 && levels >= 1 && levels <= 8 ? sample << (levels - 1)
                                                                                : family_size(m);
}

const char *sdw_model_prediction(const sdw_model *m)
{
    json_object *x;
    if (m->scheduler_config && json_object_object_get_ex(m->scheduler_config, "prediction_type", &x) &&
        json_object_is_type(x, json_type_string))
        return json_object_get_string(x);
    return "epsilon";
}

int sdw_model_set_prediction(sdw_model *m, const char *prediction, sdw_error *e)
{
    const char *v = !strcmp(prediction, "epsilon")                                    ? "epsilon"
                    : !strcmp(prediction, "v") || !strcmp(prediction, "v_prediction") ? "v_prediction"
                                                                                       : NULL;
    if (!v)
        return sdw_fail(e, SDW_EINVAL, "%s: prediction type '%s' is not epsilon, v or v_prediction", m->path,
                        prediction);
    if (!m->scheduler_config)
        return sdw_fail(e, SDW_ENOTFOUND, "%s: no scheduler config to set the prediction type in", m->path);
    json_object *s = json_object_new_string(v);
    if (!s || json_object_object_add(m->scheduler_config, "prediction_type", s) < 0) {
        json_object_put(s);
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", m->path);
    }
    return 0;
}

/* ---- diffusers folder ---- */

/* transformers 5 saves CLIPTextModel without the text_model. prefix that
 * older versions wrote, and loads either; so does this, after the spelling
 * of the token embedding. */
static int text_prefix(const sdw_st_file *f, const char **prefix, sdw_error *e)
{
    int bare = sdw_st_find(f, TOKEN_EMB) != NULL, old = sdw_st_find(f, "text_model." TOKEN_EMB) != NULL;
    if (bare && old)
        return sdw_fail(e, SDW_EFORMAT, "%s: holds both " TOKEN_EMB " and text_model." TOKEN_EMB
                        ": two text encoders in one file?", f->path);
    if (!bare && !old)
        return sdw_fail(e, SDW_ENOTFOUND, "%s: no text encoder token embedding (neither " TOKEN_EMB
                        " nor text_model." TOKEN_EMB ")", f->path);
    *prefix = old ? "text_model." : "";
    return 0;
}

/* The named special tokens of transformers 5 (SPECIAL_TOKENS_ATTRIBUTES,
 * in its order) with CLIPTokenizer's defaults. */
static const struct {
    const char *key, *def;
} named_keys[] = {{"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"}, {"unk_token", "<|endoftext|>"},
                  {"sep_token", NULL},          {"pad_token", "<|endoftext|>"}, {"cls_token", NULL},
                  {"mask_token", NULL}};
enum { NAMED_BOS = 0, NAMED_EOS = 1, NAMED_PAD = 4, NAMED_COUNT = 7 };

typedef struct named_tok {
    const char *content; /* NULL for none */
    size_t len;
    bool normalized;
    const char *path; /* the file that names it, NULL for a default */
} named_tok;

/* One named token in a tokenizer_config.json or special_tokens_map.json
 * (map): a string, which transformers makes a special token not
 * "normalized", or an AddedToken object (special in a map); absent or null
 * leaves *n as it is. */
static int read_named(json_object *file, const char *path, bool map, int k, named_tok *n, sdw_error *e)
{
    json_object *x;
    if (!file || !json_object_object_get_ex(file, named_keys[k].key, &x) || json_object_is_type(x, json_type_null))
        return 0;
    if (json_object_is_type(x, json_type_string)) {
        *n = (named_tok){json_object_get_string(x), (size_t)json_object_get_string_len(x), false, path};
        return 0;
    }
    if (!json_object_is_type(x, json_type_object))
        return sdw_fail(e, SDW_EFORMAT, "%s: %s must be a string or an AddedToken object", path, named_keys[k].key);
    n->path = path;
    return sdw_tok_read_added(x, map, path, named_keys[k].key, &n->content, &n->len, &n->normalized, e);
}

typedef struct decoder_entry {
    long id;
    const char *key;
    json_object *tok;
} decoder_entry;

static int cmp_decoder_entry(const void *a, const void *b)
{
    const decoder_entry *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* tokenizer_config.json's added_tokens_decoder, {"id": AddedToken}: where
 * there is one, transformers 5 builds the added vocabulary from it alone,
 * in the order of the ids, each token getting the id tokenizers gives it,
 * which must be the id it is filed under. */
static int add_decoder(sdw_tokenizer *t, json_object *dec, const char *path, sdw_error *e)
{
    if (!json_object_is_type(dec, json_type_object))
        return sdw_fail(e, SDW_EFORMAT, "%s: added_tokens_decoder must be an object", path);
    size_t n = (size_t)json_object_object_length(dec), k = 0;
    decoder_entry *v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    json_object_object_foreach(dec, key, tok)
    {
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (rc == 0 && (!*key || *end || errno || id < 0 || id > INT32_MAX))
            rc = sdw_fail(e, SDW_EFORMAT, "%s: added_tokens_decoder key \"%.32s\" is not a token id", path, key);
        v[k++] = (decoder_entry){id, key, tok};
    }
    if (rc == 0)
        qsort(v, n, sizeof *v, cmp_decoder_entry);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char field[64];
        const char *content;
        size_t len;
        bool norm;
        snprintf(field, sizeof field, "added_tokens_decoder[\"%.32s\"]", v[i].key);
        if (i > 0 && v[i].id == v[i - 1].id) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: %s files a second token under id %ld", path, field, v[i].id);
        } else if ((rc = sdw_tok_read_added(v[i].tok, false, path, field, &content, &len, &norm, e)) == 0) {
            rc = sdw_tok_add_special_n(t, content, len, norm, e);
            if (rc >= 0 && rc != v[i].id)
                rc = sdw_fail(e, SDW_EFORMAT,
                              "%s: %s is filed under id %ld, but transformers 5 gives \"%.64s\" the id %d", path,
                              field, v[i].id, content, rc);
            else if (rc < 0)
                rc = sdw_fail_wrap(e, "%s: %s", path, field);
            rc = rc < 0 ? rc : 0;
        }
    }
    free(v);
    return rc;
}

static int read_json_if_file(const char *path, json_object **o, sdw_error *e)
{
    *o = NULL;
    return is_file(path) ? read_json(path, o, e) : 0;
}

/* A diffusers tokenizer/ folder: tokenizer.json when there is one (as
 * transformers 5 prefers it), else vocab.json + merges.txt; then the added
 * vocabulary and the pad token as transformers 5's
 * CLIPTokenizer.from_pretrained makes them (tests/reference checks each
 * case against it):
 *   - With an added_tokens_decoder in tokenizer_config.json, the added
 *     vocabulary starts from it alone and the named tokens (bos_token,
 *     eos_token, unk_token, pad_token, ...) come from that file alone.
 *   - Without, it starts from tokenizer.json's added_tokens (none for
 *     vocab.json), and special_tokens_map.json's named tokens replace
 *     tokenizer_config.json's: hub SD 2 folders say pad_token
 *     "<|endoftext|>" in the latter and "!" in the former, and pad with "!".
 *   - Named tokens not yet in the added vocabulary are then added in that
 *     order, CLIPTokenizer's defaults for those not named, a later one's
 *     "normalized" winning: SD 1.5's map names eos_token normalized but
 *     pad_token "<|endoftext|>" as a string, so <|endoftext|> is matched
 *     only as written there.
 * The pad token is always an added token, so SD 2's "!" is id 0 wherever
 * it appears in a prompt. */
static int open_tokenizer(const char *root, const char *sub, sdw_tokenizer **tok, sdw_clip_config *clip, sdw_error *e)
{
    char dir[4096], tj[4096], vocab[4096], merges[4096], cfg[4096], map[4096];
    json_object *cfg_json = NULL, *map_json = NULL, *dec = NULL;
    int rc;
    if ((rc = join(dir, sizeof dir, root, sub, e)) < 0 ||
        (rc = join(tj, sizeof tj, dir, "tokenizer.json", e)) < 0 ||
        (rc = join(vocab, sizeof vocab, dir, "vocab.json", e)) < 0 ||
        (rc = join(merges, sizeof merges, dir, "merges.txt", e)) < 0 ||
        (rc = join(cfg, sizeof cfg, dir, "tokenizer_config.json", e)) < 0 ||
        (rc = join(map, sizeof map, dir, "special_tokens_map.json", e)) < 0)
        return rc;
    bool json = is_file(tj);
    if (json) {
        rc = sdw_tok_load_json(tok, tj, e);
    } else if (is_file(vocab) && is_file(merges)) {
        rc = sdw_tok_load_hf(tok, vocab, merges, e);
    } else {
        return sdw_fail(e, SDW_ENOTFOUND, "%s: missing, and there is no tokenizer.json either",
                        is_file(vocab) ? merges : vocab);
    }
    if (rc < 0)
        return sdw_fail_wrap(e, "%s", sub);
    sdw_tokenizer *t = *tok;
    if ((rc = read_json_if_file(cfg, &cfg_json, e)) < 0 || (rc = read_json_if_file(map, &map_json, e)) < 0)
        goto out;
    bool has_dec = cfg_json && json_object_object_get_ex(cfg_json, "added_tokens_decoder", &dec);
    if (has_dec || !json)
        sdw_tok_clear_added(t);
    if (has_dec && (rc = add_decoder(t, dec, cfg, e)) < 0)
        goto out;
    named_tok named[NAMED_COUNT];
    bool add[NAMED_COUNT];
    for (int k = 0; k < NAMED_COUNT; k++) {
        const char *def = named_keys[k].def;
        named[k] = (named_tok){def, def ? strlen(def) : 0, false, NULL};
        if ((rc = read_named(cfg_json, cfg, false, k, &named[k], e)) < 0 ||
            (!has_dec && (rc = read_named(map_json, map, true, k, &named[k], e)) < 0))
            goto out;
        /* checked before any is added: transformers skips those already
         * there, then adds the rest together */
        add[k] = named[k].content && sdw_tok_added_id(t, named[k].content) < 0;
    }
    for (int k = 0; k < NAMED_COUNT; k++)
        if (add[k] && (rc = sdw_tok_add_special_n(t, named[k].content, named[k].len, named[k].normalized, e)) < 0) {
            rc = sdw_fail_wrap(e, "%s: %s", named[k].path ? named[k].path : dir, named_keys[k].key);
            goto out;
        }
    /* The encoder's BOS and EOS are CLIP's, whatever a file would rename. */
    for (int k = NAMED_BOS; k <= NAMED_EOS; k++) {
        const char *want = named_keys[k].def;
        if (strcmp(named[k].content, want) != 0) {
            rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: %s is '%.64s', but CLIP's is '%s'", named[k].path,
                          named_keys[k].key, named[k].content, want);
            goto out;
        }
    }
    clip->pad_id = sdw_tok_vocab_id(t, named[NAMED_PAD].content);
    if (clip->pad_id >= clip->vocab_size)
        rc = sdw_fail(e, SDW_EFORMAT, "%s: pad token '%.64s' is id %d, outside the text encoder's vocabulary (%d)",
                      named[NAMED_PAD].path ? named[NAMED_PAD].path : dir, named[NAMED_PAD].content, clip->pad_id,
                      clip->vocab_size);
out:
    json_object_put(cfg_json);
    json_object_put(map_json);
    return rc;
}

/* Opens dir/<base>.safetensors, or the .fp16 variant diffusers saves with
 * variant="fp16". */
static int open_variant(sdw_model *m, const char *dir, const char *base, const char *pickle_name,
                        sdw_st_file **f, sdw_error *e)
{
    char path[4096], path16[4096];
    char n1[128], n2[128];
    snprintf(n1, sizeof n1, "%s.safetensors", base);
    snprintf(n2, sizeof n2, "%s.fp16.safetensors", base);
    int rc;
    if ((rc = join(path, sizeof path, dir, n1, e)) < 0 || (rc = join(path16, sizeof path16, dir, n2, e)) < 0)
        return rc;
    if (is_file(path))
        return open_file(m, path, f, e);
    if (is_file(path16))
        return open_file(m, path16, f, e);
    char bin[4096];
    if ((rc = join(bin, sizeof bin, dir, pickle_name, e)) < 0)
        return rc;
    if (is_file(bin))
        return sdw_fail(e, SDW_EUNSUPPORTED, "%s: only a pickle weights file is present; %s", bin,
                        pickle_advice);
    return sdw_fail(e, SDW_ENOTFOUND, "%s: missing (neither %s nor %s exists)", dir, n1, n2);
}

/* A UNet or VAE folder: absent is fine here (see sdw_model_require_pipeline),
 * present but broken is an error. */
static int open_part(sdw_model *m, const char *root, const char *part, sdw_weights *w,
                     json_object **cfg, sdw_error *e)
{
    char dir[4096], path[4096];
    int rc;
    snprintf(w->part, sizeof w->part, "%s", part);
    if ((rc = join(dir, sizeof dir, root, part, e)) < 0)
        return rc;
    if (!is_dir(dir))
        return 0;
    if ((rc = join(path, sizeof path, dir, "config.json", e)) < 0 || (rc = read_json(path, cfg, e)) < 0)
        return rc;
    sdw_st_file *f;
    if ((rc = open_variant(m, dir, "diffusion_pytorch_model", "diffusion_pytorch_model.bin", &f, e)) < 0)
        return rc;
    return set_weights(w, part, f, "", e);
}

/* root/part: a text encoder's config and weights. A projection model
 * (SDXL's text_encoder_2) is read through sdw_weights_text_model when its
 * tower is text_model.-prefixed, as transformers always saves it. */
static int open_text_encoder(sdw_model *m, const char *root, const char *part, int with_projection,
                             sdw_clip_config *c, sdw_weights *w, sdw_error *e)
{
    char dir[4096], path[4096];
    int rc;
    if ((rc = join(dir, sizeof dir, root, part, e)) < 0)
        return rc;
    if (!is_dir(dir))
        return sdw_fail(e, SDW_ENOTFOUND, "%s: missing folder", dir);
    if ((rc = join(path, sizeof path, dir, "config.json", e)) < 0 ||
        (rc = parse_clip_config(c, path, with_projection, e)) < 0)
        return rc;
    sdw_st_file *f;
    const char *prefix = "";
    if ((rc = open_variant(m, dir, "model", "pytorch_model.bin", &f, e)) < 0 ||
        (rc = text_prefix(f, &prefix, e)) < 0)
        return rc;
    int mapped = with_projection && *prefix;
    if ((rc = set_weights(w, part, f, mapped ? "" : prefix, e)) < 0)
        return rc;
    w->map = mapped ? sdw_weights_text_model : NULL;
    return check_embeddings(w, c, e);
}

static int open_diffusers(sdw_model *m, const char *root, sdw_error *e)
{
    char path[4096], dir[4096];
    json_object *index, *x;
    int rc;
    m->layout = SDW_LAYOUT_DIFFUSERS;
    if ((rc = join(path, sizeof path, root, "model_index.json", e)) < 0)
        return rc;
    if (!is_file(path))
        return sdw_fail(e, SDW_ENOTFOUND, "%s: not a diffusers model folder (no model_index.json)", root);
    if ((rc = read_json(path, &index, e)) < 0)
        return rc;
    m->force_zeros = json_object_object_get_ex(index, "force_zeros_for_empty_prompt", &x) &&
                     json_object_is_type(x, json_type_boolean) && json_object_get_boolean(x);
    json_object_put(index);

    if ((rc = open_text_encoder(m, root, "text_encoder", 0, &m->clip, &m->text_encoder, e)) < 0 ||
        (rc = open_tokenizer(root, "tokenizer", &m->tokenizer, &m->clip, e)) < 0)
        return rc;
    if ((rc = join(dir, sizeof dir, root, "text_encoder_2", e)) < 0)
        return rc;
    if (is_dir(dir) && ((rc = open_text_encoder(m, root, "text_encoder_2", 1, &m->clip2, &m->text_encoder_2, e)) < 0 ||
                        (rc = open_tokenizer(root, "tokenizer_2", &m->tokenizer_2, &m->clip2, e)) < 0))
        return rc;

    if ((rc = open_part(m, root, "unet", &m->unet, &m->unet_config, e)) < 0 ||
        (rc = open_part(m, root, "vae", &m->vae, &m->vae_config, e)) < 0)
        return rc;
    if ((rc = join(path, sizeof path, root, "scheduler/scheduler_config.json", e)) < 0)
        return rc;
    if (is_file(path) && (rc = read_json(path, &m->scheduler_config, e)) < 0)
        return rc;
    folder_family(m);
    return 0;
}

/* ---- single-file LDM checkpoint ---- */

static int has_prefix(const sdw_st_file *f, const char *prefix)
{
    size_t n = strlen(prefix);
    for (size_t i = 0; i < f->ntensors; i++)
        if (strncmp(f->tensors[i].name, prefix, n) == 0)
            return 1;
    return 0;
}

/* 1 + the largest N of the tensors named prefix N.*, 0 when there is none. */
static long count_indexed(const sdw_st_file *f, const char *prefix)
{
    size_t n = strlen(prefix);
    long count = 0;
    for (size_t i = 0; i < f->ntensors; i++) {
        const char *nm = f->tensors[i].name;
        if (strncmp(nm, prefix, n) != 0)
            continue;
        char *end;
        long k = strtol(nm + n, &end, 10);
        if (end != nm + n && *end == '.' && k >= 0 && k < 4096 && k + 1 > count)
            count = k + 1;
    }
    return count;
}

/* A CLIP tower's sizes from its tensors (w's names and map), its block
 * count (blocks: the prefix of its numbered blocks) in num_layers; heads
 * are 64 wide, as in every SD tower. */
static int tower_config(const sdw_st_file *f, const sdw_weights *w, const char *blocks, sdw_clip_config *c,
                        sdw_error *e)
{
    const char *path = f->path;
    const sdw_st_tensor *tok, *pos, *fc1;
    int rc;
    if ((rc = sdw_weights_find(w, TOKEN_EMB, &tok, e)) < 0 || (rc = sdw_weights_find(w, POS_EMB, &pos, e)) < 0 ||
        (rc = sdw_weights_find(w, "encoder.layers.0.mlp.fc1.weight", &fc1, e)) < 0)
        return rc;
    if (tok->ndim != 2 || pos->ndim != 2 || tok->shape[0] < 1 || tok->shape[1] < 1 ||
        tok->shape[0] > (1 << 20) || tok->shape[1] > 16384 || pos->shape[0] > 16384)
        return sdw_fail(e, SDW_EFORMAT, "%s: %s or %s has an implausible shape", path, tok->name, pos->name);
    if (fc1->ndim != 2 || fc1->shape[0] < 1 || fc1->shape[0] > 65536)
        return sdw_fail(e, SDW_EFORMAT, "%s: %s has an implausible shape", path, fc1->name);
    c->vocab_size = (int)tok->shape[0];
    c->hidden_size = (int)tok->shape[1];
    c->max_positions = (int)pos->shape[0];
    c->intermediate_size = (int)fc1->shape[0];
    c->num_heads = c->hidden_size / 64 > 1 ? c->hidden_size / 64 : 1;
    c->layer_norm_eps = 1e-5f;
    c->num_layers = (int)count_indexed(f, blocks);
    return 0;
}

/* SDXL's two towers: ViT-L (quick_gelu, padding with EOS) and bigG
 * (gelu, padding with "!", id 0, and its text projection), every block of
 * each, as diffusers' convert_open_clip_checkpoint keeps them for SDXL. */
static int sgm_text(sdw_model *m, const sdw_st_file *f, sdw_error *e)
{
    const sdw_st_tensor *proj;
    int rc;
    if ((rc = set_weights(&m->text_encoder, "text_encoder", f, SDW_SGM_CLIP_PREFIX, e)) < 0 ||
        (rc = set_weights(&m->text_encoder_2, "text_encoder_2", f, SDW_SGM_OPENCLIP_PREFIX, e)) < 0)
        return rc;
    m->text_encoder_2.map = sdw_weights_openclip;
    if ((rc = tower_config(f, &m->text_encoder, SDW_SGM_CLIP_PREFIX "encoder.layers.", &m->clip, e)) < 0 ||
        (rc = tower_config(f, &m->text_encoder_2, SDW_SGM_OPENCLIP_PREFIX "transformer.resblocks.", &m->clip2, e)) < 0 ||
        (rc = sdw_weights_find(&m->text_encoder_2, "text_projection.weight", &proj, e)) < 0)
        return rc;
    if (proj->ndim != 2 || proj->shape[0] != m->clip2.hidden_size || proj->shape[1] < 1 || proj->shape[1] > 16384)
        return sdw_fail(e, SDW_EFORMAT, "%s: %s is not a [%d, n] projection", f->path, proj->name,
                        m->clip2.hidden_size);
    m->clip.quick_gelu = 1, m->clip.pad_id = SDW_TOK_EOS;
    m->clip2.quick_gelu = 0, m->clip2.pad_id = 0;
    m->clip2.projection_dim = (int)proj->shape[1];
    const sdw_clip_config *cs[2] = {&m->clip, &m->clip2};
    for (int i = 0; i < 2; i++) {
        if (cs[i]->num_layers < 2)
            return sdw_fail(e, SDW_ENOTFOUND, "%s: text encoder %d has %d blocks; SDXL reads the penultimate",
                            f->path, i + 1, cs[i]->num_layers);
        if ((rc = check_clip(cs[i], f->path, e)) < 0)
            return rc;
    }
    return 0;
}

/* The CLIP tower's sizes from its tensors: SD 1.x's (transformers' names
 * under cond_stage_model.transformer.) or SD 2.x's OpenCLIP one. */
static int ldm_text(sdw_model *m, const sdw_st_file *f, int *openclip, sdw_error *e)
{
    const char *path = f->path;
    sdw_weights *w = &m->text_encoder;
    int rc;
    *openclip = sdw_st_find(f, SDW_LDM_OPENCLIP_PREFIX "token_embedding.weight") != NULL;
    if (!*openclip && !sdw_st_find(f, SDW_LDM_CLIP_PREFIX TOKEN_EMB))
        return sdw_fail(e, SDW_ENOTFOUND,
                        "%s: no text encoder: neither " SDW_LDM_CLIP_PREFIX TOKEN_EMB
                        " (SD 1.x) nor " SDW_LDM_OPENCLIP_PREFIX "token_embedding.weight (SD 2.x) nor "
                        SDW_SGM_OPENCLIP_PREFIX "token_embedding.weight (SDXL) is there",
                        path);
    if ((rc = set_weights(w, "text_encoder", f, *openclip ? SDW_LDM_OPENCLIP_PREFIX : SDW_LDM_CLIP_PREFIX, e)) <
        0)
        return rc;
    w->map = *openclip ? sdw_weights_openclip : NULL;
    sdw_clip_config *c = &m->clip;
    const char *blocks = *openclip ? SDW_LDM_OPENCLIP_PREFIX "transformer.resblocks." : SDW_LDM_CLIP_PREFIX
                                                                                         "encoder.layers.";
    if ((rc = tower_config(f, w, blocks, c, e)) < 0)
        return rc;
    long n = c->num_layers;
    if (*openclip) {
        /* SD 2 conditions on the output of the penultimate block (LDM's
         * FrozenOpenCLIPEmbedder, layer "penultimate") after ln_final:
         * diffusers drops the last block, and so does this. Its tokenizer
         * pads with "!" (id 0). */
        c->num_layers = (int)n - 1;
        c->quick_gelu = 0;
        c->pad_id = 0;
    } else {
        c->num_layers = (int)n;
        c->quick_gelu = 1;
        c->pad_id = SDW_TOK_EOS;
    }
    if (c->num_layers < 1)
        return sdw_fail(e, SDW_ENOTFOUND, "%s: %ld text encoder blocks (%s*), too few", path, n, blocks);
    if ((rc = check_clip(c, path, e)) < 0)
        return rc;
    if (c->pad_id >= c->vocab_size)
        return sdw_fail(e, SDW_EFORMAT, "%s: vocabulary of %d tokens lacks the pad token %d", path,
                        c->vocab_size, c->pad_id);
    return 0;
}

static const sdw_st_tensor *unet_tensor(const sdw_st_file *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const sdw_st_tensor *unet_tensor(const sdw_st_file *f, const char *fmt, ...)
{
    char name[256];
    int n = snprintf(name, sizeof name, "%s", SDW_LDM_UNET_PREFIX);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
    va_end(ap);
    return k < 0 || (size_t)k >= sizeof name - (size_t)n ? NULL : sdw_st_find(f, name);
}

static int missing_unet(const sdw_st_file *f, const char *what, sdw_error *e)
{
    return sdw_fail(e, SDW_EFORMAT, "%s: cannot read the UNet's configuration off its tensors: %s%s is missing "
                    "or not a weight", f->path, SDW_LDM_UNET_PREFIX, what);
}

/* An SD 2.x single file's UNet config.json, read off the tensors as
 * diffusers' create_unet_diffusers_config_from_ldm reads an LDM yaml: levels
 * from the downsamplers (input_blocks.K.0.op), widths from each level's first
 * resnet, cross-attention and depth from its transformer, linear projections
 * from proj_in's rank; heads are SD 2's num_head_channels 64 (at least one);
 * the rest is SD's, and sample_size and upcast_attention are those of the
 * repository diffusers takes the family's config from. */
static int ldm_unet_config(sdw_model *m, const sdw_st_file *f, sdw_error *e)
{
    const sdw_st_tensor *cin = unet_tensor(f, "input_blocks.0.0.weight"), *cout = unet_tensor(f, "out.2.weight");
    const sdw_st_tensor *pin = unet_tensor(f, "middle_block.1.proj_in.weight");
    const sdw_st_tensor *ctx = unet_tensor(f, "middle_block.1.transformer_blocks.0.attn2.to_k.weight");
    if (!cin || cin->ndim != 4)
        return missing_unet(f, "input_blocks.0.0.weight", e);
    if (!cout || cout->ndim != 4)
        return missing_unet(f, "out.2.weight", e);
    if (!pin || (pin->ndim != 2 && pin->ndim != 4))
        return missing_unet(f, "middle_block.1.proj_in.weight", e);
    if (!ctx || ctx->ndim != 2)
        return missing_unet(f, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", e);
    long nin = count_indexed(f, SDW_LDM_UNET_PREFIX "input_blocks."), lp = 0;
    for (long k = 1; k < nin && !lp; k++)
        if (unet_tensor(f, "input_blocks.%ld.0.op.weight", k))
            lp = k;
    if (!lp)
        lp = nin; /* one level, which has no downsampler */
    long n = lp ? nin / lp : 0;
    if (lp < 2 || nin % lp || n < 1 || n > 8)
        return sdw_fail(e, SDW_EFORMAT, "%s: %ld UNet input blocks, downsampling after every %ld, do not form levels",
                        f->path, nin, lp);
    char prefix[128], what[128];
    snprintf(prefix, sizeof prefix, SDW_LDM_UNET_PREFIX "middle_block.1.transformer_blocks.");
    long mid_depth = count_indexed(f, prefix);
    json_object *o = json_object_new_object(), *bo = json_object_new_array(), *down = json_object_new_array(),
                *up = json_object_new_array(), *heads = json_object_new_array(), *depth = json_object_new_array();
    int rc = 0;
    for (long i = 0; i < n && !rc; i++) {
        long k = i * lp + 1;
        const sdw_st_tensor *r = unet_tensor(f, "input_blocks.%ld.0.out_layers.3.weight", k);
        if (!r || r->ndim != 4 || r->shape[0] < 1 || r->shape[0] > 65536) {
            snprintf(what, sizeof what, "input_blocks.%ld.0.out_layers.3.weight", k);
            rc = missing_unet(f, what, e);
            break;
        }
        int ch = (int)r->shape[0], attn = unet_tensor(f, "input_blocks.%ld.1.proj_in.weight", k) != NULL;
        snprintf(prefix, sizeof prefix, SDW_LDM_UNET_PREFIX "input_blocks.%ld.1.transformer_blocks.", k);
        json_object_array_add(bo, json_object_new_int(ch));
        json_object_array_add(down, json_object_new_string(attn ? "CrossAttnDownBlock2D" : "DownBlock2D"));
        json_object_array_add(heads, json_object_new_int(ch / 64 > 1 ? ch / 64 : 1));
        /* the mid block takes the last level's depth */
        json_object_array_add(depth, json_object_new_int(attn ? (int)count_indexed(f, prefix)
                                                              : i == n - 1 && mid_depth ? (int)mid_depth : 1));
        json_object_array_add(up, json_object_new_string(unet_tensor(f, "output_blocks.%ld.1.proj_in.weight", i * lp)
                                                             ? "CrossAttnUpBlock2D"
                                                             : "UpBlock2D"));
    }
    json_object_object_add(o, "_class_name", json_object_new_string("UNet2DConditionModel"));
    json_object_object_add(o, "in_channels", json_object_new_int((int)cin->shape[1]));
    json_object_object_add(o, "out_channels", json_object_new_int((int)cout->shape[0]));
    json_object_object_add(o, "block_out_channels", bo);
    json_object_object_add(o, "layers_per_block", json_object_new_int((int)lp - 1));
    json_object_object_add(o, "down_block_types", down);
    json_object_object_add(o, "up_block_types", up);
    json_object_object_add(o, "attention_head_dim", heads);
    json_object_object_add(o, "transformer_layers_per_block", depth);
    json_object_object_add(o, "cross_attention_dim", json_object_new_int((int)ctx->shape[1]));
    json_object_object_add(o, "use_linear_projection", json_object_new_boolean(pin->ndim == 2));
    json_object_object_add(o, "sample_size", json_object_new_int(m->default_size / 8));
    /* true in stabilityai/stable-diffusion-2-1, false in -2-inpainting and SDXL */
    json_object_object_add(o, "upcast_attention", json_object_new_boolean(m->family == fam_sd2 && !m->inpainting));
    /* SDXL: label_emb takes the pooled embedding and 6 time ids */
    const sdw_st_tensor *label = unet_tensor(f, "label_emb.0.0.weight");
    if (!rc && m->family == fam_sdxl) {
        int pd = m->clip2.projection_dim;
        if (!label || label->ndim != 2 || label->shape[1] <= pd || (label->shape[1] - pd) % 12) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: %slabel_emb.0.0.weight is missing or does not take the %d-wide "
                          "pooled embedding and 6 time ids", f->path, SDW_LDM_UNET_PREFIX, pd);
        } else {
            json_object_object_add(o, "addition_embed_type", json_object_new_string("text_time"));
            json_object_object_add(o, "addition_time_embed_dim", json_object_new_int((int)(label->shape[1] - pd) / 6));
            json_object_object_add(o, "projection_class_embeddings_input_dim", json_object_new_int((int)label->shape[1]));
        }
    }
    if (rc)
        json_object_put(o);
    else
        m->unet_config = o;
    return rc;
}

/* An SDXL single file takes the configs of stabilityai/stable-diffusion-xl-base-1.0,
 * as diffusers does: its scheduler, the VAE's scaling factor,
 * force_zeros_for_empty_prompt, 1024x1024, the bundled CLIP tokenizer
 * twice, the second padding with "!". */
static int open_sgm(sdw_model *m, const sdw_st_file *f, sdw_error *e)
{
    int rc;
    m->family = fam_sdxl;
    m->force_zeros = 1;
    m->inpainting = 0;
    m->default_size = family_size(m);
    if ((rc = set_weights(&m->unet, "unet", f, SDW_LDM_UNET_PREFIX, e)) < 0 ||
        (rc = set_weights(&m->vae, "vae", f, SDW_LDM_VAE_PREFIX, e)) < 0 || (rc = sgm_text(m, f, e)) < 0)
        return rc;
    if (!(m->scheduler_config = json_tokener_parse(sched_sdxl)) ||
        !(m->vae_config = json_tokener_parse("{\"scaling_factor\":0.13025}")))
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", f->path);
    if (has_prefix(f, SDW_LDM_UNET_PREFIX) && (rc = ldm_unet_config(m, f, e)) < 0)
        return rc;
    if ((rc = sdw_tok_load_default(&m->tokenizer, e)) < 0 || (rc = sdw_tok_load_default(&m->tokenizer_2, e)) < 0 ||
        (rc = sdw_tok_add_special(m->tokenizer, "<|endoftext|>", false, e)) < 0 ||
        (rc = sdw_tok_add_special(m->tokenizer_2, "!", false, e)) < 0)
        return sdw_fail_wrap(e, "%s: bundled tokenizer", f->path);
    return 0;
}

static int open_ldm(sdw_model *m, const char *path, sdw_error *e)
{
    sdw_st_file *f;
    int rc, openclip;
    m->layout = SDW_LAYOUT_LDM;
    if ((rc = open_file(m, path, &f, e)) < 0)
        return rc;
    if (has_prefix(f, SDW_SGM_OPENCLIP_PREFIX))
        return open_sgm(m, f, e);
    if (has_prefix(f, SDW_SGM_REFINER_PREFIX))
        return sdw_fail(e, SDW_EUNSUPPORTED, "%s: an SDXL refiner (bigG alone, " SDW_SGM_REFINER_PREFIX
                        "*): not supported", path);
    if ((rc = ldm_text(m, f, &openclip, e)) < 0 ||
        (rc = set_weights(&m->unet, "unet", f, SDW_LDM_UNET_PREFIX, e)) < 0 ||
        (rc = set_weights(&m->vae, "vae", f, SDW_LDM_VAE_PREFIX, e)) < 0)
        return rc;
    const sdw_st_tensor *v2 = unet_tensor(f, V2_KEY), *cin = unet_tensor(f, "input_blocks.0.0.weight");
    m->family = openclip || (v2 && v2->ndim == 2 && v2->shape[1] == 1024) ? fam_sd2 : fam_sd1;
    m->inpainting = cin && cin->ndim == 4 && cin->shape[1] == 9;
    m->default_size = family_size(m);
    const char *sched = m->family == fam_sd1 ? sched_sd1 : m->inpainting ? sched_sd2_inpaint : sched_sd21;
    if (!(m->scheduler_config = json_tokener_parse(sched)))
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    if (m->family == fam_sd2 && has_prefix(f, SDW_LDM_UNET_PREFIX) && (rc = ldm_unet_config(m, f, e)) < 0)
        return rc;
    if ((rc = sdw_tok_load_default(&m->tokenizer, e)) < 0)
        return sdw_fail_wrap(e, "%s: bundled tokenizer", path);
    /* diffusers takes a single file's tokenizer from its family's hub
     * folder, which open_tokenizer would read as follows. SD 2's
     * (stabilityai/stable-diffusion-2-1) pads with "!" in
     * special_tokens_map.json: a special added token, matched as written,
     * id 0 as ldm_text says. SD 1.5's names pad_token "<|endoftext|>" as a
     * string there, so that token is not "normalized". */
    if ((rc = sdw_tok_add_special(m->tokenizer, openclip ? "!" : "<|endoftext|>", false, e)) < 0)
        return sdw_fail_wrap(e, "%s: bundled tokenizer", path);
    return 0;
}

/* ---- entry points ---- */

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcasecmp(s + n - k, suf) == 0;
}

/* Zip (torch.save since 1.6) or a raw pickle stream (protocol 2 and up). */
static int looks_like_pickle(const char *path)
{
    unsigned char b[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, b, sizeof b);
    close(fd);
    if (n >= 4 && memcmp(b, "PK\x03\x04", 4) == 0)
        return 1;
    return n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5;
}

int sdw_model_open(sdw_model *m, const char *path, sdw_error *e)
{
    memset(m, 0, sizeof *m);
    if ((size_t)snprintf(m->path, sizeof m->path, "%s", path) >= sizeof m->path)
        return sdw_fail(e, SDW_EINVAL, "model path too long");
    struct stat st;
    if (stat(path, &st) < 0)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "%s: %s", path, strerror(errno));
    if (!(m->files = calloc(MAX_FILES, sizeof *m->files)))
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = open_diffusers(m, path, e);
    } else if (!S_ISREG(st.st_mode)) {
        rc = sdw_fail(e, SDW_EINVAL, "%s: neither a folder nor a regular file", path);
    } else if (ends_with(path, ".ckpt") || ends_with(path, ".pt") || ends_with(path, ".pth") ||
               ends_with(path, ".bin") || looks_like_pickle(path)) {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: %s", path, pickle_advice);
    } else if (ends_with(path, ".safetensors")) {
        rc = open_ldm(m, path, e);
    } else {
        rc = sdw_fail(e, SDW_EUNSUPPORTED,
                      "%s: unknown model format (expected a diffusers folder or a .safetensors file)",
                      path);
    }
    if (rc < 0)
        sdw_model_close(m);
    return rc;
}

int sdw_model_require_pipeline(const sdw_model *m, sdw_error *e)
{
    if (m->layout == SDW_LAYOUT_LDM) {
        const sdw_st_file *f = m->text_encoder.files[0];
        if (!has_prefix(f, SDW_LDM_UNET_PREFIX))
            return sdw_fail(e, SDW_ENOTFOUND, "%s: no UNet tensors (" SDW_LDM_UNET_PREFIX "*)", f->path);
        if (!has_prefix(f, SDW_LDM_VAE_PREFIX))
            return sdw_fail(e, SDW_ENOTFOUND, "%s: no VAE tensors (" SDW_LDM_VAE_PREFIX "*)", f->path);
        return 0;
    }
    if (!m->unet.nfiles)
        return sdw_fail(e, SDW_ENOTFOUND, "%s/unet: missing folder", m->path);
    if (!m->vae.nfiles)
        return sdw_fail(e, SDW_ENOTFOUND, "%s/vae: missing folder", m->path);
    if (!m->scheduler_config)
        return sdw_fail(e, SDW_ENOTFOUND, "%s/scheduler/scheduler_config.json: missing", m->path);
    return 0;
}

void sdw_model_close(sdw_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfiles; i++)
        sdw_st_close(&m->files[i]);
    free(m->files);
    free((void *)m->text_encoder.files);
    free((void *)m->text_encoder_2.files);
    free((void *)m->unet.files);
    free((void *)m->vae.files);
    if (m->tokenizer)
        sdw_tok_free(m->tokenizer);
    if (m->tokenizer_2)
        sdw_tok_free(m->tokenizer_2);
    json_object_put(m->unet_config);
    json_object_put(m->vae_config);
    json_object_put(m->scheduler_config);
    memset(m, 0, sizeof *m);
}
