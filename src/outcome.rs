//! The words a request's outcome is told in, shared by everything that
//! records or judges one: the request path classifies a failure once
//! (`proxy::outcome`), and the metrics, the guard's windows, `/status` and
//! passive ejection read the same reason.
//!
//! A leaf: plain data, no dependencies, so that `telemetry` can label by it
//! without depending on `upstream`, where most failures are found.

/// Why a version failed a request: the `reason` label of
/// `veer_upstream_failures_total`. The discriminants index per-reason
/// counters, so they are dense and stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect = 0,
    /// No response head within `timeouts.request`.
    Timeout = 1,
    /// The connection broke after the request was (partly) sent.
    Reset = 2,
    /// The upstream answered something that is not valid HTTP.
    Protocol = 3,
    /// The TLS handshake with the endpoint failed.
    Tls = 4,
    /// The response broke after its head: reset, closed early, or invalid
    /// body framing.
    Midstream = 5,
}

impl FailureReason {
    /// Every reason, in discriminant order.
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Connect,
        FailureReason::Timeout,
        FailureReason::Reset,
        FailureReason::Protocol,
        FailureReason::Tls,
        FailureReason::Midstream,
    ];

    /// The label value, as the metrics and the access log write it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Connect => "connect",
            FailureReason::Timeout => "timeout",
            FailureReason::Reset => "reset",
            FailureReason::Protocol => "protocol",
            FailureReason::Tls => "tls",
            FailureReason::Midstream => "midstream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_index_all_in_order() {
        for (i, reason) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn labels_are_the_documented_ones() {
        let labels: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "connect",
                "timeout",
                "reset",
                "protocol",
                "tls",
                "midstream"
            ]
        );
    }
}
