//! The guard's fleet sum without etcd: veer in-process, its fleet view fed
//! siblings' windows by hand (what the publishing task would have read), and
//! the guard judging its own window plus theirs. Runs in a plain `cargo
//! test`; the same with real replicas and etcd is `tests/fleet_judge.rs`.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use support::metrics::{scrape, sum};
use support::release::{v, version, web_yaml, Fixture, LIMIT};
use support::upstream::Upstream;
use veer::fleet::windows::{FleetView, Published, PublishedVersion, Siblings};

const GUARD: &str = "    guard: { baseline: stable, interval: 1s, window: 30s, min_requests: 50, \
                     max_error_rate: 0.2, consecutive: 1 }\n";

/// A sibling's window of `web`: `requests` to the canary at `revision`, a
/// third of them errors (connections reset), all about 4 ms.
fn sibling(revision: &str, requests: u64) -> Arc<Published> {
    Arc::new(Published {
        window_ms: 30_000,
        versions: BTreeMap::from([(
            "canary".to_string(),
            PublishedVersion {
                revision: revision.to_string(),
                requests,
                errors: requests / 3,
                span_ms: 30_000,
                latency: vec![(100, requests)],
                errors_by_reason: BTreeMap::from([("reset".to_string(), requests / 3)]),
            },
        )]),
    })
}

fn view(siblings: &[(&str, Arc<Published>)]) -> Arc<FleetView> {
    let view = Arc::new(FleetView::new(
        "here".to_string(),
        Arc::new(AtomicBool::new(true)),
    ));
    view.set_siblings(Siblings {
        replicas: siblings
            .iter()
            .map(|(name, _)| name.to_string())
            .chain(["here".to_string()])
            .collect(),
        windows: BTreeMap::from([(
            "web".to_string(),
            siblings
                .iter()
                .map(|(name, published)| (name.to_string(), Arc::clone(published)))
                .collect(),
        )]),
    });
    view
}

async fn fixture() -> (Fixture, Upstream, Upstream) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 0),
            v("canary", canary.addr(), 100),
        ],
        GUARD,
        None,
    );
    (Fixture::start(&yaml).await, stable, canary)
}

#[tokio::test]
async fn the_siblings_requests_make_up_min_requests_and_trip_the_canary() {
    let (f, _stable, canary) = fixture().await;
    canary.set_fail_ratio(1.0);
    // 20 failing requests here: below min_requests alone.
    for _ in 0..20 {
        f.get_with("/", &[]).await;
    }
    f.control().set_fleet(view(&[
        ("b", sibling("1.2.0", 30)),
        ("c", sibling("1.2.0", 15)),
    ]));
    let web = f
        .wait_web(LIMIT, "a trip on the fleet's sum", |web| {
            version(web, "canary")["weight"] == 0
        })
        .await;
    let event = &web["guard"]["events"][0];
    assert_eq!(event["reason"], "error_rate", "{web:#}");
    assert_eq!(event["window_requests"], 65, "20 here + 30 + 15: {web:#}");
    // The trip names what failed across the fleet: the 500s here, the
    // resets on the siblings.
    assert_eq!(
        event["errors_by_reason"],
        serde_json::json!({"5xx": 20, "reset": 15}),
        "{web:#}"
    );
    // /status shows the fleet beside this replica's own figures.
    let status = f.status().await;
    assert_eq!(status["fleet"]["replica"], "here");
    assert_eq!(
        status["fleet"]["replicas"],
        serde_json::json!(["b", "c", "here"])
    );
    let fleet = &version(&status["services"][0], "canary")["fleet"];
    assert_eq!(fleet["replicas"], 3, "{status:#}");
    assert_eq!(fleet["window"]["requests"], 65);
    assert_eq!(fleet["window"]["errors"], 20 + 10 + 5);
    assert_eq!(
        fleet["errors_by_reason"],
        serde_json::json!({"5xx": 20, "reset": 15}),
        "the fleet's sum by reason: {status:#}"
    );
    let scrape = scrape(&f.client, f.admin).await;
    assert_eq!(sum(&scrape, "veer_fleet_connected", &[]), 1.0);
    f.shutdown().await;
}

#[tokio::test]
async fn siblings_running_another_revision_are_not_summed() {
    let (f, _stable, _canary) = fixture().await;
    f.control().set_fleet(view(&[("b", sibling("0.9.0", 300))]));
    let web = f
        .wait_web(LIMIT, "a verdict", |web| {
            version(web, "canary")["guard_verdict"].is_string()
        })
        .await;
    assert_eq!(
        version(&web, "canary")["guard_verdict"],
        "insufficient data: 0/50 requests",
        "{web:#}"
    );
    assert_eq!(version(&web, "canary")["weight"], 100);
    assert_eq!(version(&web, "canary")["fleet"]["replicas"], 1);
    // The same figures at the canary's revision are judged, and trip it.
    let view = f.control().fleet().expect("in a fleet");
    view.set_siblings(Siblings {
        replicas: ["b".to_string(), "here".to_string()].into(),
        windows: BTreeMap::from([(
            "web".to_string(),
            BTreeMap::from([("b".to_string(), sibling("1.2.0", 300))]),
        )]),
    });
    f.wait_web(Duration::from_secs(10), "the trip", |web| {
        version(web, "canary")["weight"] == 0
    })
    .await;
    f.shutdown().await;
}

#[tokio::test]
async fn outside_a_fleet_status_has_no_fleet_keys() {
    let (f, _stable, _canary) = fixture().await;
    let status = f.status().await;
    assert!(status.get("fleet").is_none(), "{status:#}");
    assert!(
        version(&status["services"][0], "canary")
            .get("fleet")
            .is_none(),
        "{status:#}"
    );
    let scrape = scrape(&f.client, f.admin).await;
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "veer_fleet_connected"),
        "no fleet, no fleet gauge"
    );
    f.shutdown().await;
}
