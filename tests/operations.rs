//! Running it in production: readiness, drain, metrics, logs without secrets, secret reloads.

mod support;

use std::time::Duration;

use daytona_authz::token::{Claims, Signer, now};
use support::{
    ADMIN_TOKEN, API_KEY, Authz, AuthzOptions, Double, JWT_SECRET, Stack, bearer, eventually,
    parse_metrics, token_for,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const HEALTH_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// The gRPC health status of the ext_authz service, if the server answers.
async fn grpc_health(addr: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: HEALTH_SERVICE.into(),
        })
        .await
        .ok()?
        .into_inner()
        .status;
    ServingStatus::try_from(status).ok()
}

#[tokio::test]
async fn not_ready_until_daytona_answers_then_ready() {
    let api_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut authz = Authz::spawn(
        &format!("http://{api_addr}/api"),
        &AuthzOptions {
            // 0s: wait for Daytona however long it takes.
            extra_args: vec!["--ready-grace".into(), "0s".into()],
            ..Default::default()
        },
    )
    .await;
    // The probe has failed at least once (it says so), and nothing is ready.
    eventually("a failed probe", Duration::from_secs(10), || {
        let failed = authz
            .proc
            .stderr()
            .contains("Daytona API not answering yet");
        async move { failed.then_some(()) }
    })
    .await;
    assert!(!authz.is_ready().await);
    assert_eq!(healthcheck(&authz.http_addr), Some(1));
    assert_eq!(
        grpc_health(&authz.grpc_addr).await,
        Some(ServingStatus::NotServing)
    );
    assert!(authz.metrics().await.contains("daytona_authz_ready 0"));

    // Daytona comes up where it was expected: the next probe makes daytona-authz ready.
    let _double = Double::start_at(&api_addr).await;
    authz.wait_ready().await;
    assert_eq!(
        grpc_health(&authz.grpc_addr).await,
        Some(ServingStatus::Serving)
    );
    assert!(authz.metrics().await.contains("daytona_authz_ready 1"));
    assert_eq!(healthcheck(&authz.http_addr), Some(0));
}

/// The exit code of `daytona-authz healthcheck` (what a container HEALTHCHECK runs).
fn healthcheck(http_addr: &str) -> Option<i32> {
    std::process::Command::new(env!("CARGO_BIN_EXE_daytona-authz"))
        .args(["healthcheck", "--http-addr", http_addr])
        .output()
        .unwrap()
        .status
        .code()
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_check_and_reports_not_ready_meanwhile() {
    let stack = Stack::start().await;
    stack.double.delay(Duration::from_millis(1500)).await;
    let auth = format!("Bearer {}", stack.token(None));
    let host = stack.host(3000);
    let headers = [("authorization", auth.as_str())];
    let in_flight = stack.get(&host, "/", &headers);
    let observe = async {
        // Once the Check is waiting on Daytona, ask daytona-authz to stop.
        eventually(
            "the Check to reach Daytona",
            Duration::from_secs(10),
            || async { (stack.double.api_calls().await >= 1).then_some(()) },
        )
        .await;
        stack.authz.signal("TERM");
        eventually("readiness to drop", Duration::from_secs(5), || async {
            (!stack.authz.is_ready().await).then_some(())
        })
        .await;
    };
    let (reply, ()) = tokio::join!(in_flight, observe);
    assert_eq!(
        reply.status, 200,
        "the in-flight request was cut: {}",
        reply.body
    );
    let mut authz = stack.authz;
    let status = authz.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", authz.proc.stderr());
    assert!(authz.proc.stderr().contains("draining in-flight checks"));
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let stack = Stack::start().await;
    let before = parse_metrics(&stack.authz.metrics().await);
    let auth = format!("Bearer {}", stack.token(None));
    for _ in 0..3 {
        assert_eq!(
            stack
                .get(&stack.host(3000), "/", &[("authorization", &auth)])
                .await
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(stack.get(&stack.host(3000), "/", &[]).await.status, 401);
    }
    let after = parse_metrics(&stack.authz.metrics().await);
    let moved = |name: &str| {
        after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    assert_eq!(
        moved(r#"daytona_authz_decisions_total{result="allow",reason="ok"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"daytona_authz_decisions_total{result="deny",reason="invalid_token"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"daytona_authz_daytona_api_calls_total{status="200"}"#),
        1.0
    );
    assert_eq!(moved("daytona_authz_preview_cache_misses_total"), 1.0);
    assert_eq!(moved("daytona_authz_preview_cache_hits_total"), 2.0);
    assert_eq!(after["daytona_authz_preview_cache_entries"], 1.0);
    assert_eq!(moved("daytona_authz_check_duration_seconds_count"), 5.0);
    assert_eq!(after["daytona_authz_ready"], 1.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("daytona_authz_build_info{"))
    );
}

/// `--worker-threads 2` (a multi-thread runtime instead of the default single thread) serves the
/// same decisions: concurrent allowed and denied requests through Envoy, each answered right.
#[tokio::test]
async fn a_multi_thread_runtime_serves_the_same_decisions() {
    let stack = Stack::start_with(AuthzOptions::args(&["--worker-threads", "2"])).await;
    assert!(
        stack.authz.proc.stderr().contains("worker_threads=2"),
        "the start-up line names the runtime"
    );
    let auth = bearer(&stack.token(None));
    let host = stack.host(3000);
    let replies = futures_util::future::join_all((0..40).map(|i| {
        let (stack, host, auth) = (&stack, &host, &auth);
        async move {
            let headers: &[(&str, &str)] = if i % 2 == 0 {
                &[("authorization", auth)]
            } else {
                &[]
            };
            (i, stack.get(host, "/", headers).await.status)
        }
    }))
    .await;
    for (i, status) in replies {
        assert_eq!(status, if i % 2 == 0 { 200 } else { 401 }, "request {i}");
    }
}

/// The suite-wide check (tests/support: every daytona-authz and Envoy process's output is
/// searched for every secret the suite used when the process ends) really fails a test.
#[tokio::test]
#[should_panic(expected = "printed a secret")]
async fn the_suite_wide_secret_check_fails_a_test_whose_authz_printed_a_token() {
    let token = token_for("7c0b3c1e-95b5-4d8e-9a44-2f8f1c1a0b2d", None, now() + 60);
    let line = format!("debug: checking cookie {}", &token);
    let mut proc = support::Proc::spawn(
        "daytona-authz",
        std::process::Command::new("echo").arg(line),
    );
    proc.wait_exit(Duration::from_secs(10)).await;
    eventually("echo's output", Duration::from_secs(10), || {
        let done = proc.stdout().contains("checking cookie");
        async move { done.then_some(()) }
    })
    .await;
    drop(proc);
}

#[tokio::test]
async fn logs_are_json_and_never_contain_a_secret() {
    let stack = Stack::start_with(AuthzOptions {
        extra_args: vec!["--log-format".into(), "json".into()],
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })
    .await;
    let id = stack.sandbox_id().to_owned();
    let good = stack.token(None);
    let expired = token_for(&id, None, now() - 3600);
    let other_key = Signer::hs256(b"an-attackers-secret-0123456789abcdef")
        .sign(&Claims {
            sandbox_id: id.clone(),
            exp: now() + 60,
            ports: None,
            iss: None,
            aud: None,
        })
        .unwrap();
    let host = stack.host(3000);
    let cookie = format!("daytona_authz={good}; app-session=app-secret-cookie-value");
    let bearer = format!("Bearer {good}");
    let requests: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/".into(), vec![("authorization", bearer.as_str())]),
        (format!("/?access_token={good}"), vec![]),
        (
            format!("/?access_token={good}"),
            vec![("accept", "text/html")],
        ),
        ("/".into(), vec![("cookie", cookie.as_str())]),
        (
            format!("/?access_token={expired}"),
            vec![("x-request-id", "req-expired-1")],
        ),
        (format!("/?access_token={other_key}"), vec![]),
        (
            "/".into(),
            vec![("x-daytona-preview-token", "spoofed-preview-token")],
        ),
    ];
    for (path, headers) in &requests {
        stack.get(&host, path, headers).await;
    }
    let restarted = stack.double.restart(&id).await;

    let logs = stack.authz.proc.stderr();
    let access_log = stack.envoy.proc.stdout();
    for secret in [
        good.as_str(),
        expired.as_str(),
        other_key.as_str(),
        API_KEY,
        JWT_SECRET,
        ADMIN_TOKEN,
        stack.double.sandbox.token.as_str(),
        restarted.token.as_str(),
        "app-secret-cookie-value",
        "spoofed-preview-token",
    ] {
        assert!(
            !logs.contains(secret),
            "daytona-authz logged a secret: {secret}"
        );
        assert!(
            !access_log.contains(secret),
            "Envoy's access log has a secret: {secret}"
        );
    }
    // Every line is a JSON object; the denial line says why, for whom, and which request.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let denial = lines
        .iter()
        .find(|l| l["message"] == "denied" && l["reason"] == "token has expired")
        .expect("a denial line for the expired token");
    // Envoy's x-request-id (Envoy, at the edge, replaces any id the client sent).
    let request_id = denial["request_id"].as_str().unwrap();
    assert_eq!(request_id.len(), 36, "{denial}");
    assert_eq!(denial["level"], "INFO");
    assert_eq!(denial["message"], "denied");
    assert_eq!(denial["sandbox.id"], id.as_str());
    assert_eq!(denial["port"], 3000);
    assert_eq!(denial["status"], 401);
    assert!(denial["reason"].as_str().unwrap().contains("expired"));
    assert!(denial["client"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(
        lines.iter().any(|l| l["message"] == "allowed"),
        "allows at debug"
    );
}

#[tokio::test]
async fn sighup_rereads_secret_files_and_a_bad_file_keeps_the_old_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{JWT_SECRET}\n")).unwrap();
    let stack = Stack::start_with(AuthzOptions {
        env: vec![
            ("DAYTONA_AUTHZ_JWT_SECRET".into(), String::new()),
            (
                "DAYTONA_AUTHZ_JWT_SECRET_FILE".into(),
                secret_file.to_str().unwrap().into(),
            ),
        ],
        ..Default::default()
    })
    .await;
    let claims = Claims {
        sandbox_id: stack.sandbox_id().to_owned(),
        exp: now() + 600,
        ports: None,
        iss: None,
        aud: None,
    };
    const NEW_SECRET: &str = "the-rotated-secret-0123456789abcdef-xyz";
    let old_token = Signer::hs256(JWT_SECRET.as_bytes()).sign(&claims).unwrap();
    let new_token = Signer::hs256(NEW_SECRET.as_bytes()).sign(&claims).unwrap();
    let status = |token: String| {
        let stack = &stack;
        async move {
            stack
                .get(&stack.host(3000), &format!("/?access_token={token}"), &[])
                .await
                .status
        }
    };
    assert_eq!(status(old_token.clone()).await, 200);
    assert_eq!(status(new_token.clone()).await, 401);

    // A bad file (too short) is refused: the old secret stays.
    std::fs::write(&secret_file, "short\n").unwrap();
    stack.authz.signal("HUP");
    eventually("the failed reload", Duration::from_secs(10), || {
        let failed = stack.authz.proc.stderr().contains("secret reload failed");
        async move { failed.then_some(()) }
    })
    .await;
    assert_eq!(status(old_token.clone()).await, 200);

    std::fs::write(&secret_file, format!("{NEW_SECRET}\n")).unwrap();
    stack.authz.signal("HUP");
    eventually("the new secret", Duration::from_secs(10), || {
        let new_token = new_token.clone();
        async move { (status(new_token).await == 200).then_some(()) }
    })
    .await;
    assert_eq!(status(old_token).await, 401);
    assert!(stack.authz.proc.stderr().contains("secrets reloaded"));
    assert!(!stack.authz.proc.stderr().contains(NEW_SECRET));
}

#[tokio::test]
async fn the_metrics_listener_serves_the_two_metric_sets_and_nothing_else() {
    let stack = Stack::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", stack.envoy.metrics_port);
    let send = |method: reqwest::Method, path: &str| {
        let request = http.request(method, format!("{base}{path}")).send();
        async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // After a request has been forwarded, neither metric set names the sandbox or its host.
    let auth = bearer(&stack.token(None));
    let reply = stack
        .get(&stack.host(3000), "/", &[("authorization", &auth)])
        .await;
    assert_eq!(reply.status, 200);
    let (status, body) = send(reqwest::Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("daytona_authz_ready 1"), "{body}");
    assert!(!body.contains(stack.sandbox_id()));
    let (status, body) = send(reqwest::Method::GET, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(body.contains("envoy_http_ext_authz_ok{"), "{body}");
    assert!(!body.contains(stack.sandbox_id()));
    let (status, body) = send(reqwest::Method::GET, "/stats/prometheus?filter=ext_authz").await;
    assert_eq!(status, 200);
    let other = body
        .lines()
        .find(|l| !l.is_empty() && !l.contains("ext_authz"));
    assert_eq!(other, None, "the query string reaches the admin");
    // Envoy's admin interface (which can stop Envoy or dump its config) and daytona-authz's
    // other endpoints are not reachable through it, whatever the method.
    for (method, path) in [
        (reqwest::Method::POST, "/quitquitquit"),
        (reqwest::Method::POST, "/healthcheck/fail"),
        (reqwest::Method::GET, "/config_dump"),
        (reqwest::Method::GET, "/stats"),
        (reqwest::Method::GET, "/readyz"),
        (reqwest::Method::POST, "/stats/prometheus"),
        (reqwest::Method::POST, "/metrics"),
        (reqwest::Method::GET, "/metrics/../config_dump"),
    ] {
        let (status, _) = send(method.clone(), path).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    // Envoy is still up and still answering on its public listener.
    let reply = stack
        .get(&stack.host(3000), "/", &[("authorization", &auth)])
        .await;
    assert_eq!(reply.status, 200);
}

/// Envoy's edge health listener (`edge_health`, 9903 in envoy.yaml): a load balancer's
/// `GET /healthz`, without a token or a preview host, is 200 while Envoy's own gRPC health check
/// finds daytona-authz healthy and 503 once it does not (or once the admin's
/// `/healthcheck/fail` says the pod is going away, as the Kubernetes preStop does). No Check runs
/// for it, and it answers nothing else.
#[tokio::test]
async fn the_edge_health_endpoint_follows_authz_health_and_answers_nothing_else() {
    let mut stack = Stack::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", stack.envoy.health_port);
    let send = |method: reqwest::Method, path: &str| {
        let request = http.request(method, format!("{base}{path}")).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    let checks = |metrics: &str| {
        parse_metrics(metrics)
            .get("daytona_authz_check_duration_seconds_count")
            .copied()
            .unwrap_or(0.0)
    };
    let checks_before = checks(&stack.authz.metrics().await);

    // Envoy marks daytona-authz healthy after its first health check; until then it may be 503.
    eventually(
        "the edge health endpoint to say 200",
        Duration::from_secs(15),
        || {
            let status = send(reqwest::Method::GET, "/healthz");
            async move { (status.await == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(send(reqwest::Method::GET, "/healthz").await, 200);
    for (method, path) in [
        (reqwest::Method::GET, "/"),
        (reqwest::Method::GET, "/healthz/"),
        (reqwest::Method::GET, "/healthz?x=1"),
        (reqwest::Method::GET, "/ready"),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/stats/prometheus"),
        (reqwest::Method::POST, "/healthz"),
        (reqwest::Method::PUT, "/healthz"),
        (reqwest::Method::DELETE, "/healthz"),
        (reqwest::Method::POST, "/healthcheck/fail"),
        (reqwest::Method::POST, "/quitquitquit"),
    ] {
        assert_eq!(send(method.clone(), path).await, 404, "{method} {path}");
    }
    // A preview host on this port does not reach a sandbox either.
    let status = http
        .get(format!("{base}/"))
        .header("host", stack.host(3000))
        .header("authorization", bearer(&stack.token(None)))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert_eq!(stack.double.proxy_requests().await.len(), 0);
    assert_eq!(
        checks(&stack.authz.metrics().await),
        checks_before,
        "an edge health request made daytona-authz run a Check"
    );

    // The pod's preStop fails the endpoint through Envoy's admin before draining.
    let admin = |path: &str| {
        let request = http
            .post(format!("http://{}{path}", stack.envoy.admin))
            .send();
        async move { assert_eq!(request.await.unwrap().status(), 200) }
    };
    admin("/healthcheck/fail").await;
    assert_eq!(send(reqwest::Method::GET, "/healthz").await, 503);
    admin("/healthcheck/ok").await;
    assert_eq!(send(reqwest::Method::GET, "/healthz").await, 200);

    // daytona-authz dies (SIGKILL): once Envoy's health check notices, 503.
    stack.authz.proc.kill();
    eventually(
        "the edge health endpoint to say 503",
        Duration::from_secs(15),
        || {
            let status = send(reqwest::Method::GET, "/healthz");
            async move { (status.await == 503).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        stack
            .envoy
            .stat("cluster.daytona_authz.membership_healthy")
            .await,
        0
    );
    assert_eq!(send(reqwest::Method::GET, "/healthz").await, 503);
}
