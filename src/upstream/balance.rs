//! Choosing an endpoint within a version: power of two choices over the
//! outstanding-request counts. Two random endpoints are compared and the less
//! busy one wins, which keeps load even without a global scan or a lock and
//! steers away from a slow endpoint as its queue grows.

use std::sync::Arc;

use super::Endpoint;

/// Index of the endpoint to use, never `skip` (the endpoint that just failed)
/// unless it is the only one. `None` for an empty list.
pub fn pick(endpoints: &[Arc<Endpoint>], skip: Option<usize>) -> Option<usize> {
    let n = endpoints.len();
    // Draw among the others by drawing from n-1 and stepping over `skip`.
    let (choices, skip) = match skip {
        Some(s) if n > 1 => (n - 1, s),
        _ => (n, usize::MAX),
    };
    let index = |draw: usize| if draw >= skip { draw + 1 } else { draw };
    match choices {
        0 => None,
        1 => Some(index(0)),
        _ => {
            let first = fastrand::usize(..choices);
            let second = (first + 1 + fastrand::usize(..choices - 1)) % choices;
            let (a, b) = (index(first), index(second));
            let (chosen, other) = match less_busy(endpoints, a, b) {
                x if x == a => (a, b),
                _ => (b, a),
            };
            // Slow start: an endpoint that just joined wins only a growing
            // fraction of the draws it would otherwise win.
            let ramp = endpoints[chosen].health.ramp(crate::clock::now_ms);
            if ramp < 1.0 && fastrand::f64() >= ramp {
                Some(other)
            } else {
                Some(chosen)
            }
        }
    }
}

#[inline]
fn less_busy(endpoints: &[Arc<Endpoint>], a: usize, b: usize) -> usize {
    if endpoints[b].outstanding() < endpoints[a].outstanding() {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 10_000 + i).parse().expect("addr");
                Arc::new(Endpoint::new(addr, Protocol::Http1))
            })
            .collect()
    }

    #[test]
    fn never_picks_the_skipped_one_when_there_is_another() {
        for n in 2..6 {
            let eps = endpoints(n);
            for skip in 0..n {
                for _ in 0..200 {
                    let chosen = pick(&eps, Some(skip)).expect("some");
                    assert_ne!(chosen, skip);
                    assert!(chosen < n);
                }
            }
        }
    }

    #[test]
    fn single_and_empty() {
        assert_eq!(pick(&endpoints(1), Some(0)), Some(0));
        assert_eq!(pick(&[], None), None);
    }

    #[test]
    fn spreads_over_all_endpoints() {
        let eps = endpoints(4);
        let mut seen = [0usize; 4];
        for _ in 0..4_000 {
            seen[pick(&eps, None).expect("some")] += 1;
        }
        assert!(seen.iter().all(|&c| c > 500), "{seen:?}");
    }
}
