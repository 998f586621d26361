//! Checks of what the proxy cannot see: a number from Prometheus or from a
//! JSON endpoint (conversion rate, queue depth, memory), compared with
//! bounds every `interval`, on a task of its own — never on the request
//! path.
//!
//! - A rollout's checks run on the candidate while a step holds (in
//!   progress, not paused). The rollout ticker lets a step end only once
//!   each has passed since the step began (`rollout::checks_waiting`,
//!   reading the reports this task publishes through `control`).
//!   In a fleet, only the replica that leads the rollouts runs them.
//! - A guard's checks run on every non-baseline version with traffic, in
//!   steady state too (on every replica of a fleet).
//! - `failure_limit` failed runs in a row trip the version as the guard
//!   does: one `control` command (weights to the baseline in one publish,
//!   the latch, the rollout rolled back), then the count, the log line, the
//!   webhook and the audit line, with reason `check:NAME` and the value and
//!   the bound it broke.
//! - A run that cannot read a number is inconclusive: the check failed, not
//!   the version. `inconclusive_limit` of them in a row pause the rollout
//!   (never roll it back), with the reason in its gate words, until
//!   `veer resume`.
//!
//! Each check's state per version is kept here and published to `control`'s
//! view for `/status`, `veer status`, the rollout ticker and
//! `veer_check_runs_total` ([`render_metrics`]).
//!
//! Depends on `control` (its commands and view), `guard` (the webhook and
//! the announcement of a trip), `audit`, `status`, `config`.

pub mod fetch;
pub mod tally;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::check::Values;
use crate::config::Check;
use crate::control::{Control, ControlView, Measured, Trip};
use crate::guard::webhook::Webhooks;
use crate::state::RolloutOutcome;
use crate::status::{CheckReport, CheckRuns, CheckScope, CheckVerdict, ChecksReport};
use tally::{Act, Tally};

const TICK: Duration = Duration::from_millis(250);

/// What one target of runs is: a check, on a version at a revision, and
/// for a rollout's check the step (1-based) and when it began. A new step
/// is a new key: its runs start from nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: Arc<str>,
    scope: Scope,
    check: String,
    version: String,
    revision: String,
    step: Option<usize>,
    since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scope {
    Rollout,
    Guard,
}

impl Scope {
    fn report(self) -> CheckScope {
        match self {
            Scope::Rollout => CheckScope::Rollout,
            Scope::Guard => CheckScope::Guard,
        }
    }
}

struct Target {
    check: Arc<Check>,
    baseline: String,
    tally: Tally,
    next_run: Instant,
    running: bool,
    last_run_at: Option<String>,
}

/// Where the report of a key is kept: by check and version, so the last
/// state outlives its key (a pause, a rollback) and `/status` still says why.
type ReportKey = (Scope, String, String);

/// The task that runs every check.
pub struct CheckRunner {
    control: Arc<Control>,
    webhooks: Webhooks,
    targets: HashMap<Key, Target>,
    reports: BTreeMap<Arc<str>, BTreeMap<ReportKey, CheckReport>>,
    runs: BTreeMap<Arc<str>, BTreeMap<String, CheckRuns>>,
    published: HashMap<Arc<str>, Arc<ChecksReport>>,
    /// The words each rollout was paused with, said again while it stays
    /// paused, so another word for the gate does not hide why.
    paused: HashMap<Arc<str>, String>,
    finished: mpsc::UnboundedReceiver<(Key, Result<f64, String>)>,
    finish: mpsc::UnboundedSender<(Key, Result<f64, String>)>,
    /// The indices of the services with checks in the snapshot of this
    /// generation: a pass plans those, not thousands of services without.
    with_checks: (u64, Arc<[usize]>),
}

/// What a finished run calls for, applied after the pass.
enum Action {
    Trip {
        key: Key,
        value: f64,
        bound: f64,
    },
    Pause {
        key: Key,
        reason: String,
        limit: u32,
    },
}

impl CheckRunner {
    pub fn new(control: Arc<Control>, webhooks: Webhooks) -> CheckRunner {
        let (finish, finished) = mpsc::unbounded_channel();
        CheckRunner {
            control,
            webhooks,
            targets: HashMap::new(),
            reports: BTreeMap::new(),
            runs: BTreeMap::new(),
            published: HashMap::new(),
            paused: HashMap::new(),
            finished,
            finish,
            with_checks: (0, Arc::from([])),
        }
    }

    /// Runs the checks until `stop` changes.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            self.pass(Instant::now()).await;
        }
    }

    /// One pass: the runs that finished, the targets the config and the
    /// rollouts call for now, the runs that are due, then what the results
    /// call for and the reports.
    async fn pass(&mut self, now: Instant) {
        let mut actions = Vec::new();
        while let Ok((key, result)) = self.finished.try_recv() {
            self.record(key, result, &mut actions);
        }
        let view = self.control.view();
        self.plan(&view, now);
        self.launch(now);
        self.act(actions, &view).await;
        self.keep_pause_words();
        self.publish();
    }

    fn record(&mut self, key: Key, result: Result<f64, String>, actions: &mut Vec<Action>) {
        let Some(target) = self.targets.get_mut(&key) else {
            // Its step ended or its version left while it ran: the result
            // judges nothing in force.
            return;
        };
        target.running = false;
        target.last_run_at =
            Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        let runs = self
            .runs
            .entry(Arc::clone(&key.service))
            .or_default()
            .entry(key.check.clone())
            .or_default();
        match &result {
            Ok(value) if target.check.passes(*value) => runs.pass += 1,
            Ok(_) => runs.fail += 1,
            Err(_) => runs.inconclusive += 1,
        }
        let reason = result.as_ref().err().cloned();
        match target.tally.record(&target.check, result) {
            Act::Nothing => {}
            Act::Trip { value, bound } => actions.push(Action::Trip {
                key: key.clone(),
                value,
                bound,
            }),
            Act::Pause => actions.push(Action::Pause {
                key: key.clone(),
                reason: reason.unwrap_or_default(),
                limit: target.check.inconclusive_limit,
            }),
        }
        if let Some(verdict) = match target.tally.verdict {
            CheckVerdict::Fail => Some("failed"),
            CheckVerdict::Inconclusive => Some("inconclusive"),
            _ => None,
        } {
            tracing::info!(
                service = %key.service,
                check = key.check.as_str(),
                version = key.version.as_str(),
                reason = target.tally.reason.as_deref().unwrap_or(""),
                "check {verdict}"
            );
        }
        let report = report(&key, target);
        self.reports
            .entry(Arc::clone(&key.service))
            .or_default()
            .insert((key.scope, key.check, key.version), report);
    }

    /// The targets in force now: a rollout's checks on its candidate at the
    /// current step while it runs; a guard's on each other version with
    /// traffic. Targets no longer called for end here.
    fn plan(&mut self, view: &ControlView, now: Instant) {
        let snapshot = self.control.snapshot();
        if self.with_checks.0 != snapshot.generation {
            // No checks, nothing to plan (the reports of checks a reload
            // removed go below all the same): of thousands of services, most
            // cost this pass nothing, and are looked at once per publish.
            let with_checks = snapshot.services.iter().enumerate().filter(|(_, service)| {
                service.guard.as_ref().is_some_and(|guard| {
                    !guard.checks.is_empty()
                        || service
                            .rollout
                            .as_ref()
                            .is_some_and(|r| !r.checks.is_empty())
                })
            });
            self.with_checks = (snapshot.generation, with_checks.map(|(i, _)| i).collect());
        }
        let mut wanted: HashMap<Key, (&Check, String)> = HashMap::new();
        let mut configured: HashSet<(Arc<str>, Scope, String)> = HashSet::new();
        let mut versions: HashMap<Arc<str>, HashSet<String>> = HashMap::new();
        let with_checks = Arc::clone(&self.with_checks.1);
        for service in with_checks.iter().filter_map(|&i| snapshot.services.get(i)) {
            let Some(guard) = &service.guard else {
                continue;
            };
            let baseline = service.versions[guard.baseline].name.to_string();
            versions.insert(
                Arc::clone(&service.name),
                service
                    .versions
                    .iter()
                    .map(|v| v.name.to_string())
                    .collect(),
            );
            if let Some(rollout) = service.rollout.as_ref().filter(|r| !r.checks.is_empty()) {
                for check in &rollout.checks {
                    configured.insert((
                        Arc::clone(&service.name),
                        Scope::Rollout,
                        check.name.clone(),
                    ));
                }
                // In a fleet only the rollout's leader runs its checks (they
                // gate the steps only it moves): N replicas would ask
                // Prometheus N times for one verdict. A check's trip is a
                // latch, which reaches the followers through the store.
                let running = view
                    .rollout(&service.name)
                    .filter(|p| p.outcome == RolloutOutcome::InProgress && !p.paused)
                    .filter(|_| self.control.leadership().is_leader());
                if let Some(progress) = running {
                    for check in &rollout.checks {
                        let key = Key {
                            service: Arc::clone(&service.name),
                            scope: Scope::Rollout,
                            check: check.name.clone(),
                            version: progress.candidate.clone(),
                            revision: progress.revision.clone(),
                            step: Some(progress.step + 1),
                            since_ms: progress.step_entered_unix_ms,
                        };
                        wanted.insert(key, (check, baseline.clone()));
                    }
                }
            }
            for check in &guard.checks {
                configured.insert((Arc::clone(&service.name), Scope::Guard, check.name.clone()));
                for (index, version) in service.versions.iter().enumerate() {
                    if index == guard.baseline || version.weight == 0 {
                        continue;
                    }
                    let key = Key {
                        service: Arc::clone(&service.name),
                        scope: Scope::Guard,
                        check: check.name.clone(),
                        version: version.name.to_string(),
                        revision: version.revision.to_string(),
                        step: None,
                        since_ms: 0,
                    };
                    wanted.insert(key, (check, baseline.clone()));
                }
            }
        }
        // A check edited by a reload starts afresh.
        self.targets.retain(|key, target| {
            wanted.get(key).is_some_and(|(check, baseline)| {
                **check == *target.check && *baseline == target.baseline
            })
        });
        for (key, (check, baseline)) in wanted {
            if self.targets.contains_key(&key) {
                continue;
            }
            let target = Target {
                check: Arc::new(check.clone()),
                baseline,
                tally: Tally::default(),
                next_run: now,
                running: false,
                last_run_at: None,
            };
            self.runs
                .entry(Arc::clone(&key.service))
                .or_default()
                .entry(key.check.clone())
                .or_default();
            self.reports
                .entry(Arc::clone(&key.service))
                .or_default()
                .insert(
                    (key.scope, key.check.clone(), key.version.clone()),
                    report(&key, &target),
                );
            self.targets.insert(key, target);
        }
        // Reports and counts of checks, versions and services that left
        // the config go with them.
        for (service, reports) in self.reports.iter_mut() {
            let known = versions.get(service);
            reports.retain(|(scope, check, version), _| {
                configured.contains(&(Arc::clone(service), *scope, check.clone()))
                    && known.is_some_and(|v| v.contains(version))
            });
        }
        self.reports.retain(|_, reports| !reports.is_empty());
        for (service, runs) in self.runs.iter_mut() {
            runs.retain(|check, _| {
                configured.contains(&(Arc::clone(service), Scope::Rollout, check.clone()))
                    || configured.contains(&(Arc::clone(service), Scope::Guard, check.clone()))
            });
        }
        self.runs.retain(|_, runs| !runs.is_empty());
    }

    /// Starts every due run on a task of its own.
    fn launch(&mut self, now: Instant) {
        for (key, target) in &mut self.targets {
            if target.running || now < target.next_run {
                continue;
            }
            target.running = true;
            target.next_run = now + target.check.interval;
            let check = Arc::clone(&target.check);
            let baseline = target.baseline.clone();
            let key = key.clone();
            let finish = self.finish.clone();
            tokio::spawn(async move {
                let values = Values {
                    service: &key.service,
                    version: &key.version,
                    revision: &key.revision,
                    baseline: &baseline,
                };
                let result =
                    match tokio::time::timeout(check.timeout, fetch::run(&check.source, &values))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(format!(
                            "no answer within {} (the check's timeout)",
                            humantime::format_duration(check.timeout)
                        )),
                    };
                // The runner is gone only when veer stops.
                let _ = finish.send((key, result));
            });
        }
    }

    async fn act(&mut self, actions: Vec<Action>, view: &ControlView) {
        let mut trips = Vec::new();
        let mut pauses = Vec::new();
        for action in actions {
            match action {
                Action::Trip { key, value, bound } => trips.push((key, value, bound)),
                Action::Pause { key, reason, limit } => pauses.push((key, reason, limit)),
            }
        }
        if !trips.is_empty() {
            self.trip(trips).await;
        }
        for (key, reason, limit) in pauses {
            self.pause(&key, &reason, limit, view).await;
        }
    }

    /// The versions whose checks failed `failure_limit` times in a row, as
    /// one change, then announced as the guard announces its own trips.
    async fn trip(&mut self, tripped: Vec<(Key, f64, f64)>) {
        let before = self.control.snapshot();
        let trips = tripped
            .iter()
            .map(|(key, value, bound)| Trip {
                service: key.service.to_string(),
                version: key.version.clone(),
                reason: format!("check:{}", key.check),
                measured: Measured {
                    observed: Some(*value),
                    threshold: Some(*bound),
                    window_requests: 0,
                    ..Measured::default()
                },
            })
            .collect();
        let events = self.control.trips(trips).await;
        for (event, (key, value, bound)) in events.iter().zip(&tripped) {
            let Some(event) = event else { continue };
            let service = before.services.iter().find(|s| s.name == key.service);
            let webhook = service
                .and_then(|s| s.guard.as_ref())
                .and_then(|g| g.webhook.as_ref());
            let detail = format!(
                "{} {}: check `{}` failed {} times in a row; last value {value}, bound {bound}",
                event.version,
                event.revision,
                key.check,
                self.targets.get(key).map_or(1, |t| t.check.failure_limit)
            );
            let weights: Vec<String> = event
                .weights
                .iter()
                .map(|(v, w)| format!("{v}={w}"))
                .collect();
            crate::audit::system(
                "checks",
                crate::audit::Action {
                    action: "rollback",
                    service: Some(&event.service),
                    before: &service
                        .map(|s| crate::audit::service_weights(s))
                        .unwrap_or_default(),
                    after: &weights.join(" "),
                    result: "ok",
                    status: None,
                    detail: Some(&detail),
                },
            );
            crate::guard::announce(&self.control, &self.webhooks, event, webhook);
        }
    }

    /// Pauses the rollout whose candidate a check could not judge
    /// `inconclusive_limit` times in a row. A guard's check on a version
    /// that is no rollout's running candidate has nothing to pause: it is
    /// logged, and `/status` shows it.
    async fn pause(&mut self, key: &Key, reason: &str, limit: u32, view: &ControlView) {
        let service = &*key.service;
        let running = view.rollout(service).filter(|p| {
            p.outcome == RolloutOutcome::InProgress
                && !p.paused
                && p.candidate == key.version
                && p.revision == key.revision
        });
        if running.is_none() {
            tracing::warn!(
                service,
                check = key.check.as_str(),
                version = key.version.as_str(),
                reason,
                "check inconclusive {limit} times in a row; no rollout of this version to pause"
            );
            return;
        }
        let words = format!(
            "paused: check `{}` was inconclusive {limit} times in a row ({reason}); fix what the check reads, then `veer resume {service}`",
            key.check
        );
        // Kept with the pause without its leading "paused: ", which
        // `/status` says already.
        let why = words.strip_prefix("paused: ").map(str::to_string);
        match self
            .control
            .pause_because(service, crate::state::history::Actor::Check, why)
            .await
        {
            Ok(()) => {
                tracing::warn!(
                    service,
                    check = key.check.as_str(),
                    reason,
                    "rollout paused: check inconclusive {limit} times in a row"
                );
                let weights = self
                    .control
                    .snapshot()
                    .services
                    .iter()
                    .find(|s| *s.name == *service)
                    .map(|s| crate::audit::service_weights(s))
                    .unwrap_or_default();
                crate::audit::system(
                    "checks",
                    crate::audit::Action {
                        action: "pause",
                        service: Some(service),
                        before: &weights,
                        after: &weights,
                        result: "ok",
                        status: None,
                        detail: Some(&words),
                    },
                );
                self.control.set_gate_status(service, words.clone());
                self.paused.insert(Arc::clone(&key.service), words);
            }
            Err(refused) => {
                tracing::warn!(service, %refused, "a check could not pause the rollout");
            }
        }
    }

    /// Says again why a rollout is paused, for as long as it is, and that
    /// it is not once it was resumed.
    fn keep_pause_words(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let view = self.control.view();
        let control = &self.control;
        self.paused.retain(|service, words| {
            let still = view
                .rollout(service)
                .is_some_and(|p| p.paused && p.outcome == RolloutOutcome::InProgress);
            let ours = view.gate(service) == Some(words.as_str());
            if still && !ours {
                control.set_gate_status(service, words.clone());
            }
            if !still && ours {
                // Resumed (or ended): the pause's words no longer hold.
                control.set_gate_status(
                    service,
                    "resumed: the checks run again from this step".to_string(),
                );
            }
            still
        });
    }

    /// Sends `control` the reports that changed since the last pass.
    fn publish(&mut self) {
        let mut changed = Vec::new();
        for (service, reports) in &self.reports {
            let next = ChecksReport {
                results: reports.values().cloned().collect(),
                runs: self
                    .runs
                    .get(service)
                    .map(|runs| runs.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default(),
            };
            if self.published.get(service).is_some_and(|p| **p == next) {
                continue;
            }
            let next = Arc::new(next);
            self.published
                .insert(Arc::clone(service), Arc::clone(&next));
            changed.push((service.to_string(), Some(next)));
        }
        let gone: Vec<Arc<str>> = self
            .published
            .keys()
            .filter(|s| !self.reports.contains_key(*s))
            .cloned()
            .collect();
        for service in gone {
            self.published.remove(&service);
            changed.push((service.to_string(), None));
        }
        self.control.set_checks(changed);
    }
}

fn report(key: &Key, target: &Target) -> CheckReport {
    let tally = &target.tally;
    CheckReport {
        consecutive_failures: tally.consecutive_failures,
        consecutive_inconclusive: tally.consecutive_inconclusive,
        failure_limit: target.check.failure_limit,
        inconclusive_limit: target.check.inconclusive_limit,
        last_run_at: target.last_run_at.clone(),
        max: target.check.max,
        min: target.check.min,
        name: key.check.clone(),
        reason: tally.reason.clone(),
        revision: key.revision.clone(),
        scope: key.scope.report(),
        source: target.check.source.kind().to_string(),
        step: key.step,
        value: tally.value,
        verdict: tally.verdict,
        version: key.version.clone(),
    }
}

/// `veer_check_runs_total{service,check,result}`: every check's runs since
/// veer started, by result (`pass`, `fail`, `inconclusive`).
pub fn render_metrics(text: &mut String, view: &ControlView) {
    use std::fmt::Write as _;
    const NAME: &str = "veer_check_runs_total";
    let _ = writeln!(
        text,
        "# HELP {NAME} Runs of each rollout and guard check, by result: pass, fail (out of bounds), inconclusive (the check itself failed)."
    );
    let _ = writeln!(text, "# TYPE {NAME} counter");
    for (service, checks) in view.all_checks() {
        for (check, runs) in &checks.runs {
            for (result, count) in [
                ("pass", runs.pass),
                ("fail", runs.fail),
                ("inconclusive", runs.inconclusive),
            ] {
                #[allow(clippy::cast_precision_loss)]
                crate::telemetry::operator::sample(
                    text,
                    NAME,
                    &[("service", service), ("check", check), ("result", result)],
                    count as f64,
                );
            }
        }
    }
}

/// The checks of one service for `veer status`: one line each, indented.
pub fn describe(report: &ChecksReport) -> String {
    let mut out = String::from("  checks:\n");
    for r in &report.results {
        let bounds = match (r.min, r.max) {
            (Some(min), Some(max)) => format!("{min}..{max}"),
            (Some(min), None) => format!("min {min}"),
            (None, Some(max)) => format!("max {max}"),
            (None, None) => String::new(),
        };
        let scope = match (r.scope, r.step) {
            (CheckScope::Rollout, Some(step)) => format!("rollout step {step}"),
            (CheckScope::Rollout, None) => "rollout".to_string(),
            (CheckScope::Guard, _) => "guard".to_string(),
        };
        let value = r.value.map_or("-".to_string(), |v| format!("{v}"));
        let mut line = format!(
            "    {:<14} {} {}@{} ({scope}): {} {value} ({bounds})",
            r.name,
            r.source,
            r.version,
            r.revision,
            r.verdict.as_str(),
        );
        if r.consecutive_failures > 0 {
            line.push_str(&format!(
                "; {}/{} failed in a row",
                r.consecutive_failures, r.failure_limit
            ));
        }
        if r.consecutive_inconclusive > 0 {
            line.push_str(&format!(
                "; {}/{} inconclusive in a row",
                r.consecutive_inconclusive, r.inconclusive_limit
            ));
        }
        if let Some(reason) = &r.reason {
            line.push_str(&format!(": {reason}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for (name, runs) in &report.runs {
        out.push_str(&format!(
            "    {name:<14} runs: {} pass, {} fail, {} inconclusive\n",
            runs.pass, runs.fail, runs.inconclusive
        ));
    }
    out
}
