//! `daytona-authz mint`: signs locally with the configured secret, or asks a running
//! daytona-authz's admin API (`--admin-url`) to sign.

use std::fmt::Write;
use std::time::Duration;

use super::CliError;
use crate::authz::token::{self, Signer};
use crate::config::{self, ConfigError, MintArgs};
use crate::identity::mint::{LinkRequest, MintError, Minted, mint_link};

/// Returns what to print.
pub fn mint(args: MintArgs) -> Result<String, CliError> {
    let max_ttl = config::duration(
        "--max-ttl",
        &args.max_ttl,
        Duration::from_secs(1)..=Duration::from_secs(366 * 24 * 3600),
    )?;
    let ttl = config::duration("--ttl", &args.ttl, Duration::from_secs(1)..=max_ttl)?;
    let port_range = config::port_range(&args.port_range)?;
    let request = LinkRequest {
        sandbox: args.sandbox.clone(),
        ports: args.ports.clone(),
        any_port: args.any_port,
        ttl,
        max_ttl,
        base_url: args.base_url.clone(),
        port_range,
    };
    let minted = match &args.admin.admin_url {
        Some(_) => super::admin_client::mint(&args.admin, &request)?,
        None => {
            let jwt = args.jwt.validate()?;
            mint_link(
                &Signer::hs256(jwt.secret.expose().as_bytes()),
                jwt.issuer.as_deref(),
                jwt.audience.as_deref(),
                &request,
                token::now(),
            )
            .map_err(|e| match e {
                MintError::Signing(_) => CliError::Internal(e.to_string()),
                e => CliError::Usage(ConfigError(in_flags(&e))),
            })?
        }
    };
    Ok(render(&minted, ttl))
}

fn render(minted: &Minted, ttl: Duration) -> String {
    let mut out = String::new();
    for link in &minted.links {
        let _ = writeln!(out, "{link}");
    }
    let expires = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(minted.expires_at),
    );
    let _ = writeln!(out, "token: {}", minted.token);
    let _ = writeln!(out, "jti: {}", minted.jti);
    let _ = writeln!(
        out,
        "expires: {expires} (in {})",
        humantime::format_duration(ttl)
    );
    out
}

/// A mint error in the command line's words (its flags).
fn in_flags(error: &MintError) -> String {
    match error {
        MintError::NotASandbox(_) => format!("--sandbox: {error}"),
        MintError::PortOutOfRange(..) => format!("--port: {error} (--port-range)"),
        MintError::TtlOutOfRange { .. } => format!("--ttl: {error}"),
        MintError::NoPorts => "--port: name the ports the link opens (repeat --port), or --any-port for a token that opens every port".into(),
        MintError::PortsAndAnyPort => "--any-port and --port exclude each other".into(),
        MintError::BaseUrlWithoutPort => "--base-url needs at least one --port to build a link".into(),
        MintError::BadBaseUrl { .. } => format!("--base-url: {error}"),
        MintError::BaseUrlNotHttp => "--base-url must be an http(s) URL".into(),
        MintError::Signing(_) => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn run(extra: &[&str]) -> Result<String, CliError> {
        let mut argv = vec![
            "daytona-authz",
            "mint",
            "--jwt-secret",
            SECRET,
            "--sandbox",
            ID,
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Mint(args) => mint(*args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn prints_a_link_whose_token_verifies() {
        let out = run(&[
            "--port",
            "3000",
            "--ttl",
            "15m",
            "--base-url",
            "https://{port}-{id}.preview.example.com",
        ])
        .unwrap();
        let link = out.lines().next().unwrap();
        let prefix = format!("https://3000-{ID}.preview.example.com/?access_token=");
        assert!(link.starts_with(&prefix), "{link}");
        let grant = token::Verifier::hs256(SECRET.as_bytes(), None, None)
            .verify(&link[prefix.len()..], token::now())
            .unwrap();
        assert_eq!(grant.ports, Some(vec![3000]));
        assert!(grant.expires_at <= token::now() + 15 * 60);
        assert!(out.contains("expires: "));
    }

    #[test]
    fn refuses_long_ttls_and_bad_input() {
        assert!(
            run(&["--ttl", "25h"])
                .unwrap_err()
                .to_string()
                .contains("--ttl")
        );
        assert!(run(&["--ttl", "2h", "--max-ttl", "1h"]).is_err());
        assert!(run(&["--port", "80"]).is_err());
        assert!(run(&["--port", "3000", "--base-url", "ftp://x"]).is_err());
        assert!(run(&["--any-port", "--base-url", "https://x"]).is_err());
    }

    /// The token `run` printed, verified.
    fn grant(out: &str) -> std::sync::Arc<token::Grant> {
        let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap();
        token::Verifier::hs256(SECRET.as_bytes(), None, None)
            .verify(token, token::now())
            .unwrap()
    }

    #[test]
    fn a_token_opens_the_ports_asked_for_and_every_port_only_when_asked() {
        let error = run(&[]).unwrap_err().to_string();
        assert!(
            error.contains("--port") && error.contains("--any-port"),
            "{error}"
        );
        assert_eq!(
            grant(&run(&["--port", "3000", "--port", "8080"]).unwrap()).ports,
            Some(vec![3000, 8080])
        );
        assert_eq!(grant(&run(&["--any-port"]).unwrap()).ports, None);
    }
}
