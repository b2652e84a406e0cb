//! The admin gRPC API (`proto/daytona_authz/admin/v1/admin.proto`), for a platform's control plane.
//! Every call must carry `authorization: Bearer <admin token>`, compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::daytona::{PreviewCache, PreviewSource};
use crate::host;
use crate::mint::{self, LinkRequest};
use crate::revocation::{RevocationError, Revocations};
use crate::token::{self, Signer};

pub mod pb {
    tonic::include_proto!("daytona_authz.admin.v1");
}

use pb::admin_server::{Admin, AdminServer};
use pb::{
    InvalidatePreviewTokenRequest, InvalidatePreviewTokenResponse, MintLinkRequest,
    MintLinkResponse, RevokeSandboxRequest, RevokeSandboxResponse, RevokeTokenRequest,
    RevokeTokenResponse,
};

/// How `MintLink` signs: the current HS256 secret (swapped on SIGHUP) and the claims to add.
pub struct MintSettings {
    pub signer: ArcSwapOption<Signer>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub max_ttl: Duration,
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

    fn revocations(&self) -> Result<&Revocations, Status> {
        self.revocations
            .as_deref()
            .ok_or_else(|| Status::failed_precondition("no revocation store is configured"))
    }
}

/// A store failure as a gRPC status: bad input is the caller's, anything else is unavailability.
fn store_status(error: RevocationError) -> Status {
    match error {
        RevocationError::Invalid(why) => Status::invalid_argument(why),
        other => Status::unavailable(other.to_string()),
    }
}

fn sandbox_id(text: &str) -> Result<String, Status> {
    let id = text.to_ascii_lowercase();
    if host::is_uuid(&id) {
        Ok(id)
    } else {
        Err(Status::invalid_argument("sandbox_id must be a UUID"))
    }
}

#[tonic::async_trait]
impl<S: PreviewSource> Admin for AdminService<S> {
    async fn mint_link(
        &self,
        request: Request<MintLinkRequest>,
    ) -> Result<Response<MintLinkResponse>, Status> {
        let request = request.into_inner();
        let signer = self.minting.signer.load_full().ok_or_else(|| {
            Status::failed_precondition("MintLink needs --jwt-secret on the server")
        })?;
        let ports = request
            .ports
            .iter()
            .map(|p| u16::try_from(*p).map_err(|_| Status::invalid_argument("port out of range")))
            .collect::<Result<Vec<_>, _>>()?;
        let link = LinkRequest {
            sandbox: request.sandbox_id,
            ports,
            any_port: request.any_port,
            ttl: Duration::from_secs(request.ttl_seconds),
            max_ttl: self.minting.max_ttl,
            base_url: (!request.base_url.is_empty()).then_some(request.base_url),
        };
        let minted = mint::mint_link(
            &signer,
            self.minting.issuer.as_deref(),
            self.minting.audience.as_deref(),
            &link,
            token::now(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(sandbox.id = %link.sandbox.to_ascii_lowercase(), jti = %minted.jti, "link minted");
        Ok(Response::new(MintLinkResponse {
            links: minted.links,
            token: minted.token,
            jti: minted.jti,
            expires_at: minted.expires_at,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let request = request.into_inner();
        // Without the token's expiry the revocation is kept for good (see revocation.rs).
        self.revocations()?
            .revoke_token(&request.jti, request.expires_at)
            .await
            .map_err(store_status)?;
        tracing::info!(jti = %request.jti, expires_at = request.expires_at, "token revoked");
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn revoke_sandbox(
        &self,
        request: Request<RevokeSandboxRequest>,
    ) -> Result<Response<RevokeSandboxResponse>, Status> {
        let request = request.into_inner();
        let id = sandbox_id(&request.sandbox_id)?;
        let store = self.revocations()?;
        let result = if request.lift {
            store.unrevoke_sandbox(&id).await
        } else {
            store.revoke_sandbox(&id).await
        };
        result.map_err(store_status)?;
        tracing::info!(sandbox.id = %id, lifted = request.lift, "sandbox revocation changed");
        Ok(Response::new(RevokeSandboxResponse {}))
    }

    async fn invalidate_preview_token(
        &self,
        request: Request<InvalidatePreviewTokenRequest>,
    ) -> Result<Response<InvalidatePreviewTokenResponse>, Status> {
        let request = request.into_inner();
        let sandbox_id = sandbox_id(&request.sandbox_id)?;
        let port = match request.port {
            None => None,
            Some(port) => match u16::try_from(port) {
                Ok(port) if host::PORT_RANGE.contains(&port) => Some(port),
                _ => return Err(Status::invalid_argument("port must be within 3000-9999")),
            },
        };
        self.previews.invalidate(&sandbox_id, port).await;
        tracing::info!(sandbox.id = %sandbox_id, port, "preview token invalidated");
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

/// The command-line side: `mint --admin-url` and `revoke` talk to a running daytona-authz.
pub mod client {
    use super::pb;
    use super::pb::admin_client::AdminClient;
    use crate::config::{AdminClientArgs, ConfigError, RevokeArgs};
    use crate::mint::{LinkRequest, Minted};

    /// Adds the admin credential to every call.
    type Credential =
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
    type Client = AdminClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credential>,
    >;

    async fn connect(args: &AdminClientArgs) -> Result<Client, ConfigError> {
        let (url, token) = args.validate()?;
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| ConfigError(format!("--admin-url: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| ConfigError(format!("cannot reach the admin API at {url}: {e}")))?;
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| ConfigError("the admin token is not a valid header value".into()))?;
        value.set_sensitive(true);
        let add_credential: Credential = Box::new(move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            Ok(request)
        });
        Ok(AdminClient::with_interceptor(channel, add_credential))
    }

    fn block_on<T>(
        future: impl std::future::Future<Output = Result<T, ConfigError>>,
    ) -> Result<T, ConfigError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConfigError(format!("cannot start the runtime: {e}")))?
            .block_on(future)
    }

    fn refused(status: tonic::Status) -> ConfigError {
        ConfigError(format!(
            "the admin API refused: {} ({:?})",
            status.message(),
            status.code()
        ))
    }

    pub fn mint(args: &AdminClientArgs, request: &LinkRequest) -> Result<Minted, ConfigError> {
        block_on(async {
            let answer = connect(args)
                .await?
                .mint_link(pb::MintLinkRequest {
                    sandbox_id: request.sandbox.clone(),
                    ports: request.ports.iter().map(|p| u32::from(*p)).collect(),
                    ttl_seconds: request.ttl.as_secs(),
                    base_url: request.base_url.clone().unwrap_or_default(),
                    any_port: request.any_port,
                })
                .await
                .map_err(refused)?
                .into_inner();
            Ok(Minted {
                links: answer.links,
                token: answer.token,
                jti: answer.jti,
                expires_at: answer.expires_at,
            })
        })
    }

    /// Returns what to print.
    pub fn revoke(args: &RevokeArgs) -> Result<String, ConfigError> {
        block_on(async {
            match (&args.jti, &args.sandbox) {
                (Some(jti), _) => {
                    if let Some(at) = args.expires_at {
                        refuse_past_expiry(at, crate::token::now())?;
                    }
                    let mut client = connect(&args.admin).await?;
                    client
                        .revoke_token(pb::RevokeTokenRequest {
                            jti: jti.clone(),
                            expires_at: args.expires_at,
                        })
                        .await
                        .map_err(refused)?;
                    Ok(format!("revoked token {jti}\n"))
                }
                (None, Some(sandbox)) => {
                    connect(&args.admin)
                        .await?
                        .revoke_sandbox(pb::RevokeSandboxRequest {
                            sandbox_id: sandbox.clone(),
                            lift: args.lift,
                        })
                        .await
                        .map_err(refused)?;
                    Ok(if args.lift {
                        format!("lifted the revocation of sandbox {sandbox}\n")
                    } else {
                        format!("revoked every token for sandbox {sandbox}\n")
                    })
                }
                (None, None) => Err(ConfigError("give --jti or --sandbox".into())),
            }
        })
    }

    /// `--expires-at` in the past would revoke nothing (the server refuses it too): most likely
    /// it is not the token's `exp`.
    fn refuse_past_expiry(expires_at: u64, now: u64) -> Result<(), ConfigError> {
        if expires_at >= now {
            return Ok(());
        }
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at),
        );
        Err(ConfigError(format!(
            "--expires-at: {expires_at} ({when}) is in the past, so nothing would be revoked; give \
             the token's own exp (`mint` prints it), or leave --expires-at out to keep the \
             revocation for good"
        )))
    }

    #[cfg(test)]
    mod tests {
        use clap::Parser;

        #[test]
        fn expires_at_takes_unix_seconds_or_rfc3339() {
            let parse = |value: &str| {
                let argv = [
                    "daytona-authz",
                    "revoke",
                    "--jti",
                    "j",
                    "--expires-at",
                    value,
                ];
                match crate::config::Cli::try_parse_from(argv).map(|cli| cli.command) {
                    Ok(crate::config::Command::Revoke(args)) => Ok(args.expires_at),
                    Ok(_) => unreachable!(),
                    Err(e) => Err(e.to_string()),
                }
            };
            assert_eq!(parse("1700000000"), Ok(Some(1_700_000_000)));
            assert_eq!(parse("2023-11-14T22:13:20Z"), Ok(Some(1_700_000_000)));
            assert!(parse("tomorrow").unwrap_err().contains("RFC 3339"));
            assert!(parse("-5").is_err());
        }

        #[test]
        fn an_expiry_in_the_past_is_refused_before_calling() {
            let refused = super::refuse_past_expiry(1_700_000_000, 1_700_000_001).unwrap_err();
            assert!(refused.to_string().contains("--expires-at"), "{refused}");
            assert!(
                refused.to_string().contains("2023-11-14T22:13:20Z"),
                "{refused}"
            );
            assert!(super::refuse_past_expiry(1_700_000_001, 1_700_000_001).is_ok());
        }
    }
}
