//! `veer run` puts its heap on transparent huge pages by starting itself
//! again, once, with glibc's tunables set (`src/heap.rs`): the real binary,
//! under the PID that was spawned (the re-exec keeps it), the tunables it
//! added read back from its environment and its log (glibc cuts
//! `GLIBC_TUNABLES` at its first tunable in place), the operator's own
//! tunables kept, and the opt-out.

mod support;

use support::binary::VeerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_veer");

const CONFIG: &str = "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
                      admin:\n  address: \"127.0.0.1:0\"\n\
                      services:\n  - name: web\n    versions:\n\
                      \x20     - name: stable\n        revision: \"1\"\n        endpoints: [\"127.0.0.1:9\"]\n        weight: 100\n";

/// The kernel gives huge pages to memory that asks (or to all of it), and
/// the C library is glibc without jemalloc: veer asks for them.
fn asks_for_huge_pages() -> bool {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    cfg!(all(
        target_os = "linux",
        target_env = "gnu",
        not(feature = "jemalloc")
    )) && (thp.contains("[madvise]") || thp.contains("[always]"))
}

/// The tunables the re-exec gave the running process (`VEER_HEAP_TUNED`),
/// `None` when it did not start itself again; checked against its log.
fn tunables_of(veer: &VeerProcess) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{}/environ", veer.pid())).expect("read environ");
    let tuned = environ
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("VEER_HEAP_TUNED="))
        .map(str::to_string);
    let logged = veer.output().contains("heap: on transparent huge pages");
    assert_eq!(logged, tuned.is_some(), "{}", veer.output());
    if let Some(tuned) = &tuned {
        assert!(veer.output().contains(tuned.as_str()), "{}", veer.output());
    }
    tuned
}

#[test]
fn the_heap_asks_for_huge_pages_on_one_arena_under_the_same_pid() {
    let veer = VeerProcess::start_with_env(BIN, CONFIG, &[("GLIBC_TUNABLES", "")]);
    let tunables = tunables_of(&veer);
    if asks_for_huge_pages() {
        assert_eq!(
            tunables.as_deref(),
            Some("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1"),
            "{}",
            veer.output()
        );
    } else {
        assert_eq!(tunables, None, "{}", veer.output());
    }
    // The process that answers is the one spawned: still `veer run`, with
    // its arguments.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", veer.pid())).expect("cmdline");
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    assert_eq!(args.get(1).copied(), Some(&b"run"[..]));
    assert_eq!(args.get(2).copied(), Some(&b"-c"[..]));
}

#[test]
fn the_operators_tunables_are_kept_and_their_own_huge_page_choice_wins() {
    let veer = VeerProcess::start_with_env(
        BIN,
        CONFIG,
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=16")],
    );
    let expected = asks_for_huge_pages()
        .then_some("glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1");
    assert_eq!(tunables_of(&veer).as_deref(), expected);
    drop(veer);

    // The operator chose: veer does not start itself again.
    let chosen = "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=0";
    let veer = VeerProcess::start_with_env(BIN, CONFIG, &[("GLIBC_TUNABLES", chosen)]);
    assert_eq!(tunables_of(&veer), None);
}

#[test]
fn veer_huge_pages_0_keeps_glibcs_defaults() {
    let veer = VeerProcess::start_with_env(
        BIN,
        CONFIG,
        &[("GLIBC_TUNABLES", ""), ("VEER_HUGE_PAGES", "0")],
    );
    assert_eq!(tunables_of(&veer), None);
}
