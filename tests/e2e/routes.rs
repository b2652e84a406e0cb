//! Per-route policy, as a platform team sets it in Envoy: the examples shipped in envoy.yaml
//! (uncommented as a person would), each `daytona_authz.*` key from a real virtual host, and two
//! preview domains served by one Envoy and one daytona-authz.

use support::{
    AuthzOptions, Claims, NAVIGATE, Stack, StackOptions, bearer, echoed_headers, now,
    parse_metrics, sign, uncommented,
};

const SECOND_DOMAIN: &str = "preview.example.org";

/// A virtual host with a typo in one of our keys (`prots`), for every port-9000 host.
const TYPO_HOST: &str = r#"
            - name: typo
              domains: ["9000-*"]
              routes: *preview_routes
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  check_settings:
                    context_extensions:
                      daytona_authz.prots: "9000"
                      other_filter.key: ignored"#;

async fn stack() -> Stack {
    let (from, examples) = uncommented("envoy/envoy.yaml", "per-route examples");
    Stack::start_with(StackOptions {
        authz: AuthzOptions::args(&[
            "--preview-domain",
            support::PREVIEW_DOMAIN,
            "--preview-domain",
            SECOND_DOMAIN,
        ]),
        envoy_edits: vec![(from, format!("{examples}{TYPO_HOST}"))],
        ..Default::default()
    })
    .await
}

fn token(stack: &Stack, aud: Option<&str>) -> String {
    sign(&Claims {
        sandbox_id: stack.sandbox_id().to_owned(),
        exp: now() + 600,
        ports: None,
        iss: None,
        aud: aud.map(str::to_owned),
    })
}

fn host_in(stack: &Stack, port: u16, domain: &str) -> String {
    format!("{port}-{}.{domain}", stack.sandbox_id())
}

#[tokio::test]
async fn the_shipped_per_route_examples_work_through_envoy() {
    let stack = stack().await;
    let plain = bearer(&token(&stack, None));

    // webhooks (`8080-*`, preview-token-only): no user token, the preview token still injected,
    // the sender's own Authorization reaches the app, our routing headers and spoofs do not.
    let reply = stack
        .request(
            "POST",
            &stack.host(8080),
            "/hook?id=1",
            &[
                ("authorization", "Signature sender-own-credential"),
                ("x-daytona-preview-token", "spoofed"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let received = stack.double.proxy_requests().await;
    assert_eq!(
        received[0].values("x-daytona-preview-token"),
        [stack.double.sandbox.token.as_str()]
    );
    assert_eq!(
        echoed_headers(&reply)["authorization"],
        ["Signature sender-own-credential"]
    );
    let line = stack
        .authz
        .proc
        .logged(
            "the preview-token-only allow",
            &["preview-token-only", "webhooks"],
        )
        .await;
    assert!(line.contains(stack.sandbox_id()), "{line}");

    // The default virtual host still needs a token for the same sandbox.
    let reply = stack.get(&stack.host(3000), "/", &[]).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = stack
        .get(&stack.host(3000), "/", &[("authorization", &plain)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // partners (the second preview domain): audience, ports and its own sign-in page.
    let partner = bearer(&token(&stack, Some("partner-portal")));
    for port in [3000, 8000, 8099] {
        let reply = stack
            .get(
                &host_in(&stack, port, SECOND_DOMAIN),
                "/",
                &[("authorization", &partner)],
            )
            .await;
        assert_eq!(reply.status, 200, "port {port}: {}", reply.body);
    }
    let reply = stack
        .get(
            &host_in(&stack, 3000, SECOND_DOMAIN),
            "/",
            &[("authorization", &plain)],
        )
        .await;
    assert_eq!(
        reply.status, 401,
        "no partner-portal audience: {}",
        reply.body
    );
    let reply = stack
        .get(
            &host_in(&stack, 4000, SECOND_DOMAIN),
            "/",
            &[("authorization", &partner)],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "port_not_served");
    let reply = stack
        .get(&host_in(&stack, 3000, SECOND_DOMAIN), "/app", &NAVIGATE)
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let location = reply.header("location").unwrap();
    assert!(
        location.starts_with("https://login.example.org/start?return_to=http%3A%2F%2F3000-"),
        "{location}"
    );

    // Port 8080 under the partners domain: the partners virtual host (`*.suffix` beats
    // `prefix-*`), so no token-less access there; its audience still applies.
    let partners_8080 = host_in(&stack, 8080, SECOND_DOMAIN);
    assert_eq!(stack.get(&partners_8080, "/", &[]).await.status, 401);
    let reply = stack
        .get(&partners_8080, "/", &[("authorization", &plain)])
        .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = stack
        .get(&partners_8080, "/", &[("authorization", &partner)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A typo in one of our keys: 500 for every request of that virtual host, and a log line
    // naming the key, token or not.
    for headers in [vec![], vec![("authorization", plain.as_str())]] {
        let reply = stack.get(&stack.host(9000), "/", &headers).await;
        assert_eq!(reply.status, 500, "{}", reply.body);
        assert_eq!(reply.json()["error"], "route_misconfigured");
        assert!(!reply.body.contains("prots"), "internals stay in the log");
    }
    stack
        .authz
        .proc
        .logged(
            "the route error",
            &["daytona_authz.prots", "context_extensions"],
        )
        .await;

    // Named routes are counted by name.
    let metrics = parse_metrics(&stack.authz.metrics().await);
    let allowed = |route: &str| {
        metrics
            .get(&format!(
                "daytona_authz_route_decisions_total{{route=\"{route}\",result=\"allow\",reason=\"ok\"}}"
            ))
            .copied()
    };
    assert_eq!(allowed("webhooks"), Some(1.0), "{metrics:?}");
    assert_eq!(allowed("partners"), Some(4.0), "{metrics:?}");
}

#[tokio::test]
async fn one_deployment_serves_two_preview_domains() {
    let stack = stack().await;
    let plain = bearer(&token(&stack, None));
    // A domain without per-route settings of its own besides the default (`*`) virtual host:
    // preview.test; and preview.example.org through its own virtual host.
    let reply = stack
        .get(&stack.host(3000), "/one", &[("authorization", &plain)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let partner = bearer(&token(&stack, Some("partner-portal")));
    let reply = stack
        .get(
            &host_in(&stack, 3000, SECOND_DOMAIN),
            "/two",
            &[("authorization", &partner)],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/two");
    // Both reached the same sandbox port through Daytona, one preview-token look-up between them.
    assert_eq!(stack.double.api_calls().await, 1);
    // Any other domain is refused, whatever the token.
    let reply = stack
        .get(
            &host_in(&stack, 3000, "preview.example.net"),
            "/",
            &[("authorization", &plain)],
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    // A share link opened on the second domain turns into a cookie for that host only.
    let link = token(&stack, Some("partner-portal"));
    let reply = stack
        .get(
            &host_in(&stack, 3000, SECOND_DOMAIN),
            &format!("/?access_token={link}"),
            &NAVIGATE,
        )
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let cookie = reply.header("set-cookie").unwrap();
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
}
