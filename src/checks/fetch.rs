//! One run of a check: the HTTP request, and the number read from the
//! answer. Every way the check itself can fail (no connection, an HTTP
//! error, a query error, no data, NaN, an answer that is not JSON or has no
//! number where the path points) comes back as `Err` with words for
//! `/status`: an inconclusive run, never the candidate's fault and never a
//! pass.
//!
//! HTTP/1.1 over one connection per run, plain or TLS (webpki roots): a
//! check runs at most once a second, so pooling would save nothing worth
//! its state.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::config::check::{escape_json, escape_none, escape_promql, escape_url, Values};
use crate::config::{CheckSource, WebCheck};

/// Largest answer read: a check's answer is one number and its wrapping.
const MAX_ANSWER: usize = 1024 * 1024;
/// How much of an error answer is quoted in `/status`.
const QUOTE: usize = 200;

/// Runs `source` once for `values`.
pub async fn run(source: &CheckSource, values: &Values<'_>) -> Result<f64, String> {
    match source {
        CheckSource::Prometheus { address, query } => {
            let query = query.render(values, escape_promql);
            prometheus(address, &query).await
        }
        CheckSource::Web(web) => self::web(web, values).await,
    }
}

async fn prometheus(address: &Uri, query: &str) -> Result<f64, String> {
    let base = address.to_string();
    let mut url = String::with_capacity(base.len() + query.len() * 2 + 24);
    url.push_str(base.trim_end_matches('/'));
    url.push_str("/api/v1/query?query=");
    escape_url(query, &mut url);
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("cannot build the query URL: {e}"))?;
    let (status, body) = send(Method::GET, &uri, Vec::new(), None)
        .await
        .map_err(|e| {
            format!(
                "Prometheus at {} unreachable: {e}",
                base.trim_end_matches('/')
            )
        })?;
    let json: Result<Value, _> = serde_json::from_slice(&body);
    // Prometheus answers 400/422/503 with a JSON error: its words say more
    // than the status.
    if let Ok(json) = &json {
        if json["status"] == "error" {
            return Err(format!(
                "Prometheus refused the query ({}): {}",
                json["errorType"].as_str().unwrap_or("error"),
                json["error"].as_str().unwrap_or("no reason given")
            ));
        }
    }
    if !status.is_success() {
        return Err(format!("Prometheus answered {status}: {}", quote(&body)));
    }
    let json = json.map_err(|e| format!("Prometheus's answer is not JSON: {e}"))?;
    number_from_prometheus(&json["data"])
}

/// The one number in an instant query's `data`.
pub fn number_from_prometheus(data: &Value) -> Result<f64, String> {
    let sample = match data["resultType"].as_str() {
        Some("vector") => {
            let series = data["result"].as_array().map_or(&[][..], Vec::as_slice);
            match series {
                [] => {
                    return Err("the query returned no data (an empty vector): the series may \
                         not exist yet, or the labels match nothing"
                        .into())
                }
                [one] => &one["value"],
                many => {
                    return Err(format!(
                        "the query returned {} series; aggregate them to one, such as with sum(...)",
                        many.len()
                    ))
                }
            }
        }
        Some("scalar") => &data["result"],
        Some(other) => {
            return Err(format!(
                "the query returned a {other}; a check needs an instant vector of one series, or a scalar"
            ))
        }
        None => return Err("Prometheus's answer has no data.resultType".into()),
    };
    let text = sample[1]
        .as_str()
        .ok_or("Prometheus's sample has no value")?;
    let value: f64 = text
        .parse()
        .map_err(|_| format!("Prometheus's value `{text}` is not a number"))?;
    finite(value, "the query")
}

async fn web(web: &WebCheck, values: &Values<'_>) -> Result<f64, String> {
    let url = web.url.render(values, escape_url);
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL after substitution: {e}"))?;
    let mut headers = Vec::with_capacity(web.headers.len() + 1);
    for (name, value) in &web.headers {
        let text = value.render(values, escape_none);
        let value = HeaderValue::from_str(&text)
            .map_err(|_| format!("header {name}: `{text}` cannot be sent as a header value"))?;
        headers.push((name.clone(), value));
    }
    if let Some(file) = &web.token_file {
        let token = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("the token file {} is empty", file.display()));
        }
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            format!(
                "the token in {} holds characters a header cannot carry",
                file.display()
            )
        })?;
        headers.push((http::header::AUTHORIZATION, value));
    }
    let body = web
        .body
        .as_ref()
        .map(|b| Bytes::from(b.render(values, escape_json)));
    let (status, answer) = send(web.method.clone(), &uri, headers, body)
        .await
        .map_err(|e| format!("{} unreachable: {e}", redact(&uri)))?;
    if !status.is_success() {
        return Err(format!(
            "the endpoint answered {status}: {}",
            quote(&answer)
        ));
    }
    let json: Value = serde_json::from_slice(&answer)
        .map_err(|e| format!("the answer is not JSON ({e}): {}", quote(&answer)))?;
    number_from_json(web, &json)
}

/// The number at the check's path in `json`.
pub fn number_from_json(web: &WebCheck, json: &Value) -> Result<f64, String> {
    let found = web.value.select(json)?;
    let value = match found {
        Value::Number(n) => n.as_f64().ok_or("the number does not fit a float")?,
        // Some APIs send numbers as strings ("0.013").
        Value::String(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("the value `{text}` is not a number"))?,
        Value::Null => return Err("the value is null: no data".into()),
        other => {
            return Err(format!(
                "the value {} is not a number",
                quote(other.to_string().as_bytes())
            ))
        }
    };
    finite(value, "the endpoint")
}

fn finite(value: f64, what: &str) -> Result<f64, String> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!(
            "{what} returned {value}, not a number a bound can judge"
        ))
    }
}

/// The URL without its query (it may carry a key).
fn redact(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str()),
        uri.path()
    )
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(QUOTE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_string(),
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS set-up: {e}"))
        })
        .clone()
}

/// One request on a new connection; the status and the body (at most
/// [`MAX_ANSWER`] bytes).
async fn send(
    method: Method,
    uri: &Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
) -> Result<(http::StatusCode, Bytes), String> {
    let host = uri.host().ok_or("the URL names no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let stream = TcpStream::connect((bare, port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(
            http::header::HOST,
            uri.authority().map_or(host, |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("veer/", env!("CARGO_PKG_VERSION")),
        );
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| format!("`{bare}` is not a TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(TokioIo::new(tls), request).await
    } else {
        exchange(TokioIo::new(stream), request).await
    }
}

async fn exchange<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_web_value_may_be_a_number_or_a_string_holding_one() {
        let web = |field: &str| WebCheck {
            url: crate::config::Template::parse("http://h/").expect("valid"),
            method: Method::GET,
            headers: Vec::new(),
            body: None,
            value: crate::config::ValuePath::Field(vec![field.to_string()]),
            token_file: None,
        };
        let json = json!({"n": 0.5, "s": " 0.25 ", "null": null, "list": [1], "bad": "high"});
        assert_eq!(number_from_json(&web("n"), &json), Ok(0.5));
        assert_eq!(number_from_json(&web("s"), &json), Ok(0.25));
        assert_eq!(
            number_from_json(&web("null"), &json),
            Err("the value is null: no data".into())
        );
        assert_eq!(
            number_from_json(&web("list"), &json),
            Err("the value [1] is not a number".into())
        );
        assert_eq!(
            number_from_json(&web("bad"), &json),
            Err("the value `high` is not a number".into())
        );
    }

    #[test]
    fn an_instant_vector_of_one_series_is_the_number() {
        let data =
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "0.25"]}]});
        assert_eq!(number_from_prometheus(&data), Ok(0.25));
        let scalar = json!({"resultType": "scalar", "result": [1.0, "3"]});
        assert_eq!(number_from_prometheus(&scalar), Ok(3.0));
    }

    #[test]
    fn empty_many_nan_and_matrix_answers_are_inconclusive() {
        let empty = json!({"resultType": "vector", "result": []});
        assert!(number_from_prometheus(&empty)
            .expect_err("empty")
            .contains("no data"));
        let two = json!({"resultType": "vector", "result": [
            {"metric": {}, "value": [1.0, "1"]}, {"metric": {}, "value": [1.0, "2"]}]});
        assert!(number_from_prometheus(&two)
            .expect_err("two")
            .contains("2 series"));
        let nan =
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "NaN"]}]});
        assert!(number_from_prometheus(&nan)
            .expect_err("nan")
            .contains("NaN"));
        let matrix = json!({"resultType": "matrix", "result": []});
        assert!(number_from_prometheus(&matrix)
            .expect_err("matrix")
            .contains("matrix"));
    }
}
