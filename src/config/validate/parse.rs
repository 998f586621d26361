//! The free parsers: pure functions from text to a value or a reason,
//! unit-tested without a config around them.

use super::*;

/// Whether two bound addresses would collide: same port and the same IP, or
/// either is a wildcard (`0.0.0.0`, `[::]`), which also takes the port on
/// every address. Port 0 asks the OS for a free port and never collides.
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An address to listen on: `IP:PORT`, any IP (wildcards too), port 0 allowed.
pub(crate) fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse::<SocketAddr>()
        .map_err(|_| address_error(text, "127.0.0.1:8080"))
}

/// An upstream endpoint: `IP:PORT` that can be connected to.
pub(crate) fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    let address = text
        .trim()
        .parse::<SocketAddr>()
        .map_err(|_| address_error(text, "127.0.0.1:18081"))?;
    if address.port() == 0 {
        return Err(format!(
            "`{text}` has port 0: give the port the endpoint listens on"
        ));
    }
    if address.ip().is_unspecified() {
        return Err(format!(
            "`{text}` is a wildcard address, which cannot be connected to: use the endpoint's own IP, such as 127.0.0.1"
        ));
    }
    Ok(address)
}

/// A version's endpoint as written: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointSpec {
    Address(SocketAddr),
    Name(EndpointName),
}

const ENDPOINT_EXAMPLE: &str = "IP:PORT or NAME:PORT such as 127.0.0.1:18081 or api.internal:8080";

/// A version's endpoint: `IP:PORT`, `[v6]:PORT` or `NAME:PORT`. A name is
/// only checked for its form here; it is resolved when veer runs.
pub(crate) fn parse_endpoint_spec(text: &str) -> Result<EndpointSpec, String> {
    let text = text.trim();
    if text.parse::<SocketAddr>().is_ok() {
        return parse_endpoint(text).map(EndpointSpec::Address);
    }
    if text.contains("://") {
        return Err(format!(
            "`{text}` has a scheme: expected {ENDPOINT_EXAMPLE}, without http://"
        ));
    }
    if text.contains('/') {
        return Err(format!(
            "`{text}` has a path: expected {ENDPOINT_EXAMPLE}, without a path"
        ));
    }
    if text.is_empty() {
        return Err(format!("empty endpoint: expected {ENDPOINT_EXAMPLE}"));
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{text}` is only a port: expected {ENDPOINT_EXAMPLE}"
        ));
    }
    if text.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "`{text}` has no port: expected IP:PORT such as 127.0.0.1:18081 (IPv6 as [::1]:8080)"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}` has no port: write the port the endpoints listen on, such as `{text}:8080`"
        ));
    };
    if host.starts_with('[') {
        return Err(format!(
            "`{text}` is not an address: expected [IPv6]:PORT such as [::1]:8080"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "`{text}` is not an address: write IPv6 endpoints in brackets, such as [::1]:8080"
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(0) => {
            return Err(format!(
                "`{text}` has port 0: give the port the endpoints listen on"
            ))
        }
        Ok(port) => port,
        Err(_) => {
            return Err(format!(
                "`{text}` has port `{port}`, which is not a port number (1 to 65535)"
            ))
        }
    };
    check_dns_name(host).map_err(|reason| format!("`{text}`: {reason}"))?;
    Ok(EndpointSpec::Name(EndpointName {
        host: host.to_ascii_lowercase(),
        port,
    }))
}

/// A DNS name as an endpoint or a search domain may be written: labels of
/// letters, digits, `-` (not first or last) and `_`, at most 63 bytes each
/// and 253 in all, an optional trailing dot (absolute: no search domain).
pub(crate) fn check_dns_name(text: &str) -> Result<(), String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err(format!("`{text}` is not a DNS name: it is empty"));
    }
    if name.len() > 253 {
        return Err(format!(
            "`{text}` is not a DNS name: it is {} bytes long, and a name has at most 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "`{text}` is not a DNS name: it has an empty label (two dots in a row, or a leading dot)"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "`{text}` is not a DNS name: the label `{label}` is {} bytes long, and a label has at most 63",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "`{text}` is not a DNS name: {bad:?} is not allowed (letters, digits, `-`, `_` and dots only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "`{text}` is not a DNS name: the label `{label}` starts or ends with `-`"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "`{text}` is neither an IP address nor a DNS name (a name's last label is not all digits): check the address"
        ));
    }
    Ok(())
}

/// Explains why `text` is not `IP:PORT`, guessing the usual mistakes.
pub(super) fn address_error(text: &str, example: &str) -> String {
    let text = text.trim();
    if text.contains("://") {
        return format!(
            "`{text}` has a scheme: expected IP:PORT such as {example}, without http://"
        );
    }
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return format!("`{text}` is only a port: expected IP:PORT such as {example}");
    }
    if text.parse::<IpAddr>().is_ok() {
        return format!(
            "`{text}` has no port: expected IP:PORT such as {example} (IPv6 as [::1]:8080)"
        );
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        let is_name = !host.is_empty()
            && host.chars().any(|c| c.is_ascii_alphabetic())
            && !host.contains(':');
        if is_name && port.parse::<u16>().is_ok() {
            return format!(
                "`{text}` names a host: DNS names are not supported, expected IP:PORT such as {example}"
            );
        }
    }
    format!("`{text}` is not an address: expected IP:PORT such as {example}")
}

/// A service host pattern: `name`, `*.suffix`, an IP or a bracketed IPv6.
/// Lowercased, since hosts compare without case.
pub(crate) fn parse_host(text: &str) -> Result<HostMatch, String> {
    let host = text.to_ascii_lowercase();
    if host.is_empty() {
        return Err("empty host: remove it (omit hosts to match any host)".to_string());
    }
    if host == "*" {
        return Err("`*` alone is not a host pattern: omit hosts to match any host".to_string());
    }
    if host.contains("://") {
        return Err(format!(
            "`{text}` has a scheme: write the host name alone, such as example.com"
        ));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(HostMatch::Exact(host)),
            Err(_) => Err(format!(
                "`{text}` is not a bracketed IPv6 address such as [::1]"
            )),
        };
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "`{text}`: write an IPv6 host in brackets, as in [{host}]"
        ));
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        if port.parse::<u16>().is_ok() {
            return Err(format!(
                "`{text}` has a port: hosts are matched without the port; write `{name}`"
            ));
        }
    }
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    if name.contains('*') {
        return Err(format!(
            "`{text}`: `*` is allowed only as the whole first label, as in *.example.com"
        ));
    }
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok {
        return Err(format!(
            "`{text}` is not a host name: use letters, digits, `-` and dots, such as api.example.com"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// The host pattern as the user would write it.
pub(super) fn host_text(host: &HostMatch) -> String {
    match host {
        HostMatch::Exact(name) => name.clone(),
        HostMatch::Suffix(suffix) => format!("*{suffix}"),
    }
}

/// A path prefix for matching requests.
pub(super) fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!(
            "`{prefix}` does not start with `/`: write a path prefix such as /api"
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "`{prefix}` contains {bad:?}: a path prefix is a URL path, without query, fragment or spaces"
        ));
    }
    Ok(())
}

/// A TLS server name for origination: a DNS name or an IP address.
pub(super) fn check_server_name(text: &str) -> Result<(), String> {
    if text.contains("://") || text.contains('/') {
        return Err(format!(
            "`{text}` is not a server name: write the name alone, such as api.internal"
        ));
    }
    if let Some((name, port)) = text.rsplit_once(':') {
        if port.parse::<u16>().is_ok() && !name.contains(':') {
            return Err(format!(
                "`{text}` has a port: write the name alone, such as `{name}`"
            ));
        }
    }
    match rustls::pki_types::ServerName::try_from(text) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "`{text}` is not a DNS name or IP address: write the name the endpoints' certificates carry, such as api.internal"
        )),
    }
}

/// A webhook or gate URL.
pub(crate) fn parse_http_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL: {URL_EXAMPLE}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!("`{text}` has scheme `{other}`: {URL_EXAMPLE}"));
        }
        None => return Err(format!("`{text}` has no scheme: {URL_EXAMPLE}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host: {URL_EXAMPLE}"));
    }
    Ok(uri)
}

/// `200` or `"200-299"` as an inclusive range within 100..=599.
pub(super) fn status_range(raw: &Scalar) -> Option<(u16, u16)> {
    let (low, high) = match raw {
        Scalar::Int(n) => (u16::try_from(*n).ok()?, u16::try_from(*n).ok()?),
        Scalar::Text(text) => {
            let (a, b) = text.split_once('-')?;
            (a.trim().parse().ok()?, b.trim().parse().ok()?)
        }
        _ => return None,
    };
    ((100..=599).contains(&low) && (100..=599).contains(&high) && low <= high)
        .then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn overlap_rules() {
        assert!(overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("127.0.0.1:80"), addr("[::]:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!overlaps(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
        assert!(!overlaps(addr("0.0.0.0:0"), addr("0.0.0.0:0")));
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("Agent-Match"),
            Ok(HostMatch::Exact("agent-match".into()))
        );
        assert_eq!(
            parse_host("*.Example.com"),
            Ok(HostMatch::Suffix(".example.com".into()))
        );
        assert_eq!(parse_host("[::1]"), Ok(HostMatch::Exact("[::1]".into())));
        assert_eq!(
            parse_host("10.0.0.1"),
            Ok(HostMatch::Exact("10.0.0.1".into()))
        );
        for bad in [
            "", "*", "a.*.com", "*a.com", "a..b", "x:80", "::1", "http://x", "a b",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse_host("example.com:8080"),
            Err("`example.com:8080` has a port: hosts are matched without the port; write `example.com`".into())
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("127.0.0.1:80"), Ok(addr("127.0.0.1:80")));
        assert_eq!(parse_endpoint("[::1]:80"), Ok(addr("[::1]:80")));
        assert_eq!(
            parse_endpoint("backend:8080"),
            Err("`backend:8080` names a host: DNS names are not supported, expected IP:PORT such as 127.0.0.1:18081".into())
        );
        assert_eq!(
            parse_endpoint("127.0.0.1"),
            Err("`127.0.0.1` has no port: expected IP:PORT such as 127.0.0.1:18081 (IPv6 as [::1]:8080)".into())
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:80"),
            Err("`http://127.0.0.1:80` has a scheme: expected IP:PORT such as 127.0.0.1:18081, without http://".into())
        );
        assert!(parse_endpoint("127.0.0.1:0").is_err());
        assert!(parse_endpoint("0.0.0.0:80").is_err());
        assert!(parse_endpoint("127.0.0.1:99999").is_err());
    }

    #[test]
    fn endpoint_specs() {
        let name = |host: &str, port| {
            Ok(EndpointSpec::Name(EndpointName {
                host: host.into(),
                port,
            }))
        };
        assert_eq!(
            parse_endpoint_spec("127.0.0.1:80"),
            Ok(EndpointSpec::Address(addr("127.0.0.1:80")))
        );
        assert_eq!(
            parse_endpoint_spec("[::1]:80"),
            Ok(EndpointSpec::Address(addr("[::1]:80")))
        );
        assert_eq!(parse_endpoint_spec("Backend:8080"), name("backend", 8080));
        assert_eq!(
            parse_endpoint_spec("agent-match-canary.production.svc.cluster.local:8080"),
            name("agent-match-canary.production.svc.cluster.local", 8080)
        );
        assert_eq!(
            parse_endpoint_spec("api.internal.:443"),
            name("api.internal.", 443)
        );
        assert_eq!(parse_endpoint_spec("_grpc.svc:80"), name("_grpc.svc", 80));
        for (bad, reason) in [
            ("backend", "`backend` has no port: write the port the endpoints listen on, such as `backend:8080`"),
            ("backend:0", "`backend:0` has port 0: give the port the endpoints listen on"),
            ("backend:99999", "`backend:99999` has port `99999`, which is not a port number (1 to 65535)"),
            ("backend:http", "`backend:http` has port `http`, which is not a port number (1 to 65535)"),
            ("http://backend:80", "`http://backend:80` has a scheme: expected IP:PORT or NAME:PORT such as 127.0.0.1:18081 or api.internal:8080, without http://"),
            ("backend:80/x", "`backend:80/x` has a path: expected IP:PORT or NAME:PORT such as 127.0.0.1:18081 or api.internal:8080, without a path"),
            ("::1:80", "`::1:80` has no port: expected IP:PORT such as 127.0.0.1:18081 (IPv6 as [::1]:8080)"),
            ("fe80::1:x:80", "`fe80::1:x:80` is not an address: write IPv6 endpoints in brackets, such as [::1]:8080"),
            ("[::1]:http", "`[::1]:http` is not an address: expected [IPv6]:PORT such as [::1]:8080"),
            ("a..b:80", "`a..b:80`: `a..b` is not a DNS name: it has an empty label (two dots in a row, or a leading dot)"),
            ("-a.b:80", "`-a.b:80`: `-a.b` is not a DNS name: the label `-a` starts or ends with `-`"),
            ("a b:80", "`a b:80`: `a b` is not a DNS name: ' ' is not allowed (letters, digits, `-`, `_` and dots only)"),
            ("300.1.2.3:80", "`300.1.2.3:80`: `300.1.2.3` is neither an IP address nor a DNS name (a name's last label is not all digits): check the address"),
            ("8080", "`8080` is only a port: expected IP:PORT or NAME:PORT such as 127.0.0.1:18081 or api.internal:8080"),
            ("127.0.0.1", "`127.0.0.1` has no port: expected IP:PORT such as 127.0.0.1:18081 (IPv6 as [::1]:8080)"),
            ("0.0.0.0:80", "`0.0.0.0:80` is a wildcard address, which cannot be connected to: use the endpoint's own IP, such as 127.0.0.1"),
        ] {
            assert_eq!(parse_endpoint_spec(bad), Err(reason.to_string()), "{bad}");
        }
        let long = format!("{}.example:80", "a".repeat(64));
        assert!(parse_endpoint_spec(&long)
            .expect_err("a label too long")
            .contains("is 64 bytes long, and a label has at most 63"));
    }

    #[test]
    fn urls() {
        assert!(parse_http_url("http://127.0.0.1:9000/hooks/veer").is_ok());
        assert!(parse_http_url("https://example.com/x").is_ok());
        assert_eq!(
            parse_http_url("ftp://x/y"),
            Err("`ftp://x/y` has scheme `ftp`: expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer".into())
        );
        assert!(parse_http_url("/hooks/veer").is_err());
        assert!(parse_http_url("not a url").is_err());
    }

    #[test]
    fn path_prefixes() {
        assert!(check_path_prefix("/").is_ok());
        assert!(check_path_prefix("/api/v1").is_ok());
        assert!(check_path_prefix("api").is_err());
        assert!(check_path_prefix("/a?b").is_err());
        assert!(check_path_prefix("/a b").is_err());
    }
}
