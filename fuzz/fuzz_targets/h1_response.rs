//! Whatever an upstream sends, veer's HTTP/1.1 response parser answers
//! (a response, or a reason to refuse it) and never panics: a panic in the
//! release build aborts the whole proxy. The first byte picks the request
//! method, since HEAD changes the framing.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use veer::upstream::h1::parse_whole;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let method = match first % 4 {
        0 => Method::HEAD,
        1 => Method::POST,
        _ => Method::GET,
    };
    if let Ok(parsed) = parse_whole(bytes, &method) {
        // A body never holds more than was sent.
        assert!(parsed.body.len() <= bytes.len());
    }
});
