#!/bin/sh
# sdworker-fcgi end to end: a private nginx on a free loopback port, the pool
# on a Unix socket in a temporary directory, and tests/test_pool_engine
# playing the engine on a private job ring. Every endpoint and error path is
# driven with curl, then streams (order, replay, late, concurrent), cancel,
# 20 concurrent jobs, kill -9 of a child in mid-stream, SIGHUP reload with a
# stream open, and a graceful SIGTERM. nginx and curl are required: without
# them the test fails (CI installs nginx-light and curl). The template
# already runs nginx in the foreground (daemon off).
srcdir=${srcdir:-.}
POOL=./sdworker-fcgi
ENGINE=./tests/test_pool_engine
. "$srcdir/tests/testlib.sh"
need_service_tools "$POOL" "$ENGINE"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-pool.XXXXXX")
nginx_pid= pool_pid= engine_pid=
cleanup() {
    for p in $engine_pid $pool_pid $nginx_pid; do kill -9 "$p" 2> /dev/null; done
    # The pool's children, should the master have died first.
    [ -n "$pool_pid" ] && pkill -9 -P "$pool_pid" 2> /dev/null
    [ -f "$tmp/sdworker.conf" ] && "$ENGINE" unlink "$tmp/sdworker.conf" 2> /dev/null
    if [ $failed -ne 0 ]; then
        diag "pool log:"; sed 's/^/#   /' "$tmp/pool.log" 2> /dev/null | tail -40
        diag "nginx error log:"; sed 's/^/#   /' "$tmp/run/error.log" 2> /dev/null | tail -20
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

mkdir -p "$tmp/run" "$tmp/www"
# A stream costs nginx two files and the pool one.
ulimit -n "$(ulimit -Hn)" 2> /dev/null
cat > "$tmp/sdworker.conf" << EOF
listen = unix:$tmp/run/fcgi.sock
pm = dynamic
pm.max_children = 40
pm.start_servers = 3
pm.min_spare_servers = 2
pm.max_spare_servers = 6
pm.max_requests = 40
ring.name = /sdw-test-pool-$$
ring.slots = 64
ring.max_queued = 24
ring.input_bytes = 256k
ring.log_bytes = 16k
ring.image_bytes = 64k
result_ttl = 600
keepalive_interval = 1
limits.max_body_bytes = 200k
limits.max_image_bytes = 64k
model.sd15 = models/sd15
model.tiny = models/tiny
log_level = info
EOF
CONF=$tmp/sdworker.conf

"$ENGINE" create "$CONF" || bail "cannot create the job ring"
"$ENGINE" state "$CONF" loading "model loading" || bail "cannot set the engine state"
"$POOL" -c "$CONF" --ring-wait 2 --grace 10 2> "$tmp/pool.log" &
pool_pid=$!

start_nginx 7
wait_health
kill -0 $pool_pid 2> /dev/null
ok $? "sdworker-fcgi runs behind a private nginx on port $port"

# req METHOD PATH [curl args]: status in $code, body in $body, headers in $tmp/h
req() {
    m=$1 p=$2
    shift 2
    code=$(curl -s -X "$m" -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' "$@" "$B$p")
    body=$(cat "$tmp/b")
}
has() { case $body in *"$1"*) return 0 ;; esac; return 1; }
is_error() { [ "$code" = "$1" ] && has "{\"error\":{\"code\":\"$2\",\"message\":\""; }
# same_head PATH: HEAD answers what GET does (status, Content-Type and
# Content-Length) and sends no body.
same_head() {
    get=$(curl -s -o /dev/null -D - "$B$1" | tr -d '\r' | grep -i '^HTTP/\|^Content-Type:\|^Content-Length:' | sed 's/ *$//')
    size=$(curl -s -I -D "$tmp/hh" -o /dev/null -w '%{size_download}' "$B$1")
    hd=$(tr -d '\r' < "$tmp/hh" | grep -i '^HTTP/\|^Content-Type:\|^Content-Length:' | sed 's/ *$//')
    [ -n "$get" ] && [ "$get" = "$hd" ] && [ "$size" = 0 ] || { diag "GET: $get / HEAD: $hd, $size bytes"; false; }
}
post() { req POST /v1/jobs -H 'Content-Type: application/json' --data-binary "$1"; }
job_of() { echo "$body" | sed -n 's/.*"job_id":"\(job-[0-9a-f]*\)".*/\1/p'; }
gen() { echo "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"${2:-sd15}\",\"prompt\":\"$1\",\"steps\":${3:-4}}"; }
# png W H [CUT]: base64 of a W x H RGB PNG (python3's zlib; no pixel data
# beyond 2^20 pixels, for a file that only declares its size), less its last
# CUT bytes.
png() {
    python3 -c '
import base64, struct, sys, zlib
w, h, cut = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
rows = b"".join(b"\0" + bytes((x * 7 + y * 3) & 255 for x in range(3 * w)) for y in range(h)) if w * h <= 1 << 20 else b""
f = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
sys.stdout.write(base64.b64encode(f[:len(f) - cut]).decode())
' "$1" "$2" "${3:-0}"
}
# The header of a 64x64 four-component (CMYK) baseline JPEG: SOI, SOF0, SOS.
cmyk_jpeg() {
    python3 -c '
import base64, sys
sof = bytes([0xff, 0xc0, 0, 20, 8, 0, 64, 0, 64, 4]) + b"".join(bytes([c, 0x11, 0]) for c in range(1, 5))
sos = bytes([0xff, 0xda, 0, 14, 4]) + b"".join(bytes([c, 0]) for c in range(1, 5)) + bytes([0, 63, 0])
sys.stdout.write(base64.b64encode(b"\xff\xd8" + sof + sos + bytes(64) + b"\xff\xd9").decode())'
}
# xf OPERATION INIT [MEMBERS]: a transform or inpaint request around base64 INIT.
xf() { echo "{\"operation\":\"$1\",\"hive_id\":\"h\",\"model\":\"sd15\",\"prompt\":\"x\",\"steps\":3,\"init_image\":\"$2\"$3}"; }
command -v python3 > /dev/null || bail "python3 is required (it makes the test images)"

# ---- service endpoints ----
req GET /health
[ "$code" = 200 ] && has '"status":"healthy"' &&
    echo "$body" | grep -Eq '"timestamp":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z"'
ok $? "GET /health: 200 healthy with an RFC 3339 timestamp"
req GET /ready
[ "$code" = 503 ] && has '"ready":false' && has '"reason":"model loading"'
ok $? "GET /ready while the engine loads: 503 with the ring's reason ($body)"
req GET /v1/models
[ "$code" = 200 ] &&
    has '{"models":[{"name":"sd15","default":true,"family":null,"prediction":null,"inpainting":null,' &&
    has '"defaults":{"steps":20,"guidance_scale":7.5,"width":512,"height":512,"sampler":null},"memory":null},{"name":"tiny","default":false,'
ok $? "GET /v1/models lists the served models, the first as default, null families while the engine loads ($body)"
req GET '/v1/pool/status?full'
[ "$code" = 200 ] && has '"process_manager":"dynamic"' && has '"max_children":40' &&
    has '"accepted_conn":' && has '"active_streams":0' && has '"slots":64' && has '"processes":[{"pid":'
ok $? "GET /v1/pool/status: pool mode, counters, ring and processes"

# ---- error paths ----
post '{"operation":'
is_error 400 invalid_json
ok $? "malformed JSON: 400 invalid_json"
post '{"operation":"make_coffee","hive_id":"h","model":"sd15","prompt":"x"}'
is_error 400 unknown_operation
ok $? "unknown operation: 400 unknown_operation"
post '{"operation":"infer","hive_id":"h","model":"sd15","prompt":"x"}'
is_error 400 unsupported_operation
ok $? "an rbee operation this worker does not run: 400 unsupported_operation"
post "$(gen x sd15 151)"
is_error 400 invalid_value
ok $? "steps out of range: 400 invalid_value"
post '{"operation":"image_generation","hive_id":"h","model":"sd15","prompt":"x","width":12345}'
is_error 400 invalid_value
ok $? "width out of range: 400 invalid_value"
post '{"operation":"image_transform","hive_id":"h","model":"sd15","prompt":"x","init_image":"@@@not base64"}'
is_error 400 invalid_value
ok $? "broken base64: 400 invalid_value"
post '{"operation":"image_transform","hive_id":"h","model":"sd15","prompt":"x","init_image":"aGVsbG8gd29ybGQ="}'
is_error 415 unsupported_media_type && has '"field":"init_image"'
ok $? "an image that is not PNG or JPEG: 415 naming init_image"

# ---- images decoded at submission: each a 400 naming the image ----
post "$(xf image_transform "$(png 64 64 40)")"
is_error 400 invalid_init_image && has '"field":"init_image"' && has 'broken PNG'
ok $? "a truncated PNG: 400 invalid_init_image ($body)"
post "$(xf image_transform "$(png 20000 20000)")"
is_error 400 invalid_init_image && has '20000x20000' && has '"field":"init_image"'
ok $? "a PNG declaring 20000x20000: 400 invalid_init_image ($body)"
post "$(xf image_transform "$(png 1032 1024)")"
is_error 400 invalid_init_image && has '1032x1024'
ok $? "a 1032x1024 PNG, over limits.max_pixels: 400 invalid_init_image"
post "$(xf image_transform "$(cmyk_jpeg)")"
is_error 400 invalid_init_image && has 'CMYK'
ok $? "a CMYK JPEG: 400 invalid_init_image ($body)"
post "$(xf image_transform "$(png 40 64)")"
is_error 400 invalid_init_image && has '40x64'
ok $? "a 40x64 image, a side under 64: 400 invalid_init_image"
post "$(xf image_inpaint "$(png 64 64)" ",\"mask_image\":\"$(png 64 72)\"")"
is_error 400 invalid_mask_image && has '"field":"mask_image"' && has 'same size'
ok $? "a 64x72 mask for a 64x64 image: 400 invalid_mask_image ($body)"
post "$(xf image_inpaint "$(png 64 64)" ",\"mask_image\":\"$(png 64 64 30)\"")"
is_error 400 invalid_mask_image && has 'broken PNG'
ok $? "a truncated mask: 400 invalid_mask_image"
post "$(xf image_transform "$(png 64 64)" ',"strength":0')"
is_error 400 invalid_value && has '"field":"strength"'
ok $? "strength 0: 400 invalid_value naming strength ($body)"
post "$(gen x sd15 | sed 's/}$/,"seed":18446744073709551616}/')"
is_error 400 invalid_value && has '"field":"seed"' && has '18446744073709551615'
ok $? "seed 2^64: 400 invalid_value naming seed, with the range ($body)"
post "$(gen x sd15 | sed 's/}$/,"seed":-1}/')"
is_error 400 invalid_value && has '"field":"seed"'
ok $? "seed -1: 400 invalid_value naming seed"
req GET /v1/pool/status
has '"queued":0'
ok $? "none of the refused requests was queued ($(echo "$body" | grep -o '"queued":[0-9]*'))"
if nm -u "$POOL" > "$tmp/undef" 2> /dev/null; then
    ! grep -Eq 'GOMP_|omp_|cblas_|openblas|cuda|cudnn' "$tmp/undef"
    ok $? "the pool decodes images without linking engine code (no OpenMP, BLAS or CUDA symbols)"
fi
head -c 300000 /dev/zero | tr '\0' 'a' > "$tmp/big"
req POST /v1/jobs -H 'Content-Type: application/json' --data-binary @"$tmp/big"
is_error 413 payload_too_large
ok $? "body over limits.max_body_bytes: 413 from the pool"
head -c 34000000 /dev/zero > "$tmp/huge"
req POST /v1/jobs -H 'Content-Type: application/json' --data-binary @"$tmp/huge"
is_error 413 payload_too_large
ok $? "body over nginx's client_max_body_size: nginx's 413 as JSON"
rm -f "$tmp/huge"
req POST /v1/jobs -H 'Content-Type: text/plain' --data-binary "$(gen x)"
is_error 415 unsupported_media_type
ok $? "wrong Content-Type: 415"
req POST /v1/jobs --data-binary "$(gen x)"
is_error 415 unsupported_media_type
ok $? "form Content-Type (curl's default): 415"
post "$(gen x nosuchmodel)"
is_error 404 unknown_model && has 'sd15, tiny'
ok $? "unknown model: 404 unknown_model naming the served models"
req GET /v1/jobs/job-0123456789abcdef0123456789abcdef
is_error 404 not_found
ok $? "unknown job: 404 not_found"
req DELETE /v1/jobs/job-0123456789abcdef0123456789abcdef
is_error 404 not_found
ok $? "DELETE of an unknown job: 404"
req GET /v1/jobs/job-0123456789abcdef0123456789abcdef/stream
is_error 404 not_found
ok $? "stream of an unknown job: 404"
req GET /v1/jobs/not-a-job-id
is_error 404 not_found
ok $? "malformed job id: 404"
req GET /v1/nothing
is_error 404 not_found && grep -qi '^Content-Type: application/json' "$tmp/h"
ok $? "unknown path under /v1/: 404 not_found as JSON"
req POST /v1/no/such/thing
is_error 404 not_found
ok $? "unknown path under /v1/, any method: 404 not_found"
req GET /v1
is_error 404 not_found
ok $? "/v1 itself: the pool's 404 not_found"
req PUT /v1/jobs
is_error 405 method_not_allowed && grep -qi '^Allow: POST' "$tmp/h"
ok $? "PUT /v1/jobs: 405 with Allow: POST"
req POST /health
is_error 405 method_not_allowed && grep -qi '^Allow: GET' "$tmp/h"
ok $? "POST /health: 405 with Allow: GET"
req PATCH /v1/jobs/job-0123456789abcdef0123456789abcdef
is_error 405 method_not_allowed && grep -qi '^Allow: GET, HEAD, DELETE' "$tmp/h"
ok $? "PATCH /v1/jobs/{id}: 405 with Allow: GET, HEAD, DELETE"
same_head /health && same_head /ready && same_head /v1/models && same_head /v1/pool/status
ok $? "HEAD /health, /ready, /v1/models, /v1/pool/status: GET's status and headers, no body"
same_head /v1/jobs/job-0123456789abcdef0123456789abcdef && same_head /v1/nothing
ok $? "HEAD of an unknown job or path: GET's 404, no body"
code=$(curl -s -I -o /dev/null -D "$tmp/h" -w '%{http_code}' "$B/v1/jobs")
[ "$code" = 405 ] && grep -qi '^Allow: POST' "$tmp/h"
ok $? "HEAD /v1/jobs: 405 with Allow: POST ($code)"

# ---- the queue, with no engine taking jobs ----
req POST /v1/jobs -H 'Content-Type: application/json; charset=utf-8' --data-binary "$(gen queued1)"
q1=$(job_of)
[ "$code" = 202 ] && [ -n "$q1" ] && has "\"sse_url\":\"/v1/jobs/$q1/stream\""
ok $? "POST /v1/jobs (charset parameter accepted): 202 with job_id and sse_url"
queued="$q1"
for k in $(seq 2 24); do
    post "$(gen "queued$k")"
    queued="$queued $(job_of)"
done
q2=$(echo "$queued" | cut -d' ' -f2)
post "$(gen overflow)"
is_error 503 queue_full && grep -qi '^Retry-After: [0-9]' "$tmp/h"
ok $? "full queue: 503 queue_full with Retry-After"
req GET "/v1/jobs/$q2"
[ "$code" = 200 ] && has '"state":"queued"' && has '"queue_position":2' && has '"prompt":"queued2"' &&
    has '"created":"' && has '"started":null'
ok $? "GET /v1/jobs/{id} of a queued job: state, position, times, parameters"
same_head "/v1/jobs/$q2"
ok $? "HEAD /v1/jobs/{id}: GET's status and headers, no body"
# curl -I waits for the end of the response: a stream held open times out (28).
size=$(curl -s -I -D "$tmp/hh" -o /dev/null --max-time 3 -w '%{http_code} %{size_download}' "$B/v1/jobs/$q2/stream")
[ $? = 0 ] && [ "$size" = "200 0" ] && grep -qi '^Content-Type: text/event-stream' "$tmp/hh"
ok $? "HEAD of a queued job's stream: 200 text/event-stream at once, no events"
curl -sN --max-time 2 "$B/v1/jobs/$q2/stream" > "$tmp/ka" 2> /dev/null
[ "$(sed -n '1,2p' "$tmp/ka" | tr '\n' ' ')" = 'event: queued data: {"type":"queued","position":2} ' ]
ok $? "a queued job's stream starts with a queued event and its position"
grep -q '^: keep-alive' "$tmp/ka"
ok $? "a stream with nothing to send writes keep-alive comments"
all=0
for j in $queued; do
    req DELETE "/v1/jobs/$j"
    [ "$code" = 200 ] && has "{\"job_id\":\"$j\",\"status\":\"cancelled\",\"state\":\"cancelled\"}" || all=1
done
ok $all "DELETE of queued jobs: 200 cancelled"
req DELETE "/v1/jobs/$q1"
is_error 409 job_finished
ok $? "DELETE of a finished job: 409 job_finished"
req GET "/v1/jobs/$q1"
[ "$code" = 200 ] && has '"state":"cancelled"' && has '"error":{"code":"cancelled"'
ok $? "a cancelled job reports its error event"
curl -sN --max-time 5 "$B/v1/jobs/$q1/stream" > "$tmp/s"
grep -q '^event: error' "$tmp/s" && grep -q '"code":"cancelled"' "$tmp/s"
ok $? "the stream of a cancelled job replays its error event and ends"

# ---- the engine ----
"$ENGINE" run "$CONF" 20 3 2> "$tmp/engine.log" &
engine_pid=$!
i=0
while [ $i -lt 50 ]; do
    req GET /ready
    [ "$code" = 200 ] && break
    sleep 0.1
    i=$((i + 1))
done
[ "$code" = 200 ] && has '"ready":true' && has '"models":["sd15","tiny"]'
ok $? "GET /ready with the engine ready: 200 with the models"

# ---- the engine's memory estimate ----
"$ENGINE" models "$CONF" 262144 || bail "cannot publish the model table"
req GET /v1/models
has '"memory":{"weights_bytes":2147483648,"bytes_per_pixel":3072,"max_pixels":262144}'
ok $? "GET /v1/models lists each model's memory estimate ($body)"
post "$(gen big sd15 3 | sed 's/}$/,"width":520,"height":512}/')"
[ "$code" = 413 ] && has '"code":"payload_too_large"' && has 'width 520 x height 512 = 266240 pixels' &&
    has 'at most 262144 pixels'
ok $? "a size beyond the model's max_pixels: 413 naming width, height and the limit ($body)"
post "$(xf image_transform "$(png 520 512)")"
[ "$code" = 413 ] && has 'width 520 x height 512'
ok $? "an init image beyond it too: 413 ($body)"
post "$(xf image_transform "$(png 515 511)")"
[ "$code" = 202 ]
ok $? "an init image of 515x511 runs as 512x504, within the limit: 202 ($body)"
post "$(gen fits sd15 3 | sed 's/}$/,"width":512,"height":512}/')"
[ "$code" = 202 ]
ok $? "512x512, exactly max_pixels: 202"
post "$(gen lcm sd15 51 | sed 's/}$/,"sampler":"lcm"}/')"
[ "$code" = 400 ] && has '"code":"invalid_value"' && has 'steps 51: the lcm sampler takes at most 50 on model sd15'
ok $? "lcm with more steps than the model's original_inference_steps: 400 at submission ($body)"
post "$(gen lcm sd15 51)"
[ "$code" = 202 ]
ok $? "51 steps of the model's own sampler (pndm): 202"
"$ENGINE" models "$CONF" 0 || bail "cannot publish the model table"

# ---- accepted images, and seeds of the whole 64-bit range ----
post "$(xf image_inpaint "$(png 72 64)" ",\"mask_image\":\"$(png 72 64)\",\"strength\":0.5")"
im=$(job_of)
[ "$code" = 202 ] && curl -sN --max-time 10 "$B/v1/jobs/$im/stream" | grep -q '^event: complete'
ok $? "an inpaint job with a valid 72x64 image and mask: 202, and it completes"
post "$(gen seeded sd15 3 | sed 's/}$/,"seed":11630110443127060619}/')"
sj=$(job_of)
curl -sN --max-time 10 "$B/v1/jobs/$sj/stream" > "$tmp/seed.sse"
req GET "/v1/jobs/$sj"
has '"seed":11630110443127060619,' && has '"seed_random":false' &&
    grep '^data: ' "$tmp/seed.sse" | grep '"type":"complete"' | grep -q '"seed":11630110443127060619[,}]'
ok $? "seed 11630110443127060619 (over 2^63) comes back exactly in the status JSON and the complete event"
# The demo page's parser (www/app.js parseJSON), run on that event's data.
if command -v node > /dev/null; then
    sed -n 's/^data: //p' "$tmp/seed.sse" | grep '"type":"complete"' > "$tmp/complete.json"
    node -e '
const fs = require("fs");
const m = fs.readFileSync(process.argv[1], "utf8").match(/function parseJSON\(text\) \{[\s\S]*?\n  \}/);
const d = new Function("return " + m[0])()(fs.readFileSync(process.argv[2], "utf8"));
process.exit(d.seed === "11630110443127060619" && d.type === "complete" ? 0 : 1);' "$srcdir/www/app.js" "$tmp/complete.json"
    ok $? "the demo page reads that complete event's seed as the exact string"
else
    skip "node is not installed: the demo page's seed parsing is not checked"
fi
post "$(gen string-seed sd15 3 | sed 's/}$/,"seed":"18446744073709551615"}/')"
req GET "/v1/jobs/$(job_of)"
has '"seed":18446744073709551615,'
ok $? "a seed sent as a decimal string, as the demo page sends it, is taken exactly"
post "$(gen random-seed sd15 3)"
rj=$(job_of)
curl -sN --max-time 10 "$B/v1/jobs/$rj/stream" > "$tmp/rseed.sse"
req GET "/v1/jobs/$rj"
rs=$(echo "$body" | sed -n 's/.*"seed":\([0-9]*\),"seed_random":true.*/\1/p')
cs=$(sed -n 's/^data: .*"type":"complete".*"seed":\([0-9]*\).*/\1/p' "$tmp/rseed.sse")
[ -n "$rs" ] && [ "$rs" = "$cs" ] && [ ${#rs} -le 20 ]
ok $? "a server-chosen seed ($rs) is the same in the status JSON and the complete event"

count_ids() { if [ -f "$1" ]; then grep -c '^id: ' "$1"; else echo 0; fi; }
# ids "1 2 3 ..." of a stream file; events "name:step" in order
ids() { sed -n 's/^id: //p' "$1" | tr '\n' ' '; }
events() { awk '/^event: /{e=$2} /^data: /{s=$0; sub(/.*"step":/,"",s); sub(/,.*/,"",s); if ($0 !~ /"step"/) s=""; print e ":" s}' "$1" | tr '\n' ' '; }

post "$(gen streamed sd15 6)"
a=$(job_of)
curl -sN -D "$tmp/sh" --max-time 10 "$B/v1/jobs/$a/stream" > "$tmp/a1"
grep -qi '^Content-Type: text/event-stream' "$tmp/sh" && grep -qi '^Cache-Control: no-cache' "$tmp/sh"
ok $? "stream headers: text/event-stream, no-cache"
ev=$(events "$tmp/a1")
[ "$ev" = "progress:1 progress:2 progress:3 preview:3 progress:4 progress:5 progress:6 complete: " ] ||
    [ "$ev" = "progress:1 progress:2 progress:3 progress:4 progress:5 progress:6 complete: " ]
ok $? "stream from the start: every progress in order, then complete ($ev)"
idl=$(ids "$tmp/a1")
[ "$idl" = "1 2 3 4 5 6 7 8 " ] || [ "$idl" = "1 2 3 5 6 7 8 " ]
ok $? "event ids count up ($idl)"
curl -sN --max-time 10 -H 'Last-Event-ID: 4' "$B/v1/jobs/$a/stream" > "$tmp/a2"
[ "$(ids "$tmp/a2")" = "5 6 7 8 " ] && [ "$(events "$tmp/a2")" = "progress:4 progress:5 progress:6 complete: " ]
ok $? "Last-Event-ID: 4 replays from event 5 ($(ids "$tmp/a2"))"
curl -sN --max-time 10 "$B/v1/jobs/$a/stream" > "$tmp/a3"
[ "$(events "$tmp/a3")" = "progress:1 progress:2 progress:3 progress:4 progress:5 progress:6 complete: " ]
ok $? "a late stream replays the finished job (superseded preview skipped)"
req GET "/v1/jobs/$a"
[ "$code" = 200 ] && has '"state":"done"' && has '"step":6' && has '"total":6' && has '"finished":"' &&
    has '"error":null' && has '"steps":6'
ok $? "GET of a finished job: done, step 6/6, times, parameters"

post "$(gen twice sd15 8)"
b=$(job_of)
curl -sN --max-time 10 "$B/v1/jobs/$b/stream" > "$tmp/b1" &
c1=$!
curl -sN --max-time 10 "$B/v1/jobs/$b/stream" > "$tmp/b2" &
c2=$!
wait $c1 $c2
[ "$(sed -n 's/^id: //p' "$tmp/b1" | tail -1)" = "$(sed -n 's/^id: //p' "$tmp/b2" | tail -1)" ] &&
    grep -q '^event: complete' "$tmp/b1" && grep -q '^event: complete' "$tmp/b2"
ok $? "two concurrent streams of one job both see it complete"

post "$(gen 'please fail' sd15 5)"
f=$(job_of)
curl -sN --max-time 10 "$B/v1/jobs/$f/stream" > "$tmp/f"
tail -3 "$tmp/f" | grep -q '^event: error' && grep -q '"code":"test_failure"' "$tmp/f"
req GET "/v1/jobs/$f"
[ $? -eq 0 ] && has '"state":"failed"' && has '"error":{"code":"test_failure"'
ok $? "a failing job: the stream ends with the error event, status failed with the error"

post "$(gen long sd15 150)"
r=$(job_of)
i=0
while [ $i -lt 50 ]; do
    req GET "/v1/jobs/$r"
    has '"state":"running"' && break
    sleep 0.1
    i=$((i + 1))
done
curl -sN --max-time 10 "$B/v1/jobs/$r/stream" > "$tmp/r" &
rs=$!
req DELETE "/v1/jobs/$r"
[ "$code" = 200 ] && has '"status":"cancelled"' && has '"state":"running"'
ok $? "DELETE of a running job: 200 cancelled (state running until the next step)"
wait $rs
tail -3 "$tmp/r" | grep -q '^event: error' && grep -q '"code":"cancelled"' "$tmp/r" &&
    ! grep -q '^event: complete' "$tmp/r"
ok $? "the running job stops at its next step; its stream ends with a cancelled error"
req GET "/v1/jobs/$r"
has '"state":"cancelled"'
ok $? "the cancelled running job reports cancelled"

# ---- 20 concurrent jobs: submits and streams in parallel ----
start=$(date +%s)
cpids=
k=1
while [ $k -le 20 ]; do
    (
        code=$(curl -s -o "$tmp/c$k.json" -w '%{http_code}' -H 'Content-Type: application/json' \
            --data-binary "$(gen "concurrent $k" sd15 3)" "$B/v1/jobs")
        job=$(sed -n 's/.*"job_id":"\(job-[0-9a-f]*\)".*/\1/p' "$tmp/c$k.json")
        [ "$code" = 202 ] && curl -sN --max-time 30 "$B/v1/jobs/$job/stream" > "$tmp/c$k.sse"
    ) &
    cpids="$cpids $!"
    k=$((k + 1))
done
wait_jobs=0
for p in $cpids; do wait "$p" || wait_jobs=1; done
done20=0
k=1
while [ $k -le 20 ]; do
    [ "$(grep -c '^event: progress' "$tmp/c$k.sse" 2> /dev/null)" = 3 ] &&
        tail -3 "$tmp/c$k.sse" | grep -q '^event: complete' && done20=$((done20 + 1))
    k=$((k + 1))
done
[ $done20 = 20 ] && [ $wait_jobs = 0 ]
ok $? "20 concurrent jobs: $done20 of 20 streams complete ($(($(date +%s) - start)) s)"

# ---- expiry ----
"$ENGINE" expire "$CONF" "$a"
req GET "/v1/jobs/$a"
is_error 410 result_expired
ok $? "GET of an expired job: 410 result_expired"
req GET "/v1/jobs/$a/stream"
is_error 410 result_expired
ok $? "stream of an expired job: 410 result_expired"

# ---- kill -9 of the child serving a stream ----
# A child serves many streams: the bystander's is opened while the victim's
# child is stopped, so that another child takes it.
post "$(gen victim sd15 60)"
v=$(job_of)
post "$(gen bystander sd15 10)"
w=$(job_of)
curl -sN --max-time 20 "$B/v1/jobs/$v/stream" > "$tmp/v1" &
vs=$!
i=0
while [ $i -lt 100 ] && [ "$(count_ids "$tmp/v1")" -lt 5 ]; do sleep 0.05; i=$((i + 1)); done
# the pid of the process whose "jobs" list names $1
child_of() { echo "$body" | grep -o "{\"pid\":[0-9]*[^}]*\"$1\"" | sed 's/{"pid":\([0-9]*\).*/\1/'; }
req GET '/v1/pool/status?full'
victim=$(child_of "$v")
[ -n "$victim" ] && kill -STOP "$victim"
curl -sN --max-time 20 "$B/v1/jobs/$w/stream" > "$tmp/w" &
ws=$!
i=0
while [ $i -lt 100 ] && ! grep -q '^event: queued' "$tmp/w"; do sleep 0.05; i=$((i + 1)); done
req GET '/v1/pool/status?full'
other=$(child_of "$w")
has '"active_streams":2' && [ -n "$victim" ] && [ -n "$other" ] && [ "$other" != "$victim" ] &&
    echo "$body" | grep -q "{\"pid\":$victim,[^}]*\"streams\":1,\"jobs\":\[\"$v\"\]"
ok $? "pool status shows both streams and which child serves which job (victim: $victim, other: $other)"
kill -9 $victim
wait $vs
last=$(sed -n 's/^id: //p' "$tmp/v1" | tail -1)
! grep -q '^event: complete' "$tmp/v1" && [ -n "$last" ]
ok $? "kill -9 of the child cuts its stream after event $last"
i=0
while [ $i -lt 50 ] && ! grep -q "child $victim killed by signal 9" "$tmp/pool.log"; do sleep 0.1; i=$((i + 1)); done
req GET /v1/pool/status
grep -q "child $victim killed by signal 9, replacing it" "$tmp/pool.log" && echo "$body" | grep -Eq '"idle_processes":[1-9]'
ok $? "the master logs the death and keeps idle children"
curl -sN --max-time 20 -H "Last-Event-ID: $last" "$B/v1/jobs/$v/stream" > "$tmp/v2"
first=$(sed -n 's/^id: //p' "$tmp/v2" | head -1)
[ "${first:-0}" -gt "$last" ] && tail -3 "$tmp/v2" | grep -q '^event: complete' &&
    [ "$(cat "$tmp/v1" "$tmp/v2" | grep -c '^event: progress')" = 60 ]
ok $? "reconnecting with Last-Event-ID: $last gets the rest (from $first): all 60 progress events, complete"
wait $ws
[ "$(grep -c '^event: progress' "$tmp/w")" = 10 ] && tail -3 "$tmp/w" | grep -q '^event: complete'
ok $? "the other job's stream, open all along, is unaffected: 10 progress events and complete"

# ---- SIGHUP reload with a stream open ----
post "$(gen reload sd15 40)"
h=$(job_of)
curl -sN --max-time 20 "$B/v1/jobs/$h/stream" > "$tmp/h1" &
hs=$!
i=0
while [ $i -lt 100 ] && [ "$(count_ids "$tmp/h1")" -lt 3 ]; do sleep 0.05; i=$((i + 1)); done
sed -i 's/^pm.max_spare_servers = 6/pm.max_spare_servers = 5/' "$CONF"
kill -HUP $pool_pid
i=0
while [ $i -lt 50 ] && ! grep -q 'reloaded the configuration' "$tmp/pool.log"; do sleep 0.1; i=$((i + 1)); done
req GET '/v1/pool/status?full'
has '"reloads":1' && echo "$body" | grep -q "\"retiring\":true,[^}]*\"$h\""
ok $? "SIGHUP: the configuration is reloaded; the stream's child retires"
req GET /health
[ "$code" = 200 ]
ok $? "new children answer during the reload"
wait $hs
[ "$(grep -c '^event: progress' "$tmp/h1")" = 40 ] && tail -3 "$tmp/h1" | grep -q '^event: complete'
ok $? "the stream open across the reload completes"

# ---- graceful SIGTERM ----
post "$(gen stop sd15 20)"
g=$(job_of)
curl -sN --max-time 20 "$B/v1/jobs/$g/stream" > "$tmp/g" &
gs=$!
i=0
while [ $i -lt 100 ] && [ "$(count_ids "$tmp/g")" -lt 2 ]; do sleep 0.05; i=$((i + 1)); done
kill -TERM $pool_pid
wait $gs
tail -3 "$tmp/g" | grep -q '^event: complete'
ok $? "SIGTERM: the open stream still completes"
wait $pool_pid
rc=$?
pool_pid=
[ $rc -eq 0 ] && [ ! -e "$tmp/run/fcgi.sock" ]
ok $? "SIGTERM: the pool exits 0 and removes its socket"
req GET /health
[ "$code" = 502 ] && has '{"error":{"code":"bad_gateway","message":"' && grep -qi '^Retry-After: 5' "$tmp/h" &&
    grep -qi '^Content-Type: application/json' "$tmp/h"
ok $? "with the pool gone nginx answers 502 bad_gateway as JSON, with Retry-After"
same_head /v1/models
ok $? "and HEAD gets the same 502 without a body"

echo "1..$n"
exit $failed
