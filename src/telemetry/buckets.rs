//! The one latency bucket layout, and the one place that maps a latency to
//! a bucket. Two resolutions of the same layout:
//!
//! - the Prometheus `le` buckets (`BOUNDS`), what `/metrics` exports;
//! - the fine buckets: each `le` interval cut into `SUB` equal parts (and,
//!   above the last bound, a few doubling intervals up to 160 s), what the
//!   sliding windows count in so the guard and `/status` read percentiles
//!   within 5 % (a sub-bucket is reported by its midpoint; the widest,
//!   relative to its value, is the first of the intervals that span ×2.5).
//!
//! Every `le` bound is a fine bucket's upper edge, so a latency's fine
//! bucket names its `le` bucket too (`Bucket::le`): `Bucket::of` runs once
//! per request and both the histogram and the window add to its result.
//! The window and `histogram_quantile` over the exported buckets therefore
//! see the same edges; only the window's are finer.
//!
//! `LatencyBuckets` is the exported histogram's storage: one atomic counter
//! per `le` bucket and an integer sum. Recording is a short search over
//! integer bounds and two relaxed adds, with no clock read, no floating
//! point and no buffer to fold later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds (`le`), the config's (where
/// `telemetry.buckets` picks from them).
pub const BOUNDS: [Duration; 24] = crate::config::LATENCY_BOUNDS;

/// One counter per bound, then the one above the last bound (`+Inf`).
pub const SLOTS: usize = BOUNDS.len() + 1;

/// The bounds as the integers `record` compares against.
const BOUNDS_NANOS: [u64; BOUNDS.len()] = {
    let mut nanos = [0; BOUNDS.len()];
    let mut i = 0;
    while i < BOUNDS.len() {
        nanos[i] = BOUNDS[i].as_nanos() as u64;
        // The search in `record` needs them strictly increasing.
        assert!(i == 0 || nanos[i] > nanos[i - 1]);
        i += 1;
    }
    nanos
};

/// Above the last `le` bound, the windows still tell long latencies apart:
/// doubling intervals up to 160 s, then one bucket for anything longer.
const BEYOND: [Duration; 4] = [
    Duration::from_secs(20),
    Duration::from_secs(40),
    Duration::from_secs(80),
    Duration::from_secs(160),
];

/// Equal parts each interval is cut into for the windows.
pub const SUB: usize = 16;

/// The upper edges of the fine layout's intervals: the `le` bounds, then
/// `BEYOND`.
const EDGES: usize = BOUNDS.len() + BEYOND.len();

/// Per interval: its lower edge and the width of one of its parts, in ns.
/// Every interval's width divides by `SUB` exactly (checked here), so the
/// parts' edges are whole nanoseconds and the last part ends on the bound.
const INTERVALS: [(u64, u64); EDGES] = {
    let mut out = [(0, 0); EDGES];
    let mut i = 0;
    let mut low = 0u64;
    while i < EDGES {
        let high = if i < BOUNDS.len() {
            BOUNDS_NANOS[i]
        } else {
            BEYOND[i - BOUNDS.len()].as_nanos() as u64
        };
        assert!(high > low);
        assert!((high - low).is_multiple_of(SUB as u64));
        out[i] = (low, (high - low) / SUB as u64);
        low = high;
        i += 1;
    }
    out
};

/// The upper edges as the integers `Bucket::of` compares against.
const EDGES_NANOS: [u64; EDGES] = {
    let mut out = [0; EDGES];
    let mut i = 0;
    while i < EDGES {
        out[i] = INTERVALS[i].0 + INTERVALS[i].1 * SUB as u64;
        i += 1;
    }
    out
};

/// Fine buckets: `SUB` per interval, then one above the last edge.
pub const FINE: usize = EDGES * SUB + 1;

/// Where one latency falls, in both resolutions of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    fine: u16,
    le: u8,
}

impl Bucket {
    /// The one mapping from a latency to its bucket. `le` is inclusive: a
    /// value equal to a bound belongs to that bound's bucket, in both
    /// resolutions.
    #[inline]
    pub fn of(latency: Duration) -> Bucket {
        let nanos = saturating_nanos(latency);
        let interval = EDGES_NANOS.partition_point(|&edge| edge < nanos);
        let le = interval.min(BOUNDS.len()) as u8;
        let Some(&(low, part)) = INTERVALS.get(interval) else {
            return Bucket {
                fine: (FINE - 1) as u16,
                le,
            };
        };
        // nanos is in (low, low + SUB * part], or 0 in the first interval.
        let sub = (nanos.saturating_sub(low).saturating_sub(1) / part) as usize;
        Bucket {
            fine: (interval * SUB + sub.min(SUB - 1)) as u16,
            le,
        }
    }

    /// The fine bucket's index, `0..FINE`.
    #[inline]
    pub fn fine(self) -> usize {
        usize::from(self.fine)
    }

    /// The `le` bucket's index, `0..SLOTS` (`SLOTS - 1` is `+Inf`).
    #[inline]
    pub fn le(self) -> usize {
        usize::from(self.le)
    }
}

/// The latency a fine bucket stands for, in microseconds: its midpoint (the
/// bucket above the last edge is reported by that edge).
pub fn fine_midpoint_us(fine: usize) -> f64 {
    let interval = fine / SUB;
    let Some(&(low, part)) = INTERVALS.get(interval) else {
        return EDGES_NANOS[EDGES - 1] as f64 / 1_000.0;
    };
    let sub = (fine % SUB) as u64;
    (low as f64 + part as f64 * (sub as f64 + 0.5)) / 1_000.0
}

/// The `q` quantile (0..=1) of fine bucket counts, in microseconds; `None`
/// when there is nothing counted. Nearest rank, reported by the midpoint of
/// the bucket that holds it.
pub fn quantile_us(counts: &[u64; FINE], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (fine, &count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(fine_midpoint_us(fine));
        }
    }
    Some(fine_midpoint_us(FINE - 1))
}

/// A latency histogram with the bucket layout of `BOUNDS`.
///
/// Aligned to a cache line so that it shares none with other hot data; the
/// sum comes first so it shares its line with the low buckets, where most
/// requests land.
#[repr(align(64))]
#[derive(Default)]
pub struct LatencyBuckets {
    /// Wraps after 2^64 ns (584 years) of summed latency; Prometheus reads
    /// that as a counter reset.
    sum_nanos: AtomicU64,
    /// Per bucket, not cumulative: one add per sample, cumulated when read.
    counts: [AtomicU64; SLOTS],
}

/// What one read of a `LatencyBuckets` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Samples at or below each bound, and (last) all of them: `+Inf`.
    pub cumulative: [u64; SLOTS],
    pub sum_nanos: u64,
}

impl Reading {
    pub fn count(&self) -> u64 {
        self.cumulative[SLOTS - 1]
    }
}

impl LatencyBuckets {
    /// What a histogram that never recorded reads as.
    pub const EMPTY_READING: Reading = Reading {
        cumulative: [0; SLOTS],
        sum_nanos: 0,
    };

    /// Records a latency whose bucket is not otherwise needed.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let nanos = saturating_nanos(latency);
        // `le` is inclusive: a value equal to a bound belongs to its bucket.
        let slot = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records a latency already mapped by `Bucket::of` (the window takes
    /// the same bucket).
    #[inline]
    pub fn record_in(&self, bucket: Bucket, latency: Duration) {
        self.counts[bucket.le()].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(saturating_nanos(latency), Ordering::Relaxed);
    }

    /// The count is derived from the buckets rather than kept apart, so
    /// `+Inf` and `_count` always agree; the sum is read separately and may
    /// be a request ahead or behind.
    pub fn read(&self) -> Reading {
        let mut cumulative = [0; SLOTS];
        let mut running = 0u64;
        for (out, count) in cumulative.iter_mut().zip(&self.counts) {
            running = running.wrapping_add(count.load(Ordering::Relaxed));
            *out = running;
        }
        Reading {
            cumulative,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

#[inline]
fn saturating_nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const NS: Duration = Duration::from_nanos(1);

    fn index_of(bound: Duration) -> usize {
        BOUNDS
            .iter()
            .position(|&b| b == bound)
            .expect("a bucket bound")
    }

    /// How many samples each slot holds on its own.
    fn per_slot(reading: &Reading) -> Vec<u64> {
        let mut previous = 0;
        reading
            .cumulative
            .iter()
            .map(|&c| {
                let own = c - previous;
                previous = c;
                own
            })
            .collect()
    }

    #[test]
    fn a_value_on_a_bound_belongs_to_that_bucket() {
        for (i, &bound) in BOUNDS.iter().enumerate() {
            let h = LatencyBuckets::default();
            h.record(bound);
            let r = h.read();
            assert_eq!(per_slot(&r)[i], 1, "{bound:?}");
            assert_eq!(r.cumulative[i], 1, "{bound:?}");
            if i > 0 {
                assert_eq!(r.cumulative[i - 1], 0, "{bound:?}");
            }
        }
    }

    #[test]
    fn a_nanosecond_above_a_bound_goes_to_the_next_bucket() {
        let h = LatencyBuckets::default();
        h.record(MS + NS);
        let r = h.read();
        let one_ms = index_of(MS);
        assert_eq!(r.cumulative[one_ms], 0);
        assert_eq!(r.cumulative[one_ms + 1], 1);
    }

    #[test]
    fn zero_goes_to_the_first_bucket() {
        let h = LatencyBuckets::default();
        h.record(Duration::ZERO);
        let r = h.read();
        assert_eq!(r.cumulative, [1; SLOTS]);
        assert_eq!(r.sum_nanos, 0);
    }

    #[test]
    fn above_the_last_bound_only_inf_counts_it() {
        let h = LatencyBuckets::default();
        h.record(BOUNDS[BOUNDS.len() - 1] + NS);
        h.record(Duration::MAX);
        let r = h.read();
        assert!(r.cumulative[..SLOTS - 1].iter().all(|&c| c == 0), "{r:?}");
        assert_eq!(r.count(), 2);
    }

    #[test]
    fn sum_and_count_add_up_and_buckets_are_cumulative() {
        let h = LatencyBuckets::default();
        let samples = [
            Duration::from_micros(180),
            Duration::from_micros(180),
            Duration::from_micros(2_500),
            Duration::from_millis(400),
            Duration::from_secs(12),
        ];
        for s in samples {
            h.record(s);
        }
        let r = h.read();
        assert_eq!(r.count(), 5);
        let total: Duration = samples.iter().sum();
        assert_eq!(u128::from(r.sum_nanos), total.as_nanos());
        assert!(r.cumulative.windows(2).all(|w| w[0] <= w[1]), "{r:?}");
        assert_eq!(r.cumulative[index_of(Duration::from_micros(250))], 2);
        assert_eq!(r.cumulative[index_of(Duration::from_micros(2_500))], 3);
        assert_eq!(r.cumulative[index_of(Duration::from_millis(500))], 4);
        assert_eq!(r.cumulative[index_of(Duration::from_secs(10))], 4);
    }

    #[test]
    fn record_in_agrees_with_record() {
        let samples = (0..200_000u64)
            .step_by(7)
            .map(|us| Duration::from_micros(us * 97))
            .chain(BOUNDS.iter().flat_map(|&b| [b - NS, b, b + NS]))
            .chain([Duration::ZERO, Duration::MAX]);
        for s in samples {
            let (a, b) = (LatencyBuckets::default(), LatencyBuckets::default());
            a.record(s);
            b.record_in(Bucket::of(s), s);
            assert_eq!(a.read(), b.read(), "{s:?}");
        }
    }

    #[test]
    fn fine_buckets_nest_in_le_buckets_and_are_monotonic() {
        let mut last = Bucket::of(Duration::ZERO);
        assert_eq!((last.fine(), last.le()), (0, 0));
        for us in (0..200_000_000u64).step_by(3_331) {
            let b = Bucket::of(Duration::from_micros(us));
            assert!(b.fine() >= last.fine() && b.le() >= last.le(), "{us}");
            assert_eq!(b.le(), (b.fine() / SUB).min(BOUNDS.len()), "{us}");
            last = b;
        }
        for (i, &bound) in BOUNDS.iter().enumerate() {
            let on = Bucket::of(bound);
            let above = Bucket::of(bound + NS);
            assert_eq!(on.le(), i, "{bound:?}");
            assert_eq!(on.fine(), (i + 1) * SUB - 1, "{bound:?}");
            assert_eq!(above.le(), i + 1, "{bound:?}");
            assert_eq!(above.fine(), (i + 1) * SUB, "{bound:?}");
        }
        assert_eq!(Bucket::of(Duration::MAX).fine(), FINE - 1);
        assert_eq!(Bucket::of(Duration::MAX).le(), SLOTS - 1);
    }

    #[test]
    fn midpoints_are_within_five_percent() {
        // Above 16 µs: below it a bucket's width (6.25 µs) is what counts.
        for us in (16..160_000_000u64).step_by(997) {
            let mid = fine_midpoint_us(Bucket::of(Duration::from_micros(us)).fine());
            let error = (mid - us as f64).abs() / us as f64;
            assert!(error <= 0.047, "{us} µs -> {mid} ({error})");
        }
    }

    #[test]
    fn quantiles_of_a_known_mix() {
        let mut counts = [0u64; FINE];
        counts[Bucket::of(10 * MS).fine()] += 900;
        counts[Bucket::of(800 * MS).fine()] += 100;
        let p50 = quantile_us(&counts, 0.50).expect("p50");
        let p95 = quantile_us(&counts, 0.95).expect("p95");
        assert!((p50 - 10_000.0).abs() / 10_000.0 < 0.03, "{p50}");
        assert!((p95 - 800_000.0).abs() / 800_000.0 < 0.03, "{p95}");
        assert_eq!(quantile_us(&[0; FINE], 0.5), None);
    }
}
