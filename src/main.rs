#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    daytona_authz::cli::run()
}
