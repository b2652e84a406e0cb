fn main() -> std::process::ExitCode {
    daytona_authz::cli::run()
}
