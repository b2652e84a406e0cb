//! One caller multiplying work for everyone (issue 14), end to end through a real Envoy on
//! 127.0.0.1: a token walking the ports of its sandbox cannot fill Envoy's DNS cache (each
//! `{port}-{sandboxId}` is a host of its own there, `max_hosts` shared by every sandbox), and
//! neither a token for a sandbox Daytona does not know nor a rate-limited API key turns each
//! request into a Daytona API call.

use std::time::Duration;

use support::pb::InvalidatePreviewTokenRequest;
use support::{
    AuthzOptions, Reply, Stack, StackOptions, admin_client, authed, bearer, eventually, host_for,
    now, parse_metrics, token_for,
};

/// Envoy's DNS cache entries in these tests: one more than a sandbox may use, so a sandbox that
/// walked every port it could still leaves room for another.
const MAX_HOSTS: u32 = 4;
/// `--max-ports-per-sandbox`.
const MAX_PORTS: u16 = 3;

async fn get(stack: &Stack, sandbox_id: &str, port: u16, token: &str, accept: &str) -> Reply {
    let authorization = bearer(token);
    stack
        .get(
            &host_for(sandbox_id, port),
            "/",
            &[("authorization", &authorization), ("accept", accept)],
        )
        .await
}

/// The `Retry-After` of a reply, in seconds.
fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {reply:?}"))
}

async fn metric(stack: &Stack, series: &str) -> f64 {
    parse_metrics(&stack.authz.metrics().await)
        .get(series)
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_token_walking_ports_cannot_fill_envoys_dns_cache_for_other_sandboxes() {
    let stack = Stack::start_with(StackOptions {
        authz: AuthzOptions::args(&["--max-ports-per-sandbox", &MAX_PORTS.to_string()]),
        envoy_max_hosts: Some(MAX_HOSTS),
        ..Default::default()
    })
    .await;
    let walker = stack.sandbox_id().to_owned();
    // A token without `ports`: every port of the sandbox.
    let any_port = token_for(&walker, None, now() + 600);
    let ports: Vec<u16> = (3000..3020).collect();
    let mut walked = Vec::new();
    for port in &ports {
        walked.push(get(&stack, &walker, *port, &any_port, "application/json").await);
    }

    // Another sandbox's first request still finds room in Envoy's DNS cache.
    let other = stack.double.create_sandbox().await;
    let token = token_for(&other.id, Some(vec![3000]), now() + 600);
    let reply = get(&stack, &other.id, 3000, &token, "application/json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["sandbox_id"], other.id.as_str());

    // The walk: the first ports open, every further one is refused with 429.
    for (i, (port, reply)) in ports.iter().zip(&walked).enumerate() {
        if i < usize::from(MAX_PORTS) {
            assert_eq!(reply.status, 200, "port {port}: {}", reply.body);
            continue;
        }
        assert_eq!(reply.status, 429, "port {port}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"], "too_many_ports", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("3 other ports"),
            "{body}"
        );
        let wait = retry_after(reply);
        assert!((1..=300).contains(&wait), "Retry-After: {wait}");
    }
    // A person in a browser gets a page saying the same.
    let page = get(&stack, &walker, 3019, &any_port, "text/html").await;
    assert_eq!(page.status, 429);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("ports"), "{}", page.body);
    // The ports already open keep working.
    let reply = get(&stack, &walker, 3000, &any_port, "application/json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Each refused port cost no Daytona API call (one call per open port, one for the other
    // sandbox).
    assert_eq!(stack.double.api_calls().await, u64::from(MAX_PORTS) + 1);
    assert_eq!(
        stack
            .envoy
            .stat("dns_cache.daytona_preview_dns.host_overflow")
            .await,
        0
    );
    assert_eq!(
        metric(
            &stack,
            "daytona_authz_decisions_total{result=\"deny\",reason=\"too_many_ports\"}"
        )
        .await,
        (ports.len() - usize::from(MAX_PORTS) + 1) as f64
    );
}

#[tokio::test]
async fn a_token_for_an_unknown_sandbox_costs_one_api_call_not_one_per_request() {
    // A minute, so nothing here depends on how fast the requests go (the unit tests in
    // src/daytona/cache.rs show the answer expiring, and a 400 kept alike).
    let stack = Stack::start_with(AuthzOptions::args(&["--negative-cache-ttl", "60s"])).await;
    // A sandbox Daytona does not know (deleted, or never there).
    let gone = "5d1c3a9e-0b7f-4e2a-8c6d-3f9e1a2b4c5d";
    let token = token_for(gone, Some(vec![3000]), now() + 600);
    let before = stack.double.api_calls().await;
    for _ in 0..20 {
        let reply = get(&stack, gone, 3000, &token, "application/json").await;
        assert_eq!(reply.status, 404, "{}", reply.body);
        assert_eq!(reply.json()["error"], "sandbox_not_found");
    }
    assert_eq!(stack.double.api_calls().await - before, 1);
    assert_eq!(
        metric(&stack, "daytona_authz_preview_cache_negative_hits_total").await,
        19.0
    );

    // Created meanwhile: still "not found" until the answer expires, or at once after
    // InvalidatePreviewToken.
    stack.double.create_sandbox_with_id(gone).await;
    let reply = get(&stack, gone, 3000, &token, "application/json").await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(stack.double.api_calls().await - before, 1);
    let mut admin = admin_client(&stack).await;
    admin
        .invalidate_preview_token(authed(InvalidatePreviewTokenRequest {
            sandbox_id: gone.to_owned(),
            port: None,
        }))
        .await
        .unwrap();
    let reply = get(&stack, gone, 3000, &token, "application/json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(stack.double.api_calls().await - before, 2);
}

#[tokio::test]
async fn a_rate_limited_api_key_makes_no_calls_until_retry_after_passes() {
    let stack = Stack::start().await;
    let sandbox = stack.sandbox_id().to_owned();
    let token = token_for(&sandbox, None, now() + 600);
    // A port whose preview token is cached before Daytona starts refusing us.
    let cached = get(&stack, &sandbox, 3000, &token, "application/json").await;
    assert_eq!(cached.status, 200, "{}", cached.body);

    // Retry-After: 1: the back-off ends on its own, and the next request goes through.
    stack.double.rate_limit(1).await;
    let refused = get(&stack, &sandbox, 3001, &token, "application/json").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(retry_after(&refused), 1);
    stack.double.fault(None).await;
    let calls = stack.double.api_calls().await;
    eventually("the back-off to end", Duration::from_secs(10), || async {
        let reply = get(&stack, &sandbox, 3001, &token, "application/json").await;
        (reply.status == 200).then_some(())
    })
    .await;
    assert_eq!(
        stack.double.api_calls().await,
        calls + 1,
        "one call once the back-off ended"
    );

    // Retry-After: 7: every look-up that would need a call is answered 503 with the time left,
    // and Daytona hears nothing from us.
    stack.double.rate_limit(7).await;
    let first = get(&stack, &sandbox, 3002, &token, "application/json").await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(first.json()["error"], "daytona_unavailable");
    assert_eq!(retry_after(&first), 7);
    let calls = stack.double.api_calls().await;
    let other = stack.double.create_sandbox().await;
    let other_token = token_for(&other.id, Some(vec![3000]), now() + 600);
    for port in [3002, 3003, 3004] {
        let reply = get(&stack, &sandbox, port, &token, "application/json").await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!((1..=7).contains(&retry_after(&reply)), "{reply:?}");
        let reply = get(&stack, &other.id, 3000, &other_token, "application/json").await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!((1..=7).contains(&retry_after(&reply)), "{reply:?}");
    }
    assert_eq!(
        stack.double.api_calls().await,
        calls,
        "no call while backing off"
    );
    // What is cached keeps being served.
    let reply = get(&stack, &sandbox, 3000, &token, "application/json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(metric(&stack, "daytona_authz_daytona_api_backoff_refusals_total").await >= 6.0);
    assert_eq!(
        metric(
            &stack,
            "daytona_authz_daytona_api_calls_total{status=\"429\"}"
        )
        .await,
        2.0
    );
}
