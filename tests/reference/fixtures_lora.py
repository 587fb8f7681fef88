#!/usr/bin/env python3
"""LoRA references for tests/test_lora.c.

Writes, under tests/fixtures/lora/:
  <lora>.safetensors            random LoRAs for the tiny models (SD 1, SD 2, SDXL), kohya (SDXL's with
                                SGM UNet paths and lora_te1_ / lora_te2_) and diffusers/PEFT layouts
  cases.json                    the generations, in pipeline/README.md's format plus "loras"
  <case>.safetensors            "latents" F32 [1,4,h,w] and "image" F32 [H,W,3] per case
(tests/reference/README.md, "lora/", says what each file covers.)

Every image comes from the real diffusers pipeline with
pipe.load_lora_weights(file, adapter_name=...) and
pipe.set_adapters([...], adapter_weights=[...]): diffusers reads the kohya
files itself (lora_conversion_utils), so they are files it accepts, and
every module of each file is checked to be one diffusers injected. The LCM
cases use LCMScheduler on the unchanged tiny-a UNet, as LCM-LoRA is used.

Adding a model is one more entry in MODELS_LORA and the LoRAs and cases
that use it.

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_lora.py
Deterministic: running it twice gives identical files.
"""

import json
import os
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from fixtures_pipeline import load_sd2  # noqa: E402
from fixtures_sdxl import load as load_sdxl  # noqa: E402
from fixtures_unet_vae import unet_ldm_name  # noqa: E402
from make_fixtures import FIX, load_pipeline  # noqa: E402

OUT = os.path.join(FIX, "lora")

# model -> (pipeline loader, kohya's ss_base_model_version)
MODELS_LORA = {
    "tiny-a": (lambda: load_pipeline("tiny-a"), "sd_v1"),
    "tiny-sd2": (lambda: load_sd2("tiny-sd2"), "sd_v2"),
    "tiny-sdxl": (lambda: load_sdxl("tiny-sdxl"), "sdxl_base_v1-0"),
}

ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
        "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def unet_attention(name):
    return ".attentions." in name and (name.endswith(("proj_in", "proj_out")) or name.endswith(ATTN))


def unet_conv(name):
    return name.endswith(("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv",
                          "upsamplers.0.conv"))


def te_layer(name):
    return name.endswith(TE)


# name -> (model, layout, unet filter, text encoder filter, rank, alpha or None, seed, metadata)
LORAS = {
    "a-kohya-attn": ("tiny-a", "kohya", unet_attention, te_layer, 4, 2.0, 11, True),
    "a-kohya-locon": ("tiny-a", "kohya", unet_conv, None, 3, None, 12, False),
    "a-peft": ("tiny-a", "peft", unet_attention, te_layer, 2, None, 13, False),
    "sd2-kohya": ("tiny-sd2", "kohya", lambda n: unet_attention(n) or unet_conv(n), te_layer, 4, 8.0, 14, True),
    # kohya's SDXL trainer: SGM UNet paths, lora_te1_ / lora_te2_
    "xl-kohya": ("tiny-sdxl", "kohya", lambda n: unet_attention(n) or unet_conv(n), te_layer, 4, 2.0, 15, True),
    "xl-peft": ("tiny-sdxl", "peft", unet_attention, te_layer, 2, None, 16, False),
    # the shape of latent-consistency/lcm-lora-sdv1-5: kohya names, UNet only (attention and resnets), alphas
    "a-lcm": ("tiny-a", "kohya", lambda n: unet_attention(n) or unet_conv(n), None, 4, 8.0, 17, False),
}

CASES = [
    ("gen-a-kohya-attn", "tiny-a", [("a-kohya-attn", 0.8)]),
    ("gen-a-kohya-locon", "tiny-a", [("a-kohya-locon", 1.0)]),
    ("gen-a-peft", "tiny-a", [("a-peft", 1.0)]),
    ("gen-a-two", "tiny-a", [("a-kohya-attn", 0.7), ("a-kohya-locon", -0.5)]),
    ("gen-sd2-kohya", "tiny-sd2", [("sd2-kohya", 1.0)]),
    ("gen-xl-kohya", "tiny-sdxl", [("xl-kohya", 0.8)], "euler", 5.0),
    ("gen-xl-peft", "tiny-sdxl", [("xl-peft", 1.0)], "euler", 5.0),
    ("gen-xl-two", "tiny-sdxl", [("xl-kohya", 0.6), ("xl-peft", -0.5)], "euler", 5.0),
    # LCM-LoRA's use: LCMScheduler, 4 steps, guidance 1 (no CFG) or a little above (CFG)
    ("gen-a-lcm-g1", "tiny-a", [("a-lcm", 1.0)], "lcm", 1.0),
    ("gen-a-lcm-g15", "tiny-a", [("a-lcm", 1.0)], "lcm", 1.5),
]

PROMPT, NEGATIVE = "a photo of a cat", "blurry"
STEPS, GUIDANCE, SIZE, SEED = 4, 7.5, 64, 77


def factors(mod, rank, gen):
    """Random down/up factors shaped as kohya and PEFT store them for this layer."""
    if isinstance(mod, torch.nn.Conv2d):
        k = mod.kernel_size[0]
        down = torch.randn(rank, mod.in_channels, k, k, generator=gen) * 0.3
        up = torch.randn(mod.out_channels, rank, 1, 1, generator=gen) * 0.3
    else:
        down = torch.randn(rank, mod.in_features, generator=gen) * 0.3
        up = torch.randn(mod.out_features, rank, generator=gen) * 0.3
    return down, up


def make_lora(name, pipes):
    model, layout, ufilt, tfilt, rank, alpha, seed, meta = LORAS[name]
    pipe = pipes[model]
    gen = torch.Generator("cpu").manual_seed(seed)
    sd = {}
    xl = model == "tiny-sdxl"
    parts = [("unet", pipe.unet, ufilt, "lora_unet_", "unet."),
             ("text_encoder", pipe.text_encoder, tfilt, "lora_te1_text_model_" if xl else "lora_te_text_model_",
              "text_encoder.")]
    if xl:
        parts.append(("text_encoder_2", pipe.text_encoder_2, tfilt, "lora_te2_text_model_", "text_encoder_2."))
    for part, module, filt, kprefix, pprefix in parts:
        if filt is None:
            continue
        for mname, mod in module.named_modules():
            if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or not filt(mname):
                continue
            down, up = factors(mod, rank, gen)
            if layout == "kohya":
                kname = mname
                if part == "unet" and xl:  # kohya trains SDXL on the SGM UNet and names its modules so
                    kname = unet_ldm_name(mname + ".weight", pipe.unet.config)[:-len(".weight")]
                elif part != "unet":  # transformers 5 keeps text_model. in one encoder, not the other
                    kname = mname.removeprefix("text_model.")
                key = kprefix + kname.replace(".", "_")
                sd[key + ".lora_down.weight"] = down.contiguous()
                sd[key + ".lora_up.weight"] = up.contiguous()
                if alpha is not None:
                    sd[key + ".alpha"] = torch.tensor(alpha)
            else:
                sd[pprefix + mname + ".lora_A.weight"] = down.contiguous()
                sd[pprefix + mname + ".lora_B.weight"] = up.contiguous()
    metadata = {"ss_base_model_version": MODELS_LORA[model][1], "ss_network_dim": str(rank)} if meta else None
    path = os.path.join(OUT, name + ".safetensors")
    save_file(sd, path, metadata=metadata)
    return path


def lora_layers(pipe, adapter):
    """The layers an adapter was injected into, per component."""
    from peft.tuners.lora import LoraLayer

    n = {}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        for _, mod in getattr(pipe, comp, None).named_modules() if getattr(pipe, comp, None) else ():
            if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
                n[comp] = n.get(comp, 0) + 1
    return n


def written(path):
    """The modules of a LoRA file, per component, as it names them."""
    from safetensors import safe_open

    n = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            if k.endswith((".alpha", ".lora_up.weight", ".lora_B.weight")):
                continue
            comp = ("text_encoder_2" if k.startswith(("lora_te2_", "text_encoder_2.")) else
                    "text_encoder" if k.startswith(("lora_te", "text_encoder.")) else "unet")
            n[comp] = n.get(comp, 0) + 1
    return n


@torch.no_grad()
def run_case(case, pipes, files):
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    name, model, loras, sampler, guidance = (case + ("euler", GUIDANCE))[:5]
    pipe = pipes[model]
    cls = {"euler": EulerDiscreteScheduler, "lcm": LCMScheduler}[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    names = []
    for i, (lora, _) in enumerate(loras):
        adapter = f"{name}_{i}"
        pipe.load_lora_weights(files[lora], adapter_name=adapter)
        # diffusers skips what it cannot place without a word: every module written must be in the model
        assert lora_layers(pipe, adapter) == written(files[lora]), (name, lora_layers(pipe, adapter))
        names.append(adapter)
    pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    out = {}
    for otype in ("latent", "np"):
        gen = torch.Generator("cpu").manual_seed(SEED)
        r = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=guidance,
                 width=SIZE, height=SIZE, generator=gen, output_type=otype).images
        if otype == "latent":
            out["latents"] = r.float().contiguous()
        else:
            out["image"] = torch.from_numpy((np.asarray(r[0]) * 255).round().astype(np.float32)).contiguous()
    pipe.delete_adapters(names)
    save_file(out, os.path.join(OUT, name + ".safetensors"))
    return {"name": name, "model": model, "kind": "txt2img", "prompt": PROMPT, "negative_prompt": NEGATIVE,
            "steps": STEPS, "guidance": guidance, "width": SIZE, "height": SIZE, "seed": SEED, "sampler": sampler,
            "loras": [{"file": f + ".safetensors", "weight": w} for f, w in loras]}


def main():
    os.makedirs(OUT, exist_ok=True)
    pipes = {m: load() for m, (load, _) in MODELS_LORA.items()}
    files = {n: make_lora(n, pipes) for n in LORAS}
    cases = [run_case(c, pipes, files) for c in CASES]
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
