#!/usr/bin/env python3
"""Regenerate the committed reference fixtures under tests/fixtures/.

PyTorch + diffusers + transformers are the source of truth; the C tests only
read what this script writes. Output is deterministic: running it twice gives
byte-identical files.

Usage (from anywhere):
    /opt/sdw-ref/bin/python tests/reference/make_fixtures.py [--only GROUP ...]

Groups: tokens, tokens-sd2, randn, models, embeds, today. 'embeds' and 'today' read the
models from disk, so they need 'models' to have been run once.
"""

import argparse
import gzip
import json
import math
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "data")
FIX = os.path.join(ROOT, "tests", "fixtures")
MODELS = os.path.join(FIX, "models")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep tests/reference free of __pycache__

from prompts import EMBED_PROMPTS, PROMPTS  # noqa: E402

BOS, EOS = 49406, 49407
MAX_LEN = 77
# HF's CLIPTokenizer keeps merges[1 : 49152 - 256 - 2 + 1] of the merges file.
N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode():
    """CLIP's reversible byte -> printable code point map (same order as OpenAI/HF)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer_files(outdir):
    """Write vocab.json + merges.txt equal to openai/clip-vit-large-patch14's."""
    with gzip.open(os.path.join(DATA, "bpe_simple_vocab_16e6.txt.gz"), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:N_MERGES + 1]
    assert len(merges) == N_MERGES and all(len(m.split()) == 2 for m in merges)
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    with open(os.path.join(outdir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(outdir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tokenizer(tmpdir):
    """SD's CLIP tokenizer from the bundled vocabulary, as a pipeline folder gives it.

    The special tokens are "normalized" added tokens, as the fixture folders
    (and SD's) say; CLIPTokenizer's constructor alone would make them
    match only as written.
    """
    from tokenizers import AddedToken
    from transformers import CLIPTokenizer

    write_tokenizer_files(tmpdir)
    special = {k: AddedToken(v, normalized=True, special=True)
               for k, v in (("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                            ("unk_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>"))}
    tok = CLIPTokenizer(os.path.join(tmpdir, "vocab.json"), os.path.join(tmpdir, "merges.txt"),
                        model_max_length=MAX_LEN, **special)
    check_tokenizer(tok)
    return tok


def check_tokenizer(tok):
    """transformers 5's tokenizers pipeline, not the slow class of transformers 4."""
    from transformers import TokenizersBackend

    assert isinstance(tok, TokenizersBackend), type(tok)
    assert len(tok) == 49408 and tok.pad_token_id == EOS and tok.bos_token_id == BOS
    known = {
        "a photo of a cat": [BOS, 320, 1125, 539, 320, 2368, EOS],
        "": [BOS, EOS],
        "hello world": [BOS, 3306, 1002, EOS],
        # one letter run, bytes merged across the ideographs (4.x split them)
        "\u6771\u4eac": [BOS, 48338, 21078, 361, EOS],
        # per-code-point lowercase: final sigma is \u03c3 (4.x: \u03c2)
        "\u039f\u0394\u039f\u03a3": [BOS, 138, 123, 138, 112, 138, 123, 139, 481, EOS],
        # control characters and NUL stay (4.x dropped them)
        "a\x07b\x00c": [BOS, 320, 451, 321, 444, 322, EOS],
        # added tokens match the lowercased text
        "<|ENDOFTEXT|>": [BOS, EOS, EOS],
    }
    for text, ids in known.items():
        got = tok(text).input_ids
        assert got == ids, f"tokenizer mismatch for {text!r}: {got} != {ids}"


def tokenize77(tok, prompts):
    return tok(prompts, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids


# --------------------------------------------------------------------------
# tokens.json, tokenizer-unicode.txt


def _folder_tokenizers():
    """The fixture models' own tokenizers: tiny-a's vocab.json + merges.txt, tiny-a-today's tokenizer.json."""
    from transformers import CLIPTokenizer

    out = []
    for name in ("tiny-a", "tiny-a-today"):
        d = os.path.join(MODELS, name, "tokenizer")
        if os.path.isdir(d):
            out.append((name, CLIPTokenizer.from_pretrained(d, local_files_only=True)))
    return out


def make_tokens(tok):
    assert len(PROMPTS) == len(set(PROMPTS)), "duplicate prompt"
    ids77 = tokenize77(tok, PROMPTS)
    for name, other in _folder_tokenizers():
        assert tokenize77(other, PROMPTS) == ids77, f"{name}'s tokenizer disagrees with the bundled vocabulary"
    rows = []
    for p, ids in zip(PROMPTS, ids77):
        n = len(tok(p).input_ids)
        assert len(ids) == MAX_LEN
        rows.append({"prompt": p, "ids": ids, "n_tokens": n})
    with open(os.path.join(FIX, "tokens.json"), "w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
        f.write("\n]\n")
    make_unicode(tok)


def _hexseq(s):
    return ",".join(f"{ord(c):X}" for c in s)


def make_unicode(tok):
    """Per code point: the pre-tokenizer's class and the normalizer's output; then short sequences for NFC.

    The backend's own normalizer and a Split with the tokenizer's pattern are
    asked directly, so the file records what tokenizers computes with its
    Unicode tables (Oniguruma for the pattern, Rust's std for lowercase, its
    NFC crate), whatever utf8proc says.
    """
    import unicodedata

    from tokenizers import Regex, pre_tokenizers

    backend = tok.backend_tokenizer
    norm = backend.normalizer
    split = backend.pre_tokenizer.pre_tokenize_str
    marks = pre_tokenizers.Split(Regex(r"\p{M}"), behavior="removed", invert=True)

    def cls(ch):
        if norm.normalize_str(ch) == " ":
            return "S"
        if len(split("a" + ch)) == 1:
            return "L"
        return "N" if len(split(ch + ch)) == 2 else "O"

    runs, mark_cps = [], []
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        ch = chr(c)
        out = norm.normalize_str(ch)
        k = cls(ch)
        m = f"{ord(out) - c:+d}" if len(out) == 1 and k != "S" else "=" + _hexseq(out)
        if runs and runs[-1][1] == c - 1 and runs[-1][2:] == [k, m]:
            runs[-1][1] = c
        else:
            runs.append([c, c, k, m])
        if marks.pre_tokenize_str(ch):
            mark_cps.append(ch)
    # Reordering (a mark against U+0334, class 1, and U+0345, class 240),
    # recomposition of every canonical decomposition, and Hangul.
    seqs = []
    for ch in mark_cps:
        seqs += ["x" + ch + "\u0334", "x\u0345" + ch]
    for c in range(0x110000):
        d = unicodedata.decomposition(chr(c)) if not 0xD800 <= c <= 0xDFFF else ""
        if d and not d.startswith("<") and not 0xAC00 <= c <= 0xD7A3:
            seqs.append(unicodedata.normalize("NFD", chr(c)))
    seqs += ["\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\u1100\u1161\u0334\u11a8"]
    with open(os.path.join(FIX, "tokenizer-unicode.txt"), "w", encoding="ascii") as f:
        f.write("# What transformers' CLIPTokenizer (tokenizers backend) does with each code point: written by\n"
                "# tests/reference/make_fixtures.py, read by tests/test_tokenizer.c. Code points are hex.\n"
                "# cp LO HI CLASS MAP: every code point c in LO..HI (surrogates excepted) has the pre-tokenizer\n"
                "#   class S (whitespace), L (letter), N (number) or O (other), and normalizes alone to\n"
                "#   c+D for MAP +D/-D, or to the sequence for MAP =X,Y,...\n"
                "# seq IN OUT: the normalizer turns the sequence IN into OUT.\n")
        for lo, hi, k, m in runs:
            f.write(f"cp {lo:X} {hi:X} {k} {m}\n")
        for s in seqs:
            f.write(f"seq {_hexseq(s)} {_hexseq(norm.normalize_str(s))}\n")


# --------------------------------------------------------------------------
# randn.safetensors

RANDN_CASES = [
    (0, [(1, 4, 8, 8)]),
    (42, [(1, 4, 64, 64)]),
    (1, [(2, 4, 8, 12)]),
    (12345, [(1, 4, 7, 9)]),
    (7, [(5,), (15,), (16,), (17,), (1,), (3,), (2, 4, 8, 8)]),
    (3, [(31,), (4, 4, 8, 8), (2,), (1,)]),
    (2**32 + 5, [(1, 4, 8, 8)]),
    (2**63 - 1, [(16,), (3,)]),
    (123, [(1,), (1,), (1,), (40,)]),
]


def make_randn():
    tensors, cases = {}, []
    for seed, shapes in RANDN_CASES:
        g = torch.Generator("cpu").manual_seed(seed)
        draws = []
        for i, shape in enumerate(shapes):
            name = f"seed{seed}.draw{i}"
            tensors[name] = torch.randn(shape, generator=g, dtype=torch.float32)
            draws.append({"name": name, "shape": list(shape)})
        cases.append({"seed": seed, "draws": draws})
    save_file(tensors, os.path.join(FIX, "randn.safetensors"))
    with open(os.path.join(FIX, "randn_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------
# tiny models

SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
    timestep_spacing="leading", trained_betas=None,
)

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=64,
)

TINY = {
    "tiny-a": dict(
        seed=1001, dtype=torch.float16,
        text=dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4),
        unet=dict(block_out_channels=(32, 32), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=16, attention_head_dim=2),
    ),
    "tiny-b": dict(
        seed=2002, dtype=torch.bfloat16,
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1),
        unet=dict(block_out_channels=(16, 32, 32), layers_per_block=2,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=16, attention_head_dim=[2, 4, 4], use_linear_projection=True),
    ),
}


def randomize(module, gen):
    """Re-draw every parameter so no path is zero or trivially an identity.

    Weights get 1/sqrt(fan_in) scale so activations stay O(1) through the
    stacks; norm scales stay near 1; biases are small but non-zero.
    """
    import torch.nn as nn

    norms = (nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for name, p in module.named_parameters():
            owner = module.get_submodule(name.rpartition(".")[0])
            leaf = name.rpartition(".")[2]
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if isinstance(owner, norms):
                v = 1.0 + 0.1 * r if leaf == "weight" else 0.1 * r
            elif isinstance(owner, nn.Embedding):
                v = 0.5 * r
            elif p.dim() >= 2:
                v = r / math.sqrt(p[0].numel())
            else:
                v = 0.1 * r
            p.copy_(v)


def build_pipeline(tok, spec):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator("cpu").manual_seed(spec["seed"])
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, **spec["text"]))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8,
                                **spec["unet"])
    vae = AutoencoderKL(**VAE_CONFIG)
    for m in (text, unet, vae):
        randomize(m, gen)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load_pipeline(name):
    """Load a fixture model back in float32: exactly the rounded weights the C code reads."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(MODELS, name), torch_dtype=torch.float32,
                                                   local_files_only=True)
    check_tokenizer(pipe.tokenizer)
    return pipe


def make_models(tok):
    os.makedirs(MODELS, exist_ok=True)
    for name, spec in TINY.items():
        out = os.path.join(MODELS, name)
        pipe = build_pipeline(tok, spec)
        pipe.to(spec["dtype"])
        if os.path.isdir(out):
            shutil.rmtree(out)
        pipe.save_pretrained(out, safe_serialization=True)
        back = load_pipeline(name)
        for comp in ("text_encoder", "unet", "vae"):
            saved = dict(getattr(pipe, comp).named_parameters())
            for pname, p in getattr(back, comp).named_parameters():
                assert p.dtype == torch.float32
                assert torch.equal(p, saved[pname].float()), f"{name}/{comp}/{pname} did not round-trip"


# --------------------------------------------------------------------------
# text-encoder embeddings


@torch.no_grad()
def make_embeds():
    for name in TINY:
        pipe = load_pipeline(name)
        te = pipe.text_encoder.eval()
        ids = torch.tensor(tokenize77(pipe.tokenizer, EMBED_PROMPTS), dtype=torch.long)
        out = te(ids, output_hidden_states=True)
        embeds = out.last_hidden_state
        skip1 = te.final_layer_norm(out.hidden_states[-2])
        # Cross-check against the pipeline's own prompt encoding.
        ref0, _ = pipe.encode_prompt(EMBED_PROMPTS, "cpu", 1, False)
        assert torch.equal(ref0, embeds)
        # diffusers 0.42.1's encode_prompt(clip_skip=...) reads
        # text_encoder.text_model, which transformers 5's CLIPTextModel no
        # longer has (AttributeError), so clip skip is checked by hand only:
        # the final LayerNorm over hidden_states[-2], as that code means.
        tensors = {
            "ids": ids.to(torch.float32).contiguous(),
            "embeds": embeds.to(torch.float32).contiguous(),
            "embeds_clip_skip1": skip1.to(torch.float32).contiguous(),
        }
        save_file(tensors, os.path.join(FIX, f"embeds-{name}.safetensors"),
                  metadata={"prompts": json.dumps(EMBED_PROMPTS, ensure_ascii=False)})


# --------------------------------------------------------------------------
# today's layout


TODAY = {"tiny-a-today": "tiny-a"}


@torch.no_grad()
def make_today():
    """Re-save a fixture model with today's save_pretrained.

    tiny-a itself stays in the layout transformers 4 wrote (vocab.json and
    merges.txt, text encoder tensors under text_model.); tiny-a-today holds
    the same weights as diffusers 0.42 + transformers 5 write them (only
    tokenizer.json + tokenizer_config.json, tensors without the prefix), so a
    loader must read both to the same numbers.
    """
    from safetensors import safe_open

    for name, src in TODAY.items():
        out = os.path.join(MODELS, name)
        pipe = load_pipeline(src)
        # transformers 5 saves a model loaded from a text_model.-prefixed file
        # under those names again; a model it builds itself (what a user's
        # own pipeline is) has none. So the text encoder is rebuilt fresh.
        from transformers import CLIPTextModel
        fresh = CLIPTextModel(pipe.text_encoder.config)
        fresh.load_state_dict(pipe.text_encoder.state_dict())
        pipe.register_modules(text_encoder=fresh)
        pipe.to(TINY[src]["dtype"])
        if os.path.isdir(out):
            shutil.rmtree(out)
        pipe.save_pretrained(out, safe_serialization=True)
        tokdir = os.path.join(out, "tokenizer")
        assert sorted(os.listdir(tokdir)) == ["tokenizer.json", "tokenizer_config.json"], os.listdir(tokdir)
        with safe_open(os.path.join(out, "text_encoder", "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert keys and not any(k.startswith("text_model.") for k in keys), keys[:3]
        back = load_pipeline(name)
        old = load_pipeline(src)
        for comp in ("text_encoder", "unet", "vae"):
            a = dict(getattr(old, comp).named_parameters())
            for pname, p in getattr(back, comp).named_parameters():
                assert torch.equal(p, a[pname]), f"{name}/{comp}/{pname} differs from {src}"
        assert back.tokenizer(PROMPTS).input_ids == old.tokenizer(PROMPTS).input_ids


# --------------------------------------------------------------------------
# tokens-sd2.json

# "!" is SD 2's pad token, a special added token in transformers 5: split
# out as id 0 wherever it is, never BPE'd ("!</w>" is 256).
BANG_PROMPTS = [
    "!", "!!", "!!!!!", "a!b", "hello!", "hello !", "! hello", "wow!!", "Hi!  there", "?!", "!?", "¡!",
    "<|endoftext|>!", "!<|endoftext|>", "!<|startoftext|>", "<|EndOfText|>!", "<|StartOfText|>!x",
    "!\u0301", "\u0301!", "e\u0301!", "héllo!!", "東京!", "猫!🐱", "\uff01", "!\u200b!", "a\t!\nb",
    "I'm!", "!'s", "1!2", "!!!!!!!!!!!!!!!!", "x" + "!" * 80,
]


def _hub_sd2_folder(tmpdir):
    """An old-layout SD 2 tokenizer/ folder as stabilityai/stable-diffusion-2-1 ships it, over the
    bundled vocabulary (tiny-sd2's too): what diffusers gives single SD 2 files."""
    at = lambda c: {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    d = os.path.join(tmpdir, "sd2-old")
    os.makedirs(d)
    write_tokenizer_files(d)
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": at("<|startoftext|>"), "eos_token": at("<|endoftext|>"), "pad_token": "!",
                   "unk_token": at("<|endoftext|>")}, f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": dict(at("<|startoftext|>"), __type="AddedToken"), "do_lower_case": True,
                   "eos_token": dict(at("<|endoftext|>"), __type="AddedToken"), "errors": "replace",
                   "model_max_length": MAX_LEN, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
                   "unk_token": dict(at("<|endoftext|>"), __type="AddedToken")}, f)
    return d


def make_tokens_sd2(tmpdir):
    """tiny-sd2's tokenizer.json (ids) and a hub-like old-layout folder over the same vocabulary (ids_hub)."""
    from transformers import CLIPTokenizer

    prompts = PROMPTS[::4] + [p for p in PROMPTS if "!" in p and p not in PROMPTS[::4]] + BANG_PROMPTS
    assert len(prompts) == len(set(prompts)), "duplicate prompt"
    tok = CLIPTokenizer.from_pretrained(os.path.join(MODELS, "tiny-sd2", "tokenizer"), local_files_only=True)
    assert tok.pad_token == "!" and tok.pad_token_id == 0
    old = CLIPTokenizer.from_pretrained(_hub_sd2_folder(tmpdir), local_files_only=True)
    assert old.pad_token_id == 0
    ids77, hub77 = tokenize77(tok, prompts), tokenize77(old, prompts)
    assert tok("hello!").input_ids == old("hello!").input_ids == [BOS, 3306, 0, EOS]
    # The two differ only where a prompt spells a special token in another case: normalized in the
    # hub folder, not in tiny-sd2's tokenizer.json.
    assert all(a == b or "<|" in p.lower() for p, a, b in zip(prompts, ids77, hub77))
    rows = [{"prompt": p, "ids": ids, "n_tokens": len(tok(p).input_ids), "ids_hub": hub,
             "n_tokens_hub": len(old(p).input_ids)} for p, ids, hub in zip(prompts, ids77, hub77)]
    with open(os.path.join(FIX, "tokens-sd2.json"), "w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
        f.write("\n]\n")


# --------------------------------------------------------------------------

GROUPS = ["tokens", "tokens-sd2", "randn", "models", "embeds", "today"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=GROUPS, help="regenerate only these groups")
    args = ap.parse_args()
    groups = args.only or GROUPS

    # encode_prompt warns about the deliberately over-long prompt; that is expected.
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(FIX, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(tmp)
        if "tokens" in groups:
            make_tokens(tok)
        if "tokens-sd2" in groups:
            make_tokens_sd2(tmp)
        if "randn" in groups:
            make_randn()
        if "models" in groups:
            make_models(tok)
        if "embeds" in groups:
            make_embeds()
        if "today" in groups:
            make_today()

    import check_fixtures
    check_fixtures.main()


if __name__ == "__main__":
    main()
