//! The decision core: plain data in, a verdict out, no I/O.
//!
//! [`request`] is what the decision sees of a request, [`host`] parses its host into a sandbox
//! and port, [`decision`] turns it and the [`decision::Policy`] into a verdict (ask for a
//! look-up, or allow with header mutations), [`denial`] says why not and what the client is
//! told ([`pages`] for a person), [`port_limit`] bounds the distinct ports per sandbox, and
//! [`preview`] is what a look-up answers. The one
//! step with I/O (the preview-token look-up) is performed by the caller between two calls of
//! [`decision::authorize`]. This module imports nothing from the layers around it except
//! [`crate::identity::token`], the pure token verification.

pub mod decision;
pub mod denial;
pub mod host;
pub mod pages;
pub mod port_limit;
pub mod preview;
pub mod request;
