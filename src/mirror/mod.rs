//! Traffic mirroring: a share of a service's requests is copied to a shadow
//! version, on a task of its own, and the shadow's answer is compared with
//! the live one (`pairs`) and then thrown away.
//!
//! The client never waits for a copy and a copy never fails a client: the
//! copy is made after the live version is chosen, sent on a spawned task with
//! its own budget (`mirror.timeout`), and bounded per service by a semaphore
//! of `mirror.concurrency` permits taken without waiting: a shadow that is
//! slow or down holds every permit, and the copies beyond are dropped and
//! counted, never queued. A request body is copied only for the methods the
//! config lists (safe ones unless `allow_unsafe`), as it streams to the live
//! upstream, up to `max_body`; a larger body is not mirrored. Memory is thus
//! at most `concurrency × max_body` per service.
//!
//! A shadow that answers nothing ([`Breaker`]: refused, reset, timed out
//! `FAILURES_TO_PAUSE` times in a row) is given a rest: for `PAUSE` no
//! copies are made (they count as dropped), then copies flow again and the
//! first one that fails starts the next rest. A shadow that is down thus
//! costs the proxy a handful of attempts a second, not one per request, and
//! its pairs still say it failed.
//!
//! The long-lived part (counts, pairs, permits) outlasts snapshots in
//! [`MirrorRegistry`], per service, shadow version and revision: a reload
//! keeps it, a new revision of the shadow starts its pairs afresh.
//!
//! Depends on `config`, `clock` and `upstream` (the retry loop sends the
//! copy, the body tee takes it).

pub mod pairs;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{Protocol, Service, Timeouts};
use crate::upstream::body::{BodyTee, TeeEnd};
use crate::upstream::retry::Attempts;
use crate::upstream::{Endpoint, RequestBody};
pub use pairs::{Answer, PairFigures, ShadowPolicy, ShadowVerdict};

/// Set on every copy, so the shadow can tell it from live traffic and skip
/// side effects (sending mail, charging cards, writing shared stores).
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-veer-shadow");

/// The window pairs are judged over when the service has no guard.
const DEFAULT_PAIR_WINDOW: Duration = Duration::from_secs(30);

/// The results `veer_mirror_requests_total` counts, in its label's words.
pub const RESULTS: [&str; 4] = ["sent", "dropped", "failed", "skipped"];

/// What happened to copies, by result.
#[derive(Debug, Default)]
pub struct Counts {
    /// Sent, and the shadow answered (whatever its status).
    pub sent: AtomicU64,
    /// Not made: every permit was taken (the shadow is slow), or the shadow
    /// is resting after answering nothing (down).
    pub dropped: AtomicU64,
    /// Sent, and no answer came: refused, reset, timed out, no endpoint.
    pub failed: AtomicU64,
    /// Not sent: the body outgrew `max_body`, or the client's body never
    /// completed.
    pub skipped: AtomicU64,
}

impl Counts {
    pub fn get(&self) -> [u64; 4] {
        [
            self.sent.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        ]
    }
}

/// Copies that got no answer in a row before the shadow is rested.
const FAILURES_TO_PAUSE: u32 = 5;
/// How long a shadow that answers nothing gets no copies.
const PAUSE: Duration = Duration::from_secs(1);

/// Rests a shadow that answers nothing (see the module's comment).
#[derive(Debug, Default)]
pub struct Breaker {
    /// Copies in a row that got no answer.
    failures: AtomicU32,
    /// `clock::now_ms()` until which no copy is made; 0 when none is due.
    resting_until_ms: AtomicU64,
}

impl Breaker {
    /// Whether the shadow is resting now.
    fn resting(&self) -> bool {
        let until = self.resting_until_ms.load(Ordering::Relaxed);
        until != 0 && crate::clock::now_ms() < until
    }

    fn answered(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_PAUSE && !self.resting() {
            let pause = u64::try_from(PAUSE.as_millis()).unwrap_or(u64::MAX);
            self.resting_until_ms
                .store(crate::clock::now_ms() + pause, Ordering::Relaxed);
            if failures == FAILURES_TO_PAUSE {
                tracing::warn!(
                    failures,
                    "the shadow answered none of the last copies; resting it (copies are dropped) for {PAUSE:?} at a time until it answers"
                );
            }
        }
    }
}

/// What outlasts snapshots: the counts, the pairs and the breaker.
#[derive(Debug, Default)]
pub struct MirrorState {
    pub counts: Counts,
    pub pairs: pairs::PairWindow,
    pub breaker: Breaker,
}

/// One service's mirror as a snapshot holds it.
#[derive(Debug)]
pub struct Mirror {
    /// Copies are made (the shadow version is not latched).
    pub active: bool,
    pub service: Arc<str>,
    /// The shadow version, an index into the service's versions.
    pub version: usize,
    pub version_name: Arc<str>,
    pub percent: u32,
    methods: Vec<Method>,
    deterministic: Vec<String>,
    max_body: usize,
    timeout: Duration,
    timeouts: Timeouts,
    /// The longest the live answer is awaited for a pair.
    live_wait: Duration,
    /// The shadow's endpoints that may take requests now.
    endpoints: Vec<Arc<Endpoint>>,
    protocol: Protocol,
    tls: bool,
    /// The window pairs are read over: the guard's (at most
    /// [`pairs::SLOTS`] seconds).
    pub window: Duration,
    permits: Arc<Semaphore>,
    pub concurrency: usize,
    pub state: Arc<MirrorState>,
}

/// The long-lived parts of every mirror, kept across snapshots.
#[derive(Debug, Default)]
pub struct MirrorRegistry {
    entries: HashMap<(String, String, String), Entry>,
    used: HashSet<(String, String, String)>,
}

#[derive(Debug)]
struct Entry {
    state: Arc<MirrorState>,
    permits: Arc<Semaphore>,
    concurrency: usize,
}

impl MirrorRegistry {
    /// The mirror of `service` for a snapshot, if it has one; `endpoints`
    /// are the shadow version's available endpoints.
    /// A shadow version that is `latched` gets no copies: the mirror stays
    /// (its counts and pairs are still reported) but sends nothing.
    pub fn mirror(
        &mut self,
        service: &Service,
        endpoints: &[Arc<Endpoint>],
        latched: bool,
    ) -> Option<Arc<Mirror>> {
        let config = service.mirror.as_ref()?;
        let version = service.versions.get(config.version)?;
        let key = (
            service.name.clone(),
            version.name.clone(),
            version.revision.clone(),
        );
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            state: Arc::default(),
            permits: Arc::new(Semaphore::new(config.concurrency)),
            concurrency: config.concurrency,
        });
        if entry.concurrency != config.concurrency {
            // Copies in flight keep their permits of the old semaphore; new
            // ones count against the new size.
            entry.permits = Arc::new(Semaphore::new(config.concurrency));
            entry.concurrency = config.concurrency;
        }
        self.used.insert(key);
        let window = service
            .guard
            .as_ref()
            .map_or(DEFAULT_PAIR_WINDOW, |g| g.window)
            .min(Duration::from_secs(pairs::SLOTS as u64));
        Some(Arc::new(Mirror {
            active: !latched,
            service: service.name.as_str().into(),
            version: config.version,
            version_name: version.name.as_str().into(),
            percent: config.percent.get(),
            methods: config.methods.clone(),
            deterministic: config.deterministic.clone(),
            max_body: config.max_body,
            timeout: config.timeout,
            timeouts: Timeouts {
                connect: service.timeouts.connect.min(config.timeout),
                request: service.timeouts.request.min(config.timeout),
                idle: service.timeouts.idle,
            },
            live_wait: service.timeouts.request + Duration::from_secs(1),
            endpoints: endpoints.to_vec(),
            protocol: version.protocol,
            tls: version.tls.is_some(),
            window,
            permits: Arc::clone(&entry.permits),
            concurrency: config.concurrency,
            state: Arc::clone(&entry.state),
        }))
    }

    /// Keeps the mirror of a service part a snapshot keeps whole (same
    /// config, weights, latches and endpoints): its `Mirror` is still right,
    /// and its counts and pairs must not be forgotten.
    pub fn keep(&mut self, service: &Service) {
        if let Some(version) = service
            .mirror
            .as_ref()
            .and_then(|config| service.versions.get(config.version))
        {
            self.used.insert((
                service.name.clone(),
                version.name.clone(),
                version.revision.clone(),
            ));
        }
    }

    /// Forgets the mirrors the last snapshot did not ask for.
    pub fn retain_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.entries.retain(|key, _| used.contains(key));
    }
}

impl Mirror {
    /// The pairs of the mirror's window, now.
    pub fn figures(&self) -> PairFigures {
        self.state
            .pairs
            .figures(crate::clock::now_ms(), self.window)
    }

    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.concurrency
            .saturating_sub(self.permits.available_permits())
    }
}

/// The live side of a mirrored request: tells the copy's task how the live
/// request was answered, for the pair. Dropped unanswered (the live request
/// failed or the client left), the pair is not recorded.
#[derive(Debug)]
pub struct Live {
    head: oneshot::Sender<(Answer, Duration)>,
    digest: Option<oneshot::Sender<u64>>,
}

impl Live {
    /// The live answer's head arrived. On a deterministic route, the digest
    /// the live body is to be fed to as it streams to the client.
    pub fn answered(self, status: u16, latency: Duration) -> Option<BodyDigest> {
        let _ = self.head.send((Answer::Status(status), latency));
        self.digest.map(|done| BodyDigest {
            hasher: DefaultHasher::new(),
            done: Some(done),
        })
    }
}

/// A digest of a response body taken as it streams; its value goes to the
/// copy's task only when the body ended complete.
#[derive(Debug)]
pub struct BodyDigest {
    hasher: DefaultHasher,
    done: Option<oneshot::Sender<u64>>,
}

impl BodyDigest {
    pub fn data(&mut self, data: &[u8]) {
        self.hasher.write(data);
    }

    /// The body ended complete.
    pub fn end(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.hasher.finish());
        }
    }
}

/// Copies this request to the shadow when the mirror takes it: `live` is
/// the version chosen for the live request, `body` the live body (teed into
/// the copy when there is one). Returns the live side of the pair. Called on
/// the request path: a few comparisons and, for a request not copied, no
/// allocation.
pub fn tap(
    mirror: &Arc<Mirror>,
    live: usize,
    parts: &http::request::Parts,
    host: Option<&HeaderValue>,
    body: &mut RequestBody,
) -> Option<Live> {
    if !mirror.active || live == mirror.version || !mirror.methods.contains(&parts.method) {
        return None;
    }
    if mirror.percent < 100 && fastrand::u32(0..100) >= mirror.percent {
        return None;
    }
    let counts = &mirror.state.counts;
    if mirror.state.breaker.resting() {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let Ok(permit) = Arc::clone(&mirror.permits).try_acquire_owned() else {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let copied_body = if http_body::Body::is_end_stream(body) {
        None
    } else {
        let announced = http_body::Body::size_hint(body).lower();
        if announced > mirror.max_body as u64 {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (tee, copy) = BodyTee::new(mirror.max_body);
        if body.tee(tee).is_err() {
            return None;
        }
        Some(copy)
    };
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.headers_mut() = parts.headers.clone();
    head.headers_mut()
        .insert(SHADOW_HEADER, HeaderValue::from_static("1"));
    fit(&mut head, mirror.protocol, mirror.tls, host);
    let (live_tx, live_rx) = oneshot::channel();
    let path = parts.uri.path();
    let (digest_tx, digest_rx) = if mirror
        .deterministic
        .iter()
        .any(|prefix| path.starts_with(prefix.as_str()))
    {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    tokio::spawn(copy(
        Arc::clone(mirror),
        permit,
        head,
        copied_body,
        (live_rx, digest_rx),
    ));
    Some(Live {
        head: live_tx,
        digest: digest_tx,
    })
}

/// Sends one copy and records its pair; holds its permit to the end.
async fn copy(
    mirror: Arc<Mirror>,
    _permit: OwnedSemaphorePermit,
    head: Request<()>,
    body: Option<oneshot::Receiver<Result<Vec<bytes::Bytes>, TeeEnd>>>,
    (live, live_digest): (
        oneshot::Receiver<(Answer, Duration)>,
        Option<oneshot::Receiver<u64>>,
    ),
) {
    let counts = &mirror.state.counts;
    let deadline = Instant::now() + mirror.timeout;
    let body = match body {
        None => RequestBody::Empty,
        Some(copy) => match tokio::time::timeout_at(deadline, copy).await {
            Ok(Ok(Ok(chunks))) => RequestBody::copied(chunks),
            // Over the cap, a client body that failed, or one still arriving
            // when the budget ran out: nothing complete to send.
            _ => {
                counts.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let request = head.map(|()| body);
    let attempts = Attempts {
        endpoints: &mirror.endpoints,
        timeouts: &mirror.timeouts,
        upgrade: false,
        call_deadline: Some(deadline),
        body_watch: None,
    };
    let sent_at = Instant::now();
    let mut timer = None;
    // Failures of the shadow's endpoints are the shadow's own business: they
    // count in the pairs, and never eject an endpoint live traffic uses.
    let mut digest = live_digest.is_some().then(DefaultHasher::new);
    let shadow = match attempts.send(request, &mut timer, sent_at, |_, _| {}).await {
        Ok((response, lease)) => {
            let answer = (
                Answer::Status(response.status().as_u16()),
                sent_at.elapsed(),
            );
            counts.sent.fetch_add(1, Ordering::Relaxed);
            mirror.state.breaker.answered();
            let mut body = response.into_body();
            // Read to its end, the connection goes back to the pool.
            let drained = tokio::time::timeout_at(deadline, async {
                while let Some(frame) = body.frame().await {
                    match frame {
                        Err(_) => return false,
                        Ok(frame) => {
                            if let (Some(digest), Some(data)) = (digest.as_mut(), frame.data_ref())
                            {
                                digest.write(data);
                            }
                        }
                    }
                }
                true
            })
            .await;
            if drained == Ok(true) {
                body.release(lease);
            } else {
                digest = None;
            }
            answer
        }
        Err(_) => {
            digest = None;
            counts.failed.fetch_add(1, Ordering::Relaxed);
            mirror.state.breaker.failed();
            (Answer::Failed, sent_at.elapsed())
        }
    };
    let Ok(Ok(live)) = tokio::time::timeout(mirror.live_wait, live).await else {
        return;
    };
    // Bodies are compared only when both came whole.
    let bodies_differ = match (live_digest, digest) {
        (Some(live), Some(shadow)) => matches!(
            tokio::time::timeout(mirror.live_wait, live).await,
            Ok(Ok(live)) if live != shadow.finish()
        ),
        _ => false,
    };
    mirror
        .state
        .pairs
        .record(crate::clock::now_ms(), live, shadow, bodies_differ);
}

/// The form the shadow's protocol wants, as the proxy gives live requests:
/// origin-form and `Host` for HTTP/1.1, absolute-form without `Host` for
/// HTTP/2.
fn fit(request: &mut Request<()>, protocol: Protocol, tls: bool, host: Option<&HeaderValue>) {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        Protocol::Http1 => {
            *request.version_mut() = Version::HTTP_11;
            *request.uri_mut() = Uri::from(path);
            if let Some(host) = host {
                request.headers_mut().insert(HOST, host.clone());
            }
        }
        Protocol::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            let authority = host
                .and_then(|h| h.to_str().ok())
                .and_then(|h| Authority::try_from(h).ok());
            if let Some(authority) = authority {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
                parts.authority = Some(authority);
                parts.path_and_query = Some(path);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
            request.headers_mut().remove(HOST);
        }
    }
}

/// `veer_mirror_requests_total`, one series per result of every mirror.
pub fn render<'a>(text: &mut String, mirrors: impl Iterator<Item = &'a Mirror>) {
    let mut mirrors = mirrors.peekable();
    if mirrors.peek().is_none() {
        return;
    }
    text.push_str(
        "# HELP veer_mirror_requests_total Copies of live requests for a shadow version, by result: sent (answered), dropped (over the concurrency budget, or the shadow resting after answering nothing), failed (no answer), skipped (body over max_body or incomplete).\n# TYPE veer_mirror_requests_total counter\n",
    );
    for mirror in mirrors {
        for (result, count) in RESULTS.iter().zip(mirror.state.counts.get()) {
            // Service and version names are limited to characters that need
            // no escaping in a label value.
            let _ = writeln!(
                text,
                "veer_mirror_requests_total{{service=\"{}\",version=\"{}\",result=\"{result}\"}} {count}",
                mirror.service, mirror.version_name
            );
        }
    }
}

/// The shadow stage's thresholds for `rollout`, with the guard's
/// `min_requests` as the default.
pub fn policy(shadow: &crate::config::Shadow, guard_min_requests: u64) -> ShadowPolicy {
    ShadowPolicy {
        min_requests: shadow.min_requests.unwrap_or(guard_min_requests),
        max_mismatch_rate: shadow.max_mismatch_rate.get(),
        max_latency_ratio: shadow.max_latency_ratio.map(|r| r.get()),
    }
}
