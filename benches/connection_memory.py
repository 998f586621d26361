#!/usr/bin/env python3
"""Memory per idle client connection, for sizing (docs/deploy.md) and beside
NGINX and HAProxy (docs/benchmarks.md).

Starts the server on loopback, opens connections in steps and leaves them
idle, and reads the server's resident memory (VmRSS, summed over its
processes) after each step. Prints KiB per connection between steps and MiB
per 1,000.

  h1   each connection makes one HTTP/1.1 keep-alive request (answered by
       the server itself: 404, no upstream) and then stays open, idle
  h2c  each connection sends the HTTP/2 preface and SETTINGS, ACKs the
       server's, and stays open with no stream
  h2c-used  as h2c, then one request on stream 1 (answered by the server
       itself: 404) read to its end; the connection stays open, idle, with
       its header tables holding what the request put there

Loopback only, bounded by the counts given. Raises its own open-files limit
(the server inherits it; root may raise the hard limit) and spreads the
connections over source addresses 127.0.0.1-127.0.0.8, so 50,000 do not run
out of ephemeral ports. The idle limits are raised in each server's config so
nothing is closed while measuring.

Usage: connection_memory.py [--server veer|nginx|haproxy] [--proto h1|h2c|h2c-used]
                            [--wake-all] [BINARY] [COUNT ...]
                                                     (default 1000 5000 10000)
--wake-all (h1) then sends a request on every idle connection at once and
checks each is answered: parked sockets all woken together.
BINARY is veer's (default target/release/veer); NGINX and HAProxy are found
on PATH (apt-get install nginx haproxy). The server inherits the
environment: MALLOC_ARENA_MAX=1 shows how much of veer's figure is glibc
keeping one arena per worker thread.
"""
import argparse
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

VEER = """listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
limits:
  max_connections: 200000
  header_read_timeout: 1h
services:
  - name: web
    match: { hosts: [web] }
    versions:
      - { name: stable, revision: "1", endpoints: [127.0.0.1:9], weight: 1 }
"""
NGINX = """worker_processes 1;
worker_rlimit_nofile {nofile};
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections {maxconn}; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 3600s;
  http2_idle_timeout 3600s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    listen 127.0.0.1:{h2port} http2 backlog=4096;
    location / {{ return 404; }}
  }}
}}
"""
HAPROXY = """global
  nbthread 1
  maxconn {maxconn}

defaults
  mode http
  option http-keep-alive
  timeout client 3600s
  timeout http-keep-alive 3600s
  timeout http-request 3600s

frontend public
  bind 127.0.0.1:{port}
  bind 127.0.0.1:{h2port} proto h2
  http-request return status 404
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: nobody\r\n\r\n"
# The preface, an empty SETTINGS, and the ACK of the server's SETTINGS.
H2_HELLO = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
# GET http://nobody/ on stream 1, END_STREAM | END_HEADERS: `:method GET`,
# `:scheme http`, `:path /` from the static table, `:authority` a literal the
# server's decoder indexes, and a user-agent it indexes too.
H2_BLOCK = (b"\x82\x86\x84\x41\x06nobody"
            b"\x7a\x0cbench-client")
H2_REQUEST = (len(H2_BLOCK).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + H2_BLOCK)
SOURCES = [f"127.0.0.{i}" for i in range(1, 9)]


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                found = re.search(r"VmRSS:\s+(\d+)", f.read())
        except FileNotFoundError:
            continue
        if found:  # not a zombie
            total += int(found.group(1))
    return total


def settle(pids):
    """RSS once it stops moving (allocator and kernel catch up)."""
    last = rss_kib(pids)
    for _ in range(30):
        time.sleep(0.3)
        now = rss_kib(pids)
        if abs(now - last) < 16:
            return now
        last = now
    return last


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def start(server, binary, proto, work, maxconn):
    """Starts the server; returns (process, pids to measure, address)."""
    if server == "veer":
        path = os.path.join(work, "veer.yaml")
        with open(path, "w") as f:
            f.write(VEER)
        proc = subprocess.Popen([binary, "run", "-c", path], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        addr = None
        for line in proc.stdout:
            m = re.match(r"veer: listener public on (\S+):(\d+)", line)
            if m:
                addr = (m.group(1), int(m.group(2)))
            if line.startswith("veer: ready"):
                break
        if addr is None:
            raise RuntimeError("veer did not start")
        return proc, [proc.pid], addr
    port, h2port = free_port(), free_port()
    if server == "nginx":
        path = os.path.join(work, "nginx.conf")
        with open(path, "w") as f:
            f.write(NGINX.format(dir=work, port=port, h2port=h2port, maxconn=maxconn,
                                 nofile=maxconn + 64))
        cmd = [shutil.which("nginx") or "nginx", "-p", work, "-c", path, "-g", "daemon off;"]
    else:
        path = os.path.join(work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(HAPROXY.format(port=port, h2port=h2port, maxconn=maxconn))
        cmd = [shutil.which("haproxy") or "haproxy", "-db", "-f", path]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = ("127.0.0.1", h2port if proto.startswith("h2c") else port)
    for _ in range(100):
        try:
            socket.create_connection(addr, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(0.5)
    return proc, [proc.pid] + children(proc.pid), addr


def h2_stream_ended(data):
    """Whether the frames in `data` include the end of stream 1."""
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        kind, flags = data[at + 3], data[at + 4]
        stream = int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFFFFFF
        if at + 9 + length > len(data):
            return False
        if kind == 7:
            raise RuntimeError("the server sent GOAWAY")
        if stream == 1 and kind in (0, 1) and flags & 1:
            return True
        at += 9 + length
    return False


def answered(data, proto):
    """Whether `data` holds the whole answer to what the connection said."""
    if proto == "h1":
        return b"\r\n\r\n" in data
    if proto == "h2c":
        return len(data) >= 9  # the server's SETTINGS frame (or more)
    return h2_stream_ended(data)


def open_batch(addr, n, proto, first):
    """Opens n connections, has each say hello and read its answer."""
    conns = []
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((SOURCES[(first + i) % len(SOURCES)], 0))
        s.connect(addr)
        s.sendall({"h1": REQUEST, "h2c": H2_HELLO, "h2c-used": H2_HELLO + H2_REQUEST}[proto])
        conns.append(s)
    for s in conns:
        s.settimeout(30)
        data = b""
        while not answered(data, proto):
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("the server closed a connection")
            data += chunk
    # Drain whatever else came (h2: the ACK of our SETTINGS, WINDOW_UPDATE).
    time.sleep(0.2)
    for s in conns:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
        except BlockingIOError:
            pass
    return conns


def wake_all(conns):
    """Sends a request on every connection at once; counts the answers."""
    for s in conns:
        s.setblocking(True)
        s.sendall(REQUEST)
    answered = 0
    for s in conns:
        s.settimeout(30)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            continue
        answered += data.startswith(b"HTTP/1.1 ")
    return answered


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["veer", "nginx", "haproxy"], default="veer")
    parser.add_argument("--proto", choices=["h1", "h2c", "h2c-used"], default="h1")
    parser.add_argument("binary", nargs="?", default="target/release/veer")
    parser.add_argument("counts", nargs="*", type=int)
    parser.add_argument("--wake-all", action="store_true",
                        help="h1: at the end, send a request on every idle connection at once "
                             "and check that each is answered (a wake-up storm of parked sockets)")
    args = parser.parse_args()
    if args.binary.isdigit():
        args.counts.insert(0, int(args.binary))
        args.binary = "target/release/veer"
    counts = args.counts or [1000, 5000, 10000]
    need = max(counts) + 1024  # each process: the clients here, the server its own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            if hard < need:
                print(f"open-files limit {hard} is below the {need} needed", file=sys.stderr)
                return 1
    with tempfile.TemporaryDirectory() as work:
        # Sized to the run, as an operator would: NGINX allocates every
        # connection slot up front (in its idle RSS, not in the deltas).
        proc, pids, addr = start(args.server, args.binary, args.proto, work, max(counts) + 256)
        try:
            base = settle(pids)
            print(f"{args.server} {args.proto} idle: {base} KiB RSS")
            conns, previous, previous_n, marks = [], base, 0, []
            for n in counts:
                # In batches of 500 with a pause: clients arrive over time, and
                # veer parks a connection 50 ms after its answer; one burst of
                # thousands at once would measure the allocator's retained
                # peak of busy connections instead.
                while len(conns) < n:
                    conns += open_batch(addr, min(500, n - len(conns)), args.proto, len(conns))
                    time.sleep(0.15)
                now = settle(pids)
                per = (now - previous) / (n - previous_n)
                print(f"{n:>6} connections: {now} KiB RSS, {per:.2f} KiB per connection "
                      f"over the last {n - previous_n} ({per * 1000 / 1024:.2f} MiB per 1,000)")
                previous, previous_n = now, n
                marks.append((now, n))
            total = (previous - base) / previous_n
            print(f"overall: {args.server} {args.proto} {total:.2f} KiB per idle connection "
                  f"({total * 1000 / 1024:.2f} MiB per 1,000)")
            if len(counts) > 1:
                # The first step also pays for what the allocator keeps of
                # the busy connections' buffers, once; past it, the cost of
                # each further idle connection.
                first_rss, first_n = marks[0]
                past = (previous - first_rss) / (previous_n - first_n)
                print(f"past the first step: {args.server} {args.proto} {past:.2f} KiB per idle "
                      f"connection ({past * 1000 / 1024:.2f} MiB per 1,000)")
            if proc.poll() is not None:
                print(f"{args.server} exited during the run", file=sys.stderr)
                return 1
            if args.wake_all and args.proto == "h1":
                answered = wake_all(conns)
                print(f"wake-all: {answered} of {len(conns)} idle connections answered "
                      f"after all sent at once")
                if answered != len(conns):
                    return 1
            for s in conns:
                s.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
