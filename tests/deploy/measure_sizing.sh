#!/usr/bin/env bash
# Measures what the Kubernetes resources of the sidecar are sized from
# (deploy/kubernetes/base/deployment.yaml): resident memory idle and under
# load, and CPU per request, of the release binary in front of a local fake
# Truedat. Not part of CI (about three minutes plus the build; wants a quiet
# machine); run it by hand after a change that may move the figures:
#
#   bash tests/deploy/measure_sizing.sh         # builds the release binary
#   BIN=path/to/truedat-auth-proxy bash tests/deploy/measure_sizing.sh
#
# It builds what the image ships (x86_64-unknown-linux-musl, static) when
# that target and musl-gcc are installed, else the glibc build, and says so.
#
# The fake (python3's ThreadingHTTPServer) answers POST /api/sessions with
# 201 and a JWT expiring in 2100, and every other request with 200 and a
# 1 KiB JSON body (it is slower than the proxy: requests/s are its limit,
# not the proxy's). Load comes from wrk (apt-get install wrk): GETs at CONNS
# keep-alive connections for SECS seconds, then 1 MiB POSTs at UPLOAD_CONNS
# connections, then a sequential curl loop (a legacy tool's pace). Memory is
# read from /proc/PID/status (VmRSS; VmHWM = peak RSS), CPU from
# /proc/PID/stat (utime + stime). Everything runs on 127.0.0.1 and is
# stopped on exit.
#
# Settings: BIN, SECS (30), CONNS ("1 16 64"), UPLOAD_CONNS (16),
# SEQUENTIAL (2000 requests).

set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECS=${SECS:-30}
CONNS=${CONNS:-1 16 64}
SEQUENTIAL=${SEQUENTIAL:-2000}
UPLOAD_CONNS=${UPLOAD_CONNS:-16}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

if [[ -z ${BIN:-} ]]; then
    # The image's build (static musl) when that target is installed, since
    # musl's allocator gives other figures than glibc's.
    if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && command -v musl-gcc >/dev/null; then
        (cd "$REPO" && cargo build --release --locked --quiet --target x86_64-unknown-linux-musl)
        BIN=$REPO/target/x86_64-unknown-linux-musl/release/truedat-auth-proxy
    else
        echo "note: measuring the glibc build; for the image's static musl build run" \
            "rustup target add x86_64-unknown-linux-musl and apt-get install musl-tools" >&2
        (cd "$REPO" && cargo build --release --locked --quiet)
        BIN=$REPO/target/release/truedat-auth-proxy
    fi
fi
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- the fake --
UPSTREAM_PORT=$(free_port)
cat >"$TMP/fake.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "x.eyJleHAiOjQxMDI0NDQ4MDB9.y"  # {"exp":4102444800}: never renewed during the run
BODY = json.dumps({"data": [{"id": i, "name": "structure %d" % i} for i in range(30)]}).encode()

class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else Nagle + delayed ACK cost 40 ms per answer
    def log_message(self, *args):
        pass
    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path == "/api/sessions":
            self.answer(201, json.dumps({"token": TOKEN}).encode())
        else:
            self.answer(200, BODY)
    def do_GET(self):
        self.answer(200, BODY)
    def do_DELETE(self):
        self.answer(204, b"")

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 stalls connects under load
    def handle_error(self, request, client_address):
        pass  # a client that went away mid-answer is no news here

Server(("127.0.0.1", int(sys.argv[1])), Fake).serve_forever()
PY
python3 "$TMP/fake.py" "$UPSTREAM_PORT" &
PIDS+=($!)

# --------------------------------------------------------------- the proxy --
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
printf 'not-a-real-password\n' >"$TMP/password"
TRUEDAT_PROXY_LISTEN__ADDRESS=127.0.0.1:$PROXY_PORT \
TRUEDAT_PROXY_ADMIN__ADDRESS=127.0.0.1:$ADMIN_PORT \
TRUEDAT_PROXY_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
TRUEDAT_PROXY_CREDENTIALS__USER_NAME=svc-sizing \
TRUEDAT_PROXY_CREDENTIALS__PASSWORD_FILE=$TMP/password \
TRUEDAT_PROXY_LOG__LEVEL=warn \
    "$BIN" >"$TMP/proxy.log" 2>&1 &
PROXY=$!
PIDS+=("$PROXY")

for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" || { cat "$TMP/proxy.log"; exit 1; }

kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PROXY/status"; }
ticks() { awk '{ print $14 + $15 }' "/proc/$PROXY/stat"; }
HZ=$(getconf CLK_TCK)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "binary: $BIN ($(stat -c %s "$BIN") bytes; $(file -b "$BIN" | cut -d, -f1-2))"
echo "machine: $(nproc) cores; $(uname -r)"
echo
echo "| phase | requests/s | CPU (cores) | CPU ms per 1000 requests | VmRSS MiB | VmHWM MiB |"
echo "|---|---|---|---|---|---|"
echo "| idle after login | - | - | - | $(mib "$(kib VmRSS)") | $(mib "$(kib VmHWM)") |"

phase() { # name requests seconds ticks_before ticks_after
    local cpu_s
    cpu_s=$(awk -v t=$(($5 - $4)) -v hz="$HZ" 'BEGIN { print t / hz }')
    awk -v name="$1" -v n="$2" -v s="$3" -v c="$cpu_s" -v rss="$(kib VmRSS)" -v hwm="$(kib VmHWM)" 'BEGIN {
        printf "| %s | %.0f | %.2f | %.1f | %.1f | %.1f |\n", name, n / s, c / s, n ? 1000000 * c / n : 0, rss / 1024, hwm / 1024 }'
}

for conns in $CONNS; do
    before=$(ticks)
    start=$EPOCHREALTIME
    wrk -t "$((conns < 2 ? 1 : 2))" -c "$conns" -d "${SECS}s" --latency \
        "http://127.0.0.1:$PROXY_PORT/api/data_structures?page=1" >"$TMP/wrk.txt"
    end=$EPOCHREALTIME
    after=$(ticks)
    requests=$(awk '/requests in/ { print $1 }' "$TMP/wrk.txt")
    if grep -qE "Non-2xx|Socket errors" "$TMP/wrk.txt"; then grep -E "Non-2xx|Socket errors" "$TMP/wrk.txt" >&2; fi
    phase "wrk, $conns connections" "$requests" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$before" "$after"
done

# Uploads: each request body up to proxy.replay_body_limit (1 MiB) is kept
# in memory until the answer, for a replay after a 401: the memory worst case.
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
before=$(ticks)
start=$EPOCHREALTIME
wrk -t 2 -c "$UPLOAD_CONNS" -d "${SECS}s" -s "$TMP/post.lua" \
    "http://127.0.0.1:$PROXY_PORT/api/uploads" >"$TMP/wrk.txt"
end=$EPOCHREALTIME
after=$(ticks)
requests=$(awk '/requests in/ { print $1 }' "$TMP/wrk.txt")
if grep -qE "Non-2xx|Socket errors" "$TMP/wrk.txt"; then grep -E "Non-2xx|Socket errors" "$TMP/wrk.txt" >&2; fi
phase "wrk POST 1 MiB, $UPLOAD_CONNS connections" "$requests" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$before" "$after"

before=$(ticks)
start=$EPOCHREALTIME
for _ in $(seq "$SEQUENTIAL"); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/api/data_structures?page=1"
done
end=$EPOCHREALTIME
after=$(ticks)
phase "curl loop, sequential" "$SEQUENTIAL" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$before" "$after"

sleep 5
echo "| idle 5 s after the load | - | - | - | $(mib "$(kib VmRSS)") | $(mib "$(kib VmHWM)") |"
echo
echo "open descriptors at the end: $(find "/proc/$PROXY/fd" -mindepth 1 -maxdepth 1 | wc -l); threads: $(awk '/^Threads:/ { print $2 }' "/proc/$PROXY/status")"
