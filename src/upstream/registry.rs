//! Keeps one `Endpoint` per (address, protocol) across snapshots, so that a
//! reload or a weight change reuses warm connections. Used only by the single
//! writer that builds snapshots (`control`), never on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Endpoint;
use crate::config::Protocol;

#[derive(Debug, Default)]
pub struct Registry {
    endpoints: HashMap<(SocketAddr, Protocol), Arc<Endpoint>>,
}

impl Registry {
    /// The endpoint for `addr`, the one already known if there is one (then
    /// `false`); a new one (`true`) starts healthy or not as told.
    pub fn endpoint(
        &mut self,
        addr: SocketAddr,
        protocol: Protocol,
        initially_healthy: bool,
    ) -> (Arc<Endpoint>, bool) {
        let mut created = false;
        let endpoint = self.endpoints.entry((addr, protocol)).or_insert_with(|| {
            created = true;
            let endpoint = Endpoint::new(addr, protocol);
            endpoint
                .health
                .set_probe_ok(initially_healthy, crate::clock::now_ms());
            Arc::new(endpoint)
        });
        (Arc::clone(endpoint), created)
    }

    /// Forgets endpoints that no snapshot uses any more; requests still in
    /// flight to them keep them alive until they finish.
    pub fn retain_used(&mut self) {
        self.endpoints.retain(|_, ep| Arc::strong_count(ep) > 1);
    }
}
