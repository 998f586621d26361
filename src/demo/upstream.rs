//! The demo's built-in upstreams: answer every request with their name after a
//! fixed delay, and say who they are in `x-upstream`. One can be switched to
//! fail 30 % of its requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub async fn spawn(
    name: &'static str,
    delay: Duration,
    failing: Option<Arc<AtomicBool>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (failing, served) = (failing.clone(), Arc::clone(&served));
            tokio::spawn(async move {
                let answer = service_fn(move |_request| {
                    let (failing, served) = (failing.clone(), Arc::clone(&served));
                    async move {
                        tokio::time::sleep(delay).await;
                        let n = served.fetch_add(1, Ordering::Relaxed);
                        let fail = failing.is_some_and(|f| f.load(Ordering::Relaxed)) && n % 10 < 3;
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        if fail {
                            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        response
                            .headers_mut()
                            .insert("x-upstream", http::HeaderValue::from_static(name));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    Ok(address)
}
