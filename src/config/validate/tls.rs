//! TLS blocks: a listener's certificates (SNI) and client CA, a version's upstream TLS.

use super::*;

impl Validator {
    /// A listener's `tls` block: the plain `cert`/`key` pair and/or
    /// `certificates` by SNI; the first pair is the default.
    pub(super) fn listener_tls(&mut self, path: &str, raw: RawTls) -> Option<ListenerTls> {
        let mut ok = true;
        let mut certificates = Vec::new();
        match (raw.cert, raw.key) {
            (None, None) => {
                if raw.certificates.as_ref().is_none_or(Vec::is_empty) {
                    self.err(
                        path,
                        "no certificate: set cert and key (PEM files), or list certificates",
                    );
                    ok = false;
                }
            }
            (cert, key) => match self.pair(path, cert, key) {
                Some((cert, key)) => certificates.push(CertificateFiles {
                    cert,
                    key,
                    hosts: Vec::new(),
                }),
                None => ok = false,
            },
        }
        // SNI name -> where it was first given, to refuse duplicates.
        let mut seen: HashMap<HostMatch, String> = HashMap::new();
        for (k, entry) in raw.certificates.unwrap_or_default().into_iter().enumerate() {
            let at = format!("{path}.certificates[{k}]");
            let pair = self.pair(&at, entry.cert, entry.key);
            let mut hosts = Vec::new();
            let raw_hosts = entry.hosts.unwrap_or_default();
            if raw_hosts.is_empty() {
                self.err(
                    format!("{at}.hosts"),
                    "no hosts: list the SNI names this certificate is for, such as [api.example.com, \"*.example.com\"]",
                );
                ok = false;
            }
            for (h, text) in raw_hosts.iter().enumerate() {
                let host_path = format!("{at}.hosts[{h}]");
                match parse_host(text) {
                    Ok(host) => {
                        if let Some(first) = seen.get(&host) {
                            self.err(
                                &host_path,
                                format!("`{text}` is already given at {first}: each SNI name picks one certificate"),
                            );
                            ok = false;
                        } else {
                            seen.insert(host.clone(), host_path);
                            hosts.push(host);
                        }
                    }
                    Err(reason) => {
                        self.err(host_path, reason);
                        ok = false;
                    }
                }
            }
            match pair {
                Some((cert, key)) => certificates.push(CertificateFiles { cert, key, hosts }),
                None => ok = false,
            }
        }
        let client_ca = raw.client_ca.and_then(|ca| {
            let ca = self.path_field(
                &format!("{path}.client_ca"),
                &ca,
                "name the PEM file of the CA certificates that sign client certificates",
            );
            ok &= ca.is_some();
            ca
        });
        let identity_header = raw.identity_header.and_then(|name| {
            let at = format!("{path}.identity_header");
            let header = self.header_name(&at, &name);
            if header.is_some() && client_ca.is_none() {
                self.err(
                    at,
                    "identity_header needs client_ca: without verified client certificates there is no identity to pass",
                );
                ok = false;
                return None;
            }
            ok &= header.is_some();
            header
        });
        ok.then_some(ListenerTls {
            certificates,
            client_ca,
            identity_header,
        })
    }

    /// A certificate chain file and its key file: both or neither.
    pub(super) fn pair(
        &mut self,
        path: &str,
        cert: Option<String>,
        key: Option<String>,
    ) -> Option<(PathBuf, PathBuf)> {
        let cert = self
            .required(
                &format!("{path}.cert"),
                cert,
                "missing cert: name the PEM certificate chain file",
            )
            .and_then(|cert| {
                self.path_field(
                    &format!("{path}.cert"),
                    &cert,
                    "name the PEM certificate chain file",
                )
            });
        let key = self
            .required(
                &format!("{path}.key"),
                key,
                "missing key: name the PEM private key file",
            )
            .and_then(|key| {
                self.path_field(
                    &format!("{path}.key"),
                    &key,
                    "name the PEM private key file",
                )
            });
        Some((cert?, key?))
    }

    /// A version's `tls` block (origination).
    pub(super) fn upstream_tls(&mut self, path: &str, raw: RawUpstreamTls) -> Option<UpstreamTls> {
        let mut ok = true;
        let server_name = raw
            .server_name
            .and_then(|name| match check_server_name(&name) {
                Ok(()) => Some(name),
                Err(reason) => {
                    self.err(format!("{path}.server_name"), reason);
                    ok = false;
                    None
                }
            });
        let insecure_skip_verify = match raw.insecure_skip_verify {
            None => false,
            Some(Scalar::Bool(b)) => b,
            Some(other) => {
                self.err(
                    format!("{path}.insecure_skip_verify"),
                    format!("`{other}` is not true or false"),
                );
                ok = false;
                false
            }
        };
        let ca = raw.ca.and_then(|ca| {
            let ca = self.path_field(
                &format!("{path}.ca"),
                &ca,
                "name the PEM file of the CA certificates to verify the endpoints with, or remove ca to use the public roots",
            );
            ok &= ca.is_some();
            ca
        });
        if ca.is_some() && insecure_skip_verify {
            self.err(
                format!("{path}.insecure_skip_verify"),
                "insecure_skip_verify turns off the verification that ca is for: remove one of them",
            );
            ok = false;
        }
        let client_cert = match (raw.client_cert, raw.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                self.err(
                    format!("{path}.client_key"),
                    "missing client_key: client_cert needs the PEM file of its private key",
                );
                ok = false;
                None
            }
            (None, Some(_)) => {
                self.err(
                    format!("{path}.client_cert"),
                    "missing client_cert: client_key needs the PEM certificate chain it belongs to",
                );
                ok = false;
                None
            }
            (Some(cert), Some(key)) => {
                let cert = self.path_field(
                    &format!("{path}.client_cert"),
                    &cert,
                    "name the PEM certificate chain file",
                );
                let key = self.path_field(
                    &format!("{path}.client_key"),
                    &key,
                    "name the PEM private key file",
                );
                match (cert, key) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };
        ok.then_some(UpstreamTls {
            server_name,
            ca,
            insecure_skip_verify,
            client_cert,
        })
    }
}
