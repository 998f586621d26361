//! The `veer` binary: a thin shell over the library's command line.

// glibc's malloc keeps freed memory in per-thread arenas: at 10,000 services
// the idle heap's RSS is a quarter higher and each reload steps it up;
// jemalloc returns it (figures in docs/benchmarks.md, Scale).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    veer::cli::main()
}
