#!/usr/bin/env python3
"""Tiny random-weight SDXL models and their reference outputs.

Writes, under tests/fixtures/:
  models/tiny-sdxl/             an SDXL base-like pipeline as diffusers 0.42 + transformers 5 save it: a
                                ViT-L-like CLIPTextModel (quick_gelu, no text_model. prefix) and a bigG-like
                                CLIPTextModelWithProjection (gelu, text_model. prefix, text_projection), their
                                tokenizers (tokenizer.json only; the second pads with "!"), a UNet with an
                                attention-free first level, transformer_layers_per_block [1, 2], per-level heads
                                and the text_time addition embedding, the VAE with scaling_factor 0.13025, SDXL
                                base's Euler scheduler, force_zeros_for_empty_prompt
  models/tiny-sdxl-turbo/       the same weights (its parts are links to tiny-sdxl's) with SDXL-Turbo's
                                Euler ancestral / trailing scheduler, in the old hub layout: both tokenizers
                                as vocab.json + merges.txt, the first text encoder's keys text_model.-prefixed
  models/tiny-sdxl.safetensors  tiny-sdxl as a single SGM file (sd_xl_base_1.0.safetensors' layout): ViT-L under
                                conditioner.embedders.0.transformer., bigG in OpenCLIP's names under
                                conditioner.embedders.1.model. (fused in_proj, text_projection transposed), the
                                UNet's CompVis names with label_emb, the VAE's; checked by loading it back with
                                diffusers' from_single_file(config=tiny-sdxl)
  embeds-tiny-sdxl.safetensors  ids / ids_2 (padded with 49407 / 0), hidden_1 / hidden_2 (hidden_states[-2]
                                of each encoder: no final LayerNorm), embeds (their concatenation, what
                                encode_prompt gives) and pooled (text_embeds of the second encoder)
  unet-tiny-sdxl.safetensors    latents, timesteps, encoder states, text_embeds, time_ids -> UNet output
  pipeline-sdxl/cases.json      txt2img / img2img / inpaint / Turbo cases in pipeline/README.md's format, plus
                                original_size / crops_coords_top_left / target_size; a null negative_prompt
                                is "none given" (zeroed by force_zeros_for_empty_prompt)
  pipeline-sdxl/<case>.safetensors  "latents" and "image" as pipeline/<case>.safetensors

Usage: /opt/sdw-ref/bin/python tests/reference/fixtures_sdxl.py
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from fixtures_unet_vae import unet_ldm_name, vae_ldm_name  # noqa: E402
from make_fixtures import BOS, EOS, FIX, MAX_LEN, MODELS, VAE_CONFIG, randomize, tokenize77, write_tokenizer_files  # noqa: E402,E501
from prompts import EMBED_PROMPTS  # noqa: E402

NAME, TURBO = "tiny-sdxl", "tiny-sdxl-turbo"
OUT = os.path.join(FIX, "pipeline-sdxl")
INPUTS = os.path.join(FIX, "pipeline")  # init and mask images shared with the SD cases
SEED = 5005

TEXT_1 = dict(hidden_size=8, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, hidden_act="quick_gelu")
TEXT_2 = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, hidden_act="gelu",
              projection_dim=12)
TIME_DIM = 8
UNET = dict(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=[1, 2],
            transformer_layers_per_block=[1, 2], cross_attention_dim=8 + 16, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
            projection_class_embeddings_input_dim=12 + 6 * TIME_DIM)
# stabilityai/stable-diffusion-xl-base-1.0's scheduler_config.json
BASE_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}
# stabilityai/sdxl-turbo's
TURBO_SCHEDULER = {"_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                   "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                   "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                   "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False}


def tokenizers(tmp):
    from transformers import CLIPTokenizer

    write_tokenizer_files(tmp)
    v, m = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
    tok = CLIPTokenizer(v, m, pad_token="<|endoftext|>", model_max_length=MAX_LEN)
    tok2 = CLIPTokenizer(v, m, pad_token="!", model_max_length=MAX_LEN)
    assert tok.pad_token_id == EOS and tok2.pad_token_id == 0
    return tok, tok2


def build(tok, tok2):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    gen = torch.Generator("cpu").manual_seed(SEED)
    common = dict(vocab_size=49408, max_position_embeddings=MAX_LEN, layer_norm_eps=1e-5, bos_token_id=0,
                  eos_token_id=2, pad_token_id=1)  # the legacy ids SDXL's configs ship: pooled at argmax(ids)
    text = CLIPTextModel(CLIPTextConfig(**common, **TEXT_1))
    text2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, **TEXT_2))
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025)
    for m in (text, text2, unet, vae):
        randomize(m, gen)
    sched = EulerDiscreteScheduler.from_config(BASE_SCHEDULER)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)


def load(name, cls=None):
    from diffusers import StableDiffusionXLPipeline

    pipe = (cls or StableDiffusionXLPipeline).from_pretrained(os.path.join(MODELS, name), torch_dtype=torch.float32,
                                                             local_files_only=True, add_watermarker=False)
    assert pipe.tokenizer.pad_token_id == EOS and pipe.tokenizer_2.pad_token_id == 0
    assert pipe.config.force_zeros_for_empty_prompt
    return pipe


def make_models(tok, tok2):
    out = os.path.join(MODELS, NAME)
    pipe = build(tok, tok2)
    pipe.to(torch.float16)
    if os.path.isdir(out):
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for t in ("tokenizer", "tokenizer_2"):
        assert sorted(os.listdir(os.path.join(out, t))) == ["tokenizer.json", "tokenizer_config.json"]
    keys1 = load_file(os.path.join(out, "text_encoder", "model.safetensors"))
    keys2 = load_file(os.path.join(out, "text_encoder_2", "model.safetensors"))
    assert "embeddings.token_embedding.weight" in keys1 and "text_model.embeddings.token_embedding.weight" in keys2
    assert "text_projection.weight" in keys2
    back = load(NAME)
    for comp in ("text_encoder", "text_encoder_2", "unet", "vae"):
        saved = dict(getattr(pipe, comp).named_parameters())
        for pname, p in getattr(back, comp).named_parameters():
            assert torch.equal(p, saved[pname].float()), f"{comp}/{pname} did not round-trip"

    # Turbo: links to tiny-sdxl's UNet and VAE, its own scheduler, the old layout for the rest
    tout = os.path.join(MODELS, TURBO)
    if os.path.isdir(tout):
        shutil.rmtree(tout)
    os.makedirs(tout)
    for part in ("unet", "vae", "text_encoder_2"):
        os.symlink(os.path.join("..", NAME, part), os.path.join(tout, part))
    os.makedirs(os.path.join(tout, "text_encoder"))
    shutil.copyfile(os.path.join(out, "text_encoder", "config.json"), os.path.join(tout, "text_encoder", "config.json"))
    save_file({"text_model." + k: v for k, v in sorted(keys1.items())},
              os.path.join(tout, "text_encoder", "model.safetensors"), metadata={"format": "pt"})
    for t, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        d = os.path.join(tout, t)
        os.makedirs(d)
        if t == "tokenizer":
            write_tokenizer_files(d)
        else:  # the same vocabulary: SDXL's two tokenizers differ in the pad token only
            for f in ("vocab.json", "merges.txt"):
                os.symlink(os.path.join("..", "tokenizer", f), os.path.join(d, f))
        with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
            json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
                       "unk_token": "<|endoftext|>"}, f, indent=2)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": MAX_LEN, "tokenizer_class": "CLIPTokenizer", "pad_token": pad}, f, indent=2)
    os.makedirs(os.path.join(tout, "scheduler"))
    with open(os.path.join(tout, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(TURBO_SCHEDULER, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "model_index.json")) as f:
        index = json.load(f)
    index["scheduler"] = ["diffusers", TURBO_SCHEDULER["_class_name"]]
    with open(os.path.join(tout, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    turbo = load(TURBO)
    assert type(turbo.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert turbo.scheduler.config.timestep_spacing == "trailing"
    ids = tokenize77(turbo.tokenizer_2, EMBED_PROMPTS)
    assert ids == tokenize77(back.tokenizer_2, EMBED_PROMPTS)
    assert tokenize77(turbo.tokenizer, EMBED_PROMPTS) == tokenize77(back.tokenizer, EMBED_PROMPTS)
    for comp in ("text_encoder", "text_encoder_2"):
        a, b = dict(getattr(back, comp).named_parameters()), dict(getattr(turbo, comp).named_parameters())
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), comp


def openclip_state(text):
    """A CLIPTextModelWithProjection as SGM's FrozenOpenCLIPEmbedder2 holds it: every block, q/k/v fused."""
    sd = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
           "positional_embedding": sd["embeddings.position_embedding.weight"],
           "ln_final.weight": sd["final_layer_norm.weight"], "ln_final.bias": sd["final_layer_norm.bias"],
           # OpenCLIP multiplies by it (x @ P); a Linear's weight is its transpose
           "text_projection": sd["text_projection.weight"].t()}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(text.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in parts.items():
            for leaf in ("weight", "bias"):
                out[f"{dst}{b}.{leaf}"] = sd[f"{src}{a}.{leaf}"]
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{leaf}"] for x in "qkv"], 0)
    return out


@torch.no_grad()
def make_single():
    from diffusers import StableDiffusionXLPipeline

    pipe = load(NAME)
    dt = torch.float16
    sgm = {"conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model."): v
           for k, v in pipe.text_encoder.state_dict().items()}
    sgm.update({"conditioner.embedders.1.model." + k: v for k, v in openclip_state(pipe.text_encoder_2).items()})
    ucfg, vcfg = dict(pipe.unet.config), dict(pipe.vae.config)
    label = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
    for k, v in pipe.unet.state_dict().items():
        pre = next((p for p in label if k.startswith(p)), None)
        nm = label[pre] + k[len(pre):] if pre else unet_ldm_name(k, ucfg)
        sgm["model.diffusion_model." + nm] = v
    for k, v in pipe.vae.state_dict().items():
        nm = vae_ldm_name(k, vcfg)
        if ".attn_1." in nm and v.ndim == 2:
            v = v[:, :, None, None]
        sgm["first_stage_model." + nm] = v
    path = os.path.join(MODELS, f"{NAME}.safetensors")
    save_file({k: v.to(dt).contiguous() for k, v in sorted(sgm.items())}, path)

    back = StableDiffusionXLPipeline.from_single_file(path, config=os.path.join(MODELS, NAME), torch_dtype=torch.float32,
                                                      local_files_only=True, add_watermarker=False)
    for comp in ("text_encoder", "text_encoder_2", "unet", "vae"):
        want, got = getattr(pipe, comp).state_dict(), getattr(back, comp).state_dict()
        assert set(want) == set(got), (comp, sorted(set(want) ^ set(got))[:5])
        for k, v in want.items():
            assert torch.equal(got[k], v), f"{NAME}.safetensors: {comp}/{k} differs from the folder"


@torch.no_grad()
def make_embeds():
    pipe = load(NAME)
    ids = torch.tensor(tokenize77(pipe.tokenizer, EMBED_PROMPTS), dtype=torch.long)
    ids2 = torch.tensor(tokenize77(pipe.tokenizer_2, EMBED_PROMPTS), dtype=torch.long)
    assert (ids2[:, -1] == 0).any() and (ids[:, -1] == EOS).any()
    o1 = pipe.text_encoder(ids, output_hidden_states=True)
    o2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    h1, h2 = o1.hidden_states[-2], o2.hidden_states[-2]
    pooled = o2.text_embeds
    # pooled: the projection of the final-LayerNormed state at the first EOS (49407, the largest id)
    eos = ids2.argmax(-1)
    by_hand = pipe.text_encoder_2.text_projection(o2.last_hidden_state[torch.arange(len(ids2)), eos])
    assert torch.allclose(by_hand, pooled, atol=0, rtol=0)
    embeds, neg, pooled_ref, neg_pooled = pipe.encode_prompt(EMBED_PROMPTS, device="cpu",
                                                             do_classifier_free_guidance=True)
    assert torch.equal(embeds, torch.cat([h1, h2], -1)) and torch.equal(pooled_ref, pooled)
    assert not neg.any() and not neg_pooled.any()  # no negative prompt: zeros (force_zeros_for_empty_prompt)
    _, neg, _, neg_pooled = pipe.encode_prompt(EMBED_PROMPTS, device="cpu", do_classifier_free_guidance=True,
                                               negative_prompt=[""] * len(EMBED_PROMPTS))
    assert torch.equal(neg[1], embeds[1]) and torch.equal(neg_pooled[1], pooled[1])  # an explicit "" is encoded
    save_file({"ids": ids.float().contiguous(), "ids_2": ids2.float().contiguous(), "hidden_1": h1.contiguous(),
               "hidden_2": h2.contiguous(), "embeds": embeds.contiguous(), "pooled": pooled.contiguous()},
              os.path.join(FIX, f"embeds-{NAME}.safetensors"),
              metadata={"prompts": json.dumps(EMBED_PROMPTS, ensure_ascii=False)})


@torch.no_grad()
def make_unet():
    unet = load(NAME).unet.eval()
    g = torch.Generator("cpu").manual_seed(SEED + 2)
    lat = torch.randn((2, 4, 8, 12), generator=g)
    t = torch.tensor([999.0, 500.5])
    enc = torch.randn((2, MAX_LEN, unet.config.cross_attention_dim), generator=g)
    text_embeds = torch.randn((2, 12), generator=g)
    time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0], [1024.0, 768.0, 16.0, 32.0, 512.0, 640.0]])
    out = unet(lat, t, encoder_hidden_states=enc,
               added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
    save_file({"latents": lat.contiguous(), "timesteps": t, "encoder_hidden_states": enc.contiguous(),
               "text_embeds": text_embeds.contiguous(), "time_ids": time_ids, "eps": out.contiguous()},
              os.path.join(FIX, f"unet-{NAME}.safetensors"))


# --------------------------------------------------------------------------
# pipeline cases


def case(name, model=NAME, kind="txt2img", sampler="euler", steps=4, guidance=5.0, width=64, height=64, seed=0,
         prompt="a photo of a cat", negative_prompt="blurry", strength=None, init=None, mask=None, original=None,
         crop=None, target=None):
    return {"name": name, "model": model, "kind": kind, "prompt": prompt, "negative_prompt": negative_prompt,
            "steps": steps, "guidance": guidance, "width": width, "height": height, "seed": seed,
            "sampler": sampler, "eta": 0.0, "strength": strength, "init_image": init, "mask_image": mask,
            "original_size": original, "crops_coords_top_left": crop, "target_size": target}


CASES = [
    case("sdxl-txt2img-euler", seed=1100),
    case("sdxl-txt2img-euler_a", sampler="euler_a", seed=1101),
    case("sdxl-txt2img-no-negative", negative_prompt=None, seed=1102),
    case("sdxl-txt2img-empty-negative", negative_prompt="", seed=1103),
    case("sdxl-txt2img-nocfg", guidance=1.0, seed=1104),
    case("sdxl-txt2img-time-ids", width=96, height=64, seed=1105, original={"width": 1024, "height": 768},
         crop={"top": 16, "left": 32}, target={"width": 640, "height": 512}),
    case("sdxl-img2img-euler-s0.6", kind="img2img", steps=10, strength=0.6, seed=1110, init="init-64x64.png"),
    case("sdxl-img2img-euler_a-s0.3", kind="img2img", sampler="euler_a", steps=10, strength=0.3, seed=1111,
         init="init-64x64.png", negative_prompt=None),
    case("sdxl-inpaint-euler_a-s0.75", kind="inpaint", sampler="euler_a", strength=0.75, seed=1120,
         init="init-64x64.png", mask="mask-64x64.png"),
    case("sdxl-inpaint-euler-s1", kind="inpaint", strength=1.0, seed=1121, init="init-64x64.png",
         mask="mask-64x64.png"),
    case("sdxl-turbo-1step", model=TURBO, sampler=None, steps=1, guidance=0.0, seed=1130, negative_prompt=None),
    case("sdxl-turbo-4step", model=TURBO, sampler=None, steps=4, guidance=0.0, seed=1131, negative_prompt=None),
]


def pipeline_for(c, loaded):
    from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline)

    base = loaded[c["model"]]
    comps = dict(base.components)
    cls = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
           None: type(base.scheduler)}[c["sampler"]]
    comps["scheduler"] = cls.from_config(base.scheduler.config)
    if c["kind"] == "txt2img":
        pipe = StableDiffusionXLPipeline(**comps, force_zeros_for_empty_prompt=True, add_watermarker=False)
    else:
        cls = StableDiffusionXLImg2ImgPipeline if c["kind"] == "img2img" else StableDiffusionXLInpaintPipeline
        pipe = cls(**comps, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hw(d):
    return None if d is None else (d["height"], d["width"])


@torch.no_grad()
def run(c, loaded, output_type):
    pipe = pipeline_for(c, loaded)
    kw = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
              guidance_scale=c["guidance"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
              output_type=output_type)
    if c["original_size"]:
        kw["original_size"] = hw(c["original_size"])
    if c["crops_coords_top_left"]:
        kw["crops_coords_top_left"] = (c["crops_coords_top_left"]["top"], c["crops_coords_top_left"]["left"])
    if c["target_size"]:
        kw["target_size"] = hw(c["target_size"])
    if c["kind"] == "txt2img":
        kw.update(height=c["height"], width=c["width"])
    else:
        kw.update(image=Image.open(os.path.join(INPUTS, c["init_image"])), strength=c["strength"])
    if c["kind"] == "inpaint":
        kw.update(mask_image=Image.open(os.path.join(INPUTS, c["mask_image"])), height=c["height"], width=c["width"])
    return pipe, pipe(**kw).images


@torch.no_grad()
def make_case(c, loaded):
    pipe, latents = run(c, loaded, "latent")
    _, image = run(c, loaded, "np")
    assert latents.shape == (1, 4, c["height"] // 8, c["width"] // 8), (c["name"], latents.shape)
    dec = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    again = pipe.image_processor.postprocess(dec, output_type="np")
    assert np.array_equal(again, image), f"{c['name']}: latent decode differs from output_type='np'"
    pixels = (image[0] * 255).round().astype(np.uint8)
    save_file({"latents": latents.contiguous(), "image": torch.from_numpy(pixels.astype(np.float32)).contiguous()},
              os.path.join(OUT, c["name"] + ".safetensors"))


@torch.no_grad()
def check_time_ids(loaded):
    """The order diffusers builds add_time_ids in: (orig h, w, crop top, left, target h, w)."""
    pipe = pipeline_for(CASES[0], loaded)
    ids = pipe._get_add_time_ids((768, 1024), (16, 32), (512, 640), dtype=torch.float32,
                                 text_encoder_projection_dim=12)
    assert ids.tolist() == [[768.0, 1024.0, 16.0, 32.0, 512.0, 640.0]], ids


def main():
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        make_models(*tokenizers(tmp))
    make_single()
    make_embeds()
    make_unet()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    loaded = {NAME: load(NAME), TURBO: load(TURBO)}
    check_time_ids(loaded)
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    for c in CASES:
        make_case(c, loaded)
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c) for c in CASES) + "\n]\n")


if __name__ == "__main__":
    main()
