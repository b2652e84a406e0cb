//! The authorization decision, as pure functions over plain data: request attributes and the
//! verifier in, a verdict out. No I/O here, so every branch is unit-tested; `grpc` only translates
//! Envoy's `CheckRequest` into a [`RequestView`] and a verdict back into a `CheckResponse`.
//!
//! The one step with I/O (asking Daytona for the preview token) sits between [`authorize`] and
//! [`allow`], so nothing reaches Daytona before the caller is authenticated and authorized.

use crate::daytona::{DaytonaError, Preview};
use crate::host::{self, HostError, PreviewTarget};
use crate::token::{self, ExtractError, Grant, TokenError, TokenSource, Verifier};

/// Request headers daytona-authz sets on the way upstream. Daytona's proxy reads the first two;
/// Envoy's route reads the last two (see `envoy/envoy.yaml`) and removes them before forwarding.
pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
pub const SKIP_WARNING_HEADER: &str = "x-daytona-skip-preview-warning";
pub const UPSTREAM_HEADER: &str = "x-daytona-authz-upstream";
pub const UPSTREAM_SCHEME_HEADER: &str = "x-daytona-authz-upstream-scheme";

/// Every client header with this prefix is removed, so no client can speak for daytona-authz or
/// for Daytona (`x-daytona-preview-token`, `x-daytona-disable-cors`, ...).
const RESERVED_PREFIX: &str = "x-daytona-";

/// What the decision needs of a request. Header names are lower-case; repeated headers appear
/// once per value.
#[derive(Debug, Clone, Default)]
pub struct RequestView {
    pub host: String,
    /// The request target with its query string, undecoded.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RequestView {
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the deployment allows.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Lower-case, no trailing dot.
    pub preview_domain: String,
    pub verifier: Verifier,
}

/// An authenticated, authorized request, waiting for its preview token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub target: PreviewTarget,
    pub source: TokenSource,
}

/// Why a request is refused. One place ([`Denial::status`] and friends) maps each to what the
/// client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("request headers are over the size limit")]
    HeadersTooLarge,
    #[error("host: {0}")]
    BadHost(HostError),
    #[error("no access token")]
    MissingToken,
    #[error("{0}")]
    AmbiguousToken(ExtractError),
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("token is for another sandbox")]
    WrongSandbox,
    #[error("token does not grant this port")]
    PortNotGranted,
    #[error("{0}")]
    Daytona(DaytonaError),
}

impl Denial {
    pub fn status(&self) -> u16 {
        match self {
            Denial::HeadersTooLarge => 431,
            Denial::BadHost(_) => 400,
            Denial::MissingToken | Denial::AmbiguousToken(_) | Denial::InvalidToken(_) => 401,
            Denial::WrongSandbox | Denial::PortNotGranted => 403,
            Denial::Daytona(e) => match e {
                DaytonaError::NotFound => 404,
                DaytonaError::BadRequest(_) => 400,
                DaytonaError::Unauthorized(_) | DaytonaError::BadAnswer(_) => 502,
                DaytonaError::RateLimited { .. } | DaytonaError::Unavailable(_) => 503,
            },
        }
    }

    /// A short machine-readable code for the JSON body (RFC 6750 names where they apply).
    pub fn code(&self) -> &'static str {
        match self {
            Denial::HeadersTooLarge => "request_header_fields_too_large",
            Denial::BadHost(_) => "invalid_host",
            Denial::MissingToken | Denial::AmbiguousToken(_) | Denial::InvalidToken(_) => {
                "invalid_token"
            }
            Denial::WrongSandbox | Denial::PortNotGranted => "insufficient_scope",
            Denial::Daytona(e) => match e {
                DaytonaError::NotFound => "sandbox_not_found",
                DaytonaError::BadRequest(_) => "bad_request",
                DaytonaError::Unauthorized(_) | DaytonaError::BadAnswer(_) => "bad_gateway",
                DaytonaError::RateLimited { .. } | DaytonaError::Unavailable(_) => {
                    "daytona_unavailable"
                }
            },
        }
    }

    /// What a person can act on. Never contains the token or internals.
    pub fn message(&self) -> String {
        match self {
            Denial::HeadersTooLarge => "The request headers are too large.".into(),
            Denial::BadHost(HostError::PortOutOfRange) => {
                "Preview ports are 3000-9999; use https://{port}-{sandboxId}.<preview domain>/."
                    .into()
            }
            Denial::BadHost(_) => {
                "This is not a preview address; use https://{port}-{sandboxId}.<preview domain>/."
                    .into()
            }
            Denial::MissingToken => "An access token is required: send `Authorization: Bearer <token>` or open a share link with `?access_token=`.".into(),
            Denial::AmbiguousToken(_) => "The request carries more than one access token; send exactly one.".into(),
            Denial::InvalidToken(TokenError::Expired) => "The access token has expired; ask for a new link.".into(),
            Denial::InvalidToken(_) => "The access token is not valid; ask for a new link.".into(),
            Denial::WrongSandbox => "The access token is for another sandbox.".into(),
            Denial::PortNotGranted => "The access token does not grant this port.".into(),
            Denial::Daytona(DaytonaError::NotFound) => "No such sandbox (it may have been deleted).".into(),
            Denial::Daytona(DaytonaError::BadRequest(m)) => format!("Daytona refused the request: {m}"),
            Denial::Daytona(DaytonaError::Unauthorized(_)) => "The preview proxy cannot reach this sandbox (its Daytona credentials were refused). Tell the platform team.".into(),
            Denial::Daytona(DaytonaError::BadAnswer(_)) => "The preview proxy got an unusable answer from Daytona. Tell the platform team.".into(),
            Denial::Daytona(_) => "Daytona is not answering right now; try again shortly.".into(),
        }
    }

    /// For 503: how long a client should wait, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Denial::Daytona(DaytonaError::RateLimited { retry_after }) => {
                Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER).clamp(1, 300))
            }
            Denial::Daytona(DaytonaError::Unavailable(_)) => Some(DEFAULT_RETRY_AFTER),
            _ => None,
        }
    }

    /// The RFC 6750 §3 challenge for 401 and 403.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self.status() {
            401 => Some(r#"Bearer realm="daytona-authz", error="invalid_token""#),
            403 => Some(r#"Bearer realm="daytona-authz", error="insufficient_scope""#),
            _ => None,
        }
    }
}

const DEFAULT_RETRY_AFTER: u64 = 5;

/// Authenticates and authorizes a request, before any call to Daytona.
pub fn authorize(request: &RequestView, policy: &Policy, now: u64) -> Result<Authorized, Denial> {
    let target = host::parse(&request.host, &policy.preview_domain).map_err(Denial::BadHost)?;
    let authorization: Vec<&str> = request.header_values("authorization").collect();
    let (token, source) = token::extract(&authorization, &request.path)
        .map_err(Denial::AmbiguousToken)?
        .ok_or(Denial::MissingToken)?;
    let grant = policy
        .verifier
        .verify(&token)
        .map_err(Denial::InvalidToken)?;
    check_grant(&grant, &target, now)?;
    Ok(Authorized { target, source })
}

fn check_grant(grant: &Grant, target: &PreviewTarget, now: u64) -> Result<(), Denial> {
    // The verifier already checked `exp` (with leeway); this guards callers that cache grants.
    if grant.expires_at + token::LEEWAY_SECS < now {
        return Err(Denial::InvalidToken(TokenError::Expired));
    }
    if grant.sandbox_id != target.sandbox_id {
        return Err(Denial::WrongSandbox);
    }
    if !grant.allows_port(target.port) {
        return Err(Denial::PortNotGranted);
    }
    Ok(())
}

/// The request mutations that let an authorized request through to Daytona.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Set, replacing any value the client sent.
    pub set_headers: Vec<(&'static str, String)>,
    pub remove_headers: Vec<String>,
    pub remove_query_parameters: Vec<&'static str>,
}

pub fn allow(request: &RequestView, authorized: &Authorized, preview: &Preview) -> Allow {
    let set_headers = vec![
        (PREVIEW_TOKEN_HEADER, preview.token.clone()),
        (SKIP_WARNING_HEADER, "true".to_owned()),
        (UPSTREAM_HEADER, preview.upstream.authority.clone()),
        (
            UPSTREAM_SCHEME_HEADER,
            if preview.upstream.tls {
                "https"
            } else {
                "http"
            }
            .to_owned(),
        ),
    ];
    let mut remove_headers: Vec<String> = Vec::new();
    for (name, _) in &request.headers {
        let spoofed = name.starts_with(RESERVED_PREFIX)
            && !set_headers.iter().any(|(set, _)| set == name)
            && !remove_headers.contains(name);
        if spoofed {
            remove_headers.push(name.clone());
        }
    }
    if authorized.source == TokenSource::AuthorizationHeader {
        remove_headers.push("authorization".to_owned());
    }
    Allow {
        set_headers,
        remove_headers,
        remove_query_parameters: vec![token::QUERY_PARAMETER],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daytona::Upstream;
    use crate::token::{Claims, Signer, now};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";
    const DOMAIN: &str = "preview.example.com";

    fn policy() -> Policy {
        Policy {
            preview_domain: DOMAIN.into(),
            verifier: Verifier::hs256(SECRET, None, None),
        }
    }

    fn token(sandbox: &str, ports: Option<Vec<u16>>, exp: u64) -> String {
        Signer::hs256(SECRET)
            .sign(&Claims {
                sandbox_id: sandbox.into(),
                exp,
                ports,
                iss: None,
                aud: None,
            })
            .unwrap()
    }

    fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            host: host.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn host(port: u16) -> String {
        format!("{port}-{ID}.{DOMAIN}")
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn a_bearer_token_for_the_sandbox_is_authorized() {
        let t = token(ID, None, now() + 60);
        let auth = bearer(&t);
        let verdict = authorize(
            &request(&host(3000), "/", &[("authorization", &auth)]),
            &policy(),
            now(),
        );
        assert_eq!(
            verdict,
            Ok(Authorized {
                target: PreviewTarget {
                    sandbox_id: ID.into(),
                    port: 3000
                },
                source: TokenSource::AuthorizationHeader
            })
        );
    }

    #[test]
    fn a_query_token_is_authorized() {
        let t = token(ID, Some(vec![8080]), now() + 60);
        let verdict = authorize(
            &request(&host(8080), &format!("/a?x=1&access_token={t}"), &[]),
            &policy(),
            now(),
        );
        assert_eq!(verdict.unwrap().source, TokenSource::QueryParameter);
    }

    #[test]
    fn each_denial_has_its_status() {
        let good = token(ID, Some(vec![3000]), now() + 60);
        let cases: Vec<(RequestView, Denial, u16)> = vec![
            (
                request("evil.com", "/", &[]),
                Denial::BadHost(HostError::WrongDomain),
                400,
            ),
            (
                request(&format!("2000-{ID}.{DOMAIN}"), "/", &[]),
                Denial::BadHost(HostError::PortOutOfRange),
                400,
            ),
            (request(&host(3000), "/", &[]), Denial::MissingToken, 401),
            (
                request(&host(3000), "/", &[("authorization", "Bearer x.y.z")]),
                Denial::InvalidToken(TokenError::Malformed),
                401,
            ),
            (
                request(
                    &host(3000),
                    &format!("/?access_token={}", token(ID, None, now() - 3600)),
                    &[],
                ),
                Denial::InvalidToken(TokenError::Expired),
                401,
            ),
            (
                request(
                    &host(3000),
                    &format!("/?access_token={good}&access_token={good}"),
                    &[],
                ),
                Denial::AmbiguousToken(ExtractError::Ambiguous),
                401,
            ),
            (
                request(
                    &host(3000),
                    &format!("/?access_token={}", token(OTHER, None, now() + 60)),
                    &[],
                ),
                Denial::WrongSandbox,
                403,
            ),
            (
                request(&host(3001), &format!("/?access_token={good}"), &[]),
                Denial::PortNotGranted,
                403,
            ),
        ];
        for (req, denial, status) in cases {
            let verdict = authorize(&req, &policy(), now());
            assert_eq!(verdict, Err(denial.clone()), "{req:?}");
            assert_eq!(denial.status(), status);
            let message = denial.message();
            assert!(!message.contains(&good), "message echoes the token");
        }
    }

    #[test]
    fn the_host_is_checked_before_the_token() {
        let verdict = authorize(&request("nope", "/", &[]), &policy(), now());
        assert!(matches!(verdict, Err(Denial::BadHost(_))));
    }

    #[test]
    fn daytona_failures_map_to_statuses() {
        let cases = [
            (DaytonaError::NotFound, 404, None),
            (DaytonaError::BadRequest("Invalid port".into()), 400, None),
            (DaytonaError::Unauthorized(401), 502, None),
            (DaytonaError::Unauthorized(403), 502, None),
            (DaytonaError::BadAnswer("x".into()), 502, None),
            (DaytonaError::Unavailable("timed out".into()), 503, Some(5)),
            (
                DaytonaError::RateLimited {
                    retry_after: Some(7),
                },
                503,
                Some(7),
            ),
            (
                DaytonaError::RateLimited {
                    retry_after: Some(100_000),
                },
                503,
                Some(300),
            ),
        ];
        for (error, status, retry) in cases {
            let denial = Denial::Daytona(error);
            assert_eq!(denial.status(), status, "{denial:?}");
            assert_eq!(denial.retry_after(), retry, "{denial:?}");
        }
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(
            Denial::MissingToken.www_authenticate(),
            Some(r#"Bearer realm="daytona-authz", error="invalid_token""#)
        );
        assert_eq!(
            Denial::WrongSandbox.www_authenticate(),
            Some(r#"Bearer realm="daytona-authz", error="insufficient_scope""#)
        );
        assert_eq!(
            Denial::Daytona(DaytonaError::NotFound).www_authenticate(),
            None
        );
    }

    fn preview() -> Preview {
        Preview {
            token: "preview-token-123".into(),
            upstream: Upstream {
                tls: true,
                authority: format!("3000-{ID}.proxy.daytona.works"),
            },
        }
    }

    #[test]
    fn allow_sets_daytona_headers_and_strips_credentials_and_spoofs() {
        let req = request(
            &host(3000),
            "/",
            &[
                ("authorization", "Bearer t"),
                ("x-daytona-preview-token", "spoofed"),
                ("x-daytona-disable-cors", "true"),
                ("x-daytona-disable-cors", "true"),
                ("x-daytona-authz-upstream", "169.254.169.254"),
                ("cookie", "app=1"),
            ],
        );
        let authorized = Authorized {
            target: PreviewTarget {
                sandbox_id: ID.into(),
                port: 3000,
            },
            source: TokenSource::AuthorizationHeader,
        };
        let allow = allow(&req, &authorized, &preview());
        assert_eq!(
            allow.set_headers,
            vec![
                (PREVIEW_TOKEN_HEADER, "preview-token-123".to_owned()),
                (SKIP_WARNING_HEADER, "true".to_owned()),
                (UPSTREAM_HEADER, format!("3000-{ID}.proxy.daytona.works")),
                (UPSTREAM_SCHEME_HEADER, "https".to_owned()),
            ]
        );
        assert_eq!(
            allow.remove_headers,
            vec![
                "x-daytona-disable-cors".to_owned(),
                "authorization".to_owned()
            ]
        );
        assert_eq!(allow.remove_query_parameters, vec!["access_token"]);
    }

    #[test]
    fn allow_keeps_an_authorization_header_that_was_not_ours() {
        let req = request(
            &host(3000),
            "/?access_token=t",
            &[("authorization", "Basic x")],
        );
        let authorized = Authorized {
            target: PreviewTarget {
                sandbox_id: ID.into(),
                port: 3000,
            },
            source: TokenSource::QueryParameter,
        };
        let allow = allow(&req, &authorized, &preview());
        assert!(allow.remove_headers.is_empty());
        assert_eq!(allow.remove_query_parameters, vec!["access_token"]);
    }
}
