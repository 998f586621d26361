#!/usr/bin/env bash
# benches/scale_scrape.sh — does a Prometheus scrape move the request p99?
# veer with N services (benches/gen_config.py, 10,000 by default), of which
# ACTIVE (100) have had a request, takes a constant RATE (5,000) req/s
# through its first service for DURATION seconds, twice: without anyone
# reading /metrics, then with /metrics read every second. Loopback only.
#
#     benches/scale_scrape.sh
#     SERVICES=1000 RATE=2000 DURATION=5 benches/scale_scrape.sh
#     BIN=/tmp/veer-old benches/scale_scrape.sh        # a before/after
#
# Prints, per run: requests, p50/p99/p99.9 µs (h2load's per-request log,
# open-loop at the fixed rate over CONNECTIONS connections), scrapes done and
# their mean size and time. Settings: SERVICES=10000 ACTIVE=100 RATE=5000
# DURATION=10 CONNECTIONS=32 PROXY_CPU=0 LOAD_CPU=1 BASE_PORT=18480
# BIN=target/release/veer (SKIP_BUILD=1 to use it as it is).
# Needs python3, curl, nginx (the upstream), h2load (nghttp2-client):
# apt-get install -y nginx nghttp2-client curl. Every process it starts is
# stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/veer}
SERVICES=${SERVICES:-10000}
ACTIVE=${ACTIVE:-100}
RATE=${RATE:-5000}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18480}
SKIP_BUILD=${SKIP_BUILD:-0}

LISTEN=$BASE_PORT
ADMIN=$((BASE_PORT + 1))
UP1=$((BASE_PORT + 2))
UP2=$((BASE_PORT + 3))
UPC=$((BASE_PORT + 4))

die() { echo "scale_scrape.sh: $*" >&2; exit 1; }
need=()
for tool in python3:python3 curl:curl nginx:nginx h2load:nghttp2-client; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get install -y "${need[@]}" >/dev/null || die "cannot install ${need[*]}"
fi
if [[ $SKIP_BUILD != 1 && $BIN == "$ROOT/target/release/veer" ]]; then
    (cd "$ROOT" && cargo build --release --bin veer)
fi
[[ -x $BIN ]] || die "no veer binary at $BIN"

DIR=$(mktemp -d /tmp/veer-scrape.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

mkdir -p "$DIR/up/logs"
cat >"$DIR/up/nginx.conf" <<EOF
worker_processes 1;
error_log stderr error;
pid $DIR/up/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP1; location / { return 200 "stable\n"; } }
    server { listen 127.0.0.1:$UP2; location / { return 200 "stable\n"; } }
    server { listen 127.0.0.1:$UPC; location / { return 200 "canary\n"; } }
}
EOF
taskset -c "$LOAD_CPU" nginx -p "$DIR/up" -c "$DIR/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# The first ACTIVE services route to the live upstream, so each can be
# given a request; the rest to ports where nothing listens.
python3 "$ROOT/benches/gen_config.py" "$SERVICES" --listen "$LISTEN" --admin "$ADMIN" \
    --upstreams "$UP1,$UP2,$UPC" --idle-series-after 10m >"$DIR/veer.yaml"
mkdir -p "$DIR/state"
(cd "$DIR" && taskset -c "$PROXY_CPU" "$BIN" run -c veer.yaml --workers 1 >"$DIR/log" 2>&1) &
PIDS+=($!)
python3 "$ROOT/benches/scale_probe.py" ready "$LISTEN" svc-0.example.com "$(date +%s.%N)" 120 >/dev/null ||
    die "veer did not get ready: $(tail -5 "$DIR/log")"
# One request through each of ACTIVE services (the last one routes to the
# upstream too; the others answer 502 fast, which counts as traffic all the same).
python3 "$ROOT/benches/scale_probe.py" traffic "$LISTEN" "$ACTIVE" 0 >/dev/null 2>&1 || true

run() { # label scrape(0|1)
    local scraper="" log=$DIR/h2load.log
    rm -f "$log" "$DIR/scrapes"
    if [[ $2 == 1 ]]; then
        (
            while true; do
                curl -s -o /dev/null -w '%{size_download} %{time_total}\n' \
                    "http://127.0.0.1:$ADMIN/metrics" >>"$DIR/scrapes"
                sleep 1
            done
        ) &
        scraper=$!
    fi
    local per out
    per=$(awk -v r="$RATE" -v c="$CONNECTIONS" 'BEGIN { printf "%.4g", r / c }')
    out=$(taskset -c "$LOAD_CPU" h2load --h1 -t1 -c"$CONNECTIONS" -r1 --rate-period=1ms \
        --rps="$per" -n $((RATE * DURATION)) -H ":authority: svc-0.example.com" \
        --log-file="$log" "http://127.0.0.1:$LISTEN/" 2>&1) || die "h2load: $out"
    [[ -n $scraper ]] && { kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true; }
    local ok
    ok=$(awk '/^status codes:/ { print $3 }' <<<"$out")
    # (h2load sends `:authority` as the one Host header; `-H host:` would
    # add a second, which veer refuses with 400.)
    local figures
    figures=$(cut -f3 "$log" | sort -n | awk '
        { v[NR] = $1 }
        END { n = NR; printf "%d %d %d %d", n, q(0.50), q(0.99), q(0.999) }
        function q(p,   r) { r = int(p * n); if (r < p * n) r++; if (r < 1) r = 1; return v[r] }')
    local scrapes="—"
    if [[ -s $DIR/scrapes ]]; then
        scrapes=$(awk '{ n++; b += $1; t += $2 } END { printf "%d scrapes, %.0f KB, %.1f ms each", n, b / n / 1024, t / n * 1000 }' "$DIR/scrapes")
    fi
    read -r n p50 p99 p999 <<<"$figures"
    printf '%-16s %8s %8s %8s %8s %8s  %s\n' "$1" "$n" "${ok:-?}" "$p50" "$p99" "$p999" "$scrapes"
}

printf '%-16s %8s %8s %8s %8s %8s  %s\n' run requests 2xx p50_us p99_us p99.9_us scrapes
run "no scrape" 0
run "scrape every 1s" 1
