#!/usr/bin/env python3
"""Holds idle HTTP/1.1 keep-alive client connections open, for
benches/compare.sh's `IDLE_RATES` loads: N connections that each made one
request, read its answer and then send nothing, beside the measured
traffic.

Opens them in batches (clients arrive over time, not in one burst), prints
"ready N" once every connection has had its answer, and then holds them
until it is stopped (SIGTERM or SIGINT). Loopback only; spreads
the connections over source addresses 127.0.0.1-127.0.0.8 and raises its
own open-files limit to the hard limit.

Usage: idle_clients.py HOST PORT COUNT
"""
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from connection_memory import open_batch  # noqa: E402

BATCH = 500


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if not host.startswith("127."):
        sys.exit("idle_clients.py: loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if want > hard:
        sys.exit(f"idle_clients.py: {count} connections need {want} open files; "
                 f"the hard limit here is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    held = []
    while len(held) < count:
        n = min(BATCH, count - len(held))
        held += open_batch((host, port), n, "h1", len(held))
        time.sleep(0.05)
    print(f"ready {len(held)}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
