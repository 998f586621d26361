//! Reading a config service by service, and a reload that parses and checks
//! only the services whose text changed: the result is always the one a
//! read of the whole file gives (the config, or every error at its place),
//! whatever was changed, moved, renamed or broken.

use std::fmt::Write as _;
use std::path::Path;

use veer::config::{self, Config, Reuse};

/// `count` services `svc-I`, each with two hosts and two versions; the last
/// service's canary at `last_weight`.
fn file(count: usize, last_weight: u32) -> String {
    let mut y = String::from(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nadmin:\n  address: 127.0.0.1:9901\nservices:\n",
    );
    for i in 0..count {
        let weight = if i + 1 == count { last_weight } else { 10 };
        let _ = write!(
            y,
            "  - name: svc-{i}
    match:
      hosts: [svc-{i}.example.com, \"*.svc-{i}.internal\"]
    versions:
      - name: stable
        endpoints: [127.0.0.1:{a}, 127.0.0.1:{b}]
        weight: 90
      - name: canary
        endpoints: [127.0.0.1:{c}]
        weight: {weight}
        tls: {{ ca: certs/ca-{i}.pem }}
    guard: {{ baseline: stable, max_error_rate: 0.05 }}
",
            a = 20000 + i * 3,
            b = 20001 + i * 3,
            c = 20002 + i * 3,
        );
    }
    y.push_str("state_dir: state\n");
    y
}

/// The whole-file read of `text`: an anchor sign in a comment keeps the
/// file from being cut into services.
fn whole(text: &str) -> String {
    format!("{text}# & (read whole)\n")
}

/// Reads `text` as `path`, reusing `reuse`; errors as the user sees them.
fn read(path: &Path, text: &str, reuse: &mut Reuse) -> Result<Config, String> {
    std::fs::write(path, text).expect("write the config");
    config::load_file_reusing(path, |_| Vec::new(), Some(reuse))
        .map(|(config, _)| config)
        .map_err(|errors| errors.to_string())
}

/// A fresh read of `text` as `path`, the file read whole.
fn fresh(path: &Path, text: &str) -> Result<Config, String> {
    std::fs::write(path, whole(text)).expect("write the config");
    config::load_file(path).map_err(|errors| errors.to_string())
}

#[test]
fn a_file_read_by_service_is_the_file_read_whole() {
    let mut texts = vec![file(50, 10)];
    for path in [
        "config/veer.yaml",
        "config/minimal.yaml",
        "examples/kubernetes/edge/veer.yaml",
        "examples/kubernetes/blue-green/veer.yaml",
        "examples/kubernetes/sidecar/base/veer.yaml",
    ] {
        texts.push(std::fs::read_to_string(path).expect("an example config"));
    }
    for text in texts {
        // Some examples need the `fleet` feature: refused alike then.
        let by_service = config::parse_str(&text, "t.yaml").map_err(|e| e.to_string());
        let read_whole = config::parse_str(&whole(&text), "t.yaml").map_err(|e| e.to_string());
        assert_eq!(by_service, read_whole);
    }
}

#[test]
fn an_unchanged_service_is_reused_and_a_changed_one_read_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    let mut reuse = Reuse::default();
    let first = read(&path, &file(200, 10), &mut reuse).expect("valid");
    assert_eq!((reuse.parsed(), reuse.len()), (200, 200));
    assert_eq!(first, fresh(&path, &file(200, 10)).expect("valid"));

    let same = read(&path, &file(200, 10), &mut reuse).expect("valid");
    assert_eq!(reuse.parsed(), 0, "nothing changed");
    assert_eq!(same, first);

    let changed = read(&path, &file(200, 0), &mut reuse).expect("valid");
    assert_eq!(reuse.parsed(), 1, "only the last service changed");
    assert_eq!(changed.services[199].versions[1].weight.get(), 0);
    assert_eq!(changed, fresh(&path, &file(200, 0)).expect("valid"));
    // Relative paths of reused services are resolved once, against the
    // file's directory, as on a fresh read.
    assert_eq!(
        changed.services[5].versions[1]
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.clone()),
        Some(dir.path().join("certs/ca-5.pem"))
    );
    assert_eq!(changed.state_dir, Some(dir.path().join("state")));

    // Back and forth many times: what is kept stays one file's worth.
    for n in 1..=10 {
        read(&path, &file(200, n % 2), &mut reuse).expect("valid");
        assert_eq!((reuse.parsed(), reuse.len()), (1, 200));
    }
}

/// The services of `text` (from `file`), each as written.
fn items(text: &str) -> (String, Vec<String>, String) {
    let start = text.find("services:\n").expect("services") + "services:\n".len();
    let end = text.find("state_dir:").expect("state_dir");
    let mut items: Vec<String> =
        text[start..end]
            .split_inclusive('\n')
            .fold(Vec::new(), |mut items, line| {
                if line.starts_with("  - ") || items.is_empty() {
                    items.push(String::new());
                }
                items.last_mut().expect("an item").push_str(line);
                items
            });
    items.retain(|item| !item.is_empty());
    (text[..start].to_string(), items, text[end..].to_string())
}

fn join(head: &str, items: &[String], tail: &str) -> String {
    format!("{head}{}{tail}", items.concat())
}

#[test]
fn services_moved_renamed_added_and_removed_read_as_the_whole_file_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    let mut reuse = Reuse::default();
    let base = file(30, 10);
    read(&path, &base, &mut reuse).expect("valid");
    let (head, items, tail) = items(&base);

    let mut reordered = items.clone();
    reordered.swap(0, 29);
    reordered.rotate_left(7);
    let mut renamed = items.clone();
    renamed[12] = renamed[12]
        .replace("name: svc-12\n", "name: svc-twelve\n")
        .replace("svc-12.example.com", "twelve.example.com");
    let mut removed = items.clone();
    removed.remove(3);
    let mut added = items.clone();
    added.push(items[0].replace("svc-0", "svc-new"));
    for (what, changed, parsed) in [
        ("reordered", &reordered, 0),
        ("renamed", &renamed, 1),
        ("removed", &removed, 0),
        ("added", &added, 1),
    ] {
        // From the base file each time.
        read(&path, &base, &mut reuse).expect("valid");
        let text = join(&head, changed, &tail);
        let config = read(&path, &text, &mut reuse).expect(what);
        assert_eq!(reuse.parsed(), parsed, "{what}");
        assert_eq!(reuse.len(), changed.len(), "{what}");
        assert_eq!(config, fresh(&path, &text).expect(what), "{what}");
    }
}

#[test]
fn a_bad_line_anywhere_is_refused_at_its_place_as_a_fresh_read_refuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    let mut reuse = Reuse::default();
    let base = file(40, 10);
    let (head, items, tail) = items(&base);
    let cases: Vec<(&str, String)> = vec![
        (
            "a bad weight in the changed service",
            base.replacen(
                "weight: 10\n        tls: { ca: certs/ca-7.pem }",
                "weight: ten\n        tls: { ca: certs/ca-7.pem }",
                1,
            ),
        ),
        (
            "a duplicate host brought in by the changed service",
            base.replace("[svc-20.example.com,", "[svc-3.example.com,"),
        ),
        (
            "a duplicate name brought in by the changed service",
            base.replace("name: svc-21\n", "name: svc-2\n"),
        ),
        (
            "a service copied whole",
            join(
                &head,
                &[items.clone(), vec![items[9].clone()]].concat(),
                &tail,
            ),
        ),
        (
            "a misspelt key outside the services, which are all unchanged",
            base.replace("admin:\n  address:", "admin:\n  adress:"),
        ),
        (
            "a duplicate key in an unchanged-looking service",
            base.replacen(
                "    guard: { baseline: stable, max_error_rate: 0.05 }\n",
                "    guard: { baseline: stable, max_error_rate: 0.05 }\n    guard: {}\n",
                1,
            ),
        ),
        (
            "a YAML syntax error",
            base.replace("name: svc-30\n", "name: [svc-30\n"),
        ),
        (
            "a service list that is not a list",
            base.replace("services:\n", "services: 5\n"),
        ),
    ];
    for (what, text) in cases {
        read(&path, &base, &mut reuse).expect("valid");
        let refused = read(&path, &text, &mut reuse).expect_err(what);
        let expected = fresh(&path, &text).expect_err(what);
        // The fresh read names the file it read: the same file.
        assert_eq!(refused, expected, "{what}");
        assert!(
            refused.starts_with(&format!("{}:", path.display())),
            "{what}: {refused}"
        );
        // A refused file leaves what was kept as it was.
        assert_eq!(reuse.len(), 40, "{what}");
        read(&path, &base, &mut reuse).expect("valid");
        assert_eq!(
            reuse.parsed(),
            0,
            "{what}: the base file is still kept whole"
        );
    }
}

#[test]
fn the_errors_name_the_line_of_the_changed_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    let mut reuse = Reuse::default();
    let base = file(40, 10);
    read(&path, &base, &mut reuse).expect("valid");
    let text = base.replace("[svc-20.example.com,", "[svc-3.example.com,");
    let line = text[..text
        .find("[svc-3.example.com, \"*.svc-20")
        .expect("the host")]
        .matches('\n')
        .count()
        + 1;
    let refused = read(&path, &text, &mut reuse).expect_err("a duplicate host");
    assert_eq!(
        refused,
        format!(
            "{}:{line}:15: services[20].match.hosts[0]: host `svc-3.example.com` with path_prefix `/` is already routed to service `svc-3` (services[3]): routing would be ambiguous; change the host or the path_prefix",
            path.display()
        )
    );
}
