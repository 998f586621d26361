//! One active health probe: a fresh connection, `GET path`, the status
//! compared with the expected ranges. It never uses the endpoint's pool nor
//! its outstanding count, and nothing about it reaches metrics or windows:
//! probes are not user traffic.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::Protocol;

/// Probes `addr`; `Ok` with the status when it is in `expected`, `Err` with
/// the reason otherwise.
pub async fn probe(
    addr: SocketAddr,
    protocol: Protocol,
    path: &str,
    timeout: Duration,
    expected: &[(u16, u16)],
) -> Result<StatusCode, String> {
    let status = tokio::time::timeout(timeout, request(addr, protocol, path))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let code = status.as_u16();
    if expected
        .iter()
        .any(|&(low, high)| (low..=high).contains(&code))
    {
        Ok(status)
    } else {
        Err(format!("answered {status}"))
    }
}

async fn request(addr: SocketAddr, protocol: Protocol, path: &str) -> Result<StatusCode, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let authority = addr.to_string();
    let response = match protocol {
        Protocol::Http1 => {
            let (mut sender, connection) = http1::handshake(io).await.map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = Request::get(path)
                .header(http::header::HOST, &authority)
                .header(http::header::USER_AGENT, "veer-health-check")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?
        }
        Protocol::Http2 => {
            let (mut sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = Request::get(format!("http://{authority}{path}"))
                .header(http::header::USER_AGENT, "veer-health-check")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let status = response.status();
    // Read the body so the upstream sees a complete exchange.
    let _ = response.into_body().collect().await;
    Ok(status)
}
