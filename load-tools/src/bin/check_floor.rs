//! `check_floor`: the least an ext_authz `Check` server built on this stack can cost. It serves
//! Envoy's `Authorization` service on the same server set-up daytona-authz uses (the runtime for
//! `--worker-threads`, the connection handling, the logging, the allocator, default HTTP/2
//! settings), decodes every `CheckRequest` with prost as daytona-authz does, and answers every
//! one with the same OK response shape daytona-authz sends for a warm, valid request (four
//! headers set, `authorization` and `access_token` removed, values as long), built once.
//!
//! No host parsing, no token, no cache, no metrics, no log lines: `bench/run.sh` hammers it with
//! the same `check_load warm` as daytona-authz, so the difference between the two is what
//! daytona-authz's own work costs, and this server's figure is the floor of the gRPC stack
//! (tonic, hyper, h2, prost, tokio and the kernel's loopback TCP) on the machine.
//!
//! Behind Envoy (with `--preview-token` and `--upstream` of a real sandbox) it is a no-op
//! ext_authz service that allows everything: what Envoy's ext_authz filter costs by itself.
//!
//! `check_floor --addr 127.0.0.1:0` prints `listening on ADDR` and serves until killed.

use std::net::SocketAddr;

use clap::Parser;
use daytona_authz::authz::decision::{
    Allow, PREVIEW_TOKEN_HEADER, SKIP_WARNING_HEADER, UPSTREAM_HEADER, UPSTREAM_SCHEME_HEADER,
};
use daytona_authz::serve::grpc;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use tonic::{Request, Response, Status};

// The same allocator as daytona-authz (src/main.rs): the floor of the same stack.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A constant-answer ext_authz server: the floor for daytona-authz's `Check` (see the module docs).
#[derive(Debug, Parser)]
struct Args {
    /// Where to serve gRPC (port 0: any free port, printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// As daytona-authz's `--worker-threads`: 1 is a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// The preview token every answer sets (behind Envoy: the sandbox's real one).
    #[arg(long, default_value = "0123456789abcdef0123456789abcdef")]
    preview_token: String,
    /// The upstream authority every answer names (behind Envoy: the sandbox's preview host).
    #[arg(
        long,
        default_value = "3000-9fd690b8-76c6-4f52-832f-ebbad4da52c7.proxy.localhost:34363"
    )]
    upstream: String,
}

struct Floor {
    answer: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for Floor {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Decoded by tonic already; dropping it frees what prost allocated, as daytona-authz does.
        drop(request.into_inner());
        Ok(Response::new(self.answer.clone()))
    }
}

fn answer(args: &Args) -> CheckResponse {
    // Built by daytona-authz's own response code, so the shape cannot drift from the real one.
    grpc::ok_response(Allow {
        set_headers: vec![
            (PREVIEW_TOKEN_HEADER, args.preview_token.clone()),
            (SKIP_WARNING_HEADER, "true".to_owned()),
            (UPSTREAM_HEADER, args.upstream.clone()),
            (UPSTREAM_SCHEME_HEADER, "http".to_owned()),
        ],
        remove_headers: vec!["authorization".to_owned()],
        path: None,
        identity_headers: Vec::new(),
        grant: None,
        rule: None,
    })
}

fn main() {
    let args = Args::parse();
    // The logging daytona-authz installs: with no subscriber at all, tracing's `log` fallback
    // would cost this server something daytona-authz does not pay.
    daytona_authz::cli::init_tracing(daytona_authz::config::LogFormat::Pretty);
    let runtime = daytona_authz::cli::runtime(args.worker_threads).expect("a tokio runtime");
    runtime.block_on(serve(args));
}

async fn serve(args: Args) {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .expect("can bind --addr");
    println!("listening on {}", listener.local_addr().expect("bound"));
    // Envoy health-checks the ext_authz cluster (envoy/envoy.yaml), as daytona-authz serves it.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            daytona_authz::serve::HEALTH_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(Floor {
            answer: answer(&args),
        }))
        .serve_with_incoming(daytona_authz::serve::transport::incoming(listener))
        .await
        .expect("gRPC server runs");
}
