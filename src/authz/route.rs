//! Per-route policy: what Envoy's route (or virtual host) says about a request, from the
//! `check_settings.context_extensions` of its ext_authz per-route config. Every key with the
//! `daytona_authz.` prefix is ours and must be known and well-formed; keys without it belong to
//! other filters and are ignored. A route the decision cannot read is refused whole (500), so a
//! typo can neither open nor close a route silently.
//!
//! | key | value |
//! |---|---|
//! | `daytona_authz.ports` | `3000,8000-8099`: only these sandbox ports on this route |
//! | `daytona_authz.audience` | the token must also carry this `aud` |
//! | `daytona_authz.access` | `token` (default) or `preview-token-only` (no end-user token) |
//! | `daytona_authz.login_url` | sign-in URL for browsers on this route |
//! | `daytona_authz.route` | the route's name, for logs and metrics |

use std::fmt;

use super::host::PortRange;

/// The prefix of our keys in `context_extensions`.
pub const PREFIX: &str = "daytona_authz.";

/// Most port ranges one `daytona_authz.ports` may list; most bytes of one value.
const MAX_RANGES: usize = 64;
const MAX_VALUE_LEN: usize = 2048;

/// What the request's route asks of the decision; the default (no keys) changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// `daytona_authz.route`: letters, digits, `-`, `_`, `.`; at most 64.
    pub name: Option<String>,
    /// `daytona_authz.ports`: only these ports are served on this route.
    pub ports: Option<PortSet>,
    /// `daytona_authz.audience`: an `aud` the token must carry, besides `--jwt-audience`.
    pub audience: Option<String>,
    pub access: Access,
    /// `daytona_authz.login_url`: in place of `--login-url` for browsers on this route.
    pub login_url: Option<url::Url>,
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// An access token granting the sandbox and port (the default).
    #[default]
    Token,
    /// No end-user token: anyone who knows the host (webhooks, public demos). The sandbox's
    /// preview token is still injected, and every other check still applies.
    PreviewTokenOnly,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Token => "token",
            Access::PreviewTokenOnly => "preview-token-only",
        }
    }
}

/// Sandbox ports, as ranges (`3000,8000-8099`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet(Vec<PortRange>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|range| range.contains(port))
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// Comma-separated ports or ranges; spaces around items allowed, nothing empty.
    pub fn parse(text: &str) -> Option<PortSet> {
        let ranges = text
            .split(',')
            .map(PortRange::parse)
            .collect::<Option<Vec<_>>>()?;
        (!ranges.is_empty() && ranges.len() <= MAX_RANGES).then_some(PortSet(ranges))
    }

    /// Whether every port listed is within `range`.
    pub fn within(&self, range: PortRange) -> bool {
        self.0
            .iter()
            .all(|r| range.contains(r.first) && range.contains(r.last))
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

/// Why a route's settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "unknown key {0:?} (known: daytona_authz.ports, .audience, .access, .login_url, .route)"
    )]
    UnknownKey(String),
    #[error("{key}: {value:?} {why}")]
    BadValue {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "daytona_authz.access: preview-token-only asks for no token, so daytona_authz.audience and \
         daytona_authz.login_url cannot apply (Envoy merges a route's keys over its virtual host's)"
    )]
    Conflict,
    #[error("daytona_authz.ports: {ports} is not within --port-range {range}")]
    PortsOutsideRange { ports: PortSet, range: PortRange },
}

impl Route {
    /// No settings: what a route without our keys means.
    pub const NONE: Route = Route {
        name: None,
        ports: None,
        audience: None,
        access: Access::Token,
        login_url: None,
    };

    /// The route's settings from `context_extensions` (any order; other filters' keys ignored).
    pub fn from_extensions<'a>(
        extensions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Route, RouteError> {
        let mut route = Route::default();
        for (key, value) in extensions {
            let Some(name) = key.strip_prefix(PREFIX) else {
                // `daytona-authz.ports`, `Daytona_Authz.audience`: meant for us, and a typo must
                // not drop a restriction silently.
                let folded = key.to_ascii_lowercase().replace('-', "_");
                if folded.starts_with("daytona_authz") {
                    return Err(RouteError::UnknownKey(key.chars().take(200).collect()));
                }
                continue;
            };
            let bad = |key: &'static str, why: &'static str| RouteError::BadValue {
                key,
                value: value.chars().take(200).collect(),
                why,
            };
            match name {
                "ports" => {
                    let ports = (value.len() <= MAX_VALUE_LEN)
                        .then(|| PortSet::parse(value))
                        .flatten()
                        .ok_or_else(|| {
                            bad(
                                "daytona_authz.ports",
                                "is not comma-separated ports or ranges (3000,8000-8099)",
                            )
                        })?;
                    route.ports = Some(ports);
                }
                "audience" => {
                    if value.trim().is_empty() || value.len() > 256 || value.trim() != value {
                        return Err(bad(
                            "daytona_authz.audience",
                            "is not an audience (1-256 characters, no surrounding spaces)",
                        ));
                    }
                    route.audience = Some(value.to_owned());
                }
                "access" => {
                    route.access = match value {
                        "token" => Access::Token,
                        "preview-token-only" => Access::PreviewTokenOnly,
                        _ => {
                            return Err(bad(
                                "daytona_authz.access",
                                "is neither `token` nor `preview-token-only`",
                            ));
                        }
                    };
                }
                "login_url" => {
                    let url = (value.len() <= MAX_VALUE_LEN)
                        .then(|| login_url(value))
                        .flatten()
                        .ok_or_else(|| {
                            bad(
                                "daytona_authz.login_url",
                                "is not an https URL (http only on loopback) without fragment or credentials",
                            )
                        })?;
                    route.login_url = Some(url);
                }
                "route" => {
                    let ok = !value.is_empty()
                        && value.len() <= 64
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                    if !ok {
                        return Err(bad(
                            "daytona_authz.route",
                            "is not a route name (1-64 letters, digits, '-', '_', '.')",
                        ));
                    }
                    route.name = Some(value.to_owned());
                }
                _ => return Err(RouteError::UnknownKey(key.chars().take(200).collect())),
            }
        }
        // Envoy merges a route's keys over its virtual host's: a route marked
        // preview-token-only under a virtual host that asks for an audience (or the other way
        // round) would silently drop the audience. Contradictory settings are refused.
        if route.access == Access::PreviewTokenOnly
            && (route.audience.is_some() || route.login_url.is_some())
        {
            return Err(RouteError::Conflict);
        }
        Ok(route)
    }

    /// Checks settings that depend on the deployment: every port listed is a preview port.
    pub fn check(&self, ports: PortRange) -> Result<(), RouteError> {
        match &self.ports {
            Some(set) if !set.within(ports) => Err(RouteError::PortsOutsideRange {
                ports: set.clone(),
                range: ports,
            }),
            _ => Ok(()),
        }
    }

    /// The name for logs; `-` when the route has none.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("-")
    }
}

/// A sign-in URL: absolute https (http only on loopback), no fragment, no credentials.
pub fn login_url(text: &str) -> Option<url::Url> {
    let url = url::Url::parse(text).ok()?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    (scheme_ok && url.fragment().is_none() && url.username().is_empty() && url.password().is_none())
        .then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pairs: &[(&str, &str)]) -> Result<Route, RouteError> {
        Route::from_extensions(pairs.iter().copied())
    }

    #[test]
    fn no_keys_change_nothing_and_other_filters_keys_are_ignored() {
        assert_eq!(route(&[]).unwrap(), Route::default());
        assert_eq!(
            route(&[("team", "x"), ("authz.ports", "y"), ("other.route", "z")]).unwrap(),
            Route::default()
        );
        assert_eq!(Route::default().access, Access::Token);
        assert_eq!(Route::default().label(), "-");
    }

    #[test]
    fn every_key_is_read() {
        let r = route(&[
            ("daytona_authz.ports", "3000, 8000-8099"),
            ("daytona_authz.audience", "admin-console"),
            ("daytona_authz.access", "token"),
            (
                "daytona_authz.login_url",
                "https://sso.example.com/login?x=1",
            ),
            ("daytona_authz.route", "webhooks_v1.2"),
        ])
        .unwrap();
        let ports = r.ports.as_ref().unwrap();
        assert!(ports.contains(3000) && ports.contains(8000) && ports.contains(8099));
        assert!(!ports.contains(3001) && !ports.contains(8100));
        assert_eq!(ports.to_string(), "3000,8000-8099");
        assert_eq!(r.audience.as_deref(), Some("admin-console"));
        assert_eq!(r.access, Access::Token);
        assert_eq!(
            r.login_url.as_ref().map(url::Url::as_str),
            Some("https://sso.example.com/login?x=1")
        );
        assert_eq!(r.label(), "webhooks_v1.2");
        assert_eq!(
            route(&[("daytona_authz.access", "preview-token-only")])
                .unwrap()
                .access,
            Access::PreviewTokenOnly
        );
    }

    #[test]
    fn no_token_and_a_required_audience_or_sign_in_page_contradict_each_other() {
        for other in [
            ("daytona_authz.audience", "admin"),
            ("daytona_authz.login_url", "https://sso.example.com/"),
        ] {
            assert_eq!(
                route(&[("daytona_authz.access", "preview-token-only"), other]),
                Err(RouteError::Conflict)
            );
            assert!(route(&[("daytona_authz.access", "token"), other]).is_ok());
        }
    }

    #[test]
    fn a_typo_in_the_prefix_is_refused_too() {
        for key in [
            "daytona-authz.ports",
            "Daytona_Authz.audience",
            "DAYTONA_AUTHZ.access",
            "daytona_authz_ports",
            "daytona_authz",
        ] {
            assert_eq!(
                route(&[(key, "3000")]),
                Err(RouteError::UnknownKey(key.into())),
                "{key}"
            );
        }
    }

    #[test]
    fn an_unknown_key_of_ours_is_refused_not_ignored() {
        for key in [
            "daytona_authz.prots",
            "daytona_authz.",
            "daytona_authz.Ports",
            "daytona_authz.ports.extra",
        ] {
            assert_eq!(
                route(&[(key, "3000")]),
                Err(RouteError::UnknownKey(key.into())),
                "{key}"
            );
        }
    }

    #[test]
    fn a_bad_value_is_refused_with_its_key() {
        for (key, value) in [
            ("daytona_authz.ports", ""),
            ("daytona_authz.ports", "3000,"),
            ("daytona_authz.ports", "3000;3001"),
            ("daytona_authz.ports", "9000-8000"),
            ("daytona_authz.ports", "0"),
            ("daytona_authz.ports", "70000"),
            ("daytona_authz.ports", "all"),
            ("daytona_authz.audience", ""),
            ("daytona_authz.audience", " admin"),
            ("daytona_authz.access", "public"),
            ("daytona_authz.access", "Token"),
            ("daytona_authz.access", ""),
            ("daytona_authz.login_url", "http://sso.example.com/"),
            ("daytona_authz.login_url", "/login"),
            ("daytona_authz.login_url", "https://u:p@sso.example.com/"),
            ("daytona_authz.login_url", "https://sso.example.com/#x"),
            ("daytona_authz.login_url", "javascript:alert(1)"),
            ("daytona_authz.route", ""),
            ("daytona_authz.route", "has space"),
            ("daytona_authz.route", "x\ny"),
        ] {
            match route(&[(key, value)]) {
                Err(RouteError::BadValue { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{key}={value:?}: {other:?}"),
            }
        }
        let many = (0..65)
            .map(|i| (3000 + i).to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(route(&[("daytona_authz.ports", &many)]).is_err());
        assert!(route(&[("daytona_authz.route", &"r".repeat(65))]).is_err());
        assert!(route(&[("daytona_authz.login_url", "http://127.0.0.1:9000/login")]).is_ok());
    }

    #[test]
    fn ports_must_lie_within_the_port_range() {
        let r = route(&[("daytona_authz.ports", "3000,8000-8099")]).unwrap();
        assert_eq!(r.check(PortRange::DAYTONA), Ok(()));
        let narrow = PortRange::parse("3000-8050").unwrap();
        assert!(matches!(
            r.check(narrow),
            Err(RouteError::PortsOutsideRange { .. })
        ));
        assert_eq!(Route::default().check(narrow), Ok(()));
    }
}
