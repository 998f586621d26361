//! `telemetry`: what `/metrics` exports — when a quiet version's series
//! leave it, and which latency buckets the histograms show.

use super::*;

/// Shorter than this, a version with steady but sparse traffic would come
/// and go between two scrapes.
const MIN_IDLE: Duration = Duration::from_secs(1);

impl Validator {
    pub(super) fn telemetry(&mut self, raw: RawTelemetry) -> Option<Telemetry> {
        let idle_series_after = match raw.idle_series_after.as_ref() {
            None => Some(None),
            Some(scalar) => match self.duration("telemetry.idle_series_after", scalar)? {
                d if d < MIN_IDLE => {
                    self.err(
                        "telemetry.idle_series_after",
                        format!(
                            "`{scalar}` is too short: write at least 1s (several scrape intervals, such as 10m, keeps series steady)"
                        ),
                    );
                    None
                }
                d => Some(Some(d)),
            },
        };
        let buckets = match raw.buckets {
            None => Some(None),
            Some(list) => self.buckets(&list).map(Some),
        };
        Some(Telemetry {
            idle_series_after: idle_series_after?,
            buckets: buckets?,
        })
    }

    /// A non-empty, increasing list of bounds veer counts in.
    fn buckets(&mut self, list: &[Scalar]) -> Option<Vec<Duration>> {
        if list.is_empty() {
            self.err(
                "telemetry.buckets",
                "the list is empty: name at least one bound, or remove `buckets` to export them all",
            );
            return None;
        }
        let mut bounds = Vec::with_capacity(list.len());
        let mut ok = true;
        for (i, scalar) in list.iter().enumerate() {
            let path = format!("telemetry.buckets[{i}]");
            let Some(bound) = self.duration(&path, scalar) else {
                ok = false;
                continue;
            };
            if !LATENCY_BOUNDS.contains(&bound) {
                let allowed: Vec<String> = LATENCY_BOUNDS.iter().map(|b| spell(*b)).collect();
                self.err(
                    path,
                    format!(
                        "`{scalar}` is not one of the bounds veer counts in; pick from {}",
                        allowed.join(", ")
                    ),
                );
                ok = false;
                continue;
            }
            if let Some(&before) = bounds.last() {
                if bound <= before {
                    self.err(
                        path,
                        format!(
                            "`{scalar}` is not above the bound before it ({}): list the bounds in increasing order, each once",
                            spell(before)
                        ),
                    );
                    ok = false;
                    continue;
                }
            }
            bounds.push(bound);
        }
        ok.then_some(bounds)
    }
}

/// A bound as the file can write it, in the largest unit that keeps it
/// whole: `250us`, `2500us`, `5ms`, `1s`.
fn spell(bound: Duration) -> String {
    let micros = bound.as_micros();
    if micros.is_multiple_of(1_000_000) {
        format!("{}s", micros / 1_000_000)
    } else if micros.is_multiple_of(1_000) {
        format!("{}ms", micros / 1_000)
    } else {
        format!("{micros}us")
    }
}
