#!/usr/bin/env python3
"""Tiny random-weight Stable Diffusion 2.x models and their reference outputs.

Writes, under tests/fixtures/:
  models/tiny-sd2/              an SD 2.1-like pipeline as diffusers 0.42 + transformers 5 save it: gelu
                                text encoder (no text_model. prefix), tokenizer padding with "!" (id 0,
                                tokenizer.json only), UNet with per-level heads, linear projections and
                                upcast attention, DDIM with v-prediction
  models/tiny-sd2-inpaint/      the same shape with a 9-channel UNet, epsilon, PNDM (SD 2 inpainting)
  models/tiny-sd2.safetensors   tiny-sd2 as a single LDM file: OpenCLIP text tower (fused in_proj, one
                                unused block more, text_projection), CompVis UNet and VAE names; checked
                                by loading it back with diffusers' from_single_file(config=tiny-sd2)
  embeds-<model>.safetensors    ids (padded with 0), embeds (what the SD 2 pipeline's encode_prompt gives:
                                last_hidden_state), embeds_clip_skip1 (final LN over hidden_states[-2])
  unet-<model>.safetensors      latents, timesteps, encoder states -> UNet output (v for tiny-sd2)

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_sd2.py
Deterministic: running it twice gives identical files.
"""

import json
import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from fixtures_unet_vae import unet_ldm_name, vae_ldm_name  # noqa: E402
from make_fixtures import (BOS, EOS, FIX, MAX_LEN, MODELS, SD15_SCHEDULER, VAE_CONFIG, randomize,  # noqa: E402
                           tokenize77, write_tokenizer_files)
from prompts import EMBED_PROMPTS  # noqa: E402

PAD = 0  # "!": SD 2's tokenizer pads with it

# stabilityai/stable-diffusion-2-1's and -2-inpainting's scheduler configs differ from SD 1.5's in the
# class and prediction type only, and carry no timestep_spacing.
SD2_SCHEDULER = {k: v for k, v in SD15_SCHEDULER.items() if k != "timestep_spacing"}

TEXT = dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
UNET = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=[2, 4],
            use_linear_projection=True, sample_size=8, norm_num_groups=8, out_channels=4)

SD2 = {
    "tiny-sd2": dict(seed=3003, dtype=torch.float16, in_channels=4, upcast_attention=True,
                     scheduler="DDIMScheduler", prediction_type="v_prediction", single_file=True,
                     latent=(2, 4, 8, 8), t=[999.0, 500.5]),
    "tiny-sd2-inpaint": dict(seed=3004, dtype=torch.float16, in_channels=9, upcast_attention=False,
                             scheduler="PNDMScheduler", prediction_type="epsilon", single_file=False,
                             latent=(2, 9, 8, 12), t=[981.0, 1.0]),
}


def build_tokenizer(tmpdir):
    from transformers import CLIPTokenizer

    write_tokenizer_files(tmpdir)
    tok = CLIPTokenizer(os.path.join(tmpdir, "vocab.json"), os.path.join(tmpdir, "merges.txt"), pad_token="!",
                        model_max_length=MAX_LEN)
    assert tok.pad_token_id == PAD and tok.bos_token_id == BOS and tok.eos_token_id == EOS
    ids = tok("a photo of a cat", padding="max_length", max_length=MAX_LEN).input_ids
    assert ids[:8] == [BOS, 320, 1125, 539, 320, 2368, EOS, PAD] and ids[-1] == PAD, ids[:8]
    return tok


def pipeline_class(spec):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    return StableDiffusionInpaintPipeline if spec["in_channels"] == 9 else StableDiffusionPipeline


def build_pipeline(tok, spec):
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator("cpu").manual_seed(spec["seed"])
    # built fresh, so transformers 5 saves it without the text_model. prefix
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=MAX_LEN, hidden_act="gelu",
                                        layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1,
                                        **TEXT))
    unet = UNet2DConditionModel(in_channels=spec["in_channels"], upcast_attention=spec["upcast_attention"], **UNET)
    vae = AutoencoderKL(**VAE_CONFIG)
    for m in (text, unet, vae):
        randomize(m, gen)
    sched = getattr(diffusers, spec["scheduler"]).from_config(dict(SD2_SCHEDULER,
                                                                   prediction_type=spec["prediction_type"]))
    return pipeline_class(spec)(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load(name):
    """A fixture model back from disk in float32: the rounded weights the C code reads."""
    pipe = pipeline_class(SD2[name]).from_pretrained(os.path.join(MODELS, name), torch_dtype=torch.float32,
                                                     local_files_only=True)
    assert pipe.tokenizer.pad_token_id == PAD
    return pipe


def make_models(tok):
    for name, spec in SD2.items():
        out = os.path.join(MODELS, name)
        pipe = build_pipeline(tok, spec)
        pipe.to(spec["dtype"])
        if os.path.isdir(out):
            shutil.rmtree(out)
        pipe.save_pretrained(out, safe_serialization=True)
        assert sorted(os.listdir(os.path.join(out, "tokenizer"))) == ["tokenizer.json", "tokenizer_config.json"]
        back = load(name)
        assert back.scheduler.config.prediction_type == spec["prediction_type"]
        for comp in ("text_encoder", "unet", "vae"):
            saved = dict(getattr(pipe, comp).named_parameters())
            for pname, p in getattr(back, comp).named_parameters():
                assert torch.equal(p, saved[pname].float()), f"{name}/{comp}/{pname} did not round-trip"


# --------------------------------------------------------------------------
# single file


def openclip_state(text, gen, dtype):
    """The text encoder as an LDM file's OpenCLIP tower holds it, with the block and the projection SD 2
    leaves unused drawn at random (the real files have them)."""
    sd = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    p = "cond_stage_model.model."
    n, d = text.config.num_hidden_layers, text.config.hidden_size
    out = {p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           p + "positional_embedding": sd["embeddings.position_embedding.weight"],
           p + "ln_final.weight": sd["final_layer_norm.weight"], p + "ln_final.bias": sd["final_layer_norm.bias"]}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(n + 1):
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        if i == n:  # unused: random, shaped like the others
            sd.update({src + k[len(f"encoder.layers.{n - 1}."):]: torch.randn(v.shape, generator=gen) * 0.1
                       for k, v in list(sd.items()) if k.startswith(f"encoder.layers.{n - 1}.")})
        for a, b in parts.items():
            for leaf in ("weight", "bias"):
                out[f"{dst}{b}.{leaf}"] = sd[f"{src}{a}.{leaf}"]
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat(
                [sd[f"{src}self_attn.{x}_proj.{leaf}"] for x in "qkv"], 0)
    out[p + "text_projection"] = torch.randn((d, d), generator=gen) / d ** 0.5
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


@torch.no_grad()
def make_single(name):
    from diffusers import StableDiffusionPipeline

    spec = SD2[name]
    pipe = load(name)
    gen = torch.Generator("cpu").manual_seed(spec["seed"] + 1)
    ldm = openclip_state(pipe.text_encoder, gen, spec["dtype"])
    ucfg, vcfg = dict(pipe.unet.config), dict(pipe.vae.config)
    for k, v in pipe.unet.state_dict().items():
        ldm["model.diffusion_model." + unet_ldm_name(k, ucfg)] = v.to(spec["dtype"]).contiguous()
    for k, v in pipe.vae.state_dict().items():
        nm = vae_ldm_name(k, vcfg)
        if ".attn_1." in nm and v.ndim == 2:  # the original VAE's attention projections are 1x1 convs
            v = v[:, :, None, None]
        ldm["first_stage_model." + nm] = v.to(spec["dtype"]).contiguous()
    path = os.path.join(MODELS, f"{name}.safetensors")
    save_file(dict(sorted(ldm.items())), path)

    # The reference's own converters must read it back to the folder's weights.
    back = StableDiffusionPipeline.from_single_file(path, config=os.path.join(MODELS, name), torch_dtype=torch.float32,
                                                    local_files_only=True)
    for comp in ("text_encoder", "unet", "vae"):
        want, got = getattr(pipe, comp).state_dict(), getattr(back, comp).state_dict()
        assert set(want) == set(got), sorted(set(want) ^ set(got))[:5]
        for k, v in want.items():
            assert torch.equal(got[k], v), f"{name}.safetensors: {comp}/{k} differs from the folder"
    return back


# --------------------------------------------------------------------------
# reference outputs


@torch.no_grad()
def make_embeds(name, single=None):
    pipe = load(name)
    te = pipe.text_encoder.eval()
    ids = torch.tensor(tokenize77(pipe.tokenizer, EMBED_PROMPTS), dtype=torch.long)
    assert (ids[:, -1] == PAD).any()
    out = te(ids, output_hidden_states=True)
    embeds = out.last_hidden_state
    ref, _ = pipe.encode_prompt(EMBED_PROMPTS, "cpu", 1, False)
    assert torch.equal(ref, embeds)
    if single is not None:
        assert torch.equal(single.text_encoder(ids).last_hidden_state, embeds)
    save_file({"ids": ids.to(torch.float32).contiguous(), "embeds": embeds.contiguous(),
               "embeds_clip_skip1": te.final_layer_norm(out.hidden_states[-2]).contiguous()},
              os.path.join(FIX, f"embeds-{name}.safetensors"),
              metadata={"prompts": json.dumps(EMBED_PROMPTS, ensure_ascii=False)})


@torch.no_grad()
def make_unet(name):
    spec = SD2[name]
    unet = load(name).unet.eval()
    g = torch.Generator("cpu").manual_seed(spec["seed"] + 2)
    lat = torch.randn(spec["latent"], generator=g)
    t = torch.tensor(spec["t"], dtype=torch.float32)
    enc = torch.randn((lat.shape[0], MAX_LEN, unet.config.cross_attention_dim), generator=g)
    out = unet(lat, t, encoder_hidden_states=enc).sample
    save_file({"latents": lat.contiguous(), "timesteps": t, "encoder_hidden_states": enc.contiguous(),
               "eps": out.contiguous()}, os.path.join(FIX, f"unet-{name}.safetensors"))


def main():
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        make_models(build_tokenizer(tmp))
    for name, spec in SD2.items():
        single = make_single(name) if spec["single_file"] else None
        make_embeds(name, single)
        make_unet(name)


if __name__ == "__main__":
    main()
