"""Writes a random LoRA for the UNet of a diffusers folder, for the LoRA
rows of bench/cpu.sh: diffusers/PEFT keys (unet.<module>.lora_A.weight
[rank, in], unet.<module>.lora_B.weight [out, rank], float16, no alphas, so
scale = weight), on every attention projection (attn1 and attn2 to_q, to_k,
to_v, to_out.0), which is where most published LoRAs put theirs. The
shapes come from the UNet's safetensors header; the values are small
Gaussians, so that the image stays an image. Needs numpy.

usage: mklora.py MODEL_DIR RANK SEED OUTPUT
"""
import json
import struct
import sys

import numpy as np

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def main():
    model, rank, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    h = header(f"{model}/unet/diffusion_pytorch_model.safetensors")
    rng = np.random.default_rng(seed)
    tensors = []
    for name in sorted(h):
        if name == "__metadata__" or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if not any(module.endswith("." + t) for t in TARGETS) or ".attn" not in module:
            continue
        o, i = h[name]["shape"][:2]
        a = rng.standard_normal((rank, i), dtype=np.float32) / np.sqrt(i)
        b = rng.standard_normal((o, rank), dtype=np.float32) * 0.01
        tensors.append((f"unet.{module}.lora_A.weight", a.astype(np.float16)))
        tensors.append((f"unet.{module}.lora_B.weight", b.astype(np.float16)))
    meta, off = {"__metadata__": {"format": "pt"}}, 0
    for k, t in tensors:
        meta[k] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    js = json.dumps(meta).encode()
    js += b" " * (-len(js) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js)
        for _, t in tensors:
            f.write(t.tobytes())
    print(f"{out}: {len(tensors) // 2} modules, rank {rank}, {off >> 20} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
