//! The process entry: parse, validate, run; map problems to exit codes.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command, EXIT_USAGE};

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own message is several lines; keep the first and point at --help.
            let rendered = e.to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("daytona-authz: {first} (see --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match args.validate() {
                Ok(config) => config,
                Err(e) => return usage(&e),
            };
            init_tracing();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("daytona-authz: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "daytona-authz stopped");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Mint(args) => match crate::mint::mint(*args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => usage(&e),
        },
    }
}

fn usage(error: &crate::config::ConfigError) -> ExitCode {
    eprintln!("daytona-authz: {error}");
    ExitCode::from(EXIT_USAGE)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
