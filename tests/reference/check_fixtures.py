#!/usr/bin/env python3
"""Re-read the committed fixtures and check their structure (names, shapes, dtypes).

Needs only numpy + safetensors, no torch:
    python3 tests/reference/check_fixtures.py
"""

import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "fixtures")
BOS, EOS = 49406, 49407

MODEL_DTYPES = {"tiny-a": "F16", "tiny-b": "BF16"}
MODEL_HIDDEN = {"tiny-a": 16, "tiny-b": 16}
MODEL_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


def path(*p):
    return os.path.join(FIX, *p)


def check_tokens():
    with open(path("tokens.json"), encoding="utf-8") as f:
        rows = json.load(f)
    assert len(rows) >= 120, len(rows)
    prompts = set()
    for r in rows:
        assert set(r) == {"prompt", "ids", "n_tokens"}, r.keys()
        ids, n = r["ids"], r["n_tokens"]
        assert len(ids) == 77 and ids[0] == BOS and all(0 <= i <= EOS for i in ids)
        assert n >= 2
        real = min(n, 77)
        assert ids[real - 1] == EOS and all(i == EOS for i in ids[real:])
        # a prompt may spell the special tokens itself, in any case
        if "<|" not in r["prompt"]:
            assert BOS not in ids[1:] and EOS not in ids[:real - 1]
        prompts.add(r["prompt"])
    assert len(prompts) == len(rows)
    assert sum(r["n_tokens"] > 77 for r in rows) >= 4
    assert {75, 76, 77, 78, 79, 80} <= {r["n_tokens"] for r in rows}
    assert {"", " "} <= prompts
    check_unicode()
    return len(rows)


def check_unicode():
    """tokenizer-unicode.txt: cp ranges cover every code point but the surrogates, in order, once."""
    nxt, seqs = 0, 0
    with open(path("tokenizer-unicode.txt"), encoding="ascii") as f:
        for line in f:
            if line.startswith("#"):
                continue
            kind, *rest = line.split()
            if kind == "cp":
                lo, hi, cls, m = int(rest[0], 16), int(rest[1], 16), rest[2], rest[3]
                if nxt == 0xD800:
                    nxt = 0xE000
                assert lo == nxt and lo <= hi and cls in "SLNO" and m[0] in "+-=", line
                nxt = hi + 1
            else:
                assert kind == "seq" and len(rest) == 2, line
                seqs += 1
    assert nxt == 0x110000 and seqs > 1000, (hex(nxt), seqs)


def check_randn():
    with open(path("randn_cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    t = load_file(path("randn.safetensors"))
    names = set()
    for c in cases:
        assert isinstance(c["seed"], int) and 0 <= c["seed"] < 2**64
        for i, d in enumerate(c["draws"]):
            assert d["name"] == f"seed{c['seed']}.draw{i}"
            a = t[d["name"]]
            assert a.dtype == np.float32 and list(a.shape) == d["shape"], (d, a.shape)
            assert np.all(np.isfinite(a))
            names.add(d["name"])
    assert names == set(t), set(t) ^ names
    return len(names)


def _st_dtypes(file):
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: v["dtype"] for k, v in header.items()}


def check_models():
    for name, dt in MODEL_DTYPES.items():
        for rel in MODEL_FILES:
            assert os.path.isfile(path("models", name, rel)), (name, rel)
        with open(path("models", name, "model_index.json")) as f:
            idx = json.load(f)
        assert idx["_class_name"] == "StableDiffusionPipeline"
        assert idx["requires_safety_checker"] is False
        with open(path("models", name, "scheduler", "scheduler_config.json")) as f:
            sched = json.load(f)
        assert sched["_class_name"] == "PNDMScheduler" and sched["skip_prk_steps"] is True
        with open(path("models", name, "text_encoder", "config.json")) as f:
            assert json.load(f)["hidden_size"] == MODEL_HIDDEN[name]
        for comp in ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                     "vae/diffusion_pytorch_model.safetensors"):
            dts = _st_dtypes(path("models", name, comp))
            assert dts and set(dts.values()) == {dt}, (name, comp, set(dts.values()))
        te = _st_dtypes(path("models", name, "text_encoder", "model.safetensors"))
        assert "text_model.embeddings.token_embedding.weight" in te
    return len(MODEL_DTYPES)


def check_embeds():
    with open(path("tokens.json"), encoding="utf-8") as f:
        tokens = {r["prompt"]: r["ids"] for r in json.load(f)}
    for name, h in MODEL_HIDDEN.items():
        file = path(f"embeds-{name}.safetensors")
        with safe_open(file, "np") as f:
            prompts = json.loads(f.metadata()["prompts"])
        t = load_file(file)
        k = len(prompts)
        assert set(t) == {"ids", "embeds", "embeds_clip_skip1"}
        assert t["ids"].shape == (k, 77) and t["ids"].dtype == np.float32
        for key in ("embeds", "embeds_clip_skip1"):
            assert t[key].shape == (k, 77, h) and t[key].dtype == np.float32, (key, t[key].shape)
            assert np.all(np.isfinite(t[key]))
        assert not np.array_equal(t["embeds"], t["embeds_clip_skip1"])
        for p, row in zip(prompts, t["ids"]):
            if p in tokens:
                assert row.astype(np.int64).tolist() == tokens[p], p
    return len(MODEL_HIDDEN)


def main():
    n_tok = check_tokens()
    n_rnd = check_randn()
    check_models()
    check_embeds()
    total = 0
    for dirpath, _, files in os.walk(FIX):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"fixtures ok: {n_tok} prompts, {n_rnd} randn draws, 2 models, 2 embeds files; "
          f"{total / 1e6:.2f} MB in {FIX}")


if __name__ == "__main__":
    sys.exit(main())
