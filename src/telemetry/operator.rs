//! What an operator alerts on besides the per-version figures: build
//! identity, the process (CPU, memory, file descriptors, start time), open
//! connections and requests in flight per listener, and when each served
//! certificate expires.
//!
//! The listener figures are plain atomics the connection path bumps; they
//! are read, like everything else here, only when `/metrics` is scraped, and
//! written out as text by `render_into`. Series of a listener or certificate
//! that is gone simply stop being written. The process figures come from the
//! `metrics-process` collector at scrape time (`process`). May depend on
//! nothing in veer but `telemetry`'s text helpers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use super::process::ProcessFigures;

/// The live figures of one listener, shared by its accept loop and every
/// connection it accepted. Relaxed atomics: a scrape needs a recent value,
/// not an ordering with anything else.
#[derive(Debug, Default)]
pub struct ListenerGauges {
    connections: AtomicU64,
    in_flight: AtomicU64,
}

impl ListenerGauges {
    #[inline]
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Holds one open connection in its listener's count until dropped.
pub struct OpenConnection(Arc<ListenerGauges>);

impl OpenConnection {
    pub fn open(gauges: Arc<ListenerGauges>) -> OpenConnection {
        gauges.connection_opened();
        OpenConnection(gauges)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// The operator's figures of one proxy. The two mutexes are taken when a
/// listener is bound, a certificate is loaded, or `/metrics` is scraped:
/// never by a request.
pub struct Operator {
    listeners: Mutex<Vec<(String, Weak<ListenerGauges>)>>,
    /// `not_after` in unix seconds, per (listener, certificate file).
    certificates: Mutex<BTreeMap<(String, PathBuf), i64>>,
    process: ProcessFigures,
}

impl Default for Operator {
    fn default() -> Self {
        Operator::new()
    }
}

impl Operator {
    pub fn new() -> Operator {
        Operator {
            listeners: Mutex::new(Vec::new()),
            certificates: Mutex::new(BTreeMap::new()),
            process: ProcessFigures::default(),
        }
    }

    /// The gauges of the listener `name`, newly bound. They are exported
    /// while anything (the accept loop, a connection) still holds them.
    pub fn listener(&self, name: &str) -> Arc<ListenerGauges> {
        let gauges = Arc::new(ListenerGauges::default());
        let mut listeners = lock(&self.listeners);
        listeners.retain(|(_, g)| g.strong_count() > 0);
        listeners.push((name.to_string(), Arc::downgrade(&gauges)));
        gauges
    }

    /// Records when the certificate in `cert` served on `listener` expires
    /// (at start, and each time the file is read again).
    pub fn certificate_loaded(&self, listener: &str, cert: &Path, not_after: Option<SystemTime>) {
        let key = (listener.to_string(), cert.to_path_buf());
        let mut certificates = lock(&self.certificates);
        match not_after {
            Some(at) => {
                certificates.insert(key, unix_seconds(at));
            }
            None => {
                certificates.remove(&key);
            }
        }
    }

    /// Forgets the certificates of listeners that are no longer configured.
    pub fn retain_listeners(&self, configured: &[&str]) {
        lock(&self.certificates).retain(|(listener, _), _| configured.contains(&&**listener));
    }

    /// Writes the build info, the process figures, the listeners and the
    /// certificates as Prometheus text.
    pub fn render_into(&self, text: &mut String) {
        gauge_family(
            text,
            "veer_build_info",
            "Always 1; the labels say which build of veer runs.",
        );
        sample(
            text,
            "veer_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("os", std::env::consts::OS),
                ("arch", std::env::consts::ARCH),
            ],
            1.0,
        );

        // Writing into a String cannot fail.
        let _ = self.process.render_into(text);

        let mut listeners: Vec<(String, Arc<ListenerGauges>)> = lock(&self.listeners)
            .iter()
            .filter_map(|(name, g)| g.upgrade().map(|g| (name.clone(), g)))
            .collect();
        listeners.sort_by(|a, b| a.0.cmp(&b.0));
        gauge_family(
            text,
            "veer_listener_connections",
            "Client connections open on each listener.",
        );
        for (name, gauges) in &listeners {
            let value = gauges.connections() as f64;
            sample(
                text,
                "veer_listener_connections",
                &[("listener", name)],
                value,
            );
        }
        gauge_family(
            text,
            "veer_listener_requests_in_flight",
            "Requests on each listener whose response has not ended yet.",
        );
        for (name, gauges) in &listeners {
            let value = gauges.in_flight() as f64;
            sample(
                text,
                "veer_listener_requests_in_flight",
                &[("listener", name)],
                value,
            );
        }

        let certificates = lock(&self.certificates).clone();
        if !certificates.is_empty() {
            gauge_family(
                text,
                "veer_tls_certificate_expiry_seconds",
                "When each served certificate expires (not_after, unix time in seconds).",
            );
            for ((listener, cert), not_after) in &certificates {
                let cert = cert.display().to_string();
                sample(
                    text,
                    "veer_tls_certificate_expiry_seconds",
                    &[("listener", listener), ("cert", &cert)],
                    *not_after as f64,
                );
            }
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a gauge.
pub fn gauge_family(text: &mut String, name: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} gauge");
}

/// Writes one sample, its label values escaped as the text format wants.
pub fn sample(text: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    text.push_str(name);
    if !labels.is_empty() {
        text.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(key);
            text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => text.push_str("\\\\"),
                    '"' => text.push_str("\\\""),
                    '\n' => text.push_str("\\n"),
                    c => text.push(c),
                }
            }
            text.push('"');
        }
        text.push('}');
    }
    let _ = writeln!(text, " {value}");
}

fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the map whole: a panic elsewhere does not spoil it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_the_text_parses() {
        let operator = Operator::new();
        let gauges = operator.listener("pub\"lic");
        let connection = OpenConnection::open(Arc::clone(&gauges));
        gauges.request_started();
        operator.certificate_loaded(
            "pub\"lic",
            Path::new("C:\\certs\\a.crt"),
            Some(UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000)),
        );
        let mut text = String::new();
        operator.render_into(&mut text);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parses as Prometheus text");
        let value = |metric: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == metric)
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        assert_eq!(value("veer_listener_connections"), Some(1.0), "{text}");
        assert_eq!(value("veer_listener_requests_in_flight"), Some(1.0));
        assert_eq!(
            value("veer_tls_certificate_expiry_seconds"),
            Some(2_000_000_000.0)
        );
        assert_eq!(value("veer_build_info"), Some(1.0));

        drop(connection);
        gauges.request_ended();
        operator.retain_listeners(&[]);
        drop(gauges);
        let mut text = String::new();
        operator.render_into(&mut text);
        assert!(
            !text.contains("pub\\\"lic"),
            "gone listeners drop out: {text}"
        );
    }
}
