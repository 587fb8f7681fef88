#!/usr/bin/env bash
# The whole service as scripts/start-service runs it by default (the tiny
# demo model made by sdworker-mkmodel on first start, the real engine, the
# FastCGI pool, a private nginx on a free loopback port), driven over HTTP
# with curl and the sdworker client: the model list, the three operations,
# cancel, 20 concurrent jobs, and kill -9 of the engine mid-job.
set -u
srcdir=${srcdir:-.}
top=$(cd "$srcdir" && pwd)
bld=$(pwd)
fix=${SDW_FIXTURES:-$top/tests/fixtures}
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
diag() { sed 's/^/# /'; }

for tool in curl nginx; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "Bail out! $tool is required (scripts/install-deps installs it)"; exit 1; }
done

run=$(mktemp -d /tmp/sdw-service-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + $$ % 20000)))
# No SDW_MODEL: the default start, which makes the tiny demo model first.
# No SDW_DATA_DIR either: start-service must find the tree's data itself.
unset SDW_DATA_DIR
# A small warm-up, which the CPU does not get by default.
# Per-model request defaults, as an SD-Turbo model would have them.
export SDW_BUILD_DIR=$bld SDW_RUN_DIR=$run SDW_PORT=$port \
  SDW_OPTS="engine.warmup=64 model.tiny.steps=3 model.tiny.guidance=0 model.tiny.size=64x72
    model.sd2=$top/tests/fixtures/models/tiny-sd2 model.sd2.steps=2"
url=http://127.0.0.1:$port
cleanup() { "$top/scripts/start-service" stop >/dev/null 2>&1; rm -rf "$run"; }
trap cleanup EXIT

out=$("$top/scripts/start-service" 2>&1); rc=$?
ok $rc "start-service starts engine, pool and nginx: $(echo "$out" | tail -n 1)"
[ $rc -eq 0 ] || { echo "$out" | diag; echo "1..$n"; exit 1; }

grep '^[[:space:]]*#' "$top/conf/nginx/nginx-local.conf.in" > "$run/comments.in"
ok $(tail -n +3 "$run/nginx.conf" | grep '^[[:space:]]*#' | cmp -s - "$run/comments.in"; echo $?) \
  "the generated run/nginx.conf keeps the template's comments as written"
code=$(curl -s -o "$run/ready.json" -w '%{http_code}' "$url/ready")
ok $([ "$code" = 200 ] && grep -q '"ready":true' "$run/ready.json"; echo $?) "/ready is 200 once the model is loaded"
ok $(curl -fs "$url/" | grep -q 'id="generate"'; echo $?) "the demo page is served"
ok $(grep -q 'model tiny warmed up at 64x64' "$run/engine.log"; echo $?) "the engine warmed the model up before ready"
ok $(grep -q '"families":{"tiny":"sd1","sd2":"sd2"}' "$run/ready.json"; echo $?) "/ready gives each model's family"
curl -s "$url/v1/models" >"$run/models.json"
ok $(grep -q '"name":"tiny","default":true,"family":"sd1","prediction":"epsilon","inpainting":false,"loras":\[\],"defaults":{"steps":3,"guidance_scale":0.0,"width":64,"height":72,"sampler":null}' "$run/models.json"; echo $?) \
  "/v1/models gives the family and the request defaults: $(cat "$run/models.json")"
ok $(grep -Eq '"sampler":null\},"memory":\{"weights_bytes":[1-9][0-9]*,"bytes_per_pixel":[1-9][0-9]*,"max_pixels":[1-9][0-9]*\}' "$run/models.json" &&
  grep -Eq 'model tiny: weights [0-9]+ MiB as held; .* up to [0-9]+ pixels \([0-9]+x[0-9]+\)' "$run/engine.log"; echo $?) \
  "the engine logs its memory estimate for each model and /v1/models lists it: $(grep -o 'model tiny: weights.*' "$run/engine.log")"
bare=$(curl -s -H 'Content-Type: application/json' "$url/v1/jobs" \
  -d '{"operation":"image_generation","hive_id":"h","model":"tiny","prompt":"a bare request","seed":1}' |
  sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
curl -sN "$url/v1/jobs/$bare/stream" >"$run/bare.sse"
curl -s "$url/v1/jobs/$bare" >"$run/bare.json"
ok $(grep -q '"steps":3,"guidance_scale":0.0,"width":64,"height":72' "$run/bare.json" && grep -q '^event: complete' "$run/bare.sse"; echo $?) \
  "a bare request runs with the model's configured defaults: $(grep -o '"params":.*' "$run/bare.json")"
ok $(grep -q '"name":"sd2","default":false,"family":"sd2","prediction":"v_prediction","inpainting":false,"loras":\[\],"defaults":{"steps":2,"guidance_scale":7.5,"width":64,"height":64,"sampler":null}' "$run/models.json"; echo $?) \
  "an SD 2 model is listed with its family, v-prediction and its trained size as the default"
"$bld/sdworker" model list --url "$url" >"$run/models.txt" 2>&1
ok $(grep -Eq '^tiny \(default\) +sd1 +epsilon +64x72 +3 +0 +model'"'"'s$' "$run/models.txt" &&
     grep -Eq '^sd2 +sd2 +v_prediction +64x64 +2 +7\.5 +model'"'"'s$' "$run/models.txt"; echo $?) \
  "sdworker model list shows both models with their family and defaults: $(tr '\n' '|' <"$run/models.txt")"
bare=$(curl -s -H 'Content-Type: application/json' "$url/v1/jobs" \
  -d '{"operation":"image_generation","hive_id":"h","model":"sd2","prompt":"a bare request!","seed":2}' |
  sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
curl -sN "$url/v1/jobs/$bare/stream" >"$run/bare2.sse"
ok $(grep -q '^event: complete' "$run/bare2.sse" && grep -q '"width":64,"height":64' "$run/bare2.sse"; echo $?) \
  "the SD 2 model runs a bare request at its own size: $(grep -o '"code":"[a-z_]*"' "$run/bare2.sse")"

cli() { "$bld/sdworker" image "$@" --url "$url" --model tiny --quiet; }
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; }

cli generate --prompt "a red cube" --width 64 --height 96 --steps 4 --seed 5 --output "$run/gen.png" >"$run/gen.out" 2>&1
ok $(is_png "$run/gen.png" && grep -q 5 "$run/gen.out"; echo $?) "image_generation through nginx writes a PNG and reports its seed"
cli transform --prompt "a blue cube" --input "$fix/pipeline/init-64x64.png" --strength 0.6 --steps 5 --output "$run/tr.png" >/dev/null 2>&1
ok $(is_png "$run/tr.png"; echo $?) "image_transform with an init image"
cli inpaint --prompt "a hole" --input "$fix/pipeline/init-64x64.png" --mask "$fix/pipeline/mask-64x64.png" --steps 4 --output "$run/in.png" >/dev/null 2>&1
ok $(is_png "$run/in.png"; echo $?) "image_inpaint with a mask"

post() {
  curl -s -H 'Content-Type: application/json' "$url/v1/jobs" \
    -d "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"tiny\",\"prompt\":\"x\",\"width\":64,\"height\":64,\"steps\":$1,\"sampler\":\"euler\"}" |
    sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p'
}
# Streams a job to a file in the background; waits for the first progress.
stream_bg() {
  curl -sN "$url/v1/jobs/$1/stream" >"$2" & echo $! >"$2.pid"
  for _ in $(seq 1200); do grep -q "^event: progress" "$2" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

id=$(post 150)
stream_bg "$id" "$run/cancel.sse"
code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$url/v1/jobs/$id")
wait "$(cat "$run/cancel.sse.pid")" 2>/dev/null
ok $([ "$code" = 200 ]; echo $?) "DELETE of a running job answers 200 as rbee does ($code)"
ok $(grep -q '"code":"cancelled"' "$run/cancel.sse" && ! grep -q '^event: complete' "$run/cancel.sse"; echo $?) \
  "its stream ends with a cancelled error event"

pids=()
for i in $(seq 20); do
  cli generate --prompt "job $i" --width 64 --height 64 --steps 2 --seed "$i" --output "$run/c$i.png" >/dev/null 2>&1 &
  pids+=($!)
done
okc=0
for i in $(seq 20); do wait "${pids[$((i-1))]}" && is_png "$run/c$i.png" && okc=$((okc+1)); done
ok $([ $okc -eq 20 ]; echo $?) "20 concurrent jobs all complete ($okc/20)"

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  TAP_START=$n /usr/bin/python3 "$top/tests/browser_demo.py" "$url/" "$run/demo.png" "$fix/pipeline/init-64x64.png" >"$run/browser.tap" 2>"$run/browser.err"
  cat "$run/browser.tap"
  n=$((n + $(grep -c '^\(not \)\?ok' "$run/browser.tap")))
  failed=$((failed + $(grep -c '^not ok' "$run/browser.tap")))
  if ! grep -q '^ok' "$run/browser.tap"; then ok 1 "the browser test ran"; diag <"$run/browser.err"; fi
  [ -n "${SDW_SCREENSHOT:-}" ] && cp "$run/demo.png" "$SDW_SCREENSHOT"
else
  echo "Bail out! chromium and chromium-driver are required for the demo page test (scripts/install-deps installs them)"
  exit 1
fi

supervisor=$(cat "$run/engine.pid")
id=$(post 150)
stream_bg "$id" "$run/crash.sse"
waiting=$(post 3)
worker=$(pgrep -P "$supervisor" | head -n 1)
kill -9 "$worker"
wait "$(cat "$run/crash.sse.pid")" 2>/dev/null
ok $(grep -q '"code":"engine_crashed"' "$run/crash.sse"; echo $?) "kill -9 of the engine fails the running job with engine_crashed"
curl -sN "$url/v1/jobs/$waiting/stream" >"$run/after.sse"
ok $(grep -q '^event: complete' "$run/after.sse"; echo $?) "the job queued during the crash completes on the restarted engine"
new=$(pgrep -P "$supervisor" | head -n 1)
ok $([ -n "$new" ] && [ "$new" != "$worker" ]; echo $?) "the supervisor started a new engine process"

"$top/scripts/start-service" stop >/dev/null 2>&1
ok $(! curl -s -o /dev/null "$url/health"; echo $?) "start-service stop stops everything"

echo "1..$n"
[ $failed -eq 0 ]
