//! The access log: one JSON line per request (or per sampled request),
//! written when the request's response stream ends, from the same outcome
//! the metrics record. The request path only fills an entry and hands it to
//! a bounded channel (`try_send`, never waiting); one writer task formats
//! and writes the lines. When the writer falls behind and the channel is
//! full, entries are dropped and counted (`veer_access_log_dropped_total`)
//! rather than slowing requests down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Counter;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::Method;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::config::{AccessLog as Settings, AccessLogTarget};

/// Entries waiting for the writer; beyond this many, new ones are dropped.
const QUEUE: usize = 8192;

/// The request path's handle on the access log.
#[derive(Debug)]
pub struct AccessLog {
    queue: mpsc::Sender<Box<Entry>>,
    sample: f64,
    dropped: Counter,
}

/// One request, as logged.
#[derive(Debug)]
pub struct Entry {
    pub at: SystemTime,
    pub request_id: HeaderValue,
    pub client_ip: HeaderValue,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub path: Option<PathAndQuery>,
    pub service: Arc<str>,
    pub version: Arc<str>,
    pub endpoint: Option<SocketAddr>,
    pub status: u16,
    /// `ok`, `error` (the version's) or `client` (the client's fault).
    pub outcome: &'static str,
    /// The failure or client fault, when there is one.
    pub reason: Option<&'static str>,
    /// Response body bytes handed to the client.
    pub bytes: u64,
    pub ttfb: Duration,
    pub total: Duration,
}

/// Why the access log could not be opened.
#[derive(Debug)]
pub struct OpenError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot open the access log {}: {}; check access_log.path and that its directory exists and is writable",
            self.path.display(),
            self.cause
        )
    }
}

impl std::error::Error for OpenError {}

impl AccessLog {
    /// Opens the target (appending to a file) and starts the writer task.
    pub async fn start(settings: &Settings, dropped: Counter) -> Result<AccessLog, OpenError> {
        let (queue, entries) = mpsc::channel(QUEUE);
        match &settings.target {
            AccessLogTarget::Stdout => {
                tokio::spawn(write(entries, tokio::io::stdout()));
            }
            AccessLogTarget::File(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|cause| OpenError {
                        path: path.clone(),
                        cause,
                    })?;
                tokio::spawn(write(entries, file));
            }
        }
        Ok(AccessLog {
            queue,
            sample: settings.sample,
            dropped,
        })
    }

    /// Whether this request is to be logged.
    #[inline]
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || (self.sample > 0.0 && fastrand::f64() < self.sample)
    }

    /// Hands an entry to the writer; drops and counts it when the writer is
    /// behind.
    pub fn log(&self, entry: Box<Entry>) {
        if self.queue.try_send(entry).is_err() {
            self.dropped.increment(1);
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client_ip: &'a str,
    method: &'a str,
    host: Option<&'a str>,
    path: Option<&'a str>,
    service: &'a str,
    version: &'a str,
    endpoint: Option<String>,
    status: u16,
    outcome: &'a str,
    reason: Option<&'a str>,
    bytes: u64,
    ttfb_ms: f64,
    duration_ms: f64,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn line(entry: &Entry) -> Vec<u8> {
    let text = |v: &HeaderValue| v.to_str().unwrap_or("-").to_owned();
    let request_id = text(&entry.request_id);
    let client_ip = text(&entry.client_ip);
    let host = entry.host.as_ref().map(text);
    let line = Line {
        time: humantime::format_rfc3339_millis(entry.at).to_string(),
        request_id: &request_id,
        client_ip: &client_ip,
        method: entry.method.as_str(),
        host: host.as_deref(),
        path: entry.path.as_ref().map(PathAndQuery::as_str),
        service: &entry.service,
        version: &entry.version,
        endpoint: entry.endpoint.map(|e| e.to_string()),
        status: entry.status,
        outcome: entry.outcome,
        reason: entry.reason,
        bytes: entry.bytes,
        ttfb_ms: millis(entry.ttfb),
        duration_ms: millis(entry.total),
    };
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The writer task: formats entries and writes them, flushing whenever the
/// queue is empty. Ends when every sender is gone (the proxy stopped).
async fn write(mut entries: mpsc::Receiver<Box<Entry>>, out: impl AsyncWrite + Unpin) {
    let mut out = BufWriter::new(out);
    while let Some(entry) = entries.recv().await {
        let mut failed = out.write_all(&line(&entry)).await.is_err();
        while let Ok(entry) = entries.try_recv() {
            failed |= out.write_all(&line(&entry)).await.is_err();
        }
        failed |= out.flush().await.is_err();
        if failed {
            log_write_failure();
        }
    }
}

/// At most one warning a minute: a full disk must not flood the log.
fn log_write_failure() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MINUTE: AtomicU64 = AtomicU64::new(u64::MAX);
    let minute = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    if LAST_MINUTE.swap(minute, Ordering::Relaxed) != minute {
        tracing::warn!("writing the access log failed; lines are being lost (is the disk full?)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let entry = Entry {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            request_id: HeaderValue::from_static("abc"),
            client_ip: HeaderValue::from_static("127.0.0.1"),
            method: Method::POST,
            host: Some(HeaderValue::from_static("web")),
            path: Some(PathAndQuery::from_static("/a?b=c")),
            service: "web".into(),
            version: "canary".into(),
            endpoint: Some(([127, 0, 0, 1], 8080).into()),
            status: 200,
            outcome: "error",
            reason: Some("midstream"),
            bytes: 10,
            ttfb: Duration::from_micros(1500),
            total: Duration::from_millis(20),
        };
        let bytes = line(&entry);
        assert_eq!(bytes.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(value["time"], "2027-01-15T08:00:00.000Z");
        assert_eq!(value["request_id"], "abc");
        assert_eq!(value["path"], "/a?b=c");
        assert_eq!(value["endpoint"], "127.0.0.1:8080");
        assert_eq!(value["reason"], "midstream");
        assert_eq!(value["ttfb_ms"], 1.5);
        assert_eq!(value["duration_ms"], 20.0);
    }
}
