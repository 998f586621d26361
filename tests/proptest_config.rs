//! Properties of the config loader (`veer check`, `veer run` and every
//! reload go through it): no text or file content makes it panic, and every
//! error it gives names a line, a column, a field and a reason, as the
//! contract promises. Inputs are arbitrary text, arbitrary file bytes, and
//! the example config with its values swapped for hostile ones or its bytes
//! damaged, which reaches the validation behind the YAML parser. Case counts
//! are bounded so `cargo test` stays quick; `fuzz/` runs longer.

use proptest::prelude::*;
use veer::config::{load_file, parse_str, ConfigErrors};

const EXAMPLE: &str = include_str!("../config/veer.yaml");

/// Values that break naive validators: overflowing numbers and durations,
/// YAML's special scalars, empty and nested forms, bad addresses.
const HOSTILE: &[&str] = &[
    "",
    "~",
    "null",
    "[]",
    "{}",
    "[[[]]]",
    "0",
    "-1",
    "1e999",
    ".inf",
    "-.inf",
    ".nan",
    "18446744073709551616",
    "99999999999999999999999",
    "0ms",
    "1ns",
    "18446744073709551615s",
    "99999999999999h",
    "1m30",
    "-5s",
    "5 s",
    "0.0.0.0:99999",
    "[::1]:0",
    "localhost",
    ":80",
    "1.5",
    "-0.1",
    "true",
    "\"\\u0000\"",
    "&a [*a]",
    "*undefined",
    "!!binary aGVsbG8=",
    "/",
    "*",
    "*.",
    "é",
];

fn check_errors(result: Result<veer::config::Config, ConfigErrors>) -> Result<(), TestCaseError> {
    if let Err(ConfigErrors(errors)) = result {
        prop_assert!(!errors.is_empty(), "a refusal must say why");
        for error in errors {
            prop_assert!(error.line >= 1 && error.column >= 1, "{error:?}");
            prop_assert!(!error.path.is_empty(), "{error:?}");
            prop_assert!(!error.reason.trim().is_empty(), "{error:?}");
        }
    }
    Ok(())
}

/// The example with the values of some `key: value` lines replaced.
fn hostile_example() -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = EXAMPLE.lines().collect();
    let count = lines.len();
    proptest::collection::vec((0..count, 0..HOSTILE.len()), 1..6).prop_map(move |swaps| {
        let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for (line, value) in swaps {
            let text = &lines[line];
            if text.trim_start().starts_with('#') {
                continue;
            }
            if let Some(colon) = text.find(": ") {
                lines[line] = format!("{}: {}", &text[..colon], HOSTILE[value]);
            }
        }
        lines.join("\n")
    })
}

/// The example with a few byte ranges deleted, duplicated or overwritten.
fn damaged_example() -> impl Strategy<Value = Vec<u8>> {
    let len = EXAMPLE.len();
    proptest::collection::vec((0..len, 0..len, any::<u8>(), 0..3u8), 1..4).prop_map(move |edits| {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for (a, b, byte, kind) in edits {
            let (start, end) = (a.min(b) % bytes.len().max(1), a.max(b) % bytes.len().max(1));
            let (start, end) = (start.min(end), start.max(end).min(start + 64));
            match kind {
                0 => {
                    bytes.drain(start..end);
                }
                1 => {
                    let copy = bytes[start..end].to_vec();
                    bytes.splice(start..start, copy);
                }
                _ => {
                    if let Some(b) = bytes.get_mut(start) {
                        *b = byte;
                    }
                }
            }
        }
        bytes
    })
}

#[test]
fn the_example_config_is_valid() {
    assert!(parse_str(EXAMPLE, "veer.yaml").is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        check_errors(parse_str(&text, "fuzz.yaml"))?;
    }

    #[test]
    fn yaml_like_text_never_panics(text in "([ -]{0,6}[a-z_]{1,12}: ?[ -~]{0,20}\n){0,20}") {
        check_errors(parse_str(&text, "fuzz.yaml"))?;
    }

    #[test]
    fn hostile_values_in_the_example_never_panic(text in hostile_example()) {
        check_errors(parse_str(&text, "veer.yaml"))?;
    }

    #[test]
    fn damaged_example_bytes_never_panic(bytes in damaged_example()) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            check_errors(parse_str(text, "veer.yaml"))?;
        }
    }
}

proptest! {
    // Each case writes a file: fewer of them.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_file_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("veer.yaml");
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_errors(load_file(&path))?;
    }
}
