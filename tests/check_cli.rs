//! `veer check` as a pipeline runs it: exit status, stdout and stderr.

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_valid_config_passes() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/veer.yaml"));
    let output = check(path);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(
        text(&output.stdout).trim_end(),
        format!("{}: ok", path.display())
    );
}

#[test]
fn an_invalid_config_fails_with_every_error_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(
        &path,
        "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        wieght: 90
  - name: app
    versions:
      - { name: v1, endpoints: [backend:80], weight: 1 }
",
    )
    .expect("write config");
    let output = check(&path);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {}",
        text(&output.stdout)
    );
    let file = path.display();
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{file}:9:9: services[0].versions[0].wieght: unknown field `wieght`, expected one of `name`, `revision`, `endpoints`, `weight`, `protocol`, `tls`; did you mean `weight`?"),
            format!("{file}:12:33: services[1].versions[0].endpoints[0]: `backend:80` names a host: DNS names are not supported, expected IP:PORT such as 127.0.0.1:18081"),
        ]
    );
}

#[test]
fn a_missing_file_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.yaml");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr).trim_end(),
        format!(
            "{}:1:1: (file): cannot read the config file: No such file or directory (os error 2)",
            path.display()
        )
    );
}
