//! The Daytona API client and the preview-token cache in front of it.
//!
//! One call per (sandbox, port) however many requests arrive at once: concurrent misses for one
//! key wait on the same API call (a `quick_cache` placeholder). Entries live `--cache-ttl`, which
//! bounds how long a token that Daytona regenerated on a sandbox restart can be served stale.
//! Daytona's "no such sandbox" (404) and "invalid" (400) answers are kept `--negative-cache-ttl`
//! (seconds), so a token for a deleted sandbox cannot turn every request into an API call; other
//! failures are never cached, so the next request after one asks again. A 429 puts the API key
//! in back-off for Daytona's `Retry-After`: until it passes no call is made and look-ups that
//! would need one fail at once (503 with the time left).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::host::PreviewTarget;
use crate::metrics::Metrics;
use crate::trust::TrustRoots;

/// What the preview-url API answers for one sandbox port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// The secret Daytona's proxy wants in `X-Daytona-Preview-Token`.
    pub token: String,
    /// Where Daytona's proxy serves this port.
    pub upstream: Upstream,
}

/// The scheme and authority of a Daytona preview URL: what Envoy forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    /// `host` or `host:port`, exactly as in the URL.
    pub authority: String,
}

/// A failed look-up, by what the client should be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaytonaError {
    #[error("Daytona does not know this sandbox")]
    NotFound,
    #[error("Daytona refused the request as invalid: {0}")]
    BadRequest(String),
    #[error("Daytona refused our API key (HTTP {0})")]
    Unauthorized(u16),
    #[error("Daytona is rate limiting us")]
    RateLimited { retry_after: Option<u64> },
    #[error("Daytona is unavailable: {0}")]
    Unavailable(String),
    #[error("Daytona answered something unusable: {0}")]
    BadAnswer(String),
}

/// The seam between the authorization service and Daytona; tests substitute their own.
pub trait PreviewSource: Send + Sync + 'static {
    fn fetch(
        &self,
        target: &PreviewTarget,
    ) -> impl Future<Output = Result<Preview, DaytonaError>> + Send;
}

/// Limits on what we read from Daytona.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The Daytona REST API, authenticated with an organization API key.
pub struct DaytonaApi {
    http: reqwest::Client,
    base: url::Url,
    /// `Bearer <key>`, built once, swapped when the key is reloaded.
    authorization: ArcSwap<reqwest::header::HeaderValue>,
    /// Bounds the calls in flight, so a slow Daytona cannot pile up sockets and memory.
    slots: tokio::sync::Semaphore,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Set once Daytona has answered a call with our key accepted.
    answered: tokio::sync::watch::Sender<bool>,
    /// Daytona rate limited our key (429): no call until this passes.
    backoff: Backoff,
    /// Domains preview URLs may be under (lower-case).
    upstream_domains: Vec<String>,
}

impl std::fmt::Debug for DaytonaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaytonaApi")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl DaytonaApi {
    /// `base` is the API root (e.g. `https://app.daytona.io/api`); `timeout` bounds each call
    /// (and the wait for one of `max_in_flight` slots).
    pub fn new(
        base: url::Url,
        api_key: &str,
        timeout: Duration,
        max_in_flight: usize,
        upstream_domains: Vec<String>,
        trust: &TrustRoots,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let http = outbound_client(timeout, trust)?;
        Ok(DaytonaApi {
            http,
            base,
            authorization: ArcSwap::from_pointee(bearer(api_key)?),
            slots: tokio::sync::Semaphore::new(max_in_flight),
            timeout,
            metrics,
            answered: tokio::sync::watch::channel(false).0,
            backoff: Backoff::default(),
            upstream_domains,
        })
    }

    /// Uses `api_key` from the next call on (SIGHUP reload). A back-off Daytona imposed on the
    /// previous key does not apply to a new one (a reload that keeps the key keeps its back-off).
    pub fn set_api_key(&self, api_key: &str) -> Result<(), String> {
        let authorization = bearer(api_key)?;
        let previous = self.authorization.swap(Arc::new(authorization.clone()));
        if *previous != authorization {
            self.backoff.clear();
        }
        Ok(())
    }

    /// Changes to `true` once Daytona has answered with our key accepted.
    pub fn answered(&self) -> tokio::sync::watch::Receiver<bool> {
        self.answered.subscribe()
    }

    /// Asks Daytona about a sandbox that cannot exist: a 404 proves the API is reachable and
    /// accepts our key, without touching any real sandbox.
    pub async fn probe(&self) -> Result<(), DaytonaError> {
        let nobody = PreviewTarget {
            sandbox_id: "00000000-0000-0000-0000-000000000000".into(),
            port: 3000,
        };
        match self.fetch(&nobody).await {
            Ok(_) | Err(DaytonaError::NotFound | DaytonaError::BadRequest(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn preview_url(&self, target: &PreviewTarget) -> url::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("validated as an http(s) URL")
            .pop_if_empty()
            .extend([
                "sandbox",
                &target.sandbox_id,
                "ports",
                &target.port.to_string(),
                "preview-url",
            ]);
        url
    }

    /// One look-up, bounded as a whole by `timeout`: the wait for a slot and the call share it,
    /// so a `Check` gets its answer before Envoy's own ext_authz timeout gives up on it.
    async fn call(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
        if let Some(seconds) = self.backoff.remaining(Instant::now()) {
            // Daytona asked us to wait: asking again now would only prolong its rate limit.
            self.metrics.api_backoff_refusal();
            return Err(DaytonaError::RateLimited {
                retry_after: Some(seconds),
            });
        }
        let _in_flight = self.metrics.api_lookup();
        let started = Instant::now();
        let deadline = started + self.timeout;
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await
        else {
            self.metrics.api_call("overloaded", started.elapsed());
            return Err(DaytonaError::Unavailable(
                "too many Daytona API calls in flight".into(),
            ));
        };
        // A 429 may have come back while this look-up waited for its slot.
        if let Some(seconds) = self.backoff.remaining(Instant::now()) {
            self.metrics.api_backoff_refusal();
            return Err(DaytonaError::RateLimited {
                retry_after: Some(seconds),
            });
        }
        let response = self
            .http
            .get(self.preview_url(target))
            .header(
                reqwest::header::AUTHORIZATION,
                (**self.authorization.load()).clone(),
            )
            .header(reqwest::header::ACCEPT, "application/json")
            // What the slot wait left; reqwest's timeout covers the answer's body too.
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                self.metrics
                    .api_call(transport_label(&e), started.elapsed());
                return Err(DaytonaError::Unavailable(describe(&e)));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_limited(response).await;
        self.metrics
            .api_call(&status.to_string(), started.elapsed());
        let body = body?;
        if matches!(status, 200 | 400 | 404) {
            self.answered.send_replace(true);
        }
        match status {
            200 => {
                let answer = parse_answer(&body, target, &self.upstream_domains);
                if let Err(e) = &answer {
                    tracing::warn!(error = %e, sandbox.id = %target.sandbox_id, port = target.port, "refusing Daytona's answer");
                }
                answer
            }
            400 => Err(DaytonaError::BadRequest(error_message(&body))),
            401 | 403 => Err(DaytonaError::Unauthorized(status)),
            404 => Err(DaytonaError::NotFound),
            429 => {
                let seconds = self.backoff.start(Instant::now(), retry_after);
                tracing::warn!(
                    retry_after = seconds,
                    "Daytona is rate limiting our API key; no calls until the back-off ends"
                );
                Err(DaytonaError::RateLimited {
                    retry_after: Some(seconds),
                })
            }
            500..=599 => Err(DaytonaError::Unavailable(format!("HTTP {status}"))),
            other => Err(DaytonaError::BadAnswer(format!("HTTP {other}"))),
        }
    }
}

/// Longest back-off a 429 can impose (a larger `Retry-After` is capped), and the back-off when
/// Daytona gives no usable `Retry-After`.
const MAX_BACKOFF_SECONDS: u64 = 300;
const DEFAULT_BACKOFF_SECONDS: u64 = 5;

/// The rate-limit back-off of one API key: no call before `until`.
#[derive(Debug, Default)]
struct Backoff {
    until: std::sync::Mutex<Option<Instant>>,
}

impl Backoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whole seconds left (rounded up), while backing off.
    fn remaining(&self, now: Instant) -> Option<u64> {
        let until = (*self.lock())?;
        let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Backs off for Daytona's `Retry-After` (1 s to 5 min; 5 s without one); returns the
    /// seconds left. A later end already set is kept (and its seconds are returned).
    fn start(&self, now: Instant, retry_after: Option<u64>) -> u64 {
        let seconds = retry_after
            .unwrap_or(DEFAULT_BACKOFF_SECONDS)
            .clamp(1, MAX_BACKOFF_SECONDS);
        let end = now + Duration::from_secs(seconds);
        let mut until = self.lock();
        let end = match *until {
            Some(current) if current > end => current,
            _ => end,
        };
        *until = Some(end);
        let left = end.saturating_duration_since(now);
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }

    fn clear(&self) {
        *self.lock() = None;
    }
}

/// The proxy domains (with a port when not the scheme's default) Daytona's preview URLs are
/// under, for an API URL: Daytona cloud's for `app.daytona.io`, `proxy.localhost:4000` (the
/// self-hosted default) for a local API, else `proxy.<API host>`. `--upstream-domain` overrides.
pub fn default_upstream_domains(api: &url::Url) -> Vec<String> {
    match api.host() {
        Some(url::Host::Domain("app.daytona.io")) => {
            vec!["proxy.daytona.works".into(), "proxy.daytona.work".into()]
        }
        Some(url::Host::Domain("localhost") | url::Host::Ipv4(_) | url::Host::Ipv6(_)) | None => {
            vec!["proxy.localhost:4000".into()]
        }
        Some(url::Host::Domain(host)) => vec![format!("proxy.{host}")],
    }
}

/// The HTTP client for every outbound call (Daytona, JWKS, introspection): see
/// [`TrustRoots::http_client`].
pub fn outbound_client(timeout: Duration, trust: &TrustRoots) -> Result<reqwest::Client, String> {
    trust.http_client(timeout)
}

fn bearer(api_key: &str) -> Result<reqwest::header::HeaderValue, String> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}"))
        .map_err(|_| "the Daytona API key contains characters not allowed in a header")?;
    value.set_sensitive(true);
    Ok(value)
}

fn transport_label(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect_error"
    } else {
        "error"
    }
}

#[derive(Deserialize)]
struct PreviewUrlAnswer {
    url: String,
    token: String,
}

impl PreviewSource for DaytonaApi {
    async fn fetch(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
        self.call(target).await
    }
}

/// A transport error without the URL (which is harmless, but keeps log lines short).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        connect_failure(error)
    } else {
        error.without_url_ref().to_string()
    }
}

/// "connection failed", with the TLS reason when the handshake failed (an unknown CA: see
/// `--ca-file`).
pub(crate) fn connect_failure(error: &reqwest::Error) -> String {
    match crate::trust::tls_reason(error) {
        Some(reason) => format!("connection failed: {reason}"),
        None => "connection failed".into(),
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(url.as_str(), "<daytona api>");
        }
        text
    }
}

async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, DaytonaError> {
    read_bounded(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::Read(e) => DaytonaError::Unavailable(describe(&e)),
            BodyError::TooLarge => DaytonaError::BadAnswer("answer too large".into()),
        })
}

/// Why a bounded body read failed.
#[derive(Debug)]
pub enum BodyError {
    Read(reqwest::Error),
    TooLarge,
}

/// Reads a response body of at most `limit` bytes (refused early by Content-Length, or while
/// reading), for every outbound call: a peer cannot make us buffer more than we asked for.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Daytona's error bodies are `{"statusCode", "error", "message"}`; `message` is for people.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: serde_json::Value,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: serde_json::Value::String(m),
        }) => m.chars().take(200).collect(),
        _ => "bad request".into(),
    }
}

fn parse_answer(
    body: &[u8],
    target: &PreviewTarget,
    allowed: &[String],
) -> Result<Preview, DaytonaError> {
    let answer: PreviewUrlAnswer = serde_json::from_slice(body)
        .map_err(|_| DaytonaError::BadAnswer("not the expected JSON".into()))?;
    if answer.token.is_empty()
        || answer.token.len() > 512
        || !answer.token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(DaytonaError::BadAnswer("unusable preview token".into()));
    }
    let upstream = parse_upstream(&answer.url, target, allowed)?;
    Ok(Preview {
        token: answer.token,
        upstream,
    })
}

/// Checks the preview URL is `{port}-{id}.{an allowed proxy domain}` for the very sandbox port we
/// asked for, so a confused or compromised answer cannot send Envoy anywhere else (another
/// domain, an IP, `localhost`, another port).
fn parse_upstream(
    text: &str,
    target: &PreviewTarget,
    allowed: &[String],
) -> Result<Upstream, DaytonaError> {
    let bad = |why: &str| DaytonaError::BadAnswer(format!("preview URL {why}"));
    let url = url::Url::parse(text).map_err(|_| bad("does not parse"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(bad("has an unsupported scheme")),
    };
    let Some(url::Host::Domain(host)) = url.host() else {
        return Err(bad("has no domain name"));
    };
    let expected = format!("{target}.");
    let Some(domain) = host.strip_prefix(&expected) else {
        return Err(bad("names another sandbox or port"));
    };
    // An allow-list entry names the domain and, unless it is the scheme's default, the port.
    let domain_and_port = match url.port() {
        Some(port) => format!("{domain}:{port}"),
        None => domain.to_owned(),
    };
    if !allowed.contains(&domain_and_port) {
        return Err(bad(
            "is not under an allowed --upstream-domain (domain and port)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("carries credentials"));
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(Upstream { tls, authority })
}

/// The preview-token cache: coalescing, bounded, expiring.
///
/// A `quick_cache` (S3-FIFO eviction) keyed by the sandbox UUID's 128 bits and the port: about
/// 250 bytes an entry where moka with a `String` key took about 700 (bench/NOTES.md, finding 3).
/// Concurrent misses for one key wait on one placeholder while its holder asks Daytona. A success
/// lives `ttl` from when it was fetched; an expired entry is refetched (once, however many ask)
/// by the first request that finds it. Daytona's 404 and 400 (the sandbox or port does not
/// exist) live `negative_ttl` (zero: not kept). Any other failure is handed to exactly the
/// callers that were waiting for that call, then forgotten, so the next request asks again.
pub struct PreviewCache<S> {
    source: Arc<S>,
    cache: quick_cache::sync::Cache<PreviewKey, Slot>,
    ttl: Duration,
    negative_ttl: Duration,
    metrics: Arc<Metrics>,
}

/// A sandbox UUID and a port, in 32 bytes and no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PreviewKey {
    sandbox: u128,
    port: u16,
}

impl PreviewKey {
    /// `None` unless `sandbox_id` is a lower-case hyphenated UUID (what the host parser yields).
    fn new(sandbox_id: &str, port: u16) -> Option<Self> {
        if !crate::host::is_uuid(sandbox_id) {
            return None;
        }
        let sandbox = uuid::Uuid::try_parse(sandbox_id).ok()?.as_u128();
        Some(PreviewKey { sandbox, port })
    }
}

/// A cached answer.
#[derive(Clone)]
enum Slot {
    /// Good until `expires`.
    Ready {
        preview: Arc<Preview>,
        expires: Instant,
    },
    /// Daytona said there is no such sandbox port (404, 400): the answer until `expires`.
    Absent {
        error: Arc<DaytonaError>,
        expires: Instant,
    },
    /// The call that ended at `at` failed: the answer for whoever asked before then, never after.
    Failed {
        error: Arc<DaytonaError>,
        at: Instant,
    },
}

impl Slot {
    /// The very same answer (not merely an equal one).
    fn same(&self, other: &Slot) -> bool {
        match (self, other) {
            (Slot::Ready { preview: a, .. }, Slot::Ready { preview: b, .. }) => Arc::ptr_eq(a, b),
            (Slot::Absent { error: a, .. }, Slot::Absent { error: b, .. })
            | (Slot::Failed { error: a, .. }, Slot::Failed { error: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl<S: PreviewSource> PreviewCache<S> {
    /// `ttl` for preview tokens, `negative_ttl` for "no such sandbox" answers (zero: not kept).
    pub fn new(
        source: Arc<S>,
        ttl: Duration,
        negative_ttl: Duration,
        max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        PreviewCache {
            source,
            metrics,
            ttl,
            negative_ttl,
            cache: quick_cache::sync::Cache::new(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
            ),
        }
    }

    /// The preview for `target`, from the cache or (once for all concurrent callers) from Daytona.
    pub async fn get(&self, target: &PreviewTarget) -> Result<Arc<Preview>, Arc<DaytonaError>> {
        let asked = Instant::now();
        let Some(key) = PreviewKey::new(&target.sandbox_id, target.port) else {
            // Not a sandbox id (the host parser lets none through): nothing to share or keep.
            self.metrics.cache_miss();
            return self
                .source
                .fetch(target)
                .await
                .map(Arc::new)
                .map_err(Arc::new);
        };
        match self.cache.get(&key) {
            Some(Slot::Ready { preview, expires }) if asked < expires => {
                self.metrics.cache_hit();
                return Ok(preview);
            }
            Some(Slot::Absent { error, expires }) if asked < expires => {
                self.metrics.negative_cache_hit();
                return Err(error);
            }
            _ => {}
        }
        self.metrics.cache_miss();
        loop {
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(Slot::Ready { preview, expires }) if asked < expires => return Ok(preview),
                Ok(Slot::Absent { error, expires }) if asked < expires => return Err(error),
                Ok(Slot::Failed { error, at }) if asked <= at => return Err(error),
                Ok(stale) => {
                    // Expired, or a failure that ended before this request: drop it (unless
                    // someone replaced it meanwhile) and go round for a placeholder.
                    self.cache.remove_if(&key, |current| current.same(&stale));
                }
                Err(placeholder) => {
                    let slot = match self.source.fetch(target).await {
                        Ok(preview) => Slot::Ready {
                            preview: Arc::new(preview),
                            expires: Instant::now() + self.ttl,
                        },
                        Err(error @ (DaytonaError::NotFound | DaytonaError::BadRequest(_)))
                            if !self.negative_ttl.is_zero() =>
                        {
                            Slot::Absent {
                                error: Arc::new(error),
                                expires: Instant::now() + self.negative_ttl,
                            }
                        }
                        Err(error) => Slot::Failed {
                            error: Arc::new(error),
                            at: Instant::now(),
                        },
                    };
                    // The callers waiting on the placeholder get the slot from it directly.
                    let _ = placeholder.insert(slot.clone());
                    if matches!(slot, Slot::Failed { .. }) {
                        self.cache.remove_if(&key, |current| current.same(&slot));
                    }
                    self.metrics.set_cache_entries(self.entry_count());
                    return match slot {
                        Slot::Ready { preview, .. } => Ok(preview),
                        Slot::Absent { error, .. } | Slot::Failed { error, .. } => Err(error),
                    };
                }
            }
        }
    }

    /// Forgets one port of a sandbox, or every port of it.
    pub async fn invalidate(&self, sandbox_id: &str, port: Option<u16>) {
        // Not a sandbox id: never cached.
        let Some(key) = PreviewKey::new(sandbox_id, port.unwrap_or(0)) else {
            return;
        };
        match port {
            Some(_) => {
                self.cache.remove(&key);
            }
            None => self.cache.retain(|cached, _| cached.sandbox != key.sandbox),
        }
        self.metrics.set_cache_entries(self.entry_count());
    }

    /// Entries held, expired ones included until they are refetched or evicted.
    pub fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";

    fn target() -> PreviewTarget {
        PreviewTarget {
            sandbox_id: ID.into(),
            port: 3000,
        }
    }

    fn allowed() -> Vec<String> {
        vec!["proxy.daytona.works".into(), "proxy.localhost:4000".into()]
    }

    #[test]
    fn upstream_domains_default_from_the_api_url() {
        let domains = |u: &str| default_upstream_domains(&url::Url::parse(u).unwrap());
        assert_eq!(
            domains("https://app.daytona.io/api"),
            ["proxy.daytona.works", "proxy.daytona.work"]
        );
        assert_eq!(
            domains("http://localhost:3000/api"),
            ["proxy.localhost:4000"]
        );
        assert_eq!(
            domains("http://127.0.0.1:3000/api"),
            ["proxy.localhost:4000"]
        );
        assert_eq!(
            domains("https://daytona.example.com/api"),
            ["proxy.daytona.example.com"]
        );
    }

    #[test]
    fn accepts_the_urls_daytona_gives() {
        let cloud = parse_upstream(
            &format!("https://3000-{ID}.proxy.daytona.works"),
            &target(),
            &allowed(),
        )
        .unwrap();
        assert!(cloud.tls);
        assert_eq!(cloud.authority, format!("3000-{ID}.proxy.daytona.works"));
        let local = parse_upstream(
            &format!("http://3000-{ID}.proxy.localhost:4000/"),
            &target(),
            &allowed(),
        )
        .unwrap();
        assert!(!local.tls);
        assert_eq!(local.authority, format!("3000-{ID}.proxy.localhost:4000"));
    }

    #[test]
    fn refuses_urls_for_somewhere_else() {
        for url in [
            format!("https://3001-{ID}.proxy.daytona.works"),
            "https://evil.example.com".to_string(),
            "http://127.0.0.1:4000".to_string(),
            format!("https://3000-{ID}."),
            format!("ftp://3000-{ID}.proxy.daytona.works"),
            format!("https://user:pw@3000-{ID}.proxy.daytona.works"),
            format!("https://x3000-{ID}.proxy.daytona.works"),
            format!("https://3000-{ID}.proxy.daytona.works.evil.com"),
            format!("https://3000-{ID}.evil.com"),
            format!("https://3000-{ID}.localhost"),
            format!("https://3000-{ID}.proxy.daytona.works:9901"),
            format!("http://3000-{ID}.proxy.localhost:9901"),
            format!("http://3000-{ID}.proxy.localhost"),
        ] {
            assert!(
                parse_upstream(&url, &target(), &allowed()).is_err(),
                "{url}"
            );
        }
    }

    #[test]
    fn refuses_empty_or_odd_tokens() {
        let url = format!("https://3000-{ID}.proxy.daytona.works");
        for token in ["", "has space", "new\nline"] {
            let body = serde_json::json!({"sandboxId": ID, "url": url, "token": token});
            let body = serde_json::to_vec(&body).unwrap();
            assert!(
                parse_answer(&body, &target(), &allowed()).is_err(),
                "{token:?}"
            );
        }
        assert!(parse_answer(b"{}", &target(), &allowed()).is_err());
    }

    struct Counting {
        calls: AtomicUsize,
        fail: bool,
        /// Answer this instead (when set).
        error: Option<DaytonaError>,
    }

    impl PreviewSource for Counting {
        async fn fetch(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(error) = &self.error {
                return Err(error.clone());
            }
            if self.fail {
                return Err(DaytonaError::Unavailable("down".into()));
            }
            Ok(Preview {
                token: format!("token-{n}"),
                upstream: Upstream {
                    tls: false,
                    authority: format!("{target}.proxy.localhost"),
                },
            })
        }
    }

    fn counting(fail: bool, ttl: Duration) -> Arc<PreviewCache<Counting>> {
        Arc::new(PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail,
                error: None,
            }),
            ttl,
            Duration::ZERO,
            100,
            Arc::default(),
        ))
    }

    /// A cache whose source always answers `error`, keeping 404/400 for `negative_ttl`.
    fn answering(error: DaytonaError, negative_ttl: Duration) -> Arc<PreviewCache<Counting>> {
        Arc::new(PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail: false,
                error: Some(error),
            }),
            Duration::from_secs(60),
            negative_ttl,
            100,
            Arc::default(),
        ))
    }

    /// `n` concurrent callers of `get(target())`, each one's answer.
    async fn burst(
        cache: &Arc<PreviewCache<Counting>>,
        n: usize,
    ) -> Vec<Result<Arc<Preview>, Arc<DaytonaError>>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let cache = Arc::clone(cache);
                tokio::spawn(async move { cache.get(&target()).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(n);
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_call() {
        let cache = counting(false, Duration::from_secs(60));
        for answer in burst(&cache, 50).await {
            assert_eq!(answer.unwrap().token, "token-0");
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_invalidation_refetches() {
        let failing = counting(true, Duration::from_secs(60));
        assert!(failing.get(&target()).await.is_err());
        assert!(failing.get(&target()).await.is_err());
        assert_eq!(failing.source.calls.load(Ordering::SeqCst), 2);

        let cache = counting(false, Duration::from_secs(60));
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        cache.invalidate(ID, Some(3000)).await;
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-1");
        cache.invalidate(ID, None).await;
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-2");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failure_and_the_next_caller_asks_again() {
        let cache = counting(true, Duration::from_secs(60));
        for answer in burst(&cache, 50).await {
            assert!(answer.is_err());
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.entry_count(), 0, "a failure is not kept");
        assert!(cache.get(&target()).await.is_err());
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_entry_is_fetched_again_once_for_all_callers() {
        let cache = counting(false, Duration::from_millis(100));
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        tokio::time::sleep(Duration::from_millis(150)).await;
        for answer in burst(&cache, 20).await {
            assert_eq!(answer.unwrap().token, "token-1");
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.entry_count(), 1);
    }

    #[tokio::test]
    async fn ports_and_sandboxes_are_separate_entries_and_invalidation_is_per_sandbox() {
        let cache = counting(false, Duration::from_secs(60));
        let other = "1b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
        let at = |sandbox: &str, port| PreviewTarget {
            sandbox_id: sandbox.into(),
            port,
        };
        for t in [at(ID, 3000), at(ID, 8080), at(other, 3000)] {
            cache.get(&t).await.unwrap();
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 3);
        cache.invalidate(ID, None).await;
        assert_eq!(cache.entry_count(), 1);
        cache.get(&at(other, 3000)).await.unwrap();
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 3, "still cached");
        // Not a sandbox id: answered, never cached.
        cache.get(&at("not-a-uuid", 3000)).await.unwrap();
        cache.get(&at("not-a-uuid", 3000)).await.unwrap();
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn no_such_sandbox_answers_are_kept_for_the_negative_ttl() {
        for error in [
            DaytonaError::NotFound,
            DaytonaError::BadRequest("Invalid port".into()),
        ] {
            let cache = answering(error.clone(), Duration::from_millis(200));
            for answer in burst(&cache, 20).await {
                assert_eq!(*answer.unwrap_err(), error);
            }
            for _ in 0..20 {
                assert_eq!(*cache.get(&target()).await.unwrap_err(), error);
            }
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1, "{error}");
            assert!(
                cache
                    .metrics
                    .encode()
                    .contains("daytona_authz_preview_cache_negative_hits_total 20")
            );
            // Invalidation forgets it at once; otherwise it expires.
            cache.invalidate(ID, None).await;
            assert!(cache.get(&target()).await.is_err());
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(cache.get(&target()).await.is_err());
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 3);
        }
    }

    #[tokio::test]
    async fn other_failures_and_a_zero_negative_ttl_keep_nothing() {
        for (error, negative_ttl) in [
            (DaytonaError::NotFound, Duration::ZERO),
            (
                DaytonaError::RateLimited {
                    retry_after: Some(7),
                },
                Duration::from_secs(60),
            ),
            (DaytonaError::Unauthorized(401), Duration::from_secs(60)),
        ] {
            let cache = answering(error.clone(), negative_ttl);
            assert!(cache.get(&target()).await.is_err());
            assert!(cache.get(&target()).await.is_err());
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2, "{error}");
            assert_eq!(cache.entry_count(), 0);
        }
    }

    #[test]
    fn a_rate_limit_backs_off_for_retry_after_within_bounds() {
        let backoff = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(backoff.remaining(t0), None);
        assert_eq!(backoff.start(t0, Some(7)), 7);
        assert_eq!(backoff.remaining(t0), Some(7));
        assert_eq!(backoff.remaining(t0 + Duration::from_millis(500)), Some(7));
        assert_eq!(backoff.remaining(t0 + Duration::from_millis(6500)), Some(1));
        assert_eq!(backoff.remaining(t0 + Duration::from_secs(7)), None);
        // A shorter back-off does not cut a longer one short.
        assert_eq!(
            backoff.start(t0, Some(2)),
            7,
            "the time actually left is told"
        );
        assert_eq!(backoff.remaining(t0 + Duration::from_secs(3)), Some(4));
        backoff.clear();
        assert_eq!(backoff.remaining(t0), None);
        // No Retry-After: 5 s; 0 or huge: 1 s to 5 min.
        assert_eq!(Backoff::default().start(t0, None), 5);
        assert_eq!(Backoff::default().start(t0, Some(0)), 1);
        assert_eq!(Backoff::default().start(t0, Some(86_400)), 300);
    }

    #[test]
    fn a_preview_key_is_the_uuid_as_a_number() {
        let key = PreviewKey::new(ID, 3000).unwrap();
        assert_eq!(key.sandbox, 0x0b8f2a4e_6c1d_4f3a_9e2b_7d5c8a1f0e93);
        assert_eq!(key.port, 3000);
        assert!(PreviewKey::new(&ID.to_uppercase(), 3000).is_none());
        assert!(PreviewKey::new("0b8f2a4e6c1d4f3a9e2b7d5c8a1f0e93", 3000).is_none());
    }
}
