#!/usr/bin/env python3
"""Writes a large veer config to stdout, for timing `veer check` on it.

    benches/gen_config.py 10000 > /tmp/big.yaml
    /usr/bin/time -v target/release/veer check -c /tmp/big.yaml

Each service has two hostnames, a stable version with two endpoints, a
canary with one, and a guard.
"""
import sys


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    out = sys.stdout
    out.write("listeners:\n  - name: public\n    address: 127.0.0.1:8080\n")
    out.write("admin:\n  address: 127.0.0.1:9901\n")
    out.write("services:\n")
    for i in range(count):
        port = 20000 + (i * 3) % 40000
        out.write(
            f"""  - name: svc-{i}
    match:
      hosts: [svc-{i}.example.com, "*.svc-{i}.internal"]
      path_prefix: /
    versions:
      - name: stable
        revision: "1.{i}.0"
        endpoints: [127.0.0.1:{port}, 127.0.0.1:{port + 1}]
        weight: 90
      - name: canary
        revision: "1.{i}.1"
        endpoints: [127.0.0.1:{port + 2}]
        weight: 10
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


if __name__ == "__main__":
    main()
