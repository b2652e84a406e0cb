//! Single sign-on through Envoy's OAuth2 filter (`envoy/envoy-sso.yaml`): the filter runs the
//! authorization code flow and keeps the session in cookies on the preview domain; daytona-authz
//! verifies the token it finds in them and decides as for any other token.
//!
//! What reaches the Check from a signed-in browser: the filter checked its HMAC cookie and
//! decrypted its token cookies in the `Cookie` header (`IdToken=<the ID token>`,
//! `BearerToken=<the access token>`, ...). envoy-sso.yaml sets `forward_bearer_token: false`;
//! with `true` the filter would also copy the access token into `Authorization: Bearer`, an
//! ambient header only recognisable by its equality with a cookie. None of it is ours to pass
//! on: every one of the filter's cookies is removed before the sandbox app sees the request
//! (whether or not single sign-on is on here, so a forgotten `--sso-token-cookie` cannot leak
//! them), and so is a Bearer that merely repeats one of them (defence in depth, for a config
//! that forwards it).
//!
//! The session is an ambient credential like our share-link cookie, and one scoped to the whole
//! preview domain: a page of sandbox B makes the browser send it to sandbox A. The same rules as
//! for our cookie decide whether it may authenticate a request (top-level navigation, or the
//! sandbox's own pages).

use std::borrow::Cow;

use crate::authz::token::{self, ExtractError};

/// The cookie names Envoy's OAuth2 filter uses by default (`credentials.cookie_names`), plus the
/// code verifier's older name. The nonce and code verifier also come as `NAME.<flow id>`.
pub const DEFAULT_COOKIES: [&str; 8] = [
    "BearerToken",
    "IdToken",
    "RefreshToken",
    "OauthHMAC",
    "OauthExpires",
    "OauthNonce",
    "OauthCodeVerifier",
    "CodeVerifier",
];

/// At most this many distinct values of the token cookie are tried (as for our own cookie).
const MAX_CANDIDATES: usize = 4;

/// How daytona-authz treats the OAuth2 filter's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sso {
    /// `--sso-token-cookie`: the filter's cookie holding the token to verify (`IdToken`, or
    /// `BearerToken` for a JWT access token). `None`: single sign-on is off here; the filter's
    /// cookies are still removed.
    pub token_cookie: Option<String>,
    /// `--sso-audience`: the audience a single-sign-on token must name (the filter's client_id).
    pub audience: Option<String>,
    /// `--sso-cookie`: the filter's cookies, never passed to the app.
    pub cookies: Vec<String>,
}

impl Default for Sso {
    fn default() -> Self {
        Sso {
            token_cookie: None,
            audience: None,
            cookies: DEFAULT_COOKIES.iter().map(|&c| c.to_owned()).collect(),
        }
    }
}

impl Sso {
    /// Whether the cookie `name` is one of the filter's (`NAME` or `NAME.<suffix>`).
    pub fn is_filter_cookie(&self, name: &str) -> bool {
        let listed = |base: &str| {
            name == base
                || name
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
        };
        self.cookies.iter().map(String::as_str).any(listed)
            || self.token_cookie.as_deref().is_some_and(listed)
    }

    /// Whether `authorization` (every value of the header) is the filter forwarding this
    /// request's session: exactly one `Bearer <token>` whose token is also the value of one of
    /// the filter's cookies in `cookies`. Such a header is the session cookie in another place,
    /// not a credential of the caller's own.
    pub fn forwarded_bearer(&self, authorization: &[&str], cookies: &[&str]) -> bool {
        let [value] = authorization else {
            return false;
        };
        let Some(bearer) = token::bearer(value) else {
            return false;
        };
        cookies
            .iter()
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                self.is_filter_cookie(name.trim()) && value.trim().trim_matches('"') == bearer
            })
    }

    /// The values of the token cookie in `cookies`, distinct, when single sign-on is on;
    /// ambiguous when there are more than a browser would send.
    pub fn candidates<'a>(&self, cookies: &[&'a str]) -> Result<Vec<Cow<'a, str>>, ExtractError> {
        let Some(name) = self.token_cookie.as_deref() else {
            return Ok(Vec::new());
        };
        let mut candidates: Vec<Cow<'a, str>> = Vec::new();
        for value in cookies
            .iter()
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"'))
        {
            if value.is_empty() || candidates.iter().any(|c| c == value) {
                continue;
            }
            if candidates.len() >= MAX_CANDIDATES {
                return Err(ExtractError::Ambiguous);
            }
            candidates.push(Cow::Borrowed(value));
        }
        Ok(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Sso {
        Sso {
            token_cookie: Some("IdToken".into()),
            audience: Some("previews".into()),
            ..Sso::default()
        }
    }

    #[test]
    fn the_filters_cookies_are_known_by_name_and_by_flow_suffix() {
        let sso = Sso::default();
        for name in [
            "IdToken",
            "BearerToken",
            "OauthHMAC",
            "OauthNonce.1a2b3c",
            "OauthCodeVerifier.ff00",
            "CodeVerifier",
        ] {
            assert!(sso.is_filter_cookie(name), "{name}");
        }
        for name in ["IdTokens", "OauthNonce.", "app", "daytona_authz", "idtoken"] {
            assert!(!sso.is_filter_cookie(name), "{name}");
        }
        // The token cookie counts even when an operator's list forgot it.
        let renamed = Sso {
            token_cookie: Some("__Secure-Id".into()),
            cookies: vec!["__Secure-Hmac".into()],
            ..Sso::default()
        };
        assert!(renamed.is_filter_cookie("__Secure-Id"));
        assert!(renamed.is_filter_cookie("__Secure-Hmac"));
        assert!(!renamed.is_filter_cookie("IdToken"));
    }

    #[test]
    fn a_bearer_repeating_a_filter_cookie_is_the_filters_forwarding() {
        let sso = Sso::default();
        let cookies = ["app=1; BearerToken=at.x.y; IdToken=id.a.b"];
        assert!(sso.forwarded_bearer(&["Bearer at.x.y"], &cookies));
        assert!(sso.forwarded_bearer(&["Bearer id.a.b"], &cookies));
        // The caller's own token, a second header, or an app cookie with the same value: not.
        assert!(!sso.forwarded_bearer(&["Bearer other"], &cookies));
        assert!(!sso.forwarded_bearer(&["Bearer at.x.y", "Bearer at.x.y"], &cookies));
        assert!(!sso.forwarded_bearer(&["Bearer 1"], &cookies));
        assert!(!sso.forwarded_bearer(&["Basic at.x.y"], &cookies));
        assert!(!sso.forwarded_bearer(&[], &cookies));
    }

    #[test]
    fn candidates_are_the_token_cookies_distinct_values_when_on() {
        let cookies = ["IdToken=a; x=1", "IdToken=\"a\"; IdToken=b"];
        assert!(Sso::default().candidates(&cookies).unwrap().is_empty());
        assert_eq!(on().candidates(&cookies).unwrap(), ["a", "b"]);
        let many = ["IdToken=1; IdToken=2; IdToken=3; IdToken=4; IdToken=5"];
        assert!(on().candidates(&many).is_err());
    }
}
