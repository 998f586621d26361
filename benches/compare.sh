#!/usr/bin/env bash
# benches/compare.sh — veer side by side with NGINX, HAProxy and a direct
# connection, on one machine, over loopback only.
#
# Run from the repository root:
#
#     benches/compare.sh                       # the full run: 6 rounds, 10 s each
#     ROUNDS=2 DURATION=3 DOCS=0 benches/compare.sh   # a smoke run that writes no docs
#
# What it does
#   1. Installs what is missing (as root, or through sudo):
#      apt-get install -y nginx haproxy wrk nghttp2-client curl
#   2. Builds veer: cargo build --release (SKIP_BUILD=1 skips it).
#   3. Starts two upstreams, each its own NGINX (1 worker, `return 200` with a
#      7-byte body, access log off, stub_status at /__stub), one per version
#      (stable and canary) so the canary share is read from their request
#      counters. Both pinned to CPU $LOAD_CPU with taskset.
#   4. Starts the proxies, each pinned to CPU $PROXY_CPU, each splitting 90/10
#      between the two upstreams over pooled keep-alive connections, and each
#      setting X-Forwarded-For/-Proto/-Host (veer always does; the others are
#      told to, so all do the same work):
#        veer     `veer run -c FILE --workers 1`, guard on (telemetry always on)
#        nginx    1 worker, weighted upstream 9:1, keepalive pool
#        haproxy  nbthread 1, weighted servers 9:1, http-reuse always
#      and `direct`: the load generator straight to the stable upstream (the
#      harness's limit, no proxy).
#   5. For each round, for each load, runs each target in turn (A B C D A B C
#      D ...), after a short warm-up of the same target:
#        saturation  wrk -t1 -c64 -d${DURATION}s (percentiles from a Lua done())
#        fixed rates h2load --h1 -t1 -c64 -r1 --rate-period=1ms --rps=RATE/64
#                    (and over h2c, the same without --h1: $H2_RATES)
#                    -n RATE*RATE_DURATION (connection starts staggered by 1 ms;
#                    latencies from h2load's per-request log, µs resolution)
#      The load generator runs on CPU $LOAD_CPU, beside the upstreams.
#   6. Measures per run: req/s, p50/p99/p99.9 latency, the proxy's CPU time per
#      request (utime+stime of all its processes from /proc/PID/stat over the
#      measured interval, divided by the requests done), peak RSS (VmHWM of
#      the process that serves: veer, the NGINX worker, HAProxy) and the
#      canary share (from the upstreams' stub_status counters).
#   7. Prints the medians over the rounds, the ratios veer/NGINX, veer/HAProxy
#      and veer/direct, and the issue's goals met or missed; writes them to
#      docs/benchmarks.md (between the compare.sh markers; the rest of the
#      file is kept) and a chart of CPU per request and p99 per proxy to
#      docs/benchmarks.svg. Raw per-round figures go to
#      target/bench-compare/rounds.tsv.
#   8. Stops every process it started, by PID, on exit (also on Ctrl-C).
#
# Settings (environment):
#   ROUNDS=6          interleaved rounds; medians are taken over them
#   DURATION=10       seconds of each saturation run
#   RATE_DURATION=$DURATION   seconds of each fixed-rate run
#   RATES="5000 12000"        fixed rates, req/s (empty: none)
#   TLS_RATES="5000 12000"  fixed rates over HTTPS (TLS 1.3, HTTP/1.1 by ALPN,
#                     keep-alive; the same ECDSA P-256 certificate for every
#                     proxy; the proxies talk plain HTTP/1.1 upstream; empty: none)
#   H2_RATES="5000"   fixed rates over HTTP/2 (h2c, prior knowledge; one
#                     stream at a time per connection; empty: none). The
#                     proxies talk HTTP/1.1 to the upstreams either way.
#   IDLE_RATES=""     fixed rates over HTTP/1.1 run while IDLE_CONNECTIONS idle
#                     keep-alive clients are held open on the same proxy
#                     (benches/idle_clients.py on CPU $LOAD_CPU: each made one
#                     request and then sends nothing); e.g. IDLE_RATES=5000.
#                     Not run for `direct`.
#   IDLE_CONNECTIONS=9000  how many (HAProxy needs two descriptors for each of
#                     its maxconn; this machine's hard limit is 20,000 per process)
#   WARMUP=1          seconds of wrk before each measured run (0: none)
#   CONNECTIONS=64    client connections
#   TARGETS="direct veer nginx haproxy"   what to run, in this order;
#                     `veer-uring` is the same binary with VEER_IO=uring (client
#                     connections through io_uring; build it with
#                     `--features io-uring`), on ports BASE+20..BASE+22
#   URING_ENV=""      more of veer-uring's environment, e.g.
#                     "VEER_URING_SQPOLL=1000" or "VEER_URING_COOP_TASKRUN=1"
#   VEER_WORKERS=1    veer's --workers (2: two workers on the one proxy core, to
#                     count what crosses between them; see syscalls.sh)
#   PROXY_CPU=0 LOAD_CPU=1    the cores to pin to
#   BASE_PORT=18180   ports BASE+1..BASE+19 on 127.0.0.1 are used
#   DOCS=1            0: do not touch docs/
#   SKIP_BUILD=0      1: use target/release/veer as it is
#   KEEP=0            1: keep the temp dir (configs, logs) for inspection
#   PERF=0            1: after the rounds, profile each of PERF_TARGETS (default
#                     veer) at saturation and at PERF_RATE (default: the first
#                     of RATES): system calls per request (perf stat on the
#                     syscall tracepoints), CPU by binary and top symbols
#                     (perf record -e cpu-clock), written to
#                     target/bench-compare/perf-TARGET-LOAD.txt
set -euo pipefail

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-10}
RATE_DURATION=${RATE_DURATION:-$DURATION}
RATES=${RATES-5000 12000}
H2_RATES=${H2_RATES-5000}
TLS_RATES=${TLS_RATES-5000 12000}
IDLE_RATES=${IDLE_RATES-}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-9000}
# Room for the idle clients beside the measured ones, in every proxy.
MAX_CLIENTS=$((IDLE_CONNECTIONS + 1024))
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-64}
TARGETS=${TARGETS:-direct veer nginx haproxy}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18180}
DOCS=${DOCS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
VEER_WORKERS=${VEER_WORKERS:-1}

STABLE_PORT=$((BASE_PORT + 1))
CANARY_PORT=$((BASE_PORT + 2))
declare -A PORT=(
  [direct]=$STABLE_PORT
  [veer]=$((BASE_PORT + 11))
  [nginx]=$((BASE_PORT + 12))
  [haproxy]=$((BASE_PORT + 13))
  [veer-uring]=$((BASE_PORT + 20))
)
# HTTP/2 cleartext (prior knowledge): veer serves both on one port; NGINX and
# HAProxy get a second listener; `direct` is the stable upstream's.
declare -A H2_PORT=(
  [direct]=$((BASE_PORT + 3))
  [veer]=${PORT[veer]}
  [nginx]=$((BASE_PORT + 14))
  [haproxy]=$((BASE_PORT + 15))
  [veer-uring]=$((BASE_PORT + 20))
)
# HTTPS: a TLS listener each (`direct`: the stable upstream's own).
declare -A TLS_PORT=(
  [direct]=$((BASE_PORT + 4))
  [veer]=$((BASE_PORT + 16))
  [nginx]=$((BASE_PORT + 17))
  [haproxy]=$((BASE_PORT + 18))
  [veer-uring]=$((BASE_PORT + 21))
)
VEER_ADMIN_PORT=$((BASE_PORT + 19))
declare -A ADMIN_PORT=([veer]=$VEER_ADMIN_PORT [veer-uring]=$((BASE_PORT + 22)))

ROOT=$(pwd)
if [[ ! -f "$ROOT/Cargo.toml" || ! -f "$ROOT/benches/compare.sh" ]]; then
  echo "compare.sh: run me from the repository root (benches/compare.sh)" >&2
  exit 2
fi
OUT_DIR="$ROOT/target/bench-compare"
mkdir -p "$OUT_DIR"
RAW="$OUT_DIR/rounds.tsv"
SUMMARY="$OUT_DIR/summary.tsv"
WORK=$(mktemp -d /tmp/veer-compare.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Processes: every one started is recorded here and stopped by its PID.
PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $KEEP == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# 1. tools
need_install=()
for tool in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_install+=("${tool#*:}")
done
if ((${#need_install[@]})); then
  log "installing ${need_install[*]}"
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
NGINX_BIN=$(command -v nginx)
HAPROXY_BIN=$(command -v haproxy)

# ---------------------------------------------------------------------------
# 2. build
VEER_BIN="${VEER_BIN:-$ROOT/target/release/veer}"
if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release"
  cargo build --release --quiet
fi
[[ -x $VEER_BIN ]] || die "no $VEER_BIN (build it, or unset SKIP_BUILD)"

for port in "$STABLE_PORT" "$CANARY_PORT" "${PORT[veer]}" "${PORT[nginx]}" "${PORT[haproxy]}" \
  "${H2_PORT[direct]}" "${H2_PORT[nginx]}" "${H2_PORT[haproxy]}" "$VEER_ADMIN_PORT" \
  "${TLS_PORT[direct]}" "${TLS_PORT[veer]}" "${TLS_PORT[nginx]}" "${TLS_PORT[haproxy]}" \
  "${PORT[veer-uring]}" "${TLS_PORT[veer-uring]}" "${ADMIN_PORT[veer-uring]}"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    die "127.0.0.1:$port is already in use; stop what serves it or set BASE_PORT"
  fi
done

wait_http() { # url what
  for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  die "$2 did not answer at $1 (logs in $WORK, run with KEEP=1 to keep them)"
}

# One certificate for every TLS listener, made here (ECDSA P-256, as most
# sites use now); HAProxy wants certificate and key in one file. In a
# directory of their own, as certificates are deployed: veer watches the
# directory of its certificate files for renewals, and the per-request log
# h2load writes into $WORK would wake that watch thousands of times a second
# (it did: 10-15 µs per request of veer's CPU, at 5,000 req/s).
mkdir -p "$WORK/tls"
TLS_CERT="$WORK/tls/tls.crt" TLS_KEY="$WORK/tls/tls.key" TLS_PEM="$WORK/tls/tls.pem"
if [[ -n $TLS_RATES ]]; then
  command -v openssl >/dev/null || die "openssl is needed for the TLS rows (apt-get install -y openssl)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TLS_KEY" \
    -out "$TLS_CERT" -subj /CN=bench.test -addext subjectAltName=DNS:bench.test -days 30 \
    >/dev/null 2>&1 || die "openssl could not make the benchmark certificate"
  cat "$TLS_CERT" "$TLS_KEY" >"$TLS_PEM"
fi

# ---------------------------------------------------------------------------
# 3. upstreams
start_upstream() { # name port [h2c-port] [tls-port]
  local dir="$WORK/upstream-$1"
  local h2_listen="" tls_listen=""
  [[ -n ${3:-} ]] && h2_listen="listen 127.0.0.1:$3 http2 backlog=4096;"
  [[ -n ${4:-} && -n $TLS_RATES ]] &&
    tls_listen="listen 127.0.0.1:$4 ssl backlog=4096; ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY;"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 65536;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections $((MAX_CLIENTS > 8192 ? MAX_CLIENTS : 8192)); }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$2 backlog=4096;
    $h2_listen
    $tls_listen
    location = /__stub { stub_status; }
    location / { default_type text/plain; return 200 "$1\n"; }
  }
}
EOF
  taskset -c "$LOAD_CPU" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' \
    >"$dir/out.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$2/__stub" "upstream $1"
}
start_upstream stable "$STABLE_PORT" "${H2_PORT[direct]}" "${TLS_PORT[direct]}"
start_upstream canary "$CANARY_PORT"
log "upstreams: stable 127.0.0.1:$STABLE_PORT, canary 127.0.0.1:$CANARY_PORT (CPU $LOAD_CPU)"

stub_requests() { # port -> requests counted by that NGINX so far
  curl -s --max-time 2 "http://127.0.0.1:$1/__stub" | awk 'NR == 3 { print $3 }'
}

# ---------------------------------------------------------------------------
# 4. proxies
declare -A MAIN_PID CMD CONFIG_FILE

# veer-uring: the same binary serving its cleartext listener through io_uring
# (its TLS listener stays on epoll), on the one thread that mode has.
start_veer() {
  local target=${1:-veer} io="" workers=$VEER_WORKERS
  if [[ $target == veer-uring ]]; then io="VEER_IO=uring ${URING_ENV:-}" workers=1; fi
  local dir="$WORK/$target"
  mkdir -p "$dir/state"
  CONFIG_FILE[$target]="$dir/veer.yaml"
  cat >"${CONFIG_FILE[$target]}" <<EOF
listeners:
  - { name: public, address: 127.0.0.1:${PORT[$target]} }
$([[ -n $TLS_RATES ]] && echo "  - { name: secure, address: 127.0.0.1:${TLS_PORT[$target]}, tls: { cert: $TLS_CERT, key: $TLS_KEY } }")
admin: { address: 127.0.0.1:${ADMIN_PORT[$target]} }
$([[ -n $IDLE_RATES ]] && echo "limits: { max_connections: $MAX_CLIENTS, header_read_timeout: 300s }")
state_dir: $dir/state
services:
  - name: app
    versions:
      - { name: stable, revision: bench, endpoints: [127.0.0.1:$STABLE_PORT], weight: 90 }
      - { name: canary, revision: bench, endpoints: [127.0.0.1:$CANARY_PORT], weight: 10 }
    guard:
      baseline: stable
      interval: 1s
      window: 30s
      min_requests: 50
      max_error_rate: 0.05
      max_p99_latency: 1s
EOF
  CMD[$target]="${io:+$io }taskset -c $PROXY_CPU target/release/veer run -c veer.yaml --workers $workers"
  # Its log goes beside, not into, the directory veer watches for config
  # changes.
  # shellcheck disable=SC2086 # $io is a list of NAME=VALUE words
  env $io taskset -c "$PROXY_CPU" "$VEER_BIN" run -c "${CONFIG_FILE[$target]}" --workers "$workers" \
    >"$WORK/$target-out.log" 2>&1 &
  MAIN_PID[$target]=$!
  PIDS+=($!)
  wait_http "http://127.0.0.1:${ADMIN_PORT[$target]}/health/readiness" "$target"
}

start_nginx() {
  local dir="$WORK/nginx"
  mkdir -p "$dir"
  CONFIG_FILE[nginx]="$dir/nginx.conf"
  cat >"${CONFIG_FILE[nginx]}" <<EOF
worker_processes 1;
worker_rlimit_nofile 65536;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections $((MAX_CLIENTS > 8192 ? MAX_CLIENTS : 8192)); }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream app {
    server 127.0.0.1:$STABLE_PORT weight=9;
    server 127.0.0.1:$CANARY_PORT weight=1;
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    listen 127.0.0.1:${H2_PORT[nginx]} http2 backlog=4096;
    $([[ -n $TLS_RATES ]] && echo "listen 127.0.0.1:${TLS_PORT[nginx]} ssl backlog=4096; ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY;")
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
EOF
  CMD[nginx]="taskset -c $PROXY_CPU nginx -p DIR -c nginx.conf -g 'daemon off;'"
  taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$dir" -c "${CONFIG_FILE[nginx]}" -g 'daemon off;' \
    >"$dir/out.log" 2>&1 &
  MAIN_PID[nginx]=$!
  PIDS+=($!)
  wait_http "http://127.0.0.1:${PORT[nginx]}/" nginx
}

start_haproxy() {
  local dir="$WORK/haproxy"
  mkdir -p "$dir"
  CONFIG_FILE[haproxy]="$dir/haproxy.cfg"
  cat >"${CONFIG_FILE[haproxy]}" <<EOF
global
  nbthread 1
  ssl-default-bind-options ssl-min-ver TLSv1.2
  maxconn $((IDLE_CONNECTIONS + 200 > 8000 ? IDLE_CONNECTIONS + 200 : 8000))

defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s

frontend public
  bind 127.0.0.1:${PORT[haproxy]}
  bind 127.0.0.1:${H2_PORT[haproxy]} proto h2
$([[ -n $TLS_RATES ]] && echo "  bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $TLS_PEM alpn http/1.1")
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend app

backend app
  balance roundrobin
  server stable 127.0.0.1:$STABLE_PORT weight 9
  server canary 127.0.0.1:$CANARY_PORT weight 1
EOF
  CMD[haproxy]="taskset -c $PROXY_CPU haproxy -db -f haproxy.cfg"
  taskset -c "$PROXY_CPU" "$HAPROXY_BIN" -db -f "${CONFIG_FILE[haproxy]}" >"$dir/out.log" 2>&1 &
  MAIN_PID[haproxy]=$!
  PIDS+=($!)
  wait_http "http://127.0.0.1:${PORT[haproxy]}/" haproxy
}

for target in $TARGETS; do
  case $target in
    direct) ;;
    veer | veer-uring) start_veer "$target" ;;
    nginx) start_nginx ;;
    haproxy) start_haproxy ;;
    *) die "unknown target '$target' (direct, veer, veer-uring, nginx, haproxy)" ;;
  esac
done
log "targets up: $TARGETS (proxies on CPU $PROXY_CPU)"

# All processes of a target (NGINX: master and worker), for CPU accounting.
target_pids() {
  local main=${MAIN_PID[$1]:-}
  [[ -n $main ]] || return 0
  echo "$main"
  pgrep -P "$main" || true
}

# The process that serves (NGINX: its worker), for peak RSS.
serving_pid() {
  local main=${MAIN_PID[$1]:-}
  [[ -n $main ]] || return 0
  if [[ $1 == nginx ]]; then
    pgrep -P "$main" | head -1
  else
    echo "$main"
  fi
}

cpu_ticks() { # pids... -> "utime+stime stime" summed, in clock ticks
  local total=0 sys=0 pid fields
  for pid in "$@"; do
    # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    fields=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a f <<<"$fields"
    total=$((total + f[11] + f[12]))
    sys=$((sys + f[12]))
  done
  echo "$total $sys"
}

peak_rss_kb() { # pid
  [[ -n ${1:-} ]] || { echo 0; return; }
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------------------
# 5. load
cat >"$WORK/percentiles.lua" <<'EOF'
-- Prints what compare.sh reads: totals and latency percentiles in µs.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50=%d p99=%d p999=%d errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

WRK_CMD="taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${DURATION}s -s percentiles.lua URL"
rate_cmd() { # rate [h2] -> the h2load command, as documented
  local h1="--h1 "
  [[ ${2:-} == h2 ]] && h1=""
  echo "taskset -c $LOAD_CPU h2load $h1-t1 -c$CONNECTIONS -r1 --rate-period=1ms --rps=$(per_client "$1") -n $(($1 * RATE_DURATION)) --log-file=FILE URL"
}
per_client() { awk -v r="$1" -v c="$CONNECTIONS" 'BEGIN { printf "%.4g", r / c }'; }

warm_up() { # url [h2]
  ((WARMUP > 0)) || return 0
  if [[ ${2:-} == h2 ]]; then
    taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNECTIONS" -D "$WARMUP" "$1" >/dev/null 2>&1 || true
  else
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$1" >/dev/null 2>&1 || true
  fi
}

# Runs one load against one target; prints "requests elapsed_s p50 p99 p999 errors".
run_load() { # load url
  local load=$1 url=$2
  if [[ $load == sat ]]; then
    local out
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/percentiles.lua" "$url" 2>&1)
    echo "$out" >>"$WORK/wrk.log"
    local line non2xx
    line=$(grep '^BENCH ' <<<"$out") || die "wrk printed no figures: $out"
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    awk -v extra="${non2xx:-0}" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%d %.3f %d %d %d %d\n", v["requests"], v["duration_us"] / 1e6, v["p50"], v["p99"], v["p999"], v["errors"] + extra
    }' <<<"$line"
  else
    local rate=${load#*-} protocol=--h1
    [[ $load == h2-* ]] && protocol=--no-tls-proto=h2c
    local n=$((rate * RATE_DURATION)) logfile="$WORK/h2load.log" out
    rm -f "$logfile"
    out=$(taskset -c "$LOAD_CPU" h2load "$protocol" -t1 -c"$CONNECTIONS" -r1 --rate-period=1ms \
      --rps="$(per_client "$rate")" -n "$n" --log-file="$logfile" "$url" 2>&1)
    echo "$out" >>"$WORK/h2load-out.log"
    local secs failed
    secs=$(awk '/^finished in/ { v = $3; if (v ~ /ms,?$/) { sub(/ms,?$/, "", v); v /= 1000 } else sub(/s,?$/, "", v); print v }' <<<"$out")
    failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' <<<"$out")
    non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' <<<"$out")
    [[ -s $logfile ]] || die "h2load wrote no log: $out"
    cut -f3 "$logfile" | sort -n | awk -v secs="$secs" -v errors="$((${failed:-0} + ${non2xx:-0}))" '
      { v[NR] = $1 }
      END {
        n = NR
        printf "%d %.3f %d %d %d %d\n", n, secs, q(0.50), q(0.99), q(0.999), errors
      }
      function q(p,   r) { r = int(p * n); if (r < p * n) r++; if (r < 1) r = 1; return v[r] }'
  fi
}

# Starts benches/idle_clients.py against a target and waits until it holds
# every connection; its PID is left in IDLE_PID.
hold_idle() { # target
  local out="$WORK/idle-clients.out"
  : >"$out"
  taskset -c "$LOAD_CPU" python3 "$ROOT/benches/idle_clients.py" 127.0.0.1 "${PORT[$1]}" \
    "$IDLE_CONNECTIONS" >"$out" 2>&1 &
  IDLE_PID=$!
  PIDS+=($!)
  for _ in $(seq 1200); do
    grep -q '^ready' "$out" && return 0
    kill -0 "$IDLE_PID" 2>/dev/null || die "idle_clients.py stopped: $(cat "$out")"
    sleep 0.1
  done
  die "idle_clients.py did not get $IDLE_CONNECTIONS connections open in 120 s: $(cat "$out")"
}
release_idle() {
  kill -TERM "$IDLE_PID" 2>/dev/null || true
  wait "$IDLE_PID" 2>/dev/null || true
  # The proxy closes its side; give it a moment before the next run.
  sleep 1
}

measure() { # round load target
  local round=$1 load=$2 target=$3
  local url="http://127.0.0.1:${PORT[$target]}/" protocol=h1
  if [[ $load == idle-* ]]; then
    [[ $target == direct ]] && return 0
    hold_idle "$target"
  fi
  if [[ $load == h2-* ]]; then
    url="http://127.0.0.1:${H2_PORT[$target]}/"
    protocol=h2
  elif [[ $load == tls-* ]]; then
    url="https://127.0.0.1:${TLS_PORT[$target]}/"
  fi
  warm_up "$url" "$protocol"
  local pids
  mapfile -t pids < <(target_pids "$target")
  local s0 c0 t0 k0
  s0=$(stub_requests "$STABLE_PORT")
  c0=$(stub_requests "$CANARY_PORT")
  read -r t0 k0 < <(cpu_ticks "${pids[@]}")
  local figures
  figures=$(run_load "$load" "$url")
  local t1 k1 s1 c1
  read -r t1 k1 < <(cpu_ticks "${pids[@]}")
  s1=$(stub_requests "$STABLE_PORT")
  c1=$(stub_requests "$CANARY_PORT")
  local rss
  if [[ $load == idle-* ]]; then
    # What the idle clients cost held, not the peak of their arrival.
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$(serving_pid "$target")/status" 2>/dev/null || echo 0)
    release_idle
  else
    rss=$(peak_rss_kb "$(serving_pid "$target")")
  fi
  read -r requests secs p50 p99 p999 errors <<<"$figures"
  # Each counter also counted the poll that read it.
  local ds=$((s1 - s0 - 1)) dc=$((c1 - c0 - 1))
  awk -v round="$round" -v load="$load" -v target="$target" -v n="$requests" -v secs="$secs" \
    -v p50="$p50" -v p99="$p99" -v p999="$p999" -v ticks=$((t1 - t0)) -v sys=$((k1 - k0)) -v hz="$CLK_TCK" \
    -v rss="$rss" -v ds="$ds" -v dc="$dc" -v errors="$errors" -v proxied="${#pids[@]}" 'BEGIN {
      rps = secs > 0 ? n / secs : 0
      cpu = (proxied > 0 && n > 0) ? ticks / hz * 1e6 / n : -1
      share = (target != "direct" && ds + dc > 0) ? 100 * dc / (ds + dc) : -1
      kernel = ticks > 0 ? 100 * sys / ticks : -1
      printf "%d\t%s\t%s\t%d\t%.0f\t%d\t%d\t%d\t%.2f\t%d\t%.2f\t%d\t%.1f\n",
        round, load, target, n, rps, p50, p99, p999, cpu, rss, share, errors, kernel
    }' | tee -a "$RAW"
}

# ---------------------------------------------------------------------------
# System calls per request (SYSCALLS=1; benches/syscalls.sh sets it): instead
# of the rounds, each proxy serves each of SYSCALL_LOADS at a fixed rate while
# `perf stat` counts every syscall tracepoint on all its processes for
# SYSCALL_SECONDS; requests served come from the upstreams' counters, read
# inside perf's window. Counts, not times: they hold on a loaded machine.
# The CPU per request beside them is utime+stime over the same window, at
# 100 Hz tick resolution: an upper bound when the machine is busy.
if [[ ${SYSCALLS:-0} == 1 ]]; then
  command -v perf >/dev/null 2>&1 || die "SYSCALLS=1 needs perf (apt-get install linux-perf)"
  perf stat -e 'syscalls:sys_enter_getpid' -- true >/dev/null 2>&1 ||
    die "perf cannot read the syscall tracepoints here (try as root, or kernel.perf_event_paranoid=-1)"
  SYSCALL_LOADS=${SYSCALL_LOADS:-5000 12000 h2-5000}
  SYSCALL_SECONDS=${SYSCALL_SECONDS:-3}
  SYSCALL_OUT="$OUT_DIR/syscalls.md"
  cat >"$WORK/syscall-window.sh" <<EOF
count() { curl -s --max-time 2 "http://127.0.0.1:\$1/__stub" | awk 'NR == 3 { print \$3 }'; }
echo \$((\$(count $STABLE_PORT) + \$(count $CANARY_PORT))) >"$WORK/r0"
sleep $SYSCALL_SECONDS
echo \$((\$(count $STABLE_PORT) + \$(count $CANARY_PORT))) >"$WORK/r1"
EOF
  : >"$SYSCALL_OUT"
  for load in $SYSCALL_LOADS; do
    {
      case $load in
        h2-*) title="HTTP/2 (h2c) at ${load#h2-} req/s" ;;
        tls-*) title="HTTPS (HTTP/1.1) at ${load#tls-} req/s" ;;
        *) title="HTTP/1.1 at $load req/s" ;;
      esac
      echo "**$title, h2load -c$CONNECTIONS -m${SYSCALL_DEPTH:-1}: system calls per request** (perf stat, ${SYSCALL_SECONDS} s window)"
      echo
      echo "| target | requests | all | epoll_wait | read | write | futex | context switches | page faults | CPU µs/req | other calls over 0.05/req |"
      echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    } >>"$SYSCALL_OUT"
    for target in $TARGETS; do
      [[ $target == direct ]] && continue
      url="http://127.0.0.1:${PORT[$target]}/" protocol=--h1 warm=h1
      case $load in
        h2-*) url="http://127.0.0.1:${H2_PORT[$target]}/" protocol=--no-tls-proto=h2c warm=h2 ;;
        tls-*) url="https://127.0.0.1:${TLS_PORT[$target]}/" ;;
      esac
      rate=${load#*-}
      warm_up "$url" "$warm"
      taskset -c "$LOAD_CPU" h2load "$protocol" -t1 -c"$CONNECTIONS" -m"${SYSCALL_DEPTH:-1}" -r1 --rate-period=1ms \
        --rps="$(per_client "$rate")" -n $((rate * (SYSCALL_SECONDS + 3 + ${SYSCALL_CALLERS:-0} * 4))) "$url" >"$WORK/syscall-load.log" 2>&1 &
      load_pid=$!
      PIDS+=("$load_pid")
      sleep 1
      mapfile -t pids < <(target_pids "$target")
      csv="$OUT_DIR/syscalls-$target-$load.csv"
      read -r t0 _ < <(cpu_ticks "${pids[@]}")
      perf stat -x, -e 'syscalls:sys_enter_*,context-switches,page-faults' -p "$(IFS=,; echo "${pids[*]}")" -o "$csv" \
        -- bash "$WORK/syscall-window.sh" >/dev/null 2>&1 || die "perf stat failed on $target"
      read -r t1 _ < <(cpu_ticks "${pids[@]}")
      if [[ ${SYSCALL_CALLERS:-0} == 1 ]]; then
        # Who makes the wake-up calls: futex, eventfd writes and epoll_wait
        # by the code that called them (DWARF stacks, 2 s).
        data="$OUT_DIR/callers-$target-$load.data"
        perf record -q -e syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait \
          --call-graph dwarf,16384 -p "$(IFS=,; echo "${pids[*]}")" -o "$data" -- sleep 2 >/dev/null 2>&1 || true
        # Each call by the first frame that names who asked for it.
        perf script -i "$data" 2>/dev/null | awk '
          /syscalls:sys_enter_/ { if (ev != "") print ev " <- " (who == "" ? "?" : who); ev = $0; sub(/.*sys_enter_/, "", ev); sub(/:.*/, "", ev); who = ""; next }
          who == "" && NF >= 2 && $2 !~ /^(syscall|epoll_wait|write|__write|__GI_|futex|std::sys|<std::sys|std::sync|mio::|unpark|park|wake|<mio|tokio::runtime::io::driver|tokio::runtime::time|tokio::runtime::signal|tokio::runtime::scheduler::multi_thread::park|tokio::runtime::driver)/ { who = $2; sub(/\+0x.*/, "", who) }
          END { if (ev != "") print ev " <- " (who == "" ? "?" : who) }' |
          sort | uniq -c | sort -rn | head -20 >"$OUT_DIR/callers-$target-$load.txt" || true
        log "callers of futex/write/epoll_wait: $OUT_DIR/callers-$target-$load.txt"
      fi
      wait "$load_pid" || true
      # Each counter also counted the two polls that read it.
      n=$(($(cat "$WORK/r1") - $(cat "$WORK/r0") - 2))
      awk -F, -v target="$target" -v n="$n" -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" '
        $1 ~ /^[0-9]+$/ && $3 ~ /^syscalls:/ {
          name = $3; sub(/^syscalls:sys_enter_/, "", name)
          c[name] += $1; all += $1
        }
        $1 ~ /^[0-9]+$/ && $3 !~ /^syscalls:/ { sw[$3] += $1 }
        END {
          if (n <= 0) { printf "| %s | 0 | — | — | — | — | — | — | — | — | no requests counted |\n", target; exit }
          ep = c["epoll_wait"] + c["epoll_pwait"] + c["epoll_pwait2"]
          rd = c["read"] + c["recvfrom"] + c["recvmsg"] + c["readv"]
          wr = c["write"] + c["sendto"] + c["sendmsg"] + c["writev"]
          split("epoll_wait epoll_pwait epoll_pwait2 read recvfrom recvmsg readv write sendto sendmsg writev futex", known, " ")
          for (k in known) skip[known[k]] = 1
          other = ""
          for (name in c) if (!(name in skip) && c[name] / n >= 0.05) other = other sprintf("%s %.2f, ", name, c[name] / n)
          for (name in c) if (name in skip && name != "futex" && c[name] > 0) detail = detail sprintf("%s %.2f, ", name, c[name] / n)
          sub(/, $/, "", other); sub(/, $/, "", detail)
          printf "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.1f | %s%s |\n", target, n, all / n, ep / n, rd / n, wr / n,
            c["futex"] / n, sw["context-switches"] / n, sw["page-faults"] / n, ticks / hz * 1e6 / n, (other == "" ? "" : other "; "), "of which " detail
        }' "$csv" >>"$SYSCALL_OUT"
      log "syscalls: $target at $load counted"
    done
    echo >>"$SYSCALL_OUT"
  done
  echo
  cat "$SYSCALL_OUT"
  echo "per-call counts: $OUT_DIR/syscalls-TARGET-LOAD.csv"
  exit 0
fi

LOADS="sat $RATES"
for rate in $H2_RATES; do LOADS+=" h2-$rate"; done
for rate in $TLS_RATES; do LOADS+=" tls-$rate"; done
for rate in $IDLE_RATES; do LOADS+=" idle-$rate"; done
printf 'round\tload\ttarget\trequests\trps\tp50_us\tp99_us\tp999_us\tcpu_us_per_req\tpeak_rss_kb\tcanary_pct\terrors\tcpu_kernel_pct\n' >"$RAW"
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
UPTIME_START=$(uptime)
log "uptime at start: $UPTIME_START"
log "ROUNDS=$ROUNDS DURATION=${DURATION}s RATE_DURATION=${RATE_DURATION}s RATES='$RATES' H2_RATES='$H2_RATES' CONNECTIONS=$CONNECTIONS"
printf 'round\tload\ttarget\trequests\trps\tp50\tp99\tp99.9\tcpu_us/req\trss_kb\tcanary%%\terrors\tkernel%%\n' >&2
for round in $(seq "$ROUNDS"); do
  for load in $LOADS; do
    [[ $load == idle-* ]] && continue
    for target in $TARGETS; do
      measure "$round" "$load" "$target" >&2
    done
  done
done
# With idle clients last: a process's peak RSS (VmHWM) never comes down, and
# the other loads' peaks must not include the idle clients'.
for round in $(seq "$ROUNDS"); do
  for rate in $IDLE_RATES; do
    for target in $TARGETS; do
      measure "$round" "idle-$rate" "$target" >&2
    done
  done
done
UPTIME_END=$(uptime)
log "uptime at end: $UPTIME_END"

# ---------------------------------------------------------------------------
# Optional: where each proxy's CPU goes under saturation (PERF=1). A flat
# profile by symbol (cpu-clock samples: this VM has no hardware counters),
# written to target/bench-compare/perf-TARGET.txt.
if [[ ${PERF:-0} == 1 ]]; then
  command -v perf >/dev/null 2>&1 || die "PERF=1 needs perf (apt-get install linux-perf)"
  events="raw_syscalls:sys_enter"
  for call in read recvfrom recvmsg readv write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl getsockopt setsockopt futex sched_yield; do
    events+=",syscalls:sys_enter_$call"
  done
  # The upstreams' counters are read inside perf's window (perf takes a
  # while to attach to the tracepoints).
  cat >"$WORK/window.sh" <<EOF
count() { curl -s --max-time 2 "http://127.0.0.1:\$1/__stub" | awk 'NR == 3 { print \$3 }'; }
echo \$((\$(count $STABLE_PORT) + \$(count $CANARY_PORT))) >"$WORK/r0"
sleep 3
echo \$((\$(count $STABLE_PORT) + \$(count $CANARY_PORT))) >"$WORK/r1"
EOF
  for target in ${PERF_TARGETS:-veer}; do
    pid=$(serving_pid "$target")
    [[ -n $pid ]] || continue
    url="http://127.0.0.1:${PORT[$target]}/"
    for mode in sat ${PERF_RATE-${RATES%% *}}; do
      warm_up "$url"
      if [[ $mode == sat ]]; then
        what="wrk -t1 -c$CONNECTIONS (saturation)"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$((DURATION + 6))s" "$url" >/dev/null 2>&1 &
      else
        what="h2load --h1 -c$CONNECTIONS at $mode req/s"
        taskset -c "$LOAD_CPU" h2load --h1 -t1 -c"$CONNECTIONS" -r1 --rate-period=1ms \
          --rps="$(per_client "$mode")" -n $((mode * (DURATION + 6))) "$url" >/dev/null 2>&1 &
      fi
      load_pid=$!
      PIDS+=("$load_pid")
      sleep 1
      perf record -q -e cpu-clock -F 1999 -p "$pid" -o "$OUT_DIR/perf-$target-$mode.data" -- sleep "$DURATION" >/dev/null 2>&1 || true
      # System calls per request, counted exactly (perf stat on the syscall
      # tracepoints) over 3 s; requests from the upstreams' counters.
      perf stat -x, -e "$events" -p "$pid" -o "$OUT_DIR/syscalls-$target-$mode.csv" -- bash "$WORK/window.sh" >/dev/null 2>&1 || true
      r0=$(cat "$WORK/r0" 2>/dev/null || echo 0)
      r1=$(cat "$WORK/r1" 2>/dev/null || echo 0)
      wait "$load_pid" || true
      {
        echo "# $target under $what: system calls per request (perf stat, 3 s, $((r1 - r0 - 2)) requests)"
        awk -F, -v n=$((r1 - r0 - 2)) '
          $1 ~ /^[0-9]+$/ && n > 0 && $1 / n >= 0.005 {
            name = $3; sub(/^(raw_)?syscalls:sys_enter_?/, "", name); if (name == "") name = "all"
            printf "%-12s %.2f\n", name, $1 / n
          }' "$OUT_DIR/syscalls-$target-$mode.csv"
        echo
        echo "# $target under $what: CPU by binary (perf record -e cpu-clock, ${DURATION} s)"
        perf report -i "$OUT_DIR/perf-$target-$mode.data" --no-children --sort dso --stdio 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | sed 's/ *$//' | head -8 || true
        echo
        echo "# $target under $what: top symbols"
        perf report -i "$OUT_DIR/perf-$target-$mode.data" --no-children --sort dso,sym --stdio 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | sed 's/ *$//' | head -45 || true
      } >"$OUT_DIR/perf-$target-$mode.txt"
      log "perf: $target under $what, in $OUT_DIR/perf-$target-$mode.txt"
    done
  done
fi

# ---------------------------------------------------------------------------
# 6. medians
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print -1; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf 'load\ttarget\trps\tp50_us\tp99_us\tp999_us\tcpu_us_per_req\tpeak_rss_kb\tcanary_pct\terrors\tcpu_kernel_pct\n' >"$SUMMARY"
for load in $LOADS; do
  for target in $TARGETS; do
    row="$load	$target"
    for col in 5 6 7 8 9; do
      row+="	$(awk -F'\t' -v l="$load" -v t="$target" -v c="$col" 'NR > 1 && $2 == l && $3 == t { print $c }' "$RAW" | median)"
    done
    # Peak RSS: the highest seen (under idle clients: with them); errors: all of them.
    row+="	$(awk -F'\t' -v l="$load" -v t="$target" 'NR > 1 && $3 == t && (l ~ /^idle-/ ? $2 == l : $2 !~ /^idle-/) && $10 > m { m = $10 } END { print m + 0 }' "$RAW")"
    row+="	$(awk -F'\t' -v l="$load" -v t="$target" 'NR > 1 && $2 == l && $3 == t { print $11 }' "$RAW" | median)"
    row+="	$(awk -F'\t' -v l="$load" -v t="$target" 'NR > 1 && $2 == l && $3 == t { s += $12 } END { print s + 0 }' "$RAW")"
    row+="	$(awk -F'\t' -v l="$load" -v t="$target" 'NR > 1 && $2 == l && $3 == t { print $13 }' "$RAW" | median)"
    echo "$row" >>"$SUMMARY"
  done
done

# The tables (markdown, also readable on a terminal).
load_title() {
  if [[ $1 == sat ]]; then
    echo "Saturation: wrk -t1 -c$CONNECTIONS -d${DURATION}s"
  elif [[ $1 == h2-* ]]; then
    echo "HTTP/2 (h2c) at fixed rate ${1#h2-} req/s: h2load -c$CONNECTIONS -m1, ${RATE_DURATION}s"
  elif [[ $1 == tls-* ]]; then
    echo "HTTPS (TLS 1.3, HTTP/1.1, keep-alive) at fixed rate ${1#tls-} req/s: h2load --h1 -c$CONNECTIONS, ${RATE_DURATION}s"
  elif [[ $1 == idle-* ]]; then
    echo "Fixed rate ${1#idle-} req/s beside $IDLE_CONNECTIONS idle keep-alive clients held open: h2load --h1 -c$CONNECTIONS, ${RATE_DURATION}s (RSS: at the end of the run, the idle clients held)"
  else
    echo "Fixed rate $1 req/s: h2load --h1 -c$CONNECTIONS, ${RATE_DURATION}s"
  fi
}
TABLES="$WORK/tables.md"
{
  for load in $LOADS; do
    echo "**$(load_title "$load")** — median of $ROUNDS rounds"
    echo
    echo "| target | req/s | p50 µs | p99 µs | p99.9 µs | CPU µs/req | of it kernel | peak RSS MB (run) | canary % | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' -v l="$load" 'NR > 1 && $1 == l {
      cpu = $7 < 0 ? "—" : sprintf("%.1f", $7)
      rss = $8 > 0 ? sprintf("%.1f", $8 / 1024) : "—"
      share = $9 < 0 ? "—" : sprintf("%.1f", $9)
      kernel = $11 < 0 ? "—" : sprintf("%.0f %%", $11)
      printf "| %s | %.0f | %d | %d | %d | %s | %s | %s | %s | %d |\n", $2, $3, $4, $5, $6, cpu, kernel, rss, share, $10
    }' "$SUMMARY"
    echo
  done
  echo "**Ratios** (veer ÷ other; below 1 is better for veer, except req/s)"
  echo
  echo "| load | ratio | req/s | p50 | p99 | p99.9 | CPU/req | peak RSS |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for load in $LOADS; do
    for other in nginx haproxy direct; do
      awk -F'\t' -v l="$load" -v o="$other" '
        NR > 1 && $1 == l { rps[$2] = $3; p50[$2] = $4; p99[$2] = $5; p999[$2] = $6; cpu[$2] = $7; rss[$2] = $8 }
        function r(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "—" }
        END {
          if (!("veer" in rps) || !(o in rps)) exit
          printf "| %s | veer/%s | %s | %s | %s | %s | %s | %s |\n", (l == "sat" ? "saturation" : l "/s"), o,
            r(rps["veer"], rps[o]), r(p50["veer"], p50[o]), r(p99["veer"], p99[o]), r(p999["veer"], p999[o]),
            r(cpu["veer"], cpu[o]), r(rss["veer"], rss[o])
        }' "$SUMMARY"
    done
  done
  echo
} >"$TABLES"

# The issue's goals (#7), met or missed, from the medians.
GOALS="$WORK/goals.md"
awk -F'\t' -v rates="$RATES" '
  NR > 1 { k = $1 SUBSEP $2; rps[k] = $3; p50[k] = $4; p99[k] = $5; cpu[k] = $7; if ($1 !~ /^idle-/ && $8 > rss[$2]) rss[$2] = $8; seen[$2] = 1 }
  function best_cpu(l,   b) {
    b = -1
    if (seen["nginx"] && cpu[l, "nginx"] > 0) b = cpu[l, "nginx"]
    if (seen["haproxy"] && cpu[l, "haproxy"] > 0 && (b < 0 || cpu[l, "haproxy"] < b)) b = cpu[l, "haproxy"]
    return b
  }
  function line(ok, text) { printf "- %s %s\n", ok ? "**met**" : "**missed**", text }
  END {
    if (!seen["veer"]) exit
    n = split(rates, r, " ")
    for (i = 1; i <= n; i++) {
      l = r[i]; b = best_cpu(l)
      if (b > 0) line(cpu[l, "veer"] <= 0.8 * b, sprintf("CPU/request at %s req/s ≤ 0.8 × the better of NGINX and HAProxy: veer %.1f µs, goal ≤ %.1f µs (%.2f × theirs)", l, cpu[l, "veer"], 0.8 * b, cpu[l, "veer"] / b))
    }
    # HTTP/2 and HTTPS: CPU per request at most the better peer.
    for (k in cpu) {
      split(k, kk, SUBSEP)
      if (kk[2] == "veer" && kk[1] ~ /^(h2|tls)-/) {
        b = best_cpu(kk[1])
        if (b > 0) line(cpu[k] <= b, sprintf("CPU/request over %s at %s req/s ≤ 1.0 × the better of NGINX and HAProxy: veer %.1f µs, theirs %.1f µs (%.2f ×)", (kk[1] ~ /^h2/ ? "h2c" : "HTTPS"), substr(kk[1], index(kk[1], "-") + 1), cpu[k], b, cpu[k] / b))
      }
    }
    if (seen["nginx"] || seen["haproxy"]) {
      best = rps["sat", "nginx"] > rps["sat", "haproxy"] ? rps["sat", "nginx"] : rps["sat", "haproxy"]
      line(rps["sat", "veer"] >= best, sprintf("saturation req/s ≥ the better of NGINX and HAProxy: veer %.0f, theirs %.0f (%.2f ×)", rps["sat", "veer"], best, rps["sat", "veer"] / best))
      b = best_cpu("sat")
      if (b > 0) line(cpu["sat", "veer"] <= 0.8 * b, sprintf("saturation CPU/request ≤ 0.8 × theirs: veer %.1f µs, goal ≤ %.1f µs (%.2f × theirs)", cpu["sat", "veer"], 0.8 * b, cpu["sat", "veer"] / b))
    }
    if (seen["direct"] && index(" " rates " ", " 5000 ")) {
      added = p50["5000", "veer"] - p50["5000", "direct"]
      line(added <= 25, sprintf("added p50 over direct at 5000 req/s ≤ 25 µs: %d µs (veer %d, direct %d)", added, p50["5000", "veer"], p50["5000", "direct"]))
      if (seen["nginx"]) line(p99["5000", "veer"] <= p99["5000", "nginx"], sprintf("p99 at 5000 req/s no worse than NGINX: veer %d µs, NGINX %d µs", p99["5000", "veer"], p99["5000", "nginx"]))
    }
    line(rss["veer"] <= 20 * 1024, sprintf("peak RSS ≤ 20 MB: %.1f MB", rss["veer"] / 1024))
  }' "$SUMMARY" >"$GOALS"

echo
cat "$TABLES"
if [[ -s $GOALS ]]; then
  echo "**Goals (issue 7)**"
  echo
  cat "$GOALS"
  echo
fi
echo "raw rounds: $RAW"

[[ $DOCS == 1 ]] || exit 0

# ---------------------------------------------------------------------------
# 7. docs: the chart, then the generated part of docs/benchmarks.md
mkdir -p "$ROOT/docs"
awk -F'\t' -v loads="$LOADS" -v targets="$TARGETS" -v title="veer vs NGINX vs HAProxy — medians of $ROUNDS rounds, $STARTED_AT" '
  NR > 1 { v["cpu", $1, $2] = $7; v["p99", $1, $2] = $5 }
  function label(l) { if (l == "sat") return "saturation"; if (l ~ /^h2-/) return "h2c " substr(l, 4) " req/s"; if (l ~ /^tls-/) return "https " substr(l, 5) " req/s"; return l " req/s" }
  # One bar chart: groups are the loads in `which`, bars the targets.
  function panel(x0, w, metric, which, heading, skip_direct,   pl, np, i, j, max, t, n, y, h, bx, val, ticks, step, gw, bw, nb) {
    np = split(which, pl, " ")
    if (np == 0) return
    max = 0; nb = 0
    for (j = 1; j <= nt; j++) if (!(skip_direct && tg[j] == "direct")) nb++
    for (i = 1; i <= np; i++) for (j = 1; j <= nt; j++) if (v[metric, pl[i], tg[j]] > max) max = v[metric, pl[i], tg[j]]
    if (max <= 0) max = 1
    step = nice(max * 1.08 / 5); ticks = int(max * 1.08 / step); if (ticks * step < max * 1.08) ticks++
    max = step * ticks
    printf "<text x=\"%d\" y=\"66\" class=\"h\">%s</text>\n", x0 + 10, heading
    for (t = 0; t <= ticks; t++) {
      y = 340 - t * 250 / ticks
      printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", x0 + 44, x0 + w, y, y
      printf "<text x=\"%d\" y=\"%.1f\" class=\"tick\">%g</text>\n", x0 + 40, y + 4, t * step
    }
    gw = (w - 54) / np; bw = (gw - 16) / nb
    for (i = 1; i <= np; i++) {
      bx = x0 + 54 + (i - 1) * gw
      n = 0
      for (j = 1; j <= nt; j++) {
        if (skip_direct && tg[j] == "direct") continue
        val = v[metric, pl[i], tg[j]]
        if (val > 0) {
          h = val / max * 250
          printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s %s: %g µs</title></rect>\n", bx + n * bw, 340 - h, bw - 2, h, color[tg[j]], tg[j], label(pl[i]), val
          printf "<text x=\"%.1f\" y=\"%.1f\" class=\"val\">%s</text>\n", bx + n * bw + (bw - 2) / 2, 336 - h, (val < 100 ? sprintf("%.1f", val) : sprintf("%d", val))
        }
        n++
      }
      printf "<text x=\"%.1f\" y=\"358\" class=\"grp\">%s</text>\n", bx + (gw - 16) / 2, label(pl[i])
    }
  }
  function nice(x,   p) { p = 1; while (p * 10 <= x) p *= 10; while (p > x && p > 0.01) p /= 10; if (x / p > 5) return 10 * p; if (x / p > 2) return 5 * p; if (x / p > 1) return 2 * p; return p }
  END {
    nl = split(loads, ld, " "); nt = split(targets, tg, " ")
    color["direct"] = "#9e9e9e"; color["veer"] = "#1f6feb"; color["veer-uring"] = "#8250df"; color["nginx"] = "#2e9e44"; color["haproxy"] = "#d9822b"
    print "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"380\" viewBox=\"0 0 1200 380\" font-family=\"sans-serif\">"
    print "<style>.h{font-size:13px;font-weight:bold}.tick{font-size:10px;text-anchor:end;fill:#555}.val{font-size:9px;text-anchor:middle;fill:#222}.grp{font-size:11px;text-anchor:middle}.grid{stroke:#ddd;stroke-width:1}.t{font-size:13px}.lg{font-size:11px}.note{font-size:11px;fill:#555}</style>"
    print "<rect width=\"1200\" height=\"380\" fill=\"white\"/>"
    printf "<text x=\"20\" y=\"22\" class=\"t\">%s</text>\n", title
    x = 20
    for (j = 1; j <= nt; j++) {
      printf "<rect x=\"%d\" y=\"32\" width=\"10\" height=\"10\" fill=\"%s\"/><text x=\"%d\" y=\"41\" class=\"lg\">%s</text>\n", x, color[tg[j]], x + 14, tg[j]
      x += 80
    }
    printf "<text x=\"%d\" y=\"41\" class=\"note\">lower is better; CPU: utime+stime of the proxy process per request; latency as the client saw it</text>\n", x + 20
    rates = ""
    for (i = 1; i <= nl; i++) if (ld[i] != "sat") rates = rates " " ld[i]
    panel(0, 470, "cpu", loads, "CPU time per request (µs)", 1)
    panel(480, 430, "p99", rates, "p99 latency at fixed rates (µs)", 0)
    panel(920, 270, "p99", (index(" " loads " ", " sat ") ? "sat" : ""), "p99 at saturation (µs)", 0)
    print "</svg>"
  }' "$SUMMARY" >"$ROOT/docs/benchmarks.svg"

versions() {
  echo "- veer: $("$VEER_BIN" --version 2>&1 | head -1) ($(rustc -V 2>/dev/null || echo rustc unknown), release profile: LTO fat, 1 codegen unit, panic=abort)"
  echo "- NGINX: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
  echo "- HAProxy: $("$HAPROXY_BIN" -v 2>&1 | head -1 | awk '{ print $3 }')"
  echo "- wrk: $(wrk -v 2>&1 | head -1 | awk '{ print $2 }'); h2load: $(h2load --version 2>&1 | head -1 | awk '{ print $2 }')"
}

BLOCK="$WORK/block.md"
{
  echo "<!-- BEGIN compare.sh: generated by benches/compare.sh; edits here are overwritten -->"
  echo "## Latest run: $STARTED_AT"
  echo
  echo "- load average at start: \`${UPTIME_START#*load average: }\`; at end: \`${UPTIME_END#*load average: }\` (\`uptime\`; the machine is shared, figures taken under load are noisy)"
  echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
  versions
  echo "- settings: \`ROUNDS=$ROUNDS DURATION=$DURATION RATE_DURATION=$RATE_DURATION RATES=\"$RATES\" H2_RATES=\"$H2_RATES\" TLS_RATES=\"$TLS_RATES\" WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS\`; proxies on CPU $PROXY_CPU, load generator and upstreams on CPU $LOAD_CPU"
  echo
  echo "![CPU per request and p99 per proxy](benchmarks.svg)"
  echo
  cat "$TABLES"
  if [[ -s $GOALS ]]; then
    echo "**Goals (issue 7)**"
    echo
    cat "$GOALS"
    echo
  fi
  echo "### Exact commands"
  echo
  echo '```sh'
  echo "# upstreams (one NGINX each, 1 worker): nginx -p DIR -c nginx.conf -g 'daemon off;' pinned with taskset -c $LOAD_CPU"
  for target in $TARGETS; do
    [[ -n ${CMD[$target]:-} ]] && echo "${CMD[$target]}"
  done
  echo "$WRK_CMD                                       # saturation, each target"
  for rate in $RATES; do
    echo "$(rate_cmd "$rate")   # $rate req/s"
  done
  for rate in $H2_RATES; do
    echo "$(rate_cmd "$rate" h2)   # $rate req/s over h2c (URL: the h2c port)"
  done
  for rate in $TLS_RATES; do
    echo "$(rate_cmd "$rate")   # $rate req/s over HTTPS (URL: https://, the TLS port)"
  done
  echo '```'
  echo
  for target in $TARGETS; do
    [[ -n ${CONFIG_FILE[$target]:-} ]] || continue
    echo "<details><summary>$target config</summary>"
    echo
    echo '```'
    sed "s#$WORK#TMP#g" "${CONFIG_FILE[$target]}"
    echo '```'
    echo
    echo "</details>"
    echo
  done
  echo "<details><summary>upstream config (stable; canary is the same on its own port)</summary>"
  echo
  echo '```'
  sed "s#$WORK#TMP#g" "$WORK/upstream-stable/nginx.conf"
  echo '```'
  echo
  echo "</details>"
  echo
  echo "<details><summary>every round (raw)</summary>"
  echo
  echo '```'
  column -t -s $'\t' "$RAW" 2>/dev/null || cat "$RAW"
  echo '```'
  echo
  echo "</details>"
  echo "<!-- END compare.sh -->"
} >"$BLOCK"

DOC="$ROOT/docs/benchmarks.md"
if [[ -f $DOC ]] && grep -q '^<!-- BEGIN compare.sh' "$DOC"; then
  awk -v block="$BLOCK" '
    /^<!-- BEGIN compare.sh/ { while ((getline line < block) > 0) print line; skip = 1; next }
    /^<!-- END compare.sh/ { skip = 0; next }
    !skip { print }' "$DOC" >"$DOC.new"
  mv "$DOC.new" "$DOC"
else
  {
    [[ -f $DOC ]] && cat "$DOC" && echo
    [[ -f $DOC ]] || printf '# Benchmarks\n\nRerun: `benches/compare.sh` (end to end) and `cargo bench --bench hot_path` (micro).\n\n'
    cat "$BLOCK"
  } >"$DOC.new"
  mv "$DOC.new" "$DOC"
fi
log "wrote docs/benchmarks.md and docs/benchmarks.svg"
