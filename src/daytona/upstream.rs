//! The allow-list a preview URL from Daytona must match before Envoy is sent there.

use super::{DaytonaError, Upstream};
use crate::authz::host::PreviewTarget;

/// The proxy domains (with a port when not the scheme's default) Daytona's preview URLs are
/// under, for an API URL: Daytona cloud's for `app.daytona.io`, `proxy.localhost:4000` (the
/// self-hosted default) for a local API, else `proxy.<API host>`. `--upstream-domain` overrides.
pub fn default_upstream_domains(api: &url::Url) -> Vec<String> {
    match api.host() {
        Some(url::Host::Domain("app.daytona.io")) => {
            vec!["proxy.daytona.works".into(), "proxy.daytona.work".into()]
        }
        Some(url::Host::Domain("localhost") | url::Host::Ipv4(_) | url::Host::Ipv6(_)) | None => {
            vec!["proxy.localhost:4000".into()]
        }
        Some(url::Host::Domain(host)) => vec![format!("proxy.{host}")],
    }
}

/// Checks the preview URL is `{port}-{id}.{an allowed proxy domain}` for the very sandbox port we
/// asked for, so a confused or compromised answer cannot send Envoy anywhere else (another
/// domain, an IP, `localhost`, another port).
pub(super) fn parse_upstream(
    text: &str,
    target: &PreviewTarget,
    allowed: &[String],
) -> Result<Upstream, DaytonaError> {
    let bad = |why: &str| DaytonaError::BadAnswer(format!("preview URL {why}"));
    let url = url::Url::parse(text).map_err(|_| bad("does not parse"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(bad("has an unsupported scheme")),
    };
    let Some(url::Host::Domain(host)) = url.host() else {
        return Err(bad("has no domain name"));
    };
    let expected = format!("{target}.");
    let Some(domain) = host.strip_prefix(&expected) else {
        return Err(bad("names another sandbox or port"));
    };
    // An allow-list entry names the domain and, unless it is the scheme's default, the port.
    let domain_and_port = match url.port() {
        Some(port) => format!("{domain}:{port}"),
        None => domain.to_owned(),
    };
    if !allowed.contains(&domain_and_port) {
        return Err(bad(
            "is not under an allowed --upstream-domain (domain and port)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("carries credentials"));
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(Upstream { tls, authority })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daytona::fixtures::{ID, allowed, target};

    #[test]
    fn upstream_domains_default_from_the_api_url() {
        let domains = |u: &str| default_upstream_domains(&url::Url::parse(u).unwrap());
        assert_eq!(
            domains("https://app.daytona.io/api"),
            ["proxy.daytona.works", "proxy.daytona.work"]
        );
        assert_eq!(
            domains("http://localhost:3000/api"),
            ["proxy.localhost:4000"]
        );
        assert_eq!(
            domains("http://127.0.0.1:3000/api"),
            ["proxy.localhost:4000"]
        );
        assert_eq!(
            domains("https://daytona.example.com/api"),
            ["proxy.daytona.example.com"]
        );
    }

    #[test]
    fn accepts_the_urls_daytona_gives() {
        let cloud = parse_upstream(
            &format!("https://3000-{ID}.proxy.daytona.works"),
            &target(),
            &allowed(),
        )
        .unwrap();
        assert!(cloud.tls);
        assert_eq!(cloud.authority, format!("3000-{ID}.proxy.daytona.works"));
        let local = parse_upstream(
            &format!("http://3000-{ID}.proxy.localhost:4000/"),
            &target(),
            &allowed(),
        )
        .unwrap();
        assert!(!local.tls);
        assert_eq!(local.authority, format!("3000-{ID}.proxy.localhost:4000"));
    }

    #[test]
    fn refuses_urls_for_somewhere_else() {
        for url in [
            format!("https://3001-{ID}.proxy.daytona.works"),
            "https://evil.example.com".to_string(),
            "http://127.0.0.1:4000".to_string(),
            format!("https://3000-{ID}."),
            format!("ftp://3000-{ID}.proxy.daytona.works"),
            format!("https://user:pw@3000-{ID}.proxy.daytona.works"),
            format!("https://x3000-{ID}.proxy.daytona.works"),
            format!("https://3000-{ID}.proxy.daytona.works.evil.com"),
            format!("https://3000-{ID}.evil.com"),
            format!("https://3000-{ID}.localhost"),
            format!("https://3000-{ID}.proxy.daytona.works:9901"),
            format!("http://3000-{ID}.proxy.localhost:9901"),
            format!("http://3000-{ID}.proxy.localhost"),
        ] {
            assert!(
                parse_upstream(&url, &target(), &allowed()).is_err(),
                "{url}"
            );
        }
    }
}
