/* Noise schedulers (samplers), reproducing diffusers 0.42.
 *
 * A scheduler is built from a model's scheduler_config.json plus a sampler
 * name, the way a diffusers user writes `Cls.from_config(pipe.scheduler.config)`:
 * keys the config carries (spacing, steps_offset, betas, ...) are kept, and
 * keys it lacks take that class's defaults. Tables and per-step scalars are
 * computed in the precision diffusers uses for each (float32 torch tables,
 * float64 numpy interpolation), and the elementwise updates in float32 in
 * diffusers' operation order.
 *
 * Pipeline loop (txt2img):
 *     sdw_sched_set_timesteps(s, steps, 1.0, e);
 *     x = randn * sdw_sched_init_noise_sigma(s);
 *     for (i = 0; i < sdw_sched_num_calls(s); i++) {
 *         sdw_sched_scale_model_input(s, x, x_in, n);
 *         eps = unet(x_in, sdw_sched_timesteps(s)[i]);
 *         if (sdw_sched_step_needs_noise(s)) draw noise (n values);
 *         sdw_sched_step(s, eps, x, noise, n, e);
 *     }
 * img2img/inpaint: pass the strength to set_timesteps; the list returned by
 * sdw_sched_timesteps() is then already cut to start at the strength's
 * position, and x = sdw_sched_add_noise(s, 0, image_latents, noise). Inpaint's
 * re-noising after step i uses position i + 1. */
#ifndef SDW_SCHEDULER_H
#define SDW_SCHEDULER_H

#include <json-c/json.h>
#include <stddef.h>

#include "base/err.h"
#include "base/sampler.h"


typedef struct sdw_sched sdw_sched;

/* Builds a scheduler. sampler is one of sdw_sampler_names, or NULL/"" for the
 * model's own scheduler (its _class_name; DPMSolverMultistep picks karras by
 * its use_karras_sigmas). config may be NULL: a single-file checkpoint then
 * gets Stable Diffusion 1.5's scheduler config. eta is used by ddim only
 * (diffusers' pipeline default is 0).
 *
 * lcm is LCMScheduler: original_inference_steps (50) and timestep_scaling
 * (10) from the config, timestep_spacing and steps_offset kept but unused,
 * clip_sample honoured (default off), SD's betas when the config has none.
 *
 * rescale_betas_zero_snr is implemented as each diffusers class does it:
 * DDIM and LCM keep alphas_cumprod 0 at the last timestep (so only
 * v_prediction may step from there: epsilon from t = T - 1 is refused at
 * set_timesteps), euler, euler_a and dpmpp_2m[_karras] raise it to 2^-24
 * (sigma_max about 4096). PNDMScheduler has no such option (diffusers drops
 * the key silently); pndm refuses it. Other unsupported settings fail with
 * SDW_EUNSUPPORTED: trained_betas, beta_schedule squaredcos_cap_v2,
 * thresholding, prediction_type sample or flow_prediction, exponential /
 * beta / Lu-lambda / flow sigmas, karras sigmas with euler, euler's
 * log_linear interpolation and continuous timesteps, PNDM without
 * skip_prk_steps, and DPM's dpmsolver / sde-dpmsolver(++) algorithms, heun
 * solver, third order, learned variance and lambda_min_clipped. */
int sdw_sched_create(sdw_sched **out, const json_object *config, const char *sampler, float eta,
                     sdw_error *e);
void sdw_sched_free(sdw_sched *s);

sdw_sampler sdw_sched_sampler(const sdw_sched *s);
const char *sdw_sched_sampler_name(const sdw_sched *s);

/* Sets steps (1..num_train_timesteps; lcm: 1..original_inference_steps) and
 * the img2img strength in (0, 1] (1.0 for txt2img): diffusers' get_timesteps,
 * init_timestep = min(int(steps * strength), steps), t_start = steps -
 * init_timestep, and the list starts at t_start. For lcm that is how the
 * Stable Diffusion img2img/inpaint pipelines cut LCMScheduler's list, not
 * LatentConsistencyModelImg2ImgPipeline's set_timesteps(strength=), which
 * draws all steps from the lower part of the schedule. Resets all step
 * state. */
int sdw_sched_set_timesteps(sdw_sched *s, int steps, double strength, sdw_error *e);

/* The most steps set_timesteps takes: num_train_timesteps, or lcm's
 * original_inference_steps. */
int sdw_sched_max_steps(const sdw_sched *s);

/* UNet evaluations left in the run: the length of the timestep list (PNDM's
 * list repeats its second timestep, so N steps cost N + 1 calls). */
int sdw_sched_num_calls(const sdw_sched *s);
/* The timesteps the pipeline passes to the UNet, in order, as the float value
 * the UNet receives (fractional for euler with linspace spacing). */
const float *sdw_sched_timesteps(const sdw_sched *s);
/* The Euler/DPM sigmas matching sdw_sched_timesteps(), plus the final one
 * (num_calls + 1 values); NULL for ddim and pndm. */
const float *sdw_sched_sigmas(const sdw_sched *s);

/* Initial latents are randn * this for txt2img (1 except for the Euler family). */
float sdw_sched_init_noise_sigma(const sdw_sched *s);

/* Model input for the current step: x / sqrt(sigma^2 + 1) for the Euler
 * family, x otherwise. in and out may alias. */
void sdw_sched_scale_model_input(const sdw_sched *s, const float *x, float *out, size_t n);
/* The divisor that scale_model_input applies (1 when it copies), for
 * backends that fuse it into another kernel: out = x / divisor. */
float sdw_sched_input_divisor(const sdw_sched *s);

/* Whether the next step() consumes n standard-normal values: euler_a on every
 * step (the last one included), ddim when eta > 0, lcm on every step but the
 * last. The pipeline draws them from its generator right before step(), as
 * diffusers does. */
int sdw_sched_step_needs_noise(const sdw_sched *s);

/* One step: x <- previous sample, given the model output (epsilon or v, as
 * the config's prediction_type says) for the current timestep. lcm's last
 * step leaves its denoised estimate, which is the pipeline's output. noise must
 * hold n values when sdw_sched_step_needs_noise() and is ignored otherwise.
 * n must stay the same for a whole run. */
int sdw_sched_step(sdw_sched *s, const float *model_output, float *x, const float *noise, size_t n,
                   sdw_error *e);

/* out = original noised to the timestep at position pos of
 * sdw_sched_timesteps() (0 for the img2img start, i + 1 for inpaint after step
 * i), as the scheduler's add_noise does: sigma-based for euler/euler_a/dpm,
 * alphas_cumprod-based for ddim/pndm/lcm. out may alias original or noise. */
int sdw_sched_add_noise(const sdw_sched *s, int pos, const float *original, const float *noise,
                        float *out, size_t n, sdw_error *e);

#endif
