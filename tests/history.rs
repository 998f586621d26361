//! The release history, end to end with the real binary: a rollout that
//! completes is one record with its steps and the window's figures at each;
//! a trip rolls the rollout back with its reason, and a resume starts a new
//! one; manual weights, a blue-green switch and a rollback are records of
//! their own, bounded to `history.keep`; the records survive a restart;
//! `veer history` prints them as a table or JSON; the rollout metrics count
//! the outcomes; an unknown service is a 404 (and exit 1). A pause — an
//! operator's or a check's — is a record with its reason, and the reason
//! outlives a restart in `/status` and `veer status`.
//!
//! Nothing here asserts a time: every wait is a poll with a generous deadline.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{get, http1_client, send, HttpClient};
use support::release::{
    admin_of, admin_post, at, output_text, paced_load, status_at, v, veer, veer_ok, wait_web_at,
    web, web_yaml, BIN, LIMIT,
};
use support::upstream::Upstream;

const GUARD: &str = "    guard: { baseline: stable, interval: 200ms, window: 5s, min_requests: 20, consecutive: 2, max_error_rate: 0.2 }\n";

async fn history(client: &HttpClient, admin: std::net::SocketAddr, service: &str) -> (u16, Value) {
    let answer = send(
        client,
        get(&format!("http://{admin}/services/{service}/history"), None),
    )
    .await;
    let body = if answer.status == 200 {
        serde_json::from_slice(&answer.body).expect("history is JSON")
    } else {
        Value::String(answer.text())
    };
    (answer.status.as_u16(), body)
}

fn records(body: &Value) -> &Vec<Value> {
    body["records"].as_array().expect("records")
}

fn kinds(body: &Value) -> Vec<String> {
    records(body)
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn metrics(client: &HttpClient, admin: std::net::SocketAddr) -> String {
    send(client, get(&format!("http://{admin}/metrics"), None))
        .await
        .text()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_rollout_is_one_record_with_its_steps_and_survives_a_restart() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let blocks =
        format!("{GUARD}    rollout: {{ candidate: canary, steps: [50, 100], hold: 1s }}\n");
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        Some(state_dir.path()),
    );
    let client = http1_client();
    let mut first = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&first);
    let proxy = first.listener(support::config::LISTENER);
    let load = paced_load(
        client.clone(),
        format!("http://{proxy}/"),
        100,
        8_000,
        Duration::from_secs(40),
    )
    .start(support::load::status_and_upstream);
    wait_web_at(&client, admin, LIMIT, "the rollout completes", |w| {
        at(w, 2, "completed")
    })
    .await;
    let _ = load.finish().await;

    let (status, body) = history(&client, admin, "web").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kinds(&body), ["rollout"], "{body:#}");
    let rollout = &records(&body)[0];
    assert_eq!(rollout["outcome"], "completed", "{rollout:#}");
    assert_eq!(rollout["version"], "canary");
    assert_eq!(rollout["revision"], "1.2.0");
    assert_eq!(
        rollout["actor"], "reload",
        "started by the config: {rollout:#}"
    );
    assert!(rollout["ended_unix_ms"].as_u64() >= rollout["started_unix_ms"].as_u64());
    let steps = rollout["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{rollout:#}");
    assert_eq!(
        (steps[0]["percent"].as_u64(), steps[1]["percent"].as_u64()),
        (Some(50), Some(100))
    );
    for step in steps {
        assert_eq!(step["left_by"], "rollout", "{step:#}");
        let figures = step["figures"]
            .as_array()
            .expect("figures when the step was left");
        let names: Vec<&str> = figures
            .iter()
            .filter_map(|f| f["version"].as_str())
            .collect();
        assert_eq!(
            names,
            ["canary", "stable"],
            "candidate and baseline: {step:#}"
        );
        assert!(figures[0]["requests"].as_u64() > Some(0), "{step:#}");
        assert!(figures[0]["rps"].as_f64() > Some(0.0), "{step:#}");
        assert_eq!(figures[0]["error_rate"].as_f64(), Some(0.0), "{step:#}");
        assert!(figures[0]["p95_ms"].as_f64().is_some(), "{step:#}");
    }

    let text = metrics(&client, admin).await;
    assert!(
        text.contains("veer_rollouts_total{service=\"web\",outcome=\"completed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("veer_rollouts_total{service=\"web\",outcome=\"rolled_back\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "veer_rollout_duration_seconds_count{service=\"web\",outcome=\"completed\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE veer_rollout_duration_seconds histogram"),
        "{text}"
    );

    // The table: the rollout, then its steps with the figures.
    let url = format!("http://{admin}");
    let out = veer_ok(&["history", "web", "--admin", &url], 0).await;
    let table = stdout(&out);
    assert!(table.starts_with("STARTED"), "{table}");
    let row = table.lines().nth(1).unwrap_or_default();
    for word in ["rollout", "canary", "1.2.0", "reload", "completed"] {
        assert!(row.contains(word), "`{word}` in {row:?}\n{table}");
    }
    assert!(table.contains("    step 1 at 50%, left after"), "{table}");
    assert!(table.contains("by rollout; canary "), "{table}");
    assert!(table.contains("% errors, p50 "), "{table}");
    let out = veer_ok(&["history", "web", "--json", "--admin", &url], 0).await;
    let json: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json, body);

    // A restart keeps the record.
    first.signal("TERM");
    assert!(first.wait_exit(LIMIT).await.is_some(), "veer did not stop");
    let second = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&second);
    let (_, again) = history(&client, admin, "web").await;
    assert_eq!(again, body, "the history after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_rolls_the_rollout_back_with_its_reason_and_resume_starts_a_new_one() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_fail_ratio(1.0);
    let blocks =
        format!("{GUARD}    rollout: {{ candidate: canary, steps: [50, 100], hold: 1h }}\n");
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        None,
    );
    let client = http1_client();
    let veer_process = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&veer_process);
    let proxy = veer_process.listener(support::config::LISTENER);
    let load = paced_load(
        client.clone(),
        format!("http://{proxy}/"),
        100,
        6_000,
        Duration::from_secs(40),
    )
    .start(support::load::status_and_upstream);
    wait_web_at(
        &client,
        admin,
        LIMIT,
        "the trip rolls the rollout back",
        |w| w["rollout"]["state"] == "rolled_back",
    )
    .await;
    let _ = load.finish().await;

    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(kinds(&body), ["trip", "rollout"], "newest first: {body:#}");
    let trip = &records(&body)[0];
    assert_eq!(trip["actor"], "guard");
    assert_eq!(trip["outcome"], "rolled_back");
    assert_eq!(trip["reason"], "error_rate", "{trip:#}");
    assert_eq!(trip["version"], "canary");
    assert_eq!(trip["weights_after"]["canary"], 0, "{trip:#}");
    assert!(
        trip["figures"][0]["error_rate"].as_f64() > Some(0.2),
        "{trip:#}"
    );
    let rollout = &records(&body)[1];
    assert_eq!(rollout["outcome"], "rolled_back");
    assert_eq!(rollout["reason"], "error_rate", "{rollout:#}");
    let text = metrics(&client, admin).await;
    assert!(
        text.contains("veer_rollouts_total{service=\"web\",outcome=\"rolled_back\"} 1\n"),
        "{text}"
    );

    // The operator resumes: a resume record, and the rollout starts again.
    let url = format!("http://{admin}");
    veer_ok(&["resume", "web", "--admin", &url], 0).await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(
        kinds(&body),
        ["resume", "rollout", "trip", "rollout"],
        "{body:#}"
    );
    assert_eq!(records(&body)[0]["actor"], "admin");
    assert_eq!(records(&body)[1]["outcome"], "in_progress");
    let out = veer_ok(&["history", "web", "--admin", &url], 0).await;
    let table = stdout(&out);
    assert!(table.contains("running"), "{table}");
    assert!(table.contains("error_rate"), "{table}");
    assert!(
        table.contains("    window: canary "),
        "the trip's figures: {table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_a_switch_and_a_rollback_are_records_bounded_to_keep() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = format!("{GUARD}history: {{ keep: 3 }}\n");
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        None,
    );
    let client = http1_client();
    let veer_process = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&veer_process);
    let url = format!("http://{admin}");

    let (status, body) = history(&client, admin, "web").await;
    assert_eq!((status, kinds(&body).len()), (200, 0), "{body}");
    let out = veer_ok(&["history", "web", "--admin", &url], 0).await;
    assert_eq!(stdout(&out), "web: no releases recorded yet\n");

    veer_ok(
        &["weights", "web", "stable=80", "canary=20", "--admin", &url],
        0,
    )
    .await;
    veer_ok(
        &["weights", "web", "stable=0", "canary=100", "--admin", &url],
        0,
    )
    .await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(kinds(&body), ["switch", "weights"], "{body:#}");
    let switch = &records(&body)[0];
    assert_eq!(switch["version"], "canary", "the new majority: {switch:#}");
    assert_eq!(switch["actor"], "admin");
    assert_eq!(switch["weights_before"]["stable"], 80, "{switch:#}");
    assert_eq!(switch["weights_after"]["canary"], 100, "{switch:#}");
    assert_eq!(records(&body)[1]["version"], "canary", "whose weight rose");

    // A refused change leaves no record.
    let out = veer(&["weights", "web", "nope=1", "--admin", &url]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let out = veer(&["pause", "web", "--reason", "freeze", "--admin", &url]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "veer: pause refused (409 Conflict): service `web` has no rollout in progress to pause\n",
        "{}",
        output_text(&out)
    );
    veer_ok(&["rollback", "web", "--admin", &url], 0).await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(kinds(&body), ["rollback", "switch", "weights"], "{body:#}");
    let rollback = &records(&body)[0];
    assert_eq!(
        (&rollback["actor"], &rollback["reason"]),
        (&Value::from("admin"), &Value::from("manual"))
    );

    veer_ok(&["resume", "web", "--admin", &url], 0).await;
    veer_ok(
        &["weights", "web", "stable=100", "canary=0", "--admin", &url],
        0,
    )
    .await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(
        kinds(&body),
        ["switch", "resume", "rollback"],
        "the newest 3: {body:#}"
    );
    assert_eq!(records(&body)[0]["version"], "stable");

    // An unknown service.
    let (status, text) = history(&client, admin, "nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        text,
        "no service `nope` in the config; GET /status lists the services\n"
    );
    let out = veer(&["history", "nope", "--admin", &url]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service `nope` in the config"),
        "{}",
        output_text(&out)
    );
    // The admin API away: exit 2.
    let out = veer(&["history", "web", "--admin", "http://127.0.0.1:1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}

#[tokio::test]
async fn history_keep_is_checked() {
    let dir = tempfile::tempdir().expect("dir");
    for (keep, reason) in [
        (
            "0",
            "history.keep: 0 is outside 1..=1000 (release records kept per service, the newest)",
        ),
        ("1001", "history.keep: 1001 is outside 1..=1000"),
        ("many", "history.keep: `many` is not a whole number"),
    ] {
        let path = dir.path().join("veer.yaml");
        let yaml = format!(
            "listeners: [{{name: public, address: '127.0.0.1:0'}}]\nhistory: {{ keep: {keep} }}\n\
             services:\n  - name: web\n    versions:\n      - {{name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: 1}}\n"
        );
        std::fs::write(&path, yaml).expect("write");
        let path = path.display().to_string();
        let out = veer(&["check", "-c", &path]).await;
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        let text = output_text(&out);
        assert!(text.contains(reason), "{reason:?} in\n{text}");
    }
    let path = dir.path().join("unknown.yaml");
    std::fs::write(
        &path,
        "listeners: [{name: public, address: '127.0.0.1:0'}]\nhistory: { kept: 3 }\n\
         services:\n  - name: web\n    versions:\n      - {name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: 1}\n",
    )
    .expect("write");
    let out = veer(&["check", "-c", &path.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("history.kept"),
        "{}",
        output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_pause_is_a_record_with_its_reason_kept_across_a_restart() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let blocks =
        format!("{GUARD}    rollout: {{ candidate: canary, steps: [50, 100], hold: 1h }}\n");
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        Some(state_dir.path()),
    );
    let client = http1_client();
    let mut first = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&first);
    let url = format!("http://{admin}");

    // A body that is not a reason is refused, and nothing is paused.
    for (body, words) in [
        (
            serde_json::json!({"why": "freeze"}),
            "a pause's body is `{\"reason\": \"why\"}` or nothing: unknown field `why`",
        ),
        (
            serde_json::json!({"reason": 3}),
            "a pause's body is `{\"reason\": \"why\"}` or nothing: invalid type: integer `3`",
        ),
    ] {
        let answer = admin_post(&client, admin, "/services/web/pause", Some(body)).await;
        assert_eq!(answer.status, 400, "{}", answer.text());
        assert!(
            answer.text().contains(words),
            "{words:?} in {}",
            answer.text()
        );
    }
    assert_eq!(
        web(&status_at(&client, admin).await)["rollout"]["paused"],
        false
    );

    veer_ok(
        &[
            "pause",
            "web",
            "--reason",
            "release freeze",
            "--admin",
            &url,
        ],
        0,
    )
    .await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(kinds(&body), ["pause", "rollout"], "{body:#}");
    let pause = &records(&body)[0];
    assert_eq!(pause["actor"], "admin", "{pause:#}");
    assert_eq!(
        pause["reason"], "by an operator: release freeze",
        "{pause:#}"
    );
    assert_eq!(pause["version"], "canary");
    assert_eq!(pause["revision"], "1.2.0");
    let entry = web(&status_at(&client, admin).await).clone();
    assert_eq!(
        entry["rollout"]["pause_reason"], "by an operator: release freeze",
        "{entry:#}"
    );

    // After a restart the reason is still there.
    first.signal("TERM");
    assert!(first.wait_exit(LIMIT).await.is_some(), "veer did not stop");
    let second = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&second);
    let url = format!("http://{admin}");
    let entry = web(&status_at(&client, admin).await).clone();
    assert_eq!(entry["rollout"]["paused"], true, "{entry:#}");
    assert_eq!(
        entry["rollout"]["pause_reason"], "by an operator: release freeze",
        "{entry:#}"
    );
    let out = veer_ok(&["status", "web", "--admin", &url], 0).await;
    assert!(
        stdout(&out).contains("(paused: by an operator: release freeze)"),
        "{}",
        output_text(&out)
    );
    let out = veer_ok(&["history", "web", "--admin", &url], 0).await;
    let table = stdout(&out);
    let row = table.lines().nth(1).unwrap_or_default();
    for word in ["pause", "canary", "admin", "by an operator: release freeze"] {
        assert!(row.contains(word), "`{word}` in {row:?}\n{table}");
    }

    // A resume of the paused rollout is a record too, and clears the reason.
    veer_ok(&["resume", "web", "--admin", &url], 0).await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(kinds(&body), ["resume", "pause", "rollout"], "{body:#}");
    let entry = web(&status_at(&client, admin).await).clone();
    assert_eq!(entry["rollout"]["paused"], false, "{entry:#}");
    assert!(entry["rollout"].get("pause_reason").is_none(), "{entry:#}");
    // A pause with no reason says who.
    veer_ok(&["pause", "web", "--admin", &url], 0).await;
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(records(&body)[0]["reason"], "by an operator", "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checks_pause_is_a_record_and_its_reason_survives_a_restart() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let down = support::raw::closed_port();
    let blocks = format!(
        "{GUARD}    rollout:\n\
         \x20     candidate: canary\n\
         \x20     steps: [50, 100]\n\
         \x20     hold: 1h\n\
         \x20     checks:\n\
         \x20       - name: conversion\n\
         \x20         web: {{ url: 'http://{down}/ratio', field: data.ratio }}\n\
         \x20         max: 0.02\n\
         \x20         interval: 1s\n\
         \x20         timeout: 500ms\n\
         \x20         inconclusive_limit: 2\n"
    );
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        Some(state_dir.path()),
    );
    let client = http1_client();
    let mut first = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&first);
    let paused = wait_web_at(&client, admin, LIMIT, "the check pauses the rollout", |w| {
        w["rollout"]["paused"] == true
    })
    .await;
    let reason = paused["rollout"]["pause_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.starts_with("check `conversion` was inconclusive 2 times in a row (http://")
            && reason.contains("/ratio unreachable: ")
            && reason.ends_with("; fix what the check reads, then `veer resume web`"),
        "{paused:#}"
    );
    let (_, body) = history(&client, admin, "web").await;
    assert_eq!(kinds(&body), ["pause", "rollout"], "{body:#}");
    let pause = &records(&body)[0];
    assert_eq!(pause["actor"], "check", "{pause:#}");
    assert_eq!(pause["reason"], reason.as_str(), "{pause:#}");

    first.signal("TERM");
    assert!(first.wait_exit(LIMIT).await.is_some(), "veer did not stop");
    let second = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&second);
    let entry = web(&status_at(&client, admin).await).clone();
    assert_eq!(entry["rollout"]["paused"], true, "{entry:#}");
    assert_eq!(
        entry["rollout"]["pause_reason"],
        reason.as_str(),
        "{entry:#}"
    );
    let url = format!("http://{admin}");
    let out = veer_ok(&["status", "web", "--admin", &url], 0).await;
    assert!(
        stdout(&out).contains(&format!("(paused: {reason})")),
        "{}",
        output_text(&out)
    );
    let (_, again) = history(&client, admin, "web").await;
    assert_eq!(kinds(&again), ["pause", "rollout"], "{again:#}");
}
