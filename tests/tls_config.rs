//! The `tls` blocks of the config, as `veer check` reports them: shape errors
//! line for line, then the files they name (missing, not PEM, a key of
//! another certificate, a certificate about to expire).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::tls::Ca;
use veer::config::parse_str;

#[track_caller]
fn assert_errors(text: &str, expected: &[&str]) {
    match parse_str(text, "test.yaml") {
        Ok(config) => panic!("accepted, expected {expected:#?}\n{config:#?}"),
        Err(errors) => {
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            assert_eq!(lines, expected, "\nthe config was:\n{text}");
        }
    }
}

/// One listener with `tls` (line 4 holds it), one service with one version
/// whose last line (9) is `version_extra`.
fn config(tls: &str, version_extra: &str) -> String {
    format!(
        "\
listeners:
  - name: secure
    address: 127.0.0.1:8443
    tls: {tls}
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 1
{version_extra}"
    )
}

const PAIR: &str = "{ cert: s.crt, key: s.key }";

#[test]
fn listener_tls_shapes() {
    assert!(parse_str(&config(PAIR, ""), "t").is_ok());
    assert_errors(
        &config("{}", ""),
        &["test.yaml:4:10: listeners[0].tls: no certificate: set cert and key (PEM files), or list certificates"],
    );
    assert_errors(
        &config("{ cert: s.crt }", ""),
        &["test.yaml:4:10: listeners[0].tls.key: missing key: name the PEM private key file"],
    );
    assert_errors(
        &config("{ cert: s.crt, key: s.key, ciphers: [x] }", ""),
        &["test.yaml:4:37: listeners[0].tls.ciphers: unknown field `ciphers`, expected one of `cert`, `key`, `certificates`, `client_ca`, `identity_header`"],
    );
    assert_errors(
        &config(
            "{ certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt, key: b.key, hosts: [b.test, \"B.test\", \"x:1\"] }] }",
            "",
        ),
        &[
            "test.yaml:4:27: listeners[0].tls.certificates[0].hosts: no hosts: list the SNI names this certificate is for, such as [api.example.com, \"*.example.com\"]",
            "test.yaml:4:99: listeners[0].tls.certificates[1].hosts[1]: `B.test` is already given at listeners[0].tls.certificates[1].hosts[0]: each SNI name picks one certificate",
            "test.yaml:4:109: listeners[0].tls.certificates[1].hosts[2]: `x:1` has a port: hosts are matched without the port; write `x`",
        ],
    );
    assert_errors(
        &config("{ cert: s.crt, key: s.key, identity_header: x-client-identity }", ""),
        &["test.yaml:4:54: listeners[0].tls.identity_header: identity_header needs client_ca: without verified client certificates there is no identity to pass"],
    );
    assert_errors(
        &config(
            "{ cert: s.crt, key: s.key, client_ca: ca.pem, identity_header: \"bad header\" }",
            "",
        ),
        &["test.yaml:4:73: listeners[0].tls.identity_header: `bad header` is not a valid header name: use letters, digits and `-`, such as x-user-id"],
    );
    let ok = parse_str(
        &config(
            "{ cert: s.crt, key: s.key, client_ca: ca.pem, identity_header: X-Client-Identity, certificates: [{ cert: a.crt, key: a.key, hosts: [\"*.a.test\"] }] }",
            "",
        ),
        "t",
    )
    .expect("valid");
    let tls = ok.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.certificates.len(), 2);
    assert!(
        tls.certificates[0].hosts.is_empty(),
        "the plain pair is the default"
    );
    assert_eq!(
        tls.identity_header.as_ref().map(|h| h.as_str()),
        Some("x-client-identity")
    );
}

#[test]
fn version_tls_shapes() {
    assert!(parse_str(&config(PAIR, "        tls: {}\n"), "t").is_ok());
    assert_errors(
        &config(PAIR, "        tls: { client_cert: c.crt }\n"),
        &["test.yaml:11:14: services[0].versions[0].tls.client_key: missing client_key: client_cert needs the PEM file of its private key"],
    );
    assert_errors(
        &config(PAIR, "        tls: { ca: ca.pem, insecure_skip_verify: true }\n"),
        &["test.yaml:11:50: services[0].versions[0].tls.insecure_skip_verify: insecure_skip_verify turns off the verification that ca is for: remove one of them"],
    );
    assert_errors(
        &config(PAIR, "        tls: { insecure_skip_verify: yes please }\n"),
        &["test.yaml:11:38: services[0].versions[0].tls.insecure_skip_verify: `yes please` is not true or false"],
    );
    assert_errors(
        &config(PAIR, "        tls: { server_name: \"api.internal:443\" }\n"),
        &["test.yaml:11:29: services[0].versions[0].tls.server_name: `api.internal:443` has a port: write the name alone, such as `api.internal`"],
    );
    assert_errors(
        &config(PAIR, "        tls: { server_name: \"not a name\" }\n"),
        &["test.yaml:11:29: services[0].versions[0].tls.server_name: `not a name` is not a DNS name or IP address: write the name the endpoints' certificates carry, such as api.internal"],
    );
    assert_errors(
        &config(PAIR, "        tls: { verify: false }\n"),
        &["test.yaml:11:16: services[0].versions[0].tls.verify: unknown field `verify`, expected one of `server_name`, `ca`, `insecure_skip_verify`, `client_cert`, `client_key`"],
    );
}

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["check", "-c"])
        .arg(file)
        .output()
        .expect("run veer check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `veer check` on a config whose listener and version name real files in
/// `dir`; line 4 is the listener's tls, line 11 the version's.
fn check_files(dir: &Path, tls: &str, version_tls: &str) -> (Option<i32>, String, String) {
    let path = dir.join("veer.yaml");
    std::fs::write(&path, config(tls, &format!("        tls: {version_tls}\n"))).expect("write");
    let output = check(&path);
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn check_verifies_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new("veer test root");
    ca.write(d, "ca");
    ca.leaf(&["app.test"]).write(d, "s");
    ca.leaf(&["app.test"]).write(d, "other");
    std::fs::write(d.join("junk.pem"), "not a certificate\n").expect("junk");
    let file = d.join("veer.yaml");
    let file = file.display();

    // Everything in order.
    let (code, stdout, stderr) = check_files(
        d,
        PAIR,
        "{ ca: ca.pem, client_cert: s.crt, client_key: s.key }",
    );
    assert_eq!((code, stderr.as_str()), (Some(0), ""), "{stdout}");
    assert_eq!(stdout, format!("{file}: ok\n"));

    // Missing, not PEM, a key of another certificate.
    let (code, _, stderr) = check_files(
        d,
        "{ cert: missing.crt, key: s.key, client_ca: junk.pem }",
        "{ ca: ca.pem, client_cert: s.crt, client_key: other.key }",
    );
    assert_eq!(code, Some(1));
    let dir_text = d.display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{file}:4:18: listeners[0].tls.cert: cannot read {dir_text}/missing.crt: No such file or directory (os error 2)"),
            format!("{file}:4:54: listeners[0].tls.client_ca: {dir_text}/junk.pem holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)"),
            format!("{file}:11:60: services[0].versions[0].tls.client_key: the private key in {dir_text}/other.key does not belong to the certificate in {dir_text}/s.crt"),
        ]
    );
}

#[test]
fn check_warns_on_certificates_about_to_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new("veer test root");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(3) + time::Duration::hours(1);
    ca.leaf_until(&["app.test"], soon).write(d, "s");
    let (code, stdout, stderr) = check_files(d, PAIR, "{}");
    let file = d.join("veer.yaml");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("{}: ok\n", file.display()));
    let line = stderr.trim_end();
    let prefix = format!(
        "{}:4:18: listeners[0].tls.cert: warning: the certificate expires in 3 days, at ",
        file.display()
    );
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.ends_with(": renew it"), "{line}");
}
