//! `services[].versions`: names, revisions, endpoints, weights, protocol.

use super::*;

impl Validator {
    /// Each version's name as written and the version, `None` where it is
    /// invalid; and whether the set as a whole is valid.
    pub(super) fn versions(
        &mut self,
        path: &str,
        raw: Option<Vec<RawVersion>>,
    ) -> (Vec<(String, Option<Version>)>, bool) {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                format!("{path}.versions"),
                "no versions: add at least one, with a name, endpoints and a weight",
            );
            return (Vec::new(), false);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut all_weights_known = true;
        let mut total: i128 = 0;
        let mut versions = Vec::new();
        for (j, raw) in raw.into_iter().enumerate() {
            let at = format!("{path}.versions[{j}]");
            let name_path = format!("{at}.name");
            let name = self.required(
                &name_path,
                raw.name,
                "missing name: give the version a name, such as stable",
            );
            let mut ok = false;
            if let Some(name) = &name {
                ok = self.name(&name_path, name, "version");
                if ok {
                    if let Some(first) = names.get(name) {
                        self.err(
                            &name_path,
                            format!(
                                "duplicate version name `{name}` (also versions[{first}]): give each version of a service its own name"
                            ),
                        );
                        ok = false;
                    } else {
                        names.insert(name.clone(), j);
                    }
                }
            }
            let endpoints = self.endpoints(&at, raw.endpoints);
            let (endpoints, names) = match endpoints {
                Some((endpoints, names)) => (Some(endpoints), names),
                None => (None, Vec::new()),
            };
            let weight = match raw.weight {
                None => {
                    self.err(
                        format!("{at}.weight"),
                        "missing weight: give every version a weight (0 for no weighted traffic)",
                    );
                    None
                }
                Some(raw) => self.typed(format!("{at}.weight"), Weight::from_scalar(&raw)),
            };
            match weight {
                Some(w) => total += i128::from(w.get()),
                None => all_weights_known = false,
            }
            let protocol = match raw.protocol {
                None => Some(Protocol::default()),
                Some(word) => self
                    .word(
                        &format!("{at}.protocol"),
                        &word,
                        "protocol",
                        &["http1", "http2"],
                    )
                    .map(|i| {
                        if i == 0 {
                            Protocol::Http1
                        } else {
                            Protocol::Http2
                        }
                    }),
            };
            let revision = match raw.revision {
                None => Some(String::new()),
                Some(revision) => self.text(&format!("{at}.revision"), &revision),
            };
            let tls = optional(
                raw.tls
                    .map(|tls| self.upstream_tls(&format!("{at}.tls"), tls)),
            );
            let name = name.unwrap_or_default();
            let version = match (ok, endpoints, weight, protocol, revision, tls) {
                (
                    true,
                    Some(endpoints),
                    Some(weight),
                    Some(protocol),
                    Some(revision),
                    Some(tls),
                ) => Some(Version {
                    name: name.clone(),
                    revision,
                    endpoints,
                    names,
                    weight,
                    protocol,
                    tls,
                }),
                _ => None,
            };
            versions.push((name, version));
        }
        let mut set_ok = true;
        if all_weights_known && total == 0 {
            self.err(
                format!("{path}.versions"),
                "every version has weight 0: at least one version needs a weight above 0",
            );
            set_ok = false;
        }
        (versions, set_ok)
    }

    /// The addresses and the names, in the order written.
    pub(super) fn endpoints(
        &mut self,
        at: &str,
        raw: Option<Vec<Scalar>>,
    ) -> Option<(Vec<SocketAddr>, Vec<EndpointName>)> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                format!("{at}.endpoints"),
                "no endpoints: list at least one IP:PORT or NAME:PORT, such as [127.0.0.1:18081]",
            );
            return None;
        }
        let mut ok = true;
        // With each one's index in the file, for the duplicate message.
        let mut endpoints: Vec<(usize, SocketAddr)> = Vec::new();
        let mut names: Vec<(usize, EndpointName)> = Vec::new();
        for (k, text) in raw.iter().enumerate() {
            let path = format!("{at}.endpoints[{k}]");
            match parse_endpoint_spec(&text.to_string()) {
                Ok(EndpointSpec::Name(name)) => {
                    if let Some((first, _)) = names.iter().find(|(_, n)| *n == name) {
                        self.err(
                            path,
                            format!(
                                "duplicate endpoint `{name}` (also endpoints[{first}]): list each endpoint once"
                            ),
                        );
                        ok = false;
                    } else {
                        names.push((k, name));
                    }
                }
                Ok(EndpointSpec::Address(address)) => {
                    if let Some((first, _)) = endpoints.iter().find(|(_, e)| *e == address) {
                        self.err(
                            path,
                            format!(
                                "duplicate endpoint `{address}` (also endpoints[{first}]): list each endpoint once"
                            ),
                        );
                        ok = false;
                    } else {
                        endpoints.push((k, address));
                    }
                }
                Err(reason) => {
                    self.err(path, reason);
                    ok = false;
                }
            }
        }
        ok.then(|| {
            (
                endpoints.into_iter().map(|(_, address)| address).collect(),
                names.into_iter().map(|(_, name)| name).collect(),
            )
        })
    }
}
