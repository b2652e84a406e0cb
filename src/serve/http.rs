//! The operator's HTTP side (`--http-addr`): `/healthz` (the process is up), `/readyz` (ready to
//! serve Checks: same rule as gRPC health), `/metrics` (Prometheus text) and, with
//! `--assertion`, `/.well-known/jwks.json` (the public key apps verify assertions with).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::authz::app_identity::JWKS_PATH;
use crate::metrics::Metrics;

/// Whether daytona-authz is ready: keys loaded and Daytona answered once (or the grace passed),
/// and not shutting down. Mirrored into gRPC health by `server`.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// The JWKS of the assertion key the policy signs with now; `None` without `--assertion`.
pub type JwksSource = Arc<dyn Fn() -> Option<Arc<str>> + Send + Sync>;

#[derive(Clone)]
pub struct HttpState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub jwks: JwksSource,
}

pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(JWKS_PATH, get(jwks))
        .with_state(state)
}

async fn jwks(State(state): State<HttpState>) -> axum::response::Response {
    match (state.jwks)() {
        Some(jwks) => (
            [
                (header::CONTENT_TYPE, "application/jwk-set+json"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            jwks.to_string(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no --assertion\n").into_response(),
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let state = HttpState {
            readiness: Arc::default(),
            metrics: Arc::default(),
            jwks: Arc::new(|| None),
        };
        let app = app(state.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.readiness.set(true);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, text) = get(app.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("daytona_authz_build_info"));
        assert_eq!(get(app, JWKS_PATH).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_assertion_key_is_served_as_a_jwks() {
        let key = Arc::new(crate::authz::app_identity::AssertionKey::generate().unwrap());
        let served = Arc::clone(&key);
        let app = app(HttpState {
            readiness: Arc::default(),
            metrics: Arc::default(),
            jwks: Arc::new(move || Some(served.jwks())),
        });
        let (status, text) = get(app, JWKS_PATH).await;
        assert_eq!(status, StatusCode::OK);
        let jwks: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], key.kid());
        assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    }
}
