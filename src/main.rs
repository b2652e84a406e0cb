#![forbid(unsafe_code)]

/// mimalloc: the Check path makes a few dozen small allocations per request (decoding, header
/// copies, the response), where it costs about 10 % less CPU than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    daytona_authz::cli::run()
}
