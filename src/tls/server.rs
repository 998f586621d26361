//! Termination: one `Terminator` per TLS listener, holding its rustls config,
//! its certificates and the watch on their files.
//!
//! Certificates are chosen by SNI in a resolver that reads each pair from an
//! `ArcSwap`, once per handshake. When a pair's files change (rename over,
//! certbot, a Kubernetes Secret's `..data` swap), the pair is read again and,
//! if it is valid, stored: new handshakes get it, established connections
//! keep theirs. A broken pair is refused with an error in the log and the
//! old one keeps serving. A config reload that changes the `tls` block builds
//! a new `Terminator` and swaps it in the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::telemetry::Counter;
use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::TlsError;
use crate::config::{CertificateFiles, HostMatch, ListenerTls};
use crate::telemetry::Telemetry;
use crate::watch;

/// TLS 1.2 sessions kept for resumption by ID (TLS 1.3 and 1.2 tickets are
/// stateless and need no room here).
const SESSION_CACHE: usize = 4096;
/// A pair's two files are often replaced one after the other: wait this long
/// after the last change before reading them, so a rotation is one reload and
/// not a "key does not match" error followed by a success.
const SETTLE: Duration = Duration::from_millis(250);
/// How long a burst of events on one file must be quiet (as for the config).
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Why a client's handshake failed: the `reason` label of
/// `veer_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not done within `limits.header_read_timeout`.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// Not TLS at all (plain HTTP to the TLS port, a scanner).
    NotTls,
    /// The client offers only TLS 1.1 or older.
    ProtocolVersion,
    /// No cipher suite, group, signature scheme or ALPN protocol in common.
    NoSharedParameters,
    /// mTLS: the client sent no certificate.
    NoClientCertificate,
    /// mTLS: the client's certificate did not verify.
    BadClientCertificate,
    /// The client refused the handshake (usually: it does not trust our
    /// certificate, or the name does not match).
    ClientAlert,
    /// Anything else (malformed messages, misbehaving peers).
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::NotTls,
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::NoSharedParameters,
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::BadClientCertificate,
        HandshakeFailure::ClientAlert,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::NoSharedParameters => "no_shared_parameters",
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::BadClientCertificate => "bad_client_certificate",
            HandshakeFailure::ClientAlert => "client_alert",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies the error of a failed `accept`.
    pub fn classify(err: &std::io::Error) -> HandshakeFailure {
        use rustls::{Error, InvalidMessage, PeerIncompatible};
        let Some(tls) = super::rustls_error(err) else {
            return HandshakeFailure::Closed;
        };
        match tls {
            Error::InvalidMessage(InvalidMessage::InvalidContentType) => HandshakeFailure::NotTls,
            // signature_algorithms is mandatory from TLS 1.2 on: a hello
            // without it comes from a TLS 1.0/1.1 client, and rustls refuses
            // it before looking at the version.
            Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
            ) => HandshakeFailure::ProtocolVersion,
            Error::PeerIncompatible(_) | Error::NoApplicationProtocol => {
                HandshakeFailure::NoSharedParameters
            }
            Error::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            Error::InvalidCertificate(_) => HandshakeFailure::BadClientCertificate,
            Error::AlertReceived(_) => HandshakeFailure::ClientAlert,
            _ => HandshakeFailure::Other,
        }
    }
}

/// A listener's TLS: what its connections' handshakes need.
pub struct Terminator {
    listener: Arc<str>,
    acceptor: TlsAcceptor,
    identity_header: Option<HeaderName>,
    failures: [Counter; HandshakeFailure::ALL.len()],
    /// The tasks that follow the certificate files; ended with the terminator.
    watching: Vec<AbortHandle>,
}

/// What a successful handshake gives the connection.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    /// The verified client identity, when the listener passes it upstream.
    pub identity: Option<HeaderValue>,
}

impl Terminator {
    /// Reads every certificate and builds the listener's rustls config, and
    /// starts watching the files. Blocking (reads files); needs a tokio
    /// runtime for the watches.
    pub fn new(
        listener: &str,
        settings: &ListenerTls,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Terminator, TlsError> {
        let provider = super::provider();
        // Watch first, read second: a change after the read raises an event.
        let mut watches = Vec::new();
        for pair in &settings.certificates {
            watches.push(watch_pair(listener, pair));
        }
        let mut keys = Vec::new();
        for pair in &settings.certificates {
            let key = super::load_pair(&pair.cert, &pair.key)?;
            warn_if_expiring(listener, pair, &key);
            record_expiry(telemetry, listener, pair, &key);
            keys.push(Arc::new(ArcSwap::from_pointee(key)));
        }
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(super::VERSIONS)
            .map_err(TlsError::Setup)?;
        let builder = match &settings.client_ca {
            Some(ca) => {
                let roots = super::load_roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build();
                builder.with_client_cert_verifier(verifier.map_err(|e| TlsError::ClientCa {
                    ca: ca.clone(),
                    reason: e.to_string(),
                })?)
            }
            None => builder.with_no_client_auth(),
        };
        let resolver = SniResolver::new(&settings.certificates, keys.clone());
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Setup)?;
        let watching = watches
            .into_iter()
            .zip(settings.certificates.iter().zip(keys))
            .filter_map(|(changes, (pair, key))| {
                let changes = changes?;
                let task = tokio::spawn(follow(
                    listener.into(),
                    pair.clone(),
                    key,
                    changes,
                    Arc::clone(telemetry),
                ));
                Some(task.abort_handle())
            })
            .collect();
        Ok(Terminator {
            listener: listener.into(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            identity_header: settings.identity_header.clone(),
            failures: HandshakeFailure::ALL
                .map(|reason| telemetry.tls_handshake_failure_counter(listener, reason.as_str())),
            watching,
        })
    }

    /// The header that carries the client identity upstream, if any.
    pub fn identity_header(&self) -> Option<&HeaderName> {
        self.identity_header.as_ref()
    }

    /// Runs the handshake, bounded by `limit`. A failure is counted and
    /// logged (at most one line a second at `warn`).
    pub async fn accept(&self, stream: TcpStream, limit: Duration) -> Option<Accepted> {
        let failure = match tokio::time::timeout(limit, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let identity = match &self.identity_header {
                    Some(_) => identity_of(&stream),
                    None => None,
                };
                return Some(Accepted { stream, identity });
            }
            Ok(Err(err)) => (HandshakeFailure::classify(&err), err.to_string()),
            Err(_) => (
                HandshakeFailure::Timeout,
                format!("not done within {limit:?}"),
            ),
        };
        let (reason, detail) = failure;
        self.failures[reason as usize].increment(1);
        log_failure(&self.listener, reason, &detail);
        None
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        for task in &self.watching {
            task.abort();
        }
    }
}

fn identity_of(stream: &TlsStream<TcpStream>) -> Option<HeaderValue> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    let identity = super::client_identity(leaf)?;
    HeaderValue::from_str(&identity).ok()
}

/// At most one `warn` a second for failed handshakes, the rest at `debug`:
/// a scanner or a misconfigured client fleet must not flood the log; the
/// counts are in the metrics.
fn log_failure(listener: &str, reason: HandshakeFailure, detail: &str) {
    static LAST_WARN_SECOND: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let reason = reason.as_str();
    if LAST_WARN_SECOND.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(
            listener,
            reason,
            "TLS handshake failed: {detail} (further failures this second are logged at debug; see veer_tls_handshake_failures_total)"
        );
    } else {
        tracing::debug!(listener, reason, "TLS handshake failed: {detail}");
    }
}

fn warn_if_expiring(listener: &str, pair: &CertificateFiles, key: &CertifiedKey) {
    if let Some(warning) = key
        .cert
        .first()
        .and_then(|leaf| super::expiry_warning(leaf, SystemTime::now()))
    {
        tracing::warn!(listener, cert = %pair.cert.display(), "{warning}");
    }
}

/// `veer_tls_certificate_expiry_seconds` of the pair's leaf certificate.
fn record_expiry(
    telemetry: &Telemetry,
    listener: &str,
    pair: &CertificateFiles,
    key: &CertifiedKey,
) {
    let not_after = key.cert.first().and_then(super::not_after);
    telemetry
        .operator()
        .certificate_loaded(listener, &pair.cert, not_after);
}

/// The change signals of a pair's two files; `None` (logged) when they
/// cannot be watched: the pair then changes only with a config reload.
type PairChanges = (
    (watch::FileWatcher, tokio::sync::mpsc::Receiver<()>),
    (watch::FileWatcher, tokio::sync::mpsc::Receiver<()>),
);

fn watch_pair(listener: &str, pair: &CertificateFiles) -> Option<PairChanges> {
    let watched = watch::watch(&pair.cert, DEBOUNCE)
        .and_then(|cert| Ok((cert, watch::watch(&pair.key, DEBOUNCE)?)));
    match watched {
        Ok(both) => Some(both),
        Err(err) => {
            tracing::error!(
                listener,
                "not watching {} and {}: {err}; a renewed certificate will be used after a config reload",
                pair.cert.display(),
                pair.key.display()
            );
            None
        }
    }
}

/// Reads the pair again each time one of its files changes, and stores it
/// when it is valid.
async fn follow(
    listener: Arc<str>,
    pair: CertificateFiles,
    current: Arc<ArcSwap<CertifiedKey>>,
    changes: PairChanges,
    telemetry: Arc<Telemetry>,
) {
    let ((_cert_watch, mut cert_changes), (_key_watch, mut key_changes)) = changes;
    loop {
        tokio::select! {
            Some(()) = cert_changes.recv() => {}
            Some(()) = key_changes.recv() => {}
            else => return,
        }
        // Let the other file of the pair follow before reading both.
        loop {
            tokio::time::sleep(SETTLE).await;
            let more = cert_changes.try_recv().is_ok() | key_changes.try_recv().is_ok();
            if !more {
                break;
            }
        }
        let (cert, key) = (pair.cert.clone(), pair.key.clone());
        let loaded = tokio::task::spawn_blocking(move || super::load_pair(&cert, &key)).await;
        match loaded {
            Ok(Ok(key)) => {
                warn_if_expiring(&listener, &pair, &key);
                record_expiry(&telemetry, &listener, &pair, &key);
                current.store(Arc::new(key));
                tracing::info!(
                    listener = %listener,
                    cert = %pair.cert.display(),
                    "certificate reloaded; new handshakes use it"
                );
            }
            Ok(Err(reason)) => tracing::error!(
                listener = %listener,
                "certificate reload refused, the previous certificate keeps serving: {reason}"
            ),
            Err(_) => return,
        }
    }
}

/// Picks a certificate by the client's SNI: an exact host first, then the
/// longest `*.suffix`, else the default (the first pair).
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<ArcSwap<CertifiedKey>>>,
    exact: HashMap<String, usize>,
    /// Longest suffix first.
    suffixes: Vec<(String, usize)>,
}

impl SniResolver {
    fn new(pairs: &[CertificateFiles], keys: Vec<Arc<ArcSwap<CertifiedKey>>>) -> SniResolver {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        for (index, pair) in pairs.iter().enumerate() {
            for host in &pair.hosts {
                match host {
                    HostMatch::Exact(name) => {
                        exact.entry(name.clone()).or_insert(index);
                    }
                    HostMatch::Suffix(suffix) => suffixes.push((suffix.clone(), index)),
                }
            }
        }
        suffixes.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        SniResolver {
            keys,
            exact,
            suffixes,
        }
    }

    fn pick(&self, name: &str) -> usize {
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            &lowered
        } else {
            name
        };
        if let Some(&index) = self.exact.get(name) {
            return index;
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or(0, |&(_, index)| index)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = hello.server_name().map_or(0, |name| self.pick(name));
        self.keys.get(index).map(|key| key.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pair(hosts: &[HostMatch]) -> CertificateFiles {
        CertificateFiles {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            hosts: hosts.to_vec(),
        }
    }

    #[test]
    fn sni_picks_exact_then_longest_suffix_then_default() {
        let pairs = [
            pair(&[]),
            pair(&[HostMatch::Suffix(".example.com".into())]),
            pair(&[
                HostMatch::Suffix(".api.example.com".into()),
                HostMatch::Exact("example.com".into()),
            ]),
            pair(&[HostMatch::Exact("v1.api.example.com".into())]),
        ];
        let resolver = SniResolver::new(&pairs, Vec::new());
        assert_eq!(resolver.pick("unknown.test"), 0);
        assert_eq!(resolver.pick("www.example.com"), 1);
        assert_eq!(resolver.pick("example.com"), 2);
        assert_eq!(resolver.pick("v2.api.example.com"), 2);
        assert_eq!(resolver.pick("V1.API.example.com"), 3);
        assert_eq!(resolver.pick(".example.com"), 0);
    }
}
