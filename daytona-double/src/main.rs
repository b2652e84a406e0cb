//! `daytona-double`: the Daytona test double (the library, `src/lib.rs`) as a program, for
//! `scripts/demo`, the benchmarks and the container tests. Prints one JSON line to stdout once
//! both listeners are bound (with `--announce-tokens`, a line before it for each preview token
//! issued, and after it as they are issued), logs to stderr, and stops on SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use daytona_double::{
    Options, Ready, SHUTDOWN_GRACE, TlsFiles, parse_domain, parse_loopback_addr, parse_sandbox_id,
};

/// A test double of Daytona's API and preview proxy, for tests and demos. Loopback only.
#[derive(Debug, Parser)]
#[command(name = "daytona-double", version)]
struct Cli {
    /// Address of the API listener (port 0 picks a free port).
    #[arg(
        long,
        env = "DAYTONA_DOUBLE_API_ADDR",
        default_value = "127.0.0.1:3000",
        value_parser = parse_loopback_addr
    )]
    api_addr: SocketAddr,

    /// Address of the preview proxy listener (port 0 picks a free port).
    #[arg(
        long,
        env = "DAYTONA_DOUBLE_PROXY_ADDR",
        default_value = "127.0.0.1:4000",
        value_parser = parse_loopback_addr
    )]
    proxy_addr: SocketAddr,

    /// The one organization API key the API accepts.
    #[arg(
        long,
        env = "DAYTONA_DOUBLE_API_KEY",
        hide_env_values = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    api_key: String,

    /// A sandbox that exists at start (repeatable; a lower-case UUID). Without any, one random
    /// sandbox is created.
    #[arg(
        long = "sandbox",
        value_name = "UUID",
        env = "DAYTONA_DOUBLE_SANDBOX",
        value_delimiter = ',',
        value_parser = parse_sandbox_id
    )]
    sandboxes: Vec<String>,

    /// A label of a sandbox, as `GET /sandbox/{id}` reports it: `UUID:key=value` (repeatable).
    #[arg(long = "label", value_name = "UUID:KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String, String)>,

    /// Domain of preview hosts: `{port}-{sandboxId}.{proxy_domain}`.
    #[arg(
        long,
        env = "DAYTONA_DOUBLE_PROXY_DOMAIN",
        default_value = "proxy.localhost",
        value_parser = parse_domain
    )]
    proxy_domain: String,

    /// Serve the preview proxy over TLS with this PEM certificate chain (leaf first); preview
    /// URLs then are `https://{port}-{sandboxId}.{proxy_domain}:{proxy_port}`.
    #[arg(
        long,
        value_name = "PATH",
        env = "DAYTONA_DOUBLE_PROXY_TLS_CERT",
        requires = "proxy_tls_key"
    )]
    proxy_tls_cert: Option<PathBuf>,

    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `--proxy-tls-cert`.
    #[arg(
        long,
        value_name = "PATH",
        env = "DAYTONA_DOUBLE_PROXY_TLS_KEY",
        requires = "proxy_tls_cert"
    )]
    proxy_tls_key: Option<PathBuf>,

    /// Serve the API over TLS with this PEM certificate chain (leaf first); the API URL then is
    /// `https://{api_addr}/api`.
    #[arg(
        long,
        value_name = "PATH",
        env = "DAYTONA_DOUBLE_API_TLS_CERT",
        requires = "api_tls_key"
    )]
    api_tls_cert: Option<PathBuf>,

    /// The PEM private key of `--api-tls-cert`.
    #[arg(
        long,
        value_name = "PATH",
        env = "DAYTONA_DOUBLE_API_TLS_KEY",
        requires = "api_tls_cert"
    )]
    api_tls_key: Option<PathBuf>,

    /// Benchmarks: every well-formed sandbox id (a lower-case UUID) exists. A sandbox not seen
    /// before gets its random preview token on first use (API, proxy or restart) and keeps it
    /// until restarted, as if it had always been there. Off by default: unknown ids are 404.
    #[arg(long, env = "DAYTONA_DOUBLE_ANY_SANDBOX")]
    any_sandbox: bool,

    /// Tests: print every preview token this double issues on stdout, one JSON line each
    /// (`{"preview_token_issued":"..."}`), so a test suite can check that no log of the system under
    /// test ever contains one.
    #[arg(long, env = "DAYTONA_DOUBLE_ANNOUNCE_TOKENS")]
    announce_tokens: bool,
}

#[tokio::main]
async fn main() -> Result<(), daytona_double::Error> {
    let cli = Cli::parse();
    init_tracing();

    // clap guarantees both or neither.
    let tls_files = |cert: Option<PathBuf>, key: Option<PathBuf>| {
        cert.zip(key).map(|(cert, key)| TlsFiles { cert, key })
    };
    let on_token_issued = cli.announce_tokens.then(|| {
        let hook: daytona_double::TokenHook = Arc::new(|token: &str| {
            println!("{}", serde_json::json!({ "preview_token_issued": token }));
        });
        hook
    });
    let server = daytona_double::start(Options {
        api_addr: cli.api_addr,
        proxy_addr: cli.proxy_addr,
        api_key: cli.api_key,
        sandboxes: cli.sandboxes,
        labels: cli.labels.into_iter().fold(
            std::collections::BTreeMap::new(),
            |mut all: std::collections::BTreeMap<
                String,
                std::collections::BTreeMap<String, String>,
            >,
             (id, key, value)| {
                all.entry(id).or_default().insert(key, value);
                all
            },
        ),
        proxy_domain: cli.proxy_domain,
        proxy_tls: tls_files(cli.proxy_tls_cert, cli.proxy_tls_key),
        api_tls: tls_files(cli.api_tls_cert, cli.api_tls_key),
        any_sandbox: cli.any_sandbox,
        on_token_issued,
    })
    .await?;
    announce_ready(&server.ready)?;

    shutdown_signal().await?;
    server.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// The one line on stdout that tells the caller where everything is.
fn announce_ready(ready: &Ready) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, ready)?;
    writeln!(stdout)?;
    stdout.flush()
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        result = tokio::signal::ctrl_c() => result,
    }
}

/// `--label UUID:key=value`.
fn parse_label(text: &str) -> Result<(String, String, String), String> {
    let (id, pair) = text.split_once(':').ok_or("expected UUID:key=value")?;
    let (key, value) = pair.split_once('=').ok_or("expected UUID:key=value")?;
    if key.is_empty() {
        return Err("the label key is empty".into());
    }
    Ok((parse_sandbox_id(id)?, key.to_owned(), value.to_owned()))
}
