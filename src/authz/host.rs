//! Parsing of public preview hosts: `{port}-{sandboxId}.{preview-domain}[:port]`.
//!
//! Mirrors how Daytona's own proxy reads its hosts (first DNS label, split at the first `-`), but
//! strictly: the port is decimal digits within the configured range (`--port-range`, 3000–9999 by
//! default; no sign, no leading zero), the id is a hyphenated UUID, and the rest of the name must
//! be one of the configured preview domains, nothing more.

use std::fmt;

/// Ports Daytona exposes for previews (its documented range): the default `--port-range`.
pub const PORT_RANGE: std::ops::RangeInclusive<u16> = 3000..=9999;

/// The sandbox ports preview hosts may name (`--port-range`), both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Daytona's documented range, 3000-9999.
    pub const DAYTONA: PortRange = PortRange {
        first: *PORT_RANGE.start(),
        last: *PORT_RANGE.end(),
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// `3000-9999`, or one port (`8080`); `first` at least 1 and not above `last`.
    pub fn parse(text: &str) -> Option<PortRange> {
        let (first, last) = match text.trim().split_once('-') {
            Some((first, last)) => (first.trim(), last.trim()),
            None => (text.trim(), text.trim()),
        };
        let range = PortRange {
            first: plain_port(first)?,
            last: plain_port(last)?,
        };
        (range.first <= range.last).then_some(range)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::DAYTONA
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A TCP port written plainly: 1-5 decimal digits, no sign, no leading zero, 1-65535.
pub fn plain_port(text: &str) -> Option<u16> {
    let plain = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    if !plain {
        return None;
    }
    text.parse().ok()
}

/// A sandbox id: a UUID, parsed once (from the host, or an admin call) and carried as this type
/// from then on. Its text is the lower-case hyphenated form, the one Daytona's URLs use.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SandboxId {
    uuid: uuid::Uuid,
    text: Box<str>,
}

impl SandboxId {
    /// `text` as a sandbox id: a lower-case hyphenated UUID, nothing else (callers lower-case
    /// what a user typed first).
    pub fn parse(text: &str) -> Option<Self> {
        if !is_uuid(text) {
            return None;
        }
        let uuid = uuid::Uuid::try_parse(text).ok()?;
        Some(SandboxId {
            uuid,
            text: text.into(),
        })
    }

    /// The nil UUID: a sandbox that cannot exist (the readiness probe asks about it).
    pub fn nil() -> Self {
        SandboxId {
            uuid: uuid::Uuid::nil(),
            text: "00000000-0000-0000-0000-000000000000".into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid
    }
}

impl std::str::FromStr for SandboxId {
    type Err = HostError;

    fn from_str(text: &str) -> Result<Self, HostError> {
        SandboxId::parse(text).ok_or(HostError::Malformed)
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl PartialEq<str> for SandboxId {
    fn eq(&self, other: &str) -> bool {
        *self.text == *other
    }
}

impl PartialEq<&str> for SandboxId {
    fn eq(&self, other: &&str) -> bool {
        *self.text == **other
    }
}

/// A sandbox port named by a public preview host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PreviewTarget {
    pub sandbox_id: SandboxId,
    pub port: u16,
}

impl fmt::Display for PreviewTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.port, self.sandbox_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is not under the preview domain")]
    WrongDomain,
    #[error("the host's first label is not {{port}}-{{sandboxId}}")]
    Malformed,
    #[error("the port is outside {0}")]
    PortOutOfRange(PortRange),
}

/// What public hosts may be: `{port}-{sandboxId}.` one of `domains`, the port within `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// Lower-case, without a trailing dot (the configuration guarantees it); never empty.
    pub domains: Vec<String>,
    pub ports: PortRange,
}

impl Hosts {
    /// One preview domain, Daytona's port range.
    pub fn new(domain: &str) -> Self {
        Hosts {
            domains: vec![domain.to_ascii_lowercase()],
            ports: PortRange::DAYTONA,
        }
    }

    /// Parses `host` (the `:authority`, optionally with a `:port` suffix) against each preview
    /// domain; the target and the domain it matched. Domains may nest (`example.com` and
    /// `preview.example.com`): the one leaving exactly one label before it wins.
    pub fn parse(&self, host: &str) -> Result<(PreviewTarget, &str), HostError> {
        let name = strip_port(host).ok_or(HostError::Malformed)?;
        let name = name.to_ascii_lowercase();
        let mut error = HostError::WrongDomain;
        for domain in &self.domains {
            match parse_under(&name, domain, self.ports) {
                Ok(target) => return Ok((target, domain)),
                Err(HostError::WrongDomain) => {}
                Err(other) => error = other,
            }
        }
        Err(error)
    }

    /// Whether `name` (lower-case, no port) is one of the preview domains or under one.
    pub fn is_under(&self, name: &str) -> bool {
        self.domains.iter().any(|domain| {
            name == domain
                || name
                    .strip_suffix(domain.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// Parses `host` against one `domain` and Daytona's port range (see [`Hosts::parse`]).
pub fn parse(host: &str, domain: &str) -> Result<PreviewTarget, HostError> {
    Hosts::new(domain).parse(host).map(|(target, _)| target)
}

fn parse_under(name: &str, domain: &str, ports: PortRange) -> Result<PreviewTarget, HostError> {
    let label = name
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .ok_or(HostError::WrongDomain)?;
    if label.contains('.') {
        // `3000-<id>.extra.<domain>`: only one label may precede the domain.
        return Err(HostError::WrongDomain);
    }
    let (port, id) = label.split_once('-').ok_or(HostError::Malformed)?;
    let port = plain_port(port).ok_or(HostError::Malformed)?;
    if !ports.contains(port) {
        return Err(HostError::PortOutOfRange(ports));
    }
    Ok(PreviewTarget {
        sandbox_id: SandboxId::parse(id).ok_or(HostError::Malformed)?,
        port,
    })
}

/// Removes a `:port` suffix: decimal digits naming a TCP port, 1-65535 (`:99999`, `:0` and
/// `:` are refused). IP literals and other oddities are left for the domain check to refuse.
pub fn strip_port(host: &str) -> Option<&str> {
    match host.rsplit_once(':') {
        None => Some(host),
        Some((name, port))
            if !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Some(name)
        }
        Some(_) => None,
    }
}

/// A lower-case hyphenated UUID (8-4-4-4-12 hex digits), the form Daytona gives sandbox ids.
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_id_is_a_lower_case_hyphenated_uuid_parsed_once() {
        let id = SandboxId::parse(ID).unwrap();
        assert_eq!(id.as_str(), ID);
        assert_eq!(id, ID);
        assert_eq!(id.uuid().as_u128(), 0x0b8f2a4e_6c1d_4f3a_9e2b_7d5c8a1f0e93);
        assert_eq!(id.to_string(), ID);
        assert_eq!(
            SandboxId::nil(),
            SandboxId::parse(&uuid::Uuid::nil().to_string()).unwrap()
        );
        assert_eq!(format!("{id:?}"), format!("{ID:?}"));
        for text in [
            "0B8F2A4E-6C1D-4F3A-9E2B-7D5C8A1F0E93",
            "0b8f2a4e6c1d4f3a9e2b7d5c8a1f0e93",
            "{0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93}",
            "urn:uuid:0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93",
            "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e9",
            "not-a-uuid",
            "",
        ] {
            assert_eq!(SandboxId::parse(text), None, "{text}");
            assert_eq!(text.parse::<SandboxId>(), Err(HostError::Malformed));
        }
    }

    const ID: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const DOMAIN: &str = "preview.example.com";

    fn ok(host: &str) -> PreviewTarget {
        parse(host, DOMAIN).unwrap_or_else(|e| panic!("{host}: {e}"))
    }

    #[test]
    fn parses_port_and_sandbox() {
        let t = ok(&format!("3000-{ID}.{DOMAIN}"));
        assert_eq!(t.port, 3000);
        assert_eq!(t.sandbox_id, ID);
        assert_eq!(t.to_string(), format!("3000-{ID}"));
    }

    #[test]
    fn accepts_a_port_suffix_and_upper_case() {
        assert_eq!(ok(&format!("9999-{ID}.{DOMAIN}:8080")).port, 9999);
        assert_eq!(ok(&format!("9999-{ID}.{DOMAIN}:65535")).port, 9999);
        assert_eq!(ok(&format!("9999-{ID}.{DOMAIN}:1")).port, 9999);
        let upper = format!("3000-{ID}.{DOMAIN}").to_ascii_uppercase();
        assert_eq!(ok(&upper).sandbox_id, ID);
    }

    #[test]
    fn refuses_other_domains() {
        for host in [
            format!("3000-{ID}.{DOMAIN}.evil.com"),
            format!("3000-{ID}.evil.com"),
            format!("3000-{ID}.x{DOMAIN}"),
            format!("3000-{ID}.extra.{DOMAIN}"),
            format!("3000-{ID}"),
            DOMAIN.to_string(),
            format!(".{DOMAIN}"),
            "127.0.0.1:8080".to_string(),
            "[::1]:8080".to_string(),
            String::new(),
        ] {
            assert!(parse(&host, DOMAIN).is_err(), "{host} was accepted");
        }
    }

    #[test]
    fn refuses_malformed_labels() {
        for label in [
            format!("03000-{ID}"),
            format!("+3000-{ID}"),
            format!("3000-{ID}-x"),
            format!("3000_{ID}"),
            format!("-{ID}"),
            "3000-".to_string(),
            "3000-not-a-uuid".to_string(),
            format!("3000-{}", ID.replace('-', "")),
            format!("3000-{}g", &ID[..35]),
        ] {
            let host = format!("{label}.{DOMAIN}");
            assert_eq!(parse(&host, DOMAIN), Err(HostError::Malformed), "{host}");
        }
    }

    #[test]
    fn refuses_ports_outside_the_range() {
        for port in ["2999", "1024", "10000", "65535"] {
            let host = format!("{port}-{ID}.{DOMAIN}");
            assert_eq!(
                parse(&host, DOMAIN),
                Err(HostError::PortOutOfRange(PortRange::DAYTONA)),
                "{host}"
            );
        }
        for port in ["0000", "0", "65536", "99999"] {
            let host = format!("{port}-{ID}.{DOMAIN}");
            assert_eq!(parse(&host, DOMAIN), Err(HostError::Malformed), "{host}");
        }
    }

    #[test]
    fn the_port_range_is_a_setting() {
        let hosts = Hosts {
            domains: vec![DOMAIN.into()],
            ports: PortRange::parse("80-8080").unwrap(),
        };
        for port in [80, 443, 3000, 8080] {
            let (target, _) = hosts.parse(&format!("{port}-{ID}.{DOMAIN}")).unwrap();
            assert_eq!(target.port, port);
        }
        for port in [79, 8081, 9999] {
            assert_eq!(
                hosts.parse(&format!("{port}-{ID}.{DOMAIN}")),
                Err(HostError::PortOutOfRange(hosts.ports))
            );
        }
        assert_eq!(
            hosts.parse(&format!("080-{ID}.{DOMAIN}")),
            Err(HostError::Malformed)
        );
    }

    #[test]
    fn port_ranges_parse_strictly() {
        assert_eq!(PortRange::parse("3000-9999"), Some(PortRange::DAYTONA));
        assert_eq!(
            PortRange::parse(" 1 - 65535 "),
            Some(PortRange {
                first: 1,
                last: 65535
            })
        );
        assert_eq!(
            PortRange::parse("8080"),
            Some(PortRange {
                first: 8080,
                last: 8080
            })
        );
        for bad in [
            "",
            "0-10",
            "9999-3000",
            "3000-",
            "-3000",
            "3000-70000",
            "+1-2",
            "a-b",
            "01-2",
        ] {
            assert_eq!(PortRange::parse(bad), None, "{bad}");
        }
        assert_eq!(PortRange::DAYTONA.to_string(), "3000-9999");
    }

    #[test]
    fn a_host_under_any_preview_domain_parses_and_names_it() {
        let hosts = Hosts {
            domains: vec![
                "preview.example.com".into(),
                "preview.example.org".into(),
                "example.com".into(),
            ],
            ports: PortRange::DAYTONA,
        };
        for domain in ["preview.example.com", "preview.example.org", "example.com"] {
            let (target, matched) = hosts.parse(&format!("3000-{ID}.{domain}:443")).unwrap();
            assert_eq!((target.port, matched), (3000, domain));
        }
        assert_eq!(
            hosts.parse(&format!("3000-{ID}.preview.example.net")),
            Err(HostError::WrongDomain)
        );
        // Under a nested domain, the precise error of the domain that matched.
        assert_eq!(
            hosts.parse(&format!("2000-{ID}.preview.example.org")),
            Err(HostError::PortOutOfRange(PortRange::DAYTONA))
        );
        assert!(hosts.is_under("x.preview.example.org"));
        assert!(hosts.is_under("example.com"));
        assert!(!hosts.is_under("xexample.com"));
        assert!(!hosts.is_under("example.net"));
    }

    #[test]
    fn refuses_a_bad_port_suffix() {
        for suffix in [
            ":", ":abc", ":123456", ":80:80", ":99999", ":65536", ":0", ":00000",
        ] {
            let host = format!("3000-{ID}.{DOMAIN}{suffix}");
            assert!(parse(&host, DOMAIN).is_err(), "{host}");
        }
    }
}
