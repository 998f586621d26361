//! `limits`: connection, header and drain limits.

use super::*;

impl Validator {
    pub(super) fn limits(&mut self, raw: Option<Part<RawLimits>>) -> Option<Limits> {
        let defaults = Limits::default();
        let raw = match raw {
            None => return Some(defaults),
            Some(Err(_)) => return None,
            Some(Ok(raw)) => raw,
        };
        let max_connections = match raw.max_connections {
            None => Some(defaults.max_connections),
            Some(n) => self.int_in(
                "limits.max_connections",
                &n,
                1,
                1_000_000,
                "open client connections",
            ),
        };
        let max_header_bytes = match raw.max_header_bytes {
            None => Some(defaults.max_header_bytes),
            Some(n) => self.int_in(
                "limits.max_header_bytes",
                &n,
                MIN_HEADER_BYTES,
                MAX_HEADER_BYTES,
                "bytes in a request head; hyper needs at least 8192",
            ),
        };
        let header_read_timeout = self.positive_duration(
            "limits.header_read_timeout",
            raw.header_read_timeout.as_ref(),
            defaults.header_read_timeout,
        );
        let drain_timeout = self.positive_duration(
            "limits.drain_timeout",
            raw.drain_timeout.as_ref(),
            defaults.drain_timeout,
        );
        Some(Limits {
            max_connections: max_connections?,
            header_read_timeout: header_read_timeout?,
            max_header_bytes: max_header_bytes?,
            drain_timeout: drain_timeout?,
        })
    }
}
