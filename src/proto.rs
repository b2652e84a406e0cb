//! Code generated from `proto/` (build.rs): daytona-authz's own gRPC API.

/// `daytona_authz.admin.v1`: the admin API (`proto/daytona_authz/admin/v1/admin.proto`).
pub mod admin {
    tonic::include_proto!("daytona_authz.admin.v1");
}
