//! TLS at the edge, both supported ways, through real Envoys with certificates made here:
//!
//! - Envoy ends TLS itself (`envoy/envoy-tls.yaml`, certificate files through SDS, reloaded
//!   when they are replaced);
//! - a proxy in front ends TLS (`envoy/envoy-behind-proxy.yaml`, one trusted hop), played by a
//!   second Envoy that ends TLS and forwards to the edge Envoy, as a load balancer does.
//!
//! In both, a share link's cookie gets `Secure` and a sign-in redirect's `return_to` is
//! `https://`; on the plain-HTTP edge (`envoy/envoy.yaml`) no client can claim https, whether by
//! `X-Forwarded-Proto`, an absolute `https://` request target or HTTP/2's `:scheme`.
//! tests/e2e/chromium.rs has the `__Host-` cookie in a real browser over both.

use std::time::Duration;

use support::{
    AuthzOptions, Edge, EdgeCertificate, FrontProxy, Reply, Stack, StackOptions, TestCa,
    edge_variant, https_client, https_get, now, repo_root, token_for,
};

const LOGIN: &str = "https://login.example/signin";
const HTML: (&str, &str) = ("accept", "text/html");
/// The preview hosts the edge certificate covers.
const WILDCARD: &str = "*.preview.test";

fn login_options() -> AuthzOptions {
    AuthzOptions::args(&["--login-url", LOGIN])
}

/// The `return_to` a sign-in redirect carries, decoded.
fn return_to(reply: &Reply) -> String {
    assert_eq!(reply.status, 302, "{reply:?}");
    let location = url::Url::parse(reply.header("location").expect("location")).unwrap();
    assert!(location.as_str().starts_with(LOGIN), "{location}");
    location
        .query_pairs()
        .find(|(k, _)| k == "return_to")
        .map(|(_, v)| v.into_owned())
        .expect("return_to")
}

/// The share-link cookie a link-to-cookie redirect set.
fn link_cookie(reply: &Reply) -> String {
    assert_eq!(reply.status, 302, "{reply:?}");
    reply.header("set-cookie").expect("set-cookie").to_owned()
}

fn is_secure(cookie: &str) -> bool {
    cookie
        .split(';')
        .any(|a| a.trim().eq_ignore_ascii_case("secure"))
}

#[test]
fn shipped_variants_are_envoy_yaml_with_their_documented_changes() {
    let base = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    let update = std::env::var_os("UPDATE_ENVOY_VARIANTS").is_some();
    let sso = Edge::Sso {
        certificate: Default::default(),
        oauth: Default::default(),
        port: 0,
    };
    for edge in [Edge::BehindProxy, Edge::Tls(Default::default()), sso] {
        let path = repo_root().join(edge.config_file());
        let expected = edge_variant(&base, &edge);
        if update {
            std::fs::write(&path, &expected).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == expected,
            "{} is not envoy/envoy.yaml's variant: regenerate it with \
             UPDATE_ENVOY_VARIANTS=1 cargo test --test e2e edge_tls::shipped_variants",
            path.display()
        );
    }
    // The Kubernetes ConfigMap copy and the deployment docs name these paths.
    let tls = std::fs::read_to_string(repo_root().join("envoy/envoy-tls.yaml")).unwrap();
    assert!(tls.contains("path: /etc/envoy/sds/edge-certificate.yaml"));
    let behind =
        std::fs::read_to_string(repo_root().join("envoy/envoy-behind-proxy.yaml")).unwrap();
    assert!(behind.contains("xff_num_trusted_hops: 1\n"));
    assert!(base.contains("xff_num_trusted_hops: 0\n"));
    // envoy-sso.yaml is envoy-tls.yaml with the OAuth2 filter before ext_authz.
    let sso = std::fs::read_to_string(repo_root().join("envoy/envoy-sso.yaml")).unwrap();
    let oauth2 = sso.find("- name: envoy.filters.http.oauth2").unwrap();
    let ext_authz = sso.find("- name: envoy.filters.http.ext_authz").unwrap();
    assert!(oauth2 < ext_authz);
    assert!(sso.contains("path: /etc/envoy/sds/edge-certificate.yaml"));
    assert!(sso.contains("path: /etc/envoy/sds/oauth-hmac-secret.yaml"));
    // Its pass-through matcher names daytona-authz's default cookie.
    assert!(sso.contains(r#"safe_regex: { regex: "(.*[;,] *)?daytona_authz=.*" }"#));
    // The filter adds no ambient `Authorization: Bearer <access token>` to signed-in requests.
    assert!(sso.contains("forward_bearer_token: false\n"));
    assert!(!sso.contains("forward_bearer_token: true"));
}

/// A stack whose Envoy ends TLS with a `*.preview.test` certificate from `ca`.
async fn tls_stack(ca: &TestCa, authz: AuthzOptions) -> (Stack, EdgeCertificate) {
    let (cert, key) = ca.leaf(&[WILDCARD]);
    let certificate = EdgeCertificate::new(&cert, &key);
    let stack = Stack::start_with(StackOptions {
        authz,
        edge: Edge::Tls(certificate.dir()),
        ..Default::default()
    })
    .await;
    (stack, certificate)
}

#[tokio::test]
async fn envoy_ended_tls_gives_secure_cookies_and_https_return_to() {
    let ca = TestCa::new("edge test CA");
    let (stack, _certificate) = tls_stack(&ca, login_options()).await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let client = https_client(&ca.pem(), &host, port);
    let token = token_for(stack.sandbox_id(), Some(vec![3000]), now() + 600);

    // A share link opened in a browser: the cookie is Secure. A client's own
    // X-Forwarded-Proto: http changes nothing (Envoy replaces it with the connection's).
    for claimed in [None, Some("http")] {
        let mut headers = vec![HTML];
        headers.extend(claimed.map(|p| ("x-forwarded-proto", p)));
        let path = format!("/page?x=1&access_token={token}");
        let reply = https_get(&client, &host, port, &path, &headers)
            .await
            .unwrap();
        let cookie = link_cookie(&reply);
        assert!(is_secure(&cookie), "{cookie}");
        assert_eq!(reply.header("location"), Some("/page?x=1"));
    }

    // The cookie alone reaches the sandbox, over TLS.
    let cookie = format!("daytona_authz={token}");
    let reply = https_get(&client, &host, port, "/page", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    // No token: the sign-in page is asked to send the browser back to https.
    let reply = https_get(&client, &host, port, "/page?x=1", &[HTML])
        .await
        .unwrap();
    assert_eq!(return_to(&reply), format!("https://{host}:{port}/page?x=1"));
}

#[tokio::test]
async fn envoy_ended_tls_serves_a_replaced_certificate_without_a_restart() {
    let old_ca = TestCa::new("old edge CA");
    let (stack, mut certificate) = tls_stack(&old_ca, AuthzOptions::default()).await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let token = token_for(stack.sandbox_id(), Some(vec![3000]), now() + 600);
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let old = https_client(&old_ca.pem(), &host, port);
    let reply = https_get(&old, &host, port, "/", &headers).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    // Rotate, as a Kubernetes Secret update does (the `..data` symlink swapped by a rename).
    let new_ca = TestCa::new("new edge CA");
    let (cert, key) = new_ca.leaf(&[WILDCARD]);
    certificate.replace(&cert, &key);

    // Fresh clients (no pooled connection) until one trusting only the new CA gets through.
    let reply = support::eventually(
        "Envoy to serve the new certificate",
        Duration::from_secs(20),
        || {
            let client = https_client(&new_ca.pem(), &host, port);
            let host = host.clone();
            async move { https_get(&client, &host, port, "/", &headers).await.ok() }
        },
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // ...and the old certificate is gone: a client trusting only the old CA is refused.
    let old = https_client(&old_ca.pem(), &host, port);
    let refused = https_get(&old, &host, port, "/", &headers).await;
    assert!(
        refused.is_err(),
        "old certificate still served: {refused:?}"
    );
    assert!(
        stack
            .envoy
            .proc
            .stderr()
            .lines()
            .all(|l| !l.contains("critical"))
    );
}

#[tokio::test]
async fn a_tls_ending_proxy_in_front_is_believed_through_its_trusted_hop() {
    let ca = TestCa::new("load balancer CA");
    let (cert, key) = ca.leaf(&[WILDCARD]);
    let certificate = EdgeCertificate::new(&cert, &key);
    let stack = Stack::start_with(StackOptions {
        authz: login_options(),
        edge: Edge::BehindProxy,
        ..Default::default()
    })
    .await;
    let front = FrontProxy::start(stack.envoy.port, &certificate).await;
    let host = stack.host(3000);
    let client = https_client(&ca.pem(), &host, front.port);
    let token = token_for(stack.sandbox_id(), Some(vec![3000]), now() + 600);

    // Through the proxy: https, whatever the client claims (the proxy sets the header).
    for claimed in [None, Some("http")] {
        let mut headers = vec![HTML];
        headers.extend(claimed.map(|p| ("x-forwarded-proto", p)));
        let path = format!("/?access_token={token}");
        let reply = https_get(&client, &host, front.port, &path, &headers)
            .await
            .unwrap();
        let cookie = link_cookie(&reply);
        assert!(is_secure(&cookie), "{cookie}");
    }
    let reply = https_get(&client, &host, front.port, "/a?b=c", &[HTML])
        .await
        .unwrap();
    assert_eq!(
        return_to(&reply),
        format!("https://{host}:{}/a?b=c", front.port)
    );

    // The cookie works through both hops, and the sandbox is told https.
    let cookie = format!("daytona_authz={token}");
    let reply = https_get(&client, &host, front.port, "/", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let received = stack.double.proxy_requests().await;
    let last = received.last().expect("forwarded");
    assert_eq!(last.values("x-forwarded-proto"), ["https"], "{last:?}");
}

/// Every way a client can say "https" to the plain-HTTP edge, answered as plain HTTP: the link's
/// cookie without `Secure`, `return_to` with `http://`.
#[tokio::test]
async fn on_the_plain_edge_no_client_can_claim_https() {
    let stack = Stack::start_with(login_options()).await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let token = token_for(stack.sandbox_id(), Some(vec![3000]), now() + 600);
    let link = format!("/?access_token={token}");

    // X-Forwarded-Proto (and the other spellings proxies use).
    let claims = [
        ("x-forwarded-proto", "https"),
        ("forwarded", "proto=https"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-scheme", "https"),
    ];
    for claim in claims {
        let reply = stack.get(&host, &link, &[HTML, claim]).await;
        let cookie = link_cookie(&reply);
        assert!(!is_secure(&cookie), "{claim:?}: {cookie}");
        let reply = stack.get(&host, "/x", &[HTML, claim]).await;
        assert_eq!(return_to(&reply), format!("http://{host}/x"), "{claim:?}");
    }

    // An absolute-form HTTP/1.1 request target with the https scheme: Envoy refuses it on a
    // plaintext connection (403 before any filter runs).
    for path in [link.as_str(), "/x"] {
        let head = support::raw(
            port,
            &format!(
                "GET https://{host}{path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n\
                 X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
            ),
        )
        .await
        .head;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    }

    // HTTP/2 without TLS (h2c) with `:scheme: https`, which the client chooses freely and Envoy
    // passes on to the Check: still plain http.
    let (status, headers) = h2c_get(port, &format!("https://{host}{link}")).await;
    assert_eq!(status, 302, "{headers:?}");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(!is_secure(cookie), "{cookie}");
    let (status, headers) = h2c_get(port, &format!("https://{host}/x")).await;
    assert_eq!(status, 302, "{headers:?}");
    let location = headers["location"].to_str().unwrap();
    let plain: String =
        url::form_urlencoded::byte_serialize(format!("http://{host}/x").as_bytes()).collect();
    assert!(
        location.ends_with(&format!("return_to={plain}")),
        "{location}"
    );
    assert_eq!(stack.envoy.stat("http.public.downstream_rq_2xx").await, 0);
}

/// A GET over HTTP/2 cleartext (prior knowledge) whose `:scheme` and `:authority` come from
/// `uri`: status and headers.
async fn h2c_get(port: u16, uri: &str) -> (u16, hyper::HeaderMap) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(uri)
        .header("accept", "text/html")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .expect("response in time")
        .unwrap();
    driver.abort();
    (response.status().as_u16(), response.headers().clone())
}
