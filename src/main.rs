//! The `veer` binary: a thin shell over the library's command line.

// glibc's malloc is the default: veer hands its free pages back after
// start-up and each reload (`heap`), which holds memory as flat as jemalloc
// at 10,000 services without jemalloc's cost on a small config. jemalloc
// stays an opt-in (figures in docs/benchmarks.md, Scale).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    veer::cli::main()
}
