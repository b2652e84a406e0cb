//! Tracing through a real Envoy: envoy.yaml's tracing blocks uncommented and pointed at a small
//! OTLP/gRPC collector (support's `OtlpReceiver`), daytona-authz exporting to the same one with
//! `--otlp-endpoint`; Envoy's spans and ours must form one trace, ours under Envoy's.

use std::time::Duration;

use support::{
    AuthzOptions, OtlpReceiver, ReceivedSpan, Stack, StackOptions, bearer, envoy_tracing_edits,
    poll, repo_root,
};

/// Our span for a Check (its `otel.name`).
const CHECK: &str = "ext_authz Check";

/// How long spans may take to arrive: Envoy exports every 5 s.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A stack whose Envoy traces to `collector`, and daytona-authz too unless `authz_exports` is
/// false. daytona-authz exports only when it stops (its batch would wait a minute otherwise),
/// so the flush on shutdown is what delivers its spans.
async fn traced_stack(collector: &OtlpReceiver, authz_exports: bool) -> Stack {
    let config = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    let mut authz = AuthzOptions {
        env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "60000".into())],
        ..AuthzOptions::default()
    };
    if authz_exports {
        authz.extra_args = vec!["--otlp-endpoint".into(), collector.endpoint()];
    }
    Stack::start_with(StackOptions {
        authz,
        envoy_edits: envoy_tracing_edits(&config, collector.addr.port()),
        ..StackOptions::default()
    })
    .await
}

/// Stops daytona-authz (SIGTERM: drain, flush the spans, exit 0).
async fn stop_authz(stack: &mut Stack) {
    stack.authz.signal("TERM");
    let status = stack.authz.proc.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {}", stack.authz.proc.stderr());
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} trace {} span {} parent {:?} {:?}",
                s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn envoy_s_span_and_ours_are_one_trace_with_envoy_s_the_parent() {
    let collector = OtlpReceiver::start().await;
    let mut stack = traced_stack(&collector, true).await;
    let good = stack.token(Some(vec![3000]));
    let allowed = stack
        .get(
            &stack.host(3000),
            "/traced?q=query-never-in-a-span",
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    // Denied, and from a client that started the trace itself: Envoy continues it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let bad = format!("{good}x");
    let denied = stack
        .get(
            &stack.host(3000),
            "/",
            &[
                ("authorization", &bearer(&bad)),
                (
                    "traceparent",
                    &format!("00-{client_trace}-00f067aa0ba902b7-01"),
                ),
            ],
        )
        .await;
    assert_eq!(denied.status, 401, "{}", denied.body);
    stop_authz(&mut stack).await;

    // Both Checks' spans, and Envoy's spans of both traces.
    let spans = poll(EXPORT_TIMEOUT, || {
        let spans = collector.spans();
        let ours: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.service == "daytona-authz" && s.name == CHECK)
            .collect();
        let complete = ours.len() >= 2
            && ours.iter().all(|check| {
                spans
                    .iter()
                    .any(|s| s.service == "envoy" && s.span_id == check.parent_span_id)
            });
        async move { complete.then_some(spans) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no Check span under an Envoy span within {EXPORT_TIMEOUT:?}:\n{}",
            describe(&collector.spans())
        )
    });
    let all = describe(&spans);
    let check = |decision: &str| {
        spans
            .iter()
            .find(|s| s.name == CHECK && s.attribute("decision") == Some(decision))
            .unwrap_or_else(|| panic!("no {decision} Check span:\n{all}"))
    };
    let envoy_parent = |span: &ReceivedSpan| {
        spans
            .iter()
            .find(|s| s.service == "envoy" && s.span_id == span.parent_span_id)
            .unwrap_or_else(|| panic!("{:?}'s parent is not Envoy's:\n{all}", span.name))
    };

    let allow = check("allow");
    assert_eq!(allow.attribute("status"), Some("200"), "{all}");
    assert_eq!(
        allow.attribute("sandbox.id"),
        Some(stack.sandbox_id()),
        "{all}"
    );
    assert_eq!(allow.attribute("port"), Some("3000"), "{all}");
    assert_eq!(allow.attribute("service.name"), Some("daytona-authz"));
    let parent = envoy_parent(allow);
    assert_eq!(parent.trace_id, allow.trace_id, "{all}");
    // Envoy's ext_authz call is the parent (its gRPC client span), inside Envoy's request span.
    assert!(
        parent.name.contains("envoy.service.auth.v3.Authorization"),
        "the parent is Envoy's {:?}, not its ext_authz call:\n{all}",
        parent.name
    );
    assert!(
        spans
            .iter()
            .any(|s| s.service == "envoy" && s.span_id == parent.parent_span_id),
        "the ext_authz call's parent is no Envoy span:\n{all}"
    );
    // The Daytona look-up the allowed request made, under its Check.
    let daytona = spans
        .iter()
        .find(|s| s.name == "daytona.preview_url" && s.parent_span_id == allow.span_id)
        .unwrap_or_else(|| panic!("no Daytona call under the allowed Check:\n{all}"));
    assert_eq!(daytona.trace_id, allow.trace_id);
    assert_eq!(daytona.attribute("http.response.status_code"), Some("200"));

    let deny = check("deny");
    assert_eq!(deny.attribute("status"), Some("401"), "{all}");
    assert_eq!(deny.attribute("reason"), Some("invalid_token"), "{all}");
    assert_eq!(
        deny.trace_id, client_trace,
        "Envoy continued the client's trace:\n{all}"
    );
    assert_ne!(
        deny.parent_span_id, "00f067aa0ba902b7",
        "Envoy's span is the parent"
    );
    assert_eq!(envoy_parent(deny).trace_id, client_trace);
    assert_ne!(allow.trace_id, deny.trace_id);

    // Nothing secret in any span, ours or Envoy's.
    for span in &spans {
        for (key, value) in &span.attributes {
            for secret in [good.as_str(), bad.as_str(), "query-never-in-a-span"] {
                assert!(
                    !value.contains(secret) && !key.contains(secret),
                    "{:?} of {} records a secret: {key}={value}",
                    span.name,
                    span.service
                );
            }
            assert!(
                !value.contains(&stack.double.sandbox.token),
                "preview token in {key}"
            );
        }
    }
}

#[tokio::test]
async fn without_an_otlp_endpoint_daytona_authz_exports_nothing() {
    let collector = OtlpReceiver::start().await;
    let mut stack = traced_stack(&collector, false).await;
    let token = stack.token(Some(vec![3000]));
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &bearer(&token))],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    stop_authz(&mut stack).await;
    // Envoy's span of the request arrives; none of ours ever does.
    let envoy = poll(EXPORT_TIMEOUT, || {
        let spans = collector.spans();
        async move {
            spans
                .iter()
                .any(|s| s.service == "envoy" && s.name.contains("Authorization"))
                .then_some(spans)
        }
    })
    .await
    .unwrap_or_else(|| panic!("no span from Envoy:\n{}", describe(&collector.spans())));
    assert!(
        envoy.iter().all(|s| s.service == "envoy"),
        "{}",
        describe(&envoy)
    );
}
