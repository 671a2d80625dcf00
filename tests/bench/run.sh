#!/usr/bin/env bash
# Side-by-side load benchmark of truedat-auth-proxy (issue "Performance").
#
#   bash tests/bench/run.sh            # full run, about 4 minutes plus the build
#   QUICK=1 bash tests/bench/run.sh    # smoke run, under a minute plus the build
#
# On loopback only, in one run, it starts an upstream (nginx standing in for
# Truedat: login, small JSON, 4 KiB POST, 1 MiB and 1 GiB answers, an upload
# sink), a second nginx configured as a reverse proxy with a static
# Authorization header (what a user would pick instead), and the release
# build of truedat-auth-proxy. Then it measures with wrk, interleaving the
# three paths case by case so that machine noise hits them alike:
#   direct  wrk -> upstream nginx (the limit; wrk sends the bearer itself)
#   nginx   wrk -> nginx reverse proxy -> upstream
#   ours    wrk -> truedat-auth-proxy -> upstream
# and reports requests/s, p50/p99/p99.9, ratios, CPU% of each proxy, RSS,
# time to ready, binary size and a 1 GiB upload/download streaming check.
# Absolute numbers on a shared 2-core machine prove little: read the ratios.
#
# Output: a human-readable report on stdout (Markdown tables) and, in
# OUT_DIR, the same report (.txt) and a JSON summary (.json); both paths are
# printed at the end. Exit status 1 when a check failed: any non-2xx/3xx
# response or socket error through truedat-auth-proxy, a failed sanity or
# streaming check, or a proxy that does not shut down cleanly. The issue's
# targets are reported as PASS/MISS but never fail the run.
#
# Settings (environment variables):
#   QUICK=1            smoke run: DURATION=2s, WARMUP=0, STREAM_SIZE=256M,
#                      STREAM_RUNS=1, READY_RUNS=3
#   DURATION=10s       length of each measured wrk run (whole seconds: wrk's unit)
#   WARMUP=2s          unmeasured wrk run before each measured one (0 to skip)
#   STREAM_SIZE=1G     size of the streamed upload and download (1G, 256M, 64K)
#   STREAM_RUNS=2      each streaming transfer runs this often; the fastest counts
#   READY_RUNS=5       proxy starts timed for "time to ready"
#   NGINX_WORKERS=1    worker_processes of the nginx reverse proxy
#   UPSTREAM_WORKERS=1 worker_processes of the upstream nginx
#   NGINX_KEEPALIVE=64 idle upstream connections nginx keeps (keepalive N)
#   BIN=path           benchmark this binary instead of building target/release
#   OUT_DIR=dir        where reports go (default: target/bench in the repo)
#   BENCH_TMPDIR=dir   parent of the temp dir (default /dev/shm if it has room)
#   KEEP_TMP=1         keep the temp dir (configs, logs, wrk output) at the end
#
# Needs: nginx, wrk, curl, jq, setpriv (util-linux). When one is missing and
# this runs as root on Debian, it is installed with apt-get (the nginx
# package's service is kept from starting). Nothing is started on a
# non-loopback address, and every process started here is stopped on exit.

set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf must use "." as decimal point

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/../.." && pwd)

# ---------------------------------------------------------------- settings --

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-2s}
    WARMUP=${WARMUP:-0}
    STREAM_SIZE=${STREAM_SIZE:-256M}
    STREAM_RUNS=${STREAM_RUNS:-1}
    READY_RUNS=${READY_RUNS:-3}
else
    DURATION=${DURATION:-10s}
    WARMUP=${WARMUP:-2s}
    STREAM_SIZE=${STREAM_SIZE:-1G}
    STREAM_RUNS=${STREAM_RUNS:-2}
    READY_RUNS=${READY_RUNS:-5}
fi
NGINX_WORKERS=${NGINX_WORKERS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}
OUT_DIR=${OUT_DIR:-$REPO_DIR/target/bench}
KEEP_TMP=${KEEP_TMP:-0}
BIN=${BIN:-}

WRK_TIMEOUT=5s # a response slower than this counts as a wrk timeout error
LUA=$BENCH_DIR/wrk-report.lua

# The load cases: name, path, connections, method, request body bytes.
CASES=(
    "get-c1      /api/data  1   GET  0"
    "get-c16     /api/data  16  GET  0"
    "get-c256    /api/data  256 GET  0"
    "post4k-c16  /api/echo  16  POST 4096"
    "get1m-c16   /api/big   16  GET  0"
)
PATHS=(direct nginx ours)

# -------------------------------------------------------------- utilities --

STARTED_PIDS=() # every background process started here, stopped on exit
POLICY_RC=""    # a policy-rc.d created for apt-get, removed on exit
PROBLEMS=()     # failed checks: printed at the end, and the exit status is 1
WORK=""

say() { printf '%s\n' "$*"; }
note() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'bench: FATAL: %s\n' "$*" >&2
    exit 1
}
problem() {
    PROBLEMS+=("$*")
    printf 'bench: PROBLEM: %s\n' "$*" >&2
}

# Microseconds since the epoch, without forking (bash 5's EPOCHREALTIME).
now_us() { local t=$EPOCHREALTIME; printf -v "$1" '%s' "${t/./}"; }

# Sleeps without forking (a read with a timeout on a FIFO nobody writes):
# the 1 ms readiness poll and the 50 ms RSS sampler would otherwise measure
# mostly the cost of spawning sleep(1).
NAP_FD=""
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# Floating-point arithmetic: calc 'expression' (awk syntax).
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# Parses wrk-style durations ("10s", "1m") to whole seconds.
seconds_of() {
    case $1 in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
    esac
}

# Bytes from head -c style sizes: 1G, 256M, 64K (binary units) or plain bytes.
bytes_of() {
    case $1 in
    *G) echo $((${1%G} * 1024 * 1024 * 1024)) ;;
    *M) echo $((${1%M} * 1024 * 1024)) ;;
    *K) echo $((${1%K} * 1024)) ;;
    *) echo "$1" ;;
    esac
}

# Records one fact for the JSON summary: fact dotted.key json-value.
fact() { jq -cn --arg k "$1" --argjson v "$2" '{k: $k, v: $v}' >>"$WORK/facts.jsonl"; }
fact_str() { jq -cn --arg k "$1" --arg v "$2" '{k: $k, v: $v}' >>"$WORK/facts.jsonl"; }

# ------------------------------------------------------------ processes --

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    [[ -n $POLICY_RC ]] && rm -f "$POLICY_RC"
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${STARTED_PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            note "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

forget_pid() {
    local pid=$1 i
    for i in "${!STARTED_PIDS[@]}"; do
        [[ ${STARTED_PIDS[i]} == "$pid" ]] && unset 'STARTED_PIDS[i]'
    done
    STARTED_PIDS=("${STARTED_PIDS[@]}")
}

# Stops a process started here with SIGTERM and waits up to $2 seconds; sets
# STOP_RC to its exit status (137 if it had to be killed) and STOP_MS.
stop_pid() {
    local pid=$1 limit=${2:-10} t0 t1 i
    now_us t0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        nap 0.01
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    STOP_RC=0
    wait "$pid" 2>/dev/null || STOP_RC=$?
    now_us t1
    STOP_MS=$(((t1 - t0) / 1000))
    forget_pid "$pid"
}

# Runs a command as nobody when we are root: the benchmark has no reason to
# give a web server root, and a mistake in a generated config then cannot
# touch the system. It execs, so that a caller that runs it in the
# background ("unprivileged_exec cmd &") gets the command's own pid in $!
# (a function run with & is a subshell: without exec, $! would be that
# subshell and killing it would leave nginx running).
unprivileged_exec() {
    if ((EUID == 0)); then
        exec setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups -- "$@"
    else
        exec "$@"
    fi
}

# The pid and its children (nginx's master and workers), found by parent
# pid: /proc/PID/task/*/children needs a kernel option that is not always on.
family() {
    local pid=$1 out=$1 dir stat fields
    for dir in /proc/[0-9]*; do
        read -r stat 2>/dev/null <"$dir/stat" || continue # it may be gone
        read -r -a fields <<<"${stat##*) }"
        [[ ${fields[1]} == "$pid" ]] && out+=" ${dir#/proc/}"
    done
    echo "$out"
}

# utime+stime clock ticks of the given processes (all their threads).
cpu_ticks() {
    local total=0 pid stat fields
    for pid in "$@"; do
        read -r stat 2>/dev/null <"/proc/$pid/stat" || continue
        read -r -a fields <<<"${stat##*) }" # comm may hold spaces: cut after ")"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# A line of /proc/PID/status in KiB (VmRSS, VmHWM), summed over the pids.
status_kib() {
    local key=$1 total=0 pid k v _
    shift
    for pid in "$@"; do
        [[ -r /proc/$pid/status ]] || continue
        while read -r k v _; do
            [[ $k == "$key:" ]] && total=$((total + v)) && break
        done 2>/dev/null <"/proc/$pid/status" || true
    done
    echo "$total"
}

# Resets VmHWM so that it reports the peak of what follows (Linux >= 4.0).
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# Samples the summed VmRSS of the pids every 50 ms in the background and
# keeps the maximum in file $1. Sets SAMPLER_PID.
start_sampler() {
    local out=$1
    shift
    (
        max=0
        while :; do
            v=$(status_kib VmRSS "$@")
            if ((v > max)); then
                max=$v
                echo "$max" >"$out"
            fi
            nap 0.05
        done
    ) &
    SAMPLER_PID=$!
    STARTED_PIDS+=("$SAMPLER_PID")
}
stop_sampler() {
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    forget_pid "$SAMPLER_PID"
}

# ------------------------------------------------------------------ setup --

# Installs what is missing (Debian, as root). nginx's postinst would start
# the system nginx on port 80: a policy-rc.d that refuses (exit 101) keeps
# it from starting, and is removed again if we created it.
ensure_tools() {
    local missing=() tool
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    for tool in wrk curl jq setpriv ss; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "missing: ${missing[*]}; install nginx wrk curl jq util-linux iproute2"
    fi
    local packages=()
    for tool in "${missing[@]}"; do
        case $tool in
        setpriv) packages+=(util-linux) ;;
        ss) packages+=(iproute2) ;;
        # Debian package names. "nginx" is the server itself; on bookworm
        # "nginx-light" is only a metapackage adding the echo module to it.
        *) packages+=("$tool") ;;
        esac
    done
    note "installing ${packages[*]} with apt-get"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
    fi
    local rc=0 log
    log=$(mktemp)
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1 || rc=$?
    if [[ -n $POLICY_RC ]]; then
        rm -f "$POLICY_RC"
        POLICY_RC=""
    fi
    ((rc == 0)) || die "apt-get install ${packages[*]} failed: $(tail -5 "$log")"
    rm -f "$log"
}

build_binary() {
    if [[ -n $BIN ]]; then
        [[ -x $BIN ]] || die "BIN=$BIN is not an executable"
        return
    fi
    note "cargo build --release --locked"
    local t0 t1
    now_us t0
    (cd "$REPO_DIR" && cargo build --release --locked >&2) || die "release build failed"
    now_us t1
    BIN=$REPO_DIR/target/release/truedat-auth-proxy
    note "built in $(((t1 - t0) / 1000000)) s"
}

make_workdir() {
    local parent=${BENCH_TMPDIR:-}
    if [[ -z $parent ]]; then
        # tmpfs keeps the upstream's 1 GiB upload temp file off the disk;
        # it needs room for one upload body.
        parent=${TMPDIR:-/tmp}
        local avail
        avail=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 { print $4 }' || echo 0)
        if [[ -w /dev/shm ]] && ((${avail:-0} > 3 * 1024 * 1024)); then
            parent=/dev/shm
        fi
    fi
    WORK=$(mktemp -d "$parent/truedat-bench.XXXXXX")
    chmod 755 "$WORK" # nginx runs as nobody and reads its configs from here
    mkdir -p "$WORK"/{results,wrk} "$WORK"/nginx/{www,tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi}
    ((EUID == 0)) && chown -R "$(id -u nobody):$(id -g nobody)" "$WORK/nginx"
    : >"$WORK/facts.jsonl"
    local fifo=$WORK/nap.fifo
    mkfifo "$fifo"
    exec {NAP_FD}<>"$fifo"
}

PICKED_PORTS=" "
# pick_port VAR: a free TCP port on 127.0.0.1. Chosen below the ephemeral
# range, because wrk's hundreds of client sockets take their source ports
# from it and a listener there could collide with one of them.
pick_port() {
    local lo _ low high port tries
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    low=10000 high=$((lo - 1))
    ((high - low < 1000)) && low=20000 high=65000
    for ((tries = 0; tries < 200; tries++)); do
        port=$((low + ((RANDOM << 15) | RANDOM) % (high - low)))
        [[ $PICKED_PORTS == *" $port "* ]] && continue
        [[ -n $(ss -Htan "( sport = :$port )" 2>/dev/null) ]] && continue
        PICKED_PORTS+="$port "
        printf -v "$1" '%s' "$port"
        return
    done
    die "no free port found"
}

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# A JWT shaped like Truedat's (HS512). Its signature is random: the proxy
# does not verify tokens, and the upstream compares the bearer as a string.
# iat is now and exp is in 2100, so the proxy never renews during the run.
make_jwt() {
    local now header payload signature
    now=$(date +%s)
    header=$(printf '%s' '{"alg":"HS512","typ":"JWT"}' | b64url)
    payload=$(printf '{"aud":"truedat","exp":4102444800,"iat":%s,"iss":"tdauth","jti":"%s","nbf":%s,"sub":"{\\"id\\":42,\\"user_name\\":\\"svc-bench\\"}","typ":"access"}' \
        "$now" "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$now" | b64url)
    signature=$(head -c 64 /dev/urandom | b64url)
    printf '%s.%s.%s' "$header" "$payload" "$signature"
}

# Fills a template's @KEY@ placeholders: render TEMPLATE OUT KEY=VALUE...
render() {
    local template=$1 out=$2 expr=() kv
    shift 2
    local value
    for kv in "$@"; do
        value=${kv#*=}
        value=${value//\\/\\\\} # sed replacement specials: \ & |
        value=${value//&/\\&}
        value=${value//|/\\|}
        expr+=(-e "s|@${kv%%=*}@|${value}|g")
    done
    sed "${expr[@]}" "$template" >"$out"
    if grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z_]*@'; then
        die "unfilled placeholder in $out: $(grep -v '^[[:space:]]*#' "$out" | grep -o '@[A-Z_]*@' | head -1)"
    fi
}

# Waits until URL answers the expected status (extra curl args after it).
wait_status() {
    local want=$1 url=$2 code i
    shift 2
    for ((i = 0; i < 500; i++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [[ $code == "$want" ]] && return 0
        nap 0.01
    done
    die "$url did not answer $want (last: $code)"
}

start_nginx() { # name conf -> NGINX_PID
    local name=$1 conf=$2 ngx=$WORK/nginx out
    if ! out=$(unprivileged_exec "$NGINX" -t -q -p "$ngx/" -e "$ngx/$name-error.log" -c "$conf" 2>&1); then
        die "nginx -t rejected $conf: $out"
    fi
    unprivileged_exec "$NGINX" -p "$ngx/" -e "$ngx/$name-error.log" -c "$conf" >"$ngx/$name.out" 2>&1 &
    NGINX_PID=$!
    STARTED_PIDS+=("$NGINX_PID")
    # The pid must be nginx's master itself, or cleanup would miss it.
    local i
    for ((i = 0; i < 100; i++)); do
        [[ $(readlink "/proc/$NGINX_PID/exe" 2>/dev/null) == "$(readlink -f "$NGINX")" ]] && break
        nap 0.01
    done
    [[ $(readlink "/proc/$NGINX_PID/exe" 2>/dev/null) == "$(readlink -f "$NGINX")" ]] ||
        die "nginx ($name) did not start: $(tail -3 "$ngx/$name-error.log" "$ngx/$name.out" 2>/dev/null)"
}

setup_upstream() {
    local ngx=$WORK/nginx
    TOKEN=$(make_jwt)
    # ~200 bytes: roughly one small page of a Truedat listing.
    DATA_JSON='{"data":[{"id":1,"name":"customers","type":"Table","system":"sales-dwh","group":"public"},{"id":2,"name":"orders","type":"Table","system":"sales-dwh","group":"public"}],"page":1,"page_size":2,"total":2}'
    head -c 1M /dev/urandom >"$ngx/www/big.bin"
    # Sparse, STREAM_SIZE (1 GiB by default): it costs no memory or disk.
    truncate -s "$(bytes_of "$STREAM_SIZE")" "$ngx/www/download.bin"
    pick_port UPSTREAM_PORT
    render "$BENCH_DIR/nginx-upstream.conf.in" "$ngx/upstream.conf" \
        "WORKERS=$UPSTREAM_WORKERS" "DIR=$ngx" "PORT=$UPSTREAM_PORT" \
        "TOKEN=$TOKEN" "DATA_JSON=$DATA_JSON"
    start_nginx upstream "$ngx/upstream.conf"
    UPSTREAM_PID=$NGINX_PID
    UPSTREAM=http://127.0.0.1:$UPSTREAM_PORT
    wait_status 200 "$UPSTREAM/api/data" -H "Authorization: Bearer $TOKEN"
}

setup_nginx_proxy() {
    local ngx=$WORK/nginx
    pick_port NGINX_PORT
    pick_port NGINX_LOGGED_PORT
    render "$BENCH_DIR/nginx-proxy.conf.in" "$ngx/proxy.conf" \
        "WORKERS=$NGINX_WORKERS" "DIR=$ngx" "PORT=$NGINX_PORT" \
        "LOGGED_PORT=$NGINX_LOGGED_PORT" "UPSTREAM_PORT=$UPSTREAM_PORT" \
        "KEEPALIVE=$NGINX_KEEPALIVE" "TOKEN=$TOKEN"
    start_nginx nginx-proxy "$ngx/proxy.conf"
    NGINX_PROXY_PID=$NGINX_PID
    wait_status 200 "http://127.0.0.1:$NGINX_PORT/api/data"
}

# The proxy's configuration: everything that matters is in this file, and
# inherited TRUEDAT_PROXY_* variables are removed (see main), so a run is
# reproducible. log.level is "warn" so that access logs (one line per
# request at "info") do not dominate; one case runs at "info" separately.
write_ours_config() {
    pick_port OURS_PORT
    pick_port OURS_ADMIN_PORT
    cat >"$WORK/ours.toml" <<EOF
[listen]
address = "127.0.0.1:$OURS_PORT"

[admin]
address = "127.0.0.1:$OURS_ADMIN_PORT"

[upstream]
url = "$UPSTREAM"

[credentials]
user_name = "svc-bench"
password = "bench-password"

[log]
level = "warn"
EOF
    "$BIN" --config "$WORK/ours.toml" --check-config >/dev/null 2>"$WORK/check-config.err" ||
        die "--check-config rejected the benchmark config: $(cat "$WORK/check-config.err")"
}

# Starts truedat-auth-proxy at log level $1, output to $2. Sets OURS_PID and
# OURS_T0 (just before the fork: the start of "time to ready").
start_ours() {
    local level=$1 log=$2
    now_us OURS_T0
    TRUEDAT_PROXY_LOG__LEVEL=$level "$BIN" --config "$WORK/ours.toml" >>"$log" 2>&1 &
    OURS_PID=$!
    STARTED_PIDS+=("$OURS_PID")
}

# Polls /readyz every millisecond over bash's /dev/tcp (no fork per poll, so
# the poll interval really is ~1 ms) and sets READY_MS, measured from
# OURS_T0. Fails after 10 s or if the process dies.
wait_ready() {
    local fd line t1 deadline
    deadline=$((OURS_T0 + 10000000))
    while :; do
        if { exec {fd}<>"/dev/tcp/127.0.0.1/$OURS_ADMIN_PORT"; } 2>/dev/null; then
            printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd"
            line=""
            IFS= read -r -t 2 -u "$fd" line || true
            exec {fd}>&-
            if [[ $line == "HTTP/1.1 200"* ]]; then
                now_us t1
                READY_MS=$(calc "($t1 - $OURS_T0) / 1000")
                return
            fi
        fi
        kill -0 "$OURS_PID" 2>/dev/null || die "truedat-auth-proxy exited before ready; log: $(tail -5 "$WORK"/ours-*.log)"
        now_us t1
        ((t1 < deadline)) || die "truedat-auth-proxy not ready after 10 s"
        nap 0.001
    done
}

# ---------------------------------------------------------- measurements --

# One login round trip to the upstream as curl sees it (connect included, as
# for the proxy's own first login), median of 5, in ms.
measure_login_rtt() {
    local samples=() i
    for i in 1 2 3 4 5; do
        samples+=("$(curl -s -o /dev/null -w '%{time_total}' -X POST \
            -H 'content-type: application/json' -H 'accept: application/json' \
            -d '{"access_method":"alternative_login","user":{"user_name":"svc-bench","password":"bench-password"}}' \
            "$UPSTREAM/api/sessions")")
    done
    LOGIN_RTT_MS=$(printf '%s\n' "${samples[@]}" | sort -n | sed -n 3p | awk '{ printf "%.3f", $1 * 1000 }')
    fact login_rtt_ms "$LOGIN_RTT_MS"
    fact login_rtt_samples_s "$(printf '%s\n' "${samples[@]}" | jq -sc .)"
}

# Starts and stops the proxy READY_RUNS times, timing process start to the
# first /readyz 200; also checks that SIGTERM ends it cleanly (exit 0).
measure_ready() {
    local times=() i
    for ((i = 1; i <= READY_RUNS; i++)); do
        start_ours warn "$WORK/ours-ready.log"
        wait_ready
        times+=("$READY_MS")
        stop_pid "$OURS_PID" 15
        ((STOP_RC == 0)) || problem "truedat-auth-proxy exited $STOP_RC after SIGTERM (ready-time run $i)"
    done
    READY_MEDIAN_MS=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    fact ours.ready_ms "$(printf '%s\n' "${times[@]}" | jq -sc .)"
    fact ours.ready_ms_median "$READY_MEDIAN_MS"
    fact ours.shutdown_ms_last "$STOP_MS"
}

# Quick functional checks on each path before any load: a benchmark of
# error answers would be worthless.
sanity_check() {
    local path url code out hdr
    head -c 4096 /dev/zero | tr '\0' x >"$WORK/post4k.bin"
    code=$(curl -s -o /dev/null -w '%{http_code}' "$UPSTREAM/api/data")
    [[ $code == 401 ]] || die "upstream answered $code, not 401, without a bearer: its token check is broken"
    for path in "${PATHS[@]}"; do
        url=$(path_url "$path")
        hdr=()
        [[ $path == direct ]] && hdr=(-H "Authorization: Bearer $TOKEN")
        code=$(curl -sS -o "$WORK/sanity.out" -w '%{http_code}' "${hdr[@]}" "$url/api/data" 2>&1 || true)
        [[ $code == 200 && $(cat "$WORK/sanity.out") == "$DATA_JSON" ]] ||
            die "GET /api/data via $path: $code $(head -c 300 "$WORK/sanity.out")"
        code=$(curl -sS -o /dev/null -w '%{http_code}' "${hdr[@]}" -X POST \
            -H 'Content-Type: application/octet-stream' --data-binary "@$WORK/post4k.bin" "$url/api/echo" 2>&1 || true)
        [[ $code == 200 ]] || die "POST /api/echo via $path answered $code"
        out=$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' "${hdr[@]}" "$url/api/big" 2>&1 || true)
        [[ $out == "200 1048576" ]] || die "GET /api/big via $path: $out (want 200 1048576)"
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "http://127.0.0.1:$OURS_PORT/api/sessions")
    [[ $code == 403 ]] || problem "POST /api/sessions through truedat-auth-proxy answered $code, not 403"
}

path_url() {
    case $1 in
    direct) echo "$UPSTREAM" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT" ;;
    nginx-logged) echo "http://127.0.0.1:$NGINX_LOGGED_PORT" ;;
    ours | ours-info) echo "http://127.0.0.1:$OURS_PORT" ;;
    esac
}

path_pids() { # the processes whose CPU counts as "the proxy" on this path
    case $1 in
    direct) family "$UPSTREAM_PID" ;;
    nginx | nginx-logged) family "$NGINX_PROXY_PID" ;;
    ours | ours-info) echo "$OURS_PID" ;;
    esac
}

# One wrk run. Writes results/CASE.LABEL.json: wrk's BENCH_JSON line plus the
# case, the CPU% of the proxy and of the upstream, and the wall time.
# run_wrk CASE PATH LABEL URL CONNS METHOD BODY DURATION
run_wrk() {
    local case=$1 path=$2 label=$3 url=$4 conns=$5 method=$6 body=$7 duration=$8
    local threads=2 out json t0 t1 c0 c1 u0 u1 pids upids
    ((conns < threads)) && threads=$conns # wrk needs connections >= threads
    local header=()
    [[ $path == direct ]] && header=(-H "Authorization: Bearer $TOKEN")
    out=$WORK/wrk/$case.$label.txt
    read -r -a pids <<<"$(path_pids "$path")"
    read -r -a upids <<<"$(family "$UPSTREAM_PID")"
    c0=$(cpu_ticks "${pids[@]}")
    u0=$(cpu_ticks "${upids[@]}")
    now_us t0
    BENCH_METHOD=$method BENCH_BODY_BYTES=$body \
        wrk -t"$threads" -c"$conns" -d"$duration" --timeout "$WRK_TIMEOUT" --latency \
        -s "$LUA" "${header[@]}" "$url" >"$out" 2>&1 ||
        die "wrk failed for $case via $label: $(tail -3 "$out")"
    now_us t1
    c1=$(cpu_ticks "${pids[@]}")
    u1=$(cpu_ticks "${upids[@]}")
    json=$(sed -n 's/^BENCH_JSON //p' "$out")
    [[ -n $json ]] || die "no BENCH_JSON line from wrk for $case via $label: $(tail -3 "$out")"
    local wall_s cpu upcpu
    wall_s=$(calc "($t1 - $t0) / 1000000")
    cpu=$(calc "($c1 - $c0) / $CLK_TCK / $wall_s * 100")
    upcpu=$(calc "($u1 - $u0) / $CLK_TCK / $wall_s * 100")
    [[ $path == direct ]] && cpu=null # no proxy: the upstream's CPU is upcpu
    jq -c --arg case "$case" --arg path "$label" --argjson conns "$conns" \
        --argjson threads "$threads" --arg method "$method" --argjson body "$body" \
        --argjson cpu "$cpu" --argjson upcpu "$upcpu" --argjson wall "$wall_s" \
        '. + {case: $case, path: $path, connections: $conns, wrk_threads: $threads,
              method: $method, body_bytes: $body, proxy_cpu_pct: $cpu,
              upstream_cpu_pct: $upcpu, wall_s: $wall}' <<<"$json" >"$WORK/results/$case.$label.json"
}

# Runs one case on one path: warm-up, then the measured run. On get-c256 the
# proxies' peak RSS is recorded (VmHWM reset first, plus 50 ms sampling).
run_case_path() {
    local case=$1 url_path=$2 conns=$3 method=$4 body=$5 path=$6 url pids
    url=$(path_url "$path")$url_path
    read -r -a pids <<<"$(path_pids "$path")"
    # The proxies' peak RSS in every case: VmHWM is reset before the
    # warm-up and read after the run. On get-c256, RSS is also sampled every
    # 50 ms, as a cross-check of VmHWM for the issue's 256-connection target.
    local sample=0
    if [[ $path != direct ]]; then
        for pid in "${pids[@]}"; do reset_hwm "$pid"; done
    fi
    if [[ $case == get-c256 && $path != direct ]]; then
        sample=1
        echo 0 >"$WORK/rss.$case.$path"
        start_sampler "$WORK/rss.$case.$path" "${pids[@]}"
    fi
    if (($(seconds_of "$WARMUP") > 0)); then
        run_wrk "$case" "$path" "$path-warmup" "$url" "$conns" "$method" "$body" "$WARMUP"
        # The warm-up is measured like any run only to catch errors early.
        [[ $path == ours* ]] && check_errors "$WORK/results/$case.$path-warmup.json"
        # Warm-up runs are kept out of the results directory.
        mv "$WORK/results/$case.$path-warmup.json" "$WORK/wrk/"
    fi
    run_wrk "$case" "$path" "$path" "$url" "$conns" "$method" "$body" "$DURATION"
    local r=$WORK/results/$case.$path.json hwm=null sampled=null
    if [[ $path != direct ]]; then
        hwm=$(status_kib VmHWM "${pids[@]}")
    fi
    if ((sample)); then
        stop_sampler
        sampled=$(cat "$WORK/rss.$case.$path")
        local key=ours
        [[ $path == nginx ]] && key=nginx_proxy
        fact "$key.rss_peak_c256_sampled_kib" "$sampled"
        fact "$key.rss_peak_c256_hwm_kib" "$hwm"
    fi
    jq -c --argjson hwm "$hwm" '. + {proxy_rss_peak_kib: $hwm}' "$r" >"$r.tmp" && mv "$r.tmp" "$r"
    jq -r '[.case, .path, .rps, .p50_us / 1000, .p99_us / 1000, .p999_us / 1000,
            (if .path == "direct" then "-" else "\(.proxy_cpu_pct * 10 | round / 10)%" end),
            "\(.upstream_cpu_pct * 10 | round / 10)%",
            (if .proxy_rss_peak_kib == null then "-" else "\(.proxy_rss_peak_kib / 1024 * 10 | round / 10)MiB" end),
            .errors.status, (.errors.connect + .errors.read + .errors.write + .errors.timeout)] | @tsv' "$r" |
        awk -F'\t' '{ printf "   %-11s %-13s %8.0f req/s  p50 %7.3f  p99 %7.3f  p99.9 %7.3f ms  CPU proxy %6s upstream %6s  peak RSS %8s  non-2xx %s  sock-err %s\n",
                       $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' >&2
    [[ $path == ours* ]] && check_errors "$r"
    return 0
}

# Any non-2xx/3xx response or socket error through truedat-auth-proxy is a
# failure of the run (through the others it is reported in the table).
check_errors() {
    local r=$1 summary
    summary=$(jq -r '.errors | select(.status + .connect + .read + .write + .timeout > 0)
        | "Non-2xx or 3xx responses: \(.status); Socket errors: connect \(.connect), read \(.read), write \(.write), timeout \(.timeout)"' "$r")
    [[ -z $summary ]] || problem "$(jq -r '"\(.case) via \(.path)"' "$r"): $summary"
}

run_load_cases() {
    local spec case url_path conns method body path
    for spec in "${CASES[@]}"; do
        read -r case url_path conns method body <<<"$spec"
        for path in "${PATHS[@]}"; do
            run_case_path "$case" "$url_path" "$conns" "$method" "$body" "$path"
        done
    done
}

# curl -w fields: status, bytes, seconds. stream_upload URL SIZE OUT [args]
stream_upload() {
    local url=$1 size=$2 out=$3
    shift 3
    head -c "$size" /dev/zero |
        curl -sS -T - -o "$out" -w '%{http_code} %{size_upload} %{time_total}' \
            -H 'Content-Type: application/octet-stream' "$@" "$url"
}
stream_download() {
    local url=$1
    shift
    curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$@" "$url"
}

# The 1 GiB streaming check. Direct transfers give the throughput limit;
# through the proxy, its RSS is sampled every 50 ms (and VmHWM reset first)
# so the report shows how much memory a stream costs it. The upload is sent
# chunked from a pipe (unknown length), the harder case for a proxy. Each
# transfer runs STREAM_RUNS times, direct and proxied alternating, and the
# fastest run counts: the first write of a GiB to tmpfs, or a neighbour's
# compile, should not decide the ratio.
run_streaming() {
    local size ours i result code bytes secs peak hwm received
    size=$(bytes_of "$STREAM_SIZE")
    ours=http://127.0.0.1:$OURS_PORT
    fact stream.size_bytes "$size"
    fact stream.runs "$STREAM_RUNS"

    # "|| true" on each transfer: a failure is reported from its status, not
    # by set -e (with pipefail, head dies of SIGPIPE when curl stops early).
    # A broken stream through the proxy ends the run: nothing after it would
    # be meaningful.
    local best_direct="" best_ours="" idle_up peak_up=0
    idle_up=$(status_kib VmRSS "$OURS_PID")
    for ((i = 1; i <= STREAM_RUNS; i++)); do
        result=$(stream_upload "$UPSTREAM/api/upload" "$size" "$WORK/upload-direct.json" \
            -H "Authorization: Bearer $TOKEN" || true)
        read -r code bytes secs <<<"$result"
        [[ $code == 200 ]] || die "direct upload: status ${code:-none}: $(head -c 300 "$WORK/upload-direct.json" 2>/dev/null)"
        best_direct=$(min_of "$best_direct" "$secs")

        reset_hwm "$OURS_PID"
        echo 0 >"$WORK/rss.upload"
        start_sampler "$WORK/rss.upload" "$OURS_PID"
        result=$(stream_upload "$ours/api/upload" "$size" "$WORK/upload-ours.json" || true)
        stop_sampler
        read -r code bytes secs <<<"$result"
        [[ $code == 200 ]] ||
            die "upload through truedat-auth-proxy: status ${code:-none}: $(head -c 300 "$WORK/upload-ours.json" 2>/dev/null)"
        received=$(jq -r '.request_length // 0' "$WORK/upload-ours.json" 2>/dev/null || echo 0)
        ((received >= size)) ||
            die "the upstream read only $received request bytes of a $size-byte upload through truedat-auth-proxy"
        best_ours=$(min_of "$best_ours" "$secs")
        peak=$(cat "$WORK/rss.upload")
        hwm=$(status_kib VmHWM "$OURS_PID")
        ((hwm > peak_up)) && peak_up=$hwm
        ((peak > peak_up)) && peak_up=$peak
    done
    fact stream.upload_direct_s "$best_direct"
    fact stream.upload_ours_s "$best_ours"
    fact stream.upload_ours_mb_s "$(calc "$size / 1000000 / $best_ours")"
    fact stream.upload_upstream_request_length "$received"
    fact stream.upload_rss_idle_kib "$idle_up"
    fact stream.upload_rss_peak_kib "$peak_up"

    # The same upload at 1/8 of the size: the time must scale with the size,
    # or the sink answered before reading the body and the numbers are void.
    local small_secs
    result=$(stream_upload "$ours/api/upload" "$((size / 8))" "$WORK/upload-small.json" || true)
    read -r code _ small_secs <<<"$result"
    fact stream.upload_ours_eighth_s "${small_secs:-null}"
    if [[ $code != 200 ]] || awk "BEGIN { exit !($best_ours < 2 * ${small_secs:-0}) }"; then
        problem "upload time does not scale with size: $STREAM_SIZE in ${best_ours}s, 1/8 of it in ${small_secs}s (status $code)"
    fi

    local idle_down peak_down=0
    best_direct="" best_ours=""
    idle_down=$(status_kib VmRSS "$OURS_PID")
    for ((i = 1; i <= STREAM_RUNS; i++)); do
        result=$(stream_download "$UPSTREAM/api/download" -H "Authorization: Bearer $TOKEN" || true)
        read -r code bytes secs <<<"$result"
        [[ $code == 200 && $bytes == "$size" ]] || die "direct download: status ${code:-none}, ${bytes:-0} of $size bytes"
        best_direct=$(min_of "$best_direct" "$secs")

        reset_hwm "$OURS_PID"
        echo 0 >"$WORK/rss.download"
        start_sampler "$WORK/rss.download" "$OURS_PID"
        result=$(stream_download "$ours/api/download" || true)
        stop_sampler
        read -r code bytes secs <<<"$result"
        [[ $code == 200 && $bytes == "$size" ]] ||
            die "download through truedat-auth-proxy: status ${code:-none}, ${bytes:-0} of $size bytes"
        best_ours=$(min_of "$best_ours" "$secs")
        peak=$(cat "$WORK/rss.download")
        hwm=$(status_kib VmHWM "$OURS_PID")
        ((hwm > peak_down)) && peak_down=$hwm
        ((peak > peak_down)) && peak_down=$peak
    done
    fact stream.download_direct_s "$best_direct"
    fact stream.download_ours_s "$best_ours"
    fact stream.download_ours_mb_s "$(calc "$size / 1000000 / $best_ours")"
    fact stream.download_rss_idle_kib "$idle_down"
    fact stream.download_rss_peak_kib "$peak_down"
}

# The smaller of two decimal numbers; an empty first one means "none yet".
min_of() {
    if [[ -z $1 ]]; then
        echo "$2"
    else
        awk -v a="$1" -v b="$2" 'BEGIN { print (b < a) ? b : a }'
    fi
}

# The case users actually run: log.level = "info", one JSON access-log line
# per request written to a file (as a container runtime would collect it),
# against nginx with its default access log.
run_logging_case() {
    note "restarting truedat-auth-proxy at log.level=info"
    stop_pid "$OURS_PID" 15
    ((STOP_RC == 0)) || problem "truedat-auth-proxy exited $STOP_RC after SIGTERM (main instance)"
    fact ours.shutdown_ms_after_load "$STOP_MS"
    : >"$WORK/ours-info.log"
    start_ours info "$WORK/ours-info.log"
    wait_ready
    local spec case url_path conns method body path
    spec=${CASES[1]} # get-c16
    read -r case url_path conns method body <<<"$spec"
    for path in nginx-logged ours-info; do
        run_case_path "$case" "$url_path" "$conns" "$method" "$body" "$path"
    done
    local lines requests
    lines=$(wc -l <"$WORK/ours-info.log")
    requests=$(jq '.requests' "$WORK/results/$case.ours-info.json")
    fact logging.ours_log_lines "$lines"
    fact logging.ours_log_bytes "$(stat -c %s "$WORK/ours-info.log")"
    fact logging.nginx_log_lines "$(wc -l <"$WORK/nginx/nginx-proxy-access.log")"
    # One access line per request is the contract (SPEC §8): far fewer lines
    # than requests means the measured case did not log what users get.
    ((lines >= requests)) || problem "only $lines log lines for $requests requests at log.level=info"
    stop_pid "$OURS_PID" 15
    ((STOP_RC == 0)) || problem "truedat-auth-proxy exited $STOP_RC after SIGTERM (info instance)"
}

# The proxy's own view: logins (1 expected: no renewal, no 401), upstream
# errors, statuses. Saved to the report; non-2xx answers are problems.
scrape_metrics() {
    local metrics
    metrics=$(curl -s "http://127.0.0.1:$OURS_ADMIN_PORT/metrics" || true)
    printf '%s\n' "$metrics" >"$WORK/metrics.txt"
    grep -E '^truedat_proxy_(logins_total|upstream_errors_total|requests_total|replays_total|token_refreshes_total)' \
        <<<"$metrics" >"$WORK/metrics-summary.txt" || true
    local logins
    logins=$(awk '/^truedat_proxy_logins_total/ { s += $NF } END { print s + 0 }' <<<"$metrics")
    fact ours.metrics_logins_total "$logins"
    ((logins <= 1)) || problem "truedat-auth-proxy logged in $logins times during the run (expected 1: a re-login means 401s or errors)"
    if grep -E '^truedat_proxy_upstream_errors_total' <<<"$metrics" | awk '$NF > 0 { found = 1 } END { exit !found }'; then
        problem "truedat-auth-proxy counted upstream errors: $(grep -E '^truedat_proxy_upstream_errors_total' <<<"$metrics" | tr '\n' ' ')"
    fi
    # The 403 of the sanity check (POST /api/sessions) is expected.
    local bad
    bad=$(grep -E '^truedat_proxy_requests_total' <<<"$metrics" | grep -vE 'status="(2..|403)"' | awk '$NF > 0' || true)
    [[ -z $bad ]] || problem "truedat-auth-proxy answered non-2xx statuses: $(tr '\n' ' ' <<<"$bad")"
}

# Warnings and errors logged during the run: by truedat-auth-proxy (its
# warn-level logs, and the WARN/ERROR lines of the info-level run) and by
# both nginx ([error] and worse; nginx's [warn] about request bodies going to
# a temp file is expected). Reported, not failing: wrk's counts decide.
collect_logs() {
    {
        cat "$WORK/ours-ready.log" "$WORK/ours-main.log" 2>/dev/null || true
        grep -v '"level":"INFO"' "$WORK/ours-info.log" 2>/dev/null || true
    } | grep -v '^$' >"$WORK/ours-warnings.txt" || true
    fact ours.log_warning_lines "$(wc -l <"$WORK/ours-warnings.txt")"
    grep -hE '\[(error|crit|alert|emerg)\]' "$WORK"/nginx/*-error.log >"$WORK/nginx-errors.txt" 2>/dev/null || true
    fact nginx_error_lines "$(wc -l <"$WORK/nginx-errors.txt")"
}

# jq helpers shared by the report and the summary: fixed-point formatting
# (jq has no printf) and the result of one case on one path.
# shellcheck disable=SC2016 # jq code, not shell
JQ_DEFS='
  def fixed(d): if . == null then "-" else
      (if . < 0 then "-" else "" end) as $s | (if . < 0 then -. else . end) as $a
      | pow(10; d) as $m | ($a * $m | round) as $n | ($n / $m | floor) as $i
      | (($n - $i * $m) + $m | tostring | .[1:]) as $f
      | $s + ($i | tostring) + (if d > 0 then "." + $f else "" end) end;
  def ms: if . == null then "-" else (. / 1000 | fixed(3)) end;
  def signed_ms: if . == null then "-" else (if . >= 0 then "+" else "" end) + (. / 1000 | fixed(3)) end;
  def ratio(a; b): if a == null or b == null or b == 0 then "-" else (a / b | fixed(2)) + "x" end;
  def mib: if . == null then "-" else (. / 1024 | fixed(1)) end;
  def int: if . == null then "-" else (round | tostring) end;
  def errs: if . == null then "-" else "\(.errors.status)/\(.errors.connect + .errors.read + .errors.write + .errors.timeout)" end;
  def run(c; p): map(select(.case == c and .path == p))[0];
  def added(c; p): if run(c; p) == null or run(c; "direct") == null then null
      else run(c; p).p99_us - run(c; "direct").p99_us end;
'

# Markdown tables from the per-run results and summary.json.
print_report() {
    local all=$WORK/all-results.json summary=$WORK/summary.json order
    order=$(case_order)

    say
    say "## truedat-auth-proxy benchmark"
    say
    jq -r '"Machine: \(.machine.cpu), \(.machine.cores) cores, \(.machine.mem_total_kib / 1048576 | round) GiB, \(.machine.kernel); load average at start \(.machine.loadavg_start)",
        "Commit \(.git.commit)\(if .git.dirty then " (plus uncommitted changes)" else "" end); \(.tools.nginx); \(.tools.wrk); \(.tools.rustc)",
        "wrk -t2 (-t1 at 1 connection), keep-alive, \(.settings.duration) per run\(if .settings.warmup == "0" or .settings.warmup == "0s" then ", no warm-up" else " after a \(.settings.warmup) warm-up" end); the three paths run one after the other within each case.",
        "nginx reverse proxy: worker_processes \(.settings.nginx_workers), keepalive \(.settings.nginx_keepalive), no access log; truedat-auth-proxy: \(.ours.threads) threads, log.level=warn; upstream nginx: worker_processes \(.settings.upstream_workers)."' "$summary"
    say
    say "Throughput and latency (latency in ms; ours/nginx and ours/direct are ratios of requests/s; +p99 is the p99 added over direct):"
    say
    jq -r --argjson order "$order" "$JQ_DEFS"'
      ["case", "req/s direct", "req/s nginx", "req/s ours", "ours/nginx", "ours/direct",
       "p50 direct", "p50 nginx", "p50 ours", "p99 direct", "p99 nginx", "p99 ours",
       "p99.9 direct", "p99.9 nginx", "p99.9 ours", "+p99 nginx", "+p99 ours"],
      ($order[] as $c | [run($c; "direct"), run($c; "nginx"), run($c; "ours")] as [$d, $n, $o]
        | select($d != null or $n != null or $o != null)
        | [$c, ($d.rps | int), ($n.rps | int), ($o.rps | int), ratio($o.rps; $n.rps), ratio($o.rps; $d.rps),
           ($d.p50_us | ms), ($n.p50_us | ms), ($o.p50_us | ms),
           ($d.p99_us | ms), ($n.p99_us | ms), ($o.p99_us | ms),
           ($d.p999_us | ms), ($n.p999_us | ms), ($o.p999_us | ms),
           (added($c; "nginx") | signed_ms), (added($c; "ours") | signed_ms)])
      | @tsv' "$all" | md_table

    say
    say "Cost and errors (CPU% = utime+stime during the run, 100 = one core; req/CPU-s = requests per CPU-second of the proxy; peak RSS in MiB, VmHWM reset before the warm-up, nginx = master + workers; errors = wrk's Non-2xx-or-3xx / socket errors):"
    say
    jq -r --argjson order "$order" "$JQ_DEFS"'
      def eff: if . == null or (.proxy_cpu_pct // 0) == 0 then "-" else (.rps / (.proxy_cpu_pct / 100) | int) end;
      ["case", "CPU% nginx", "CPU% ours", "req/CPU-s nginx", "req/CPU-s ours", "CPU% upstream via direct / nginx / ours",
       "peak RSS nginx", "peak RSS ours", "errors direct", "errors nginx", "errors ours"],
      ($order[] as $c | [run($c; "direct"), run($c; "nginx"), run($c; "ours")] as [$d, $n, $o]
        | select($d != null or $n != null or $o != null)
        | [$c, ($n.proxy_cpu_pct | fixed(1)), ($o.proxy_cpu_pct | fixed(1)), ($n | eff), ($o | eff),
           "\($d.upstream_cpu_pct | fixed(0)) / \($n.upstream_cpu_pct | fixed(0)) / \($o.upstream_cpu_pct | fixed(0))",
           ($n.proxy_rss_peak_kib | mib), ($o.proxy_rss_peak_kib | mib),
           ($d | errs), ($n | errs), ($o | errs)])
      | @tsv' "$all" | md_table

    say
    say "Default logging, get-c16: truedat-auth-proxy at log.level=info (one JSON access-log line per request, to a file) against nginx with its default access log:"
    say
    jq -r "$JQ_DEFS"'
      ["path", "req/s", "p50", "p99", "p99.9", "CPU%", "peak RSS", "errors"],
      (["nginx-logged", "ours-info", "nginx", "ours"][] as $p | run("get-c16"; $p) as $x | select($x != null)
        | [(if $p == "ours" or $p == "nginx" then "\($p) (no access log, from above)" else $p end), ($x.rps | int),
           ($x.p50_us | ms), ($x.p99_us | ms), ($x.p999_us | ms), ($x.proxy_cpu_pct | fixed(1)),
           ($x.proxy_rss_peak_kib | mib), ($x | errs)])
      | @tsv' "$all" | md_table
    say
    jq -r '"ours-info / nginx-logged throughput: \(.logging.ratio_ours_info_nginx_logged)x. Access-log lines written: \(.logging.ours_log_lines) by truedat-auth-proxy (\(.logging.ours_log_bytes) bytes), \(.logging.nginx_log_lines) by nginx (warm-up included)."' "$summary"

    say
    say "truedat-auth-proxy resources:"
    say
    jq -r "$JQ_DEFS"'
      "- release binary: \(.ours.binary_bytes) bytes (\(.ours.binary_bytes / 1000000 | fixed(2)) MB, \(.ours.binary_bytes / 1048576 | fixed(2)) MiB)",
      "- RSS idle (ready, before any request): \(.ours.rss_idle_kib | mib) MiB; threads: \(.ours.threads)",
      "- RSS peak during get-c256 (VmHWM reset before it): \(.ours.rss_peak_c256_hwm_kib | mib) MiB (50 ms samples: \(.ours.rss_peak_c256_sampled_kib | mib) MiB)",
      "- RSS idle after all load cases: \(.ours.rss_idle_after_load_kib | mib) MiB",
      "- nginx reverse proxy (master + workers): idle \(.nginx_proxy.rss_idle_kib | mib) MiB, peak during get-c256 \(.nginx_proxy.rss_peak_c256_hwm_kib | mib) MiB, after the load \(.nginx_proxy.rss_after_load_kib | mib) MiB",
      "- time from process start to /readyz 200 (polled every 1 ms): median \(.ours.ready_ms_median | fixed(1)) ms over \(.ours.ready_ms | length) starts (\(.ours.ready_ms | map(fixed(1)) | join(", ")) ms)",
      "- one login round trip to the upstream (curl, connect included, median of 5): \(.login_rtt_ms | fixed(2)) ms",
      "- exit after SIGTERM: \(.ours.shutdown_ms_last) ms idle, \(.ours.shutdown_ms_after_load) ms after the load",
      "- its metrics after the load: \(.ours.metrics_summary)"' "$summary"

    say
    jq -r '"Streaming through truedat-auth-proxy (\(.settings.stream_size) with curl, best of \(.settings.stream_runs) run(s); the upload is chunked from a pipe; MB = 10^6 bytes; RSS peak over all runs):"' "$summary"
    say
    jq -r "$JQ_DEFS"'
      .stream as $s
      | def rate(s): $s.size_bytes / 1000000 / s | fixed(0);
      "- upload: \(rate($s.upload_ours_s)) MB/s, \($s.upload_ours_s | fixed(3)) s (direct: \(rate($s.upload_direct_s)) MB/s); the upstream read \($s.upload_upstream_request_length) request bytes before answering; 1/8 of the size took \($s.upload_ours_eighth_s | fixed(3)) s",
      "  RSS idle \($s.upload_rss_idle_kib | mib) MiB, peak \($s.upload_rss_peak_kib | mib) MiB: +\($s.upload_rss_peak_kib - $s.upload_rss_idle_kib | mib) MiB",
      "- download: \(rate($s.download_ours_s)) MB/s, \($s.download_ours_s | fixed(3)) s (direct: \(rate($s.download_direct_s)) MB/s)",
      "  RSS idle \($s.download_rss_idle_kib | mib) MiB, peak \($s.download_rss_peak_kib | mib) MiB: +\($s.download_rss_peak_kib - $s.download_rss_idle_kib | mib) MiB"' "$summary"

    say
    say "Targets of the issue (reported here, never failing the run):"
    say
    jq -r '.targets[] | "- \(if .met then "PASS" else "MISS" end)  \(.name): \(.detail)"' "$summary"
}

# The case names in the order of CASES, as a JSON array.
case_order() { printf '%s\n' "${CASES[@]}" | awk '{ print $1 }' | jq -R . | jq -sc .; }

# Pads a TSV (header first) into a Markdown table, numbers right-aligned.
md_table() {
    awk -F'\t' '
      { rows[NR] = $0; for (i = 1; i <= NF; i++) if (length($i) > w[i]) w[i] = length($i); if (NF > nf) nf = NF }
      END {
        for (r = 1; r <= NR; r++) {
          n = split(rows[r], c, "\t"); line = "|"
          for (i = 1; i <= nf; i++) line = line sprintf(" %" (i == 1 ? "-" : "") w[i] "s |", c[i])
          print line
          if (r == 1) { line = "|"; for (i = 1; i <= nf; i++) { d = ""; for (k = 0; k < w[i]; k++) d = d "-"; line = line (i == 1 ? " " d " |" : " " substr(d, 2) ": |") } print line }
        }
      }'
}

# Gathers facts, results and target checks into summary.json.
write_summary() {
    local all=$WORK/all-results.json
    jq -s 'sort_by(.case, .path)' "$WORK"/results/*.json >"$all"
    jq -n \
        --slurpfile facts <(jq -c . "$WORK/facts.jsonl") \
        --slurpfile runs "$all" \
        --argjson problems "$(printf '%s\n' "${PROBLEMS[@]+"${PROBLEMS[@]}"}" | jq -R . | jq -sc 'map(select(. != ""))')" \
        "$JQ_DEFS"'
      (reduce $facts[] as $f ({}; setpath($f.k | split("."); $f.v))) as $base
      | $runs[0] as $runs
      | def r(c; p): $runs | run(c; p);
        def add(c; p): $runs | added(c; p);
      $base + {
        schema: 1,
        runs: $runs,
        problems: $problems,
        logging: ($base.logging + {
          ratio_ours_info_nginx_logged: (if r("get-c16"; "ours-info") == null or r("get-c16"; "nginx-logged") == null then null
            else (r("get-c16"; "ours-info").rps / r("get-c16"; "nginx-logged").rps * 100 | round) / 100 end)
        }),
        ratios: [ $runs | map(.case) | unique[] as $c
          | select(r($c; "ours") != null and r($c; "nginx") != null and r($c; "direct") != null) | {
          case: $c,
          ours_over_nginx_rps: (r($c; "ours").rps / r($c; "nginx").rps),
          ours_over_direct_rps: (r($c; "ours").rps / r($c; "direct").rps),
          nginx_added_p99_us: add($c; "nginx"),
          ours_added_p99_us: add($c; "ours")
        } ],
        targets: (
          [ ("get-c16", "get-c256") as $c | r($c; "ours") as $o | r($c; "nginx") as $n
            | select($o != null and $n != null and r($c; "direct") != null)
            | { name: "throughput >= 1.0x nginx at \($c)", met: ($o.rps >= $n.rps),
                detail: "\(ratio($o.rps; $n.rps)) (ours \($o.rps | int), nginx \($n.rps | int) req/s; CPU ours \($o.proxy_cpu_pct | fixed(0))%, nginx \($n.proxy_cpu_pct | fixed(0))%)" },
              { name: "added p99 <= nginx at \($c)", met: (add($c; "ours") <= add($c; "nginx")),
                detail: "ours \(add($c; "ours") | signed_ms) ms, nginx \(add($c; "nginx") | signed_ms) ms" } ]
          + [
            { name: "RSS idle < 15 MiB", met: ($base.ours.rss_idle_kib < 15 * 1024),
              detail: "\($base.ours.rss_idle_kib | mib) MiB" },
            { name: "RSS < 40 MiB at 256 connections", met: ($base.ours.rss_peak_c256_hwm_kib < 40 * 1024),
              detail: "peak \($base.ours.rss_peak_c256_hwm_kib | mib) MiB" },
            { name: "upload peak RSS within 8 MiB of idle", met: ($base.stream.upload_rss_peak_kib - $base.stream.upload_rss_idle_kib <= 8 * 1024),
              detail: "+\($base.stream.upload_rss_peak_kib - $base.stream.upload_rss_idle_kib | mib) MiB over \($base.stream.size_bytes / 1048576) MiB" },
            { name: "download peak RSS within 8 MiB of idle", met: ($base.stream.download_rss_peak_kib - $base.stream.download_rss_idle_kib <= 8 * 1024),
              detail: "+\($base.stream.download_rss_peak_kib - $base.stream.download_rss_idle_kib | mib) MiB over \($base.stream.size_bytes / 1048576) MiB" },
            { name: "ready within one login round trip + 20 ms", met: ($base.ours.ready_ms_median <= $base.login_rtt_ms + 20),
              detail: "median \($base.ours.ready_ms_median | fixed(1)) ms vs \($base.login_rtt_ms | fixed(2)) + 20 ms" },
            { name: "release binary < 10 MB (10,000,000 bytes)", met: ($base.ours.binary_bytes < 10000000),
              detail: "\($base.ours.binary_bytes) bytes" }
          ])
      }' >"$WORK/summary.json"
}

record_environment() {
    fact_str started_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    fact_str machine.cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    fact machine.cores "$(nproc)"
    fact_str machine.kernel "$(uname -sr)"
    fact_str machine.loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
    fact machine.mem_total_kib "$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)"
    fact_str tools.nginx "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    fact_str tools.wrk "$(wrk -v 2>&1 | head -1 | awk '{ print "wrk " $2 }')"
    fact_str tools.curl "$(curl --version | head -1 | cut -d' ' -f1-2)"
    fact_str tools.rustc "$(rustc --version 2>/dev/null || echo unknown)"
    fact_str git.commit "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    fact git.dirty "$(if [[ -n $(git -C "$REPO_DIR" status --porcelain 2>/dev/null) ]]; then echo true; else echo false; fi)"
    fact_str settings.duration "$DURATION"
    fact_str settings.warmup "$WARMUP"
    fact_str settings.stream_size "$STREAM_SIZE"
    fact settings.stream_runs "$STREAM_RUNS"
    fact settings.quick "$([[ $QUICK == 1 ]] && echo true || echo false)"
    fact settings.nginx_workers "$NGINX_WORKERS"
    fact settings.upstream_workers "$UPSTREAM_WORKERS"
    fact settings.nginx_keepalive "$NGINX_KEEPALIVE"
    fact_str settings.binary "$BIN"
}

# ------------------------------------------------------------------- main --

main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    ensure_tools
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)

    # Everything from here talks to 127.0.0.1 only: no proxy may intercept
    # it, and the benchmarked proxy must not inherit any setting.
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
    export NO_PROXY='*' no_proxy='*'
    local v
    for v in $(compgen -e TRUEDAT_PROXY_ || true); do unset "$v"; done

    build_binary
    make_workdir
    CLK_TCK=$(getconf CLK_TCK)
    local nofile
    nofile=$(ulimit -n)
    if ((nofile < 4096)); then ulimit -n 4096 2>/dev/null || note "ulimit -n is $nofile: 256 connections may hit it"; fi

    record_environment
    fact ours.binary_bytes "$(stat -c %s "$BIN")"
    local spec_duration
    spec_duration=$(seconds_of "$DURATION")
    ((spec_duration >= 1)) || die "DURATION must be at least 1s"

    note "starting the upstream nginx and the nginx reverse proxy (temp dir $WORK)"
    setup_upstream
    setup_nginx_proxy
    # shellcheck disable=SC2046 # family prints pids to split
    fact nginx_proxy.rss_idle_kib "$(status_kib VmRSS $(family "$NGINX_PROXY_PID"))"

    note "timing truedat-auth-proxy's start to ready ($READY_RUNS starts)"
    write_ours_config
    measure_login_rtt
    measure_ready

    note "starting truedat-auth-proxy for the load cases"
    start_ours warn "$WORK/ours-main.log"
    wait_ready
    nap 0.2 # let the runtime's threads settle before reading RSS
    fact ours.rss_idle_kib "$(status_kib VmRSS "$OURS_PID")"
    fact ours.threads "$(awk '/^Threads:/ { print $2 }' "/proc/$OURS_PID/status")"

    sanity_check

    note "streaming check: $STREAM_SIZE up and down"
    run_streaming

    note "load cases: ${#CASES[@]} cases x ${#PATHS[@]} paths, $DURATION each after ${WARMUP} warm-up"
    run_load_cases
    # shellcheck disable=SC2046 # family prints pids to split
    fact nginx_proxy.rss_after_load_kib "$(status_kib VmRSS $(family "$NGINX_PROXY_PID"))"
    fact ours.rss_idle_after_load_kib "$(status_kib VmRSS "$OURS_PID")"
    scrape_metrics
    fact_str ours.metrics_summary "$(tr '\n' ';' <"$WORK/metrics-summary.txt" | sed 's/;$//; s/;/; /g')"

    run_logging_case
    collect_logs

    write_summary
    mkdir -p "$OUT_DIR"
    local stamp report json
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    report=$OUT_DIR/bench-$stamp.txt
    json=$OUT_DIR/bench-$stamp.json
    print_report | tee "$report"
    {
        say
        say "Log lines at warn level or above: $(wc -l <"$WORK/ours-warnings.txt") from truedat-auth-proxy, $(wc -l <"$WORK/nginx-errors.txt") [error]-or-worse from the two nginx."
        head -10 "$WORK/ours-warnings.txt" | sed 's/^/    /'
        head -10 "$WORK/nginx-errors.txt" | sed 's/^/    /'
    } | tee -a "$report"
    cp "$WORK/summary.json" "$json"
    cp "$json" "$OUT_DIR/latest.json"
    cp "$report" "$OUT_DIR/latest.txt"

    say
    if ((${#PROBLEMS[@]} > 0)); then
        say "FAILED checks:" | tee -a "$report"
        printf '  - %s\n' "${PROBLEMS[@]}" | tee -a "$report"
    else
        say "All checks passed: no errors through truedat-auth-proxy." | tee -a "$report"
    fi
    say "Report: $report"
    say "JSON summary: $json"
    ((${#PROBLEMS[@]} == 0))
}

main "$@"
