//! The authorization decision, as pure functions over plain data: request attributes and the
//! verifier in, a verdict out. No I/O here, so every branch is unit-tested; `serve::authorizer`
//! answers the look-ups it asks for, `serve::grpc` translates Envoy's `CheckRequest` into a
//! [`RequestView`] and a verdict back into a `CheckResponse`.
//!
//! The one step with I/O (asking Daytona for the preview token) sits between [`authorize`] and
//! [`allow`], so nothing reaches Daytona before the caller is authenticated and authorized.
//! Everything that is answered without forwarding (a denial, a CORS preflight, the redirect that
//! turns a share link into a cookie) is a [`LocalReply`].

use std::sync::Arc;

pub use super::denial::{Denial, render};
pub use super::request::RequestView;
use super::request::without_token;
use crate::authz::app_identity::Assertions;
use crate::authz::host::{Hosts, PreviewTarget, SandboxId};
use crate::authz::policy::{Outcome, RequestFacts, Rules, SandboxInfo};
use crate::authz::preview::{DaytonaError, Preview};
use crate::authz::route::Access;
use crate::authz::sso::Sso;
use crate::authz::token::{self, ExtractError, Grant, TokenError, TokenSource, Verifier};

/// Request headers daytona-authz sets on the way upstream. Daytona's proxy reads the first two;
/// Envoy's route reads the last two (see `envoy/envoy.yaml`) and removes them before forwarding.
pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
pub const SKIP_WARNING_HEADER: &str = "x-daytona-skip-preview-warning";
pub const UPSTREAM_HEADER: &str = "x-daytona-authz-upstream";
pub const UPSTREAM_SCHEME_HEADER: &str = "x-daytona-authz-upstream-scheme";
/// Set with `--disable-cors`: Daytona's proxy then leaves CORS to the app.
pub const DISABLE_CORS_HEADER: &str = "x-daytona-disable-cors";

/// Every client header with this prefix is removed, so no client can speak for daytona-authz or
/// for Daytona (`x-daytona-preview-token`, `x-daytona-disable-cors`, ...).
const RESERVED_PREFIX: &str = "x-daytona-";

/// What the deployment allows.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The preview domains and port range public hosts may name.
    pub hosts: Hosts,
    pub verifier: Verifier,
    /// Name of the cookie a share link turns into.
    pub cookie_name: String,
    /// Where a browser without a valid token is sent to sign in (with `return_to`).
    pub login_url: Option<url::Url>,
    /// Ask Daytona to leave CORS to the app (`X-Daytona-Disable-CORS: true`); preflights are
    /// then approved only for the sandbox's own pages and `cors_allow_origins`.
    pub disable_cors: bool,
    /// `--cors-allow-origin`: when not empty, preflights are approved only for these origins
    /// (lower-case `scheme://host[:port]`) and the sandbox's own pages, refused for every other.
    pub cors_allow_origins: Vec<String>,
    /// Opaque (non-JWT) tokens are introspected (RFC 7662).
    pub introspection: bool,
    /// JWKS sources are configured (an unknown `kid` is worth one refresh).
    pub jwks: bool,
    /// `--assertion`: a signed statement of who is calling, in its header, on every forwarded
    /// request with a verified token.
    pub assertion: Option<Arc<Assertions>>,
    /// `--audit-log`: one JSON line per decision (see `serve::grpc`).
    pub audit_log: bool,
    /// Single sign-on through Envoy's OAuth2 filter: which of its cookies holds the token, and
    /// which never reach the app.
    pub sso: Sso,
    /// The `[[policy]]` rules: who may open which sandbox with a token that names none (the
    /// verifier then accepts such tokens). `None`: no rules, and such tokens are malformed.
    pub rules: Option<Arc<Rules>>,
}

impl Policy {
    /// A policy for `preview_domain` verifying tokens with `verifier`, every other setting at its
    /// default: the default cookie name, no login URL, CORS left to Daytona, no introspection or
    /// JWKS. Change fields from there.
    pub fn new(preview_domain: &str, verifier: Verifier) -> Self {
        Policy {
            hosts: Hosts::new(preview_domain),
            verifier,
            cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
            login_url: None,
            disable_cors: false,
            cors_allow_origins: Vec::new(),
            introspection: false,
            jwks: false,
            assertion: None,
            audit_log: false,
            sso: Sso::default(),
            rules: None,
        }
    }
}

/// The default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "daytona_authz";

/// An authenticated, authorized request, waiting for its preview token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub target: PreviewTarget,
    /// Where the token came from; `None` on a `preview-token-only` route (no token needed).
    pub source: Option<TokenSource>,
    /// What the caller's verified token grants, and who it names; `None` when the request was
    /// let through without a token.
    pub grant: Option<Arc<Grant>>,
    /// The `[[policy]]` rule that allowed a token naming no sandbox.
    pub rule: Option<Arc<str>>,
}

/// What to do with a request before any call to Daytona.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authorized: fetch the preview token, then [`allow`].
    Forward(Authorized),
    /// Needs I/O first; call [`authorize`] again with the answer.
    Lookup(Lookup),
    /// Answer here, without Daytona: a CORS preflight, or a share link turning into a cookie.
    Reply(LocalReply),
}

/// A response Envoy sends itself, in place of the sandbox's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// Why: a denial code, `preflight` or `link_to_cookie` (for metrics and logs).
    pub reason: &'static str,
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// What a decision needs from I/O, found by the caller and handed back in [`Lookups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Ask the introspection endpoint about this opaque token.
    Introspect(String),
    /// A JWT names a key we do not hold: fetch the JWKS again (rate limited by the caller).
    RefreshJwks,
    /// A token without the sandbox claim is to be decided by the `[[policy]]` rules: what does
    /// Daytona say of this sandbox (`GET /sandbox/{id}`, cached by the caller)? Asked for the
    /// person named second (the token's `sub`, else its `jti`, else `""`), whom the caller
    /// allows only so many distinct sandboxes at once (`--max-sandboxes-per-person`).
    Sandbox(SandboxId, String),
}

/// Daytona's description of the request's sandbox, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxAnswer {
    Found(Arc<SandboxInfo>),
    Failed(DaytonaError),
}

/// An introspection answer, as the decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Introspected {
    Active(serde_json::Map<String, serde_json::Value>),
    Inactive,
    Unavailable,
}

/// The answers to earlier [`Lookup`]s of this request.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    pub introspected: Vec<(String, Introspected)>,
    pub jwks_refreshed: bool,
    /// The request's sandbox as Daytona describes it (asked only for policy-decided tokens).
    pub sandbox: Option<SandboxAnswer>,
}

/// Whether a token or sandbox was revoked. In-memory and synchronous (the store keeps a mirror),
/// so the decision stays a pure function of what it is given.
pub trait RevocationView {
    /// Whether a token (its `jti` and `sub`, when it has them) for `sandbox_id` is revoked.
    fn revocation(
        &self,
        jti: Option<&str>,
        sandbox_id: &str,
        subject: Option<&str>,
        now: u64,
    ) -> RevocationStatus;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationStatus {
    Active,
    TokenRevoked,
    SandboxRevoked,
    /// The store cannot tell (e.g. Redis unreachable): fail closed.
    Unknown,
}

/// No revocations at all.
pub struct NoRevocations;

impl RevocationView for NoRevocations {
    fn revocation(&self, _: Option<&str>, _: &str, _: Option<&str>, _: u64) -> RevocationStatus {
        RevocationStatus::Active
    }
}

/// Authenticates and authorizes a request, before any call to Daytona. When it needs I/O
/// (introspection, a JWKS refresh) it says so with [`Verdict::Lookup`]; the caller does it and
/// calls again with the answer in `lookups`.
pub fn authorize(
    request: &RequestView,
    policy: &Policy,
    now: u64,
    lookups: &Lookups,
    revocations: &dyn RevocationView,
) -> Result<Verdict, Denial> {
    let route = &request.route;
    route.check(policy.hosts.ports).map_err(Denial::BadRoute)?;
    let (target, _) = policy.hosts.parse(&request.host).map_err(Denial::BadHost)?;
    if route
        .ports
        .as_ref()
        .is_some_and(|ports| !ports.contains(target.port))
    {
        return Err(Denial::PortNotOnRoute);
    }
    if request.is_preflight() {
        // Preflights carry no credential, so they are answered here and never forwarded: an
        // unauthenticated request must not reach a sandbox, nor cost a Daytona call or a port.
        // By default every origin is approved, as Daytona's proxy does. With --disable-cors or
        // --cors-allow-origin the edge approves only the sandbox's own pages (any port) and the
        // listed origins; the app's own CORS headers still decide what the page may read.
        let restricted = policy.disable_cors || !policy.cors_allow_origins.is_empty();
        let approved = !restricted
            || request.header_values("origin").all(|origin| {
                is_listed(origin, &policy.cors_allow_origins)
                    || is_sandbox_origin(origin, policy, &target)
            });
        return if approved {
            Ok(Verdict::Reply(preflight(request)))
        } else {
            Err(Denial::CorsOriginRefused)
        };
    }
    if route.access == Access::PreviewTokenOnly {
        // No end-user token on this route; a revoked sandbox stays revoked.
        return match revocations.revocation(None, target.sandbox_id.as_str(), None, now) {
            RevocationStatus::Active => Ok(Verdict::Forward(Authorized {
                target,
                source: None,
                grant: None,
                rule: None,
            })),
            RevocationStatus::SandboxRevoked | RevocationStatus::TokenRevoked => {
                Err(Denial::SandboxRevoked)
            }
            RevocationStatus::Unknown => Err(Denial::StatusUnknown("revocations")),
        };
    }
    let mut authorization: Vec<&str> = request.header_values("authorization").collect();
    let cookies: Vec<&str> = request.header_values("cookie").collect();
    if policy.sso.forwarded_bearer(&authorization, &cookies) {
        // Envoy's OAuth2 filter copied its session into `Authorization`: that is the session
        // cookie again (read from the cookie below, under the cookie's rules), not a token the
        // caller sent. `allow` removes the header.
        authorization.clear();
    }
    let found = match token::extract(&authorization, &request.path, &cookies, &policy.cookie_name)
        .map_err(Denial::AmbiguousToken)?
    {
        Some(found) => found,
        // Nothing of ours: the single-sign-on session, if any.
        None => match policy.sso.candidates(&cookies) {
            Ok(candidates) if !candidates.is_empty() => token::Found {
                source: TokenSource::SsoCookie,
                candidates,
            },
            Ok(_) => return Err(Denial::MissingToken),
            Err(ambiguous) => return Err(Denial::AmbiguousToken(ambiguous)),
        },
    };
    if found.source != TokenSource::AuthorizationHeader
        && authorization
            .iter()
            .any(|value| found.candidates.iter().any(|c| value.contains(c.as_ref())))
    {
        // The cookie's (or the query's) token also sits in an `Authorization` header we could
        // not read as `Bearer <token>` (`Bearer,<t>`, `Token <t>`, ...): that header would carry
        // it to the app.
        return Err(Denial::AmbiguousToken(ExtractError::MalformedAuthorization));
    }
    let ambient = matches!(found.source, TokenSource::Cookie | TokenSource::SsoCookie);
    if ambient && !cookie_may_be_used(request, policy, &target) {
        // All preview hosts are one "site": a page in sandbox B, or on any other host of the
        // site, can make the browser send the user's cookie for sandbox A (SameSite=Lax lets
        // it), and Daytona reflects any Origin with credentials. The single-sign-on session is
        // scoped to the whole preview domain: the browser sends it to every sandbox.
        return Err(Denial::CrossSandbox);
    }
    // The first candidate that verifies and grants this target wins; otherwise the first
    // candidate's reason is the answer.
    let mut first_denial = None;
    let mut granted = None;
    let mut allowed_by = None;
    for candidate in &found.candidates {
        let grant = match policy.verifier.verify(candidate, now) {
            // An opaque single-sign-on cookie is the filter's encrypted form (a request the
            // filter passed by): never sent to the introspection endpoint.
            Err(TokenError::Opaque)
                if policy.introspection && found.source != TokenSource::SsoCookie =>
            {
                match lookups.introspected.iter().find(|(t, _)| t == candidate) {
                    None => return Ok(Verdict::Lookup(Lookup::Introspect(candidate.to_string()))),
                    Some((_, Introspected::Active(claims))) => {
                        policy.verifier.grant(claims, now).map(|mut grant| {
                            // Who the authorization server issued it to (RFC 7662).
                            grant.introspected = true;
                            grant.introspected_for = ["client_id", "azp"].iter().find_map(|n| {
                                claims.get(*n).and_then(|v| v.as_str()).map(str::to_owned)
                            });
                            Arc::new(grant)
                        })
                    }
                    Some((_, Introspected::Inactive)) => Err(TokenError::Inactive),
                    Some((_, Introspected::Unavailable)) => {
                        return Err(Denial::StatusUnknown("token introspection"));
                    }
                }
            }
            Err(TokenError::Opaque) => Err(TokenError::Malformed),
            Err(TokenError::UnknownKey(_)) if policy.jwks && !lookups.jwks_refreshed => {
                return Ok(Verdict::Lookup(Lookup::RefreshJwks));
            }
            other => other,
        };
        let verdict = grant
            .map_err(Denial::InvalidToken)
            .and_then(|grant| check_grant(&grant, &target, now).map(|()| grant))
            .and_then(|grant| match &route.audience {
                // The route asks for one more audience than --jwt-audience.
                Some(audience) if !grant.has_audience(audience) => {
                    Err(Denial::InvalidToken(TokenError::WrongIssuerOrAudience))
                }
                _ => Ok(grant),
            })
            .and_then(|grant| match &policy.sso.audience {
                // A single-sign-on token is for our OAuth2 client: an ID token the same
                // identity provider issued to another application is not a session here. The
                // same holds for any token the rules decide (no sandbox claim), whether it came
                // in the session cookie, as a Bearer, a link or our cookie. Issued to our
                // client: its `azp` (or `client_id`) when it has one, else its `aud`.
                Some(audience)
                    if (found.source == TokenSource::SsoCookie || grant.identity.is_some())
                        && !grant.issued_to_client(audience) =>
                {
                    Err(Denial::InvalidToken(TokenError::WrongIssuerOrAudience))
                }
                _ => Ok(grant),
            })
            .and_then(|grant| {
                let (jti, subject) = (grant.jti.as_deref(), grant.subject.as_deref());
                match revocations.revocation(jti, target.sandbox_id.as_str(), subject, now) {
                    RevocationStatus::Active => Ok(grant),
                    RevocationStatus::TokenRevoked => {
                        Err(Denial::InvalidToken(TokenError::Revoked))
                    }
                    RevocationStatus::SandboxRevoked => Err(Denial::SandboxRevoked),
                    RevocationStatus::Unknown => Err(Denial::StatusUnknown("revocations")),
                }
            });
        // A token that names no sandbox: the policy decides, on what Daytona says of the
        // sandbox (looked up only now: after the token, its audience and revocations passed).
        let verdict = match verdict {
            Ok(grant) if grant.identity.is_some() => match &lookups.sandbox {
                None => {
                    let person = grant.subject.as_ref().or(grant.jti.as_ref());
                    return Ok(Verdict::Lookup(Lookup::Sandbox(
                        target.sandbox_id.clone(),
                        person.cloned().unwrap_or_default(),
                    )));
                }
                // Not knowing is never masked: fail closed at once (404: no such sandbox).
                Some(SandboxAnswer::Failed(error)) => return Err(Denial::Daytona(error.clone())),
                Some(SandboxAnswer::Found(sandbox)) => {
                    by_policy(request, policy, &target, &grant, sandbox).map(|rule| {
                        allowed_by = Some(rule);
                        grant
                    })
                }
            },
            other => other,
        };
        match verdict {
            Ok(grant) => {
                granted = Some((grant, candidate));
                break;
            }
            // Not knowing is never masked by another candidate: fail closed at once.
            Err(denial @ Denial::StatusUnknown(_)) => return Err(denial),
            Err(denial) => {
                first_denial.get_or_insert(denial);
            }
        }
    }
    let Some((grant, token)) = granted else {
        return Err(first_denial.unwrap_or(Denial::MissingToken));
    };
    if found.source == TokenSource::QueryParameter && request.is_navigation() {
        return Ok(Verdict::Reply(link_to_cookie(
            request, policy, &grant, token, now,
        )));
    }
    Ok(Verdict::Forward(Authorized {
        target,
        source: Some(found.source),
        grant: Some(grant),
        rule: allowed_by,
    }))
}

/// Whether the ambient cookie may authenticate this request: only a top-level navigation (its
/// page cannot read the answer), or a request from this sandbox's own pages. Fetch Metadata and
/// `Origin` are set by the browser and cannot be forged by a page; a program that sends neither
/// (curl with a cookie jar) is not a page of another site and keeps working.
fn cookie_may_be_used(request: &RequestView, policy: &Policy, target: &PreviewTarget) -> bool {
    let single = |name| {
        let mut values = request.header_values(name);
        match (values.next(), values.next()) {
            (Some(one), None) => Some(one.trim()),
            _ => None,
        }
    };
    let navigation = matches!(request.method.as_str(), "GET" | "HEAD")
        && single("sec-fetch-mode").is_some_and(|mode| mode.eq_ignore_ascii_case("navigate"));
    if navigation {
        return true;
    }
    if request.has_header("origin") {
        // `null` (an opaque origin, e.g. after a cross-origin redirect), another sandbox or any
        // other host of the site: refused. This sandbox on any port: its own pages.
        return request
            .header_values("origin")
            .all(|origin| is_sandbox_origin(origin, policy, target));
    }
    match request.has_header("sec-fetch-site") {
        // No Origin: a subresource (`<script src>`, `<img>`) or a same-origin GET. Only the
        // browser's own word that it is same-origin (or typed by the user) is enough.
        true => request.header_values("sec-fetch-site").all(|site| {
            let site = site.trim();
            site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none")
        }),
        // No Fetch Metadata: a program, or a browser talking plain HTTP to a host it does not
        // consider trustworthy (it sends none there). A Referer naming another sandbox or
        // another host of the preview domain still gives a page away.
        false => request.header_values("referer").all(|referer| {
            let authority = origin_authority(referer).unwrap_or_default();
            let under_domain = crate::authz::host::strip_port(authority)
                .is_some_and(|name| policy.hosts.is_under(&name.to_ascii_lowercase()));
            !under_domain || is_sandbox_origin(referer, policy, target)
        }),
    }
}

/// Whether `origin` (or any URL) is `http(s)://` a preview host of `target`'s sandbox, any port.
fn is_sandbox_origin(origin: &str, policy: &Policy, target: &PreviewTarget) -> bool {
    origin_authority(origin).is_some_and(|authority| {
        policy
            .hosts
            .parse(authority)
            .is_ok_and(|(other, _)| other.sandbox_id == target.sandbox_id)
    })
}

/// The authority of an `http://` or `https://` URL or origin.
fn origin_authority(url: &str) -> Option<&str> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

/// Whether `origin` is one of the listed origins (compared without case).
fn is_listed(origin: &str, listed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    listed.contains(&origin)
}

/// A share link opened in a browser: set the token as a cookie and send the browser to the same
/// URL without it, so it leaves the address bar, history and Referer, and the app's relative
/// requests (fetch, images, WebSockets) carry the cookie.
fn link_to_cookie(
    request: &RequestView,
    policy: &Policy,
    grant: &Grant,
    token: &str,
    now: u64,
) -> LocalReply {
    let max_age = grant.expires_at.saturating_sub(now);
    let mut cookie = format!(
        "{}={token}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax",
        policy.cookie_name
    );
    if request.is_https() {
        cookie.push_str("; Secure");
    }
    LocalReply {
        reason: "link_to_cookie",
        status: 302,
        headers: vec![
            ("location", request.path_without_token()),
            ("set-cookie", cookie),
            ("cache-control", "no-store".into()),
            ("referrer-policy", "no-referrer".into()),
        ],
        body: String::new(),
    }
}

/// Answers a CORS preflight at the edge, as Daytona's proxy does (it reflects the origin with
/// credentials): preflights carry no credentials, so forwarding them would let unauthenticated
/// requests reach the sandbox. The actual request still needs a token, and with `--disable-cors`
/// the browser still applies the app's own CORS headers to the actual response.
fn preflight(request: &RequestView) -> LocalReply {
    let first = |name| {
        request
            .header_values(name)
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let mut headers = vec![
        ("access-control-allow-origin", first("origin")),
        ("access-control-allow-credentials", "true".into()),
        (
            "access-control-allow-methods",
            first("access-control-request-method"),
        ),
        ("access-control-max-age", "600".into()),
        (
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
        ),
    ];
    let requested = first("access-control-request-headers");
    if !requested.is_empty() {
        headers.push(("access-control-allow-headers", requested));
    }
    LocalReply {
        reason: "preflight",
        status: 204,
        headers,
        body: String::new(),
    }
}

/// Which rule lets this token's holder open this sandbox port, if one does.
fn by_policy(
    request: &RequestView,
    policy: &Policy,
    target: &PreviewTarget,
    grant: &Grant,
    sandbox: &SandboxInfo,
) -> Result<Arc<str>, Denial> {
    let (Some(rules), Some(claims)) = (&policy.rules, &grant.identity) else {
        return Err(Denial::PolicyDenied { closest: None });
    };
    let path = request.path.split(['?', '#']).next().unwrap_or_default();
    let facts = RequestFacts {
        port: target.port,
        method: &request.method,
        path,
        route: request.route.name.as_deref().unwrap_or_default(),
    };
    match rules.evaluate(claims, sandbox, &facts) {
        Outcome::Allowed(rule) => Ok(rule),
        Outcome::Denied(closest) => Err(Denial::PolicyDenied {
            closest: closest.map(|c| c.to_string()),
        }),
    }
}

fn check_grant(grant: &Grant, target: &PreviewTarget, now: u64) -> Result<(), Denial> {
    // The verifier already checked `exp` (with leeway); this guards callers that cache grants.
    if grant.expires_at.saturating_add(token::LEEWAY_SECS) < now {
        return Err(Denial::InvalidToken(TokenError::Expired));
    }
    // A token naming no sandbox (the policy decides) is checked for its ports only here.
    if grant.identity.is_none() && !grant.allows_sandbox(target.sandbox_id.as_str()) {
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
    /// The new request target (`:path`) when the query carried `access_token`: only that pair is
    /// cut out. `None`: the target reaches the app byte for byte as the client sent it.
    pub path: Option<String>,
    /// Who the caller is, for the app: the `--forward-claim` headers of the verified token and
    /// the `--assertion`. Set, replacing any value the client sent (names lower-case).
    pub identity_headers: Vec<(Arc<str>, String)>,
    /// The grant the request is let through on (for the audit log's `sub` and `jti`).
    pub grant: Option<Arc<Grant>>,
    /// The `[[policy]]` rule that allowed it, if one did (for the audit log).
    pub rule: Option<Arc<str>>,
}

/// Client headers with this prefix are Envoy's to set; a client's copy never reaches the app
/// (Envoy itself strips only the ones it knows).
const ENVOY_PREFIX: &str = "x-envoy-";

pub fn allow(
    request: &RequestView,
    authorized: &Authorized,
    preview: &Preview,
    policy: &Policy,
    now: u64,
) -> Allow {
    let mut set_headers = vec![
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
    if policy.disable_cors {
        set_headers.push((DISABLE_CORS_HEADER, "true".to_owned()));
    }
    // Who the caller is, only ever from a verified token's grant.
    let mut identity_headers: Vec<(Arc<str>, String)> = Vec::new();
    if let Some(grant) = &authorized.grant {
        identity_headers.extend(grant.forwarded.iter().cloned());
        if let Some(assertions) = &policy.assertion
            && let Ok((_, domain)) = policy.hosts.parse(&request.host)
            && let Some(assertion) = assertions.assertion(grant, &authorized.target, domain, now)
        {
            identity_headers.push((Arc::clone(&assertions.header), assertion));
        }
    }
    // Every client copy of a header we set for the app goes, whether or not we set it this time
    // (the token may lack the claim): the app can trust these headers to come from us.
    let ours = |name: &str| {
        policy.verifier.forwarded_headers().any(|h| h == name)
            || policy
                .assertion
                .as_ref()
                .is_some_and(|a| &*a.header == name)
    };
    let mut remove_headers: Vec<String> = Vec::new();
    for (name, _) in &request.headers {
        let spoofed =
            (name.starts_with(RESERVED_PREFIX) || name.starts_with(ENVOY_PREFIX) || ours(name))
                && !set_headers.iter().any(|(set, _)| set == name)
                && !identity_headers.iter().any(|(set, _)| &**set == name)
                && !remove_headers.contains(name);
        if spoofed {
            remove_headers.push(name.clone());
        }
    }
    let cookies: Vec<&str> = request.header_values("cookie").collect();
    let authorization: Vec<&str> = request.header_values("authorization").collect();
    // Our Bearer, and the OAuth2 filter's copy of its session (whatever authenticated this
    // request), never reach the sandbox.
    if authorized.source == Some(TokenSource::AuthorizationHeader)
        || policy.sso.forwarded_bearer(&authorization, &cookies)
    {
        remove_headers.push("authorization".to_owned());
    }
    // Our cookie and the OAuth2 filter's never reach the sandbox; the app's own cookies pass
    // untouched.
    let ours = |name: &str| name == policy.cookie_name || policy.sso.is_filter_cookie(name);
    match token::cookies_without_any(&cookies, ours) {
        Some(rest) if rest.is_empty() => remove_headers.push("cookie".to_owned()),
        Some(rest) => set_headers.push(("cookie", rest)),
        None => {}
    }
    Allow {
        set_headers,
        remove_headers,
        path: without_token(&request.path),
        identity_headers,
        grant: authorized.grant.clone(),
        rule: authorized.rule.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::host::HostError;
    use crate::authz::preview::{DaytonaError, Upstream};
    use crate::authz::token::{Claims, Signer, now};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";
    const DOMAIN: &str = "preview.example.com";
    const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

    fn policy() -> Policy {
        Policy::new(DOMAIN, Verifier::hs256(SECRET, None, None))
    }

    /// The decision without look-ups or revocations.
    fn authorize(request: &RequestView, policy: &Policy, now: u64) -> Result<Verdict, Denial> {
        super::authorize(request, policy, now, &Lookups::default(), &NoRevocations)
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
        method_request("GET", host, path, headers)
    }

    fn method_request(
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RequestView {
        RequestView::new(method, host, path).with_headers(headers)
    }

    fn host(port: u16) -> String {
        format!("{port}-{ID}.{DOMAIN}")
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn target(port: u16) -> PreviewTarget {
        PreviewTarget {
            sandbox_id: ID.parse().unwrap(),
            port,
        }
    }

    fn forwarded(verdict: Result<Verdict, Denial>) -> Authorized {
        match verdict {
            Ok(Verdict::Forward(authorized)) => authorized,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn replied(verdict: Result<Verdict, Denial>) -> LocalReply {
        match verdict {
            Ok(Verdict::Reply(reply)) => reply,
            other => panic!("no local reply: {other:?}"),
        }
    }

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
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
        let authorized = forwarded(verdict);
        assert_eq!(authorized.target, target(3000));
        assert_eq!(authorized.source, Some(TokenSource::AuthorizationHeader));
        assert_eq!(authorized.grant.unwrap().sandboxes, [ID]);
    }

    #[test]
    fn a_query_token_from_a_script_is_forwarded() {
        let t = token(ID, Some(vec![8080]), now() + 60);
        let verdict = authorize(
            &request(&host(8080), &format!("/a?x=1&access_token={t}"), &[]),
            &policy(),
            now(),
        );
        assert_eq!(forwarded(verdict).source, Some(TokenSource::QueryParameter));
    }

    #[test]
    fn a_share_link_in_a_browser_becomes_a_cookie() {
        let now = now();
        let t = token(ID, None, now + 600);
        let req = request(
            &host(3000),
            &format!("/a?x=1&access_token={t}&y=2"),
            &[HTML],
        );
        let reply = replied(authorize(&req, &policy(), now));
        assert_eq!(reply.status, 302);
        assert_eq!(header(&reply, "location"), Some("/a?x=1&y=2"));
        assert_eq!(
            header(&reply, "set-cookie").unwrap(),
            format!("daytona_authz={t}; Max-Age=600; Path=/; HttpOnly; SameSite=Lax")
        );

        // https, as Envoy's x-forwarded-proto says, adds Secure.
        let link = format!("/?access_token={t}");
        let secure = request(&host(3000), &link, &[HTML, ("x-forwarded-proto", "https")]);
        let reply = replied(authorize(&secure, &policy(), now));
        assert!(header(&reply, "set-cookie").unwrap().ends_with("; Secure"));
        assert_eq!(header(&reply, "location"), Some("/"));

        // Sec-Fetch-Mode: navigate counts as a browser navigation too; an upgrade never does.
        let nav = request(
            &host(3000),
            &format!("/?access_token={t}"),
            &[("sec-fetch-mode", "navigate")],
        );
        assert_eq!(replied(authorize(&nav, &policy(), now)).status, 302);
        let upgrade = request(
            &host(3000),
            &format!("/?access_token={t}"),
            &[HTML, ("upgrade", "websocket")],
        );
        assert!(matches!(
            authorize(&upgrade, &policy(), now),
            Ok(Verdict::Forward(_))
        ));
    }

    #[test]
    fn an_invalid_share_link_is_not_turned_into_a_cookie() {
        let t = token(ID, None, now() - 3600);
        let req = request(&host(3000), &format!("/?access_token={t}"), &[HTML]);
        assert_eq!(
            authorize(&req, &policy(), now()),
            Err(Denial::InvalidToken(TokenError::Expired))
        );
    }

    #[test]
    fn the_cookie_authenticates_and_a_working_copy_beats_a_tossed_one() {
        let good = token(ID, None, now() + 60);
        let tossed = token(OTHER, None, now() + 60);
        let cookie = format!("app=1; daytona_authz={tossed}; daytona_authz={good}");
        let req = request(&host(3000), "/", &[("cookie", &cookie)]);
        assert_eq!(
            forwarded(authorize(&req, &policy(), now())).source,
            Some(TokenSource::Cookie)
        );
        let only_tossed = format!("daytona_authz={tossed}");
        let req = request(&host(3000), "/", &[("cookie", &only_tossed)]);
        assert_eq!(authorize(&req, &policy(), now()), Err(Denial::WrongSandbox));
    }

    /// The cookie of sandbox `ID`, sent by a browser with these headers.
    fn with_cookie(method: &str, headers: &[(&str, &str)]) -> Result<Verdict, Denial> {
        let cookie = format!("daytona_authz={}", token(ID, None, now() + 60));
        let mut all = headers.to_vec();
        all.push(("cookie", &cookie));
        authorize(
            &method_request(method, &host(3000), "/api", &all),
            &policy(),
            now(),
        )
    }

    #[test]
    fn the_cookie_works_for_navigations_and_this_sandboxs_own_pages() {
        let own = format!("https://{}", host(8080));
        let own_port = format!("https://{}:8443", host(3000));
        let own_referer = format!("http://{}/page", host(3000));
        for (method, headers) in [
            // A top-level navigation, from anywhere: the page that started it reads nothing.
            (
                "GET",
                vec![
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-site", "cross-site"),
                ],
            ),
            (
                "HEAD",
                vec![
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-site", "same-site"),
                ],
            ),
            // This sandbox's pages, any port.
            (
                "POST",
                vec![("origin", own.as_str()), ("sec-fetch-site", "same-site")],
            ),
            (
                "GET",
                vec![("origin", own_port.as_str()), ("sec-fetch-mode", "cors")],
            ),
            (
                "GET",
                vec![
                    ("sec-fetch-site", "same-origin"),
                    ("sec-fetch-mode", "no-cors"),
                ],
            ),
            (
                "GET",
                vec![("sec-fetch-site", "none"), ("sec-fetch-mode", "cors")],
            ),
            // A program with a cookie jar, and a plain-HTTP browser of this very sandbox.
            ("GET", vec![]),
            ("PUT", vec![]),
            ("GET", vec![("referer", own_referer.as_str())]),
            ("GET", vec![("referer", "https://elsewhere.example.org/")]),
        ] {
            assert!(
                matches!(with_cookie(method, &headers), Ok(Verdict::Forward(_))),
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn the_cookie_does_not_work_for_other_pages() {
        let sibling = format!("https://{}", host(3000).replace(ID, OTHER));
        let sibling_referer = format!("http://{}/x", host(3000).replace(ID, OTHER));
        let own = format!("https://{}", host(3000));
        for (method, headers) in [
            // Redirected from another origin: the browser says `null`.
            ("GET", vec![("origin", "null"), ("sec-fetch-mode", "cors")]),
            // Another sandbox, another host of the site, anything else.
            (
                "GET",
                vec![("origin", sibling.as_str()), ("sec-fetch-mode", "cors")],
            ),
            ("GET", vec![("origin", "https://evil.preview.example.com")]),
            ("GET", vec![("origin", "https://app.example.org")]),
            ("GET", vec![("origin", "not an origin")]),
            ("GET", vec![("origin", own.as_str()), ("origin", "null")]),
            // A navigation that is not a GET (a form POST) is judged by its Origin.
            (
                "POST",
                vec![("sec-fetch-mode", "navigate"), ("origin", sibling.as_str())],
            ),
            // Subresources of other pages (`<script src>`, `<img>`, `fetch(.., {mode: "no-cors"})`).
            (
                "GET",
                vec![
                    ("sec-fetch-site", "same-site"),
                    ("sec-fetch-mode", "no-cors"),
                ],
            ),
            (
                "GET",
                vec![
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "no-cors"),
                ],
            ),
            (
                "GET",
                vec![
                    ("sec-fetch-site", "same-site"),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-mode", "navigate"),
                ],
            ),
            // Plain HTTP, no Fetch Metadata, but the Referer gives the page away.
            ("GET", vec![("referer", sibling_referer.as_str())]),
            ("GET", vec![("referer", "http://evil.preview.example.com/")]),
        ] {
            assert_eq!(
                with_cookie(method, &headers),
                Err(Denial::CrossSandbox),
                "{method} {headers:?}"
            );
        }
        assert_eq!(Denial::CrossSandbox.status(), 403);
    }

    #[test]
    fn a_bearer_or_query_token_is_not_judged_by_where_the_request_came_from() {
        let good = token(ID, None, now() + 60);
        let auth = bearer(&good);
        let headers = [("origin", "null"), ("sec-fetch-site", "cross-site")];
        let mut with_bearer = headers.to_vec();
        with_bearer.push(("authorization", &auth));
        let req = request(&host(3000), "/", &with_bearer);
        assert!(matches!(
            authorize(&req, &policy(), now()),
            Ok(Verdict::Forward(_))
        ));
        let req = request(&host(3000), &format!("/?access_token={good}"), &headers);
        assert!(matches!(
            authorize(&req, &policy(), now()),
            Ok(Verdict::Forward(_))
        ));
    }

    #[test]
    fn a_malformed_bearer_beside_our_cookie_is_refused() {
        let good = token(ID, None, now() + 60);
        for value in [
            format!("Basic eA==,Bearer {good}"),
            format!("Bearer\t{good}"),
        ] {
            let result = with_cookie("GET", &[("authorization", &value)]);
            let Err(denial) = result else {
                panic!("{value}: {result:?}");
            };
            assert_eq!(
                denial,
                Denial::AmbiguousToken(ExtractError::MalformedAuthorization)
            );
            assert_eq!(denial.status(), 401);
        }
    }

    #[test]
    fn preflights_with_an_origin_list_are_approved_only_for_listed_origins() {
        let preflight = |origin: &str| {
            method_request(
                "OPTIONS",
                &host(3000),
                "/api",
                &[("origin", origin), ("access-control-request-method", "PUT")],
            )
        };
        for disable_cors in [false, true] {
            let mut policy = policy();
            policy.disable_cors = disable_cors;
            policy.cors_allow_origins = vec!["https://app.example.com".into()];
            let reply = replied(authorize(
                &preflight("https://app.example.com"),
                &policy,
                now(),
            ));
            assert_eq!(reply.status, 204);
            let reply = replied(authorize(
                &preflight("HTTPS://APP.example.com/"),
                &policy,
                now(),
            ));
            assert_eq!(reply.status, 204);
            for origin in ["https://evil.example.com", "null", "http://app.example.com"] {
                let denial = authorize(&preflight(origin), &policy, now()).unwrap_err();
                assert_eq!(denial, Denial::CorsOriginRefused);
                let reply = render(&denial, &preflight(origin), &policy);
                assert_eq!(reply.status, 403);
                assert_eq!(header(&reply, "access-control-allow-origin"), None);
                assert_eq!(header(&reply, "www-authenticate"), None);
            }
        }
    }

    #[test]
    fn with_disable_cors_preflights_are_approved_only_for_the_sandboxs_own_pages() {
        let mut policy = policy();
        policy.disable_cors = true;
        let preflight = |origin: &str| {
            method_request(
                "OPTIONS",
                &host(3000),
                "/api",
                &[("origin", origin), ("access-control-request-method", "PUT")],
            )
        };
        let own = format!("https://{}", host(8080));
        let reply = replied(authorize(&preflight(&own), &policy, now()));
        assert_eq!(reply.status, 204);
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            Some(own.as_str())
        );
        let sibling = format!("https://{}", host(3000).replace(ID, OTHER));
        for origin in [sibling.as_str(), "https://evil.preview.example.com", "null"] {
            assert_eq!(
                authorize(&preflight(origin), &policy, now()),
                Err(Denial::CorsOriginRefused),
                "{origin}"
            );
        }
        // Listed origins too; never a forward (nothing unauthenticated reaches the sandbox).
        policy.cors_allow_origins = vec!["https://app.example.com".into()];
        let reply = replied(authorize(
            &preflight("https://app.example.com"),
            &policy,
            now(),
        ));
        assert_eq!(reply.status, 204);
        // A bad host is still refused first.
        let bad = method_request(
            "OPTIONS",
            "x",
            "/",
            &[("origin", "o"), ("access-control-request-method", "GET")],
        );
        assert!(matches!(
            authorize(&bad, &policy, now()),
            Err(Denial::BadHost(_))
        ));
    }

    #[test]
    fn a_token_of_ours_in_an_unreadable_authorization_header_is_refused() {
        let good = token(ID, None, now() + 60);
        for value in [
            format!("Bearer,{good}"),
            format!("Token {good}"),
            format!("Bearer={good}"),
            good.clone(),
        ] {
            assert_eq!(
                with_cookie("GET", &[("authorization", &value)]),
                Err(Denial::AmbiguousToken(ExtractError::MalformedAuthorization)),
                "{value}"
            );
            let req = request(
                &host(3000),
                &format!("/?access_token={good}"),
                &[("authorization", &value)],
            );
            assert_eq!(
                authorize(&req, &policy(), now()),
                Err(Denial::AmbiguousToken(ExtractError::MalformedAuthorization)),
                "{value}"
            );
        }
    }

    #[test]
    fn a_good_cookie_is_not_cleared_when_another_credential_fails() {
        let good = format!("daytona_authz={}", token(ID, None, now() + 60));
        let bad_query = request(&host(3000), "/?access_token=nope", &[("cookie", &good)]);
        let denial = authorize(&bad_query, &policy(), now()).unwrap_err();
        assert_eq!(denial.status(), 401);
        assert_eq!(
            header(&render(&denial, &bad_query, &policy()), "set-cookie"),
            None
        );
        let bad_header = request(
            &host(3000),
            "/",
            &[("cookie", &good), ("authorization", "Bearer\tx")],
        );
        let denial = authorize(&bad_header, &policy(), now()).unwrap_err();
        assert_eq!(
            header(&render(&denial, &bad_header, &policy()), "set-cookie"),
            None
        );
        // The cookie itself failing still clears it.
        let tossed = format!("daytona_authz={}", token(ID, None, now() - 3600));
        let req = request(&host(3000), "/", &[("cookie", &tossed)]);
        let denial = authorize(&req, &policy(), now()).unwrap_err();
        assert!(header(&render(&denial, &req, &policy()), "set-cookie").is_some());
    }

    #[test]
    fn preflights_are_answered_without_a_token() {
        let req = method_request(
            "OPTIONS",
            &host(3000),
            "/api",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type"),
            ],
        );
        let reply = replied(authorize(&req, &policy(), now()));
        assert_eq!(reply.status, 204);
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            header(&reply, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&reply, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            header(&reply, "access-control-allow-headers"),
            Some("content-type")
        );
        // A bad host is still refused first; a plain OPTIONS still needs a token.
        let bad = method_request(
            "OPTIONS",
            "x",
            "/",
            &[("origin", "o"), ("access-control-request-method", "GET")],
        );
        assert!(matches!(
            authorize(&bad, &policy(), now()),
            Err(Denial::BadHost(_))
        ));
        let plain = method_request("OPTIONS", &host(3000), "/", &[]);
        assert_eq!(
            authorize(&plain, &policy(), now()),
            Err(Denial::MissingToken)
        );
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
                Denial::BadHost(HostError::PortOutOfRange(
                    crate::authz::host::PortRange::DAYTONA,
                )),
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
            let reply = render(&denial, &req, &policy());
            assert_eq!(reply.status, status);
            assert!(!reply.body.contains(&good), "the reply echoes the token");
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
    fn daytonas_own_words_are_logged_not_shown() {
        let said = "Invalid port: sandbox 1234 internal detail";
        for error in [
            DaytonaError::BadRequest(said.into()),
            DaytonaError::BadAnswer(said.into()),
            DaytonaError::Unavailable(said.into()),
        ] {
            let denial = Denial::Daytona(error);
            assert!(denial.to_string().contains(said), "the log line says it");
            let request = request(&host(3000), "/", &[HTML]);
            for shown in [
                denial.message(),
                render(&denial, &request, &policy()).body,
                render(&denial, &super::RequestView::default(), &policy()).body,
            ] {
                assert!(!shown.contains("internal detail"), "{shown}");
            }
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

    #[test]
    fn browsers_get_pages_and_scripts_get_json() {
        let req = request(&host(3000), "/", &[HTML]);
        let page = render(&Denial::MissingToken, &req, &policy());
        assert_eq!(page.status, 401);
        assert_eq!(
            header(&page, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page.body.starts_with("<!doctype html>"));
        assert!(header(&page, "www-authenticate").is_some());

        let req = request(&host(3000), "/", &[("accept", "*/*")]);
        let json = render(&Denial::Daytona(DaytonaError::NotFound), &req, &policy());
        assert_eq!(json.status, 404);
        assert_eq!(header(&json, "content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&json.body).unwrap();
        assert_eq!(body["error"], "sandbox_not_found");
    }

    #[test]
    fn under_single_sign_on_a_failed_cookie_is_cleared_for_the_domain_and_its_parents_too() {
        let mut policy = policy();
        policy.sso.token_cookie = Some("IdToken".into());
        let req = request(&host(3000), "/", &[("cookie", "daytona_authz=planted")]);
        let reply = render(&Denial::InvalidToken(TokenError::Malformed), &req, &policy);
        let cleared: Vec<&str> = reply
            .headers
            .iter()
            .filter(|(name, _)| *name == "set-cookie")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(
            cleared,
            [
                "daytona_authz=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
                "daytona_authz=; Max-Age=0; Path=/; Domain=preview.example.com; HttpOnly; SameSite=Lax",
                "daytona_authz=; Max-Age=0; Path=/; Domain=example.com; HttpOnly; SameSite=Lax",
            ]
        );
    }

    #[test]
    fn a_failed_cookie_is_cleared() {
        let req = request(
            &host(3000),
            "/",
            &[("cookie", "daytona_authz=stale; app=1")],
        );
        let reply = render(&Denial::InvalidToken(TokenError::Expired), &req, &policy());
        assert_eq!(
            header(&reply, "set-cookie"),
            Some("daytona_authz=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax")
        );

        // Over https the clearing cookie is Secure, like the cookie it replaces: browsers
        // ignore a `__Host-` cookie without it, and the stale one would stay.
        let mut policy = policy();
        policy.cookie_name = "__Host-daytona_authz".into();
        let req = request(
            &host(3000),
            "/",
            &[
                ("cookie", "__Host-daytona_authz=stale"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let reply = render(&Denial::InvalidToken(TokenError::Expired), &req, &policy);
        assert_eq!(
            header(&reply, "set-cookie"),
            Some("__Host-daytona_authz=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure")
        );
    }

    /// https is what Envoy's X-Forwarded-Proto says (Envoy sets it from the client's connection
    /// or keeps a trusted proxy's), never `:scheme`, which an HTTP/2 client picks itself.
    #[test]
    fn only_a_single_forwarded_proto_https_means_https() {
        let now = now();
        let t = token(ID, None, now + 600);
        let link = format!("/?access_token={t}");
        let secure = |headers: &[(&str, &str)], scheme: &str| {
            let mut headers = headers.to_vec();
            headers.push(HTML);
            let mut req = request(&host(3000), &link, &headers);
            req.scheme = scheme.into();
            let reply = replied(authorize(&req, &policy(), now));
            header(&reply, "set-cookie").unwrap().ends_with("; Secure")
        };
        assert!(secure(&[("x-forwarded-proto", "https")], "http"));
        assert!(secure(&[("x-forwarded-proto", "HTTPS")], "http"));
        assert!(!secure(&[], "https"));
        assert!(!secure(&[("x-forwarded-proto", "http")], "https"));
        assert!(!secure(&[("x-forwarded-proto", "https, http")], "http"));
        assert!(!secure(
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-proto", "http")
            ],
            "http"
        ));
        assert!(!secure(&[("forwarded", "proto=https")], "http"));

        let mut policy = policy();
        policy.login_url = Some(url::Url::parse("https://login.example.com/signin").unwrap());
        let return_to = |headers: &[(&str, &str)], scheme: &str| {
            let mut headers = headers.to_vec();
            headers.push(HTML);
            let mut req = request(&host(3000), "/p", &headers);
            req.scheme = scheme.into();
            let reply = render(&Denial::MissingToken, &req, &policy);
            let location = url::Url::parse(header(&reply, "location").unwrap()).unwrap();
            let (_, to) = location
                .query_pairs()
                .find(|(k, _)| k == "return_to")
                .unwrap();
            to.into_owned()
        };
        let https = format!("https://{}/p", host(3000));
        let http = format!("http://{}/p", host(3000));
        assert_eq!(return_to(&[("x-forwarded-proto", "https")], "http"), https);
        assert_eq!(return_to(&[], "https"), http);
        assert_eq!(return_to(&[("x-forwarded-proto", "http")], "https"), http);
    }

    #[test]
    fn with_a_login_url_browsers_are_sent_to_sign_in_and_back() {
        let mut policy = policy();
        policy.login_url = Some(url::Url::parse("https://login.example.com/signin?app=x").unwrap());
        let req = request(&host(3000), "/deep/page?q=1&access_token=bad", &[HTML]);
        let reply = render(&Denial::MissingToken, &req, &policy);
        assert_eq!(reply.status, 302);
        let location = url::Url::parse(header(&reply, "location").unwrap()).unwrap();
        assert_eq!(location.host_str(), Some("login.example.com"));
        let return_to: Vec<_> = location
            .query_pairs()
            .filter(|(k, _)| k == "return_to")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(return_to, [format!("http://{}/deep/page?q=1", host(3000))]);
        // Scripts and 403s are not redirected.
        let script = request(&host(3000), "/", &[]);
        assert_eq!(render(&Denial::MissingToken, &script, &policy).status, 401);
        assert_eq!(render(&Denial::WrongSandbox, &req, &policy).status, 403);
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
                ("x-envoy-foo", "1"),
                ("x-envoy-retry-on", "5xx"),
                ("cookie", "app=1"),
            ],
        );
        let authorized = Authorized {
            target: target(3000),
            source: Some(TokenSource::AuthorizationHeader),
            grant: None,
            rule: None,
        };
        let allow = allow(&req, &authorized, &preview(), &policy(), now());
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
                "x-envoy-foo".to_owned(),
                "x-envoy-retry-on".to_owned(),
                "authorization".to_owned()
            ]
        );
        assert_eq!(allow.path, None);
    }

    #[test]
    fn allow_keeps_what_is_not_ours() {
        let req = request(
            &host(3000),
            "/?access_token=t&%61ccess_token=u",
            &[
                ("authorization", "Basic x"),
                ("cookie", "app=1; daytona_authz=t; b=2"),
            ],
        );
        let authorized = Authorized {
            target: target(3000),
            source: Some(TokenSource::QueryParameter),
            grant: None,
            rule: None,
        };
        let allow = allow(&req, &authorized, &preview(), &policy(), now());
        assert!(
            allow.remove_headers.is_empty(),
            "{:?}",
            allow.remove_headers
        );
        assert!(
            allow
                .set_headers
                .contains(&("cookie", "app=1; b=2".to_owned()))
        );
        assert_eq!(allow.path.as_deref(), Some("/"), "both spellings cut out");
        let req = RequestView {
            path: "/p?z=1&access_token=t&a&&%61ccess_token=u&z=3&b=%2F+".into(),
            ..req
        };
        let allow = super::allow(&req, &authorized, &preview(), &policy(), now());
        assert_eq!(allow.path.as_deref(), Some("/p?z=1&a&&z=3&b=%2F+"));
    }

    #[test]
    fn only_the_token_pair_leaves_the_target() {
        for (path, expected) in [
            ("/?access_token=t", Some("/")),
            ("/a/b?access_token=t&x=1", Some("/a/b?x=1")),
            ("/?x=1&access_token=t", Some("/?x=1")),
            ("/?&&access_token=t", Some("/?&")),
            ("/?a&access_token=t", Some("/?a")),
            ("/?access_token=t#f", Some("/#f")),
            ("/?z=1&a=2&z=3", None),
            ("/?a", None),
            ("/?&&a=1", None),
            ("/?access_tokens=1", None),
            ("/", None),
        ] {
            assert_eq!(without_token(path).as_deref(), expected, "{path}");
        }
    }

    /// A policy forwarding `email` and `groups` to the app.
    fn forwarding_policy() -> Policy {
        use crate::authz::app_identity::ForwardClaim;
        use crate::authz::token::ClaimMapping;
        let mapping = ClaimMapping {
            forward: vec![
                ForwardClaim::parse("email=X-User-Email").unwrap(),
                ForwardClaim::parse("groups=X-User-Groups").unwrap(),
            ],
            ..ClaimMapping::default()
        };
        Policy::new(
            DOMAIN,
            Verifier::hs256(SECRET, None, None).with_mapping(mapping),
        )
    }

    /// A token for sandbox `ID` with these claims besides `sandbox_id` and `exp`.
    fn token_with(extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({"sandbox_id": ID, "exp": now() + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// What reaches the app of `headers` and `token`'s claims under `policy`.
    fn forwarded_allow(policy: &Policy, token: &str, headers: &[(&str, &str)]) -> Allow {
        let auth = bearer(token);
        let mut all = headers.to_vec();
        all.push(("authorization", &auth));
        let req = request(&host(3000), "/", &all);
        let authorized = forwarded(authorize(&req, policy, now()));
        allow(&req, &authorized, &preview(), policy, now())
    }

    fn identity(allow: &Allow) -> Vec<(&str, &str)> {
        allow
            .identity_headers
            .iter()
            .map(|(n, v)| (&**n, v.as_str()))
            .collect()
    }

    #[test]
    fn forwarded_claims_reach_the_app_in_their_headers() {
        let policy = forwarding_policy();
        let t = token_with(serde_json::json!({
            "sub": "alice", "email": "alice@example.com", "groups": ["dev", "ops"],
        }));
        let allow = forwarded_allow(&policy, &t, &[]);
        assert_eq!(
            identity(&allow),
            [
                ("x-user-email", "alice@example.com"),
                ("x-user-groups", "dev,ops")
            ]
        );
        let grant = allow.grant.as_ref().unwrap();
        assert_eq!(grant.subject.as_deref(), Some("alice"));
        // The values are made with the grant, and remembered with it.
        let again = forwarded_allow(&policy, &t, &[]);
        assert!(Arc::ptr_eq(grant, again.grant.as_ref().unwrap()));
        // Nothing without the setting.
        assert!(
            forwarded_allow(&self::policy(), &t, &[])
                .identity_headers
                .is_empty()
        );
    }

    #[test]
    fn client_copies_of_forwarded_headers_never_reach_the_app() {
        let policy = forwarding_policy();
        let spoofs = [
            ("x-user-email", "admin@example.com"),
            ("x-user-email", "root@example.com"),
            ("x-user-groups", "admins"),
        ];
        // The token has one of the claims: that header is set (replacing the client's copies),
        // the other is removed.
        let t = token_with(serde_json::json!({"email": "alice@example.com"}));
        let allow = forwarded_allow(&policy, &t, &spoofs);
        assert_eq!(identity(&allow), [("x-user-email", "alice@example.com")]);
        assert!(allow.remove_headers.contains(&"x-user-groups".to_owned()));
        assert!(!allow.remove_headers.contains(&"x-user-email".to_owned()));
        // Neither claim: both removed, nothing set.
        let t = token_with(serde_json::json!({"sub": "bob"}));
        let allow = forwarded_allow(&policy, &t, &spoofs);
        assert!(allow.identity_headers.is_empty());
        for name in ["x-user-email", "x-user-groups"] {
            assert_eq!(
                allow.remove_headers.iter().filter(|n| *n == name).count(),
                1,
                "{name}: {:?}",
                allow.remove_headers
            );
        }
        // Let through without a grant (a token-less route): removed too.
        let req = request(&host(3000), "/", &spoofs);
        let authorized = Authorized {
            target: target(3000),
            source: Some(TokenSource::AuthorizationHeader),
            grant: None,
            rule: None,
        };
        let allow = super::allow(&req, &authorized, &preview(), &policy, now());
        assert!(allow.identity_headers.is_empty());
        assert!(allow.remove_headers.contains(&"x-user-email".to_owned()));
        assert!(allow.remove_headers.contains(&"x-user-groups".to_owned()));
    }

    #[test]
    fn a_claim_cannot_inject_a_header() {
        let policy = forwarding_policy();
        for email in [
            "alice@example.com\r\nx-admin: true",
            "alice\nx-daytona-preview-token: x",
            "alice\u{0}",
        ] {
            let t = token_with(serde_json::json!({ "email": email }));
            let allow = forwarded_allow(&policy, &t, &[("x-user-email", "spoof")]);
            assert!(allow.identity_headers.is_empty(), "{email:?}");
            assert!(allow.remove_headers.contains(&"x-user-email".to_owned()));
        }
        let t = token_with(serde_json::json!({"email": {"nested": "object"}, "groups": [["x"]]}));
        assert!(
            forwarded_allow(&policy, &t, &[])
                .identity_headers
                .is_empty()
        );
    }

    #[test]
    fn the_assertion_goes_in_its_header_and_a_client_copy_never_does() {
        use crate::authz::app_identity::{AssertionKey, Assertions};
        let key = Arc::new(AssertionKey::generate().unwrap());
        let mut policy = policy();
        policy.assertion = Some(Arc::new(Assertions::new("X-Caller", key, 60)));
        let t = token_with(serde_json::json!({"sub": "alice"}));
        let allow = forwarded_allow(&policy, &t, &[("x-caller", "forged")]);
        let identity = identity(&allow);
        assert_eq!(identity.len(), 1);
        assert_eq!(identity[0].0, "x-caller");
        assert_ne!(identity[0].1, "forged");
        assert_eq!(identity[0].1.split('.').count(), 3, "a compact JWS");
        assert!(!allow.remove_headers.contains(&"x-caller".to_owned()));
        let req = request(&host(3000), "/", &[("x-caller", "forged")]);
        let authorized = Authorized {
            target: target(3000),
            source: Some(TokenSource::AuthorizationHeader),
            grant: None,
            rule: None,
        };
        let allow = super::allow(&req, &authorized, &preview(), &policy, now());
        assert!(allow.identity_headers.is_empty());
        assert!(allow.remove_headers.contains(&"x-caller".to_owned()));
    }

    #[test]
    fn allow_removes_a_cookie_header_holding_only_ours_and_can_disable_cors() {
        let req = request(&host(3000), "/", &[("cookie", "daytona_authz=t")]);
        let authorized = Authorized {
            target: target(3000),
            source: Some(TokenSource::Cookie),
            grant: None,
            rule: None,
        };
        let mut policy = policy();
        policy.disable_cors = true;
        let allow = allow(&req, &authorized, &preview(), &policy, now());
        assert_eq!(allow.remove_headers, vec!["cookie".to_owned()]);
        assert!(
            allow
                .set_headers
                .contains(&(DISABLE_CORS_HEADER, "true".to_owned()))
        );
    }

    /// An introspected token the rules decide: issued to our client by its `client_id` (the
    /// `aud` of an opaque access token is the API, at Okta the same for every application).
    #[test]
    fn an_introspected_token_the_rules_decide_must_be_for_our_client() {
        let mut policy = with_rules();
        policy.introspection = true;
        policy.sso.audience = Some("previews".into());
        let req = request(&host(3000), "/", &[("authorization", "Bearer opaque-abc")]);
        for (claims, allowed) in [
            (
                serde_json::json!({"aud": "api://default", "client_id": "wiki"}),
                false,
            ),
            (
                serde_json::json!({"aud": "api://default", "client_id": "previews"}),
                true,
            ),
            (serde_json::json!({"aud": "previews"}), true),
            (serde_json::json!({"aud": "api://default"}), false),
        ] {
            let mut claims = claims;
            claims["active"] = serde_json::json!(true);
            claims["groups"] = serde_json::json!(["team-a"]);
            claims["exp"] = serde_json::json!(now() + 60);
            let mut lookups = described("team-a");
            lookups.introspected.push((
                "opaque-abc".into(),
                Introspected::Active(claims.as_object().unwrap().clone()),
            ));
            let verdict = super::authorize(&req, &policy, now(), &lookups, &NoRevocations);
            assert_eq!(
                matches!(verdict, Ok(Verdict::Forward(_))),
                allowed,
                "{claims}: {verdict:?}"
            );
        }
    }

    #[test]
    fn opaque_tokens_are_introspected_when_configured() {
        let mut policy = policy();
        let req = request(&host(3000), "/", &[("authorization", "Bearer opaque-abc")]);
        // Without introspection an opaque token is just invalid.
        assert_eq!(
            authorize(&req, &policy, now()),
            Err(Denial::InvalidToken(TokenError::Malformed))
        );
        policy.introspection = true;
        let mut lookups = Lookups::default();
        assert_eq!(
            super::authorize(&req, &policy, now(), &lookups, &NoRevocations),
            Ok(Verdict::Lookup(Lookup::Introspect("opaque-abc".into())))
        );
        let claims =
            serde_json::json!({"active": true, "sandbox_id": [OTHER, ID], "exp": now() + 60});
        lookups.introspected.push((
            "opaque-abc".into(),
            Introspected::Active(claims.as_object().unwrap().clone()),
        ));
        let verdict = super::authorize(&req, &policy, now(), &lookups, &NoRevocations);
        assert!(matches!(verdict, Ok(Verdict::Forward(_))), "{verdict:?}");
        for (answer, denial) in [
            (
                Introspected::Inactive,
                Denial::InvalidToken(TokenError::Inactive),
            ),
            (
                Introspected::Unavailable,
                Denial::StatusUnknown("token introspection"),
            ),
        ] {
            let lookups = Lookups {
                introspected: vec![("opaque-abc".into(), answer)],
                ..Lookups::default()
            };
            let verdict = super::authorize(&req, &policy, now(), &lookups, &NoRevocations);
            assert_eq!(verdict, Err(denial.clone()));
        }
        assert_eq!(Denial::StatusUnknown("x").status(), 503);
    }

    #[test]
    fn an_unknown_key_asks_for_one_jwks_refresh() {
        // A well-formed RS256 token naming a kid nobody holds.
        let header = r#"{"alg":"RS256","kid":"nobody"}"#;
        let body = serde_json::json!({"sandbox_id": ID, "exp": now() + 60}).to_string();
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let token = format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(body.as_bytes()),
            b64(b"sig")
        );
        let auth = bearer(&token);
        let req = request(&host(3000), "/", &[("authorization", &auth)]);
        let mut policy = policy();
        policy.jwks = true;
        assert_eq!(
            super::authorize(&req, &policy, now(), &Lookups::default(), &NoRevocations),
            Ok(Verdict::Lookup(Lookup::RefreshJwks))
        );
        let refreshed = Lookups {
            jwks_refreshed: true,
            ..Lookups::default()
        };
        assert_eq!(
            super::authorize(&req, &policy, now(), &refreshed, &NoRevocations),
            Err(Denial::InvalidToken(TokenError::UnknownKey(Some(
                "nobody".into()
            ))))
        );
    }

    struct Revoked(RevocationStatus);

    impl RevocationView for Revoked {
        fn revocation(
            &self,
            _: Option<&str>,
            _: &str,
            _: Option<&str>,
            _: u64,
        ) -> RevocationStatus {
            self.0
        }
    }

    /// Each revocation status but `Active`, and the denial it is.
    fn revocation_denials() -> [(RevocationStatus, Denial); 3] {
        [
            (
                RevocationStatus::TokenRevoked,
                Denial::InvalidToken(TokenError::Revoked),
            ),
            (RevocationStatus::SandboxRevoked, Denial::SandboxRevoked),
            (
                RevocationStatus::Unknown,
                Denial::StatusUnknown("revocations"),
            ),
        ]
    }

    #[test]
    fn revocations_deny_and_an_unknown_status_fails_closed() {
        let t = token(ID, None, now() + 60);
        let auth = bearer(&t);
        let req = request(&host(3000), "/", &[("authorization", &auth)]);
        for (status, expected) in revocation_denials() {
            let verdict = super::authorize(
                &req,
                &policy(),
                now(),
                &Lookups::default(),
                &Revoked(status),
            );
            assert_eq!(verdict, Err(expected));
        }
        assert_eq!(Denial::SandboxRevoked.status(), 403);
        assert_eq!(Denial::InvalidToken(TokenError::Revoked).status(), 401);
    }

    // --- per-route policy (Envoy's context_extensions) -------------------------------------

    fn on_route(request: RequestView, pairs: &[(&str, &str)]) -> RequestView {
        request
            .on_route(crate::authz::route::Route::from_extensions(pairs.iter().copied()).unwrap())
    }

    #[test]
    fn a_route_serves_only_its_ports() {
        let t = token(ID, None, now() + 60);
        let auth = bearer(&t);
        let ports = [("daytona_authz.ports", "3000,8000-8099")];
        for port in [3000, 8000, 8099] {
            let req = on_route(
                request(&host(port), "/", &[("authorization", &auth)]),
                &ports,
            );
            assert_eq!(
                forwarded(authorize(&req, &policy(), now())).target,
                target(port)
            );
        }
        for port in [3001, 7999, 8100] {
            let req = on_route(
                request(&host(port), "/", &[("authorization", &auth)]),
                &ports,
            );
            assert_eq!(
                authorize(&req, &policy(), now()),
                Err(Denial::PortNotOnRoute)
            );
            // Refused before any token is looked at: no token needed to learn it.
            let bare = on_route(request(&host(port), "/", &[]), &ports);
            assert_eq!(
                authorize(&bare, &policy(), now()),
                Err(Denial::PortNotOnRoute)
            );
        }
        assert_eq!(Denial::PortNotOnRoute.status(), 403);
        assert_eq!(Denial::PortNotOnRoute.www_authenticate(), None);
    }

    #[test]
    fn a_route_listing_ports_outside_the_port_range_is_refused_whole() {
        let t = token(ID, None, now() + 60);
        let auth = bearer(&t);
        let req = on_route(
            request(&host(3000), "/", &[("authorization", &auth)]),
            &[("daytona_authz.ports", "3000,80")],
        );
        let denial = authorize(&req, &policy(), now()).unwrap_err();
        assert!(matches!(denial, Denial::BadRoute(_)), "{denial:?}");
        assert_eq!(denial.status(), 500);
        assert_eq!(denial.code(), "route_misconfigured");
        let reply = render(&denial, &req, &policy());
        assert!(
            !reply.body.contains("80"),
            "internals stay in the log: {}",
            reply.body
        );
    }

    #[test]
    fn a_preview_token_only_route_needs_no_token_but_keeps_every_other_rule() {
        let open = [
            ("daytona_authz.access", "preview-token-only"),
            ("daytona_authz.route", "hooks"),
        ];
        let req = on_route(
            method_request(
                "POST",
                &host(3000),
                "/hook?access_token=x",
                &[
                    ("x-daytona-preview-token", "spoof"),
                    ("x-envoy-original-path", "/x"),
                    ("cookie", "daytona_authz=abc; app=1"),
                ],
            ),
            &open,
        );
        let authorized = forwarded(authorize(&req, &policy(), now()));
        assert_eq!(
            authorized,
            Authorized {
                target: target(3000),
                source: None,
                grant: None,
                rule: None,
            }
        );
        let allow = allow(&req, &authorized, &preview(), &policy(), now());
        assert!(
            allow
                .set_headers
                .contains(&(PREVIEW_TOKEN_HEADER, "preview-token-123".into()))
        );
        assert!(
            allow
                .remove_headers
                .contains(&"x-envoy-original-path".to_owned())
        );
        assert_eq!(
            allow
                .set_headers
                .iter()
                .filter(|(n, _)| *n == PREVIEW_TOKEN_HEADER)
                .count(),
            1
        );
        assert!(
            allow.set_headers.contains(&("cookie", "app=1".into())),
            "our cookie never reaches the app"
        );
        assert_eq!(
            allow.path.as_deref(),
            Some("/hook"),
            "nor a token in the query"
        );
        // The host is still parsed strictly, the port range and the route's ports still apply,
        // and a revoked sandbox stays revoked.
        let bad = on_route(request(&format!("3000-{ID}.evil.com"), "/", &[]), &open);
        assert_eq!(
            authorize(&bad, &policy(), now()),
            Err(Denial::BadHost(HostError::WrongDomain))
        );
        let narrow = on_route(
            request(&host(3001), "/", &[]),
            &[open[0], ("daytona_authz.ports", "3000")],
        );
        assert_eq!(
            authorize(&narrow, &policy(), now()),
            Err(Denial::PortNotOnRoute)
        );
        for (status, expected) in [
            (RevocationStatus::SandboxRevoked, Denial::SandboxRevoked),
            (
                RevocationStatus::Unknown,
                Denial::StatusUnknown("revocations"),
            ),
        ] {
            let verdict = super::authorize(
                &req,
                &policy(),
                now(),
                &Lookups::default(),
                &Revoked(status),
            );
            assert_eq!(verdict, Err(expected));
        }
        // `token` is the default: the same request elsewhere needs a token.
        let closed = on_route(
            request(&host(3000), "/", &[]),
            &[("daytona_authz.access", "token")],
        );
        assert_eq!(
            authorize(&closed, &policy(), now()),
            Err(Denial::MissingToken)
        );
    }

    #[test]
    fn a_route_may_require_one_more_audience() {
        let with_aud = |aud: Option<&str>| {
            Signer::hs256(SECRET)
                .sign(&Claims {
                    sandbox_id: ID.into(),
                    exp: now() + 60,
                    ports: None,
                    iss: None,
                    aud: aud.map(str::to_owned),
                })
                .unwrap()
        };
        let route = [("daytona_authz.audience", "admin-console")];
        let good = bearer(&with_aud(Some("admin-console")));
        let req = on_route(
            request(&host(3000), "/", &[("authorization", &good)]),
            &route,
        );
        forwarded(authorize(&req, &policy(), now()));
        for token in [with_aud(Some("other")), with_aud(None)] {
            let auth = bearer(&token);
            let req = on_route(
                request(&host(3000), "/", &[("authorization", &auth)]),
                &route,
            );
            assert_eq!(
                authorize(&req, &policy(), now()),
                Err(Denial::InvalidToken(TokenError::WrongIssuerOrAudience))
            );
            // The same token on a route without the key is fine.
            forwarded(authorize(
                &request(&host(3000), "/", &[("authorization", &auth)]),
                &policy(),
                now(),
            ));
        }
    }

    #[test]
    fn a_route_may_send_browsers_to_its_own_sign_in_page() {
        let mut with_login = policy();
        with_login.login_url = Some("https://login.example.com/".parse().unwrap());
        let browser = request(&host(3000), "/app", &[HTML]);
        let route = [("daytona_authz.login_url", "https://sso.example.org/start")];
        for (policy, req, expected) in [
            (
                &with_login,
                on_route(browser.clone(), &route),
                Some("https://sso.example.org/start?return_to="),
            ),
            (
                &policy(),
                on_route(browser.clone(), &route),
                Some("https://sso.example.org/start?return_to="),
            ),
            (
                &with_login,
                browser.clone(),
                Some("https://login.example.com/?return_to="),
            ),
            (&policy(), browser.clone(), None),
        ] {
            let denial = authorize(&req, policy, now()).unwrap_err();
            let reply = render(&denial, &req, policy);
            match expected {
                Some(prefix) => {
                    assert_eq!(reply.status, 302);
                    assert!(
                        header(&reply, "location").unwrap().starts_with(prefix),
                        "{reply:?}"
                    );
                }
                None => assert_eq!(reply.status, 401),
            }
        }
    }

    #[test]
    fn hosts_under_each_preview_domain_are_served_and_keep_cookies_apart() {
        let mut two = policy();
        two.hosts.domains.push("preview.example.org".into());
        let t = token(ID, None, now() + 60);
        let auth = bearer(&t);
        for domain in [DOMAIN, "preview.example.org"] {
            let req = request(
                &format!("3000-{ID}.{domain}"),
                "/",
                &[("authorization", &auth)],
            );
            assert_eq!(forwarded(authorize(&req, &two, now())).target, target(3000));
        }
        let other = request(
            &format!("3000-{ID}.preview.example.net"),
            "/",
            &[("authorization", &auth)],
        );
        assert_eq!(
            authorize(&other, &two, now()),
            Err(Denial::BadHost(HostError::WrongDomain))
        );
        // A page of another sandbox under the second domain cannot use this sandbox's cookie.
        let cookie = format!("{DEFAULT_COOKIE_NAME}={t}");
        let cross = request(
            &host(3000),
            "/",
            &[
                ("cookie", &cookie),
                (
                    "referer",
                    &format!("http://3000-{OTHER}.preview.example.org/"),
                ),
            ],
        );
        assert_eq!(authorize(&cross, &two, now()), Err(Denial::CrossSandbox));
        let own = request(
            &host(3000),
            "/",
            &[
                ("cookie", &cookie),
                ("referer", &format!("http://4000-{ID}.preview.example.org/")),
            ],
        );
        forwarded(authorize(&own, &two, now()));
    }

    // --- [[policy]]: tokens that name no sandbox ------------------------------------------

    fn identity_token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn with_rules() -> Policy {
        let rules = crate::authz::policy::Rules::compile(&[
            crate::authz::policy::RuleSpec {
                name: "team".into(),
                allow: r#"token.groups.exists(g, g == sandbox.labels["team"])"#.into(),
            },
            crate::authz::policy::RuleSpec {
                name: "admins".into(),
                allow: r#""platform-admins" in token.groups && request.port != 22222"#.into(),
            },
        ])
        .unwrap();
        let mut policy = policy();
        policy.verifier = policy.verifier.with_policy_identities(true);
        policy.hosts.ports = crate::authz::host::PortRange::parse("3000-30000").unwrap();
        policy.rules = Some(Arc::new(rules));
        policy
    }

    fn described(team: &str) -> Lookups {
        let info = SandboxInfo::new(
            ID.into(),
            "web".into(),
            "org".into(),
            "started".into(),
            std::collections::BTreeMap::from([("team".to_owned(), team.to_owned())]),
        )
        .unwrap();
        Lookups {
            sandbox: Some(SandboxAnswer::Found(Arc::new(info))),
            ..Lookups::default()
        }
    }

    #[test]
    fn a_token_naming_no_sandbox_is_malformed_without_policies() {
        let t = identity_token(serde_json::json!({"groups": ["team-a"], "exp": now() + 60}));
        let auth = bearer(&t);
        let req = request(&host(3000), "/", &[("authorization", &auth)]);
        assert_eq!(
            authorize(&req, &policy(), now()),
            Err(Denial::InvalidToken(TokenError::Malformed))
        );
        // Rules configured but the verifier not told: the same (the two go together).
        let mut half = with_rules();
        half.verifier = Verifier::hs256(SECRET, None, None);
        assert_eq!(
            authorize(&req, &half, now()),
            Err(Denial::InvalidToken(TokenError::Malformed))
        );
    }

    /// The reviewer's attack: the identity provider's token for another application (a wiki's ID
    /// token, an access token for another API) sent as a Bearer, a link or our cookie, when
    /// --sso-audience names ours. Decided by the rules, it must name our audience whatever way
    /// it came; a share link (naming its sandbox) is not affected.
    #[test]
    fn a_token_the_rules_decide_must_name_the_sso_audience_however_it_is_sent() {
        let mut policy = with_rules();
        policy.sso.audience = Some("previews".into());
        let lookups = described("team-a");
        let token_for = |aud: &str| {
            identity_token(serde_json::json!({"groups": ["team-a"], "aud": aud, "exp": now() + 60}))
        };
        let decide =
            |req: &RequestView| super::authorize(req, &policy, now(), &lookups, &NoRevocations);
        for (aud, allowed) in [("wiki", false), ("previews", true)] {
            let t = token_for(aud);
            let auth = bearer(&t);
            let cookie = format!("{DEFAULT_COOKIE_NAME}={t}");
            for req in [
                request(&host(3000), "/", &[("authorization", &auth)]),
                request(&host(3000), &format!("/?access_token={t}"), &[]),
                request(&host(3000), "/", &[("cookie", &cookie)]),
            ] {
                let verdict = decide(&req);
                if allowed {
                    assert!(verdict.is_ok(), "{aud}: {verdict:?}");
                } else {
                    assert_eq!(
                        verdict,
                        Err(Denial::InvalidToken(TokenError::WrongIssuerOrAudience)),
                        "{aud}"
                    );
                }
            }
        }
        // Keycloak's "audience resolve": a wiki's access token with our client in `aud` too,
        // but issued to the wiki (`azp`); our client's token for another API; Okta's `cid`.
        for (claims, allowed) in [
            (
                serde_json::json!({"aud": ["previews", "account"], "azp": "wiki"}),
                false,
            ),
            (
                serde_json::json!({"aud": ["previews", "account"], "azp": "previews"}),
                true,
            ),
            (
                serde_json::json!({"aud": "account", "azp": "previews"}),
                false,
            ),
            (
                serde_json::json!({"aud": "api://default", "cid": "previews"}),
                false,
            ),
            (serde_json::json!({"aud": "previews", "cid": "wiki"}), false),
            // A JWT's own `client_id` claim proves nothing.
            (
                serde_json::json!({"aud": "wiki", "client_id": "previews"}),
                false,
            ),
        ] {
            let mut claims = claims;
            claims["groups"] = serde_json::json!(["team-a"]);
            claims["exp"] = serde_json::json!(now() + 60);
            let t = identity_token(claims.clone());
            let auth = bearer(&t);
            let verdict = decide(&request(&host(3000), "/", &[("authorization", &auth)]));
            assert_eq!(verdict.is_ok(), allowed, "{claims}: {verdict:?}");
        }
        // No `aud` at all: refused too.
        let bare = identity_token(serde_json::json!({"groups": ["team-a"], "exp": now() + 60}));
        let auth = bearer(&bare);
        assert_eq!(
            decide(&request(&host(3000), "/", &[("authorization", &auth)])),
            Err(Denial::InvalidToken(TokenError::WrongIssuerOrAudience))
        );
        // A share link names its sandbox: --jwt-audience governs it, not --sso-audience.
        let link = token(ID, None, now() + 60);
        let auth = bearer(&link);
        assert!(
            forwarded(decide(&request(
                &host(3000),
                "/",
                &[("authorization", &auth)]
            )))
            .grant
            .is_some()
        );
    }

    #[test]
    fn with_policies_the_rules_decide_on_the_sandbox_daytona_describes() {
        let policy = with_rules();
        let t = identity_token(
            serde_json::json!({"sub": "alice", "groups": ["team-a"], "exp": now() + 60}),
        );
        let auth = bearer(&t);
        let req = request(&host(3000), "/app?x=1", &[("authorization", &auth)]);
        let decide =
            |lookups: &Lookups| super::authorize(&req, &policy, now(), lookups, &NoRevocations);
        assert_eq!(
            decide(&Lookups::default()),
            Ok(Verdict::Lookup(Lookup::Sandbox(
                ID.parse().unwrap(),
                "alice".into()
            )))
        );
        let authorized = forwarded(decide(&described("team-a")));
        assert_eq!(authorized.target, target(3000));
        assert!(authorized.grant.unwrap().identity.is_some());
        let denial = decide(&described("team-b")).unwrap_err();
        assert_eq!(denial, Denial::PolicyDenied { closest: None });
        assert_eq!((denial.status(), denial.code()), (403, "policy_denied"));
        let reply = render(&denial, &req, &policy);
        assert!(reply.body.contains("policy_denied"), "{}", reply.body);
        let page = render(&denial, &request(&host(3000), "/", &[HTML]), &policy);
        assert!(page.body.contains("<html"), "{}", page.body);
        // Daytona cannot say: fail closed; no such sandbox: 404.
        for (error, status) in [
            (DaytonaError::Unavailable("down".into()), 503),
            (DaytonaError::NotFound, 404),
        ] {
            let lookups = Lookups {
                sandbox: Some(SandboxAnswer::Failed(error.clone())),
                ..Lookups::default()
            };
            assert_eq!(decide(&lookups).unwrap_err().status(), status, "{error}");
        }
    }

    #[test]
    fn a_platform_admin_opens_every_team_but_not_port_22222_and_the_log_says_how_close() {
        let policy = with_rules();
        let t =
            identity_token(serde_json::json!({"groups": ["platform-admins"], "exp": now() + 60}));
        let auth = bearer(&t);
        for team in ["team-a", "team-b"] {
            let req = request(&host(3000), "/", &[("authorization", &auth)]);
            forwarded(super::authorize(
                &req,
                &policy,
                now(),
                &described(team),
                &NoRevocations,
            ));
        }
        let req = request(&host(22222), "/", &[("authorization", &auth)]);
        let denial = super::authorize(&req, &policy, now(), &described("team-a"), &NoRevocations)
            .unwrap_err();
        assert_eq!(
            denial,
            Denial::PolicyDenied {
                closest: Some("\"admins\" (its first 1 of 2 conditions true)".into())
            }
        );
        assert!(denial.to_string().contains("admins"), "the log says it");
        let reply = render(&denial, &req, &policy);
        assert!(
            !reply.body.contains("admins"),
            "the client never learns it: {}",
            reply.body
        );
    }

    #[test]
    fn revocations_apply_to_policy_tokens_before_daytona_is_asked() {
        let policy = with_rules();
        let t = identity_token(
            serde_json::json!({"groups": ["team-a"], "exp": now() + 60, "jti": "j-1"}),
        );
        let auth = bearer(&t);
        let req = request(&host(3000), "/", &[("authorization", &auth)]);
        for (status, expected) in revocation_denials() {
            assert_eq!(
                super::authorize(&req, &policy, now(), &Lookups::default(), &Revoked(status)),
                Err(expected)
            );
        }
        // A ports claim still narrows what such a token opens.
        let narrow = identity_token(
            serde_json::json!({"groups": ["team-a"], "exp": now() + 60, "ports": [3000]}),
        );
        let auth = bearer(&narrow);
        let req = request(&host(4000), "/", &[("authorization", &auth)]);
        assert_eq!(
            super::authorize(&req, &policy, now(), &described("team-a"), &NoRevocations),
            Err(Denial::PortNotGranted)
        );
    }

    #[test]
    fn a_token_naming_sandboxes_works_as_before_with_policies() {
        let policy = with_rules();
        let t = token(ID, None, now() + 60);
        let auth = bearer(&t);
        let req = request(&host(3000), "/", &[("authorization", &auth)]);
        // No look-up, no rule: the claim decides.
        forwarded(authorize(&req, &policy, now()));
        let other = token(OTHER, None, now() + 60);
        let auth = bearer(&other);
        let req = request(&host(3000), "/", &[("authorization", &auth)]);
        assert_eq!(authorize(&req, &policy, now()), Err(Denial::WrongSandbox));
    }

    // --- single sign-on: the session of Envoy's OAuth2 filter ----------------------------------

    fn sso_policy() -> Policy {
        let mut policy = policy();
        policy.sso = Sso {
            token_cookie: Some("IdToken".into()),
            audience: Some("previews".into()),
            ..Sso::default()
        };
        policy
    }

    /// An ID token as the provider signs it for our client (`aud`), naming `sandbox`.
    fn id_token(sandbox: &str, audience: &str) -> String {
        Signer::hs256(SECRET)
            .sign(&Claims {
                sandbox_id: sandbox.into(),
                exp: now() + 600,
                ports: None,
                iss: None,
                aud: Some(audience.into()),
            })
            .unwrap()
    }

    /// The Cookie header a signed-in browser's request has once the filter decrypted it.
    fn session(id_token: &str) -> String {
        format!(
            "app=1; OauthHMAC=h; OauthExpires=9; BearerToken=at; IdToken={id_token}; RefreshToken=rt"
        )
    }

    const NAVIGATION: (&str, &str) = ("sec-fetch-mode", "navigate");

    #[test]
    fn a_single_sign_on_session_is_verified_like_any_token() {
        let t = id_token(ID, "previews");
        let cookie = session(&t);
        let req = request(&host(3000), "/", &[("cookie", &cookie), NAVIGATION]);
        let authorized = forwarded(authorize(&req, &sso_policy(), now()));
        assert_eq!(authorized.source, Some(TokenSource::SsoCookie));
        assert_eq!(authorized.grant.unwrap().sandboxes, [ID]);
        // Another sandbox: 403, as for any token that does not name it.
        let other = request(
            &format!("3000-{OTHER}.{DOMAIN}"),
            "/",
            &[("cookie", &cookie), NAVIGATION],
        );
        assert_eq!(
            authorize(&other, &sso_policy(), now()),
            Err(Denial::WrongSandbox)
        );
        // An ID token the provider issued to another of its clients: not a session here.
        let foreign = session(&id_token(ID, "another-app"));
        let req = request(&host(3000), "/", &[("cookie", &foreign), NAVIGATION]);
        assert_eq!(
            authorize(&req, &sso_policy(), now()),
            Err(Denial::InvalidToken(TokenError::WrongIssuerOrAudience))
        );
        // Single sign-on off: the cookie is nobody's token.
        let req = request(&host(3000), "/", &[("cookie", &cookie), NAVIGATION]);
        assert_eq!(authorize(&req, &policy(), now()), Err(Denial::MissingToken));
    }

    #[test]
    fn the_session_is_refused_to_another_sandboxs_pages() {
        let t = id_token(ID, "previews");
        let cookie = session(&t);
        let sibling = format!("https://3000-{OTHER}.{DOMAIN}");
        for headers in [
            vec![
                ("cookie", cookie.as_str()),
                ("origin", sibling.as_str()),
                ("sec-fetch-mode", "cors"),
            ],
            vec![
                ("cookie", cookie.as_str()),
                ("sec-fetch-site", "same-site"),
                ("sec-fetch-mode", "no-cors"),
            ],
        ] {
            let req = request(&host(3000), "/", &headers);
            assert_eq!(
                authorize(&req, &sso_policy(), now()),
                Err(Denial::CrossSandbox),
                "{headers:?}"
            );
        }
        // The sandbox's own pages may use it.
        let own = format!("https://8080-{ID}.{DOMAIN}");
        let req = request(
            &host(3000),
            "/",
            &[
                ("cookie", &cookie),
                ("origin", &own),
                ("sec-fetch-mode", "cors"),
            ],
        );
        forwarded(authorize(&req, &sso_policy(), now()));
    }

    #[test]
    fn the_filters_forwarded_bearer_is_the_session_not_a_token_of_the_callers() {
        let t = id_token(ID, "previews");
        let cookie = session(&t);
        // forward_bearer_token: the access token (opaque here) repeated in Authorization.
        let sibling = format!("https://3000-{OTHER}.{DOMAIN}");
        let req = request(
            &host(3000),
            "/",
            &[
                ("cookie", &cookie),
                ("authorization", "Bearer at"),
                ("origin", &sibling),
            ],
        );
        // Read as the session: the cookie's rules apply, and refuse another sandbox's page.
        assert_eq!(
            authorize(&req, &sso_policy(), now()),
            Err(Denial::CrossSandbox)
        );
        let req = request(
            &host(3000),
            "/",
            &[
                ("cookie", &cookie),
                ("authorization", "Bearer at"),
                NAVIGATION,
            ],
        );
        let authorized = forwarded(authorize(&req, &sso_policy(), now()));
        assert_eq!(authorized.source, Some(TokenSource::SsoCookie));
        let allow = allow(&req, &authorized, &preview(), &sso_policy(), now());
        assert!(
            allow.remove_headers.contains(&"authorization".to_owned()),
            "{allow:?}"
        );
        // A Bearer of the caller's own wins over the session, as our tokens always do.
        let own = token(ID, None, now() + 60);
        let bearer = bearer(&own);
        let req = request(
            &host(3000),
            "/",
            &[("cookie", &cookie), ("authorization", &bearer)],
        );
        assert_eq!(
            forwarded(authorize(&req, &sso_policy(), now())).source,
            Some(TokenSource::AuthorizationHeader)
        );
    }

    #[test]
    fn the_filters_cookies_never_reach_the_app() {
        let t = id_token(ID, "previews");
        let cookie = format!(
            "{}; OauthNonce.ab12=n; OauthCodeVerifier.ab12=v; daytona_authz=x",
            session(&t)
        );
        let req = request(
            &host(3000),
            "/",
            &[
                ("cookie", &cookie),
                ("authorization", "Bearer at"),
                NAVIGATION,
            ],
        );
        let authorized = Authorized {
            target: target(3000),
            source: Some(TokenSource::SsoCookie),
            grant: None,
            rule: None,
        };
        for policy in [sso_policy(), policy()] {
            // Whether or not single sign-on is on here.
            let allow = super::allow(&req, &authorized, &preview(), &policy, now());
            let cookies: Vec<&String> = allow
                .set_headers
                .iter()
                .filter(|(n, _)| *n == "cookie")
                .map(|(_, v)| v)
                .collect();
            assert_eq!(cookies, ["app=1"], "{allow:?}");
            assert!(
                allow.remove_headers.contains(&"authorization".to_owned()),
                "{allow:?}"
            );
        }
        // Only the session's cookies: no Cookie header at all.
        let only = session(&t);
        let req = request(
            &host(3000),
            "/",
            &[("cookie", only.trim_start_matches("app=1; "))],
        );
        let allow = super::allow(&req, &authorized, &preview(), &sso_policy(), now());
        assert!(
            allow.remove_headers.contains(&"cookie".to_owned()),
            "{allow:?}"
        );
        // An app's own Authorization that is no copy of the session stays.
        let req = request(
            &host(3000),
            "/",
            &[
                ("cookie", "IdToken=x"),
                ("authorization", "Basic dXNlcjpwdw=="),
            ],
        );
        let allow = super::allow(&req, &authorized, &preview(), &sso_policy(), now());
        assert!(
            !allow.remove_headers.contains(&"authorization".to_owned()),
            "{allow:?}"
        );
    }

    #[test]
    fn an_opaque_session_cookie_is_never_introspected() {
        let mut policy = sso_policy();
        policy.introspection = true;
        // What a request the filter passed by carries: the token cookie still encrypted.
        let req = request(
            &host(3000),
            "/",
            &[("cookie", "IdToken=Ab3dEncryptedByEnvoy"), NAVIGATION],
        );
        assert_eq!(
            authorize(&req, &policy, now()),
            Err(Denial::InvalidToken(TokenError::Malformed))
        );
    }

    #[test]
    fn our_own_cookie_and_links_win_over_the_session() {
        let t = id_token(ID, "previews");
        let ours = token(ID, None, now() + 60);
        let cookie = format!("{}; daytona_authz={ours}", session(&t));
        let req = request(&host(3000), "/", &[("cookie", &cookie), NAVIGATION]);
        assert_eq!(
            forwarded(authorize(&req, &sso_policy(), now())).source,
            Some(TokenSource::Cookie)
        );
        let link = format!("/?access_token={ours}");
        let req = request(&host(3000), &link, &[("cookie", &session(&t)), NAVIGATION]);
        assert_eq!(
            replied(authorize(&req, &sso_policy(), now())).reason,
            "link_to_cookie"
        );
    }
}
