//! Daytona: the REST API client ([`client`]), the allow-list its preview URLs must match
//! ([`upstream`]) and the preview-token cache in front of it ([`cache`]), which also caches
//! sandboxes' descriptions (`GET /sandbox/{id}`, for the `[[policy]]` rules) the same way.
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

use crate::authz::host::{PreviewTarget, SandboxId};
pub use crate::authz::policy::SandboxInfo;

/// The seam between the authorization service and Daytona; tests substitute their own.
pub trait PreviewSource: Send + Sync + 'static {
    /// `GET /sandbox/{id}/ports/{port}/preview-url`.
    fn fetch(
        &self,
        target: &PreviewTarget,
    ) -> impl Future<Output = Result<Preview, DaytonaError>> + Send;

    /// `GET /sandbox/{id}`: what the `[[policy]]` rules see of a sandbox.
    fn sandbox(
        &self,
        sandbox_id: &SandboxId,
    ) -> impl Future<Output = Result<SandboxInfo, DaytonaError>> + Send;
}

/// What the client, allow-list and cache tests share: a sandbox port and the allowed domains.
#[cfg(test)]
mod fixtures {
    use crate::authz::host::PreviewTarget;

    pub const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";

    pub fn target() -> PreviewTarget {
        PreviewTarget {
            sandbox_id: ID.parse().unwrap(),
            port: 3000,
        }
    }

    pub fn allowed() -> Vec<String> {
        vec!["proxy.daytona.works".into(), "proxy.localhost:4000".into()]
    }
}
