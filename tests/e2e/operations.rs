//! Running it in production: readiness, drain, metrics, logs without secrets, secret reloads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    ADMIN_TOKEN, API_KEY, Authz, AuthzOptions, Claims, Double, JWT_SECRET, Signer, Stack, bearer,
    eventually, now, parse_metrics, token_for,
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

/// The suite-wide check (test-support: every daytona-authz and Envoy process's output is
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
        let failed = stack.authz.proc.stderr().contains("reload failed");
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

// -------------------------------------------------------------------------------------------------
// A rollout, played as the kubelet plays it
// -------------------------------------------------------------------------------------------------

/// How the manifest stops a pod (deploy/kubernetes/deployment.yaml), read from the file itself.
#[derive(Debug)]
struct Termination {
    /// Envoy's preStop, the `bash -c` script as the kubelet runs it.
    envoy_pre_stop: String,
    /// The `sleep` that ends Envoy's preStop, in seconds.
    envoy_sleep: u64,
    /// Envoy's `--drain-time-s`.
    envoy_drain_time: u64,
    /// Envoy's `--drain-strategy`.
    envoy_drain_strategy: String,
    /// daytona-authz's preStop: `sleep N`.
    authz_sleep: u64,
    /// `terminationGracePeriodSeconds`.
    grace: u64,
}

/// The manifest's value of `key` (a flow sequence or a scalar on one or more lines), the first
/// after `anchor`. The project has no YAML parser; flow sequences of quoted strings are JSON.
fn manifest_value(manifest: &str, anchor: &str, key: &str) -> String {
    let start = manifest
        .find(anchor)
        .unwrap_or_else(|| panic!("deployment.yaml has no {anchor:?}"));
    let mut lines = manifest[start..].lines();
    let first = lines
        .find_map(|line| line.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("deployment.yaml has no {key:?} after {anchor:?}"));
    let mut value = first.trim().to_owned();
    while value.matches('[').count() > value.matches(']').count() {
        value.push(' ');
        value.push_str(lines.next().expect("an unclosed flow sequence").trim());
    }
    value
}

/// The folded block scalar (`- >-`) after `anchor`: its lines joined by single spaces, which is
/// what YAML makes of a folded block without blank or more-indented lines.
fn manifest_folded_block(manifest: &str, anchor: &str) -> String {
    let start = manifest
        .find(anchor)
        .unwrap_or_else(|| panic!("deployment.yaml has no {anchor:?}"));
    let mut lines = manifest[start..].lines();
    let header = lines
        .find(|line| line.trim() == "- >-")
        .expect("a folded block scalar");
    let indent = |line: &str| line.len() - line.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|line| indent(line) > indent(header) && !line.trim().is_empty())
        .map(str::trim)
        .collect();
    block.join(" ")
}

fn read_termination() -> Termination {
    let manifest =
        std::fs::read_to_string(support::repo_root().join("deploy/kubernetes/deployment.yaml"))
            .unwrap();
    let envoy = "- name: envoy";
    let authz = "- name: daytona-authz";
    let envoy_pre_stop = manifest_folded_block(&manifest, &format!("{envoy}\n"));
    // The hook the test runs is the manifest's, which must fail the edge health endpoint, then
    // drain the listeners gracefully, then wait.
    let fail = envoy_pre_stop.find("post /healthcheck/fail;");
    let drain = envoy_pre_stop.find("post '/drain_listeners?graceful';");
    let sleep = envoy_pre_stop.rfind("; sleep ");
    assert!(
        fail.is_some() && fail < drain && drain < sleep,
        "Envoy's preStop must fail health, drain, then sleep: {envoy_pre_stop}"
    );
    assert_eq!(envoy_pre_stop.matches("/dev/tcp/127.0.0.1/9901").count(), 1);
    let envoy_sleep = envoy_pre_stop[sleep.unwrap() + "; sleep ".len()..]
        .parse()
        .expect("Envoy's preStop ends with `sleep <seconds>`");

    let args: Vec<String> =
        serde_json::from_str(&manifest_value(&manifest, envoy, "args:")).unwrap();
    let after = |flag: &str| {
        let at = args.iter().position(|a| a == flag);
        at.and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("Envoy's args have no {flag}"))
            .clone()
    };
    let authz_pre_stop: Vec<String> =
        serde_json::from_str(&manifest_value(&manifest, authz, "command:")).unwrap();
    assert_eq!(authz_pre_stop.len(), 2, "{authz_pre_stop:?}");
    assert_eq!(authz_pre_stop[0], "sleep");
    Termination {
        envoy_pre_stop,
        envoy_sleep,
        envoy_drain_time: after("--drain-time-s").parse().unwrap(),
        envoy_drain_strategy: after("--drain-strategy"),
        authz_sleep: authz_pre_stop[1].parse().unwrap(),
        grace: manifest_value(&manifest, "spec:", "terminationGracePeriodSeconds:")
            .parse()
            .unwrap(),
    }
}

/// daytona-authz's `--drain-timeout` in the pod: the default (README), which the manifests do not
/// change.
fn authz_drain_timeout_in_pod() -> u64 {
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains("| `--drain-timeout` | `DAYTONA_AUTHZ_DRAIN_TIMEOUT` | `10s` |"),
        "README documents another --drain-timeout default"
    );
    for file in ["deployment.yaml", "kustomization.yaml"] {
        let text =
            std::fs::read_to_string(support::repo_root().join("deploy/kubernetes").join(file))
                .unwrap();
        assert!(!text.contains("DRAIN_TIMEOUT") && !text.contains("drain-timeout\""));
    }
    10
}

/// The test plays the manifest's timings this many times faster, keeping their order.
const ROLLOUT_SPEED_UP: u64 = 5;

fn sigterm(proc: &support::Proc) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM");
}

/// What the clients saw during the rollout.
#[derive(Debug, Default)]
struct Outcomes {
    ok: u64,
    /// 200s of requests sent after the preStop hooks began.
    ok_while_stopping: u64,
    /// Could not connect: the listener was closed, nothing was accepted (in Kubernetes, the
    /// Service sends new connections to another pod by then).
    not_accepted: u64,
    /// Any other answer: a request Envoy accepted and failed.
    failed: Vec<String>,
    /// Connected, then no answer: (path, error). Envoy's access log tells whether it accepted
    /// the request (then it failed) or the kernel reset the connection from the closing
    /// listener's accept queue (never accepted).
    cut: Vec<(String, String)>,
}

/// A rollout as Kubernetes stops the old pod, with the hooks, signals and timings of
/// deploy/kubernetes/deployment.yaml (sped up, in the same order): both preStop hooks start
/// together; Envoy's (run as written, against the test Envoy's admin) fails the edge health
/// endpoint and drains the listeners, then sleeps; SIGTERM reaches Envoy when its hook ends and
/// daytona-authz when its own, longer, hook ends; the grace period bounds it all. Under a steady
/// load of allowed requests, every request that got an answer got a 200: none was cut, none got
/// a 503 from a stopped daytona-authz. Requests refused at connect (the listener had closed) are
/// counted apart. Takes about 10 s.
#[tokio::test]
async fn a_rollout_played_as_kubernetes_does_loses_no_accepted_request() {
    let t = read_termination();
    let authz_drain_timeout = authz_drain_timeout_in_pod();
    // The order the manifest promises: Envoy's listeners close before Envoy is stopped, Envoy is
    // gone before daytona-authz is told to stop, and daytona-authz's drain ends within the grace
    // period.
    assert!(t.envoy_drain_time < t.envoy_sleep, "{t:?}");
    assert!(t.envoy_sleep < t.authz_sleep, "{t:?}");
    assert!(t.authz_sleep + authz_drain_timeout < t.grace, "{t:?}");
    let scaled = |seconds: u64| Duration::from_millis(seconds * 1000 / ROLLOUT_SPEED_UP);
    let drain_time = t.envoy_drain_time.div_ceil(ROLLOUT_SPEED_UP);
    assert!(Duration::from_secs(drain_time) < scaled(t.envoy_sleep));
    let envoy_sleep = scaled(t.envoy_sleep);
    let authz_sleep = scaled(t.authz_sleep);
    let grace = scaled(t.grace);

    let mut stack = Stack::start_with(support::StackOptions {
        authz: AuthzOptions::args(&[
            "--drain-timeout",
            &format!("{}ms", scaled(authz_drain_timeout).as_millis()),
        ]),
        envoy_args: vec![
            "--drain-time-s".into(),
            drain_time.to_string(),
            "--drain-strategy".into(),
            t.envoy_drain_strategy.clone(),
        ],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health_url = format!("http://127.0.0.1:{}/healthz", stack.envoy.health_port);
    let health = || {
        let request = http.get(&health_url).send();
        async move { request.await.ok().map(|r| r.status().as_u16()) }
    };
    eventually(
        "the edge health endpoint to say 200",
        Duration::from_secs(15),
        || {
            let status = health();
            async move { (status.await == Some(200)).then_some(()) }
        },
    )
    .await;

    // The steady load: a few clients on loopback, each sending one request after another.
    let stopping = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let url = format!("http://127.0.0.1:{}", stack.envoy.port);
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let (http, url) = (http.clone(), url.clone());
            let (stopping, stop, outcomes) = (stopping.clone(), stop.clone(), outcomes.clone());
            let (host, auth) = (stack.host(3000), bearer(&stack.token(None)));
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let late = stopping.load(Ordering::SeqCst);
                    let path = format!("/rollout/{client}/{n}");
                    let sent = http
                        .get(format!("{url}{path}"))
                        .header("host", &host)
                        .header("authorization", &auth)
                        .send()
                        .await;
                    let outcome = match sent {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.text().await {
                                Ok(_) if status == 200 => Ok(()),
                                Ok(body) => Err(format!("{status}: {body}")),
                                Err(e) => Err(format!("{status}, body cut: {e:?}")),
                            }
                        }
                        Err(e) if e.is_connect() => {
                            outcomes.lock().unwrap().not_accepted += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Err(e) => {
                            outcomes.lock().unwrap().cut.push((path, format!("{e:?}")));
                            continue;
                        }
                    };
                    let mut outcomes = outcomes.lock().unwrap();
                    match outcome {
                        Ok(()) => {
                            outcomes.ok += 1;
                            outcomes.ok_while_stopping += u64::from(late);
                        }
                        Err(failure) => outcomes.failed.push(failure),
                    }
                }
            })
        })
        .collect();
    eventually("the load to flow", Duration::from_secs(10), || {
        let ok = outcomes.lock().unwrap().ok;
        async move { (ok >= 20).then_some(()) }
    })
    .await;

    // The kubelet stops the pod: both preStop hooks at once.
    let begun = std::time::Instant::now();
    stopping.store(true, Ordering::SeqCst);
    let admin_port = stack.envoy.admin.rsplit(':').next().unwrap().to_owned();
    let envoy_hook = t
        .envoy_pre_stop
        .replace(
            "/dev/tcp/127.0.0.1/9901",
            &format!("/dev/tcp/127.0.0.1/{admin_port}"),
        )
        .replace(
            &format!("; sleep {}", t.envoy_sleep),
            &format!("; sleep {}", envoy_sleep.as_secs_f64()),
        );
    let mut envoy_hook = support::Proc::spawn(
        "Envoy's preStop",
        std::process::Command::new("bash").args(["-c", &envoy_hook]),
    );
    let mut authz_hook = support::Proc::spawn(
        "daytona-authz's preStop",
        std::process::Command::new("sleep").arg(authz_sleep.as_secs_f64().to_string()),
    );
    // The edge health endpoint fails at once (load balancers stop sending), then the listeners
    // close while Envoy still runs: it takes no new connection.
    eventually("the edge health endpoint to say 503", envoy_sleep, || {
        let status = health();
        async move { (status.await == Some(503)).then_some(()) }
    })
    .await;
    eventually("Envoy's listener to close", envoy_sleep, || {
        let port = stack.envoy.port;
        async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    stack.envoy.proc.assert_running();

    // Envoy's hook ends: SIGTERM to Envoy.
    let status = envoy_hook.wait_exit(grace).await;
    assert!(status.success(), "Envoy's preStop failed: {status}");
    sigterm(&stack.envoy.proc);
    let left = grace.saturating_sub(begun.elapsed());
    let status = stack.envoy.proc.wait_exit(left).await;
    assert!(status.success(), "Envoy: {status}");
    // Until Envoy was gone, daytona-authz answered Checks, untold to stop.
    stack.authz.proc.assert_running();
    assert_eq!(
        grpc_health(&stack.authz.grpc_addr).await,
        Some(ServingStatus::Serving)
    );
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(15), client)
            .await
            .expect("a client to finish")
            .unwrap();
    }

    // daytona-authz's hook ends: SIGTERM; it exits within what is left of the grace period.
    let status = authz_hook.wait_exit(grace).await;
    assert!(status.success());
    stack.authz.signal("TERM");
    let left = grace.saturating_sub(begun.elapsed());
    let status = stack.authz.proc.wait_exit(left).await;
    assert_eq!(status.code(), Some(0), "{}", stack.authz.proc.stderr());

    let mut outcomes = outcomes.lock().unwrap();
    // A connection cut without an answer: a failure if Envoy had the request (its access log
    // records every request it accepted, cut ones included).
    let access_log = stack.envoy.proc.stdout();
    let (seen, unseen): (Vec<_>, Vec<_>) = outcomes
        .cut
        .drain(..)
        .partition(|(path, _)| access_log.contains(&format!("\"{path}\"")));
    outcomes
        .failed
        .extend(seen.into_iter().map(|(path, e)| format!("{path} cut: {e}")));
    outcomes.cut = unseen;
    assert!(
        access_log.matches("\"/rollout/").count() as u64 >= outcomes.ok,
        "Envoy's access log does not record the load's requests"
    );
    // Each listener socket (one per Envoy worker, two here) can reset at most one queued
    // connection per client when it closes.
    assert!(outcomes.cut.len() <= 2 * 6, "{outcomes:?}");
    assert!(
        outcomes.failed.is_empty(),
        "{} accepted request(s) failed during the rollout ({} ok, {} not accepted), e.g. {:?}",
        outcomes.failed.len(),
        outcomes.ok,
        outcomes.not_accepted,
        &outcomes.failed[..outcomes.failed.len().min(5)]
    );
    assert!(outcomes.ok_while_stopping > 0, "{outcomes:?}");
    assert!(outcomes.not_accepted > 0, "{outcomes:?}");
    eprintln!("rollout: {outcomes:?}");
}

#[tokio::test]
async fn sighup_applies_a_changed_config_file_live_and_refuses_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daytona-authz.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    write("preview-domain = [\"preview.test\"]\n");
    let stack = Stack::start_with(AuthzOptions::args(&["--config", file.to_str().unwrap()])).await;
    let token = bearer(&stack.token(None));
    let second = format!("3000-{}.preview.example.org", stack.sandbox_id());
    let with_token = |host: String| {
        let stack = &stack;
        let token = token.clone();
        async move {
            stack
                .get(&host, "/", &[("authorization", &token)])
                .await
                .status
        }
    };
    let browser = || {
        let stack = &stack;
        async move {
            let reply = stack.get(&stack.host(3000), "/", &support::NAVIGATE).await;
            (reply.status, reply.header("location").map(str::to_owned))
        }
    };
    assert_eq!(with_token(stack.host(3000)).await, 200);
    assert_eq!(with_token(second.clone()).await, 400);
    assert_eq!(browser().await, (401, None));
    // Connections to daytona-authz that daytona-authz closed (Envoy may close and reopen its own,
    // e.g. a health check timing out on a loaded machine).
    let connections = "cluster.daytona_authz.upstream_cx_destroy_remote";
    let before = stack.envoy.stat(connections).await;
    let reloads = |result: &str| {
        let stack = &stack;
        let result = result.to_owned();
        async move {
            let metrics = parse_metrics(&stack.authz.metrics().await);
            metrics
                .get(&format!(
                    "daytona_authz_secret_reloads_total{{result=\"{result}\"}}"
                ))
                .copied()
                .unwrap_or(0.0)
        }
    };

    // A change that needs a restart (the cache's size) beside a live one: nothing is applied.
    write(
        "preview-domain = [\"preview.test\", \"preview.example.org\"]\n\
         cache-max-entries = 5\n",
    );
    stack.authz.signal("HUP");
    stack
        .authz
        .proc
        .logged(
            "the refused reload",
            &["--cache-max-entries", "cannot change while running"],
        )
        .await;
    assert_eq!(reloads("error").await, 1.0);
    assert_eq!(with_token(second.clone()).await, 400, "nothing was applied");

    // A file that is not TOML: refused too.
    write("preview-domain = [\n");
    stack.authz.signal("HUP");
    eventually("the second refusal", Duration::from_secs(10), || async {
        (reloads("error").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(
        with_token(stack.host(3000)).await,
        200,
        "the old config serves"
    );

    // Live changes: a second preview domain and a sign-in page, without a restart.
    write(
        "preview-domain = [\"preview.test\", \"preview.example.org\"]\n\
         login-url = \"https://login.example.com/start\"\n",
    );
    stack.authz.signal("HUP");
    eventually("the applied reload", Duration::from_secs(10), || async {
        (reloads("ok").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(with_token(second).await, 200);
    let (status, location) = browser().await;
    assert_eq!(status, 302);
    assert!(location.is_some_and(|l| l.starts_with("https://login.example.com/start?return_to=")),);
    stack
        .authz
        .proc
        .logged(
            "the reload's changes",
            &["reloaded", "--preview-domain, --login-url"],
        )
        .await;
    // daytona-authz never dropped a connection of Envoy's: the servers kept running.
    assert_eq!(stack.envoy.stat(connections).await, before);
    stack.authz.proc.stderr().lines().for_each(|line| {
        assert!(
            !line.contains(JWT_SECRET) && !line.contains(API_KEY),
            "{line}"
        );
    });
}
