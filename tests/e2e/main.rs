//! daytona-authz end to end: one test binary, a module per area, every test through real
//! processes on 127.0.0.1 (daytona-authz, Envoy; the Daytona double in-process) set up by the
//! `support` crate (test-support/). Run one area with `cargo test --test e2e <module>::`.
//!
//! Tests of all areas run in parallel on the default number of test threads; what must not
//! overlap says so itself (the container tests take turns on a lock of their own).

mod abuse;
mod admin;
mod app_identity;
mod attacks;
mod browser;
mod chromium;
mod cli;
mod containers;
mod edge_tls;
mod faults;
mod health;
mod https_upstream;
mod identity;
mod monitoring;
mod operations;
mod policy;
mod private_ca;
mod proxy;
mod routes;
mod sso;
mod tracing;
