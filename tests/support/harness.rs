//! Starts veer in-process on a YAML config (listener `public` on `127.0.0.1:0`).

use std::net::SocketAddr;
use std::path::PathBuf;

use veer::server::{Proxy, RunningProxy, StartOptions};

use super::config::LISTENER;

/// A proxy running inside the test's runtime.
pub struct TestProxy {
    running: RunningProxy,
    addr: SocketAddr,
}

impl TestProxy {
    /// Parses `yaml` with veer's own config parser and starts the proxy on it.
    pub async fn start(yaml: &str) -> TestProxy {
        let config = veer::config::parse_str(yaml, "test.yaml").unwrap_or_else(|e| {
            panic!("veer refused the test config:\n{e}\n--- config ---\n{yaml}")
        });
        let running = Proxy::start(config)
            .await
            .unwrap_or_else(|e| panic!("veer did not start: {e}"));
        let addr = running
            .listener_addr(LISTENER)
            .unwrap_or_else(|| panic!("no listener named {LISTENER}"));
        TestProxy { running, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn control(&self) -> &veer::control::Control {
        self.running.control()
    }

    /// Sets run-time weights; panics if veer refuses them.
    pub async fn set_weights(&self, service: &str, weights: &[(&str, u32)]) {
        if let Err(e) = self.control().set_weights(service, weights).await {
            panic!("set_weights({service}, {weights:?}) refused: {e}");
        }
    }

    /// Graceful drain, as on SIGTERM.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// veer started in-process with its admin API on: the running proxy, the
/// `public` listener's address and the admin API's. With `source`, the file
/// the config came from (`POST /reload` reads it).
pub async fn start_with_admin(
    yaml: &str,
    source: Option<PathBuf>,
) -> (RunningProxy, SocketAddr, SocketAddr) {
    let config = veer::config::parse_str(yaml, "t.yaml")
        .unwrap_or_else(|e| panic!("veer refused the test config:\n{e}\n---\n{yaml}"));
    let options = StartOptions {
        source,
        admin: true,
    };
    let running = Proxy::start_with(config, options)
        .await
        .unwrap_or_else(|e| panic!("veer did not start: {e}\n---\n{yaml}"));
    let proxy = running.listener_addr(LISTENER).expect("listener public");
    let admin = running.admin_addr().expect("admin API address");
    (running, proxy, admin)
}
