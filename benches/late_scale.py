#!/usr/bin/env python3
"""late_scale.py — memory and static-rule latency while many slow backend calls are in flight.

  late_scale.py BIN [--mode off|next_message] [--calls 256] [--delay 30] [--static 3000]

Starts, under a temporary directory, everything on 127.0.0.1 only:
  - a slow go-wx-gateway backend (this script, `backend` mode: a threaded HTTP server that
    answers every POST after --delay seconds);
  - weixin-fcgi (BIN) with forward_slots = --calls, a static rule (Content "static") and a
    forward rule for every other text, with late = --mode (off: today's behaviour, the call
    outlives WeChat's attempts through timeout_ms);
  - a real nginx (1 worker) that includes the repository's nginx/weixin.conf verbatim.
Then, through nginx:
  1. --calls signed text messages from distinct users, all at once (one attempt each);
  2. once the backend holds every call, --static signed "static" messages from 4 clients,
     each timed (bounded in count and by a 60 s limit);
  3. waits until every backend call has finished.
VmRSS of weixin-fcgi is sampled every 50 ms throughout; the peak is max(samples, VmHWM).
Prints one block of figures (KiB and MiB, milliseconds) and a machine-readable line:
  LATE_SCALE mode=… calls=… idle_kib=… peak_kib=… inflight_kib=… static_n=… static_err=…
             p50_ms=… p99_ms=… max_ms=… backend_max_concurrent=…
"""
import argparse
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "benchtoken"


def backend_main(port, delay):
    """A go-wx-gateway backend that answers after `delay` s; GET /status gives the counters."""
    lock = threading.Lock()
    state = {"active": 0, "max": 0, "calls": 0}

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            with lock:
                body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(n)
            with lock:
                state["active"] += 1
                state["calls"] += 1
                state["max"] = max(state["max"], state["active"])
            try:
                time.sleep(delay)
                body = json.dumps({"type": "text", "msg": "slow answer"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass
            finally:
                with lock:
                    state["active"] -= 1

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        request_queue_size = 2048

    S(("127.0.0.1", port), H).serve_forever()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def signed_query():
    ts = str(int(time.time()))
    nonce = os.urandom(6).hex()
    sig = hashlib.sha1("".join(sorted([TOKEN, ts, nonce])).encode()).hexdigest()
    return f"signature={sig}&timestamp={ts}&nonce={nonce}"


def message(user, content, msg_id):
    return (
        f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{user}]]>"
        f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]>"
        f"</MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    ).encode()


def post(port, body, timeout=40):
    """One POST through nginx; returns (status, seconds)."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        req = (
            f"POST /weixin?{signed_query()} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.monotonic() - t0, data


def get_json(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    finally:
        s.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def wait_connect(port=None, path=None, limit=10):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if path:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
            else:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.close()
            return True
        except OSError:
            time.sleep(0.05)
    return False



def static_load(a, nport, seconds, first_id):
    """Paced static-rule requests from 4 clients for `seconds`; returns (latencies, errors)."""
    lat = []
    errors = [0]
    lat_lock = threading.Lock()
    counter = iter(range(a.static_max))
    deadline = time.monotonic() + seconds

    def static_client():
        # Paced (one request every --static-interval-ms per client), not closed-loop: the
        # figure is the latency of an ordinary request while the slow calls are held, not
        # of a CPU saturated by the load generator itself.
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            next_at += a.static_interval_ms / 1000
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with lat_lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                st, dt, data = post(nport, message("oStatic", "static", first_id + i), timeout=10)
                ok = st == 200 and b"static answer" in data
            except OSError:
                ok, dt = False, 0
            with lat_lock:
                if ok:
                    lat.append(dt)
                else:
                    errors[0] += 1

    clients = [threading.Thread(target=static_client) for _ in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    lat.sort()
    return lat, errors[0]


def pct(lat, p):
    return lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--mode", default="next_message", choices=["off", "next_message"])
    ap.add_argument("--calls", type=int, default=256)
    ap.add_argument("--delay", type=float, default=30.0)
    ap.add_argument("--static-seconds", type=float, default=20.0)
    ap.add_argument("--static-max", type=int, default=200000)
    ap.add_argument("--static-interval-ms", type=float, default=5.0)
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    a = ap.parse_args()
    assert 1 <= a.calls <= 256 and 1 <= a.delay <= 55
    assert 1 <= a.static_seconds <= min(60, a.delay) and 1 <= a.static_max <= 1_000_000

    work = tempfile.mkdtemp(prefix="late-scale-")
    procs = []
    try:
        bport, nport = free_port(), free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "backend", str(bport), str(a.delay)],
                                      start_new_session=True))
        assert wait_connect(port=bport), "backend did not start"

        sock = os.path.join(work, "wx.sock")
        timeout_ms = int((a.delay + 10) * 1000)
        # off: the call outlives WeChat's attempts through timeout_ms, as before late existed.
        late = f"timeout_ms = {timeout_ms}" if a.mode == "off" else f'late = "{a.mode}", late_timeout_ms = {timeout_ms}'
        conf = f"""
forward_slots = {a.calls}
max_conns = 1024
timestamp_window = 0
log_level = "warn"

[[account]]
name = "bench"
path = "/weixin"
token = "{TOKEN}"

[[account.rule]]
name = "static"
content = "static"
reply = {{ type = "text", content = "static answer" }}

[[account.rule]]
name = "slow"
msg_type = "text"
reply = {{ type = "forward", url = "http://127.0.0.1:{bport}/wx", {late} }}
"""
        with open(os.path.join(work, "wx.toml"), "w") as f:
            f.write(conf)
        wx_log = open(os.path.join(work, "wx.log"), "wb")
        wx = subprocess.Popen([a.bin, "--config", os.path.join(work, "wx.toml"), "--listen", sock],
                              stdout=subprocess.DEVNULL, stderr=wx_log, start_new_session=True)
        procs.append(wx)
        assert wait_connect(path=sock), "weixin-fcgi did not start: " + open(wx_log.name).read()

        ndir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(ndir, "tmp"))
        shutil.copy("/etc/nginx/fastcgi_params", ndir)
        user = "user root;" if os.geteuid() == 0 else ""
        with open(os.path.join(ndir, "nginx.conf"), "w") as f:
            f.write(f"""{user}
worker_processes 1;
daemon off;
master_process off;
pid {ndir}/nginx.pid;
error_log {ndir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {ndir}/tmp/body;
    fastcgi_temp_path {ndir}/tmp/fastcgi;
    proxy_temp_path {ndir}/tmp/proxy;
    uwsgi_temp_path {ndir}/tmp/uwsgi;
    scgi_temp_path {ndir}/tmp/scgi;
    upstream weixin_fcgi {{ server unix:{sock}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{nport};
        include {a.repo}/nginx/weixin.conf;
    }}
}}
""")
        procs.append(subprocess.Popen(["/usr/sbin/nginx", "-p", ndir, "-c", os.path.join(ndir, "nginx.conf"),
                                       "-e", os.path.join(ndir, "error.log")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        assert wait_connect(port=nport), "nginx did not start"

        # Warm up: one static request.
        st, _, _ = post(nport, message("oWarm", "static", 1))
        assert st == 200, f"static warm-up answered {st}"
        time.sleep(0.5)
        idle = rss_kib(wx.pid)[0]
        # The same static load with nothing else going on: this machine's own noise floor.
        quiet, quiet_err = static_load(a, nport, min(5.0, a.static_seconds), 10_000_000)

        peak = [0]
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(wx.pid)[0])
                time.sleep(0.05)

        threading.Thread(target=sampler, daemon=True).start()

        slow_status = []
        slow_lock = threading.Lock()

        def slow(i):
            try:
                st, _, _ = post(nport, message(f"oUser{i:04d}", f"question {i}", 10_000 + i), timeout=a.delay + 20)
            except OSError:
                st = 0
            with slow_lock:
                slow_status.append(st)

        t_start = time.monotonic()
        slow_threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(a.calls)]
        for t in slow_threads:
            t.start()
        end = time.monotonic() + 20
        while time.monotonic() < end and get_json(bport, "/status")["active"] < a.calls:
            time.sleep(0.1)
        held = get_json(bport, "/status")["active"]
        inflight = rss_kib(wx.pid)[0]

        lat, errors = static_load(a, nport, a.static_seconds, 20_000_000)
        static_s = time.monotonic() - t_start
        during = get_json(bport, "/status")["active"]
        inflight = max(inflight, rss_kib(wx.pid)[0])

        for t in slow_threads:
            t.join(timeout=max(1, a.delay + 25 - (time.monotonic() - t_start)))
        end = time.monotonic() + 30
        while time.monotonic() < end and get_json(bport, "/status")["active"] > 0:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        rss_end, hwm = rss_kib(wx.pid)
        peak_kib = max(peak[0], hwm)
        status = get_json(bport, "/status")

        codes = {}
        for s in slow_status:
            codes[s] = codes.get(s, 0) + 1
        print(f"mode={a.mode}: {a.calls} backend calls of {a.delay:g} s through nginx, forward_slots={a.calls}")
        print(f"  backend: {status['calls']} calls, {status['max']} at once (held {held} when static load began, {during} when it ended at {static_s:.1f} s)")
        print(f"  slow requests' HTTP status through nginx: {dict(sorted(codes.items()))}")
        print(f"  weixin-fcgi VmRSS: idle {idle} KiB ({idle / 1024:.1f} MiB), with the calls in flight {inflight} KiB ({inflight / 1024:.1f} MiB), "
              f"peak {peak_kib} KiB ({peak_kib / 1024:.1f} MiB), after {rss_end} KiB")
        print(f"  static rule before (nothing in flight): {len(quiet)} ok, {quiet_err} failed; p50 {pct(quiet, 0.5):.2f} ms, "
              f"p99 {pct(quiet, 0.99):.2f} ms, max {quiet[-1] * 1000 if quiet else float('nan'):.2f} ms")
        print(f"  static rule meanwhile: {len(lat)} ok, {errors} failed; p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, max {lat[-1] * 1000 if lat else float('nan'):.2f} ms")
        print(f"LATE_SCALE mode={a.mode} calls={a.calls} delay_s={a.delay:g} idle_kib={idle} inflight_kib={inflight} peak_kib={peak_kib} "
              f"static_n={len(lat)} static_err={errors} p50_ms={pct(lat, 0.5):.3f} p99_ms={pct(lat, 0.99):.3f} "
              f"max_ms={(lat[-1] * 1000 if lat else 0):.3f} quiet_p99_ms={pct(quiet, 0.99):.3f} backend_calls={status['calls']} backend_max_concurrent={status['max']}")
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "backend":
        backend_main(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
