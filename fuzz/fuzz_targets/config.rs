//! Whatever a config file holds, the loader (`veer check`, `veer run`, every
//! reload) answers with a config or placed errors, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veer::config::parse_str;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = parse_str(text, "fuzz.yaml") {
        for error in errors.0 {
            assert!(error.line >= 1 && error.column >= 1);
            assert!(!error.reason.is_empty());
        }
    }
});
