//! A sliding window of per-version figures: a ring of one-second slots, each
//! with request and error counts and latency counts in the fine buckets of
//! the one bucket layout (`buckets`), all atomics. The request path adds to
//! the slot of the current second the bucket it already mapped for the
//! exported histogram; readers (the guard, `/status`) sum the slots inside
//! the window they ask for.
//!
//! A slot is reused every `len` seconds, so it must be emptied before its new
//! second begins. `advance`, called by a ticker a few times a second, empties
//! the next slot ahead of time, so writers normally reset nothing. If the
//! ticker ever falls behind, the first writer of a stale slot empties it
//! itself: a compare-and-swap marks the slot as being emptied, the other
//! writers of that second wait the few nanoseconds it takes, and no count is
//! lost.
//!
//! The ring is allocated by the first request a version records, not when
//! the version is configured: a slot is a couple of kilobytes, and a proxy
//! routing thousands of services, most of them quiet, would otherwise hold
//! tens of kilobytes per version that never sees a request. The first
//! writer publishes the ring through a `OnceLock`; every later record is the
//! lock-free path above, with one extra load of the published pointer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::buckets::{quantile_us, Bucket, FINE};
use crate::outcome::FailureReason;

const SLOT: Duration = Duration::from_secs(1);

/// How many rings were ever made, in the process: the ticker, which
/// advances only the windows that hold a ring, looks for new ones when this
/// moves (a version's first request), not at every version on every tick.
static RINGS_MADE: AtomicU64 = AtomicU64::new(0);

/// See [`RINGS_MADE`]; read before a scan, so a ring made during it moves
/// the count past what the scan saw.
pub fn rings_made() -> u64 {
    RINGS_MADE.load(Ordering::Acquire)
}

pub struct Window {
    /// Allocated on the first record; `None` reads as a window of zeros.
    ring: OnceLock<Box<[Slot]>>,
    /// Slots in the ring, once it exists.
    len: usize,
}

struct Slot {
    /// The second (since the telemetry clock's origin) this slot holds, plus
    /// one; zero for never used.
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Per fine bucket; 32 bits hold four billion requests in one second.
    latency: [AtomicU32; FINE],
    /// `errors` by [`ErrorKind`]; touched only by a request that failed.
    kinds: [AtomicU32; ERROR_KINDS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            kinds: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// Why a request counted as the version's error: a failure of its own
/// (the `FailureReason`s), a 5xx it answered, or a gRPC status that is its
/// error. A failure is named before the 5xx veer answered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Failure(FailureReason),
    Status5xx,
    Grpc,
}

/// How many [`ErrorKind`]s there are: the failure reasons, 5xx and gRPC.
pub const ERROR_KINDS: usize = FailureReason::ALL.len() + 2;

impl ErrorKind {
    /// Every kind, in index order.
    pub const ALL: [ErrorKind; ERROR_KINDS] = [
        ErrorKind::Failure(FailureReason::Connect),
        ErrorKind::Failure(FailureReason::Timeout),
        ErrorKind::Failure(FailureReason::Reset),
        ErrorKind::Failure(FailureReason::Protocol),
        ErrorKind::Failure(FailureReason::Tls),
        ErrorKind::Failure(FailureReason::Midstream),
        ErrorKind::Status5xx,
        ErrorKind::Grpc,
    ];

    #[inline]
    pub fn index(self) -> usize {
        match self {
            ErrorKind::Failure(reason) => reason as usize,
            ErrorKind::Status5xx => FailureReason::ALL.len(),
            ErrorKind::Grpc => FailureReason::ALL.len() + 1,
        }
    }

    /// The word `/status`, the fleet's windows and the guard's events use:
    /// a failure reason as `veer_upstream_failures_total` labels it, `5xx`,
    /// or `grpc_status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failure(reason) => reason.as_str(),
            ErrorKind::Status5xx => "5xx",
            ErrorKind::Grpc => "grpc_status",
        }
    }

    pub fn from_word(word: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == word)
    }
}

/// Errors by [`ErrorKind`], indexed by [`ErrorKind::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; ERROR_KINDS]);

impl ErrorCounts {
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        for (sum, n) in self.0.iter_mut().zip(other.0) {
            *sum += n;
        }
    }

    /// The kinds with a count by their word, as `/status`, the fleet's
    /// windows and the guard's events write them.
    pub fn by_word(&self) -> std::collections::BTreeMap<String, u64> {
        self.named()
            .into_iter()
            .map(|(word, n)| (word.to_string(), n))
            .collect()
    }

    /// The kinds with a count, most frequent first (ties in index order).
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut named: Vec<(&'static str, u64)> = ErrorKind::ALL
            .into_iter()
            .map(|k| (k.as_str(), self.get(k)))
            .filter(|&(_, n)| n > 0)
            .collect();
        named.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        named
    }
}

/// What a window holds, summed over its slots.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// Seconds covered (the window, or less just after start).
    pub span: Duration,
    /// Latency quantiles in microseconds; `None` without requests.
    pub p50_us: Option<f64>,
    pub p95_us: Option<f64>,
    pub p99_us: Option<f64>,
}

impl Figures {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    pub fn rps(&self) -> f64 {
        let secs = self.span.as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.requests as f64 / secs
        }
    }
}

impl Window {
    /// A ring able to answer for windows up to `longest`.
    pub fn new(longest: Duration) -> Window {
        // +1 for the second in progress, +1 for the slot being emptied ahead.
        let len = longest.as_secs().max(1) as usize + 2;
        Window {
            ring: OnceLock::new(),
            len,
        }
    }

    /// The longest window this ring can answer for.
    pub fn capacity(&self) -> Duration {
        Duration::from_secs(self.len as u64 - 2)
    }

    /// Whether any request was ever recorded (the ring exists).
    pub fn is_allocated(&self) -> bool {
        self.ring.get().is_some()
    }

    /// The ring, made now if this is the first record.
    #[cold]
    fn allocate(&self) -> &[Slot] {
        self.ring.get_or_init(|| {
            RINGS_MADE.fetch_add(1, Ordering::Release);
            (0..self.len).map(|_| Slot::default()).collect()
        })
    }

    /// Counts one request, `elapsed` since the clock's origin.
    #[inline]
    pub fn record(&self, elapsed: Duration, latency: Duration, error: bool) {
        self.record_in(elapsed, Bucket::of(latency), error);
    }

    /// Counts one request whose latency is already mapped to its bucket.
    #[inline]
    pub fn record_in(&self, elapsed: Duration, latency: Bucket, error: bool) {
        let second = elapsed.as_secs();
        let ring = match self.ring.get() {
            Some(ring) => ring,
            None => self.allocate(),
        };
        let slot = slot(ring, second);
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency.fine()].fetch_add(1, Ordering::Relaxed);
    }

    /// As [`Window::record_in`], with the kind of error (`None`: a success)
    /// counted beside the total: a success costs nothing more.
    #[inline]
    pub fn record_kind(&self, elapsed: Duration, latency: Bucket, error: Option<ErrorKind>) {
        let second = elapsed.as_secs();
        let ring = match self.ring.get() {
            Some(ring) => ring,
            None => self.allocate(),
        };
        let slot = slot(ring, second);
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
            slot.kinds[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency.fine()].fetch_add(1, Ordering::Relaxed);
    }

    /// Empties the slot of the next second ahead of time; call it more than
    /// once a second.
    pub fn advance(&self, elapsed: Duration) {
        let Some(ring) = self.ring.get() else {
            return;
        };
        let next = elapsed.as_secs() + 1;
        let slot = &ring[(next % ring.len() as u64) as usize];
        slot.claim(next + 1);
    }

    /// Forgets everything recorded: a resumed version is judged on fresh
    /// requests only, not on those that got it rolled back.
    pub fn reset(&self) {
        let Some(ring) = self.ring.get() else {
            return;
        };
        for slot in ring.iter() {
            slot.second.store(0, Ordering::Release);
            slot.clear();
        }
    }

    /// The figures of the last `window` (clamped to the ring's capacity),
    /// counting the second in progress.
    pub fn figures(&self, elapsed: Duration, window: Duration) -> Figures {
        self.counts(elapsed, window).figures()
    }

    /// The counts behind [`Window::figures`], over the same seconds: what a
    /// replica shares with its fleet, where the counts of many replicas are
    /// added before a quantile is taken (quantiles do not average).
    pub fn counts(&self, elapsed: Duration, window: Duration) -> Counts {
        let now = elapsed.as_secs();
        let seconds = window.as_secs().clamp(1, self.capacity().as_secs());
        let oldest = now.saturating_sub(seconds - 1);
        let mut counts = Counts::default();
        let ring = self.ring.get().map_or(&[][..], |ring| &ring[..]);
        for second in (oldest..=now).filter(|_| !ring.is_empty()) {
            let slot = &ring[(second % ring.len() as u64) as usize];
            if slot.second.load(Ordering::Acquire) != second + 1 {
                continue;
            }
            let requests = slot.requests.load(Ordering::Relaxed);
            if requests == 0 {
                // An idle second has no latency to add: most of an idle
                // service's window is skipped here.
                continue;
            }
            counts.requests += requests;
            let errors = slot.errors.load(Ordering::Relaxed);
            counts.errors += errors;
            if errors > 0 {
                for (sum, count) in counts.kinds.0.iter_mut().zip(slot.kinds.iter()) {
                    *sum += u64::from(count.load(Ordering::Relaxed));
                }
            }
            for (sum, count) in counts.latency.iter_mut().zip(slot.latency.iter()) {
                *sum += u64::from(count.load(Ordering::Relaxed));
            }
        }
        // The second in progress counts in part: span is what has elapsed.
        let covered = elapsed.saturating_sub(Duration::from_secs(oldest));
        counts.span = covered.min(Duration::from_secs(seconds)).max(SLOT / 1000);
        counts
    }
}

/// Request, error and fine-bucket latency counts over a span: the mergeable
/// form of [`Figures`]. Counts of one version from several replicas add up
/// (`add`), and the quantiles are taken from the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub span: Duration,
    /// Per fine bucket of `buckets`, `FINE` of them.
    pub latency: Box<[u64; FINE]>,
    /// `errors` by kind (those recorded with [`Window::record_kind`]).
    pub kinds: ErrorCounts,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            requests: 0,
            errors: 0,
            span: Duration::ZERO,
            latency: Box::new([0; FINE]),
            kinds: ErrorCounts::default(),
        }
    }
}

impl Counts {
    /// Adds another replica's counts of the same version and window; the
    /// span stays the longest of the two (the windows overlap in time).
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.kinds.add(&other.kinds);
        self.span = self.span.max(other.span);
        for (sum, count) in self.latency.iter_mut().zip(other.latency.iter()) {
            *sum += count;
        }
    }

    pub fn figures(&self) -> Figures {
        Figures {
            requests: self.requests,
            errors: self.errors,
            span: self.span,
            p50_us: quantile_us(&self.latency, 0.50),
            p95_us: quantile_us(&self.latency, 0.95),
            p99_us: quantile_us(&self.latency, 0.99),
        }
    }
}

#[inline]
fn slot(ring: &[Slot], second: u64) -> &Slot {
    let slot = &ring[(second % ring.len() as u64) as usize];
    let tag = second + 1;
    // The common case: the ticker emptied this slot ahead of time.
    if slot.second.load(Ordering::Acquire) != tag {
        slot.claim(tag);
    }
    slot
}

/// A slot being emptied: writers wait for it, readers skip it.
const CLAIMING: u64 = u64::MAX;

impl Slot {
    /// Makes this slot hold second `tag - 1`, emptied, unless it already does
    /// (or holds a later second). One claimant empties it while the others
    /// wait for the new tag, so no count lands in a slot being emptied. The
    /// wait only happens when the ticker fell behind.
    fn claim(&self, tag: u64) {
        loop {
            let seen = self.second.load(Ordering::Acquire);
            if seen == CLAIMING {
                std::hint::spin_loop();
                continue;
            }
            if seen >= tag {
                return;
            }
            if self
                .second
                .compare_exchange(seen, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.clear();
                self.second.store(tag, Ordering::Release);
                return;
            }
        }
    }

    fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        for count in self.kinds.iter() {
            count.store(0, Ordering::Relaxed);
        }
        for count in self.latency.iter() {
            count.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn counts_inside_the_window_only() {
        let w = Window::new(Duration::from_secs(10));
        // One error a second for 20 seconds, ticker running.
        for s in 0..20u64 {
            let at = Duration::from_secs(s) + 100 * MS;
            w.advance(at);
            w.record(at, 5 * MS, true);
            w.record(at, 5 * MS, false);
        }
        let f = w.figures(Duration::from_secs(19) + 500 * MS, Duration::from_secs(10));
        assert_eq!(f.requests, 20);
        assert_eq!(f.errors, 10);
        assert!((f.error_rate() - 0.5).abs() < 1e-9);
        // A shorter window sees less.
        let f = w.figures(Duration::from_secs(19) + 500 * MS, Duration::from_secs(3));
        assert_eq!(f.requests, 6);
    }

    #[test]
    fn old_errors_expire() {
        let w = Window::new(Duration::from_secs(5));
        for _ in 0..100 {
            w.record(Duration::from_secs(1), MS, true);
        }
        assert_eq!(
            w.figures(Duration::from_secs(2), Duration::from_secs(5))
                .errors,
            100
        );
        // Seven seconds later, with no ticker at all, nothing is left.
        let later = w.figures(Duration::from_secs(8), Duration::from_secs(5));
        assert_eq!(later.requests, 0);
        assert_eq!(later.p95_us, None);
        // A writer that finds a stale slot empties it before counting.
        w.record(Duration::from_secs(1 + 7), MS, false);
        let f = w.figures(Duration::from_secs(8), Duration::from_secs(5));
        assert_eq!((f.requests, f.errors), (1, 0));
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(30)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let w = std::sync::Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        w.record(Duration::from_millis(1500), MS * (i % 50), i % 10 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let f = w.figures(Duration::from_millis(1900), Duration::from_secs(30));
        assert_eq!(f.requests, 400_000);
        assert_eq!(f.errors, 40_000);
    }

    #[test]
    fn reset_forgets_everything() {
        let w = Window::new(Duration::from_secs(10));
        for _ in 0..10 {
            w.record(Duration::from_secs(3), MS, true);
        }
        w.reset();
        let f = w.figures(Duration::from_secs(4), Duration::from_secs(10));
        assert_eq!((f.requests, f.errors), (0, 0));
        w.record(Duration::from_secs(4), MS, false);
        assert_eq!(
            w.figures(Duration::from_secs(4), Duration::from_secs(10))
                .requests,
            1
        );
    }

    #[test]
    fn an_idle_window_holds_no_ring_and_reads_as_empty() {
        let w = Window::new(Duration::from_secs(30));
        w.advance(Duration::from_secs(5));
        w.reset();
        let f = w.figures(Duration::from_secs(5), Duration::from_secs(30));
        assert!(!w.is_allocated(), "reads and ticks allocate nothing");
        assert_eq!((f.requests, f.errors, f.p99_us), (0, 0, None));
        assert_eq!(f.span, Duration::from_secs(5));
        w.record(Duration::from_secs(5), MS, true);
        assert!(w.is_allocated());
        let f = w.figures(Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!((f.requests, f.errors), (1, 1));
    }

    #[test]
    fn errors_are_counted_by_kind_and_expire_with_their_second() {
        let w = Window::new(Duration::from_secs(5));
        let at = Duration::from_secs(1);
        let timeout = ErrorKind::Failure(FailureReason::Timeout);
        for kind in [
            Some(ErrorKind::Status5xx),
            Some(ErrorKind::Status5xx),
            Some(timeout),
            Some(ErrorKind::Grpc),
            None,
        ] {
            w.record_kind(at, Bucket::of(MS), kind);
        }
        let counts = w.counts(at, Duration::from_secs(5));
        assert_eq!((counts.requests, counts.errors), (5, 4));
        assert_eq!(
            counts.kinds.named(),
            vec![("5xx", 2), ("timeout", 1), ("grpc_status", 1)]
        );
        // Summed with another replica's, as the fleet does.
        let mut sum = counts.clone();
        sum.add(&counts);
        assert_eq!(sum.kinds.get(ErrorKind::Status5xx), 4);
        // Gone with the second they were counted in.
        let later = w.counts(Duration::from_secs(9), Duration::from_secs(5));
        assert_eq!(later.kinds, ErrorCounts::default());
        w.record_kind(Duration::from_secs(9), Bucket::of(MS), Some(timeout));
        let again = w.counts(Duration::from_secs(9), Duration::from_secs(5));
        assert_eq!(again.kinds.named(), vec![("timeout", 1)]);
    }

    #[test]
    fn every_kind_has_its_own_index_and_word() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
            assert_eq!(ErrorKind::from_word(kind.as_str()), Some(*kind));
        }
        assert_eq!(ErrorKind::from_word("teapot"), None);
    }

    #[test]
    fn rps_over_a_partial_window() {
        let w = Window::new(Duration::from_secs(30));
        for _ in 0..50 {
            w.record(Duration::from_millis(200), MS, false);
        }
        let f = w.figures(Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(f.requests, 50);
        assert!((f.rps() - 100.0).abs() < 1e-6, "{}", f.rps());
    }
}
