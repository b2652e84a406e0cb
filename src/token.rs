//! Access tokens: where a request carries one, and what a verified one grants.
//!
//! An access token is a JWT signed with the configured HS256 key, with claims
//! `sandbox_id` (required), `exp` (required), `ports` (optional list; absent = any port) and, when
//! configured, `iss` / `aud`. Only the configured algorithm is accepted; `alg: none` and every
//! other algorithm are refused before any signature work.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Tokens longer than this are refused without parsing (a JWT we issue is a few hundred bytes).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Allowed clock skew between the issuer and us, for `exp`.
pub const LEEWAY_SECS: u64 = 30;

/// The claims daytona-authz reads. Unknown claims are ignored.
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

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Lower-cased, to compare with the id parsed from the (case-insensitive) host.
    pub sandbox_id: String,
    /// `None`: every port.
    pub ports: Option<Vec<u16>>,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

impl Grant {
    pub fn allows_port(&self, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|ports| ports.contains(&port))
    }
}

/// Why a token was refused. Kept coarse on purpose: the client learns that its token is not
/// acceptable, the log learns why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is too long")]
    TooLong,
    #[error("token has expired")]
    Expired,
    #[error("token signature or algorithm is not acceptable")]
    BadSignature,
    #[error("token issuer or audience is not acceptable")]
    WrongIssuerOrAudience,
    #[error("token is malformed")]
    Malformed,
}

/// Verifies access tokens against the configured key (and, during a rotation, the previous one)
/// and expectations.
#[derive(Clone)]
pub struct Verifier {
    /// Current key first.
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// An HS256 verifier. `issuer` and `audience` are checked when given.
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        // A configured issuer or audience must also be present, not merely match when present.
        let mut required = vec!["exp"];
        required.extend(issuer.map(|_| "iss"));
        required.extend(audience.map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        match issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Verifier {
            keys: vec![DecodingKey::from_secret(secret)],
            validation,
        }
    }

    /// Also accepts tokens signed with `secret`: the previous key, while links signed with it
    /// are still out there (rotation without downtime).
    pub fn with_previous(mut self, secret: &[u8]) -> Self {
        self.keys.push(DecodingKey::from_secret(secret));
        self
    }

    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut result: Result<Claims, TokenError> = Err(TokenError::BadSignature);
        for key in &self.keys {
            result = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
                .map(|data| data.claims)
                .map_err(classify);
            // Only a signature mismatch is worth another key; anything else is final.
            if result != Err(TokenError::BadSignature) {
                break;
            }
        }
        let claims = result?;
        Ok(Grant {
            sandbox_id: claims.sandbox_id.to_ascii_lowercase(),
            ports: claims.ports,
            expires_at: claims.exp,
        })
    }
}

fn classify(error: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
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
}

/// Where the token of a request came from: decides what must be stripped before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    AuthorizationHeader,
    QueryParameter,
    Cookie,
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
    let bearers: Vec<&str> = authorization
        .iter()
        .filter_map(|value| bearer(value))
        .collect();
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
        if candidates.len() >= MAX_COOKIE_CANDIDATES {
            return Err(ExtractError::Ambiguous);
        }
        if !value.is_empty() && !candidates.iter().any(|c| c == value) {
            candidates.push(value.into());
        }
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
    let mut found = false;
    let mut kept: Vec<&str> = Vec::new();
    for pair in cookies.iter().flat_map(|header| header.split(';')) {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let pair_name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        if pair_name == name {
            found = true;
        } else {
            kept.push(pair);
        }
    }
    found.then(|| kept.join("; "))
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|token| !token.is_empty())
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
            .verify(&sign(&claims()))
            .unwrap();
        assert_eq!(grant.sandbox_id, ID);
        assert!(grant.allows_port(3000));
        assert!(!grant.allows_port(3001));
    }

    #[test]
    fn absent_ports_allow_every_port() {
        let token = sign(&Claims {
            ports: None,
            ..claims()
        });
        let grant = Verifier::hs256(SECRET, None, None).verify(&token).unwrap();
        assert!(grant.allows_port(8080));
    }

    #[test]
    fn refuses_expired_wrong_key_and_garbage() {
        let v = Verifier::hs256(SECRET, None, None);
        let expired = sign(&Claims {
            exp: now() - 3600,
            ..claims()
        });
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let other = Signer::hs256(b"another-secret-another-secret-xx")
            .sign(&claims())
            .unwrap();
        assert_eq!(v.verify(&other), Err(TokenError::BadSignature));
        assert_eq!(v.verify("not.a.jwt"), Err(TokenError::Malformed));
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
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
            assert!(v.verify(&token).is_err(), "{header} accepted");
        }
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384), Err(TokenError::BadSignature));
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
        assert!(v.verify(&good).is_ok());
        for (iss, aud) in [("other", "previews"), ("platform", "other")] {
            let token = sign(&Claims {
                iss: Some(iss.into()),
                aud: Some(aud.into()),
                ..claims()
            });
            assert_eq!(v.verify(&token), Err(TokenError::WrongIssuerOrAudience));
        }
        assert!(v.verify(&sign(&claims())).is_err(), "missing iss/aud");
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
            assert!(v.verify(&token).is_err(), "{claims} accepted");
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
    fn a_previous_key_still_verifies_during_rotation() {
        let old = Signer::hs256(b"the-previous-secret-0123456789abcdef")
            .sign(&claims())
            .unwrap();
        let current_only = Verifier::hs256(SECRET, None, None);
        assert_eq!(current_only.verify(&old), Err(TokenError::BadSignature));
        let rotating = current_only.with_previous(b"the-previous-secret-0123456789abcdef");
        assert!(rotating.verify(&old).is_ok());
        assert!(rotating.verify(&sign(&claims())).is_ok());
        let expired_old = Signer::hs256(b"the-previous-secret-0123456789abcdef")
            .sign(&Claims {
                exp: now() - 3600,
                ..claims()
            })
            .unwrap();
        assert_eq!(rotating.verify(&expired_old), Err(TokenError::Expired));
    }
}
