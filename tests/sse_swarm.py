#!/usr/bin/env python3
"""Holds many concurrent event streams open on a local sdworker and measures
the API meanwhile (tests/test_streams.sh, bench/service.sh).

  sse_swarm.py --port P --jobs ID[,ID...] --streams N [--probes K]
               [--post-body JSON] [--rss-pid PID ...] [--timeout S]

1. Measures the memory of the process trees under each --rss-pid (nginx,
   the pool master) when given.
2. Opens N streams, spread over the jobs, at most --wave at a time, each
   GET /v1/jobs/ID/stream over HTTP/1.0 (no chunking to undo); a stream
   counts as open when its headers and its first event or comment are in.
3. While all are open: K sequential GET /health, K GET /ready and K
   POST /v1/jobs (each accepted job deleted at once, untimed, so that the
   queue never fills), each on a new connection, timed from connect to the
   end of the answer.
4. With --status, reads /v1/pool/status?full; measures the memory again,
   closes every stream and prints one JSON object with the counts and the
   latencies in milliseconds.

Only 127.0.0.1 is ever contacted; everything is bounded by --timeout."""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

HOST = "127.0.0.1"


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p / 100.0))], 3)


def tree(root):
    """root and its descendants, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(d)] = int(fields[1])
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def memory(roots):
    """RSS and PSS in KiB (PSS splits shared pages) summed over the trees,
    and per tree under "trees"."""
    total = {"processes": 0, "rss_kib": 0, "pss_kib": 0, "trees": {}}
    for root in roots:
        t = {"processes": 0, "rss_kib": 0, "pss_kib": 0}
        for p in tree(root):
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Rss:"):
                            t["rss_kib"] += int(line.split()[1])
                        elif line.startswith("Pss:"):
                            t["pss_kib"] += int(line.split()[1])
                t["processes"] += 1
            except OSError:
                pass
        total["trees"][str(root)] = t
        for k in ("processes", "rss_kib", "pss_kib"):
            total[k] += t[k]
    return total


async def request(port, method, path, body=None):
    """One request on a new connection: (status, body bytes, seconds)."""
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection(HOST, port)
    head = f"{method} {path} HTTP/1.0\r\nHost: {HOST}\r\n"
    data = b""
    if body is not None:
        data = body.encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    w.write(head.encode() + b"\r\n" + data)
    raw = await r.read()
    w.close()
    dt = time.perf_counter() - t0
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    return status, raw.partition(b"\r\n\r\n")[2], dt


class Stream:
    def __init__(self, port, job):
        self.port, self.job = port, job
        self.status, self.first, self.error_code, self.open_s = 0, None, None, None
        self.retry_after = None
        self.reader = self.writer = None
        self.task = None
        self.ended = False

    async def open(self):
        t0 = time.perf_counter()
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(f"GET /v1/jobs/{self.job}/stream HTTP/1.0\r\nHost: {HOST}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("retry-after:"):
                self.retry_after = line.split(":", 1)[1].strip()
        if self.status != 200:
            body = await self.reader.read()
            try:
                self.error_code = json.loads(body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                self.error_code = "not json"
            self.close()
            return
        block = (await self.reader.readuntil(b"\n\n")).decode()
        self.open_s = time.perf_counter() - t0
        names = [l[7:] for l in block.splitlines() if l.startswith("event: ")]
        self.first = names[0] if names else "comment"
        self.task = asyncio.ensure_future(self.drain())

    async def drain(self):
        # Reading keeps the connection's buffers empty; EOF = the server ended it.
        while await self.reader.read(65536):
            pass
        self.ended = True

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


async def main(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = {}
    if a.rss_pid:
        out["memory_before"] = memory(a.rss_pid)
    jobs = a.jobs.split(",")
    streams = [Stream(a.port, jobs[i % len(jobs)]) for i in range(a.streams)]
    gate = asyncio.Semaphore(a.wave)
    failures = []

    async def open_one(s):
        async with gate:
            try:
                await s.open()
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                failures.append(repr(e))

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one(s) for s in streams))
    out["open_seconds"] = round(time.perf_counter() - t0, 3)
    statuses, firsts, codes, retry = {}, {}, {}, {}
    for s in streams:
        if s.retry_after:
            retry[s.retry_after] = retry.get(s.retry_after, 0) + 1
        statuses[s.status] = statuses.get(s.status, 0) + 1
        if s.first:
            firsts[s.first] = firsts.get(s.first, 0) + 1
        if s.error_code:
            codes[s.error_code] = codes.get(s.error_code, 0) + 1
    out.update(streams=a.streams, statuses=statuses, first_events=firsts, error_codes=codes, retry_after=retry,
               failures=failures[:5], n_failures=len(failures))
    opened = [s.open_s * 1000 for s in streams if s.open_s is not None]
    out["stream_first_event_ms"] = {"p50": pct(opened, 50), "p99": pct(opened, 99), "max": pct(opened, 100)}

    lat = {"health": [], "ready": [], "post": []}
    codes_seen = {"health": {}, "ready": {}, "post": {}}
    for _ in range(a.probes):
        for kind, method, path, body in (("health", "GET", "/health", None), ("ready", "GET", "/ready", None),
                                         ("post", "POST", "/v1/jobs", a.post_body)):
            if kind == "post" and body is None:
                continue
            status, rbody, dt = await request(a.port, method, path, body)
            lat[kind].append(dt * 1000)
            codes_seen[kind][status] = codes_seen[kind].get(status, 0) + 1
            if kind == "post" and status == 202:
                job = json.loads(rbody)["job_id"]
                await request(a.port, "DELETE", f"/v1/jobs/{job}")
    for kind, v in lat.items():
        if v:
            out[kind] = {"n": len(v), "statuses": codes_seen[kind], "p50": pct(v, 50), "p95": pct(v, 95),
                         "p99": pct(v, 99), "max": pct(v, 100)}
    out["still_open"] = sum(1 for s in streams if s.status == 200 and not s.ended)
    if a.status:
        status, rbody, _ = await request(a.port, "GET", "/v1/pool/status?full")
        st = json.loads(rbody) if status == 200 else {}
        out["pool"] = {"active_streams": st.get("active_streams"),
                       "process_streams": sorted(p["streams"] for p in st.get("processes", [])),
                       "process_jobs": sum(len(p["jobs"]) for p in st.get("processes", []))}
    if a.rss_pid:
        await asyncio.sleep(1)
        out["memory_with"] = memory(a.rss_pid)
    for s in streams:
        s.close()
    await asyncio.sleep(0.2)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jobs", required=True, help="job ids, comma-separated")
    ap.add_argument("--streams", type=int, required=True)
    ap.add_argument("--wave", type=int, default=64, help="streams being opened at once")
    ap.add_argument("--probes", type=int, default=0)
    ap.add_argument("--post-body")
    ap.add_argument("--rss-pid", type=int, action="append")
    ap.add_argument("--status", action="store_true", help="report /v1/pool/status?full while open")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    try:
        asyncio.run(asyncio.wait_for(main(args), args.timeout))
    except asyncio.TimeoutError:
        print(json.dumps({"error": f"timed out after {args.timeout} s"}))
        sys.exit(1)
