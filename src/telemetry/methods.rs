//! Per-method figures of one version, bounded: the first `cap` distinct
//! methods a version serves get a window each, every later one (and any
//! path that is not a gRPC method name, `grpc::methods::is_method`) is
//! counted under `other`. A client that invents method names cannot make
//! veer's memory grow.
//!
//! The request path finds its method by scanning the published slots without
//! a lock (a few short comparisons: `cap` is small). The mutex is taken only
//! when a method not yet seen arrives while there is still room, so at most
//! `cap` times per version, plus the rare racer; once full, a flag sends
//! every unknown name to `other` without touching it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::Window;
use crate::grpc::methods::{is_method, OTHER};

pub struct MethodStats {
    name: Box<str>,
    window: Window,
}

impl MethodStats {
    fn new(name: &str, window: Duration) -> MethodStats {
        MethodStats {
            name: name.into(),
            window: Window::new(window),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn window(&self) -> &Window {
        &self.window
    }
}

pub struct MethodTable {
    /// `cap` slots, made when the first method is added: a version that
    /// serves no gRPC (most of a large config) holds none.
    slots: OnceLock<Box<[OnceLock<MethodStats>]>>,
    cap: usize,
    /// Slots `..published` are set.
    published: AtomicUsize,
    full: AtomicBool,
    /// Serializes adding a method (cold: see the module note).
    adding: Mutex<()>,
    /// Made on first use: a version that serves no gRPC keeps no window here.
    other: OnceLock<MethodStats>,
    window: Duration,
}

impl MethodTable {
    /// Room for `cap` named methods, each with a window of `window`.
    pub fn new(cap: usize, window: Duration) -> MethodTable {
        MethodTable {
            slots: OnceLock::new(),
            cap,
            published: AtomicUsize::new(0),
            full: AtomicBool::new(cap == 0),
            adding: Mutex::new(()),
            other: OnceLock::new(),
            window,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The slots made so far (none before the first method).
    #[inline]
    fn slots(&self) -> &[OnceLock<MethodStats>] {
        self.slots.get().map_or(&[], |slots| slots)
    }

    /// The slot `path` is counted under (`cap()`: `other`).
    #[inline]
    pub fn id(&self, path: &str) -> usize {
        let published = self.published.load(Ordering::Acquire);
        if let Some(found) = self.find(path, published) {
            return found;
        }
        if self.full.load(Ordering::Relaxed) || !is_method(path) {
            return self.cap();
        }
        self.add(path)
    }

    /// The stats of a slot from `id`.
    #[inline]
    pub fn stats(&self, id: usize) -> &MethodStats {
        match self.slots().get(id).and_then(OnceLock::get) {
            Some(stats) => stats,
            None => self.other(),
        }
    }

    fn other(&self) -> &MethodStats {
        self.other
            .get_or_init(|| MethodStats::new(OTHER, self.window))
    }

    /// The stats `path` is counted under.
    pub fn get(&self, path: &str) -> &MethodStats {
        self.stats(self.id(path))
    }

    fn find(&self, path: &str, published: usize) -> Option<usize> {
        self.slots()[..published]
            .iter()
            .position(|m| m.get().is_some_and(|m| *m.name == *path))
    }

    #[cold]
    fn add(&self, path: &str) -> usize {
        // A poisoned lock only means another adder panicked; the slots it
        // guards are still consistent (each is set once).
        let _adding = self
            .adding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let published = self.published.load(Ordering::Acquire);
        if let Some(found) = self.find(path, published) {
            return found;
        }
        let slots = self
            .slots
            .get_or_init(|| (0..self.cap).map(|_| OnceLock::new()).collect());
        let Some(slot) = slots.get(published) else {
            self.full.store(true, Ordering::Relaxed);
            return self.cap();
        };
        slot.get_or_init(|| MethodStats::new(path, self.window));
        self.published.store(published + 1, Ordering::Release);
        published
    }

    /// Every method seen, then `other` (once anything was counted there).
    pub fn each(&self, mut f: impl FnMut(&MethodStats)) {
        let published = self.published.load(Ordering::Acquire);
        self.slots()[..published]
            .iter()
            .filter_map(OnceLock::get)
            .for_each(&mut f);
        if let Some(other) = self.other.get() {
            f(other);
        }
    }

    /// Empties the next second of every window ahead of time (the ticker's job).
    pub fn advance(&self, elapsed: Duration) {
        self.each(|m| m.window.advance(elapsed));
    }

    /// Forgets every figure (a resumed version is judged afresh).
    pub fn reset(&self) {
        self.each(|m| m.window.reset());
    }
}

impl std::fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodTable")
            .field("cap", &self.cap())
            .field("published", &self.published.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_methods_get_a_slot_and_the_rest_go_to_other() {
        let table = MethodTable::new(2, WINDOW);
        let find = table.get("/s.S/Find") as *const MethodStats;
        assert_eq!(table.get("/s.S/Find").name(), "/s.S/Find");
        assert_eq!(
            table.get("/s.S/Find") as *const _,
            find,
            "one slot per name"
        );
        assert_eq!(table.get("/s.S/Health").name(), "/s.S/Health");
        assert_eq!(table.get("/s.S/Third").name(), OTHER, "over the cap");
        assert_eq!(table.get("/not a method").name(), OTHER);
        assert_eq!(table.get("/s.S/Find").name(), "/s.S/Find", "still found");
        let mut names = Vec::new();
        table.each(|m| names.push(m.name().to_string()));
        assert_eq!(names, ["/s.S/Find", "/s.S/Health", OTHER]);
    }

    #[test]
    fn a_zero_cap_counts_everything_under_other() {
        let table = MethodTable::new(0, WINDOW);
        assert_eq!(table.get("/s.S/Find").name(), OTHER);
    }

    #[test]
    fn concurrent_first_sightings_make_one_slot_each() {
        let table = std::sync::Arc::new(MethodTable::new(8, WINDOW));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let table = std::sync::Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..16 {
                        let name = format!("/s.S/M{}", i % 10);
                        let got = table.get(&name).name().to_string();
                        assert!(got == name || got == OTHER, "{got}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        let mut names = Vec::new();
        table.each(|m| names.push(m.name().to_string()));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "no method twice: {names:?}");
        assert_eq!(names.len(), 9, "eight methods and other: {names:?}");
    }
}
