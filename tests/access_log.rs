//! The access log: one JSON line per request, written when its response
//! stream ends, with the outcome the metrics record; a request id that veer
//! propagates (`x-request-id` from the client) or generates, set on the
//! upstream request and on the response. Its config is checked like the rest.

mod support;

use std::time::Duration;

use http::Request;
use support::client::{empty, get, http1_client, send};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::wait_until;

fn yaml(upstream: std::net::SocketAddr, access_log: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n{access_log}\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1\", endpoints: [\"{upstream}\"], weight: 1 }}\n"
    )
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_logged_with_its_id_and_outcome_when_its_stream_ends() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let proxy = TestProxy::start(&yaml(
        upstream.addr(),
        &format!(
            "access_log: {{ path: {}, sample: 1.0 }}\n",
            serde_json::Value::String(path.display().to_string())
        ),
    ))
    .await;
    let client = http1_client();

    // The client's id is kept and passed on.
    let request = Request::get(proxy.url("/download/100?x=1"))
        .header("x-request-id", "client-chosen-1")
        .body(empty())
        .expect("request");
    let answer = send(&client, request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), Some("client-chosen-1"));
    assert_eq!(
        upstream.last_headers()["x-request-id"],
        "client-chosen-1",
        "the upstream sees the same id"
    );

    // None sent: veer makes one, the same on both sides.
    let answer = send(&client, get(&proxy.url("/"), None)).await;
    let made = answer.header("x-request-id").expect("an id").to_string();
    assert_eq!(made.len(), 32, "{made}");
    assert_eq!(upstream.last_headers()["x-request-id"], made.as_str());

    // A body that breaks after its head: logged as the version's error.
    let response = client
        .request(get(&proxy.url("/reset/10"), None))
        .await
        .expect("head");
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;

    wait_until(Duration::from_secs(10), "three access log lines", || {
        lines(&path).len() >= 3
    })
    .await;
    let logged = lines(&path);
    assert_eq!(logged.len(), 3, "{logged:?}");
    let first = &logged[0];
    assert_eq!(first["request_id"], "client-chosen-1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/download/100?x=1");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["service"], "web");
    assert_eq!(first["version"], "stable");
    assert_eq!(first["endpoint"], upstream.addr().to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["bytes"], 100);
    assert!(
        first["ttfb_ms"].as_f64().expect("ttfb")
            <= first["duration_ms"].as_f64().expect("duration")
    );
    assert!(first["time"].as_str().expect("time").ends_with('Z'));
    assert_eq!(logged[1]["request_id"], made.as_str());
    let broken = &logged[2];
    assert_eq!(
        (
            broken["status"].clone(),
            broken["outcome"].clone(),
            broken["reason"].clone()
        ),
        (200.into(), "error".into(), "midstream".into()),
        "{broken}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_access_log_no_request_id_is_added() {
    let upstream = Upstream::start("stable").await;
    let proxy = TestProxy::start(&yaml(upstream.addr(), "")).await;
    let answer = send(&http1_client(), get(&proxy.url("/"), None)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), None);
    assert!(!upstream.last_headers().contains_key("x-request-id"));
    proxy.shutdown().await;
}

#[test]
fn a_wrong_access_log_config_is_refused_with_the_field_and_the_fix() {
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
    for (access_log, expected) in [
        (
            "access_log: { path: a.log, smaple: 0.5 }\n",
            "unknown field `smaple`",
        ),
        (
            "access_log: { path: a.log, sample: 2 }\n",
            "access_log.sample: `2` is outside 0..=1",
        ),
        (
            "access_log: { sample: 0.5 }\n",
            "access_log.path: missing: name a file to append JSON lines to, or `stdout`",
        ),
        ("acess_log: { path: a.log }\n", "unknown field `acess_log`"),
    ] {
        let text = yaml(upstream, access_log);
        let errors = veer::config::parse_str(&text, "t.yaml")
            .expect_err(access_log)
            .to_string();
        assert!(errors.contains(expected), "{access_log}: {errors}");
    }
    let text = yaml(upstream, "access_log: { path: stdout }\n");
    let config = veer::config::parse_str(&text, "t.yaml").expect("valid");
    let log = config.access_log.expect("access_log");
    assert_eq!(log.target, veer::config::AccessLogTarget::Stdout);
    assert_eq!(log.sample, 1.0);
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_stops_the_start_with_the_reason() {
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing-dir").join("access.log");
    let text = yaml(
        upstream,
        &format!(
            "access_log: {{ path: {} }}\n",
            serde_json::Value::String(path.display().to_string())
        ),
    );
    let config = veer::config::parse_str(&text, "t.yaml").expect("valid");
    let error = match veer::server::Proxy::start(config).await {
        Ok(_) => panic!("started with an unwritable access log"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.starts_with("access_log: cannot open the access log")
            && error
                .contains("check access_log.path and that its directory exists and is writable"),
        "{error}"
    );
}

#[test]
fn veer_check_refuses_an_access_log_in_a_missing_directory_as_run_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
    let config = dir.path().join("veer.yaml");
    std::fs::write(
        &config,
        yaml(upstream, "access_log: { path: missing-dir/access.log }\n"),
    )
    .expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run veer check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("access_log.path")
            && all.contains("does not exist: create it, or name a file in an existing directory"),
        "{all}"
    );

    std::fs::create_dir(dir.path().join("missing-dir")).expect("mkdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run veer check");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}
