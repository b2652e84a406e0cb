//! Keys from JWKS endpoints (`--jwks-url`, repeatable): fetched over HTTPS, refreshed on a
//! schedule and when a token names an unknown `kid` (rate limited, so a flood of random kids
//! cannot hammer the issuer), and kept when an issuer is down (its last good set stays).
//!
//! Each key's algorithm comes from the key: its JWK `alg`, else its curve (P-256 → ES256,
//! P-384 → ES384, Ed25519 → EdDSA); an RSA key without `alg` serves the RSA family only.
//! Symmetric (`oct`) keys and encryption keys are ignored: a JWKS is public, so an HMAC key in
//! it would let anyone sign tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;

use crate::authz::token::JwkKey;

/// Largest JWKS document accepted.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most keys kept from one source.
const MAX_KEYS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// The key sets of every configured source.
pub struct Jwks {
    http: reqwest::Client,
    sources: Vec<url::Url>,
    /// Last good keys per source (same order as `sources`).
    per_source: Mutex<Vec<Option<Vec<JwkKey>>>>,
    /// Every source's last good keys, flattened.
    keys: ArcSwap<Vec<JwkKey>>,
    last_refresh: Mutex<Option<Instant>>,
    /// Least time between refreshes caused by unknown kids.
    min_refresh_interval: Duration,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field(
                "sources",
                &self
                    .sources
                    .iter()
                    .map(url::Url::as_str)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Jwks {
    pub fn new(
        sources: Vec<url::Url>,
        timeout: Duration,
        min_refresh_interval: Duration,
        trust: &crate::outbound::trust::TrustRoots,
    ) -> Result<Self, crate::outbound::ClientError> {
        let http = crate::outbound::outbound_client(timeout, trust)?;
        let count = sources.len();
        Ok(Jwks {
            http,
            sources,
            per_source: Mutex::new(vec![None; count]),
            keys: ArcSwap::from_pointee(Vec::new()),
            last_refresh: Mutex::new(None),
            min_refresh_interval,
        })
    }

    /// The current keys of every source.
    pub fn keys(&self) -> Arc<Vec<JwkKey>> {
        self.keys.load_full()
    }

    /// Whether every source has delivered a key set at least once.
    pub async fn loaded(&self) -> bool {
        self.per_source.lock().await.iter().all(Option::is_some)
    }

    /// Fetches every source; a source that fails keeps its last good keys. Returns the errors.
    pub async fn refresh(&self) -> Vec<JwksError> {
        *self.last_refresh.lock().await = Some(Instant::now());
        self.fetch_all().await
    }

    async fn fetch_all(&self) -> Vec<JwksError> {
        let mut errors = Vec::new();
        let mut fetched = Vec::with_capacity(self.sources.len());
        for url in &self.sources {
            fetched.push(self.fetch(url).await);
        }
        let mut per_source = self.per_source.lock().await;
        for (slot, result) in per_source.iter_mut().zip(fetched) {
            match result {
                Ok(keys) => *slot = Some(keys),
                Err(e) => errors.push(e),
            }
        }
        let all: Vec<JwkKey> = per_source.iter().flatten().flatten().cloned().collect();
        self.keys.store(Arc::new(all));
        errors
    }

    /// A refresh because a token named an unknown key, unless one happened too recently.
    /// Returns whether it refreshed.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        {
            // Check and claim the slot under one lock, so a burst of unknown kids makes one fetch.
            let mut last = self.last_refresh.lock().await;
            if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        for error in self.fetch_all().await {
            tracing::warn!(%error, "JWKS refresh failed; keeping the last good keys");
        }
        true
    }

    /// The issuer's host only in the span: a JWKS URL could carry a query.
    #[tracing::instrument(
        level = "debug",
        name = "jwks.fetch",
        skip_all,
        fields(
            otel.kind = "client",
            server.address = url.host_str(),
            http.response.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    )]
    async fn fetch(&self, url: &url::Url) -> Result<Vec<JwkKey>, JwksError> {
        let result = self.fetch_untraced(url).await;
        if let Err(JwksError::Fetch { reason, .. }) = &result {
            tracing::Span::current().record("error", reason.as_str());
        }
        result
    }

    async fn fetch_untraced(&self, url: &url::Url) -> Result<Vec<JwkKey>, JwksError> {
        let fail = |reason: String| JwksError::Fetch {
            url: url.to_string(),
            reason,
        };
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                fail(if e.is_timeout() {
                    "timed out".into()
                } else {
                    match crate::outbound::trust::tls_reason(&e) {
                        Some(reason) => format!("unreachable: {reason}"),
                        None => "unreachable".into(),
                    }
                })
            })?;
        tracing::Span::current().record("http.response.status_code", response.status().as_u16());
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status().as_u16())));
        }
        let body = crate::outbound::read_bounded(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                crate::outbound::BodyError::Read(_) => fail("read failed".into()),
                crate::outbound::BodyError::TooLarge => fail("document too large".into()),
            })?;
        signing_keys(&body).map_err(|reason| fail(reason.into()))
    }
}

/// The signing keys of a JWKS document (at most `MAX_KEYS`). A key we cannot read (a `kty`
/// or curve jsonwebtoken does not know, such as an X25519 key-agreement key) is skipped like any
/// other key we do not use: it must not take the issuer's signing keys down with it.
pub fn signing_keys(document: &[u8]) -> Result<Vec<JwkKey>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(document).map_err(|_| "not a JWK set")?;
    let keys: Vec<JwkKey> = document
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| key(&jwk))
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err("no usable signing key");
    }
    Ok(keys)
}

/// A verification key from a JWK, or `None` for keys we must not or cannot use.
pub fn key(jwk: &Jwk) -> Option<JwkKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let declared = jwk.common.key_algorithm.and_then(signing_algorithm);
    if jwk.common.key_algorithm.is_some() && declared.is_none() {
        return None; // an `alg` we do not verify with (HS*, RSA-OAEP, ...)
    }
    let (algorithm, any_rsa) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            Some(alg) if is_rsa(alg) => (alg, false),
            Some(_) => return None,
            None => (Algorithm::RS256, true),
        },
        AlgorithmParameters::EllipticCurve(params) => {
            let by_curve = match params.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            };
            if declared.is_some_and(|alg| alg != by_curve) {
                return None;
            }
            (by_curve, false)
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519
                || declared.is_some_and(|a| a != Algorithm::EdDSA)
            {
                return None;
            }
            (Algorithm::EdDSA, false)
        }
        // A symmetric key in a public document is nobody's secret.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    Some(JwkKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        any_rsa,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn is_rsa(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key material in the right shape (verification is tested end to end in tests/e2e/identity.rs).
    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
    const X256: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y256: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const X384: &str = "iqoUE0vLDCuvNu1NbOkXIrNLl2Xh2UyFhRM7o9cPoPaz4Khuv7VGVc3Ojdfp_PMk";
    const Y384: &str = "O9DqnQw0rYMrHPJhsazh1bcY44kjOpx-ORnTjGVgEfNGjtlRhlxQvc8SmWNzrgGS";
    const ED: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    #[test]
    fn which_jwks_keys_verify_tokens_and_with_which_algorithm() {
        use serde_json::json;
        // (JWK, the algorithm it verifies with and whether any RSA algorithm is accepted; None:
        // refused)
        let cases = [
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB"}),
                Some((Algorithm::RS256, true)),
            ),
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB", "alg": "RS384"}),
                Some((Algorithm::RS384, false)),
            ),
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB", "alg": "PS256", "use": "sig"}),
                Some((Algorithm::PS256, false)),
            ),
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB", "alg": "ES256"}),
                None,
            ),
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB", "alg": "RSA-OAEP"}),
                None,
            ),
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB", "use": "enc"}),
                None,
            ),
            (
                json!({"kty": "RSA", "n": N, "e": "AQAB", "alg": "HS256"}),
                None,
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": X256, "y": Y256}),
                Some((Algorithm::ES256, false)),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": X256, "y": Y256, "alg": "ES256"}),
                Some((Algorithm::ES256, false)),
            ),
            (
                json!({"kty": "EC", "crv": "P-384", "x": X384, "y": Y384}),
                Some((Algorithm::ES384, false)),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": X256, "y": Y256, "alg": "ES384"}),
                None,
            ),
            (
                json!({"kty": "EC", "crv": "P-521", "x": X256, "y": Y256}),
                None,
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": X256, "y": Y256, "use": "enc"}),
                None,
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": ED}),
                Some((Algorithm::EdDSA, false)),
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": ED, "alg": "EdDSA"}),
                Some((Algorithm::EdDSA, false)),
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": ED, "alg": "ES256"}),
                None,
            ),
            (json!({"kty": "oct", "k": "c2VjcmV0"}), None),
            (
                json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "use": "sig"}),
                None,
            ),
        ];
        for (value, expected) in cases {
            let got = key(&jwk(value.clone())).map(|k| (k.algorithm, k.any_rsa));
            assert_eq!(got, expected, "{value}");
        }
    }

    #[test]
    fn keys_we_cannot_read_are_skipped_not_fatal() {
        use serde_json::json;
        let document = json!({"keys": [
            {"kty": "OKP", "crv": "X25519", "x": ED, "use": "enc"},
            {"kty": "PQ", "alg": "ML-DSA-65", "pub": "AAAA"},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "x": X256, "y": Y256, "kid": "good"},
        ]});
        let keys = signing_keys(document.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
        let unusable = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert_eq!(
            signing_keys(unusable.to_string().as_bytes()).err(),
            Some("no usable signing key")
        );
        assert_eq!(signing_keys(b"[]").err(), Some("not a JWK set"));
        let many: Vec<_> = (0..MAX_KEYS + 5)
            .map(|n| json!({"kty": "OKP", "crv": "Ed25519", "x": ED, "kid": n.to_string()}))
            .collect();
        let keys = signing_keys(json!({ "keys": many }).to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), MAX_KEYS);
    }

    #[test]
    fn a_key_keeps_its_kid() {
        let jwk =
            jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": ED, "kid": "2026-12"}));
        assert_eq!(key(&jwk).unwrap().kid.as_deref(), Some("2026-12"));
    }
}
