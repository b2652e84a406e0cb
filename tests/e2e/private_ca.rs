//! Outbound TLS to servers behind a private CA (`--ca-file`), end to end through a real Envoy on
//! 127.0.0.1: a self-hosted Daytona API, a JWKS issuer and an introspection endpoint serving
//! HTTPS with certificates of a CA made here (rcgen) are reached with `--ca-file` and refused
//! without it (503 / not ready, the log saying why); revocations shared by two replicas through
//! Debian's redis-server with TLS on (`rediss://`), and a replica without the CA refusing to start.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::pb::RevokeTokenRequest;
use support::{
    API_KEY, Authz, AuthzOptions, JWT_SECRET, LocalServer, PREVIEW_DOMAIN, Proc, RedisServer,
    Reply, Stack, StackOptions, TestCa, TlsFiles, admin_client, authed, bearer, mint_link, now,
    optional_program,
};

const INTROSPECTION_CLIENT: &str = "platform-authz";
const INTROSPECTION_SECRET: &str = "introspection-secret-0123456789abcdef";
const OPAQUE_TOKEN: &str = "opaque-token-behind-a-private-ca-0123456789";
const REDIS_PASSWORD: &str = "redis-password-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// A private CA and its server certificate, as files

/// A throwaway CA, a certificate it issued for 127.0.0.1 and localhost, and both as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate: what `--ca-file` is given.
    ca_file: PathBuf,
    /// The server certificate (and key) every private-CA server here presents.
    server: TlsFiles,
}

fn pki() -> Pki {
    let ca = TestCa::new("daytona-authz test private CA");
    // "127.0.0.1" becomes an IP address SAN.
    let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca.pem());
    let server = TlsFiles {
        cert: write("server.pem", &cert),
        key: write("server-key.pem", &key),
    };
    Pki {
        _dir: dir,
        ca_file,
        server,
    }
}

// ---------------------------------------------------------------------------------------------
// An identity provider over HTTPS: JWKS and RFC 7662 introspection

struct IdpState {
    jwks: Value,
    /// The sandbox an active introspection answer names (set once the stack runs).
    sandbox_id: std::sync::Mutex<String>,
    /// Requests that got through the TLS handshake.
    requests: AtomicUsize,
}

async fn jwks(State(state): State<Arc<IdpState>>) -> axum::Json<Value> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    axum::Json(state.jwks.clone())
}

async fn introspect(State(state): State<Arc<IdpState>>, body: String) -> axum::Json<Value> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let token = form_urlencoded::parse(body.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned());
    axum::Json(if token.as_deref() == Some(OPAQUE_TOKEN) {
        let sandbox_id = state.sandbox_id.lock().unwrap().clone();
        json!({ "active": true, "sandbox_id": sandbox_id, "exp": now() + 600 })
    } else {
        json!({ "active": false })
    })
}

/// The platform's identity provider over HTTPS with the private CA's certificate, and the key
/// it signs JWTs with.
struct Idp {
    server: LocalServer,
    state: Arc<IdpState>,
    key: EncodingKey,
}

impl Idp {
    async fn start(pki: &Pki) -> Idp {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("private-ca-key".into());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let state = Arc::new(IdpState {
            jwks: serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap(),
            sandbox_id: std::sync::Mutex::default(),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks.json", get(jwks))
            .route("/introspect", post(introspect))
            .with_state(Arc::clone(&state));
        Idp {
            server: LocalServer::start_tls(app, &pki.server).await,
            state,
            key,
        }
    }

    /// Active introspection answers name this sandbox.
    fn grant(&self, sandbox_id: &str) {
        *self.state.sandbox_id.lock().unwrap() = sandbox_id.to_owned();
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn jwks_args(&self) -> Vec<String> {
        vec![
            "--jwks-url".into(),
            format!("https://{}/jwks.json", self.server.addr),
        ]
    }

    fn introspection_args(&self) -> Vec<String> {
        vec![
            "--introspection-url".into(),
            format!("https://{}/introspect", self.server.addr),
            "--introspection-client-id".into(),
            INTROSPECTION_CLIENT.into(),
        ]
    }

    fn sign(&self, sandbox_id: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("private-ca-key".into());
        let claims = json!({ "sandbox_id": sandbox_id, "exp": now() + 600, "iat": now() });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn introspection_secret() -> Vec<(String, String)> {
    vec![(
        "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_SECRET".into(),
        INTROSPECTION_SECRET.into(),
    )]
}

async fn with_bearer(stack: &Stack, token: &str) -> Reply {
    let host = stack.host(3000);
    stack
        .get(&host, "/", &[("authorization", &bearer(token))])
        .await
}

/// The stack with the double's API over HTTPS (the private CA's certificate), `args` for
/// daytona-authz.
async fn https_stack(pki: &Pki, args: Vec<String>) -> Stack {
    Stack::start_with(StackOptions {
        authz: AuthzOptions {
            extra_args: args,
            env: introspection_secret(),
            ..Default::default()
        },
        double_api_tls: Some((pki.server.clone(), pki.ca_file.clone())),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daytona_jwks_and_introspection_behind_a_private_ca_need_the_ca_file() {
    let pki = pki();
    support::remember_secret(OPAQUE_TOKEN);
    support::remember_secret(INTROSPECTION_SECRET);
    let idp = Idp::start(&pki).await;
    let ca_file = pki.ca_file.to_str().unwrap().to_owned();

    // With --ca-file: Daytona's API (HTTPS), the JWKS and the introspection endpoint are all
    // reached; a token of each kind opens the sandbox.
    let mut args = vec!["--ca-file".to_owned(), ca_file];
    args.extend(idp.jwks_args());
    args.extend(idp.introspection_args());
    let stack = https_stack(&pki, args).await;
    idp.grant(stack.sandbox_id());
    assert!(
        stack.double.api_url.starts_with("https://127.0.0.1:"),
        "{}",
        stack.double.api_url
    );
    stack
        .authz
        .proc
        .logged(
            "the CA file in the start-up log",
            &["--ca-file", "certificates=1"],
        )
        .await;
    let reply = with_bearer(&stack, &stack.token(None)).await;
    assert_eq!(reply.status, 200, "HS256 token: {}", reply.body);
    let reply = with_bearer(&stack, &idp.sign(stack.sandbox_id())).await;
    assert_eq!(reply.status, 200, "JWKS token: {}", reply.body);
    let reply = with_bearer(&stack, OPAQUE_TOKEN).await;
    assert_eq!(reply.status, 200, "introspected token: {}", reply.body);
    assert_eq!(stack.double.proxy_requests().await.len(), 3);
    drop(stack);

    // Without it: the same servers are not trusted. Daytona's API: 503 (and ready only by the
    // grace); introspection: 503; the log says it is the certificate's issuer, and nothing
    // reached a sandbox or the provider's handlers.
    let before = idp.requests();
    let mut args = vec!["--ready-grace".to_owned(), "200ms".to_owned()];
    args.extend(idp.introspection_args());
    let stack = https_stack(&pki, args).await;
    idp.grant(stack.sandbox_id());
    let reply = with_bearer(&stack, &stack.token(None)).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "daytona_unavailable",
        "{}",
        reply.body
    );
    let reply = with_bearer(&stack, OPAQUE_TOKEN).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "identity_unavailable",
        "{}",
        reply.body
    );
    for (what, words) in [
        (
            "the Daytona API's certificate error",
            ["Daytona", "invalid peer certificate", "UnknownIssuer"],
        ),
        (
            "the introspection endpoint's certificate error",
            ["introspection", "invalid peer certificate", "UnknownIssuer"],
        ),
    ] {
        stack.authz.proc.logged(what, &words).await;
    }
    assert_eq!(idp.requests(), before);
    assert!(stack.double.proxy_requests().await.is_empty());
    assert_eq!(stack.double.api_calls().await, 0);

    drop(stack);

    // The JWKS: never loaded, so never ready (whatever the grace), and the log says why.
    let double = support::Double::start().await;
    let mut args = vec!["--ready-grace".to_owned(), "200ms".to_owned()];
    args.extend(idp.jwks_args());
    args.extend(double.upstream_domain_args());
    let authz = Authz::spawn(
        &double.api_url,
        &AuthzOptions {
            extra_args: args,
            ..Default::default()
        },
    )
    .await;
    // Two failed fetches (retried every second until the first success): the 200 ms grace is
    // long over, and still not ready.
    support::eventually(
        "the JWKS certificate error, twice",
        Duration::from_secs(10),
        || {
            let failures = authz
                .proc
                .stderr()
                .lines()
                .filter(|l| {
                    l.contains("JWKS")
                        && l.contains("invalid peer certificate")
                        && l.contains("UnknownIssuer")
                })
                .count();
            async move { (failures >= 2).then_some(()) }
        },
    )
    .await;
    assert!(!authz.is_ready().await, "ready without the JWKS");
    assert_eq!(idp.requests(), before);
}

// ---------------------------------------------------------------------------------------------
// Redis with TLS on (rediss://)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_shares_revocations_and_without_the_ca_file_refuses_to_start() {
    let test =
        "rediss_with_a_private_ca_shares_revocations_and_without_the_ca_file_refuses_to_start";
    let Some(bin) = optional_program("REDIS_SERVER_BIN", "redis-server", test) else {
        return;
    };
    support::remember_secret(REDIS_PASSWORD);
    let pki = pki();
    let redis = RedisServer::start_tls(bin, &pki.server, &pki.ca_file, REDIS_PASSWORD).await;
    let options = AuthzOptions {
        extra_args: vec![
            "--redis-url".into(),
            redis.url(),
            "--ca-file".into(),
            pki.ca_file.to_str().unwrap().into(),
        ],
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        Stack::start_with(options.clone()),
        Stack::start_with(options.clone())
    );
    // A token for B's sandbox, minted by A, revoked through A: B refuses it within a second.
    let mut admin_a = admin_client(&a).await;
    let link = mint_link(&mut admin_a, b.sandbox_id()).await;
    assert_eq!(with_bearer(&b, &link.token).await.status, 200);
    admin_a
        .revoke_token(authed(RevokeTokenRequest {
            jti: link.jti.clone(),
            expires_at: Some(link.expires_at),
        }))
        .await
        .expect("RevokeToken");
    let revoked = Instant::now();
    support::eventually(
        "replica B refusing a token revoked on A",
        Duration::from_secs(5),
        || {
            let b = &b;
            let token = link.token.clone();
            async move { (with_bearer(b, &token).await.status == 401).then_some(()) }
        },
    )
    .await;
    assert!(
        revoked.elapsed() < Duration::from_secs(3),
        "{:?}",
        revoked.elapsed()
    );
    drop((a, b));

    // Without --ca-file the server's certificate is not trusted: daytona-authz does not start
    // (fail closed: no replica serving without its shared revocations), and says why without
    // the password.
    let double = support::Double::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut authz = Proc::spawn(
        "daytona-authz",
        Command::new(env!("CARGO_BIN_EXE_daytona-authz"))
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--daytona-api-url", &double.api_url])
            .args(["--preview-domain", PREVIEW_DOMAIN])
            .args(["--redis-url", &redis.url()])
            .env("DAYTONA_API_KEY", API_KEY)
            .env("DAYTONA_AUTHZ_JWT_SECRET", JWT_SECRET)
            .env(
                "DAYTONA_AUTHZ_REVOCATION_DB",
                state.path().join("revocations.redb"),
            ),
    );
    let status = authz.wait_exit(Duration::from_secs(15)).await;
    assert!(!status.success(), "{status}");
    let stderr = authz.stderr();
    assert!(
        stderr.contains("revocation store")
            && stderr.contains("cannot connect")
            && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    assert!(!stderr.contains(REDIS_PASSWORD), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    drop(redis);
}
