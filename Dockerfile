# syntax=docker/dockerfile:1
# veer's container image: a release build with etcd support (the `fleet`
# feature, for replicas that share their run-time layer), on an empty base
# holding only what the binary needs (docker/rootfs.sh). It runs as a
# non-root user on a read-only root: mount the config at /etc/veer (a
# ConfigMap directory) and a writable volume at /var/lib/veer (state_dir).
#
#   docker build -t veer .
#   docker run --read-only -v "$PWD/veer.yaml:/etc/veer/veer.yaml:ro" \
#       -v veer-state:/var/lib/veer -p 8080:8080 veer
#   docker run --rm -v "$PWD/veer.yaml:/etc/veer/veer.yaml:ro" veer check --offline -c /etc/veer/veer.yaml

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# protoc: etcd's client is generated from its protobuf files at build time.
# ca-certificates: the CA bundle copied into the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The patched h2 that Cargo.toml's [patch] section names.
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY docker/rootfs.sh ./docker/rootfs.sh
# The caches keep crates and objects between builds on one builder; the
# binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features fleet \
    && ./docker/rootfs.sh target/release/veer /rootfs \
    && mkdir /state

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="veer" \
      org.opencontainers.image.description="An L7 HTTP proxy that releases new versions of a service safely: weighted canary and blue-green routing, hot reload, per-version telemetry and automatic rollback." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deploy.md"
COPY --from=build /rootfs/ /
# COPY makes everything root's; state_dir alone, made by this COPY, belongs
# to veer (a named volume mounted there takes its owner from the image).
COPY --from=build --chown=65532:65532 /state/ /var/lib/veer/
USER 65532:65532
# Proxy listeners as the examples bind them (8080 HTTP, 8443 HTTPS) and the
# admin API (9901: /metrics, /health/liveness, /health/readiness, /status).
EXPOSE 8080 8443 9901
VOLUME ["/var/lib/veer"]
# veer drains on SIGTERM: readiness turns 503, in-flight requests finish
# within limits.drain_timeout, then it exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/veer"]
CMD ["run", "-c", "/etc/veer/veer.yaml"]
