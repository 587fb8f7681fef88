"""One-off check of the full SD 1.5 architecture against diffusers (too big
for CI): txt2img on a model made by `sdworker-mkmodel --config sd15`, run by
diffusers (float32, from the same files) and by sdworker-generate, pixels
compared.

usage: /opt/sdw-ref/bin/python tests/reference/check_sd15.py MODEL_DIR SDWORKER_GENERATE
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

model, generate = sys.argv[1], sys.argv[2]
args = dict(prompt="a photo of a cat", negative_prompt="blurry", height=128, width=128, steps=2, guidance=7.5,
            seed=42)

pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None,
                                               requires_safety_checker=False)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
ref = pipe(args["prompt"], negative_prompt=args["negative_prompt"], height=args["height"], width=args["width"],
           num_inference_steps=args["steps"], guidance_scale=args["guidance"],
           generator=torch.Generator("cpu").manual_seed(args["seed"]), output_type="np").images[0]
ref = (ref * 255).round().astype(np.int32)

with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "ours.png")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, SDW_DATA_DIR=os.path.join(here, "..", "..", "data"))
    subprocess.run([generate, "--model", model, "--prompt", args["prompt"], "--negative-prompt",
                    args["negative_prompt"], "--width", str(args["width"]), "--height", str(args["height"]),
                    "--steps", str(args["steps"]), "--guidance", str(args["guidance"]), "--seed", str(args["seed"]),
                    "--sampler", "euler", "--quiet", "--output", out], check=True, env=env)
    ours = np.array(Image.open(out).convert("RGB")).astype(np.int32)

d = np.abs(ours - ref)
print(f"pixels: max difference {d.max()}, {int((d > 0).sum())} of {d.size} values differ")
sys.exit(0 if d.max() <= 1 else 1)
