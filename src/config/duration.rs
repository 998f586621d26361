//! Durations as written in the config and on the command line: `250ms`, `5s`,
//! `1m`, `1h`, and combinations such as `1m30s`.
//!
//! Parsing is humantime's; this module only gives its failures a message that
//! says what to write instead, and refuses a bare number, whose unit a reader
//! would have to guess.

use std::time::Duration;

/// What every duration error ends with: the shape we want.
const EXPECTED: &str = "write a number with a unit, such as 250ms, 5s, 1m or 1h";

/// Parses a duration such as `250ms`, `5s`, `1m`, `1h` or `1m30s`.
///
/// The error is a complete reason for a `ConfigError` or a command-line error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    if trimmed.starts_with('-') {
        return Err(format!(
            "`{trimmed}` is negative: durations cannot be negative; {EXPECTED}"
        ));
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        // humantime takes a bare "0" as zero seconds, but "5" is an error there
        // too: treat both alike so the rule is simply "a unit is required".
        return Err(format!("`{trimmed}` has no unit: {EXPECTED}"));
    }
    humantime::parse_duration(trimmed).map_err(|error| {
        let detail = match error {
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("has an unknown unit `{unit}`")
            }
            humantime::DurationError::NumberOverflow => "is too large".to_string(),
            _ => "is not a duration".to_string(),
        };
        format!("`{trimmed}` {detail}: {EXPECTED}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_negative_bare_and_garbage() {
        assert_eq!(
            parse_duration("-5s"),
            Err("`-5s` is negative: durations cannot be negative; write a number with a unit, such as 250ms, 5s, 1m or 1h".to_string())
        );
        assert_eq!(
            parse_duration("5"),
            Err(
                "`5` has no unit: write a number with a unit, such as 250ms, 5s, 1m or 1h"
                    .to_string()
            )
        );
        assert_eq!(
            parse_duration("0"),
            Err(
                "`0` has no unit: write a number with a unit, such as 250ms, 5s, 1m or 1h"
                    .to_string()
            )
        );
        assert_eq!(
            parse_duration("5x"),
            Err("`5x` has an unknown unit `x`: write a number with a unit, such as 250ms, 5s, 1m or 1h".to_string())
        );
        assert_eq!(
            parse_duration("soon"),
            Err(
                "`soon` is not a duration: write a number with a unit, such as 250ms, 5s, 1m or 1h"
                    .to_string()
            )
        );
        assert_eq!(
            parse_duration(""),
            Err(
                "empty duration: write a number with a unit, such as 250ms, 5s, 1m or 1h"
                    .to_string()
            )
        );
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
