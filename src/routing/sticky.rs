//! Sticky users: a user key (a header's or a cookie's value) hashed, salted
//! per service, into one of 10,000 buckets; each version owns a range of
//! buckets in proportion to its weight. The non-baseline versions own the
//! lowest buckets in config order and the baseline owns the rest, so raising
//! a candidate's weight only extends its range upward: users move from the
//! baseline to the candidate and never back, and the share is exact (no drift
//! towards the canary). A rollback gives every bucket to the baseline.
//!
//! The hash (FNV-1a finished with a SplitMix64 mix) is fixed here, not taken
//! from std, so a user keeps their bucket across restarts and upgrades.

/// Buckets a user key falls into.
pub const BUCKETS: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct StickyTable {
    salt: u64,
    /// (first bucket past the range, version), ascending.
    ranges: Vec<(u32, usize)>,
}

impl StickyTable {
    /// `weights` by version index; `baseline` owns the top of the range.
    /// `None` when every weight is zero.
    pub fn new(service: &str, weights: &[u32], baseline: usize) -> Option<StickyTable> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let order = (0..weights.len())
            .filter(|&i| i != baseline)
            .chain(std::iter::once(baseline).filter(|&b| b < weights.len()));
        let mut ranges = Vec::with_capacity(weights.len());
        let mut cumulative = 0u64;
        for version in order {
            if weights[version] == 0 {
                continue;
            }
            cumulative += u64::from(weights[version]);
            let end = (cumulative * u64::from(BUCKETS) + total / 2) / total;
            ranges.push((end as u32, version));
        }
        if let Some(last) = ranges.last_mut() {
            last.0 = BUCKETS;
        }
        Some(StickyTable {
            salt: fnv1a(FNV_OFFSET, service.as_bytes()),
            ranges,
        })
    }

    /// The bucket of a user key in this service.
    #[inline]
    pub fn bucket(&self, key: &[u8]) -> u32 {
        (mix(fnv1a(self.salt, key)) % u64::from(BUCKETS)) as u32
    }

    /// The version that serves this user key.
    #[inline]
    pub fn version(&self, key: &[u8]) -> usize {
        let bucket = self.bucket(key);
        self.ranges
            .iter()
            .find(|(end, _)| bucket < *end)
            .or(self.ranges.last())
            .map_or(0, |&(_, version)| version)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        (0..10_000).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn raising_the_candidate_only_moves_users_towards_it() {
        // versions: 0 = stable (baseline), 1 = canary
        let mut previous: Option<Vec<usize>> = None;
        for canary in [0u32, 10, 25, 50, 100] {
            let table = StickyTable::new("svc", &[100 - canary, canary], 0).expect("table");
            let now: Vec<usize> = keys().iter().map(|k| table.version(k.as_bytes())).collect();
            let share = now.iter().filter(|&&v| v == 1).count() as f64 / 10_000.0;
            assert!(
                (share - f64::from(canary) / 100.0).abs() < 0.02,
                "{canary}: {share}"
            );
            if let Some(before) = &previous {
                for (b, n) in before.iter().zip(&now) {
                    assert!(
                        !(*b == 1 && *n == 0),
                        "a user moved back from canary to stable"
                    );
                }
            }
            previous = Some(now);
        }
    }

    #[test]
    fn rollback_puts_everyone_on_the_baseline_and_salt_differs_per_service() {
        let table = StickyTable::new("svc", &[100, 0], 0).expect("table");
        assert!(keys().iter().all(|k| table.version(k.as_bytes()) == 0));
        let a = StickyTable::new("a", &[50, 50], 0).expect("a");
        let b = StickyTable::new("b", &[50, 50], 0).expect("b");
        let same = keys()
            .iter()
            .filter(|k| a.version(k.as_bytes()) == b.version(k.as_bytes()))
            .count();
        // Independent salts agree about half the time, not always.
        assert!((4_000..6_000).contains(&same), "{same}");
        assert!(StickyTable::new("x", &[0, 0], 0).is_none());
    }

    #[test]
    fn buckets_are_stable() {
        // Pinned: a change here moves every user of every deployment.
        let table = StickyTable::new("agent-match", &[1, 1], 0).expect("table");
        assert_eq!(table.bucket(b"alice"), table.bucket(b"alice"));
        assert_eq!(table.bucket(b"user-42"), 6_238);
    }
}
