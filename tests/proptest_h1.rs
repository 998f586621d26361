//! Properties of veer's HTTP/1.1 response parser (`upstream::h1`), which reads
//! whatever an upstream sends: no byte sequence makes it panic (the release
//! build aborts on panic, so one would take the whole proxy down), it accepts
//! exactly the heads `httparse` accepts (less only those whose framing it
//! must refuse), and bodies framed any valid way decode to what was sent.
//! Case counts are bounded so `cargo test` stays quick; `fuzz/` runs the same
//! entry points for as long as one likes.

use bytes::BytesMut;
use http::Method;
use proptest::prelude::*;
use veer::upstream::h1::{parse_head, parse_whole, ExchangeError};

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        1 => Just(Method::HEAD),
        1 => Just(Method::POST),
    ]
}

/// Bytes that look like a response head often enough to get past the status
/// line: a status line, header lines from a pool of names (framing ones
/// included) with values of every kind, in CRLF or bare LF, then a body.
fn response_like() -> impl Strategy<Value = Vec<u8>> {
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0"),
        Just("http/1.1"),
        Just("HTTP/1.1 ")
    ];
    let status = prop_oneof![
        Just("200".to_string()),
        Just("204".to_string()),
        Just("304".to_string()),
        Just("100".to_string()),
        Just("101".to_string()),
        Just("103".to_string()),
        "[0-9]{1,4}",
    ];
    let name = prop_oneof![
        Just("content-length".to_string()),
        Just("transfer-encoding".to_string()),
        Just("connection".to_string()),
        Just("Content-Length".to_string()),
        "[!-~]{1,12}",
        "[a-z -]{0,8}",
    ];
    let value = prop_oneof![
        "[0-9]{1,22}",
        Just("chunked".to_string()),
        Just("gzip, chunked".to_string()),
        Just("chunked, gzip".to_string()),
        Just("close".to_string()),
        Just("keep-alive".to_string()),
        Just("5, 5".to_string()),
        Just("5, 6".to_string()),
        "[ -~]{0,16}",
        proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let eol = prop_oneof![4 => Just("\r\n"), 1 => Just("\n")];
    (
        version,
        status,
        proptest::collection::vec((name, value), 0..8),
        eol,
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(version, status, headers, eol, body, chunk_body)| {
            let mut out = format!("{version} {status} OK{eol}").into_bytes();
            for (name, value) in headers {
                out.extend_from_slice(format!("{name}: {value}{eol}").as_bytes());
            }
            out.extend_from_slice(eol.as_bytes());
            if chunk_body {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n0\r\n\r\n");
            } else {
                out.extend_from_slice(&body);
            }
            out
        })
}

/// What `httparse` alone makes of `bytes` as the first response head.
enum Reference {
    Invalid,
    Partial,
    Interim,
    Final { code: u16, headers: usize },
}

fn reference(bytes: &[u8]) -> Reference {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut response = httparse::Response::new(&mut headers);
    match httparse::ParserConfig::default().parse_response(&mut response, bytes) {
        Err(_) => Reference::Invalid,
        Ok(httparse::Status::Partial) => Reference::Partial,
        Ok(httparse::Status::Complete(_)) => {
            let code = response.code.unwrap_or(0);
            if (100..200).contains(&code) {
                Reference::Interim
            } else {
                Reference::Final {
                    code,
                    headers: response.headers.len(),
                }
            }
        }
    }
}

/// Checks veer's reading of `bytes` against `httparse`'s.
fn agrees(bytes: &[u8], method: &Method) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let ours = parse_head(&mut buf, method);
    match (reference(bytes), &ours) {
        (Reference::Invalid, Err(ExchangeError::Protocol(_))) => {}
        (Reference::Partial, Ok(None)) => {}
        // veer skips interim heads and reads on: what follows decides.
        (Reference::Interim, _) => {}
        (Reference::Final { code, headers }, Ok(Some(head))) => {
            prop_assert_eq!(head.status.as_u16(), code);
            prop_assert_eq!(head.headers.len(), headers);
        }
        // A head httparse takes may still be refused for its framing (or a
        // status outside 100..=999), never for anything else.
        (Reference::Final { code, .. }, Err(ExchangeError::Protocol(why))) => {
            let framing = why.contains("Content-Length")
                || why.contains("Transfer-Encoding")
                || why.contains("invalid status code");
            prop_assert!(framing, "{code}: refused for {why}");
        }
        (_, ours) => prop_assert!(false, "httparse and veer disagree: {ours:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024), method in method()) {
        let _ = parse_whole(&bytes, &method);
        agrees(&bytes, &method)?;
    }

    #[test]
    fn response_like_bytes_never_panic_and_agree_with_httparse(bytes in response_like(), method in method()) {
        let _ = parse_whole(&bytes, &method);
        agrees(&bytes, &method)?;
        // Every prefix is either not yet a head, or read the same way.
        for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            let _ = parse_whole(&bytes[..cut], &method);
            agrees(&bytes[..cut], &method)?;
        }
    }

    #[test]
    fn chunked_bodies_decode_to_what_was_sent(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..8),
        extension in proptest::option::of("[a-z]{1,8}(=[a-z0-9]{0,8})?"),
        trailer in proptest::option::of("[a-z]{1,8}"),
        upper in any::<bool>(),
    ) {
        let mut bytes = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut sent = Vec::new();
        for chunk in &chunks {
            let size = if upper { format!("{:X}", chunk.len()) } else { format!("{:x}", chunk.len()) };
            bytes.extend_from_slice(size.as_bytes());
            if let Some(ext) = &extension {
                bytes.extend_from_slice(format!(";{ext}").as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
            sent.extend_from_slice(chunk);
        }
        bytes.extend_from_slice(b"0\r\n");
        if let Some(name) = &trailer {
            bytes.extend_from_slice(format!("x-{name}: done\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        let parsed = parse_whole(&bytes, &Method::GET).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&parsed.body, &sent);
        prop_assert!(parsed.reusable);
        prop_assert_eq!(parsed.trailers.is_some(), trailer.is_some());
        // Cut anywhere before its end, the body is never complete.
        for cut in [bytes.len() - 1, bytes.len() - 3, bytes.len() / 2] {
            prop_assert!(parse_whole(&bytes[..cut], &Method::GET).is_err(), "complete at {}", cut);
        }
    }

    #[test]
    fn length_framed_bodies_decode_to_what_was_sent(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        extra in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut bytes = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        let parsed = parse_whole(&bytes, &Method::GET).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&parsed.body, &body);
        prop_assert!(parsed.reusable);
        if !body.is_empty() {
            prop_assert!(parse_whole(&bytes[..bytes.len() - 1], &Method::GET).is_err());
        }
        // Bytes beyond the length are not part of it, and end the connection.
        bytes.extend_from_slice(&extra);
        let parsed = parse_whole(&bytes, &Method::GET).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&parsed.body, &body);
        prop_assert_eq!(parsed.reusable, extra.is_empty());
    }
}
