#![forbid(unsafe_code)]

// jemalloc rather than glibc's malloc: a warm `Check` costs the same with 100,000 cached
// sandboxes as with one, and the cache takes less memory (Cargo.toml, bench/NOTES.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    daytona_authz::cli::run()
}
