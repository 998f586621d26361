#!/usr/bin/env python3
"""The client side of benches/scale.sh: loopback only, plain HTTP/1.1.

    scale_probe.py ready PORT HOST SINCE TIMEOUT
        seconds from SINCE (epoch seconds) to the first 200 through HOST
    scale_probe.py flip PORT HOST DEST A B ROUNDS [CMD]
        ROUNDS times: puts file A (then B, A, ...) at DEST by rename, runs CMD
        (a reload command, for proxies that need one), and times until HOST
        answers with the version the new file gives all the weight to (A
        sends everything to canary, B to stable); prints one time per line, ms
        ("timeout" for a round not done within FLIP_TIMEOUT seconds, 60)
    scale_probe.py latency PORT HOST N
        N sequential GETs on one keep-alive connection; prints p50 p99 in µs
    scale_probe.py traffic PORT COUNT FIRST
        one GET through each of COUNT services from svc-FIRST on
"""
import http.client
import os
import shutil
import subprocess
import sys
import time


def get(port, host, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Host": host}
    if conn is None:
        headers["Connection"] = "close"
    c.request("GET", "/", headers=headers)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body


def ready(port, host, since, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, _ = get(port, host)
            if status == 200:
                print(f"{time.time() - since:.3f}")
                return
        except OSError:
            pass
        time.sleep(0.005)
    print("timeout")
    sys.exit(1)


def flip(port, host, dest, a, b, rounds, cmd):
    # Polled over one keep-alive connection, every millisecond: a connection
    # per poll made the observer's own accepts and handshakes a share of the
    # proxy's one core while it applied the change (PROBE_NEW_CONNECTIONS=1
    # polls as before, a new connection each time).
    conn = None
    fresh = os.environ.get("PROBE_NEW_CONNECTIONS") == "1"
    for n in range(rounds):
        source, want = (a, b"canary") if n % 2 == 0 else (b, b"stable")
        tmp = dest + ".next"
        shutil.copyfile(source, tmp)
        start = time.perf_counter()
        os.replace(tmp, dest)
        if cmd:
            subprocess.run(cmd, shell=True, check=True)
        # A large config on a loaded machine can take NGINX or HAProxy long
        # to re-read: a round past the limit is printed as "timeout" and the
        # next round goes on (the caller counts them).
        deadline = start + float(os.environ.get("FLIP_TIMEOUT", "60"))
        timed_out = False
        while True:
            try:
                if conn is None and not fresh:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                _, body = get(port, host, conn)
                if body.strip() == want:
                    break
            except (OSError, http.client.HTTPException):
                # A proxy's old worker closes its keep-alive connections on
                # a reload: the next poll opens a new one.
                if conn is not None:
                    conn.close()
                conn = None
            if time.perf_counter() > deadline:
                timed_out = True
                break
            time.sleep(0.001)
        if timed_out:
            print("timeout", flush=True)
            time.sleep(1.0)
            continue
        print(f"{(time.perf_counter() - start) * 1000:.1f}", flush=True)
        # Let the proxy settle (old workers exit, windows tick) between flips.
        time.sleep(1.0)


def latency(port, host, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    samples = []
    budget = time.perf_counter() + 30
    for i in range(200 + n):
        if time.perf_counter() > budget:
            # Too slow to finish: report what was measured, flagged.
            break
        start = time.perf_counter()
        try:
            get(port, host, conn)
        except OSError:
            # A timeout or a reset counts at what it cost; start afresh.
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        if i >= 200:
            samples.append((time.perf_counter() - start) * 1e6)
    if not samples:
        print("slow slow")
        return
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    mark = "" if len(samples) == n else f"(n={len(samples)})"
    print(f"{p50:.0f}{mark} {p99:.0f}{mark}")


def traffic(port, count, first):
    for i in range(first, first + count):
        try:
            get(port, f"svc-{i}.example.com")
        except OSError:
            pass


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ready":
        ready(int(args[0]), args[1], float(args[2]), float(args[3]))
    elif cmd == "flip":
        flip(int(args[0]), args[1], args[2], args[3], args[4], int(args[5]),
             args[6] if len(args) > 6 else "")
    elif cmd == "latency":
        latency(int(args[0]), args[1], int(args[2]))
    elif cmd == "traffic":
        traffic(int(args[0]), int(args[1]), int(args[2]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
