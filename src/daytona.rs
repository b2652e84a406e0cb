//! The Daytona API client and the preview-token cache in front of it.
//!
//! One call per (sandbox, port) however many requests arrive at once: concurrent misses for one
//! key wait on the same API call (moka's `try_get_with`), and failures are never cached, so the next
//! request after a failure asks again. Entries live `--cache-ttl`, which bounds how long a token
//! that Daytona regenerated on a sandbox restart can be served stale.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::host::PreviewTarget;
use crate::metrics::Metrics;

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
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let http = outbound_client(timeout)?;
        Ok(DaytonaApi {
            http,
            base,
            authorization: ArcSwap::from_pointee(bearer(api_key)?),
            slots: tokio::sync::Semaphore::new(max_in_flight),
            timeout,
            metrics,
            answered: tokio::sync::watch::channel(false).0,
            upstream_domains,
        })
    }

    /// Uses `api_key` from the next call on (SIGHUP reload).
    pub fn set_api_key(&self, api_key: &str) -> Result<(), String> {
        self.authorization.store(Arc::new(bearer(api_key)?));
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

    async fn call(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
        let started = std::time::Instant::now();
        let Ok(Ok(_slot)) = tokio::time::timeout(self.timeout, self.slots.acquire()).await else {
            self.metrics.api_call("overloaded", started.elapsed());
            return Err(DaytonaError::Unavailable(
                "too many Daytona API calls in flight".into(),
            ));
        };
        let response = self
            .http
            .get(self.preview_url(target))
            .header(
                reqwest::header::AUTHORIZATION,
                (**self.authorization.load()).clone(),
            )
            .header(reqwest::header::ACCEPT, "application/json")
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
            429 => Err(DaytonaError::RateLimited { retry_after }),
            500..=599 => Err(DaytonaError::Unavailable(format!("HTTP {status}"))),
            other => Err(DaytonaError::BadAnswer(format!("HTTP {other}"))),
        }
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

/// The HTTP client for every outbound call (Daytona, JWKS, introspection): rustls, `timeout`
/// bounding connection and whole call, no redirects followed, our user agent.
pub fn outbound_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("daytona-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
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
        "connection failed".into()
    } else {
        error.without_url_ref().to_string()
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
pub struct PreviewCache<S> {
    source: Arc<S>,
    cache: moka::future::Cache<PreviewTarget, Arc<Preview>>,
    metrics: Arc<Metrics>,
}

impl<S: PreviewSource> PreviewCache<S> {
    pub fn new(source: Arc<S>, ttl: Duration, max_entries: u64, metrics: Arc<Metrics>) -> Self {
        PreviewCache {
            source,
            metrics,
            cache: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_entries)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The preview for `target`, from the cache or (once for all concurrent callers) from Daytona.
    pub async fn get(&self, target: &PreviewTarget) -> Result<Arc<Preview>, Arc<DaytonaError>> {
        if let Some(hit) = self.cache.get(target).await {
            self.metrics.cache_hit();
            return Ok(hit);
        }
        self.metrics.cache_miss();
        let source = Arc::clone(&self.source);
        let key = target.clone();
        let result = self
            .cache
            .try_get_with_by_ref(
                target,
                async move { source.fetch(&key).await.map(Arc::new) },
            )
            .await;
        // Only on a miss: entry_count lags until moka's pending housekeeping has run.
        self.cache.run_pending_tasks().await;
        self.metrics.set_cache_entries(self.cache.entry_count());
        result
    }

    /// Forgets one port of a sandbox, or every port of it.
    pub async fn invalidate(&self, sandbox_id: &str, port: Option<u16>) {
        match port {
            Some(port) => {
                self.cache
                    .invalidate(&PreviewTarget {
                        sandbox_id: sandbox_id.to_owned(),
                        port,
                    })
                    .await
            }
            None => {
                let id = sandbox_id.to_owned();
                // Only fails when invalidation closures are not enabled, which `new` does.
                let _ = self
                    .cache
                    .invalidate_entries_if(move |key, _| key.sandbox_id == id);
            }
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
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
    }

    impl PreviewSource for Counting {
        async fn fetch(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
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

    #[tokio::test]
    async fn concurrent_misses_make_one_call() {
        let cache = Arc::new(PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail: false,
            }),
            Duration::from_secs(60),
            100,
            Arc::default(),
        ));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.get(&target()).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().token, "token-0");
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_invalidation_refetches() {
        let failing = PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail: true,
            }),
            Duration::from_secs(60),
            100,
            Arc::default(),
        );
        assert!(failing.get(&target()).await.is_err());
        assert!(failing.get(&target()).await.is_err());
        assert_eq!(failing.source.calls.load(Ordering::SeqCst), 2);

        let cache = PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail: false,
            }),
            Duration::from_secs(60),
            100,
            Arc::default(),
        );
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        cache.invalidate(ID, Some(3000)).await;
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-1");
        cache.invalidate(ID, None).await;
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-2");
    }
}
