//! veer: an L7 HTTP proxy that releases new versions of a service safely.
//!
//! The tree follows the path of a request and the data it reads:
//! `config` (file → validated types) → `snapshot` (everything the request path
//! reads, published through one `ArcSwap` by `control`) → `server` (listeners,
//! connection limits, drain) → `proxy` (one request: route, split, forward,
//! record its one outcome when the response stream ends, answer errors) →
//! `upstream` (endpoints, pooled connections, balancing).
//! `routing` holds the pure decisions (which service, which version), `grpc`
//! the pure reading of gRPC statuses and deadlines, `guard` and `rollout`
//! the verdicts and steps, `telemetry` the counters, histograms and windows.
//! `tls` reads certificates and sets up rustls for listeners and upstreams.
//! `audit` and `logging` are the structured logs.
//!
//! Meant to point one way, from the binary's `cli` down to `config`; today
//! some edges still point back (`tls` → `reload` and `telemetry`,
//! `telemetry` → `upstream::error`, `upstream` → `tls`, `config` → `grpc`,
//! `cli` ↔ `demo`), and nothing checks the order yet.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod grpc;
pub mod guard;
pub mod health;
pub mod logging;
pub mod outcome;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
