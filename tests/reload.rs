//! Hot reload, end to end on real files, real sockets and real upstreams:
//! every way a config file gets replaced (in place, rename over, delete and
//! create, a Kubernetes ConfigMap's `..data` symlink swap) is one reload whose
//! weights apply at once; 200 reloads under continuous load fail no request and
//! never send one where the config in force did not allow; a broken, empty or
//! deleted file changes nothing and says so in `/status` and the metrics;
//! requests in flight to a removed endpoint finish; listeners follow the file
//! (new bound before old closed, a failed bind refuses the whole reload); and,
//! on the binary, run-time weights survive a restart, a corrupt state file is
//! reported and survived, and SIGHUP reloads.
//!
//! Every wait is a poll with a generous deadline; nothing asserts how long a
//! reload takes (that is `benches/reload_latency.rs`'s job).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use support::binary::VeerProcess;
use support::client::{empty, full, get, h2c_client, http1_client, send, try_send};
use support::client::{Answer, HttpClient};
use support::load::{upstream_of_200, Load, LoadPlan};
use support::upstream::Upstream;
use support::{wait_until, within};
use tokio::time::Instant;
use veer::server::{Proxy, RunningProxy, StartOptions};

/// How long any one reload may take to show before a test gives up. Far above
/// what a reload needs (milliseconds): only a lost reload gets near it.
const RELOAD_LIMIT: Duration = Duration::from_secs(30);
/// Only when the watcher was slow to start (a probe of [`until_watching`] went
/// unanswered and another was written): how long to let a late reload of an
/// earlier probe land, several times the watcher's debounce and burst cap.
const SLOW_START_SETTLE: Duration = Duration::from_millis(750);
/// Bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------
// Configs

/// The config of these tests: one service `web` with versions `stable` and
/// `canary`. `stable`'s revision is a marker that tells one config from
/// another in the snapshot (it changes no routing: there is no guard).
#[derive(Debug, Clone)]
struct Cfg {
    listeners: Vec<(String, String)>,
    stable: Vec<SocketAddr>,
    stable_weight: u32,
    canary: Vec<SocketAddr>,
    canary_weight: u32,
    revision: String,
    state_dir: Option<PathBuf>,
}

impl Cfg {
    fn new(
        stable: &[SocketAddr],
        stable_weight: u32,
        canary: &[SocketAddr],
        canary_weight: u32,
    ) -> Cfg {
        Cfg {
            listeners: vec![("public".into(), "127.0.0.1:0".into())],
            stable: stable.to_vec(),
            stable_weight,
            canary: canary.to_vec(),
            canary_weight,
            revision: "r0".into(),
            state_dir: None,
        }
    }

    fn weights(&self, stable_weight: u32, canary_weight: u32) -> Cfg {
        Cfg {
            stable_weight,
            canary_weight,
            ..self.clone()
        }
    }

    fn yaml(&self) -> String {
        let list = |eps: &[SocketAddr]| {
            eps.iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut y = String::from("listeners:\n");
        for (name, address) in &self.listeners {
            y += &format!("  - name: \"{name}\"\n    address: \"{address}\"\n");
        }
        y += "admin:\n  address: \"127.0.0.1:0\"\n";
        if let Some(dir) = &self.state_dir {
            y += &format!(
                "state_dir: {}\n",
                serde_json::Value::from(dir.display().to_string())
            );
        }
        y += "services:\n  - name: web\n    versions:\n";
        y += &format!(
            "      - name: stable\n        revision: \"{}\"\n        endpoints: [{}]\n        weight: {}\n",
            self.revision,
            list(&self.stable),
            self.stable_weight
        );
        y += &format!(
            "      - name: canary\n        revision: \"c1\"\n        endpoints: [{}]\n        weight: {}\n",
            list(&self.canary),
            self.canary_weight
        );
        y += "    timeouts: { connect: 2s, request: 30s }\n";
        y
    }

    /// What the snapshot shows once this config is in force.
    fn view(&self) -> Vec<VersionView> {
        vec![
            VersionView {
                name: "stable".into(),
                revision: self.revision.clone(),
                weight: self.stable_weight,
                endpoints: self.stable.clone(),
            },
            VersionView {
                name: "canary".into(),
                revision: "c1".into(),
                weight: self.canary_weight,
                endpoints: self.canary.clone(),
            },
        ]
    }

    /// The upstreams (by name) this config may send a request to: the
    /// endpoints of the versions with a weight above zero.
    fn allowed(&self, names: &HashMap<SocketAddr, String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (eps, weight) in [
            (&self.stable, self.stable_weight),
            (&self.canary, self.canary_weight),
        ] {
            if weight > 0 {
                out.extend(eps.iter().map(|e| names[e].clone()));
            }
        }
        out
    }
}

/// One version as the snapshot in force has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VersionView {
    name: String,
    revision: String,
    weight: u32,
    endpoints: Vec<SocketAddr>,
}

/// The snapshot in force: its generation and service `web`'s versions.
fn in_force(proxy: &RunningProxy) -> (u64, Vec<VersionView>) {
    let snapshot = proxy.control().snapshot();
    let versions = snapshot
        .services
        .iter()
        .filter(|s| &*s.name == "web")
        .flat_map(|s| s.versions.iter())
        .map(|v| VersionView {
            name: v.name.to_string(),
            revision: v.revision.to_string(),
            weight: v.weight,
            endpoints: v.endpoints.iter().map(|e| e.addr()).collect(),
        })
        .collect();
    (snapshot.generation, versions)
}

fn generation(proxy: &RunningProxy) -> u64 {
    proxy.control().snapshot().generation
}

// ---------------------------------------------------------------------------
// Ways of replacing the file

#[derive(Debug, Clone, Copy)]
enum Way {
    /// Truncate and write the same inode (`echo > file`, some editors).
    InPlace,
    /// Write a temp file and rename it over (vim, emacs, GitOps tools).
    RenameOver,
    /// Remove the file, then create a new one.
    DeleteCreate,
    /// kubelet's ConfigMap volume: `veer.yaml -> ..data/veer.yaml`,
    /// `..data -> ..<timestamp>`; an update renames a new `..data_tmp` link
    /// over `..data`, then removes the old folder.
    ConfigMap,
}

impl Way {
    /// Lays out `dir` with the first config; returns the path veer is given.
    fn setup(self, dir: &Path, text: &str) -> PathBuf {
        let file = dir.join("veer.yaml");
        match self {
            Way::ConfigMap => {
                configmap_folder(dir, "..2026_A", text);
                symlink("..2026_A", dir.join("..data")).expect("..data -> ..2026_A");
                symlink("..data/veer.yaml", &file).expect("veer.yaml -> ..data/veer.yaml");
            }
            _ => std::fs::write(&file, text).expect("write the first config"),
        }
        file
    }

    /// Replaces the config in `dir` with `text`; `n` numbers the replacement
    /// (a ConfigMap update gets a new folder each time).
    fn replace(self, dir: &Path, n: usize, text: &str) {
        let file = dir.join("veer.yaml");
        match self {
            Way::InPlace => write_in_place(&file, text),
            Way::RenameOver => rename_over(&file, text),
            Way::DeleteCreate => {
                std::fs::remove_file(&file).expect("delete the config");
                std::fs::write(&file, text).expect("create the config");
            }
            Way::ConfigMap => {
                let folder = format!("..2026_B{n}");
                configmap_folder(dir, &folder, text);
                let old = std::fs::read_link(dir.join("..data")).expect("read ..data");
                symlink(&folder, dir.join("..data_tmp")).expect("..data_tmp");
                std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))
                    .expect("rename ..data_tmp over ..data");
                std::fs::remove_dir_all(dir.join(old)).expect("remove the old folder");
            }
        }
    }
}

fn configmap_folder(dir: &Path, folder: &str, text: &str) {
    let folder = dir.join(folder);
    std::fs::create_dir(&folder).expect("ConfigMap folder");
    std::fs::write(folder.join("veer.yaml"), text).expect("ConfigMap file");
}

fn write_in_place(file: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .expect("open the config for writing in place");
    f.write_all(text.as_bytes()).expect("write in place");
}

fn rename_over(file: &Path, text: &str) {
    let tmp = file.with_file_name(".veer.yaml.tmp");
    std::fs::write(&tmp, text).expect("write the temp file");
    std::fs::rename(&tmp, file).expect("rename over the config");
}

// ---------------------------------------------------------------------------
// The proxy, its metrics and its admin API

/// Starts veer in-process on `path`, watching it, with the admin API.
async fn start_watched(path: &Path) -> RunningProxy {
    let config = veer::config::load_file(path)
        .unwrap_or_else(|e| panic!("veer refused the test config {}:\n{e}", path.display()));
    Proxy::start_with(
        config,
        StartOptions {
            source: Some(path.to_path_buf()),
            admin: true,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("veer did not start: {e}"))
}

fn public(proxy: &RunningProxy) -> SocketAddr {
    proxy.listener_addr("public").expect("listener `public`")
}

fn admin_addr(proxy: &RunningProxy) -> SocketAddr {
    proxy.admin_addr().expect("the admin API was started")
}

/// The value of one series in a Prometheus exposition; 0 when absent.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `veer_config_reloads_total{result=RESULT}` as the proxy counts it.
fn reloads(proxy: &RunningProxy, result: &str) -> u64 {
    let text = proxy.control().telemetry().render();
    series(
        &text,
        &format!("veer_config_reloads_total{{result=\"{result}\"}}"),
    )
}

async fn admin_call(
    client: &HttpClient,
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(empty, |b| full(b.to_string())))
        .expect("build admin request");
    send(client, request).await
}

async fn status(client: &HttpClient, admin: SocketAddr) -> serde_json::Value {
    let answer = admin_call(client, admin, "GET", "/status", None).await;
    assert_eq!(answer.status, 200, "GET /status: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("/status is JSON")
}

async fn metric(client: &HttpClient, admin: SocketAddr, name: &str) -> u64 {
    let answer = admin_call(client, admin, "GET", "/metrics", None).await;
    assert_eq!(answer.status, 200, "GET /metrics: {}", answer.text());
    series(&answer.text(), name)
}

const RELOADS_FAILURE: &str = "veer_config_reloads_total{result=\"failure\"}";
const RELOADS_SUCCESS: &str = "veer_config_reloads_total{result=\"success\"}";

/// Asserts that `error` reads `FILE:LINE:COL: path: reason` with FILE the
/// config's path; returns (path, reason).
fn parse_config_error(error: &str, file: &Path) -> (String, String) {
    let prefix = format!("{}:", file.display());
    let rest = error
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("error does not start with `{prefix}`: {error}"));
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().unwrap_or_default();
    let column = parts.next().unwrap_or_default();
    let tail = parts.next().unwrap_or_default();
    assert!(
        line.parse::<usize>().is_ok_and(|l| l >= 1)
            && column.parse::<usize>().is_ok_and(|c| c >= 1),
        "no LINE:COL after the file name: {error}"
    );
    let (path, reason) = tail
        .strip_prefix(' ')
        .and_then(|t| t.split_once(": "))
        .unwrap_or_else(|| panic!("no ` path: reason` after LINE:COL: {error}"));
    assert!(!path.trim().is_empty(), "empty field path: {error}");
    assert!(!reason.trim().is_empty(), "empty reason: {error}");
    (path.to_string(), reason.to_string())
}

// ---------------------------------------------------------------------------
// Clients and waiting

/// Which upstream answered a GET through the proxy (a 200 is required).
async fn who(client: &HttpClient, addr: SocketAddr) -> String {
    let answer = send(client, get(&format!("http://{addr}/"), None)).await;
    assert_eq!(answer.status, 200, "body {:?}", answer.text());
    answer.upstream().unwrap_or("(none)").to_string()
}

/// Asserts that the next `n` requests all reach `expected`.
async fn all_reach(client: &HttpClient, addr: SocketAddr, n: usize, expected: &str, what: &str) {
    for i in 0..n {
        let got = who(client, addr).await;
        assert_eq!(got, expected, "{what}: request {i} of {n}");
    }
}

/// Polls an async condition every 10 ms; panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the snapshot in force shows `cfg`; returns its generation.
async fn until_in_force(proxy: &RunningProxy, cfg: &Cfg, what: &str) -> u64 {
    let want = cfg.view();
    let deadline = Instant::now() + RELOAD_LIMIT;
    loop {
        let (generation, got) = in_force(proxy);
        if got == want {
            return generation;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: the new config is not in force after {RELOAD_LIMIT:?}\n\
                 want {want:?}\ngot  {got:?} (generation {generation})\nlast reload: {:?}",
                proxy.control().last_reload()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The watcher is set up by a task the proxy spawns at start, so a change
/// made in the first instants after `start_with` returns may predate it
/// (see `a_change_written_right_after_start_is_not_lost`). Tests that are
/// about something else first make sure the watch is live: they rewrite the
/// file with a harmless comment until one such rewrite is reloaded.
///
/// On return no reload is owed: the one probe written was reloaded (the
/// watcher reports a burst only when the bytes changed, so its trailing
/// events bring no second one), or, when the watcher was slow and several
/// probes went out, the late ones have had [`SLOW_START_SETTLE`] to land.
async fn until_watching(proxy: &RunningProxy, path: &Path, cfg: &Cfg) {
    let successes = reloads(proxy, "success");
    for attempt in 0..30 {
        rename_over(path, &format!("{}# watch probe {attempt}\n", cfg.yaml()));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if reloads(proxy, "success") > successes {
                if attempt > 0 {
                    tokio::time::sleep(SLOW_START_SETTLE).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!(
        "the config watcher never picked up a change of {}",
        path.display()
    );
}

// ---------------------------------------------------------------------------
// Each way of replacing the file: exactly one reload, new weights at once

async fn one_reload_per_replacement(way: Way) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
    let green = blue.weights(0, 100);
    let path = way.setup(dir.path(), &blue.yaml());
    let proxy = start_watched(&path).await;
    let addr = public(&proxy);
    let client = http1_client();
    all_reach(&client, addr, 20, "stable", "before any reload").await;
    if matches!(way, Way::ConfigMap) {
        // The probe renames over the link itself, which is not what kubelet
        // does; wait for the watch by generation instead.
        wait_for_watch_configmap(&proxy, dir.path(), &blue).await;
    } else {
        until_watching(&proxy, &path, &blue).await;
    }

    // Two replacements: 100/0 -> 0/100 -> 100/0. The second shows the watch
    // survives the first (a rename or a `..data` swap changes the inode).
    for (n, (cfg, expected)) in [(&green, "canary"), (&blue, "stable")]
        .into_iter()
        .enumerate()
    {
        let what = format!("{way:?} replacement {n}");
        let g0 = generation(&proxy);
        let (s0, f0) = (reloads(&proxy, "success"), reloads(&proxy, "failure"));
        way.replace(dir.path(), n, &cfg.yaml());
        let g1 = until_in_force(&proxy, cfg, &what).await;
        assert_eq!(g1, g0 + 1, "{what}: one reload moves the generation by one");
        // No second reload comes after the first: a later change (a new
        // revision marker, written atomically) is reloaded, and it is the
        // only other reload by then.
        let marker = Cfg {
            revision: format!("marker-{n}"),
            ..cfg.clone()
        };
        match way {
            Way::ConfigMap => way.replace(dir.path(), 2000 + n, &marker.yaml()),
            _ => rename_over(&path, &marker.yaml()),
        }
        let g2 = until_in_force(&proxy, &marker, &format!("{what}: the marker")).await;
        assert_eq!(g2, g0 + 2, "{what}: a second reload followed");
        assert_eq!(
            reloads(&proxy, "success"),
            s0 + 2,
            "{what}: successful reloads (the replacement's and the marker's)"
        );
        let failures = reloads(&proxy, "failure") - f0;
        match way {
            // Between the two syscalls a reader may find the file empty or
            // missing: that is one failed reload, which changes nothing.
            Way::InPlace | Way::DeleteCreate => {
                assert!(failures <= 1, "{what}: {failures} failed reloads")
            }
            Way::RenameOver | Way::ConfigMap => {
                assert_eq!(failures, 0, "{what}: an atomic replacement cannot fail")
            }
        }
        let last = proxy
            .control()
            .last_reload()
            .expect("a reload was recorded");
        assert_eq!(last.result, "success", "{what}: {last:?}");
        all_reach(&client, addr, 50, expected, &what).await;
    }
    within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
}

/// The ConfigMap layout's way of waiting for the watch: swap in the same
/// config plus a comment until a swap is reloaded.
async fn wait_for_watch_configmap(proxy: &RunningProxy, dir: &Path, cfg: &Cfg) {
    let successes = reloads(proxy, "success");
    for attempt in 0..30 {
        Way::ConfigMap.replace(
            dir,
            1000 + attempt,
            &format!("{}# watch probe {attempt}\n", cfg.yaml()),
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if reloads(proxy, "success") > successes {
                if attempt > 0 {
                    tokio::time::sleep(SLOW_START_SETTLE).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("the config watcher never picked up a ConfigMap swap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_place_is_one_reload() {
    within(
        TEST_LIMIT,
        "write in place",
        one_reload_per_replacement(Way::InPlace),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_is_one_reload() {
    within(
        TEST_LIMIT,
        "rename over",
        one_reload_per_replacement(Way::RenameOver),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_create_is_one_reload() {
    within(
        TEST_LIMIT,
        "delete + create",
        one_reload_per_replacement(Way::DeleteCreate),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_one_reload() {
    within(
        TEST_LIMIT,
        "ConfigMap swap",
        one_reload_per_replacement(Way::ConfigMap),
    )
    .await;
}

/// `start_with` returns once the proxy serves; a deploy script that writes
/// the next config right then must not have that change lost. Tried on
/// three fresh proxies, since what it guards against is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_written_right_after_start_is_not_lost() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
    let green = blue.weights(0, 100);
    for attempt in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Way::RenameOver.setup(dir.path(), &blue.yaml());
        let proxy = start_watched(&path).await;
        rename_over(&path, &green.yaml());
        let what = format!("attempt {attempt}: a change written right after start");
        within(TEST_LIMIT, &what, async {
            until_in_force(&proxy, &green, &what).await;
            all_reach(&http1_client(), public(&proxy), 20, "canary", &what).await;
        })
        .await;
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    }
}

/// The watcher hands the reloader the bytes it read. Files written one after
/// another with no pause (renamed over and written in place by turns, some
/// followed by `POST /reload`, which reads the file itself) change the file
/// between the watcher's read and the parse, and while a read is pending:
/// the newest file must end in force, and nothing older may follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_replacements_ends_in_the_newest_file() {
    within(TEST_LIMIT, "bursts of replacements", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let base = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Way::RenameOver.setup(dir.path(), &base.yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let client = http1_client();
        until_watching(&proxy, &path, &base).await;
        for round in 0..4 {
            let configs: Vec<Cfg> = (0..12)
                .map(|k| Cfg {
                    revision: format!("burst-{round}-{k}"),
                    ..base.weights(100 - k * 5, k * 5)
                })
                .collect();
            for (k, cfg) in configs.iter().enumerate() {
                if (k + round) % 2 == 0 {
                    rename_over(&path, &cfg.yaml());
                } else {
                    write_in_place(&path, &cfg.yaml());
                }
                if round % 2 == 1 && k % 4 == 2 {
                    let answer = admin_call(&client, admin, "POST", "/reload", None).await;
                    assert_eq!(answer.status, 200, "POST /reload: {}", answer.text());
                }
            }
            let newest = configs.last().expect("a config");
            let what = format!("round {round}");
            until_in_force(&proxy, newest, &what).await;
            let settled = Instant::now() + SLOW_START_SETTLE;
            while Instant::now() < settled {
                let (generation, got) = in_force(&proxy);
                assert_eq!(
                    got,
                    newest.view(),
                    "{what}: an older file was put in force after the newest (generation {generation})"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Load

/// One request of the load: the epoch (see `reloads_under_load_...`) read
/// before it was sent and after its answer was read, and who answered (or
/// what went wrong).
type Sample = support::load::Sample<Result<String, String>>;

/// Clients sending requests without pause until stopped: pooled HTTP/1.1
/// keep-alive, pooled h2c, and a new TCP connection per request.
fn load(addr: SocketAddr, epoch: Arc<AtomicU64>) -> Load<Result<String, String>> {
    use support::load::Via::{H2c, KeepAlive, NewConnection};
    LoadPlan::workers(
        format!("http://{addr}/load"),
        &[KeepAlive, KeepAlive, H2c, NewConnection, NewConnection],
    )
    .numbered()
    .tag(epoch)
    .max_requests(1_000_000)
    .max_run(TEST_LIMIT)
    .start(upstream_of_200)
}

fn failures(samples: &[Sample]) -> Vec<&String> {
    samples
        .iter()
        .filter_map(|s| s.record.as_ref().err())
        .collect()
}

/// 200 reloads under continuous load, alternating weights (100/0, 0/100,
/// 70/30, 30/70) and adding and removing endpoints of both versions; half
/// by the watcher alone, half by `POST /reload` right after the write; the
/// file written in place or renamed over.
///
/// What "allowed" means around a swap: config `k` is written, then the test
/// waits until the snapshot shows it (each config carries a unique revision)
/// and only then sets `epoch = k`. Reloads run one at a time and read the
/// file inside that turn, so once config `k` is seen in force no later
/// publish can bring back an older file. Hence from the moment `epoch = k`
/// is set until `epoch = k + 1` is, the config in force is `k` or `k + 1`,
/// and a request that saw epochs `a` (sent) and `b` (answered) was routed by
/// one of configs `a..=b + 1`: its upstream must be allowed by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_nothing_and_route_only_where_allowed() {
    within(TEST_LIMIT, "200 reloads under load", async {
        const RELOADS: usize = 200;
        let ups = [
            Upstream::start("stable-1").await,
            Upstream::start("stable-2").await,
            Upstream::start("canary-1").await,
            Upstream::start("canary-2").await,
        ];
        let names: HashMap<SocketAddr, String> = ups
            .iter()
            .map(|u| (u.addr(), u.name().to_string()))
            .collect();
        let [s1, s2, c1, c2] = [ups[0].addr(), ups[1].addr(), ups[2].addr(), ups[3].addr()];
        let config = |k: usize| {
            let (sw, cw) = [(100, 0), (0, 100), (70, 30), (30, 70)][k % 4];
            let stable = if (k / 2).is_multiple_of(2) {
                vec![s1]
            } else {
                vec![s1, s2]
            };
            let canary = if (k / 3).is_multiple_of(2) {
                vec![c1, c2]
            } else {
                vec![c2]
            };
            Cfg {
                revision: format!("r{k}"),
                ..Cfg::new(&stable, sw, &canary, cw)
            }
        };
        let configs: Vec<Cfg> = (0..=RELOADS).map(config).collect();

        let dir = tempfile::tempdir().expect("tempdir");
        let path = Way::RenameOver.setup(dir.path(), &configs[0].yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let admin_client = http1_client();
        until_watching(&proxy, &path, &configs[0]).await;
        until_in_force(&proxy, &configs[0], "the first config").await;

        let epoch = Arc::new(AtomicU64::new(0));
        let load = load(public(&proxy), Arc::clone(&epoch));
        let mut generations = vec![generation(&proxy)];
        for (k, cfg) in configs.iter().enumerate().skip(1) {
            let before = generation(&proxy);
            match k % 4 {
                0 => rename_over(&path, &cfg.yaml()),
                1 => write_in_place(&path, &cfg.yaml()),
                2 => {
                    rename_over(&path, &cfg.yaml());
                    let answer = admin_call(&admin_client, admin, "POST", "/reload", None).await;
                    assert_eq!(answer.status, 200, "POST /reload {k}: {}", answer.text());
                }
                _ => {
                    write_in_place(&path, &cfg.yaml());
                    let answer = admin_call(&admin_client, admin, "POST", "/reload", None).await;
                    assert_eq!(answer.status, 200, "POST /reload {k}: {}", answer.text());
                }
            }
            let now = until_in_force(&proxy, cfg, &format!("reload {k}")).await;
            assert!(now > before, "reload {k}: generation {before} -> {now}");
            generations.push(now);
            epoch.store(k as u64, Ordering::SeqCst);
        }
        // Some traffic on the last config too.
        load.progress(100).await;
        let samples = load.finish().await;

        let failed = failures(&samples);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed during reloads; first ones: {:?}",
            failed.len(),
            samples.len(),
            &failed[..failed.len().min(10)]
        );
        let allowed: Vec<BTreeSet<String>> = configs.iter().map(|c| c.allowed(&names)).collect();
        let mut wrong = Vec::new();
        for s in &samples {
            let Ok(upstream) = &s.record else { continue };
            let last = (s.after as usize + 1).min(RELOADS);
            let ok = (s.before as usize..=last).any(|k| allowed[k].contains(upstream));
            if !ok {
                wrong.push(format!(
                    "{upstream} answered a request sent under config {} and answered under {}",
                    s.before, s.after
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} requests went where no config in force allowed: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        // The load did overlap the reloads: requests were answered under
        // many configs, and every upstream served.
        let epochs: BTreeSet<u64> = samples.iter().map(|s| s.before).collect();
        assert!(
            epochs.len() >= 10,
            "requests under only {} configs",
            epochs.len()
        );
        for up in &ups {
            assert!(up.total() > 0, "{} got no request", up.name());
        }
        assert!(
            generations.windows(2).all(|w| w[0] < w[1]),
            "{generations:?}"
        );
        eprintln!(
            "{} requests across {RELOADS} reloads, generations {} -> {}, failed reloads {}",
            samples.len(),
            generations[0],
            generations[RELOADS],
            reloads(&proxy, "failure")
        );
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Broken configs

/// A bad file under load changes nothing, and says so; fixing it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_under_load_changes_nothing_until_fixed() {
    within(TEST_LIMIT, "bad config under load", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        let green = blue.weights(0, 100);
        let path = Way::RenameOver.setup(dir.path(), &blue.yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let client = http1_client();
        until_watching(&proxy, &path, &blue).await;

        let epoch = Arc::new(AtomicU64::new(0));
        let load = load(public(&proxy), Arc::clone(&epoch));
        let g0 = generation(&proxy);
        let failures0 = metric(&client, admin, RELOADS_FAILURE).await;

        // The green config with a typo: if any of it applied, traffic would
        // move to canary.
        let bad = green.yaml().replacen("weight: 100", "wieght: 100", 1);
        assert_ne!(bad, green.yaml());
        rename_over(&path, &bad);
        eventually(RELOAD_LIMIT, "the failed reload to be counted", || async {
            metric(&client, admin, RELOADS_FAILURE).await > failures0
        })
        .await;
        let report = status(&client, admin).await;
        let last = &report["config"]["last_reload"];
        assert_eq!(last["result"], "failure", "{report:#}");
        let errors = last["errors"].as_array().expect("errors is a list");
        assert!(!errors.is_empty(), "{report:#}");
        let mut paths = Vec::new();
        for error in errors {
            let error = error.as_str().expect("an error is a string");
            let (field, _reason) = parse_config_error(error, &path);
            paths.push(field);
        }
        assert!(
            paths.iter().any(|p| p.contains("services[0].versions[1]")),
            "no error names the canary version: {errors:?}"
        );
        assert_eq!(
            report["config"]["generation"], g0,
            "a failed reload published"
        );
        assert_eq!(generation(&proxy), g0);
        assert_eq!(
            in_force(&proxy).1,
            blue.view(),
            "the old config keeps serving"
        );
        // Let the load run on the old config for a while.
        load.progress(200).await;
        // A second bad write, told apart from the first by its typo: once its
        // failure is counted, the watcher has handled everything since the
        // first, and each bad write made one failed reload.
        let bad_again = green.yaml().replacen("weight: 100", "weigth: 100", 1);
        assert_ne!(bad_again, green.yaml());
        rename_over(&path, &bad_again);
        eventually(
            RELOAD_LIMIT,
            "the second failed reload to be counted",
            || async { metric(&client, admin, RELOADS_FAILURE).await > failures0 + 1 },
        )
        .await;
        assert_eq!(
            metric(&client, admin, RELOADS_FAILURE).await,
            failures0 + 2,
            "two bad writes, two failed reloads"
        );
        let report = status(&client, admin).await;
        let errors = report["config"]["last_reload"]["errors"].to_string();
        assert!(
            errors.contains("weigth"),
            "the second write's error: {errors}"
        );
        assert_eq!(generation(&proxy), g0, "a failed reload published");

        // Fixed.
        epoch.store(1, Ordering::SeqCst);
        rename_over(&path, &green.yaml());
        let g1 = until_in_force(&proxy, &green, "the fixed config").await;
        assert_eq!(g1, g0 + 1);
        epoch.store(2, Ordering::SeqCst);
        let report = status(&client, admin).await;
        assert_eq!(
            report["config"]["last_reload"]["result"], "success",
            "{report:#}"
        );
        load.progress(100).await;
        let samples = load.finish().await;

        let failed = failures(&samples);
        assert!(
            failed.is_empty(),
            "{} requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(10)]
        );
        let before_fix: Vec<&Sample> = samples.iter().filter(|s| s.after == 0).collect();
        let after_fix: Vec<&Sample> = samples.iter().filter(|s| s.before == 2).collect();
        assert!(
            !before_fix.is_empty() && !after_fix.is_empty(),
            "load overlapped neither phase"
        );
        for s in before_fix {
            assert_eq!(
                s.record.as_deref(),
                Ok("stable"),
                "while the bad file was there"
            );
        }
        for s in after_fix {
            assert_eq!(s.record.as_deref(), Ok("canary"), "after the fix");
        }
        all_reach(&client, public(&proxy), 20, "canary", "after the fix").await;
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

/// An empty file and a deleted file are failed reloads, not an empty config;
/// both by the watcher and by `POST /reload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_deleted_file_is_a_failed_reload() {
    within(TEST_LIMIT, "empty and deleted files", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        let green = blue.weights(0, 100);
        let path = Way::RenameOver.setup(dir.path(), &blue.yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let client = http1_client();
        let addr = public(&proxy);
        until_watching(&proxy, &path, &blue).await;
        let g0 = generation(&proxy);

        for (what, change) in [("empty file", 0), ("deleted file", 1)] {
            let failures0 = metric(&client, admin, RELOADS_FAILURE).await;
            match change {
                0 => rename_over(&path, ""),
                _ => std::fs::remove_file(&path).expect("delete the config"),
            }
            eventually(
                RELOAD_LIMIT,
                &format!("{what}: failed reload counted"),
                || async { metric(&client, admin, RELOADS_FAILURE).await > failures0 },
            )
            .await;
            let report = status(&client, admin).await;
            let last = &report["config"]["last_reload"];
            assert_eq!(last["result"], "failure", "{what}: {report:#}");
            let error = last["errors"][0].as_str().expect("an error").to_string();
            let (_, reason) = parse_config_error(&error, &path);
            let expected = if change == 0 { "empty" } else { "cannot read" };
            assert!(reason.contains(expected), "{what}: reason {reason:?}");
            // Asked explicitly: the same refusal, as a 400 with the errors.
            let answer = admin_call(&client, admin, "POST", "/reload", None).await;
            assert_eq!(
                answer.status,
                400,
                "{what}: POST /reload: {}",
                answer.text()
            );
            let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
            assert_eq!(body["result"], "failure", "{body}");
            assert!(
                body["errors"][0]
                    .as_str()
                    .is_some_and(|e| e.contains(expected)),
                "{body}"
            );
            // A later write, still no config (a comment alone): once its
            // failure is counted, the watcher has handled all before it.
            rename_over(&path, &format!("# still no config after the {what}\n"));
            eventually(
                RELOAD_LIMIT,
                &format!("{what}: the later write's failed reload counted"),
                || async { metric(&client, admin, RELOADS_FAILURE).await > failures0 + 2 },
            )
            .await;
            assert_eq!(
                metric(&client, admin, RELOADS_FAILURE).await,
                failures0 + 3,
                "{what}: one failed reload by the watcher, one by POST /reload, \
                 one for the later write"
            );
            assert_eq!(generation(&proxy), g0, "{what}: nothing published");
            assert_eq!(in_force(&proxy).1, blue.view(), "{what}: old config serves");
            all_reach(&client, addr, 10, "stable", what).await;
        }
        // Created again: reloaded.
        std::fs::write(&path, green.yaml()).expect("create the config again");
        until_in_force(&proxy, &green, "the recreated file").await;
        all_reach(&client, addr, 20, "canary", "after the file came back").await;
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Removed endpoints

/// Requests in flight to an endpoint that a reload removes finish normally,
/// answered by that endpoint; new requests go to its replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_a_removed_endpoint_complete() {
    within(TEST_LIMIT, "in-flight requests across a removal", async {
        let old = Upstream::start("old").await;
        let new = Upstream::start("new").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let before = Cfg::new(&[old.addr()], 100, &[new.addr()], 0);
        let after = Cfg {
            revision: "r1".into(),
            ..Cfg::new(&[new.addr()], 100, &[new.addr()], 0)
        };
        let path = Way::RenameOver.setup(dir.path(), &before.yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let addr = public(&proxy);
        let admin_client = http1_client();

        const SLOW: &str = "/delay/5000";
        const EACH: usize = 4;
        let h1 = http1_client();
        let h2 = h2c_client();
        let mut in_flight = Vec::new();
        for client in [&h1, &h2] {
            for _ in 0..EACH {
                let client = client.clone();
                let url = format!("http://{addr}{SLOW}");
                in_flight.push(tokio::spawn(async move {
                    try_send(&client, get(&url, None)).await
                }));
            }
        }
        wait_until(
            RELOAD_LIMIT,
            "the slow requests to reach the old endpoint",
            || old.count(SLOW) == (2 * EACH) as u64,
        )
        .await;

        // Removed by the watcher and, to be sure it happens while they are
        // in flight, by POST /reload.
        rename_over(&path, &after.yaml());
        let answer = admin_call(&admin_client, admin, "POST", "/reload", None).await;
        assert_eq!(answer.status, 200, "POST /reload: {}", answer.text());
        until_in_force(&proxy, &after, "the endpoint's removal").await;
        for task in &in_flight {
            assert!(
                !task.is_finished(),
                "a slow request ended before the removal took effect"
            );
        }
        all_reach(&h1, addr, 10, "new", "new requests after the removal").await;

        for (i, task) in in_flight.into_iter().enumerate() {
            let answer = within(Duration::from_secs(30), "a slow request", task)
                .await
                .expect("request task panicked")
                .unwrap_or_else(|e| panic!("in-flight request {i} failed: {e}"));
            assert_eq!(
                answer.status,
                200,
                "in-flight request {i}: {}",
                answer.text()
            );
            assert_eq!(answer.upstream(), Some("old"), "in-flight request {i}");
        }
        assert_eq!(old.count(SLOW), (2 * EACH) as u64, "no request was retried");
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Listeners

async fn refuses(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

/// A reload that adds a listener serves on it; one that removes a listener
/// stops accepting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_listeners() {
    within(TEST_LIMIT, "listener changes", async {
        let stable = Upstream::start("stable").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let one = Cfg::new(&[stable.addr()], 1, &[stable.addr()], 0);
        // Port 0: veer picks the port and keeps the socket for as long as
        // the listener keeps its name and address.
        let mut two = one.clone();
        two.listeners.push(("second".into(), "127.0.0.1:0".into()));
        let only_second = Cfg {
            listeners: vec![("second".into(), "127.0.0.1:0".into())],
            ..one.clone()
        };
        let path = Way::RenameOver.setup(dir.path(), &one.yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let first = public(&proxy);
        let client = http1_client();
        all_reach(&client, first, 5, "stable", "the first listener").await;

        rename_over(&path, &two.yaml());
        let answer = admin_call(&client, admin, "POST", "/reload", None).await;
        assert_eq!(answer.status, 200, "POST /reload: {}", answer.text());
        let second = proxy
            .listener_addr("second")
            .unwrap_or_else(|| panic!("no listener second: {:?}", proxy.listeners()));
        assert_ne!(second.port(), 0, "{:?}", proxy.listeners());
        all_reach(&client, second, 5, "stable", "the added listener").await;
        all_reach(&client, first, 5, "stable", "the kept listener").await;

        rename_over(&path, &only_second.yaml());
        let answer = admin_call(&client, admin, "POST", "/reload", None).await;
        assert_eq!(answer.status, 200, "POST /reload: {}", answer.text());
        assert_eq!(proxy.listeners(), vec![("second".to_string(), second)]);
        eventually(
            RELOAD_LIMIT,
            "the removed listener to refuse connections",
            || refuses(first),
        )
        .await;
        // On new connections: the pooled client's connection to `first` was
        // opened before and is not what this is about.
        all_reach(
            &http1_client(),
            second,
            5,
            "stable",
            "the remaining listener",
        )
        .await;
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

/// A reload whose new listener cannot bind (its port is held) is refused as
/// a whole: no new weights, the old listeners serve; once the port is free
/// the same file reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_refuses_the_whole_reload() {
    within(TEST_LIMIT, "bind failure", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        // On an address of this process's own: once released below, no
        // other test can take the port before veer binds it.
        let held = std::net::TcpListener::bind((support::own_loopback(1), 0)).expect("hold a port");
        let taken = held.local_addr().expect("held addr");
        let mut green = blue.weights(0, 100);
        green.listeners.push(("extra".into(), taken.to_string()));
        let path = Way::RenameOver.setup(dir.path(), &blue.yaml());
        let proxy = start_watched(&path).await;
        let admin = admin_addr(&proxy);
        let addr = public(&proxy);
        let client = http1_client();
        until_watching(&proxy, &path, &blue).await;
        let g0 = generation(&proxy);
        let failures0 = metric(&client, admin, RELOADS_FAILURE).await;

        rename_over(&path, &green.yaml());
        let answer = admin_call(&client, admin, "POST", "/reload", None).await;
        assert_eq!(
            answer.status,
            400,
            "POST /reload with a held port: {}",
            answer.text()
        );
        let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        let error = body["errors"][0].as_str().unwrap_or_default();
        assert!(
            error.contains("extra") && error.contains(&taken.to_string()),
            "the error must name the listener and its address: {body}"
        );
        // The watcher's own reload of the same file fails the same way.
        eventually(RELOAD_LIMIT, "both failed reloads counted", || async {
            metric(&client, admin, RELOADS_FAILURE).await >= failures0 + 2
        })
        .await;
        // A later write of the same file (a comment added) fails the same
        // way: once it is counted, the watcher has handled all before it.
        rename_over(&path, &format!("{}# again\n", green.yaml()));
        eventually(RELOAD_LIMIT, "the later write's failed reload", || async {
            metric(&client, admin, RELOADS_FAILURE).await >= failures0 + 3
        })
        .await;
        assert_eq!(
            metric(&client, admin, RELOADS_FAILURE).await,
            failures0 + 3,
            "one failed reload per write and per POST /reload"
        );
        assert_eq!(
            generation(&proxy),
            g0,
            "nothing of the refused reload was published"
        );
        assert_eq!(in_force(&proxy).1, blue.view());
        assert_eq!(proxy.listeners(), vec![("public".to_string(), addr)]);
        let last = proxy.control().last_reload().expect("recorded");
        assert_eq!(last.result, "failure", "{last:?}");
        all_reach(
            &http1_client(),
            addr,
            20,
            "stable",
            "old listener, old weights",
        )
        .await;

        drop(held);
        let answer = admin_call(&client, admin, "POST", "/reload", None).await;
        assert_eq!(
            answer.status,
            200,
            "POST /reload once the port is free: {}",
            answer.text()
        );
        assert_eq!(in_force(&proxy).1, green.view());
        all_reach(&http1_client(), taken, 10, "canary", "the new listener").await;
        all_reach(&http1_client(), addr, 10, "canary", "the old listener").await;
        within(Duration::from_secs(30), "shutdown", proxy.shutdown()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// The binary: state_dir and SIGHUP

fn veer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_veer")
}

/// The admin address from veer's `veer: admin on ADDR` line.
fn binary_admin(veer: &VeerProcess) -> SocketAddr {
    veer.output()
        .lines()
        .find_map(|l| l.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("no `veer: admin on` line\n{}", veer.output()))
}

/// The config file the binary was started on (`veer run -c FILE`).
fn binary_config(veer: &VeerProcess) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", veer.pid())).expect("read cmdline");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "-c").expect("-c in cmdline");
    PathBuf::from(&args[at + 1])
}

async fn stop_binary(mut veer: VeerProcess) {
    veer.signal("TERM");
    let status = veer.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "veer did not exit cleanly: {status:?}\n{}",
        veer.output()
    );
}

/// Run-time weights set on the admin API survive a restart; a reload that
/// leaves the file's weights alone keeps them; one that changes them
/// replaces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_weights_survive_a_restart_until_the_file_changes_them() {
    within(TEST_LIMIT, "run-time weights and restarts", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let state = tempfile::tempdir().expect("state dir");
        let mut blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        blue.state_dir = Some(state.path().join("state"));
        let client = http1_client();

        let first = VeerProcess::start(veer_bin(), &blue.yaml());
        let addr = first.listener("public");
        all_reach(&client, addr, 10, "stable", "file weights").await;
        let answer = admin_call(
            &client,
            binary_admin(&first),
            "POST",
            "/services/web/weights",
            Some(r#"{"stable": 0, "canary": 100}"#),
        )
        .await;
        assert_eq!(answer.status, 200, "POST weights: {}", answer.text());
        all_reach(&http1_client(), addr, 20, "canary", "run-time weights").await;
        stop_binary(first).await;

        let second = VeerProcess::start(veer_bin(), &blue.yaml());
        let addr = second.listener("public");
        let admin = binary_admin(&second);
        all_reach(
            &http1_client(),
            addr,
            20,
            "canary",
            "run-time weights after a restart",
        )
        .await;
        let report = status(&client, admin).await;
        let weights: Vec<_> = report["services"][0]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| (v["name"].clone(), v["weight"].clone()))
            .collect();
        assert_eq!(
            weights,
            vec![("stable".into(), 0.into()), ("canary".into(), 100.into())],
            "{report:#}"
        );

        // A reload of a file whose weights did not change keeps them.
        let path = binary_config(&second);
        rename_over(&path, &format!("{}# touched\n", blue.yaml()));
        let answer = admin_call(&client, admin, "POST", "/reload", None).await;
        assert_eq!(answer.status, 200, "POST /reload: {}", answer.text());
        all_reach(
            &http1_client(),
            addr,
            20,
            "canary",
            "same file weights, reloaded",
        )
        .await;

        // The file's weights change: they replace the run-time ones.
        rename_over(&path, &blue.weights(1, 0).yaml());
        let answer = admin_call(&client, admin, "POST", "/reload", None).await;
        assert_eq!(answer.status, 200, "POST /reload: {}", answer.text());
        all_reach(&http1_client(), addr, 20, "stable", "new file weights").await;
        stop_binary(second).await;

        // The replacement persisted: a restart on the original file (100/0,
        // the file weights the run-time 0/100 was set against) does not bring
        // the run-time weights back.
        let third = VeerProcess::start(veer_bin(), &blue.yaml());
        all_reach(
            &http1_client(),
            third.listener("public"),
            20,
            "stable",
            "after the second restart",
        )
        .await;
        stop_binary(third).await;
    })
    .await;
}

/// A corrupt state file is reported on stderr, set aside, and veer serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_reported_and_survived() {
    within(TEST_LIMIT, "corrupt state file", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let state = tempfile::tempdir().expect("state dir");
        std::fs::write(
            state.path().join("veer-state.json"),
            b"{\"services\": {\"web\": [garbage",
        )
        .expect("write a corrupt state file");
        let mut blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        blue.state_dir = Some(state.path().to_path_buf());

        let veer = VeerProcess::start(veer_bin(), &blue.yaml());
        let output = veer.output();
        assert!(
            output.contains("veer-state.json") && output.contains("not valid veer state"),
            "the corrupt state file must be reported on stderr\n{output}"
        );
        let client = http1_client();
        all_reach(
            &client,
            veer.listener("public"),
            10,
            "stable",
            "despite the corrupt state",
        )
        .await;
        let aside: Vec<String> = std::fs::read_dir(state.path())
            .expect("read state dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("veer-state.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the corrupt file is set aside, not lost");
        assert!(
            output.contains(&aside[0]),
            "stderr names where it went\n{output}"
        );
        // And the state works again.
        let answer = admin_call(
            &client,
            binary_admin(&veer),
            "POST",
            "/services/web/weights",
            Some(r#"{"stable": 0, "canary": 100}"#),
        )
        .await;
        assert_eq!(answer.status, 200, "POST weights: {}", answer.text());
        let saved =
            std::fs::read_to_string(state.path().join("veer-state.json")).expect("state file");
        let saved: serde_json::Value = serde_json::from_str(&saved).expect("a valid state file");
        assert_eq!(
            saved["services"]["web"]["weights"]["canary"], 100,
            "{saved:#}"
        );
        stop_binary(veer).await;
    })
    .await;
}

/// SIGHUP reloads the file: each signal is one reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    within(TEST_LIMIT, "SIGHUP", async {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let blue = Cfg::new(&[stable.addr()], 100, &[canary.addr()], 0);
        let veer = VeerProcess::start(veer_bin(), &blue.yaml());
        // veer installs its SIGHUP handler in a task of its own, possibly
        // after `veer: ready` (see `sighup_right_after_ready_...`): this test
        // is about what a reload by signal does, so it waits for the handler.
        wait_until(RELOAD_LIMIT, "veer to catch SIGHUP", || {
            catches_sighup(&veer)
        })
        .await;
        let admin = binary_admin(&veer);
        let client = http1_client();
        let generation_of = |report: &serde_json::Value| {
            report["config"]["generation"].as_u64().expect("generation")
        };
        let g0 = generation_of(&status(&client, admin).await);
        for n in 1..=3u64 {
            veer.signal("HUP");
            eventually(RELOAD_LIMIT, &format!("SIGHUP {n} to reload"), || async {
                metric(&client, admin, RELOADS_SUCCESS).await >= n
            })
            .await;
            assert!(
                veer_alive(&veer),
                "veer died on SIGHUP {n}\n{}",
                veer.output()
            );
            let report = status(&client, admin).await;
            assert_eq!(
                report["config"]["last_reload"]["result"], "success",
                "{report:#}"
            );
            assert_eq!(generation_of(&report), g0 + n, "{report:#}");
        }
        // A later reload of another kind, the watcher's of a new revision:
        // once it shows, every reload owed to the signals has happened.
        let marked = Cfg {
            revision: "after-the-signals".into(),
            ..blue.clone()
        };
        rename_over(&veer.config_path(), &marked.yaml());
        eventually(
            RELOAD_LIMIT,
            "the file change after the signals",
            || async {
                let report = status(&client, admin).await;
                report["services"][0]["versions"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|v| v["revision"] == "after-the-signals"))
            },
        )
        .await;
        assert_eq!(
            metric(&client, admin, RELOADS_SUCCESS).await,
            4,
            "one reload per SIGHUP, and one for the file change"
        );
        all_reach(
            &client,
            veer.listener("public"),
            5,
            "stable",
            "after the SIGHUPs",
        )
        .await;
        stop_binary(veer).await;
    })
    .await;
}

fn veer_alive(veer: &VeerProcess) -> bool {
    std::fs::read_to_string(format!("/proc/{}/status", veer.pid())).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains("zombie"))
    })
}

/// Whether the process has a handler for SIGHUP (`SigCgt` bit 0 in
/// `/proc/PID/status`); until it has, SIGHUP's default action ends it.
fn catches_sighup(veer: &VeerProcess) -> bool {
    std::fs::read_to_string(format!("/proc/{}/status", veer.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 == 1)
}

/// Starts `veer run -c FILE` on `yaml` and sends it SIGHUP the instant it
/// prints `veer: ready`: through a shell that is already waiting, whose
/// builtin `kill` needs no fork and exec (`VeerProcess::signal` runs
/// `kill(1)`, which gives veer milliseconds of head start). Returns the
/// process and its admin address.
fn start_and_hup_at_ready(dir: &Path, yaml: &str) -> (Reaped, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let config = dir.join("veer.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
    let mut hup = Command::new("sh")
        .arg("-c")
        .arg("read pid && kill -s HUP \"$pid\"")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut veer = Command::new(veer_bin())
        .arg("run")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn veer");
    let mut lines = BufReader::new(veer.stdout.take().expect("stdout")).lines();
    let mut admin = None;
    for line in lines.by_ref() {
        let line = line.expect("veer stdout");
        if let Some(addr) = line.trim().strip_prefix("veer: admin on ") {
            admin = addr.parse().ok();
        }
        if line.trim() == "veer: ready" {
            let mut to_sh = hup.stdin.take().expect("sh stdin");
            writeln!(to_sh, "{}", veer.id()).expect("hand the pid to sh");
            break;
        }
    }
    assert!(
        hup.wait().expect("wait sh").success(),
        "sh could not signal veer"
    );
    // Keep draining stdout so veer never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let admin = admin.expect("a `veer: admin on` line before ready");
    (Reaped(veer), admin)
}

/// A child process killed and waited for when dropped, whatever the test did.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `veer: ready` means a config reload can be asked for: a SIGHUP sent right
/// then reloads, and does not end the process (SIGHUP's default action).
/// Tried on five fresh processes, since what it guards against is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_right_after_ready_reloads_and_does_not_kill() {
    within(TEST_LIMIT, "SIGHUP right after ready", async {
        let stable = Upstream::start("stable").await;
        let blue = Cfg::new(&[stable.addr()], 1, &[stable.addr()], 0);
        let client = http1_client();
        for attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut veer, admin) =
                tokio::task::block_in_place(|| start_and_hup_at_ready(dir.path(), &blue.yaml()));
            let stderr =
                || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            let deadline = Instant::now() + RELOAD_LIMIT;
            loop {
                if let Some(status) = veer.0.try_wait().expect("try_wait") {
                    panic!(
                        "attempt {attempt}: veer ended ({status}) on a SIGHUP sent right after \
                         `veer: ready`\n--- stderr ---\n{}",
                        stderr()
                    );
                }
                let request = Request::get(format!("http://{admin}/metrics"))
                    .body(empty())
                    .expect("request");
                if let Ok(answer) = try_send(&client, request).await {
                    if series(&answer.text(), RELOADS_SUCCESS) == 1 {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    panic!("attempt {attempt}: no reload after SIGHUP\n{}", stderr());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(veer);
        }
    })
    .await;
}

/// `count` services `s-I`, each on its own host; the last one's weights
/// as given, every other service's endpoint a port where nothing listens.
fn many(count: usize, last: SocketAddr, weights: (u32, u32)) -> String {
    let mut y = String::from(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nservices:\n",
    );
    for i in 0..count {
        let (endpoint, (blue, green)) = if i + 1 == count {
            (last.to_string(), weights)
        } else {
            (format!("127.0.0.1:{}", 20_000 + i), (90, 10))
        };
        y.push_str(&format!(
            "  - name: s-{i}\n    match: {{ hosts: [s-{i}.example.com] }}\n    versions:\n      - {{ name: blue, endpoints: [\"{endpoint}\"], weight: {blue} }}\n      - {{ name: green, endpoints: [\"{endpoint}\"], weight: {green} }}\n"
        ));
    }
    y
}

/// The `config reloaded` lines of a JSON log, by `parsed`.
fn reloads_parsed(veer: &VeerProcess) -> Vec<u64> {
    veer.stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "config reloaded")
        .filter_map(|line| line["fields"]["parsed"].as_u64())
        .collect()
}

async fn wait_reloads(veer: &VeerProcess, count: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let parsed = reloads_parsed(veer);
        if parsed.len() >= count {
            return parsed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} reloads expected\n{}",
            veer.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reparses_only_the_services_a_reload_changed() {
    within(RELOAD_LIMIT * 3, "reloads of a 300-service file", async {
        let up = Upstream::start("last").await;
        let count = 300;
        let veer = VeerProcess::start_with_args(
            veer_bin(),
            &many(count, up.addr(), (100, 0)),
            &["--log-format", "json"],
            &[],
        );
        let addr = veer.listener("public");
        let client = http1_client();
        let host = format!("s-{}.example.com", count - 1);
        // Every change is renamed over the file: a write in place can be
        // read half-written, and a half that ends between two services is a
        // valid config of fewer services, which throws the counts off.
        // A first change: reloaded once, however it raced the reloader's
        // first read of the file.
        rename_over(&veer.config_path(), &many(count, up.addr(), (50, 50)));
        wait_reloads(&veer, 1).await;
        // When the first read caught the change, the watcher's event for it
        // reloads the same text once more (nothing parsed): let it pass.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base = reloads_parsed(&veer).len();
        // The last service's weights move to green: one service parsed.
        rename_over(&veer.config_path(), &many(count, up.addr(), (0, 100)));
        assert_eq!(
            wait_reloads(&veer, base + 1).await[base],
            1,
            "{}",
            veer.stderr()
        );
        let request = Request::get(format!("http://{addr}/"))
            .header("host", host.as_str())
            .body(empty())
            .expect("request");
        let answer = send(&client, request).await;
        assert_eq!(answer.status.as_u16(), 200);

        // The same services in another order: none parsed again.
        let text = many(count, up.addr(), (0, 100));
        let (head, items) = text.split_at(text.find("  - name: s-0\n").expect("s-0"));
        let mut services: Vec<String> = items
            .split_inclusive("weight: 10 }\n")
            .map(str::to_string)
            .collect();
        services.swap(0, 1);
        rename_over(&veer.config_path(), &format!("{head}{}", services.concat()));
        assert_eq!(
            wait_reloads(&veer, base + 2).await[base + 1],
            0,
            "{}",
            veer.stderr()
        );

        // A bad line in a changed service: refused, the old config serves.
        let bad = many(count, up.addr(), (0, 100)).replace("weight: 100 }", "weight: lots }");
        let at = bad.find("lots").expect("the bad weight");
        let line = bad[..at].matches('\n').count() + 1;
        let column = at - bad[..at].rfind('\n').expect("a line");
        rename_over(&veer.config_path(), &bad);
        let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
        while !veer.stderr().contains("reload refused") {
            assert!(tokio::time::Instant::now() < deadline, "{}", veer.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            veer.stderr().contains(&format!(
                "veer.yaml:{line}:{column}: services[{}].versions[1].weight:",
                count - 1
            )),
            "{}",
            veer.stderr()
        );
        stop_binary(veer).await;
    })
    .await;
}

/// A service whose text was seen before is not checked again on its own,
/// but the checks across services still run on the whole file: a name or a
/// service written twice is refused at its place, and the old config serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_clash_between_services_it_did_not_reparse() {
    within(
        RELOAD_LIMIT * 3,
        "refused reloads of a 300-service file",
        async {
            let up = Upstream::start("last").await;
            let count = 300;
            let veer = VeerProcess::start_with_args(
                veer_bin(),
                &many(count, up.addr(), (100, 0)),
                &["--log-format", "json"],
                &[],
            );
            let addr = veer.listener("public");
            let client = http1_client();
            let host = format!("s-{}.example.com", count - 1);
            std::fs::write(veer.config_path(), many(count, up.addr(), (0, 100))).expect("write");
            wait_reloads(&veer, 1).await;
            let good = many(count, up.addr(), (0, 100));
            // The first error line of each refused reload.
            let refusals = |veer: &VeerProcess| {
                veer.stderr()
                    .matches("\"message\":\"reload refused, the previous config keeps serving: ")
                    .count()
            };
            let refused = |bad: String, at: usize, expected: String| {
                let line = bad[..at].matches('\n').count() + 1;
                let column = at - bad[..at].rfind('\n').expect("a line");
                (bad, format!("veer.yaml:{line}:{column}: {expected}"))
            };

            // Another service's name: only that service's text changed.
            let bad = good.replacen("name: s-200\n", "name: s-10\n", 1);
            let at = bad
                .find("name: s-10\n    match: { hosts: [s-200")
                .expect("renamed")
                + 6;
            let case_name = refused(
                bad,
                at,
                "services[200].name: duplicate service name `s-10` (also services[10])".to_string(),
            );
            // A service written twice, byte for byte, at the end.
            let first = good.find("  - name: s-5\n").expect("s-5");
            let item = &good[first..first + good[first..].find("  - name: s-6\n").expect("s-6")];
            let bad = format!("{good}{item}");
            let at = good.len() + "  - name: ".len();
            let case_twice = refused(
                bad,
                at,
                format!("services[{count}].name: duplicate service name `s-5` (also services[5])"),
            );
            for (n, (bad, expected)) in [case_name, case_twice].into_iter().enumerate() {
                std::fs::write(veer.config_path(), &bad).expect("write");
                let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
                while refusals(&veer) <= n {
                    assert!(tokio::time::Instant::now() < deadline, "{}", veer.stderr());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert!(
                    veer.stderr().contains(&expected),
                    "{expected}\n{}",
                    veer.stderr()
                );
                // The last good config still serves: green has the weight.
                let request = Request::get(format!("http://{addr}/"))
                    .header("host", host.as_str())
                    .body(empty())
                    .expect("request");
                let answer = send(&client, request).await;
                assert_eq!(answer.status.as_u16(), 200);
            }
            stop_binary(veer).await;
        },
    )
    .await;
}
