//! `daytona-authz serve`: wires the validated configuration into running servers (ext_authz +
//! health on gRPC, health/readiness/metrics on HTTP, the admin API), and owns the lifecycle:
//! readiness, SIGHUP secret reloads, SIGTERM/SIGINT drain. The only layer that sees all others:
//! [`grpc`] translates Envoy's `Check`, [`admin`] serves our own API, [`http`] health, readiness
//! and metrics, [`transport`] accepts gRPC connections.

pub mod admin;
pub mod audit;
pub mod authorizer;
pub mod explain;
pub mod grpc;
pub mod http;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use arc_swap::ArcSwapOption;

use crate::authz::app_identity::Assertions;
use crate::authz::decision::Policy;
use crate::authz::host::Hosts;
use crate::authz::port_limit::{PortLimit, SandboxLimit};
use crate::authz::token::Verifier;
use crate::authz::token::{ClaimMapping, Signer};
use crate::config::{Secrets, ServeConfig};
use crate::daytona::{DaytonaApi, PreviewCache};
use crate::identity::introspection::{IntrospectionConfig, Introspector};
use crate::identity::jwks::Jwks;
use crate::identity::mint;
use crate::identity::revocation::RevocationError;
use crate::identity::revocation::Revocations;
use crate::metrics::Metrics;
use crate::outbound::ClientError;
use admin::{AdminService, BearerCheck, MintRules, MintSettings};
use authorizer::{Authorizer, Sources, install_jwks};
use grpc::AuthzService;
use http::{HttpState, Readiness};
use transport::incoming;

/// The gRPC health service name Envoy checks (and `""`, the server as a whole).
pub const HEALTH_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Why the server stopped with an error (after start-up validation passed).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The Daytona API client cannot be set up with this configuration.
    #[error("{0}")]
    Daytona(ClientError),
    #[error("{0}")]
    Introspection(ClientError),
    #[error("{0}")]
    Jwks(ClientError),
    #[error("revocation store: {0}")]
    RevocationStore(RevocationError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Why a SIGHUP reload was refused (the previous configuration and secrets stay in use).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The command line and config file no longer make a valid configuration.
    #[error("{}", .0.replace('\n', "; "))]
    Config(String),
    /// Settings that take a restart changed; nothing was applied.
    #[error(
        "{} cannot change while running (restart daytona-authz for that); nothing was applied",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
    #[error("the admin token cannot be added or removed by a reload")]
    AdminTokenChange,
    #[error("{0}")]
    ApiKey(ClientError),
}

pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_known_routes(route_names(&config));
    if let Some(ca_file) = config.trust.ca_file() {
        tracing::info!(
            ca_file = %ca_file.display(),
            certificates = config.trust.added(),
            "outbound TLS trusts --ca-file besides the compiled-in roots"
        );
    }
    let api = Arc::new(daytona_api(&config, &metrics).map_err(ServeError::Daytona)?);
    let previews = Arc::new(PreviewCache::new(
        Arc::clone(&api),
        config.cache_ttl,
        config.negative_cache_ttl,
        config.cache_max_entries,
        Arc::clone(&metrics),
    ));
    let ports = Arc::new(PortLimit::new(
        config.max_ports_per_sandbox,
        config.port_window,
        config.cache_max_entries,
    ));
    let people = Arc::new(SandboxLimit::new(
        config.max_sandboxes_per_person,
        config.port_window,
        config.cache_max_entries,
    ));
    let identity = Arc::new(identity(&config, &metrics).await?);
    let policy = Arc::new(ArcSwap::from_pointee(policy(&config, &config.secrets)));
    let authz = AuthzService::new(
        Authorizer::new(
            Arc::clone(&policy),
            Arc::clone(&previews),
            ports,
            people,
            identity.sources(),
        ),
        Arc::clone(&metrics),
    );
    let minting = Arc::new(MintSettings {
        signer: ArcSwapOption::from(signer(&config.secrets)),
        rules: ArcSwap::from_pointee(mint_rules(&config)),
        max_ttl: mint::DEFAULT_MAX_TTL,
    });

    // Bind everything before reporting anything: a port in use fails start-up, not later.
    let grpc = bind(config.grpc_addr).await?;
    let http_listener = bind(config.http_addr).await?;
    let admin = match &config.secrets.admin_token {
        Some(token) => Some((
            bind(config.admin_addr).await?,
            BearerCheck::new(token.expose()),
        )),
        None => None,
    };

    let readiness = Arc::new(Readiness::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, &metrics, &readiness, false).await;

    tracing::info!(
        grpc_addr = %local_addr(&grpc),
        http_addr = %local_addr(&http_listener),
        daytona_api_url = %config.daytona_api_url,
        daytona_api_timeout = ?config.daytona_api_timeout,
        max_concurrent_api_calls = config.max_concurrent_api_calls,
        worker_threads = config.worker_threads,
        upstream_domains = ?config.upstream_domains,
        preview_domains = ?config.preview_domains,
        port_range = %config.port_range,
        envoy_routes = config.envoy_routes.len(),
        cache_ttl = ?config.cache_ttl,
        cache_max_entries = config.cache_max_entries,
        negative_cache_ttl = ?config.negative_cache_ttl,
        max_ports_per_sandbox = config.max_ports_per_sandbox,
        max_sandboxes_per_person = config.max_sandboxes_per_person,
        port_window = ?config.port_window,
        jwt_issuer = config.jwt_issuer.as_deref(),
        jwt_audience = config.jwt_audience.as_deref(),
        jwt_previous_secret = config.secrets.jwt_previous_secret.is_some(),
        cookie_name = %config.cookie_name,
        login_url = config.login_url.as_ref().map(|u| u.as_str()),
        disable_cors = config.disable_cors,
        sso_token_cookie = config.sso.token_cookie.as_deref(),
        sso_audience = config.sso.audience.as_deref(),
        ready_grace = ?config.ready_grace,
        drain_timeout = ?config.drain_timeout,
        secrets = ?config.secret_sources,
        jwks_urls = ?config.identity.jwks_urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        sandbox_claim = %config.identity.sandbox_claim,
        ports_claim = %config.identity.ports_claim,
        clock_skew = ?config.identity.clock_skew,
        max_token_lifetime = ?config.identity.max_token_lifetime,
        introspection_url = config.identity.introspection.as_ref().map(|i| i.url.as_str()),
        revocations = identity.revocations.as_ref().map(|r| r.backend()),
        forward_claims = ?config.app_identity.forward_claims.iter().map(|f| format!("{}={}", f.claim, f.header)).collect::<Vec<_>>(),
        audit_log = config.app_identity.audit_log,
        policy_rules = ?config.rules.as_ref().map(|r| r.names().collect::<Vec<_>>()),
        "daytona-authz listening"
    );
    if let Some(assertion) = &config.app_identity.assertion {
        tracing::info!(
            header = %assertion.header,
            alg = assertion.key.algorithm(),
            kid = assertion.key.kid(),
            key = %assertion.key_file.as_ref().map_or_else(
                || "generated at start-up (--assertion-key-file to share one between replicas)".to_owned(),
                |path| path.display().to_string(),
            ),
            ttl = ?assertion.ttl,
            jwks = crate::authz::app_identity::JWKS_PATH,
            "signed assertions on"
        );
    }

    // `stopping`: a signal came, the drain begins. `stopped`: the drain is over.
    let stopping = CancellationToken::new();
    let stopped = CancellationToken::new();

    // HTTP: health, readiness, metrics. Stays up through the drain so probes see "not ready".
    let signing = Arc::clone(&policy);
    let http_app = http::app(HttpState {
        readiness: Arc::clone(&readiness),
        metrics: Arc::clone(&metrics),
        jwks: Arc::new(move || signing.load().assertion.as_ref().map(|a| a.key().jwks())),
    });
    let http_task = tokio::spawn(
        axum::serve(http_listener, http_app)
            .with_graceful_shutdown(stopped.clone().cancelled_owned())
            .into_future(),
    );

    // Admin API.
    let admin_credential = admin.as_ref().map(|(_, check)| check.clone());
    let admin_task = admin.map(|(listener, check)| {
        tracing::info!(admin_addr = %local_addr(&listener), "admin API listening");
        let service = admin::server(
            AdminService::new(
                Arc::clone(&previews),
                identity.revocations.clone(),
                Arc::clone(&minting),
            ),
            check,
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    incoming(listener),
                    stopped.clone().cancelled_owned(),
                ),
        )
    });
    if admin_task.is_none() {
        tracing::info!("admin API off (no --admin-token)");
    }

    // Readiness: Daytona answered once (start-up probe or a real call), or the grace passed.
    if let Some(jwks) = &identity.jwks {
        tokio::spawn(refresh_jwks(
            Arc::clone(jwks),
            Arc::clone(&policy),
            config.identity.jwks_refresh,
            stopping.clone(),
        ));
    }
    if let Some(store) = &identity.revocations {
        tokio::spawn(prune_revocations(Arc::clone(store), stopping.clone()));
    }
    tokio::spawn(sweep_caches(
        Arc::clone(&previews),
        identity.introspector.clone(),
        stopping.clone(),
    ));
    tokio::spawn(become_ready(
        identity.jwks.clone(),
        Arc::clone(&api),
        config.ready_grace,
        health.clone(),
        Arc::clone(&metrics),
        Arc::clone(&readiness),
        stopping.clone(),
    ));

    // SIGHUP: re-read the config file and the secret files; a bad reload keeps the old ones.
    let drain_timeout = config.drain_timeout;
    tokio::spawn(reload_on_hangup(Reloadable {
        config,
        policy: Arc::clone(&policy),
        previews: Arc::clone(&previews),
        api: Arc::clone(&api),
        admin: admin_credential,
        identity: Arc::clone(&identity),
        minting: Arc::clone(&minting),
        metrics: Arc::clone(&metrics),
    }));

    // gRPC: ext_authz + health, drained on SIGTERM/SIGINT within the drain timeout.
    let grpc_server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(authz))
        .serve_with_incoming_shutdown(incoming(grpc), stopping.clone().cancelled_owned());
    tokio::pin!(grpc_server);

    let result = tokio::select! {
        result = &mut grpc_server => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down: not ready, draining in-flight checks");
            set_health(&health, &metrics, &readiness, false).await;
            stopping.cancel();
            match tokio::time::timeout(drain_timeout, &mut grpc_server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("drain timeout passed with checks still in flight; exiting");
                    Ok(())
                }
            }
        }
    };
    stopping.cancel();
    stopped.cancel();
    if let Some(task) = admin_task
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "admin server failed");
    }
    let _ = http_task.await;
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The decision policy for a set of secrets (JWKS keys are installed by their refresh task).
fn policy(config: &ServeConfig, secrets: &Secrets) -> Policy {
    let mut verifier = Verifier::new(config.jwt_issuer.as_deref(), config.jwt_audience.as_deref())
        .with_mapping(ClaimMapping {
            sandbox: config.identity.sandbox_claim.clone(),
            ports: config.identity.ports_claim.clone(),
            forward: config.app_identity.forward_claims.clone(),
        })
        .with_leeway(config.identity.clock_skew.as_secs())
        .with_max_lifetime(config.identity.max_token_lifetime.map(|d| d.as_secs()))
        .with_policy_identities(config.rules.is_some());
    if let Some(current) = &secrets.jwt_secret {
        verifier = verifier.with_hs256(current.expose().as_bytes());
    }
    if let Some(previous) = &secrets.jwt_previous_secret {
        verifier = verifier.with_previous(previous.expose().as_bytes());
    }
    Policy {
        hosts: Hosts {
            domains: config.preview_domains.clone(),
            ports: config.port_range,
        },
        verifier,
        cookie_name: config.cookie_name.clone(),
        login_url: config.login_url.clone(),
        disable_cors: config.disable_cors,
        cors_allow_origins: config.cors_allow_origins.clone(),
        sso: config.sso.clone(),
        introspection: config.identity.introspection.is_some(),
        jwks: !config.identity.jwks_urls.is_empty(),
        assertion: config.app_identity.assertion.as_ref().map(|a| {
            Arc::new(Assertions::new(
                &a.header,
                Arc::clone(&a.key),
                a.ttl.as_secs(),
            ))
        }),
        audit_log: config.app_identity.audit_log,
        rules: config.rules.clone(),
    }
}

fn signer(secrets: &Secrets) -> Option<Arc<Signer>> {
    secrets
        .jwt_secret
        .as_ref()
        .map(|s| Arc::new(Signer::hs256(s.expose().as_bytes())))
}

/// The identity sources that need I/O: introspection, JWKS refreshes, revocations.
#[derive(Default)]
pub struct Identity {
    pub introspector: Option<Arc<Introspector>>,
    pub jwks: Option<Arc<Jwks>>,
    pub revocations: Option<Arc<Revocations>>,
}

impl Identity {
    /// The same sources as the decision sees them.
    fn sources(&self) -> Sources {
        Sources {
            introspection: self.introspector.clone().map(|i| i as _),
            keys: self.jwks.clone().map(|j| j as _),
            revocations: self.revocations.clone().map(|r| r as _),
        }
    }
}

/// Introspection, JWKS and the revocation store, as configured.
async fn identity(config: &ServeConfig, metrics: &Arc<Metrics>) -> Result<Identity, ServeError> {
    let settings = &config.identity;
    let (introspector, jwks) = token_sources(config, metrics)?;
    let revocations = match &settings.redis_url {
        Some(url) => {
            Revocations::connect_redis_trusting(
                url,
                &config.trust,
                &settings.redis_key_prefix,
                metrics.revocation_store_restores(),
            )
            .await
        }
        None => Revocations::open_local(&settings.revocation_db),
    }
    .map_err(ServeError::RevocationStore)?;
    Ok(Identity {
        introspector,
        jwks,
        revocations: Some(Arc::new(revocations)),
    })
}

/// The client of Daytona's API, as configured.
fn daytona_api(config: &ServeConfig, metrics: &Arc<Metrics>) -> Result<DaytonaApi, ClientError> {
    DaytonaApi::new(
        config.daytona_api_url.clone(),
        config.secrets.daytona_api_key.expose(),
        config.daytona_api_timeout,
        config.max_concurrent_api_calls,
        config.upstream_domains.clone(),
        &config.trust,
        Arc::clone(metrics),
    )
}

/// What tells a token's claims besides our HS256 secrets: introspection and the JWKS.
type TokenSources = (Option<Arc<Introspector>>, Option<Arc<Jwks>>);

/// Introspection and the JWKS, as configured (not fetched yet).
fn token_sources(config: &ServeConfig, metrics: &Arc<Metrics>) -> Result<TokenSources, ServeError> {
    let settings = &config.identity;
    let introspector = match (
        &settings.introspection,
        &config.secrets.introspection_client_secret,
    ) {
        (Some(introspection), Some(secret)) => Some(Arc::new(
            Introspector::new_trusting(
                IntrospectionConfig {
                    url: introspection.url.clone(),
                    client_id: introspection.client_id.clone(),
                    client_secret: secret.expose().to_owned(),
                    timeout: config.daytona_api_timeout,
                    positive_ttl: introspection.cache_ttl,
                    negative_ttl: introspection.negative_ttl,
                    max_entries: config.cache_max_entries,
                    unknown: introspection.unknown,
                },
                &config.trust,
                Arc::clone(metrics),
            )
            .map_err(ServeError::Introspection)?,
        )),
        _ => None,
    };
    let jwks = if settings.jwks_urls.is_empty() {
        None
    } else {
        Some(Arc::new(
            Jwks::new(
                settings.jwks_urls.clone(),
                config.daytona_api_timeout,
                JWKS_MIN_REFRESH_INTERVAL,
                &config.trust,
            )
            .map_err(ServeError::Jwks)?,
        ))
    };
    Ok((introspector, jwks))
}

/// Least time between two JWKS fetches caused by unknown `kid`s.
const JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Fetches the JWKS now and then every `interval`, installing the keys into the policy. Until
/// every source has answered once, retries every second.
async fn refresh_jwks(
    jwks: Arc<Jwks>,
    policy: Arc<ArcSwap<Policy>>,
    interval: Duration,
    stopping: CancellationToken,
) {
    loop {
        let errors = jwks.refresh().await;
        for error in &errors {
            tracing::warn!(%error, "JWKS refresh failed; keeping the last good keys");
        }
        install_jwks(&policy, &jwks.keys());
        let wait = if jwks.loaded().await {
            interval
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopping.cancelled() => return,
        }
    }
}

/// Every minute, drops the cached answers whose time has passed, so memory holds only what may
/// still be served.
async fn sweep_caches(
    previews: Arc<PreviewCache<DaytonaApi>>,
    introspector: Option<Arc<Introspector>>,
    stopping: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = stopping.cancelled() => return,
        }
        previews.remove_expired();
        if let Some(introspector) = &introspector {
            introspector.remove_expired();
        }
    }
}

/// Forgets revoked tokens once they would have expired anyway.
async fn prune_revocations(store: Arc<Revocations>, stopping: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
            () = stopping.cancelled() => return,
        }
        if let Err(error) = store.prune_expired(crate::authz::token::now()).await {
            tracing::warn!(%error, "pruning expired revocations failed");
        }
    }
}

async fn set_health(
    health: &HealthReporter,
    metrics: &Metrics,
    readiness: &Readiness,
    ready: bool,
) {
    let status = if ready {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in ["", HEALTH_SERVICE] {
        health.set_service_status(service, status).await;
    }
    readiness.set(ready);
    metrics.set_ready(ready);
}

/// Probes Daytona until it answers (backing off), and reports ready once it has, or once the
/// grace has passed, whichever is first. A real Check's call counts as an answer too.
async fn become_ready(
    jwks: Option<Arc<Jwks>>,
    api: Arc<DaytonaApi>,
    grace: Option<Duration>,
    health: HealthReporter,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stopping: CancellationToken,
) {
    let mut answered = api.answered();
    let probing = async {
        let mut backoff = Duration::from_millis(200);
        loop {
            match api.probe().await {
                Ok(()) => return "Daytona API answered",
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "Daytona API not answering yet")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = answered.wait_for(|a| *a) => return "Daytona API answered",
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    };
    let grace_passed = async {
        match grace {
            Some(grace) => tokio::time::sleep(grace).await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        why = probing => why,
        () = grace_passed => "grace passed before the Daytona API answered",
        () = stopping.cancelled() => return,
    };
    // Token keys loaded: every JWKS source has delivered once (the refresh task keeps trying).
    if let Some(jwks) = &jwks {
        while !jwks.loaded().await {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = stopping.cancelled() => return,
            }
        }
    }
    if stopping.is_cancelled() {
        return;
    }
    set_health(&health, &metrics, &readiness, true).await;
    tracing::info!(why, "ready");
}

/// The names of the routes `--envoy-config` gives settings to.
fn route_names(config: &ServeConfig) -> Vec<String> {
    config
        .envoy_routes
        .iter()
        .filter_map(|r| r.route.name.clone())
        .collect()
}

fn mint_rules(config: &ServeConfig) -> MintRules {
    MintRules {
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        port_range: config.port_range,
    }
}

/// Everything a SIGHUP reload touches.
struct Reloadable {
    /// The configuration in use: the one start-up validated, or the last reload applied.
    config: ServeConfig,
    policy: Arc<ArcSwap<Policy>>,
    previews: Arc<PreviewCache<DaytonaApi>>,
    api: Arc<DaytonaApi>,
    admin: Option<BearerCheck>,
    identity: Arc<Identity>,
    minting: Arc<MintSettings>,
    metrics: Arc<Metrics>,
}

/// On SIGHUP, reads the command line's config file and every secret again (files may have been
/// rotated) and swaps them in; when any of them is unreadable or invalid, or a setting changed
/// that needs a restart, logs why and keeps serving with the old ones.
async fn reload_on_hangup(mut state: Reloadable) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; secrets will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            // Files are read and parsed off the runtime: a Check must not wait for them.
            let reread = tokio::task::spawn_blocking(reread_config)
                .await
                .unwrap_or_else(|e| Err(ReloadError::Config(format!("reading the config: {e}"))));
            match reread.and_then(|config| reload(&mut state, config)) {
                Ok(changed) => {
                    state.metrics.secret_reload("ok");
                    tracing::info!(
                        changed = %if changed.is_empty() { "-".to_owned() } else { changed.join(", ") },
                        "configuration and secrets reloaded"
                    );
                }
                Err(problems) => {
                    state.metrics.secret_reload("error");
                    tracing::error!(
                        %problems,
                        "reload failed; keeping the previous configuration and secrets"
                    );
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// The configuration as the command line, the environment and the config file say now.
fn reread_config() -> Result<ServeConfig, ReloadError> {
    let cli = crate::config::parse().map_err(|e| ReloadError::Config(e.to_string()))?;
    match cli.command {
        crate::config::Command::Serve(args) => args
            .validate()
            .map_err(|errors| ReloadError::Config(errors.to_string())),
        _ => Err(ReloadError::Config("not serving".into())),
    }
}

/// Settings a reload cannot apply: what listens where, what the caches and clients were built
/// with, where identity comes from. Everything else (the policy: preview domains, port range,
/// issuer, audience, claim names, clock skew, token lifetime, cookie, sign-in URL, CORS; the
/// cache TTLs; the secrets and where they come from) is applied live.
fn needs_restart(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! restart_only {
        ($($flag:literal => $($field:ident).+),* $(,)?) => {
            $(if old.$($field).+ != new.$($field).+ { changed.push($flag); })*
        };
    }
    restart_only! {
        "--grpc-addr" => grpc_addr,
        "--http-addr" => http_addr,
        "--admin-addr" => admin_addr,
        "--daytona-api-url" => daytona_api_url,
        "--daytona-api-timeout" => daytona_api_timeout,
        "--max-concurrent-api-calls" => max_concurrent_api_calls,
        "--worker-threads" => worker_threads,
        "--upstream-domain" => upstream_domains,
        "--cache-max-entries" => cache_max_entries,
        "--max-ports-per-sandbox" => max_ports_per_sandbox,
        "--max-sandboxes-per-person" => max_sandboxes_per_person,
        "--port-window" => port_window,
        "--ready-grace" => ready_grace,
        "--drain-timeout" => drain_timeout,
        "--log-format" => log_format,
        "--jwks-url" => identity.jwks_urls,
        "--jwks-refresh" => identity.jwks_refresh,
        "--revocation-db" => identity.revocation_db,
        "--redis-url" => identity.redis_url,
        "--redis-key-prefix" => identity.redis_key_prefix,
    }
    if format!("{:?}", old.tracing) != format!("{:?}", new.tracing) {
        changed.push("--otlp-*");
    }
    // Apps verify assertions with the JWKS they fetched (cached up to 5 minutes): a new key
    // would fail them until they refetch, so it takes a restart (replicas roll one by one).
    let kid = |c: &ServeConfig| {
        c.app_identity
            .assertion
            .as_ref()
            .map(|a| a.key.kid().to_owned())
    };
    if let (Some(old_kid), Some(new_kid)) = (kid(old), kid(new))
        && old_kid != new_kid
    {
        changed.push("--assertion-key-file");
    }
    if old.trust.ca_file() != new.trust.ca_file() {
        changed.push("--ca-file");
    }
    if format!("{:?}", old.identity.introspection) != format!("{:?}", new.identity.introspection) {
        changed.push("--introspection-*");
    }
    changed
}

/// The live settings that differ, for the log.
fn live_changes(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! live {
        ($($flag:literal => $($field:ident).+),* $(,)?) => {
            $(if old.$($field).+ != new.$($field).+ { changed.push($flag); })*
        };
    }
    live! {
        "--preview-domain" => preview_domains,
        "--port-range" => port_range,
        "--envoy-config" => envoy_routes,
        "--jwt-issuer" => jwt_issuer,
        "--jwt-audience" => jwt_audience,
        "--cookie-name" => cookie_name,
        "--login-url" => login_url,
        "--disable-cors" => disable_cors,
        "--cors-allow-origin" => cors_allow_origins,
        "--sso-*" => sso,
        "--cache-ttl" => cache_ttl,
        "--negative-cache-ttl" => negative_cache_ttl,
        "--sandbox-claim" => identity.sandbox_claim,
        "--ports-claim" => identity.ports_claim,
        "--clock-skew" => identity.clock_skew,
        "--max-token-lifetime" => identity.max_token_lifetime,
        "--forward-claim" => app_identity.forward_claims,
        "--audit-log" => app_identity.audit_log,
        "[[policy]]" => policies,
    }
    if format!("{:?}", old.app_identity.assertion) != format!("{:?}", new.app_identity.assertion) {
        changed.push("--assertion-*");
    }
    changed
}

/// Applies `config` (re-read) and the secrets it names, or nothing.
fn reload(state: &mut Reloadable, config: ServeConfig) -> Result<Vec<&'static str>, ReloadError> {
    let restart = needs_restart(&state.config, &config);
    if !restart.is_empty() {
        return Err(ReloadError::NeedsRestart(restart));
    }
    // Read and checked by the validation that made `config`.
    let secrets = &config.secrets;
    if state.admin.is_some() != secrets.admin_token.is_some() {
        return Err(ReloadError::AdminTokenChange);
    }
    state
        .api
        .set_api_key(secrets.daytona_api_key.expose())
        .map_err(ReloadError::ApiKey)?;
    if let (Some(introspector), Some(secret)) = (
        &state.identity.introspector,
        &secrets.introspection_client_secret,
    ) {
        introspector.set_client_secret(secret.expose());
    }
    // Keep the JWKS keys the refresh task installed.
    let mut next = policy(&config, secrets);
    if let Some(jwks) = &state.identity.jwks {
        next.verifier = next.verifier.with_jwks(jwks.keys().to_vec());
    }
    state.policy.store(Arc::new(next));
    state
        .previews
        .set_ttls(config.cache_ttl, config.negative_cache_ttl);
    state.minting.signer.store(signer(secrets));
    state.minting.rules.store(Arc::new(mint_rules(&config)));
    state.metrics.set_known_routes(route_names(&config));
    if let (Some(check), Some(token)) = (&state.admin, &secrets.admin_token) {
        check.set_token(token.expose());
    }
    let changed = live_changes(&state.config, &config);
    state.config = config;
    Ok(changed)
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("<{e}>"), |a| a.to_string())
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
