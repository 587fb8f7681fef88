#!/usr/bin/env bash
# The chaos soak: tiny jobs (128x128, 3-8 steps, the fixture model on the CPU)
# with their event streams through a private nginx, the real pool and the
# real engine supervisor, while pool children and the engine are killed with
# kill -9 at random, the pool is reloaded with SIGHUP and the engine is
# restarted once (tests/soak_client.py drives it all and checks the jobs).
# Then: every job ended once, with complete or engine_crashed/engine_stopped
# for the job running at a kill/stop; none lost or run twice; reconnected
# streams whole; the engine back within 5 s each time; no descriptor,
# process or shared-memory leak. The figures are printed as "#" lines.
#
#   SDW_SOAK_JOBS      jobs (default 150: the short version make check runs,
#                      about 15 s on 2 cores; by hand: SDW_SOAK_JOBS=500)
#   SDW_SOAK_CONCURRENCY  jobs in flight at once (default 10)
#   SDW_SOAK_SEED      the chaos's random seed (default: from the pid)
#   SDW_SOAK_KEEP=1    keep the temporary directory (logs, report.json)
#
# nginx, curl and python3 are required. Only 127.0.0.1 is used.
set -u
srcdir=${srcdir:-.}
top=$(cd "$srcdir" && pwd)
fix=${SDW_FIXTURES:-$top/tests/fixtures}
ENGINE=$(pwd)/sdworker-engine
POOL=$(pwd)/sdworker-fcgi
JOBS=${SDW_SOAK_JOBS:-150}
CONC=${SDW_SOAK_CONCURRENCY:-10}
SEED=${SDW_SOAK_SEED:-$$}
CHILDREN=4
. "$srcdir/tests/testlib.sh"
need_service_tools "$POOL" "$ENGINE"
command -v python3 > /dev/null || bail "python3 is required"

t_begin=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-soak.XXXXXX")
ring=/sdw-soak-$$
nginx_pid= pool_pid=
ls /dev/shm > "$tmp/shm.before" 2> /dev/null
# The supervisor's pid lives in a file: the driver replaces the supervisor.
engine_pid() { cat "$tmp/engine.pid" 2> /dev/null; }
cleanup() {
    local p e
    e=$(engine_pid)
    for p in $e $pool_pid $nginx_pid; do kill -9 "$p" 2> /dev/null; done
    # The engine and the pool's children, should their parent have gone
    # first (by parent pid: only what this script started).
    for p in $e $pool_pid $nginx_pid; do pkill -9 -P "$p" 2> /dev/null; done
    rm -f "/dev/shm$ring"
    if [ $failed -ne 0 ]; then
        echo "# engine log:"; sed 's/^/#   /' "$tmp/engine.log" 2> /dev/null | tail -40
        echo "# pool log:"; sed 's/^/#   /' "$tmp/pool.log" 2> /dev/null | tail -30
        echo "# nginx errors:"; sed 's/^/#   /' "$tmp/run/error.log" 2> /dev/null | tail -10
    fi
    if [ "${SDW_SOAK_KEEP:-0}" = 1 ]; then echo "# kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

mkdir -p "$tmp/run" "$tmp/www"
cat > "$tmp/sdworker.conf" << EOF
listen = unix:$tmp/run/fcgi.sock
pm = static
pm.max_children = $CHILDREN
ring.name = $ring
ring.slots = 24
ring.max_queued = 8
limits.max_image_bytes = 64k
limits.max_pixels = 65536
keepalive_interval = 1
preview_interval = 2
device = cpu
threads = 1
engine.restart_delay_ms = 100
engine.stop_timeout_s = 5
model.tiny = $fix/models/tiny-a
log_level = info
EOF
CONF=$tmp/sdworker.conf

"$ENGINE" -c "$CONF" >> "$tmp/engine.log" 2>&1 < /dev/null &
first_engine=$!
echo $first_engine > "$tmp/engine.pid"
"$POOL" -c "$CONF" --ring-wait 20 --grace 5 >> "$tmp/pool.log" 2>&1 < /dev/null &
pool_pid=$!
start_nginx 17
up=1
for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$B/ready")" = 200 ] && { up=0; break; }
    sleep 0.1
done
ok $up "engine, pool and nginx up: /ready is 200"
[ $up -eq 0 ] || { echo "1..$n"; exit 1; }

echo "# soak: $JOBS jobs, $CONC at a time, seed $SEED, $CHILDREN pool children, ring $ring"
cmd=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$ENGINE" -c "$CONF")
# The driver bounds itself (120 s + 2 s a job, then the checks); timeout
# is the last resort.
timeout $((300 + 3 * JOBS)) python3 "$top/tests/soak_client.py" --port "$port" --jobs "$JOBS" --concurrency "$CONC" \
    --seed "$SEED" --pool-pid "$pool_pid" --nginx-pid "$nginx_pid" \
    --engine-pidfile "$tmp/engine.pid" --engine-cmd "$cmd" --engine-log "$tmp/engine.log" \
    --ring "$ring" --max-children "$CHILDREN" --preview-interval 2 \
    --results "$tmp/results" --report "$tmp/report.json" > "$tmp/client.out" 2> "$tmp/client.err"
rc=$?
grep '^# ' "$tmp/client.out"
ok $rc "the driver ran to its end (exit $rc)"
[ -s "$tmp/client.err" ] && sed 's/^/# stderr: /' "$tmp/client.err" | tail -20
while IFS=$'\t' read -r verdict text; do
    case $verdict in
    PASS) ok 0 "$text" ;;
    FAIL) ok 1 "$text" ;;
    DIAG) echo "# $text" ;;
    esac
done < "$tmp/results"

# ---- teardown: the driver stopped the engine; now the pool and nginx ----
kill -TERM "$pool_pid"
wait "$pool_pid"
prc=$?
pool_pid=
kill -QUIT "$nginx_pid"
wait "$nginx_pid"
nrc=$?
nginx_pid=
# The first supervisor (this shell's child, which the driver stopped).
kill -9 "$first_engine" 2> /dev/null
wait "$first_engine" 2> /dev/null
ok $([ $prc -eq 0 ] && [ $nrc -eq 0 ]; echo $?) "the pool and nginx stop cleanly (exit $prc, $nrc)"
left=
if [ -s "$tmp/results.pids" ]; then
    while read -r pid st what; do
        [ -r "/proc/$pid/stat" ] || continue
        now=$(sed 's/.*) //' "/proc/$pid/stat" 2> /dev/null | cut -d' ' -f20)
        [ "$now" = "$st" ] && left="$left $pid($what)"
    done < "$tmp/results.pids"
fi
ok $([ -s "$tmp/results.pids" ] && [ -z "$left" ]; echo $?) \
    "no process left of the $(wc -l < "$tmp/results.pids" 2> /dev/null || echo 0) the soak saw${left:+:$left}"
[ -e "/dev/shm$ring" ]
ok $? "the ring outlives the stop in /dev/shm (as designed)"
rm -f "/dev/shm$ring"
ls /dev/shm > "$tmp/shm.after" 2> /dev/null
ours=$(comm -13 "$tmp/shm.before" "$tmp/shm.after" | grep -F "sdw-soak-$$" || true)
ok $([ -z "$ours" ]; echo $?) "after the teardown nothing of the soak's is left in /dev/shm${ours:+: $ours}"
others=$(comm -13 "$tmp/shm.before" "$tmp/shm.after" | tr '\n' ' ')
[ -n "$others" ] && echo "# new in /dev/shm meanwhile, not the soak's (other tests?): $others"

echo "# figures: $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["figures"]))' "$tmp/report.json" 2> /dev/null)"
echo "# duration: $(($(date +%s) - t_begin)) s in all"
echo "1..$n"
exit $failed
