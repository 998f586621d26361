//! One active health probe: `GET path` on a fresh connection (over TLS when
//! the endpoint is reached over TLS), the status compared with the expected
//! ranges. It never uses the endpoint's pool nor its outstanding count, and
//! nothing about it reaches metrics or windows: probes are not user traffic.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;

use crate::upstream::Endpoint;

/// Probes `endpoint`; `Ok` with the status when it is in `expected`, `Err`
/// with the reason otherwise.
pub async fn probe(
    endpoint: &Endpoint,
    path: &str,
    timeout: Duration,
    expected: &[(u16, u16)],
) -> Result<StatusCode, String> {
    let exchange = async {
        let response = endpoint
            .probe_get(path, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the body so the upstream sees a complete exchange.
        let _ = response.into_body().collect().await;
        Ok::<_, String>(status)
    };
    let status = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let code = status.as_u16();
    if expected
        .iter()
        .any(|&(low, high)| (low..=high).contains(&code))
    {
        Ok(status)
    } else {
        Err(format!("answered {status}"))
    }
}
