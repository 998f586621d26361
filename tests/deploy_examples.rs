//! The Kubernetes examples (examples/kubernetes/) kept from rotting, with
//! nothing but Rust: every veer config the manifests carry passes `veer
//! check`, the kustomizations name only files that exist and every manifest
//! file is used by one, the dashboard ConfigMap's copy matches
//! examples/grafana/, the sidecar's config, with its addresses moved to
//! loopback, proxies real requests to local upstreams through the real
//! binary, and a rolling upgrade of veer (two binaries behind a
//! connection-level balancer) fails no request. `.ci/deploy` adds what needs outside tools: the rendered overlays
//! against the Kubernetes schemas, each config checked verbatim by a `fleet`
//! build, hadolint on the Dockerfile, and the image itself.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;
use support::binary::VeerProcess;
use support::client::{get, http1_client, send};
use support::upstream::Upstream;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_veer");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn load(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn dump(doc: &Yaml) -> String {
    let mut out = String::new();
    YamlEmitter::new(&mut out).dump(doc).expect("emit YAML");
    out
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_string())
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read examples dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// What each kustomization uses: resources (files or directories), patch
/// files, and generator files (`key=path` or `path`), by path.
struct Kustomizations {
    /// kustomization directory → files its configMapGenerators read.
    generated: BTreeMap<PathBuf, Vec<PathBuf>>,
    /// Every file some kustomization names (resources, patches, generators).
    used: BTreeSet<PathBuf>,
    /// Every kustomization directory.
    roots: Vec<PathBuf>,
}

fn kustomizations() -> Kustomizations {
    let mut k = Kustomizations {
        generated: BTreeMap::new(),
        used: BTreeSet::new(),
        roots: Vec::new(),
    };
    for path in files(&examples()) {
        if path.file_name().is_none_or(|n| n != "kustomization.yaml") {
            continue;
        }
        let dir = path.parent().expect("parent").to_path_buf();
        let doc = load(&path)
            .into_iter()
            .next()
            .expect("a kustomization document");
        let at = |name: &str| -> PathBuf {
            let full = dir.join(name);
            assert!(
                full.exists(),
                "{} names `{name}`, which does not exist",
                path.display()
            );
            full.canonicalize().expect("canonical path")
        };
        for resource in strings(&doc["resources"]) {
            let full = at(&resource);
            if full.is_file() {
                k.used.insert(full);
            }
        }
        for patch in doc["patches"].as_vec().into_iter().flatten() {
            if let Some(file) = patch["path"].as_str() {
                k.used.insert(at(file));
            }
        }
        for generator in doc["configMapGenerator"].as_vec().into_iter().flatten() {
            for file in strings(&generator["files"]) {
                let file = file.split_once('=').map_or(file.as_str(), |(_, p)| p);
                let full = at(file);
                k.used.insert(full.clone());
                k.generated.entry(dir.clone()).or_default().push(full);
            }
        }
        k.roots.push(dir);
    }
    k
}

/// The veer configs the manifests carry: the files kustomize turns into
/// ConfigMaps (`veer*.yaml`), and any ConfigMap manifest with a `veer.yaml`
/// key.
fn veer_configs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for files in kustomizations().generated.values() {
        for file in files {
            if file
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("veer") && n.ends_with(".yaml"))
            {
                out.push((file.display().to_string(), read(file)));
            }
        }
    }
    for path in files(&examples()) {
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        for doc in load(&path) {
            if doc["kind"].as_str() == Some("ConfigMap") {
                if let Some(text) = doc["data"]["veer.yaml"].as_str() {
                    out.push((format!("{} (ConfigMap)", path.display()), text.to_string()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn check(config: &str, dir: &Path) -> std::process::Output {
    let path = dir.join("veer.yaml");
    std::fs::write(&path, config).expect("write config");
    std::process::Command::new(BIN)
        .args(["check", "--offline", "-c"])
        .arg(&path)
        .output()
        .expect("run veer check")
}

/// Moves every endpoint written as a DNS name to `127.0.0.1` at its port,
/// and drops the `fleet` block from a build without etcd support: what a
/// build that lacks either would refuse for that reason alone.
fn without_unsupported(config: &str, names: bool) -> String {
    let mut doc = YamlLoader::load_from_str(config)
        .expect("config is YAML")
        .into_iter()
        .next()
        .expect("one document");
    let root = doc.as_mut_hash().expect("config is a mapping");
    if !cfg!(feature = "fleet") {
        root.remove(&key("fleet"));
    }
    if names {
        for service in root
            .get_mut(&key("services"))
            .and_then(Yaml::as_mut_vec)
            .into_iter()
            .flatten()
        {
            for version in service["versions"].as_mut_vec().into_iter().flatten() {
                for endpoint in version["endpoints"].as_mut_vec().into_iter().flatten() {
                    let text = endpoint.as_str().unwrap_or_default().to_string();
                    if text.parse::<SocketAddr>().is_err() {
                        let port = text.rsplit_once(':').map_or("80", |(_, p)| p);
                        *endpoint = Yaml::String(format!("127.0.0.1:{port}"));
                    }
                }
            }
        }
    }
    dump(&doc)
}

#[test]
fn every_veer_config_in_the_manifests_passes_veer_check() {
    let configs = veer_configs();
    assert!(
        configs.len() >= 4,
        "expected the edge, blue-green, sidecar and staging configs, found {:?}",
        configs.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, config) in &configs {
        // Verbatim first; a build without etcd support (`fleet`) or without
        // DNS endpoints refuses those parts alone, so check the rest then
        // (`.ci/deploy` checks every config verbatim with a `fleet` build).
        let out = check(config, dir.path());
        if out.status.success() {
            continue;
        }
        let errors = String::from_utf8_lossy(&out.stderr).to_string();
        let names = errors.contains("DNS names are not supported");
        let only_unsupported = errors.lines().all(|l| {
            l.contains("DNS names are not supported") || l.contains("built without etcd support")
        });
        assert!(only_unsupported, "{path} fails veer check:\n{errors}");
        let out = check(&without_unsupported(config, names), dir.path());
        assert!(
            out.status.success(),
            "{path} fails veer check beyond DNS names and the fleet block:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{path}: passes veer check but for what this build lacks:\n{errors}");
    }
}

#[test]
fn every_manifest_file_is_used_and_every_named_file_exists() {
    let k = kustomizations();
    assert!(k.roots.len() >= 10, "kustomizations found: {:?}", k.roots);
    for path in files(&examples()) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "kustomization.yaml" {
            continue;
        }
        let full = path.canonicalize().expect("canonical path");
        assert!(
            k.used.contains(&full),
            "{} is not named by any kustomization: add it to one or remove it",
            path.display()
        );
    }
}

#[test]
fn the_dashboard_configmap_matches_the_grafana_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let original = read(&root.join("examples/grafana/veer-dashboard.json"));
    let copy = read(&root.join("examples/kubernetes/monitoring/veer-dashboard.json"));
    assert!(
        original == copy,
        "examples/kubernetes/monitoring/veer-dashboard.json differs from \
         examples/grafana/veer-dashboard.json: copy the dashboard over again"
    );
}

/// The sidecar's config as the test runs it: listeners and the admin API on
/// loopback port 0, a token file and state_dir in `dir`, no fleet, and each
/// version's endpoints replaced by the local upstream for that version.
fn sidecar_config(dir: &Path, upstreams: &BTreeMap<String, SocketAddr>) -> String {
    let source = examples().join("sidecar/base/veer.yaml");
    let mut doc = load(&source).into_iter().next().expect("one document");
    let token = dir.join("admin-token");
    std::fs::write(&token, "sidecar-test-token\n").expect("write token");
    {
        let root = doc.as_mut_hash().expect("a mapping");
        root.remove(&key("fleet"));
        root.insert(
            key("state_dir"),
            key(&dir.join("state").display().to_string()),
        );
    }
    for listener in doc["listeners"].as_mut_vec().expect("listeners") {
        listener["address"] = key("127.0.0.1:0");
    }
    doc["admin"]["address"] = key("127.0.0.1:0");
    doc["admin"]["token_file"] = key(&token.display().to_string());
    for service in doc["services"].as_mut_vec().expect("services") {
        let name = service["name"].as_str().expect("service name").to_string();
        for version in service["versions"].as_mut_vec().expect("versions") {
            let version_name = version["name"].as_str().expect("version name");
            let upstream = upstreams
                .get(&format!("{name}/{version_name}"))
                .unwrap_or_else(|| panic!("no test upstream for {name}/{version_name}"));
            version["endpoints"] = Yaml::Array(vec![key(&upstream.to_string())]);
        }
    }
    dump(&doc)
}

#[tokio::test]
async fn the_sidecar_config_proxies_to_local_upstreams() {
    let profile_stable = Upstream::start("agent-profile-stable").await;
    let profile_canary = Upstream::start("agent-profile-canary").await;
    let ledger = Upstream::start("agent-ledger").await;
    let upstreams = BTreeMap::from([
        ("agent-profile/stable".to_string(), profile_stable.addr()),
        ("agent-profile/canary".to_string(), profile_canary.addr()),
        ("agent-ledger/stable".to_string(), ledger.addr()),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let veer = VeerProcess::start(BIN, &sidecar_config(dir.path(), &upstreams));
    let outbound = veer.listener("outbound");
    let client = http1_client();

    // The app calls http://agent-profile:15001/ (hostAliases point the name
    // at 127.0.0.1): the Host header names the dependency, port and all.
    let mut answered = BTreeMap::<String, u32>::new();
    for _ in 0..200 {
        let answer = send(
            &client,
            get(
                &format!("http://{outbound}/profiles/42"),
                Some("agent-profile:15001"),
            ),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        *answered
            .entry(answer.upstream().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    let stable = answered.get("agent-profile-stable").copied().unwrap_or(0);
    let canary = answered.get("agent-profile-canary").copied().unwrap_or(0);
    assert_eq!(stable + canary, 200, "{answered:?}");
    assert!(canary > 0 && canary < stable, "95/5 split: {answered:?}");

    let answer = send(
        &client,
        get(
            &format!("http://{outbound}/ledger/7"),
            Some("agent-ledger:15001"),
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.upstream(), Some("agent-ledger"));
    assert_eq!(ledger.total(), 1);

    // A name the config does not know is never forwarded.
    let answer = send(
        &client,
        get(&format!("http://{outbound}/"), Some("somewhere-else:15001")),
    )
    .await;
    answer.assert_proxy_error(404);

    // The probes the manifests point the kubelet at.
    let admin: SocketAddr = veer
        .output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .expect("admin address");
    for path in ["/health/readiness", "/health/liveness", "/metrics"] {
        let answer = send(&client, get(&format!("http://{admin}{path}"), None)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    drop(veer);
}

/// What one client of the upgrade test saw.
#[derive(Default)]
struct Seen {
    answered: u64,
    /// Sent on a kept-alive connection that closed before any answer: an
    /// idempotent GET that HTTP clients send again on a new connection.
    resent: u64,
    /// Answered on a connection to a pod the balancer no longer sends new
    /// connections to.
    on_old_connections: u64,
    failed: Vec<String>,
}

async fn connect(
    addr: SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<support::Body>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

/// One client behind a connection-level load balancer, as kube-proxy is: a
/// new connection goes to the pod `target` names now, an open one stays on
/// the pod it was made to until that pod closes it.
async fn client_loop(
    target: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut conn = None;
    let mut conn_addr = None;
    let mut sent_on_it = 0u32;
    // Bounded in count as well as by `stop`.
    for _ in 0..5_000 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if conn
            .as_ref()
            .is_none_or(|c: &hyper::client::conn::http1::SendRequest<support::Body>| c.is_closed())
        {
            let addr = *target.lock().expect("target lock");
            conn = connect(addr).await;
            conn_addr = Some(addr);
            sent_on_it = 0;
            if conn.is_none() {
                seen.failed.push(format!("connect to {addr} refused"));
                continue;
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        if sender.ready().await.is_err() {
            conn = None;
            continue;
        }
        let request = http::Request::get("/")
            .header("host", "web")
            .body(support::client::empty())
            .expect("request");
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let moved = conn_addr != Some(*target.lock().expect("target lock"));
                match support::client::read_answer(response).await {
                    Ok(_) if status == 200 => {
                        seen.answered += 1;
                        seen.on_old_connections += u64::from(moved);
                    }
                    Ok(_) => seen.failed.push(format!("answered {status}")),
                    Err(err) => seen.failed.push(format!("body cut: {err}")),
                }
                sent_on_it += 1;
            }
            Err(err) if sent_on_it > 0 && (err.is_canceled() || err.is_incomplete_message()) => {
                seen.resent += 1;
                conn = None;
            }
            Err(err) => {
                seen.failed.push(format!("{err}"));
                conn = None;
            }
        }
    }
    seen
}

/// Upgrading veer itself, as the edge Deployment's rolling update does it:
/// a new veer starts and is ready, new connections go to it, the old one
/// keeps answering the connections it has through the preStop pause, then
/// gets SIGTERM, drains and exits 0, and no request fails.
#[tokio::test]
async fn a_rolling_upgrade_of_veer_fails_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let upstream = Upstream::start("stable").await;
    let yaml = support::config::ConfigBuilder::new()
        .limit("drain_timeout", "10s")
        .service(support::config::service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    let mut old = VeerProcess::start(BIN, &yaml);
    let target = Arc::new(Mutex::new(old.listener(support::config::LISTENER)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client_loop(Arc::clone(&target), Arc::clone(&stop))))
        .collect();
    let pause = Duration::from_millis(300);
    tokio::time::sleep(pause).await;

    // maxSurge 1: the new pod starts; once ready, the Service sends new
    // connections to it (the old pod is terminating: out of the endpoints).
    let new = VeerProcess::start(BIN, &yaml);
    *target.lock().expect("target lock") = new.listener(support::config::LISTENER);
    // The preStop pause: the old veer still answers what arrives.
    tokio::time::sleep(pause).await;
    old.signal("TERM");
    let status = old
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("the old veer did not exit\n{}", old.output()));
    assert!(status.success(), "old veer: {status}\n{}", old.output());
    tokio::time::sleep(pause).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = Seen::default();
    for client in clients {
        let seen = client.await.expect("client task");
        total.answered += seen.answered;
        total.resent += seen.resent;
        total.on_old_connections += seen.on_old_connections;
        total.failed.extend(seen.failed);
    }
    assert!(
        total.failed.is_empty(),
        "{} requests failed during the upgrade ({} answered): {:?}",
        total.failed.len(),
        total.answered,
        &total.failed[..total.failed.len().min(10)]
    );
    assert!(total.answered > 0, "no request was answered");
    assert!(
        total.on_old_connections > 0,
        "the old veer answered nothing on the connections it kept after the switch"
    );
    eprintln!(
        "upgrade: {} answered ({} by the old veer on kept connections after the switch), \
         {} sent again after a kept-alive connection closed, 0 failed",
        total.answered, total.on_old_connections, total.resent
    );
    drop(new);
}
