//! `dns`: how endpoints written `NAME:PORT` are resolved, and the bounds a
//! record's TTL is held within. Nothing is resolved here: `veer check` must
//! pass where the names are not (yet) resolvable, as on a CI runner checking
//! a Kubernetes config.

use super::*;
use crate::config::model::Dns;

/// Below this a name with TTL 0 would be asked for many times a second.
const MIN_MIN_TTL: Duration = Duration::from_millis(100);
/// Above this, addresses that changed go unseen for too long.
const MAX_MAX_TTL: Duration = Duration::from_secs(3600);
/// resolv.conf caps `ndots` at 15 too.
const MAX_NDOTS: i128 = 15;

impl Validator {
    pub(super) fn dns(&mut self, raw: RawDns) -> Option<Dns> {
        let defaults = Dns::default();
        let mut ok = true;
        let resolv_conf = match raw.resolv_conf.as_deref() {
            None => Some(None),
            Some(file) => self
                .path_field(
                    "dns.resolv_conf",
                    file,
                    "name a resolv.conf file, or remove resolv_conf for /etc/resolv.conf",
                )
                .map(Some),
        };
        let mut nameservers = Vec::new();
        if let Some(list) = &raw.nameservers {
            if list.is_empty() {
                self.err(
                    "dns.nameservers",
                    "is empty: list at least one nameserver, such as [10.96.0.10], or remove \
                     nameservers to use those of resolv_conf",
                );
                ok = false;
            }
            for (i, server) in list.iter().enumerate() {
                match parse_nameserver(&server.to_string()) {
                    Ok(address) => nameservers.push(address),
                    Err(reason) => {
                        self.err(format!("dns.nameservers[{i}]"), reason);
                        ok = false;
                    }
                }
            }
        }
        let search = raw.search.as_ref().map(|list| {
            let mut domains = Vec::new();
            for (i, domain) in list.iter().enumerate() {
                let text = domain.to_string();
                match check_dns_name(&text) {
                    Ok(()) => domains.push(text.trim_end_matches('.').to_ascii_lowercase()),
                    Err(reason) => {
                        self.err(format!("dns.search[{i}]"), reason);
                        ok = false;
                    }
                }
            }
            domains
        });
        let ndots = match &raw.ndots {
            None => Some(None),
            Some(n) => self
                .int_in::<u8>(
                    "dns.ndots",
                    n,
                    0,
                    MAX_NDOTS,
                    "dots a name needs to be tried as written before the search domains",
                )
                .map(Some),
        };
        let timeout = self.positive_duration("dns.timeout", raw.timeout.as_ref(), defaults.timeout);
        let min_ttl = self.positive_duration("dns.min_ttl", raw.min_ttl.as_ref(), defaults.min_ttl);
        let max_ttl = self.positive_duration("dns.max_ttl", raw.max_ttl.as_ref(), defaults.max_ttl);
        if let Some(min) = min_ttl.filter(|&min| min < MIN_MIN_TTL) {
            self.err(
                "dns.min_ttl",
                format!(
                    "{min:?} is below 100ms: a name with a short TTL would be asked for many times a second; write 100ms or more"
                ),
            );
            ok = false;
        }
        if let Some(max) = max_ttl.filter(|&max| max > MAX_MAX_TTL) {
            self.err(
                "dns.max_ttl",
                format!(
                    "{} is above 1h: addresses that change would go unseen that long; write 1h or less",
                    humantime::format_duration(max)
                ),
            );
            ok = false;
        }
        if let (Some(min), Some(max)) = (min_ttl, max_ttl) {
            if min > max {
                self.err(
                    "dns.min_ttl",
                    format!(
                        "{} is above max_ttl ({}): the TTL is held between the two, so min_ttl must not exceed max_ttl",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                ok = false;
            }
        }
        let dns = Dns {
            resolv_conf: resolv_conf?,
            nameservers,
            search,
            ndots: ndots?,
            timeout: timeout?,
            min_ttl: min_ttl?,
            max_ttl: max_ttl?,
        };
        ok.then_some(dns)
    }
}

/// A nameserver: `IP` (port 53) or `IP:PORT`, `[v6]:PORT`.
pub(super) fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    const EXAMPLE: &str = "such as 10.96.0.10, 127.0.0.1:5353 or [fd00::10]:53";
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    match text.parse::<SocketAddr>() {
        Ok(address) if address.port() == 0 => Err(format!(
            "`{text}` has port 0: give the port the nameserver answers on, or none for 53"
        )),
        Ok(address) if address.ip().is_unspecified() => Err(format!(
            "`{text}` is a wildcard address, which cannot be asked: write the nameserver's own IP, {EXAMPLE}"
        )),
        Ok(address) => Ok(address),
        Err(_) => Err(format!(
            "`{text}` is not an IP address or IP:PORT: nameservers are written as addresses, {EXAMPLE}"
        )),
    }
}
