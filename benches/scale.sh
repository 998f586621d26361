#!/usr/bin/env bash
# benches/scale.sh — what veer costs as its config grows, beside NGINX and
# HAProxy given the same services. Loopback only.
#
#     benches/scale.sh                          # 100, 1,000, 10,000 services, all three
#     SIZES="10000" TARGETS=veer benches/scale.sh
#     BIN=/tmp/veer-old SIZES=10000 TARGETS=veer DOCS=0 benches/scale.sh   # a before/after
#
# The config (benches/gen_config.py): N services, each with two hostnames
# (one exact, one wildcard), a stable version with two endpoints and a canary
# with one (90/10), a guard. The endpoints of every service but the first
# and the last are loopback ports where nothing listens (nothing is sent to
# them); those two route to one NGINX upstream that answers `stable` on two
# ports and `canary` on a third.
#
# Per proxy and size:
#   ready        seconds from exec to the first 200 through the last service
#   cpu idle     utime + stime over IDLE_CPU_SECONDS of no traffic, % of a core
#   rss idle     memory two seconds later: PSS summed over the proxy's
#                processes (see rss_kb)
#   flip         a one-weight change of the last service (100/0 <-> 0/100),
#                10 times: from the new file landing (rename; NGINX and
#                HAProxy are told to reload, veer watches the file) to the
#                first answer from the version given the weight; median and
#                max, ms
#   rss reloads  the same after those 10 reloads (old workers gone)
#   latency      p50/p99 of 2,000 sequential keep-alive GETs (Python client,
#                so the client's own cost is in it) through the first
#                service, the last and the last's wildcard host, µs
#   metrics      veer: /metrics bytes at idle, and after one request through
#                each of 100 services (with `telemetry.idle_series_after`
#                set, as a large install would)
#   check        veer: `veer check` seconds and max RSS
#
# Settings: SIZES="100 1000 10000" TARGETS="veer nginx haproxy"
#   BIN=target/release/veer (SKIP_BUILD=1 to use it as it is)
#   PROXY_CPU=0 LOAD_CPU=1 BASE_PORT=18280 DOCS=1 (write docs/benchmarks.md)
#   IDLE_CPU_SECONDS=30 (how long idle CPU is taken over)
#   FLIPS=10 FLIP_TIMEOUT=60 (seconds one flip may take; a round past it is
#   counted as a timeout, not timed)
#   IDLE_SERIES_AFTER=10m  KEEP=0 (keep the temp dir; each flip time is in flips-TARGET-N.txt there)
#   READ_WHOLE=1: veer's file gets a comment with `&`, so veer reads it whole
#   (no per-service read, no reuse on reload): the cost of the whole read
#   FLIP_STAGES=1: veer logs the stages of each reload (debug lines with
#   `took_us` and `*_us` fields: watch, read, parse, publish, write), and
#   they are printed after the flips, per stage the median of the rounds
# Needs python3, curl, nginx, haproxy (apt-get install -y nginx haproxy curl).
# Every process it starts is stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/veer}
SIZES=${SIZES:-100 1000 10000}
TARGETS=${TARGETS:-veer nginx haproxy}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18280}
DOCS=${DOCS:-1}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
IDLE_SERIES_AFTER=${IDLE_SERIES_AFTER-10m}
FLIPS=${FLIPS:-10}
FLIP_TIMEOUT=${FLIP_TIMEOUT:-60}
IDLE_CPU_SECONDS=${IDLE_CPU_SECONDS:-30}
export FLIP_TIMEOUT
READ_WHOLE=${READ_WHOLE:-0}
FLIP_STAGES=${FLIP_STAGES:-0}

LISTEN=$((BASE_PORT))
ADMIN=$((BASE_PORT + 1))
UP1=$((BASE_PORT + 2))
UP2=$((BASE_PORT + 3))
UPC=$((BASE_PORT + 4))
GEN="python3 $ROOT/benches/gen_config.py"
PROBE="taskset -c $LOAD_CPU python3 $ROOT/benches/scale_probe.py"

die() { echo "scale.sh: $*" >&2; exit 1; }
need=()
for tool in python3 curl nginx haproxy; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get install -y "${need[@]}" >/dev/null || die "cannot install ${need[*]}"
fi
if [[ $SKIP_BUILD != 1 && $BIN == "$ROOT/target/release/veer" ]]; then
    (cd "$ROOT" && cargo build --release --bin veer)
fi
[[ -x $BIN ]] || die "no veer binary at $BIN"

DIR=$(mktemp -d /tmp/veer-scale.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $DIR/nginx.pid ]] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
    [[ $KEEP == 1 ]] && echo "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

# The upstream: one NGINX worker, `stable` on two ports, `canary` on a third.
mkdir -p "$DIR/up/logs"
cat >"$DIR/up/nginx.conf" <<EOF
worker_processes 1;
error_log stderr error;
pid $DIR/up/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    server { listen 127.0.0.1:$UP1; location / { return 200 "stable\n"; } }
    server { listen 127.0.0.1:$UP2; location / { return 200 "stable\n"; } }
    server { listen 127.0.0.1:$UPC; location / { return 200 "canary\n"; } }
}
EOF
taskset -c "$LOAD_CPU" nginx -p "$DIR/up" -c "$DIR/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
sleep 0.3

# Memory (kB) of a process and its children: the sum of their PSS (each
# page shared between them, as NGINX's and HAProxy's forked workers share
# the master's parsed config, counted once, split between them), or VmRSS
# where smaps_rollup is missing. Summing VmRSS would count those pages once
# per process.
rss_kb() {
    local total=0 pid kb
    for pid in $1 $(pgrep -P "$1" || true); do
        kb=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null ||
            awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# utime + stime of a process and its children, in clock ticks.
cpu_ticks() {
    local total=0 pid
    for pid in $1 $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Median and max of the numeric lines; rounds that timed out make the max
# ">LIMIT" and are counted after it ("(2 timeouts)").
median_max() {
    sort -n | awk -v limit="$((FLIP_TIMEOUT * 1000))" '
        $1 == "timeout" { t++; next }
        $1 ~ /^[0-9.]+$/ { a[++n] = $1 }
        END {
            med = n > 0 ? a[int((n + 1) / 2)] : "—"
            max = t > 0 ? ">" limit : (n > 0 ? a[n] : "—")
            if (t > 0) max = max "(" t "_timeouts)"
            printf "%s %s", med, max
        }'
}

# Waits (up to 60 s) until the old workers a reload left are gone: the
# master and one worker remain.
settle_workers() {
    local pid=$1 i
    for i in $(seq 1 600); do
        (($(pgrep -P "$pid" | wc -l) <= 1)) && return 0
        sleep 0.1
    done
    echo "scale.sh: old workers of $pid still running after 60 s" >&2
}

RESULTS=$DIR/results.tsv
printf 'target\tservices\tready_s\trss_idle_mb\tcpu_idle_pct\tflip_median_ms\tflip_max_ms\trss_reloads_mb\tfirst_p50_us\tfirst_p99_us\tlast_p50_us\tlast_p99_us\twild_p50_us\twild_p99_us\tmetrics_idle_kb\tmetrics_100_kb\tcheck_s\tcheck_mb\n' >"$RESULTS"

run_one() {
    local target=$1 n=$2 last=$(($2 - 1)) conf pid since reload_cmd="" ext
    local work=$DIR/$target-$n
    mkdir -p "$work/logs"
    case $target in
        veer) ext=yaml ;;
        nginx) ext=conf ;;
        haproxy) ext=cfg ;;
    esac
    local extra=()
    [[ $target == veer ]] && extra=(--idle-series-after "$IDLE_SERIES_AFTER" --admin "$ADMIN")
    for w in a:0,100 b:100,0; do
        $GEN "$n" --format "$target" --listen "$LISTEN" --upstreams "$UP1,$UP2,$UPC" \
            --last-weights "${w#*:}" "${extra[@]}" >"$work/${w%%:*}.$ext"
    done
    if [[ $target == haproxy ]]; then
        $GEN "$n" --format map >"$work/hosts.map"
        $GEN "$n" --format wildmap >"$work/wild.map"
        sed -i "s#MAPFILE#$work/hosts.map#g; s#WILDFILE#$work/wild.map#g" "$work/a.cfg" "$work/b.cfg"
    fi
    # READ_WHOLE=1: veer reads its file whole on every load and reload, as
    # before it read a file service by service (the before of a before/after).
    if [[ $target == veer && $READ_WHOLE == 1 ]]; then
        for f in "$work/a.yaml" "$work/b.yaml"; do echo '# & (read whole)' >>"$f"; done
    fi
    [[ $target == nginx ]] && sed -i "s#PIDFILE#$work/nginx.pid#" "$work/a.conf" "$work/b.conf"
    conf=$work/config.$ext
    cp "$work/b.$ext" "$conf"
    since=$(date +%s.%N)
    case $target in
        veer)
            if [[ $FLIP_STAGES == 1 ]]; then
                export VEER_LOG="info,veer::reload=debug,veer::control=debug,veer::config=debug,veer::watch=debug"
            fi
            taskset -c "$PROXY_CPU" "$BIN" run -c "$conf" --workers 1 >"$work/log" 2>&1 &
            pid=$!
            unset VEER_LOG ;;
        nginx)
            taskset -c "$PROXY_CPU" nginx -p "$work" -c "$conf" -g 'daemon off;' >"$work/log" 2>&1 &
            pid=$!
            reload_cmd="kill -HUP $pid" ;;
        haproxy)
            taskset -c "$PROXY_CPU" haproxy -W -f "$conf" >"$work/log" 2>&1 &
            pid=$!
            reload_cmd="kill -USR2 $pid" ;;
    esac
    PIDS+=("$pid")
    local ready
    ready=$($PROBE ready "$LISTEN" "svc-$last.example.com" "$since" 120) || ready=timeout
    sleep 2
    local rss_idle=$(($(rss_kb "$pid") / 1024))
    # CPU the proxy spends with no traffic at all: tickers, the guard.
    local t0 t1
    t0=$(cpu_ticks "$pid"); sleep "$IDLE_CPU_SECONDS"; t1=$(cpu_ticks "$pid")
    local cpu_idle
    cpu_idle=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v s="$IDLE_CPU_SECONDS" 'BEGIN { printf "%.1f", t * 100 / hz / s }')
    local metrics_idle="" metrics_100="" check_s="" check_mb=""
    if [[ $target == veer ]]; then
        metrics_idle=$(($(curl -s "http://127.0.0.1:$ADMIN/metrics" | wc -c) / 1024))
    fi
    local first last_l wild
    first=$($PROBE latency "$LISTEN" "svc-0.example.com" 2000) || first="err err"
    last_l=$($PROBE latency "$LISTEN" "svc-$last.example.com" 2000) || last_l="err err"
    wild=$($PROBE latency "$LISTEN" "x.svc-$last.internal" 2000) || wild="err err"
    local flips
    flips=$($PROBE flip "$LISTEN" "svc-$last.example.com" "$conf" "$work/a.$ext" "$work/b.$ext" "$FLIPS" "$reload_cmd" | tee "$work/flips-$target-$n.txt" | median_max) || flips="err err"
    if [[ $target == veer && $FLIP_STAGES == 1 ]]; then
        # The last FLIPS reloads' stages, median per field, µs.
        echo "stages of a one-weight change at $n services (median of $FLIPS, µs):"
        grep -E 'watched file: change signalled|config read service by service|config file read|control: snapshot published|control: config applied|reload: read and applied' "$work/log" |
            grep -v 'parsed=[0-9][0-9]' | tail -n $((FLIPS * 6)) |
            python3 -c '
import re, sys, statistics
stages = {}
for line in sys.stdin:
    what = re.search(r"(DEBUG|INFO) (.*?) \w+=", line).group(2)
    for key, value in re.findall(r"(\w+_us)=(\d+)", line):
        stages.setdefault(f"{what}: {key}", []).append(int(value))
for stage, values in stages.items():
    print(f"  {stage:60} {statistics.median(values):>9.0f}")
'
    fi
    sleep 3
    [[ $target != veer ]] && settle_workers "$pid"
    local rss_reloads=$(($(rss_kb "$pid") / 1024))
    if [[ $target == veer ]]; then
        $PROBE traffic "$LISTEN" 100 1
        metrics_100=$(($(curl -s "http://127.0.0.1:$ADMIN/metrics" | wc -c) / 1024))
        read -r check_s check_mb < <(/usr/bin/time -f '%e %M' taskset -c "$PROXY_CPU" "$BIN" check -c "$conf" 2>&1 >/dev/null | tail -1)
        check_mb=$((check_mb / 1024))
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$target" "$n" "$ready" "$rss_idle" "$cpu_idle" "${flips% *}" "${flips#* }" "$rss_reloads" \
        "${first% *}	${first#* }" "${last_l% *}	${last_l#* }" "${wild% *}	${wild#* }" \
        "$metrics_idle" "$metrics_100" "$check_s" "$check_mb" | tee -a "$RESULTS"
}

for n in $SIZES; do
    for target in $TARGETS; do
        run_one "$target" "$n"
    done
done

column -t -s $'\t' "$RESULTS"
mkdir -p "$ROOT/target/bench-scale"
cp "$RESULTS" "$ROOT/target/bench-scale/results.tsv"

if [[ $DOCS == 1 ]]; then
    DOC=$ROOT/docs/benchmarks.md
    {
        echo "<!-- scale.sh -->"
        echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores (proxy pinned to CPU $PROXY_CPU, client and upstream to CPU $LOAD_CPU; other work was running on the machine, so compare within a row, not with other days)."
        echo
        echo "| proxy | services | ready s | memory idle MB (PSS) | CPU idle % | one-weight change ms (median / max of $FLIPS) | memory after $FLIPS reloads MB (PSS) | p50/p99 µs first | p50/p99 µs last | p50/p99 µs wildcard | /metrics KB idle / 100 active | check s / MB |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        tail -n +2 "$RESULTS" | while IFS=$'\t' read -r t n r ri ci fm fx rr f5 f9 l5 l9 w5 w9 mi m1 cs cm; do
            m="—"; [[ -n $mi ]] && m="$mi / $m1"
            c="—"; [[ -n $cs ]] && c="$cs / $cm"
            echo "| $t | $n | $r | $ri | $ci | $fm / $fx | $rr | $f5 / $f9 | $l5 / $l9 | $w5 / $w9 | $m | $c |"
        done
        echo "<!-- /scale.sh -->"
    } >"$DIR/section.md"
    if grep -q '<!-- scale.sh -->' "$DOC"; then
        python3 - "$DOC" "$DIR/section.md" <<'EOF'
import re, sys
doc, section = open(sys.argv[1]).read(), open(sys.argv[2]).read().strip()
doc = re.sub(r"<!-- scale.sh -->.*?<!-- /scale.sh -->", lambda _: section, doc, flags=re.S)
open(sys.argv[1], "w").write(doc)
EOF
    else
        { echo; echo "## Scale: cost as the config grows (benches/scale.sh)"; echo; cat "$DIR/section.md"; } >>"$DOC"
    fi
fi
