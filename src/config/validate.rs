//! Validation: flags, environment, file and secrets checked as a whole into a [`ServeConfig`],
//! every problem collected and said in one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use super::*;
use crate::authz::app_identity::{
    AssertionKey, DEFAULT_ASSERTION_HEADER, ForwardClaim, MAX_FORWARD_CLAIMS, app_header,
};
use crate::authz::host::PortRange;
use crate::authz::policy::{RuleSpec, Rules};
use crate::identity::introspection::UnknownBudget;

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
    pub(crate) fn validate(
        self,
        p: &mut Problems,
    ) -> (Option<IdentityConfig>, Option<SecretSource>) {
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
pub(crate) fn unknown_budget(
    concurrency: usize,
    rate: f64,
    burst: u32,
) -> Result<UnknownBudget, ConfigError> {
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

/// The validated `--forward-claim`, `--assertion*` and `--audit-log` settings.
#[derive(Debug, Clone, Default)]
pub struct AppIdentityConfig {
    pub forward_claims: Vec<ForwardClaim>,
    pub assertion: Option<AssertionConfig>,
    pub audit_log: bool,
}

#[derive(Debug, Clone)]
pub struct AssertionConfig {
    /// Lower-case.
    pub header: String,
    pub key: Arc<AssertionKey>,
    /// Where the key came from; `None`: generated by this process.
    pub key_file: Option<PathBuf>,
    pub ttl: Duration,
}

/// The key of a process without `--assertion-key-file`: generated once, so a configuration
/// validated again (a reload) keeps it, and so do the apps that fetched the JWKS.
static GENERATED_ASSERTION_KEY: std::sync::OnceLock<Arc<AssertionKey>> = std::sync::OnceLock::new();

impl AppIdentityArgs {
    pub(crate) fn validate(self, p: &mut Problems) -> Option<AppIdentityConfig> {
        let mut forward_claims: Vec<ForwardClaim> = Vec::new();
        for text in &self.forward_claims {
            let Some(forward) = p.check(
                ForwardClaim::parse(text).map_err(|e| ConfigError(format!("--forward-claim: {e}"))),
            ) else {
                continue;
            };
            if forward_claims.iter().any(|f| f.header == forward.header) {
                p.0.push(ConfigError(format!(
                    "--forward-claim: two claims for the header {}",
                    forward.header
                )));
            }
            forward_claims.push(forward);
        }
        if forward_claims.len() > MAX_FORWARD_CLAIMS {
            p.0.push(ConfigError(format!(
                "--forward-claim: at most {MAX_FORWARD_CLAIMS}"
            )));
        }
        let ttl = p.check(duration(
            "--assertion-ttl",
            &self.assertion_ttl,
            Duration::from_secs(5)..=Duration::from_secs(3600),
        ));
        let assertion = if self.assertion {
            let header = p.check(
                app_header(
                    self.assertion_header
                        .as_deref()
                        .unwrap_or(DEFAULT_ASSERTION_HEADER),
                    true,
                )
                .map_err(|e| ConfigError(format!("--assertion-header: {e}"))),
            );
            if let Some(header) = &header
                && forward_claims.iter().any(|f| &*f.header == header)
            {
                p.0.push(ConfigError(format!(
                    "--forward-claim: {header} is the --assertion-header"
                )));
            }
            let key = p.check(match &self.assertion_key_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|pem| AssertionKey::from_pem(&pem))
                    .map(Arc::new)
                    .map_err(|e| ConfigError(format!("--assertion-key-file: {e}"))),
                None => match GENERATED_ASSERTION_KEY.get() {
                    Some(key) => Ok(Arc::clone(key)),
                    None => AssertionKey::generate()
                        .map(|key| Arc::clone(GENERATED_ASSERTION_KEY.get_or_init(|| key.into())))
                        .map_err(|e| ConfigError(format!("--assertion: {e}"))),
                },
            });
            (|| {
                Some(Some(AssertionConfig {
                    header: header?,
                    key: key?,
                    key_file: self.assertion_key_file.clone(),
                    ttl: ttl?,
                }))
            })()
        } else {
            if self.assertion_header.is_some() || self.assertion_key_file.is_some() {
                p.0.push(ConfigError(
                    "--assertion-header and --assertion-key-file need --assertion".into(),
                ));
            }
            Some(None)
        };
        Some(AppIdentityConfig {
            forward_claims,
            assertion: assertion?,
            audit_log: self.audit_log,
        })
    }
}

/// An https URL, or http on loopback (a local issuer or a sidecar).
pub(crate) fn fetch_url(flag: &str, text: &str) -> Result<url::Url, ConfigError> {
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

pub(crate) fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// Collects problems so validation can report all of them, not just the first.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<ConfigError>);

impl Problems {
    pub(crate) fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }
}

/// Where and as what spans are exported (`--otlp-endpoint`, `--otlp-service-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// `http(s)://host[:port]`: the collector's OTLP/gRPC endpoint.
    pub endpoint: url::Url,
    pub service_name: String,
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
    /// Lower-case, no trailing dot, no duplicates; never empty.
    pub preview_domains: Vec<String>,
    pub port_range: PortRange,
    /// `--envoy-config`, as given.
    pub envoy_configs: Vec<PathBuf>,
    /// The routes those files set daytona_authz.* keys on, checked.
    pub envoy_routes: Vec<EnvoyRoute>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub cookie_name: String,
    pub login_url: Option<url::Url>,
    pub disable_cors: bool,
    /// Lower-case `scheme://host[:port]`.
    pub cors_allow_origins: Vec<String>,
    /// `--sso-*`: the OAuth2 filter's session.
    pub sso: crate::authz::sso::Sso,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    /// Zero: Daytona's 404/400 answers are not cached.
    pub negative_cache_ttl: Duration,
    pub max_ports_per_sandbox: usize,
    pub max_sandboxes_per_person: usize,
    pub port_window: Duration,
    /// `None`: wait for the Daytona API however long it takes.
    pub ready_grace: Option<Duration>,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    /// `None`: tracing off (no `--otlp-endpoint`).
    pub tracing: Option<TracingConfig>,
    pub admin_addr: SocketAddr,
    pub identity: IdentityConfig,
    /// `--forward-claim`, `--assertion`, `--audit-log`.
    pub app_identity: AppIdentityConfig,
    /// The CAs outbound TLS trusts: the compiled-in roots and `--ca-file`'s.
    pub trust: crate::outbound::trust::TrustRoots,
    /// Where the secrets come from, to read them again on SIGHUP.
    pub secret_sources: SecretSources,
    /// The secrets as read at start-up.
    pub secrets: Secrets,
    /// The config file's `[[policy]]` rules as written, and compiled (`None`: no rules).
    pub policies: Vec<RuleSpec>,
    pub rules: Option<Arc<Rules>>,
}

/// `--max-ports-per-sandbox` at most: every port Daytona exposes (3000-9999).
pub(crate) const MAX_PORTS: usize = 7000;
/// `--worker-threads` at most: far beyond any core count this runs on, low enough to catch a typo.
pub(crate) const MAX_WORKER_THREADS: usize = 256;

impl ServeArgs {
    /// Checks everything, reporting every problem.
    pub fn validate(mut self) -> Result<ServeConfig, ConfigErrors> {
        let mut p = Problems::default();
        let policies = std::mem::take(&mut self.policies);
        let rules = if policies.is_empty() {
            Some(None)
        } else {
            match Rules::compile(&policies) {
                Ok(rules) => Some(Some(Arc::new(rules))),
                Err(problems) => {
                    p.0.extend(problems.into_iter().map(ConfigError));
                    None
                }
            }
        };
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
        let preview_domains = p.check(preview_domains(&self.preview_domains));
        let port_range = p.check(port_range(&self.port_range));
        let envoy_routes = match port_range {
            Some(ports) => match routes(&self.envoy_configs, ports) {
                Ok(found) => Some(found),
                Err(problems) => {
                    p.0.extend(problems);
                    None
                }
            },
            None => None,
        };
        let jwt_issuer = p.check(nonempty("--jwt-issuer", self.jwt.jwt_issuer));
        let jwt_audience = p.check(nonempty("--jwt-audience", self.jwt.jwt_audience));
        let cookie_name = p.check(cookie_name(&self.cookie_name));
        let login_url = p.check(self.login_url.as_deref().map(login_url).transpose());
        let cors_allow_origins: Vec<String> = self
            .cors_allow_origins
            .iter()
            .filter_map(|o| p.check(cors_origin(o)))
            .collect();
        let sso = p.check(sso(
            self.sso_token_cookie.as_deref(),
            self.sso_audience.as_deref(),
            &self.sso_cookies,
        ));
        if let (Some(sso), Some(ours)) = (&sso, &cookie_name)
            && (sso.token_cookie.as_deref() == Some(ours.as_str())
                || sso.cookies.iter().any(|c| c == ours))
        {
            // One cookie read two ways: the session's token would count as a share link's
            // (another audience rule), and our cookie would be stripped as the filter's.
            p.0.push(ConfigError(format!(
                "--cookie-name {ours:?} is also a cookie of the OAuth2 filter (--sso-token-cookie, \
                 --sso-cookie): give them different names"
            )));
        }
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
        let max_sandboxes_per_person = p.check(match self.max_sandboxes_per_person {
            1..=100_000 => Ok(self.max_sandboxes_per_person),
            _ => err("--max-sandboxes-per-person must be within 1-100000"),
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
        let tracing = p.check(tracing_config(
            self.otlp_endpoint.as_deref(),
            &self.otlp_service_name,
        ));

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
        let app_identity = self.app_identity.validate(&mut p);
        let other_sources = identity
            .as_ref()
            .is_some_and(|i| !i.jwks_urls.is_empty() || i.introspection.is_some());
        if !policies.is_empty() && other_sources && self.sso_audience.is_none() {
            // A token without a sandbox claim is decided by the rules: without an audience to
            // require, any token of the identity provider, issued to any of its applications
            // (a wiki's ID token, an access token for another API), would be one.
            p.0.push(ConfigError(
                "[[policy]] with --jwks-url or --introspection-url needs --sso-audience: the \
                 audience (the OAuth2 client_id) every token decided by the rules must name"
                    .into(),
            ));
        }
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
                preview_domains: preview_domains?,
                port_range: port_range?,
                envoy_configs: self.envoy_configs.clone(),
                envoy_routes: envoy_routes?,
                jwt_issuer: jwt_issuer?,
                jwt_audience: jwt_audience?,
                cookie_name: cookie_name?,
                login_url: login_url?,
                disable_cors: self.disable_cors,
                cors_allow_origins,
                sso: sso?,
                cache_ttl: cache_ttl?,
                cache_max_entries: self.cache_max_entries,
                negative_cache_ttl: negative_cache_ttl?,
                max_ports_per_sandbox: max_ports_per_sandbox?,
                max_sandboxes_per_person: max_sandboxes_per_person?,
                port_window: port_window?,
                ready_grace: ready_grace.map(|g| (!g.is_zero()).then_some(g))?,
                drain_timeout: drain_timeout?,
                log_format: log_format?,
                tracing: tracing?,
                admin_addr: admin_addr?,
                identity: identity?,
                app_identity: app_identity?,
                trust: trust?,
                secret_sources: sources?,
                secrets: secrets?,
                policies,
                rules: rules?,
            })
        })();
        match config {
            Some(config) if p.0.is_empty() => Ok(config),
            _ => Err(ConfigErrors(p.0)),
        }
    }
}

pub(crate) fn missing_jwt_secret() -> String {
    "missing access-token key: set --jwt-secret-file, --jwt-secret or DAYTONA_AUTHZ_JWT_SECRET (or --jwks-url / --introspection-url)"
        .into()
}

pub(crate) fn nonempty(flag: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
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

pub(crate) fn socket_addr(flag: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError(format!("{flag}: {text:?} is not an IP:port address")))
}

pub(crate) fn api_url(text: &str) -> Result<url::Url, ConfigError> {
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

/// `--otlp-endpoint` (none: tracing off) and `--otlp-service-name`. The endpoint is a gRPC
/// server's root: `http(s)://host[:port]`, nothing after it, and no credentials in it (headers
/// for a collector that wants them: `OTEL_EXPORTER_OTLP_HEADERS`).
pub(crate) fn tracing_config(
    endpoint: Option<&str>,
    service_name: &str,
) -> Result<Option<TracingConfig>, ConfigError> {
    let Some(text) = endpoint else {
        return Ok(None);
    };
    let bad = |why: &str| {
        err(format!(
            "--otlp-endpoint: {text:?} {why} (an OTLP/gRPC collector, e.g. http://127.0.0.1:4317)"
        ))
    };
    let Ok(url) = url::Url::parse(text) else {
        return bad("is not a URL");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return bad("must be an http:// or https:// URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the text holds them.
        return err("--otlp-endpoint must not carry credentials (OTEL_EXPORTER_OTLP_HEADERS can)");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return bad("must not have a path, query or fragment");
    }
    let service_name = service_name.trim();
    if service_name.is_empty() || service_name.len() > 128 {
        return err("--otlp-service-name must be 1-128 characters");
    }
    Ok(Some(TracingConfig {
        endpoint: url,
        service_name: service_name.to_owned(),
    }))
}

/// A cookie name: an RFC 6265 token of letters, digits, `_` and `-`.
pub(crate) fn cookie_name(text: &str) -> Result<String, ConfigError> {
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

/// The `--sso-*` settings: cookie names as `--cookie-name` takes them, and an audience whenever
/// single sign-on is on (else any ID token of the identity provider, for any of its clients,
/// would open sandboxes).
pub(crate) fn sso(
    token_cookie: Option<&str>,
    audience: Option<&str>,
    cookies: &[String],
) -> Result<crate::authz::sso::Sso, ConfigError> {
    let name = |flag: &str, text: &str| {
        cookie_name(text).map_err(|_| {
            ConfigError(format!(
                "{flag}: {text:?} must be 1-64 letters, digits, '_' or '-'"
            ))
        })
    };
    let cookies = cookies
        .iter()
        .map(|c| name("--sso-cookie", c.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let token_cookie = token_cookie
        .map(|c| name("--sso-token-cookie", c.trim()))
        .transpose()?;
    let audience = match (audience.map(str::trim), &token_cookie) {
        (Some(""), _) => return err("--sso-audience must not be empty"),
        (None, Some(_)) => {
            return err("--sso-token-cookie needs --sso-audience (the OAuth2 filter's client_id)");
        }
        (audience, _) => audience.map(str::to_owned),
    };
    Ok(crate::authz::sso::Sso {
        token_cookie,
        audience,
        cookies,
    })
}

/// An absolute http(s) URL without a fragment; https unless it is on loopback.
/// An origin as browsers send it: `http(s)://host[:port]`, nothing else; lower-cased.
pub(crate) fn cors_origin(text: &str) -> Result<String, ConfigError> {
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

pub(crate) fn login_url(text: &str) -> Result<url::Url, ConfigError> {
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
pub(crate) fn upstream_domain(text: &str) -> Result<String, ConfigError> {
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

/// Every `--preview-domain`, checked, without duplicates; at least one.
pub(crate) fn preview_domains(texts: &[String]) -> Result<Vec<String>, ConfigError> {
    if texts.is_empty() || texts.iter().all(|t| t.trim().is_empty()) {
        return err(
            "missing --preview-domain (or DAYTONA_AUTHZ_PREVIEW_DOMAIN): public hosts are {port}-{sandboxId}.{preview-domain}",
        );
    }
    let mut domains: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for text in texts {
        match preview_domain(text) {
            Ok(domain) if !domains.contains(&domain) => domains.push(domain),
            Ok(_) => {}
            Err(e) => problems.push(e.0),
        }
    }
    if !problems.is_empty() {
        return err(problems.join("; "));
    }
    if domains.len() > MAX_PREVIEW_DOMAINS {
        return err(format!(
            "--preview-domain: {} domains; at most {MAX_PREVIEW_DOMAINS}",
            domains.len()
        ));
    }
    Ok(domains)
}

/// `--port-range`: FIRST-LAST (or one port), FIRST at least 1.
pub fn port_range(text: &str) -> Result<PortRange, ConfigError> {
    PortRange::parse(text).ok_or_else(|| {
        ConfigError(format!(
            "--port-range: {text:?} is not FIRST-LAST ports (e.g. 3000-9999), FIRST at least 1"
        ))
    })
}

/// `--preview-domain` at most: each one is tried for every Check.
pub(crate) const MAX_PREVIEW_DOMAINS: usize = 32;

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
