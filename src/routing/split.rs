//! Weighted choice of a version, deterministic and lock-free.
//!
//! The weights are flattened, when the snapshot is built, into a table that lists
//! version indexes in smooth weighted round-robin order (the interleaving NGINX
//! uses: 90/10 gives nine stables with the canary spread among them, never ten
//! canaries in a row). A request takes the next slot with one relaxed
//! `fetch_add`. Over every full cycle of the table each version's share is exact
//! (weights whose reduced sum exceeds `MAX_SLOTS` are scaled first, to within
//! 0.01 %), and over any stretch of requests it is off by at most one slot per
//! version.
//! A per-thread RNG would be as cheap but only statistically fair: at 50/50 over
//! 10,000 requests it misses by more than one point about one run in twenty.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest table built. Weights whose reduced sum is larger are scaled down to
/// this many slots (keeping every non-zero weight at least one slot), which
/// bounds both memory and the error of the scaled shares to 0.01 %.
const MAX_SLOTS: u64 = 10_000;

#[derive(Debug)]
pub struct WeightedSplit {
    /// Version indexes in serving order; never empty.
    slots: Box<[u16]>,
    cursor: AtomicUsize,
}

impl WeightedSplit {
    /// Builds the split for `weights` (index = version). `None` when every weight
    /// is zero: then no version takes weighted traffic.
    pub fn new(weights: &[u32]) -> Option<WeightedSplit> {
        let reduced = reduce(weights)?;
        let total: i64 = reduced.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; reduced.len()];
        let mut slots = Vec::with_capacity(usize::try_from(total).ok()?);
        for _ in 0..total {
            // Smooth weighted round robin: everyone gains its weight, the
            // leader is served and pays the total back.
            let mut best = 0;
            for (i, &w) in reduced.iter().enumerate() {
                current[i] += i64::from(w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            slots.push(u16::try_from(best).ok()?);
        }
        Some(WeightedSplit {
            slots: slots.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        })
    }

    /// The version that serves the next request.
    #[inline]
    pub fn next(&self) -> usize {
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        usize::from(self.slots[turn % self.slots.len()])
    }

    /// How many slots of a full cycle each version holds (for status and tests).
    pub fn slot_counts(&self, versions: usize) -> Vec<usize> {
        let mut counts = vec![0; versions];
        for &s in self.slots.iter() {
            if let Some(c) = counts.get_mut(usize::from(s)) {
                *c += 1;
            }
        }
        counts
    }
}

/// Divides the weights by their greatest common divisor and, when the sum is
/// still above `MAX_SLOTS`, scales them down by largest remainder.
fn reduce(weights: &[u32]) -> Option<Vec<u32>> {
    if weights.len() > usize::from(u16::MAX) {
        return None;
    }
    let divisor = weights.iter().fold(0u32, |g, &w| gcd(g, w));
    if divisor == 0 {
        return None;
    }
    let reduced: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total <= MAX_SLOTS {
        return Some(reduced);
    }
    // Every non-zero weight keeps one slot; the rest is shared in proportion.
    let nonzero = reduced.iter().filter(|&&w| w > 0).count() as u64;
    let spare = MAX_SLOTS.saturating_sub(nonzero);
    let mut scaled = Vec::with_capacity(reduced.len());
    let mut remainders = Vec::with_capacity(reduced.len());
    let mut given = 0u64;
    for (i, &w) in reduced.iter().enumerate() {
        if w == 0 {
            scaled.push(0u32);
            continue;
        }
        let exact = u128::from(w) * u128::from(spare);
        let share = (exact / u128::from(total)) as u64;
        remainders.push((exact % u128::from(total), i));
        given += share;
        scaled.push(u32::try_from(share + 1).ok()?);
    }
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    for &(_, i) in remainders.iter().take((spare - given) as usize) {
        scaled[i] += 1;
    }
    Some(scaled)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], requests: usize) -> Vec<usize> {
        let split = WeightedSplit::new(weights).expect("some weight");
        let mut counts = vec![0; weights.len()];
        for _ in 0..requests {
            counts[split.next()] += 1;
        }
        counts
    }

    #[test]
    fn exact_over_a_cycle() {
        assert_eq!(shares(&[90, 10], 10_000), vec![9_000, 1_000]);
        assert_eq!(shares(&[1, 1], 10), vec![5, 5]);
        assert_eq!(shares(&[100, 0], 1_000), vec![1_000, 0]);
        assert_eq!(shares(&[0, 100], 1_000), vec![0, 1_000]);
        assert_eq!(shares(&[3, 2, 5], 1_000), vec![300, 200, 500]);
    }

    #[test]
    fn all_zero_has_no_split() {
        assert!(WeightedSplit::new(&[0, 0]).is_none());
        assert!(WeightedSplit::new(&[]).is_none());
    }

    #[test]
    fn smooth_interleaving() {
        let split = WeightedSplit::new(&[90, 10]).expect("split");
        let order: Vec<usize> = (0..10).map(|_| split.next()).collect();
        assert_eq!(order.iter().filter(|&&v| v == 1).count(), 1);
        // The canary is not first nor last in the cycle: it is spread out.
        assert_eq!(order, vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn large_weights_are_scaled_within_bounds() {
        let split = WeightedSplit::new(&[999_983, 17, 1]).expect("split");
        let counts = split.slot_counts(3);
        assert_eq!(counts.iter().sum::<usize>(), MAX_SLOTS as usize);
        assert!(counts[1] >= 1 && counts[2] >= 1);
        assert!(counts[0] >= 9_990);
    }

    #[test]
    fn any_window_is_close_to_the_share() {
        let split = WeightedSplit::new(&[7, 3]).expect("split");
        let mut seen = [0usize; 2];
        for n in 1..=1_000 {
            seen[split.next()] += 1;
            let expected = n as f64 * 0.3;
            assert!((seen[1] as f64 - expected).abs() <= 1.0, "{n}: {seen:?}");
        }
    }
}
