//! Who the user is, for the app and the audit log (issue 17), end to end through a real Envoy:
//! `--forward-claim` headers as the sandbox receives them (and never a client's copy), the
//! `--assertion` JWT verified with the JWKS the HTTP port serves, and `--audit-log` lines on
//! daytona-authz's stderr.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use support::{AuthzOptions, JWT_SECRET, Stack, bearer, eventually, now, remember_secret};

/// An HS256 access token for the stack's sandbox with `extra` claims besides `sandbox_id` and
/// `exp` (remembered as a secret: no log may print it).
fn token_with(stack: &Stack, extra: Value) -> String {
    let mut claims = json!({"sandbox_id": stack.sandbox_id(), "exp": now() + 600});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    remember_secret(&token);
    token
}

/// Sends GET `path` on port 3000 with the token and `headers`; returns what the sandbox's proxy
/// received for it.
async fn reached_app(
    stack: &Stack,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> support::ProxyRequest {
    let auth = bearer(token);
    let mut all = headers.to_vec();
    all.push(("authorization", &auth));
    let before = stack.double.proxy_requests().await.len();
    let reply = stack.get(&stack.host(3000), path, &all).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let received = stack.double.proxy_requests().await;
    assert_eq!(received.len(), before + 1);
    received.last().unwrap().clone()
}

#[tokio::test]
async fn forwarded_claims_reach_the_app_and_client_copies_never_do() {
    let stack = Stack::start_with(AuthzOptions::args(&[
        "--forward-claim",
        "email=X-User-Email,groups=X-User-Groups",
        "--forward-claim",
        "level=X-User-Level",
    ]))
    .await;
    let spoofs = [
        ("x-user-email", "admin@example.com"),
        ("X-User-Email", "root@example.com"),
        ("x-user-groups", "admins"),
        ("x-user-level", "99"),
    ];

    // All three claims: the token's values, one copy each, whatever the client sent.
    let full = token_with(
        &stack,
        json!({"sub": "alice", "email": "alice@example.com", "groups": ["dev", "ops"], "level": 3}),
    );
    let request = reached_app(&stack, "/full", &full, &spoofs).await;
    assert_eq!(request.values("x-user-email"), ["alice@example.com"]);
    assert_eq!(request.values("x-user-groups"), ["dev,ops"]);
    assert_eq!(request.values("x-user-level"), ["3"]);

    // Only one claim: that one set, the client's copies of the others removed.
    let partial = token_with(&stack, json!({"sub": "bob", "email": "bob@example.com"}));
    let request = reached_app(&stack, "/partial", &partial, &spoofs).await;
    assert_eq!(request.values("x-user-email"), ["bob@example.com"]);
    assert!(request.values("x-user-groups").is_empty(), "{request:?}");
    assert!(request.values("x-user-level").is_empty(), "{request:?}");

    // None of them, and without any client copy: nothing.
    let bare = token_with(&stack, json!({"sub": "carol"}));
    let request = reached_app(&stack, "/bare", &bare, &spoofs).await;
    for name in ["x-user-email", "x-user-groups", "x-user-level"] {
        assert!(request.values(name).is_empty(), "{name}: {request:?}");
    }
    let request = reached_app(&stack, "/clean", &bare, &[]).await;
    assert!(request.values("x-user-email").is_empty());

    // A claim trying to add a header of its own is not forwarded at all.
    let injecting = token_with(
        &stack,
        json!({"email": "eve@example.com\r\nx-admin: true", "groups": [{"a": 1}]}),
    );
    let request = reached_app(&stack, "/inject", &injecting, &spoofs).await;
    assert!(request.values("x-user-email").is_empty(), "{request:?}");
    assert!(request.values("x-user-groups").is_empty(), "{request:?}");
    assert!(request.values("x-admin").is_empty(), "{request:?}");

    // The JWKS is not served without --assertion, and no audit line is written without
    // --audit-log.
    let jwks = reqwest::get(format!(
        "http://{}/.well-known/jwks.json",
        stack.authz.http_addr
    ))
    .await
    .unwrap();
    assert_eq!(jwks.status(), 404);
    assert!(audit_lines(&stack.authz.proc.stderr()).is_empty());
}

#[tokio::test]
async fn the_assertion_verifies_against_the_jwks_on_the_http_port() {
    let stack = Stack::start_with(AuthzOptions::args(&["--assertion"])).await;
    let token = token_with(
        &stack,
        json!({"sub": "alice@example.com", "jti": "link-17", "ports": [3000]}),
    );
    let request = reached_app(
        &stack,
        "/who",
        &token,
        &[("x-daytona-authz-assertion", "forged.by.client")],
    )
    .await;
    let values = request.values("x-daytona-authz-assertion");
    assert_eq!(values.len(), 1, "{request:?}");
    let assertion = values[0];
    assert_ne!(assertion, "forged.by.client");

    let jwks: JwkSet = reqwest::get(format!(
        "http://{}/.well-known/jwks.json",
        stack.authz.http_addr
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    let kid = header.kid.expect("the assertion names its key");
    let jwk = jwks.find(&kid).expect("the JWKS holds the assertion's key");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&["daytona-authz"]);
    validation.set_audience(&[stack.host(3000)]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
        .expect("the assertion verifies")
        .claims;
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["sandbox_id"], stack.sandbox_id());
    assert_eq!(claims["port"], 3000);
    assert_eq!(claims["token_jti"], "link-17");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > now() && exp - iat <= 60, "{claims}");

    // Another key (a forged assertion) does not verify against the JWKS.
    let other = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"not-the-assertion-key"),
    )
    .unwrap();
    assert!(jsonwebtoken::decode::<Value>(&other, &key, &validation).is_err());
}

/// The audit lines (JSON objects of target `daytona_authz::audit`) in `stderr`.
fn audit_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|line| line.contains("daytona_authz::audit"))
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| {
                panic!("an audit line that is not one JSON object ({e}): {line}")
            })
        })
        .filter(|line| line["target"] == "daytona_authz::audit")
        .collect()
}

#[tokio::test]
async fn every_decision_is_one_json_audit_line_without_any_credential() {
    // The default --log-format (pretty): the audit lines are JSON all the same.
    let stack = Stack::start_with(AuthzOptions::args(&["--audit-log"])).await;
    let token = token_with(&stack, json!({"sub": "alice", "jti": "audit-jti-1"}));
    reached_app(&stack, "/audit-allow?q=secret-query", &token, &[]).await;

    let other_sandbox =
        support::token_for("11111111-2222-4333-8444-555555555555", None, now() + 600);
    let denied = stack
        .get(
            &stack.host(3000),
            &format!("/audit-deny?access_token={other_sandbox}"),
            &[],
        )
        .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let preflight = stack
        .request(
            "OPTIONS",
            &stack.host(3000),
            "/audit-preflight",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ],
        )
        .await;
    assert_eq!(preflight.status, 204);

    let lines = eventually("three audit lines", Duration::from_secs(10), || {
        let lines = audit_lines(&stack.authz.proc.stderr());
        async move { (lines.len() >= 3).then_some(lines) }
    })
    .await;
    let by_path = |path: &str| {
        lines
            .iter()
            .find(|line| line["path"] == path)
            .unwrap_or_else(|| panic!("no audit line for {path}: {lines:?}"))
    };

    let allow = by_path("/audit-allow");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reason"], "ok");
    assert_eq!(allow["level"], "INFO");
    assert_eq!(allow["sub"], "alice");
    assert_eq!(allow["jti"], "audit-jti-1");
    assert_eq!(allow["sandbox"], stack.sandbox_id());
    assert_eq!(allow["port"], 3000);
    assert_eq!(allow["method"], "GET");
    assert!(allow.get("status").is_none(), "{allow}");
    for field in ["request_id", "client"] {
        assert!(
            allow[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {allow}"
        );
    }

    let deny = by_path("/audit-deny");
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["reason"], "insufficient_scope");
    assert!(
        deny["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{deny}"
    );
    assert_eq!(deny["sandbox"], stack.sandbox_id());
    assert!(deny["request_id"].as_str().is_some_and(|v| !v.is_empty()));

    let reply = by_path("/audit-preflight");
    assert_eq!(reply["decision"], "reply");
    assert_eq!(reply["reason"], "preflight");
    assert_eq!(reply["status"], 204);

    // No credential, no query string, in any audit line (the whole log is checked for every
    // token and secret when daytona-authz stops).
    for line in &lines {
        let text = line.to_string();
        for secret in [&token, &other_sandbox, &stack.double.sandbox.token] {
            assert!(!text.contains(secret.as_str()), "{text}");
        }
        assert!(
            !text.contains("secret-query") && !text.contains("access_token"),
            "{text}"
        );
    }
    support::assert_no_secret("daytona-authz", &stack.authz.proc.stderr());
    // The rest of the log stays in the format asked for.
    let listening = stack
        .authz
        .proc
        .logged("start-up line", &["daytona-authz listening"])
        .await;
    assert!(!listening.starts_with('{'), "{listening}");
}
