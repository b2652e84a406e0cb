//! grpc.health.v1 on the ext_authz address, and a clean exit on SIGTERM.

use std::time::Duration;

use support::{Authz, AuthzOptions, Double};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_reports_serving_and_sigterm_exits_cleanly() {
    let double = Double::start().await;
    let mut authz = Authz::start(&double.api_url, &AuthzOptions::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", authz.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &authz.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = authz.proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", authz.proc.stderr());
    assert!(authz.proc.stderr().contains("stopped"));
}
