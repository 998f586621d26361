//! Tells a webhook about the guard's decisions: a JSON event POSTed in the
//! background, with a timeout and a few retries, so that a slow or dead
//! receiver never delays a rollback nor the request path. Events queue in a
//! bounded channel; when it is full the newest event is dropped and logged.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const QUEUE: usize = 256;
const ATTEMPTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// A handle to the background sender; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    queue: mpsc::Sender<(Uri, serde_json::Value)>,
}

impl Webhooks {
    /// Starts the sender task on the current runtime.
    pub fn start() -> Webhooks {
        let (queue, mut events) = mpsc::channel::<(Uri, serde_json::Value)>(QUEUE);
        tokio::spawn(async move {
            while let Some((url, event)) = events.recv().await {
                // One at a time keeps events to one receiver in order.
                deliver(&url, &event).await;
            }
        });
        Webhooks { queue }
    }

    /// Queues `event` for `url`; never waits.
    pub fn send(&self, url: &Uri, event: serde_json::Value) {
        if self.queue.try_send((url.clone(), event)).is_err() {
            tracing::warn!(%url, "webhook queue full or closed; event dropped");
        }
    }
}

async fn deliver(url: &Uri, event: &serde_json::Value) {
    let body = Bytes::from(event.to_string());
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(TIMEOUT, post(url, body.clone())).await {
            Ok(Ok(status)) if status.is_success() => return,
            Ok(Ok(status)) => {
                tracing::warn!(%url, %status, attempt, "webhook refused the event")
            }
            Ok(Err(err)) => tracing::warn!(%url, error = %err, attempt, "webhook unreachable"),
            Err(_) => tracing::warn!(%url, attempt, "webhook did not answer within {TIMEOUT:?}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(%url, "webhook event not delivered after {ATTEMPTS} attempts");
}

pub(crate) async fn post(url: &Uri, body: Bytes) -> Result<http::StatusCode, String> {
    let host = url.host().ok_or("the webhook URL names no host")?;
    let port = url.port_u16().unwrap_or(80);
    if url.scheme_str() != Some("http") {
        return Err("only http:// webhooks are supported in this build".into());
    }
    let stream = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.authority().map_or(host, |a| a.as_str());
    let request = Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("veer/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}
