//! TLS end to end on loopback: termination (ALPN, SNI, chains, key formats),
//! certificate rotation under load, origination to TLS upstreams, mTLS both
//! ways, and old protocol versions refused. Certificates are made here with
//! rcgen; clients are hyper over tokio-rustls, curl and openssl.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Version;
use support::binary::VeerProcess;
use support::tls::{client_config, https_get, Ca, HttpsConnection, Leaf, TlsUpstream};
use support::upstream::Upstream;
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veer::server::{Proxy, RunningProxy, StartOptions};

const LIMIT: Duration = Duration::from_secs(20);

/// A proxy run from a config file in a temp dir (reloaded when it changes).
struct Running {
    proxy: RunningProxy,
    dir: tempfile::TempDir,
}

impl Running {
    async fn start(dir: tempfile::TempDir, yaml: &str) -> Running {
        let path = dir.path().join("veer.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let config = veer::config::load_file(&path)
            .unwrap_or_else(|e| panic!("config refused:\n{e}\n{yaml}"));
        let proxy = Proxy::start_with(
            config,
            StartOptions {
                source: Some(path),
                admin: false,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("veer did not start: {e}"));
        Running { proxy, dir }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.proxy.listener_addr(listener).expect("listener")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn metrics(&self) -> String {
        self.proxy.control().telemetry().render()
    }

    /// The value of the metric line starting with `prefix`, 0 when absent.
    fn metric(&self, prefix: &str) -> u64 {
        self.metrics()
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// YAML for one TLS listener `secure` with `tls` (a flow mapping) and one
/// service with the `version` lines given.
fn yaml(tls: &str, version: &str) -> String {
    format!(
        "listeners:\n  - name: secure\n    address: \"127.0.0.1:0\"\n    tls: {tls}\n  - name: plain\n    address: \"127.0.0.1:0\"\nservices:\n  - name: app\n    versions:\n      - {version}\n"
    )
}

fn endpoint_version(upstream: SocketAddr) -> String {
    format!("{{ name: stable, endpoints: [\"{upstream}\"], weight: 1 }}")
}

fn p(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_by_alpn() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "server");
    let tls = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");

    for (alpn, expected) in [
        (&["http/1.1"][..], Version::HTTP_11),
        (&["h2", "http/1.1"][..], Version::HTTP_2),
        (&[][..], Version::HTTP_11),
    ] {
        let config = client_config(&[&ca], alpn, None);
        let (answer, _) = within(
            LIMIT,
            "https get",
            https_get(addr, "app.test", config, "/x"),
        )
        .await
        .unwrap_or_else(|e| panic!("alpn {alpn:?}: {e}"));
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.version, expected, "alpn {alpn:?}");
        assert_eq!(answer.body, "stable");
        let seen = upstream.last_headers();
        assert_eq!(seen["x-forwarded-proto"], "https");
    }

    // A cleartext listener beside it still says http.
    let plain = proxy.addr("plain");
    let client = support::client::http1_client();
    let response = client
        .request(
            http::Request::get(format!("http://{plain}/"))
                .body(support::client::empty())
                .expect("request"),
        )
        .await
        .expect("plain request");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last_headers()["x-forwarded-proto"], "http");
}

/// curl, a real client with its own TLS stack, negotiates HTTP/2 by ALPN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_over_tls() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "server");
    let tls = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("app.test:{}:127.0.0.1", addr.port()))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://app.test:{}/", addr.port()))
        .output()
        .await
        .expect("run curl (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "stable\n2 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Ca::new("veer test root");
    // Served with its intermediate: the client trusts only the root.
    let intermediate = root.intermediate("veer test intermediate");
    let default = root.leaf(&["default.test"]);
    let api = intermediate.leaf(&["api.test"]);
    let wildcard = root.leaf(&["*.apps.test"]);
    let (dc, dk) = default.write(dir.path(), "default");
    let (ac, ak) = api.write(dir.path(), "api");
    let (wc, wk) = wildcard.write(dir.path(), "wildcard");
    let tls = format!(
        "{{ cert: {}, key: {}, certificates: [{{ cert: {}, key: {}, hosts: [api.test] }}, {{ cert: {}, key: {}, hosts: [\"*.apps.test\"] }}] }}",
        p(&dc), p(&dk), p(&ac), p(&ak), p(&wc), p(&wk)
    );
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");
    let config = client_config(&[&root], &["h2", "http/1.1"], None);
    for (sni, expected) in [
        ("api.test", &api),
        ("one.apps.test", &wildcard),
        ("default.test", &default),
    ] {
        let (answer, peer) = within(LIMIT, "sni get", https_get(addr, sni, config.clone(), "/"))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(answer.status, 200);
        assert_eq!(peer, expected.der, "{sni} got the wrong certificate");
    }
    // An unknown name gets the default, which the client then rejects for
    // its name: the handshake shows which certificate was sent.
    let insecure = insecure_client();
    let stream = within(
        LIMIT,
        "unknown sni",
        support::tls::connect(addr, "other.test", insecure),
    )
    .await
    .expect("handshake");
    let peer = stream.get_ref().1.peer_certificates().expect("certs")[0].clone();
    assert_eq!(peer, default.der);
}

/// Keys as PKCS#1 (RSA) and SEC1 (EC), converted with openssl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_pkcs1_and_sec1_are_accepted() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let ec = ca.leaf(&["ec.test"]);
    let (ec_cert, ec_pkcs8) = ec.write(dir.path(), "ec");
    let ec_sec1 = dir.path().join("ec-sec1.key");
    openssl(&["ec", "-in", &s(&ec_pkcs8), "-out", &s(&ec_sec1)]).await;
    assert!(std::fs::read_to_string(&ec_sec1)
        .expect("sec1")
        .contains("BEGIN EC PRIVATE KEY"));
    // RSA: openssl makes the key (PKCS#1) and a CSR, rcgen cannot make RSA
    // keys with ring; sign it with openssl too, by a CA openssl makes.
    let rsa_key = dir.path().join("rsa.key");
    let rsa_cert = dir.path().join("rsa.crt");
    openssl(&["genrsa", "-traditional", "-out", &s(&rsa_key), "2048"]).await;
    assert!(std::fs::read_to_string(&rsa_key)
        .expect("rsa")
        .contains("BEGIN RSA PRIVATE KEY"));
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &s(&rsa_key),
        "-out",
        &s(&rsa_cert),
        "-days",
        "30",
        "-subj",
        "/CN=rsa.test",
        "-addext",
        "subjectAltName=DNS:rsa.test",
    ])
    .await;
    let tls = format!(
        "{{ cert: {}, key: {}, certificates: [{{ cert: {}, key: {}, hosts: [rsa.test] }}] }}",
        p(&ec_cert),
        p(&ec_sec1),
        p(&rsa_cert),
        p(&rsa_key)
    );
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");
    let (answer, peer) = https_get(addr, "ec.test", client_config(&[&ca], &[], None), "/")
        .await
        .expect("ec");
    assert_eq!((answer.status.as_u16(), peer), (200, ec.der.clone()));
    let stream = support::tls::connect(addr, "rsa.test", insecure_client())
        .await
        .expect("rsa handshake");
    let peer = stream.get_ref().1.peer_certificates().expect("certs")[0].clone();
    assert_ne!(peer, ec.der, "rsa.test must get the RSA certificate");
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

async fn openssl(args: &[&str]) {
    let output = tokio::process::Command::new("openssl")
        .args(args)
        .output()
        .await
        .expect("run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A client that accepts any certificate, to see what the server sends.
fn insecure_client() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth(),
    )
}

// ----- rotation -----------------------------------------------------------

/// Requests on kept-alive connections and on fresh ones, until `stop`; counts
/// failures, and every answer in `answered` as it comes. Returns (requests,
/// failures).
fn load(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut done = 0;
        let mut failures = Vec::new();
        // Established before the rotation and used throughout it.
        let mut kept = Vec::new();
        for _ in 0..4 {
            kept.push(
                HttpsConnection::open(addr, "app.test", config.clone())
                    .await
                    .expect("open"),
            );
        }
        while !stop.load(Ordering::Relaxed) {
            for connection in &mut kept {
                match connection.get("/").await {
                    Ok(a) if a.status == 200 => done += 1,
                    Ok(a) => failures.push(format!("kept: status {}", a.status)),
                    Err(e) => failures.push(format!("kept: {e}")),
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            match https_get(addr, "app.test", config.clone(), "/").await {
                Ok((a, _)) if a.status == 200 => done += 1,
                Ok((a, _)) => failures.push(format!("fresh: status {}", a.status)),
                Err(e) => failures.push(format!("fresh: {e}")),
            }
            answered.fetch_add(1, Ordering::Relaxed);
        }
        (done, failures)
    })
}

/// The certificate a full handshake gets now (a resumed session would show
/// the certificate of the session it resumes).
async fn served(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> rustls::pki_types::CertificateDer<'static> {
    let mut fresh = (**config).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let (_, peer) = within(
        LIMIT,
        "probe",
        https_get(addr, "app.test", Arc::new(fresh), "/"),
    )
    .await
    .expect("probe");
    peer
}

async fn wait_for_cert(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, want: &Leaf) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while served(addr, config).await != want.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two loads of [`load`] on `addr`, and what they have answered so far.
struct RotationLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl RotationLoad {
    fn start(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> RotationLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let tasks = (0..2)
            .map(|_| load(addr, config.clone(), stop.clone(), answered.clone()))
            .collect();
        RotationLoad {
            stop,
            answered,
            tasks,
        }
    }

    /// Waits until `n` more requests have been answered.
    async fn progress(&self, n: u64) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        support::wait_until(LIMIT, "the TLS load goes on", || {
            self.answered.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    /// Stops; asserts no request failed and enough were made to mean anything.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for l in self.tasks {
            let (done, failures) = within(LIMIT, "load", l).await.expect("load task");
            assert!(failures.is_empty(), "failed requests: {failures:?}");
            total += done;
        }
        assert!(total > 20, "too little load to mean anything: {total}");
    }
}

/// Waits until veer's log has a line with every one of `parts`; the line.
async fn logged(veer: &VeerProcess, parts: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let log = veer.stderr();
        if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "veer never logged {parts:?}\n{}",
            veer.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rotation tests run the binary: its log is where the certificate
/// watcher says what it did, the event they wait on. The new certificate
/// must come from the watcher: veer reads certificate files at start, on a
/// config reload and when the watcher fires, never per handshake, and the
/// config file here never changes.
fn start_binary(tls: &str, upstream: SocketAddr) -> (VeerProcess, SocketAddr) {
    // The admin API on port 0: its default port may be taken.
    let config = format!(
        "{}admin:\n  address: \"127.0.0.1:0\"\n",
        yaml(tls, &endpoint_version(upstream))
    );
    let veer = VeerProcess::start(env!("CARGO_BIN_EXE_veer"), &config);
    let addr = veer.listener("secure");
    (veer, addr)
}

/// A rotation under load: veer starts on `first` at `cert` and `key`; under
/// load `renew` puts a second certificate in place, which the watcher must
/// pick up (new handshakes get it, the log says so); then `break_pair` puts a
/// key that does not belong to the certificate in place, which is refused
/// (the log names both files) while the second keeps serving. No request of
/// the load fails throughout.
async fn rotation_under_load(
    ca: &Ca,
    first: &Leaf,
    (cert, key): (&Path, &Path),
    renew: impl FnOnce(&Leaf),
    break_pair: impl FnOnce(),
) {
    let upstream = Upstream::start("stable").await;
    let tls = format!("{{ cert: {}, key: {} }}", p(cert), p(key));
    let (veer, addr) = start_binary(&tls, upstream.addr());
    let config = client_config(&[ca], &["h2", "http/1.1"], None);
    assert_eq!(served(addr, &config).await, first.der);

    let load = RotationLoad::start(addr, &config);
    load.progress(20).await;

    let second = ca.leaf(&["app.test"]);
    renew(&second);
    wait_for_cert(addr, &config, &second).await;
    logged(
        &veer,
        &["certificate reloaded", &cert.display().to_string()],
    )
    .await;

    break_pair();
    let refused = logged(&veer, &["certificate reload refused"]).await;
    assert!(
        refused.contains(&format!(
            "the private key in {} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        )),
        "{refused}"
    );
    assert_eq!(served(addr, &config).await, second.der);

    load.progress(20).await;
    load.finish().await;
}

/// Rename-over (certbot, editors): each file replaced by a rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_under_load_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let first = ca.leaf(&["app.test"]);
    let (cert, key) = first.write(dir.path(), "server");
    let renew = |second: &Leaf| {
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).expect("staging dir");
        let (new_cert, new_key) = second.write(&staging, "server");
        std::fs::rename(&new_cert, &cert).expect("rename cert over");
        std::fs::rename(&new_key, &key).expect("rename key over");
    };
    // A key of another certificate.
    let break_pair = || {
        let stray = ca.leaf(&["app.test"]);
        std::fs::write(&key, &stray.key_pem).expect("write stray key");
    };
    rotation_under_load(&ca, &first, (&cert, &key), renew, break_pair).await;
}

/// Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data ->
/// ..TIMESTAMP`, and an update renames a new `..data_tmp` over `..data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_secret_symlink_swap_under_load_drops_nothing() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).expect("secret dir");
    let ca = Ca::new("veer test root");
    let publish = |version: &str, leaf: &Leaf| {
        let folder = secret.join(version);
        std::fs::create_dir(&folder).expect("version dir");
        std::fs::write(folder.join("tls.crt"), &leaf.chain_pem).expect("crt");
        std::fs::write(folder.join("tls.key"), &leaf.key_pem).expect("key");
        symlink(version, secret.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).expect("swap ..data");
    };
    let first = ca.leaf(&["app.test"]);
    publish("..2026_01", &first);
    symlink("..data/tls.crt", secret.join("tls.crt")).expect("tls.crt link");
    symlink("..data/tls.key", secret.join("tls.key")).expect("tls.key link");
    let renew = |second: &Leaf| {
        publish("..2026_02", second);
        std::fs::remove_dir_all(secret.join("..2026_01")).expect("remove old version");
    };
    // A broken update: certificate and key that do not match.
    let break_pair = || {
        let (third, fourth) = (ca.leaf(&["app.test"]), ca.leaf(&["app.test"]));
        let broken = Leaf {
            key_pem: fourth.key_pem.clone(),
            ..third.clone()
        };
        publish("..2026_03", &broken);
    };
    let (cert, key) = (secret.join("tls.crt"), secret.join("tls.key"));
    rotation_under_load(&ca, &first, (&cert, &key), renew, break_pair).await;
}

/// A config reload that names other certificate files applies them to new
/// handshakes on the same socket; established connections stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_with_new_tls_paths_applies_them() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let first = ca.leaf(&["app.test"]);
    let second = ca.leaf(&["app.test"]);
    let (c1, k1) = first.write(dir.path(), "one");
    let (c2, k2) = second.write(dir.path(), "two");
    let version = endpoint_version(upstream.addr());
    let proxy = Running::start(
        dir,
        &yaml(
            &format!("{{ cert: {}, key: {} }}", p(&c1), p(&k1)),
            &version,
        ),
    )
    .await;
    let addr = proxy.addr("secure");
    let config = client_config(&[&ca], &["h2"], None);
    let mut kept = HttpsConnection::open(addr, "app.test", config.clone())
        .await
        .expect("open");
    assert_eq!(kept.peer, first.der);

    // Broken files in a reload: refused, nothing changes.
    let yaml_path = proxy.path("veer.yaml");
    let missing = proxy.path("missing.crt");
    std::fs::write(
        &yaml_path,
        yaml(
            &format!("{{ cert: {}, key: {} }}", p(&missing), p(&k2)),
            &version,
        ),
    )
    .expect("rewrite config");
    // Written in place, the file may be read empty first: that is a failed
    // reload of its own; the one to wait for names the certificate.
    support::wait_until(LIMIT, "the reload of the broken files", || {
        proxy
            .proxy
            .control()
            .last_reload()
            .is_some_and(|last| last.errors.iter().any(|e| e.contains("tls.cert")))
    })
    .await;
    assert_eq!(served(addr, &config).await, first.der);
    let last = proxy.proxy.control().last_reload().expect("a reload ran");
    assert_eq!(last.result, "failure");
    assert!(
        last.errors[0].contains("listeners[0].tls.cert: cannot read"),
        "{:?}",
        last.errors
    );

    std::fs::write(
        &yaml_path,
        yaml(
            &format!("{{ cert: {}, key: {} }}", p(&c2), p(&k2)),
            &version,
        ),
    )
    .expect("rewrite config");
    wait_for_cert(addr, &config, &second).await;
    assert_eq!(proxy.addr("secure"), addr, "the socket is kept");
    let answer = kept.get("/").await.expect("kept connection still serves");
    assert_eq!(answer.status, 200);
}

// ----- origination --------------------------------------------------------

fn tls_version(upstream: SocketAddr, tls: &str, protocol: &str) -> String {
    format!("{{ name: stable, endpoints: [\"{upstream}\"], weight: 1, protocol: {protocol}, tls: {tls} }}")
}

/// Plain listener, TLS upstream. Returns (status, x-veer-error, body,
/// x-seen-version, x-seen-scheme).
async fn through(proxy: &Running) -> (u16, String, String, String, String) {
    let addr = proxy.addr("plain");
    let client = support::client::http1_client();
    let response = within(
        LIMIT,
        "request",
        client.request(
            http::Request::get(format!("http://{addr}/"))
                .header("host", "app.test")
                .body(support::client::empty())
                .expect("request"),
        ),
    )
    .await
    .expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let (status, error, version, scheme) = (
        response.status().as_u16(),
        header("x-veer-error"),
        header("x-seen-version"),
        header("x-seen-scheme"),
    );
    use http_body_util::BodyExt;
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        error,
        String::from_utf8_lossy(&body).into_owned(),
        version,
        scheme,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_to_a_private_ca_over_http1_and_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream root");
    let ca_file = ca.write(dir.path(), "upstream-ca");
    let leaf = ca.leaf(&["upstream.internal"]);
    let h1 = TlsUpstream::start("h1", &leaf, &["http/1.1"], None).await;
    let h2 = TlsUpstream::start("h2", &leaf, &["h2"], None).await;
    let (cert, key) = Ca::new("edge")
        .leaf(&["app.test"])
        .write(dir.path(), "edge");
    let edge = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));
    let upstream_tls = format!("{{ server_name: upstream.internal, ca: {} }}", p(&ca_file));

    let proxy = Running::start(
        dir,
        &yaml(&edge, &tls_version(h1.addr(), &upstream_tls, "http1")),
    )
    .await;
    let (status, error, body, version, _) = through(&proxy).await;
    assert_eq!(
        (status, error.as_str(), body.as_str(), version.as_str()),
        (200, "", "h1", "HTTP/1.1")
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write(dir.path(), "upstream-ca");
    let upstream_tls = format!("{{ server_name: upstream.internal, ca: {} }}", p(&ca_file));
    let proxy2 = Running::start(
        dir,
        &yaml(&edge, &tls_version(h2.addr(), &upstream_tls, "http2")),
    )
    .await;
    let (status, _, body, version, scheme) = through(&proxy2).await;
    assert_eq!(
        (status, body.as_str(), version.as_str(), scheme.as_str()),
        (200, "h2", "HTTP/2.0", "https")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_with_a_wrong_ca_or_name_is_a_counted_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream root");
    let other = Ca::new("some other root");
    let other_file = other.write(dir.path(), "other-ca");
    ca.write(dir.path(), "upstream-ca");
    let leaf = ca.leaf(&["upstream.internal"]);
    let upstream = TlsUpstream::start("up", &leaf, &["http/1.1"], None).await;
    let (cert, key) = Ca::new("edge")
        .leaf(&["app.test"])
        .write(dir.path(), "edge");
    let edge = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));

    let wrong_ca = format!(
        "{{ server_name: upstream.internal, ca: {} }}",
        p(&other_file)
    );
    let proxy = Running::start(
        dir,
        &yaml(&edge, &tls_version(upstream.addr(), &wrong_ca, "http1")),
    )
    .await;
    let (status, error, body, _, _) = through(&proxy).await;
    assert_eq!((status, error.as_str()), (502, "upstream-tls"), "{body}");
    assert_eq!(
        body,
        format!(
            "veer: app/stable: TLS handshake with upstream {} failed: its certificate is not signed by a trusted CA (check tls.ca)\n",
            upstream.addr()
        )
    );
    assert_eq!(
        proxy.metric(
            "veer_upstream_failures_total{service=\"app\",version=\"stable\",reason=\"tls\"}"
        ),
        1,
        "{}",
        proxy.metrics()
    );
    assert_eq!(
        proxy.metric("veer_requests_total{service=\"app\",version=\"stable\",code=\"502\"}"),
        1
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write(dir.path(), "upstream-ca");
    let wrong_name = format!("{{ server_name: elsewhere.internal, ca: {} }}", p(&ca_file));
    let proxy = Running::start(
        dir,
        &yaml(&edge, &tls_version(upstream.addr(), &wrong_name, "http1")),
    )
    .await;
    let (status, error, body, _, _) = through(&proxy).await;
    assert_eq!((status, error.as_str()), (502, "upstream-tls"), "{body}");
    assert!(
        body.contains(
            "its certificate is not valid for `elsewhere.internal` (check tls.server_name)"
        ),
        "{body}"
    );
    assert_eq!(
        proxy.metric(
            "veer_upstream_failures_total{service=\"app\",version=\"stable\",reason=\"tls\"}"
        ),
        1
    );

    // insecure_skip_verify gets through anyway (test setups only).
    let dir = tempfile::tempdir().expect("tempdir");
    let skip = "{ insecure_skip_verify: true }";
    let proxy = Running::start(
        dir,
        &yaml(&edge, &tls_version(upstream.addr(), skip, "http1")),
    )
    .await;
    let (status, _, body, _, _) = through(&proxy).await;
    assert_eq!((status, body.as_str()), (200, "up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mesh root");
    let ca_file = ca.write(dir.path(), "mesh-ca");
    let upstream =
        TlsUpstream::start("up", &ca.leaf(&["upstream.internal"]), &["h2"], Some(&ca)).await;
    let (cc, ck) = ca
        .client("veer", "spiffe://mesh/veer")
        .write(dir.path(), "veer-client");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "edge");
    let edge = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));

    let without = format!("{{ server_name: upstream.internal, ca: {} }}", p(&ca_file));
    let with = format!(
        "{{ server_name: upstream.internal, ca: {}, client_cert: {}, client_key: {} }}",
        p(&ca_file),
        p(&cc),
        p(&ck)
    );
    let dir2 = tempfile::tempdir().expect("tempdir");
    let proxy = Running::start(
        dir,
        &yaml(&edge, &tls_version(upstream.addr(), &with, "http2")),
    )
    .await;
    let (status, _, body, version, _) = through(&proxy).await;
    assert_eq!(
        (status, body.as_str(), version.as_str()),
        (200, "up", "HTTP/2.0")
    );

    let proxy = Running::start(
        dir2,
        &yaml(&edge, &tls_version(upstream.addr(), &without, "http2")),
    )
    .await;
    let (status, error, body, _, _) = through(&proxy).await;
    assert_eq!((status, error.as_str()), (502, "upstream-tls"), "{body}");
    assert!(
        body.contains("it asks for a client certificate and the version has none"),
        "{body}"
    );
}

// ----- mTLS downstream ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_and_passes_its_identity() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let mesh = Ca::new("mesh clients");
    let stranger = Ca::new("stranger clients");
    let mesh_file = mesh.write(dir.path(), "mesh");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "server");
    let tls = format!(
        "{{ cert: {}, key: {}, client_ca: {}, identity_header: x-client-identity }}",
        p(&cert),
        p(&key),
        p(&mesh_file)
    );
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");

    // No certificate: refused (with TLS 1.3 the client learns it on its
    // first read, after its side of the handshake).
    let anonymous = client_config(&[&ca], &["http/1.1"], None);
    let refused = within(
        LIMIT,
        "anonymous",
        https_get(addr, "app.test", anonymous, "/"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );
    // A certificate from another CA: refused.
    let outsider = stranger.client("intruder", "spiffe://elsewhere/intruder");
    let config = client_config(&[&ca], &["http/1.1"], Some(&outsider));
    let refused = within(LIMIT, "stranger", https_get(addr, "app.test", config, "/")).await;
    assert!(refused.is_err(), "a stranger's certificate got {refused:?}");
    assert_eq!(upstream.total(), 0);

    // A mesh client: served, and its identity arrives; the one it forged does not.
    let member = mesh.client("billing", "spiffe://mesh/ns/prod/sa/billing");
    for alpn in ["http/1.1", "h2"] {
        let config = client_config(&[&ca], &[alpn], Some(&member));
        let mut connection = within(
            LIMIT,
            "member",
            HttpsConnection::open(addr, "app.test", config),
        )
        .await
        .expect("member handshake");
        let answer = connection
            .get_with("/", &[("x-client-identity", "Subject=\"CN=admin\"")])
            .await
            .expect("member request");
        assert_eq!(answer.status, 200);
        let seen = upstream.last_headers();
        let identities: Vec<_> = seen.get_all("x-client-identity").iter().collect();
        assert_eq!(
            identities,
            ["Subject=\"CN=billing\";URI=spiffe://mesh/ns/prod/sa/billing"],
            "{alpn}"
        );
    }
    let failures = |reason: &str| {
        proxy.metric(&format!(
            "veer_tls_handshake_failures_total{{listener=\"secure\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(failures("no_client_certificate"), 1, "{}", proxy.metrics());
    assert_eq!(failures("bad_client_certificate"), 1);
}

// ----- refused clients ----------------------------------------------------

/// A ClientHello that offers TLS 1.0 or 1.1 only (no supported_versions
/// extension), as an old client sends it; `sig_algs` adds the
/// signature_algorithms extension (TLS 1.2's), which old clients lack, so
/// that the server gets as far as the version.
fn legacy_client_hello(minor: u8, sig_algs: bool) -> Vec<u8> {
    let mut body = vec![3, minor];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend_from_slice(&[1, 0]); // null compression
    if sig_algs {
        // extensions: signature_algorithms (13): ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
        body.extend_from_slice(&[0, 10, 0, 13, 0, 6, 0, 4, 4, 3, 8, 4]);
    }
    let mut handshake = vec![1, 0, 0, u8::try_from(body.len()).expect("short")];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1, 0, u8::try_from(handshake.len()).expect("short")];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_clients_are_refused() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "server");
    let tls = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");

    for (minor, sig_algs, alert) in [(1u8, true, 70u8), (2, true, 70), (2, false, 40)] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&legacy_client_hello(minor, sig_algs))
            .await
            .expect("hello");
        let mut answer = Vec::new();
        within(LIMIT, "alert", stream.read_to_end(&mut answer))
            .await
            .expect("read");
        // An alert record, fatal (2): protocol_version (70), or
        // handshake_failure (40) for a hello without TLS 1.2's extensions;
        // then the connection closes.
        assert!(answer.len() >= 7, "{answer:?}");
        assert_eq!(
            (answer[0], answer[5], answer[6]),
            (0x15, 2, alert),
            "{answer:?}"
        );
    }

    // openssl's own client, made to speak TLS 1.1 (OpenSSL 3 allows it only
    // at security level 0), is refused; at TLS 1.2 it gets through.
    let s_client = |version: &'static str| {
        let target = addr.to_string();
        async move {
            let mut child = tokio::process::Command::new("openssl")
                .args([
                    "s_client",
                    version,
                    "-cipher",
                    "DEFAULT:@SECLEVEL=0",
                    "-connect",
                    &target,
                    "-servername",
                    "app.test",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run openssl (apt-get install openssl)");
            drop(child.stdin.take());
            within(LIMIT, "s_client", child.wait_with_output())
                .await
                .expect("s_client")
        }
    };
    let old = s_client("-tls1_1").await;
    assert!(
        !old.status.success(),
        "TLS 1.1 was accepted: {}",
        String::from_utf8_lossy(&old.stdout)
    );
    let modern = s_client("-tls1_2").await;
    assert!(
        modern.status.success(),
        "TLS 1.2 was refused: {}",
        String::from_utf8_lossy(&modern.stderr)
    );
    assert_eq!(
        proxy.metric(
            "veer_tls_handshake_failures_total{listener=\"secure\",reason=\"protocol_version\"}"
        ),
        4,
        "{}",
        proxy.metrics()
    );
}

/// Plain HTTP to the TLS port, and a client that never finishes its
/// handshake: both counted, neither blocks anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_stalled_handshakes_are_counted() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "server");
    let tls = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));
    // The handshake's limit is the header-read one: long enough that the
    // handshake served meanwhile finishes within it on a loaded machine (at
    // 300 ms it could be cut and counted as a second timeout).
    let yaml = format!(
        "{}limits:\n  header_read_timeout: 1s\n",
        yaml(&tls, &endpoint_version(upstream.addr()))
    );
    let proxy = Running::start(dir, &yaml).await;
    let addr = proxy.addr("secure");

    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = within(LIMIT, "plain http", plain.read_to_end(&mut sink)).await;

    // Says nothing: cut off after the handshake timeout, while others are served.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let served_meanwhile = https_get(addr, "app.test", client_config(&[&ca], &[], None), "/").await;
    assert_eq!(served_meanwhile.expect("served").0.status, 200);
    let mut byte = [0u8; 1];
    let closed = within(LIMIT, "silent client closed", silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    let failures = |reason: &str| {
        proxy.metric(&format!(
            "veer_tls_handshake_failures_total{{listener=\"secure\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(failures("not_tls"), 1, "{}", proxy.metrics());
    assert_eq!(failures("timeout"), 1, "{}", proxy.metrics());
}

/// One keep-alive exchange over TLS 1.3, read as raw records: the number of
/// TLS records that carried the response, and the response's plaintext.
/// The first exchange absorbs the session tickets the server sends after the
/// handshake; the second is the one counted.
fn records_of_second_response(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (usize, String) {
    use std::io::{Read, Write};

    let name = rustls::pki_types::ServerName::try_from("app.test").expect("name");
    let mut tls = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(LIMIT)).expect("read timeout");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).expect("handshake");
    }
    let mut exchange = |tls: &mut rustls::ClientConnection| -> (usize, String) {
        tls.writer()
            .write_all(b"GET /x HTTP/1.1\r\nhost: app.test\r\n\r\n")
            .expect("write request");
        while tls.wants_write() {
            tls.write_tls(&mut tcp).expect("send request");
        }
        // Raw bytes not yet whole records; each record header is 5 bytes:
        // type, version, length.
        let (mut raw, mut records, mut plaintext) = (Vec::new(), 0, Vec::new());
        loop {
            let mut buf = [0u8; 4096];
            let n = tcp.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed after {plaintext:?}");
            raw.extend_from_slice(&buf[..n]);
            while raw.len() >= 5 {
                let len = 5 + usize::from(u16::from_be_bytes([raw[3], raw[4]]));
                if raw.len() < len {
                    break;
                }
                let record: Vec<u8> = raw.drain(..len).collect();
                records += 1;
                tls.read_tls(&mut record.as_slice()).expect("feed record");
                tls.process_new_packets().expect("process record");
            }
            let mut chunk = Vec::new();
            match tls.reader().read_to_end(&mut chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("plaintext: {e}"),
            }
            plaintext.extend_from_slice(&chunk);
            let text = String::from_utf8_lossy(&plaintext);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("the response has a Content-Length");
                if body.len() >= length && raw.is_empty() {
                    return (records, text.into_owned());
                }
            }
        }
    };
    exchange(&mut tls);
    exchange(&mut tls)
}

/// A small response is one TLS record (and so one write): hyper's head and
/// body go to rustls as one vectored write. Two records would cost a second
/// seal, record header and, often, a second TCP segment per response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_response_is_one_tls_record() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("veer test root");
    let (cert, key) = ca.leaf(&["app.test"]).write(dir.path(), "server");
    let tls = format!("{{ cert: {}, key: {} }}", p(&cert), p(&key));
    let proxy = Running::start(dir, &yaml(&tls, &endpoint_version(upstream.addr()))).await;
    let addr = proxy.addr("secure");
    let config = client_config(&[&ca], &["http/1.1"], None);
    let (records, response) = within(
        LIMIT,
        "two exchanges",
        tokio::task::spawn_blocking(move || records_of_second_response(addr, config)),
    )
    .await
    .expect("client thread");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("stable"), "{response}");
    assert_eq!(
        records, 1,
        "the response came in {records} records: {response}"
    );
}
