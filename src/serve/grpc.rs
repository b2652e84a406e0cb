//! Envoy's ext_authz `Check`, translated to and from [`crate::authz::decision`].
//!
//! A denial is a successful RPC carrying a denied `CheckResponse` (status, headers, JSON body); an
//! RPC error is reserved for the service itself failing, which Envoy turns into its
//! `status_on_error` (fail closed: nothing is forwarded).

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::audit;
use super::authorizer::{Authorizer, Outcome};
use crate::authz::decision::{self, Allow, Denial, LocalReply, RequestView};
use crate::authz::host::{Hosts, PreviewTarget};
use crate::authz::route::{Access, Route, RouteError};
use crate::daytona::PreviewSource;
use crate::metrics::Metrics;

/// Limits on what a `CheckRequest` may carry before we refuse to look at it. Envoy bounds
/// headers too (`max_request_headers_kb`); these make the service safe on its own.
const MAX_HEADERS: usize = 200;
const MAX_HEADER_BYTES: usize = 96 * 1024;
/// Entries of `context_extensions` looked at, at most (a route sets a handful).
const MAX_CONTEXT_EXTENSIONS: usize = 64;

/// Envoy's `Authorization` service: translates each `CheckRequest` for the [`Authorizer`],
/// its outcome into a `CheckResponse`, and logs and counts the decision.
pub struct AuthzService<S> {
    authorizer: Authorizer<S>,
    metrics: Arc<Metrics>,
}

impl<S: PreviewSource> AuthzService<S> {
    pub fn new(authorizer: Authorizer<S>, metrics: Arc<Metrics>) -> Self {
        AuthzService {
            authorizer,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl<S: PreviewSource> Authorization for AuthzService<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        // Disabled at its callsite unless spans are exported (`--otlp-endpoint`): then this and
        // every `span.is_disabled()` below are all that tracing costs a Check.
        let span = tracing::debug_span!(
            "check",
            otel.name = "ext_authz Check",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            decision = tracing::field::Empty,
            status = tracing::field::Empty,
            reason = tracing::field::Empty,
            sandbox.id = tracing::field::Empty,
            port = tracing::field::Empty,
            route = tracing::field::Empty,
        );
        let (metadata, _, mut check) = request.into_parts();
        let mut view = take_view(&mut check);
        if span.is_disabled() {
            // The request and its view stay where they are (borrowed, not moved into another
            // future): copying them cost a warm Check more than the rest of tracing.
            let (response, _) = self.answer(started, &check, &mut view, false).await;
            return Ok(Response::new(response));
        }
        // Before the span is first entered: the parent cannot change after.
        let _ = span.set_parent(trace_parent(&metadata, view.as_ref().ok()));
        let (response, decided) = self
            .answer(started, &check, &mut view, true)
            .instrument(span.clone())
            .await;
        decided.record(&span);
        Ok(Response::new(response))
    }
}

/// What a Check decided, for its span: never a token, a cookie or a query string.
struct Decided {
    decision: &'static str,
    status: u16,
    reason: &'static str,
    target: Option<PreviewTarget>,
    route: Option<String>,
}

impl Decided {
    fn record(&self, span: &tracing::Span) {
        span.record("decision", self.decision);
        span.record("status", self.status);
        span.record("reason", self.reason);
        if let Some(target) = &self.target {
            span.record("sandbox.id", target.sandbox_id.as_str());
            span.record("port", target.port);
        }
        if let Some(route) = &self.route {
            span.record("route", route.as_str());
        }
        if self.status >= 500 {
            span.record("otel.status_code", "error");
        }
    }
}

/// The trace a Check continues: Envoy's ext_authz call (the `traceparent` in the gRPC
/// metadata, its client span), else the request's own `traceparent` header as Envoy passed
/// it on, else none (a new trace).
fn trace_parent(
    metadata: &tonic::metadata::MetadataMap,
    request: Option<&RequestView>,
) -> opentelemetry::Context {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;

    struct Metadata<'a>(&'a tonic::metadata::MetadataMap);
    impl Extractor for Metadata<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            Vec::new()
        }
    }
    struct Headers<'a>(&'a RequestView);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            let mut values = self.0.headers.iter().filter(|(name, _)| name == key);
            values.next().map(|(_, value)| value.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            Vec::new()
        }
    }

    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    let envoy = propagator.extract(&Metadata(metadata));
    if envoy.span().span_context().is_valid() {
        return envoy;
    }
    match request {
        Some(request) => propagator.extract(&Headers(request)),
        None => opentelemetry::Context::new(),
    }
}

impl<S: PreviewSource> AuthzService<S> {
    /// The response to one Check, logged and counted, and what it decided (with its sandbox
    /// and port when `traced`).
    async fn answer(
        &self,
        started: std::time::Instant,
        check: &CheckRequest,
        view: &mut Result<RequestView, Denial>,
        traced: bool,
    ) -> (CheckResponse, Decided) {
        let policy = self.authorizer.policy();
        let client = check.get_client_address().cloned().unwrap_or_default();
        // Envoy's x-request-id (the one its access log and the upstream see), else its stream id.
        let request_id = view
            .as_ref()
            .ok()
            .and_then(|v| v.header_values("x-request-id").next().map(str::to_owned))
            .or_else(|| {
                let http = check.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
                Some(http.id.clone())
            })
            .unwrap_or_default();
        let outcome = match (&mut *view, route(check)) {
            (Ok(view), Ok(route)) => {
                view.route = route;
                self.authorizer.decide(view).await
            }
            (Ok(_), Err(denial)) => Err(denial),
            (Err(denial), _) => Err(denial.clone()),
        };
        let empty = RequestView::default();
        let request = view.as_ref().unwrap_or(&empty);
        let route = &request.route;
        // --audit-log: one line per decision, built only when it is on.
        let audit = |decision, status, reason: &str, detail, grant, rule| {
            let target = match &view {
                Ok(view) => policy.hosts.parse(&view.host).ok(),
                Err(_) => check_target(check, &policy.hosts),
            };
            audit::Record {
                decision,
                status,
                reason,
                detail,
                grant,
                rule,
                target: target.as_ref().map(|(t, _)| t),
                preview_domain: target.as_ref().map(|(_, domain)| *domain),
                route: route.name.as_deref(),
                method: view.as_ref().ok().map(|v| v.method.as_str()),
                path: view.as_ref().ok().map(|v| v.path.as_str()),
                request_id: &request_id,
                client: &client,
            }
            .log();
        };
        let (result, status, reason, response) = match outcome {
            Ok(Outcome::Forward(allow)) => {
                if route.access == Access::PreviewTokenOnly {
                    // Nobody's token was asked for: every such allow is on the record.
                    let target = policy.hosts.parse(&request.host).ok();
                    tracing::info!(
                        request_id,
                        client,
                        route = route.label(),
                        preview_domain = target.as_ref().map(|(_, domain)| *domain),
                        sandbox.id = target.as_ref().map(|(t, _)| t.sandbox_id.as_str()),
                        port = target.as_ref().map(|(t, _)| t.port),
                        "allowed without an end-user token (daytona_authz.access: preview-token-only)"
                    );
                } else {
                    tracing::debug!(
                        request_id,
                        client,
                        route = route.label(),
                        rule = allow.rule.as_deref(),
                        "allowed"
                    );
                }
                if policy.audit_log {
                    let rule = allow.rule.as_deref();
                    audit("allow", None, "ok", None, allow.grant.as_deref(), rule);
                }
                ("allow", 200, "ok", ok_response(allow))
            }
            Ok(Outcome::Reply(reply)) => {
                tracing::debug!(
                    request_id,
                    client,
                    route = route.label(),
                    status = reply.status,
                    reason = reply.reason,
                    "answered at the edge"
                );
                if policy.audit_log {
                    audit("reply", Some(reply.status), reply.reason, None, None, None);
                }
                let status = reply.status;
                ("reply", status, reply.reason, local_response(reply))
            }
            Err(denial) => {
                if policy.audit_log {
                    let detail = Some(denial.to_string());
                    audit(
                        "deny",
                        Some(denial.status()),
                        denial.code(),
                        detail,
                        None,
                        None,
                    );
                }
                let target = match &view {
                    Ok(view) => policy.hosts.parse(&view.host).ok(),
                    Err(_) => check_target(check, &policy.hosts),
                };
                if let Denial::BadRoute(error) = &denial {
                    tracing::error!(
                        request_id,
                        %error,
                        "refusing every request on this Envoy route: its ext_authz context_extensions \
                         cannot be used (fix the route; 500 until then)"
                    );
                }
                tracing::info!(
                    request_id,
                    client,
                    route = route.label(),
                    preview_domain = target.as_ref().map(|(_, domain)| *domain),
                    sandbox.id = target.as_ref().map(|(t, _)| t.sandbox_id.as_str()),
                    port = target.as_ref().map(|(t, _)| t.port),
                    status = denial.status(),
                    reason = %denial,
                    "denied"
                );
                let reply = decision::render(&denial, request, &policy);
                (
                    "deny",
                    denial.status(),
                    denial.code(),
                    local_response(reply),
                )
            }
        };
        self.metrics.decision(result, reason, started.elapsed());
        if let Some(name) = &route.name {
            self.metrics.route_decision(name, result, reason);
        }
        let decided = Decided {
            decision: result,
            status,
            reason,
            target: if traced {
                match &view {
                    Ok(view) => policy.hosts.parse(&view.host).ok().map(|(t, _)| t),
                    Err(_) => check_target(check, &policy.hosts).map(|(t, _)| t),
                }
            } else {
                None
            },
            route: if traced { route.name.clone() } else { None },
        };
        (response, decided)
    }
}

/// The route's settings from Envoy's `context_extensions` (its ext_authz per-route
/// `check_settings`): refused whole when one of our keys is unknown or malformed.
pub fn route(check: &CheckRequest) -> Result<Route, Denial> {
    let Some(attributes) = &check.attributes else {
        return Ok(Route::default());
    };
    if attributes.context_extensions.len() > MAX_CONTEXT_EXTENSIONS {
        return Err(Denial::BadRoute(RouteError::BadValue {
            key: "context_extensions",
            value: attributes.context_extensions.len().to_string(),
            why: "entries are too many",
        }));
    }
    Route::from_extensions(
        attributes
            .context_extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(Denial::BadRoute)
}

fn check_target<'a>(check: &CheckRequest, hosts: &'a Hosts) -> Option<(PreviewTarget, &'a str)> {
    let http = check.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    hosts.parse(&http.host).ok()
}

/// The request as the decision sees it, from either header encoding Envoy may use
/// (`header_map` with `encode_raw_headers: true`, which keeps repeated headers apart, or the
/// joined `headers` map). Refused when the headers are over our limits or Envoy sent no HTTP
/// attributes (then there is no host to authorize).
pub fn view(check: &CheckRequest) -> Result<RequestView, Denial> {
    let route = route(check)?;
    let mut view = take_view(&mut check.clone())?;
    view.route = route;
    Ok(view)
}

/// [`view`] without copying: the strings are moved out of `check` (the hot path owns it). On an
/// error `check` keeps its host, for the denial's log line.
pub fn take_view(check: &mut CheckRequest) -> Result<RequestView, Denial> {
    let http = check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .ok_or(Denial::BadHost(crate::authz::host::HostError::Malformed))?;
    let mut headers = Vec::new();
    let mut bytes = 0usize;
    let mut push = |mut name: String, value: String| -> Result<(), Denial> {
        bytes += name.len() + value.len();
        if headers.len() >= MAX_HEADERS || bytes > MAX_HEADER_BYTES {
            return Err(Denial::HeadersTooLarge);
        }
        // Envoy sends lower-case names; anything else is made so.
        name.make_ascii_lowercase();
        headers.push((name, value));
        Ok(())
    };
    match &mut http.header_map {
        Some(map) if !map.headers.is_empty() => {
            for header in &mut map.headers {
                let value = if header.raw_value.is_empty() {
                    std::mem::take(&mut header.value)
                } else {
                    match String::from_utf8(std::mem::take(&mut header.raw_value)) {
                        Ok(text) => text,
                        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    }
                };
                push(std::mem::take(&mut header.key), value)?;
            }
        }
        _ => {
            for (name, value) in std::mem::take(&mut http.headers) {
                push(name, value)?;
            }
        }
    }
    Ok(RequestView {
        method: std::mem::take(&mut http.method),
        scheme: std::mem::take(&mut http.scheme),
        host: std::mem::take(&mut http.host),
        path: std::mem::take(&mut http.path),
        headers,
        route: Route::NONE,
    })
}

/// The `CheckRequest` Envoy sends for `request` (`encode_raw_headers: true`): the inverse of
/// [`view`], for tests and benchmarks. Envoy's stream id is the `x-request-id` header, if any.
pub fn check_request(request: &RequestView) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: request
                        .header_values("x-request-id")
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    method: request.method.clone(),
                    scheme: request.scheme.clone(),
                    host: request.host.clone(),
                    path: request.path.clone(),
                    protocol: "HTTP/1.1".into(),
                    header_map: Some(HeaderMap {
                        headers: request
                            .headers
                            .iter()
                            .map(|(key, value)| HeaderValue {
                                key: key.clone(),
                                value: String::new(),
                                raw_value: value.as_bytes().to_vec(),
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        // Replace whatever the client sent: APPEND would put a second copy next to the client's.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

pub fn ok_response(allow: Allow) -> CheckResponse {
    let mut headers: Vec<HeaderValueOption> = allow
        .set_headers
        .into_iter()
        .map(|(k, v)| header(k, v))
        .chain(
            allow
                .identity_headers
                .into_iter()
                .map(|(k, v)| header(&k, v)),
        )
        .collect();
    // Not `query_parameters_to_remove`: Envoy then rebuilds the whole query (reordered, `?a`
    // as `?a=`), which breaks apps that sign or hash it. The new target keeps every other byte.
    if let Some(path) = allow.path {
        headers.push(header(":path", path));
    }
    let ok = OkHttpResponse {
        headers,
        headers_to_remove: allow.remove_headers,
        ..Default::default()
    };
    let mut response = CheckResponse::with_status(Status::ok(""));
    response.set_http_response(HttpResponse::OkResponse(ok));
    response
}

/// A reply Envoy sends itself (a denial, a preflight answer, a redirect). In ext_authz terms
/// every one of these is a "denied" response: the request is not forwarded.
pub fn local_response(reply: LocalReply) -> CheckResponse {
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(reply.status),
        }),
        headers: reply
            .headers
            .into_iter()
            .map(|(k, v)| {
                let repeated = k == "set-cookie";
                let mut option = header(k, v);
                if repeated {
                    // A local reply has no client copy to replace, and two cookies may be
                    // cleared (host-only and domain-wide): each its own header.
                    option.append_action = HeaderAppendAction::AppendIfExistsOrAdd.into();
                }
                option
            })
            .collect(),
        body: reply.body,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::PermissionDenied.into(),
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        dynamic_metadata: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str, raw: &[(&str, &str)]) -> CheckRequest {
        check_request(&RequestView::new("GET", host, "/").with_headers(raw))
    }

    #[test]
    fn raw_headers_keep_repeats_apart() {
        let view = view(&check(
            "h",
            &[("Authorization", "a"), ("authorization", "b")],
        ))
        .unwrap();
        assert_eq!(
            view.header_values("authorization").collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn oversized_header_sets_are_refused() {
        let many: Vec<(String, String)> = (0..MAX_HEADERS + 1)
            .map(|i| (format!("x-{i}"), "v".to_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            view(&check("h", &refs)).err(),
            Some(Denial::HeadersTooLarge)
        );
        let big = "v".repeat(MAX_HEADER_BYTES + 1);
        assert_eq!(
            view(&check("h", &[("x-big", &big)])).err(),
            Some(Denial::HeadersTooLarge)
        );
    }

    #[test]
    fn a_local_reply_is_a_denied_response_with_its_status_headers_and_body() {
        let response = local_response(LocalReply {
            reason: "invalid_token",
            status: 401,
            headers: vec![("www-authenticate", "Bearer".into())],
            body: "{}".into(),
        });
        assert_ne!(response.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not a denial");
        };
        assert_eq!(denied.status.unwrap().code, 401);
        assert_eq!(denied.body, "{}");
        let header = denied.headers[0].header.as_ref().unwrap();
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("www-authenticate", "Bearer")
        );
    }
}
