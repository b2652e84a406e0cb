//! The decision core: plain data in, a verdict out, no I/O.
//!
//! [`host`] parses the public host into a sandbox and port, [`decision`] turns a request's
//! attributes and the [`decision::Policy`] into a verdict (deny with a reason, ask for a look-up,
//! or allow with header mutations), [`pages`] renders a denial for a person, [`port_limit`]
//! bounds the distinct ports per sandbox, and [`preview`] is what a look-up answers. The one
//! step with I/O (the preview-token look-up) is performed by the caller between two calls of
//! [`decision::authorize`]. This module imports nothing from the layers around it except
//! [`crate::identity::token`], the pure token verification.

pub mod decision;
pub mod host;
pub mod pages;
pub mod port_limit;
pub mod preview;
