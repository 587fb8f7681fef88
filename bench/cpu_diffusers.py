"""The diffusers peer for bench/cpu.sh, on the same CPU in the same run: the
same model directory, float32 (the dtype diffusers loads by default, what
a CPU user runs), SDPA attention (diffusers' default on torch 2), euler, CFG 7.5, seed 42, with the steps and size bench/cpu.sh uses.
Prints `name: seconds` lines as sdworker-generate does: load, text encode
(timed on its own), seconds per step (between the first and the last step's
end, so the first step's warm-up is left out, in diffusers' favour), VAE
decode of the denoised latents, and the whole as sdworker-generate counts it
(load, then the pipeline call with its own text encoding, then the decode).
"""
import argparse
import time

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()

    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t
    print(f"load: {load_s:.2f}")

    with torch.inference_mode():
        t = time.perf_counter()
        pipe.encode_prompt(a.prompt, "cpu", 1, True)
        print(f"text encode: {time.perf_counter() - t:.2f}")

        marks = []

        def step_end(p, i, ts, kw):
            marks.append(time.perf_counter())
            return kw

        t0 = time.perf_counter()
        lat = pipe(prompt=a.prompt, num_inference_steps=a.steps, guidance_scale=7.5, width=a.size, height=a.size,
                   generator=torch.Generator("cpu").manual_seed(42), output_type="latent",
                   callback_on_step_end=step_end).images
        t1 = time.perf_counter()
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
        t2 = time.perf_counter()
        print(f"s/step: {(marks[-1] - marks[0]) / (len(marks) - 1):.3f}")
        print(f"vae decode: {t2 - t1:.2f}")
        print(f"total: {t2 - t0 + load_s:.2f}")
        pipe.image_processor.postprocess(image)[0].save(a.output)


if __name__ == "__main__":
    main()
