//! The demo's load generator: a few clients pacing requests to the proxy,
//! using veer's own upstream client (`upstream::Endpoint`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::config::{Protocol, Timeouts};
use crate::upstream::retry::Attempts;
use crate::upstream::{Endpoint, RequestBody};

const CLIENTS: usize = 8;
/// Pause between a client's requests: about 8 × 250 = 2,000 requests/s.
const PACING: Duration = Duration::from_millis(4);

/// Sends until `deadline`; counts answers that were not 2xx in `failures`.
pub async fn drive(proxy: SocketAddr, deadline: Instant, failures: Arc<AtomicU64>) {
    let endpoint = Arc::new(Endpoint::new(proxy, Protocol::Http1));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (endpoint, failures) = (Arc::clone(&endpoint), Arc::clone(&failures));
        clients.push(tokio::spawn(async move {
            let timeouts = Timeouts::default();
            let endpoints = [endpoint];
            let attempts = Attempts {
                endpoints: &endpoints,
                timeouts: &timeouts,
                upgrade: false,
                call_deadline: None,
                body_watch: None,
            };
            let mut timer = None;
            while Instant::now() < deadline {
                let mut request = Request::new(RequestBody::Empty);
                request
                    .headers_mut()
                    .insert(http::header::HOST, http::HeaderValue::from_static("demo"));
                let sent = attempts
                    .send(request, &mut timer, Instant::now(), |_, _| {})
                    .await;
                let ok = match sent {
                    Ok((response, lease)) => {
                        let ok = response.status().is_success();
                        let mut body = response.into_body();
                        let read = (&mut body).collect().await.is_ok();
                        // The connection goes back to the pool for the next
                        // request.
                        body.release(lease);
                        ok && read
                    }
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(PACING).await;
            }
        }));
    }
    for client in clients {
        let _ = client.await;
    }
}
