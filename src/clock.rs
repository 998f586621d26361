//! veer's clock for health and ejection deadlines: milliseconds since the
//! process started, on tokio's clock (so tests may pause it). Never zero, so
//! zero can mean "not set" in atomics.

use std::sync::OnceLock;

use tokio::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

pub fn now_ms() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Microseconds since `since` on the wall clock, for the `took_us` fields of
/// the debug lines that time a reload's stages (a measure for people, never
/// an input to a decision).
pub fn took_us(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}
