//! Command line and environment: parsed by clap, then validated as a whole into [`ServeConfig`]
//! before anything binds a socket. Every problem is one line and exit code 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// EX_USAGE from sysexits.h: the configuration is wrong.
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "daytona-authz",
    version,
    about = "Envoy ext_authz service that puts private Daytona sandboxes on the web behind access tokens",
    long_about = "Envoy ext_authz service that puts private Daytona sandboxes on the web behind access tokens.\n\n\
Envoy asks `Check` for every request to {port}-{sandboxId}.{preview-domain}; daytona-authz verifies the \
caller's access token (Authorization: Bearer, or ?access_token= in a share link), fetches the sandbox's \
preview token from the Daytona API (cached) and lets Envoy forward the request with X-Daytona-Preview-Token \
set and the caller's credentials removed. Anything else is denied: nothing reaches a sandbox unauthenticated."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz gRPC API (and the admin API when an admin token is set).
    Serve(Box<ServeArgs>),
    /// Sign an access token and print a share link for a sandbox.
    Mint(Box<MintArgs>),
}

/// How access tokens are signed and checked (shared by `serve` and `mint`).
#[derive(Debug, Args)]
pub struct JwtArgs {
    /// HS256 key for access tokens (at least 32 bytes). Prefer --jwt-secret-file: flags show in `ps`.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 key (a trailing newline is ignored).
    #[arg(long, env = "DAYTONA_AUTHZ_JWT_SECRET_FILE", value_name = "PATH")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "DAYTONA_AUTHZ_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "DAYTONA_AUTHZ_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// The previous access-token key, accepted for verification during a rotation (`serve` only).
#[derive(Debug, Args)]
pub struct PreviousSecretArgs {
    /// The previous HS256 key, still accepted while links signed with it are out there: rotate by
    /// moving the current key here and setting a new --jwt-secret; drop it once those links expire.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_JWT_PREVIOUS_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_previous_secret: Option<String>,
    /// File holding the previous HS256 key.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_JWT_PREVIOUS_SECRET_FILE",
        value_name = "PATH"
    )]
    pub jwt_previous_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the gRPC server Envoy calls (ext_authz Check and grpc.health.v1).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_GRPC_ADDR",
        default_value = "127.0.0.1:9191",
        value_name = "ADDR"
    )]
    pub grpc_addr: String,

    /// Root of the Daytona API (self-hosted: http://localhost:3000/api).
    #[arg(
        long,
        env = "DAYTONA_API_URL",
        default_value = "https://app.daytona.io/api",
        value_name = "URL"
    )]
    pub daytona_api_url: String,
    /// Daytona organization API key. Prefer --daytona-api-key-file: flags show in `ps`.
    #[arg(
        long,
        env = "DAYTONA_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub daytona_api_key: Option<String>,
    /// File holding the Daytona API key (a trailing newline is ignored).
    #[arg(long, env = "DAYTONA_API_KEY_FILE", value_name = "PATH")]
    pub daytona_api_key_file: Option<PathBuf>,
    /// Bound on each Daytona API call, connection included (e.g. 5s, 1500ms).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_API_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub daytona_api_timeout: String,

    /// Public hosts are {port}-{sandboxId}.{preview-domain}, e.g. preview.example.com.
    #[arg(long, env = "DAYTONA_AUTHZ_PREVIEW_DOMAIN", value_name = "DOMAIN")]
    pub preview_domain: Option<String>,

    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub jwt_previous: PreviousSecretArgs,

    /// Name of the cookie a share link opened in a browser turns into (host-only, HttpOnly,
    /// SameSite=Lax, Secure over https).
    #[arg(long, env = "DAYTONA_AUTHZ_COOKIE_NAME", default_value = crate::decision::DEFAULT_COOKIE_NAME, value_name = "NAME")]
    pub cookie_name: String,
    /// Send browsers without a valid token here to sign in, with `return_to=<the preview URL>`
    /// (otherwise they get a 401 page).
    #[arg(long, env = "DAYTONA_AUTHZ_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,
    /// Add `X-Daytona-Disable-CORS: true` to forwarded requests, so the app's own CORS headers
    /// apply instead of Daytona's (preflights are still answered at the edge).
    #[arg(long, env = "DAYTONA_AUTHZ_DISABLE_CORS")]
    pub disable_cors: bool,

    /// How long a sandbox's preview token is cached; also how long a token Daytona regenerated
    /// (sandbox restart) can be served stale.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_CACHE_TTL",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub cache_ttl: String,
    /// Most (sandbox, port) preview tokens kept in the cache.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_CACHE_MAX_ENTRIES",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub cache_max_entries: u64,

    /// Address of the admin gRPC API (daytona_authz.admin.v1.Admin); served only with an admin token.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_ADMIN_ADDR",
        default_value = "127.0.0.1:9193",
        value_name = "ADDR"
    )]
    pub admin_addr: String,
    /// Bearer token the admin API requires (at least 32 bytes). Without it the admin API is off.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "DAYTONA_AUTHZ_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// The sandbox the token grants (its UUID).
    #[arg(long, value_name = "ID")]
    pub sandbox: String,
    /// A port the token grants (repeatable); none: every port.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// How long the token is valid (e.g. 15m, 2h).
    #[arg(long, default_value = "15m", value_name = "DURATION")]
    pub ttl: String,
    /// Longest --ttl accepted.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_MAX_TTL",
        default_value = "24h",
        value_name = "DURATION"
    )]
    pub max_ttl: String,
    /// Template of the public preview URL, e.g. https://{port}-{id}.preview.example.com; one link
    /// is printed per --port.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    #[command(flatten)]
    pub jwt: JwtArgs,
}

/// A configuration problem, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// A validated `serve` configuration.
#[derive(Debug)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub daytona_api_url: url::Url,
    pub daytona_api_key: Secret,
    pub daytona_api_timeout: Duration,
    pub preview_domain: String,
    pub jwt: JwtConfig,
    pub jwt_previous_secret: Option<Secret>,
    pub cookie_name: String,
    pub login_url: Option<url::Url>,
    pub disable_cors: bool,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    pub admin: Option<AdminConfig>,
}

#[derive(Debug)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub token: Secret,
}

#[derive(Debug)]
pub struct JwtConfig {
    pub secret: Secret,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// A secret whose `Debug` never shows it.
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

const MIN_SECRET_BYTES: usize = 32;

impl ServeArgs {
    pub fn validate(self) -> Result<ServeConfig, ConfigError> {
        let grpc_addr = socket_addr("--grpc-addr", &self.grpc_addr)?;
        let daytona_api_url = api_url(&self.daytona_api_url)?;
        let daytona_api_key = one_secret(
            ("--daytona-api-key", self.daytona_api_key),
            ("--daytona-api-key-file", self.daytona_api_key_file),
        )?
        .ok_or_else(|| {
            ConfigError(
                "missing Daytona API key: set --daytona-api-key-file, --daytona-api-key or DAYTONA_API_KEY".into(),
            )
        })?;
        if !daytona_api_key.0.bytes().all(|b| b.is_ascii_graphic()) {
            return err("the Daytona API key must be printable ASCII without spaces");
        }
        let daytona_api_timeout = duration(
            "--daytona-api-timeout",
            &self.daytona_api_timeout,
            Duration::from_millis(100)..=Duration::from_secs(60),
        )?;
        let preview_domain = match self.preview_domain {
            Some(domain) => preview_domain(&domain)?,
            None => {
                return err(
                    "missing --preview-domain (or DAYTONA_AUTHZ_PREVIEW_DOMAIN): public hosts are {port}-{sandboxId}.{preview-domain}",
                );
            }
        };
        let jwt = self.jwt.validate()?;
        let jwt_previous_secret = one_secret(
            (
                "--jwt-previous-secret",
                self.jwt_previous.jwt_previous_secret,
            ),
            (
                "--jwt-previous-secret-file",
                self.jwt_previous.jwt_previous_secret_file,
            ),
        )?;
        if jwt_previous_secret
            .as_ref()
            .is_some_and(|s| s.0.len() < MIN_SECRET_BYTES)
        {
            return err(format!(
                "the previous JWT secret must be at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        let cookie_name = cookie_name(&self.cookie_name)?;
        let login_url = self.login_url.as_deref().map(login_url).transpose()?;
        let cache_ttl = duration(
            "--cache-ttl",
            &self.cache_ttl,
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
        )?;
        if self.cache_max_entries == 0 {
            return err("--cache-max-entries must be at least 1");
        }
        let admin = match one_secret(
            ("--admin-token", self.admin_token),
            ("--admin-token-file", self.admin_token_file),
        )? {
            None => None,
            Some(token) if token.0.len() < MIN_SECRET_BYTES => {
                return err(format!(
                    "the admin token must be at least {MIN_SECRET_BYTES} bytes"
                ));
            }
            Some(token) => Some(AdminConfig {
                addr: socket_addr("--admin-addr", &self.admin_addr)?,
                token,
            }),
        };
        Ok(ServeConfig {
            grpc_addr,
            daytona_api_url,
            daytona_api_key,
            daytona_api_timeout,
            preview_domain,
            jwt,
            jwt_previous_secret,
            cookie_name,
            login_url,
            disable_cors: self.disable_cors,
            cache_ttl,
            cache_max_entries: self.cache_max_entries,
            admin,
        })
    }
}

impl JwtArgs {
    pub fn validate(self) -> Result<JwtConfig, ConfigError> {
        let secret = one_secret(
            ("--jwt-secret", self.jwt_secret),
            ("--jwt-secret-file", self.jwt_secret_file),
        )?
        .ok_or_else(|| {
            ConfigError(
                "missing access-token key: set --jwt-secret-file, --jwt-secret or DAYTONA_AUTHZ_JWT_SECRET".into(),
            )
        })?;
        if secret.0.len() < MIN_SECRET_BYTES {
            return err(format!(
                "the JWT secret must be at least {MIN_SECRET_BYTES} bytes (HS256 needs a 256-bit key)"
            ));
        }
        let nonempty = |flag: &str, value: Option<String>| match value {
            Some(v) if v.trim().is_empty() => err(format!("{flag} must not be empty")),
            other => Ok(other),
        };
        Ok(JwtConfig {
            secret,
            issuer: nonempty("--jwt-issuer", self.jwt_issuer)?,
            audience: nonempty("--jwt-audience", self.jwt_audience)?,
        })
    }
}

fn socket_addr(flag: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError(format!("{flag}: {text:?} is not an IP:port address")))
}

fn api_url(text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text)
        .map_err(|e| ConfigError(format!("--daytona-api-url: {text:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return err(format!(
            "--daytona-api-url: {text:?} must be an http(s) URL"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return err("--daytona-api-url must not carry a query, fragment or credentials");
    }
    Ok(url)
}

/// A cookie name: an RFC 6265 token of letters, digits, `_` and `-`.
fn cookie_name(text: &str) -> Result<String, ConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return err(format!(
            "--cookie-name: {text:?} must be 1-64 letters, digits, '_' or '-'"
        ));
    }
    Ok(text.to_owned())
}

/// An absolute http(s) URL without a fragment; https unless it is on loopback.
fn login_url(text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text)
        .map_err(|e| ConfigError(format!("--login-url: {text:?} is not a URL ({e})")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return err(format!("--login-url: {text:?} must be an https URL")),
    }
    if url.fragment().is_some() || !url.username().is_empty() {
        return err("--login-url must not carry a fragment or credentials");
    }
    Ok(url)
}

/// A DNS name of letters, digits and hyphens, lower-cased, without a trailing dot.
pub fn preview_domain(text: &str) -> Result<String, ConfigError> {
    let domain = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if domain.is_empty() || domain.len() > 200 || !domain.split('.').all(label_ok) {
        return err(format!(
            "--preview-domain: {text:?} is not a domain name (e.g. preview.example.com)"
        ));
    }
    Ok(domain)
}

pub fn duration(
    flag: &str,
    text: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let value = humantime::parse_duration(text)
        .map_err(|_| ConfigError(format!("{flag}: {text:?} is not a duration (e.g. 60s, 5m)")))?;
    if !range.contains(&value) {
        return err(format!(
            "{flag}: {text} is outside {} to {}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        ));
    }
    Ok(value)
}

/// A secret given inline or in a file, not both.
fn one_secret(
    inline: (&str, Option<String>),
    file: (&str, Option<PathBuf>),
) -> Result<Option<Secret>, ConfigError> {
    let value = match (inline.1, file.1) {
        (Some(_), Some(_)) => return err(format!("give {} or {}, not both", inline.0, file.0)),
        (Some(value), None) => value,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("{}: cannot read {}: {e}", file.0, path.display())))?,
        (None, None) => return Ok(None),
    };
    let value = value.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return err(format!("{} is empty", inline.0));
    }
    Ok(Some(Secret(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut argv = vec!["daytona-authz", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("clap parses").command {
            Command::Serve(args) => args.validate(),
            Command::Mint(_) => unreachable!(),
        }
    }

    #[test]
    fn browser_settings_are_checked() {
        for (extra, needle) in [
            (["--cookie-name", "bad name"], "--cookie-name"),
            (["--login-url", "javascript:alert(1)"], "--login-url"),
            (["--login-url", "http://login.example.com"], "https"),
            (["--jwt-previous-secret", "short"], "previous JWT secret"),
        ] {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(&extra);
            let error = serve(&args).unwrap_err().to_string();
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
        let mut args = GOOD.to_vec();
        args.extend_from_slice(&[
            "--login-url",
            "https://login.example.com/in",
            "--disable-cors",
        ]);
        let config = serve(&args).unwrap();
        assert_eq!(config.cookie_name, "daytona_authz");
        assert!(config.disable_cors);
        assert_eq!(
            config.login_url.unwrap().as_str(),
            "https://login.example.com/in"
        );
    }

    const GOOD: [&str; 6] = [
        "--daytona-api-key",
        "key",
        "--preview-domain",
        "Preview.Example.com.",
        "--jwt-secret",
        "0123456789abcdef0123456789abcdef",
    ];

    #[test]
    fn a_minimal_configuration_validates_with_defaults() {
        let config = serve(&GOOD).unwrap();
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(config.preview_domain, "preview.example.com");
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.daytona_api_timeout, Duration::from_secs(5));
        assert_eq!(
            config.daytona_api_url.as_str(),
            "https://app.daytona.io/api"
        );
        assert!(config.admin.is_none());
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: [(&[&str], &str); 8] = [
            (&["--grpc-addr", "localhost"], "--grpc-addr"),
            (&["--daytona-api-url", "ftp://x"], "--daytona-api-url"),
            (&["--cache-ttl", "0s"], "--cache-ttl"),
            (&["--cache-ttl", "soon"], "--cache-ttl"),
            (&["--daytona-api-timeout", "2h"], "--daytona-api-timeout"),
            (&["--cache-max-entries", "0"], "--cache-max-entries"),
            (&["--admin-token", "short"], "admin token"),
            (&["--jwt-secret-file", "/nonexistent"], "not both"),
        ];
        for (extra, needle) in cases {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(extra);
            let error = serve(&args).unwrap_err().to_string();
            assert!(error.contains(needle), "{extra:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn missing_required_settings_are_named() {
        let error = serve(&GOOD[2..]).unwrap_err().to_string();
        assert!(error.contains("Daytona API key"), "{error}");
        let error = serve(&[&GOOD[..2], &GOOD[4..]].concat())
            .unwrap_err()
            .to_string();
        assert!(error.contains("--preview-domain"), "{error}");
        let error = serve(&GOOD[..4]).unwrap_err().to_string();
        assert!(error.contains("--jwt-secret"), "{error}");
        let mut short = GOOD.to_vec();
        short[5] = "short";
        assert!(serve(&short).unwrap_err().to_string().contains("32 bytes"));
    }

    #[test]
    fn domains_are_checked() {
        for bad in ["", "-x.com", "a..b", "a_b.com", "x.com/", "*.x.com"] {
            assert!(preview_domain(bad).is_err(), "{bad}");
        }
        assert_eq!(
            preview_domain("preview.localhost").unwrap(),
            "preview.localhost"
        );
    }
}
