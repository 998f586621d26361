//! gRPC as veer sees it. A gRPC server answers almost every call with HTTP
//! `200` and puts the call's real outcome in `grpc-status`: in the trailers,
//! or in the headers of a trailers-only response. This module reads that
//! status, says whether it is the version's fault, reads the caller's
//! deadline (`grpc-timeout`), bounds the method names veer keeps figures for
//! (`methods`), and builds veer's own answers to gRPC clients.
//!
//! Pure: it depends on `http` only, and nothing here allocates on the request
//! path except `message`, which only veer's own (failure) answers use.

pub mod methods;

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::StatusCode;

pub const STATUS: &str = "grpc-status";
pub const MESSAGE: &str = "grpc-message";
pub const TIMEOUT: &str = "grpc-timeout";

/// The gRPC status codes (`google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// How a call's outcome reads: a status, or none at all (the stream ended,
/// or the answer came, without a `grpc-status`).
pub type Status = Option<Code>;

/// The label of a call that ended without any `grpc-status`.
pub const NO_STATUS: &str = "NO_STATUS";

/// The number of distinct outcomes: the 17 codes and "no status".
pub const OUTCOMES: usize = 18;

impl Code {
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The name the gRPC spec gives the code (`INTERNAL`), as written in the
    /// config and in the `grpc_code` label.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// A code by its spec name, in any case (`internal`, `INTERNAL`).
    pub fn from_name(name: &str) -> Option<Code> {
        Code::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// A code by number; `None` beyond 16.
    pub fn from_number(n: u64) -> Option<Code> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Code::ALL.get(i))
            .copied()
    }

    /// The `grpc-status` header value.
    pub fn header_value(self) -> HeaderValue {
        const VALUES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        HeaderValue::from_static(VALUES[self as usize])
    }

    /// What a gRPC client makes of an HTTP status that came without a
    /// `grpc-status` (the gRPC spec's HTTP-to-gRPC status mapping).
    pub fn from_http(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// The index of an outcome among `OUTCOMES` (codes by number, then none).
pub fn outcome_index(status: Status) -> usize {
    status.map_or(OUTCOMES - 1, |c| c as usize)
}

/// The label of an outcome.
pub fn outcome_name(status: Status) -> &'static str {
    status.map_or(NO_STATUS, Code::name)
}

/// Which codes count as the version's errors: a set of the 17 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCodes(u32);

impl ErrorCodes {
    pub const fn empty() -> ErrorCodes {
        ErrorCodes(0)
    }

    pub const fn with(self, code: Code) -> ErrorCodes {
        ErrorCodes(self.0 | 1 << code as u32)
    }

    pub fn contains(self, code: Code) -> bool {
        self.0 & 1 << code as u32 != 0
    }

    pub fn codes(self) -> impl Iterator<Item = Code> {
        Code::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// Whether a call that ended with `status` is the version's error. A call
    /// with no status at all always is: a server that answers a gRPC call
    /// properly always sends one.
    #[inline]
    pub fn is_error(self, status: Status) -> bool {
        status.is_none_or(|c| self.contains(c))
    }
}

/// The codes a server answers for its own failures. The codes a caller
/// brings on itself (a bad argument, a missing entity, no permission, its own
/// cancellation) are not the version's fault, and a release that is healthy
/// answers them as often as the one before.
impl Default for ErrorCodes {
    fn default() -> Self {
        ErrorCodes::empty()
            .with(Code::Unknown)
            .with(Code::DeadlineExceeded)
            .with(Code::Internal)
            .with(Code::Unavailable)
            .with(Code::DataLoss)
    }
}

/// What kind of gRPC a message is, by its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/grpc`, `application/grpc+proto`, …: the status is in
    /// the HTTP trailers.
    Grpc,
    /// `application/grpc-web*`: the trailers travel inside the body, so only
    /// a trailers-only answer's status is visible to veer.
    Web,
}

/// The gRPC kind of a request or response, or `None` for plain HTTP.
#[inline]
pub fn kind(headers: &HeaderMap) -> Option<Kind> {
    let value = headers.get(CONTENT_TYPE)?.as_bytes();
    let rest = value
        .get(..16)
        .filter(|p| p.eq_ignore_ascii_case(b"application/grpc"))
        .map(|_| &value[16..])?;
    match rest.first() {
        None | Some(b'+' | b';') => Some(Kind::Grpc),
        Some(b'-') if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"-web") => Some(Kind::Web),
        _ => None,
    }
}

/// The `grpc-status` in `headers`, if there is one. A value that is not a
/// number, or a number beyond the known codes, reads as `UNKNOWN` (as gRPC
/// clients read it).
#[inline]
pub fn status_in(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(STATUS)?.as_bytes();
    let number = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(number.and_then(Code::from_number).unwrap_or(Code::Unknown))
}

/// The outcome of a call from its response head: the status of a
/// trailers-only answer, the gRPC reading of a non-200 HTTP status, or
/// `None` when the status must come from the trailers.
#[inline]
pub fn status_from_head(status: StatusCode, headers: &HeaderMap) -> Option<Code> {
    status_in(headers).or_else(|| (status != StatusCode::OK).then(|| Code::from_http(status)))
}

/// A gRPC call in flight: what its response head said and how its end is
/// judged. Made when the head arrives, read when the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub kind: Kind,
    /// The status known from the head: a trailers-only answer's, a non-200
    /// HTTP status read as gRPC, or the code veer answered with itself.
    pub head: Option<Code>,
    /// The method's slot in the version's `methods::MethodTable`.
    pub method: usize,
    pub errors: ErrorCodes,
}

/// How a gRPC call ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub status: Status,
    /// Whether the version is to blame.
    pub error: bool,
    pub method: usize,
}

impl Call {
    /// Judges the call when its stream ends. `version_failed`: the stream
    /// broke, or no upstream answered (veer's own answer); `client_fault`:
    /// the caller went away or broke its own request.
    pub fn end(
        &self,
        trailers: Option<&HeaderMap>,
        version_failed: bool,
        client_fault: bool,
    ) -> Ended {
        let (status, error) = if client_fault {
            // Whatever the upstream would have said, the caller cancelled.
            (self.head.or(Some(Code::Cancelled)), false)
        } else if version_failed {
            (self.head, true)
        } else {
            let status = self.head.or_else(|| trailers.and_then(status_in));
            match (self.kind, status) {
                // grpc-web's trailers travel in the body, out of sight: a
                // complete answer without a visible status is not judged.
                (Kind::Web, None) => (None, false),
                (_, status) => (status, self.errors.is_error(status)),
            }
        };
        Ended {
            status,
            error,
            method: self.method,
        }
    }
}

/// The caller's deadline from `grpc-timeout`: 1 to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent or malformed (then
/// the call is bounded by `timeouts.request` alone, as without one).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(TIMEOUT)?.as_bytes())
}

pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-message` value: the text percent-encoded as the gRPC spec asks
/// (every byte outside printable ASCII, and `%`).
pub fn message(text: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
            encoded.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 0xf)]));
        }
    }
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn codes_by_name_and_number() {
        for (i, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, i);
            assert_eq!(Code::from_number(i as u64), Some(code));
            assert_eq!(Code::from_name(code.name()), Some(code));
            assert_eq!(code.header_value().to_str().ok(), Some(&*i.to_string()));
        }
        assert_eq!(Code::from_name("internal"), Some(Code::Internal));
        assert_eq!(Code::from_name("INTERNAL_ERROR"), None);
        assert_eq!(Code::from_number(17), None);
        assert_eq!(outcome_index(None), 17);
        assert_eq!(outcome_name(None), "NO_STATUS");
    }

    #[test]
    fn the_default_counts_server_side_codes_only() {
        let errors = ErrorCodes::default();
        let counted: Vec<_> = errors.codes().map(Code::name).collect();
        assert_eq!(
            counted,
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
        for caller in [
            Code::Ok,
            Code::Cancelled,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::OutOfRange,
        ] {
            assert!(!errors.is_error(Some(caller)), "{caller:?}");
        }
        assert!(errors.is_error(None), "no status at all is an error");
        assert!(ErrorCodes::empty().is_error(None));
    }

    #[test]
    fn content_types() {
        let of = |ct: &'static str| kind(&headers(&[("content-type", ct)]));
        assert_eq!(of("application/grpc"), Some(Kind::Grpc));
        assert_eq!(of("application/grpc+proto"), Some(Kind::Grpc));
        assert_eq!(of("Application/GRPC;charset=utf-8"), Some(Kind::Grpc));
        assert_eq!(of("application/grpc-web"), Some(Kind::Web));
        assert_eq!(of("application/grpc-web-text+proto"), Some(Kind::Web));
        assert_eq!(of("application/grpcx"), None);
        assert_eq!(of("application/json"), None);
        assert_eq!(of("application/grp"), None);
        assert_eq!(kind(&HeaderMap::new()), None);
    }

    #[test]
    fn status_from_trailers_or_head() {
        assert_eq!(
            status_in(&headers(&[("grpc-status", "13")])),
            Some(Code::Internal)
        );
        assert_eq!(status_in(&headers(&[("grpc-status", "0")])), Some(Code::Ok));
        assert_eq!(
            status_in(&headers(&[("grpc-status", "99")])),
            Some(Code::Unknown),
            "an unknown number reads as UNKNOWN"
        );
        assert_eq!(
            status_in(&headers(&[("grpc-status", "oops")])),
            Some(Code::Unknown)
        );
        assert_eq!(status_in(&HeaderMap::new()), None);

        let trailers_only = headers(&[("grpc-status", "5")]);
        assert_eq!(
            status_from_head(StatusCode::OK, &trailers_only),
            Some(Code::NotFound)
        );
        assert_eq!(status_from_head(StatusCode::OK, &HeaderMap::new()), None);
        assert_eq!(
            status_from_head(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
            Some(Code::Unavailable)
        );
        assert_eq!(
            status_from_head(StatusCode::NOT_FOUND, &HeaderMap::new()),
            Some(Code::Unimplemented)
        );
        assert_eq!(
            status_from_head(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()),
            Some(Code::Unknown)
        );
    }

    #[test]
    fn a_call_is_judged_by_the_status_it_ended_with() {
        let call = Call {
            kind: Kind::Grpc,
            head: None,
            method: 3,
            errors: ErrorCodes::default(),
        };
        let ok = headers(&[("grpc-status", "0")]);
        let internal = headers(&[("grpc-status", "13")]);
        let not_found = headers(&[("grpc-status", "5")]);
        let end = |c: &Call, t: Option<&HeaderMap>| {
            let e = c.end(t, false, false);
            (e.status, e.error)
        };
        assert_eq!(end(&call, Some(&ok)), (Some(Code::Ok), false));
        assert_eq!(end(&call, Some(&internal)), (Some(Code::Internal), true));
        assert_eq!(end(&call, Some(&not_found)), (Some(Code::NotFound), false));
        assert_eq!(end(&call, None), (None, true), "no status at all");
        assert_eq!(call.end(None, false, false).method, 3);

        let trailers_only = Call {
            head: Some(Code::Unavailable),
            ..call
        };
        assert_eq!(end(&trailers_only, None), (Some(Code::Unavailable), true));

        let reset = call.end(Some(&ok), true, false);
        assert_eq!((reset.status, reset.error), (None, true));
        let gone = call.end(None, false, true);
        assert_eq!((gone.status, gone.error), (Some(Code::Cancelled), false));

        let web = Call {
            kind: Kind::Web,
            ..call
        };
        assert_eq!(end(&web, None), (None, false), "grpc-web: status unseen");
        let web_only = Call {
            head: Some(Code::Internal),
            ..web
        };
        assert_eq!(end(&web_only, None), (Some(Code::Internal), true));
    }

    #[test]
    fn timeouts() {
        let t = |v: &str| parse_timeout(v.as_bytes());
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("10n"), Some(Duration::from_nanos(10)));
        assert_eq!(t("0m"), Some(Duration::ZERO));
        for bad in ["", "m", "100", "123456789m", "1x", "-1m", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(
            timeout(&headers(&[("grpc-timeout", "100m")])),
            Some(Duration::from_millis(100))
        );
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("no endpoint"), "no endpoint");
        assert_eq!(message("100% down"), "100%25 down");
        assert_eq!(message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }
}
