//! TLS for the tests: a private PKI made with rcgen (CAs, intermediates,
//! server and client certificates written as PEM files), a real client (hyper
//! over tokio-rustls, ALPN, SNI, client certificates) and a TLS upstream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use super::BoxError;

/// A certificate authority (a root, or an intermediate with its chain).
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate.
    pub der: CertificateDer<'static>,
    pem: String,
    /// PEM of this CA's certificate, then of its issuers up to (not
    /// including) the root: what a leaf's chain file appends.
    chain_pem: String,
    root: bool,
}

/// A certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    pub der: CertificateDer<'static>,
    /// The leaf and its intermediates, PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    params
}

impl Ca {
    /// A new self-signed root.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign ca");
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            chain_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            root: true,
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().expect("intermediate key");
        let params = ca_params(name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        let mut chain_pem = cert.pem();
        if !self.root {
            chain_pem.push_str(&self.chain_pem);
        }
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            chain_pem,
            issuer: Issuer::new(params, key),
            root: false,
        }
    }

    /// The CA certificate alone, PEM (for a trust file).
    pub fn pem(&self) -> String {
        self.pem.clone()
    }

    /// Writes this CA's certificate to `dir/NAME.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).expect("write ca");
        path
    }

    /// A certificate for `names` (DNS names or IP addresses), good for
    /// servers and clients, valid from yesterday for a year.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_until(
            names,
            time::OffsetDateTime::now_utc() + time::Duration::days(365),
        )
    }

    /// As [`Ca::leaf`], valid until `not_after`.
    pub fn leaf_until(&self, names: &[&str], not_after: time::OffsetDateTime) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        self.sign(
            names,
            names.first().copied().unwrap_or("leaf"),
            not_after,
            &key,
        )
    }

    /// A certificate for `names` with common name `cn` and a URI SAN, for
    /// clients (mTLS identities).
    pub fn client(&self, cn: &str, uri: &str) -> Leaf {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri san"))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign client");
        self.finish(cert, &key)
    }

    fn sign(
        &self,
        names: &[&str],
        cn: &str,
        not_after: time::OffsetDateTime,
        key: &KeyPair,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = not_after;
        let cert = params.signed_by(key, &self.issuer).expect("sign leaf");
        self.finish(cert, key)
    }

    fn finish(&self, cert: rcgen::Certificate, key: &KeyPair) -> Leaf {
        let mut chain_pem = cert.pem();
        if !self.root {
            chain_pem.push_str(&self.chain_pem);
        }
        Leaf {
            der: cert.der().clone(),
            chain_pem,
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.crt` (the chain) and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.chain_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain pem")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `roots`, offering `alpn`, with an optional
/// client certificate.
pub fn client_config(
    roots: &[&Ca],
    alpn: &[&str],
    client: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store.add(ca.der.clone()).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.private_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Opens a TLS connection to `addr`, sending `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTPS connection kept open: HTTP/2 when ALPN chose `h2`, else HTTP/1.1.
pub struct HttpsConnection {
    sender: Sender,
    /// The leaf certificate the server presented.
    pub peer: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    host: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpsConnection {
    /// Handshakes with `addr` as `sni` and starts HTTP over it.
    pub async fn open(
        addr: SocketAddr,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<HttpsConnection, BoxError> {
        let stream = connect(addr, sni, config).await?;
        let (_, session) = stream.get_ref();
        let peer = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or("no server certificate")?
            .clone()
            .into_owned();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(HttpsConnection {
            sender,
            peer,
            alpn,
            host: sni.to_string(),
        })
    }

    /// GET `path`, with extra headers.
    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, BoxError> {
        let mut builder = Request::get(format!("https://{}{path}", self.host));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response: Response<Incoming> = match &mut self.sender {
            Sender::H1(sender) => {
                let request = builder
                    .uri(path)
                    .header(http::header::HOST, &self.host)
                    .body(Full::new(Bytes::new()))?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                let request = builder.body(Full::new(Bytes::new()))?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, BoxError> {
        self.get_with(path, &[]).await
    }
}

/// One GET on a fresh connection.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(Answer, CertificateDer<'static>), BoxError> {
    let mut connection = HttpsConnection::open(addr, sni, config).await?;
    let answer = connection.get(path).await?;
    Ok((answer, connection.peer))
}

/// A TLS upstream: answers every request 200 with its name as the body,
/// `x-upstream: NAME` and `x-seen-version: HTTP/1.1|HTTP/2.0`, and
/// `x-seen-scheme` (the request URI's scheme, when it has one).
pub struct TlsUpstream {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl TlsUpstream {
    /// Serves `leaf` on `127.0.0.1:0`, offering `alpn`; requires client
    /// certificates from `client_ca` when given.
    pub async fn start(
        name: &str,
        leaf: &Leaf,
        alpn: &[&str],
        client_ca: Option<&Ca>,
    ) -> TlsUpstream {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der.clone()).expect("client root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(leaf.chain(), leaf.private_key())
            .expect("upstream cert");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = super::bind_loopback();
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = watch::channel(false);
        let name = name.to_string();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let name = name.clone();
                let mut conn_stop = stopped.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from(name.clone())));
                            let headers = response.headers_mut();
                            headers.insert("x-upstream", name.parse().expect("name header"));
                            headers.insert(
                                "x-seen-version",
                                format!("{:?}", req.version())
                                    .parse()
                                    .expect("version header"),
                            );
                            if let Some(scheme) = req.uri().scheme_str() {
                                headers.insert(
                                    "x-seen-scheme",
                                    scheme.parse().expect("scheme header"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        TlsUpstream { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
