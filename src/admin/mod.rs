//! The admin API, on its own listener: metrics, health, status, and the
//! operator's controls. Off the request path entirely; it reads the same
//! snapshot the proxy reads and changes things only through `control`.
//!
//! Every POST needs `Authorization: Bearer TOKEN` when a token is configured.

mod status;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::Control;
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
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let admin = Arc::clone(&self);
            tokio::spawn(async move {
                let handler = service_fn(move |request| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.handle(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> AdminResponse {
        let path = request.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = request.method().clone();
        // Reads are open, but a token that is presented and wrong is refused
        // on a read too: a pipeline's `veer wait` learns its token is bad
        // before it needs it to roll back.
        if method == Method::POST || request.headers().contains_key(AUTHORIZATION) {
            if let Some(refused) = self.authorize(&request) {
                return refused;
            }
        }
        match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.control.telemetry().render(),
            ),
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
            (&Method::GET, ["status"]) => json(StatusCode::OK, &status::report(&self.control)),
            (&Method::POST, ["services", service, "weights"]) => {
                let service = (*service).to_string();
                match read_json(request).await {
                    Ok(body) => self.set_weights(&service, body),
                    Err(response) => response,
                }
            }
            (&Method::POST, ["reload"]) => self.reload().await,
            (&Method::POST, ["services", service, "rollback"]) => self.rollback(service),
            (&Method::POST, ["services", service, "promote"]) => {
                let full = request
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "full" || kv == "full=true"));
                match self.control.advance_rollout(service, full) {
                    Ok(_) => json(StatusCode::OK, &status::service_rollout(&self.control, service)),
                    Err(reason) if reason.starts_with("no service") => {
                        plain(StatusCode::NOT_FOUND, &reason)
                    }
                    Err(reason) => plain(StatusCode::CONFLICT, &reason),
                }
            }
            (&Method::POST, ["services", service, "pause"]) => match self.control.pause(service) {
                Ok(()) => json(StatusCode::OK, &status::service_rollout(&self.control, service)),
                Err(reason) if reason.starts_with("no service") => plain(StatusCode::NOT_FOUND, &reason),
                Err(reason) => plain(StatusCode::CONFLICT, &reason),
            },
            (&Method::POST, ["services", service, "resume"]) => {
                match self.control.resume(service) {
                    Ok(cleared) => json(
                        StatusCode::OK,
                        &serde_json::json!({"service": service, "latches_cleared": cleared,
                            "weights": status::service_weights(&self.control, service)["weights"]}),
                    ),
                    Err(reason) => plain(StatusCode::NOT_FOUND, &reason),
                }
            }
            (
                _,
                ["metrics"]
                | ["health", "liveness" | "readiness"]
                | ["status"]
                | ["reload"]
                | ["services", _, "weights" | "rollback" | "promote" | "pause" | "resume"],
            ) => plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed for this path (GET reads, POST acts)",
            ),
            _ => plain(
                StatusCode::NOT_FOUND,
                "no such admin endpoint; see GET /status, /metrics, /health/liveness, /health/readiness",
            ),
        }
    }

    fn rollback(&self, service: &str) -> AdminResponse {
        match self.control.rollback(service) {
            Ok(events) => {
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
                json(
                    StatusCode::OK,
                    &serde_json::json!({"service": service, "rolled_back": events.len(),
                        "weights": status::service_weights(&self.control, service)["weights"]}),
                )
            }
            Err(reason) if reason.starts_with("no service") => {
                plain(StatusCode::NOT_FOUND, &reason)
            }
            Err(reason) => plain(StatusCode::CONFLICT, &reason),
        }
    }

    async fn reload(&self) -> AdminResponse {
        let Some(reloader) = self.reloader.clone() else {
            return plain(
                StatusCode::CONFLICT,
                "this proxy was started without a config file; there is nothing to reload",
            );
        };
        let result = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await;
        match result {
            Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({"result": "success"})),
            Ok(Err(errors)) => json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"result": "failure", "errors": errors}),
            ),
            Err(err) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the reload task failed: {err}"),
            ),
        }
    }

    fn authorize(&self, request: &Request<Incoming>) -> Option<AdminResponse> {
        let expected = self.token.as_deref()?;
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) => None,
            Some(_) => Some(plain(
                StatusCode::UNAUTHORIZED,
                "the admin token does not match; use the token in admin.token_file",
            )),
            None => Some(plain(
                StatusCode::UNAUTHORIZED,
                "this admin API needs `Authorization: Bearer TOKEN` (the token in admin.token_file; \
                 the CLI takes --token-file or VEER_ADMIN_TOKEN)",
            )),
        }
    }

    fn set_weights(&self, service: &str, body: serde_json::Value) -> AdminResponse {
        let Some(map) = body.as_object() else {
            return plain(
                StatusCode::BAD_REQUEST,
                "expected a JSON object of version weights, e.g. {\"stable\": 0, \"canary\": 100}",
            );
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
                    return plain(StatusCode::BAD_REQUEST, &format!("`{version}`: {reason}"))
                }
            };
            weights.push((version.as_str(), weight));
        }
        if weights.is_empty() {
            return plain(StatusCode::BAD_REQUEST, "no weights given");
        }
        match self.control.set_weights(service, &weights) {
            Ok(()) => json(
                StatusCode::OK,
                &status::service_weights(&self.control, service),
            ),
            Err(refused) => plain(refused.status(), &refused.to_string()),
        }
    }
}

async fn read_json(request: Request<Incoming>) -> Result<serde_json::Value, AdminResponse> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|err| {
            plain(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {err}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|err| {
        plain(
            StatusCode::BAD_REQUEST,
            &format!("the body is not valid JSON: {err}"),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
