//! The Prometheus latency histograms' storage: one atomic counter per `le`
//! bucket and an integer sum. Recording is a short search over integer
//! bounds and two relaxed adds, with no clock read, no floating point and
//! no buffer to fold later (the exporter's histograms kept every raw sample
//! until an upkeep).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds (`le`): sub-millisecond (a proxy on loopback)
/// up to 10 s, finer where service latencies usually are.
pub const BOUNDS: [Duration; 24] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_micros(7_500),
    Duration::from_millis(10),
    Duration::from_millis(15),
    Duration::from_millis(25),
    Duration::from_millis(35),
    Duration::from_millis(50),
    Duration::from_millis(75),
    Duration::from_millis(100),
    Duration::from_millis(150),
    Duration::from_millis(250),
    Duration::from_millis(350),
    Duration::from_millis(500),
    Duration::from_millis(750),
    Duration::from_secs(1),
    Duration::from_millis(1_500),
    Duration::from_millis(2_500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

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
    #[inline]
    pub fn record(&self, latency: Duration) {
        let nanos = saturating_nanos(latency);
        // `le` is inclusive: a value equal to a bound belongs to its bucket.
        let slot = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
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
}
