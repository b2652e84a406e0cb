//! Secrets: where each comes from (a value or a file), read at start-up and again on SIGHUP, and
//! never shown (`Debug` redacts them).

use std::path::PathBuf;

use super::*;

/// Where each secret comes from.
#[derive(Debug, Clone)]
pub struct SecretSources {
    pub daytona_api_key: SecretSource,
    /// `None` when tokens come only from JWKS or introspection.
    pub jwt_secret: Option<SecretSource>,
    pub introspection_client_secret: Option<SecretSource>,
    pub jwt_previous_secret: Option<SecretSource>,
    pub admin_token: Option<SecretSource>,
}

/// The secrets, read and checked.
#[derive(Debug)]
pub struct Secrets {
    pub daytona_api_key: Secret,
    pub jwt_secret: Option<Secret>,
    pub introspection_client_secret: Option<Secret>,
    pub jwt_previous_secret: Option<Secret>,
    pub admin_token: Option<Secret>,
}

/// A secret given inline (flag or environment) or in a file.
#[derive(Clone)]
pub enum SecretSource {
    Inline { flag: &'static str, value: String },
    File { flag: &'static str, path: PathBuf },
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline { flag, .. } => write!(f, "{flag}=<redacted>"),
            SecretSource::File { flag, path } => write!(f, "{flag}={}", path.display()),
        }
    }
}

impl SecretSource {
    /// One of an inline value and a file, or neither; both is a mistake.
    pub(crate) fn one_of(
        inline: (&'static str, Option<String>),
        file: (&'static str, Option<PathBuf>),
    ) -> Result<Option<SecretSource>, ConfigError> {
        match (inline.1, file.1) {
            (Some(_), Some(_)) => err(format!("give {} or {}, not both", inline.0, file.0)),
            (Some(value), None) => Ok(Some(SecretSource::Inline {
                flag: inline.0,
                value,
            })),
            (None, Some(path)) => Ok(Some(SecretSource::File { flag: file.0, path })),
            (None, None) => Ok(None),
        }
    }

    /// Reads the secret (again, for a file) and checks its length.
    pub fn load(&self, min_len: usize, what: &str) -> Result<Secret, ConfigError> {
        let (flag, value) = match self {
            SecretSource::Inline { flag, value } => (*flag, value.clone()),
            SecretSource::File { flag, path } => (
                *flag,
                std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("{flag}: cannot read {}: {e}", path.display()))
                })?,
            ),
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return err(format!("{flag}: {what} is empty"));
        }
        if value.len() < min_len {
            return err(format!("{flag}: {what} must be at least {min_len} bytes"));
        }
        Ok(Secret(value))
    }
}

impl SecretSources {
    /// Reads every secret; used at start-up and on SIGHUP.
    pub fn load(&self) -> Result<Secrets, ConfigErrors> {
        let mut problems = Problems::default();
        let daytona_api_key = problems.check(
            self.daytona_api_key
                .load(1, "the Daytona API key")
                .and_then(api_key),
        );
        let jwt_secret = self
            .jwt_secret
            .as_ref()
            .map(|source| problems.check(source.load(MIN_SECRET_BYTES, "the JWT secret")));
        let introspection_client_secret = self
            .introspection_client_secret
            .as_ref()
            .and_then(|source| problems.check(source.load(1, "the introspection client secret")));
        let jwt_previous_secret = self.jwt_previous_secret.as_ref().and_then(|source| {
            problems.check(source.load(MIN_SECRET_BYTES, "the previous JWT secret"))
        });
        let admin_token = self
            .admin_token
            .as_ref()
            .and_then(|source| problems.check(source.load(MIN_SECRET_BYTES, "the admin token")));
        match (daytona_api_key, jwt_secret) {
            (Some(daytona_api_key), None) if problems.0.is_empty() => Ok(Secrets {
                daytona_api_key,
                jwt_secret: None,
                introspection_client_secret,
                jwt_previous_secret,
                admin_token,
            }),
            (Some(daytona_api_key), Some(Some(jwt_secret))) if problems.0.is_empty() => {
                Ok(Secrets {
                    daytona_api_key,
                    jwt_secret: Some(jwt_secret),
                    introspection_client_secret,
                    jwt_previous_secret,
                    admin_token,
                })
            }
            _ => Err(ConfigErrors(problems.0)),
        }
    }
}

pub(crate) fn api_key(key: Secret) -> Result<Secret, ConfigError> {
    if key.0.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(key)
    } else {
        err("the Daytona API key must be printable ASCII without spaces")
    }
}

/// A secret whose `Debug` never shows it.
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

pub(crate) const MIN_SECRET_BYTES: usize = 32;
