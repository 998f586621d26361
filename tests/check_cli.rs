//! `veer check` as a pipeline runs it: exit status, stdout and stderr.

use std::path::Path;
use std::process::{Command, Output};

fn check(file: &Path) -> Output {
    check_with(file, &[])
}

fn check_with(file: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veer"))
        .arg("check")
        .arg("-c")
        .arg(file)
        .args(extra)
        .output()
        .expect("run veer check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shipped example names secrets that are not in the repository, so
/// it is checked as a GitOps pipeline would: `--offline`.
#[test]
fn a_valid_config_passes() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/veer.yaml"));
    let output = check_with(path, &["--offline"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    assert_eq!(
        stdout.lines().next(),
        Some(format!("{}: ok", path.display()).as_str())
    );
    assert!(stdout.contains("offline: "), "{stdout}");
    // It persists what the guard and its rollout decide: no warning.
    assert_eq!(text(&output.stderr), "");
}

const WITH_TOKEN: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
  token_file: secrets/admin-token
state_dir: state
services:
  - name: app
    versions:
      - { name: v1, endpoints: [127.0.0.1:18081], weight: 1 }
";

/// `check` reads what `run` reads: a missing token file fails both, with
/// the field and the file named; `--offline` checks the rest and says which
/// files it did not read.
#[test]
fn check_reads_the_admin_token_unless_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(&path, WITH_TOKEN).expect("write config");
    let token = dir.path().join("secrets/admin-token");

    let output = check(&path);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    assert_eq!(
        text(&output.stderr).trim_end(),
        format!(
            "{}:6:15: admin.token_file: cannot read the admin token from {}: No such file or directory (os error 2)",
            path.display(),
            token.display()
        )
    );

    let output = check_with(&path, &["--offline"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!(
            "{}: ok\noffline: not read (`veer run` will read them; check them where they are): admin.token_file ({}), state_dir ({})\n",
            path.display(),
            token.display(),
            dir.path().join("state").display()
        )
    );

    std::fs::create_dir_all(token.parent().expect("parent")).expect("mkdir");
    std::fs::write(&token, "  \n").expect("write empty token");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("admin.token_file: the admin token file"),
        "{}",
        text(&output.stderr)
    );
    assert!(text(&output.stderr).contains("is empty; put a long random token in it"));

    std::fs::write(&token, "s3cret\n").expect("write token");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), format!("{}: ok\n", path.display()));

    // `veer run` refuses the same config the same way.
    std::fs::remove_file(&token).expect("remove token");
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .expect("run veer run");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("admin.token_file: cannot read the admin token from"),
        "{}",
        text(&output.stderr)
    );
}

/// A guard with nowhere to keep its latches: a loud warning, from `check`
/// and at start, naming the fix; the config is still valid.
#[test]
fn a_guard_without_state_dir_is_warned_about() {
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
      - { name: stable, endpoints: [127.0.0.1:18081], weight: 9 }
      - { name: canary, endpoints: [127.0.0.1:18082], weight: 1 }
    guard: { baseline: stable, max_error_rate: 0.05 }
",
    )
    .expect("write config");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stderr).trim_end(),
        format!(
            "{}:9:12: services[0].guard: warning: no state_dir: service `app` has a guard, but guard latches, rollout progress and run-time weights are kept in memory only; a restart forgets them and can send traffic back to a version the guard tripped. Add `state_dir: state` (relative to this file) on a persistent volume",
            path.display()
        )
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
      - { name: v1, endpoints: [backend:0], weight: 1 }
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
            format!("{file}:10:11: services[1].name: duplicate service name `app` (also services[0]): give each service its own name"),
            format!("{file}:12:33: services[1].versions[0].endpoints[0]: `backend:0` has port 0: give the port the endpoints listen on"),
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

/// `state_dir` naming a file: refused by `check` as `run` would fail on it.
#[test]
fn a_state_dir_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("veer.yaml");
    let yaml = WITH_TOKEN.replace("  token_file: secrets/admin-token\n", "");
    std::fs::write(&path, yaml).expect("write config");
    std::fs::write(dir.path().join("state"), "not a directory").expect("write file");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    assert_eq!(
        text(&output.stderr).trim_end(),
        format!(
            "{}:6:12: state_dir: {} exists and is not a directory: name a directory veer may create and write",
            path.display(),
            dir.path().join("state").display()
        )
    );
}
