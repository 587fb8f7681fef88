#!/usr/bin/env python3
"""Writes the handcrafted seed inputs of the fuzz targets into
tests/fuzz/corpus/NAME/ (python3 standard library only). Run it again after
changing it; it rewrites its own files and leaves the others (the
safetensors seeds, saved findings, cov-* inputs) alone.

Names say what make check expects of a file: ok-* must be accepted, bad-*
rejected, anything else only has to run (fuzz_corpus.c)."""
import base64
import json
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- images ----

def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(w, h, colour, depth, rows, interlace=0, extra=b"", ihdr=None):
    raw = b"".join(b"\0" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", ihdr or struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))
            + extra + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def jpeg(ncomp, adobe=False):
    """A baseline 8x8 JPEG, one block per component, 1x1 sampling. Its
    Huffman tables have one code each ("0": DC difference 0, and end of
    block), so every block is two bits and the image is flat grey."""
    out = b"\xff\xd8"
    if adobe:  # Adobe APP14, transform 0: the components are CMYK as they are
        out += b"\xff\xee" + struct.pack(">H", 14) + b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)
    out += b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + b"\x01" * 64
    out += b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * ncomp, 8, 8, 8, ncomp)
    out += b"".join(bytes([i + 1, 0x11, 0]) for i in range(ncomp))
    one_code = bytes([1] + [0] * 15) + b"\x00"
    out += b"\xff\xc4" + struct.pack(">H", 3 + len(one_code)) + b"\x00" + one_code
    out += b"\xff\xc4" + struct.pack(">H", 3 + len(one_code)) + b"\x10" + one_code
    out += b"\xff\xda" + struct.pack(">HB", 6 + 2 * ncomp, ncomp)
    out += b"".join(bytes([i + 1, 0x00]) for i in range(ncomp)) + b"\x00\x3f\x00"
    bits = "00" * ncomp
    bits += "1" * (-len(bits) % 8)
    out += bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    return out + b"\xff\xd9"


def images():
    rgb2 = png(2, 2, 2, 8, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"])
    write("image", "ok-rgb-2x2.png", rgb2)
    write("image", "ok-grey-1x1.png", png(1, 1, 0, 8, [b"\x80"]))
    write("image", "ok-grey-1bit-8x1.png", png(8, 1, 0, 1, [b"\xa5"]))
    write("image", "ok-grey-alpha.png", png(1, 1, 4, 8, [b"\x80\x40"]))
    write("image", "ok-rgba-16bit.png", png(1, 1, 6, 16, [b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"]))
    write("image", "ok-palette.png", png(2, 1, 3, 8, [b"\x00\x01"],
                                         extra=png_chunk(b"PLTE", b"\xff\x00\x00\x00\x00\xff")))
    write("image", "ok-interlaced.png", png(1, 1, 2, 8, [b"\x01\x02\x03"], interlace=1))
    write("image", "bad-truncated.png", rgb2[:len(rgb2) - 20])
    bad_crc = bytearray(rgb2)
    bad_crc[29] ^= 0xff  # the IHDR checksum
    write("image", "bad-ihdr-crc.png", bytes(bad_crc))
    write("image", "bad-20000x20000.png", png(20000, 20000, 0, 8, [b"\0"]))
    write("image", "bad-zero-width.png", png(0, 1, 0, 8, [b""]))
    write("image", "bad-palette-missing.png", png(1, 1, 3, 8, [b"\x00"]))
    write("image", "ok-grey-8x8.jpg", jpeg(1))
    write("image", "ok-ycc-8x8.jpg", jpeg(3))
    write("image", "bad-cmyk-8x8.jpg", jpeg(4, adobe=True))
    write("image", "bad-header-only.jpg", jpeg(3)[:20])
    write("image", "bad-not-an-image", b"GIF89a\x01\x00\x01\x00")
    write("image", "bad-empty", b"")
    # Data that ends in the entropy-coded segment, which libjpeg pads.
    write("image", "bad-truncated-scan.jpg", jpeg(3)[:-3])
    return rgb2


# ---- the contract ----

def contract(tiny_png):
    # The smallest image a request may carry is 64x64 (contract.h).
    b64 = base64.b64encode(png(64, 64, 0, 8, [bytes(range(64))] * 64)).decode()
    wide = base64.b64encode(png(72, 64, 0, 8, [bytes(72)] * 64)).decode()
    gen = {"operation": "image_generation", "hive_id": "hive-1", "model": "sd15", "prompt": "a cat"}
    write("contract", "ok-generate-minimal.json", json.dumps(gen))
    write("contract", "ok-generate-full.json", json.dumps(dict(
        gen, negative_prompt=None, steps=30, guidance_scale=7.0, width=640, height=384, seed=42,
        worker_id="w1", loras=[], sampler="euler_a", eta=0, clip_skip=1)))
    write("contract", "ok-seed-string.json", json.dumps(dict(gen, seed="18446744073709551615")))
    write("contract", "ok-integral-float.json", json.dumps(dict(gen, steps=20.0)))
    write("contract", "ok-unicode-prompt.json", json.dumps(dict(gen, prompt="caf\u00e9 \u732b \U0001f431"),
                                                          ensure_ascii=False))
    write("contract", "ok-transform.json", json.dumps(dict(gen, operation="image_transform", init_image=b64,
                                                           strength=0.5)))
    write("contract", "ok-transform-data-url.json", json.dumps(dict(
        gen, operation="image_transform", input_image="data:image/png;base64,\n" + b64[:20] + "\n" + b64[20:])))
    write("contract", "ok-inpaint.json", json.dumps(dict(gen, operation="image_inpaint", init_image=b64,
                                                         mask_image=b64)))
    params = dict(operation="image_generation", hive_id="h", model="m", prompt="p", negative_prompt="",
                  steps=20, guidance_scale=7.5, width=512, height=512, seed=7, seed_random=False, eta=0.0,
                  clip_skip=0)
    p = json.dumps(params).encode()
    write("contract", "ok-serialized", b"SDWJ" + struct.pack("<III", len(p), 0, 0) + p)
    write("contract", "bad-serialized-lengths", b"SDWJ" + struct.pack("<III", len(p) + 1, 0, 0) + p)
    write("contract", "bad-serialized-short", b"SDWJ\x01\x00")
    bad = {
        "empty": "",
        "not-object": "[1, 2]",
        "truncated": '{"operation": "image_generation", "prompt": "a',
        "trailing": json.dumps(gen) + " {}",
        "nan": json.dumps(gen)[:-1] + ', "guidance_scale": NaN}',
        "huge-int": json.dumps(gen)[:-1] + ', "seed": 123456789012345678901234567890}',
        "deep": "[" * 5000 + "]" * 5000,
        "no-operation": json.dumps({"prompt": "x"}),
        "unknown-operation": json.dumps(dict(gen, operation="make_coffee")),
        "rbee-unsupported": json.dumps(dict(gen, operation="text_generation")),
        "steps-zero": json.dumps(dict(gen, steps=0)),
        "steps-fraction": json.dumps(dict(gen, steps=20.5)),
        "width-not-8": json.dumps(dict(gen, width=513)),
        "too-many-pixels": json.dumps(dict(gen, width=2048, height=2048)),
        "model-dotdot": json.dumps(dict(gen, model="a/../b")),
        "model-absolute": json.dumps(dict(gen, model="/etc/passwd")),
        "hive-control": json.dumps(dict(gen, hive_id="a\nb")),
        "prompt-too-long": json.dumps(dict(gen, prompt="x" * 5000)),
        "prompt-number": json.dumps(dict(gen, prompt=5)),
        "loras": json.dumps(dict(gen, loras=[{"path": "x", "weight": 1}])),
        "sampler": json.dumps(dict(gen, sampler="warp_drive")),
        "bad-base64": json.dumps(dict(gen, operation="image_transform", init_image="!!!")),
        "base64-not-image": json.dumps(dict(gen, operation="image_transform",
                                            init_image=base64.b64encode(b"hello").decode())),
        "inpaint-no-mask": json.dumps(dict(gen, operation="image_inpaint", init_image=b64)),
        "image-too-small": json.dumps(dict(gen, operation="image_transform",
                                           init_image=base64.b64encode(tiny_png).decode())),
        "image-truncated": json.dumps(dict(gen, operation="image_transform", init_image=b64[:len(b64) // 2])),
        "mask-other-size": json.dumps(dict(gen, operation="image_inpaint", init_image=b64, mask_image=wide)),
        "strength-over": json.dumps(dict(gen, operation="image_transform", init_image=b64, strength=1.5)),
        "seed-negative": json.dumps(dict(gen, seed=-1)),
        "prompt-nul": json.dumps(dict(gen, prompt="a\u0000b")),
        "invalid-utf8": b'{"operation":"image_generation","hive_id":"h","model":"m","prompt":"\xff"}',
    }
    for k, v in bad.items():
        write("contract", "bad-" + k + ".json", v)


def base64_seeds():
    write("base64", "ok-empty", b"")
    write("base64", "ok-hello", b"aGVsbG8=")
    write("base64", "ok-unpadded", b"aGVsbG8")
    write("base64", "ok-whitespace", b" aGVs\r\nbG8g\td29y bGQ=\n")
    write("base64", "ok-all-bytes", base64.b64encode(bytes(range(256))))
    write("base64", "bad-char", b"aGVs*bG8=")
    write("base64", "bad-pad-inside", b"aG=Vs")
    write("base64", "bad-too-much-pad", b"aGVsbG8==")
    write("base64", "bad-one-left", b"aGVsb")
    write("base64", "bad-url-alphabet", b"-_-_")
    write("base64", "bad-over-limit", base64.b64encode(b"\0" * 5000))


def tokenizer():
    write("tokenizer", "ok-ascii", "a photo of an astronaut riding a horse on mars")
    write("tokenizer", "ok-empty", "")
    write("tokenizer", "ok-unicode", "caf\u00e9 \u732b\u306e\u5199\u771f \U0001f431\U0001f680 \u0301e")
    write("tokenizer", "ok-punctuation", "(masterpiece:1.2), [best quality]!!! 'don't' 3.14159 a-b_c")
    write("tokenizer", "ok-long", "lorem ipsum dolor " * 200)
    write("tokenizer", "ok-nul-inside", b"a\0cat")
    write("tokenizer", "ok-long-word", "x" * 3000)
    write("tokenizer", "ok-whitespace", " \t\r\n\u00a0\u3000 ")
    write("tokenizer", "bad-invalid-utf8", b"a \xff cat")
    write("tokenizer", "bad-overlong", b"\xc0\xaf")
    write("tokenizer", "bad-surrogate", b"\xed\xa0\x80")
    write("tokenizer", "bad-truncated-sequence", b"cat \xe7\x8c")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xa1, 0xac + 1)) + list(range(0xae, 0xff + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer_hf():
    syms = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {}
    for s in syms:
        vocab[s] = len(vocab)
    for s in syms:
        vocab[s + "</w>"] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    v = json.dumps(vocab, ensure_ascii=False).encode()
    m = ("#version: 0.2\n" + "".join(a + " " + b + "\n" for a, b in merges)).encode()
    write("tokenizer_hf", "ok-minimal", v + b"\0" + m)
    write("tokenizer_hf", "ok-no-merges", v + b"\0#version: 0.2\n")
    write("tokenizer_hf", "ok-no-version", v + b"\0c a\r\nca t</w>")
    write("tokenizer_hf", "bad-blank-line", v + b"\0#version: 0.2\n\nc a\n")
    write("tokenizer_hf", "bad-merge-unknown", v + b"\0#version: 0.2\nq z\n")
    write("tokenizer_hf", "bad-merge-three", v + b"\0#version: 0.2\nc a t\n")
    write("tokenizer_hf", "bad-no-specials", json.dumps({s: i for i, s in enumerate(syms)}).encode() + b"\0" + m)
    write("tokenizer_hf", "bad-not-json", b"{\"a\": \0#version: 0.2\n")
    write("tokenizer_hf", "bad-negative-id", b"{\"a\": -1}\0#version: 0.2\n")


def tokenizer_json():
    syms = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {s: i for i, s in enumerate(syms + [s + "</w>" for s in syms] + ["ca", "cat</w>"])}
    added = [{"id": 514, "content": "<|startoftext|>", "special": True, "normalized": True},
             {"id": 515, "content": "<|endoftext|>", "special": True, "normalized": False}]

    def doc(model=None, **top):
        m = {"type": "BPE", "vocab": vocab, "merges": [["c", "a"], ["ca", "t</w>"]], "end_of_word_suffix": "</w>"}
        m.update(model or {})
        d = {"version": "1.0", "added_tokens": added, "normalizer": None, "model": m}
        d.update(top)
        return json.dumps(d, ensure_ascii=False)

    write("tokenizer_json", "ok-minimal", doc())
    write("tokenizer_json", "ok-string-merges", doc({"merges": ["c a", "ca t</w>"]}))
    write("tokenizer_json", "ok-no-suffix-field", doc({"end_of_word_suffix": None}))
    write("tokenizer_json", "ok-specials-in-vocab",
          doc({"vocab": dict(vocab, **{"<|startoftext|>": 514, "<|endoftext|>": 515})}, added_tokens=[]))
    write("tokenizer_json", "bad-wordpiece", doc({"type": "WordPiece"}))
    write("tokenizer_json", "bad-merge-three", doc({"merges": [["c", "a", "t"]]}))
    write("tokenizer_json", "bad-merge-unknown", doc({"merges": ["q z"]}))
    write("tokenizer_json", "bad-suffix", doc({"end_of_word_suffix": "##"}))
    # SD 2's pad token "!" (its vocabulary id) and a normalized token past the vocabulary
    write("tokenizer_json", "ok-added-tokens",
          doc(added_tokens=added + [{"id": 33, "content": "!", "special": True, "normalized": False},
                                    {"id": 516, "content": "Cat", "special": False, "normalized": True}]))
    write("tokenizer_json", "bad-added-lstrip",
          doc(added_tokens=added + [{"id": 33, "content": "!", "lstrip": True}]))
    write("tokenizer_json", "bad-no-specials", doc(added_tokens=[]))
    write("tokenizer_json", "bad-added-contradicts",
          doc({"vocab": dict(vocab, **{"<|endoftext|>": 7})}))
    write("tokenizer_json", "bad-truncated", doc()[:200])
    write("tokenizer_json", "bad-no-model", json.dumps({"version": "1.0"}))


def config():
    with open(os.path.join(HERE, "..", "..", "conf", "sdworker.conf"), "rb") as f:
        write("config", "ok-sample.conf", f.read())
    write("config", "ok-empty.conf", "")
    write("config", "ok-comments.conf", "# only a comment\n\n   # indented\r\n")
    write("config", "ok-models.conf", "model.sd15 = models/sd15\nmodel.other = \"/srv/my models/x\" # note\n")
    write("config", "ok-model-options.conf",
          "model.turbo = /m/turbo\nmodel.turbo.steps = 1\nmodel.turbo.guidance = 0\nmodel.turbo.size = 512x512\n"
          "model.turbo.sampler = euler_a\nmodel.turbo.prediction = v\n")
    write("config", "bad-model-option.conf", "model.turbo.steps = 1\nmodel.turbo = /m/turbo\n")
    write("config", "ok-quoted.conf", 'listen = "unix:/run/sdw/a\\"b.sock"\nring.name = /sdw-1\n')
    write("config", "ok-tcp.conf", "listen = 127.0.0.1:9000\npm = dynamic\npm.max_children = 8\n")
    write("config", "ok-api-key.conf",
          "api_key.ops = sha256:" + "ab" * 32 + " admin max_queued=4 per_minute=60\n")
    write("config", "bad-duplicate.conf", "pm = static\npm = dynamic\n")
    write("config", "bad-unknown-key.conf", "no.such.key = 1\n")
    write("config", "bad-unterminated.conf", 'listen = "unix:/x\n')
    write("config", "bad-nul.conf", b"pm = static\0\n")
    write("config", "bad-no-equals.conf", "pm static\n")
    write("config", "bad-int-range.conf", "pm.max_children = 99999999999999999999\n")
    write("config", "bad-api-key-hash.conf", "api_key.ops = sha256:1234\n")
    write("config", "bad-api-key-option.conf", "api_key.ops = sha256:" + "ab" * 32 + " root\n")
    write("config", "bad-model-name.conf", "model.a/b = /x\n")


def auth():
    write("auth", "ok-ops", "Bearer 0123456789abcdef0123")
    write("auth", "ok-app-tabs", "\tbearer\t Zm9vYmFyYmF6cXV4cXV1eA== \t")
    write("auth", "bad-empty", "")
    write("auth", "bad-basic", "Basic dXNlcjpwYXNz")
    write("auth", "bad-wrong-key", "Bearer 0123456789abcdef0124")
    write("auth", "bad-scheme-only", "Bearer")
    write("auth", "bad-no-space", "Bearer0123456789abcdef0123")
    write("auth", "bad-short-key", "short")
    write("auth", "ok-nul", b"Bearer 0123456789abcdef0123\0junk")


def http():
    f = lambda *v: b"\0".join(x.encode() if isinstance(x, str) else x for x in v)
    write("http", "ok-health", f("/health"))
    write("http", "ok-metrics", f("", "", "", "/metrics?x=1"))
    write("http", "ok-path-info", f("/v1", "/jobs"))
    write("http", "ok-document-uri", f("", "", "/v1/jobs/job-0123456789abcdef0123456789abcdef/stream"))
    write("http", "ok-request-uri", f("", "", "", "/v1/pool/status?full", "full"))
    write("http", "ok-trailing-slash", f("", "", "/v1/models/"))
    write("http", "ok-all", f("/v1", "/jobs", "/v1/jobs", "/v1/jobs?x", "a=b&c",
                              "application/json; charset=utf-8", " 42 "))
    write("http", "bad-none", b"")
    write("http", "bad-unknown", f("/nope"))
    write("http", "bad-job-upper", f("/v1/jobs/job-0123456789ABCDEF0123456789abcdef"))
    write("http", "bad-job-short", f("/v1/jobs/job-0123"))
    write("http", "bad-job-extra", f("/v1/jobs/job-0123456789abcdef0123456789abcdef/other"))
    write("http", "bad-long-path", f("/v1/" + "a" * 3000))
    write("http", "bad-last-event-id", f("", "", "", "", "", "text/plain", "-1"))


def lora():
    import struct as st

    def sft(tensors, meta=None):
        hdr, data = {}, b""
        for name, shape, vals in tensors:
            n = 1
            for d in shape:
                n *= d
            vals = (vals * n)[:n]
            hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * n]}
            data += st.pack("<%df" % n, *vals)
        if meta:
            hdr["__metadata__"] = meta
        h = json.dumps(hdr).encode()
        h += b" " * (-len(h) % 8)
        return st.pack("<Q", len(h)) + h + data

    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    pair = [(k + ".lora_down.weight", [2, 4], [0.1]), (k + ".lora_up.weight", [4, 2], [0.2])]
    write("lora", "ok-kohya", sft(pair + [(k + ".alpha", [], [1.0])], {"ss_base_model_version": "sd_v1"}))
    write("lora", "ok-peft", sft([("unet.mid_block.attentions.0.proj_in.lora_A.weight", [2, 4, 1, 1], [0.1]),
                                  ("unet.mid_block.attentions.0.proj_in.lora_B.weight", [4, 2, 1, 1], [0.1]),
                                  ("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora.down.weight", [2, 4], [1]),
                                  ("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora.up.weight", [4, 2], [1])]))
    s = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    write("lora", "ok-sgm", sft([(s + ".lora_down.weight", [2, 4], [0.1]), (s + ".lora_up.weight", [4, 2], [0.1]),
                                 ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", [1, 4], [1]),
                                 ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", [4, 1], [1])]))
    write("lora", "ok-locon", sft([("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", [2, 4, 3, 3], [0.1]),
                                   ("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", [4, 2, 1, 1], [0.1])]))
    write("lora", "bad-rank", sft([pair[0], (k + ".lora_up.weight", [4, 3], [0.2])]))
    write("lora", "bad-no-up", sft([pair[0]]))
    write("lora", "bad-nan", sft([pair[0], (k + ".lora_up.weight", [4, 2], [float("nan")])]))
    write("lora", "bad-alpha", sft(pair + [(k + ".alpha", [], [-2.0])]))
    write("lora", "bad-loha", sft([("lora_unet_x.hada_w1_a", [2, 2], [0.0])]))
    write("lora", "bad-not-lora", sft([("model.diffusion_model.out.2.weight", [2, 2], [0.0])]))
    write("lora", "bad-sgm", sft([("lora_unet_middle_block_7_x.lora_down.weight", [2, 2], [0.0]),
                                  ("lora_unet_middle_block_7_x.lora_up.weight", [2, 2], [0.0])]))
    write("lora", "bad-truncated", sft(pair)[:-5])
    write("lora", "bad-empty", sft([]))


def main():
    small = images()
    lora()
    contract(small)
    base64_seeds()
    tokenizer()
    tokenizer_hf()
    tokenizer_json()
    config()
    auth()
    http()


if __name__ == "__main__":
    sys.exit(main())
