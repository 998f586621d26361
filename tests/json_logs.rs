//! Logs a cluster can read: the real binary with `--log-format json`, a
//! reload that starts a rollout, a guard trip, a reload that changes the
//! tripped version's revision, a refused reload and a drain on SIGTERM. Every
//! line veer writes to stderr must parse as one JSON object, and the events
//! a log pipeline keys on carry service, version, revision and reason as
//! fields of their own.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{get, http1_client, try_send};
use support::upstream::Upstream;
use support::within;

const BIN: &str = env!("CARGO_BIN_EXE_veer");
const LIMIT: Duration = Duration::from_secs(30);

fn config(stable: SocketAddr, canary: SocketAddr, canary_revision: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         state_dir: state\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - name: stable\n        revision: \"1\"\n        endpoints: [\"{stable}\"]\n        weight: 50\n\
         \x20     - name: canary\n        revision: \"{canary_revision}\"\n        endpoints: [\"{canary}\"]\n        weight: 50\n\
         \x20   guard: {{ baseline: stable, interval: 100ms, window: 10s, min_requests: 5, max_error_rate: 0.5, consecutive: 1 }}\n{extra}"
    )
}

const ROLLOUT: &str = "    rollout: { candidate: canary, steps: [50, 100], hold: 1h }\n";

/// Every stderr line, parsed; panics on one that is not a JSON object.
fn log_lines(veer: &VeerProcess) -> Vec<Value> {
    veer.stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let value: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"));
            assert!(value.is_object(), "a log line is not a JSON object: {l}");
            value
        })
        .collect()
}

/// Waits until a line's `fields` match `pred`, and returns those fields.
async fn log_line(veer: &VeerProcess, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(line) = log_lines(veer).into_iter().find(|l| pred(&l["fields"])) {
            return line;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("no log line for {what}\n{}", veer.stderr());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(fields: &Value) -> &str {
    fields["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn reloads_trips_and_drains_are_json_with_their_fields() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_fail_ratio(1.0);
    // The flag wins over a wrong environment variable: no warning, JSON.
    let mut veer = VeerProcess::start_with_args(
        BIN,
        &config(stable.addr(), canary.addr(), "2", ""),
        &["--log-format", "json"],
        &[("VEER_LOG_FORMAT", "yaml")],
    );
    let proxy = veer.listener("public");

    // A first line has the shape a pipeline indexes on.
    let listening = log_line(&veer, "listening", |f| message(f) == "listening").await;
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(listening["timestamp"].is_string(), "{listening}");
    assert!(
        listening["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("veer")),
        "{listening}"
    );
    assert_eq!(listening["fields"]["listener"], "public", "{listening}");

    // A reload that starts a rollout: the change carries its fields.
    std::fs::write(
        veer.config_path(),
        config(stable.addr(), canary.addr(), "2", ROLLOUT),
    )
    .expect("rewrite config");
    let started = log_line(&veer, "rollout start on reload", |f| {
        f["reason"] == "rollout_started"
    })
    .await;
    let fields = &started["fields"];
    assert_eq!(fields["service"], "web", "{started}");
    assert_eq!(fields["version"], "canary", "{started}");
    assert_eq!(fields["revision"], "2", "{started}");
    assert!(message(fields).starts_with("reload: "), "{started}");
    let reloaded = log_line(&veer, "config reloaded", |f| {
        message(f) == "config reloaded"
    })
    .await;
    assert_eq!(reloaded["fields"]["trigger"], "file", "{reloaded}");
    assert!(reloaded["fields"]["file"].is_string(), "{reloaded}");

    // A trip: the failing canary is judged and moved back to stable.
    let client = http1_client();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut sent = 0u32;
    let trip = loop {
        let trips: Vec<Value> = log_lines(&veer)
            .into_iter()
            .filter(|l| message(&l["fields"]) == "guard: traffic moved back to the baseline")
            .collect();
        if let Some(trip) = trips.into_iter().next() {
            break trip;
        }
        assert!(
            tokio::time::Instant::now() < deadline && sent < 2_000,
            "no trip after {sent} requests\n{}",
            veer.stderr()
        );
        let _ = try_send(&client, get(&format!("http://{proxy}/"), Some("web"))).await;
        sent += 1;
    };
    assert_eq!(trip["level"], "WARN", "{trip}");
    let fields = &trip["fields"];
    assert_eq!(fields["service"], "web", "{trip}");
    assert_eq!(fields["version"], "canary", "{trip}");
    assert_eq!(fields["revision"], "2", "{trip}");
    assert_eq!(fields["reason"], "error_rate", "{trip}");
    assert!(
        fields["observed"].as_f64().is_some_and(|o| o > 0.5),
        "{trip}"
    );
    assert_eq!(fields["threshold"].as_f64(), Some(0.5), "{trip}");
    let rolled = log_line(&veer, "rollout rolled back", |f| {
        message(f) == "rollout rolled back"
    })
    .await;
    assert_eq!(rolled["fields"]["service"], "web", "{rolled}");
    assert_eq!(rolled["fields"]["version"], "canary", "{rolled}");
    assert_eq!(rolled["fields"]["revision"], "2", "{rolled}");
    assert_eq!(rolled["fields"]["reason"], "error_rate", "{rolled}");

    // A new revision of the tripped version clears its latch, with fields.
    std::fs::write(
        veer.config_path(),
        config(stable.addr(), canary.addr(), "3", ROLLOUT),
    )
    .expect("rewrite config");
    let cleared = log_line(&veer, "latch cleared", |f| {
        f["reason"] == "revision_changed"
    })
    .await;
    let fields = &cleared["fields"];
    assert_eq!(fields["service"], "web", "{cleared}");
    assert_eq!(fields["version"], "canary", "{cleared}");
    assert_eq!(fields["revision"], "3", "{cleared}");

    // A refused reload names the file and carries the error as a field.
    std::fs::write(veer.config_path(), "listeners: [\n").expect("write a broken config");
    let refused = log_line(&veer, "refused reload", |f| {
        message(f).starts_with("reload refused")
    })
    .await;
    assert_eq!(refused["level"], "ERROR", "{refused}");
    assert!(
        refused["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("veer.yaml")),
        "{refused}"
    );

    // The drain on SIGTERM.
    veer.signal("TERM");
    let status = within(LIMIT, "veer exit", veer.wait_exit(LIMIT))
        .await
        .expect("veer exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", veer.stderr());
    let lines = log_lines(&veer);
    let draining = lines
        .iter()
        .find(|l| message(&l["fields"]) == "draining")
        .unwrap_or_else(|| panic!("no draining line\n{}", veer.stderr()));
    assert!(draining["fields"]["connections"].is_u64(), "{draining}");
    assert!(
        lines.iter().any(|l| message(&l["fields"]) == "drained"),
        "{}",
        veer.stderr()
    );
    assert!(
        !veer.stderr().contains("is not a log format"),
        "the flag must win over VEER_LOG_FORMAT\n{}",
        veer.stderr()
    );
}

#[tokio::test]
async fn a_config_that_cannot_start_is_logged_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(&path, "listeners: []\nservices: []\nunknown_block: 1\n").expect("write");
    let out = within(
        LIMIT,
        "veer run",
        tokio::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .env("VEER_LOG_FORMAT", "json")
            .output(),
    )
    .await
    .expect("run veer");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let messages: Vec<String> = stderr
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"));
            assert_eq!(v["level"], "ERROR", "{l}");
            message(&v["fields"]).to_string()
        })
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("unknown_block")),
        "{stderr}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("veer: refusing to start with an invalid config")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_refusal_to_start_is_written_even_when_the_filter_hides_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(&path, "listeners: []\nservices: []\n").expect("write");
    let out = within(
        LIMIT,
        "veer run",
        tokio::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .args(["--log-format", "json"])
            .env("VEER_LOG", "off")
            .output(),
    )
    .await
    .expect("run veer");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("veer: refusing to start with an invalid config; fix it and retry"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_log_format_flag_is_a_usage_error() {
    let out = within(
        LIMIT,
        "veer check",
        tokio::process::Command::new(BIN)
            .args(["check", "-c", "veer.yaml", "--log-format", "yaml"])
            .output(),
    )
    .await
    .expect("run veer check");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'yaml' for '--log-format <FORMAT>'")
            && stderr.contains("[possible values: text, json]"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_level_comes_from_veer_log_then_rust_log() {
    // A guard and no state_dir: `veer run` warns at start.
    let yaml = "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
                admin:\n  address: \"127.0.0.1:0\"\n\
                services:\n  - name: web\n    versions:\n\
                \x20     - { name: stable, revision: \"1\", endpoints: [\"127.0.0.1:9\"], weight: 1 }\n\
                \x20   guard: { baseline: stable, max_error_rate: 0.5 }\n";
    let warned = |env: &[(&str, &str)]| {
        // The test process's own VEER_LOG / RUST_LOG must not leak in.
        let mut all = vec![("VEER_LOG", ""), ("RUST_LOG", "")];
        all.extend_from_slice(env);
        let veer = VeerProcess::start_with_args(BIN, yaml, &["--log-format", "json"], &all);
        log_lines(&veer).iter().any(|l| l["level"] == "WARN")
    };
    assert!(warned(&[]), "the default level for veer run is info");
    assert!(
        !warned(&[("RUST_LOG", "error")]),
        "RUST_LOG=error hides warnings"
    );
    assert!(
        warned(&[("RUST_LOG", "error"), ("VEER_LOG", "warn")]),
        "VEER_LOG wins over RUST_LOG"
    );
}
