//! The admin gRPC API (`proto/daytona_authz/admin/v1/admin.proto`), for a platform's control plane.
//! Every call must carry `authorization: Bearer <admin token>`, compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::authz::host::{PortRange, SandboxId};
use crate::authz::token::{self, Signer};
use crate::daytona::{PreviewCache, PreviewSource};
use crate::identity::mint::{self, LinkRequest, MintError};
use crate::identity::revocation::{RevocationError, Revocations};

use crate::proto::admin as pb;
use pb::admin_server::{Admin, AdminServer};
use pb::{
    InvalidatePreviewTokenRequest, InvalidatePreviewTokenResponse, MintLinkRequest,
    MintLinkResponse, RevokeSandboxRequest, RevokeSandboxResponse, RevokeSubjectRequest,
    RevokeSubjectResponse, RevokeTokenRequest, RevokeTokenResponse,
};

/// How `MintLink` signs: the current HS256 secret (swapped on SIGHUP) and the claims to add.
pub struct MintSettings {
    pub signer: ArcSwapOption<Signer>,
    /// Swapped whole by a reload of the config file.
    pub rules: ArcSwap<MintRules>,
    pub max_ttl: Duration,
}

/// What links are signed with and for.
#[derive(Debug, Clone)]
pub struct MintRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// `--port-range`: the ports a link (or an invalidation) may name.
    pub port_range: PortRange,
}

pub struct AdminService<S> {
    previews: Arc<PreviewCache<S>>,
    revocations: Option<Arc<Revocations>>,
    minting: Arc<MintSettings>,
}

impl<S: PreviewSource> AdminService<S> {
    pub fn new(
        previews: Arc<PreviewCache<S>>,
        revocations: Option<Arc<Revocations>>,
        minting: Arc<MintSettings>,
    ) -> Self {
        AdminService {
            previews,
            revocations,
            minting,
        }
    }

    fn revocations(&self) -> Result<&Revocations, AdminError> {
        self.revocations
            .as_deref()
            .ok_or(AdminError::NoRevocationStore)
    }

    async fn mint(&self, request: MintLinkRequest) -> Result<MintLinkResponse, AdminError> {
        let signer = self
            .minting
            .signer
            .load_full()
            .ok_or(AdminError::NoSigningSecret)?;
        let ports = request
            .ports
            .iter()
            .map(|p| u16::try_from(*p).map_err(|_| AdminError::Invalid("ports", "out of range")))
            .collect::<Result<Vec<_>, _>>()?;
        let rules = self.minting.rules.load();
        let link = LinkRequest {
            sandbox: request.sandbox_id,
            ports,
            any_port: request.any_port,
            ttl: Duration::from_secs(request.ttl_seconds),
            max_ttl: self.minting.max_ttl,
            base_url: (!request.base_url.is_empty()).then_some(request.base_url),
            port_range: rules.port_range,
        };
        let minted = mint::mint_link(
            &signer,
            rules.issuer.as_deref(),
            rules.audience.as_deref(),
            &link,
            token::now(),
        )?;
        tracing::info!(sandbox.id = %link.sandbox.to_ascii_lowercase(), jti = %minted.jti, "link minted");
        Ok(MintLinkResponse {
            links: minted.links,
            token: minted.token,
            jti: minted.jti,
            expires_at: minted.expires_at,
        })
    }

    async fn revoke_jti(&self, request: RevokeTokenRequest) -> Result<(), AdminError> {
        // Without the token's expiry the revocation is kept for good (see
        // crate::identity::revocation).
        self.revocations()?
            .revoke_token(&request.jti, request.expires_at)
            .await?;
        tracing::info!(jti = %request.jti, expires_at = request.expires_at, "token revoked");
        Ok(())
    }

    async fn set_sandbox_revocation(
        &self,
        request: RevokeSandboxRequest,
    ) -> Result<(), AdminError> {
        let id = sandbox_id(&request.sandbox_id)?;
        let store = self.revocations()?;
        if request.lift {
            store.unrevoke_sandbox(id.as_str()).await?;
        } else {
            store.revoke_sandbox(id.as_str()).await?;
        }
        tracing::info!(sandbox.id = %id, lifted = request.lift, "sandbox revocation changed");
        Ok(())
    }

    async fn set_subject_revocation(
        &self,
        request: RevokeSubjectRequest,
    ) -> Result<(), AdminError> {
        let store = self.revocations()?;
        if request.lift {
            store.unrevoke_subject(&request.subject).await?;
        } else {
            store.revoke_subject(&request.subject).await?;
        }
        // The subject is a person's id, no credential: the log may name whom.
        tracing::info!(subject = %request.subject, lifted = request.lift, "subject revocation changed");
        Ok(())
    }

    async fn invalidate(&self, request: InvalidatePreviewTokenRequest) -> Result<(), AdminError> {
        let sandbox_id = sandbox_id(&request.sandbox_id)?;
        let port = match request.port {
            None => None,
            Some(port) => match u16::try_from(port) {
                Ok(port) if self.minting.rules.load().port_range.contains(port) => Some(port),
                _ => return Err(AdminError::Invalid("port", "must be within --port-range")),
            },
        };
        self.previews.invalidate(&sandbox_id, port).await;
        tracing::info!(sandbox.id = %sandbox_id, port, "preview token and sandbox description invalidated");
        Ok(())
    }
}

/// Why an admin call failed. [`Status::from`] is the one place that says what the caller is
/// told, in the API's words (its fields, never the command line's flags).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no revocation store is configured")]
    NoRevocationStore,
    #[error("MintLink needs a signing secret, and this server has none configured")]
    NoSigningSecret,
    #[error("{0}: {1}")]
    Invalid(&'static str, &'static str),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error(transparent)]
    Store(#[from] RevocationError),
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Status {
        match error {
            AdminError::NoRevocationStore | AdminError::NoSigningSecret => {
                Status::failed_precondition(error.to_string())
            }
            AdminError::Invalid(..) => Status::invalid_argument(error.to_string()),
            AdminError::Mint(MintError::Signing(why)) => {
                tracing::error!(error = %why, "MintLink: signing failed");
                Status::internal("the token could not be signed")
            }
            AdminError::Mint(mint) => {
                Status::invalid_argument(format!("{}: {mint}", field_of(&mint)))
            }
            // Bad input is the caller's; anything else is the store being unavailable.
            AdminError::Store(RevocationError::Invalid(why)) => Status::invalid_argument(why),
            AdminError::Store(other) => Status::unavailable(other.to_string()),
        }
    }
}

/// The request field a mint error is about (signing failures are answered before this).
fn field_of(error: &MintError) -> &'static str {
    match error {
        MintError::NotASandbox(_) => "sandbox_id",
        MintError::PortOutOfRange(..) | MintError::NoPorts | MintError::PortsAndAnyPort => "ports",
        MintError::TtlOutOfRange { .. } => "ttl_seconds",
        MintError::BaseUrlWithoutPort
        | MintError::BadBaseUrl { .. }
        | MintError::BaseUrlNotHttp => "base_url",
        MintError::Signing(_) => "token",
    }
}

fn sandbox_id(text: &str) -> Result<SandboxId, AdminError> {
    SandboxId::parse(&text.to_ascii_lowercase())
        .ok_or(AdminError::Invalid("sandbox_id", "must be a UUID"))
}

#[tonic::async_trait]
impl<S: PreviewSource> Admin for AdminService<S> {
    async fn mint_link(
        &self,
        request: Request<MintLinkRequest>,
    ) -> Result<Response<MintLinkResponse>, Status> {
        Ok(Response::new(self.mint(request.into_inner()).await?))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        self.revoke_jti(request.into_inner()).await?;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn revoke_sandbox(
        &self,
        request: Request<RevokeSandboxRequest>,
    ) -> Result<Response<RevokeSandboxResponse>, Status> {
        self.set_sandbox_revocation(request.into_inner()).await?;
        Ok(Response::new(RevokeSandboxResponse {}))
    }

    async fn revoke_subject(
        &self,
        request: Request<RevokeSubjectRequest>,
    ) -> Result<Response<RevokeSubjectResponse>, Status> {
        self.set_subject_revocation(request.into_inner()).await?;
        Ok(Response::new(RevokeSubjectResponse {}))
    }

    async fn invalidate_preview_token(
        &self,
        request: Request<InvalidatePreviewTokenRequest>,
    ) -> Result<Response<InvalidatePreviewTokenResponse>, Status> {
        self.invalidate(request.into_inner()).await?;
        Ok(Response::new(InvalidatePreviewTokenResponse {}))
    }
}

/// The admin server with its credential check in front.
pub fn server<S: PreviewSource>(
    service: AdminService<S>,
    credential: BearerCheck,
) -> tonic::service::interceptor::InterceptedService<AdminServer<AdminService<S>>, BearerCheck> {
    AdminServer::with_interceptor(service, credential)
}

/// Refuses calls whose `authorization` metadata is not exactly `Bearer <admin token>`. Clones
/// share the token, so [`BearerCheck::set_token`] (SIGHUP reload) reaches every connection.
#[derive(Clone)]
pub struct BearerCheck {
    expected: Arc<arc_swap::ArcSwap<Vec<u8>>>,
}

impl BearerCheck {
    pub fn new(token: &str) -> Self {
        BearerCheck {
            expected: Arc::new(arc_swap::ArcSwap::from_pointee(expected(token))),
        }
    }

    pub fn set_token(&self, token: &str) {
        self.expected.store(Arc::new(expected(token)));
    }
}

fn expected(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(self.expected.load().as_slice())) {
            Ok(request)
        } else {
            tracing::info!("admin call refused: missing or wrong credential");
            Err(Status::unauthenticated("admin credential required"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn admin_errors_speak_the_apis_words_and_hide_internals() {
        let cases = [
            (
                AdminError::Mint(MintError::NotASandbox("x".into())),
                tonic::Code::InvalidArgument,
                "sandbox_id: ",
            ),
            (
                AdminError::Mint(MintError::NoPorts),
                tonic::Code::InvalidArgument,
                "ports: ",
            ),
            (
                AdminError::Mint(MintError::TtlOutOfRange {
                    ttl: Duration::from_secs(90_000),
                    max: Duration::from_secs(86_400),
                }),
                tonic::Code::InvalidArgument,
                "ttl_seconds: ",
            ),
            (
                AdminError::Mint(MintError::BaseUrlNotHttp),
                tonic::Code::InvalidArgument,
                "base_url: ",
            ),
            (
                AdminError::Mint(MintError::Signing("key material detail".into())),
                tonic::Code::Internal,
                "the token could not be signed",
            ),
            (
                AdminError::NoSigningSecret,
                tonic::Code::FailedPrecondition,
                "MintLink needs a signing secret",
            ),
            (
                AdminError::Store(RevocationError::Invalid("bad jti".into())),
                tonic::Code::InvalidArgument,
                "bad jti",
            ),
            (
                AdminError::Store(RevocationError::Unknown),
                tonic::Code::Unavailable,
                "revocation status unknown",
            ),
        ];
        for (error, code, starts) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().starts_with(starts), "{status:?}");
            assert!(!status.message().contains("--"), "a CLI flag in {status:?}");
            assert!(
                !status.message().contains("detail"),
                "internals in {status:?}"
            );
        }
    }
}
