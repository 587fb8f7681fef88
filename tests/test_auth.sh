#!/bin/sh
# API keys end to end, through a private nginx as in tests/test_pool.sh:
# 401 without a key or with a wrong one while /health stays open, 429 with
# Retry-After for a key's max_queued and per_minute (counted across pool
# processes: every child serves one request), a key that cannot see, stream
# or cancel another key's job, the full pool status for an admin key only,
# the client's --api-key and SDW_API_KEY, the demo page's key field in
# headless Chromium when it is installed, and a reload that removes the keys
# (the open API's full status: loopback clients only).
srcdir=${srcdir:-.}
POOL=./sdworker-fcgi
ENGINE=./tests/test_pool_engine
CLI=./sdworker
. "$srcdir/tests/testlib.sh"
need_service_tools "$POOL" "$ENGINE"
[ -x "$CLI" ] || bail "run from the build directory after make"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-auth.XXXXXX")
nginx_pid= pool_pid= engine_pid=
cleanup() {
    for p in $engine_pid $pool_pid $nginx_pid; do kill -9 "$p" 2> /dev/null; done
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

ALICE=alice-key-0123456789abcdef
BOB=bob-key-0123456789abcdef
OPS=ops-key-0123456789abcdef
hash() { printf %s "$1" | "$POOL" --hash-key; }
[ "$(hash "$ALICE")" = "sha256:$(printf %s "$ALICE" | sha256sum | cut -d' ' -f1)" ]
ok $? "sdworker-fcgi --hash-key prints the key's SHA-256 as sha256:<hex>"

mkdir -p "$tmp/run" "$tmp/www"
cp "$srcdir/www/index.html" "$srcdir/www/app.js" "$srcdir/www/style.css" "$tmp/www/"
cat > "$tmp/sdworker.conf" << EOF
listen = unix:$tmp/run/fcgi.sock
pm = dynamic
pm.max_children = 20
pm.start_servers = 4
pm.min_spare_servers = 3
pm.max_spare_servers = 8
# One request a child: the per-key counters must hold across processes.
pm.max_requests = 1
ring.name = /sdw-test-auth-$$
ring.slots = 32
ring.max_queued = 16
ring.input_bytes = 256k
ring.log_bytes = 16k
ring.image_bytes = 64k
keepalive_interval = 1
limits.max_body_bytes = 200k
limits.max_image_bytes = 64k
model.sd15 = models/sd15
model.tiny = models/tiny
api_key.alice = $(hash "$ALICE") max_queued=2
api_key.bob = $(hash "$BOB") per_minute=3
api_key.ops = $(hash "$OPS") admin
EOF
CONF=$tmp/sdworker.conf

# An address of this host that is not loopback, if it has one: the full
# status without keys must refuse clients there.
ext_ip=$(hostname -I 2> /dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' | head -n 1)

"$ENGINE" create "$CONF" || bail "cannot create the job ring"
"$ENGINE" state "$CONF" loading "model loading" || bail "cannot set the engine state"
"$POOL" -c "$CONF" --ring-wait 2 --grace 5 2> "$tmp/pool.log" &
pool_pid=$!

start_nginx 11 "$ext_ip"
wait_health

# req KEY METHOD PATH [curl args]: KEY "-" sends none. Status in $code,
# body in $body, headers in $tmp/h.
req() {
    k=$1 m=$2 p=$3
    shift 3
    if [ "$k" = - ]; then
        code=$(curl -s -X "$m" -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' "$@" "$B$p")
    else
        code=$(curl -s -X "$m" -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' -H "Authorization: Bearer $k" "$@" "$B$p")
    fi
    body=$(cat "$tmp/b")
}
has() { case $body in *"$1"*) return 0 ;; esac; return 1; }
is_error() { [ "$code" = "$1" ] && has "{\"error\":{\"code\":\"$2\",\"message\":\""; }
header() { grep -i "^$1:" "$tmp/h" | tr -d '\r'; }
post() { req "$1" POST /v1/jobs -H 'Content-Type: application/json' --data-binary "$2"; }
job_of() { echo "$body" | sed -n 's/.*"job_id":"\(job-[0-9a-f]*\)".*/\1/p'; }
gen() { echo "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sd15\",\"prompt\":\"$1\",\"steps\":${2:-3}}"; }

# ---- no key, a wrong key ----
req - GET /health
[ "$code" = 200 ] && has '"status":"healthy"'
ok $? "GET /health without a key: 200"
req - GET /ready
[ "$code" = 503 ] && has '"reason":"model loading"'
ok $? "GET /ready without a key answers too (503 while loading)"
req - GET /v1/models
is_error 401 unauthorized && has 'Authorization: Bearer' &&
    [ "$(header WWW-Authenticate)" = 'WWW-Authenticate: Bearer realm="sdworker"' ]
ok $? "GET /v1/models without a key: 401 JSON, WWW-Authenticate: Bearer ($body)"
req wrong-key-0123456789abcdef GET /v1/models
is_error 401 unauthorized && has 'not valid' &&
    header WWW-Authenticate | grep -q 'Bearer realm="sdworker", error="invalid_token"'
ok $? "a wrong key: 401 with error=\"invalid_token\""
req - GET /v1/models -H "Authorization: Basic $(printf 'alice:%s' "$ALICE" | base64)"
is_error 401 unauthorized
ok $? "Basic credentials are not a key: 401"
req - GET /v1/models -H "Authorization: Bearer ${ALICE}x"
is_error 401 unauthorized
ok $? "a key with one character more: 401"
req - POST /v1/jobs -H 'Content-Type: application/json' --data-binary "$(gen x)"
is_error 401 unauthorized
ok $? "POST /v1/jobs without a key: 401"
req - GET /v1/nothing
is_error 401 unauthorized
ok $? "an unknown path under /v1/ without a key: 401, not 404"
req "$ALICE" GET /v1/nothing
is_error 404 not_found
ok $? "the same path with a key: 404"
req - GET /v1/jobs/job-0123456789abcdef0123456789abcdef/stream
is_error 401 unauthorized
ok $? "a stream without a key: 401"
req "$ALICE" GET /v1/models
[ "$code" = 200 ] && has '"name":"sd15"'
ok $? "GET /v1/models with a key: 200"
req - GET /v1/models -H "authorization: bearer   $ALICE"
[ "$code" = 200 ]
ok $? "the scheme is case-insensitive and spaces before the key are skipped"

# ---- max_queued (alice: 2), with no engine taking jobs ----
post "$ALICE" "$(gen a1)"
a1=$(job_of)
post "$ALICE" "$(gen a2)"
a2=$(job_of)
[ -n "$a1" ] && [ -n "$a2" ]
ok $? "alice queues two jobs"
post "$ALICE" "$(gen a3)"
is_error 429 too_many_queued && header Retry-After | grep -Eq '^Retry-After: [1-9][0-9]*$'
ok $? "alice's third queued job: 429 too_many_queued with Retry-After ($body)"

# ---- one key's jobs are invisible to another ----
req "$BOB" GET /v1/jobs/job-0123456789abcdef0123456789abcdef
unknown=$(echo "$body" | sed 's/job-[0-9a-f]*/ID/')
req "$BOB" GET "/v1/jobs/$a1"
is_error 404 not_found && [ "$(echo "$body" | sed 's/job-[0-9a-f]*/ID/')" = "$unknown" ]
ok $? "bob's GET of alice's job: 404, the same answer as an unknown id"
req "$BOB" GET "/v1/jobs/$a1/stream"
is_error 404 not_found
ok $? "bob cannot stream alice's job: 404"
req "$BOB" DELETE "/v1/jobs/$a1"
is_error 404 not_found
ok $? "bob cannot cancel alice's job: 404"
req "$ALICE" GET "/v1/jobs/$a1"
[ "$code" = 200 ] && has '"state":"queued"' && has '"prompt":"a1"'
ok $? "alice sees her job, still queued"
req "$OPS" GET "/v1/jobs/$a2"
[ "$code" = 200 ] && has '"state":"queued"'
ok $? "the admin key sees alice's job"

# ---- the pool's status ----
req "$ALICE" GET /v1/pool/status
[ "$code" = 200 ] && has '"process_manager":"dynamic"' && ! has '"processes"'
ok $? "the plain pool status answers any key, without processes"
req "$ALICE" GET '/v1/pool/status?full'
is_error 403 forbidden && has 'admin'
ok $? "?full with a key that is not admin: 403 forbidden"
req - GET '/v1/pool/status?full'
is_error 401 unauthorized
ok $? "?full without a key: 401"
req "$OPS" GET '/v1/pool/status?full'
[ "$code" = 200 ] && has '"processes":[{"pid":'
ok $? "?full with the admin key: 200 with the processes"

# ---- cancel frees a place in alice's queue ----
req "$ALICE" DELETE "/v1/jobs/$a2"
[ "$code" = 200 ] && has '"state":"cancelled"'
ok $? "alice cancels her own job"
post "$ALICE" "$(gen a3)"
a3=$(job_of)
[ "$code" = 202 ] && [ -n "$a3" ]
ok $? "then she may queue another"

# ---- per_minute (bob: 3), across processes ----
all=0
for k in 1 2 3; do
    post "$BOB" "$(gen "b$k")"
    [ "$code" = 202 ] || all=1
done
ok $all "bob submits three jobs in a burst"
post "$BOB" "$(gen b4)"
retry=$(header Retry-After | sed 's/^Retry-After: //')
is_error 429 rate_limited && [ "${retry:-0}" -ge 1 ] && [ "${retry:-0}" -le 20 ]
ok $? "bob's fourth: 429 rate_limited, Retry-After $retry (one job every 20 s)"
pids=$(grep 'queued for key bob' "$tmp/pool.log" | sed 's/^sdworker-fcgi\[\([0-9]*\)\].*/\1/' | sort -u | wc -l)
[ "$pids" -ge 2 ]
ok $? "the three accepted submissions were answered by $pids processes, which counted together"
post "$OPS" "$(gen after-bob)"
[ "$code" = 202 ]
ok $? "bob's limit is his: another key still submits"

# ---- streams with a key ----
"$ENGINE" run "$CONF" 20 0 2> "$tmp/engine.log" &
engine_pid=$!
curl -sN --max-time 10 -H "Authorization: Bearer $ALICE" "$B/v1/jobs/$a1/stream" > "$tmp/a1.sse"
grep -q '^event: complete' "$tmp/a1.sse"
ok $? "alice streams her job to its complete event"
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BOB" "$B/v1/jobs/$a1/stream")
[ "$code" = 404 ]
ok $? "bob's stream of alice's finished job: 404"

# ---- the client ----
out=$("$CLI" image generate --url "$B" --model sd15 --prompt cli --steps 2 -o "$tmp/cli.png" -q 2>&1)
[ $? -eq 2 ] && echo "$out" | grep -q 'needs a key'
ok $? "sdworker without a key: exit 2 with the server's message"
"$CLI" image generate --url "$B" --api-key "$OPS" --model sd15 --prompt cli --steps 2 -o "$tmp/cli.png" -q \
    > "$tmp/cli.out" 2>&1 && grep -q '^seed: ' "$tmp/cli.out" && [ -s "$tmp/cli.png" ]
ok $? "sdworker --api-key: the job runs and its image is written"
SDW_API_KEY=$ALICE "$CLI" image generate --url "$B" --model sd15 --prompt env --steps 2 -o "$tmp/env.png" -q \
    > "$tmp/env.out" 2>&1 && [ -s "$tmp/env.png" ]
ok $? "sdworker with SDW_API_KEY"

# ---- the demo page ----
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && /usr/bin/python3 -c 'import selenium' 2> /dev/null; then
    TAP_START=$n /usr/bin/python3 "$srcdir/tests/browser_auth.py" "$B/" "$ALICE" > "$tmp/browser.tap" 2> "$tmp/browser.err"
    cat "$tmp/browser.tap"
    n=$((n + $(grep -c '^\(not \)\?ok' "$tmp/browser.tap")))
    grep -q '^not ok' "$tmp/browser.tap" && failed=1
    if ! grep -q '^ok' "$tmp/browser.tap"; then
        ok 1 "the browser test ran"
        sed 's/^/#   /' "$tmp/browser.err"
    fi
else
    n=$((n + 1))
    echo "ok $n # SKIP the demo page's key field needs chromium, chromium-driver and python3-selenium"
fi

# ---- keys removed by a reload: the API is open again ----
sed -i '/^api_key\./d' "$CONF"
kill -HUP $pool_pid
i=0
while [ $i -lt 50 ] && ! grep -q 'reloaded the configuration (.*, 0 API keys)' "$tmp/pool.log"; do sleep 0.1; i=$((i + 1)); done
i=0
while [ $i -lt 50 ]; do
    req - GET /v1/models
    [ "$code" = 200 ] && break
    sleep 0.1
    i=$((i + 1))
done
[ "$code" = 200 ]
ok $? "SIGHUP with the keys removed: the API answers without a key"
req - GET "/v1/jobs/$a1"
[ "$code" = 200 ]
ok $? "and a job submitted with a key is visible to all"
req - GET '/v1/pool/status?full'
[ "$code" = 200 ] && has '"processes":[{"pid":'
ok $? "without keys the full status answers the loopback address"
if [ -n "$ext_ip" ]; then
    code=$(curl -s -o "$tmp/b" -w '%{http_code}' "http://$ext_ip:$port/v1/pool/status?full")
    body=$(cat "$tmp/b")
    is_error 403 forbidden && has 'loopback'
    ok $? "and 403 forbidden to a client on $ext_ip"
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ext_ip:$port/v1/pool/status")
    [ "$code" = 200 ]
    ok $? "while the plain status answers it"
else
    n=$((n + 1))
    echo "ok $n # SKIP this host has no address besides loopback to try the full status from"
fi

! grep -q "$ALICE\|$BOB\|$OPS" "$tmp/pool.log" "$tmp/run/access.log" "$tmp/run/error.log"
ok $? "no key appears in the pool's or nginx's logs"

echo "1..$n"
exit $failed
