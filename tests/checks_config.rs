//! `veer check` on the `checks:` blocks of a rollout and a guard: every
//! refusal a user can meet, with its file position, field path and words.

use std::path::Path;
use std::process::{Command, Output};

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veer"))
        .arg("check")
        .arg("-c")
        .arg(file)
        .output()
        .expect("run veer check")
}

const HEAD: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
state_dir: state
services:
  - name: web
    versions:
      - { name: stable, revision: '1', endpoints: [127.0.0.1:18081], weight: 90 }
      - { name: canary, revision: '2', endpoints: [127.0.0.1:18082], weight: 10 }
    guard: { baseline: stable, max_error_rate: 0.05 }
    rollout:
      candidate: canary
      steps: [10, 100]
      hold: 1m
      checks:
";

/// A config whose rollout lists `checks` (YAML lines at the list's indent).
fn write(dir: &Path, checks: &str) -> std::path::PathBuf {
    let path = dir.join("veer.yaml");
    std::fs::write(&path, format!("{HEAD}{checks}")).expect("write config");
    path
}

/// `veer check` refuses the config with exactly one error, which reads
/// `FILE:LINE:COL: PATH: REASON`; returns what follows the file name.
fn refused(checks: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), checks);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let prefix = format!("{}:", path.display());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(errors.len(), 1, "one error expected:\n{stderr}");
    errors[0][prefix.len()..].to_string()
}

const PROM: &str = "prometheus: { address: 'http://127.0.0.1:9090', query: 'up' }";

#[test]
fn a_valid_block_passes_with_both_sources_and_every_placeholder() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token"), "s3cret\n").expect("token");
    let path = write(
        dir.path(),
        "        - name: conversion
          prometheus:
            address: http://127.0.0.1:9090
            query: >
              sum(rate(orders_total{service=\"{{service}}\",version=\"{{version}}\"}[5m]))
              / sum(rate(orders_total{version=\"{{baseline}}\",revision!=\"{{revision}}\"}[5m]))
          min: 0.9
          failure_limit: 2
          interval: 30s
        - name: slo
          web:
            url: https://slo.example.com/api/v1/ratio?version={{version}}
            method: POST
            headers: { x-team: '{{service}}' }
            body: '{\"revision\": \"{{revision}}\"}'
            json_path: $.data.ratio
            token_file: token
          max: 0.02
          inconclusive_limit: 5
          timeout: 2s
",
    );
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unknown_placeholder_is_refused_where_it_is_written() {
    assert_eq!(
        refused(
            "        - { name: c, max: 1, prometheus: { address: 'http://127.0.0.1:9090', query: 'x{v=\"{{versoin}}\"}' } }\n"
        ),
        "16:85: services[0].rollout.checks[0].prometheus.query: unknown placeholder `{{versoin}}`: use {{service}}, {{version}}, {{revision}} or {{baseline}}"
    );
}

#[test]
fn an_interval_below_one_second_is_refused() {
    let got = refused(&format!(
        "        - {{ name: c, max: 1, interval: 500ms, {PROM} }}\n"
    ));
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0].interval: interval 500ms is below 1s: a check runs at most once a second"
        ),
        "{got}"
    );
}

#[test]
fn min_above_max_is_refused() {
    let got = refused(&format!(
        "        - {{ name: c, min: 5, max: 1, {PROM} }}\n"
    ));
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0].min: min 5 is above max 1: no value could pass"
        ),
        "{got}"
    );
}

#[test]
fn a_check_without_bounds_is_refused() {
    let got = refused(&format!("        - {{ name: c, {PROM} }}\n"));
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0]: neither min nor max: give the bounds the value must stay within, such as `max: 0.02`"
        ),
        "{got}"
    );
}

#[test]
fn both_sources_are_refused_and_so_is_none() {
    let got = refused(&format!(
        "        - {{ name: c, max: 1, {PROM}, web: {{ url: 'http://127.0.0.1:1/x', field: v }} }}\n"
    ));
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0]: both prometheus and web: a check reads one source; make two checks"
        ),
        "{got}"
    );
    let got = refused("        - { name: c, max: 1 }\n");
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0]: no source: add `prometheus: {address, query}` or `web: {url, json_path}`"
        ),
        "{got}"
    );
}

#[test]
fn bad_urls_are_refused() {
    let got = refused(
        "        - { name: c, max: 1, prometheus: { address: 'prometheus:9090', query: up } }\n",
    );
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0].prometheus.address: `prometheus:9090` has no scheme: expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer"
        ),
        "{got}"
    );
    let got =
        refused("        - { name: c, max: 1, web: { url: 'ftp://h/{{version}}', field: v } }\n");
    assert!(
        got.ends_with(
            "services[0].rollout.checks[0].web.url: `ftp://h/{{version}}` has scheme `ftp`: expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer"
        ),
        "{got}"
    );
}

#[test]
fn a_missing_token_file_is_refused() {
    let got = refused(
        "        - { name: c, max: 1, web: { url: 'http://127.0.0.1:1/x', field: v, token_file: nope } }\n",
    );
    assert!(
        got.contains("services[0].rollout.checks[0].web.token_file: cannot read the check's bearer token from "),
        "{got}"
    );
    assert!(got.ends_with("; create the file or fix the path"), "{got}");
}

#[test]
fn the_value_path_limits_and_timeout_are_checked() {
    let web = "web: { url: 'http://127.0.0.1:1/x', json_path: '$.a[', }";
    let got = refused(&format!("        - {{ name: c, max: 1, {web} }}\n"));
    assert!(
        got.contains("services[0].rollout.checks[0].web.json_path: `$.a[` is not a JSONPath ("),
        "{got}"
    );
    let got = refused(
        "        - { name: c, max: 1, web: { url: 'http://127.0.0.1:1/x', json_path: $.a, field: a } }\n",
    );
    assert!(
        got.ends_with("services[0].rollout.checks[0].web: both json_path and field: say where the number is one way"),
        "{got}"
    );
    let got = refused(&format!(
        "        - {{ name: c, max: 1, failure_limit: 0, {PROM} }}\n"
    ));
    assert!(
        got.ends_with("services[0].rollout.checks[0].failure_limit: 0 is outside 1..=1000 (failed runs in a row before the version trips)"),
        "{got}"
    );
    let got = refused(&format!(
        "        - {{ name: c, max: 1, interval: 2s, timeout: 5s, {PROM} }}\n"
    ));
    assert!(
        got.ends_with("services[0].rollout.checks[0].timeout: timeout 5s is longer than interval 2s: runs would overlap; make timeout at most interval"),
        "{got}"
    );
    let got = refused(&format!(
        "        - {{ name: c, max: 1, {PROM} }}\n        - {{ name: c, min: 0, {PROM} }}\n"
    ));
    assert!(
        got.ends_with("services[0].rollout.checks[1].name: check `c` is named twice: give each check its own name (it labels veer_check_runs_total)"),
        "{got}"
    );
}

/// `--offline` (a GitOps pipeline without the secrets) does not read the
/// token file, and names it among the files left for `veer run`.
#[test]
fn offline_lists_the_token_file_instead_of_reading_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        dir.path(),
        "        - { name: c, max: 1, web: { url: 'http://127.0.0.1:1/x', field: v, token_file: nope } }\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["check", "--offline", "-c"])
        .arg(&path)
        .output()
        .expect("run veer check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "services[0].rollout.checks[0].web.token_file ({})",
            dir.path().join("nope").display()
        )),
        "{stdout}"
    );
}
