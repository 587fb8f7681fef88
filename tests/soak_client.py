#!/usr/bin/env python3
"""The chaos soak's driver (tests/soak.sh): jobs, streams and faults against
a local sdworker (private nginx, pool, real engine), then the checks.

  soak_client.py --port P --jobs N --pool-pid PID --engine-pidfile F
                 --engine-cmd JSON --engine-log F --nginx-pid PID
                 --results F --report F [--concurrency C] [--seed S]

1. Samples the descriptors, threads and shared memory of every process of
   the service (the baseline, with nothing running).
2. Runs N jobs (--size, 3-8 euler steps), at most C at a time. Each worker
   submits (a 429/503 is retried after its Retry-After, a 502 or a lost
   answer again at once: such a submission may have queued a job that no
   one follows, counted as an orphan), follows the job's event stream over
   HTTP/1.0 and, when the stream drops before complete or error, reconnects
   with Last-Event-ID; then reads the job's status.
3. Meanwhile a chaos thread, spread over the run by the number of jobs
   finished, kill -9's a pool child (one with streams when there is one),
   kill -9's the engine (the supervisor's child: measured until /ready is
   200 with a new engine), SIGHUPs the pool master, and once SIGTERMs the
   supervisor and starts a new one (--engine-cmd; its pid goes to
   --engine-pidfile).
4. When every job has ended: samples again (the pool's children settled,
   streams closed), stops the engine (SIGTERM), and writes the checks to
   --results ("PASS<TAB>text" / "FAIL<TAB>text"), every pid it saw with its
   start time to --results.pids, and the figures to --report (JSON).

Only 127.0.0.1 is contacted; every loop is bounded in count and time."""
import argparse
import collections
import datetime
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
TERMINAL = ("complete", "error")
OK_ERRORS = ("engine_crashed", "engine_stopped")


def log(msg):
    print(f"# {time.strftime('%H:%M:%S')} {msg}", flush=True)


# ---------------------------------------------------------------- HTTP ----

def http(port, method, path, body=None, headers=None, timeout=10.0):
    """One HTTP/1.0 exchange: (status, headers, body). Raises OSError or
    ValueError when no whole answer came."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        req = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        for k, v in (headers or {}).items():
            req += f"{k}: {v}\r\n"
        if body is not None:
            req += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        req += "\r\n"
        s.sendall(req.encode() + (body or b""))
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    finally:
        s.close()
    data = b"".join(chunks)
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no complete answer")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest


def retry_after(hdrs, default=1.0):
    try:
        return float(hdrs.get("retry-after", default))
    except ValueError:
        return default


def stream(port, job, last, on_event, stall_s):
    """Reads /v1/jobs/JOB/stream (after event LAST when given) and calls
    on_event(id, name, data) per event; on_event returns True at the end.
    Returns ("end",), ("drop", why) or ("http", status, headers, body)."""
    try:
        s = socket.create_connection((HOST, port), timeout=stall_s)
    except OSError as e:
        return ("drop", f"connect: {e}")
    try:
        req = f"GET /v1/jobs/{job}/stream HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        if last is not None:
            req += f"Last-Event-ID: {last}\r\n"
        s.sendall((req + "\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            c = s.recv(65536)
            if not c:
                return ("drop", "closed before the headers")
            buf += c
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 200:
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
            return ("http", status, hdrs, buf)
        ev = {}
        while True:
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                line = line.rstrip(b"\r").decode("utf-8", "replace")
                if line == "":
                    if "data" in ev or "event" in ev:
                        eid = int(ev["id"]) if "id" in ev else None
                        try:
                            data = json.loads(ev.get("data", "null"))
                        except ValueError:
                            data = {"unparsed": ev.get("data", "")[:80]}
                        if on_event(eid, ev.get("event", "message"), data):
                            return ("end",)
                    ev = {}
                elif line.startswith(":"):
                    continue
                else:
                    k, _, v = line.partition(":")
                    v = v[1:] if v.startswith(" ") else v
                    ev[k] = ev[k] + "\n" + v if k == "data" and k in ev else v
            c = s.recv(65536)
            if not c:
                return ("drop", "closed mid-stream")
            buf += c
    except socket.timeout:
        return ("drop", f"silent for {stall_s} s")
    except OSError as e:
        return ("drop", f"{e}")
    finally:
        s.close()


def rfc3339(t):
    if not t:
        return None
    return datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


# ------------------------------------------------------------- /proc ------

def starttime(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid):
    st = proc_state(pid)
    return st is not None and st not in ("Z", "X")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def describe(pid):
    """Descriptors, threads, state, and the /dev/shm objects it holds open
    or mapped, of one process (None when it is gone)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        shm = set()
        for fd in fds:
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("/dev/shm/"):
                shm.add(t)
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                p = line.split(None, 5)
                if len(p) == 6 and p[5].startswith("/dev/shm/"):
                    shm.add(p[5].strip())
        return {"pid": pid, "fds": len(fds), "threads": len(os.listdir(f"/proc/{pid}/task")),
                "state": proc_state(pid), "shm": sorted(shm)}
    except OSError:
        return None


# --------------------------------------------------------------- soak ------

class Soak:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.lock = threading.Lock()
        self.jobs = []          # one record per job, in submission order
        self.next_job = 0
        self.finished = 0
        self.stop = threading.Event()
        self.pids = {}          # pid -> (start time, what)
        self.chaos = []         # {"kind", "t", ...}
        self.recovery = []      # seconds until /ready with a new engine
        self.restart_ready_s = None
        self.fd_max = collections.defaultdict(int)
        with open(a.engine_pidfile) as f:
            self.supervisor = int(f.read().split()[0])
        self.engine_started_here = None   # Popen of the restarted supervisor
        self.fails = []
        self.engine_baseline = {}

    # ---- bookkeeping of processes ----
    def see(self, pid, what):
        if pid and pid not in self.pids:
            st = starttime(pid)
            if st is not None:
                self.pids[pid] = (st, what)

    def tree(self):
        """Every process of the service now: [(pid, role)]."""
        out = [(self.a.pool_pid, "pool master")]
        out += [(c, "pool child") for c in children(self.a.pool_pid)]
        out.append((self.supervisor, "engine supervisor"))
        out += [(c, "engine") for c in children(self.supervisor)]
        out.append((self.a.nginx_pid, "nginx master"))
        out += [(c, "nginx worker") for c in children(self.a.nginx_pid)]
        for p, what in out:
            self.see(p, what)
        return out

    def sample(self):
        s = collections.defaultdict(list)
        for p, what in self.tree():
            d = describe(p)
            if d:
                s[what].append(d)
        return dict(s)

    def monitor(self):
        """Once a second: every pid, and the most descriptors each kind of
        process held."""
        while not self.stop.wait(1.0):
            for what, ds in self.sample().items():
                for d in ds:
                    self.fd_max[what] = max(self.fd_max[what], d["fds"])

    def engine_child(self):
        c = children(self.supervisor)
        return c[0] if c else None

    def ready(self):
        try:
            return http(self.a.port, "GET", "/ready", timeout=2.0)[0] == 200
        except (OSError, ValueError):
            return False

    # ---- one job ----
    def run_job(self, k):
        a = self.a
        steps = self.rng.randint(a.min_steps, a.max_steps)
        body = json.dumps({"operation": "image_generation", "hive_id": "soak", "model": "tiny",
                           "prompt": f"soak job {k}", "width": a.size, "height": a.size, "steps": steps,
                           "sampler": "euler", "seed": k}).encode()
        r = {"k": k, "steps": steps, "id": None, "submit_tries": 0, "submit_codes": {},
             "ambiguous_submits": 0, "events": [], "reconnects": 0, "drops": [], "stream_http": {},
             "terminal": None, "status": None, "problems": []}
        with self.lock:
            self.jobs.append(r)
        deadline = time.time() + a.job_timeout
        while time.time() < deadline:
            r["submit_tries"] += 1
            try:
                st, h, b = http(a.port, "POST", "/v1/jobs", body)
            except (OSError, ValueError) as e:
                r["ambiguous_submits"] += 1
                r["submit_codes"]["none"] = r["submit_codes"].get("none", 0) + 1
                time.sleep(0.2)
                continue
            r["submit_codes"][str(st)] = r["submit_codes"].get(str(st), 0) + 1
            if st == 202:
                r["id"] = json.loads(b)["job_id"]
                break
            if st in (429, 503):
                time.sleep(retry_after(h, 1.0))
            elif st in (502, 504):
                r["ambiguous_submits"] += 1
                time.sleep(0.2)
            else:
                r["problems"].append(f"submission answered {st}: {b[:200]!r}")
                return r
        if not r["id"]:
            r["problems"].append("never accepted")
            return r
        seen = set()
        last = None

        def on_event(eid, name, data):
            nonlocal last
            if name == "queued":
                return False
            d = {"id": eid, "event": name}
            if isinstance(data, dict):
                for f in ("step", "total", "code", "width", "height"):
                    if f in data:
                        d[f] = data[f]
                if "image" in data:
                    d["image_len"] = len(data["image"])
            r["events"].append(d)
            if eid is not None:
                if eid in seen:
                    r["problems"].append(f"event {eid} seen twice")
                if last is not None and eid <= last:
                    r["problems"].append(f"event {eid} after {last}")
                seen.add(eid)
                last = eid if last is None else max(last, eid)
            if name in TERMINAL:
                r["terminal"] = d
                return True
            return False

        first = True
        while r["terminal"] is None and time.time() < deadline:
            if not first:
                r["reconnects"] += 1
            first = False
            res = stream(a.port, r["id"], last, on_event, stall_s=10.0)
            if res[0] == "end":
                break
            if res[0] == "drop":
                r["drops"].append(res[1])
                time.sleep(0.05)
            else:
                st = res[1]
                r["stream_http"][str(st)] = r["stream_http"].get(str(st), 0) + 1
                if st in (404, 410):
                    r["problems"].append(f"stream answered {st}: {res[3][:200]!r}")
                    break
                time.sleep(min(retry_after(res[2], 0.5), 5.0) if st in (429, 503) else 0.2)
        if r["terminal"] is None and not r["problems"]:
            r["problems"].append(f"no complete or error within {a.job_timeout} s")
        for _ in range(50):
            try:
                st, h, b = http(a.port, "GET", f"/v1/jobs/{r['id']}")
                if st == 200:
                    r["status"] = json.loads(b)
                else:
                    r["problems"].append(f"status answered {st}")
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        return r

    def worker(self):
        while not self.stop.is_set():
            with self.lock:
                if self.next_job >= self.a.jobs:
                    return
                k = self.next_job
                self.next_job += 1
            self.run_job(k)
            with self.lock:
                self.finished += 1

    # ---- faults ----
    def kill_child(self):
        victims, streaming = [], []
        try:
            st, h, b = http(self.a.port, "GET", "/v1/pool/status?full", timeout=3.0)
            for p in json.loads(b).get("processes", []):
                if not p.get("retiring"):
                    victims.append(p["pid"])
                    if p.get("streams", 0) > 0:
                        streaming.append(p["pid"])
        except (OSError, ValueError):
            pass
        victims = [p for p in victims if p in children(self.a.pool_pid)]
        if not victims:
            victims = children(self.a.pool_pid)
        if not victims:
            return {"kind": "child_kill", "t": time.time(), "pid": None}
        pid = self.rng.choice([p for p in streaming if p in victims] or victims)
        self.see(pid, "pool child")
        os.kill(pid, signal.SIGKILL)
        return {"kind": "child_kill", "t": time.time(), "pid": pid, "had_streams": pid in streaming}

    def wait_engine(self, old, t0, limit=30.0):
        """Seconds from t0 until /ready is 200 with an engine other than
        old; None past the limit."""
        end = time.time() + limit
        while time.time() < end:
            e = self.engine_child()
            if e and e != old and self.ready():
                self.see(e, "engine")
                return time.time() - t0
            time.sleep(0.05)
        return None

    def kill_engine(self):
        old = self.engine_child()
        if not old:
            return {"kind": "engine_kill", "t": time.time(), "pid": None}
        self.see(old, "engine")
        t = time.time()
        os.kill(old, signal.SIGKILL)
        rec = self.wait_engine(old, t)
        self.recovery.append(rec)
        return {"kind": "engine_kill", "t": t, "pid": old, "recovery_s": rec}

    def hup(self):
        os.kill(self.a.pool_pid, signal.SIGHUP)
        return {"kind": "hup", "t": time.time()}

    def restart_engine(self):
        old_sup, old = self.supervisor, self.engine_child()
        t = time.time()
        os.kill(old_sup, signal.SIGTERM)
        end = t + self.a.stop_limit
        while alive(old_sup) and time.time() < end:
            time.sleep(0.05)
        t_gone = time.time()
        stopped = not alive(old_sup)
        if not stopped:
            self.fails.append(f"the supervisor {old_sup} did not stop within {self.a.stop_limit} s")
        logf = open(self.a.engine_log, "ab")
        self.engine_started_here = subprocess.Popen(json.loads(self.a.engine_cmd), stdout=logf,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        t_start = time.time()
        self.supervisor = self.engine_started_here.pid
        self.see(self.supervisor, "engine supervisor")
        with open(self.a.engine_pidfile, "w") as f:
            f.write(f"{self.supervisor}\n")
        rec = self.wait_engine(old, t_start)
        self.recovery.append(rec)
        self.restart_ready_s = rec
        # The new supervisor's own baseline: its descriptors differ from the
        # first one's (started by the shell), and it lives through the
        # engine kills that follow.
        self.engine_baseline = {k: v for k, v in self.sample().items() if k in ("engine supervisor", "engine")}
        return {"kind": "restart", "t": t, "t_gone": t_gone, "t_start": t_start, "old": old_sup,
                "new": self.supervisor, "stop_s": t_gone - t, "recovery_s": rec}

    def chaos_loop(self):
        n = self.a.jobs
        kinds = (["child_kill"] * max(3, n // 10) + ["engine_kill"] * max(2, n // 25) +
                 ["hup"] * max(2, n // 30))
        self.rng.shuffle(kinds)
        kinds.insert(len(kinds) // 2, "restart")
        act = {"child_kill": self.kill_child, "engine_kill": self.kill_engine, "hup": self.hup,
               "restart": self.restart_engine}
        # Spread over the first 90 % of the jobs, by the number finished.
        for i, kind in enumerate(kinds):
            at = int(0.9 * n * (i + 1) / (len(kinds) + 1))
            while not self.stop.is_set():
                with self.lock:
                    if self.finished >= at:
                        break
                time.sleep(0.05)
            # Past the deadline (workers hung) the rest still runs, on an
            # idle service, so that the counts are what they should be.
            time.sleep(self.rng.uniform(0.0, 0.4))
            ev = act[kind]()
            log(f"chaos: {json.dumps(ev)}")
            with self.lock:
                self.chaos.append(ev)

    # ---- quiet state ----
    def settle(self):
        """Waits (at most 20 s) for the pool to be back to its children, idle,
        no retiring ones, one thread each, and an engine ready."""
        end = time.time() + 20
        while time.time() < end:
            kids = children(self.a.pool_pid)
            try:
                st, h, b = http(self.a.port, "GET", "/v1/pool/status?full", timeout=3.0)
                s = json.loads(b)
                procs = s.get("processes", [])
                quiet = (s.get("active_streams") == 0 and len(procs) == self.a.max_children and
                         len(kids) == self.a.max_children and
                         all(not p["retiring"] and p["streams"] == 0 for p in procs) and
                         all((describe(c) or {}).get("threads") == 1 for c in kids))
            except (OSError, ValueError, KeyError):
                quiet = False
            if quiet and self.ready():
                return True
            time.sleep(0.2)
        return False

    def stop_engine(self):
        t = time.time()
        sup = self.supervisor
        try:
            os.kill(sup, signal.SIGTERM)
        except OSError:
            pass
        if self.engine_started_here:
            try:
                self.engine_started_here.wait(timeout=self.a.stop_limit)
            except subprocess.TimeoutExpired:
                self.engine_started_here.kill()
                self.engine_started_here.wait()
                return None
        else:
            end = t + self.a.stop_limit
            while alive(sup) and time.time() < end:
                time.sleep(0.05)
            if alive(sup):
                return None
        return time.time() - t

    # ---- the run ----
    def run(self):
        a = self.a
        if not self.settle():
            self.fails.append("the service was not quiet and ready before the soak")
        before = self.sample()
        t0 = time.time()
        mon = threading.Thread(target=self.monitor, daemon=True)
        mon.start()
        workers = [threading.Thread(target=self.worker, daemon=True) for _ in range(a.concurrency)]
        for w in workers:
            w.start()
        chaos = threading.Thread(target=self.chaos_loop, daemon=True)
        if not a.no_chaos:
            chaos.start()
        end = t0 + a.deadline
        for w in workers:
            w.join(max(0.1, end - time.time()))
        hung = [w for w in workers if w.is_alive()]
        if hung:
            self.fails.append(f"{len(hung)} worker(s) still running after {a.deadline} s")
        self.stop.set()
        if chaos.is_alive():
            chaos.join(a.stop_limit + 40)
        mon.join(3)
        duration = time.time() - t0
        quiet = self.settle()
        after = self.sample()
        stop_s = self.stop_engine()
        return before, after, quiet, duration, stop_s


def check(soak, before, after, quiet, duration, stop_s):
    a = soak.a
    res = []

    def ok(cond, text):
        res.append(("PASS" if cond else "FAIL") + "\t" + text)
        return cond

    jobs = sorted(soak.jobs, key=lambda r: r["k"])
    with open(a.engine_log, errors="replace") as f:
        englog = f.read()
    starts = collections.Counter(re.findall(r"(job-[0-9a-f]{32}): image_generation, \d+ steps, seed", englog))
    ids = [r["id"] for r in jobs if r["id"]]
    finals = collections.Counter()
    codes = collections.Counter()
    bad = []
    for r in jobs:
        t = r["terminal"]
        if r["id"] and r["id"] in ids[:ids.index(r["id"])]:
            r["problems"].append("the same id was given twice")
        if t:
            finals[t["event"]] += 1
            if t["event"] == "error":
                codes[t.get("code")] += 1
        # progress 1..k in order, each once; for complete, k == total
        prog = [e for e in r["events"] if e["event"] == "progress"]
        steps = [e.get("step") for e in prog]
        if steps != list(range(1, len(steps) + 1)):
            r["problems"].append(f"progress steps {steps}")
        total = prog[0].get("total") if prog else None
        nterm = sum(1 for e in r["events"] if e["event"] in TERMINAL)
        if t and nterm != 1:
            r["problems"].append(f"{nterm} terminal events")
        if t and t["event"] == "complete":
            if total != r["steps"] or len(steps) != total:
                r["problems"].append(f"complete after {len(steps)} of {total} progress events (asked {r['steps']})")
            if not t.get("image_len") or t.get("width") != a.size:
                r["problems"].append(f"complete without its {a.size}x{a.size} image")
        if t and t["event"] == "error" and t.get("code") not in OK_ERRORS:
            r["problems"].append(f"error {t.get('code')}")
        # ids: increasing (checked as they came), 1..terminal, gaps only
        # where a preview was superseded
        if t and t["id"] is not None:
            got = [e["id"] for e in r["events"] if e["id"] is not None]
            missing = sorted(set(range(1, t["id"] + 1)) - set(got))
            iv = a.preview_interval
            may = len([s for s in range(1, len(steps) + 1) if iv and s % iv == 0 and s < (total or 0)])
            shown = sum(1 for e in r["events"] if e["event"] == "preview")
            if len(missing) > may - shown or t["id"] != len(steps) + shown + len(missing) + 1:
                r["problems"].append(f"ids {got}: missing {missing}, at most {may - shown} superseded previews")
            r["missing_previews"] = len(missing)
        st = r["status"]
        if t and st:
            want = {"complete": "done", "error": "failed"}[t["event"]]
            if st.get("state") != want or st.get("last_event_id") != t["id"]:
                r["problems"].append(f"status {st.get('state')} last_event_id {st.get('last_event_id')} "
                                     f"against the stream's {t['event']} {t['id']}")
            if t["event"] == "error" and (st.get("error") or {}).get("code") != t.get("code"):
                r["problems"].append(f"status error {st.get('error')}")
        if r["id"] and starts[r["id"]] > 1:
            r["problems"].append(f"the engine started it {starts[r['id']]} times")
        if r["id"] and t and t["event"] == "complete" and starts[r["id"]] != 1:
            r["problems"].append(f"complete, but the engine log shows {starts[r['id']]} starts")
        if r["problems"]:
            bad.append(r)

    # crashed/stopped jobs: running at a kill, one per kill at most
    kills = [c for c in soak.chaos if c["kind"] == "engine_kill" and c.get("pid")]
    restarts = [c for c in soak.chaos if c["kind"] == "restart"]
    used = collections.Counter()
    for r in jobs:
        t = r["terminal"]
        if not t or t["event"] != "error" or t.get("code") not in OK_ERRORS:
            continue
        st = r["status"] or {}
        s0, s1 = rfc3339(st.get("started")), rfc3339(st.get("finished"))
        windows = kills if t["code"] == "engine_crashed" else restarts
        hit = None
        for i, c in enumerate(windows):
            if s0 is not None and s1 is not None and s0 <= c["t"] + 0.05 and s1 >= c["t"] - 0.05:
                hit = i
        if hit is None:
            r["problems"].append(f"{t['code']} but it ran {st.get('started')}..{st.get('finished')}, "
                                 f"not across a {'kill' if t['code'] == 'engine_crashed' else 'stop'}")
            if r not in bad:
                bad.append(r)
        else:
            used[(t["code"], hit)] += 1
    multi = [k for k, v in used.items() if v > 1]

    n = a.jobs
    accepted = len(ids)
    ended = sum(1 for r in jobs if r["terminal"])
    ok(len(jobs) == n and accepted == n, f"all {n} jobs accepted ({accepted}; retried "
       f"{sum(r['submit_tries'] - 1 for r in jobs)} submissions)")
    ok(ended == n and not any("no complete" in p for r in jobs for p in r["problems"]),
       f"every job ended with complete or error: {ended} of {n} (none lost)")
    ok(not bad, f"every job's stream is whole: events 1..last, no duplicates, progress 1..steps, "
       f"complete with its image, status agrees ({len(bad)} bad)")
    for r in bad[:10]:
        res.append("DIAG\t" + f"job {r['k']} {r['id']}: {'; '.join(r['problems'])[:400]} "
                   f"events {[(e['id'], e['event']) for e in r['events']][:20]}")
    ok(finals["complete"] + sum(codes.values()) == n and set(codes) <= set(OK_ERRORS),
       f"errors only engine_crashed/engine_stopped: {dict(codes)}")
    ok(not multi and finals["complete"] >= n - len(kills) - len(restarts),
       f"engine_crashed/engine_stopped only for the job running at a kill/stop, one each at most "
       f"({codes.get('engine_crashed', 0)} crashed over {len(kills)} kills, "
       f"{codes.get('engine_stopped', 0)} stopped over {len(restarts)} stop)")
    logged = sum(int(x) for x in re.findall(r"engine killed by signal 9 \(Killed\); (\d+) running job", englog))
    ok(logged == codes.get("engine_crashed", 0),
       f"the supervisor failed as many running jobs at the kills as streams saw engine_crashed "
       f"({logged} logged, {codes.get('engine_crashed', 0)} seen)")
    twice = {j: c for j, c in starts.items() if c > 1}
    ok(not twice, f"no job ran twice (engine log: {len(starts)} starts, {len(twice)} repeated)")
    orphans = [j for j in starts if j not in set(ids)]
    res.append("DIAG\t" + f"orphans (jobs the engine ran that no worker followed): {len(orphans)}; "
               f"submissions without a clear answer: {sum(r['ambiguous_submits'] for r in jobs)}")
    drops = collections.Counter(re.sub(r"\[Errno \d+\] ", "", d) for r in jobs for d in r["drops"])
    stalls = sum(v for k, v in drops.items() if k.startswith("silent"))
    ok(stalls == 0, f"no stream went silent for 10 s (keep-alives every second): {stalls}")
    m = re.findall(r"re-opened job ring \S+: (\d+) queued job\(s\)", englog)
    kept_queued = [int(x) for x in m]
    reconn = [r for r in jobs if r["reconnects"]]
    ok(all(not r["problems"] for r in reconn),
       f"each of the {len(reconn)} streams that reconnected with Last-Event-ID saw every event "
       f"({sum(r['reconnects'] for r in jobs)} reconnections)")
    kinds = collections.Counter(c["kind"] for c in soak.chaos)
    if not a.no_chaos:
        ok(kinds["child_kill"] >= 3 and kinds["engine_kill"] >= 2 and kinds["hup"] >= 2 and kinds["restart"] == 1,
           f"chaos ran: {dict(kinds)}")
    rec = soak.recovery
    ok(all(x is not None and x < 5.0 for x in rec),
       f"the engine was back (/ready 200, new engine) within 5 s each time: "
       f"{['%.2f' % x if x is not None else 'never' for x in rec]}")
    ok(quiet, "after the soak the pool settled: its children, idle, one thread each, no stream, engine ready")
    # descriptors: master the same, children and nginx workers not above
    # the baseline, the engine the same
    tol = 2
    b_ = {k: max(d["fds"] for d in v) for k, v in dict(before, **soak.engine_baseline).items()}
    f_ = {k: max(d["fds"] for d in v) for k, v in after.items()}
    fd_ok = all(f_.get(k, 0) <= b_.get(k, 0) + tol for k in b_)
    ok(fd_ok, f"no descriptor leak (most fds before -> after, the engine's since the restart, tolerance {tol}): "
       + ", ".join(f"{k} {b_.get(k)}->{f_.get(k)}" for k in sorted(b_)))
    zomb = [(k, d["pid"]) for k, v in after.items() for d in v if d["state"] in ("Z", "X")]
    counts = {k: len(v) for k, v in after.items()}
    ok(not zomb and counts.get("pool child") == a.max_children and counts.get("engine") == 1
       and counts.get("engine supervisor") == 1,
       f"no zombie or extra process: {counts}")
    ring = "/dev/shm" + a.ring
    foreign = sorted({s for v in list(before.values()) + list(after.values()) for d in v for s in d["shm"]
                      if s != ring})
    ok(not foreign, f"every process holds only the ring {ring} in /dev/shm (else: {foreign})")
    ok(stop_s is not None, f"the engine stops at the end (SIGTERM): {stop_s if stop_s is None else round(stop_s, 2)} s")

    rec_ok = [x for x in rec if x is not None]
    fig = {
        "jobs": n, "accepted": accepted, "complete": finals["complete"], "errors": dict(codes),
        "bad_jobs": len(bad), "reconnections": sum(r["reconnects"] for r in jobs),
        "jobs_reconnected": len(reconn),
        "superseded_previews_skipped": sum(r.get("missing_previews", 0) for r in jobs),
        "submit_retries": dict(sum((collections.Counter(r["submit_codes"]) for r in jobs), collections.Counter())),
        "stream_answers_not_200": dict(sum((collections.Counter(r["stream_http"]) for r in jobs),
                                           collections.Counter())),
        "stream_drops": dict(drops), "queued_jobs_kept_by_restart": kept_queued,
        "orphans": len(orphans), "engine_starts_logged": len(starts),
        "chaos": dict(kinds),
        "engine_recovery_s": {"n": len(rec), "max": round(max(rec_ok), 3) if rec_ok else None,
                              "mean": round(sum(rec_ok) / len(rec_ok), 3) if rec_ok else None},
        "restart": [{k: (round(v, 3) if isinstance(v, float) and k != "t" else v) for k, v in c.items()
                     if k not in ("t", "t_gone", "t_start")} for c in restarts],
        "fds_before": b_, "fds_after": f_, "fds_max_during": dict(soak.fd_max),
        "processes_seen": len(soak.pids), "duration_s": round(duration, 1),
        "jobs_per_s": round(n / duration, 2) if duration else None,
        "seed": a.seed,
    }
    return res, fig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pool-pid", type=int, required=True)
    ap.add_argument("--nginx-pid", type=int, required=True)
    ap.add_argument("--engine-pidfile", required=True)
    ap.add_argument("--engine-cmd", required=True, help="JSON list: the supervisor's command line")
    ap.add_argument("--engine-log", required=True)
    ap.add_argument("--ring", required=True)
    ap.add_argument("--max-children", type=int, required=True)
    ap.add_argument("--preview-interval", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--job-timeout", type=float, default=120.0)
    ap.add_argument("--deadline", type=float, default=None, help="seconds for all jobs (default: 120 + 2 a job)")
    ap.add_argument("--stop-limit", type=float, default=30.0)
    ap.add_argument("--no-chaos", action="store_true")
    ap.add_argument("--results", required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
    if a.deadline is None:
        a.deadline = 120.0 + 2.0 * a.jobs
    soak = Soak(a)
    before, after, quiet, duration, stop_s = soak.run()
    res, fig = check(soak, before, after, quiet, duration, stop_s)
    res = ["FAIL\t" + f for f in soak.fails] + res
    with open(a.results, "w") as f:
        f.write("\n".join(res) + "\n")
    with open(a.results + ".pids", "w") as f:
        for pid, (st, what) in sorted(soak.pids.items()):
            f.write(f"{pid} {st} {what}\n")
    with open(a.report, "w") as f:
        json.dump({"figures": fig, "chaos": soak.chaos,
                   "jobs": [{k: v for k, v in r.items() if k != "events"} |
                            {"events": [(e["id"], e["event"]) for e in r["events"]]} for r in soak.jobs]},
                  f, indent=1)
    print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
