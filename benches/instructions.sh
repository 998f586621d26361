#!/usr/bin/env bash
# Instructions veer executes in user space per proxied request, counted by
# callgrind: exact and repeatable where wall-clock figures on a shared
# 2-core machine swing by ±10 %. The A/B figure for a change to the request
# path: build both binaries, run this on each, compare.
#
#   benches/instructions.sh                       # target/release/veer, HTTP/1.1
#   benches/instructions.sh BIN h2c               # HTTP/2 cleartext to veer
#   benches/instructions.sh BIN https             # TLS 1.3 + HTTP/1.1 to veer
#   CONNECTIONS=8 benches/instructions.sh BIN     # 8 connections (batched wake-ups)
#   WORKERS=2 CONNECTIONS=8 benches/instructions.sh BIN   # two workers: what sharing costs
#   benches/instructions.sh nginx https           # NGINX as the proxy, for comparison
#   TLS13_CIPHERS=TLS_AES_256_GCM_SHA384 benches/instructions.sh BIN https   # the client offers only this suite
#
# veer runs under `valgrind --tool=callgrind` with `--workers $WORKERS` (1) in front of
# two NGINX upstreams (90/10 split, guard on, as in compare.sh); h2load sends
# N1 and then, in a second run, N2 requests; per request = (I(N2) - I(N1)) /
# (N2 - N1), which cancels start-up and shutdown. With one connection (the
# default) every request pays its own wake-ups, as at a moderate fixed rate.
# The run-to-run spread is a few hundred instructions (the number of
# wake-ups varies a little): compare figures of at least two runs each.
#
# With `nginx` in place of BIN, NGINX is the proxy instead (one process,
# `master_process off`, the upstream block and headers of compare.sh's
# config, TLS with the same certificate): the same count for the peer.
#
# Settings: N1=2000 N2=12000 CONNECTIONS=1 WORKERS=1 BASE_PORT=19180 KEEP=0
# TLS13_CIPHERS= (h2load's own list, TLS_AES_128_GCM_SHA256 first).
# With WORKERS=2 valgrind still runs one thread at a time, so the figure
# is the instructions the two workers' hand-offs add (stealing, parking,
# waking each other), not a measure of parallel speed.
# Needs valgrind, nginx, h2load (nghttp2-client) and openssl; installs them
# with apt-get when missing. Loopback only; every process is stopped by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/veer}
MODE=${2:-h1}
N1=${N1:-2000}
N2=${N2:-12000}
CONNECTIONS=${CONNECTIONS:-1}
WORKERS=${WORKERS:-1}
BASE_PORT=${BASE_PORT:-19180}
KEEP=${KEEP:-0}
TLS13_CIPHERS=${TLS13_CIPHERS:-}

die() { echo "instructions.sh: $*" >&2; exit 1; }
[[ $BIN == nginx || -x $BIN ]] || die "no veer binary at $BIN (cargo build --release)"
case $MODE in h1 | h2c | https) ;; *) die "mode must be h1, h2c or https, not $MODE" ;; esac

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get install -y "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d /tmp/veer-instructions.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

PROXY=$BASE_PORT STABLE=$((BASE_PORT + 1)) CANARY=$((BASE_PORT + 2))
TLS=$((BASE_PORT + 3)) H2C=$((BASE_PORT + 4)) ADMIN=$((BASE_PORT + 10))

cat >"$WORK/upstreams.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$STABLE; location / { return 200 "stable\n"; } }
  server { listen 127.0.0.1:$CANARY; location / { return 200 "canary\n"; } }
}
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 2 -subj /CN=localhost 2>/dev/null
cat >"$WORK/veer.yaml" <<EOF
listeners:
  - { name: public, address: "127.0.0.1:$PROXY" }
  - { name: secure, address: "127.0.0.1:$TLS", tls: { cert: $WORK/tls.crt, key: $WORK/tls.key } }
admin: { address: "127.0.0.1:$ADMIN" }
services:
  - name: web
    versions:
      - { name: stable, revision: "1", endpoints: ["127.0.0.1:$STABLE"], weight: 90 }
      - { name: canary, revision: "2", endpoints: ["127.0.0.1:$CANARY"], weight: 10 }
    guard: { baseline: stable, max_error_rate: 0.05, max_p95_latency: 500ms }
EOF

# NGINX as the proxy: one process, so callgrind sees all of its work.
mkdir -p "$WORK/proxy"
cat >"$WORK/proxy/nginx.conf" <<EOF
master_process off;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream app {
    server 127.0.0.1:$STABLE weight=9;
    server 127.0.0.1:$CANARY weight=1;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$PROXY;
    listen 127.0.0.1:$H2C http2;
    listen 127.0.0.1:$TLS ssl; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key;
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

nginx -p "$WORK" -c "$WORK/upstreams.conf" &
PIDS+=($!)
sleep 0.3

h2c_port=$PROXY
[[ $BIN == nginx ]] && h2c_port=$H2C
case $MODE in
  h1) load=(h2load --h1 "http://127.0.0.1:$PROXY/") ;;
  h2c) load=(h2load "http://127.0.0.1:$h2c_port/") ;;
  https) load=(h2load --h1 ${TLS13_CIPHERS:+"--tls13-ciphers=$TLS13_CIPHERS"} "https://127.0.0.1:$TLS/") ;;
esac

# Instructions of one veer process serving N requests, start to exit.
count() {
  local n=$1 out="$WORK/callgrind.$1"
  if [[ $BIN == nginx ]]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" >"$WORK/veer.out" 2>"$WORK/veer.err" &
  else
    # veer's own tunables, given here: its start-up re-exec (src/heap.rs)
    # would leave callgrind behind.
    GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1} \
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$BIN" run -c "$WORK/veer.yaml" --workers "$WORKERS" >"$WORK/veer.out" 2>"$WORK/veer.err" &
  fi
  local vpid=$!
  PIDS+=("$vpid")
  if [[ $BIN == nginx ]]; then
    # No line to wait for: one request (the same in both runs) says it serves.
    for _ in $(seq 120); do
      "${load[@]}" -c 1 -n 1 2>&1 | grep -q '1 succeeded' && break
      sleep 0.5
    done
  else
    for _ in $(seq 120); do grep -q ready "$WORK/veer.out" 2>/dev/null && break; sleep 0.5; done
    grep -q ready "$WORK/veer.out" || die "veer did not start under valgrind: $(tail -3 "$WORK/veer.err")"
  fi
  local done
  done=$("${load[@]}" -c "$CONNECTIONS" -n "$n" 2>&1 | awk '/^requests:/ {print $8}')
  [[ $done == "$n" ]] || die "only $done of $n requests succeeded"
  if [[ $BIN == nginx ]]; then kill -QUIT "$vpid"; else kill -INT "$vpid"; fi
  wait "$vpid" 2>/dev/null || true
  awk '/^totals:/ {s += $2} END {print s}' "$out"
}

i1=$(count "$N1")
i2=$(count "$N2")
per=$(((i2 - i1) / (N2 - N1)))
if [[ $BIN == nginx ]]; then
  version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
else
  version="veer $("$BIN" --version 2>&1 | head -1)"
fi
echo "$version, $MODE, $CONNECTIONS connection(s), $WORKERS worker(s): $per instructions per request (I($N1)=$i1, I($N2)=$i2)"
