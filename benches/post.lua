-- post.lua — wrk script: POST one signed WeChat text message, the same for every target.
-- The signed query string (signature, timestamp, nonce, openid) is in the URL given to wrk;
-- the body comes from $BENCH_BODY_FILE (written by run.sh). done() prints one machine-readable
-- line that run.sh parses (latencies in microseconds).
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "text/xml"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
