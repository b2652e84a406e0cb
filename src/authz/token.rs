//! Access tokens: where a request carries one, and what a verified one grants.
//!
//! An access token is a JWT with claims naming the sandbox(es) it opens (`sandbox_id` by default,
//! `--sandbox-claim`; a string or an array of strings), optionally the ports (`ports`,
//! `--ports-claim`; absent = any port), `exp` (required), and `nbf`, `iat`, `jti`, `iss`, `aud`.
//! It is signed either with the configured HS256 secret (and, during a rotation, the previous
//! one), or with a key from the configured JWKS. The algorithm always comes from the key we hold,
//! never from the token header: an HS256 token is checked only against HS256 secrets, an
//! asymmetric token only against the JWKS key its `kid` names, and only with that key's
//! algorithm. `alg: none` and every other algorithm are refused before any signature work.
//! Tokens that are not JWTs are "opaque": the caller may introspect them (RFC 7662).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::authz::app_identity::{ForwardClaim, claim_value};
use crate::authz::policy::TokenClaims;

/// Tokens longer than this are refused without parsing (a JWT we issue is a few hundred bytes).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Tokens whose verification is remembered (see [`Verifier::verify`]). About 200 bytes each; a
/// small set of hot tokens is the common case, and more distinct tokens only cost a re-verify.
const VERIFIED_ENTRIES: usize = 4096;

/// Audiences of one token read at most (a route asks for one of them).
const MAX_AUDIENCES: usize = 64;

/// Default allowed clock skew between an issuer and us (`exp`, `nbf`, `iat`); `--clock-skew`.
pub const LEEWAY_SECS: u64 = 30;

/// The claims `mint` signs. Verification reads claims by the configured names instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sandbox_id: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Claims `mint` signs: [`Claims`] plus the standard ones a link needs to be revocable.
#[derive(Debug, Clone, Serialize)]
pub struct MintedClaims<'a> {
    #[serde(flatten)]
    pub claims: &'a Claims,
    pub iat: u64,
    pub jti: String,
}

/// Which claims name the sandbox(es) and ports a token opens, and which go to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    pub sandbox: String,
    pub ports: String,
    /// `--forward-claim`: claims whose values the app receives in request headers.
    pub forward: Vec<ForwardClaim>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            sandbox: "sandbox_id".into(),
            ports: "ports".into(),
            forward: Vec::new(),
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Lower-cased, to compare with the id parsed from the (case-insensitive) host. Any of them.
    pub sandboxes: Vec<String>,
    /// `None`: every port.
    pub ports: Option<Vec<u16>>,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// For revocation by token.
    pub jti: Option<String>,
    /// The token's `aud` (a string or an array of strings), for a route's
    /// `daytona_authz.audience`; empty when absent.
    pub audiences: Vec<String>,
    /// The party a JWT was issued to, when it names one: `azp` (OpenID Connect), else `cid`
    /// (Okta), else `appid` (Entra ID v1).
    pub issued_to: Option<String>,
    /// An introspection answer's `client_id` (RFC 7662), else its `azp`: set by the caller that
    /// introspected (a JWT's own `client_id` claim proves nothing of the kind).
    pub introspected_for: Option<String>,
    /// Made from an introspection answer (not a JWT).
    pub introspected: bool,
    /// `sub`, when it is a string (at most 1 KiB): who the caller is, for the assertion and the
    /// audit log.
    pub subject: Option<String>,
    /// The `--forward-claim` headers and their values, for the claims this token has (made with
    /// the grant, so remembered with it): `(header, value)`, header lower-case.
    pub forwarded: Vec<(Arc<str>, String)>,
    /// A token without the sandbox claim, accepted because `[[policy]]` rules are configured:
    /// its claims, for the rules to decide which sandboxes it opens (`sandboxes` is empty).
    pub identity: Option<TokenClaims>,
}

impl Grant {
    pub fn allows_sandbox(&self, sandbox_id: &str) -> bool {
        self.sandboxes.iter().any(|s| s == sandbox_id)
    }

    pub fn has_audience(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| a == audience)
    }

    /// Whether the token was issued to the OAuth2 client `client_id`. A JWT: its `aud` names the
    /// client, and its `azp` (`cid`, `appid`), when it has one, is the client too (OpenID
    /// Connect's rule for ID tokens): an access token another application requested names that
    /// application there even when the provider also put our client in `aud` (Keycloak's
    /// "audience resolve"), and a token our client requested for another API does not name us
    /// in `aud`. An introspection answer: its `client_id` (else `azp`), else its `aud`.
    pub fn issued_to_client(&self, client_id: &str) -> bool {
        match &self.introspected_for {
            Some(client) => client == client_id,
            None if self.introspected => self.has_audience(client_id),
            None => {
                self.has_audience(client_id)
                    && self
                        .issued_to
                        .as_deref()
                        .is_none_or(|party| party == client_id)
            }
        }
    }

    pub fn allows_port(&self, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|ports| ports.contains(&port))
    }
}

/// Why a token was refused. Kept coarse on purpose: the client learns that its token is not
/// acceptable, the log learns why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is too long")]
    TooLong,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    /// Its `exp` is further ahead than `--max-token-lifetime` allows.
    #[error("token expires too far in the future")]
    LivesTooLong,
    #[error("token signature or algorithm is not acceptable")]
    BadSignature,
    #[error("token issuer or audience is not acceptable")]
    WrongIssuerOrAudience,
    #[error("token is malformed")]
    Malformed,
    /// Signed with a key we do not hold (yet): the caller may refresh the JWKS once and retry.
    #[error("token names an unknown signing key")]
    UnknownKey(Option<String>),
    /// Not a JWT: the caller may introspect it.
    #[error("token is not a JWT")]
    Opaque,
    #[error("token was revoked")]
    Revoked,
    #[error("token is not active (introspection)")]
    Inactive,
}

/// A key from a JWKS, with the algorithm it is for (taken from the key, never from a token).
#[derive(Clone)]
pub struct JwkKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    /// For an RSA key whose JWK names no `alg`: any RSA algorithm the token asks for.
    pub any_rsa: bool,
    pub key: DecodingKey,
}

impl std::fmt::Debug for JwkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwkKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl JwkKey {
    /// The algorithm to verify `alg` tokens with this key, if it is for that algorithm.
    fn algorithm_for(&self, alg: Algorithm) -> Option<Algorithm> {
        if alg == self.algorithm || (self.any_rsa && RSA_ALGORITHMS.contains(&alg)) {
            Some(alg)
        } else {
            None
        }
    }
}

/// Verifies access tokens: HS256 secrets (current first), JWKS keys, claim names and the
/// expectations on `iss`, `aud` and time. Plain data: swapped whole when keys change.
#[derive(Clone)]
pub struct Verifier {
    hs_keys: Vec<DecodingKey>,
    jwks: Vec<JwkKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    /// Seconds from now past which no token may expire (`--max-token-lifetime`); `None`: any.
    max_lifetime: Option<u64>,
    mapping: ClaimMapping,
    /// `[[policy]]` rules are configured: a token without the sandbox claim is an identity for
    /// them to decide on, not a malformed token.
    policy_identities: bool,
    /// What jsonwebtoken checks (HS256; the JWKS algorithms change only `algorithms`), built
    /// when the rules change rather than for every token.
    validation: Validation,
    /// Grants of tokens this verifier (these keys and rules) has verified, by the token's
    /// SHA-256. Shared by clones; every `with_*` starts an empty one, so a key that is gone
    /// (SIGHUP, JWKS refresh) takes its tokens' grants with it.
    verified: Arc<quick_cache::sync::Cache<[u8; 32], Arc<Grant>>>,
}

fn verified_cache() -> Arc<quick_cache::sync::Cache<[u8; 32], Arc<Grant>>> {
    Arc::new(quick_cache::sync::Cache::new(VERIFIED_ENTRIES))
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs_keys", &self.hs_keys.len())
            .field("jwks", &self.jwks)
            .field("mapping", &self.mapping)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with no keys yet; `iss`/`aud` checked when given.
    pub fn new(issuer: Option<&str>, audience: Option<&str>) -> Self {
        Verifier {
            hs_keys: Vec::new(),
            jwks: Vec::new(),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            leeway: LEEWAY_SECS,
            max_lifetime: None,
            mapping: ClaimMapping::default(),
            policy_identities: false,
            validation: validation(issuer, audience, LEEWAY_SECS),
            verified: verified_cache(),
        }
    }

    /// An HS256 verifier. `issuer` and `audience` are checked when given.
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Self {
        Verifier::new(issuer, audience).with_hs256(secret)
    }

    /// Accepts tokens signed with this HS256 secret too. The first one added is the current
    /// secret; later ones are previous secrets, still accepted during a rotation.
    pub fn with_hs256(mut self, secret: &[u8]) -> Self {
        self.hs_keys.push(DecodingKey::from_secret(secret));
        self.verified = verified_cache();
        self
    }

    /// Also accepts tokens signed with `secret` (the previous key of a rotation).
    pub fn with_previous(self, secret: &[u8]) -> Self {
        self.with_hs256(secret)
    }

    pub fn with_jwks(mut self, keys: Vec<JwkKey>) -> Self {
        self.jwks = keys;
        self.verified = verified_cache();
        self
    }

    pub fn with_mapping(mut self, mapping: ClaimMapping) -> Self {
        self.mapping = mapping;
        self.verified = verified_cache();
        self
    }

    /// With `true` (policies configured), tokens without the sandbox claim are accepted as
    /// identities for the policy to decide on; with `false` they are malformed.
    pub fn with_policy_identities(mut self, on: bool) -> Self {
        self.policy_identities = on;
        self.verified = verified_cache();
        self
    }

    pub fn with_leeway(mut self, seconds: u64) -> Self {
        self.leeway = seconds;
        self.validation = validation(
            self.issuer.as_deref(),
            self.audience.as_deref(),
            self.leeway,
        );
        self.verified = verified_cache();
        self
    }

    /// Refuses tokens that expire more than `seconds` (plus the clock skew) from now, whatever
    /// their issuer put in `exp`; `None` accepts any `exp`.
    pub fn with_max_lifetime(mut self, seconds: Option<u64>) -> Self {
        self.max_lifetime = seconds;
        self.verified = verified_cache();
        self
    }

    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies `token` (signature, algorithm from the key, `exp`/`nbf`/`iat`, issuer and
    /// audience when configured) and maps its claims to a grant.
    ///
    /// A token that verified once is not parsed or checked for its signature again: its grant is
    /// remembered under the token's SHA-256 (so only the very same bytes match) while this
    /// verifier's keys stay the same, and only its expiry is checked against `now` on later uses
    /// (`nbf` and `iat` cannot become false again once true). Failures are not remembered.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Grant>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        if !looks_like_jwt(token) {
            return Err(TokenError::Opaque);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(grant) = self.verified.get(&digest) {
            if self.expired(grant.expires_at, now) {
                return Err(TokenError::Expired);
            }
            return Ok(grant);
        }
        let grant = Arc::new(self.verify_uncached(token, now)?);
        self.verified.insert(digest, Arc::clone(&grant));
        Ok(grant)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        let header = jose_header(token)?;
        let claims = if header.alg == Algorithm::HS256 {
            self.verify_with(token, Algorithm::HS256, &self.hs_keys)?
        } else if matches!(header.alg, Algorithm::HS384 | Algorithm::HS512) {
            // HMAC only with the configured HS256 secrets; never with a JWKS (public) key.
            return Err(TokenError::BadSignature);
        } else {
            let key = self.jwk_for(header.alg, header.kid.as_deref())?;
            let alg = key.0;
            self.verify_with(token, alg, std::slice::from_ref(&key.1.key))?
        };
        self.grant(&claims, now)
    }

    /// The JWKS key the token's `kid` names, and the algorithm to use with it.
    fn jwk_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(Algorithm, &JwkKey), TokenError> {
        let candidates: Vec<&JwkKey> = match kid {
            Some(kid) => self
                .jwks
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            // Without a kid, only an unambiguous key set will do.
            None if self.jwks.len() == 1 => self.jwks.iter().collect(),
            None => Vec::new(),
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey(kid.map(str::to_owned)));
        }
        candidates
            .into_iter()
            .find_map(|k| k.algorithm_for(alg).map(|a| (a, k)))
            .ok_or(TokenError::BadSignature)
    }

    fn verify_with(
        &self,
        token: &str,
        algorithm: Algorithm,
        keys: &[DecodingKey],
    ) -> Result<Map<String, Value>, TokenError> {
        let other;
        let validation = if self.validation.algorithms == [algorithm] {
            &self.validation
        } else {
            other = {
                let mut validation = self.validation.clone();
                validation.algorithms = vec![algorithm];
                validation
            };
            &other
        };
        let mut result = Err(TokenError::BadSignature);
        for key in keys {
            result = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
                .map(|data| data.claims)
                .map_err(classify);
            // Only a signature mismatch is worth another key; anything else is final.
            if result != Err(TokenError::BadSignature) {
                break;
            }
        }
        result
    }

    /// Whether a token expiring at `expires_at` has expired at `now`, clock skew allowed.
    fn expired(&self, expires_at: u64, now: u64) -> bool {
        expires_at.saturating_add(self.leeway) < now
    }

    /// Maps verified (or introspected) claims to a grant, with the configured claim names.
    pub fn grant(&self, claims: &Map<String, Value>, now: u64) -> Result<Grant, TokenError> {
        let mut identity = None;
        let sandboxes = match claims.get(&self.mapping.sandbox) {
            None if self.policy_identities => {
                identity = Some(TokenClaims::new(claims).ok_or(TokenError::Malformed)?);
                Vec::new()
            }
            Some(Value::String(one)) => vec![one.to_ascii_lowercase()],
            Some(Value::Array(many)) if !many.is_empty() && many.len() <= 1000 => many
                .iter()
                .map(|v| v.as_str().map(str::to_ascii_lowercase))
                .collect::<Option<Vec<_>>>()
                .ok_or(TokenError::Malformed)?,
            _ => return Err(TokenError::Malformed),
        };
        let ports = match claims.get(&self.mapping.ports) {
            None | Some(Value::Null) => None,
            Some(Value::Array(ports)) => Some(
                ports
                    .iter()
                    .map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(TokenError::Malformed)?,
            ),
            Some(_) => return Err(TokenError::Malformed),
        };
        let expires_at = time_claim(claims, "exp")?.ok_or(TokenError::Malformed)?;
        if self.expired(expires_at, now) {
            return Err(TokenError::Expired);
        }
        // Checked once, when the grant is made: `exp - now` only shrinks, so a remembered grant
        // stays within the limit.
        if self
            .max_lifetime
            .is_some_and(|max| expires_at > now.saturating_add(max).saturating_add(self.leeway))
        {
            return Err(TokenError::LivesTooLong);
        }
        if time_claim(claims, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
            || time_claim(claims, "iat")?.is_some_and(|iat| iat > now.saturating_add(self.leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        let jti = match claims.get("jti") {
            None => None,
            Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= 256 => Some(jti.clone()),
            Some(_) => return Err(TokenError::Malformed),
        };
        // `aud` is checked against --jwt-audience by jsonwebtoken (JWTs) or not at all; here it
        // is only read, for routes that require one more audience. Not strings: none.
        let audiences = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .take(MAX_AUDIENCES)
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let issued_to = ["azp", "cid", "appid"]
            .iter()
            .find_map(|name| match claims.get(*name) {
                Some(Value::String(party)) if party.len() <= 1024 => Some(party.clone()),
                _ => None,
            });
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if sub.len() <= 1024 => Some(sub.clone()),
            _ => None,
        };
        let forwarded = self
            .mapping
            .forward
            .iter()
            .filter_map(|forward| {
                let value = claim_value(claims.get(&forward.claim)?)?;
                Some((Arc::clone(&forward.header), value))
            })
            .collect();
        Ok(Grant {
            sandboxes,
            ports,
            expires_at,
            jti,
            audiences,
            issued_to,
            introspected_for: None,
            introspected: false,
            subject,
            forwarded,
            identity,
        })
    }

    /// The headers `--forward-claim` sets (lower-case): a client's copy of each is always removed.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &str> {
        self.mapping.forward.iter().map(|f| &*f.header)
    }
}

/// A NumericDate claim (RFC 7519 §2): a non-negative number; fractions are cut.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(TokenError::Malformed),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// Three base64url segments: the shape of a JWS in compact serialization.
fn looks_like_jwt(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        let ok = segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok || (segments < 3 && segment.is_empty()) {
            return false;
        }
    }
    segments == 3
}

/// What jsonwebtoken checks besides the signature: `exp` and `nbf` with `leeway`, and a
/// configured issuer or audience, which must then be present, not merely match when present.
fn validation(issuer: Option<&str>, audience: Option<&str>, leeway: u64) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = leeway;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    required.extend(issuer.map(|_| "iss"));
    required.extend(audience.map(|_| "aud"));
    validation.set_required_spec_claims(&required);
    match issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    match audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    validation
}

/// The members of a JWS header that verification looks at (RFC 7515 §4.1), parsed once.
#[derive(Deserialize)]
struct JoseHeader {
    alg: Algorithm,
    #[serde(default)]
    kid: Option<String>,
    /// Whether `crit` is there at all (any value, `null` included).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(member: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(member).map(|_| true)
}

/// The token's header; refused if it is not base64url JSON naming a known `alg`, or if it names
/// critical extensions: we understand none (RFC 7515 §4.1.11), so a token requiring one fails.
fn jose_header(token: &str) -> Result<JoseHeader, TokenError> {
    use base64::Engine as _;
    let segment = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if header.crit {
        return Err(TokenError::Malformed);
    }
    Ok(header)
}

fn classify(error: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::WrongIssuerOrAudience,
        _ => TokenError::Malformed,
    }
}

/// Signs access tokens (HS256). Used by `mint` and by tests.
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    pub fn hs256(secret: &[u8]) -> Self {
        Signer {
            key: EncodingKey::from_secret(secret),
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
    }

    /// Signs a share link's token: `claims` plus `iat` and a random `jti` (so that one link
    /// can be revoked). Returns the token and its jti.
    pub fn sign_link(
        &self,
        claims: &Claims,
        now: u64,
    ) -> Result<(String, String), jsonwebtoken::errors::Error> {
        let jti = format!("{:032x}", rand::random::<u128>());
        let minted = MintedClaims {
            claims,
            iat: now,
            jti: jti.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &minted, &self.key)?;
        Ok((token, jti))
    }
}

/// Where the token of a request came from: decides what must be stripped before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    AuthorizationHeader,
    QueryParameter,
    Cookie,
    /// The token cookie of Envoy's OAuth2 filter (single sign-on, `--sso-token-cookie`).
    SsoCookie,
}

/// The query parameter of RFC 6750 §2.3.
pub const QUERY_PARAMETER: &str = "access_token";

/// The token(s) a request carries, from its highest-precedence source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    pub source: TokenSource,
    /// One for a header or query token. For the cookie, every distinct value of it: a browser
    /// may send two cookies of one name (e.g. one tossed in by a sibling subdomain), and the
    /// one that verifies must not lose to the one that does not.
    pub candidates: Vec<std::borrow::Cow<'a, str>>,
}

/// Finds the access token in a request, in order of precedence: `Authorization: Bearer`, then
/// the `access_token` query parameter, then our cookie. `authorization` and `cookies` hold every
/// value of those headers. An `Authorization` header with another scheme (e.g. Basic, for the
/// app itself) is not ours and is left alone.
pub fn extract<'a>(
    authorization: &[&'a str],
    path: &'a str,
    cookies: &[&'a str],
    cookie_name: &'a str,
) -> Result<Option<Found<'a>>, ExtractError> {
    let mut bearers: Vec<&str> = Vec::new();
    for value in authorization {
        match bearer(value) {
            Some(token) => bearers.push(token),
            // `Basic …,Bearer <t>` (two headers joined by HTTP/1.1), `Bearer\t<t>`, `Bearer a b`:
            // a Bearer credential we cannot read as exactly one token. Passing the header on would
            // hand the token to the app, so the request is refused.
            None if mentions_bearer(value) => return Err(ExtractError::MalformedAuthorization),
            None => {}
        }
    }
    match bearers.as_slice() {
        [] => {}
        [one] => return Ok(Some(found(TokenSource::AuthorizationHeader, (*one).into()))),
        _ => return Err(ExtractError::Ambiguous),
    }
    let mut query = query_values(path, QUERY_PARAMETER);
    match (query.next(), query.next()) {
        (None, _) => {}
        (Some(one), None) => return Ok(Some(found(TokenSource::QueryParameter, one))),
        (Some(_), Some(_)) => return Err(ExtractError::Ambiguous),
    }
    let mut candidates: Vec<std::borrow::Cow<'a, str>> = Vec::new();
    for value in cookie_values(cookies, cookie_name) {
        if value.is_empty() || candidates.iter().any(|c| c == value) {
            continue;
        }
        if candidates.len() >= MAX_COOKIE_CANDIDATES {
            return Err(ExtractError::Ambiguous);
        }
        candidates.push(value.into());
    }
    Ok((!candidates.is_empty()).then_some(Found {
        source: TokenSource::Cookie,
        candidates,
    }))
}

/// More copies of our cookie than this is not a browser being unlucky.
const MAX_COOKIE_CANDIDATES: usize = 4;

fn found(source: TokenSource, token: std::borrow::Cow<'_, str>) -> Found<'_> {
    Found {
        source,
        candidates: vec![token],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the request carries more than one access token")]
    Ambiguous,
    #[error(
        "the Authorization header holds a Bearer credential that is not exactly `Bearer <token>`"
    )]
    MalformedAuthorization,
}

/// The values of cookie `name` across `Cookie` header values (`a=1; b=2`, RFC 6265 §5.4).
pub fn cookie_values<'a>(cookies: &[&'a str], name: &'a str) -> impl Iterator<Item = &'a str> {
    cookies
        .iter()
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// `Cookie` header values without cookie `name`, joined into one header value; `None` when the
/// request carried no such cookie (then the header is left exactly as it was).
pub fn cookies_without(cookies: &[&str], name: &str) -> Option<String> {
    cookies_without_any(cookies, |pair_name| pair_name == name)
}

/// `Cookie` header values without the cookies whose names `drop` says, joined into one header
/// value; `None` when the request carried none of them (the header is then left as it was).
pub fn cookies_without_any(cookies: &[&str], drop: impl Fn(&str) -> bool) -> Option<String> {
    let mut found = false;
    let mut kept: Vec<&str> = Vec::new();
    for pair in cookies.iter().flat_map(|header| header.split(';')) {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let pair_name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        if drop(pair_name) {
            found = true;
        } else {
            kept.push(pair);
        }
    }
    found.then(|| kept.join("; "))
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 7235).
/// The token of an `Authorization` value that is exactly one `Bearer <token68>` (RFC 6750 §2.1:
/// the scheme, one or more spaces, then the token; nothing else around or inside it).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_matches(' ').split_once(' ')?;
    let token = rest.trim_start_matches(' ');
    let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.bytes().all(token68))
        .then_some(token)
}

/// Whether any credential in an `Authorization` value (a comma-separated list, when a client
/// sent the header twice over HTTP/1.1) is the Bearer scheme with something after it, however
/// it is spaced. (`Bearer` alone carries no token: nothing of ours to leak.)
fn mentions_bearer(value: &str) -> bool {
    value.split(',').any(|credential| {
        let mut words = credential
            .split(|c: char| c.is_ascii_whitespace())
            .filter(|word| !word.is_empty());
        words
            .next()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
            && words.next().is_some()
    })
}

/// Values of the query parameter `name` in a request target (`/path?query`), percent-decoded.
pub fn query_values<'a>(
    path: &'a str,
    name: &'a str,
) -> impl Iterator<Item = std::borrow::Cow<'a, str>> + 'a {
    let query = path
        .split_once('#')
        .map_or(path, |(before, _)| before)
        .split_once('?')
        .map_or("", |(_, query)| query);
    form_urlencoded::parse(query.as_bytes())
        .filter(move |(key, _)| key == name)
        .map(|(_, value)| value)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";

    fn claims() -> Claims {
        Claims {
            sandbox_id: ID.into(),
            exp: now() + 600,
            ports: Some(vec![3000]),
            iss: None,
            aud: None,
        }
    }

    fn sign(claims: &Claims) -> String {
        Signer::hs256(SECRET).sign(claims).unwrap()
    }

    #[test]
    fn verifies_a_good_token() {
        let grant = Verifier::hs256(SECRET, None, None)
            .verify(&sign(&claims()), now())
            .unwrap();
        assert_eq!(grant.sandboxes, [ID]);
        assert!(grant.allows_port(3000));
        assert!(!grant.allows_port(3001));
    }

    /// A token signed with our secret under a hand-written JOSE header.
    fn sign_with_header(header: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = serde_json::to_vec(&claims()).unwrap();
        let input = format!("{}.{}", b64.encode(header), b64.encode(body));
        let key = EncodingKey::from_secret(SECRET);
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256);
        format!("{input}.{}", signature.unwrap())
    }

    #[test]
    fn the_header_is_read_once_and_critical_extensions_are_refused() {
        let verifier = Verifier::hs256(SECRET, None, None);
        for accepted in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
        ] {
            assert!(
                verifier.verify(&sign_with_header(accepted), now()).is_ok(),
                "{accepted}"
            );
        }
        for refused in [
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"["HS256"]"#,
        ] {
            assert_eq!(
                verifier.verify(&sign_with_header(refused), now()).err(),
                Some(TokenError::Malformed),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_maximum_lifetime_refuses_tokens_that_expire_too_far_ahead() {
        let t = now();
        let expiring = |exp| sign(&Claims { exp, ..claims() });
        let verifier = Verifier::hs256(SECRET, None, None);
        assert!(verifier.verify(&expiring(t + 10 * 86_400), t).is_ok());
        let capped = verifier.with_max_lifetime(Some(3600));
        for (exp, ok) in [
            (t + 600, true),
            (t + 3600 + LEEWAY_SECS, true),
            (t + 3600 + LEEWAY_SECS + 1, false),
            (t + 10 * 86_400, false),
        ] {
            let result = capped.verify(&expiring(exp), t);
            if ok {
                assert!(result.is_ok(), "exp now + {}", exp - t);
            } else {
                assert_eq!(
                    result.err(),
                    Some(TokenError::LivesTooLong),
                    "exp now + {}",
                    exp - t
                );
            }
        }
        // A token remembered before the limit was set is not let through by the memory.
        let long = expiring(t + 10 * 86_400);
        let open = Verifier::hs256(SECRET, None, None);
        assert!(open.verify(&long, t).is_ok());
        let capped = open.with_max_lifetime(Some(3600));
        assert_eq!(
            capped.verify(&long, t).err(),
            Some(TokenError::LivesTooLong)
        );
    }

    #[test]
    fn absent_ports_allow_every_port() {
        let token = sign(&Claims {
            ports: None,
            ..claims()
        });
        let grant = Verifier::hs256(SECRET, None, None)
            .verify(&token, now())
            .unwrap();
        assert!(grant.allows_port(8080));
    }

    #[test]
    fn refuses_expired_wrong_key_and_garbage() {
        let v = Verifier::hs256(SECRET, None, None);
        let expired = sign(&Claims {
            exp: now() - 3600,
            ..claims()
        });
        assert_eq!(v.verify(&expired, now()), Err(TokenError::Expired));
        let other = Signer::hs256(b"another-secret-another-secret-xx")
            .sign(&claims())
            .unwrap();
        assert_eq!(v.verify(&other, now()), Err(TokenError::BadSignature));
        assert_eq!(v.verify("not.a.jwt", now()), Err(TokenError::Malformed));
        assert_eq!(v.verify("opaque-token-123", now()), Err(TokenError::Opaque));
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_LEN + 1), now()),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn a_remembered_grant_still_expires_and_only_the_same_bytes_match_it() {
        let v = Verifier::hs256(SECRET, None, None);
        let token = sign(&claims());
        let first = v.verify(&token, now()).unwrap();
        assert_eq!(v.verified.len(), 1);
        assert!(Arc::ptr_eq(&first, &v.verify(&token, now()).unwrap()));
        // Past exp plus the leeway: refused although the signature was checked before.
        assert_eq!(
            v.verify(&token, now() + 600 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
        // The same claims with another signature, or a changed payload: checked afresh.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert_eq!(v.verify(&forged, now()), Err(TokenError::BadSignature));
        let (header, _) = signed.split_once('.').unwrap();
        let other_body = base64_url(
            &serde_json::to_vec(&Claims {
                ports: None,
                ..claims()
            })
            .unwrap(),
        );
        let spliced = format!("{header}.{other_body}.{signature}");
        assert_eq!(v.verify(&spliced, now()), Err(TokenError::BadSignature));
        assert_eq!(v.verified.len(), 1, "failures are not remembered");
    }

    #[test]
    fn new_keys_or_rules_start_with_nothing_remembered() {
        let v = Verifier::hs256(SECRET, None, None);
        v.verify(&sign(&claims()), now()).unwrap();
        let shared = v.clone();
        assert_eq!(shared.verified.len(), 1);
        assert_eq!(v.clone().with_jwks(Vec::new()).verified.len(), 0);
        assert_eq!(v.clone().with_hs256(b"x").verified.len(), 0);
        assert_eq!(v.clone().with_leeway(0).verified.len(), 0);
        assert_eq!(
            v.clone()
                .with_mapping(ClaimMapping::default())
                .verified
                .len(),
            0
        );
        // A verifier without the secret refuses the token however often it passed elsewhere.
        let rotated = Verifier::hs256(b"another-secret-another-secret-xx", None, None);
        assert_eq!(
            rotated.verify(&sign(&claims()), now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn refuses_alg_none_and_other_algorithms() {
        let body = base64_url(&serde_json::to_vec(&claims()).unwrap());
        let v = Verifier::hs256(SECRET, None, None);
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
        ] {
            let token = format!("{}.{body}.", base64_url(header.as_bytes()));
            assert!(v.verify(&token, now()).is_err(), "{header} accepted");
        }
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384, now()), Err(TokenError::BadSignature));
    }

    fn base64_url(bytes: &[u8]) -> String {
        use std::fmt::Write;
        // Minimal unpadded base64url for test fixtures.
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let _ = out.write_char(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            }
        }
        out
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let v = Verifier::hs256(SECRET, Some("platform"), Some("previews"));
        let good = sign(&Claims {
            iss: Some("platform".into()),
            aud: Some("previews".into()),
            ..claims()
        });
        assert!(v.verify(&good, now()).is_ok());
        for (iss, aud) in [("other", "previews"), ("platform", "other")] {
            let token = sign(&Claims {
                iss: Some(iss.into()),
                aud: Some(aud.into()),
                ..claims()
            });
            assert_eq!(
                v.verify(&token, now()),
                Err(TokenError::WrongIssuerOrAudience)
            );
        }
        assert!(
            v.verify(&sign(&claims()), now()).is_err(),
            "missing iss/aud"
        );
    }

    #[test]
    fn requires_sandbox_id_and_exp() {
        let v = Verifier::hs256(SECRET, None, None);
        let key = EncodingKey::from_secret(SECRET);
        for claims in [
            serde_json::json!({"exp": now() + 60}),
            serde_json::json!({"sandbox_id": ID}),
            serde_json::json!({"sandbox_id": ID, "exp": now() + 60, "ports": ["3000"]}),
            serde_json::json!({"sandbox_id": ID, "exp": now() + 60, "ports": [70000]}),
        ] {
            let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
            assert!(v.verify(&token, now()).is_err(), "{claims} accepted");
        }
    }

    fn one(found: Option<Found<'_>>) -> (String, TokenSource) {
        let found = found.expect("a token");
        assert_eq!(found.candidates.len(), 1);
        (found.candidates[0].to_string(), found.source)
    }

    #[test]
    fn extracts_in_order_of_precedence() {
        let cookie = ["daytona_authz=c"];
        let got = one(extract(
            &["Bearer abc"],
            "/?access_token=q",
            &cookie,
            "daytona_authz",
        )
        .unwrap());
        assert_eq!(got, ("abc".into(), TokenSource::AuthorizationHeader));
        let got = one(extract(
            &["Basic dXNlcjpwdw=="],
            "/x?a=1&access_token=q%2Bx",
            &cookie,
            "daytona_authz",
        )
        .unwrap());
        assert_eq!(got, ("q+x".into(), TokenSource::QueryParameter));
        let got = one(extract(&[], "/", &["app=1; daytona_authz=c"], "daytona_authz").unwrap());
        assert_eq!(got, ("c".into(), TokenSource::Cookie));
        let got = one(extract(&["bearer  abc "], "/", &[], "daytona_authz").unwrap());
        assert_eq!(got.0, "abc");
        assert_eq!(
            extract(&[], "/path#access_token=x", &[], "daytona_authz").unwrap(),
            None
        );
        assert_eq!(
            extract(&["Bearer "], "/", &[], "daytona_authz").unwrap(),
            None
        );
        assert_eq!(
            extract(&[], "/", &["daytona_authzx=1"], "daytona_authz").unwrap(),
            None
        );
    }

    #[test]
    fn a_bearer_credential_that_is_not_exactly_one_token_is_refused() {
        // Each of these reached the app as is while the cookie authenticated the request.
        for value in [
            "Basic dXNlcjpwdw==,Bearer abc",
            "Basic dXNlcjpwdw==, bearer abc",
            "Bearer\tabc",
            "Bearer abc def",
            "Bearer abc,Bearer abc",
            "Bearer a:b",
            "  BEARER\t\tabc",
        ] {
            assert_eq!(
                extract(&[value], "/", &["c=1"], "c"),
                Err(ExtractError::MalformedAuthorization),
                "{value:?}"
            );
        }
        // Not ours: left for the app, and the cookie authenticates.
        for value in [
            "Basic dXNlcjpwdw==",
            "Bearer",
            "Bearer ",
            "Negotiate bearer",
            "Digest a=b",
        ] {
            let found = extract(&[value], "/", &["c=1"], "c").unwrap().unwrap();
            assert_eq!(found.source, TokenSource::Cookie, "{value:?}");
        }
        let got = one(extract(&["Bearer a.b-c_d~e+f/g=="], "/", &[], "c").unwrap());
        assert_eq!(got.0, "a.b-c_d~e+f/g==");
    }

    #[test]
    fn refuses_two_tokens_of_one_kind() {
        assert_eq!(
            extract(&["Bearer a", "Bearer b"], "/", &[], "c"),
            Err(ExtractError::Ambiguous)
        );
        assert_eq!(
            extract(&[], "/?access_token=a&access_token=b", &[], "c"),
            Err(ExtractError::Ambiguous)
        );
    }

    #[test]
    fn keeps_every_distinct_cookie_value_as_a_candidate() {
        let found = extract(&[], "/", &["c=1; c=2", "c=1", "c=\"3\""], "c")
            .unwrap()
            .unwrap();
        assert_eq!(found.candidates, ["1", "2", "3"]);
        assert!(extract(&[], "/", &["c=1; c=2; c=3; c=4; c=5"], "c").is_err());
    }

    #[test]
    fn strips_only_our_cookie() {
        assert_eq!(
            cookies_without(&["app=1; daytona_authz=t", "other=x=y"], "daytona_authz"),
            Some("app=1; other=x=y".into())
        );
        assert_eq!(
            cookies_without(&["daytona_authz=t"], "daytona_authz"),
            Some(String::new())
        );
        assert_eq!(cookies_without(&["app=1"], "daytona_authz"), None);
    }

    #[test]
    fn forwarded_claims_and_the_subject_are_made_with_the_grant_from_any_verified_claims() {
        let mapping = ClaimMapping {
            forward: vec![
                ForwardClaim::parse("email=x-user-email").unwrap(),
                ForwardClaim::parse("roles=x-user-roles").unwrap(),
                ForwardClaim::parse("missing=x-missing").unwrap(),
            ],
            ..ClaimMapping::default()
        };
        let verifier = Verifier::hs256(SECRET, None, None).with_mapping(mapping);
        // As an introspection endpoint answers them (RFC 7662 members), or a JWT's payload.
        let claims = serde_json::json!({
            "active": true, "sandbox_id": ID, "exp": now() + 60, "sub": "user-1",
            "email": "a@example.com", "roles": ["dev", 7],
        });
        let grant = verifier.grant(claims.as_object().unwrap(), now()).unwrap();
        assert_eq!(grant.subject.as_deref(), Some("user-1"));
        let forwarded: Vec<(&str, &str)> = grant
            .forwarded
            .iter()
            .map(|(h, v)| (&**h, v.as_str()))
            .collect();
        assert_eq!(
            forwarded,
            [("x-user-email", "a@example.com"), ("x-user-roles", "dev,7")]
        );
        assert_eq!(
            verifier.forwarded_headers().collect::<Vec<_>>(),
            ["x-user-email", "x-user-roles", "x-missing"]
        );
        // A `sub` that is not a string names nobody; the token is still good.
        let odd = serde_json::json!({"sandbox_id": ID, "exp": now() + 60, "sub": 42});
        let grant = verifier.grant(odd.as_object().unwrap(), now()).unwrap();
        assert_eq!(grant.subject, None);
        assert!(grant.forwarded.is_empty());
    }

    #[test]
    fn a_previous_key_still_verifies_during_rotation() {
        let old = Signer::hs256(b"the-previous-secret-0123456789abcdef")
            .sign(&claims())
            .unwrap();
        let current_only = Verifier::hs256(SECRET, None, None);
        assert_eq!(
            current_only.verify(&old, now()),
            Err(TokenError::BadSignature)
        );
        let rotating = current_only.with_previous(b"the-previous-secret-0123456789abcdef");
        assert!(rotating.verify(&old, now()).is_ok());
        assert!(rotating.verify(&sign(&claims()), now()).is_ok());
        let expired_old = Signer::hs256(b"the-previous-secret-0123456789abcdef")
            .sign(&Claims {
                exp: now() - 3600,
                ..claims()
            })
            .unwrap();
        assert_eq!(
            rotating.verify(&expired_old, now()),
            Err(TokenError::Expired)
        );
    }
}
