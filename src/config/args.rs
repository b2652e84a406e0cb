//! The command line: every subcommand's flags, with their environment variables and defaults
//! (clap). What they mean together is checked in [`super::validate`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// 0 when it is good, 64 with every problem listed. With --explain, also say what the
    /// policy decides for a token, sandbox and port (asking Daytona about the sandbox).
    CheckConfig(Box<CheckConfigArgs>),
    /// Sign an access token and print a share link for a sandbox.
    Mint(Box<MintArgs>),
    /// Revoke an access token (by jti), every token for a sandbox, or every token of a person (by
    /// sub), through the admin API.
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
    /// Repeatable (or comma-separated) to serve several domains from one deployment.
    #[arg(
        long = "preview-domain",
        env = "DAYTONA_AUTHZ_PREVIEW_DOMAIN",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    pub preview_domains: Vec<String>,
    /// Envoy config file(s) whose routes and virtual hosts set daytona_authz.* context_extensions
    /// (repeatable): read at start-up, in check-config and on SIGHUP, so a typo or a port outside
    /// --port-range fails there instead of answering 500 on that route. Their route names are the
    /// only ones metrics label by name (others count as `other`).
    #[arg(
        long = "envoy-config",
        env = "DAYTONA_AUTHZ_ENVOY_CONFIG",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub envoy_configs: Vec<PathBuf>,
    /// Sandbox ports public hosts may name, e.g. 3000-9999 (Daytona's documented range) or
    /// 80-65535 for a self-hosted Daytona exposing others. Every route's daytona_authz.ports
    /// must lie within it.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_PORT_RANGE",
        default_value = "3000-9999",
        value_name = "FIRST-LAST"
    )]
    pub port_range: String,

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

    /// Single sign-on through Envoy's OAuth2 filter (envoy/envoy-sso.yaml): the filter's cookie
    /// holding the token to verify for a signed-in person: `IdToken` (the ID token, which Envoy
    /// decrypts before the Check) or `BearerToken` (the access token, if the identity provider
    /// issues JWTs). Verified like any token (--jwks-url of the identity provider), under the
    /// same rules as the share-link cookie. Default: no single sign-on.
    #[arg(long, env = "DAYTONA_AUTHZ_SSO_TOKEN_COOKIE", value_name = "NAME")]
    pub sso_token_cookie: Option<String>,
    /// The audience a single-sign-on token must name, and every token decided by the `[[policy]]`
    /// rules (one without a sandbox claim, however it was sent): the OAuth2 filter's client_id
    /// (an ID token's `aud`). Required with --sso-token-cookie, and with `[[policy]]` rules when
    /// tokens come from --jwks-url or --introspection-url.
    #[arg(long, env = "DAYTONA_AUTHZ_SSO_AUDIENCE", value_name = "CLIENT_ID")]
    pub sso_audience: Option<String>,
    /// The cookies of Envoy's OAuth2 filter (repeatable, or comma-separated), `NAME.<suffix>`
    /// included: never passed to the sandbox app, whether or not single sign-on is on. Default:
    /// the filter's default names.
    #[arg(
        long = "sso-cookie",
        env = "DAYTONA_AUTHZ_SSO_COOKIE",
        value_delimiter = ',',
        value_name = "NAME",
        default_values = crate::authz::sso::DEFAULT_COOKIES
    )]
    pub sso_cookies: Vec<String>,

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
    /// Most sandbox ids Daytona does not know (asks in flight included) that one person (a token
    /// the `[[policy]]` rules decide, by its `sub`, else its `jti`) may ask about within
    /// --port-window: past that, a sandbox this replica never saw described is refused with 429
    /// and Retry-After before Daytona is asked.
    /// Bounds the `GET /sandbox/{id}` calls anyone who can sign in can cause (they share the API
    /// key's rate limit); real sandboxes never count.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_MAX_SANDBOXES_PER_PERSON",
        default_value_t = 64,
        value_name = "N"
    )]
    pub max_sandboxes_per_person: usize,
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

    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 (README,
    /// "Tracing"): a span for each Check, continuing Envoy's trace, and one for each Daytona,
    /// JWKS, introspection and Redis call. Off when unset: then no span is ever made.
    #[arg(long, env = "DAYTONA_AUTHZ_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the exported spans carry.
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_OTLP_SERVICE_NAME",
        default_value = "daytona-authz",
        value_name = "NAME"
    )]
    pub otlp_service_name: String,

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

    #[command(flatten)]
    pub app_identity: AppIdentityArgs,

    /// The config file's `[[policy]]` rules (set by the config file's reader, not a flag).
    #[arg(skip)]
    pub policies: Vec<crate::authz::policy::RuleSpec>,
}

/// `check-config`: the `serve` settings, and optionally one decision to explain.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("explained_token").args(["token", "token_file"])))]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Also print what this configuration decides for the token (--token-file or --token) on
    /// port --port of sandbox --sandbox, and which [[policy]] rule allowed it (or came
    /// closest). Fetches the sandbox's description from the configured Daytona API. Exits 0
    /// whenever the configuration is valid.
    #[arg(long, requires_all = ["explained_token", "sandbox", "port"])]
    pub explain: bool,
    /// The access token to explain (a JWT or an opaque token). It shows in `ps` and the shell's
    /// history: prefer --token-file.
    #[arg(long, requires = "explain", value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the access token to explain; `-` reads it from standard input. One
    /// trailing newline is ignored; more than 64 KiB is refused.
    #[arg(long, requires = "explain", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The sandbox (its UUID).
    #[arg(long, requires = "explain", value_name = "ID")]
    pub sandbox: Option<String>,
    /// The sandbox port.
    #[arg(long, requires = "explain", value_name = "PORT")]
    pub port: Option<u16>,
    /// The request's method and path, as the rules see them.
    #[arg(
        long,
        requires = "explain",
        default_value = "GET",
        value_name = "METHOD"
    )]
    pub method: String,
    #[arg(long, requires = "explain", default_value = "/", value_name = "PATH")]
    pub path: String,
}

/// Who the caller is, told to the app and to the audit log.
#[derive(Debug, Args)]
pub struct AppIdentityArgs {
    /// Send the app this claim of the verified token (JWT or introspection) in this request
    /// header (repeatable, or comma-separated): `email=X-User-Email`. Strings as they are,
    /// numbers and booleans as text, arrays joined with `,`; nothing when the token lacks the
    /// claim. Any client-sent copy of every such header is always removed.
    #[arg(
        long = "forward-claim",
        env = "DAYTONA_AUTHZ_FORWARD_CLAIM",
        value_delimiter = ',',
        value_name = "CLAIM=HEADER"
    )]
    pub forward_claims: Vec<String>,
    /// Send the app a short-lived JWT daytona-authz signs (EdDSA or ES256), saying who is
    /// calling (`sub`), for which sandbox and port; its public key is served at
    /// /.well-known/jwks.json on --http-addr.
    #[arg(long, env = "DAYTONA_AUTHZ_ASSERTION")]
    pub assertion: bool,
    /// The header the assertion goes in (default X-Daytona-Authz-Assertion).
    #[arg(long, env = "DAYTONA_AUTHZ_ASSERTION_HEADER", value_name = "NAME")]
    pub assertion_header: Option<String>,
    /// PKCS#8 PEM private key (Ed25519 or P-256) to sign assertions with, so replicas share one
    /// key; read at start-up. Without it each process generates an Ed25519 key when it starts.
    #[arg(long, env = "DAYTONA_AUTHZ_ASSERTION_KEY_FILE", value_name = "PATH")]
    pub assertion_key_file: Option<PathBuf>,
    /// How long an assertion is valid (never past the caller's token's exp).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_ASSERTION_TTL",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub assertion_ttl: String,
    /// Log every decision (allow, deny, answered at the edge) as one JSON line on stderr, with
    /// the token's sub and jti, the sandbox, port, request id and client; never a credential.
    #[arg(long, env = "DAYTONA_AUTHZ_AUDIT_LOG")]
    pub audit_log: bool,
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
    /// Sandbox ports a link may name (as `serve --port-range`).
    #[arg(
        long,
        env = "DAYTONA_AUTHZ_PORT_RANGE",
        default_value = "3000-9999",
        value_name = "FIRST-LAST"
    )]
    pub port_range: String,
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "sandbox", "subject"])))]
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
    /// Revoke every access token whose `sub` claim is this (a person: SSO users, or minted
    /// tokens with a sub), whichever sandboxes they name. Compared exactly: most identity
    /// providers' `sub` is an opaque id, not an email (the audit log's `sub` field shows it).
    #[arg(long, value_name = "SUB")]
    pub subject: Option<String>,
    /// With --sandbox or --subject: lift an earlier revocation instead.
    #[arg(long, conflicts_with = "jti")]
    pub lift: bool,
    #[command(flatten)]
    pub admin: AdminClientArgs,
}

/// `revoke --expires-at`: unix seconds, or an RFC 3339 time such as `2030-01-01T00:00:00Z`.
pub(crate) fn expiry(text: &str) -> Result<u64, String> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}
