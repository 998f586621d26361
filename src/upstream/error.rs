//! What can go wrong talking to an endpoint, classified once into the
//! `outcome::FailureReason` the metrics and the guard use (`connect`,
//! `timeout`, `reset`, `protocol`, and `tls` for a failed handshake with a TLS
//! endpoint), and how far the request got ([`Delivery`]). The one mapping for
//! every client: veer's own HTTP/1.1 client (`from_exchange`) and hyper's
//! (`from_hyper`) give the same failure the same error, and the retry loop
//! (`retry`) decides on nothing else.

use std::fmt;
use std::net::SocketAddr;

use super::body::{ClientBodyError, ClientBodyFault, ClientBodyWatch};
use super::h1::ExchangeError;
// Re-exported: the reason is classified here, but owned by `outcome`.
pub use crate::outcome::FailureReason;

#[derive(Debug)]
pub enum UpstreamError {
    /// No TCP connection could be made (refused, unreachable, connect timeout).
    /// Nothing was sent: the request can be tried elsewhere.
    Connect {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    /// No response head within `timeouts.request`.
    Timeout { addr: SocketAddr },
    /// The connection broke after the request was (partly) sent.
    Reset { addr: SocketAddr, cause: String },
    /// The upstream answered something that is not valid HTTP.
    Protocol { addr: SocketAddr, cause: String },
    /// The TLS handshake failed (untrusted or misnamed certificate, no
    /// common protocol, a client certificate refused, or the endpoint's TLS
    /// settings could not be loaded). Nothing was sent.
    Tls { addr: SocketAddr, cause: String },
    /// The client's request body failed, or was still arriving when
    /// `timeouts.request` ran out: the client's fault, never the upstream's.
    ClientBody {
        fault: ClientBodyFault,
        cause: String,
    },
}

/// How far a failed attempt's request got, which decides whether it may be
/// sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing reached the upstream: the connection could not be made, or
    /// was found closed before the request was written.
    Unsent,
    /// The request was written and the connection ended before a byte of
    /// answer: the upstream may or may not have acted on it. (hyper's client
    /// cannot tell a connection closed mid-head from one closed before it,
    /// so its resets all land here.)
    Unanswered,
    /// Part of an answer came back, part of the request's body went out, or
    /// the attempt ran out of time: never sent again.
    Partial,
}

impl UpstreamError {
    /// The upstream's failure reason; `None` when the client is at fault.
    pub fn reason(&self) -> Option<FailureReason> {
        Some(match self {
            UpstreamError::Connect { .. } => FailureReason::Connect,
            UpstreamError::Timeout { .. } => FailureReason::Timeout,
            UpstreamError::Reset { .. } => FailureReason::Reset,
            UpstreamError::Protocol { .. } => FailureReason::Protocol,
            UpstreamError::Tls { .. } => FailureReason::Tls,
            UpstreamError::ClientBody { .. } => return None,
        })
    }

    /// Whether the client, not the upstream, is at fault.
    pub fn is_client(&self) -> bool {
        matches!(self, UpstreamError::ClientBody { .. })
    }

    /// Puts an error on the client when its request body failed meanwhile
    /// (`watch` saw it), whatever the upstream connection made of it.
    pub(crate) fn or_client(self, watch: Option<&ClientBodyWatch>) -> UpstreamError {
        match watch.and_then(ClientBodyWatch::fault) {
            Some(fault) if !self.is_client() => UpstreamError::ClientBody {
                fault,
                cause: self.to_string(),
            },
            _ => self,
        }
    }

    /// Classifies a failed exchange on veer's own HTTP/1.1 client (`h1`).
    pub(crate) fn from_exchange(
        addr: SocketAddr,
        error: ExchangeError,
    ) -> (UpstreamError, Delivery) {
        match error {
            ExchangeError::Unwritten(cause) => (
                UpstreamError::Reset {
                    addr,
                    cause: format!("could not send the request: {cause}"),
                },
                Delivery::Unsent,
            ),
            ExchangeError::NothingBack(cause) => {
                (UpstreamError::Reset { addr, cause }, Delivery::Unanswered)
            }
            ExchangeError::Broken(cause) => {
                (UpstreamError::Reset { addr, cause }, Delivery::Partial)
            }
            ExchangeError::Protocol(cause) => {
                (UpstreamError::Protocol { addr, cause }, Delivery::Partial)
            }
        }
    }

    /// Classifies a request hyper's client connection failed to exchange;
    /// `unsent` when hyper gave the request back (it never wrote it).
    pub(crate) fn from_hyper_send(
        addr: SocketAddr,
        err: &hyper::Error,
        unsent: bool,
    ) -> (UpstreamError, Delivery) {
        let error = UpstreamError::from_hyper(addr, err);
        let delivery = match &error {
            _ if unsent => Delivery::Unsent,
            UpstreamError::Reset { .. } => Delivery::Unanswered,
            _ => Delivery::Partial,
        };
        (error, delivery)
    }

    /// Classifies an error from hyper's client connection. hyper reports a
    /// failure of the body it was sending as a "user" error; when that body
    /// is the client's, the client is at fault.
    pub(crate) fn from_hyper(addr: SocketAddr, err: &hyper::Error) -> UpstreamError {
        let cause = error_chain(err);
        if let Some(client) = find_cause::<ClientBodyError>(err) {
            let fault = if client.is_malformed() {
                ClientBodyFault::Malformed
            } else {
                ClientBodyFault::Aborted
            };
            return UpstreamError::ClientBody { fault, cause };
        }
        if err.is_parse() || err.is_parse_status() || err.is_user() {
            UpstreamError::Protocol { addr, cause }
        } else if err.is_timeout() {
            UpstreamError::Timeout { addr }
        } else {
            UpstreamError::Reset { addr, cause }
        }
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(err);
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref::<T>() {
            return Some(found);
        }
        source = s.source();
    }
    None
}

/// `outer: inner: innermost`, so a log line says what really happened.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect { addr, cause } => {
                write!(f, "could not connect to upstream {addr}: {cause}")
            }
            UpstreamError::Timeout { addr } => {
                write!(f, "upstream {addr} sent no response head in time")
            }
            UpstreamError::Reset { addr, cause } => {
                write!(f, "connection to upstream {addr} broke: {cause}")
            }
            UpstreamError::Protocol { addr, cause } => {
                write!(f, "upstream {addr} answered invalid HTTP: {cause}")
            }
            UpstreamError::Tls { addr, cause } => {
                write!(f, "TLS handshake with upstream {addr} failed: {cause}")
            }
            UpstreamError::ClientBody { cause, .. } => {
                write!(
                    f,
                    "the request body could not be read from the client: {cause}"
                )
            }
        }
    }
}

impl std::error::Error for UpstreamError {}
