-- wrk script used by every benchmark case (tests/bench/wrk.rs).
--
-- The request is described by environment variables rather than by one
-- script per case, because wrk accepts a single -s script and every case
-- needs the same done() below:
--   BENCH_METHOD      request method (default GET)
--   BENCH_BODY_BYTES  size of a request body of "x" bytes (default 0: none)
--
-- done() prints one line, "BENCH_JSON {...}", so wrk.rs never has to parse
-- wrk's human-readable report (whose units change with magnitude: us, ms, s).

local method = os.getenv("BENCH_METHOD") or "GET"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0") or 0

wrk.method = method
if body_bytes > 0 then
  wrk.body = string.rep("x", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

-- Latencies are microseconds; summary.duration too. errors.status is the
-- counter wrk prints as "Non-2xx or 3xx responses" (statuses above 399);
-- connect/read/write/timeout are its "Socket errors".
function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.6f,"rps":%.2f,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.2f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}\n',
    summary.requests, seconds, summary.requests / seconds, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
