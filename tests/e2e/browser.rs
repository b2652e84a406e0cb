//! Shareable links in a browser, through a real Envoy: link → cookie, cookie-authenticated
//! follow-ups, pages, sign-in redirects, WebSockets, server-sent events, large bodies, CORS
//! preflights, `mint`, secret rotation.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{
    AuthzOptions, Claims, JWT_SECRET, NAVIGATE, Reply, Signer, Stack, echoed_headers, now,
    token_for,
};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// `name=value` of the first `Set-Cookie` for `name`, and its attributes.
fn set_cookie<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

fn cookie_pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

#[tokio::test]
async fn a_share_link_becomes_a_cookie_that_authenticates_follow_ups() {
    let stack = Stack::start().await;
    let exp = now() + 900;
    let token = token_for(stack.sandbox_id(), Some(vec![3000]), exp);
    let reply = stack
        .get(
            &stack.host(3000),
            &format!("/app?tab=2&access_token={token}"),
            &NAVIGATE,
        )
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/app?tab=2"));
    let cookie = set_cookie(&reply, "daytona_authz").expect("Set-Cookie");
    let attributes: Vec<&str> = cookie.split("; ").collect();
    assert_eq!(attributes[0], format!("daytona_authz={token}"));
    for expected in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(attributes.contains(&expected), "{cookie}");
    }
    assert!(!cookie.contains("Domain="), "host-only: {cookie}");
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let max_age: u64 = attributes
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age <= 900 && max_age > 800, "{max_age}");
    assert_eq!(
        stack.double.api_calls().await,
        0,
        "the redirect needs no Daytona call"
    );

    // The follow-up carries the cookie (and the app's own cookie), as a browser would.
    let cookies = format!("theme=dark; {}; session=app-1", cookie_pair(cookie));
    let mut headers = NAVIGATE.to_vec();
    headers.push(("cookie", &cookies));
    let reply = stack.get(&stack.host(3000), "/app?tab=2", &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = echoed_headers(&reply);
    assert_eq!(seen["cookie"], ["theme=dark; session=app-1"]);
    let received = stack.double.proxy_requests().await;
    assert!(
        received[0]
            .values("cookie")
            .iter()
            .all(|c| !c.contains("daytona_authz")),
        "{:?}",
        received[0]
    );
    assert!(!received[0].path.contains("access_token"));

    // A script's request with only our cookie: the Cookie header disappears entirely.
    let only_ours = cookie_pair(cookie).to_owned();
    let reply = stack
        .get(&stack.host(3000), "/api", &[("cookie", only_ours.as_str())])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!echoed_headers(&reply).contains_key("cookie"));
}

#[tokio::test]
async fn curl_with_a_query_token_is_forwarded_not_redirected() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let reply = stack
        .get(
            &stack.host(3000),
            &format!("/x?access_token={token}"),
            &[("accept", "*/*")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/x");
    assert!(set_cookie(&reply, "daytona_authz").is_none());
}

#[tokio::test]
async fn an_expired_cookie_gets_a_page_in_a_browser_and_json_in_curl() {
    let stack = Stack::start().await;
    let expired = token_for(stack.sandbox_id(), None, now() - 3600);
    let cookie = format!("daytona_authz={expired}");
    let mut browser = NAVIGATE.to_vec();
    browser.push(("cookie", &cookie));
    let reply = stack.get(&stack.host(3000), "/", &browser).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        reply.body.contains("<title>401 Sign-in needed</title>"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("expired"));
    assert!(!reply.body.contains(&expired));
    assert_eq!(
        set_cookie(&reply, "daytona_authz"),
        Some("daytona_authz=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"),
        "the dead cookie is cleared"
    );

    let reply = stack
        .get(&stack.host(3000), "/", &[("cookie", &cookie)])
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"], "invalid_token");
    assert!(stack.double.proxy_requests().await.is_empty());
}

#[tokio::test]
async fn pages_for_other_denials_are_self_contained() {
    let stack = Stack::start().await;
    let other = token_for("11111111-2222-4333-8444-555555555555", None, now() + 60);
    let cookie = format!("daytona_authz={other}");
    let mut browser = NAVIGATE.to_vec();
    browser.push(("cookie", &cookie));
    let reply = stack.get(&stack.host(3000), "/", &browser).await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("No access"));
    for external in ["src=", "href=", "<script", "http://", "https://"] {
        assert!(
            !reply.body.contains(external),
            "{external} in {}",
            reply.body
        );
    }
}

#[tokio::test]
async fn with_a_login_url_browsers_go_to_sign_in_and_scripts_get_401() {
    let stack = Stack::start_with(AuthzOptions::args(&[
        "--login-url",
        "https://login.example.com/signin?app=previews",
    ]))
    .await;
    let reply = stack
        .get(
            &stack.host(3000),
            "/deep/page?q=1&access_token=not-a-token",
            &NAVIGATE,
        )
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let location = url::Url::parse(reply.header("location").unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("login.example.com"));
    let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        [
            ("app".to_owned(), "previews".to_owned()),
            (
                "return_to".to_owned(),
                format!("http://{}/deep/page?q=1", stack.host(3000))
            ),
        ]
    );
    let reply = stack
        .get(&stack.host(3000), "/", &[("accept", "*/*")])
        .await;
    assert_eq!(reply.status, 401);
}

async fn websocket(
    stack: &Stack,
    path: &str,
    cookie: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let mut request = format!("ws://127.0.0.1:{}{path}", stack.envoy.port)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("host", stack.host(3000).parse().unwrap());
    headers.insert(
        "origin",
        format!("http://{}", stack.host(3000)).parse().unwrap(),
    );
    if let Some(cookie) = cookie {
        headers.insert("cookie", cookie.parse().unwrap());
    }
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("upgrade answered in time")?;
    Ok(socket)
}

async fn assert_echoes(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    for text in ["hello", "second message"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn websockets_work_with_a_cookie_or_a_query_token_and_not_without() {
    let stack = Stack::start().await;
    let token = stack.token(Some(vec![3000]));
    let cookie = format!("daytona_authz={token}");
    assert_echoes(websocket(&stack, "/ws", Some(&cookie)).await.unwrap()).await;
    assert_echoes(
        websocket(&stack, &format!("/ws?access_token={token}"), None)
            .await
            .unwrap(),
    )
    .await;

    match websocket(&stack, "/ws", None).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401, "never a redirect");
        }
        other => panic!(
            "unauthenticated upgrade was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // The two authenticated upgrades reached Daytona with the preview token, without ours.
    let received = stack.double.proxy_requests().await;
    assert_eq!(received.len(), 2);
    for request in &received {
        assert_eq!(request.values("upgrade"), ["websocket"]);
        assert_eq!(
            request.values("x-daytona-preview-token"),
            [stack.double.sandbox.token.as_str()]
        );
        assert!(request.values("cookie").is_empty());
        assert!(!request.path.contains("access_token"));
    }
}

#[tokio::test]
async fn server_sent_events_arrive_in_full() {
    let stack = Stack::start().await;
    let auth = format!("Bearer {}", stack.token(None));
    let reply = stack
        .get(
            &stack.host(3000),
            "/sse?n=50",
            &[("authorization", &auth), ("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let events: Vec<&str> = reply
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let expected: Vec<String> = (1..=50).map(|i| format!("event-{i}")).collect();
    assert_eq!(events, expected);
}

#[tokio::test]
async fn a_one_mebibyte_post_arrives_intact() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/upload", stack.envoy.port))
        .header("host", stack.host(3000))
        .header("authorization", format!("Bearer {token}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let echo: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 1024 * 1024);
    assert_eq!(echo["body_fnv1a64"], format!("{:016x}", fnv1a64(&body)));
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[tokio::test]
async fn cors_preflights_are_answered_at_the_edge() {
    let stack = Stack::start().await;
    let reply = stack
        .request(
            "OPTIONS",
            &stack.host(3000),
            "/api/items",
            &[
                ("origin", "http://localhost:5173"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type, x-app"),
            ],
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(reply.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("content-type, x-app")
    );
    assert_eq!(stack.double.api_calls().await, 0);
    assert!(
        stack.double.proxy_requests().await.is_empty(),
        "nothing unauthenticated went on"
    );
}

#[tokio::test]
async fn disable_cors_hands_cors_to_the_app() {
    let stack = Stack::start_with(AuthzOptions::args(&["--disable-cors"])).await;
    let auth = format!("Bearer {}", stack.token(None));
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[
                ("authorization", &auth),
                ("origin", "http://localhost:5173"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    // Daytona's proxy reflects the origin unless told not to.
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let received = stack.double.proxy_requests().await;
    assert_eq!(received[0].values("x-daytona-disable-cors"), ["true"]);

    // Preflights: the edge no longer approves any origin. The sandbox's own pages (any port)
    // are approved; a page elsewhere gets 403, so the browser never sends the actual request
    // (and nothing unauthenticated reaches the sandbox, nor costs a Daytona call).
    let preflight = |origin: String| {
        let stack = &stack;
        async move {
            stack
                .request(
                    "OPTIONS",
                    &stack.host(3000),
                    "/api/items",
                    &[
                        ("origin", origin.as_str()),
                        ("access-control-request-method", "PUT"),
                    ],
                )
                .await
        }
    };
    let own = format!("http://{}:{}", stack.host(8080), stack.envoy.port);
    let reply = preflight(own.clone()).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some(own.as_str())
    );
    let reply = preflight("http://localhost:5173".into()).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(reply.json()["error"], "cors_origin_refused");
    assert_eq!(stack.double.proxy_requests().await.len(), 1, "only the GET");
    let calls = stack.double.api_calls().await;
    let reply = preflight(format!(
        "http://{}",
        stack
            .host(3000)
            .replace(stack.sandbox_id(), "11111111-2222-4333-8444-555555555555")
    ))
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        stack.double.api_calls().await,
        calls,
        "a preflight costs no Daytona call"
    );
}

#[tokio::test]
async fn cors_allow_origin_approves_only_the_listed_origins() {
    for extra in [&[][..], &["--disable-cors"][..]] {
        let mut args = vec!["--cors-allow-origin", "https://app.example.com"];
        args.extend_from_slice(extra);
        let stack = Stack::start_with(AuthzOptions::args(&args)).await;
        let preflight = |origin: &'static str| {
            let stack = &stack;
            async move {
                stack
                    .request(
                        "OPTIONS",
                        &stack.host(3000),
                        "/api",
                        &[("origin", origin), ("access-control-request-method", "PUT")],
                    )
                    .await
            }
        };
        let reply = preflight("https://app.example.com").await;
        assert_eq!(reply.status, 204, "{extra:?}: {}", reply.body);
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        for origin in ["https://evil.example.com", "null", "http://app.example.com"] {
            let reply = preflight(origin).await;
            assert_eq!(reply.status, 403, "{extra:?} {origin}: {}", reply.body);
            assert_eq!(reply.header("access-control-allow-origin"), None);
        }
        assert!(stack.double.proxy_requests().await.is_empty());
    }
}

#[tokio::test]
async fn a_minted_link_works_end_to_end() {
    let stack = Stack::start().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_daytona-authz"))
        .args([
            "mint",
            "--sandbox",
            stack.sandbox_id(),
            "--port",
            "3000",
            "--ttl",
            "5m",
        ])
        .args(["--base-url", "http://{port}-{id}.preview.test/"])
        .env("DAYTONA_AUTHZ_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let link = String::from_utf8(output.stdout).unwrap();
    let link = url::Url::parse(link.lines().next().unwrap()).unwrap();
    let path = format!("{}?{}", link.path(), link.query().unwrap());
    let reply = stack.get(link.host_str().unwrap(), &path, &NAVIGATE).await;
    assert_eq!(reply.status, 302);
    let cookie = cookie_pair(set_cookie(&reply, "daytona_authz").unwrap()).to_owned();
    let mut headers = NAVIGATE.to_vec();
    headers.push(("cookie", &cookie));
    let reply = stack
        .get(
            link.host_str().unwrap(),
            reply.header("location").unwrap(),
            &headers,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["sandbox_id"], stack.sandbox_id());
}

#[tokio::test]
async fn links_signed_with_the_previous_secret_work_during_rotation() {
    const PREVIOUS: &str = "the-previous-secret-0123456789abcdef";
    let stack = Stack::start_with(AuthzOptions::args(&["--jwt-previous-secret", PREVIOUS])).await;
    let claims = Claims {
        sandbox_id: stack.sandbox_id().to_owned(),
        exp: now() + 600,
        ports: None,
        iss: None,
        aud: None,
    };
    for (secret, status) in [
        (PREVIOUS, 200),
        (JWT_SECRET, 200),
        ("a-third-secret-nobody-trusts-0123456789", 401),
    ] {
        let token = Signer::hs256(secret.as_bytes()).sign(&claims).unwrap();
        let reply = stack
            .get(&stack.host(3000), &format!("/?access_token={token}"), &[])
            .await;
        assert_eq!(reply.status, status, "{secret}: {}", reply.body);
    }
}
