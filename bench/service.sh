#!/usr/bin/env bash
# Service benchmark through nginx on loopback (see doc/performance.md):
#  1. GET /health throughput with wrk (2 threads, 32 connections, 10 s);
#  2. POST /v1/jobs latency, p50 and p99 over 1000 sequential submissions,
#     while the engine is busy with a long job. Each accepted job is deleted
#     at once (a queued job is cancelled without touching the engine), so
#     the queue never fills and every POST measured is a real acceptance.
# Needs a build (build/ or SDW_BUILD_DIR) and wrk (Debian package wrk).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export SDW_BUILD_DIR=${SDW_BUILD_DIR:-$top/build}
export SDW_RUN_DIR=$(mktemp -d /tmp/sdw-bench-XXXXXX)
export SDW_PORT=${SDW_PORT:-8099}
url=http://127.0.0.1:$SDW_PORT
command -v wrk >/dev/null || { echo "bench/service.sh: wrk is needed (apt-get install wrk)" >&2; exit 1; }
# Deleted jobs keep their slot for result_ttl: a short one lets 1000 pass.
# On a CPU-only machine the engine would take every core; leaving one to
# nginx and the pool measures the front end, not the scheduler's mercy.
export SDW_OPTS="result_ttl=2 ${SDW_BENCH_ENGINE_THREADS:+threads=$SDW_BENCH_ENGINE_THREADS} ${SDW_OPTS:-}"
trap '"$top/scripts/start-service" stop >/dev/null; rm -rf "$SDW_RUN_DIR"' EXIT
"$top/scripts/start-service"

echo "== GET /health: wrk -t2 -c32 -d10s"
wrk -t2 -c32 -d10s --latency "$url/health" | tee "$SDW_RUN_DIR/wrk.txt"

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
