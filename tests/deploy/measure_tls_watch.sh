#!/usr/bin/env bash
# Measures what watching the TLS files (upstream.ca_file, client_cert_file,
# client_key_file: checked every 2 s, see README "TLS material rotation")
# costs an idle proxy: two release binaries, idle after login in front of the
# same local fake Truedat for SECS seconds, one without TLS files (no watch
# task) and one with all three, mounted the Kubernetes way (symlinks through
# a `..data` symlink). CPU time comes from /proc/PID/task/*/schedstat (time
# on CPU in nanoseconds, far finer than the 10 ms ticks of /proc/PID/stat),
# wake-ups from the voluntary context switches in /proc/PID/status. Not part
# of CI; run it by hand (about SECS seconds plus the build):
#
#   bash tests/deploy/measure_tls_watch.sh
#   SECS=300 BIN=target/release/truedat-auth-proxy bash tests/deploy/measure_tls_watch.sh
#
# Needs python3 (the fake) and openssl (the certificates).

set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECS=${SECS:-60}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

if [[ -z ${BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --locked --quiet --bin truedat-auth-proxy)
    BIN=$REPO/target/release/truedat-auth-proxy
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A login that never needs renewing during the run, and 200 for the rest.
UPSTREAM_PORT=$(free_port)
cat >"$TMP/fake.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "x.eyJleHAiOjQxMDI0NDQ4MDB9.y"  # {"exp":4102444800}

class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.answer(201, json.dumps({"token": TOKEN}).encode())
    def do_GET(self):
        self.answer(200, b"{}")
    def do_DELETE(self):
        self.answer(204, b"")

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Fake).serve_forever()
PY
python3 "$TMP/fake.py" "$UPSTREAM_PORT" &
PIDS+=($!)

# TLS files as a mounted Secret: tls.crt -> ..data/tls.crt, ..data -> ..v1.
SECRET=$TMP/secret
mkdir -p "$SECRET/..v1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=svc-proxy \
    -keyout "$SECRET/..v1/tls.key" -out "$SECRET/..v1/tls.crt" 2>/dev/null
cp "$SECRET/..v1/tls.crt" "$SECRET/..v1/ca.crt"
ln -s ..v1 "$SECRET/..data"
for name in tls.crt tls.key ca.crt; do ln -s "..data/$name" "$SECRET/$name"; done
printf 'not-a-real-password\n' >"$TMP/password"

start_proxy() { # name, extra KEY=VALUE environment...
    local name=$1 admin
    shift
    admin=$(free_port)
    env TRUEDAT_PROXY_LISTEN__ADDRESS=127.0.0.1:$(free_port) \
        TRUEDAT_PROXY_ADMIN__ADDRESS=127.0.0.1:$admin \
        TRUEDAT_PROXY_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
        TRUEDAT_PROXY_CREDENTIALS__USER_NAME=svc-measure \
        TRUEDAT_PROXY_CREDENTIALS__PASSWORD_FILE="$TMP/password" \
        TRUEDAT_PROXY_LOG__LEVEL=warn \
        "$@" "$BIN" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    eval "${name}_PID=$!"
    TRUEDAT_PROXY_ADMIN__ADDRESS=127.0.0.1:$admin "$BIN" wait --timeout 20s \
        || { cat "$TMP/$name.log" >&2; exit 1; }
}
start_proxy plain
start_proxy watched \
    TRUEDAT_PROXY_UPSTREAM__CA_FILE="$SECRET/ca.crt" \
    TRUEDAT_PROXY_UPSTREAM__CLIENT_CERT_FILE="$SECRET/tls.crt" \
    TRUEDAT_PROXY_UPSTREAM__CLIENT_KEY_FILE="$SECRET/tls.key"

cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }
wakeups() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ { s += $2 } END { print s }'; }

sleep 3 # past the first checks and the login
declare -A cpu0 wake0
for name in plain watched; do
    pid_var=${name}_PID
    cpu0[$name]=$(cpu_ns "${!pid_var}")
    wake0[$name]=$(wakeups "${!pid_var}")
done
sleep "$SECS"
echo "binary: $BIN; machine: $(nproc) cores; idle for $SECS s after login"
echo
echo "| proxy | CPU over $SECS s | CPU per second | voluntary wake-ups per second |"
echo "|---|---|---|---|"
for name in plain watched; do
    pid_var=${name}_PID
    cpu=$(($(cpu_ns "${!pid_var}") - cpu0[$name]))
    wake=$(($(wakeups "${!pid_var}") - wake0[$name]))
    awk -v n="$name" -v c="$cpu" -v w="$wake" -v s="$SECS" 'BEGIN {
        printf "| %s | %.2f ms | %.1f µs | %.2f |\n", n, c / 1e6, c / 1e3 / s, w / s }'
done
