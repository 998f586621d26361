//! `veer wait` as the gate a pipeline bets on, end to end: the real binary
//! against veer on loopback, each exit status produced and asserted.
//!
//! 0 completed (the last step held with no trip); 1 rolled back, by the guard
//! or an operator, after completion too; 2 timed out; 3 admin API unreachable
//! or refusing the token; 64 usage error or unknown service. Per-step holds
//! and a manual step that waits for `veer promote`. Off a terminal, a line
//! per change only.
//!
//! Nothing here asserts a time: holds are in milliseconds, every wait is a
//! poll with a generous deadline.

mod support;

use std::time::Duration;

use support::binary::VeerProcess;
use support::release;
use support::release::{
    admin_of, at, output_text, v, veer, veer_ok, web_yaml, weight, Fixture, BIN, LIMIT,
};
use support::upstream::Upstream;

const GUARD: &str =
    "    guard: { baseline: stable, interval: 100ms, window: 2s, min_requests: 10, \
                     consecutive: 2, max_error_rate: 0.2 }\n";

fn versions(stable: &Upstream, canary: &Upstream) -> Vec<release::V> {
    vec![
        v("stable", stable.addr(), 100),
        v("canary", canary.addr(), 0),
    ]
}

async fn wait_code(args: &[&str]) -> (Option<i32>, String) {
    let out = veer(args).await;
    (out.status.code(), output_text(&out))
}

/// Completed, then the candidate fails at 100 %: the guard trips, `/status`
/// says rolled back, and `veer wait` exits 1, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_after_completion_rolls_the_release_back_and_veer_wait_exits_1() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks =
        GUARD.to_string() + "    rollout: { candidate: canary, steps: [50, 100], hold: 300ms }\n";
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();
    let load = f.paced_load(100, 6_000, Duration::from_secs(50));

    // At 100 % the last step still holds: in progress before completed.
    let last = f
        .wait_web(LIMIT, "the last step", |w| {
            at(w, 2, "in_progress") || at(w, 2, "completed")
        })
        .await;
    assert_eq!(last["rollout"]["percent"], 100, "{last:#}");
    let done = f
        .wait_web(LIMIT, "completion after the last hold", |w| {
            at(w, 2, "completed")
        })
        .await;
    assert_eq!((weight(&done, "stable"), weight(&done, "canary")), (0, 100));
    veer_ok(&["wait", "web", "--admin", &admin, "--timeout", "20s"], 0).await;

    canary.set_fail_ratio(1.0);
    let tripped = f
        .wait_web(LIMIT, "the guard trips the completed candidate", |w| {
            w["rollout"]["state"] == "rolled_back"
        })
        .await;
    assert_eq!(
        (weight(&tripped, "stable"), weight(&tripped, "canary")),
        (100, 0),
        "{tripped:#}"
    );
    let (code, out) = wait_code(&["wait", "web", "--admin", &admin, "--timeout", "20s"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("web: rollout rolled back"), "{out}");
    load.finish().await;
    f.shutdown().await;
}

/// An operator's rollback after completion counts the same; `veer resume`
/// starts the rollout again from its first step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_rollback_after_completion_makes_veer_wait_exit_1_until_resumed() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks =
        GUARD.to_string() + "    rollout: { candidate: canary, steps: [50, 100], hold: 1h }\n";
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();
    let cmd = |verb: &'static str| vec![verb, "web", "--admin", admin.as_str()];
    veer_ok(&cmd("promote"), 0).await;
    veer_ok(&cmd("promote"), 0).await;
    assert_eq!(f.rollout().await["state"], "completed");
    veer_ok(&cmd("rollback"), 0).await;
    let back = f.web().await;
    assert_eq!(back["rollout"]["state"], "rolled_back", "{back:#}");
    assert_eq!((weight(&back, "stable"), weight(&back, "canary")), (100, 0));
    let (code, out) = wait_code(&["wait", "web", "--admin", &admin, "--timeout", "5s"]).await;
    assert_eq!(code, Some(1), "{out}");

    veer_ok(&cmd("resume"), 0).await;
    let again = f.web().await;
    assert!(at(&again, 1, "in_progress"), "{again:#}");
    f.shutdown().await;
}

/// Steps with their own holds and a manual step: the manual step waits past
/// any hold for `veer promote`; `veer wait` without `--timeout` refuses to
/// guess one (64), and with one it times out (2) with the rollout going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_step_waits_for_promote_and_per_step_holds_apply() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = GUARD.to_string()
        + "    rollout:\n      candidate: canary\n      steps:\n\
           \x20       - {weight: 10, hold: 200ms}\n\
           \x20       - {weight: 50, hold: manual}\n\
           \x20       - 100\n      hold: 2s\n";
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();
    let first = f.rollout().await;
    assert_eq!(first["hold_ms"], 200, "{first:#}");
    assert_eq!(first["min_total_ms"], serde_json::Value::Null, "{first:#}");
    let load = f.paced_load(100, 6_000, Duration::from_secs(50));
    let manual = f
        .wait_web(LIMIT, "the manual step", |w| at(w, 2, "in_progress"))
        .await;
    assert_eq!(manual["rollout"]["manual"], true, "{manual:#}");
    assert_eq!(manual["rollout"]["hold_ms"], serde_json::Value::Null);
    assert_eq!(manual["rollout"]["percent"], 50);

    let (code, out) = wait_code(&["wait", "web", "--admin", &admin]).await;
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("has a manual step ahead, which waits for `veer promote`: give --timeout"),
        "{out}"
    );
    let (code, out) = wait_code(&["wait", "web", "--admin", &admin, "--timeout", "1s"]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("waiting for `veer promote`"), "{out}");
    assert!(
        out.contains("timed out after") && out.contains("it goes on in veer (not rolled back)"),
        "{out}"
    );
    assert!(
        at(&f.web().await, 2, "in_progress"),
        "still at the manual step"
    );

    veer_ok(&["promote", "web", "--admin", &admin], 0).await;
    // The last step holds for the rollout's 2s; its least remaining time
    // sets the default timeout, printed once, at start.
    let (code, out) = wait_code(&["wait", "web", "--revision", "1.2.0", "--admin", &admin]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.matches("no --timeout given; waiting at most 10m")
            .count(),
        1,
        "{out}"
    );
    assert!(out.contains("rollout completed"), "{out}");
    load.finish().await;
    f.shutdown().await;
}

/// Off a terminal the log gets a line when something changes, not a line
/// per poll: a paused rollout with no traffic prints one progress line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_terminal_veer_wait_prints_changes_only() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks =
        GUARD.to_string() + "    rollout: { candidate: canary, steps: [10, 100], hold: 594s }\n";
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();
    veer_ok(&["pause", "web", "--admin", &admin], 0).await;
    // The guard has judged once: its verdict will not change from here on.
    f.wait_web(LIMIT, "a first guard verdict", |w| {
        release::version(w, "canary")["guard_verdict"].is_string()
    })
    .await;
    let out = veer(&["wait", "web", "--admin", &admin, "--timeout", "3s"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let progress: Vec<&str> = stdout.lines().filter(|l| l.contains("step 1/2")).collect();
    assert_eq!(
        progress.len(),
        1,
        "one line while nothing changes:\n{stdout}"
    );
    assert!(progress[0].contains("9m 54s of hold left"), "{stdout}");
    assert!(
        stdout.starts_with("veer wait: web: waiting at most 3s\n"),
        "{stdout}"
    );
    f.shutdown().await;
}

/// 64 for a usage error (clap's included) or a service veer does not know;
/// 3 when the admin API cannot be reached or refuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_64_and_an_unreachable_or_refusing_admin_api_exits_3() {
    let (code, out) = wait_code(&["wait", "web", "--timout", "5m"]).await;
    assert_eq!(code, Some(64), "a typo in a flag\n{out}");
    assert!(out.contains("unexpected argument '--timout'"), "{out}");
    let (code, out) = wait_code(&["wait"]).await;
    assert_eq!(code, Some(64), "no service\n{out}");
    let (code, out) = wait_code(&["wait", "web", "--timeout", "soon"]).await;
    assert_eq!(code, Some(64), "{out}");
    let (code, out) = wait_code(&["status", "--bogus"]).await;
    assert_eq!(code, Some(64), "other commands too\n{out}");
    let (code, out) = wait_code(&["wait", "web", "--admin", "not a url"]).await;
    assert_eq!(code, Some(64), "{out}");

    // Nothing listens there.
    let closed = support::raw::closed_port();
    let url = format!("http://{closed}");
    let (code, out) = wait_code(&["wait", "web", "--admin", &url, "--timeout", "1m"]).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("cannot reach the admin API"), "{out}");

    let token_dir = tempfile::tempdir().expect("temp dir");
    let token = token_dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("write token");
    let wrong = token_dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").expect("write wrong token");
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = web_yaml(&versions(&stable, &canary), "", None).replace(
        "admin:\n  address: \"127.0.0.1:0\"\n",
        &format!(
            "admin:\n  address: \"127.0.0.1:0\"\n  token_file: {:?}\n",
            token.display().to_string()
        ),
    );
    let mut proxy = VeerProcess::start(BIN, &yaml);
    let url = format!("http://{}", admin_of(&proxy));
    let wrong = wrong.display().to_string();
    let (code, out) = wait_code(&[
        "wait",
        "web",
        "--admin",
        &url,
        "--token-file",
        &wrong,
        "--timeout",
        "1m",
    ])
    .await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("refused the token (401"), "{out}");

    let token = token.display().to_string();
    let (code, out) = wait_code(&[
        "wait",
        "nope",
        "--admin",
        &url,
        "--token-file",
        &token,
        "--timeout",
        "1m",
    ])
    .await;
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("no service named `nope`"), "{out}");
    let (code, out) = wait_code(&[
        "wait",
        "web",
        "--admin",
        &url,
        "--token-file",
        &token,
        "--timeout",
        "1m",
    ])
    .await;
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("has no rollout to wait for"), "{out}");
    proxy.signal("TERM");
    proxy.wait_exit(LIMIT).await;
}

/// `veer weights` is held to the config's rules, with the config's message,
/// and a latched version is refused with 409 and the reason, never quietly
/// given 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_weights_follow_the_config_rules_and_a_latched_version_is_refused_409() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let f = Fixture::start(&web_yaml(
        &[
            v("stable", stable.addr(), 90),
            v("canary", canary.addr(), 10),
        ],
        GUARD,
        None,
    ))
    .await;
    let admin = f.admin_url();
    let weights = |pair: &'static str| {
        vec![
            "weights",
            "web",
            "stable=1",
            pair,
            "--admin",
            admin.as_str(),
        ]
    };
    for (pair, message) in [
        (
            "canary=1000001",
            "weight 1000001 is above the maximum 1000000: weights are relative, so scale them all down",
        ),
        (
            "canary=4294967296",
            "weight 4294967296 is above the maximum 1000000: weights are relative, so scale them all down",
        ),
        (
            "canary=99999999999999999999999999999999999999999",
            "is above the maximum 1000000",
        ),
        (
            "canary=-3",
            "weight -3 is negative: weights are whole numbers from 0 to 1000000",
        ),
        (
            "canary=1.5",
            "`1.5` is not a whole number: weights are whole numbers from 0 to 1000000",
        ),
    ] {
        let out = veer_ok(&weights(pair), 1).await;
        let text = output_text(&out);
        assert!(text.contains(message), "{pair}\n{text}");
    }
    // The admin API itself applies the same rule to what any client sends.
    for (body, message) in [
        (
            serde_json::json!({"canary": 4_294_967_296_u64}),
            "weight 4294967296 is above the maximum 1000000",
        ),
        (
            serde_json::json!({"canary": 1e30}),
            "is above the maximum 1000000",
        ),
        (
            serde_json::json!({"canary": "ten"}),
            "is not a whole number",
        ),
    ] {
        let answer = f.post("/services/web/weights", Some(body)).await;
        let text = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 400, "{text}");
        assert!(text.contains(message), "{text}");
    }
    let web = f.web().await;
    assert_eq!((weight(&web, "stable"), weight(&web, "canary")), (90, 10));

    veer_ok(&["rollback", "web", "--admin", &admin], 0).await;
    let out = veer_ok(&weights("canary=50"), 1).await;
    let text = output_text(&out);
    assert!(text.contains("409"), "{text}");
    assert!(
        text.contains("version `canary` of `web` is latched at revision `1.2.0` (manual)"),
        "{text}"
    );
    let web = f.web().await;
    assert_eq!((weight(&web, "stable"), weight(&web, "canary")), (100, 0));
    // Weight 0 for the latched version asks for nothing it refuses.
    veer_ok(
        &["weights", "web", "stable=5", "canary=0", "--admin", &admin],
        0,
    )
    .await;
    f.shutdown().await;
}

/// A guard with nowhere to keep its latches: `veer run` warns at start, as
/// `veer check` does, and still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veer_run_warns_at_start_when_a_guard_has_no_state_dir() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let mut proxy = VeerProcess::start(BIN, &web_yaml(&versions(&stable, &canary), GUARD, None));
    let out = proxy.output();
    assert!(
        out.contains("services[0].guard: warning: no state_dir: service `web` has a guard"),
        "{out}"
    );
    proxy.signal("TERM");
    proxy.wait_exit(LIMIT).await;
}
