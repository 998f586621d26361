#!/usr/bin/env bash
# benches/syscalls.sh — system calls and epoll wake-ups per request, veer
# beside NGINX and HAProxy, in the setup of benches/compare.sh (the same
# upstream NGINXes and proxy configs; proxies on CPU 0, h2load at fixed
# rates on CPU 1).
#
#     benches/syscalls.sh                         # HTTP/1.1 at 5,000 and 12,000 req/s, h2c at 5,000
#     SKIP_BUILD=1 benches/syscalls.sh            # use target/release/veer as it is
#     SYSCALL_LOADS="5000 tls-5000" benches/syscalls.sh
#     TARGETS="veer veer-uring" SYSCALL_LOADS="5000 12000" benches/syscalls.sh
#                                                 # epoll and io_uring, one binary
#                                                 # (cargo build --release --features io-uring)
#
# Each proxy serves each load while `perf stat -e 'syscalls:sys_enter_*'`
# counts every system call of all its processes over SYSCALL_SECONDS (3);
# the counts are divided by the requests the upstreams served meanwhile.
# Prints one table per load (all calls per request, epoll_wait, reads,
# writes, futex, the rest over 0.05 per request, and CPU per request over
# the same window) and writes it to target/bench-compare/syscalls.md; the
# raw per-call counts go beside it. Counts do not depend on how busy the
# machine is (only on how requests batch into wake-ups); the CPU figure
# does, and is an upper bound on a loaded machine.
#
# SYSCALL_DEPTH=4 has h2load pipeline 4 requests per HTTP/1.1 connection
# (4 streams at once over h2c): whether responses are batched into writes.
#
# Settings: those of compare.sh (TARGETS, CONNECTIONS, PROXY_CPU, LOAD_CPU,
# BASE_PORT, SKIP_BUILD, KEEP, VEER_BIN), and SYSCALL_LOADS (rates; `h2-R`
# for h2c, `tls-R` for HTTPS), SYSCALL_SECONDS. Needs perf with access to
# the syscall tracepoints.
set -euo pipefail
cd "$(dirname "$0")/.."
export SYSCALLS=1 DOCS=0
export TARGETS=${TARGETS:-veer nginx haproxy}
case " ${SYSCALL_LOADS:-5000 12000 h2-5000} " in
  *" tls-"*) ;;
  *) export TLS_RATES="" ;;
esac
exec benches/compare.sh
