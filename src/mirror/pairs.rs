//! The paired comparison: for each mirrored request, the live answer and the
//! shadow's answer to the same request, kept as counts in one-second slots
//! (atomics, no lock), and the pure verdict on them.
//!
//! A pair is a mismatch when the live answer was not a server error and the
//! shadow's answer is in another status class, or is no answer at all.
//! Pairs whose live answer was itself a 5xx say nothing against the shadow
//! and are counted apart. On a route marked deterministic, the same status
//! with other body bytes (a digest of each body) is a mismatch too. The latency ratio is the shadow's latency over the
//! live one, pair by pair, kept in a log-scale histogram (four buckets per
//! doubling) so its p95 is read without storing the pairs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Slots of one second: the longest window pairs are read over.
pub const SLOTS: usize = 64;
/// Histogram buckets for the ratio: 2^-6 .. 2^6 in quarter steps.
const RATIO_BUCKETS: usize = 48;
const RATIO_STEPS_PER_DOUBLING: f64 = 4.0;
const RATIO_ZERO_BUCKET: f64 = 24.0;
/// Latencies below this count as this: on loopback, or for answers that
/// take microseconds, jitter would otherwise dominate the ratio.
const LATENCY_FLOOR_US: u64 = 1000;

/// What one side of a pair got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A response head with this status.
    Status(u16),
    /// No response: refused, reset, timed out.
    Failed,
}

impl Answer {
    fn class(self) -> u16 {
        match self {
            Answer::Status(status) => status / 100,
            Answer::Failed => 0,
        }
    }

    fn server_error(self) -> bool {
        match self {
            Answer::Status(status) => status >= 500,
            Answer::Failed => true,
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// The second (since veer's clock started) this slot counts; a slot of an
    /// older second is cleared by the first pair of a new one.
    second: AtomicU64,
    pairs: AtomicU64,
    mismatches: AtomicU64,
    body_mismatches: AtomicU64,
    live_errors: AtomicU64,
    ratio: [AtomicU64; RATIO_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            second: AtomicU64::new(0),
            pairs: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            body_mismatches: AtomicU64::new(0),
            live_errors: AtomicU64::new(0),
            ratio: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The pairs of the last [`SLOTS`] seconds.
#[derive(Debug)]
pub struct PairWindow {
    slots: Box<[Slot]>,
}

impl Default for PairWindow {
    fn default() -> Self {
        PairWindow {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

/// The pairs of a window, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairFigures {
    /// Pairs whose live answer was not a server error: those judged.
    pub pairs: u64,
    /// Of those, the shadow answered in another class, or not at all.
    pub mismatches: u64,
    /// Of the mismatches, those of the same status but other bytes, on a
    /// route marked deterministic.
    pub body_mismatches: u64,
    /// Pairs whose live answer was a server error (not judged).
    pub live_errors: u64,
    /// p95 of shadow latency / live latency over the judged pairs.
    pub latency_ratio_p95: Option<f64>,
}

impl PairFigures {
    pub fn mismatch_rate(&self) -> f64 {
        if self.pairs == 0 {
            0.0
        } else {
            self.mismatches as f64 / self.pairs as f64
        }
    }
}

fn ratio_bucket(live: Duration, shadow: Duration) -> usize {
    let live = (live.as_micros() as u64).max(LATENCY_FLOOR_US) as f64;
    let shadow = (shadow.as_micros() as u64).max(LATENCY_FLOOR_US) as f64;
    let index = ((shadow / live).log2() * RATIO_STEPS_PER_DOUBLING).floor() + RATIO_ZERO_BUCKET;
    index.clamp(0.0, (RATIO_BUCKETS - 1) as f64) as usize
}

/// The ratio at the upper edge of a bucket.
fn bucket_ceiling(index: usize) -> f64 {
    2f64.powf((index as f64 + 1.0 - RATIO_ZERO_BUCKET) / RATIO_STEPS_PER_DOUBLING)
}

impl PairWindow {
    /// Records one pair at `now_ms` (veer's clock).
    pub fn record(
        &self,
        now_ms: u64,
        live: (Answer, Duration),
        shadow: (Answer, Duration),
        bodies_differ: bool,
    ) {
        let second = now_ms / 1000 + 1;
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A pair of the new second racing this clear may be lost: one
            // pair in a second's worth, for no lock on the mirror's path.
            slot.pairs.store(0, Ordering::Relaxed);
            slot.mismatches.store(0, Ordering::Relaxed);
            slot.body_mismatches.store(0, Ordering::Relaxed);
            slot.live_errors.store(0, Ordering::Relaxed);
            for bucket in &slot.ratio {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        if live.0.server_error() {
            slot.live_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        slot.pairs.fetch_add(1, Ordering::Relaxed);
        if shadow.0.class() != live.0.class() {
            slot.mismatches.fetch_add(1, Ordering::Relaxed);
        } else if bodies_differ {
            slot.mismatches.fetch_add(1, Ordering::Relaxed);
            slot.body_mismatches.fetch_add(1, Ordering::Relaxed);
        }
        if shadow.0 != Answer::Failed {
            slot.ratio[ratio_bucket(live.1, shadow.1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The pairs of the last `window` (at most [`SLOTS`] seconds) before
    /// `now_ms`.
    pub fn figures(&self, now_ms: u64, window: Duration) -> PairFigures {
        let current = now_ms / 1000 + 1;
        let seconds = window.as_secs().clamp(1, SLOTS as u64);
        let oldest = current.saturating_sub(seconds - 1);
        let mut figures = PairFigures::default();
        let mut ratio = [0u64; RATIO_BUCKETS];
        for slot in self.slots.iter() {
            let second = slot.second.load(Ordering::Acquire);
            if second < oldest || second > current || second == 0 {
                continue;
            }
            figures.pairs += slot.pairs.load(Ordering::Relaxed);
            figures.mismatches += slot.mismatches.load(Ordering::Relaxed);
            figures.body_mismatches += slot.body_mismatches.load(Ordering::Relaxed);
            figures.live_errors += slot.live_errors.load(Ordering::Relaxed);
            for (sum, bucket) in ratio.iter_mut().zip(&slot.ratio) {
                *sum += bucket.load(Ordering::Relaxed);
            }
        }
        figures.mismatches = figures.mismatches.min(figures.pairs);
        let timed: u64 = ratio.iter().sum();
        if timed > 0 {
            let rank = (timed as f64 * 0.95).ceil() as u64;
            let mut seen = 0;
            for (index, count) in ratio.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    figures.latency_ratio_p95 = Some(bucket_ceiling(index));
                    break;
                }
            }
        }
        figures
    }
}

/// The thresholds of a shadow stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowPolicy {
    pub min_requests: u64,
    pub max_mismatch_rate: f64,
    pub max_latency_ratio: Option<f64>,
}

/// The verdict on a shadow's pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShadowVerdict {
    /// Fewer judged pairs than `min_requests`.
    Insufficient {
        pairs: u64,
        needed: u64,
    },
    Healthy,
    Bad {
        /// `shadow_mismatch` or `shadow_latency_ratio`: the guard's reason.
        reason: &'static str,
        observed: f64,
        threshold: f64,
    },
}

/// The pure verdict: enough pairs, then the mismatch rate, then the p95 of
/// the latency ratio.
pub fn verdict(figures: &PairFigures, policy: &ShadowPolicy) -> ShadowVerdict {
    if figures.pairs < policy.min_requests {
        return ShadowVerdict::Insufficient {
            pairs: figures.pairs,
            needed: policy.min_requests,
        };
    }
    let rate = figures.mismatch_rate();
    if rate > policy.max_mismatch_rate {
        return ShadowVerdict::Bad {
            reason: "shadow_mismatch",
            observed: rate,
            threshold: policy.max_mismatch_rate,
        };
    }
    if let (Some(max), Some(p95)) = (policy.max_latency_ratio, figures.latency_ratio_p95) {
        if p95 > max {
            return ShadowVerdict::Bad {
                reason: "shadow_latency_ratio",
                observed: p95,
                threshold: max,
            };
        }
    }
    ShadowVerdict::Healthy
}

impl std::fmt::Display for ShadowVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShadowVerdict::Insufficient { pairs, needed } => {
                write!(f, "insufficient data: {pairs}/{needed} pairs")
            }
            ShadowVerdict::Healthy => f.write_str("healthy"),
            ShadowVerdict::Bad {
                reason,
                observed,
                threshold,
            } => write!(f, "bad: {reason} {observed:.4} > {threshold:.4}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> ShadowPolicy {
        ShadowPolicy {
            min_requests: 10,
            max_mismatch_rate: 0.05,
            max_latency_ratio: Some(2.0),
        }
    }

    #[test]
    fn a_shadow_failing_where_live_succeeded_is_a_mismatch() {
        let window = PairWindow::default();
        for i in 0..20 {
            let shadow = if i % 5 == 0 {
                Answer::Status(500)
            } else {
                Answer::Status(200)
            };
            window.record(
                5_000,
                (Answer::Status(200), 10 * MS),
                (shadow, 10 * MS),
                false,
            );
        }
        let figures = window.figures(5_500, Duration::from_secs(10));
        assert_eq!((figures.pairs, figures.mismatches), (20, 4));
        match verdict(&figures, &policy()) {
            ShadowVerdict::Bad {
                reason, observed, ..
            } => {
                assert_eq!(reason, "shadow_mismatch");
                assert!((observed - 0.2).abs() < 1e-9);
            }
            other => panic!("expected bad, got {other:?}"),
        }
    }

    #[test]
    fn live_server_errors_are_not_held_against_the_shadow() {
        let window = PairWindow::default();
        for _ in 0..20 {
            window.record(
                1_000,
                (Answer::Status(503), MS),
                (Answer::Failed, MS),
                false,
            );
        }
        let figures = window.figures(1_000, Duration::from_secs(5));
        assert_eq!((figures.pairs, figures.live_errors), (0, 20));
        assert_eq!(
            verdict(&figures, &policy()),
            ShadowVerdict::Insufficient {
                pairs: 0,
                needed: 10
            }
        );
    }

    #[test]
    fn a_failed_copy_is_a_mismatch_and_has_no_ratio() {
        let window = PairWindow::default();
        window.record(0, (Answer::Status(200), MS), (Answer::Failed, MS), false);
        let figures = window.figures(0, Duration::from_secs(1));
        assert_eq!((figures.pairs, figures.mismatches), (1, 1));
        assert_eq!(figures.latency_ratio_p95, None);
    }

    #[test]
    fn the_ratio_p95_follows_the_slow_tail() {
        let window = PairWindow::default();
        for i in 0..100 {
            // 10 of 100 pairs have a shadow four times slower.
            let shadow = if i < 10 { 40 * MS } else { 10 * MS };
            window.record(
                0,
                (Answer::Status(200), 10 * MS),
                (Answer::Status(200), shadow),
                false,
            );
        }
        let p95 = window
            .figures(0, Duration::from_secs(1))
            .latency_ratio_p95
            .expect("a ratio");
        assert!((4.0..=4.8).contains(&p95), "{p95}");
        match verdict(&window.figures(0, Duration::from_secs(1)), &policy()) {
            ShadowVerdict::Bad { reason, .. } => assert_eq!(reason, "shadow_latency_ratio"),
            other => panic!("expected bad, got {other:?}"),
        }
    }

    #[test]
    fn pairs_leave_the_window_and_old_slots_are_reused() {
        let window = PairWindow::default();
        window.record(
            0,
            (Answer::Status(200), MS),
            (Answer::Status(200), MS),
            false,
        );
        assert_eq!(window.figures(2_000, Duration::from_secs(5)).pairs, 1);
        assert_eq!(window.figures(10_000, Duration::from_secs(5)).pairs, 0);
        // The same slot, one lap later, starts from zero.
        let lap = SLOTS as u64 * 1000;
        window.record(
            lap,
            (Answer::Status(200), MS),
            (Answer::Status(500), MS),
            false,
        );
        let figures = window.figures(lap, Duration::from_secs(1));
        assert_eq!((figures.pairs, figures.mismatches), (1, 1));
    }

    #[test]
    fn healthy_pairs_pass() {
        let window = PairWindow::default();
        for _ in 0..50 {
            window.record(
                0,
                (Answer::Status(404), 5 * MS),
                (Answer::Status(404), 6 * MS),
                false,
            );
        }
        assert_eq!(
            verdict(&window.figures(0, Duration::from_secs(1)), &policy()),
            ShadowVerdict::Healthy
        );
    }
}
