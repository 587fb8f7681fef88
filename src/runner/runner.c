#include "runner/runner.h"

#include "sdw-build.h"

#include <cblas.h>
#include <json-c/json.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "base/clock.h"
#include "base/meminfo.h"
#include "contract/contract.h"
#include "image/image.h"
#include "pipeline/pipeline.h"
#include "pipeline/pixels.h"
#include "runner/loras.h"

typedef struct engine {
    const sdw_config *cfg;
    sdw_ring *ring;
    sdw_backend *be;
    sdw_backend *be32;      /* CUDA: float32 on the same device, for force_upcast VAEs */
    sdw_pipeline *pipes[SDW_CONFIG_MAX_MODELS];
    int npipes;
    sdw_loras *loras;
    volatile sig_atomic_t *stop;
    int64_t stop_seen_ms;   /* when a step first saw the stop request */
} engine;

/* What one running job needs in the step callback. */
typedef struct job {
    engine *eng;
    const char *id;
    int preview_interval;
    int64_t started_ms;
    bool stopped;           /* given up because the stop grace would not cover it */
    double step_mark_s;     /* sdw_now_s at the last step, or at the start for the first */
} job;

/* One discarded generation of side x side pixels, 3 euler steps (the
 * second is recorded as a CUDA graph, the third replays it): what a first
 * request would otherwise pay for, and a device too small for that size
 * fails here, before ready. Euler, not the model's own scheduler, so that a
 * model whose scheduler is unsupported still starts (its requests name a
 * sampler). */
static int warm_up(engine *g, const sdw_config_model *m, sdw_pipeline *p, int side, sdw_error *e)
{
    if (sdw_pipeline_unet_channels(p) != 4)
        return SDW_OK; /* an inpainting model needs an image and a mask: its first request warms it */
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, SDW_GEN_TXT2IMG);
    gp.prompt = "";
    gp.steps = 3;
    gp.sampler = "euler";
    gp.width = gp.height = side / sdw_pipeline_scale(p) * sdw_pipeline_scale(p);
    gp.seed = 0;
    sdw_image out = {0};
    sdw_gen_timings t = {0};
    int rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, &t, e);
    sdw_image_free(&out);
    if (rc)
        return sdw_fail_wrap(e, "model %s: warm-up at %dx%d", m->name, gp.width, gp.height);
    sdw_log(SDW_LOG_INFO, "model %s warmed up at %dx%d in %.2f s%s%s", m->name, gp.width, gp.height, t.total_s,
            t.graph_note[0] ? "; steps run op by op: " : "", t.graph_note);
    return SDW_OK;
}

/* Kept free of the estimate for what it leaves out: the text encoder's
 * activations, the host's copies of latents and pixels, the PNG and its
 * base64, allocator slack (doc/architecture.md, "Memory estimate"). */
#define SDW_MEM_RESERVE ((size_t)256 << 20)

/* The memory the weights of a model just loaded hold: the device's
 * reserved bytes where the backend allocates its own, else this process's
 * anonymous resident memory (the model files are mapped, not copied). */
static size_t held_now(sdw_backend *be)
{
    size_t peak, dev = sdw_backend_memory(be, &peak);
    return dev ? dev : sdw_meminfo_rss_anon();
}

/* With every model loaded: what each generation may take, and so the
 * largest width * height each model can run here. */
static void estimate_memory(engine *g, sdw_ring_model *table, const size_t *held)
{
    sdw_backend_trim(g->be);
    size_t avail = sdw_backend_available(g->be);
    size_t room = avail > SDW_MEM_RESERVE ? avail - SDW_MEM_RESERVE : 0;
    for (int i = 0; i < g->npipes; i++) {
        sdw_pipeline_mem pm;
        sdw_pipeline_memory(g->pipes[i], &pm);
        size_t per_pixel = pm.unet_per_pixel > pm.vae_per_pixel ? pm.unet_per_pixel : pm.vae_per_pixel;
        sdw_ring_model *t = &table[i];
        t->weights_bytes = held[i];
        t->bytes_per_pixel = per_pixel;
        t->max_pixels = per_pixel ? room / per_pixel : 0;
        int side = 8;
        while ((uint64_t)(side + 8) * (uint64_t)(side + 8) <= t->max_pixels)
            side += 8;
        sdw_log(SDW_LOG_INFO,
                "model %s: weights %zu MiB as held; a generation takes about %zu bytes per pixel (UNet step %zu, VAE "
                "decode %zu) + %zu MiB; %zu MiB %s available: up to %llu pixels (%dx%d)",
                g->cfg->models[i].name, held[i] >> 20, per_pixel, pm.unet_per_pixel, pm.vae_per_pixel,
                SDW_MEM_RESERVE >> 20, avail >> 20,
                g->cfg->device.kind == SDW_DEVICE_CUDA ? "device memory" : "host memory",
                (unsigned long long)t->max_pixels, side, side);
    }
}

_Static_assert(SDW_CONFIG_MAX_MODELS <= SDW_RING_MAX_MODELS && SDW_CONFIG_NAME_MAX <= sizeof(((sdw_ring_model *)0)->name),
               "the job ring's model table must hold every configured model");

_Static_assert(SDW_CONFIG_MAX_LORAS <= SDW_RING_MAX_LORAS && SDW_CONFIG_NAME_MAX <= sizeof(((sdw_ring_lora *)0)->name),
               "the job ring's LoRA table must hold every configured LoRA");

/* Every configured LoRA against every model, published for the pool to
 * refuse a misfit at submission. A file that does not load is a reason
 * in the table, not an engine failure. */
static int check_loras(engine *g, sdw_error *e)
{
    int rc = sdw_loras_open(&g->loras, g->cfg, e);
    if (rc)
        return rc;
    int n = sdw_loras_count(g->loras);
    sdw_ring_lora *table = calloc((size_t)(n ? n : 1), sizeof *table);
    if (!table)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        const char *name = sdw_loras_name(g->loras, i);
        const sdw_lora *l;
        sdw_error le;
        snprintf(table[i].name, sizeof table[i].name, "%s", name);
        int bad = sdw_loras_get(g->loras, &name, 1, &l, &le);
        if (bad)
            sdw_log(SDW_LOG_WARN, "%s", le.msg);
        int fits = 0;
        for (int m = 0; m < g->npipes; m++) {
            char *why = table[i].why[m];
            if (bad || sdw_pipeline_lora_check(g->pipes[m], l, &le))
                snprintf(why, SDW_RING_LORA_WHY, "%.*s", SDW_RING_LORA_WHY - 1, le.msg);
            fits += !why[0];
        }
        sdw_log(SDW_LOG_INFO, "LoRA %s: fits %d of %d models", name, fits, g->npipes);
    }
    rc = sdw_ring_set_loras(g->ring, table, n, e);
    free(table);
    return rc;
}

static int load_models(engine *g, sdw_error *e)
{
    int rc = sdw_ring_set_engine(g->ring, SDW_ENGINE_LOADING, getpid(), "model loading", e);
    int side = g->cfg->engine_warmup < 0 ? (g->cfg->device.kind == SDW_DEVICE_CUDA ? 512 : 0) : g->cfg->engine_warmup;
    sdw_ring_model table[SDW_RING_MAX_MODELS] = {0};
    size_t held[SDW_CONFIG_MAX_MODELS] = {0};
    for (int i = 0; !rc && i < g->cfg->n_models; i++) {
        const sdw_config_model *m = &g->cfg->models[i];
        sdw_log(SDW_LOG_INFO, "loading model %s from %s", m->name, m->path);
        sdw_pipeline_options opts = {.prediction = m->prediction, .fp32 = g->be32};
        size_t before = held_now(g->be);
        rc = sdw_pipeline_load(&g->pipes[i], g->be, m->path, &opts, e);
        if (rc)
            return sdw_fail_wrap(e, "model %s", m->name);
        size_t after = held_now(g->be);
        held[i] = after > before ? after - before : 0;
        g->npipes = i + 1;
        sdw_pipeline_info pi;
        sdw_pipeline_describe(g->pipes[i], &pi);
        sdw_ring_model *t = &table[i];
        snprintf(t->name, sizeof t->name, "%s", m->name);
        snprintf(t->family, sizeof t->family, "%s", pi.family);
        snprintf(t->prediction, sizeof t->prediction, "%s", pi.prediction);
        t->inpaint = pi.inpaint;
        t->width = pi.width;
        t->height = pi.height;
        const char *own = sdw_pipeline_sampler(g->pipes[i], NULL);
        snprintf(t->own_sampler, sizeof t->own_sampler, "%s", own ? own : "");
        t->lcm_max_steps = sdw_pipeline_max_steps(g->pipes[i], "lcm");
        sdw_log(SDW_LOG_INFO, "model %s: %s%s, %s, %dx%d%s", m->name, pi.family, pi.inpaint ? " inpainting" : "",
                pi.prediction, pi.width, pi.height, pi.vae_fp32 ? ", VAE in float32 (force_upcast)" : "");
        if (side > 0 && (rc = warm_up(g, m, g->pipes[i], side, e)))
            return rc;
    }
    if (!rc)
        estimate_memory(g, table, held);
    if (!rc)
        rc = check_loras(g, e);
    if (!rc)
        rc = sdw_ring_set_models(g->ring, table, g->cfg->n_models, e);
    return rc ? rc : sdw_ring_set_engine(g->ring, SDW_ENGINE_READY, getpid(), "", e);
}

static sdw_pipeline *find_pipeline(const engine *g, const char *name)
{
    const sdw_config_model *m = sdw_config_model_find(g->cfg, name);
    return m ? g->pipes[m - g->cfg->models] : NULL;
}

static double percent(int step, int total)
{
    return total ? 100.0 * step / total : 100.0;
}

/* A PNG as base64 inside a JSON event: {"type":..., fields..., "image":...}. */
static char *png_event(const sdw_image *img, const char *const *text, size_t ntext, json_object *o, sdw_error *e)
{
    uint8_t *png = NULL;
    size_t len = 0;
    if (sdw_png_encode(img, text, ntext, &png, &len, e))
        return NULL;
    char *b64 = sdw_base64_encode(png, len);
    free(png);
    if (!b64) {
        sdw_fail(e, SDW_ENOMEM, "out of memory encoding an image");
        return NULL;
    }
    json_object_object_add(o, "image", json_object_new_string(b64));
    json_object_object_add(o, "format", json_object_new_string("png"));
    free(b64);
    char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    if (!s)
        sdw_fail(e, SDW_ENOMEM, "out of memory");
    return s;
}

static json_object *step_object(const char *type, int step, int total)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string(type));
    json_object_object_add(o, "step", json_object_new_int(step));
    json_object_object_add(o, "total", json_object_new_int(total));
    json_object_object_add(o, "percent", json_object_new_double(percent(step, total)));
    return o;
}

/* On a stop the running job goes on while the steps left (and about one
 * more for the decode), at its pace so far, fit what is left of
 * engine.stop_timeout_s; otherwise it ends now, with an error event that
 * says so, rather than be killed without one when the grace runs out. */
static bool fits_stop_grace(job *j, int step, int total)
{
    engine *g = j->eng;
    int64_t now = sdw_ring_now_ms();
    if (!g->stop_seen_ms)
        g->stop_seen_ms = now;
    int64_t left = g->stop_seen_ms + (int64_t)g->cfg->engine_stop_timeout_s * 1000 - now;
    int64_t per_step = (now - j->started_ms) / (step > 0 ? step : 1);
    return per_step * (total - step + 1) <= left;
}

/* Between steps: progress, a preview every preview_interval steps, a
 * heartbeat, the stop and the cancel check. */
static int on_step(void *ctx, sdw_pipeline *p, int step, int total)
{
    job *j = ctx;
    sdw_ring *r = j->eng->ring;
    sdw_error e;
    /* From callback to callback: a step's share of publishing its events
     * is in it, and the first one holds the text encoding too. */
    double now = sdw_now_s();
    sdw_ring_observe_step(r, now - j->step_mark_s);
    j->step_mark_s = now;
    json_object *o = step_object("progress", step, total);
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    if (sdw_ring_append(r, j->id, "progress", s, strlen(s), &e))
        sdw_log(SDW_LOG_WARN, "%s: progress event: %s", j->id, e.msg);
    json_object_put(o);
    if (j->preview_interval > 0 && step % j->preview_interval == 0 && step < total) {
        sdw_image img;
        if (sdw_pipeline_preview(p, &img, &e) == 0) {
            o = step_object("preview", step, total);
            char *ev = png_event(&img, NULL, 0, o, &e);
            if (!ev || sdw_ring_preview(r, j->id, ev, strlen(ev), &e))
                sdw_log(SDW_LOG_WARN, "%s: preview event: %s", j->id, e.msg);
            free(ev);
            json_object_put(o);
            sdw_image_free(&img);
        }
    }
    sdw_ring_heartbeat(r, &e);
    if (*j->eng->stop && !fits_stop_grace(j, step, total))
        j->stopped = true;
    return j->stopped || sdw_ring_cancel_requested(r, j->id, &e) == 1;
}

/* An input image off the VAE's grid is resized down to it, as diffusers'
 * image processor does; the mask, the image's size, lands on the same. */
static int fit_grid(sdw_image *img, int scale, sdw_error *e)
{
    int w = img->width / scale * scale, h = img->height / scale * scale;
    if (w == img->width && h == img->height)
        return SDW_OK;
    if (w == 0 || h == 0)
        return sdw_fail(e, SDW_EINVAL, "image %dx%d is smaller than %dx%d", img->width, img->height, scale, scale);
    sdw_image sized;
    int rc = sdw_image_resize(img, w, h, &sized, e);
    if (!rc) {
        sdw_image_free(img);
        *img = sized;
    }
    return rc;
}

static const char *error_code(int rc)
{
    switch (rc) {
    case SDW_EINVAL: return "invalid_request";
    case SDW_EFORMAT:
    case SDW_EUNSUPPORTED: return "invalid_image";
    case SDW_ENOMEM: return "out_of_memory";
    case SDW_EDEVICE: return "device_error";
    default: return "generation_failed";
    }
}

static int complete_event(engine *g, const char *id, const sdw_job_request *req, const sdw_gen_params *gp,
                          const sdw_image *img, const sdw_gen_timings *t, sdw_pipeline *p, sdw_error *e)
{
    char *params = sdw_gen_params_text(gp, img->width, img->height, sdw_pipeline_sampler(p, gp->sampler), req->model);
    const char *text[] = {"parameters", params ? params : "", "Software", "sdworker " PACKAGE_VERSION};
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("complete"));
    json_object_object_add(o, "seed", json_object_new_uint64(gp->seed));
    json_object_object_add(o, "width", json_object_new_int(img->width));
    json_object_object_add(o, "height", json_object_new_int(img->height));
    json_object *tm = json_object_new_object();
    if (gp->nloras)
        json_object_object_add(tm, "lora_s", json_object_new_double(t->lora_s));
    json_object_object_add(tm, "text_encode_s", json_object_new_double(t->encode_s));
    json_object_object_add(tm, "prepare_s", json_object_new_double(t->prepare_s));
    json_object_object_add(tm, "denoise_s", json_object_new_double(t->denoise_s));
    json_object_object_add(tm, "s_per_step", json_object_new_double(t->unet_calls ? t->denoise_s / t->unet_calls : 0));
    json_object_object_add(tm, "vae_decode_s", json_object_new_double(t->decode_s));
    json_object_object_add(tm, "total_s", json_object_new_double(t->total_s));
    json_object_object_add(o, "timings", tm);
    char *ev = png_event(img, text, 2, o, e);
    json_object_put(o);
    free(params);
    if (!ev)
        return e->code;
    int rc = sdw_ring_complete(g->ring, id, ev, strlen(ev), e);
    free(ev);
    return rc;
}

static void run_job(engine *g, const char *id, const unsigned char *input, size_t len)
{
    sdw_job_request req;
    sdw_api_error ae;
    sdw_error e = {0};
    if (sdw_job_request_deserialize(input, len, &req, &ae)) {
        sdw_ring_fail(g->ring, id, ae.code, ae.message, &e);
        return;
    }
    sdw_pipeline *p = find_pipeline(g, req.model);
    if (!p) {
        sdw_ring_fail(g->ring, id, "unknown_model", "the model is not served here", &e);
        sdw_job_request_free(&req);
        return;
    }
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, req.op == SDW_OPERATION_TRANSFORM ? SDW_GEN_IMG2IMG
                             : req.op == SDW_OPERATION_INPAINT  ? SDW_GEN_INPAINT
                                                               : SDW_GEN_TXT2IMG);
    gp.prompt = req.prompt;
    gp.negative_prompt = req.negative_prompt_given ? req.negative_prompt : NULL;
    gp.steps = req.steps;
    gp.guidance = (float)req.guidance_scale;
    gp.width = req.width, gp.height = req.height;
    gp.seed = req.seed;
    gp.sampler = sdw_sampler_name(req.sampler);
    gp.eta = (float)req.eta;
    gp.clip_skip = req.clip_skip;
    gp.strength = req.strength;
    /* The pool checked these against the engine's table; a file changed
     * on disk since is read and checked again here, and its failure is this
     * job's. */
    const char *lnames[SDW_JOB_MAX_LORAS];
    const sdw_lora *lfiles[SDW_JOB_MAX_LORAS];
    sdw_lora_use luse[SDW_JOB_MAX_LORAS];
    int lrc = SDW_OK;
    if (req.nloras > g->cfg->max_loras)
        lrc = sdw_fail(&e, SDW_EINVAL, "%d LoRAs, at most %d (limits.max_loras)", req.nloras, g->cfg->max_loras);
    for (int i = 0; !lrc && i < req.nloras; i++)
        lnames[i] = req.loras[i].name;
    if (!lrc && req.nloras)
        lrc = sdw_loras_get(g->loras, lnames, req.nloras, lfiles, &e);
    for (int i = 0; !lrc && i < req.nloras; i++) {
        luse[i] = (sdw_lora_use){.lora = lfiles[i], .name = lnames[i], .weight = (float)req.loras[i].weight};
        if ((lrc = sdw_pipeline_lora_check(p, lfiles[i], &e)))
            sdw_fail_wrap(&e, "LoRA %s", lnames[i]);
    }
    if (lrc) {
        sdw_log(SDW_LOG_WARN, "%s: refused: %s", id, e.msg);
        sdw_error fe;
        sdw_ring_fail(g->ring, id, lrc == SDW_ENOTFOUND ? "unknown_lora" : "lora_failed", e.msg, &fe);
        sdw_job_request_free(&req);
        return;
    }
    gp.loras = luse;
    gp.nloras = req.nloras;
    gp.original_width = req.original_width, gp.original_height = req.original_height;
    gp.crop_top = req.crop_top, gp.crop_left = req.crop_left;
    gp.target_width = req.target_width, gp.target_height = req.target_height;
    sdw_image init, mask, out = {0};
    /* The pool checked the images already; this is the same check again,
     * for a ring written by something else or a configuration changed
     * in between. */
    if (sdw_job_request_decode_images(&req, g->cfg->max_pixels, &init, &mask, &ae)) {
        sdw_log(SDW_LOG_WARN, "%s: refused: %s", id, ae.message);
        sdw_ring_fail(g->ring, id, ae.code, ae.message, &e);
        sdw_job_request_free(&req);
        return;
    }
    int scale = sdw_pipeline_scale(p), rc = SDW_OK;
    if (gp.kind != SDW_GEN_TXT2IMG) {
        rc = fit_grid(&init, scale, &e);
        if (rc)
            sdw_fail_wrap(&e, "init_image");
        gp.init_image = &init;
    }
    if (!rc && gp.kind == SDW_GEN_INPAINT) {
        rc = fit_grid(&mask, scale, &e);
        if (rc)
            sdw_fail_wrap(&e, "mask_image");
        gp.mask = &mask;
    }
    job j = {g, id, g->cfg->preview_interval, sdw_ring_now_ms(), false, 0};
    sdw_gen_timings t;
    if (!rc) {
        sdw_log(SDW_LOG_INFO, "%s: %s, %d steps, seed %llu", id, sdw_operation_name(req.op), gp.steps,
                (unsigned long long)gp.seed);
        j.step_mark_s = sdw_now_s();
        rc = sdw_pipeline_generate(p, &gp, on_step, &j, &out, NULL, &t, &e);
    }
    if (!rc)
        rc = complete_event(g, id, &req, &gp, &out, &t, p, &e);
    if (rc == SDW_ECANCELLED && j.stopped) {
        sdw_ring_fail(g->ring, id, "engine_stopped",
                      "the service was stopped while this job was running; submit it again", &e);
        sdw_log(SDW_LOG_WARN, "%s: stopped: it could not finish within engine.stop_timeout_s", id);
    } else if (rc == SDW_ECANCELLED) {
        sdw_ring_finish_cancelled(g->ring, id, &e);
        sdw_log(SDW_LOG_INFO, "%s: cancelled", id);
    } else if (rc) {
        sdw_log(SDW_LOG_WARN, "%s: failed: %s", id, e.msg);
        sdw_error fe;
        sdw_ring_fail(g->ring, id, error_code(rc), e.msg, &fe);
    } else {
        sdw_log(SDW_LOG_INFO, "%s: done in %.2f s (%.3f s/step)", id, t.total_s,
                t.unet_calls ? t.denoise_s / t.unet_calls : 0);
    }
    sdw_image_free(&init), sdw_image_free(&mask), sdw_image_free(&out);
    sdw_job_request_free(&req);
}

int sdw_runner_run(const sdw_config *cfg, sdw_ring *ring, volatile sig_atomic_t *stop, sdw_error *e)
{
    engine g = {.cfg = cfg, .ring = ring, .stop = stop};
    if (cfg->threads > 0) {
        omp_set_num_threads(cfg->threads);
        openblas_set_num_threads(cfg->threads);
    }
    int rc = sdw_backend_open(&g.be, cfg->device, SDW_PREC_FP16, e);
    /* fp16 storage overflows in most VAEs (force_upcast): they get a
     * float32 backend on the same device. The CPU computes in float32. */
    if (!rc && g.be->fp16)
        rc = sdw_backend_open(&g.be32, cfg->device, SDW_PREC_FP32, e);
    if (!rc)
        rc = load_models(&g, e);
    while (!rc && !*stop) {
        sdw_job_id id;
        void *input = NULL;
        size_t len = 0;
        /* a bounded wait, so a stop request is seen within a second */
        int got = sdw_ring_take(ring, 1000, id, &input, &len, e);
        if (got < 0) {
            rc = got;
            break;
        }
        sdw_ring_heartbeat(ring, e);
        if (got == 1)
            run_job(&g, id, input, len);
        free(input);
    }
    for (int i = 0; i < g.npipes; i++)
        sdw_pipeline_free(g.pipes[i]);
    sdw_loras_free(g.loras);
    sdw_backend_destroy(g.be32);
    sdw_backend_destroy(g.be);
    return rc;
}
