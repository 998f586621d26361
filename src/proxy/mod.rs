//! The per-request service: one request in, one response out, every failure an
//! HTTP answer (`Infallible` at the hyper boundary).
//!
//! The phases, in order:
//! 1. **route**: load the snapshot once; host and path pick the service.
//! 2. **split**: the service's weighted table picks the version.
//! 3. **rewrite**: hop-by-hop headers go, `X-Forwarded-*` come, the URI takes
//!    the form the upstream protocol wants.
//! 4. **send**: power-of-two-choices picks an endpoint; a request that could not
//!    be delivered at all (refused, reset before a byte was sent) is tried once
//!    on another endpoint of the same version; `timeouts.request` bounds the
//!    wait for the response head.
//! 5. **answer**: the upstream's response streams back; an upgrade becomes a
//!    two-way tunnel; a failure becomes a one-line answer (`error`).

pub mod body;
pub mod error;
pub mod headers;
mod upgrade;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue, HOST, SET_COOKIE};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use tokio::time::Instant;

use crate::config::Protocol;
use crate::health::{HealthEvent, HealthSender};
use crate::routing::rules;
use crate::snapshot::{ServiceSnapshot, Snapshot, StickyKey, VersionSnapshot};
use crate::telemetry::{Outcome, Telemetry};
use crate::upstream::{balance, Endpoint, Lease, RequestBody, ResponseBody, UpstreamError};
use body::Finish;
pub use body::ProxyBody;
pub use error::ProxyError;

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

/// A connection's timer for `timeouts.request`, lent to one request at a
/// time. Reset for each request rather than made anew: a tokio timer whose
/// deadline only moves later is updated in place, while making and dropping
/// one per request costs a timer-wheel insert and removal (about 1,900
/// instructions per request in callgrind).
pub type RequestTimer = Pin<Box<tokio::time::Sleep>>;

/// The request-path service; cheap to clone.
#[derive(Clone)]
pub struct ProxyService {
    published: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    health: HealthSender,
    /// `VEER_BENCH_NO_TELEMETRY=1` skips recording outcomes: only for
    /// measuring what telemetry costs (the guard is blind without it).
    record: bool,
}

impl ProxyService {
    pub fn new(
        published: Arc<ArcSwap<Snapshot>>,
        telemetry: Arc<Telemetry>,
        health: HealthSender,
    ) -> ProxyService {
        let record = std::env::var_os("VEER_BENCH_NO_TELEMETRY").is_none_or(|v| v != "1");
        if !record {
            tracing::warn!(
                "VEER_BENCH_NO_TELEMETRY=1: no request is measured and the guard is blind"
            );
        }
        ProxyService {
            published,
            telemetry,
            health,
            record,
        }
    }

    /// Serves one request; never fails (failures are answers).
    pub async fn serve(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
        timer: &mut Option<RequestTimer>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        match self.forward(request, client, timer).await {
            Ok(response) => Ok(response),
            Err(error) => {
                log_failure(&error);
                Ok(error.into_response())
            }
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
        timer: &mut Option<RequestTimer>,
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
        let snapshot = self.published.load_full();
        let Some(service_index) = snapshot.routes.find(host, parts.uri.path()) else {
            self.telemetry.count_unrouted();
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
        let mut outgoing = Request::from_parts(parts, RequestBody::Client(body));

        // 4. send; a request a non-baseline version could not even take is
        // given to the baseline once, and still counts against that version.
        let baseline = service.guard.as_ref().map(|g| g.baseline);
        // The first attempt's clock starts with the request (routing took
        // microseconds), which saves a clock read on the hot path.
        let mut attempt_at = started;
        let (sent, version) = loop {
            let version = &service.versions[version_index];
            fit_protocol(&mut outgoing, version, host_value.as_ref());
            match self
                .send(
                    service,
                    &version.endpoints,
                    outgoing,
                    upgrade,
                    timer,
                    attempt_at,
                )
                .await
            {
                Err(SendFailure {
                    error,
                    unsent: Some(unsent),
                }) if baseline.is_some_and(|b| b != version_index) => {
                    let error = ProxyError::from_send(service, version, error);
                    if self.record {
                        version.stats.record(
                            self.telemetry.elapsed(Instant::now()),
                            &Outcome {
                                status: error.status(),
                                failure: error.failure_reason(),
                                latency: started.elapsed(),
                            },
                        );
                    }
                    tracing::debug!("{error}; falling back to the baseline");
                    outgoing = unsent;
                    version_index = baseline.unwrap_or(version_index);
                    attempt_at = Instant::now();
                }
                sent => break (sent, version),
            }
        };

        // 5. answer, and record the outcome once
        let latency = started.elapsed();
        let elapsed = self.telemetry.elapsed(started + latency);
        let (mut response, lease) = match sent {
            Ok(sent) => sent,
            Err(failure) => {
                let error = ProxyError::from_send(service, version, failure.error);
                let outcome = Outcome {
                    status: error.status(),
                    failure: error.failure_reason(),
                    latency,
                };
                if self.record {
                    version.stats.record(elapsed, &outcome);
                }
                return Err(error);
            }
        };
        let outcome = Outcome {
            status: response.status(),
            failure: None,
            latency,
        };
        if self.record {
            version.stats.record(elapsed, &outcome);
        }
        if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
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
        let finish = self
            .record
            .then(|| Finish::new(Arc::clone(&version.stats), started));
        Ok(response.map(|body| ProxyBody::upstream(body, lease, finish)))
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

/// A send that got no response. `error` is `None` when the version had no
/// endpoint; `unsent` gives the request back when nothing of it was sent.
struct SendFailure {
    error: Option<UpstreamError>,
    unsent: Option<Request<RequestBody>>,
}

impl ProxyService {
    /// Sends to one endpoint of the version, and once more to another when
    /// the first attempt delivered nothing (refused, or reset before a byte
    /// was sent). `timeouts.request` bounds each attempt's wait for the
    /// response head. Each attempt's outcome feeds the endpoint's failure
    /// streak (passive ejection).
    async fn send(
        &self,
        service: &ServiceSnapshot,
        endpoints: &[Arc<Endpoint>],
        mut outgoing: Request<RequestBody>,
        upgrade: bool,
        timer: &mut Option<RequestTimer>,
        mut attempt_at: Instant,
    ) -> Result<(Response<ResponseBody>, Lease), SendFailure> {
        let timeouts = &service.timeouts;
        let Some(mut chosen) = balance::pick(endpoints, None) else {
            return Err(SendFailure {
                error: None,
                unsent: Some(outgoing),
            });
        };
        let mut retried = false;
        loop {
            let endpoint = &endpoints[chosen];
            let deadline = attempt_at + timeouts.request;
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            let attempt = tokio::select! {
                biased;
                sent = endpoint.send(outgoing, timeouts, upgrade) => Ok(sent),
                () = timer.as_mut() => Err(()),
            };
            match attempt {
                Ok(Ok(sent)) => {
                    if service.outlier.count_5xx && sent.0.status().is_server_error() {
                        self.count_failure(service, endpoint, "5xx");
                    } else {
                        endpoint.health.record_success();
                    }
                    return Ok(sent);
                }
                Ok(Err(failed)) => {
                    self.count_failure(service, endpoint, failed.error.reason().as_str());
                    match failed.request {
                        // Nothing reached the upstream: safe to try another one.
                        Some(unsent) if !retried && endpoints.len() > 1 => {
                            tracing::debug!(error = %failed.error, "retrying on another endpoint");
                            outgoing = unsent;
                            retried = true;
                            attempt_at = Instant::now();
                            chosen = balance::pick(endpoints, Some(chosen)).unwrap_or(chosen);
                        }
                        unsent => {
                            return Err(SendFailure {
                                error: Some(failed.error),
                                unsent,
                            })
                        }
                    }
                }
                Err(_elapsed) => {
                    self.count_failure(service, endpoint, "timeout");
                    return Err(SendFailure {
                        error: Some(UpstreamError::Timeout {
                            addr: endpoint.addr(),
                        }),
                        unsent: None,
                    });
                }
            }
        }
    }

    /// Adds to the endpoint's failure streak and, each time the streak
    /// reaches the outlier threshold, asks the health runner to eject it.
    fn count_failure(
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
