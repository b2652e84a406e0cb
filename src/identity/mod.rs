//! Who is calling, where that needs I/O or state: the keys and answers fetched over the network
//! ([`jwks`], [`introspection`]), revocations with their local and Redis stores ([`revocation`]),
//! and minting share links ([`mint`]). Finding and verifying a token is pure and lives in the
//! core ([`crate::authz::token`]).

pub mod introspection;
pub mod jwks;
pub mod mint;
pub mod revocation;
