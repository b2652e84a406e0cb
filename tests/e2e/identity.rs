//! Identity sources a platform already has (issue 5), end to end through a real Envoy on
//! 127.0.0.1: tokens from a local JWKS issuer (RS256, ES256, EdDSA, rotation, no HS/RS confusion,
//! issuer down, floods of unknown kids), claim mapping and clock skew, RFC 7662 introspection of
//! opaque tokens (and floods of made-up ones), revocation through the admin API (Bearer and
//! cookie, by token and by sandbox,
//! across a restart), the `mint`/`revoke` CLI against a running server, and revocations shared by
//! two replicas through a real redis-server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::pb::admin_client::AdminClient;
use support::pb::{MintLinkRequest, MintLinkResponse, RevokeSandboxRequest, RevokeTokenRequest};
use support::{
    ADMIN_TOKEN, Authz, AuthzOptions, Envoy, JWT_SECRET, LocalServer, NAVIGATE, PREVIEW_DOMAIN,
    RedisServer, Reply, Stack, admin_client, authed, bearer, host_for, mint_link, now,
    optional_program, until_status, with_credential,
};
use tonic::Request;
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------------
// Small helpers

/// `GET /` on `host` through Envoy with `Authorization: Bearer <token>`.
async fn with_bearer(stack: &Stack, host: &str, token: &str) -> Reply {
    let auth = bearer(token);
    stack
        .get(host, "/", &[("authorization", auth.as_str())])
        .await
}

/// `GET /` on `host` through Envoy as a browser carrying `cookie` (`name=value`).
async fn with_cookie(stack: &Stack, host: &str, cookie: &str) -> Reply {
    let mut headers = NAVIGATE.to_vec();
    headers.push(("cookie", cookie));
    stack.get(host, "/", &headers).await
}

/// How many requests Daytona's preview proxy (the double) has received.
async fn forwarded(stack: &Stack) -> usize {
    stack.double.proxy_requests().await.len()
}

// ---------------------------------------------------------------------------------------------
// 1. JWKS from a local issuer

/// A signing key of the test issuer and its public JWK.
struct IssuerKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

fn fixture(name: &str) -> PathBuf {
    support::repo_root().join("tests/fixtures/jwks").join(name)
}

impl IssuerKey {
    /// An RS256 key from a committed TEST-ONLY PEM (RSA key generation is slow in debug builds).
    fn rsa(kid: &'static str, pem_file: &str) -> IssuerKey {
        let pem = std::fs::read(fixture(pem_file)).unwrap();
        let encoding = EncodingKey::from_rsa_pem(&pem).unwrap();
        IssuerKey::new(kid, Algorithm::RS256, encoding)
    }

    /// An ES256 key generated for this run.
    fn ec(kid: &'static str) -> IssuerKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        IssuerKey::new(kid, Algorithm::ES256, encoding)
    }

    /// An EdDSA (Ed25519) key generated for this run.
    fn ed(kid: &'static str) -> IssuerKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let encoding = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
        // jsonwebtoken cannot derive an OKP JWK itself; the raw public key is `x` (RFC 8037).
        let jwk = serde_json::from_value(json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(pair.public_key_raw()),
            "kid": kid,
            "use": "sig",
            "alg": "EdDSA",
        }))
        .unwrap();
        IssuerKey {
            kid,
            alg: Algorithm::EdDSA,
            encoding,
            jwk,
        }
    }

    fn new(kid: &'static str, alg: Algorithm, encoding: EncodingKey) -> IssuerKey {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        IssuerKey {
            kid,
            alg,
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(self.kid), claims)
    }

    /// Signed with this key, whatever the header says.
    fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// The RSA modulus as the JWK carries it (base64url).
    fn rsa_n(&self) -> String {
        match &self.jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => rsa.n.clone(),
            other => panic!("not an RSA key: {other:?}"),
        }
    }
}

fn claims_for(sandbox_id: &str) -> Value {
    json!({ "sandbox_id": sandbox_id, "exp": now() + 600, "iat": now() })
}

fn hs(alg: Algorithm, kid: Option<&str>, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWKS endpoint of a platform's identity provider: a document the test swaps or makes fail,
/// and a count of the fetches it served.
struct Issuer {
    server: LocalServer,
    state: Arc<IssuerState>,
}

struct IssuerState {
    /// (status, body) of the next answers.
    answer: Mutex<(u16, Value)>,
    fetches: AtomicUsize,
}

async fn jwks_document(State(state): State<Arc<IssuerState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let (status, body) = state.answer.lock().unwrap().clone();
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

impl Issuer {
    async fn start(keys: &[&IssuerKey]) -> Issuer {
        let state = Arc::new(IssuerState {
            answer: Mutex::new((200, Value::Null)),
            fetches: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks.json", get(jwks_document))
            .with_state(Arc::clone(&state));
        let issuer = Issuer {
            server: LocalServer::start(app).await,
            state,
        };
        issuer.publish(keys);
        issuer
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.server.addr)
    }

    fn publish(&self, keys: &[&IssuerKey]) {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
        *self.state.answer.lock().unwrap() = (200, serde_json::to_value(set).unwrap());
    }

    fn fail(&self, status: u16) {
        *self.state.answer.lock().unwrap() = (status, json!({ "error": "down" }));
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

/// A stack trusting only `issuer` (no HS256 secret at all, as for a platform that already has
/// its identity provider), ready: the keys are loaded.
async fn jwks_stack(issuer: &Issuer) -> Stack {
    let stack = Stack::start_with(AuthzOptions {
        extra_args: vec!["--jwks-url".into(), issuer.url()],
        env: vec![("DAYTONA_AUTHZ_JWT_SECRET".into(), String::new())],
        ..Default::default()
    })
    .await;
    assert!(issuer.fetches() >= 1, "ready only once the keys are loaded");
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rs256_es256_and_eddsa_tokens_are_accepted_without_algorithm_confusion() {
    let rsa_1 = IssuerKey::rsa("rsa-1", "test-only-rsa-1.key.pem");
    let ec_1 = IssuerKey::ec("ec-1");
    let ed_1 = IssuerKey::ed("ed-1");
    let issuer = Issuer::start(&[&rsa_1, &ec_1, &ed_1]).await;
    let stack = jwks_stack(&issuer).await;
    let host = stack.host(3000);
    let claims = claims_for(stack.sandbox_id());

    // RS256, ES256 and EdDSA tokens from the issuer open the sandbox.
    for key in [&rsa_1, &ec_1, &ed_1] {
        let reply = with_bearer(&stack, &host, &key.sign(&claims)).await;
        assert_eq!(reply.status, 200, "{:?}: {}", key.alg, reply.body);
    }
    let allowed = forwarded(&stack).await;
    assert_eq!(allowed, 3);

    // No algorithm confusion: HMAC "signed" with the public key material, in every form an
    // attacker could lift from the JWKS, never verifies; nor does a key used with another
    // algorithm than its own, nor `alg: none`.
    let public_pem = std::fs::read(fixture("test-only-rsa-1.pub.pem")).unwrap();
    let n_text = rsa_1.rsa_n();
    let n_raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&n_text)
        .unwrap();
    let unsigned = |header: Value| {
        format!(
            "{}.{}.",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    };
    let forged = [
        (
            "HS256 keyed with the RSA public key PEM",
            hs(Algorithm::HS256, Some("rsa-1"), &public_pem, &claims),
        ),
        (
            "HS256 keyed with the PEM, no kid",
            hs(Algorithm::HS256, None, &public_pem, &claims),
        ),
        (
            "HS256 keyed with the JWK's n (base64url text)",
            hs(Algorithm::HS256, Some("rsa-1"), n_text.as_bytes(), &claims),
        ),
        (
            "HS256 keyed with the modulus bytes",
            hs(Algorithm::HS256, Some("rsa-1"), &n_raw, &claims),
        ),
        (
            "HS384 keyed with the PEM",
            hs(Algorithm::HS384, Some("rsa-1"), &public_pem, &claims),
        ),
        (
            "HS512 keyed with the PEM",
            hs(Algorithm::HS512, Some("rsa-1"), &public_pem, &claims),
        ),
        (
            "RS256 header naming the EC key",
            rsa_1.sign_as(Algorithm::RS256, Some("ec-1"), &claims),
        ),
        (
            "EdDSA header naming the RSA key",
            ed_1.sign_as(Algorithm::EdDSA, Some("rsa-1"), &claims),
        ),
        (
            "ES256 header naming the EdDSA key",
            ec_1.sign_as(Algorithm::ES256, Some("ed-1"), &claims),
        ),
        (
            "PS256 header naming the RS256 key",
            rsa_1.sign_as(Algorithm::PS256, Some("rsa-1"), &claims),
        ),
        (
            "alg none",
            unsigned(json!({ "alg": "none", "typ": "JWT", "kid": "rsa-1" })),
        ),
        (
            "alg none with a signature",
            format!(
                "{}{}",
                unsigned(json!({ "alg": "none", "kid": "rsa-1" })),
                b64url(b"sig")
            ),
        ),
        (
            "alg None",
            unsigned(json!({ "alg": "None", "kid": "ec-1" })),
        ),
    ];
    for (name, token) in &forged {
        let reply = with_bearer(&stack, &host, token).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_token", "{name}");
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.contains("invalid_token")),
            "{name}: {:?}",
            reply.headers
        );
    }
    assert_eq!(
        forwarded(&stack).await,
        allowed,
        "a forged token got through"
    );

    // The issuer's tokens are revocable by their jti like our own.
    let mut with_jti = claims.clone();
    with_jti["jti"] = json!("idp-token-42");
    let token = ec_1.sign(&with_jti);
    assert_eq!(with_bearer(&stack, &host, &token).await.status, 200);
    admin_client(&stack)
        .await
        .revoke_token(authed(RevokeTokenRequest {
            jti: "idp-token-42".into(),
            expires_at: None,
        }))
        .await
        .expect("RevokeToken");
    until_status(
        "an issuer token revoked by jti",
        401,
        Duration::from_secs(1),
        || with_bearer(&stack, &host, &token),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_on_an_unknown_kid_and_an_issuer_outage_keeps_the_last_keys() {
    let rsa_1 = IssuerKey::rsa("rsa-1", "test-only-rsa-1.key.pem");
    let rsa_2 = IssuerKey::rsa("rsa-2", "test-only-rsa-2.key.pem");
    let ec_1 = IssuerKey::ec("ec-1");
    let issuer = Issuer::start(&[&rsa_1, &ec_1]).await;
    let stack = jwks_stack(&issuer).await;
    let host = stack.host(3000);
    let claims = claims_for(stack.sandbox_id());
    let allowed = forwarded(&stack).await;

    // Rotation: the issuer publishes a new key; a token naming it is accepted once the unknown
    // kid made daytona-authz fetch the set again. That refresh is rate limited (one per 10 s,
    // and start-up just fetched), so ~10 s of polling with the unknown kid costs one fetch.
    let rotated = rsa_2.sign(&claims);
    let reply = with_bearer(&stack, &host, &rotated).await;
    assert_eq!(reply.status, 401, "a key not published yet: {}", reply.body);
    let before_rotation = issuer.fetches();
    issuer.publish(&[&rsa_1, &ec_1, &rsa_2]);
    let (_, took) = until_status(
        "a token signed with the rotated-in key",
        200,
        Duration::from_secs(25),
        || with_bearer(&stack, &host, &rotated),
    )
    .await;
    assert_eq!(
        issuer.fetches(),
        before_rotation + 1,
        "polling with an unknown kid for {took:?} fetched the JWKS more than once"
    );

    // The issuer goes down: the keys already loaded keep working.
    issuer.fail(500);
    let known = [
        ("rsa-1", rsa_1.sign(&claims)),
        ("ec-1", ec_1.sign(&claims)),
        ("rsa-2", rotated.clone()),
    ];
    for (kid, token) in &known {
        let reply = with_bearer(&stack, &host, token).await;
        assert_eq!(
            reply.status, 200,
            "{kid} while the issuer is down: {}",
            reply.body
        );
    }

    // A flood of tokens with random unknown kids (validly signed with a known key, even):
    // every one refused, and the issuer hit at most once per rate-limit window. Waves of 30
    // concurrent requests keep coming until a refresh was attempted (the window reopened), plus
    // one more wave.
    let stack_ref = &stack;
    let host_ref = host.as_str();
    let before_flood = issuer.fetches();
    let flood_started = Instant::now();
    let mut sent = 0;
    let mut last_wave = false;
    loop {
        let tokens: Vec<String> = (0..30)
            .map(|_| {
                let kid = format!("kid-{:016x}", rand::random::<u64>());
                rsa_1.sign_as(Algorithm::RS256, Some(&kid), &claims)
            })
            .collect();
        let replies = futures_util::future::join_all(
            tokens
                .iter()
                .map(|token| async move { with_bearer(stack_ref, host_ref, token).await }),
        )
        .await;
        for reply in &replies {
            assert_eq!(reply.status, 401, "unknown kid: {}", reply.body);
        }
        sent += replies.len();
        if last_wave {
            break;
        }
        last_wave = issuer.fetches() > before_flood;
        assert!(
            flood_started.elapsed() < Duration::from_secs(25),
            "no JWKS refresh attempt within 25 s of unknown kids"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flood_fetches = issuer.fetches() - before_flood;
    assert!(
        (1..=2).contains(&flood_fetches),
        "{sent} unknown-kid tokens over {:?} made {flood_fetches} JWKS fetches",
        flood_started.elapsed()
    );
    // That refresh failed (500): the last good keys stayed.
    for (kid, token) in &known {
        let reply = with_bearer(&stack, &host, token).await;
        assert_eq!(
            reply.status, 200,
            "{kid} after a failed refresh: {}",
            reply.body
        );
    }
    assert_eq!(forwarded(&stack).await, allowed + 1 + 2 * known.len());

    // The issuer comes back having retired rsa-1. Its token was accepted (and its grant
    // remembered) many times; once a refresh (here, triggered by an unknown kid) brings the new
    // set, it is refused like any token signed with a key we no longer hold.
    issuer.publish(&[&ec_1, &rsa_2]);
    let retired = &known[0].1;
    let unknown = rsa_2.sign_as(Algorithm::RS256, Some("kid-not-published"), &claims);
    until_status(
        "rsa-1's token once rsa-1 is retired",
        401,
        Duration::from_secs(25),
        || async {
            with_bearer(&stack, &host, &unknown).await;
            with_bearer(&stack, &host, retired).await
        },
    )
    .await;
    for (kid, token) in &known[1..] {
        let reply = with_bearer(&stack, &host, token).await;
        assert_eq!(
            reply.status, 200,
            "{kid} after rsa-1 retired: {}",
            reply.body
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Claim mapping and time claims

fn hs256(claims: &Value) -> String {
    hs(Algorithm::HS256, None, JWT_SECRET.as_bytes(), claims)
}

#[tokio::test]
async fn claim_names_array_sandboxes_nbf_iat_clock_skew_and_max_lifetime_are_honoured() {
    let stack = Stack::start_with(AuthzOptions::args(&[
        "--sandbox-claim",
        "sandboxes",
        "--ports-claim",
        "allowed_ports",
        "--clock-skew",
        "5s",
        "--max-token-lifetime",
        "1h",
    ]))
    .await;
    let first = stack.sandbox_id().to_owned();
    let second = stack.double.create_sandbox().await.id;
    let third = stack.double.create_sandbox().await.id;
    let t = now();

    // An array claim: any of these sandboxes, only these ports.
    let both = hs256(&json!({
        "sandboxes": [first, second.to_uppercase()],
        "allowed_ports": [3000, 8080],
        "exp": t + 600,
    }));
    for (sandbox, port, want) in [
        (&first, 3000, 200),
        (&second, 8080, 200),
        (&third, 3000, 403),
        (&first, 4000, 403),
    ] {
        let reply = with_bearer(&stack, &host_for(sandbox, port), &both).await;
        assert_eq!(reply.status, want, "{sandbox}:{port}: {}", reply.body);
        if want == 403 {
            assert_eq!(reply.json()["error"], "insufficient_scope");
        }
    }

    // Revoking one of the listed sandboxes closes that one only.
    let mut admin_api = admin_client(&stack).await;
    revoke_sandbox(&mut admin_api, &second, false).await;
    let reply = with_bearer(&stack, &host_for(&second, 8080), &both).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = with_bearer(&stack, &host_for(&first, 3000), &both).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A string works too; the default names mean nothing now.
    let one = hs256(&json!({ "sandboxes": first, "ports": [3000], "exp": t + 600 }));
    let reply = with_bearer(&stack, &host_for(&first, 4000), &one).await;
    assert_eq!(
        reply.status, 200,
        "`ports` is not the ports claim: {}",
        reply.body
    );
    let default_name = hs256(&json!({ "sandbox_id": first, "exp": t + 600 }));
    let reply = with_bearer(&stack, &host_for(&first, 3000), &default_name).await;
    assert_eq!(reply.status, 401, "`sandbox_id` is not the sandbox claim");

    // nbf, iat and exp, with 5 s of skew either way.
    let t = now();
    let base = json!({ "sandboxes": [first], "exp": t + 600 });
    let with = |name: &str, value: u64| {
        let mut claims = base.clone();
        claims[name] = json!(value);
        hs256(&claims)
    };
    for (name, token, want) in [
        ("nbf in a minute", with("nbf", t + 60), 401),
        ("nbf within the skew", with("nbf", t + 2), 200),
        ("nbf passed", with("nbf", t - 60), 200),
        ("iat in a minute", with("iat", t + 60), 401),
        ("iat within the skew", with("iat", t + 2), 200),
        ("exp past the skew", with("exp", t - 30), 401),
        ("exp within the skew", with("exp", t - 1), 200),
        ("exp at --max-token-lifetime", with("exp", t + 3600), 200),
        ("exp past --max-token-lifetime", with("exp", t + 7200), 401),
    ] {
        let reply = with_bearer(&stack, &host_for(&first, 3000), &token).await;
        assert_eq!(reply.status, want, "{name}: {}", reply.body);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. RFC 7662 introspection of opaque tokens

const INTROSPECTION_CLIENT: &str = "daytona-authz-client";
const INTROSPECTION_SECRET: &str = "introspection-secret-0123456789";

/// A platform's introspection endpoint: answers per token, a switchable failure status, and
/// counts of the calls (and of calls with wrong client credentials, refused with 401).
struct IntrospectionState {
    answers: Mutex<HashMap<String, Value>>,
    fail_with: Mutex<Option<u16>>,
    calls: AtomicUsize,
    bad_credentials: AtomicUsize,
    bad_requests: AtomicUsize,
    /// How long each answer takes (to make concurrent look-ups overlap).
    delay: Mutex<Duration>,
}

async fn introspect(
    State(state): State<Arc<IntrospectionState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{INTROSPECTION_CLIENT}:{INTROSPECTION_SECRET}"))
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("authorization") != Some(expected.as_str()) {
        state.bad_credentials.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let Some(token) = form.get("token") else {
        state.bad_requests.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST.into_response();
    };
    if header("content-type") != Some("application/x-www-form-urlencoded") {
        state.bad_requests.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    if let Some(status) = *state.fail_with.lock().unwrap() {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let answer = state
        .answers
        .lock()
        .unwrap()
        .get(token)
        .cloned()
        .unwrap_or_else(|| json!({ "active": false }));
    axum::Json(answer).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_cached_and_refused_when_the_endpoint_is_down() {
    let state = Arc::new(IntrospectionState {
        answers: Mutex::new(HashMap::new()),
        fail_with: Mutex::new(None),
        calls: AtomicUsize::new(0),
        bad_credentials: AtomicUsize::new(0),
        bad_requests: AtomicUsize::new(0),
        delay: Mutex::new(Duration::ZERO),
    });
    let app = Router::new()
        .route("/oauth2/introspect", post(introspect))
        .with_state(Arc::clone(&state));
    let mut endpoint = LocalServer::start(app).await;
    let stack = Stack::start_with(AuthzOptions {
        extra_args: vec![
            "--introspection-url".into(),
            format!("http://{}/oauth2/introspect", endpoint.addr),
            "--introspection-client-id".into(),
            INTROSPECTION_CLIENT.into(),
            "--introspection-negative-ttl".into(),
            "2s".into(),
        ],
        env: vec![(
            "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_SECRET".into(),
            INTROSPECTION_SECRET.into(),
        )],
        ..Default::default()
    })
    .await;
    let id = stack.sandbox_id().to_owned();
    let host = stack.host(3000);
    let t = now();
    let active = |sandbox: &str| {
        json!({
            "active": true,
            "sandbox_id": sandbox,
            "ports": [3000],
            "exp": t + 600,
            "client_id": "platform",
            "token_type": "access_token",
        })
    };
    state.answers.lock().unwrap().extend([
        ("opaque-active".to_owned(), active(&id)),
        (
            "opaque-other-sandbox".to_owned(),
            active("0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93"),
        ),
        (
            "opaque-active-but-expired".to_owned(),
            json!({ "active": true, "sandbox_id": id, "exp": t - 60 }),
        ),
        ("opaque-inactive".to_owned(), json!({ "active": false })),
        ("opaque-later".to_owned(), active(&id)),
        ("opaque-while-stopped".to_owned(), active(&id)),
        ("opaque-burst".to_owned(), active(&id)),
        (
            "opaque-with-jti".to_owned(),
            json!({ "active": true, "sandbox_id": id, "exp": t + 600, "jti": "platform-jti-1" }),
        ),
    ]);
    let calls = || state.calls.load(Ordering::SeqCst);
    // Opaque tokens are secrets too: no log may contain one (test-support checks at the end).
    for token in state.answers.lock().unwrap().keys() {
        support::remember_secret(token);
    }
    support::remember_secret("opaque-not-yet");
    support::remember_secret("opaque-unknown-to-the-platform");

    // Active → allowed, and the token goes nowhere near the sandbox.
    let reply = with_bearer(&stack, &host, "opaque-active").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(calls(), 1);
    let received = stack.double.proxy_requests().await;
    assert!(received[0].values("authorization").is_empty());
    // ... and cached: the second request asks nobody.
    let reply = with_bearer(&stack, &host, "opaque-active").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(calls(), 1, "an active answer is cached");

    for (token, want) in [
        ("opaque-inactive", 401),
        ("opaque-unknown-to-the-platform", 401),
        ("opaque-active-but-expired", 401),
        ("opaque-other-sandbox", 403),
    ] {
        let reply = with_bearer(&stack, &host, token).await;
        assert_eq!(reply.status, want, "{token}: {}", reply.body);
    }
    // An inactive answer is cached too, briefly (--introspection-negative-ttl 2s): a token the
    // platform activates afterwards works soon.
    let before = calls();
    for _ in 0..2 {
        let reply = with_bearer(&stack, &host, "opaque-not-yet").await;
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    assert_eq!(calls(), before + 1, "an inactive answer is cached");
    state
        .answers
        .lock()
        .unwrap()
        .insert("opaque-not-yet".into(), active(&id));
    until_status(
        "a token activated after an inactive answer",
        200,
        Duration::from_secs(10),
        || with_bearer(&stack, &host, "opaque-not-yet"),
    )
    .await;

    // Concurrent requests with one new token: one introspection call between them.
    *state.delay.lock().unwrap() = Duration::from_millis(300);
    let before = calls();
    let stack_ref = &stack;
    let host_ref = host.as_str();
    let replies = futures_util::future::join_all(
        (0..10).map(|_| async move { with_bearer(stack_ref, host_ref, "opaque-burst").await }),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        calls(),
        before + 1,
        "concurrent look-ups of one token coalesce"
    );
    *state.delay.lock().unwrap() = Duration::ZERO;

    // A platform token's jti can be revoked through the admin API, cached answer or not.
    assert_eq!(
        with_bearer(&stack, &host, "opaque-with-jti").await.status,
        200
    );
    let mut admin_api = admin_client(&stack).await;
    admin_api
        .revoke_token(authed(RevokeTokenRequest {
            jti: "platform-jti-1".into(),
            expires_at: Some(t + 600),
        }))
        .await
        .expect("RevokeToken");
    until_status(
        "an introspected token revoked by jti",
        401,
        Duration::from_secs(1),
        || with_bearer(&stack, &host, "opaque-with-jti"),
    )
    .await;

    // JWTs are verified locally, never introspected.
    let before = calls();
    let reply = with_bearer(&stack, &host, &stack.token(None)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(calls(), before);
    assert_eq!(state.bad_credentials.load(Ordering::SeqCst), 0);
    assert_eq!(state.bad_requests.load(Ordering::SeqCst), 0);
    let allowed = forwarded(&stack).await;

    // The endpoint fails: 503, nothing forwarded; the failure is not cached.
    *state.fail_with.lock().unwrap() = Some(500);
    let before = calls();
    for _ in 0..2 {
        let reply = with_bearer(&stack, &host, "opaque-later").await;
        assert_eq!(reply.status, 503, "{}", reply.body);
    }
    assert_eq!(calls(), before + 2, "failures are not cached");
    assert_eq!(forwarded(&stack).await, allowed, "forwarded while unknown");
    *state.fail_with.lock().unwrap() = None;
    let reply = with_bearer(&stack, &host, "opaque-later").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let allowed = allowed + 1;

    // The endpoint is gone (connection refused): 503 for any token it has not vouched for.
    endpoint.stop().await;
    let reply = with_bearer(&stack, &host, "opaque-while-stopped").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(forwarded(&stack).await, allowed, "forwarded while unknown");
    // An answer cached a moment ago still holds until its (short) cache life ends.
    let reply = with_bearer(&stack, &host, "opaque-active").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// An introspection endpoint that vouches for its `known` tokens at once and holds every other
/// (made-up) token until released, then calls it inactive.
#[derive(Default)]
struct HoldingEndpoint {
    known: Mutex<HashMap<String, Value>>,
    calls: Mutex<HashMap<String, usize>>,
    /// Calls about made-up tokens that reached the endpoint.
    made_up: AtomicUsize,
    released: tokio::sync::watch::Sender<bool>,
}

async fn introspect_or_hold(State(state): State<Arc<HoldingEndpoint>>, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let token = form.get("token").cloned().unwrap_or_default();
    *state
        .calls
        .lock()
        .unwrap()
        .entry(token.clone())
        .or_default() += 1;
    let known = state.known.lock().unwrap().get(&token).cloned();
    if let Some(answer) = known {
        return axum::Json(answer).into_response();
    }
    state.made_up.fetch_add(1, Ordering::SeqCst);
    let mut released = state.released.subscribe();
    let _ = released.wait_for(|released| *released).await;
    axum::Json(json!({ "active": false })).into_response()
}

/// A counter of daytona-authz's, read through Envoy's metrics listener.
async fn authz_counter(stack: &Stack, series: &str) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", stack.envoy.metrics_port);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
    line.unwrap_or_else(|| panic!("{series} missing:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_opaque_tokens_gets_503_and_known_tokens_keep_their_slots() {
    const KNOWN: &str = "opaque-known-good";
    // Two calls about never-seen tokens at once; four in all (the bucket refills one every
    // 100 s, never within this test).
    const CONCURRENCY: usize = 2;
    const BURST: usize = 4;
    // More made-up tokens at once than daytona-authz has introspection call slots (64).
    const FLOOD: usize = 80;
    let state = Arc::new(HoldingEndpoint::default());
    let app = Router::new()
        .route("/oauth2/introspect", post(introspect_or_hold))
        .with_state(Arc::clone(&state));
    let endpoint = LocalServer::start(app).await;
    let stack = Stack::start_with(AuthzOptions {
        extra_args: [
            "--introspection-url",
            &format!("http://{}/oauth2/introspect", endpoint.addr),
            "--introspection-client-id",
            INTROSPECTION_CLIENT,
            // The known token's answer leaves the cache after a second: it is checked again
            // at the endpoint while the flood is on.
            "--introspection-cache-ttl",
            "1s",
            "--introspection-unknown-concurrency",
            &CONCURRENCY.to_string(),
            "--introspection-unknown-rate",
            "0.01",
            "--introspection-unknown-burst",
            &BURST.to_string(),
        ]
        .map(str::to_owned)
        .to_vec(),
        env: vec![(
            "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_SECRET".into(),
            INTROSPECTION_SECRET.into(),
        )],
        ..Default::default()
    })
    .await;
    let host = stack.host(3000);
    state.known.lock().unwrap().insert(
        KNOWN.into(),
        json!({ "active": true, "sandbox_id": stack.sandbox_id(), "exp": now() + 600 }),
    );
    support::remember_secret(KNOWN);
    let made_up = |_| {
        let token = format!("made-up-{}", uuid::Uuid::new_v4());
        support::remember_secret(&token);
        token
    };
    let known_calls = || state.calls.lock().unwrap().get(KNOWN).copied().unwrap_or(0);
    let made_up_calls = || state.made_up.load(Ordering::SeqCst);

    // The user's token is seen active once: known from now on.
    assert_eq!(with_bearer(&stack, &host, KNOWN).await.status, 200);
    assert_eq!(known_calls(), 1);

    // The flood: every request in flight at once, against an endpoint that holds them.
    let before = forwarded(&stack).await;
    let known_let_in = AtomicUsize::new(0);
    let tokens: Vec<String> = (0..FLOOD).map(made_up).collect();
    let answered = AtomicUsize::new(0);
    let flood = futures_util::future::join_all(tokens.iter().map(|token| async {
        let reply = with_bearer(&stack, &host, token).await;
        answered.fetch_add(1, Ordering::SeqCst);
        reply
    }));
    let meanwhile = async {
        // Two reach the endpoint and are held there; every other one is refused at once.
        support::eventually(
            "the flood to be refused but for the calls in flight",
            Duration::from_secs(30),
            || async {
                let refused = answered.load(Ordering::SeqCst) >= FLOOD - CONCURRENCY;
                (refused && made_up_calls() == CONCURRENCY).then_some(())
            },
        )
        .await;
        // The known token is checked again at the endpoint during the flood, and let in.
        support::eventually(
            "the known token to be introspected again",
            Duration::from_secs(10),
            || async {
                let reply = with_bearer(&stack, &host, KNOWN).await;
                assert_eq!(reply.status, 200, "known token in a flood: {}", reply.body);
                known_let_in.fetch_add(1, Ordering::SeqCst);
                (known_calls() == 2).then_some(())
            },
        )
        .await;
        state.released.send_replace(true);
    };
    let (replies, ()) = tokio::join!(flood, meanwhile);
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(refused.len() >= FLOOD - CONCURRENCY, "{replies:?}");
    for reply in &refused {
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
    }
    // The held ones were answered inactive once released (or, on a very slow machine, timed out).
    assert!(replies.iter().all(|r| [401, 503].contains(&r.status)));
    assert_eq!(
        made_up_calls(),
        CONCURRENCY,
        "shed tokens never reach the endpoint"
    );

    // The rate: the bucket had BURST; the known token's first look-up and the two calls in flight
    // took three. One more made-up token gets an answer, then every new one is refused.
    let more: Vec<String> = (0..3).map(made_up).collect();
    let statuses = [
        with_bearer(&stack, &host, &more[0]).await.status,
        with_bearer(&stack, &host, &more[1]).await.status,
        with_bearer(&stack, &host, &more[2]).await.status,
    ];
    assert_eq!(statuses, [401, 503, 503]);
    assert_eq!(made_up_calls(), BURST - 1);
    // ... and the known token still gets in, whatever the garbage used up.
    assert_eq!(with_bearer(&stack, &host, KNOWN).await.status, 200);
    let let_in = known_let_in.load(Ordering::SeqCst) + 1;
    assert_eq!(
        forwarded(&stack).await,
        before + let_in,
        "only the known token got through"
    );

    let shed =
        |reason: &str| format!("daytona_authz_introspection_shed_total{{reason=\"{reason}\"}}");
    let by_concurrency = authz_counter(&stack, &shed("concurrency")).await;
    assert!(
        by_concurrency >= (FLOOD - CONCURRENCY) as f64,
        "{by_concurrency}"
    );
    assert_eq!(authz_counter(&stack, &shed("rate")).await, 2.0);
}

// ---------------------------------------------------------------------------------------------
// 4. Revocation through the admin API

async fn revoke_token(admin: &mut AdminClient<Channel>, minted: &MintLinkResponse) {
    admin
        .revoke_token(authed(RevokeTokenRequest {
            jti: minted.jti.clone(),
            expires_at: Some(minted.expires_at),
        }))
        .await
        .expect("RevokeToken");
}

async fn revoke_sandbox(admin: &mut AdminClient<Channel>, sandbox_id: &str, lift: bool) {
    admin
        .revoke_sandbox(authed(RevokeSandboxRequest {
            sandbox_id: sandbox_id.to_owned(),
            lift,
        }))
        .await
        .expect("RevokeSandbox");
}

/// Opens a share link as a browser would: the 302 sets our cookie; returns `name=value`.
async fn cookie_from_link(stack: &Stack, host: &str, token: &str) -> String {
    let reply = stack
        .get(host, &format!("/?access_token={token}"), &NAVIGATE)
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let set_cookie = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("daytona_authz="))
        .expect("Set-Cookie for daytona_authz");
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn revocation_by_token_and_by_sandbox_takes_effect_within_a_second_for_bearer_and_cookie() {
    let stack = Stack::start().await;
    let mut admin = admin_client(&stack).await;
    let id = stack.sandbox_id().to_owned();
    let other = stack.double.create_sandbox().await.id;
    let host = stack.host(3000);
    let second = Duration::from_secs(1);

    let link = mint_link(&mut admin, &id).await;
    assert_eq!(
        link.links,
        [format!("http://{host}/?access_token={}", link.token)]
    );
    assert_eq!(with_bearer(&stack, &host, &link.token).await.status, 200);
    let cookie = cookie_from_link(&stack, &host, &link.token).await;
    assert_eq!(with_cookie(&stack, &host, &cookie).await.status, 200);
    let kept = mint_link(&mut admin, &id).await;
    let kept_cookie = cookie_from_link(&stack, &host, &kept.token).await;

    // By jti: the Bearer token and the cookie it became both stop working within a second.
    revoke_token(&mut admin, &link).await;
    let (reply, took) = until_status("revoked Bearer token", 401, second, || {
        with_bearer(&stack, &host, &link.token)
    })
    .await;
    assert_eq!(reply.json()["error"], "invalid_token");
    let (reply, took_cookie) = until_status("revoked cookie", 401, second, || {
        with_cookie(&stack, &host, &cookie)
    })
    .await;
    assert!(
        reply
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("daytona_authz=; Max-Age=0")),
        "the dead cookie is cleared: {:?}",
        reply.headers
    );
    assert!(took + took_cookie < second, "{took:?} + {took_cookie:?}");
    let reply = stack
        .get(&host, &format!("/?access_token={}", link.token), &NAVIGATE)
        .await;
    assert_eq!(reply.status, 401, "the share link itself is dead too");
    // Only that token.
    assert_eq!(with_bearer(&stack, &host, &kept.token).await.status, 200);
    assert_eq!(with_cookie(&stack, &host, &kept_cookie).await.status, 200);

    // By sandbox: every token for it, fresh ones included, gets 403; other sandboxes do not.
    revoke_sandbox(&mut admin, &id, false).await;
    let fresh = mint_link(&mut admin, &id).await;
    let (reply, _) = until_status("token for a revoked sandbox", 403, second, || {
        with_bearer(&stack, &host, &fresh.token)
    })
    .await;
    assert_eq!(reply.json()["error"], "insufficient_scope");
    until_status("cookie for a revoked sandbox", 403, second, || {
        with_cookie(&stack, &host, &kept_cookie)
    })
    .await;
    let elsewhere = mint_link(&mut admin, &other).await;
    let reply = with_bearer(&stack, &host_for(&other, 3000), &elsewhere.token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Lifted: back to 200, but the token revoked by jti stays revoked.
    revoke_sandbox(&mut admin, &id, true).await;
    until_status("token after the lift", 200, second, || {
        with_bearer(&stack, &host, &fresh.token)
    })
    .await;
    assert_eq!(with_cookie(&stack, &host, &kept_cookie).await.status, 200);
    assert_eq!(with_bearer(&stack, &host, &link.token).await.status, 401);
    assert_eq!(with_cookie(&stack, &host, &cookie).await.status, 401);
}

/// Stops the stack's daytona-authz with SIGTERM and puts a new one, started with `options`,
/// and a new Envoy pointing at it in their place.
async fn restart_authz(stack: &mut Stack, options: &AuthzOptions) {
    stack.authz.signal("TERM");
    let status = stack.authz.proc.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "daytona-authz exited with {status} on SIGTERM:\n{}",
        stack.authz.proc.stderr()
    );
    let mut options = options.clone();
    options
        .extra_args
        .extend(stack.double.upstream_domain_args());
    let authz = Authz::start(&stack.double.api_url, &options).await;
    stack.envoy = Envoy::start(&authz).await;
    stack.authz = authz;
}

#[tokio::test]
async fn revocations_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("revocations.redb");
    let options = AuthzOptions {
        extra_args: vec!["--revocation-db".into(), db.display().to_string()],
        ..Default::default()
    };
    let mut stack = Stack::start_with(options.clone()).await;
    let mut admin_api = admin_client(&stack).await;
    let id = stack.sandbox_id().to_owned();
    let other = stack.double.create_sandbox().await.id;
    let host = stack.host(3000);
    let other_host = host_for(&other, 3000);

    let revoked = mint_link(&mut admin_api, &id).await;
    let kept = mint_link(&mut admin_api, &id).await;
    let in_revoked_sandbox = mint_link(&mut admin_api, &other).await;
    revoke_token(&mut admin_api, &revoked).await;
    revoke_sandbox(&mut admin_api, &other, false).await;
    let expect = async |stack: &Stack, when: &str| {
        for (what, host, token, want) in [
            ("revoked token", &host, &revoked.token, 401),
            ("other token", &host, &kept.token, 200),
            (
                "revoked sandbox",
                &other_host,
                &in_revoked_sandbox.token,
                403,
            ),
        ] {
            let reply = with_bearer(stack, host, token).await;
            assert_eq!(reply.status, want, "{what} {when}: {}", reply.body);
        }
    };
    expect(&stack, "before the restart").await;
    assert!(db.exists(), "the store is the file we named");

    drop(admin_api);
    restart_authz(&mut stack, &options).await;
    expect(&stack, "after the restart").await;
}

#[tokio::test]
async fn the_admin_api_refuses_revocations_without_its_credential() {
    let stack = Stack::start().await;
    let mut admin = admin_client(&stack).await;
    let host = stack.host(3000);
    let link = mint_link(&mut admin, stack.sandbox_id()).await;
    let revoke = || RevokeTokenRequest {
        jti: link.jti.clone(),
        expires_at: Some(link.expires_at),
    };
    let status = admin
        .revoke_token(Request::new(revoke()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    for credential in [
        "Bearer wrong".to_owned(),
        format!("Basic {ADMIN_TOKEN}"),
        format!("Bearer {ADMIN_TOKEN}x"),
        format!("bearer {ADMIN_TOKEN}"),
        ADMIN_TOKEN.to_owned(),
    ] {
        let status = admin
            .revoke_token(with_credential(revoke(), &credential))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{credential}");
    }
    let status = admin
        .revoke_sandbox(Request::new(RevokeSandboxRequest {
            sandbox_id: stack.sandbox_id().to_owned(),
            lift: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = admin
        .mint_link(Request::new(MintLinkRequest {
            sandbox_id: stack.sandbox_id().to_owned(),
            ports: vec![3000],
            ttl_seconds: 60,
            base_url: String::new(),
            any_port: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Nothing was revoked by the refused calls.
    let reply = with_bearer(&stack, &host, &link.token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// 5. The CLI against a running daytona-authz

/// Runs the daytona-authz binary with only PATH and `env` (no JWT secret: a minted link can only
/// come from the server).
async fn cli(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daytona-authz"));
        command.args(&args).env_clear().env("PATH", "/usr/bin:/bin");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("run daytona-authz")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `(host, path?query)` of a printed link, as Envoy is asked for it.
fn split_link(link: &str) -> (String, String) {
    let url = url::Url::parse(link).unwrap_or_else(|e| panic!("{link:?}: {e}"));
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    (url.host_str().unwrap().to_owned(), path)
}

/// The link and jti `mint` printed.
fn minted(output: &Output) -> (String, String) {
    assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    let out = stdout(output);
    let link = out.lines().next().unwrap().to_owned();
    let jti = out
        .lines()
        .find_map(|l| l.strip_prefix("jti: "))
        .unwrap_or_else(|| panic!("no jti in {out}"))
        .to_owned();
    (link, jti)
}

#[tokio::test]
async fn mint_and_revoke_subcommands_talk_to_a_running_server() {
    let stack = Stack::start().await;
    let admin_url = format!(
        "http://{}",
        stack.authz.admin_addr.as_deref().expect("admin API on")
    );
    let id = stack.sandbox_id().to_owned();
    let token_env = || vec![("DAYTONA_AUTHZ_ADMIN_TOKEN", ADMIN_TOKEN.to_owned())];
    let mint_args = || -> Vec<String> {
        [
            "mint",
            "--admin-url",
            &admin_url,
            "--sandbox",
            &id,
            "--port",
            "3000",
            "--base-url",
            &format!("http://{{port}}-{{id}}.{PREVIEW_DOMAIN}/"),
        ]
        .map(String::from)
        .to_vec()
    };
    let open = async |link: &str| {
        let (host, path) = split_link(link);
        stack.get(&host, &path, &[("accept", "*/*")]).await
    };

    let (link, jti) = minted(&cli(mint_args(), token_env()).await);
    assert!(
        link.starts_with(&format!("http://{}/?access_token=ey", stack.host(3000))),
        "{link}"
    );
    let reply = open(&link).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A wrong admin token is refused and revokes nothing.
    let output = cli(
        ["revoke", "--admin-url", &admin_url, "--jti", &jti]
            .map(String::from)
            .to_vec(),
        vec![("DAYTONA_AUTHZ_ADMIN_TOKEN", "not-the-admin-token".into())],
    )
    .await;
    // EX_NOPERM: the admin API refused our credential.
    assert_eq!(output.status.code(), Some(77), "{}", stderr(&output));
    assert!(stderr(&output).contains("refused"), "{}", stderr(&output));
    assert_eq!(open(&link).await.status, 200);

    // revoke --jti: the link dies within a second.
    let output = cli(
        ["revoke", "--admin-url", &admin_url, "--jti", &jti]
            .map(String::from)
            .to_vec(),
        token_env(),
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains(&jti), "{}", stdout(&output));
    until_status(
        "link revoked with the CLI",
        401,
        Duration::from_secs(1),
        || open(&link),
    )
    .await;

    // revoke --sandbox, then --lift.
    let (fresh, _) = minted(&cli(mint_args(), token_env()).await);
    assert_eq!(open(&fresh).await.status, 200);
    let revoke_sandbox = |lift: bool| {
        let mut args = ["revoke", "--admin-url", &admin_url, "--sandbox", &id]
            .map(String::from)
            .to_vec();
        if lift {
            args.push("--lift".into());
        }
        cli(args, token_env())
    };
    let output = revoke_sandbox(false).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    until_status(
        "sandbox revoked with the CLI",
        403,
        Duration::from_secs(1),
        || open(&fresh),
    )
    .await;
    let output = revoke_sandbox(true).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    until_status(
        "sandbox lifted with the CLI",
        200,
        Duration::from_secs(1),
        || open(&fresh),
    )
    .await;
    assert_eq!(open(&link).await.status, 401, "the jti stays revoked");
}

#[tokio::test]
async fn revoke_subject_stops_a_persons_tokens_for_every_sandbox_until_lifted() {
    let stack = Stack::start().await;
    let admin_url = format!(
        "http://{}",
        stack.authz.admin_addr.as_deref().expect("admin API on")
    );
    let other = stack.double.create_sandbox().await;
    // HS256 tokens with a `sub`, naming both sandboxes.
    let token_of = |sub: &str| {
        let claims = serde_json::json!({
            "sandbox_id": [stack.sandbox_id(), other.id],
            "sub": sub,
            "exp": now() + 600,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap();
        support::remember_secret(&token);
        format!("Bearer {token}")
    };
    let (alice, bob) = (token_of("alice@example.com"), token_of("bob@example.com"));
    let get = |host: String, auth: String| {
        let stack = &stack;
        async move { stack.get(&host, "/", &[("authorization", &auth)]).await }
    };
    let status = |host: String, auth: String| {
        let get = &get;
        async move { get(host, auth).await.status }
    };
    let hosts = [stack.host(3000), support::host_for(&other.id, 3000)];
    for host in &hosts {
        assert_eq!(status(host.clone(), alice.clone()).await, 200);
    }
    let revoke = |lift: bool| {
        let mut args = [
            "revoke",
            "--admin-url",
            &admin_url,
            "--subject",
            "alice@example.com",
        ]
        .map(String::from)
        .to_vec();
        if lift {
            args.push("--lift".into());
        }
        cli(
            args,
            vec![("DAYTONA_AUTHZ_ADMIN_TOKEN", ADMIN_TOKEN.to_owned())],
        )
    };
    let output = revoke(false).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("alice@example.com"),
        "{}",
        stdout(&output)
    );
    // An email as the subject: revoked as given (these tokens' `sub` is one), with a note that
    // identity providers' `sub` is usually an opaque id.
    assert!(
        stderr(&output).contains("looks like an email address"),
        "{}",
        stderr(&output)
    );
    for host in &hosts {
        until_status("alice revoked", 401, Duration::from_secs(1), || {
            get(host.clone(), alice.clone())
        })
        .await;
        assert_eq!(
            status(host.clone(), bob.clone()).await,
            200,
            "bob is not alice"
        );
    }
    let output = revoke(true).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    until_status("alice lifted", 200, Duration::from_secs(1), || {
        get(hosts[1].clone(), alice.clone())
    })
    .await;
    // --lift needs --sandbox or --subject.
    let output = cli(
        ["revoke", "--admin-url", &admin_url, "--jti", "x", "--lift"]
            .map(String::from)
            .to_vec(),
        vec![("DAYTONA_AUTHZ_ADMIN_TOKEN", ADMIN_TOKEN.to_owned())],
    )
    .await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
}

#[tokio::test]
async fn an_expiry_in_the_past_is_refused_by_the_admin_api_and_the_cli() {
    let stack = Stack::start().await;
    let mut admin_api = admin_client(&stack).await;
    let admin_url = format!(
        "http://{}",
        stack.authz.admin_addr.as_deref().expect("admin API on")
    );
    let host = stack.host(3000);
    let link = mint_link(&mut admin_api, stack.sandbox_id()).await;
    let past = now() - 60;

    // The admin API: InvalidArgument, in its own words (no CLI flag).
    let status = admin_api
        .revoke_token(authed(RevokeTokenRequest {
            jti: link.jti.clone(),
            expires_at: Some(past),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("expires_at") && status.message().contains("past"),
        "{status:?}"
    );
    assert!(!status.message().contains("--"), "{status:?}");

    // The CLI: exit 64 naming its flag, before calling.
    let revoke = |expires_at: u64| {
        cli(
            [
                "revoke",
                "--admin-url",
                &admin_url,
                "--jti",
                &link.jti,
                "--expires-at",
                &expires_at.to_string(),
            ]
            .map(String::from)
            .to_vec(),
            vec![("DAYTONA_AUTHZ_ADMIN_TOKEN", ADMIN_TOKEN.to_owned())],
        )
    };
    let output = revoke(past).await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--expires-at") && stderr(&output).contains("in the past"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stdout(&output), "");

    // Nothing was revoked; the token's own expiry works.
    let reply = with_bearer(&stack, &host, &link.token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let output = revoke(link.expires_at).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    until_status(
        "link revoked with its expiry",
        401,
        Duration::from_secs(1),
        || with_bearer(&stack, &host, &link.token),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Revocations shared through Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shares_revocations_between_replicas_and_fails_closed_when_down() {
    let Some(bin) = optional_program(
        "REDIS_SERVER_BIN",
        "redis-server",
        "redis_shares_revocations_between_replicas_and_fails_closed_when_down",
    ) else {
        return;
    };
    let mut redis = RedisServer::start(bin).await;
    let options = AuthzOptions {
        extra_args: vec!["--redis-url".into(), redis.url()],
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        Stack::start_with(options.clone()),
        Stack::start_with(options.clone())
    );
    let mut admin_a = admin_client(&a).await;
    let mut admin_b = admin_client(&b).await;
    let second = Duration::from_secs(1);
    // Each replica here fronts its own Daytona double; a token for B's sandbox, minted by A
    // (they share the signing secret), is what a user of replica B would carry.
    let (host_a, host_b) = (a.host(3000), b.host(3000));
    let on_b = mint_link(&mut admin_a, b.sandbox_id()).await;
    let on_a = mint_link(&mut admin_b, a.sandbox_id()).await;
    assert_eq!(with_bearer(&b, &host_b, &on_b.token).await.status, 200);
    assert_eq!(with_bearer(&a, &host_a, &on_a.token).await.status, 200);

    // Revoked through replica A, refused by replica B within a second.
    revoke_token(&mut admin_a, &on_b).await;
    until_status(
        "replica B refusing a token revoked on A",
        401,
        second,
        || with_bearer(&b, &host_b, &on_b.token),
    )
    .await;
    // And the other way round, for a whole sandbox, lifted again.
    revoke_sandbox(&mut admin_b, a.sandbox_id(), false).await;
    until_status(
        "replica A refusing a sandbox revoked on B",
        403,
        second,
        || with_bearer(&a, &host_a, &on_a.token),
    )
    .await;
    revoke_sandbox(&mut admin_b, a.sandbox_id(), true).await;
    until_status("replica A after the lift on B", 200, second, || {
        with_bearer(&a, &host_a, &on_a.token)
    })
    .await;

    // Redis goes away: revocation status unknown, so otherwise-valid tokens get 503 within ~2 s
    // on both replicas (fail closed) and nothing more reaches Daytona.
    let valid_b = mint_link(&mut admin_b, b.sandbox_id()).await;
    assert_eq!(with_bearer(&b, &host_b, &valid_b.token).await.status, 200);
    redis.kill();
    let killed = Instant::now();
    let limit = Duration::from_secs(2);
    let (reply, _) = until_status("replica B failing closed", 503, limit, || {
        with_bearer(&b, &host_b, &valid_b.token)
    })
    .await;
    assert_eq!(
        reply.json()["error"],
        "identity_unavailable",
        "{}",
        reply.body
    );
    until_status("replica A failing closed", 503, limit, || {
        with_bearer(&a, &host_a, &on_a.token)
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_millis(2500),
        "{:?}",
        killed.elapsed()
    );
    for (name, stack) in [("A", &a), ("B", &b)] {
        let what = format!("replica {name} to log the Redis outage as an error");
        support::eventually(&what, Duration::from_secs(2), || {
            let logged = stack
                .authz
                .proc
                .stderr()
                .lines()
                .any(|l| l.contains("ERROR") && l.to_lowercase().contains("redis"));
            async move { logged.then_some(()) }
        })
        .await;
    }
    let (forwarded_a, forwarded_b) = (forwarded(&a).await, forwarded(&b).await);
    for _ in 0..5 {
        assert_eq!(with_bearer(&b, &host_b, &valid_b.token).await.status, 503);
        assert_eq!(with_bearer(&a, &host_a, &on_a.token).await.status, 503);
        let cookie = format!("daytona_authz={}", on_a.token);
        assert_eq!(with_cookie(&a, &host_a, &cookie).await.status, 503);
    }
    assert_eq!(
        forwarded(&a).await,
        forwarded_a,
        "A forwarded while Redis was down"
    );
    assert_eq!(
        forwarded(&b).await,
        forwarded_b,
        "B forwarded while Redis was down"
    );
    // Writes cannot be acknowledged either.
    let status = admin_a
        .revoke_sandbox(authed(RevokeSandboxRequest {
            sandbox_id: a.sandbox_id().to_owned(),
            lift: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Back on the same port: both replicas recover by themselves.
    redis.restart().await;
    let recover = Duration::from_secs(10);
    until_status("replica B after Redis came back", 200, recover, || {
        with_bearer(&b, &host_b, &valid_b.token)
    })
    .await;
    until_status("replica A after Redis came back", 200, recover, || {
        with_bearer(&a, &host_a, &on_a.token)
    })
    .await;
    // And share revocations again.
    revoke_token(&mut admin_b, &on_a).await;
    until_status(
        "replica A refusing a token revoked on B",
        401,
        second,
        || with_bearer(&a, &host_a, &on_a.token),
    )
    .await;
}

/// When Redis will forget the revocation of `jti` (its score), if it holds one.
async fn redis_forget_after(redis: &RedisServer, jti: &str) -> Option<f64> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the test redis-server");
    redis::cmd("ZSCORE")
        .arg("daytona-authz:revoked-jtis")
        .arg(jti)
        .query_async(&mut conn)
        .await
        .expect("ZSCORE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_revocations_until_exp_and_restores_them_after_losing_its_data() {
    let test = "redis_keeps_revocations_until_exp_and_restores_them_after_losing_its_data";
    let Some(bin) = optional_program("REDIS_SERVER_BIN", "redis-server", test) else {
        return;
    };
    let mut redis = RedisServer::start(bin).await;
    let stack = Stack::start_with(AuthzOptions {
        extra_args: vec!["--redis-url".into(), redis.url()],
        ..Default::default()
    })
    .await;
    let mut admin_api = admin_client(&stack).await;
    let host = stack.host(3000);
    let second = Duration::from_secs(1);

    // A token living two years (no --max-token-lifetime), revoked without its expiry: the
    // revocation must last at least as long as the token, not 366 days.
    let exp = now() + 2 * 366 * 86_400;
    let claims = support::Claims {
        sandbox_id: stack.sandbox_id().to_owned(),
        exp,
        ports: None,
        iss: None,
        aud: None,
    };
    let (long_lived, long_jti) = support::Signer::hs256(JWT_SECRET.as_bytes())
        .sign_link(&claims, now())
        .unwrap();
    support::remember_secret(&long_lived);
    assert_eq!(with_bearer(&stack, &host, &long_lived).await.status, 200);
    admin_api
        .revoke_token(authed(RevokeTokenRequest {
            jti: long_jti.clone(),
            expires_at: None,
        }))
        .await
        .expect("RevokeToken");
    until_status("the long-lived token revoked", 401, second, || {
        with_bearer(&stack, &host, &long_lived)
    })
    .await;
    let kept = redis_forget_after(&redis, &long_jti).await.unwrap();
    assert!(
        kept >= (exp + 600) as f64,
        "kept until {kept}, the token lives until {exp}"
    );

    // A link revoked with its expiry: kept until then (plus the clock-skew grace).
    let link = mint_link(&mut admin_api, stack.sandbox_id()).await;
    revoke_token(&mut admin_api, &link).await;
    until_status("the link revoked", 401, second, || {
        with_bearer(&stack, &host, &link.token)
    })
    .await;
    assert_eq!(
        redis_forget_after(&redis, &link.jti).await,
        Some((link.expires_at + 600) as f64)
    );
    let restores = async || support::parse_metrics(&stack.authz.metrics().await)["daytona_authz_revocation_store_restores_total"];
    assert_eq!(restores().await, 0.0);

    // Redis restarts on the same port without persistence: it comes back empty. The revoked
    // tokens are never let through (401 from the replica's copy, or 503 while it cannot tell),
    // and the replica writes its revocations back into Redis.
    redis.restart().await;
    support::eventually(
        "the revocations back in Redis",
        Duration::from_secs(10),
        || {
            let (stack, host, redis) = (&stack, &host, &redis);
            let (long_lived, long_jti, link) = (&long_lived, &long_jti, &link);
            async move {
                for token in [long_lived, &link.token] {
                    let reply = with_bearer(stack, host, token).await;
                    assert!(
                        matches!(reply.status, 401 | 503),
                        "a revoked token got {} after Redis lost its data: {}",
                        reply.status,
                        reply.body
                    );
                }
                let long = redis_forget_after(redis, long_jti).await?;
                let short = redis_forget_after(redis, &link.jti).await?;
                Some((long, short))
            }
        },
    )
    .await;
    assert!(redis_forget_after(&redis, &long_jti).await.unwrap() >= (exp + 600) as f64);
    assert_eq!(
        redis_forget_after(&redis, &link.jti).await,
        Some((link.expires_at + 600) as f64)
    );
    for token in [&long_lived, &link.token] {
        until_status("a revoked token after the restore", 401, second, || {
            with_bearer(&stack, &host, token)
        })
        .await;
    }
    assert_eq!(restores().await, 1.0);
    assert!(
        stack
            .authz
            .proc
            .stderr()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("Redis lost revocations")),
        "no error logged for the lost revocations"
    );
    // A valid token still works.
    let fresh = mint_link(&mut admin_api, stack.sandbox_id()).await;
    let reply = with_bearer(&stack, &host, &fresh.token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
