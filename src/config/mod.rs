//! Command line, environment and an optional config file: parsed by clap (flags beat
//! environment variables, which beat the file, which beats the defaults), then validated as a
//! whole into [`ServeConfig`] before anything binds a socket. Problems are one line each and exit
//! code 64 (EX_USAGE); `check-config` lists every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::identity::introspection::UnknownBudget;

#[derive(Debug, Parser)]
#[command(
    name = "daytona-authz",
    version,
    about = "Envoy ext_authz service that puts private Daytona sandboxes on the web behind access tokens",
    long_about = "Envoy ext_authz service that puts private Daytona sandboxes on the web behind access tokens.\n\n\
Envoy asks `Check` for every request to {port}-{sandboxId}.{preview-domain}; daytona-authz verifies the \
caller's access token (Authorization: Bearer, ?access_token= in a share link, or the cookie a link turned \
into), fetches the sandbox's preview token from the Daytona API (cached) and lets Envoy forward the request \
with X-Daytona-Preview-Token set and the caller's credentials removed. Anything else is denied: nothing \
reaches a sandbox unauthenticated."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz gRPC API, health and metrics (and the admin API when an admin
    /// token is set).
    Serve(Box<ServeArgs>),
    /// Validate a `serve` configuration (flags, environment, config file, secrets) and exit:
    /// 0 when it is good, 64 with every problem listed.
    CheckConfig(Box<ServeArgs>),
    /// Sign an access token and print a share link for a sandbox.
    Mint(Box<MintArgs>),
    /// Revoke an access token (by jti) or every token for a sandbox, through the admin API.
    Revoke(Box<RevokeArgs>),
    /// Ask a running daytona-authz whether it is ready (GET /readyz); exit 0 if so, 1 if not.
    /// For container health checks.
    Healthcheck(HealthcheckArgs),
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
    /// File holding the HS256 key (a trailing newline is ignored); re-read on SIGHUP.
    #[arg(long, env = "DAYTONA_AUTHZ_JWT_SECRET_FILE", value_name = "PATH")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "DAYTONA_AUTHZ_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "DAYTONA_AUTHZ_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with the same keys as the flags (e.g. `preview-domain = "preview.example.com"`);
    /// flags and environment variables override it.
    #[arg(long, env = "DAYTONA_AUTHZ_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address of the gRPC server Envoy calls (ext_authz Check and grpc.health.v1).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_GRPC_ADDR",
        default_value = "127.0.0.1:9191",
        value_name = "ADDR"
    )]
    pub grpc_addr: String,
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_HTTP_ADDR",
        default_value = "127.0.0.1:9192",
        value_name = "ADDR"
    )]
    pub http_addr: String,

    /// Root of the Daytona API (self-hosted: http://localhost:3000/api).
    #[arg(
        long,
        env = "DAYTONA_API_URL",
        default_value = "https://app.daytona.io/api",
        value_name = "URL"
    )]
    pub daytona_api_url: String,
    /// PEM bundle of CA certificates trusted, besides the compiled-in roots, by every outbound
    /// TLS connection: the Daytona API, JWKS, introspection and Redis (rediss://). For a
    /// self-hosted Daytona, an issuer or a Redis behind a private CA. Read at start-up.
    #[arg(long, env = "DAYTONA_AUTHZ_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Daytona organization API key. Prefer --daytona-api-key-file: flags show in `ps`.
    #[arg(
        long,
        env = "DAYTONA_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub daytona_api_key: Option<String>,
    /// File holding the Daytona API key (a trailing newline is ignored); re-read on SIGHUP.
    #[arg(long, env = "DAYTONA_API_KEY_FILE", value_name = "PATH")]
    pub daytona_api_key_file: Option<PathBuf>,
    /// Bound on each Daytona look-up, the wait for a call slot and the connection included
    /// (e.g. 5s, 1500ms). Keep it below Envoy's ext_authz timeout (6s in envoy/envoy.yaml).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_API_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub daytona_api_timeout: String,
    /// Most Daytona API calls in flight at once; a Check that cannot get a slot within the API
    /// timeout is answered 503, so a slow Daytona cannot exhaust memory or sockets.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_MAX_CONCURRENT_API_CALLS",
        default_value_t = 64,
        value_name = "N"
    )]
    pub max_concurrent_api_calls: usize,
    /// Threads that serve Checks (and everything else). 1, the default, is one thread with no
    /// hand-offs between threads: the least CPU per Check, and tens of thousands of Checks per
    /// second (BENCHMARKS.md). Raise it when daytona-authz's CPU nears a whole core: the rate of
    /// daytona_authz_runtime_busy_seconds_total over daytona_authz_runtime_workers nears 1.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_WORKER_THREADS",
        default_value_t = 1,
        value_name = "N"
    )]
    pub worker_threads: usize,

    /// Domain Daytona's preview URLs may be under (repeatable); a preview URL for any other
    /// host is refused (502), never forwarded. Default: derived from --daytona-api-url
    /// (app.daytona.io → proxy.daytona.works, proxy.daytona.work; a local API → proxy.localhost;
    /// else proxy.<API host>).
    #[arg(
        long = "upstream-domain",
        env = "DAYTONA_AUTHZ_UPSTREAM_DOMAIN",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    pub upstream_domains: Vec<String>,

    /// Public hosts are {port}-{sandboxId}.{preview-domain}, e.g. preview.example.com.
    #[arg(long, env = "DAYTONA_AUTHZ_PREVIEW_DOMAIN", value_name = "DOMAIN")]
    pub preview_domain: Option<String>,

    #[command(flatten)]
    pub jwt: JwtArgs,
    /// The previous HS256 key, still accepted while links signed with it are out there: rotate by
    /// moving the current key here and setting a new --jwt-secret; drop it once those links expire.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_JWT_PREVIOUS_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_previous_secret: Option<String>,
    /// File holding the previous HS256 key; re-read on SIGHUP.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_JWT_PREVIOUS_SECRET_FILE",
        value_name = "PATH"
    )]
    pub jwt_previous_secret_file: Option<PathBuf>,

    /// Name of the cookie a share link opened in a browser turns into (host-only, HttpOnly,
    /// SameSite=Lax, Secure over https).
    #[arg(long, env = "DAYTONA_AUTHZ_COOKIE_NAME", default_value = crate::authz::decision::DEFAULT_COOKIE_NAME, value_name = "NAME")]
    pub cookie_name: String,
    /// Send browsers without a valid token here to sign in, with `return_to=<the preview URL>`
    /// (otherwise they get a 401 page).
    #[arg(long, env = "DAYTONA_AUTHZ_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,
    /// Add `X-Daytona-Disable-CORS: true` to forwarded requests, so the app's own CORS headers
    /// apply instead of Daytona's; CORS preflights (answered at the edge) are then approved only
    /// for the sandbox's own pages and the --cors-allow-origin origins.
    #[arg(long, env = "DAYTONA_AUTHZ_DISABLE_CORS")]
    pub disable_cors: bool,
    /// Approve CORS preflights at the edge only for this origin (repeatable, or comma-separated:
    /// `https://app.example.com`) and the sandbox's own pages; any other origin gets 403.
    /// Default: every origin (as Daytona's proxy does), or with --disable-cors none but the
    /// sandbox's own pages.
    #[arg(
        long = "cors-allow-origin",
        env = "DAYTONA_AUTHZ_CORS_ALLOW_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub cors_allow_origins: Vec<String>,

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
    /// How long Daytona's "no such sandbox" answers (404, and 400 for an invalid port) are
    /// cached, so a token for a deleted sandbox cannot make every request an API call; 0s: not
    /// cached. Also how long a sandbox created just after such an answer stays unknown (or use
    /// the admin API's InvalidatePreviewToken).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_NEGATIVE_CACHE_TTL",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub negative_cache_ttl: String,
    /// Most distinct ports of one sandbox in use within --port-window: a request for another
    /// port is refused with 429 and Retry-After, before any call to Daytona. Each port is a host
    /// in Envoy's DNS cache (`max_hosts`, shared by every sandbox): see README for sizing.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_MAX_PORTS_PER_SANDBOX",
        default_value_t = 16,
        value_name = "N"
    )]
    pub max_ports_per_sandbox: usize,
    /// How long a port counts for --max-ports-per-sandbox after its last request; keep it at
    /// least Envoy's DNS cache `host_ttl` (5m in envoy/envoy.yaml).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_PORT_WINDOW",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub port_window: String,

    /// Report ready (gRPC health SERVING, /readyz 200) after this long even if the Daytona API
    /// has not answered yet; 0s waits for it however long it takes.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_READY_GRACE",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub ready_grace: String,
    /// On SIGTERM/SIGINT, how long in-flight Checks may take to finish before the process exits.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_DRAIN_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub drain_timeout: String,
    /// Log format: `pretty` (human) or `json` (one object per line). RUST_LOG sets the level.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_LOG_FORMAT",
        default_value = "pretty",
        value_name = "FORMAT"
    )]
    pub log_format: String,

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
    /// File holding the admin token; re-read on SIGHUP.
    #[arg(long, env = "DAYTONA_AUTHZ_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Identity sources beyond the HS256 secret: JWKS, introspection, claim names, revocations.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// JWKS endpoint of an issuer whose tokens are accepted (repeatable; https, or http on
    /// loopback). RS256/384/512, PS256/384/512, ES256/384 and EdDSA keys; the algorithm comes
    /// from the key.
    #[arg(
        long = "jwks-url",
        env = "DAYTONA_AUTHZ_JWKS_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub jwks_urls: Vec<String>,
    /// How often the JWKS are fetched again (also on an unknown `kid`, at most every 10 s).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_JWKS_REFRESH",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub jwks_refresh: String,
    /// Claim naming the sandbox a token opens: a string, or an array meaning "any of these".
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_SANDBOX_CLAIM",
        default_value = "sandbox_id",
        value_name = "CLAIM"
    )]
    pub sandbox_claim: String,
    /// Claim listing the ports a token opens (absent: every port).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_PORTS_CLAIM",
        default_value = "ports",
        value_name = "CLAIM"
    )]
    pub ports_claim: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_CLOCK_SKEW",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub clock_skew: String,
    /// Refuse tokens (JWTs and introspected ones) that expire further ahead than this,
    /// whatever their `exp` says (e.g. `30d`). Default: no limit.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_MAX_TOKEN_LIFETIME",
        value_name = "DURATION"
    )]
    pub max_token_lifetime: Option<String>,
    /// RFC 7662 introspection endpoint for opaque (non-JWT) tokens (https, or http on loopback).
    #[arg(long, env = "DAYTONA_AUTHZ_INTROSPECTION_URL", value_name = "URL")]
    pub introspection_url: Option<String>,
    /// Client id for the introspection endpoint (HTTP Basic).
    #[arg(long, env = "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_ID", value_name = "ID")]
    pub introspection_client_id: Option<String>,
    /// Client secret for the introspection endpoint. Prefer the _FILE form.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub introspection_client_secret: Option<String>,
    /// File holding the introspection client secret; re-read on SIGHUP.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_SECRET_FILE",
        value_name = "PATH"
    )]
    pub introspection_client_secret_file: Option<PathBuf>,
    /// How long an active introspection answer is cached (never past the token's `exp`).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_CACHE_TTL",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub introspection_cache_ttl: String,
    /// How long an inactive answer is cached.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_NEGATIVE_TTL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub introspection_negative_ttl: String,
    /// Most introspection calls at once about tokens never seen active (made-up ones, or a
    /// user's first request), out of 64; past it they get 503 without a call, and tokens seen
    /// active before keep the other slots.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_UNKNOWN_CONCURRENCY",
        default_value_t = 16,
        value_name = "N"
    )]
    pub introspection_unknown_concurrency: usize,
    /// Introspection calls per second (decimals allowed) about tokens never seen active; past it
    /// (and the burst) they get 503 without a call.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_UNKNOWN_RATE",
        default_value_t = 50.0,
        value_name = "PER_SECOND"
    )]
    pub introspection_unknown_rate: f64,
    /// Introspection calls about tokens never seen active allowed at once above the rate.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_INTROSPECTION_UNKNOWN_BURST",
        default_value_t = 100,
        value_name = "N"
    )]
    pub introspection_unknown_burst: u32,
    /// Embedded store of revocations (tokens by jti, sandboxes), kept across restarts.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_REVOCATION_DB",
        default_value = "daytona-authz-revocations.redb",
        value_name = "PATH"
    )]
    pub revocation_db: PathBuf,
    /// Keep revocations in Redis instead, shared by every replica (they agree within a second).
    /// Redis unreachable: tokens whose status cannot be known are refused (503).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,
    /// Prefix of daytona-authz's keys in Redis.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_REDIS_KEY_PREFIX",
        default_value = "daytona-authz:",
        value_name = "PREFIX"
    )]
    pub redis_key_prefix: String,
}

/// The validated identity settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub jwks_urls: Vec<url::Url>,
    pub jwks_refresh: Duration,
    pub sandbox_claim: String,
    pub ports_claim: String,
    pub clock_skew: Duration,
    pub max_token_lifetime: Option<Duration>,
    pub introspection: Option<IntrospectionSettings>,
    pub revocation_db: PathBuf,
    pub redis_url: Option<String>,
    pub redis_key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    pub url: url::Url,
    pub client_id: String,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub unknown: UnknownBudget,
}

impl IdentityArgs {
    fn validate(self, p: &mut Problems) -> (Option<IdentityConfig>, Option<SecretSource>) {
        let jwks_urls: Vec<url::Url> = self
            .jwks_urls
            .iter()
            .filter_map(|u| p.check(fetch_url("--jwks-url", u)))
            .collect();
        let jwks_refresh = p.check(duration(
            "--jwks-refresh",
            &self.jwks_refresh,
            Duration::from_secs(10)..=Duration::from_secs(24 * 3600),
        ));
        let claim = |flag: &str, name: String| {
            if name.is_empty() || name.len() > 64 {
                err(format!("{flag} must be 1-64 characters"))
            } else {
                Ok(name)
            }
        };
        let sandbox_claim = p.check(claim("--sandbox-claim", self.sandbox_claim));
        let ports_claim = p.check(claim("--ports-claim", self.ports_claim));
        let clock_skew = p.check(duration(
            "--clock-skew",
            &self.clock_skew,
            Duration::ZERO..=Duration::from_secs(600),
        ));
        let max_token_lifetime = match &self.max_token_lifetime {
            None => Some(None),
            Some(text) => p
                .check(duration(
                    "--max-token-lifetime",
                    text,
                    Duration::from_secs(60)..=Duration::from_secs(3650 * 86_400),
                ))
                .map(Some),
        };
        let secret = p
            .check(SecretSource::one_of(
                (
                    "--introspection-client-secret",
                    self.introspection_client_secret,
                ),
                (
                    "--introspection-client-secret-file",
                    self.introspection_client_secret_file,
                ),
            ))
            .flatten();
        let cache_ttl = p.check(duration(
            "--introspection-cache-ttl",
            &self.introspection_cache_ttl,
            Duration::from_secs(1)..=Duration::from_secs(3600),
        ));
        let negative_ttl = p.check(duration(
            "--introspection-negative-ttl",
            &self.introspection_negative_ttl,
            Duration::ZERO..=Duration::from_secs(3600),
        ));
        let unknown = p.check(unknown_budget(
            self.introspection_unknown_concurrency,
            self.introspection_unknown_rate,
            self.introspection_unknown_burst,
        ));
        let introspection = match (self.introspection_url, self.introspection_client_id) {
            (None, None) if secret.is_none() => Some(None),
            (Some(url), Some(client_id)) if secret.is_some() && !client_id.is_empty() => p
                .check(fetch_url("--introspection-url", &url))
                .and_then(|url| {
                    Some(Some(IntrospectionSettings {
                        url,
                        client_id,
                        cache_ttl: cache_ttl?,
                        negative_ttl: negative_ttl?,
                        unknown: unknown?,
                    }))
                }),
            _ => {
                p.0.push(ConfigError(
                    "--introspection-url needs --introspection-client-id and a client secret (and they need it)".into(),
                ));
                None
            }
        };
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            p.0.push(ConfigError(
                "--redis-url must be a redis:// or rediss:// URL".into(),
            ));
        }
        if self.redis_url.as_ref().is_some_and(|url| url.contains('#')) {
            p.0.push(ConfigError(
                "--redis-url must not have a #fragment (#insecure would turn off certificate checks)"
                    .into(),
            ));
        }
        let config = (|| {
            Some(IdentityConfig {
                jwks_urls,
                jwks_refresh: jwks_refresh?,
                sandbox_claim: sandbox_claim?,
                ports_claim: ports_claim?,
                clock_skew: clock_skew?,
                max_token_lifetime: max_token_lifetime?,
                introspection: introspection?,
                revocation_db: self.revocation_db,
                redis_url: self.redis_url,
                redis_key_prefix: self.redis_key_prefix,
            })
        })();
        (config, secret)
    }
}

/// The budget of introspection calls about never-seen tokens: at most half the call slots, so
/// tokens seen before always keep the other half.
fn unknown_budget(concurrency: usize, rate: f64, burst: u32) -> Result<UnknownBudget, ConfigError> {
    let most = crate::identity::introspection::MAX_IN_FLIGHT / 2;
    if !(1..=most).contains(&concurrency) {
        return err(format!(
            "--introspection-unknown-concurrency must be within 1-{most}"
        ));
    }
    if !(0.01..=100_000.0).contains(&rate) {
        return err("--introspection-unknown-rate must be within 0.01-100000 (per second)");
    }
    if !(1..=100_000).contains(&burst) {
        return err("--introspection-unknown-burst must be within 1-100000");
    }
    Ok(UnknownBudget {
        concurrency,
        rate,
        burst,
    })
}

/// An https URL, or http on loopback (a local issuer or a sidecar).
fn fetch_url(flag: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text)
        .map_err(|e| ConfigError(format!("{flag}: {text:?} is not a URL ({e})")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => err(format!(
            "{flag}: {text:?} must be an https URL (http only on loopback)"
        )),
    }
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// The sandbox the token grants (its UUID).
    #[arg(long, value_name = "ID")]
    pub sandbox: String,
    /// A port the token grants (repeatable); at least one, unless --any-port.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Grant every port of the sandbox instead of naming them (a token without `ports`).
    #[arg(long, conflicts_with = "ports")]
    pub any_port: bool,
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
    #[command(flatten)]
    pub admin: AdminClientArgs,
}

/// How `mint` and `revoke` reach a running daytona-authz's admin API.
#[derive(Debug, Args)]
pub struct AdminClientArgs {
    /// The admin API of a running daytona-authz, e.g. http://127.0.0.1:9193 (for `mint`: sign
    /// there instead of with a local secret).
    #[arg(long, env = "DAYTONA_AUTHZ_ADMIN_URL", value_name = "URL")]
    pub admin_url: Option<String>,
    /// The admin token. Prefer --admin-token-file.
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

impl AdminClientArgs {
    /// The admin API's URL and token, both required.
    pub fn validate(&self) -> Result<(String, Secret), ConfigError> {
        let url = self.admin_url.clone().ok_or_else(|| {
            ConfigError("missing --admin-url (or DAYTONA_AUTHZ_ADMIN_URL)".into())
        })?;
        let parsed = url::Url::parse(&url)
            .map_err(|e| ConfigError(format!("--admin-url: {url:?} is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return err("--admin-url must be an http(s) URL");
        }
        let token = SecretSource::one_of(
            ("--admin-token", self.admin_token.clone()),
            ("--admin-token-file", self.admin_token_file.clone()),
        )?
        .ok_or_else(|| {
            ConfigError("missing admin token: set --admin-token-file or --admin-token".into())
        })?
        .load(1, "the admin token")?;
        Ok((url, token))
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "sandbox"])))]
pub struct RevokeArgs {
    /// Revoke the access token with this `jti` (printed by `mint`).
    #[arg(long, value_name = "JTI")]
    pub jti: Option<String>,
    /// When that token expires (its `exp`: unix seconds, or RFC 3339 as `mint` prints it), so
    /// the revocation can be forgotten afterwards; must not be in the past. Without it the
    /// revocation is kept for good.
    #[arg(long, requires = "jti", value_name = "TIME", value_parser = expiry)]
    pub expires_at: Option<u64>,
    /// Revoke every access token for this sandbox.
    #[arg(long, value_name = "ID")]
    pub sandbox: Option<String>,
    /// With --sandbox: lift an earlier revocation instead.
    #[arg(long, requires = "sandbox")]
    pub lift: bool,
    #[command(flatten)]
    pub admin: AdminClientArgs,
}

/// `revoke --expires-at`: unix seconds, or an RFC 3339 time such as `2030-01-01T00:00:00Z`.
fn expiry(text: &str) -> Result<u64, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|since| since.as_secs())
        .ok_or_else(|| {
            format!("{text:?} is neither unix seconds nor an RFC 3339 time (2030-01-01T00:00:00Z)")
        })
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The HTTP address daytona-authz serves /readyz on.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_HTTP_ADDR",
        default_value = "127.0.0.1:9192",
        value_name = "ADDR"
    )]
    pub http_addr: String,
    /// Check liveness (/healthz: the process answers) instead of readiness (/readyz).
    #[arg(long)]
    pub live: bool,
}

/// Parses the command line, with a `serve`/`check-config` config file as the lowest-precedence
/// source above the defaults.
pub fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&args)?;
    let file = match matches.subcommand() {
        Some(("serve" | "check-config", sub)) => sub.get_one::<PathBuf>("config").cloned(),
        _ => None,
    };
    let Some(file) = file else {
        return Cli::from_arg_matches(&matches);
    };
    let defaults = file_defaults(&file)
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e.to_string()))?;
    // The file's values become the defaults of `serve` and `check-config`, so flags and
    // environment variables still win.
    let mut command = Cli::command();
    for name in ["serve", "check-config"] {
        command = command.mut_subcommand(name, |mut sub| {
            for (id, value) in &defaults {
                sub = sub.mut_arg(id.as_str(), |arg| arg.default_value(value.clone()));
            }
            sub
        });
    }
    let matches: ArgMatches = command.try_get_matches_from(&args)?;
    Cli::from_arg_matches(&matches)
}

/// Reads a TOML config file into (argument id, value) pairs; unknown keys are errors.
fn file_defaults(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config: cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("--config: {} is not TOML: {e}", path.display())))?;
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .expect("serve exists");
    let mut defaults = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if id == "config" || !serve.get_arguments().any(|a| a.get_id() == id.as_str()) {
            return Err(ConfigError(format!(
                "--config: unknown key {key:?} in {} (keys are the flag names, e.g. preview-domain)",
                path.display()
            )));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError(format!(
                    "--config: {key} must be a string, integer or boolean, not {}",
                    other.type_str()
                )));
            }
        };
        defaults.push((id, value));
    }
    Ok(defaults)
}

/// A configuration problem, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// Collects problems so validation can report all of them, not just the first.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }
}

/// A validated `serve` configuration.
#[derive(Debug)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub daytona_api_url: url::Url,
    pub daytona_api_timeout: Duration,
    pub max_concurrent_api_calls: usize,
    /// 1: a current-thread runtime; more: a multi-thread runtime with that many workers.
    pub worker_threads: usize,
    /// Lower-case; never empty.
    pub upstream_domains: Vec<String>,
    pub preview_domain: String,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub cookie_name: String,
    pub login_url: Option<url::Url>,
    pub disable_cors: bool,
    /// Lower-case `scheme://host[:port]`.
    pub cors_allow_origins: Vec<String>,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    /// Zero: Daytona's 404/400 answers are not cached.
    pub negative_cache_ttl: Duration,
    pub max_ports_per_sandbox: usize,
    pub port_window: Duration,
    /// `None`: wait for the Daytona API however long it takes.
    pub ready_grace: Option<Duration>,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub admin_addr: SocketAddr,
    pub identity: IdentityConfig,
    /// The CAs outbound TLS trusts: the compiled-in roots and `--ca-file`'s.
    pub trust: crate::outbound::trust::TrustRoots,
    /// Where the secrets come from, to read them again on SIGHUP.
    pub secret_sources: SecretSources,
    /// The secrets as read at start-up.
    pub secrets: Secrets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where each secret comes from.
#[derive(Debug, Clone)]
pub struct SecretSources {
    pub daytona_api_key: SecretSource,
    /// `None` when tokens come only from JWKS or introspection.
    pub jwt_secret: Option<SecretSource>,
    pub introspection_client_secret: Option<SecretSource>,
    pub jwt_previous_secret: Option<SecretSource>,
    pub admin_token: Option<SecretSource>,
}

/// The secrets, read and checked.
#[derive(Debug)]
pub struct Secrets {
    pub daytona_api_key: Secret,
    pub jwt_secret: Option<Secret>,
    pub introspection_client_secret: Option<Secret>,
    pub jwt_previous_secret: Option<Secret>,
    pub admin_token: Option<Secret>,
}

/// A secret given inline (flag or environment) or in a file.
#[derive(Clone)]
pub enum SecretSource {
    Inline { flag: &'static str, value: String },
    File { flag: &'static str, path: PathBuf },
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline { flag, .. } => write!(f, "{flag}=<redacted>"),
            SecretSource::File { flag, path } => write!(f, "{flag}={}", path.display()),
        }
    }
}

impl SecretSource {
    /// One of an inline value and a file, or neither; both is a mistake.
    fn one_of(
        inline: (&'static str, Option<String>),
        file: (&'static str, Option<PathBuf>),
    ) -> Result<Option<SecretSource>, ConfigError> {
        match (inline.1, file.1) {
            (Some(_), Some(_)) => err(format!("give {} or {}, not both", inline.0, file.0)),
            (Some(value), None) => Ok(Some(SecretSource::Inline {
                flag: inline.0,
                value,
            })),
            (None, Some(path)) => Ok(Some(SecretSource::File { flag: file.0, path })),
            (None, None) => Ok(None),
        }
    }

    /// Reads the secret (again, for a file) and checks its length.
    pub fn load(&self, min_len: usize, what: &str) -> Result<Secret, ConfigError> {
        let (flag, value) = match self {
            SecretSource::Inline { flag, value } => (*flag, value.clone()),
            SecretSource::File { flag, path } => (
                *flag,
                std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("{flag}: cannot read {}: {e}", path.display()))
                })?,
            ),
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return err(format!("{flag}: {what} is empty"));
        }
        if value.len() < min_len {
            return err(format!("{flag}: {what} must be at least {min_len} bytes"));
        }
        Ok(Secret(value))
    }
}

impl SecretSources {
    /// Reads every secret; used at start-up and on SIGHUP.
    pub fn load(&self) -> Result<Secrets, ConfigErrors> {
        let mut problems = Problems::default();
        let daytona_api_key = problems.check(
            self.daytona_api_key
                .load(1, "the Daytona API key")
                .and_then(api_key),
        );
        let jwt_secret = self
            .jwt_secret
            .as_ref()
            .map(|source| problems.check(source.load(MIN_SECRET_BYTES, "the JWT secret")));
        let introspection_client_secret = self
            .introspection_client_secret
            .as_ref()
            .and_then(|source| problems.check(source.load(1, "the introspection client secret")));
        let jwt_previous_secret = self.jwt_previous_secret.as_ref().and_then(|source| {
            problems.check(source.load(MIN_SECRET_BYTES, "the previous JWT secret"))
        });
        let admin_token = self
            .admin_token
            .as_ref()
            .and_then(|source| problems.check(source.load(MIN_SECRET_BYTES, "the admin token")));
        match (daytona_api_key, jwt_secret) {
            (Some(daytona_api_key), None) if problems.0.is_empty() => Ok(Secrets {
                daytona_api_key,
                jwt_secret: None,
                introspection_client_secret,
                jwt_previous_secret,
                admin_token,
            }),
            (Some(daytona_api_key), Some(Some(jwt_secret))) if problems.0.is_empty() => {
                Ok(Secrets {
                    daytona_api_key,
                    jwt_secret: Some(jwt_secret),
                    introspection_client_secret,
                    jwt_previous_secret,
                    admin_token,
                })
            }
            _ => Err(ConfigErrors(problems.0)),
        }
    }
}

fn api_key(key: Secret) -> Result<Secret, ConfigError> {
    if key.0.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(key)
    } else {
        err("the Daytona API key must be printable ASCII without spaces")
    }
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
/// `--max-ports-per-sandbox` at most: every port Daytona exposes (3000-9999).
const MAX_PORTS: usize = 7000;
/// `--worker-threads` at most: far beyond any core count this runs on, low enough to catch a typo.
const MAX_WORKER_THREADS: usize = 256;

impl ServeArgs {
    /// Checks everything, reporting every problem.
    pub fn validate(self) -> Result<ServeConfig, ConfigErrors> {
        let mut p = Problems::default();
        let grpc_addr = p.check(socket_addr("--grpc-addr", &self.grpc_addr));
        let http_addr = p.check(socket_addr("--http-addr", &self.http_addr));
        let admin_addr = p.check(socket_addr("--admin-addr", &self.admin_addr));
        let daytona_api_url = p.check(api_url(&self.daytona_api_url));
        let trust = p.check(match &self.ca_file {
            None => Ok(crate::outbound::trust::TrustRoots::compiled_in()),
            Some(path) => crate::outbound::trust::TrustRoots::with_ca_file(path)
                .map_err(|e| ConfigError(format!("--ca-file: {e}"))),
        });
        let daytona_api_timeout = p.check(duration(
            "--daytona-api-timeout",
            &self.daytona_api_timeout,
            Duration::from_millis(100)..=Duration::from_secs(60),
        ));
        let max_concurrent_api_calls = p.check(match self.max_concurrent_api_calls {
            1..=10_000 => Ok(self.max_concurrent_api_calls),
            _ => err("--max-concurrent-api-calls must be within 1-10000"),
        });
        let worker_threads = p.check(match self.worker_threads {
            1..=MAX_WORKER_THREADS => Ok(self.worker_threads),
            _ => err(format!(
                "--worker-threads must be within 1-{MAX_WORKER_THREADS}"
            )),
        });
        let upstream_domains: Vec<String> = self
            .upstream_domains
            .iter()
            .filter_map(|d| p.check(upstream_domain(d)))
            .collect();
        let upstream_domains = match (&daytona_api_url, upstream_domains.is_empty()) {
            (Some(api), true) => crate::daytona::default_upstream_domains(api),
            _ => upstream_domains,
        };
        let preview_domain = p.check(match &self.preview_domain {
            Some(domain) => preview_domain(domain),
            None => err(
                "missing --preview-domain (or DAYTONA_AUTHZ_PREVIEW_DOMAIN): public hosts are {port}-{sandboxId}.{preview-domain}",
            ),
        });
        let jwt_issuer = p.check(nonempty("--jwt-issuer", self.jwt.jwt_issuer));
        let jwt_audience = p.check(nonempty("--jwt-audience", self.jwt.jwt_audience));
        let cookie_name = p.check(cookie_name(&self.cookie_name));
        let login_url = p.check(self.login_url.as_deref().map(login_url).transpose());
        let cors_allow_origins: Vec<String> = self
            .cors_allow_origins
            .iter()
            .filter_map(|o| p.check(cors_origin(o)))
            .collect();
        let cache_ttl = p.check(duration(
            "--cache-ttl",
            &self.cache_ttl,
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
        ));
        if self.cache_max_entries == 0 {
            p.0.push(ConfigError("--cache-max-entries must be at least 1".into()));
        }
        let negative_cache_ttl = p.check(duration(
            "--negative-cache-ttl",
            &self.negative_cache_ttl,
            Duration::ZERO..=Duration::from_secs(300),
        ));
        let max_ports_per_sandbox = p.check(match self.max_ports_per_sandbox {
            1..=MAX_PORTS => Ok(self.max_ports_per_sandbox),
            _ => err(format!(
                "--max-ports-per-sandbox must be within 1-{MAX_PORTS}"
            )),
        });
        let port_window = p.check(duration(
            "--port-window",
            &self.port_window,
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
        ));
        let ready_grace = p.check(duration(
            "--ready-grace",
            &self.ready_grace,
            Duration::ZERO..=Duration::from_secs(3600),
        ));
        let drain_timeout = p.check(duration(
            "--drain-timeout",
            &self.drain_timeout,
            Duration::ZERO..=Duration::from_secs(600),
        ));
        let log_format = p.check(match self.log_format.as_str() {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => err(format!("--log-format: {other:?} is not pretty or json")),
        });

        let daytona_api_key = p.check(SecretSource::one_of(
            ("--daytona-api-key", self.daytona_api_key),
            ("--daytona-api-key-file", self.daytona_api_key_file),
        ));
        let jwt_secret = p.check(SecretSource::one_of(
            ("--jwt-secret", self.jwt.jwt_secret),
            ("--jwt-secret-file", self.jwt.jwt_secret_file),
        ));
        let jwt_previous_secret = p
            .check(SecretSource::one_of(
                ("--jwt-previous-secret", self.jwt_previous_secret),
                ("--jwt-previous-secret-file", self.jwt_previous_secret_file),
            ))
            .flatten();
        let admin_token = p
            .check(SecretSource::one_of(
                ("--admin-token", self.admin_token),
                ("--admin-token-file", self.admin_token_file),
            ))
            .flatten();
        let daytona_api_key = match daytona_api_key {
            Some(None) => {
                p.0.push(ConfigError(
                    "missing Daytona API key: set --daytona-api-key-file, --daytona-api-key or DAYTONA_API_KEY".into(),
                ));
                None
            }
            other => other.flatten(),
        };
        let (identity, introspection_client_secret) = self.identity.validate(&mut p);
        let other_sources = identity
            .as_ref()
            .is_some_and(|i| !i.jwks_urls.is_empty() || i.introspection.is_some());
        let jwt_secret = match jwt_secret {
            Some(None) if !other_sources => {
                p.0.push(ConfigError(missing_jwt_secret()));
                None
            }
            Some(source) => Some(source),
            None => None,
        };
        if jwt_secret.as_ref().is_some_and(Option::is_none) && jwt_previous_secret.is_some() {
            p.0.push(ConfigError(
                "--jwt-previous-secret needs a current --jwt-secret".into(),
            ));
        }
        let sources = match (daytona_api_key, jwt_secret) {
            (Some(daytona_api_key), Some(jwt_secret)) => Some(SecretSources {
                daytona_api_key,
                jwt_secret,
                introspection_client_secret,
                jwt_previous_secret,
                admin_token,
            }),
            _ => None,
        };
        let secrets = sources.as_ref().and_then(|sources| match sources.load() {
            Ok(secrets) => Some(secrets),
            Err(errors) => {
                p.0.extend(errors.0);
                None
            }
        });

        let config = (|| {
            Some(ServeConfig {
                grpc_addr: grpc_addr?,
                http_addr: http_addr?,
                daytona_api_url: daytona_api_url?,
                daytona_api_timeout: daytona_api_timeout?,
                max_concurrent_api_calls: max_concurrent_api_calls?,
                worker_threads: worker_threads?,
                upstream_domains,
                preview_domain: preview_domain?,
                jwt_issuer: jwt_issuer?,
                jwt_audience: jwt_audience?,
                cookie_name: cookie_name?,
                login_url: login_url?,
                disable_cors: self.disable_cors,
                cors_allow_origins,
                cache_ttl: cache_ttl?,
                cache_max_entries: self.cache_max_entries,
                negative_cache_ttl: negative_cache_ttl?,
                max_ports_per_sandbox: max_ports_per_sandbox?,
                port_window: port_window?,
                ready_grace: ready_grace.map(|g| (!g.is_zero()).then_some(g))?,
                drain_timeout: drain_timeout?,
                log_format: log_format?,
                admin_addr: admin_addr?,
                identity: identity?,
                trust: trust?,
                secret_sources: sources?,
                secrets: secrets?,
            })
        })();
        match config {
            Some(config) if p.0.is_empty() => Ok(config),
            _ => Err(ConfigErrors(p.0)),
        }
    }
}

fn missing_jwt_secret() -> String {
    "missing access-token key: set --jwt-secret-file, --jwt-secret or DAYTONA_AUTHZ_JWT_SECRET (or --jwks-url / --introspection-url)"
        .into()
}

fn nonempty(flag: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => err(format!("{flag} must not be empty")),
        other => Ok(other),
    }
}

/// The JWT settings `mint` signs with.
#[derive(Debug)]
pub struct JwtConfig {
    pub secret: Secret,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl JwtArgs {
    pub fn validate(self) -> Result<JwtConfig, ConfigError> {
        let secret = SecretSource::one_of(
            ("--jwt-secret", self.jwt_secret),
            ("--jwt-secret-file", self.jwt_secret_file),
        )?
        .ok_or_else(|| ConfigError(missing_jwt_secret()))?
        .load(MIN_SECRET_BYTES, "the JWT secret")?;
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
/// An origin as browsers send it: `http(s)://host[:port]`, nothing else; lower-cased.
fn cors_origin(text: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "--cors-allow-origin: {text:?} is not an origin like https://app.example.com \
             (scheme and host, an optional port, no path)"
        ))
    };
    let url = url::Url::parse(text.trim()).map_err(|_| bad())?;
    let origin = url.origin();
    let plain = matches!(url.scheme(), "http" | "https")
        && origin.is_tuple()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !text.trim().trim_end_matches('/').ends_with(':');
    if !plain {
        return Err(bad());
    }
    Ok(origin.ascii_serialization())
}

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

/// `domain` or `domain:port` (a port other than the scheme's default must be named).
fn upstream_domain(text: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError(format!("--upstream-domain: {text:?} is not domain[:port]"));
    let (domain, port) = match text.rsplit_once(':') {
        Some((domain, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)?;
            (domain, Some(port))
        }
        None => (text, None),
    };
    let domain = preview_domain(domain).map_err(|_| bad())?;
    Ok(match port {
        Some(port) => format!("{domain}:{port}"),
        None => domain,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigErrors> {
        let mut argv = vec!["daytona-authz", "serve"];
        argv.extend_from_slice(args);
        match parse_from(argv).expect("clap parses").command {
            Command::Serve(args) => args.validate(),
            _ => unreachable!(),
        }
    }

    fn first_error(args: &[&str]) -> String {
        serve(args).unwrap_err().0[0].to_string()
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
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:9192");
        assert_eq!(config.preview_domain, "preview.example.com");
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.daytona_api_timeout, Duration::from_secs(5));
        assert_eq!(config.ready_grace, Some(Duration::from_secs(30)));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.identity.max_token_lifetime, None);
        assert_eq!(config.negative_cache_ttl, Duration::from_secs(5));
        assert_eq!(config.max_ports_per_sandbox, 16);
        assert_eq!(config.port_window, Duration::from_secs(300));
        let uncached = serve(&[&GOOD[..], &["--negative-cache-ttl", "0s"]].concat()).unwrap();
        assert_eq!(uncached.negative_cache_ttl, Duration::ZERO);
        let capped = serve(&[&GOOD[..], &["--max-token-lifetime", "30d"]].concat()).unwrap();
        assert_eq!(
            capped.identity.max_token_lifetime,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            config.daytona_api_url.as_str(),
            "https://app.daytona.io/api"
        );
        assert!(config.secrets.admin_token.is_none());
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: [(&[&str], &str); 20] = [
            (&["--grpc-addr", "localhost"], "--grpc-addr"),
            (&["--http-addr", "nowhere"], "--http-addr"),
            (&["--daytona-api-url", "ftp://x"], "--daytona-api-url"),
            (&["--cache-ttl", "0s"], "--cache-ttl"),
            (&["--cache-ttl", "soon"], "--cache-ttl"),
            (&["--daytona-api-timeout", "2h"], "--daytona-api-timeout"),
            (&["--cache-max-entries", "0"], "--cache-max-entries"),
            (&["--admin-token", "short"], "admin token"),
            (&["--jwt-secret-file", "/nonexistent"], "not both"),
            (&["--log-format", "xml"], "--log-format"),
            (
                &["--max-concurrent-api-calls", "0"],
                "--max-concurrent-api-calls",
            ),
            (&["--worker-threads", "0"], "--worker-threads"),
            (&["--worker-threads", "257"], "--worker-threads"),
            (&["--max-token-lifetime", "30s"], "--max-token-lifetime"),
            (&["--max-token-lifetime", "forever"], "--max-token-lifetime"),
            (&["--negative-cache-ttl", "1h"], "--negative-cache-ttl"),
            (&["--max-ports-per-sandbox", "0"], "--max-ports-per-sandbox"),
            (
                &["--max-ports-per-sandbox", "7001"],
                "--max-ports-per-sandbox",
            ),
            (&["--port-window", "0s"], "--port-window"),
            (&["--port-window", "2d"], "--port-window"),
        ];
        for (extra, needle) in cases {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(extra);
            let error = first_error(&args);
            assert!(error.contains(needle), "{extra:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = serve(&[
            "--grpc-addr",
            "x",
            "--cache-ttl",
            "0s",
            "--preview-domain",
            "a..b",
        ])
        .unwrap_err();
        let text = errors.to_string();
        for needle in [
            "--grpc-addr",
            "--cache-ttl",
            "--preview-domain",
            "Daytona API key",
            "--jwt-secret",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert_eq!(errors.0.len(), 5, "{text}");
    }

    #[test]
    fn missing_required_settings_are_named() {
        assert!(first_error(&GOOD[2..]).contains("Daytona API key"));
        assert!(first_error(&[&GOOD[..2], &GOOD[4..]].concat()).contains("--preview-domain"));
        assert!(first_error(&GOOD[..4]).contains("--jwt-secret"));
        let mut short = GOOD.to_vec();
        short[5] = "short";
        assert!(first_error(&short).contains("32 bytes"));
    }

    #[test]
    fn the_budget_of_never_seen_introspected_tokens_is_checked() {
        let introspection = [
            "--introspection-url",
            "http://127.0.0.1:1/introspect",
            "--introspection-client-id",
            "authz",
            "--introspection-client-secret",
            "secret",
        ];
        let with = |extra: &[&str]| serve(&[&GOOD[..], &introspection[..], extra].concat());
        let budget = |config: ServeConfig| config.identity.introspection.unwrap().unknown;
        assert_eq!(budget(with(&[]).unwrap()), UnknownBudget::default());
        assert_eq!(
            budget(
                with(&[
                    "--introspection-unknown-concurrency",
                    "4",
                    "--introspection-unknown-rate",
                    "0.5",
                    "--introspection-unknown-burst",
                    "10",
                ])
                .unwrap()
            ),
            UnknownBudget {
                concurrency: 4,
                rate: 0.5,
                burst: 10,
            }
        );
        for (extra, needle) in [
            (
                ["--introspection-unknown-concurrency", "0"],
                "--introspection-unknown-concurrency",
            ),
            (
                ["--introspection-unknown-concurrency", "33"],
                "--introspection-unknown-concurrency",
            ),
            (
                ["--introspection-unknown-rate", "0"],
                "--introspection-unknown-rate",
            ),
            (
                ["--introspection-unknown-rate", "NaN"],
                "--introspection-unknown-rate",
            ),
            (
                ["--introspection-unknown-burst", "0"],
                "--introspection-unknown-burst",
            ),
        ] {
            let errors = with(&extra).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{extra:?}: {errors}");
            assert!(
                errors.0[0].to_string().contains(needle),
                "{extra:?}: {errors}"
            );
        }
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
            let error = first_error(&args);
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

    #[test]
    fn a_config_file_sits_between_flags_and_defaults() {
        let dir = std::env::temp_dir().join(format!("daytona-authz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("daytona-authz.toml");
        std::fs::write(
            &file,
            "preview-domain = \"from-file.example.com\"\ncache_ttl = \"2m\"\ncache-max-entries = 7\ndisable-cors = true\ndaytona-api-key = \"k\"\njwt-secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let config = serve(&["--config", path, "--cache-ttl", "5s"]).unwrap();
        assert_eq!(config.preview_domain, "from-file.example.com");
        assert_eq!(config.cache_ttl, Duration::from_secs(5), "the flag wins");
        assert_eq!(config.cache_max_entries, 7);
        assert!(config.disable_cors);

        std::fs::write(&file, "no-such-key = 1\n").unwrap();
        let error = parse_from(["daytona-authz", "serve", "--config", path]).unwrap_err();
        assert!(
            error.to_string().contains("unknown key \"no-such-key\""),
            "{error}"
        );
        std::fs::write(&file, "cache-ttl = [1]\n").unwrap();
        assert!(parse_from(["daytona-authz", "serve", "--config", path]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_file_is_read_and_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let config = serve(&[&GOOD[..], &["--ca-file", good.to_str().unwrap()]].concat()).unwrap();
        assert_eq!(config.trust.added(), 1);
        assert_eq!(config.trust.ca_file(), Some(good.as_path()));
        assert_eq!(serve(&GOOD).unwrap().trust.added(), 0);

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, says) in [
            (&empty, "holds no PEM certificate"),
            (&missing, "cannot read"),
        ] {
            let error = first_error(&[&GOOD[..], &["--ca-file", path.to_str().unwrap()]].concat());
            assert!(error.starts_with("--ca-file: "), "{error}");
            assert!(error.contains(says), "{error}");
        }
        let error = first_error(
            &[
                &GOOD[..],
                &["--redis-url", "rediss://:pw@127.0.0.1:6380/#insecure"],
            ]
            .concat(),
        );
        assert!(error.contains("#fragment"), "{error}");
        assert!(serve(&[&GOOD[..], &["--redis-url", "rediss://127.0.0.1:6380/"]].concat()).is_ok());
    }
}
