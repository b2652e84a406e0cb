//! The HTTPS path to Daytona (Daytona cloud serves `https://{port}-{id}.proxy.daytona.works`),
//! end to end through a real Envoy: the double's preview proxy speaks TLS with certificates made
//! here, its preview URLs are `https://`, so daytona-authz picks Envoy's `daytona_preview_https`
//! cluster, which must send the preview host as SNI and verify the certificate (chain to the
//! trusted CA, name = the preview host) before forwarding anything.

use std::path::PathBuf;
use std::time::Duration;

use support::{Reply, Stack, StackOptions, TestCa, TlsFiles};

/// The sandbox port every test asks for.
const PORT: u16 = 3000;
/// The double's default preview domain: Envoy connects to `{port}-{id}.proxy.localhost`.
const PROXY_DOMAIN: &str = "proxy.localhost";
/// Envoy's stats for the HTTPS cluster's upstream TLS.
const SSL_STATS: &str = "cluster.daytona_preview_https.ssl";

/// A server certificate and its key, PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

fn leaf(ca: &TestCa, dns_name: &str) -> Leaf {
    let (cert_pem, key_pem) = ca.leaf(&[dns_name]);
    Leaf { cert_pem, key_pem }
}

/// The stack with the double serving `leaf` over TLS and Envoy trusting `trusted` only. The
/// PEM files live in `dir`, which the caller keeps until the stack is gone.
async fn https_stack(dir: &tempfile::TempDir, leaf: &Leaf, trusted: &TestCa) -> Stack {
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let options = StackOptions {
        double_tls: Some(TlsFiles {
            cert: write("proxy-cert.pem", &leaf.cert_pem),
            key: write("proxy-key.pem", &leaf.key_pem),
        }),
        envoy_trusted_ca: Some(write("trusted-ca.pem", &trusted.pem())),
        ..Default::default()
    };
    Stack::start_with(options).await
}

async fn get_with_token(stack: &Stack) -> Reply {
    let token = stack.token(Some(vec![PORT]));
    stack
        .get(
            &stack.host(PORT),
            "/hello?x=1",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}

/// The request was allowed but Envoy refused Daytona's certificate: 503, nothing forwarded.
/// (The route retries connect failures, so Envoy tries, and fails, the handshake up to 3 times.)
async fn assert_refused_upstream(stack: &Stack, reply: &Reply, failed_stat: &str) {
    let envoy_log = || {
        format!(
            "{}\n{}",
            stack.envoy.proc.stdout(),
            stack.envoy.proc.stderr()
        )
    };
    assert_eq!(reply.status, 503, "{}\n{}", reply.body, envoy_log());
    assert!(
        reply.body.contains("upstream connect error"),
        "not Envoy's connect failure: {}",
        reply.body
    );
    assert!(
        stack.double.proxy_requests().await.is_empty(),
        "a request reached Daytona's proxy over an unverified connection"
    );
    // daytona-authz did allow it: the refusal is Envoy's certificate check.
    assert_eq!(stack.double.api_calls().await, 1);
    assert!(
        stack
            .envoy
            .stat(&format!("{SSL_STATS}.{failed_stat}"))
            .await
            >= 1,
        "{SSL_STATS}.{failed_stat} did not count: {}",
        reply.body
    );
    assert_eq!(stack.envoy.stat(&format!("{SSL_STATS}.handshake")).await, 0);
    // The client only reads "remote connection failure"; Envoy's access log has the reason.
    support::eventually(
        "the TLS error in Envoy's access log",
        Duration::from_secs(10),
        || {
            let log = stack.envoy.proc.stdout();
            async move { log.contains("CERTIFICATE_VERIFY_FAILED").then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_valid_bearer_token_reaches_the_sandbox_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("daytona-authz test CA");
    let stack = https_stack(&dir, &leaf(&ca, &format!("*.{PROXY_DOMAIN}")), &ca).await;

    let reply = get_with_token(&stack).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.json();
    assert_eq!(echo["sandbox_id"], stack.sandbox_id());
    assert_eq!(echo["port"], PORT);
    assert_eq!(echo["path"], "/hello?x=1");

    let received = stack.double.proxy_requests().await;
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    let preview_host = format!("{PORT}-{}.{PROXY_DOMAIN}", stack.sandbox_id());
    assert_eq!(request.sni.as_deref(), Some(preview_host.as_str()));
    assert_eq!(
        request.host,
        format!("{preview_host}:{}", stack.double.proxy_port)
    );
    assert_eq!(
        request.values("x-daytona-preview-token"),
        [stack.double.sandbox.token.as_str()]
    );
    assert!(request.values("authorization").is_empty());
    assert!(request.values("x-daytona-authz-upstream").is_empty());
    assert!(request.values("x-daytona-authz-upstream-scheme").is_empty());
    assert_eq!(stack.double.api_calls().await, 1);
    assert!(stack.envoy.stat(&format!("{SSL_STATS}.handshake")).await >= 1);
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daytona_ca = TestCa::new("the CA Daytona's proxy uses");
    let trusted_ca = TestCa::new("the CA Envoy trusts");
    let leaf = leaf(&daytona_ca, &format!("*.{PROXY_DOMAIN}"));
    let stack = https_stack(&dir, &leaf, &trusted_ca).await;

    let reply = get_with_token(&stack).await;
    assert_refused_upstream(&stack, &reply, "fail_verify_error").await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("daytona-authz test CA");
    let stack = https_stack(&dir, &leaf(&ca, "*.other.localhost"), &ca).await;

    let reply = get_with_token(&stack).await;
    assert_refused_upstream(&stack, &reply, "fail_verify_san").await;
}
