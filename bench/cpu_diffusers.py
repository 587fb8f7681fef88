"""The diffusers peer for bench/cpu.sh, on the same CPU in the same run: the
same model directory, float32 (the dtype diffusers loads by default, what
a CPU user runs), SDPA attention (diffusers' default on torch 2), seed 42,
with the sampler, guidance, steps and size bench/cpu.sh uses; the model's
own scheduler config otherwise (an SD 2.1 model's v-prediction). The
pipeline class is the one the folder's model_index.json names, so an SDXL
folder runs StableDiffusionXLPipeline.
Prints `name: seconds` lines as sdworker-generate does: load, text encode
(timed on its own), seconds per step with 2 or more steps (between the first
and the last step's end, so the first step's warm-up is left out, in
diffusers' favour), VAE
decode of the denoised latents, and the whole as sdworker-generate counts it
(load, then the pipeline call with its own text encoding, then the decode).
With --lora, each file is loaded as an adapter (load_lora_weights) and all
are active at weight 1 (set_adapters): PEFT's low-rank product beside the
frozen weight, diffusers' way of running LoRAs unless they are fused.
"""
import argparse
import time

import torch
from diffusers import DiffusionPipeline, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

SCHEDULERS = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sampler", choices=sorted(SCHEDULERS), default="euler")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--output", required=True)
    ap.add_argument("--lora", action="append", default=[], help="a LoRA file, at weight 1 (repeatable)")
    a = ap.parse_args()

    t = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32)
    pipe.scheduler = SCHEDULERS[a.sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if a.lora:
        names = [f"lora{i}" for i in range(len(a.lora))]
        for name, path in zip(names, a.lora):
            pipe.load_lora_weights(path, adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[1.0] * len(names))
    load_s = time.perf_counter() - t
    print(f"load: {load_s:.2f}")

    with torch.inference_mode():
        t = time.perf_counter()
        pipe.encode_prompt(prompt=a.prompt, device="cpu", num_images_per_prompt=1,
                           do_classifier_free_guidance=a.guidance > 1)
        print(f"text encode: {time.perf_counter() - t:.2f}")

        marks = []

        def step_end(p, i, ts, kw):
            marks.append(time.perf_counter())
            return kw

        t0 = time.perf_counter()
        lat = pipe(prompt=a.prompt, num_inference_steps=a.steps, guidance_scale=a.guidance, width=a.size, height=a.size,
                   generator=torch.Generator("cpu").manual_seed(42), output_type="latent",
                   callback_on_step_end=step_end).images
        t1 = time.perf_counter()
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
        t2 = time.perf_counter()
        if len(marks) > 1:
            print(f"s/step: {(marks[-1] - marks[0]) / (len(marks) - 1):.3f}")
        print(f"vae decode: {t2 - t1:.2f}")
        print(f"total: {t2 - t0 + load_s:.2f}")
        pipe.image_processor.postprocess(image)[0].save(a.output)


if __name__ == "__main__":
    main()
