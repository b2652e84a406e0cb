//! What the decision needs to know of a preview-token look-up: the answer, or why there is none.
//! Plain data: the Daytona client ([`crate::daytona`]) produces it.

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
