//! Fleet-wide judgement: each replica publishes its per-version window
//! counts (requests, errors, fine latency buckets) to etcd under a lease,
//! reads its siblings', and the guard judges the sum. Counts add up where
//! quantiles do not, so the fleet's p95 comes from the summed buckets.
//!
//! Keys, all under the fleet's prefix and attached to this replica's lease,
//! so a replica that dies takes its figures with it within the lease's TTL:
//!
//! - `<prefix>/replicas/<replica>`: this replica is alive (its presence);
//! - `<prefix>/windows/<service>/<replica>`: one service's windows on this
//!   replica, written only while the service has requests in its window and
//!   only when they changed, so an idle service costs no write.
//!
//! The data types here ([`FleetView`], [`Siblings`], [`Published`]) need no
//! etcd and are what the guard, `/status` and `/metrics` read; the task that
//! talks to etcd ([`publish`]) is behind the `fleet` feature. Nothing here is
//! on the request path: the task reads the windows the request path fills,
//! as the guard does, once per guard interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::telemetry::buckets::FINE;
use crate::telemetry::{Counts, ErrorKind};

/// What this replica knows of its fleet, shared by the publishing task (the
/// writer), the guard, `/status` and `/metrics` (readers, never waiting).
pub struct FleetView {
    replica: String,
    /// Whether the state sync holds a working connection to etcd now.
    connected: Arc<AtomicBool>,
    /// Unix milliseconds of the last exchange with etcd; 0 before any.
    last_sync_ms: AtomicU64,
    siblings: ArcSwap<Siblings>,
}

impl std::fmt::Debug for FleetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetView")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl FleetView {
    pub fn new(replica: String, connected: Arc<AtomicBool>) -> FleetView {
        FleetView {
            replica,
            connected,
            last_sync_ms: AtomicU64::new(0),
            siblings: ArcSwap::from_pointee(Siblings::default()),
        }
    }

    /// This replica's name in the fleet.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// When this replica last exchanged with etcd (unix ms), if ever.
    pub fn last_sync_ms(&self) -> Option<u64> {
        Some(self.last_sync_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    pub fn synced_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_sync_ms.store(now, Ordering::Relaxed);
    }

    /// The live siblings and their windows, as last read.
    pub fn siblings(&self) -> Arc<Siblings> {
        self.siblings.load_full()
    }

    pub fn set_siblings(&self, siblings: Siblings) {
        self.siblings.store(Arc::new(siblings));
    }
}

/// The other replicas of the fleet and their windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Siblings {
    /// Every live replica (this one included once it is present in etcd).
    pub replicas: BTreeSet<String>,
    /// Per service, per sibling replica (never this one): its windows.
    pub windows: BTreeMap<String, BTreeMap<String, Arc<Published>>>,
}

impl Siblings {
    /// Whether any sibling published windows of `service`.
    pub fn has(&self, service: &str) -> bool {
        self.windows.get(service).is_some_and(|w| !w.is_empty())
    }

    /// Adds every sibling's counts of `version` of `service` to `counts`,
    /// when the sibling runs the same `revision` (figures of another
    /// revision are not this one's to be judged on). Returns how many
    /// siblings added some.
    pub fn add_to(
        &self,
        service: &str,
        version: &str,
        revision: &str,
        counts: &mut Counts,
    ) -> usize {
        let Some(replicas) = self.windows.get(service) else {
            return 0;
        };
        let mut added = 0;
        for published in replicas.values() {
            if let Some(theirs) = published.versions.get(version) {
                if theirs.revision == revision {
                    theirs.add_to(counts);
                    added += 1;
                }
            }
        }
        added
    }
}

/// One service's windows on one replica, as published (JSON in etcd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The window the counts are over.
    pub window_ms: u64,
    /// Per version with requests in the window.
    pub versions: BTreeMap<String, PublishedVersion>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedVersion {
    pub revision: String,
    pub requests: u64,
    pub errors: u64,
    /// How much of the window the counts cover (less just after a start).
    pub span_ms: u64,
    /// `[fine bucket, count]` for every bucket with a count, ascending.
    pub latency: Vec<(u16, u64)>,
    /// `errors` by reason (`5xx`, `timeout`, `reset`, `grpc_status`, …),
    /// reasons with a count only. Absent from a veer that does not count
    /// them; a reason this veer does not know still counts in `errors`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors_by_reason: BTreeMap<String, u64>,
}

impl PublishedVersion {
    pub fn from_counts(revision: &str, counts: &Counts) -> PublishedVersion {
        PublishedVersion {
            revision: revision.to_string(),
            requests: counts.requests,
            errors: counts.errors,
            span_ms: u64::try_from(counts.span.as_millis()).unwrap_or(u64::MAX),
            latency: counts
                .latency
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(bucket, &n)| (bucket as u16, n))
                .collect(),
            errors_by_reason: counts.kinds.by_word(),
        }
    }

    /// Adds these counts to `counts`; buckets out of range (a veer with
    /// another bucket layout) count in the last one rather than be lost.
    pub fn add_to(&self, counts: &mut Counts) {
        let mut other = Counts {
            requests: self.requests,
            errors: self.errors,
            span: Duration::from_millis(self.span_ms),
            ..Counts::default()
        };
        for &(bucket, n) in &self.latency {
            other.latency[usize::from(bucket).min(FINE - 1)] += n;
        }
        for (word, &n) in &self.errors_by_reason {
            if let Some(kind) = ErrorKind::from_word(word) {
                other.kinds.0[kind.index()] += n;
            }
        }
        counts.add(&other);
    }
}

/// A sibling's key under the prefix, read: what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetKey<'a> {
    Replica(&'a str),
    Window {
        service: &'a str,
        replica: &'a str,
    },
    /// Anything else under the prefix (the state keys, a leader's): not ours.
    Other,
}

/// Reads a key relative to the prefix (`replicas/a`, `windows/web/a`).
pub fn read_key(relative: &str) -> FleetKey<'_> {
    if let Some(replica) = relative.strip_prefix("replicas/") {
        if !replica.is_empty() && !replica.contains('/') {
            return FleetKey::Replica(replica);
        }
    } else if let Some(rest) = relative.strip_prefix("windows/") {
        // Replica names hold no `/`; a service name could.
        if let Some((service, replica)) = rest.rsplit_once('/') {
            if !service.is_empty() && !replica.is_empty() {
                return FleetKey::Window { service, replica };
            }
        }
    }
    FleetKey::Other
}

/// This replica's name when the config names none: the host name (a pod's
/// name on Kubernetes), else `veer-<pid>`.
pub fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains('/'));
    host.unwrap_or_else(|| format!("veer-{}", std::process::id()))
}

/// How long a replica's lease lives without a keep-alive: a few guard
/// intervals, so a dead replica's figures leave the sum soon, and never
/// under 3 s, so a busy etcd or a short pause does not drop a live one.
pub fn lease_ttl(interval: Duration) -> Duration {
    let ttl = interval.saturating_mul(3).max(Duration::from_secs(3));
    Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
}

#[cfg(feature = "fleet")]
pub mod publish;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Window;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_fleets_p95_comes_from_the_summed_buckets_not_an_average() {
        // Replica a: 100 fast requests; replica b: 10 slow ones. The average
        // of their p95s (10 ms and 900 ms) would be ~455 ms; of the 110
        // requests, the slowest 5 % are all slow ones.
        let at = Duration::from_millis(1500);
        let a = Window::new(Duration::from_secs(10));
        let b = Window::new(Duration::from_secs(10));
        for _ in 0..100 {
            a.record(at, 10 * MS, false);
        }
        for _ in 0..10 {
            b.record(at, 900 * MS, true);
        }
        let window = Duration::from_secs(10);
        let published = PublishedVersion::from_counts("2", &b.counts(at, window));
        // Through JSON, as etcd carries it.
        let json = serde_json::to_vec(&published).expect("encode");
        let published: PublishedVersion = serde_json::from_slice(&json).expect("decode");
        let mut sum = a.counts(at, window);
        published.add_to(&mut sum);
        let figures = sum.figures();
        assert_eq!((figures.requests, figures.errors), (110, 10));
        let p95 = figures.p95_us.expect("p95");
        assert!((850_000.0..950_000.0).contains(&p95), "{p95}");
        let p50 = figures.p50_us.expect("p50");
        assert!((9_000.0..11_000.0).contains(&p50), "{p50}");
    }

    #[test]
    fn errors_by_reason_travel_and_add_up_and_an_unknown_reason_still_counts_in_errors() {
        use crate::outcome::FailureReason;
        use crate::telemetry::buckets::Bucket;
        let at = Duration::from_millis(1500);
        let w = Window::new(Duration::from_secs(10));
        let timeout = ErrorKind::Failure(FailureReason::Timeout);
        for kind in [
            Some(ErrorKind::Status5xx),
            Some(timeout),
            Some(timeout),
            None,
        ] {
            w.record_kind(at, Bucket::of(MS), kind);
        }
        let mine = w.counts(at, Duration::from_secs(10));
        let published = PublishedVersion::from_counts("2", &mine);
        let json = serde_json::to_string(&published).expect("encode");
        assert!(
            json.contains(r#""errors_by_reason":{"5xx":1,"timeout":2}"#),
            "{json}"
        );
        let mut theirs: PublishedVersion = serde_json::from_str(&json).expect("decode");
        // A newer sibling's reason this veer does not know.
        theirs.errors_by_reason.insert("quantum".into(), 4);
        theirs.errors += 4;
        theirs.requests += 4;
        let mut sum = mine.clone();
        theirs.add_to(&mut sum);
        assert_eq!((sum.requests, sum.errors), (12, 10));
        assert_eq!(sum.kinds.named(), vec![("timeout", 4), ("5xx", 2)]);
        // What an older veer publishes (no reasons) still reads.
        let old = r#"{"revision":"2","requests":3,"errors":1,"span_ms":1000,"latency":[[3,3]]}"#;
        let old: PublishedVersion = serde_json::from_str(old).expect("an older sibling's");
        assert!(old.errors_by_reason.is_empty());
    }

    #[test]
    fn siblings_of_another_revision_are_not_added() {
        let mut counts = Counts::default();
        let version = |revision: &str| PublishedVersion {
            revision: revision.into(),
            requests: 40,
            errors: 4,
            span_ms: 1000,
            latency: vec![(3, 40)],
            errors_by_reason: BTreeMap::new(),
        };
        let published = |revision: &str| {
            Arc::new(Published {
                window_ms: 30_000,
                versions: [("canary".to_string(), version(revision))].into(),
            })
        };
        let siblings = Siblings {
            replicas: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            windows: [(
                "web".to_string(),
                [
                    ("b".to_string(), published("2")),
                    ("c".to_string(), published("1")),
                ]
                .into(),
            )]
            .into(),
        };
        assert_eq!(siblings.add_to("web", "canary", "2", &mut counts), 1);
        assert_eq!((counts.requests, counts.errors), (40, 4));
        assert_eq!(siblings.add_to("web", "stable", "2", &mut counts), 0);
        assert_eq!(siblings.add_to("api", "canary", "2", &mut counts), 0);
        assert!(siblings.has("web") && !siblings.has("api"));
    }

    #[test]
    fn keys_are_read_by_their_place_under_the_prefix() {
        assert_eq!(read_key("replicas/edge-1"), FleetKey::Replica("edge-1"));
        assert_eq!(
            read_key("windows/web/edge-1"),
            FleetKey::Window {
                service: "web",
                replica: "edge-1"
            }
        );
        assert_eq!(
            read_key("windows/a/b/edge-1"),
            FleetKey::Window {
                service: "a/b",
                replica: "edge-1"
            }
        );
        for other in [
            "state/web",
            "replicas/",
            "replicas/a/b",
            "windows/web",
            "windows//a",
            "leader",
        ] {
            assert_eq!(read_key(other), FleetKey::Other, "{other}");
        }
    }

    #[test]
    fn the_lease_outlives_a_few_intervals_and_never_less_than_three_seconds() {
        assert_eq!(
            lease_ttl(Duration::from_millis(100)),
            Duration::from_secs(3)
        );
        assert_eq!(lease_ttl(Duration::from_secs(1)), Duration::from_secs(3));
        assert_eq!(
            lease_ttl(Duration::from_millis(1500)),
            Duration::from_secs(5)
        );
        assert_eq!(lease_ttl(Duration::from_secs(10)), Duration::from_secs(30));
    }

    #[test]
    fn buckets_beyond_the_layout_count_in_the_last() {
        let published = PublishedVersion {
            revision: "1".into(),
            requests: 1,
            errors: 0,
            span_ms: 1000,
            latency: vec![(u16::MAX, 1)],
            errors_by_reason: BTreeMap::new(),
        };
        let mut counts = Counts::default();
        published.add_to(&mut counts);
        assert_eq!(counts.latency[FINE - 1], 1);
    }
}
