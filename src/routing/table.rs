//! Which service a request belongs to, by host and longest path prefix.
//!
//! Hosts match exactly, by `*.suffix` wildcard, or (for services that name no
//! host) any host. The most specific host pattern decides first, as virtual
//! hosts do in NGINX and Envoy: an exact host, then the longest wildcard, then
//! "any host"; within it the longest `path_prefix` wins. When no prefix of the
//! most specific pattern matches, the next pattern is tried. Ports are ignored and
//! hosts compared case-insensitively. A request that matches nothing gets no
//! service: veer never forwards to a host the config does not name.

use std::collections::HashMap;

use crate::config::{HostMatch, Service};

/// One service reachable under one prefix.
#[derive(Debug, Clone)]
struct Route {
    prefix: Box<str>,
    service: usize,
}

/// The routing table of one snapshot; routes in each list are sorted longest
/// prefix first so the first prefix that matches is the longest.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Vec<Route>>,
    /// By suffix such as `.example.com`. Looked up once per dot of the
    /// host, so a request costs the same whatever the number of services.
    wildcard: HashMap<Box<str>, Vec<Route>>,
    any_host: Vec<Route>,
}

impl RouteTable {
    pub fn new<S: std::borrow::Borrow<Service>>(services: &[S]) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, service) in services.iter().enumerate() {
            let service = service.borrow();
            let route = Route {
                prefix: service.path_prefix.as_str().into(),
                service: index,
            };
            if service.hosts.is_empty() {
                table.any_host.push(route);
                continue;
            }
            for host in &service.hosts {
                match host {
                    HostMatch::Exact(name) => table
                        .exact
                        .entry(name.as_str().into())
                        .or_default()
                        .push(route.clone()),
                    HostMatch::Suffix(suffix) => table
                        .wildcard
                        .entry(suffix.as_str().into())
                        .or_default()
                        .push(route.clone()),
                }
            }
        }
        let longest_first = |routes: &mut Vec<Route>| {
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            // Most hosts have one route: no room for four (a table lives
            // as long as its routes, with one entry per host).
            routes.shrink_to_fit();
        };
        table.exact.values_mut().for_each(longest_first);
        table.wildcard.values_mut().for_each(longest_first);
        longest_first(&mut table.any_host);
        table
    }

    /// The index of the service for `host` (as sent: may carry a port, any
    /// case) and `path`; `None` when no service matches.
    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        let host = strip_port(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            // Rare: clients send lowercase hosts; only this case allocates.
            return self.find_normalized(&host.to_ascii_lowercase(), path);
        }
        self.find_normalized(host, path)
    }

    fn find_normalized(&self, host: &str, path: &str) -> Option<usize> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let longest = |routes: &[Route]| {
            routes
                .iter()
                .find(|r| path.starts_with(&*r.prefix))
                .map(|r| r.service)
        };
        if let Some(service) = self.exact.get(host).and_then(|r| longest(r)) {
            return Some(service);
        }
        // The longest suffix first: from the host's first dot on (a suffix
        // matches only a host longer than itself, hence not from index 0).
        let wildcard = match self.wildcard.is_empty() {
            true => None,
            false => host
                .bytes()
                .enumerate()
                .filter(|&(at, b)| b == b'.' && at > 0)
                .filter_map(|(at, _)| self.wildcard.get(&host[at..]))
                .find_map(|routes| longest(routes)),
        };
        wildcard.or_else(|| longest(&self.any_host))
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Timeouts, Version};

    fn service(name: &str, hosts: &[&str], prefix: &str) -> Service {
        Service {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.into()),
                    None => HostMatch::Exact((*h).into()),
                })
                .collect(),
            path_prefix: prefix.into(),
            versions: vec![Version {
                name: "v".into(),
                revision: String::new(),
                endpoints: vec![],
                names: vec![],
                weight: crate::config::Weight::new(1).expect("a valid weight"),
                protocol: Default::default(),
                tls: None,
            }],
            sticky: None,
            rules: vec![],
            timeouts: Timeouts::default(),
            health_check: None,
            outlier: Default::default(),
            slow_start: None,
            grpc: Default::default(),
            mirror: None,
            guard: None,
            rollout: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            service("exact", &["api.example.com"], "/"),
            service("exact-long", &["api.example.com"], "/v2/"),
            service("wild", &["*.example.com"], "/"),
            service("wild-deeper", &["*.eu.example.com"], "/"),
            service("fallback", &[], "/static/"),
        ])
    }

    #[test]
    fn exact_host_and_longest_prefix() {
        let t = table();
        assert_eq!(t.find("api.example.com", "/users"), Some(0));
        assert_eq!(t.find("api.example.com", "/v2/users"), Some(1));
        assert_eq!(t.find("API.Example.com:8443", "/v2/x"), Some(1));
        assert_eq!(t.find("api.example.com.", "/"), Some(0));
    }

    #[test]
    fn wildcards_prefer_the_longest_suffix() {
        let t = table();
        assert_eq!(t.find("web.example.com", "/"), Some(2));
        assert_eq!(t.find("a.eu.example.com", "/"), Some(3));
        assert_eq!(t.find("example.com", "/"), None);
    }

    #[test]
    fn any_host_only_under_its_prefix_and_loses_to_longer_prefixes() {
        let t = table();
        assert_eq!(t.find("other.org", "/static/app.js"), Some(4));
        assert_eq!(t.find("other.org", "/"), None);
        // A named host keeps its requests even where an any-host service has
        // a longer prefix.
        assert_eq!(t.find("api.example.com", "/static/x"), Some(0));
    }

    #[test]
    fn ports_and_ipv6_literals() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a"), "a");
    }
}
