//! daytona-authz: the Envoy ext_authz service in front of private Daytona sandboxes.
//!
//! Request path: client → Envoy → `Check` here (token → grant → preview token) → Envoy forwards
//! to Daytona's preview proxy with `X-Daytona-Preview-Token` set and the caller's credentials
//! removed.
//!
//! Layers, each importing only those below it:
//! - [`serve`]: the running servers (ext_authz, admin API, HTTP) and their lifecycle; the only
//!   layer that sees all the others. [`cli`] is the process entry and the client commands.
//! - [`config`]: flags, environment, config file and secrets, validated as a whole.
//! - [`daytona`] (API client, preview-URL allow-list, preview-token cache) and [`identity`]
//!   (tokens, JWKS, introspection, revocation, minting): the edges that do I/O.
//! - [`authz`]: the decision core, no I/O. [`outbound`] (HTTP client plumbing, trusted CAs),
//!   [`metrics`] and [`proto`] are shared leaves.
#![forbid(unsafe_code)]

pub mod authz;
pub mod cli;
pub mod config;
pub mod daytona;
pub mod identity;
pub mod metrics;
pub mod outbound;
pub mod proto;
pub mod serve;
