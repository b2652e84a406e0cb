//! `daytona-authz serve`: wires the validated configuration into running servers (ext_authz +
//! health on gRPC, health/readiness/metrics on HTTP, the admin API), and owns the lifecycle:
//! readiness, SIGHUP secret reloads, SIGTERM/SIGINT drain.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminService, BearerCheck};
use crate::config::{SecretSources, Secrets, ServeConfig};
use crate::daytona::{DaytonaApi, PreviewCache};
use crate::decision::Policy;
use crate::grpc::AuthzService;
use crate::http::{self, HttpState, Readiness};
use crate::metrics::Metrics;
use crate::token::Verifier;

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
    #[error("{0}")]
    Setup(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let api = Arc::new(
        DaytonaApi::new(
            config.daytona_api_url.clone(),
            config.secrets.daytona_api_key.expose(),
            config.daytona_api_timeout,
            config.max_concurrent_api_calls,
            Arc::clone(&metrics),
        )
        .map_err(ServeError::Setup)?,
    );
    let previews = Arc::new(PreviewCache::new(
        Arc::clone(&api),
        config.cache_ttl,
        config.cache_max_entries,
        Arc::clone(&metrics),
    ));
    let policy = Arc::new(ArcSwap::from_pointee(policy(&config, &config.secrets)));
    let authz = AuthzService::new(
        Arc::clone(&policy),
        Arc::clone(&previews),
        Arc::clone(&metrics),
    );

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
        preview_domain = %config.preview_domain,
        cache_ttl = ?config.cache_ttl,
        cache_max_entries = config.cache_max_entries,
        jwt_issuer = config.jwt_issuer.as_deref(),
        jwt_audience = config.jwt_audience.as_deref(),
        jwt_previous_secret = config.secrets.jwt_previous_secret.is_some(),
        cookie_name = %config.cookie_name,
        login_url = config.login_url.as_ref().map(|u| u.as_str()),
        disable_cors = config.disable_cors,
        ready_grace = ?config.ready_grace,
        drain_timeout = ?config.drain_timeout,
        secrets = ?config.secret_sources,
        "daytona-authz listening"
    );

    // `stopping`: a signal came, the drain begins. `stopped`: the drain is over.
    let (stopping_tx, stopping) = watch::channel(false);
    let (stopped_tx, stopped) = watch::channel(false);

    // HTTP: health, readiness, metrics. Stays up through the drain so probes see "not ready".
    let http_app = http::app(HttpState {
        readiness: Arc::clone(&readiness),
        metrics: Arc::clone(&metrics),
    });
    let http_task = tokio::spawn({
        let mut stopped = stopped.clone();
        async move {
            axum::serve(http_listener, http_app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }
    });

    // Admin API.
    let admin_credential = admin.as_ref().map(|(_, check)| check.clone());
    let admin_task = admin.map(|(listener, check)| {
        tracing::info!(admin_addr = %local_addr(&listener), "admin API listening");
        let service = admin::server(AdminService::new(Arc::clone(&previews)), check);
        let mut stopped = stopped.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }),
        )
    });
    if admin_task.is_none() {
        tracing::info!("admin API off (no --admin-token)");
    }

    // Readiness: Daytona answered once (start-up probe or a real call), or the grace passed.
    tokio::spawn(become_ready(
        Arc::clone(&api),
        config.ready_grace,
        health.clone(),
        Arc::clone(&metrics),
        Arc::clone(&readiness),
        stopping.clone(),
    ));

    // SIGHUP: re-read secret files; a bad reload keeps the old secrets.
    let drain_timeout = config.drain_timeout;
    tokio::spawn(reload_on_hangup(
        Arc::new(config),
        Arc::clone(&policy),
        Arc::clone(&api),
        admin_credential,
        Arc::clone(&metrics),
    ));

    // gRPC: ext_authz + health, drained on SIGTERM/SIGINT within the drain timeout.
    let grpc_server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(authz))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), {
            let mut stopped = stopping.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        });
    tokio::pin!(grpc_server);

    let result = tokio::select! {
        result = &mut grpc_server => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down: not ready, draining in-flight checks");
            set_health(&health, &metrics, &readiness, false).await;
            stopping_tx.send_replace(true);
            match tokio::time::timeout(drain_timeout, &mut grpc_server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("drain timeout passed with checks still in flight; exiting");
                    Ok(())
                }
            }
        }
    };
    stopping_tx.send_replace(true);
    stopped_tx.send_replace(true);
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

/// The decision policy for a set of secrets.
fn policy(config: &ServeConfig, secrets: &Secrets) -> Policy {
    let mut verifier = Verifier::hs256(
        secrets.jwt_secret.expose().as_bytes(),
        config.jwt_issuer.as_deref(),
        config.jwt_audience.as_deref(),
    );
    if let Some(previous) = &secrets.jwt_previous_secret {
        verifier = verifier.with_previous(previous.expose().as_bytes());
    }
    Policy {
        preview_domain: config.preview_domain.clone(),
        verifier,
        cookie_name: config.cookie_name.clone(),
        login_url: config.login_url.clone(),
        disable_cors: config.disable_cors,
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
    api: Arc<DaytonaApi>,
    grace: Option<Duration>,
    health: HealthReporter,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    mut stopping: watch::Receiver<bool>,
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
        _ = stopping.wait_for(|s| *s) => return,
    };
    if *stopping.borrow() {
        return;
    }
    set_health(&health, &metrics, &readiness, true).await;
    tracing::info!(why, "ready");
}

/// On SIGHUP, reads every secret again (files may have been rotated) and swaps them in; when
/// any of them is unreadable or invalid, logs why and keeps serving with the old ones.
async fn reload_on_hangup(
    config: Arc<ServeConfig>,
    policy_slot: Arc<ArcSwap<Policy>>,
    api: Arc<DaytonaApi>,
    admin: Option<BearerCheck>,
    metrics: Arc<Metrics>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; secrets will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            match reload(
                &config.secret_sources,
                &config,
                &policy_slot,
                &api,
                admin.as_ref(),
            ) {
                Ok(()) => {
                    metrics.secret_reload("ok");
                    tracing::info!("secrets reloaded");
                }
                Err(problems) => {
                    metrics.secret_reload("error");
                    tracing::error!(%problems, "secret reload failed; keeping the previous secrets");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (config, policy_slot, api, admin, metrics);
}

fn reload(
    sources: &SecretSources,
    config: &ServeConfig,
    policy_slot: &ArcSwap<Policy>,
    api: &DaytonaApi,
    admin: Option<&BearerCheck>,
) -> Result<(), String> {
    let secrets = sources
        .load()
        .map_err(|e| e.to_string().replace('\n', "; "))?;
    if admin.is_some() != secrets.admin_token.is_some() {
        return Err("the admin token cannot be added or removed by a reload".into());
    }
    api.set_api_key(secrets.daytona_api_key.expose())?;
    policy_slot.store(Arc::new(policy(config, &secrets)));
    if let (Some(check), Some(token)) = (admin, &secrets.admin_token) {
        check.set_token(token.expose());
    }
    Ok(())
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
