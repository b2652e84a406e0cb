//! The admin gRPC API against a running daytona-authz (and Envoy in front, to see the effect).

use support::pb::InvalidatePreviewTokenRequest;
use support::{ADMIN_TOKEN, Stack, admin_client, with_credential};
use tonic::Request;

#[tokio::test]
async fn invalidating_a_preview_token_recovers_a_restarted_sandbox_at_once() {
    let stack = Stack::start().await; // default --cache-ttl of 60 s
    let auth = format!("Bearer {}", stack.token(None));
    let auth = [("authorization", auth.as_str())];
    let host = stack.host(3000);
    assert_eq!(stack.get(&host, "/", &auth).await.status, 200);

    let restarted = stack.double.restart(stack.sandbox_id()).await;
    // Stale cached token: Daytona's proxy sends the caller to its login page.
    assert_eq!(stack.get(&host, "/", &auth).await.status, 307);

    let mut admin = admin_client(&stack).await;
    let request = InvalidatePreviewTokenRequest {
        sandbox_id: stack.sandbox_id().to_owned(),
        port: None,
    };
    admin
        .invalidate_preview_token(with_credential(request, &format!("Bearer {ADMIN_TOKEN}")))
        .await
        .expect("invalidate");
    let reply = stack.get(&host, "/", &auth).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let received = stack.double.proxy_requests().await;
    assert_eq!(
        received.last().unwrap().values("x-daytona-preview-token"),
        [restarted.token.as_str()]
    );
}

#[tokio::test]
async fn the_admin_api_refuses_calls_without_its_credential() {
    let stack = Stack::start().await;
    let mut admin = admin_client(&stack).await;
    let request = || InvalidatePreviewTokenRequest {
        sandbox_id: stack.sandbox_id().to_owned(),
        port: Some(3000),
    };
    let status = admin
        .invalidate_preview_token(Request::new(request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = admin
        .invalidate_preview_token(with_credential(request(), "Bearer wrong"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = admin
        .invalidate_preview_token(with_credential(
            InvalidatePreviewTokenRequest {
                sandbox_id: "../etc".into(),
                port: None,
            },
            &format!("Bearer {ADMIN_TOKEN}"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
