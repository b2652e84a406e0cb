//! Small servers a test runs on 127.0.0.1 beside the stack: any axum app (plain or over TLS),
//! and a Daytona API that answers whatever the test scripts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::{PROBE_SANDBOX, TlsFiles};

/// An axum app on 127.0.0.1:0 run by the test, on the test's runtime; stopped for good by
/// [`LocalServer::stop`] (then its port refuses connections) or when dropped.
pub struct LocalServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LocalServer {
    pub async fn start(app: Router) -> LocalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .expect("local test server");
        });
        LocalServer {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Over HTTPS (HTTP/1.1) with `tls`'s certificate: the Daytona double's TLS listener.
    pub async fn start_tls(app: Router, tls: &TlsFiles) -> LocalServer {
        let acceptor = daytona_double::tls_acceptor(&tls.cert, &tls.key).expect("a TLS server");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = daytona_double::TlsListener::new(tcp, acceptor);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("local TLS server");
        });
        LocalServer {
            addr,
            shutdown: None,
            task: Some(task),
        }
    }

    /// Stops accepting, closes idle keep-alive connections and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("local server stops within 10 s")
                .expect("local server task");
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A stand-in for Daytona's API that answers the preview-url call with whatever the test scripts
/// (the double cannot produce unusable answers), and 404 for the readiness probe's nil UUID.
pub struct FakeDaytonaApi {
    server: LocalServer,
    state: Arc<FakeApiState>,
}

struct FakeApiState {
    /// (status, content type, body) of the next answers.
    answer: Mutex<(u16, &'static str, Vec<u8>)>,
    calls: AtomicUsize,
}

async fn fake_preview_url(
    State(state): State<Arc<FakeApiState>>,
    Path((sandbox_id, _port)): Path<(String, String)>,
) -> Response {
    if sandbox_id == PROBE_SANDBOX {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "statusCode": 404 })),
        )
            .into_response();
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    let (status, content_type, body) = state.answer.lock().unwrap().clone();
    (
        StatusCode::from_u16(status).unwrap(),
        [(axum::http::header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

impl FakeDaytonaApi {
    /// Answers `200 {}` until told otherwise.
    pub async fn start() -> FakeDaytonaApi {
        let state = Arc::new(FakeApiState {
            answer: Mutex::new((200, "application/json", b"{}".to_vec())),
            calls: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(
                "/api/sandbox/{id}/ports/{port}/preview-url",
                get(fake_preview_url),
            )
            .with_state(Arc::clone(&state));
        FakeDaytonaApi {
            server: LocalServer::start(app).await,
            state,
        }
    }

    /// For `--daytona-api-url`.
    pub fn url(&self) -> String {
        format!("http://{}/api", self.server.addr)
    }

    pub fn answer(&self, status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) {
        *self.state.answer.lock().unwrap() = (status, content_type, body.into());
    }

    pub fn answer_json(&self, body: &serde_json::Value) {
        self.answer(200, "application/json", body.to_string());
    }

    /// Preview-url calls for real sandboxes (the readiness probe's are not counted).
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}
