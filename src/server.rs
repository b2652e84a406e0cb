//! `daytona-authz serve`: wires the validated configuration into running gRPC servers.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminService};
use crate::config::ServeConfig;
use crate::daytona::{DaytonaApi, PreviewCache};
use crate::decision::Policy;
use crate::grpc::AuthzService;
use crate::token::Verifier;

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
    let api = DaytonaApi::new(
        config.daytona_api_url.clone(),
        config.daytona_api_key.expose(),
        config.daytona_api_timeout,
    )
    .map_err(ServeError::Setup)?;
    let previews = Arc::new(PreviewCache::new(
        api,
        config.cache_ttl,
        config.cache_max_entries,
    ));
    let mut verifier = Verifier::hs256(
        config.jwt.secret.expose().as_bytes(),
        config.jwt.issuer.as_deref(),
        config.jwt.audience.as_deref(),
    );
    if let Some(previous) = &config.jwt_previous_secret {
        verifier = verifier.with_previous(previous.expose().as_bytes());
    }
    let policy = Policy {
        preview_domain: config.preview_domain.clone(),
        verifier,
        cookie_name: config.cookie_name.clone(),
        login_url: config.login_url.clone(),
        disable_cors: config.disable_cors,
    };
    let authz = AuthzService::new(policy, Arc::clone(&previews));

    let grpc = bind(config.grpc_addr).await?;
    let admin = match &config.admin {
        Some(admin) => Some((bind(admin.addr).await?, admin.token.expose().to_owned())),
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizationServer<AuthzService<DaytonaApi>>>()
        .await;
    tracing::info!(
        grpc_addr = %grpc.local_addr().map_err(|e| ServeError::Setup(e.to_string()))?,
        daytona_api_url = %config.daytona_api_url,
        preview_domain = %config.preview_domain,
        cache_ttl = ?config.cache_ttl,
        cache_max_entries = config.cache_max_entries,
        jwt_issuer = config.jwt.issuer.as_deref(),
        jwt_audience = config.jwt.audience.as_deref(),
        jwt_previous_secret = config.jwt_previous_secret.is_some(),
        cookie_name = %config.cookie_name,
        login_url = config.login_url.as_ref().map(|u| u.as_str()),
        disable_cors = config.disable_cors,
        "daytona-authz listening"
    );

    let shutdown = shutdown_signal();
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin.map(|(listener, token)| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(admin_addr = %addr, "admin API listening");
        }
        let service = admin::server(AdminService::new(Arc::clone(&previews)), &token);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = admin_stopped.await;
                }),
        )
    });
    if admin_task.is_none() {
        tracing::info!("admin API off (no --admin-token)");
    }

    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(authz))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight checks");
            health
                .set_not_serving::<AuthorizationServer<AuthzService<DaytonaApi>>>()
                .await;
        })
        .await;
    let _ = stop_admin.send(());
    if let Some(task) = admin_task
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "admin server failed");
    }
    result?;
    tracing::info!("stopped");
    Ok(())
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
