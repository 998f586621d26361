//! Origination: the TLS side of a version's endpoints. One `Originator` per
//! endpoint, built when the endpoint is first named by a snapshot; it offers
//! the ALPN protocol the version's `protocol` says (`h2` or `http/1.1`), so the
//! pool knows what it speaks before connecting. Verification is always on
//! unless `insecure_skip_verify`, which is logged at `warn` when the endpoint
//! is set up. rustls' client session cache makes reconnects resumptions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::TlsError;
use crate::config::{Protocol, UpstreamTls};

/// How an endpoint's connections are wrapped in TLS.
pub struct Originator {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// Set when the endpoint asked for a client certificate and the version
    /// has none (see [`Originator::explain_reset`]).
    missing_client_cert: Option<Arc<NoClientCert>>,
}

impl std::fmt::Debug for Originator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originator")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Originator {
    /// Reads the files `settings` names. Blocking; call it off the request path.
    pub fn new(
        settings: &UpstreamTls,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> Result<Originator, TlsError> {
        let provider = super::provider();
        let server_name = match &settings.server_name {
            Some(name) => ServerName::try_from(name.clone()).map_err(|e| TlsError::ServerName {
                name: name.clone(),
                reason: e.to_string(),
            })?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(super::VERSIONS)
            .map_err(TlsError::Setup)?;
        let builder = if settings.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match &settings.ca {
                Some(ca) => super::load_roots(ca)?,
                None => rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            builder.with_root_certificates(roots)
        };
        let mut missing_client_cert = None;
        let mut config = match &settings.client_cert {
            Some((cert, key)) => {
                let chain = super::read_certificates(cert)?;
                let key = super::read_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::ClientCert {
                        cert: cert.clone(),
                        source,
                    })?
            }
            None => {
                let resolver = Arc::new(NoClientCert {
                    addr,
                    asked: AtomicBool::new(false),
                });
                missing_client_cert = Some(Arc::clone(&resolver));
                builder.with_client_cert_resolver(resolver)
            }
        };
        config.alpn_protocols = vec![match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::Http2 => b"h2".to_vec(),
        }];
        Ok(Originator {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            missing_client_cert,
        })
    }

    /// With TLS 1.3 a server refuses a missing client certificate only after
    /// the client's side of the handshake is done, so the first request on
    /// the new connection fails as a reset. When the endpoint did ask for a
    /// certificate that the version lacks, that reset is the reason.
    pub fn explain_reset(&self) -> Option<String> {
        let resolver = self.missing_client_cert.as_ref()?;
        resolver.asked.load(Ordering::Relaxed).then(|| {
            "it asks for a client certificate and the version has none \
             (set tls.client_cert and tls.client_key)"
                .to_string()
        })
    }

    /// Runs the handshake over `stream`, bounded by `limit`. The error is a
    /// one-line reason worded for the operator.
    pub async fn connect(
        &self,
        stream: TcpStream,
        limit: Duration,
    ) -> Result<TlsStream<TcpStream>, String> {
        let handshake = self.connector.connect(self.server_name.clone(), stream);
        match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(match super::rustls_error(&err) {
                Some(tls) => self.describe(tls),
                None => format!("the connection closed during the handshake: {err}"),
            }),
            Err(_) => Err(format!("no handshake within {limit:?} (timeouts.connect)")),
        }
    }

    fn describe(&self, error: &Error) -> String {
        let name = match &self.server_name {
            ServerName::DnsName(name) => name.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => "?".to_string(),
        };
        match error {
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "its certificate is not signed by a trusted CA (check tls.ca)".to_string()
            }
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "its certificate is not valid for `{name}` (check tls.server_name): {error}"
            ),
            Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!("its certificate has expired: {error}"),
            Error::NoApplicationProtocol => {
                "it does not speak the version's protocol (ALPN); check `protocol`".to_string()
            }
            Error::AlertReceived(alert) => format!(
                "it refused the handshake ({alert:?} alert; does it want a client certificate? tls.client_cert)"
            ),
            other => other.to_string(),
        }
    }
}

/// The client-certificate resolver of a version without one: sends none,
/// and remembers (and says once) that the endpoint asked for one.
#[derive(Debug)]
struct NoClientCert {
    addr: SocketAddr,
    asked: AtomicBool,
}

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        if !self.asked.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.addr,
                "the endpoint asks for a client certificate and the version has none; \
                 it will likely refuse the connection (tls.client_cert, tls.client_key)"
            );
        }
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// `insecure_skip_verify`: accepts any certificate, but still checks that
/// the handshake is signed by the key of the certificate presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
