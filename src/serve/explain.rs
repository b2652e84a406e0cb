//! `check-config --explain`: what a configuration decides for one token, sandbox and port, and
//! why: the same decision as a `Check` ([`decision::authorize`]), its look-ups answered here
//! (introspection, the JWKS, Daytona's description of the sandbox), then, for a token that names
//! no sandbox, which `[[policy]]` rule allowed it or which came closest. Revocations are not
//! consulted (the store belongs to the running server), and Daytona's preview-token endpoint is
//! never called.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::authz::decision::{
    self, Denial, Introspected, Lookup, Lookups, NoRevocations, RequestView, SandboxAnswer, Verdict,
};
use crate::authz::host::SandboxId;
use crate::authz::token;
use crate::config::ServeConfig;
use crate::daytona::PreviewSource;
use crate::metrics::Metrics;

use super::authorizer::{Introspect, MAX_LOOKUPS};

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Question {
    pub token: String,
    pub sandbox: String,
    pub port: u16,
    pub method: String,
    pub path: String,
}

/// The explanation, as lines for a person; `Err` when the question itself is unusable.
pub async fn explain(config: &ServeConfig, question: &Question) -> Result<String, String> {
    let sandbox_id =
        SandboxId::parse(&question.sandbox.trim().to_ascii_lowercase()).ok_or_else(|| {
            format!(
                "--sandbox: {:?} is not a sandbox id (a UUID)",
                question.sandbox
            )
        })?;
    let metrics = Arc::new(Metrics::new());
    let mut policy = super::policy(config, &config.secrets);
    let (introspector, jwks) = super::token_sources(config, &metrics).map_err(|e| e.to_string())?;
    let mut out = String::new();
    if let Some(jwks) = &jwks {
        for error in jwks.refresh().await {
            let _ = writeln!(out, "note: JWKS: {error}");
        }
        policy.verifier = policy.verifier.clone().with_jwks(jwks.keys().to_vec());
    }
    let api = super::daytona_api(config, &metrics).map_err(|e| e.to_string())?;
    let domain = config.preview_domains.first().cloned().unwrap_or_default();
    let request = RequestView::new(
        &question.method,
        &format!("{}-{}.{domain}", question.port, sandbox_id),
        &question.path,
    )
    .with_header(
        "authorization",
        &format!("Bearer {}", question.token.trim()),
    );
    let mut lookups = Lookups::default();
    let mut verdict = Err(Denial::StatusUnknown("identity look-ups"));
    for _ in 0..MAX_LOOKUPS {
        verdict = decision::authorize(&request, &policy, token::now(), &lookups, &NoRevocations);
        match &verdict {
            Ok(Verdict::Lookup(Lookup::Introspect(opaque))) => {
                let answer = match &introspector {
                    Some(introspector) => introspector.answer(opaque).await,
                    None => Introspected::Unavailable,
                };
                lookups.introspected.push((opaque.clone(), answer));
            }
            Ok(Verdict::Lookup(Lookup::RefreshJwks)) => lookups.jwks_refreshed = true,
            Ok(Verdict::Lookup(Lookup::Sandbox(id, _))) => {
                lookups.sandbox = Some(match api.sandbox(id).await {
                    Ok(info) => SandboxAnswer::Found(Arc::new(info)),
                    Err(error) => SandboxAnswer::Failed(error),
                });
            }
            _ => break,
        }
    }
    let _ = writeln!(
        out,
        "request: {} {}{} (sandbox {sandbox_id}, port {}), the token as a Bearer",
        question.method, request.host, question.path, question.port
    );
    let _ = writeln!(
        out,
        "not applied here: revocations (the running server's store), a route's \
         daytona_authz.* keys (the request is on a route without them), the rules for a token \
         in a cookie (cross-sandbox checks; the session cookie's audience applies to every token \
         the rules decide, so it is checked)"
    );
    if let Some(SandboxAnswer::Found(info)) = &lookups.sandbox {
        let labels: Vec<String> = info
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "sandbox: name {:?}, organization {:?}, state {:?}, labels {{{}}}",
            info.name,
            info.organization_id,
            info.state,
            labels.join(", ")
        );
    }
    match verdict {
        Ok(Verdict::Forward(authorized)) => {
            let _ = writeln!(out, "decision: allow");
            let by = match &authorized.rule {
                Some(rule) => format!("rule {rule:?}"),
                None => format!(
                    "the token names this sandbox ({} claim); no policy rule consulted",
                    config.identity.sandbox_claim
                ),
            };
            let _ = writeln!(out, "allowed by: {by}");
        }
        Ok(Verdict::Reply(reply)) => {
            let _ = writeln!(
                out,
                "decision: answered at the edge ({} {})",
                reply.status, reply.reason
            );
        }
        Ok(Verdict::Lookup(_)) => {
            let _ = writeln!(out, "decision: deny (too many look-ups)");
        }
        Err(denial) => {
            let _ = writeln!(
                out,
                "decision: deny ({} {}): {denial}",
                denial.status(),
                denial.code()
            );
            if let Denial::PolicyDenied { closest } = &denial {
                let _ = writeln!(
                    out,
                    "no rule allows it; closest: {}",
                    closest
                        .as_deref()
                        .unwrap_or("none (every rule's first condition is false)")
                );
            }
        }
    }
    Ok(out)
}
