//! Progressive rollouts, end to end on loopback: the candidate moves through
//! its steps by itself under paced load and each step's share is what the
//! step says; a candidate that fails mid-way is rolled back and stays there;
//! a restart resumes the same step with the hold already spent; pause,
//! resume, promote and manual weights act as the contract says (through the
//! `veer` binary's commands); a gate holds a step until it answers 2xx.
//! `veer wait` (the binary) is the CI gate: 0 completed, 1 rolled back or
//! ended by hand, 2 timed out.
//!
//! Nothing here asserts a time: holds are short, every wait is a poll with a
//! generous deadline, and shares are measured over request counts.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{get, http1_client, send};
use support::load::status_and_upstream;
use support::release;
use support::release::{
    admin_of, answered_by, at, finish_wait, paced_load, spawn_wait, status_at, tally, v, veer_ok,
    wait_web_at, web, web_yaml, weight, witness, Fixture, Observed, Sample, Watcher, BIN, LIMIT,
};
use support::upstream::Upstream;
use support::wait_until;

/// The guard every rollout here runs under: judged every 200 ms on a 5 s
/// window, `min_requests` candidate requests before a step may advance.
const MIN_REQUESTS: u64 = 20;
fn guard(threshold: &str) -> String {
    format!(
        "    guard: {{ baseline: stable, interval: 200ms, window: 5s, min_requests: {MIN_REQUESTS}, \
         consecutive: 2, {threshold} }}\n"
    )
}

/// The rollout runner judges every rollout this often: a rollout whose hold
/// is over moves on within one tick.
const RUNNER_TICK: Duration = Duration::from_millis(100);

/// A threshold nothing here reaches: the guard never trips on healthy upstreams.
const NEVER_TRIPS: &str = "max_error_rate: 0.5";

/// Requests that were already on their way when a trip was observed may
/// still reach the candidate.
const GRACE: u64 = 5;

fn rollout(steps: &str, hold: &str, gate: Option<&str>) -> String {
    match gate {
        None => format!("    rollout: {{ candidate: canary, steps: {steps}, hold: {hold} }}\n"),
        Some(url) => format!(
            "    rollout: {{ candidate: canary, steps: {steps}, hold: {hold}, gate: \"{url}\" }}\n"
        ),
    }
}

/// The file's weights before a rollout: everything on stable, as a pipeline
/// leaves it before deploying a new canary revision.
fn versions(stable: &Upstream, canary: &Upstream) -> Vec<release::V> {
    vec![
        v("stable", stable.addr(), 100),
        v("canary", canary.addr(), 0),
    ]
}

fn share(samples: &[&Sample], upstream: &str) -> f64 {
    let n = samples
        .iter()
        .filter(|s| answered_by(s) == Some(upstream))
        .count();
    100.0 * n as f64 / samples.len().max(1) as f64
}

// ---------------------------------------------------------------- a full rollout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_through_10_50_100_completes_each_step_carries_its_share_and_veer_wait_exits_0() {
    /// Paced load; at this rate a 2 s hold sees ~500 requests per step.
    const RATE: u32 = 250;
    /// Answers measured at each step, at least.
    const PER_STEP: usize = 200;
    /// Points of tolerance on a step's share (a few requests cross each
    /// step boundary before `/status` is seen to change).
    const TOLERANCE: f64 = 5.0;
    const STEPS: [u64; 3] = [10, 50, 100];

    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = guard(NEVER_TRIPS) + &rollout("[10, 50, 100]", "2s", None);
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;

    // Before any traffic: step 1 of 3 at 10 %, whatever the file's weights.
    let start = f.web().await;
    let r = &start["rollout"];
    assert_eq!(r["candidate"], "canary", "{start:#}");
    assert_eq!(r["revision"], "1.2.0", "{start:#}");
    assert!(at(&start, 1, "in_progress"), "{start:#}");
    assert_eq!(
        (r["steps"].as_u64(), r["percent"].as_u64()),
        (Some(3), Some(10)),
        "{start:#}"
    );
    assert_eq!(
        (r["hold_ms"].as_u64(), r["paused"].as_bool()),
        (Some(2000), Some(false))
    );
    assert_eq!(
        (weight(&start, "stable"), weight(&start, "canary")),
        (90, 10)
    );

    let waiter = spawn_wait(&f.admin_url(), "90s");
    let watcher = Watcher::start(f.client.clone(), f.admin);
    wait_until(LIMIT, "the watcher reads /status", || watcher.step() == 1).await;
    let load = paced_load(
        f.client.clone(),
        f.url("/"),
        RATE,
        12_000,
        Duration::from_secs(45),
    )
    .tag(watcher.step.clone())
    .start(status_and_upstream);
    wait_until(
        Duration::from_secs(45),
        "200 answers come at the last step and, its hold over, the rollout completes",
        || load.count(|s| s.before == 3 && s.after == 3) >= PER_STEP && watcher.saw("completed"),
    )
    .await;
    let samples = load.finish().await;
    let seen = watcher.finish().await;

    // /status went 1 → 2 → 3 in order, with the step's weights in force.
    let mut steps: Vec<u64> = seen.iter().map(|s| s.step).collect();
    steps.dedup();
    assert_eq!(steps, vec![1, 2, 3], "steps seen in /status: {seen:?}");
    // The last step holds like the others: in progress at 100 % first,
    // completed only once its hold is over.
    let phases = STEPS
        .iter()
        .enumerate()
        .map(|(k, &percent)| (k as u64 + 1, percent, "in_progress"))
        .chain([(3, 100, "completed")]);
    for (step, percent, state) in phases {
        assert!(
            seen.contains(&Observed {
                step,
                state: state.to_string(),
                percent,
                stable: 100 - percent,
                canary: percent,
            }),
            "step {step}: /status never showed {state} at {percent}% with weights \
             stable {}/canary {percent}: {seen:?}",
            100 - percent
        );
    }

    let all = tally(&samples);
    assert!(
        all.keys().all(|k| k == "200 stable" || k == "200 canary"),
        "every request answered by an upstream: {all:?}"
    );
    for (k, &percent) in STEPS.iter().enumerate() {
        let step = k as u64 + 1;
        // Answers that began and ended while /status said this step.
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.before == step && s.after == step)
            .collect();
        assert!(
            during.len() >= PER_STEP,
            "step {step}: only {} answers measured (want {PER_STEP}); all: {all:?}",
            during.len()
        );
        let observed = share(&during, "canary");
        assert!(
            (observed - percent as f64).abs() <= TOLERANCE,
            "step {step} at {percent}%: the canary answered {observed:.1}% of {} requests",
            during.len()
        );
    }
    // Once /status says completed, the baseline gets nothing more.
    let late_stable = samples
        .iter()
        .filter(|s| s.before == 3 && answered_by(s) == Some("stable"))
        .count();
    assert_eq!(late_stable, 0, "stable answered after completion: {all:?}");

    let (code, out) = finish_wait(waiter).await;
    assert_eq!(code, Some(0), "veer wait after a completed rollout\n{out}");
    assert!(out.contains("rollout completed"), "{out}");
    assert!(
        out.contains("step 2/3 at 50%"),
        "veer wait shows progress\n{out}"
    );

    let end = f.web().await;
    assert!(at(&end, 3, "completed"), "{end:#}");
    assert_eq!(end["rollout"]["percent"], 100, "{end:#}");
    assert_eq!((weight(&end, "stable"), weight(&end, "canary")), (0, 100));
    f.shutdown().await;
}

// ---------------------------------------------------------------- a failing candidate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_failing_at_step_2_is_rolled_back_veer_wait_exits_1_and_no_step_follows() {
    const RATE: u32 = 150;
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    // A 3 s hold leaves the guard (2 bad verdicts 200 ms apart) ample time
    // to trip before step 2 could end.
    let blocks = guard("max_error_rate: 0.1")
        + &rollout("[10, 50, 100]", "3s", None)
        + &witness(stable.addr());
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let waiter = spawn_wait(&f.admin_url(), "90s");
    let load = f.paced_load(RATE, 8_000, Duration::from_secs(45));

    let step2 = f
        .wait_web(LIMIT, "the rollout reaches step 2", |w| {
            at(w, 2, "in_progress")
        })
        .await;
    assert_eq!(
        (weight(&step2, "stable"), weight(&step2, "canary")),
        (50, 50)
    );
    canary.set_fail_ratio(1.0);

    let tripped = f
        .wait_web(LIMIT, "the guard rolls the rollout back", |w| {
            w["rollout"]["state"] != "in_progress"
        })
        .await;
    let canary_at_trip = canary.total();
    let in_flight_at_trip = load.in_flight();
    let runner_at_trip = f.witness_held_ms().await;
    assert!(
        at(&tripped, 2, "rolled_back"),
        "rolled back at step 2: {tripped:#}"
    );
    assert_eq!(
        (weight(&tripped, "stable"), weight(&tripped, "canary")),
        (100, 0)
    );
    let latches = tripped["guard"]["latches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        latches
            .iter()
            .any(|l| l["version"] == "canary" && l["revision"] == "1.2.0"),
        "the candidate's revision is latched: {tripped:#}"
    );

    let (code, out) = finish_wait(waiter).await;
    assert_eq!(code, Some(1), "veer wait after a rollback\n{out}");
    assert!(out.contains("rolled back"), "{out}");

    // A whole hold (and a tick) of the runner's judging since the trip, with
    // traffic: no further step, nothing to the candidate.
    f.runner_ran_since(runner_at_trip, Duration::from_secs(3) + RUNNER_TICK)
        .await;
    let later = f.web().await;
    assert!(
        at(&later, 2, "rolled_back"),
        "no step after a rollback: {later:#}"
    );
    assert_eq!(
        (weight(&later, "stable"), weight(&later, "canary")),
        (100, 0)
    );
    let after_trip = canary.total() - canary_at_trip;
    assert!(
        after_trip <= in_flight_at_trip + GRACE,
        "the candidate got {after_trip} requests after the rollback ({in_flight_at_trip} were in flight)"
    );

    // `resume` restarts a rolled-back rollout from its first step.
    canary.set_fail_ratio(0.0);
    let resumed = f.post("/services/web/resume", None).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    let again = f.web().await;
    assert!(
        at(&again, 1, "in_progress"),
        "resume starts again at step 1: {again:#}"
    );
    assert_eq!(
        (weight(&again, "stable"), weight(&again, "canary")),
        (90, 10)
    );
    assert_eq!(
        again["guard"]["latches"],
        serde_json::json!([]),
        "{again:#}"
    );

    let samples = load.finish().await;
    assert!(
        samples.len() as u64 >= 2 * MIN_REQUESTS,
        "{:?}",
        tally(&samples)
    );
    f.shutdown().await;
}

// ---------------------------------------------------------------- restart mid-hold

/// The rollout progress persisted in `state_dir`, if any yet.
fn persisted_held_ms(state_dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(state_dir.join("veer-state.json")).ok()?;
    let state: Value = serde_json::from_str(&text).ok()?;
    let progress = &state["services"]["web"]["rollout"];
    assert_eq!(progress["step"], 0, "still at the first step: {state:#}");
    progress["held_ms"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_hold_resumes_the_same_step_with_the_hold_already_spent() {
    /// veer saves hold time every 5 s (it would lose at most that much).
    const SAVE_EVERY_MS: u64 = 5_000;
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let blocks = format!(
        "    guard: {{ baseline: stable, interval: 200ms, window: 5s, min_requests: 10, \
         consecutive: 2, {NEVER_TRIPS} }}\n{}",
        rollout("[10, 50, 100]", "6s", None)
    );
    let yaml = web_yaml(&versions(&stable, &canary), &blocks, Some(state_dir.path()));
    let client = http1_client();

    // No traffic yet, so the step cannot advance however long it holds:
    // the kill below can never race an advance.
    let mut first = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&first);
    let deadline = tokio::time::Instant::now() + LIMIT;
    let persisted = loop {
        match persisted_held_ms(state_dir.path()) {
            Some(held) if held > 0 => break held,
            _ if tokio::time::Instant::now() >= deadline => {
                panic!("no hold time saved in state_dir\n{}", first.output())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let before = web(&status_at(&client, admin).await).clone();
    assert!(at(&before, 1, "in_progress"), "{before:#}");
    let held_before = before["rollout"]["held_ms"].as_u64().expect("held_ms");
    assert!(
        persisted <= held_before,
        "saved {persisted} ms, /status says {held_before} ms"
    );

    // A crash, some downtime, and a start on the same state_dir.
    first.signal("KILL");
    assert!(
        first.wait_exit(LIMIT).await.is_some(),
        "veer did not die on SIGKILL"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = tokio::time::Instant::now();
    let second = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&second);
    let after = web(&status_at(&client, admin).await).clone();
    let running_since = restarted.elapsed();
    let held_after = after["rollout"]["held_ms"].as_u64().expect("held_ms");

    // The same step, at the same percent ...
    assert!(
        at(&after, 1, "in_progress"),
        "the same step after the restart: {after:#}"
    );
    assert_eq!(after["rollout"]["percent"], 10, "{after:#}");
    assert_eq!(
        (weight(&after, "stable"), weight(&after, "canary")),
        (90, 10)
    );
    // ... with the hold already spent, not restarted from zero ...
    assert!(
        held_after >= persisted && held_after + SAVE_EVERY_MS >= held_before,
        "the hold restarted: {held_after} ms held after the restart; {persisted} ms were saved, \
         {held_before} ms held before the kill"
    );
    // ... and not skipped: the downtime did not count as hold time (one
    // 100 ms runner tick of slack).
    let bound = held_before + running_since.as_millis() as u64 + 200;
    assert!(
        held_after <= bound,
        "the downtime counted as hold: {held_after} ms held after the restart, {held_before} ms \
         before the kill, veer up again for {running_since:?}"
    );

    // With traffic it goes on from there, to step 2, entered afresh.
    let proxy: SocketAddr = second.listener(support::config::LISTENER);
    let load = paced_load(
        client.clone(),
        format!("http://{proxy}/"),
        100,
        6_000,
        Duration::from_secs(40),
    )
    .start(status_and_upstream);
    let step2 = wait_web_at(&client, admin, LIMIT, "step 2 after the restart", |w| {
        at(w, 2, "in_progress")
    })
    .await;
    assert_eq!(step2["rollout"]["percent"], 50, "{step2:#}");
    assert_eq!(
        (weight(&step2, "stable"), weight(&step2, "canary")),
        (50, 50)
    );
    assert!(
        step2["rollout"]["held_ms"].as_u64() < Some(6_000),
        "step 2 starts its own hold: {step2:#}"
    );
    let samples = load.finish().await;
    let all = tally(&samples);
    assert!(
        all.keys().all(|k| k.starts_with("200 ")),
        "every request answered: {all:?}\n{}",
        second.output()
    );
}

// ---------------------------------------------------------------- operator control

/// The JSON a rollout command (`veer promote`, ...) printed.
fn printed_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the command printed no JSON ({e}):\n{}",
            release::output_text(out)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_past_the_hold_resume_goes_on_and_promote_skips_ahead_then_completes_the_last_step(
) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks =
        guard(NEVER_TRIPS) + &rollout("[10, 25, 50, 100]", "1s", None) + &witness(stable.addr());
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();
    let cmd = |verb: &'static str| vec![verb, "web", "--admin", admin.as_str()];

    veer_ok(&cmd("pause"), 0).await;
    let paused = f.rollout().await;
    assert_eq!(paused["paused"], true, "{paused:#}");
    assert_eq!(paused["step"], 1, "{paused:#}");
    let held_at_pause = paused["held_ms"].as_u64().expect("held_ms");

    let load = f.paced_load(100, 8_000, Duration::from_secs(45));
    // Enough candidate traffic to advance, then a whole hold (and a tick) of
    // the runner's judging: still step 1.
    f.wait_web(LIMIT, "enough candidate requests in the window", |w| {
        release::version(w, "canary")["window"]["requests"].as_u64() >= Some(MIN_REQUESTS)
    })
    .await;
    f.runner_runs_for(Duration::from_secs(1) + RUNNER_TICK)
        .await;
    let still = f.web().await;
    assert!(
        at(&still, 1, "in_progress"),
        "a paused rollout holds: {still:#}"
    );
    assert_eq!(still["rollout"]["paused"], true, "{still:#}");
    assert_eq!(
        still["rollout"]["held_ms"].as_u64(),
        Some(held_at_pause),
        "paused time is not hold time: {still:#}"
    );
    assert_eq!(
        (weight(&still, "stable"), weight(&still, "canary")),
        (90, 10)
    );
    // A pipeline waiting on a paused rollout times out: exit 2.
    let mut wait_briefly = cmd("wait");
    wait_briefly.extend(["--timeout", "1s"]);
    veer_ok(&wait_briefly, 2).await;

    veer_ok(&cmd("resume"), 0).await;
    f.wait_web(LIMIT, "the resumed rollout reaches step 2", |w| {
        at(w, 2, "in_progress")
    })
    .await;

    // Paused again (so the runner cannot move on its own), promote skips to step 3 ...
    veer_ok(&cmd("pause"), 0).await;
    let promoted = printed_json(&veer_ok(&cmd("promote"), 0).await);
    assert_eq!(promoted["rollout"]["step"], 3, "{promoted:#}");
    assert_eq!(promoted["rollout"]["percent"], 50, "{promoted:#}");
    assert_eq!(promoted["rollout"]["state"], "in_progress", "{promoted:#}");
    assert_eq!(
        promoted["weights"],
        serde_json::json!({"stable": 50, "canary": 50}),
        "{promoted:#}"
    );
    let status = f.web().await;
    assert!(at(&status, 3, "in_progress"), "{status:#}");
    assert_eq!(
        (weight(&status, "stable"), weight(&status, "canary")),
        (50, 50)
    );

    // ... promote --full goes to the last step, which still holds ...
    let mut full = cmd("promote");
    full.push("--full");
    let last = printed_json(&veer_ok(&full, 0).await);
    assert_eq!(last["rollout"]["state"], "in_progress", "{last:#}");
    assert_eq!(last["rollout"]["step"], 4, "{last:#}");
    assert_eq!(last["rollout"]["percent"], 100, "{last:#}");
    assert_eq!(
        last["weights"],
        serde_json::json!({"stable": 0, "canary": 100}),
        "{last:#}"
    );
    // ... and promoting the last step completes it: the operator vouches.
    let completed = printed_json(&veer_ok(&cmd("promote"), 0).await);
    assert_eq!(completed["rollout"]["state"], "completed", "{completed:#}");
    assert_eq!(completed["rollout"]["percent"], 100, "{completed:#}");
    let mut wait = cmd("wait");
    wait.extend(["--timeout", "20s"]);
    veer_ok(&wait, 0).await;
    // Nothing left to promote.
    veer_ok(&cmd("promote"), 1).await;

    let samples = load.finish().await;
    assert!(
        samples.iter().all(|s| s.record.starts_with("200 ")),
        "{:?}",
        tally(&samples)
    );
    for _ in 0..20 {
        let answer = send(&f.client, get(&f.url("/"), None)).await;
        assert_eq!(answer.upstream(), Some("canary"), "after completion");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_weights_end_the_rollout_where_it_stands() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks =
        guard(NEVER_TRIPS) + &rollout("[10, 50, 100]", "1s", None) + &witness(stable.addr());
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();
    let load = f.paced_load(100, 6_000, Duration::from_secs(40));

    veer_ok(
        &[
            "weights",
            "web",
            "stable=70",
            "canary=30",
            "--admin",
            &admin,
        ],
        0,
    )
    .await;
    let ended = f.web().await;
    assert_eq!(ended["rollout"]["state"], "abandoned", "{ended:#}");
    let step = ended["rollout"]["step"].clone();
    assert_eq!(
        (weight(&ended, "stable"), weight(&ended, "canary")),
        (70, 30)
    );

    // With traffic, and a whole hold (and a tick) of the runner's judging:
    // the rollout stays where it ended.
    f.wait_web(LIMIT, "enough candidate requests in the window", |w| {
        release::version(w, "canary")["window"]["requests"].as_u64() >= Some(MIN_REQUESTS)
    })
    .await;
    f.runner_runs_for(Duration::from_secs(1) + RUNNER_TICK)
        .await;
    let later = f.web().await;
    assert_eq!(later["rollout"]["state"], "abandoned", "{later:#}");
    assert_eq!(later["rollout"]["step"], step, "{later:#}");
    assert_eq!(
        (weight(&later, "stable"), weight(&later, "canary")),
        (70, 30)
    );

    // A pipeline waiting on it fails (1): a person took over, it did not complete.
    let out = veer_ok(&["wait", "web", "--admin", &admin, "--timeout", "20s"], 1).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("manual weights"),
        "{}",
        release::output_text(&out)
    );
    veer_ok(&["promote", "web", "--admin", &admin], 1).await;

    load.finish().await;
    // The split is the operator's.
    let mut to_canary = 0;
    for _ in 0..100 {
        let answer = send(&f.client, get(&f.url("/"), None)).await;
        if answer.upstream() == Some("canary") {
            to_canary += 1;
        }
    }
    assert!(
        (27..=33).contains(&to_canary),
        "canary answered {to_canary}/100 at 70/30"
    );
    f.shutdown().await;
}

/// After a rollout has completed, a person's weights are still weights: the
/// contract's `veer weights` "sets weights at run time" (exit 0: applied),
/// e.g. to switch back by hand or drain the old version's twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_weights_after_a_completed_rollout_take_effect() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = guard(NEVER_TRIPS) + &rollout("[10, 50, 100]", "1s", None);
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let admin = f.admin_url();

    veer_ok(&["promote", "web", "--full", "--admin", &admin], 0).await;
    veer_ok(&["promote", "web", "--admin", &admin], 0).await;
    let done = f.web().await;
    assert!(at(&done, 3, "completed"), "{done:#}");
    assert_eq!((weight(&done, "stable"), weight(&done, "canary")), (0, 100));

    let out = veer_ok(
        &[
            "weights",
            "web",
            "stable=100",
            "canary=0",
            "--admin",
            &admin,
        ],
        0,
    )
    .await;
    let web = f.web().await;
    assert_eq!(
        (weight(&web, "stable"), weight(&web, "canary")),
        (100, 0),
        "`veer weights` exited 0 after a completed rollout, but the weights in force did not \
         change; it printed:\n{}\n/status: {web:#}",
        release::output_text(&out)
    );
    for _ in 0..10 {
        let answer = send(&f.client, get(&f.url("/"), None)).await;
        assert_eq!(answer.upstream(), Some("stable"), "at stable=100 canary=0");
    }
    f.shutdown().await;
}

// ---------------------------------------------------------------- the gate

/// A gate in the test: answers every POST with the status it is told, and
/// keeps each JSON body it received.
struct Gate {
    addr: SocketAddr,
    answer: Arc<AtomicU16>,
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl Gate {
    async fn start(status: u16) -> Gate {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("gate addr");
        let answer = Arc::new(AtomicU16::new(status));
        let calls = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let (answer, calls) = (answer.clone(), calls.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (answer, calls) = (answer.clone(), calls.clone());
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (answer, calls) = (answer.clone(), calls.clone());
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().path().to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                calls.lock().expect("calls").push((method, path, json));
                                let mut resp =
                                    Response::new(Full::new(Bytes::from_static(b"gate")));
                                *resp.status_mut() =
                                    StatusCode::from_u16(answer.load(Ordering::SeqCst))
                                        .unwrap_or(StatusCode::OK);
                                Ok::<_, Infallible>(resp)
                            }
                        },
                    );
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Gate {
            addr,
            answer,
            calls,
        }
    }

    fn set(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn calls(&self) -> Vec<(String, String, Value)> {
        self.calls.lock().expect("calls").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_answering_503_holds_the_step_and_200_lets_it_advance() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let gate = Gate::start(503).await;
    let url = format!("http://{}/approve", gate.addr);
    let blocks = guard(NEVER_TRIPS)
        + &rollout("[10, 50, 100]", "500ms", Some(&url))
        + &witness(stable.addr());
    let f = Fixture::start(&web_yaml(&versions(&stable, &canary), &blocks, None)).await;
    let load = f.paced_load(100, 8_000, Duration::from_secs(45));

    let refused = f
        .wait_web(LIMIT, "/status shows the gate's refusal", |w| {
            w["rollout"]["gate"]
                .as_str()
                .is_some_and(|g| g.contains("refused"))
        })
        .await;
    let said = refused["rollout"]["gate"].as_str().unwrap_or_default();
    assert!(said.contains("503"), "the refusal names the answer: {said}");
    assert!(at(&refused, 1, "in_progress"), "{refused:#}");
    let calls = gate.calls();
    let (method, path, first) = calls.first().expect("the gate was asked").clone();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/approve"));
    assert_eq!(first["service"], "web", "{first:#}");
    assert_eq!(first["candidate"], "canary", "{first:#}");
    assert_eq!(first["revision"], "1.2.0", "{first:#}");
    assert_eq!(
        (first["from_step"].as_u64(), first["to_step"].as_u64()),
        (Some(1), Some(2)),
        "{first:#}"
    );
    assert_eq!(
        (first["from_percent"].as_u64(), first["to_percent"].as_u64()),
        (Some(10), Some(50)),
        "{first:#}"
    );
    assert_eq!(first["steps"], 3, "{first:#}");
    assert!(
        first["window_requests"].as_u64() >= Some(MIN_REQUESTS),
        "{first:#}"
    );

    // Held past the hold while the gate says no, for another hold (and a
    // tick) of the runner's judging.
    f.runner_runs_for(Duration::from_millis(500) + RUNNER_TICK)
        .await;
    let held = f.web().await;
    assert!(
        at(&held, 1, "in_progress"),
        "the refused step holds: {held:#}"
    );
    assert!(held["rollout"]["held_ms"].as_u64() >= Some(500), "{held:#}");
    assert_eq!((weight(&held, "stable"), weight(&held, "canary")), (90, 10));

    gate.set(200);
    f.wait_web(LIMIT, "the approved rollout completes", |w| {
        at(w, 3, "completed")
    })
    .await;
    let calls = gate.calls();
    for to in [2, 3] {
        assert!(
            calls.iter().any(|(_, _, c)| c["to_step"] == to
                && c["from_step"] == to - 1
                && c["service"] == "web"),
            "the gate was asked before step {to}: {calls:?}"
        );
    }
    let samples = load.finish().await;
    assert!(
        samples.iter().all(|s| s.record.starts_with("200 ")),
        "{:?}",
        tally(&samples)
    );
    f.shutdown().await;
}
