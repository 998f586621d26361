//! The per-request service: one request in, one response out, every failure an
//! HTTP answer (`Infallible` at the hyper boundary).
//!
//! The phases, in order:
//! 1. **route**: load the snapshot once; host and path pick the service.
//! 2. **split**: the service's weighted table picks the version.
//! 3. **rewrite**: hop-by-hop headers go, `X-Forwarded-*` come, the URI takes
//!    the form the upstream protocol wants.
//! 4. **send**: the one retry loop (`upstream::retry`): power-of-two-choices
//!    picks an endpoint; a request the upstream cannot have acted on (refused,
//!    or reset before a byte came back and safe to repeat) is tried once on
//!    another endpoint of the same version; `timeouts.request` bounds each
//!    attempt's wait for the response head. A request no endpoint of a
//!    version could take goes to the baseline once.
//! 5. **answer**: the upstream's response streams back; an upgrade becomes a
//!    two-way tunnel; a failure becomes a one-line answer (`error`).

pub mod body;
pub mod error;
pub mod headers;
pub mod outcome;
mod upgrade;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue, HOST, SET_COOKIE};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use tokio::time::Instant;

use crate::config::Protocol;
use crate::grpc;
use crate::routing::rules;
use crate::snapshot::{ServiceSnapshot, Snapshot, StickyKey, VersionSnapshot};
use crate::telemetry::access::{AccessLog, Entry};
use crate::telemetry::Telemetry;
use crate::upstream::body::ClientBodyWatch;
use crate::upstream::error::FailureReason;
use crate::upstream::health::{HealthEvent, HealthSender};
use crate::upstream::retry::{Attempts, SendFailure};
use crate::upstream::{Endpoint, RequestBody};
pub use body::ProxyBody;
pub use error::ProxyError;
use outcome::{Answered, End, Finish, GoneBeforeAnswer};

/// What the proxy knows about the client connection a request came on; built
/// once per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The peer's IP, ready for `X-Forwarded-For`.
    pub ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    /// The listener's identity header (mTLS) and the verified identity of
    /// this connection's client certificate.
    pub identity: Option<(HeaderName, Option<HeaderValue>)>,
}

impl ClientInfo {
    pub fn new(peer: std::net::SocketAddr, tls: bool) -> ClientInfo {
        ClientInfo {
            ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            identity: None,
        }
    }

    /// Requests on this connection carry `identity` in `header` (and never a
    /// `header` the client sent itself).
    pub fn with_identity(mut self, header: HeaderName, identity: Option<HeaderValue>) -> Self {
        self.identity = Some((header, identity));
        self
    }
}

/// A connection's timer for `timeouts.request` (see `upstream::retry`).
pub use crate::upstream::retry::RequestTimer;

/// The request-path service; cheap to clone.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
}

/// What every request of every connection reads; each request's pending
/// outcome holds it too.
pub(crate) struct Shared {
    published: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    health: HealthSender,
    /// The access log, when configured; it also turns request ids on.
    access: Option<AccessLog>,
    /// `VEER_BENCH_NO_TELEMETRY=1` skips recording outcomes: only for
    /// measuring what telemetry costs (the guard is blind without it).
    record: bool,
}

/// The request id header: propagated when the client sent one, generated
/// when not (with the access log on), and set on the upstream request and
/// on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request id from the client longer than this is replaced.
const MAX_REQUEST_ID: usize = 200;

impl ProxyService {
    pub fn new(
        published: Arc<ArcSwap<Snapshot>>,
        telemetry: Arc<Telemetry>,
        health: HealthSender,
        access: Option<AccessLog>,
    ) -> ProxyService {
        let record = std::env::var_os("VEER_BENCH_NO_TELEMETRY").is_none_or(|v| v != "1");
        if !record {
            tracing::warn!(
                "VEER_BENCH_NO_TELEMETRY=1: no request is measured and the guard is blind"
            );
        }
        ProxyService {
            shared: Arc::new(Shared {
                published,
                telemetry,
                health,
                access,
                record,
            }),
        }
    }

    /// Serves one request; never fails (failures are answers).
    pub async fn serve(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
        timer: &mut Option<RequestTimer>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        // A gRPC client is answered in gRPC's terms (see `error`).
        let grpc = grpc::kind(request.headers());
        match self.forward(request, client, timer, grpc).await {
            Ok(response) => Ok(response),
            Err(error) => {
                log_failure(&error);
                Ok(error.into_response_for(grpc))
            }
        }
    }

    /// The pending outcome of a request answered by `version` (`None` when
    /// outcomes are not recorded).
    fn finish(
        &self,
        snapshot: &Arc<Snapshot>,
        (service, version): (usize, usize),
        started: Instant,
        answered: Answered,
        body_watch: Option<&ClientBodyWatch>,
        log: Option<Box<Entry>>,
    ) -> Option<Finish> {
        self.shared.record.then(|| {
            Finish::new(
                Arc::clone(&self.shared),
                Arc::clone(snapshot),
                service,
                version,
                started,
                answered,
                body_watch.cloned(),
                log,
            )
        })
    }

    /// A failure veer answers itself for `version`, its outcome recorded
    /// with it.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        snapshot: &Arc<Snapshot>,
        at: (usize, usize),
        started: Instant,
        error: ProxyError,
        log: Option<Box<Entry>>,
        request_id: Option<HeaderValue>,
        grpc: Option<(grpc::Kind, usize)>,
    ) -> Response<ProxyBody> {
        log_failure(&error);
        let answered = Answered {
            status: error.status(),
            endpoint: None,
            failure: error.failure_reason(),
            client: error.client_fault(),
            latency: started.elapsed(),
        };
        let mut finish = self.finish(snapshot, at, started, answered, None, log);
        if let (Some(finish), Some((kind, method))) = (finish.as_mut(), grpc) {
            finish.grpc(grpc::Call {
                kind,
                head: Some(error.grpc_code()),
                method,
                errors: snapshot.services[at.0].grpc_errors,
            });
        }
        let mut response = error.into_response_for(grpc.map(|(kind, _)| kind));
        if let Some(id) = request_id {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        match finish {
            Some(finish) => response.map(|body| body.with_finish(finish)),
            None => response,
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
        timer: &mut Option<RequestTimer>,
        grpc: Option<grpc::Kind>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();

        // 1. route
        let host_value = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => parts.headers.get(HOST).cloned(),
        };
        let Some(host) = host_value.as_ref().and_then(|h| h.to_str().ok()) else {
            return Err(ProxyError::MissingHost);
        };
        let snapshot = self.shared.published.load_full();
        let Some(service_index) = snapshot.routes.find(host, parts.uri.path()) else {
            self.shared.telemetry.count_unrouted();
            return Err(ProxyError::NoRoute {
                host: host.to_string(),
                path: parts.uri.path().to_string(),
            });
        };
        let service = &snapshot.services[service_index];

        // 2. choose the version: A/B rules, then sticky users, then weights
        let mut minted_cookie = None;
        let mut version_index = choose_version(service, &parts, &mut minted_cookie)?;

        // 3. rewrite
        let upgrade = headers::is_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::set_forwarded(
            &mut parts.headers,
            &client.ip,
            &client.proto,
            host_value.as_ref(),
        );
        if let Some((header, identity)) = &client.identity {
            headers::set_identity(&mut parts.headers, header, identity.as_ref());
        }
        // A gRPC caller's deadline runs from its call's arrival, across
        // every attempt.
        let call_deadline = grpc
            .and_then(|_| grpc::timeout(&parts.headers))
            .map(|t| started + t);
        // A gRPC call's method, for its per-method figures (a refcount, not
        // a copy).
        let method = grpc.and_then(|_| parts.uri.path_and_query().cloned());
        // The request id and access log entry, when the log is on.
        let (request_id, mut log) = match &self.shared.access {
            None => (None, None),
            Some(access) => {
                let id = request_id(&mut parts.headers);
                let entry = access.sampled().then(|| {
                    Box::new(Entry {
                        at: std::time::SystemTime::UNIX_EPOCH,
                        request_id: id.clone(),
                        client_ip: client.ip.clone(),
                        method: parts.method.clone(),
                        host: host_value.clone(),
                        path: parts.uri.path_and_query().cloned(),
                        service: Arc::clone(&service.name),
                        version: Arc::clone(&service.versions[version_index].name),
                        endpoint: None,
                        status: 0,
                        outcome: "ok",
                        reason: None,
                        bytes: 0,
                        ttfb: Duration::ZERO,
                        total: Duration::ZERO,
                    })
                });
                (Some(id), entry)
            }
        };
        let mut body = RequestBody::client(body);
        // A copy for the shadow, on its own task; the live request goes on.
        let shadow = service.mirror.as_ref().and_then(|mirror| {
            crate::mirror::tap(
                mirror,
                version_index,
                &parts,
                host_value.as_ref(),
                &mut body,
            )
        });
        let body_watch = body.watch().cloned();
        let mut outgoing = Request::from_parts(parts, body);

        // 4. send; a request a non-baseline version could not even take is
        // given to the baseline once, and still counts against that version.
        let baseline = service.guard.as_ref().map(|g| g.baseline);
        // The first attempt's clock starts with the request (routing took
        // microseconds), which saves a clock read on the hot path.
        let mut attempt_at = started;
        // Counts the client leaving while the upstream is awaited.
        let mut gone = GoneBeforeAnswer(None);
        let sent = loop {
            let version = &service.versions[version_index];
            if self.shared.record {
                gone.0 = Some(&version.stats);
            }
            fit_protocol(&mut outgoing, version, host_value.as_ref());
            let attempts = Attempts {
                endpoints: &version.endpoints,
                timeouts: &service.timeouts,
                upgrade,
                call_deadline,
                body_watch: body_watch.as_ref(),
            };
            let blame = |endpoint: &Arc<Endpoint>, reason: FailureReason| {
                self.shared
                    .count_failure(service, endpoint, reason.as_str());
            };
            match attempts.send(outgoing, timer, attempt_at, blame).await {
                Err(SendFailure {
                    error,
                    unsent: Some(unsent),
                }) if baseline.is_some_and(|b| b != version_index) => {
                    let error = ProxyError::from_send(service, version, error);
                    tracing::debug!("{error}; falling back to the baseline");
                    let answered = Answered {
                        status: error.status(),
                        endpoint: None,
                        failure: error.failure_reason(),
                        client: error.client_fault(),
                        latency: started.elapsed(),
                    };
                    // The failed attempt is the version's outcome; its stream
                    // ended here.
                    if let Some(mut finish) = self.finish(
                        &snapshot,
                        (service_index, version_index),
                        started,
                        answered,
                        None,
                        None,
                    ) {
                        finish.end(None, End::Complete);
                    }
                    outgoing = unsent;
                    version_index = baseline.unwrap_or(version_index);
                    attempt_at = Instant::now();
                }
                sent => break sent,
            }
        };
        gone.0 = None;

        // 5. answer; the outcome is recorded when the response stream ends
        let latency = started.elapsed();
        let at = (service_index, version_index);
        let version = &service.versions[version_index];
        let call = grpc.map(|kind| {
            let path = method.as_ref().map_or("", |m| m.path());
            (kind, version.stats.methods().id(path))
        });
        let (mut response, lease) = match sent {
            Ok(sent) => sent,
            Err(failure) => {
                let error = ProxyError::from_send(service, version, failure.error);
                return Ok(self.fail(&snapshot, at, started, error, log, request_id, call));
            }
        };
        let digest = shadow.and_then(|shadow| shadow.answered(response.status().as_u16(), latency));
        let answered = Answered {
            status: response.status(),
            endpoint: self.shared.record.then(|| Arc::clone(lease.endpoint())),
            failure: None,
            client: None,
            latency,
        };
        let mut finish = self.finish(
            &snapshot,
            at,
            started,
            answered,
            body_watch.as_ref(),
            log.take(),
        );
        if let (Some(finish), Some((kind, method))) = (finish.as_mut(), call) {
            finish.grpc(grpc::Call {
                kind,
                head: grpc::status_from_head(response.status(), response.headers()),
                method,
                errors: service.grpc_errors,
            });
        }
        if let Some(id) = request_id {
            if !response.headers().contains_key(REQUEST_ID) {
                response.headers_mut().insert(REQUEST_ID, id);
            }
        }
        if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // An upgrade's outcome is its `101`: what follows is a tunnel.
            if let Some(mut finish) = finish.take() {
                finish.end(None, End::Complete);
            }
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            headers::strip_hop_by_hop(response.headers_mut(), true);
            if let Some(client_upgrade) = client_upgrade {
                upgrade::tunnel(
                    client_upgrade,
                    upstream_upgrade,
                    lease,
                    Arc::clone(&version.stats),
                );
            }
            return Ok(response.map(|_| ProxyBody::empty()));
        }
        headers::strip_hop_by_hop(response.headers_mut(), false);
        if let Some(cookie) = minted_cookie {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
        Ok(response.map(|body| ProxyBody::upstream(body, lease, finish).with_digest(digest)))
    }
}

/// The version for this request: the first A/B rule that matches (the
/// baseline instead when its version is latched or has no endpoint), else the
/// sticky user's bucket, else the weighted split. A sticky cookie missing from
/// the request is minted into `minted_cookie` for the response.
fn choose_version(
    service: &ServiceSnapshot,
    parts: &http::request::Parts,
    minted_cookie: &mut Option<HeaderValue>,
) -> Result<usize, ProxyError> {
    let baseline = service.guard.as_ref().map(|g| g.baseline);
    if !service.rules.is_empty() {
        if let Some(v) = rules::first_match(&service.rules, &parts.headers, parts.uri.path()) {
            let version = &service.versions[v];
            if version.latched || version.endpoints.is_empty() {
                return Ok(baseline.unwrap_or(v));
            }
            return Ok(v);
        }
    }
    let no_weight = || ProxyError::NoWeightedVersion {
        service: service.name.to_string(),
    };
    if let Some(sticky) = &service.sticky {
        let table = sticky.table.as_ref().ok_or_else(no_weight)?;
        match &sticky.key {
            StickyKey::Header(name) => {
                if let Some(key) = parts.headers.get(name) {
                    return Ok(table.version(key.as_bytes()));
                }
            }
            StickyKey::Cookie { name, attributes } => {
                if let Some(key) = rules::cookie(&parts.headers, name) {
                    return Ok(table.version(key.as_bytes()));
                }
                // An anonymous user: give them a key so they stick too.
                let key = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                *minted_cookie = HeaderValue::from_str(&format!("{name}={key}{attributes}")).ok();
                return Ok(table.version(key.as_bytes()));
            }
        }
    }
    service
        .split
        .as_ref()
        .map(|s| s.next())
        .ok_or_else(no_weight)
}

impl Shared {
    /// Adds to the endpoint's failure streak and, each time the streak
    /// reaches the outlier threshold, asks the health runner to eject it.
    pub(crate) fn count_failure(
        &self,
        service: &ServiceSnapshot,
        endpoint: &Arc<Endpoint>,
        reason: &'static str,
    ) {
        let threshold = service.outlier.consecutive_failures;
        let streak = endpoint.health.record_failure();
        if threshold > 0 && streak.is_multiple_of(threshold) {
            let _ = self.health.send(HealthEvent::Failing {
                service: Arc::clone(&service.name),
                endpoint: Arc::clone(endpoint),
                reason,
            });
        }
    }
}

/// The request's id: the client's `x-request-id` when it sent a usable one,
/// else a new random one, set on the request for the upstream.
fn request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID) {
        if !id.is_empty() && id.len() <= MAX_REQUEST_ID {
            return id.clone();
        }
    }
    let id = HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
        .unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// Gives the request the form its upstream protocol wants: origin-form URI
/// and a `Host` header for HTTP/1.1; absolute URI (`:scheme`, `:authority`)
/// and no `Host` for HTTP/2. Idempotent, so a request can be refitted for a
/// fallback version.
fn fit_protocol(
    request: &mut Request<RequestBody>,
    version: &VersionSnapshot,
    host: Option<&HeaderValue>,
) {
    match version.protocol {
        Protocol::Http1 => {
            *request.version_mut() = Version::HTTP_11;
            if request.uri().authority().is_some() {
                // An absolute-form target names the host; a Host header
                // that says otherwise is replaced (RFC 9112 §3.2.2).
                *request.uri_mut() = Uri::from(origin_form(request.uri()));
                if let Some(host) = host {
                    request.headers_mut().insert(HOST, host.clone());
                }
            } else if !request.headers().contains_key(HOST) {
                if let Some(host) = host {
                    request.headers_mut().insert(HOST, host.clone());
                }
            }
        }
        Protocol::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            if let Some(host) = host.and_then(|h| h.to_str().ok()) {
                let scheme = if version.tls {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                };
                *request.uri_mut() = absolute_form(request.uri(), host, scheme);
            }
            request.headers_mut().remove(HOST);
        }
    }
}

fn origin_form(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// `SCHEME://HOST/path?query`, which the HTTP/2 client turns into
/// `:scheme`, `:authority` and `:path`. Falls back to the URI as it came when
/// the host is not a valid authority (then the upstream sees what the client
/// sent).
fn absolute_form(uri: &Uri, host: &str, scheme: Scheme) -> Uri {
    let Ok(authority) = Authority::try_from(host) else {
        return uri.clone();
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(origin_form(uri));
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Logs a failed request, at most one line a second at `warn` (the rest at
/// `debug`): a failing upstream under load must not turn into a log flood.
/// Counts go to the metrics.
fn log_failure(error: &ProxyError) {
    static LAST_WARN_SECOND: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LAST_WARN_SECOND.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(source = ?error.source(), "{error}");
    } else {
        tracing::debug!(source = ?error.source(), "{error}");
    }
}
