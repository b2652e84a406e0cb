//! One request's whole decision, I/O included. The core ([`crate::authz::decision`]) is a pure
//! function that either decides or asks for a look-up (introspect this token, refetch the JWKS,
//! describe this sandbox for the `[[policy]]` rules, from the same cache as preview tokens);
//! the [`Authorizer`] answers the look-up and asks again, at most [`MAX_LOOKUPS`] times, then
//! fetches the preview token for an authorized request. Every source of I/O sits behind a trait
//! ([`PreviewSource`], [`Introspect`], [`KeySource`], [`RevocationView`]) so tests put fakes at
//! the seam.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::authz::decision::{
    self, Allow, Denial, Introspected, LocalReply, Lookup, Lookups, NoRevocations, Policy,
    RequestView, RevocationStatus, RevocationView, SandboxAnswer, Verdict,
};
use crate::authz::port_limit::{PortLimit, SandboxLimit};
use crate::authz::preview::DaytonaError;
use crate::authz::token::{self, JwkKey};
use crate::daytona::{PreviewCache, PreviewSource};
use crate::identity::introspection::{Introspection, IntrospectionError, Introspector};
use crate::identity::jwks::Jwks;
use crate::identity::revocation::{self, Revocations, RevokedBy};

/// Look-ups per request at most: one introspection per cookie candidate and one JWKS refresh.
pub const MAX_LOOKUPS: usize = 8;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Token introspection (RFC 7662) as the decision needs it: failures are `Unavailable` (and
/// logged by the implementation), never an error the caller must handle.
pub trait Introspect: Send + Sync + 'static {
    fn answer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Introspected>;
}

/// A key set that is fetched again when a token names a key it does not hold.
pub trait KeySource: Send + Sync + 'static {
    /// The new keys when a refetch happened and changed them (the source rate-limits itself).
    fn refetch(&self) -> BoxFuture<'_, Option<Arc<Vec<JwkKey>>>>;
}

impl Introspect for Introspector {
    fn answer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Introspected> {
        Box::pin(async move {
            match self.introspect(token).await {
                Ok(Introspection::Active(claims)) => Introspected::Active(claims),
                Ok(Introspection::Inactive) => Introspected::Inactive,
                // A flood of made-up tokens is refused by the thousand: counted, not logged each.
                Err(error) if matches!(*error, IntrospectionError::Shed(_)) => {
                    tracing::debug!(%error, "refusing the request");
                    Introspected::Unavailable
                }
                Err(error) => {
                    tracing::warn!(%error, "token introspection failed; refusing the request");
                    Introspected::Unavailable
                }
            }
        })
    }
}

impl KeySource for Jwks {
    fn refetch(&self) -> BoxFuture<'_, Option<Arc<Vec<JwkKey>>>> {
        Box::pin(async move { self.refresh_for_unknown_kid().await.then(|| self.keys()) })
    }
}

impl RevocationView for Revocations {
    fn revocation(
        &self,
        jti: Option<&str>,
        sandbox_id: &str,
        subject: Option<&str>,
        now: u64,
    ) -> RevocationStatus {
        match self.check_token(jti, sandbox_id, subject, now) {
            Ok(revocation::Status::Active) => RevocationStatus::Active,
            // A revoked person's tokens are revoked tokens (401, "revoked").
            Ok(revocation::Status::Revoked(RevokedBy::Token | RevokedBy::Subject)) => {
                RevocationStatus::TokenRevoked
            }
            Ok(revocation::Status::Revoked(RevokedBy::Sandbox)) => RevocationStatus::SandboxRevoked,
            Err(_) => RevocationStatus::Unknown,
        }
    }
}

/// The identity look-ups that need I/O, as configured (each optional).
#[derive(Clone, Default)]
pub struct Sources {
    pub introspection: Option<Arc<dyn Introspect>>,
    pub keys: Option<Arc<dyn KeySource>>,
    pub revocations: Option<Arc<dyn RevocationView + Send + Sync>>,
}

/// Puts freshly fetched JWKS keys into the policy.
pub fn install_jwks(policy: &ArcSwap<Policy>, keys: &[JwkKey]) {
    policy.rcu(|current| {
        let mut next = Policy::clone(current);
        next.verifier = next.verifier.clone().with_jwks(keys.to_vec());
        next
    });
}

/// What Envoy is told to do with a request that is not denied.
#[derive(Debug)]
pub enum Outcome {
    Forward(Allow),
    Reply(LocalReply),
}

pub struct Authorizer<S> {
    /// Swapped whole when keys change (SIGHUP, JWKS refresh); each decision uses one snapshot.
    policy: Arc<ArcSwap<Policy>>,
    previews: Arc<PreviewCache<S>>,
    /// Distinct ports per sandbox, checked before the preview-token look-up.
    ports: Arc<PortLimit>,
    /// Asks per person (tokens the rules decide) for sandboxes Daytona does not know, checked
    /// before Daytona is asked about a sandbox.
    people: Arc<SandboxLimit>,
    sources: Sources,
}

impl<S: PreviewSource> Authorizer<S> {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        previews: Arc<PreviewCache<S>>,
        ports: Arc<PortLimit>,
        people: Arc<SandboxLimit>,
        sources: Sources,
    ) -> Self {
        Authorizer {
            policy,
            previews,
            ports,
            people,
            sources,
        }
    }

    /// The policy decisions use now.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The whole decision for one request, I/O included.
    pub async fn decide(&self, request: &RequestView) -> Result<Outcome, Denial> {
        let revocations: &(dyn RevocationView + Send + Sync) = match &self.sources.revocations {
            Some(store) => store.as_ref(),
            None => &NoRevocations,
        };
        let mut lookups = Lookups::default();
        for _ in 0..MAX_LOOKUPS {
            let policy = self.policy.load_full();
            let verdict =
                decision::authorize(request, &policy, token::now(), &lookups, revocations)?;
            let authorized = match verdict {
                Verdict::Forward(authorized) => authorized,
                Verdict::Reply(reply) => return Ok(Outcome::Reply(reply)),
                Verdict::Lookup(Lookup::Introspect(token)) => {
                    let answer = match &self.sources.introspection {
                        Some(introspection) => introspection.answer(&token).await,
                        None => Introspected::Unavailable,
                    };
                    lookups.introspected.push((token, answer));
                    continue;
                }
                Verdict::Lookup(Lookup::RefreshJwks) => {
                    if let Some(keys) = &self.sources.keys
                        && let Some(keys) = keys.refetch().await
                    {
                        install_jwks(&self.policy, &keys);
                    }
                    lookups.jwks_refreshed = true;
                    continue;
                }
                Verdict::Lookup(Lookup::Sandbox(sandbox_id, person)) => {
                    // Only Daytona's "no such sandbox" counts for the person's budget: a walk of
                    // made-up ids is stopped (and each answered once per window), while opening
                    // many real sandboxes, or ones already described, costs nothing.
                    let answer = match self.previews.cached_sandbox(&sandbox_id) {
                        Some(answer) => answer,
                        None if self.people.known_unknown(&person, &sandbox_id) => {
                            Err(Arc::new(DaytonaError::NotFound))
                        }
                        None => {
                            self.people.admit(&person, &sandbox_id)?;
                            let answer = self.previews.sandbox(&sandbox_id).await;
                            let unknown = answer.as_ref().is_err_and(|e| {
                                matches!(**e, DaytonaError::NotFound | DaytonaError::BadRequest(_))
                            });
                            self.people
                                .settled(&person, &sandbox_id, unknown, answer.is_ok());
                            answer
                        }
                    };
                    let answer = match answer {
                        Ok(info) => SandboxAnswer::Found(info),
                        Err(error) => {
                            if !matches!(*error, DaytonaError::NotFound) {
                                tracing::warn!(%error, sandbox.id = %sandbox_id, "cannot describe the sandbox for the policy; refusing the request");
                            }
                            SandboxAnswer::Failed((*error).clone())
                        }
                    };
                    lookups.sandbox = Some(answer);
                    continue;
                }
            };
            // One sandbox cannot take more than its share of Envoy's DNS cache (nor make one
            // Daytona call per port it walks).
            self.ports.admit(&authorized.target)?;
            let preview = self
                .previews
                .get(&authorized.target)
                .await
                .map_err(|e| Denial::Daytona((*e).clone()))?;
            return Ok(Outcome::Forward(decision::allow(
                request,
                &authorized,
                &preview,
                &policy,
                token::now(),
            )));
        }
        Err(Denial::StatusUnknown("identity look-ups"))
    }
}

/// `AuthzService::check` as Envoy calls it, with fakes at every seam: Daytona, introspection,
/// the JWKS and the revocation store.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, HttpResponse};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
    use tonic::Request;

    use super::*;
    use crate::authz::host::PreviewTarget;
    use crate::authz::preview::{DaytonaError, Preview, Upstream};
    use crate::authz::token::{Claims, Signer, Verifier, now};
    use crate::metrics::Metrics;
    use crate::serve::grpc::{AuthzService, check_request};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const DOMAIN: &str = "preview.example.com";
    const PREVIEW_TOKEN: &str = "daytona-preview-token-0123456789";

    /// Daytona: the same preview for every port (or `error`), counting calls; sandboxes
    /// described with the team label `team` (or `describe_error`), counting those calls too.
    #[derive(Default)]
    struct FakeDaytona {
        calls: AtomicUsize,
        error: Option<DaytonaError>,
        described: AtomicUsize,
        team: &'static str,
        describe_error: Option<DaytonaError>,
    }

    impl PreviewSource for FakeDaytona {
        async fn sandbox(
            &self,
            sandbox_id: &crate::authz::host::SandboxId,
        ) -> Result<crate::daytona::SandboxInfo, DaytonaError> {
            self.described.fetch_add(1, SeqCst);
            // Long enough for concurrent requests to find the call in flight.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(error) = &self.describe_error {
                return Err(error.clone());
            }
            crate::daytona::SandboxInfo::new(
                sandbox_id.as_str().into(),
                "web".into(),
                "org".into(),
                "started".into(),
                std::collections::BTreeMap::from([("team".to_owned(), self.team.to_owned())]),
            )
            .map_err(DaytonaError::BadAnswer)
        }

        async fn fetch(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
            self.calls.fetch_add(1, SeqCst);
            match &self.error {
                Some(error) => Err(error.clone()),
                None => Ok(Preview {
                    token: PREVIEW_TOKEN.into(),
                    upstream: Upstream {
                        tls: true,
                        authority: format!("{target}.proxy.daytona.works"),
                    },
                }),
            }
        }
    }

    /// Introspection: tokens in `active` grant sandbox `ID`, others are inactive (or everything
    /// is unavailable); records what it was asked.
    #[derive(Default)]
    struct FakeIntrospection {
        active: Vec<&'static str>,
        unavailable: bool,
        asked: Mutex<Vec<String>>,
    }

    impl Introspect for FakeIntrospection {
        fn answer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Introspected> {
            self.asked.lock().unwrap().push(token.to_owned());
            let answer = if self.unavailable {
                Introspected::Unavailable
            } else if self.active.contains(&token) {
                let claims =
                    serde_json::json!({"active": true, "sandbox_id": ID, "exp": now() + 600});
                Introspected::Active(claims.as_object().unwrap().clone())
            } else {
                Introspected::Inactive
            };
            Box::pin(async move { answer })
        }
    }

    /// A JWKS: every refetch yields `keys`, counted.
    struct FakeKeys {
        keys: Arc<Vec<JwkKey>>,
        refetches: AtomicUsize,
    }

    impl KeySource for FakeKeys {
        fn refetch(&self) -> BoxFuture<'_, Option<Arc<Vec<JwkKey>>>> {
            self.refetches.fetch_add(1, SeqCst);
            Box::pin(async move { Some(Arc::clone(&self.keys)) })
        }
    }

    /// A revocation store that revoked the sandboxes listed.
    struct FakeRevocations(Vec<&'static str>);

    impl RevocationView for FakeRevocations {
        fn revocation(
            &self,
            _jti: Option<&str>,
            sandbox_id: &str,
            _subject: Option<&str>,
            _now: u64,
        ) -> RevocationStatus {
            if self.0.contains(&sandbox_id) {
                RevocationStatus::SandboxRevoked
            } else {
                RevocationStatus::Active
            }
        }
    }

    fn policy() -> Policy {
        Policy::new(DOMAIN, Verifier::hs256(SECRET, None, None))
    }

    fn service(
        policy: Policy,
        sources: Sources,
        daytona: &Arc<FakeDaytona>,
    ) -> AuthzService<FakeDaytona> {
        let metrics = Arc::new(Metrics::new());
        let previews = Arc::new(PreviewCache::new(
            Arc::clone(daytona),
            Duration::from_secs(60),
            Duration::ZERO,
            100,
            Arc::clone(&metrics),
        ));
        let ports = Arc::new(PortLimit::new(10, Duration::from_secs(60), 100));
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let people = Arc::new(SandboxLimit::new(64, Duration::from_secs(60), 100));
        AuthzService::new(
            Authorizer::new(policy, previews, ports, people, sources),
            metrics,
        )
    }

    fn hs256() -> String {
        Signer::hs256(SECRET)
            .sign(&Claims {
                sandbox_id: ID.into(),
                exp: now() + 600,
                ports: Some(vec![3000]),
                iss: None,
                aud: None,
            })
            .unwrap()
    }

    /// `GET /` on port 3000 of sandbox `ID` with `Authorization: Bearer <token>`.
    fn bearer(token: &str) -> CheckRequest {
        check_request(
            &RequestView::new("GET", &format!("3000-{ID}.{DOMAIN}"), "/")
                .with_header("authorization", &format!("Bearer {token}")),
        )
    }

    /// The status Envoy answers with (200: forwarded) and the headers it sets: on the request
    /// it forwards, or on its own reply.
    async fn send(
        service: &AuthzService<FakeDaytona>,
        request: CheckRequest,
    ) -> (u16, Vec<(String, String)>) {
        let response = service
            .check(Request::new(request))
            .await
            .unwrap()
            .into_inner();
        let pairs = |headers: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
            headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect::<Vec<_>>()
        };
        match response.http_response.unwrap() {
            HttpResponse::OkResponse(ok) => (200, pairs(&ok.headers)),
            HttpResponse::DeniedResponse(denied) => (
                u16::try_from(denied.status.unwrap().code).unwrap(),
                pairs(&denied.headers),
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn has(headers: &[(String, String)], name: &str, value: &str) -> bool {
        headers.iter().any(|(n, v)| n == name && v == value)
    }

    #[tokio::test]
    async fn a_granted_request_is_forwarded_with_the_preview_token_fetched_once() {
        let daytona = Arc::new(FakeDaytona::default());
        let service = service(policy(), Sources::default(), &daytona);
        for _ in 0..3 {
            let (status, headers) = send(&service, bearer(&hs256())).await;
            assert_eq!(status, 200);
            assert!(
                has(&headers, "x-daytona-preview-token", PREVIEW_TOKEN),
                "{headers:?}"
            );
            assert!(
                has(&headers, "x-daytona-skip-preview-warning", "true"),
                "{headers:?}"
            );
        }
        assert_eq!(daytona.calls.load(SeqCst), 1, "cached after the first");
    }

    #[tokio::test]
    async fn nothing_reaches_daytona_before_the_caller_is_authorized() {
        let daytona = Arc::new(FakeDaytona::default());
        let revoked = Sources {
            revocations: Some(Arc::new(FakeRevocations(vec![ID]))),
            ..Sources::default()
        };
        let no_token = check_request(&RequestView::new(
            "GET",
            &format!("3000-{ID}.{DOMAIN}"),
            "/",
        ));
        assert_eq!(
            send(&service(policy(), Sources::default(), &daytona), no_token)
                .await
                .0,
            401
        );
        assert_eq!(
            send(
                &service(policy(), Sources::default(), &daytona),
                bearer("a.b.c")
            )
            .await
            .0,
            401
        );
        assert_eq!(
            send(&service(policy(), revoked, &daytona), bearer(&hs256()))
                .await
                .0,
            403
        );
        assert_eq!(daytona.calls.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn daytona_failures_deny_and_nothing_is_forwarded() {
        for (error, status) in [
            (DaytonaError::NotFound, 404),
            (DaytonaError::Unavailable("down".into()), 503),
            (DaytonaError::Unauthorized(401), 502),
            (DaytonaError::BadAnswer("odd".into()), 502),
        ] {
            let daytona = Arc::new(FakeDaytona {
                error: Some(error.clone()),
                ..FakeDaytona::default()
            });
            let (got, headers) = send(
                &service(policy(), Sources::default(), &daytona),
                bearer(&hs256()),
            )
            .await;
            assert_eq!(got, status, "{error:?}");
            assert!(!headers.iter().any(|(n, _)| n == "x-daytona-preview-token"));
        }
    }

    #[tokio::test]
    async fn an_opaque_token_is_introspected_once_and_the_answer_decides() {
        let mut policy = policy();
        policy.introspection = true;
        let introspection = Arc::new(FakeIntrospection {
            active: vec!["opaque-good"],
            ..FakeIntrospection::default()
        });
        let sources = Sources {
            introspection: Some(Arc::clone(&introspection) as _),
            ..Sources::default()
        };
        let daytona = Arc::new(FakeDaytona::default());
        let service = service(policy.clone(), sources, &daytona);
        assert_eq!(send(&service, bearer("opaque-good")).await.0, 200);
        assert_eq!(send(&service, bearer("opaque-bad")).await.0, 401);
        assert_eq!(
            *introspection.asked.lock().unwrap(),
            ["opaque-good", "opaque-bad"]
        );
        // Unreachable introspection fails closed; none configured is the same.
        let down = Sources {
            introspection: Some(Arc::new(FakeIntrospection {
                unavailable: true,
                ..FakeIntrospection::default()
            })),
            ..Sources::default()
        };
        let daytona = Arc::new(FakeDaytona::default());
        assert_eq!(
            send(
                &self::service(policy.clone(), down, &daytona),
                bearer("opaque-good")
            )
            .await
            .0,
            503
        );
        assert_eq!(
            send(
                &self::service(policy, Sources::default(), &daytona),
                bearer("opaque-good")
            )
            .await
            .0,
            503
        );
        assert_eq!(daytona.calls.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn every_cookie_candidate_is_introspected_at_most_once_within_the_bound() {
        let mut policy = policy();
        policy.introspection = true;
        let introspection = Arc::new(FakeIntrospection {
            active: vec!["opaque-4"],
            ..FakeIntrospection::default()
        });
        let sources = Sources {
            introspection: Some(Arc::clone(&introspection) as _),
            ..Sources::default()
        };
        let daytona = Arc::new(FakeDaytona::default());
        let service = service(policy, sources, &daytona);
        // As many cookies of ours as the extractor considers (four), the good one last: a
        // navigation, so the cookie may be used.
        let cookies = (1..=4)
            .map(|n| format!("daytona_authz=opaque-{n}"))
            .collect::<Vec<_>>()
            .join("; ");
        let request = RequestView::new("GET", &format!("3000-{ID}.{DOMAIN}"), "/")
            .with_header("sec-fetch-mode", "navigate")
            .with_header("cookie", &cookies);
        assert_eq!(send(&service, check_request(&request)).await.0, 200);
        let asked = introspection.asked.lock().unwrap().clone();
        assert_eq!(asked, ["opaque-1", "opaque-2", "opaque-3", "opaque-4"]);
        assert!(asked.len() < MAX_LOOKUPS);
    }

    /// An ES256 key pair with `kid`: the signing key and the key as a JWKS would hold it.
    fn es256(kid: &str) -> (EncodingKey, JwkKey) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let key = JwkKey {
            kid: Some(kid.into()),
            algorithm: Algorithm::ES256,
            any_rsa: false,
            key: DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).unwrap(),
        };
        (signing, key)
    }

    fn signed(kid: &str, key: &EncodingKey) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = serde_json::json!({"sandbox_id": ID, "exp": now() + 600, "ports": [3000]});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    #[tokio::test]
    async fn a_token_naming_an_unknown_key_refetches_the_jwks_once_and_then_verifies() {
        let (rotated, rotated_key) = es256("k2");
        let (_, old_key) = es256("k1");
        let mut policy = policy();
        policy.jwks = true;
        policy.verifier = policy.verifier.with_jwks(vec![old_key]);
        let keys = Arc::new(FakeKeys {
            keys: Arc::new(vec![rotated_key]),
            refetches: AtomicUsize::new(0),
        });
        let sources = Sources {
            keys: Some(Arc::clone(&keys) as _),
            ..Sources::default()
        };
        let daytona = Arc::new(FakeDaytona::default());
        let service = service(policy, sources, &daytona);
        assert_eq!(send(&service, bearer(&signed("k2", &rotated))).await.0, 200);
        assert_eq!(keys.refetches.load(SeqCst), 1);
        // The refetched keys were installed: no refetch for the next request.
        assert_eq!(send(&service, bearer(&signed("k2", &rotated))).await.0, 200);
        assert_eq!(keys.refetches.load(SeqCst), 1);
        // A key nobody publishes: one refetch per request, then 401.
        let (stranger, _) = es256("k9");
        assert_eq!(
            send(&service, bearer(&signed("k9", &stranger))).await.0,
            401
        );
        assert_eq!(keys.refetches.load(SeqCst), 2);
    }

    fn with_rules() -> Policy {
        let rules = crate::authz::policy::Rules::compile(&[crate::authz::policy::RuleSpec {
            name: "team".into(),
            allow: r#"token.groups.exists(g, g == sandbox.labels["team"])"#.into(),
        }])
        .unwrap();
        let mut policy = policy();
        policy.verifier = policy.verifier.with_policy_identities(true);
        policy.rules = Some(Arc::new(rules));
        policy
    }

    fn member_of(group: &str) -> String {
        let claims = serde_json::json!({"groups": [group], "exp": now() + 600});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_sandbox_is_described_once_for_a_burst_and_the_policy_decides_before_any_preview_token()
     {
        let daytona = Arc::new(FakeDaytona {
            team: "team-a",
            ..FakeDaytona::default()
        });
        let service = Arc::new(service(with_rules(), Sources::default(), &daytona));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let service = Arc::clone(&service);
                tokio::spawn(async move { send(&service, bearer(&member_of("team-a"))).await.0 })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 200);
        }
        assert_eq!(
            daytona.described.load(SeqCst),
            1,
            "one description for the burst"
        );
        assert_eq!(daytona.calls.load(SeqCst), 1, "one preview token");
        // Another team: 403, from the cached description, and no preview token asked for.
        let daytona = Arc::new(FakeDaytona {
            team: "team-b",
            ..FakeDaytona::default()
        });
        let service = self::service(with_rules(), Sources::default(), &daytona);
        for _ in 0..3 {
            let (status, headers) = send(&service, bearer(&member_of("team-a"))).await;
            assert_eq!(status, 403);
            assert!(!headers.iter().any(|(n, _)| n == "x-daytona-preview-token"));
        }
        assert_eq!(daytona.described.load(SeqCst), 1);
        assert_eq!(
            daytona.calls.load(SeqCst),
            0,
            "nothing reached the preview-url API"
        );
    }

    #[tokio::test]
    async fn a_sandbox_daytona_cannot_describe_fails_closed() {
        for (error, status) in [
            (DaytonaError::Unavailable("down".into()), 503),
            (
                DaytonaError::RateLimited {
                    retry_after: Some(3),
                },
                503,
            ),
            (DaytonaError::NotFound, 404),
            (DaytonaError::BadAnswer("odd".into()), 502),
        ] {
            let daytona = Arc::new(FakeDaytona {
                team: "team-a",
                describe_error: Some(error.clone()),
                ..FakeDaytona::default()
            });
            let service = service(with_rules(), Sources::default(), &daytona);
            let (got, headers) = send(&service, bearer(&member_of("team-a"))).await;
            assert_eq!(got, status, "{error:?}");
            assert!(!headers.iter().any(|(n, _)| n == "x-daytona-preview-token"));
            assert_eq!(daytona.calls.load(SeqCst), 0);
        }
        // Without policies the same token is simply malformed: Daytona is never asked.
        let daytona = Arc::new(FakeDaytona::default());
        let service = service(policy(), Sources::default(), &daytona);
        assert_eq!(send(&service, bearer(&member_of("team-a"))).await.0, 401);
        assert_eq!(daytona.described.load(SeqCst), 0);
    }
}
