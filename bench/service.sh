#!/usr/bin/env bash
# Service benchmark through nginx on loopback (see doc/performance.md):
#  1. GET /health throughput with wrk (2 threads, 32 connections, 10 s),
#     when wrk is installed (Debian package wrk);
#  2. POST /v1/jobs latency, p50 and p99 over 1000 sequential submissions,
#     while the engine is busy with a long job. Each accepted job is deleted
#     at once (a queued job is cancelled without touching the engine), so
#     the queue never fills and every POST measured is a real acceptance.
#  3. SDW_BENCH_STREAMS (1000) event streams held open at once
#     (tests/sse_swarm.py: python3 asyncio, 127.0.0.1 only), spread over a
#     running job and nine queued ones; meanwhile SDW_BENCH_PROBES (1000)
#     sequential GET /health, GET /ready and POST /v1/jobs (+ DELETE), each
#     timed, and the memory (RSS and PSS) of nginx and the pool before and
#     with the streams, per stream.
# Needs a build (build/ or SDW_BUILD_DIR) and python3. Everything it starts
# goes at the end; every part is bounded in count and time.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export SDW_BUILD_DIR=${SDW_BUILD_DIR:-$top/build}
export SDW_RUN_DIR=$(mktemp -d /tmp/sdw-bench-XXXXXX)
export SDW_PORT=${SDW_PORT:-8099}
url=http://127.0.0.1:$SDW_PORT
streams=${SDW_BENCH_STREAMS:-1000}
probes=${SDW_BENCH_PROBES:-1000}
command -v python3 >/dev/null || { echo "bench/service.sh: python3 is needed" >&2; exit 1; }
# Deleted jobs keep their slot for result_ttl: a short one lets 1000 pass.
# On a CPU-only machine the engine would take every core; leaving one to
# nginx and the pool measures the front end, not the scheduler's mercy.
export SDW_OPTS="result_ttl=2 ${SDW_BENCH_ENGINE_THREADS:+threads=$SDW_BENCH_ENGINE_THREADS} ${SDW_OPTS:-}"
trap '"$top/scripts/start-service" stop >/dev/null; rm -rf "$SDW_RUN_DIR"' EXIT
"$top/scripts/start-service"
# The swarm's files, as nginx's: a stream is a connection each way.
ulimit -n "$(ulimit -Hn)"

if command -v wrk >/dev/null; then
  echo "== GET /health: wrk -t2 -c32 -d10s"
  wrk -t2 -c32 -d10s --latency "$url/health" | tee "$SDW_RUN_DIR/wrk.txt"
else
  echo "== GET /health throughput: skipped (wrk is not installed: apt-get install wrk)"
fi

job() {
  printf '{"operation":"image_generation","hive_id":"bench","model":"%s","prompt":"busy","width":%d,"height":%d,"steps":%d}' \
    "${SDW_MODEL_NAME:-tiny}" "$1" "$1" "$2"
}
busy=$(curl -s -H 'Content-Type: application/json' "$url/v1/jobs" -d "$(job 512 150)" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
echo "== POST /v1/jobs latency while $busy keeps the engine busy"
body=$(job 64 20)
for i in $(seq 1000); do
  curl -s -o "$SDW_RUN_DIR/post.json" -w '%{time_total} %{http_code}\n' -H 'Content-Type: application/json' \
    "$url/v1/jobs" -d "$body" >>"$SDW_RUN_DIR/lat.txt"
  id=$(sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p' "$SDW_RUN_DIR/post.json")
  curl -s -o /dev/null -X DELETE "$url/v1/jobs/$id"
done
state=$(curl -s "$url/v1/jobs/$busy" | sed -n 's/.*"state":"\([^"]*\)".*/\1/p')
curl -s -o /dev/null -X DELETE "$url/v1/jobs/$busy"
awk '{ if ($2 == 202) print $1 * 1000 }' "$SDW_RUN_DIR/lat.txt" | sort -n | awk -v state="$state" '
  { v[NR] = $1 }
  END { printf "accepted: %d of 1000; busy job state at the end: %s\n", NR, state;
        printf "POST /v1/jobs latency: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", v[int(NR*0.5)], v[int(NR*0.99)], v[NR] }'

echo "== $streams event streams open at once; $probes each of GET /health, GET /ready, POST /v1/jobs meanwhile"
id_of() { sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p'; }
post_job() { curl -s -H 'Content-Type: application/json' "$url/v1/jobs" -d "$1" | id_of; }
jobs=$(post_job "$(job 512 150)")
for k in $(seq 9); do jobs="$jobs,$(post_job "$(job 64 20)")"; done
python3 "$top/tests/sse_swarm.py" --port "$SDW_PORT" --jobs "$jobs" --streams "$streams" --probes "$probes" \
  --post-body "$body" --status --rss-pid "$(cat "$SDW_RUN_DIR/nginx.pid")" --rss-pid "$(cat "$SDW_RUN_DIR/fcgi.pid")" \
  --timeout 300 >"$SDW_RUN_DIR/swarm.json"
for j in ${jobs//,/ }; do curl -s -o /dev/null -X DELETE "$url/v1/jobs/$j"; done
python3 - "$SDW_RUN_DIR/swarm.json" "$streams" "$(cat "$SDW_RUN_DIR/nginx.pid")" "$(cat "$SDW_RUN_DIR/fcgi.pid")" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
print("streams: %s of %d open (statuses %s, first events %s), %s still open after the probes; opened in %.2f s"
      % (r["statuses"].get("200", 0), n, r["statuses"], r["first_events"], r["still_open"], r["open_seconds"]))
print("stream headers + first event: p50 %(p50)s ms, p99 %(p99)s ms, max %(max)s ms" % r["stream_first_event_ms"])
for k, p in (("health", "p95"), ("ready", "p95"), ("post", "p99")):
    v = r[k]
    print("%-6s n %d statuses %s: p50 %.2f ms, %s %.2f ms, max %.2f ms"
          % (k, v["n"], v["statuses"], v["p50"], p, v[p], v["max"]))
print("pool status while open: %s streams, per child %s" % (r["pool"]["active_streams"], r["pool"]["process_streams"]))
b, w = r["memory_before"], r["memory_with"]
opened = max(1, r["statuses"].get("200", 0))
print("memory of nginx + pool: %d processes, RSS %.1f MiB, PSS %.1f MiB before; "
      "%d processes, RSS %.1f MiB, PSS %.1f MiB with the streams"
      % (b["processes"], b["rss_kib"] / 1024, b["pss_kib"] / 1024, w["processes"], w["rss_kib"] / 1024,
         w["pss_kib"] / 1024))
print("per open stream: RSS %.1f KiB, PSS %.1f KiB"
      % ((w["rss_kib"] - b["rss_kib"]) / opened, (w["pss_kib"] - b["pss_kib"]) / opened))
for name, pid in zip(("nginx", "pool"), sys.argv[3:]):
    tb, tw = b["trees"][pid], w["trees"][pid]
    print("  %-5s %d -> %d processes, per stream RSS %.1f KiB, PSS %.1f KiB"
          % (name, tb["processes"], tw["processes"], (tw["rss_kib"] - tb["rss_kib"]) / opened,
             (tw["pss_kib"] - tb["pss_kib"]) / opened))
EOF
# A closed stream's thread ends at its next keep-alive (15 s): wait for
# them, so that the stop finds nothing running.
for _ in $(seq 100); do
  curl -s "$url/v1/pool/status" | grep -q '"active_streams":0' && break
  sleep 0.2
done
