#!/usr/bin/env bash
# Where the CPU of an HTTPS request goes, veer beside NGINX, each terminating
# TLS 1.3 (one ECDSA P-256 certificate) in front of the same two NGINX
# upstreams (90/10), under the same fixed-rate load:
#
#   benches/https_profile.sh                        # target/release/veer, 5,000 req/s, 6 s windows
#   benches/https_profile.sh BIN 12000 8            # another binary, rate, window
#   PLAIN=1 benches/https_profile.sh                # the same over cleartext HTTP/1.1
#
# For each proxy (pinned to CPU $PROXY_CPU; upstreams and h2load --h1 -c64 on
# CPU $LOAD_CPU) two windows of the same load: the first counted with
# `perf stat` (context switches, wake-ups of other processes, system calls)
# and `ss -ti` (TCP segments each way, client side and upstream side), the
# second sampled with `perf record -e cpu-clock` (CPU by binary, top
# symbols). CPU per request is utime+stime from /proc/PID/stat over the
# window; requests are those the upstreams served in it (NGINX stub_status).
# Counts hold on a loaded machine; the µs do not (upper bounds, ±15 % run to
# run on a shared 2-core VM): benches/instructions.sh counts instructions.
#
# Settings: PROXY_CPU=0 LOAD_CPU=1 BASE_PORT=19380 PLAIN=0 TOP=15 KEEP=0.
# Needs nginx, h2load (nghttp2-client), openssl, curl, perf and ss; installs
# the first four with apt-get when missing. Loopback only; every process it
# starts is stopped by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/veer}
RATE=${2:-5000}
SECS=${3:-6}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
B=${BASE_PORT:-19380}
PLAIN=${PLAIN:-0}
TOP=${TOP:-15}
KEEP=${KEEP:-0}

die() { echo "https_profile.sh: $*" >&2; exit 1; }
[[ -x $BIN ]] || die "no veer binary at $BIN (cargo build --release)"
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get install -y "${need[@]}" >/dev/null
fi
command -v perf >/dev/null || die "needs perf (apt-get install linux-perf)"
perf stat -e context-switches -- true >/dev/null 2>&1 || die "perf cannot count here (try as root)"

W=$(mktemp -d /tmp/veer-https-profile.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ $KEEP == 1 ]] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT

STABLE=$((B + 1)) CANARY=$((B + 2))
VEER_PLAIN=$((B + 5)) VEER_TLS=$((B + 6)) NGINX_TLS=$((B + 7)) NGINX_PLAIN=$((B + 8)) ADMIN=$((B + 9))
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$W/tls.key" -out "$W/tls.crt" -days 2 -subj /CN=localhost 2>/dev/null
mkdir -p "$W/up" "$W/nginx" "$W/state"
cat >"$W/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/up/nginx.pid;
error_log $W/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server { listen 127.0.0.1:$STABLE; location / { return 200 "stable\n"; } location = /__stub { stub_status; } }
  server { listen 127.0.0.1:$CANARY; location / { return 200 "canary\n"; } }
}
EOF
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 10024; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream app {
    server 127.0.0.1:$STABLE weight=9;
    server 127.0.0.1:$CANARY weight=1;
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$NGINX_PLAIN backlog=4096;
    listen 127.0.0.1:$NGINX_TLS ssl backlog=4096; ssl_certificate $W/tls.crt; ssl_certificate_key $W/tls.key;
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
cat >"$W/veer.yaml" <<EOF
listeners:
  - { name: public, address: "127.0.0.1:$VEER_PLAIN" }
  - { name: secure, address: "127.0.0.1:$VEER_TLS", tls: { cert: $W/tls.crt, key: $W/tls.key } }
admin: { address: "127.0.0.1:$ADMIN" }
limits: { max_connections: 10024, header_read_timeout: 300s }
state_dir: $W/state
services:
  - name: app
    versions:
      - { name: stable, revision: bench, endpoints: ["127.0.0.1:$STABLE"], weight: 90 }
      - { name: canary, revision: bench, endpoints: ["127.0.0.1:$CANARY"], weight: 10 }
    guard: { baseline: stable, interval: 1s, window: 30s, min_requests: 50, max_error_rate: 0.05, max_p99_latency: 1s }
EOF

taskset -c "$LOAD_CPU" nginx -p "$W/up" -c "$W/up/nginx.conf" &
PIDS+=($!)
taskset -c "$PROXY_CPU" "$BIN" run -c "$W/veer.yaml" --workers 1 >"$W/veer.out" 2>&1 &
VEER_PID=$!
PIDS+=("$VEER_PID")
taskset -c "$PROXY_CPU" nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" &
PIDS+=($!)
for _ in $(seq 50); do
  grep -q ready "$W/veer.out" 2>/dev/null && [[ -s $W/nginx/nginx.pid ]] && break
  sleep 0.2
done
grep -q ready "$W/veer.out" || die "veer did not start: $(tail -3 "$W/veer.out")"
NGINX_PID=$(pgrep -P "$(cat "$W/nginx/nginx.pid")" | head -1)
[[ -n $NGINX_PID ]] || die "NGINX did not start: $(tail -3 "$W/nginx/error.log")"

HZ=$(getconf CLK_TCK)
# Requests the upstream NGINX has served so far (its own status requests too).
served() { curl -s --max-time 2 "http://127.0.0.1:$STABLE/__stub" | awk 'NR == 3 { print $3 }'; }
ticks() { awk '{ print $14 + $15, $15 }' "/proc/$1/stat"; }
# Segments sent and received over the sockets `ss` selects: out, in.
segments() {
  ss -tinH state established "$1" |
    grep -oE 'segs_out:[0-9]+ segs_in:[0-9]+' |
    awk -F'[: ]' '{ o += $2; i += $4 } END { print o + 0, i + 0 }'
}
# One window of fixed-rate load on $url while "$@" runs.
window() {
  taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -r1 --rate-period=1ms \
    --rps="$(awk -v r="$RATE" 'BEGIN { print r / 64 }')" -n $((RATE * (SECS + 2))) "$url" >"$W/h2load.txt" 2>&1 &
  local load=$!
  PIDS+=("$load")
  sleep 1
  "$@"
  wait "$load" || true
  grep -q "$((RATE * (SECS + 2))) succeeded" "$W/h2load.txt" || die "not every request succeeded: $(grep '^requests:' "$W/h2load.txt")"
}

scheme=HTTPS
[[ $PLAIN == 1 ]] && scheme="cleartext HTTP/1.1"
echo "# $scheme at $RATE req/s, h2load --h1 -c64, ${SECS} s windows ($(uptime | sed 's/.*load average/load average/'))"
for target in veer nginx; do
  if [[ $target == veer ]]; then
    pid=$VEER_PID port=$VEER_TLS plain=$VEER_PLAIN
  else
    pid=$NGINX_PID port=$NGINX_TLS plain=$NGINX_PLAIN
  fi
  url="https://127.0.0.1:$port/"
  [[ $PLAIN == 1 ]] && url="http://127.0.0.1:$plain/" port=$plain
  taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -D 1 "$url" >/dev/null 2>&1 || true
  counted() {
    read -r client_out0 client_in0 < <(segments "( sport = :$port )")
    read -r up_out0 up_in0 < <(segments "( dport = :$STABLE or dport = :$CANARY )")
    read -r all0 sys0 < <(ticks "$pid")
    served0=$(served)
    perf stat -x, -e context-switches,sched:sched_waking,raw_syscalls:sys_enter -p "$pid" \
      -o "$W/stat-$target.csv" -- sleep "$SECS" >/dev/null 2>&1
    served1=$(served)
    read -r all1 sys1 < <(ticks "$pid")
    read -r client_out1 client_in1 < <(segments "( sport = :$port )")
    read -r up_out1 up_in1 < <(segments "( dport = :$STABLE or dport = :$CANARY )")
  }
  window counted
  n=$((served1 - served0 - 1))
  ((n > 0)) || die "no requests counted in the window"
  awk -v t="$target" -v n="$n" -v hz="$HZ" -v all=$((all1 - all0)) -v sys=$((sys1 - sys0)) \
    -v co=$((client_out1 - client_out0)) -v ci=$((client_in1 - client_in0)) \
    -v uo=$((up_out1 - up_out0)) -v ui=$((up_in1 - up_in0)) 'BEGIN {
      printf "%s: %d requests, CPU %.1f us/request (%.0f %% kernel); TCP segments per request: %.2f to and %.2f from clients, %.2f to and %.2f from upstreams\n",
        t, n, all * 1e6 / hz / n, all ? 100 * sys / all : 0, co / n, ci / n, uo / n, ui / n }'
  awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ { name = $3; sub(/^raw_syscalls:sys_enter$/, "system calls", name)
    printf "  %-22s %.2f per request\n", name, $1 / n }' "$W/stat-$target.csv"
  sampled() {
    perf record -q -e cpu-clock -F 1999 -p "$pid" -o "$W/perf-$target.data" -- sleep "$SECS" >/dev/null 2>&1 || true
  }
  window sampled
  echo "  CPU by binary:"
  perf report -i "$W/perf-$target.data" --no-children --sort dso --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -6 | sed 's/^/  /' || true
  echo "  top symbols:"
  perf report -i "$W/perf-$target.data" --no-children --sort dso,sym --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -"$TOP" | cut -c1-150 | sed 's/^/  /' || true
done
