//! The audit trail, end to end: the real binary with `VEER_LOG_FORMAT=json`,
//! admin actions over HTTP (accepted and refused, with and without the
//! token), a reload by file change, a guard trip and a rollout step; then
//! every `veer::audit` line of its log is parsed as JSON and its fields
//! checked: who asked, what changed, how it ended.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request};
use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{empty, full, get, http1_client, send, Answer, HttpClient};
use support::upstream::Upstream;
use support::within;

const BIN: &str = env!("CARGO_BIN_EXE_veer");
const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "secret";
const JSON_LOGS: &[(&str, &str)] = &[("VEER_LOG_FORMAT", "json")];
/// The first 8 hex digits of SHA-256("secret").
const TOKEN_FINGERPRINT: &str = "2bb80d53";

fn config(
    stable: SocketAddr,
    canary: SocketAddr,
    weights: (u32, u32),
    token_file: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n  token_file: \"{}\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - name: stable\n        revision: \"1\"\n        endpoints: [\"{stable}\"]\n        weight: {}\n\
         \x20     - name: canary\n        revision: \"2\"\n        endpoints: [\"{canary}\"]\n        weight: {}\n\
         \x20   guard: {{ baseline: stable, interval: 100ms, window: 10s, min_requests: 5, max_error_rate: 0.5, consecutive: 1 }}\n{extra}",
        token_file.display(),
        weights.0,
        weights.1
    )
}

/// `veer: admin on ADDR` from the binary's output.
fn admin_of(veer: &VeerProcess) -> SocketAddr {
    veer.output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("no `veer: admin on` line\n{}", veer.output()))
}

async fn post(
    client: &HttpClient,
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(json) => request.body(full(json.to_string())),
        None => request.body(empty()),
    };
    send(client, request.expect("admin request")).await
}

/// Every `veer::audit` event in the log, parsed; panics on a log line that
/// is not JSON.
fn audit_lines(veer: &VeerProcess) -> Vec<Value> {
    veer.stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
        })
        .filter(|v| v["target"] == "veer::audit")
        .map(|v| v["fields"].clone())
        .collect()
}

/// Waits until an audit line matches `pred`, and returns it.
async fn audit_line(veer: &VeerProcess, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(line) = audit_lines(veer).into_iter().find(|l| pred(l)) {
            return line;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("no audit line for {what}\n{}", veer.stderr());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is(line: &Value, actor: &str, action: &str, result: &str) -> bool {
    line["actor"] == actor && line["action"] == action && line["result"] == result
}

#[tokio::test]
async fn every_admin_action_is_audited_with_who_what_and_result() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let yaml = config(stable.addr(), canary.addr(), (90, 10), &token_file, "");
    let veer = VeerProcess::start_with_env(BIN, &yaml, JSON_LOGS);
    let admin = admin_of(&veer);
    let client = http1_client();

    // Refused before anything runs: no token, then a wrong one.
    let answer = post(&client, admin, "/services/web/rollback", None, None).await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    let answer = post(
        &client,
        admin,
        "/services/web/rollback",
        Some("guess"),
        None,
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text());

    let answer = post(
        &client,
        admin,
        "/services/web/weights",
        Some(TOKEN),
        Some(serde_json::json!({"stable": 0, "canary": 100})),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = post(
        &client,
        admin,
        "/services/web/weights",
        Some(TOKEN),
        Some(serde_json::json!({"nope": 1})),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    let answer = post(&client, admin, "/services/web/pause", Some(TOKEN), None).await;
    assert_eq!(answer.status, 409, "{}", answer.text());
    let answer = post(&client, admin, "/services/web/promote", Some(TOKEN), None).await;
    assert_eq!(answer.status, 409, "{}", answer.text());
    let answer = post(&client, admin, "/services/web/rollback", Some(TOKEN), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = post(&client, admin, "/services/web/resume", Some(TOKEN), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = post(&client, admin, "/services/ghost/resume", Some(TOKEN), None).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    let answer = post(&client, admin, "/reload", Some(TOKEN), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let lines = audit_lines(&veer);
    for line in &lines {
        let peer = line["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "peer address: {line}");
        assert_eq!(line["actor"], "admin", "{line}");
        for field in ["action", "before", "after", "result", "status"] {
            assert!(!line[field].is_null(), "`{field}` missing: {line}");
        }
    }
    let find = |action: &str, status: u64| {
        lines
            .iter()
            .find(|l| l["action"] == action && l["status"] == status)
            .unwrap_or_else(|| panic!("no `{action}` {status} line in {lines:#?}"))
            .clone()
    };

    let no_token = lines
        .iter()
        .find(|l| l["status"] == 401 && l["token"] == "none")
        .unwrap_or_else(|| panic!("no 401 without token: {lines:#?}"));
    assert_eq!(no_token["action"], "rollback");
    assert_eq!(no_token["result"], "refused");
    assert!(
        no_token["detail"]
            .as_str()
            .is_some_and(|d| d.contains("needs `Authorization: Bearer TOKEN`")),
        "{no_token}"
    );
    let wrong = lines
        .iter()
        .find(|l| l["status"] == 401 && l["token"] != "none")
        .unwrap_or_else(|| panic!("no 401 with a wrong token: {lines:#?}"));
    assert_ne!(wrong["token"], TOKEN_FINGERPRINT, "{wrong}");
    assert_eq!(wrong["token"].as_str().map(str::len), Some(8), "{wrong}");
    assert_eq!(
        wrong["before"], wrong["after"],
        "a refused action changes nothing"
    );

    let weights = find("weights", 200);
    assert_eq!(weights["token"], TOKEN_FINGERPRINT);
    assert_eq!(weights["service"], "web");
    assert_eq!(weights["result"], "ok");
    assert_eq!(weights["before"], "stable@1=90 canary@2=10");
    assert_eq!(weights["after"], "stable@1=0 canary@2=100");

    let refused = find("weights", 400);
    assert_eq!(refused["result"], "refused");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("service `web` has no version `nope`")),
        "{refused}"
    );
    assert_eq!(refused["before"], refused["after"]);

    let pause = find("pause", 409);
    assert!(
        pause["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no rollout in progress to pause")),
        "{pause}"
    );
    find("promote", 409);

    let rollback = find("rollback", 200);
    assert_eq!(rollback["before"], "stable@1=0 canary@2=100");
    assert_eq!(rollback["after"], "stable@1=100 canary@2=0(latched)");
    let resume = find("resume", 200);
    assert_eq!(resume["before"], "stable@1=100 canary@2=0(latched)");
    assert_eq!(resume["after"], "stable@1=0 canary@2=100");
    let ghost = find("resume", 404);
    assert_eq!(ghost["service"], "ghost");
    assert!(
        ghost["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no service named `ghost`")),
        "{ghost}"
    );
    let reload = find("reload", 200);
    assert!(reload["service"].is_null(), "a reload is of every service");
    assert_eq!(reload["before"], "web[stable@1=0 canary@2=100]");

    // No line of the log holds the token, nor debug-formatted options.
    let log = veer.stderr();
    assert!(!log.contains(&format!("\"{TOKEN}\"")), "{log}");
    assert!(!log.contains("Some("), "{log}");
}

#[tokio::test]
async fn guard_trips_file_reloads_and_rollout_steps_are_audited() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    let rollout = "    rollout: { candidate: canary, steps: [50, 100], hold: 200ms }\n";
    let yaml = config(stable.addr(), canary.addr(), (50, 50), &token_file, rollout);
    let veer = VeerProcess::start_with_env(BIN, &yaml, JSON_LOGS);
    let proxy = veer.listener("public");
    let client = http1_client();

    // The rollout steps once its first step has held with traffic.
    let step = {
        let client = client.clone();
        let load = tokio::spawn(async move {
            loop {
                let _ = send(&client, get(&format!("http://{proxy}/"), Some("web"))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let line = audit_line(&veer, "the rollout's step", |l| {
            is(l, "rollout", "promote", "ok")
        })
        .await;
        load.abort();
        line
    };
    assert_eq!(step["service"], "web");
    assert_eq!(step["before"], "stable@1=50 canary@2=50");
    assert_eq!(step["after"], "stable@1=0 canary@2=100");
    assert!(
        step["detail"]
            .as_str()
            .is_some_and(|d| d.contains("step 2 of the rollout of canary 2")),
        "{step}"
    );
    assert!(step["peer"].is_null(), "veer acted by itself: {step}");
    // ... and completes once its last step has held too.
    let complete = audit_line(&veer, "the rollout's completion", |l| {
        is(l, "rollout", "complete", "ok")
    })
    .await;
    assert_eq!(complete["before"], "stable@1=0 canary@2=100");
    assert!(
        complete["detail"]
            .as_str()
            .is_some_and(|d| d.contains("the rollout of canary 2 completed")),
        "{complete}"
    );

    // A file change that veer refuses, then one it takes.
    std::fs::write(veer.config_path(), "listeners: [").expect("write bad config");
    let refused = audit_line(&veer, "the refused reload", |l| {
        is(l, "file", "reload", "refused")
    })
    .await;
    assert!(refused["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(refused["before"], refused["after"]);
    let without_rollout = config(stable.addr(), canary.addr(), (70, 30), &token_file, "");
    std::fs::write(veer.config_path(), without_rollout).expect("write config");
    let reload = audit_line(&veer, "the file reload", |l| is(l, "file", "reload", "ok")).await;
    assert_eq!(reload["after"], "web[stable@1=70 canary@2=30]");

    // The canary fails every request: the guard trips it.
    canary.set_fail_ratio(1.0);
    let trip = {
        let client = client.clone();
        let load = tokio::spawn(async move {
            loop {
                let _ = send(&client, get(&format!("http://{proxy}/"), Some("web"))).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let line = audit_line(&veer, "the guard's trip", |l| {
            is(l, "guard", "rollback", "ok")
        })
        .await;
        load.abort();
        line
    };
    assert_eq!(trip["service"], "web");
    assert_eq!(trip["before"], "stable@1=70 canary@2=30");
    assert_eq!(trip["after"], "canary=0 stable=100");
    let detail = trip["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("canary 2: bad: error_rate"),
        "the verdict in words: {trip}"
    );
}

#[tokio::test]
async fn an_unknown_log_format_is_named_and_text_is_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(&path, "listeners: []\nservices: []\n").expect("write config");
    let out = within(
        LIMIT,
        "veer check",
        tokio::process::Command::new(BIN)
            .args(["check", "-c"])
            .arg(&path)
            .env("VEER_LOG_FORMAT", "yaml")
            .output(),
    )
    .await
    .expect("run veer check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "veer: VEER_LOG_FORMAT=`yaml` is not a log format; use `text` or `json` (logging as text)"
        ),
        "{stderr}"
    );
}

/// `count` services `svc-I` on loopback ports where nothing listens, 90/10,
/// but `svc-changed` at `changed` to `weights`.
fn many_services(count: usize, changed: usize, weights: (u32, u32)) -> String {
    use std::fmt::Write as _;
    let mut y = String::from(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\nservices:\n",
    );
    for i in 0..count {
        let (stable, canary) = if i == changed { weights } else { (90, 10) };
        let port = 30000 + i * 2;
        let _ = write!(
            y,
            "  - name: svc-{i}\n    match: {{ hosts: [svc-{i}.example.com] }}\n    versions:\n\
             \x20     - {{ name: stable, revision: \"1\", endpoints: [\"127.0.0.1:{port}\"], weight: {stable} }}\n\
             \x20     - {{ name: canary, revision: \"2\", endpoints: [\"127.0.0.1:{}\"], weight: {canary} }}\n",
            port + 1
        );
    }
    y
}

/// Writes a config whole, as a deploy tool does (a rename), so that no read
/// sees half of it.
fn replace(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write config");
    std::fs::rename(&next, path).expect("rename config");
}

#[tokio::test]
async fn a_reload_of_a_large_config_names_only_the_services_it_changed() {
    within(LIMIT * 2, "the reloads of 300 services", async {
        let veer = VeerProcess::start_with_env(BIN, &many_services(300, 150, (90, 10)), JSON_LOGS);
        let admin = admin_of(&veer);

        // One weight of one service changes: the line names that service
        // alone, and counts the others as unchanged.
        let path = veer.config_path();
        replace(&path, &many_services(300, 150, (50, 50)));
        let reload = audit_line(&veer, "the file reload", |l| is(l, "file", "reload", "ok")).await;
        assert_eq!(
            reload["before"], "svc-150[stable@1=90 canary@2=10]",
            "{reload}"
        );
        assert_eq!(
            reload["after"], "svc-150[stable@1=50 canary@2=50]",
            "{reload}"
        );
        assert_eq!(reload["unchanged"], 299, "{reload}");
        assert!(
            reload["service"].is_null(),
            "a reload is of every service: {reload}"
        );

        // A service added is named in `after` alone.
        replace(&path, &many_services(301, 150, (50, 50)));
        let added = audit_line(&veer, "the reload adding a service", |l| {
            is(l, "file", "reload", "ok") && l["after"] != "" && l["unchanged"] == 300
        })
        .await;
        assert_eq!(added["before"], "", "{added}");
        assert_eq!(
            added["after"], "svc-300[stable@1=90 canary@2=10]",
            "{added}"
        );

        // A reload through the admin API that changes nothing names nothing.
        let client = http1_client();
        let answer = post(&client, admin, "/reload", None, None).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let by_admin = audit_line(&veer, "the admin reload", |l| {
            is(l, "admin", "reload", "ok")
        })
        .await;
        assert_eq!(by_admin["before"], "", "{by_admin}");
        assert_eq!(by_admin["after"], "", "{by_admin}");
    })
    .await;
}
