//! `daytona-double`: a test double of Daytona's REST API and preview proxy.
//!
//! The end-to-end tests run it in-process in place of Daytona, through this library ([`start`]);
//! `scripts/demo`, the benchmarks and the container tests run the `daytona-double` binary
//! (`src/main.rs`: the command line over [`Options`]). It reproduces
//! what a client of Daytona observes (per Daytona's public source and docs), on two loopback
//! listeners:
//!
//! * the **API** (`--api-addr`, base path `/api`): `GET /api/sandbox/{id}/ports/{port}/preview-url`
//!   authenticated with one organization API key (`Authorization: Bearer …`), with Daytona's
//!   checks in Daytona's order (401, then 400 `Invalid port`, then 404) and its NestJS-style JSON
//!   error bodies;
//! * the **preview proxy** (`--proxy-addr`), routing `{port}-{sandboxId}.{proxy_domain}` hosts: a
//!   private sandbox wants exactly one current `X-Daytona-Preview-Token` and otherwise answers
//!   `307` to the sign-in page (WebSocket upgrades included); browsers get the preview warning
//!   page unless they skip it; CORS preflights are answered by the proxy itself (before
//!   authentication) and origins are reflected with credentials unless
//!   `X-Daytona-Disable-CORS: true`; Daytona's own headers are stripped before the request reaches
//!   the sandbox; with `--proxy-tls-cert`/`--proxy-tls-key` it serves HTTPS (HTTP/1.1 over TLS)
//!   and the API hands out `https://` preview URLs, as Daytona cloud does (and with
//!   `--api-tls-cert`/`--api-tls-key` the API itself is HTTPS, as a self-hosted Daytona behind a
//!   private CA is);
//! * a built-in **sandbox app** behind the proxy: JSON echo of the request as the sandbox sees it,
//!   WebSocket echo, server-sent events, an HTML page, a cookie setter, any page given in the
//!   query (`/html-from-query?html=`) and a redirect (`/redirect?to=`); port 9999 plays "nothing
//!   listening" (502, empty body).
//!
//! Tests steer and observe it through `/_double/*` on the API listener: call counters for the
//! preview-url endpoint, sandbox creation and restart (which regenerates the preview token, as
//! every start does in Daytona), fault injection (status, delay, a 429's Retry-After), and the
//! log of every request the proxy received, headers as they arrived (over TLS, with the server
//! name the client sent as SNI).
//!
//! Benchmarks run it with `--any-sandbox`: then every lower-case UUID is a sandbox (its preview
//! token made on first use), so any number of distinct sandboxes can be asked for.
//!
//! What it does NOT simulate: names (sandboxes are found by id only), organizations, API key
//! scopes (403), JWT sessions, `Authorization: Bearer` or cookie credentials on the proxy, signed
//! preview URLs, public sandboxes, stopped sandboxes (400) and auto-start, the newer `401` answer
//! of the cloud proxy, HTTP/2, TLS client certificates. The request log lists headers in order of
//! first appearance of each name: repeats are kept, but hyper groups the values of one name
//! together, so `a, b, a` is logged as `a, a, b`.
//!
//! Once both listeners are bound the binary prints one JSON line to stdout (a [`Ready`]), then
//! logs to stderr only:
//! `{"api_url":"http://127.0.0.1:3000/api","proxy_port":4000,"proxy_domain":"proxy.localhost",
//! "sandboxes":[{"id":"…","token":"…"}]}`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use rand::Rng as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

/// Exposable ports, as in Daytona's documentation.
const PORT_RANGE: std::ops::RangeInclusive<u32> = 3000..=9999;
/// The sandbox port on which "nothing is listening": the proxy answers 502 with an empty body.
const NOTHING_LISTENING_PORT: u16 = 9999;
/// Preview tokens are nanoid-like: 32 characters from this alphabet.
const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";
const TOKEN_LEN: usize = 32;
/// Where Daytona sends a browser without credentials for a private sandbox.
const SIGNIN_URL: &str = "http://localhost:3000/api/auth/signin";
const PREVIEW_TOKEN: HeaderName = HeaderName::from_static("x-daytona-preview-token");
const SKIP_PREVIEW_WARNING: HeaderName = HeaderName::from_static("x-daytona-skip-preview-warning");
const DISABLE_CORS: HeaderName = HeaderName::from_static("x-daytona-disable-cors");
const PREVIEW_ACCEPTED_COOKIE: &str = "daytona-preview-page-accepted=true";
/// Older entries of the proxy request log are dropped beyond this many.
const PROXY_LOG_CAP: usize = 10_000;
/// The sandbox app refuses request bodies larger than this (413).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const SSE_DEFAULT_EVENTS: u32 = 5;
const SSE_MAX_EVENTS: u32 = 1000;
const SSE_INTERVAL: Duration = Duration::from_millis(20);
/// How long in-flight requests get to finish after SIGTERM/SIGINT (the binary's
/// [`Server::shutdown`]); open WebSockets and event streams would otherwise hold it up forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// A TLS client of the preview proxy must finish its handshake within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// -------------------------------------------------------------------------------------------------
// Command-line values
// -------------------------------------------------------------------------------------------------

pub fn parse_loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("not an address: {e}"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err("the double binds loopback addresses only (e.g. 127.0.0.1:0)".into())
    }
}

pub fn parse_sandbox_id(s: &str) -> Result<String, String> {
    if is_valid_sandbox_id(s) {
        Ok(s.to_owned())
    } else {
        Err("sandbox ids are made of a-z, 0-9 and '-' (a lower-case UUID)".into())
    }
}

pub fn parse_domain(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.split('.').all(|label| !label.is_empty())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("not a domain name".into())
    }
}

/// A lower-case hyphenated UUID (8-4-4-4-12 hex digits), the shape of Daytona's sandbox ids.
fn is_uuid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

fn is_valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

// -------------------------------------------------------------------------------------------------
// Random identifiers
// -------------------------------------------------------------------------------------------------

/// A random lower-case UUID v4, like Daytona's sandbox ids.
fn random_sandbox_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh preview token: 32 characters from `[a-z0-9_-]`.
fn random_preview_token() -> String {
    let mut rng = rand::rng();
    (0..TOKEN_LEN)
        .map(|_| char::from(TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())]))
        .collect()
}

/// Told every preview token the double issues (see [`Options::on_token_issued`]).
pub type TokenHook = Arc<dyn Fn(&str) + Send + Sync>;

// -------------------------------------------------------------------------------------------------
// Shared state
// -------------------------------------------------------------------------------------------------

/// Everything both listeners share. Fixed settings sit outside the mutex.
struct Double {
    api_key: String,
    /// `http`, or `https` when the preview proxy serves TLS.
    proxy_scheme: &'static str,
    proxy_domain: String,
    proxy_port: u16,
    /// `--any-sandbox`: every lower-case UUID is a sandbox, materialised on first use.
    any_sandbox: bool,
    on_token_issued: Option<TokenHook>,
    state: Mutex<MutableState>,
}

#[derive(Default)]
struct MutableState {
    /// Sandbox id → current preview token.
    sandboxes: HashMap<String, String>,
    /// Sandbox id → its labels (`GET /sandbox/{id}`); none: no labels.
    labels: HashMap<String, BTreeMap<String, String>>,
    stats: PreviewUrlStats,
    fault: Fault,
    proxy_log: VecDeque<ProxyRequestRecord>,
}

#[derive(Default, Serialize)]
struct PreviewUrlStats {
    preview_url_calls: u64,
    /// Calls of `GET /sandbox/{id}` (the sandbox's description).
    sandbox_calls: u64,
    /// `"{id}:{port}"` as they appeared in the request path → calls.
    per_key: BTreeMap<String, u64>,
}

/// Injected misbehaviour of the preview-url endpoint; a `POST /_double/fault` replaces all of it.
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Fault {
    /// Answer every call with this status (and a Daytona-style error body).
    status: Option<u16>,
    /// Delay every answer by this many milliseconds.
    delay_ms: Option<u64>,
    /// With status 429: the `Retry-After` seconds sent (default 7).
    retry_after: Option<u64>,
}

/// One request as the preview proxy received it, before anything was stripped.
#[derive(Clone, Serialize)]
struct ProxyRequestRecord {
    host: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// The server name (SNI) of the TLS connection; `null` without TLS or without SNI.
    sni: Option<String>,
}

/// A sandbox and its current preview token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub token: String,
}

impl Double {
    fn new(
        api_key: String,
        proxy_scheme: &'static str,
        proxy_domain: String,
        proxy_port: u16,
        sandboxes: &[Sandbox],
        any_sandbox: bool,
        on_token_issued: Option<TokenHook>,
    ) -> Self {
        let state = MutableState {
            sandboxes: sandboxes
                .iter()
                .map(|s| (s.id.clone(), s.token.clone()))
                .collect(),
            ..MutableState::default()
        };
        Self {
            api_key,
            proxy_scheme,
            proxy_domain,
            proxy_port,
            any_sandbox,
            on_token_issued,
            state: Mutex::new(state),
        }
    }

    /// A fresh preview token, told to [`Options::on_token_issued`].
    fn issue_token(&self) -> String {
        let token = random_preview_token();
        if let Some(hook) = &self.on_token_issued {
            hook(&token);
        }
        token
    }

    /// The state lock. A panic elsewhere must not wedge the double, hence no poisoning.
    fn lock(&self) -> MutexGuard<'_, MutableState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current_token(&self, sandbox_id: &str) -> Option<String> {
        let mut state = self.lock();
        self.token_mut(&mut state, sandbox_id).cloned()
    }

    /// A sandbox's current preview token; with `--any-sandbox`, a UUID not seen before becomes a
    /// sandbox here, with a fresh token.
    fn token_mut<'s>(
        &self,
        state: &'s mut MutableState,
        sandbox_id: &str,
    ) -> Option<&'s mut String> {
        if self.any_sandbox && is_uuid(sandbox_id) {
            return Some(
                state
                    .sandboxes
                    .entry(sandbox_id.to_owned())
                    .or_insert_with(|| self.issue_token()),
            );
        }
        state.sandboxes.get_mut(sandbox_id)
    }

    /// Counts one preview-url call and returns the fault in force for it.
    fn count_preview_url_call(&self, sandbox_id: &str, port: &str) -> Fault {
        let mut state = self.lock();
        state.stats.preview_url_calls += 1;
        *state
            .stats
            .per_key
            .entry(format!("{sandbox_id}:{port}"))
            .or_default() += 1;
        state.fault
    }

    /// Creates a sandbox; `None` if the id is taken.
    fn create_sandbox(&self, id: String) -> Option<Sandbox> {
        let mut state = self.lock();
        if state.sandboxes.contains_key(&id) {
            return None;
        }
        let token = self.issue_token();
        state.sandboxes.insert(id.clone(), token.clone());
        Some(Sandbox { id, token })
    }

    /// Gives a sandbox a new preview token, as a Daytona (re)start does; `None` if unknown.
    fn restart_sandbox(&self, id: &str) -> Option<Sandbox> {
        let mut state = self.lock();
        let token = self.token_mut(&mut state, id)?;
        *token = self.issue_token();
        Some(Sandbox {
            id: id.to_owned(),
            token: token.clone(),
        })
    }

    fn record_proxy_request(&self, record: ProxyRequestRecord) {
        let mut state = self.lock();
        if state.proxy_log.len() >= PROXY_LOG_CAP {
            state.proxy_log.pop_front();
        }
        state.proxy_log.push_back(record);
    }
}

// -------------------------------------------------------------------------------------------------
// Daytona-style errors
// -------------------------------------------------------------------------------------------------

/// An error as Daytona's API (NestJS with its exception filter) writes it.
fn daytona_error(status: StatusCode, path: &str, message: &str) -> Response {
    let body = DaytonaError {
        path,
        timestamp: iso8601_now(),
        status_code: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    (status, Json(body)).into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DaytonaError<'a> {
    path: &'a str,
    timestamp: String,
    status_code: u16,
    error: &'a str,
    message: &'a str,
}

/// The current time as `2025-01-31T12:34:56.789Z`, like JavaScript's `toISOString()`.
fn iso8601_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// -------------------------------------------------------------------------------------------------
// API listener
// -------------------------------------------------------------------------------------------------

fn api_router(double: Arc<Double>) -> Router {
    Router::new()
        .route(
            "/api/sandbox/{sandbox_id}/ports/{port}/preview-url",
            get(preview_url),
        )
        .route("/api/sandbox/{sandbox_id}", get(describe_sandbox))
        .route("/_double/stats", get(stats))
        .route("/_double/sandboxes", post(create_sandbox))
        .route(
            "/_double/sandboxes/{sandbox_id}/restart",
            post(restart_sandbox),
        )
        .route("/_double/fault", post(set_fault))
        .route(
            "/_double/proxy-requests",
            get(proxy_requests).delete(clear_proxy_requests),
        )
        .fallback(api_not_found)
        .with_state(double)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PreviewUrl {
    sandbox_id: String,
    url: String,
    token: String,
}

/// `GET /api/sandbox/{sandboxIdOrName}/ports/{port}/preview-url`.
async fn preview_url(
    State(double): State<Arc<Double>>,
    Path((sandbox_id, port)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let fault = double.count_preview_url_call(&sandbox_id, &port);
    if let Some(ms) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let path = uri.path();
    if let Some(status) = fault.status {
        return injected_fault(status, fault.retry_after, path);
    }
    if !has_api_key(&headers, &double.api_key) {
        return daytona_error(StatusCode::UNAUTHORIZED, path, "Unauthorized");
    }
    let Some(port) = parse_port(&port) else {
        return daytona_error(StatusCode::BAD_REQUEST, path, "Invalid port");
    };
    let Some(token) = double.current_token(&sandbox_id) else {
        let message = format!("Sandbox with ID or name {sandbox_id} not found");
        return daytona_error(StatusCode::NOT_FOUND, path, &message);
    };
    let url = format!(
        "{}://{port}-{sandbox_id}.{}:{}",
        double.proxy_scheme, double.proxy_domain, double.proxy_port
    );
    Json(PreviewUrl {
        sandbox_id,
        url,
        token,
    })
    .into_response()
}

/// `GET /api/sandbox/{sandboxIdOrName}`: the sandbox as Daytona's `Sandbox` schema has it (the
/// fields a client reads; labels as set with [`Options::labels`] or `POST /_double/sandboxes`).
async fn describe_sandbox(
    State(double): State<Arc<Double>>,
    Path(sandbox_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    double.lock().stats.sandbox_calls += 1;
    let path = uri.path();
    if !has_api_key(&headers, &double.api_key) {
        return daytona_error(StatusCode::UNAUTHORIZED, path, "Unauthorized");
    }
    if double.current_token(&sandbox_id).is_none() {
        let message = format!("Sandbox with ID or name {sandbox_id} not found");
        return daytona_error(StatusCode::NOT_FOUND, path, &message);
    }
    let labels = double
        .lock()
        .labels
        .get(&sandbox_id)
        .cloned()
        .unwrap_or_default();
    let now = iso8601_now();
    Json(serde_json::json!({
        "id": sandbox_id,
        "organizationId": DOUBLE_ORGANIZATION_ID,
        "name": sandbox_id,
        "labels": labels,
        "public": false,
        "state": "started",
        "desiredState": "started",
        "errorReason": null,
        "target": "us",
        "user": "daytona",
        "autoStopInterval": 15,
        "createdAt": now,
        "updatedAt": now,
        "lastActivityAt": now,
    }))
    .into_response()
}

/// The organization every sandbox of the double belongs to.
pub const DOUBLE_ORGANIZATION_ID: &str = "00000000-0000-4000-8000-00000000d0b1";

/// `Authorization: Bearer <the API key>`, scheme case-insensitive.
fn has_api_key(headers: &HeaderMap, api_key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match value.split_once(' ') {
        Some((scheme, key)) => scheme.eq_ignore_ascii_case("bearer") && key.trim() == api_key,
        None => false,
    }
}

/// A decimal port within the exposable range.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u32 = s.parse().ok()?;
    if PORT_RANGE.contains(&port) {
        u16::try_from(port).ok()
    } else {
        None
    }
}

fn injected_fault(status: u16, retry_after: Option<u64>, path: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = if status == StatusCode::TOO_MANY_REQUESTS {
        "ThrottlerException: Too Many Requests"
    } else {
        status.canonical_reason().unwrap_or("Error")
    };
    let mut response = daytona_error(status, path, message);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after.unwrap_or(7)),
        );
    }
    response
}

/// NestJS's answer for a route that does not exist.
async fn api_not_found(method: Method, uri: Uri) -> Response {
    let message = format!("Cannot {method} {}", uri.path());
    daytona_error(StatusCode::NOT_FOUND, uri.path(), &message)
}

/// `GET /_double/stats`.
async fn stats(State(double): State<Arc<Double>>) -> Response {
    let state = double.lock();
    Json(&state.stats).into_response()
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NewSandbox {
    id: Option<String>,
    labels: BTreeMap<String, String>,
}

/// `POST /_double/sandboxes`, body optional: `{"id": "...", "labels": {"team": "..."}}`.
async fn create_sandbox(State(double): State<Arc<Double>>, uri: Uri, body: Bytes) -> Response {
    let request: NewSandbox = match parse_optional_json(&body) {
        Ok(request) => request,
        Err(e) => return invalid_json(uri.path(), &e),
    };
    let id = request.id.unwrap_or_else(random_sandbox_id);
    if !is_valid_sandbox_id(&id) {
        let message = "sandbox ids are made of a-z, 0-9 and '-'";
        return daytona_error(StatusCode::BAD_REQUEST, uri.path(), message);
    }
    match double.create_sandbox(id) {
        Some(sandbox) => {
            info!(sandbox.id = %sandbox.id, labels = ?request.labels, "sandbox created");
            double
                .lock()
                .labels
                .insert(sandbox.id.clone(), request.labels);
            (StatusCode::CREATED, Json(sandbox)).into_response()
        }
        None => daytona_error(StatusCode::CONFLICT, uri.path(), "sandbox exists"),
    }
}

/// `POST /_double/sandboxes/{id}/restart`: a new preview token, the old one goes stale.
async fn restart_sandbox(
    State(double): State<Arc<Double>>,
    Path(sandbox_id): Path<String>,
    uri: Uri,
) -> Response {
    match double.restart_sandbox(&sandbox_id) {
        Some(sandbox) => {
            info!(sandbox.id = %sandbox.id, "sandbox restarted, preview token regenerated");
            Json(sandbox).into_response()
        }
        None => {
            let message = format!("Sandbox with ID or name {sandbox_id} not found");
            daytona_error(StatusCode::NOT_FOUND, uri.path(), &message)
        }
    }
}

/// `POST /_double/fault`: `{"status": 503|null, "delay_ms": N|null, "retry_after": N|null}`
/// replaces the fault in force (`retry_after`: the `Retry-After` of a 429, default 7).
async fn set_fault(State(double): State<Arc<Double>>, uri: Uri, body: Bytes) -> Response {
    let fault: Fault = match parse_optional_json(&body) {
        Ok(fault) => fault,
        Err(e) => return invalid_json(uri.path(), &e),
    };
    if fault.status.is_some_and(|s| !(400..=599).contains(&s)) {
        let message = "status must be an error status (400-599) or null";
        return daytona_error(StatusCode::BAD_REQUEST, uri.path(), message);
    }
    double.lock().fault = fault;
    info!(status = ?fault.status, delay_ms = ?fault.delay_ms, retry_after = ?fault.retry_after, "preview-url fault set");
    Json(fault).into_response()
}

/// `GET /_double/proxy-requests`: every request the preview proxy received, oldest first.
async fn proxy_requests(State(double): State<Arc<Double>>) -> Response {
    let log: Vec<ProxyRequestRecord> = double.lock().proxy_log.iter().cloned().collect();
    Json(log).into_response()
}

/// `DELETE /_double/proxy-requests`.
async fn clear_proxy_requests(State(double): State<Arc<Double>>) -> StatusCode {
    double.lock().proxy_log.clear();
    StatusCode::NO_CONTENT
}

/// A JSON body whatever its content type; an empty body means the type's default.
fn parse_optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> serde_json::Result<T> {
    if body.trim_ascii().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
}

fn invalid_json(path: &str, error: &serde_json::Error) -> Response {
    daytona_error(
        StatusCode::BAD_REQUEST,
        path,
        &format!("invalid JSON body: {error}"),
    )
}

// -------------------------------------------------------------------------------------------------
// Preview proxy listener
// -------------------------------------------------------------------------------------------------

fn proxy_router(double: Arc<Double>) -> Router {
    Router::new().fallback(preview_proxy).with_state(double)
}

/// Where a preview host points: `{port}-{sandbox_id}.{proxy_domain}`.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    port: u16,
    sandbox_id: String,
}

/// Every request to the preview proxy: log it, route it, let CORS decorate the answer.
async fn preview_proxy(State(double): State<Arc<Double>>, req: Request) -> Response {
    double.record_proxy_request(record_of(&req));
    let cors_origin = cors_origin(req.headers());
    let mut response = route_preview_request(&double, req).await;
    if let Some(origin) = cors_origin {
        allow_origin(response.headers_mut(), origin);
    }
    response
}

/// The proxy's decisions, in Daytona's order: host, sandbox, CORS preflight, preview token,
/// warning page, then the app.
async fn route_preview_request(double: &Double, req: Request) -> Response {
    let host = request_host(&req);
    let path = path_and_query(req.uri()).to_owned();
    let target = match parse_preview_host(&host, &double.proxy_domain) {
        Ok(target) => target,
        Err(message) => return daytona_error(StatusCode::BAD_REQUEST, &path, message),
    };
    let Some(token) = double.current_token(&target.sandbox_id) else {
        return daytona_error(StatusCode::NOT_FOUND, &path, "Sandbox not found");
    };
    if cors_enabled(req.headers()) && is_cors_preflight(&req) {
        return cors_preflight(req.headers());
    }
    if !has_preview_token(req.headers(), &token) {
        debug!(
            sandbox.id = %target.sandbox_id,
            port = target.port,
            "no valid preview token, redirecting to sign-in"
        );
        return signin_redirect(&host, &path);
    }
    if wants_preview_warning(req.headers()) {
        return preview_warning_page();
    }
    sandbox_app(&target, strip_daytona_headers(req)).await
}

fn record_of(req: &Request) -> ProxyRequestRecord {
    ProxyRequestRecord {
        host: request_host(req),
        method: req.method().to_string(),
        path: path_and_query(req.uri()).to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), text_of(value)))
            .collect(),
        sni: req
            .extensions()
            .get::<ConnectInfo<TlsInfo>>()
            .and_then(|ConnectInfo(tls)| tls.sni.clone()),
    }
}

/// The `Host` header as received, else the authority of an absolute-form request URI.
fn request_host(req: &Request) -> String {
    req.headers()
        .get(header::HOST)
        .map(text_of)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// A header value as text: as it is when it is UTF-8, else with its bytes escaped (`caf\xe9`), so
/// a test can tell which bytes arrived.
fn text_of(value: &HeaderValue) -> String {
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => text.to_owned(),
        Err(_) => value.as_bytes().escape_ascii().to_string(),
    }
}

/// Parses `{port}-{sandboxId}.{domain}[:port]`, case-insensitively; the first label splits at its
/// FIRST `-` (sandbox ids contain dashes).
fn parse_preview_host(host: &str, proxy_domain: &str) -> Result<Target, &'static str> {
    let host = host.to_ascii_lowercase();
    let name = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(name, _port)| name);
    let (label, domain) = name.split_once('.').ok_or("Invalid host")?;
    if domain != proxy_domain {
        return Err("Invalid host: not a preview domain");
    }
    let (port, sandbox_id) = label
        .split_once('-')
        .ok_or("Invalid host: expected {port}-{sandboxId}")?;
    let port = parse_port(port).ok_or("Invalid port")?;
    if !is_valid_sandbox_id(sandbox_id) {
        return Err("Invalid sandbox id");
    }
    Ok(Target {
        port,
        sandbox_id: sandbox_id.to_owned(),
    })
}

/// Authenticated: exactly one `X-Daytona-Preview-Token`, equal to the sandbox's current token.
fn has_preview_token(headers: &HeaderMap, current: &str) -> bool {
    let mut tokens = headers.get_all(PREVIEW_TOKEN).iter();
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => token.as_bytes() == current.as_bytes(),
        _ => false,
    }
}

/// Daytona's answer to a private sandbox without credentials: off to sign in, empty body.
fn signin_redirect(host: &str, path: &str) -> Response {
    let original = format!("http://{host}{path}");
    let return_to: String = form_urlencoded::byte_serialize(original.as_bytes()).collect();
    let location = format!("{SIGNIN_URL}?returnTo={return_to}");
    match HeaderValue::from_str(&location) {
        Ok(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        // Unreachable: the percent-encoded URL is visible ASCII.
        Err(_) => StatusCode::TEMPORARY_REDIRECT.into_response(),
    }
}

fn header_is_true(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A browser that has neither skipped nor accepted the warning gets the interstitial page.
fn wants_preview_warning(headers: &HeaderMap) -> bool {
    let is_browser = headers
        .get_all(header::USER_AGENT)
        .iter()
        .any(|ua| text_of(ua).contains("Mozilla"));
    let accepted = headers.get_all(header::COOKIE).iter().any(|cookies| {
        text_of(cookies)
            .split(';')
            .any(|cookie| cookie.trim() == PREVIEW_ACCEPTED_COOKIE)
    });
    is_browser && !accepted && !header_is_true(headers, &SKIP_PREVIEW_WARNING)
}

fn preview_warning_page() -> Response {
    Html(concat!(
        "<!DOCTYPE html>\n<html><head><title>Preview URL warning</title></head>\n",
        "<body><h1>Preview URL warning</h1>\n",
        "<p>You are about to visit a sandbox preview. Only continue if you trust its owner.</p>\n",
        "<button>Continue</button></body></html>\n",
    ))
    .into_response()
}

fn cors_enabled(headers: &HeaderMap) -> bool {
    !header_is_true(headers, &DISABLE_CORS)
}

/// The `Origin` to reflect on the answer, unless CORS is left to the app.
fn cors_origin(headers: &HeaderMap) -> Option<HeaderValue> {
    if cors_enabled(headers) {
        headers.get(header::ORIGIN).cloned()
    } else {
        None
    }
}

fn is_cors_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The proxy's own 204 to a preflight; `preview_proxy` adds the origin and credentials headers.
fn cors_preflight(headers: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    if let Some(method) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, method.clone());
    }
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// What Daytona removes before the sandbox sees the request.
fn strip_daytona_headers(mut req: Request) -> Request {
    for name in [PREVIEW_TOKEN, SKIP_PREVIEW_WARNING, DISABLE_CORS] {
        req.headers_mut().remove(name);
    }
    req
}

// -------------------------------------------------------------------------------------------------
// The sandbox app behind the proxy
// -------------------------------------------------------------------------------------------------

async fn sandbox_app(target: &Target, req: Request) -> Response {
    if target.port == NOTHING_LISTENING_PORT {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    if is_websocket_upgrade(req.headers()) {
        return websocket_echo(req).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/sse") => server_sent_events(req.uri()),
        (&Method::GET, "/html") => html_page(target),
        (&Method::GET, "/cookie") => set_cookie(target, req).await,
        (&Method::GET, "/html-from-query") => page_from_query(req.uri()),
        (&Method::GET, "/redirect") => redirect_from_query(req.uri()),
        _ => echo(target, req).await,
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| text_of(v).trim().eq_ignore_ascii_case("websocket"))
}

/// Accepts the upgrade and echoes every text and binary message until the client closes.
async fn websocket_echo(req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade.on_upgrade(echo_messages),
        Err(rejection) => rejection.into_response(),
    }
}

async fn echo_messages(mut socket: WebSocket) {
    // A close frame is answered by the socket itself on the next receive, which then ends the loop.
    while let Some(Ok(message)) = socket.recv().await {
        let is_data = matches!(
            message,
            axum::extract::ws::Message::Text(_) | axum::extract::ws::Message::Binary(_)
        );
        if is_data && socket.send(message).await.is_err() {
            break;
        }
    }
}

/// `GET /sse?n=N`: N events `data: event-{i}`, 20 ms apart, then the stream ends.
fn server_sent_events(uri: &Uri) -> Response {
    let count = match query_param(uri, "n").map(|n| n.parse::<u32>()) {
        None => SSE_DEFAULT_EVENTS,
        Some(Ok(n)) => n.min(SSE_MAX_EVENTS),
        Some(Err(_)) => return (StatusCode::BAD_REQUEST, "n must be a number\n").into_response(),
    };
    let events = futures_util::stream::unfold(1, move |i| async move {
        if i > count {
            return None;
        }
        if i > 1 {
            tokio::time::sleep(SSE_INTERVAL).await;
        }
        let event = Event::default().data(format!("event-{i}"));
        Some((Ok::<_, Infallible>(event), i + 1))
    });
    Sse::new(events).into_response()
}

fn html_page(target: &Target) -> Response {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><title>Sandbox app</title></head>\n\
         <body><p>sandbox app for {}</p></body></html>\n",
        target.sandbox_id
    ))
    .into_response()
}

/// `GET /html-from-query?html=H`: the page H. A sandbox runs whatever code its owner (or an
/// attacker) put there; the browser tests use this to play a hostile sandbox's page.
fn page_from_query(uri: &Uri) -> Response {
    Html(query_param(uri, "html").unwrap_or_default()).into_response()
}

/// `GET /redirect?to=URL`: 302 to URL (the first step of a cross-origin redirect).
fn redirect_from_query(uri: &Uri) -> Response {
    match query_param(uri, "to").map(|to| HeaderValue::from_str(&to)) {
        Some(Ok(location)) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        _ => (StatusCode::BAD_REQUEST, "to is required\n").into_response(),
    }
}

/// `GET /cookie?name=N&value=V`: sets the cookie, otherwise answers like the echo.
async fn set_cookie(target: &Target, req: Request) -> Response {
    let Some(name) = query_param(req.uri(), "name").filter(|n| !n.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "name is required\n").into_response();
    };
    let value = query_param(req.uri(), "value").unwrap_or_default();
    let Ok(cookie) = HeaderValue::from_str(&format!("{name}={value}; Path=/")) else {
        return (
            StatusCode::BAD_REQUEST,
            "cookie not representable in a header\n",
        )
            .into_response();
    };
    let mut response = echo(target, req).await;
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// Anything else: the request as the sandbox sees it, as JSON.
async fn echo(target: &Target, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (body_len, body_hash) = match drain_body(body).await {
        Ok(drained) => drained,
        Err(status) => return status.into_response(),
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.to_string())
            .or_default()
            .push(text_of(value));
    }
    Json(Echo {
        sandbox_id: &target.sandbox_id,
        port: target.port,
        method: parts.method.as_str(),
        path: path_and_query(&parts.uri),
        headers,
        body_len,
        body_fnv1a64: format!("{body_hash:016x}"),
    })
    .into_response()
}

/// The echo app's answer: the request as the sandbox saw it (after the proxy stripped its headers).
#[derive(Serialize)]
struct Echo<'a> {
    sandbox_id: &'a str,
    port: u16,
    method: &'a str,
    /// Path and query exactly as received.
    path: &'a str,
    /// Header name → values in arrival order.
    headers: BTreeMap<String, Vec<String>>,
    body_len: usize,
    /// FNV-1a (64-bit) of the body, hex: lets a test check a body arrived intact.
    body_fnv1a64: String,
}

/// Reads the body to its end and returns its length and FNV-1a hash; 413 past the limit.
async fn drain_body(body: Body) -> Result<(usize, u64), StatusCode> {
    let mut chunks = body.into_data_stream();
    let mut len = 0;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        len += chunk.len();
        if len > MAX_BODY_BYTES {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        for &byte in chunk.iter() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok((len, hash))
}

fn query_param(uri: &Uri, wanted: &str) -> Option<String> {
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == wanted)
        .map(|(_, value)| value.into_owned())
}

// -------------------------------------------------------------------------------------------------
// TLS on the preview proxy
// -------------------------------------------------------------------------------------------------

/// A rustls server (ring, TLS 1.2 and 1.3, ALPN `http/1.1`) with the given PEM chain and key.
pub fn tls_acceptor(cert: &FsPath, key: &FsPath) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("unusable certificate or key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The preview proxy's listener in TLS mode. Each handshake runs in its own task, so a slow or
/// broken client holds up nobody; connections whose handshake fails are dropped (and logged).
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        Self {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }
}

async fn tls_handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as `axum::serve` needs: both awaited futures are.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                // axum's own accept loop: retries (and logs) accept errors.
                (tcp, peer) = Listener::accept(&mut self.tcp) => {
                    self.handshakes
                        .spawn(tls_handshake(self.acceptor.clone(), tcp, peer));
                }
                // `None` (no handshake under way) disables this branch until the next loop.
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What a request on the TLS listener learns about its connection.
#[derive(Clone)]
struct TlsInfo {
    /// The server name the client sent (SNI), if any.
    sni: Option<String>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        TlsInfo {
            sni: session.server_name().map(str::to_owned),
        }
    }
}

/// A listener (the preview proxy's, or the API's): plain HTTP, or HTTPS.
enum MaybeTlsListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

// -------------------------------------------------------------------------------------------------
// Start-up and shutdown
// -------------------------------------------------------------------------------------------------

/// What a double serves; [`Options::new`] has the command line's defaults but for the addresses
/// (`127.0.0.1:0`, free ports).
#[derive(Clone)]
pub struct Options {
    /// Address of the API listener (port 0 picks a free port); loopback only.
    pub api_addr: SocketAddr,
    /// Address of the preview proxy listener (port 0 picks a free port); loopback only.
    pub proxy_addr: SocketAddr,
    /// The one organization API key the API accepts.
    pub api_key: String,
    /// Sandboxes that exist at start (lower-case UUIDs; duplicates dropped). Without any, one
    /// random sandbox is created.
    pub sandboxes: Vec<String>,
    /// Domain of preview hosts: `{port}-{sandboxId}.{proxy_domain}`.
    pub proxy_domain: String,
    /// The preview proxy serves HTTPS with this PEM certificate chain and key; preview URLs then
    /// are `https://`.
    pub proxy_tls: Option<TlsFiles>,
    /// The API serves HTTPS with this PEM certificate chain and key.
    pub api_tls: Option<TlsFiles>,
    /// Every well-formed sandbox id (a lower-case UUID) exists (benchmarks).
    pub any_sandbox: bool,
    /// Labels of sandboxes (by id) as `GET /sandbox/{id}` reports them; others have none.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Told every preview token the double issues, the initial sandboxes' included (tests check
    /// that no log of the system under test ever contains one).
    pub on_token_issued: Option<TokenHook>,
}

impl Options {
    pub fn new(api_key: impl Into<String>) -> Options {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Options {
            api_addr: loopback,
            proxy_addr: loopback,
            api_key: api_key.into(),
            sandboxes: Vec::new(),
            proxy_domain: DEFAULT_PROXY_DOMAIN.to_owned(),
            proxy_tls: None,
            api_tls: None,
            any_sandbox: false,
            labels: BTreeMap::new(),
            on_token_issued: None,
        }
    }
}

/// The default of `--proxy-domain`.
pub const DEFAULT_PROXY_DOMAIN: &str = "proxy.localhost";

/// A PEM certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), as files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a running double is: what the binary prints as its one line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// `http://127.0.0.1:{port}/api` (`https://` with [`Options::api_tls`]).
    pub api_url: String,
    pub proxy_port: u16,
    pub proxy_domain: String,
    /// The sandboxes that exist at start, with their preview tokens.
    pub sandboxes: Vec<Sandbox>,
}

/// A running double: its listeners are served by tasks of the runtime [`start`] ran on. Dropping
/// it stops them (gracefully, without waiting); [`Server::shutdown`] waits.
pub struct Server {
    pub ready: Ready,
    pub api_addr: SocketAddr,
    pub proxy_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A start-up failure, worded for the operator (an unreadable certificate, a busy address).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Binds both listeners (`options.api_addr`, `options.proxy_addr`) and serves them.
pub async fn start(options: Options) -> Result<Server, Error> {
    for addr in [options.api_addr, options.proxy_addr] {
        parse_loopback_addr(&addr.to_string())?;
    }
    // Certificates first: a bad one fails before anything is bound.
    let tls = acceptors(&options)?;
    let api_listener = bind(options.api_addr, "API").await?;
    let proxy_listener = bind(options.proxy_addr, "preview proxy").await?;
    serve(api_listener, proxy_listener, tls, options)
}

/// Serves listeners already bound; `options.api_addr` and `options.proxy_addr` are ignored.
pub fn start_on(
    api_listener: TcpListener,
    proxy_listener: TcpListener,
    options: Options,
) -> Result<Server, Error> {
    let tls = acceptors(&options)?;
    serve(api_listener, proxy_listener, tls, options)
}

fn acceptors(options: &Options) -> Result<(Option<TlsAcceptor>, Option<TlsAcceptor>), String> {
    let acceptor = |files: &Option<TlsFiles>| {
        files
            .as_ref()
            .map(|files| tls_acceptor(&files.cert, &files.key))
            .transpose()
    };
    Ok((acceptor(&options.api_tls)?, acceptor(&options.proxy_tls)?))
}

fn serve(
    api_listener: TcpListener,
    proxy_listener: TcpListener,
    (api_tls, proxy_tls): (Option<TlsAcceptor>, Option<TlsAcceptor>),
    options: Options,
) -> Result<Server, Error> {
    let api_addr = api_listener.local_addr()?;
    let (api_scheme, api_listener) = match api_tls {
        Some(acceptor) => (
            "https",
            MaybeTlsListener::Tls(TlsListener::new(api_listener, acceptor)),
        ),
        None => ("http", MaybeTlsListener::Plain(api_listener)),
    };
    let proxy_addr = proxy_listener.local_addr()?;
    let (proxy_scheme, proxy_listener) = match proxy_tls {
        Some(acceptor) => (
            "https",
            MaybeTlsListener::Tls(TlsListener::new(proxy_listener, acceptor)),
        ),
        None => ("http", MaybeTlsListener::Plain(proxy_listener)),
    };

    let double = Double::new(
        options.api_key,
        proxy_scheme,
        options.proxy_domain.clone(),
        proxy_addr.port(),
        &[],
        options.any_sandbox,
        options.on_token_issued,
    );
    let sandboxes = initial_sandboxes(&double, &options.sandboxes);
    double.lock().labels.extend(options.labels.clone());
    let double = Arc::new(double);

    info!(
        %api_addr,
        %proxy_addr,
        proxy_scheme,
        sandboxes = sandboxes.len(),
        any_sandbox = options.any_sandbox,
        "daytona-double ready"
    );
    let (stop, stopped) = watch::channel(false);
    let tasks = vec![
        serve_listener(api_listener, api_router(double.clone()), stopped.clone()),
        serve_listener(proxy_listener, proxy_router(double), stopped),
    ];
    Ok(Server {
        ready: Ready {
            api_url: format!("{api_scheme}://{api_addr}/api"),
            proxy_port: proxy_addr.port(),
            proxy_domain: options.proxy_domain,
            sandboxes,
        },
        api_addr,
        proxy_addr,
        stop,
        tasks,
    })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind the {what} listener on {addr}: {e}"))
}

/// Creates the sandboxes asked for (duplicates dropped), or one random sandbox.
fn initial_sandboxes(double: &Double, ids: &[String]) -> Vec<Sandbox> {
    let mut ids: Vec<String> = ids.to_vec();
    if ids.is_empty() {
        ids.push(random_sandbox_id());
    }
    ids.into_iter()
        .filter_map(|id| double.create_sandbox(id))
        .collect()
}

/// Serves one listener until `stopped` turns true (or its sender is gone).
fn serve_listener(
    listener: MaybeTlsListener,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let until_stopped = async move {
        // An error means the sender is gone, which is a stop too.
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    match listener {
        MaybeTlsListener::Plain(listener) => tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(until_stopped)
                .into_future(),
        ),
        // Requests learn the TLS server name (SNI) their connection asked for.
        MaybeTlsListener::Tls(listener) => tokio::spawn(
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<TlsInfo>(),
            )
            .with_graceful_shutdown(until_stopped)
            .into_future(),
        ),
    }
}

impl Server {
    /// Stops accepting, then lets in-flight requests finish for `grace` (open WebSockets and
    /// event streams would otherwise hold it up forever). False if some were still open.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        info!("shutting down");
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        let drained = tokio::time::timeout(grace, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await
        .is_ok();
        if !drained {
            warn!("connections still open after the grace period; closing them");
        }
        drained
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

// -------------------------------------------------------------------------------------------------
// Tests of the pure parts; the behaviour as a whole is exercised by the integration tests.
// -------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f8e4c1a-7b2d-4e6f-9a3b-5c7d9e1f2a4b";

    #[test]
    fn preview_host_splits_at_the_first_dash() {
        let target = parse_preview_host(
            &format!("3000-{ID}.proxy.localhost:4000"),
            "proxy.localhost",
        );
        assert_eq!(
            target,
            Ok(Target {
                port: 3000,
                sandbox_id: ID.to_owned()
            })
        );
    }

    #[test]
    fn preview_host_is_case_insensitive() {
        let host = format!("8080-{}.PROXY.localhost", ID.to_uppercase());
        assert_eq!(
            parse_preview_host(&host, "proxy.localhost").map(|t| t.sandbox_id),
            Ok(ID.to_owned())
        );
    }

    #[test]
    fn preview_host_rejects_other_shapes() {
        for host in [
            "",
            "proxy.localhost",
            &format!("2999-{ID}.proxy.localhost"),
            &format!("10000-{ID}.proxy.localhost"),
            &format!("x3000-{ID}.proxy.localhost"),
            &format!("3000-{ID}.other.localhost"),
            &format!("3000-{ID}.sub.proxy.localhost"),
            "3000-.proxy.localhost",
            "3000.proxy.localhost",
        ] {
            assert!(
                parse_preview_host(host, "proxy.localhost").is_err(),
                "{host}"
            );
        }
    }

    #[test]
    fn ports_are_decimal_and_in_range() {
        assert_eq!(parse_port("3000"), Some(3000));
        assert_eq!(parse_port("9999"), Some(9999));
        for bad in [
            "",
            "2999",
            "10000",
            "+3000",
            "3e3",
            "-1",
            "99999999999999999999",
        ] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn random_ids_and_tokens_have_daytona_shapes() {
        let id = random_sandbox_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(is_valid_sandbox_id(&id));
        let token = random_preview_token();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| TOKEN_ALPHABET.contains(&b)));
    }

    fn double(any_sandbox: bool) -> Double {
        let known = Sandbox {
            id: ID.to_owned(),
            token: "known-token".to_owned(),
        };
        Double::new(
            "key".into(),
            "http",
            "proxy.localhost".into(),
            4000,
            &[known],
            any_sandbox,
            None,
        )
    }

    #[test]
    fn unknown_sandboxes_do_not_exist_by_default() {
        let double = double(false);
        assert_eq!(double.current_token(ID).as_deref(), Some("known-token"));
        let other = random_sandbox_id();
        assert_eq!(double.current_token(&other), None);
        assert!(double.restart_sandbox(&other).is_none());
        assert_eq!(double.current_token(&other), None);
    }

    #[test]
    fn any_sandbox_makes_every_uuid_a_sandbox_with_a_stable_token() {
        let double = double(true);
        assert_eq!(double.current_token(ID).as_deref(), Some("known-token"));
        let other = random_sandbox_id();
        let token = double.current_token(&other).expect("exists on first use");
        assert_eq!(double.current_token(&other), Some(token.clone()));
        let restarted = double.restart_sandbox(&other).expect("restartable");
        assert_ne!(restarted.token, token);
        assert_eq!(double.current_token(&other), Some(restarted.token));
        // Only well-formed lower-case UUIDs.
        for bad in ["not-a-uuid", &other.to_uppercase(), &other[1..]] {
            assert_eq!(double.current_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_089), (2025, 1, 1));
    }

    #[test]
    fn exactly_one_current_preview_token_authenticates() {
        let mut headers = HeaderMap::new();
        assert!(!has_preview_token(&headers, "tok"));
        headers.insert(PREVIEW_TOKEN, HeaderValue::from_static("tok"));
        assert!(has_preview_token(&headers, "tok"));
        assert!(!has_preview_token(&headers, "other"));
        headers.append(PREVIEW_TOKEN, HeaderValue::from_static("tok"));
        assert!(!has_preview_token(&headers, "tok"));
    }

    #[test]
    fn warning_page_only_for_browsers_that_did_not_skip_it() {
        let mut headers = HeaderMap::new();
        assert!(!wants_preview_warning(&headers));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("Mozilla/5.0"));
        assert!(wants_preview_warning(&headers));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; daytona-preview-page-accepted=true"),
        );
        assert!(!wants_preview_warning(&headers));
        headers.remove(header::COOKIE);
        headers.insert(SKIP_PREVIEW_WARNING, HeaderValue::from_static("true"));
        assert!(!wants_preview_warning(&headers));
    }
}
