#!/usr/bin/env python3
"""Memory per client connection, for sizing (docs/deploy.md): starts veer on
loopback, opens connections in steps, has each make one HTTP/1.1 keep-alive
request (answered by veer itself: a 404 for a host no service names, so no
upstream is involved) and then stay open and idle, and reads veer's VmRSS
after each step. Prints KiB per connection between steps and MiB per 1,000.

Loopback only, bounded by the counts given; raises its own open-files limit
to what it needs.

Usage: connection_memory.py BINARY [COUNT ...]   (default 1000 5000 10000)
"""
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
services:
  - name: web
    match: { hosts: [web] }
    versions:
      - { name: stable, revision: "1", endpoints: [127.0.0.1:9], weight: 1 }
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: nobody\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def settle(pid):
    """RSS once it stops moving (allocator and kernel catch up)."""
    last = rss_kib(pid)
    for _ in range(20):
        time.sleep(0.2)
        now = rss_kib(pid)
        if abs(now - last) < 16:
            return now
        last = now
    return last


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 64
    binary = sys.argv[1]
    counts = [int(c) for c in sys.argv[2:]] or [1000, 5000, 10000]
    need = max(counts) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    with tempfile.TemporaryDirectory() as dir:
        path = os.path.join(dir, "veer.yaml")
        with open(path, "w") as f:
            f.write(CONFIG)
        proc = subprocess.Popen([binary, "run", "-c", path], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            addr = None
            for line in proc.stdout:
                m = re.match(r"veer: listener public on (\S+):(\d+)", line)
                if m:
                    addr = (m.group(1), int(m.group(2)))
                if line.startswith("veer: ready"):
                    break
            if addr is None:
                print("veer did not start", file=sys.stderr)
                return 1
            base = settle(proc.pid)
            print(f"veer idle: {base} KiB RSS")
            conns, previous, previous_n = [], base, 0
            for n in counts:
                while len(conns) < n:
                    s = socket.create_connection(addr)
                    s.sendall(REQUEST)
                    conns.append(s)
                for s in conns[previous_n:]:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = s.recv(4096)
                        if not chunk:
                            raise RuntimeError("veer closed a connection")
                        data += chunk
                now = settle(proc.pid)
                per = (now - previous) / (n - previous_n)
                print(f"{n:>6} connections: {now} KiB RSS, {per:.1f} KiB per connection "
                      f"over the last {n - previous_n} ({per * 1000 / 1024:.1f} MiB per 1,000)")
                previous, previous_n = now, n
            total = (previous - base) / previous_n
            print(f"overall: {total:.1f} KiB per idle keep-alive connection "
                  f"({total * 1000 / 1024:.1f} MiB per 1,000)")
            for s in conns:
                s.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
