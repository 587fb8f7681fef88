#!/bin/sh
# Event streams at scale through a private nginx: a pool of two static
# children with room for 110 streams each. Queued events and their position
# updates; 220 streams held open at once (tests/sse_swarm.py) while /health
# and a submit still answer, each stream with its headers and first event
# at once; the 221st stream refused with 503 too_many_streams as JSON with
# Retry-After; the pool status counts the streams per child; closing them
# frees every thread and connection; a queued job's stream counts down
# its position and then carries the job's events. A functional check with
# generous bounds, not a benchmark (bench/service.sh is that).
srcdir=${srcdir:-.}
POOL=./sdworker-fcgi
ENGINE=./tests/test_pool_engine
SWARM=$srcdir/tests/sse_swarm.py
. "$srcdir/tests/testlib.sh"
need_service_tools "$POOL" "$ENGINE"
command -v python3 > /dev/null || bail "python3 is required"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-streams.XXXXXX")
nginx_pid= pool_pid= engine_pid= curl_pid=
cleanup() {
    for p in $curl_pid $engine_pid $pool_pid $nginx_pid; do kill -9 "$p" 2> /dev/null; done
    [ -n "$pool_pid" ] && pkill -9 -P "$pool_pid" 2> /dev/null
    [ -f "$tmp/sdworker.conf" ] && "$ENGINE" unlink "$tmp/sdworker.conf" 2> /dev/null
    if [ $failed -ne 0 ]; then
        diag "pool log:"; sed 's/^/#   /' "$tmp/pool.log" 2> /dev/null | tail -30
        diag "nginx error log:"; sed 's/^/#   /' "$tmp/run/error.log" 2> /dev/null | tail -10
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

mkdir -p "$tmp/run" "$tmp/www"
# 220 streams: 440 nginx connections and files, 220 in the pool.
ulimit -n "$(ulimit -Hn)" 2> /dev/null
cat > "$tmp/sdworker.conf" << EOF
listen = unix:$tmp/run/fcgi.sock
pm = static
pm.max_children = 2
pm.max_requests = 0
pm.max_streams_per_child = 110
ring.name = /sdw-test-streams-$$
ring.slots = 32
ring.max_queued = 16
ring.input_bytes = 64k
ring.log_bytes = 8k
ring.image_bytes = 64k
keepalive_interval = 1
model.sd15 = models/sd15
log_level = warn
EOF
CONF=$tmp/sdworker.conf
"$ENGINE" create "$CONF" || bail "cannot create the job ring"
"$ENGINE" state "$CONF" loading "model loading" || bail "cannot set the engine state"
"$POOL" -c "$CONF" --ring-wait 2 --grace 5 2> "$tmp/pool.log" &
pool_pid=$!

start_nginx 13
wait_health
[ "$(curl -s -o /dev/null -w '%{http_code}' "$B/health")" = 200 ]
ok $? "the pool answers behind a private nginx on port $port"

gen() { echo "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"sd15\",\"prompt\":\"$1\",\"steps\":4}"; }
submit() {
    curl -s -H 'Content-Type: application/json' --data-binary "$(gen "$1")" "$B/v1/jobs" |
        sed -n 's/.*"job_id":"\(job-[0-9a-f]*\)".*/\1/p'
}
j1=$(submit one) j2=$(submit two) j3=$(submit three) j4=$(submit four)
[ -n "$j1" ] && [ -n "$j2" ] && [ -n "$j3" ] && [ -n "$j4" ]
ok $? "four jobs queued with no engine taking them"

# positions "2 1 ..." of a stream file's queued events
positions() { sed -n 's/^data: {"type":"queued","position":\([0-9]*\)}$/\1/p' "$1" | tr '\n' ' '; }
wait_for() { # file pattern: up to 5 s
    i=0
    while [ $i -lt 100 ] && ! grep -q "$2" "$1" 2> /dev/null; do sleep 0.05; i=$((i + 1)); done
}

# ---- the queued event and its update ----
curl -sN -D "$tmp/qh" --max-time 10 "$B/v1/jobs/$j2/stream" > "$tmp/q" 2> /dev/null &
curl_pid=$!
wait_for "$tmp/q" '"position":2'
grep -qi '^Content-Type: text/event-stream' "$tmp/qh" && [ "$(positions "$tmp/q")" = "2 " ] &&
    [ "$(head -1 "$tmp/q")" = "event: queued" ] && ! grep -q '^id:' "$tmp/q"
ok $? "a queued job's stream sends its headers and a queued event (position 2, no id) at once"
curl -s -o /dev/null -X DELETE "$B/v1/jobs/$j1"
wait_for "$tmp/q" '"position":1'
[ "$(positions "$tmp/q")" = "2 1 " ]
ok $? "cancelling the job ahead sends the new position ($(positions "$tmp/q"))"
kill $curl_pid 2> /dev/null
wait $curl_pid 2> /dev/null
curl_pid=

# Waits (up to 10 s) until no stream is open: a client's stream thread
# ends at its next keep-alive after the client went away.
wait_no_streams() {
    i=0
    while [ $i -lt 100 ]; do
        curl -s "$B/v1/pool/status" > "$tmp/st"
        grep -q '"active_streams":0' "$tmp/st" && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# ---- 220 streams open, then one more ----
wait_no_streams
fds() { # open files of the pool's children
    t=0
    for c in $(pgrep -P $pool_pid); do t=$((t + $(ls /proc/$c/fd | wc -l))); done
    echo $t
}
fds_before=$(fds)
python3 "$SWARM" --port "$port" --jobs "$j2,$j3,$j4" --streams 221 --wave 32 --probes 10 --status \
    --post-body "$(gen probe)" --timeout 60 > "$tmp/swarm.json"
diag "$(cat "$tmp/swarm.json")"
# field PATH: a value of the swarm's JSON ("statuses.200")
field() {
    python3 -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print(json.dumps(v))' "$tmp/swarm.json" "$1"
}
[ "$(field statuses.200)" = 220 ] && [ "$(field first_events.queued)" = 220 ] && [ "$(field n_failures)" = 0 ]
ok $? "220 streams open at once, each with its headers and a queued event first"
[ "$(field statuses.503)" = 1 ] && [ "$(field error_codes.too_many_streams)" = 1 ] &&
    [ "$(field retry_after.5)" = 1 ]
ok $? "the 221st stream: 503 too_many_streams as JSON with Retry-After: 5"
ms=$(field stream_first_event_ms.max)
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 5000 else 1)" "$ms"
ok $? "every stream had its first event within 5 s of connecting (slowest $ms ms)"
[ "$(field health.statuses.200)" = 10 ] &&
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 2000 else 1)" "$(field health.max)"
ok $? "/health answers 200 while every stream is open (slowest $(field health.max) ms)"
[ "$(field post.statuses.202)" = 10 ] &&
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 2000 else 1)" "$(field post.max)"
ok $? "POST /v1/jobs answers 202 while every stream is open (slowest $(field post.max) ms)"
[ "$(field still_open)" = 220 ]
ok $? "no stream was cut while the API was probed"
[ "$(field pool.active_streams)" = 220 ] && [ "$(field pool.process_streams)" = "[110, 110]" ] &&
    [ "$(field pool.process_jobs)" = 220 ]
ok $? "the pool status counts the streams per child ($(field pool.process_streams)) and names their jobs"

wait_no_streams && [ "$(fds)" = "$fds_before" ]
ok $? "closed streams leave no thread or connection behind (files: $fds_before before, $(fds) after)"

# ---- a queued stream counts down, then carries the job ----
curl -sN --max-time 20 "$B/v1/jobs/$j4/stream" > "$tmp/c" 2> /dev/null &
curl_pid=$!
wait_for "$tmp/c" '"position":3'
"$ENGINE" run "$CONF" 50 0 2> "$tmp/engine.log" &
engine_pid=$!
wait $curl_pid
curl_pid=
ev=$(sed -n 's/^event: //p' "$tmp/c" | tr '\n' ' ')
[ "$(positions "$tmp/c")" = "3 2 1 " ] &&
    [ "$ev" = "queued queued queued progress progress progress progress complete " ]
ok $? "a queued stream counts down ($(positions "$tmp/c")) and then streams the job ($ev)"

kill -TERM $pool_pid
wait $pool_pid
rc=$?
pool_pid=
[ $rc -eq 0 ]
ok $? "SIGTERM: the pool stops cleanly"

echo "1..$n"
exit $failed
