/* The samplers (noise schedulers) sdworker runs, by the names requests,
 * the CLI and the tools use: the one list that the contract validates
 * against and the scheduler implements. */
#ifndef SDW_SAMPLER_H
#define SDW_SAMPLER_H

typedef enum sdw_sampler {
    SDW_SAMPLER_EULER,           /* EulerDiscreteScheduler */
    SDW_SAMPLER_EULER_A,         /* EulerAncestralDiscreteScheduler */
    SDW_SAMPLER_DDIM,            /* DDIMScheduler (eta from the request) */
    SDW_SAMPLER_DPMPP_2M,        /* DPMSolverMultistepScheduler, use_karras_sigmas false */
    SDW_SAMPLER_DPMPP_2M_KARRAS, /* DPMSolverMultistepScheduler, use_karras_sigmas true */
    SDW_SAMPLER_PNDM,            /* PNDMScheduler with skip_prk_steps (PLMS) */
    SDW_SAMPLER_LCM,             /* LCMScheduler (latent consistency, 1-8 steps) */
} sdw_sampler;

/* Outside the enum, so that a switch over samplers is checked for all. */
#define SDW_SAMPLER_COUNT (SDW_SAMPLER_LCM + 1)

/* "euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras, pndm, lcm", for messages. */
extern const char sdw_sampler_names[];

/* The sampler's name; "" for anything that is not a sampler (a request's
 * "the model's own", say). */
const char *sdw_sampler_name(int s);
/* The sampler named exactly (case matters), or -1. */
int sdw_sampler_parse(const char *name);

#endif
