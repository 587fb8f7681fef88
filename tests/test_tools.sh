#!/bin/sh
# sdworker-mkmodel and sdworker-generate end to end, on the tiny random model:
# txt2img, img2img and inpainting, the PNG and its parameters chunk, resizing
# of inputs that are not multiples of 8, the error exits, and the single-file
# LDM layout, and the bundled vocabulary found without SDW_DATA_DIR (as an
# uninstalled build runs). TAP output. SDW_SLOW_TESTS=1 also builds an SD 1.5
# single file (about 2 GB) and generates from it, without SDW_DATA_DIR.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${SDW_TOOLS_DIR:-$PWD/src/tools}
fix=${SDW_FIXTURES:-$top/tests/fixtures}/tools
: "${SDW_DATA_DIR:=$top/data}"
export SDW_DATA_DIR
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-tools.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
    d=$1; shift
    if "$@" >"$tmp/check.out" 2>&1; then ok "$d"; else not_ok "$d" "$(tail -5 "$tmp/check.out")"; fi
}
skip() { n=$((n + 1)); echo "ok $n # SKIP $1"; }

# PNG width and height from the IHDR chunk.
png_size() { od -An -tu1 -j16 -N8 "$1" | awk '{print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8}'; }
has_size() { [ -f "$1" ] && [ "$(png_size "$1")" = "$2" ]; }
# The tEXt chunk: keyword, NUL, text (uncompressed, so grep -a sees it).
has_param() { grep -aq "$2" "$1" && grep -aq "parameters" "$1"; }
# run EXPECTED_STATUS STDERR_PATTERN COMMAND...
exits() {
    want=$1 pat=$2; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"
    got=$?
    [ "$got" -eq "$want" ] && grep -q -- "$pat" "$tmp/err"
}

gen() { "$bin/sdworker-generate" --model "$tmp/tiny" --prompt "a photo of a cat" --steps 2 "$@"; }

check "mkmodel tiny" "$bin/sdworker-mkmodel" --config tiny --seed 3 "$tmp/tiny"
for f in model_index.json text_encoder/config.json text_encoder/model.safetensors tokenizer/vocab.json \
    tokenizer/merges.txt tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json unet/config.json \
    unet/diffusion_pytorch_model.safetensors vae/config.json vae/diffusion_pytorch_model.safetensors \
    scheduler/scheduler_config.json; do
    [ -s "$tmp/tiny/$f" ] || missing="${missing:-} $f"
done
if [ -z "${missing:-}" ]; then ok "diffusers layout complete"; else not_ok "diffusers layout complete" "missing:$missing"; fi
check "same seed, same weights" sh -c "'$bin/sdworker-mkmodel' --config tiny --seed 3 '$tmp/tiny2' &&
    cmp '$tmp/tiny/unet/diffusion_pytorch_model.safetensors' '$tmp/tiny2/unet/diffusion_pytorch_model.safetensors'"
check "another seed, other weights" sh -c "'$bin/sdworker-mkmodel' --config tiny --seed 4 '$tmp/tiny3' &&
    ! cmp -s '$tmp/tiny/unet/diffusion_pytorch_model.safetensors' '$tmp/tiny3/unet/diffusion_pytorch_model.safetensors'"

check "txt2img 64x64" gen --width 64 --height 64 --seed 7 --sampler euler --output "$tmp/t.png"
check "txt2img PNG is 64x64" has_size "$tmp/t.png" 64x64
check "parameters chunk" has_param "$tmp/t.png" "Seed: 7"
check "parameters name the sampler and size" has_param "$tmp/t.png" "Sampler: euler, CFG scale: 7.5, Seed: 7, Size: 64x64"
gen --width 64 --height 64 --seed 7 --sampler euler --quiet --output "$tmp/t2.png"
check "same seed, same image" cmp "$tmp/t.png" "$tmp/t2.png"
gen --width 64 --height 48 --seed 7 --quiet --output "$tmp/l.png" --latents "$tmp/l1.f32"
gen --width 64 --height 48 --seed 7 --quiet --output "$tmp/l.png" --latents "$tmp/l2.f32"
gen --width 64 --height 48 --seed 8 --quiet --output "$tmp/l.png" --latents "$tmp/l3.f32"
if [ "$(stat -c %s "$tmp/l1.f32" 2>/dev/null)" = $((4 * 6 * 8 * 4)) ] && cmp -s "$tmp/l1.f32" "$tmp/l2.f32" &&
    ! cmp -s "$tmp/l1.f32" "$tmp/l3.f32"; then
    ok "--latents writes 4x6x8 floats, the same for the same seed"
else
    not_ok "--latents" "$(ls -l "$tmp"/l*.f32 2>&1)"
fi
gen --width 64 --height 64 --quiet --output "$tmp/r.png" >"$tmp/r.out" 2>&1
if grep -q "Seed: [0-9]" "$tmp/r.png" && [ -s "$tmp/r.png" ]; then ok "random seed recorded"; else not_ok "random seed recorded"; fi
gen --width 64 --height 64 --sampler euler --output "$tmp/p.png" >"$tmp/p.out" 2>"$tmp/p.err"
if grep -q "^seed: [0-9]" "$tmp/p.out" && grep -q "s/step" "$tmp/p.out" && grep -q "vae decode" "$tmp/p.out" &&
    grep -q "step 2/2" "$tmp/p.err"; then
    ok "seed, timings and progress printed"
else
    not_ok "seed, timings and progress printed" "$(cat "$tmp/p.out" "$tmp/p.err")"
fi
gen --width 64 --height 64 --seed 7 --sampler euler --quiet --profile=5 --output "$tmp/pr.png" >"$tmp/pr.out" 2>&1
rows=$(sed -n '/^  share/,/^(/p' "$tmp/pr.out" | grep -c '%')
if cmp -s "$tmp/pr.png" "$tmp/t.png" && grep -q "^profile: [0-9]* ops" "$tmp/pr.out" && [ "$rows" = 5 ] &&
    sed -n "/^by op:/,\$p" "$tmp/pr.out" | grep -q " conv2d$"; then
    ok "--profile=5: the same image, then five costliest shapes and the totals per op"
else
    not_ok "--profile=5" "$(cat "$tmp/pr.out")"
fi
gen --width 64 --height 64 --seed 7 --sampler euler --warmup --timings --output "$tmp/w.png" >"$tmp/w.out" 2>&1
if cmp -s "$tmp/w.png" "$tmp/t.png" && grep -q "^warm-up: [0-9.]* s (text encode" "$tmp/w.out" &&
    grep -q '"warmup_s":[0-9.]*[1-9]' "$tmp/w.out" && [ "$(grep -c "^step 2/2" "$tmp/w.out")" = 1 ]; then
    ok "--warmup: one untimed generation first, its times on one line and in the JSON, then the same image"
else
    not_ok "--warmup" "$(cat "$tmp/w.out")"
fi
exits 2 "--profile" gen --profile=0 --output "$tmp/x.png" && ok "--profile=0 is refused" ||
    not_ok "--profile=0 is refused" "$(cat "$tmp/err")"
check "txt2img 512x512" gen --steps 1 --guidance 1 --seed 1 --quiet --output "$tmp/big.png"
check "512x512 PNG" has_size "$tmp/big.png" 512x512

exits 0 "resized from 70x52 to 64x48" gen --init-image "$fix/init-70x52.png" --strength 0.6 --seed 5 \
    --output "$tmp/i.png" && ok "img2img resizes a 70x52 init image" || not_ok "img2img resizes a 70x52 init image" "$(cat "$tmp/err")"
check "img2img PNG is 64x48" has_size "$tmp/i.png" 64x48
exits 0 "mask .*resized from 30x20 to 64x48" gen --init-image "$fix/init-70x52.png" --mask "$fix/mask-30x20.png" \
    --seed 5 --output "$tmp/m.png" && ok "inpaint resizes the mask to the image" || not_ok "inpaint resizes the mask to the image" "$(cat "$tmp/err")"
check "inpaint PNG is 64x48" has_size "$tmp/m.png" 64x48

exits 2 "valid: euler, euler_a" gen --sampler nope && ok "unknown sampler lists the valid ones" || not_ok "unknown sampler" "$(cat "$tmp/err")"
exits 2 "required" "$bin/sdworker-generate" --prompt x && ok "missing --model" || not_ok "missing --model" "$(cat "$tmp/err")"
exits 4 "cannot load the model" "$bin/sdworker-generate" --model "$tmp/nowhere" --prompt x && ok "missing model" || not_ok "missing model" "$(cat "$tmp/err")"
echo "not an image" >"$tmp/bad.png"
exits 3 "init image" gen --init-image "$tmp/bad.png" && ok "unreadable init image" || not_ok "unreadable init image" "$(cat "$tmp/err")"
exits 3 "mask" gen --init-image "$fix/init-70x52.png" --mask "$tmp/nowhere.png" && ok "missing mask" || not_ok "missing mask" "$(cat "$tmp/err")"
exits 2 "multiples of 8" gen --width 60 --height 64 && ok "txt2img size not a multiple of 8" || not_ok "txt2img size" "$(cat "$tmp/err")"
exits 2 "needs --init-image" gen --mask "$fix/mask-30x20.png" && ok "mask without init image" || not_ok "mask without init image" "$(cat "$tmp/err")"
exits 2 "--steps" gen --steps 0 && ok "bad --steps" || not_ok "bad --steps" "$(cat "$tmp/err")"
exits 2 "unknown config" "$bin/sdworker-mkmodel" --config huge "$tmp/x" && ok "mkmodel: unknown config" || not_ok "mkmodel: unknown config" "$(cat "$tmp/err")"
if "$bin/sdworker-generate" --help | grep -q "Exit status"; then ok "--help documents exit codes"; else not_ok "--help"; fi

check "mkmodel --single-file tiny" "$bin/sdworker-mkmodel" --config tiny --seed 3 --single-file "$tmp/tiny.safetensors"
for k in cond_stage_model.transformer.text_model.embeddings.token_embedding.weight \
    model.diffusion_model.input_blocks.0.0.weight model.diffusion_model.middle_block.1.proj_in.weight \
    model.diffusion_model.out.2.bias first_stage_model.decoder.up.3.block.0.conv1.weight \
    first_stage_model.decoder.mid.attn_1.q.weight first_stage_model.post_quant_conv.weight; do
    grep -aq "\"$k\"" "$tmp/tiny.safetensors" || absent="${absent:-} $k"
done
if [ -z "${absent:-}" ]; then ok "single file has LDM names"; else not_ok "single file has LDM names" "absent:$absent"; fi

# SD 2.x: the folder (v-prediction DDIM) generates; the single file holds
# the OpenCLIP key set (fused in_proj, one block more than is used, the text
# projection) and loads through the text encoder and the UNet read off its
# shapes, stopping at the VAE, which is tiny, not SD's.
check "mkmodel tiny-sd2" "$bin/sdworker-mkmodel" --config tiny-sd2 --seed 3 "$tmp/sd2"
check "tiny-sd2 txt2img" "$bin/sdworker-generate" --model "$tmp/sd2" --prompt "a photo of a cat" --steps 2 \
    --width 64 --height 64 --seed 1 --quiet --output "$tmp/sd2.png"
grep -q '"pad_token": "!"' "$tmp/sd2/tokenizer/tokenizer_config.json" &&
    grep -q '"prediction_type": "v_prediction"' "$tmp/sd2/scheduler/scheduler_config.json" &&
    grep -q '"hidden_act": "gelu"' "$tmp/sd2/text_encoder/config.json" && ! grep -aq '"text_model\.' \
    "$tmp/sd2/text_encoder/model.safetensors" && ok "tiny-sd2 folder: pad \"!\", v-prediction, gelu, no text_model." ||
    not_ok "tiny-sd2 folder: pad \"!\", v-prediction, gelu, no text_model."
check "mkmodel tiny-sdxl" "$bin/sdworker-mkmodel" --config tiny-sdxl --seed 3 "$tmp/sdxl"
check "tiny-sdxl generates with SDXL's micro-conditioning" "$bin/sdworker-generate" --model "$tmp/sdxl" \
    --prompt "a cat" --steps 2 --width 64 --height 64 --original-size 1024x768 --crop 16,32 --target-size 64x64 \
    --seed 3 --quiet --output "$tmp/sdxl.png"
check "tiny-sdxl PNG is 64x64" has_size "$tmp/sdxl.png" 64x64
exits 2 "folders only" "$bin/sdworker-mkmodel" --config tiny-sdxl --single-file "$tmp/x.safetensors" &&
    ok "mkmodel: no SDXL single file" || not_ok "mkmodel: no SDXL single file" "$(cat "$tmp/err")"
exits 5 "SDXL models only" "$bin/sdworker-generate" --model "$tmp/sd2" --prompt x --steps 1 --crop 0,8 \
    --output "$tmp/x.png" && ok "--crop for an SD 2 model is refused" ||
    not_ok "--crop for an SD 2 model is refused" "$(cat "$tmp/err")"
check "mkmodel --single-file tiny-sd2" "$bin/sdworker-mkmodel" --config tiny-sd2 --seed 3 --single-file "$tmp/sd2.safetensors"

absent=
for k in cond_stage_model.model.token_embedding.weight cond_stage_model.model.positional_embedding \
    cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight \
    cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.bias cond_stage_model.model.ln_final.weight \
    cond_stage_model.model.text_projection model.diffusion_model.middle_block.1.proj_in.weight; do
    grep -aq "\"$k\"" "$tmp/sd2.safetensors" || absent="$absent $k"
done
if [ -z "$absent" ] && ! grep -aq '"cond_stage_model.model.transformer.resblocks.3.' "$tmp/sd2.safetensors"; then
    ok "SD 2 single file has the OpenCLIP names, 3 blocks for 2 layers"
else
    not_ok "SD 2 single file has the OpenCLIP names" "absent:$absent"
fi
exits 4 "loading vae" "$bin/sdworker-generate" --model "$tmp/sd2.safetensors" --prompt x --steps 1 \
    --output "$tmp/x.png" && ! grep -q "text encoder\|loading unet" "$tmp/err" &&
    ok "SD 2 single file: text encoder and UNet load, the tiny VAE is not SD's" ||
    not_ok "SD 2 single file: text encoder and UNet load" "$(cat "$tmp/err")"

# Without SDW_DATA_DIR a program run from the build tree finds data/ itself
# (base/datadir.h). A single file has no tokenizer/ folder, so opening one
# loads the bundled vocabulary; the tiny one then stops at the UNet, whose
# shapes are not SD 1.x's, which shows the vocabulary was found.
env -u SDW_DATA_DIR "$bin/sdworker-mkmodel" --config tiny --seed 3 "$tmp/tiny-nodata" 2>"$tmp/err" &&
    cmp -s "$tmp/tiny/tokenizer/vocab.json" "$tmp/tiny-nodata/tokenizer/vocab.json" &&
    ok "without SDW_DATA_DIR: mkmodel writes the bundled vocabulary" ||
    not_ok "without SDW_DATA_DIR: mkmodel writes the bundled vocabulary" "$(cat "$tmp/err")"
exits 4 "loading unet" env -u SDW_DATA_DIR "$bin/sdworker-generate" --model "$tmp/tiny.safetensors" \
    --prompt x --steps 1 --output "$tmp/x.png" && ! grep -q "tokenizer" "$tmp/err" &&
    ok "without SDW_DATA_DIR: a single file's bundled tokenizer is found" ||
    not_ok "without SDW_DATA_DIR: a single file's bundled tokenizer is found" "$(cat "$tmp/err")"
cp "$bin/sdworker-generate" "$tmp/elsewhere"
exits 4 "(installed); set SDW_DATA_DIR" env -u SDW_DATA_DIR "$tmp/elsewhere" --model "$tmp/tiny.safetensors" \
    --prompt x --output "$tmp/x.png" && ! grep -q "source tree" "$tmp/err" &&
    ok "a copy outside the build tree looks in the installed data only, and says so" ||
    not_ok "a copy outside the build tree looks in the installed data only, and says so" "$(cat "$tmp/err")"
exits 4 "nowhere/bpe_simple_vocab_16e6.txt.gz" env SDW_DATA_DIR="$tmp/nowhere" "$bin/sdworker-generate" \
    --model "$tmp/tiny.safetensors" --prompt x --output "$tmp/x.png" &&
    ok "SDW_DATA_DIR, when set, is the only place looked in" ||
    not_ok "SDW_DATA_DIR, when set, is the only place looked in" "$(cat "$tmp/err")"

if [ "${SDW_SLOW_TESTS:-0}" = 1 ]; then
    check "mkmodel --single-file sd15" "$bin/sdworker-mkmodel" --config sd15 --single-file "$tmp/sd15.safetensors"
    check "generate from an SD 1.5 single file, without SDW_DATA_DIR" env -u SDW_DATA_DIR \
        "$bin/sdworker-generate" --model "$tmp/sd15.safetensors" \
        --prompt "a photo of a cat" --steps 1 --width 64 --height 64 --seed 1 --quiet --output "$tmp/s.png"
    check "single-file PNG" has_size "$tmp/s.png" 64x64
else
    skip "SD 1.5 single file (set SDW_SLOW_TESTS=1; sdworker reads SD 1.x single files as SD 1.x-sized)"
fi

echo "1..$n"
