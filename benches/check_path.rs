//! The pure path of one `Check`, without I/O: Envoy's `CheckRequest` → request view → host parse,
//! token verify and decision → `CheckResponse`, as `grpc::AuthzService::check` runs it around
//! the (cached) preview-token look-up. `cargo bench --bench check_path`; `cargo test` runs each
//! once to prove it still works. Regressions show up as Criterion's "change" lines in review.
//!
//! End-to-end figures (Envoy, the gRPC hop, the cache, the baselines) are `bench/run.sh`'s.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use daytona_authz::authz::decision::{
    self, DEFAULT_COOKIE_NAME, Lookups, NoRevocations, Policy, RequestView, SandboxAnswer, Verdict,
};
use daytona_authz::authz::host;
use daytona_authz::authz::policy::{RequestFacts, RuleSpec, Rules, SandboxInfo, TokenClaims};
use daytona_authz::authz::token::{Verifier, now};
use daytona_authz::daytona::{Preview, Upstream};
use daytona_authz::serve::grpc;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

// The allocator daytona-authz runs with (src/main.rs): allocation is part of the path's cost.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SECRET: &[u8] = b"bench-jwt-secret-0123456789abcdef-0123456789";
const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
const DOMAIN: &str = "preview.example.com";

fn policy() -> Policy {
    Policy::new(DOMAIN, Verifier::hs256(SECRET, None, None))
}

/// An access token as README documents it, signed as any issuer would.
fn token() -> String {
    token_expiring(now() + 3600)
}

/// The same token with another `exp`: a token the verifier has not seen before.
fn token_expiring(exp: u64) -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        sandbox_id: &'static str,
        exp: u64,
        ports: [u16; 1],
    }
    let claims = Claims {
        sandbox_id: ID,
        exp,
        ports: [3000],
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn host() -> String {
    format!("3000-{ID}.{DOMAIN}")
}

/// What Envoy sends for `GET /` from curl (`encode_raw_headers: true`), plus `extra` headers.
fn check_request(extra: &[(&str, String)]) -> CheckRequest {
    let host = host();
    let mut headers: Vec<(&str, String)> = vec![
        (":authority", host.clone()),
        (":path", "/".into()),
        (":method", "GET".into()),
        (":scheme", "http".into()),
        ("user-agent", "curl/8.5.0".into()),
        ("accept", "*/*".into()),
        ("x-forwarded-for", "127.0.0.1".into()),
        ("x-forwarded-proto", "http".into()),
        ("x-envoy-internal", "true".into()),
        (
            "x-request-id",
            "6f3c2a1e-8d4b-4c7a-9e21-3b5d7f9a1c0e".into(),
        ),
        ("x-forwarded-host", host.clone()),
    ];
    headers.extend(extra.iter().cloned());
    grpc::check_request(&RequestView::new("GET", &host, "/").with_headers(&headers))
}

fn preview() -> Preview {
    Preview {
        token: "abcdefghijklmnopqrstuvwxyz012345".into(),
        upstream: Upstream {
            tls: true,
            authority: format!("3000-{ID}.proxy.daytona.works"),
        },
    }
}

/// The two rules of README's "Policy" section.
fn with_rules() -> Policy {
    let rules = Rules::compile(&[
        RuleSpec {
            name: "team members open their team's sandboxes".into(),
            allow: r#"token.groups.exists(g, g == sandbox.labels["team"])"#.into(),
        },
        RuleSpec {
            name: "platform admins open everything, port 22222 excepted".into(),
            allow: r#""platform-admins" in token.groups && request.port != 22222"#.into(),
        },
    ])
    .unwrap();
    let mut policy = policy();
    policy.verifier = policy.verifier.with_policy_identities(true);
    policy.rules = Some(Arc::new(rules));
    policy
}

/// A token naming no sandbox, with an identity provider's usual claims and `groups`.
fn sso_token() -> String {
    let claims = serde_json::json!({
        "sub": "alice", "email": "alice@example.com", "name": "Alice Example",
        "groups": ["staff", "engineering", "team-c", "team-a"],
        "iss": "https://idp.example.com", "aud": "daytona-authz", "exp": now() + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// The sandbox as Daytona describes it (cached by the authorizer).
fn described() -> Lookups {
    let info = SandboxInfo::new(
        ID.into(),
        "web".into(),
        "org".into(),
        "started".into(),
        std::collections::BTreeMap::from([
            ("team".to_owned(), "team-a".to_owned()),
            ("env".to_owned(), "dev".to_owned()),
        ]),
    )
    .unwrap();
    Lookups {
        sandbox: Some(SandboxAnswer::Found(Arc::new(info))),
        ..Lookups::default()
    }
}

/// The whole pure path for one request, as `Check` runs it (minus the cache look-up).
fn check_path(request: &CheckRequest, policy: &Policy, preview: &Preview) -> usize {
    check_path_with(request, policy, preview, &Lookups::default())
}

/// The same with look-ups already answered (the sandbox's description, for the policy).
fn check_path_with(
    request: &CheckRequest,
    policy: &Policy,
    preview: &Preview,
    lookups: &Lookups,
) -> usize {
    let view = grpc::view(request).expect("within limits");
    let response = match decision::authorize(&view, policy, now(), lookups, &NoRevocations) {
        Ok(Verdict::Forward(authorized)) => {
            grpc::ok_response(decision::allow(&view, &authorized, preview, policy, now()))
        }
        Ok(Verdict::Reply(reply)) => grpc::local_response(reply),
        Ok(Verdict::Lookup(_)) => unreachable!("an HS256 token needs no more I/O"),
        Err(denial) => grpc::local_response(decision::render(&denial, &view, policy)),
    };
    // Something of the response, so none of it is optimised away.
    usize::from(response.http_response.is_some())
}

fn benches(c: &mut Criterion) {
    let policy = policy();
    let preview = preview();
    let token = token();
    let bearer = check_request(&[("authorization", format!("Bearer {token}"))]);
    let cookie = check_request(&[(
        "cookie",
        format!("theme=dark; {DEFAULT_COOKIE_NAME}={token}"),
    )]);
    let anonymous = check_request(&[]);

    let mut group = c.benchmark_group("check_path");
    group.bench_function("allow_bearer", |b| {
        b.iter(|| check_path(black_box(&bearer), &policy, &preview))
    });
    group.bench_function("allow_cookie", |b| {
        b.iter(|| check_path(black_box(&cookie), &policy, &preview))
    });
    group.bench_function("deny_missing_token", |b| {
        b.iter(|| check_path(black_box(&anonymous), &policy, &preview))
    });
    // A token naming no sandbox, the policy deciding on the (cached) sandbox description: the
    // warm path of single sign-on.
    let ruled = with_rules();
    let sso = check_request(&[("authorization", format!("Bearer {}", sso_token()))]);
    let lookups = described();
    assert_eq!(check_path_with(&sso, &ruled, &preview, &lookups), 1);
    group.bench_function("allow_bearer_by_policy", |b| {
        b.iter(|| check_path_with(black_box(&sso), &ruled, &preview, &lookups))
    });
    group.finish();

    let mut group = c.benchmark_group("parts");
    let public_host = host();
    group.bench_function("host_parse", |b| {
        b.iter(|| host::parse(black_box(&public_host), DOMAIN))
    });
    // A token seen before: its grant is remembered (see `Verifier::verify`).
    group.bench_function("token_verify", |b| {
        b.iter(|| policy.verifier.verify(black_box(&token), now()))
    });
    // A token never seen before: signature, claims, and remembering it.
    let mut exp = now() + 3600;
    group.bench_function("token_verify_first_use", |b| {
        b.iter_batched(
            || {
                exp += 1;
                token_expiring(exp)
            },
            |fresh| policy.verifier.verify(black_box(&fresh), now()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("request_view", |b| {
        b.iter(|| grpc::view(black_box(&bearer)))
    });
    // The rules alone, for a token they allow by its second rule and one they deny (every rule
    // evaluated, then the closest searched).
    let rules = ruled.rules.clone().unwrap();
    let member = TokenClaims::new(
        serde_json::json!({"sub": "a", "groups": ["staff", "platform-admins"]})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    let Some(SandboxAnswer::Found(sandbox)) = &lookups.sandbox else {
        unreachable!()
    };
    let facts = RequestFacts {
        port: 3000,
        method: "GET",
        path: "/",
        route: "",
    };
    group.bench_function("policy_evaluate_allow", |b| {
        b.iter(|| rules.evaluate(black_box(&member), sandbox, &facts))
    });
    // A token the rules have not seen yet (each new token is a new key of the outcome memory):
    // what the first request of a signed-in person costs, the rules evaluated in full.
    let claims = serde_json::json!({"sub": "a", "groups": ["staff", "platform-admins"]});
    group.bench_function("policy_evaluate_allow_first", |b| {
        b.iter_batched(
            || TokenClaims::new(claims.as_object().unwrap()).unwrap(),
            |fresh| rules.evaluate(black_box(&fresh), sandbox, &facts),
            BatchSize::SmallInput,
        )
    });
    let outsider = TokenClaims::new(
        serde_json::json!({"sub": "b", "groups": ["staff", "team-z"]})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    group.bench_function("policy_evaluate_deny", |b| {
        b.iter(|| rules.evaluate(black_box(&outsider), sandbox, &facts))
    });
    group.finish();
}

criterion_group!(check, benches);
criterion_main!(check);
