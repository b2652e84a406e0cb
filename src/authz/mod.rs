//! The decision core: plain data in, a verdict out, no I/O, and nothing imported from the
//! layers around it.
//!
//! [`request`] is what the decision sees of a request ([`route`]: what its Envoy route says),
//! [`host`] parses its host into a sandbox
//! and port, [`token`] finds the caller's access token and verifies it, [`decision`] turns all
//! that and the [`decision::Policy`] into a verdict (ask for a look-up, or allow with header
//! mutations), [`denial`] says why not and what the client is told ([`pages`] for a person),
//! [`port_limit`] bounds the distinct ports per sandbox, [`preview`] is what a preview-token
//! look-up answers, and [`app_identity`] tells the app who the caller is (forwarded claims, the
//! signed assertion), [`sso`] reads the session of Envoy's OAuth2 filter, [`policy`] holds the
//! `[[policy]]` rules that decide for tokens that do not name sandboxes. The I/O is the caller's
//! (`serve::authorizer`): introspecting a token or
//! refetching the JWKS between two calls of [`decision::authorize`], and fetching the preview
//! token between [`decision::authorize`] and [`decision::allow`].

pub mod app_identity;
pub mod decision;
pub mod denial;
pub mod host;
pub mod pages;
pub mod policy;
pub mod port_limit;
pub mod preview;
pub mod request;
pub mod route;
pub mod sso;
pub mod token;
