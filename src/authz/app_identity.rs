//! Who the caller is, told to the app behind the edge: claims of the verified token forwarded as
//! request headers (`--forward-claim CLAIM=Header-Name`), and an assertion daytona-authz signs
//! itself (`--assertion`), whose public key the HTTP port serves as a JWKS.
//!
//! Only verified tokens (a JWT whose signature checked out, or an opaque token the issuer's
//! introspection called active) ever produce these headers, and every client-sent copy of a
//! configured header is removed on every forwarded request, whether or not the token has the
//! claim (see `decision::allow`). The names are checked at start-up: an RFC 7230 token without
//! `_`, not one of the headers the proxy path itself depends on.

use std::sync::Arc;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::authz::host::PreviewTarget;
use crate::authz::token::Grant;

/// The assertion's header unless `--assertion-header` names another.
pub const DEFAULT_ASSERTION_HEADER: &str = "x-daytona-authz-assertion";
/// The assertion's `iss`.
pub const ASSERTION_ISSUER: &str = "daytona-authz";
/// Where the HTTP port serves the assertion key.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// A forwarded value longer than this (in bytes, arrays once joined) is not forwarded.
pub const MAX_FORWARDED_VALUE: usize = 4096;
/// `--forward-claim` at most this many times.
pub const MAX_FORWARD_CLAIMS: usize = 32;
/// Signed assertions remembered, by (caller, sandbox, port).
const SIGNED_ENTRIES: usize = 4096;

/// One `--forward-claim`: the claim's value goes to the app in `header` (lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardClaim {
    pub claim: String,
    pub header: Arc<str>,
}

impl ForwardClaim {
    /// `CLAIM=Header-Name`: a claim name of 1-64 characters, a header name [`app_header`] accepts.
    pub fn parse(text: &str) -> Result<ForwardClaim, String> {
        let Some((claim, header)) = text.split_once('=') else {
            return Err(format!("{text:?} is not CLAIM=Header-Name"));
        };
        if claim.is_empty() || claim.len() > 64 {
            return Err(format!("{text:?}: the claim name must be 1-64 characters"));
        }
        Ok(ForwardClaim {
            claim: claim.to_owned(),
            header: app_header(header, false)?.into(),
        })
    }
}

/// Headers the proxy path, Envoy, Daytona or the browser session depend on: never set from a
/// claim or an assertion (a claim must not be able to rewrite the route, the credentials or the
/// framing of the request).
const RESERVED: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "cookie",
    "set-cookie",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "content-encoding",
    "expect",
    "forwarded",
    "via",
    "origin",
    "referer",
    "x-request-id",
    "x-real-ip",
];

/// Prefixes of reserved headers: Daytona's and daytona-authz's (`x-daytona-`), Envoy's
/// (`x-envoy-`), the proxy chain's (`x-forwarded-`) and every `proxy-` header.
const RESERVED_PREFIXES: &[&str] = &["x-daytona-", "x-envoy-", "x-forwarded-", "proxy-"];

/// A header name for the app, lower-cased: an RFC 7230 token of letters, digits and
/// `!#$%&'*+-.^`|~` (no `_`: Envoy refuses client headers with one, and apps that read headers
/// CGI-style would confuse `x_user` with `x-user`), at most 64 bytes, and none of the reserved
/// ones. `ours`: the assertion's own header, which may be an `x-daytona-authz-` name (but not one
/// daytona-authz already sets).
pub fn app_header(name: &str, ours: bool) -> Result<String, String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^`|~".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(tchar) {
        return Err(format!(
            "{name:?} is not a header name (1-64 letters, digits or !#$%&'*+-.^`|~; no '_')"
        ));
    }
    let lower = name.to_ascii_lowercase();
    let ours_ok = ours
        && lower.starts_with("x-daytona-authz-")
        && !lower.starts_with("x-daytona-authz-upstream");
    let reserved = RESERVED.contains(&lower.as_str())
        || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p));
    if reserved && !ours_ok {
        return Err(format!(
            "{name:?} is reserved (Host, credentials, framing, proxy headers, x-daytona-*, x-envoy-*, x-forwarded-*)"
        ));
    }
    Ok(lower)
}

/// The header value of a claim: a string as it is, a number or boolean as JSON writes it, an
/// array of those joined with `,`. Nothing for anything else (`null`, objects, nested arrays),
/// for an empty value, for a value with a control character (CR, LF, NUL, tab, DEL...: no header
/// can be injected or split), for an array element with a `,` in it (the joined list would be
/// ambiguous), or for a value over [`MAX_FORWARDED_VALUE`] bytes.
pub fn claim_value(value: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        }
    }
    let text = match value {
        Value::Array(items) => {
            let items = items.iter().map(scalar).collect::<Option<Vec<String>>>()?;
            if items.iter().any(|item| item.contains(',')) {
                return None;
            }
            items.join(",")
        }
        other => scalar(other)?,
    };
    let clean = !text.is_empty()
        && text.len() <= MAX_FORWARDED_VALUE
        && !text.chars().any(|c| c.is_control());
    clean.then_some(text)
}

/// The key daytona-authz signs assertions with: Ed25519 (generated at start-up, or from a
/// PKCS#8 PEM file) or P-256 (from a file). Its public half is served as a JWKS.
pub struct AssertionKey {
    pair: Pair,
    /// RFC 7638 thumbprint of the public key: the same key has the same `kid` on every replica.
    kid: String,
    /// The JWKS document, rendered once.
    jwks: Arc<str>,
    /// The JOSE header, base64url, rendered once.
    header: String,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair, SystemRandom),
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &self.algorithm())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl AssertionKey {
    /// A new Ed25519 key (lives as long as the process).
    pub fn generate() -> Result<AssertionKey, String> {
        let rng = SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "cannot generate an Ed25519 key".to_owned())?;
        AssertionKey::from_pkcs8(document.as_ref())
    }

    /// An unencrypted PKCS#8 private key in PEM (`-----BEGIN PRIVATE KEY-----`), Ed25519 or P-256:
    /// `openssl genpkey -algorithm ed25519`, or
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    pub fn from_pem(text: &str) -> Result<AssertionKey, String> {
        const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
        const END: &str = "-----END PRIVATE KEY-----";
        let body = text
            .split_once(BEGIN)
            .and_then(|(_, rest)| rest.split_once(END))
            .map(|(body, _)| body)
            .ok_or_else(|| {
                "not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----; convert an \
                 EC PRIVATE KEY with `openssl pkcs8 -topk8 -nocrypt`)"
                    .to_owned()
            })?;
        let base64: String = body.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|_| "the PEM body is not base64".to_owned())?;
        AssertionKey::from_pkcs8(&der)
    }

    fn from_pkcs8(der: &[u8]) -> Result<AssertionKey, String> {
        let (pair, jwk) = if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let x = b64(pair.public_key().as_ref());
            let jwk = serde_json::json!({"crv": "Ed25519", "kty": "OKP", "x": x});
            (Pair::Ed25519(pair), jwk)
        } else {
            let rng = SystemRandom::new();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                .map_err(|_| "not an Ed25519 or P-256 private key".to_owned())?;
            // Uncompressed point: 0x04, x, y (32 bytes each).
            let point = pair.public_key().as_ref();
            let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
            let jwk = serde_json::json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
            (Pair::P256(pair, rng), jwk)
        };
        // serde_json's maps are sorted, so this is RFC 7638's canonical form: the required
        // members only, in lexicographic order, no whitespace.
        let kid = b64(&Sha256::digest(jwk.to_string().as_bytes()));
        let alg = match pair {
            Pair::Ed25519(_) => "EdDSA",
            Pair::P256(..) => "ES256",
        };
        let mut public = jwk;
        public["use"] = "sig".into();
        public["alg"] = alg.into();
        public["kid"] = kid.clone().into();
        let jwks = serde_json::json!({ "keys": [public] }).to_string().into();
        let header = b64(serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes());
        Ok(AssertionKey {
            pair,
            kid,
            jwks,
            header,
        })
    }

    /// `EdDSA` or `ES256`.
    pub fn algorithm(&self) -> &'static str {
        match self.pair {
            Pair::Ed25519(_) => "EdDSA",
            Pair::P256(..) => "ES256",
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"keys":[<the public key>]}`.
    pub fn jwks(&self) -> Arc<str> {
        Arc::clone(&self.jwks)
    }

    /// A compact JWS of `claims`.
    fn sign(&self, claims: &impl Serialize) -> Option<String> {
        let payload = serde_json::to_vec(claims).ok()?;
        let input = format!("{}.{}", self.header, b64(&payload));
        let signature = match &self.pair {
            Pair::Ed25519(pair) => b64(pair.sign(input.as_bytes()).as_ref()),
            Pair::P256(pair, rng) => b64(pair.sign(rng, input.as_bytes()).ok()?.as_ref()),
        };
        Some(format!("{input}.{signature}"))
    }
}

/// The claims of an assertion. `jti` is deliberately not the caller's token's (RFC 7519 makes
/// `jti` the id of the JWT it sits in): that one is `token_jti`. An assertion has no `jti` of its
/// own: one is reused for a while across the caller's requests, so it is not a nonce.
#[derive(Debug, Serialize)]
struct AssertionClaims<'a> {
    iss: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    /// The public host the request was for: `{port}-{sandboxId}.{preview-domain}`.
    aud: String,
    sandbox_id: &'a str,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_jti: Option<&'a str>,
    iat: u64,
    exp: u64,
}

/// `--assertion`: the header, the key, the lifetime, and the assertions signed lately.
pub struct Assertions {
    /// Lower-case.
    pub header: Arc<str>,
    key: Arc<AssertionKey>,
    /// Seconds an assertion is valid (never past the caller's token's `exp`).
    ttl: u64,
    /// Signed assertions by what they say (caller, sandbox, port): one is reused for the first
    /// half of its life, so a caller's requests cost one signature per half-lifetime.
    signed: quick_cache::sync::Cache<[u8; 32], Arc<Signed>>,
}

struct Signed {
    value: String,
    reuse_until: u64,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("header", &self.header)
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Assertions {
    pub fn new(header: &str, key: Arc<AssertionKey>, ttl_secs: u64) -> Assertions {
        Assertions {
            header: header.to_ascii_lowercase().into(),
            key,
            ttl: ttl_secs.max(1),
            signed: quick_cache::sync::Cache::new(SIGNED_ENTRIES),
        }
    }

    pub fn key(&self) -> &Arc<AssertionKey> {
        &self.key
    }

    /// The assertion for `grant`'s caller on `target` (public host under `preview_domain`) at
    /// `now`: remembered, or signed afresh. `None` only if signing failed.
    pub fn assertion(
        &self,
        grant: &Grant,
        target: &PreviewTarget,
        preview_domain: &str,
        now: u64,
    ) -> Option<String> {
        let key = cache_key(grant, target, preview_domain);
        if let Some(signed) = self.signed.get(&key)
            && now < signed.reuse_until
        {
            return Some(signed.value.clone());
        }
        let exp = now.saturating_add(self.ttl).min(grant.expires_at);
        let claims = AssertionClaims {
            iss: ASSERTION_ISSUER,
            sub: grant.subject.as_deref(),
            aud: format!("{}-{}.{preview_domain}", target.port, target.sandbox_id),
            sandbox_id: target.sandbox_id.as_str(),
            port: target.port,
            token_jti: grant.jti.as_deref(),
            iat: now,
            exp,
        };
        let value = self.key.sign(&claims)?;
        let reuse_until = now + exp.saturating_sub(now) / 2;
        if reuse_until > now {
            self.signed.insert(
                key,
                Arc::new(Signed {
                    value: value.clone(),
                    reuse_until,
                }),
            );
        }
        Some(value)
    }
}

/// Everything an assertion says but its times, hashed: equal keys sign equal claims.
fn cache_key(grant: &Grant, target: &PreviewTarget, preview_domain: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        preview_domain.as_bytes(),
        target.sandbox_id.as_str().as_bytes(),
        &target.port.to_be_bytes(),
        grant.subject.as_deref().unwrap_or_default().as_bytes(),
        &[u8::from(grant.subject.is_some())],
        grant.jti.as_deref().unwrap_or_default().as_bytes(),
        &[u8::from(grant.jti.is_some())],
        &grant.expires_at.to_be_bytes(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_values_become_header_values() {
        for (claim, expected) in [
            (json!("alice@example.com"), Some("alice@example.com")),
            (json!("José"), Some("José")),
            (json!(42), Some("42")),
            (json!(3.5), Some("3.5")),
            (json!(true), Some("true")),
            (json!(["admin", "dev"]), Some("admin,dev")),
            (json!([1, 2, 3]), Some("1,2,3")),
            (json!(["a", 1, false]), Some("a,1,false")),
            (json!(null), None),
            (json!({"role": "admin"}), None),
            (json!([["nested"]]), None),
            (json!([{"a": 1}]), None),
            (json!(""), None),
            (json!([]), None),
            (json!(["a,b", "c"]), None),
        ] {
            assert_eq!(claim_value(&claim).as_deref(), expected, "{claim}");
        }
    }

    #[test]
    fn no_value_can_inject_or_split_a_header() {
        for injection in [
            "alice\r\nx-admin: true",
            "alice\nx-admin: true",
            "alice\r",
            "alice\0",
            "a\tb",
            "a\u{7f}",
            "a\u{85}b",
        ] {
            assert_eq!(claim_value(&json!(injection)), None, "{injection:?}");
            assert_eq!(
                claim_value(&json!(["ok", injection])),
                None,
                "{injection:?}"
            );
        }
        let long = "a".repeat(MAX_FORWARDED_VALUE);
        assert_eq!(claim_value(&json!(long)).map(|v| v.len()), Some(4096));
        assert_eq!(claim_value(&json!(format!("{long}a"))), None);
        assert_eq!(claim_value(&json!([long, "a"])), None);
    }

    #[test]
    fn forward_claims_name_safe_headers() {
        assert_eq!(
            ForwardClaim::parse("email=X-User-Email").unwrap(),
            ForwardClaim {
                claim: "email".into(),
                header: "x-user-email".into()
            }
        );
        assert_eq!(
            &*ForwardClaim::parse("https://example.com/groups=x-groups")
                .unwrap()
                .header,
            "x-groups"
        );
        for bad in [
            "email",
            "=x-email",
            "email=",
            "email=x email",
            "email=x-user_email",
            "email=x-email\r\nx-admin: 1",
            "email=:authority",
            "email=Host",
            "email=Authorization",
            "email=cookie",
            "email=X-Daytona-Preview-Token",
            "email=x-daytona-authz-assertion",
            "email=x-envoy-original-path",
            "email=X-Forwarded-For",
            "email=x-request-id",
            "email=Transfer-Encoding",
            "email=content-length",
            "email=proxy-anything",
        ] {
            assert!(ForwardClaim::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(ForwardClaim::parse(&format!("{}=x-a", "c".repeat(65))).is_err());
        // The assertion may take an x-daytona-authz- name, not one daytona-authz sets already.
        assert_eq!(
            app_header("X-Daytona-Authz-Assertion", true).unwrap(),
            DEFAULT_ASSERTION_HEADER
        );
        assert_eq!(app_header("X-Caller", true).unwrap(), "x-caller");
        for bad in [
            "x-daytona-authz-upstream",
            "x-daytona-authz-upstream-scheme",
            "x-daytona-preview-token",
            "authorization",
        ] {
            assert!(app_header(bad, true).is_err(), "{bad} accepted");
        }
    }

    fn grant(subject: Option<&str>, jti: Option<&str>, expires_at: u64) -> Grant {
        Grant {
            sandboxes: vec![ID.into()],
            ports: None,
            expires_at,
            jti: jti.map(str::to_owned),
            subject: subject.map(str::to_owned),
            forwarded: Vec::new(),
            audiences: Vec::new(),
            issued_to: None,
            introspected_for: None,
            introspected: false,
            identity: None,
        }
    }

    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";

    fn target(port: u16) -> PreviewTarget {
        PreviewTarget {
            sandbox_id: ID.parse().unwrap(),
            port,
        }
    }

    fn verify(key: &AssertionKey, token: &str) -> serde_json::Map<String, Value> {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&key.jwks()).unwrap();
        let jwk = jwks.find(key.kid()).expect("the kid is in the JWKS");
        let decoding = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[ASSERTION_ISSUER]);
        validation.set_audience(&[format!("3000-{ID}.preview.example.com")]);
        jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &decoding, &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn assertions_verify_against_the_jwks_and_say_who_and_where() {
        let now = crate::authz::token::now();
        let key = Arc::new(AssertionKey::generate().unwrap());
        assert_eq!(key.algorithm(), "EdDSA");
        let assertions = Assertions::new("X-Daytona-Authz-Assertion", Arc::clone(&key), 60);
        let caller = grant(Some("alice"), Some("link-1"), now + 600);
        let token = assertions
            .assertion(&caller, &target(3000), "preview.example.com", now)
            .unwrap();
        let claims = verify(&key, &token);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["sandbox_id"], ID);
        assert_eq!(claims["port"], 3000);
        assert_eq!(claims["token_jti"], "link-1");
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["exp"], now + 60);
        assert!(!claims.contains_key("jti"));

        // Reused for half its life, then signed afresh; never past the token's exp.
        let again = assertions.assertion(&caller, &target(3000), "preview.example.com", now + 29);
        assert_eq!(again.as_deref(), Some(token.as_str()));
        let later = assertions
            .assertion(&caller, &target(3000), "preview.example.com", now + 30)
            .unwrap();
        assert_ne!(later, token);
        let other_port = assertions
            .assertion(&caller, &target(3001), "preview.example.com", now)
            .unwrap();
        assert_ne!(other_port, token);
        // The same sandbox port under another preview domain: its own audience, not a reuse.
        let other_domain = assertions
            .assertion(&caller, &target(3000), "preview.example.org", now + 1)
            .unwrap();
        let payload = other_domain.split('.').nth(1).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["aud"], format!("3000-{ID}.preview.example.org"));
        let short = grant(None, None, now + 10);
        let token = assertions
            .assertion(&short, &target(3000), "preview.example.com", now)
            .unwrap();
        let claims = verify(&key, &token);
        assert_eq!(claims["exp"], now + 10);
        assert!(!claims.contains_key("sub") && !claims.contains_key("token_jti"));
    }

    #[test]
    fn keys_come_from_pkcs8_pem_files() {
        // `openssl genpkey -algorithm ed25519` and `... -algorithm EC -pkeyopt
        // ec_paramgen_curve:P-256`.
        let ed = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VwBCIEIJJkY0RTcSPyvaGNS4tN9FpfG9+dxQUqbtopGQcg6KaT\n\
                  -----END PRIVATE KEY-----\n";
        let key = AssertionKey::from_pem(ed).unwrap();
        assert_eq!(key.algorithm(), "EdDSA");
        assert_eq!(key.kid(), AssertionKey::from_pem(ed).unwrap().kid());
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = Arc::new(AssertionKey::from_pem(&p256.serialize_pem()).unwrap());
        assert_eq!(key.algorithm(), "ES256");
        let assertions = Assertions::new("x-caller", Arc::clone(&key), 60);
        let now = crate::authz::token::now();
        let token = assertions
            .assertion(
                &grant(Some("bob"), None, now + 600),
                &target(3000),
                "preview.example.com",
                now,
            )
            .unwrap();
        assert_eq!(verify(&key, &token)["sub"], "bob");
        for bad in [
            "",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(AssertionKey::from_pem(bad).is_err(), "{bad}");
        }
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
