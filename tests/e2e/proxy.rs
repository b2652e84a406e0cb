//! End to end through a real Envoy: curl-like requests to Envoy's listener, daytona-authz deciding,
//! the Daytona double standing in for Daytona's API and preview proxy.

use std::time::Duration;

use support::{AuthzOptions, Claims, Stack, echoed_headers, host_for, now, token_for};

fn assert_no_secret(body: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!body.contains(secret), "body echoes a secret: {body}");
    }
}

#[tokio::test]
async fn a_valid_bearer_token_reaches_the_sandbox_with_the_preview_token() {
    let stack = Stack::start().await;
    let token = stack.token(Some(vec![3000]));
    let reply = stack
        .get(
            &stack.host(3000),
            "/hello?x=1",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.json();
    assert_eq!(echo["sandbox_id"], stack.sandbox_id());
    assert_eq!(echo["path"], "/hello?x=1");
    let seen = echoed_headers(&reply);
    assert!(!seen.contains_key("authorization"), "{seen:?}");

    // What Daytona's proxy received: exactly one preview token, the right one.
    let received = stack.double.proxy_requests().await;
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(
        request.values("x-daytona-preview-token"),
        [stack.double.sandbox.token.as_str()]
    );
    assert_eq!(request.values("x-daytona-skip-preview-warning"), ["true"]);
    assert!(request.values("authorization").is_empty());
    assert!(request.values("x-daytona-authz-upstream").is_empty());
    assert!(request.values("x-daytona-authz-upstream-scheme").is_empty());
    assert_eq!(
        request.host,
        format!(
            "3000-{}.proxy.localhost:{}",
            stack.sandbox_id(),
            stack.double.proxy_port
        )
    );
    assert_eq!(stack.double.api_calls().await, 1);
}

#[tokio::test]
async fn a_query_token_is_accepted_and_removed() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let reply = stack
        .get(
            &stack.host(8080),
            &format!("/page?a=1&access_token={token}&b=2"),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/page?a=1&b=2");
    let received = stack.double.proxy_requests().await;
    assert!(
        !received[0].path.contains("access_token"),
        "{:?}",
        received[0]
    );
    assert!(!received[0].path.contains(&token));
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_challenge_and_never_call_daytona() {
    let stack = Stack::start().await;
    let id = stack.sandbox_id().to_owned();
    let good = stack.token(None);
    let expired = token_for(&id, None, now() - 3600);
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let wrong_key = support::Signer::hs256(b"some-other-secret-some-other-secret")
        .sign(&Claims {
            sandbox_id: id.clone(),
            exp: now() + 600,
            ports: None,
            iss: None,
            aud: None,
        })
        .unwrap();
    let (_, body, _) = {
        let mut parts = good.splitn(3, '.');
        (parts.next(), parts.next().unwrap(), parts.next())
    };
    // {"alg":"none","typ":"JWT"}, base64url, with the good token's claims and no signature.
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");

    // (case, headers, request target)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String);
    let cases: Vec<Case> = vec![
        ("missing", vec![], "/".into()),
        (
            "expired",
            vec![("authorization", format!("Bearer {expired}"))],
            "/".into(),
        ),
        (
            "tampered",
            vec![("authorization", format!("Bearer {tampered}"))],
            "/".into(),
        ),
        ("wrong key", vec![], format!("/?access_token={wrong_key}")),
        (
            "alg none",
            vec![("authorization", format!("Bearer {alg_none}"))],
            "/".into(),
        ),
        (
            "garbage",
            vec![("authorization", "Bearer not-a-jwt".into())],
            "/".into(),
        ),
    ];
    for (name, headers, path) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = stack.get(&stack.host(3000), path, &headers).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Bearer realm="daytona-authz", error="invalid_token""#),
            "{name}"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{name}"
        );
        assert_eq!(reply.json()["error"], "invalid_token", "{name}");
        assert!(reply.json()["message"].is_string(), "{name}");
        assert_no_secret(
            &reply.body,
            &[&expired, &tampered, &wrong_key, &alg_none, &good],
        );
    }
    assert_eq!(
        stack.double.api_calls().await,
        0,
        "a bad token reached Daytona's API"
    );
    assert!(
        stack.double.proxy_requests().await.is_empty(),
        "a bad token reached the sandbox"
    );
}

#[tokio::test]
async fn tokens_for_another_sandbox_or_port_get_403() {
    let stack = Stack::start().await;
    let other = token_for("11111111-2222-4333-8444-555555555555", None, now() + 600);
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &format!("Bearer {other}"))],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "insufficient_scope");

    let port_3000 = stack.token(Some(vec![3000]));
    let reply = stack
        .get(
            &stack.host(3001),
            &format!("/?access_token={port_3000}"),
            &[],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(stack.double.api_calls().await, 0);
    assert!(stack.double.proxy_requests().await.is_empty());
}

#[tokio::test]
async fn malformed_hosts_get_400() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let auth = format!("Bearer {token}");
    let id = stack.sandbox_id().to_owned();
    for host in [
        "preview.test".to_owned(),
        format!("3000-{id}.preview.test.evil.com"),
        format!("2000-{id}.preview.test"),
        "3000-not-a-sandbox.preview.test".to_owned(),
        format!("03000-{id}.preview.test"),
        "127.0.0.1".to_owned(),
    ] {
        let reply = stack.get(&host, "/", &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 400, "{host}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_host", "{host}");
    }
    assert_eq!(stack.double.api_calls().await, 0);
}

#[tokio::test]
async fn an_unknown_sandbox_gets_404() {
    let stack = Stack::start().await;
    let unknown = "99999999-2222-4333-8444-555555555555";
    let token = token_for(unknown, None, now() + 600);
    let reply = stack
        .get(
            &host_for(unknown, 3000),
            "/",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.json()["error"], "sandbox_not_found");
    assert!(stack.double.proxy_requests().await.is_empty());
}

#[tokio::test]
async fn spoofed_daytona_headers_never_reach_upstream() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("X-Daytona-Preview-Token", "spoofed-token"),
                ("x-daytona-skip-preview-warning", "false"),
                ("X-Daytona-Disable-CORS", "true"),
                ("x-daytona-authz-upstream", "127.0.0.1:1"),
                ("x-daytona-authz-upstream-scheme", "http"),
                ("x-daytona-anything", "x"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let received = stack.double.proxy_requests().await;
    let request = &received[0];
    assert_eq!(
        request.values("x-daytona-preview-token"),
        [stack.double.sandbox.token.as_str()]
    );
    assert_eq!(request.values("x-daytona-skip-preview-warning"), ["true"]);
    for name in [
        "x-daytona-disable-cors",
        "x-daytona-authz-upstream",
        "x-daytona-authz-upstream-scheme",
        "x-daytona-anything",
    ] {
        assert!(
            request.values(name).is_empty(),
            "{name} reached upstream: {request:?}"
        );
    }
}

#[tokio::test]
async fn daytona_api_failures_become_502_and_503() {
    let stack = Stack::start().await;
    let auth = format!("Bearer {}", stack.token(None));
    let auth = [("authorization", auth.as_str())];

    stack.double.fault(Some(503)).await;
    let reply = stack.get(&stack.host(3000), "/", &auth).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.header("retry-after").is_some());

    stack.double.fault(Some(401)).await;
    let reply = stack.get(&stack.host(3000), "/", &auth).await;
    assert_eq!(reply.status, 502, "{}", reply.body);

    // Last: a 429 also stops our calls for its Retry-After (tests/e2e/abuse.rs).
    stack.double.rate_limit(1).await;
    let reply = stack.get(&stack.host(3000), "/", &auth).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));

    // Failures were not cached: once Daytona answers (and its Retry-After passed), the request
    // goes through.
    stack.double.fault(None).await;
    let reply = support::eventually(
        "Daytona to answer again",
        Duration::from_secs(10),
        || async {
            let reply = stack.get(&stack.host(3000), "/", &auth).await;
            (reply.status == 200).then_some(reply)
        },
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(stack.double.proxy_requests().await.len(), 1);
}

#[tokio::test]
async fn an_unreachable_daytona_api_gives_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_url = format!("http://{}/api", closed.local_addr().unwrap());
    drop(closed);
    let stack = Stack::start_with(AuthzOptions {
        api_url: Some(api_url),
        // Never answered: ready only once the grace has passed (Envoy health-checks authz).
        extra_args: vec!["--ready-grace".into(), "200ms".into()],
        ..Default::default()
    })
    .await;
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &format!("Bearer {}", stack.token(None)))],
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(reply.json()["error"], "daytona_unavailable");
    assert!(stack.double.proxy_requests().await.is_empty());
}

#[tokio::test]
async fn a_slow_daytona_api_gives_503_once_the_timeout_fires() {
    let stack = Stack::start_with(AuthzOptions::args(&["--daytona-api-timeout", "300ms"])).await;
    stack.double.delay(Duration::from_secs(5)).await;
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &format!("Bearer {}", stack.token(None)))],
        )
        .await;
    // From daytona-authz (JSON, Retry-After), not Envoy's own 6 s ext_authz timeout.
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "daytona_unavailable");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(stack.double.proxy_requests().await.is_empty());
}

#[tokio::test]
async fn with_authz_stopped_envoy_forwards_nothing() {
    let mut stack = Stack::start().await;
    let auth = format!("Bearer {}", stack.token(None));
    stack.authz.proc.kill();
    let reply = stack
        .get(&stack.host(3000), "/", &[("authorization", &auth)])
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(stack.double.proxy_requests().await.is_empty());
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_make_one_api_call() {
    let stack = Stack::start().await;
    let auth = format!("Bearer {}", stack.token(None));
    let host = stack.host(3000);
    let headers = [("authorization", auth.as_str())];
    let replies =
        futures_util::future::join_all((0..50).map(|_| stack.get(&host, "/", &headers))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(stack.double.api_calls().await, 1);
}

#[tokio::test]
async fn a_rotated_preview_token_is_picked_up_within_the_cache_ttl() {
    let stack = Stack::start_with(AuthzOptions::args(&["--cache-ttl", "1s"])).await;
    let auth = format!("Bearer {}", stack.token(None));
    let host = stack.host(3000);
    let auth = [("authorization", auth.as_str())];
    assert_eq!(stack.get(&host, "/", &auth).await.status, 200);

    let restarted = stack.double.restart(stack.sandbox_id()).await;
    assert_ne!(restarted.token, stack.double.sandbox.token);
    support::eventually("the new preview token", Duration::from_secs(15), || async {
        (stack.get(&host, "/", &auth).await.status == 200 && stack.double.api_calls().await >= 2)
            .then_some(())
    })
    .await;
    let received = stack.double.proxy_requests().await;
    assert_eq!(
        received.last().unwrap().values("x-daytona-preview-token"),
        [restarted.token.as_str()]
    );
}

#[tokio::test]
async fn a_preview_url_outside_the_upstream_domains_is_never_forwarded() {
    // The double answers http://3000-<id>.proxy.localhost:<port>; only other.localhost is allowed.
    let stack = Stack::start_with(AuthzOptions::args(&[
        "--upstream-domain",
        "other.localhost",
    ]))
    .await;
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &format!("Bearer {}", stack.token(None)))],
        )
        .await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.json()["error"], "bad_gateway");
    assert!(stack.double.proxy_requests().await.is_empty());
    // Logged as it refused (the log reaches the test a moment later).
    stack
        .authz
        .proc
        .logged(
            "the refusal in the log",
            &["not under an allowed --upstream-domain"],
        )
        .await;
}
