//! `daytona-authz mint`: sign an access token and print share links.

use std::fmt::Write;

use crate::config::{self, ConfigError, MintArgs};
use crate::host;
use crate::token::{self, Claims, QUERY_PARAMETER, Signer};

/// What `mint` prints: one share link per port (when a base URL is given), the token and its expiry.
pub fn mint(args: MintArgs) -> Result<String, ConfigError> {
    let sandbox = args.sandbox.to_ascii_lowercase();
    if !host::is_uuid(&sandbox) {
        return Err(ConfigError(format!(
            "--sandbox: {:?} is not a sandbox id (a UUID)",
            args.sandbox
        )));
    }
    if let Some(port) = args.ports.iter().find(|p| !host::PORT_RANGE.contains(p)) {
        return Err(ConfigError(format!("--port: {port} is outside 3000-9999")));
    }
    let max_ttl = config::duration(
        "--max-ttl",
        &args.max_ttl,
        std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(366 * 24 * 3600),
    )?;
    let ttl = config::duration(
        "--ttl",
        &args.ttl,
        std::time::Duration::from_secs(1)..=max_ttl,
    )?;
    if args.base_url.is_some() && args.ports.is_empty() {
        return Err(ConfigError(
            "--base-url needs at least one --port to build a link".into(),
        ));
    }
    let jwt = args.jwt.validate()?;
    let exp = token::now() + ttl.as_secs();
    let claims = Claims {
        sandbox_id: sandbox.clone(),
        exp,
        ports: (!args.ports.is_empty()).then(|| args.ports.clone()),
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone(),
    };
    let token = Signer::hs256(jwt.secret.expose().as_bytes())
        .sign(&claims)
        .map_err(|e| ConfigError(format!("cannot sign the token: {e}")))?;

    let mut out = String::new();
    if let Some(base) = &args.base_url {
        for port in &args.ports {
            let link = share_link(base, &sandbox, *port, &token)?;
            let _ = writeln!(out, "{link}");
        }
    }
    let expires = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp),
    );
    let _ = writeln!(out, "token: {token}");
    let _ = writeln!(
        out,
        "expires: {expires} (in {})",
        humantime::format_duration(ttl)
    );
    Ok(out)
}

/// `base` with `{port}` and `{id}` filled in and `access_token` added to its query.
fn share_link(base: &str, sandbox: &str, port: u16, token: &str) -> Result<String, ConfigError> {
    let filled = base
        .replace("{port}", &port.to_string())
        .replace("{id}", sandbox)
        .replace("{sandboxId}", sandbox);
    let mut url = url::Url::parse(&filled)
        .map_err(|e| ConfigError(format!("--base-url: {filled:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError("--base-url must be an http(s) URL".into()));
    }
    url.query_pairs_mut().append_pair(QUERY_PARAMETER, token);
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn run(extra: &[&str]) -> Result<String, ConfigError> {
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
            .verify(&link[prefix.len()..])
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
        assert!(run(&["--base-url", "https://x"]).is_err());
    }
}
