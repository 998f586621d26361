#!/usr/bin/env python3
"""Writes a large config to stdout: veer's YAML, or the same services as an
NGINX or HAProxy config (for benches/scale.sh).

    benches/gen_config.py 10000 > /tmp/big.yaml
    /usr/bin/time -v target/release/veer check -c /tmp/big.yaml

    benches/gen_config.py 10000 --format nginx --listen 18280 \\
        --upstreams 18281,18282,18283 --last-weights 100,0

Each service `svc-I` has two hostnames (`svc-I.example.com` and the wildcard
`*.svc-I.internal`), a stable version with two endpoints, a canary with one
(90/10), and a guard. Endpoints are distinct loopback ports where nothing
listens, except for the first and the last service: with `--upstreams
S1,S2,C` those two route to the real upstreams (stable on S1 and S2, canary
on C), so latency can be measured through them. `--last-weights S,C` sets
the last service's weights (a bench flips them to time a reload).
"""
import argparse
import sys


def endpoints(i, count, upstreams):
    if upstreams and (i == 0 or i == count - 1):
        s1, s2, c = upstreams
        return [s1, s2], [c]
    port = 20000 + (i * 3) % 40000
    return [port, port + 1], [port + 2]


def weights(i, count, last):
    if last and i == count - 1:
        return last
    return (90, 10)


def veer(args, out):
    out.write(f"listeners:\n  - name: public\n    address: 127.0.0.1:{args.listen}\n")
    out.write(f"admin:\n  address: 127.0.0.1:{args.admin}\n")
    # Guards want their latches to survive a restart (veer check warns
    # about every guarded service otherwise).
    out.write("state_dir: state\n")
    if args.idle_series_after:
        out.write(f"telemetry:\n  idle_series_after: {args.idle_series_after}\n")
    out.write("services:\n")
    for i in range(args.count):
        stable, canary = endpoints(i, args.count, args.upstreams)
        ws, wc = weights(i, args.count, args.last_weights)
        st = ", ".join(f"127.0.0.1:{p}" for p in stable)
        ca = ", ".join(f"127.0.0.1:{p}" for p in canary)
        out.write(
            f"""  - name: svc-{i}
    match:
      hosts: [svc-{i}.example.com, "*.svc-{i}.internal"]
      path_prefix: /
    versions:
      - name: stable
        revision: "1.{i}.0"
        endpoints: [{st}]
        weight: {ws}
      - name: canary
        revision: "1.{i}.1"
        endpoints: [{ca}]
        weight: {wc}
    timeouts: {{ connect: 1s, request: 15s }}
    guard:
      baseline: stable
      interval: 1s
      window: 30s
      min_requests: 50
      max_error_rate: 0.05
      max_p95_latency: 500ms
      consecutive: 2
"""
        )


def nginx(args, out):
    # The weight of a version is split over its endpoints, as veer does.
    out.write(
        "worker_processes 1;\nerror_log stderr error;\npid PIDFILE;\n"
        "events { worker_connections 1024; }\nhttp {\n  access_log off;\n"
        "  server_names_hash_max_size 65536;\n  server_names_hash_bucket_size 128;\n"
        "  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n"
        "  proxy_connect_timeout 1s;\n  proxy_read_timeout 15s;\n"
        f"  server {{ listen 127.0.0.1:{args.listen} default_server; return 404; }}\n"
    )
    for i in range(args.count):
        stable, canary = endpoints(i, args.count, args.upstreams)
        ws, wc = weights(i, args.count, args.last_weights)
        out.write(f"  upstream svc{i} {{\n")
        for p in stable:
            w = ws // len(stable)
            if w > 0:
                out.write(f"    server 127.0.0.1:{p} weight={w};\n")
            else:
                out.write(f"    server 127.0.0.1:{p} down;\n")
        for p in canary:
            if wc > 0:
                out.write(f"    server 127.0.0.1:{p} weight={wc};\n")
            else:
                out.write(f"    server 127.0.0.1:{p} down;\n")
        out.write("    keepalive 8;\n  }\n")
        out.write(
            f"  server {{ listen 127.0.0.1:{args.listen}; "
            f"server_name svc-{i}.example.com *.svc-{i}.internal; "
            f"location / {{ proxy_pass http://svc{i}; }} }}\n"
        )
    out.write("}\n")


def haproxy(args, out):
    # Hosts go through one map (what HAProxy users do for thousands of
    # hosts); the wildcard is a map_end on the suffix.
    out.write(
        "global\n  nbthread 1\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n"
        "  timeout server 15s\n  http-reuse always\n"
        f"frontend public\n  bind 127.0.0.1:{args.listen}\n"
        "  use_backend %[req.hdr(host),lower,word(1,:),map(MAPFILE)] if { req.hdr(host),lower,word(1,:),map(MAPFILE) -m found }\n"
        "  use_backend %[req.hdr(host),lower,word(1,:),map_end(WILDFILE)] if { req.hdr(host),lower,word(1,:),map_end(WILDFILE) -m found }\n"
        "  default_backend none\n"
        "backend none\n  http-request return status 404\n"
    )
    for i in range(args.count):
        stable, canary = endpoints(i, args.count, args.upstreams)
        ws, wc = weights(i, args.count, args.last_weights)
        out.write(f"backend svc{i}\n  balance roundrobin\n")
        for n, p in enumerate(stable):
            w = ws // len(stable)
            out.write(f"  server s{n} 127.0.0.1:{p} weight {w}\n")
        for n, p in enumerate(canary):
            out.write(f"  server c{n} 127.0.0.1:{p} weight {wc}\n")


def maps(args, out, wild):
    for i in range(args.count):
        if wild:
            out.write(f".svc-{i}.internal svc{i}\n")
        else:
            out.write(f"svc-{i}.example.com svc{i}\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("count", type=int, nargs="?", default=10000)
    p.add_argument("--format", default="veer", choices=["veer", "nginx", "haproxy", "map", "wildmap"])
    p.add_argument("--listen", type=int, default=8080)
    p.add_argument("--admin", type=int, default=9901)
    p.add_argument("--upstreams", default="")
    p.add_argument("--last-weights", default="")
    p.add_argument("--idle-series-after", default="")
    args = p.parse_args()
    args.upstreams = [int(x) for x in args.upstreams.split(",")] if args.upstreams else None
    args.last_weights = (
        tuple(int(x) for x in args.last_weights.split(",")) if args.last_weights else None
    )
    out = sys.stdout
    {
        "veer": veer,
        "nginx": nginx,
        "haproxy": haproxy,
        "map": lambda a, o: maps(a, o, False),
        "wildmap": lambda a, o: maps(a, o, True),
    }[args.format](args, out)


if __name__ == "__main__":
    main()
