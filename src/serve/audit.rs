//! The audit log (`--audit-log`): one JSON object per line on stderr for every decision — each
//! request let through (`allow`), denied (`deny`) or answered at the edge (`reply`: a CORS
//! preflight, a share link turning into a cookie).
//!
//! Lines go through `tracing` under their own target, [`TARGET`], which `cli::init_tracing`
//! writes as flat JSON whatever `--log-format` says (and whatever `RUST_LOG` says: the flag is the
//! switch), so an operator can pick them out of the log stream with
//! `jq 'select(.target == "daytona_authz::audit")'` and ship them elsewhere.
//!
//! What a line says: `decision`, `status` (the HTTP status the edge answered; absent on `allow`,
//! where the app answers), `reason` (`ok`, a denial code, `preflight`, `link_to_cookie`),
//! `detail` (a denial's reason in words), `sub` and `jti` of the verified token (on `allow`),
//! `rule` (on `allow`, the `[[policy]]` rule that allowed it), `sandbox`, `port`, `preview_domain`, `route`, `method`, `path` (without its query), `request_id` and `client`.
//! Never the token, a cookie, the query string or the preview token.

use crate::authz::host::PreviewTarget;
use crate::authz::token::Grant;

/// The `tracing` target of audit lines.
pub const TARGET: &str = "daytona_authz::audit";

/// One decision, as the audit log tells it.
pub struct Record<'a> {
    pub decision: &'static str,
    pub status: Option<u16>,
    pub reason: &'a str,
    pub detail: Option<String>,
    pub grant: Option<&'a Grant>,
    /// The `[[policy]]` rule that allowed the request, if one did.
    pub rule: Option<&'a str>,
    pub target: Option<&'a PreviewTarget>,
    /// The preview domain the host matched.
    pub preview_domain: Option<&'a str>,
    pub route: Option<&'a str>,
    pub method: Option<&'a str>,
    /// The request target; the query and fragment are cut off here.
    pub path: Option<&'a str>,
    pub request_id: &'a str,
    pub client: &'a str,
}

impl Record<'_> {
    /// Writes the line (at info, under [`TARGET`]).
    pub fn log(&self) {
        let path = self
            .path
            .map(|path| path.split(['?', '#']).next().unwrap_or_default());
        tracing::info!(
            target: TARGET,
            decision = self.decision,
            status = self.status,
            reason = self.reason,
            detail = self.detail.as_deref(),
            sub = self.grant.and_then(|g| g.subject.as_deref()),
            jti = self.grant.and_then(|g| g.jti.as_deref()),
            rule = self.rule,
            sandbox = self.target.map(|t| t.sandbox_id.as_str()),
            port = self.target.map(|t| t.port),
            preview_domain = self.preview_domain,
            route = self.route,
            method = self.method,
            path,
            request_id = self.request_id,
            client = self.client,
        );
    }
}
