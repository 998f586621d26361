//! The actor's promises, with a store that counts and can hold its writes:
//! one publish and one write per command, replies after the write, batches
//! as one change, layers from a shared store adopted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::*;
use crate::state::{Changes, Loaded, RolloutOutcome, StateError, StoreFuture};

#[derive(Debug)]
struct Shared {
    saves: AtomicUsize,
    last: Mutex<Option<Arc<PersistedState>>>,
    /// Each save takes a permit: tests hold writes by giving none.
    permits: Semaphore,
    /// Saves begun, held or not.
    begun: AtomicUsize,
    changes: Mutex<Option<Changes>>,
}

#[derive(Debug, Clone)]
struct TestStore(Arc<Shared>);

impl TestStore {
    fn new(permits: usize) -> TestStore {
        TestStore(Arc::new(Shared {
            saves: AtomicUsize::new(0),
            last: Mutex::new(None),
            permits: Semaphore::new(permits),
            begun: AtomicUsize::new(0),
            changes: Mutex::new(None),
        }))
    }

    fn saves(&self) -> usize {
        self.0.saves.load(Ordering::SeqCst)
    }

    /// Lets the actor and the writer run until `n` saves have begun.
    async fn begun(&self, n: usize) {
        while self.0.begun.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    fn last(&self) -> Arc<PersistedState> {
        self.0.last.lock().expect("lock").clone().expect("a save")
    }
}

impl Store for TestStore {
    fn load(&self) -> StoreFuture<Result<Loaded, StateError>> {
        Box::pin(async {
            Ok(Loaded {
                layer: PersistedState::default(),
                warnings: Vec::new(),
            })
        })
    }

    fn save(&self, layer: Arc<PersistedState>) -> StoreFuture<Result<(), StateError>> {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            shared.begun.fetch_add(1, Ordering::SeqCst);
            shared.permits.acquire().await.expect("open").forget();
            *shared.last.lock().expect("lock") = Some(layer);
            shared.saves.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn changes(&self) -> Option<Changes> {
        self.0.changes.lock().expect("lock").take()
    }
}

fn yaml(versions: usize, services: usize) -> String {
    let mut text = String::from("listeners: [{name: l, address: '127.0.0.1:0'}]\nservices:\n");
    for s in 0..services {
        text.push_str(&format!(
            "  - name: svc{s}\n    match: {{hosts: [svc{s}.example]}}\n    versions:\n"
        ));
        text.push_str(
            "      - {name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: 50}\n",
        );
        for v in 1..versions {
            text.push_str(&format!(
                "      - {{name: v{v}, revision: '2', endpoints: ['127.0.0.1:1'], weight: 50}}\n"
            ));
        }
        text.push_str("    guard: {baseline: stable, max_error_rate: 0.05}\n");
        text.push_str("    rollout: {candidate: v1, steps: [{weight: 10, hold: 1m}, {weight: 100, hold: 1m}]}\n");
    }
    text
}

async fn start(versions: usize, services: usize, store: &TestStore) -> Control {
    let config = crate::config::parse_str(&yaml(versions, services), "t.yaml").expect("valid");
    let store: Arc<dyn Store> = Arc::new(store.clone());
    Control::start(
        config,
        Arc::new(Telemetry::new()),
        None,
        Some((store, PersistedState::default())),
    )
    .await
}

#[tokio::test]
async fn an_operator_rollback_of_three_versions_is_one_publish_one_write_three_events() {
    let store = TestStore::new(usize::MAX >> 4);
    let control = start(4, 1, &store).await;
    assert_eq!(store.saves(), 1, "the reconciled layer is written at start");
    let generation = control.snapshot().generation;

    let events = control.rollback("svc0").await.expect("rolled back");
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.reason == "manual"));
    assert_eq!(store.saves(), 2, "one write for the whole rollback");
    assert_eq!(control.snapshot().generation, generation + 1, "one publish");
    assert_eq!(store.last().services["svc0"].latches.len(), 3);
    let weights: Vec<u32> = control.snapshot().services[0]
        .versions
        .iter()
        .map(|v| v.weight)
        .collect();
    assert_eq!(weights, vec![100, 0, 0, 0]);
    assert_eq!(control.events("svc0").len(), 3);

    // Again: nothing left to latch, so nothing published or written.
    assert!(control.rollback("svc0").await.expect("no-op").is_empty());
    assert_eq!(store.saves(), 2);
    assert_eq!(control.snapshot().generation, generation + 1);
}

#[tokio::test]
async fn a_durable_command_is_shown_and_answered_only_after_its_write() {
    let store = TestStore::new(1);
    let control = start(2, 1, &store).await;
    let asking = tokio::spawn({
        let control = control.clone();
        async move { control.rollback("svc0").await }
    });
    store.begun(2).await;
    // The write is under way and held. Traffic has left the canary already;
    // nobody has been told: no answer, no latch in the view, no event.
    tokio::task::yield_now().await;
    assert!(!asking.is_finished());
    assert_eq!(control.snapshot().services[0].versions[1].weight, 0);
    assert!(control.latches("svc0").is_empty());
    assert!(control.events("svc0").is_empty());
    store.0.permits.add_permits(1);
    let events = asking.await.expect("task").expect("rolled back");
    assert_eq!(events.len(), 1);
    assert_eq!(control.latches("svc0").len(), 1);
    assert_eq!(store.saves(), 2);
}

#[tokio::test]
async fn commands_queue_behind_a_held_write_and_readers_do_not() {
    let store = TestStore::new(1);
    let control = start(2, 1, &store).await;
    let first = tokio::spawn({
        let control = control.clone();
        async move { control.set_weights("svc0", &[("v1", 10)]).await }
    });
    store.begun(2).await;
    let second = tokio::spawn({
        let control = control.clone();
        async move { control.set_weights("svc0", &[("v1", 20)]).await }
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    // Readers answer at once, from the last view; the second change waits.
    assert!(control.rollout("svc0").is_some());
    assert_eq!(control.snapshot().services[0].versions[1].weight, 10);
    assert!(!second.is_finished());
    store.0.permits.add_permits(2);
    for task in [first, second] {
        task.await.expect("task").expect("accepted");
    }
    assert_eq!(store.saves(), 3, "one write per command");
    let last = store.last();
    assert_eq!(
        last.services["svc0"].weights.as_ref().map(|w| w["v1"]),
        Some(20)
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_tick_for_every_service_is_one_change() {
    const SERVICES: usize = 500;
    let store = TestStore::new(usize::MAX >> 4);
    let control = start(2, SERVICES, &store).await;
    let all: Vec<Arc<str>> = (0..SERVICES).map(|s| format!("svc{s}").into()).collect();
    let tick = |ms| {
        all.iter()
            .map(|s| (Arc::clone(s), Duration::from_millis(ms)))
            .collect()
    };

    control.add_rollout_holds(tick(100)).await;
    assert_eq!(
        store.saves(),
        1,
        "hold time alone is not written every tick"
    );
    assert!(all
        .iter()
        .all(|s| control.rollout(s).is_some_and(|p| p.held_ms == 100)));

    tokio::time::advance(Duration::from_secs(6)).await;
    control.add_rollout_holds(tick(100)).await;
    control.persist_now().await;
    // One write for the whole tick once the save interval passed, then the
    // one asked for.
    assert_eq!(store.saves(), 3);
    assert!(store
        .last()
        .services
        .values()
        .all(|s| s.rollout.as_ref().is_some_and(|p| p.held_ms == 200)));
}

#[tokio::test]
async fn refusals_are_variants_with_their_status() {
    let store = TestStore::new(usize::MAX >> 4);
    let control = start(2, 1, &store).await;
    let missing = control.set_weights("nope", &[("v1", 1)]).await;
    assert_eq!(missing, Err(ControlError::NoService("nope".into())));
    let unknown = control.set_weights("svc0", &[("v9", 1)]).await;
    assert!(matches!(unknown, Err(ControlError::UnknownVersion { .. })));
    let zero = control
        .set_weights("svc0", &[("stable", 0), ("v1", 0)])
        .await;
    assert_eq!(zero, Err(ControlError::AllZero("svc0".into())));
    control.rollback("svc0").await.expect("rolled back");
    let latched = control
        .set_weights("svc0", &[("v1", 5)])
        .await
        .expect_err("latched");
    assert_eq!(latched.status(), http::StatusCode::CONFLICT);
    assert!(
        latched.to_string().contains("veer resume svc0"),
        "{latched}"
    );
    // The trip rolled the rollout back: promote is refused as finished.
    let finished = control
        .advance_rollout("svc0", false)
        .await
        .expect_err("over");
    assert!(
        matches!(finished, ControlError::Finished { .. }),
        "{finished}"
    );
    assert_eq!(control.resume("svc0").await, Ok(1));
    let progress = control.rollout("svc0").expect("restarted");
    assert_eq!(
        (progress.step, progress.outcome),
        (0, RolloutOutcome::InProgress)
    );
    assert_eq!(control.pause("svc0").await, Ok(()));
    assert!(control.rollout("svc0").is_some_and(|p| p.paused));
    assert_eq!(
        store.saves(),
        4,
        "start, rollback, resume, pause; refusals write nothing"
    );
}

#[tokio::test]
async fn a_resume_taken_after_the_store_merged_a_siblings_write_is_not_undone_by_it() {
    let store = TestStore::new(usize::MAX >> 4);
    let (sender, receiver) = mpsc::unbounded_channel();
    *store.0.changes.lock().expect("lock") = Some(receiver);
    let control = start(2, 1, &store).await;
    control.rollback("svc0").await.expect("rolled back");
    let latched = store.last().services["svc0"].clone();
    assert_eq!(latched.latches.len(), 1);
    // The store merged a sibling's write with the latched layer; before the
    // actor takes it in, the operator resumes here.
    assert_eq!(control.resume("svc0").await, Ok(1));
    let saves = store.saves();
    sender
        .send(crate::state::RemoteChange {
            service: "svc0".into(),
            state: Some(latched.clone()),
            merged_with: Some(latched),
        })
        .expect("the actor listens");
    for _ in 0..1_000 {
        if store.saves() > saves {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(store.saves(), saves + 1, "the change is taken in and saved");
    assert!(control.latches("svc0").is_empty(), "the resume holds");
    assert!(store.last().services["svc0"].latches.is_empty());
    assert_eq!(store.last().remote_applied, 1);
}

#[tokio::test]
async fn a_layer_written_by_another_veer_is_adopted_and_kept_locally() {
    let store = TestStore::new(usize::MAX >> 4);
    let (sender, receiver) = mpsc::unbounded_channel();
    *store.0.changes.lock().expect("lock") = Some(receiver);
    let control = start(2, 1, &store).await;
    let mut theirs = crate::state::ServiceState::default();
    theirs.latches.push(Latch {
        at_unix_ms: 1,
        id: 0,
        reason: "error_rate".into(),
        revision: "2".into(),
        version: "v1".into(),
    });
    sender
        .send(crate::state::RemoteChange {
            service: "svc0".into(),
            state: Some(theirs),
            merged_with: None,
        })
        .expect("the actor listens");
    for _ in 0..1_000 {
        if !control.latches("svc0").is_empty() && store.saves() == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(control.latches("svc0").len(), 1);
    assert_eq!(control.snapshot().services[0].versions[1].weight, 0);
    assert_eq!(
        store.saves(),
        2,
        "what another veer wrote is saved once, so the local copy follows the fleet"
    );
    let saved = store.0.last.lock().expect("lock").clone().expect("a save");
    assert_eq!(
        saved.remote_applied, 1,
        "the save says how many changes it holds"
    );
}
