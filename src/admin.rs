//! The admin gRPC API (`proto/daytona_authz/admin/v1/admin.proto`), for a platform's control plane.
//! Every call must carry `authorization: Bearer <admin token>`, compared in constant time.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::daytona::{PreviewCache, PreviewSource};
use crate::host;

pub mod pb {
    tonic::include_proto!("daytona_authz.admin.v1");
}

use pb::admin_server::{Admin, AdminServer};
use pb::{InvalidatePreviewTokenRequest, InvalidatePreviewTokenResponse};

pub struct AdminService<S> {
    previews: Arc<PreviewCache<S>>,
}

impl<S: PreviewSource> AdminService<S> {
    pub fn new(previews: Arc<PreviewCache<S>>) -> Self {
        AdminService { previews }
    }
}

#[tonic::async_trait]
impl<S: PreviewSource> Admin for AdminService<S> {
    async fn invalidate_preview_token(
        &self,
        request: Request<InvalidatePreviewTokenRequest>,
    ) -> Result<Response<InvalidatePreviewTokenResponse>, Status> {
        let request = request.into_inner();
        let sandbox_id = request.sandbox_id.to_ascii_lowercase();
        if !host::is_uuid(&sandbox_id) {
            return Err(Status::invalid_argument("sandbox_id must be a UUID"));
        }
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
