"""The diffusers baseline for bench/gpu.sh: the same model directory, fp16,
SDPA attention (diffusers' default AttnProcessor2_0 on torch 2), --size
(512) square, 20 euler steps, CFG --guidance (7.5), seed 42; the pipeline
class the folder's model_index.json names (StableDiffusionXLPipeline for
SDXL, whose VAE then decodes in float32 as its force_upcast asks). The first run warms up (its time is reported
as the first image's); the second is timed, whole and by phase (text encode
and VAE decode timed again on their own). The allocator's peak is torch's
max_memory_reserved; bench/gpu.sh measures the process's device memory.
Writes the metrics bench/gpu.sh tabulates as JSON."""
import argparse
import json
import time

import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return r, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=7.5)
    a = ap.parse_args()

    pipe, load_s = timed(lambda: DiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float16).to("cuda"))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=a.prompt, num_inference_steps=20, guidance_scale=a.guidance, width=a.size, height=a.size)

    def run():
        return pipe(generator=torch.Generator("cuda").manual_seed(42), **kw).images[0]

    _, first_s = timed(run)
    image, total_s = timed(run)
    image.save(a.output)
    # Over both runs, as sdworker's allocator figures cover its warm-up too.
    peak = torch.cuda.max_memory_reserved() >> 20

    _, encode_s = timed(lambda: pipe.encode_prompt(prompt=a.prompt, device="cuda", num_images_per_prompt=1,
                                                       do_classifier_free_guidance=a.guidance > 1))
    lat = torch.randn(1, 4, a.size // 8, a.size // 8, device="cuda", dtype=torch.float16)
    vae = pipe.vae
    if vae.config.get("force_upcast"):
        vae = vae.to(torch.float32)
        lat = lat.float()
    _, decode_s = timed(lambda: vae.decode(lat / vae.config.scaling_factor))

    steps = []
    def cb(p, i, t, k):
        torch.cuda.synchronize()
        steps.append(time.perf_counter())
        return k
    run_cb = lambda: pipe(generator=torch.Generator("cuda").manual_seed(42), callback_on_step_end=cb, **kw)
    timed(run_cb)
    its = (len(steps) - 1) / (steps[-1] - steps[0]) if len(steps) > 1 else None

    r = {"s/image": total_s, "first image s": first_s, "it/s": its, "text encode s": encode_s,
         "VAE decode s": decode_s, "load s": load_s, "allocator peak MiB": peak, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    json.dump(r, open(a.json, "w"), indent=1)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
