//! The request as the decision sees it: Envoy's attributes, header names lower-case, repeated
//! headers once per value. Plain data; `serve::grpc` builds it from a `CheckRequest`.

use crate::authz::route::Route;
use crate::authz::token;

/// What the decision needs of a request. Header names are lower-case; repeated headers appear
/// once per value.
#[derive(Debug, Clone, Default)]
pub struct RequestView {
    pub method: String,
    /// `:scheme` as Envoy passed it on. Not evidence of TLS: an HTTP/2 client sets it itself,
    /// even on a plain-HTTP listener (`is_https` asks X-Forwarded-Proto instead).
    pub scheme: String,
    pub host: String,
    /// The request target with its query string, undecoded.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// What the request's Envoy route says (`context_extensions`); the default changes nothing.
    pub route: Route,
}

impl RequestView {
    /// `method` (`GET`, ...) for `host` and `path` over plain HTTP, without headers: a request to
    /// build on with [`RequestView::with_header`] (tests, property tests, benchmarks).
    pub fn new(method: &str, host: &str, path: &str) -> Self {
        RequestView {
            method: method.to_owned(),
            scheme: "http".to_owned(),
            host: host.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            route: Route::NONE,
        }
    }

    /// The same request on a route with these settings.
    pub fn on_route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// The same request with one more header (its name lower-cased, as Envoy sends it).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The same request with these headers added, in order (see [`RequestView::with_header`]).
    pub fn with_headers<N: AsRef<str>, V: AsRef<str>>(self, headers: &[(N, V)]) -> Self {
        headers.iter().fold(self, |request, (n, v)| {
            request.with_header(n.as_ref(), v.as_ref())
        })
    }

    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.header_values(name).next().is_some()
    }

    /// A person's browser asking for a page (not a script's fetch, not an upgrade): it gets HTML
    /// pages and redirects, everything else JSON.
    pub fn wants_html(&self) -> bool {
        if self.has_header("upgrade") {
            return false;
        }
        self.header_values("sec-fetch-mode")
            .any(|m| m == "navigate")
            || self
                .header_values("accept")
                .any(|a| a.to_ascii_lowercase().contains("text/html"))
    }

    /// A top-level navigation: where a share link turns into a cookie.
    pub(crate) fn is_navigation(&self) -> bool {
        self.method == "GET" && self.wants_html()
    }

    /// A CORS preflight, which browsers send without credentials.
    pub(crate) fn is_preflight(&self) -> bool {
        self.method == "OPTIONS"
            && self.has_header("origin")
            && self.has_header("access-control-request-method")
    }

    /// Whether the client reached the edge over TLS, as Envoy's `X-Forwarded-Proto` says: Envoy
    /// replaces any client-sent value with the scheme of the client's own connection, unless it
    /// trusts a proxy in front (`xff_num_trusted_hops`), whose value it keeps. Only that header
    /// counts, and only as a single `https`: `:scheme` is the client's choice over HTTP/2 (and
    /// in an absolute request target), even on a plain-HTTP listener, so it proves nothing.
    pub(crate) fn is_https(&self) -> bool {
        let mut values = self.header_values("x-forwarded-proto");
        matches!(
            (values.next(), values.next()),
            (Some(proto), None) if proto.trim().eq_ignore_ascii_case("https")
        )
    }

    /// The request target without `access_token` (in any spelling) and without a fragment, for
    /// redirects and `return_to`.
    pub(crate) fn path_without_token(&self) -> String {
        let target = self.path.split('#').next().unwrap_or_default();
        without_token(target).unwrap_or_else(|| target.to_owned())
    }
}

/// `target` with every `access_token` pair (in any spelling, e.g. `%61ccess_token`) cut out of
/// its query, and every other byte kept in its order: apps that sign or hash their query see it
/// as the client sent it. `None` when there is no such pair (the target is then left alone).
pub(crate) fn without_token(target: &str) -> Option<String> {
    let (before_fragment, fragment) = match target.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (target, None),
    };
    let (path, query) = before_fragment.split_once('?')?;
    if !query.split('&').any(is_token_parameter) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_token_parameter(pair))
        .collect();
    let mut out = path.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

/// Whether a `name=value` query pair is `access_token`, once percent-decoded.
fn is_token_parameter(pair: &str) -> bool {
    form_urlencoded::parse(pair.as_bytes())
        .next()
        .is_some_and(|(name, _)| name == token::QUERY_PARAMETER)
}
