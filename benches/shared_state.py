#!/usr/bin/env python3
"""shared_state.py — what Redis (`shared_state`) adds per forwarded message, through nginx.

  python3 benches/shared_state.py            (needs nginx, redis-server, valgrind for Ir)

The responder (WEIXIN_FCGI_BIN, default target/x86_64-unknown-linux-gnu/release/weixin-fcgi,
built with `cargo release-static --features redis`) runs behind a real nginx that includes
nginx/weixin.conf verbatim (upstream keepalive 8), with one `forward` rule to a local backend
(a Python HTTP server answering {"type":"text","msg":"ok"} at once). Three configs:

  memory   no shared_state: the retry table in this process only
  tcp      shared_state = "redis://127.0.0.1:PORT/0"   (a redis-server of its own, no persistence)
  unix     shared_state = "redis+unix:///…/redis.sock"

Each message has its own MsgId, so every forwarded message claims its key in Redis (SET NX PX)
and stores the answer (SET PX) — the two round trips a forwarded message costs on the claims
thread. Every signed POST, template replies included, also checks the replay cache, which with
shared_state is in Redis: one round trip (two for a retry) on the FastCGI worker.

Per config and round: 200 warm-up requests, then N sequential forwarded messages and N template
replies on one keep-alive connection (wall-clock latency each), then VmRSS/VmHWM of the
responder. Configs are interleaved over ROUNDS rounds; the table gives medians over rounds.

First, examples/claim_latency times the two store calls alone (5 × N claim + answer pairs
per store: memory, Redis over TCP, Redis over the Unix socket).

Instructions (BENCH_CALLGRIND=1, the default): the responder under valgrind --tool=callgrind,
Ir/request = (Ir after N2 requests − Ir after N1) / (N2 − N1), memory vs tcp, for a
forwarded message and for a template reply.

Environment: BENCH_N=2000 BENCH_ROUNDS=3 BENCH_CALLGRIND=1 BENCH_CG_N1=100 BENCH_CG_N2=600
Everything listens on 127.0.0.1 or in a temp dir; every loop is bounded in count and time."""
import hashlib
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get(
    "WEIXIN_FCGI_BIN", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/weixin-fcgi")
)
N = int(os.environ.get("BENCH_N", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CALLGRIND = os.environ.get("BENCH_CALLGRIND", "1") == "1"
CG_N1 = int(os.environ.get("BENCH_CG_N1", "100"))
CG_N2 = int(os.environ.get("BENCH_CG_N2", "600"))
TOKEN = "benchtoken"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

BACKEND = r'''
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"type":"text","msg":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(cond, seconds, what):
    until = time.time() + seconds
    while time.time() < until:
        if cond():
            return
        time.sleep(0.05)
    sys.exit(f"shared_state.py: {what} did not come up")


def connects(addr):
    try:
        fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        with socket.socket(fam) as s:
            s.connect(addr)
        return True
    except OSError:
        return False


def signed_query():
    # A fresh nonce each time, as WeChat sends: the replay cache refuses a signature reused.
    ts, nonce = str(int(time.time())), str(int.from_bytes(os.urandom(6), "big"))
    sig = hashlib.sha1("".join(sorted([TOKEN, ts, nonce])).encode()).hexdigest()
    return f"/weixin?signature={sig}&timestamp={ts}&nonce={nonce}"


MSG_ID = [9_000_000_000]


def message(content):
    MSG_ID[0] += 1
    return (
        "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[oBench]]>"
        f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]>"
        f"</MsgType><Content><![CDATA[{content}]]></Content><MsgId>{MSG_ID[0]}</MsgId></xml>"
    ).encode()


def requests(port, n, content="hello"):
    """n sequential messages on one keep-alive connection: latencies in µs. "hello" is
    forwarded to the backend (answer "ok"), "static" answered by a template ("ok" too)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        body = message(content)
        t0 = time.perf_counter()
        conn.request("POST", signed_query(), body, {"Content-Type": "text/xml"})
        resp = conn.getresponse()
        data = resp.read()
        out.append((time.perf_counter() - t0) * 1e6)
        if resp.status != 200 or b"<Content><![CDATA[ok]]></Content>" not in data:
            sys.exit(f"shared_state.py: bad answer {resp.status} {data[:200]!r}")
    conn.close()
    return out


def rss(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"shared_state.py: no binary at {BIN}; run `cargo release-static --features redis`")
    tmp = tempfile.mkdtemp(prefix="wxfcgi-shared-bench-")
    procs = Procs()
    try:
        run(tmp, procs)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp, procs):
    backend_port, redis_port, nginx_port = free_port(), free_port(), free_port()
    procs.start([sys.executable, "-c", BACKEND, str(backend_port)])
    wait(lambda: connects(("127.0.0.1", backend_port)), 10, "backend")
    redis_sock = os.path.join(tmp, "redis.sock")
    procs.start(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--unixsocket", redis_sock,
         "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", tmp,
         "--logfile", os.path.join(tmp, "redis.log")],
        stdout=subprocess.DEVNULL,
    )
    wait(lambda: connects(("127.0.0.1", redis_port)), 10, "redis-server")

    sock = os.path.join(tmp, "weixin.sock")
    for sub in ("logs", "tmp"):
        os.makedirs(os.path.join(tmp, "nginx", sub), exist_ok=True)
    shutil.copy("/etc/nginx/fastcgi_params", os.path.join(tmp, "nginx", "fastcgi_params"))
    user = "user root;" if os.getuid() == 0 else ""
    # The shipped snippet verbatim but for its log directory, with the shipped log_format (as the
    # tests' harness does).
    snippet = os.path.join(tmp, "nginx", "weixin.conf")
    with open(os.path.join(ROOT, "nginx/weixin.conf")) as f:
        text = f.read().replace("/var/log/nginx/", f"{tmp}/nginx/logs/")
    with open(snippet, "w") as f:
        f.write(text)
    with open(os.path.join(ROOT, "nginx/weixin-upstream.conf")) as f:
        upstream_conf = f.read()
    start = upstream_conf.find("\nlog_format ")
    log_format = upstream_conf[start:upstream_conf.index(";", start) + 1] if start >= 0 else ""
    nconf = os.path.join(tmp, "nginx", "nginx.conf")
    with open(nconf, "w") as f:
        f.write(f"""{user}
worker_processes 1; daemon off; master_process off; pid {tmp}/nginx/nginx.pid;
error_log {tmp}/nginx/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  {log_format}
  client_body_temp_path {tmp}/nginx/tmp/body; fastcgi_temp_path {tmp}/nginx/tmp/fcgi;
  proxy_temp_path {tmp}/nginx/tmp/proxy; uwsgi_temp_path {tmp}/nginx/tmp/uwsgi;
  scgi_temp_path {tmp}/nginx/tmp/scgi;
  upstream weixin_fcgi {{ server unix:{sock}; keepalive 8; keepalive_timeout 4s; }}
  server {{ listen 127.0.0.1:{nginx_port}; include {snippet}; }}
}}
""")
    procs.start([NGINX, "-p", os.path.join(tmp, "nginx"), "-c", nconf], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
    wait(lambda: connects(("127.0.0.1", nginx_port)), 10, "nginx")

    configs = {
        "memory": None,
        "tcp": f"redis://127.0.0.1:{redis_port}/0",
        "unix": f"redis+unix://{redis_sock}",
    }

    def write_config(name):
        path = os.path.join(tmp, f"{name}.toml")
        shared = configs[name.removeprefix("cg-")]
        with open(path, "w") as f:
            if shared:
                f.write(f'shared_state = "{shared}"\n')
            f.write(f"""[[account]]
name = "bench"
path = "/weixin"
token = "{TOKEN}"
[[account.rule]]
name = "static"
content = "static"
reply = {{ type = "text", content = "ok" }}
[[account.rule]]
name = "bot"
reply = {{ type = "forward", url = "http://127.0.0.1:{backend_port}/b", timeout_ms = 4500 }}
""")
        return path

    def start_responder(name, prefix=()):
        if os.path.exists(sock):
            os.unlink(sock)
        log = open(os.path.join(tmp, f"{name}.log"), "ab")
        p = procs.start([*prefix, BIN, "--config", write_config(name), "--listen", sock],
                        stdout=subprocess.DEVNULL, stderr=log)
        wait(lambda: connects(sock), 60, f"weixin-fcgi ({name})")
        return p

    # The store calls alone: claim + answer, as a forward thread makes them.
    example = os.path.join(ROOT, "target/release/examples/claim_latency")
    subprocess.run(["cargo", "build", "--quiet", "--release", "--features", "redis", "--example",
                    "claim_latency"], cwd=ROOT, check=True, timeout=1800)
    subprocess.run([example, str(5 * N), configs["tcp"], configs["unix"]], check=True, timeout=600)
    print()

    keys = ("median", "mean", "p99", "static", "rss", "hwm")
    results = {name: {k: [] for k in keys} for name in configs}
    for r in range(ROUNDS):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            p = start_responder(name)
            requests(nginx_port, 200)
            lat = sorted(requests(nginx_port, N))
            # Template replies: no backend; with shared_state the replay cache's round trip.
            static = requests(nginx_port, N, "static")
            vm, hwm = rss(p.pid)
            procs.stop(p)
            res = results[name]
            res["median"].append(statistics.median(lat))
            res["mean"].append(statistics.fmean(lat))
            res["p99"].append(lat[int(len(lat) * 0.99) - 1])
            res["static"].append(statistics.median(static))
            res["rss"].append(vm)
            res["hwm"].append(hwm)
            print(f"round {r + 1} {name:6}: forwarded median {res['median'][-1]:7.0f} µs, mean "
                  f"{res['mean'][-1]:7.0f} µs, p99 {res['p99'][-1]:7.0f} µs; template median "
                  f"{res['static'][-1]:5.0f} µs; VmRSS {vm} kB, VmHWM {hwm} kB", flush=True)

    print(f"\nforwarded text message through nginx, {N} sequential requests on one keep-alive "
          f"connection, median of {ROUNDS} rounds:")
    print("| shared_state | forwarded median µs | mean µs | p99 µs | template median µs | VmRSS kB | VmHWM kB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = statistics.median(results["memory"]["median"])
    static_base = statistics.median(results["memory"]["static"])
    for name, res in results.items():
        med = statistics.median(res["median"])
        static = statistics.median(res["static"])
        extra = "" if name == "memory" else f" (+{med - base:.0f})"
        static_extra = "" if name == "memory" else f" (+{static - static_base:.0f})"
        print(f"| {name} | {med:.0f}{extra} | {statistics.median(res['mean']):.0f} | "
              f"{statistics.median(res['p99']):.0f} | {static:.0f}{static_extra} | "
              f"{statistics.median(res['rss']):.0f} | {statistics.median(res['hwm']):.0f} |")

    if not CALLGRIND:
        return
    if not shutil.which("valgrind"):
        print("\ncallgrind: SKIP (valgrind not installed)")
        return
    print(f"\ninstructions per request (callgrind, (Ir({CG_N2}) - Ir({CG_N1})) / {CG_N2 - CG_N1}):")
    print("| request | shared_state | Ir/request |\n|---|---|---:|")
    for content, kind in (("hello", "forwarded"), ("static", "template")):
        for name in ("memory", "tcp"):
            out = os.path.join(tmp, f"cg-{name}-{kind}.out")
            p = start_responder(f"cg-{name}", ("valgrind", "--tool=callgrind",
                                               f"--callgrind-out-file={out}"))
            for n in (CG_N1, CG_N2 - CG_N1):
                requests(nginx_port, n, content)
                subprocess.run(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
            procs.stop(p)
            with open(f"{out}.2") as f:
                ir = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
            print(f"| {kind} | {name} | {ir // (CG_N2 - CG_N1)} |", flush=True)


if __name__ == "__main__":
    main()
