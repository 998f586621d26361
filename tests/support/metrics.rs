//! Reading veer's `/metrics` as Prometheus text, with an independent parser.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};

use super::client::{get, send, HttpClient};

/// `/metrics` from the admin API at `admin`, parsed.
pub async fn scrape(client: &HttpClient, admin: SocketAddr) -> Scrape {
    let answer = send(client, get(&format!("http://{admin}/metrics"), None)).await;
    assert_eq!(answer.status, 200);
    Scrape::parse(answer.text().lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The sum of `name`'s samples whose labels include `labels`.
pub fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
