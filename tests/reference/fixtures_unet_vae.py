#!/usr/bin/env python3
"""Reference outputs of the tiny fixture models' UNet and VAE, and the LDM key maps.

Writes, under tests/fixtures/:
  unet-<model>.safetensors  latents, timesteps, encoder states -> eps (diffusers UNet2DConditionModel)
  vae-<model>.safetensors   latents -> decoded image; image -> posterior mean and sample (noise stored)
  vae-<model>-128.safetensors  the same for tiny-a at 128x128, where the 3x3 convolutions cover
                            enough pixels for the CPU backend's Winograd path (128 tiles or more)
  ldm-keys-<model>.json     {diffusers name: LDM single-file name} for the UNet and VAE, checked by
                            running diffusers' own single-file converters on a state dict keyed that way

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_unet_vae.py  (needs make_fixtures.py's models)
Deterministic: running it twice gives identical files.
"""

import json
import os
import re
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from make_fixtures import FIX, load_pipeline  # noqa: E402

# Per model: batch-2 latent shape and timesteps (one training-like, one fractional).
CASES = {
    "tiny-a": {"latent": (2, 4, 8, 8), "t": [981.0, 500.5], "image": (1, 3, 16, 16)},
    "tiny-b": {"latent": (2, 4, 8, 12), "t": [999.0, 0.25], "image": (2, 3, 16, 24)},
}


def unet_ldm_name(name, cfg):
    """Our reading of the LDM layout (the note in sd15-numerics.md), generic in block count."""
    L = cfg["layers_per_block"]
    has_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def resnet(rest):
        part, tail = rest.split(".", 1)
        return res[part] + "." + tail

    for k, v in fixed.items():
        if name.startswith(k + "."):
            return v + name[len(k):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = i * (L + 1) + j + 1
        return f"input_blocks.{idx}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = i * (L + 1) + j
        return f"output_blocks.{idx}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", name)
    if m:
        i = int(m[1])
        return f"output_blocks.{i * (L + 1) + L}.{2 if has_attn[i] else 1}.conv.{m[2]}"
    raise ValueError(name)


def vae_ldm_name(name, cfg):
    n = len(cfg["block_out_channels"])
    res = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

    def resnet(rest):
        part, tail = rest.split(".", 1)
        return res.get(part, part) + "." + tail

    for side in ("encoder", "decoder"):
        p = side + "."
        if not name.startswith(p):
            continue
        rest = name[len(p):]
        if rest.startswith("conv_norm_out."):
            return p + "norm_out." + rest[len("conv_norm_out."):]
        m = re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest)
        if m:
            i = int(m[2]) if m[1] == "down" else n - 1 - int(m[2])
            return f"{p}{m[1]}.{i}.block.{m[3]}.{resnet(m[4])}"
        m = re.match(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.(.*)", rest)
        if m:
            i = int(m[2]) if m[1] == "down" else n - 1 - int(m[2])
            return f"{p}{m[1]}.{i}.{m[3]}sample.{m[4]}"
        m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest)
        if m:
            return f"{p}mid.block_{int(m[1]) + 1}.{resnet(m[2])}"
        m = re.match(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", rest)
        if m:
            return f"{p}mid.attn_1.{attn[m[1]]}.{m[2]}"
        return name
    return name  # quant_conv, post_quant_conv


def check_map(sd, cfg, namer, convert, prefix):
    """Re-key sd the LDM way, convert back with diffusers, and demand the identity."""
    mapping = {k: namer(k, cfg) for k in sd}
    assert len(set(mapping.values())) == len(mapping)
    ldm = {}
    for k, v in sd.items():
        # the original VAE stores its attention projections as 1x1 convs
        if prefix == "first_stage_model." and ".attn_1." in mapping[k] and v.ndim == 2:
            v = v[:, :, None, None]
        ldm[prefix + mapping[k]] = v
    back = convert(ldm, cfg)
    assert set(back) == set(sd), sorted(set(back) ^ set(sd))[:10]
    for k, v in sd.items():
        assert torch.equal(back[k].reshape(v.shape), v), k
    return mapping


def vae_case(vae, shape, g, path):
    z = torch.randn((shape[0], 4, shape[2] // 8, shape[3] // 8), generator=g)
    dec = vae.decode(z / vae.config.scaling_factor).sample
    img = torch.rand(shape, generator=g) * 2 - 1
    post = vae.encode(img).latent_dist
    noise = torch.randn(post.mean.shape, generator=g)
    sample = post.mean + post.std * noise
    save_file({"latents": z.contiguous(), "decoded": dec.contiguous(), "image": img.contiguous(),
               "mean": (post.mean * vae.config.scaling_factor).contiguous(), "noise": noise.contiguous(),
               "sample": (sample * vae.config.scaling_factor).contiguous()}, path)


@torch.no_grad()
def main():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    for name, case in CASES.items():
        pipe = load_pipeline(name)
        unet, vae = pipe.unet.eval(), pipe.vae.eval()
        ucfg, vcfg = dict(unet.config), dict(vae.config)
        g = torch.Generator("cpu").manual_seed(2024)

        lat = torch.randn(case["latent"], generator=g)
        t = torch.tensor(case["t"], dtype=torch.float32)
        enc = torch.randn((lat.shape[0], 77, ucfg["cross_attention_dim"]), generator=g)
        eps = unet(lat, t, encoder_hidden_states=enc).sample
        save_file({"latents": lat.contiguous(), "timesteps": t, "encoder_hidden_states": enc.contiguous(),
                   "eps": eps.contiguous()}, os.path.join(FIX, f"unet-{name}.safetensors"))

        vae_case(vae, case["image"], g, os.path.join(FIX, f"vae-{name}.safetensors"))
        umap = check_map(unet.state_dict(), ucfg, unet_ldm_name, convert_ldm_unet_checkpoint,
                         "model.diffusion_model.")
        vmap = check_map(vae.state_dict(), vcfg, vae_ldm_name, convert_ldm_vae_checkpoint, "first_stage_model.")
        with open(os.path.join(FIX, f"ldm-keys-{name}.json"), "w") as f:
            json.dump({"unet": umap, "vae": vmap}, f, indent=0, sort_keys=True)
            f.write("\n")

    vae = load_pipeline("tiny-a").vae.eval()
    vae_case(vae, (1, 3, 128, 128), torch.Generator("cpu").manual_seed(2025),
             os.path.join(FIX, "vae-tiny-a-128.safetensors"))


if __name__ == "__main__":
    main()
