//! Who is calling: access tokens found and verified ([`token`]: pure), the keys and answers that
//! need I/O ([`jwks`], [`introspection`]), revocations with their local and Redis stores
//! ([`revocation`]), and minting share links ([`mint`]).

pub mod introspection;
pub mod jwks;
pub mod mint;
pub mod revocation;
pub mod token;
