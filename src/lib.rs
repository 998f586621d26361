//! veer: an L7 HTTP proxy that releases new versions of a service safely.
//!
//! The tree follows the path of a request and the data it reads:
//! `config` (file → validated types) → `snapshot` (everything the request path
//! reads, published through one `ArcSwap` by `control`) → `server` (listeners,
//! connection limits, drain) → `proxy` (one request: route, split, forward,
//! record its one outcome when the response stream ends, answer errors) →
//! `upstream` (endpoints, pooled connections, balancing, their in-service
//! flags). `routing` holds the pure decisions (which service, which version),
//! `grpc` the pure reading of gRPC statuses and deadlines, `outcome` the
//! failure reasons everything records and judges by, `guard` and `rollout`
//! the verdicts and steps, `health` the probes and ejections, `telemetry` the
//! counters, histograms and windows, `tls` rustls for listeners and
//! upstreams, `watch` the file watcher behind config reloads and certificate
//! rotation. `audit` and `logging` are the structured logs.
//!
//! Dependencies point down one order, from the binary's `cli` to the leaves
//! (`clock`, `logging`, `watch`, `grpc`, `outcome`, `connection_header`); `tests/layering.rs`
//! holds the order, fails on an edge that points up, and lists the few that
//! still do with their reasons. docs/architecture.md draws it.

pub mod admin;
pub mod audit;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connection_header;
pub mod control;
pub mod demo;
pub mod fleet;
pub mod grpc;
pub mod guard;
pub mod health;
pub mod heap;
pub mod history;
pub mod logging;
pub mod mirror;
pub mod outcome;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
