//! What `veer check` says about a bad config, line for line.
//!
//! Each test feeds a config through the public API and compares the complete
//! error lines (`FILE:LINE:COL: path: reason`), so a change in a position, a
//! path or a message shows up here as a diff.

use std::path::Path;

use veer::config::{load_file, parse_str, Config, ConfigErrors};

/// A valid config; tests edit it. Its lines, for reading positions:
///
/// ```text
///  1 listeners:
///  2   - name: public
///  3     address: 127.0.0.1:8080
///  4 services:
///  5   - name: app
///  6     versions:
///  7       - name: stable
///  8         endpoints: [127.0.0.1:18081]
///  9         weight: 90
/// 10       - name: canary
/// 11         endpoints: [127.0.0.1:18082]
/// 12         weight: 10
/// 13     (service-level lines appended by tests start here)
/// ```
const BASE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 90
      - name: canary
        endpoints: [127.0.0.1:18082]
        weight: 10
";

/// BASE with one piece of text replaced (which must be there).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

/// BASE with service-level lines appended to its one service.
fn with_service_lines(lines: &str) -> String {
    format!("{BASE}{lines}")
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_str(text, "test.yaml")
}

#[track_caller]
fn assert_errors(text: &str, expected: &[&str]) {
    match parse(text) {
        Ok(config) => panic!("accepted, expected errors {expected:#?}\nconfig: {config:#?}"),
        Err(errors) => {
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            assert_eq!(lines, expected, "\nthe config was:\n{text}");
            // Display of the whole set is the same lines, one per line.
            assert_eq!(errors.to_string(), expected.join("\n"));
        }
    }
}

#[test]
fn the_base_config_is_valid() {
    let config = parse(BASE).expect("BASE is valid");
    assert_eq!(config.services[0].versions.len(), 2);
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/veer.yaml");
    let config = load_file(Path::new(path)).unwrap_or_else(|errors| panic!("{errors}"));
    let service = &config.services[0];
    assert_eq!(service.name, "agent-match");
    let names: Vec<&str> = service.versions.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["stable", "canary"]);
    assert_eq!(service.versions[0].weight, 90);
    assert_eq!(service.versions[1].weight, 10);
    let guard = service.guard.as_ref().expect("the example has a guard");
    assert_eq!(guard.baseline, 0);
    let rollout = service.rollout.as_ref().expect("the example has a rollout");
    assert_eq!(rollout.candidate, 1);
    let percents: Vec<u32> = rollout.steps.iter().map(|s| s.percent).collect();
    assert_eq!(percents, [10, 25, 50, 100]);
}

#[test]
fn minimal_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/minimal.yaml");
    let config = load_file(Path::new(path)).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.services.len(), 1);
    assert_eq!(config.services[0].versions.len(), 2);
}

// ----- the file as a whole -----------------------------------------------------

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.yaml");
    let errors = load_file(&path).expect_err("no such file");
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:1:1: (file): cannot read the config file: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn file_with_only_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(&path, "# nothing but a comment\n\n").expect("write");
    let errors = load_file(&path).expect_err("empty");
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:1:1: (file): the config is empty: it needs at least `listeners` and `services`",
            path.display()
        )
    );
    assert_errors(
        "",
        &["test.yaml:1:1: (file): the config is empty: it needs at least `listeners` and `services`"],
    );
}

#[test]
fn yaml_syntax_error() {
    assert_errors(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n   services: []\n",
        &["test.yaml:4:12: (file): YAML syntax error: while parsing a block collection, did not find expected '-' indicator"],
    );
}

#[test]
fn two_documents() {
    assert_errors(
        &format!("{BASE}---\nlisteners: []\n"),
        &["test.yaml:13:1: (file): a second YAML document starts here: a config file holds one; remove this `---` and what follows"],
    );
}

#[test]
fn duplicate_key() {
    assert_errors(
        &edit("        weight: 10\n", "        weight: 10\n        weight: 20\n"),
        &["test.yaml:13:9: services[0].versions[1].weight: duplicate key `weight` (first at line 12): keep one"],
    );
}

#[test]
fn unknown_top_level_field() {
    assert_errors(
        &edit("services:", "service:"),
        &["test.yaml:4:1: service: unknown field `service`, expected one of `listeners`, `admin`, `state_dir`, `fleet`, `limits`, `access_log`, `dns`, `services`; did you mean `services`?"],
    );
}

#[test]
fn unknown_field_points_at_the_key() {
    assert_errors(
        &edit("        weight: 10", "        wieght: 10"),
        &["test.yaml:12:9: services[0].versions[1].wieght: unknown field `wieght`, expected one of `name`, `revision`, `endpoints`, `weight`, `protocol`, `tls`; did you mean `weight`?"],
    );
}

#[test]
fn wrong_shape() {
    assert_errors(
        "listeners:\n  - { name: a, address: 127.0.0.1:1 }\nservices: 5\n",
        &["test.yaml:3:11: services: invalid type: integer `5`, expected a sequence"],
    );
}

// ----- listeners and admin -----------------------------------------------------

#[test]
fn no_listeners_and_no_services() {
    assert_errors(
        "listeners: []\nservices: []\n",
        &[
            "test.yaml:1:12: listeners: no listeners: add at least one, such as `- { name: public, address: 127.0.0.1:8080 }`",
            "test.yaml:2:11: services: no services: add at least one, with a name and versions to route to",
        ],
    );
}

#[test]
fn duplicate_listener_name_and_overlapping_address() {
    assert_errors(
        &edit(
            "services:",
            "  - name: public\n    address: 0.0.0.0:8080\nservices:",
        ),
        &[
            "test.yaml:4:11: listeners[1].name: duplicate listener name `public` (also listeners[0]): give each listener its own name",
            "test.yaml:5:14: listeners[1].address: `0.0.0.0:8080` overlaps listeners[0] (`127.0.0.1:8080`): two listeners cannot bind the same port on the same address; change one of the ports",
        ],
    );
}

#[test]
fn listeners_on_port_zero_never_overlap() {
    let text = edit(
        "    address: 127.0.0.1:8080\n",
        "    address: 127.0.0.1:0\n  - name: second\n    address: 127.0.0.1:0\n",
    );
    parse(&text).expect("port 0 is picked by the OS");
}

#[test]
fn listener_address_with_a_host_name() {
    assert_errors(
        &edit("address: 127.0.0.1:8080", "address: localhost:8080"),
        &["test.yaml:3:14: listeners[0].address: `localhost:8080` names a host: DNS names are not supported, expected IP:PORT such as 127.0.0.1:8080"],
    );
}

#[test]
fn listener_address_that_is_only_a_port() {
    assert_errors(
        &edit("address: 127.0.0.1:8080", "address: 8080"),
        &["test.yaml:3:14: listeners[0].address: `8080` is only a port: expected IP:PORT such as 127.0.0.1:8080"],
    );
}

#[test]
fn missing_required_fields() {
    assert_errors(
        "listeners:\n  - address: 127.0.0.1:8080\nservices:\n  - name: app\n    versions:\n      - name: stable\n        endpoints: [127.0.0.1:18081]\n",
        &[
            "test.yaml:2:5: listeners[0].name: missing name: give the listener a name, such as public",
            "test.yaml:6:9: services[0].versions[0].weight: missing weight: give every version a weight (0 for no weighted traffic)",
        ],
    );
}

#[test]
fn admin_open_without_a_token() {
    assert_errors(
        &format!("{BASE}admin:\n  address: 0.0.0.0:9901\n"),
        &["test.yaml:14:12: admin.address: `0.0.0.0:9901` is not a loopback address: set admin.token_file: the admin API must not be open without a token"],
    );
    parse(&format!(
        "{BASE}admin:\n  address: 0.0.0.0:9901\n  token_file: /run/veer/token\n"
    ))
    .expect("a token makes a public admin address acceptable");
}

#[test]
fn admin_on_a_listener_port() {
    assert_errors(
        &format!("{BASE}admin: {{ address: \"127.0.0.1:8080\" }}\n"),
        &["test.yaml:13:19: admin.address: `127.0.0.1:8080` overlaps listeners[0] (`127.0.0.1:8080`): the admin API needs a port of its own"],
    );
}

#[test]
fn listener_on_the_default_admin_port() {
    assert_errors(
        &edit("address: 127.0.0.1:8080", "address: 0.0.0.0:9901"),
        &["test.yaml:3:14: listeners[0].address: `0.0.0.0:9901` overlaps the admin API's default address 127.0.0.1:9901: change this port or set admin.address"],
    );
}

#[test]
fn limits_out_of_range() {
    assert_errors(
        &format!(
            "{BASE}limits:\n  max_connections: 0\n  max_header_bytes: 1024\n  drain_timeout: 0ms\n"
        ),
        &[
            "test.yaml:14:20: limits.max_connections: 0 is outside 1..=1000000 (open client connections)",
            "test.yaml:15:21: limits.max_header_bytes: 1024 is outside 8192..=1048576 (bytes in a request head; hyper needs at least 8192)",
            "test.yaml:16:18: limits.drain_timeout: `0ms` is zero: this needs a duration above 0",
        ],
    );
}

// ----- services and versions ---------------------------------------------------

#[test]
fn duplicate_service_name() {
    assert_errors(
        &format!(
            "{BASE}  - name: app\n    match: {{ hosts: [other.example.com] }}\n    versions:\n      - {{ name: v1, endpoints: [127.0.0.1:18083], weight: 1 }}\n"
        ),
        &["test.yaml:13:11: services[1].name: duplicate service name `app` (also services[0]): give each service its own name"],
    );
}

#[test]
fn ambiguous_routes() {
    assert_errors(
        "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    match: { hosts: [Api.Example.com], path_prefix: /v1 }
    versions:
      - { name: stable, endpoints: [127.0.0.1:18081], weight: 1 }
  - name: other
    match: { hosts: [api.example.com, \"*.example.com\"], path_prefix: /v1 }
    versions:
      - { name: stable, endpoints: [127.0.0.1:18082], weight: 1 }
  - name: third
    versions:
      - { name: stable, endpoints: [127.0.0.1:18083], weight: 1 }
  - name: fourth
    versions:
      - { name: stable, endpoints: [127.0.0.1:18084], weight: 1 }
",
        &[
            "test.yaml:10:22: services[1].match.hosts[0]: host `api.example.com` with path_prefix `/v1` is already routed to service `app` (services[0]): routing would be ambiguous; change the host or the path_prefix",
            "test.yaml:16:5: services[3].match: any host with path_prefix `/` is already routed to service `third` (services[2]): routing would be ambiguous; change the host or the path_prefix",
        ],
    );
}

#[test]
fn host_patterns_and_path_prefix() {
    assert_errors(
        &edit(
            "  - name: app\n",
            "  - name: app\n    match:\n      hosts: [\"api.*.com\", \"*\", \"example.com:8080\"]\n      path_prefix: api\n",
        ),
        &[
            "test.yaml:7:15: services[0].match.hosts[0]: `api.*.com`: `*` is allowed only as the whole first label, as in *.example.com",
            "test.yaml:7:28: services[0].match.hosts[1]: `*` alone is not a host pattern: omit hosts to match any host",
            "test.yaml:7:33: services[0].match.hosts[2]: `example.com:8080` has a port: hosts are matched without the port; write `example.com`",
            "test.yaml:8:20: services[0].match.path_prefix: `api` does not start with `/`: write a path prefix such as /api",
        ],
    );
}

#[test]
fn duplicate_version_name() {
    assert_errors(
        &edit("name: canary", "name: stable"),
        &["test.yaml:10:15: services[0].versions[1].name: duplicate version name `stable` (also versions[0]): give each version of a service its own name"],
    );
}

#[test]
fn version_name_unfit_for_urls() {
    assert_errors(
        &edit("name: canary", "name: \"canary=1\""),
        &["test.yaml:10:15: services[0].versions[1].name: version name `canary=1` contains `=`: use only letters, digits, `-`, `_` and `.` (names appear in admin URLs, metric labels and `veer weights` arguments)"],
    );
}

#[test]
fn version_without_endpoints() {
    assert_errors(
        &edit("endpoints: [127.0.0.1:18082]", "endpoints: []"),
        &["test.yaml:11:20: services[0].versions[1].endpoints: no endpoints: list at least one IP:PORT or NAME:PORT, such as [127.0.0.1:18081]"],
    );
}

#[test]
fn dns_and_duplicate_endpoints() {
    // A name is an endpoint like an address; each is listed once (names
    // compare without case).
    assert_errors(
        &edit(
            "endpoints: [127.0.0.1:18081]",
            "endpoints: [backend.internal:8080, 127.0.0.1:18081, 127.0.0.1:18081, Backend.Internal:8080, backend:http]",
        ),
        &[
            "test.yaml:8:61: services[0].versions[0].endpoints[2]: duplicate endpoint `127.0.0.1:18081` (also endpoints[1]): list each endpoint once",
            "test.yaml:8:78: services[0].versions[0].endpoints[3]: duplicate endpoint `backend.internal:8080` (also endpoints[0]): list each endpoint once",
            "test.yaml:8:101: services[0].versions[0].endpoints[4]: `backend:http` has port `http`, which is not a port number (1 to 65535)",
        ],
    );
}

#[test]
fn all_weights_zero() {
    assert_errors(
        &edit("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"),
        &["test.yaml:7:7: services[0].versions: every version has weight 0: at least one version needs a weight above 0"],
    );
}

#[test]
fn negative_and_fractional_weights() {
    assert_errors(
        &edit("weight: 90", "weight: -1").replace("weight: 10", "weight: 2.5"),
        &[
            "test.yaml:9:17: services[0].versions[0].weight: weight -1 is negative: weights are whole numbers from 0 to 1000000",
            "test.yaml:12:17: services[0].versions[1].weight: `2.5` is not a whole number: weights are whole numbers from 0 to 1000000",
        ],
    );
}

#[test]
fn weight_too_large() {
    assert_errors(
        &edit("weight: 90", "weight: 1000001"),
        &["test.yaml:9:17: services[0].versions[0].weight: weight 1000001 is above the maximum 1000000: weights are relative, so scale them all down"],
    );
}

#[test]
fn unquoted_revision_and_unknown_protocol() {
    assert_errors(
        &edit(
            "      - name: canary\n",
            "      - name: canary\n        revision: 1.10\n        protocol: http3\n",
        ),
        &[
            "test.yaml:11:19: services[0].versions[1].revision: `1.1` was read as a number, not text: put it in quotes so it is kept exactly as written",
            "test.yaml:12:19: services[0].versions[1].protocol: unknown protocol `http3`: expected `http1` or `http2`",
        ],
    );
}

// ----- sticky, rules, timeouts, health checks -----------------------------------

#[test]
fn sticky_with_both_header_and_cookie() {
    assert_errors(
        &with_service_lines("    sticky: { header: x-user-id, cookie: session }\n"),
        &["test.yaml:13:13: services[0].sticky: both header and cookie are set: keep one (`{ header: x-user-id }` or `{ cookie: session }`)"],
    );
}

#[test]
fn sticky_with_neither() {
    assert_errors(
        &with_service_lines("    sticky: { max_age: 1h }\n"),
        &["test.yaml:13:13: services[0].sticky: neither header nor cookie is set: add one (`{ header: x-user-id }` or `{ cookie: session }`)"],
    );
}

#[test]
fn invalid_header_names() {
    assert_errors(
        &with_service_lines(
            "    sticky: { header: \"x user\" }\n    rules:\n      - match: { headers: { \"bad header\": \"1\" } }\n        version: canary\n",
        ),
        &[
            "test.yaml:13:23: services[0].sticky.header: `x user` is not a valid header name: use letters, digits and `-`, such as x-user-id",
            "test.yaml:15:43: services[0].rules[0].match.headers.bad header: `bad header` is not a valid header name: use letters, digits and `-`, such as x-user-id",
        ],
    );
}

#[test]
fn rule_naming_an_unknown_version() {
    assert_errors(
        &with_service_lines(
            "    rules:\n      - match: { headers: { x-canary: always } }\n        version: canry\n",
        ),
        &["test.yaml:15:18: services[0].rules[0].version: unknown version `canry`: this service's versions are `stable`, `canary`"],
    );
}

#[test]
fn bad_durations() {
    assert_errors(
        &with_service_lines(
            "    timeouts: { connect: 0s, request: 5, idle: -1s }\n    health_check: { path: /h, interval: 1s, timeout: soon }\n",
        ),
        &[
            "test.yaml:13:26: services[0].timeouts.connect: `0s` is zero: this needs a duration above 0",
            "test.yaml:13:39: services[0].timeouts.request: `5` has no unit: write a number with a unit, such as 250ms, 5s, 1m or 1h",
            "test.yaml:13:48: services[0].timeouts.idle: `-1s` is negative: durations cannot be negative; write a number with a unit, such as 250ms, 5s, 1m or 1h",
            "test.yaml:14:54: services[0].health_check.timeout: `soon` is not a duration: write a number with a unit, such as 250ms, 5s, 1m or 1h",
        ],
    );
}

#[test]
fn health_check_path_and_timeout() {
    assert_errors(
        &with_service_lines("    health_check: { path: health, interval: 1s, timeout: 2s }\n"),
        &[
            "test.yaml:13:27: services[0].health_check.path: `health` does not start with `/`: write the path the probe requests, such as /health/readiness",
            "test.yaml:13:58: services[0].health_check.timeout: timeout (2s) is longer than interval (1s): a probe must end before the next one starts; shorten timeout or lengthen interval",
        ],
    );
}

// ----- guard and rollout ---------------------------------------------------------

#[test]
fn guard_errors() {
    assert_errors(
        &with_service_lines(
            "    guard:\n      baseline: stabel\n      interval: 10s\n      window: 5s\n      max_error_rate: 1.5\n      consecutive: 0\n",
        ),
        &[
            "test.yaml:14:17: services[0].guard.baseline: unknown version `stabel`: this service's versions are `stable`, `canary`",
            "test.yaml:16:15: services[0].guard.window: window (5s) is shorter than interval (10s): each verdict would miss requests; make window at least interval",
            "test.yaml:17:23: services[0].guard.max_error_rate: `1.5` is outside 0..=1: write a fraction, such as 0.05 for 5%",
            "test.yaml:18:20: services[0].guard.consecutive: 0 is outside 1..=1000 (bad verdicts in a row before a trip)",
        ],
    );
}

#[test]
fn guard_without_thresholds() {
    assert_errors(
        &with_service_lines("    guard: { baseline: stable, on_revert: kill }\n"),
        &[
            "test.yaml:13:12: services[0].guard: no thresholds: set at least one of max_error_rate, max_p95_latency, max_p99_latency, max_error_rate_increase or max_latency_ratio, or the guard can never trip",
            "test.yaml:13:43: services[0].guard.on_revert: unknown on_revert `kill`: expected `drain` or `evict`",
        ],
    );
}

#[test]
fn rollout_steps_and_candidate() {
    assert_errors(
        &with_service_lines(
            "    guard: { baseline: stable, max_error_rate: 0.05 }\n    rollout:\n      candidate: stable\n      steps: [10, 10, 150, 90]\n      hold: 1h\n",
        ),
        &[
            "test.yaml:15:18: services[0].rollout.candidate: candidate `stable` is also the guard's baseline: roll out another version",
            "test.yaml:16:19: services[0].rollout.steps[1]: step 10 is not above the previous step 10: steps must be strictly increasing",
            "test.yaml:16:23: services[0].rollout.steps[2]: step 150 is outside 1..=100: steps are percentages of traffic",
            "test.yaml:16:28: services[0].rollout.steps[3]: the last step must be 100: a rollout ends with all traffic on the candidate",
        ],
    );
}

#[test]
fn rollout_without_a_guard() {
    assert_errors(
        &with_service_lines("    rollout: { candidate: canary, steps: [], hold: 10m }\n"),
        &[
            "test.yaml:13:14: services[0].rollout: a rollout needs a guard: add `guard:` with a baseline (where the rest of the traffic goes) and a threshold, so each step is judged",
            "test.yaml:13:42: services[0].rollout.steps: no steps: list the candidate's percentages of traffic, ending at 100, such as [10, 25, 50, 100]",
        ],
    );
}

#[test]
fn webhook_and_gate_urls() {
    assert_errors(
        &with_service_lines(
            "    guard:\n      baseline: stable\n      max_p95_latency: 500ms\n      webhook: ftp://127.0.0.1/hook\n    rollout:\n      candidate: canary\n      steps: [50, 100]\n      hold: 1m\n      gate: /approve\n",
        ),
        &[
            "test.yaml:16:16: services[0].guard.webhook: `ftp://127.0.0.1/hook` has scheme `ftp`: expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer",
            "test.yaml:21:13: services[0].rollout.gate: `/approve` has no scheme: expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer",
        ],
    );
}

// ----- many errors at once -------------------------------------------------------

#[test]
fn every_error_is_reported_in_file_order() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: public
    address: nowhere
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: -3
    guard: { baseline: gone, max_error_rate: 2 }
  - name: other
    match: { path_prefix: /other }
    versions:
      - name: v1
        endpoints: []
        weight: 1
        colour: blue
  - name: third
    match: { path_prefix: third }
    versions:
      - { name: v1, endpoints: [127.0.0.1:1], weight: 1 }
";
    assert_errors(
        text,
        &[
            "test.yaml:4:11: listeners[1].name: duplicate listener name `public` (also listeners[0]): give each listener its own name",
            "test.yaml:5:14: listeners[1].address: `nowhere` is not an address: expected IP:PORT such as 127.0.0.1:8080",
            "test.yaml:11:17: services[0].versions[0].weight: weight -3 is negative: weights are whole numbers from 0 to 1000000",
            "test.yaml:12:24: services[0].guard.baseline: unknown version `gone`: this service's versions are `stable`",
            "test.yaml:12:46: services[0].guard.max_error_rate: `2` is outside 0..=1: write a fraction, such as 0.05 for 5%",
            "test.yaml:17:20: services[1].versions[0].endpoints: no endpoints: list at least one IP:PORT or NAME:PORT, such as [127.0.0.1:18081]",
            "test.yaml:19:9: services[1].versions[0].colour: unknown field `colour`, expected one of `name`, `revision`, `endpoints`, `weight`, `protocol`, `tls`",
            "test.yaml:21:27: services[2].match.path_prefix: `third` does not start with `/`: write a path prefix such as /api",
        ],
    );
}

#[test]
fn errors_in_different_parts_do_not_hide_each_other() {
    let text = format!(
        "{BASE}admin: {{ adress: 127.0.0.1:9000 }}\nlimits: {{ drain_timeout: forever }}\nstate_dir: \"\"\n"
    );
    assert_errors(
        &text,
        &[
            "test.yaml:13:10: admin.adress: unknown field `adress`, expected `address` or `token_file`; did you mean `address`?",
            "test.yaml:14:26: limits.drain_timeout: `forever` is not a duration: write a number with a unit, such as 250ms, 5s, 1m or 1h",
            "test.yaml:15:12: state_dir: empty path: remove state_dir or name a directory",
        ],
    );
}

#[test]
fn errors_carry_their_parts() {
    let errors = parse(&edit("weight: 90", "weight: -1")).expect_err("negative weight");
    let error = &errors.0[0];
    assert_eq!(error.file, "test.yaml");
    assert_eq!((error.line, error.column), (9, 17));
    assert_eq!(error.path, "services[0].versions[0].weight");
    assert_eq!(
        error.reason,
        "weight -1 is negative: weights are whole numbers from 0 to 1000000"
    );
    let as_error: &dyn std::error::Error = &errors;
    assert!(as_error.to_string().starts_with("test.yaml:9:17: "));
}

// ----- rollout steps with their own holds ---------------------------------------

const GUARD_LINE: &str = "    guard: { baseline: stable, max_error_rate: 0.05 }\n";

#[test]
fn steps_carry_their_own_hold_or_a_manual_one_and_the_short_form_still_works() {
    use std::time::Duration;
    use veer::config::{Hold, Step};
    let config = parse(&with_service_lines(&format!(
        "{GUARD_LINE}    rollout:\n      candidate: canary\n      steps: [{{weight: 10, hold: 30m}}, {{weight: 50, hold: manual}}, 100]\n      hold: 10m\n"
    )))
    .unwrap_or_else(|errors| panic!("{errors}"));
    let rollout = config.services[0].rollout.as_ref().expect("rollout");
    assert_eq!(
        rollout.steps,
        [
            Step {
                percent: 10,
                hold: Hold::For(Duration::from_secs(1800))
            },
            Step {
                percent: 50,
                hold: Hold::Manual
            },
            Step {
                percent: 100,
                hold: Hold::For(Duration::from_secs(600))
            },
        ]
    );
    // Every step with its own hold: the rollout's `hold` may go.
    let config = parse(&with_service_lines(&format!(
        "{GUARD_LINE}    rollout: {{ candidate: canary, steps: [{{weight: 20, hold: 1m}}, {{weight: 100, hold: 5m}}] }}\n"
    )))
    .unwrap_or_else(|errors| panic!("{errors}"));
    let steps = &config.services[0].rollout.as_ref().expect("rollout").steps;
    assert_eq!(steps[1].hold, Hold::For(Duration::from_secs(300)));
    // The short form: every step holds for `hold`, the last one too.
    let config = parse(&with_service_lines(&format!(
        "{GUARD_LINE}    rollout: {{ candidate: canary, steps: [10, 100], hold: manual }}\n"
    )))
    .unwrap_or_else(|errors| panic!("{errors}"));
    let steps = &config.services[0].rollout.as_ref().expect("rollout").steps;
    assert!(steps.iter().all(|s| s.hold == Hold::Manual));
}

#[test]
fn step_errors_name_the_step_field() {
    assert_errors(
        &with_service_lines(&format!(
            "{GUARD_LINE}    rollout:\n      candidate: canary\n      steps:\n        - {{weight: 10, hold: soon}}\n        - {{wieght: 50, hold: 1m}}\n        - {{hold: 1m}}\n        - {{weight: 90, hold: 0s}}\n"
        )),
        &[
            "test.yaml:17:30: services[0].rollout.steps[0].hold: `soon` is not a duration: write a number with a unit, such as 250ms, 5s, 1m or 1h",
            "test.yaml:18:12: services[0].rollout.steps[1].wieght: unknown field `wieght`, expected `weight` or `hold`; did you mean `weight`?",
            "test.yaml:19:11: services[0].rollout.steps[2]: missing weight: give the candidate's percentage at this step, such as {weight: 25, hold: 10m}",
            "test.yaml:20:20: services[0].rollout.steps[3].weight: the last step must be 100: a rollout ends with all traffic on the candidate",
            "test.yaml:20:30: services[0].rollout.steps[3].hold: `0s` is zero: this needs a duration above 0",
        ],
    );
}

#[test]
fn a_step_without_any_hold_is_reported_once_at_the_rollout() {
    assert_errors(
        &with_service_lines(&format!(
            "{GUARD_LINE}    rollout:\n      candidate: canary\n      steps: [{{weight: 10, hold: 1m}}, 100]\n"
        )),
        &[
            "test.yaml:15:7: services[0].rollout.hold: missing hold: say how long each step must stay healthy, such as `hold: 10m`, or give every step its own, such as {weight: 10, hold: 30m}",
        ],
    );
}

// ----- every unknown key, in one run ------------------------------------------

#[test]
fn every_unknown_key_is_reported_top_level_and_nested() {
    let text = format!(
        "stat_dir: state\n{}",
        edit(
            "        weight: 10\n",
            "        weight: 10\n        revison: x\n        wieght: 3\n"
        )
    ) + "    helth_check: { path: /h }\n";
    assert_errors(
        &text,
        &[
            "test.yaml:1:1: stat_dir: unknown field `stat_dir`, expected one of `listeners`, `admin`, `state_dir`, `fleet`, `limits`, `access_log`, `dns`, `services`; did you mean `state_dir`?",
            "test.yaml:14:9: services[0].versions[1].revison: unknown field `revison`, expected one of `name`, `revision`, `endpoints`, `weight`, `protocol`, `tls`; did you mean `revision`?",
            "test.yaml:15:9: services[0].versions[1].wieght: unknown field `wieght`, expected one of `name`, `revision`, `endpoints`, `weight`, `protocol`, `tls`; did you mean `weight`?",
            "test.yaml:16:5: services[0].helth_check: unknown field `helth_check`, expected one of `name`, `match`, `versions`, `sticky`, `rules`, `timeouts`, `health_check`, `outlier_detection`, `slow_start`, `guard`, `rollout`, `grpc`; did you mean `health_check`?",
        ],
    );
}
