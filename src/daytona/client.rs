//! The Daytona REST API client: `GET /sandbox/{id}/ports/{port}/preview-url` and
//! `GET /sandbox/{id}` with the organization's API key, bounded in time, in body size and in
//! calls in flight, backing off on 429.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::upstream::parse_upstream;
use super::{DaytonaError, Preview, PreviewSource, SandboxInfo};
use crate::authz::host::{PreviewTarget, SandboxId};
use crate::metrics::Metrics;
use crate::outbound::trust::TrustRoots;
use crate::outbound::{BodyError, ClientError, connect_failure, outbound_client, read_bounded};

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
    ) -> Result<Self, ClientError> {
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
    pub fn set_api_key(&self, api_key: &str) -> Result<(), ClientError> {
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
            sandbox_id: SandboxId::nil(),
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
                target.sandbox_id.as_str(),
                "ports",
                &target.port.to_string(),
                "preview-url",
            ]);
        url
    }

    /// One look-up, bounded as a whole by `timeout`: the wait for a slot and the call share it,
    /// so a `Check` gets its answer before Envoy's own ext_authz timeout gives up on it.
    #[tracing::instrument(
        level = "debug",
        name = "daytona.preview_url",
        skip_all,
        fields(
            otel.kind = "client",
            sandbox.id = %target.sandbox_id,
            port = target.port,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    )]
    async fn call(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
        let result = match self.get(self.preview_url(target)).await {
            Ok(body) => {
                let answer = parse_answer(&body, target, &self.upstream_domains);
                if let Err(e) = &answer {
                    tracing::warn!(error = %e, sandbox.id = %target.sandbox_id, port = target.port, "refusing Daytona's answer");
                }
                answer
            }
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            tracing::Span::current().record("error.type", error_type(error));
        }
        result
    }

    fn sandbox_url(&self, sandbox_id: &SandboxId) -> url::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("validated as an http(s) URL")
            .pop_if_empty()
            .extend(["sandbox", sandbox_id.as_str()]);
        url
    }

    /// `GET /sandbox/{id}`, bounded and counted as the preview-url call is.
    #[tracing::instrument(
        level = "debug",
        name = "daytona.sandbox",
        skip_all,
        fields(
            otel.kind = "client",
            sandbox.id = %sandbox_id,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    )]
    async fn describe_sandbox(&self, sandbox_id: &SandboxId) -> Result<SandboxInfo, DaytonaError> {
        let result = match self.get(self.sandbox_url(sandbox_id)).await {
            Ok(body) => {
                let answer = parse_sandbox(&body, sandbox_id);
                if let Err(e) = &answer {
                    tracing::warn!(error = %e, sandbox.id = %sandbox_id, "refusing Daytona's description of the sandbox");
                }
                answer
            }
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            tracing::Span::current().record("error.type", error_type(error));
        }
        result
    }

    /// One GET of the API, bounded as a whole by `timeout`: the body of a 200, or the error
    /// its status means.
    async fn get(&self, url: url::Url) -> Result<Vec<u8>, DaytonaError> {
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
            .get(url)
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
        tracing::Span::current().record("http.response.status_code", status);
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
            200 => Ok(body),
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

fn bearer(api_key: &str) -> Result<reqwest::header::HeaderValue, ClientError> {
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
            ClientError::Invalid(
                "the Daytona API key contains characters not allowed in a header".into(),
            )
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A Daytona error's kind, for the call's span.
fn error_type(error: &DaytonaError) -> &'static str {
    match error {
        DaytonaError::NotFound => "not_found",
        DaytonaError::BadRequest(_) => "bad_request",
        DaytonaError::Unauthorized(_) => "unauthorized",
        DaytonaError::RateLimited { .. } => "rate_limited",
        DaytonaError::Unavailable(_) => "unavailable",
        DaytonaError::BadAnswer(_) => "bad_answer",
    }
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

    async fn sandbox(&self, sandbox_id: &SandboxId) -> Result<SandboxInfo, DaytonaError> {
        self.describe_sandbox(sandbox_id).await
    }
}

/// Daytona's `Sandbox` as far as the policy reads it; other fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxAnswer {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    organization_id: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

fn parse_sandbox(body: &[u8], sandbox_id: &SandboxId) -> Result<SandboxInfo, DaytonaError> {
    let answer: SandboxAnswer = serde_json::from_slice(body)
        .map_err(|_| DaytonaError::BadAnswer("not the expected sandbox JSON".into()))?;
    if !answer.id.eq_ignore_ascii_case(sandbox_id.as_str()) {
        return Err(DaytonaError::BadAnswer(
            "the answer describes another sandbox".into(),
        ));
    }
    SandboxInfo::new(
        sandbox_id.as_str().to_owned(),
        answer.name.unwrap_or_default(),
        answer.organization_id.unwrap_or_default(),
        answer.state.unwrap_or_default(),
        answer.labels.unwrap_or_default(),
    )
    .map_err(|why| DaytonaError::BadAnswer(format!("sandbox: {why}")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daytona::fixtures::{ID, allowed, target};

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

    #[test]
    fn a_sandbox_description_is_read_and_checked() {
        let id: SandboxId = ID.parse().unwrap();
        let body = serde_json::json!({
            "id": ID, "organizationId": "org-1", "name": "web", "state": "started",
            "labels": {"team": "team-a"}, "public": false, "target": "us", "cpu": 2
        });
        let info = parse_sandbox(&serde_json::to_vec(&body).unwrap(), &id).unwrap();
        assert_eq!(info.labels["team"], "team-a");
        assert_eq!(
            (info.organization_id.as_str(), info.state.as_str()),
            ("org-1", "started")
        );
        // No labels at all is a sandbox without labels.
        let bare = serde_json::json!({"id": ID});
        assert!(
            parse_sandbox(&serde_json::to_vec(&bare).unwrap(), &id)
                .unwrap()
                .labels
                .is_empty()
        );
        let other = serde_json::json!({"id": "11111111-2222-4333-8444-555555555555"});
        for body in [
            serde_json::to_vec(&other).unwrap(),
            b"[]".to_vec(),
            b"{}".to_vec(),
        ] {
            assert!(matches!(
                parse_sandbox(&body, &id),
                Err(DaytonaError::BadAnswer(_))
            ));
        }
        let labels: serde_json::Map<String, serde_json::Value> = (0..100)
            .map(|i| (format!("k{i}"), serde_json::Value::String("v".into())))
            .collect();
        let crowded = serde_json::json!({"id": ID, "labels": labels});
        assert!(parse_sandbox(&serde_json::to_vec(&crowded).unwrap(), &id).is_err());
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
}
