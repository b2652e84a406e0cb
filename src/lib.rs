//! daytona-authz: the Envoy ext_authz service in front of private Daytona sandboxes.
//!
//! Request path: client → Envoy → `Check` here (token → grant → preview token) → Envoy forwards
//! to Daytona's preview proxy with `X-Daytona-Preview-Token` set and the caller's credentials
//! removed. Modules by responsibility: [`config`] (flags, validation), [`host`] (public host
//! parsing), [`token`] (access tokens), [`decision`] (pure verdicts), [`daytona`] (API client and
//! cache), [`port_limit`] (distinct ports per sandbox), [`grpc`] (Envoy's API), [`admin`] (our
//! own gRPC API), [`server`] (wiring), [`transport`] (how gRPC connections are accepted), [`trust`] (the CAs
//! outbound TLS trusts).
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod daytona;
pub mod decision;
pub mod grpc;
pub mod host;
pub mod http;
pub mod introspection;
pub mod jwks;
pub mod metrics;
pub mod mint;
pub mod pages;
pub mod port_limit;
pub mod revocation;
pub mod server;
pub mod token;
pub mod transport;
pub mod trust;
