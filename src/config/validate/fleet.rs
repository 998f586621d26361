//! `fleet`: the etcd cluster a fleet of replicas shares its run-time layer
//! through, and this replica's name in it.

use super::*;

/// The prefix when none is written.
const DEFAULT_PREFIX: &str = "/veer";
/// Per request to etcd, and for connecting, when none is written.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer, and a replica that lost etcd would hold its commands that long.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The rollout leader's lease when none is written.
const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(5);
/// etcd refuses leases much shorter (it raises them to 1.5 election timeouts).
const MIN_LEADER_TTL: Duration = Duration::from_secs(2);
/// Longer, and a dead leader's rollouts stand still that long.
const MAX_LEADER_TTL: Duration = Duration::from_secs(300);

impl Validator {
    pub(super) fn fleet(&mut self, raw: RawFleet) -> Option<Fleet> {
        if !cfg!(feature = "fleet") {
            self.err(
                "fleet",
                "this veer was built without etcd support (cargo feature `fleet`): use a build \
                 with it (`cargo build --release --features fleet`, or the container image), \
                 or remove the fleet block to keep run-time state in state_dir",
            );
            return None;
        }
        let replica = raw.replica.as_ref().and_then(|name| {
            let text = name.to_string();
            self.name("fleet.replica", &text, "replica").then_some(text)
        });
        let replica_ok = raw.replica.is_none() || replica.is_some();
        let etcd = match raw.etcd {
            None => {
                self.err(
                    "fleet.etcd",
                    "missing: give the etcd cluster, e.g. `etcd: { endpoints: [http://127.0.0.1:2379] }`",
                );
                None
            }
            Some(etcd) => self.etcd(etcd),
        };
        let leader_ttl = self.leader_ttl(raw.leader_ttl.as_ref(), etcd.as_ref());
        Some(Fleet {
            etcd: etcd?,
            replica: replica_ok.then_some(replica)?,
            leader_ttl: leader_ttl?,
        })
    }

    /// `fleet.leader_ttl`: whole seconds, within bounds, and longer than one
    /// etcd request may take (or a leader alive but slow to renew would lose
    /// the lead over and over).
    fn leader_ttl(&mut self, raw: Option<&Scalar>, etcd: Option<&Etcd>) -> Option<Duration> {
        let path = "fleet.leader_ttl";
        let ttl = self.positive_duration(path, raw, DEFAULT_LEADER_TTL)?;
        if ttl.subsec_nanos() != 0 {
            self.err(
                path,
                format!(
                    "{ttl:?} is not whole seconds: etcd leases count in seconds; write e.g. {}s",
                    ttl.as_secs().max(MIN_LEADER_TTL.as_secs())
                ),
            );
            return None;
        }
        if !(MIN_LEADER_TTL..=MAX_LEADER_TTL).contains(&ttl) {
            self.err(
                path,
                format!(
                    "{ttl:?} is out of range: use 2s to 300s (shorter, etcd raises it anyway; \
                     longer, a dead leader's rollouts stand still that long)"
                ),
            );
            return None;
        }
        if let Some(etcd) = etcd.filter(|e| ttl <= e.timeout) {
            self.err(
                path,
                format!(
                    "{ttl:?} is not longer than fleet.etcd.timeout ({:?}): the leader could lose \
                     its lease while one request waits; make leader_ttl longer than the timeout",
                    etcd.timeout
                ),
            );
            return None;
        }
        Some(ttl)
    }

    fn etcd(&mut self, raw: RawEtcd) -> Option<Etcd> {
        let mut ok = true;
        let mut endpoints = Vec::new();
        match raw.endpoints {
            None => {
                self.err(
                    "fleet.etcd.endpoints",
                    "missing: list the etcd members' client URLs, e.g. [http://10.0.0.5:2379]",
                );
                ok = false;
            }
            Some(list) if list.is_empty() => {
                self.err(
                    "fleet.etcd.endpoints",
                    "is empty: list at least one etcd member's client URL, e.g. http://10.0.0.5:2379",
                );
                ok = false;
            }
            Some(list) => {
                for (i, endpoint) in list.iter().enumerate() {
                    let text = endpoint.to_string();
                    match check_etcd_endpoint(&text) {
                        Ok(()) => endpoints.push(text),
                        Err(reason) => {
                            self.err(format!("fleet.etcd.endpoints[{i}]"), reason);
                            ok = false;
                        }
                    }
                }
            }
        }
        let prefix = match raw.prefix.as_ref().map(|p| p.to_string()) {
            None => DEFAULT_PREFIX.to_string(),
            Some(prefix) => match check_prefix(&prefix) {
                Ok(()) => prefix,
                Err(reason) => {
                    self.err("fleet.etcd.prefix", reason);
                    ok = false;
                    String::new()
                }
            },
        };
        let username = raw.username.as_ref().map(|u| u.to_string());
        let password_file = raw.password_file.as_deref().and_then(|file| {
            self.path_field(
                "fleet.etcd.password_file",
                file,
                "name the file holding etcd's password for `username`",
            )
        });
        match (&username, &raw.password_file) {
            (Some(_), None) => {
                self.err(
                    "fleet.etcd.password_file",
                    "missing: `username` needs the file holding its password",
                );
                ok = false;
            }
            (None, Some(_)) => {
                self.err(
                    "fleet.etcd.username",
                    "missing: `password_file` is the password of a user; name the user",
                );
                ok = false;
            }
            _ => {}
        }
        let tls = raw.tls.map(|tls| {
            let mut path = |field: &str, value: Option<String>| {
                value.and_then(|v| {
                    self.path_field(&format!("fleet.etcd.tls.{field}"), &v, "name a PEM file")
                })
            };
            let (ca, cert, key) = (
                path("ca", tls.ca),
                path("cert", tls.cert),
                path("key", tls.key),
            );
            EtcdTls { ca, cert, key }
        });
        if let Some(tls) = &tls {
            match (&tls.cert, &tls.key) {
                (Some(_), None) => {
                    self.err(
                        "fleet.etcd.tls.key",
                        "missing: a client certificate (`cert`) needs its private key",
                    );
                    ok = false;
                }
                (None, Some(_)) => {
                    self.err(
                        "fleet.etcd.tls.cert",
                        "missing: `key` is the private key of a client certificate; name the certificate",
                    );
                    ok = false;
                }
                _ => {}
            }
        }
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        let http = endpoints.iter().any(|e| e.starts_with("http://"));
        if https && http {
            self.err(
                "fleet.etcd.endpoints",
                "mixes http:// and https://: one cluster speaks one of them; use the same scheme for every member",
            );
            ok = false;
        }
        if https && tls.as_ref().and_then(|t| t.ca.as_ref()).is_none() {
            self.err(
                "fleet.etcd.tls.ca",
                "missing: https:// endpoints need the CA that signed etcd's certificates (`tls: { ca: FILE }`)",
            );
            ok = false;
        }
        if http && tls.is_some() {
            self.err(
                "fleet.etcd.tls",
                "is set but the endpoints are http://: write them as https:// to use TLS, or remove tls",
            );
            ok = false;
        }
        let timeout =
            self.positive_duration("fleet.etcd.timeout", raw.timeout.as_ref(), DEFAULT_TIMEOUT);
        if let Some(t) = timeout.filter(|t| *t > MAX_TIMEOUT) {
            self.err(
                "fleet.etcd.timeout",
                format!(
                    "{t:?} is too long: a replica waits this long on a lost etcd before it serves \
                     from its own copy; use at most 60s"
                ),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(Etcd {
            endpoints,
            prefix,
            username,
            password_file,
            tls,
            timeout: timeout?,
        })
    }
}

/// `http://host:port` or `https://host:port`: a client URL of one member.
fn check_etcd_endpoint(text: &str) -> Result<(), String> {
    let example = "expected a member's client URL such as http://10.0.0.5:2379";
    let Some(rest) = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
    else {
        return Err(format!("`{text}` has no http:// or https://: {example}"));
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL: {example}"))?;
    if uri.port_u16().is_none() || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "`{text}` needs a host and a port (etcd's client port is usually 2379): {example}"
        ));
    }
    if rest.trim_end_matches('/').contains('/') || uri.query().is_some() {
        return Err(format!("`{text}` has a path: {example}"));
    }
    Ok(())
}

/// Starts with `/`, no trailing `/`, no spaces or control characters.
fn check_prefix(text: &str) -> Result<(), String> {
    let example = "such as /veer/prod-edge";
    if !text.starts_with('/') {
        return Err(format!("`{text}` must start with `/`, {example}"));
    }
    if text.len() > 1 && text.ends_with('/') {
        return Err(format!(
            "`{text}` ends with `/`: write it without, {example}"
        ));
    }
    if text == "/" {
        return Err(format!(
            "`/` would put veer's keys among everything else in etcd: give it a prefix of its own, {example}"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{text}` has spaces or control characters: {example}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_etcd_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_etcd_endpoint("https://etcd-0.etcd:2379").is_ok());
        assert!(check_etcd_endpoint("127.0.0.1:2379")
            .expect_err("refused")
            .contains("no http://"));
        assert!(check_etcd_endpoint("http://etcd")
            .expect_err("refused")
            .contains("needs a host and a port"));
        assert!(check_etcd_endpoint("http://etcd:2379/v3")
            .expect_err("refused")
            .contains("has a path"));
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("/veer/prod").is_ok());
        assert!(check_prefix("veer")
            .expect_err("refused")
            .contains("start with"));
        assert!(check_prefix("/veer/")
            .expect_err("refused")
            .contains("ends with"));
        assert!(check_prefix("/").expect_err("refused").contains("its own"));
        assert!(check_prefix("/a b")
            .expect_err("refused")
            .contains("spaces"));
    }
}
