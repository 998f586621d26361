//! The `Connection` header's tokens (RFC 9110 §7.6.1), read one way for the
//! three places that ask: may a client's connection park (`close`), does an
//! upstream keep its connection (`close`, `keep-alive`), is a request an
//! upgrade (`upgrade`). Read as hyper reads them, so that veer and hyper
//! never disagree on a connection: a value that is not visible ASCII names
//! no token; tokens are split on commas, trimmed of ASCII spaces and
//! compared as bytes, ASCII case-insensitively. No allocation.
//!
//! A leaf: depends on `http` only.

use http::header::CONNECTION;
use http::HeaderMap;

/// Every token of every `Connection` value, in order.
pub fn tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter(|value| value.to_str().is_ok())
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether `Connection` names `token` (given in lower case or not).
pub fn names(headers: &HeaderMap, token: &[u8]) -> bool {
    tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                CONNECTION,
                HeaderValue::from_bytes(value).expect("a header value"),
            );
        }
        headers
    }

    #[test]
    fn tokens_are_found_in_any_value_any_case_any_spacing() {
        let h = headers(&[b"keep-alive", b" Upgrade ,  CLOSE"]);
        assert!(names(&h, b"close"));
        assert!(names(&h, b"upgrade"));
        assert!(names(&h, b"keep-alive"));
        assert!(!names(&h, b"te"));
        assert_eq!(
            tokens(&h).collect::<Vec<_>>(),
            [&b"keep-alive"[..], b"Upgrade", b"CLOSE"]
        );
        // A token is whole: `closed` is not `close`, nor is `close` inside
        // another word.
        assert!(!names(&headers(&[b"closed, x-close"]), b"close"));
        assert!(!names(&HeaderMap::new(), b"close"));
    }

    #[test]
    fn a_value_that_is_not_visible_ascii_names_nothing_as_hyper_reads_it() {
        // obs-text (0x80 and up) makes the whole value unreadable as a
        // string: hyper then sees no `close` in it, and neither does veer.
        let h = headers(&[b"close, \xff"]);
        assert!(!names(&h, b"close"));
        // The other values still count.
        let h = headers(&[b"\xffx", b"close"]);
        assert!(names(&h, b"close"));
    }
}
