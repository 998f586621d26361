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

/// The checks across services (no name, no route twice) that a reread runs
/// on what changed only: a name or a host handed from one service to
/// another within one reload is no clash; one taken while its holder keeps
/// it is, at the place a fresh read gives.
#[test]
fn names_and_routes_handed_over_in_one_reload_are_no_clash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    let mut reuse = Reuse::default();
    let base = file(30, 10);
    read(&path, &base, &mut reuse).expect("valid");
    let (head, items, tail) = items(&base);

    // svc-1 and svc-2 swap names (and hosts) in one write.
    let mut swapped = items.clone();
    swapped[1] = items[2].clone();
    swapped[2] = items[1].clone();
    // svc-4 gives its host up; svc-5 takes it in the same write.
    let mut handed = items.clone();
    handed[4] = items[4].replace("[svc-4.example.com,", "[svc-4-old.example.com,");
    handed[5] = items[5].replace("[svc-5.example.com,", "[svc-4.example.com,");
    // svc-6 is removed and svc-7 renamed to it.
    let mut taken = items.clone();
    taken[7] = items[7].replace("name: svc-7\n", "name: svc-6\n");
    taken.remove(6);
    for (what, changed) in [
        ("names swapped", &swapped),
        ("a host handed over", &handed),
        ("a removed service's name taken", &taken),
    ] {
        read(&path, &base, &mut reuse).expect("valid");
        let text = join(&head, changed, &tail);
        let config = read(&path, &text, &mut reuse).expect(what);
        assert!(reuse.parsed() <= 2, "{what}: read service by service");
        assert_eq!(config, fresh(&path, &text).expect(what), "{what}");
    }

    // A rename onto a name still held is refused at the renamed service's
    // name, the place a fresh read gives, however often it is tried; and
    // once the holder goes, the same rename passes.
    read(&path, &base, &mut reuse).expect("valid");
    let onto = base.replace("name: svc-12\n", "name: svc-5\n");
    let line = onto[..onto
        .find("name: svc-5\n    match:\n      hosts: [svc-12")
        .expect("renamed")]
        .matches('\n')
        .count()
        + 1;
    for attempt in 0..2 {
        let refused = read(&path, &onto, &mut reuse).expect_err("a name held twice");
        assert_eq!(
            refused,
            format!(
                "{}:{line}:11: services[12].name: duplicate service name `svc-5` (also services[5]): give each service its own name",
                path.display()
            ),
            "attempt {attempt}"
        );
        assert_eq!(refused, fresh(&path, &onto).expect_err("fresh"));
    }
    let (_, now, _) = self::items(&onto);
    let without_holder: Vec<String> = now
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 5)
        .map(|(_, item)| item.clone())
        .collect();
    let text = join(&head, &without_holder, &tail);
    let config = read(&path, &text, &mut reuse).expect("the holder gone");
    assert_eq!(config, fresh(&path, &text).expect("fresh"));
}

/// A run of rereads, each from the last one's file, each changing a few
/// services in a way that may or may not clash: every result equals a fresh
/// read's, so the counts a reread keeps never drift from the file.
#[test]
fn a_run_of_rereads_agrees_with_fresh_reads_throughout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    let mut reuse = Reuse::default();
    let base = file(24, 10);
    let (head, mut items, tail) = items(&base);
    read(&path, &base, &mut reuse).expect("valid");
    // A fixed sequence (an LCG), so a failure replays.
    let mut seed: u64 = 0x5eed;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(seed >> 33).expect("31 bits") % n
    };
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..60 {
        let mut changed = items.clone();
        let (a, b) = (next(changed.len()), next(changed.len()));
        let name_of = |item: &str| {
            item.lines()
                .next()
                .and_then(|line| line.strip_prefix("  - name: "))
                .expect("a name line")
                .to_string()
        };
        match next(6) {
            // A new name of its own.
            0 => changed[a] = changed[a].replacen(&name_of(&changed[a]), &format!("n{round}"), 1),
            // Another service's name.
            1 => {
                let taken = name_of(&changed[b]);
                changed[a] = changed[a].replacen(&name_of(&changed[a]), &taken, 1);
            }
            // Another service's hosts.
            2 => {
                let hosts = |item: &str| {
                    item.lines()
                        .find(|line| line.contains("hosts:"))
                        .expect("hosts")
                        .to_string()
                };
                let theirs = hosts(&changed[b]);
                changed[a] = changed[a].replacen(&hosts(&changed[a]), &theirs, 1);
            }
            // A service written twice.
            3 => {
                let copy = changed[a].clone();
                changed.insert(b, copy);
            }
            // One removed.
            4 if changed.len() > 2 => {
                changed.remove(a);
            }
            // Two swapped.
            _ => changed.swap(a, b),
        }
        let text = join(&head, &changed, &tail);
        let reread = read(&path, &text, &mut reuse);
        assert_eq!(reread, fresh(&path, &text), "round {round}");
        if reread.is_ok() {
            // Taken service by service, not sent to the whole-file read by
            // a clash that was none.
            assert!(
                reuse.parsed() <= 1,
                "round {round}: {} parsed",
                reuse.parsed()
            );
            items = changed;
            accepted += 1;
        } else {
            refused += 1;
            // The file goes back to the last one accepted, as an operator
            // would fix it.
            read(&path, &join(&head, &items, &tail), &mut reuse).expect("the last good file");
        }
    }
    assert!(
        accepted > 10 && refused > 10,
        "accepted {accepted}, refused {refused}"
    );
}
