//! The one place where a failure becomes an HTTP answer. Every answer veer makes
//! itself carries `x-veer-error: CODE` (so it is never mistaken for the
//! upstream's) and a one-line body that says what happened and what to look at.
//!
//! A gRPC client gets the same answer in gRPC's terms instead, as Envoy gives
//! it: HTTP `200`, trailers-only, with a `grpc-status` (`UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`, …) and the line as `grpc-message`. A gRPC library
//! turns an HTTP `502` into an opaque error; a status it can act on (retry
//! on `UNAVAILABLE`, give up on `DEADLINE_EXCEEDED`).

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use crate::grpc::{self, Code};
use crate::outcome::FailureReason;
use crate::snapshot::{ServiceSnapshot, VersionSnapshot};
use crate::telemetry::ClientFault;
use crate::upstream::body::ClientBodyFault;
use crate::upstream::UpstreamError;

pub const ERROR_HEADER: &str = "x-veer-error";

/// Who is at fault, for logs and for counting against a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Config,
}

#[derive(Debug)]
pub enum ProxyError {
    /// No service matches the request's host and path.
    NoRoute { host: String, path: String },
    /// The request has no host to route by.
    MissingHost,
    /// Every version of the service is at weight 0.
    NoWeightedVersion { service: String },
    /// The chosen version lists no endpoint that can take the request.
    NoEndpoint { service: String, version: String },
    Upstream {
        service: String,
        version: String,
        error: UpstreamError,
    },
}

impl ProxyError {
    pub fn source(&self) -> Source {
        match self {
            ProxyError::NoRoute { .. } | ProxyError::MissingHost => Source::Client,
            ProxyError::NoWeightedVersion { .. } | ProxyError::NoEndpoint { .. } => Source::Config,
            ProxyError::Upstream { error, .. } if error.is_client() => Source::Client,
            ProxyError::Upstream { .. } => Source::Upstream,
        }
    }

    /// The error of a send to `version` that got no response (`None`: the
    /// version had no endpoint).
    pub fn from_send(
        service: &ServiceSnapshot,
        version: &VersionSnapshot,
        error: Option<UpstreamError>,
    ) -> ProxyError {
        match error {
            Some(error) => ProxyError::Upstream {
                service: service.name.to_string(),
                version: version.name.to_string(),
                error,
            },
            None => ProxyError::NoEndpoint {
                service: service.name.to_string(),
                version: version.name.to_string(),
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The upstream failure this error counts as, if it is one.
    pub fn failure_reason(&self) -> Option<FailureReason> {
        match self {
            ProxyError::Upstream { error, .. } => error.reason(),
            _ => None,
        }
    }

    /// The client's fault this error counts as, if it is one.
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self {
            ProxyError::Upstream {
                error: UpstreamError::ClientBody { fault, .. },
                ..
            } => Some(match fault {
                ClientBodyFault::Malformed => ClientFault::Malformed,
                ClientBodyFault::Aborted | ClientBodyFault::Slow => ClientFault::Upload,
            }),
            _ => None,
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no-route"),
            ProxyError::MissingHost => (StatusCode::BAD_REQUEST, "missing-host"),
            ProxyError::NoWeightedVersion { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no-weighted-version")
            }
            ProxyError::NoEndpoint { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no-endpoint"),
            ProxyError::Upstream { error, .. } => match error {
                UpstreamError::Connect { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "upstream-connect")
                }
                UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
                UpstreamError::Reset { .. } => (StatusCode::BAD_GATEWAY, "upstream-reset"),
                UpstreamError::Protocol { .. } => (StatusCode::BAD_GATEWAY, "upstream-protocol"),
                UpstreamError::Tls { .. } => (StatusCode::BAD_GATEWAY, "upstream-tls"),
                UpstreamError::ClientBody { fault, .. } => match fault {
                    ClientBodyFault::Malformed => {
                        (StatusCode::BAD_REQUEST, "malformed-request-body")
                    }
                    ClientBodyFault::Aborted => {
                        (StatusCode::BAD_REQUEST, "incomplete-request-body")
                    }
                    ClientBodyFault::Slow => (StatusCode::REQUEST_TIMEOUT, "request-body-timeout"),
                },
            },
        }
    }

    /// The gRPC status a gRPC client is answered with.
    pub fn grpc_code(&self) -> Code {
        match self {
            ProxyError::NoRoute { .. } => Code::Unimplemented,
            ProxyError::MissingHost => Code::InvalidArgument,
            ProxyError::NoWeightedVersion { .. } | ProxyError::NoEndpoint { .. } => {
                Code::Unavailable
            }
            ProxyError::Upstream { error, .. } => match error {
                UpstreamError::Timeout { .. } => Code::DeadlineExceeded,
                UpstreamError::Connect { .. }
                | UpstreamError::Reset { .. }
                | UpstreamError::Protocol { .. }
                | UpstreamError::Tls { .. } => Code::Unavailable,
                // What a gRPC server answers a client whose frames it cannot
                // read, one that stopped sending, and one too slow to send.
                UpstreamError::ClientBody { fault, .. } => match fault {
                    ClientBodyFault::Malformed => Code::Internal,
                    ClientBodyFault::Aborted => Code::Cancelled,
                    ClientBodyFault::Slow => Code::DeadlineExceeded,
                },
            },
        }
    }

    /// The answer for the client: in gRPC's terms when the request was a
    /// gRPC call, else plain HTTP.
    pub fn into_response_for(self, grpc: Option<grpc::Kind>) -> Response<ProxyBody> {
        match grpc {
            Some(kind) => self.into_grpc_response(kind),
            None => self.into_response(),
        }
    }

    /// A trailers-only gRPC answer: `200`, no body, the status in the head.
    pub fn into_grpc_response(self, kind: grpc::Kind) -> Response<ProxyBody> {
        let (_, code) = self.status_and_code();
        let status = self.grpc_code();
        let message = grpc::message(&self.to_string());
        let mut response = Response::new(ProxyBody::empty());
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(match kind {
                grpc::Kind::Grpc => "application/grpc",
                grpc::Kind::Web => "application/grpc-web",
            }),
        );
        headers.insert(grpc::STATUS, status.header_value());
        headers.insert(grpc::MESSAGE, message);
        response
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        let mut body = self.to_string();
        body.push('\n');
        let mut response = Response::new(ProxyBody::full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::NoRoute { host, path } => write!(
                f,
                "veer: no service matches host `{host}` and path `{path}`; check the services' match blocks"
            ),
            ProxyError::MissingHost => {
                write!(f, "veer: the request names no host (no Host header nor absolute URI)")
            }
            ProxyError::NoWeightedVersion { service } => write!(
                f,
                "veer: every version of service `{service}` is at weight 0; set a weight above 0"
            ),
            ProxyError::NoEndpoint { service, version } => write!(
                f,
                "veer: version `{version}` of service `{service}` has no endpoint that can take the request"
            ),
            ProxyError::Upstream {
                error: UpstreamError::ClientBody { fault, .. },
                ..
            } => f.write_str(match fault {
                ClientBodyFault::Malformed => "veer: the request body is malformed (invalid chunked framing); fix the client's encoding",
                ClientBodyFault::Aborted => "veer: the request body ended before it was complete; send the whole body",
                ClientBodyFault::Slow => "veer: the request body was still arriving when the service's timeouts.request ran out; send it faster or raise timeouts.request",
            }),
            ProxyError::Upstream {
                service,
                version,
                error,
            } => write!(f, "veer: {service}/{version}: {error}"),
        }
    }
}
