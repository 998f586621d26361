//! A small client for the admin API, used by the operator commands (`status`,
//! `weights`, ...). Plain HTTP/1.1 over one connection per command.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// `host:port`
    pub authority: String,
    pub token: Option<String>,
}

/// Why an operator command got no answer; each carries the whole message
/// the user sees, and its kind picks the exit status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The admin API could not be reached at all.
    #[error("{0}")]
    Unreachable(String),
    /// The admin API refused the token (401/403): retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// The command line was wrong (bad URL, unreadable token file).
    #[error("{0}")]
    Usage(String),
}

impl AdminTarget {
    /// From `--admin URL` and `--token-file` / `VEER_ADMIN_TOKEN`.
    pub fn new(
        url: &str,
        token_file: Option<&std::path::Path>,
        token: Option<String>,
    ) -> Result<AdminTarget, ClientError> {
        let uri: http::Uri = url.parse().map_err(|e| {
            ClientError::Usage(format!(
                "--admin `{url}` is not a URL ({e}); use e.g. http://127.0.0.1:9901"
            ))
        })?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(ClientError::Usage(format!(
                "--admin `{url}`: only http:// is supported for the admin API"
            )));
        }
        let authority = uri
            .authority()
            .map(|a| {
                if a.port().is_some() {
                    a.to_string()
                } else {
                    format!("{}:80", a.host())
                }
            })
            .ok_or_else(|| ClientError::Usage(format!("--admin `{url}` names no host")))?;
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ClientError::Usage(format!(
                            "cannot read --token-file {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => token.map(|t| t.trim().to_string()),
        };
        Ok(AdminTarget { authority, token })
    }

    /// Sends one request; returns the status and body text.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, String), ClientError> {
        tokio::time::timeout(TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                ClientError::Unreachable(format!(
                    "the admin API at {} did not answer within {TIMEOUT:?}",
                    self.authority
                ))
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, String), ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!(
                "cannot reach the admin API at {}: {e} (is veer running? set --admin or VEER_ADMIN)",
                self.authority
            ))
        };
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
}
