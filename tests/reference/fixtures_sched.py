#!/usr/bin/env python3
"""Scheduler reference trajectories for tests/test_sched.c.

Writes tests/fixtures/sched.json. Each case builds a diffusers 0.31 scheduler
exactly as a user swapping samplers does (`Cls.from_config(sd15_config,
**overrides)`), runs set_timesteps, optionally the img2img start
(get_timesteps + set_begin_index + add_noise), then the denoising loop the
Stable Diffusion pipelines run, with a stand-in "UNet" whose float32
arithmetic the C test repeats bit for bit:

    eps = x_in * 0.9f + float32(t) * 1e-4f      (all float32, two roundings)

where x_in = scheduler.scale_model_input(x, t) and t the timestep the
pipeline passes. Per-step noise comes from a fixed bank: euler_a draws it from
a generator seeded like the bank, ddim with eta > 0 gets it as variance_noise.

Floats are written as the shortest decimal that round-trips their float32
value, so the C side reads them exactly with strtod + a float cast.

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_sched.py
"""

import json
import os

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler)

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
}


def f32s(a):
    """float32 values as JSON numbers (shortest round-trip repr of the float32)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    return [float(str(v)) if np.isfinite(v) else None
            for v in a]


def model(x_in, t):
    tf = torch.as_tensor(t).to(torch.float32)
    return x_in * np.float32(0.9) + tf * np.float32(1e-4)


def run_case(base_cfg, sampler, spacing, steps, strength, bank, x_init, image, img_noise, prediction):
    cls, overrides, step_kw = SAMPLERS[sampler]
    cfg = dict(base_cfg)
    cfg["timestep_spacing"] = spacing
    cfg["prediction_type"] = prediction
    sched = cls.from_config(cfg, **overrides)
    sched.set_timesteps(steps)
    full_ts = sched.timesteps.clone()
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
        if sampler == "euler_a":
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

    cases = []
    for sampler in SAMPLERS:
        for spacing in ("leading", "trailing", "linspace"):
            for steps in (4, 7, 20):
                cases.append(run_case(base_cfg, sampler, spacing, steps, None, bank, x_init, image,
                                      img_noise, "epsilon"))
            for strength in (0.3, 0.75):
                cases.append(run_case(base_cfg, sampler, spacing, 10, strength, bank, x_init, image,
                                      img_noise, "epsilon"))
        cases.append(run_case(base_cfg, sampler, "leading", 7, None, bank, x_init, image, img_noise,
                              "v_prediction"))
        cases.append(run_case(base_cfg, sampler, "trailing", 9, 0.5, bank, x_init, image, img_noise,
                              "v_prediction"))
        cases.append(run_case(base_cfg, sampler, "leading", 1, None, bank, x_init, image, img_noise,
                              "epsilon"))
        cases.append(run_case(base_cfg, sampler, "leading", 50, None, bank, x_init, image,
                              img_noise, "epsilon"))

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
