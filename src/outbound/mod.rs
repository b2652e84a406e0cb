//! Plumbing every outbound HTTP call shares (Daytona, JWKS, introspection): one client
//! builder trusting [`trust::TrustRoots`], bounded body reads, transport errors without secrets.

use std::time::Duration;

pub mod trust;

/// Why an outbound client could not be set up (at start-up, or on a reload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A setting or secret the client cannot use (a URL, a key with characters a header cannot
    /// hold): the operator's to fix.
    #[error("{0}")]
    Invalid(String),
    /// The TLS stack or the HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

use trust::TrustRoots;

/// The HTTP client for every outbound call (Daytona, JWKS, introspection): see
/// [`TrustRoots::http_client`].
pub fn outbound_client(
    timeout: Duration,
    trust: &TrustRoots,
) -> Result<reqwest::Client, ClientError> {
    trust.http_client(timeout)
}

/// "connection failed", with the TLS reason when the handshake failed (an unknown CA: see
/// `--ca-file`).
pub fn connect_failure(error: &reqwest::Error) -> String {
    match crate::outbound::trust::tls_reason(error) {
        Some(reason) => format!("connection failed: {reason}"),
        None => "connection failed".into(),
    }
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
