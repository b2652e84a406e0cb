//! Why a request is refused, and what the client is told: [`Denial`] maps each reason to its
//! status, code, message and headers in one place; [`render`] turns it into the reply (a page
//! for a person's browser, a sign-in redirect, JSON for programs). Internal detail (Daytona's
//! own words, which check failed) is in the denial's `Display`, for the log, never in the reply.

use super::decision::{LocalReply, Policy};
use super::host::HostError;
use super::pages;
use super::preview::DaytonaError;
use super::request::RequestView;
use super::route::RouteError;
use crate::authz::token::{self, ExtractError, TokenError};

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
    #[error("access to this sandbox was revoked")]
    SandboxRevoked,
    #[error(
        "a request that is neither a navigation nor from this sandbox's own pages used its cookie"
    )]
    CrossSandbox,
    #[error("CORS preflight from an origin not in --cors-allow-origin")]
    CorsOriginRefused,
    /// Whether the token is good cannot be known right now (introspection or the revocation
    /// store is unreachable): fail closed.
    #[error("{0} unavailable")]
    StatusUnknown(&'static str),
    #[error("{0}")]
    Daytona(DaytonaError),
    /// The sandbox already has `limit` other ports in use (`--max-ports-per-sandbox`); one frees
    /// up in `retry_after` seconds.
    #[error("sandbox has {limit} other ports in use")]
    TooManyPorts { limit: usize, retry_after: u64 },
    /// `limit` asks of this person for sandboxes Daytona does not know are in flight or were
    /// made within the window (`--max-sandboxes-per-person`, tokens the `[[policy]]` rules
    /// decide); one frees up in `retry_after` seconds.
    #[error("this person asked for {limit} sandboxes Daytona does not know")]
    TooManySandboxes { limit: usize, retry_after: u64 },
    /// The route's `daytona_authz.ports` does not list this port.
    #[error("the route does not serve this port")]
    PortNotOnRoute,
    /// The route's `context_extensions` cannot be used: nothing is decided on them.
    #[error("route settings: {0}")]
    BadRoute(RouteError),
    /// A token that names no sandbox, and no `[[policy]]` rule lets it open this one. Which
    /// rule came closest is for the log only.
    #[error("no policy rule allows this token here; closest: {}", .closest.as_deref().unwrap_or("none"))]
    PolicyDenied { closest: Option<String> },
}

impl Denial {
    pub fn status(&self) -> u16 {
        match self {
            Denial::HeadersTooLarge => 431,
            Denial::BadHost(_) => 400,
            Denial::MissingToken | Denial::AmbiguousToken(_) | Denial::InvalidToken(_) => 401,
            Denial::WrongSandbox
            | Denial::PortNotGranted
            | Denial::SandboxRevoked
            | Denial::CrossSandbox
            | Denial::CorsOriginRefused
            | Denial::PortNotOnRoute
            | Denial::PolicyDenied { .. } => 403,
            Denial::BadRoute(_) => 500,
            Denial::StatusUnknown(_) => 503,
            Denial::TooManyPorts { .. } | Denial::TooManySandboxes { .. } => 429,
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
            Denial::WrongSandbox
            | Denial::PortNotGranted
            | Denial::SandboxRevoked
            | Denial::CrossSandbox => "insufficient_scope",
            Denial::CorsOriginRefused => "cors_origin_refused",
            Denial::PortNotOnRoute => "port_not_served",
            Denial::PolicyDenied { .. } => "policy_denied",
            Denial::BadRoute(_) => "route_misconfigured",
            Denial::StatusUnknown(_) => "identity_unavailable",
            Denial::TooManyPorts { .. } => "too_many_ports",
            Denial::TooManySandboxes { .. } => "too_many_sandboxes",
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
            Denial::BadHost(HostError::PortOutOfRange(range)) => format!(
                "Preview ports are {range}; use https://{{port}}-{{sandboxId}}.<preview domain>/."
            ),
            Denial::BadHost(_) => {
                "This is not a preview address; use https://{port}-{sandboxId}.<preview domain>/."
                    .into()
            }
            Denial::MissingToken => "An access token is required: send `Authorization: Bearer <token>` or open a share link with `?access_token=`.".into(),
            Denial::AmbiguousToken(ExtractError::MalformedAuthorization) => "The Authorization header is not exactly `Bearer <token>`; send one Bearer token and nothing else in that header.".into(),
            Denial::AmbiguousToken(ExtractError::Ambiguous) => "The request carries more than one access token; send exactly one.".into(),
            Denial::InvalidToken(TokenError::Expired) => "The access token has expired; ask for a new link.".into(),
            Denial::InvalidToken(TokenError::Revoked) => {
                "The access token has been revoked; ask for a new link.".into()
            }
            Denial::InvalidToken(_) => "The access token is not valid; ask for a new link.".into(),
            Denial::WrongSandbox => "The access token is for another sandbox.".into(),
            Denial::PortNotGranted => "The access token does not grant this port.".into(),
            Denial::SandboxRevoked => "Access to this sandbox has been revoked.".into(),
            Denial::CrossSandbox => {
                "Your access to this sandbox works when you open it, and for its own pages; other pages cannot use it.".into()
            }
            Denial::CorsOriginRefused => "This origin may not call this sandbox.".into(),
            Denial::PortNotOnRoute => "This port is not served at this address.".into(),
            Denial::PolicyDenied { .. } => "You are signed in, but no access rule lets you open this sandbox (or this port of it). Ask the platform team for access.".into(),
            Denial::BadRoute(_) => "This address is not set up correctly at the preview proxy. Tell the platform team.".into(),
            Denial::StatusUnknown(_) => {
                "Access cannot be checked right now; try again shortly.".into()
            }
            Denial::TooManyPorts { limit, retry_after } => format!(
                "This sandbox already has {limit} other ports open, the most allowed at once. \
                 Ports already open keep working; this one can be opened in {retry_after} s, \
                 once one of them has been left unused long enough."
            ),
            Denial::TooManySandboxes { limit, retry_after } => format!(
                "Your sign-in asked for {limit} sandboxes that do not exist in a short time \
                 (a page may have done it for you), the most allowed. Sandboxes you have used \
                 keep working; this one can be opened in {retry_after} s."
            ),

            Denial::Daytona(DaytonaError::NotFound) => "No such sandbox (it may have been deleted).".into(),
            // Daytona's own words go to the log (the denial's Display), not to the visitor.
            Denial::Daytona(DaytonaError::BadRequest(_)) => "Daytona refused to serve this sandbox port; check the address.".into(),
            Denial::Daytona(DaytonaError::Unauthorized(_)) => "The preview proxy cannot reach this sandbox (its Daytona credentials were refused). Tell the platform team.".into(),
            Denial::Daytona(DaytonaError::BadAnswer(_)) => "The preview proxy got an unusable answer from Daytona. Tell the platform team.".into(),
            Denial::Daytona(_) => "Daytona is not answering right now; try again shortly.".into(),
        }
    }

    /// For 503 and 429: how long a client should wait, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Denial::TooManyPorts { retry_after, .. }
            | Denial::TooManySandboxes { retry_after, .. } => Some((*retry_after).max(1)),
            Denial::Daytona(DaytonaError::RateLimited { retry_after }) => {
                Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER).clamp(1, 300))
            }
            Denial::Daytona(DaytonaError::Unavailable(_)) | Denial::StatusUnknown(_) => {
                Some(DEFAULT_RETRY_AFTER)
            }
            _ => None,
        }
    }

    /// The RFC 6750 §3 challenge for 401 and 403.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        if matches!(self, Denial::CorsOriginRefused | Denial::PortNotOnRoute) {
            return None;
        }
        match self.status() {
            401 => Some(r#"Bearer realm="daytona-authz", error="invalid_token""#),
            403 => Some(r#"Bearer realm="daytona-authz", error="insufficient_scope""#),
            _ => None,
        }
    }
}

const DEFAULT_RETRY_AFTER: u64 = 5;

/// What a denied client sees: a page for a person's browser (or a sign-in redirect, with
/// `--login-url`), JSON for everything else.
pub fn render(denial: &Denial, request: &RequestView, policy: &Policy) -> LocalReply {
    let browser = request.wants_html();
    let mut headers: Vec<(&'static str, String)> = vec![("cache-control", "no-store".into())];
    if denial.status() == 401 {
        // A cookie of ours that did not work: have the browser forget it. Only when the cookie
        // was the credential that failed: another page must not be able to sign the user out by
        // sending a bad `?access_token=` or `Authorization` beside the user's good cookie.
        let authorization: Vec<&str> = request.header_values("authorization").collect();
        let cookies: Vec<&str> = request.header_values("cookie").collect();
        let only_the_cookie =
            token::extract(&authorization, &request.path, &[], &policy.cookie_name)
                .is_ok_and(|other| other.is_none());
        if only_the_cookie
            && token::cookie_values(&cookies, &policy.cookie_name)
                .next()
                .is_some()
        {
            // Secure over https, as the cookie was set: browsers ignore a `__Host-` cookie
            // (and anything overwriting a Secure one) without it.
            let secure = if request.is_https() { "; Secure" } else { "" };
            headers.push((
                "set-cookie",
                format!(
                    "{}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}",
                    policy.cookie_name
                ),
            ));
            // Under single sign-on, a page of any sandbox can plant a cookie of our name for
            // the whole preview domain (`Domain=`): Envoy's OAuth2 filter lets every request
            // carrying one by, so the person would get this 401 on every sandbox and never a
            // sign-in. A host-only clearing cannot remove it; these do, for the preview domain
            // and each parent of it a page could set a cookie for (`example.com` above
            // `preview.example.com`; a public suffix refuses such cookies anyway).
            if policy.sso.token_cookie.is_some()
                && !policy.cookie_name.starts_with("__Host-")
                && let Ok((_, domain)) = policy.hosts.parse(&request.host)
            {
                let mut scope = domain;
                loop {
                    headers.push((
                        "set-cookie",
                        format!(
                            "{}=; Max-Age=0; Path=/; Domain={scope}; HttpOnly; SameSite=Lax{secure}",
                            policy.cookie_name
                        ),
                    ));
                    match scope.split_once('.') {
                        Some((_, parent)) if parent.contains('.') => scope = parent,
                        _ => break,
                    }
                }
            }
        }
        // The route's sign-in page, else --login-url.
        let login_url = request
            .route
            .login_url
            .as_ref()
            .or(policy.login_url.as_ref());
        if browser && let Some(login) = login_url {
            let mut location = login.clone();
            location
                .query_pairs_mut()
                .append_pair("return_to", &return_to(request));
            headers.push(("location", location.into()));
            return LocalReply {
                reason: denial.code(),
                status: 302,
                headers,
                body: String::new(),
            };
        }
    }
    if let Some(challenge) = denial.www_authenticate() {
        headers.push(("www-authenticate", challenge.into()));
    }
    if let Some(seconds) = denial.retry_after() {
        headers.push(("retry-after", seconds.to_string()));
    }
    let body = if browser {
        headers.push(("content-type", "text/html; charset=utf-8".into()));
        pages::denial(denial.status(), &denial.message())
    } else {
        headers.push(("content-type", "application/json".into()));
        serde_json::json!({ "error": denial.code(), "message": denial.message() }).to_string()
    };
    LocalReply {
        reason: denial.code(),
        status: denial.status(),
        headers,
        body,
    }
}

/// Where a sign-in page sends the browser back: this very preview URL, without any token. Only
/// ever built for a host that parsed as a preview host of our domain, so it cannot point away.
fn return_to(request: &RequestView) -> String {
    let scheme = if request.is_https() { "https" } else { "http" };
    format!(
        "{scheme}://{}{}",
        request.host.to_ascii_lowercase(),
        request.path_without_token()
    )
}
