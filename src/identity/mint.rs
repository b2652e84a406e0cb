//! Share links: checking what to mint and signing the link's token, for `daytona-authz mint`
//! ([`crate::cli`]) and the admin API's `MintLink` ([`crate::serve::admin`]). Each says what was
//! wrong in its own words (flags, or the API's fields): [`MintError`] names the field.

use std::time::Duration;

use crate::authz::host::{self, PortRange};
use crate::authz::token::{Claims, QUERY_PARAMETER, Signer};

/// What to mint.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    pub sandbox: String,
    /// The ports the token grants; empty only with `any_port`.
    pub ports: Vec<u16>,
    /// A token for every port (no `ports` claim): only when asked for explicitly.
    pub any_port: bool,
    pub ttl: Duration,
    pub max_ttl: Duration,
    /// Template with `{port}` and `{id}`; one link per port.
    pub base_url: Option<String>,
    /// The ports a link may name (`--port-range`).
    pub port_range: PortRange,
}

/// A signed link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub links: Vec<String>,
    pub token: String,
    pub jti: String,
    pub expires_at: u64,
}

/// What is wrong with a [`LinkRequest`], or why it could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("{0:?} is not a sandbox id (a UUID)")]
    NotASandbox(String),
    #[error("{0} is outside {1}")]
    PortOutOfRange(u16, PortRange),
    #[error("{} is outside 1s to {}", humantime::format_duration(*.ttl), humantime::format_duration(*.max))]
    TtlOutOfRange { ttl: Duration, max: Duration },
    #[error("name the ports the link opens, or ask for a token that opens every port")]
    NoPorts,
    #[error("a list of ports and a token for every port exclude each other")]
    PortsAndAnyPort,
    #[error("a base URL needs at least one port to build a link")]
    BaseUrlWithoutPort,
    #[error("{url:?} is not a URL ({reason})")]
    BadBaseUrl { url: String, reason: String },
    #[error("the base URL must be an http(s) URL")]
    BaseUrlNotHttp,
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

/// Longest lifetime `MintLink` and `mint` accept unless told otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Checks the request and signs the link's token (with `iat` and a random `jti`).
pub fn mint_link(
    signer: &Signer,
    issuer: Option<&str>,
    audience: Option<&str>,
    request: &LinkRequest,
    now: u64,
) -> Result<Minted, MintError> {
    let sandbox = request.sandbox.to_ascii_lowercase();
    if !host::is_uuid(&sandbox) {
        return Err(MintError::NotASandbox(request.sandbox.clone()));
    }
    if let Some(port) = request
        .ports
        .iter()
        .find(|p| !request.port_range.contains(**p))
    {
        return Err(MintError::PortOutOfRange(*port, request.port_range));
    }
    if request.ttl.is_zero() || request.ttl > request.max_ttl {
        return Err(MintError::TtlOutOfRange {
            ttl: request.ttl,
            max: request.max_ttl,
        });
    }
    match (request.ports.is_empty(), request.any_port) {
        (true, false) => return Err(MintError::NoPorts),
        (false, true) => return Err(MintError::PortsAndAnyPort),
        _ => {}
    }
    if request.base_url.is_some() && request.ports.is_empty() {
        return Err(MintError::BaseUrlWithoutPort);
    }
    let expires_at = now + request.ttl.as_secs();
    let claims = Claims {
        sandbox_id: sandbox.clone(),
        exp: expires_at,
        ports: (!request.ports.is_empty()).then(|| request.ports.clone()),
        iss: issuer.map(str::to_owned),
        aud: audience.map(str::to_owned),
    };
    let (token, jti) = signer
        .sign_link(&claims, now)
        .map_err(|e| MintError::Signing(e.to_string()))?;
    let links = match &request.base_url {
        Some(base) => request
            .ports
            .iter()
            .map(|port| share_link(base, &sandbox, *port, &token))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Minted {
        links,
        token,
        jti,
        expires_at,
    })
}

/// `base` with `{port}` and `{id}` filled in and `access_token` added to its query.
fn share_link(base: &str, sandbox: &str, port: u16, token: &str) -> Result<String, MintError> {
    let filled = base
        .replace("{port}", &port.to_string())
        .replace("{id}", sandbox)
        .replace("{sandboxId}", sandbox);
    let mut url = url::Url::parse(&filled).map_err(|e| MintError::BadBaseUrl {
        url: filled.clone(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(MintError::BaseUrlNotHttp);
    }
    url.query_pairs_mut().append_pair(QUERY_PARAMETER, token);
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::token;

    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn request(ports: Vec<u16>, any_port: bool) -> LinkRequest {
        LinkRequest {
            sandbox: ID.into(),
            ports,
            any_port,
            ttl: Duration::from_secs(60),
            max_ttl: DEFAULT_MAX_TTL,
            base_url: None,
            port_range: PortRange::DAYTONA,
        }
    }

    #[test]
    fn each_mistake_has_its_own_error() {
        let signer = Signer::hs256(SECRET.as_bytes());
        let now = token::now();
        let mint = |request: LinkRequest| mint_link(&signer, None, None, &request, now);
        assert_eq!(mint(request(vec![], false)), Err(MintError::NoPorts));
        assert_eq!(
            mint(request(vec![3000], true)),
            Err(MintError::PortsAndAnyPort)
        );
        assert_eq!(
            mint(request(vec![80], false)),
            Err(MintError::PortOutOfRange(80, PortRange::DAYTONA))
        );
        let not_uuid = LinkRequest {
            sandbox: "sandbox".into(),
            ..request(vec![3000], false)
        };
        assert_eq!(
            mint(not_uuid),
            Err(MintError::NotASandbox("sandbox".into()))
        );
        let too_long = LinkRequest {
            ttl: DEFAULT_MAX_TTL + Duration::from_secs(1),
            ..request(vec![3000], false)
        };
        assert!(matches!(
            mint(too_long),
            Err(MintError::TtlOutOfRange { .. })
        ));
        let ftp = LinkRequest {
            base_url: Some("ftp://{port}-{id}.example.com".into()),
            ..request(vec![3000], false)
        };
        assert_eq!(mint(ftp), Err(MintError::BaseUrlNotHttp));
        let no_port = LinkRequest {
            base_url: Some("https://{port}-{id}.example.com".into()),
            ..request(vec![], true)
        };
        assert_eq!(mint(no_port), Err(MintError::BaseUrlWithoutPort));
        assert!(mint(request(vec![], true)).is_ok());
    }

    #[test]
    fn a_link_per_port_carries_the_token_that_grants_exactly_those_ports() {
        let signer = Signer::hs256(SECRET.as_bytes());
        let minted = mint_link(
            &signer,
            None,
            None,
            &LinkRequest {
                base_url: Some("https://{port}-{id}.preview.example.com/app".into()),
                ..request(vec![3000, 8080], false)
            },
            token::now(),
        )
        .unwrap();
        assert_eq!(
            minted.links,
            [3000, 8080].map(|port| format!(
                "https://{port}-{ID}.preview.example.com/app?access_token={}",
                minted.token
            ))
        );
        let grant = token::Verifier::hs256(SECRET.as_bytes(), None, None)
            .verify(&minted.token, token::now())
            .unwrap();
        assert_eq!(grant.ports, Some(vec![3000, 8080]));
    }
}
