//! Protocol upgrades (WebSocket): once both sides have switched protocols, the
//! two connections are joined and bytes copied both ways until either closes.

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use std::sync::Arc;

use crate::telemetry::VersionStats;
use crate::upstream::Lease;

/// Joins the client and upstream connections in a task of their own. The
/// lease keeps the endpoint's outstanding count for as long as the tunnel
/// lives, so the balancer sees long-lived connections too.
pub(super) fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    lease: Lease,
    version: Arc<VersionStats>,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade did not complete");
                return;
            }
        };
        // `on_revert: evict` closes the tunnel when its version is reverted.
        let evicted = version.evicted();
        tokio::select! {
            result = copy(client, upstream) => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
            }
            _ = evicted => tracing::debug!("upgraded connection closed: its version was reverted"),
        }
        drop(lease);
    });
}

async fn copy(client: Upgraded, upstream: Upgraded) -> std::io::Result<(u64, u64)> {
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await
}
