//! The certificate authorities every outbound TLS connection trusts: the Daytona API, JWKS
//! fetches, the introspection endpoint and Redis (`rediss://`).
//!
//! Always the compiled-in roots (Mozilla's list, as `webpki-roots` ships it: the same in every
//! image, whatever the base image's CA bundle), plus, with `--ca-file`, the certificates of one
//! PEM bundle, so a self-hosted Daytona, an issuer or a Redis behind a private CA can be reached.
//! The file is read and checked once, at start-up: unreadable, too large, not PEM or without a
//! certificate is a configuration error (exit 64), never a silent fallback.
//!
//! Both kinds of client get the same set: reqwest adds the file's certificates to its built-in
//! webpki roots; the redis crate takes a single PEM bundle of roots, so it is given the
//! compiled-in roots (`webpki-root-certs`, the same list as certificates) followed by the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Largest `--ca-file` accepted: Debian's whole CA bundle is about 220 KB.
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a CA file cannot be used; said in one line with the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is larger than {MAX_CA_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path} is not a PEM bundle: {reason}")]
    NotPem { path: String, reason: String },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty { path: String },
    #[error("{path}: certificate {index} cannot be a trust anchor: {reason}")]
    BadCertificate {
        path: String,
        index: usize,
        reason: String,
    },
}

/// The roots outbound TLS trusts: the compiled-in ones, plus those of `--ca-file` if given.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct TrustRoots {
    extra: Arc<[CertificateDer<'static>]>,
    source: Option<PathBuf>,
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots")
            .field("ca_file", &self.source)
            .field("certificates", &self.extra.len())
            .finish()
    }
}

impl TrustRoots {
    /// The compiled-in roots only.
    pub fn compiled_in() -> Self {
        TrustRoots::default()
    }

    /// The compiled-in roots plus every certificate of the PEM bundle at `path` (other PEM
    /// sections, such as comments between certificates, are skipped).
    pub fn with_ca_file(path: &Path) -> Result<Self, TrustError> {
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| TrustError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > MAX_CA_FILE_BYTES {
            return Err(TrustError::TooLarge { path: shown });
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let certificates = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrustError::NotPem {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(TrustError::Empty { path: shown });
        }
        // Each must parse as a trust anchor now, not at the first connection.
        let mut store = rustls::RootCertStore::empty();
        for (index, certificate) in certificates.iter().enumerate() {
            store
                .add(certificate.clone())
                .map_err(|e| TrustError::BadCertificate {
                    path: shown.clone(),
                    index: index + 1,
                    reason: e.to_string(),
                })?;
        }
        Ok(TrustRoots {
            extra: certificates.into(),
            source: Some(path.to_owned()),
        })
    }

    /// The `--ca-file` in use, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// How many certificates `--ca-file` added.
    pub fn added(&self) -> usize {
        self.extra.len()
    }

    /// The HTTP client for every outbound call (Daytona, JWKS, introspection): rustls trusting
    /// these roots, `timeout` bounding connection and whole call, no redirects followed, our
    /// user agent.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, super::ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("daytona-authz/", env!("CARGO_PKG_VERSION")))
            .tls_built_in_root_certs(true);
        for certificate in self.extra.iter() {
            let certificate = reqwest::Certificate::from_der(certificate)
                .map_err(|e| super::ClientError::Invalid(format!("--ca-file: {e}")))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder
            .build()
            .map_err(|e| super::ClientError::Build(e.to_string()))
    }

    /// A Redis client for `url`: `rediss://` verifies the server against these roots. The URL
    /// may carry a password, so it never appears in the error.
    pub fn redis_client(&self, url: &str) -> Result<redis::Client, String> {
        let invalid = || "the Redis URL must look like redis[s]://[:password@]host[:port][/db]";
        if url.contains('#') {
            // `#insecure` would turn certificate checks off (refused by our build anyway).
            return Err("the Redis URL must not have a #fragment".into());
        }
        // The redis crate's rustls picks the process's default provider: make it ring, the one
        // everything else here uses (installing twice is harmless).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = url
            .get(..9)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"));
        if !tls || self.extra.is_empty() {
            return redis::Client::open(url).map_err(|_| invalid().into());
        }
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(self.pem_bundle()),
        };
        redis::Client::build_with_tls(url, certificates).map_err(|_| invalid().into())
    }

    /// The compiled-in roots and the file's certificates, as one PEM bundle.
    fn pem_bundle(&self) -> Vec<u8> {
        pem(webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .chain(self.extra.iter()))
    }

    /// `--ca-file`'s certificates alone, as one PEM bundle (empty without one): for a client
    /// that has the compiled-in roots already (the OTLP exporter's).
    pub fn added_pem(&self) -> Vec<u8> {
        pem(self.extra.iter())
    }
}

/// Certificates as one PEM bundle.
fn pem<'a>(certificates: impl Iterator<Item = &'a CertificateDer<'a>>) -> Vec<u8> {
    let mut pem = Vec::new();
    for certificate in certificates {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// Why an outbound HTTPS call failed to connect, for logs: the TLS reason when there is one
/// (e.g. `invalid peer certificate: UnknownIssuer`, the sign of a missing `--ca-file`), else
/// `None`. Certificate errors name no secret.
pub fn tls_reason(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // reqwest's chain ends in io::Errors wrapping io::Errors wrapping rustls's; an io::Error's
    // `source()` skips the error it wraps, so step into it with `get_ref()`. Bounded: chains are
    // short, a cycle is not possible but costs nothing to rule out.
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    for _ in 0..16 {
        let e = current?;
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(format!("TLS: {tls}"));
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            },
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_pem_bundle_adds_its_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("# our CAs\n{}\n{}", ca_pem(), ca_pem());
        let roots = TrustRoots::with_ca_file(&write(&dir, "ca.pem", &text)).unwrap();
        assert_eq!(roots.added(), 2);
        assert!(roots.http_client(Duration::from_secs(1)).is_ok());
        let client = roots.redis_client("rediss://127.0.0.1:6380/").unwrap();
        assert!(matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ));
        // The redis crate gets the compiled-in roots too, then ours.
        let bundle = roots.pem_bundle();
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(&bundle)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            parsed.len(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 2
        );
        assert_eq!(parsed.last(), roots.extra.last());
    }

    #[test]
    fn unusable_ca_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            TrustRoots::with_ca_file(&missing),
            Err(TrustError::Unreadable { .. })
        ));
        let empty = write(&dir, "empty.pem", "");
        assert!(matches!(
            TrustRoots::with_ca_file(&empty),
            Err(TrustError::Empty { .. })
        ));
        let key_only = write(
            &dir,
            "key.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let error = TrustRoots::with_ca_file(&key_only).unwrap_err();
        assert!(matches!(error, TrustError::Empty { .. }), "{error}");
        assert!(error.to_string().contains("key.pem"), "{error}");
        let garbage = write(
            &dir,
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        assert!(matches!(
            TrustRoots::with_ca_file(&garbage),
            Err(TrustError::BadCertificate { index: 1, .. })
        ));
        let broken = write(&dir, "broken.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
        assert!(TrustRoots::with_ca_file(&broken).is_err());
    }

    #[test]
    fn the_tls_reason_is_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        assert_eq!(
            tls_reason(&outer).as_deref(),
            Some("TLS: invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(tls_reason(&std::io::Error::other("refused")), None);
    }

    #[test]
    fn redis_urls_keep_their_password_out_of_errors_and_cannot_turn_checks_off() {
        let roots = TrustRoots::compiled_in();
        let error = roots
            .redis_client("rediss://:hunter2-password@127.0.0.1:6380/#insecure")
            .unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        let error = roots
            .redis_client("redis://:hunter2-password@[not-a-host/")
            .unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(roots.redis_client("rediss://127.0.0.1:6380/").is_ok());
        assert!(roots.redis_client("redis://127.0.0.1:6379/").is_ok());
    }
}
