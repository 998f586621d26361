//! `services`: each service's name, `match`, and the blocks it is made of.

use super::*;

/// One service checked on its own, as [`Validator::services`] checks each
/// one (its name and every block); `None` if anything is wrong. What fails
/// here is reported by the whole-file check, at its real path: the path
/// used here is never shown.
pub(crate) fn service_alone(raw: RawService) -> Option<Service> {
    const PATH: &str = "services[0]";
    let mut v = Validator { issues: Vec::new() };
    if !v.name("services[0].name", raw.name.as_deref()?, "service") {
        return None;
    }
    let service = v.service(PATH, raw)?;
    v.issues.is_empty().then(|| compact(&service))
}

/// A copy of `service` whose every string and list is allocated at its
/// length: the parse grew them by doubling, and a model lives as long as its
/// config (a quarter of a service's bytes were spare room).
fn compact(service: &Service) -> Service {
    service.clone()
}

/// The keys [`Validator::across_services`] checks, each service's name and
/// each of its routes, counted over a list of services that passed it: so
/// that a reload that adds, removes or changes a few services checks those
/// against the rest without a look at the rest.
#[derive(Debug, Default)]
pub(crate) struct Across {
    hasher: std::hash::RandomState,
    /// How many services hold each key, by the key's hash. Two different
    /// keys on one hash look like a clash, which sends the file to the
    /// whole-file check: a slower read, never a wrong one.
    names: HashMap<u64, u32>,
    routes: HashMap<u64, u32>,
}

impl Across {
    /// The keys of `services`, which passed the checks across services.
    pub(crate) fn of(services: &[Arc<Service>]) -> Across {
        let mut across = Across {
            names: HashMap::with_capacity(services.len()),
            routes: HashMap::with_capacity(services.len() * 2),
            ..Across::default()
        };
        for service in services {
            across.count(service, Self::increment);
        }
        across
    }

    /// Takes the keys of `removed` out and puts those of `added` in. False,
    /// and nothing changed, when a name or a route is then held by two
    /// services: the list is one [`Validator::across_services`] refuses
    /// (provided the services held before passed it, and `removed` were
    /// among them).
    pub(crate) fn change(&mut self, removed: &[&Service], added: &[&Service]) -> bool {
        for service in removed {
            self.count(service, Self::decrement);
        }
        for service in added {
            self.count(service, Self::increment);
        }
        let clash = added.iter().any(|service| {
            let (name, routes) = self.keys(service);
            self.names.get(&name).is_some_and(|&n| n > 1)
                || routes
                    .into_iter()
                    .any(|route| self.routes.get(&route).is_some_and(|&n| n > 1))
        });
        if clash {
            for service in added {
                self.count(service, Self::decrement);
            }
            for service in removed {
                self.count(service, Self::increment);
            }
        }
        !clash
    }

    /// The hashes of a service's name and of its routes, the keys
    /// [`Validator::across_services`] puts in its tables.
    fn keys(&self, service: &Service) -> (u64, Vec<u64>) {
        use std::hash::BuildHasher;
        let prefix = service.path_prefix.as_str();
        let routes = if service.hosts.is_empty() {
            vec![self.hasher.hash_one((None::<&HostMatch>, prefix))]
        } else {
            service
                .hosts
                .iter()
                .map(|host| self.hasher.hash_one((Some(host), prefix)))
                .collect()
        };
        (self.hasher.hash_one(service.name.as_str()), routes)
    }

    fn count(&mut self, service: &Service, step: fn(&mut HashMap<u64, u32>, u64)) {
        let (name, routes) = self.keys(service);
        step(&mut self.names, name);
        for route in routes {
            step(&mut self.routes, route);
        }
    }

    fn increment(table: &mut HashMap<u64, u32>, key: u64) {
        *table.entry(key).or_insert(0) += 1;
    }

    fn decrement(table: &mut HashMap<u64, u32>, key: u64) {
        if let std::collections::hash_map::Entry::Occupied(mut entry) = table.entry(key) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

impl Validator {
    /// The checks across services that were each checked on their own: no
    /// name twice, no (host, path_prefix) routed twice. Finds what
    /// [`Validator::services`] finds; the whole-file check, which a file
    /// refused here goes through, reports it in full.
    pub(super) fn across_services(&mut self, services: &[Arc<Service>]) {
        if services.is_empty() {
            self.err("services", "no services");
            return;
        }
        let mut names: HashMap<&str, usize> = HashMap::with_capacity(services.len());
        let mut routes: HashMap<(Option<&HostMatch>, &str), usize> =
            HashMap::with_capacity(services.len() * 2);
        for (i, service) in services.iter().enumerate() {
            if let Some(first) = names.insert(&service.name, i) {
                self.err(
                    format!("services[{i}].name"),
                    format!("duplicate service name (also services[{first}])"),
                );
            }
            let prefix = service.path_prefix.as_str();
            let mut clash = None;
            if service.hosts.is_empty() {
                clash = clash.or(routes.insert((None, prefix), i));
            }
            for host in &service.hosts {
                clash = clash.or(routes.insert((Some(host), prefix), i));
            }
            if let Some(first) = clash {
                self.err(
                    format!("services[{i}].match"),
                    format!("a route of services[{i}] is already routed to services[{first}]"),
                );
            }
        }
    }

    pub(super) fn services(&mut self, raw: Option<Vec<Part<RawService>>>) -> Vec<Arc<Service>> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                "services",
                "no services: add at least one, with a name and versions to route to",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        // (host or None for any host, path_prefix) -> (service index, name).
        let mut routes: HashMap<(Option<HostMatch>, String), (usize, String)> = HashMap::new();
        let mut services = Vec::new();
        for (i, service) in raw.into_iter().enumerate() {
            let Ok(service) = service else { continue };
            let path = format!("services[{i}]");
            let name_path = format!("{path}.name");
            let name = self.required(
                &name_path,
                service.name.clone(),
                "missing name: give the service a name, such as agent-match",
            );
            if let Some(name) = &name {
                if self.name(&name_path, name, "service") {
                    if let Some(first) = names.get(name) {
                        self.err(
                            &name_path,
                            format!(
                                "duplicate service name `{name}` (also services[{first}]): give each service its own name"
                            ),
                        );
                    } else {
                        names.insert(name.clone(), i);
                    }
                }
            }
            let Some(service) = self.service(&path, service) else {
                continue;
            };
            // Routes are claimed only by services that are otherwise valid,
            // so one broken service does not cause a second, misleading error.
            let any_host = [None];
            let hosts: Vec<Option<HostMatch>> = service.hosts.iter().cloned().map(Some).collect();
            let claimed = if hosts.is_empty() {
                &any_host[..]
            } else {
                &hosts[..]
            };
            for (k, host) in claimed.iter().enumerate() {
                let key = (host.clone(), service.path_prefix.clone());
                match routes.get(&key) {
                    Some((first, first_name)) => {
                        let (at, what) = match host {
                            Some(h) => (
                                format!("{path}.match.hosts[{k}]"),
                                format!("host `{}`", host_text(h)),
                            ),
                            None => (format!("{path}.match"), "any host".to_string()),
                        };
                        self.err(
                            at,
                            format!(
                                "{what} with path_prefix `{}` is already routed to service `{first_name}` (services[{first}]): routing would be ambiguous; change the host or the path_prefix",
                                service.path_prefix
                            ),
                        );
                    }
                    None => {
                        routes.insert(key, (i, service.name.clone()));
                    }
                }
            }
            services.push(Arc::new(compact(&service)));
        }
        services
    }

    pub(super) fn service(&mut self, path: &str, raw: RawService) -> Option<Service> {
        let (hosts, path_prefix) = self.service_match(path, raw.matcher);
        let (versions, versions_ok) = self.versions(path, raw.versions);
        // References resolve against every version named in the file, valid
        // or not: a rule naming a version with a bad endpoint should report
        // the endpoint, not an "unknown version".
        let known: Vec<String> = versions.iter().map(|(name, _)| name.clone()).collect();
        let sticky = raw
            .sticky
            .map(|sticky| self.sticky(&format!("{path}.sticky"), sticky));
        let rules: Vec<Option<Rule>> = raw
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(k, rule)| self.rule(&format!("{path}.rules[{k}]"), rule, &known))
            .collect();
        let timeouts = self.timeouts(&format!("{path}.timeouts"), raw.timeouts);
        let health_check = raw
            .health_check
            .map(|check| self.health_check(&format!("{path}.health_check"), check));
        let outlier = self.outlier(&format!("{path}.outlier_detection"), raw.outlier_detection);
        let slow_start =
            self.optional_positive_duration(&format!("{path}.slow_start"), raw.slow_start.as_ref());
        // The rollout checks its candidate against the baseline as written,
        // even if the guard has other errors.
        let baseline = raw.guard.as_ref().map(|guard| {
            guard
                .baseline
                .as_ref()
                .and_then(|name| known.iter().position(|k| k == name))
        });
        let guard = raw
            .guard
            .map(|guard| self.guard(&format!("{path}.guard"), guard, &known));
        let rollout = raw
            .rollout
            .map(|rollout| self.rollout(&format!("{path}.rollout"), rollout, &known, baseline));
        if let (Some(Some(guard)), Some(Some(rollout))) = (&guard, &rollout) {
            self.check_names_apart(path, &guard.checks, &rollout.checks);
        }
        let grpc = self.grpc(&format!("{path}.grpc"), raw.grpc);
        let mirror = raw
            .mirror
            .map(|mirror| self.mirror(&format!("{path}.mirror"), mirror, &known));
        let shadow_ok = match (&rollout, &mirror) {
            (Some(Some(rollout)), mirror) => self.shadow_needs_mirror(
                path,
                rollout,
                mirror.as_ref().and_then(Option::as_ref),
                &known,
            ),
            _ => true,
        };

        Some(Service {
            name: raw.name?,
            hosts: hosts?,
            path_prefix: path_prefix?,
            versions: if versions_ok {
                versions
                    .into_iter()
                    .map(|(_, version)| version)
                    .collect::<Option<Vec<_>>>()?
            } else {
                return None;
            },
            sticky: optional(sticky)?,
            rules: rules.into_iter().collect::<Option<Vec<_>>>()?,
            timeouts: timeouts?,
            health_check: optional(health_check)?,
            outlier: outlier?,
            slow_start: slow_start.ok()?,
            guard: optional(guard)?,
            rollout: optional(rollout)?,
            grpc: grpc?,
            mirror: if shadow_ok {
                optional(mirror)?
            } else {
                return None;
            },
        })
    }

    pub(super) fn service_match(
        &mut self,
        path: &str,
        raw: Option<RawServiceMatch>,
    ) -> (Option<Vec<HostMatch>>, Option<String>) {
        let Some(raw) = raw else {
            return (Some(Vec::new()), Some("/".to_string()));
        };
        let mut ok = true;
        let mut hosts: Vec<(usize, HostMatch)> = Vec::new();
        for (k, text) in raw.hosts.unwrap_or_default().iter().enumerate() {
            let at = format!("{path}.match.hosts[{k}]");
            match parse_host(text) {
                Ok(host) => {
                    if let Some((first, _)) = hosts.iter().find(|(_, h)| *h == host) {
                        self.err(
                            at,
                            format!("duplicate host `{text}` (also hosts[{first}]): remove one"),
                        );
                        ok = false;
                    } else {
                        hosts.push((k, host));
                    }
                }
                Err(reason) => {
                    self.err(at, reason);
                    ok = false;
                }
            }
        }
        let prefix = match raw.path_prefix {
            None => Some("/".to_string()),
            Some(prefix) => match check_path_prefix(&prefix) {
                Ok(()) => Some(prefix),
                Err(reason) => {
                    self.err(format!("{path}.match.path_prefix"), reason);
                    None
                }
            },
        };
        let hosts = ok.then(|| hosts.into_iter().map(|(_, host)| host).collect());
        (hosts, prefix)
    }
}
