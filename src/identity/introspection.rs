//! RFC 7662 token introspection: asking a platform's control plane about opaque access tokens.
//!
//! The control plane says whether a token is active and, if so, with which claims; the caller maps
//! those claims to a sandbox and ports with its own claim names. Every failure to get a clear
//! answer is an [`IntrospectionError`], which the caller turns into 503: an unknown token is never
//! let in.
//!
//! Answers are cached under the token's SHA-256 (never the token itself): active ones for
//! `positive_ttl`, cut short at the token's `exp`; inactive ones for `negative_ttl`. Failures are
//! never cached. Concurrent look-ups of one token wait on the same call ([`CoalescingCache`]).
//!
//! Calls share [`MAX_IN_FLIGHT`] slots. A token whose introspection was never seen active (made-up
//! garbage, or a user's first request) must also get one of the few slots and a token from the
//! rate bucket of its own [`UnknownBudget`]; without them it is refused at once
//! ([`IntrospectionError::Shed`], 503) and the endpoint is not called. A token once seen active is
//! remembered (by digest) until its `exp`, at most [`KNOWN_FOR`], well past its cached answer, so
//! re-checking it keeps the remaining slots however much garbage arrives.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cache::CoalescingCache;
use crate::metrics::Metrics;
use crate::outbound::ClientError;

/// What the control plane says about a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Introspection {
    /// The whole answer object (`active` included), for the caller's claim mapping.
    Active(Map<String, Value>),
    /// `active` was not `true`, or the token's `exp` has passed.
    Inactive,
}

/// Why there is no answer. None of these messages carries the token or the client secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    /// Unreachable, timed out, overloaded, rate limiting us (429) or failing (5xx).
    #[error("the introspection endpoint is unavailable: {0}")]
    Unavailable(String),
    /// The endpoint refused our client credentials.
    #[error("the introspection endpoint refused our client credentials (HTTP {0})")]
    Refused(u16),
    /// An answer that is not an RFC 7662 one.
    #[error("the introspection endpoint answered something unusable: {0}")]
    BadAnswer(String),
    /// A never-seen token over its budget: refused without calling the endpoint.
    #[error("introspection of a never-seen token shed: {0}")]
    Shed(Shed),
}

/// Which part of the [`UnknownBudget`] was used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("too many in flight")]
    Concurrency,
    #[error("over the rate limit")]
    Rate,
}

impl Shed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Shed::Concurrency => "concurrency",
            Shed::Rate => "rate",
        }
    }
}

/// How much introspection tokens never seen active may use: their own slots (out of
/// [`MAX_IN_FLIGHT`]) and a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnknownBudget {
    /// Most calls about never-seen tokens in flight at once.
    pub concurrency: usize,
    /// Calls about never-seen tokens per second, on average.
    pub rate: f64,
    /// Calls about never-seen tokens allowed at once above the rate (the bucket's size).
    pub burst: u32,
}

impl Default for UnknownBudget {
    fn default() -> Self {
        UnknownBudget {
            concurrency: 16,
            rate: 50.0,
            burst: 100,
        }
    }
}

/// Where and how to introspect, and how long to remember answers.
#[derive(Clone)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (`http` or `https`).
    pub url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    /// Bounds each call (connecting, waiting for a free slot, and reading the answer).
    pub timeout: Duration,
    /// How long an active answer is remembered (never past the token's `exp`).
    pub positive_ttl: Duration,
    /// How long an inactive answer is remembered; shorter, so a fresh token works soon.
    pub negative_ttl: Duration,
    /// Most answers remembered at once (and most tokens remembered as seen active).
    pub max_entries: u64,
    /// What never-seen tokens may use.
    pub unknown: UnknownBudget,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("positive_ttl", &self.positive_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_entries", &self.max_entries)
            .field("unknown", &self.unknown)
            .finish()
    }
}

/// Limits on what we read from the endpoint and how many calls we keep open.
const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a token seen active counts as known, unless its `exp` comes first.
pub const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

/// The cache key: SHA-256 of the token, so no raw token sits in memory longer than a request.
type TokenKey = [u8; 32];

/// A cached answer and how long it may be served.
#[derive(Debug)]
struct Answer {
    introspection: Introspection,
    /// The token's `exp` (seconds since the epoch), re-checked on every cache hit.
    exp: Option<f64>,
    ttl: Duration,
}

impl Answer {
    fn inactive(ttl: Duration) -> Self {
        Answer {
            introspection: Introspection::Inactive,
            exp: None,
            ttl,
        }
    }

    /// What to tell a caller at `now`: an active answer whose `exp` has passed is inactive.
    fn at(&self, now: SystemTime) -> Introspection {
        match self.exp {
            Some(exp) if exp <= unix_seconds(now) => Introspection::Inactive,
            _ => self.introspection.clone(),
        }
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    state: std::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst);
        TokenBucket {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, now)),
        }
    }

    /// Takes one token at `now`, if there is one.
    fn take(&self, now: Instant) -> bool {
        // Nothing can panic while the lock is held, so a poisoned lock still holds good numbers.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, then) = *state;
        let refill = now.saturating_duration_since(then).as_secs_f64() * self.rate;
        let tokens = (tokens + refill).min(self.burst);
        let (tokens, taken) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        *state = (tokens, now.max(then));
        taken
    }
}

/// The introspection client and its answer cache.
pub struct Introspector {
    http: reqwest::Client,
    url: url::Url,
    /// `client_id` and `client_secret` form-urlencoded (RFC 6749 §2.3.1), ready for Basic.
    client_id: String,
    client_secret: ArcSwap<String>,
    /// Bounds the calls in flight, so a flood of made-up tokens cannot pile up sockets.
    slots: tokio::sync::Semaphore,
    /// Slots a call about a never-seen token needs too (never waited for).
    unknown_slots: tokio::sync::Semaphore,
    /// Calls about never-seen tokens over time.
    unknown_rate: TokenBucket,
    /// Digests of tokens seen active, each until its `exp` (at most [`KNOWN_FOR`]).
    known: quick_cache::sync::Cache<TokenKey, Instant>,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    cache: CoalescingCache<TokenKey, Answer, IntrospectionError>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// With the compiled-in roots only (see [`Introspector::new_trusting`]).
    pub fn new(config: IntrospectionConfig, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        Introspector::new_trusting(
            config,
            &crate::outbound::trust::TrustRoots::compiled_in(),
            metrics,
        )
    }

    /// An HTTPS endpoint is verified against `trust` (`--ca-file`).
    pub fn new_trusting(
        config: IntrospectionConfig,
        trust: &crate::outbound::trust::TrustRoots,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClientError> {
        if !matches!(config.url.scheme(), "http" | "https") {
            return Err(ClientError::Invalid(
                "the introspection URL must be http or https".into(),
            ));
        }
        if !config.url.username().is_empty() || config.url.password().is_some() {
            return Err(ClientError::Invalid(
                "the introspection URL must not carry credentials; use the client id and secret"
                    .into(),
            ));
        }
        if config.client_id.is_empty() {
            return Err(ClientError::Invalid(
                "the introspection client id is empty".into(),
            ));
        }
        if config.timeout.is_zero() {
            return Err(ClientError::Invalid(
                "the introspection timeout must be above zero".into(),
            ));
        }
        let unknown = config.unknown;
        if !(1..MAX_IN_FLIGHT).contains(&unknown.concurrency) {
            return Err(ClientError::Invalid(format!(
                "calls about never-seen tokens must be limited to 1-{} at once",
                MAX_IN_FLIGHT - 1
            )));
        }
        if !(unknown.rate.is_finite() && unknown.rate > 0.0) || unknown.burst == 0 {
            return Err(ClientError::Invalid(
                "the rate and burst of calls about never-seen tokens must be above zero".into(),
            ));
        }
        let http = crate::outbound::outbound_client(config.timeout, trust)?;
        Ok(Introspector {
            http,
            url: config.url,
            client_id: form_encode(&config.client_id),
            client_secret: ArcSwap::from_pointee(form_encode(&config.client_secret)),
            slots: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            unknown_slots: tokio::sync::Semaphore::new(unknown.concurrency),
            unknown_rate: TokenBucket::new(unknown.rate, unknown.burst, Instant::now()),
            known: quick_cache::sync::Cache::new(
                usize::try_from(config.max_entries).unwrap_or(usize::MAX),
            ),
            timeout: config.timeout,
            positive_ttl: config.positive_ttl,
            negative_ttl: config.negative_ttl,
            cache: CoalescingCache::new(config.max_entries),
            metrics,
        })
    }

    /// Uses `secret` from the next call on (SIGHUP reload). Cached answers stay.
    pub fn set_client_secret(&self, secret: &str) {
        self.client_secret.store(Arc::new(form_encode(secret)));
    }

    /// What the control plane says about `token`, from the cache or (once for all concurrent
    /// callers) from the endpoint.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, Arc<IntrospectionError>> {
        let key = token_key(token);
        let asked = Instant::now();
        if let Some(Ok(hit)) = self.cache.cached(&key, asked) {
            self.metrics.introspection_cache_hit();
            return Ok(hit.at(SystemTime::now()));
        }
        self.metrics.introspection_cache_miss();
        let answer = self
            .cache
            .get_or_fetch(
                &key,
                asked,
                || self.budgeted_call(&key, token),
                |answer| answer.as_ref().ok().map(|answer| answer.ttl),
            )
            .await?;
        Ok(answer.at(SystemTime::now()))
    }

    /// Calls the endpoint about a known token, or about a never-seen one within its budget; and
    /// remembers which tokens were seen active.
    async fn budgeted_call(
        &self,
        key: &TokenKey,
        token: &str,
    ) -> Result<Answer, IntrospectionError> {
        let _unknown_slot = if self.is_known(key, Instant::now()) {
            None
        } else {
            Some(self.admit_unknown().map_err(|shed| {
                self.metrics.introspection_shed(shed.label());
                IntrospectionError::Shed(shed)
            })?)
        };
        let answer = self.call(token).await;
        match &answer {
            Ok(Answer {
                introspection: Introspection::Active(_),
                exp,
                ..
            }) => {
                let ttl = match exp {
                    None => KNOWN_FOR,
                    Some(exp) => {
                        let left = (exp - unix_seconds(SystemTime::now())).max(0.0);
                        Duration::try_from_secs_f64(left)
                            .map_or(KNOWN_FOR, |left| left.min(KNOWN_FOR))
                    }
                };
                self.known.insert(*key, Instant::now() + ttl);
            }
            // No longer active (expired, revoked): a stranger again.
            Ok(_) => {
                self.known.remove(key);
            }
            Err(_) => {}
        }
        answer
    }

    /// Drops cached answers (and their claims) and known tokens whose time has passed.
    pub fn remove_expired(&self) {
        let now = Instant::now();
        self.cache.remove_expired(now);
        self.known.retain(|_, until| now < *until);
    }

    /// Whether the token was seen active and its `exp` has not passed at `now`.
    fn is_known(&self, key: &TokenKey, now: Instant) -> bool {
        self.known.get(key).is_some_and(|until| now < until)
    }

    /// A slot and a rate token for a call about a never-seen token, or why not. Never waits: a
    /// flood is refused at once instead of queueing.
    fn admit_unknown(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Shed> {
        let slot = self
            .unknown_slots
            .try_acquire()
            .map_err(|_| Shed::Concurrency)?;
        if !self.unknown_rate.take(Instant::now()) {
            return Err(Shed::Rate);
        }
        Ok(slot)
    }

    /// Nothing of the token in the span (`skip_all`): only how the endpoint answered.
    #[tracing::instrument(
        level = "debug",
        name = "introspection",
        skip_all,
        fields(
            otel.kind = "client",
            http.response.status_code = tracing::field::Empty,
            outcome = tracing::field::Empty,
        )
    )]
    async fn call(&self, token: &str) -> Result<Answer, IntrospectionError> {
        let started = std::time::Instant::now();
        let Ok(Ok(_slot)) = tokio::time::timeout(self.timeout, self.slots.acquire()).await else {
            self.metrics
                .introspection_call("overloaded", started.elapsed());
            tracing::Span::current().record("outcome", "overloaded");
            return Err(IntrospectionError::Unavailable(
                "too many introspection calls in flight".into(),
            ));
        };
        // The token travels only in the body, never in the URL (RFC 7662 §2.1).
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let response = self
            .http
            .post(self.url.clone())
            .basic_auth(&self.client_id, Some(&**self.client_secret.load()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                self.metrics
                    .introspection_call(transport_label(&e), started.elapsed());
                tracing::Span::current().record("outcome", transport_label(&e));
                return Err(IntrospectionError::Unavailable(describe(&e)));
            }
        };
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        let body = match status {
            200 => read_limited(response).await,
            // Nothing else is read: the status says it all.
            _ => Ok(Vec::new()),
        };
        let result = match status {
            200 => body.and_then(|body| {
                judge(
                    &body,
                    SystemTime::now(),
                    self.positive_ttl,
                    self.negative_ttl,
                )
            }),
            401 | 403 => Err(IntrospectionError::Refused(status)),
            429 => Err(IntrospectionError::Unavailable(
                "rate limited (HTTP 429)".into(),
            )),
            500..=599 => Err(IntrospectionError::Unavailable(format!("HTTP {status}"))),
            other => Err(IntrospectionError::BadAnswer(format!("HTTP {other}"))),
        };
        let label = match &result {
            Ok(Answer {
                introspection: Introspection::Active(_),
                ..
            }) => "active",
            Ok(_) => "inactive",
            Err(IntrospectionError::Refused(_)) => "refused",
            Err(IntrospectionError::Unavailable(_)) if status == 429 => "rate_limited",
            Err(IntrospectionError::Unavailable(_)) if status >= 500 => "server_error",
            Err(IntrospectionError::Unavailable(_)) => "error",
            Err(IntrospectionError::BadAnswer(_)) => "bad_answer",
            // Shed before any call: counted in introspection_shed instead.
            Err(IntrospectionError::Shed(_)) => "shed",
        };
        self.metrics.introspection_call(label, started.elapsed());
        tracing::Span::current().record("outcome", label);
        result
    }
}

/// Reads an RFC 7662 answer: `active` must be JSON `true`; an active token's `exp` bounds how long
/// the answer is kept, and one already past makes the token inactive.
fn judge(
    body: &[u8],
    now: SystemTime,
    positive_ttl: Duration,
    negative_ttl: Duration,
) -> Result<Answer, IntrospectionError> {
    let bad = |why: &str| IntrospectionError::BadAnswer(why.into());
    let Value::Object(claims) = serde_json::from_slice(body).map_err(|_| bad("not JSON"))? else {
        return Err(bad("not a JSON object"));
    };
    if claims.get("active") != Some(&Value::Bool(true)) {
        return Ok(Answer::inactive(negative_ttl));
    }
    let exp = match claims.get("exp") {
        None => None,
        Some(exp) => Some(exp.as_f64().ok_or_else(|| bad("exp is not a number"))?),
    };
    let ttl = match exp {
        None => positive_ttl,
        Some(exp) => {
            let left = exp - unix_seconds(now);
            if left <= 0.0 {
                return Ok(Answer::inactive(negative_ttl));
            }
            // A far-future `exp` that overflows a Duration is simply later than `positive_ttl`.
            Duration::try_from_secs_f64(left).map_or(positive_ttl, |left| left.min(positive_ttl))
        }
    };
    Ok(Answer {
        introspection: Introspection::Active(claims),
        exp,
        ttl,
    })
}

fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

fn unix_seconds(now: SystemTime) -> f64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// RFC 6749 §2.3.1: client id and secret are form-urlencoded before going into Basic.
fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
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

/// A transport error without the URL; reqwest's errors never carry the body, so neither the
/// token nor the secret can appear.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        crate::outbound::connect_failure(error)
    } else {
        let mut text = error.to_string();
        if let Some(url) = error.url() {
            text = text.replace(url.as_str(), "<introspection endpoint>");
        }
        text
    }
}

async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, IntrospectionError> {
    crate::outbound::read_bounded(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            crate::outbound::BodyError::Read(e) => IntrospectionError::Unavailable(describe(&e)),
            crate::outbound::BodyError::TooLarge => {
                IntrospectionError::BadAnswer("answer too large".into())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use serde_json::json;

    const CLIENT_ID: &str = "authz client";
    const SECRET: &str = "s3cr:t+/= é";
    /// `Basic base64("authz+client:s3cr%3At%2B%2F%3D+%C3%A9")`: both halves form-urlencoded
    /// first (RFC 6749 §2.3.1), worked out by hand so the test does not share the code under test.
    const EXPECTED_AUTHORIZATION: &str =
        "Basic YXV0aHorY2xpZW50OnMzY3IlM0F0JTJCJTJGJTNEKyVDMyVBOQ==";
    const PATH: &str = "/oauth2/introspect";

    /// Characters that need form encoding, so a sloppy body would not round-trip.
    const ACTIVE: &str = "opaque+/=&token value";
    const INACTIVE: &str = "inactive-token";
    const EXPIRED: &str = "expired-token";
    const SHORT: &str = "short-lived-token";
    const BOOM: &str = "boom-token";
    const SANDBOX: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A local introspection endpoint: checks what a real one would, counts calls per token and
    /// answers from a table. Anything odd about a request lands in `problems`.
    struct Endpoint {
        url: url::Url,
        calls: Mutex<HashMap<String, usize>>,
        problems: Mutex<Vec<String>>,
        /// `exp` of `SHORT`: one to two seconds after start.
        short_exp: u64,
        /// `held-*` tokens are answered (inactive) only once this turns true.
        released: tokio::sync::watch::Sender<bool>,
        /// `held-*` calls waiting for that.
        held: std::sync::atomic::AtomicUsize,
    }

    impl Endpoint {
        async fn start() -> Arc<Endpoint> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let endpoint = Arc::new(Endpoint {
                url: format!("http://{addr}{PATH}").parse().unwrap(),
                calls: Mutex::default(),
                problems: Mutex::default(),
                short_exp: now_secs() + 2,
                released: tokio::sync::watch::Sender::new(false),
                held: std::sync::atomic::AtomicUsize::new(0),
            });
            let app = axum::Router::new()
                .fallback(answer)
                .with_state(Arc::clone(&endpoint));
            // Bound before we return, so the first request queues instead of failing.
            tokio::spawn(async move { axum::serve(listener, app).await });
            endpoint
        }

        fn calls(&self, token: &str) -> usize {
            self.calls.lock().unwrap().get(token).copied().unwrap_or(0)
        }

        fn total_calls(&self) -> usize {
            self.calls.lock().unwrap().values().sum()
        }

        fn held(&self) -> usize {
            self.held.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn release(&self) {
            self.released.send_replace(true);
        }

        fn assert_clean(&self) {
            let problems = self.problems.lock().unwrap();
            assert!(problems.is_empty(), "bad requests: {problems:?}");
        }

        fn config(&self) -> IntrospectionConfig {
            IntrospectionConfig {
                url: self.url.clone(),
                client_id: CLIENT_ID.into(),
                client_secret: SECRET.into(),
                timeout: Duration::from_secs(5),
                positive_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
                max_entries: 1000,
                unknown: UnknownBudget::default(),
            }
        }

        fn introspector(&self) -> Introspector {
            Introspector::new(self.config(), Arc::default()).unwrap()
        }
    }

    async fn answer(
        State(endpoint): State<Arc<Endpoint>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let mut problems = Vec::new();
        if method != Method::POST {
            problems.push(format!("method {method}"));
        }
        if uri.path() != PATH || uri.query().is_some() {
            problems.push(format!("URL {uri}"));
        }
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        if header(header::CONTENT_TYPE) != Some("application/x-www-form-urlencoded") {
            problems.push(format!("content-type {:?}", header(header::CONTENT_TYPE)));
        }
        if header(header::ACCEPT) != Some("application/json") {
            problems.push(format!("accept {:?}", header(header::ACCEPT)));
        }
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let token = match pairs.as_slice() {
            [(t, token), (h, hint)] if t == "token" && h == "token_type_hint" => {
                if hint != "access_token" {
                    problems.push(format!("hint {hint}"));
                }
                token.clone()
            }
            _ => {
                problems.push(format!("body {pairs:?}"));
                String::new()
            }
        };
        // The token travels in the form body and nowhere else.
        for (name, value) in &headers {
            if !token.is_empty()
                && value
                    .as_bytes()
                    .windows(token.len())
                    .any(|w| w == token.as_bytes())
            {
                problems.push(format!("token in header {name}"));
            }
        }
        let problem = !problems.is_empty();
        endpoint.problems.lock().unwrap().extend(problems);
        *endpoint
            .calls
            .lock()
            .unwrap()
            .entry(token.clone())
            .or_default() += 1;
        if problem {
            return StatusCode::BAD_REQUEST.into_response();
        }
        if header(header::AUTHORIZATION) != Some(EXPECTED_AUTHORIZATION) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_client"})),
            )
                .into_response();
        }

        let active = |exp: u64| {
            axum::Json(json!({
                "active": true,
                "sandbox_id": SANDBOX,
                "ports": [3000],
                "exp": exp,
                "scope": "preview",
            }))
            .into_response()
        };
        if token.starts_with("held-") {
            endpoint
                .held
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut released = endpoint.released.subscribe();
            let _ = released.wait_for(|released| *released).await;
            return axum::Json(json!({"active": false})).into_response();
        }
        if let Some(ms) = token.strip_prefix("slow-") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            return active(now_secs() + 3600);
        }
        let raw = |status: StatusCode, body: &'static str| (status, body).into_response();
        match token.as_str() {
            ACTIVE => active(now_secs() + 3600),
            SHORT => active(endpoint.short_exp),
            EXPIRED => active(now_secs() - 10),
            INACTIVE => axum::Json(json!({"active": false})).into_response(),
            BOOM => raw(StatusCode::INTERNAL_SERVER_ERROR, "oops"),
            "no-exp" => axum::Json(json!({"active": true, "sandbox_id": SANDBOX})).into_response(),
            "busy" => raw(StatusCode::TOO_MANY_REQUESTS, ""),
            "forbidden" => raw(StatusCode::FORBIDDEN, ""),
            "unknown-path" => raw(StatusCode::NOT_FOUND, ""),
            "redirect" => (
                StatusCode::FOUND,
                [(header::LOCATION, endpoint.url.to_string())],
            )
                .into_response(),
            "html" => raw(StatusCode::OK, "<html>login</html>"),
            "array" => raw(StatusCode::OK, "[true]"),
            "no-active" => raw(StatusCode::OK, r#"{"sandbox_id":"x"}"#),
            "string-active" => raw(StatusCode::OK, r#"{"active":"true"}"#),
            "string-exp" => raw(StatusCode::OK, r#"{"active":true,"exp":"soon"}"#),
            "huge" => (
                StatusCode::OK,
                format!(r#"{{"active":true,"pad":"{}"}}"#, "x".repeat(70_000)),
            )
                .into_response(),
            _ => axum::Json(json!({"active": false})).into_response(),
        }
    }

    /// Calls `introspect` until `done` says so, for at most five seconds.
    async fn poll_until(mut done: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "gave up waiting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn active_token_returns_its_claims() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        let Introspection::Active(claims) = introspector.introspect(ACTIVE).await.unwrap() else {
            panic!("not active");
        };
        assert_eq!(claims["active"], json!(true));
        assert_eq!(claims["sandbox_id"], json!(SANDBOX));
        assert_eq!(claims["ports"], json!([3000]));
        assert_eq!(claims["scope"], json!("preview"));
        assert!(claims["exp"].as_u64().unwrap() > now_secs());
        assert_eq!(endpoint.calls(ACTIVE), 1);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn inactive_token_is_inactive() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        assert_eq!(
            introspector.introspect(INACTIVE).await.unwrap(),
            Introspection::Inactive
        );
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn wrong_client_secret_is_refused_until_reloaded() {
        let endpoint = Endpoint::start().await;
        let introspector = Introspector::new(
            IntrospectionConfig {
                client_secret: "not-the-secret".into(),
                ..endpoint.config()
            },
            Arc::default(),
        )
        .unwrap();
        let error = introspector.introspect(ACTIVE).await.unwrap_err();
        assert_eq!(*error, IntrospectionError::Refused(401));
        assert!(!error.to_string().contains("not-the-secret"));

        // SIGHUP: the right secret from the next call on; the refusal was not cached.
        introspector.set_client_secret(SECRET);
        assert!(matches!(
            introspector.introspect(ACTIVE).await.unwrap(),
            Introspection::Active(_)
        ));
        assert_eq!(endpoint.calls(ACTIVE), 2);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn server_error_is_unavailable_and_not_cached() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        for _ in 0..2 {
            let error = introspector.introspect(BOOM).await.unwrap_err();
            assert_eq!(*error, IntrospectionError::Unavailable("HTTP 500".into()));
        }
        assert_eq!(endpoint.calls(BOOM), 2);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_unavailable() {
        // A port that was free a moment ago and has nobody listening now.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let introspector = Introspector::new(
            IntrospectionConfig {
                url: format!("http://{addr}{PATH}").parse().unwrap(),
                client_id: CLIENT_ID.into(),
                client_secret: SECRET.into(),
                timeout: Duration::from_secs(5),
                positive_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
                max_entries: 10,
                unknown: UnknownBudget::default(),
            },
            Arc::default(),
        )
        .unwrap();
        let error = introspector.introspect(ACTIVE).await.unwrap_err();
        assert!(
            matches!(*error, IntrospectionError::Unavailable(_)),
            "{error:?}"
        );
        assert!(!error.to_string().contains(ACTIVE));
        assert!(!error.to_string().contains(SECRET));
    }

    #[tokio::test]
    async fn slow_endpoint_times_out() {
        let endpoint = Endpoint::start().await;
        let introspector = Introspector::new(
            IntrospectionConfig {
                timeout: Duration::from_millis(200),
                ..endpoint.config()
            },
            Arc::default(),
        )
        .unwrap();
        let error = introspector.introspect("slow-3000").await.unwrap_err();
        assert_eq!(*error, IntrospectionError::Unavailable("timed out".into()));
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn positive_answers_are_cached() {
        let endpoint = Endpoint::start().await;
        let metrics = Arc::new(Metrics::new());
        let introspector = Introspector::new(endpoint.config(), Arc::clone(&metrics)).unwrap();
        let first = introspector.introspect(ACTIVE).await.unwrap();
        let second = introspector.introspect(ACTIVE).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(endpoint.calls(ACTIVE), 1);
        let text = metrics.encode();
        for needle in [
            "daytona_authz_introspection_calls_total{result=\"active\"} 1",
            "daytona_authz_introspection_cache_hits_total 1",
            "daytona_authz_introspection_cache_misses_total 1",
            "daytona_authz_introspection_duration_seconds_count 1",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn negative_answers_are_cached_shorter() {
        let endpoint = Endpoint::start().await;
        let introspector = Introspector::new(
            IntrospectionConfig {
                negative_ttl: Duration::from_millis(200),
                ..endpoint.config()
            },
            Arc::default(),
        )
        .unwrap();
        for token in [ACTIVE, INACTIVE, ACTIVE, INACTIVE] {
            introspector.introspect(token).await.unwrap();
        }
        assert_eq!(endpoint.calls(INACTIVE), 1);

        poll_until(async || {
            introspector.introspect(INACTIVE).await.unwrap();
            endpoint.calls(INACTIVE) == 2
        })
        .await;
        // The active answer outlives the inactive one.
        introspector.introspect(ACTIVE).await.unwrap();
        assert_eq!(endpoint.calls(ACTIVE), 1);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn concurrent_lookups_make_one_call() {
        let endpoint = Endpoint::start().await;
        let introspector = Arc::new(endpoint.introspector());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let introspector = Arc::clone(&introspector);
                tokio::spawn(async move { introspector.introspect("slow-300").await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(
                task.await.unwrap().unwrap(),
                Introspection::Active(_)
            ));
        }
        assert_eq!(endpoint.calls("slow-300"), 1);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn cache_lifetime_is_bounded_by_exp() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        assert!(matches!(
            introspector.introspect(SHORT).await.unwrap(),
            Introspection::Active(_)
        ));
        assert_eq!(endpoint.calls(SHORT), 1);
        // positive_ttl is a minute; the token's exp (1–2 s away) sends us back to the endpoint.
        poll_until(async || {
            introspector.introspect(SHORT).await.unwrap();
            endpoint.calls(SHORT) == 2
        })
        .await;
        assert_eq!(
            introspector.introspect(SHORT).await.unwrap(),
            Introspection::Inactive
        );
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn exp_in_the_past_is_inactive_and_never_cached_as_active() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        assert_eq!(
            introspector.introspect(EXPIRED).await.unwrap(),
            Introspection::Inactive
        );
        let cached = introspector
            .cache
            .cached(&token_key(EXPIRED), Instant::now())
            .unwrap()
            .unwrap();
        assert_eq!(cached.introspection, Introspection::Inactive);
        assert_eq!(
            introspector.introspect(EXPIRED).await.unwrap(),
            Introspection::Inactive
        );
        assert_eq!(endpoint.calls(EXPIRED), 1);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn odd_answers_are_errors_or_inactive_never_active() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        let unavailable = |why: &str| Err(IntrospectionError::Unavailable(why.into()));
        let bad = |why: &str| Err(IntrospectionError::BadAnswer(why.into()));
        for (token, expected) in [
            ("busy", unavailable("rate limited (HTTP 429)")),
            ("forbidden", Err(IntrospectionError::Refused(403))),
            ("unknown-path", bad("HTTP 404")),
            ("redirect", bad("HTTP 302")),
            ("html", bad("not JSON")),
            ("array", bad("not a JSON object")),
            ("string-exp", bad("exp is not a number")),
            ("huge", bad("answer too large")),
            ("no-active", Ok(Introspection::Inactive)),
            ("string-active", Ok(Introspection::Inactive)),
        ] {
            let got = introspector
                .introspect(token)
                .await
                .map_err(|e| (*e).clone());
            assert_eq!(got, expected, "{token}");
        }
        // One request each: the redirect was not followed.
        assert_eq!(endpoint.calls("redirect"), 1);
        assert_eq!(endpoint.total_calls(), 10);
        // An active answer without exp is kept for positive_ttl.
        let no_exp = introspector.introspect("no-exp").await.unwrap();
        assert!(matches!(no_exp, Introspection::Active(_)));
        let cached = introspector
            .cache
            .cached(&token_key("no-exp"), Instant::now())
            .unwrap()
            .unwrap();
        assert_eq!(cached.ttl, Duration::from_secs(60));
        endpoint.assert_clean();
    }

    /// An introspector whose never-seen tokens get `unknown`, and its metrics.
    fn budgeted(endpoint: &Endpoint, unknown: UnknownBudget) -> (Arc<Introspector>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let config = IntrospectionConfig {
            unknown,
            ..endpoint.config()
        };
        let introspector = Introspector::new(config, Arc::clone(&metrics)).unwrap();
        (Arc::new(introspector), metrics)
    }

    fn shed_count(metrics: &Metrics, reason: &str) -> u64 {
        let needle = format!("daytona_authz_introspection_shed_total{{reason=\"{reason}\"}} ");
        let text = metrics.encode();
        let line = text.lines().find(|l| l.starts_with(&needle));
        line.unwrap_or_else(|| panic!("{needle} missing:\n{text}"))[needle.len()..]
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_flood_of_never_seen_tokens_cannot_take_the_slots_of_known_ones() {
        let endpoint = Endpoint::start().await;
        let budget = UnknownBudget {
            concurrency: 2,
            rate: 1000.0,
            burst: 1000,
        };
        let (introspector, metrics) = budgeted(&endpoint, budget);
        // Seen active once: known from now on, beyond its cached answer.
        assert!(matches!(
            introspector.introspect(ACTIVE).await.unwrap(),
            Introspection::Active(_)
        ));
        introspector.cache.remove(&token_key(ACTIVE));

        // More made-up tokens than there are call slots, all held by a slow endpoint.
        let flood_size = MAX_IN_FLIGHT + 10;
        let flood: Vec<_> = (0..flood_size)
            .map(|i| {
                let introspector = Arc::clone(&introspector);
                tokio::spawn(async move { introspector.introspect(&format!("held-{i}")).await })
            })
            .collect();
        // Two reach the endpoint and wait there; the rest are refused at once.
        poll_until(async || {
            let finished = flood.iter().filter(|task| task.is_finished()).count();
            endpoint.held() == 2 && finished == flood_size - 2
        })
        .await;

        // The known token is checked again at the endpoint meanwhile, and answered.
        assert!(matches!(
            introspector.introspect(ACTIVE).await.unwrap(),
            Introspection::Active(_)
        ));
        assert_eq!(endpoint.calls(ACTIVE), 2);
        let error = introspector.introspect("held-late").await.unwrap_err();
        assert_eq!(*error, IntrospectionError::Shed(Shed::Concurrency));

        endpoint.release();
        let mut inactive = 0;
        for task in flood {
            match task.await.unwrap() {
                Ok(Introspection::Inactive) => inactive += 1,
                Err(error) => assert_eq!(*error, IntrospectionError::Shed(Shed::Concurrency)),
                Ok(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(inactive, 2);
        assert_eq!(endpoint.held(), 2, "shed tokens never reach the endpoint");
        assert_eq!(endpoint.total_calls(), 4);
        assert_eq!(
            shed_count(&metrics, "concurrency"),
            u64::try_from(flood_size - 2 + 1).unwrap()
        );
        assert_eq!(shed_count(&metrics, "rate"), 0);
        // The slots came back: a never-seen token is introspected again.
        assert_eq!(
            introspector.introspect(INACTIVE).await.unwrap(),
            Introspection::Inactive
        );
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn over_the_rate_never_seen_tokens_are_refused_without_a_call() {
        let endpoint = Endpoint::start().await;
        // Three calls, then one more every 1000 s: none within this test.
        let budget = UnknownBudget {
            concurrency: 16,
            rate: 0.001,
            burst: 3,
        };
        let (introspector, metrics) = budgeted(&endpoint, budget);
        assert!(matches!(
            introspector.introspect(ACTIVE).await.unwrap(),
            Introspection::Active(_)
        ));
        for token in ["garbage-1", "garbage-2"] {
            assert_eq!(
                introspector.introspect(token).await.unwrap(),
                Introspection::Inactive
            );
        }
        for _ in 0..2 {
            let error = introspector.introspect("garbage-3").await.unwrap_err();
            assert_eq!(*error, IntrospectionError::Shed(Shed::Rate));
            assert!(!error.to_string().contains("garbage"), "{error}");
        }
        assert_eq!(endpoint.calls("garbage-3"), 0);
        assert_eq!(shed_count(&metrics, "rate"), 2);
        // Answers already cached are still served.
        assert_eq!(
            introspector.introspect("garbage-1").await.unwrap(),
            Introspection::Inactive
        );
        // A known token needs no rate token, even once its answer has left the cache.
        introspector.cache.remove(&token_key(ACTIVE));
        assert!(matches!(
            introspector.introspect(ACTIVE).await.unwrap(),
            Introspection::Active(_)
        ));
        assert_eq!(endpoint.calls(ACTIVE), 2);
        assert_eq!(endpoint.total_calls(), 4);
        endpoint.assert_clean();
    }

    #[tokio::test]
    async fn only_tokens_seen_active_are_known_and_only_until_their_exp() {
        let endpoint = Endpoint::start().await;
        let introspector = endpoint.introspector();
        let known = |token: &str| introspector.is_known(&token_key(token), Instant::now());
        for token in [ACTIVE, INACTIVE, EXPIRED, BOOM, "no-exp"] {
            let _ = introspector.introspect(token).await;
        }
        assert!(known(ACTIVE) && known("no-exp"));
        assert!(!known(INACTIVE) && !known(EXPIRED) && !known(BOOM));
        let ttl = |token: &str| {
            let until = introspector.known.get(&token_key(token)).unwrap();
            until.saturating_duration_since(Instant::now())
        };
        let left = ttl("no-exp");
        assert!(
            left <= KNOWN_FOR && left > KNOWN_FOR - Duration::from_secs(100),
            "{left:?}"
        );
        // ACTIVE's exp is an hour away: known for that hour (give or take the test's run).
        let left = ttl(ACTIVE);
        assert!(
            left <= Duration::from_secs(3600) && left > Duration::from_secs(3500),
            "{left:?}"
        );
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let bucket = TokenBucket::new(2.0, 3, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(!bucket.take(at(400)));
        assert!(bucket.take(at(600)));
        assert!(!bucket.take(at(600)));
        // A long pause refills up to the burst, no more.
        assert!((0..3).all(|_| bucket.take(at(60_000))));
        assert!(!bucket.take(at(60_000)));
        // A clock read out of order (another thread's `now`) takes nothing back.
        assert!(!bucket.take(at(59_000)));
        assert!(bucket.take(at(60_500)));
    }

    #[test]
    fn exp_bounds_the_ttl() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let minute = Duration::from_secs(60);
        let second = Duration::from_secs(1);
        let ttl = |body: &str| judge(body.as_bytes(), now, minute, second).unwrap().ttl;
        assert_eq!(
            ttl(r#"{"active":true,"exp":1000010}"#),
            Duration::from_secs(10)
        );
        assert_eq!(
            ttl(r#"{"active":true,"exp":1000010.5}"#),
            Duration::from_millis(10_500)
        );
        assert_eq!(ttl(r#"{"active":true,"exp":9999999999}"#), minute);
        assert_eq!(ttl(r#"{"active":true,"exp":1e300}"#), minute);
        assert_eq!(ttl(r#"{"active":true}"#), minute);
        assert_eq!(ttl(r#"{"active":true,"exp":1000000}"#), second);
        assert_eq!(ttl(r#"{"active":false,"exp":1000010}"#), second);
        let expired = judge(br#"{"active":true,"exp":999999}"#, now, minute, second).unwrap();
        assert_eq!(expired.introspection, Introspection::Inactive);
    }

    #[test]
    fn cached_active_answer_turns_inactive_at_exp() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let answer = judge(
            br#"{"active":true,"exp":1000010}"#,
            now,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(matches!(answer.at(now), Introspection::Active(_)));
        assert_eq!(
            answer.at(now + Duration::from_secs(10)),
            Introspection::Inactive
        );
    }

    #[test]
    fn cache_keys_are_digests_not_tokens() {
        let key = token_key(ACTIVE);
        assert_ne!(
            &key[..ACTIVE.len().min(32)],
            &ACTIVE.as_bytes()[..ACTIVE.len().min(32)]
        );
        assert_ne!(key, token_key(INACTIVE));
        assert_eq!(key, token_key(ACTIVE));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let config = IntrospectionConfig {
            url: "https://control.example.com/introspect".parse().unwrap(),
            client_id: CLIENT_ID.into(),
            client_secret: SECRET.into(),
            timeout: Duration::from_secs(2),
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 10,
            unknown: UnknownBudget::default(),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(printed.contains("<redacted>"));
        let introspector = Introspector::new(config, Arc::default()).unwrap();
        introspector.set_client_secret("another secret");
        let printed = format!("{introspector:?}");
        assert!(
            !printed.contains("s3cr") && !printed.contains("another"),
            "{printed}"
        );
    }

    #[test]
    fn refuses_unusable_configs() {
        let base = IntrospectionConfig {
            url: "https://control.example.com/introspect".parse().unwrap(),
            client_id: CLIENT_ID.into(),
            client_secret: SECRET.into(),
            timeout: Duration::from_secs(2),
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 10,
            unknown: UnknownBudget::default(),
        };
        for config in [
            IntrospectionConfig {
                url: "ftp://control.example.com/introspect".parse().unwrap(),
                ..base.clone()
            },
            IntrospectionConfig {
                url: "https://id:pw@control.example.com/introspect"
                    .parse()
                    .unwrap(),
                ..base.clone()
            },
            IntrospectionConfig {
                client_id: String::new(),
                ..base.clone()
            },
            IntrospectionConfig {
                timeout: Duration::ZERO,
                ..base.clone()
            },
            IntrospectionConfig {
                unknown: UnknownBudget {
                    concurrency: 0,
                    ..UnknownBudget::default()
                },
                ..base.clone()
            },
            IntrospectionConfig {
                unknown: UnknownBudget {
                    concurrency: MAX_IN_FLIGHT,
                    ..UnknownBudget::default()
                },
                ..base.clone()
            },
            IntrospectionConfig {
                unknown: UnknownBudget {
                    rate: 0.0,
                    ..UnknownBudget::default()
                },
                ..base.clone()
            },
            IntrospectionConfig {
                unknown: UnknownBudget {
                    rate: f64::NAN,
                    ..UnknownBudget::default()
                },
                ..base.clone()
            },
            IntrospectionConfig {
                unknown: UnknownBudget {
                    burst: 0,
                    ..UnknownBudget::default()
                },
                ..base.clone()
            },
        ] {
            assert!(Introspector::new(config, Arc::default()).is_err());
        }
        assert!(Introspector::new(base, Arc::default()).is_ok());
    }
}
