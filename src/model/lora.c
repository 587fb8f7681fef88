#include "model/lora.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest LoRA file read (SDXL LoRAs of rank 256 are ~1.7 GB). */
#define LORA_MAX_BYTES (4ull << 30)

static void flatten(char *s)
{
    for (; *s; s++)
        if (*s == '.')
            *s = '_';
}

static int starts(const char *s, const char *p)
{
    return !strncmp(s, p, strlen(p));
}

static int ends(const char *s, const char *x, size_t *cut)
{
    size_t n = strlen(s), k = strlen(x);
    if (n <= k || strcmp(s + n - k, x))
        return 0;
    *cut = n - k;
    return 1;
}

/* --- SGM (LDM single-file) UNet paths ------------------------------------ */

/* Reads "<int>_" at *p; -1 when there is none. */
static int take_int(const char **p)
{
    const char *s = *p;
    int v = 0, k = 0;
    while (s[k] >= '0' && s[k] <= '9' && k < 4)
        v = v * 10 + (s[k++] - '0');
    if (!k || (s[k] != '_' && s[k] != 0))
        return -1;
    *p = s + k + (s[k] == '_');
    return v;
}

/* A ResnetBlock's SGM internals in diffusers' names. */
static const char *resnet_part(const char *rest)
{
    static const char *const map[][2] = {{"in_layers_2", "conv1"},
                                         {"out_layers_3", "conv2"},
                                         {"emb_layers_1", "time_emb_proj"},
                                         {"skip_connection", "conv_shortcut"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(rest, map[i][0]))
            return map[i][1];
    return NULL;
}

static int put(char *out, size_t cap, const char *fmt, int a, int b, const char *rest)
{
    int n = snprintf(out, cap, fmt, a, b, rest);
    return n < 0 || (size_t)n >= cap;
}

int sdw_lora_sgm_path(const char *flat, int lpb, char *out, size_t cap)
{
    static const char *const whole[][2] = {{"input_blocks_0_0", "conv_in"},
                                           {"out_2", "conv_out"},
                                           {"time_embed_0", "time_embedding_linear_1"},
                                           {"time_embed_2", "time_embedding_linear_2"},
                                           {"label_emb_0_0", "add_embedding_linear_1"},
                                           {"label_emb_0_2", "add_embedding_linear_2"}};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        if (!strcmp(flat, whole[i][0]))
            return snprintf(out, cap, "%s", whole[i][1]) >= (int)cap;
    const char *p = flat;
    if (lpb < 1)
        return 1;
    if (starts(p, "input_blocks_") || starts(p, "output_blocks_")) {
        int input = starts(p, "input_blocks_");
        p += input ? strlen("input_blocks_") : strlen("output_blocks_");
        int i = take_int(&p), j = take_int(&p);
        if (i < 0 || j < 0 || (input && i < 1))
            return 1;
        int blk = input ? (i - 1) / (lpb + 1) : i / (lpb + 1), layer = input ? (i - 1) % (lpb + 1) : i % (lpb + 1);
        const char *side = input ? "down" : "up";
        char fmt[64];
        if (input && layer == lpb) /* the downsampler: input_blocks_3_0_op */
            return j != 0 || strcmp(p, "op") || put(out, cap, "down_blocks_%d_downsamplers_%d_conv%s", blk, 0, "");
        if (j == 0) {
            const char *r = resnet_part(p);
            snprintf(fmt, sizeof fmt, "%s_blocks_%%d_resnets_%%d_%%s", side);
            return !r || put(out, cap, fmt, blk, layer, r);
        }
        /* An up block's upsampler follows its resnet (1) or its attention (2). */
        if (!input && !strcmp(p, "conv") && (j == 2 || j == 1))
            return put(out, cap, "up_blocks_%d_upsamplers_%d_conv%s", blk, 0, "");
        if (j != 1)
            return 1;
        snprintf(fmt, sizeof fmt, "%s_blocks_%%d_attentions_%%d_%%s", side);
        return put(out, cap, fmt, blk, layer, p);
    }
    if (starts(p, "middle_block_")) {
        p += strlen("middle_block_");
        int i = take_int(&p);
        if (i == 1)
            return snprintf(out, cap, "mid_block_attentions_0_%s", p) >= (int)cap;
        const char *r = resnet_part(p);
        if ((i != 0 && i != 2) || !r)
            return 1;
        return snprintf(out, cap, "mid_block_resnets_%d_%s", i / 2, r) >= (int)cap;
    }
    return snprintf(out, cap, "%s", flat) >= (int)cap;
}

/* Whether a UNet path is in SGM's form, the names diffusers' layers never
 * start with. */
static int is_sgm(const char *flat)
{
    static const char *const sgm[] = {"input_blocks_", "middle_block_", "output_blocks_", "out_2",
                                      "time_embed_", "label_emb_"};
    for (size_t i = 0; i < sizeof sgm / sizeof sgm[0]; i++)
        if (starts(flat, sgm[i]))
            return 1;
    return 0;
}

/* Which layer an SGM path names waits for the model's layers_per_block;
 * one that names none under any a UNet has (1 to 4) is malformed already. */
static int sgm_well_formed(const char *flat)
{
    char tmp[200];
    for (int lpb = 1; lpb <= 4; lpb++)
        if (!sdw_lora_sgm_path(flat, lpb, tmp, sizeof tmp))
            return 1;
    return 0;
}

/* --- parsing -------------------------------------------------------------- */

typedef enum { T_DOWN, T_UP, T_ALPHA } tensor_role;

/* Splits a tensor name into its module (part, flat path, key) and role. */
static int classify(const char *name, char *part, char *flat, size_t fcap, int *sgm, char *key, size_t kcap,
                    tensor_role *role, sdw_error *e)
{
    static const struct {
        const char *prefix, *part;
    } kohya[] = {{"lora_unet_", "unet"},
                 {"lora_te1_", "text_encoder"},
                 {"lora_te2_", "text_encoder_2"},
                 {"lora_te_", "text_encoder"}},
      peft[] = {{"unet.", "unet"}, {"text_encoder.", "text_encoder"}, {"text_encoder_2.", "text_encoder_2"}};
    static const struct {
        const char *suffix;
        tensor_role role;
    } ksuf[] = {{".lora_down.weight", T_DOWN}, {".lora_up.weight", T_UP}, {".alpha", T_ALPHA}},
      psuf[] = {{".lora_A.weight", T_DOWN},
                {".lora_B.weight", T_UP},
                {".lora.down.weight", T_DOWN},
                {".lora.up.weight", T_UP}};
    size_t cut;
    const char *path = NULL;
    for (size_t i = 0; !path && i < sizeof kohya / sizeof kohya[0]; i++)
        if (starts(name, kohya[i].prefix)) {
            for (size_t k = 0; !path && k < sizeof ksuf / sizeof ksuf[0]; k++)
                if (ends(name, ksuf[k].suffix, &cut) && cut > strlen(kohya[i].prefix))
                    path = name + strlen(kohya[i].prefix), *role = ksuf[k].role, strcpy(part, kohya[i].part);
            if (!path)
                return sdw_fail(e, SDW_EUNSUPPORTED,
                                "tensor %s is not a LoRA factor (LoHa, LoKr, DoRA and others are not supported)",
                                name);
        }
    for (size_t i = 0; !path && i < sizeof peft / sizeof peft[0]; i++)
        if (starts(name, peft[i].prefix) && (i != 1 || !starts(name, "text_encoder_2."))) {
            for (size_t k = 0; !path && k < sizeof psuf / sizeof psuf[0]; k++)
                if (ends(name, psuf[k].suffix, &cut) && cut > strlen(peft[i].prefix))
                    path = name + strlen(peft[i].prefix), *role = psuf[k].role, strcpy(part, peft[i].part);
            if (!path)
                return sdw_fail(e, SDW_EUNSUPPORTED,
                                "tensor %s is not a LoRA factor (DoRA and others are not supported)", name);
        }
    if (!path)
        return sdw_fail(e, SDW_EFORMAT,
                        "tensor %s is not a LoRA tensor (lora_unet_*, lora_te*_*, unet.*, text_encoder*.*)", name);
    size_t plen = cut - (size_t)(path - name), klen = cut;
    if (plen >= fcap || klen >= kcap)
        return sdw_fail(e, SDW_EFORMAT, "tensor name %s is too long", name);
    memcpy(key, name, klen), key[klen] = 0;
    char raw[256];
    memcpy(raw, path, plen), raw[plen] = 0;
    flatten(raw);
    const char *p = raw;
    if (strcmp(part, "unet") && starts(p, "text_model_"))
        p += strlen("text_model_");
    *sgm = !strcmp(part, "unet") && is_sgm(p);
    if ((size_t)snprintf(flat, fcap, "%s", p) >= fcap)
        return sdw_fail(e, SDW_EFORMAT, "tensor name %s is too long", name);
    if (*sgm && !sgm_well_formed(flat))
        return sdw_fail(e, SDW_EFORMAT, "%s: no UNet layer has this SGM path", key);
    return SDW_OK;
}

static const char *family_of(const sdw_st_file *f)
{
    const char *v = sdw_st_meta(f, "ss_base_model_version");
    if (!v)
        return "";
    if (starts(v, "sdxl"))
        return "sdxl";
    if (starts(v, "sd_v2"))
        return "sd2";
    if (starts(v, "sd_v1"))
        return "sd1";
    return "";
}

static int is_float(sdw_dtype d)
{
    return d == SDW_DT_F32 || d == SDW_DT_F16 || d == SDW_DT_BF16 || d == SDW_DT_F64;
}

/* A factor with a NaN or an infinity would poison every image: refused
 * when the file is read, so that applying it cannot fail on its values. */
static int finite_factor(const sdw_st_tensor *t, sdw_error *e)
{
    float *v = malloc((size_t)t->numel * sizeof *v);
    if (!v)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = sdw_st_to_f32(t, v, e);
    for (int64_t i = 0; !rc && i < t->numel; i++)
        if (!isfinite(v[i]))
            rc = sdw_fail(e, SDW_EFORMAT, "%s holds a value that is not finite", t->name);
    free(v);
    return rc;
}

static int build(sdw_lora *l, sdw_error *e)
{
    const sdw_st_file *f = &l->st;
    if (sdw_st_meta(f, "lora_adapter_metadata"))
        return sdw_fail(e, SDW_EUNSUPPORTED, "PEFT adapter metadata (lora_adapter_metadata) is not supported");
    if (!f->ntensors)
        return sdw_fail(e, SDW_EFORMAT, "no tensors");
    l->m = calloc(f->ntensors, sizeof *l->m);
    if (!l->m)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    float *alphas = calloc(f->ntensors, sizeof *alphas);
    if (!alphas)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = SDW_OK;
    for (size_t i = 0; !rc && i < f->ntensors; i++) {
        const sdw_st_tensor *t = &f->tensors[i];
        sdw_lora_module tmp = {0};
        tensor_role role = T_DOWN;
        if ((rc = classify(t->name, tmp.part, tmp.flat, sizeof tmp.flat, &tmp.sgm, tmp.key, sizeof tmp.key, &role,
                           e)))
            break;
        if (!is_float(t->dtype)) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s is %s, not floating point", t->name, sdw_dtype_name(t->dtype));
            break;
        }
        size_t k = 0;
        while (k < l->n && (strcmp(l->m[k].part, tmp.part) || strcmp(l->m[k].flat, tmp.flat)))
            k++;
        if (k == l->n)
            l->m[l->n++] = tmp;
        else if (strcmp(l->m[k].key, tmp.key)) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s and %s update the same layer", l->m[k].key, tmp.key);
            break;
        }
        sdw_lora_module *m = &l->m[k];
        if (role == T_ALPHA) {
            float a = 0;
            if (t->numel != 1 || t->ndim > 1)
                rc = sdw_fail(e, SDW_EFORMAT, "%s is not a scalar", t->name);
            else if (!(rc = sdw_st_to_f32(t, &a, e)) && (!isfinite(a) || a <= 0))
                rc = sdw_fail(e, SDW_EFORMAT, "%s is %g: an alpha must be positive and finite", t->name, a);
            else if (!rc && alphas[k])
                rc = sdw_fail(e, SDW_EFORMAT, "%s given twice", t->name);
            alphas[k] = a;
        } else {
            const sdw_st_tensor **slot = role == T_DOWN ? &m->down : &m->up;
            if (*slot)
                rc = sdw_fail(e, SDW_EFORMAT, "%s: %s factor given twice", m->key, role == T_DOWN ? "down" : "up");
            else if ((t->ndim != 2 && t->ndim != 4) || t->numel == 0)
                rc = sdw_fail(e, SDW_EFORMAT, "%s has %d dimensions, not 2 or 4", t->name, t->ndim);
            *slot = t;
        }
    }
    for (size_t k = 0; !rc && k < l->n; k++) {
        sdw_lora_module *m = &l->m[k];
        if (!m->down || !m->up) {
            rc = sdw_fail(e, SDW_EFORMAT, "%s has no %s factor", m->key, m->down ? "up" : "down");
            break;
        }
        int64_t r = m->down->shape[0];
        if (m->up->shape[1] != r || (m->up->ndim == 4 && (m->up->shape[2] != 1 || m->up->shape[3] != 1))) {
            char a[96], b[96];
            rc = sdw_fail(e, SDW_EFORMAT, "%s: rank mismatch, down %s and up %s", m->key,
                          sdw_shape_str(m->down->ndim, m->down->shape, a, sizeof a),
                          sdw_shape_str(m->up->ndim, m->up->shape, b, sizeof b));
            break;
        }
        m->alpha = alphas[k] ? alphas[k] : (float)r;
        if (!(rc = finite_factor(m->down, e)))
            rc = finite_factor(m->up, e);
    }
    free(alphas);
    if (!rc)
        snprintf(l->family, sizeof l->family, "%s", family_of(f));
    return rc;
}

int sdw_lora_parse(sdw_lora **out, const void *buf, size_t len, sdw_error *e)
{
    sdw_lora *l = calloc(1, sizeof *l);
    if (!l)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int rc = sdw_st_parse(&l->st, buf, len, e);
    if (!rc)
        rc = build(l, e);
    if (rc) {
        sdw_lora_free(l);
        return rc;
    }
    *out = l;
    return SDW_OK;
}

static long long mtime_ns(const struct stat *st)
{
    return (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

int sdw_lora_open(sdw_lora **out, const char *path, sdw_error *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (unsigned long long)st.st_size > LORA_MAX_BYTES) {
        close(fd);
        return sdw_fail(e, SDW_EFORMAT, "%s: not a regular file of at most 4 GiB", path);
    }
    size_t len = (size_t)st.st_size;
    void *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %zu bytes", path, len);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t k = read(fd, (char *)buf + got, len - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    if (got != len) {
        free(buf);
        return sdw_fail(e, SDW_EIO, "%s: read %zu of %zu bytes", path, got, len);
    }
    sdw_lora *l = NULL;
    int rc = sdw_lora_parse(&l, buf, len, e);
    if (rc) {
        free(buf);
        return sdw_fail_wrap(e, "%s", path);
    }
    l->buf = buf, l->len = len;
    snprintf(l->path, sizeof l->path, "%s", path);
    l->dev = st.st_dev, l->ino = st.st_ino, l->size = st.st_size, l->mtime_ns = mtime_ns(&st);
    *out = l;
    return SDW_OK;
}

void sdw_lora_free(sdw_lora *l)
{
    if (!l)
        return;
    sdw_st_close(&l->st);
    free(l->m);
    free(l->buf);
    free(l);
}

size_t sdw_lora_bytes(const sdw_lora *l)
{
    return sizeof *l + l->len + l->n * sizeof *l->m + l->st.ntensors * sizeof *l->st.tensors;
}

int sdw_lora_changed(const sdw_lora *l)
{
    struct stat st;
    if (stat(l->path, &st))
        return 1;
    return st.st_dev != l->dev || st.st_ino != l->ino || st.st_size != l->size || mtime_ns(&st) != l->mtime_ns;
}

/* --- matching ------------------------------------------------------------- */

/* The UNet's layers_per_block, as SGM indices count them: the resnets of
 * its first down block. */
static int layers_per_block(const sdw_layer_set *s)
{
    int lpb = 0;
    char want[64];
    for (int found = 1; found; lpb += found) {
        snprintf(want, sizeof want, "down_blocks_0_resnets_%d_conv1", lpb);
        found = 0;
        for (size_t i = 0; s && i < s->n && !found; i++)
            found = !strcmp(s->v[i].part, "unet") && !strcmp(s->v[i].flat, want);
    }
    return lpb;
}

/* lpb: the model's layers_per_block, for SGM paths. */
static const sdw_layer_ref *find_layer(const sdw_layer_set *s, const sdw_lora_module *m, int lpb)
{
    char mapped[sizeof m->flat];
    const char *flat = m->flat;
    if (m->sgm) {
        if (sdw_lora_sgm_path(m->flat, lpb, mapped, sizeof mapped))
            return NULL;
        flat = mapped;
    }
    for (size_t i = 0; s && i < s->n; i++)
        if (!strcmp(s->v[i].flat, flat) && !strcmp(s->v[i].part, m->part))
            return &s->v[i];
    return NULL;
}

/* A file's names tell SDXL's LoRAs (two text encoders: lora_te1_ / lora_te2_,
 * text_encoder_2.) from SD 1/2's (kohya's lora_te_) when no metadata does. */
static int names_fit(const sdw_lora *l, const char *family, sdw_error *e)
{
    int xl = !strcmp(family, "sdxl");
    for (size_t i = 0; i < l->n; i++) {
        const char *k = l->m[i].key;
        if (!xl && (!strcmp(l->m[i].part, "text_encoder_2") || starts(k, "lora_te1_")))
            return sdw_fail(e, SDW_EINVAL, "is for sdxl (%s names one of its two text encoders), the model is %s", k,
                            family);
        if (xl && starts(k, "lora_te_"))
            return sdw_fail(e, SDW_EINVAL,
                            "is for sd1 or sd2 (%s names their single text encoder), the model is sdxl", k);
    }
    return SDW_OK;
}

/* Whether t is [a, b] or [a, b, k, k]. */
static int is_shape(const sdw_st_tensor *t, int64_t a, int64_t b, int64_t k, int flat_ok)
{
    if (t->shape[0] != a || t->shape[1] != b)
        return 0;
    if (t->ndim == 2)
        return flat_ok;
    return t->shape[2] == k && t->shape[3] == k;
}

static int check_module(const sdw_lora_module *m, const sdw_layer_ref *ref, const char *family, sdw_error *e)
{
    int64_t r = m->down->shape[0], in, out, k;
    if (ref->linear)
        in = ref->linear->in, out = ref->linear->out, k = 1;
    else
        in = ref->conv->cin, out = ref->conv->cout, k = ref->conv->k;
    if (is_shape(m->down, r, in, k, k == 1) && is_shape(m->up, out, r, 1, 1))
        return SDW_OK;
    char a[96], b[96];
    return sdw_fail(e, SDW_EINVAL,
                    "%s: shape mismatch, down %s and up %s for a layer of %lld inputs and %lld outputs%s (a LoRA for "
                    "another model family than %s?)",
                    m->key, sdw_shape_str(m->down->ndim, m->down->shape, a, sizeof a),
                    sdw_shape_str(m->up->ndim, m->up->shape, b, sizeof b), (long long)in, (long long)out,
                    k > 1 ? ", kernel 3x3" : "", family);
}

int sdw_lora_check(const sdw_lora *l, const sdw_layer_set *s, const char *family, sdw_error *e)
{
    if (l->family[0] && strcmp(l->family, family))
        return sdw_fail(e, SDW_EINVAL, "is for %s, the model is %s", l->family, family);
    int rc = names_fit(l, family, e);
    if (rc)
        return rc;
    const sdw_layer_ref **refs = calloc(l->n ? l->n : 1, sizeof *refs);
    if (!refs)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    int lpb = layers_per_block(s);
    size_t matched = 0;
    const sdw_lora_module *miss = NULL;
    for (size_t i = 0; !rc && i < l->n; i++) {
        const sdw_layer_ref *ref = refs[i] = find_layer(s, &l->m[i], lpb);
        if (!ref) {
            if (!miss)
                miss = &l->m[i];
            continue;
        }
        matched++;
        rc = check_module(&l->m[i], ref, family, e);
        /* An SGM and a diffusers name for one layer meet only here. */
        for (size_t j = 0; !rc && j < i; j++)
            if (refs[j] == ref)
                rc = sdw_fail(e, SDW_EINVAL, "%s and %s update the same layer", l->m[j].key, l->m[i].key);
    }
    free(refs);
    if (rc)
        return rc;
    if (!matched)
        return sdw_fail(e, SDW_EINVAL, "none of its %zu modules (%s, ...) matches a layer of this %s model", l->n,
                        miss->key, family);
    if (miss)
        return sdw_fail(e, SDW_EINVAL, "%s matches no layer of this %s model", miss->key, family);
    return SDW_OK;
}

/* --- applying ------------------------------------------------------------- */

struct sdw_lora_applied {
    sdw_delta *deltas;
    size_t n;
    const sdw_layer_ref **refs; /* the layer each delta is attached to */
};

static int build_delta(const sdw_lora_module *m, const sdw_layer_ref *ref, float weight, sdw_backend *be,
                       sdw_delta *d, sdw_error *e)
{
    int64_t r = m->down->shape[0];
    float *down = malloc((size_t)m->down->numel * sizeof *down), *up = malloc((size_t)m->up->numel * sizeof *up);
    int rc = down && up ? SDW_OK : sdw_fail(e, SDW_ENOMEM, "out of memory");
    if (!rc)
        rc = sdw_st_to_f32(m->down, down, e);
    if (!rc)
        rc = sdw_st_to_f32(m->up, up, e);
    /* diffusers' scaling, folded into the up factor. */
    float scale = weight * m->alpha / (float)r;
    for (int64_t i = 0; !rc && i < m->up->numel; i++)
        up[i] *= scale;
    if (!rc) {
        int64_t out = ref->linear ? ref->linear->out : ref->conv->cout;
        if (ref->linear) {
            int64_t ds[2] = {r, ref->linear->in}, us[2] = {out, r};
            if (!(rc = sdw_tensor_from_host(&d->down, be, 2, ds, down, e)))
                rc = sdw_tensor_from_host(&d->up, be, 2, us, up, e);
        } else {
            int64_t k = ref->conv->k, ds[4] = {r, ref->conv->cin, k, k}, us[4] = {out, r, 1, 1};
            if (!(rc = sdw_tensor_from_host(&d->down, be, 4, ds, down, e)))
                rc = sdw_tensor_from_host(&d->up, be, 4, us, up, e);
        }
    }
    free(down);
    free(up);
    return rc;
}

void sdw_lora_remove(sdw_lora_applied *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++) {
        const sdw_layer_ref *ref = a->refs[i];
        if (ref) {
            if (ref->linear)
                ref->linear->delta = NULL;
            else
                ref->conv->delta = NULL;
        }
        sdw_tensor_free(&a->deltas[i].down);
        sdw_tensor_free(&a->deltas[i].up);
    }
    free(a->deltas);
    free(a->refs);
    free(a);
}

int sdw_lora_apply(const sdw_layer_set *s, const char *family, const sdw_lora_use *u, int n, sdw_backend *be,
                   sdw_lora_applied **out, sdw_error *e)
{
    *out = NULL;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(u[i].weight) || fabsf(u[i].weight) > 4)
            return sdw_fail(e, SDW_EINVAL, "LoRA %s: weight %g outside [-4, 4]", u[i].name, u[i].weight);
        int rc = sdw_lora_check(u[i].lora, s, family, e);
        if (rc)
            return sdw_fail_wrap(e, "LoRA %s", u[i].name);
        total += u[i].lora->n;
    }
    if (!n)
        return SDW_OK;
    sdw_lora_applied *a = calloc(1, sizeof *a);
    if (!a || !(a->deltas = calloc(total, sizeof *a->deltas)) || !(a->refs = calloc(total, sizeof *a->refs))) {
        sdw_lora_remove(a);
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    }
    int rc = SDW_OK, lpb = layers_per_block(s);
    for (int i = 0; !rc && i < n; i++)
        for (size_t k = 0; !rc && k < u[i].lora->n; k++) {
            const sdw_lora_module *m = &u[i].lora->m[k];
            const sdw_layer_ref *ref = find_layer(s, m, lpb);
            /* Attached below, once every delta is built. */
            if ((rc = build_delta(m, ref, u[i].weight, be, &a->deltas[a->n++], e)))
                sdw_fail_wrap(e, "LoRA %s", u[i].name);
            else
                a->refs[a->n - 1] = ref;
        }
    if (rc) {
        memset(a->refs, 0, a->n * sizeof *a->refs);
        sdw_lora_remove(a);
        return rc;
    }
    for (size_t i = 0; i < a->n; i++) {
        const sdw_layer_ref *ref = a->refs[i];
        const sdw_delta **slot = ref->linear ? &ref->linear->delta : &ref->conv->delta;
        a->deltas[i].next = *slot;
        *slot = &a->deltas[i];
    }
    *out = a;
    return SDW_OK;
}
