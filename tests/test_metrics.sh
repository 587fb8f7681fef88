#!/bin/sh
# GET /metrics end to end: a private nginx, the pool, and tests/test_pool_engine
# playing the engine (50 ms steps). A job that completes, one that fails, one
# refused at submission, a broken init image and a mask of the wrong size,
# then a scrape: the counts by model, operation, API and code, the queue and
# running gauges, the histograms (cumulative buckets, +Inf = _count), an open
# stream, an engine restart, a scrape while the engine is stopped
# (SIGSTOP), the access rule (loopback without keys, an admin key with
# them), and the whole page through prometheus_client's parser (Debian:
# python3-prometheus-client; skipped with a message where it is missing).
srcdir=${srcdir:-.}
POOL=./sdworker-fcgi
ENGINE=./tests/test_pool_engine
. "$srcdir/tests/testlib.sh"
need_service_tools "$POOL" "$ENGINE"
command -v python3 > /dev/null || bail "python3 is required (it makes the test images)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-metrics.XXXXXX")
nginx_pid= pool_pid= engine_pid= stream_pid=
cleanup() {
    [ -n "$engine_pid" ] && kill -CONT "$engine_pid" 2> /dev/null
    for p in $stream_pid $engine_pid $pool_pid $nginx_pid; do kill -9 "$p" 2> /dev/null; done
    [ -n "$pool_pid" ] && pkill -9 -P "$pool_pid" 2> /dev/null
    [ -f "$tmp/sdworker.conf" ] && "$ENGINE" unlink "$tmp/sdworker.conf" 2> /dev/null
    if [ $failed -ne 0 ]; then
        diag "pool log:"; sed 's/^/#   /' "$tmp/pool.log" 2> /dev/null | tail -30
        diag "last page:"; sed 's/^/#   /' "$tmp/m" 2> /dev/null | head -120
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

mkdir -p "$tmp/run" "$tmp/www"
cat > "$tmp/sdworker.conf" << EOF
listen = unix:$tmp/run/fcgi.sock
pm = static
pm.max_children = 3
ring.name = /sdw-test-metrics-$$
ring.slots = 16
ring.max_queued = 8
ring.input_bytes = 256k
ring.log_bytes = 16k
ring.image_bytes = 64k
keepalive_interval = 1
limits.max_body_bytes = 200k
limits.max_image_bytes = 64k
model.sd15 = models/sd15
model.tiny = models/tiny
log_level = info
EOF
CONF=$tmp/sdworker.conf
"$ENGINE" create "$CONF" || bail "cannot create the job ring"
"$ENGINE" state "$CONF" ready "" || bail "cannot set the engine state"
"$POOL" -c "$CONF" --ring-wait 2 --grace 10 2> "$tmp/pool.log" &
pool_pid=$!
start_nginx 11
wait_health
"$ENGINE" run "$CONF" 50 0 2> "$tmp/engine.log" &
engine_pid=$!

req() {
    m=$1 p=$2
    shift 2
    code=$(curl -s -X "$m" -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' "$@" "$B$p")
    body=$(cat "$tmp/b")
}
post() { req POST /v1/jobs -H 'Content-Type: application/json' --data-binary "$1"; }
job_of() { echo "$body" | sed -n 's/.*"job_id":"\(job-[0-9a-f]*\)".*/\1/p'; }
gen() { echo "{\"operation\":\"image_generation\",\"hive_id\":\"h\",\"model\":\"${2:-sd15}\",\"prompt\":\"$1\",\"steps\":${3:-3}}"; }
png() {
    python3 -c '
import base64, struct, sys, zlib
w, h, cut = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
rows = b"".join(b"\0" + bytes((x * 7 + y * 3) & 255 for x in range(3 * w)) for y in range(h))
f = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
sys.stdout.write(base64.b64encode(f[:len(f) - cut]).decode())
' "$1" "$2" "${3:-0}"
}
# wait_done ID: up to 10 s for the job to finish.
wait_done() {
    i=0
    while [ $i -lt 100 ]; do
        case $(curl -s "$B/v1/jobs/$1") in *'"state":"done"'* | *'"state":"failed"'* | *'"state":"cancelled"'*) return 0 ;; esac
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
scrape() { curl -s -o "$tmp/m" -D "$tmp/mh" -w '%{http_code}' "$@" "$B/metrics"; }
# value SAMPLE: the value of the sample line that starts with SAMPLE and a space.
value() { awk -v s="$1" 'substr($0, 1, length(s) + 1) == s " " { print $NF; found = 1 } END { if (!found) print "none" }' "$tmp/m"; }
L='model="sd15",operation="image_generation",api="rbee"'

# ---- the page before any job ----
code=$(scrape)
[ "$code" = 200 ] && grep -qi '^Content-Type: text/plain; version=0.0.4; charset=utf-8' "$tmp/mh"
ok $? "GET /metrics through nginx from the loopback address: 200, text/plain version 0.0.4 ($code)"
get=$(tr -d '\r' < "$tmp/mh" | grep -i '^HTTP/\|^Content-Type:\|^Content-Length:')
size=$(curl -s -I -D "$tmp/hh" -o /dev/null -w '%{size_download}' "$B/metrics")
hd=$(tr -d '\r' < "$tmp/hh" | grep -i '^HTTP/\|^Content-Type:\|^Content-Length:')
[ "$get" = "$hd" ] && [ "$size" = 0 ]
ok $? "HEAD /metrics: GET's status and headers, no body"
[ "$(value "sdworker_jobs_submitted_total{$L}")" = 0 ] &&
    [ "$(value 'sdworker_jobs_submitted_total{model="tiny",operation="image_inpaint",api="rbee"}')" = 0 ]
ok $? "every configured model x operation has its series at 0 before any job"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$B/metrics")
[ "$code" = 405 ]
ok $? "POST /metrics: 405 ($code)"

# ---- jobs: completed, failed, refused, broken images ----
post "$(gen ok)"
ok_job=$(job_of)
post "$(gen 'please fail')"
fail_job=$(job_of)
[ -n "$ok_job" ] && [ -n "$fail_job" ] && wait_done "$ok_job" && wait_done "$fail_job"
ok $? "a job that completes and one that fails ran"
post "$(gen x nosuchmodel)"
c1=$code
post '{"operation":'
c2=$code
cut=$(png 64 64 40)
post "{\"operation\":\"image_transform\",\"hive_id\":\"h\",\"model\":\"sd15\",\"prompt\":\"x\",\"steps\":3,\"init_image\":\"$cut\"}"
c3=$code
img=$(png 64 64)
mask=$(png 72 64)
post "{\"operation\":\"image_inpaint\",\"hive_id\":\"h\",\"model\":\"tiny\",\"prompt\":\"x\",\"steps\":3,\"init_image\":\"$img\",\"mask_image\":\"$mask\"}"
c4=$code
[ "$c1" = 404 ] && [ "$c2" = 400 ] && [ "$c3" = 400 ] && [ "$c4" = 400 ]
ok $? "refused: an unknown model ($c1), bad JSON ($c2), a truncated init image ($c3), a mask of another size ($c4)"
"$ENGINE" restart "$CONF"

code=$(scrape)
[ "$code" = 200 ]
ok $? "scrape after the jobs ($code)"
[ "$(value "sdworker_jobs_submitted_total{$L}")" = 2 ] && [ "$(value "sdworker_jobs_completed_total{$L}")" = 1 ] &&
    [ "$(value "sdworker_jobs_failed_total{$L,code=\"test_failure\"}")" = 1 ] &&
    [ "$(value "sdworker_jobs_cancelled_total{$L}")" = 0 ]
ok $? "sd15 image_generation: 2 submitted, 1 completed, 1 failed with code test_failure, 0 cancelled"
[ "$(value 'sdworker_jobs_submitted_total{model="tiny",operation="image_inpaint",api="rbee"}')" = 0 ]
ok $? "a refused submission is not counted as submitted"
[ "$(value 'sdworker_jobs_rejected_total{api="rbee",code="unknown_model"}')" = 1 ] &&
    [ "$(value 'sdworker_jobs_rejected_total{api="rbee",code="invalid_json"}')" = 1 ] &&
    [ "$(value 'sdworker_jobs_rejected_total{api="rbee",code="invalid_init_image"}')" = 1 ] &&
    [ "$(value 'sdworker_jobs_rejected_total{api="rbee",code="invalid_mask_image"}')" = 1 ] &&
    [ "$(value 'sdworker_jobs_rejected_total{api="rbee",code="queue_full"}')" = 0 ]
ok $? "rejected by code: unknown_model, invalid_json, invalid_init_image, invalid_mask_image 1 each, queue_full 0"
[ "$(value 'sdworker_image_decode_rejections_total{api="rbee",image="init_image"}')" = 1 ] &&
    [ "$(value 'sdworker_image_decode_rejections_total{api="rbee",image="mask_image"}')" = 1 ]
ok $? "image-decode rejections: one init image, one mask"
w="{worker=\"sdw-test-metrics-$$\"}"
[ "$(value "sdworker_queue_depth$w")" = 0 ] && [ "$(value "sdworker_jobs_running$w")" = 0 ] &&
    [ "$(value "sdworker_engine_ready$w")" = 1 ] && [ "$(value "sdworker_engine_restarts_total$w")" = 1 ]
ok $? "queue depth 0, running 0, engine ready, one engine restart"
[ "$(value 'sdworker_queue_wait_seconds_count')" = 2 ] && [ "$(value 'sdworker_job_duration_seconds_count')" = 2 ]
ok $? "queue wait and job seconds: one observation per job that ran (2)"
# The completed job's 3 steps and the failed one's first, 50 ms each.
[ "$(value 'sdworker_step_duration_seconds_count')" = 4 ] &&
    [ "$(value 'sdworker_step_duration_seconds_bucket{le="0.05"}')" = 4 ] &&
    [ "$(value 'sdworker_step_duration_seconds_bucket{le="0.025"}')" = 0 ]
ok $? "step seconds: 4 steps, all in le=0.05, none in le=0.025"
# Every histogram: buckets that never decrease, then +Inf equal to _count.
awk '
/^#/ { next }
/_bucket\{le="/ {
    name = $1; sub(/_bucket\{.*/, "", name)
    if (name != cur) { cur = name; prev = 0 }
    if ($2 < prev) { print "decreasing: " $0; bad = 1 }
    prev = $2
    if ($1 ~ /le="\+Inf"/) inf[name] = $2
    next
}
/_count / { n = $1; sub(/_count$/, "", n); cnt[n] = $2 }
END {
    k = 0
    for (h in inf) { k++; if (inf[h] != cnt[h]) { print h ": +Inf " inf[h] " != count " cnt[h]; bad = 1 } }
    if (k != 3) { print k " histograms"; bad = 1 }
    exit bad
}' "$tmp/m" > "$tmp/awk.out"
ok $? "the three histograms: cumulative buckets, +Inf = _count $(cat "$tmp/awk.out")"
for s in 'sdworker_pool_children{state="idle"}' 'sdworker_pool_children{state="busy"}' \
    'sdworker_pool_children{state="retiring"}' sdworker_open_streams sdworker_jobs_unlabelled_total; do
    [ "$(value "$s")" != none ] || { diag "no $s"; false; } || break
done
ok $? "pool children by state, open streams, unlabelled jobs are on the page"
# Every sample belongs to a family with HELP and TYPE lines above it.
awk '
/^# HELP / { help[$3] = 1; next }
/^# TYPE / { type[$3] = $4; if (!help[$3]) bad = 1; next }
/^#/ || /^$/ { next }
{
    n = $1; sub(/\{.*/, "", n)
    b = n; sub(/_(bucket|sum|count)$/, "", b)
    if (!(n in type) && !(type[b] == "histogram")) { print "no TYPE for " n; bad = 1 }
    if (type[n] == "counter" && n !~ /_total$/) { print "counter without _total: " n; bad = 1 }
}
END { exit bad }' "$tmp/m" > "$tmp/awk.out"
ok $? "every sample under its own HELP and TYPE, counters named _total $(cat "$tmp/awk.out")"

# ---- an open stream; a scrape while the engine is stopped ----
post "$(gen long sd15 60)"
long_job=$(job_of)
curl -s -N "$B/v1/jobs/$long_job/stream" > /dev/null &
stream_pid=$!
i=0
while [ $i -lt 50 ]; do
    scrape > /dev/null
    [ "$(value sdworker_open_streams)" = 1 ] && break
    sleep 0.1
    i=$((i + 1))
done
[ "$(value sdworker_open_streams)" = 1 ] && [ "$(value "sdworker_jobs_running$w")" = 1 ]
ok $? "an open stream and a running job show"
kill -STOP "$engine_pid"
start=$(date +%s%N)
code=$(scrape)
ms=$((($(date +%s%N) - start) / 1000000))
kill -CONT "$engine_pid"
[ "$code" = 200 ] && [ "$ms" -lt 2000 ]
ok $? "a scrape while the engine is stopped (SIGSTOP) answers at once ($code in $ms ms)"
curl -s -o /dev/null -X DELETE "$B/v1/jobs/$long_job"
wait_done "$long_job"
kill "$stream_pid" 2> /dev/null
wait "$stream_pid" 2> /dev/null
stream_pid=
scrape > /dev/null
[ "$(value "sdworker_jobs_cancelled_total{$L}")" = 1 ]
ok $? "the cancelled job counts as cancelled"

# ---- the whole page through prometheus_client's parser ----
parser=
for py in python3 /usr/bin/python3; do
    if "$py" -c 'import prometheus_client.parser' 2> /dev/null; then parser=$py; break; fi
done
if [ -n "$parser" ]; then
    "$parser" -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = list(text_string_to_metric_families(open(sys.argv[1]).read()))
types = {f.name: f.type for f in fams}
want = {"sdworker_jobs_submitted": "counter", "sdworker_jobs_failed": "counter",
        "sdworker_queue_wait_seconds": "histogram", "sdworker_step_duration_seconds": "histogram",
        "sdworker_queue_depth": "gauge", "sdworker_pool_children": "gauge"}
bad = [k for k, t in want.items() if types.get(k) != t]
for f in fams:
    for s in f.samples:
        if s.value < 0:
            bad.append(s.name)
if bad:
    sys.exit("unexpected: %s (families: %s)" % (bad, types))
print("# %d families parsed" % len(fams))
' "$tmp/m" > "$tmp/py.out" 2>&1
    ok $? "prometheus_client's text parser reads the whole page: $(tr '\n' ' ' < "$tmp/py.out")"
else
    skip "prometheus_client is not installed (Debian: apt-get install python3-prometheus-client; scripts/install-deps test)"
fi

# ---- access: an admin key when keys are configured ----
ADMIN=metrics-admin-key-0123456789
USER=metrics-user-key-0123456789
hash() { printf %s "$1" | "$POOL" --hash-key; }
cat >> "$CONF" << EOF
api_key.ops = $(hash "$ADMIN") admin
api_key.user = $(hash "$USER")
EOF
kill -HUP $pool_pid
i=0
while [ $i -lt 50 ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "$B/metrics")" != 401 ]; do
    sleep 0.1
    i=$((i + 1))
done
c1=$(scrape)
c2=$(scrape -H "Authorization: Bearer $USER")
c3=$(scrape -H "Authorization: Bearer $ADMIN")
[ "$c1" = 401 ] && [ "$c2" = 403 ] && [ "$c3" = 200 ] && [ "$(value "sdworker_jobs_submitted_total{$L}")" = 3 ]
ok $? "with keys: no key 401 ($c1), a key that is not admin 403 ($c2), the admin key 200 ($c3), counts kept over the reload"
post "$(gen x)"
c4=$code
scrape -H "Authorization: Bearer $ADMIN" > /dev/null
[ "$c4" = 401 ] && [ "$(value 'sdworker_jobs_rejected_total{api="rbee",code="unauthorized"}')" = 1 ]
ok $? "a submission without a key counts as rejected, unauthorized ($c4)"

echo "1..$n"
exit $failed
