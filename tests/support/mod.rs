//! Shared harness for veer's integration tests: real servers and real clients on
//! loopback sockets at port 0, no mocks.
//!
//! - [`upstream`]: a hyper upstream (HTTP/1.1 and h2c on one port, upgrades) whose
//!   behaviour is chosen by path and can be told at run time to fail or slow down.
//! - [`raw`]: a raw TCP upstream that breaks HTTP on purpose (garbage, resets) and a
//!   port that refuses connections.
//! - [`client`]: HTTP/1.1 and h2c clients, raw TCP exchanges, streaming bodies.
//! - [`config`]: a builder for the YAML configs the tests run the proxy with.
//! - [`binary`]: runs the real `veer` binary on a temp config and reads its
//!   `veer: listener ...` lines.
//! - [`harness`]: starts the proxy in-process.
//! - [`metrics`]: `/metrics` parsed as Prometheus text.
//! - [`load`]: the load generator: paced or closed-loop GETs, bounded, each
//!   answer recorded as the caller chooses.
//! - [`release`]: the release process (rollouts, A/B rules, sticky users,
//!   `veer wait`): a config for one service `web`, veer in-process with its
//!   admin API, `/status` reads, the `veer` binary as a CLI.
//! - [`dns`]: an authoritative DNS server on loopback UDP whose records,
//!   answers (SERVFAIL, silence) and query counts a test controls.
//! - [`tls`]: certificates made on the fly, TLS clients and a TLS upstream.
//!
//! Each test file uses a subset, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod binary;
pub mod client;
pub mod config;
pub mod dns;
#[cfg(feature = "fleet")]
pub mod etcd;
pub mod harness;
pub mod load;
pub mod metrics;
pub mod raw;
pub mod release;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

/// Errors from bodies and clients, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type used by the test upstreams and clients.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A listener on `127.0.0.1:0` with a deep accept backlog (4096, like veer's
/// own): a thousand connects at once must not overflow it and wait for a SYN
/// retransmission.
pub fn bind_loopback() -> tokio::net::TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("create test socket");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    socket
        .set_nonblocking(true)
        .expect("nonblocking test socket");
    socket.bind(&addr.into()).expect("bind 127.0.0.1:0");
    socket.listen(4096).expect("listen");
    tokio::net::TcpListener::from_std(socket.into()).expect("tokio listener")
}

/// Runs `fut` and fails the test if it takes longer than `limit`: every wait in
/// the suite is bounded, so a proxy bug shows as a failure, never as a hung run.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still not done after {limit:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: condition not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback address of this test process's own (`127.A.B.n`, `A.B` from the
/// process id, never `127.0.0.x`), for a test that must release a port and
/// count on it staying free: every other test binds `127.0.0.1`, and another
/// test process (a parallel run of the suite) has another `A.B`, so nothing
/// else can take a port released here. Each test that needs one uses its own
/// `n`.
pub fn own_loopback(n: u8) -> std::net::IpAddr {
    let pid = std::process::id();
    let a = 1 + ((pid >> 8) % 254) as u8;
    let b = (pid & 0xff) as u8;
    std::net::Ipv4Addr::new(127, a, b, n).into()
}
