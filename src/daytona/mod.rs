//! Daytona: the REST API client ([`client`]), the allow-list its preview URLs must match
//! ([`upstream`]) and the preview-token cache in front of it ([`cache`]).
//!
//! One call per (sandbox, port) however many requests arrive at once: concurrent misses for one
//! key wait on the same API call (a `quick_cache` placeholder). Entries live `--cache-ttl`, which
//! bounds how long a token that Daytona regenerated on a sandbox restart can be served stale.
//! Daytona's "no such sandbox" (404) and "invalid" (400) answers are kept `--negative-cache-ttl`
//! (seconds), so a token for a deleted sandbox cannot turn every request into an API call; other
//! failures are never cached, so the next request after one asks again. A 429 puts the API key
//! in back-off for Daytona's `Retry-After`: until it passes no call is made and look-ups that
//! would need one fail at once (503 with the time left).

pub mod cache;
pub mod client;
pub mod upstream;

pub use crate::authz::preview::{DaytonaError, Preview, Upstream};
pub use cache::PreviewCache;
pub use client::DaytonaApi;
pub use upstream::default_upstream_domains;

use crate::authz::host::PreviewTarget;

/// The seam between the authorization service and Daytona; tests substitute their own.
pub trait PreviewSource: Send + Sync + 'static {
    fn fetch(
        &self,
        target: &PreviewTarget,
    ) -> impl Future<Output = Result<Preview, DaytonaError>> + Send;
}
