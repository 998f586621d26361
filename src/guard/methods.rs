//! Per-method judging (`guard.per_method: true`): each gRPC method of a
//! version is judged on its own window, with the same thresholds, against
//! the baseline's figures for the same method. A method that fails every
//! call while the version's other methods answer thousands of successes is
//! invisible in the version's overall error rate; judged alone, it trips.
//! Pure, like `verdict`.

use std::time::Duration;

use super::verdict::{verdict, Verdict};
use crate::config::Guard;
use crate::telemetry::methods::MethodTable;
use crate::telemetry::Figures;

/// A method judged bad: its name, the verdict and its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BadMethod {
    pub method: String,
    pub verdict: Verdict,
    pub figures: Figures,
}

/// The first method of `version` whose own verdict is bad, if any. Methods
/// with fewer than `min_requests` in the window get no verdict, as a
/// version does not.
pub fn worst(
    version: &MethodTable,
    baseline: &MethodTable,
    elapsed: Duration,
    policy: &Guard,
) -> Option<BadMethod> {
    let mut found = None;
    version.each(|method| {
        if found.is_some() {
            return;
        }
        let figures = method.window().figures(elapsed, policy.window);
        let mut base = None;
        baseline.each(|b| {
            if base.is_none() && b.name() == method.name() {
                base = Some(b.window().figures(elapsed, policy.window));
            }
        });
        let judged = verdict(&figures, base.as_ref(), policy);
        if matches!(judged, Verdict::Bad { .. }) {
            found = Some(BadMethod {
                method: method.name().to_string(),
                verdict: judged,
                figures,
            });
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::verdict::Reason;

    const WINDOW: Duration = Duration::from_secs(10);

    fn policy() -> Guard {
        Guard {
            baseline: 0,
            interval: Duration::from_secs(1),
            window: WINDOW,
            min_requests: 10,
            max_error_rate: crate::config::Fraction::new(0.05),
            max_p95_latency: None,
            max_p99_latency: None,
            max_error_rate_increase: None,
            max_latency_ratio: None,
            consecutive: 1,
            on_revert: Default::default(),
            webhook: None,
            wilson: false,
            per_method: true,
            checks: Vec::new(),
        }
    }

    fn record(table: &MethodTable, method: &str, n: u64, errors: u64) {
        let at = Duration::from_secs(5);
        for i in 0..n {
            table
                .get(method)
                .window()
                .record(at, Duration::from_millis(1), i < errors);
        }
    }

    #[test]
    fn one_broken_method_is_found_among_healthy_ones() {
        let version = MethodTable::new(8, WINDOW);
        let baseline = MethodTable::new(8, WINDOW);
        record(&version, "/s.S/Health", 1000, 0);
        record(&version, "/s.S/Find", 20, 20);
        let elapsed = Duration::from_secs(5);
        let bad = worst(&version, &baseline, elapsed, &policy()).expect("Find is bad");
        assert_eq!(bad.method, "/s.S/Find");
        assert_eq!(bad.figures.requests, 20);
        assert!(matches!(
            bad.verdict,
            Verdict::Bad {
                reason: Reason::ErrorRate,
                ..
            }
        ));
    }

    #[test]
    fn too_few_calls_of_a_method_give_no_verdict() {
        let version = MethodTable::new(8, WINDOW);
        let baseline = MethodTable::new(8, WINDOW);
        record(&version, "/s.S/Find", 9, 9);
        assert_eq!(
            worst(&version, &baseline, Duration::from_secs(5), &policy()),
            None
        );
    }

    #[test]
    fn relative_thresholds_compare_the_same_method_of_the_baseline() {
        let mut policy = policy();
        policy.max_error_rate = None;
        policy.max_error_rate_increase = crate::config::Fraction::new(0.1);
        let version = MethodTable::new(8, WINDOW);
        let baseline = MethodTable::new(8, WINDOW);
        // Find fails 50 % on both: not the release's doing.
        record(&version, "/s.S/Find", 20, 10);
        record(&baseline, "/s.S/Find", 20, 10);
        let elapsed = Duration::from_secs(5);
        assert_eq!(worst(&version, &baseline, elapsed, &policy), None);
        record(&version, "/s.S/Find", 20, 20);
        let bad = worst(&version, &baseline, elapsed, &policy).expect("worse than the baseline");
        assert_eq!(bad.method, "/s.S/Find");
    }
}
