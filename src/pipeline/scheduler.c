/* Schedulers matching diffusers 0.42 (see scheduler.h).
 *
 * Precision notes, each from how diffusers/torch/numpy compute the value:
 * - betas: torch.linspace in float32, which evaluates start + step*i (first
 *   half) or end - step*(steps-1-i) (second half) with a fused multiply-add;
 *   scaled_linear squares the float32 result.
 * - alphas_cumprod: torch.cumprod on CPU accumulates in double and stores
 *   float32 after every factor.
 * - the sigma table sqrt((1-acp)/acp) is float32 torch; np.interp on it runs
 *   in double, cast back to float32. torch's float32 sqrt (MKL's) is not
 *   correctly rounded: sqrtf differs from it by 1 ulp on about 0.6% of
 *   inputs, which tests/test_sched.c allows for.
 * - spacing grids are float64 numpy (arange/linspace), rounded half to even.
 * - per-step scalars are 0-dim float32 tensors in diffusers, so they are
 *   float here, combined in the same order. */
#include "pipeline/scheduler.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum spacing { SP_LEADING, SP_TRAILING, SP_LINSPACE };

struct sdw_sched {
    sdw_sampler kind;
    float eta;
    int v_pred;
    int clip_sample;
    float clip_range;
    int T; /* num_train_timesteps */
    enum spacing spacing;
    int steps_offset;
    int lower_order_final, euler_at_final, final_sigma_min, solver_order;
    int original_steps;      /* LCM: the distillation schedule's length */
    float timestep_scaling;  /* LCM: of the boundary-condition scalings */
    float *acp;     /* alphas_cumprod [T] */
    float *sigtab;  /* sqrt((1-acp)/acp) [T] */
    float final_acp;

    int steps;      /* num_inference_steps as requested */
    int nfull;      /* length of the full timestep list */
    float *ts;      /* full timestep list [nfull] */
    float *sigmas;  /* [nfull + 1], Euler/DPM only */
    int begin;      /* first position used (img2img) */
    int idx;        /* absolute index of the next step */
    float init_sigma;

    size_t n;          /* element count of the run, 0 until the first step */
    float *hist[4];    /* PLMS model outputs, newest last; DPM keeps its last x0 in hist[0] */
    int nhist;
    float *cur_sample; /* PLMS sample held across the repeated timestep */
    int counter;       /* PLMS steps taken */
    int lower_order_nums;
    float *work;
};

/* ---- config ---- */

static json_object *cfg_get(const json_object *cfg, const char *key)
{
    json_object *v = NULL;
    if (!cfg || !json_object_object_get_ex(cfg, key, &v))
        return NULL;
    return v;
}

static int cfg_bool(const json_object *cfg, const char *key, int def)
{
    json_object *v = cfg_get(cfg, key);
    if (!v)
        return def;
    return json_object_get_boolean(v);
}

static const char *cfg_str(const json_object *cfg, const char *key, const char *def)
{
    json_object *v = cfg_get(cfg, key);
    if (!v || json_object_get_type(v) != json_type_string)
        return v ? NULL : def;
    return json_object_get_string(v);
}

static int cfg_num(const json_object *cfg, const char *key, double def, double *out, sdw_error *e)
{
    json_object *v = cfg_get(cfg, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (json_object_get_type(v) != json_type_double && json_object_get_type(v) != json_type_int)
        return sdw_fail(e, SDW_EFORMAT, "scheduler config: %s is not a number", key);
    *out = json_object_get_double(v);
    return 0;
}

static int class_sampler(const json_object *cfg, sdw_sampler *out, sdw_error *e)
{
    const char *cls = cfg ? cfg_str(cfg, "_class_name", NULL) : "PNDMScheduler";
    if (!cls)
        return sdw_fail(e, SDW_EFORMAT, "scheduler config has no _class_name; name a sampler (%s)",
                        sdw_sampler_names);
    if (!strcmp(cls, "PNDMScheduler"))
        *out = SDW_SAMPLER_PNDM;
    else if (!strcmp(cls, "EulerDiscreteScheduler"))
        *out = SDW_SAMPLER_EULER;
    else if (!strcmp(cls, "EulerAncestralDiscreteScheduler"))
        *out = SDW_SAMPLER_EULER_A;
    else if (!strcmp(cls, "DDIMScheduler"))
        *out = SDW_SAMPLER_DDIM;
    else if (!strcmp(cls, "DPMSolverMultistepScheduler"))
        *out = cfg_bool(cfg, "use_karras_sigmas", 0) ? SDW_SAMPLER_DPMPP_2M_KARRAS : SDW_SAMPLER_DPMPP_2M;
    else if (!strcmp(cls, "LCMScheduler"))
        *out = SDW_SAMPLER_LCM;
    else
        return sdw_fail(e, SDW_EUNSUPPORTED,
                        "the model's scheduler %s is not supported; name a sampler (%s)", cls,
                        sdw_sampler_names);
    return 0;
}

static int is_dpm(sdw_sampler k) { return k == SDW_SAMPLER_DPMPP_2M || k == SDW_SAMPLER_DPMPP_2M_KARRAS; }
static int is_euler(sdw_sampler k) { return k == SDW_SAMPLER_EULER || k == SDW_SAMPLER_EULER_A; }

/* Settings diffusers accepts that this module does not implement. */
static int check_unsupported(const json_object *cfg, sdw_sampler k, sdw_error *e)
{
    static const char *const flags[] = {"thresholding", "use_exponential_sigmas", "use_beta_sigmas",
                                        "use_lu_lambdas", "use_flow_sigmas"};
    /* LCMScheduler.from_config drops the sigma options: it has none. */
    size_t nflags = k == SDW_SAMPLER_LCM ? 1 : sizeof flags / sizeof *flags;
    for (size_t i = 0; i < nflags; i++)
        if (cfg_bool(cfg, flags[i], 0))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: %s is not supported", flags[i]);
    /* diffusers' PNDMScheduler has no such option and drops the key without a
     * word, running a zero-SNR model on the schedule it was not trained for. */
    if (k == SDW_SAMPLER_PNDM && cfg_bool(cfg, "rescale_betas_zero_snr", 0))
        return sdw_fail(e, SDW_EUNSUPPORTED,
                        "scheduler config: rescale_betas_zero_snr does not exist for pndm (diffusers' PNDMScheduler "
                        "ignores it); use euler, euler_a, ddim, dpmpp_2m or dpmpp_2m_karras");
    if (k == SDW_SAMPLER_EULER && cfg_bool(cfg, "use_karras_sigmas", 0))
        return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: use_karras_sigmas with euler is not supported");
    if (k == SDW_SAMPLER_EULER) {
        const char *it = cfg_str(cfg, "interpolation_type", "linear");
        const char *tt = cfg_str(cfg, "timestep_type", "discrete");
        if (!it || strcmp(it, "linear"))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: interpolation_type %s is not supported",
                            it ? it : "(non-string)");
        if (!tt || strcmp(tt, "discrete"))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: timestep_type %s is not supported",
                            tt ? tt : "(non-string)");
    }
    if (is_dpm(k)) {
        const char *alg = cfg_str(cfg, "algorithm_type", "dpmsolver++");
        const char *st = cfg_str(cfg, "solver_type", "midpoint");
        const char *vt = cfg_str(cfg, "variance_type", NULL);
        json_object *lmc = cfg_get(cfg, "lambda_min_clipped");
        /* diffusers maps deis to dpmsolver++ and logrho/bh1/bh2 to midpoint. */
        if (!alg || (strcmp(alg, "dpmsolver++") && strcmp(alg, "deis")))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: algorithm_type %s is not supported",
                            alg ? alg : "(non-string)");
        if (!st || (strcmp(st, "midpoint") && strcmp(st, "logrho") && strcmp(st, "bh1") && strcmp(st, "bh2")))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: solver_type %s is not supported",
                            st ? st : "(non-string)");
        if (vt)
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: variance_type %s is not supported", vt);
        if (lmc && json_object_get_type(lmc) != json_type_null && !isinf(json_object_get_double(lmc)))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: lambda_min_clipped is not supported");
    }
    if (is_dpm(k) || k == SDW_SAMPLER_EULER) {
        const char *fs = cfg_str(cfg, "final_sigmas_type", "zero");
        if (!fs || (strcmp(fs, "zero") && strcmp(fs, "sigma_min")))
            return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: final_sigmas_type %s is not supported",
                            fs ? fs : "(non-string)");
    }
    return 0;
}

/* torch.linspace(start, end, steps, dtype=float32) on the CPU. */
static void torch_linspace_f32(float *out, double start_d, double end_d, int steps)
{
    float start = (float)start_d, end = (float)end_d;
    if (steps == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - 1 - i), end);
}

/* rescale_zero_terminal_snr (Lin et al., arXiv 2305.08891, algorithm 1), in
 * diffusers' float32 operations: sqrt(alphas_cumprod) is shifted so that its
 * last entry is 0 and scaled so that its first is unchanged, then turned
 * back into betas. */
static void rescale_zero_snr(float *betas, int T)
{
    double cum = 1.0;
    for (int i = 0; i < T; i++) {
        float alpha = 1.0f - betas[i];
        cum *= (double)alpha;
        betas[i] = sqrtf((float)cum);
    }
    float s0 = betas[0], sT = betas[T - 1];
    float scale = s0 / (s0 - sT);
    float prev = 0;
    for (int i = 0; i < T; i++) {
        float r = betas[i] - sT;
        r = r * scale;
        float acp = r * r;
        float alpha = i ? acp / prev : acp;
        prev = acp;
        betas[i] = 1.0f - alpha;
    }
}

static int build_tables(sdw_sched *s, const json_object *cfg, sdw_error *e)
{
    double bs, be, T;
    int rc, lcm = s->kind == SDW_SAMPLER_LCM;
    /* LCMScheduler's defaults are SD's betas; the other classes' are DDPM's. */
    if ((rc = cfg_num(cfg, "beta_start", lcm ? 0.00085 : 0.0001, &bs, e)) ||
        (rc = cfg_num(cfg, "beta_end", lcm ? 0.012 : 0.02, &be, e)) ||
        (rc = cfg_num(cfg, "num_train_timesteps", 1000, &T, e)))
        return rc;
    if (T < 2 || T > 100000 || T != floor(T))
        return sdw_fail(e, SDW_EFORMAT, "scheduler config: num_train_timesteps %g out of range", T);
    s->T = (int)T;
    json_object *tb = cfg_get(cfg, "trained_betas");
    if (tb && json_object_get_type(tb) != json_type_null)
        return sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: trained_betas is not supported");
    const char *sched = cfg_str(cfg, "beta_schedule", lcm ? "scaled_linear" : "linear");
    int scaled;
    if (sched && !strcmp(sched, "linear"))
        scaled = 0;
    else if (sched && !strcmp(sched, "scaled_linear"))
        scaled = 1;
    else
        return sdw_fail(e, SDW_EUNSUPPORTED,
                        "scheduler config: beta_schedule %s is not supported (linear, scaled_linear)",
                        sched ? sched : "(non-string)");

    s->acp = malloc(sizeof(float) * s->T);
    s->sigtab = malloc(sizeof(float) * s->T);
    if (!s->acp || !s->sigtab)
        return sdw_fail(e, SDW_ENOMEM, "scheduler tables");
    float *betas = s->sigtab; /* reused as scratch before the sigma table is filled */
    if (scaled) {
        torch_linspace_f32(betas, sqrt(bs), sqrt(be), s->T);
        for (int i = 0; i < s->T; i++)
            betas[i] = betas[i] * betas[i];
    } else {
        torch_linspace_f32(betas, bs, be, s->T);
    }
    int zero_snr = cfg_bool(cfg, "rescale_betas_zero_snr", 0);
    if (zero_snr)
        rescale_zero_snr(betas, s->T);
    double cum = 1.0;
    for (int i = 0; i < s->T; i++) {
        float alpha = 1.0f - betas[i];
        cum *= (double)alpha;
        s->acp[i] = (float)cum;
    }
    /* The sigma-based samplers would start from sigma = inf at the last
     * timestep: diffusers sets its alphas_cumprod to 2^-24 (sigma about
     * 4096) instead. DDIM keeps 0, which only v-prediction can step from. */
    if (zero_snr && (is_euler(s->kind) || is_dpm(s->kind)))
        s->acp[s->T - 1] = 0x1p-24f;
    for (int i = 0; i < s->T; i++)
        s->sigtab[i] = sqrtf((1.0f - s->acp[i]) / s->acp[i]);
    return 0;
}

int sdw_sched_create(sdw_sched **out, const json_object *config, const char *sampler, float eta,
                     sdw_error *e)
{
    *out = NULL;
    sdw_sampler k = SDW_SAMPLER_PNDM;
    int rc;
    json_object *own = NULL;
    if (sampler && *sampler) {
        int named = sdw_sampler_parse(sampler);
        if (named < 0)
            return sdw_fail(e, SDW_EINVAL, "unknown sampler \"%s\" (valid: %s)", sampler, sdw_sampler_names);
        k = (sdw_sampler)named;
    } else if ((rc = class_sampler(config, &k, e))) {
        return rc;
    }
    if (!config) {
        /* Stable Diffusion 1.x's scheduler_config.json, which LDM checkpoints imply. */
        own = json_tokener_parse("{\"_class_name\":\"PNDMScheduler\",\"beta_end\":0.012,"
                                 "\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,"
                                 "\"clip_sample\":false,\"num_train_timesteps\":1000,"
                                 "\"prediction_type\":\"epsilon\",\"set_alpha_to_one\":false,"
                                 "\"skip_prk_steps\":true,\"steps_offset\":1,\"timestep_spacing\":\"leading\"}");
        if (!own)
            return sdw_fail(e, SDW_ENOMEM, "scheduler default config");
        config = own;
    } else if (!json_object_is_type(config, json_type_object)) {
        return sdw_fail(e, SDW_EFORMAT, "scheduler config is not a JSON object");
    }

    sdw_sched *s = calloc(1, sizeof *s);
    if (!s) {
        json_object_put(own);
        return sdw_fail(e, SDW_ENOMEM, "scheduler");
    }
    s->kind = k;
    s->eta = k == SDW_SAMPLER_DDIM ? eta : 0.0f;
    if (!(eta >= 0.0f && eta <= 1.0f) && k == SDW_SAMPLER_DDIM) {
        rc = sdw_fail(e, SDW_EINVAL, "ddim eta %g out of range [0, 1]", eta);
        goto fail;
    }
    if ((rc = check_unsupported(config, k, e)) || (rc = build_tables(s, config, e)))
        goto fail;

    /* Class defaults for keys the config lacks, as from_config applies them.
     * LCM keeps timestep_spacing and steps_offset but never reads them. */
    const char *sp = cfg_str(config, "timestep_spacing",
                             k == SDW_SAMPLER_DDIM || k == SDW_SAMPLER_PNDM ? "leading" : "linspace");
    if (k == SDW_SAMPLER_LCM)
        s->spacing = SP_LEADING;
    else if (sp && !strcmp(sp, "leading"))
        s->spacing = SP_LEADING;
    else if (sp && !strcmp(sp, "trailing"))
        s->spacing = SP_TRAILING;
    else if (sp && !strcmp(sp, "linspace"))
        s->spacing = SP_LINSPACE;
    else {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: timestep_spacing %s is not supported",
                      sp ? sp : "(non-string)");
        goto fail;
    }
    double off;
    if ((rc = cfg_num(config, "steps_offset", 0, &off, e)))
        goto fail;
    s->steps_offset = (int)off;
    const char *pred = cfg_str(config, "prediction_type", "epsilon");
    if (pred && !strcmp(pred, "epsilon"))
        s->v_pred = 0;
    else if (pred && !strcmp(pred, "v_prediction"))
        s->v_pred = 1;
    else {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: prediction_type %s is not supported",
                      pred ? pred : "(non-string)");
        goto fail;
    }
    if (k == SDW_SAMPLER_DDIM || k == SDW_SAMPLER_LCM) {
        double r;
        s->clip_sample = cfg_bool(config, "clip_sample", k == SDW_SAMPLER_DDIM);
        if ((rc = cfg_num(config, "clip_sample_range", 1.0, &r, e)))
            goto fail;
        s->clip_range = (float)r;
    }
    if (k == SDW_SAMPLER_PNDM && !cfg_bool(config, "skip_prk_steps", 0)) {
        rc = sdw_fail(e, SDW_EUNSUPPORTED, "PNDM without skip_prk_steps (Runge-Kutta warmup) is not supported");
        goto fail;
    }
    s->final_acp = cfg_bool(config, "set_alpha_to_one", k == SDW_SAMPLER_DDIM || k == SDW_SAMPLER_LCM) ? 1.0f
                                                                                                     : s->acp[0];
    if (k == SDW_SAMPLER_LCM) {
        double os, ts;
        if ((rc = cfg_num(config, "original_inference_steps", 50, &os, e)) ||
            (rc = cfg_num(config, "timestep_scaling", 10.0, &ts, e)))
            goto fail;
        if (!(os >= 1 && os <= s->T) || os != floor(os)) {
            rc = sdw_fail(e, SDW_EFORMAT, "scheduler config: original_inference_steps %g outside 1..%d", os, s->T);
            goto fail;
        }
        s->original_steps = (int)os;
        s->timestep_scaling = (float)ts;
    }
    s->lower_order_final = cfg_bool(config, "lower_order_final", 1);
    s->euler_at_final = cfg_bool(config, "euler_at_final", 0);
    const char *fs = cfg_str(config, "final_sigmas_type", "zero");
    s->final_sigma_min = fs && !strcmp(fs, "sigma_min");
    if (is_dpm(k)) {
        double so;
        if ((rc = cfg_num(config, "solver_order", 2, &so, e)))
            goto fail;
        if (so != 1 && so != 2) {
            rc = sdw_fail(e, SDW_EUNSUPPORTED, "scheduler config: solver_order %g is not supported (1, 2)", so);
            goto fail;
        }
        s->solver_order = (int)so;
    }
    json_object_put(own);
    *out = s;
    return 0;
fail:
    json_object_put(own);
    sdw_sched_free(s);
    return rc;
}

static void reset_state(sdw_sched *s)
{
    for (int i = 0; i < 4; i++) {
        free(s->hist[i]);
        s->hist[i] = NULL;
    }
    free(s->cur_sample);
    free(s->work);
    s->cur_sample = s->work = NULL;
    s->n = 0;
    s->nhist = 0;
    s->counter = 0;
    s->lower_order_nums = 0;
}

void sdw_sched_free(sdw_sched *s)
{
    if (!s)
        return;
    reset_state(s);
    free(s->acp);
    free(s->sigtab);
    free(s->ts);
    free(s->sigmas);
    free(s);
}

sdw_sampler sdw_sched_sampler(const sdw_sched *s) { return s->kind; }
const char *sdw_sched_sampler_name(const sdw_sched *s) { return sdw_sampler_name(s->kind); }

/* ---- timesteps ---- */

/* np.arange(start, 0, -T/N) for a float step: numpy fills start + i*delta with
 * delta = (start + step) - start, its length ceil(-start / step). */
static int np_arange_down(double *out, int cap, double start, double ratio)
{
    double len = ceil((0.0 - start) / -ratio);
    int n = (int)len;
    if (n > cap)
        n = cap;
    double delta = (start + -ratio) - start;
    for (int i = 0; i < n; i++)
        out[i] = i == 0 ? start : start + (double)i * delta;
    return n;
}

/* np.linspace(0, stop, num)[i] */
static double np_linspace(double stop, int num, int i)
{
    if (num == 1)
        return 0.0;
    if (i == num - 1)
        return stop;
    return (double)i * (stop / (double)(num - 1));
}

/* np.interp(t, arange(T), table) */
static float interp_sigma(const sdw_sched *s, float tf)
{
    double t = tf;
    if (t <= 0)
        return s->sigtab[0];
    if (t >= s->T - 1)
        return s->sigtab[s->T - 1];
    int j = (int)floor(t);
    if ((double)j == t)
        return s->sigtab[j];
    double slope = ((double)s->sigtab[j + 1] - (double)s->sigtab[j]) / 1.0;
    return (float)(slope * (t - (double)j) + (double)s->sigtab[j]);
}

/* DPMSolverMultistep's _sigma_to_t: interpolate t in log sigma (numpy's float32
 * log table against a float64 log of the query). */
static double sigma_to_t(const float *logtab, int T, double sigma)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int lo = 0;
    for (int j = 0; j < T; j++)
        if (ls - (double)logtab[j] >= 0)
            lo = j;
    if (lo > T - 2)
        lo = T - 2;
    double low = logtab[lo], high = logtab[lo + 1];
    double w = (low - ls) / (low - high);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * lo + w * (lo + 1);
}

static int dpm_karras(sdw_sched *s, int N, sdw_error *e)
{
    float *logtab = malloc(sizeof(float) * s->T);
    double *ks = malloc(sizeof(double) * N);
    if (!logtab || !ks) {
        free(logtab);
        free(ks);
        return sdw_fail(e, SDW_ENOMEM, "karras sigmas");
    }
    for (int j = 0; j < s->T; j++)
        logtab[j] = logf(s->sigtab[j]);
    double smin = s->sigtab[0], smax = s->sigtab[s->T - 1], rho = 7.0;
    double min_inv = pow(smin, 1.0 / rho), max_inv = pow(smax, 1.0 / rho);
    for (int i = 0; i < N; i++) {
        double ramp = np_linspace(1.0, N, i);
        ks[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
        s->ts[i] = (float)nearbyint(sigma_to_t(logtab, s->T, ks[i]));
        s->sigmas[i] = (float)ks[i];
    }
    free(logtab);
    free(ks);
    return 0;
}

/* The timesteps diffusers' set_timesteps gives N steps, descending, as
 * doubles in g (room for cap); returns how many. One function per family,
 * each spacing as that scheduler writes it. */
static int dpm_grid(const sdw_sched *s, int N, double *g, int cap)
{
    const double T = s->T;
    int n = 0;
    /* DPM divides the range into N + 1 and drops the last point. */
    if (s->spacing == SP_LINSPACE) {
        for (int k = N; k >= 1; k--)
            g[n++] = nearbyint(np_linspace(T - 1, N + 1, k));
    } else if (s->spacing == SP_LEADING) {
        int ratio = s->T / (N + 1);
        for (int k = N; k >= 1; k--)
            g[n++] = (double)k * ratio + s->steps_offset;
    } else {
        n = np_arange_down(g, cap, T, T / N);
        for (int i = 0; i < n; i++)
            g[i] = nearbyint(g[i]) - 1;
    }
    return n;
}

/* g has room for 2 * cap: the ascending list goes in its second half. */
static int pndm_grid(const sdw_sched *s, int N, double *g, int cap)
{
    const double T = s->T;
    int n = 0;
    double *asc = g + cap;
    if (s->spacing == SP_LINSPACE) {
        for (int k = 0; k < N; k++)
            asc[k] = nearbyint(np_linspace(T - 1, N, k));
    } else if (s->spacing == SP_LEADING) {
        for (int k = 0; k < N; k++)
            asc[k] = (double)k * (s->T / N) + s->steps_offset;
    } else {
        double *d = g;
        int m = np_arange_down(d, cap, T, T / N);
        for (int k = 0; k < m; k++)
            asc[k] = nearbyint(d[m - 1 - k]) - 1;
        N = m;
    }
    /* PLMS: the second-to-last ascending entry repeats, then reverse. */
    if (N == 1) {
        g[n++] = asc[0];
    } else {
        g[n++] = asc[N - 1];
        g[n++] = asc[N - 2];
        for (int k = N - 2; k >= 0; k--)
            g[n++] = asc[k];
    }
    return n;
}

/* LCM: N of the distillation schedule's original_steps timesteps
 * (k i - 1 for i = 1..original_steps, k = T / original_steps), taken at
 * evenly spaced indices from the top. Spacing and offset play no part. */
static int lcm_grid(const sdw_sched *s, int N, double *g, sdw_error *e)
{
    int k = s->T / s->original_steps, len = s->original_steps;
    if (N > len)
        return sdw_fail(e, SDW_EINVAL, "lcm runs at most original_inference_steps = %d steps, not %d", len, N);
    double step = (double)len / (double)N; /* np.linspace(0, len, N, endpoint=False) */
    for (int i = 0; i < N; i++) {
        int j = (int)floor((double)i * step); /* index into the descending list */
        g[i] = (double)(len - j) * k - 1;
    }
    return N;
}

/* Euler, Euler ancestral and DDIM. */
static int plain_grid(const sdw_sched *s, int N, double *g, int cap)
{
    const double T = s->T;
    int n = 0;
    if (s->spacing == SP_LINSPACE) {
        for (int k = N - 1; k >= 0; k--) {
            double v = np_linspace(T - 1, N, k);
            g[n++] = s->kind == SDW_SAMPLER_DDIM ? nearbyint(v) : (double)(float)v;
        }
    } else if (s->spacing == SP_LEADING) {
        for (int k = N - 1; k >= 0; k--)
            g[n++] = (double)k * (s->T / N) + s->steps_offset;
    } else {
        n = np_arange_down(g, cap, T, T / N);
        for (int i = 0; i < n; i++)
            g[i] = nearbyint(g[i]) - 1;
    }
    return n;
}

/* The sigma schedule of the n timesteps in s->ts (sigma-based samplers),
 * and the initial noise sigma. */
static int make_sigmas(sdw_sched *s, int n, sdw_error *e)
{
    if (is_euler(s->kind) || is_dpm(s->kind)) {
        s->sigmas = malloc(sizeof(float) * (n + 1));
        if (!s->sigmas)
            return sdw_fail(e, SDW_ENOMEM, "sigmas");
        if (s->kind == SDW_SAMPLER_DPMPP_2M_KARRAS) {
            int rc = dpm_karras(s, n, e);
            if (rc)
                return rc;
        } else {
            for (int i = 0; i < n; i++)
                s->sigmas[i] = interp_sigma(s, s->ts[i]);
        }
        int sigma_min_last = s->final_sigma_min && s->kind != SDW_SAMPLER_EULER_A;
        s->sigmas[n] = sigma_min_last ? sqrtf((1.0f - s->acp[0]) / s->acp[0]) : 0.0f;
    }
    s->init_sigma = 1.0f;
    if (is_euler(s->kind)) {
        float mx = 0;
        for (int i = 0; i <= n; i++)
            if (s->sigmas[i] > mx)
                mx = s->sigmas[i];
        s->init_sigma = s->spacing == SP_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
    }
    return SDW_OK;
}

int sdw_sched_set_timesteps(sdw_sched *s, int steps, double strength, sdw_error *e)
{
    if (steps < 1 || steps > s->T)
        return sdw_fail(e, SDW_EINVAL, "steps %d out of range [1, %d]", steps, s->T);
    if (!(strength > 0.0 && strength <= 1.0))
        return sdw_fail(e, SDW_EINVAL, "strength %g out of range (0, 1]", strength);
    int init_timestep = (int)((double)steps * strength);
    if (init_timestep > steps)
        init_timestep = steps;
    if (init_timestep < 1)
        return sdw_fail(e, SDW_EINVAL, "strength %g leaves no denoising step out of %d", strength, steps);
    int t_start = steps - init_timestep;

    reset_state(s);
    free(s->ts);
    free(s->sigmas);
    s->sigmas = NULL;
    int cap = steps + 2;
    s->ts = malloc(sizeof(float) * cap);
    double *g = malloc(sizeof(double) * 2 * cap);
    if (!s->ts || !g) {
        free(g);
        return sdw_fail(e, SDW_ENOMEM, "timesteps");
    }
    int n = is_dpm(s->kind)                ? dpm_grid(s, steps, g, cap)
            : s->kind == SDW_SAMPLER_PNDM ? pndm_grid(s, steps, g, cap)
            : s->kind == SDW_SAMPLER_LCM  ? lcm_grid(s, steps, g, e)
                                          : plain_grid(s, steps, g, cap);
    if (n < 0) {
        free(g);
        return n;
    }
    for (int i = 0; i < n; i++) {
        if (g[i] < 0 || g[i] > s->T - 1) {
            double bad = g[i];
            free(g);
            return sdw_fail(e, SDW_EINVAL, "%d steps with this scheduler config give timestep %g outside [0, %d]",
                            steps, bad, s->T - 1);
        }
        s->ts[i] = (float)g[i];
    }
    free(g);
    s->nfull = n;
    s->steps = steps;
    int rc = make_sigmas(s, n, e);
    if (rc)
        return rc;
    s->begin = t_start;
    if (s->begin >= n)
        return sdw_fail(e, SDW_EINVAL, "strength %g leaves no denoising step", strength);
    /* Zero SNR leaves DDIM's and LCM's alphas_cumprod 0 at the last training
     * timestep, where an epsilon model's x0 = (x - sqrt(1 - acp) eps) /
     * sqrt(acp) divides by 0: diffusers returns NaN latents from there on. */
    if ((s->kind == SDW_SAMPLER_DDIM || s->kind == SDW_SAMPLER_LCM) && !s->v_pred)
        for (int i = s->begin; i < n; i++)
            if (s->acp[(int)s->ts[i]] == 0.0f)
                return sdw_fail(e, SDW_EUNSUPPORTED,
                                "%s with rescale_betas_zero_snr and epsilon prediction cannot step from timestep %d "
                                "(zero signal; diffusers gives NaN): use v_prediction%s",
                                sdw_sampler_name(s->kind), (int)s->ts[i],
                                s->kind == SDW_SAMPLER_DDIM ? " or leading spacing" : " or a strength below 1");
    s->idx = s->begin;
    return 0;
}

int sdw_sched_max_steps(const sdw_sched *s)
{
    return s->kind == SDW_SAMPLER_LCM ? s->original_steps : s->T;
}

int sdw_sched_num_calls(const sdw_sched *s) { return s->ts ? s->nfull - s->begin : 0; }
const float *sdw_sched_timesteps(const sdw_sched *s) { return s->ts ? s->ts + s->begin : NULL; }
const float *sdw_sched_sigmas(const sdw_sched *s) { return s->sigmas ? s->sigmas + s->begin : NULL; }
float sdw_sched_init_noise_sigma(const sdw_sched *s) { return s->init_sigma; }

float sdw_sched_input_divisor(const sdw_sched *s)
{
    if (!is_euler(s->kind) || !s->sigmas || s->idx >= s->nfull)
        return 1.0f;
    float sg = s->sigmas[s->idx];
    return sqrtf(sg * sg + 1.0f);
}

void sdw_sched_scale_model_input(const sdw_sched *s, const float *x, float *out, size_t n)
{
    float d = sdw_sched_input_divisor(s);
    if (!is_euler(s->kind)) {
        if (out != x)
            memcpy(out, x, n * sizeof *x);
        return;
    }
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] / d;
}

int sdw_sched_step_needs_noise(const sdw_sched *s)
{
    if (s->kind == SDW_SAMPLER_LCM)
        return s->ts && s->idx < s->nfull - 1;
    return s->kind == SDW_SAMPLER_EULER_A || (s->kind == SDW_SAMPLER_DDIM && s->eta > 0.0f);
}

/* ---- steps ---- */

static void euler_step(sdw_sched *s, const float *mo, float *x, const float *noise, size_t n)
{
    float sg = s->sigmas[s->idx], sn = s->sigmas[s->idx + 1];
    float up = 0, dt;
    if (s->kind == SDW_SAMPLER_EULER_A) {
        up = sqrtf(sn * sn * (sg * sg - sn * sn) / (sg * sg));
        float down = sqrtf(sn * sn - up * up);
        dt = down - sg;
    } else {
        dt = sn - sg;
    }
    float c1 = 0, c2 = 0;
    if (s->v_pred) {
        c2 = sg * sg + 1.0f;
        c1 = -sg / sqrtf(c2);
    }
    int anc = s->kind == SDW_SAMPLER_EULER_A, v = s->v_pred;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float p;
        if (v) {
            float a = mo[i] * c1;
            p = a + x[i] / c2;
        } else {
            float a = sg * mo[i];
            p = x[i] - a;
        }
        float der = (x[i] - p) / sg;
        float r = der * dt;
        float y = x[i] + r;
        if (anc) {
            float z = noise[i] * up;
            y = y + z;
        }
        x[i] = y;
    }
}

static void ddim_step(sdw_sched *s, const float *mo, float *x, const float *noise, size_t n)
{
    int t = (int)s->ts[s->idx];
    int prev = t - s->T / s->steps;
    float a = s->acp[t], ap = prev >= 0 ? s->acp[prev] : s->final_acp;
    float b = 1.0f - a, bp = 1.0f - ap;
    float sa = sqrtf(a), sb = sqrtf(b), sap = sqrtf(ap);
    float variance = (bp / b) * (1.0f - a / ap);
    float std = s->eta * sqrtf(variance);
    float cdir = sqrtf(1.0f - ap - std * std);
    int v = s->v_pred, clip = s->clip_sample, eta = s->eta > 0.0f;
    float r = s->clip_range;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x0, ep;
        if (v) {
            float p = sa * x[i], q = sb * mo[i];
            x0 = p - q;
            float u = sa * mo[i], w = sb * x[i];
            ep = u + w;
        } else {
            float q = sb * mo[i];
            x0 = (x[i] - q) / sa;
            ep = mo[i];
        }
        if (clip)
            x0 = x0 < -r ? -r : x0 > r ? r : x0;
        float dir = cdir * ep;
        float y = sap * x0;
        y = y + dir;
        if (eta) {
            float z = std * noise[i];
            y = y + z;
        }
        x[i] = y;
    }
}

/* LCMScheduler.step: x0 from the prediction, the consistency function's
 * denoised = c_out x0 + c_skip x, then (except after the last step) noised
 * afresh to the next timestep; the last step returns denoised itself. */
static void lcm_step(sdw_sched *s, const float *mo, float *x, const float *noise, size_t n)
{
    int t = (int)s->ts[s->idx];
    int last = s->idx == s->nfull - 1;
    int prev = last ? t : (int)s->ts[s->idx + 1];
    float a = s->acp[t], ap = prev >= 0 ? s->acp[prev] : s->final_acp;
    float b = 1.0f - a, bp = 1.0f - ap;
    float sa = sqrtf(a), sb = sqrtf(b), sap = sqrtf(ap), sbp = sqrtf(bp);
    /* get_scalings_for_boundary_condition_discrete, sigma_data = 0.5 */
    float u = (float)t * s->timestep_scaling;
    float u2 = u * u + 0.25f;
    float c_skip = 0.25f / u2, c_out = u / sqrtf(u2);
    int v = s->v_pred, clip = s->clip_sample;
    float r = s->clip_range;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x0;
        if (v) {
            float p = sa * x[i], q = sb * mo[i];
            x0 = p - q;
        } else {
            float q = sb * mo[i];
            x0 = (x[i] - q) / sa;
        }
        if (clip)
            x0 = x0 < -r ? -r : x0 > r ? r : x0;
        float p = c_out * x0, q = c_skip * x[i];
        float d = p + q;
        if (!last) {
            float y = sap * d, z = sbp * noise[i];
            d = y + z;
        }
        x[i] = d;
    }
}

static void alpha_sigma(float sg, float *alpha, float *sigma)
{
    *alpha = 1.0f / sqrtf(sg * sg + 1.0f);
    *sigma = sg * *alpha;
}

static void dpm_step(sdw_sched *s, const float *mo, float *x, size_t n)
{
    int last = s->idx == s->nfull - 1;
    int lof = last && (s->euler_at_final || (s->lower_order_final && s->nfull < 15) || !s->final_sigma_min);
    float a0, s0;
    alpha_sigma(s->sigmas[s->idx], &a0, &s0);
    float *x0 = s->work;
    int v = s->v_pred;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        if (v) {
            float p = a0 * x[i], q = s0 * mo[i];
            x0[i] = p - q;
        } else {
            float q = s0 * mo[i];
            x0[i] = (x[i] - q) / a0;
        }
    }
    float at, st;
    alpha_sigma(s->sigmas[s->idx + 1], &at, &st);
    float lt = logf(at) - logf(st), l0 = logf(a0) - logf(s0);
    float h = lt - l0;
    float cx = st / s0;
    float cm = at * (expf(-h) - 1.0f);
    if (s->solver_order == 1 || s->lower_order_nums < 1 || lof) {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float p = cx * x[i], q = cm * x0[i];
            x[i] = p - q;
        }
    } else {
        float a1, s1;
        alpha_sigma(s->sigmas[s->idx - 1], &a1, &s1);
        float l1 = logf(a1) - logf(s1);
        float h0 = l0 - l1;
        float r0 = h0 / h;
        float inv_r0 = 1.0f / r0;
        float cd = 0.5f * cm;
        const float *m1 = s->hist[0];
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float d = x0[i] - m1[i];
            float d1 = inv_r0 * d;
            float p = cx * x[i], q = cm * x0[i];
            float y = p - q;
            float w = cd * d1;
            x[i] = y - w;
        }
    }
    if (s->lower_order_nums < s->solver_order)
        s->lower_order_nums++;
    /* The x0 just computed becomes m1 of the next step. */
    float *tmp = s->hist[0];
    s->hist[0] = s->work;
    s->work = tmp;
}

static void pndm_step(sdw_sched *s, const float *mo, float *x, size_t n)
{
    int ratio = s->T / s->steps;
    int t = (int)s->ts[s->idx];
    int prev = t - ratio;
    if (s->counter != 1) {
        if (s->nhist == 4) {
            float *old = s->hist[0];
            memmove(s->hist, s->hist + 1, 3 * sizeof *s->hist);
            s->hist[3] = old;
            s->nhist = 3;
        }
        memcpy(s->hist[s->nhist++], mo, n * sizeof *mo);
    } else {
        prev = t;
        t = t + ratio;
    }
    float *e = s->work;
    const float *sample = x;
    int nh = s->nhist;
    const float *e1 = s->hist[nh - 1], *e2 = nh > 1 ? s->hist[nh - 2] : NULL;
    const float *e3 = nh > 2 ? s->hist[nh - 3] : NULL, *e4 = nh > 3 ? s->hist[nh - 4] : NULL;
    int mode;
    if (nh == 1 && s->counter == 0) {
        mode = 0;
        memcpy(s->cur_sample, x, n * sizeof *x);
    } else if (nh == 1 && s->counter == 1) {
        mode = 1;
        sample = s->cur_sample;
    } else {
        mode = nh;
    }
    float a = s->acp[t], ap = prev >= 0 ? s->acp[prev] : s->final_acp;
    float b = 1.0f - a, bp = 1.0f - ap;
    float sa = sqrtf(a), sb = sqrtf(b);
    float sc = sqrtf(ap / a);
    float den = a * sqrtf(bp) + sqrtf(a * b * ap);
    float dif = ap - a;
    const float inv24 = (float)(1.0 / 24.0);
    int v = s->v_pred;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float m;
        switch (mode) {
        case 0: m = mo[i]; break;
        case 1: m = (mo[i] + e1[i]) / 2.0f; break;
        case 2: {
            float p = 3.0f * e1[i];
            m = (p - e2[i]) / 2.0f;
            break;
        }
        case 3: {
            float p = 23.0f * e1[i], q = 16.0f * e2[i], r = 5.0f * e3[i];
            float u = p - q;
            u = u + r;
            m = u / 12.0f;
            break;
        }
        default: {
            float p = 55.0f * e1[i], q = 59.0f * e2[i], r = 37.0f * e3[i], w = 9.0f * e4[i];
            float u = p - q;
            u = u + r;
            u = u - w;
            m = inv24 * u;
            break;
        }
        }
        if (v) {
            float p = sa * m, q = sb * sample[i];
            m = p + q;
        }
        float p = sc * sample[i];
        float q = dif * m;
        q = q / den;
        e[i] = p - q;
    }
    if (mode == 1) {
        free(s->cur_sample);
        s->cur_sample = NULL;
    }
    memcpy(x, e, n * sizeof *x);
    s->counter++;
}

static int alloc_state(sdw_sched *s, size_t n, sdw_error *e)
{
    s->n = n;
    s->work = malloc(n * sizeof(float));
    if (!s->work)
        return sdw_fail(e, SDW_ENOMEM, "scheduler state");
    int nh = s->kind == SDW_SAMPLER_PNDM ? 4 : is_dpm(s->kind) ? 1 : 0;
    for (int i = 0; i < nh; i++)
        if (!(s->hist[i] = malloc(n * sizeof(float))))
            return sdw_fail(e, SDW_ENOMEM, "scheduler state");
    if (s->kind == SDW_SAMPLER_PNDM && !(s->cur_sample = malloc(n * sizeof(float))))
        return sdw_fail(e, SDW_ENOMEM, "scheduler state");
    return 0;
}

int sdw_sched_step(sdw_sched *s, const float *model_output, float *x, const float *noise, size_t n,
                   sdw_error *e)
{
    if (!s->ts)
        return sdw_fail(e, SDW_EINVAL, "scheduler step before set_timesteps");
    if (s->idx >= s->nfull)
        return sdw_fail(e, SDW_EINVAL, "scheduler step past the last timestep");
    if (n == 0 || (s->n && n != s->n))
        return sdw_fail(e, SDW_EINVAL, "scheduler step: %zu elements, run started with %zu", n, s->n);
    if (sdw_sched_step_needs_noise(s) && !noise)
        return sdw_fail(e, SDW_EINVAL, "%s step needs noise", sdw_sampler_name(s->kind));
    if (!s->n) {
        int rc = alloc_state(s, n, e);
        if (rc)
            return rc;
    }
    switch (s->kind) {
    case SDW_SAMPLER_EULER:
    case SDW_SAMPLER_EULER_A: euler_step(s, model_output, x, noise, n); break;
    case SDW_SAMPLER_DDIM: ddim_step(s, model_output, x, noise, n); break;
    case SDW_SAMPLER_DPMPP_2M:
    case SDW_SAMPLER_DPMPP_2M_KARRAS: dpm_step(s, model_output, x, n); break;
    case SDW_SAMPLER_PNDM: pndm_step(s, model_output, x, n); break;
    case SDW_SAMPLER_LCM: lcm_step(s, model_output, x, noise, n); break;
    }
    s->idx++;
    return 0;
}

int sdw_sched_add_noise(const sdw_sched *s, int pos, const float *original, const float *noise,
                        float *out, size_t n, sdw_error *e)
{
    if (!s->ts)
        return sdw_fail(e, SDW_EINVAL, "add_noise before set_timesteps");
    int k = s->begin + pos;
    if (pos < 0 || k >= s->nfull)
        return sdw_fail(e, SDW_EINVAL, "add_noise position %d outside the %d timesteps", pos, s->nfull - s->begin);
    if (is_euler(s->kind)) {
        float sg = s->sigmas[k];
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float q = noise[i] * sg;
            out[i] = original[i] + q;
        }
        return 0;
    }
    float ca, cb;
    if (is_dpm(s->kind)) {
        alpha_sigma(s->sigmas[k], &ca, &cb);
    } else {
        float a = s->acp[(int)s->ts[k]];
        ca = sqrtf(a);
        cb = sqrtf(1.0f - a);
    }
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float p = ca * original[i], q = cb * noise[i];
        out[i] = p + q;
    }
    return 0;
}
