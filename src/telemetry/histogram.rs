//! A latency histogram of atomic counters with log-linear buckets (the layout
//! of HdrHistogram with 16 sub-buckets per power of two): recording is one
//! `fetch_add`, memory is fixed, and any percentile read back is within 3.2 %
//! of the true value (a bucket spans 1/16 of its lower bound and is reported
//! by its midpoint). Values are microseconds, exact below 16 µs, capped at
//! about 134 s.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Powers of two covered above the linear range: 2^4 µs .. 2^27 µs (≈134 s).
const MAGNITUDES: u64 = 24;
pub const BUCKETS: usize = (SUB_BUCKETS + MAGNITUDES * SUB_BUCKETS) as usize;
const MAX_MICROS: u64 = (1 << (SUB_BITS as u64 + MAGNITUDES)) - 1;

pub struct LatencyHistogram {
    counts: Box<[AtomicU32]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    #[inline]
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Adds this histogram's counts into `into` (index = bucket).
    pub fn add_to(&self, into: &mut [u64; BUCKETS]) {
        for (sum, c) in into.iter_mut().zip(self.counts.iter()) {
            *sum += u64::from(c.load(Ordering::Relaxed));
        }
    }
}

#[inline]
pub fn bucket_of(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS);
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let magnitude = 63 - u64::from(v.leading_zeros()); // floor(log2 v) >= 4
    let shift = magnitude - u64::from(SUB_BITS);
    let sub = (v >> shift) & (SUB_BUCKETS - 1);
    (SUB_BUCKETS + shift * SUB_BUCKETS + sub) as usize
}

/// The midpoint of a bucket, in microseconds.
pub fn bucket_midpoint(bucket: usize) -> f64 {
    let b = bucket as u64;
    if b < SUB_BUCKETS {
        return b as f64;
    }
    let shift = (b - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = (b - SUB_BUCKETS) % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << shift;
    let width = 1u64 << shift;
    low as f64 + (width as f64 - 1.0) / 2.0
}

/// The `q` quantile (0..=1) of summed bucket counts, in microseconds; `None`
/// when there is nothing counted.
pub fn quantile(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the sample that is the quantile (1-based, nearest rank).
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (bucket, &count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_midpoint(bucket));
        }
    }
    Some(bucket_midpoint(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_the_range() {
        let mut last = 0;
        for v in 0..100_000u64 {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn midpoints_are_within_the_stated_error() {
        for v in (1..50_000_000u64).step_by(997) {
            let mid = bucket_midpoint(bucket_of(v));
            let error = (mid - v as f64).abs() / v as f64;
            assert!(error <= 0.032, "{v} -> {mid} ({error})");
        }
    }

    #[test]
    fn quantiles_of_a_known_mix() {
        let h = LatencyHistogram::default();
        for _ in 0..900 {
            h.record(Duration::from_millis(10));
        }
        for _ in 0..100 {
            h.record(Duration::from_millis(800));
        }
        let mut counts = [0u64; BUCKETS];
        h.add_to(&mut counts);
        let p50 = quantile(&counts, 0.50).expect("p50");
        let p95 = quantile(&counts, 0.95).expect("p95");
        assert!((p50 - 10_000.0).abs() / 10_000.0 < 0.032, "{p50}");
        assert!((p95 - 800_000.0).abs() / 800_000.0 < 0.032, "{p95}");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }
}
