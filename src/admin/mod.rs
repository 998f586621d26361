//! The admin API, on its own listener: metrics, health, status, and the
//! operator's controls. Off the request path entirely; it reads the same
//! snapshot the proxy reads and changes things only through `control`.
//!
//! Every POST needs `Authorization: Bearer TOKEN` when a token is configured.
//! Every POST to an action — carried out or refused, the token checked or
//! not — leaves one line in the audit trail (`crate::audit`), written here
//! where the caller, the service's weights before and after, and the answer
//! are all known.

mod metrics;
mod page;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::{Control, ControlError};
use crate::guard::webhook::Webhooks;
use crate::reload::{Reloader, Trigger};

/// Largest admin request body accepted (a weights map is a few bytes).
const MAX_BODY: usize = 64 * 1024;

/// What the admin handlers share.
pub struct Admin {
    pub control: Arc<Control>,
    reloader: Option<Arc<Reloader>>,
    webhooks: Webhooks,
    token: Option<String>,
    ready: AtomicBool,
    draining: AtomicBool,
}

type AdminResponse = Response<Full<Bytes>>;

impl Admin {
    pub fn new(
        control: Arc<Control>,
        reloader: Option<Arc<Reloader>>,
        webhooks: Webhooks,
        token: Option<String>,
    ) -> Admin {
        Admin {
            control,
            reloader,
            webhooks,
            token,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Listeners are bound and a config is loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Shutting down: readiness answers 503 so load balancers move away.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Serves admin requests until `stop` changes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.changed() => return,
            };
            let Ok((stream, peer)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let admin = Arc::clone(&self);
            tokio::spawn(async move {
                let handler = service_fn(move |request| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.respond(request, peer).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    }

    /// A scrape streams its body (`metrics::stream`); every other answer is
    /// whole (`handle`).
    async fn respond(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Either<Full<Bytes>, metrics::MetricsBody>> {
        let scrape =
            request.method() == Method::GET && request.uri().path().trim_matches('/') == "metrics";
        // Reads are open; a token presented and wrong is refused by `handle`.
        let allowed =
            || !request.headers().contains_key(AUTHORIZATION) || self.authorize(&request).0.is_ok();
        if scrape && allowed() {
            let mut response =
                Response::new(Either::Right(metrics::stream(Arc::clone(&self.control))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return response;
        }
        self.handle(request, peer).await.map(Either::Left)
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
        let path = request.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = request.method().clone();
        if method == Method::POST {
            if let Some(action) = Action::of(&segments) {
                return self.act(request, peer, action).await;
            }
        }
        // Reads are open, but a token that is presented and wrong is refused
        // on a read too: a pipeline's `veer wait` learns its token is bad
        // before it needs it to roll back.
        if method == Method::POST || request.headers().contains_key(AUTHORIZATION) {
            if let (Err(refused), _) = self.authorize(&request) {
                return plain(refused.status, &refused.reason);
            }
        }
        match (&method, segments.as_slice()) {
            (&Method::GET, ["health", "liveness"]) => plain(StatusCode::OK, "alive"),
            (&Method::GET, ["health", "readiness"]) => {
                if self.draining.load(Ordering::Acquire) {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else if self.ready.load(Ordering::Acquire) {
                    plain(StatusCode::OK, "ready")
                } else {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }
            (&Method::GET, [""]) => page::index(),
            (&Method::GET, ["page", asset]) => page::asset(asset),
            (&Method::GET, ["services", service, "history"]) => self.history(service),
            (&Method::GET, ["status"]) => match status::body(&self.control) {
                Ok(body) => text(StatusCode::OK, "application/json", body),
                Err(err) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the status report: {err}"),
                ),
            },
            (
                _,
                ["metrics"]
                | ["health", "liveness" | "readiness"]
                | ["status"]
                | ["reload"]
                | [""]
                | ["services", _, "history"]
                | ["services", _, "weights" | "rollback" | "promote" | "pause" | "resume"],
            ) => plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed for this path (GET reads, POST acts)",
            ),
            _ => plain(
                StatusCode::NOT_FOUND,
                "no such admin endpoint; see GET / (the page), /status, /services/NAME/history, /metrics, /health/liveness, /health/readiness",
            ),
        }
    }

    /// `GET /services/{name}/history`: the service's release records,
    /// newest first.
    fn history(&self, service: &str) -> AdminResponse {
        let Some(mut records) = self.control.history(service) else {
            return plain(
                StatusCode::NOT_FOUND,
                &format!("no service `{service}` in the config; GET /status lists the services"),
            );
        };
        records.reverse();
        json(
            StatusCode::OK,
            &serde_json::json!({"service": service, "records": records}),
        )
    }

    /// Runs one control action and writes it to the audit trail: who asked,
    /// the service's weights before and after, and the answer.
    async fn act(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        action: Action<'_>,
    ) -> AdminResponse {
        let (authorized, fingerprint) = self.authorize(&request);
        let service = action.service();
        let before = self.control.snapshot();
        let answer = match authorized {
            Err(refused) => Err(refused),
            Ok(()) => self.dispatch(request, action).await,
        };
        let (before, after) =
            crate::audit::action_weights(&before, &self.control.snapshot(), service);
        let (status, detail) = match &answer {
            Ok(_) => (StatusCode::OK, None),
            Err(refusal) => (refusal.status, Some(refusal.reason.as_str())),
        };
        crate::audit::admin(
            crate::audit::Caller {
                peer,
                token: fingerprint.as_deref(),
            },
            crate::audit::Action {
                action: action.name(),
                service,
                before: &before,
                after: &after,
                result: if answer.is_ok() { "ok" } else { "refused" },
                status: Some(status.as_u16()),
                detail,
            },
        );
        match answer {
            Ok(value) => json(StatusCode::OK, &value),
            Err(Refusal {
                status,
                body: Some(body),
                ..
            }) => json(status, &body),
            Err(Refusal { status, reason, .. }) => plain(status, &reason),
        }
    }

    async fn dispatch(&self, request: Request<Incoming>, action: Action<'_>) -> Refusable {
        match action {
            Action::Reload => self.reload().await,
            Action::Weights(service) => {
                let body = read_json(request).await?;
                self.set_weights(service, body).await
            }
            Action::Rollback(service) => self.rollback(service).await,
            Action::Promote(service) => {
                let full = request
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "full" || kv == "full=true"));
                self.control.advance_rollout(service, full).await?;
                Ok(status::service_rollout(&self.control, service))
            }
            Action::Pause(service) => {
                let reason = pause_reason(request).await?;
                self.control
                    .pause_because(service, crate::state::history::Actor::Admin, reason)
                    .await?;
                Ok(status::service_rollout(&self.control, service))
            }
            Action::Resume(service) => {
                let cleared = self.control.resume(service).await?;
                Ok(
                    serde_json::json!({"service": service, "latches_cleared": cleared,
                    "weights": status::service_weights(&self.control, service)["weights"]}),
                )
            }
        }
    }

    async fn rollback(&self, service: &str) -> Refusable {
        let events = self.control.rollback(service).await?;
        let webhook = self
            .control
            .snapshot()
            .services
            .iter()
            .find(|s| &*s.name == service)
            .and_then(|s| s.guard.as_ref().and_then(|g| g.webhook.clone()));
        for event in &events {
            crate::guard::announce(&self.control, &self.webhooks, event, webhook.as_ref());
        }
        Ok(
            serde_json::json!({"service": service, "rolled_back": events.len(),
                "weights": status::service_weights(&self.control, service)["weights"]}),
        )
    }

    async fn reload(&self) -> Refusable {
        let Some(reloader) = self.reloader.clone() else {
            return Err(refuse(
                StatusCode::CONFLICT,
                "this proxy was started without a config file; there is nothing to reload",
            ));
        };
        // Its own task: a client that hangs up mid-reload does not cut the
        // reload short.
        let result = tokio::spawn(async move { reloader.reload(Trigger::Admin).await }).await;
        match result {
            Ok(Ok(())) => Ok(serde_json::json!({"result": "success"})),
            // The answer carries the errors as JSON; the audit line, as text.
            Ok(Err(errors)) => Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                reason: errors.join("; "),
                body: Some(serde_json::json!({"result": "failure", "errors": errors})),
            }),
            Err(err) => Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the reload task failed: {err}"),
            )),
        }
    }

    /// Checks the bearer token when one is configured. Also returns the
    /// presented token's fingerprint for the audit trail.
    fn authorize(&self, request: &Request<Incoming>) -> (Result<(), Refusal>, Option<String>) {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let fingerprint = presented.map(crate::audit::token_fingerprint);
        let Some(expected) = self.token.as_deref() else {
            return (Ok(()), fingerprint);
        };
        let result = match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "the admin token does not match; use the token in admin.token_file",
            )),
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "this admin API needs `Authorization: Bearer TOKEN` (the token in admin.token_file; \
                 the CLI takes --token-file or VEER_ADMIN_TOKEN)",
            )),
        };
        (result, fingerprint)
    }

    async fn set_weights(&self, service: &str, body: serde_json::Value) -> Refusable {
        let Some(map) = body.as_object() else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "expected a JSON object of version weights, e.g. {\"stable\": 0, \"canary\": 100}",
            ));
        };
        let mut weights = Vec::with_capacity(map.len());
        for (version, weight) in map {
            // The config's rule and message: a run-time weight is held to
            // what the file would accept.
            let whole = weight
                .as_i64()
                .map(i128::from)
                .or_else(|| weight.as_u64().map(i128::from))
                // Past u64 JSON has only floats: a whole one is still a
                // whole number, just far above the maximum.
                .or_else(|| {
                    weight
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() > 1e18)
                        .map(|f| if f > 0.0 { i128::MAX } else { i128::MIN })
                });
            let weight = match crate::config::weight_rule(whole, &weight.to_string()) {
                Ok(w) => w,
                Err(reason) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        format!("`{version}`: {reason}"),
                    ))
                }
            };
            weights.push((version.as_str(), weight));
        }
        if weights.is_empty() {
            return Err(refuse(StatusCode::BAD_REQUEST, "no weights given"));
        }
        self.control.set_weights(service, &weights).await?;
        Ok(status::service_weights(&self.control, service))
    }
}

/// A control action, named by its path.
#[derive(Debug, Clone, Copy)]
enum Action<'a> {
    Reload,
    Weights(&'a str),
    Rollback(&'a str),
    Promote(&'a str),
    Pause(&'a str),
    Resume(&'a str),
}

impl<'a> Action<'a> {
    fn of(segments: &[&'a str]) -> Option<Action<'a>> {
        Some(match *segments {
            ["reload"] => Action::Reload,
            ["services", service, "weights"] => Action::Weights(service),
            ["services", service, "rollback"] => Action::Rollback(service),
            ["services", service, "promote"] => Action::Promote(service),
            ["services", service, "pause"] => Action::Pause(service),
            ["services", service, "resume"] => Action::Resume(service),
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Action::Reload => "reload",
            Action::Weights(_) => "weights",
            Action::Rollback(_) => "rollback",
            Action::Promote(_) => "promote",
            Action::Pause(_) => "pause",
            Action::Resume(_) => "resume",
        }
    }

    fn service(self) -> Option<&'a str> {
        match self {
            Action::Reload => None,
            Action::Weights(s)
            | Action::Rollback(s)
            | Action::Promote(s)
            | Action::Pause(s)
            | Action::Resume(s) => Some(s),
        }
    }
}

/// Why an action was not carried out: the status, the reason in words (for
/// the answer and the audit trail), and a JSON body when the answer has one.
struct Refusal {
    status: StatusCode,
    reason: String,
    body: Option<serde_json::Value>,
}

type Refusable = Result<serde_json::Value, Refusal>;

/// A refused control command: its status comes from its kind, its words are
/// the operator's answer.
impl From<ControlError> for Refusal {
    fn from(refused: ControlError) -> Refusal {
        refuse(refused.status(), refused.to_string())
    }
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        body: None,
    }
}

/// The request's body, at most `MAX_BODY` bytes.
async fn read_body(request: Request<Incoming>) -> Result<bytes::Bytes, Refusal> {
    Ok(Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|err| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}"),
            )
        })?
        .to_bytes())
}

async fn read_json(request: Request<Incoming>) -> Refusable {
    let body = read_body(request).await?;
    serde_json::from_slice(&body).map_err(|err| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {err}"),
        )
    })
}

/// A pause's optional body, `{"reason": "..."}`: no body is a pause with
/// no reason given.
async fn pause_reason(request: Request<Incoming>) -> Result<Option<String>, Refusal> {
    let body = read_body(request).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        reason: Option<String>,
    }
    let parsed: Body = serde_json::from_slice(&body).map_err(|err| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("a pause's body is `{{\"reason\": \"why\"}}` or nothing: {err}"),
        )
    })?;
    Ok(parsed
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .map(|r| format!("by an operator: {r}")))
}

/// Compares without an early exit, so the time taken does not tell an
/// attacker how much of a guessed token was right (`subtle` keeps the
/// optimiser from putting the early exit back).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, message: &str) -> AdminResponse {
    text(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let mut body = value.to_string();
    body.push('\n');
    text(status, "application/json", body)
}
