//! Keeps one `Endpoint` per (address, protocol) across snapshots, so that a
//! reload or a weight change reuses warm connections. Used only by the single
//! writer that builds snapshots (`control`), never on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::endpoint::Sweeper;
use super::{Endpoint, Names};
use crate::config::{Protocol, UpstreamTls};
use crate::tls::client::Originator;

/// The TLS settings are boxed: inline they would triple every entry of a
/// map holding tens of thousands of plain endpoints.
type Key = (SocketAddr, Protocol, Option<Box<UpstreamTls>>);

#[derive(Debug, Default)]
pub struct Registry {
    endpoints: HashMap<Key, Arc<Endpoint>>,
    /// The addresses of the endpoints written `NAME:PORT`.
    names: Arc<Names>,
    /// The one task sweeping the idle connections of these endpoints,
    /// started with the first endpoint (it needs the runtime).
    sweeper: Option<Sweeper>,
}

impl Registry {
    /// A registry whose named endpoints take their addresses from `names`.
    pub fn with_names(names: Arc<Names>) -> Registry {
        Registry {
            endpoints: HashMap::new(),
            names,
            sweeper: None,
        }
    }

    pub fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// The endpoint for `addr`, the one already known if there is one (then
    /// `false`); a new one (`true`) starts healthy or not as told. A new TLS
    /// endpoint reads its files here (a failure is logged, and answered to
    /// every request it gets).
    pub fn endpoint(
        &mut self,
        addr: SocketAddr,
        protocol: Protocol,
        tls: Option<&UpstreamTls>,
        initially_healthy: bool,
    ) -> (Arc<Endpoint>, bool) {
        let key = (addr, protocol, tls.cloned().map(Box::new));
        let mut created = false;
        if self.sweeper.is_none() {
            self.sweeper = Sweeper::start();
        }
        let sweeper = self.sweeper.as_ref();
        let endpoint = self.endpoints.entry(key).or_insert_with(|| {
            created = true;
            let origin = tls.map(|settings| {
                if settings.insecure_skip_verify {
                    tracing::warn!(
                        endpoint = %addr,
                        "tls.insecure_skip_verify: the endpoint's certificate is NOT verified; \
                         anyone on the path can read and change this traffic (use it for tests only)"
                    );
                }
                Originator::new(settings, addr, protocol)
                    .map_err(|e| e.to_string())
                    .inspect_err(|reason| {
                        tracing::error!(endpoint = %addr, "TLS to the endpoint cannot be set up: {reason}");
                    })
            });
            let mut endpoint = Endpoint::with_tls(addr, protocol, origin);
            if let Some(sweeper) = sweeper {
                endpoint.swept_by(sweeper);
            }
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
