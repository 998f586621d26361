//! HTTP/1.1 to a plain-TCP upstream, driven by the request's own task.
//!
//! hyper's client connection is a task of its own: every request crosses a
//! channel to it, wakes it, and comes back through a oneshot, and every
//! response head is parsed into a fresh `HeaderMap` there. For the common
//! exchange (a request without a body on a keep-alive connection) that is
//! more than a third of veer's user-space instructions per request. Here the
//! request future writes the head itself, reads the response head into the
//! connection's buffer, and the response body (`Body`) reads the rest from
//! the same socket while the client consumes it. Header values are slices of
//! the buffer they arrived in; nothing is copied.
//!
//! What is not this simple goes through hyper (`endpoint.rs` decides):
//! requests with a body (the response may come before the body is sent),
//! upgrades and CONNECT, TLS and HTTP/2.
//!
//! Framing follows RFC 9112 §6.3, rule for rule as hyper's client applies
//! it (a differential test holds the two to the same answers): no body for
//! HEAD, 1xx, 204 and 304; `Transfer-Encoding` on an HTTP/1.0 response is
//! refused; `Transfer-Encoding` (chunked, else read to close) over
//! `Content-Length`, which must be one valid number however often repeated;
//! neither means read to close. A connection is reused only when its body
//! ended exactly where its framing said, nothing followed it, the upstream
//! did not ask to close, and the head did not carry both `Transfer-Encoding`
//! and `Content-Length` (a sign of response splitting: RFC 9112 §6.1 says
//! close after it).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A response head that has not ended within this many bytes is refused:
/// the limit of hyper's client read buffer (8 KiB plus 4 KiB for each of
/// 100 headers), so both paths accept the same heads.
const MAX_HEAD: usize = 8 * 1024 + 4 * 1024 * MAX_HEADERS;
/// Response headers (and chunked trailers) parsed at most; hyper's default.
const MAX_HEADERS: usize = 100;
/// The read buffer's first size, and what it is shrunk back to when a
/// connection returns to the pool after a large body.
const READ_CHUNK: usize = 8 * 1024;
/// Reads of a large body take up to this much at once.
const MAX_READ: usize = 64 * 1024;
/// Chunk extensions (which veer ignores, as hyper does) may take this many
/// bytes over a whole body, and trailers this many: hyper's limits.
const MAX_EXTENSIONS: u64 = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// A chunk-size line still unfinished at this length is refused: the size
/// (16 hex digits at most) and every extension byte a body may have.
const MAX_CHUNK_LINE: usize = MAX_EXTENSIONS as usize + 64;

/// One plain-TCP connection to an upstream, with the bytes read from it but
/// not consumed yet.
pub struct Connection {
    io: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

/// Why an exchange gave no response head.
#[derive(Debug)]
pub enum ExchangeError {
    /// The head could not be written: the connection was already closed by
    /// the upstream. Nothing of the request was taken.
    Unwritten(io::Error),
    /// The request was written and the connection closed (or broke) before a
    /// single byte came back.
    NothingBack(String),
    /// The connection broke in the middle of the response head.
    Broken(String),
    /// The upstream answered something that is not HTTP/1.x.
    Protocol(String),
}

impl Connection {
    pub fn new(io: TcpStream) -> Box<Connection> {
        Box::new(Connection {
            io,
            read: BytesMut::new(),
            write: Vec::with_capacity(512),
        })
    }

    /// True when the upstream has not closed this idle connection, nor sent
    /// anything on it, as far as the runtime has seen; costs no system call
    /// unless the socket was signalled.
    pub fn is_idle_and_open(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Signalled: an end of stream, unsolicited bytes, or a readiness
            // left over from the last response. Only the last is fine.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes `request`'s head (it has no body) and reads the response head.
    /// 1xx interim responses are skipped.
    pub async fn exchange<B>(
        &mut self,
        request: &Request<B>,
    ) -> Result<ResponseHead, ExchangeError> {
        encode_head(request, &mut self.write);
        self.io
            .write_all(&self.write)
            .await
            .map_err(ExchangeError::Unwritten)?;
        let mut received_any = false;
        loop {
            // A pooled connection's buffer is empty when the request goes
            // out: nothing to parse before the first read.
            if !self.read.is_empty() {
                if let Some(head) = parse_head(&mut self.read, request.method())? {
                    return Ok(head);
                }
            }
            if self.read.len() >= MAX_HEAD {
                return Err(ExchangeError::Protocol(format!(
                    "response head larger than {} KiB",
                    MAX_HEAD / 1024
                )));
            }
            self.read.reserve(READ_CHUNK);
            let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.read).await;
            match read {
                Ok(0) if !received_any => {
                    return Err(ExchangeError::NothingBack(
                        "connection closed before any response".to_string(),
                    ))
                }
                Err(e) if !received_any => return Err(ExchangeError::NothingBack(e.to_string())),
                Ok(0) => {
                    return Err(ExchangeError::Broken(
                        "connection closed in the middle of the response head".to_string(),
                    ))
                }
                Err(e) => return Err(ExchangeError::Broken(e.to_string())),
                Ok(_) => received_any = true,
            }
        }
    }

    /// Hands back the read buffer to its first size after a large body, so
    /// an idle connection holds little memory.
    fn shrink(&mut self) {
        if self.read.capacity() > 2 * READ_CHUNK {
            self.read = BytesMut::new();
        }
    }
}

/// Parses a complete final response head off the front of `read` (1xx
/// interim heads before it are consumed and skipped), if there is one;
/// `Ok(None)` asks for more bytes. Never panics, whatever the bytes (a
/// property test and a fuzz target hold it to that).
pub fn parse_head(
    read: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ExchangeError> {
    loop {
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, read, &mut storage)
            .map_err(|e| ExchangeError::Protocol(format!("invalid response head: {e}")))?;
        let httparse::Status::Complete(head_len) = status else {
            return Ok(None);
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| ExchangeError::Protocol(format!("invalid status code {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::Protocol(
                    "101 Switching Protocols to a request that asked for no upgrade".to_string(),
                ));
            }
            // 100 Continue, 103 Early Hints: the final answer follows.
            let _ = read.split_to(head_len);
            continue;
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Header positions, so the values can be slices of the head once
        // it is split off the buffer (the parse borrows the buffer).
        let base = read.as_ptr() as usize;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = parsed.headers.len();
        for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = header.name.as_ptr() as usize - base;
            let value = header.value.as_ptr() as usize - base;
            // Offsets fit: the head is at most MAX_HEAD plus one read.
            *span = (
                name as u32,
                (name + header.name.len()) as u32,
                value as u32,
                (value + header.value.len()) as u32,
            );
        }
        let head = read.split_to(head_len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &(name_start, name_end, value_start, value_end) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
                .map_err(|_| {
                    ExchangeError::Protocol("invalid header name in the response".to_string())
                })?;
            let value = HeaderValue::from_maybe_shared(
                head.slice(value_start as usize..value_end as usize),
            )
            .map_err(|_| ExchangeError::Protocol(format!("invalid value for header {name}")))?;
            headers.append(name, value);
        }
        let framing = framing(method, status, version, &headers)?;
        let keep_alive = framing.reusable() && wants_keep_alive(version, &headers);
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// `METHOD /path?query HTTP/1.1`, the headers as they are, and the blank line.
fn encode_head<B>(request: &Request<B>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = match request.uri().path_and_query() {
        Some(pq) => pq.as_str(),
        None if request.method() == Method::OPTIONS => "*",
        None => "/",
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A final response head, before its body.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl ResponseHead {
    /// The response, whose body reads the rest from `connection`.
    pub fn into_response(self, connection: Box<Connection>, addr: SocketAddr) -> Response<Body> {
        let mut response = Response::new(Body {
            connection: Some(connection),
            state: self.framing.initial_state(),
            extensions: 0,
            keep_alive: self.keep_alive,
            addr,
        });
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Chunked, though the head also gave a `Content-Length`: maybe a
    /// response split in two, so the connection is not trusted after it.
    ChunkedThenClose,
    UntilClose,
}

impl Framing {
    fn reusable(self) -> bool {
        matches!(self, Framing::Length(_) | Framing::Chunked)
    }

    fn initial_state(self) -> State {
        match self {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked | Framing::ChunkedThenClose => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        }
    }
}

fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<Framing, ExchangeError> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        // HTTP/1.0 has no transfer codings: a peer that sends one has framed
        // its message in a way the two ends cannot agree on (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Err(ExchangeError::Protocol(
                "Transfer-Encoding in an HTTP/1.0 response".to_string(),
            ));
        }
        let chunked = last
            .to_str()
            .ok()
            .and_then(|codings| codings.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if !chunked {
            Framing::UntilClose
        } else if headers.contains_key(CONTENT_LENGTH) {
            Framing::ChunkedThenClose
        } else {
            Framing::Chunked
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part).ok_or_else(|| {
                ExchangeError::Protocol(format!(
                    "invalid Content-Length {:?} in the response",
                    String::from_utf8_lossy(value.as_bytes())
                ))
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Protocol(
                    "conflicting Content-Length values in the response".to_string(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Digits only (no sign, no hex), any number of them as long as the value
/// fits; the two largest `u64`s are refused as hyper refuses them (it keeps
/// them as markers for chunked and close-delimited bodies).
fn parse_length(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for &d in text {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    (n <= u64::MAX - 2).then_some(n)
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes it
/// unless told `keep-alive`.
fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    use crate::connection_header::names;
    if version == Version::HTTP_10 {
        names(headers, b"keep-alive")
    } else {
        !names(headers, b"close")
    }
}

/// The response body, read from the connection as the client takes it.
pub struct Body {
    /// `None` once the body has failed.
    connection: Option<Box<Connection>>,
    state: State,
    /// Chunk-extension bytes seen so far.
    extensions: u64,
    keep_alive: bool,
    addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

use super::body::BoxError;

impl Body {
    /// The connection, when the body was read exactly to its end and the
    /// upstream keeps it open: ready for the next request.
    pub fn take_reusable(&mut self) -> Option<Box<Connection>> {
        if self.state != State::Done || !self.keep_alive {
            return None;
        }
        let mut connection = self.connection.take()?;
        // Bytes beyond the body are not a response to anything we sent.
        if !connection.read.is_empty() {
            return None;
        }
        connection.shrink();
        Some(connection)
    }

    fn fail(&mut self, what: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.connection = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(io::Error::other(format!(
            "upstream {}: {what}",
            self.addr
        ))
        .into())))
    }

    /// Reads more from the socket; `Ok(0)` is the end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let want = usize::try_from(want)
            .unwrap_or(MAX_READ)
            .clamp(READ_CHUNK, MAX_READ);
        connection.read.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut connection.io), cx, &mut connection.read)
    }
}

/// What the bytes buffered so far make of a body.
#[derive(Debug)]
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended where its framing said.
    End,
    /// Not enough bytes for the next step.
    More,
    Invalid(String),
}

/// Takes the next frame of a body in `state` off the front of `read`. Pure:
/// the socket is the caller's; this only looks at bytes.
fn decode(state: &mut State, extensions: &mut u64, read: &mut BytesMut) -> Step {
    loop {
        match *state {
            State::Done => return Step::End,
            State::Length(remaining) | State::ChunkData(remaining) if !read.is_empty() => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(read.len());
                let data = read.split_to(n).freeze();
                let left = remaining - n as u64;
                *state = match (*state, left) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), left) => State::Length(left),
                    (_, 0) => State::ChunkEnd,
                    (_, left) => State::ChunkData(left),
                };
                return Step::Data(data);
            }
            State::UntilClose if !read.is_empty() => {
                return Step::Data(read.split().freeze());
            }
            State::ChunkSize => match httparse::parse_chunk_size(read) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let line = &read[..used.saturating_sub(2)];
                    if let Some(semicolon) = line.iter().position(|&b| b == b';') {
                        *extensions += (line.len() - semicolon - 1) as u64;
                        if *extensions >= MAX_EXTENSIONS {
                            return Step::Invalid("chunk extensions over 16 KiB".to_string());
                        }
                    }
                    let _ = read.split_to(used);
                    *state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                Ok(httparse::Status::Partial) if read.len() < MAX_CHUNK_LINE => return Step::More,
                Ok(httparse::Status::Partial) => {
                    return Step::Invalid("chunk-size line too long".to_string())
                }
                Err(_) => return Step::Invalid("invalid chunk size".to_string()),
            },
            State::ChunkEnd => {
                if read.len() < 2 {
                    return Step::More;
                }
                if read[..2] != b"\r\n"[..] {
                    return Step::Invalid("chunk not followed by CRLF".to_string());
                }
                let _ = read.split_to(2);
                *state = State::ChunkSize;
            }
            State::Trailers => {
                let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
                return match httparse::parse_headers(read, &mut storage) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_TRAILERS => {
                        Step::Invalid("trailers over 16 KiB".to_string())
                    }
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let trailers = trailer_map(fields);
                        let _ = read.split_to(used);
                        *state = State::Done;
                        match trailers {
                            Some(map) if !map.is_empty() => Step::Trailers(map),
                            Some(_) => Step::End,
                            None => Step::Invalid("invalid trailer".to_string()),
                        }
                    }
                    Ok(httparse::Status::Partial) if read.len() < MAX_TRAILERS => Step::More,
                    Ok(httparse::Status::Partial) => {
                        Step::Invalid("trailers too large".to_string())
                    }
                    Err(e) => Step::Invalid(format!("invalid trailers: {e}")),
                };
            }
            State::Length(_) | State::ChunkData(_) | State::UntilClose => return Step::More,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                // Failed before, or read to its close.
                return Poll::Ready(None);
            };
            match decode(&mut this.state, &mut this.extensions, &mut connection.read) {
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::Trailers(map) => return Poll::Ready(Some(Ok(Frame::trailers(map)))),
                Step::End => return Poll::Ready(None),
                Step::Invalid(what) => return this.fail(what),
                Step::More => {}
            }
            // The buffer holds too little for the current state: read more.
            let want = match this.state {
                State::Length(n) | State::ChunkData(n) => n,
                _ => READ_CHUNK as u64,
            };
            match std::task::ready!(this.poll_fill(cx, want)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.state = State::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail("closed the connection before the body ended".to_string())
                }
                Ok(_) => {}
                Err(e) => return this.fail(format!("body read failed: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Reads one whole response to `method` out of `bytes` the way the exchange
/// does (interim heads skipped, the final head, its body to the end), with
/// `bytes` standing for everything the upstream sent before closing. For
/// property tests and fuzzing: whatever the bytes, an answer and never a
/// panic.
#[doc(hidden)]
pub fn parse_whole(bytes: &[u8], method: &Method) -> Result<Parsed, String> {
    let mut read = BytesMut::from(bytes);
    let head = match parse_head(&mut read, method) {
        Ok(Some(head)) => head,
        Ok(None) => return Err("incomplete head".to_string()),
        Err(e) => return Err(format!("{e:?}")),
    };
    let mut state = head.framing.initial_state();
    let mut extensions = 0;
    let mut body = Vec::new();
    let mut trailers = None;
    loop {
        match decode(&mut state, &mut extensions, &mut read) {
            Step::Data(data) => body.extend_from_slice(&data),
            Step::Trailers(map) => trailers = Some(map),
            Step::End => break,
            Step::More if state == State::UntilClose => break,
            Step::More => return Err("body cut off".to_string()),
            Step::Invalid(what) => return Err(what),
        }
    }
    Ok(Parsed {
        status: head.status,
        headers: head.headers,
        body,
        trailers,
        reusable: head.keep_alive && read.is_empty() && state != State::UntilClose,
    })
}

/// A whole response as [`parse_whole`] read it.
#[doc(hidden)]
#[derive(Debug)]
pub struct Parsed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// Whether the connection could carry another exchange.
    pub reusable: bool,
}

fn trailer_map(fields: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("addr", &self.addr)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.read.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let frame = |m: &Method, s: StatusCode, h: &[(&str, &str)]| {
            framing(m, s, Version::HTTP_11, &headers(h)).ok()
        };
        assert_eq!(
            frame(&get, ok, &[("content-length", "12")]),
            Some(Framing::Length(12))
        );
        assert_eq!(
            frame(&Method::HEAD, ok, &[("content-length", "12")]),
            Some(Framing::Length(0))
        );
        assert_eq!(
            frame(&get, StatusCode::NO_CONTENT, &[]),
            Some(Framing::Length(0))
        );
        assert_eq!(
            frame(&get, StatusCode::NOT_MODIFIED, &[("content-length", "9")]),
            Some(Framing::Length(0))
        );
        assert_eq!(frame(&get, ok, &[]), Some(Framing::UntilClose));
        // Transfer-Encoding wins over Content-Length; only a final chunked
        // coding is chunked framing.
        assert_eq!(
            frame(
                &get,
                ok,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "3")
                ]
            ),
            Some(Framing::ChunkedThenClose)
        );
        assert_eq!(
            frame(&get, ok, &[("transfer-encoding", "chunked")]),
            Some(Framing::Chunked)
        );
        assert_eq!(
            frame(&get, ok, &[("transfer-encoding", "gzip")]),
            Some(Framing::UntilClose)
        );
        // Repeated equal lengths are one length; different ones are refused.
        assert_eq!(
            frame(&get, ok, &[("content-length", "5, 5")]),
            Some(Framing::Length(5))
        );
        assert_eq!(
            frame(
                &get,
                ok,
                &[("content-length", "5"), ("content-length", "6")]
            ),
            None
        );
        for bad in [
            "",
            "-1",
            "+5",
            "0x10",
            "1 2",
            "5,",
            "99999999999999999999",
            "18446744073709551614",
        ] {
            assert_eq!(frame(&get, ok, &[("content-length", bad)]), None, "{bad:?}");
        }
        // Leading zeros are digits like any other.
        assert_eq!(
            frame(&get, ok, &[("content-length", "000000000000000000007")]),
            Some(Framing::Length(7))
        );
        assert_eq!(
            frame(&get, ok, &[("content-length", "18446744073709551613")]),
            Some(Framing::Length(u64::MAX - 2))
        );
    }

    #[test]
    fn transfer_encoding_on_http_10_is_refused_unless_there_is_no_body() {
        let te = headers(&[("transfer-encoding", "chunked")]);
        let ok = StatusCode::OK;
        let refused = framing(&Method::GET, ok, Version::HTTP_10, &te);
        assert!(
            matches!(&refused, Err(ExchangeError::Protocol(m)) if m == "Transfer-Encoding in an HTTP/1.0 response"),
            "{refused:?}"
        );
        // A HEAD answer or a 204 has no body to misframe.
        assert_eq!(
            framing(&Method::HEAD, ok, Version::HTTP_10, &te).ok(),
            Some(Framing::Length(0))
        );
        assert_eq!(
            framing(&Method::GET, StatusCode::NO_CONTENT, Version::HTTP_10, &te).ok(),
            Some(Framing::Length(0))
        );
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let v11 = Version::HTTP_11;
        let v10 = Version::HTTP_10;
        assert!(wants_keep_alive(v11, &headers(&[])));
        assert!(!wants_keep_alive(v11, &headers(&[("connection", "Close")])));
        assert!(!wants_keep_alive(
            v11,
            &headers(&[("connection", "te, close")])
        ));
        assert!(!wants_keep_alive(v10, &headers(&[])));
        assert!(wants_keep_alive(
            v10,
            &headers(&[("connection", "keep-alive")])
        ));
        assert!(!wants_keep_alive(
            v11,
            &headers(&[("connection", "upgrade"), ("connection", "\tCLOSE ")])
        ));
        // A value that is not visible ASCII names no token (hyper's reading).
        let mut obs_text = HeaderMap::new();
        obs_text.append(
            http::header::CONNECTION,
            HeaderValue::from_bytes(b"close, \xff").expect("obs-text is a valid value"),
        );
        assert!(wants_keep_alive(v11, &obs_text));
    }

    #[test]
    fn heads_up_to_the_header_limit_parse_whole_and_more_are_refused() {
        for count in [0, 1, 16, 17, MAX_HEADERS - 1] {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..count {
                head.push_str(&format!("x-h{i}: value {i}\r\n"));
            }
            head.push_str("content-length: 2\r\n\r\nok");
            let parsed = parse_whole(head.as_bytes(), &Method::GET).expect("parses");
            assert_eq!(parsed.headers.len(), count + 1, "{count} headers");
            for i in 0..count {
                assert_eq!(
                    parsed.headers[format!("x-h{i}").as_str()],
                    format!("value {i}")
                );
            }
            assert_eq!(parsed.body, b"ok");
        }
        let mut over = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            over.push_str(&format!("x-h{i}: v\r\n"));
        }
        over.push_str("\r\n");
        let refused = parse_whole(over.as_bytes(), &Method::GET).expect_err("too many headers");
        assert!(refused.contains("too many headers"), "{refused}");
    }

    #[test]
    fn request_head_is_written_as_it_is() {
        let request = Request::builder()
            .method(Method::DELETE)
            .uri("/items/7?force=1")
            .header("host", "api.example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        encode_head(&request, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "DELETE /items/7?force=1 HTTP/1.1\r\nhost: api.example.com\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
        let options = Request::builder()
            .method(Method::OPTIONS)
            .uri("*")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        encode_head(&options, &mut out);
        assert!(
            out.starts_with(b"OPTIONS * HTTP/1.1\r\n"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }
}
