#!/usr/bin/env python3
"""Scheduler reference trajectories for tests/test_sched.c.

Writes tests/fixtures/sched.json. Each case builds a diffusers 0.42.1 scheduler
exactly as a user swapping samplers does (`Cls.from_config(sd15_config,
**overrides)`), runs set_timesteps, optionally the img2img start
(get_timesteps + set_begin_index + add_noise), then the denoising loop the
Stable Diffusion pipelines run, with a stand-in "UNet" whose float32
arithmetic the C test repeats bit for bit:

    eps = x_in * 0.9f + float32(t) * 1e-4f      (all float32, two roundings)

where x_in = scheduler.scale_model_input(x, t) and t the timestep the
pipeline passes. Per-step noise comes from a fixed bank: euler_a and lcm draw
it from a generator seeded like the bank (step i's draw is bank[i]: lcm
draws on every step but the last), ddim with eta > 0 gets it as
variance_noise.

Floats are written as the shortest decimal that round-trips their float32
value, so the C side reads them exactly with strtod + a float cast.

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_sched.py
"""

import json
import os

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, PNDMScheduler)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures")
SD15_CONFIG = os.path.join(FIX, "models", "tiny-a", "scheduler", "scheduler_config.json")

SHAPE = (1, 4, 3, 4)
NOISE_SEED = 1234
MAX_CALLS = 51  # 50 steps of PNDM cost 51 calls

SAMPLERS = {
    # name: (class, from_config overrides, step kwargs)
    "euler": (EulerDiscreteScheduler, {}, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, {}),
    "ddim": (DDIMScheduler, {}, {"eta": 0.0}),
    "ddim_eta": (DDIMScheduler, {}, {"eta": 0.5}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, {}),
    "pndm": (PNDMScheduler, {}, {}),
    "lcm": (LCMScheduler, {}, {}),
}


def f32s(a):
    """float32 values as JSON numbers (shortest round-trip repr of the float32)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    return [float(str(v)) if np.isfinite(v) else None
            for v in a]


def model(x_in, t):
    tf = torch.as_tensor(t).to(torch.float32)
    return x_in * np.float32(0.9) + tf * np.float32(1e-4)


def run_case(base_cfg, sampler, spacing, steps, strength, bank, x_init, image, img_noise, prediction,
             zero_snr=False, extra=None):
    cls, overrides, step_kw = SAMPLERS[sampler]
    cfg = dict(base_cfg, **(extra or {}))
    cfg["timestep_spacing"] = spacing
    cfg["prediction_type"] = prediction
    if zero_snr:
        cfg["rescale_betas_zero_snr"] = True
    sched = cls.from_config(cfg, **overrides)
    sched.set_timesteps(steps)
    full_ts = sched.timesteps.clone()
    if strength is None and len(full_ts) > 1 and full_ts[0] == full_ts[1]:
        # Karras sigmas under zero SNR repeat t = 999 from about 20 steps on;
        # without set_begin_index (txt2img) diffusers then takes the first
        # step at index 1 and runs off the end of its sigmas (IndexError).
        return None
    case = {
        "sampler": "ddim" if sampler == "ddim_eta" else sampler,
        "eta": step_kw.get("eta", 0.0),
        "config": cfg,
        "steps": steps,
        "strength": strength,
        "full_timesteps": [float(t) for t in full_ts.to(torch.float64)],
    }
    sig = getattr(sched, "sigmas", None)
    if isinstance(sig, torch.Tensor) and sampler not in ("ddim", "ddim_eta", "pndm"):
        case["sigmas"] = f32s(sig.numpy())
    case["init_noise_sigma"] = f32s([float(sched.init_noise_sigma)])[0]

    if strength is None:
        timesteps = full_ts
        x = x_init * sched.init_noise_sigma
        case["begin"] = 0
    else:
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = full_ts[t_start * sched.order:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * sched.order)
        case["begin"] = t_start * sched.order
        if len(timesteps) == 0:
            case["timesteps"] = []
            case["final"] = None
            return case
        x = sched.add_noise(image, img_noise, timesteps[:1].repeat(1))
        case["noised"] = f32s(x.numpy())
    case["timesteps"] = [float(t) for t in timesteps.to(torch.float64)]

    gen = torch.Generator("cpu").manual_seed(NOISE_SEED)
    for i, t in enumerate(timesteps):
        x_in = sched.scale_model_input(x, t)
        eps = model(x_in, t)
        kw = dict(step_kw)
        if sampler in ("euler_a", "lcm"):
            kw["generator"] = gen
        elif sampler == "ddim_eta":
            kw["variance_noise"] = bank[i]
        x = sched.step(eps, t, x, **kw, return_dict=False)[0]
    case["final"] = f32s(x.numpy())
    return case


def main():
    with open(SD15_CONFIG) as f:
        base_cfg = json.load(f)
    # The JSON null of trained_betas is dropped by from_config's defaults anyway.
    g = torch.Generator("cpu").manual_seed(NOISE_SEED)
    bank = [torch.randn(SHAPE, generator=g) for _ in range(MAX_CALLS)]
    g2 = torch.Generator("cpu").manual_seed(42)
    x_init = torch.randn(SHAPE, generator=g2)
    image = torch.randn(SHAPE, generator=g2) * 0.8
    img_noise = torch.randn(SHAPE, generator=g2)

    def case(sampler, spacing, steps, strength, prediction, zero_snr=False, extra=None):
        c = run_case(base_cfg, sampler, spacing, steps, strength, bank, x_init, image, img_noise, prediction,
                     zero_snr, extra)
        if c is None:
            print(f"skipped {sampler} {spacing} {prediction} {steps} steps zero_snr={zero_snr}: "
                  "diffusers cannot run it (repeated first timestep)")
        else:
            cases.append(c)

    # Every sampler x spacing x prediction type, from 1 step (SD-Turbo runs
    # 1-4 trailing steps) up, txt2img and img2img (2 steps at strength 0.5
    # leave one).
    cases = []
    for sampler in SAMPLERS:
        if sampler == "lcm":
            continue
        for prediction in ("epsilon", "v_prediction"):
            for spacing in ("leading", "trailing", "linspace"):
                for steps in (1, 2, 4, 7, 20):
                    case(sampler, spacing, steps, None, prediction)
                for steps, strength in ((10, 0.3), (10, 0.75), (4, 0.5), (2, 0.5)):
                    case(sampler, spacing, steps, strength, prediction)
        case(sampler, "trailing", 9, 0.5, "v_prediction")
        case(sampler, "leading", 50, None, "epsilon")

    # Zero terminal SNR as intended, v-prediction with trailing spacing (the
    # first step at t = 999: sigma about 4096, or DDIM's alphas_cumprod 0),
    # then the other spacings, and epsilon where the sample stays defined
    # (DDIM's epsilon x0 divides by sqrt(0) at t = 999). PNDMScheduler has no
    # rescale_betas_zero_snr.
    for sampler in SAMPLERS:
        if sampler in ("pndm", "lcm"):
            continue
        for steps in (1, 2, 4, 10, 25):
            case(sampler, "trailing", steps, None, "v_prediction", zero_snr=True)
        for steps, strength in ((4, 0.5), (10, 0.75), (1, 1.0)):
            case(sampler, "trailing", steps, strength, "v_prediction", zero_snr=True)
        for spacing in ("leading", "linspace"):
            for steps in (4, 20):
                case(sampler, spacing, steps, None, "v_prediction", zero_snr=True)
        case(sampler, "leading", 7, None, "epsilon", zero_snr=True)
        if sampler not in ("ddim", "ddim_eta"):
            case(sampler, "trailing", 4, None, "epsilon", zero_snr=True)

    # LCM (LCMScheduler.from_config(SD 1.5's PNDM config): its betas, its
    # set_alpha_to_one false, original_inference_steps 50 and
    # timestep_scaling 10 by default). Spacing and offset are unused: every
    # spacing must give the same list. The strength is get_timesteps' (the
    # SD img2img pipelines'). timestep_scaling 0.1 with a 1000-step
    # distillation schedule ends at t = 9, where c_skip = 0.25 / (0.81 +
    # 0.25) carries a quarter of the sample: the boundary scalings show.
    for prediction in ("epsilon", "v_prediction"):
        for steps in (1, 2, 4, 8):
            case("lcm", "leading", steps, None, prediction)
        for steps, strength in ((4, 0.5), (8, 0.5), (2, 0.5), (8, 0.3)):
            case("lcm", "leading", steps, strength, prediction)
        case("lcm", "trailing", 4, None, prediction)
        case("lcm", "leading", 50, None, prediction)
        case("lcm", "leading", 100, 0.05, prediction,
             extra={"original_inference_steps": 1000, "timestep_scaling": 0.1})
        case("lcm", "leading", 6, None, prediction, extra={"original_inference_steps": 25})
        # a DDIM-class config with clip_sample: LCM keeps it and clips x0 to [-0.5, 0.5]
        case("lcm", "leading", 4, None, prediction, extra={"clip_sample": True, "clip_sample_range": 0.5})
    case("lcm", "leading", 4, None, "v_prediction", zero_snr=True)
    case("lcm", "leading", 4, 0.5, "epsilon", zero_snr=True)

    out = {
        "shape": list(SHAPE),
        "model": "eps = x_in * 0.9f + (float)t * 1e-4f",
        "x_init": f32s(x_init.numpy()),
        "image": f32s(image.numpy()),
        "image_noise": f32s(img_noise.numpy()),
        "noise": [f32s(b.numpy()) for b in bank],
        "cases": cases,
    }
    path = os.path.join(FIX, "sched.json")
    with open(path, "w") as f:
        f.write("{\n")
        keys = list(out)
        for k in keys:
            if k == "cases":
                f.write('"cases": [\n' + ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases) + "\n]")
            else:
                f.write(json.dumps(k) + ": " + json.dumps(out[k], separators=(",", ":")))
            f.write(",\n" if k != keys[-1] else "\n")
        f.write("}\n")
    print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
