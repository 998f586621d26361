//! TLS with rustls (the `ring` provider; TLS 1.2 and 1.3 only): reading PEM
//! files, terminating on listeners (`server`), originating to upstreams
//! (`client`), and checking the files a config names (`check`).
//!
//! Everything here runs when a listener or endpoint is set up, or once per
//! handshake; nothing runs per request. May depend on `config`,
//! `telemetry` (handshake failures, certificate expiry) and `watch`.

pub mod check;
pub mod client;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// Certificates that expire sooner than this are warned about (`veer check`,
/// and whenever veer loads one).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The protocol versions veer speaks: rustls' safe defaults, nothing older.
pub(crate) static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider every config is built with.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS could not be set up from the files and settings a config names,
/// worded for the operator: which file, what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "{} holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no private key (expected a PEM block `-----BEGIN PRIVATE KEY-----`, \
         `-----BEGIN RSA PRIVATE KEY-----` or `-----BEGIN EC PRIVATE KEY-----`)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error(
        "the private key in {} does not belong to the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "cannot use the key in {} with the certificate in {}: {source}",
        key.display(),
        cert.display()
    )]
    KeyUnusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{} holds a certificate that cannot be a CA root: {source}", path.display())]
    NotARoot {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("tls.server_name `{name}`: {reason}")]
    ServerName { name: String, reason: String },
    #[error("tls.client_cert {}: {source}", cert.display())]
    ClientCert {
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client_ca {}: cannot verify clients with it: {reason}", ca.display())]
    ClientCa { ca: PathBuf, reason: String },
    /// rustls refused settings veer chose itself (protocol versions, the
    /// session ticketer): a bug in veer, not in the config.
    #[error("TLS setup: {0}")]
    Setup(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// A certificate chain and the key that belongs to it, ready to serve.
/// Refuses a key that does not match the chain's leaf.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let private = read_private_key(key)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        source => TlsError::KeyUnusable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        },
    })
}

/// The CA certificates in a PEM file, as trust roots.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::NotARoot {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// When a certificate stops being valid (`notAfter`).
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let seconds = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// A warning when `cert` has expired or expires within [`EXPIRY_WARNING`]
/// of `now`.
pub fn expiry_warning(cert: &CertificateDer<'_>, now: SystemTime) -> Option<String> {
    let end = not_after(cert)?;
    let date = humantime::format_rfc3339_seconds(end);
    match end.duration_since(now) {
        Err(_) => Some(format!(
            "the certificate expired at {date}: clients will refuse it; renew it"
        )),
        Ok(left) if left < EXPIRY_WARNING => Some(format!(
            "the certificate expires in {} days, at {date}: renew it",
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// The identity of a verified client certificate, for the identity header:
/// `Subject="CN=a,O=b";URI=spiffe://...;DNS=name` (the form of Envoy's
/// `x-forwarded-client-cert`), with every URI and DNS SAN.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject().to_string();
    let mut identity = format!("Subject=\"{}\"", subject.replace('"', "\\\""));
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    identity.push_str(";URI=");
                    identity.push_str(uri);
                }
                GeneralName::DNSName(dns) => {
                    identity.push_str(";DNS=");
                    identity.push_str(dns);
                }
                _ => {}
            }
        }
    }
    Some(identity)
}

/// The innermost rustls error of an I/O error from a handshake, if any.
pub(crate) fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration as Days, OffsetDateTime};

    /// A self-signed certificate for CN=billing: its DER and PEM, and its key.
    fn certificate(
        not_after: OffsetDateTime,
        san: rcgen::SanType,
    ) -> (CertificateDer<'static>, String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing");
        params.subject_alt_names = vec![san];
        params.not_before = OffsetDateTime::now_utc() - Days::days(30);
        params.not_after = not_after;
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.der().clone(), cert.pem(), key)
    }

    fn dns(name: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(name.try_into().expect("dns name"))
    }

    fn in_days(days: i64) -> OffsetDateTime {
        OffsetDateTime::now_utc() + Days::days(days) + Days::hours(2)
    }

    #[test]
    fn expiry_is_warned_within_fourteen_days_and_after() {
        let (later, _, _) = certificate(in_days(90), dns("a.test"));
        assert_eq!(expiry_warning(&later, SystemTime::now()), None);
        let (soon, _, _) = certificate(in_days(13), dns("a.test"));
        let warning = expiry_warning(&soon, SystemTime::now()).expect("warned");
        assert!(
            warning.starts_with("the certificate expires in 13 days, at "),
            "{warning}"
        );
        let (gone, _, _) = certificate(in_days(-2), dns("a.test"));
        let warning = expiry_warning(&gone, SystemTime::now()).expect("warned");
        assert!(
            warning.starts_with("the certificate expired at "),
            "{warning}"
        );
    }

    #[test]
    fn identity_names_subject_and_sans() {
        let uri = rcgen::SanType::URI("spiffe://mesh/sa/billing".try_into().expect("uri"));
        let (cert, _, _) = certificate(in_days(9), uri);
        assert_eq!(
            client_identity(&cert).as_deref(),
            Some("Subject=\"CN=billing\";URI=spiffe://mesh/sa/billing")
        );
        let (cert, _, _) = certificate(in_days(9), dns("b.test"));
        assert_eq!(
            client_identity(&cert).as_deref(),
            Some("Subject=\"CN=billing\";DNS=b.test")
        );
    }

    #[test]
    fn a_pair_must_match_and_files_must_hold_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, cert_pem, key) = certificate(in_days(90), dns("a.test"));
        let (_, _, other_key) = certificate(in_days(90), dns("a.test"));
        let cert = dir.path().join("c.pem");
        let own = dir.path().join("k.pem");
        let other = dir.path().join("o.pem");
        std::fs::write(&cert, cert_pem).expect("cert");
        std::fs::write(&own, key.serialize_pem()).expect("key");
        std::fs::write(&other, other_key.serialize_pem()).expect("other key");
        assert!(load_pair(&cert, &own).is_ok());
        let mismatch = load_pair(&cert, &other).expect_err("mismatch").to_string();
        assert_eq!(
            mismatch,
            format!(
                "the private key in {} does not belong to the certificate in {}",
                other.display(),
                cert.display()
            )
        );
        let not_a_key = read_private_key(&cert).expect_err("no key").to_string();
        assert!(not_a_key.contains("holds no private key"), "{not_a_key}");
        let not_a_cert = read_certificates(&own)
            .expect_err("no certificate")
            .to_string();
        assert!(not_a_cert.contains("holds no certificate"), "{not_a_cert}");
        let missing = dir.path().join("missing.pem");
        let unreadable = load_roots(&missing).expect_err("no file").to_string();
        assert!(
            unreadable.starts_with(&format!("cannot read {}: ", missing.display())),
            "{unreadable}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!!\n").expect("garbage");
        let invalid = read_certificates(&garbage)
            .expect_err("bad PEM")
            .to_string();
        assert!(
            invalid.starts_with(&format!("{} is not valid PEM: ", garbage.display())),
            "{invalid}"
        );
    }
}
