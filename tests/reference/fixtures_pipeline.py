#!/usr/bin/env python3
"""End-to-end pipeline references (txt2img, img2img, inpaint) for tests/test_pipeline.c.

Writes, under tests/fixtures/:
  models/tiny-inpaint/          a 9-channel inpainting model (only with --model, or when missing)
  pipeline/cases.json           the cases, in the format described in pipeline/README.md
  pipeline/<case>.safetensors   "latents" F32 [1,4,h,w] and "image" F32 [H,W,3] per case
  pipeline/*.png                the init images and the mask the cases use
  pipeline/README.md            format, diffusers version, how to regenerate

Every case runs the real diffusers pipeline twice from a generator seeded
the same way: once with output_type="latent", once with output_type="np".

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_pipeline.py [--model]
Deterministic: running it twice gives identical files.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from make_fixtures import FIX, MODELS, TINY, check_tokenizer, load_pipeline, randomize  # noqa: E402

OUT = os.path.join(FIX, "pipeline")
INPAINT_MODEL = "tiny-inpaint"
INPAINT_SEED = 3003
# Everything but the UNet and model_index.json is tiny-a's, byte for byte.
SHARED_FROM_TINY_A = [
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]

PROMPT = "a photo of a cat"
NEGATIVE = "blurry"
LONG_PROMPT = (
    "a highly detailed photograph of a fluffy orange tabby cat sitting on a wooden windowsill in the "
    "warm light of a late summer afternoon, with green plants in terracotta pots, a blue ceramic mug, "
    "an old leather book, lace curtains moving in the breeze, soft bokeh background of a quiet village "
    "street with red roofs and a church tower, shot on a vintage film camera, kodak portra, "
    "shallow depth of field, sharp focus on the eyes, award winning composition"
)


# --------------------------------------------------------------------------
# tiny-inpaint model


def make_inpaint_model():
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    spec = TINY["tiny-a"]
    src = os.path.join(MODELS, "tiny-a")
    out = os.path.join(MODELS, INPAINT_MODEL)
    gen = torch.Generator("cpu").manual_seed(INPAINT_SEED)
    unet = UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, norm_num_groups=8,
                                **spec["unet"])
    randomize(unet, gen)
    unet.to(spec["dtype"])
    base = load_pipeline("tiny-a")
    comps = dict(base.components)
    comps["unet"] = unet
    pipe = StableDiffusionInpaintPipeline(**comps, requires_safety_checker=False)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(os.path.join(out, "unet"))
        shutil.copyfile(os.path.join(tmp, "model_index.json"), os.path.join(out, "model_index.json"))
        for f in ("config.json", "diffusion_pytorch_model.safetensors"):
            shutil.copyfile(os.path.join(tmp, "unet", f), os.path.join(out, "unet", f))
    for rel in SHARED_FROM_TINY_A:
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), os.path.join(out, rel))

    with open(os.path.join(out, "model_index.json")) as f:
        assert json.load(f)["_class_name"] == "StableDiffusionInpaintPipeline"
    back = load_inpaint_model()
    assert back.unet.config.in_channels == 9
    saved = dict(unet.named_parameters())
    for pname, p in back.unet.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, saved[pname].float()), f"{INPAINT_MODEL}/unet/{pname} did not round-trip"
    for comp in ("text_encoder", "vae"):
        ref = dict(getattr(base, comp).named_parameters())
        for pname, p in getattr(back, comp).named_parameters():
            assert torch.equal(p, ref[pname]), f"{INPAINT_MODEL}/{comp}/{pname} differs from tiny-a"


# --------------------------------------------------------------------------
# tiny-sd2-turbo: tiny-sd2's weights with SD-Turbo's scheduler


SD2 = "tiny-sd2"
SD2_INPAINT = "tiny-sd2-inpaint"
TURBO = "tiny-sd2-turbo"
# stabilityai/sd-turbo's scheduler: Euler with trailing spacing, epsilon.
TURBO_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
                   "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "trailing",
                   "timestep_type": "discrete", "use_karras_sigmas": False}


def load_sd2(name, inpaint=False):
    """An SD 2-style fixture model in float32; its tokenizer pads with "!" (id 0)."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls.from_pretrained(os.path.join(MODELS, name), torch_dtype=torch.float32, local_files_only=True)
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.pad_token_id == 0
    return pipe


def make_turbo_model():
    """Everything but the scheduler config is tiny-sd2's, byte for byte."""
    src, out = os.path.join(MODELS, SD2), os.path.join(MODELS, TURBO)
    if os.path.isdir(out):
        shutil.rmtree(out)
    shutil.copytree(src, out)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(TURBO_SCHEDULER, f, indent=2, sort_keys=True)
        f.write("\n")
    # diffusers picks the scheduler class from model_index.json
    with open(os.path.join(out, "model_index.json")) as f:
        index = json.load(f)
    index["scheduler"] = ["diffusers", TURBO_SCHEDULER["_class_name"]]
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    back = load_sd2(TURBO)
    assert type(back.scheduler).__name__ == "EulerDiscreteScheduler"
    assert back.scheduler.config.timestep_spacing == "trailing"
    assert back.scheduler.config.prediction_type == "epsilon"


# --------------------------------------------------------------------------
# tiny-lcm: an LCM-distilled model in miniature


LCM = "tiny-lcm"
LCM_SEED = 4004
LCM_COND_DIM = 8
# SimianLuo/LCM_Dreamshaper_v7's scheduler, which the model's own sampler then is.
LCM_SCHEDULER = {"_class_name": "LCMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
                 "original_inference_steps": 50, "prediction_type": "epsilon", "set_alpha_to_one": True,
                 "steps_offset": 1, "timestep_scaling": 10.0, "trained_betas": None}


def make_lcm_model():
    """tiny-a with a UNet that has time_cond_proj_dim (its own random weights,
    cond_proj included) and LCM_Dreamshaper's LCMScheduler config; the text
    encoder, tokenizer and VAE are tiny-a's, byte for byte."""
    from diffusers import UNet2DConditionModel

    spec = TINY["tiny-a"]
    src, out = os.path.join(MODELS, "tiny-a"), os.path.join(MODELS, LCM)
    gen = torch.Generator("cpu").manual_seed(LCM_SEED)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8,
                                time_cond_proj_dim=LCM_COND_DIM, **spec["unet"])
    randomize(unet, gen)
    unet.to(spec["dtype"])
    assert unet.time_embedding.cond_proj.bias is None
    if os.path.isdir(out):
        shutil.rmtree(out)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    for rel in SHARED_FROM_TINY_A:
        if rel.startswith("scheduler/"):
            continue
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), os.path.join(out, rel))
    os.makedirs(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(LCM_SCHEDULER, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(src, "model_index.json")) as f:
        index = json.load(f)
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    back = load_pipeline(LCM)
    assert type(back.scheduler).__name__ == "LCMScheduler"
    assert back.unet.config.time_cond_proj_dim == LCM_COND_DIM
    saved = dict(unet.named_parameters())
    for pname, p in back.unet.named_parameters():
        assert torch.equal(p, saved[pname].float()), f"{LCM}/unet/{pname} did not round-trip"


def load_inpaint_model():
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(os.path.join(MODELS, INPAINT_MODEL),
                                                          torch_dtype=torch.float32, local_files_only=True)
    check_tokenizer(pipe.tokenizer)
    return pipe


# --------------------------------------------------------------------------
# synthetic inputs


def init_image(w, h):
    """Smooth gradients plus a disc and a bar: structure the VAE sees, small as PNG."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = x * 255.0 / (w - 1)
    g = y * 255.0 / (h - 1)
    b = np.full_like(x, 60.0)
    disc = (x - 0.4 * w) ** 2 + (y - 0.55 * h) ** 2 < (0.22 * min(w, h)) ** 2
    b[disc] = 230.0
    r[disc] = 250.0 - r[disc] * 0.5
    bar = (y >= h // 8) & (y < h // 8 + 6) & (x >= w // 2)
    r[bar], g[bar], b[bar] = 20.0, 20.0, 20.0
    img = np.stack([r, g, b], axis=-1).round().astype(np.uint8)
    return Image.fromarray(img, mode="RGB")


def mask_image(w, h):
    """White (repaint) rectangle on black, with grey edges straddling the 0.5 threshold.

    Column 16 and row 8 are 128 (binarised to 1: 128/255 >= 0.5), column 48 and
    row 48 are 127 (binarised to 0). Rows 8 and 48 and columns 16 and 48 are
    exactly the pixels the nearest-neighbour resize to 8x8 latents samples
    (latent index i reads pixel 8*i), so the threshold shows up in the latent mask.
    Other grey levels (64, 191) sit on pixels the latent resize skips but the
    pixel-space masked image uses.
    """
    m = np.zeros((h, w), dtype=np.uint8)
    m[9:48, 17:48] = 255
    m[8, 16:49] = 128
    m[8:49, 16] = 128
    m[48, 16:49] = 127
    m[8:49, 48] = 127
    m[20:30, 17] = 64
    m[20:30, 47] = 191
    m[9, 30:40] = 100
    return Image.fromarray(m, mode="L")


INPUTS = {
    "init-64x64.png": lambda: init_image(64, 64),
    "init-96x64.png": lambda: init_image(96, 64),
    "mask-64x64.png": lambda: mask_image(64, 64),
}


# --------------------------------------------------------------------------
# cases


def case(name, model="tiny-a", kind="txt2img", sampler="euler", steps=4, guidance=7.5, width=64, height=64,
         seed=0, prompt=PROMPT, negative_prompt=NEGATIVE, eta=0.0, strength=None, init=None, mask=None):
    return {"name": name, "model": model, "kind": kind, "prompt": prompt, "negative_prompt": negative_prompt,
            "steps": steps, "guidance": guidance, "width": width, "height": height, "seed": seed,
            "sampler": sampler, "eta": eta, "strength": strength, "init_image": init, "mask_image": mask}


SAMPLERS = ["euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "lcm"]

CASES = (
    [case(f"txt2img-{s}", sampler=s, seed=100 + i) for i, s in enumerate(SAMPLERS)]
    # LCMScheduler.from_config(tiny-a's PNDM config) on a normal UNet (as
    # LCM-LoRA users run it): CFG as usual, noise drawn between steps.
    + [
        case("img2img-lcm-s0.5", kind="img2img", sampler="lcm", steps=8, strength=0.5, seed=150,
             init="init-64x64.png"),
        case("inpaint4-lcm-s0.75", kind="inpaint", sampler="lcm", steps=4, strength=0.75, seed=151,
             init="init-64x64.png", mask="mask-64x64.png"),
        # an LCM-distilled UNet: no CFG (no negative prompt encoded), the
        # guidance as an embedding, the model's own LCMScheduler
        case("lcm-txt2img-g8", model=LCM, sampler=None, steps=4, guidance=8.0, seed=160),
        case("lcm-txt2img-g1.5-2step", model=LCM, sampler=None, steps=2, guidance=1.5, seed=161),
        case("lcm-img2img-g8-s0.6", model=LCM, kind="img2img", sampler=None, steps=4, guidance=8.0,
             strength=0.6, seed=162, init="init-64x64.png"),
    ]
    + [
        case("txt2img-ddim-eta", sampler="ddim", eta=0.5, seed=200),
        case("txt2img-b-euler", model="tiny-b", sampler="euler", width=96, height=64, seed=300),
        case("txt2img-b-euler_a", model="tiny-b", sampler="euler_a", width=96, height=64, seed=2**32 + 301),
        case("txt2img-nocfg", sampler="euler", guidance=1.0, seed=400),
        case("txt2img-empty-negative", sampler="euler", negative_prompt="", seed=500),
        case("txt2img-long-prompt", sampler="euler", prompt=LONG_PROMPT, seed=600),
        case("img2img-euler_a-s0.5", kind="img2img", sampler="euler_a", steps=10, strength=0.5, seed=700,
             init="init-64x64.png"),
        case("img2img-euler_a-s0.8", kind="img2img", sampler="euler_a", steps=10, strength=0.8, seed=701,
             init="init-64x64.png"),
        case("img2img-ddim-s0.6", kind="img2img", sampler="ddim", steps=10, strength=0.6, seed=702,
             init="init-64x64.png"),
        case("img2img-b-euler_a-s0.7", model="tiny-b", kind="img2img", sampler="euler_a", steps=10,
             strength=0.7, width=96, height=64, seed=703, init="init-96x64.png"),
        case("inpaint9-euler_a", model=INPAINT_MODEL, kind="inpaint", sampler="euler_a", strength=1.0,
             seed=800, init="init-64x64.png", mask="mask-64x64.png"),
        case("inpaint4-euler_a", kind="inpaint", sampler="euler_a", strength=1.0, seed=801,
             init="init-64x64.png", mask="mask-64x64.png"),
        case("inpaint4-euler-s0.75", kind="inpaint", sampler="euler", strength=0.75, seed=802,
             init="init-64x64.png", mask="mask-64x64.png"),
    ]
    # tiny-a as today's diffusers + transformers 5 save it: the same image
    + [case("today-txt2img-euler", model="tiny-a-today", sampler="euler", seed=100)]
    # SD 2.x: v-prediction through every sampler, the "!" padding, 1024-wide
    # (here: tiny) OpenCLIP-style text states, linear projections.
    + [case(f"sd2-txt2img-{s}", model=SD2, sampler=s, seed=900 + i) for i, s in enumerate(SAMPLERS)]
    + [
        case("sd2-txt2img-nocfg", model=SD2, sampler="euler", guidance=1.0, seed=910),
        case("sd2-img2img-euler_a-s0.6", model=SD2, kind="img2img", sampler="euler_a", steps=10, strength=0.6,
             seed=920, init="init-64x64.png"),
        case("sd2-img2img-ddim-s0.8", model=SD2, kind="img2img", sampler="ddim", steps=10, strength=0.8,
             seed=921, init="init-64x64.png"),
        case("sd2-inpaint9-euler_a", model=SD2_INPAINT, kind="inpaint", sampler="euler_a", strength=1.0,
             seed=930, init="init-64x64.png", mask="mask-64x64.png"),
        case("sd2-inpaint9-dpmpp_2m-s0.7", model=SD2_INPAINT, kind="inpaint", sampler="dpmpp_2m", strength=0.7,
             seed=931, init="init-64x64.png", mask="mask-64x64.png"),
        # SD-Turbo as its model card runs it: guidance 0 (no CFG), 1-4 steps,
        # Euler ancestral over the model's trailing spacing.
        case("turbo-1step", model=TURBO, sampler="euler_a", steps=1, guidance=0.0, seed=940),
        case("turbo-4step", model=TURBO, sampler="euler_a", steps=4, guidance=0.0, seed=941),
        case("turbo-img2img-2step", model=TURBO, kind="img2img", sampler="euler_a", steps=2, guidance=0.0,
             strength=0.5, seed=942, init="init-64x64.png"),
    ]
)


def make_scheduler(cfg, sampler):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, LCMScheduler, PNDMScheduler)

    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(cfg)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(cfg)
    if sampler == "ddim":
        return DDIMScheduler.from_config(cfg)
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(cfg)
    if sampler == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True)
    if sampler == "pndm":
        return PNDMScheduler.from_config(cfg)
    if sampler == "lcm":
        return LCMScheduler.from_config(cfg)
    if sampler is None:  # the model's own
        import diffusers

        return getattr(diffusers, cfg["_class_name"]).from_config(cfg)
    raise ValueError(sampler)


def pipeline_for(c, loaded):
    from diffusers import (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                           StableDiffusionPipeline)

    base = loaded[c["model"]]
    comps = dict(base.components)
    # A fresh scheduler per run: multistep samplers carry state between steps.
    comps["scheduler"] = make_scheduler(base.scheduler.config, c["sampler"])
    cls = {"txt2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline,
           "inpaint": StableDiffusionInpaintPipeline}[c["kind"]]
    pipe = cls(**comps)
    pipe.set_progress_bar_config(disable=True)
    if c["sampler"] == "dpmpp_2m":
        assert not pipe.scheduler.config.use_karras_sigmas
    return pipe


@torch.no_grad()
def run(c, loaded, output_type):
    pipe = pipeline_for(c, loaded)
    kw = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
              guidance_scale=c["guidance"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
              output_type=output_type)
    if c["sampler"] == "ddim":
        kw["eta"] = c["eta"]
    else:
        assert c["eta"] == 0.0
    if c["kind"] == "txt2img":
        kw.update(height=c["height"], width=c["width"])
    else:
        kw.update(image=Image.open(os.path.join(OUT, c["init_image"])), strength=c["strength"])
    if c["kind"] == "inpaint":
        # img2img takes its size from the init image; inpaint is told it.
        kw.update(mask_image=Image.open(os.path.join(OUT, c["mask_image"])), height=c["height"],
                  width=c["width"])
    return pipe, pipe(**kw).images


def to_tensor(img):
    """PIL -> [1,C,H,W] float32 in [0,1], as VaeImageProcessor does it.

    Kept as a strided view of the HWC array like diffusers' numpy_to_pt: torch's
    conv picks its summation order by memory layout, so a contiguous copy would
    change the VAE encoder's last bits.
    """
    a = np.array(img).astype(np.float32) / 255.0
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a[None].transpose(0, 3, 1, 2))


@torch.no_grad()
def by_hand(c, loaded):
    """The img2img/inpaint loop written out, with every generator draw explicit.

    Asserted equal to the pipeline's latents, so pipeline/README.md's account of the
    draw order and mask handling is checked, not just read off the diffusers source.
    """
    base = loaded[c["model"]]
    unet, vae = base.unet, base.vae
    sf = vae.config.scaling_factor
    g = torch.Generator("cpu").manual_seed(c["seed"])
    sched = make_scheduler(base.scheduler.config, c["sampler"])
    tcd = unet.config.time_cond_proj_dim
    cfg = c["guidance"] > 1.0 and tcd is None                            # do_classifier_free_guidance
    cond, uncond = base.encode_prompt(c["prompt"], "cpu", 1, cfg, c["negative_prompt"])
    embeds = torch.cat([uncond, cond]) if cfg else cond
    tcond = None
    if tcd is not None:
        tcond = base.get_guidance_scale_embedding(torch.tensor(c["guidance"] - 1).repeat(1), embedding_dim=tcd)
    shape = (1, 4, c["height"] // 8, c["width"] // 8)

    def posterior_sample(pixels):
        dist = vae.encode(pixels).latent_dist
        return sf * (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g))

    sched.set_timesteps(c["steps"])
    t_start = c["steps"] - min(int(c["steps"] * c["strength"]), c["steps"])
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):  # DDIM and PNDM index by timestep value instead
        sched.set_begin_index(t_start * sched.order)

    image = to_tensor(Image.open(os.path.join(OUT, c["init_image"]))) * 2.0 - 1.0
    nine = unet.config.in_channels == 9
    if c["kind"] == "img2img":
        image_latents = posterior_sample(image)                         # draw 1
        noise = torch.randn(shape, generator=g)                          # draw 2
        x = sched.add_noise(image_latents, noise, timesteps[:1])
    else:
        full = c["strength"] == 1.0
        if not nine or not full:
            # .contiguous() mirrors the pipeline's repeat(): the encoder output inherits the
            # init image's channels-last strides, and layout changes torch's conv rounding.
            image_latents = posterior_sample(image).contiguous()        # draw 1 (4-ch always)
        noise = torch.randn(shape, generator=g)                          # next draw
        x = noise * sched.init_noise_sigma if full else sched.add_noise(image_latents, noise, timesteps[:1])
        mask_px = to_tensor(Image.open(os.path.join(OUT, c["mask_image"])).convert("L"))
        mask_px = (mask_px >= 0.5).to(torch.float32)
        masked = image * (mask_px < 0.5)
        masked_latents = posterior_sample(masked)                        # drawn even for 4-ch (unused)
        # Nearest resize to latent size reads pixel (8i, 8j). The strided slice has another
        # memory layout, which would change torch's conv summation order downstream.
        mask = torch.nn.functional.interpolate(mask_px, size=shape[2:])
        assert torch.equal(mask, mask_px[:, :, ::8, ::8])

    extra = {"eta": c["eta"]} if c["sampler"] == "ddim" else {}
    if c["sampler"] in ("euler_a", "ddim") or type(sched).__name__ == "LCMScheduler":
        extra["generator"] = g                                           # per-step draws (euler_a, lcm; ddim eta>0)
    for i, t in enumerate(timesteps):
        xin = sched.scale_model_input(torch.cat([x, x]) if cfg else x, t)
        if c["kind"] == "inpaint" and nine:
            k = 2 if cfg else 1
            xin = torch.cat([xin, mask.repeat(k, 1, 1, 1), masked_latents.repeat(k, 1, 1, 1)], dim=1)
        eps = unet(xin, t, encoder_hidden_states=embeds, timestep_cond=tcond).sample
        if cfg:
            eu, ec = eps.chunk(2)
            eps = eu + c["guidance"] * (ec - eu)
        x = sched.step(eps, t, x, return_dict=False, **extra)[0]
        if c["kind"] == "inpaint" and not nine:
            known = image_latents
            if i < len(timesteps) - 1:
                known = sched.add_noise(image_latents, noise, timesteps[i + 1:i + 2])
            x = (1 - mask) * known + mask * x
    return x


@torch.no_grad()
def make_case(c, loaded):
    if c["kind"] != "txt2img":
        iw, ih = Image.open(os.path.join(OUT, c["init_image"])).size
        assert (iw, ih) == (c["width"], c["height"]), c["name"]
    pipe, latents = run(c, loaded, "latent")
    _, image = run(c, loaded, "np")
    h, w = c["height"] // 8, c["width"] // 8
    assert latents.shape == (1, 4, h, w) and latents.dtype == torch.float32, (c["name"], latents.shape)
    assert image.shape == (1, c["height"], c["width"], 3), (c["name"], image.shape)
    if c["kind"] != "txt2img":
        assert torch.equal(by_hand(c, loaded), latents), f"{c['name']}: by-hand loop differs"

    # The C side decodes its own latents: decoding ours must reproduce the pipeline's pixels.
    dec = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    again = pipe.image_processor.postprocess(dec, output_type="np")
    assert np.array_equal(again, image), f"{c['name']}: latent decode differs from output_type='np'"

    pixels = (image[0] * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil rounding
    assert np.array_equal(pixels, np.array(pipe.numpy_to_pil(image)[0]))
    tensors = {"latents": latents.contiguous(), "image": torch.from_numpy(pixels.astype(np.float32)).contiguous()}
    save_file(tensors, os.path.join(OUT, c["name"] + ".safetensors"))


README = """\
# Pipeline references

Generated by `tests/reference/fixtures_pipeline.py` with diffusers {diffusers},
transformers {transformers}, torch {torch}, on CPU in float32 (models loaded
from `tests/fixtures/models/` with `torch_dtype=torch.float32`). Regenerate:

    /opt/sdw-ref/bin/python tests/reference/fixtures_pipeline.py           # cases only
    /opt/sdw-ref/bin/python tests/reference/fixtures_pipeline.py --model   # also rebuild models/tiny-inpaint

Running it twice gives identical files.

## cases.json

A JSON array; each case:

| field | meaning |
|---|---|
| `name` | case name; its outputs are in `<name>.safetensors` |
| `model` | `tiny-a`, `tiny-a-today` (tiny-a as transformers 5 saves it), `tiny-b`, `tiny-inpaint`, `tiny-sd2` (v-prediction), `tiny-sd2-inpaint`, `tiny-sd2-turbo` (tiny-sd2 with SD-Turbo's Euler/trailing/epsilon scheduler; remade by every run) or `tiny-lcm` (tiny-a with an LCM-distilled UNet: `time_cond_proj_dim` 8, its own random weights, and LCM_Dreamshaper_v7's LCMScheduler config; remade by every run) (directory under `tests/fixtures/models/`) |
| `kind` | `txt2img` (StableDiffusionPipeline), `img2img` (StableDiffusionImg2ImgPipeline), `inpaint` (StableDiffusionInpaintPipeline), all built from the model's components |
| `prompt`, `negative_prompt` | strings passed as-is (`""` is a valid negative prompt; diffusers treats it like none) |
| `steps` | `num_inference_steps` (before strength cuts it) |
| `guidance` | `guidance_scale`; 1.0 means no classifier-free guidance, and neither does a UNet with `time_cond_proj_dim` (it gets the guidance as an embedding) |
| `width`, `height` | output size in pixels; latents are `height/8` x `width/8` |
| `seed` | `generator = torch.Generator("cpu").manual_seed(seed)`, one generator for the whole call |
| `sampler` | `euler`, `euler_a`, `ddim`, `dpmpp_2m`, `dpmpp_2m_karras`, `pndm`, `lcm`: `Cls.from_config(model scheduler config)`, `use_karras_sigmas=True` for `dpmpp_2m_karras`; `null`: the model's own scheduler class |
| `eta` | DDIM eta (passed to the pipeline only for `ddim`; 0 elsewhere) |
| `strength` | img2img/inpaint strength; `null` for txt2img |
| `init_image`, `mask_image` | PNG file names in this directory, or `null` |

Init images are exactly `width` x `height` (so diffusers' Lanczos resize is the
identity) and the mask is the same size as its init image.

## <name>.safetensors

- `latents` F32 [1, 4, height/8, width/8]: the pipeline's final latents
  (`output_type="latent"`), before the VAE's scaling factor is divided out.
- `image` F32 [height, width, 3]: the final RGB pixels, `(x * 255).round()` of
  `output_type="np"` (diffusers' `numpy_to_pil`), as floats 0..255.

Both come from separate runs with identically seeded generators. The script
asserts that `vae.decode(latents / scaling_factor)` + `image_processor.postprocess`
gives exactly the `output_type="np"` image.

## What the pipelines do (diffusers {diffusers}, as checked by the script)

For every img2img and inpaint case the script also runs the loop written out
by hand (`by_hand()`), with each generator draw explicit, and asserts its
latents equal the pipeline's bit for bit. One generator serves the whole call;
every draw is `torch.randn` of the latent shape [1, 4, h, w].

- Prompts: `tokenizer(..., padding="max_length", max_length=77,
  truncation=True)`: BOS, the first 75 content tokens, EOS (the long-prompt
  case has 95 tokens untokenised; 18 are dropped, diffusers only warns). The
  negative prompt (`""` the same as none) is padded to 77 the same way.
- Guidance: classifier-free guidance only when `guidance > 1`; at 1.0 the
  negative prompt is never encoded and the UNet runs at batch 1. Otherwise the
  UNet batch is [uncond, cond] and `eps = u + g * (c - u)`.
- Strength: `init = min(int(steps * strength), steps)`, `t_start = steps - init`,
  the loop runs `timesteps[t_start * order:]` (set_begin_index where the
  scheduler has it), and the start latents are `add_noise(image_latents, noise,
  timesteps[0])`, not scaled by `init_noise_sigma`.
- Image encoding: pixels `p / 255 * 2 - 1`, VAE posterior *sample*
  `mean + std * randn` (a generator draw), times `scaling_factor` (0.18215).
- img2img draw order: posterior sample, initial noise, then the sampler's
  per-step draws (euler_a every step; lcm every step but the last; ddim
  only with eta > 0; euler, dpmpp_2m(_karras) and pndm draw nothing).
- LCM-distilled UNet (`time_cond_proj_dim`): no CFG whatever the guidance
  (batch 1, no negative prompt encoded); `timestep_cond =
  get_guidance_scale_embedding(guidance - 1)` goes to every UNet call. With
  LCMScheduler the img2img/inpaint pipelines cut the steps by strength like
  any scheduler (8 steps at 0.5: 499, 379, 259, 139), unlike
  LatentConsistencyModelImg2ImgPipeline.
- inpaint draw order: (1) posterior sample of the init image, drawn when the
  UNet has 4 channels (always) or strength < 1; the 9-channel model at
  strength 1.0 skips it; (2) initial noise: at strength 1.0 the latents are
  `noise * init_noise_sigma` (the image does not enter), else `add_noise` as
  img2img; (3) posterior sample of the masked image, drawn for 4-channel models
  too although they never use it; (4) the per-step draws.
- Mask: converted to grayscale ("L"), resized to width x height with Lanczos
  (identity here: same size), scaled to [0, 1], binarised `m >= 0.5 -> 1`
  (128 -> 1, 127 -> 0). 1 = repaint. Masked image = init pixels (in [-1, 1])
  times `(m < 0.5)`, i.e. 0 (mid-grey) inside the hole. The latent mask is
  `interpolate(mask, (h, w))`, nearest: latent (i, j) = binarised pixel
  (8i, 8j). For mask-64x64.png that is rows 1-5, columns 2-5 of the 8x8.
- 9-channel UNet input, per CFG half: `cat([scale_model_input(x), mask,
  masked_image_latents], dim=1)`; only the 4 latent channels are scaled.
- 4-channel inpaint: after each `scheduler.step`, `x = (1 - mask) * known +
  mask * x` with `known = add_noise(image_latents, noise, timesteps[i + 1])`
  (the same initial noise every step); after the *last* step `known` is the
  clean `image_latents`, so the returned latents equal the encoded init image
  outside the mask. The pipeline does not paste original pixels back after
  decoding.

Float results depend on torch's memory layout (the VAE output keeps the init
image's channels-last strides through img2img but not inpaint), so expect
last-bit differences in any independent implementation: compare with a
tolerance.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="store_true", help="rebuild models/tiny-inpaint")
    args = ap.parse_args()

    import diffusers
    import transformers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # The long-prompt case makes diffusers warn about truncation; that is the point of it.
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    if args.model or not os.path.isdir(os.path.join(MODELS, INPAINT_MODEL)):
        make_inpaint_model()

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for fname, make in INPUTS.items():
        make().save(os.path.join(OUT, fname), optimize=True)

    make_turbo_model()
    make_lcm_model()
    loaded = {m: load_pipeline(m) for m in ("tiny-a", "tiny-b", "tiny-a-today", LCM)}
    loaded[INPAINT_MODEL] = load_inpaint_model()
    loaded.update({SD2: load_sd2(SD2), TURBO: load_sd2(TURBO), SD2_INPAINT: load_sd2(SD2_INPAINT, inpaint=True)})
    assert loaded[SD2].scheduler.config.prediction_type == "v_prediction"
    assert loaded[SD2].unet.config.in_channels == 4 and loaded[SD2_INPAINT].unet.config.in_channels == 9
    assert len(loaded["tiny-a"].tokenizer(LONG_PROMPT).input_ids) > 77

    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    for c in CASES:
        make_case(c, loaded)
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c) for c in CASES) + "\n]\n")
    with open(os.path.join(OUT, "README.md"), "w", encoding="utf-8") as f:
        f.write(README.format(diffusers=diffusers.__version__, transformers=transformers.__version__,
                              torch=torch.__version__))


if __name__ == "__main__":
    main()
