//! The layer order of veer's modules, checked: every `crate::` (and
//! `super::` reaching the crate root) path in `src/` is read, and an edge from
//! a module to one above it in `LAYERS` fails this test, unless it is one of
//! the `EXCEPTIONS`, each with its reason. The same order is written in
//! docs/architecture.md, and the test fails when the two differ.
//!
//! Plain Rust over the source text: comments and literals are blanked, then
//! paths are read token by token. A dependency that only a macro from another
//! crate hides is not seen; veer has none.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The order, from the top (the binary's command line) down to the leaves.
/// A module may depend on the modules after it — in its own layer only on
/// those listed after it there — and never on one before it.
const LAYERS: &[(&str, &[&str])] = &[
    // What a user runs: the command line, the demo, the listeners and the
    // admin API around everything else.
    ("surfaces", &["cli", "demo", "server", "admin"]),
    // Run-time state and the tasks that change it: reload, health, the
    // control actor, rollouts and the guard, the audit log, persistence.
    (
        "control plane",
        &[
            "reload", "health", "checks", "control", "history", "rollout", "guard", "audit",
            "fleet", "status", "state",
        ],
    ),
    // One request: routing, splitting, forwarding, the outcome.
    ("request path", &["proxy"]),
    // What the request path reads, published in one swap.
    ("snapshot", &["snapshot"]),
    // The parts a snapshot is built of.
    (
        "building blocks",
        &["mirror", "upstream", "tls", "telemetry", "routing"],
    ),
    // Validated configuration.
    ("config", &["config"]),
    // Depend on no other module of veer.
    (
        "leaves",
        &[
            "outcome",
            "grpc",
            "watch",
            "logging",
            "clock",
            "heap",
            "connection_header",
        ],
    ),
];

/// Edges that point up today, each with the reason it is allowed. The aim is
/// none: an entry that no longer matches an edge fails the test, so the list
/// only shrinks.
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "admin",
        "cli",
        "test only: the drift test in admin/status.rs reads what the admin API sends \
         with the CLI's own parser and table; it can move to tests/ once the CLI's \
         reading is public",
    ),
    (
        "guard",
        "control",
        "the guard's judging loop (guard/mod.rs) is a task that commands the control \
         actor; it moves out of `guard` (whose verdicts stay pure, below control) when \
         the typed control actor lands",
    ),
    (
        "rollout",
        "control",
        "the rollout ticker (rollout/mod.rs) is a task that commands the control actor; \
         it moves out of `rollout` (whose transitions stay pure, below control) when the \
         typed control actor lands",
    ),
];

fn order() -> Vec<&'static str> {
    LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter().copied())
        .collect()
}

/// One `crate::` path found in a file: the module it names and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Use {
    target: String,
    line: usize,
}

#[test]
fn dependencies_point_down_the_layer_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let violations = check(root, &order(), EXCEPTIONS);
    assert!(violations.is_empty(), "layering:\n{violations}");
}

/// Every way the sources under `root/src` break `order` (top first), one
/// line each, worded for whoever broke it; empty when they hold.
fn check(root: &Path, order: &[&str], exceptions: &[(&str, &str, &str)]) -> String {
    let rank = |m: &str| order.iter().position(|o| *o == m);
    let mut violations = String::new();
    let mut used_exceptions = BTreeSet::new();
    let mut modules = BTreeSet::new();

    for file in rust_files(&root.join("src")) {
        let relative = file.strip_prefix(root).expect("under the crate root");
        let Some(module) = top_module(relative) else {
            continue;
        };
        modules.insert(module.clone());
        let text = std::fs::read_to_string(&file).expect("read source file");
        let Some(from) = rank(&module) else {
            continue;
        };
        for found in crate_uses(&text, module_depth(relative)) {
            if found.target == module {
                continue;
            }
            let Some(to) = rank(&found.target) else {
                writeln!(
                    violations,
                    "{}:{}: `crate::{}` is not a module of the layer order",
                    relative.display(),
                    found.line,
                    found.target
                )
                .expect("write to a String");
                continue;
            };
            if to > from {
                continue;
            }
            let exception = exceptions
                .iter()
                .position(|(f, t, _)| *f == module && *t == found.target);
            if let Some(i) = exception {
                used_exceptions.insert(i);
                continue;
            }
            writeln!(
                violations,
                "{}:{}: `{module}` uses `crate::{}`, which sits above it in the layer order \
                 ({} above {}); move the code down, hand it in from above (a trait, a \
                 channel, a value), or, if it must stay, list the edge in EXCEPTIONS with \
                 its reason",
                relative.display(),
                found.line,
                found.target,
                found.target,
                module,
            )
            .expect("write to a String");
        }
    }

    for module in &modules {
        if rank(module).is_none() {
            writeln!(
                violations,
                "module `{module}` is not in the layer order: place it in LAYERS \
                 (tests/layering.rs) and in docs/architecture.md"
            )
            .expect("write to a String");
        }
    }
    for listed in order {
        if !modules.contains(*listed) {
            writeln!(
                violations,
                "LAYERS lists `{listed}`, which is no module in src/: remove it here and \
                 in docs/architecture.md"
            )
            .expect("write to a String");
        }
    }
    for (i, (from, to, _)) in exceptions.iter().enumerate() {
        if !used_exceptions.contains(&i) {
            writeln!(
                violations,
                "the exception `{from}` -> `{to}` no longer matches any edge (or is not an \
                 upward one): remove it from EXCEPTIONS"
            )
            .expect("write to a String");
        }
    }
    violations
}

/// A small crate on disk (`files`: path and text), for the check's own tests.
fn tiny_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

const TINY_ORDER: &[&str] = &["server", "tls", "watch", "clock"];

#[test]
fn the_check_passes_a_crate_that_keeps_the_order() {
    let dir = tiny_crate(&[
        (
            "src/lib.rs",
            "pub mod server; pub mod tls; pub mod watch; pub mod clock;",
        ),
        (
            "src/server/mod.rs",
            "use crate::tls::Terminator;\nuse crate::clock;",
        ),
        ("src/tls/mod.rs", "mod server;\nuse crate::watch;"),
        ("src/tls/server.rs", "use super::super::clock::now;"),
        (
            "src/watch.rs",
            "use crate::watch::inner; // use crate::server;",
        ),
        ("src/clock.rs", ""),
    ]);
    assert_eq!(check(dir.path(), TINY_ORDER, &[]), "");
}

#[test]
fn the_check_names_an_edge_that_points_up() {
    let dir = tiny_crate(&[
        ("src/server/mod.rs", ""),
        ("src/tls/mod.rs", "mod server;"),
        ("src/tls/server.rs", "\nuse crate::{clock, server::Proxy};"),
        ("src/watch.rs", ""),
        ("src/clock.rs", ""),
    ]);
    let found = check(dir.path(), TINY_ORDER, &[]);
    assert_eq!(
        found,
        "src/tls/server.rs:2: `tls` uses `crate::server`, which sits above it in the layer \
         order (server above tls); move the code down, hand it in from above (a trait, a \
         channel, a value), or, if it must stay, list the edge in EXCEPTIONS with its reason\n"
    );
    // Listed as an exception, the same edge passes.
    let allowed = [("tls", "server", "a reason long enough to read")];
    assert_eq!(check(dir.path(), TINY_ORDER, &allowed), "");
}

#[test]
fn the_check_wants_every_module_placed_and_every_exception_used() {
    let dir = tiny_crate(&[
        ("src/server/mod.rs", "use crate::tls;"),
        ("src/tls/mod.rs", "use crate::nowhere::Thing;"),
        ("src/extra.rs", ""),
        ("src/clock.rs", ""),
    ]);
    let stale = [("clock", "server", "no longer true")];
    let found = check(dir.path(), TINY_ORDER, &stale);
    assert_eq!(
        found,
        "src/tls/mod.rs:1: `crate::nowhere` is not a module of the layer order\n\
         module `extra` is not in the layer order: place it in LAYERS (tests/layering.rs) \
         and in docs/architecture.md\n\
         LAYERS lists `watch`, which is no module in src/: remove it here and in \
         docs/architecture.md\n\
         the exception `clock` -> `server` no longer matches any edge (or is not an upward \
         one): remove it from EXCEPTIONS\n"
    );
}

#[test]
fn the_documented_order_is_the_checked_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md");
    let text = std::fs::read_to_string(&path).expect("read docs/architecture.md");
    let documented = documented_order(&text).expect(
        "docs/architecture.md holds the layer order between <!-- layers --> and <!-- /layers -->",
    );
    assert_eq!(
        documented,
        order(),
        "docs/architecture.md and LAYERS in tests/layering.rs must list the same order"
    );
}

#[test]
fn every_exception_has_a_reason_and_names_two_placed_modules() {
    let order = order();
    for (from, to, reason) in EXCEPTIONS {
        assert!(order.contains(from), "{from}");
        assert!(order.contains(to), "{to}");
        assert!(reason.len() > 20, "{from} -> {to}: say why");
    }
}

/// Every backticked name on the lines between the markers, in order.
fn documented_order(text: &str) -> Option<Vec<String>> {
    let start = text.find("<!-- layers -->")?;
    let end = start + text[start..].find("<!-- /layers -->")?;
    let block = &text[start..end];
    Some(
        block
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to (`src/tls/server.rs`: `tls`);
/// `None` for the crate roots.
fn top_module(relative: &Path) -> Option<String> {
    let mut parts = relative.components().skip(1);
    let first = parts.next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(module) => Some(module.to_string()),
        None => Some(first.to_string()),
    }
}

/// How many `super::` lead from a file's module to the crate root:
/// `src/a.rs` and `src/a/mod.rs` 1, `src/a/b.rs` 2.
fn module_depth(relative: &Path) -> usize {
    let parts: Vec<_> = relative.components().skip(1).collect();
    let last_is_mod = relative.file_name().is_some_and(|n| n == "mod.rs");
    parts.len() - usize::from(last_is_mod)
}

/// The top-level modules `text` names through `crate::` (also `$crate::` and
/// `crate::{a, b::c}`) and through enough `super::` to reach the crate root,
/// for a file `depth` modules below it.
fn crate_uses(text: &str, depth: usize) -> Vec<Use> {
    let tokens = tokens(&blank(text));
    let mut found = Vec::new();
    // Brace depths at which inline `mod name {` blocks opened: `super` in
    // them counts one more level.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let (token, line) = (&tokens[i].0, tokens[i].1);
        match token.as_str() {
            "{" => {
                braces += 1;
                i += 1;
            }
            "}" => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
                i += 1;
            }
            "mod" if is_ident(tok(&tokens, i + 1)) && tok(&tokens, i + 2) == "{" => {
                inline_mods.push(braces + 1);
                i += 2;
            }
            "crate" if tok(&tokens, i + 1) == "::" => {
                i = read_root_path(&tokens, i + 2, line, &mut found);
            }
            "super" if i == 0 || tok(&tokens, i - 1) != "::" => {
                let mut supers = 0;
                let mut j = i;
                while tok(&tokens, j) == "super" && tok(&tokens, j + 1) == "::" {
                    supers += 1;
                    j += 2;
                }
                if supers > 0 && supers == depth + inline_mods.len() {
                    i = read_root_path(&tokens, j, line, &mut found);
                } else {
                    i = j.max(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// Reads what follows `crate::` at `i`: a module name or a `{ ... }` group of
/// paths, each starting with one. Returns where to go on.
fn read_root_path(
    tokens: &[(String, usize)],
    i: usize,
    line: usize,
    found: &mut Vec<Use>,
) -> usize {
    let next = tok(tokens, i);
    if is_ident(next) {
        if next != "self" {
            found.push(Use {
                target: next.to_string(),
                line,
            });
        }
        return i + 1;
    }
    if next != "{" {
        return i;
    }
    // A group: the first name of every item at the group's own level.
    let mut depth = 0usize;
    let mut at_item_start = true;
    let mut j = i;
    while j < tokens.len() {
        let (token, token_line) = (&tokens[j].0, tokens[j].1);
        match token.as_str() {
            "{" => {
                depth += 1;
                if depth == 1 {
                    j += 1;
                    continue;
                }
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            "," if depth == 1 => {
                at_item_start = true;
                j += 1;
                continue;
            }
            name if depth == 1 && at_item_start && is_ident(name) && name != "self" => {
                found.push(Use {
                    target: name.to_string(),
                    line: token_line,
                });
            }
            _ => {}
        }
        at_item_start = false;
        j += 1;
    }
    j
}

fn tok(tokens: &[(String, usize)], i: usize) -> &str {
    tokens.get(i).map_or("", |(t, _)| t.as_str())
}

fn is_ident(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters, each with its line.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::from(c);
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    word.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push((word, line));
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push(("::".to_string(), line));
        } else if !c.is_whitespace() {
            out.push((c.to_string(), line));
        }
    }
    out
}

/// `text` with comments and the insides of string and character literals
/// replaced by spaces; line breaks are kept, so lines still count.
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let keep_lines = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(keep_lines(chars[i]));
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"..", r#".."#, br".." : no escapes, ends at `"` and the hashes.
            let open = chars[i..].iter().position(|&c| c == '"').unwrap_or(0) + i;
            out.extend(std::iter::repeat_n(' ', open + 1 - i));
            i = open + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|h| chars.get(i + h) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(keep_lines(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(keep_lines(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The number of `#` when a raw string literal starts at `i`.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    let before_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    if before_is_ident {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some(hashes)
}

/// Whether the `'` at `i` opens a character literal rather than a lifetime.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

fn targets(text: &str, depth: usize) -> Vec<String> {
    crate_uses(text, depth)
        .into_iter()
        .map(|u| u.target)
        .collect()
}

#[test]
fn reads_plain_and_grouped_crate_paths() {
    let text = "use crate::config::Config;\n\
                use crate::{telemetry, upstream::{Endpoint, Lease}, self};\n\
                fn f() { let _ = crate::clock::now_ms(); }\n\
                macro_rules! m { () => { $crate::grpc::OTHER } }\n";
    assert_eq!(
        targets(text, 1),
        ["config", "telemetry", "upstream", "clock", "grpc"]
    );
}

#[test]
fn ignores_comments_strings_and_char_literals() {
    let text = "// use crate::reload;\n\
                /* crate::admin /* nested crate::cli */ crate::demo */\n\
                /// see crate::server\n\
                const A: &str = \"crate::state \\\" crate::audit\";\n\
                const B: &str = r#\"crate::control \"quoted\" \"#;\n\
                const C: char = '\"'; fn g<'a>(x: &'a str) -> &'a str { x }\n\
                use crate::routing;\n";
    let found = crate_uses(text, 1);
    assert_eq!(
        found,
        [Use {
            target: "routing".into(),
            line: 7
        }]
    );
}

#[test]
fn super_counts_only_when_it_reaches_the_crate_root() {
    // In src/upstream/h1.rs (depth 2): `super::super::tls` is the crate's.
    let text = "use super::body::Body;\nuse super::super::tls::client;\n";
    assert_eq!(targets(text, 2), ["tls"]);
    // In src/proxy/mod.rs (depth 1), an inline test module's `super` is
    // `proxy` again, and `super::super` the crate root.
    let text = "use super::snapshot;\n\
                mod tests { use super::Shared; use super::super::config; }\n\
                use super::routing;\n";
    assert_eq!(targets(text, 1), ["snapshot", "config", "routing"]);
}

#[test]
fn files_map_to_their_top_module_and_depth() {
    assert_eq!(
        top_module(Path::new("src/tls/server.rs")).as_deref(),
        Some("tls")
    );
    assert_eq!(
        top_module(Path::new("src/watch.rs")).as_deref(),
        Some("watch")
    );
    assert_eq!(top_module(Path::new("src/lib.rs")), None);
    assert_eq!(module_depth(Path::new("src/watch.rs")), 1);
    assert_eq!(module_depth(Path::new("src/tls/mod.rs")), 1);
    assert_eq!(module_depth(Path::new("src/tls/server.rs")), 2);
    assert_eq!(module_depth(Path::new("src/config/validate/mod.rs")), 2);
}

#[test]
fn the_documented_order_is_read_between_the_markers() {
    let text = "intro `not this`\n<!-- layers -->\n- top: `cli`, `demo`\n- leaves: `clock`\n<!-- /layers -->\n`nor this`";
    assert_eq!(
        documented_order(text),
        Some(vec!["cli".into(), "demo".into(), "clock".into()])
    );
    assert_eq!(documented_order("no markers"), None);
}

/// The graph as it is, for the docs and for whoever changes the order:
/// `cargo test --test layering -- --ignored --nocapture print_graph`.
#[test]
#[ignore = "prints the module graph; run by hand"]
fn print_graph() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&root.join("src")) {
        let relative = file.strip_prefix(root).expect("under the crate root");
        let Some(module) = top_module(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source file");
        let entry = graph.entry(module.clone()).or_default();
        for found in crate_uses(&text, module_depth(relative)) {
            if found.target != module {
                entry.insert(found.target);
            }
        }
    }
    for (module, uses) in graph {
        println!("{module} -> {}", Vec::from_iter(uses).join(", "));
    }
}
