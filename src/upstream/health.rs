//! The request path's side of endpoint health: an endpoint's fitness to take
//! requests, in atomics (the active probe's verdict, a passive ejection
//! deadline, the failure streak seen on real traffic, the slow-start ramp
//! after it (re)joins), and the channel on which the request path reports an
//! endpoint whose streak reached the outlier threshold. The request path only
//! reads these flags (and bumps the streak); every decision on them — probes,
//! ejections, returns — is the health runner's (`crate::health`), which
//! changes them and republishes the snapshot, whose versions list available
//! endpoints only. They live here, on the `Endpoint`, because the request
//! path holds endpoints and nothing above them.
//!
//! Times are milliseconds on veer's clock (`clock::now_ms`), zero meaning
//! "not set".

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Endpoint;

/// What the request path and the probers tell the runner.
#[derive(Debug)]
pub enum HealthEvent {
    /// An endpoint reached its failure streak on real traffic.
    Failing {
        service: Arc<str>,
        endpoint: Arc<Endpoint>,
        reason: &'static str,
    },
    /// A probe changed an endpoint's verdict.
    Changed,
}

pub type HealthSender = mpsc::UnboundedSender<HealthEvent>;

#[derive(Debug)]
pub struct EndpointHealth {
    probe_ok: AtomicBool,
    ejected_until_ms: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// When the endpoint (re)joined, for slow start; 0 when not ramping.
    joined_ms: AtomicU64,
    /// How long the ramp lasts; 0 for no slow start.
    slow_start_ms: AtomicU64,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            probe_ok: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            joined_ms: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
        }
    }
}

impl EndpointHealth {
    /// Whether the endpoint may take new requests now.
    pub fn available(&self, now_ms: u64) -> bool {
        self.probe_ok.load(Ordering::Acquire)
            && self.ejected_until_ms.load(Ordering::Acquire) <= now_ms
    }

    pub fn probe_ok(&self) -> bool {
        self.probe_ok.load(Ordering::Acquire)
    }

    /// Sets the active probe's verdict; returns whether it changed.
    pub fn set_probe_ok(&self, ok: bool, now_ms: u64) -> bool {
        let changed = self.probe_ok.swap(ok, Ordering::AcqRel) != ok;
        if changed && ok {
            self.joined(now_ms);
        }
        changed
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Acquire)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejects until `until_ms`; counts the ejection.
    pub fn eject(&self, until_ms: u64) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(until_ms, Ordering::Release);
    }

    /// Ends an ejection whose time is up; starts the slow-start ramp.
    pub fn return_from_ejection(&self, now_ms: u64) {
        self.ejected_until_ms.store(0, Ordering::Release);
        self.joined(now_ms);
    }

    /// Forgets past ejections (after a long stretch in service).
    pub fn forgive(&self) {
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// A request succeeded: the failure streak ends. Writes only when there
    /// was a streak, so the hot path does not dirty the cache line.
    #[inline]
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed; returns the streak length.
    #[inline]
    pub fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn set_slow_start(&self, duration_ms: u64) {
        self.slow_start_ms.store(duration_ms, Ordering::Relaxed);
    }

    /// Marks the endpoint as just (re)joined: its share ramps up from here.
    pub fn joined(&self, now_ms: u64) {
        if self.slow_start_ms.load(Ordering::Relaxed) > 0 {
            self.joined_ms.store(now_ms.max(1), Ordering::Release);
        }
    }

    /// The fraction of its full share the endpoint should take now, in
    /// (0, 1]; 1 when not ramping. Reads the clock only while ramping.
    #[inline]
    pub fn ramp(&self, now: impl FnOnce() -> u64) -> f64 {
        let joined = self.joined_ms.load(Ordering::Relaxed);
        if joined == 0 {
            return 1.0;
        }
        let span = self.slow_start_ms.load(Ordering::Relaxed);
        let since = now().saturating_sub(joined);
        if span == 0 || since >= span {
            self.joined_ms.store(0, Ordering::Relaxed);
            return 1.0;
        }
        // Never quite zero, so a joining endpoint gets some traffic at once.
        (since as f64 / span as f64).max(0.05)
    }

    pub fn is_ramping(&self) -> bool {
        self.joined_ms.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_and_ejection_decide_availability() {
        let h = EndpointHealth::default();
        assert!(h.available(10));
        h.set_probe_ok(false, 10);
        assert!(!h.available(10));
        h.set_probe_ok(true, 20);
        h.eject(1_000);
        assert!(!h.available(999));
        assert!(h.available(1_000));
        assert_eq!(h.ejections(), 1);
    }

    #[test]
    fn failure_streaks() {
        let h = EndpointHealth::default();
        assert_eq!(h.record_failure(), 1);
        assert_eq!(h.record_failure(), 2);
        h.record_success();
        assert_eq!(h.record_failure(), 1);
    }

    #[test]
    fn slow_start_ramps_from_a_floor_to_full() {
        let h = EndpointHealth::default();
        h.set_slow_start(10_000);
        h.return_from_ejection(1_000);
        assert!((h.ramp(|| 1_000) - 0.05).abs() < 1e-9);
        assert!((h.ramp(|| 6_000) - 0.5).abs() < 1e-9);
        assert_eq!(h.ramp(|| 11_000), 1.0);
        assert!(!h.is_ramping());
    }
}
