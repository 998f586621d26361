//! Header rewriting between client and upstream (RFC 9110 §7.6.1): hop-by-hop
//! headers, and those the `Connection` header names, stay on their own hop;
//! `X-Forwarded-For/-Proto/-Host` tell the upstream who asked. Header names are
//! constants and per-connection values are built once per connection, so a
//! request pays no allocation here unless it carries unusual headers.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE,
};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers. With `upgrade`, keeps `Upgrade` and sets
/// `Connection: upgrade`, which a WebSocket handshake needs on the next hop too.
/// `Content-Length` goes with `Transfer-Encoding`, and is made one value
/// when it came as several equal ones.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are there (most
    // messages carry none, or only `Connection`), so only those are removed:
    // a removal is a hash and a probe, and this runs twice per request.
    let mut present = 0u8;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name);
    }
    if present & CONNECTION_BIT != 0 {
        if let Some(named) = connection_named_headers(headers) {
            for name in named {
                if !(upgrade && name == UPGRADE) {
                    headers.remove(&name);
                }
            }
        }
        headers.remove(CONNECTION);
    }
    if present & KEEP_ALIVE_BIT != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & PROXY_CONNECTION_BIT != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(TRANSFER_ENCODING);
        // The transfer coding framed this message, not the length beside it
        // (RFC 9112 §6.3: an intermediary removes it). Passed on, it would
        // frame the next hop's message at a length that is not the body's.
        if present & CONTENT_LENGTH_BIT != 0 {
            headers.remove(CONTENT_LENGTH);
        }
    } else if present & CONTENT_LENGTH_BIT != 0 {
        single_content_length(headers);
    }
    // `TE: trailers` is end-to-end in practice: gRPC servers require it.
    if present & TE_BIT != 0
        && headers
            .get(TE)
            .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(UPGRADE);
    }
}

/// Makes a `Content-Length` given as a list (`5, 5`) or on several lines
/// (all equal: the upstream's framing check refused any other) one value,
/// the only form an HTTP/2 client accepts and the one every HTTP/1.1 client
/// reads alike. Allocates only for such a response.
fn single_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else { return };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let single = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .and_then(|digits| HeaderValue::from_bytes(digits).ok());
    if let Some(single) = single {
        headers.insert(CONTENT_LENGTH, single);
    }
}

const CONNECTION_BIT: u8 = 1;
const KEEP_ALIVE_BIT: u8 = 2;
const PROXY_CONNECTION_BIT: u8 = 4;
const TRANSFER_ENCODING_BIT: u8 = 8;
const TE_BIT: u8 = 16;
const UPGRADE_BIT: u8 = 32;
/// Not hop-by-hop, but framing this module keeps straight on the way.
const CONTENT_LENGTH_BIT: u8 = 64;

/// Which hop-by-hop header `name` is, as a bit (0 for an end-to-end one).
/// Standard names compare as enum tags, the two custom ones by bytes.
#[inline]
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == CONNECTION {
        CONNECTION_BIT
    } else if name == TRANSFER_ENCODING {
        TRANSFER_ENCODING_BIT
    } else if name == TE {
        TE_BIT
    } else if name == UPGRADE {
        UPGRADE_BIT
    } else if name == KEEP_ALIVE {
        KEEP_ALIVE_BIT
    } else if name == PROXY_CONNECTION {
        PROXY_CONNECTION_BIT
    } else if name == CONTENT_LENGTH {
        CONTENT_LENGTH_BIT
    } else {
        0
    }
}

/// Header names listed in `Connection`, other than the ones removed anyway.
/// `None` (no allocation) in the common case of `keep-alive`/`close` only.
fn connection_named_headers(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut named: Option<Vec<HeaderName>> = None;
    for token in crate::connection_header::tokens(headers) {
        if token.is_empty()
            || token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            named.get_or_insert_with(Vec::new).push(name);
        }
    }
    named
}

/// True when the request asks to switch protocols (WebSocket over HTTP/1.1).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && crate::connection_header::names(headers, b"upgrade")
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the host the client asked for).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        None => client_ip.clone(),
        Some(_) => {
            // Several header lines or one list: join them and add ours.
            let mut joined = Vec::new();
            for value in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(&X_FORWARDED_FOR, forwarded_for);
    headers.insert(&X_FORWARDED_PROTO, proto.clone());
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
}

/// Sets the client-identity header of an mTLS listener: whatever the client
/// sent under that name goes, the verified identity (if any) comes.
pub fn set_identity(headers: &mut HeaderMap, header: &HeaderName, identity: Option<&HeaderValue>) {
    headers.remove(header);
    if let Some(identity) = identity {
        headers.insert(header.clone(), identity.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn transfer_encoding_takes_content_length_with_it() {
        let mut h = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("content-length").is_none(), "{h:?}");
        assert_eq!(h.len(), 1, "{h:?}");
        // Without a transfer coding the length is the framing: it stays.
        let mut h = map(&[("content-length", "5")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn a_repeated_content_length_goes_on_as_one_value() {
        for pairs in [
            &[("content-length", "5, 5")][..],
            &[("content-length", "5"), ("content-length", " 5")][..],
            &[("content-length", "5,5"), ("content-length", "5")][..],
        ] {
            let mut h = map(pairs);
            single_content_length(&mut h);
            let all: Vec<_> = h.get_all("content-length").iter().collect();
            assert_eq!(all, ["5"], "{pairs:?}");
        }
        let mut h = map(&[("content-length", "12")]);
        single_content_length(&mut h);
        assert_eq!(h["content-length"], "12");
        let mut h = map(&[]);
        single_content_length(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_upgrading() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn identity_replaces_what_the_client_sent() {
        let header = HeaderName::from_static("x-client-identity");
        let mut h = map(&[("x-client-identity", "forged"), ("x-client-identity", "2")]);
        set_identity(&mut h, &header, None);
        assert!(h.get(&header).is_none());
        let verified = HeaderValue::from_static("Subject=\"CN=a\"");
        let mut h = map(&[("x-client-identity", "forged")]);
        set_identity(&mut h, &header, Some(&verified));
        assert_eq!(h.get_all(&header).iter().collect::<Vec<_>>(), [&verified]);
    }

    #[test]
    fn forwarded_for_appends() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let proto = HeaderValue::from_static("http");
        let host = HeaderValue::from_static("app.example.com");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        set_forwarded(&mut h, &ip, &proto, Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &ip, &proto, None);
        assert_eq!(fresh["x-forwarded-for"], "10.0.0.9");
    }
}
