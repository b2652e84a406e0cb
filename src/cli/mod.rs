//! The process entry: parse, validate, run; map problems to exit codes. [`mint`] and
//! [`admin_client`] are the commands that sign links and talk to a running server's admin API.

pub mod admin_client;
pub mod mint;
pub mod telemetry;

use std::process::ExitCode;

use crate::config::{self, Command, ConfigError, ConfigErrors, LogFormat};
use crate::identity::revocation::RevocationError;
use crate::outbound::ClientError;
use crate::serve::ServeError;

/// Exit codes (sysexits.h), by the kind of problem that stopped the command. Every error is
/// mapped here and nowhere else.
pub mod exit {
    /// Bad flags, environment, config file or secrets; input a command or the admin API refused.
    pub const USAGE: u8 = 64;
    /// A service the command needs does not answer: the admin API, Redis at start-up.
    pub const UNAVAILABLE: u8 = 69;
    /// A fault of daytona-authz itself (its HTTP client or gRPC server failed).
    pub const SOFTWARE: u8 = 70;
    /// The operating system refused: a port to listen on, the runtime's threads.
    pub const OSERR: u8 = 71;
    /// The local revocation store cannot be opened or created.
    pub const CANTCREAT: u8 = 73;
    /// The admin API refused our credential.
    pub const NOPERM: u8 = 77;
}

/// Why `mint` or `revoke` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Usage(#[from] ConfigError),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the admin API refused: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A fault of daytona-authz itself (the token could not be signed).
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        use tonic::Code;
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Unreachable { .. } => exit::UNAVAILABLE,
            CliError::Refused(status) => match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => exit::NOPERM,
                Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::NotFound
                | Code::AlreadyExists => exit::USAGE,
                _ => exit::SOFTWARE,
            },
            CliError::Runtime(_) => exit::OSERR,
            CliError::Internal(_) => exit::SOFTWARE,
        }
    }
}

/// The exit code of a server that stopped with `error`.
pub fn serve_exit_code(error: &ServeError) -> u8 {
    let client = |e: &ClientError| match e {
        ClientError::Invalid(_) => exit::USAGE,
        ClientError::Build(_) => exit::SOFTWARE,
    };
    match error {
        ServeError::Bind { .. } => exit::OSERR,
        ServeError::Daytona(e) | ServeError::Introspection(e) | ServeError::Jwks(e) => client(e),
        ServeError::RevocationStore(RevocationError::Io(_)) => exit::CANTCREAT,
        ServeError::RevocationStore(RevocationError::Invalid(_)) => exit::USAGE,
        ServeError::RevocationStore(RevocationError::Redis(_) | RevocationError::Unknown) => {
            exit::UNAVAILABLE
        }
        ServeError::Transport(_) => exit::SOFTWARE,
    }
}

pub fn run() -> ExitCode {
    quiet_interpreter_panics();
    let cli = match config::parse() {
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
            return ExitCode::from(exit::USAGE);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match args.validate() {
                Ok(config) => config,
                Err(errors) => return usage(&errors),
            };
            let telemetry =
                match telemetry::init(config.log_format, config.tracing.as_ref(), &config.trust) {
                    Ok(telemetry) => telemetry,
                    Err(e) => {
                        eprintln!("daytona-authz: {e}");
                        return ExitCode::from(match e {
                            telemetry::TelemetryError::Runtime(_) => exit::OSERR,
                            telemetry::TelemetryError::Exporter(_) => exit::USAGE,
                        });
                    }
                };
            let runtime = match runtime(config.worker_threads) {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("daytona-authz: cannot start the runtime: {e}");
                    return ExitCode::from(exit::OSERR);
                }
            };
            let result = runtime.block_on(crate::serve::serve(config));
            // After the drain: the last Checks' spans leave before the process does.
            if let Some(telemetry) = telemetry {
                telemetry.shutdown();
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "daytona-authz stopped");
                    ExitCode::from(serve_exit_code(&e))
                }
            }
        }
        Command::CheckConfig(check) => match explained(*check) {
            (Ok(config), question) => {
                println!(
                    "configuration OK: preview domain {} (ports {}), Daytona API {}, gRPC {}, HTTP {}",
                    config.preview_domains.join(", "),
                    config.port_range,
                    config.daytona_api_url,
                    config.grpc_addr,
                    config.http_addr
                );
                for route in &config.envoy_routes {
                    println!(
                        "route {} ({}): access {}, ports {}, audience {}, login URL {}",
                        route.route.label(),
                        route.location,
                        route.route.access.as_str(),
                        route
                            .route
                            .ports
                            .as_ref()
                            .map_or("any".into(), ToString::to_string),
                        route.route.audience.as_deref().unwrap_or("-"),
                        route.route.login_url.as_ref().map_or("-", url::Url::as_str),
                    );
                }
                if let Some(rules) = &config.rules {
                    for name in rules.names() {
                        println!("policy rule {name:?}: compiled and checked");
                    }
                }
                if let Some(question) = question {
                    return explain(&config, &question);
                }
                ExitCode::SUCCESS
            }
            (Err(errors), _) => usage(&errors),
        },
        Command::Mint(args) => printed(mint::mint(*args)),
        Command::Revoke(args) => {
            let result = admin_client::revoke(&args);
            if let (Ok(_), Some(note)) = (&result, admin_client::subject_hint(&args)) {
                eprintln!("daytona-authz: {note}");
            }
            printed(result)
        }
        Command::Healthcheck(args) => healthcheck(
            &args.http_addr,
            if args.live { "healthz" } else { "readyz" },
        ),
    }
}

/// `check-config`'s configuration, validated, and its `--explain` question if any.
fn explained(
    check: config::CheckConfigArgs,
) -> (
    Result<config::ServeConfig, ConfigErrors>,
    Option<crate::serve::explain::Question>,
) {
    // --token, or the one --token-file holds (clap lets only one of them through).
    let token = match &check.token_file {
        None => Ok(check.token.unwrap_or_default()),
        Some(path) if path.as_os_str() == "-" => {
            read_token(std::io::stdin().lock(), "standard input")
        }
        Some(path) => std::fs::File::open(path)
            .map_err(|e| ConfigError(format!("--token-file: cannot read {}: {e}", path.display())))
            .and_then(|file| read_token(file, &path.display().to_string())),
    };
    let (token, unreadable) = match token {
        Ok(token) => (token, None),
        Err(e) => (String::new(), Some(e)),
    };
    let question = check.explain.then(|| crate::serve::explain::Question {
        token,
        sandbox: check.sandbox.unwrap_or_default(),
        port: check.port.unwrap_or_default(),
        method: check.method,
        path: check.path,
    });
    let config = match (check.serve.validate(), unreadable) {
        (config, None) => config,
        (Ok(_), Some(e)) => Err(ConfigErrors(vec![e])),
        (Err(mut errors), Some(e)) => {
            errors.0.push(e);
            Err(errors)
        }
    };
    (config, question)
}

/// At most this much of `--token-file` is read (a token past 8 KiB is refused unread anyway).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// `--token-file`'s token: all of `source` (at most [`MAX_TOKEN_FILE`] bytes, UTF-8), one
/// trailing newline (`\n` or `\r\n`) removed. `what` names the source in errors; the token itself
/// never appears in one.
fn read_token(source: impl std::io::Read, what: &str) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    source
        .take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError(format!("--token-file: cannot read {what}: {e}")))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(ConfigError(format!(
            "--token-file: {what} is longer than {} KiB; it should hold one token",
            MAX_TOKEN_FILE / 1024
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError(format!("--token-file: {what} is not UTF-8 text")))?;
    let token = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if token.is_empty() {
        return Err(ConfigError(format!("--token-file: {what} is empty")));
    }
    Ok(token.to_owned())
}

/// `check-config --explain`: the decision for one token, sandbox and port. Exits 0 whatever it
/// is (the configuration is valid); 64 only when the question cannot be asked.
fn explain(config: &config::ServeConfig, question: &crate::serve::explain::Question) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("daytona-authz: cannot start the runtime: {e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    match runtime.block_on(crate::serve::explain::explain(config, question)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("daytona-authz: {e}");
            ExitCode::from(exit::USAGE)
        }
    }
}

/// The CEL interpreter may panic on an input it does not support (it has a few `todo!()`s left);
/// the policy catches that and counts the rule as false. The default hook would print the panic's
/// message, which may quote the input (a token's claim): this one logs a warning without it
/// instead, at most once a minute (a token with an odd claim may come with every request), and
/// leaves every other panic to the default hook.
fn quiet_interpreter_panics() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    static SINCE: AtomicU64 = AtomicU64::new(0);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match info.location() {
        Some(at) if at.file().contains("cel-0.") => {
            let missed = SINCE.fetch_add(1, Ordering::Relaxed) + 1;
            let now = crate::authz::token::now();
            let last = LAST_WARNED.load(Ordering::Relaxed);
            if now >= last.saturating_add(60)
                && LAST_WARNED
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                SINCE.store(0, Ordering::Relaxed);
                tracing::warn!(
                    at = %format!("{}:{}", at.file().rsplit('/').next().unwrap_or_default(), at.line()),
                    times = missed,
                    "a policy rule hit a case the CEL interpreter does not support; the rule counts as false"
                );
            }
        }
        _ => default(info),
    }));
}

fn usage(errors: &ConfigErrors) -> ExitCode {
    for error in &errors.0 {
        eprintln!("daytona-authz: {error}");
    }
    ExitCode::from(exit::USAGE)
}

/// A command's output on stdout, or its error on stderr and the exit code for its kind.
fn printed(result: Result<String, CliError>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("daytona-authz: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// GET http://{addr}/{path} with a short timeout: 0 on success, 1 otherwise.
fn healthcheck(addr: &str, path: &str) -> ExitCode {
    let ready = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|runtime| {
            runtime.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(3))
                    .build()
                    .ok()?;
                let response = client
                    .get(format!("http://{addr}/{path}"))
                    .send()
                    .await
                    .ok()?;
                Some(response.status().is_success())
            })
        })
        .unwrap_or(false);
    if ready {
        ExitCode::SUCCESS
    } else {
        eprintln!("daytona-authz: unhealthy (http://{addr}/{path})");
        ExitCode::FAILURE
    }
}

/// One thread: a current-thread runtime, so a Check never hops between threads (a multi-thread
/// runtime's wake-ups and work stealing cost about a quarter of a warm Check's CPU; see
/// BENCHMARKS.md). More: a multi-thread runtime with that many workers. Blocking work (the
/// revocation store's writes) has its own pool either way.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder.enable_all().build()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); no traces ([`telemetry::init`]).
pub fn init_tracing(format: LogFormat) {
    // Without an exporter nothing can fail.
    let _ = telemetry::init(
        format,
        None,
        &crate::outbound::trust::TrustRoots::compiled_in(),
    );
}

/// The logging [`init_tracing`] installs, writing to `writer` (tests).
#[cfg(test)]
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    tracing_subscriber::registry().with(telemetry::log_layers(format, filter, ansi, writer))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::serve::audit;

    /// Everything written, shared.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn audit_lines_are_one_json_object_whatever_the_format_and_level() {
        for format in [LogFormat::Pretty, LogFormat::Json] {
            let buffer = Buffer::default();
            let filter = tracing_subscriber::EnvFilter::new("warn");
            let subscriber = subscriber(format, filter, false, buffer.clone());
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("filtered out by the level");
                tracing::warn!(kept = true, "an ordinary warning");
                crate::serve::audit::Record {
                    decision: "deny",
                    status: Some(401),
                    reason: "invalid_token",
                    detail: Some("token has expired\nsecond line".into()),
                    grant: None,
                    rule: None,
                    target: None,
                    preview_domain: Some("preview.example.com"),
                    route: Some("webhooks"),
                    method: Some("GET"),
                    path: Some("/p?access_token=secret#f"),
                    request_id: "r-1",
                    client: "127.0.0.1",
                }
                .log();
            });
            let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{format:?}: {text}");
            assert!(lines[0].contains("an ordinary warning"), "{text}");
            assert_eq!(lines[0].starts_with('{'), format == LogFormat::Json);
            let audit: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
            assert_eq!(audit["target"], audit::TARGET);
            assert_eq!(audit["decision"], "deny");
            assert_eq!(audit["status"], 401);
            assert_eq!(audit["path"], "/p");
            assert_eq!(audit["detail"], "token has expired\nsecond line");
            assert!(audit.get("sub").is_none());
            assert_eq!(audit["route"], "webhooks");
            assert_eq!(audit["preview_domain"], "preview.example.com");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn a_token_file_is_read_whole_one_trailing_newline_dropped_and_capped() {
        let read = |bytes: &[u8]| read_token(bytes, "token.txt").map_err(|e| e.to_string());
        assert_eq!(read(b"eyJ.a.b").unwrap(), "eyJ.a.b");
        assert_eq!(read(b"eyJ.a.b\n").unwrap(), "eyJ.a.b");
        assert_eq!(read(b"eyJ.a.b\r\n").unwrap(), "eyJ.a.b");
        // Only one newline goes; the rest is the explanation's to judge (it trims).
        assert_eq!(read(b"eyJ.a.b\n\n").unwrap(), "eyJ.a.b\n");
        assert!(read(b"").unwrap_err().contains("token.txt is empty"));
        assert!(read(b"\n").unwrap_err().contains("is empty"));
        let cap = usize::try_from(MAX_TOKEN_FILE).unwrap();
        assert_eq!(read(&vec![b'a'; cap]).unwrap().len(), cap);
        let long = read(&vec![b'a'; cap + 1]).unwrap_err();
        assert!(long.contains("longer than 64 KiB"), "{long}");
        assert!(!long.contains("aaaa"), "{long}");
        let binary = read(b"\xff\xfe").unwrap_err();
        assert!(binary.contains("not UTF-8"), "{binary}");
    }

    #[test]
    fn explain_takes_token_or_token_file_never_both() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            let argv = [
                &["daytona-authz", "check-config", "--explain"][..],
                &["--sandbox", "s", "--port", "3000"],
                extra,
            ]
            .concat();
            match config::Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::CheckConfig(check)) => Ok((check.token, check.token_file)),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse(&["--token", "t"]), Ok((Some("t".into()), None)));
        assert_eq!(parse(&["--token-file", "-"]), Ok((None, Some("-".into()))));
        let both = parse(&["--token", "t", "--token-file", "f"]).unwrap_err();
        assert!(both.contains("cannot be used with"), "{both}");
        let neither = parse(&[]).unwrap_err();
        assert!(neither.contains("required"), "{neither}");
        // --token-file means nothing without --explain.
        let argv = ["daytona-authz", "check-config", "--token-file", "f"];
        assert!(config::Cli::try_parse_from(argv).is_err());
    }
}
