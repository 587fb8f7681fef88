#!/usr/bin/env bash
# LoRA through the whole service (scripts/start-service: the real engine on
# tiny-a, tiny-sd2 and tiny-sdxl, the pool, a private nginx on loopback):
# /v1/models lists the LoRAs that fit each model, jobs with LoRAs run (SD 1;
# SDXL's kohya file and an LCM-LoRA under the lcm sampler give diffusers'
# images, from tests/fixtures/lora), and every bad
# LoRA request is refused at submission with a JSON error naming the LoRA
# or the field: unknown name (404), another family (SD 1/2/XL), keys that match
# nothing, a shape mismatch, a file that does not load (400 lora_mismatch),
# a weight out of range, too many LoRAs, a path (400 invalid_value). A file
# changed on disk after the engine started fails its job, not the engine.
set -u
srcdir=${srcdir:-.}
top=$(cd "$srcdir" && pwd)
bld=$(pwd)
fix=${SDW_FIXTURES:-$top/tests/fixtures}
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
diag() { sed 's/^/# /'; }

for tool in curl nginx python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "Bail out! $tool is required"; exit 1; }
done

run=$(mktemp -d /tmp/sdw-lora-svc-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$run/loras"
cp "$fix/lora/a-kohya-locon.safetensors" "$run/loras/locon.safetensors"
cp "$fix/lora/sd2-kohya.safetensors" "$run/loras/sd2.safetensors"
cp "$fix/lora/a-kohya-attn.safetensors" "$run/loras/changing.safetensors"
cp "$fix/lora/xl-kohya.safetensors" "$run/loras/xl.safetensors"
cp "$fix/lora/a-lcm.safetensors" "$run/loras/lcm.safetensors"
# Hand-made files (no torch here): keys that match nothing, a rank that no
# layer takes, and a truncated file.
python3 - "$run/loras" "$fix/lora/a-peft.safetensors" <<'PY'
import json, struct, sys
d = sys.argv[1]
def write(path, tensors):
    hdr, data = {}, b""
    for name, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * n]}
        data += struct.pack("<%df" % n, *([0.01] * n))
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)
write(d + "/nowhere.safetensors", [("lora_unet_nowhere_to_q.lora_down.weight", [4, 32]),
                                   ("lora_unet_nowhere_to_q.lora_up.weight", [32, 4])])
q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
write(d + "/wide.safetensors", [(q + ".lora_down.weight", [4, 48]), (q + ".lora_up.weight", [32, 4])])
peft = open(sys.argv[2], "rb").read()
open(d + "/cut.safetensors", "wb").write(peft[: len(peft) // 2])
PY

export SDW_BUILD_DIR=$bld SDW_RUN_DIR=$run SDW_PORT=$port SDW_MODEL=$fix/models/tiny-a SDW_MODEL_NAME=a \
  SDW_OPTS="engine.warmup=0 model.sd2=$fix/models/tiny-sd2 model.xl=$fix/models/tiny-sdxl lora.attn=$fix/lora/a-kohya-attn.safetensors
    lora_dir=$run/loras limits.max_loras=2 lora_cache_bytes=1M"
url=http://127.0.0.1:$port
cleanup() { "$top/scripts/start-service" stop >/dev/null 2>&1; rm -rf "$run"; }
trap cleanup EXIT

out=$("$top/scripts/start-service" 2>&1); rc=$?
ok $rc "start-service starts with LoRAs configured: $(echo "$out" | tail -n 1)"
[ $rc -eq 0 ] || { echo "$out" | diag; cat "$run/engine.log" 2>/dev/null | tail -20 | diag; echo "1..$n"; exit 1; }

curl -s "$url/v1/models" >"$run/models.json"
ok $(grep -q '"name":"a",[^]]*"loras":\["attn","changing","lcm","locon"\]' "$run/models.json" &&
     grep -q '"name":"sd2",[^]]*"loras":\["sd2"\]' "$run/models.json" &&
     grep -q '"name":"xl",[^]]*"loras":\["xl"\]' "$run/models.json"; echo $?) \
  "/v1/models lists the LoRAs that fit each model: $(cat "$run/models.json")"
ok $(grep -q 'LoRA attn: fits 1 of 3 models' "$run/engine.log"; echo $?) "the engine logs what each LoRA fits"

# post LORAS [MODEL [FIELDS]]: submits a 2-step job (FIELDS: more of the
# body, ending in a comma); status in $code, body in $body.
post() {
  code=$(curl -s -o "$run/b" -w '%{http_code}' -H 'Content-Type: application/json' "$url/v1/jobs" \
    -d "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"${2:-a}\",\"prompt\":\"x\",\"width\":64,\"height\":64,\"steps\":2,\"seed\":3,${3:-}\"loras\":$1}")
  body=$(cat "$run/b")
}
has() { case $body in *"$1"*) return 0 ;; esac; return 1; }
refused() { [ "$code" = "$1" ] && has "{\"error\":{\"code\":\"$2\"" && has "\"field\":\"loras\""; }

post '[{"name":"attn","weight":0.8},{"name":"locon","weight":-0.5}]'
id=$(echo "$body" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
curl -sN "$url/v1/jobs/$id/stream" >"$run/two.sse"
ok $([ "$code" = 202 ] && grep -q '^event: complete' "$run/two.sse" && grep -q '"lora_s":' "$run/two.sse"; echo $?) \
  "a job with two LoRAs (one negative) completes: $code $(grep -o '"code":"[a-z_]*"' "$run/two.sse")"
curl -s "$url/v1/jobs/$id" >"$run/two.json"
ok $(grep -q '"loras":\[{"name":"attn","weight":0.8},{"name":"locon","weight":-0.5}\]' "$run/two.json"; echo $?) \
  "the job's params show its LoRAs: $(grep -o '"loras":[^]]*]' "$run/two.json")"

# completes JOB-NAME: streams the job just posted to $run/JOB-NAME.sse; true when it completed.
completes() {
  id=$(echo "$body" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
  curl -sN "$url/v1/jobs/$id/stream" >"$run/$1.sse"
  [ "$code" = 202 ] && grep -q '^event: complete' "$run/$1.sse"
}
# like SSE CASE: the image of a completed job's stream against diffusers'
# (tests/fixtures/lora/CASE.safetensors, "image"), every pixel within 1.
like() {
  python3 - "$1" "$fix/lora/$2.safetensors" <<'PY'
import base64, json, struct, sys, zlib
ev = [json.loads(l[5:]) for l in open(sys.argv[1]) if l.startswith("data:") and '"complete"' in l][0]
png = base64.b64decode(ev["image"])
w, h, depth, ctype = struct.unpack(">IIBB", png[16:26])
assert depth == 8 and ctype == 2, (depth, ctype)
pos, idat = 8, b""
while pos < len(png):
    n, t = struct.unpack(">I4s", png[pos:pos + 8])
    idat += png[pos + 8:pos + 8 + n] if t == b"IDAT" else b""
    pos += 12 + n
raw, stride, px, prev = zlib.decompress(idat), 3 * w, [], bytes(3 * w)
for y in range(h):
    f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a, b, c = row[i - 3] if i >= 3 else 0, prev[i], prev[i - 3] if i >= 3 else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        pred = [0, a, b, (a + b) // 2, a if pa <= pb and pa <= pc else b if pb <= pc else c][f]
        row[i] = (row[i] + pred) & 255
    px += row
    prev = row
ref = open(sys.argv[2], "rb").read()
hl = struct.unpack("<Q", ref[:8])[0]
t = json.loads(ref[8:8 + hl])["image"]
lo, hi = t["data_offsets"]
want = struct.unpack("<%df" % ((hi - lo) // 4), ref[8 + hl + lo:8 + hl + hi])
sys.exit(len(want) != len(px) or max(abs(a - b) for a, b in zip(px, want)) > 1)
PY
}
# The two cases of fixtures_lora.py, through the service.
ref='"prompt":"a photo of a cat","negative_prompt":"blurry","seed":77,"steps":4,'
post '[{"name":"xl","weight":0.8}]' xl "$ref\"sampler\":\"euler\",\"guidance_scale\":5,"
ok $(completes xl && like "$run/xl.sse" gen-xl-kohya >/dev/null; echo $?) \
  "an SDXL job with kohya's SGM-named LoRA gives diffusers' image (gen-xl-kohya, pixels within 1): $code"
post '[{"name":"lcm","weight":1}]' a "$ref\"sampler\":\"lcm\",\"guidance_scale\":1.5,"
ok $(completes lcm && like "$run/lcm.sse" gen-a-lcm-g15 >/dev/null; echo $?) \
  "an LCM-LoRA job (lcm sampler, 4 steps, CFG 1.5) gives diffusers' image (gen-a-lcm-g15): $code"

post '[{"name":"nope"}]'
ok $(refused 404 unknown_lora && has 'LoRA \"nope\" is not configured; LoRAs: attn, changing, cut, lcm, locon, nowhere, sd2, wide, xl'; echo $?) \
  "an unknown LoRA: 404 unknown_lora with the names ($body)"
post '[{"name":"sd2"}]'
ok $(refused 400 lora_mismatch && has 'LoRA \"sd2\" does not fit model a: is for sd2, the model is sd1'; echo $?) \
  "an SD 2 LoRA on an SD 1 model: 400 lora_mismatch ($body)"
post '[{"name":"attn"}]' sd2
ok $(refused 400 lora_mismatch && has 'is for sd1, the model is sd2'; echo $?) "an SD 1 LoRA on an SD 2 model ($body)"
post '[{"name":"attn"}]' xl
ok $(refused 400 lora_mismatch && has 'is for sd1, the model is sdxl'; echo $?) "an SD 1 LoRA on an SDXL model ($body)"
post '[{"name":"xl"}]'
ok $(refused 400 lora_mismatch && has 'is for sdxl, the model is sd1'; echo $?) "an SDXL LoRA on an SD 1 model ($body)"
post '[{"name":"locon"}]' sd2
ok $(refused 400 lora_mismatch && has 'shape mismatch'; echo $?) "a LoRA without metadata on another family: shapes ($body)"
post '[{"name":"nowhere"}]'
ok $(refused 400 lora_mismatch && has 'matches a layer'; echo $?) "a LoRA whose keys match nothing ($body)"
post '[{"name":"wide"}]'
ok $(refused 400 lora_mismatch && has 'shape mismatch, down [4,48]'; echo $?) "a rank/shape mismatch ($body)"
post '[{"name":"cut"}]'
ok $(refused 400 lora_mismatch && has 'cut.safetensors'; echo $?) "a truncated file: refused, naming it ($body)"
post '[{"name":"attn","weight":4.01}]'
ok $(refused 400 invalid_value && has 'weight must be a number in [-4, 4]'; echo $?) "a weight beyond 4 ($body)"
post '[{"name":"attn","weight":1e999}]'
ok $([ "$code" = 400 ]; echo $?) "an infinite weight ($body)"
post '[{"name":"attn"},{"name":"locon"},{"name":"changing"}]'
ok $(refused 400 invalid_value && has '3 LoRAs: at most 2 (limits.max_loras)'; echo $?) "more LoRAs than the maximum ($body)"
post '[{"path":"/etc/passwd"}]'
ok $(refused 400 invalid_value && has 'never by path'; echo $?) "a path instead of a name ($body)"

# Changed on disk after the engine's check: read again for the job, and
# its failure is the job's; the engine goes on.
cp "$run/loras/sd2.safetensors" "$run/loras/changing.safetensors"
post '[{"name":"changing"}]'
id=$(echo "$body" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
curl -sN "$url/v1/jobs/$id/stream" >"$run/changed.sse"
ok $([ "$code" = 202 ] && grep -q '"code":"lora_failed"' "$run/changed.sse" && grep -q 'is for sd2' "$run/changed.sse"; echo $?) \
  "a LoRA file replaced by another family's fails its job: $(grep -o '"message":"[^"]*"' "$run/changed.sse")"
post '[]'
id=$(echo "$body" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
curl -sN "$url/v1/jobs/$id/stream" >"$run/after.sse"
ok $(grep -q '^event: complete' "$run/after.sse"; echo $?) "and the next job runs"

"$bld/sdworker" image generate --url "$url" --model a --prompt "x" --width 64 --height 64 --steps 2 --seed 3 \
  --lora attn:0.8 --lora locon:-0.5 --output "$run/cli.png" --quiet >"$run/cli.out" 2>&1
ok $([ "$(head -c 8 "$run/cli.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; echo $?) \
  "sdworker image generate --lora NAME:WEIGHT (twice) writes a PNG: $(cat "$run/cli.out")"
"$bld/sdworker" image generate --url "$url" --model a --prompt "x" --lora nope:1 --output "$run/x.png" --quiet >"$run/cli2.out" 2>&1
ok $(grep -q 'nope' "$run/cli2.out"; echo $?) "an unknown LoRA from the CLI reports the service's error: $(cat "$run/cli2.out")"

echo "1..$n"
[ $failed -eq 0 ]
